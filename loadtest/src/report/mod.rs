//! Results: the structures written as JSON, the summary table, and an SVG
//! chart of CPU and latency against load.
//!
//! The structures are here (their fields are the JSON report's); `table`
//! prints them, `chart` draws them, `summary` reads reports back to compare
//! runs.

mod chart;
mod summary;
mod table;

use serde::Serialize;

pub use chart::{Panel, Series, svg_chart, svg_chart_to};
pub use summary::summarize;
pub use table::group;

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
    /// With `--nodes`: the same, told apart by whether the sender joined
    /// through the receiver's node (local) or another (relayed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hops: Option<HopFigures>,
}

/// Latencies by hop, for a room spread over nodes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HopFigures {
    /// Audio from a participant on the receiver's node.
    pub local_audio: LatencySummary,
    /// Video from a participant on the receiver's node.
    pub local_video: LatencySummary,
    /// Audio that crossed a relay link between nodes.
    pub relayed_audio: LatencySummary,
    /// Video that crossed a relay link between nodes.
    pub relayed_video: LatencySummary,
}

/// One node's share of a run over several nodes (`--nodes`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeFigures {
    /// The node's `http://host:port`.
    pub url: String,
    /// Its pid, if measured.
    pub pid: Option<u32>,
    /// Participants on it during the window (`vela_participants`).
    pub participants: f64,
    /// RTP packets it forwarded per second.
    pub forwarded_pps: f64,
    /// RTP packets it received from its publishers per second.
    pub received_pps: f64,
    /// Its CPU, percent of one core.
    pub cpu_pct: Option<f64>,
    /// Its CPU microseconds per packet it forwarded.
    pub cpu_us_per_packet: Option<f64>,
    /// Its relay counters' increase over the window (`vela_relay_*`).
    pub relay: std::collections::BTreeMap<String, f64>,
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
    /// With `--nodes`: each node's figures (the rest of this struct sums
    /// the nodes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeFigures>,
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
