//! Test fixtures: a fresh database (SQLite file or a new PostgreSQL database),
//! a real server on 127.0.0.1:0, accounts with tokens, HTTP helpers for the
//! API and for the web UI (a cookie-jar "browser", login, hidden form fields),
//! the CLI and raw SQL. Every test file shares these; none keeps a copy.
#![allow(dead_code)]
use annotation_server::accounts;
use annotation_server::api::Role;
use annotation_server::cli::{run_with_io, Commands};
use annotation_server::db::connect_and_migrate;
use annotation_server::server::RunningServer;
use annotation_server::state::{AppState, Config};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use std::sync::atomic::{AtomicU32, Ordering};

/// The password of every account the fixtures create.
pub const PASSWORD: &str = "password123";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>, // (admin url, database name)
}

impl TestDb {
    /// A SQLite file in a temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("test.sqlite").display());
        TestDb {
            url,
            backend: "sqlite",
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A new PostgreSQL database on the server in `RLHF_TEST_POSTGRES_URL`;
    /// `None` (with a printed notice) when the variable is unset.
    pub async fn postgres(test: &str) -> Option<TestDb> {
        let Ok(admin) = std::env::var("RLHF_TEST_POSTGRES_URL") else {
            println!("skipped {test} on PostgreSQL: RLHF_TEST_POSTGRES_URL is not set");
            return None;
        };
        let name = format!(
            "rlhf_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand_suffix()
        );
        let conn = Database::connect(&admin)
            .await
            .expect("connect to RLHF_TEST_POSTGRES_URL");
        conn.execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        conn.close().await.ok();
        let url = replace_db_name(&admin, &name);
        Some(TestDb {
            url,
            backend: "postgres",
            _dir: None,
            pg: Some((admin, name)),
        })
    }
}

fn rand_suffix() -> u32 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// `postgres://u@h:p/olddb?x` → `postgres://u@h:p/newdb?x`
fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let head = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{head}/{name}{query}")
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs outside async context: use a private runtime on a thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(conn) = Database::connect(&admin).await {
                        let _ = conn
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                        let _ = conn.close().await;
                    }
                });
            })
            .join();
        }
    }
}

/// A running server with its database.
pub struct TestServer {
    pub url: String,
    pub db: DatabaseConnection,
    pub state: AppState,
    server: Option<RunningServer>,
    pub testdb: TestDb,
}

impl TestServer {
    pub async fn start(testdb: TestDb) -> TestServer {
        Self::start_with(testdb, Config::default()).await
    }

    pub async fn start_with(testdb: TestDb, config: Config) -> TestServer {
        let db = connect_and_migrate(&testdb.url).await.expect("migrate");
        let state = AppState::new(db.clone(), config);
        let server = RunningServer::start(state.clone(), "127.0.0.1:0")
            .await
            .expect("bind");
        TestServer {
            url: server.url(),
            db,
            state,
            server: Some(server),
            testdb,
        }
    }

    /// Creates a user (password [`PASSWORD`]).
    pub async fn user(&self, username: &str, role: Role) {
        create_user(&self.db, username, role).await;
    }

    /// Creates a user and returns an API token for it.
    pub async fn token(&self, username: &str, role: Role) -> String {
        self.user(username, role).await;
        accounts::create_token(&self.db, username, None, None)
            .await
            .expect("create token")
    }

    /// A cookie-jar browser logged in as `username` (see [`browser_login`]).
    pub async fn browser(&self, username: &str) -> reqwest::Client {
        browser_login(&self.url, username).await
    }

    /// Takes the running server out, to stop it by hand (the database stays).
    pub fn take_server(&mut self) -> RunningServer {
        self.server.take().expect("the server is running")
    }

    pub fn api(&self, token: &str) -> Api {
        Api {
            base: self.url.clone(),
            token: token.to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.stop().await.expect("clean shutdown");
        }
        self.db.clone().close().await.ok();
    }
}

/// Creates a user (password [`PASSWORD`]) on any connection.
pub async fn create_user(db: &DatabaseConnection, username: &str, role: Role) {
    accounts::create_user(db, username, PASSWORD, role, None)
        .await
        .expect("create user");
}

/// An API client with a bearer token (raw responses, so tests see statuses).
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET")
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    /// `POST` without a body (e.g. `/api/tasks/next`).
    pub async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("POST")
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST")
    }

    /// Imports one prompt line (JSONL) and returns its id.
    pub async fn import_prompt(&self, line: &str) -> i64 {
        self.post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            line.to_string(),
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["prompt_ids"][0]
            .as_i64()
            .expect("a prompt id")
    }

    pub async fn json(&self, path: &str) -> serde_json::Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    pub async fn jsonl(&self, path: &str) -> Vec<serde_json::Value> {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        let text = r.text().await.unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("JSONL line"))
            .collect()
    }
}

/// Asserts a JSON error response with the given status, returning its message.
pub async fn assert_error(r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status().as_u16(), status, "unexpected status");
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(
        ct.starts_with("application/json"),
        "error content-type {ct}"
    );
    let body: serde_json::Value = r.json().await.expect("JSON error body");
    assert!(body["error"].is_string(), "{body}");
    body["message"].as_str().expect("message").to_string()
}

/// Runs an async test body on SQLite and on PostgreSQL (when configured).
#[macro_export]
#[allow(clippy::crate_in_macro_def)] // the tests' own `common` module, on purpose
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn sqlite() {
                    super::$name(crate::common::TestDb::sqlite()).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn postgres() {
                    if let Some(db) = crate::common::TestDb::postgres(stringify!($name)).await {
                        super::$name(db).await;
                    }
                }
            }
        )*
    };
}

/// Waits (at most 2 s) until `GET path` answers `status`: for changes another
/// server process learns of by a PostgreSQL notification (milliseconds).
pub async fn wait_for_status(api: &Api, path: &str, status: u16) {
    let mut last = 0;
    for _ in 0..40 {
        last = api.get(path).await.status().as_u16();
        if last == status {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("GET {path} still answers {last}, not {status}");
}

/// Asserts the status of a JSON response and returns its body.
pub async fn body(r: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(r.status().as_u16(), status, "unexpected status");
    r.json().await.unwrap()
}

/// The first column of the first row of `sql`, as an integer.
pub async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            sql.to_string(),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Runs a CLI command with `stdin` as its input; what it printed.
pub async fn run_cli(cmd: Commands, stdin: &str) -> anyhow::Result<String> {
    let mut input = std::io::Cursor::new(stdin.as_bytes().to_vec());
    let mut out = Vec::new();
    run_with_io(cmd, &mut input, &mut out).await?;
    Ok(String::from_utf8(out).unwrap())
}

/// A browser-like client: a cookie jar, and redirects left to the test.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value of the hidden input `name` in a page.
pub fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no hidden {name} in {html}"))
        + marker.len();
    html[start..].split('"').next().unwrap().to_string()
}

/// `GET url` with `http`: the body as text, whatever the status.
pub async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Fetches the login form and posts it (the form's CSRF token, the cookie
/// in `http`'s jar); the response.
pub async fn login(
    http: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let csrf = hidden(&get_text(http, &format!("{url}/login")).await, "csrf");
    http.post(format!("{url}/login"))
        .form(&[("username", user), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap()
}

/// A [`browser`] logged in as `user` (password [`PASSWORD`]).
pub async fn browser_login(url: &str, user: &str) -> reqwest::Client {
    let http = browser();
    assert_eq!(login(&http, url, user, PASSWORD).await.status(), 303);
    http
}

/// A fresh login form's CSRF token, read from its cookie (and checked to be
/// the form's hidden field too).
pub async fn login_csrf(http: &reqwest::Client, url: &str) -> String {
    let r = http.get(format!("{url}/login")).send().await.unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    let value = cookie
        .strip_prefix("rlhf_login_csrf=")
        .and_then(|v| v.split(';').next())
        .expect("login CSRF cookie")
        .to_string();
    let html = r.text().await.unwrap();
    assert!(html.contains(&format!("name=\"csrf\" value=\"{value}\"")));
    value
}
