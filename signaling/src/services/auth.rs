//! Refresh tokens and the sign-up and login rate limits (in this process,
//! or shared by the nodes of a cluster through Redis).

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::services::cluster::Cluster;
use crate::services::rate_limit::RateLimiter;
use crate::services::shared_window::{Counted, SharedWindows, Unavailable};

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

/// A limit could not be counted: the login, password change or sign-up
/// is refused with 503 and `Retry-After` rather than let through uncounted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The key has used up its allowance (429).
    #[error(transparent)]
    TooMany(#[from] TooMany),
    /// The shared counts (the cluster's Redis) are out of reach (503).
    #[error(
        "login and sign-up limits are unavailable (the cluster's Redis is not answering); retry in {retry_after} s"
    )]
    Unavailable {
        /// Seconds to wait.
        retry_after: u64,
    },
}

/// How long a client is told to wait while the shared counts are out of
/// reach: about how long the connection takes to come back.
pub const UNAVAILABLE_RETRY_AFTER: u64 = 5;

impl From<Unavailable> for LimitError {
    fn from(e: Unavailable) -> Self {
        tracing::warn!(error = %e, "cannot count a login or sign-up limit");
        LimitError::Unavailable {
            retry_after: UNAVAILABLE_RETRY_AFTER,
        }
    }
}

/// A username as a key part: as typed (lowercased) when short, else its
/// SHA-256 (a login may name anything up to the body limit; the hashed
/// form is longer than any name it could be mistaken for).
fn username_key(username: &str) -> String {
    if username.len() <= 64 {
        return username.to_owned();
    }
    let digest = Sha256::digest(username.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Sign-ups per client address within any hour.
///
/// Where the counts are kept is the cluster's seam: `Local` (this process)
/// or `Redis` (shared by the nodes, [`SharedWindows`]). Either way an
/// address's sign-ups in any hour are counted once, whichever node took
/// them, and a count that cannot be kept refuses ([`LimitError`]).
#[derive(Debug)]
pub struct SignupLimiter {
    per_hour: u32,
    counts: SignupCounts,
}

#[derive(Debug)]
enum SignupCounts {
    Local(Mutex<RateLimiter<IpAddr>>),
    Redis(SharedWindows),
}

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);

impl SignupLimiter {
    /// `per_hour` sign-ups allowed per address in any hour, counted in
    /// this process, or in the cluster's Redis when there is one.
    pub fn new(per_hour: u32, cluster: Option<&Cluster>) -> Self {
        let counts = match cluster {
            None => SignupCounts::Local(Mutex::new(RateLimiter::new(per_hour, HOUR))),
            Some(c) => SignupCounts::Redis(SharedWindows::new(c)),
        };
        SignupLimiter { per_hour, counts }
    }

    /// Counts a sign-up from `addr`; 429 when the address has none left.
    pub async fn admit(&self, addr: IpAddr) -> Result<(), LimitError> {
        match &self.counts {
            SignupCounts::Local(l) => {
                let now = Instant::now();
                let mut l = l.lock().unwrap_or_else(PoisonError::into_inner);
                l.check(&addr, now).map_err(TooMany::after)?;
                l.record(addr, now);
                Ok(())
            }
            SignupCounts::Redis(w) => {
                let counted = Counted {
                    key: Cluster::key(&["limit", "signup", &addr.to_string()]),
                    limit: self.per_hour,
                    window: HOUR,
                };
                w.admit(&[counted]).await?.map_err(TooMany::after)?;
                Ok(())
            }
        }
    }
}

/// Login attempts per account (username) and per client address.
///
/// Where the counts are kept is the cluster's seam, as for
/// [`SignupLimiter`]: with `Redis`, failures on any node count toward the
/// lockout on every node, and an attempt is checked and counted against
/// both keys in one atomic step.
#[derive(Debug)]
pub struct LoginLimiter {
    per_account: u32,
    per_address: u32,
    counts: LoginCounts,
}

#[derive(Debug)]
enum LoginCounts {
    /// Both keys under one lock: an attempt is checked and counted against
    /// both at once.
    Local(Mutex<(RateLimiter<String>, RateLimiter<IpAddr>)>),
    Redis(SharedWindows),
}

impl LoginLimiter {
    /// `per_account` and `per_address` failures allowed in any minute,
    /// counted in this process, or in the cluster's Redis when there is one.
    pub fn new(per_account: u32, per_address: u32, cluster: Option<&Cluster>) -> Self {
        let counts = match cluster {
            None => LoginCounts::Local(Mutex::new((
                RateLimiter::new(per_account, MINUTE),
                RateLimiter::new(per_address, MINUTE),
            ))),
            Some(c) => LoginCounts::Redis(SharedWindows::new(c)),
        };
        LoginLimiter {
            per_account,
            per_address,
            counts,
        }
    }

    fn account_key(username: &str) -> String {
        Cluster::key(&["limit", "login", "account", &username_key(username)])
    }

    fn address_key(addr: IpAddr) -> String {
        Cluster::key(&["limit", "login", "address", &addr.to_string()])
    }

    /// Counts an attempt against the username and the address before the
    /// password is checked, so that N guesses sent at once get at most the
    /// limit's answers; 429 (counting nothing) when either has none left.
    pub async fn attempt(&self, username: &str, addr: IpAddr) -> Result<(), LimitError> {
        let keys = match &self.counts {
            LoginCounts::Local(keys) => keys,
            LoginCounts::Redis(w) => {
                let counted = [
                    Counted {
                        key: Self::account_key(username),
                        limit: self.per_account,
                        window: MINUTE,
                    },
                    Counted {
                        key: Self::address_key(addr),
                        limit: self.per_address,
                        window: MINUTE,
                    },
                ];
                w.admit(&counted).await?.map_err(TooMany::after)?;
                return Ok(());
            }
        };
        let now = Instant::now();
        let mut keys = keys.lock().unwrap_or_else(PoisonError::into_inner);
        let (accounts, addresses) = &mut *keys;
        let user = username.to_owned();
        let wait = match (accounts.check(&user, now), addresses.check(&addr, now)) {
            (Ok(()), Ok(())) => None,
            (Err(w), Ok(())) | (Ok(()), Err(w)) => Some(w),
            (Err(w1), Err(w2)) => Some(w1.max(w2)),
        };
        if let Some(w) = wait {
            return Err(TooMany::after(w).into());
        }
        accounts.record(user, now);
        addresses.record(addr, now);
        Ok(())
    }

    /// The attempt was right: the account's failures are forgotten and the
    /// address gets its attempt back (its earlier failures stay). When the
    /// shared counts are out of reach this is logged and skipped: the
    /// login itself succeeded.
    pub async fn succeeded(&self, username: &str, addr: IpAddr) {
        match &self.counts {
            LoginCounts::Local(keys) => {
                let mut keys = keys.lock().unwrap_or_else(PoisonError::into_inner);
                keys.0.clear(&username.to_owned());
                keys.1.unrecord(&addr);
            }
            LoginCounts::Redis(w) => {
                let cleared = w.clear(&Self::account_key(username)).await;
                let returned = match cleared {
                    Ok(()) => w.unrecord_newest(&Self::address_key(addr)).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = returned {
                    tracing::warn!(error = %e, username, %addr, "cannot clear a login's count");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// The rules every variant keeps, on `node(0)` and `node(1)` (one
    /// limiter for both when local; two nodes sharing Redis otherwise).
    async fn login_rules(l0: &LoginLimiter, l1: &LoginLimiter) {
        let a = ip("192.0.2.1");
        for l in [l0, l1, l0] {
            assert!(l.attempt("alice", a).await.is_ok());
        }
        let e = l1.attempt("alice", a).await.expect_err("fourth");
        assert!(
            matches!(e, LimitError::TooMany(t) if (1..=60).contains(&t.retry_after)),
            "{e:?}"
        );
        // Another account from the same address: two attempts left there.
        assert!(l0.attempt("bob", a).await.is_ok());
        l1.succeeded("bob", a).await;
        assert!(l1.attempt("bob", a).await.is_ok());
        assert!(l0.attempt("carol", a).await.is_ok());
        assert!(
            l1.attempt("dave", a).await.is_err(),
            "the address has used its 5"
        );
        // A right password clears the account, not the address's failures.
        l0.succeeded("alice", ip("192.0.2.2")).await;
        assert!(l1.attempt("alice", ip("192.0.2.2")).await.is_ok());
        assert!(l0.attempt("erin", a).await.is_err());
    }

    #[tokio::test]
    async fn attempts_count_before_the_check_and_success_gives_one_back() {
        let l = LoginLimiter::new(3, 5, None);
        login_rules(&l, &l).await;
    }

    async fn node(redis: &vela_testkit::Redis, id: &str) -> Cluster {
        Cluster::for_test(redis, id, None).await
    }

    #[tokio::test]
    async fn two_nodes_count_logins_and_sign_ups_together() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let redis = vela_testkit::Redis::start();
            let (n0, n1) = (node(&redis, "n0").await, node(&redis, "n1").await);
            let (l0, l1) = (
                LoginLimiter::new(3, 5, Some(&n0)),
                LoginLimiter::new(3, 5, Some(&n1)),
            );
            login_rules(&l0, &l1).await;
            // A username of any length makes a bounded key.
            let long = "x".repeat(10_000);
            assert!(l0.attempt(&long, ip("192.0.2.9")).await.is_ok());
            assert!(LoginLimiter::account_key(&long).len() < 100);

            let (s0, s1) = (
                SignupLimiter::new(2, Some(&n0)),
                SignupLimiter::new(2, Some(&n1)),
            );
            let a = ip("2001:db8::1");
            assert!(s0.admit(a).await.is_ok());
            assert!(s1.admit(a).await.is_ok());
            let e = s0.admit(a).await.expect_err("third");
            assert!(
                matches!(e, LimitError::TooMany(t) if (3000..=3600).contains(&t.retry_after)),
                "{e:?}"
            );
            assert!(s1.admit(ip("2001:db8::2")).await.is_ok());
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn without_redis_the_limits_refuse_and_recover() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut redis = vela_testkit::Redis::start();
            let n = node(&redis, "n").await;
            let (l, s) = (
                LoginLimiter::new(3, 5, Some(&n)),
                SignupLimiter::new(2, Some(&n)),
            );
            let a = ip("192.0.2.1");
            assert!(l.attempt("alice", a).await.is_ok());
            redis.stop();
            let unavailable = LimitError::Unavailable {
                retry_after: UNAVAILABLE_RETRY_AFTER,
            };
            assert_eq!(l.attempt("alice", a).await, Err(unavailable.clone()));
            assert_eq!(s.admit(a).await, Err(unavailable));
            // Logged, not failed: the login it follows went through.
            l.succeeded("alice", a).await;
            redis.restart();
            let until = std::time::Instant::now() + Duration::from_secs(20);
            while l.attempt("alice", a).await.is_err() {
                assert!(std::time::Instant::now() < until, "no recovery");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(s.admit(a).await.is_ok());
        })
        .await
        .expect("timed out");
    }
}
