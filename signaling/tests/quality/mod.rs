//! Helpers of the call-quality browser tests (simulcast layers, loss, outage,
//! paused layers, active speaker): participants in network namespaces joined
//! through the page's `window.vela` hooks.
//!
//! Needs root (network namespaces, tc, nftables) besides Chromium and
//! chromedriver; CI runs as root. Without root a test fails with a message.

#![allow(dead_code, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::browser::{Harness, Page, TestResult, run_js};

/// Fails clearly when the test cannot create network namespaces.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this test creates network namespaces and shapes traffic (ip, tc, nft): run it as root (CI does)"
    );
    for tool in ["/usr/sbin/ip", "/usr/sbin/tc", "/usr/sbin/nft"] {
        assert!(
            std::path::Path::new(tool).exists() || which(tool),
            "{tool} is missing: apt-get install -y iproute2 nftables"
        );
    }
}

fn which(tool: &str) -> bool {
    let name = tool.rsplit('/').next().unwrap_or(tool);
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `window.vela.join(room, name)`; returns the participant id.
pub async fn join(client: &impl Page, room: &str, name: &str) -> TestResult<String> {
    let id = run_js(
        client,
        r#"const [room, name] = args;
await window.vela.join(room, name);
return window.vela.participantId;"#,
        vec![json!(room), json!(name)],
    )
    .await
    .map_err(|e| format!("{name}: join: {e}"))?;
    Ok(id
        .as_str()
        .ok_or_else(|| format!("{name}: no participant id: {id}"))?
        .to_owned())
}

/// Inbound video of one remote participant: framesDecoded, frameWidth, ...
#[derive(Debug, Clone, Copy, Default)]
pub struct Inbound {
    pub frames: u64,
    pub width: u64,
    pub height: u64,
    pub lost: i64,
    pub nacks: u64,
}

/// What `client` receives of `from`'s video (zeros before anything arrived).
pub async fn inbound(client: &impl Page, from: &str) -> TestResult<Inbound> {
    let v = run_js(client, "return await window.vela.videoStats();", vec![]).await?;
    let s = &v[from];
    Ok(Inbound {
        frames: s["framesDecoded"].as_u64().unwrap_or(0),
        width: s["frameWidth"].as_u64().unwrap_or(0),
        height: s["frameHeight"].as_u64().unwrap_or(0),
        lost: s["packetsLost"].as_i64().unwrap_or(0),
        nacks: s["nackCount"].as_u64().unwrap_or(0),
    })
}

/// The publisher's outbound video per rid: `{rid: {bytesSent, frameWidth, ...}}`.
pub async fn outbound(client: &impl Page) -> TestResult<Value> {
    run_js(client, "return await window.vela.outboundStats();", vec![]).await
}

/// Bytes sent so far on layer `rid`.
pub fn bytes_of(out: &Value, rid: &str) -> u64 {
    out[rid]["bytesSent"].as_u64().unwrap_or(0)
}

/// A counter of the server's `/metrics` (without the `vela_` prefix).
pub async fn metric(h: &Harness, name: &str) -> TestResult<u64> {
    let text = h.http.get(h.url("/metrics")).send().await?.text().await?;
    let full = format!("vela_{name}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == full).then(|| v.trim().parse::<f64>().ok())?
        })
        .map(|v| v as u64)
        .ok_or_else(|| format!("{full} is not in /metrics").into())
}

/// Shows `pid`'s tile in `client` at `width` CSS pixels (`None`: the grid's size).
pub async fn tile_width(client: &impl Page, pid: &str, width: Option<u32>) -> TestResult {
    let ok = run_js(
        client,
        "return window.vela.setTileLayout(args[0], args[1], false);",
        vec![json!(pid), json!(width)],
    )
    .await?;
    if ok != Value::Bool(true) {
        return Err(format!("no tile for {pid}").into());
    }
    Ok(())
}

/// Waits until `client` decodes `from`'s video `frames` more frames than now.
pub async fn frames_grow(
    client: &impl Page,
    from: &str,
    frames: u64,
    limit: Duration,
) -> TestResult<Duration> {
    let start = inbound(client, from).await?.frames;
    let t = Instant::now();
    loop {
        let now = inbound(client, from).await?.frames;
        if now >= start + frames {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            return Err(format!(
                "video from {from} stalled: {} new frames in {limit:?} (wanted {frames})",
                now - start
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Participant ids that saw someone leave (`participant_left` messages are
/// recorded by the page's tiles: a remote tile disappears).
pub async fn remote_ids(client: &impl Page) -> TestResult<Vec<String>> {
    let v = run_js(
        client,
        "return window.vela.remoteTiles().map((t) => t.participantId);",
        vec![],
    )
    .await?;
    Ok(strings(&v))
}

/// Starts recording the signaling messages the page receives (in
/// `window.__velaMsgs`), to check later that no `participant_left` came.
pub async fn record_messages(client: &impl Page) -> TestResult {
    run_js(
        client,
        r#"if (!window.__velaMsgs) {
  window.__velaMsgs = [];
  const ws = window.vela.ws;
  if (ws) ws.addEventListener('message', (e) => { try { window.__velaMsgs.push(JSON.parse(e.data).type); } catch (err) {} });
}
return true;"#,
        vec![],
    )
    .await?;
    Ok(())
}

/// The types of the messages recorded by [`record_messages`].
pub async fn recorded(client: &impl Page) -> TestResult<Vec<String>> {
    let v = run_js(client, "return window.__velaMsgs || [];", vec![]).await?;
    Ok(strings(&v))
}

/// The strings in the JSON array `v` (none when it is not an array).
pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
