//! WebSocket framing both sockets share (the room socket `/ws` and the
//! device socket `/api/v1/ws`): the size limits, sending text and close
//! frames within a timeout, reading the next text message.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};

use crate::transports::state::AppState;

/// Initial read buffer of a signaling WebSocket (tungstenite's advice for
/// many mostly idle connections).
const WS_READ_BUFFER: usize = 4 * 1024;

/// Most bytes a WebSocket may have written but not yet sent.
const WS_MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// How long one message may take to be written to a socket: a client that
/// reads slower than that is dropped rather than hold its task.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits both WebSockets (`/ws` and `/api/v1/ws`) share.
pub(crate) fn limited(ws: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let limit = state.config.limits.max_message_bytes;
    // tungstenite's default read buffer is 128 KiB, allocated and zero-filled
    // per socket: half the memory of an idle participant. Messages are
    // small; the buffer grows for a large SDP, up to the message limit.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER.max(limit * 2))
}

/// How long a new socket may take to authenticate (`join`, `resume`, `auth`).
pub(crate) fn auth_timeout(state: &AppState) -> Duration {
    Duration::from_millis(state.config.server.auth_timeout_ms)
}

/// Sends a text message within [`WRITE_TIMEOUT`]; `false` when the socket
/// is gone or too slow.
pub(crate) async fn send_text(ws: &mut WebSocket, text: String) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Text(text.into()))).await,
        Ok(Ok(()))
    )
}

/// Sends a close frame.
pub(crate) async fn close(ws: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.send(frame)).await;
}

/// Reads the next text message; `Err` carries a close code and reason.
pub(crate) async fn next_text(ws: &mut WebSocket) -> Result<Option<String>, (u16, &'static str)> {
    loop {
        match ws.recv().await {
            // A close for a message too big (or binary): the peer ended the
            // session over the protocol, as if this side had read it (a
            // node proxying the socket closes so for its client).
            Some(Ok(Message::Close(Some(f)))) if f.code == 1009 => {
                return Err((1009, "message too big"));
            }
            Some(Ok(Message::Close(Some(f)))) if f.code == 1003 => {
                return Err((1003, "binary messages are not supported"));
            }
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Text(t))) => return Ok(Some(t.to_string())),
            Some(Ok(Message::Binary(_))) => {
                return Err((1003, "binary messages are not supported"));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => {
                let too_big = e.to_string().to_lowercase().contains("too long")
                    || e.to_string().to_lowercase().contains("size");
                return Err(if too_big {
                    (1009, "message too big")
                } else {
                    (1002, "protocol error")
                });
            }
        }
    }
}
