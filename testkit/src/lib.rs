//! Throwaway services for tests: a PostgreSQL server, Redis servers and
//! coturn ([`Coturn`]), each in its own temporary folder on a free port,
//! started from the Debian packages (`scripts/test.sh` installs them when
//! missing).
//!
//! Nothing is expected to run before the tests: each test process starts
//! what it needs. A watchdog process stops each server when the test
//! process ends, even when it is killed, so no server outlives its tests.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

mod coturn;
pub use coturn::Coturn;

/// A free TCP port on loopback (free when asked: a server started right
/// after takes it).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A new empty folder under the system's temporary folder.
fn temp_dir(what: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vela-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary folder");
    dir
}

/// Runs `cleanup` (a shell command) once this test process has ended.
fn watchdog(cleanup: &str) {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; {cleanup}",
        std::process::id()
    );
    let _ = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// Waits until something listens on `port` on loopback.
fn wait_for_port(port: u16, limit: Duration, what: &str) {
    let until = Instant::now() + limit;
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            Instant::now() < until,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where a Debian package's program is: on the `PATH`, or in PostgreSQL's
/// versioned folder (`/usr/lib/postgresql/15/bin`), which is not.
fn program(name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} not found: run scripts/test.sh, which installs it"))
}

/// A Redis server of this test alone; stopped when dropped.
#[derive(Debug)]
pub struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts a Redis server on a free loopback port, saving nothing to disk.
    pub fn start() -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: temp_dir("redis"),
            child: None,
        };
        redis.run();
        redis
    }

    fn run(&mut self) {
        let child = Command::new(program("redis-server"))
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (scripts/test.sh installs it)");
        watchdog(&format!(
            "kill -9 {} 2>/dev/null; rm -rf '{}'",
            child.id(),
            self.dir.display()
        ));
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10), "redis-server");
    }

    /// The URL a node is configured with (`cluster.redis_url`).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (an outage); [`Redis::restart`] brings it back on
    /// the same port, empty.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port after [`Redis::stop`].
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The PostgreSQL server of this test process, started on first use and
/// shared by its tests, each of which gets its own database.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    dir: PathBuf,
}

/// A database of one test on the shared server.
#[derive(Debug, Clone)]
pub struct Database {
    /// Its URL, as `store.url` takes it.
    pub url: String,
}

impl Postgres {
    /// The server of this process, started when first asked for.
    pub fn shared() -> &'static Postgres {
        static SERVER: OnceLock<Postgres> = OnceLock::new();
        SERVER.get_or_init(Postgres::start)
    }

    fn start() -> Postgres {
        let dir = temp_dir("postgres");
        let port = free_port();
        let data = dir.join("data");
        // PostgreSQL refuses to run as root: then its files and processes
        // belong to the `postgres` user of the Debian package.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.trim_ascii() == b"0")
            .unwrap_or(false);
        if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the PostgreSQL folder to postgres");
        }
        let as_owner = |program_path: &Path| {
            if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program_path);
                c
            } else {
                Command::new(program_path)
            }
        };
        let out = as_owner(&program("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "vela", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .expect("run initdb (scripts/test.sh installs PostgreSQL)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Durability is not what these tests measure: no fsync.
        let options = format!(
            "-k {} -p {port} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            dir.display()
        );
        let log = dir.join("log");
        let out = as_owner(&program("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let stop = format!(
            "{} '{}' -D '{}' -m immediate stop >/dev/null 2>&1; rm -rf '{}'",
            if root { "runuser -u postgres --" } else { "" },
            program("pg_ctl").display(),
            data.display(),
            dir.display()
        );
        watchdog(&stop);
        Postgres { port, dir }
    }

    /// A new empty database on this server, of one test.
    pub fn database(&self) -> Database {
        static N: Mutex<u64> = Mutex::new(0);
        let name = {
            let mut n = N.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            format!("vela_{}_{}", std::process::id(), *n)
        };
        let out = Command::new(program("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "vela",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
            ])
            .arg(format!("CREATE DATABASE {name}"))
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "CREATE DATABASE failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Database {
            url: format!("postgres://vela@127.0.0.1:{}/{name}", self.port),
        }
    }

    /// The folder the server keeps its files in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_starts_answers_and_comes_back_after_a_restart() {
        let mut redis = Redis::start();
        let ping = |port: u16| {
            use std::io::{Read, Write};
            let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"PING\r\n").unwrap();
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf).unwrap();
            buf
        };
        assert_eq!(&ping(redis.port()), b"+PONG\r\n");
        redis.stop();
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, redis.port())).is_err());
        redis.restart();
        assert_eq!(&ping(redis.port()), b"+PONG\r\n");
    }

    #[test]
    fn coturn_serves_tls_with_the_certificate_it_names() {
        let coturn = Coturn::start(Ipv4Addr::LOCALHOST.into(), "a-test-secret-0123456789");
        assert!(coturn.turns_url().starts_with("turns:127.0.0.1:"));
        // The SPKI hash, computed by openssl from what the TLS port serves:
        // what Chromium compares with --ignore-certificate-errors-spki-list.
        let script = format!(
            "openssl s_client -connect 127.0.0.1:{} </dev/null 2>/dev/null | openssl x509 -pubkey -noout \
             | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            coturn.tls_port()
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        let served = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(served, coturn.spki_sha256(), "log:\n{}", coturn.log());
        assert!(coturn.log().contains("TLS"), "{}", coturn.log());
    }

    #[test]
    fn postgres_gives_each_test_its_own_database() {
        let a = Postgres::shared().database();
        let b = Postgres::shared().database();
        assert_ne!(a.url, b.url);
        assert!(a.url.starts_with("postgres://vela@127.0.0.1:"));
    }
}
