//! Hostile clients, measured: what a login storm, password guessing, a data
//! flood toward a participant that does not read, idle connections and
//! unauthenticated WebSocket upgrades do to a `vela` server (its memory, its
//! answers, its readiness). RELIABILITY.md quotes these runs before and after
//! the hardening; every loop is bounded in count and time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use vela_signaling::token::{TokenKeys, VideoGrant};

use crate::server_probe::{ServerLog, ServerOptions, ServerProcess, rss_kb};

/// The API key and secret the attacked server runs with (a configured key,
/// as in production: no development tokens).
const KEY: &str = "attack-key";
const SECRET: &str = "attack-secret-0123456789abcdef0123456789";

/// What to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attack {
    /// Concurrent failed logins with unknown usernames, one client address each.
    LoginStorm,
    /// Concurrent wrong passwords for one account from one address.
    LoginGuess,
    /// Data messages toward a room participant whose socket is never read.
    DataFlood,
    /// Idle TCP connections that never send a request.
    IdleConnections,
    /// Unauthenticated WebSocket upgrades of the device socket, held open.
    WsUpgrades,
}

/// How to run an attack.
#[derive(Debug, Clone)]
pub struct AttackConfig {
    /// The `vela` binary.
    pub bin: PathBuf,
    /// What to try.
    pub attack: Attack,
    /// How many clients, messages or connections (per attack; see its doc).
    pub count: u32,
    /// The server's open-files limit (soft and hard), if set.
    pub nofile: Option<u64>,
    /// Extra `key = value` lines for the server's configuration file, each
    /// under its `[section]` (e.g. `limits.password_hashes_at_once=2`).
    pub settings: Vec<String>,
    /// How long to watch the server after the attack, for memory to settle.
    pub settle: Duration,
}

fn config_text(settings: &[String]) -> Result<String, String> {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    sections.entry("auth".into()).or_default().extend([
        format!("api_key = \"{KEY}\""),
        format!("api_secret = \"{SECRET}\""),
    ]);
    for s in settings {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| format!("setting {s:?} is not section.key=value"))?;
        let (section, key) = key
            .trim()
            .split_once('.')
            .ok_or_else(|| format!("setting {s:?} names no section"))?;
        sections
            .entry(section.to_owned())
            .or_default()
            .push(format!("{key} = {}", value.trim()));
    }
    let mut text = String::new();
    for (section, lines) in sections {
        let _ = writeln!(text, "[{section}]");
        for l in lines {
            let _ = writeln!(text, "{l}");
        }
    }
    Ok(text)
}

/// The server under attack: `cfg.bin` with a configured key, the settings,
/// the open-files limit, a free port for ICE over TCP (two attacks at once
/// would both want the default), and its log discarded (thousands of
/// refused requests would flood the terminal).
fn spawn(cfg: &AttackConfig) -> Result<ServerProcess, String> {
    let mut o = ServerOptions::new(&cfg.bin)
        .free_ice_tcp_port()
        .map_err(|e| format!("finding a free TCP port: {e}"))?
        .config(config_text(&cfg.settings)?)
        .log_level("error")
        .log(ServerLog::Discard);
    if let Some(n) = cfg.nofile {
        o = o.nofile(n);
    }
    ServerProcess::spawn(&o).map_err(|e| format!("starting {}: {e}", cfg.bin.display()))
}

async fn ready(client: &reqwest::Client, base: &str) -> Option<u16> {
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        client.get(format!("{base}/readyz")).send(),
    )
    .await;
    match r {
        Ok(Ok(resp)) => Some(resp.status().as_u16()),
        _ => None,
    }
}

/// Server memory and readiness over time, sampled every 100 ms (memory)
/// and 500 ms (readiness) until stopped.
struct Watch {
    stop: Arc<AtomicBool>,
    peak_kb: Arc<AtomicU64>,
    ready_failures: Arc<AtomicU64>,
    ready_checks: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watch {
    fn start(pid: u32, base: &str) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_kb = Arc::new(AtomicU64::new(rss_kb(pid).unwrap_or(0)));
        let ready_failures = Arc::new(AtomicU64::new(0));
        let ready_checks = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak_kb.clone());
        let mem = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                if let Ok(kb) = rss_kb(pid) {
                    p.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let (s, f, n, base) = (
            stop.clone(),
            ready_failures.clone(),
            ready_checks.clone(),
            base.to_owned(),
        );
        let readiness = tokio::spawn(async move {
            // A fresh connection each time: what a load balancer's probe sees.
            while !s.load(Ordering::Relaxed) {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap_or_default();
                n.fetch_add(1, Ordering::Relaxed);
                if ready(&client, &base).await != Some(200) {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Watch {
            stop,
            peak_kb,
            ready_failures,
            ready_checks,
            tasks: vec![mem, readiness],
        }
    }

    async fn stop(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        (
            self.peak_kb.load(Ordering::Relaxed),
            self.ready_failures.load(Ordering::Relaxed),
            self.ready_checks.load(Ordering::Relaxed),
        )
    }
}

/// Runs an attack and returns a Markdown report.
pub async fn run(cfg: AttackConfig) -> Result<String, String> {
    let server = spawn(&cfg)?;
    let client = reqwest::Client::new();
    let up = Instant::now();
    while ready(&client, &server.http_base).await != Some(200) {
        if up.elapsed() > Duration::from_secs(20) {
            return Err("the server did not become ready within 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_kb(server.pid).map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "attack `{:?}`, count {}, server {} (pid {}){}{}",
        cfg.attack,
        cfg.count,
        cfg.bin.display(),
        server.pid,
        cfg.nofile
            .map(|n| format!(", open-files limit {n}"))
            .unwrap_or_default(),
        if cfg.settings.is_empty() {
            String::new()
        } else {
            format!(", settings {}", cfg.settings.join(" "))
        }
    );
    let watch = Watch::start(server.pid, &server.http_base);
    let started = Instant::now();
    let detail = match cfg.attack {
        Attack::LoginStorm => login_storm(&server, cfg.count).await?,
        Attack::LoginGuess => login_guess(&server, cfg.count).await?,
        Attack::DataFlood => data_flood(&server, cfg.count).await?,
        Attack::IdleConnections => idle_connections(&server, cfg.count, cfg.settle).await?,
        Attack::WsUpgrades => ws_upgrades(&server, cfg.count, cfg.settle).await?,
    };
    let attack_secs = started.elapsed().as_secs_f64();
    let during_ready = (
        watch.ready_failures.load(Ordering::Relaxed),
        watch.ready_checks.load(Ordering::Relaxed),
    );
    // Memory after the attack, as it settles.
    let settle_until = Instant::now() + cfg.settle;
    while Instant::now() < settle_until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (peak, failures, checks) = watch.stop().await;
    let after = rss_kb(server.pid).unwrap_or(0);
    let alive = ready(&client, &server.http_base).await;
    let mb = |kb: u64| kb as f64 / 1024.0;
    let _ = writeln!(out, "{detail}");
    let _ = writeln!(
        out,
        "server RSS: {:.1} MB before, {:.1} MB peak, {:.1} MB {:.0} s after the attack ({:.1} s long)",
        mb(baseline),
        mb(peak),
        mb(after),
        cfg.settle.as_secs_f64(),
        attack_secs
    );
    let _ = writeln!(
        out,
        "/readyz from a new connection every 0.5 s: {} of {} failed during the attack, {} of {} in all; at the end: {}",
        during_ready.0,
        during_ready.1,
        failures,
        checks,
        alive.map_or("no answer".to_owned(), |s| s.to_string())
    );
    Ok(out)
}

fn histogram(statuses: &[Result<u16, String>]) -> String {
    let mut h: BTreeMap<String, u32> = BTreeMap::new();
    for s in statuses {
        let k = match s {
            Ok(c) => c.to_string(),
            Err(e) => e.clone(),
        };
        *h.entry(k).or_default() += 1;
    }
    h.iter()
        .map(|(k, n)| format!("{n} x {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn login_body(username: &str, password: &str) -> serde_json::Value {
    serde_json::json!({
        "username": username,
        "password": password,
        "device": {"kind": "web", "label": "attack"},
    })
}

async fn post_status(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> Result<u16, String> {
    match tokio::time::timeout(Duration::from_secs(60), client.post(url).json(body).send()).await {
        Ok(Ok(r)) => Ok(r.status().as_u16()),
        Ok(Err(e)) if e.is_connect() => Err("connect error".into()),
        Ok(Err(_)) => Err("transport error".into()),
        Err(_) => Err("no answer in 60 s".into()),
    }
}

/// `count` concurrent failed logins (unknown usernames), each from its own
/// loopback address (127.0.1.x, 127.0.2.x, ...).
async fn login_storm(server: &ServerProcess, count: u32) -> Result<String, String> {
    let url = format!("{}/api/v1/auth/login", server.http_base);
    let start = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let addr = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                1 + (i / 250) as u8,
                1 + (i % 250) as u8,
            ));
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .local_address(addr)
                    .build()
                    .map_err(|e| e.to_string())?;
                post_status(
                    &client,
                    &url,
                    &login_body(&format!("ghost{i}"), "wrong password"),
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.map_err(|e| e.to_string())?);
    }
    Ok(format!(
        "{count} concurrent failed logins from {count} addresses: {} in {:.1} s",
        histogram(&statuses),
        start.elapsed().as_secs_f64()
    ))
}

/// One account, then `count` concurrent wrong passwords for it from one address.
async fn login_guess(server: &ServerProcess, count: u32) -> Result<String, String> {
    let client = reqwest::Client::new();
    let signup = post_status(
        &client,
        &format!("{}/api/v1/accounts", server.http_base),
        &serde_json::json!({"username": "victim", "password": "the right password"}),
    )
    .await?;
    if signup != 201 {
        return Err(format!("sign-up answered {signup}"));
    }
    let url = format!("{}/api/v1/auth/login", server.http_base);
    let tasks: Vec<_> = (0..count)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                post_status(&client, &url, &login_body("victim", &format!("guess {i}"))).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.map_err(|e| e.to_string())?);
    }
    Ok(format!(
        "{count} concurrent wrong passwords for one account from one address: {}",
        histogram(&statuses)
    ))
}

fn room_token(identity: &str, room: &str) -> Result<String, String> {
    let grant = VideoGrant {
        room: Some(room.to_owned()),
        room_join: true,
        can_publish: Some(true),
        can_subscribe: Some(true),
        ..VideoGrant::default()
    };
    TokenKeys::new(KEY, SECRET)
        .issue(identity, None, grant, Duration::from_secs(3600))
        .map_err(|e| e.to_string())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn join(server: &ServerProcess, identity: &str) -> Result<Ws, String> {
    let url = format!("ws://{}/ws", server.http);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let token = room_token(identity, "flood")?;
    let join = serde_json::json!({"type": "join", "token": token});
    ws.send(Message::text(join.to_string()))
        .await
        .map_err(|e| e.to_string())?;
    let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .map_err(|_| "no joined in 5 s".to_owned())?;
    match first {
        Some(Ok(Message::Text(t))) if t.contains("\"joined\"") => Ok(ws),
        other => Err(format!("join answered {other:?}")),
    }
}

/// A participant joins and never reads its socket again; another sends it
/// `count` data messages of 16 KiB as fast as its socket takes them.
async fn data_flood(server: &ServerProcess, count: u32) -> Result<String, String> {
    let sink = join(server, "sink").await?;
    let source = join(server, "source").await?;
    let (mut tx, mut rx) = source.split();
    let errors = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(std::sync::Mutex::new(None::<String>));
    // Set before the sender closes its socket: a close after it is its echo.
    let closing = Arc::new(AtomicBool::new(false));
    let (e2, c2, closing2) = (errors.clone(), closed.clone(), closing.clone());
    // The sender reads its own socket (errors, data from others) all along.
    let reader = tokio::spawn(async move {
        while let Some(m) = rx.next().await {
            match m {
                Ok(Message::Text(t)) if t.contains("\"error\"") => {
                    e2.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Message::Close(f)) => {
                    if !closing2.load(Ordering::Relaxed)
                        && let Ok(mut c) = c2.lock()
                    {
                        *c = Some(format!("{f:?}"));
                    }
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let payload = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(vec![7u8; 16 * 1024])
    };
    let msg = serde_json::json!({"type": "data", "payload": payload}).to_string();
    let start = Instant::now();
    let mut sent = 0u32;
    for _ in 0..count {
        let r = tokio::time::timeout(Duration::from_secs(10), tx.send(Message::text(msg.clone())))
            .await;
        match r {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
        if start.elapsed() > Duration::from_secs(120) {
            break;
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    closing.store(true, Ordering::Relaxed);
    let _ = tx.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    // What the sink finds when it finally reads: the messages that reached
    // it, and how its socket ended.
    let mut sink = sink;
    let mut received = 0u64;
    let mut ended = "still open".to_owned();
    let read_until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < read_until {
        match tokio::time::timeout(Duration::from_secs(2), sink.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                if t.contains("\"data\"") {
                    received += 1;
                }
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                ended = format!("closed: {f:?}");
                break;
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => {
                ended = format!("error: {e}");
                break;
            }
            Ok(None) => {
                ended = "ended without a close frame".into();
                break;
            }
            Err(_) => break,
        }
    }
    Ok(format!(
        "data flood: {sent} of {count} messages of 16 KiB sent in {send_secs:.1} s, {} errors to the sender{}; the sink read {received} data messages afterwards, its socket {ended}",
        errors.load(Ordering::Relaxed),
        closed
            .lock()
            .ok()
            .and_then(|c| c.clone())
            .map(|c| format!(", the sender's socket closed: {c}"))
            .unwrap_or_default()
    ))
}

/// `count` TCP connections that never send a byte, held for `hold`.
async fn idle_connections(
    server: &ServerProcess,
    count: u32,
    hold: Duration,
) -> Result<String, String> {
    let mut conns = Vec::new();
    let mut failed = 0u32;
    for _ in 0..count {
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(server.http),
        )
        .await
        {
            Ok(Ok(s)) => conns.push(s),
            _ => failed += 1,
        }
    }
    let opened = conns.len();
    tokio::time::sleep(hold.min(Duration::from_secs(60))).await;
    // How many the server closed meanwhile (a read returns 0 or an error).
    let mut closed = 0;
    for c in &conns {
        let mut buf = [0u8; 1];
        match c.try_read(&mut buf) {
            Ok(0) => closed += 1,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => closed += 1,
            _ => {}
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", server.pid))
        .map(|d| d.count())
        .unwrap_or(0);
    Ok(format!(
        "{opened} idle connections opened ({failed} failed to connect); after {:.0} s the server had closed {closed}; server open fds: {fds}",
        hold.min(Duration::from_secs(60)).as_secs_f64()
    ))
}

/// `count` WebSocket upgrades of `/api/v1/ws` that never authenticate.
async fn ws_upgrades(server: &ServerProcess, count: u32, hold: Duration) -> Result<String, String> {
    let before = rss_kb(server.pid).unwrap_or(0);
    let mut socks = Vec::new();
    let mut failed = 0;
    for _ in 0..count {
        let url = format!("ws://{}/api/v1/ws", server.http);
        match tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        {
            Ok(Ok((ws, _))) => socks.push(ws),
            _ => failed += 1,
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = rss_kb(server.pid).unwrap_or(0);
    let per = if socks.is_empty() {
        0.0
    } else {
        held.saturating_sub(before) as f64 / socks.len() as f64
    };
    tokio::time::sleep(hold.min(Duration::from_secs(60))).await;
    let mut closed = 0;
    for ws in &mut socks {
        if let Ok(None | Some(Ok(Message::Close(_))) | Some(Err(_))) =
            tokio::time::timeout(Duration::from_millis(50), ws.next()).await
        {
            closed += 1;
        }
    }
    Ok(format!(
        "{} unauthenticated device-socket upgrades held ({failed} failed): {per:.1} kB of server RSS each; {closed} closed by the server within {:.0} s",
        socks.len(),
        hold.min(Duration::from_secs(60)).as_secs_f64()
    ))
}
