//! `GET /metrics`: the media counters, the join-time histogram, the
//! webhook counters and the runtime's task count in Prometheus text format.

use std::fmt::Write;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::transports::state::AppState;

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
    put("tracks", "gauge", "Published tracks.", s.tracks);
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
        "media_undecodable_total",
        "counter",
        "Received media frames dropped: their payload could not be depacketized.",
        s.media_undecodable,
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
    put(
        "layer_switches_total",
        "counter",
        "Simulcast layer changes chosen for subscribers.",
        s.layer_switches,
    );
    put(
        "rtc_timeouts_total",
        "counter",
        "Timeouts run on participants' WebRTC stacks (per forwarded packet: the SFU's main fixed cost).",
        s.rtc_timeouts,
    );
    put(
        "rtc_polls_total",
        "counter",
        "Outputs asked of participants' WebRTC stacks (each a walk over the stack).",
        s.rtc_polls,
    );
    put(
        "media_peers_panicked_total",
        "counter",
        "Participants whose WebRTC stack panicked (a bug): each closed alone as a lost connection.",
        s.peers_panicked,
    );
    let c = &state.connections;
    put(
        "http_connections",
        "gauge",
        "HTTP and WebSocket connections open.",
        c.open(),
    );
    put(
        "http_connections_refused_total",
        "counter",
        "Connections closed as accepted: server.max_connections reached.",
        c.refused(),
    );
    put(
        "http_connections_timed_out_total",
        "counter",
        "Connections closed for not sending a request head within server.header_timeout_ms (idle keep-alive ones included).",
        c.timed_out(),
    );
    // Tasks alive in the server's runtime (sessions, sockets, timers): a
    // number that keeps growing under steady load is a leak.
    put(
        "runtime_tasks",
        "gauge",
        "Tasks alive in the server's tokio runtime.",
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as u64,
    );
    state.metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
