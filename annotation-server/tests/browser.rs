//! The whole labeling flow in headless Chromium, driven over WebDriver
//! (chromedriver): log in, label with the keyboard, skip, submit, next task,
//! and the layout at 1280x800 and on a narrow window.
//!
//! Needs `chromedriver` (Debian: `chromium` + `chromium-driver`) on PATH or in
//! `CHROMEDRIVER`; `CHROMIUM` may name the browser binary. Skipped otherwise.
mod common;

use annotation_server::api::Role;
use common::{TestDb, TestServer, PASSWORD};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const ENTER: &str = "\u{E007}";

fn find_chromedriver() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CHROMEDRIVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("chromedriver"))
        .find(|p| p.is_file())
}

fn find_chromium() -> Option<String> {
    if let Ok(p) = std::env::var("CHROMIUM") {
        return Some(p);
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
    .map(str::to_string)
}

/// A chromedriver process and one browser session.
struct Driver {
    child: Child,
    http: reqwest::Client,
    base: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start(chromedriver: &PathBuf) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = reqwest::Client::new();
        let root = format!("http://127.0.0.1:{port}");
        wait_for(
            || async { http.get(format!("{root}/status")).send().await.is_ok() },
            "chromedriver to start",
        )
        .await;
        let profile = tempfile::tempdir().unwrap();
        let mut args = vec![
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,800",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut options = json!({"args": args});
        if let Some(bin) = find_chromium() {
            options["binary"] = json!(bin);
        }
        let resp: Option<Value> = match http
            .post(format!("{root}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}))
            .send()
            .await
        {
            Ok(r) => r.json().await.ok(),
            Err(_) => None,
        };
        let id = resp
            .as_ref()
            .and_then(|r| r["value"]["sessionId"].as_str())
            .map(str::to_string);
        let Some(id) = id else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromedriver gave no session: {resp:?}");
        };
        Driver {
            child,
            http,
            base: format!("{root}/session/{id}"),
            _profile: profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.expect("webdriver").json().await.unwrap();
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The element matching a CSS selector, if present.
    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.get(ELEMENT).and_then(|e| e.as_str()).map(str::to_string)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        let r = self
            .cmd(
                reqwest::Method::POST,
                &format!("/element/{el}/value"),
                Some(json!({"text": text})),
            )
            .await;
        assert!(r.is_null(), "typing into {css}: {r}");
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let el = self.find(css).await?;
        self.cmd(
            reqwest::Method::GET,
            &format!("/element/{el}/attribute/{name}"),
            None,
        )
        .await
        .as_str()
        .map(str::to_string)
    }

    async fn rect(&self, css: &str) -> Value {
        let el = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.cmd(reqwest::Method::GET, &format!("/element/{el}/rect"), None)
            .await
    }

    async fn window(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Presses keys on whatever has focus (the page), like a labeler would.
    async fn keys(&self, keys: &[&str]) {
        let mut actions = vec![];
        for k in keys {
            actions.push(json!({"type": "keyDown", "value": k}));
            actions.push(json!({"type": "keyUp", "value": k}));
        }
        self.cmd(
            reqwest::Method::POST,
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    async fn quit(self) {
        drop(self);
    }
}

impl Drop for Driver {
    /// Closes the browser and chromedriver even when the test failed half way.
    fn drop(&mut self) {
        let base = self.base.clone();
        // blocking client on its own thread: Drop may run inside the async runtime
        let _ =
            std::thread::spawn(move || reqwest::blocking::Client::new().delete(base).send()).join();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `f` is true (generous deadline; this waits, it does not measure).
async fn wait_for<F, Fut>(f: F, what: &str)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(poll(f).await, "gave up waiting for {what}");
}

/// Polls until `f` is true; false after a generous deadline.
async fn poll<F, Fut>(f: F) -> bool
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn label_with_the_keyboard_in_chromium() {
    let Some(chromedriver) = find_chromedriver() else {
        println!("skipped browser test: chromedriver not found (set CHROMEDRIVER or install chromium-driver)");
        return;
    };
    let s = TestServer::start(TestDb::sqlite()).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    s.user("lab", Role::Labeler).await;
    let pid = r
        .import_prompt("{\"prompt\": \"Which is better? <b>not bold</b>\"}")
        .await;
    let c = r
        .post(
            "/api/comparisons",
            json!({"batch": "browser", "comparisons": [
                {"prompt_id": pid, "responses": [{"text": "left <script>window.pwned=1</script>"}, {"text": "right"}]},
                {"prompt_id": pid, "responses": [{"text": "skip me"}, {"text": "skip me too"}]},
                {"prompt_id": pid, "responses": [{"text": "one"}, {"text": "two"}, {"text": "three"}]}
            ]}),
        )
        .await;
    let ids: Vec<i64> = c.json::<Value>().await.unwrap()["comparison_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();

    let d = Driver::start(&chromedriver).await;
    d.goto(&format!("{}/login", s.url)).await;
    d.type_into("#username", "lab").await;
    d.type_into("#password", PASSWORD).await;
    d.click("button[type=submit]").await;
    if !poll(|| async { d.url().await.ends_with("/label") }).await {
        let source = d.cmd(reqwest::Method::GET, "/source", None).await;
        let user = d
            .cmd(
                reqwest::Method::GET,
                &format!(
                    "/element/{}/property/value",
                    d.find("#username").await.unwrap_or_default()
                ),
                None,
            )
            .await;
        panic!(
            "no task page after login; at {} (username field {user}) showing {source}",
            d.url().await
        );
    }

    let mut seen = vec![];
    for _ in 0..3 {
        wait_for(|| async { d.find("#prompt").await.is_some() }, "a task").await;
        let id: i64 = d
            .attr("#prompt", "data-comparison")
            .await
            .unwrap()
            .parse()
            .unwrap();
        assert!(!seen.contains(&id), "task {id} shown twice");
        seen.push(id);
        if id == ids[0] {
            // side by side at 1280x800, stacked on a narrow window
            let (a, b) = (d.rect("#response-0").await, d.rect("#response-1").await);
            assert_eq!(a["y"], b["y"], "responses side by side");
            assert!(b["x"].as_f64().unwrap() > a["x"].as_f64().unwrap());
            d.window(420, 800).await;
            let (a, b) = (d.rect("#response-0").await, d.rect("#response-1").await);
            assert!(
                b["y"].as_f64().unwrap() > a["y"].as_f64().unwrap(),
                "responses stacked when narrow"
            );
            d.window(1280, 800).await;
            // the script tag in the response stayed text
            let pwned = d
                .cmd(
                    reqwest::Method::POST,
                    "/execute/sync",
                    Some(json!({"script": "return window.pwned === undefined", "args": []})),
                )
                .await;
            assert_eq!(pwned, json!(true));
            // 2 = the second is better, w = "better", Enter submits
            d.keys(&["2", "w", ENTER]).await;
        } else if id == ids[1] {
            d.keys(&["s"]).await;
        } else {
            // best first: 3 then 1; the last one left gets rank 3; q = significantly better
            d.keys(&["3", "1", "q", "z", ENTER]).await;
        }
        let prev = id;
        wait_for(
            || async {
                d.find("#no-task").await.is_some()
                    || d.attr("#prompt", "data-comparison")
                        .await
                        .is_some_and(|v| v != prev.to_string())
            },
            "the next task",
        )
        .await;
    }
    assert!(d.find("#no-task").await.is_some());
    let done = d.cmd(reqwest::Method::POST, "/execute/sync", Some(json!({"script": "return document.getElementById('done-today').textContent", "args": []}))).await;
    assert_eq!(done, json!("2"));
    d.quit().await;

    let first = r.json(&format!("/api/comparisons/{}", ids[0])).await;
    assert_eq!(first["labels"][0]["ranking"], json!([2, 1]));
    assert_eq!(first["labels"][0]["strength"], "better");
    assert!(first["labels"][0]["time_spent_ms"].is_i64());
    let skipped = r.json(&format!("/api/comparisons/{}", ids[1])).await;
    assert_eq!(skipped["labels_done"], 0);
    let triple = r.json(&format!("/api/comparisons/{}", ids[2])).await;
    assert_eq!(triple["labels"][0]["ranking"], json!([2, 3, 1]));
    assert_eq!(triple["labels"][0]["strength"], "significantly_better");
    assert_eq!(triple["labels"][0]["safety"], "preferred_safe_only");
    let b = r.json("/api/batches").await;
    assert_eq!(b[0]["labelers"][0]["skips"], 1);
    s.stop().await;
}
