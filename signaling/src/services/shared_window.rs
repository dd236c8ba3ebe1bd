//! Sliding windows kept in the cluster's Redis, so that every node counts
//! against the same allowance (the login and sign-up limits; issue 18).
//!
//! The same rules as [`RateLimiter`](crate::services::rate_limit::RateLimiter):
//! an event at `t` counts until `t + window`; a key with `limit` events in
//! the window refuses more until its oldest ages out. Each key is a sorted
//! set of its events scored by time in milliseconds, read on Redis's own
//! clock (`TIME`), so nodes whose clocks differ still agree; it holds at
//! most `limit` members and expires a window after its last event.
//!
//! Checking and counting are one Lua script (atomic in Redis), so two nodes
//! answering at once cannot both take the last attempt. Every call is
//! bounded by [`TIMEOUT`]: an unreachable Redis is an error
//! ([`Unavailable`]) at once, never a hang and never "unlimited". Nothing
//! here is on the media path: only logins, password changes and sign-ups
//! count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::services::cluster::Cluster;

/// How long one round trip may take before the count is given up as
/// unavailable.
pub const TIMEOUT: Duration = Duration::from_secs(1);

/// Redis did not answer in time or failed: nothing could be counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cluster's Redis is not answering: {0}")]
pub struct Unavailable(pub String);

/// One key's window in an [`SharedWindows::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// The full Redis key ([`Cluster::key`]).
    pub key: String,
    /// Events allowed within `window`, at least 1.
    pub limit: u32,
    /// The window.
    pub window: Duration,
}

/// Checks every key, and counts the event in all of them only when each
/// has allowance left. `KEYS`: the keys; `ARGV[1]` the event's member
/// (unique), then a limit and a window (ms) per key. Returns 0 when
/// counted, else the milliseconds until every full key has room again.
const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local w = tonumber(oldest[2]) + window - now
    if w < 1 then w = 1 end
    if w > wait then wait = w end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[1])
  redis.call('PEXPIRE', key, tonumber(ARGV[2 * i + 1]))
end
return 0
";

/// The windows of one node, on the cluster's connection; cheap to clone.
#[derive(Clone)]
pub struct SharedWindows {
    redis: ConnectionManager,
    admit: Arc<Script>,
    /// Random per process: with [`SharedWindows::next`], makes each
    /// event's member unique across the nodes.
    origin: u64,
    next: Arc<AtomicU64>,
}

impl std::fmt::Debug for SharedWindows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWindows")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl SharedWindows {
    /// Windows on `cluster`'s Redis.
    pub fn new(cluster: &Cluster) -> Self {
        let mut b = [0u8; 8];
        // A failed random source leaves 0: members then differ only by the
        // counter, which still keeps this node's events apart.
        let _ = getrandom::fill(&mut b);
        SharedWindows {
            redis: cluster.redis(),
            admit: Arc::new(Script::new(ADMIT)),
            origin: u64::from_le_bytes(b),
            next: Arc::default(),
        }
    }

    /// Counts one event against every key of `counted` when each has
    /// allowance left: `Ok(Ok(()))`; else counts nothing and answers
    /// `Ok(Err(wait))`, how long until all of them have.
    pub async fn admit(&self, counted: &[Counted]) -> Result<Result<(), Duration>, Unavailable> {
        let member = format!(
            "{:016x}-{}",
            self.origin,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let mut call = self.admit.prepare_invoke();
        call.arg(member);
        for c in counted {
            call.key(&c.key).arg(c.limit.max(1)).arg(millis(c.window));
        }
        let mut redis = self.redis.clone();
        let wait: u64 = bounded(call.invoke_async(&mut redis)).await?;
        Ok(match wait {
            0 => Ok(()),
            ms => Err(Duration::from_millis(ms)),
        })
    }

    /// Takes back the newest event of `key` (an attempt counted before it
    /// was known to succeed).
    pub async fn unrecord_newest(&self, key: &str) -> Result<(), Unavailable> {
        let mut redis = self.redis.clone();
        let _: redis::Value =
            bounded(redis::cmd("ZPOPMAX").arg(key).query_async(&mut redis)).await?;
        Ok(())
    }

    /// Forgets every event of `key`.
    pub async fn clear(&self, key: &str) -> Result<(), Unavailable> {
        let mut redis = self.redis.clone();
        let _: u64 = bounded(redis::cmd("DEL").arg(key).query_async(&mut redis)).await?;
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// `f` within [`TIMEOUT`], its failure or lateness as [`Unavailable`].
async fn bounded<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Unavailable> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Unavailable(e.to_string())),
        Err(_) => Err(Unavailable(format!(
            "no answer within {} ms",
            TIMEOUT.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn node(redis: &vela_testkit::Redis, id: &str) -> Cluster {
        Cluster::for_test(redis, id, None).await
    }

    fn counted(key: &str, limit: u32, window_ms: u64) -> Counted {
        Counted {
            key: Cluster::key(&["test", key]),
            limit,
            window: Duration::from_millis(window_ms),
        }
    }

    #[tokio::test]
    async fn two_nodes_share_a_window_that_slides() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let redis = vela_testkit::Redis::start();
            let a = SharedWindows::new(&node(&redis, "a").await);
            let b = SharedWindows::new(&node(&redis, "b").await);
            let k = counted("k", 3, 60_000);
            assert_eq!(a.admit(std::slice::from_ref(&k)).await, Ok(Ok(())));
            assert_eq!(b.admit(std::slice::from_ref(&k)).await, Ok(Ok(())));
            assert_eq!(a.admit(std::slice::from_ref(&k)).await, Ok(Ok(())));
            // The fourth, on either node, waits for the first to age out.
            let wait = b
                .admit(std::slice::from_ref(&k))
                .await
                .expect("redis")
                .expect_err("full");
            assert!(
                wait <= Duration::from_secs(60) && wait > Duration::from_secs(50),
                "{wait:?}"
            );
            // Both keys of one event are checked before either counts.
            let other = counted("other", 5, 60_000);
            assert!(
                a.admit(&[other.clone(), k.clone()])
                    .await
                    .expect("redis")
                    .is_err()
            );
            for _ in 0..5 {
                assert_eq!(a.admit(std::slice::from_ref(&other)).await, Ok(Ok(())));
            }
            assert!(
                b.admit(std::slice::from_ref(&other))
                    .await
                    .expect("redis")
                    .is_err()
            );
            // Taken back, the newest frees a place; cleared, all of them.
            b.unrecord_newest(&k.key).await.expect("redis");
            assert_eq!(b.admit(std::slice::from_ref(&k)).await, Ok(Ok(())));
            assert!(
                a.admit(std::slice::from_ref(&k))
                    .await
                    .expect("redis")
                    .is_err()
            );
            a.clear(&k.key).await.expect("redis");
            for _ in 0..3 {
                assert_eq!(b.admit(std::slice::from_ref(&k)).await, Ok(Ok(())));
            }
            // A short window: its event ages out, then its key expires.
            let short = counted("short", 1, 300);
            assert_eq!(a.admit(std::slice::from_ref(&short)).await, Ok(Ok(())));
            let wait = b
                .admit(std::slice::from_ref(&short))
                .await
                .expect("redis")
                .expect_err("full");
            assert!(wait <= Duration::from_millis(300), "{wait:?}");
            tokio::time::sleep(Duration::from_millis(400)).await;
            assert_eq!(b.admit(std::slice::from_ref(&short)).await, Ok(Ok(())));
            tokio::time::sleep(Duration::from_millis(400)).await;
            let mut conn = a.redis.clone();
            let exists: u64 = redis::cmd("EXISTS")
                .arg(&short.key)
                .query_async(&mut conn)
                .await
                .expect("exists");
            assert_eq!(exists, 0, "an idle key expires");
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn an_outage_is_an_error_and_the_count_resumes_after_it() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut redis = vela_testkit::Redis::start();
            let a = SharedWindows::new(&node(&redis, "a").await);
            let k = counted("k", 2, 60_000);
            assert_eq!(a.admit(std::slice::from_ref(&k)).await, Ok(Ok(())));
            redis.stop();
            let started = std::time::Instant::now();
            assert!(a.admit(std::slice::from_ref(&k)).await.is_err());
            assert!(a.clear(&k.key).await.is_err());
            assert!(started.elapsed() < 3 * TIMEOUT, "{:?}", started.elapsed());
            redis.restart();
            // The connection comes back by itself (the restarted Redis is
            // empty: the count starts again).
            let until = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                match a.admit(std::slice::from_ref(&k)).await {
                    Ok(r) => {
                        assert_eq!(r, Ok(()));
                        break;
                    }
                    Err(e) => assert!(std::time::Instant::now() < until, "{e}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(a.admit(std::slice::from_ref(&k)).await, Ok(Ok(())));
            assert!(
                a.admit(std::slice::from_ref(&k))
                    .await
                    .expect("redis")
                    .is_err()
            );
        })
        .await
        .expect("timed out");
    }
}
