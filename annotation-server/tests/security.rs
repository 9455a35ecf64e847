//! The server's security promises (SECURITY.md), each against a real server
//! over HTTP on SQLite and PostgreSQL: login rate limits under concurrent
//! clients, per-account limits that a flood cannot turn into a lockout, a
//! capped audit log, bearer-only API without state-changing GETs, tokens that
//! expire, are listed and revoked at once on every server process, metrics
//! behind a token, server-made login CSRF tokens, JSON objects only, and
//! model text that cannot reorder itself on the labeling page.
mod common;

use annotation_server::accounts;
use annotation_server::api::Role;
use annotation_server::cli::{Commands, DbArgs, DbCommand, TokenCommand, UserCommand};
use annotation_server::state::Config;
use common::{
    assert_error, browser_login, create_user, get_text, hidden, login_csrf, run_cli, scalar,
    wait_for_status, TestDb, TestServer, PASSWORD,
};
use sea_orm::ConnectionTrait;
use serde_json::json;
use std::net::IpAddr;

on_both_databases!(
    concurrent_failures_are_counted_before_hashing,
    one_address_cannot_lock_out_an_account,
    audit_log_fields_are_capped,
    api_is_bearer_only_and_gets_change_nothing,
    tokens_expire_are_listed_and_revoked,
    revocation_reaches_every_server_process,
    metrics_need_a_token_unless_opened,
    login_csrf_comes_from_the_server,
    bodies_must_be_json_objects,
    comparisons_need_distinct_responses,
    bidi_controls_cannot_disguise_text,
    cli_refuses_databases_without_schema,
    round_statuses_are_checked,
);

/// A client that connects from `source` (any 127.0.0.0/8 address reaches the
/// server on Linux), without cookies or redirects.
fn client_from(source: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::from(source))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// One login POST with the given CSRF pair; the status.
async fn try_login(
    http: &reqwest::Client,
    url: &str,
    csrf: &str,
    user: &str,
    password: &str,
) -> u16 {
    http.post(format!("{url}/login"))
        .header("cookie", format!("rlhf_login_csrf={csrf}"))
        .form(&[("username", user), ("password", password), ("csrf", csrf)])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Logs in from `source`; the status.
async fn login_from(source: [u8; 4], url: &str, user: &str, password: &str) -> u16 {
    let http = client_from(source);
    let csrf = login_csrf(&http, url).await;
    try_login(&http, url, &csrf, user, password).await
}

/// Regression: 50 wrong passwords at once used to be checked all 50 times
/// (the limit was read before the hash and written after it).
async fn concurrent_failures_are_counted_before_hashing(db: TestDb) {
    let config = Config {
        // enough hash slots for all of them: only the rate limit may refuse
        max_concurrent_hashes: 64,
        ..Config::default()
    };
    let s = TestServer::start_with(db, config).await;
    s.user("lab", Role::Labeler).await;
    let http = client_from([127, 0, 0, 1]);
    let csrf = login_csrf(&http, &s.url).await;
    let mut clients = vec![];
    for _ in 0..50 {
        let (http, url, csrf) = (http.clone(), s.url.clone(), csrf.clone());
        clients.push(tokio::spawn(async move {
            try_login(&http, &url, &csrf, "lab", "wrong-password").await
        }));
    }
    let mut statuses = vec![];
    for c in clients {
        statuses.push(c.await.unwrap());
    }
    let limit = s.state.config.login_max_failures as usize;
    let checked = statuses.iter().filter(|&&x| x == 401).count();
    assert_eq!(checked, limit, "{statuses:?}");
    assert!(
        statuses.iter().all(|&x| x == 401 || x == 429),
        "{statuses:?}"
    );
    assert_eq!(
        scalar(
            &s.db,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'login.fail'"
        )
        .await,
        limit as i64
    );
    s.stop().await;
}

/// Regression: failures from one address used to lock the account for
/// every address.
async fn one_address_cannot_lock_out_an_account(db: TestDb) {
    let config = Config {
        login_max_failures: 10,
        login_max_failures_per_account: 15,
        ..Config::default()
    };
    let s = TestServer::start_with(db, config).await;
    s.user("lab", Role::Labeler).await;
    let url = s.url.clone();
    let attacker = [127, 0, 0, 11];
    for _ in 0..10 {
        assert_eq!(login_from(attacker, &url, "lab", "wrong").await, 401);
    }
    // the attacking address is blocked, even with the right password ...
    assert_eq!(login_from(attacker, &url, "lab", PASSWORD).await, 429);
    // ... the owner, elsewhere, is not
    assert_eq!(
        login_from([127, 0, 0, 12], &url, "lab", PASSWORD).await,
        303
    );
    // a second address brings the account to its ceiling (15 failures)
    let second = [127, 0, 0, 13];
    for _ in 0..5 {
        assert_eq!(login_from(second, &url, "lab", "wrong").await, 401);
    }
    // past it, addresses that failed for the account are refused at once ...
    assert_eq!(login_from(second, &url, "lab", PASSWORD).await, 429);
    // ... a clean address gets one attempt: the right password passes
    assert_eq!(
        login_from([127, 0, 0, 14], &url, "lab", PASSWORD).await,
        303
    );
    // a clean address that guesses wrong is refused from then on
    let third = [127, 0, 0, 15];
    assert_eq!(login_from(third, &url, "lab", "wrong").await, 401);
    assert_eq!(login_from(third, &url, "lab", "wrong").await, 429);
    s.stop().await;
}

/// Regression: failed logins stored the attempted name unbounded.
async fn audit_log_fields_are_capped(db: TestDb) {
    let s = TestServer::start(db).await;
    let http = client_from([127, 0, 0, 21]);
    let csrf = login_csrf(&http, &s.url).await;
    let huge = "n".repeat(900_000);
    for _ in 0..5 {
        assert_eq!(
            try_login(&http, &s.url, &csrf, &huge, "whatever").await,
            401
        );
    }
    let longest = scalar(
        &s.db,
        "SELECT CAST(MAX(LENGTH(detail)) AS BIGINT) FROM audit_log",
    )
    .await;
    assert!(longest < 1_000, "an audit entry of {longest} bytes");
    // API details are capped too (the export filter is echoed into the log)
    let r = s.api(&s.token("res", Role::Researcher).await);
    let since = "9".repeat(5_000);
    assert_error(r.get(&format!("/api/export?since={since}")).await, 400).await;
    let long_name = "r".repeat(150);
    let created = r.post("/api/rounds", json!({"name": long_name})).await;
    assert_eq!(created.status(), 201);
    let longest = scalar(
        &s.db,
        "SELECT CAST(MAX(LENGTH(detail)) AS BIGINT) FROM audit_log",
    )
    .await;
    assert!(longest < 2_000, "an audit entry of {longest} bytes");
    s.stop().await;
}

/// Regression: `GET /api/tasks/next` took a lease with only a cookie.
async fn api_is_bearer_only_and_gets_change_nothing(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let pid = r.import_prompt("{\"prompt\": \"p\"}").await;
    let c = r
        .post(
            "/api/comparisons",
            json!({"batch": "b", "comparisons": [{"prompt_id": pid, "responses": [{"text": "a"}, {"text": "b"}]}]}),
        )
        .await;
    let batch = c.json::<serde_json::Value>().await.unwrap()["batch_id"]
        .as_i64()
        .unwrap();
    // a logged-in browser (session cookie) of a researcher
    let http = browser_login(&s.url, "res").await;
    // the cookie opens no API route, GET or POST
    for path in [
        "/api/batches",
        "/api/me",
        &format!("/api/export?batch_id={batch}"),
    ] {
        let resp = http.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_error(resp, 401).await;
    }
    let resp = http
        .post(format!("{}/api/tasks/next", s.url))
        .send()
        .await
        .unwrap();
    assert_error(resp, 401).await;
    // no GET takes a lease, whatever the credentials
    let resp = http
        .get(format!("{}/api/tasks/next", s.url))
        .send()
        .await
        .unwrap();
    assert_error(resp, 405).await;
    assert_error(r.get("/api/tasks/next").await, 405).await;
    assert_eq!(scalar(&s.db, "SELECT COUNT(*) FROM leases").await, 0);
    // the dashboard links to read-only pages that take the cookie
    let dash = get_text(&http, &format!("{}/dashboard", s.url)).await;
    assert!(dash.contains(&format!(
        "/dashboard/export?format=trl&amp;batch_id={batch}"
    )));
    assert!(!dash.contains("href=\"/api/export"), "{dash}");
    let export = http
        .get(format!(
            "{}/dashboard/export?format=raw&batch_id={batch}",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    assert_eq!(export.headers()["content-type"], "application/x-ndjson");
    let agreement = http
        .get(format!("{}/dashboard/batches/{batch}/agreement", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(agreement.status(), 200);
    // the bearer client works as before
    assert_eq!(r.post_empty("/api/tasks/next").await.status(), 200);
    s.stop().await;
}

/// Regression (one server): tokens can expire, are listed without their
/// secrets, record their last use, and can be revoked one by one.
async fn tokens_expire_are_listed_and_revoked(db: TestDb) {
    let s = TestServer::start(db).await;
    let admin = s.api(&s.token("adm", Role::Admin).await);
    s.user("lab", Role::Labeler).await;
    for bad in [
        json!({"expires_in_days": 0}),
        json!({"expires_in_days": 99_999}),
    ] {
        assert_error(admin.post("/api/users/lab/tokens", bad).await, 422).await;
    }
    let mk = |body: serde_json::Value| {
        let admin = admin.clone();
        async move {
            let r = admin.post("/api/users/lab/tokens", body).await;
            assert_eq!(r.status(), 201);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let a = mk(json!({"name": "a", "expires_in_days": 30})).await;
    let b = mk(json!({"name": "b"})).await;
    let c = mk(json!({"name": "c", "expires_in_days": 1})).await;
    assert!(a["expires_at"].is_string() && b.get("expires_at").is_none());
    let (ta, tb, tc) = (
        s.api(a["token"].as_str().unwrap()),
        s.api(b["token"].as_str().unwrap()),
        s.api(c["token"].as_str().unwrap()),
    );
    assert_eq!(ta.get("/api/me").await.status(), 200);
    // last use is recorded (in the background, at most once a minute)
    let mut used = serde_json::Value::Null;
    for _ in 0..40 {
        let list = admin.json("/api/users/lab/tokens").await;
        used = list[0]["last_used_at"].clone();
        if used.is_string() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(used.is_string(), "last_used_at never set");
    let list = admin.json("/api/users/lab/tokens").await;
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert_eq!(list[1]["name"], "b");
    assert!(list[1]["expires_at"].is_null() && list[1]["last_used_at"].is_null());
    assert!(
        !list.to_string().contains("rlhf_"),
        "secrets listed: {list}"
    );
    // revoking one token leaves the others working
    let id = b["id"].as_i64().unwrap();
    assert_eq!(
        admin
            .http
            .delete(format!("{}/api/tokens/{id}", s.url))
            .bearer_auth(&admin.token)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    assert_error(tb.get("/api/me").await, 401).await;
    assert_eq!(ta.get("/api/me").await.status(), 200);
    let gone = admin
        .http
        .delete(format!("{}/api/tokens/{id}", s.url))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_error(gone, 404).await;
    // an expired token stops working (its end moved into the past, before first use)
    s.db.execute_unprepared(&format!(
        "UPDATE api_tokens SET expires_at = 1 WHERE id = {}",
        c["id"].as_i64().unwrap()
    ))
    .await
    .unwrap();
    assert_error(tc.get("/api/me").await, 401).await;
    // the CLI lists and revokes too
    let dbargs = || DbArgs {
        database_url: s.testdb.url.clone(),
    };
    let out = run_cli(
        Commands::Token {
            cmd: TokenCommand::List {
                username: Some("lab".into()),
                db: dbargs(),
            },
        },
        "",
    )
    .await
    .unwrap();
    assert!(
        out.contains(" a ") && out.contains(" c ") && !out.contains(" b "),
        "{out}"
    );
    let out = run_cli(
        Commands::Token {
            cmd: TokenCommand::Revoke {
                id: a["id"].as_i64().unwrap(),
                db: dbargs(),
            },
        },
        "",
    )
    .await
    .unwrap();
    assert!(out.contains("Revoked"), "{out}");
    wait_for_status(&ta, "/api/me", 401).await;
    let out = run_cli(
        Commands::Token {
            cmd: TokenCommand::Create {
                username: "lab".into(),
                name: None,
                expires_in_days: Some(7),
                db: dbargs(),
            },
        },
        "",
    )
    .await
    .unwrap();
    assert_eq!(s.api(out.trim()).get("/api/me").await.status(), 200);
    s.stop().await;
}

/// A server process (`annotation-server serve`), killed when dropped.
struct ServerProcess {
    child: std::process::Child,
    url: String,
}

impl ServerProcess {
    fn start(database_url: &str) -> ServerProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_annotation-server"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--database-url",
                database_url,
            ])
            .env("RLHF_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start annotation-server");
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("the server printed its address")
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        ServerProcess { child, url }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Regression (several processes): a disable or revoke through one server
/// process reaches another on the same database at once (it used to keep
/// accepting the token from its cache for up to 5 s).
async fn revocation_reaches_every_server_process(db: TestDb) {
    let url = db.url.clone();
    let dbargs = || DbArgs {
        database_url: url.clone(),
    };
    run_cli(
        Commands::Db {
            cmd: DbCommand::Migrate { db: dbargs() },
        },
        "",
    )
    .await
    .unwrap();
    let conn = annotation_server::db::connect(&url).await.unwrap();
    for (name, role) in [
        ("adm", Role::Admin),
        ("lab", Role::Labeler),
        ("bot", Role::Labeler),
    ] {
        create_user(&conn, name, role).await;
    }
    let token = |name: &'static str| {
        let conn = conn.clone();
        async move {
            accounts::create_token(&conn, name, None, None)
                .await
                .unwrap()
        }
    };
    let (adm_token, lab_token) = (token("adm").await, token("lab").await);
    let bot = accounts::create_token_expiring(&conn, "bot", None, None, None)
        .await
        .unwrap();
    let (a, b) = (ServerProcess::start(&url), ServerProcess::start(&url));
    let api = |base: &str, token: &str| common::Api {
        base: base.to_string(),
        token: token.to_string(),
        http: reqwest::Client::new(),
    };
    let admin_a = api(&a.url, &adm_token);
    let (lab_b, bot_b) = (api(&b.url, &lab_token), api(&b.url, &bot.token));
    // both tokens work on B (and sit in its cache)
    for _ in 0..3 {
        assert_eq!(lab_b.get("/api/me").await.status(), 200);
        assert_eq!(bot_b.get("/api/me").await.status(), 200);
    }
    // disabled through A: B refuses the token
    let r = admin_a.post("/api/users/lab/disable", json!({})).await;
    assert_eq!(r.status(), 200);
    wait_for_status(&lab_b, "/api/me", 401).await;
    // revoked through A: B refuses it
    let r = admin_a
        .http
        .delete(format!("{}/api/tokens/{}", a.url, bot.id))
        .bearer_auth(&adm_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_for_status(&bot_b, "/api/me", 401).await;
    drop((a, b));
    conn.close().await.ok();
}

/// Regression: `/metrics` answered anyone.
async fn metrics_need_a_token_unless_opened(db: TestDb) {
    let config = Config {
        metrics_public: true,
        ..Config::default()
    };
    let s = TestServer::start_with(db, config).await;
    let m = reqwest::get(format!("{}/metrics", s.url)).await.unwrap();
    assert_eq!(m.status(), 200);
    assert!(m.text().await.unwrap().contains("rlhf_queue_depth"));
    s.stop().await;
}

/// Regression: the login form adopted any 64-hex CSRF cookie it was sent.
async fn login_csrf_comes_from_the_server(db: TestDb) {
    let s = TestServer::start(db).await;
    s.user("lab", Role::Labeler).await;
    let planted = "a".repeat(64);
    let r = reqwest::Client::new()
        .get(format!("{}/login", s.url))
        .header("cookie", format!("rlhf_login_csrf={planted}"))
        .send()
        .await
        .unwrap();
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let html = r.text().await.unwrap();
    assert!(!set.contains(&planted) && !html.contains(&planted), "{set}");
    // a POST from another site is refused even with a matching pair
    let http = client_from([127, 0, 0, 1]);
    let csrf = login_csrf(&http, &s.url).await;
    for (header, value) in [
        ("origin", "https://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let resp = http
            .post(format!("{}/login", s.url))
            .header("cookie", format!("rlhf_login_csrf={csrf}"))
            .header(header, value)
            .form(&[("username", "lab"), ("password", PASSWORD), ("csrf", &csrf)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{header}: {value}");
    }
    // the same POST from our own origin logs in, also through a proxy that
    // rewrites Host, and from browsers that say so in Sec-Fetch-Site
    for (header, value) in [
        ("x-forwarded-host", "annotate.example"),
        ("sec-fetch-site", "same-origin"),
    ] {
        let resp = http
            .post(format!("{}/login", s.url))
            .header("cookie", format!("rlhf_login_csrf={csrf}"))
            .header("origin", "https://annotate.example")
            .header(header, value)
            .form(&[("username", "lab"), ("password", PASSWORD), ("csrf", &csrf)])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 303, "{header}: {value}");
    }
    let resp = http
        .post(format!("{}/login", s.url))
        .header("cookie", format!("rlhf_login_csrf={csrf}"))
        .header("origin", s.url.clone())
        .form(&[("username", "lab"), ("password", PASSWORD), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
    s.stop().await;
}

/// Regression: `[]` was read as an object with every field left out.
async fn bodies_must_be_json_objects(db: TestDb) {
    let s = TestServer::start(db).await;
    let admin = s.api(&s.token("adm", Role::Admin).await);
    let created = admin.post("/api/rounds", json!({"name": "r"})).await;
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let patch = admin
        .http
        .patch(format!("{}/api/rounds/{id}", s.url))
        .bearer_auth(&admin.token)
        .json(&json!([]))
        .send()
        .await
        .unwrap();
    assert!(assert_error(patch, 422).await.contains("JSON object"));
    assert_error(admin.post("/api/users/adm/tokens", json!([])).await, 422).await;
    assert_error(admin.post("/api/rounds", json!(["r"])).await, 422).await;
    assert_error(
        admin
            .post_raw("/api/rounds", "application/json", " 5")
            .await,
        422,
    )
    .await;
    assert_eq!(
        scalar(&s.db, "SELECT COUNT(*) FROM api_tokens").await,
        1,
        "no token was made"
    );
    // objects still work, and a missing content type is still 415
    assert_eq!(
        admin
            .post("/api/users/adm/tokens", json!({}))
            .await
            .status(),
        201
    );
    assert_error(admin.post_raw("/api/rounds", "text/plain", "{}").await, 415).await;
    s.stop().await;
}

/// Regression: identical or empty responses made TRL rows with chosen == rejected.
async fn comparisons_need_distinct_responses(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let pid = r.import_prompt("{\"prompt\": \"p\"}").await;
    for (responses, what) in [
        (json!([{"text": "same"}, {"text": "same"}]), "same text"),
        (
            json!([{"text": "a"}, {"text": "b"}, {"text": " a\n"}]),
            "same text",
        ),
        (json!([{"text": ""}, {"text": "b"}]), "empty"),
        (json!([{"text": "a"}, {"text": " \n\t"}]), "empty"),
    ] {
        let m = assert_error(
            r.post(
                "/api/comparisons",
                json!({"batch": "b", "comparisons": [{"prompt_id": pid, "responses": responses}]}),
            )
            .await,
            422,
        )
        .await;
        assert!(m.contains(what), "{m}");
    }
    assert_eq!(scalar(&s.db, "SELECT COUNT(*) FROM comparisons").await, 0);
    assert_error(r.get("/api/export?batch_id=99").await, 404).await;
    s.stop().await;
}

/// Regression: a right-to-left override in a response reordered what the
/// labeler read.
async fn bidi_controls_cannot_disguise_text(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let pid = r
        .import_prompt("{\"prompt\": \"Name the file \u{2067}please\u{2069}\"}")
        .await;
    let evil = "invoice_\u{202E}TXT.exe";
    let c = r
        .post(
            "/api/comparisons",
            json!({"batch": "b", "comparisons": [{"prompt_id": pid, "responses": [{"text": evil}, {"text": "report.pdf"}]}]}),
        )
        .await;
    assert_eq!(c.status(), 201);
    let id = c.json::<serde_json::Value>().await.unwrap()["comparison_ids"][0]
        .as_i64()
        .unwrap();
    s.user("lab", Role::Labeler).await;
    let http = browser_login(&s.url, "lab").await;
    let html = get_text(&http, &format!("{}/label", s.url)).await;
    assert!(html.contains("report.pdf"), "{html}");
    // no invisible direction control reaches the page; each is a visible marker
    for c in ['\u{202E}', '\u{2067}', '\u{2069}'] {
        assert!(!html.contains(c), "{c:?} in the page");
    }
    assert!(html.contains("invoice_<span class=\"bidi\""), "{html}");
    assert!(html.contains("[U+202E]</span>TXT.exe"), "{html}");
    // and every text is isolated from its neighbours
    assert!(html.contains("<pre class=\"text\" dir=\"auto\">"), "{html}");
    let css = reqwest::get(format!("{}/static/app.css", s.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(css.contains("unicode-bidi: isolate"));
    // the stored text is unchanged (the API and exports give it verbatim)
    let detail = r.json(&format!("/api/comparisons/{id}")).await;
    assert_eq!(detail["responses"][0]["text"], evil);
    s.stop().await;
}

/// Regression: account commands elsewhere quietly created an empty
/// `rlhf.sqlite`; bad URLs gave misleading errors or printed the password.
async fn cli_refuses_databases_without_schema(db: TestDb) {
    let token_create = |url: &str| Commands::Token {
        cmd: TokenCommand::Create {
            username: "admin".into(),
            name: None,
            expires_in_days: None,
            db: DbArgs {
                database_url: url.to_string(),
            },
        },
    };
    let user_list = |url: &str| Commands::User {
        cmd: UserCommand::List {
            db: DbArgs {
                database_url: url.to_string(),
            },
        },
    };
    if db.backend == "sqlite" {
        // no file: refused, and none is created
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rlhf.sqlite");
        let url = format!("sqlite://{}", path.display());
        let err = format!("{:#}", run_cli(token_create(&url), "").await.unwrap_err());
        assert!(err.contains("no database at"), "{err}");
        assert!(!path.exists(), "an empty database was created");
        // a file without our schema: refused
        std::fs::write(&path, b"").unwrap();
        let err = format!("{:#}", run_cli(user_list(&url), "").await.unwrap_err());
        assert!(err.contains("no rlhf schema"), "{err}");
        // bad URLs say what is wrong
        for (url, want) in [
            (
                "mysql://root:hunter2@db.example/rlhf",
                "unsupported database URL scheme",
            ),
            ("sqlite:", "names no file"),
            ("sqlite::memory:", "in-memory"),
        ] {
            let err = format!("{:#}", run_cli(user_list(url), "").await.unwrap_err());
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        // an unreachable PostgreSQL fails at once, naming the host, not the password
        let err = format!(
            "{:#}",
            run_cli(user_list("postgres://rlhf:hunter2@127.0.0.1:1/rlhf"), "")
                .await
                .unwrap_err()
        );
        assert!(err.contains("127.0.0.1:1"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        // serve binds its port before creating the database (or an admin)
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let serve = Commands::Serve {
            bind: taken.local_addr().unwrap().to_string(),
            db: DbArgs {
                database_url: format!("sqlite://{}", dir.path().join("new.sqlite").display()),
            },
            lease_seconds: 600,
            secure_cookies: false,
            metrics_public: false,
        };
        let err = format!("{:#}", run_cli(serve, "").await.unwrap_err());
        assert!(err.contains("binding"), "{err}");
        assert!(!dir.path().join("new.sqlite").exists());
    } else {
        // an empty PostgreSQL database: refused, and left empty
        let err = format!(
            "{:#}",
            run_cli(token_create(&db.url), "").await.unwrap_err()
        );
        assert!(err.contains("no rlhf schema"), "{err}");
        let conn = annotation_server::db::connect(&db.url).await.unwrap();
        let tables = scalar(
            &conn,
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .await;
        assert_eq!(tables, 0);
        conn.close().await.ok();
    }
    // once migrated, the same commands work
    run_cli(
        Commands::Db {
            cmd: DbCommand::Migrate {
                db: DbArgs {
                    database_url: db.url.clone(),
                },
            },
        },
        "",
    )
    .await
    .unwrap();
    assert!(run_cli(user_list(&db.url), "")
        .await
        .unwrap()
        .contains("username"));
}

/// Regression (in part): PATCH could set a queued round to `running`
/// without a lease (claims then answered 204 forever), and `banana` was
/// accepted as a status.
async fn round_statuses_are_checked(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let id = r
        .post("/api/rounds", json!({"name": "r"}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let patch = |body: serde_json::Value| {
        let r = r.clone();
        let url = format!("{}/api/rounds/{id}", s.url);
        async move {
            r.http
                .patch(url)
                .bearer_auth(&r.token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let m = assert_error(patch(json!({"status": "banana"})).await, 422).await;
    assert!(m.contains("queued"), "{m}");
    assert_eq!(patch(json!({"status": "queued"})).await.status(), 200);
    let m = assert_error(patch(json!({"status": "running"})).await, 409).await;
    assert!(m.contains("claim"), "{m}");
    assert_error(patch(json!({"status": "done"})).await, 409).await;
    // so the round is still there for a worker
    let claimed = r.post("/api/rounds/claim", json!({"worker": "w1"})).await;
    assert_eq!(claimed.status(), 200);
    let lease = claimed.json::<serde_json::Value>().await.unwrap()["lease_token"].clone();
    let hb = format!("/api/rounds/{id}/heartbeat");
    for bad in ["banana", "cancelled", "created"] {
        assert_error(
            r.post(
                &hb,
                json!({"worker": "w1", "lease_token": lease, "status": bad}),
            )
            .await,
            422,
        )
        .await;
    }
    // a researcher cancels it, with a reason; the lease is released
    let cancelled = patch(json!({"status": "cancelled", "reason": "wrong config"})).await;
    assert_eq!(cancelled.status(), 200);
    let cancelled: serde_json::Value = cancelled.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["lease_owner"].is_null());
    let m = assert_error(
        r.post(&hb, json!({"worker": "w1", "lease_token": lease}))
            .await,
        409,
    )
    .await;
    assert!(m.contains("cancelled"), "{m}");
    assert_eq!(
        r.post("/api/rounds/claim", json!({"worker": "w2"}))
            .await
            .status(),
        204
    );
    assert_error(patch(json!({"status": "done"})).await, 409).await;
    // the dashboard cancels too, and asks for the reason
    let id2 = r
        .post("/api/rounds", json!({"name": "r2", "status": "queued"}))
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let http = browser_login(&s.url, "res").await;
    let page = get_text(&http, &format!("{}/dashboard/rounds/{id2}", s.url)).await;
    assert!(page.contains("id=\"cancel-round\""), "{page}");
    let csrf = hidden(&page, "csrf");
    let cancel_url = format!("{}/dashboard/rounds/{id2}/cancel", s.url);
    let cancel = |reason: &'static str| {
        let (http, url, csrf) = (http.clone(), cancel_url.clone(), csrf.clone());
        async move {
            http.post(url)
                .form(&[("csrf", csrf.as_str()), ("reason", reason)])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(cancel(" ").await, 422);
    assert_eq!(cancel("duplicate of r").await, 303);
    assert_eq!(
        r.json(&format!("/api/rounds/{id2}")).await["status"],
        "cancelled"
    );
    let page = get_text(&http, &format!("{}/dashboard/rounds/{id2}", s.url)).await;
    assert!(!page.contains("id=\"cancel-round\""), "{page}");
    let audit = s
        .api(&s.token("adm", Role::Admin).await)
        .json("/api/audit?limit=1000")
        .await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"]["reason"] == "wrong config"),
        "{audit}"
    );
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["detail"]["reason"] == "duplicate of r"),
        "{audit}"
    );
    s.stop().await;
}
