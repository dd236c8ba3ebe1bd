//! Participants that do not read, and participants that send too much:
//! what the server holds for one participant is bounded (a participant that
//! falls `limits.max_queued_messages` behind leaves as `too_slow`, also
//! while detached waiting for a resume), data messages are rate limited per
//! participant, and so are messages of any kind on both sockets.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::{Ws, with_config};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vela_config::Config;
use vela_signaling::token::{TokenKeys, VideoGrant};

const LIMIT: Duration = Duration::from_secs(120);

fn token(identity: &str, room: &str) -> String {
    TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
        .issue(
            identity,
            None,
            VideoGrant {
                room: Some(room.into()),
                room_join: true,
                ..VideoGrant::default()
            },
            Duration::from_secs(600),
        )
        .unwrap()
}

async fn join_at(addr: &str, identity: &str, room: &str) -> (Ws, String) {
    let mut ws = Ws::connect_addr(addr, "/ws").await;
    ws.send(json!({"type": "join", "token": token(identity, room)}))
        .await;
    let joined = ws.expect("joined").await;
    let id = joined["participant"]["id"].as_str().unwrap().to_owned();
    (ws, id)
}

fn data(bytes: usize) -> String {
    let payload = base64::engine::general_purpose::STANDARD.encode(vec![7u8; bytes]);
    json!({"type": "data", "payload": payload}).to_string()
}

/// Waits for `participant_left` of `id` on `ws`; returns its reason.
async fn left_reason(ws: &mut Ws, id: &str, within: Duration) -> Option<String> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        let m = tokio::time::timeout(Duration::from_secs(1), ws.recv()).await;
        if let Ok(Some(m)) = m
            && m["type"] == "participant_left"
            && m["participant_id"] == id
        {
            return m["reason"].as_str().map(str::to_owned);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_flood_toward_a_participant_that_does_not_read_is_bounded() {
    tokio::time::timeout(LIMIT, async {
        // A server of its own, to measure its memory; no data rate limit,
        // so that only the queue bound is at work.
        let (child, addr) = common::start_binary_with(
            ":memory:",
            &[
                ("VELA_LIMITS_DATA_MESSAGES_PER_SECOND", "0"),
                ("VELA_LIMITS_DATA_BYTES_PER_SECOND", "0"),
            ],
            None,
        )
        .await;
        let pid = child.id().unwrap();
        let (mut sink, _) = join_at(&addr, "sink", "flood").await;
        let (source, _) = join_at(&addr, "source", "flood").await;
        let base = common::rss_kb(pid);

        // The sink reads nothing while the source floods it.
        let (mut tx, mut rx) = source.inner.split();
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(base));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(common::rss_kb(pid), std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let msg = data(16 * 1024);
        for _ in 0..8000 {
            let sent =
                tokio::time::timeout(Duration::from_secs(10), tx.send(Message::text(msg.clone())))
                    .await;
            assert!(matches!(sent, Ok(Ok(()))), "the sender was stalled");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        sampler.abort();
        drain.abort();
        let grew_mb = (peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(base)) as f64
            / 1024.0;
        // 8000 messages of 16 KiB: 125 MiB if nothing bounded them.
        assert!(grew_mb < 50.0, "server memory grew {grew_mb:.1} MB");

        // When the sink reads at last: part of the flood, then the end of
        // its session, as too slow.
        let (mut received, mut end) = (0, None);
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            match tokio::time::timeout(Duration::from_secs(5), sink.inner.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let m: Value = serde_json::from_str(&t).unwrap();
                    if m["type"] == "data" {
                        received += 1;
                    }
                    if m["type"] == "left" {
                        assert_eq!(m["reason"], "too_slow");
                    }
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    end = Some(f.map(|f| u16::from(f.code)));
                    break;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => {
                    end = Some(None);
                    break;
                }
            }
        }
        assert!(
            received < 8000,
            "the sink got everything: nothing was bounded"
        );
        assert!(
            end.is_some(),
            "the sink's socket stayed open after {received} messages"
        );
        // The room goes on without it.
        let (mut late, _) = join_at(&addr, "late", "flood").await;
        late.send(json!({"type": "ping"})).await;
        late.expect("pong").await;
        drop(child);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_messages_over_the_rate_are_refused() {
    let config = |c: &mut Config| {
        c.limits.data_messages_per_second = 5;
        c.limits.data_bytes_per_second = 40_000;
    };
    with_config(LIMIT, config, async |s, _| {
        let addr = s.http_addr.to_string();
        let (mut a, _) = join_at(&addr, "a", "r").await;
        let (mut b, _) = join_at(&addr, "b", "r").await;
        // 20 small messages at once: the burst of 5 passes, the rest are
        // refused with 429.
        for _ in 0..20 {
            a.send_text(data(10)).await;
        }
        let mut refused = 0;
        let mut got = 0;
        let end = Instant::now() + Duration::from_secs(2);
        while Instant::now() < end {
            tokio::select! {
                m = a.recv() => if let Some(m) = m && m["type"] == "error" {
                    assert_eq!(m["code"], 429, "{m}");
                    refused += 1;
                },
                m = b.recv() => if let Some(m) = m && m["type"] == "data" { got += 1 },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        assert!((5..=6).contains(&got), "{got} delivered");
        assert_eq!(refused + got, 20);
        // Bytes: 40 kB a second, so one 16 KiB message then another, not a third.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        for _ in 0..3 {
            a.send_text(data(16 * 1024)).await;
        }
        let mut codes = Vec::new();
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), a.recv()).await
                && m["type"] == "error"
            {
                codes.push(m["code"].clone());
            }
        }
        assert_eq!(codes, vec![Value::from(429)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_session_holds_a_bounded_backlog() {
    let config = |c: &mut Config| {
        c.limits.max_queued_messages = 32;
        c.limits.data_messages_per_second = 0;
        c.limits.data_bytes_per_second = 0;
        c.limits.messages_per_second = 0;
        // Long enough that only the bound can end the session in time.
        c.media.reconnect_timeout_ms = 120_000;
    };
    with_config(LIMIT, config, async |s, _| {
        let addr = s.http_addr.to_string();
        let (gone, gone_id) = join_at(&addr, "gone", "r").await;
        let (mut watcher, _) = join_at(&addr, "watcher", "r").await;
        let (mut source, _) = join_at(&addr, "source", "r").await;
        // The socket drops without a leave: the session waits for a resume.
        drop(gone);
        // Data keeps coming until the session is gone. One burst could
        // arrive before a loaded server has noticed the drop: the live
        // session's writer takes it, and the detached backlog never fills.
        let mut reason = None;
        for _ in 0..20 {
            for _ in 0..50 {
                source.send_text(data(100)).await;
            }
            reason = left_reason(&mut watcher, &gone_id, Duration::from_millis(500)).await;
            if reason.is_some() {
                break;
            }
        }
        assert_eq!(reason.as_deref(), Some("too_slow"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sockets_refuse_messages_beyond_their_rate() {
    let config = |c: &mut Config| c.limits.messages_per_second = 20;
    with_config(LIMIT, config, async |s, _| {
        let addr = s.http_addr.to_string();
        let (mut room, _) = join_at(&addr, "a", "r").await;
        let api = common::Api::new(s);
        let dev = api.user("dee", "web").await;
        let mut device = Ws::connect_path(s, "/api/v1/ws").await;
        device
            .send(json!({"type": "auth", "token": dev.access}))
            .await;
        device.expect("ready").await;
        for (ws, ping) in [(&mut room, "ping"), (&mut device, "heartbeat")] {
            for _ in 0..100 {
                ws.send(json!({"type": ping})).await;
            }
            let (mut pongs, mut refused) = (0, 0);
            while pongs + refused < 100 {
                let m = tokio::time::timeout(Duration::from_secs(5), ws.recv())
                    .await
                    .unwrap()
                    .unwrap();
                match m["type"].as_str() {
                    Some("pong") => pongs += 1,
                    Some("error") => {
                        assert_eq!(m["code"], 429, "{m}");
                        refused += 1;
                    }
                    _ => {}
                }
            }
            // The burst of 20, and what a second's refill gave meanwhile.
            assert!((20..=40).contains(&pongs), "{ping}: {pongs} answered");
        }
    })
    .await;
}
