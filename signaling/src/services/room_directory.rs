//! Which node serves each room: the room directory. Within a node, which
//! media shard holds a room is the media handle's placement (the least
//! loaded shard, `vela_media`); this is the level above it, the seam a
//! cluster's directory (issue 18: Redis) joins as a variant.

use vela_media::core::RoomId;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomDirectory {
    /// One node: every room is served here.
    Local,
}

/// Where a room is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoomHome {
    /// On this node: its media handle places the room on a shard.
    Here,
}

impl RoomDirectory {
    /// Where the room is served, claiming it for this node when it is open
    /// nowhere yet. A caller serves a room only when the answer is
    /// [`RoomHome::Here`]; what it does with a room elsewhere (proxy or
    /// redirect) is the transport's choice.
    pub async fn home(&self, _room: &RoomId) -> RoomHome {
        match self {
            RoomDirectory::Local => RoomHome::Here,
        }
    }
}
