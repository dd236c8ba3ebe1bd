//! Chromium pages in one room spread over three nodes (issue 19): each node
//! holds one participant (`cluster.max_participants_per_node` = 1), the
//! nodes relay the room's media to each other over QUIC, every page decodes
//! the others, only the layers a subscriber renders cross a link, and when
//! a node is killed its page joins again on a live node and receives again
//! within 3 s.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::{self, Client, Harness, TestResult, count, poll, run_js};
use crate::browser_rooms::{JOIN, STATE, STATS};
use crate::nodes::{HEARTBEAT_MS, Node, Nodes};
use crate::rooms::service_token;
use crate::spread::spreading;

/// The participants each node of `nodes` has (its registry entry).
async fn participants(of: &Node, nodes: &Nodes) -> Vec<u64> {
    let listed = of
        .api()
        .get("/api/v1/cluster/nodes", &service_token())
        .await
        .ok(200);
    let listed = listed["nodes"].as_array().unwrap().clone();
    nodes
        .nodes
        .iter()
        .map(|n| {
            listed
                .iter()
                .find(|l| l["id"] == n.id.as_str())
                .map_or(0, |l| l["participants"].as_u64().unwrap())
        })
        .collect()
}

/// The values of `vela_{name}{labels}` series on `node`'s `/metrics`, by
/// their labels.
async fn series(node: &Node, name: &str) -> Vec<(String, f64)> {
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
    let prefix = format!("vela_{name}{{");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (labels, value) = rest.split_once("} ")?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chromium_on_three_nodes_of_one_room_see_each_other_and_a_killed_nodes_page_comes_back_within_3_s()
 {
    let mut nodes = tokio::time::timeout(Duration::from_secs(30), async {
        let env = spreading(1);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let nodes = Nodes::start("spread-browser", 3, &env).await;
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
        "cluster_spread_browser",
        Duration::from_secs(150),
        async |h: &Harness| scenario(h, &mut nodes).await,
    )
    .await;
}

/// Each page of `pages` (label, page, participant id) receives every
/// other's video and audio.
async fn all_receive(pages: &[(&str, &Client, String)], what: &str) -> TestResult<Vec<Value>> {
    poll(what, Duration::from_secs(30), async || {
        let mut seen = Vec::new();
        let mut missing = Vec::new();
        for (label, page, _) in pages {
            let s = run_js(*page, STATS, vec![]).await?;
            for (other, _, id) in pages {
                if other != label && (count(&s, "video", id) <= 10 || count(&s, "audio", id) <= 20)
                {
                    missing.push(format!("{label} <- {other}: {s}"));
                }
            }
            seen.push(s);
        }
        Ok(if missing.is_empty() {
            Ok(seen)
        } else {
            Err(missing.join("; "))
        })
    })
    .await
}

async fn scenario(h: &Harness, nodes: &mut Nodes) -> TestResult {
    let room = "spread-e2e";
    let settle = Duration::from_millis(3 * HEARTBEAT_MS);
    // P on node 1 (the room opens there; node 1 is then full).
    let p = h
        .open_url("P", &format!("{}/?room={room}&name=P", nodes[0].base()))
        .await?;
    let id_p = run_js(&p, JOIN, vec![json!(room), json!("P")]).await?;
    tokio::time::sleep(settle).await;
    // S3 through node 3: node 1 is full, node 3 takes it (itself on a tie).
    let s3 = h
        .open_url("S3", &format!("{}/?room={room}&name=S3", nodes[2].base()))
        .await?;
    let id_s3 = run_js(&s3, JOIN, vec![json!(room), json!("S3")]).await?;
    tokio::time::sleep(settle).await;
    // S2 through node 3 too: nodes 1 and 3 are full, node 2 takes it (the
    // socket proxied there), so that killing node 2 leaves S2's page a
    // live node to join again through.
    let s2 = h
        .open_url("S2", &format!("{}/?room={room}&name=S2", nodes[2].base()))
        .await?;
    let id_s2 = run_js(&s2, JOIN, vec![json!(room), json!("S2")]).await?;
    let ids = |v: Value| v.as_str().unwrap_or("").to_owned();
    let (id_p, id_s2, id_s3) = (ids(id_p), ids(id_s2), ids(id_s3));
    poll(
        "one participant per node",
        Duration::from_secs(5),
        async || {
            let spread = participants(&nodes[0], nodes).await;
            Ok(if spread == [1, 1, 1] {
                Ok(())
            } else {
                Err(format!("{spread:?}"))
            })
        },
    )
    .await?;
    let pages = [
        ("P", &p, id_p.clone()),
        ("S2", &s2, id_s2),
        ("S3", &s3, id_s3),
    ];
    let seen = all_receive(&pages, "each page decodes the two others (over the relay)")
        .await
        .map_err(|e| format!("{e}\n{}", nodes.logs()))?;
    eprintln!("media flowing over three nodes: {seen:?}");
    // Node 1 sends each other node P's audio and the one video layer its
    // page renders (tiles are small): two layers per link, while P
    // publishes its simulcast layers.
    let layers = poll(
        "only the layers rendered cross",
        Duration::from_secs(10),
        async || {
            let sent = series(&nodes[0], "relay_core_layers_sent").await;
            let to = |node: &str| {
                sent.iter()
                    .filter(|(l, _)| l.contains(&format!("peer=\"{node} shard")))
                    .map(|(_, v)| *v)
                    .sum::<f64>()
            };
            let (n2, n3) = (to("n2"), to("n3"));
            Ok(if n2 == 2.0 && n3 == 2.0 {
                Ok((n2, n3))
            } else {
                Err(format!("layers sent to n2 {n2}, n3 {n3}: {sent:?}"))
            })
        },
    )
    .await?;
    eprintln!(
        "layers node 1 sends: to n2 {}, to n3 {}",
        layers.0, layers.1
    );
    let up = series(&nodes[0], "relay_link_up").await;
    if up.iter().filter(|(_, v)| *v == 1.0).count() != 2 {
        return Err(format!("node 1's relay links: {up:?}").into());
    }

    // Node 2 dies: S2's page notices (its proxy closes), joins again through
    // node 3 and is placed on a live node; it receives P again within 3 s.
    nodes[1].kill().await;
    let killed = Instant::now();
    let back = poll(
        "S2 joins again and receives P",
        Duration::from_secs(15),
        async || {
            let state = run_js(&s2, STATE, vec![]).await?;
            if state["joined"] != true || state["rejoins"].as_u64().unwrap_or(0) < 1 {
                return Ok(Err(format!("{state}")));
            }
            let stats = run_js(&s2, STATS, vec![]).await?;
            Ok(if count(&stats, "video", &id_p) > 0 {
                Ok(killed.elapsed())
            } else {
                Err(format!("{state} {stats}"))
            })
        },
    )
    .await
    .map_err(|e| format!("{e}\n{}", nodes.logs()))?;
    eprintln!("S2 decodes P's video again {back:.2?} after node 2 was killed");
    if back > Duration::from_secs(3) {
        return Err(
            format!("S2 received P again only {back:.2?} after the kill (limit 3 s)").into(),
        );
    }
    // The room goes on: P and S3 (never on node 2) still get each other,
    // and everyone gets S2 back as its new participant.
    let state = run_js(&s2, STATE, vec![]).await?;
    let id_s2 = state["id"].as_str().unwrap_or("").to_owned();
    let id_s3 = pages[2].2.clone();
    let before = run_js(&s3, STATS, vec![]).await?;
    let pages = [
        ("P", &p, id_p.clone()),
        ("S2", &s2, id_s2),
        ("S3", &s3, id_s3),
    ];
    all_receive(&pages, "the three pages receive each other again")
        .await
        .map_err(|e| format!("{e}\n{}", nodes.logs()))?;
    let after = run_js(&s3, STATS, vec![]).await?;
    if count(&after, "video", &id_p) <= count(&before, "video", &id_p) {
        return Err(format!("S3 stopped decoding P: {before} then {after}").into());
    }
    Ok(())
}
