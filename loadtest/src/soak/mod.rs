//! The soak: a few rooms held for a long time with churn (participants
//! leaving and new ones joining every few seconds, rooms closing and
//! opening, WHIP publishers and WHEP viewers coming and going) while people
//! use the account API, device sockets and calls ([`accounts`]). Every
//! `sample_every` the server's RSS, open file descriptors, threads and
//! tokio tasks are read; at the end everyone leaves and the server settles.
//! [`figures`] turns the samples into slopes, growth, a chart and a summary,
//! and reads the server's log for warnings and errors.

pub mod accounts;
pub mod figures;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::media::{OpusLibrary, VideoSpec};
use crate::participant::{Counters, Engine, EngineConfig};
use crate::run::{RunError, Target};
use crate::scenario::Signaling;
use crate::server_probe::{CpuSample, fd_kinds, open_fds, rss_kb, scrape, threads};
use crate::signal::{JoinOutcome, SignalContext};
use accounts::{AccountLoad, ActionCount, Api, Joiner, Member, Tally, World, member_plan};

/// What a soak does and for how long.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long the load is held.
    pub duration: Duration,
    /// Samples before this (from the start of the load) are left out of
    /// the slopes: caches, pools and allocator arenas fill up first.
    pub warmup: Duration,
    /// One sample this often.
    pub sample_every: Duration,
    /// Rooms held.
    pub rooms: u32,
    /// WebSocket participants per room (each publishes audio and video and
    /// receives the others).
    pub per_room: u32,
    /// One participant leaves and a new one joins this often.
    pub churn_every: Duration,
    /// One room is emptied (it closes) and opened again under a new name this often.
    pub room_cycle_every: Duration,
    /// A WHIP publisher and a WHEP viewer arrive this often ...
    pub whip_whep_every: Duration,
    /// ... and stay this long.
    pub whip_whep_stay: Duration,
    /// Account traffic.
    pub accounts: AccountLoad,
    /// The video publishers send.
    pub video: VideoSpec,
    /// Opus bitrate, kbit/s.
    pub audio_kbps: u32,
    /// Seed for choices and media.
    pub seed: u64,
    /// Print a line per sample.
    pub progress: bool,
}

/// One reading of the server (and the generator).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SoakSample {
    /// Seconds since the load started (the baseline: 0).
    pub t_s: f64,
    /// `baseline` (before any load), `load`, or `settled` (after everyone left).
    pub phase: &'static str,
    /// Server resident set size, KiB.
    pub rss_kb: u64,
    /// Server open file descriptors.
    pub fds: u64,
    /// Server threads.
    pub threads: u64,
    /// Tasks alive in the server's runtime (`vela_runtime_tasks`).
    pub tasks: u64,
    /// Server CPU since the previous sample, percent of one core.
    pub cpu_pct: f64,
    /// Rooms open (`vela_rooms`).
    pub rooms: u64,
    /// Participants in rooms (`vela_participants`).
    pub participants: u64,
    /// The generator's connected WebRTC clients.
    pub connected: usize,
    /// RTP packets the generator's clients received per second since the previous sample.
    pub received_pps: f64,
    /// Media latency through the server since the previous sample, p99, µs.
    pub p99_us: u64,
    /// Account actions answered as expected so far.
    pub actions_ok: u64,
    /// Account actions that failed so far.
    pub actions_failed: u64,
    /// The generator's own RSS, KiB.
    pub generator_rss_kb: u64,
}

/// Joins over the whole soak.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JoinCounts {
    /// Joins answered (WebSocket, WHIP, WHEP; rooms and call rooms).
    pub ok: u64,
    /// Joins refused or failed.
    pub failed: u64,
    /// The first failures.
    pub errors: Vec<String>,
    /// Participants that left and were removed from the generator.
    pub departed: u64,
    /// Of those, connected (ICE and DTLS).
    pub departed_connected: u64,
    /// Of those, received media (WHIP publishers receive none).
    pub departed_with_media: u64,
    /// Client connections that failed.
    pub rtc_errors: u64,
}

/// Everything a soak measured, before the figures.
#[derive(Debug, Clone, Serialize)]
pub struct SoakRun {
    /// Samples in order: one baseline, the load, the settled one.
    pub samples: Vec<SoakSample>,
    /// Joins.
    pub joins: JoinCounts,
    /// Account actions by kind.
    pub actions: BTreeMap<String, ActionCount>,
    /// The first failed actions.
    pub action_errors: Vec<String>,
    /// Rooms opened (including reopened ones).
    pub rooms_opened: u64,
    /// WHIP publishers and WHEP viewers that came and went.
    pub whip_whep_pairs: u64,
    /// The server's file descriptors by kind, idle before the load.
    pub fds_before: BTreeMap<String, u64>,
    /// The same, idle after it.
    pub fds_after: BTreeMap<String, u64>,
}

struct Probe {
    http: reqwest::Client,
    base: String,
    pid: Option<u32>,
    start: Instant,
    last_cpu: Option<CpuSample>,
    last_at: Instant,
}

impl Probe {
    async fn sample(&mut self, phase: &'static str, engine: &Engine, tally: &Tally) -> SoakSample {
        let m = scrape(&self.http, &self.base).await.unwrap_or_default();
        let snap = engine.snapshot().await;
        let now = Instant::now();
        let secs = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        self.last_at = now;
        let cpu = self.pid.map(CpuSample::take);
        let cpu_pct = match (&cpu, &self.last_cpu) {
            (Some(a), Some(b)) => a.percent_since(b),
            _ => 0.0,
        };
        self.last_cpu = cpu;
        let (ok, failed) = tally.totals();
        let pid = self.pid.unwrap_or(0);
        SoakSample {
            t_s: now.saturating_duration_since(self.start).as_secs_f64(),
            phase,
            rss_kb: rss_kb(pid).unwrap_or(0),
            fds: open_fds(pid).unwrap_or(0),
            threads: threads(pid).unwrap_or(0),
            tasks: m.get("vela_runtime_tasks") as u64,
            cpu_pct,
            rooms: m.get("vela_rooms") as u64,
            participants: m.get("vela_participants") as u64,
            connected: snap.connected,
            received_pps: snap.interval.rtp_packets as f64 / secs,
            p99_us: snap.interval.all_latency().quantile(0.99),
            actions_ok: ok,
            actions_failed: failed,
            generator_rss_kb: rss_kb(std::process::id()).unwrap_or(0),
        }
    }
}

fn print_sample(s: &SoakSample) {
    let line = format!(
        "{:>7.0}s {:<8} rss {:>7} kB  fds {:>4}  threads {:>3}  tasks {:>5}  cpu {:>5.1}%  rooms {:>3}  participants {:>3}  rx {:>6.0} pps  actions {}/{} failed\n",
        s.t_s,
        s.phase,
        s.rss_kb,
        s.fds,
        s.threads,
        s.tasks,
        s.cpu_pct,
        s.rooms,
        s.participants,
        s.received_pps,
        s.actions_failed,
        s.actions_ok + s.actions_failed,
    );
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// The rooms and who is in them.
struct Rooms {
    joiner: Arc<Joiner>,
    run_id: String,
    /// Each room's current name and its members, oldest first.
    rooms: Vec<(String, VecDeque<Member>)>,
    opened: u64,
    /// WHIP publishers and WHEP viewers, with when they leave.
    visitors: Vec<(Instant, Member)>,
    visits: u64,
    /// Members told to leave, until their task ends.
    leaving: Vec<tokio::task::JoinHandle<()>>,
    cursor: usize,
}

impl Rooms {
    fn open(&mut self, r: usize, per_room: u32) {
        self.opened += 1;
        let name = format!("soak-{}-{}", self.run_id, self.opened);
        let mut members = VecDeque::new();
        for _ in 0..per_room {
            members.push_back(self.joiner.join(member_plan(&name, Signaling::Ws, None)));
        }
        if r < self.rooms.len() {
            self.rooms[r] = (name, members);
        } else {
            self.rooms.push((name, members));
        }
    }

    /// The oldest member of the next room leaves; a new one joins it.
    fn churn(&mut self) {
        if self.rooms.is_empty() {
            return;
        }
        let r = self.cursor % self.rooms.len();
        self.cursor += 1;
        let (name, members) = &mut self.rooms[r];
        if let Some(m) = members.pop_front() {
            self.leaving.push(m.leave());
        }
        members.push_back(self.joiner.join(member_plan(name, Signaling::Ws, None)));
    }

    /// Everyone leaves room `r` (it closes); it opens again under a new name.
    fn cycle(&mut self, r: usize, per_room: u32) {
        if let Some((_, members)) = self.rooms.get_mut(r) {
            for m in members.drain(..) {
                self.leaving.push(m.leave());
            }
            self.open(r, per_room);
        }
    }

    /// A WHIP publisher and a WHEP viewer arrive in the next room.
    fn visit(&mut self, stay: Duration) {
        if self.rooms.is_empty() {
            return;
        }
        let name = self.rooms[self.visits as usize % self.rooms.len()]
            .0
            .clone();
        self.visits += 1;
        let until = Instant::now() + stay;
        for kind in [Signaling::Whip, Signaling::Whep] {
            let m = self.joiner.join(member_plan(&name, kind, None));
            self.visitors.push((until, m));
        }
    }

    /// Visitors whose stay is over leave; finished departures are dropped.
    fn tidy(&mut self) {
        let now = Instant::now();
        let (gone, stay): (Vec<_>, Vec<_>) = self.visitors.drain(..).partition(|(t, _)| *t <= now);
        self.visitors = stay;
        for (_, m) in gone {
            self.leaving.push(m.leave());
        }
        self.leaving.retain(|t| !t.is_finished());
    }

    /// Everyone leaves; waits for them (up to 30 s).
    async fn leave_all(&mut self) {
        for (_, members) in &mut self.rooms {
            for m in members.drain(..) {
                self.leaving.push(m.leave());
            }
        }
        for (_, m) in self.visitors.drain(..) {
            self.leaving.push(m.leave());
        }
        let all = futures_util::future::join_all(self.leaving.drain(..));
        let _ = tokio::time::timeout(Duration::from_secs(30), all).await;
    }
}

/// Runs a soak against `target` (a server this process started, so that
/// its pid is known).
#[allow(clippy::too_many_lines)]
pub async fn soak(cfg: &SoakConfig, target: &Target) -> Result<SoakRun, RunError> {
    let opus = Arc::new(OpusLibrary::generate(10, cfg.audio_kbps as i32 * 1000)?);
    let video = Arc::new(cfg.video.clone());
    let run_id = format!(
        "{:06x}",
        fastrand::Rng::with_seed(cfg.seed ^ nanos()).u32(..0xff_ffff)
    );
    // The probe keeps no connection open (it would count among the
    // server's fds); WHIP and WHEP use a client of their own, dropped with
    // the rooms before the server is measured idle again.
    let client = |pool: bool| {
        let b = reqwest::Client::builder().no_proxy();
        let b = if pool { b } else { b.pool_max_idle_per_host(0) };
        b.build().map_err(|e| RunError::Server(e.to_string()))
    };
    let http = client(false)?;
    let base = target.http_base.trim_end_matches('/').to_owned();
    let engine = Arc::new(Engine::start(EngineConfig {
        epoch: Instant::now(),
        loss_pct: 0.0,
        seed: cfg.seed,
        opus,
        video: video.clone(),
        nodes: Arc::from([]),
    })?);
    let tally = Arc::new(Tally::default());
    let mut probe = Probe {
        http: http.clone(),
        base: base.clone(),
        pid: target.pid,
        start: Instant::now(),
        last_cpu: None,
        last_at: Instant::now(),
    };
    let fd_kinds_now = || {
        target
            .pid
            .and_then(|p| fd_kinds(p).ok())
            .unwrap_or_default()
    };
    let mut samples = vec![probe.sample("baseline", &engine, &tally).await];
    let fds_before = fd_kinds_now();
    if cfg.progress {
        print_sample(&samples[0]);
    }

    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<JoinOutcome>();
    let joiner = Arc::new(Joiner {
        ctx: Arc::new(SignalContext {
            http_base: base.clone(),
            nodes: Vec::new(),
            keys: target.keys.clone(),
            http: client(true)?,
            video,
            layer_switch: None,
            transport: crate::tcp::MediaTransport::Udp,
        }),
        engine: engine.clone(),
        out: out_tx,
        next_id: AtomicU32::new(0),
    });
    let api = Api::new(&base, tally.clone()).map_err(RunError::Server)?;
    let world = World::new(
        api,
        tally.clone(),
        joiner.clone(),
        cfg.accounts.clone(),
        &run_id,
        cfg.seed,
    );
    let (stop_tx, stop_rx) = watch::channel(false);

    probe.start = Instant::now();
    let world_task = tokio::spawn(world.run(stop_rx));
    let mut rooms = Rooms {
        joiner: joiner.clone(),
        run_id,
        rooms: Vec::new(),
        opened: 0,
        visitors: Vec::new(),
        visits: 0,
        leaving: Vec::new(),
        cursor: 0,
    };
    for r in 0..cfg.rooms as usize {
        rooms.open(r, cfg.per_room);
    }
    let mut joins = JoinCounts::default();
    let record = |joins: &mut JoinCounts, o: JoinOutcome| match o.error {
        None => joins.ok += 1,
        Some(e) => {
            joins.failed += 1;
            if joins.errors.len() < 20 {
                joins.errors.push(e);
            }
        }
    };
    let end = tokio::time::Instant::now() + cfg.duration;
    let every = |d: Duration| {
        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    };
    let mut sample = every(cfg.sample_every);
    let mut churn = every(cfg.churn_every);
    let mut cycle = every(cfg.room_cycle_every);
    let mut visit = every(cfg.whip_whep_every);
    let mut tidy = every(Duration::from_secs(1));
    let mut cycled = 0usize;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            Some(o) = out_rx.recv() => record(&mut joins, o),
            _ = sample.tick() => {
                let s = probe.sample("load", &engine, &tally).await;
                if cfg.progress {
                    print_sample(&s);
                }
                samples.push(s);
            }
            _ = churn.tick() => rooms.churn(),
            _ = cycle.tick() => {
                rooms.cycle(cycled % cfg.rooms.max(1) as usize, cfg.per_room);
                cycled += 1;
            }
            _ = visit.tick() => rooms.visit(cfg.whip_whep_stay),
            _ = tidy.tick() => rooms.tidy(),
        }
    }

    // Everyone leaves; the server should return to where it started.
    let _ = stop_tx.send(true);
    rooms.leave_all().await;
    if tokio::time::timeout(Duration::from_secs(90), world_task)
        .await
        .is_err()
    {
        tally.failed("shutdown", "the account traffic did not stop within 90 s");
    }
    while let Ok(o) = out_rx.try_recv() {
        record(&mut joins, o);
    }
    let (rooms_opened, whip_whep_pairs) = (rooms.opened, rooms.visits);
    drop(rooms);
    drop(joiner);
    let settled = settle(&mut probe, &engine, &tally).await;
    let fds_after = fd_kinds_now();
    if cfg.progress {
        print_sample(&settled);
    }
    samples.push(settled);
    let fin = engine.finish().await;
    engine.shutdown();
    let Counters {
        departed,
        departed_connected,
        departed_with_media,
        rtc_errors,
        ..
    } = fin.counters;
    joins.departed = departed;
    joins.departed_connected = departed_connected;
    joins.departed_with_media = departed_with_media;
    joins.rtc_errors = rtc_errors;
    let (actions, action_errors) = tally.snapshot();
    Ok(SoakRun {
        samples,
        joins,
        actions,
        action_errors,
        rooms_opened,
        whip_whep_pairs,
        fds_before,
        fds_after,
    })
}

/// Waits until nobody is in a room and the server's task count has stopped
/// falling (up to 60 s: device sockets' presence timers run out), then samples.
async fn settle(probe: &mut Probe, engine: &Engine, tally: &Tally) -> SoakSample {
    let end = Instant::now() + Duration::from_secs(60);
    let mut last: Option<u64> = None;
    let mut steady = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Ok(m) = scrape(&probe.http, &probe.base).await else {
            continue;
        };
        let tasks = m.get("vela_runtime_tasks") as u64;
        if m.get("vela_participants") == 0.0 && last.is_some_and(|l| tasks >= l) {
            steady += 1;
            if steady >= 3 {
                break;
            }
        } else {
            steady = 0;
        }
        last = Some(tasks);
    }
    probe.sample("settled", engine, tally).await
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
