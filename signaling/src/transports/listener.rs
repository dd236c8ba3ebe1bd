//! The HTTP listener: accepts connections up to a cap, gives each a
//! deadline for its request head (which also closes idle keep-alive
//! connections), and serves the router over HTTP/1.1 with upgrades.
//!
//! axum's own `serve` has no connection cap and no header timeout: 1100 idle
//! TCP connections at a 1024 open-files limit made `accept` fail and
//! `/readyz` with it. A connection counts until its socket is closed, also
//! after an upgrade to a WebSocket (the count travels with the socket).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower_service::Service;

/// File descriptors kept back from the connection cap for everything else
/// the process opens (media sockets, the store, webhooks, logs).
pub const FD_RESERVE: u64 = 256;

/// How the listener treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// A request head must arrive within this of connecting or of the last
    /// response.
    pub header_timeout: Duration,
}

impl ListenerLimits {
    /// `configured` connections (0: the open-files limit less
    /// [`FD_RESERVE`]), never more than that limit allows.
    pub fn new(configured: u32, header_timeout: Duration) -> Self {
        let by_fds = open_files_limit().map(|n| n.saturating_sub(FD_RESERVE).max(16));
        let max = match (configured as u64, by_fds) {
            (0, Some(n)) => n,
            (0, None) => 10_000,
            (c, Some(n)) if c > n => {
                tracing::warn!(
                    configured = c,
                    allowed = n,
                    "server.max_connections is more than the open-files limit allows: lowered"
                );
                n
            }
            (c, _) => c,
        };
        ListenerLimits {
            max_connections: usize::try_from(max).unwrap_or(usize::MAX),
            header_timeout,
        }
    }
}

/// The soft open-files limit of this process.
pub fn open_files_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises the soft open-files limit to the hard one (a server holds a
/// socket per client; the usual soft default, 1024, is far too low).
/// Returns the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(io::Error::from)?;
        return Ok(hard);
    }
    Ok(soft)
}

/// Connection counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    open: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
}

impl ConnectionStats {
    /// Connections open now (WebSockets included).
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections closed at once for being over the cap.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections closed for not sending a request head in time.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }
}

/// A connection's socket and its place under the cap, released when the
/// socket is dropped (after a WebSocket's end, too).
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnectionStats>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Serves `app` on `listener` until `shutdown` turns true, then lets the
/// requests under way finish (upgraded WebSockets are not waited for: their
/// own tasks end them).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ListenerLimits,
    stats: Arc<ConnectionStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let places = Arc::new(Semaphore::new(limits.max_connections));
    // Connections hold a receiver each; shutdown waits for them to drop.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut refused_logged = 0u64;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or the like: back off rather
                // than spin; a connection reset before accept is nothing.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                ) {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let Ok(permit) = places.clone().try_acquire_owned() else {
            // Over the cap: closed at once, before reading a byte.
            let n = stats.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= refused_logged.saturating_mul(2).max(1) {
                refused_logged = n;
                tracing::warn!(
                    max = limits.max_connections,
                    refused = n,
                    "connection cap reached: new connections are closed (server.max_connections)"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let io = TokioIo::new(Counted {
            stream,
            _permit: permit,
            stats: stats.clone(),
        });
        tokio::spawn(connection(
            io,
            peer,
            app.clone(),
            limits.header_timeout,
            stats.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    drop(stop_rx);
    let _ = stop_tx.send(true);
    // Requests under way get a moment to finish.
    let _ = tokio::time::timeout(Duration::from_secs(5), stop_tx.closed()).await;
}

async fn connection(
    io: TokioIo<Counted>,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    stats: Arc<ConnectionStats>,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { Ok::<_, Infallible>(app.call(req).await.unwrap_or_else(|e| match e {})) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::trace!(%peer, error = %e, "connection ended");
                }
                break;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
