//! Which shard serves each room: a new room goes to the least loaded shard
//! and stays there while it is open.

use std::time::{Duration, Instant};

use rustc_hash::FxHashMap;
use vela_media_core::{RoomEvent, RoomId};

/// How long a room keeps its shard after it closed there, or after it was
/// placed without its shard opening it: commands sent on that placement may
/// still wait in the shard's queue, and must not find the room moved.
pub(crate) const GRACE: Duration = Duration::from_secs(30);

/// The rooms' shards and the shards' load, updated from the shards' room
/// events. A room's name alone does not say its shard (a hash would put two
/// busy rooms on one core as often as chance says).
#[derive(Debug)]
pub(crate) struct Placement {
    rooms: FxHashMap<RoomId, Place>,
    shards: Vec<Load>,
}

#[derive(Debug, Clone, Copy)]
struct Place {
    shard: usize,
    /// Since when the room has not been open on its shard; `None` while open.
    idle_since: Option<Instant>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Participants on the shard, as it last reported.
    participants: u64,
    /// Rooms placed on the shard (open, or within their grace).
    rooms: usize,
}

impl Placement {
    /// No rooms yet on `shards` shards.
    pub(crate) fn new(shards: usize) -> Self {
        Placement {
            rooms: FxHashMap::default(),
            shards: vec![Load::default(); shards.max(1)],
        }
    }

    /// The shard serving `room`, if it is placed.
    pub(crate) fn shard_of(&self, room: &RoomId) -> Option<usize> {
        self.rooms.get(room).map(|p| p.shard)
    }

    /// The shard for a command about `room`: where it is placed, else the
    /// shard with the fewest participants (then the fewest rooms, then the
    /// lowest index), where it is placed from now on.
    pub(crate) fn place(&mut self, now: Instant, room: &RoomId) -> usize {
        if let Some(p) = self.rooms.get(room) {
            return p.shard;
        }
        self.forget_idle(now);
        let shard = (0..self.shards.len())
            .min_by_key(|&k| (self.shards[k].participants, self.shards[k].rooms, k))
            .unwrap_or(0);
        self.insert(room.clone(), shard, Some(now));
        shard
    }

    /// Takes in a room event of `shard`, which now has `participants`.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        shard: usize,
        event: &RoomEvent,
        participants: u64,
    ) {
        let Some(load) = self.shards.get_mut(shard) else {
            return;
        };
        load.participants = participants;
        match event {
            RoomEvent::RoomStarted { room } => match self.rooms.get_mut(room) {
                Some(p) if p.shard == shard => p.idle_since = None,
                // Opened where it was not placed (its place was forgotten
                // while a command waited): the room is where it is open.
                Some(p) => {
                    self.shards[p.shard].rooms -= 1;
                    self.shards[shard].rooms += 1;
                    *p = Place {
                        shard,
                        idle_since: None,
                    };
                }
                None => self.insert(room.clone(), shard, None),
            },
            RoomEvent::RoomFinished { room } => {
                if let Some(p) = self.rooms.get_mut(room)
                    && p.shard == shard
                {
                    p.idle_since = Some(now);
                }
            }
            _ => {}
        }
    }

    fn insert(&mut self, room: RoomId, shard: usize, idle_since: Option<Instant>) {
        self.shards[shard].rooms += 1;
        self.rooms.insert(room, Place { shard, idle_since });
    }

    /// Drops the places of rooms idle for longer than [`GRACE`].
    fn forget_idle(&mut self, now: Instant) {
        let shards = &mut self.shards;
        self.rooms.retain(|_, p| {
            let keep = p
                .idle_since
                .is_none_or(|t| now.saturating_duration_since(t) < GRACE);
            if !keep {
                shards[p.shard].rooms -= 1;
            }
            keep
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
        let mut p = Placement::new(3);
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
        let mut p = Placement::new(2);
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
        let mut p = Placement::new(2);
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
        let mut p = Placement::new(2);
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
        let mut p = Placement::new(2);
        assert_eq!(p.place(now, &room("a")), 0);
        p.observe(now, 1, &started("a"), 1);
        assert_eq!(p.shard_of(&room("a")), Some(1));
        p.observe(now, 0, &started("b"), 0);
        assert_eq!(p.shard_of(&room("b")), Some(0));
        // Each shard counts one room: the next goes by participants.
        assert_eq!(p.place(now, &room("c")), 0);
    }
}
