//! `GET /metrics`: the media counters in Prometheus text format.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::server::AppState;

/// Renders the core's counters and gauges.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let Ok(s) = state.media.stats().await else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "media server is not running",
        )
            .into_response();
    };
    let mut out = String::with_capacity(2048);
    let mut put = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP vela_{name} {help}");
        let _ = writeln!(out, "# TYPE vela_{name} {kind}");
        let _ = writeln!(out, "vela_{name} {v}");
    };
    put("rooms", "gauge", "Rooms open.", s.rooms);
    put(
        "participants",
        "gauge",
        "Participants in rooms.",
        s.participants,
    );
    put(
        "datagrams_received_total",
        "counter",
        "Datagrams received on the media port.",
        s.datagrams_received,
    );
    put(
        "datagrams_malformed_total",
        "counter",
        "Datagrams dropped as malformed.",
        s.datagrams_malformed,
    );
    put(
        "datagrams_unrouted_total",
        "counter",
        "Datagrams dropped: no participant owns their source.",
        s.datagrams_unrouted,
    );
    put(
        "datagrams_rejected_total",
        "counter",
        "Datagrams a participant's WebRTC stack refused.",
        s.datagrams_rejected,
    );
    put(
        "media_frames_received_total",
        "counter",
        "Media frames received from publishers.",
        s.media_received,
    );
    put(
        "media_frames_forwarded_total",
        "counter",
        "Media frames written to subscribers.",
        s.media_forwarded,
    );
    put(
        "packets_received_total",
        "counter",
        "RTP packets received from publishers.",
        s.packets_received,
    );
    put(
        "packets_forwarded_total",
        "counter",
        "RTP packets forwarded to subscribers.",
        s.packets_forwarded,
    );
    put(
        "bytes_forwarded_total",
        "counter",
        "Media payload bytes forwarded to subscribers.",
        s.bytes_forwarded,
    );
    put(
        "nacks_received_total",
        "counter",
        "NACKs received from subscribers.",
        s.nacks_received,
    );
    put(
        "nacks_sent_total",
        "counter",
        "NACKs sent to publishers.",
        s.nacks_sent,
    );
    put(
        "keyframe_requests_total",
        "counter",
        "Keyframe requests sent to publishers.",
        s.keyframe_requests,
    );
    put(
        "keyframe_requests_throttled_total",
        "counter",
        "Keyframe requests held back by the throttle.",
        s.keyframe_requests_throttled,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
