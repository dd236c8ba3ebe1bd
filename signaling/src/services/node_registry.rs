//! The node registry: which nodes of the cluster are alive, where clients
//! reach them and how loaded they are (issue 18).
//!
//! Each node writes its entry, `vela:node:<id>` (JSON: [`NodeInfo`]), with
//! an expiry of `cluster.node_timeout_ms`, and renews it every
//! `cluster.heartbeat_ms` ([`run`], the heartbeat task the server starts);
//! its id is also in the set `vela:nodes`, so listing needs no `SCAN`. An
//! entry that expired is a node that is gone (a crash, a lost Redis): the
//! listing drops it from the set. The same beat renews the node's
//! membership of its rooms ([`RedisDirectory::beat`]), so a room is held by
//! a node exactly as long as that node's heartbeat goes on. The entry also
//! advertises the node's relay address and its node number (issue 19).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use vela_media::MediaHandle;
use vela_media::core::RoomInfo;

use crate::domain::ids::now_ms;
use crate::services::cluster::{Cluster, ClusterError};
use crate::services::room_directory::RedisDirectory;

/// One node as the registry shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `cluster.node_id`.
    pub id: String,
    /// Where clients reach it (`cluster.public_url`).
    pub public_url: String,
    /// Rooms open on it at its last heartbeat.
    pub rooms: u64,
    /// Participants connected to it (in a room spread over nodes, those of
    /// its part only).
    pub participants: u64,
    /// When it started, ms since the epoch (its clock).
    pub started_at: i64,
    /// Its last heartbeat, ms since the epoch (its clock).
    pub heartbeat_at: i64,
    /// Where the other nodes reach its media relay (`host:port`); empty
    /// when it runs none (its rooms then stay on it alone).
    #[serde(default)]
    pub relay_addr: String,
    /// Its node number for this run (`INCR vela:node_numbers` at start),
    /// from which its media ids are made unique in the cluster; 0 before
    /// this field existed.
    #[serde(default)]
    pub number: u64,
}

impl NodeInfo {
    /// How loaded a node is, for placing a new room: participants first,
    /// then rooms (an empty room still holds a slot).
    pub fn load(&self) -> (u64, u64) {
        (self.participants, self.rooms)
    }
}

/// This node's view of the registry; cheap to clone.
#[derive(Debug, Clone)]
pub struct NodeRegistry {
    cluster: Cluster,
    started_at: i64,
    /// The live nodes as of the last heartbeat (this one included once it
    /// has beaten): what room placement reads, so a first join costs no
    /// listing.
    live: Arc<Mutex<Vec<NodeInfo>>>,
    /// For asking other nodes (e.g. their rooms).
    http: reqwest::Client,
    /// Registered at least once.
    registered: Arc<AtomicBool>,
    /// What this node advertises beside its load.
    relay: Arc<NodeRelay>,
    /// Joins this node placed lately, not yet in their node's entry.
    placed: Arc<Mutex<Vec<Placed>>>,
}

/// A join this node placed on a node ([`NodeRegistry::note_placed`]).
#[derive(Debug)]
struct Placed {
    node: String,
    /// When, ms since the epoch (this node's clock).
    at: i64,
    /// It opened the room there.
    new_room: bool,
}

/// A placement counts in a node's load until that node's entry was written
/// from a listing of its rooms taken this long after it (the join takes a
/// moment to reach the node, and the nodes' clocks differ a little).
const PLACED_MARGIN_MS: i64 = 100;

/// This node's relay address and node number, as advertised.
#[derive(Debug, Default)]
struct NodeRelay {
    addr: String,
    number: u64,
}

/// The key of a node's entry.
pub(crate) fn node_key(id: &str) -> String {
    Cluster::key(&["node", id])
}

/// The set of node ids.
pub(crate) fn nodes_key() -> String {
    Cluster::key(&["nodes"])
}

impl NodeRegistry {
    /// The registry of `cluster`, empty until the first heartbeat.
    pub fn new(cluster: Cluster) -> Self {
        NodeRegistry {
            cluster,
            started_at: now_ms(),
            live: Arc::default(),
            registered: Arc::default(),
            relay: Arc::default(),
            placed: Arc::default(),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
        }
    }

    /// This registry advertising `number` (the node's number for this run)
    /// and `relay_addr` (where the other nodes reach its media relay; empty
    /// when it runs none).
    pub fn with_relay(mut self, number: u64, relay_addr: String) -> Self {
        self.relay = Arc::new(NodeRelay {
            addr: relay_addr,
            number,
        });
        self
    }

    /// An HTTP client for requests to other nodes.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The cluster this registry is part of.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    fn ttl_ms(&self) -> u64 {
        self.cluster.config().node_timeout_ms.max(1)
    }

    /// Writes this node's entry with its load, renewing its expiry; says
    /// whether the entry was still there (not: the first time, or Redis lost
    /// it: a restart without persistence, or an outage longer than the node
    /// timeout).
    pub async fn register(&self, rooms: u64, participants: u64) -> Result<bool, ClusterError> {
        self.register_listed(rooms, participants, now_ms()).await
    }

    /// [`NodeRegistry::register`] with the load as counted at `listed` (ms
    /// since the epoch), which the entry gives as its heartbeat's time.
    async fn register_listed(
        &self,
        rooms: u64,
        participants: u64,
        listed: i64,
    ) -> Result<bool, ClusterError> {
        let me = self.cluster.node();
        let info = NodeInfo {
            id: me.id.clone(),
            public_url: me.public_url.clone(),
            rooms,
            participants,
            started_at: self.started_at,
            heartbeat_at: listed,
            relay_addr: self.relay.addr.clone(),
            number: self.relay.number,
        };
        let json = serde_json::to_string(&info).unwrap_or_default();
        let mut redis = self.cluster.redis();
        let (old,): (Option<String>,) = redis::pipe()
            .set_options(
                node_key(&me.id),
                json,
                redis::SetOptions::default()
                    .get(true)
                    .with_expiration(redis::SetExpiry::PX(self.ttl_ms())),
            )
            .sadd(nodes_key(), &me.id)
            .ignore()
            .query_async(&mut redis)
            .await?;
        self.registered.store(true, Ordering::Relaxed);
        Ok(old.is_some())
    }

    /// Whether this node has registered at least once (readiness: until
    /// then the others cannot find it, and it claims no room).
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed)
    }

    /// Removes this node's entry (a graceful shutdown): the others stop
    /// placing rooms here at once rather than after the timeout.
    pub async fn deregister(&self) -> Result<(), ClusterError> {
        let id = &self.cluster.node().id;
        let mut redis = self.cluster.redis();
        let () = redis::pipe()
            .del(node_key(id))
            .ignore()
            .srem(nodes_key(), id)
            .ignore()
            .query_async(&mut redis)
            .await?;
        Ok(())
    }

    /// The live nodes, read from Redis now, by id. Entries that expired
    /// are dropped from the set of ids on the way.
    pub async fn list(&self) -> Result<Vec<NodeInfo>, ClusterError> {
        let mut redis = self.cluster.redis();
        let ids: Vec<String> = redis.smembers(nodes_key()).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| node_key(id)).collect();
        let entries: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut redis)
            .await?;
        let mut live = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, entry) in ids.into_iter().zip(entries) {
            match entry.and_then(|e| serde_json::from_str::<NodeInfo>(&e).ok()) {
                Some(info) => live.push(info),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            // Only ids whose entry is still absent: a node that came back
            // meanwhile re-adds itself on its next beat anyway.
            let _: Result<(), _> = redis.srem(nodes_key(), &gone).await;
        }
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live)
    }

    /// The live nodes as of the last heartbeat, each with the joins this
    /// node placed on it since counted in its load.
    pub fn cached(&self) -> Vec<NodeInfo> {
        let mut nodes = self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let placed = self.placed.lock().unwrap_or_else(PoisonError::into_inner);
        for p in placed.iter() {
            if let Some(n) = nodes
                .iter_mut()
                .find(|n| n.id == p.node && p.at >= n.heartbeat_at - PLACED_MARGIN_MS)
            {
                n.participants += 1;
                n.rooms += u64::from(p.new_room);
            }
        }
        nodes
    }

    /// A node's entry in the cached list (with the joins placed since).
    pub fn cached_node(&self, id: &str) -> Option<NodeInfo> {
        self.cached().into_iter().find(|n| n.id == id)
    }

    /// A node's entry, from the cache or else from Redis (a node that
    /// joined since the last heartbeat).
    pub async fn node(&self, id: &str) -> Result<Option<NodeInfo>, ClusterError> {
        if let Some(n) = self.cached_node(id) {
            return Ok(Some(n));
        }
        let mut redis = self.cluster.redis();
        let entry: Option<String> = redis.get(node_key(id)).await?;
        Ok(entry.and_then(|e| serde_json::from_str(&e).ok()))
    }

    /// Counts a participant just placed on `id` (in a room new there when
    /// `new_room`) in its load until its entry counts it, so a burst of
    /// joins between two heartbeats spreads rather than all landing on the
    /// node that was least loaded at the last one. (Each node counts only
    /// the joins it placed itself: with joins arriving at every node, a
    /// burst may overshoot a threshold by up to the number of nodes times
    /// the joins of one heartbeat.)
    pub fn note_placed(&self, id: &str, new_room: bool) {
        self.placed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Placed {
                node: id.to_owned(),
                at: now_ms(),
                new_room,
            });
    }

    pub(crate) fn set_cached(&self, nodes: Vec<NodeInfo>) {
        // Placements their node's entry now counts (or of nodes gone) are
        // dropped.
        self.placed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|p| {
                nodes
                    .iter()
                    .any(|n| n.id == p.node && p.at >= n.heartbeat_at - PLACED_MARGIN_MS)
            });
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = nodes;
    }
}

/// The heartbeat: every `cluster.heartbeat_ms`, this node's entry with its
/// load, its rooms' claims, and the cached list of live nodes. A Redis
/// outage is logged once and retried each beat; nothing local ends because
/// of it. At shutdown the entry and the claims are removed.
pub async fn run(
    registry: NodeRegistry,
    rooms: RedisDirectory,
    media: MediaHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(registry.cluster.config().heartbeat_ms.max(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        match beat(&registry, &rooms, &media).await {
            Ok(()) if !healthy => {
                healthy = true;
                tracing::info!("redis is back: this node and its rooms are registered again");
            }
            Ok(()) => {}
            Err(e) if healthy => {
                healthy = false;
                tracing::warn!(error = %e, "cannot renew this node in redis: running rooms go on, new rooms are refused until it answers");
            }
            Err(_) => {}
        }
    }
    // Gone on purpose: free the rooms at once (the media handle ends them).
    let leaving = async {
        rooms.release_all().await?;
        registry.deregister().await
    };
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(2), leaving).await {
        tracing::warn!(error = %e, "cannot remove this node from redis; it expires");
    }
}

async fn beat(
    registry: &NodeRegistry,
    rooms: &RedisDirectory,
    media: &MediaHandle,
) -> Result<(), ClusterError> {
    // A stopped media driver has no rooms; the entry still says the node
    // lives (readiness says whether it takes work).
    let listed = Instant::now();
    let open = media.rooms().await.unwrap_or_default();
    // The participants connected here: a room spread over nodes counts
    // its participants on every node in `open` (the room as a whole), the
    // cores' counters only those of this node.
    let here = match media.stats().await {
        Ok(s) => s.participants,
        Err(_) => open.iter().map(|r| u64::from(r.num_participants)).sum(),
    };
    renew(registry, rooms, &open, here, listed).await
}

/// One heartbeat with the rooms open here and the participants connected
/// here (as listed at `listed`): the rooms' memberships, then the entry,
/// then the cached list.
pub(crate) async fn renew(
    registry: &NodeRegistry,
    rooms: &RedisDirectory,
    open: &[RoomInfo],
    participants: u64,
    listed: Instant,
) -> Result<(), ClusterError> {
    // Memberships first: once a node is listed again after Redis lost its
    // data, its rooms are found too.
    rooms.beat(open, listed).await?;
    let before = registry.registered();
    let listed_ms = now_ms() - i64::try_from(listed.elapsed().as_millis()).unwrap_or(0);
    let kept = registry
        .register_listed(open.len() as u64, participants, listed_ms)
        .await?;
    if before && !kept {
        // Redis lost what the nodes had written: until every node has
        // beaten once more (re-claiming its rooms), this one opens none.
        tracing::warn!(
            "this node's entry was gone from redis (restarted, or an outage longer than the node timeout): registered again"
        );
        rooms.settle();
    }
    let live = registry.list().await?;
    registry.set_cached(live);
    Ok(())
}
