//! The ICE servers handed to clients (`[turn]`): in `joined` (a resume's
//! included) and in WHIP/WHEP `Link` headers, TURN entries with TURN REST
//! credentials for the participant; none when nothing is configured.
//! The password is checked against openssl's HMAC, not the server's code.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::common::{Ws, base, dev_token, with_config, with_server};

const SECRET: &str = "ice-servers-test-secret-0123";
const STUN: &str = "stun:turn.example.com:3478";
const TURN: &str = "turn:turn.example.com:3478?transport=udp";
const TURNS: &str = "turns:turn.example.com:443?transport=tcp";
const TTL: u64 = 600;

fn turn_config(config: &mut vela_config::Config) {
    config.turn.urls = vec![STUN.into(), TURN.into(), TURNS.into()];
    config.turn.secret = SECRET.into();
    config.turn.ttl_secs = TTL;
}

/// A WHIP (sendonly) or WHEP (recvonly) offer of audio and video; only
/// the answer's headers matter here, no media flows.
fn offer(publish: bool) -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::Rtc::builder().build(std::time::Instant::now());
    let addr = "127.0.0.1:9".parse().unwrap();
    rtc.add_local_candidate(str0m::Candidate::host(addr, "udp").unwrap());
    let dir = if publish {
        Direction::SendOnly
    } else {
        Direction::RecvOnly
    };
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, dir, None, None, None);
    change.add_media(MediaKind::Video, dir, None, None, None);
    let (offer, _) = change.apply().unwrap();
    offer.to_sdp_string()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// base64(HMAC-SHA1(secret, username)), by openssl.
fn openssl_password(username: &str) -> String {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "printf %s \"$1\" | openssl dgst -sha1 -hmac \"$2\" -binary | base64",
            "sh",
            username,
            SECRET,
        ])
        .output()
        .expect("openssl (scripts/test.sh installs it)");
    assert!(out.status.success(), "openssl failed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Checks a TURN username and password for `participant`, made about now.
#[track_caller]
fn check_credential(username: &str, password: &str, participant: &str) {
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, participant, "{username}");
    let expiry: u64 = expiry.parse().unwrap();
    let expected = now() + TTL;
    assert!(
        expiry + 5 >= expected && expiry <= expected + 1,
        "expiry {expiry} is not about now + {TTL} ({expected})"
    );
    assert_eq!(password, openssl_password(username), "{username}");
}

/// `joined.ice_servers`: the STUN entry without credentials, the TURN one
/// with credentials for `participant`.
#[track_caller]
fn check_joined(joined: &Value) {
    let participant = joined["participant"]["id"].as_str().unwrap();
    let servers = joined["ice_servers"].as_array().expect("ice_servers");
    assert_eq!(servers.len(), 2, "{joined}");
    assert_eq!(servers[0], json!({"urls": [STUN]}));
    assert_eq!(servers[1]["urls"], json!([TURN, TURNS]));
    check_credential(
        servers[1]["username"].as_str().unwrap(),
        servers[1]["credential"].as_str().unwrap(),
        participant,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_and_a_resume_hand_out_turn_credentials_for_the_participant() {
    with_config(Duration::from_secs(30), turn_config, async |s, _| {
        let token = dev_token(s, "ice", "alice").await;
        let mut ws = Ws::connect(s).await;
        ws.send(json!({"type": "join", "token": token})).await;
        let joined = ws.expect("joined").await;
        check_joined(&joined);

        // A new socket resuming the session gets them again, made anew.
        let mut again = Ws::connect(s).await;
        again
            .send(json!({
                "type": "resume",
                "participant_id": joined["participant"]["id"],
                "resume_token": joined["resume_token"],
            }))
            .await;
        let resumed = again.expect("joined").await;
        check_joined(&resumed);
        assert_eq!(resumed["participant"]["id"], joined["participant"]["id"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_answers_link_the_ice_servers() {
    with_config(Duration::from_secs(30), turn_config, async |s, _| {
        for endpoint in ["whip", "whep"] {
            let token = dev_token(s, "ice-whip", &format!("{endpoint}-client")).await;
            let resp = reqwest::Client::new()
                .post(format!("{}/{endpoint}/ice-whip", base(s)))
                .bearer_auth(&token)
                .header("content-type", "application/sdp")
                .body(offer(endpoint == "whip"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 201, "{endpoint}");
            let session = resp.headers()["location"].to_str().unwrap().to_owned();
            let participant = session.rsplit('/').next().unwrap().to_owned();
            let links: Vec<String> = resp
                .headers()
                .get_all("link")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect();
            assert_eq!(links.len(), 3, "{links:?}");
            assert_eq!(links[0], format!("<{STUN}>; rel=\"ice-server\""));
            for (link, url) in links[1..].iter().zip([TURN, TURNS]) {
                let (head, rest) = link.split_once("; username=\"").unwrap();
                assert_eq!(head, format!("<{url}>; rel=\"ice-server\""));
                let (username, rest) = rest.split_once("\"; credential=\"").unwrap();
                let (password, rest) = rest.split_once('"').unwrap();
                assert_eq!(rest, "; credential-type=\"password\"", "{link}");
                check_credential(username, password, &participant);
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_turn_settings_clients_get_no_servers() {
    with_server(Duration::from_secs(30), async |s, _| {
        let token = dev_token(s, "plain", "alice").await;
        let mut ws = Ws::connect(s).await;
        ws.send(json!({"type": "join", "token": token})).await;
        let joined = ws.expect("joined").await;
        assert_eq!(joined["ice_servers"], json!([]), "{joined}");

        let token = dev_token(s, "plain", "viewer").await;
        let resp = reqwest::Client::new()
            .post(format!("{}/whep/plain", base(s)))
            .bearer_auth(&token)
            .header("content-type", "application/sdp")
            .body(offer(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 201);
        assert!(resp.headers().get("link").is_none());
    })
    .await;
}
