//! Connections as an attacker opens them: idle ones and slow request heads
//! are closed after `server.header_timeout_ms` (keep-alive ones too), no
//! more than `server.max_connections` are open at once (the rest are closed
//! as accepted, and the server stays ready once they go), both WebSockets
//! must authenticate within `server.auth_timeout_ms`, and the binary raises
//! its open-files limit to the hard limit at start.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::{Duration, Instant};

use common::{Ws, with_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vela_config::Config;

const LIMIT: Duration = Duration::from_secs(60);

/// How long until the server closes `s` (reads until end of stream, within `limit`).
async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_slow_heads_are_closed() {
    let config = |c: &mut Config| c.server.header_timeout_ms = 400;
    with_config(LIMIT, config, async |s, _| {
        // Nothing sent at all.
        let mut idle = TcpStream::connect(s.http_addr).await.unwrap();
        // Half a request head, then nothing.
        let mut slow = TcpStream::connect(s.http_addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // A whole request, then the connection kept alive and idle.
        let mut kept = TcpStream::connect(s.http_addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = kept.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        for (what, conn) in [
            ("idle", &mut idle),
            ("slow", &mut slow),
            ("kept", &mut kept),
        ] {
            let after = closed_after(conn, Duration::from_secs(5)).await;
            assert!(
                after.is_some_and(|d| d < Duration::from_secs(3)),
                "{what}: closed after {after:?}"
            );
        }
        // Counted by each connection's task as it ends, which may be
        // after the client saw the close.
        common::metrics_until(s, "3 timed out", |m| {
            m.contains("vela_http_connections_timed_out_total 3\n")
        })
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_and_the_server_recovers() {
    let config = |c: &mut Config| {
        c.server.max_connections = 8;
        c.server.header_timeout_ms = 1500;
    };
    with_config(LIMIT, config, async |s, _| {
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(TcpStream::connect(s.http_addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The ninth is closed at once, unanswered.
        let mut extra = TcpStream::connect(s.http_addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let after = closed_after(&mut extra, Duration::from_secs(1)).await;
        assert!(after.is_some(), "a connection over the cap was served");
        // The idle ones time out and free their places: ready again.
        let start = Instant::now();
        loop {
            let r = reqwest::Client::new()
                .get(format!("http://{}/readyz", s.http_addr))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if matches!(&r, Ok(r) if r.status() == 200) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "not ready again: {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let m = common::scrape_metrics(s).await;
        let refused: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("vela_http_connections_refused_total "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(refused >= 1, "{m}");
        drop(held);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_websockets_must_authenticate_in_time() {
    let config = |c: &mut Config| c.server.auth_timeout_ms = 300;
    with_config(LIMIT, config, async |s, _| {
        for path in ["/ws", "/api/v1/ws"] {
            let mut ws = Ws::connect_path(s, path).await;
            let start = Instant::now();
            let code = ws.close_code().await;
            assert_eq!(code, Some(1008), "{path}");
            assert!(start.elapsed() < Duration::from_secs(3), "{path}");
        }
        // Both take no message over limits.max_message_bytes before auth.
        for path in ["/ws", "/api/v1/ws"] {
            let mut ws = Ws::connect_path(s, path).await;
            ws.send_text("x".repeat(70_000)).await;
            assert_eq!(ws.close_code().await, Some(1009), "{path}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_raises_its_open_files_limit() {
    tokio::time::timeout(LIMIT, async {
        let (child, _) = common::start_binary_with(":memory:", &[], Some((512, 4096))).await;
        let limits =
            std::fs::read_to_string(format!("/proc/{}/limits", child.id().unwrap())).unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(&fields[3..5], ["4096", "4096"], "{line}");
    })
    .await
    .unwrap();
}
