//! A room socket whose room is served by another node: relayed, message
//! by message, to the room socket of that node (as LiveKit does), so every
//! client (the web page, the load generator, a resume) works unchanged on
//! any node. The home node does all the checks; this node only finds it.
//!
//! Bounded: a client's message over `limits.max_message_bytes` closes
//! both legs (1009), each message is written within the sockets' write timeout
//! (one slow side stops the other from reading: backpressure, then a
//! close), and a close on either side closes the other with its code.

use std::net::IpAddr;
use std::time::Duration;

use axum::extract::ws::{self, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::{
    self, client::IntoClientRequest as _, protocol::WebSocketConfig,
};

use crate::transports::cluster::{FORWARDED_CLIENT, sign_forwarded};
use crate::transports::state::AppState;
use crate::transports::ws::{WRITE_TIMEOUT, close};

/// The largest message read from the room's node.
const HOME_MESSAGE_LIMIT: usize = 4 * 1024 * 1024;

/// How long reaching the room's node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The room socket's URL on the node at `public_url`.
fn socket_url(public_url: &str) -> Option<String> {
    let rest = public_url
        .strip_prefix("http://")
        .map(|r| ("ws://", r))
        .or_else(|| public_url.strip_prefix("https://").map(|r| ("wss://", r)))?;
    Some(format!("{}{}/ws", rest.0, rest.1))
}

/// Relays `client` (whose first message, `first`, was read here) to the
/// room socket of `node` at `public_url`, until either side closes.
pub(super) async fn proxy(
    state: &AppState,
    mut client: WebSocket,
    first: String,
    (node, public_url): (&str, &str),
    addr: IpAddr,
) {
    let upstream = match connect(state, public_url, addr).await {
        Ok(u) => u,
        Err(why) => {
            tracing::warn!(%node, error = %why, "cannot reach the room's node");
            // Killed a moment ago, probably: the client's next join is
            // placed elsewhere at once, not after the node timeout.
            state.rooms.unreachable(node);
            let message = format!("the room's node {node} cannot be reached; retry in a moment");
            super::send_error(&mut client, 503, &message).await;
            return close(&mut client, 1013, "room's node unreachable").await;
        }
    };
    tracing::info!(%node, "room socket proxied to the room's node");
    state.metrics.proxy_opened();
    let _counted = ProxyCount(state);
    let (mut home_tx, mut home_rx) = upstream.split();
    let (mut client_tx, mut client_rx) = client.split();
    if !matches!(
        tokio::time::timeout(
            WRITE_TIMEOUT,
            home_tx.send(tungstenite::Message::Text(first.into()))
        )
        .await,
        Ok(Ok(()))
    ) {
        let _ = client_tx
            .send(close_frame(1013, "room's node unreachable"))
            .await;
        return;
    }
    let to_home = async {
        loop {
            let out = match client_rx.next().await {
                Some(Ok(ws::Message::Text(t))) => tungstenite::Message::Text(t.as_str().into()),
                Some(Ok(ws::Message::Binary(b))) => tungstenite::Message::Binary(b),
                // Each leg answers its own pings.
                Some(Ok(ws::Message::Ping(_) | ws::Message::Pong(_))) => continue,
                Some(Ok(ws::Message::Close(frame))) => {
                    let frame = frame.map(|f| tungstenite::protocol::CloseFrame {
                        code: f.code.into(),
                        reason: f.reason.as_str().into(),
                    });
                    let _ = tokio::time::timeout(
                        WRITE_TIMEOUT,
                        home_tx.send(tungstenite::Message::Close(frame)),
                    )
                    .await;
                    return None;
                }
                Some(Err(e)) => {
                    // Too big here is too big at the home: the session ends
                    // there as it would on a direct socket, and the client
                    // gets the same close.
                    let text = e.to_string().to_lowercase();
                    let too_big = text.contains("too long") || text.contains("size");
                    let (code, reason) = if too_big {
                        (1009, "message too big")
                    } else {
                        (1001, "client gone")
                    };
                    let frame = tungstenite::protocol::CloseFrame {
                        code: code.into(),
                        reason: reason.into(),
                    };
                    let _ = tokio::time::timeout(
                        WRITE_TIMEOUT,
                        home_tx.send(tungstenite::Message::Close(Some(frame))),
                    )
                    .await;
                    return too_big.then(|| close_frame(code, reason));
                }
                // Gone without a close: the home keeps the session for a
                // resume, as it would for a direct socket.
                None => {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, home_tx.close()).await;
                    return None;
                }
            };
            if !matches!(
                tokio::time::timeout(WRITE_TIMEOUT, home_tx.send(out)).await,
                Ok(Ok(()))
            ) {
                return Some(close_frame(1013, "room's node too slow"));
            }
        }
    };
    let to_client = async {
        loop {
            let out = match home_rx.next().await {
                Some(Ok(tungstenite::Message::Text(t))) => ws::Message::Text(t.as_str().into()),
                Some(Ok(tungstenite::Message::Binary(b))) => ws::Message::Binary(b),
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    let out = match frame {
                        Some(f) => close_frame(f.code.into(), f.reason.as_str()),
                        None => ws::Message::Close(None),
                    };
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, client_tx.send(out)).await;
                    return;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    let _ = tokio::time::timeout(
                        WRITE_TIMEOUT,
                        client_tx.send(close_frame(1011, "the room's node is gone")),
                    )
                    .await;
                    return;
                }
            };
            if !matches!(
                tokio::time::timeout(WRITE_TIMEOUT, client_tx.send(out)).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    };
    let last = tokio::select! {
        last = to_home => last,
        () = to_client => None,
    };
    if let Some(last) = last {
        let _ = tokio::time::timeout(WRITE_TIMEOUT, client_tx.send(last)).await;
    }
    tracing::info!(%node, "proxied room socket closed");
}

/// Counts a relayed socket closed however the relay ends.
struct ProxyCount<'a>(&'a AppState);

impl Drop for ProxyCount<'_> {
    fn drop(&mut self) {
        self.0.metrics.proxy_closed();
    }
}

fn close_frame(code: u16, reason: &str) -> ws::Message {
    ws::Message::Close(Some(ws::CloseFrame {
        code,
        reason: reason.into(),
    }))
}

type Upstream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(state: &AppState, public_url: &str, addr: IpAddr) -> Result<Upstream, String> {
    let url = socket_url(public_url).ok_or_else(|| format!("not an http(s) URL: {public_url}"))?;
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(signed) = sign_forwarded(state, addr)
        && let Ok(v) = signed.parse()
    {
        req.headers_mut().insert(FORWARDED_CLIENT, v);
    }
    // The home's messages are the server's own, as large as a direct
    // socket may be sent (a large room's offer): bounded like that socket's
    // write buffer, not by the clients' message limit.
    let limit = state
        .config
        .limits
        .max_message_bytes
        .max(HOME_MESSAGE_LIMIT);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let connecting = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok((upstream, _))) => Ok(upstream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_socket_of_a_public_url() {
        assert_eq!(
            socket_url("http://127.0.0.1:7880").as_deref(),
            Some("ws://127.0.0.1:7880/ws")
        );
        assert_eq!(
            socket_url("https://n1.example.com").as_deref(),
            Some("wss://n1.example.com/ws")
        );
        assert_eq!(socket_url("n1:7880"), None);
    }

    /// An https node is reached over TLS (the handshake is tried; a node
    /// that is no TLS server fails it), not refused as an unknown scheme.
    #[tokio::test]
    async fn a_wss_url_is_reached_over_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            if let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            }
        });
        let url = socket_url(&format!("https://{addr}")).unwrap();
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(url),
        )
        .await
        .expect("answered in time");
        let Err(e) = attempt else {
            panic!("no TLS server there")
        };
        let e = e.to_string();
        // rustls read the plain HTTP answer as a bad TLS record.
        assert!(e.contains("InvalidContentType"), "{e}");
    }
}
