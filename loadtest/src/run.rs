//! One run: the raw relay floor with the scenario's packet pattern, then the
//! SFU: joins over the ramp, warm-up, the measuring window, drain, leave.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use str0m::media::Mid;
use tokio::sync::{mpsc, watch};
use vela_signaling::token::TokenKeys;

use crate::measure::{LossSummary, Window, loss_summary};
use crate::media::{OpusLibrary, VideoSpec};
use crate::participant::{
    ClientSocket, Engine, EngineConfig, Final, NewClient, Snapshot, Transport,
};
use crate::relay::{self, Relay};
use crate::report::{
    GeneratorFigures, HopFigures, JoinFigures, LatencyFigures, MemoryFigures, NodeFigures,
    RelayFigures, RunReport, Sample, ServerFigures,
};
use crate::scenario::{Load, Planned, expected_routes};
use crate::server_probe::{CpuSample, Metrics, UdpCounters, rss_kb, scrape};
use crate::signal::{self, JoinOutcome, SignalContext};

/// Why a run could not be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Encoding the Opus library failed.
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// A socket, thread or process could not be set up.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer.
    #[error("server: {0}")]
    Server(String),
}

/// The server under test.
#[derive(Clone)]
pub struct Target {
    /// `http://host:port`.
    pub http_base: String,
    /// Its pid, for CPU and memory (None: not measured).
    pub pid: Option<u32>,
    /// Signs room tokens (the server's API key and secret).
    pub keys: TokenKeys,
    /// A cluster (`--nodes`): every node, the first being `http_base`;
    /// participants join through them in turn (`Planned::node`) and the
    /// figures sum them. Empty: one server.
    pub nodes: Vec<NodeTarget>,
}

/// One node of a cluster under test.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    /// `http://host:port`.
    pub http_base: String,
    /// Its pid, for CPU and memory (None: not measured).
    pub pid: Option<u32>,
}

impl Target {
    /// Every node measured: the cluster's, or the one server.
    fn measured(&self) -> Vec<NodeTarget> {
        if self.nodes.is_empty() {
            vec![NodeTarget {
                http_base: self.http_base.trim_end_matches('/').to_owned(),
                pid: self.pid,
            }]
        } else {
            self.nodes.clone()
        }
    }
}

/// Every node's metrics at one moment, in node order.
async fn scrape_all(http: &reqwest::Client, nodes: &[NodeTarget]) -> Vec<Metrics> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        out.push(scrape(http, &n.http_base).await.unwrap_or_default());
    }
    out
}

/// The nodes' metrics added up (counters and gauges alike).
fn sum(all: &[Metrics]) -> Metrics {
    let mut total = Metrics::default();
    for m in all {
        for (k, v) in &m.0 {
            *total.0.entry(k.clone()).or_default() += v;
        }
    }
    total
}

/// Every measured node's CPU at one moment (None where no pid).
fn cpu_all(nodes: &[NodeTarget]) -> Vec<Option<CpuSample>> {
    nodes.iter().map(|n| n.pid.map(CpuSample::take)).collect()
}

/// CPU microseconds and percent of one core between two samples of every
/// node, summed; None unless every node was measured.
fn cpu_between(a: &[Option<CpuSample>], b: &[Option<CpuSample>]) -> Option<(f64, f64)> {
    let mut us = 0.0;
    let mut pct = 0.0;
    for (a, b) in a.iter().zip(b) {
        let (Some(a), Some(b)) = (a, b) else {
            return None;
        };
        us += b.since(a) as f64;
        pct += b.percent_since(a);
    }
    (!a.is_empty()).then_some((us, pct))
}

/// Where the raw relay floor runs.
#[derive(Debug, Clone)]
pub enum RelayMode {
    /// No floor.
    Off,
    /// A thread of this process (tests; its CPU is not measured).
    Thread,
    /// This binary's `relay` command, optionally pinned with taskset.
    Process {
        /// The binary.
        exe: PathBuf,
        /// `taskset -c` list.
        cpus: Option<String>,
    },
}

/// Everything a run needs besides the target.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Rooms and participants.
    pub load: Load,
    /// The video publishers send.
    pub video: VideoSpec,
    /// Opus bitrate, kbit/s.
    pub audio_kbps: u32,
    /// Measuring window.
    pub duration: Duration,
    /// Wait after everyone connected, before measuring.
    pub warmup: Duration,
    /// Wait after publishers stop, before counting loss.
    pub drain: Duration,
    /// The floor.
    pub relay: RelayMode,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// Seed for media variation and loss.
    pub seed: u64,
    /// S3: subscribers pick one large video track and move it at this interval.
    pub layer_switch: Option<Duration>,
    /// A label for the report (summaries group runs by it).
    pub label: Option<String>,
}

impl RunConfig {
    /// Defaults for `load`: 10 s window, 2 s warm-up, simulcast video.
    pub fn new(load: Load) -> Self {
        RunConfig {
            load: load.clone(),
            video: crate::scenario::default_video(),
            audio_kbps: 32,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            drain: Duration::from_millis(800),
            relay: RelayMode::Off,
            progress: false,
            seed: 1,
            layer_switch: (load.scenario == crate::scenario::Scenario::S3)
                .then_some(Duration::from_secs(10)),
            label: None,
        }
    }
}

struct Progress(Option<ProgressBar>);

impl Progress {
    fn new(on: bool) -> Self {
        Progress(on.then(|| {
            let pb = ProgressBar::new(1);
            pb.set_style(
                ProgressStyle::with_template(
                    "{spinner:.green} {prefix:<9} [{bar:30.cyan/blue}] {pos:>5}/{len:<5} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            pb.enable_steady_tick(Duration::from_millis(200));
            pb
        }))
    }
    fn phase(&self, name: &str, len: u64) {
        if let Some(p) = &self.0 {
            p.set_prefix(name.to_owned());
            p.set_length(len);
            p.set_position(0);
            p.set_message("");
        }
    }
    fn set(&self, pos: u64) {
        if let Some(p) = &self.0 {
            p.set_position(pos);
        }
    }
    fn msg(&self, m: String) {
        if let Some(p) = &self.0 {
            p.set_message(m);
        }
    }
    fn done(&self) {
        if let Some(p) = &self.0 {
            p.finish_and_clear();
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// `hops`: the run spread its rooms over nodes, so latencies are also
/// given by hop.
fn latency_figures(w: &Window, hops: bool) -> LatencyFigures {
    LatencyFigures {
        audio: w.audio_latency.summary(),
        video: w.video_latency.summary(),
        all: w.all_latency().summary(),
        hops: hops.then(|| HopFigures {
            local_audio: w.hops[0][0].summary(),
            local_video: w.hops[0][1].summary(),
            relayed_audio: w.hops[1][0].summary(),
            relayed_video: w.hops[1][1].summary(),
        }),
    }
}

fn route_loss(f: &Final, plan: &[Planned]) -> (LossSummary, LossSummary, LossSummary) {
    let expected = expected_routes(plan);
    let missing = |video: Option<bool>| {
        expected
            .iter()
            .filter(|(_, s)| video.is_none_or(|v| (s % 2 == 1) == v))
            .fold((0u64, 0u64), |(e, m), k| {
                (e + 1, m + u64::from(!f.routes.contains_key(k)))
            })
    };
    let mut out = [None, Some(false), Some(true)].map(|kind| {
        let mut s = loss_summary(&f.routes, &f.last_sent, kind);
        (s.routes_expected, s.routes_missing) = missing(kind);
        s
    });
    out[0].packet_holes = f.packet_holes;
    (out[0], out[1], out[2])
}

fn lossy_routes(f: &Final) -> Vec<String> {
    let mut v: Vec<String> = f
        .routes
        .iter()
        .filter_map(|((rx, tx), r)| {
            let last = f.last_sent.get(tx).copied().unwrap_or(r.max);
            let lost = r.expected(last).saturating_sub(r.received);
            (lost > 0 || r.duplicates > 0).then(|| {
                format!(
                    "p{rx} <- p{} {}: frames {}..={} (sender's last {last}), received {}, lost {lost}, duplicates {}",
                    tx / 2,
                    if tx % 2 == 1 { "video" } else { "audio" },
                    r.first,
                    r.max,
                    r.received,
                    r.duplicates
                )
            })
        })
        .collect();
    v.sort();
    v.truncate(10);
    v
}

/// Carries out one run against `target`.
pub async fn run(cfg: &RunConfig, target: &Target) -> Result<RunReport, RunError> {
    let opus = Arc::new(OpusLibrary::generate(10, cfg.audio_kbps as i32 * 1000)?);
    let video = Arc::new(cfg.video.clone());
    let run_id = format!(
        "{:08x}",
        fastrand::Rng::with_seed(cfg.seed ^ now_nanos()).u32(..)
    );
    let plan = cfg.load.plan(&run_id);
    let progress = Progress::new(cfg.progress);
    let relay = match &cfg.relay {
        RelayMode::Off => None,
        mode => Some(relay_phase(cfg, mode, &plan, &opus, &video, &progress).await?),
    };
    let sfu = sfu_phase(cfg, target, &plan, &opus, &video, &progress).await;
    progress.done();
    let (server, generator, samples, mut warnings, secs) = sfu?;
    let ratio = match (&relay, server.cpu_us_per_packet) {
        (Some(r), Some(s)) => r.cpu_us_per_packet.map(|r| s / r),
        _ => None,
    };
    let added = |f: fn(&LatencyFigures) -> u64| {
        relay
            .as_ref()
            .filter(|r| r.latency.all.count > 0 && server.latency.all.count > 0)
            .map(|r| f(&server.latency) as i64 - f(&r.latency) as i64)
    };
    let mut valid = true;
    if generator.cpu_pct > 90.0 {
        valid = false;
        warnings.push(format!(
            "generator saturated its core ({:.0}% CPU)",
            generator.cpu_pct
        ));
    }
    if generator.lag_p99_us > 5_000 || generator.skipped_frames > 0 {
        valid = false;
        warnings.push(format!(
            "generator fell behind its schedule (lag p99 {} µs, max {} µs, {} frames skipped)",
            generator.lag_p99_us, generator.lag_max_us, generator.skipped_frames
        ));
    }
    if let Some(r) = &relay
        && r.loss.frames_lost > 0
    {
        warnings.push(format!(
            "the raw relay lost {:.3}% of frames: the floor itself is overloaded or the generator dropped",
            r.loss.loss_pct
        ));
    }
    Ok(RunReport {
        label: cfg.label.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        server_url: target.http_base.clone(),
        description: cfg.load.describe(),
        load: cfg.load.clone(),
        participants: plan.len() as u32,
        duration_s: secs,
        cpu_ratio_to_relay: ratio,
        added_latency_p50_us: added(|l| l.all.p50_us),
        added_latency_p99_us: added(|l| l.all.p99_us),
        server,
        relay,
        generator,
        valid,
        warnings,
        samples,
    })
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Ticks once a second: engine interval, server counters and CPU.
struct Sampler<'a> {
    engine: &'a Engine,
    http: reqwest::Client,
    nodes: Vec<NodeTarget>,
    start: Instant,
    last_cpu: Vec<Option<CpuSample>>,
    last_metrics: Option<(Instant, Metrics)>,
    samples: Vec<Sample>,
    last: Snapshot,
}

impl Sampler<'_> {
    async fn tick(&mut self, phase: &'static str) {
        let snap = self.engine.snapshot().await;
        let now = Instant::now();
        let metrics = Some(sum(&scrape_all(&self.http, &self.nodes).await));
        let mut fwd = 0.0;
        if let (Some(m), Some((t0, m0))) = (&metrics, &self.last_metrics) {
            let secs = now.duration_since(*t0).as_secs_f64().max(1e-3);
            fwd = m.delta(m0, "vela_packets_forwarded_total") / secs;
        }
        if let Some(m) = metrics {
            self.last_metrics = Some((now, m));
        }
        let cpu = cpu_all(&self.nodes);
        let cpu_pct = cpu_between(&self.last_cpu, &cpu).map_or(0.0, |(_, pct)| pct);
        self.last_cpu = cpu;
        let lat = snap.interval.all_latency();
        self.samples.push(Sample {
            t_s: now.duration_since(self.start).as_secs_f64(),
            phase,
            connected: snap.connected,
            forwarded_pps: fwd,
            cpu_pct,
            p50_us: lat.quantile(0.5),
            p99_us: lat.quantile(0.99),
        });
        self.last = snap;
    }

    fn line(&self) -> String {
        match self.samples.last() {
            Some(s) => format!(
                "fwd {:>7} pps  cpu {:>5.1}%  p50 {:>5} µs  p99 {:>6} µs  connected {}",
                crate::report::group(s.forwarded_pps),
                s.cpu_pct,
                s.p50_us,
                s.p99_us,
                s.connected
            ),
            None => String::new(),
        }
    }
}

#[allow(clippy::too_many_lines)]
async fn sfu_phase(
    cfg: &RunConfig,
    target: &Target,
    plan: &[Planned],
    opus: &Arc<OpusLibrary>,
    video: &Arc<VideoSpec>,
    progress: &Progress,
) -> Result<
    (
        ServerFigures,
        GeneratorFigures,
        Vec<Sample>,
        Vec<String>,
        f64,
    ),
    RunError,
> {
    let http = reqwest::Client::new();
    let base = target.http_base.trim_end_matches('/').to_owned();
    let nodes = target.measured();
    let mut warnings = Vec::new();
    for n in &nodes {
        let before = scrape(&http, &n.http_base)
            .await
            .map_err(|e| RunError::Server(format!("GET {}/metrics: {e}", n.http_base)))?;
        if before.get("vela_participants") > 0.0 {
            warnings.push(format!(
                "{} participants were already on {}",
                before.get("vela_participants"),
                n.http_base
            ));
        }
    }
    let pid = target.pid;
    let rss = |nodes: &[NodeTarget]| -> Vec<u64> {
        nodes
            .iter()
            .map(|n| n.pid.and_then(|p| rss_kb(p).ok()).unwrap_or(0))
            .collect()
    };
    let rss_before = rss(&nodes);
    let epoch = Instant::now();
    let engine = Arc::new(Engine::start(EngineConfig {
        epoch,
        loss_pct: cfg.load.loss_pct,
        seed: cfg.seed,
        opus: opus.clone(),
        video: video.clone(),
        nodes: if target.nodes.is_empty() {
            Arc::from([])
        } else {
            plan.iter().map(|p| p.node).collect()
        },
    })?);
    let ctx = Arc::new(SignalContext {
        http_base: base.clone(),
        nodes: target.nodes.iter().map(|n| n.http_base.clone()).collect(),
        keys: target.keys.clone(),
        http: http.clone(),
        video: video.clone(),
        layer_switch: cfg.layer_switch,
        transport: cfg.load.transport,
    });
    let (leave_tx, leave_rx) = watch::channel(false);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<JoinOutcome>();
    let start = tokio::time::Instant::now();
    let tasks: Vec<_> = plan
        .iter()
        .map(|p| {
            tokio::spawn(signal::participant(
                p.clone(),
                ctx.clone(),
                engine.clone(),
                start,
                leave_rx.clone(),
                out_tx.clone(),
            ))
        })
        .collect();
    drop(out_tx);
    let mut sampler = Sampler {
        engine: &engine,
        http: http.clone(),
        nodes: nodes.clone(),
        start: epoch,
        last_cpu: Vec::new(),
        last_metrics: None,
        samples: Vec::new(),
        last: Snapshot::default(),
    };

    // Joins, on the ramp.
    progress.phase("joining", plan.len() as u64);
    let last_join = plan.last().map(|p| p.join_at).unwrap_or_default();
    let deadline = start + last_join + Duration::from_secs(30);
    let mut outcomes = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while outcomes.len() < plan.len() {
        tokio::select! {
            o = out_rx.recv() => match o {
                Some(o) => { outcomes.push(o); progress.set(outcomes.len() as u64); }
                None => break,
            },
            _ = tick.tick() => { sampler.tick("join").await; progress.msg(sampler.line()); }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let joined = outcomes.iter().filter(|o| o.error.is_none()).count();
    progress.phase("connecting", joined as u64);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        tick.tick().await;
        sampler.tick("join").await;
        progress.set(sampler.last.connected as u64);
        if sampler.last.connected >= joined {
            break;
        }
    }
    // Warm-up: renegotiations settle, keyframes flow.
    progress.phase("warm-up", cfg.warmup.as_secs().max(1));
    let warm_end = tokio::time::Instant::now() + cfg.warmup;
    while tokio::time::Instant::now() < warm_end {
        tick.tick().await;
        sampler.tick("warmup").await;
        progress.inc_msg(&sampler);
    }

    // The measuring window.
    engine.reset_window();
    let cpu0 = cpu_all(&nodes);
    let gen0 = CpuSample::take(std::process::id());
    let udp0 = UdpCounters::read();
    let m0_nodes = scrape_all(&http, &nodes).await;
    let m0 = sum(&m0_nodes);
    let t0 = Instant::now();
    progress.phase("measuring", cfg.duration.as_secs().max(1));
    let end = tokio::time::Instant::now() + cfg.duration;
    while tokio::time::Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                sampler.tick("measure").await;
                progress.inc_msg(&sampler);
            }
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    let m1_nodes = scrape_all(&http, &nodes).await;
    let m1 = sum(&m1_nodes);
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_all(&nodes);
    let gen1 = CpuSample::take(std::process::id());
    let udp1 = UdpCounters::read();
    let rss_active_nodes = rss(&nodes);

    // Drain, count, leave.
    progress.phase("draining", 1);
    engine.stop_media();
    tokio::time::sleep(cfg.drain).await;
    let fin = engine.finish().await;
    let _ = leave_tx.send(true);
    progress.phase("leaving", tasks.len() as u64);
    for (i, t) in tasks.into_iter().enumerate() {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        progress.set(i as u64 + 1);
    }
    let gone = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < gone {
        if sum(&scrape_all(&http, &nodes).await).get("vela_participants") > 0.0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            break;
        }
    }
    engine.shutdown();

    // Figures.
    let fwd = m1.delta(&m0, "vela_packets_forwarded_total");
    let cpu = cpu_between(&cpu0, &cpu1);
    let cpu_us = cpu.map(|(us, _)| us);
    let cpu_pct = cpu.map(|(_, pct)| pct);
    let per_node: Vec<NodeFigures> = if target.nodes.is_empty() {
        Vec::new()
    } else {
        (0..nodes.len())
            .map(|i| {
                let (a, b) = (&m0_nodes[i], &m1_nodes[i]);
                let fwd = b.delta(a, "vela_packets_forwarded_total");
                let cpu = cpu_between(&cpu0[i..=i], &cpu1[i..=i]);
                NodeFigures {
                    url: nodes[i].http_base.clone(),
                    pid: nodes[i].pid,
                    participants: b.get("vela_participants"),
                    forwarded_pps: fwd / secs,
                    received_pps: b.delta(a, "vela_packets_received_total") / secs,
                    cpu_pct: cpu.map(|(_, pct)| pct),
                    cpu_us_per_packet: cpu.filter(|_| fwd > 0.0).map(|(us, _)| us / fwd),
                    relay: b
                        .0
                        .keys()
                        .filter(|k| k.starts_with("vela_relay_") && k.ends_with("_total"))
                        .map(|k| (k.clone(), b.delta(a, k)))
                        .collect(),
                }
            })
            .collect()
    };
    let rss_before: u64 = rss_before.iter().sum();
    let rss_active: u64 = rss_active_nodes.iter().sum();
    let per_pkt = cpu_us.filter(|_| fwd > 0.0).map(|c| c / fwd);
    let (loss, loss_audio, loss_video) = route_loss(&fin, plan);
    let mut answer: Vec<Duration> = outcomes
        .iter()
        .filter(|o| o.error.is_none())
        .map(|o| o.answer)
        .collect();
    let mut connected: Vec<Duration> = fin.joins.iter().filter_map(|j| j.connected).collect();
    let mut first: Vec<Duration> = fin.joins.iter().filter_map(|j| j.first_media).collect();
    let join = JoinFigures {
        attempted: plan.len() as u32,
        joined: joined as u32,
        connected: connected.len() as u32,
        errors: outcomes
            .iter()
            .filter_map(|o| o.error.clone())
            .take(5)
            .collect(),
        answer_p50_ms: ms(percentile(&mut answer, 0.5)),
        answer_p99_ms: ms(percentile(&mut answer, 0.99)),
        connected_p50_ms: ms(percentile(&mut connected, 0.5)),
        connected_p99_ms: ms(percentile(&mut connected, 0.99)),
        first_media_p50_ms: ms(percentile(&mut first, 0.5)),
        first_media_p99_ms: ms(percentile(&mut first, 0.99)),
    };
    let participants = plan.len().max(1) as f64;
    let mut counters = BTreeMap::new();
    for (k, _) in m1.0.iter().filter(|(k, _)| k.ends_with("_total")) {
        counters.insert(k.clone(), m1.delta(&m0, k));
    }
    let receivers_pps = fin.window.rtp_packets as f64 / secs;
    let server = ServerFigures {
        pid,
        forwarded_pps: fwd / secs,
        received_pps: m1.delta(&m0, "vela_packets_received_total") / secs,
        receivers_pps,
        cpu_pct,
        cpu_us_per_packet: per_pkt,
        pps_per_core: per_pkt.filter(|p| *p > 0.0).map(|p| 1e6 / p),
        latency: latency_figures(&fin.window, !target.nodes.is_empty()),
        loss,
        loss_audio,
        loss_video,
        join,
        memory: MemoryFigures {
            rss_before_kb: rss_before,
            rss_active_kb: rss_active,
            per_participant_kb: rss_active.saturating_sub(rss_before) as f64 / participants,
        },
        kernel_udp: udp1.since(&udp0),
        counters,
        video_frames_by_layer: fin.window.video_layers,
        lossy_routes: lossy_routes(&fin),
        nodes: per_node,
    };
    let generator = GeneratorFigures {
        cpu_pct: gen1.percent_since(&gen0),
        lag_p99_us: fin.window.lag.quantile(0.99),
        lag_max_us: fin.window.lag.summary().max_us,
        skipped_frames: fin.counters.skipped_frames,
        send_blocked: fin.counters.send_blocked,
        simulated_drops: (fin.counters.dropped_in, fin.counters.dropped_out),
        frames_sent_per_s: fin.window.frames_sent as f64 / secs,
        packets_sent_per_s: fin.window.packets_sent as f64 / secs,
    };
    if nodes.iter().any(|n| n.pid.is_none()) {
        warnings.push("no server pid: CPU and memory not measured".into());
    } else if pid == Some(std::process::id()) {
        warnings.push("the server runs in this process: its CPU includes the generator".into());
    }
    if server.join.joined < server.join.attempted {
        warnings.push(format!(
            "{} of {} joins failed: {:?}",
            server.join.attempted - server.join.joined,
            server.join.attempted,
            server.join.errors
        ));
    }
    if server.loss.routes_missing > 0 {
        warnings.push(format!(
            "{} of {} routes carried no media",
            server.loss.routes_missing, server.loss.routes_expected
        ));
    }
    if server.forwarded_pps > 0.0 {
        let r = receivers_pps / server.forwarded_pps;
        if !(0.95..=1.05).contains(&r) && cfg.load.loss_pct == 0.0 {
            warnings.push(format!(
                "receivers got {:.1}% of the packets the server counts as forwarded",
                r * 100.0
            ));
        }
    }
    if fin.counters.send_blocked > 0 {
        warnings.push(format!(
            "{} generator sends hit a full socket buffer",
            fin.counters.send_blocked
        ));
    }
    if fin.counters.tcp_closed > 0 {
        warnings.push(format!(
            "{} TCP streams ended during the run",
            fin.counters.tcp_closed
        ));
    }
    if fin.counters.rtc_errors > 0 {
        warnings.push(format!(
            "{} client connections failed",
            fin.counters.rtc_errors
        ));
    }
    Ok((server, generator, sampler.samples, warnings, secs))
}

impl Progress {
    fn inc_msg(&self, s: &Sampler<'_>) {
        if let Some(p) = &self.0 {
            p.inc(1);
            p.set_message(s.line());
        }
    }
}

async fn relay_phase(
    cfg: &RunConfig,
    mode: &RelayMode,
    plan: &[Planned],
    opus: &Arc<OpusLibrary>,
    video: &Arc<VideoSpec>,
    progress: &Progress,
) -> Result<RelayFigures, RunError> {
    let forward: Vec<String> = video
        .layers
        .get(video.top_layer())
        .filter(|l| !l.rid.is_empty())
        .map(|l| vec![l.rid.clone()])
        .unwrap_or_default();
    let relay = match mode {
        RelayMode::Process { exe, cpus } => Relay::spawn_process(exe, cpus.as_deref(), &forward)?,
        _ => Relay::spawn_thread(forward)?,
    };
    let epoch = Instant::now();
    let engine = Engine::start(EngineConfig {
        epoch,
        loss_pct: 0.0,
        seed: cfg.seed,
        opus: opus.clone(),
        video: video.clone(),
        nodes: Arc::from([]),
    })?;
    progress.phase("relay", plan.len() as u64);
    for p in plan {
        engine.add(NewClient {
            id: p.id,
            socket: ClientSocket::Udp(std::net::UdpSocket::bind("127.0.0.1:0")?),
            transport: Transport::Raw {
                relay: relay.addr,
                room: p.room_index,
                subscribe: p.subscribe,
            },
            audio: p.audio.then(|| Mid::from("a")),
            video: p.video.then(|| Mid::from("v")),
            join_started: epoch,
            answered: epoch,
            served_by: None,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let s = engine.snapshot().await;
        progress.set(s.connected as u64);
        if s.connected >= plan.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    engine.reset_window();
    let pid = relay.separate.then_some(relay.pid);
    let cpu0 = pid.map(CpuSample::take);
    let c0 = relay::query(relay.addr).await?;
    let t0 = Instant::now();
    progress.phase("relay", cfg.duration.as_secs().max(1));
    let end = tokio::time::Instant::now() + cfg.duration;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(end - tokio::time::Instant::now())).await;
        let s = engine.snapshot().await;
        if let Some(p) = &progress.0 {
            p.inc(1);
            let l = s.interval.all_latency();
            p.set_message(format!(
                "floor: {} pkts/s received, p50 {} µs, p99 {} µs",
                crate::report::group(s.interval.rtp_packets as f64),
                l.quantile(0.5),
                l.quantile(0.99)
            ));
        }
    }
    let c1 = relay::query(relay.addr).await?;
    let cpu1 = pid.map(CpuSample::take);
    let secs = t0.elapsed().as_secs_f64();
    engine.stop_media();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fin = engine.finish().await;
    engine.shutdown();
    relay.stop();
    let fwd = c1.forwarded.saturating_sub(c0.forwarded) as f64;
    let cpu_us = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.since(&a) as f64),
        _ => None,
    };
    let (loss, _, _) = route_loss(&fin, plan);
    Ok(RelayFigures {
        pid,
        forwarded_pps: fwd / secs,
        cpu_pct: match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b.percent_since(&a)),
            _ => None,
        },
        cpu_us_per_packet: cpu_us.filter(|_| fwd > 0.0).map(|c| c / fwd),
        latency: latency_figures(&fin.window, false),
        loss,
        counters: relay::RelayCounters {
            received: c1.received - c0.received,
            forwarded: c1.forwarded - c0.forwarded,
            dropped: c1.dropped - c0.dropped,
        },
    })
}
