//! Relaying a room between cores: the links a core's room crosses to the
//! other cores holding it, in-process between this node's shards
//! (`local`) and over QUIC to other nodes' ([`quic`], its authentication
//! [`auth`], and the routing of rooms to other nodes in `node`).
//!
//! To a core a link is an opaque [`LinkId`]; the shell numbers them: a link
//! to shard `k` of this node is `LinkId(k)`, links to other nodes' shards
//! are numbered from `REMOTE_BASE` up.

pub mod auth;
pub(crate) mod local;
pub(crate) mod node;
pub mod quic;

use vela_media_core::relay::LinkId;

pub use auth::{AuthError, RelayAuth};
pub use local::LocalLinkStats;
pub use node::NodePeer;
pub use quic::{
    LinkStats, NodeName, RelayConfig, RelayEndpoint, RelayError, RelayEvent, RelayStats, SendError,
};

/// The core behind a core's relay link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkPeer {
    /// Another shard of this node.
    Shard(usize),
    /// A shard of another node.
    Node {
        /// Its `cluster.node_id`.
        node: String,
        /// Its shard.
        shard: u16,
    },
}

/// One core's view of one of its relay links: which core is behind it,
/// and the core's counters for it (rooms, layers carried each way,
/// packets, NACKs).
#[derive(Debug, Clone)]
pub struct CoreLinkStats {
    /// The shard of this node whose core it is.
    pub shard: usize,
    /// The far core; `None` if the link is no longer known.
    pub peer: Option<LinkPeer>,
    /// The core's counters for the link.
    pub stats: vela_media_core::relay::RelayLinkStats,
}

/// The first link id of links to other nodes (this node's shards are fewer).
pub(crate) const REMOTE_BASE: u32 = 1 << 16;

/// The link to this node's shard `k`.
pub(crate) fn local_link(shard: usize) -> LinkId {
    LinkId(shard as u32)
}

/// The shard of this node behind `link`, if it is a local link.
pub(crate) fn link_shard(link: LinkId) -> Option<usize> {
    (link.0 < REMOTE_BASE).then_some(link.0 as usize)
}
