//! Rooms in a cluster: each opens on one node, is found from every node
//! (room sockets proxied to it, WHIP/WHEP and the room API redirected
//! there), and outlives neither its node nor a Redis outage unnoticed.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use serde_json::{Value, json};
use vela_signaling::token::{TokenKeys, VideoGrant};

use crate::common::{Peer, SessionClient, Ws};
use crate::nodes::{HEARTBEAT_MS, NODE_TIMEOUT_MS, Node, Nodes};

fn keys() -> TokenKeys {
    TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
}

/// A join token for `room` (every node shares the key).
pub fn join_token(room: &str, identity: &str) -> String {
    let grant = VideoGrant {
        room: Some(room.into()),
        room_join: true,
        can_publish: Some(true),
        can_subscribe: Some(true),
        ..VideoGrant::default()
    };
    keys()
        .issue(identity, None, grant, Duration::from_secs(600))
        .unwrap()
}

/// A service token that may create and list rooms.
pub fn service_token() -> String {
    let grant = VideoGrant {
        room_create: true,
        room_list: true,
        ..VideoGrant::default()
    };
    keys()
        .issue("ops", None, grant, Duration::from_secs(600))
        .unwrap()
}

/// An HTTP client that shows redirects instead of following them.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The names of the rooms open on `node`, with their participant counts.
pub async fn rooms_on(node: &Node) -> Vec<(String, u64)> {
    rooms_listed(node, "?scope=node").await
}

/// The rooms `GET /api/v1/rooms{query}` on `node` lists.
pub async fn rooms_listed(node: &Node, query: &str) -> Vec<(String, u64)> {
    let r = node
        .api()
        .get(&format!("/api/v1/rooms{query}"), &service_token())
        .await
        .ok(200);
    r["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["num_participants"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Joins `room` through `node` as `identity` (publishing when `publish`).
async fn join(node: &Node, room: &str, identity: &str, publish: bool) -> SessionClient {
    SessionClient::join_at(&node.addr, &join_token(room, identity), None, None, publish)
        .await
        .unwrap_or_else(|e| panic!("{identity} could not join {room} via {}: {e}", node.id))
}

async fn all_ready(nodes: &Nodes) {
    for n in &nodes.nodes {
        assert!(
            n.wait_ready(true, Duration::from_secs(10)).await,
            "{} not ready:\n{}",
            n.id,
            nodes.logs()
        );
    }
}

/// A metric of `node`'s `/metrics` (0 when absent).
async fn metric(node: &Node, name: &str) -> f64 {
    let text = http()
        .get(format!("{}/metrics", node.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The live nodes `node` lists.
async fn live_nodes(node: &Node) -> Vec<String> {
    let r = node
        .api()
        .get("/api/v1/cluster/nodes", &service_token())
        .await
        .ok(200);
    r["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits up to `limit` for `cond` to hold.
pub(crate) async fn eventually(limit: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_on_node_1_is_joined_and_resumed_through_node_2() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let nodes = Nodes::start("rooms-proxy", 2, &[]).await;
        all_ready(&nodes).await;
        // Alice opens the room on node 1 (a tie in load: the node asked).
        let mut alice = join(&nodes[0], "proxied", "alice", true).await;
        // Bob joins through node 2: his socket is proxied to node 1.
        let mut bob = join(&nodes[1], "proxied", "bob", true).await;
        assert_eq!(
            bob.joined["participants"][0]["identity"], "alice",
            "{}",
            bob.joined
        );
        let both = SessionClient::pump_until(&mut [&mut alice, &mut bob], 100, |c| {
            c.peer.video_frames() > 20 && c.peer.audio_frames() > 20
        })
        .await;
        assert!(
            both,
            "media both ways: alice {} video frames, bob {}\n{}",
            alice.peer.video_frames(),
            bob.peer.video_frames(),
            nodes.logs()
        );
        // The room is on node 1 only, both participants in it.
        assert_eq!(rooms_on(&nodes[0]).await, vec![("proxied".into(), 2)]);
        assert_eq!(rooms_on(&nodes[1]).await, vec![]);
        // Listed from any node, with the other nodes' rooms.
        assert_eq!(
            rooms_listed(&nodes[1], "").await,
            vec![("proxied".into(), 2)]
        );
        assert_eq!(
            rooms_listed(&nodes[1], "?names=nope,proxied").await,
            vec![("proxied".into(), 2)]
        );
        // Node 2 relays bob's socket, and counts it.
        assert!(nodes[1].log().contains("proxied to the room's node"));
        assert_eq!(
            metric(&nodes[1], "vela_cluster_proxied_room_sockets").await,
            1.0
        );

        // Bob's socket drops; a new one through node 2 resumes his session
        // on node 1 (his resume token names it).
        let token = bob.joined["resume_token"].as_str().unwrap().to_owned();
        drop(std::mem::replace(
            &mut bob.ws,
            Ws::connect_addr(&nodes[1].addr, "/ws").await,
        ));
        alice.pump(Duration::from_millis(300)).await;
        bob.ws
            .send(json!({"type": "resume", "participant_id": bob.id, "resume_token": token}))
            .await;
        let joined = bob.ws.expect("joined").await;
        assert_eq!(joined["participant"]["id"].as_str(), Some(bob.id.as_str()));
        // Alice resumes through node 2 too, though she joined on node 1.
        let token = alice.joined["resume_token"].as_str().unwrap().to_owned();
        drop(std::mem::replace(
            &mut alice.ws,
            Ws::connect_addr(&nodes[1].addr, "/ws").await,
        ));
        alice
            .ws
            .send(json!({"type": "resume", "participant_id": alice.id, "resume_token": token}))
            .await;
        let joined = alice.ws.expect("joined").await;
        assert_eq!(
            joined["participants"][0]["id"].as_str(),
            Some(bob.id.as_str())
        );
        let frames = alice.peer.video_frames();
        let going = SessionClient::pump_until(&mut [&mut alice, &mut bob], 30, |c| {
            c.peer.video_frames() > frames + 10
        })
        .await;
        assert!(going, "media goes on after the resumes");
        assert!(!bob.saw("participant_left", "participant_id", &alice.id));
        // The session goes on over the proxied socket.
        alice.ws.send(json!({"type": "ping"})).await;
        alice.ws.expect("pong").await;

        // Bob leaves: node 1 hears the close through the proxy.
        bob.ws.send(json!({"type": "leave"})).await;
        let left = SessionClient::pump_until(&mut [&mut alice], 30, |c| {
            c.saw("participant_left", "participant_id", &bob.id)
        })
        .await;
        assert!(left, "alice saw bob leave: {:?}", alice.seen);
        // Alice's relayed socket is the one left (three were relayed).
        let one_left = eventually(Duration::from_secs(3), async || {
            metric(&nodes[1], "vela_cluster_proxied_room_sockets").await == 1.0
        });
        assert!(one_left.await);
        assert_eq!(
            metric(&nodes[1], "vela_cluster_proxied_room_sockets_total").await,
            3.0
        );

        // The proxy keeps the message limit: a message over it closes the
        // socket with 1009, as node 1 itself would, and the session ends.
        let mut mallory = join(&nodes[1], "proxied", "mallory", false).await;
        let huge = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(100_000));
        mallory.ws.send_text(huge).await;
        assert_eq!(mallory.ws.close_code().await, Some(1009));
        let gone = SessionClient::pump_until(&mut [&mut alice], 30, |c| {
            c.saw("participant_left", "participant_id", &mallory.id)
        })
        .await;
        assert!(gone, "alice saw mallory leave: {:?}", alice.seen);
        alice.peer.close().await;
        bob.peer.close().await;
        mallory.peer.close().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_joins_of_a_room_on_two_nodes_land_on_one() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let nodes = Nodes::start("rooms-race", 2, &[]).await;
        all_ready(&nodes).await;
        for i in 0..8 {
            let room = format!("race{i}");
            let (t1, t2) = (join_token(&room, "one"), join_token(&room, "two"));
            let (a, b) = tokio::join!(
                SessionClient::join_at(&nodes[0].addr, &t1, None, None, false),
                SessionClient::join_at(&nodes[1].addr, &t2, None, None, false),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            // One of them joined second and found the other in the room.
            let found = |c: &SessionClient| c.joined["participants"].as_array().unwrap().len();
            assert_eq!(
                found(&a) + found(&b),
                1,
                "{room}: {} / {}",
                a.joined,
                b.joined
            );
            let mut on = Vec::new();
            for (k, n) in nodes.nodes.iter().enumerate() {
                if rooms_on(n).await.contains(&(room.clone(), 2)) {
                    on.push(k);
                }
            }
            assert_eq!(on.len(), 1, "{room} open with both on nodes {on:?}");
            a.peer.close().await;
            b.peer.close().await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_room_creation_on_the_wrong_node_are_redirected() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let nodes = Nodes::start("rooms-whip", 2, &[]).await;
        all_ready(&nodes).await;
        // The room opens on node 1 with a publisher over WHIP.
        let publisher = Peer::http(
            &format!("{}/whip/cast", nodes[0].base()),
            &join_token("cast", "pub"),
            true,
        )
        .await
        .unwrap();
        // A viewer asks node 2: 307 to node 1, with the same path.
        let token = join_token("cast", "view");
        let r = http()
            .post(format!("{}/whep/cast", nodes[1].base()))
            .bearer_auth(&token)
            .header("content-type", "application/sdp")
            .body("v=0\r\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 307);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(location, format!("{}/whep/cast", nodes[0].base()));
        // Following it (with its token, as RFC 9725 asks), the viewer sees
        // the publisher; its session's Location is absolute, on node 1.
        let viewer = Peer::http(&location, &token, false).await.unwrap();
        assert!(
            viewer
                .location
                .as_deref()
                .unwrap()
                .starts_with(&nodes[0].base())
        );
        assert!(
            viewer
                .wait(Duration::from_secs(15), |p| p.video_frames() > 10)
                .await,
            "the viewer got video\n{}",
            nodes.logs()
        );
        // A publisher that follows the redirect publishes into the room.
        let r = http()
            .post(format!("{}/whip/cast", nodes[1].base()))
            .bearer_auth(join_token("cast", "pub2"))
            .header("content-type", "application/sdp")
            .body("v=0\r\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 307);
        let second = Peer::http(
            r.headers()["location"].to_str().unwrap(),
            &join_token("cast", "pub2"),
            true,
        )
        .await
        .unwrap();
        assert!(
            second
                .wait(Duration::from_secs(10), |p| p.connected())
                .await
        );
        // Both publishers on node 1 (a WHEP viewer is not counted).
        assert_eq!(rooms_on(&nodes[0]).await, vec![("cast".into(), 2)]);
        // Ending a session at the wrong node is redirected too.
        let end = viewer.location.clone().unwrap();
        let path = end.strip_prefix(&nodes[0].base()).unwrap();
        let r = http()
            .delete(format!("{}{path}", nodes[1].base()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 307);
        assert_eq!(r.headers()["location"].to_str().unwrap(), end);

        // The room API: creating a room open on node 1 through node 2 is
        // redirected there.
        let r = http()
            .post(format!("{}/api/v1/rooms", nodes[1].base()))
            .bearer_auth(service_token())
            .json(&json!({"name": "cast"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 307);
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            format!("{}/api/v1/rooms", nodes[0].base())
        );
        // So is any operation on the room (here: its participants).
        let r = http()
            .get(format!(
                "{}/api/v1/rooms/cast/participants",
                nodes[1].base()
            ))
            .bearer_auth(service_token())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 307);
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            format!("{}/api/v1/rooms/cast/participants", nodes[0].base())
        );
        // Without a valid token, node 2 answers as a single node would.
        let r = http()
            .get(format!("{}/api/v1/rooms/cast", nodes[1].base()))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        // A new room opens on the least loaded node: node 2, once node 1's
        // load (the cast's two publishers) is in Redis and then in node 1's
        // cached view of the nodes (refreshed each heartbeat).
        assert!(
            eventually(Duration::from_secs(10), async || {
                let r = nodes[0]
                    .api()
                    .get("/api/v1/cluster/nodes", &service_token())
                    .await
                    .ok(200);
                r["nodes"].as_array().is_some_and(|ns| {
                    ns.iter()
                        .any(|n| n["id"] == "n1" && n["participants"].as_u64() >= Some(2))
                })
            })
            .await,
            "node 1's load never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(3 * HEARTBEAT_MS)).await;
        let r = http()
            .post(format!("{}/api/v1/rooms", nodes[0].base()))
            .bearer_auth(service_token())
            .json(&json!({"name": "spare"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 307);
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            format!("{}/api/v1/rooms", nodes[1].base())
        );
        // whep, whip, delete, room creation, participants.
        assert_eq!(metric(&nodes[1], "vela_cluster_redirects_total").await, 5.0);
        // The cluster as operators see it.
        assert_eq!(live_nodes(&nodes[1]).await, vec!["n1", "n2"]);
        let r = nodes[1]
            .api()
            .get("/api/v1/cluster/nodes", &service_token())
            .await
            .ok(200);
        assert_eq!(r["this_node"], "n2");
        let n1 = &r["nodes"][0];
        assert_eq!(n1["public_url"], nodes[0].base());
        assert_eq!(n1["rooms"], 1, "{r}");
        // Without the grant: refused.
        nodes[1]
            .api()
            .get("/api/v1/cluster/nodes", &join_token("cast", "x"))
            .await
            .err(403, None);
        publisher.close().await;
        viewer.close().await;
        second.close().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_room_reopens_elsewhere_and_the_others_keep_serving() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut nodes = Nodes::start("rooms-kill", 3, &[]).await;
        all_ready(&nodes).await;
        // A room on node 1, with a participant through node 2; another room
        // on node 3.
        let mut alice = join(&nodes[0], "doomed", "alice", true).await;
        let mut bob = join(&nodes[1], "doomed", "bob", true).await;
        let mut carol = join(&nodes[2], "safe", "carol", true).await;
        let mut dave = join(&nodes[2], "safe", "dave", false).await;
        assert!(
            SessionClient::pump_until(&mut [&mut alice, &mut bob], 50, |c| c.peer.video_frames()
                > 5)
            .await
        );
        nodes[0].kill().await;
        // Bob's proxied socket closes with the proxy's code.
        assert_eq!(bob.ws.close_code().await, Some(1011));
        // The others serve on: the room on node 3 keeps its media.
        let frames = dave.peer.video_frames();
        tokio::join!(
            carol.pump(Duration::from_secs(1)),
            dave.pump(Duration::from_secs(1))
        );
        assert!(dave.peer.video_frames() > frames + 10);
        assert!(nodes[1].ready().await && nodes[2].ready().await);
        // Node 1 drops out of the registry after the node timeout...
        assert!(
            eventually(Duration::from_millis(3 * NODE_TIMEOUT_MS), async || {
                live_nodes(&nodes[1]).await == ["n2", "n3"]
            })
            .await,
            "{:?}",
            live_nodes(&nodes[1]).await
        );
        // ...and the room reopens on another node when its clients rejoin.
        let mut bob = join(&nodes[1], "doomed", "bob", true).await;
        let mut erin = join(&nodes[2], "doomed", "erin", true).await;
        assert!(
            SessionClient::pump_until(&mut [&mut bob, &mut erin], 100, |c| c.peer.video_frames()
                > 10)
            .await,
            "media in the reopened room\n{}",
            nodes.logs()
        );
        let mut open = 0;
        for node in [&nodes[1], &nodes[2]] {
            open += rooms_on(node)
                .await
                .iter()
                .filter(|(r, _)| r == "doomed")
                .count();
        }
        assert_eq!(open, 1, "the room reopened on one node");
        for c in [alice, bob, carol, dave, erin] {
            c.peer.close().await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_go_on_through_a_redis_outage_and_new_ones_wait_for_it() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut nodes = Nodes::start("rooms-redis", 2, &[]).await;
        all_ready(&nodes).await;
        let mut alice = join(&nodes[0], "steady", "alice", true).await;
        let mut bob = join(&nodes[1], "steady", "bob", true).await;
        assert!(
            SessionClient::pump_until(&mut [&mut alice, &mut bob], 50, |c| c.peer.video_frames()
                > 5)
            .await
        );
        nodes.redis.stop();
        // Not ready while Redis is away, within the check's timeout.
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(false, Duration::from_secs(5)).await,
                "{}",
                n.id
            );
        }
        // The running room keeps its media (through the proxy too), for
        // longer than the node timeout.
        let frames = (alice.peer.video_frames(), bob.peer.video_frames());
        tokio::join!(
            alice.pump(Duration::from_millis(2 * NODE_TIMEOUT_MS)),
            bob.pump(Duration::from_millis(2 * NODE_TIMEOUT_MS))
        );
        assert!(alice.peer.video_frames() > frames.0 + 20);
        assert!(bob.peer.video_frames() > frames.1 + 20);
        // Listing rooms shows this node's, and says the rest is missing.
        let r = nodes[0]
            .api()
            .get("/api/v1/rooms", &service_token())
            .await
            .ok(200);
        assert_eq!(r["rooms"][0]["name"], "steady", "{r}");
        assert_eq!(r["unreachable_nodes"], json!(["redis"]), "{r}");
        // A join to the running room on its node still works.
        let mut carol = join(&nodes[0], "steady", "carol", false).await;
        // A new room is refused: 503 with Retry-After.
        let r = http()
            .post(format!("{}/api/v1/rooms", nodes[0].base()))
            .bearer_auth(service_token())
            .json(&json!({"name": "fresh"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
        let body: Value = r.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("Redis"),
            "{body}"
        );
        let refused = SessionClient::join_at(
            &nodes[1].addr,
            &join_token("fresh", "dan"),
            None,
            None,
            false,
        )
        .await
        .err()
        .expect("a new room is refused");
        assert_eq!(refused["code"], 503, "{refused}");
        let r = http()
            .post(format!("{}/whip/fresh", nodes[1].base()))
            .bearer_auth(join_token("fresh", "pub"))
            .header("content-type", "application/sdp")
            .body("v=0\r\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));

        // Redis is back (empty): the nodes register again by themselves,
        // re-claim their rooms and take new ones.
        nodes.redis.restart();
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(10)).await,
                "{}",
                n.id
            );
        }
        assert!(
            eventually(Duration::from_secs(5), async || live_nodes(&nodes[1]).await
                == ["n1", "n2"])
            .await
        );
        // The running room is found on node 1 again from node 2 (once the
        // nodes have claimed their rooms again: until then, 503).
        let mut erin = None;
        for _ in 0..50 {
            let token = join_token("steady", "erin");
            match SessionClient::join_at(&nodes[1].addr, &token, None, None, false).await {
                Ok(c) => {
                    erin = Some(c);
                    break;
                }
                Err(e) => assert_eq!(e["code"], 503, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut erin = erin.expect("erin joins once the nodes have settled");
        assert_eq!(
            erin.joined["participants"].as_array().unwrap().len(),
            3,
            "{}",
            erin.joined
        );
        let fresh = join(&nodes[1], "fresh", "dan", false).await;
        assert!(
            SessionClient::pump_until(&mut [&mut erin], 50, |c| c.peer.video_frames() > 5).await
        );
        let r = http()
            .post(format!("{}/api/v1/rooms", nodes[1].base()))
            .bearer_auth(service_token())
            .json(&json!({"name": "fresher"}))
            .send()
            .await
            .unwrap();
        // (Node 2, the least loaded, opens it.)
        assert_eq!(r.status(), 200);
        carol.pump(Duration::from_millis(10)).await;
        for c in [alice, bob, carol, erin, fresh] {
            c.peer.close().await;
        }
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_leaves_the_cluster_at_once_and_its_rooms_reopen() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let nodes = Nodes::start("rooms-stop", 2, &[]).await;
        all_ready(&nodes).await;
        let mut alice = join(&nodes[0], "moving", "alice", true).await;
        let mut bob = join(&nodes[1], "moving", "bob", false).await;
        // Bob receives alice's media through node 1.
        tokio::join!(
            alice.pump(Duration::from_secs(1)),
            bob.pump(Duration::from_secs(1))
        );
        assert!(bob.peer.video_frames() > 5);
        // SIGTERM: node 1 shuts down gracefully.
        let pid = nodes[0].pid().unwrap().to_string();
        let stopped = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(stopped.success());
        let stopping = tokio::time::Instant::now();
        // Bob, relayed through node 2, is told as a direct socket would be.
        let left = bob.ws.expect("left").await;
        assert_eq!(left["reason"], "server_shutdown", "{left}");
        // Node 1 removed itself (sooner than its entry would expire), and
        // its room reopens on node 2 at once.
        assert!(
            eventually(Duration::from_millis(NODE_TIMEOUT_MS / 2), async || {
                live_nodes(&nodes[1]).await == ["n2"]
            })
            .await,
            "{:?} after {:?}",
            live_nodes(&nodes[1]).await,
            stopping.elapsed()
        );
        let carol = join(&nodes[1], "moving", "carol", false).await;
        assert_eq!(rooms_on(&nodes[1]).await, vec![("moving".into(), 1)]);
        for c in [alice, bob, carol] {
            c.peer.close().await;
        }
    })
    .await
    .expect("test timed out");
}

/// Round trips of `ping` on `ws`, `n` of them, sorted.
async fn ping_times(ws: &mut Ws, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = tokio::time::Instant::now();
        ws.send(json!({"type": "ping"})).await;
        ws.expect("pong").await;
        times.push(sent.elapsed());
    }
    times.sort();
    times
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_room_socket_adds_little_latency() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let nodes = Nodes::start("rooms-latency", 2, &[]).await;
        all_ready(&nodes).await;
        let mut direct = Ws::connect_addr(&nodes[0].addr, "/ws").await;
        direct
            .send(json!({"type": "join", "token": join_token("rtt", "direct")}))
            .await;
        direct.expect("joined").await;
        let mut relayed = Ws::connect_addr(&nodes[1].addr, "/ws").await;
        relayed
            .send(json!({"type": "join", "token": join_token("rtt", "relayed")}))
            .await;
        relayed.expect("joined").await;
        assert_eq!(rooms_on(&nodes[0]).await, vec![("rtt".into(), 2)]);
        // Within the socket's message allowance (limits.messages_per_second).
        let n = 80;
        let d = ping_times(&mut direct, n).await;
        let r = ping_times(&mut relayed, n).await;
        let (p50, max) = (n / 2, n - 1);
        eprintln!(
            "ping round trip, direct p50 {:?} max {:?}; relayed through node 2 p50 {:?} max {:?}",
            d[p50], d[max], r[p50], r[max]
        );
        // One more loopback hop each way: well under a frame's time.
        assert!(
            r[p50] < d[p50] + Duration::from_millis(10),
            "{:?} vs {:?}",
            r[p50],
            d[p50]
        );
        assert!(r[max] < Duration::from_millis(200), "{:?}", r[max]);
    })
    .await
    .expect("test timed out");
}

/// LiveKit's RoomService over Twirp (docs/livekit.md) in a cluster: a call
/// about a room open on another node is redirected there (the room is in
/// the body, so the handler redirects, not the middleware); repeated there
/// with its token and body it succeeds; ListRooms lists every node's rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twirp_calls_about_another_nodes_room_are_redirected_there() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let nodes = Nodes::start("rooms-twirp", 2, &[]).await;
        all_ready(&nodes).await;
        // The room opens on node 1 with a publisher over WHIP.
        let publisher = Peer::http(
            &format!("{}/whip/tw", nodes[0].base()),
            &join_token("tw", "pub"),
            true,
        )
        .await
        .unwrap();
        assert!(
            publisher
                .wait(Duration::from_secs(10), |p| p.connected())
                .await
        );
        let admin = keys()
            .issue(
                "ops",
                None,
                VideoGrant {
                    room: Some("tw".into()),
                    room_admin: true,
                    room_list: true,
                    ..VideoGrant::default()
                },
                Duration::from_secs(600),
            )
            .unwrap();
        let twirp = async |base: &str, method: &str, body: Value| {
            http()
                .post(format!("{base}/twirp/livekit.RoomService/{method}"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await
                .unwrap()
        };
        let body = json!({"room": "tw"});
        let r = twirp(&nodes[1].base(), "ListParticipants", body.clone()).await;
        assert_eq!(r.status(), 307);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(
            location,
            format!(
                "{}/twirp/livekit.RoomService/ListParticipants",
                nodes[0].base()
            )
        );
        // Repeated at node 1: the publisher, as LiveKit's ParticipantInfo.
        let r = http()
            .post(&location)
            .bearer_auth(&admin)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["participants"][0]["identity"], "pub", "{v}");
        assert!(
            v["participants"][0]["sid"]
                .as_str()
                .unwrap()
                .starts_with("PA_"),
            "{v}"
        );
        // ListRooms asked at node 2 lists node 1's room.
        let r = twirp(&nodes[1].base(), "ListRooms", json!({})).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["rooms"][0]["name"], "tw", "{v}");
        assert_eq!(v["rooms"][0]["num_participants"], 1, "{v}");
        // An unknown room is answered where asked.
        let r = twirp(
            &nodes[1].base(),
            "ListParticipants",
            json!({"room": "none"}),
        )
        .await;
        assert_eq!(r.status(), 403, "the token is for tw only");
        publisher.close().await;
    })
    .await
    .expect("test timed out");
}
