//! ICE over TCP in the core: the answer carries passive TCP candidates below
//! the UDP ones; frames given to `handle_receive_tcp` are routed as
//! datagrams are, and answered with `Protocol::Tcp` transmits; a TCP client
//! and a UDP client at the same address and port are two peers.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive, TcpType};
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc};
use vela_media_core::{JoinRequest, Output, PeerKind, RoomId, Sfu, SfuConfig, Signal};

struct Client {
    rtc: Rtc,
    proto: Protocol,
    addr: SocketAddr,
    conn: vela_media_core::ConnectionId,
    audio: Option<Mid>,
    frames: u64,
}

/// The candidates of an SDP: (protocol, priority, port, tcptype).
fn candidates(sdp: &str) -> Vec<(String, u32, u16, Option<String>)> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let tcptype = f
                .iter()
                .position(|w| *w == "tcptype")
                .map(|i| f[i + 1].to_owned());
            (
                f[2].to_ascii_lowercase(),
                f[3].parse().unwrap(),
                f[5].parse().unwrap(),
                tcptype,
            )
        })
        .collect()
}

#[test]
fn a_tcp_client_and_a_udp_client_at_one_address_hear_each_other() {
    crate::common::init_log();
    let udp_server: SocketAddr = "192.0.2.1:7882".parse().unwrap();
    let tcp_server: SocketAddr = "192.0.2.1:7881".parse().unwrap();
    let mut now = Instant::now();
    let config = SfuConfig::new(vec![udp_server]).set_tcp_candidates(vec![tcp_server]);
    let mut sfu = Sfu::new(config, now);
    let room = RoomId::new("tcp").unwrap();
    // The same address and port for both: only the transport tells them apart.
    let addr: SocketAddr = "198.51.100.7:50000".parse().unwrap();
    let mut clients = Vec::new();
    for (name, proto) in [("alice", Protocol::Tcp), ("bob", Protocol::Udp)] {
        let mut rtc = Rtc::builder().build(now);
        let local = match proto {
            Protocol::Tcp => Candidate::builder()
                .tcp()
                .host(addr)
                .tcptype(TcpType::Active)
                .build()
                .unwrap(),
            _ => Candidate::host(addr, "udp").unwrap(),
        };
        rtc.add_local_candidate(local);
        let joined = sfu
            .handle_join(now, JoinRequest::new(room.clone(), name, PeerKind::Session))
            .unwrap();
        let mut change = rtc.sdp_api();
        let audio = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().unwrap();
        let answer = sfu.handle_offer(now, joined.connection, offer).unwrap();
        let seen = candidates(&answer.to_sdp_string());
        let udp = seen.iter().find(|c| c.0 == "udp").expect("a UDP candidate");
        let tcp = seen.iter().find(|c| c.0 == "tcp").expect("a TCP candidate");
        assert_eq!((udp.2, tcp.2), (7882, 7881), "{seen:?}");
        assert_eq!(tcp.3.as_deref(), Some("passive"), "{seen:?}");
        assert!(udp.1 > tcp.1, "UDP is preferred: {seen:?}");
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        clients.push(Client {
            rtc,
            proto,
            addr,
            conn: joined.connection,
            audio: Some(audio),
            frames: 0,
        });
    }

    let end = now + Duration::from_secs(20);
    let mut tick = 0u64;
    let mut tcp_out = 0u64;
    while now < end && clients.iter().any(|c| c.frames < 20) {
        tick += 1;
        for c in &mut clients {
            if let (true, 0, Some(mid)) = (c.rtc.is_connected(), tick % 4, c.audio) {
                let w = c.rtc.writer(mid).unwrap();
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec == Codec::Opus)
                    .unwrap()
                    .pt();
                let time = MediaTime::from_millis(tick * 5).rebase(Frequency::FORTY_EIGHT_KHZ);
                w.write(pt, now, time, vec![0xfc, 0xff, 0xfe]).unwrap();
            }
            loop {
                match c.rtc.poll_output().unwrap() {
                    RtcOutput::Transmit(t) => {
                        assert_eq!(t.proto, c.proto, "each client keeps its transport");
                        match c.proto {
                            Protocol::Tcp => {
                                assert_eq!(t.destination, tcp_server);
                                sfu.handle_receive_tcp(now, c.addr, tcp_server, &t.contents);
                            }
                            _ => sfu.handle_receive(now, c.addr, udp_server, &t.contents),
                        }
                    }
                    RtcOutput::Event(Event::MediaData(_)) => c.frames += 1,
                    RtcOutput::Event(_) => {}
                    RtcOutput::Timeout(_) => break,
                }
            }
        }
        let next = loop {
            match sfu.poll_output() {
                Output::Transmit(t) => {
                    if t.proto == Protocol::Tcp {
                        tcp_out += 1;
                        assert_eq!(t.source, tcp_server);
                    }
                    let c = clients
                        .iter_mut()
                        .find(|c| c.addr == t.destination && c.proto == t.proto)
                        .expect("a client at the transmit's address and transport");
                    let r = Receive::new(t.proto, t.source, t.destination, &t.contents).unwrap();
                    c.rtc.handle_input(Input::Receive(now, r)).unwrap();
                }
                Output::Signal(conn, Signal::Offer(offer)) => {
                    let c = clients.iter_mut().find(|c| c.conn == conn).unwrap();
                    let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                    sfu.handle_answer(now, conn, answer).unwrap();
                }
                Output::Timeout(t) => break t,
                _ => {}
            }
        };
        now += Duration::from_millis(5);
        if now >= next {
            sfu.handle_timeout(now);
        }
        for c in &mut clients {
            c.rtc.handle_input(Input::Timeout(now)).unwrap();
        }
    }
    let frames: Vec<u64> = clients.iter().map(|c| c.frames).collect();
    assert!(
        frames.iter().all(|f| *f >= 20),
        "both hear each other: {frames:?}"
    );
    assert!(tcp_out > 20, "answers went out over TCP: {tcp_out}");
    assert_eq!(sfu.tcp_owner(addr), Some(clients[0].conn));
    assert!(!sfu.routes_tcp("203.0.113.9:1".parse().unwrap(), b"not stun"));
}
