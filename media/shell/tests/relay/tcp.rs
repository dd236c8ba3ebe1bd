//! ICE over TCP: str0m clients on TCP connections to the node's one TCP port
//! (RFC 4571 framing), beside UDP clients, over two shards; what is not ICE
//! is closed and counted; a client that stops reading does not delay the
//! others.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vela_media::core::{RoomId, SfuConfig};
use vela_media::{CloseReason, MediaHandle, MediaSockets, MediaTask, NodeOptions, TcpListeners};

use crate::client::{Client, Publish, Via};
use crate::shards::{LOOPBACK, until};

/// `n` shards on loopback, each with its UDP port, and one TCP port for all.
async fn node(n: usize) -> (MediaHandle, MediaTask, SocketAddr) {
    let tcp = TcpListeners::bind(&[LOOPBACK], 0, LOOPBACK)
        .await
        .expect("bind tcp");
    let tcp_addr = tcp.advertised()[0];
    let mut shards = Vec::new();
    for k in 0..n {
        let sockets = MediaSockets::bind(&[LOOPBACK], 0, LOOPBACK)
            .await
            .expect("bind");
        let config = SfuConfig::new(sockets.advertised())
            .set_id_space(k as u64 + 1, n as u64)
            .set_tcp_candidates(tcp.advertised());
        shards.push((sockets, config));
    }
    let (media, task) = vela_media::spawn_node(shards, None, NodeOptions::new().set_tcp(tcp));
    (media, task, tcp_addr)
}

fn tcp_stats(media: &MediaHandle) -> vela_media::TcpStats {
    media.tcp_stats().expect("the node listens on TCP")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_over_tcp_on_one_port_across_two_shards_get_their_media() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (media, _task, tcp) = node(2).await;
        // Two rooms, one per shard (the second goes to the emptier shard).
        let mut clients = Vec::new();
        for (room, people) in [
            (
                "north",
                [
                    ("alice", Via::Tcp(tcp)),
                    ("bob", Via::Tcp(tcp)),
                    ("carol", Via::Udp),
                ],
            ),
            (
                "south",
                [
                    ("dave", Via::Tcp(tcp)),
                    ("erin", Via::Tcp(tcp)),
                    ("frank", Via::Tcp(tcp)),
                ],
            ),
        ] {
            for (name, via) in people {
                // Everyone publishes: each receives the other two.
                let c = Client::join_via(&media, room, name, Publish::AudioVideo, None, via).await;
                clients.push(c);
            }
        }
        assert_eq!(media.shard_of_room(&RoomId::new("north").unwrap()), Some(0));
        assert_eq!(media.shard_of_room(&RoomId::new("south").unwrap()), Some(1));
        let flowing = until(Duration::from_secs(30), || {
            clients.iter().all(|c| c.audio() >= 40 && c.video() >= 20)
        })
        .await;
        let got: Vec<(u64, u64)> = clients.iter().map(|c| (c.audio(), c.video())).collect();
        assert!(flowing, "every client receives both others: {got:?}");
        let t = tcp_stats(&media);
        assert_eq!(t.open, 5, "five TCP clients, one connection each: {t:?}");
        assert_eq!(t.accepted, 5, "{t:?}");
        assert!(t.frames_in > 100 && t.frames_out > 100, "{t:?}");
        assert_eq!(t.dropped_full, 0, "{t:?}");
        // Each connection was adopted by the shard of its room's core.
        let per_shard = media.shard_stats().await.unwrap();
        assert!(
            per_shard.iter().all(|s| s.participants == 3),
            "{per_shard:?}"
        );
        // A client that leaves takes its connection with it.
        // (Its client stays, reading and sending: the server closes it.)
        clients[0]
            .counts
            .stay_after_left
            .store(true, Ordering::Relaxed);
        let gone = clients[0].conn;
        media
            .leave(gone, vela_media::core::LeaveReason::ClientLeave)
            .await;
        let closed = until(Duration::from_secs(10), || tcp_stats(&media).open == 4).await;
        let t = tcp_stats(&media);
        assert!(closed, "{t:?}");
        assert_eq!(t.closed(CloseReason::PeerGone), 1, "{t:?}");
    })
    .await
    .expect("test timed out");
}

/// Whether the server closed `s` (end of stream or reset) within `within`;
/// whatever it sends before is skipped.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let end = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout_at(end, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// A STUN binding request naming `username`, framed.
fn framed_binding_request(username: &str) -> Vec<u8> {
    let msg = str0m::ice::StunMessage::binding_request(
        username,
        str0m::ice::TransId::new(),
        true,
        7,
        1 << 24,
        false,
    );
    let mut buf = vec![0u8; 512];
    let n = msg
        .to_bytes(Some(b"not the password"), &mut buf, |_, _| [0; 20])
        .expect("encodes");
    let mut out = (n as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&buf[..n]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_ice_is_closed_and_counted() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let (media, _task, tcp) = node(2).await;
        // A participant, so that a ufrag exists (and its connection is good).
        let alice = Client::join_via(
            &media,
            "r",
            "alice",
            Publish::AudioVideo,
            None,
            Via::Tcp(tcp),
        )
        .await;
        let bob = Client::join_via(&media, "r", "bob", Publish::AudioVideo, None, Via::Udp).await;
        assert!(
            until(Duration::from_secs(20), || alice.video() >= 5
                && bob.video() >= 5)
            .await
        );

        let start = Instant::now();
        let mut silent = TcpStream::connect(tcp).await.unwrap();
        let mut cases: Vec<(&str, Vec<u8>, CloseReason)> = vec![
            // An HTTP request: its first two bytes read as a length of 18245.
            (
                "http",
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
                CloseReason::BadFrame,
            ),
            ("zero length", vec![0, 0, 1, 2, 3], CloseReason::BadFrame),
            (
                "not stun",
                vec![0, 4, 0x80, 0x60, 0, 1],
                CloseReason::NotStun,
            ),
            (
                "unknown ufrag",
                framed_binding_request("nobody:client"),
                CloseReason::NoPeer,
            ),
        ];
        // Oversize, with only the prefix sent: refused without waiting for it.
        cases.push(("oversize", vec![0xff, 0xff], CloseReason::BadFrame));
        for (what, bytes, _) in &cases {
            let mut s = TcpStream::connect(tcp).await.unwrap();
            s.write_all(bytes).await.unwrap();
            assert!(
                closed_by_server(&mut s, Duration::from_secs(3)).await,
                "{what}: closed at once"
            );
        }
        // One address holds at most so many connections that sent nothing
        // yet: the next is closed at once.
        let mut more = Vec::new();
        for _ in 1..vela_media::TCP_MAX_PENDING_PER_IP {
            more.push(TcpStream::connect(tcp).await.unwrap());
        }
        assert!(
            until(Duration::from_secs(2), || tcp_stats(&media).pending
                == u64::from(vela_media::TCP_MAX_PENDING_PER_IP))
            .await
        );
        let mut refused = TcpStream::connect(tcp).await.unwrap();
        assert!(
            closed_by_server(&mut refused, Duration::from_secs(2)).await,
            "over the limit"
        );
        // The silent ones: closed after the first-frame deadline, not before.
        assert!(!closed_by_server(&mut silent, Duration::from_millis(500)).await);
        assert!(closed_by_server(&mut silent, Duration::from_secs(8)).await);
        for s in &mut more {
            assert!(closed_by_server(s, Duration::from_secs(2)).await);
        }
        assert!(start.elapsed() >= vela_media::TCP_FIRST_FRAME_TIMEOUT);
        let t = tcp_stats(&media);
        let count = |r: CloseReason| cases.iter().filter(|c| c.2 == r).count() as u64;
        assert_eq!(
            t.closed(CloseReason::BadFrame),
            count(CloseReason::BadFrame),
            "{t:?}"
        );
        assert_eq!(t.closed(CloseReason::NotStun), 1, "{t:?}");
        assert_eq!(t.closed(CloseReason::NoPeer), 1, "{t:?}");
        assert_eq!(
            t.closed(CloseReason::Silent),
            u64::from(vela_media::TCP_MAX_PENDING_PER_IP),
            "{t:?}"
        );
        assert_eq!(t.closed(CloseReason::Limit), 1, "{t:?}");
        assert!(
            until(Duration::from_secs(2), || tcp_stats(&media).open == 1).await,
            "{t:?}"
        );
        assert_eq!(tcp_stats(&media).pending, 0);
        // The good connection went on meanwhile.
        let v = alice.video();
        assert!(until(Duration::from_secs(5), || alice.video() >= v + 20).await);
    })
    .await
    .expect("test timed out");
}

/// The p50 and p95 delay, and the longest time without a frame, of the
/// frames received (arrival, delay), in milliseconds.
fn summary(frames: &[(u64, u64)]) -> (f64, f64, f64) {
    let mut v: Vec<u64> = frames.iter().map(|f| f.1).collect();
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    let gap = frames
        .windows(2)
        .map(|w| w[1].0.saturating_sub(w[0].0))
        .max()
        .unwrap_or(0);
    (at(0.5), at(0.95), gap as f64 / 1000.0)
}

/// The clients' video frames (arrival, delay) received since the last call.
fn delays(clients: &[&Client]) -> Vec<Vec<(u64, u64)>> {
    clients
        .iter()
        .map(|c| std::mem::take(&mut *c.counts.video_delays_us.lock().unwrap()))
        .collect()
}

/// The delays of the clients' video frames received during `window`.
async fn delays_over(clients: &[&Client], window: Duration) -> Vec<Vec<(u64, u64)>> {
    let _ = delays(clients);
    tokio::time::sleep(window).await;
    delays(clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_client_that_stops_reading_does_not_delay_the_others() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let (media, _task, tcp) = node(1).await;
        // About 2 Mbit/s of video to each subscriber.
        let publisher = Client::join_via(&media, "r", "pub", Publish::Heavy, None, Via::Udp).await;
        let over_tcp = Client::join_via(&media, "r", "tcp", Publish::Nothing, None, Via::Tcp(tcp)).await;
        let over_udp = Client::join_via(&media, "r", "udp", Publish::Nothing, None, Via::Udp).await;
        assert!(
            until(Duration::from_secs(20), || over_tcp.video() >= 20 && over_udp.video() >= 20).await,
            "media flows: {} {}",
            over_tcp.video(),
            over_udp.video()
        );
        let _ = &publisher;
        // The publisher's pacer holds its first frames back until its rate
        // has grown: the baseline is taken once the delays have settled.
        let window = Duration::from_millis(1500);
        let mut before = Vec::new();
        for _ in 0..20 {
            before = delays_over(&[&over_tcp, &over_udp], window).await;
            if before.iter().all(|d| d.len() > 2 && summary(d).1 < 50.0) {
                break;
            }
        }

        // A third subscriber over TCP, which then stops reading.
        let slow = Client::join_via(&media, "r", "slow", Publish::Nothing, None, Via::Tcp(tcp)).await;
        assert!(until(Duration::from_secs(20), || slow.video() >= 10).await);
        // The others' delays from the moment it stops reading until it is
        // closed: its queue fills, the server drops for it, then closes it
        // as stalled.
        let _ = delays(&[&over_tcp, &over_udp]);
        slow.counts.stop_reading.store(true, Ordering::Relaxed);
        assert!(
            until(Duration::from_secs(20), || tcp_stats(&media).closed(CloseReason::Stalled) == 1).await,
            "{:?}",
            tcp_stats(&media)
        );
        let during = delays(&[&over_tcp, &over_udp]);
        for (i, who) in ["tcp", "udp"].iter().enumerate() {
            let (b50, b95, bgap) = summary(&before[i]);
            let (d50, d95, dgap) = summary(&during[i]);
            eprintln!(
                "{who} subscriber's video, ms: before p50 {b50:.2} p95 {b95:.2} longest gap {bgap:.0} ({} frames); \
                 while a TCP subscriber stalls p50 {d50:.2} p95 {d95:.2} longest gap {dgap:.0} ({} frames)",
                before[i].len(),
                during[i].len(),
            );
            assert!(during[i].len() >= 20, "{who}: frames received");
            assert!(d50 <= b50 + 15.0, "{who}: p50 {b50:.2} -> {d50:.2} ms");
            assert!(d95 <= b95 + 50.0, "{who}: p95 {b95:.2} -> {d95:.2} ms");
            // A shard held up by the stalled connection shows as a pause
            // (the publisher's packets overflow the UDP buffer meanwhile:
            // lost frames, not late ones).
            assert!(dgap <= bgap + 200.0, "{who}: longest gap {bgap:.0} -> {dgap:.0} ms");
        }
        let t = tcp_stats(&media);
        assert!(t.dropped_full > 0, "dropped for the stalled one: {t:?}");
        assert_eq!(t.open, 1, "the stalled one closed, the other open: {t:?}");
        // The others still receive.
        let v = over_tcp.video();
        assert!(until(Duration::from_secs(5), || over_tcp.video() >= v + 20).await);
    })
    .await
    .expect("test timed out");
}
