//! Headless Firefox (Debian's `firefox-esr`) for the browser tests: one
//! `node node/firefox.mjs` process per browser drives it with puppeteer-core
//! over WebDriver BiDi (no browser download: it starts /usr/bin/firefox-esr),
//! and speaks a line protocol of JSON objects on its stdin and stdout.
//!
//! Needs `/usr/bin/firefox-esr` (Debian package `firefox-esr`), `node`, and
//! `npm ci` run in `tests/browser/node` (scripts/test.sh does both).
//!
//! Firefox gathers no ICE candidates in a network namespace without a default
//! route, so the tests run it in one that has a route (see
//! `netns::Link::routed`). Every request has a time limit; the node process
//! is killed when its handle is dropped, and Firefox with every other
//! process the harness started (they all carry its directory in their
//! environment).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::TestResult;

/// The Firefox binary (Debian package `firefox-esr`).
pub const FIREFOX: &str = "/usr/bin/firefox-esr";
/// The folder of `package.json` and `firefox.mjs`.
pub const NODE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/node");

/// How long Firefox may take to start and open its first page.
const START_LIMIT: Duration = Duration::from_secs(45);
/// How long one request (open a page, run a script) may take.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// One headless Firefox with one page. Cheap to clone: clones share it.
#[derive(Clone)]
pub struct Firefox {
    inner: Arc<Inner>,
}

struct Inner {
    label: String,
    /// One request at a time: written, then its reply read.
    io: tokio::sync::Mutex<Io>,
    /// The node process; killed when the last handle goes.
    _child: Child,
    next_id: AtomicU64,
    /// What node and Firefox printed (stderr).
    log: PathBuf,
    version: String,
}

struct Io {
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// Fails with what to install when something Firefox needs is missing.
pub fn check_installed() -> TestResult {
    if !Path::new(FIREFOX).is_file() {
        return Err(format!(
            "{FIREFOX} is missing: the Firefox tests need Debian's `firefox-esr` \
             (apt-get install -y --no-install-recommends firefox-esr; scripts/test.sh does)"
        )
        .into());
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("node is missing ({e}): the Firefox tests drive it with Node.js"))?;
    if !node.status.success() {
        return Err("`node --version` failed: the Firefox tests drive it with Node.js".into());
    }
    if !Path::new(NODE_DIR)
        .join("node_modules/puppeteer-core/package.json")
        .is_file()
    {
        return Err(format!(
            "puppeteer-core is not installed: run `npm ci` in {NODE_DIR} (scripts/test.sh does)"
        )
        .into());
    }
    Ok(())
}

impl Firefox {
    /// Starts Firefox with its profile in `profile`, inside network namespace
    /// `ns` if given, with `env` (HOME and the like) for node and Firefox;
    /// `secure_host` is the server's address as the page sees it (treated as
    /// a secure origin, so the page may open the camera).
    pub async fn start(
        label: &str,
        profile: &Path,
        env: &[(&str, PathBuf)],
        ns: Option<&str>,
        secure_host: &str,
    ) -> TestResult<Firefox> {
        check_installed()?;
        let log = profile.with_extension("log");
        let stderr = std::fs::File::create(&log)?;
        let mut command = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "node"]);
                c
            }
            None => Command::new("node"),
        };
        command
            .arg("firefox.mjs")
            .arg(profile)
            .arg(secure_host)
            .current_dir(NODE_DIR)
            .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .env("MOZ_HEADLESS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("{label}: starting node firefox.mjs: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let mut io = Io { stdin, stdout };
        let ready = tokio::time::timeout(START_LIMIT, io.stdout.next_line())
            .await
            .map_err(|_| {
                format!(
                    "{label}: Firefox did not start within {START_LIMIT:?}\n{}",
                    tail(&log, 20)
                )
            })??
            .ok_or_else(|| format!("{label}: the driver exited at start\n{}", tail(&log, 20)))?;
        let ready: Value = serde_json::from_str(&ready)
            .map_err(|e| format!("{label}: the driver said {ready:?}: {e}"))?;
        if ready["ready"] != Value::Bool(true) {
            return Err(format!(
                "{label}: Firefox did not start: {}\n{}",
                ready["error"],
                tail(&log, 20)
            )
            .into());
        }
        let version = ready["version"].as_str().unwrap_or("?").to_owned();
        eprintln!("[{label}] {version}");
        Ok(Firefox {
            inner: Arc::new(Inner {
                label: label.to_owned(),
                io: tokio::sync::Mutex::new(io),
                _child: child,
                next_id: AtomicU64::new(1),
                log,
                version,
            }),
        })
    }

    /// The browser's label in the test.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// What Firefox says its version is (`firefox/153.8.0`).
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&self, url: &str) -> TestResult {
        self.request(json!({ "cmd": "goto", "url": url }), REQUEST_LIMIT)
            .await
            .map(drop)
            .map_err(|e| format!("{}: opening {url}: {e}", self.inner.label).into())
    }

    /// Runs `body` as the body of an async function of `args` in the page;
    /// what it returns (JSON), or its exception.
    pub async fn eval(&self, body: &str, args: Vec<Value>) -> TestResult<Value> {
        self.request(
            json!({ "cmd": "eval", "body": body, "args": args }),
            REQUEST_LIMIT,
        )
        .await
    }

    /// [`Firefox::eval`] with a shorter time limit (for failure reports).
    pub async fn eval_within(
        &self,
        limit: Duration,
        body: &str,
        args: Vec<Value>,
    ) -> TestResult<Value> {
        self.request(json!({ "cmd": "eval", "body": body, "args": args }), limit)
            .await
    }

    /// Closes Firefox (the node process exits after it).
    pub async fn close(&self, limit: Duration) -> TestResult {
        self.request(json!({ "cmd": "close" }), limit)
            .await
            .map(drop)
    }

    /// The last `lines` lines node and Firefox printed.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.inner.log, lines)
    }

    /// Sends one request and waits at most `limit` for its reply; replies to
    /// earlier requests that timed out are skipped.
    async fn request(&self, mut request: Value, limit: Duration) -> TestResult<Value> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        request["id"] = json!(id);
        let exchange = async {
            let mut io = self.inner.io.lock().await;
            let mut line = request.to_string();
            line.push('\n');
            io.stdin.write_all(line.as_bytes()).await?;
            io.stdin.flush().await?;
            loop {
                let Some(line) = io.stdout.next_line().await? else {
                    return Err(format!("the driver exited\n{}", self.log_tail(20)).into());
                };
                let reply: Value = serde_json::from_str(&line)
                    .map_err(|e| format!("the driver said {line:?}: {e}"))?;
                if reply["id"] == json!(id) {
                    return Ok::<Value, super::Error>(reply);
                }
            }
        };
        let reply = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| format!("no answer from Firefox within {limit:?}"))??;
        if reply["ok"] == Value::Bool(true) {
            Ok(reply["value"].clone())
        } else {
            let error = reply["error"]
                .as_str()
                .map_or_else(|| reply.to_string(), str::to_owned);
            Err(format!("JavaScript error: {error}").into())
        }
    }
}

/// The last `lines` lines of the file at `path`.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let mut out = format!("--- last lines of {} ---\n", path.display());
    for line in &all[all.len().saturating_sub(lines)..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}
