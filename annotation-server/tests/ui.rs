//! The web UI over real HTTP with a cookie jar: login, CSRF, rate limit,
//! labeling through forms, roles, logout.
mod common;

use annotation_server::accounts;
use annotation_server::api::Role;
use common::{browser, get_text, hidden, login, TestDb, TestServer, PASSWORD};
use serde_json::json;

on_both_databases!(
    labeling_through_forms,
    login_is_rate_limited_and_csrf_protected
);

async fn labeling_through_forms(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    s.user("lab", Role::Labeler).await;
    let pid = r.import_prompt("{\"prompt\": \"Pick one\"}").await;
    let c = r
        .post(
            "/api/comparisons",
            json!({"batch": "ui", "comparisons": [
                {"prompt_id": pid, "responses": [{"text": "left"}, {"text": "right"}]},
                {"prompt_id": pid, "responses": [{"text": "one"}, {"text": "two"}, {"text": "three"}]}
            ]}),
        )
        .await;
    let ids: Vec<i64> = c.json::<serde_json::Value>().await.unwrap()["comparison_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();

    let http = browser();
    // not logged in: redirected to the login page
    let resp = http.get(format!("{}/label", s.url)).send().await.unwrap();
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/login");
    let resp = login(&http, &s.url, "lab", PASSWORD).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/label");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|c| c.starts_with("rlhf_session="))
        .unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    // labelers cannot open the dashboard
    assert_eq!(
        http.get(format!("{}/dashboard", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );

    let mut labeled = vec![];
    for _ in 0..2 {
        let html = get_text(&http, &format!("{}/label", s.url)).await;
        assert!(
            html.contains("Done today: <strong id=\"done-today\">"),
            "{html}"
        );
        let csrf = hidden(&html, "csrf");
        let action_start = html.find("action=\"/label/").unwrap() + "action=\"/label/".len();
        let id: i64 = html[action_start..]
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        // a form without the CSRF token is refused
        let no_csrf = http
            .post(format!("{}/label/{id}", s.url))
            .form(&[("best", "0"), ("strength", "better")])
            .send()
            .await
            .unwrap();
        assert_eq!(no_csrf.status(), 403);
        // an incomplete form re-renders the task with a message
        let incomplete = http
            .post(format!("{}/label/{id}", s.url))
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(incomplete.status(), 422);
        assert!(incomplete.text().await.unwrap().contains("id=\"error\""));
        let form: Vec<(&str, &str)> = if id == ids[0] {
            vec![
                ("csrf", &csrf),
                ("best", "1"),
                ("strength", "slightly_better"),
                ("safety", "both_safe"),
                ("note", "fine"),
                ("shown_at", "0"),
            ]
        } else {
            assert!(html.contains("name=\"rank_2\""));
            vec![
                ("csrf", &csrf),
                ("rank_0", "2"),
                ("rank_1", "1"),
                ("rank_2", "3"),
                ("strength", "better"),
            ]
        };
        let done = http
            .post(format!("{}/label/{id}", s.url))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 303);
        assert_eq!(done.headers()["location"], "/label");
        labeled.push(id);
    }
    labeled.sort();
    assert_eq!(labeled, ids);
    let html = get_text(&http, &format!("{}/label", s.url)).await;
    assert!(html.contains("id=\"no-task\""));
    assert!(html.contains("Done today: <strong id=\"done-today\">2</strong>"));

    let first = r.json(&format!("/api/comparisons/{}", ids[0])).await;
    assert_eq!(first["labels"][0]["ranking"], json!([2, 1]));
    assert_eq!(first["labels"][0]["safety"], "both_safe");
    assert_eq!(first["labels"][0]["note"], "fine");
    let second = r.json(&format!("/api/comparisons/{}", ids[1])).await;
    assert_eq!(second["labels"][0]["ranking"], json!([2, 1, 3]));

    // logout needs the CSRF token, then the session is gone
    let csrf = hidden(&html, "csrf");
    assert_eq!(
        http.post(format!("{}/logout", s.url))
            .form(&[("csrf", "wrong")])
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(
        http.post(format!("{}/logout", s.url))
            .form(&[("csrf", csrf.as_str())])
            .send()
            .await
            .unwrap()
            .status(),
        303
    );
    assert_eq!(
        http.get(format!("{}/label", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        303
    );
    s.stop().await;
}

async fn login_is_rate_limited_and_csrf_protected(db: TestDb) {
    let s = TestServer::start(db).await;
    s.user("lab", Role::Labeler).await;
    s.user("gone", Role::Labeler).await;
    accounts::disable_user(&s.db, "gone", None).await.unwrap();
    let http = browser();
    // a login POST without the login-CSRF cookie/token pair is refused
    let resp = http
        .post(format!("{}/login", s.url))
        .form(&[("username", "lab"), ("password", PASSWORD), ("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // disabled users cannot log in
    assert_eq!(login(&http, &s.url, "gone", PASSWORD).await.status(), 401);
    // wrong passwords, until the limiter steps in
    let limit = s.state.config.login_max_failures as usize;
    for _ in 1..limit {
        assert_eq!(
            login(&http, &s.url, "lab", "wrong-password").await.status(),
            401
        );
    }
    let mut last = 0;
    for _ in 0..2 {
        last = login(&http, &s.url, "lab", "wrong-password")
            .await
            .status()
            .as_u16();
    }
    assert_eq!(last, 429);
    // even the right password is refused while blocked
    assert_eq!(login(&http, &s.url, "lab", PASSWORD).await.status(), 429);
    s.stop().await;
}
