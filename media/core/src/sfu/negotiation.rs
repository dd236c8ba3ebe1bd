//! SDP offers and answers, and trickled ICE candidates.

use std::time::Instant;

use str0m::Candidate;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::media::Mid;

use super::Sfu;
use crate::error::SignalError;
use crate::id::ConnectionId;
use crate::isolation::RtcCall;

/// Refuses an offer that sends on more audio and video m-lines than
/// `limit` (0: no limit): each would be a track every subscriber gets an
/// m-line for.
pub(super) fn check_tracks(offer: &SdpOffer, limit: u32) -> Result<(), SignalError> {
    if limit == 0 {
        return Ok(());
    }
    let offered = offer
        .media_lines
        .iter()
        .filter(|m| m.typ.is_media() && !m.disabled && m.direction().is_sending())
        .count();
    if offered > limit as usize {
        return Err(SignalError::TooManyTracks { offered, limit });
    }
    Ok(())
}

impl Sfu {
    /// Accepts a client's SDP offer and returns the answer.
    pub fn handle_offer(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        offer: SdpOffer,
    ) -> Result<SdpAnswer, SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&connection)
            .ok_or(SignalError::UnknownParticipant)?;
        check_tracks(&offer, self.config.max_tracks_per_participant)?;
        // M-lines the client no longer sends on (a stopped transceiver, as
        // when a screen share ends): their tracks are unpublished below.
        let stopped: Vec<Mid> = offer
            .media_lines
            .iter()
            .filter(|m| m.typ.is_media() && (m.disabled || !m.direction().is_sending()))
            .map(|m| m.mid())
            .collect();
        let answer = match peer.accept_offer(offer) {
            Ok(a) => a,
            Err(e) => {
                if peer.rtc.is_poisoned() {
                    self.mark_dirty(connection);
                }
                return Err(e);
            }
        };
        if let Some(u) = peer.ufrags().last() {
            self.router.add_ufrag(u.clone(), connection);
        }
        self.unpublish_mids(connection, &stopped);
        self.mark_dirty(connection);
        Ok(answer)
    }

    /// Notes what the client says the m-lines of its offer carry (a camera,
    /// a screen share: `offer`'s `sources`), before [`Sfu::handle_offer`]:
    /// tracks published from them carry it. An m-line not named is a
    /// camera or microphone by its kind; a source that does not fit the
    /// m-line's kind is ignored when it is published.
    pub fn set_track_sources(
        &mut self,
        connection: ConnectionId,
        sources: &[(str0m::media::Mid, crate::signal::TrackSource)],
    ) -> Result<(), SignalError> {
        let peer = self
            .peers
            .get_mut(&connection)
            .ok_or(SignalError::UnknownParticipant)?;
        peer.set_sources(sources);
        Ok(())
    }

    /// Accepts a client's answer to the server's offer.
    pub fn handle_answer(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        answer: SdpAnswer,
    ) -> Result<(), SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&connection)
            .ok_or(SignalError::UnknownParticipant)?;
        let opened = match peer.accept_answer(answer) {
            Ok(o) => o,
            Err(e) => {
                if peer.rtc.is_poisoned() {
                    self.mark_dirty(connection);
                }
                return Err(e);
            }
        };
        for (source, mid) in opened {
            self.add_subscriber(source, connection, mid);
        }
        self.mark_dirty(connection);
        Ok(())
    }

    /// Writes a message on the connection's open data channel `label`;
    /// false when there is none (not open yet, or never) or it did not
    /// take the message (its buffer is full).
    pub fn handle_channel_send(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        label: &str,
        binary: bool,
        data: &[u8],
    ) -> Result<bool, SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&connection)
            .ok_or(SignalError::UnknownParticipant)?;
        let Some(id) = peer.channel_by_label(label) else {
            return Ok(false);
        };
        let sent = peer.rtc.call(RtcCall::Poll, |rtc| {
            rtc.channel(id)
                .is_some_and(|mut c| c.write(binary, data).unwrap_or(false))
        });
        self.mark_dirty(connection);
        Ok(sent.unwrap_or(false))
    }

    /// Adds a trickled ICE candidate of the client (`candidate:...`, no `a=`).
    pub fn handle_candidate(
        &mut self,
        now: Instant,
        connection: ConnectionId,
        candidate: &str,
    ) -> Result<(), SignalError> {
        self.advance(now);
        let peer = self
            .peers
            .get_mut(&connection)
            .ok_or(SignalError::UnknownParticipant)?;
        let line = candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            // End of candidates.
            return Ok(());
        }
        // A host address hidden behind an mDNS name (`<uuid>.local`, as
        // browsers send): nothing to resolve it with, and nothing lost, since
        // the server is ICE-lite and learns the address from the client's
        // checks. Accepted and ignored rather than refused.
        if line
            .split_whitespace()
            .nth(4)
            .is_some_and(|addr| addr.to_ascii_lowercase().ends_with(".local"))
        {
            return Ok(());
        }
        let c =
            Candidate::from_sdp_string(line).map_err(|e| SignalError::Candidate(e.to_string()))?;
        let added = peer
            .rtc
            .call(RtcCall::Candidate, |rtc| rtc.add_remote_candidate(c));
        // Driven either way: a poisoned peer is removed by its drive.
        self.mark_dirty(connection);
        Ok(added?)
    }
}
