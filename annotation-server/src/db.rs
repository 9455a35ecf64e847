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

/// `url` as it may be shown (logs, errors): any password replaced by `***`.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.into()
        }
        Ok(_) => url.to_string(),
        // unparsable: show only what cannot hold a password
        Err(_) => match url.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => format!("{scheme}://***@…"),
            _ => url.to_string(),
        },
    }
}

/// Why `url` cannot name a database of ours, before anything connects:
/// another scheme (`mysql://`), a SQLite URL without a file, or an in-memory
/// SQLite database (each pooled connection would get its own, empty one).
pub fn check_url(url: &str) -> Result<(), DbErr> {
    let bad = |m: String| Err(DbErr::Custom(m));
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(());
    }
    if let Some((scheme, _)) = url.split_once("://") {
        if scheme != "sqlite" {
            return bad(format!(
                "unsupported database URL scheme {scheme:?}: use sqlite://PATH or postgres://USER@HOST/DB"
            ));
        }
    }
    let path = sqlite_path(url);
    if path.is_empty() {
        return bad(format!(
            "the SQLite URL {url:?} names no file: use e.g. sqlite://rlhf.sqlite"
        ));
    }
    if path == ":memory:" || url.contains("mode=memory") {
        return bad("an in-memory SQLite database is not supported: use a file".into());
    }
    Ok(())
}

/// The file of a SQLite URL or bare path (without query).
fn sqlite_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    rest.split('?').next().unwrap_or("")
}

/// How long connecting may take before giving up with an error that names
/// the server (instead of retrying for the pool's acquire timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Fails fast, naming host and port (never the password), when a PostgreSQL
/// server cannot be reached over TCP.
async fn probe_postgres(url: &str) -> Result<(), DbErr> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Ok(()); // the driver reports what is wrong with it
    };
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Ok(()); // a Unix socket, named in the query
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port().unwrap_or(5432);
    let unreachable =
        |why: String| DbErr::Custom(format!("cannot reach PostgreSQL at {host}:{port}: {why}"));
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!(
            "no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Opens a connection pool. SQLite gets WAL mode, a busy timeout and a small
/// pool: writers are serialized by SQLite anyway, while WAL lets readers (e.g.
/// a long export) run beside them. A bad URL or an unreachable server fails
/// within seconds, with an error that never shows the password.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    check_url(url)?;
    if url.starts_with("postgres") {
        probe_postgres(url).await?;
    }
    let url = normalize_url(url);
    let mut opts = ConnectOptions::new(url.clone());
    opts.sqlx_logging(false)
        .connect_timeout(CONNECT_TIMEOUT)
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

/// Connects and applies all pending migrations (creating a SQLite file).
pub async fn connect_and_migrate(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = connect(url).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Connects to a database that must already exist and have our schema (the
/// account commands: run elsewhere by mistake they must not create an empty
/// `rlhf.sqlite`). Migrations newer than the database are applied.
pub async fn connect_existing(url: &str) -> Result<DatabaseConnection, DbErr> {
    check_url(url)?;
    let is_sqlite = !url.starts_with("postgres");
    if is_sqlite && !std::path::Path::new(sqlite_path(url)).exists() {
        return Err(DbErr::Custom(format!(
            "no database at {}: give --database-url (or RLHF_DATABASE_URL), or create it with \
             `rlhf db migrate` or `rlhf serve`",
            sqlite_path(url)
        )));
    }
    let db = connect(url).await?;
    let manager = migrations::SchemaManager::new(&db);
    if !manager.has_table("seaql_migrations").await? {
        return Err(DbErr::Custom(format!(
            "the database {} has no rlhf schema: create it with `rlhf db migrate` or `rlhf serve`",
            redact(url)
        )));
    }
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
