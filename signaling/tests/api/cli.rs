//! The `vela` binary as an operator uses it: the token subcommand, refused
//! configuration, and graceful shutdown on SIGTERM and SIGINT.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::Ws;
use vela_signaling::token::TokenKeys;

pub(crate) fn vela() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vela"));
    // The test's own environment must not configure the server.
    for (k, _) in std::env::vars() {
        if k.starts_with("VELA_") {
            c.env_remove(k);
        }
    }
    // Keep the server's database out of the working directory.
    c.env("VELA_STORE_PATH", ":memory:");
    c
}

#[test]
fn token_subcommand_prints_a_token_with_the_grants() {
    let out = vela()
        .args([
            "token",
            "--room",
            "demo",
            "--identity",
            "alice",
            "--name",
            "Alice",
            "--no-publish",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.display_name(), "Alice");
    assert_eq!(claims.video.room.as_deref(), Some("demo"));
    assert!(claims.video.room_join);
    assert!(!claims.can_publish());
    assert!(claims.can_subscribe());
    assert!(String::from_utf8_lossy(&out.stderr).contains("development key"));

    // With a configured key, tokens are signed with it.
    let out = vela()
        .args([
            "token",
            "--room",
            "demo",
            "--identity",
            "bob",
            "--no-subscribe",
        ])
        .env("VELA_AUTH_API_KEY", "prodkey")
        .env(
            "VELA_AUTH_API_SECRET",
            "a-production-secret-of-enough-length-123",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let claims = TokenKeys::new("prodkey", "a-production-secret-of-enough-length-123")
        .verify(token.trim())
        .unwrap();
    assert!(!claims.can_subscribe());
    assert!(claims.can_publish());
}

#[test]
fn bad_configuration_stops_the_start_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("vela-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[media]\nudp_prot = 5\n").unwrap();
    let out = vela().arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("udp_prot"), "{err}");

    std::fs::write(&file, "[media]\nconnect_timeout_ms = 5\n").unwrap();
    let out = vela().arg("--config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("media.connect_timeout_ms"));

    let out = vela()
        .env("VELA_MEDIA_UDP_PORT", "seventy")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VELA_MEDIA_UDP_PORT"));

    let out = vela().args(["--http", "not-an-address"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}

async fn shutdown_on(signal: &str) {
    let (mut child, addr) = common::start_binary(":memory:").await;
    let base = format!("http://{addr}");
    let v: serde_json::Value = reqwest::get(format!("{base}/api/dev-token?room=sig&identity=a"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    let (inner, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let mut ws = Ws { inner };
    ws.send(serde_json::json!({"type": "join", "token": token}))
        .await;
    ws.expect("joined").await;

    let pid = child.id().unwrap().to_string();
    let st = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(st.success());
    let left = ws.expect("left").await;
    assert_eq!(left["reason"], "server_shutdown");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits promptly")
        .unwrap();
    assert_eq!(status.code(), Some(0), "exit status after {signal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_peers_and_exits_zero() {
    tokio::time::timeout(Duration::from_secs(60), shutdown_on("-TERM"))
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_peers_and_exits_zero() {
    tokio::time::timeout(Duration::from_secs(60), shutdown_on("-INT"))
        .await
        .expect("test timed out");
}
