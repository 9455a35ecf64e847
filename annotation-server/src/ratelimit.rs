//! Failed-login rate limiting, kept in memory (a restart forgets it).
//!
//! Failures are counted in a sliding window per client address, per account,
//! and per (account, address) pair:
//!
//! - an address with `per_source` failures is refused (whatever the account);
//! - an account with `per_account` failures (from all addresses together) is
//!   refused only to the addresses that already failed for it, so a flood from
//!   elsewhere cannot lock its owner out: an address with no failure on the
//!   account still gets its attempt.
//!
//! An attempt is reserved (counted as a failure) *before* the password is
//! checked and given back when it succeeds, so concurrent requests cannot all
//! pass the check before any of them is recorded.
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counts login failures per address, account and (account, address).
pub struct RateLimiter {
    per_source: u32,
    per_account: u32,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// An attempt counted in advance; give it to [`RateLimiter::succeeded`] or
/// [`RateLimiter::cancel`] unless it turns out to be a failure.
#[must_use = "a reservation stays counted as a failure unless given back"]
pub struct Reservation {
    keys: [String; 3],
    at: Instant,
}

/// Most distinct keys kept before expired ones are swept (bounds memory under
/// a flood of addresses or names).
const MAX_KEYS: usize = 100_000;

impl RateLimiter {
    /// Allows `per_source` failures per address and `per_account` per account
    /// (see the module documentation) within `window`.
    pub fn new(per_source: u32, per_account: u32, window: Duration) -> RateLimiter {
        RateLimiter {
            per_source,
            per_account,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Reserves a login attempt for `account` from `source`, or `None` when the
    /// limits refuse it. `account` should be a valid user name (or a fixed
    /// placeholder for invalid ones, so that keys stay small).
    pub fn reserve(&self, account: &str, source: IpAddr) -> Option<Reservation> {
        let keys = [
            format!("ip:{source}"),
            format!("user:{account}"),
            format!("pair:{source}:{account}"),
        ];
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > MAX_KEYS {
            let window = self.window;
            map.retain(|_, q| {
                Self::expire(q, window);
                !q.is_empty()
            });
        }
        let mut count = |k: &str| {
            map.get_mut(k).map_or(0, |q| {
                Self::expire(q, self.window);
                q.len() as u32
            })
        };
        let (by_source, by_account, by_pair) = (count(&keys[0]), count(&keys[1]), count(&keys[2]));
        if by_source >= self.per_source || (by_account >= self.per_account && by_pair > 0) {
            return None;
        }
        let at = Instant::now();
        for k in &keys {
            map.entry(k.clone()).or_default().push_back(at);
        }
        Some(Reservation { keys, at })
    }

    /// The attempt succeeded: its reservation is given back, and the pair's
    /// earlier failures are forgotten (the address knows the password).
    pub fn succeeded(&self, r: Reservation) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&r.keys[2]);
        Self::give_back(&mut map, &r.keys[..2], r.at);
    }

    /// The attempt was not made (e.g. the server was too busy): give it back.
    pub fn cancel(&self, r: Reservation) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Self::give_back(&mut map, &r.keys, r.at);
    }

    fn give_back(map: &mut HashMap<String, VecDeque<Instant>>, keys: &[String], at: Instant) {
        for k in keys {
            if let Some(q) = map.get_mut(k) {
                if let Some(i) = q.iter().rposition(|t| *t == at) {
                    q.remove(i);
                }
                if q.is_empty() {
                    map.remove(k);
                }
            }
        }
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

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn blocks_an_address_after_its_failures() {
        let r = RateLimiter::new(3, 100, Duration::from_secs(3600));
        for _ in 0..3 {
            let _failed = r.reserve("k", ip(1)).expect("allowed");
        }
        assert!(r.reserve("k", ip(1)).is_none());
        assert!(r.reserve("other", ip(1)).is_none(), "per address");
        // the account is not locked for other addresses
        r.succeeded(r.reserve("k", ip(2)).expect("other address"));
    }

    #[test]
    fn the_account_ceiling_spares_clean_addresses() {
        let r = RateLimiter::new(3, 4, Duration::from_secs(3600));
        for a in 1..=2 {
            for _ in 0..2 {
                let _failed = r.reserve("k", ip(a)).expect("allowed");
            }
        }
        // 4 failures on the account: addresses that failed are refused ...
        assert!(r.reserve("k", ip(1)).is_none());
        // ... a clean one gets an attempt, and after a failure it is refused too
        let first = r.reserve("k", ip(3)).expect("clean address");
        assert!(r.reserve("k", ip(3)).is_none());
        r.cancel(first);
        r.succeeded(r.reserve("k", ip(3)).expect("given back"));
    }

    #[test]
    fn reservations_count_before_the_outcome() {
        let r = RateLimiter::new(2, 100, Duration::from_secs(3600));
        let a = r.reserve("k", ip(1)).unwrap();
        let _b = r.reserve("k", ip(1)).unwrap();
        assert!(r.reserve("k", ip(1)).is_none(), "two in flight use it up");
        r.succeeded(a);
        assert!(r.reserve("k", ip(1)).is_some());
    }
}
