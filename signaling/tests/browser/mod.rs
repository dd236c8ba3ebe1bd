//! Shared harness for the end-to-end browser tests: a vela server on
//! 127.0.0.1, one chromedriver and headless Chromium sessions with the fake
//! camera and microphone (see /work/shared/design/TESTING.md), and headless
//! Firefox pages beside them ([`firefox`]). Scenarios drive any page through
//! [`Page`] ([`run_js`]).
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! `chromium` and `chromium-driver`); the Firefox tests also need
//! `firefox-esr`, Node.js and `npm ci` in `browser/node`. Without them a test
//! fails with a clear message; it never skips.
//!
//! Everything the browsers write (profile, caches, $HOME, $TMPDIR) goes to a
//! fresh directory under the system temp dir, removed at the end. Every test
//! runs under a time limit; the sessions, chromedriver, every Chromium
//! process it started and the server are torn down on success, failure and
//! timeout alike.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod firefox;
pub mod whip_whep;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use fantoccini::Client;
use fantoccini::ClientBuilder;
use serde_json::{Value, json};

/// The Chromium binary (Debian package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// The chromedriver binary (Debian package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Any error a scenario can hit; the message ends up in the test failure.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// The result of a scenario step.
pub type TestResult<T = ()> = Result<T, Error>;

/// How long a browser session may take to close at the end.
const CLOSE_LIMIT: Duration = Duration::from_secs(10);
/// Interval between two checks of a polled condition.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Chromium flags known to work here (TESTING.md); `--user-data-dir` is added per browser.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1280,720",
];

/// Installed in every page: keeps console output, uncaught errors and
/// unhandled rejections in `window.__velaLogs` for failure reports.
const CONSOLE_HOOK: &str = r#"
if (!window.__velaLogs) {
  const logs = (window.__velaLogs = []);
  const text = (a) => {
    if (typeof a === 'string') return a;
    if (a instanceof Error) return a.stack || a.message;
    try { return JSON.stringify(a); } catch (e) { return String(a); }
  };
  const push = (level, args) => {
    logs.push(new Date().toISOString().slice(11, 23) + ' ' + level + ': ' + args.map(text).join(' '));
    if (logs.length > 200) logs.shift();
  };
  for (const level of ['error', 'warn', 'info', 'log']) {
    const original = console[level].bind(console);
    console[level] = (...args) => { push(level, args); original(...args); };
  }
  window.addEventListener('error', (e) => push('uncaught', [e.message]));
  window.addEventListener('unhandledrejection', (e) => push('unhandledrejection', [e.reason]));
}
return true;
"#;

/// Collected from every browser when a test fails.
const DIAGNOSTICS: &str = r#"
const out = {
  url: location.href,
  status: (document.querySelector('#status') || {}).textContent || null,
  logs: window.__velaLogs || [],
};
const pcs = [];
if (window.vela && window.vela.pc) pcs.push(['vela', window.vela.pc]);
for (const key of ['whip', 'whep']) if (window[key] && window[key].pc) pcs.push([key, window[key].pc]);
out.peerConnections = {};
for (const [key, pc] of pcs) {
  const inbound = [];
  try {
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp') inbound.push({ kind: s.kind, packetsReceived: s.packetsReceived, framesDecoded: s.framesDecoded });
    });
  } catch (e) { inbound.push(String(e)); }
  out.peerConnections[key] = {
    connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState,
    signalingState: pc.signalingState, inbound,
  };
}
if (window.vela) {
  out.vela = { participantId: window.vela.participantId, joined: window.vela.joined };
  try { out.vela.remoteTiles = window.vela.remoteTiles(); } catch (e) { out.vela.remoteTiles = String(e); }
}
return out;
"#;

/// One running test: the server, chromedriver and the browsers opened so far.
pub struct Harness {
    /// The server under test (taken at shutdown).
    server: Option<vela_signaling::RunningServer>,
    /// `http://127.0.0.1:<port>` of the server.
    pub base_url: String,
    /// Plain HTTP client for the test's own requests.
    pub http: reqwest::Client,
    driver: Driver,
    browsers: Mutex<Vec<(String, Client)>>,
    firefoxes: Mutex<Vec<firefox::Firefox>>,
    /// Flags added to the Chromiums started from now on (`add_chromium_args`).
    chromium_args: Mutex<Vec<String>>,
}

/// A page in a browser the harness started: Chromium (a WebDriver session)
/// or Firefox.
pub trait Page {
    /// Runs `body` as the body of an `async` JavaScript function in the page,
    /// with its arguments in `args`; what the function returns (JSON), or an
    /// error with the exception's message and stack.
    fn eval(&self, body: &str, args: Vec<Value>) -> impl Future<Output = TestResult<Value>>;
}

impl Page for Client {
    async fn eval(&self, body: &str, args: Vec<Value>) -> TestResult<Value> {
        chromium_js(self, body, args).await
    }
}

impl Page for firefox::Firefox {
    async fn eval(&self, body: &str, args: Vec<Value>) -> TestResult<Value> {
        firefox::Firefox::eval(self, body, args).await
    }
}

/// Runs `scenario` against a fresh server and chromedriver, with `limit` as
/// the time limit for the whole scenario; panics (fails the test) if the
/// scenario fails or times out. Cleans up in every case.
pub async fn run<F>(test: &str, limit: Duration, scenario: F)
where
    F: for<'a> AsyncFnOnce(&'a Harness) -> TestResult,
{
    run_with(test, limit, test_config(), scenario).await;
}

/// [`run`] with a server configured by `config` (e.g. reachable from a
/// network namespace: see [`netns_config`]).
pub async fn run_with<F>(test: &str, limit: Duration, config: vela_config::Config, scenario: F)
where
    F: for<'a> AsyncFnOnce(&'a Harness) -> TestResult,
{
    if let Some(failure) = attempt(test, limit, config, scenario).await {
        panic!("[{test}] {failure}");
    }
}

/// [`run_with`], tried up to `attempts` times on a fresh server and fresh
/// browsers. Only for tests of bandwidth estimation over impaired links,
/// whose timing on a loaded 2-core machine varies; a behaviour that is
/// broken fails every attempt. Each retry is printed.
pub async fn run_with_retries<F>(
    test: &str,
    limit: Duration,
    config: vela_config::Config,
    attempts: u32,
    scenario: F,
) where
    F: for<'a> AsyncFn(&'a Harness) -> TestResult,
{
    for n in 1..=attempts {
        let Some(failure) = attempt(test, limit, config.clone(), async |h| scenario(h).await).await
        else {
            return;
        };
        if n == attempts {
            panic!("[{test}] {failure} (attempt {n} of {attempts})");
        }
        eprintln!("[{test}] attempt {n} of {attempts} failed: {failure}; retrying");
    }
}

/// One run of a scenario; the failure, if any.
async fn attempt<F>(
    test: &str,
    limit: Duration,
    config: vela_config::Config,
    scenario: F,
) -> Option<String>
where
    F: for<'a> AsyncFnOnce(&'a Harness) -> TestResult,
{
    init_tracing();
    check_binaries();

    let server = vela_signaling::spawn(config)
        .await
        .expect("the vela server should start");
    // A server listening on every address is still reached on loopback here.
    let mut local = server.http_addr;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let base_url = format!("http://{local}");
    eprintln!(
        "[{test}] server at {base_url} (media UDP {})",
        server.udp_addr
    );
    let driver = Driver::start().unwrap_or_else(|e| panic!("[{test}] chromedriver: {e}"));
    let harness = Harness {
        server: Some(server),
        base_url,
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("a reqwest client"),
        driver,
        browsers: Mutex::new(Vec::new()),
        firefoxes: Mutex::new(Vec::new()),
        chromium_args: Mutex::new(Vec::new()),
    };

    let started = Instant::now();
    let outcome = tokio::time::timeout(limit, async {
        harness.driver.wait_ready(Duration::from_secs(20)).await?;
        scenario(&harness).await
    })
    .await;
    let failure = match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("failed after {:.1?}: {e}", started.elapsed())),
        Err(_) => Some(format!("timed out after {limit:?}")),
    };
    if let Some(failure) = &failure {
        eprintln!("[{test}] {failure}");
        harness.report().await;
    } else {
        eprintln!("[{test}] passed in {:.1?}", started.elapsed());
    }
    harness.teardown().await;
    failure
}

/// `stats[kind][pid]` as a number (0 when absent).
pub fn count(stats: &Value, kind: &str, pid: &str) -> u64 {
    stats
        .get(kind)
        .and_then(|m| m.get(pid))
        .and_then(Value::as_f64)
        .map_or(0, |n| n as u64)
}

/// Opens `url` in the Chromium `client` (labelled `label`) and installs
/// the console hook.
async fn visit(client: Client, label: &str, url: &str) -> TestResult<Client> {
    client
        .goto(url)
        .await
        .map_err(|e| format!("{label}: opening {url}: {e}"))?;
    client
        .execute(CONSOLE_HOOK, vec![])
        .await
        .map_err(|e| format!("{label}: installing the console hook: {e}"))?;
    Ok(client)
}

impl Harness {
    /// The server's media drivers (to find a room's shard).
    pub fn media(&self) -> Option<&vela_media::MediaHandle> {
        self.server.as_ref().map(|s| &s.media)
    }

    /// The media port of the server's first shard.
    pub fn media_port(&self) -> Option<u16> {
        self.server.as_ref().map(|s| s.udp_addr.port())
    }

    /// The server's ICE-over-TCP port (one for all shards), if it listens.
    pub fn tcp_port(&self) -> Option<u16> {
        self.server.as_ref()?.tcp_addr.map(|a| a.port())
    }

    /// Adds `args` to the flags of every Chromium started from now on
    /// (e.g. one test's `--ignore-certificate-errors-spki-list`);
    /// `None` removes what was added.
    pub fn set_chromium_args(&self, args: Option<Vec<String>>) {
        *self.chromium_args.lock().expect("chromium args lock") = args.unwrap_or_default();
    }

    /// `base_url` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Starts a new Chromium (own profile) and opens `path` of the server in it.
    pub async fn open(&self, label: &str, path: &str) -> TestResult<Client> {
        let client = self.new_browser(label).await?;
        visit(client, label, &self.url(path)).await
    }

    /// Starts a new Chromium (own profile) and opens `url`: a page of
    /// another server than the harness's (e.g. a node of a cluster).
    pub async fn open_url(&self, label: &str, url: &str) -> TestResult<Client> {
        let client = self.new_browser(label).await?;
        visit(client, label, url).await
    }

    /// Starts a new Chromium session with its own profile directory.
    pub async fn new_browser(&self, label: &str) -> TestResult<Client> {
        self.new_browser_in(label, None).await
    }

    /// Starts a Chromium inside network namespace `ns` (`ip netns exec`) and
    /// opens `path` of the server at `host` (an address of the server's
    /// host reachable from the namespace). The page is then not on
    /// localhost: the origin is declared secure so the camera works.
    pub async fn open_in_netns(
        &self,
        label: &str,
        ns: &str,
        host: std::net::IpAddr,
        path: &str,
    ) -> TestResult<Client> {
        let port = self
            .server
            .as_ref()
            .map(|s| s.http_addr.port())
            .ok_or("no server")?;
        let origin = format!("http://{host}:{port}");
        let client = self
            .new_browser_in(label, Some((ns, origin.as_str())))
            .await?;
        visit(client, label, &format!("{origin}{path}")).await
    }

    /// Starts a Chromium inside network namespace `ns` and opens `url`: a
    /// page of another server than the harness's (e.g. a node of a cluster
    /// in that namespace). Its origin is declared secure so the camera works.
    pub async fn open_url_in_netns(&self, label: &str, ns: &str, url: &str) -> TestResult<Client> {
        let origin = url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
        let client = self
            .new_browser_in(label, Some((ns, origin.as_str())))
            .await?;
        visit(client, label, url).await
    }

    /// Starts a headless Firefox inside network namespace `ns` and opens
    /// `path` of the server at `host` (the server's address on the
    /// namespace's link, treated as a secure origin so the camera works).
    /// Firefox needs a default route in `ns` to gather ICE candidates.
    pub async fn open_firefox(
        &self,
        label: &str,
        ns: &str,
        host: std::net::IpAddr,
        path: &str,
    ) -> TestResult<firefox::Firefox> {
        let port = self
            .server
            .as_ref()
            .map(|s| s.http_addr.port())
            .ok_or("no server")?;
        let profile = self.driver.new_profile_dir()?;
        let browser = firefox::Firefox::start(
            label,
            &profile,
            &self.driver.env,
            Some(ns),
            &host.to_string(),
        )
        .await?;
        self.firefoxes
            .lock()
            .expect("browser list lock")
            .push(browser.clone());
        browser.goto(&format!("http://{host}:{port}{path}")).await?;
        browser
            .eval(CONSOLE_HOOK, vec![])
            .await
            .map_err(|e| format!("{label}: installing the console hook: {e}"))?;
        Ok(browser)
    }

    /// Starts a Chromium session; with `netns = Some((namespace, origin))`
    /// the browser runs inside that namespace and treats `origin` as secure.
    async fn new_browser_in(&self, label: &str, netns: Option<(&str, &str)>) -> TestResult<Client> {
        let profile = self.driver.new_profile_dir()?;
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(
            self.chromium_args
                .lock()
                .expect("chromium args lock")
                .iter()
                .cloned(),
        );
        let binary = match netns {
            None => CHROMIUM.to_owned(),
            Some((ns, origin)) => {
                // chromedriver starts the wrapper, which starts Chromium in the
                // namespace; DevTools then runs over a pipe, not a (namespaced) port.
                let wrapper = profile.with_extension("sh");
                std::fs::write(
                    &wrapper,
                    format!(
                        "#!/bin/sh
exec ip netns exec {ns} {CHROMIUM} \"$@\"\n"
                    ),
                )?;
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
                args.push("--remote-debugging-pipe".into());
                args.push(format!(
                    "--unsafely-treat-insecure-origin-as-secure={origin}"
                ));
                wrapper.display().to_string()
            }
        };
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": binary, "args": args },
            "timeouts": { "script": 60_000, "pageLoad": 30_000, "implicit": 0 },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("capabilities are an object")
        };
        let client = ClientBuilder::rustls()
            .map_err(|e| format!("fantoccini rustls connector: {e}"))?
            .capabilities(capabilities)
            .connect(self.driver.url.get().ok_or("chromedriver is not ready")?)
            .await
            .map_err(|e| format!("{label}: starting Chromium through chromedriver: {e}"))?;
        self.browsers
            .lock()
            .expect("browser list lock")
            .push((label.to_owned(), client.clone()));
        Ok(client)
    }

    /// Asks the server for a development token (`GET /api/dev-token`).
    pub async fn dev_token(&self, room: &str, identity: &str, name: &str) -> TestResult<String> {
        let url = reqwest::Url::parse_with_params(
            &self.url("/api/dev-token"),
            [("room", room), ("identity", identity), ("name", name)],
        )?;
        let response = self.http.get(url).send().await?;
        let status = response.status();
        let body: Value = response.json().await?;
        match body.get("token").and_then(Value::as_str) {
            Some(token) if status.is_success() => Ok(token.to_owned()),
            _ => Err(format!("GET /api/dev-token: HTTP {status}, body {body}").into()),
        }
    }

    /// Prints what every browser shows, plus the tail of chromedriver's output.
    async fn report(&self) {
        let browsers = self.browsers.lock().expect("browser list lock").clone();
        for (label, client) in browsers {
            let seen =
                tokio::time::timeout(Duration::from_secs(5), run_js(&client, DIAGNOSTICS, vec![]))
                    .await;
            match seen {
                Ok(Ok(value)) => eprintln!(
                    "[{label}] browser state:\n{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                ),
                Ok(Err(e)) => eprintln!("[{label}] browser state unavailable: {e}"),
                Err(_) => eprintln!("[{label}] browser state unavailable: no answer within 5 s"),
            }
        }
        let firefoxes = self.firefoxes.lock().expect("browser list lock").clone();
        for browser in firefoxes {
            let label = browser.label().to_owned();
            match browser
                .eval_within(Duration::from_secs(5), DIAGNOSTICS, vec![])
                .await
            {
                Ok(value) => eprintln!(
                    "[{label}] browser state ({}):\n{}",
                    browser.version(),
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                ),
                Err(e) => eprintln!("[{label}] browser state unavailable: {e}"),
            }
            eprintln!("{}", browser.log_tail(40));
        }
        eprintln!("{}", self.driver.output_tail(60));
    }

    /// Closes every session, stops the server, then kills chromedriver and
    /// whatever Chromium processes are left.
    async fn teardown(mut self) {
        let browsers = std::mem::take(&mut *self.browsers.lock().expect("browser list lock"));
        for (label, client) in browsers {
            match tokio::time::timeout(CLOSE_LIMIT, client.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("[{label}] closing the session: {e}"),
                Err(_) => {
                    eprintln!("[{label}] closing the session: no answer within {CLOSE_LIMIT:?}")
                }
            }
        }
        let firefoxes = std::mem::take(&mut *self.firefoxes.lock().expect("browser list lock"));
        for browser in firefoxes {
            if let Err(e) = browser.close(CLOSE_LIMIT).await {
                eprintln!("[{}] closing Firefox: {e}", browser.label());
            }
        }
        if let Some(server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(10), server.shutdown())
                .await
                .is_err()
        {
            eprintln!("server shutdown did not finish within 10 s");
        }
        // Dropping the driver kills chromedriver and any leftover Chromium or Firefox.
    }
}

/// The configuration the tests run the server with: loopback only, free
/// ports, development keys (so `/api/dev-token` works).
pub fn test_config() -> vela_config::Config {
    let mut config = vela_config::Config::default();
    config.server.http = "127.0.0.1:0".parse().expect("socket address");
    config.media.udp_port = 0;
    config.media.bind_ip = "127.0.0.1".parse().expect("IP address");
    config.media.node_ips = vec!["127.0.0.1".parse().expect("IP address")];
    config.store.path = ":memory:".into();
    config
}

/// [`test_config`] for a test with participants in network namespaces: HTTP
/// on every address, media advertised on loopback and on each of `hosts`
/// (the host side of the namespaces' links).
pub fn netns_config(hosts: &[std::net::IpAddr]) -> vela_config::Config {
    let mut config = test_config();
    config.server.http = "0.0.0.0:0".parse().expect("socket address");
    // The pages in the namespaces reach HTTP over their links, with the
    // development key (dev tokens): allowed explicitly.
    config.auth.insecure_development_key_on_network = true;
    config.media.bind_ip = "0.0.0.0".parse().expect("IP address");
    config.media.node_ips.extend_from_slice(hosts);
    config
}

/// Runs `body` as the body of an `async` JavaScript function in the page;
/// its arguments are available as `args`. Returns what the function returns
/// (JSON), or an error with the exception's message and stack.
pub async fn run_js(page: &impl Page, body: &str, args: Vec<Value>) -> TestResult<Value> {
    page.eval(body, args).await
}

/// [`run_js`] in Chromium, through chromedriver.
async fn chromium_js(client: &Client, body: &str, args: Vec<Value>) -> TestResult<Value> {
    let script = format!(
        r#"const __done = arguments[arguments.length - 1];
const __args = Array.prototype.slice.call(arguments, 0, arguments.length - 1);
(async (args) => {{
{body}
}})(__args).then(
  (value) => __done({{ ok: true, value: value === undefined ? null : value }}),
  (e) => __done({{ ok: false, error: String((e && (e.stack || e.message)) || e) }}),
);"#
    );
    let result = client.execute_async(&script, args).await?;
    if result.get("ok") == Some(&Value::Bool(true)) {
        Ok(result.get("value").cloned().unwrap_or(Value::Null))
    } else {
        let error = result
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| result.to_string(), str::to_owned);
        Err(format!("JavaScript error: {error}").into())
    }
}

/// Checks `check` every 250 ms until it returns `Ok(Ok(value))`, for at most
/// `limit`. `Ok(Err(state))` means "not yet" and describes what was seen;
/// the last such state is part of the timeout error. `Err` stops at once.
pub async fn poll<T, F>(what: &str, limit: Duration, mut check: F) -> TestResult<T>
where
    F: AsyncFnMut() -> TestResult<Result<T, String>>,
{
    let started = Instant::now();
    loop {
        let state = match check().await? {
            Ok(value) => return Ok(value),
            Err(state) => state,
        };
        if started.elapsed() >= limit {
            return Err(format!("{what}: not reached within {limit:?}; last seen: {state}").into());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Fails when a subscriber is already installed: fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn check_binaries() {
    for (binary, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
        assert!(
            Path::new(binary).is_file(),
            "{binary} is missing: the browser tests need Debian's `{package}` \
             (apt-get install -y --no-install-recommends chromium chromium-driver)"
        );
    }
}

/// A chromedriver child process and the temporary directory that holds
/// everything it and its browsers write. Dropping it kills chromedriver and
/// every process still running with that directory in its environment, then
/// removes the directory.
struct Driver {
    child: Mutex<Child>,
    /// HOME, TMPDIR and the XDG folders for the browsers, all in `dir`.
    env: Vec<(&'static str, PathBuf)>,
    /// `http://127.0.0.1:<port>`, once chromedriver has said its port.
    url: OnceLock<String>,
    dir: PathBuf,
    output: PathBuf,
    profiles: AtomicUsize,
}

impl Driver {
    fn start() -> TestResult<Driver> {
        let dir = unique_temp_dir()?;
        let mut env = Vec::new();
        for (var, sub) in [
            ("HOME", "home"),
            ("TMPDIR", "tmp"),
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_CACHE_HOME", "cache"),
        ] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)?;
            env.push((var, path));
        }
        let output = dir.join("chromedriver.log");
        let log = std::fs::File::create(&output)?;
        // Port 0: chromedriver takes a free port and names it in its log, so
        // tests running at once never race for one.
        let child = Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .envs(env.clone())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {CHROMEDRIVER}: {e}"))?;
        Ok(Driver {
            child: Mutex::new(child),
            env,
            url: OnceLock::new(),
            dir,
            output,
            profiles: AtomicUsize::new(0),
        })
    }

    /// Waits until chromedriver's `/status` says it is ready.
    async fn wait_ready(&self, limit: Duration) -> TestResult {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.lock().expect("chromedriver lock").try_wait()? {
                return Err(format!(
                    "chromedriver exited at start ({status})\n{}",
                    self.output_tail(20)
                )
                .into());
            }
            if self.url.get().is_none()
                && let Some(port) = std::fs::read_to_string(&self.output)
                    .ok()
                    .as_deref()
                    .and_then(|log| log.split("started successfully on port ").nth(1))
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|port| port.parse::<u16>().ok())
            {
                let _ = self.url.set(format!("http://127.0.0.1:{port}"));
            }
            if let Some(url) = self.url.get()
                && let Ok(response) = http.get(format!("{url}/status")).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == Value::Bool(true)
            {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "chromedriver did not become ready within {limit:?}\n{}",
                    self.output_tail(20)
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn new_profile_dir(&self) -> TestResult<PathBuf> {
        let n = self.profiles.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("profile-{n}"));
        std::fs::create_dir_all(&path)?;
        Ok(path)
    }

    /// The last `lines` lines chromedriver (and Chromium) printed.
    fn output_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let mut out = format!("--- last lines of {} ---\n", self.output.display());
        for line in &all[all.len().saturating_sub(lines)..] {
            let _ = writeln!(out, "{line}");
        }
        out
    }

    /// Processes (other than ours) whose environment mentions our directory:
    /// chromedriver and the Chromium processes it started.
    fn leftover_processes(&self) -> Vec<u32> {
        let marker = self.dir.to_string_lossy().into_owned();
        let me = std::process::id();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != me)
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|&b| b == 0)
                        .any(|var| String::from_utf8_lossy(var).contains(&marker))
                })
            })
            .collect()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Ok(mut child) = self.child.lock() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for _ in 0..3 {
            let pids = self.leftover_processes();
            if pids.is_empty() {
                break;
            }
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(pids.iter().map(u32::to_string))
                .stderr(Stdio::null())
                .status();
            std::thread::sleep(Duration::from_millis(100));
        }
        for _ in 0..5 {
            if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A new, empty directory under the system temp dir.
fn unique_temp_dir() -> TestResult<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!(
        "vela-browser-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
