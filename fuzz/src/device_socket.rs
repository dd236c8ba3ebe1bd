//! The device socket's messages (`GET /api/v1/ws`): `auth`, `heartbeat`,
//! `ping`, `set_presence`, through the socket's own parser
//! (`api::ws::parse_message`: the API's JSON parser, then the message's shape).
//!
//! Input: one WebSocket text message (invalid UTF-8 is not a text message:
//! skipped).

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = vela_signaling::fuzz::parse_device_message(text) {
        // Every refusal is a client error that says why.
        assert!(e.status.is_client_error(), "{e:?}");
        assert!(!e.message.is_empty());
    }
}
