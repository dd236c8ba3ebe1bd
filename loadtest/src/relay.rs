//! The floor: a raw UDP relay. It receives a datagram, parses the RTP header
//! (the `rtp` crate), looks up the sender's room, drops simulcast layers the
//! SFU would not forward, and sends the datagram unchanged to every other
//! subscriber of the room. No ICE, DTLS, SRTP, RTCP, or frame handling: the
//! cheapest forwarding of the same packet pattern, measured in the same run.
//!
//! Control datagrams (all start with `VR`): `VRJN` + room (u32) + subscribe
//! flag (u8) joins and is answered `VROK`; `VRLV` leaves; `VRST` is answered
//! `VRST` + received, forwarded, dropped (u64 each).

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use webrtc_util::marshal::Unmarshal;

use crate::participant::RAW_RID_EXT;

/// Join request prefix.
pub const JOIN: &[u8] = b"VRJN";
/// Join acknowledgement.
pub const JOIN_OK: &[u8] = b"VROK";
/// Leave.
pub const LEAVE: &[u8] = b"VRLV";
/// Counters request and reply prefix.
pub const STATS: &[u8] = b"VRST";

/// The join datagram for `room`.
pub fn join_message(room: u32, subscribe: bool) -> [u8; 9] {
    let mut m = [0u8; 9];
    m[..4].copy_from_slice(JOIN);
    m[4..8].copy_from_slice(&room.to_be_bytes());
    m[8] = u8::from(subscribe);
    m
}

/// The relay's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayCounters {
    /// Media datagrams received.
    pub received: u64,
    /// Datagrams sent to subscribers.
    pub forwarded: u64,
    /// Media datagrams dropped (unknown sender, lower simulcast layer, bad RTP).
    pub dropped: u64,
}

struct Member {
    room: u32,
}

/// Runs the relay on `socket` until `stop` is set. `forward_rids` are the
/// simulcast layers forwarded (packets with another rid are dropped; packets
/// without a rid always pass).
pub fn serve(socket: &UdpSocket, forward_rids: &[String], stop: &AtomicBool) -> io::Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut members: HashMap<SocketAddr, Member> = HashMap::new();
    let mut rooms: HashMap<u32, Vec<SocketAddr>> = HashMap::new();
    let mut c = RelayCounters::default();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let (n, src) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(_) => continue,
        };
        let data = &buf[..n];
        if data.starts_with(b"VR") {
            control(socket, data, src, &mut members, &mut rooms, &c);
            continue;
        }
        c.received += 1;
        let Some(m) = members.get(&src) else {
            c.dropped += 1;
            continue;
        };
        let Ok(h) = rtp::header::Header::unmarshal(&mut &data[..]) else {
            c.dropped += 1;
            continue;
        };
        if let Some(rid) = h.get_extension(RAW_RID_EXT)
            && !forward_rids.iter().any(|r| r.as_bytes() == rid.as_ref())
        {
            c.dropped += 1;
            continue;
        }
        if let Some(subs) = rooms.get(&m.room) {
            for to in subs {
                if *to != src && socket.send_to(data, to).is_ok() {
                    c.forwarded += 1;
                }
            }
        }
    }
    Ok(())
}

fn control(
    socket: &UdpSocket,
    data: &[u8],
    src: SocketAddr,
    members: &mut HashMap<SocketAddr, Member>,
    rooms: &mut HashMap<u32, Vec<SocketAddr>>,
    c: &RelayCounters,
) {
    if data.starts_with(JOIN) && data.len() >= 9 {
        let room = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        if let std::collections::hash_map::Entry::Vacant(e) = members.entry(src) {
            e.insert(Member { room });
            if data[8] != 0 {
                rooms.entry(room).or_default().push(src);
            }
        }
        let _ = socket.send_to(JOIN_OK, src);
    } else if data.starts_with(LEAVE) {
        if let Some(m) = members.remove(&src)
            && let Some(r) = rooms.get_mut(&m.room)
        {
            r.retain(|a| *a != src);
        }
    } else if data.starts_with(STATS) {
        let mut out = Vec::with_capacity(28);
        out.extend_from_slice(STATS);
        for v in [c.received, c.forwarded, c.dropped] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        let _ = socket.send_to(&out, src);
    }
}

/// Asks the relay at `addr` for its counters.
pub async fn query(addr: SocketAddr) -> io::Result<RelayCounters> {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        s.send_to(STATS, addr).await?;
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(300), s.recv_from(&mut buf)).await
            && n >= 28
            && buf.starts_with(STATS)
        {
            let v = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[4 + i * 8..12 + i * 8]);
                u64::from_be_bytes(b)
            };
            return Ok(RelayCounters {
                received: v(0),
                forwarded: v(1),
                dropped: v(2),
            });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "relay did not answer",
    ))
}

/// A relay running somewhere this process can reach.
pub struct Relay {
    /// Its address.
    pub addr: SocketAddr,
    /// Its process id (this process for an in-process relay).
    pub pid: u32,
    /// True when it runs in its own process (its CPU time is its own).
    pub separate: bool,
    inner: RelayInner,
}

enum RelayInner {
    Thread(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>),
    Process(Child),
}

impl Relay {
    /// A relay on a thread of this process (tests; its CPU is not separable).
    pub fn spawn_thread(forward_rids: Vec<String>) -> io::Result<Relay> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                let _ = serve(&socket, &forward_rids, &s);
            })?;
        Ok(Relay {
            addr,
            pid: std::process::id(),
            separate: false,
            inner: RelayInner::Thread(stop, Some(t)),
        })
    }

    /// Runs `exe relay --bind 127.0.0.1:0` (this binary), pinned with
    /// `taskset -c cpus` when given, and reads the address it prints.
    pub fn spawn_process(
        exe: &std::path::Path,
        cpus: Option<&str>,
        forward_rids: &[String],
    ) -> io::Result<Relay> {
        let mut cmd = crate::server_probe::launcher(exe, cpus, None);
        cmd.arg("relay").arg("--bind").arg("127.0.0.1:0");
        for r in forward_rids {
            cmd.arg("--forward-rid").arg(r);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let Some(out) = child.stdout.take() else {
            let _ = child.kill();
            return Err(io::Error::other("relay stdout"));
        };
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok());
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!("relay said {line:?}")));
        };
        Ok(Relay {
            addr,
            pid,
            separate: true,
            inner: RelayInner::Process(child),
        })
    }

    /// Stops the relay.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        match &mut self.inner {
            RelayInner::Thread(stop, t) => {
                stop.store(true, Ordering::Relaxed);
                if let Some(t) = t.take() {
                    let _ = t.join();
                }
            }
            RelayInner::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop_inner();
    }
}
