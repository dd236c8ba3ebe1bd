//! ICE over TCP where UDP is blocked: Bob's Chromium runs in a network
//! namespace whose nftables rules drop all UDP, in and out, so the only way
//! to the media is the server's one TCP port (`media.tcp_port`, passive TCP
//! candidates in every answer).
//!
//! - The page joins a room with Alice (on the host, UDP open); media
//!   decodes both ways; Bob's selected candidate pair is TCP to the
//!   server's TCP port, Alice's stays UDP (UDP is preferred where it works).
//! - WHIP publish and WHEP view from Bob's namespace connect over TCP too,
//!   and the viewer decodes the publisher. Their room is on the server's
//!   second media shard, the page's on the first: one TCP port serves both.
//! - /metrics counts the TCP connections and their frames.
//!
//! Needs root (namespaces, nftables), Chromium and chromedriver.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod netns;
mod quality;

use std::net::IpAddr;
use std::time::Duration;

use browser::whip_whep::negotiate;
use browser::{Client, Harness, TestResult, run_js};
use serde_json::{Value, json};

const ROOM: &str = "tcp";
const WHIP_ROOM: &str = "tcp-whip";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_crosses_a_network_without_udp_over_ice_tcp() {
    quality::require_root();
    let link = netns::Link::new().expect("network namespace");
    let mut config = browser::netns_config(&[IpAddr::V4(link.host_ip)]);
    config.media.shards = 2;
    browser::run_with("browser_tcp", Duration::from_secs(150), config, async |h| {
        scenario(h, &link).await
    })
    .await;
}

async fn scenario(h: &Harness, link: &netns::Link) -> TestResult {
    link.drop_udp()?;
    let tcp_port = h.tcp_port().ok_or("the server listens on no TCP port")?;
    eprintln!("namespace: no UDP; ICE over TCP on port {tcp_port}");
    let host = IpAddr::V4(link.host_ip);
    let page = format!("/?room={ROOM}");
    let bob = h.open_in_netns("bob", &link.ns, host, &page).await?;
    let alice = h.open("alice", &page).await?;

    // The room: media both ways, Bob over TCP, Alice over UDP.
    let a = quality::join(&alice, ROOM, "alice").await?;
    let b = quality::join(&bob, ROOM, "bob").await?;
    quality::frames_grow(&bob, &a, 20, Duration::from_secs(20)).await?;
    quality::frames_grow(&alice, &b, 20, Duration::from_secs(15)).await?;
    let selected = selected_pair(&bob, "window.vela.pc").await?;
    eprintln!("bob's selected pair: {selected}");
    expect_tcp("bob's room session", &selected, tcp_port)?;
    let selected = selected_pair(&alice, "window.vela.pc").await?;
    eprintln!("alice's selected pair: {selected}");
    if selected["protocol"] != "udp" {
        return Err(format!("alice (UDP open) should keep UDP: {selected}").into());
    }

    // WHIP and WHEP from the namespace, to a room on the other shard.
    negotiate(h, &bob, "whip", [WHIP_ROOM, "bob-whip", "Bob WHIP"]).await?;
    negotiate(h, &bob, "whep", [WHIP_ROOM, "bob-whep", "Bob WHEP"]).await?;
    let media = h.media().ok_or("no media handle")?;
    let shards = [ROOM, WHIP_ROOM].map(|r| {
        vela_media::core::RoomId::new(r)
            .ok()
            .and_then(|r| media.shard_of_room(&r))
    });
    if shards != [Some(0), Some(1)] {
        return Err(format!("expected the rooms on shards 0 and 1, got {shards:?}").into());
    }
    let received = browser::whip_whep::whep_receives(
        &bob,
        "the WHEP viewer decodes the WHIP publisher's media, both over TCP",
    )
    .await?;
    eprintln!("WHEP received: {received}");
    for key in ["whip", "whep"] {
        let selected = selected_pair(&bob, &format!("window.{key}.pc")).await?;
        eprintln!("{key}'s selected pair: {selected}");
        expect_tcp(key, &selected, tcp_port)?;
    }

    // The server counts them: three connections, frames both ways.
    let metrics = reqwest::get(format!("{}/metrics", h.base_url))
        .await?
        .text()
        .await?;
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let open = value("vela_ice_tcp_connections");
    let (frames_in, frames_out) = (
        value("vela_ice_tcp_frames_received_total"),
        value("vela_ice_tcp_frames_sent_total"),
    );
    eprintln!("/metrics: {open} TCP connections, {frames_in} frames in, {frames_out} out");
    if open < 3.0 || frames_in < 100.0 || frames_out < 100.0 {
        return Err(
            format!("/metrics: expected 3 TCP connections carrying media:\n{metrics}").into(),
        );
    }
    Ok(())
}

/// The selected candidate pair of the peer connection `pc` (a JavaScript
/// expression): its local candidate's protocol and type, and the remote
/// candidate's address, port and protocol.
async fn selected_pair(page: &Client, pc: &str) -> TestResult<Value> {
    let body = format!(
        r#"
const pc = {pc};
const stats = await pc.getStats();
let pair = null;
stats.forEach((s) => {{ if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); }});
if (!pair) stats.forEach((s) => {{ if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; }});
const local = pair && stats.get(pair.localCandidateId);
const remote = pair && stats.get(pair.remoteCandidateId);
return {{
  protocol: local && local.protocol, candidateType: local && local.candidateType,
  tcpType: local && local.tcpType,
  remoteProtocol: remote && remote.protocol, remotePort: remote && remote.port,
  remoteAddress: remote && remote.address,
}};
"#
    );
    run_js(page, &body, vec![]).await
}

fn expect_tcp(what: &str, pair: &Value, tcp_port: u16) -> TestResult {
    if pair["protocol"] == "tcp"
        && pair["remoteProtocol"] == "tcp"
        && pair["remotePort"] == json!(tcp_port)
    {
        Ok(())
    } else {
        Err(format!("{what}: expected a TCP pair to port {tcp_port}, got {pair}").into())
    }
}
