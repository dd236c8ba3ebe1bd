//! Counters the core keeps; cheap to update on the per-packet path.

/// Running totals since the core was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// Datagrams received on the media port.
    pub datagrams_received: u64,
    /// Datagrams that were not STUN, DTLS, RTP or RTCP, or failed to parse.
    pub datagrams_malformed: u64,
    /// Datagrams from an address no participant owns, that no participant accepted.
    pub datagrams_unrouted: u64,
    /// Datagrams a participant's WebRTC stack refused.
    pub datagrams_rejected: u64,
    /// Media frames received from publishers (an audio packet, or the last
    /// packet of a video frame: its marker bit).
    pub media_received: u64,
    /// Received packets whose payload their codec does not allow (or of a
    /// payload type not negotiated), dropped.
    pub media_undecodable: u64,
    /// Media frames written to subscribers (counted as `media_received`).
    pub media_forwarded: u64,
    /// RTP packets received from publishers.
    pub packets_received: u64,
    /// RTP packets written to subscribers (one per subscriber).
    pub packets_forwarded: u64,
    /// Payload bytes written to subscribers.
    pub bytes_forwarded: u64,
    /// NACKs received from subscribers (each answered by a retransmission when
    /// the packet is still in the send buffer).
    pub nacks_received: u64,
    /// NACKs sent to publishers for packets lost on the way in.
    pub nacks_sent: u64,
    /// Keyframe requests sent to publishers.
    pub keyframe_requests: u64,
    /// Keyframe requests held back by the per-publisher throttle.
    pub keyframe_requests_throttled: u64,
    /// Simulcast layer changes chosen for subscribers.
    pub layer_switches: u64,
    /// Timeouts run on participants' WebRTC stacks (str0m `handle_timeout`),
    /// the largest fixed cost per forwarded packet.
    pub rtc_timeouts: u64,
    /// Outputs asked of participants' WebRTC stacks (str0m `poll_output`),
    /// each a walk over the whole stack; the one that says only "wait"
    /// included.
    pub rtc_polls: u64,
    /// Participants whose WebRTC stack (str0m) panicked: each was closed
    /// alone as a lost connection, its room went on. A bug to report.
    pub peers_panicked: u64,
    /// Media packets sent over relay links (one per link that demanded each).
    pub relay_packets_sent: u64,
    /// Payload bytes of those packets.
    pub relay_bytes_sent: u64,
    /// Media packets received over relay links (retransmissions included).
    pub relay_packets_received: u64,
    /// Payload bytes of those packets.
    pub relay_bytes_received: u64,
    /// Control messages received over relay links.
    pub relay_control_received: u64,
    /// Relayed packets found missing and asked for again (NACKed seqs).
    pub relay_nacks_sent: u64,
    /// Sequence numbers other cores NACKed.
    pub relay_nacks_received: u64,
    /// Relayed packets sent again from the history to answer NACKs.
    pub relay_retransmits: u64,
    /// Relayed packets received twice (a repair racing a late original), dropped.
    pub relay_duplicates: u64,
    /// Relay input refused: malformed, for an unknown track or room, from the wrong link, or over a limit.
    pub relay_refused: u64,
    /// Participants currently in a room.
    pub participants: u64,
    /// Rooms currently open.
    pub rooms: u64,
    /// Published tracks now.
    pub tracks: u64,
}

impl std::ops::AddAssign for SfuStats {
    /// Adds another core's counters (a node's cores, one total).
    fn add_assign(&mut self, o: SfuStats) {
        let SfuStats {
            datagrams_received,
            datagrams_malformed,
            datagrams_unrouted,
            datagrams_rejected,
            media_received,
            media_undecodable,
            media_forwarded,
            packets_received,
            packets_forwarded,
            bytes_forwarded,
            nacks_received,
            nacks_sent,
            keyframe_requests,
            keyframe_requests_throttled,
            layer_switches,
            rtc_timeouts,
            rtc_polls,
            peers_panicked,
            relay_packets_sent,
            relay_bytes_sent,
            relay_packets_received,
            relay_bytes_received,
            relay_control_received,
            relay_nacks_sent,
            relay_nacks_received,
            relay_retransmits,
            relay_duplicates,
            relay_refused,
            participants,
            rooms,
            tracks,
        } = o;
        self.datagrams_received += datagrams_received;
        self.datagrams_malformed += datagrams_malformed;
        self.datagrams_unrouted += datagrams_unrouted;
        self.datagrams_rejected += datagrams_rejected;
        self.media_received += media_received;
        self.media_undecodable += media_undecodable;
        self.media_forwarded += media_forwarded;
        self.packets_received += packets_received;
        self.packets_forwarded += packets_forwarded;
        self.bytes_forwarded += bytes_forwarded;
        self.nacks_received += nacks_received;
        self.nacks_sent += nacks_sent;
        self.keyframe_requests += keyframe_requests;
        self.keyframe_requests_throttled += keyframe_requests_throttled;
        self.layer_switches += layer_switches;
        self.rtc_timeouts += rtc_timeouts;
        self.rtc_polls += rtc_polls;
        self.peers_panicked += peers_panicked;
        self.relay_packets_sent += relay_packets_sent;
        self.relay_bytes_sent += relay_bytes_sent;
        self.relay_packets_received += relay_packets_received;
        self.relay_bytes_received += relay_bytes_received;
        self.relay_control_received += relay_control_received;
        self.relay_nacks_sent += relay_nacks_sent;
        self.relay_nacks_received += relay_nacks_received;
        self.relay_retransmits += relay_retransmits;
        self.relay_duplicates += relay_duplicates;
        self.relay_refused += relay_refused;
        self.participants += participants;
        self.rooms += rooms;
        self.tracks += tracks;
    }
}
