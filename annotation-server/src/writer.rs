//! The labeling hot path's writes (claim a task, store a label), batched into
//! shared transactions on SQLite.
//!
//! SQLite has one writer at a time, and through sqlx every statement, `BEGIN`
//! and `COMMIT` is a trip to the connection's worker thread: under many
//! concurrent labelers most of the time went to handing the write lock and
//! those threads around, not to SQL. Here one task takes every write that is
//! waiting and runs them in one transaction (group commit): `BEGIN`, one
//! script per write, `COMMIT`, then answers each. A write is answered only
//! after its transaction committed. Each script runs inside its own
//! savepoint, so a write that fails (e.g. a duplicate label) is rolled back
//! alone and the others in its batch still commit.
//!
//! PostgreSQL commits concurrent transactions together by itself (its own
//! group commit), so there each write is one statement, run at once.
use crate::db::SQLITE_WRITER;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, QueryResult, SqliteTransactionMode,
    Statement, TransactionOptions, TransactionTrait, Value,
};
use std::sync::OnceLock;
use tokio::sync::{mpsc, oneshot};

/// Most writes one SQLite transaction takes.
const MAX_BATCH: usize = 64;

type Reply = oneshot::Sender<Result<Vec<QueryResult>, DbErr>>;

struct Job {
    sql: String,
    values: Vec<Value>,
    reply: Reply,
}

/// Runs hot-path writes: batched on SQLite, directly on PostgreSQL.
pub struct Writer {
    db: DatabaseConnection,
    /// The batching task's queue (SQLite), started by the first write so that
    /// it runs on the runtime that serves the requests.
    queue: OnceLock<mpsc::UnboundedSender<Job>>,
}

impl Writer {
    /// A writer over `db`.
    pub fn new(db: DatabaseConnection) -> Writer {
        Writer {
            db,
            queue: OnceLock::new(),
        }
    }

    /// Runs `sql` (with `?` placeholders; on SQLite it may hold several
    /// statements) as one atomic write and returns the rows of all its
    /// statements, in order. It has committed when this returns `Ok`; on
    /// `Err` none of it happened.
    pub async fn write(&self, sql: &str, values: Vec<Value>) -> Result<Vec<QueryResult>, DbErr> {
        if self.db.get_database_backend() != DbBackend::Sqlite {
            let stmt = crate::sql::stmt(&self.db, sql, values);
            return self.db.query_all_raw(stmt).await;
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(run_batches(self.db.clone(), rx));
            tx
        });
        let (reply, answer) = oneshot::channel();
        let job = Job {
            sql: format!("SAVEPOINT w; {sql}; RELEASE w"),
            values,
            reply,
        };
        queue
            .send(job)
            .map_err(|_| DbErr::Custom("the database writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| DbErr::Custom("the database writer has stopped".into()))?
    }
}

/// Takes whatever writes are waiting (up to [`MAX_BATCH`]) and runs them in
/// one transaction, until every sender is gone.
async fn run_batches(db: DatabaseConnection, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let batch = std::mem::take(&mut jobs);
        let replies = run_batch(&db, batch).await;
        for (reply, result) in replies {
            // the requester may have gone (client hung up): its write stands
            let _ = reply.send(result);
        }
    }
}

/// Runs one batch; returns each job's reply channel with its result.
async fn run_batch(
    db: &DatabaseConnection,
    jobs: Vec<Job>,
) -> Vec<(Reply, Result<Vec<QueryResult>, DbErr>)> {
    // other writers of this process (imports, skips, reaping) queue here too
    let _writer = SQLITE_WRITER.lock().await;
    let txn = match db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await
    {
        Ok(txn) => txn,
        Err(e) => return fail_all(jobs.into_iter().map(|j| j.reply), &e),
    };
    let mut done = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter();
    for job in jobs.by_ref() {
        let stmt = Statement::from_sql_and_values(DbBackend::Sqlite, job.sql, job.values);
        let result = txn.query_all_raw(stmt).await;
        let undone = match result {
            Ok(_) => Ok(()),
            // undo this write only; if even that fails, the whole batch goes
            Err(_) => txn
                .execute_unprepared("ROLLBACK TO w; RELEASE w")
                .await
                .map(drop),
        };
        done.push((job.reply, result));
        if let Err(e) = undone {
            let replies = done.into_iter().map(|(r, _)| r);
            return fail_all(replies.chain(jobs.map(|j| j.reply)), &e);
        }
    }
    match txn.commit().await {
        Ok(()) => done,
        Err(e) => fail_all(done.into_iter().map(|(r, _)| r), &e),
    }
}

/// The same batch-level error for every reply: none of their writes happened.
fn fail_all(
    replies: impl Iterator<Item = Reply>,
    e: &DbErr,
) -> Vec<(Reply, Result<Vec<QueryResult>, DbErr>)> {
    replies
        .map(|r| {
            (
                r,
                Err(DbErr::Custom(format!("the write batch failed: {e}"))),
            )
        })
        .collect()
}
