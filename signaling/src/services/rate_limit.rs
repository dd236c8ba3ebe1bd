//! A sliding-window limiter, sans-IO: time is an input.
//!
//! Logins use two: attempts per account and per client address, each
//! counted before the password is checked (so that concurrent guesses
//! cannot outrun the count) and taken back when it was right. When either
//! key has used up its allowance within the window, every further attempt
//! on it is refused (429) until the oldest one ages out, even with the
//! right password. Sign-ups use one per client address. A cluster keeps
//! the same windows in Redis instead (`services/shared_window.rs`).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Counts events per key within a sliding window.
#[derive(Debug)]
pub struct RateLimiter<K> {
    limit: usize,
    window: Duration,
    events: HashMap<K, VecDeque<Instant>>,
}

impl<K: Eq + Hash + Clone> RateLimiter<K> {
    /// At most `limit` events per key within any `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter {
            limit: limit.max(1) as usize,
            window,
            events: HashMap::new(),
        }
    }

    /// `Err(wait)` when `key` has no allowance left at `now`; `wait` is
    /// how long until it has.
    pub fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        let Some(q) = self.events.get_mut(key) else {
            return Ok(());
        };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() < self.limit {
            return Ok(());
        }
        let oldest = q.front().copied().unwrap_or(now);
        Err((oldest + self.window).saturating_duration_since(now))
    }

    /// Records an event for `key` at `now`.
    pub fn record(&mut self, key: K, now: Instant) {
        let window = self.window;
        let q = self.events.entry(key).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
            q.pop_front();
        }
        q.push_back(now);
        if self.events.len() > 10_000 {
            self.prune(now);
        }
    }

    /// Takes back the newest event of `key` (an attempt counted before it
    /// was known to succeed).
    pub fn unrecord(&mut self, key: &K) {
        if let Some(q) = self.events.get_mut(key) {
            q.pop_back();
            if q.is_empty() {
                self.events.remove(key);
            }
        }
    }

    /// Forgets the events of `key` (after a successful login).
    pub fn clear(&mut self, key: &K) {
        self.events.remove(key);
    }

    /// Drops every key with no event inside the window.
    pub fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.events
            .retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
    }
}

/// A token bucket, sans-IO: `rate` per second refill, holding at most one
/// second's worth (the burst).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Full at `now`; `rate` 0 means no limit.
    pub fn new(rate: u32, now: Instant) -> Self {
        TokenBucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            last: now,
        }
    }

    /// Takes `n` tokens at `now`; `false` (taking nothing) when there are
    /// not that many. Asking for more than a whole second's worth is
    /// allowed once the bucket is full.
    pub fn take(&mut self, n: f64, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        let need = n.min(self.rate);
        if self.tokens + 1e-9 < need {
            return false;
        }
        self.tokens -= need;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, t0);
        assert!((0..10).all(|_| b.take(1.0, t0)));
        assert!(!b.take(1.0, t0));
        // A tenth of a second refills one.
        assert!(b.take(1.0, t0 + Duration::from_millis(100)));
        assert!(!b.take(1.0, t0 + Duration::from_millis(100)));
        // Refills cap at one second's worth.
        let later = t0 + Duration::from_secs(60);
        assert!((0..10).all(|_| b.take(1.0, later)));
        assert!(!b.take(1.0, later));
        let mut free = TokenBucket::new(0, t0);
        assert!((0..1000).all(|_| free.take(1e6, t0)));
    }

    #[test]
    fn the_window_slides() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut rl = RateLimiter::new(3, s(60));
        for i in 0..3 {
            assert!(rl.check(&"k", t0 + s(i)).is_ok());
            rl.record("k", t0 + s(i));
        }
        assert_eq!(rl.check(&"k", t0 + s(10)), Err(s(50)));
        assert!(rl.check(&"other", t0 + s(10)).is_ok());
        // The first event ages out at 60 s: one more is allowed.
        assert!(rl.check(&"k", t0 + s(60)).is_ok());
        rl.record("k", t0 + s(60));
        assert_eq!(rl.check(&"k", t0 + s(60)), Err(s(1)));
        rl.unrecord(&"k");
        assert!(rl.check(&"k", t0 + s(60)).is_ok());
        rl.record("k", t0 + s(60));
        rl.clear(&"k");
        assert!(rl.check(&"k", t0 + s(60)).is_ok());
        rl.record("x", t0);
        rl.prune(t0 + s(61));
        assert!(rl.events.is_empty());
    }
}
