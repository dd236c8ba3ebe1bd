//! The core's settings, and how ids name the core that made them.

use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the core.
#[derive(Debug, Clone)]
pub struct SfuConfig {
    pub(super) candidates: Vec<SocketAddr>,
    pub(super) tcp_candidates: Vec<SocketAddr>,
    pub(super) connect_timeout: Duration,
    pub(super) keyframe_interval: Duration,
    pub(super) max_participants_per_room: u32,
    pub(super) max_tracks_per_participant: u32,
    pub(super) speaker_interval: Duration,
    pub(super) bandwidth_estimation: bool,
    pub(super) reconnect_timeout: Duration,
    /// First participant and track number, and the step between numbers.
    pub(super) id_space: (u64, u64),
    /// Added to every id: names the node in a cluster (see `set_id_base`).
    pub(super) id_base: u64,
}

/// Ids made by one node fit in this many low bits; the bits above are the
/// node's base (see [`SfuConfig::set_id_base`]).
pub const ID_NODE_SHIFT: u32 = 40;

const ID_LOCAL_MASK: u64 = (1 << ID_NODE_SHIFT) - 1;

impl SfuConfig {
    /// A configuration advertising these host candidates (address and UDP port).
    pub fn new(candidates: Vec<SocketAddr>) -> Self {
        SfuConfig {
            candidates,
            tcp_candidates: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            keyframe_interval: Duration::from_millis(500),
            max_participants_per_room: 0,
            max_tracks_per_participant: 0,
            speaker_interval: Duration::from_millis(200),
            bandwidth_estimation: true,
            reconnect_timeout: Duration::from_secs(15),
            id_space: (1, 1),
            id_base: 0,
        }
    }

    /// Numbers participants and tracks `first`, `first + step`, ...: cores
    /// sharing a node (one per CPU core) take `1..=n` and step `n`, so their
    /// ids never collide and an id names its core (see [`id_shard`]).
    pub fn set_id_space(mut self, first: u64, step: u64) -> Self {
        self.id_space = (first.max(1), step.max(1));
        self
    }

    /// Adds `base` to every participant and track number, so that ids stay
    /// unique across the nodes of a cluster (a remote participant's id must
    /// not collide with a local one). `base` is the node's number shifted
    /// left by [`ID_NODE_SHIFT`] (lower bits are cleared); 0, the default,
    /// for a single node. [`id_shard`] ignores it.
    pub fn set_id_base(mut self, base: u64) -> Self {
        self.id_base = base & !ID_LOCAL_MASK;
        self
    }

    /// How long a participant whose connection dropped is kept for it to
    /// come back (same participant, same subscriptions) before it is removed.
    pub fn set_reconnect_timeout(mut self, d: Duration) -> Self {
        self.reconnect_timeout = d;
        self
    }

    /// Whether subscribers' send bandwidth is estimated (TWCC) and caps their
    /// simulcast layers; without it every subscriber gets a fixed budget.
    pub fn set_bandwidth_estimation(mut self, on: bool) -> Self {
        self.bandwidth_estimation = on;
        self
    }

    /// How often at most the speaking list is sent to a room.
    pub fn set_speaker_interval(mut self, d: Duration) -> Self {
        self.speaker_interval = d;
        self
    }

    /// A peer that has not connected (ICE and DTLS) by then is removed.
    pub fn set_connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The minimum interval between keyframe requests to one publisher track.
    pub fn set_keyframe_interval(mut self, d: Duration) -> Self {
        self.keyframe_interval = d;
        self
    }

    /// The most participants a room takes; 0 for no limit.
    pub fn set_max_participants_per_room(mut self, n: u32) -> Self {
        self.max_participants_per_room = n;
        self
    }

    /// The most tracks (sending audio and video m-lines) one participant's
    /// offer may carry; an offer with more is refused. 0 for no limit.
    pub fn set_max_tracks_per_participant(mut self, n: u32) -> Self {
        self.max_tracks_per_participant = n;
        self
    }

    /// Also advertises these passive TCP host candidates (ICE over TCP,
    /// RFC 6544, framed as RFC 4571 says), whose connections the shell
    /// gives to [`crate::Sfu::handle_receive_tcp`]. Empty (the default): UDP only.
    pub fn set_tcp_candidates(mut self, candidates: Vec<SocketAddr>) -> Self {
        self.tcp_candidates = candidates;
        self
    }

    /// The host candidates advertised to clients.
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.candidates
    }

    /// The passive TCP host candidates advertised to clients.
    pub fn tcp_candidates(&self) -> &[SocketAddr] {
        &self.tcp_candidates
    }
}

/// Which of `shards` cores numbered with [`SfuConfig::set_id_space`]`(k + 1,
/// shards)` made participant or track number `id`: `k` (whatever the node's
/// [`SfuConfig::set_id_base`]).
pub fn id_shard(id: u64, shards: usize) -> usize {
    let n = shards.max(1) as u64;
    ((id & ID_LOCAL_MASK).saturating_sub(1) % n) as usize
}

/// The base ([`SfuConfig::set_id_base`]) of the node that made `id`.
pub fn id_base_of(id: u64) -> u64 {
    id & !ID_LOCAL_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_names_the_node_and_the_shard_ignores_it() {
        let base = 7u64 << ID_NODE_SHIFT;
        let c = SfuConfig::new(vec![])
            .set_id_space(2, 3)
            .set_id_base(base | 5);
        assert_eq!(c.id_base, base, "low bits cleared");
        for k in 0..10u64 {
            let id = base + 2 + 3 * k;
            assert_eq!(id_shard(id, 3), 1);
            assert_eq!(id_base_of(id), base);
            assert_eq!(id_shard(2 + 3 * k, 3), 1, "base 0 unchanged");
        }
    }
}
