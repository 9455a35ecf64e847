//! The hot-path writer: concurrent writes that share a SQLite transaction
//! commit or fail one by one, never together.
mod common;

use annotation_server::db::connect;
use annotation_server::error::is_unique_violation;
use annotation_server::writer::Writer;
use common::TestDb;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use std::sync::Arc;

on_both_databases!(a_failing_write_is_undone_alone);

async fn a_failing_write_is_undone_alone(db: TestDb) {
    let conn = connect(&db.url).await.unwrap();
    conn.execute_unprepared(
        "CREATE TABLE written (k BIGINT PRIMARY KEY); CREATE TABLE taken (k BIGINT PRIMARY KEY)",
    )
    .await
    .unwrap();
    // odd keys are taken already: writes of odd keys fail at their second step
    for k in (1..200).step_by(2) {
        conn.execute_unprepared(&format!("INSERT INTO taken (k) VALUES ({k})"))
            .await
            .unwrap();
    }
    let sql = match conn.get_database_backend() {
        // two statements: the first must be undone when the second fails
        DbBackend::Sqlite => {
            "INSERT INTO written (k) VALUES (?); INSERT INTO taken (k) VALUES (?) RETURNING k"
        }
        _ => {
            "WITH w AS (INSERT INTO written (k) VALUES (?) RETURNING k) \
             INSERT INTO taken (k) SELECT ? FROM w RETURNING k"
        }
    };
    let writer = Arc::new(Writer::new(conn.clone()));
    let tasks: Vec<_> = (0..200i64)
        .map(|k| {
            let writer = writer.clone();
            tokio::spawn(async move { (k, writer.write(sql, vec![k.into(), k.into()]).await) })
        })
        .collect();
    for t in tasks {
        let (k, result) = t.await.unwrap();
        match result {
            Ok(rows) => {
                assert_eq!(k % 2, 0, "key {k} should have failed");
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].try_get_by_index::<i64>(0).unwrap(), k);
            }
            Err(e) => {
                assert_eq!(k % 2, 1, "key {k} failed: {e}");
                assert!(is_unique_violation(&e), "{e}");
            }
        }
    }
    let count = |sql: &str| {
        let conn = conn.clone();
        let sql = sql.to_string();
        async move {
            let row = conn
                .query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
                .await
                .unwrap()
                .unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        }
    };
    // every even write committed whole, no odd one left anything behind
    assert_eq!(count("SELECT COUNT(*) FROM written").await, 100);
    assert_eq!(
        count("SELECT COUNT(*) FROM written WHERE k % 2 = 1").await,
        0
    );
    assert_eq!(count("SELECT COUNT(*) FROM taken").await, 200);
}
