//! Hostile input: malformed JSON, wrong types, huge bodies, script tags and
//! SQL-looking strings. Every bad request gets a clear 4xx JSON error.
mod common;

use annotation_server::api::Role;
use annotation_server::state::Config;
use common::{assert_error, browser, get_text, login, TestDb, TestServer, PASSWORD};
use serde_json::json;

on_both_databases!(
    bad_input_gets_json_4xx,
    hostile_strings_are_stored_verbatim_and_escaped
);

const XSS: &str = "<script>alert('pwned')</script><img src=x onerror=alert(1)>\"'&";
const SQLI: &str = "'; DROP TABLE labels; -- \" OR 1=1";

async fn bad_input_gets_json_4xx(db: TestDb) {
    let config = Config {
        import_body_limit: 64 * 1024,
        ..Config::default()
    };
    let s = TestServer::start_with(db, config).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let l = s.api(&s.token("lab", Role::Labeler).await);

    // malformed JSON, wrong types, missing content type, unknown fields
    assert_error(
        r.post_raw("/api/comparisons", "application/json", "{not json")
            .await,
        400,
    )
    .await;
    assert_error(
        r.post_raw(
            "/api/comparisons",
            "application/json",
            "{\"batch\": 5, \"comparisons\": []}",
        )
        .await,
        422,
    )
    .await;
    assert_error(
        r.post_raw("/api/comparisons", "text/plain", "{}").await,
        415,
    )
    .await;
    assert_error(
        r.post(
            "/api/comparisons",
            json!({"batch": "b", "comparisons": [], "evil": true}),
        )
        .await,
        422,
    )
    .await;
    assert_error(
        r.post("/api/comparisons", json!({"batch": "b", "comparisons": []}))
            .await,
        422,
    )
    .await;
    assert_error(r.post("/api/comparisons", json!({"batch": "b", "labels_wanted": 0, "comparisons": [{"prompt_id": 1, "responses": [{"text": "a"}, {"text": "b"}]}]})).await, 422).await;
    assert_error(r.post("/api/comparisons", json!({"batch": "b", "comparisons": [{"prompt_id": 12345, "responses": [{"text": "a"}, {"text": "b"}]}]})).await, 422).await;
    assert_error(r.post("/api/comparisons", json!({"batch": "b", "comparisons": [{"prompt_id": 1, "responses": [{"text": "only one"}]}]})).await, 422).await;
    assert_error(
        r.post(
            "/api/comparisons",
            json!({"batch": "b", "labels_wanted": -3, "comparisons": []}),
        )
        .await,
        422,
    )
    .await;
    assert_error(
        r.post(
            "/api/comparisons",
            json!({"batch": "b", "labels_wanted": 1e99, "comparisons": []}),
        )
        .await,
        422,
    )
    .await;

    // prompt imports: bad lines are named
    let m = assert_error(
        r.post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            "{\"prompt\": \"ok\"}\n{oops\n",
        )
        .await,
        400,
    )
    .await;
    assert!(m.contains("line 2"), "{m}");
    let m = assert_error(
        r.post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            "{\"prompt\": \"a\", \"messages\": []}",
        )
        .await,
        422,
    )
    .await;
    assert!(m.contains("exactly one"), "{m}");
    assert_error(
        r.post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            "{\"messages\": [{\"role\": \"wizard\", \"content\": \"x\"}]}",
        )
        .await,
        422,
    )
    .await;
    assert_error(r.post_raw("/api/prompts/import", "application/x-ndjson", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}]}").await, 422).await;
    assert_error(
        r.post_raw("/api/prompts/import", "application/x-ndjson", "\n\n")
            .await,
        400,
    )
    .await;
    assert_error(
        r.post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            vec![0xffu8, 0xfe, 0x00],
        )
        .await,
        400,
    )
    .await;
    // huge bodies: over the import limit, and over the general limit
    let huge = format!("{{\"prompt\": \"{}\"}}\n", "x".repeat(100 * 1024));
    assert_error(
        r.post_raw("/api/prompts/import", "application/x-ndjson", huge)
            .await,
        413,
    )
    .await;
    let huge = json!({"ranking": [1, 2], "strength": "better", "note": "x".repeat(2 << 20)});
    assert_error(l.post("/api/tasks/1/label", huge).await, 413).await;

    // labels: wrong shapes and values
    let pid = r.import_prompt("{\"prompt\": \"p\"}").await;
    let c = r.post("/api/comparisons", json!({"batch": "b", "comparisons": [{"prompt_id": pid, "responses": [{"text": "a"}, {"text": "b"}]}]})).await;
    let id = c.json::<serde_json::Value>().await.unwrap()["comparison_ids"][0]
        .as_i64()
        .unwrap();
    for bad in [
        json!({"ranking": [1], "strength": "better"}),
        json!({"ranking": [1, 3], "strength": "better"}),
        json!({"ranking": [0, 1], "strength": "better"}),
        json!({"ranking": [2, 2], "strength": "better"}),
    ] {
        assert_error(l.post(&format!("/api/tasks/{id}/label"), bad).await, 422).await;
    }
    for bad in [
        json!({"ranking": [1, 2], "strength": "totally"}),
        json!({"ranking": "12", "strength": "better"}),
        json!({"ranking": [1, 2]}),
        json!({"ranking": [1, -2], "strength": "better"}),
        json!({"ranking": [1, 2], "strength": "better", "safety": "meh"}),
        json!({"ranking": [1, 2], "strength": "better", "time_spent_ms": -1}),
    ] {
        assert_error(l.post(&format!("/api/tasks/{id}/label"), bad).await, 422).await;
    }
    // nothing was stored by the bad requests
    assert_eq!(
        r.json(&format!("/api/comparisons/{id}")).await["labels_done"],
        0
    );

    // NUL characters (PostgreSQL cannot store them) are refused, not a 500
    assert_error(
        r.post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            "{\"prompt\": \"a\\u0000b\"}",
        )
        .await,
        422,
    )
    .await;
    assert_error(
        r.post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            "{\"id\": \"x\\u0000\", \"prompt\": \"a\"}",
        )
        .await,
        422,
    )
    .await;
    assert_error(r.post("/api/comparisons", json!({"batch": "b\u{0}", "comparisons": [{"prompt_id": pid, "responses": [{"text": "a"}, {"text": "b"}]}]})).await, 422).await;
    assert_error(r.post("/api/comparisons", json!({"batch": "b", "comparisons": [{"prompt_id": pid, "responses": [{"text": "a\u{0}"}, {"text": "b"}]}]})).await, 422).await;
    assert_error(
        l.post(
            &format!("/api/tasks/{id}/label"),
            json!({"ranking": [1, 2], "strength": "better", "note": "\u{0}"}),
        )
        .await,
        422,
    )
    .await;
    assert_error(r.post("/api/rounds", json!({"name": "r\u{0}"})).await, 422).await;
    let login = reqwest::Client::new()
        .post(format!("{}/login", s.url))
        .header("cookie", format!("rlhf_login_csrf={}", "a".repeat(64)))
        .form(&[
            ("username", "x\u{0}"),
            ("password", "p"),
            ("csrf", &"a".repeat(64)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 401);

    // paths and queries
    assert_error(l.post("/api/tasks/abc/label", json!({})).await, 400).await;
    assert_error(r.get("/api/comparisons/99999999999999999999999").await, 400).await;
    assert_error(r.get("/api/prompts?limit=abc").await, 400).await;
    assert_error(r.get("/api/prompts?limit=100000").await, 400).await;
    assert_error(r.get("/api/nope").await, 404).await;
    assert_error(r.get("/api/comparisons/424242").await, 404).await;
    assert_error(r.get("/api/batches/424242").await, 404).await;
    assert_error(r.get("/api/batches/424242/agreement").await, 404).await;
    // a wrong Authorization scheme
    let resp = reqwest::Client::new()
        .get(format!("{}/api/me", s.url))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_error(resp, 401).await;
    s.stop().await;
}

async fn hostile_strings_are_stored_verbatim_and_escaped(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let line =
        serde_json::to_string(&json!({"id": SQLI, "prompt": XSS, "tags": [XSS], "source": SQLI}))
            .unwrap();
    let p = r
        .post_raw("/api/prompts/import", "application/x-ndjson", line)
        .await;
    assert_eq!(p.status(), 201);
    let c = r
        .post(
            "/api/comparisons",
            json!({"batch": SQLI, "comparisons": [{"prompt_external_id": SQLI, "responses": [{"text": XSS, "model": SQLI}, {"text": "</pre><b>bold</b>"}]}]}),
        )
        .await;
    assert_eq!(c.status(), 201);
    let prompts = r.json("/api/prompts").await;
    assert_eq!(prompts[0]["messages"][0]["content"], XSS);
    assert_eq!(prompts[0]["external_id"], SQLI);
    let b = r.json("/api/batches").await;
    assert_eq!(b[0]["name"], SQLI);

    // the labeler page escapes everything
    s.user("lab", Role::Labeler).await;
    let http = s.browser("lab").await;
    let page = http.get(format!("{}/label", s.url)).send().await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>alert"), "unescaped script tag");
    assert!(!html.contains("<img src=x"), "unescaped img tag");
    assert!(!html.contains("<b>bold</b>"), "unescaped markup");
    assert!(html.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"));
    assert!(html.contains("&lt;/pre&gt;&lt;b&gt;bold&lt;/b&gt;"));

    // the researcher dashboard escapes batch names too
    s.user("res2", Role::Researcher).await;
    let http = browser();
    let resp = login(&http, &s.url, "res2", PASSWORD).await;
    assert_eq!(resp.headers()["location"], "/dashboard");
    let html = get_text(&http, &format!("{}/dashboard", s.url)).await;
    assert!(
        html.contains("&#39;; DROP TABLE labels; -- &quot; OR 1=1"),
        "{html}"
    );
    s.stop().await;
}
