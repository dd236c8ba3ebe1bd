//! Two nodes sharing a Redis (issue 18): login and sign-up limits counted
//! across the nodes, 503 with `Retry-After` while Redis is out of reach,
//! and the expired-device sweep leased to one node. Each node has its own
//! in-memory store: the limits do not depend on it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::{Duration, Instant};

use common::{Api, init_log, test_config};
use serde_json::json;
use vela_config::Config;
use vela_signaling::RunningServer;
use vela_testkit::Redis;

const PW: &str = "correct horse battery";
const LIMIT: Duration = Duration::from_secs(90);

/// Two nodes, `n1` and `n2`, on `redis`, each configured by `config` too.
async fn two_nodes(redis: &Redis, config: impl Fn(&mut Config)) -> (RunningServer, RunningServer) {
    init_log();
    let node = |id: &str| {
        let mut c = test_config();
        c.cluster.redis_url = redis.url();
        c.cluster.node_id = id.into();
        // Quick renewals, and a timeout long enough that a loaded machine
        // does not lose a lease between them.
        c.cluster.heartbeat_ms = 200;
        c.cluster.node_timeout_ms = 3_000;
        config(&mut c);
        c
    };
    let n1 = vela_signaling::spawn(node("n1")).await.unwrap();
    let n2 = vela_signaling::spawn(node("n2")).await.unwrap();
    (n1, n2)
}

fn login(user: &str, pw: &str) -> serde_json::Value {
    json!({"username": user, "password": pw, "device": {"kind": "web", "label": "tab"}})
}

fn retry_after(r: &common::Resp) -> u64 {
    let Some(v) = r.headers.get("retry-after") else {
        panic!("no Retry-After: {} {:?}", r.status, r.body);
    };
    v.to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_on_one_node_lock_the_account_on_the_other() {
    tokio::time::timeout(LIMIT, async {
        let redis = Redis::start();
        let (n1, n2) = two_nodes(&redis, |c| {
            c.limits.login_attempts_per_minute = 3;
            c.limits.login_attempts_per_minute_per_address = 6;
        })
        .await;
        let (a1, a2) = (Api::new(&n1), Api::new(&n2));
        // Each node has its own store here: erin exists on both.
        a1.register("erin", PW).await;
        a2.register("erin", PW).await;
        a2.register("frank", PW).await;
        a1.post("/api/v1/auth/login", None, login("erin", "wrong"))
            .await
            .err(401, None);
        a2.post("/api/v1/auth/login", None, login("erin", "wrong"))
            .await
            .err(401, None);
        a1.post("/api/v1/auth/login", None, login("erin", "wrong"))
            .await
            .err(401, None);
        // Three failures across the nodes: even the right password is 429 on n2.
        let r = a2.post("/api/v1/auth/login", None, login("erin", PW)).await;
        assert!((1..=60).contains(&retry_after(&r)));
        r.err(429, None);
        a1.post("/api/v1/auth/login", None, login("erin", PW))
            .await
            .err(429, None);
        // A right password on n2 gives the address its attempt back: the
        // address has 3 failures, and frank logs in on either node.
        a2.login("frank", PW, "web", "tab").await;
        a1.post("/api/v1/auth/login", None, login("nobody", PW))
            .await
            .err(401, None);
        a2.post("/api/v1/auth/login", None, login("nobody2", PW))
            .await
            .err(401, None);
        a1.post("/api/v1/auth/login", None, login("nobody3", PW))
            .await
            .err(401, None);
        // Six failures from 127.0.0.1 across the nodes: the address is done.
        a2.post("/api/v1/auth/login", None, login("frank", PW))
            .await
            .err(429, None);
        n1.shutdown().await;
        n2.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_per_client_address_are_counted_across_the_nodes() {
    tokio::time::timeout(LIMIT, async {
        let redis = Redis::start();
        // Behind a reverse proxy on loopback, the client address is the
        // one it forwards: that is what both nodes count.
        let (n1, n2) = two_nodes(&redis, |c| {
            c.limits.signups_per_hour_per_address = 2;
            c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
        })
        .await;
        let body = |user: &str| json!({"username": user, "password": PW});
        let (a1, a2) = (
            Api::new(&n1).forwarded_for("203.0.113.7"),
            Api::new(&n2).forwarded_for("203.0.113.7"),
        );
        a1.post("/api/v1/accounts", None, body("ann")).await.ok(201);
        a2.post("/api/v1/accounts", None, body("ben")).await.ok(201);
        let r = a1.post("/api/v1/accounts", None, body("cat")).await;
        assert!(
            (3000..=3600).contains(&retry_after(&r)),
            "{}",
            retry_after(&r)
        );
        r.err(429, None);
        a2.post("/api/v1/accounts", None, body("cat"))
            .await
            .err(429, None);
        // Another client behind the same proxy has its own allowance.
        Api::new(&n2)
            .forwarded_for("203.0.113.8")
            .post("/api/v1/accounts", None, body("cat"))
            .await
            .ok(201);
        n1.shutdown().await;
        n2.shutdown().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_logins_and_sign_ups_are_503_then_recover() {
    tokio::time::timeout(LIMIT, async {
        let mut redis = Redis::start();
        let (n1, n2) = two_nodes(&redis, |_| {}).await;
        let api = Api::new(&n1);
        api.register("gail", PW).await;
        api.login("gail", PW, "web", "tab").await;
        redis.stop();
        let started = Instant::now();
        let r = api
            .post("/api/v1/auth/login", None, login("gail", PW))
            .await;
        assert_eq!(retry_after(&r), 5);
        let e = r.err(503, None);
        assert!(e["message"].as_str().unwrap().contains("Redis"), "{e}");
        let r = api
            .post(
                "/api/v1/accounts",
                None,
                json!({"username": "hal", "password": PW}),
            )
            .await;
        assert_eq!(retry_after(&r), 5);
        r.err(503, None);
        // Refused promptly, not after a hang.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // Whatever else needs no count still works.
        Api::new(&n2).get("/healthz", "").await.ok(200);
        redis.restart();
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let r = api
                .post("/api/v1/auth/login", None, login("gail", PW))
                .await;
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503, "{:?}", r.body);
            assert!(Instant::now() < until, "no recovery after Redis came back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        n1.shutdown().await;
        n2.shutdown().await;
    })
    .await
    .expect("test timed out");
}

/// The holder of the expired-device sweep's lease, if any (`n1/…`).
async fn sweep_holder(redis: &Redis) -> Option<String> {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg("vela:lease:sign-out-expired-devices")
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_sweeps_expired_devices_and_another_takes_over() {
    tokio::time::timeout(LIMIT, async {
        let redis = Redis::start();
        let (n1, n2) = two_nodes(&redis, |_| {}).await;
        // n1 started first and took the lease; n2 waits.
        let holder = sweep_holder(&redis).await.unwrap();
        assert!(holder.starts_with("n1/"), "{holder}");
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert_eq!(sweep_holder(&redis).await.as_deref(), Some(holder.as_str()));
        // n1 leaves: n2 takes the sweep over.
        n1.shutdown().await;
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            match sweep_holder(&redis).await {
                Some(h) if h.starts_with("n2/") => break,
                other => assert!(Instant::now() < until, "not taken over: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n2.shutdown().await;
    })
    .await
    .expect("test timed out");
}
