//! One room over several nodes (issue 19): past
//! `cluster.max_participants_per_node` a room's next participants are placed
//! on the least loaded other node, which joins the room's set of nodes; the
//! room's start and end are reported once, whichever nodes held it.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::common::{Peer, SessionClient};
use crate::nodes::{HEARTBEAT_MS, NODE_TIMEOUT_MS, Node, NodeSpec, Nodes};
use crate::rooms::{eventually, join_token, rooms_listed, rooms_on, service_token};

/// The secret the test cluster's relays share.
pub const RELAY_SECRET: &str = "test-relay-secret-0123456789abcdef";

/// `VELA_*` settings of nodes that spread rooms past `max` participants
/// each (their relays on loopback, ports picked by the system).
pub fn spreading(max: u32) -> Vec<(&'static str, String)> {
    vec![
        ("VELA_CLUSTER_RELAY_ADDR", "127.0.0.1:0".to_owned()),
        ("VELA_CLUSTER_RELAY_SECRET", RELAY_SECRET.to_owned()),
        ("VELA_CLUSTER_MAX_PARTICIPANTS_PER_NODE", max.to_string()),
    ]
}

/// A webhook receiver on loopback: the events it got.
async fn receiver() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let state = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: Bytes| {
            let state = state.clone();
            async move {
                state
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice::<Value>(&body).unwrap());
                StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

/// How many events named `name` for `room` arrived.
fn count(got: &Arc<Mutex<Vec<Value>>>, name: &str, room: &str) -> usize {
    got.lock()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == name && e["room"]["name"] == room)
        .count()
}

/// The participants connected to each node of `nodes` (as `of` lists them
/// from their heartbeats), in node order.
async fn spread_of(of: &Node, nodes: &[Node]) -> Vec<u64> {
    let listed = of
        .api()
        .get("/api/v1/cluster/nodes", &service_token())
        .await
        .ok(200);
    let listed = listed["nodes"].as_array().unwrap();
    nodes
        .iter()
        .map(|n| {
            listed
                .iter()
                .find(|l| l["id"] == n.id.as_str())
                .map_or(0, |l| l["participants"].as_u64().unwrap())
        })
        .collect()
}

/// Joins `room` through `node` as `identity`, with media.
async fn join(node: &Node, room: &str, identity: &str) -> SessionClient {
    SessionClient::join_at(&node.addr, &join_token(room, identity), None, None, false)
        .await
        .unwrap_or_else(|e| panic!("{identity} could not join {room} via {}: {e}", node.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_room_spreads_over_the_nodes_and_starts_and_finishes_once() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (hook, got) = receiver().await;
        let mut env = spreading(2);
        env.push(("VELA_WEBHOOKS_URLS", hook));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut nodes = Nodes::start("spread", 3, &env).await;
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(10)).await,
                "{}",
                nodes.logs()
            );
        }
        // Every node advertises its relay and a node number of its own.
        let listed = nodes[0]
            .api()
            .get("/api/v1/cluster/nodes", &service_token())
            .await
            .ok(200);
        let listed = listed["nodes"].as_array().unwrap().clone();
        assert_eq!(listed.len(), 3, "{listed:?}");
        let mut numbers: Vec<u64> = listed
            .iter()
            .map(|n| n["number"].as_u64().unwrap())
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        assert_eq!(numbers.len(), 3, "{listed:?}");
        for n in &listed {
            let relay = n["relay_addr"].as_str().unwrap();
            let port = relay.strip_prefix("127.0.0.1:").unwrap_or("0");
            assert_ne!(port.parse::<u16>().unwrap_or(0), 0, "{n}");
        }
        // Six join through node 1: two per node. (A heartbeat or two apart,
        // so that each placement sees the loads the last one left: within
        // one heartbeat a node counts the joins it placed itself, give or
        // take one, and a burst may go a join over or under the threshold.)
        let mut clients = Vec::new();
        for i in 0..6 {
            clients.push(join(&nodes[0], "big", &format!("p{i}")).await);
            tokio::time::sleep(Duration::from_millis(3 * HEARTBEAT_MS)).await;
        }
        assert!(
            eventually(Duration::from_secs(5), async || spread_of(
                &nodes[0],
                &nodes.nodes
            )
            .await
                == [2, 2, 2])
            .await,
            "{:?}\n{}",
            spread_of(&nodes[0], &nodes.nodes).await,
            nodes.logs()
        );
        // Started once; each participant joined once, on its own node.
        assert!(
            eventually(Duration::from_secs(10), async || count(
                &got,
                "participant_joined",
                "big"
            ) >= 6)
            .await,
            "{:?}",
            got.lock().unwrap()
        );
        assert_eq!(
            count(&got, "room_started", "big"),
            1,
            "{:?}",
            got.lock().unwrap()
        );
        assert_eq!(count(&got, "participant_joined", "big"), 6);
        // A seventh, with every node full, goes to the least loaded.
        // (Through node 2: node 3 dies next, with the sockets it proxies,
        // and a session whose socket drops is kept for a resume.)
        let seventh = join(&nodes[1], "big", "p6").await;
        assert!(
            eventually(Duration::from_secs(3), async || spread_of(
                &nodes[0],
                &nodes.nodes
            )
            .await
            .iter()
            .sum::<u64>()
                == 7)
            .await,
            "{:?}",
            spread_of(&nodes[0], &nodes.nodes).await
        );
        clients.push(seventh);
        // Listed once for the cluster, by each node for itself.
        let listed = rooms_listed(&nodes[1], "").await;
        assert_eq!(
            listed.iter().filter(|(r, _)| r == "big").count(),
            1,
            "{listed:?}"
        );
        for n in &nodes.nodes {
            assert!(
                rooms_on(n).await.iter().any(|(r, _)| r == "big"),
                "{}",
                n.id
            );
        }
        // Node 3 dies: its part is gone, the room goes on on the others and
        // a new join lands on a live node.
        nodes[2].kill().await;
        tokio::time::sleep(Duration::from_millis(NODE_TIMEOUT_MS + 500)).await;
        let late = join(&nodes[1], "big", "late").await;
        assert!(
            eventually(Duration::from_secs(3), async || spread_of(
                &nodes[0],
                &nodes.nodes[..2]
            )
            .await
            .iter()
            .sum::<u64>()
                >= 5)
            .await,
            "{:?}",
            spread_of(&nodes[0], &nodes.nodes[..2]).await
        );
        clients.push(late);
        // Everyone leaves: the room finishes once, reported by the last node
        // to close its part (node 3's part was never closed).
        for mut c in clients {
            c.ws.send(json!({"type": "leave"})).await;
            c.peer.close().await;
        }
        assert!(
            eventually(Duration::from_millis(NODE_TIMEOUT_MS * 3), async || count(
                &got,
                "room_finished",
                "big"
            ) >= 1)
            .await,
            "{:?}\n{}",
            got.lock().unwrap(),
            nodes.logs()
        );
        tokio::time::sleep(Duration::from_millis(NODE_TIMEOUT_MS + 500)).await;
        assert_eq!(
            count(&got, "room_finished", "big"),
            1,
            "{:?}",
            got.lock().unwrap()
        );
        assert_eq!(count(&got, "room_started", "big"), 1);
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_room_spread_over_two_nodes_ends_both_parts() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let env = spreading(1);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let nodes = Nodes::start("spread-delete", 2, &env).await;
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(10)).await,
                "{}",
                nodes.logs()
            );
        }
        let mut a = join(&nodes[0], "gone", "a").await;
        tokio::time::sleep(Duration::from_millis(3 * HEARTBEAT_MS)).await;
        let mut b = join(&nodes[0], "gone", "b").await;
        assert!(
            eventually(Duration::from_secs(3), async || spread_of(
                &nodes[0],
                &nodes.nodes
            )
            .await
                == [1, 1])
            .await,
            "{:?}",
            spread_of(&nodes[0], &nodes.nodes).await
        );
        // Deleted through node 2: both parts end, both sessions are told.
        let r = nodes[1]
            .api()
            .delete("/api/v1/rooms/gone", &service_token())
            .await;
        assert_eq!(r.status, 204, "{r:?}");
        for c in [&mut a, &mut b] {
            let closed = tokio::time::timeout(Duration::from_secs(5), c.ws.close_code()).await;
            assert!(closed.is_ok(), "{} still open", c.id);
        }
        for n in &nodes.nodes {
            assert!(
                eventually(Duration::from_secs(3), async || !rooms_on(n)
                    .await
                    .iter()
                    .any(|(r, _)| r == "gone"))
                .await,
                "{}",
                n.id
            );
        }
        // Deleting it again: gone everywhere.
        let r = nodes[0]
            .api()
            .delete("/api/v1/rooms/gone", &service_token())
            .await;
        assert_eq!(r.status, 404);
    })
    .await
    .expect("test timed out");
}

/// The value of `vela_{name}` (unlabelled, or the sum over its labels) on
/// `node`'s `/metrics`.
async fn metric_sum(node: &Node, name: &str) -> f64 {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("{}/metrics", node.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("vela_{name}");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.parse::<f64>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_on_node_1_plays_by_whep_on_node_2_and_a_node_without_the_secret_gets_nothing() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let env = spreading(1);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        // The third node has the cluster's Redis and store but another
        // relay secret: it may hold a room, but no node links with it.
        let nodes = Nodes::start_with("spread-whip", 3, &env, |i, _, _| NodeSpec {
            env: if i == 2 {
                vec![(
                    "VELA_CLUSTER_RELAY_SECRET".to_owned(),
                    "not-the-cluster-secret-0123456789abcdef".to_owned(),
                )]
            } else {
                Vec::new()
            },
            ..NodeSpec::default()
        })
        .await;
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(10)).await,
                "{}",
                nodes.logs()
            );
        }
        // WHIP to node 1: the room opens there (node 1 is then full).
        let publisher = Peer::http(
            &format!("{}/whip/cast", nodes[0].base()),
            &join_token("cast", "pub"),
            true,
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(3 * HEARTBEAT_MS)).await;
        // WHEP through node 2: served there (its session is on node 2),
        // fed over the relay from node 1.
        let viewer = Peer::http(
            &format!("{}/whep/cast", nodes[1].base()),
            &join_token("cast", "view"),
            false,
        )
        .await
        .unwrap();
        assert!(
            viewer
                .location
                .as_deref()
                .unwrap()
                .starts_with(&nodes[1].base()),
            "{:?}",
            viewer.location
        );
        assert!(
            viewer
                .wait(Duration::from_secs(15), |p| p.video_frames() > 10)
                .await,
            "the viewer on node 2 got video\n{}",
            nodes.logs()
        );
        assert!(metric_sum(&nodes[0], "relay_core_packets_sent_total").await > 0.0);
        tokio::time::sleep(Duration::from_millis(3 * HEARTBEAT_MS)).await;
        // WHEP through the stranger: placed on it (the others are full),
        // but its relay is refused both ways: it never gets the media.
        let outsider = Peer::http(
            &format!("{}/whep/cast", nodes[2].base()),
            &join_token("cast", "outsider"),
            false,
        )
        .await
        .unwrap();
        assert!(
            outsider
                .location
                .as_deref()
                .unwrap()
                .starts_with(&nodes[2].base()),
            "{:?}",
            outsider.location
        );
        let refused = async || {
            metric_sum(&nodes[0], "relay_refused_connections_total").await
                + metric_sum(&nodes[2], "relay_refused_connections_total").await
        };
        assert!(
            eventually(Duration::from_secs(10), async || refused().await > 0.0).await,
            "no refused relay connection\n{}",
            nodes.logs()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(outsider.video_frames(), 0);
        assert_eq!(
            metric_sum(&nodes[2], "relay_core_packets_received_total").await,
            0.0
        );
        assert_eq!(
            metric_sum(&nodes[0], "relay_link_up").await,
            1.0,
            "node 1 is linked to node 2 only"
        );
        // The cluster's viewer still plays.
        let frames = viewer.video_frames();
        assert!(
            viewer
                .wait(Duration::from_secs(5), |p| p.video_frames() > frames + 10)
                .await
        );
        for p in [publisher, viewer, outsider] {
            p.close().await;
        }
    })
    .await
    .expect("test timed out");
}
