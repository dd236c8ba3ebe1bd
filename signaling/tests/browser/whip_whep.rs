//! WHIP and WHEP from a page, shared by the tests that publish with WHIP
//! (`POST /whip/{room}`) and view with WHEP (`POST /whep/{room}`) in
//! Chromium or Firefox.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Harness, Page, TestResult, poll, run_js};

/// Shared by both sides: fetch a dev token, offer, POST the SDP, apply the
/// answer. `args`: [endpoint ('whip' | 'whep'), room, identity, name].
/// The publisher sends its fake camera and microphone (sendonly); the viewer
/// offers recvonly audio + video. Keeps the connection in `window[endpoint]`.
pub const NEGOTIATE: &str = r#"
const [endpoint, room, identity, name] = args;
const tokenUrl = '/api/dev-token?room=' + encodeURIComponent(room) +
  '&identity=' + encodeURIComponent(identity) + '&name=' + encodeURIComponent(name);
const tokenRes = await fetch(tokenUrl);
if (tokenRes.status !== 200) throw new Error('GET ' + tokenUrl + ': HTTP ' + tokenRes.status + ' ' + await tokenRes.text());
const { token } = await tokenRes.json();

const pc = new RTCPeerConnection({ iceServers: [] });
const session = (window[endpoint] = { pc, tracks: [] });
pc.ontrack = (e) => session.tracks.push(e.track.kind);
if (endpoint === 'whip') {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } });
  session.stream = stream;
  for (const track of stream.getTracks()) pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
} else {
  pc.addTransceiver('audio', { direction: 'recvonly' });
  pc.addTransceiver('video', { direction: 'recvonly' });
}
await pc.setLocalDescription(await pc.createOffer());
// Send the offer with whatever candidates are gathered after at most 3 s
// (the server is ICE-lite: it learns the browser's address from its checks).
await new Promise((resolve) => {
  if (pc.iceGatheringState === 'complete') return resolve();
  const timer = setTimeout(resolve, 3000);
  pc.addEventListener('icegatheringstatechange', () => {
    if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
  });
});

const res = await fetch('/' + endpoint + '/' + encodeURIComponent(room), {
  method: 'POST',
  headers: { 'Authorization': 'Bearer ' + token, 'Content-Type': 'application/sdp' },
  body: pc.localDescription.sdp,
});
const body = await res.text();
const out = {
  status: res.status,
  location: res.headers.get('Location'),
  contentType: res.headers.get('Content-Type'),
  token,
  offerCandidates: pc.localDescription.sdp.split('\n').filter((l) => l.startsWith('a=candidate')).length,
};
if (res.status === 201) {
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
} else {
  out.body = body;
}
return out;
"#;

/// What the connection in `window[args[0]]` received so far.
pub const INBOUND: &str = r#"
const { pc, tracks } = window[args[0]];
const out = {
  connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState,
  tracks, framesDecoded: 0, audioPackets: 0,
};
(await pc.getStats()).forEach((s) => {
  if (s.type !== 'inbound-rtp') return;
  if (s.kind === 'video') {
    out.framesDecoded += s.framesDecoded || 0;
    out.frameWidth = s.frameWidth; out.frameHeight = s.frameHeight;
  } else if (s.kind === 'audio') {
    out.audioPackets += s.packetsReceived || 0;
  }
});
return out;
"#;

/// Waits (20 s at most) until the WHEP viewer on `page` has decoded more
/// than 10 video frames and 20 audio packets; returns what [`INBOUND`] saw.
pub async fn whep_receives(page: &impl Page, what: &str) -> TestResult<Value> {
    poll(what, Duration::from_secs(20), async || {
        let seen = run_js(page, INBOUND, vec![json!("whep")]).await?;
        let n = |k: &str| seen[k].as_f64().unwrap_or(0.0);
        Ok(if n("framesDecoded") > 10.0 && n("audioPackets") > 20.0 {
            Ok(seen)
        } else {
            Err(seen.to_string())
        })
    })
    .await
}

/// What the publisher sent so far.
pub const OUTBOUND: &str = r#"
const { pc } = window.whip;
const out = { connectionState: pc.connectionState, iceConnectionState: pc.iceConnectionState };
(await pc.getStats()).forEach((s) => {
  if (s.type === 'outbound-rtp') out[s.kind] = { packetsSent: s.packetsSent, framesEncoded: s.framesEncoded };
});
return out;
"#;

/// Publishes (`endpoint` "whip") or views ("whep") `room` from `page` as
/// `identity` named `name` with [`NEGOTIATE`]; checks the answer is
/// `201 Created` and returns the creation result with its resource.
pub async fn negotiate(
    h: &Harness,
    page: &impl Page,
    endpoint: &str,
    [room, identity, name]: [&str; 3],
) -> TestResult<(Value, reqwest::Url)> {
    let what = endpoint.to_uppercase();
    let action = if endpoint == "whip" {
        "publish"
    } else {
        "view"
    };
    let args = vec![json!(endpoint), json!(room), json!(identity), json!(name)];
    let created = run_js(page, NEGOTIATE, args)
        .await
        .map_err(|e| format!("{what} {action}: {e}"))?;
    eprintln!("{what} response: {}", redact(&created));
    let location = created_resource(h, &what, &created)?;
    Ok((created, location))
}

/// Checks a WHIP/WHEP answer was `201 Created` with a `Location`; returns it
/// as an absolute URL.
pub fn created_resource(h: &Harness, what: &str, response: &Value) -> TestResult<reqwest::Url> {
    let status = response.get("status").and_then(Value::as_u64);
    if status != Some(201) {
        return Err(format!("{what}: expected 201 Created, got {}", redact(response)).into());
    }
    let content_type = response
        .get("contentType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !content_type.starts_with("application/sdp") {
        return Err(format!("{what}: answer Content-Type is {content_type:?}").into());
    }
    let location = response
        .get("location")
        .and_then(Value::as_str)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            format!(
                "{what}: 201 without a Location header: {}",
                redact(response)
            )
        })?;
    Ok(reqwest::Url::parse(&h.base_url)?.join(location)?)
}

/// `DELETE` the resource with the token that created it; expects 200 or 204.
pub async fn delete(
    h: &Harness,
    what: &str,
    location: &reqwest::Url,
    created: &Value,
) -> TestResult {
    let token = created
        .get("token")
        .and_then(Value::as_str)
        .ok_or("no token in the creation result")?;
    let response = h
        .http
        .delete(location.clone())
        .bearer_auth(token)
        .send()
        .await?;
    let status = response.status().as_u16();
    eprintln!("{what}: DELETE {location} -> {status}");
    if status != 200 && status != 204 {
        let body = response.text().await.unwrap_or_default();
        return Err(
            format!("{what}: DELETE {location}: expected 200 or 204, got {status} {body}").into(),
        );
    }
    Ok(())
}

/// The creation result without the token, for printing.
pub fn redact(response: &Value) -> String {
    let mut shown = response.clone();
    if let Some(map) = shown.as_object_mut() {
        map.remove("token");
    }
    shown.to_string()
}
