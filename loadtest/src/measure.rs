//! Measurements at the receivers: latency histograms, and per route (one
//! sending track to one receiver) loss, duplicates, reordering and jitter.

use std::collections::HashMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::media::Trailer;

/// A latency histogram in microseconds (1 µs to 60 s, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        #[allow(clippy::unwrap_used)] // Constant, valid bounds.
        Latency(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap())
    }

    /// Records one value in microseconds (clamped to the bounds).
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// Adds all of `other`.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Forgets all values.
    pub fn clear(&mut self) {
        self.0.reset();
    }

    /// The value at quantile `q` (0..=1), 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            0
        } else {
            self.0.value_at_quantile(q)
        }
    }

    /// p50, p99, p99.9 and max.
    pub fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.count(),
            p50_us: self.quantile(0.5),
            p99_us: self.quantile(0.99),
            p999_us: self.quantile(0.999),
            max_us: if self.0.is_empty() { 0 } else { self.0.max() },
        }
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

/// What arrived from one sending track at one receiver.
#[derive(Debug, Clone, Default)]
pub struct Route {
    /// First frame sequence received: frames before it are not expected.
    pub first: u32,
    /// Highest frame sequence received.
    pub max: u32,
    /// Distinct frames received.
    pub received: u64,
    /// Frames received more than once.
    pub duplicates: u64,
    /// Frames that arrived after a later one.
    pub reordered: u64,
    /// RFC 3550 interarrival jitter, microseconds.
    pub jitter_us: f64,
    last_transit: Option<i64>,
    /// Bit i set: frame `max - i` was received.
    window: u128,
}

impl Route {
    /// Accounts one frame with trailer `t` received at `recv_us`.
    pub fn record(&mut self, t: &Trailer, recv_us: u64) {
        if self.received == 0 && self.duplicates == 0 {
            self.first = t.seq;
            self.max = t.seq;
            self.window = 1;
            self.received = 1;
            self.last_transit = Some(recv_us as i64 - t.sent_us as i64);
            return;
        }
        if t.seq > self.max {
            let d = t.seq - self.max;
            self.window = if d >= 128 { 0 } else { self.window << d };
            self.window |= 1;
            self.max = t.seq;
            self.received += 1;
            let transit = recv_us as i64 - t.sent_us as i64;
            if let Some(last) = self.last_transit {
                let dd = (transit - last).unsigned_abs() as f64;
                self.jitter_us += (dd - self.jitter_us) / 16.0;
            }
            self.last_transit = Some(transit);
        } else if t.seq < self.first {
            // Older than the route's start: arrived late, count it as reordered.
            self.reordered += 1;
        } else {
            let back = self.max - t.seq;
            if back < 128 && self.window & (1u128 << back) != 0 {
                self.duplicates += 1;
            } else {
                if back < 128 {
                    self.window |= 1u128 << back;
                }
                self.received += 1;
                self.reordered += 1;
            }
        }
    }

    /// Frames expected when the sender's last frame was `last_sent`.
    pub fn expected(&self, last_sent: u32) -> u64 {
        u64::from(last_sent.max(self.max).saturating_sub(self.first)) + 1
    }
}

/// Route key: (receiving participant, sending track).
pub type RouteKey = (u32, u32);

/// Counters and latencies over a span of time (the measuring window, or one
/// progress interval).
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Audio frames received with a trailer.
    pub audio_frames: u64,
    /// Video frames received with a trailer.
    pub video_frames: u64,
    /// RTP packets received by subscribers (media, after SRTP).
    pub rtp_packets: u64,
    /// RTP payload bytes received.
    pub rtp_bytes: u64,
    /// Frames written by publishers (every layer counted).
    pub frames_sent: u64,
    /// RTP packets written by publishers.
    pub packets_sent: u64,
    /// Send-to-receive latency of audio frames.
    pub audio_latency: Latency,
    /// Send-to-receive latency of video frames (last packet).
    pub video_latency: Latency,
    /// How late media writes ran against their schedule.
    pub lag: Latency,
    /// Video frames received per simulcast layer index.
    pub video_layers: [u64; 4],
    /// Latencies by hop (`[relayed][video]`): whether the sender joined
    /// through another node than the receiver (`--nodes`), so its media
    /// crossed a relay link between nodes.
    pub hops: [[Latency; 2]; 2],
}

impl Window {
    /// Records a received frame; `relayed` when it came from a participant
    /// on another node.
    pub fn frame(&mut self, video: bool, layer: u8, latency_us: u64, relayed: bool) {
        self.hops[usize::from(relayed)][usize::from(video)].record(latency_us);
        if video {
            self.video_frames += 1;
            self.video_layers[usize::from(layer.min(3))] += 1;
            self.video_latency.record(latency_us);
        } else {
            self.audio_frames += 1;
            self.audio_latency.record(latency_us);
        }
    }

    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &Window) {
        self.audio_frames += o.audio_frames;
        self.video_frames += o.video_frames;
        self.rtp_packets += o.rtp_packets;
        self.rtp_bytes += o.rtp_bytes;
        self.frames_sent += o.frames_sent;
        self.packets_sent += o.packets_sent;
        self.audio_latency.merge(&o.audio_latency);
        self.video_latency.merge(&o.video_latency);
        self.lag.merge(&o.lag);
        for (a, b) in self.video_layers.iter_mut().zip(o.video_layers) {
            *a += b;
        }
        for (a, b) in self.hops.iter_mut().flatten().zip(o.hops.iter().flatten()) {
            a.merge(b);
        }
    }

    /// Both kinds' latencies together.
    pub fn all_latency(&self) -> Latency {
        let mut l = self.audio_latency.clone();
        l.merge(&self.video_latency);
        l
    }
}

/// Loss, duplicates, order and jitter over all routes of a run.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct LossSummary {
    /// Routes (sending track, receiver) the scenario implies.
    pub routes_expected: u64,
    /// Of those, routes on which nothing arrived.
    pub routes_missing: u64,
    /// Frames expected on the routes that carried media.
    pub frames_expected: u64,
    /// Of those, frames that never arrived.
    pub frames_lost: u64,
    /// `frames_lost / frames_expected`, percent.
    pub loss_pct: f64,
    /// Frames received twice.
    pub duplicates: u64,
    /// Frames that arrived after a later one.
    pub reordered: u64,
    /// RTP sequence holes left at the receivers (packet level).
    pub packet_holes: u64,
    /// Mean RFC 3550 jitter over routes, microseconds.
    pub jitter_mean_us: f64,
    /// Largest route jitter, microseconds.
    pub jitter_max_us: f64,
}

/// Sums routes against what each track sent; `video` picks one kind.
pub fn loss_summary(
    routes: &HashMap<RouteKey, Route>,
    last_sent: &HashMap<u32, u32>,
    video: Option<bool>,
) -> LossSummary {
    let mut s = LossSummary::default();
    let mut n = 0u64;
    for ((_, sender), r) in routes {
        if video.is_some_and(|v| (sender % 2 == 1) != v) {
            continue;
        }
        let last = last_sent.get(sender).copied().unwrap_or(r.max);
        let exp = r.expected(last);
        s.frames_expected += exp;
        s.frames_lost += exp.saturating_sub(r.received);
        s.duplicates += r.duplicates;
        s.reordered += r.reordered;
        s.jitter_mean_us += r.jitter_us;
        s.jitter_max_us = s.jitter_max_us.max(r.jitter_us);
        n += 1;
    }
    if n > 0 {
        s.jitter_mean_us /= n as f64;
    }
    if s.frames_expected > 0 {
        s.loss_pct = s.frames_lost as f64 * 100.0 / s.frames_expected as f64;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seq: u32, sent: u64) -> Trailer {
        Trailer {
            sender: 1,
            video: false,
            layer: 0,
            seq,
            sent_us: sent,
        }
    }

    #[test]
    fn route_counts_loss_dups_and_reorder() {
        let mut r = Route::default();
        for s in [10, 11, 13, 12, 13, 15] {
            r.record(&t(s, u64::from(s) * 20_000), u64::from(s) * 20_000 + 500);
        }
        assert_eq!(r.first, 10);
        assert_eq!(r.received, 5);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.reordered, 1);
        // Sender went on to 16: 10..=16 is 7 frames, 14 and 16 lost.
        assert_eq!(r.expected(16), 7);
        let mut routes = HashMap::new();
        routes.insert((0, 1), r);
        let last = HashMap::from([(1, 16)]);
        let s = loss_summary(&routes, &last, None);
        assert_eq!(s.frames_lost, 2);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.jitter_mean_us, 0.0);
    }

    #[test]
    fn latency_percentiles() {
        let mut l = Latency::new();
        for v in 1..=1000 {
            l.record(v);
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((495..=505).contains(&s.p50_us));
        assert!((985..=995).contains(&s.p99_us));
    }
}
