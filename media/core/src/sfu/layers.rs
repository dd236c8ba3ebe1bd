//! Simulcast layer allocation: which layer each subscriber receives, within
//! its bandwidth estimate and the size it renders at.

use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::media::{MediaKind, Mid};

use super::{Sfu, requeue};
use crate::error::SignalError;
use crate::id::{ConnectionId, TrackId};
use crate::isolation::RtcCall;
use crate::layer_selector::{Demand, allocate, layer_for_size};
use crate::signal::Signal;
use crate::track::{Publication, SubscriptionState, TrackSettings};

/// How often simulcast layers are re-allocated to subscribers.
pub(super) const LAYER_INTERVAL: Duration = Duration::from_millis(500);

/// A subscriber's budget before its bandwidth estimate arrives.
const DEFAULT_BUDGET: u64 = 2_500_000;

/// What one audio track is assumed to take of a budget.
const AUDIO_BITRATE: u64 = 48_000;

/// How long a layer just asked for may take to arrive before it counts as
/// one the publisher cannot send. A browser starts a layer when its own send
/// estimate allows, which took Firefox up to several seconds here; judged
/// absent sooner, the layer was paused again at the next allocation and
/// never started (layers_needed flipping every 500 ms).
const LAYER_START_GRACE: Duration = Duration::from_secs(5);

/// What each simulcast layer of `p` costs, lowest first: its measured
/// bitrate, or for a layer never measured because the publisher was told to
/// pause it, or was asked for it less than [`LAYER_START_GRACE`] ago, a
/// nominal one, so that a subscriber can still ask for it (which resumes it)
/// and keep asking while it starts. A layer never seen though it may be sent
/// for longer stays at 0 (absent).
pub(super) fn layer_costs(p: &Publication, now: Instant) -> Vec<u64> {
    let top = p.layers.len().saturating_sub(1);
    p.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let paused = p.layers_signalled.is_some_and(|m| m & (1 << i) == 0);
            let starting = l
                .asked_at
                .is_some_and(|t| now.saturating_duration_since(t) < LAYER_START_GRACE);
            if l.bitrate > 0 || !(paused || starting) {
                l.bitrate
            } else {
                match top - i {
                    0 => 1_200_000,
                    1 => 500_000,
                    _ => 150_000,
                }
            }
        })
        .collect()
}

impl Sfu {
    /// A subscriber's wishes for one remote track: on or off (a hidden tile,
    /// an unsubscribed track) and the size it renders it at (adaptive stream).
    pub fn handle_track_settings(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        track: TrackId,
        settings: TrackSettings,
    ) -> Result<(), SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&connection)
            .ok_or(SignalError::UnknownParticipant)?;
        let sub = peer
            .subscriptions
            .iter_mut()
            .find(|s| s.source == Some(track))
            .ok_or(SignalError::UnknownTrack)?;
        let was_enabled = sub.settings.enabled;
        sub.settings = settings;
        let mid = sub.mid();
        if let Some(mid) = mid
            && let Some(p) = self.publication_mut(track)
            && let Some(s) = p
                .subscribers
                .iter_mut()
                .find(|s| s.connection == connection && s.mid == mid)
        {
            s.paused = !settings.enabled;
            if settings.enabled && !was_enabled {
                // Resume where a picture can start, the subscriber's
                // numbering going on where it stopped (what was skipped
                // while hidden is no hole to NACK).
                s.current = None;
                s.rebase();
                if !p.layers.is_empty() {
                    s.target = Some(0);
                }
                self.request_keyframe(track);
            }
        }
        self.allocate_layers(connection);
        self.update_demand(track);
        self.update_layer_needs();
        Ok(())
    }

    pub(super) fn allocate_all_layers(&mut self) {
        let all: Vec<ConnectionId> = self.peers.keys().copied().collect();
        for p in all {
            self.allocate_layers(p);
        }
        self.update_layer_needs();
    }

    /// Chooses the simulcast layer of each video `subscriber` receives.
    pub(super) fn allocate_layers(&mut self, subscriber: ConnectionId) {
        struct Item {
            track: TrackId,
            mid: Mid,
            bitrates: Vec<u64>,
            max_layer: Option<usize>,
            current: Option<usize>,
        }
        let Some(peer) = self.peers.get(&subscriber) else {
            return;
        };
        let mut items: Vec<Item> = Vec::new();
        let mut audio = 0u64;
        for s in &peer.subscriptions {
            let (Some(track), SubscriptionState::Open(mid)) = (s.source, s.state) else {
                continue;
            };
            if s.kind == MediaKind::Audio {
                audio += 1;
                continue;
            }
            // A local track, or one relayed from another core.
            let Some(p) = self.publication_ref(track) else {
                continue;
            };
            if p.layers.len() < 2 {
                continue;
            }
            let n = p.layers.len();
            let max_layer = match (s.settings.enabled, s.settings.width, s.settings.height) {
                (false, _, _) => None,
                (true, Some(w), Some(h)) => Some(layer_for_size(w, h, p.full_width, n)),
                (true, _, _) => Some(n - 1),
            };
            let current = p
                .subscribers
                .iter()
                .find(|x| x.connection == subscriber && x.mid == mid)
                .and_then(|x| x.current.map(usize::from));
            items.push(Item {
                track,
                mid,
                bitrates: layer_costs(p, self.now),
                max_layer,
                current,
            });
        }
        if items.is_empty() {
            return;
        }
        let budget = peer
            .estimate()
            .unwrap_or(DEFAULT_BUDGET)
            .saturating_sub(audio * AUDIO_BITRATE);
        let demands: Vec<Demand<'_>> = items
            .iter()
            .map(|i| Demand {
                bitrates: &i.bitrates,
                max_layer: i.max_layer,
                current: i.current,
            })
            .collect();
        let choice = allocate(budget, &demands);
        // Ask the estimator to probe up to what the sizes would use.
        let (mut min, mut desired) = (audio * AUDIO_BITRATE, audio * AUDIO_BITRATE);
        for i in &items {
            if let Some(m) = i.max_layer {
                min += i.bitrates.first().copied().unwrap_or(0);
                desired += i.bitrates.get(m).copied().unwrap_or(0);
            }
        }
        let now = self.now;
        if let Some(peer) = self.peers.get_mut(&subscriber) {
            let min = min.max(100_000);
            let desired = peer.probe_rate(now, min, desired.max(300_000));
            let set = peer.rtc.call(RtcCall::Bandwidth, |rtc| {
                rtc.bwe()
                    .set_bitrate(Bitrate::bps(min), Bitrate::bps(desired))
            });
            if set.is_err() {
                requeue(&mut self.dirty, peer);
            }
        }
        let mut switches = 0;
        for (i, c) in items.iter().zip(choice) {
            let Some(p) = self.publication_mut(i.track) else {
                continue;
            };
            if let Some(s) = p
                .subscribers
                .iter_mut()
                .find(|x| x.connection == subscriber && x.mid == i.mid)
            {
                let target = c.map(|c| c as u8);
                if s.target != target {
                    tracing::debug!(participant = %subscriber, track = %i.track, from = ?s.target, to = ?target, "layer target");
                    switches += 1;
                }
                s.target = target;
            }
        }
        self.stats.layer_switches += switches;
    }

    /// Tells publishers which simulcast layers anyone needs, when that changed.
    pub(super) fn update_layer_needs(&mut self) {
        for peer in self.peers.values_mut() {
            let id = peer.id();
            for p in &mut peer.published {
                if p.layers.len() < 2 {
                    continue;
                }
                // Layers up to the highest one in use stay on, so a switch
                // down finds its layer running.
                // And those other cores' subscribers demand over links.
                let linked = self
                    .relay
                    .demand
                    .get(&p.id)
                    .map_or(0u32, |d| d.iter().fold(0, |m, (_, x)| m | x));
                let linked_top = (linked != 0).then(|| (31 - linked.leading_zeros()) as u8);
                let top = p
                    .subscribers
                    .iter()
                    .filter(|s| !s.paused)
                    .filter_map(|s| s.target.max(s.current))
                    .chain(linked_top)
                    .max();
                let mask: u32 = match top {
                    Some(t) => (1u32 << (u32::from(t) + 1)) - 1,
                    None => 0,
                };
                if p.layers_signalled == Some(mask) {
                    continue;
                }
                let before = p.layers_signalled.unwrap_or(0);
                for (i, l) in p.layers.iter_mut().enumerate() {
                    if mask & !before & (1 << i) != 0 {
                        l.asked_at = Some(self.now);
                    }
                }
                p.layers_signalled = Some(mask);
                let rids = p
                    .layers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, l)| l.rid.to_string())
                    .collect();
                self.signals
                    .push_back((id, Signal::LayersNeeded { track: p.id, rids }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LAYER_START_GRACE, layer_costs};
    use crate::id::TrackId;
    use crate::track::{Layer, Publication};
    use std::time::{Duration, Instant};
    use str0m::media::{MediaKind, Mid};

    #[test]
    fn a_layer_asked_for_keeps_a_nominal_cost_while_it_starts() {
        let t0 = Instant::now();
        let mut p = Publication::new(TrackId(1), Mid::from("1"), MediaKind::Video);
        p.layers = ["q", "h", "f"].map(|r| Layer::new(r.into())).into();
        // Only q was ever sent (Firefox starts with one layer) and only q is asked for.
        p.layers[0].bitrate = 150_000;
        p.layers_signalled = Some(0b001);
        assert_eq!(layer_costs(&p, t0), [150_000, 500_000, 1_200_000]);
        // Now all three are asked for: h and f are not there yet, but may come.
        p.layers_signalled = Some(0b111);
        for l in &mut p.layers[1..] {
            l.asked_at = Some(t0);
        }
        let soon = t0 + LAYER_START_GRACE - Duration::from_millis(1);
        assert_eq!(layer_costs(&p, soon), [150_000, 500_000, 1_200_000]);
        // h arrived; f never did: the publisher cannot send it.
        p.layers[1].bitrate = 450_000;
        assert_eq!(
            layer_costs(&p, t0 + LAYER_START_GRACE),
            [150_000, 450_000, 0]
        );
    }
}
