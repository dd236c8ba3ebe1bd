//! What crossing nodes costs: a push published on node 1 until it arrives
//! on a device socket of node 2 (and, for comparison, of node 1), and the
//! API call that made it. A benchmark run by hand (BENCHMARKS.md):
//!
//! ```text
//! cargo test -p vela-signaling --test cluster bench -- --ignored --nocapture
//! ```
//!
//! `VELA_BENCH_SAMPLES` (default 300) edits and as many presence changes,
//! one at a time; bounded in count and time. `VELA_BENCH_SINGLE=1`: the
//! baseline, one node without Redis ("node 2" is node 1 too).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::common::Ws;
use crate::nodes::Nodes;

const PASSWORD: &str = "correct horse battery";

/// A device socket that notes when each push arrived.
struct Probe {
    seen: mpsc::UnboundedReceiver<(Instant, Value)>,
    send: mpsc::UnboundedSender<String>,
}

impl Probe {
    async fn connect(addr: &str, token: &str) -> Probe {
        let mut ws = Ws::connect_addr(addr, "/api/v1/ws").await;
        ws.send(json!({"type": "auth", "token": token})).await;
        ws.expect("ready").await;
        let (mut sink, mut stream) = ws.inner.split();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (send, mut send_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                if let Message::Text(t) = m {
                    let _ = seen_tx.send((Instant::now(), serde_json::from_str(&t).unwrap()));
                }
            }
        });
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(Duration::from_secs(2));
            loop {
                let text = tokio::select! {
                    t = send_rx.recv() => match t { Some(t) => t, None => return },
                    _ = beat.tick() => r#"{"type":"heartbeat"}"#.to_owned(),
                };
                if sink.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
        });
        Probe { seen, send }
    }

    /// When the first message satisfying `pred` arrived (5 s at most).
    async fn arrival(&mut self, pred: impl Fn(&Value) -> bool) -> Instant {
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(end, self.seen.recv()).await {
                Ok(Some((at, m))) if pred(&m) => return at,
                Ok(Some(_)) => {}
                _ => panic!("no push in time"),
            }
        }
    }
}

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i].as_secs_f64() * 1e3
    };
    eprintln!(
        "{name:<48} n={:<4} p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms",
        samples.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[tokio::test]
#[ignore = "a benchmark, run by hand: see BENCHMARKS.md"]
async fn cross_node_push_and_api_call_latency() {
    let samples: usize = std::env::var("VELA_BENCH_SAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
        .clamp(10, 5_000);
    tokio::time::timeout(Duration::from_secs(600), async {
        let single = std::env::var("VELA_BENCH_SINGLE").is_ok_and(|v| v == "1");
        let nodes = if single {
            // The later setting wins: no Redis, the local bus and presence.
            Nodes::start("bench", 1, &[("VELA_CLUSTER_REDIS_URL", "")]).await
        } else {
            Nodes::start("bench", 2, &[]).await
        };
        let second = nodes.nodes.len() - 1;
        for n in &nodes.nodes {
            assert!(n.wait_ready(true, Duration::from_secs(10)).await);
        }
        let (n1, n2) = (nodes[0].api(), nodes[second].api());
        n1.register("mia", PASSWORD).await;
        n1.register("bob", PASSWORD).await;
        let phone = n1.login("mia", PASSWORD, "phone", "Mia's phone").await;
        let desk = n2.login("mia", PASSWORD, "desktop", "Mia's desk").await;
        let bob = n2.login("bob", PASSWORD, "desktop", "Bob's desk").await;
        n1.link(&phone, &bob).await;
        let mut here = Probe::connect(&nodes[0].addr, &phone.access).await;
        let mut there = Probe::connect(&nodes[second].addr, &desk.access).await;
        let mut contact_there = Probe::connect(&nodes[second].addr, &bob.access).await;

        // A contact edit on node 1: the API call, and its push on both nodes.
        let c = n1
            .post(
                "/api/v1/contacts",
                Some(&phone.access),
                json!({"display_name": "Ann"}),
            )
            .await
            .ok(201);
        let path = format!("/api/v1/contacts/{}", c["id"]);
        let (mut api, mut local, mut remote) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..samples {
            let version = i as i64 + 1;
            let t0 = Instant::now();
            n1.put(
                &path,
                &phone.access,
                json!({"display_name": format!("Ann {i}"), "version": version}),
            )
            .await
            .ok(200);
            api.push(t0.elapsed());
            let is_it = |m: &Value| {
                m["type"] == "contact_changed" && m["contact"]["version"] == version + 1
            };
            local.push(here.arrival(is_it).await - t0);
            remote.push(there.arrival(is_it).await - t0);
        }
        percentiles("API call: PUT /contacts/{id} on node 1", api);
        percentiles("contact edit -> push on a node 1 socket", local);
        percentiles("contact edit -> push on a node 2 socket", remote);

        // A presence change sent on a node 1 socket, pushed to the account's
        // own socket there and to a contact's on node 2.
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        for i in 0..samples {
            // Below the socket's limits.messages_per_second (100).
            tokio::time::sleep(Duration::from_millis(15)).await;
            let status = if i % 2 == 0 { "dnd" } else { "online" };
            let t0 = Instant::now();
            here.send
                .send(json!({"type": "set_presence", "status": status}).to_string())
                .unwrap();
            let is_it = |m: &Value| {
                m["type"] == "presence" && m["account_id"] == phone.account && m["status"] == status
            };
            local.push(here.arrival(is_it).await - t0);
            remote.push(contact_there.arrival(is_it).await - t0);
        }
        percentiles("presence change -> push on a node 1 socket", local);
        percentiles("presence change -> push on a node 2 socket", remote);
    })
    .await
    .expect("benchmark timed out");
}
