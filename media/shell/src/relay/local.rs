//! In-process links between the shards of one node: a full mesh of
//! channels between driver tasks, carrying the cores' relay messages as
//! values (no encoding: the payloads are shared, not copied).
//!
//! A driver never waits on a link. Each directed link counts what it has in
//! flight: media past [`MEDIA_QUEUE`] is dropped (counted; the far core asks
//! again by NACK or keyframe request); control past [`CONTROL_QUEUE`] means
//! the far shard is hopelessly behind, and dropping control silently would
//! leave the two cores disagreeing about the room. So the link *fails*: the
//! sender's core takes it down at once, and a `Reset` (outside the count)
//! tells the other side, which takes it down too, answers `ResetDone` and
//! links the rooms both shards still hold again, from scratch; until the
//! answer the sender sends nothing more on the link (a shard that never
//! reads again costs one frame, not one per attempt), then it links them
//! again too (both doing it is harmless). Each side stamps its frames
//! with its epoch of the link, raised by a reset (the one it began or the
//! one it was told of); frames the other side sent before it learned of a
//! reset are stale and dropped, so the cores relink from a clean state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use tokio::sync::mpsc;
use vela_media_core::RoomId;
use vela_media_core::relay::RelayMessage;

/// Media frames in flight on one directed link before more are dropped:
/// about a second of a busy 1 -> N room's video.
pub(crate) const MEDIA_QUEUE: usize = 4096;

/// Control frames in flight on one directed link before the link fails.
/// Control is small and rare (joins, tracks, demand, NACKs): this many
/// waiting means the far shard has stopped serving its queue.
pub(crate) const CONTROL_QUEUE: usize = 16_384;

/// What one shard sends another.
#[derive(Debug)]
pub(crate) enum Body {
    /// A core's relay message.
    Relay(RelayMessage),
    /// The sender holds `room` (true) or no longer (false): link it.
    LinkRoom(RoomId, bool),
    /// The sender took the link down (it overflowed): take it down too,
    /// then link the shared rooms again.
    Reset,
    /// The answer to a `Reset`: the link is usable again; link the shared
    /// rooms (again).
    ResetDone,
}

/// A frame on a local link.
#[derive(Debug)]
pub(crate) struct Frame {
    /// The sending shard.
    pub from: usize,
    /// The sender's epoch of the link (see the module's doc).
    epoch: u32,
    pub body: Body,
}

/// What is in flight on one directed link.
#[derive(Debug, Default)]
struct Depth {
    control: AtomicUsize,
    media: AtomicUsize,
}

/// This shard's sending end towards one other shard.
#[derive(Debug)]
struct Out {
    tx: mpsc::UnboundedSender<Frame>,
    depth: Arc<Depth>,
    /// This side's epoch of the link: stamped on what it sends.
    epoch: u32,
    /// Frames from the other side stamped below this are stale.
    floor: u32,
    /// A reset this side began is not answered yet: nothing is sent.
    resetting: bool,
    /// Hands out the pair's epochs (shared by both sides, so that two
    /// resets begun at once have different ones).
    epochs: Arc<AtomicU32>,
}

/// Counters of one shard's local links, summed over its peers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LocalLinkStats {
    /// Relay frames sent to other shards.
    pub sent: u64,
    /// Relay frames received from other shards and given to the core.
    pub received: u64,
    /// Media dropped because a link's queue was full.
    pub media_dropped: u64,
    /// Links that failed (a control queue overflowed) and were reset.
    pub resets: u64,
    /// Frames dropped on arrival because they were sent before a reset.
    pub stale_dropped: u64,
}

/// The outcome of sending a relay message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    Ok,
    /// Media dropped: the link's queue is full.
    Dropped,
    /// Control could not be queued: the link failed and is being reset;
    /// the sender's core must take it down now.
    Failed,
}

/// One shard's ends of the mesh.
#[derive(Debug)]
pub(crate) struct LocalLinks {
    shard: usize,
    /// By peer shard; `None` for this shard.
    out: Vec<Option<Out>>,
    /// What each other shard has in flight to this one.
    inbound: Vec<Option<Arc<Depth>>>,
    rx: mpsc::UnboundedReceiver<Frame>,
    stats: LocalLinkStats,
}

/// The links of `n` shards, every pair joined, one end per shard in order.
pub(crate) fn mesh(n: usize) -> Vec<LocalLinks> {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let epochs: Vec<Vec<Arc<AtomicU32>>> = (0..n)
        .map(|_| (0..n).map(|_| Arc::new(AtomicU32::new(0))).collect())
        .collect();
    // depth[i][j]: what i has in flight to j.
    let depth: Vec<Vec<Arc<Depth>>> = (0..n)
        .map(|_| (0..n).map(|_| Arc::new(Depth::default())).collect())
        .collect();
    let pair = |i: usize, j: usize| epochs[i.min(j)][i.max(j)].clone();
    rxs.into_iter()
        .enumerate()
        .map(|(i, rx)| LocalLinks {
            shard: i,
            out: (0..n)
                .map(|j| {
                    (i != j).then(|| Out {
                        tx: txs[j].clone(),
                        depth: depth[i][j].clone(),
                        epoch: 0,
                        floor: 0,
                        resetting: false,
                        epochs: pair(i, j),
                    })
                })
                .collect(),
            inbound: (0..n)
                .map(|j| (i != j).then(|| depth[j][i].clone()))
                .collect(),
            rx,
            stats: LocalLinkStats::default(),
        })
        .collect()
}

impl LocalLinks {
    pub(crate) fn stats(&self) -> LocalLinkStats {
        self.stats
    }

    /// Queues a core's relay message for shard `to`.
    pub(crate) fn send(&mut self, to: usize, msg: RelayMessage) -> Sent {
        let media = matches!(msg, RelayMessage::Media(_));
        self.push(to, media, Body::Relay(msg))
    }

    /// Tells shard `to` that this shard holds `room` (or no longer).
    pub(crate) fn link_room(&mut self, to: usize, room: RoomId, on: bool) -> Sent {
        self.push(to, false, Body::LinkRoom(room, on))
    }

    fn push(&mut self, to: usize, media: bool, body: Body) -> Sent {
        let Some(Some(out)) = self.out.get(to) else {
            return Sent::Dropped;
        };
        if out.resetting {
            if media {
                self.stats.media_dropped += 1;
                return Sent::Dropped;
            }
            return Sent::Failed;
        }
        let (counter, cap) = if media {
            (&out.depth.media, MEDIA_QUEUE)
        } else {
            (&out.depth.control, CONTROL_QUEUE)
        };
        if counter.load(Ordering::Relaxed) >= cap {
            if media {
                self.stats.media_dropped += 1;
                return Sent::Dropped;
            }
            self.reset(to);
            return Sent::Failed;
        }
        let frame = Frame {
            from: self.shard,
            epoch: out.epoch,
            body,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if out.tx.send(frame).is_err() {
            // The other driver is gone (the node is stopping).
            counter.fetch_sub(1, Ordering::Relaxed);
            return Sent::Dropped;
        }
        self.stats.sent += 1;
        Sent::Ok
    }

    /// Starts a reset of the link to `to`: what is in flight either way
    /// becomes stale; the other side is told outside the queue's count.
    fn reset(&mut self, to: usize) {
        let Some(Some(out)) = self.out.get_mut(to) else {
            return;
        };
        let epoch = out.epochs.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        out.epoch = epoch;
        out.floor = epoch;
        out.resetting = true;
        self.stats.resets += 1;
        tracing::warn!(
            shard = self.shard,
            peer = to,
            "local relay link overflowed its control queue: reset"
        );
        let _ = out.tx.send(Frame {
            from: self.shard,
            epoch,
            body: Body::Reset,
        });
    }

    /// The next frame for the core, skipping stale ones; `None` when every
    /// other shard is gone.
    pub(crate) async fn recv(&mut self) -> Option<Frame> {
        loop {
            let f = self.rx.recv().await?;
            if let Some(f) = self.accept(f) {
                return Some(f);
            }
        }
    }

    /// A frame already queued, if any (batches after [`LocalLinks::recv`]).
    pub(crate) fn try_recv(&mut self) -> Option<Frame> {
        loop {
            let f = self.rx.try_recv().ok()?;
            if let Some(f) = self.accept(f) {
                return Some(f);
            }
        }
    }

    fn accept(&mut self, f: Frame) -> Option<Frame> {
        let (Some(Some(depth)), Some(Some(out))) =
            (self.inbound.get(f.from), self.out.get_mut(f.from))
        else {
            return None;
        };
        match &f.body {
            Body::Reset => {
                // From now on this side's frames are of the new epoch, and
                // the other side's older ones are stale. The answer carries
                // this side's epoch: a reset of its own, begun meanwhile
                // with a higher one, is answered by it too.
                out.epoch = out.epoch.max(f.epoch);
                out.floor = out.floor.max(f.epoch);
                let _ = out.tx.send(Frame {
                    from: self.shard,
                    epoch: out.epoch,
                    body: Body::ResetDone,
                });
                return Some(f);
            }
            Body::ResetDone => {
                // An answer to an older reset of this side is not the one
                // awaited.
                if !out.resetting || f.epoch < out.floor {
                    return None;
                }
                out.resetting = false;
                return Some(f);
            }
            Body::Relay(RelayMessage::Media(_)) => depth.media.fetch_sub(1, Ordering::Relaxed),
            Body::Relay(_) | Body::LinkRoom(..) => depth.control.fetch_sub(1, Ordering::Relaxed),
        };
        if f.epoch < out.floor {
            self.stats.stale_dropped += 1;
            return None;
        }
        if matches!(f.body, Body::Relay(_)) {
            self.stats.received += 1;
        }
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> RoomId {
        RoomId::new("r").unwrap()
    }

    #[test]
    fn frames_arrive_in_order_from_their_shard() {
        let mut m = mesh(3);
        assert_eq!(m[0].link_room(2, room(), true), Sent::Ok);
        assert_eq!(m[1].link_room(2, room(), false), Sent::Ok);
        let a = m[2].try_recv().unwrap();
        let b = m[2].try_recv().unwrap();
        assert!(matches!((a.from, &a.body), (0, Body::LinkRoom(_, true))));
        assert!(matches!((b.from, &b.body), (1, Body::LinkRoom(_, false))));
        assert!(m[2].try_recv().is_none() && m[0].try_recv().is_none());
    }

    #[test]
    fn a_control_overflow_resets_the_link_and_drops_what_was_in_flight() {
        let mut m = mesh(2);
        for _ in 0..CONTROL_QUEUE {
            assert_eq!(m[0].link_room(1, room(), true), Sent::Ok);
        }
        // Shard 1 has not read anything: the link fails rather than drop
        // control silently.
        assert_eq!(m[0].link_room(1, room(), true), Sent::Failed);
        assert_eq!(m[0].stats().resets, 1);
        // Until shard 1 answers, nothing more is queued, and no more resets.
        assert_eq!(m[0].link_room(1, room(), true), Sent::Failed);
        assert_eq!(m[0].stats().resets, 1);
        // A frame shard 1 sent before it saw the reset is stale.
        assert_eq!(m[1].link_room(0, room(), true), Sent::Ok);
        assert!(m[0].try_recv().is_none(), "stale frame dropped");
        assert_eq!(m[0].stats().stale_dropped, 1);
        // Shard 1 gets what was sent before the reset (its core takes it
        // in order, then the link down), then the reset, which it answers.
        for _ in 0..CONTROL_QUEUE {
            assert!(matches!(m[1].try_recv().unwrap().body, Body::LinkRoom(..)));
        }
        assert!(matches!(m[1].try_recv().unwrap().body, Body::Reset));
        assert!(m[1].try_recv().is_none());
        assert!(matches!(m[0].try_recv().unwrap().body, Body::ResetDone));
        // The link works again, both ways.
        assert_eq!(m[1].link_room(0, room(), true), Sent::Ok);
        assert!(matches!(m[0].try_recv().unwrap().body, Body::LinkRoom(..)));
        assert_eq!(m[0].link_room(1, room(), true), Sent::Ok);
        assert!(matches!(m[1].try_recv().unwrap().body, Body::LinkRoom(..)));
    }

    #[test]
    fn resets_begun_on_both_sides_at_once_end_with_a_working_link() {
        let mut m = mesh(2);
        m[0].reset(1);
        m[1].reset(0);
        assert_eq!(m[0].link_room(1, room(), true), Sent::Failed);
        // Each takes the other's reset (and answers it), then its answer.
        assert!(matches!(m[1].try_recv().unwrap().body, Body::Reset));
        assert!(matches!(m[0].try_recv().unwrap().body, Body::Reset));
        assert!(matches!(m[0].try_recv().unwrap().body, Body::ResetDone));
        assert!(matches!(m[1].try_recv().unwrap().body, Body::ResetDone));
        assert!(m[0].try_recv().is_none() && m[1].try_recv().is_none());
        assert_eq!(m[0].link_room(1, room(), true), Sent::Ok);
        assert_eq!(m[1].link_room(0, room(), false), Sent::Ok);
        assert!(matches!(
            m[1].try_recv().unwrap().body,
            Body::LinkRoom(_, true)
        ));
        assert!(matches!(
            m[0].try_recv().unwrap().body,
            Body::LinkRoom(_, false)
        ));
    }
}
