//! Calls when the devices are on different nodes: one node owns the calls
//! and the others forward to it, so ringing, the first accept, busy, DND,
//! missed calls and the call's room work as on one node; when the owner is
//! killed, another takes the calls over.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Api, DeviceClient, Login, Seen, SessionClient};
use crate::nodes::{Node, Nodes};

const PW: &str = "correct horse battery";

/// Every test here runs under this limit.
const LIMIT: Duration = Duration::from_secs(120);

async fn started(name: &str, n: usize, env: &[(&str, &str)]) -> Nodes {
    let nodes = Nodes::start(name, n, env).await;
    for node in &nodes.nodes {
        assert!(
            node.wait_ready(true, Duration::from_secs(10)).await,
            "{}",
            nodes.logs()
        );
    }
    nodes
}

/// Signs `name` up (on `api`) and logs a phone in.
async fn user(api: &Api, name: &str) -> Login {
    api.register(name, PW).await;
    api.login(name, PW, "phone", &format!("{name}'s phone"))
        .await
}

/// A device socket on `node`, with heartbeats.
async fn socket(node: &Node, who: &Login) -> DeviceClient {
    DeviceClient::connect_addr(&node.addr, &who.access, Some(Duration::from_secs(1))).await
}

async fn call(api: &Api, from: &Login, to: &[i64]) -> i64 {
    let v = api
        .post(
            "/api/v1/calls",
            Some(&from.access),
            json!({"to": to, "video": false}),
        )
        .await
        .ok(201);
    v["call"]["id"].as_i64().unwrap()
}

async fn act(api: &Api, who: &Login, id: i64, action: &str) -> crate::common::Resp {
    api.post(
        &format!("/api/v1/calls/{id}/{action}"),
        Some(&who.access),
        json!({}),
    )
    .await
}

async fn expect_call(dev: &mut DeviceClient, ty: &str, id: i64) -> Value {
    dev.wait_for(&format!("{ty} of call {id}"), |m| {
        m["type"] == ty && m["call"]["id"] == id
    })
    .await
}

/// The `call_ended` of call `id` on `dev`, waiting up to `limit` (a join
/// timeout after a failover is longer than [`DeviceClient::wait_for`]'s).
async fn ended_within(dev: &mut DeviceClient, id: i64, limit: Duration) -> Value {
    let end = tokio::time::Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(tokio::time::Instant::now());
        match dev.next_within(left).await {
            Some(Seen::Msg(m)) if m["type"] == "call_ended" && m["call"]["id"] == id => {
                return m;
            }
            Some(Seen::Msg(_)) => {}
            other => panic!("no call_ended of call {id}: {other:?}"),
        }
    }
}

fn member_state(call: &Value, account: i64) -> String {
    call["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["account_id"] == account)
        .map(|m| m["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The history entries of `who` for call `id`, once at least one is there.
async fn records(api: &Api, who: &Login, id: i64) -> Vec<Value> {
    for _ in 0..100 {
        let v = api.get("/api/v1/calls/history", &who.access).await.ok(200);
        let found: Vec<Value> = v["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["call_id"] == id)
            .cloned()
            .collect();
        if !found.is_empty() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no history entry of call {id} for {}", who.username)
}

/// Joins call `id`'s room through `node` with `who`'s access token.
async fn join_call_room(node: &Node, who: &Login, id: i64) -> SessionClient {
    SessionClient::join_at(
        &node.addr,
        &who.access,
        Some(&format!("call-{id}")),
        None,
        false,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{} could not join call {id} via {}: {e}",
            who.username, node.id
        )
    })
}

/// Joins call `id`'s room again through `node` after a node died: while
/// the room's claim still names the dead node (until its entry expires),
/// the join fails and is tried again (10 s at most).
async fn rejoin(node: &Node, who: &Login, id: i64) -> SessionClient {
    let room = format!("call-{id}");
    let mut last = Value::Null;
    for _ in 0..40 {
        match SessionClient::join_at(&node.addr, &who.access, Some(&room), None, false).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    e["type"] == "error" || e.is_null(),
                    "unexpected refusal: {e}"
                );
                last = e;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!(
        "{} could not rejoin call {id} via {}: {last}",
        who.username, node.id
    )
}

/// The index of the node that owns the calls now (from the lease).
async fn owner(nodes: &Nodes) -> usize {
    let client = redis::Client::open(nodes.redis.url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    for _ in 0..100 {
        let lease: Option<String> = redis::cmd("GET")
            .arg("vela:calls:owner")
            .query_async(&mut redis)
            .await
            .unwrap();
        if let Some(l) = lease {
            let id = l.split('#').next().unwrap().to_owned();
            return nodes.nodes.iter().position(|n| n.id == id).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no node owns the calls: {}", nodes.logs())
}

#[tokio::test]
async fn a_call_from_node_1_rings_on_nodes_2_and_3_and_exactly_one_raced_accept_wins() {
    tokio::time::timeout(LIMIT, async {
        let nodes = started("calls-race", 3, &[]).await;
        let (n1, n2, n3) = (nodes[0].api(), nodes[1].api(), nodes[2].api());
        let ann = user(&n1, "ann").await;
        let ben = user(&n2, "ben").await;
        let ben_desk = n3.login("ben", PW, "desktop", "Ben's desk").await;
        let mut a = socket(&nodes[0], &ann).await;
        let mut b_phone = socket(&nodes[1], &ben).await;
        let mut b_desk = socket(&nodes[2], &ben_desk).await;
        for round in 0..6 {
            let id = call(&n1, &ann, &[ben.account]).await;
            expect_call(&mut a, "call_outgoing", id).await;
            expect_call(&mut b_phone, "call_ringing", id).await;
            expect_call(&mut b_desk, "call_ringing", id).await;
            // Both of Ben's devices accept at once, through different nodes.
            let (r2, r3) = tokio::join!(
                act(&n2, &ben, id, "accept"),
                act(&n3, &ben_desk, id, "accept")
            );
            let winners: Vec<i64> = [(r2.status, ben.device), (r3.status, ben_desk.device)]
                .into_iter()
                .filter(|(st, _)| *st == 200)
                .map(|(_, d)| d)
                .collect();
            assert_eq!(
                winners.len(),
                1,
                "round {round}: {} {}",
                r2.status,
                r3.status
            );
            assert!(
                r2.status == 409 || r3.status == 409,
                "{} {}",
                r2.status,
                r3.status
            );
            let winner = winners[0];
            // Every device, on every node, is told the same winner.
            let answered = expect_call(&mut a, "call_answered", id).await;
            assert_eq!(answered["device_id"], winner);
            for dev in [&mut b_phone, &mut b_desk] {
                let stop = expect_call(dev, "call_ringing_stopped", id).await;
                assert_eq!(stop["device_id"], winner);
                assert_eq!(stop["reason"], "answered_elsewhere");
            }
            // Any node sees the same call.
            for api in [&n1, &n2, &n3] {
                let v = api
                    .get(&format!("/api/v1/calls/{id}"), &ann.access)
                    .await
                    .ok(200);
                assert_eq!(v["call"]["state"], "active");
            }
            act(&n1, &ann, id, "leave").await.ok(200);
            for dev in [&mut a, &mut b_phone, &mut b_desk] {
                let end = expect_call(dev, "call_ended", id).await;
                assert_eq!(end["outcome"], "answered");
            }
            // History, once, read on another node.
            let r = records(&n3, &ben, id).await;
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(r[0]["device_id"], winner);
        }
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn dnd_busy_and_a_missed_call_work_across_nodes() {
    tokio::time::timeout(LIMIT, async {
        let nodes = started(
            "calls-outcomes",
            3,
            &[("VELA_CALLS_RING_TIMEOUT_MS", "1500")],
        )
        .await;
        let (n1, n2, n3) = (nodes[0].api(), nodes[1].api(), nodes[2].api());
        let ann = user(&n1, "ann").await;
        let ben = user(&n2, "ben").await;
        let cat = user(&n3, "cat").await;
        let dan = user(&n3, "dan").await;
        let mut a = socket(&nodes[0], &ann).await;
        let mut b = socket(&nodes[1], &ben).await;
        let mut c = socket(&nodes[2], &cat).await;
        let mut d = socket(&nodes[2], &dan).await;

        // DND set on node 3 filters a call placed on node 1.
        n3.put("/api/v1/calls/settings", &cat.access, json!({"dnd": true}))
            .await
            .ok(200);
        let v = n1
            .post(
                "/api/v1/calls",
                Some(&ann.access),
                json!({"to": [cat.account], "video": false}),
            )
            .await
            .ok(201);
        let id = v["call"]["id"].as_i64().unwrap();
        assert_eq!(v["call"]["state"], "ended");
        assert_eq!(member_state(&v["call"], cat.account), "unavailable");
        assert_eq!(records(&n2, &cat, id).await[0]["outcome"], "filtered");
        let seen = c.collect(Duration::from_millis(300)).await;
        assert!(
            !format!("{seen:?}").contains("call_ringing"),
            "a filtered call rang: {seen:?}"
        );

        // Busy: Ben (node 2) is in a call with Ann (node 1); Dan (node 3) calls him.
        let id = call(&n1, &ann, &[ben.account]).await;
        expect_call(&mut b, "call_ringing", id).await;
        act(&n2, &ben, id, "accept").await.ok(200);
        expect_call(&mut a, "call_answered", id).await;
        let v = n3
            .post(
                "/api/v1/calls",
                Some(&dan.access),
                json!({"to": [ben.account], "video": false}),
            )
            .await
            .ok(201);
        let busy = v["call"]["id"].as_i64().unwrap();
        assert_eq!(member_state(&v["call"], ben.account), "busy");
        assert_eq!(v["call"]["state"], "ended");
        let r = records(&n1, &ben, busy).await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["outcome"], "busy");
        act(&n2, &ben, id, "leave").await.ok(200);
        expect_call(&mut a, "call_ended", id).await;

        // Missed: Dan (node 3) does not answer Ann's call from node 1.
        let id = call(&n1, &ann, &[dan.account]).await;
        expect_call(&mut d, "call_ringing", id).await;
        let end = expect_call(&mut d, "call_ended", id).await;
        assert_eq!(end["outcome"], "missed");
        expect_call(&mut a, "call_ended", id).await;
        // On a node Dan never used, history and the unseen count agree.
        let r = records(&n2, &dan, id).await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["outcome"], "missed");
        assert_eq!(r[0]["unseen"], true);
        let missed = d
            .wait_for("missed_calls", |m| m["type"] == "missed_calls")
            .await;
        assert!(missed["count"].as_i64().unwrap() >= 1, "{missed}");
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn members_on_different_nodes_join_the_call_room_and_a_leave_ends_it() {
    tokio::time::timeout(LIMIT, async {
        let nodes = started("calls-room", 3, &[]).await;
        let (n1, n2) = (nodes[0].api(), nodes[1].api());
        let ann = user(&n1, "ann").await;
        let ben = user(&n2, "ben").await;
        let mut a = socket(&nodes[0], &ann).await;
        let mut b = socket(&nodes[1], &ben).await;
        let id = call(&n1, &ann, &[ben.account]).await;
        expect_call(&mut b, "call_ringing", id).await;
        act(&n2, &ben, id, "accept").await.ok(200);
        // Ann first, through a node that does not own the calls (the room
        // opens there), Ben through the third: one room, on one node, and
        // its sessions' removal has to be asked of that node.
        let x = owner(&nodes).await;
        let (y, z) = ((x + 1) % 3, (x + 2) % 3);
        let mut ann_room = join_call_room(&nodes[y], &ann, id).await;
        let ben_room = join_call_room(&nodes[z], &ben, id).await;
        // The call learns both participants, wherever the room is.
        let mut joined = false;
        for _ in 0..100 {
            let v = n2
                .get(&format!("/api/v1/calls/{id}"), &ben.access)
                .await
                .ok(200);
            let members = v["call"]["members"].as_array().unwrap();
            if members.iter().all(|m| m["participant_id"].is_string()) {
                joined = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(joined, "the call never learnt its participants");
        // A stranger's token is refused by the call room on any node.
        let eve = user(&n1, "eve").await;
        let refused = SessionClient::join_at(
            &nodes[1].addr,
            &eve.access,
            Some(&format!("call-{id}")),
            None,
            false,
        )
        .await;
        assert!(refused.is_err(), "a stranger joined the call room");
        // Ben's session ends: he left, the 1:1 call ends, Ann's session is removed.
        let mut ben_room = ben_room;
        ben_room.ws.send(json!({"type": "leave"})).await;
        let end = expect_call(&mut a, "call_ended", id).await;
        assert_eq!(end["outcome"], "answered");
        expect_call(&mut b, "call_ended", id).await;
        let mut removed = false;
        for _ in 0..50 {
            ann_room.pump(Duration::from_millis(100)).await;
            if ann_room.saw_type("left") {
                removed = true;
                break;
            }
        }
        assert!(removed, "Ann's session stayed: {:?}", ann_room.seen);
        assert_eq!(records(&n1, &ann, id).await.len(), 1);
        assert_eq!(records(&n1, &ben, id).await.len(), 1);
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn the_owner_killed_mid_call_members_who_rejoin_keep_it_the_others_leave_once() {
    tokio::time::timeout(LIMIT, async {
        let nodes = started(
            "calls-failover",
            3,
            &[("VELA_CALLS_JOIN_TIMEOUT_MS", "4000")],
        )
        .await;
        let mut nodes = nodes;
        let x = owner(&nodes).await;
        // The two other nodes: the devices' sockets and the rejoins go there.
        let others: Vec<usize> = (0..3).filter(|i| *i != x).collect();
        let (y, z) = (others[0], others[1]);
        let (ny, nz) = (nodes[y].api(), nodes[z].api());
        let ann = user(&ny, "ann").await;
        let ben = user(&nz, "ben").await;
        let cat = user(&nz, "cat").await;
        let mut a = socket(&nodes[y], &ann).await;
        let mut b = socket(&nodes[z], &ben).await;
        let mut c = socket(&nodes[z], &cat).await;
        let id = call(&ny, &ann, &[ben.account, cat.account]).await;
        expect_call(&mut b, "call_ringing", id).await;
        expect_call(&mut c, "call_ringing", id).await;
        act(&nz, &ben, id, "accept").await.ok(200);
        act(&nz, &cat, id, "accept").await.ok(200);
        // All three in the room, which opens on the owner (Ann asks it first).
        let ann_room = join_call_room(&nodes[x], &ann, id).await;
        let ben_room = join_call_room(&nodes[x], &ben, id).await;
        let cat_room = join_call_room(&nodes[x], &cat, id).await;
        let before = nodes[y]
            .api()
            .get(&format!("/api/v1/calls/{id}"), &ann.access)
            .await
            .ok(200);
        assert_eq!(before["call"]["state"], "active");

        nodes.nodes[x].kill().await;
        drop((ann_room, ben_room, cat_room));
        // Another node takes the calls over and answers for the call.
        let mut taken = false;
        for _ in 0..100 {
            let r = ny.get(&format!("/api/v1/calls/{id}"), &ann.access).await;
            if r.status == 200 {
                assert_eq!(r.body["call"]["state"], "active", "{}", r.body);
                taken = true;
                break;
            }
            // Until then: 503 with Retry-After, never a wrong answer.
            assert_eq!(r.status, 503, "{}", r.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(taken, "no node took the calls over: {}", nodes.logs());
        // Ann and Ben rejoin (the room reopens on a live node); Cat does not.
        let _ann_room = rejoin(&nodes[y], &ann, id).await;
        let _ben_room = rejoin(&nodes[z], &ben, id).await;
        // After the join timeout Cat's part ends; the call goes on for the others.
        let end = ended_within(&mut c, id, Duration::from_secs(20)).await;
        assert_eq!(end["outcome"], "answered");
        let v = ny
            .get(&format!("/api/v1/calls/{id}"), &ann.access)
            .await
            .ok(200);
        assert_eq!(v["call"]["state"], "active", "{v}");
        assert_eq!(member_state(&v["call"], ann.account), "joined");
        assert_eq!(member_state(&v["call"], ben.account), "joined");
        assert_eq!(member_state(&v["call"], cat.account), "left");
        act(&ny, &ann, id, "leave").await.ok(200);
        for dev in [&mut a, &mut b] {
            assert_eq!(
                expect_call(dev, "call_ended", id).await["outcome"],
                "answered"
            );
        }
        // Each member's history has the call once.
        for who in [&ann, &ben, &cat] {
            let r = records(&nz, who, id).await;
            assert_eq!(r.len(), 1, "{}: {r:?}", who.username);
            assert_eq!(r[0]["outcome"], "answered");
        }
    })
    .await
    .expect("within the limit");
}

/// Whether `session`'s socket is still up after `d` (no `left`, no close).
async fn still_in(session: &mut SessionClient, d: Duration) -> bool {
    session.pump(d).await;
    !session.saw_type("left") && !session.saw_type("error")
}

#[tokio::test]
async fn the_owner_killed_while_the_room_lives_elsewhere_the_members_keep_the_call_as_they_are() {
    tokio::time::timeout(LIMIT, async {
        let mut nodes = started(
            "calls-owner-gone",
            3,
            &[("VELA_CALLS_JOIN_TIMEOUT_MS", "2000")],
        )
        .await;
        let x = owner(&nodes).await;
        let others: Vec<usize> = (0..3).filter(|i| *i != x).collect();
        let (y, z) = (others[0], others[1]);
        let (ny, nz) = (nodes[y].api(), nodes[z].api());
        let ann = user(&ny, "ann").await;
        let ben = user(&nz, "ben").await;
        let mut a = socket(&nodes[y], &ann).await;
        let mut b = socket(&nodes[z], &ben).await;
        let id = call(&ny, &ann, &[ben.account]).await;
        expect_call(&mut b, "call_ringing", id).await;
        act(&nz, &ben, id, "accept").await.ok(200);
        // The room opens on y (Ann asks first; no node holds a room yet).
        let mut ann_room = join_call_room(&nodes[y], &ann, id).await;
        let mut ben_room = join_call_room(&nodes[z], &ben, id).await;

        nodes.nodes[x].kill().await;
        // Past the lease's expiry and a whole join timeout after it: nobody
        // rejoined, yet both are still in the call (their nodes announced
        // their sessions to the new owner).
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(still_in(&mut ann_room, Duration::from_millis(500)).await);
        let mut active = false;
        for _ in 0..60 {
            let r = ny.get(&format!("/api/v1/calls/{id}"), &ann.access).await;
            if r.status == 200 {
                assert_eq!(r.body["call"]["state"], "active", "{}", r.body);
                active = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(active, "no node took the calls over: {}", nodes.logs());
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let v = nz
            .get(&format!("/api/v1/calls/{id}"), &ben.access)
            .await
            .ok(200);
        assert_eq!(v["call"]["state"], "active", "{v}");
        assert_eq!(member_state(&v["call"], ann.account), "joined");
        assert_eq!(member_state(&v["call"], ben.account), "joined");
        assert!(still_in(&mut ben_room, Duration::from_millis(200)).await);
        // Hanging up still works, and removes the other's session on its node.
        act(&nz, &ben, id, "leave").await.ok(200);
        assert_eq!(
            expect_call(&mut a, "call_ended", id).await["outcome"],
            "answered"
        );
        assert!(!still_in(&mut ann_room, Duration::from_secs(3)).await);
        for who in [&ann, &ben] {
            assert_eq!(records(&ny, who, id).await.len(), 1);
        }
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn the_rooms_node_killed_members_who_rejoin_keep_the_call_the_others_leave_once() {
    tokio::time::timeout(LIMIT, async {
        let mut nodes = started(
            "calls-room-gone",
            3,
            &[("VELA_CALLS_JOIN_TIMEOUT_MS", "4000")],
        )
        .await;
        let x = owner(&nodes).await;
        let others: Vec<usize> = (0..3).filter(|i| *i != x).collect();
        // y serves the room and is killed; devices are on x (the owner) and z.
        let (y, z) = (others[0], others[1]);
        let (nx, nz) = (nodes[x].api(), nodes[z].api());
        let ann = user(&nx, "ann").await;
        let ben = user(&nz, "ben").await;
        let cat = user(&nz, "cat").await;
        let mut a = socket(&nodes[x], &ann).await;
        let mut b = socket(&nodes[z], &ben).await;
        let mut c = socket(&nodes[z], &cat).await;
        let id = call(&nx, &ann, &[ben.account, cat.account]).await;
        expect_call(&mut b, "call_ringing", id).await;
        expect_call(&mut c, "call_ringing", id).await;
        act(&nz, &ben, id, "accept").await.ok(200);
        act(&nz, &cat, id, "accept").await.ok(200);
        let rooms = [
            join_call_room(&nodes[y], &ann, id).await,
            join_call_room(&nodes[y], &ben, id).await,
            join_call_room(&nodes[y], &cat, id).await,
        ];
        nodes.nodes[y].kill().await;
        drop(rooms);
        // Ann and Ben rejoin through the live nodes; Cat does not.
        let _rejoined = [
            rejoin(&nodes[x], &ann, id).await,
            rejoin(&nodes[z], &ben, id).await,
        ];
        // The owner sees the node gone: Cat has the join timeout, then leaves.
        let end = ended_within(&mut c, id, Duration::from_secs(20)).await;
        assert_eq!(end["outcome"], "answered");
        let v = nx
            .get(&format!("/api/v1/calls/{id}"), &ann.access)
            .await
            .ok(200);
        assert_eq!(v["call"]["state"], "active", "{v}");
        assert_eq!(member_state(&v["call"], ann.account), "joined");
        assert_eq!(member_state(&v["call"], ben.account), "joined");
        assert_eq!(member_state(&v["call"], cat.account), "left");
        // Still so a join timeout later: the rejoins were taken.
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        let v = nz
            .get(&format!("/api/v1/calls/{id}"), &ben.access)
            .await
            .ok(200);
        assert_eq!(v["call"]["state"], "active", "{v}");
        act(&nx, &ann, id, "leave").await.ok(200);
        for dev in [&mut a, &mut b] {
            assert_eq!(
                expect_call(dev, "call_ended", id).await["outcome"],
                "answered"
            );
        }
        for who in [&ann, &ben, &cat] {
            let r = records(&nx, who, id).await;
            assert_eq!(r.len(), 1, "{}: {r:?}", who.username);
        }
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn while_redis_is_away_calls_answer_503_and_a_call_goes_on_once_it_is_back() {
    tokio::time::timeout(LIMIT, async {
        let mut nodes = started("calls-redis", 2, &[("VELA_CALLS_JOIN_TIMEOUT_MS", "3000")]).await;
        let (n1, n2) = (nodes[0].api(), nodes[1].api());
        let ann = user(&n1, "ann").await;
        let ben = user(&n2, "ben").await;
        let mut b = socket(&nodes[1], &ben).await;
        let id = call(&n1, &ann, &[ben.account]).await;
        expect_call(&mut b, "call_ringing", id).await;
        act(&n2, &ben, id, "accept").await.ok(200);
        let mut ann_room = join_call_room(&nodes[0], &ann, id).await;
        let mut ben_room = join_call_room(&nodes[1], &ben, id).await;

        nodes.redis.stop();
        // Every node refuses call operations with 503 and Retry-After
        // (the owner once its lease can no longer be renewed).
        for (i, api) in [&n1, &n2].into_iter().enumerate() {
            let mut refused = None;
            for _ in 0..40 {
                let r = api.get(&format!("/api/v1/calls/{id}"), &ann.access).await;
                if r.status == 503 {
                    refused = Some(r);
                    break;
                }
                assert_eq!(r.status, 200, "{}", r.body);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let r = refused.unwrap_or_else(|| panic!("node {i} kept answering without Redis"));
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=5).contains(&retry), "{retry}");
        }
        // The room's media goes on meanwhile (rooms do not need the calls).
        assert!(still_in(&mut ann_room, Duration::from_millis(300)).await);

        nodes.redis.restart();
        // A node takes the calls back from their journal, the nodes announce
        // the sessions, and the call is still on after a whole join timeout.
        let mut back = false;
        for _ in 0..100 {
            let r = n2.get(&format!("/api/v1/calls/{id}"), &ben.access).await;
            if r.status == 200 {
                assert_eq!(r.body["call"]["state"], "active", "{}", r.body);
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "the calls never came back: {}", nodes.logs());
        tokio::time::sleep(Duration::from_millis(3_500)).await;
        let v = n1
            .get(&format!("/api/v1/calls/{id}"), &ann.access)
            .await
            .ok(200);
        assert_eq!(v["call"]["state"], "active", "{v}");
        assert!(still_in(&mut ben_room, Duration::from_millis(200)).await);
        act(&n1, &ann, id, "leave").await.ok(200);
        for who in [&ann, &ben] {
            assert_eq!(records(&n2, who, id).await.len(), 1);
        }
    })
    .await
    .expect("within the limit");
}

#[tokio::test]
async fn a_call_moves_to_a_device_on_another_node() {
    tokio::time::timeout(LIMIT, async {
        let nodes = started("calls-handover", 3, &[]).await;
        let (n1, n2, n3) = (nodes[0].api(), nodes[1].api(), nodes[2].api());
        let ann = user(&n1, "ann").await;
        let ben = user(&n2, "ben").await;
        let ben_desk = n3.login("ben", PW, "desktop", "Ben's desk").await;
        let mut bd = socket(&nodes[2], &ben_desk).await;
        let id = call(&n1, &ann, &[ben.account]).await;
        expect_call(&mut bd, "call_ringing", id).await;
        let room = format!("call-{id}");
        let mut ann_s = join_call_room(&nodes[0], &ann, id).await;
        act(&n2, &ben, id, "accept").await.ok(200);
        // The phone (node 2) is in the call; the desk (node 3) may not join
        // without taking it over.
        let e = SessionClient::join_at(&nodes[2].addr, &ben_desk.access, Some(&room), None, false)
            .await
            .err()
            .unwrap();
        assert_eq!(e["code"], 403, "the call is on the phone: {e}");
        let mut phone = join_call_room(&nodes[1], &ben, id).await;
        // Every device of Ben's, on any node, learns the participant to take over.
        let upd = bd
            .wait_for("ben's participant id", |m| {
                m["type"] == "call_updated"
                    && m["call"]["members"][1]["participant_id"].as_str() == Some(phone.id.as_str())
            })
            .await;
        let pid = upd["call"]["members"][1]["participant_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut desk = SessionClient::join_at(
            &nodes[2].addr,
            &ben_desk.access,
            Some(&room),
            Some(&pid),
            false,
        )
        .await
        .unwrap_or_else(|e| panic!("the desk could not take over: {e}"));
        assert_eq!(desk.joined["participant"]["id"], pid.as_str());
        let mut handed = false;
        for _ in 0..50 {
            tokio::join!(
                phone.pump(Duration::from_millis(100)),
                desk.pump(Duration::from_millis(100)),
                ann_s.pump(Duration::from_millis(100)),
            );
            if phone.saw_type("left") {
                handed = true;
                break;
            }
        }
        assert!(handed, "the phone kept the call: {:?}", phone.seen);
        let left = phone.seen.iter().find(|m| m["type"] == "left").unwrap();
        assert_eq!(left["reason"], "handed_over");
        // The call goes on, on the desk, for everyone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let v = n1
            .get(&format!("/api/v1/calls/{id}"), &ann.access)
            .await
            .ok(200);
        assert_eq!(v["call"]["state"], "active", "{v}");
        let m = &v["call"]["members"][1];
        assert_eq!(m["device_id"], ben_desk.device);
        assert_eq!(m["participant_id"], pid.as_str());
        assert!(!ann_s.saw_type("left"), "{:?}", ann_s.seen);
        // Hanging up on the desk ends it; the history notes the move, once.
        desk.ws.send(json!({"type": "leave"})).await;
        let r = records(&n1, &ben, id).await;
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0]["device_id"], ben.device);
        assert_eq!(r[0]["handed_over_to"], json!([ben_desk.device]));
        assert_eq!(records(&n2, &ann, id).await[0]["outcome"], "answered");
    })
    .await
    .expect("within the limit");
}
