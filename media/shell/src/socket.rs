//! The media port: one UDP socket per advertised address, all on one port.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::net::UdpSocket;

/// Why the media port could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// Binding an address failed.
    #[error("cannot bind UDP {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// Binding the TCP media port on an address failed.
    #[error("cannot bind TCP {addr}: {source}")]
    BindTcp {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// No address could be bound.
    #[error("no address to bind the media port on")]
    NoAddress,
}

/// The bound sockets, each with the address advertised to clients for it.
#[derive(Debug)]
pub struct MediaSockets {
    pub(crate) sockets: Vec<(UdpSocket, SocketAddr)>,
}

impl MediaSockets {
    /// Binds `port` on each of `ips` (a port of 0 picks one, shared by all).
    ///
    /// An address that is not local (a public address in front of 1:1 NAT) is
    /// advertised, and its traffic received on `fallback_ip`.
    pub async fn bind(ips: &[IpAddr], port: u16, fallback_ip: IpAddr) -> Result<Self, BindError> {
        let mut sockets: Vec<(UdpSocket, SocketAddr)> = Vec::new();
        let mut port = port;
        let mut not_local = Vec::new();
        for ip in ips {
            let addr = SocketAddr::new(*ip, port);
            match UdpSocket::bind(addr).await {
                Ok(s) => {
                    let local = s
                        .local_addr()
                        .map_err(|source| BindError::Bind { addr, source })?;
                    port = local.port();
                    sockets.push((s, local));
                }
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => not_local.push(*ip),
                Err(source) => return Err(BindError::Bind { addr, source }),
            }
        }
        if !not_local.is_empty() {
            let addr = SocketAddr::new(fallback_ip, port);
            let s = UdpSocket::bind(addr)
                .await
                .map_err(|source| BindError::Bind { addr, source })?;
            let local = s
                .local_addr()
                .map_err(|source| BindError::Bind { addr, source })?;
            tracing::info!(%local, advertised = ?not_local, "non-local node addresses are received on the fallback socket");
            sockets.push((s, SocketAddr::new(not_local[0], local.port())));
        }
        if sockets.is_empty() {
            return Err(BindError::NoAddress);
        }
        Ok(MediaSockets { sockets })
    }

    /// The addresses advertised as ICE host candidates.
    pub fn advertised(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(_, a)| *a).collect()
    }

    /// The shared port.
    pub fn port(&self) -> u16 {
        self.sockets.first().map(|(_, a)| a.port()).unwrap_or(0)
    }
}

/// The machine's addresses a browser can reach: IPv4 (loopback included) and
/// IPv6 other than link-local.
pub fn local_addresses() -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|v| v.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default();
    ips.retain(|ip| match ip {
        IpAddr::V4(_) => true,
        // Link-local needs a scope id that SDP candidates cannot carry.
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    });
    ips.sort();
    ips.dedup();
    if ips.is_empty() {
        ips.push(IpAddr::from([127, 0, 0, 1]));
    }
    ips
}
