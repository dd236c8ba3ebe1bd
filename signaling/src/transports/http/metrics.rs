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
        "Received media packets dropped: a payload their codec does not allow.",
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
    relay_totals(&s, &mut out);
    if let Some(tcp) = state.media.tcp_stats() {
        ice_tcp(&tcp, &mut out);
    }
    relay_links(&state, &mut out).await;
    state.metrics.render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The cores' relay counters, over all their links (shards and nodes).
fn relay_totals(s: &vela_media::core::SfuStats, out: &mut String) {
    let mut put = |name: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP vela_{name} {help}");
        let _ = writeln!(out, "# TYPE vela_{name} counter");
        let _ = writeln!(out, "vela_{name} {v}");
    };
    put(
        "relay_packets_sent_total",
        "RTP packets sent to other cores (shards and nodes) holding a room, retransmissions included.",
        s.relay_packets_sent,
    );
    put(
        "relay_bytes_sent_total",
        "Their payload bytes.",
        s.relay_bytes_sent,
    );
    put(
        "relay_packets_received_total",
        "RTP packets received from other cores.",
        s.relay_packets_received,
    );
    put(
        "relay_bytes_received_total",
        "Their payload bytes.",
        s.relay_bytes_received,
    );
    put(
        "relay_nacks_sent_total",
        "Relayed packets found missing and asked for again.",
        s.relay_nacks_sent,
    );
    put(
        "relay_retransmits_total",
        "Packets sent again to other cores from the history.",
        s.relay_retransmits,
    );
    put(
        "relay_refused_total",
        "Relay messages refused (malformed, stale or out of bounds).",
        s.relay_refused,
    );
}

/// The node's ICE-over-TCP counters (`media.tcp_port`).
fn ice_tcp(t: &vela_media::TcpStats, out: &mut String) {
    let mut put = |name: &str, kind: &str, help: &str, v: u64| {
        let _ = writeln!(out, "# HELP vela_{name} {help}");
        let _ = writeln!(out, "# TYPE vela_{name} {kind}");
        let _ = writeln!(out, "vela_{name} {v}");
    };
    put(
        "ice_tcp_connections",
        "gauge",
        "ICE-over-TCP connections open.",
        t.open,
    );
    put(
        "ice_tcp_connections_pending",
        "gauge",
        "ICE-over-TCP connections open that have not sent their first frame.",
        t.pending,
    );
    put(
        "ice_tcp_connections_accepted_total",
        "counter",
        "ICE-over-TCP connections accepted.",
        t.accepted,
    );
    put(
        "ice_tcp_frames_received_total",
        "counter",
        "RFC 4571 frames received and given to a core.",
        t.frames_in,
    );
    put(
        "ice_tcp_frames_sent_total",
        "counter",
        "RFC 4571 frames written to connections.",
        t.frames_out,
    );
    put(
        "ice_tcp_frames_dropped_full_total",
        "counter",
        "Frames dropped: their connection's write queue was full (a slow reader).",
        t.dropped_full,
    );
    put(
        "ice_tcp_frames_dropped_no_connection_total",
        "counter",
        "Frames dropped: their connection was not, or no longer, open.",
        t.dropped_no_connection,
    );
    let name = "vela_ice_tcp_connections_closed_total";
    let _ = writeln!(
        out,
        "# HELP {name} ICE-over-TCP connections closed, by reason."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for (reason, n) in t.closed {
        let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", reason.as_str());
    }
}

/// One labelled series per relay link: the transport's counters per other
/// node (QUIC: datagrams, bytes, loss, RTT), and each core's per link to
/// another core (layers carried each way, packets, NACKs).
async fn relay_links(state: &AppState, out: &mut String) {
    let transport = state.media.relay_stats();
    let cores = state.media.core_link_stats().await.unwrap_or_default();
    if transport.links.is_empty() && cores.is_empty() {
        return;
    }
    // Prometheus label values: backslash, quote and newline escaped.
    let label = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let head = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP vela_{name} {help}");
        let _ = writeln!(out, "# TYPE vela_{name} {kind}");
    };
    type Field = fn(&vela_media::relay::LinkStats) -> Option<f64>;
    let per_node: [(&str, &str, &str, Field); 12] = [
        (
            "relay_link_up",
            "gauge",
            "Whether the QUIC connection to the node is up.",
            |l| Some(f64::from(u8::from(l.connected))),
        ),
        (
            "relay_link_ups_total",
            "counter",
            "Times the link to the node came up.",
            |l| Some(l.links_up as f64),
        ),
        (
            "relay_link_datagrams_sent_total",
            "counter",
            "Datagrams (RTP) sent to the node.",
            |l| Some(l.datagrams_sent as f64),
        ),
        (
            "relay_link_bytes_sent_total",
            "counter",
            "Their payload bytes.",
            |l| Some(l.bytes_sent as f64),
        ),
        (
            "relay_link_datagrams_received_total",
            "counter",
            "Datagrams received from the node.",
            |l| Some(l.datagrams_received as f64),
        ),
        (
            "relay_link_bytes_received_total",
            "counter",
            "Their payload bytes.",
            |l| Some(l.bytes_received as f64),
        ),
        (
            "relay_link_dropped_total",
            "counter",
            "Frames not sent (too large, send buffer full, no connection) or dropped on arrival (queue full).",
            |l| {
                Some(
                    (l.dropped_too_large
                        + l.dropped_queue_full
                        + l.dropped_no_link
                        + l.dropped_inbound) as f64,
                )
            },
        ),
        (
            "relay_link_control_sent_total",
            "counter",
            "Control frames sent to the node.",
            |l| Some(l.control_sent as f64),
        ),
        (
            "relay_link_lost_packets_total",
            "counter",
            "QUIC packets to the node declared lost.",
            |l| Some(l.lost_packets as f64),
        ),
        (
            "relay_link_congestion_events_total",
            "counter",
            "QUIC congestion events on the link.",
            |l| Some(l.congestion_events as f64),
        ),
        (
            "relay_link_rtt_seconds",
            "gauge",
            "Smoothed round-trip time to the node.",
            |l| l.rtt.map(|d| d.as_secs_f64()),
        ),
        (
            "relay_link_cwnd_bytes",
            "gauge",
            "Congestion window of the link.",
            |l| l.cwnd.map(|c| c as f64),
        ),
    ];
    for (name, kind, help, field) in per_node {
        head(out, name, kind, help);
        for l in &transport.links {
            if let Some(v) = field(l) {
                let _ = writeln!(out, "vela_{name}{{node=\"{}\"}} {v}", label(&l.node));
            }
        }
    }
    head(
        out,
        "relay_refused_connections_total",
        "counter",
        "Relay connections refused: authentication failed (a node without the cluster's credentials) or a protocol error.",
    );
    let _ = writeln!(
        out,
        "vela_relay_refused_connections_total {}",
        transport.refused
    );
    type CoreField = fn(&vela_media::core::relay::RelayLinkStats) -> u64;
    let per_core: [(&str, &str, &str, CoreField); 8] = [
        (
            "relay_core_layers_sent",
            "gauge",
            "Layers (track, simulcast layer) this core sends over the link now: what the far core demands.",
            |l| u64::from(l.layers_sent),
        ),
        (
            "relay_core_layers_received",
            "gauge",
            "Layers this core receives over the link now: what it demands.",
            |l| u64::from(l.layers_received),
        ),
        (
            "relay_core_packets_sent_total",
            "counter",
            "RTP packets this core sent over the link.",
            |l| l.packets_sent,
        ),
        (
            "relay_core_bytes_sent_total",
            "counter",
            "Their payload bytes.",
            |l| l.bytes_sent,
        ),
        (
            "relay_core_packets_received_total",
            "counter",
            "RTP packets this core received over the link.",
            |l| l.packets_received,
        ),
        (
            "relay_core_nacks_sent_total",
            "counter",
            "Packets this core asked again over the link.",
            |l| l.nacks_sent,
        ),
        (
            "relay_core_retransmits_total",
            "counter",
            "Packets this core sent again over the link.",
            |l| l.retransmits,
        ),
        (
            "relay_core_remote_participants",
            "gauge",
            "Participants of the far core known here.",
            |l| u64::from(l.remote_participants),
        ),
    ];
    for (name, kind, help, field) in per_core {
        head(out, name, kind, help);
        for c in &cores {
            let peer = match &c.peer {
                Some(vela_media::relay::LinkPeer::Shard(k)) => format!("shard {k}"),
                Some(vela_media::relay::LinkPeer::Node { node, shard }) => {
                    format!("{} shard {shard}", label(node))
                }
                None => "gone".to_owned(),
            };
            let _ = writeln!(
                out,
                "vela_{name}{{shard=\"{}\",peer=\"{peer}\"}} {}",
                c.shard,
                field(&c.stats)
            );
        }
    }
}
