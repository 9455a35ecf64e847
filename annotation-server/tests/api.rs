//! REST API tests against a real server on SQLite and PostgreSQL.
mod common;

use annotation_server::api::Role;
use common::{assert_error, TestDb, TestServer};
use sea_orm::ConnectionTrait;
use serde_json::json;

on_both_databases!(
    researcher_flow,
    roles_are_enforced,
    assignment_rules,
    lease_expiry_returns_tasks,
    admin_api,
    rounds_and_round_filter
);

const PROMPTS: &str = r#"{"id": "p1", "prompt": "What is 2+2?", "tags": ["math"], "source": "unit"}
{"id": "p2", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."}], "tags": ["safety"]}

{"id": "p3", "prompt": "Say hi"}
"#;

fn label(ranking: &[u32], strength: &str) -> serde_json::Value {
    json!({"ranking": ranking, "strength": strength})
}

async fn researcher_flow(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let l1 = s.api(&s.token("lab1", Role::Labeler).await);
    let l2 = s.api(&s.token("lab2", Role::Labeler).await);

    // import prompts (JSONL, blank lines ignored)
    let resp = r
        .post_raw("/api/prompts/import", "application/x-ndjson", PROMPTS)
        .await;
    assert_eq!(resp.status(), 201);
    let imported: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(imported["imported"], 3);
    let prompts = r.json("/api/prompts?limit=10").await;
    assert_eq!(prompts.as_array().unwrap().len(), 3);
    assert_eq!(prompts[1]["messages"][0]["role"], "system");
    assert_eq!(prompts[0]["tags"], json!(["math"]));
    // a duplicate external id rejects the whole import and names the line
    let dup = r
        .post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            "{\"id\":\"p9\",\"prompt\":\"x\"}\n{\"id\":\"p1\",\"prompt\":\"y\"}\n",
        )
        .await;
    assert!(assert_error(dup, 409).await.contains("line 2"));
    assert_eq!(r.json("/api/prompts").await.as_array().unwrap().len(), 3);

    // comparisons in bulk: two pairs and one triple, 2 labels wanted
    let created = r
        .post(
            "/api/comparisons",
            json!({
                "batch": "round1-b1", "labels_wanted": 2,
                "comparisons": [
                    {"prompt_external_id": "p1", "responses": [{"text": "4", "model": "ckpt-a", "sampling": {"temperature": 0.7}}, {"text": "5", "model": "ckpt-b"}]},
                    {"prompt_external_id": "p2", "responses": [{"text": "Blue."}, {"text": "I refuse."}]},
                    {"prompt_id": imported["prompt_ids"][2], "responses": [{"text": "hi"}, {"text": "hello"}, {"text": "bye"}]}
                ]
            }),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    let ids: Vec<i64> = created["comparison_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let batch_id = created["batch_id"].as_i64().unwrap();

    // both labelers label everything; lab1 prefers the first response, lab2 agrees except on the triple
    for (api, who) in [(&l1, 1), (&l2, 2)] {
        let mut seen = vec![];
        loop {
            let t = api.post_empty("/api/tasks/next").await;
            if t.status() == 204 {
                break;
            }
            assert_eq!(t.status(), 200);
            let t: serde_json::Value = t.json().await.unwrap();
            let id = t["comparison_id"].as_i64().unwrap();
            assert!(!seen.contains(&id), "task repeated");
            seen.push(id);
            let k = t["responses"].as_array().unwrap().len();
            let body = match (k, who) {
                (2, _) => label(&[1, 2], "better"),
                (3, 1) => label(&[1, 2, 3], "significantly_better"),
                (_, _) => label(&[2, 1, 3], "slightly_better"),
            };
            let receipt = api.post(&format!("/api/tasks/{id}/label"), body).await;
            assert_eq!(receipt.status(), 201);
        }
        assert_eq!(seen.len(), 3);
    }

    // progress
    let b = r.json(&format!("/api/batches/{batch_id}")).await;
    assert_eq!(b["comparisons"], 3);
    assert_eq!(b["complete"], 3);
    assert_eq!(b["labels"], 6);
    assert_eq!(b["remaining_labels"], 0);
    assert_eq!(b["labelers"].as_array().unwrap().len(), 2);
    assert_eq!(b["labelers"][0]["labels"], 3);
    let all = r.json("/api/batches").await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    let labelers = r.json("/api/labelers").await;
    assert_eq!(labelers[1]["username"], "lab2");

    // consensus of the triple: mean ranks 1.5, 1.5, 3 → tie on top
    let c = r.json(&format!("/api/comparisons/{}", ids[2])).await;
    assert_eq!(c["labels"].as_array().unwrap().len(), 2);
    assert_eq!(c["consensus"]["ranking"], json!([1, 1, 3]));
    assert_eq!(c["consensus"]["mean_margin"], 2.0);
    assert_eq!(c["state"], "complete");

    // agreement: 2 pair units agree fully, the triple's 3 units disagree on one
    let a = r.json(&format!("/api/batches/{batch_id}/agreement")).await;
    assert_eq!(a["units"], 5);
    // units [0,0]x4 and [0,2]: alpha = 1 - 9*2/(2*9*1) = 0
    let alpha = a["krippendorff_alpha"].as_f64().unwrap();
    assert!(alpha.abs() < 1e-12, "{alpha}");
    // the consensus ties the triple's top pair, which neither labeler did
    assert_eq!(a["labelers"][0]["pairs"], 5);
    assert_eq!(a["labelers"][0]["agreed"], 4);

    // exports
    let trl = r
        .jsonl(&format!("/api/export?format=trl&batch_id={batch_id}"))
        .await;
    // one row per pair comparison + the triple's consensus [1,1,3]: (0,2) and (1,2)
    assert_eq!(trl.len(), 4);
    assert_eq!(
        trl[0],
        json!({"prompt": [{"role": "user", "content": "What is 2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
               "rejected": [{"role": "assistant", "content": "5"}], "margin": 2.0})
    );
    assert_eq!(trl[1]["prompt"].as_array().unwrap().len(), 2);
    let hh = r.jsonl("/api/export?format=hh").await;
    assert_eq!(hh.len(), 4);
    assert_eq!(hh[0]["chosen"], "\n\nHuman: What is 2+2?\n\nAssistant: 4");
    assert_eq!(hh[0]["rejected"], "\n\nHuman: What is 2+2?\n\nAssistant: 5");
    let raw = r.jsonl("/api/export?format=raw").await;
    assert_eq!(raw.len(), 6);
    assert_eq!(raw[0]["labeler"], "lab1");
    assert_eq!(raw[0]["responses"][0]["model"], "ckpt-a");
    assert_eq!(raw[0]["responses"][0]["sampling"]["temperature"], 0.7);
    assert_eq!(raw[0]["tags"], json!(["math"]));
    // filters
    // an unknown batch or round is 404, not an empty export
    let m = assert_error(
        r.get(&format!("/api/export?format=raw&batch_id={}", batch_id + 1))
            .await,
        404,
    )
    .await;
    assert!(m.contains("no batch"), "{m}");
    assert!(r
        .jsonl("/api/export?format=raw&since=2999-01-01")
        .await
        .is_empty());
    assert_eq!(
        r.jsonl("/api/export?format=raw&until=2999-01-01T00:00:00Z")
            .await
            .len(),
        6
    );
    assert_error(r.get("/api/export?round_id=42").await, 404).await;
    let bad = r.get("/api/export?format=csv").await;
    assert_error(bad, 400).await;
    let bad = r.get("/api/export?since=yesterday").await;
    assert!(assert_error(bad, 400).await.contains("since"));

    // the typed client reads the same data
    let url = s.url.clone();
    let token = r.token.clone();
    let rows = tokio::task::spawn_blocking(move || {
        let c = annotation_server::api::client::Client::new(&url, &token).unwrap();
        let b = c.batch(batch_id).unwrap();
        assert_eq!(b.labels, 6);
        assert_eq!(c.agreement(batch_id).unwrap().units, 5);
        assert_eq!(c.labelers().unwrap().len(), 2);
        assert_eq!(c.prompts(0, 2).unwrap().len(), 2);
        let detail = c.comparison(ids[0]).unwrap();
        assert_eq!(detail.labels.len(), 2);
        // errors carry the server's message
        let err = c.batch(987654).unwrap_err().to_string();
        assert!(err.contains("404") && err.contains("no batch"), "{err}");
        c.export_trl(Default::default()).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0].margin, 2.0);
    s.stop().await;
}

async fn roles_are_enforced(db: TestDb) {
    let s = TestServer::start(db).await;
    let admin = s.api(&s.token("adm", Role::Admin).await);
    let res = s.api(&s.token("res", Role::Researcher).await);
    let lab = s.api(&s.token("lab", Role::Labeler).await);
    let anon = s.api("");
    let bogus = s.api("rlhf_0000");

    for path in [
        "/api/prompts",
        "/api/batches",
        "/api/batches/1",
        "/api/labelers",
        "/api/export",
        "/api/comparisons/1",
        "/api/users",
        "/api/audit",
    ] {
        assert_error(lab.get(path).await, 403).await;
        assert_error(anon.get(path).await, 401).await;
        assert_error(bogus.get(path).await, 401).await;
    }
    assert_error(
        lab.post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            "{\"prompt\":\"x\"}",
        )
        .await,
        403,
    )
    .await;
    assert_error(
        lab.post("/api/comparisons", json!({"batch": "b", "comparisons": []}))
            .await,
        403,
    )
    .await;
    assert_error(
        lab.post(
            "/api/users",
            json!({"username": "x", "password": "password123", "role": "admin"}),
        )
        .await,
        403,
    )
    .await;
    // researchers cannot manage users
    assert_error(res.get("/api/users").await, 403).await;
    assert_error(
        res.post(
            "/api/users",
            json!({"username": "x", "password": "password123", "role": "admin"}),
        )
        .await,
        403,
    )
    .await;
    assert_error(res.post("/api/users/lab/disable", json!({})).await, 403).await;
    assert_error(res.post("/api/users/lab/tokens", json!({})).await, 403).await;
    assert_eq!(res.get("/api/batches").await.status(), 200);
    assert_eq!(admin.get("/api/users").await.status(), 200);
    // everyone can ask for work
    assert_eq!(lab.post_empty("/api/tasks/next").await.status(), 204);
    assert_error(anon.post_empty("/api/tasks/next").await, 401).await;
    s.stop().await;
}

async fn make_batch(r: &common::Api, name: &str, wanted: u32, n: usize) -> Vec<i64> {
    let p = r
        .post_raw(
            "/api/prompts/import",
            "application/x-ndjson",
            format!("{{\"prompt\": \"prompt for {name}\"}}"),
        )
        .await;
    assert_eq!(p.status(), 201);
    let pid = p.json::<serde_json::Value>().await.unwrap()["prompt_ids"][0]
        .as_i64()
        .unwrap();
    let comps: Vec<_> = (0..n).map(|i| json!({"prompt_id": pid, "responses": [{"text": format!("a{i}")}, {"text": format!("b{i}")}]})).collect();
    let c = r
        .post(
            "/api/comparisons",
            json!({"batch": name, "labels_wanted": wanted, "comparisons": comps}),
        )
        .await;
    assert_eq!(c.status(), 201);
    c.json::<serde_json::Value>().await.unwrap()["comparison_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

async fn next_id(api: &common::Api) -> Option<i64> {
    let r = api.post_empty("/api/tasks/next").await;
    if r.status() == 204 {
        return None;
    }
    assert_eq!(r.status(), 200);
    Some(
        r.json::<serde_json::Value>().await.unwrap()["comparison_id"]
            .as_i64()
            .unwrap(),
    )
}

async fn assignment_rules(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let l1 = s.api(&s.token("l1", Role::Labeler).await);
    let l2 = s.api(&s.token("l2", Role::Labeler).await);
    let l3 = s.api(&s.token("l3", Role::Labeler).await);
    let ids = make_batch(&r, "b", 2, 1).await;
    let id = ids[0];

    // a lease is sticky: asking again returns the same task
    assert_eq!(next_id(&l1).await, Some(id));
    assert_eq!(next_id(&l1).await, Some(id));
    assert_eq!(next_id(&l2).await, Some(id));
    // both slots are leased: nothing for a third labeler
    assert_eq!(next_id(&l3).await, None);
    // l1 skips: the slot frees up, and l1 never sees it again
    assert_eq!(
        l1.post(&format!("/api/tasks/{id}/skip"), json!({}))
            .await
            .status(),
        204
    );
    assert_eq!(next_id(&l1).await, None);
    // ... nor label it by id (it holds no lease on it)
    let m = assert_error(
        l1.post(&format!("/api/tasks/{id}/label"), label(&[2, 1], "better"))
            .await,
        409,
    )
    .await;
    assert!(m.contains("no lease"), "{m}");
    assert_eq!(next_id(&l3).await, Some(id));
    // l2 and l3 label it; it is complete
    assert_eq!(
        l2.post(&format!("/api/tasks/{id}/label"), label(&[2, 1], "better"))
            .await
            .status(),
        201
    );
    let done = l3
        .post(
            &format!("/api/tasks/{id}/label"),
            label(&[1, 2], "negligibly_better"),
        )
        .await;
    assert_eq!(done.status(), 201);
    assert_eq!(
        done.json::<serde_json::Value>().await.unwrap()["comparison_complete"],
        true
    );
    // repeats and over-collection are refused
    assert!(assert_error(
        l2.post(&format!("/api/tasks/{id}/label"), label(&[2, 1], "better"))
            .await,
        409
    )
    .await
    .contains("already"));
    assert_error(
        l1.post(&format!("/api/tasks/{id}/label"), label(&[2, 1], "better"))
            .await,
        409,
    )
    .await;
    assert_eq!(next_id(&l2).await, None);
    // a free slot is not enough: labels need the caller's lease
    let ids = make_batch(&r, "c", 1, 1).await;
    let m = assert_error(
        l1.post(
            &format!("/api/tasks/{}/label", ids[0]),
            label(&[1, 2], "better"),
        )
        .await,
        409,
    )
    .await;
    assert!(m.contains("no lease"), "{m}");
    assert_eq!(next_id(&l2).await, Some(ids[0]));
    // unknown comparison
    assert_error(
        l1.post("/api/tasks/999999/label", label(&[1, 2], "better"))
            .await,
        404,
    )
    .await;
    assert_error(l1.post("/api/tasks/999999/skip", json!({})).await, 404).await;
    s.stop().await;
}

async fn lease_expiry_returns_tasks(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let l1 = s.api(&s.token("l1", Role::Labeler).await);
    let l2 = s.api(&s.token("l2", Role::Labeler).await);
    let id = make_batch(&r, "b", 1, 1).await[0];
    // leases are expired by moving their end into the past, so the test
    // need not wait for a clock (and no background reaper races it)
    let expire = |who: &'static str| {
        let db = s.db.clone();
        async move {
            db.execute_unprepared(&format!(
                "UPDATE leases SET expires_at = 0 WHERE labeler_id = \
                 (SELECT id FROM users WHERE username = '{who}')"
            ))
            .await
            .unwrap();
        }
    };
    assert_eq!(next_id(&l1).await, Some(id));
    expire("l1").await;
    // l1 abandoned it; it goes to l2
    assert_eq!(next_id(&l2).await, Some(id));
    // an expired lease still counts until it is reaped
    expire("l2").await;
    assert_eq!(
        l2.post(&format!("/api/tasks/{id}/label"), label(&[1, 2], "better"))
            .await
            .status(),
        201
    );
    // l1's late submission would over-collect: refused
    assert_error(
        l1.post(&format!("/api/tasks/{id}/label"), label(&[1, 2], "better"))
            .await,
        409,
    )
    .await;
    let b = r.json("/api/batches").await;
    assert_eq!(b[0]["labels"], 1);
    s.stop().await;
}

async fn admin_api(db: TestDb) {
    let s = TestServer::start(db).await;
    let admin = s.api(&s.token("adm", Role::Admin).await);
    let created = admin
        .post(
            "/api/users",
            json!({"username": "newlab", "password": "longenough", "role": "labeler"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    assert_error(
        admin
            .post(
                "/api/users",
                json!({"username": "newlab", "password": "longenough", "role": "labeler"}),
            )
            .await,
        409,
    )
    .await;
    assert_error(
        admin
            .post(
                "/api/users",
                json!({"username": "bad name", "password": "longenough", "role": "labeler"}),
            )
            .await,
        400,
    )
    .await;
    assert_error(
        admin
            .post(
                "/api/users",
                json!({"username": "x", "password": "short", "role": "labeler"}),
            )
            .await,
        400,
    )
    .await;
    assert_error(
        admin
            .post(
                "/api/users",
                json!({"username": "x", "password": "longenough", "role": "god"}),
            )
            .await,
        422,
    )
    .await;
    let tok = admin
        .post("/api/users/newlab/tokens", json!({"name": "sim"}))
        .await;
    assert_eq!(tok.status(), 201);
    let token = tok.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let lab = s.api(&token);
    let me = lab.json("/api/me").await;
    assert_eq!(me["username"], "newlab");
    assert_eq!(me["role"], "labeler");
    assert_error(admin.post("/api/users/nobody/tokens", json!({})).await, 404).await;
    // disabling takes effect at once
    assert_eq!(
        admin
            .post("/api/users/newlab/disable", json!({}))
            .await
            .status(),
        200
    );
    assert_error(lab.get("/api/me").await, 401).await;
    let users = admin.json("/api/users").await;
    assert_eq!(users[1]["disabled"], true);
    // the audit log recorded it
    let audit = admin.json("/api/audit?limit=100").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"user.create")
            && actions.contains(&"user.disable")
            && actions.contains(&"token.create"),
        "{actions:?}"
    );
    assert_error(admin.get("/api/audit?limit=0").await, 400).await;
    s.stop().await;
}

async fn rounds_and_round_filter(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let lab = s.api(&s.token("lab", Role::Labeler).await);
    let created = r
        .post(
            "/api/rounds",
            json!({"name": "round-1", "config": {"algo": "dpo", "beta": 0.1}}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let round: serde_json::Value = created.json().await.unwrap();
    let rid = round["id"].as_i64().unwrap();
    assert_eq!(round["status"], "created");
    assert_eq!(round["config"]["beta"], 0.1);
    assert_error(
        r.post("/api/rounds", json!({"name": "x", "config": [1, 2]}))
            .await,
        422,
    )
    .await;
    assert_error(lab.post("/api/rounds", json!({"name": "x"})).await, 403).await;
    let upd = r
        .http
        .patch(format!("{}/api/rounds/{rid}", s.url))
        .bearer_auth(&r.token)
        .json(&json!({"status": "queued", "metrics": {"win_rate": 0.6}}))
        .send()
        .await
        .unwrap();
    assert_eq!(upd.status(), 200);
    let bad = r
        .http
        .patch(format!("{}/api/rounds/{rid}", s.url))
        .bearer_auth(&r.token)
        .json(&json!({"status": "<b>"}))
        .send()
        .await
        .unwrap();
    assert_error(bad, 422).await;
    let got = r.json(&format!("/api/rounds/{rid}")).await;
    assert_eq!(got["status"], "queued");
    assert_eq!(got["metrics"]["win_rate"], 0.6);
    assert_eq!(r.json("/api/rounds").await.as_array().unwrap().len(), 1);
    assert_error(r.get("/api/rounds/777").await, 404).await;

    // a batch in the round, and one outside it
    let pid = r.import_prompt("{\"prompt\": \"p\"}").await;
    let pair =
        json!([{"prompt_id": pid, "responses": [{"text": "a", "round_id": rid}, {"text": "b"}]}]);
    assert_eq!(
        r.post(
            "/api/comparisons",
            json!({"batch": "in", "round_id": rid, "comparisons": pair})
        )
        .await
        .status(),
        201
    );
    assert_eq!(
        r.post(
            "/api/comparisons",
            json!({"batch": "out", "comparisons": pair})
        )
        .await
        .status(),
        201
    );
    assert_error(
        r.post(
            "/api/comparisons",
            json!({"batch": "bad", "round_id": 999, "comparisons": pair}),
        )
        .await,
        422,
    )
    .await;
    while let Some(id) = next_id(&lab).await {
        assert_eq!(
            lab.post(&format!("/api/tasks/{id}/label"), label(&[1, 2], "better"))
                .await
                .status(),
            201
        );
    }
    let rows = r
        .jsonl(&format!("/api/export?format=raw&round_id={rid}"))
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["round_id"], rid);
    assert_eq!(rows[0]["responses"][0]["round_id"], rid);
    assert_eq!(r.jsonl("/api/export?format=raw").await.len(), 2);
    s.stop().await;
}
