//! Batched UDP I/O on the media sockets.
//!
//! One system call per datagram was a third of the server's CPU. Receiving
//! takes up to [`RECV_BATCH`] queued datagrams with one `recvmmsg`; sending
//! collects what draining the core produced and hands it to the kernel with
//! one `sendmmsg` per [`SEND_BATCH`] datagrams, or, for a run of equal-size
//! datagrams to one destination (the packets of a video frame), one `sendmsg`
//! with UDP GSO. Per-destination order is kept: runs and batches go out in
//! the order the core produced them.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use vela_media_core::Transmit;

/// Big enough for any datagram WebRTC sends (MTU-sized, with headroom).
pub(crate) const RECV_BUF: usize = 2048;
/// Datagrams taken with one `recvmmsg` before the core's output is drained;
/// bounds the delay this adds to the first of them.
pub(crate) const RECV_BATCH: usize = 32;
/// Datagrams per `sendmmsg`; also how many wait in a queue before it is sent
/// without waiting for the end of the drain, which bounds the delay this
/// adds to the first of them.
pub(crate) const SEND_BATCH: usize = 64;
/// The kernel's limit of segments in one GSO send (`UDP_MAX_SEGMENTS`).
const MAX_GSO_SEGMENTS: usize = 64;
/// Payload bytes of one GSO send; the kernel takes at most 64 KiB with headers.
const MAX_GSO_BYTES: usize = 60_000;

/// Buffers for `recvmmsg`, allocated once.
pub(crate) struct Receiver {
    bufs: Box<[[u8; RECV_BUF]; RECV_BATCH]>,
    /// Source and length of each datagram of the last batch.
    meta: [(SocketAddr, usize); RECV_BATCH],
}

impl Receiver {
    /// Empty buffers.
    pub fn new() -> Self {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        Receiver {
            bufs: Box::new([[0u8; RECV_BUF]; RECV_BATCH]),
            meta: [(unspecified, 0); RECV_BATCH],
        }
    }

    /// Reads the datagrams queued on `socket`, up to [`RECV_BATCH`], with one
    /// system call; returns how many ([`Receiver::datagram`] gives them), or
    /// `WouldBlock` when none is queued (and clears tokio's readiness).
    pub fn try_recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let fd = socket.as_raw_fd();
        let Receiver { bufs, meta } = self;
        socket.try_io(Interest::READABLE, || {
            // nix's headers hold raw pointers (not `Send`), so they cannot
            // live in the driver's future: two small allocations per call.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(RECV_BATCH, None);
            let mut slices = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
            let results = socket::recvmmsg(
                fd,
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            let mut n = 0;
            for r in results {
                // A truncated datagram (larger than any WebRTC sends) or one
                // without a usable source is dropped here; the core would
                // reject it anyway.
                let source = r.address.as_ref().and_then(to_socket_addr);
                if let Some(source) = source
                    && !r.flags.contains(MsgFlags::MSG_TRUNC)
                {
                    meta[n] = (source, r.bytes);
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// The `i`th datagram of the last batch and its source.
    pub fn datagram(&self, i: usize) -> (SocketAddr, &[u8]) {
        let (source, len) = self.meta[i];
        (source, &self.bufs[i][..len])
    }
}

fn to_socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from(*v4));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::from(*v6))
}

/// Datagrams waiting to be sent on one socket, and the headers for sending them.
pub(crate) struct Sender {
    queue: Vec<Transmit>,
    /// Cleared when the kernel or device refuses a GSO send; then every
    /// datagram goes through `sendmmsg`.
    gso: bool,
    /// Datagrams the kernel refused (counted, not retried).
    pub errors: u64,
}

impl Sender {
    /// An empty queue.
    pub fn new() -> Self {
        Sender {
            queue: Vec::with_capacity(SEND_BATCH),
            gso: true,
            errors: 0,
        }
    }

    /// Queues a datagram; true when the queue is full and should be flushed.
    pub fn push(&mut self, t: Transmit) -> bool {
        self.queue.push(t);
        self.queue.len() >= SEND_BATCH
    }

    /// Sends everything queued, in order, waiting while the socket's send
    /// buffer is full.
    pub async fn flush(&mut self, socket: &UdpSocket) {
        let mut start = 0;
        while start < self.queue.len() {
            let run = if self.gso {
                gso_run(&self.queue[start..])
            } else {
                1
            };
            if run > 1 {
                match send_gso(socket, &self.queue[start..start + run]).await {
                    Ok(()) => start += run,
                    Err(e) if gso_unsupported(&e) => {
                        tracing::info!(error = %e, "UDP GSO refused; sending datagrams one by one");
                        self.gso = false;
                    }
                    Err(e) => {
                        self.errors += run as u64;
                        tracing::debug!(destination = %self.queue[start].destination, error = %e, "udp send failed");
                        start += run;
                    }
                }
                continue;
            }
            // Consecutive datagrams that start no GSO run: one sendmmsg.
            let mut end = start + 1;
            while end < self.queue.len()
                && end - start < SEND_BATCH
                && (!self.gso || gso_run(&self.queue[end..]) == 1)
            {
                end += 1;
            }
            match send_many(socket, &self.queue[start..end]).await {
                Ok(n) => start += n.max(1),
                Err(e) => {
                    // The first datagram was refused (the others are retried).
                    self.errors += 1;
                    tracing::debug!(destination = %self.queue[start].destination, error = %e, "udp send failed");
                    start += 1;
                }
            }
        }
        self.queue.clear();
    }
}

/// How many datagrams from the start of `q` can go as one GSO send: same
/// source and destination, all the size of the first but the last, which
/// may be shorter.
fn gso_run(q: &[Transmit]) -> usize {
    let Some(first) = q.first() else {
        return 0;
    };
    let size = first.contents.len();
    let mut bytes = size;
    let mut n = 1;
    while n < q.len().min(MAX_GSO_SEGMENTS) {
        let t = &q[n];
        let len = t.contents.len();
        if t.destination != first.destination
            || t.source != first.source
            || len > size
            || len == 0
            || bytes + len > MAX_GSO_BYTES
        {
            break;
        }
        bytes += len;
        n += 1;
        if len < size {
            break; // a shorter segment ends the run
        }
    }
    n
}

/// Whether a GSO send failed because GSO is not available (old kernel, a
/// device without checksum offload), rather than for this destination.
fn gso_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EIO | Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOPROTOOPT)
    )
}

/// Runs a non-blocking send, waiting for writability while it would block.
async fn when_writable<R>(
    socket: &UdpSocket,
    mut f: impl FnMut() -> io::Result<R>,
) -> io::Result<R> {
    loop {
        match socket.try_io(Interest::WRITABLE, &mut f) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            r => return r,
        }
    }
}

/// One `sendmmsg` of up to [`SEND_BATCH`] datagrams; how many were sent.
async fn send_many(socket: &UdpSocket, batch: &[Transmit]) -> io::Result<usize> {
    let fd = socket.as_raw_fd();
    let n = batch.len().min(SEND_BATCH);
    when_writable(socket, || {
        // Not kept across calls: nix's headers are not `Send` (see Receiver).
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(n, None);
        let mut slices = [[IoSlice::new(&[])]; SEND_BATCH];
        let mut addrs: [Option<SockaddrStorage>; SEND_BATCH] = [None; SEND_BATCH];
        for (i, t) in batch[..n].iter().enumerate() {
            slices[i] = [IoSlice::new(&t.contents)];
            addrs[i] = Some(SockaddrStorage::from(t.destination));
        }
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        let sent = socket::sendmmsg(
            fd,
            &mut headers,
            slices[..n].iter(),
            &addrs[..n],
            no_cmsgs,
            MsgFlags::MSG_DONTWAIT,
        )
        .map_err(io::Error::from)?
        .count();
        Ok(sent)
    })
    .await
}

/// One `sendmsg` of a run of datagrams to one destination with UDP GSO: the
/// kernel splits the payload into segments of the first datagram's size.
async fn send_gso(socket: &UdpSocket, run: &[Transmit]) -> io::Result<()> {
    let fd = socket.as_raw_fd();
    let Some(first) = run.first() else {
        return Ok(());
    };
    let segment = u16::try_from(first.contents.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let destination = SockaddrStorage::from(first.destination);
    let n = run.len().min(MAX_GSO_SEGMENTS);
    when_writable(socket, || {
        let mut iov = [IoSlice::new(&[]); MAX_GSO_SEGMENTS];
        for (i, t) in run[..n].iter().enumerate() {
            iov[i] = IoSlice::new(&t.contents);
        }
        let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
        socket::sendmsg(
            fd,
            &iov[..n],
            &cmsg,
            MsgFlags::MSG_DONTWAIT,
            Some(&destination),
        )
        .map_err(io::Error::from)?;
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn transmit(from: SocketAddr, to: SocketAddr, len: usize, tag: u8) -> Transmit {
        Transmit {
            proto: str0m::net::Protocol::Udp,
            source: from,
            destination: to,
            contents: vec![tag; len].into(),
        }
    }

    #[test]
    fn gso_runs_need_one_destination_and_equal_sizes() {
        let a = SocketAddr::from(([127, 0, 0, 1], 1000));
        let b = SocketAddr::from(([127, 0, 0, 1], 1001));
        let s = SocketAddr::from(([127, 0, 0, 1], 2000));
        let q = vec![
            transmit(s, a, 100, 0),
            transmit(s, a, 100, 0),
            transmit(s, a, 60, 0),
            transmit(s, a, 100, 0),
            transmit(s, b, 100, 0),
        ];
        assert_eq!(gso_run(&q), 3); // the shorter one ends it
        assert_eq!(gso_run(&q[3..]), 1); // next goes elsewhere
        assert_eq!(gso_run(&q[2..]), 1); // a larger one cannot follow
        assert_eq!(gso_run(&[]), 0);
    }

    /// Sends a mix of single datagrams and GSO runs over loopback and reads
    /// them back with `recvmmsg`: every datagram arrives whole, in order.
    #[tokio::test]
    async fn batches_and_gso_runs_arrive_whole_and_in_order() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let to = rx.local_addr().expect("addr");
        let from = tx.local_addr().expect("addr");
        let mut sender = Sender::new();
        let mut expected = Vec::new();
        let mut tag = 0u8;
        // 5 singles of varying size, a run of 4 equal + 1 shorter, 3 singles.
        for len in [
            80, 90, 100, 110, 120, 1000, 1000, 1000, 1000, 400, 70, 75, 81,
        ] {
            tag = tag.wrapping_add(1);
            expected.push((len, tag));
            let _ = sender.push(transmit(from, to, len, tag));
        }
        sender.flush(&tx).await;
        assert_eq!(sender.errors, 0);
        let mut receiver = Receiver::new();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < expected.len() && tokio::time::Instant::now() < deadline {
            rx.readable().await.expect("readable");
            match receiver.try_recv(&rx) {
                Ok(n) => {
                    for i in 0..n {
                        let (source, d) = receiver.datagram(i);
                        assert_eq!(source, from);
                        assert!(d.iter().all(|b| *b == d[0]));
                        got.push((d.len(), d[0]));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
        assert_eq!(got, expected);
    }
}
