//! Refresh tokens and the sign-up and login rate limits.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::services::rate_limit::RateLimiter;

/// Too many attempts: the client may retry after `retry_after` seconds
/// (429 with `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many attempts; retry in {retry_after} s")]
pub struct TooMany {
    /// Seconds to wait, at least 1.
    pub retry_after: u64,
}

impl TooMany {
    fn after(wait: Duration) -> Self {
        TooMany {
            retry_after: wait.as_secs().max(1),
        }
    }
}

/// The system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("no randomness: {0}")]
pub struct NoRandomness(getrandom::Error);

/// A new opaque refresh token and the SHA-256 hash that is stored.
pub fn new_refresh_token() -> Result<(String, Vec<u8>), NoRandomness> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(NoRandomness)?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = refresh_hash(&token);
    Ok((token, hash))
}

/// The stored form of a refresh token.
pub fn refresh_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.trim().as_bytes()).to_vec()
}

/// Sign-ups per client address within any hour.
#[derive(Debug)]
pub struct SignupLimiter(Mutex<RateLimiter<IpAddr>>);

impl SignupLimiter {
    /// `per_hour` sign-ups allowed per address in any hour.
    pub fn new(per_hour: u32) -> Self {
        SignupLimiter(Mutex::new(RateLimiter::new(
            per_hour,
            Duration::from_secs(3600),
        )))
    }

    /// Counts a sign-up from `addr`; 429 when the address has none left.
    pub fn admit(&self, addr: IpAddr) -> Result<(), TooMany> {
        let now = Instant::now();
        let Ok(mut l) = self.0.lock() else {
            return Ok(());
        };
        l.check(&addr, now).map_err(TooMany::after)?;
        l.record(addr, now);
        Ok(())
    }
}

/// Login attempts per account (username) and per client address.
#[derive(Debug)]
pub struct LoginLimiter {
    /// Both keys under one lock: an attempt is checked and counted against
    /// both at once.
    keys: Mutex<(RateLimiter<String>, RateLimiter<IpAddr>)>,
}

impl LoginLimiter {
    /// `per_account` and `per_address` failures allowed in any minute.
    pub fn new(per_account: u32, per_address: u32) -> Self {
        let minute = Duration::from_secs(60);
        LoginLimiter {
            keys: Mutex::new((
                RateLimiter::new(per_account, minute),
                RateLimiter::new(per_address, minute),
            )),
        }
    }

    /// Counts an attempt against the username and the address before the
    /// password is checked, so that N guesses sent at once get at most the
    /// limit's answers; 429 (counting nothing) when either has none left.
    pub fn attempt(&self, username: &str, addr: IpAddr) -> Result<(), TooMany> {
        let now = Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let (accounts, addresses) = &mut *keys;
        let user = username.to_owned();
        let wait = match (accounts.check(&user, now), addresses.check(&addr, now)) {
            (Ok(()), Ok(())) => None,
            (Err(w), Ok(())) | (Ok(()), Err(w)) => Some(w),
            (Err(w1), Err(w2)) => Some(w1.max(w2)),
        };
        if let Some(w) = wait {
            return Err(TooMany::after(w));
        }
        accounts.record(user, now);
        addresses.record(addr, now);
        Ok(())
    }

    /// The attempt was right: the account's failures are forgotten and the
    /// address gets its attempt back (its earlier failures stay).
    pub fn succeeded(&self, username: &str, addr: IpAddr) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.0.clear(&username.to_owned());
        keys.1.unrecord(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_before_the_check_and_success_gives_one_back() {
        let l = LoginLimiter::new(3, 5);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.attempt("alice", a).is_ok());
        }
        let e = l.attempt("alice", a).expect_err("fourth");
        assert!(e.retry_after >= 1);
        // Another account from the same address: two attempts left there.
        assert!(l.attempt("bob", a).is_ok());
        l.succeeded("bob", a);
        assert!(l.attempt("bob", a).is_ok());
        assert!(l.attempt("carol", a).is_ok());
        assert!(l.attempt("dave", a).is_err(), "the address has used its 5");
        // A right password clears the account, not the address's failures.
        l.succeeded("alice", "192.0.2.2".parse().expect("ip"));
        assert!(l.attempt("alice", "192.0.2.2".parse().expect("ip")).is_ok());
    }
}
