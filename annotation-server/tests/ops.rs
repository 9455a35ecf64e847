//! Operations: /healthz, /metrics, the OpenAPI document, the CLI commands,
//! first-start admin, and graceful shutdown.
mod common;

use annotation_server::api::Role;
use annotation_server::cli::{Commands, DbArgs, DbCommand, TokenCommand, UserCommand};
use common::{run_cli, TestDb, TestServer};

on_both_databases!(health_metrics_and_openapi, cli_manages_accounts);

async fn health_metrics_and_openapi(db: TestDb) {
    let s = TestServer::start(db).await;
    let http = reqwest::Client::new();
    let h = http.get(format!("{}/healthz", s.url)).send().await.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.json::<serde_json::Value>().await.unwrap()["status"], "ok");

    let doc: serde_json::Value = http
        .get(format!("{}/api/openapi.json", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    // every API route of the router is documented
    for path in [
        "/api/me",
        "/api/users",
        "/api/users/{username}/disable",
        "/api/users/{username}/tokens",
        "/api/tokens/{id}",
        "/api/audit",
        "/api/prompts/import",
        "/api/prompts",
        "/api/comparisons",
        "/api/comparisons/{id}",
        "/api/batches",
        "/api/batches/{id}",
        "/api/batches/{id}/agreement",
        "/api/labelers",
        "/api/export",
        "/api/tasks/next",
        "/api/tasks/{id}/label",
        "/api/tasks/{id}/skip",
        "/api/rounds",
        "/api/rounds/{id}",
        "/api/rounds/claim",
        "/api/rounds/{id}/heartbeat",
        "/healthz",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} undocumented");
    }
    // every $ref resolves
    let text = doc.to_string();
    for part in text.split("#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }

    let lab = s.api(&s.token("lab", Role::Labeler).await);
    assert_eq!(lab.post_empty("/api/tasks/next").await.status(), 204);
    // metrics need a researcher's token (the server was not started with --metrics-public)
    let anon = http.get(format!("{}/metrics", s.url)).send().await.unwrap();
    assert_eq!(anon.status(), 401);
    assert_eq!(lab.get("/metrics").await.status(), 403);
    let res = s.api(&s.token("res", Role::Researcher).await);
    let m = res.get("/metrics").await;
    assert_eq!(m.status(), 200);
    assert!(m.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = m.text().await.unwrap();
    assert!(m.contains("rlhf_labels_submitted_total 0"));
    assert!(m.contains("rlhf_queue_depth 0"));
    assert!(
        m.contains(
            "rlhf_http_requests_total{method=\"POST\",route=\"/api/tasks/next\",status=\"204\"} 1"
        ),
        "{m}"
    );
    assert!(m.contains("rlhf_http_request_duration_seconds_count{route=\"/healthz\"} 1"));
    s.stop().await;
}

async fn cli_manages_accounts(db: TestDb) {
    let dbargs = || DbArgs {
        database_url: db.url.clone(),
    };
    let out = run_cli(
        Commands::Db {
            cmd: DbCommand::Migrate { db: dbargs() },
        },
        "",
    )
    .await
    .unwrap();
    assert!(out.contains("up to date"));
    // migrating twice is a no-op
    run_cli(
        Commands::Db {
            cmd: DbCommand::Migrate { db: dbargs() },
        },
        "",
    )
    .await
    .unwrap();
    let add = |name: &str, role: Role, stdin: bool| Commands::User {
        cmd: UserCommand::Add {
            role,
            username: name.to_string(),
            password_stdin: stdin,
            db: dbargs(),
        },
    };
    let out = run_cli(add("alice", Role::Researcher, true), "s3cret-password\n")
        .await
        .unwrap();
    assert!(out.contains("Created researcher \"alice\""), "{out}");
    let out = run_cli(add("bob", Role::Labeler, false), "").await.unwrap();
    assert!(out.contains("Password: "), "{out}");
    let err = run_cli(add("alice", Role::Labeler, true), "another-password\n")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    let err = run_cli(add("carol", Role::Labeler, true), "short\n")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at least 8"), "{err}");
    let out = run_cli(
        Commands::User {
            cmd: UserCommand::List { db: dbargs() },
        },
        "",
    )
    .await
    .unwrap();
    assert!(
        out.contains("alice") && out.contains("researcher") && out.contains("bob"),
        "{out}"
    );
    let token = run_cli(
        Commands::Token {
            cmd: TokenCommand::Create {
                username: "alice".into(),
                name: None,
                expires_in_days: None,
                db: dbargs(),
            },
        },
        "",
    )
    .await
    .unwrap()
    .trim()
    .to_string();
    assert!(token.starts_with("rlhf_"));
    assert!(run_cli(
        Commands::Token {
            cmd: TokenCommand::Create {
                username: "nobody".into(),
                name: None,
                expires_in_days: None,
                db: dbargs()
            }
        },
        ""
    )
    .await
    .is_err());

    // the server accepts the CLI's token, and alice's password on the login form
    let s = TestServer::start(db).await;
    let alice = s.api(&token);
    assert_eq!(alice.json("/api/me").await["role"], "researcher");
    let out = run_cli(
        Commands::User {
            cmd: UserCommand::Disable {
                username: "alice".into(),
                db: DbArgs {
                    database_url: s.testdb.url.clone(),
                },
            },
        },
        "",
    )
    .await
    .unwrap();
    assert!(out.contains("Disabled"));
    // the CLI is another process: the server hears of it at once (SQLite:
    // nothing is cached; PostgreSQL: a notification clears the cache)
    common::wait_for_status(&alice, "/api/me", 401).await;
    s.stop().await;
}

#[tokio::test]
async fn first_start_creates_an_admin() {
    let db = TestDb::sqlite();
    let conn = annotation_server::db::connect_and_migrate(&db.url)
        .await
        .unwrap();
    let created = annotation_server::accounts::ensure_admin(&conn)
        .await
        .unwrap();
    let (name, password) = created.expect("an admin on an empty database");
    assert_eq!(
        name,
        std::env::var("RLHF_ADMIN_USERNAME").unwrap_or_else(|_| "admin".into())
    );
    if std::env::var("RLHF_ADMIN_PASSWORD").is_err() {
        assert!(password.unwrap().len() >= 16);
    }
    // only once
    assert!(annotation_server::accounts::ensure_admin(&conn)
        .await
        .unwrap()
        .is_none());
}

/// A request that is half-sent when shutdown begins still completes, and its
/// data is stored; the server then stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_finishes_in_flight_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TestServer::start(TestDb::sqlite()).await;
    let token = s.token("res", Role::Researcher).await;
    let db = s.db.clone();
    let server = s.take_server();
    let addr = server.addr.to_string();
    let body = "{\"prompt\": \"first\"}\n{\"prompt\": \"second\"}\n";
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // A first complete request on the same keep-alive connection proves the
    // server has accepted it (a connection still in the listen backlog when
    // shutdown starts is refused, which is not what this test is about).
    conn.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before /healthz answered");
        first.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&first).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if first.len() >= end + 4 + len {
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                break;
            }
        }
    }
    let head = format!(
        "POST /api/prompts/import HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body.as_bytes()[..10]).await.unwrap();
    // let the server read the request head, so the request is in flight
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // shutdown starts while the body is still arriving
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    conn.write_all(&body.as_bytes()[10..]).await.unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 201"), "{resp}");
    stopping.await.unwrap().unwrap();
    use sea_orm::{EntityTrait, PaginatorTrait};
    let n = annotation_server::entities::prompts::Entity::find()
        .count(&db)
        .await
        .unwrap();
    assert_eq!(n, 2);
    // and it no longer accepts connections
    assert!(tokio::net::TcpStream::connect(&addr).await.is_err());
}
