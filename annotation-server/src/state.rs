//! Shared state of the running server: database, configuration, metrics,
//! rate limiter and a short-lived token cache.
use crate::identity::CurrentUser;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::writer::Writer;
use sea_orm::DatabaseConnection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Tunables of the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a labeler holds a task before it returns to the queue.
    pub lease_duration: Duration,
    /// Browser session lifetime.
    pub session_ttl: Duration,
    /// Mark cookies `Secure` (serve behind HTTPS).
    pub secure_cookies: bool,
    /// Body limit of ordinary requests.
    pub body_limit: usize,
    /// Body limit of bulk imports (prompts JSONL, comparisons).
    pub import_body_limit: usize,
    /// Failed logins allowed per client address within `login_window`.
    pub login_max_failures: u32,
    /// Failed logins per account (from all addresses) within `login_window`
    /// after which only addresses that have not failed for it may still try.
    pub login_max_failures_per_account: u32,
    /// The login rate-limit window.
    pub login_window: Duration,
    /// Password hashes (argon2, 19 MiB each) computed at once; a login beyond
    /// that is answered 503 at once instead of queueing memory.
    pub max_concurrent_hashes: usize,
    /// Serve `/metrics` without a token (e.g. behind a firewall for Prometheus).
    pub metrics_public: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease_duration: Duration::from_secs(600),
            session_ttl: Duration::from_secs(12 * 3600),
            secure_cookies: false,
            body_limit: 1 << 20,
            import_body_limit: 64 << 20,
            login_max_failures: 10,
            login_max_failures_per_account: 100,
            login_window: Duration::from_secs(300),
            max_concurrent_hashes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            metrics_public: false,
        }
    }
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database pool.
    pub db: DatabaseConnection,
    /// The configuration the server was started with.
    pub config: Arc<Config>,
    /// The counters behind `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Failed-login limiter.
    pub login_limiter: Arc<RateLimiter>,
    /// Token → user cache, so that each API request does not hit the database
    /// for authentication (PostgreSQL only; see [`TokenCache`]).
    pub token_cache: Arc<TokenCache>,
    /// Bounds the password hashes computed at once (see `Config::max_concurrent_hashes`).
    pub hash_slots: Arc<tokio::sync::Semaphore>,
    /// Comparison id → number of responses, which never changes once the
    /// comparison exists; saves a query per submitted label.
    pub response_counts: Arc<ResponseCounts>,
    /// The labeling hot path's writes (batched on SQLite).
    pub writer: Arc<Writer>,
}

impl AppState {
    /// State over an open (migrated) database.
    pub fn new(db: DatabaseConnection, config: Config) -> AppState {
        let limiter = RateLimiter::new(
            config.login_max_failures,
            config.login_max_failures_per_account,
            config.login_window,
        );
        AppState {
            hash_slots: Arc::new(tokio::sync::Semaphore::new(
                config.max_concurrent_hashes.max(1),
            )),
            writer: Arc::new(Writer::new(db.clone())),
            db,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
            login_limiter: Arc::new(limiter),
            token_cache: Arc::new(TokenCache::new(Duration::from_secs(60))),
            response_counts: Arc::new(ResponseCounts::default()),
        }
    }
}

/// A cache of authenticated tokens that every server sharing the database
/// keeps coherent.
///
/// It is used only while it is *live*: on PostgreSQL a listener (started by
/// `server::serve`) has subscribed to the notifications that every disable
/// or revoke sends (`accounts::notify_auth_change`), from this process, the
/// CLI or another server, and clears it on each one (and turns it off whenever
/// the subscription is lost). On SQLite it is never live: lookups are local
/// and cheap, and another process (the CLI) has no way to notify.
pub struct TokenCache {
    ttl: Duration,
    live: AtomicBool,
    /// Bumped by every clear, so that a lookup that started before a clear
    /// cannot put its (possibly stale) result back afterwards.
    generation: AtomicU64,
    map: Mutex<HashMap<String, (CachedToken, Instant)>>,
}

/// A cached token: its owner, id, expiry and when its use was last written.
#[derive(Clone, Debug)]
pub struct CachedToken {
    /// The token's owner.
    pub user: CurrentUser,
    /// The token's row id.
    pub token_id: i64,
    /// Expiry (Unix ms), if any.
    pub expires_at: Option<i64>,
    /// `last_used_at` as last written (Unix ms).
    pub last_used_at: Option<i64>,
}

impl TokenCache {
    /// An empty cache, not live.
    pub fn new(ttl: Duration) -> TokenCache {
        TokenCache {
            ttl,
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Turns the cache on (invalidations are being received) or off (they may be missed).
    pub fn set_live(&self, live: bool) {
        self.clear();
        self.live.store(live, Ordering::SeqCst);
    }

    /// The current generation, to hand back to [`TokenCache::put`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// The cached entry for a token hash, if live and fresh.
    pub fn get(&self, token_hash: &str) -> Option<CachedToken> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token_hash)
            .filter(|(_, t)| t.elapsed() < self.ttl)
            .map(|(u, _)| u.clone())
    }

    /// Caches an entry looked up in `generation` (nothing if cleared since).
    pub fn put(&self, token_hash: String, entry: CachedToken, generation: u64) {
        if !self.live.load(Ordering::SeqCst) {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // checked under the lock that `clear` takes, so no clear slips between
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(token_hash, (entry, Instant::now()));
    }

    /// Forgets everything (after an account or token change).
    pub fn clear(&self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        map.clear();
    }
}

/// A bounded memo of how many responses each comparison has. Comparisons are
/// never deleted and their responses never change, so entries cannot go stale.
#[derive(Default)]
pub struct ResponseCounts {
    map: Mutex<HashMap<i64, usize>>,
}

impl ResponseCounts {
    /// Most entries kept; past this the memo starts over (a cheap bound).
    const MAX_ENTRIES: usize = 200_000;

    /// The remembered count for comparison `id`.
    pub fn get(&self, id: i64) -> Option<usize> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id).copied()
    }

    /// Remembers that comparison `id` has `n` responses.
    pub fn put(&self, id: i64, n: usize) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX_ENTRIES {
            map.clear();
        }
        map.insert(id, n);
    }
}
