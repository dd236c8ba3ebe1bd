//! A participant that sends hostile media over its own, valid SRTP session:
//! random and malformed VP8, H264 and Opus payloads, sequence numbers and
//! timestamps that jump and repeat, MID and RID header extensions that
//! claim other m-lines and layers never offered. The server parses those
//! payloads (depacketizing, keyframe detection, audio levels) and routes by
//! those extensions, so this is where a crafted packet could take down a
//! shard. It must not, and the others' call must go on.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::{Duration, Instant};

use common::World;
use str0m::format::Codec;
use str0m::media::{MediaKind, Mid, Pt};
use str0m::rtp::{ExtensionValues, RtpWrite};

/// xorshift64*: repeatable noise.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A payload shaped to reach deep into one codec's depacketizer: valid
/// looking headers with random flags, then lengths that lie or run short.
fn hostile_payload(codec: Codec, n: &mut Noise) -> Vec<u8> {
    let len = match n.below(4) {
        0 => n.below(4) as usize,
        1 => n.below(16) as usize,
        _ => n.below(1100) as usize,
    };
    let mut p = n.bytes(len);
    match (codec, p.first_mut()) {
        // VP8 payload descriptor: X, S, partition index; the extension
        // byte's I, L, T, K bits and a 15-bit picture id follow, or do not.
        (Codec::Vp8, Some(b0)) => {
            *b0 = (*b0 & 0x9f) | if n.below(2) == 0 { 0x10 } else { 0 };
            if n.below(2) == 0 {
                *b0 |= 0x80;
            }
        }
        // H264: a single NAL unit, STAP-A (24) with lengths that overrun,
        // or FU-A (28) starts, middles and ends in any order.
        (Codec::H264, Some(b0)) => {
            let nal = [1, 5, 7, 8, 24, 24, 28, 28, 28, 0, 29, 31][n.below(12) as usize];
            *b0 = (*b0 & 0xe0) | nal;
        }
        _ => {}
    }
    p
}

/// Writes `count` hostile RTP packets on the client's m-line `mid`: random
/// payload types among those negotiated, payloads shaped for the codec of
/// the type, markers, sequence numbers and timestamps that jump, repeat and
/// go backwards, random audio levels, and MID and RID header extensions
/// that claim the `other` m-line or layers that do not exist.
fn send_hostile(
    w: &mut World,
    client: usize,
    (mid, other): (Mid, Mid),
    (seq, time): (&mut u64, &mut u32),
    count: usize,
    n: &mut Noise,
) {
    let now = w.now;
    let c = &mut w.clients[client];
    let pts: Vec<(Pt, Codec)> = c
        .rtc
        .writer(mid)
        .unwrap()
        .payload_params()
        .map(|p| (p.pt(), p.spec().codec))
        .collect();
    let mut api = c.rtc.direct_api();
    let tx = api.stream_tx_by_mid(mid, None).unwrap();
    for _ in 0..count {
        // (A payload type the m-line lacks never leaves str0m's sender.)
        let (pt, codec) = pts[n.below(pts.len() as u64) as usize];
        // Mostly forward, as a receiver accepts; sometimes back, repeated
        // or far ahead.
        *seq = match n.below(20) {
            0 => seq.wrapping_sub(n.below(40)),
            1 => *seq,
            2 => seq.wrapping_add(n.below(3_000)),
            _ => *seq + 1,
        };
        *time = match n.below(10) {
            0 => n.next() as u32,
            1 => time.wrapping_sub(3_000),
            _ => time.wrapping_add(n.below(2) as u32 * 3_000),
        };
        // Once the server has reported on the SSRC, str0m stops writing
        // the m-line's own MID and RID: these then claim other m-lines,
        // simulcast layers never offered, or nothing known.
        let claims = [other.to_string(), mid.to_string(), "zz9".into()];
        let layers = ["q", "h", "f", "x", ""];
        let ext = ExtensionValues {
            audio_level: Some(-(n.below(128) as i8)),
            voice_activity: Some(n.below(2) == 0),
            mid: (n.below(8) == 0).then(|| claims[n.below(3) as usize].as_str().into()),
            rid: (n.below(8) == 0).then(|| layers[n.below(5) as usize].into()),
            ..Default::default()
        };
        let payload = hostile_payload(codec, n);
        let rtp = RtpWrite::new(pt, (*seq).into(), *time, now, payload)
            .marker(n.below(2) == 0)
            .ext_vals(ext);
        tx.write_rtp(rtp);
    }
}

#[test]
fn hostile_media_from_a_participant_harms_nobody() {
    let mut w = World::new();
    let honest = w.join("room1", "alice", true);
    let viewer = w.join("room1", "bob", false);
    let hostile = w.join("room1", "mallory", true);
    let ok = w.run_until(Duration::from_secs(10), |w| {
        let from = w.clients[honest].id;
        w.clients.iter().all(|c| c.connected)
            && w.clients[viewer].frames_from(from, MediaKind::Video) >= 5
    });
    assert!(ok, "everyone connected and media flows");
    // Only the hostile client's direct writes reach the server from now on.
    let (audio, video) = (
        w.clients[hostile].audio.take().unwrap(),
        w.clients[hostile].video.take().unwrap(),
    );
    // Bounded in count and in wall time (a debug build parses slowly).
    let addr = w.clients[hostile].addr;
    let arrived = |w: &World| w.rtp_in.iter().filter(|a| **a == addr).count();
    let arrived_before = arrived(&w);
    let received_before = w.sfu.stats().packets_received;
    let started = Instant::now();
    let mut noise = Noise(0x005e_ed0f_0bad_u64);
    let mut sent = 0;
    // A thousand ahead of the client's own packets: a fixed start would be
    // behind its random one now and then, and a receiver drops what is
    // that late before depacketizing it.
    let mut ahead_of = |mid: Mid| {
        let ssrc = w.clients[hostile]
            .rtc
            .direct_api()
            .stream_tx_by_mid(mid, None)
            .map(|tx| *tx.ssrc())
            .unwrap();
        u64::from(w.last_rtp_seq.get(&ssrc).copied().unwrap_or(0)) + 1_000
    };
    let (mut vseq, mut aseq) = (ahead_of(video), ahead_of(audio));
    let (mut vtime, mut atime) = (9_000_000u32, 0u32);
    while sent < 6_000 && started.elapsed() < Duration::from_secs(20) {
        send_hostile(
            &mut w,
            hostile,
            (video, audio),
            (&mut vseq, &mut vtime),
            40,
            &mut noise,
        );
        send_hostile(
            &mut w,
            hostile,
            (audio, video),
            (&mut aseq, &mut atime),
            10,
            &mut noise,
        );
        sent += 50;
        w.run_for(Duration::from_millis(10));
    }
    assert!(sent >= 1_000, "sent only {sent} hostile packets");
    let (arrived, received) = (
        arrived(&w) - arrived_before,
        w.sfu.stats().packets_received - received_before,
    );
    eprintln!("sent {sent}, arrived {arrived}, media packets parsed into frames {received}");
    // The client's own stack drops a few (empty payloads, say).
    assert!(
        arrived * 10 >= sent * 8,
        "the server got them: {arrived} of {sent}"
    );
    assert!(received > 100, "and depacketized some: {received}");

    // The honest publisher's call goes on for the viewer, and the hostile
    // one is still just a participant.
    let from = w.clients[honest].id;
    let (video_before, audio_before) = (
        w.clients[viewer].frames_from(from, MediaKind::Video),
        w.clients[viewer].frames_from(from, MediaKind::Audio),
    );
    let ok = w.run_until(Duration::from_secs(5), |w| {
        w.clients[viewer].frames_from(from, MediaKind::Video) >= video_before + 20
            && w.clients[viewer].frames_from(from, MediaKind::Audio) >= audio_before + 50
    });
    assert!(ok, "the honest publisher's media still reaches the viewer");
    // Undecodable frames cost the frame, not the connection.
    let stats = w.sfu.stats();
    eprintln!(
        "undecodable frames dropped: {} by the server, {} by the viewer",
        stats.media_undecodable, w.clients[viewer].undecodable
    );
    assert!(stats.media_undecodable > 0, "{stats:?}");
    assert_eq!(stats.participants, 3);
    assert!(
        w.clients
            .iter()
            .all(|c| c.left.is_none() && c.rtc.is_alive())
    );
}
