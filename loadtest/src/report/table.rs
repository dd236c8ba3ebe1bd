//! The summary tables printed at the end of a run and of a sweep.

use std::fmt::Write;

use super::{RelayFigures, RunReport, SweepReport};
use crate::measure::{LatencySummary, LossSummary};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn lat(l: &LatencySummary) -> String {
    if l.count == 0 {
        "-".into()
    } else {
        format!("{} / {} / {}", l.p50_us, l.p99_us, l.p999_us)
    }
}

/// Thousands with thin separators: 12 345.
pub fn group(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// The run table's lines: a label, the SFU's figure, the relay's, a ratio.
struct Rows(String);

impl Rows {
    fn row(&mut self, k: &str, sfu: &str, relay: &str, ratio: &str) {
        let _ = writeln!(self.0, "{k:<34}{sfu:>22}{relay:>22}{ratio:>10}");
    }

    /// A figure the relay has no counterpart for.
    fn sfu(&mut self, k: &str, sfu: &str) {
        self.row(k, sfu, "", "");
    }
}

impl RunReport {
    /// The summary table.
    pub fn table(&self) -> String {
        let s = &self.server;
        // The relay's figure, `-` when the floor was not measured.
        let relay = |f: &dyn Fn(&RelayFigures) -> String| self.relay.as_ref().map_or("-".into(), f);
        let mut o = Rows(String::new());
        let _ = writeln!(
            o.0,
            "\n{}  ({} participants, {:.1} s measured)",
            self.description, self.participants, self.duration_s
        );
        o.row("", "vela SFU", "raw UDP relay", "ratio");
        o.row(
            "forwarded packets/s",
            &group(s.forwarded_pps),
            &relay(&|r| group(r.forwarded_pps)),
            "",
        );
        o.sfu("  received by the generator /s", &group(s.receivers_pps));
        o.row(
            "server CPU % of one core",
            &opt(s.cpu_pct, 1),
            &opt(self.relay.as_ref().and_then(|r| r.cpu_pct), 1),
            "",
        );
        o.row(
            "CPU µs per forwarded packet",
            &opt(s.cpu_us_per_packet, 2),
            &opt(self.relay.as_ref().and_then(|r| r.cpu_us_per_packet), 2),
            &self
                .cpu_ratio_to_relay
                .map_or("-".into(), |x| format!("{x:.1}x")),
        );
        o.row(
            "packets/s per core at 100%",
            &s.pps_per_core.map_or("-".into(), group),
            &self
                .relay
                .as_ref()
                .and_then(|r| r.cpu_us_per_packet)
                .map_or("-".into(), |u| group(1e6 / u)),
            "",
        );
        o.row(
            "latency p50/p99/p99.9 µs (all)",
            &lat(&s.latency.all),
            &relay(&|r| lat(&r.latency.all)),
            "",
        );
        o.row(
            "  audio",
            &lat(&s.latency.audio),
            &relay(&|r| lat(&r.latency.audio)),
            "",
        );
        o.row(
            "  video",
            &lat(&s.latency.video),
            &relay(&|r| lat(&r.latency.video)),
            "",
        );
        if let Some(h) = &s.latency.hops {
            o.sfu("  audio, same node", &lat(&h.local_audio));
            o.sfu("  audio, across nodes", &lat(&h.relayed_audio));
            if h.local_video.count + h.relayed_video.count > 0 {
                o.sfu("  video, same node", &lat(&h.local_video));
                o.sfu("  video, across nodes", &lat(&h.relayed_video));
            }
        }
        if let (Some(a), Some(b)) = (self.added_latency_p50_us, self.added_latency_p99_us) {
            o.sfu("added latency p50 / p99 µs", &format!("{a} / {b}"));
        }
        let loss = |l: &LossSummary| {
            format!(
                "{:.3} ({}/{})",
                l.loss_pct, l.frames_lost, l.frames_expected
            )
        };
        o.row(
            "frame loss % (lost / expected)",
            &loss(&s.loss),
            &relay(&|r| loss(&r.loss)),
            "",
        );
        if s.loss_video.frames_expected > 0 && s.loss_audio.frames_expected > 0 {
            o.sfu(
                "  audio / video loss %",
                &format!(
                    "{:.3} / {:.3}",
                    s.loss_audio.loss_pct, s.loss_video.loss_pct
                ),
            );
        }
        o.row(
            "duplicates / reordered / holes",
            &format!(
                "{} / {} / {}",
                s.loss.duplicates, s.loss.reordered, s.loss.packet_holes
            ),
            &relay(&|r| format!("{} / {}", r.loss.duplicates, r.loss.reordered)),
            "",
        );
        let jitter = |l: &LossSummary| format!("{:.0} / {:.0}", l.jitter_mean_us, l.jitter_max_us);
        o.row(
            "jitter mean / max µs",
            &jitter(&s.loss),
            &relay(&|r| jitter(&r.loss)),
            "",
        );
        let routes = |l: &LossSummary| {
            format!(
                "{}/{}",
                l.routes_expected - l.routes_missing,
                l.routes_expected
            )
        };
        o.row(
            "routes with media",
            &routes(&s.loss),
            &relay(&|r| routes(&r.loss)),
            "",
        );
        let j = &s.join;
        o.sfu(
            "joined / connected",
            &format!("{}/{} / {}", j.joined, j.attempted, j.connected),
        );
        o.sfu(
            "join ms p50/p99: answer",
            &format!("{:.1} / {:.1}", j.answer_p50_ms, j.answer_p99_ms),
        );
        o.sfu(
            "  connected (ICE+DTLS)",
            &format!("{:.1} / {:.1}", j.connected_p50_ms, j.connected_p99_ms),
        );
        o.sfu(
            "  first media",
            &format!("{:.1} / {:.1}", j.first_media_p50_ms, j.first_media_p99_ms),
        );
        o.sfu(
            "server RSS KiB per participant",
            &format!(
                "{:.0} ({} -> {})",
                s.memory.per_participant_kb, s.memory.rss_before_kb, s.memory.rss_active_kb
            ),
        );
        o.sfu(
            "kernel UDP rcvbuf/sndbuf drops",
            &format!(
                "{} / {}",
                s.kernel_udp.rcvbuf_errors, s.kernel_udp.sndbuf_errors
            ),
        );
        for (i, n) in s.nodes.iter().enumerate() {
            o.sfu(
                &format!("node {} {}", i + 1, n.url),
                &format!(
                    "{:.0} participants, {} fwd/s, CPU {}% ({} µs/pkt)",
                    n.participants,
                    group(n.forwarded_pps),
                    opt(n.cpu_pct, 1),
                    opt(n.cpu_us_per_packet, 2)
                ),
            );
            let relay: Vec<String> = n
                .relay
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, v)| format!("{} {}", k.trim_start_matches("vela_relay_"), group(*v)))
                .collect();
            if !relay.is_empty() {
                o.sfu("  relay (window)", &relay.join(", "));
            }
        }
        let g = &self.generator;
        o.sfu(
            "generator CPU % / lag p99 µs",
            &format!("{:.1} / {}", g.cpu_pct, g.lag_p99_us),
        );
        let mut o = o.0;
        let _ = writeln!(
            o,
            "{}",
            if self.valid {
                "run VALID".to_owned()
            } else {
                "run INVALID".to_owned()
            }
        );
        for w in &self.warnings {
            let _ = writeln!(o, "  ! {w}");
        }
        o
    }
}

impl SweepReport {
    /// The summary table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\nsweep over {} (limits: loss {} %, p99 {} ms)",
            self.variable, self.loss_limit_pct, self.p99_limit_ms
        );
        let _ = writeln!(
            o,
            "{:>8}{:>8}{:>12}{:>9}{:>10}{:>9}{:>10}{:>10}{:>9}{:>8}  result",
            self.variable,
            "parts",
            "fwd pps",
            "CPU %",
            "µs/pkt",
            "relay x",
            "p50 µs",
            "p99 µs",
            "loss %",
            "gen %"
        );
        for s in &self.steps {
            let r = &s.report;
            let _ = writeln!(
                o,
                "{:>8}{:>8}{:>12}{:>9}{:>10}{:>9}{:>10}{:>10}{:>9.3}{:>8.0}  {}",
                s.scale,
                r.participants,
                group(r.server.forwarded_pps),
                opt(r.server.cpu_pct, 1),
                opt(r.server.cpu_us_per_packet, 2),
                opt(r.cpu_ratio_to_relay, 1),
                r.server.latency.all.p50_us,
                r.server.latency.all.p99_us,
                r.server.loss.loss_pct,
                r.generator.cpu_pct,
                match (s.passed, s.runs) {
                    (true, 1) => "pass".to_owned(),
                    (true, n) => format!("pass ({}/{n} runs)", s.passes),
                    (false, 1) => format!("FAIL: {}", s.reason.clone().unwrap_or_default()),
                    (false, n) => format!(
                        "FAIL ({}/{n} runs passed): {}",
                        s.passes,
                        s.reason.clone().unwrap_or_default()
                    ),
                }
            );
        }
        match (self.capacity, self.capacity_forwarded_pps) {
            (Some(c), Some(p)) => {
                let _ = writeln!(
                    o,
                    "capacity: {} {} ({} forwarded packets/s); {}",
                    c,
                    self.variable,
                    group(p),
                    self.stopped
                );
            }
            _ => {
                let _ = writeln!(o, "capacity not found: {}", self.stopped);
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(1234567.0), "1 234 567");
        assert_eq!(group(12.4), "12");
        assert_eq!(group(-1000.0), "-1 000");
    }
}
