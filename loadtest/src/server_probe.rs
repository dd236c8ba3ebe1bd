//! What the server looks like from outside: CPU time and RSS from /proc,
//! counters from `GET /metrics`, kernel UDP drops from /proc/net/snmp; and
//! starting the `vela` binary ([`ServerProcess`]) pinned to a core, with a
//! configuration file or an open-files limit when asked.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Clock ticks per second of /proc/PID/stat times (`getconf CLK_TCK`).
pub fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|v| *v > 0)
            .unwrap_or(100)
    })
}

/// CPU time (user + system, all threads, in microseconds) of `pid`.
pub fn cpu_us(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesized command name; utime and stime are 14 and 15.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("bad stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> io::Result<u64> {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("bad stat field"))
    };
    // rest starts at field 3 (state): utime is field 14 => index 11.
    let ticks = num(11)? + num(12)?;
    Ok(ticks * 1_000_000 / clk_tck())
}

/// CPU time of `pid` in nanoseconds from the scheduler: the sum of
/// `se.sum_exec_runtime` over its live threads (/proc/PID/task/*/sched).
/// Precise, but misses threads that exited; None when unavailable.
pub fn cpu_ns_precise(pid: u32) -> Option<u64> {
    let mut total = 0.0f64;
    let mut any = false;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(s) = std::fs::read_to_string(t.path().join("sched")) else {
            continue;
        };
        if let Some(v) = s
            .lines()
            .find(|l| l.starts_with("se.sum_exec_runtime"))
            .and_then(|l| l.rsplit(':').next()?.trim().parse::<f64>().ok())
        {
            total += v;
            any = true;
        }
    }
    // Milliseconds with a fractional part.
    any.then_some((total * 1e6) as u64)
}

/// Resident set size of `pid` in KiB.
pub fn rss_kb(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS"))
}

/// A CPU time reading.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    /// When.
    pub at: Instant,
    /// Cumulative CPU microseconds from /proc/PID/stat (clock-tick resolution).
    pub cpu_us: u64,
    /// Cumulative CPU nanoseconds of live threads from the scheduler.
    pub precise_ns: Option<u64>,
}

impl CpuSample {
    /// Reads `pid` now (zero if unreadable).
    pub fn take(pid: u32) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            cpu_us: cpu_us(pid).unwrap_or(0),
            precise_ns: cpu_ns_precise(pid),
        }
    }

    /// CPU microseconds spent since `earlier`: the scheduler's nanosecond
    /// figure when it agrees with the tick count within two ticks and 5% (no thread
    /// exited in between), the tick count otherwise.
    pub fn since(&self, earlier: &CpuSample) -> u64 {
        let ticks = self.cpu_us.saturating_sub(earlier.cpu_us);
        let tick_us = 1_000_000 / clk_tck();
        match (self.precise_ns, earlier.precise_ns) {
            (Some(a), Some(b)) if a >= b => {
                let p = (a - b) / 1000;
                let slack = 2 * tick_us + ticks / 20;
                if p + slack >= ticks && p <= ticks + slack {
                    p
                } else {
                    ticks
                }
            }
            _ => ticks,
        }
    }

    /// Share of one core since `earlier`, percent.
    pub fn percent_since(&self, earlier: &CpuSample) -> f64 {
        let wall = self.at.saturating_duration_since(earlier.at).as_micros() as f64;
        if wall <= 0.0 {
            0.0
        } else {
            self.since(earlier) as f64 * 100.0 / wall
        }
    }
}

/// Kernel UDP counters (/proc/net/snmp, all sockets of the machine).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UdpCounters {
    /// InErrors.
    pub in_errors: u64,
    /// RcvbufErrors: datagrams dropped because a receive buffer was full.
    pub rcvbuf_errors: u64,
    /// SndbufErrors.
    pub sndbuf_errors: u64,
}

impl UdpCounters {
    /// Reads /proc/net/snmp (zeros if unreadable).
    pub fn read() -> UdpCounters {
        let Ok(s) = std::fs::read_to_string("/proc/net/snmp") else {
            return UdpCounters::default();
        };
        let mut lines = s.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(h), Some(v)) = (lines.next(), lines.next()) else {
            return UdpCounters::default();
        };
        let map: HashMap<&str, u64> = h
            .split_whitespace()
            .zip(v.split_whitespace())
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        UdpCounters {
            in_errors: map.get("InErrors").copied().unwrap_or(0),
            rcvbuf_errors: map.get("RcvbufErrors").copied().unwrap_or(0),
            sndbuf_errors: map.get("SndbufErrors").copied().unwrap_or(0),
        }
    }

    /// Increase since `earlier`.
    pub fn since(&self, earlier: &UdpCounters) -> UdpCounters {
        UdpCounters {
            in_errors: self.in_errors.saturating_sub(earlier.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(earlier.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(earlier.sndbuf_errors),
        }
    }
}

/// Parsed `GET /metrics`: metric name (with labels, as written) to value.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub HashMap<String, f64>);

impl Metrics {
    /// Parses Prometheus text format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.trim().to_owned(), v.trim().parse().ok()?))
                })
                .collect(),
        )
    }

    /// The value of `name` (0 when absent).
    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// Increase of `name` since `earlier`.
    pub fn delta(&self, earlier: &Metrics, name: &str) -> f64 {
        (self.get(name) - earlier.get(name)).max(0.0)
    }
}

/// Fetches `{base}/metrics`.
pub async fn scrape(client: &reqwest::Client, base: &str) -> Result<Metrics, reqwest::Error> {
    let text = client
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(Metrics::parse(&text))
}

/// Waits until `{base}/metrics` answers, up to `limit`.
pub async fn wait_ready(client: &reqwest::Client, base: &str, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if scrape(client, base).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The `vela` binary next to this one (where cargo builds both).
pub fn default_server_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("vela")))
        .unwrap_or_else(|| PathBuf::from("vela"))
}

/// Whether the `vela` at `bin` has ICE over TCP (`--tcp-port` in its
/// `--help`; asked with a 5 s limit). Servers before it do not take the
/// flag, and those with it listen on 7881 unless told otherwise, which two
/// servers on one machine cannot both do.
pub fn has_tcp_port_flag(bin: &Path) -> bool {
    let Ok(mut child) = Command::new(bin)
        .arg("--help")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
    let mut out = String::new();
    child
        .stdout
        .take()
        .is_some_and(|mut o| io::Read::read_to_string(&mut o, &mut out).is_ok())
        && out.contains("--tcp-port")
}

/// A TCP port free on loopback now.
pub fn free_tcp_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A command running `exe` with its open-files limit set by `prlimit` and
/// pinned by `taskset -c` when asked; each execs the next, so the child's pid
/// is `exe`'s (its CPU time and memory are what /proc shows for that pid).
pub fn launcher(exe: &Path, cpus: Option<&str>, nofile: Option<u64>) -> Command {
    let mut argv: Vec<OsString> = Vec::new();
    if let Some(n) = nofile {
        argv.extend([
            "prlimit".into(),
            format!("--nofile={n}:{n}").into(),
            "--".into(),
        ]);
    }
    if let Some(c) = cpus {
        argv.extend(["taskset".into(), "-c".into(), c.into()]);
    }
    argv.push(exe.into());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// Where a started server's log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerLog {
    /// To this process's standard error.
    Inherit,
    /// Nowhere.
    Discard,
    /// Its standard output and error to this file (created or truncated),
    /// without colours.
    File(PathBuf),
}

/// How to start a `vela` server: [`ServerOptions::new`], then setters.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    bin: PathBuf,
    cpus: Option<String>,
    nofile: Option<u64>,
    config: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log_level: String,
    log: ServerLog,
}

impl ServerOptions {
    /// `bin` (a bare name is looked up in PATH), unpinned, with the
    /// inherited open-files limit, no configuration file, and its log on
    /// this process's standard error at `warn`.
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        ServerOptions {
            bin: bin.into(),
            cpus: None,
            nofile: None,
            config: None,
            args: Vec::new(),
            env: Vec::new(),
            log_level: "warn".into(),
            log: ServerLog::Inherit,
        }
    }

    /// The binary it starts.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Pins it to these CPUs (`taskset -c` list).
    pub fn cpus(mut self, cpus: &str) -> Self {
        self.cpus = Some(cpus.to_owned());
        self
    }

    /// Its open-files limit, soft and hard (`prlimit --nofile`).
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// A configuration file with this TOML, written in its directory and
    /// passed as `--config`.
    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config = Some(toml.into());
        self
    }

    /// Arguments after the ones [`ServerProcess::spawn`] passes (a later
    /// flag wins).
    pub fn args(mut self, args: &[String]) -> Self {
        self.args.extend_from_slice(args);
        self
    }

    /// `--tcp-port` with a port free now, where the server has ICE over TCP
    /// ([`has_tcp_port_flag`]): not its default 7881, which another server
    /// on the machine may hold (two started at once collide). A
    /// `--tcp-port` among arguments added later wins.
    pub fn free_ice_tcp_port(self) -> io::Result<Self> {
        if !has_tcp_port_flag(&self.bin) {
            return Ok(self);
        }
        let port = free_tcp_port()?;
        Ok(self.args(&["--tcp-port".into(), port.to_string()]))
    }

    /// An environment variable for it, set after `VELA_LOG` (so it may set
    /// that one too, whatever this process's environment says).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Its `VELA_LOG` filter unless this process's environment sets one.
    pub fn log_level(mut self, filter: &str) -> Self {
        self.log_level = filter.to_owned();
        self
    }

    /// Where its log goes.
    pub fn log(mut self, log: ServerLog) -> Self {
        self.log = log;
        self
    }
}

/// A `vela` server this tool started; stopped when dropped.
pub struct ServerProcess {
    child: Child,
    /// Its pid (prlimit and taskset exec, so this is the server itself).
    pub pid: u32,
    /// Its HTTP address (`127.0.0.1:PORT`).
    pub http: SocketAddr,
    /// `http://127.0.0.1:PORT`.
    pub http_base: String,
    /// Its media port.
    pub udp: SocketAddr,
    /// Its working directory (a fresh one: its own SQLite store), removed at stop.
    pub dir: PathBuf,
}

fn free_ports() -> io::Result<(u16, u16)> {
    let t = TcpListener::bind("127.0.0.1:0")?;
    let u = UdpSocket::bind("127.0.0.1:0")?;
    Ok((t.local_addr()?.port(), u.local_addr()?.port()))
}

impl ServerProcess {
    /// Starts `bin --http 127.0.0.1:P --udp-port U --node-ip 127.0.0.1`
    /// (after `--config FILE` when there is one, before the extra
    /// arguments) on free ports, in a fresh temporary directory so it opens
    /// a store of its own.
    pub fn spawn(o: &ServerOptions) -> io::Result<Self> {
        // Standard output and error; a log file is opened first, so there
        // is nothing to clean up when it cannot be.
        let (stdout, stderr) = match &o.log {
            ServerLog::Inherit => (Stdio::null(), Stdio::inherit()),
            ServerLog::Discard => (Stdio::null(), Stdio::null()),
            ServerLog::File(path) => {
                let f = std::fs::File::create(path)?;
                (Stdio::from(f.try_clone()?), Stdio::from(f))
            }
        };
        let (http, udp) = free_ports()?;
        let dir = std::env::temp_dir().join(format!("vela-loadtest-{}-{http}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // Absolute, since the server runs in another directory (a bare name
        // is left to PATH).
        let bin = std::fs::canonicalize(&o.bin).unwrap_or_else(|_| o.bin.clone());
        let mut cmd = launcher(&bin, o.cpus.as_deref(), o.nofile);
        if let Some(toml) = &o.config {
            let file = dir.join("vela.toml");
            std::fs::write(&file, toml)?;
            cmd.arg("--config").arg(file);
        }
        cmd.arg("--http")
            .arg(format!("127.0.0.1:{http}"))
            .arg("--udp-port")
            .arg(udp.to_string())
            .arg("--node-ip")
            .arg("127.0.0.1")
            .args(&o.args)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if matches!(o.log, ServerLog::File(_)) {
            cmd.env("NO_COLOR", "1");
        }
        if std::env::var_os("VELA_LOG").is_none() {
            cmd.env("VELA_LOG", &o.log_level);
        }
        cmd.envs(o.env.iter().map(|(k, v)| (k, v)));
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let http = SocketAddr::from(([127, 0, 0, 1], http));
        Ok(ServerProcess {
            pid: child.id(),
            child,
            http,
            http_base: format!("http://{http}"),
            udp: SocketAddr::from(([127, 0, 0, 1], udp)),
            dir,
        })
    }

    /// Asks the server to stop (SIGTERM via `kill`), then waits up to 5 s
    /// (then kills it). Returns how it ended: `None` when it had to be
    /// killed or could not be waited for.
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.terminate();
        let _ = std::fs::remove_dir_all(&self.dir);
        status
    }

    fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Open file descriptors of `pid` (entries of /proc/PID/fd).
pub fn open_fds(pid: u32) -> io::Result<u64> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// Open file descriptors of `pid` by what they point at: `socket`, `pipe`,
/// `anon_inode:[eventfd]`, or a file's name (without its directory).
pub fn fd_kinds(pid: u32) -> io::Result<std::collections::BTreeMap<String, u64>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        let kind = match t.split_once(":[") {
            Some((k @ ("socket" | "pipe"), _)) => k.to_owned(),
            Some(_) => t.into_owned(),
            None => target
                .file_name()
                .map_or_else(|| t.into_owned(), |n| n.to_string_lossy().into_owned()),
        };
        *out.entry(kind).or_insert(0) += 1;
    }
    Ok(out)
}

/// Threads of `pid` (`Threads:` in /proc/PID/status).
pub fn threads(pid: u32) -> io::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc() {
        let pid = std::process::id();
        assert!(rss_kb(pid).unwrap_or(0) > 0);
        // stdin, stdout, stderr at least; the test harness runs threads.
        assert!(open_fds(pid).unwrap_or(0) >= 3);
        // Other tests of this process open and close files meanwhile: only
        // what is always there is checked.
        let kinds = fd_kinds(pid).unwrap_or_default();
        assert!(kinds.values().sum::<u64>() >= 3, "{kinds:?}");
        assert!(threads(pid).unwrap_or(0) >= 1);
        assert!(cpu_us(pid).is_ok());
        let a = CpuSample::take(pid);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let b = CpuSample::take(pid);
        assert!(b.since(&a) > 0);
    }

    /// A directory of its own for a test, and in it an executable
    /// stand-in for `vela` running `script` (sh).
    fn stand_in(test: &str, script: &str) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let tmp = std::env::temp_dir().join(format!("vela-probe-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let bin = tmp.join("fake-vela");
        std::fs::write(&bin, format!("#!/bin/sh\n{script}")).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        (tmp, bin)
    }

    /// A stand-in for `vela` that writes down how it was started, then
    /// waits to be stopped: the options reach the process the pid names.
    #[test]
    fn starts_the_server_as_asked() {
        let (tmp, bin) = stand_in(
            "start",
            "{ echo \"pid $$\"; echo \"args $*\"; echo \"nofile $(ulimit -n)\";\n\
               echo \"log $VELA_LOG\"; echo \"extra $EXTRA\"; echo \"cwd $(pwd)\";\n\
               grep Cpus_allowed_list /proc/$$/status; cat vela.toml; } > \"$REPORT.part\"\n\
             mv \"$REPORT.part\" \"$REPORT\"\n\
             exec sleep 30\n",
        );
        let report = tmp.join("started");
        // A CPU this process may use (a container may not offer CPU 0).
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let cpu = own
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .and_then(|l| l.trim().split([',', '-']).next())
            .unwrap()
            .to_owned();
        let o = ServerOptions::new(&bin)
            .cpus(&cpu)
            .nofile(123)
            .config("[auth]\napi_key = \"k\"\n")
            .args(&["--log-level".into(), "info".into()])
            .log_level("error")
            .env("EXTRA", "yes")
            .env("REPORT", report.to_str().unwrap())
            .log(ServerLog::Discard);
        let server = ServerProcess::spawn(&o).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while !report.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let text = std::fs::read_to_string(&report).unwrap();
        let (pid, dir) = (server.pid, server.dir.clone());
        assert!(text.contains(&format!("pid {pid}\n")), "{text}");
        let port = server.http.port();
        let args = format!(
            "args --config {}/vela.toml --http 127.0.0.1:{port} --udp-port {} --node-ip 127.0.0.1 --log-level info\n",
            dir.display(),
            server.udp.port()
        );
        assert!(text.contains(&args), "{text}");
        assert_eq!(server.http_base, format!("http://127.0.0.1:{port}"));
        assert!(text.contains("nofile 123\n"), "{text}");
        // The filter given, unless whoever runs the test set VELA_LOG.
        let log = std::env::var("VELA_LOG").unwrap_or_else(|_| "error".into());
        assert!(text.contains(&format!("log {log}\n")), "{text}");
        assert!(text.contains("extra yes\n"), "{text}");
        assert!(text.contains(&format!("cwd {}\n", dir.display())), "{text}");
        assert!(
            text.contains(&format!("Cpus_allowed_list:\t{cpu}\n")),
            "{text}"
        );
        assert!(text.contains("[auth]\napi_key = \"k\"\n"), "{text}");
        server.stop();
        assert!(!dir.exists(), "its directory is removed");
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "it is gone");
        let _ = std::fs::remove_dir_all(&tmp);
    }

    /// A log file gets both streams, without colours; `stop` says how the
    /// process ended (here: it exits by itself on SIGTERM with code 3).
    #[test]
    fn logs_to_a_file_and_reports_the_exit() {
        let (tmp, bin) = stand_in(
            "log",
            "trap 'exit 3' TERM\n\
             echo \"out NO_COLOR=$NO_COLOR\"; echo err >&2; echo ready > ready\n\
             while :; do sleep 0.05; done\n",
        );
        let log = tmp.join("server.log");
        let server =
            ServerProcess::spawn(&ServerOptions::new(&bin).log(ServerLog::File(log.clone())))
                .unwrap();
        let ready = server.dir.join("ready");
        let end = Instant::now() + Duration::from_secs(10);
        while !ready.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(ready.exists(), "the stand-in started");
        let status = server.stop();
        assert_eq!(status.and_then(|s| s.code()), Some(3), "{status:?}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "out NO_COLOR=1\nerr\n");
        let _ = std::fs::remove_dir_all(&tmp);
    }

    /// `--tcp-port` is looked for in the server's `--help`.
    #[test]
    fn tells_servers_with_ice_over_tcp_apart() {
        let (tmp, new) = stand_in("tcp-new", "echo \"      --tcp-port <TCP_PORT>\"\n");
        assert!(has_tcp_port_flag(&new));
        let (tmp2, old) = stand_in("tcp-old", "echo \"      --udp-port <UDP_PORT>\"\n");
        assert!(!has_tcp_port_flag(&old));
        assert!(!has_tcp_port_flag(&tmp.join("missing")));
        assert!(free_tcp_port().unwrap() > 0);
        // A server that has the flag is given a port (free now); others none.
        let a = ServerOptions::new(&new).free_ice_tcp_port().unwrap();
        assert_eq!(a.args.len(), 2, "{:?}", a.args);
        assert_eq!(a.args[0], "--tcp-port");
        assert!(a.args[1].parse::<u16>().unwrap() > 0, "{:?}", a.args);
        let o = ServerOptions::new(&old).free_ice_tcp_port().unwrap();
        assert!(o.args.is_empty(), "{:?}", o.args);
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir_all(&tmp2);
    }

    #[test]
    fn parses_metrics() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE x counter\nvela_packets_forwarded_total 42\nvela_rooms 3\n",
        );
        assert_eq!(m.get("vela_packets_forwarded_total"), 42.0);
        assert_eq!(m.get("vela_rooms"), 3.0);
        assert_eq!(m.get("nope"), 0.0);
    }
}
