//! Which nodes serve each room: the room directory. Within a node, which
//! media shard holds a room is the media handle's placement (`vela_media`);
//! this is the level above it: with one node every room is here, in a
//! cluster (issues 18, 19) Redis says where.
//!
//! A room may be held by several nodes at once when the cluster spreads
//! rooms (`cluster.max_participants_per_node` above 0, which needs the
//! media relay): a join goes to a node of the room that has room to spare,
//! else to the least loaded live node, which joins the room's set; the
//! nodes holding a room link their media through the relay. With the
//! threshold at 0 a room is held by exactly one node, as before.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vela_media::MediaHandle;
use vela_media::core::{RoomId, RoomInfo};

use crate::services::cluster::{Cluster, ClusterError};
use crate::services::node_registry::{NodeRegistry, node_key};

/// Where rooms are served, asked once per join (a room socket, a WHIP or
/// WHEP session, a room created through the API), never per packet.
/// Picked at start in `server`. An enum, not a trait object: one match per
/// join, nothing boxed.
///
/// What every variant guarantees (and a remote one must keep):
/// - without spreading, a room is open on at most one node: concurrent
///   first joins on two nodes agree on one home (an atomic placement),
///   chosen by load; with spreading, a room's nodes are a set that every
///   node sees the same, and a node joins it only when the room's nodes
///   are full (or a node placed a join there);
/// - every node finds the nodes of an open room, for as long as the room is
///   open there (they renew their membership while it lives);
/// - a node leaves a room's set when its part of the room closes, or when
///   it stops renewing (a crash), so the room may continue or reopen
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
    /// Where a join to the room is served, placing it (see the module's
    /// documentation) and adding the chosen node to the room's set. A
    /// caller serves a room only when the answer is [`RoomHome::Here`];
    /// what it does with a room elsewhere (proxy or redirect) is the
    /// transport's choice.
    pub async fn home(&self, room: &RoomId) -> Result<RoomHome, DirectoryError> {
        match self {
            RoomDirectory::Local => Ok(RoomHome::Here),
            RoomDirectory::Redis(d) => d.place(room, false).await,
        }
    }

    /// [`RoomDirectory::home`] for a join another node placed here (a
    /// proxied room socket): served here when this node is in the room's
    /// set, which the placing node added it to, whatever this node's
    /// possibly newer view of the load says (no join bounces between two
    /// nodes whose views differ by a heartbeat).
    pub async fn home_placed(&self, room: &RoomId) -> Result<RoomHome, DirectoryError> {
        match self {
            RoomDirectory::Local => Ok(RoomHome::Here),
            RoomDirectory::Redis(d) => d.place(room, true).await,
        }
    }

    /// `node` could not be reached a moment ago: see
    /// [`RedisDirectory::unreachable`].
    pub fn unreachable(&self, node: &str) {
        if let RoomDirectory::Redis(d) = self {
            d.unreachable(node);
        }
    }

    /// The cluster's directory, if this is one.
    pub fn redis(&self) -> Option<&RedisDirectory> {
        match self {
            RoomDirectory::Local => None,
            RoomDirectory::Redis(d) => Some(d),
        }
    }

    /// A node serving an open room (this one if it does, else the least
    /// loaded of its nodes), placing nothing: `None` when it is open
    /// nowhere (or its nodes are gone).
    pub async fn lookup(&self, room: &RoomId) -> Result<Option<RoomHome>, DirectoryError> {
        match self {
            RoomDirectory::Local => Ok(Some(RoomHome::Here)),
            RoomDirectory::Redis(d) => d.lookup(room).await,
        }
    }
}

/// The directory of a cluster. A room's set of nodes is the hash
/// `vela:room:<name>`: node id -> when its membership expires (ms, Redis's
/// clock), renewed by each member on its heartbeat
/// ([`RedisDirectory::beat`]); a member whose registry entry is gone (a
/// crash) or whose membership expired is dropped by whoever reads the set
/// next. `vela:room_started:<name>` marks a room whose `room_started`
/// webhook went out, so that it goes out once per room across nodes, and
/// `room_finished` once, from the last node to close its part
/// ([`RedisDirectory::opened`], [`RedisDirectory::closed`]).
///
/// Rooms this node holds are answered from memory, without Redis: joins to
/// a running room go on while Redis is away; only placing a join elsewhere
/// (or opening a room) needs it.
#[derive(Debug, Clone)]
pub struct RedisDirectory(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: NodeRegistry,
    claims: Mutex<Claims>,
    /// Told which other nodes hold each room (the relay links them).
    media: Option<MediaHandle>,
    /// Held while telling the media a room's other nodes.
    telling: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct Claims {
    /// Rooms whose set holds this node, with when a join last asked for
    /// them (a room placed here but not yet open is kept for a moment).
    held: HashMap<RoomId, Instant>,
    /// Without spreading: rooms open here whose set another node took
    /// (after this node lost Redis for longer than the node timeout): left
    /// running, not renewed.
    lost: HashSet<RoomId>,
    /// Until then no new room is placed (Redis lost its data: the nodes
    /// are re-claiming their running rooms).
    settling_until: Option<Instant>,
    /// The other nodes of each room held here, as last told to the media.
    told: HashMap<RoomId, Vec<String>>,
    /// Nodes this node could not reach a moment ago (a proxied socket's
    /// connection refused: a node killed, its entry not yet expired), with
    /// when: left out of placements for a node timeout.
    unreachable: HashMap<String, Instant>,
    /// Rooms whose part here closed, and when: a heartbeat with a list of
    /// open rooms taken before that does not add them back.
    closed: HashMap<RoomId, Instant>,
}

/// Shared by the scripts: `now` (ms, Redis's clock) and `live(key,
/// prefix)`, the live members of a room's set (membership unexpired, the
/// node's registry entry present), dropping the others from it.
const LIVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function live(key, prefix)
  local members = {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local node = flat[i]
    if (tonumber(flat[i + 1]) or 0) >= now and redis.call('EXISTS', prefix .. node) == 1 then
      table.insert(members, node)
    else
      redis.call('HDEL', key, node)
    end
  end
  return members
end
";

/// Places a join to the room whose set is `KEYS[1]` (`KEYS[2]`: the
/// registry's set of node ids). `ARGV`: the registry's
/// key prefix, this node, the membership's lifetime (ms), the threshold
/// (0 = none: a member always takes the join), `1` when the join was placed
/// here by another node (a member then takes it itself), the number of
/// nodes to leave out (this node could not reach them a moment ago) and
/// their ids, then triples of (node, participants, rooms) as this node last
/// saw them.
///
/// A member with fewer participants than the threshold takes the join (the
/// least loaded: participants, then rooms, then this node, then by id);
/// else the least loaded live node (one this node has not seen yet counts
/// as idle), which joins the set. Answers `{node, added ('1'/'0'), members...}`, or
/// nil without placing when this node's own entry is missing (Redis lost
/// its data and this node has not beaten since: another node's running
/// room may not be placed again yet).
const PLACE: &str = r"
local prefix, me, ttl, max = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', prefix .. me) == 0 then
  return false
end
local excluded = {}
local first = 7 + tonumber(ARGV[6])
for i = 7, first - 1 do
  excluded[ARGV[i]] = true
end
local load, rooms = {}, {}
for i = first, #ARGV, 3 do
  load[ARGV[i]] = tonumber(ARGV[i + 1]) or 0
  rooms[ARGV[i]] = tonumber(ARGV[i + 2]) or 0
end
if load[me] == nil then
  load[me], rooms[me] = 0, 0
end
local function better(a, b)
  if load[a] ~= load[b] then
    return load[a] < load[b]
  end
  if rooms[a] ~= rooms[b] then
    return rooms[a] < rooms[b]
  end
  if (a == me) ~= (b == me) then
    return a == me
  end
  return a < b
end
local members = {}
for _, node in ipairs(live(KEYS[1], prefix)) do
  if not excluded[node] then
    table.insert(members, node)
  end
end
local member = {}
for _, node in ipairs(members) do
  member[node] = true
  if load[node] == nil then
    load[node], rooms[node] = 0, 0
  end
end
local best = nil
if ARGV[5] == '1' and member[me] then
  best = me
end
if best == nil then
  for _, node in ipairs(members) do
    if (max == 0 or load[node] < max) and (best == nil or better(node, best)) then
      best = node
    end
  end
end
if best == nil then
  local candidates = redis.call('SMEMBERS', KEYS[2])
  table.insert(candidates, me)
  for _, node in ipairs(candidates) do
    if load[node] == nil then
      load[node], rooms[node] = 0, 0
    end
    if (best == nil or better(node, best)) and not excluded[node]
      and (member[node] or node == me or redis.call('EXISTS', prefix .. node) == 1) then
      best = node
    end
  end
end
local added = '0'
if not member[best] then
  redis.call('HSET', KEYS[1], best, now + ttl)
  table.insert(members, best)
  added = '1'
end
redis.call('PEXPIRE', KEYS[1], ttl)
return {best, added, unpack(members)}
";

/// Renews this node's membership of the rooms whose sets and start marks
/// are `KEYS` (in pairs); `ARGV`: the registry's key prefix, this node,
/// the lifetime (ms), `1` when rooms do not spread. Answers, per room,
/// `{'held' or 'lost', members...}`: without spreading, a room whose set
/// another live node holds while this node's membership lapsed (an outage
/// longer than the node timeout) is lost, not taken back.
const RENEW: &str = r"
local prefix, me, ttl, exclusive = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1'
local out = {}
for i = 1, #KEYS, 2 do
  local key, started = KEYS[i], KEYS[i + 1]
  local was = (tonumber(redis.call('HGET', key, me)) or 0) >= now
  local members = live(key, prefix)
  local others, mine = false, false
  for _, node in ipairs(members) do
    if node == me then mine = true else others = true end
  end
  if exclusive and others and not was then
    table.insert(out, {'lost', unpack(members)})
  else
    redis.call('HSET', key, me, now + ttl)
    redis.call('PEXPIRE', key, ttl)
    redis.call('PEXPIRE', started, ttl)
    if not mine then
      table.insert(members, me)
    end
    table.insert(out, {'held', unpack(members)})
  end
end
return out
";

/// Takes this node (`ARGV[1]`) out of the sets `KEYS`.
const RELEASE: &str = r"
for _, key in ipairs(KEYS) do
  redis.call('HDEL', key, ARGV[1])
  if redis.call('HLEN', key) == 0 then
    redis.call('DEL', key)
  end
end
return 0
";

/// The room (`KEYS[1]`, its start mark `KEYS[2]`) opened on this node
/// (`ARGV[2]`; `ARGV[1]` the registry's prefix, `ARGV[3]` the lifetime):
/// it is a member; answers 1 when the room was open nowhere else (its
/// start is this node's to report).
const OPENED: &str = r"
local prefix, me, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
redis.call('HSET', KEYS[1], me, now + ttl)
redis.call('PEXPIRE', KEYS[1], ttl)
if redis.call('SET', KEYS[2], me, 'NX', 'PX', ttl) then
  return 1
end
return 0
";

/// The room's part on this node closed: it leaves the set; answers 1 when
/// no live node holds the room any more (its end is this node's to
/// report: the start mark goes), 0 when others still do.
const CLOSED: &str = r"
local prefix, me = ARGV[1], ARGV[2]
redis.call('HDEL', KEYS[1], me)
if #live(KEYS[1], prefix) > 0 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return 1
";

/// After a node closed its part while others held the room: answers 1
/// (once: the start mark goes) when none of them holds it any more and
/// nobody reported its end (they died meanwhile).
const FINISH_IF_EMPTY: &str = r"
if #live(KEYS[1], ARGV[1]) > 0 then
  return 0
end
redis.call('DEL', KEYS[1])
return redis.call('DEL', KEYS[2])
";

/// The live members of a room's set, `KEYS[1]` (`ARGV[1]`: the prefix).
const MEMBERS: &str = r"
return live(KEYS[1], ARGV[1])
";

/// A script with the shared part in front.
fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{LIVE}{body}"))
}

/// The key of a room's set of nodes.
fn room_key(room: &RoomId) -> String {
    Cluster::key(&["room", room.as_str()])
}

/// The key of a room's start mark (its `room_started` went out).
fn started_key(room: &RoomId) -> String {
    Cluster::key(&["room_started", room.as_str()])
}

/// Another node holding a room, as the media relay links to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPeer {
    /// Its id (`cluster.node_id`).
    pub node_id: String,
    /// Where its relay listens (`host:port`, as it advertises it).
    pub relay_addr: String,
}

/// Tells this node's media which other nodes hold `room` (replacing what
/// it was told before; empty: none): its shards holding the room link to
/// theirs (`MediaHandle::relay_room`). A peer whose address does not
/// resolve is left out (and logged): the next change, or heartbeat after
/// a failure, tries again.
async fn link_room(media: &MediaHandle, room: &RoomId, peers: Vec<RelayPeer>) -> bool {
    let mut nodes = Vec::with_capacity(peers.len());
    let mut complete = true;
    for p in peers {
        let addr = match p.relay_addr.parse::<std::net::SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => tokio::net::lookup_host(p.relay_addr.as_str())
                .await
                .ok()
                .and_then(|mut a| a.next()),
        };
        match addr {
            Some(relay_addr) => nodes.push(vela_media::NodePeer {
                node_id: p.node_id,
                relay_addr,
            }),
            None => {
                complete = false;
                tracing::warn!(%room, node = %p.node_id, addr = %p.relay_addr, "cannot resolve a node's relay address: not linked to it");
            }
        }
    }
    tracing::debug!(%room, peers = ?nodes, "the room's other nodes");
    match media.relay_room(room, nodes).await {
        Ok(()) => complete,
        Err(vela_media::MediaError::NoRelay) => {
            tracing::debug!(%room, "this node runs no media relay: the room's other nodes are not linked");
            true
        }
        Err(e) => {
            tracing::warn!(%room, error = %e, "cannot tell the media the room's other nodes");
            false
        }
    }
}

impl RedisDirectory {
    /// The directory of the cluster `registry` belongs to. With `media`,
    /// the media is told which other nodes hold each room held here.
    pub fn new(registry: NodeRegistry, media: Option<MediaHandle>) -> Self {
        RedisDirectory(Arc::new(Inner {
            registry,
            claims: Mutex::default(),
            media,
            telling: tokio::sync::Mutex::new(()),
        }))
    }

    fn me(&self) -> &str {
        &self.0.registry.cluster().node().id
    }

    fn ttl_ms(&self) -> u64 {
        self.0.registry.cluster().config().node_timeout_ms.max(1)
    }

    /// The participants per node past which a room spreads (0: never).
    fn max(&self) -> u32 {
        self.0.registry.cluster().config().max_participants_per_node
    }

    /// How long a room placed here may take to open before its membership
    /// counts as unused (a join that failed after placing).
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

    /// Whether this node takes another participant of a room it holds
    /// without asking Redis: always without spreading, else below the
    /// threshold (as of the last heartbeat and the joins placed since).
    fn has_room(&self) -> bool {
        let max = self.max();
        max == 0
            || self
                .0
                .registry
                .cached_node(self.me())
                .is_none_or(|n| n.participants < u64::from(max))
    }

    async fn place(&self, room: &RoomId, placed: bool) -> Result<RoomHome, DirectoryError> {
        let here = {
            let mut claims = self.claims();
            match claims.held.get_mut(room) {
                Some(t) => {
                    *t = Instant::now();
                    true
                }
                None => false,
            }
        };
        if here && (placed || self.has_room()) {
            self.0.registry.note_placed(self.me(), false);
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
        let mut redis = self.0.registry.cluster().redis();
        let place = script(PLACE);
        let mut invoke = place.prepare_invoke();
        invoke
            .key(room_key(room))
            .key(crate::services::node_registry::nodes_key())
            .arg(node_key(""))
            .arg(self.me())
            .arg(self.ttl_ms())
            .arg(self.max())
            .arg(if placed { "1" } else { "0" });
        let excluded = self.unreachable_nodes();
        invoke.arg(excluded.len());
        for n in excluded {
            invoke.arg(n);
        }
        for n in self.0.registry.cached() {
            invoke.arg(n.id).arg(n.participants).arg(n.rooms);
        }
        let answer: Option<Vec<String>> = match invoke.invoke_async(&mut redis).await {
            Ok(a) => a,
            // A room held here that is full: with Redis away its next
            // participants cannot be placed elsewhere, so they stay here
            // (past the threshold) rather than being refused.
            Err(e) if here => {
                tracing::debug!(%room, error = %e, "redis not answering: the join stays on this node");
                self.0.registry.note_placed(self.me(), false);
                return Ok(RoomHome::Here);
            }
            Err(e) => return Err(self.unavailable(e.into())),
        };
        let Some(mut answer) = answer.filter(|a| a.len() >= 2) else {
            return Err(DirectoryError::Settling {
                retry_after_secs: 1,
            });
        };
        let members = answer.split_off(2);
        let added = answer[1] == "1";
        let node = answer.swap_remove(0);
        self.0.registry.note_placed(&node, added);
        if node == self.me() {
            {
                let mut claims = self.claims();
                claims.held.insert(room.clone(), Instant::now());
                claims.lost.remove(room);
                claims.closed.remove(room);
            }
            tracing::debug!(%room, nodes = members.len(), "room placed on this node");
            self.tell_media(room, members).await;
            return Ok(RoomHome::Here);
        }
        if added {
            tracing::debug!(%room, %node, "room spread to another node");
        }
        self.elsewhere(node).await
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
            // Expired between the placement and now: the next join places
            // it elsewhere.
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
        let members = self.members(room).await.map_err(|e| self.unavailable(e))?;
        if members.iter().any(|m| m == self.me()) {
            return Ok(Some(RoomHome::Here));
        }
        let load = |id: &str| {
            self.0
                .registry
                .cached_node(id)
                .map_or(0, |n| n.participants)
        };
        let Some(node) = members.into_iter().min_by_key(|m| (load(m), m.clone())) else {
            return Ok(None);
        };
        match self.elsewhere(node).await {
            Ok(home) => Ok(Some(home)),
            Err(DirectoryError::NodeGone { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The live nodes holding `room`, read from Redis now.
    pub async fn members(&self, room: &RoomId) -> Result<Vec<String>, ClusterError> {
        let mut redis = self.0.registry.cluster().redis();
        let mut members: Vec<String> = script(MEMBERS)
            .key(room_key(room))
            .arg(node_key(""))
            .invoke_async(&mut redis)
            .await?;
        members.sort();
        Ok(members)
    }

    /// Tells the media which other nodes hold `room` when that changed
    /// since it was last told.
    async fn tell_media(&self, room: &RoomId, members: Vec<String>) {
        let mut others: Vec<String> = members.into_iter().filter(|m| m != self.me()).collect();
        others.sort();
        others.dedup();
        // One at a time: the media gets the lists in the order `told`
        // records them, so `told` is what the media has (a list from a
        // placement racing a heartbeat's newer one would otherwise leave
        // the media with the older list while `told` shows the newer, never
        // corrected). An older list sent last is corrected on the next
        // heartbeat, whose list then differs from `told`.
        let _one = self.0.telling.lock().await;
        {
            let mut claims = self.claims();
            if claims.told.get(room) == Some(&others) {
                return;
            }
            if !claims.held.contains_key(room) {
                return;
            }
            claims.told.insert(room.clone(), others.clone());
        }
        let mut peers = Vec::with_capacity(others.len());
        for id in others {
            // A node that joined since the last heartbeat is read from Redis.
            match self.0.registry.node(&id).await {
                Ok(Some(n)) if !n.relay_addr.is_empty() => peers.push(RelayPeer {
                    node_id: n.id,
                    relay_addr: n.relay_addr,
                }),
                Ok(Some(_)) => {
                    tracing::warn!(%room, node = %id, "a node holding this room runs no media relay: its participants are not linked with this node's")
                }
                Ok(None) => {}
                Err(e) => {
                    // Told again on the next heartbeat.
                    self.claims().told.remove(room);
                    tracing::debug!(%room, error = %e, "cannot read a node of this room");
                    return;
                }
            }
        }
        if let Some(media) = &self.0.media
            && !link_room(media, room, peers).await
        {
            // Told again on the next heartbeat.
            self.claims().told.remove(room);
        }
    }

    /// `node` could not be reached a moment ago (a proxied room socket's
    /// connection failed): joins are not placed on it for a node timeout,
    /// by when its registry entry has expired if it died, so that a page
    /// rejoining at once after its node was killed lands on a live node.
    pub fn unreachable(&self, node: &str) {
        if node == self.me() {
            return;
        }
        self.claims()
            .unreachable
            .insert(node.to_owned(), Instant::now());
    }

    /// The nodes left out of placements now.
    fn unreachable_nodes(&self) -> Vec<String> {
        let ttl = Duration::from_millis(self.ttl_ms());
        let mut claims = self.claims();
        claims.unreachable.retain(|_, at| at.elapsed() < ttl);
        claims.unreachable.keys().cloned().collect()
    }

    /// A join placed as any (tests).
    #[cfg(test)]
    async fn home(&self, room: &RoomId) -> Result<RoomHome, DirectoryError> {
        self.place(room, false).await
    }

    /// A join another node placed here (tests).
    #[cfg(test)]
    async fn home_placed(&self, room: &RoomId) -> Result<RoomHome, DirectoryError> {
        self.place(room, true).await
    }

    /// The other nodes of `room` the media was last told about (tests).
    #[cfg(test)]
    fn told(&self, room: &RoomId) -> Option<Vec<String>> {
        self.claims().told.get(room).cloned()
    }

    /// On each heartbeat, with the rooms open here (listed at `listed`):
    /// renews this node's membership of their sets (re-taking any that
    /// expired during an outage), leaves the sets of rooms that closed, and
    /// tells the media about changes in each room's other nodes. Without
    /// spreading, a room whose set another node took meanwhile keeps
    /// running here (nothing is ended by a directory change) but is no
    /// longer offered to new joins: they go to that node.
    pub async fn beat(&self, open: &[RoomInfo], listed: Instant) -> Result<(), ClusterError> {
        let now = Instant::now();
        let grace = self.grace();
        let (renew, release) = {
            let mut claims = self.claims();
            let open: HashSet<&RoomId> = open.iter().map(|r| &r.name).collect();
            claims.lost.retain(|r| open.contains(r));
            claims
                .closed
                .retain(|_, at| now.duration_since(*at) < grace);
            for r in &open {
                let closed_since = claims.closed.get(*r).is_some_and(|at| *at > listed);
                if !claims.lost.contains(*r) && !claims.held.contains_key(*r) && !closed_since {
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
            for r in &release {
                claims.told.remove(r);
            }
            let renew: Vec<RoomId> = claims.held.keys().cloned().collect();
            (renew, release)
        };
        self.renew(&renew).await?;
        if !release.is_empty() {
            self.release(&release).await?;
            // A join that placed one of them here again while it was
            // released takes it back now, not a beat later.
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

    /// Renews (or re-takes) this node's membership of `rooms`; without
    /// spreading, those another node holds now are noted as lost. Tells the
    /// media about each room's other nodes.
    async fn renew(&self, rooms: &[RoomId]) -> Result<(), ClusterError> {
        if rooms.is_empty() {
            return Ok(());
        }
        let mut redis = self.0.registry.cluster().redis();
        let renew_script = script(RENEW);
        let mut invoke = renew_script.prepare_invoke();
        for r in rooms {
            invoke.key(room_key(r)).key(started_key(r));
        }
        let answers: Vec<Vec<String>> = invoke
            .arg(node_key(""))
            .arg(self.me())
            .arg(self.ttl_ms())
            .arg(if self.max() == 0 { "1" } else { "0" })
            .invoke_async(&mut redis)
            .await?;
        for (room, mut answer) in rooms.iter().zip(answers) {
            if answer.is_empty() {
                continue;
            }
            let members = answer.split_off(1);
            if answer[0] == "lost" {
                {
                    let mut claims = self.claims();
                    claims.held.remove(room);
                    claims.told.remove(room);
                    claims.lost.insert(room.clone());
                }
                tracing::warn!(%room, holders = ?members, "another node took this room while redis was away: it keeps running here, new joins go there");
                continue;
            }
            self.tell_media(room, members).await;
        }
        Ok(())
    }

    async fn release(&self, rooms: &[RoomId]) -> Result<(), ClusterError> {
        let mut redis = self.0.registry.cluster().redis();
        let release_script = redis::Script::new(RELEASE);
        let mut invoke = release_script.prepare_invoke();
        for r in rooms {
            invoke.key(room_key(r));
        }
        let _: i64 = invoke.arg(self.me()).invoke_async(&mut redis).await?;
        tracing::debug!(rooms = rooms.len(), "rooms left");
        Ok(())
    }

    /// The room opened on this node's media (its `RoomStarted`): this node
    /// is in its set, and the answer says whether the room was open on no
    /// other node, so that this node reports its start (once per room
    /// across the cluster).
    pub async fn opened(&self, room: &RoomId) -> Result<bool, ClusterError> {
        {
            let mut claims = self.claims();
            claims.closed.remove(room);
            if !claims.lost.contains(room) {
                claims.held.entry(room.clone()).or_insert_with(Instant::now);
            }
        }
        let mut redis = self.0.registry.cluster().redis();
        let first: i64 = script(OPENED)
            .key(room_key(room))
            .key(started_key(room))
            .arg(node_key(""))
            .arg(self.me())
            .arg(self.ttl_ms())
            .invoke_async(&mut redis)
            .await?;
        Ok(first == 1)
    }

    /// The room's part on this node closed (its `RoomFinished`): this node
    /// leaves its set at once, and the answer says whether no other node
    /// holds the room, so that this node reports its end.
    pub async fn closed(&self, room: &RoomId) -> Result<bool, ClusterError> {
        {
            let mut claims = self.claims();
            claims.held.remove(room);
            claims.told.remove(room);
            claims.closed.insert(room.clone(), Instant::now());
        }
        let mut redis = self.0.registry.cluster().redis();
        let last: i64 = script(CLOSED)
            .key(room_key(room))
            .key(started_key(room))
            .arg(node_key(""))
            .arg(self.me())
            .invoke_async(&mut redis)
            .await?;
        Ok(last == 1)
    }

    /// After [`RedisDirectory::closed`] left others holding the room: true
    /// (on one node only) when they all died since without reporting its
    /// end. Asked once, a node timeout later.
    pub async fn finished_without_report(&self, room: &RoomId) -> Result<bool, ClusterError> {
        let mut redis = self.0.registry.cluster().redis();
        let gone: i64 = script(FINISH_IF_EMPTY)
            .key(room_key(room))
            .key(started_key(room))
            .arg(node_key(""))
            .invoke_async(&mut redis)
            .await?;
        Ok(gone == 1)
    }

    /// How long after this node closed its part to ask
    /// [`RedisDirectory::finished_without_report`].
    pub fn recheck_after(&self) -> Duration {
        Duration::from_millis(self.ttl_ms()) + Duration::from_millis(200)
    }

    /// Places no new room for two heartbeats (and a bit): Redis lost the
    /// cluster's entries, and every node re-claims its running rooms on its
    /// next beat.
    pub fn settle(&self) {
        let beats = Duration::from_millis(2 * self.0.registry.cluster().config().heartbeat_ms);
        self.claims().settling_until = Some(Instant::now() + beats + Duration::from_millis(100));
    }

    /// Leaves every room's set (a graceful shutdown).
    pub async fn release_all(&self) -> Result<(), ClusterError> {
        let rooms: Vec<RoomId> = {
            let mut claims = self.claims();
            claims.lost.clear();
            claims.told.clear();
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
    use crate::services::node_registry::NodeInfo;
    use vela_config::ClusterConfig;

    async fn node(redis: &vela_testkit::Redis, id: &str) -> (NodeRegistry, RedisDirectory) {
        spreading(redis, id, 0).await
    }

    /// A node whose rooms spread past `max` participants per node.
    async fn spreading(
        redis: &vela_testkit::Redis,
        id: &str,
        max: u32,
    ) -> (NodeRegistry, RedisDirectory) {
        let config = ClusterConfig {
            redis_url: redis.url(),
            node_id: id.into(),
            public_url: format!("http://{id}.test"),
            heartbeat_ms: 100,
            node_timeout_ms: 5_000,
            max_participants_per_node: max,
            ..ClusterConfig::default()
        };
        let identity = NodeIdentity::from_config(&config, "127.0.0.1:1".parse().unwrap());
        let cluster = Cluster::connect(&config, identity).await.expect("connect");
        let registry = NodeRegistry::new(cluster).with_relay(1, format!("{id}.relay.test:7890"));
        registry.register(0, 0).await.expect("register");
        (registry.clone(), RedisDirectory::new(registry, None))
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
            relay_addr: String::new(),
            number: 0,
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
            a.beat(&[info("kept")], Instant::now()).await.unwrap();
            assert!(matches!(
                b.home(&r).await.unwrap(),
                RoomHome::Elsewhere { .. }
            ));
            tokio::time::sleep(a.grace() + Duration::from_millis(50)).await;
            a.beat(&[], Instant::now()).await.unwrap();
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
            crate::services::node_registry::renew(&rb, &b, &[], 0, Instant::now())
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
                match crate::services::node_registry::renew(
                    &ra,
                    &a,
                    &[info("r")],
                    1,
                    Instant::now(),
                )
                .await
                {
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
            a.beat(&[info("r")], Instant::now()).await.unwrap();
            assert!(a.claims().lost.contains(&r));
            ra.register(0, 0).await.unwrap();
            assert!(
                matches!(a.home(&r).await.unwrap(), RoomHome::Elsewhere { node, .. } if node == "b")
            );
            // A new room goes to the least loaded node in `a`'s cached
            // list, `c`; once `c` is gone (the cache a beat old), to `a`.
            // (`b`, busier, is in the list too; a live node missing from it
            // would count as idle.)
            let (rc, _) = node(&redis, "c").await;
            let rb = b.0.registry.clone();
            ra.set_cached(vec![
                NodeInfo {
                    rooms: 5,
                    ..idle(&ra)
                },
                NodeInfo {
                    rooms: 6,
                    ..idle(&rb)
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

    /// `registry`'s cached view: each node with `participants`, counted
    /// after every join placed so far (joins placed from now on add to it).
    fn loads(registry: &NodeRegistry, nodes: &[(&NodeRegistry, u64)]) {
        registry.set_cached(
            nodes
                .iter()
                .map(|(r, participants)| NodeInfo {
                    participants: *participants,
                    heartbeat_at: crate::domain::ids::now_ms(),
                    ..idle(r)
                })
                .collect(),
        );
    }

    #[tokio::test]
    async fn a_full_rooms_next_joins_spread_to_the_least_loaded_node_and_stay_there() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let redis = vela_testkit::Redis::start();
            let (ra, a) = spreading(&redis, "a", 3).await;
            let (rb, b) = spreading(&redis, "b", 3).await;
            let (rc, c) = spreading(&redis, "c", 3).await;
            let r = room("big");
            // Opens on `a` (all idle: this node on a tie).
            loads(&ra, &[(&ra, 0), (&rb, 0), (&rc, 0)]);
            assert_eq!(a.home(&r).await.unwrap(), RoomHome::Here);
            assert_eq!(a.told(&r), Some(vec![]));
            // Each join counts: three fit on `a`, from memory.
            assert_eq!(a.home(&r).await.unwrap(), RoomHome::Here);
            assert_eq!(a.home(&r).await.unwrap(), RoomHome::Here);
            assert_eq!(ra.cached_node("a").unwrap().participants, 3);
            // The fourth goes to the least loaded other node, `c` (b is
            // busier), which joins the room's set. (A listing taken well
            // after the joins counts them itself.)
            tokio::time::sleep(Duration::from_millis(300)).await;
            loads(&ra, &[(&ra, 3), (&rb, 2), (&rc, 1)]);
            assert_eq!(ra.cached_node("a").unwrap().participants, 3);
            let fourth = a.home(&r).await.unwrap();
            assert!(
                matches!(&fourth, RoomHome::Elsewhere { node, public_url } if node == "c" && public_url == "http://c.test"),
                "{fourth:?}"
            );
            assert_eq!(a.members(&r).await.unwrap(), vec!["a", "c"]);
            // `c`, where the join was sent, serves it even if its own view
            // says it is full (no bouncing), and links with `a`.
            loads(&rc, &[(&ra, 3), (&rb, 2), (&rc, 9)]);
            assert_eq!(c.home_placed(&r).await.unwrap(), RoomHome::Here);
            assert_eq!(c.told(&r), Some(vec!["a".to_owned()]));
            // A join arriving at `b` goes to a member with room: `c` (as b
            // sees it), not to `b` itself.
            loads(&rb, &[(&ra, 3), (&rb, 0), (&rc, 1)]);
            assert!(matches!(b.home(&r).await.unwrap(), RoomHome::Elsewhere { node, .. } if node == "c"));
            // `a`'s heartbeat renews its membership and tells its media of `c`.
            a.beat(&[info("big")], Instant::now()).await.unwrap();
            assert_eq!(a.told(&r), Some(vec!["c".to_owned()]));
            assert_eq!(
                a.lookup(&r).await.unwrap(),
                Some(RoomHome::Here)
            );
            assert!(matches!(b.lookup(&r).await.unwrap(), Some(RoomHome::Elsewhere { .. })));
            // Every member full: the least loaded live node, `b`, joins too.
            loads(&rb, &[(&ra, 3), (&rb, 1), (&rc, 3)]);
            assert_eq!(b.home(&r).await.unwrap(), RoomHome::Here);
            assert_eq!(b.told(&r), Some(vec!["a".to_owned(), "c".to_owned()]));
            // A node `b` could not reach a moment ago takes no join: `c` is
            // left out, `a` (a member, full) is the least loaded left.
            b.unreachable("c");
            loads(&rb, &[(&ra, 3), (&rb, 5), (&rc, 0)]);
            let r2 = room("other");
            assert!(
                matches!(b.home(&r2).await.unwrap(), RoomHome::Elsewhere { node, .. } if node == "a")
            );
            // `c` dies: it leaves the room's set, and `a`'s next heartbeat
            // tells its media so (the relay link to it goes).
            rc.deregister().await.unwrap();
            a.beat(&[info("big")], Instant::now()).await.unwrap();
            assert_eq!(a.told(&r), Some(vec!["b".to_owned()]));
            assert_eq!(a.members(&r).await.unwrap(), vec!["a", "b"]);
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn a_full_room_held_here_takes_joins_while_redis_is_away_a_new_room_waits() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let mut redis = vela_testkit::Redis::start();
            let (ra, a) = spreading(&redis, "a", 1).await;
            loads(&ra, &[(&ra, 0)]);
            let r = room("r");
            assert_eq!(a.home(&r).await.unwrap(), RoomHome::Here);
            redis.stop();
            // Full (one participant), but nowhere else to go: here.
            assert_eq!(a.home(&r).await.unwrap(), RoomHome::Here);
            let fresh = a.home(&room("fresh")).await;
            assert!(
                matches!(fresh, Err(DirectoryError::Unavailable { .. })),
                "{fresh:?}"
            );
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn a_room_over_several_nodes_starts_once_and_finishes_once() {
        tokio::time::timeout(Duration::from_secs(20), async {
            let redis = vela_testkit::Redis::start();
            let (_, a) = spreading(&redis, "a", 1).await;
            let (rb, b) = spreading(&redis, "b", 1).await;
            let r = room("r");
            // Opened on `a`, then on `b`: only `a` reports the start.
            assert!(a.opened(&r).await.unwrap());
            assert!(!b.opened(&r).await.unwrap());
            // `a` closes its part first: `b` still holds the room.
            assert!(!a.closed(&r).await.unwrap());
            // A heartbeat with a list taken before the close does not put
            // `a` back in the set.
            let before = Instant::now() - Duration::from_millis(10);
            a.beat(&[info("r")], before).await.unwrap();
            assert_eq!(a.members(&r).await.unwrap(), vec!["b"]);
            // `b` closes last: it reports the end; the room may start again.
            assert!(b.closed(&r).await.unwrap());
            assert!(!a.finished_without_report(&r).await.unwrap());
            assert!(b.opened(&r).await.unwrap());
            // `a` joins and closes again; then `b` dies without closing:
            // the recheck `a` makes reports the end, once.
            assert!(!a.opened(&r).await.unwrap());
            assert!(!a.closed(&r).await.unwrap());
            rb.deregister().await.unwrap();
            assert!(a.finished_without_report(&r).await.unwrap());
            assert!(!a.finished_without_report(&r).await.unwrap());
        })
        .await
        .expect("timed out");
    }
}
