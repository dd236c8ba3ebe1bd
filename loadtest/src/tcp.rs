//! ICE over TCP for the participants (`--transport tcp`): the server's
//! passive TCP candidate picked from its answer, and RFC 4571 framing (each
//! STUN, DTLS, RTP or RTCP packet behind a 16-bit big-endian length) with
//! bounded buffers both ways.
//!
//! The client side is the one browsers take (RFC 6544): an active TCP
//! candidate that connects to the server's passive one once the answer has
//! named it, so the offer carries no candidate and the connection's real
//! local address becomes the client's candidate after the connect.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use clap::ValueEnum;
use serde::Serialize;
use str0m::Candidate;
use str0m::net::{Protocol, TcpType};

/// How participants carry their media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaTransport {
    /// A UDP host candidate per participant (what a browser prefers).
    #[default]
    Udp,
    /// An active TCP candidate per participant, connected to the server's
    /// passive TCP candidate (`media.tcp_port`); no UDP candidate at all.
    Tcp,
}

/// Why a participant could not use TCP.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The answer named no passive TCP candidate.
    #[error(
        "the server offered no passive TCP candidate (is media.tcp_port set, e.g. VELA_MEDIA_TCP_PORT=7881?)"
    )]
    NoCandidate,
    /// A frame longer than RFC 4571's 16-bit length.
    #[error("a packet of {0} bytes does not fit RFC 4571 framing")]
    TooLarge(usize),
}

/// The server's passive TCP candidate in an SDP answer: the highest
/// priority one (candidates repeat per m-line; the first of equals wins).
/// TCP candidates with another role, and lines that do not parse, are
/// skipped.
pub fn server_tcp_candidate(sdp: &str) -> Result<SocketAddr, TcpError> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .filter_map(|l| Candidate::from_sdp_string(l).ok())
        .filter(|c| c.proto() == Protocol::Tcp && c.tcptype() == Some(TcpType::Passive))
        .fold(None::<Candidate>, |best, c| match best {
            Some(b) if b.prio() >= c.prio() => Some(b),
            _ => Some(c),
        })
        .map(|c| c.addr())
        .ok_or(TcpError::NoCandidate)
}

/// The client's active TCP host candidate for a connected stream (its
/// real local address: the server's binding responses map to it).
pub fn active_candidate(local: SocketAddr) -> Result<Candidate, str0m::error::IceError> {
    Candidate::builder()
        .tcp()
        .host(local)
        .tcptype(TcpType::Active)
        .build()
}

/// Largest packet a frame carries (the length field is 16 bits).
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Appends `packet` to `out` as one RFC 4571 frame.
pub fn encode(packet: &[u8], out: &mut impl Extend<u8>) -> Result<(), TcpError> {
    let len = u16::try_from(packet.len()).map_err(|_| TcpError::TooLarge(packet.len()))?;
    out.extend(len.to_be_bytes());
    out.extend(packet.iter().copied());
    Ok(())
}

/// Reassembles frames from a byte stream. Its buffer grows on demand up to
/// [`Decoder::LIMIT`], which always holds one whole frame, so a peer cannot
/// make it grow further: whatever length a header claims, the frame fits
/// once the bytes before it are consumed.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Parsed up to here.
    start: usize,
    /// Valid bytes up to here.
    end: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            buf: vec![0; Self::INITIAL],
            start: 0,
            end: 0,
        }
    }
}

impl Decoder {
    /// The buffer's first size: a few dozen audio packets, a burst of video.
    pub const INITIAL: usize = 16 * 1024;
    /// Its largest size: one frame of the largest length and its header.
    pub const LIMIT: usize = MAX_FRAME + 2;

    /// One `read` from `r` into the buffer's free space (compacting or
    /// growing it first when it is full). `Ok(0)`: the stream ended.
    pub fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                // Full of one incomplete frame: it is larger than the
                // buffer, and the limit holds the largest.
                let grown = (self.buf.len() * 2).min(Self::LIMIT);
                self.buf.resize(grown, 0);
            }
        }
        if self.end == self.buf.len() {
            // Only when a caller reads before taking the whole frames
            // buffered; a read into no room would look like the end.
            return Err(io::Error::other("frame buffer full: take its frames first"));
        }
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// The next whole frame's packet, if one is buffered. Empty frames
    /// (length 0) are skipped: they carry nothing.
    pub fn next_frame(&mut self) -> Option<&[u8]> {
        loop {
            let avail = &self.buf[self.start..self.end];
            let [h0, h1, ..] = *avail else {
                return None;
            };
            let len = usize::from(u16::from_be_bytes([h0, h1]));
            if avail.len() < 2 + len {
                return None;
            }
            let at = self.start + 2;
            self.start = at + len;
            if self.start == self.end {
                // Drained: start over at the front (no copying later).
                self.start = 0;
                self.end = 0;
            }
            if len > 0 {
                return Some(&self.buf[at..at + len]);
            }
        }
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }
}

/// Frames waiting for the socket: whole frames only, at most `limit` bytes
/// (a frame that does not fit is refused, so the stream stays framed).
#[derive(Debug)]
pub struct TxQueue {
    buf: VecDeque<u8>,
    limit: usize,
}

impl TxQueue {
    /// An empty queue holding at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        TxQueue {
            buf: VecDeque::new(),
            limit,
        }
    }

    /// Queues `packet` as one frame; false (nothing queued) when it would
    /// pass the limit or cannot be framed.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        if packet.len() > MAX_FRAME || self.buf.len() + 2 + packet.len() > self.limit {
            return false;
        }
        encode(packet, &mut self.buf).is_ok()
    }

    /// Writes as much as `w` takes. `Ok(true)`: all written; `Ok(false)`:
    /// the socket is full (`WouldBlock`), the rest stays queued.
    pub fn flush(&mut self, w: &mut impl Write) -> io::Result<bool> {
        while !self.buf.is_empty() {
            let (a, b) = self.buf.as_slices();
            let r = if b.is_empty() {
                w.write(a)
            } else {
                w.write_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)])
            };
            match r {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.buf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A reader handing out its bytes `chunk` at a time.
    struct Chunks<'a> {
        data: &'a [u8],
        chunk: usize,
    }

    impl Read for Chunks<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.data.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.chunk.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn drain(d: &mut Decoder, r: &mut impl Read) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            while let Some(f) = d.next_frame() {
                out.push(f.to_vec());
            }
            match d.read_from(r) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        out
    }

    #[test]
    fn frames_survive_any_split_and_the_largest_fits() {
        let packets: Vec<Vec<u8>> = [0usize, 1, 80, 1200, 40_000, MAX_FRAME, 3]
            .iter()
            .enumerate()
            .map(|(i, n)| (0..*n).map(|b| (b * 7 + i) as u8).collect())
            .collect();
        let mut wire = Vec::new();
        for p in &packets {
            encode(p, &mut wire).unwrap();
        }
        assert_eq!(&wire[..4], &[0, 0, 0, 1], "big-endian lengths");
        let want: Vec<Vec<u8>> = packets.into_iter().filter(|p| !p.is_empty()).collect();
        for chunk in [1, 2, 3, 1000, 70_000] {
            let mut d = Decoder::default();
            let got = drain(&mut d, &mut Chunks { data: &wire, chunk });
            assert_eq!(got, want, "chunk {chunk}");
            assert_eq!(d.buffered(), 0);
            assert!(d.buf.len() <= Decoder::LIMIT);
        }
        // Reading on without taking the frames: an error, not an end.
        let mut wire = Vec::new();
        encode(&vec![1; MAX_FRAME], &mut wire).unwrap();
        let mut r = Chunks {
            data: &wire,
            chunk: usize::MAX,
        };
        let mut d = Decoder::default();
        while d.buffered() < wire.len() {
            assert!(d.read_from(&mut r).unwrap() > 0);
        }
        let e = d.read_from(&mut r).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert_eq!(d.next_frame().map(<[u8]>::len), Some(MAX_FRAME));
        assert!(matches!(
            encode(&vec![0; MAX_FRAME + 1], &mut Vec::new()),
            Err(TcpError::TooLarge(65_536))
        ));
    }

    #[test]
    fn a_partial_frame_waits_and_the_buffer_stays_bounded() {
        // A header claiming the largest frame, then only part of it: no
        // frame, and the buffer never passes the limit however much the
        // peer sends.
        let mut wire = vec![0xff, 0xff];
        wire.extend(std::iter::repeat_n(0xffu8, 100_000));
        let mut d = Decoder::default();
        let mut r = Chunks {
            data: &wire,
            chunk: 4096,
        };
        let mut frames = 0;
        for _ in 0..100 {
            while let Some(f) = d.next_frame() {
                assert_eq!(f.len(), MAX_FRAME);
                frames += 1;
            }
            if d.read_from(&mut r).is_err() {
                break;
            }
            assert!(d.buf.len() <= Decoder::LIMIT);
        }
        assert_eq!(frames, 1);
        // The rest (another header claiming 65535 bytes, and fewer) waits.
        assert!(d.next_frame().is_none());
        assert_eq!(d.buffered(), 100_002 - 2 - MAX_FRAME);
    }

    /// A writer taking `room` bytes, then refusing.
    struct Pipe {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Pipe {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.room);
            self.got.extend_from_slice(&b[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_send_queue_keeps_whole_frames_within_its_limit() {
        let mut q = TxQueue::new(300);
        assert!(q.push(&[1; 100]));
        assert!(q.push(&[2; 100]));
        assert!(!q.push(&[3; 97]), "204 + 99 > 300");
        assert!(q.push(&[3; 94]));
        assert_eq!(q.len(), 300);
        assert!(!q.push(&[]), "full");
        let mut p = Pipe {
            got: Vec::new(),
            room: 150,
        };
        assert!(!q.flush(&mut p).unwrap(), "socket full");
        assert_eq!(q.len(), 150);
        assert!(q.push(&[4; 10]));
        p.room = usize::MAX;
        assert!(q.flush(&mut p).unwrap());
        assert!(q.is_empty());
        let mut d = Decoder::default();
        let got = drain(
            &mut d,
            &mut Chunks {
                data: &p.got,
                chunk: 7,
            },
        );
        let sizes: Vec<(usize, u8)> = got.iter().map(|f| (f.len(), f[0])).collect();
        assert_eq!(sizes, [(100, 1), (100, 2), (94, 3), (10, 4)]);
    }

    #[test]
    fn the_servers_passive_tcp_candidate_is_picked_from_the_answer() {
        let sdp = "v=0\r\n\
            a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
            a=candidate:2 1 tcp 1500000000 127.0.0.1 9 typ host tcptype active\r\n\
            a=candidate:3 1 tcp 1518280447 127.0.0.1 7881 typ host tcptype passive\r\n\
            a=candidate:4 1 tcp 1518280000 10.0.0.1 7881 typ host tcptype passive\r\n\
            a=candidate:bad\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            a=candidate:3 1 tcp 1518280447 127.0.0.1 7881 typ host tcptype passive\r\n";
        assert_eq!(
            server_tcp_candidate(sdp).unwrap(),
            "127.0.0.1:7881".parse::<SocketAddr>().unwrap()
        );
        let udp_only = "v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n";
        let e = server_tcp_candidate(udp_only).unwrap_err();
        assert!(e.to_string().contains("media.tcp_port"), "{e}");
        let c = active_candidate("127.0.0.1:40000".parse().unwrap()).unwrap();
        assert_eq!(c.proto(), Protocol::Tcp);
        assert_eq!(c.tcptype(), Some(TcpType::Active));
        assert!(c.to_sdp_string().contains("tcptype active"), "{c}");
    }
}
