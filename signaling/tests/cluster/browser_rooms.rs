//! Chromium in a cluster: the web page served by node 2 joins a room that
//! lives on node 1 (its room socket proxied there, its media on node 1's
//! port), and sees and hears a Chromium participant that joined on node 1;
//! pages whose room's node is killed join again by themselves, and the room
//! reopens on a live node.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::{self, Client, Harness, TestResult, count, poll, run_js};
use crate::nodes::Nodes;
use crate::rooms::{rooms_on, service_token};

/// `window.vela.join(room, name)`; returns the participant id.
pub(crate) const JOIN: &str = r#"
const [room, name] = args;
await window.vela.join(room, name);
if (!window.vela.joined || !window.vela.participantId) throw new Error('join resolved but vela.joined=' + window.vela.joined);
return window.vela.participantId;
"#;

/// `{video: {pid: framesDecoded}, audio: {pid: packetsReceived}}`.
pub(crate) const STATS: &str = "return await window.vela.stats();";

/// Whether the page is in a room, as whom, and how often it joined again.
pub(crate) const STATE: &str = "return { joined: window.vela.joined, id: window.vela.participantId, rejoins: window.vela.counters().rejoins };";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_on_node_2_and_on_node_1_see_each_other_in_a_room_on_node_1() {
    let nodes = tokio::time::timeout(Duration::from_secs(30), async {
        let nodes = Nodes::start("rooms-browser", 2, &[]).await;
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(10)).await,
                "{}",
                nodes.logs()
            );
        }
        nodes
    })
    .await
    .expect("the nodes started in time");
    browser::run(
        "cluster_browser",
        Duration::from_secs(120),
        async |h: &Harness| scenario(h, &nodes).await,
    )
    .await;
}

async fn scenario(h: &Harness, nodes: &Nodes) -> TestResult {
    let room = "cluster-e2e";
    // On node 1 first: the room opens there.
    let one = h
        .open_url("N1", &format!("{}/?room={room}&name=N1", nodes[0].base()))
        .await?;
    let id1 = run_js(&one, JOIN, vec![json!(room), json!("N1")]).await?;
    // Node 2's page: its socket is proxied to node 1.
    let two = h
        .open_url("N2", &format!("{}/?room={room}&name=N2", nodes[1].base()))
        .await?;
    let id2 = run_js(&two, JOIN, vec![json!(room), json!("N2")]).await?;
    let (id1, id2) = (id1.as_str().unwrap_or(""), id2.as_str().unwrap_or(""));
    eprintln!("N1 joined as {id1} via n1, N2 as {id2} via n2");
    if rooms_on(&nodes[0]).await != [(room.to_owned(), 2)] || !rooms_on(&nodes[1]).await.is_empty()
    {
        return Err(format!(
            "the room is not on node 1 alone: n1 {:?}, n2 {:?}",
            rooms_on(&nodes[0]).await,
            rooms_on(&nodes[1]).await
        )
        .into());
    }
    let seen = poll(
        "each decodes the other's video and receives its audio",
        Duration::from_secs(20),
        async || {
            let s1 = run_js(&one, STATS, vec![]).await?;
            let s2 = run_js(&two, STATS, vec![]).await?;
            let ok = |s: &Value, other: &str| {
                count(s, "video", other) > 10 && count(s, "audio", other) > 20
            };
            Ok(if ok(&s1, id2) && ok(&s2, id1) {
                Ok((s1, s2))
            } else {
                Err(format!("N1 {s1}; N2 {s2}"))
            })
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", nodes.logs()))?;
    eprintln!("media flowing: N1 {} / N2 {}", seen.0, seen.1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pages_rejoin_by_themselves_when_their_rooms_node_is_killed() {
    let mut nodes = tokio::time::timeout(Duration::from_secs(30), async {
        let nodes = Nodes::start("rooms-browser-kill", 3, &[]).await;
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(10)).await,
                "{}",
                nodes.logs()
            );
        }
        nodes
    })
    .await
    .expect("the nodes started in time");
    browser::run(
        "cluster_browser_kill",
        Duration::from_secs(120),
        async |h: &Harness| kill_scenario(h, &mut nodes).await,
    )
    .await;
}

/// Each page receives the other's video and audio.
async fn both_receive(a: &Client, b: &Client, what: &str) -> TestResult<(Value, Value)> {
    poll(what, Duration::from_secs(30), async || {
        let (sa, sb) = (
            run_js(a, STATE, vec![]).await?,
            run_js(b, STATE, vec![]).await?,
        );
        let (ida, idb) = (
            sa["id"].as_str().unwrap_or("").to_owned(),
            sb["id"].as_str().unwrap_or("").to_owned(),
        );
        if sa["joined"] != true || sb["joined"] != true {
            return Ok(Err(format!("A {sa}; B {sb}")));
        }
        let (ta, tb) = (
            run_js(a, STATS, vec![]).await?,
            run_js(b, STATS, vec![]).await?,
        );
        let ok =
            |s: &Value, other: &str| count(s, "video", other) > 10 && count(s, "audio", other) > 20;
        Ok(if ok(&ta, &idb) && ok(&tb, &ida) {
            Ok((sa, sb))
        } else {
            Err(format!("A {sa} {ta}; B {sb} {tb}"))
        })
    })
    .await
}

async fn kill_scenario(h: &Harness, nodes: &mut Nodes) -> TestResult {
    let room = "cluster-kill";
    // The room opens on node 1 (created there, kept open while empty).
    let created = nodes[0]
        .api()
        .post(
            "/api/v1/rooms",
            Some(&service_token()),
            json!({"name": room, "empty_timeout": 60}),
        )
        .await;
    if created.status != 200 {
        return Err(format!("creating the room on node 1: {created:?}").into());
    }
    // Pages on nodes 2 and 3: both relayed to node 1.
    let a = h
        .open_url("A", &format!("{}/?room={room}&name=A", nodes[1].base()))
        .await?;
    run_js(&a, JOIN, vec![json!(room), json!("A")]).await?;
    let b = h
        .open_url("B", &format!("{}/?room={room}&name=B", nodes[2].base()))
        .await?;
    run_js(&b, JOIN, vec![json!(room), json!("B")]).await?;
    if rooms_on(&nodes[0]).await != [(room.to_owned(), 2)] {
        return Err(format!("the room is not on node 1: {:?}", rooms_on(&nodes[0]).await).into());
    }
    let before = both_receive(&a, &b, "A and B receive each other through node 1").await?;
    eprintln!("before: A {} / B {}", before.0, before.1);

    nodes[0].kill().await;
    let killed = std::time::Instant::now();
    // Each page's resume fails (its node is gone); it joins again, and once
    // node 1's timeout has passed the room opens on node 2 or 3.
    let after = both_receive(&a, &b, "A and B rejoin and receive each other again")
        .await
        .map_err(|e| format!("{e}\n{}", nodes.logs()))?;
    eprintln!(
        "after {:.1?}: A {} / B {}",
        killed.elapsed(),
        after.0,
        after.1
    );
    for (s, who) in [(&after.0, "A"), (&after.1, "B")] {
        if s["rejoins"].as_u64().unwrap_or(0) < 1 {
            return Err(format!("{who} did not count a rejoin: {s}").into());
        }
    }
    let mut homes = Vec::new();
    for k in [1, 2] {
        if rooms_on(&nodes[k]).await.iter().any(|(r, _)| r == room) {
            homes.push(nodes[k].id.clone());
        }
    }
    if homes.len() != 1 {
        return Err(format!("the room reopened on {homes:?}, not on one live node").into());
    }
    Ok(())
}
