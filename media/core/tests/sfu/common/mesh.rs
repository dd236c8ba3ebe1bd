//! Several cores (each a [`World`] with its own clients) joined by
//! in-memory relay links, on one virtual clock: what the shell does with
//! channels and QUIC, with every message through the wire codec.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use vela_media_core::relay::wire;
use vela_media_core::{ID_NODE_SHIFT, LinkId, RelayMessage, RoomId, SfuConfig, TrackId};

use super::World;

/// Relayed media packets per (track, layer).
pub type LayerCounts = HashMap<(TrackId, Option<u8>), u64>;

/// Cores `0..n`; core `i` reaches core `j` over `LinkId(j)`.
pub struct Mesh {
    pub cores: Vec<World>,
    /// Fraction of relayed media dropped on every link (seeded, repeatable).
    pub link_loss: f64,
    /// Fraction of relayed media delivered twice.
    pub link_dup: f64,
    rng: u64,
    /// Media dropped on links.
    pub dropped: u64,
    /// Relayed media packets per directed link (from, to).
    pub media: HashMap<(usize, usize), u64>,
    /// Relayed media packets per directed link and (track, layer).
    pub layers: HashMap<(usize, usize), LayerCounts>,
    /// Links cut: nothing crosses them.
    pub cut: BTreeSet<(usize, usize)>,
    buf: Vec<u8>,
}

impl Mesh {
    /// `n` cores with distinct id bases (as nodes of a cluster).
    pub fn new(n: usize) -> Mesh {
        Self::with_config(n, |c| c)
    }

    pub fn with_config(n: usize, f: impl Fn(SfuConfig) -> SfuConfig) -> Mesh {
        let now = Instant::now();
        let cores = (0..n)
            .map(|k| World::with_clock(now, |c| f(c.set_id_base((k as u64 + 1) << ID_NODE_SHIFT))))
            .collect();
        Mesh {
            cores,
            link_loss: 0.0,
            link_dup: 0.0,
            rng: 0x2545_f491_4f6c_dd1d,
            dropped: 0,
            media: HashMap::new(),
            layers: HashMap::new(),
            cut: BTreeSet::new(),
            buf: Vec::new(),
        }
    }

    pub fn now(&self) -> Instant {
        self.cores[0].now
    }

    /// Core `i` links `room` to every other core (they link back on their own).
    pub fn link_room(&mut self, i: usize, room: &str) {
        let now = self.now();
        let room = RoomId::new(room).unwrap();
        for j in 0..self.cores.len() {
            if j != i {
                self.cores[i]
                    .sfu
                    .handle_link_room(now, LinkId(j as u32), room.clone(), true);
            }
        }
    }

    /// xorshift64*: a repeatable coin.
    fn coin(&mut self, p: f64) -> bool {
        if p <= 0.0 {
            return false;
        }
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        (x as f64 / (1u64 << 53) as f64) < p
    }

    fn lose(&mut self) -> bool {
        let lost = self.coin(self.link_loss);
        if lost {
            self.dropped += 1;
        }
        lost
    }

    /// Moves packets, signals and relay messages until nothing moves.
    pub fn pump(&mut self) {
        for _ in 0..100 {
            let mut moved = false;
            for c in &mut self.cores {
                c.pump();
            }
            for i in 0..self.cores.len() {
                let out = std::mem::take(&mut self.cores[i].relayed);
                for (link, msg) in out {
                    moved = true;
                    let j = link.0 as usize;
                    if self.cut.contains(&(i, j)) || j >= self.cores.len() {
                        continue;
                    }
                    if let RelayMessage::Media(p) = &msg {
                        *self.media.entry((i, j)).or_default() += 1;
                        *self
                            .layers
                            .entry((i, j))
                            .or_default()
                            .entry((p.track, p.layer))
                            .or_default() += 1;
                        if self.lose() {
                            continue;
                        }
                    }
                    // Through the bytes, as between nodes.
                    wire::encode(&msg, &mut self.buf);
                    let back = wire::decode(&self.buf).expect("what a core encodes decodes");
                    let now = self.cores[j].now;
                    let twice = matches!(msg, RelayMessage::Media(_)) && self.coin(self.link_dup);
                    if twice {
                        let again = back.clone();
                        self.cores[j].sfu.handle_relay(now, LinkId(i as u32), again);
                    }
                    self.cores[j].sfu.handle_relay(now, LinkId(i as u32), back);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Runs every core for `d` of virtual time in 5 ms steps.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now() + d;
        while self.now() < end {
            for c in &mut self.cores {
                c.produce_media();
            }
            self.pump();
            for c in &mut self.cores {
                c.tick(Duration::from_millis(5));
            }
        }
        self.pump();
    }

    /// Runs until `cond` holds, at most `limit`; true if it held.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Mesh) -> bool) -> bool {
        let end = self.now() + limit;
        while self.now() < end {
            if cond(self) {
                return true;
            }
            self.run_for(Duration::from_millis(20));
        }
        cond(self)
    }

    /// Media packets that crossed from core `i` to core `j` (dropped ones included).
    pub fn media_on(&self, i: usize, j: usize) -> u64 {
        self.media.get(&(i, j)).copied().unwrap_or(0)
    }

    /// The layers of `track` that crossed from `i` to `j`.
    pub fn layers_on(&self, i: usize, j: usize, track: TrackId) -> BTreeSet<Option<u8>> {
        self.layers
            .get(&(i, j))
            .map(|m| {
                m.keys()
                    .filter(|(t, _)| *t == track)
                    .map(|(_, l)| *l)
                    .collect()
            })
            .unwrap_or_default()
    }
}
