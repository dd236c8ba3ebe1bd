//! The scenarios of PERFORMANCE.md (S1 to S6), the cluster's (S7, S8: one
//! room spread over several nodes), a custom one, and the participant plan
//! a run follows.

use std::collections::HashSet;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::measure::RouteKey;
use crate::media::{Trailer, VideoSpec};
use crate::tcp::MediaTransport;

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// 1:1 audio calls, R rooms of 2.
    S1,
    /// 10-party audio rooms (Opus 20 ms frames).
    S2,
    /// 10-party video rooms, audio plus 3-layer simulcast VP8; each
    /// subscriber takes one track large and the others small, and moves the
    /// large one every 10 s (a forced layer switch).
    S3,
    /// Fan-out: 1 publisher (audio + video) to N subscribers per room.
    S4,
    /// Join storm: 50 joins within 1 s (5 rooms of 10, audio).
    S5,
    /// S4 with 2% loss at the generator, both ways: NACK/RTX at work.
    S6,
    /// One 10-party audio room spread over the nodes of `--nodes`: member
    /// `i` of the room joins through node `i mod n`, so most of what each
    /// hears crosses a relay link between nodes.
    S7,
    /// Fan-out over the nodes of `--nodes`: 1 publisher (audio + video) on
    /// the first node to 300 subscribers joining through the nodes in turn.
    S8,
    /// Rooms of `--participants`, the first `--publishers` publish `--media`.
    Custom,
}

/// What publishers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaMix {
    /// Opus only.
    Audio,
    /// VP8 only.
    Video,
    /// Opus and VP8.
    Av,
}

impl MediaMix {
    /// Publishes audio.
    pub fn audio(self) -> bool {
        matches!(self, MediaMix::Audio | MediaMix::Av)
    }
    /// Publishes video.
    pub fn video(self) -> bool {
        matches!(self, MediaMix::Video | MediaMix::Av)
    }
}

/// How a participant signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Signaling {
    /// A WebSocket session (publishes and/or subscribes).
    Ws,
    /// WHIP: publish only.
    Whip,
    /// WHEP: view the room's first audio and video track.
    Whep,
}

/// The shape of a load: rooms and who does what in each.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Load {
    /// The scenario.
    pub scenario: Scenario,
    /// Number of rooms.
    pub rooms: u32,
    /// Participants per room (S4/S6: subscribers per room, plus one publisher).
    pub participants: u32,
    /// Publishers per room.
    pub publishers: u32,
    /// What publishers send.
    pub media: MediaMix,
    /// Publish-only participants use WHIP and subscribe-only ones WHEP.
    pub whip_whep: bool,
    /// Joins per second.
    pub join_rate: f64,
    /// Percent of datagrams the generator drops each way.
    pub loss_pct: f64,
    /// Nodes the participants join through (1: one server); a room's
    /// member `i` joins through node `i mod nodes`.
    pub nodes: u32,
    /// How participants carry media: UDP, or ICE over TCP.
    pub transport: MediaTransport,
}

impl Load {
    /// The defaults of `scenario` (rooms, participants, media, join rate, loss).
    pub fn defaults(scenario: Scenario) -> Load {
        let (rooms, participants, publishers, media, loss) = match scenario {
            Scenario::S1 => (10, 2, 2, MediaMix::Audio, 0.0),
            Scenario::S2 => (5, 10, 10, MediaMix::Audio, 0.0),
            Scenario::S3 => (1, 10, 10, MediaMix::Av, 0.0),
            Scenario::S4 => (1, 10, 1, MediaMix::Av, 0.0),
            Scenario::S5 => (5, 10, 10, MediaMix::Audio, 0.0),
            Scenario::S6 => (1, 10, 1, MediaMix::Av, 2.0),
            Scenario::S7 => (1, 10, 10, MediaMix::Audio, 0.0),
            Scenario::S8 => (1, 300, 1, MediaMix::Av, 0.0),
            Scenario::Custom => (1, 4, 4, MediaMix::Av, 0.0),
        };
        Load {
            scenario,
            rooms,
            participants,
            publishers,
            media,
            whip_whep: false,
            join_rate: 50.0,
            loss_pct: loss,
            nodes: 1,
            transport: MediaTransport::Udp,
        }
    }

    /// Whether a sweep scales this load by subscribers (fan-out) or rooms.
    pub fn sweeps_subscribers(&self) -> bool {
        matches!(self.scenario, Scenario::S4 | Scenario::S6 | Scenario::S8)
    }

    /// The value a sweep changes.
    pub fn scale(&self) -> u32 {
        if self.sweeps_subscribers() {
            self.participants
        } else {
            self.rooms
        }
    }

    /// This load with the swept value set to `v`.
    pub fn with_scale(&self, v: u32) -> Load {
        let mut l = self.clone();
        if l.sweeps_subscribers() {
            l.participants = v;
        } else {
            l.rooms = v;
        }
        l
    }

    /// A short description, e.g. "S2: 5 rooms x 10 (10 publish audio)".
    pub fn describe(&self) -> String {
        let name = format!("{:?}", self.scenario).to_uppercase();
        let media = format!("{:?}", self.media).to_lowercase();
        let mut spread = if self.nodes > 1 {
            format!(", over {} nodes", self.nodes)
        } else {
            String::new()
        };
        if self.transport == MediaTransport::Tcp {
            spread.push_str(", ICE over TCP");
        }
        if self.sweeps_subscribers() {
            format!(
                "{name}: {} room(s), 1 publisher ({media}) -> {} subscribers each{spread}",
                self.rooms, self.participants
            )
        } else {
            format!(
                "{name}: {} room(s) x {} participants, {} publish {media}{spread}",
                self.rooms, self.participants, self.publishers
            )
        }
    }

    /// The participants of a run, in join order, with their join offsets.
    pub fn plan(&self, run_id: &str) -> Vec<Planned> {
        let mut out = Vec::new();
        let fanout = self.sweeps_subscribers();
        for r in 0..self.rooms {
            let room = format!("lt-{run_id}-{r}");
            let members = if fanout {
                self.participants + self.publishers
            } else {
                self.participants
            };
            for i in 0..members {
                let publishes = i < self.publishers;
                let subscribes = !fanout || !publishes;
                let signaling = match (self.whip_whep, publishes, subscribes) {
                    (true, true, false) => Signaling::Whip,
                    (true, false, true) => Signaling::Whep,
                    _ => Signaling::Ws,
                };
                out.push(Planned {
                    id: out.len() as u32,
                    node: i % self.nodes.max(1),
                    room_index: r,
                    room: room.clone(),
                    identity: format!("p{}", out.len()),
                    audio: publishes && self.media.audio(),
                    video: publishes && self.media.video(),
                    subscribe: subscribes,
                    signaling,
                    join_at: Duration::ZERO,
                    access_token: None,
                });
            }
        }
        let rate = if self.join_rate > 0.0 {
            self.join_rate
        } else {
            f64::INFINITY
        };
        for p in &mut out {
            p.join_at = Duration::from_secs_f64(f64::from(p.id) / rate);
        }
        out
    }
}

/// One participant of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// Index in the run.
    pub id: u32,
    /// The node (index in `--nodes`) it joins through.
    pub node: u32,
    /// Room number.
    pub room_index: u32,
    /// Room name.
    pub room: String,
    /// Identity in its token.
    pub identity: String,
    /// Publishes audio.
    pub audio: bool,
    /// Publishes video.
    pub video: bool,
    /// Receives the room's media.
    pub subscribe: bool,
    /// How it signals.
    pub signaling: Signaling,
    /// When it joins, after the run starts.
    pub join_at: Duration,
    /// An account's access token to join with (naming the room), instead of
    /// a room token signed here: a call's members join its room so.
    #[serde(skip)]
    pub access_token: Option<String>,
}

/// The routes (receiver, sending track) a plan implies: every subscriber
/// receives every other publisher's tracks in its room; a WHEP viewer only
/// the room's first audio and first video track.
pub fn expected_routes(plan: &[Planned]) -> HashSet<RouteKey> {
    let mut out = HashSet::new();
    for s in plan.iter().filter(|p| p.subscribe) {
        let others = plan
            .iter()
            .filter(|p| p.room_index == s.room_index && p.id != s.id);
        if s.signaling == Signaling::Whep {
            let mut others = others.clone();
            if let Some(a) = others.clone().find(|p| p.audio) {
                out.insert((s.id, Trailer::sender_id(a.id, false)));
            }
            if let Some(v) = others.find(|p| p.video) {
                out.insert((s.id, Trailer::sender_id(v.id, true)));
            }
            continue;
        }
        for p in others {
            if p.audio {
                out.insert((s.id, Trailer::sender_id(p.id, false)));
            }
            if p.video {
                out.insert((s.id, Trailer::sender_id(p.id, true)));
            }
        }
    }
    out
}

/// Simulcast video defaults: rids `q,h,f` (as the web page) at
/// 150/500/1700 kbit/s, 30 fps.
pub fn default_video() -> VideoSpec {
    VideoSpec::simulcast(["q", "h", "f"], [150, 500, 1700], 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s2_plan_and_routes() {
        let l = Load::defaults(Scenario::S2);
        let plan = l.plan("x");
        assert_eq!(plan.len(), 50);
        assert!(plan.iter().all(|p| p.audio && !p.video && p.subscribe));
        // 5 rooms x 10 receivers x 9 other publishers.
        assert_eq!(expected_routes(&plan).len(), 5 * 10 * 9);
        assert_eq!(plan[49].join_at, Duration::from_secs_f64(49.0 / 50.0));
    }

    #[test]
    fn s4_fanout_with_whep() {
        let mut l = Load::defaults(Scenario::S4);
        l.participants = 3;
        l.whip_whep = true;
        let plan = l.plan("x");
        assert_eq!(plan.len(), 4);
        assert_eq!(plan[0].signaling, Signaling::Whip);
        assert!(plan[0].audio && plan[0].video && !plan[0].subscribe);
        assert!(plan[1..].iter().all(|p| p.signaling == Signaling::Whep));
        assert_eq!(expected_routes(&plan).len(), 6);
        assert_eq!(l.with_scale(7).participants, 7);
    }

    #[test]
    fn s7_and_s8_spread_each_room_over_the_nodes() {
        let mut l = Load::defaults(Scenario::S7);
        l.nodes = 3;
        let plan = l.plan("x");
        assert_eq!(plan.len(), 10);
        let per_node: Vec<usize> = (0..3)
            .map(|n| plan.iter().filter(|p| p.node == n).count())
            .collect();
        assert_eq!(per_node, [4, 3, 3]);
        assert_eq!(expected_routes(&plan).len(), 10 * 9);

        let mut l = Load::defaults(Scenario::S8);
        l.nodes = 3;
        let plan = l.plan("x");
        assert_eq!(plan.len(), 301);
        // The publisher joins through the first node; subscribers in turn.
        assert!(plan[0].video && plan[0].node == 0 && !plan[0].subscribe);
        assert_eq!(plan.iter().filter(|p| p.node == 2).count(), 100);
        assert!(l.sweeps_subscribers());
        // One node: everyone on it.
        assert!(
            Load::defaults(Scenario::S8)
                .plan("x")
                .iter()
                .all(|p| p.node == 0)
        );
    }
}
