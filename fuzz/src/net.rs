//! str0m clients standing in for browsers, and a lossless in-memory
//! network between them and the core (as the core's tests have it):
//! ICE, DTLS and SRTP run for real, on a virtual clock.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Instant;

use str0m::config::DtlsCert;
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid, Simulcast, SimulcastLayer};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output as RtcOutput, Rtc};
use vela_media_core::{ConnectionId, Output, Sfu, Signal};

use crate::world::SERVER;

/// The simulcast layers a client sends.
pub const RIDS: [&str; 3] = ["q", "h", "f"];

/// A client address: 192.0.2.`host` (a documentation range).
pub fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)), port)
}

/// One certificate for every client: making one per input would cost more
/// than the handshakes.
fn client_cert() -> &'static DtlsCert {
    static CERT: OnceLock<DtlsCert> = OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("a certificate")
    })
}

/// What a client's offer adds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Offer {
    /// Sends audio.
    pub audio: bool,
    /// Sends video.
    pub video: bool,
    /// The video as three simulcast layers.
    pub simulcast: bool,
    /// Receives audio and video (as a WHEP viewer offers).
    pub receive: bool,
    /// A data channel.
    pub data: bool,
}

/// A str0m peer standing in for a browser.
pub struct Client {
    pub rtc: Rtc,
    /// Its addresses; the first is where it started.
    pub addrs: Vec<SocketAddr>,
    /// Its connection id, once joined.
    pub id: Option<ConnectionId>,
    pub timeout: Instant,
    pub connected: bool,
    /// Told `left` by the server.
    pub left: bool,
    /// Media frames received.
    pub frames: u64,
    /// Its m-lines: its own (sending ones) and those the server added.
    pub mids: Vec<(Mid, MediaKind, Direction)>,
    /// Its m-lines that send simulcast.
    simulcast: Vec<Mid>,
    /// Frames written so far (for timestamps).
    written: u64,
}

impl Client {
    /// A client at `addr`.
    pub fn new(now: Instant, addr: SocketAddr) -> Client {
        let mut rtc = Rtc::builder()
            .set_dtls_cert(client_cert().clone())
            .build(now);
        if let Ok(c) = Candidate::host(addr, "udp") {
            rtc.add_local_candidate(c);
        }
        Client {
            rtc,
            addrs: vec![addr],
            id: None,
            timeout: now,
            connected: false,
            left: false,
            frames: 0,
            mids: Vec::new(),
            simulcast: Vec::new(),
            written: 0,
        }
    }

    /// An offer adding what `o` says; `None` when it adds nothing.
    pub fn offer(
        &mut self,
        o: Offer,
    ) -> Option<(str0m::change::SdpOffer, str0m::change::SdpPendingOffer)> {
        let mut change = self.rtc.sdp_api();
        let mut added = Vec::new();
        if o.audio {
            let mid = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            added.push((mid, MediaKind::Audio, Direction::SendOnly));
        }
        if o.video {
            let layers = o.simulcast.then(|| {
                let mut s = Simulcast::new();
                for rid in RIDS {
                    s.add_send_layer(SimulcastLayer::new(rid));
                }
                s
            });
            let simulcast = layers.is_some();
            let mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, layers);
            added.push((mid, MediaKind::Video, Direction::SendOnly));
            if simulcast {
                self.simulcast.push(mid);
            }
        }
        if o.receive {
            for kind in [MediaKind::Audio, MediaKind::Video] {
                let mid = change.add_media(kind, Direction::RecvOnly, None, None, None);
                added.push((mid, kind, Direction::RecvOnly));
            }
        }
        if o.data {
            change.add_channel("vela".into());
        }
        let r = change.apply();
        if r.is_some() {
            self.mids.extend(added);
        }
        r
    }

    /// One frame on each m-line it sends (the sample API: str0m packetizes):
    /// Opus, or a VP8 frame, a keyframe when `key`, on every layer.
    pub fn write_media(&mut self, now: Instant, key: bool) {
        self.written += 1;
        let n = self.written;
        let sending: Vec<(Mid, MediaKind)> = self
            .mids
            .iter()
            .filter(|(_, _, d)| *d == Direction::SendOnly)
            .map(|(m, k, _)| (*m, *k))
            .collect();
        for (mid, kind) in sending {
            let codec = if kind == MediaKind::Audio {
                Codec::Opus
            } else {
                Codec::Vp8
            };
            let Some(pt) = self.rtc.writer(mid).and_then(|w| {
                w.payload_params()
                    .find(|p| p.spec().codec == codec)
                    .map(|p| p.pt())
            }) else {
                continue;
            };
            let simulcast = self.simulcast.contains(&mid);
            let rids: Vec<Option<&str>> = if simulcast {
                RIDS.iter().map(|r| Some(*r)).collect()
            } else {
                vec![None]
            };
            for rid in rids {
                let Some(mut w) = self.rtc.writer(mid) else {
                    continue;
                };
                if let Some(rid) = rid {
                    w = w.rid(rid.into());
                }
                let (time, data) = if kind == MediaKind::Audio {
                    let t = MediaTime::from_millis(n * 20)
                        .rebase(str0m::media::Frequency::FORTY_EIGHT_KHZ);
                    (t, vec![0xfc, 0xff, 0xfe, n as u8])
                } else {
                    // A VP8 frame tag (bit 0 clear: a keyframe) and start code.
                    let tag = if key { 0x10 } else { 0x11 };
                    (
                        MediaTime::from_90khz(n * 4500),
                        vec![tag, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0, 0],
                    )
                };
                let _ = w.write(pt, now, time, data);
            }
        }
    }
}

/// The in-memory network: datagrams on their way to the core, and loss on
/// the way to one address.
#[derive(Default)]
pub struct Net {
    to_server: VecDeque<(SocketAddr, Vec<u8>)>,
    /// Datagrams to `lose_to` still to be lost.
    pub lose: u32,
    pub lose_to: Option<SocketAddr>,
    /// When the core last said it waits until (its `Output::Timeout`).
    pub core_timeout: Option<Instant>,
}

impl Net {
    /// A datagram from `source` to the core.
    pub fn send(&mut self, source: SocketAddr, datagram: Vec<u8>) {
        self.to_server.push_back((source, datagram));
    }

    /// Moves datagrams between the clients and the core until nothing moves
    /// (bounded); the core's signals, in order, for the caller to act on.
    pub fn pump(
        &mut self,
        sfu: &mut Sfu,
        now: Instant,
        clients: &mut [&mut Client],
    ) -> Vec<(ConnectionId, Signal)> {
        let mut signals = Vec::new();
        for _ in 0..50 {
            let mut moved = false;
            for c in clients.iter_mut() {
                for _ in 0..10_000 {
                    if !c.rtc.is_alive() {
                        break;
                    }
                    match c.rtc.poll_output() {
                        Ok(RtcOutput::Timeout(t)) => {
                            c.timeout = t;
                            break;
                        }
                        Ok(RtcOutput::Transmit(t)) => {
                            self.to_server.push_back((t.source, t.contents.to_vec()));
                        }
                        Ok(RtcOutput::Event(e)) => match e {
                            Event::Connected => c.connected = true,
                            Event::MediaData(_) => c.frames += 1,
                            Event::MediaAdded(m) => c.mids.push((m.mid, m.kind, m.direction)),
                            _ => {}
                        },
                        // A frame the client cannot depacketize: dropped, as a browser would.
                        Err(str0m::RtcError::Packet(..)) => {}
                        Err(_) => break,
                    }
                }
            }
            while let Some((src, data)) = self.to_server.pop_front() {
                moved = true;
                sfu.handle_receive(now, src, SERVER, &data);
            }
            for _ in 0..100_000 {
                match sfu.poll_output() {
                    Output::Timeout(t) => {
                        self.core_timeout = Some(t);
                        break;
                    }
                    Output::Transmit(t) => {
                        moved = true;
                        if self.lose > 0 && self.lose_to == Some(t.destination) {
                            self.lose -= 1;
                            continue;
                        }
                        let Some(c) = clients
                            .iter_mut()
                            .find(|c| c.addrs.contains(&t.destination))
                        else {
                            continue;
                        };
                        if !c.rtc.is_alive() {
                            continue;
                        }
                        if let Ok(r) =
                            Receive::new(Protocol::Udp, t.source, t.destination, &t.contents)
                        {
                            let _ = c.rtc.handle_input(Input::Receive(now, r));
                        }
                    }
                    Output::Signal(p, s) => {
                        moved = true;
                        if matches!(s, Signal::Left { .. })
                            && let Some(c) = clients.iter_mut().find(|c| c.id == Some(p))
                        {
                            c.left = true;
                        }
                        signals.push((p, s));
                    }
                    _ => {}
                }
            }
            if !moved {
                break;
            }
        }
        signals
    }
}

/// Runs the clients' due timeouts.
pub fn client_timeouts(now: Instant, clients: &mut [&mut Client]) {
    for c in clients.iter_mut() {
        if c.rtc.is_alive() && c.timeout <= now {
            let _ = c.rtc.handle_input(Input::Timeout(now));
        }
    }
}
