//! `rlhf serve`, `rlhf db migrate`, `rlhf user add|list|disable`, `rlhf token create|list|revoke`.
//!
//! Account commands work against the same `--database-url` as the server,
//! whether or not it is running; the database must exist already (only
//! `serve` and `db migrate` create one).
use crate::accounts;
use crate::api::Role;
use crate::db::{connect_and_migrate, connect_existing, redact, DEFAULT_DATABASE_URL};
use crate::server::{serve, shutdown_signal};
use crate::state::{AppState, Config};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::io::{BufRead, Write};
use std::time::Duration;

/// Where the database is.
#[derive(Args, Debug, Clone)]
pub struct DbArgs {
    /// Database URL: `sqlite://path` (created if missing) or `postgres://...`.
    #[arg(long, env = "RLHF_DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,
}

/// Commands that the annotation server owns.
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // fields are documented by their types and flags
pub enum Commands {
    /// Run the annotation server (labeler UI + REST API + dashboard).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        #[command(flatten)]
        db: DbArgs,
        /// Seconds a labeler holds a task before it returns to the queue.
        #[arg(long, default_value_t = 600)]
        lease_seconds: u64,
        /// Mark cookies Secure (set this when serving behind HTTPS).
        #[arg(long, env = "RLHF_SECURE_COOKIES")]
        secure_cookies: bool,
        /// Serve /metrics without a token (by default it needs a researcher's bearer token).
        #[arg(long, env = "RLHF_METRICS_PUBLIC")]
        metrics_public: bool,
    },
    /// Database maintenance.
    Db {
        #[command(subcommand)]
        cmd: DbCommand,
    },
    /// Manage user accounts.
    User {
        #[command(subcommand)]
        cmd: UserCommand,
    },
    /// Manage API tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCommand,
    },
}

/// `rlhf db ...`
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // fields are documented by their types and flags
pub enum DbCommand {
    /// Apply all pending migrations.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
}

/// `rlhf user ...`
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // fields are documented by their types and flags
pub enum UserCommand {
    /// Create a user. Without --password-stdin a random password is generated and printed.
    Add {
        /// labeler, researcher or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// 1-64 characters of letters, digits, '_', '.', '-'.
        #[arg(long)]
        username: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List users.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Disable a user (they can no longer log in or use tokens).
    Disable {
        /// The user to disable.
        username: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// `rlhf token ...`
#[derive(Subcommand, Debug)]
#[allow(missing_docs)] // fields are documented by their types and flags
pub enum TokenCommand {
    /// Create an API token for a user and print it.
    Create {
        /// Whose token.
        #[arg(long)]
        username: String,
        /// A label for the token.
        #[arg(long)]
        name: Option<String>,
        /// The token stops working after this many days (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List API tokens (id, user, name, created, expires, last used); never the secrets.
    List {
        /// Only this user's tokens.
        #[arg(long)]
        username: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke an API token by id (every server on the database stops accepting it at once).
    Revoke {
        /// The token's id (from `rlhf token list`).
        id: i64,
        #[command(flatten)]
        db: DbArgs,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("unknown role {s:?}; use labeler, researcher or admin"))
}

/// Runs one of the server's commands (builds its own tokio runtime).
pub fn run(cmd: Commands) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    rt.block_on(run_with_io(cmd, &mut input, &mut out))
}

/// Runs a command with the given standard input and output (testable).
pub async fn run_with_io(
    cmd: Commands,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match cmd {
        Commands::Serve {
            bind,
            db,
            lease_seconds,
            secure_cookies,
            metrics_public,
        } => {
            init_logging();
            if lease_seconds == 0 {
                anyhow::bail!("--lease-seconds must be at least 1");
            }
            // the port first: a server that cannot listen must not create a
            // database file or an admin account on its way to failing
            let listener = tokio::net::TcpListener::bind(&bind)
                .await
                .with_context(|| format!("binding {bind}"))?;
            let addr = listener.local_addr()?;
            let conn = connect_and_migrate(&db.database_url)
                .await
                .with_context(|| format!("opening database {}", redact(&db.database_url)))?;
            if let Some((user, password)) = accounts::ensure_admin(&conn).await? {
                match password {
                    Some(p) => writeln!(
                        out,
                        "Created admin account {user:?} with password {p:?}.\nLog in at http://{addr}/login, \
                         or create an API token with `rlhf token create --username {user}`."
                    )?,
                    None => writeln!(out, "Created admin account {user:?} (password from RLHF_ADMIN_PASSWORD).")?,
                }
            }
            let config = Config {
                lease_duration: Duration::from_secs(lease_seconds),
                secure_cookies,
                metrics_public,
                ..Config::default()
            };
            writeln!(
                out,
                "Annotation server listening on http://{addr} (UI: /login, API: /api/openapi.json)"
            )?;
            out.flush()?;
            tracing::info!(%addr, "listening");
            serve(AppState::new(conn, config), listener, shutdown_signal()).await?;
            Ok(())
        }
        Commands::Db {
            cmd: DbCommand::Migrate { db },
        } => {
            connect_and_migrate(&db.database_url)
                .await
                .with_context(|| format!("migrating {}", redact(&db.database_url)))?;
            writeln!(out, "Database is up to date.")?;
            Ok(())
        }
        Commands::User { cmd } => {
            match cmd {
                UserCommand::Add {
                    role,
                    username,
                    password_stdin,
                    db,
                } => {
                    let conn = existing(&db).await?;
                    let (password, generated) = if password_stdin {
                        let mut line = String::new();
                        input.read_line(&mut line)?;
                        (line.trim_end_matches(['\r', '\n']).to_string(), false)
                    } else {
                        (crate::auth::random_hex()[..24].to_string(), true)
                    };
                    let u = accounts::create_user(&conn, &username, &password, role, None)
                        .await
                        .map_err(anyhow_of)?;
                    writeln!(out, "Created {} {:?} (id {}).", u.role, u.username, u.id)?;
                    if generated {
                        writeln!(out, "Password: {password}")?;
                    }
                }
                UserCommand::List { db } => {
                    let conn = existing(&db).await?;
                    writeln!(
                        out,
                        "{:<6} {:<24} {:<11} {:<9} created",
                        "id", "username", "role", "status"
                    )?;
                    for u in accounts::list_users(&conn).await.map_err(anyhow_of)? {
                        let status = if u.disabled { "disabled" } else { "active" };
                        writeln!(
                            out,
                            "{:<6} {:<24} {:<11} {:<9} {}",
                            u.id, u.username, u.role, status, u.created_at
                        )?;
                    }
                }
                UserCommand::Disable { username, db } => {
                    let conn = existing(&db).await?;
                    accounts::disable_user(&conn, &username, None)
                        .await
                        .map_err(anyhow_of)?;
                    writeln!(out, "Disabled {username:?}.")?;
                }
            }
            Ok(())
        }
        Commands::Token { cmd } => {
            match cmd {
                TokenCommand::Create {
                    username,
                    name,
                    expires_in_days,
                    db,
                } => {
                    let conn = existing(&db).await?;
                    let created = accounts::create_token_expiring(
                        &conn,
                        &username,
                        name.as_deref(),
                        expires_in_days,
                        None,
                    )
                    .await
                    .map_err(anyhow_of)?;
                    writeln!(out, "{}", created.token)?;
                }
                TokenCommand::List { username, db } => {
                    let conn = existing(&db).await?;
                    let tokens = accounts::list_tokens(&conn, username.as_deref())
                        .await
                        .map_err(anyhow_of)?;
                    writeln!(
                        out,
                        "{:<6} {:<24} {:<20} {:<25} {:<25} last used",
                        "id", "username", "name", "created", "expires"
                    )?;
                    for t in tokens {
                        writeln!(
                            out,
                            "{:<6} {:<24} {:<20} {:<25} {:<25} {}",
                            t.id,
                            t.username,
                            t.name,
                            t.created_at,
                            t.expires_at.as_deref().unwrap_or("never"),
                            t.last_used_at.as_deref().unwrap_or("never")
                        )?;
                    }
                }
                TokenCommand::Revoke { id, db } => {
                    let conn = existing(&db).await?;
                    let t = accounts::revoke_token(&conn, id, None)
                        .await
                        .map_err(anyhow_of)?;
                    writeln!(
                        out,
                        "Revoked token {id} ({:?} of {:?}).",
                        t.name, t.username
                    )?;
                }
            }
            Ok(())
        }
    }
}

/// Opens the database of an account command: it must exist and have the schema.
async fn existing(db: &DbArgs) -> anyhow::Result<sea_orm::DatabaseConnection> {
    connect_existing(&db.database_url)
        .await
        .with_context(|| format!("opening database {}", redact(&db.database_url)))
}

fn anyhow_of(e: crate::error::AppError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.body().message)
}

/// Logs to stderr; `RLHF_LOG` (or `RUST_LOG`) sets the filter, default `info`.
fn init_logging() {
    let filter = std::env::var("RLHF_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,sqlx=warn,sea_orm=warn".to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The same shape as the root `rlhf` binary: these commands flattened in.
    #[derive(Parser, Debug)]
    struct Root {
        #[command(subcommand)]
        command: Commands,
    }

    #[test]
    fn commands_parse_like_the_root_binary() {
        Root::command().debug_assert();
        let p = |args: &[&str]| Root::try_parse_from(args).map(|r| r.command);
        match p(&[
            "rlhf",
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            "sqlite://x.db",
        ])
        .unwrap()
        {
            Commands::Serve {
                bind,
                db,
                lease_seconds,
                ..
            } => {
                assert_eq!(bind, "127.0.0.1:0");
                assert_eq!(db.database_url, "sqlite://x.db");
                assert_eq!(lease_seconds, 600);
            }
            c => panic!("{c:?}"),
        }
        assert!(matches!(
            p(&["rlhf", "db", "migrate"]).unwrap(),
            Commands::Db { .. }
        ));
        let add = p(&[
            "rlhf",
            "user",
            "add",
            "--role",
            "researcher",
            "--username",
            "ann",
            "--password-stdin",
        ])
        .unwrap();
        assert!(matches!(
            add,
            Commands::User {
                cmd: UserCommand::Add {
                    role: Role::Researcher,
                    password_stdin: true,
                    ..
                }
            }
        ));
        assert!(p(&["rlhf", "user", "add", "--role", "boss", "--username", "x"]).is_err());
        assert!(matches!(
            p(&["rlhf", "user", "disable", "ann"]).unwrap(),
            Commands::User { .. }
        ));
        assert!(matches!(
            p(&["rlhf", "token", "create", "--username", "ann"]).unwrap(),
            Commands::Token { .. }
        ));
    }
}
