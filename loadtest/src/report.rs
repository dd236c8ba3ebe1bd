//! Results: the structures written as JSON, the summary table, and an SVG
//! chart of CPU and latency against load.

use std::fmt::Write;

use serde::Serialize;

use crate::measure::{LatencySummary, LossSummary};
use crate::relay::RelayCounters;
use crate::scenario::Load;
use crate::server_probe::UdpCounters;

/// Latencies by kind.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LatencyFigures {
    /// Audio frames.
    pub audio: LatencySummary,
    /// Video frames (arrival of the last packet).
    pub video: LatencySummary,
    /// Both.
    pub all: LatencySummary,
}

/// Join timings, milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinFigures {
    /// Participants that tried to join.
    pub attempted: u32,
    /// Participants whose join was answered.
    pub joined: u32,
    /// Participants that reached ICE+DTLS connected.
    pub connected: u32,
    /// First errors (at most five).
    pub errors: Vec<String>,
    /// Join start to SDP answer, p50.
    pub answer_p50_ms: f64,
    /// Join start to SDP answer, p99.
    pub answer_p99_ms: f64,
    /// Join start to connected (ICE + DTLS), p50.
    pub connected_p50_ms: f64,
    /// Join start to connected, p99.
    pub connected_p99_ms: f64,
    /// Join start to the first media frame received (subscribers), p50.
    pub first_media_p50_ms: f64,
    /// Join start to first media, p99.
    pub first_media_p99_ms: f64,
}

/// Server memory.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemoryFigures {
    /// RSS before anyone joined, KiB.
    pub rss_before_kb: u64,
    /// RSS at the end of the measuring window, KiB.
    pub rss_active_kb: u64,
    /// (active - before) / participants, KiB.
    pub per_participant_kb: f64,
}

/// The SFU under load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerFigures {
    /// Server pid measured (None: attached without a pid).
    pub pid: Option<u32>,
    /// RTP packets forwarded per second (`vela_packets_forwarded_total`).
    pub forwarded_pps: f64,
    /// RTP packets received from publishers per second.
    pub received_pps: f64,
    /// RTP packets the generator's receivers got per second (cross-check).
    pub receivers_pps: f64,
    /// Server CPU, percent of one core.
    pub cpu_pct: Option<f64>,
    /// Server CPU microseconds per forwarded packet.
    pub cpu_us_per_packet: Option<f64>,
    /// Forwarded packets per second one core would sustain at 100%.
    pub pps_per_core: Option<f64>,
    /// Latency send to receive through the SFU.
    pub latency: LatencyFigures,
    /// Loss over all routes.
    pub loss: LossSummary,
    /// Loss on audio routes.
    pub loss_audio: LossSummary,
    /// Loss on video routes.
    pub loss_video: LossSummary,
    /// Join timings.
    pub join: JoinFigures,
    /// Memory.
    pub memory: MemoryFigures,
    /// Kernel UDP counters increase over the window (whole machine).
    pub kernel_udp: UdpCounters,
    /// Other server counters' increase over the window.
    pub counters: std::collections::BTreeMap<String, f64>,
    /// Video frames received in the window per simulcast layer index.
    pub video_frames_by_layer: [u64; 4],
    /// Up to ten routes with loss or duplicates, described.
    pub lossy_routes: Vec<String>,
}

/// The raw UDP relay floor under the same packet pattern.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayFigures {
    /// Relay pid (None: in-process, CPU not separable).
    pub pid: Option<u32>,
    /// Packets forwarded per second.
    pub forwarded_pps: f64,
    /// Relay CPU, percent of one core.
    pub cpu_pct: Option<f64>,
    /// CPU microseconds per forwarded packet.
    pub cpu_us_per_packet: Option<f64>,
    /// Latency through the relay.
    pub latency: LatencyFigures,
    /// Loss through the relay.
    pub loss: LossSummary,
    /// The relay's counters over the window.
    pub counters: RelayCounters,
}

/// The generator's own health: a run is invalid if it fell behind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GeneratorFigures {
    /// Generator CPU over the SFU window, percent of one core.
    pub cpu_pct: f64,
    /// Media write lateness against schedule, p99 (µs).
    pub lag_p99_us: u64,
    /// Largest lateness (µs).
    pub lag_max_us: u64,
    /// Frames skipped because it was >100 ms behind.
    pub skipped_frames: u64,
    /// Sends dropped on a full socket buffer.
    pub send_blocked: u64,
    /// Datagrams dropped by the loss simulation (in, out).
    pub simulated_drops: (u64, u64),
    /// Frames written per second (every layer counted).
    pub frames_sent_per_s: f64,
    /// RTP packets written per second.
    pub packets_sent_per_s: f64,
}

/// One second of a run, for the chart.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the run's joins began.
    pub t_s: f64,
    /// `join`, `warmup` or `measure`.
    pub phase: &'static str,
    /// Connected participants.
    pub connected: usize,
    /// Server forwarded packets/s in this second.
    pub forwarded_pps: f64,
    /// Server CPU percent in this second.
    pub cpu_pct: f64,
    /// Latency p50 in this second (µs).
    pub p50_us: u64,
    /// Latency p99 in this second (µs).
    pub p99_us: u64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run's label (`--label`), if any.
    pub label: Option<String>,
    /// The command line of this process.
    pub command: String,
    /// The server tested.
    pub server_url: String,
    /// The load.
    pub load: Load,
    /// It in words.
    pub description: String,
    /// Participants in the plan.
    pub participants: u32,
    /// Seconds in the measuring window.
    pub duration_s: f64,
    /// The SFU.
    pub server: ServerFigures,
    /// The floor, when measured.
    pub relay: Option<RelayFigures>,
    /// Server CPU per packet / relay CPU per packet.
    pub cpu_ratio_to_relay: Option<f64>,
    /// Server latency p50 minus relay p50 (µs).
    pub added_latency_p50_us: Option<i64>,
    /// Server latency p99 minus relay p99 (µs).
    pub added_latency_p99_us: Option<i64>,
    /// The generator.
    pub generator: GeneratorFigures,
    /// False when the generator fell behind or saturated its core.
    pub valid: bool,
    /// Why not valid, and other caveats.
    pub warnings: Vec<String>,
    /// Per second samples.
    pub samples: Vec<Sample>,
}

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

    /// A chart of this run's seconds: CPU and latency against forwarded pps.
    pub fn chart(&self) -> String {
        let pts = |f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
            self.samples
                .iter()
                .filter(|s| s.forwarded_pps > 0.0)
                .map(|s| (s.forwarded_pps, f(s)))
                .collect()
        };
        let panels = [
            Panel {
                title: "server CPU (% of one core) per second".into(),
                series: vec![Series {
                    name: "vela".into(),
                    color: "#d62728",
                    points: pts(&|s| s.cpu_pct),
                }],
            },
            Panel {
                title: "latency per second (ms)".into(),
                series: vec![
                    Series {
                        name: "p50".into(),
                        color: "#1f77b4",
                        points: pts(&|s| s.p50_us as f64 / 1000.0),
                    },
                    Series {
                        name: "p99".into(),
                        color: "#ff7f0e",
                        points: pts(&|s| s.p99_us as f64 / 1000.0),
                    },
                ],
            },
        ];
        svg_chart(
            &self.description,
            "forwarded packets/s (each second of ramp and measurement)",
            &panels,
        )
    }
}

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Stroke colour.
    pub color: &'static str,
    /// (x, y) points.
    pub points: Vec<(f64, f64)>,
}

/// One plot area.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above it.
    pub title: String,
    /// Its lines.
    pub series: Vec<Series>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Stacked panels sharing an x axis, as a standalone SVG document.
pub fn svg_chart(title: &str, x_label: &str, panels: &[Panel]) -> String {
    let xmax = nice_max(
        panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| &s.points)
            .map(|p| p.0)
            .fold(0.0, f64::max),
    );
    svg_chart_to(title, x_label, panels, xmax)
}

/// [`svg_chart`] with the x axis from 0 to `xmax` (five ticks).
pub fn svg_chart_to(title: &str, x_label: &str, panels: &[Panel], xmax: f64) -> String {
    let (w, ph, left, right, top) = (860.0, 260.0, 70.0, 160.0, 40.0);
    let gap = 50.0;
    let h = top + panels.len() as f64 * (ph + gap) + 30.0;
    let xmax = if xmax > 0.0 { xmax } else { 1.0 };
    let pw = w - left - right;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, p) in panels.iter().enumerate() {
        let y0 = top + i as f64 * (ph + gap) + 20.0;
        let ymax = nice_max(
            p.series
                .iter()
                .flat_map(|s| &s.points)
                .map(|p| p.1)
                .fold(0.0, f64::max),
        );
        let _ = writeln!(
            o,
            r#"<text x="{left}" y="{}" font-weight="bold">{}</text>"#,
            y0 - 8.0,
            esc(&p.title)
        );
        let _ = writeln!(
            o,
            r##"<rect x="{left}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
        );
        for k in 0..=5 {
            let f = k as f64 / 5.0;
            let y = y0 + ph - f * ph;
            let x = left + f * pw;
            let _ = writeln!(
                o,
                r##"<line x1="{left}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                left + pw,
                left - 6.0,
                y + 4.0,
                tick(ymax * f)
            );
            let _ = writeln!(
                o,
                r##"<line x1="{x}" y1="{y0}" x2="{x}" y2="{}" stroke="#eee"/><text x="{x}" y="{}" text-anchor="middle">{}</text>"##,
                y0 + ph,
                y0 + ph + 16.0,
                tick(xmax * f)
            );
        }
        for (si, s) in p.series.iter().enumerate() {
            let mut pts = s.points.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let coords: Vec<String> = pts
                .iter()
                .map(|(x, y)| {
                    format!(
                        "{:.1},{:.1}",
                        left + x / xmax * pw,
                        y0 + ph - (y / ymax).min(1.0) * ph
                    )
                })
                .collect();
            if coords.len() > 1 {
                let _ = writeln!(
                    o,
                    r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
                    s.color,
                    coords.join(" ")
                );
            }
            for c in &coords {
                let (x, y) = c.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(
                    o,
                    r#"<circle cx="{x}" cy="{y}" r="2.5" fill="{}"/>"#,
                    s.color
                );
            }
            let ly = y0 + 16.0 + si as f64 * 18.0;
            let lx = left + pw + 12.0;
            let _ = writeln!(
                o,
                r#"<rect x="{lx}" y="{}" width="14" height="4" fill="{}"/><text x="{}" y="{ly}">{}</text>"#,
                ly - 6.0,
                s.color,
                lx + 20.0,
                esc(&s.name)
            );
        }
    }
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        left + pw / 2.0,
        h - 8.0,
        esc(x_label)
    );
    o.push_str("</svg>\n");
    o
}

/// One step of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepStep {
    /// The swept value (rooms, or subscribers for fan-out).
    pub scale: u32,
    /// Within both limits, and the run was valid.
    pub passed: bool,
    /// Why it failed.
    pub reason: Option<String>,
    /// How many runs the step had (`--repeat`).
    pub runs: u32,
    /// How many of them passed.
    pub passes: u32,
    /// The run shown: the median p99 of the runs that agree with the verdict.
    pub report: RunReport,
}

/// A capacity search.
#[derive(Debug, Clone, Serialize)]
pub struct SweepReport {
    /// What was swept: "rooms" or "subscribers".
    pub variable: &'static str,
    /// Loss limit, percent.
    pub loss_limit_pct: f64,
    /// p99 latency limit, milliseconds.
    pub p99_limit_ms: f64,
    /// The steps in the order run.
    pub steps: Vec<SweepStep>,
    /// The largest passing step below the first failing one.
    pub capacity: Option<u32>,
    /// Forwarded packets/s at capacity.
    pub capacity_forwarded_pps: Option<f64>,
    /// Why the sweep stopped.
    pub stopped: String,
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

    /// CPU (server and relay) and latency against forwarded pps, one point per step.
    pub fn chart(&self) -> String {
        let steps = &self.steps;
        let pick = |f: &dyn Fn(&RunReport) -> Option<f64>| -> Vec<(f64, f64)> {
            steps
                .iter()
                .filter_map(|s| Some((s.report.server.forwarded_pps, f(&s.report)?)))
                .collect()
        };
        let panels = [
            Panel {
                title: "CPU (% of one core)".into(),
                series: vec![
                    Series {
                        name: "vela SFU".into(),
                        color: "#d62728",
                        points: pick(&|r| r.server.cpu_pct),
                    },
                    Series {
                        name: "raw relay".into(),
                        color: "#7f7f7f",
                        points: pick(&|r| r.relay.as_ref()?.cpu_pct),
                    },
                ],
            },
            Panel {
                title: "CPU µs per forwarded packet".into(),
                series: vec![
                    Series {
                        name: "vela SFU".into(),
                        color: "#d62728",
                        points: pick(&|r| r.server.cpu_us_per_packet),
                    },
                    Series {
                        name: "raw relay".into(),
                        color: "#7f7f7f",
                        points: pick(&|r| r.relay.as_ref()?.cpu_us_per_packet),
                    },
                ],
            },
            Panel {
                title: "latency (ms)".into(),
                series: vec![
                    Series {
                        name: "p50".into(),
                        color: "#1f77b4",
                        points: pick(&|r| Some(r.server.latency.all.p50_us as f64 / 1000.0)),
                    },
                    Series {
                        name: "p99".into(),
                        color: "#ff7f0e",
                        points: pick(&|r| Some(r.server.latency.all.p99_us as f64 / 1000.0)),
                    },
                    Series {
                        name: "p99.9".into(),
                        color: "#9467bd",
                        points: pick(&|r| Some(r.server.latency.all.p999_us as f64 / 1000.0)),
                    },
                ],
            },
        ];
        let (lo, hi) = steps
            .iter()
            .fold((u32::MAX, 0), |(a, b), s| (a.min(s.scale), b.max(s.scale)));
        let title = steps
            .first()
            .map(|s| {
                format!(
                    "sweep of {:?} over {} {lo}..{hi}",
                    s.report.load.scenario, self.variable
                )
            })
            .unwrap_or_default();
        svg_chart(&title, "forwarded packets/s", &panels)
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Medians over run reports grouped by label and description: one Markdown row per
/// group, `median (min-max)` where runs differ.
pub fn summarize(files: &[std::path::PathBuf]) -> Result<String, String> {
    let mut groups: Vec<(String, Vec<serde_json::Value>)> = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        let d = match v["label"].as_str() {
            Some(l) => format!("{l}: {}", v["description"].as_str().unwrap_or("?")),
            None => v["description"].as_str().unwrap_or("?").to_owned(),
        };
        match groups.iter_mut().find(|(k, _)| *k == d) {
            Some((_, g)) => g.push(v),
            None => groups.push((d, vec![v])),
        }
    }
    type Col = (&'static str, fn(&serde_json::Value) -> Option<f64>, usize);
    let cols: [Col; 14] = [
        ("fwd pps", |v| v["server"]["forwarded_pps"].as_f64(), 0),
        (
            "rx/fwd %",
            |v| {
                Some(
                    v["server"]["receivers_pps"].as_f64()? * 100.0
                        / v["server"]["forwarded_pps"].as_f64()?,
                )
            },
            0,
        ),
        ("CPU %", |v| v["server"]["cpu_pct"].as_f64(), 1),
        ("µs/pkt", |v| v["server"]["cpu_us_per_packet"].as_f64(), 2),
        (
            "relay µs/pkt",
            |v| v["relay"]["cpu_us_per_packet"].as_f64(),
            2,
        ),
        ("ratio", |v| v["cpu_ratio_to_relay"].as_f64(), 1),
        (
            "p50 µs",
            |v| v["server"]["latency"]["all"]["p50_us"].as_f64(),
            0,
        ),
        (
            "p99 µs",
            |v| v["server"]["latency"]["all"]["p99_us"].as_f64(),
            0,
        ),
        (
            "p99.9 µs",
            |v| v["server"]["latency"]["all"]["p999_us"].as_f64(),
            0,
        ),
        (
            "relay p50/p99 µs",
            |v| v["relay"]["latency"]["all"]["p50_us"].as_f64(),
            0,
        ),
        ("loss %", |v| v["server"]["loss"]["loss_pct"].as_f64(), 3),
        (
            "join p50 ms",
            |v| v["server"]["join"]["connected_p50_ms"].as_f64(),
            1,
        ),
        (
            "join p99 ms",
            |v| v["server"]["join"]["connected_p99_ms"].as_f64(),
            1,
        ),
        (
            "KiB/participant",
            |v| v["server"]["memory"]["per_participant_kb"].as_f64(),
            0,
        ),
    ];
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| load | runs | {} | gen CPU % | valid |",
        cols.iter().map(|c| c.0).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(o, "|{}", " --- |".repeat(cols.len() + 4));
    for (d, runs) in &groups {
        let mut cells = Vec::new();
        for (name, f, digits) in &cols {
            let mut v: Vec<f64> = runs
                .iter()
                .filter_map(f)
                .filter(|x| x.is_finite())
                .collect();
            if v.is_empty() {
                cells.push("-".to_owned());
                continue;
            }
            let (lo, hi) = v
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
            let m = median(&mut v);
            let mut cell = if *digits == 0 {
                group(m)
            } else {
                format!("{m:.digits$}")
            };
            if *name == "relay p50/p99 µs" {
                let mut p99: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r["relay"]["latency"]["all"]["p99_us"].as_f64())
                    .collect();
                cell = format!("{} / {}", group(m), group(median(&mut p99)));
            } else if v.len() > 1 && hi > lo {
                let r = if *digits == 0 {
                    format!("{}-{}", group(lo), group(hi))
                } else {
                    format!("{lo:.digits$}-{hi:.digits$}")
                };
                cell = format!("{cell} ({r})");
            }
            cells.push(cell);
        }
        let mut gen_cpu: Vec<f64> = runs
            .iter()
            .filter_map(|r| r["generator"]["cpu_pct"].as_f64())
            .collect();
        let valid = runs.iter().filter(|r| r["valid"] == true).count();
        let _ = writeln!(
            o,
            "| {d} | {} | {} | {:.0} | {valid}/{} |",
            runs.len(),
            cells.join(" | "),
            median(&mut gen_cpu),
            runs.len()
        );
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn groups_thousands() {
        assert_eq!(group(1234567.0), "1 234 567");
        assert_eq!(group(12.4), "12");
        assert_eq!(group(-1000.0), "-1 000");
    }

    #[test]
    fn chart_is_svg() {
        let s = svg_chart(
            "t <1>",
            "x",
            &[Panel {
                title: "p".into(),
                series: vec![Series {
                    name: "a".into(),
                    color: "red",
                    points: vec![(1.0, 2.0), (3.0, 4.0)],
                }],
            }],
        );
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert!(s.contains("t &lt;1&gt;") && s.contains("polyline"));
        assert_eq!(nice_max(3.2), 5.0);
        assert_eq!(nice_max(120.0), 200.0);
    }
}
