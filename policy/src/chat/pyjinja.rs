//! minijinja set up to behave like transformers' Jinja2 environment
//! (`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`):
//! Python's printing of values (`True`, `None`, `1.0`, `['a']`), Python's
//! string methods where minijinja-contrib's differ, a `tojson` that behaves
//! like `json.dumps`, and the `raise_exception` / `strftime_now` globals.
use super::{TemplateValue, TEMPLATE_NAME};
use minijinja::value::{ArgType, Kwargs, Rest, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, UndefinedBehavior};
use std::fmt::Write as _;

/// Compiles `source` into an environment configured like
/// `ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`.
pub(super) fn environment(source: &str) -> Result<Environment<'static>, Error> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(formatter);
    env.set_unknown_method_callback(unknown_method);
    env.add_filter("tojson", tojson);
    env.add_filter("trim", trim_filter);
    env.add_filter("string", |v: &TemplateValue| py_str(v));
    env.add_function("raise_exception", raise_exception);
    env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(source))?;
    Ok(env)
}

/// `raise_exception(msg)`: the template rejects its input.
fn raise_exception(msg: Rest<TemplateValue>) -> Result<TemplateValue, Error> {
    let text: Vec<String> = msg.iter().map(py_str).collect();
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("template raised an exception: {}", text.join(" ")),
    ))
}

/// `strftime_now(fmt)` bound to a fixed clock.
pub(super) fn strftime_now(now: chrono::NaiveDateTime) -> TemplateValue {
    TemplateValue::from_function(move |fmt: &str| -> Result<String, Error> {
        let mut out = String::new();
        // `write!` reports a bad format spec as an error where `to_string()` would panic.
        write!(out, "{}", now.format(fmt)).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("strftime_now: bad format {fmt:?}"),
            )
        })?;
        Ok(out)
    })
}

/// transformers' `{% generation %}` block (assistant-mask tracking) is a Jinja2
/// extension; it renders its body unchanged, so turn it into an always-true `if`
/// with the same whitespace-control markers.
pub(super) fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(pos) = rest.find("{%") {
        out.push_str(&rest[..pos]);
        let tag = &rest[pos..];
        let Some(close) = tag.find("%}") else {
            out.push_str(tag);
            return out;
        };
        let inner = &tag[2..close];
        let (lead, body) = match inner.chars().next() {
            Some(c @ ('-' | '+')) => (c.to_string(), &inner[1..]),
            _ => (String::new(), inner),
        };
        let (body, trail) = match body.chars().last() {
            Some(c @ ('-' | '+')) => (&body[..body.len() - 1], c.to_string()),
            _ => (body, String::new()),
        };
        match body.trim() {
            "generation" => out.push_str(&format!("{{%{lead} if true {trail}%}}")),
            "endgeneration" => out.push_str(&format!("{{%{lead} endif {trail}%}}")),
            _ => out.push_str(&tag[..close + 2]),
        }
        rest = &tag[close + 2..];
    }
    out.push_str(rest);
    out
}

/// Python's `str.isspace()` for one character (Rust's set lacks \x1c..\x1f).
pub(super) fn py_isspace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

pub(super) fn py_strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let matches = |c: char| match chars {
        Some(set) => set.contains(c),
        None => py_isspace(c),
    };
    let mut out = s;
    if left {
        out = out.trim_start_matches(matches);
    }
    if right {
        out = out.trim_end_matches(matches);
    }
    out
}

/// Jinja2's `trim(value, chars=None)` = Python `str(value).strip(chars)`.
fn trim_filter(v: &TemplateValue, chars: Option<&str>) -> String {
    let s = py_str(v);
    py_strip(&s, chars, true, true).to_owned()
}

/// Python methods on values; a few are re-done here where minijinja-contrib's
/// version differs from Python (whitespace set, character vs byte indices).
fn unknown_method(
    state: &State,
    value: &TemplateValue,
    method: &str,
    args: &[TemplateValue],
) -> Result<TemplateValue, Error> {
    if let Some(s) = value.as_str() {
        let strip = |left: bool, right: bool| -> Result<TemplateValue, Error> {
            let (chars,): (Option<&str>,) = minijinja::value::from_args(args)?;
            Ok(TemplateValue::from(py_strip(s, chars, left, right)))
        };
        match method {
            "strip" => return strip(true, true),
            "lstrip" => return strip(true, false),
            "rstrip" => return strip(false, true),
            "isspace" => {
                let () = minijinja::value::from_args(args)?;
                return Ok(TemplateValue::from(
                    !s.is_empty() && s.chars().all(py_isspace),
                ));
            }
            "find" | "rfind" | "index" | "rindex" => {
                let (needle,): (&str,) = minijinja::value::from_args(args)?;
                let found = if method.starts_with('r') {
                    s.rfind(needle)
                } else {
                    s.find(needle)
                };
                return match found {
                    Some(b) => Ok(TemplateValue::from(s[..b].chars().count() as i64)),
                    None if method.ends_with("find") => Ok(TemplateValue::from(-1i64)),
                    None => Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "substring not found",
                    )),
                };
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Prints values the way Python's `str()` does (`True`, `None`, `1.0`, `['a']`).
fn formatter(
    out: &mut minijinja::Output,
    _state: &State,
    value: &TemplateValue,
) -> Result<(), Error> {
    if value.is_undefined() {
        return Ok(());
    }
    if let Some(s) = value.as_str() {
        return out.write_str(s).map_err(Error::from);
    }
    out.write_str(&py_str(value)).map_err(Error::from)
}

/// Python `str(value)`.
pub(super) fn py_str(value: &TemplateValue) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::String => value.as_str().unwrap_or_default().to_owned(),
        _ => py_repr(value),
    }
}

/// Python `repr(value)` for JSON-like values.
pub(super) fn py_repr(value: &TemplateValue) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number => number_repr(value, false),
        ValueKind::String => py_str_repr(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => match value.try_iter() {
            Ok(it) => format!(
                "[{}]",
                it.map(|v| py_repr(&v)).collect::<Vec<_>>().join(", ")
            ),
            Err(_) => value.to_string(),
        },
        ValueKind::Map => match value.try_iter() {
            Ok(keys) => {
                let items: Vec<String> = keys
                    .map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", py_repr(&k), py_repr(&v))
                    })
                    .collect();
                format!("{{{}}}", items.join(", "))
            }
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

fn py_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Integers as decimal; floats as Python's `repr(float)` (or JSON's spelling).
fn number_repr(value: &TemplateValue, json: bool) -> String {
    if value.is_integer() {
        return value.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) => py_float_repr(f, json),
        Err(_) => value.to_string(),
    }
}

/// Python's shortest round-trip float repr: `1.0`, `0.1`, `1e-05`, `1e+16`.
pub(super) fn py_float_repr(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        let s = if json { "Infinity" } else { "inf" };
        return if f < 0.0 { format!("-{s}") } else { s.into() };
    }
    // Rust's `{:e}` gives the shortest round-trip digits, like Python's repr.
    let sci = format!("{:e}", f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let (int_part, frac_part) = if point <= 0 {
            (
                "0".to_string(),
                format!("{}{}", "0".repeat((-point) as usize), digits),
            )
        } else if point as usize >= digits.len() {
            (
                format!("{}{}", digits, "0".repeat(point as usize - digits.len())),
                String::new(),
            )
        } else {
            (
                digits[..point as usize].to_string(),
                digits[point as usize..].to_string(),
            )
        };
        let frac = if frac_part.is_empty() {
            "0".to_string()
        } else {
            frac_part
        };
        format!("{sign}{int_part}.{frac}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!(
            "{sign}{m}e{}{:02}",
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    }
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)` = Python `json.dumps` with those arguments.
fn tojson(value: &TemplateValue, args: Rest<TemplateValue>) -> Result<String, Error> {
    let mut positional: Vec<TemplateValue> = args.0.clone();
    let kwargs = match positional.last() {
        Some(last) if last.is_kwargs() => {
            let last = positional.pop().unwrap_or_default();
            Kwargs::from_value(Some(&last))?
        }
        _ => Kwargs::from_value(None)?,
    };
    if positional.len() > 4 {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            "tojson takes at most 4 arguments",
        ));
    }
    let pick = |i: usize, name: &str| -> Result<Option<TemplateValue>, Error> {
        let kw: Option<TemplateValue> = kwargs.get(name)?;
        if kw.is_some() && positional.len() > i {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson got multiple values for {name}"),
            ));
        }
        Ok(kw
            .or_else(|| positional.get(i).cloned())
            .filter(|v| !v.is_none() && !v.is_undefined()))
    };
    let ensure_ascii = pick(0, "ensure_ascii")?
        .map(|v| v.is_true())
        .unwrap_or(false);
    let indent = match pick(1, "indent")? {
        None => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) => match i64::try_from(v.clone()) {
            Ok(n) => Some(" ".repeat(n.max(0) as usize)),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an int or a string",
                ))
            }
        },
    };
    let separators = match pick(2, "separators")? {
        None => None,
        Some(v) => {
            let parts: Vec<TemplateValue> = v.try_iter()?.collect();
            match parts.as_slice() {
                [a, b] => Some((py_str(a), py_str(b))),
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair",
                    ))
                }
            }
        }
    };
    let sort_keys = pick(3, "sort_keys")?.map(|v| v.is_true()).unwrap_or(false);
    kwargs.assert_all_used()?;
    let (item_sep, key_sep) = separators.unwrap_or_else(|| {
        (
            if indent.is_some() { "," } else { ", " }.to_owned(),
            ": ".to_owned(),
        )
    });
    let opts = JsonOpts {
        ensure_ascii,
        indent,
        item_sep,
        key_sep,
        sort_keys,
    };
    let mut out = String::new();
    json_dump(value, &opts, 0, &mut out)?;
    Ok(out)
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn json_dump(
    value: &TemplateValue,
    o: &JsonOpts,
    depth: usize,
    out: &mut String,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&number_repr(value, true)),
        ValueKind::String => json_str(value.as_str().unwrap_or_default(), o.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<TemplateValue> = value.try_iter()?.collect();
            json_container(out, o, depth, '[', ']', items.len(), |i, out| {
                json_dump(&items[i], o, depth + 1, out)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<TemplateValue> = value.try_iter()?.collect();
            if o.sort_keys {
                keys.sort_by_key(json_key);
            }
            json_container(out, o, depth, '{', '}', keys.len(), |i, out| {
                json_str(&json_key(&keys[i]), o.ensure_ascii, out);
                out.push_str(&o.key_sep);
                json_dump(&value.get_item(&keys[i])?, o, depth + 1, out)
            })?;
        }
        ValueKind::Undefined => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "tojson: value is undefined",
            ))
        }
        other => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: cannot serialize a {other} value"),
            ))
        }
    }
    Ok(())
}

fn json_container(
    out: &mut String,
    o: &JsonOpts,
    depth: usize,
    open: char,
    close: char,
    len: usize,
    mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        if i > 0 {
            out.push_str(&o.item_sep);
        }
        if let Some(ind) = &o.indent {
            out.push('\n');
            out.push_str(&ind.repeat(depth + 1));
        }
        item(i, out)?;
    }
    if let Some(ind) = &o.indent {
        out.push('\n');
        out.push_str(&ind.repeat(depth));
    }
    out.push(close);
    Ok(())
}

/// Python's json turns non-string keys into strings (`True` → `"true"`).
fn json_key(k: &TemplateValue) -> String {
    match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_owned(),
        ValueKind::None => "null".into(),
        ValueKind::Bool => if k.is_true() { "true" } else { "false" }.into(),
        ValueKind::Number => number_repr(k, true),
        _ => k.to_string(),
    }
}

fn json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{:04x}", unit);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
