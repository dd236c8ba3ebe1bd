//! This node's place in a cluster: who it is, and its connection to the
//! Redis the nodes share (`[cluster]`; issue 18).
//!
//! With `cluster.redis_url` empty there is no [`Cluster`] and every seam
//! (store, device bus, presence, room directory, calls) uses its `Local`
//! variant; with it set, `server` connects here first and hands the
//! [`Cluster`] to each seam's Redis variant.
//!
//! Every key the cluster writes starts with [`PREFIX`], so a Redis shared
//! with other software stays tidy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubStream};
use tokio::sync::watch;
use vela_config::ClusterConfig;

/// The start of every key and channel the cluster uses.
pub const PREFIX: &str = "vela:";

/// Why the cluster could not be joined.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// How many bits of a media id a node's run has to itself: ids are
/// `id_base + k` with `k < 2^40` (a million million participants, tracks
/// and connections per run).
const ID_BITS_PER_NODE: u32 = 40;
/// How many node numbers exist before they wrap (2^20 runs of nodes; a run
/// that outlives a million later starts may share its ids' space).
const NODE_NUMBERS: u64 = 1 << 20;

/// The base of the media ids of the node run numbered `number`
/// ([`Cluster::allocate_node_number`]): ids made by the nodes of a cluster
/// never collide, and stay below 2^60.
pub fn id_base(number: u64) -> u64 {
    (number % NODE_NUMBERS) << ID_BITS_PER_NODE
}

/// Who this node is to the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Unique among the nodes (`cluster.node_id`, else `host:port`).
    pub id: String,
    /// Where clients reach this node's HTTP listener, without a trailing
    /// slash (`cluster.public_url`, else `http://` and the listener).
    pub public_url: String,
}

impl NodeIdentity {
    /// The identity `config` gives a node listening on `http`.
    pub fn from_config(config: &ClusterConfig, http: SocketAddr) -> NodeIdentity {
        let id = match config.node_id.trim() {
            "" => format!("{}:{}", host_name(), http.port()),
            id => id.to_owned(),
        };
        let public_url = match config.public_url.trim().trim_end_matches('/') {
            "" => format!("http://{http}"),
            url => url.to_owned(),
        };
        NodeIdentity { id, public_url }
    }
}

/// The machine's host name, `localhost` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// This node in the cluster; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    node: Arc<NodeIdentity>,
    client: redis::Client,
    redis: ConnectionManager,
    config: Arc<ClusterConfig>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("node", &self.node).finish()
    }
}

/// How long one Redis command may take before it counts as failed (an
/// outage answers quickly with an error instead of hanging a request).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after a failed or lost subscription it is tried again.
pub const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(250);

impl Cluster {
    /// Connects to the cluster's Redis as `node`. Fails when Redis cannot
    /// be reached now; afterwards the connection is re-established by
    /// itself after an outage, commands failing meanwhile.
    pub async fn connect(config: &ClusterConfig, node: NodeIdentity) -> Result<Self, ClusterError> {
        let client = redis::Client::open(config.redis_url.trim())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let redis = ConnectionManager::new_with_config(client.clone(), manager).await?;
        Ok(Cluster {
            node: Arc::new(node),
            client,
            redis,
            config: Arc::new(config.clone()),
        })
    }

    /// Who this node is.
    pub fn node(&self) -> &NodeIdentity {
        &self.node
    }

    /// The `[cluster]` settings (heartbeat, node timeout).
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// A connection for commands, shared (multiplexed) and reconnecting by
    /// itself; clone it per use.
    pub fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// The client, for connections of their own (subscriptions).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// A key or channel name in the cluster's namespace.
    pub fn key(parts: &[&str]) -> String {
        let mut key = String::from(PREFIX);
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                key.push(':');
            }
            key.push_str(p);
        }
        key
    }

    /// A pub/sub connection of its own subscribed to `channels` (`what`
    /// names them in logs), tried again every [`RESUBSCRIBE_DELAY`] while
    /// Redis is away; `None` once `shutdown` is set.
    pub async fn subscribe(
        &self,
        channels: &[String],
        what: &str,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<PubSubStream> {
        loop {
            if *shutdown.borrow() {
                return None;
            }
            let attempt = async {
                let mut p = self.client.get_async_pubsub().await?;
                for c in channels {
                    p.subscribe(c).await?;
                }
                Ok::<_, redis::RedisError>(p)
            };
            let result = tokio::select! {
                r = tokio::time::timeout(COMMAND_TIMEOUT, attempt) => r,
                _ = shutdown.wait_for(|s| *s) => return None,
            };
            match result {
                Ok(Ok(p)) => return Some(p.into_on_message()),
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to {what} yet"),
                Err(_) => tracing::debug!("subscribing to {what} timed out"),
            }
            tokio::time::sleep(RESUBSCRIBE_DELAY).await;
        }
    }

    /// Test only: node `id` on the throwaway `redis`, with the default
    /// heartbeat, or `timing` = (heartbeat_ms, node_timeout_ms).
    #[cfg(test)]
    pub(crate) async fn for_test(
        redis: &vela_testkit::Redis,
        id: &str,
        timing: Option<(u64, u64)>,
    ) -> Cluster {
        let mut config = ClusterConfig {
            redis_url: redis.url(),
            node_id: id.into(),
            ..ClusterConfig::default()
        };
        if let Some((heartbeat_ms, node_timeout_ms)) = timing {
            config.heartbeat_ms = heartbeat_ms;
            config.node_timeout_ms = node_timeout_ms;
        }
        let node = NodeIdentity::from_config(&config, "127.0.0.1:1".parse().expect("addr"));
        Cluster::connect(&config, node).await.expect("connect")
    }

    /// A number for this run of this node, unique in the cluster (a
    /// counter in Redis, `vela:node_numbers`): the base of its media ids.
    pub async fn allocate_node_number(&self) -> Result<u64, ClusterError> {
        let mut redis = self.redis();
        let n: u64 = redis::cmd("INCR")
            .arg(Cluster::key(&["node_numbers"]))
            .query_async(&mut redis)
            .await?;
        Ok(n)
    }

    /// Answers when Redis does (readiness checks).
    pub async fn ping(&self) -> Result<(), ClusterError> {
        let mut redis = self.redis();
        let _: String = redis::cmd("PING").query_async(&mut redis).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_named_by_its_host_and_port_unless_configured() {
        let http: SocketAddr = "127.0.0.1:7880".parse().unwrap();
        let plain = NodeIdentity::from_config(&ClusterConfig::default(), http);
        assert!(plain.id.ends_with(":7880"), "{}", plain.id);
        assert_eq!(plain.public_url, "http://127.0.0.1:7880");
        let named = NodeIdentity::from_config(
            &ClusterConfig {
                node_id: "n1".into(),
                public_url: "https://n1.example.com/".into(),
                ..ClusterConfig::default()
            },
            http,
        );
        assert_eq!(named.id, "n1");
        assert_eq!(named.public_url, "https://n1.example.com");
        assert_eq!(Cluster::key(&["room", "r1"]), "vela:room:r1");
    }

    #[test]
    fn node_numbers_give_disjoint_id_spaces_below_2_pow_60() {
        assert_eq!(id_base(0), 0);
        assert_eq!(id_base(1), 1 << 40);
        assert_eq!(id_base(2) - id_base(1), 1 << 40);
        assert!(id_base(NODE_NUMBERS - 1) < 1 << 60);
        // Wrapping: the counter never stops, the bases cycle.
        assert_eq!(id_base(NODE_NUMBERS + 3), id_base(3));
    }

    #[tokio::test]
    async fn a_node_connects_to_redis_and_pings_it() {
        let redis = vela_testkit::Redis::start();
        let config = ClusterConfig {
            redis_url: redis.url(),
            ..ClusterConfig::default()
        };
        let node = NodeIdentity::from_config(&config, "127.0.0.1:1".parse().unwrap());
        let cluster = Cluster::connect(&config, node).await.expect("connect");
        cluster.ping().await.expect("ping");
        // Two runs (two nodes, or one restarted) get different numbers.
        let a = cluster.allocate_node_number().await.expect("number");
        let b = cluster.allocate_node_number().await.expect("number");
        assert!(a >= 1 && b > a, "{a} {b}");
    }
}
