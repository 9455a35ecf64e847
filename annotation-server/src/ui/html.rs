//! HTML building blocks. Every dynamic string goes through [`esc`]: model
//! output and prompts are untrusted.

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes untrusted text (prompts, model output) for element content, and
/// shows every invisible bidirectional control as a visible marker such as
/// `[U+202E]`: a right-to-left override (or an embedding, isolate or mark)
/// would otherwise reorder what the labeler reads, e.g. make `exe.TXT` look
/// like `TXT.exe`. Use it inside an element with `dir="auto"` and class
/// `text` (CSS `unicode-bidi: isolate`), so no text can reorder its
/// neighbours either.
pub fn esc_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if is_bidi_control(c) => out.push_str(&format!(
                "<span class=\"bidi\" title=\"invisible text-direction control\">[U+{:04X}]</span>",
                c as u32
            )),
            c => out.push(c),
        }
    }
    out
}

/// The Unicode characters that change the display order of text: marks
/// (ALM, LRM, RLM), embeddings and overrides (LRE..RLO, PDF) and isolates
/// (LRI..PDI).
pub fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// A whole page. `nav` is trusted HTML (built by the caller with [`esc`]).
pub fn page(title: &str, nav: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/static/app.css\">\
         <script src=\"/static/app.js\" defer></script></head>\
         <body><header><strong>RLHF annotation</strong>{nav}</header><main>{body}</main></body></html>",
        esc(title)
    )
}

/// The header's user part: name, role and a logout form.
pub fn nav(username: &str, role: &str, csrf: &str, links: &str) -> String {
    format!(
        "{links}<span class=\"spacer\"></span><span>{} ({})</span>\
         <form method=\"post\" action=\"/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\">Log out</button></form>",
        esc(username),
        esc(role),
        esc(csrf)
    )
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn bidi_controls_become_visible() {
        let shown = super::esc_text("invoice_\u{202E}TXT.exe <b>");
        assert!(!shown.chars().any(super::is_bidi_control), "{shown}");
        assert!(
            shown.contains("[U+202E]</span>TXT.exe &lt;b&gt;"),
            "{shown}"
        );
        assert_eq!(super::esc_text("plain"), "plain");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
