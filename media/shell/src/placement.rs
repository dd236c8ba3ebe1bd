//! Which shards serve each room: a new room goes to the least loaded shard;
//! past a number of participants on one shard (a node option), the room's
//! next participants go to another shard, which the room's shards link to
//! (see `relay`). A room's first open shard, its *home*, answers the server
//! API for the whole room.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use vela_media_core::{RoomEvent, RoomId};

/// How long a room keeps its shard after it closed there, or after it was
/// placed without its shard opening it: commands sent on that placement may
/// still wait in the shard's queue, and must not find the room moved.
pub(crate) const GRACE: Duration = Duration::from_secs(30);

/// The rooms' shards and the shards' load, updated from the shards' room
/// events and joins. A room's name alone does not say its shard (a hash would
/// put two busy rooms on one core as often as chance says).
#[derive(Debug)]
pub(crate) struct Placement {
    rooms: FxHashMap<RoomId, Vec<Part>>,
    shards: Vec<Load>,
    /// Participants of one room a shard takes before the room's next one
    /// goes to another shard; 0: a room stays on one shard.
    per_shard: u32,
}

/// A room's part on one shard.
#[derive(Debug, Clone, Copy)]
struct Part {
    shard: usize,
    /// Open on that shard (between its RoomStarted and RoomFinished).
    open: bool,
    /// Since when the part has not been open; `None` while open.
    idle_since: Option<Instant>,
    /// The room's participants that joined on this shard and have not left.
    participants: u32,
    /// Joins sent to this shard and not answered yet.
    reserved: u32,
}

impl Part {
    fn new(shard: usize, now: Option<Instant>) -> Self {
        Part {
            shard,
            open: now.is_none(),
            idle_since: now,
            participants: 0,
            reserved: 0,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Participants on the shard, as it last reported.
    participants: u64,
    /// Room parts placed on the shard (open, or within their grace).
    rooms: usize,
}

/// What a shard's room event means for the node.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Observed {
    /// Hand the event on: false for a RoomStarted or RoomFinished that
    /// another shard's part of the room already told (one per node).
    pub forward: bool,
    /// The room's other shards, when its part on this shard closed: they
    /// drop their link to it for this room.
    pub unlink: Vec<usize>,
}

impl Placement {
    /// No rooms yet on `shards` shards; a room takes `per_shard`
    /// participants on one shard before it spreads (0: never).
    pub(crate) fn new(shards: usize, per_shard: u32) -> Self {
        Placement {
            rooms: FxHashMap::default(),
            shards: vec![Load::default(); shards.max(1)],
            per_shard,
        }
    }

    /// The shard answering for `room` (its first open part, else its first
    /// part), if it is placed.
    pub(crate) fn shard_of(&self, room: &RoomId) -> Option<usize> {
        let parts = self.rooms.get(room)?;
        parts
            .iter()
            .find(|p| p.open)
            .or(parts.first())
            .map(|p| p.shard)
    }

    /// Every shard holding a part of `room`, its home first.
    pub(crate) fn shards_of(&self, room: &RoomId) -> Vec<usize> {
        let mut all: Vec<usize> = self
            .rooms
            .get(room)
            .map(|parts| parts.iter().map(|p| p.shard).collect())
            .unwrap_or_default();
        if let Some(home) = self.shard_of(room)
            && let Some(i) = all.iter().position(|&s| s == home)
        {
            all[..=i].rotate_right(1);
        }
        all
    }

    /// The shards where `room` is open now.
    pub(crate) fn open_shards_of(&self, room: &RoomId) -> Vec<usize> {
        self.rooms
            .get(room)
            .map(|parts| parts.iter().filter(|p| p.open).map(|p| p.shard).collect())
            .unwrap_or_default()
    }

    /// The open parts of `room` other than `shard`'s: the shards `shard`
    /// links to for it.
    pub(crate) fn peers_of(&self, room: &RoomId, shard: usize) -> Vec<usize> {
        self.rooms
            .get(room)
            .map(|parts| {
                parts
                    .iter()
                    .filter(|p| p.shard != shard && p.open)
                    .map(|p| p.shard)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rooms open on both `a` and `b` (linked while both hold them).
    pub(crate) fn shared_rooms(&self, a: usize, b: usize) -> Vec<RoomId> {
        let open = |parts: &[Part], s: usize| parts.iter().any(|p| p.shard == s && p.open);
        self.rooms
            .iter()
            .filter(|(_, parts)| open(parts, a) && open(parts, b))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The shard for a command about `room`: its home, else the least
    /// loaded shard, where it is placed from now on.
    pub(crate) fn place(&mut self, now: Instant, room: &RoomId) -> usize {
        if let Some(s) = self.shard_of(room) {
            return s;
        }
        self.forget_idle(now);
        let shard = self.least_loaded(&[]);
        self.insert(room.clone(), Part::new(shard, Some(now)));
        shard
    }

    /// The shard for a new participant of `room` (tests: see
    /// [`Placement::place_join_from`]).
    #[cfg(test)]
    pub(crate) fn place_join(&mut self, now: Instant, room: &RoomId) -> usize {
        self.place_join_from(now, room).0
    }

    /// The shard for a new participant of `room`, reserved until
    /// [`Placement::joined`]: the first part of the room with fewer than the
    /// threshold (joined and reserved), else a new part on the least loaded
    /// shard without one, else the part with the fewest. With it, when the
    /// room is not open on that shard but open on another, that other
    /// shard: the room's settings (from the server API) are to be copied
    /// from it first.
    pub(crate) fn place_join_from(
        &mut self,
        now: Instant,
        room: &RoomId,
    ) -> (usize, Option<usize>) {
        let shard = self.choose_join(now, room);
        let mut open_here = false;
        if let Some(p) = self.part_mut(room, shard) {
            p.reserved += 1;
            open_here = p.open;
        }
        let from = (!open_here)
            .then(|| self.open_shards_of(room).into_iter().find(|&k| k != shard))
            .flatten();
        (shard, from)
    }

    fn choose_join(&mut self, now: Instant, room: &RoomId) -> usize {
        let home = self.place(now, room);
        if self.per_shard == 0 {
            return home;
        }
        let Some(parts) = self.rooms.get(room) else {
            return home;
        };
        let taken = |p: &Part| p.participants + p.reserved;
        if let Some(p) = parts.iter().find(|p| taken(p) < self.per_shard) {
            return p.shard;
        }
        let used: Vec<usize> = parts.iter().map(|p| p.shard).collect();
        if used.len() < self.shards.len() {
            self.forget_idle(now);
            let shard = self.least_loaded(&used);
            self.insert(room.clone(), Part::new(shard, Some(now)));
            return shard;
        }
        parts
            .iter()
            .min_by_key(|p| (taken(p), p.shard))
            .map_or(home, |p| p.shard)
    }

    /// A join placed on `shard` was answered: it joined (`ok`) or not.
    /// A join opens the room there (before the core's RoomStarted is seen:
    /// a part opening at the same time on another shard must find it).
    pub(crate) fn joined(&mut self, room: &RoomId, shard: usize, ok: bool) {
        if let Some(p) = self.part_mut(room, shard) {
            p.reserved = p.reserved.saturating_sub(1);
            if ok {
                p.participants += 1;
                p.open = true;
                p.idle_since = None;
            }
        }
    }

    /// Takes in a room event of `shard`, which now has `participants`.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        shard: usize,
        event: &RoomEvent,
        participants: u64,
    ) -> Observed {
        let Some(load) = self.shards.get_mut(shard) else {
            return Observed::default();
        };
        load.participants = participants;
        let others_open = |parts: &[Part]| parts.iter().any(|p| p.shard != shard && p.open);
        match event {
            RoomEvent::RoomStarted { room } => {
                let part = match self.part_mut(room, shard) {
                    Some(p) => p,
                    // Opened where it was not placed (its place was forgotten
                    // while a command waited): the room is where it is open.
                    None => {
                        self.insert(room.clone(), Part::new(shard, None));
                        self.part_mut(room, shard).expect("just inserted")
                    }
                };
                part.open = true;
                part.idle_since = None;
                let parts = &self.rooms[room];
                Observed {
                    forward: !others_open(parts),
                    unlink: Vec::new(),
                }
            }
            RoomEvent::RoomFinished { room } => {
                let Some(part) = self.part_mut(room, shard) else {
                    return Observed {
                        forward: true,
                        unlink: Vec::new(),
                    };
                };
                part.open = false;
                part.idle_since = Some(now);
                part.participants = 0;
                let parts = &self.rooms[room];
                Observed {
                    forward: !others_open(parts),
                    unlink: parts
                        .iter()
                        .filter(|p| p.shard != shard && p.open)
                        .map(|p| p.shard)
                        .collect(),
                }
            }
            RoomEvent::ParticipantLeft { room, .. } => {
                if let Some(p) = self.part_mut(room, shard) {
                    p.participants = p.participants.saturating_sub(1);
                }
                Observed {
                    forward: true,
                    unlink: Vec::new(),
                }
            }
            _ => Observed {
                forward: true,
                unlink: Vec::new(),
            },
        }
    }

    fn part_mut(&mut self, room: &RoomId, shard: usize) -> Option<&mut Part> {
        self.rooms
            .get_mut(room)?
            .iter_mut()
            .find(|p| p.shard == shard)
    }

    /// The shard with the fewest participants (then the fewest room parts,
    /// then the lowest index), not among `except` (unless all are).
    fn least_loaded(&self, except: &[usize]) -> usize {
        (0..self.shards.len())
            .filter(|k| !except.contains(k))
            .min_by_key(|&k| (self.shards[k].participants, self.shards[k].rooms, k))
            .unwrap_or(0)
    }

    fn insert(&mut self, room: RoomId, part: Part) {
        self.shards[part.shard].rooms += 1;
        self.rooms.entry(room).or_default().push(part);
    }

    /// Drops the parts idle for longer than [`GRACE`] with no join waiting,
    /// and the rooms without parts.
    fn forget_idle(&mut self, now: Instant) {
        let shards = &mut self.shards;
        self.rooms.retain(|_, parts| {
            parts.retain(|p| {
                let keep = p.reserved > 0
                    || p.idle_since
                        .is_none_or(|t| now.saturating_duration_since(t) < GRACE);
                if !keep {
                    shards[p.shard].rooms -= 1;
                }
                keep
            });
            !parts.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomId {
        RoomId::new(name).unwrap()
    }

    fn started(name: &str) -> RoomEvent {
        RoomEvent::RoomStarted { room: room(name) }
    }

    fn finished(name: &str) -> RoomEvent {
        RoomEvent::RoomFinished { room: room(name) }
    }

    #[test]
    fn new_rooms_spread_over_empty_shards_in_turn() {
        let now = Instant::now();
        let mut p = Placement::new(3, 0);
        let got: Vec<usize> = ["a", "b", "c", "d"]
            .iter()
            .map(|r| p.place(now, &room(r)))
            .collect();
        assert_eq!(got, [0, 1, 2, 0]);
        // Asked again, a room stays where it was placed.
        assert_eq!(p.place(now, &room("b")), 1);
        assert_eq!(p.shard_of(&room("c")), Some(2));
        assert_eq!(p.shard_of(&room("e")), None);
    }

    #[test]
    fn a_new_room_goes_to_the_shard_with_the_fewest_participants() {
        let now = Instant::now();
        let mut p = Placement::new(2, 0);
        assert_eq!(p.place(now, &room("big")), 0);
        p.observe(now, 0, &started("big"), 40);
        assert_eq!(p.place(now, &room("small")), 1);
        p.observe(now, 1, &started("small"), 2);
        // Shard 1 has fewer participants, though as many rooms.
        assert_eq!(p.place(now, &room("next")), 1);
        // The big room empties: shard 0 is the lighter one now.
        p.observe(now, 0, &finished("big"), 0);
        assert_eq!(p.place(now, &room("after")), 0);
    }

    #[test]
    fn a_closed_room_keeps_its_shard_for_the_grace_period() {
        let t0 = Instant::now();
        let mut p = Placement::new(2, 0);
        assert_eq!(p.place(t0, &room("a")), 0);
        p.observe(t0, 0, &started("a"), 1);
        p.observe(t0, 0, &finished("a"), 0);
        // Load elsewhere would send a new room to shard 1...
        p.observe(t0, 1, &started("busy"), 9);
        // ...but "a" may still have a join queued on shard 0.
        let t1 = t0 + GRACE / 2;
        assert_eq!(p.place(t1, &room("a")), 0);
        // Reopened there, it is open again and is not forgotten.
        p.observe(t1, 0, &started("a"), 1);
        assert_eq!(p.place(t1 + GRACE * 2, &room("x")), 0);
        assert_eq!(p.shard_of(&room("a")), Some(0));
    }

    #[test]
    fn idle_places_are_forgotten_after_the_grace_period() {
        let t0 = Instant::now();
        let mut p = Placement::new(2, 0);
        // Placed by a query about a room that never opened.
        assert_eq!(p.place(t0, &room("ghost")), 0);
        assert_eq!(p.place(t0, &room("open")), 1);
        p.observe(t0, 1, &started("open"), 0);
        p.observe(t0, 1, &finished("open"), 0);
        let later = t0 + GRACE + Duration::from_millis(1);
        // Both forgotten when the next new room is placed; the shards count
        // no rooms again, so it goes to the first.
        assert_eq!(p.place(later, &room("new")), 0);
        assert_eq!(p.shard_of(&room("ghost")), None);
        assert_eq!(p.shard_of(&room("open")), None);
        assert_eq!(p.place(later, &room("newer")), 1);
    }

    #[test]
    fn a_room_opened_where_it_was_not_placed_is_found_there() {
        let now = Instant::now();
        let mut p = Placement::new(2, 0);
        assert_eq!(p.place(now, &room("a")), 0);
        p.observe(now, 1, &started("a"), 1);
        assert_eq!(p.shard_of(&room("a")), Some(1));
        p.observe(now, 0, &started("b"), 0);
        assert_eq!(p.shard_of(&room("b")), Some(0));
    }

    #[test]
    fn without_a_threshold_every_join_goes_to_the_rooms_shard() {
        let now = Instant::now();
        let mut p = Placement::new(2, 0);
        for _ in 0..5 {
            let s = p.place_join(now, &room("a"));
            assert_eq!(s, 0);
            p.joined(&room("a"), s, true);
        }
        assert_eq!(p.shards_of(&room("a")), [0]);
    }

    #[test]
    fn past_the_threshold_a_room_spreads_to_the_least_loaded_shard() {
        let now = Instant::now();
        let mut p = Placement::new(3, 2);
        let r = room("big");
        p.observe(now, 1, &started("other"), 5);
        // Two on the first shard: reserved ones count before they joined.
        assert_eq!(p.place_join(now, &r), 0);
        assert_eq!(p.place_join(now, &r), 0);
        // Full: the next goes to shard 2, emptier than shard 1.
        assert_eq!(p.place_join(now, &r), 2);
        p.joined(&r, 0, true);
        p.joined(&r, 0, true);
        p.joined(&r, 2, true);
        p.observe(now, 0, &started("big"), 2);
        p.observe(now, 2, &started("big"), 1);
        assert_eq!(p.shards_of(&r), [0, 2]);
        assert_eq!(p.peers_of(&r, 2), [0]);
        assert_eq!(p.shared_rooms(0, 2), std::slice::from_ref(&r));
        assert_eq!(p.place_join(now, &r), 2);
        p.joined(&r, 2, true);
        // Both full: shard 1 too.
        assert_eq!(p.place_join(now, &r), 1);
        p.joined(&r, 1, false);
        // A failed join frees its place; with every shard used, the
        // emptiest part takes the next.
        assert_eq!(p.place_join(now, &r), 1);
        // Someone leaves shard 0: it has room again, and comes first.
        p.observe(
            now,
            0,
            &RoomEvent::ParticipantLeft {
                room: r.clone(),
                participant: vela_media_core::ParticipantId(1),
                reason: vela_media_core::LeaveReason::ClientLeave,
            },
            1,
        );
        assert_eq!(p.place_join(now, &r), 0);
    }

    #[test]
    fn a_new_part_names_an_open_part_to_copy_the_rooms_settings_from() {
        let now = Instant::now();
        let mut p = Placement::new(2, 1);
        let r = room("r");
        // A new room: nothing to copy from.
        assert_eq!(p.place_join_from(now, &r), (0, None));
        p.joined(&r, 0, true);
        // Its second participant opens it on shard 1: copy from shard 0.
        assert_eq!(p.place_join_from(now, &r), (1, Some(0)));
        p.joined(&r, 1, true);
        // Open on both now.
        assert_eq!(p.place_join_from(now, &r).1, None);
    }

    #[test]
    fn a_room_over_shards_starts_and_finishes_once() {
        let now = Instant::now();
        let mut p = Placement::new(2, 1);
        let r = room("r");
        assert_eq!(p.place_join(now, &r), 0);
        assert_eq!(p.place_join(now, &r), 1);
        let start0 = p.observe(now, 0, &started("r"), 1);
        let start1 = p.observe(now, 1, &started("r"), 1);
        assert!(start0.forward && !start1.forward);
        // Shard 0's part closes: shard 1 unlinks from it; the room goes on.
        let end0 = p.observe(now, 0, &finished("r"), 0);
        assert_eq!(
            end0,
            Observed {
                forward: false,
                unlink: vec![1]
            }
        );
        assert_eq!(p.shard_of(&r), Some(1));
        let end1 = p.observe(now, 1, &finished("r"), 0);
        assert_eq!(
            end1,
            Observed {
                forward: true,
                unlink: vec![]
            }
        );
    }
}
