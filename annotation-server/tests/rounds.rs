//! Rounds for trainer workers: queued creation, claims under a lease,
//! heartbeats (409 once the lease is lost), race-free concurrent claims, the
//! blocking client, the dashboard's rounds section and queue form, and plots.
mod common;

use annotation_server::api::client::{Client, LeaseLost};
use annotation_server::api::{NewRound, Role, RoundClaim, RoundHeartbeat};
use annotation_server::plots::line_chart_svg;
use common::{assert_error, body, browser, get_text, hidden, TestDb, TestServer};
use serde_json::{json, Value};

on_both_databases!(
    claim_and_heartbeat,
    concurrent_claims_are_exclusive,
    blocking_client,
    dashboard_rounds,
    migration_down_and_up
);

async fn claim_and_heartbeat(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let admin = s.api(&s.token("adm", Role::Admin).await);
    let lab = s.api(&s.token("lab", Role::Labeler).await);

    // a created round is not offered to workers
    let created = body(r.post("/api/rounds", json!({"name": "draft"})).await, 201).await;
    assert_eq!(created["status"], "created");
    assert_eq!(created["state"], json!({}));
    assert!(created["lease_owner"].is_null() && created["lease_expires_at"].is_null());
    assert_eq!(
        r.post("/api/rounds/claim", json!({"worker": "w1"}))
            .await
            .status(),
        204
    );
    // only created or queued at creation
    for bad in ["running", "done", "Queued", ""] {
        assert_error(
            r.post("/api/rounds", json!({"name": "x", "status": bad}))
                .await,
            422,
        )
        .await;
    }

    let q = body(
        r.post(
            "/api/rounds",
            json!({"name": "one", "config": {"recipe": "dpo"}, "status": "queued"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(q["status"], "queued");
    let id = q["id"].as_i64().unwrap();

    // bad claims are 4xx, labelers may not claim
    for bad in [
        json!({"worker": ""}),
        json!({"worker": "   "}),
        json!({"worker": "x".repeat(101)}),
        json!({"worker": "a\u{0}b"}),
        json!({"worker": "w", "lease_seconds": 0}),
        json!({"worker": "w", "lease_seconds": 86401}),
    ] {
        assert_error(r.post("/api/rounds/claim", bad).await, 422).await;
    }
    assert_error(
        r.post("/api/rounds/claim", json!({"worker": "w", "x": 1}))
            .await,
        422,
    )
    .await;
    assert_error(r.post("/api/rounds/claim", json!({})).await, 422).await;
    assert_error(
        lab.post("/api/rounds/claim", json!({"worker": "w"})).await,
        403,
    )
    .await;

    // queued → running under w1's lease
    let c = body(
        r.post(
            "/api/rounds/claim",
            json!({"worker": "w1", "lease_seconds": 60}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(c["id"], id);
    assert_eq!(c["status"], "running");
    assert_eq!(c["lease_owner"], "w1");
    // the lease is a secret only this response carries, not the worker's name
    let t1 = c["lease_token"].as_str().unwrap().to_string();
    assert!(t1.len() >= 32, "{c}");
    assert!(r
        .json(&format!("/api/rounds/{id}"))
        .await
        .get("lease_token")
        .is_none());
    assert!(!r.json("/api/rounds").await.to_string().contains(&t1));
    let expires = c["lease_expires_at"].as_str().unwrap();
    assert!(
        expires.ends_with('Z') && expires > c["updated_at"].as_str().unwrap(),
        "{c}"
    );
    // nothing else to claim
    assert_eq!(
        r.post("/api/rounds/claim", json!({"worker": "w2"}))
            .await
            .status(),
        204
    );

    // only the lease's holder may heartbeat: knowing the owner's name is not enough
    let hb = format!("/api/rounds/{id}/heartbeat");
    let msg = assert_error(
        r.post(&hb, json!({"worker": "w2", "lease_token": t1}))
            .await,
        409,
    )
    .await;
    assert!(msg.contains("lease lost") && msg.contains("w1"), "{msg}");
    for guess in [
        "",
        "w1",
        "rlhf_0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let msg = assert_error(
            r.post(&hb, json!({"worker": "w1", "lease_token": guess}))
                .await,
            409,
        )
        .await;
        assert!(msg.contains("lease token does not match"), "{msg}");
    }
    assert_error(r.post(&hb, json!({"worker": "w1"})).await, 422).await;
    assert_error(
        r.post(
            "/api/rounds/999/heartbeat",
            json!({"worker": "w1", "lease_token": t1}),
        )
        .await,
        404,
    )
    .await;
    assert_error(
        r.post(
            &hb,
            json!({"worker": "w1", "lease_token": t1, "state": [1]}),
        )
        .await,
        422,
    )
    .await;
    assert_error(
        r.post(
            &hb,
            json!({"worker": "w1", "lease_token": t1, "metrics": "x"}),
        )
        .await,
        422,
    )
    .await;
    assert_error(
        r.post(
            &hb,
            json!({"worker": "w1", "lease_token": t1, "status": "Done!"}),
        )
        .await,
        422,
    )
    .await;
    assert_error(
        r.post(
            &hb,
            json!({"worker": "w1", "lease_token": t1, "lease_seconds": 0}),
        )
        .await,
        422,
    )
    .await;
    assert_error(
        lab.post(&hb, json!({"worker": "w1", "lease_token": t1}))
            .await,
        403,
    )
    .await;

    let metrics =
        json!({"progress": {"step": "sample", "detail": "3/8"}, "summary": {"gold_reward": 0.1}});
    let b = body(
        r.post(
            &hb,
            json!({"worker": "w1", "lease_token": t1, "state": {"batch_id": 7}, "metrics": metrics}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(b["state"]["batch_id"], 7);
    assert_eq!(b["metrics"], metrics);
    assert_eq!(b["status"], "running");
    // fields left out are kept
    let b = body(
        r.post(
            &hb,
            json!({"worker": "w1", "lease_token": t1, "lease_seconds": 1}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(b["state"]["batch_id"], 7);
    assert_eq!(b["metrics"], metrics);

    // the lease expires: another worker takes the round over
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let c2 = body(
        r.post("/api/rounds/claim", json!({"worker": "w2"})).await,
        200,
    )
    .await;
    assert_eq!(c2["id"], id);
    assert_eq!(c2["lease_owner"], "w2");
    let t2 = c2["lease_token"].as_str().unwrap().to_string();
    assert_ne!(t1, t2);
    assert_eq!(
        c2["state"]["batch_id"], 7,
        "the new owner continues from the state"
    );
    let msg = assert_error(
        r.post(
            &hb,
            json!({"worker": "w1", "lease_token": t1, "state": {"batch_id": 1}}),
        )
        .await,
        409,
    )
    .await;
    assert!(msg.contains("lease lost") && msg.contains("w2"), "{msg}");
    // the old token is worthless even under the new owner's name
    let msg = assert_error(
        r.post(
            &hb,
            json!({"worker": "w2", "lease_token": t1, "state": {"batch_id": 1}}),
        )
        .await,
        409,
    )
    .await;
    assert!(msg.contains("lease token does not match"), "{msg}");
    assert_eq!(
        r.json(&format!("/api/rounds/{id}")).await["state"]["batch_id"],
        7
    );

    // done clears the lease; then nobody may heartbeat or claim it
    let d = body(
        r.post(
            &hb,
            json!({"worker": "w2", "lease_token": t2, "status": "done"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(d["status"], "done");
    assert!(
        d["lease_owner"].is_null() && d["lease_expires_at"].is_null(),
        "{d}"
    );
    let msg = assert_error(
        r.post(&hb, json!({"worker": "w2", "lease_token": t2}))
            .await,
        409,
    )
    .await;
    assert!(msg.contains("done"), "{msg}");
    assert_eq!(
        r.post("/api/rounds/claim", json!({"worker": "w3"}))
            .await
            .status(),
        204
    );

    // a worker may hand a round back (queued), and PATCH still works
    let q2 = body(
        r.post("/api/rounds", json!({"name": "two", "status": "queued"}))
            .await,
        201,
    )
    .await;
    let id2 = q2["id"].as_i64().unwrap();
    let t3 = body(
        r.post("/api/rounds/claim", json!({"worker": "w3"})).await,
        200,
    )
    .await["lease_token"]
        .clone();
    let back = body(
        r.post(
            &format!("/api/rounds/{id2}/heartbeat"),
            json!({"worker": "w3", "lease_token": t3, "status": "queued"}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(back["status"], "queued");
    assert!(back["lease_owner"].is_null());
    let again = body(
        r.post("/api/rounds/claim", json!({"worker": "w4"})).await,
        200,
    )
    .await;
    assert_eq!(again["id"], id2);
    let t4 = again["lease_token"].clone();
    let patched = r
        .http
        .patch(format!("{}/api/rounds/{id2}", s.url))
        .bearer_auth(&r.token)
        .json(&json!({"status": "failed", "metrics": {"summary": {"kl": 0.5}}}))
        .send()
        .await
        .unwrap();
    let patched = body(patched, 200).await;
    assert_eq!(patched["status"], "failed");
    assert!(
        patched["lease_owner"].is_null(),
        "a non-running status releases the lease"
    );
    assert_error(
        r.post(
            &format!("/api/rounds/{id2}/heartbeat"),
            json!({"worker": "w4", "lease_token": t4}),
        )
        .await,
        409,
    )
    .await;

    // claims and status changes are audited
    let audit = admin.json("/api/audit?limit=1000").await;
    let claims: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "round.claim")
        .collect();
    assert_eq!(claims.len(), 4, "{audit}");
    assert_eq!(claims[1]["detail"]["previous_owner"], "w1");
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "round.status" && e["detail"]["status"] == "done"));
    s.stop().await;
}

async fn concurrent_claims_are_exclusive(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    for trial in 0..3 {
        let mut ids = vec![];
        for i in 0..3 {
            let q = body(
                r.post(
                    "/api/rounds",
                    json!({"name": format!("t{trial}-{i}"), "status": "queued"}),
                )
                .await,
                201,
            )
            .await;
            ids.push(q["id"].as_i64().unwrap());
        }
        let tasks: Vec<_> = (0..8)
            .map(|w| {
                let r = r.clone();
                tokio::spawn(async move {
                    let worker = format!("w{trial}-{w}");
                    let resp = r.post("/api/rounds/claim", json!({"worker": worker})).await;
                    match resp.status().as_u16() {
                        200 => Some((resp.json::<Value>().await.unwrap(), worker)),
                        204 => None,
                        other => panic!("claim answered {other}"),
                    }
                })
            })
            .collect();
        let mut got = vec![];
        for t in tasks {
            if let Some((round, worker)) = t.await.unwrap() {
                assert_eq!(round["lease_owner"], worker.as_str());
                got.push((round["id"].as_i64().unwrap(), worker));
            }
        }
        let mut claimed: Vec<i64> = got.iter().map(|(id, _)| *id).collect();
        claimed.sort();
        assert_eq!(claimed, ids, "each round claimed exactly once");
        // the stored owner is the claimer that was told it won
        for (id, worker) in &got {
            let stored = r.json(&format!("/api/rounds/{id}")).await;
            assert_eq!(stored["lease_owner"], worker.as_str());
            assert_eq!(stored["status"], "running");
        }
        assert_eq!(
            r.post("/api/rounds/claim", json!({"worker": "late"}))
                .await
                .status(),
            204
        );
    }
    s.stop().await;
}

async fn blocking_client(db: TestDb) {
    let s = TestServer::start(db).await;
    let token = s.token("res", Role::Researcher).await;
    let url = s.url.clone();
    tokio::task::spawn_blocking(move || {
        let c = Client::new(&url, &token).unwrap();
        let claim = |w: &str, secs| RoundClaim {
            worker: w.into(),
            lease_seconds: Some(secs),
        };
        assert!(c.claim_round(&claim("w1", 60)).unwrap().is_none());
        let q = c
            .create_round(&NewRound {
                name: "r".into(),
                config: Some(json!({"recipe": "rs"})),
                status: Some("queued".into()),
            })
            .unwrap();
        assert_eq!(q.status, "queued");
        let got = c.claim_round(&claim("w1", 1)).unwrap().expect("a round");
        assert_eq!(got.id, q.id);
        assert_eq!(got.lease_owner.as_deref(), Some("w1"));
        assert!(got.lease_expires_at.is_some());
        let hb = RoundHeartbeat {
            worker: "w1".into(),
            lease_token: got.lease_token.clone().expect("the claim's lease token"),
            lease_seconds: Some(1),
            state: Some(json!({"step": 1})),
            ..Default::default()
        };
        assert_eq!(c.heartbeat_round(q.id, &hb).unwrap().state["step"], 1);
        std::thread::sleep(std::time::Duration::from_millis(1300));
        assert_eq!(c.claim_round(&claim("w2", 60)).unwrap().unwrap().id, q.id);
        let err = c.heartbeat_round(q.id, &hb).unwrap_err();
        assert!(format!("{err:#}").contains("lease lost"), "{err:#}");
        let lost = err.downcast_ref::<LeaseLost>().expect("a LeaseLost error");
        assert_eq!(lost.round_id, q.id);
        // other errors are plain errors
        let bad = RoundHeartbeat {
            worker: String::new(),
            ..Default::default()
        };
        assert!(c
            .heartbeat_round(q.id, &bad)
            .unwrap_err()
            .downcast_ref::<LeaseLost>()
            .is_none());
        let rounds = c.rounds().unwrap();
        assert_eq!(rounds.len(), 1);
        assert_eq!(rounds[0].lease_owner.as_deref(), Some("w2"));
        assert_eq!(rounds[0].state["step"], 1);
    })
    .await
    .unwrap();
    s.stop().await;
}

async fn dashboard_rounds(db: TestDb) {
    let s = TestServer::start(db).await;
    let api = s.api(&s.token("res", Role::Researcher).await);
    s.user("lab", Role::Labeler).await;
    let http = s.browser("res").await;
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("{}{path}", s.url);
        async move { http.get(url).send().await.unwrap() }
    };
    let html = get("/dashboard").await.text().await.unwrap();
    assert!(
        html.contains("id=\"rounds-table\"") && html.contains("No rounds yet"),
        "{html}"
    );
    assert!(html.contains("id=\"queue-round\""));
    for recipe in ["rs", "dpo", "ppo", "rs+ppo", "rs+dpo"] {
        assert!(
            html.contains(&format!("<option value=\"{recipe}\"")),
            "{recipe}"
        );
    }
    let csrf = hidden(&html, "csrf");
    let form = |name: &str, k: &str| {
        vec![
            ("csrf".to_string(), csrf.clone()),
            ("name".to_string(), name.to_string()),
            ("recipe".to_string(), "rs+dpo".to_string()),
            ("task".to_string(), "arithmetic".to_string()),
            ("prompts_per_round".to_string(), "16".to_string()),
            ("k".to_string(), k.to_string()),
            ("labels_wanted".to_string(), "2".to_string()),
        ]
    };
    let post = |fields: Vec<(String, String)>| {
        let http = http.clone();
        let url = format!("{}/dashboard/rounds", s.url);
        async move { http.post(url).form(&fields).send().await.unwrap() }
    };

    // a valid form queues a round with the config as JSON
    let resp = post(form("<b>round</b> one", "4")).await;
    assert_eq!(resp.status(), 303);
    let rounds = api.json("/api/rounds").await;
    let r0 = &rounds[0];
    assert_eq!(r0["status"], "queued");
    assert_eq!(r0["name"], "<b>round</b> one");
    assert_eq!(
        r0["config"],
        json!({"recipe": "rs+dpo", "task": "arithmetic", "prompts_per_round": 16, "k": 4, "labels_wanted": 2})
    );
    let id = r0["id"].as_i64().unwrap();

    // bad input shows the form again with the error and the typed values, never a 500
    for (fields, needle) in [
        (form("x", "1"), "Samples per prompt"),
        (form("x", "many"), "Samples per prompt"),
        (form("", "4"), "Name"),
        (form(&"n".repeat(201), "4"), "Name"),
        (form("x\u{0}", "4"), "NUL"),
        (
            form("x", "4")
                .into_iter()
                .chain([("prompt_source".to_string(), "a\tb".to_string())])
                .collect(),
            "Prompt source",
        ),
        (
            form("x", "4")
                .into_iter()
                .map(|(k, v)| {
                    if k == "recipe" {
                        (k, "sft".into())
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            "Recipe",
        ),
        (
            form("x", "4")
                .into_iter()
                .map(|(k, v)| {
                    if k == "task" {
                        (k, "<script>".into())
                    } else {
                        (k, v)
                    }
                })
                .collect(),
            "Task",
        ),
        (
            form("x", "4")
                .into_iter()
                .filter(|(k, _)| k != "labels_wanted")
                .collect(),
            "Labels wanted",
        ),
    ] {
        let resp = post(fields).await;
        assert_eq!(resp.status(), 422, "{needle}");
        let html = resp.text().await.unwrap();
        assert!(
            html.contains("id=\"queue-error\"") && html.contains(needle),
            "{needle}: {html}"
        );
        assert!(!html.contains("<script>"));
    }
    assert_eq!(api.json("/api/rounds").await.as_array().unwrap().len(), 1);
    // CSRF is required
    let no_csrf: Vec<(String, String)> = form("y", "4")
        .into_iter()
        .filter(|(k, _)| k != "csrf")
        .collect();
    assert_eq!(post(no_csrf).await.status(), 403);
    let mut wrong = form("y", "4");
    wrong[0].1 = "0".repeat(64);
    assert_eq!(post(wrong).await.status(), 403);

    // a worker runs it and reports metrics; the dashboard shows them
    let lease = body(
        api.post("/api/rounds/claim", json!({"worker": "bot<1>"}))
            .await,
        200,
    )
    .await["lease_token"]
        .clone();
    let metrics = json!({
        "progress": {"step": "policy", "detail": "<i>dpo</i>"},
        "summary": {"gold_reward": 0.25, "rm_accuracy": 0.75, "<img src=x>": 1},
        "series": {"rm_loss": [[0, 0.7], [1, 0.5], [2, 0.4]], "kl": [[0, 0.0], [1, 0.1]], "bad": "x"}
    });
    body(
        api.post(
            &format!("/api/rounds/{id}/heartbeat"),
            json!({"worker": "bot<1>", "lease_token": lease, "metrics": metrics}),
        )
        .await,
        200,
    )
    .await;
    let html = get("/dashboard").await.text().await.unwrap();
    assert!(
        html.contains("&lt;b&gt;round&lt;/b&gt; one") && !html.contains("<b>round"),
        "{html}"
    );
    assert!(
        html.contains("bot&lt;1&gt;") && html.contains(">policy<") && html.contains("0.7500"),
        "{html}"
    );
    assert!(
        !html.contains("<img src=x>") && !html.contains("<i>dpo"),
        "{html}"
    );
    assert!(
        html.contains("<img src=\"/dashboard/plots/gold_reward\""),
        "{html}"
    );
    assert!(
        html.contains("<img src=\"/dashboard/plots/%3Cimg%20src%3Dx%3E\""),
        "{html}"
    );

    let plot = get("/dashboard/plots/gold_reward").await;
    assert_eq!(plot.status(), 200);
    assert!(plot.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("image/svg+xml"));
    let svg = plot.text().await.unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("gold_reward"),
        "{svg}"
    );
    let svg = get("/dashboard/plots/%3Cimg%20src%3Dx%3E")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        svg.contains("&lt;img src=x&gt;") && !svg.contains("<img"),
        "{svg}"
    );
    let svg = get("/dashboard/plots/nothing").await.text().await.unwrap();
    assert!(svg.contains("no data"), "{svg}");

    // the round page plots each series
    let page = get(&format!("/dashboard/rounds/{id}")).await;
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(
        page.contains(&format!("/dashboard/rounds/{id}/plots/rm_loss")),
        "{page}"
    );
    assert!(page.contains(&format!("/dashboard/rounds/{id}/plots/kl")));
    assert!(
        page.contains("&quot;rs+dpo&quot;") && !page.contains("<i>dpo"),
        "{page}"
    );
    let svg = get(&format!("/dashboard/rounds/{id}/plots/rm_loss"))
        .await
        .text()
        .await
        .unwrap();
    assert!(svg.contains("rm_loss") && svg.contains("step"), "{svg}");
    assert!(get(&format!("/dashboard/rounds/{id}/plots/bad"))
        .await
        .text()
        .await
        .unwrap()
        .contains("no data"));
    assert_eq!(get("/dashboard/rounds/999").await.status(), 404);
    assert_eq!(get("/dashboard/rounds/abc").await.status(), 400);
    assert_eq!(get("/dashboard/rounds/999/plots/x").await.status(), 404);

    // labelers and anonymous users get none of it
    let lab = s.browser("lab").await;
    for path in [
        "/dashboard/plots/gold_reward".to_string(),
        format!("/dashboard/rounds/{id}"),
    ] {
        assert_eq!(
            lab.get(format!("{}{path}", s.url))
                .send()
                .await
                .unwrap()
                .status(),
            403
        );
        let anon = browser()
            .get(format!("{}{path}", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(anon.status(), 303);
    }
    let lab_page = get_text(&lab, &format!("{}/label", s.url)).await;
    let lab_csrf = hidden(&lab_page, "csrf");
    let mut f = form("z", "4");
    f[0].1 = lab_csrf;
    let resp = lab
        .post(format!("{}/dashboard/rounds", s.url))
        .form(&f)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // a prompt source and a starting policy, when given, go into the config
    let mut with_paths = form("round two", "2");
    with_paths.push(("prompt_source".into(), "my-prompts".into()));
    with_paths.push(("policy".into(), "/models/sft".into()));
    assert_eq!(post(with_paths).await.status(), 303);
    let rounds = api.json("/api/rounds").await;
    let r1 = rounds
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "round two")
        .unwrap();
    assert_eq!(r1["config"]["prompt_source"], "my-prompts");
    assert_eq!(r1["config"]["policy"], "/models/sft");
    s.stop().await;
}

async fn migration_down_and_up(db: TestDb) {
    use migrations::{Migrator, MigratorTrait};
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    body(
        r.post("/api/rounds", json!({"name": "kept", "status": "queued"}))
            .await,
        201,
    )
    .await;
    // back past the round leases (the newest migrations come after them)
    Migrator::down(&s.db, Some(3)).await.expect("down");
    Migrator::up(&s.db, None).await.expect("up");
    let rounds = r.json("/api/rounds").await;
    assert_eq!(rounds[0]["name"], "kept");
    assert_eq!(rounds[0]["state"], json!({}));
    s.stop().await;
}

#[test]
fn plots_render_and_escape() {
    let svg = line_chart_svg(
        "reward <script>alert('t')</script> & more",
        "step \"x\"",
        &[
            (
                "policy_loss".into(),
                vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5)],
            ),
            (
                "reward".into(),
                vec![(0.0, -1.0), (1.0, f64::INFINITY), (2.0, 2.0)],
            ),
        ],
    );
    assert!(
        svg.contains("policy_loss") && svg.contains("reward"),
        "{svg}"
    );
    assert!(
        !svg.contains("<script") && svg.contains("&lt;script&gt;"),
        "{svg}"
    );
    assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    assert!(line_chart_svg("empty", "x", &[]).contains("no data"));
}
