//! Work one node does for the whole cluster (a periodic sweep of the
//! shared store, whose pushes must go out once, not once per node): a
//! lease in Redis, held by one node at a time.
//!
//! The lease is a key set with `SET NX PX` to a token only its holder
//! knows, renewed by the holder every `cluster.heartbeat_ms` for
//! `cluster.node_timeout_ms`, and taken over by another node once it
//! expires (its holder died or lost Redis). The holder deems itself the
//! holder only until `ttl` after its last renewal was *sent* (measured on
//! its own monotonic clock, less a margin), so it stops before anyone else
//! may start; at shutdown it gives the lease up at once.
//!
//! Around a takeover a job may run twice or pause for up to a period: the
//! jobs leased here must be idempotent (a sweep finds nothing the second
//! time). With one node there is no lease: [`Singleton::Local`] always
//! holds.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::Script;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::services::cluster::Cluster;

/// Takes or renews the lease `KEYS[1]` for the token `ARGV[1]`, for
/// `ARGV[2]` ms: renewed when it holds this token, taken when it is free
/// (`SET NX PX`, in the same atomic step); 1 when held, 0 when another
/// holder has it.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  return 1
end
return 0
";

/// Deletes `KEYS[1]` if it holds this holder's token (`ARGV[1]`).
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Whether this node is the one to do a cluster-wide job; cheap to clone.
#[derive(Debug, Clone)]
pub enum Singleton {
    /// One node: always this one.
    Local,
    /// A lease in the cluster's Redis, kept by a task of this node.
    Redis(Arc<Lease>),
}

impl Singleton {
    /// The lease `name` (one per job), with one attempt to take it made
    /// before returning (bounded), then kept by a task until `shutdown`.
    /// `None`: one node, no lease.
    pub async fn start(
        cluster: Option<&Cluster>,
        name: &str,
        shutdown: watch::Receiver<bool>,
    ) -> Singleton {
        let Some(cluster) = cluster else {
            return Singleton::Local;
        };
        let config = cluster.config();
        let ttl = Duration::from_millis(config.node_timeout_ms.max(100));
        let every = Duration::from_millis(config.heartbeat_ms.max(10)).min(ttl / 3);
        let lease = Arc::new(Lease::new(cluster, name, ttl));
        lease.round().await;
        tokio::spawn(lease.clone().keep(every, shutdown));
        Singleton::Redis(lease)
    }

    /// Whether this node holds it now.
    pub fn is_held(&self) -> bool {
        match self {
            Singleton::Local => true,
            Singleton::Redis(l) => l.is_held(),
        }
    }
}

/// One node's side of a lease in Redis.
pub struct Lease {
    cluster: Cluster,
    key: String,
    /// Unique to this holder: the node id and a random part (a node
    /// restarted with the same id is another holder).
    token: String,
    ttl: Duration,
    /// Until when this node may act as the holder.
    held_until: Mutex<Option<Instant>>,
    acquire: Script,
    release: Script,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("token", &self.token)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

/// How long one Redis call of the lease may take.
const TIMEOUT: Duration = Duration::from_secs(1);

impl Lease {
    fn new(cluster: &Cluster, name: &str, ttl: Duration) -> Lease {
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Lease {
            cluster: cluster.clone(),
            key: Cluster::key(&["lease", name]),
            token: format!("{}/{:016x}", cluster.node().id, u64::from_le_bytes(b)),
            ttl,
            held_until: Mutex::new(None),
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
        }
    }

    /// Whether this node holds the lease now.
    pub fn is_held(&self) -> bool {
        self.held_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|t| Instant::now() < t)
    }

    fn set_held(&self, until: Option<Instant>) {
        *self
            .held_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = until;
    }

    /// Renews the lease when held, else tries to take it.
    async fn round(&self) {
        let sent = Instant::now();
        let was = self.is_held();
        let mut redis = self.cluster.redis();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let outcome = tokio::time::timeout(
            TIMEOUT,
            self.acquire
                .key(&self.key)
                .arg(&self.token)
                .arg(ttl_ms)
                .invoke_async::<u64>(&mut redis),
        )
        .await;
        match outcome {
            Ok(Ok(1)) => {
                // Redis started the ttl after `sent`; a tenth less covers
                // the clocks' drift.
                self.set_held(Some(sent + self.ttl - self.ttl / 10));
                if !was {
                    tracing::info!(lease = %self.key, "took the lease: this node runs the job");
                }
            }
            Ok(Ok(_)) => {
                if was {
                    tracing::warn!(lease = %self.key, "lost the lease to another node");
                }
                self.set_held(None);
            }
            // Unanswered: held (if it was) until what was granted runs out.
            Ok(Err(e)) => tracing::warn!(lease = %self.key, error = %e, "cannot renew the lease"),
            Err(_) => tracing::warn!(lease = %self.key, "cannot renew the lease: no answer"),
        }
    }

    /// Renews or takes the lease every `every` until `shutdown`, then gives
    /// it up.
    async fn keep(self: Arc<Self>, every: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.round().await,
                () = async {
                    let _ = shutdown.wait_for(|s| *s).await;
                } => break,
            }
        }
        if self.is_held() {
            self.set_held(None);
            let mut redis = self.cluster.redis();
            let released = tokio::time::timeout(
                TIMEOUT,
                self.release
                    .key(&self.key)
                    .arg(&self.token)
                    .invoke_async::<u64>(&mut redis),
            )
            .await;
            if !matches!(released, Ok(Ok(_))) {
                tracing::warn!(lease = %self.key, "cannot give the lease up: it expires instead");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long against the renewals (every 100 ms), so that a loaded machine
    /// does not lose a lease the test expects held.
    const TTL_MS: u64 = 2_000;

    async fn node(redis: &vela_testkit::Redis, id: &str) -> Cluster {
        Cluster::for_test(redis, id, Some((100, TTL_MS))).await
    }

    /// Waits up to `limit` for `cond`.
    async fn eventually(limit: Duration, cond: impl Fn() -> bool) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cond()
    }

    #[tokio::test]
    async fn one_node_holds_and_another_takes_over_when_it_stops() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let redis = vela_testkit::Redis::start();
            let (stop_a, shut_a) = watch::channel(false);
            let (_stop_b, shut_b) = watch::channel(false);
            let a = Singleton::start(Some(&node(&redis, "a").await), "job", shut_a).await;
            let b = Singleton::start(Some(&node(&redis, "b").await), "job", shut_b.clone()).await;
            assert!(a.is_held() && !b.is_held());
            // Renewed: held across many ttls, never by both.
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                assert!(a.is_held() && !b.is_held());
            }
            // Another job is another lease.
            let other = Singleton::start(Some(&node(&redis, "b").await), "other", shut_b).await;
            assert!(other.is_held());
            // A holder shutting down gives it up: the other takes it soon.
            stop_a.send(true).expect("send");
            assert!(eventually(Duration::from_secs(2), || b.is_held()).await);
            assert!(!a.is_held());
            assert!(
                Singleton::start(None, "job", watch::channel(false).1)
                    .await
                    .is_held()
            );
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn a_holder_cut_off_from_redis_stops_before_the_lease_expires() {
        tokio::time::timeout(Duration::from_secs(60), async {
            let mut redis = vela_testkit::Redis::start();
            let (_stop, shut) = watch::channel(false);
            let a = Singleton::start(Some(&node(&redis, "a").await), "job", shut.clone()).await;
            assert!(a.is_held());
            redis.stop();
            let lost = Instant::now();
            assert!(eventually(Duration::from_secs(3), || !a.is_held()).await);
            assert!(
                lost.elapsed() <= Duration::from_millis(TTL_MS),
                "{:?}",
                lost.elapsed()
            );
            // Redis back (empty): the lease is taken again.
            redis.restart();
            assert!(eventually(Duration::from_secs(20), || a.is_held()).await);
        })
        .await
        .expect("timed out");
    }
}
