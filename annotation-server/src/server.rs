//! Running the server: bind, serve with graceful shutdown, background reaper.
use crate::assign;
use crate::entities::sessions;
use crate::routes::router;
use crate::state::AppState;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Serves until `shutdown` resolves, then stops accepting connections and lets
/// in-flight requests finish (every write is a transaction, so an interrupted
/// process leaves nothing half-written either).
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let reaper = tokio::spawn(reap_loop(state.clone()));
    let invalidator = tokio::spawn(invalidate_on_notify(state.clone()));
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    reaper.abort();
    invalidator.abort();
    result
}

/// PostgreSQL: keeps the token cache coherent with every other process on the
/// database. It listens on `accounts::AUTH_CHANNEL` and clears the cache on
/// each notification; the cache is used only while the subscription is up
/// (before it, and from the moment it is lost, every request is checked
/// against the database). SQLite: returns at once and the cache stays off.
async fn invalidate_on_notify(state: AppState) {
    use sea_orm::sqlx::postgres::PgListener;
    let Some(pool) = state
        .db
        .get_database_backend()
        .eq(&sea_orm::DbBackend::Postgres)
        .then(|| state.db.get_postgres_connection_pool().clone())
    else {
        return;
    };
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(crate::accounts::AUTH_CHANNEL).await {
                Ok(()) => {
                    state.token_cache.set_live(true);
                    // Ok(None): the connection was lost (notifications may
                    // have been missed)
                    while let Ok(Some(_)) = listener.try_recv().await {
                        state.token_cache.clear();
                    }
                    state.token_cache.set_live(false);
                }
                Err(e) => tracing::warn!(error = %e, "subscribing to credential changes failed"),
            },
            Err(e) => tracing::warn!(error = %e, "connecting for credential changes failed"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Returns expired leases to the queue periodically (assignment also reaps on demand).
async fn reap_loop(state: AppState) {
    let every =
        (state.config.lease_duration / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        if let Err(e) = assign::reap_expired(&state).await {
            tracing::warn!(error = %e, "reaping expired leases failed");
        }
        // expired sessions are useless; drop them so the table stays small
        let expired = sessions::Entity::delete_many()
            .filter(sessions::Column::ExpiresAt.lt(crate::time::now_ms()))
            .exec(&state.db)
            .await;
        if let Err(e) = expired {
            tracing::warn!(error = %e, "deleting expired sessions failed");
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}

/// A server running in the background (for tests and embedding).
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
}

impl RunningServer {
    /// Starts serving `state` on `bind` (use `127.0.0.1:0` for a free port).
    pub async fn start(state: AppState, bind: &str) -> std::io::Result<RunningServer> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(state, listener, async {
            let _ = rx.await;
        }));
        Ok(RunningServer {
            addr,
            stop: Some(tx),
            handle,
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:12345`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down gracefully and waits for in-flight requests.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.handle).await.map_err(std::io::Error::other)?
    }
}
