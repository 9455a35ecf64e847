//! Failed-login rate limiting: a sliding window of failures per key (client
//! address, user name). Kept in memory; a restart forgets it.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts failures per key within a window.
pub struct RateLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// Allows `max` failures per key per `window`.
    pub fn new(max: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` has used up its failures.
    pub fn is_blocked(&self, key: &str) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(key) {
            Some(q) => {
                Self::expire(q, self.window);
                q.len() as u32 >= self.max
            }
            None => false,
        }
    }

    /// Records a failure for `key`.
    pub fn record_failure(&self, key: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 100_000 {
            // bound memory under a flood of distinct keys
            let window = self.window;
            map.retain(|_, q| {
                Self::expire(q, window);
                !q.is_empty()
            });
        }
        let q = map.entry(key.to_string()).or_default();
        Self::expire(q, self.window);
        q.push_back(Instant::now());
    }

    /// Forgets `key`'s failures (after a successful login).
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn expire(q: &mut VecDeque<Instant>, window: Duration) {
        while q.front().is_some_and(|t| t.elapsed() > window) {
            q.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures() {
        let r = RateLimiter::new(3, Duration::from_secs(3600));
        for _ in 0..3 {
            assert!(!r.is_blocked("k"));
            r.record_failure("k");
        }
        assert!(r.is_blocked("k"));
        assert!(!r.is_blocked("other"));
        r.reset("k");
        assert!(!r.is_blocked("k"));
    }
}
