//! Presence across nodes: one account's devices on different nodes
//! aggregate to one status, each change is pushed once to the contacts
//! wherever they are connected, and a device whose node died (or whose
//! Redis restarted) is handled as the single-node rules say.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use serde_json::json;

use crate::common::{DeviceClient, Login, Seen, SessionClient, presences_of};
use crate::nodes::{NODE_TIMEOUT_MS, Nodes};
use crate::rooms::rooms_on;

const PASSWORD: &str = "correct horse battery";
/// `presence.heartbeat_timeout_ms` of these nodes.
const TIMEOUT_MS: u64 = 1_500;
/// How often the test's devices send a heartbeat.
const BEAT: Duration = Duration::from_millis(300);

async fn cluster(name: &str, n: usize) -> Nodes {
    let nodes = Nodes::start(
        name,
        n,
        &[(
            "VELA_PRESENCE_HEARTBEAT_TIMEOUT_MS",
            &TIMEOUT_MS.to_string(),
        )],
    )
    .await;
    for node in &nodes.nodes {
        assert!(
            node.wait_ready(true, Duration::from_secs(10)).await,
            "{}",
            nodes.logs()
        );
    }
    nodes
}

/// `mia` (a phone on node 2, a desktop on node 3) and `bob` (node 1),
/// mutual contacts.
async fn mia_and_bob(nodes: &Nodes) -> (Login, Login, Login) {
    let n1 = nodes[0].api();
    n1.register("mia", PASSWORD).await;
    n1.register("bob", PASSWORD).await;
    let phone = nodes[1]
        .api()
        .login("mia", PASSWORD, "phone", "Mia's phone")
        .await;
    let desk = nodes[2 % nodes.nodes.len()]
        .api()
        .login("mia", PASSWORD, "desktop", "Mia's desk")
        .await;
    let bob = n1.login("bob", PASSWORD, "desktop", "Bob's desk").await;
    n1.link(&phone, &bob).await;
    (phone, desk, bob)
}

#[tokio::test]
async fn devices_on_different_nodes_aggregate_and_each_change_is_pushed_once() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let nodes = cluster("presence-agg", 3).await;
        let (phone, desk, bob) = mia_and_bob(&nodes).await;
        let mia = phone.account;
        let mut watcher = DeviceClient::connect_addr(&nodes[0].addr, &bob.access, Some(BEAT)).await;

        // The phone on node 2, away.
        let phone_sock =
            DeviceClient::connect_addr(&nodes[1].addr, &phone.access, Some(BEAT)).await;
        phone_sock.send(json!({"type": "set_presence", "status": "away"}));
        let mut log = Vec::new();
        until_presence(&mut watcher, mia, "away", &mut log).await;
        // The desktop on node 3, online: online wins.
        let desk_sock = DeviceClient::connect_addr(&nodes[2].addr, &desk.access, Some(BEAT)).await;
        assert_eq!(desk_sock.ready["presence"]["status"], "online");
        until_presence(&mut watcher, mia, "online", &mut log).await;
        // Every node answers from the same view.
        for n in &nodes.nodes {
            let p = n
                .api()
                .get(&format!("/api/v1/presence/{mia}"), &bob.access)
                .await
                .ok(200);
            assert_eq!(p["status"], "online", "{}", n.id);
        }
        let list = nodes[0]
            .api()
            .get("/api/v1/devices", &phone.access)
            .await
            .ok(200);
        let statuses: Vec<(i64, String)> = list["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["id"].as_i64().unwrap(),
                    d["status"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(
            statuses.contains(&(phone.device, "away".into())),
            "{statuses:?}"
        );
        assert!(
            statuses.contains(&(desk.device, "online".into())),
            "{statuses:?}"
        );

        // The desktop vanishes: after the heartbeat timeout, away again.
        let gone = tokio::time::Instant::now();
        desk_sock.drop_connection();
        until_presence(&mut watcher, mia, "away", &mut log).await;
        let after = gone.elapsed();
        assert!(
            after >= Duration::from_millis(TIMEOUT_MS - BEAT.as_millis() as u64),
            "{after:?}"
        );
        // Pushed once each, not once per node: online (the phone
        // connected), away, online, away.
        let seen = watcher.collect(Duration::from_millis(600)).await;
        log.extend(presences_of(&seen, mia));
        assert_eq!(log, ["online", "away", "online", "away"]);
        drop(phone_sock);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn the_devices_of_a_killed_node_go_offline_after_the_heartbeat_timeout() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut nodes = cluster("presence-kill", 3).await;
        let (phone, _desk, bob) = mia_and_bob(&nodes).await;
        let mia = phone.account;
        let mut watcher = DeviceClient::connect_addr(&nodes[0].addr, &bob.access, Some(BEAT)).await;
        let _phone_sock =
            DeviceClient::connect_addr(&nodes[1].addr, &phone.access, Some(BEAT)).await;
        watcher.expect_presence(mia, "online").await;

        // kill -9 of node 2, which holds mia's only socket.
        let killed = tokio::time::Instant::now();
        nodes[1].kill().await;
        let p = watcher.expect_presence(mia, "offline").await;
        let after = killed.elapsed();
        assert!(after >= Duration::from_millis(TIMEOUT_MS / 2), "{after:?}");
        assert!(after < Duration::from_millis(TIMEOUT_MS * 3), "{after:?}");
        assert!(p["last_seen"].as_i64().unwrap() > 0, "{p}");
        let got = nodes[2]
            .api()
            .get(&format!("/api/v1/presence/{mia}"), &bob.access)
            .await
            .ok(200);
        assert_eq!(got["status"], "offline");
        assert_eq!(got["last_seen"], p["last_seen"]);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_device_in_a_room_on_a_killed_node_goes_offline_after_the_node_timeout() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut nodes = cluster("presence-room", 2).await;
        let (phone, _desk, bob) = mia_and_bob(&nodes).await;
        let mia = phone.account;
        // Mia is in a room (no device socket): in a call while its node
        // renews the room's lease.
        let _session =
            SessionClient::join_at(&nodes[1].addr, &phone.access, Some("team"), None, false)
                .await
                .unwrap();
        let mut room_node = None;
        for (i, n) in nodes.nodes.iter().enumerate() {
            if rooms_on(n).await.iter().any(|(r, _)| r == "team") {
                room_node = Some(i);
            }
        }
        let room_node = room_node.expect("the room is open on a node");
        let other = 1 - room_node;
        let mut watcher =
            DeviceClient::connect_addr(&nodes[other].addr, &bob.access, Some(BEAT)).await;
        assert_eq!(
            watcher.ready["contacts"][0]["presence"]["status"],
            "in_call"
        );
        // Past the heartbeat timeout, still in the call: the lease holds.
        tokio::time::sleep(Duration::from_millis(TIMEOUT_MS + 300)).await;
        let p = nodes[other]
            .api()
            .get(&format!("/api/v1/presence/{mia}"), &bob.access)
            .await
            .ok(200);
        assert_eq!(p["status"], "in_call");

        let killed = tokio::time::Instant::now();
        nodes[room_node].kill().await;
        watcher.expect_presence(mia, "offline").await;
        let after = killed.elapsed();
        assert!(
            after >= Duration::from_millis(NODE_TIMEOUT_MS / 2),
            "{after:?}"
        );
        assert!(
            after < Duration::from_millis(NODE_TIMEOUT_MS * 3),
            "{after:?}"
        );
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_redis_restart_closes_device_sockets_and_they_come_back() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut nodes = cluster("presence-redis", 2).await;
        let (phone, _desk, bob) = mia_and_bob(&nodes).await;
        let mia = phone.account;
        let mut watcher = DeviceClient::connect_addr(&nodes[0].addr, &bob.access, Some(BEAT)).await;
        let mut phone_sock =
            DeviceClient::connect_addr(&nodes[1].addr, &phone.access, Some(BEAT)).await;
        watcher.expect_presence(mia, "online").await;

        nodes.redis.stop();
        // Both nodes close their device sockets (the clients reload).
        assert_eq!(watcher.closed().await, Some(1012));
        assert_eq!(phone_sock.closed().await, Some(1012));
        assert!(nodes[0].wait_ready(false, Duration::from_secs(10)).await);
        // A change made meanwhile cannot be pushed to the other nodes: 503.
        let e = nodes[1]
            .api()
            .put(
                "/api/v1/calls/settings",
                &phone.access,
                json!({"dnd": true}),
            )
            .await
            .err(503, None);
        assert!(
            e["message"].as_str().unwrap().contains("cluster bus"),
            "{e}"
        );
        // Presence cannot be read: offline, at once.
        let asked = tokio::time::Instant::now();
        let p = nodes[0]
            .api()
            .get(&format!("/api/v1/presence/{mia}"), &bob.access)
            .await
            .ok(200);
        assert_eq!(p["status"], "offline");
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "{:?}",
            asked.elapsed()
        );

        nodes.redis.restart();
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(15)).await,
                "{}",
                nodes.logs()
            );
        }
        // The clients reconnect; presence and pushes work again.
        let mut watcher = reconnect(&nodes[0].addr, &bob.access).await;
        let _phone_sock = reconnect(&nodes[1].addr, &phone.access).await;
        watcher.expect_presence(mia, "online").await;
        let c = nodes[1]
            .api()
            .post(
                "/api/v1/contacts",
                Some(&phone.access),
                json!({"display_name": "Ann"}),
            )
            .await
            .ok(201);
        let mut again = reconnect(&nodes[0].addr, &phone.access).await;
        nodes[1]
            .api()
            .put(
                &format!("/api/v1/contacts/{}", c["id"]),
                &phone.access,
                json!({"display_name": "Ann B", "version": 1}),
            )
            .await
            .ok(200);
        let m = again.expect("contact_changed").await;
        assert_eq!(m["contact"]["display_name"], "Ann B");
    })
    .await
    .expect("test timed out");
}

/// Waits (5 s at most) for a presence push of `account` with `status`,
/// noting in `log` every presence push of `account` seen.
async fn until_presence(c: &mut DeviceClient, account: i64, status: &str, log: &mut Vec<String>) {
    let end = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match c.next_within(left).await {
            Some(Seen::Msg(m)) if m["type"] == "presence" && m["account_id"] == account => {
                log.push(m["status"].as_str().unwrap().to_owned());
                if m["status"] == status {
                    return;
                }
            }
            Some(Seen::Msg(_)) => {}
            other => panic!("waiting for {status}: {other:?} (seen {log:?})"),
        }
    }
}

/// Connects as a client does after a 1012: again until the socket stays
/// open (a node refuses device sockets until it is back on the bus).
async fn reconnect(addr: &str, token: &str) -> DeviceClient {
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut c = DeviceClient::connect_addr(addr, token, Some(BEAT)).await;
        match c.next_within(Duration::from_millis(300)).await {
            Some(Seen::Closed(code)) => {
                assert!(
                    tokio::time::Instant::now() < until,
                    "still refused: {code:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => return c,
        }
    }
}
