//! Many labelers in parallel: no duplicate labels, no over-collection, nothing
//! lost, counters consistent with the rows — on SQLite and PostgreSQL.
mod common;

use annotation_server::api::Role;
use common::{scalar, TestDb, TestServer};
use serde_json::json;

on_both_databases!(
    parallel_labelers_never_over_collect,
    racing_submissions_store_one_label
);

const LABELERS: usize = 24;
const COMPARISONS: usize = 60;
const WANTED: u32 = 3;

/// Open comparisons this labeler could still get once others' leases end
/// (another labeler may skip a slot after this one was told "nothing now").
async fn still_possible(db: &sea_orm::DatabaseConnection, labeler: &str) -> i64 {
    scalar(db, &format!(
        "SELECT COUNT(*) FROM comparisons c WHERE c.state <> 'complete' \
         AND NOT EXISTS (SELECT 1 FROM labels l JOIN users u ON u.id = l.labeler_id WHERE l.comparison_id = c.id AND u.username = '{labeler}') \
         AND NOT EXISTS (SELECT 1 FROM skips k JOIN users u ON u.id = k.labeler_id WHERE k.comparison_id = c.id AND u.username = '{labeler}')"
    ))
    .await
}

async fn parallel_labelers_never_over_collect(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let pid = r.import_prompt("{\"prompt\": \"p\"}").await;
    let comps: Vec<_> = (0..COMPARISONS).map(|i| json!({"prompt_id": pid, "responses": [{"text": format!("a{i}")}, {"text": format!("b{i}")}]})).collect();
    let c = r
        .post(
            "/api/comparisons",
            json!({"batch": "load", "labels_wanted": WANTED, "comparisons": comps}),
        )
        .await;
    assert_eq!(c.status(), 201);

    let mut apis = vec![];
    for i in 0..LABELERS {
        apis.push(s.api(&s.token(&format!("lab{i}"), Role::Labeler).await));
    }
    let mut tasks = vec![];
    for (i, api) in apis.into_iter().enumerate() {
        let db = s.db.clone();
        tasks.push(tokio::spawn(async move {
            let (mut labeled, mut skipped) = (0usize, 0usize);
            loop {
                let t = api.post_empty("/api/tasks/next").await;
                if t.status() == 204 {
                    if still_possible(&db, &format!("lab{i}")).await == 0 {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                assert_eq!(t.status(), 200, "next task");
                let id = t.json::<serde_json::Value>().await.unwrap()["comparison_id"]
                    .as_i64()
                    .unwrap();
                // every 7th labeler skips some tasks, so skips and frees race with claims
                if i % 7 == 0 && id % 3 == 0 {
                    assert_eq!(
                        api.post(&format!("/api/tasks/{id}/skip"), json!({}))
                            .await
                            .status(),
                        204
                    );
                    skipped += 1;
                    continue;
                }
                let resp = api
                    .post(
                        &format!("/api/tasks/{id}/label"),
                        json!({"ranking": [1, 2], "strength": "better"}),
                    )
                    .await;
                assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
                labeled += 1;
            }
            (labeled, skipped)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().0;
    }
    // there are far more labelers than needed, so every slot got filled
    assert_eq!(total, COMPARISONS * WANTED as usize);
    assert_eq!(
        scalar(&s.db, "SELECT COUNT(*) FROM labels").await,
        (COMPARISONS * WANTED as usize) as i64
    );
    // no comparison over- or under-collected, and counters match the rows
    assert_eq!(
        scalar(&s.db, "SELECT COUNT(*) FROM comparisons c WHERE (SELECT COUNT(*) FROM labels l WHERE l.comparison_id = c.id) <> 3").await,
        0
    );
    assert_eq!(scalar(&s.db, "SELECT COUNT(*) FROM comparisons WHERE labels_done <> 3 OR leased <> 0 OR state <> 'complete'").await, 0);
    // no labeler labeled a comparison twice (the unique index would refuse, check anyway)
    assert_eq!(
        scalar(&s.db, "SELECT COUNT(*) FROM (SELECT comparison_id, labeler_id FROM labels GROUP BY comparison_id, labeler_id HAVING COUNT(*) > 1) d").await,
        0
    );
    // nobody labeled what they skipped
    assert_eq!(
        scalar(&s.db, "SELECT COUNT(*) FROM labels l JOIN skips k ON k.comparison_id = l.comparison_id AND k.labeler_id = l.labeler_id").await,
        0
    );
    assert_eq!(scalar(&s.db, "SELECT COUNT(*) FROM leases").await, 0);
    let m = r.get("/metrics").await.text().await.unwrap();
    assert!(
        m.contains(&format!(
            "rlhf_labels_submitted_total {}",
            COMPARISONS * WANTED as usize
        )),
        "{m}"
    );
    assert!(m.contains("rlhf_queue_depth 0"));
    s.stop().await;
}

async fn racing_submissions_store_one_label(db: TestDb) {
    let s = TestServer::start(db).await;
    let r = s.api(&s.token("res", Role::Researcher).await);
    let pid = r.import_prompt("{\"prompt\": \"p\"}").await;
    let c = r.post("/api/comparisons", json!({"batch": "race", "labels_wanted": 2, "comparisons": [{"prompt_id": pid, "responses": [{"text": "a"}, {"text": "b"}]}]})).await;
    let id = c.json::<serde_json::Value>().await.unwrap()["comparison_ids"][0]
        .as_i64()
        .unwrap();
    // the same labeler submits 8 times at once (double clicks, retries)
    let l = s.api(&s.token("lab", Role::Labeler).await);
    // and 8 other labelers submit too: o0 with the other lease, the rest
    // without one (they must all be refused, however they race)
    let mut others = vec![];
    for i in 0..8 {
        others.push(s.api(&s.token(&format!("o{i}"), Role::Labeler).await));
    }
    assert_eq!(l.post_empty("/api/tasks/next").await.status(), 200);
    assert_eq!(others[0].post_empty("/api/tasks/next").await.status(), 200);
    let mut handles = vec![];
    for _ in 0..8 {
        let l = l.clone();
        handles.push(tokio::spawn(async move {
            l.post(
                &format!("/api/tasks/{id}/label"),
                json!({"ranking": [1, 2], "strength": "better"}),
            )
            .await
            .status()
            .as_u16()
        }));
    }
    for o in others {
        handles.push(tokio::spawn(async move {
            o.post(
                &format!("/api/tasks/{id}/label"),
                json!({"ranking": [2, 1], "strength": "better"}),
            )
            .await
            .status()
            .as_u16()
        }));
    }
    let mut statuses = vec![];
    for h in handles {
        statuses.push(h.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        2,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    assert_eq!(scalar(&s.db, "SELECT COUNT(*) FROM labels").await, 2);
    assert_eq!(scalar(&s.db, "SELECT COUNT(*) FROM comparisons WHERE labels_done = 2 AND leased = 0 AND state = 'complete'").await, 1);
    s.stop().await;
}
