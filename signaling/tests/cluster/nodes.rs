//! A local cluster for tests: `vela` processes (nodes) sharing a throwaway
//! Redis and one store, each on its own loopback ports, each killable
//! (`kill -9`) and restartable.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.
#![allow(dead_code)] // Each test uses what it needs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

use crate::common::{Api, StoreFile};

/// Where the nodes keep their accounts: one store they all share.
pub enum SharedStore {
    /// One SQLite file (several processes may open it: WAL mode).
    Sqlite(StoreFile),
    /// A database on the test process's throwaway PostgreSQL.
    Postgres(vela_testkit::Database),
}

impl SharedStore {
    /// The store every node of a test cluster uses.
    pub fn new(name: &str) -> SharedStore {
        // PostgreSQL, as a cluster runs; `VELA_TEST_CLUSTER_STORE=sqlite`
        // for one shared SQLite file instead.
        if std::env::var("VELA_TEST_CLUSTER_STORE").as_deref() == Ok("sqlite") {
            SharedStore::Sqlite(StoreFile::new(name))
        } else {
            SharedStore::Postgres(vela_testkit::Postgres::shared().database())
        }
    }

    /// The URL the nodes are configured with (`store.url`).
    pub fn url(&self) -> String {
        match self {
            SharedStore::Sqlite(f) => format!("sqlite://{}", f.path),
            SharedStore::Postgres(db) => db.url.clone(),
        }
    }
}

/// One node: its process (killed when dropped), its addresses and its log.
pub struct Node {
    /// `n1`, `n2`, ...
    pub id: String,
    /// `127.0.0.1:port` of its HTTP listener.
    pub addr: String,
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    env: Vec<(String, String)>,
    spec: NodeSpec,
}

/// Where and how one node runs, beyond the cluster's settings.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// A command prefix it runs under (e.g. `ip netns exec NS`).
    pub prefix: Vec<String>,
    /// Its HTTP listen address (default `127.0.0.1:0`).
    pub http: Option<String>,
    /// The media address it advertises (default `127.0.0.1`).
    pub node_ip: Option<String>,
    /// `VELA_*` variables of its own, over the cluster's.
    pub env: Vec<(String, String)>,
}

impl Node {
    /// Its HTTP API.
    pub fn api(&self) -> Api {
        Api::at(self.base())
    }

    /// `http://127.0.0.1:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Kills it at once, as `kill -9` does: nothing is closed or released.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            let _ = child.wait().await;
        }
    }

    /// Whether `GET /readyz` answers 200.
    pub async fn ready(&self) -> bool {
        let url = format!("{}/readyz", self.base());
        matches!(
            reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build().unwrap().get(url).send().await,
            Ok(r) if r.status() == 200
        )
    }

    /// Waits up to `limit` for `/readyz` to answer `want`.
    pub async fn wait_ready(&self, want: bool, limit: Duration) -> bool {
        let until = tokio::time::Instant::now() + limit;
        loop {
            if self.ready().await == want {
                return true;
            }
            if tokio::time::Instant::now() > until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The nodes of one test, with their Redis and store.
pub struct Nodes {
    pub nodes: Vec<Node>,
    pub redis: vela_testkit::Redis,
    pub store: SharedStore,
}

impl std::ops::Index<usize> for Nodes {
    type Output = Node;
    fn index(&self, i: usize) -> &Node {
        &self.nodes[i]
    }
}

impl std::ops::IndexMut<usize> for Nodes {
    fn index_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }
}

/// The `[cluster]` timing of test nodes: short, so failures show quickly.
pub const HEARTBEAT_MS: u64 = 200;
/// A node silent this long is gone.
pub const NODE_TIMEOUT_MS: u64 = 1_500;

impl Nodes {
    /// Starts `n` nodes (`n1`..) on a new Redis and store named `name`,
    /// each with the `VELA_*` variables in `env` too.
    pub async fn start(name: &str, n: usize, env: &[(&str, &str)]) -> Nodes {
        Nodes::start_with(name, n, env, |_, _, _| NodeSpec::default()).await
    }

    /// [`Nodes::start`], node `i` (from 0) placed as `spec(i, redis, store)`
    /// says (e.g. in a network namespace, reaching Redis and the store
    /// through addresses of its own).
    pub async fn start_with(
        name: &str,
        n: usize,
        env: &[(&str, &str)],
        spec: impl Fn(usize, &vela_testkit::Redis, &SharedStore) -> NodeSpec,
    ) -> Nodes {
        crate::common::init_log();
        let redis = vela_testkit::Redis::start();
        let store = SharedStore::new(name);
        let mut nodes = Vec::with_capacity(n);
        for i in 1..=n {
            let mut vars: Vec<(String, String)> = vec![
                ("VELA_STORE_URL".into(), store.url()),
                ("VELA_CLUSTER_REDIS_URL".into(), redis.url()),
                ("VELA_CLUSTER_NODE_ID".into(), format!("n{i}")),
                ("VELA_CLUSTER_HEARTBEAT_MS".into(), HEARTBEAT_MS.to_string()),
                (
                    "VELA_CLUSTER_NODE_TIMEOUT_MS".into(),
                    NODE_TIMEOUT_MS.to_string(),
                ),
            ];
            // `store.url` names the file; `store.path` too, so that nothing
            // ever opens `vela.sqlite` in the working directory.
            if let SharedStore::Sqlite(f) = &store {
                vars.push(("VELA_STORE_PATH".into(), f.path.clone()));
            }
            vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            let spec = spec(i - 1, &redis, &store);
            vars.extend(spec.env.iter().cloned());
            nodes.push(Node::spawn(format!("n{i}"), vars, spec).await);
        }
        Nodes {
            nodes,
            redis,
            store,
        }
    }

    /// Starts node `i` again (after [`Node::kill`]) with its settings, on
    /// its old HTTP port.
    pub async fn restart(&mut self, i: usize) {
        let old = &mut self.nodes[i];
        old.kill().await;
        let spec = NodeSpec {
            http: Some(old.addr.clone()),
            ..old.spec.clone()
        };
        let node = Node::spawn(old.id.clone(), old.env.clone(), spec).await;
        self.nodes[i] = node;
    }

    /// Every node's log, for a failure's message.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("===== {} =====\n{}", n.id, n.log()))
            .collect()
    }
}

impl Node {
    async fn spawn(id: String, env: Vec<(String, String)>, spec: NodeSpec) -> Node {
        let bin = env!("CARGO_BIN_EXE_vela");
        let mut cmd = match spec.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let http = spec.http.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let node_ip = spec.node_ip.clone().unwrap_or_else(|| "127.0.0.1".into());
        // The test's own environment must not configure the nodes.
        for (k, _) in std::env::vars() {
            if k.starts_with("VELA_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["--http", &http, "--udp-port", "0", "--node-ip", &node_ip])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "VELA_LOG",
                std::env::var("VELA_TEST_NODE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut errors = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        {
            let log = log.clone();
            let id = id.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = errors.next_line().await {
                    log.lock()
                        .unwrap()
                        .push_str(&format!("[{id} stderr] {line}\n"));
                }
            });
        }
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push_str(&line);
                log.lock().unwrap().push('\n');
                if let Some(rest) = line.split("http_addr=").nth(1) {
                    return Some(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
            None
        })
        .await;
        let Ok(Some(addr)) = found else {
            // Let stderr arrive.
            tokio::time::sleep(Duration::from_millis(200)).await;
            panic!("node {id} did not start; its log:\n{}", log.lock().unwrap());
        };
        {
            let log = log.clone();
            // Keep draining, so the node never blocks on a full pipe.
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut l = log.lock().unwrap();
                    // Bounded: the last ~1 MB is what a failure needs.
                    if l.len() > 1 << 20 {
                        let cut = l.len() - (1 << 19);
                        let cut = (cut..l.len()).find(|&i| l.is_char_boundary(i)).unwrap_or(0);
                        l.drain(..cut);
                    }
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        Node {
            id,
            addr,
            child: Some(child),
            log,
            env,
            spec,
        }
    }
}
