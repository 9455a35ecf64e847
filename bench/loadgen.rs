//! Load generator: N concurrent labelers doing "get next task + submit label"
//! against a real server (in this process, over real HTTP on 127.0.0.1), then
//! checks the database for lost or duplicated labels.
//!
//! ```text
//! cargo run --release -p annotation-server --example loadgen -- [DATABASE_URL] [LABELERS] [COMPARISONS]
//! ```
//! DATABASE_URL defaults to a temporary SQLite file; give a `postgres://` URL of
//! an empty database to measure PostgreSQL.
use annotation_server::accounts;
use annotation_server::api::Role;
use annotation_server::db::connect_and_migrate;
use annotation_server::server::RunningServer;
use annotation_server::state::{AppState, Config};
use sea_orm::{ConnectionTrait, Statement};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = tempfile::tempdir()?;
    let url = args
        .get(1)
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("load.sqlite").display()));
    let labelers: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let comparisons: usize = args
        .get(3)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);

    let db = connect_and_migrate(&url).await?;
    let server =
        RunningServer::start(AppState::new(db.clone(), Config::default()), "127.0.0.1:0").await?;
    let base = server.url();
    accounts::create_user(&db, "loadres", "password123", Role::Researcher, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rt = accounts::create_token(&db, "loadres", None, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let http = reqwest::Client::new();
    let p: serde_json::Value = http
        .post(format!("{base}/api/prompts/import"))
        .bearer_auth(&rt)
        .body("{\"prompt\": \"load test prompt\"}")
        .send()
        .await?
        .json()
        .await?;
    let pid = p["prompt_ids"][0].as_i64().unwrap();
    for chunk in 0..comparisons.div_ceil(5000) {
        let n = (comparisons - chunk * 5000).min(5000);
        let comps: Vec<_> =
            (0..n).map(|i| json!({"prompt_id": pid, "responses": [{"text": format!("a{i}")}, {"text": format!("b{i}")}]})).collect();
        let r = http
            .post(format!("{base}/api/comparisons"))
            .bearer_auth(&rt)
            .json(&json!({"batch": "load", "comparisons": comps}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "create comparisons: {}", r.status());
    }
    let mut tokens = vec![];
    for i in 0..labelers {
        let name = format!("loadlab{i}");
        accounts::create_user(&db, &name, "password123", Role::Labeler, None)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokens.push(
            accounts::create_token(&db, &name, None, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
    }

    println!(
        "{labelers} labelers, {comparisons} comparisons, {}",
        if url.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        }
    );
    let start = Instant::now();
    let mut handles = vec![];
    for token in tokens {
        let http = http.clone();
        let base = base.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = vec![];
            let mut errors = 0usize;
            loop {
                let t0 = Instant::now();
                let r = http
                    .post(format!("{base}/api/tasks/next"))
                    .bearer_auth(&token)
                    .send()
                    .await;
                let Ok(r) = r else {
                    errors += 1;
                    continue;
                };
                if r.status() == 204 {
                    break;
                }
                if r.status() != 200 {
                    errors += 1;
                    continue;
                }
                let t: serde_json::Value = r.json().await.unwrap_or_default();
                let id = t["comparison_id"].as_i64().unwrap_or(0);
                lat.push(t0.elapsed());
                let t1 = Instant::now();
                let r = http
                    .post(format!("{base}/api/tasks/{id}/label"))
                    .bearer_auth(&token)
                    .json(&json!({"ranking": [1, 2], "strength": "better"}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => lat.push(t1.elapsed()),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let mut lat: Vec<Duration> = vec![];
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.await?;
        lat.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let backend = db.get_database_backend();
    let q = |sql: &str| Statement::from_string(backend, sql.to_string());
    let labels: i64 = db
        .query_one_raw(q("SELECT COUNT(*) FROM labels"))
        .await?
        .unwrap()
        .try_get_by_index(0)?;
    let dups: i64 = db
        .query_one_raw(q("SELECT COUNT(*) FROM (SELECT comparison_id FROM labels GROUP BY comparison_id HAVING COUNT(*) > 1) d"))
        .await?
        .unwrap()
        .try_get_by_index(0)?;
    println!(
        "{labels} labels in {secs:.2} s = {:.0} labels/s; request latency p50 {:?} p99 {:?} max {:?}; errors {errors}; \
         lost {}; over-collected comparisons {dups}",
        labels as f64 / secs,
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or_default(),
        comparisons as i64 - labels,
    );
    server.stop().await?;
    Ok(())
}
