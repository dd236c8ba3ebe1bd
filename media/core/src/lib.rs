//! Sans-IO core of the vela SFU.
//!
//! The core owns rooms, participants (each wrapping one [`str0m::Rtc`]), the
//! routing of datagrams to peers and the forwarding of media between them. It
//! never touches a socket, never spawns a task and never reads the clock: time
//! is an input. A runtime shell (the `vela-media` crate) owns the socket and
//! the timers.
//!
//! # One room over several cores
//! A room may be spread over several `Sfu`s (the shards of a node, the
//! nodes of a cluster), joined pairwise by links the shell carries: see
//! [`relay`] for what crosses them, [`Sfu::handle_link_room`],
//! [`Sfu::handle_relay`], [`Sfu::handle_link_down`] and [`Output::Relay`].
//! Participants of the other cores look local to this core's clients.
//!
//! # Run-loop contract
//! Give the [`Sfu`] one input at a time ([`Sfu::handle_receive`],
//! [`Sfu::handle_timeout`], or one of the signaling calls such as
//! [`Sfu::handle_join`]), then drain [`Sfu::poll_output`] until it returns
//! [`Output::Timeout`]. Call [`Sfu::handle_timeout`] no later than that
//! instant.
//!
//! # Example
//!
//! Two clients in one room on a virtual clock: Alice publishes audio, Bob
//! receives it. The clients are str0m peers standing in for browsers; the
//! loop at the bottom is what a shell does with a socket and a timer:
//! datagrams in, outputs drained and delivered, timeouts on time.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//!
//! use str0m::format::Codec;
//! use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
//! use str0m::net::{Protocol, Receive};
//! use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc};
//! use vela_media_core::{
//!     ConnectionId, JoinRequest, Output, PeerKind, RoomId, Sfu, SfuConfig, Signal,
//! };
//!
//! /// A client: its WebRTC stack, its address, its connection on the server.
//! struct Client {
//!     rtc: Rtc,
//!     addr: SocketAddr,
//!     conn: ConnectionId,
//!     audio: Option<Mid>,
//!     frames: u64,
//! }
//!
//! let server: SocketAddr = "192.0.2.1:7882".parse()?;
//! let mut now = Instant::now();
//! let mut sfu = Sfu::new(SfuConfig::new(vec![server]), now);
//! let room = RoomId::new("demo")?;
//!
//! let mut clients = Vec::new();
//! let people = [("alice", "198.51.100.1:5000", true), ("bob", "198.51.100.2:5000", false)];
//! for (name, addr, publish) in people {
//!     let addr: SocketAddr = addr.parse()?;
//!     let mut rtc = Rtc::builder().build(now);
//!     rtc.add_local_candidate(Candidate::host(addr, "udp")?);
//!     // Joining gives the connection's key; the client's offer is answered.
//!     let req = JoinRequest::new(room.clone(), name, PeerKind::Session);
//!     let joined = sfu.handle_join(now, req)?;
//!     let mut change = rtc.sdp_api();
//!     let audio = publish
//!         .then(|| change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
//!     if !publish {
//!         change.add_channel("data".into());
//!     }
//!     let (offer, pending) = change.apply().ok_or("nothing to offer")?;
//!     let answer = sfu.handle_offer(now, joined.connection, offer)?;
//!     rtc.sdp_api().accept_answer(pending, answer)?;
//!     clients.push(Client { rtc, addr, conn: joined.connection, audio, frames: 0 });
//! }
//!
//! let end = now + Duration::from_secs(10);
//! let mut tick = 0u64;
//! while now < end && clients[1].frames < 10 {
//!     // Alice speaks: a 20 ms Opus frame every fourth 5 ms tick.
//!     tick += 1;
//!     let alice = &mut clients[0];
//!     if let (true, 0, Some(mid)) = (alice.rtc.is_connected(), tick % 4, alice.audio) {
//!         let w = alice.rtc.writer(mid).ok_or("no writer")?;
//!         let opus = w.payload_params().find(|p| p.spec().codec == Codec::Opus);
//!         let pt = opus.ok_or("no opus")?.pt();
//!         let time = MediaTime::from_millis(tick * 5).rebase(Frequency::FORTY_EIGHT_KHZ);
//!         w.write(pt, now, time, vec![0xfc, 0xff, 0xfe])?;
//!     }
//!     // What the clients send goes to the core, one datagram at a time.
//!     for c in &mut clients {
//!         loop {
//!             match c.rtc.poll_output()? {
//!                 RtcOutput::Transmit(t) => sfu.handle_receive(now, c.addr, server, &t.contents),
//!                 RtcOutput::Event(Event::MediaData(_)) => c.frames += 1,
//!                 RtcOutput::Event(_) => {}
//!                 RtcOutput::Timeout(_) => break,
//!             }
//!         }
//!     }
//!     // Then the core's outputs, drained until it names its next timeout.
//!     let next = loop {
//!         match sfu.poll_output() {
//!             Output::Transmit(t) => {
//!                 if let Some(c) = clients.iter_mut().find(|c| c.addr == t.destination) {
//!                     let r = Receive::new(Protocol::Udp, t.source, t.destination, &t.contents)?;
//!                     c.rtc.handle_input(Input::Receive(now, r))?;
//!                 }
//!             }
//!             // The server offers Alice's track to Bob (over signaling, in a
//!             // real server); Bob's answer goes back to the core.
//!             Output::Signal(conn, Signal::Offer(offer)) => {
//!                 let c = clients.iter_mut().find(|c| c.conn == conn).ok_or("no client")?;
//!                 let answer = c.rtc.sdp_api().accept_offer(offer)?;
//!                 sfu.handle_answer(now, conn, answer)?;
//!             }
//!             // Other signals go to the connection's client; events to the
//!             // integration (webhooks, metrics).
//!             Output::Signal(..) | Output::Event(_) => {}
//!             Output::Timeout(t) => break t,
//!             _ => {}
//!         }
//!     };
//!     // The virtual clock moves on; the core's timeout is never late.
//!     now += Duration::from_millis(5);
//!     if now >= next {
//!         sfu.handle_timeout(now);
//!     }
//!     for c in &mut clients {
//!         c.rtc.handle_input(Input::Timeout(now))?;
//!     }
//! }
//! assert!(clients[1].frames >= 10, "Bob hears Alice");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod dtls;
mod error;
mod id;
mod isolation;
mod layer_selector;
mod offer_check;
mod pace;
mod packet;
mod peer;
mod quality;
pub mod relay;
mod room;
mod router;
mod sfu;
mod signal;
mod speaker;
mod stats;
mod track;

pub use error::{JoinError, SignalError};
pub use id::{ConnectionId, IdParseError, ParticipantId, RoomId, TrackId};
#[cfg(feature = "test-hooks")]
pub use isolation::RtcCall;
pub use packet::{Packet, PayloadError};
pub use peer::StreamIds;
pub use quality::{
    ConnectionQuality, ParticipantQuality, QUALITY_INTERVAL, QualitySample, score as quality_score,
};
pub use relay::{Control, LinkId, RelayLinkStats, RelayMessage, RelayPacket, RelayTrack};
pub use room::RoomOptions;
pub use sfu::{
    DataMessage, ID_NODE_SHIFT, JoinRequest, Joined, MAX_RELAY_PAYLOAD, Output, Sfu, SfuConfig,
    id_base_of, id_shard,
};
pub use signal::{
    LeaveReason, ParticipantInfo, PeerKind, Permissions, RoomEvent, RoomInfo, Signal, TrackInfo,
    TrackKind, TrackSource,
};
pub use speaker::Speaker;
pub use stats::SfuStats;
pub use track::TrackSettings;

/// Re-exported str0m types that appear in this crate's API.
pub use str0m::change::{SdpAnswer, SdpOffer};
pub use str0m::channel::{ChannelConfig, Reliability};
pub use str0m::net::Transmit;
