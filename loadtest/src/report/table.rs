//! The summary tables printed at the end of a run and of a sweep.

use std::fmt::Write;

use super::{RunReport, SweepReport};
use crate::measure::LatencySummary;

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

impl RunReport {
    /// The summary table.
    pub fn table(&self) -> String {
        let s = &self.server;
        let r = self.relay.as_ref();
        let mut o = String::new();
        let _ = writeln!(
            o,
            "\n{}  ({} participants, {:.1} s measured)",
            self.description, self.participants, self.duration_s
        );
        let _ = writeln!(
            o,
            "{:<34}{:>22}{:>22}{:>10}",
            "", "vela SFU", "raw UDP relay", "ratio"
        );
        let row = |o: &mut String, k: &str, a: String, b: String, c: String| {
            let _ = writeln!(o, "{k:<34}{a:>22}{b:>22}{c:>10}");
        };
        row(
            &mut o,
            "forwarded packets/s",
            group(s.forwarded_pps),
            r.map_or("-".into(), |r| group(r.forwarded_pps)),
            String::new(),
        );
        row(
            &mut o,
            "  received by the generator /s",
            group(s.receivers_pps),
            String::new(),
            String::new(),
        );
        row(
            &mut o,
            "server CPU % of one core",
            opt(s.cpu_pct, 1),
            opt(r.and_then(|r| r.cpu_pct), 1),
            String::new(),
        );
        row(
            &mut o,
            "CPU µs per forwarded packet",
            opt(s.cpu_us_per_packet, 2),
            opt(r.and_then(|r| r.cpu_us_per_packet), 2),
            self.cpu_ratio_to_relay
                .map_or("-".into(), |x| format!("{x:.1}x")),
        );
        row(
            &mut o,
            "packets/s per core at 100%",
            s.pps_per_core.map_or("-".into(), group),
            r.and_then(|r| r.cpu_us_per_packet)
                .map_or("-".into(), |u| group(1e6 / u)),
            String::new(),
        );
        row(
            &mut o,
            "latency p50/p99/p99.9 µs (all)",
            lat(&s.latency.all),
            r.map_or("-".into(), |r| lat(&r.latency.all)),
            String::new(),
        );
        row(
            &mut o,
            "  audio",
            lat(&s.latency.audio),
            r.map_or("-".into(), |r| lat(&r.latency.audio)),
            String::new(),
        );
        row(
            &mut o,
            "  video",
            lat(&s.latency.video),
            r.map_or("-".into(), |r| lat(&r.latency.video)),
            String::new(),
        );
        if let (Some(a), Some(b)) = (self.added_latency_p50_us, self.added_latency_p99_us) {
            row(
                &mut o,
                "added latency p50 / p99 µs",
                format!("{a} / {b}"),
                String::new(),
                String::new(),
            );
        }
        row(
            &mut o,
            "frame loss % (lost / expected)",
            format!(
                "{:.3} ({}/{})",
                s.loss.loss_pct, s.loss.frames_lost, s.loss.frames_expected
            ),
            r.map_or("-".into(), |r| {
                format!(
                    "{:.3} ({}/{})",
                    r.loss.loss_pct, r.loss.frames_lost, r.loss.frames_expected
                )
            }),
            String::new(),
        );
        if s.loss_video.frames_expected > 0 && s.loss_audio.frames_expected > 0 {
            row(
                &mut o,
                "  audio / video loss %",
                format!(
                    "{:.3} / {:.3}",
                    s.loss_audio.loss_pct, s.loss_video.loss_pct
                ),
                String::new(),
                String::new(),
            );
        }
        row(
            &mut o,
            "duplicates / reordered / holes",
            format!(
                "{} / {} / {}",
                s.loss.duplicates, s.loss.reordered, s.loss.packet_holes
            ),
            r.map_or("-".into(), |r| {
                format!("{} / {}", r.loss.duplicates, r.loss.reordered)
            }),
            String::new(),
        );
        row(
            &mut o,
            "jitter mean / max µs",
            format!("{:.0} / {:.0}", s.loss.jitter_mean_us, s.loss.jitter_max_us),
            r.map_or("-".into(), |r| {
                format!("{:.0} / {:.0}", r.loss.jitter_mean_us, r.loss.jitter_max_us)
            }),
            String::new(),
        );
        row(
            &mut o,
            "routes with media",
            format!(
                "{}/{}",
                s.loss.routes_expected - s.loss.routes_missing,
                s.loss.routes_expected
            ),
            r.map_or("-".into(), |r| {
                format!(
                    "{}/{}",
                    r.loss.routes_expected - r.loss.routes_missing,
                    r.loss.routes_expected
                )
            }),
            String::new(),
        );
        let j = &s.join;
        row(
            &mut o,
            "joined / connected",
            format!("{}/{} / {}", j.joined, j.attempted, j.connected),
            String::new(),
            String::new(),
        );
        row(
            &mut o,
            "join ms p50/p99: answer",
            format!("{:.1} / {:.1}", j.answer_p50_ms, j.answer_p99_ms),
            String::new(),
            String::new(),
        );
        row(
            &mut o,
            "  connected (ICE+DTLS)",
            format!("{:.1} / {:.1}", j.connected_p50_ms, j.connected_p99_ms),
            String::new(),
            String::new(),
        );
        row(
            &mut o,
            "  first media",
            format!("{:.1} / {:.1}", j.first_media_p50_ms, j.first_media_p99_ms),
            String::new(),
            String::new(),
        );
        row(
            &mut o,
            "server RSS KiB per participant",
            format!(
                "{:.0} ({} -> {})",
                s.memory.per_participant_kb, s.memory.rss_before_kb, s.memory.rss_active_kb
            ),
            String::new(),
            String::new(),
        );
        row(
            &mut o,
            "kernel UDP rcvbuf/sndbuf drops",
            format!(
                "{} / {}",
                s.kernel_udp.rcvbuf_errors, s.kernel_udp.sndbuf_errors
            ),
            String::new(),
            String::new(),
        );
        let g = &self.generator;
        row(
            &mut o,
            "generator CPU % / lag p99 µs",
            format!("{:.1} / {}", g.cpu_pct, g.lag_p99_us),
            String::new(),
            String::new(),
        );
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
