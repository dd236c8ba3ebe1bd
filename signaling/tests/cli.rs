//! The `vela` binary as an operator uses it: the token subcommand, refused
//! configuration, and graceful shutdown on SIGTERM and SIGINT.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Ws;
use vela_signaling::token::TokenKeys;

fn vela() -> Command {
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

/// Starts the server on an OS-chosen port with an in-memory store, so tests
/// running at once never share a port or a database file, and returns the
/// child with the address it logged. An early exit fails with its log.
async fn start_server() -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vela"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--udp-port",
            "0",
            "--node-ip",
            "127.0.0.1",
        ])
        .env("VELA_STORE_PATH", ":memory:")
        .env("VELA_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The server logs to standard output.
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = String::new();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            log.push_str(&line);
            log.push('\n');
            if let Some(rest) = line.split("http_addr=").nth(1) {
                return Some(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
        }
        None
    })
    .await;
    let Ok(Some(addr)) = addr else {
        panic!("server did not start; its log:\n{log}");
    };
    // Keep draining the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn shutdown_on(signal: &str) {
    let (mut child, addr) = start_server().await;
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
