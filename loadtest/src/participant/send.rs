//! Sending: each publisher's media schedule (20 ms audio, 1/fps video,
//! skipping rather than catching up when the engine fell behind) and the
//! RTP writes, through str0m's direct API or as plain RTP to the relay.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::UdpSocket;
use str0m::media::{Mid, Rid};
use str0m::rtp::{ExtensionValues, RtpWrite};
use webrtc_util::marshal::{Marshal, MarshalSize};

use super::{
    Client, Core, Counters, EngineConfig, Link, RAW_PT_OPUS, RAW_PT_VP8, RAW_RID_EXT, Sock, Stats,
    micros,
};
use crate::media::{AUDIO_INTERVAL, AudioSource, Packet, Trailer, VideoSource};

/// Media writes later than this are skipped rather than caught up.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);

impl Core {
    /// Writes every media frame that is due.
    pub(super) fn send_media(&mut self, slot: usize, now: Instant) {
        let Some(c) = self.clients[slot].as_mut() else {
            return;
        };
        let cfg = &self.cfg;
        let stats = &mut self.stats;
        let epoch = cfg.epoch;
        if let Some(mut a) = c.audio.take() {
            while a.next <= now {
                let lag = now - a.next;
                if lag > MAX_CATCH_UP {
                    stats.counters.skipped_frames += lag.as_micros() as u64 / 20_000;
                    a.next = now;
                }
                record_lag(stats, lag);
                let sender = Trailer::sender_id(c.id, false);
                let seq = a.source.seq;
                let p = a.source.next(&cfg.opus, sender, micros(now, epoch));
                let t = AudioSource::rtp_time(seq);
                c.write(
                    stats,
                    &a.mid,
                    None,
                    a.ssrc,
                    &mut a.rtp_seq,
                    t,
                    now,
                    p,
                    false,
                );
                stats.last_sent.insert(sender, seq);
                count_sent(stats, 1, 1);
                a.next += AUDIO_INTERVAL;
            }
            c.audio = Some(a);
        }
        if let Some(mut v) = c.video.take() {
            let interval = cfg.video.interval();
            while v.next <= now {
                let lag = now - v.next;
                if lag > MAX_CATCH_UP {
                    stats.counters.skipped_frames +=
                        (lag.as_micros() / interval.as_micros().max(1)) as u64;
                    v.next = now;
                }
                record_lag(stats, lag);
                let sender = Trailer::sender_id(c.id, true);
                let seq = v.source.seq;
                let frames = v.source.next(&cfg.video, sender, micros(now, epoch));
                let t = VideoSource::rtp_time(seq, cfg.video.fps);
                for f in frames {
                    let Some(l) = v.layers.get_mut(f.layer).filter(|l| l.active) else {
                        continue;
                    };
                    let n = f.packets.len() as u64;
                    for p in f.packets {
                        c.write(
                            stats,
                            &v.mid,
                            l.rid,
                            l.ssrc,
                            &mut l.rtp_seq,
                            t,
                            now,
                            p,
                            true,
                        );
                    }
                    count_sent(stats, 1, n);
                }
                stats.last_sent.insert(sender, seq);
                v.next += interval;
            }
            c.video = Some(v);
        }
    }
}

fn record_lag(stats: &mut Stats, lag: Duration) {
    let us = lag.as_micros() as u64;
    stats.interval.lag.record(us);
    if stats.recording {
        stats.window.lag.record(us);
    }
}

fn count_sent(stats: &mut Stats, frames: u64, packets: u64) {
    stats.interval.frames_sent += frames;
    stats.interval.packets_sent += packets;
    if stats.recording {
        stats.window.frames_sent += frames;
        stats.window.packets_sent += packets;
    }
}

pub(super) fn send(socket: &UdpSocket, counters: &mut Counters, data: &[u8], to: SocketAddr) {
    match socket.send_to(data, to) {
        Ok(_) => counters.datagrams_out += 1,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => counters.send_blocked += 1,
        Err(_) => counters.send_errors += 1,
    }
}

/// Media starts a random fraction of an interval after connecting, so
/// publishers that connect together do not send in lockstep.
pub(super) fn start_media(
    c: &mut Client,
    now: Instant,
    rng: &mut fastrand::Rng,
    cfg: &EngineConfig,
) {
    if let Some(a) = c.audio.as_mut() {
        a.next = now + AUDIO_INTERVAL.mul_f64(rng.f64());
    }
    if let Some(v) = c.video.as_mut() {
        v.next = now + cfg.video.interval().mul_f64(rng.f64());
    }
}

impl Client {
    /// Writes one RTP payload on the given stream.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        stats: &mut Stats,
        mid: &Mid,
        rid: Option<Rid>,
        ssrc: u32,
        rtp_seq: &mut u64,
        rtp_time: u32,
        now: Instant,
        p: Packet,
        video: bool,
    ) {
        let seq = *rtp_seq;
        *rtp_seq += 1;
        match &mut self.link {
            Link::Rtc(rtc) => {
                let Some((opus, vp8)) = self.pts else {
                    return;
                };
                let pt = if video { vp8 } else { opus };
                let mut ext = ExtensionValues::default();
                if !video {
                    ext.audio_level = Some(-30);
                    ext.voice_activity = Some(true);
                }
                let mut api = rtc.direct_api();
                if let Some(tx) = api.stream_tx_by_mid(*mid, rid) {
                    tx.write_rtp(
                        RtpWrite::new(pt, seq.into(), rtp_time, now, p.payload)
                            .marker(p.marker)
                            .ext_vals(ext)
                            .nackable(video),
                    );
                }
            }
            Link::Raw { relay, .. } => {
                let mut header = rtp::header::Header {
                    version: 2,
                    marker: p.marker,
                    payload_type: if video { RAW_PT_VP8 } else { RAW_PT_OPUS },
                    sequence_number: seq as u16,
                    timestamp: rtp_time,
                    ssrc,
                    ..Default::default()
                };
                if let Some(rid) = rid {
                    let _ =
                        header.set_extension(RAW_RID_EXT, Bytes::copy_from_slice(rid.as_bytes()));
                }
                let pkt = rtp::packet::Packet {
                    header,
                    payload: Bytes::from(p.payload),
                };
                let mut buf = [0u8; 1600];
                let size = pkt.marshal_size();
                if size <= buf.len()
                    && let Ok(n) = pkt.marshal_to(&mut buf)
                    && let Sock::Udp(socket) = &self.socket
                {
                    send(socket, &mut stats.counters, &buf[..n], *relay);
                }
            }
        }
    }
}
