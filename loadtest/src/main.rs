//! `vela-loadtest`: run a scenario against a vela server, sweep for its
//! capacity, or serve as the raw UDP relay floor.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vela_loadtest::media::VideoSpec;
use vela_loadtest::report::{RunReport, SweepReport};
use vela_loadtest::scenario::{Load, MediaMix, Scenario};
use vela_loadtest::server_probe::{
    ServerLog, ServerOptions, ServerProcess, default_server_bin, has_tcp_port_flag, wait_ready,
};
use vela_loadtest::soak::accounts::AccountLoad;
use vela_loadtest::soak::figures::{SoakReport, read_log};
use vela_loadtest::soak::{SoakConfig, soak};
use vela_loadtest::sweep::{SweepConfig, sweep};
use vela_loadtest::{MediaTransport, NodeTarget, RelayMode, RunConfig, Target, run};
use vela_signaling::token::TokenKeys;

#[derive(Parser)]
#[command(
    name = "vela-loadtest",
    version,
    about = "Synthetic WebRTC participants (str0m) against a vela server: forwarded packets/s, \
             server CPU per packet against a raw UDP relay floor, latency, loss, join time, memory."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario and report.
    Run(Common),
    /// Raise the load until frame loss passes a limit or p99 does: the capacity.
    Sweep {
        #[command(flatten)]
        common: Common,
        /// First value of the swept variable (rooms; subscribers for S4/S6).
        #[arg(long, default_value_t = 1)]
        start: u32,
        /// Growth factor between steps.
        #[arg(long, default_value_t = 2.0)]
        factor: f64,
        /// Largest value tried.
        #[arg(long, default_value_t = 256)]
        max: u32,
        /// Bisection steps after the first failing step.
        #[arg(long, default_value_t = 2)]
        refine: u32,
        /// Frame loss limit, percent.
        #[arg(long, default_value_t = 0.1)]
        loss_limit: f64,
        /// p99 latency limit, milliseconds.
        #[arg(long, default_value_t = 5.0)]
        p99_limit_ms: f64,
        /// Runs per step; a step passes when most of its runs pass (use 3 on
        /// a shared machine).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
    },
    /// Medians (and ranges) of several `run` JSON reports, as a Markdown table.
    Summarize {
        /// Run reports (`run-*.json`); runs with the same description form a row.
        files: Vec<PathBuf>,
    },
    /// Hostile clients against a server this starts (RELIABILITY.md): its
    /// memory, answers and readiness under a login storm, password guessing,
    /// a data flood toward a reader that stalls, idle connections, or
    /// unauthenticated WebSocket upgrades.
    Attack {
        /// What to try.
        #[arg(value_enum)]
        attack: vela_loadtest::attack::Attack,
        /// Clients (login-storm, login-guess), messages (data-flood) or
        /// connections (idle-connections, ws-upgrades).
        #[arg(long, default_value_t = 400)]
        count: u32,
        /// The `vela` binary to start (default: next to this binary).
        #[arg(long)]
        server_bin: Option<PathBuf>,
        /// Run the server with this open-files limit (soft and hard, via prlimit).
        #[arg(long)]
        nofile: Option<u64>,
        /// A setting for the server, `section.key=value` in TOML (repeatable).
        #[arg(long = "set")]
        settings: Vec<String>,
        /// Seconds to keep watching the server after the attack.
        #[arg(long, default_value_t = 30.0)]
        settle: f64,
    },
    /// Hold a few rooms with churn and account traffic for a long time,
    /// sampling the server's memory, file descriptors, threads and tasks.
    Soak(SoakArgs),
    /// The raw UDP relay (the floor); `run` and `sweep` start it themselves.
    Relay {
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: SocketAddr,
        /// Simulcast rids forwarded (others dropped); repeatable.
        #[arg(long = "forward-rid")]
        forward_rid: Vec<String>,
    },
}

#[derive(Args, Clone)]
struct SoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Minutes of warm-up left out of the slopes (at most half the run).
    #[arg(long, default_value_t = 5.0)]
    warmup_minutes: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    sample_secs: f64,
    /// Rooms held.
    #[arg(long, default_value_t = 3)]
    rooms: u32,
    /// WebSocket participants per room (audio + simulcast video, receiving the others).
    #[arg(long, default_value_t = 4)]
    participants: u32,
    /// Seconds between churn steps: one participant leaves, a new one joins.
    #[arg(long, default_value_t = 5.0)]
    churn_secs: f64,
    /// Seconds between room cycles: one room empties (it closes) and opens again.
    #[arg(long, default_value_t = 120.0)]
    room_cycle_secs: f64,
    /// Seconds between WHIP publisher + WHEP viewer arrivals.
    #[arg(long, default_value_t = 20.0)]
    whip_whep_secs: f64,
    /// Seconds a WHIP publisher and a WHEP viewer stay.
    #[arg(long, default_value_t = 12.0)]
    whip_whep_stay_secs: f64,
    /// People signed up at the start.
    #[arg(long, default_value_t = 12)]
    people: usize,
    /// Seconds between account actions.
    #[arg(long, default_value_t = 1.0)]
    account_secs: f64,
    /// Seconds between device socket openings (at most 6 open at once).
    #[arg(long, default_value_t = 3.0)]
    socket_secs: f64,
    /// Seconds between calls placed (at most 2 at once).
    #[arg(long, default_value_t = 20.0)]
    call_secs: f64,
    /// Simulcast layer bitrates, kbit/s, lowest first.
    #[arg(long, default_value = "150,500,1700")]
    video_kbps: String,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Seed for choices and media.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    start: StartArgs,
    /// Directory for soak.json, soak.svg and soak.md.
    #[arg(long, default_value = "loadtest-out/soak")]
    out: PathBuf,
    /// The server's log (default: server.log in --out).
    #[arg(long)]
    log: Option<PathBuf>,
    /// No line per sample.
    #[arg(long, short)]
    quiet: bool,
}

/// How to start the server (run, sweep and soak start one).
#[derive(Args, Clone)]
struct StartArgs {
    /// The `vela` binary to start (default: next to this binary).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// CPUs for the started server, and for run's and sweep's relay
    /// (`taskset -c`); empty: no pinning.
    #[arg(long, default_value = "0")]
    server_cpus: String,
    /// Extra argument for the started server (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
}

impl StartArgs {
    fn cpus(&self) -> Option<String> {
        (!self.server_cpus.trim().is_empty()).then(|| self.server_cpus.trim().to_owned())
    }

    /// The server's binary (it must exist; `other` names the flags that
    /// would do instead), CPUs and arguments.
    fn options(&self, other: &str) -> Result<ServerOptions, String> {
        let bin = self.server_bin.clone().unwrap_or_else(default_server_bin);
        if !bin.exists() {
            return Err(format!(
                "no server binary at {} (cargo build --release -p vela-signaling, or {other})",
                bin.display()
            ));
        }
        // A --server-arg --tcp-port comes later and wins.
        let mut opts = ServerOptions::new(&bin)
            .free_ice_tcp_port()
            .map_err(|e| format!("finding a free TCP port: {e}"))?
            .args(&self.server_args);
        if let Some(c) = self.cpus() {
            opts = opts.cpus(&c);
        }
        Ok(opts)
    }
}

/// Starts the server and waits up to 15 s for it to answer `/metrics`.
async fn start_server(opts: &ServerOptions) -> Result<ServerProcess, String> {
    let server = ServerProcess::spawn(opts)
        .map_err(|e| format!("starting {}: {e}", opts.bin().display()))?;
    let http = reqwest::Client::new();
    if !wait_ready(&http, &server.http_base, Duration::from_secs(15)).await {
        server.stop();
        return Err("the server did not answer /metrics within 15 s".into());
    }
    Ok(server)
}

#[derive(Args, Clone)]
struct Common {
    /// Scenario (PERFORMANCE.md): s1 1:1 audio, s2 10-party audio, s3 10-party
    /// simulcast video, s4 fan-out, s5 join storm, s6 fan-out with 2% loss.
    #[arg(long, short, value_enum, default_value_t = Scenario::S2)]
    scenario: Scenario,
    /// Number of rooms.
    #[arg(long)]
    rooms: Option<u32>,
    /// Participants per room (S4/S6: subscribers per room).
    #[arg(long)]
    participants: Option<u32>,
    /// Publishers per room.
    #[arg(long)]
    publishers: Option<u32>,
    /// What publishers send.
    #[arg(long, value_enum)]
    media: Option<MediaMix>,
    /// Publish-only participants use WHIP, subscribe-only ones WHEP.
    #[arg(long)]
    whip_whep: bool,
    /// How participants carry media: udp, or tcp (ICE over TCP: each
    /// connects an RFC 4571 stream to the server's passive TCP candidate and
    /// offers no UDP candidate). A server this starts gets a free
    /// `--tcp-port`; one at --server-url must have `media.tcp_port` set.
    #[arg(long, value_enum, default_value_t = MediaTransport::Udp)]
    transport: MediaTransport,
    /// Joins per second (default 50).
    #[arg(long)]
    join_rate: Option<f64>,
    /// Spread all joins over this many seconds (overrides --join-rate).
    #[arg(long)]
    ramp: Option<f64>,
    /// Percent of RTP/RTCP datagrams the generator drops each way (S6: 2).
    #[arg(long)]
    loss: Option<f64>,
    /// Measuring window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Wait after everyone connected before measuring, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Simulcast rids, lowest layer first.
    #[arg(long, default_value = "q,h,f")]
    rids: String,
    /// Simulcast layer bitrates, kbit/s, lowest first.
    #[arg(long, default_value = "150,500,1700")]
    video_kbps: String,
    /// Send one unnamed video layer (at the top bitrate) instead of simulcast.
    #[arg(long)]
    no_simulcast: bool,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Periodic keyframe interval, seconds.
    #[arg(long, default_value_t = 3.0)]
    keyframe_interval: f64,
    /// Opus bitrate, kbit/s.
    #[arg(long, default_value_t = 32)]
    audio_kbps: u32,
    /// Largest datagram the publishers aim for (bytes).
    #[arg(long, default_value_t = 1200)]
    mtu: usize,
    /// Seed for media variation and simulated loss.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds between forced layer switches (S3 default 10; 0: none). Each
    /// WebSocket subscriber then asks for one remote video track large and
    /// the others small (`track_settings`), moving the large one each time.
    #[arg(long)]
    layer_switch: Option<f64>,
    /// Test the server at this URL instead of starting one.
    #[arg(long)]
    server_url: Option<String>,
    /// The pid of the server at --server-url (for CPU and memory).
    #[arg(long)]
    server_pid: Option<u32>,
    /// A cluster's nodes, comma separated (`http://host:port,...`): each
    /// room's members join through them in turn (S7, S8), and the figures
    /// add up every node (instead of --server-url).
    #[arg(long, value_delimiter = ',', conflicts_with = "server_url")]
    nodes: Vec<String>,
    /// The pids of the --nodes, same order (for CPU and memory).
    #[arg(long, value_delimiter = ',')]
    node_pids: Vec<u32>,
    #[command(flatten)]
    start: StartArgs,
    /// API key for minting tokens (default: the development key).
    #[arg(long, env = "VELA_AUTH_API_KEY")]
    api_key: Option<String>,
    /// API secret for minting tokens.
    #[arg(long, env = "VELA_AUTH_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
    /// Skip the raw UDP relay floor.
    #[arg(long)]
    no_relay: bool,
    /// Directory for the JSON report and the SVG chart.
    #[arg(long, default_value = "loadtest-out")]
    out: PathBuf,
    /// Base name of the output files (default: from the scenario).
    #[arg(long)]
    name: Option<String>,
    /// A label stored in the report; `summarize` groups runs by it.
    #[arg(long)]
    label: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

impl Common {
    fn load(&self) -> Load {
        let mut l = Load::defaults(self.scenario);
        if let Some(v) = self.rooms {
            l.rooms = v;
        }
        if let Some(v) = self.participants {
            l.participants = v;
            if !l.sweeps_subscribers() && self.publishers.is_none() {
                l.publishers = v;
            }
        }
        if let Some(v) = self.publishers {
            l.publishers = v;
        }
        if let Some(v) = self.media {
            l.media = v;
        }
        l.whip_whep = self.whip_whep;
        l.transport = self.transport;
        l.nodes = (self.nodes.len() as u32).max(1);
        if let Some(v) = self.join_rate {
            l.join_rate = v;
        }
        if let Some(v) = self.loss {
            l.loss_pct = v;
        }
        if let Some(r) = self.ramp {
            let n = l.plan("x").len() as f64;
            l.join_rate = if r > 0.0 { n / r } else { 0.0 };
        }
        l
    }

    fn video(&self) -> Result<VideoSpec, String> {
        let kbps = kbps_list(&self.video_kbps)?;
        let rids: Vec<&str> = self.rids.split(',').map(str::trim).collect();
        let mut spec = if self.no_simulcast {
            VideoSpec::single(*kbps.last().ok_or("empty --video-kbps")?, self.fps)
        } else {
            let (Ok(r), Ok(k)) = (
                <[&str; 3]>::try_from(rids.as_slice()),
                <[u32; 3]>::try_from(kbps.as_slice()),
            ) else {
                return Err("--rids and --video-kbps need three values each".into());
            };
            VideoSpec::simulcast(r, k, self.fps)
        };
        spec.keyframe_interval = Duration::from_secs_f64(self.keyframe_interval.max(0.1));
        // RTP header, header extensions (mid, rid, abs-send-time, twcc) and SRTP tag.
        spec.max_payload = self.mtu.saturating_sub(12 + 24 + 16).max(200);
        Ok(spec)
    }

    fn config(&self) -> Result<RunConfig, String> {
        let mut c = RunConfig::new(self.load());
        c.video = self.video()?;
        c.audio_kbps = self.audio_kbps;
        c.duration = Duration::from_secs_f64(self.duration.max(1.0));
        c.warmup = Duration::from_secs_f64(self.warmup.max(0.0));
        if c.load.loss_pct > 0.0 {
            c.drain = Duration::from_millis(1500);
        }
        c.progress = !self.quiet;
        c.seed = self.seed;
        c.label = self.label.clone();
        if let Some(s) = self.layer_switch {
            c.layer_switch = (s > 0.0).then(|| Duration::from_secs_f64(s));
        }
        c.relay = if self.no_relay {
            RelayMode::Off
        } else {
            RelayMode::Process {
                exe: std::env::current_exe().map_err(|e| e.to_string())?,
                cpus: self.start.cpus(),
            }
        };
        Ok(c)
    }

    fn keys(&self) -> TokenKeys {
        match (&self.api_key, &self.api_secret) {
            (Some(k), Some(s)) => TokenKeys::new(k, s),
            _ => TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET),
        }
    }

    /// The server to test: attached, or started (and returned to stop later).
    async fn target(&self) -> Result<(Target, Option<ServerProcess>), String> {
        if !self.nodes.is_empty() {
            if !self.node_pids.is_empty() && self.node_pids.len() != self.nodes.len() {
                return Err("--node-pids needs one pid per --nodes URL".into());
            }
            let nodes: Vec<NodeTarget> = self
                .nodes
                .iter()
                .enumerate()
                .map(|(i, url)| NodeTarget {
                    http_base: url.trim().trim_end_matches('/').to_owned(),
                    pid: self.node_pids.get(i).copied(),
                })
                .collect();
            return Ok((
                Target {
                    http_base: nodes[0].http_base.clone(),
                    pid: nodes[0].pid,
                    keys: self.keys(),
                    nodes,
                },
                None,
            ));
        }
        if let Some(url) = &self.server_url {
            return Ok((
                Target {
                    http_base: url.trim_end_matches('/').to_owned(),
                    pid: self.server_pid,
                    keys: self.keys(),
                    nodes: Vec::new(),
                },
                None,
            ));
        }
        let opts = self.start.options("--server-bin / --server-url")?;
        if self.transport == MediaTransport::Tcp && !has_tcp_port_flag(opts.bin()) {
            return Err(format!(
                "--transport tcp: {} has no ICE over TCP (no --tcp-port)",
                opts.bin().display()
            ));
        }
        let server = start_server(&opts).await?;
        Ok((
            Target {
                http_base: server.http_base.clone(),
                pid: Some(server.pid),
                keys: self.keys(),
                nodes: Vec::new(),
            },
            Some(server),
        ))
    }

    fn file(&self, kind: &str, ext: &str) -> PathBuf {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("{kind}-{}", format!("{:?}", self.scenario).to_lowercase()));
        self.out.join(format!("{name}.{ext}"))
    }

    /// Prints a `kind` report's table and writes its JSON and SVG files.
    fn publish(
        &self,
        kind: &str,
        table: &str,
        report: &impl serde::Serialize,
        chart: &str,
    ) -> Result<(), String> {
        say(table);
        let json = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
        let (jp, sp) = (self.file(kind, "json"), self.file(kind, "svg"));
        write_out(&jp, &json)?;
        write_out(&sp, chart)?;
        say(&format!("wrote {} and {}\n", jp.display(), sp.display()));
        Ok(())
    }
}

/// `--video-kbps`: bitrates, comma separated.
fn kbps_list(list: &str) -> Result<Vec<u32>, String> {
    list.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| format!("bad --video-kbps {v}"))
        })
        .collect()
}

fn write_out(path: &Path, contents: &str) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))
}

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

async fn cmd_run(c: Common) -> Result<RunReport, String> {
    let cfg = c.config()?;
    let (target, server) = c.target().await?;
    let r = run(&cfg, &target).await.map_err(|e| e.to_string());
    if let Some(s) = server {
        s.stop();
    }
    let r = r?;
    c.publish("run", &r.table(), &r, &r.chart())?;
    Ok(r)
}

async fn cmd_sweep(c: Common, sc: SweepConfig) -> Result<SweepReport, String> {
    let cfg = c.config()?;
    let (target, server) = c.target().await?;
    let r = sweep(&cfg, &sc, &target, |s| {
        say(&format!(
            "step {:>4}: {:>9.0} fwd pps, p99 {:>6} µs, loss {:.3}% -> {}\n",
            s.scale,
            s.report.server.forwarded_pps,
            s.report.server.latency.all.p99_us,
            s.report.server.loss.loss_pct,
            if s.passed {
                "pass".to_owned()
            } else {
                format!("FAIL ({})", s.reason.clone().unwrap_or_default())
            }
        ));
    })
    .await
    .map_err(|e| e.to_string());
    if let Some(s) = server {
        s.stop();
    }
    let r = r?;
    c.publish("sweep", &r.table(), &r, &r.chart())?;
    Ok(r)
}

/// The server's ring timeout, as the soak configures it.
const SOAK_RING_TIMEOUT_MS: u64 = 8_000;

async fn cmd_soak(a: SoakArgs) -> Result<(), String> {
    let minutes = a.minutes.max(0.5);
    let warmup = (a.warmup_minutes * 60.0).clamp(0.0, minutes * 30.0);
    let kbps = kbps_list(&a.video_kbps)?;
    let Ok(kbps) = <[u32; 3]>::try_from(kbps.as_slice()) else {
        return Err("--video-kbps needs three values".into());
    };
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.1));
    let cfg = SoakConfig {
        duration: Duration::from_secs_f64(minutes * 60.0),
        warmup: Duration::from_secs_f64(warmup),
        sample_every: secs(a.sample_secs),
        rooms: a.rooms.max(1),
        per_room: a.participants.max(1),
        churn_every: secs(a.churn_secs),
        room_cycle_every: secs(a.room_cycle_secs),
        whip_whep_every: secs(a.whip_whep_secs),
        whip_whep_stay: secs(a.whip_whep_stay_secs),
        accounts: AccountLoad {
            people: a.people.max(2),
            max_people: 200,
            every: secs(a.account_secs),
            socket_every: secs(a.socket_secs),
            max_sockets: 6,
            call_every: secs(a.call_secs),
            call_hold: Duration::from_secs(8),
            ring_timeout: Duration::from_millis(SOAK_RING_TIMEOUT_MS),
        },
        video: VideoSpec::simulcast(["q", "h", "f"], kbps, a.fps),
        audio_kbps: 32,
        seed: a.seed,
        progress: !a.quiet,
    };
    let opts = a.start.options("--server-bin")?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let log = a.log.clone().unwrap_or_else(|| a.out.join("server.log"));
    let ring = SOAK_RING_TIMEOUT_MS.to_string();
    // A key of its own, as in production (the development key warns).
    let mut rng = fastrand::Rng::with_seed(a.seed ^ u64::from(std::process::id()));
    let api_key = format!("soak{:08x}", rng.u32(..));
    let api_secret: String = (0..48).map(|_| rng.alphanumeric()).collect();
    // Sign-ups come from many addresses behind loopback as their proxy (the
    // per-address sign-up limit stays as configured); info-level logging,
    // so the log tells what happened around a warning.
    let opts = opts
        .env("VELA_SERVER_TRUSTED_PROXIES", "127.0.0.1")
        .env("VELA_CALLS_RING_TIMEOUT_MS", &ring)
        .env("VELA_LOG", "info")
        .env("VELA_AUTH_API_KEY", &api_key)
        .env("VELA_AUTH_API_SECRET", &api_secret)
        .log(ServerLog::File(log.clone()));
    let server = start_server(&opts)
        .await
        .map_err(|e| format!("{e} (log: {})", log.display()))?;
    let target = Target {
        http_base: server.http_base.clone(),
        pid: Some(server.pid),
        keys: TokenKeys::new(&api_key, &api_secret),
        nodes: Vec::new(),
    };
    let started = vela_loadtest::soak::figures::utc_now();
    let load = format!(
        "{} rooms x {} participants (audio + {}/{}/{} kbit/s simulcast video at {} fps), one replaced every {} s, a room reopened every {} s, WHIP+WHEP every {} s; {} people (account action every {} s, device socket every {} s, call every {} s)",
        cfg.rooms,
        cfg.per_room,
        kbps[0],
        kbps[1],
        kbps[2],
        a.fps,
        a.churn_secs,
        a.room_cycle_secs,
        a.whip_whep_secs,
        cfg.accounts.people,
        a.account_secs,
        a.socket_secs,
        a.call_secs
    );
    let run = soak(&cfg, &target).await;
    let exit = server.stop();
    let run = run.map_err(|e| e.to_string())?;
    let log_summary = read_log(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut report = SoakReport::new(
        run,
        load,
        minutes,
        warmup,
        log_summary,
        exit.and_then(|s| s.code()),
    );
    report.started = started;
    let md = report.markdown();
    say(&md);
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    write_out(&a.out.join("soak.json"), &json)?;
    write_out(&a.out.join("soak.svg"), &report.chart())?;
    write_out(&a.out.join("soak.md"), &md)?;
    say(&format!(
        "wrote soak.json, soak.svg and soak.md in {}; server log {}\n",
        a.out.display(),
        log.display()
    ));
    if report.passed {
        Ok(())
    } else {
        Err("soak checks failed (see soak.md)".into())
    }
}

fn cmd_relay(bind: SocketAddr, rids: Vec<String>) -> Result<(), String> {
    let socket = std::net::UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    say(&format!("listening {addr}\n"));
    let stop = AtomicBool::new(false);
    vela_loadtest::relay::serve(&socket, &rids, &stop).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VELA_LOADTEST_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let result = match cli.cmd {
        Cmd::Relay { bind, forward_rid } => cmd_relay(bind, forward_rid),
        Cmd::Summarize { files } => vela_loadtest::report::summarize(&files).map(|t| say(&t)),
        cmd => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("vela-loadtest: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                let work = async move {
                    match cmd {
                        Cmd::Run(c) => cmd_run(c).await.map(|_| ()),
                        Cmd::Sweep {
                            common,
                            start,
                            factor,
                            max,
                            refine,
                            loss_limit,
                            p99_limit_ms,
                            repeat,
                        } => {
                            let sc = SweepConfig {
                                start,
                                factor: factor.max(1.01),
                                max,
                                refine,
                                loss_limit_pct: loss_limit,
                                p99_limit_ms,
                                repeat,
                            };
                            cmd_sweep(common, sc).await.map(|_| ())
                        }
                        Cmd::Attack {
                            attack,
                            count,
                            server_bin,
                            nofile,
                            settings,
                            settle,
                        } => {
                            let cfg = vela_loadtest::attack::AttackConfig {
                                bin: server_bin.unwrap_or_else(default_server_bin),
                                attack,
                                count,
                                nofile,
                                settings,
                                settle: Duration::from_secs_f64(settle.max(0.0)),
                            };
                            vela_loadtest::attack::run(cfg).await.map(|r| say(&r))
                        }
                        Cmd::Soak(a) => cmd_soak(a).await,
                        Cmd::Relay { .. } | Cmd::Summarize { .. } => Ok(()),
                    }
                };
                // SIGINT or SIGTERM: drop the run, which stops the server
                // and relay this process started.
                let term = async {
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(mut s) => {
                            s.recv().await;
                        }
                        Err(_) => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = work => r,
                    _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
                    _ = term => Err("terminated".into()),
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vela-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}
