//! Shared state of the running server: database, configuration, metrics,
//! rate limiter and a short-lived token cache.
use crate::auth::CurrentUser;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::writer::Writer;
use sea_orm::DatabaseConnection;
use std::collections::HashMap;
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
    /// Failed logins allowed per client address and per user name within `login_window`.
    pub login_max_failures: u32,
    /// The login rate-limit window.
    pub login_window: Duration,
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
            login_window: Duration::from_secs(300),
        }
    }
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database pool.
    pub db: DatabaseConnection,
    /// Tunables.
    pub config: Arc<Config>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Failed-login limiter.
    pub login_limiter: Arc<RateLimiter>,
    /// Token → user cache, so that each API request does not hit the database
    /// for authentication.
    pub token_cache: Arc<TokenCache>,
    /// Comparison id → number of responses, which never changes once the
    /// comparison exists; saves a query per submitted label.
    pub response_counts: Arc<ResponseCounts>,
    /// The labeling hot path's writes (batched on SQLite).
    pub writer: Arc<Writer>,
}

impl AppState {
    /// State over an open (migrated) database.
    pub fn new(db: DatabaseConnection, config: Config) -> AppState {
        let limiter = RateLimiter::new(config.login_max_failures, config.login_window);
        AppState {
            writer: Arc::new(Writer::new(db.clone())),
            db,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
            login_limiter: Arc::new(limiter),
            token_cache: Arc::new(TokenCache::new(Duration::from_secs(5))),
            response_counts: Arc::new(ResponseCounts::default()),
        }
    }
}

/// A small TTL cache of authenticated tokens. Entries live a few seconds; this
/// process clears it whenever an account or token changes, so only changes made
/// by another process (the CLI) take up to the TTL to apply.
pub struct TokenCache {
    ttl: Duration,
    map: Mutex<HashMap<String, (CurrentUser, Instant)>>,
}

impl TokenCache {
    /// An empty cache.
    pub fn new(ttl: Duration) -> TokenCache {
        TokenCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The cached user for a token hash, if fresh.
    pub fn get(&self, token_hash: &str) -> Option<CurrentUser> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token_hash)
            .filter(|(_, t)| t.elapsed() < self.ttl)
            .map(|(u, _)| u.clone())
    }

    /// Caches a user for a token hash.
    pub fn put(&self, token_hash: String, user: CurrentUser) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(token_hash, (user, Instant::now()));
    }

    /// Forgets everything (after an account change).
    pub fn clear(&self) {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clear();
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
