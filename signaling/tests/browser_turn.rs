//! TURN over TLS where the network lets through neither UDP nor TCP to the
//! media ports: Bob's Chromium runs in a network namespace whose nftables
//! rules drop all UDP and all TCP but to the web server and to coturn's
//! TLS port, so only TURN over TLS (coturn, started by the test) is left.
//!
//! - The page joins with the ICE servers of `joined` and media decodes both
//!   ways with Alice (on the host); Bob's selected local candidate is a
//!   relay reached over TLS. A resume hands Bob new credentials, and an
//!   ICE restart then allocates a new relay with them; media goes on.
//! - WHIP publish and WHEP view from Bob's namespace through the same relay,
//!   with the servers of the `Link` headers.
//! - Credentials: a fresh one gathers a relay candidate; an expired one and
//!   one made with a wrong secret are refused (401, no relay candidate).
//! - Chromium checks the TURN server's certificate: without the flag that
//!   trusts the test's certificate (`--ignore-certificate-errors-spki-list`)
//!   no relay candidate is gathered, with it one is.
//!
//! Needs root (namespaces, nftables), Chromium, chromedriver and coturn
//! (scripts/test.sh installs it).

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod browser;
mod netns;
mod quality;

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use browser::{Client, Harness, TestResult, poll, run_js};
use serde_json::{Value, json};
use vela_signaling::domain::ice::TurnCredential;
use vela_testkit::Coturn;

const ROOM: &str = "turn";
const WHIP_ROOM: &str = "turn-whip";
/// coturn's static-auth-secret, and vela's turn.secret.
const SECRET: &str = "turn-test-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_crosses_a_network_without_udp_through_turn_over_tls() {
    quality::require_root();
    let link = netns::Link::new().expect("network namespace");
    let coturn = Coturn::start(IpAddr::V4(link.host_ip), SECRET);
    let mut config = browser::netns_config(&[IpAddr::V4(link.host_ip)]);
    config.turn.urls = vec![
        coturn.turn_udp_url(),
        coturn.turn_tcp_url(),
        coturn.turns_url(),
    ];
    config.turn.secret = SECRET.to_owned();
    browser::run_with(
        "browser_turn",
        Duration::from_secs(150),
        config,
        async |h| {
            let outcome = scenario(h, &link, &coturn).await;
            if outcome.is_err() {
                eprintln!("--- coturn's log ---\n{}", tail(&coturn.log(), 80));
            }
            outcome
        },
    )
    .await;
}

async fn scenario(h: &Harness, link: &netns::Link, coturn: &Coturn) -> TestResult {
    let http_port = reqwest::Url::parse(&h.base_url)?
        .port()
        .ok_or("no HTTP port")?;
    // No UDP at all (ICE, plain TURN over UDP), and TCP only to the web
    // server and TURN over TLS: not to the media ports (ICE over TCP,
    // whichever port it has), nor to the plain TURN port.
    link.drop_udp()?;
    link.allow_only_tcp_to(&[http_port, coturn.tls_port()])?;
    let media_port = h.media_port().ok_or("no media port")?;
    eprintln!(
        "namespace: no UDP, TCP only to {http_port} (HTTP) and {} (TURN over TLS); media on {media_port}",
        coturn.tls_port()
    );
    let host = IpAddr::V4(link.host_ip);
    let page = format!("/?room={ROOM}");

    // Without the flag, Chromium refuses the test's self-signed certificate.
    let untrusting = h.open_in_netns("dave", &link.ns, host, "/").await?;
    let fresh = credential(SECRET, 600);
    let refused = gather(&untrusting, &coturn.turns_url(), &fresh).await?;
    eprintln!("without the SPKI flag: {refused}");
    if relays(&refused) != 0 {
        return Err(format!("Chromium trusted an unknown certificate: {refused}").into());
    }

    h.set_chromium_args(Some(vec![format!(
        "--ignore-certificate-errors-spki-list={}",
        coturn.spki_sha256()
    )]));
    let bob = h.open_in_netns("bob", &link.ns, host, &page).await?;
    h.set_chromium_args(None);
    let alice = h.open("alice", &page).await?;

    // Credentials: fresh ones work, expired ones and a wrong secret's not.
    let accepted = gather(&bob, &coturn.turns_url(), &fresh).await?;
    eprintln!("fresh credential: {accepted}");
    if relays(&accepted) == 0 {
        return Err(format!("a fresh credential gathered no relay candidate: {accepted}").into());
    }
    let expired = credential(SECRET, -60);
    let wrong = credential("not-the-secret-0123456789", 600);
    for (what, c) in [("expired", &expired), ("wrong secret", &wrong)] {
        let seen = gather(&bob, &coturn.turns_url(), c).await?;
        eprintln!("{what}: {seen}");
        if relays(&seen) != 0 || !errors(&seen).contains(&401) {
            return Err(format!("{what}: expected 401 and no relay candidate, got {seen}").into());
        }
    }

    // The room, through the relay.
    let a = quality::join(&alice, ROOM, "alice").await?;
    let b = quality::join(&bob, ROOM, "bob").await?;
    quality::frames_grow(&bob, &a, 20, Duration::from_secs(20)).await?;
    quality::frames_grow(&alice, &b, 20, Duration::from_secs(15)).await?;
    let selected = selected_candidate(&bob, "window.vela.pc").await?;
    eprintln!("bob's selected local candidate: {selected}");
    expect_tls_relay("bob's room session", &selected)?;
    let relayed_at = selected["local"].clone();

    // A resume hands out new credentials, which the page takes for its
    // next ICE restart; the restart gathers a relay again with them.
    let before = turn_username(&bob).await?;
    run_js(&bob, "window.vela.dropSocket(); return true;", vec![]).await?;
    poll(
        "bob's session resumes",
        Duration::from_secs(10),
        async || {
            let c = run_js(&bob, "return window.vela.counters();", vec![]).await?;
            Ok(if c["resumes"] == 1 {
                Ok(())
            } else {
                Err(c.to_string())
            })
        },
    )
    .await?;
    let after = turn_username(&bob).await?;
    eprintln!("TURN username {before} before the resume, {after} after");
    if after == before {
        return Err("the resumed session kept its old TURN credentials".into());
    }
    run_js(&bob, "window.vela.restartIce(); return true;", vec![]).await?;
    poll("bob's ICE restart", Duration::from_secs(10), async || {
        let c = run_js(&bob, "return window.vela.counters();", vec![]).await?;
        Ok(if c["iceRestarts"] == 1 {
            Ok(())
        } else {
            Err(c.to_string())
        })
    })
    .await?;
    quality::frames_grow(&alice, &b, 20, Duration::from_secs(15)).await?;
    quality::frames_grow(&bob, &a, 20, Duration::from_secs(15)).await?;
    let selected = selected_candidate(&bob, "window.vela.pc").await?;
    eprintln!("bob's selected local candidate after the ICE restart: {selected}");
    expect_tls_relay("bob's room session after an ICE restart", &selected)?;
    if selected["local"] == relayed_at {
        return Err(format!("the ICE restart kept the old relay ({relayed_at})").into());
    }
    // coturn names each session's user: the new allocation is the new
    // credential's.
    let log = coturn.log();
    for user in [&before, &after] {
        if !log.contains(&format!("username=<{user}>")) {
            return Err(format!("coturn's log names no session of {user}").into());
        }
    }

    // WHIP and WHEP from the namespace, with the Link headers' servers.
    let published = run_js(&bob, NEGOTIATE_LATE, args("whip", WHIP_ROOM, "bob-whip")).await?;
    eprintln!("WHIP: {published}");
    let viewed = run_js(&bob, NEGOTIATE_LATE, args("whep", WHIP_ROOM, "bob-whep")).await?;
    eprintln!("WHEP: {viewed}");
    for (what, r) in [("WHIP", &published), ("WHEP", &viewed)] {
        if r["status"] != 201 || r["links"].as_array().is_none_or(|l| l.len() != 3) {
            return Err(format!("{what}: expected 201 with three ice-server links: {r}").into());
        }
    }
    let received = browser::whip_whep::whep_receives(
        &bob,
        "the WHEP viewer decodes the WHIP publisher's media",
    )
    .await?;
    eprintln!("WHEP received: {received}");
    for key in ["whip", "whep"] {
        let selected = selected_candidate(&bob, &format!("window.{key}.pc")).await?;
        eprintln!("{key}'s selected local candidate: {selected}");
        expect_tls_relay(key, &selected)?;
    }
    Ok(())
}

/// A credential of the TURN REST scheme expiring `ttl` seconds from now
/// (negative: already expired), made with `secret`.
fn credential(secret: &str, ttl: i64) -> TurnCredential {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    TurnCredential::new(secret.as_bytes(), (now + ttl) as u64, "PA-test")
}

/// Gathers candidates in `page` with only `url` and `c`, relays only:
/// the relay candidates and the `icecandidateerror` codes seen.
async fn gather(page: &Client, url: &str, c: &TurnCredential) -> TestResult<Value> {
    let body = r#"
const [url, username, credential] = args;
const pc = new RTCPeerConnection({ iceServers: [{ urls: [url], username, credential }], iceTransportPolicy: 'relay' });
const out = { relays: [], errors: [] };
pc.onicecandidate = (e) => { if (e.candidate && e.candidate.type === 'relay') out.relays.push(e.candidate.candidate); };
pc.onicecandidateerror = (e) => out.errors.push({ code: e.errorCode, text: e.errorText, url: e.url });
pc.createDataChannel('probe');
await pc.setLocalDescription(await pc.createOffer());
await new Promise((resolve) => {
  const timer = setTimeout(resolve, 10000);
  pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); } };
});
out.gathering = pc.iceGatheringState;
pc.close();
return out;
"#;
    run_js(
        page,
        body,
        vec![json!(url), json!(c.username), json!(c.password)],
    )
    .await
}

fn relays(seen: &Value) -> usize {
    seen["relays"].as_array().map_or(0, Vec::len)
}

fn errors(seen: &Value) -> Vec<u64> {
    seen["errors"]
        .as_array()
        .map(|e| e.iter().filter_map(|x| x["code"].as_u64()).collect())
        .unwrap_or_default()
}

/// The local candidate of the selected pair of the peer connection `pc`
/// (a JavaScript expression).
async fn selected_candidate(page: &Client, pc: &str) -> TestResult<Value> {
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
  candidateType: local && local.candidateType, relayProtocol: local && local.relayProtocol,
  protocol: local && local.protocol, url: local && local.url,
  local: local && (local.address + ':' + local.port),
  remote: remote && (remote.address + ':' + remote.port + ' ' + remote.protocol),
}};
"#
    );
    run_js(page, &body, vec![]).await
}

fn expect_tls_relay(what: &str, local: &Value) -> TestResult {
    if local["candidateType"] == "relay" && local["relayProtocol"] == "tls" {
        Ok(())
    } else {
        Err(format!("{what}: expected a relay over TLS as the local candidate, got {local}").into())
    }
}

/// The TURN username the page's peer connection is configured with now.
async fn turn_username(page: &Client) -> TestResult<String> {
    let v = run_js(
        page,
        "return window.vela.pc.getConfiguration().iceServers.map((s) => s.username).filter(Boolean);",
        vec![],
    )
    .await?;
    Ok(v[0]
        .as_str()
        .ok_or(format!("no TURN username in {v}"))?
        .to_owned())
}

fn args(endpoint: &str, room: &str, identity: &str) -> Vec<Value> {
    vec![json!(endpoint), json!(room), json!(identity)]
}

/// WHIP or WHEP as a client behind a relay does it with a server that takes
/// no trickled candidates: offer, POST, read the `Link` headers, and only
/// then set the offer as local description (gathering starts there, with
/// the servers of the headers). `args`: [endpoint, room, identity]. Keeps
/// the connection in `window[endpoint]`.
const NEGOTIATE_LATE: &str = r#"
const [endpoint, room, identity] = args;
const tokenUrl = '/api/dev-token?room=' + encodeURIComponent(room) + '&identity=' + encodeURIComponent(identity);
const { token } = await (await fetch(tokenUrl)).json();
const pc = new RTCPeerConnection();
const session = (window[endpoint] = { pc, tracks: [] });
pc.ontrack = (e) => session.tracks.push(e.track.kind);
if (endpoint === 'whip') {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
} else {
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
}
const offer = await pc.createOffer();
const res = await fetch('/' + endpoint + '/' + encodeURIComponent(room), {
  method: 'POST',
  headers: { 'Authorization': 'Bearer ' + token, 'Content-Type': 'application/sdp' },
  body: offer.sdp,
});
const body = await res.text();
// RFC 9725: Link: <url>; rel="ice-server"; username="..."; credential="..."; ...
const links = (res.headers.get('Link') || '').split(/,\s*(?=<)/).filter((l) => /rel="ice-server"/.test(l));
const iceServers = links.map((l) => {
  const server = { urls: [/^<([^>]*)>/.exec(l)[1]] };
  const user = /;\s*username="((?:[^"\\]|\\.)*)"/.exec(l);
  const cred = /;\s*credential="((?:[^"\\]|\\.)*)"/.exec(l);
  if (user) server.username = user[1].replace(/\\(.)/g, '$1');
  if (cred) server.credential = cred[1].replace(/\\(.)/g, '$1');
  return server;
});
if (res.status !== 201) return { status: res.status, body, links: iceServers };
pc.setConfiguration({ iceServers });
await pc.setLocalDescription(offer);
await pc.setRemoteDescription({ type: 'answer', sdp: body });
return { status: res.status, links: iceServers.map((s) => s.urls[0] + (s.username ? ' as ' + s.username : '')) };
"#;

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
