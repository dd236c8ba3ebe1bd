//! Chromium in a cluster: the web page served by node 2 joins a room that
//! lives on node 1 (its room socket proxied there, its media on node 1's
//! port), and sees and hears a Chromium participant that joined on node 1.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::{self, Harness, TestResult, count, poll, run_js};
use crate::nodes::Nodes;
use crate::rooms::rooms_on;

/// `window.vela.join(room, name)`; returns the participant id.
const JOIN: &str = r#"
const [room, name] = args;
await window.vela.join(room, name);
if (!window.vela.joined || !window.vela.participantId) throw new Error('join resolved but vela.joined=' + window.vela.joined);
return window.vela.participantId;
"#;

/// `{video: {pid: framesDecoded}, audio: {pid: packetsReceived}}`.
const STATS: &str = "return await window.vela.stats();";

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
