//! Which node serves each room: the room directory. Within a node, which
//! media shard holds a room is the media handle's placement (the least
//! loaded shard, `vela_media`); this is the level above it: with one node
//! every room is here, in a cluster (issue 18) Redis says where.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use vela_media::core::{RoomId, RoomInfo};

use crate::services::cluster::{Cluster, ClusterError};
use crate::services::node_registry::{NodeInfo, NodeRegistry, node_key};

/// Where rooms are served, asked once per join (a room socket, a WHIP or
/// WHEP session, a room created through the API), never per packet.
/// Picked at start in `server`. An enum, not a trait object: one match per
/// join, nothing boxed.
///
/// What every variant guarantees (and a remote one must keep):
/// - a room is open on at most one node: concurrent first joins on two
///   nodes agree on one home (an atomic claim, e.g. `SET NX` with expiry),
///   chosen by load;
/// - every node finds the home of an open room, for as long as the room is
///   open there (the home renews its claim while it lives);
/// - the claim is released when the room closes on its node, or expires
///   when that node stops renewing it (a crash), so the room may reopen
///   elsewhere.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RoomDirectory {
    /// One node: every room is served here.
    Local,
    /// Several nodes sharing a Redis: see [`RedisDirectory`].
    Redis(RedisDirectory),
}

/// Where a room is served.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomHome {
    /// On this node: its media handle places the room on a shard.
    Here,
    /// On another node of the cluster.
    Elsewhere {
        /// Its id (`cluster.node_id`).
        node: String,
        /// Where clients reach it, without a trailing slash.
        public_url: String,
    },
}

/// Why the directory cannot say where a room is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// Redis does not answer: rooms open here go on, new ones wait.
    #[error(
        "the cluster's Redis is not answering, so no new room can be opened now (rooms already open go on)"
    )]
    Unavailable {
        /// The cause (for logs; clients see the message above).
        #[source]
        source: ClusterError,
        /// When to try again, in seconds.
        retry_after_secs: u64,
    },
    /// Redis lost the cluster's entries a moment ago (a restart): the nodes
    /// are claiming their running rooms again, and no new room opens here
    /// until they have.
    #[error(
        "the cluster's Redis came back a moment ago and the nodes are registering their rooms again"
    )]
    Settling {
        /// When to try again, in seconds.
        retry_after_secs: u64,
    },
    /// The room's node stopped renewing its entry a moment ago: the next
    /// join takes the room over.
    #[error("the room's node {node} is gone; retry to open the room elsewhere")]
    NodeGone {
        /// Its id.
        node: String,
        /// When to try again, in seconds.
        retry_after_secs: u64,
    },
}

impl DirectoryError {
    /// When to try again, in seconds.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            DirectoryError::Unavailable {
                retry_after_secs, ..
            }
            | DirectoryError::NodeGone {
                retry_after_secs, ..
            }
            | DirectoryError::Settling { retry_after_secs } => *retry_after_secs,
        }
    }
}

impl RoomDirectory {
    /// Where the room is served, claiming it (for the least loaded live
    /// node) when it is open nowhere yet. A caller serves a room only when
    /// the answer is [`RoomHome::Here`]; what it does with a room elsewhere
    /// (proxy or redirect) is the transport's choice.
    pub async fn home(&self, room: &RoomId) -> Result<RoomHome, DirectoryError> {
        match self {
            RoomDirectory::Local => Ok(RoomHome::Here),
            RoomDirectory::Redis(d) => d.home(room).await,
        }
    }

    /// Where an open room is served, claiming nothing: `None` when it is
    /// open nowhere (or its node is gone).
    pub async fn lookup(&self, room: &RoomId) -> Result<Option<RoomHome>, DirectoryError> {
        match self {
            RoomDirectory::Local => Ok(Some(RoomHome::Here)),
            RoomDirectory::Redis(d) => d.lookup(room).await,
        }
    }
}

/// The directory of a cluster. A room's claim is the key
/// `vela:room:<name>`, whose value is the id of its node, expiring after
/// `cluster.node_timeout_ms` unless renewed; the home renews the claims of
/// its open rooms on each heartbeat ([`RedisDirectory::beat`]) and deletes
/// those of rooms that closed.
///
/// Rooms this node holds are answered from memory, without Redis: joins to
/// a running room go on while Redis is away; only opening a room needs it.
#[derive(Debug, Clone)]
pub struct RedisDirectory(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: NodeRegistry,
    claims: Mutex<Claims>,
}

#[derive(Debug, Default)]
struct Claims {
    /// Rooms claimed for this node, with when a join last asked for them
    /// (a room claimed but not yet open is kept for a moment).
    held: HashMap<RoomId, Instant>,
    /// Rooms open here whose claim another node took (after this node lost
    /// Redis for longer than the node timeout): left running, not renewed.
    lost: HashSet<RoomId>,
    /// Until then no new room is claimed (Redis lost its data: the nodes
    /// are re-claiming their running rooms).
    settling_until: Option<Instant>,
}

/// Claims the room (`KEYS[1]`) for `ARGV[1]` unless a live node holds it;
/// renews it when this node (`ARGV[4]`) holds it. A holder whose registry
/// entry (`ARGV[3]` + id) expired is gone: its room is taken over. A
/// candidate that is gone too (the cached list is a beat old) gives way to
/// this node. Answers the holder, or nil without claiming when this node's
/// own entry is missing (Redis lost its data and this node has not beaten
/// since: another node's running room may not be claimed again yet).
const CLAIM: &str = r"
local owner = redis.call('GET', KEYS[1])
if owner then
  if owner == ARGV[4] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return owner
  end
  if redis.call('EXISTS', ARGV[3] .. owner) == 1 then
    return owner
  end
end
if redis.call('EXISTS', ARGV[3] .. ARGV[4]) == 0 then
  return false
end
local candidate = ARGV[1]
if candidate ~= ARGV[4] and redis.call('EXISTS', ARGV[3] .. candidate) == 0 then
  candidate = ARGV[4]
end
redis.call('SET', KEYS[1], candidate, 'PX', ARGV[2])
return candidate
";

/// Renews the claims `KEYS` for `ARGV[1]` (re-claiming those that expired
/// meanwhile); answers, for each key another node holds, its index (from
/// 1) and holder.
const RENEW: &str = r"
local taken = {}
for i, key in ipairs(KEYS) do
  local owner = redis.call('GET', key)
  if (not owner) or owner == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    table.insert(taken, i)
    table.insert(taken, owner)
  end
end
return taken
";

/// Deletes the claims `KEYS` that `ARGV[1]` holds.
const RELEASE: &str = r"
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
  end
end
return 0
";

/// The key of a room's claim.
fn room_key(room: &RoomId) -> String {
    Cluster::key(&["room", room.as_str()])
}

impl RedisDirectory {
    /// The directory of the cluster `registry` belongs to.
    pub fn new(registry: NodeRegistry) -> Self {
        RedisDirectory(Arc::new(Inner {
            registry,
            claims: Mutex::default(),
        }))
    }

    fn me(&self) -> &str {
        &self.0.registry.cluster().node().id
    }

    fn ttl_ms(&self) -> u64 {
        self.0.registry.cluster().config().node_timeout_ms.max(1)
    }

    /// How long a claimed room may take to open before the claim counts
    /// as unused (a join that failed after claiming).
    fn grace(&self) -> Duration {
        Duration::from_millis(2 * self.0.registry.cluster().config().heartbeat_ms)
            + Duration::from_secs(1)
    }

    fn unavailable(&self, source: ClusterError) -> DirectoryError {
        DirectoryError::Unavailable {
            source,
            retry_after_secs: self.ttl_ms().div_ceil(1000).max(1),
        }
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, Claims> {
        self.0.claims.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node a new room should open on: the least loaded live node,
    /// this one on a tie (no proxy hop), by id after that.
    fn candidate(&self) -> String {
        let me = self.me();
        let nodes = self.0.registry.cached();
        let best = nodes
            .iter()
            .min_by_key(|n: &&NodeInfo| (n.load(), n.id != me, n.id.clone()));
        match best {
            Some(n) => n.id.clone(),
            None => me.to_owned(),
        }
    }

    async fn home(&self, room: &RoomId) -> Result<RoomHome, DirectoryError> {
        if let Some(t) = self.claims().held.get_mut(room) {
            *t = Instant::now();
            return Ok(RoomHome::Here);
        }
        if self
            .claims()
            .settling_until
            .is_some_and(|t| Instant::now() < t)
        {
            return Err(DirectoryError::Settling {
                retry_after_secs: 1,
            });
        }
        let candidate = self.candidate();
        let mut redis = self.0.registry.cluster().redis();
        let owner: Option<String> = redis::Script::new(CLAIM)
            .key(room_key(room))
            .arg(&candidate)
            .arg(self.ttl_ms())
            .arg(node_key(""))
            .arg(self.me())
            .invoke_async(&mut redis)
            .await
            .map_err(|e| self.unavailable(e.into()))?;
        let Some(owner) = owner else {
            return Err(DirectoryError::Settling {
                retry_after_secs: 1,
            });
        };
        if owner == candidate {
            self.0.registry.note_placed(&owner);
        }
        if owner == self.me() {
            let mut claims = self.claims();
            claims.held.insert(room.clone(), Instant::now());
            claims.lost.remove(room);
            tracing::debug!(%room, "room claimed for this node");
            return Ok(RoomHome::Here);
        }
        self.elsewhere(owner).await
    }

    async fn elsewhere(&self, owner: String) -> Result<RoomHome, DirectoryError> {
        let node = self
            .0
            .registry
            .node(&owner)
            .await
            .map_err(|e| self.unavailable(e))?;
        match node {
            Some(n) => Ok(RoomHome::Elsewhere {
                node: owner,
                public_url: n.public_url,
            }),
            // Expired between the claim and now: the next join takes it over.
            None => Err(DirectoryError::NodeGone {
                node: owner,
                retry_after_secs: 1,
            }),
        }
    }

    async fn lookup(&self, room: &RoomId) -> Result<Option<RoomHome>, DirectoryError> {
        if self.claims().held.contains_key(room) {
            return Ok(Some(RoomHome::Here));
        }
        let mut redis = self.0.registry.cluster().redis();
        let owner: Option<String> = redis
            .get(room_key(room))
            .await
            .map_err(|e| self.unavailable(e.into()))?;
        match owner {
            None => Ok(None),
            Some(o) if o == self.me() => Ok(Some(RoomHome::Here)),
            Some(o) => match self.elsewhere(o).await {
                Ok(home) => Ok(Some(home)),
                Err(DirectoryError::NodeGone { .. }) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// On each heartbeat, with the rooms open here: renews their claims
    /// (re-claiming any that expired during an outage), and releases the
    /// claims of rooms that closed. A room whose claim another node took
    /// meanwhile keeps running here (nothing is ended by a directory
    /// change) but is no longer offered to new joins: they go to the
    /// claim's holder.
    pub async fn beat(&self, open: &[RoomInfo]) -> Result<(), ClusterError> {
        let now = Instant::now();
        let grace = self.grace();
        let (renew, release) = {
            let mut claims = self.claims();
            let open: HashSet<&RoomId> = open.iter().map(|r| &r.name).collect();
            claims.lost.retain(|r| open.contains(r));
            for r in &open {
                if !claims.lost.contains(*r) && !claims.held.contains_key(*r) {
                    claims.held.insert((*r).clone(), now);
                }
            }
            let mut release = Vec::new();
            claims.held.retain(|r, asked| {
                let keep = open.contains(r) || now.duration_since(*asked) < grace;
                if !keep {
                    release.push(r.clone());
                }
                keep
            });
            let renew: Vec<RoomId> = claims.held.keys().cloned().collect();
            (renew, release)
        };
        self.renew(&renew).await?;
        if !release.is_empty() {
            self.release(&release).await?;
            // A join that took one of them again while it was released
            // (a proxied join reopening the room here) claims it back now,
            // not a beat later.
            let again: Vec<RoomId> = {
                let claims = self.claims();
                release
                    .into_iter()
                    .filter(|r| claims.held.contains_key(r))
                    .collect()
            };
            self.renew(&again).await?;
        }
        Ok(())
    }

    /// Renews (or re-takes) the claims of `rooms`; those another node holds
    /// now are noted as lost.
    async fn renew(&self, rooms: &[RoomId]) -> Result<(), ClusterError> {
        if rooms.is_empty() {
            return Ok(());
        }
        let mut redis = self.0.registry.cluster().redis();
        let renew_script = redis::Script::new(RENEW);
        let mut script = renew_script.prepare_invoke();
        for r in rooms {
            script.key(room_key(r));
        }
        let taken: Vec<redis::Value> = script
            .arg(self.me())
            .arg(self.ttl_ms())
            .invoke_async(&mut redis)
            .await?;
        let mut claims = self.claims();
        for pair in taken.chunks(2) {
            let (Some(i), Some(owner)) = (
                pair.first()
                    .and_then(|v| redis::from_redis_value::<usize>(v.clone()).ok()),
                pair.get(1)
                    .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok()),
            ) else {
                continue;
            };
            let Some(room) = i.checked_sub(1).and_then(|i| rooms.get(i)) else {
                continue;
            };
            claims.held.remove(room);
            claims.lost.insert(room.clone());
            tracing::warn!(%room, holder = %owner, "another node claimed this room while redis was away: it keeps running here, new joins go there");
        }
        Ok(())
    }

    async fn release(&self, rooms: &[RoomId]) -> Result<(), ClusterError> {
        let mut redis = self.0.registry.cluster().redis();
        let release_script = redis::Script::new(RELEASE);
        let mut script = release_script.prepare_invoke();
        for r in rooms {
            script.key(room_key(r));
        }
        let _: i64 = script.arg(self.me()).invoke_async(&mut redis).await?;
        tracing::debug!(rooms = rooms.len(), "room claims released");
        Ok(())
    }

    /// Opens no new room for two heartbeats (and a bit): Redis lost the
    /// cluster's entries, and every node re-claims its running rooms on its
    /// next beat.
    pub fn settle(&self) {
        let beats = Duration::from_millis(2 * self.0.registry.cluster().config().heartbeat_ms);
        self.claims().settling_until = Some(Instant::now() + beats + Duration::from_millis(100));
    }

    /// Releases every claim this node holds (a graceful shutdown).
    pub async fn release_all(&self) -> Result<(), ClusterError> {
        let rooms: Vec<RoomId> = {
            let mut claims = self.claims();
            claims.lost.clear();
            claims.held.drain().map(|(r, _)| r).collect()
        };
        if rooms.is_empty() {
            return Ok(());
        }
        self.release(&rooms).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::cluster::NodeIdentity;
    use vela_config::ClusterConfig;

    async fn node(redis: &vela_testkit::Redis, id: &str) -> (NodeRegistry, RedisDirectory) {
        let config = ClusterConfig {
            redis_url: redis.url(),
            node_id: id.into(),
            public_url: format!("http://{id}.test"),
            heartbeat_ms: 100,
            node_timeout_ms: 5_000,
        };
        let identity = NodeIdentity::from_config(&config, "127.0.0.1:1".parse().unwrap());
        let cluster = Cluster::connect(&config, identity).await.expect("connect");
        let registry = NodeRegistry::new(cluster);
        registry.register(0, 0).await.expect("register");
        (registry.clone(), RedisDirectory::new(registry))
    }

    /// `registry`'s own entry, idle.
    fn idle(registry: &NodeRegistry) -> NodeInfo {
        NodeInfo {
            id: registry.cluster().node().id.clone(),
            public_url: registry.cluster().node().public_url.clone(),
            rooms: 0,
            participants: 0,
            started_at: 0,
            heartbeat_at: 0,
        }
    }

    fn room(name: &str) -> RoomId {
        RoomId::new(name).unwrap()
    }

    fn info(name: &str) -> RoomInfo {
        RoomInfo {
            name: room(name),
            num_participants: 1,
            num_publishers: 0,
            num_tracks: 0,
            max_participants: 0,
            empty_timeout_secs: None,
            metadata: String::new(),
            age_secs: 0,
        }
    }

    #[tokio::test]
    async fn concurrent_first_claims_agree_and_a_closed_room_is_released() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let redis = vela_testkit::Redis::start();
            let (_, a) = node(&redis, "a").await;
            let (rb, b) = node(&redis, "b").await;
            for i in 0..50 {
                let r = room(&format!("r{i}"));
                let (ha, hb) = tokio::join!(a.home(&r), b.home(&r));
                let (ha, hb) = (ha.unwrap(), hb.unwrap());
                // Exactly one says Here, the other names it.
                match (&ha, &hb) {
                    (RoomHome::Here, RoomHome::Elsewhere { node, .. }) => assert_eq!(node, "a"),
                    (RoomHome::Elsewhere { node, public_url }, RoomHome::Here) => {
                        assert_eq!(node, "b");
                        assert_eq!(public_url, "http://b.test");
                    }
                    other => panic!("{r}: {other:?}"),
                }
            }
            // A room open on `a` keeps its claim over beats; once closed it
            // is released after the grace and `b` may take it.
            let r = room("kept");
            assert_eq!(a.home(&r).await.unwrap(), RoomHome::Here);
            a.beat(&[info("kept")]).await.unwrap();
            assert!(matches!(
                b.home(&r).await.unwrap(),
                RoomHome::Elsewhere { .. }
            ));
            tokio::time::sleep(a.grace() + Duration::from_millis(50)).await;
            a.beat(&[]).await.unwrap();
            // (No heartbeat runs here: `b` renews its entry by hand.)
            rb.register(0, 0).await.unwrap();
            assert_eq!(b.lookup(&r).await.unwrap(), None);
            assert_eq!(b.home(&r).await.unwrap(), RoomHome::Here);
        })
        .await
        .expect("timed out");
    }

    /// `dir.home(room)` once Redis answers again (after a restart the
    /// connection comes back by itself, commands failing meanwhile).
    async fn home_when_up(dir: &RedisDirectory, room: &RoomId) -> Result<RoomHome, DirectoryError> {
        for _ in 0..50 {
            match dir.home(room).await {
                Err(DirectoryError::Unavailable { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
        dir.home(room).await
    }

    #[tokio::test]
    async fn after_redis_lost_its_data_running_rooms_are_claimed_again_before_new_ones() {
        tokio::time::timeout(Duration::from_secs(30), async {
            let mut redis = vela_testkit::Redis::start();
            let (ra, a) = node(&redis, "a").await;
            let (rb, b) = node(&redis, "b").await;
            let r = room("r");
            assert_eq!(a.home(&r).await.unwrap(), RoomHome::Here);
            // Redis restarts empty: `a`'s claim is gone.
            redis.restart();
            // `b` has not beaten since: it claims nothing (its own entry
            // is missing).
            let early = home_when_up(&b, &r).await;
            assert!(
                matches!(early, Err(DirectoryError::Settling { .. })),
                "{early:?}"
            );
            // `b` beats: it finds its entry was gone, and waits two beats.
            crate::services::node_registry::renew(&rb, &b, &[])
                .await
                .unwrap();
            let settling = b.home(&r).await;
            assert!(
                matches!(settling, Err(DirectoryError::Settling { .. })),
                "{settling:?}"
            );
            // `a` beats with its room open: the claim is back, and once `b`
            // has settled it finds the room on `a`.
            // (Its connection comes back by itself, a command or two later.)
            let mut renewed = Err(None);
            for _ in 0..50 {
                match crate::services::node_registry::renew(&ra, &a, &[info("r")]).await {
                    Ok(()) => {
                        renewed = Ok(());
                        break;
                    }
                    Err(e) => renewed = Err(Some(e)),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            renewed.unwrap();
            tokio::time::sleep(Duration::from_millis(400)).await;
            let found = b.home(&r).await.unwrap();
            assert!(
                matches!(&found, RoomHome::Elsewhere { node, .. } if node == "a"),
                "{found:?}"
            );
            // And new rooms open again.
            assert_eq!(b.home(&room("fresh")).await.unwrap(), RoomHome::Here);
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn a_dead_nodes_rooms_are_taken_over_and_a_lost_claim_is_noticed() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let redis = vela_testkit::Redis::start();
            let (ra, a) = node(&redis, "a").await;
            let (_, b) = node(&redis, "b").await;
            let r = room("r");
            assert_eq!(a.home(&r).await.unwrap(), RoomHome::Here);
            // `a` is gone (its entry removed, its claim not yet expired):
            // `b` takes the room over at once.
            ra.deregister().await.unwrap();
            assert_eq!(b.home(&r).await.unwrap(), RoomHome::Here);
            // `a` still runs the room; its beat finds the claim taken and
            // stops offering it, without ending anything.
            a.beat(&[info("r")]).await.unwrap();
            assert!(a.claims().lost.contains(&r));
            ra.register(0, 0).await.unwrap();
            assert!(
                matches!(a.home(&r).await.unwrap(), RoomHome::Elsewhere { node, .. } if node == "b")
            );
            // A new room goes to the least loaded node in `a`'s cached
            // list, `c`; once `c` is gone (the cache a beat old), to `a`.
            let (rc, _) = node(&redis, "c").await;
            ra.set_cached(vec![
                NodeInfo {
                    rooms: 5,
                    ..idle(&ra)
                },
                idle(&rc),
            ]);
            let home = a.home(&room("new1")).await.unwrap();
            assert!(
                matches!(&home, RoomHome::Elsewhere { node, .. } if node == "c"),
                "{home:?}"
            );
            rc.deregister().await.unwrap();
            assert_eq!(a.home(&room("new2")).await.unwrap(), RoomHome::Here);
        })
        .await
        .expect("timed out");
    }
}
