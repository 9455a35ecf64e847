//! Connecting to the database (SQLite or PostgreSQL) and migrating it.
use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use std::time::Duration;

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://rlhf.sqlite";

/// Normalizes a database URL: a bare path or a `sqlite:` URL gets `mode=rwc`
/// so the file is created on first use.
///
/// A PostgreSQL URL to a loopback host without an `sslmode` gets
/// `sslmode=disable`: TLS to the same machine protects nothing and costs CPU
/// on every query (about a tenth of the labeling throughput here). Give
/// `sslmode=` (or set `PGSSLMODE`) to choose otherwise.
pub fn normalize_url(url: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return without_loopback_tls(url);
    }
    let url = if url.starts_with("sqlite:") {
        url.to_string()
    } else {
        format!("sqlite://{url}")
    };
    if url.contains("mode=") || url.contains(":memory:") {
        url
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

/// `url` with `sslmode=disable` added when it names a loopback host (localhost,
/// 127.0.0.0/8, ::1) and neither the URL nor `PGSSLMODE` chooses a mode.
fn without_loopback_tls(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // left to the driver, which reports what is wrong with it
        return url.to_string();
    };
    let loopback = match parsed.host() {
        // hosts of non-web schemes stay text, IPv4 addresses too
        Some(url::Host::Domain(name)) => {
            name == "localhost"
                || name
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let chosen = parsed.query_pairs().any(|(k, _)| k == "sslmode")
        || std::env::var_os("PGSSLMODE").is_some();
    if !loopback || chosen {
        return url.to_string();
    }
    parsed.query_pairs_mut().append_pair("sslmode", "disable");
    parsed.into()
}

/// Opens a connection pool. SQLite gets WAL mode, a busy timeout and a small
/// pool: writers are serialized by SQLite anyway, while WAL lets readers (e.g.
/// a long export) run beside them.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let url = normalize_url(url);
    let mut opts = ConnectOptions::new(url.clone());
    opts.sqlx_logging(false)
        .acquire_timeout(Duration::from_secs(30));
    if url.starts_with("sqlite:") {
        opts.max_connections(4)
            .min_connections(1)
            .map_sqlx_sqlite_opts(|o| {
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30))
                    .foreign_keys(true)
            });
    } else {
        opts.max_connections(32).min_connections(1);
    }
    Database::connect(opts).await
}

/// Connects and applies all pending migrations.
pub async fn connect_and_migrate(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = connect(url).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Serializes this process's SQLite write transactions. SQLite allows one
/// writer at a time, and a writer that finds the database locked sleeps in
/// SQLite's polling busy handler (milliseconds at a time); queueing writers
/// here instead hands the lock over at once. Other processes (the CLI) are
/// still covered by the busy timeout.
pub(crate) static SQLITE_WRITER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Holds the writer slot (SQLite only) for as long as it lives.
pub type WriteGuard = Option<tokio::sync::MutexGuard<'static, ()>>;

/// Begins a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`,
/// taking the write lock up front: a deferred transaction that reads first and
/// writes later can fail with SQLITE_BUSY instead of waiting its turn. Keep the
/// guard alive until after commit: `let (_w, txn) = begin_write(db).await?;`
/// (the transaction, declared later, is dropped first).
pub async fn begin_write(
    db: &DatabaseConnection,
) -> Result<(WriteGuard, DatabaseTransaction), DbErr> {
    let guard = match db.get_database_backend() {
        DbBackend::Sqlite => Some(SQLITE_WRITER.lock().await),
        _ => None,
    };
    let txn = db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?;
    Ok((guard, txn))
}

#[cfg(test)]
mod tests {
    use super::normalize_url;

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize_url("rlhf.sqlite"),
            "sqlite://rlhf.sqlite?mode=rwc"
        );
        assert_eq!(
            normalize_url("sqlite:///tmp/x.db"),
            "sqlite:///tmp/x.db?mode=rwc"
        );
        assert_eq!(
            normalize_url("sqlite://x.db?mode=ro"),
            "sqlite://x.db?mode=ro"
        );
        assert_eq!(normalize_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            normalize_url("postgres://u@127.0.0.1:5432/d"),
            "postgres://u@127.0.0.1:5432/d?sslmode=disable"
        );
        assert_eq!(
            normalize_url("postgresql://u:p@localhost/d?application_name=x"),
            "postgresql://u:p@localhost/d?application_name=x&sslmode=disable"
        );
        assert_eq!(
            normalize_url("postgres://[::1]:5432/d"),
            "postgres://[::1]:5432/d?sslmode=disable"
        );
        assert_eq!(
            normalize_url("postgres://u@localhost/d?sslmode=require"),
            "postgres://u@localhost/d?sslmode=require"
        );
        assert_eq!(
            normalize_url("postgres://localhost.example.com/d"),
            "postgres://localhost.example.com/d"
        );
    }
}
