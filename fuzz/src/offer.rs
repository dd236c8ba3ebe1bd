//! Browser offers, mutated: str0m's SDP parser (`SdpOffer::from_sdp_string`,
//! as the room socket and WHIP call it), then the core's offer path with
//! every kind of participant in one room: a WHIP publisher and a WHEP viewer
//! (`Sfu::handle_join` with the offer) and a session (`handle_join`, then
//! `handle_offer`, and the same offer again as a renegotiation), followed by
//! a few timeouts for the server's own offers.
//!
//! Input: the offer's text (the seeds are Chromium's offers). Room and
//! identities are fixed.

use std::time::{Duration, Instant};

use vela_media_core::{JoinRequest, PeerKind, RoomId, SdpOffer};

use crate::world;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parse = || SdpOffer::from_sdp_string(text);
    if let Err(e) = parse() {
        // What a client is told.
        let _ = vela_signaling::fuzz::sdp_reason(&e);
        return;
    }
    let Ok(room) = RoomId::new("fuzz") else {
        return;
    };
    let mut now = Instant::now();
    let mut sfu = world::sfu(now);
    for (identity, kind) in [("whip", PeerKind::Whip), ("whep", PeerKind::Whep)] {
        if let Ok(offer) = parse() {
            let req = JoinRequest::new(room.clone(), identity, kind).with_offer(offer);
            if let Ok(joined) = sfu.handle_join(now, req) {
                let answer = joined.answer.expect("a join with an offer is answered");
                let _ = answer.to_sdp_string();
            }
        }
        world::drain(&mut sfu);
    }
    let joined = sfu.handle_join(
        now,
        JoinRequest::new(room.clone(), "session", PeerKind::Session),
    );
    if let Ok(joined) = joined {
        for _ in 0..2 {
            if let Ok(offer) = parse()
                && let Ok(answer) = sfu.handle_offer(now, joined.connection, offer)
            {
                let _ = answer.to_sdp_string();
            }
            world::drain(&mut sfu);
        }
    }
    for _ in 0..3 {
        now += Duration::from_millis(100);
        sfu.handle_timeout(now);
        for (_, signal) in world::drain(&mut sfu) {
            if let vela_media_core::Signal::Offer(o) = signal {
                let _ = o.to_sdp_string();
            }
        }
    }
    world::shut_down(&mut sfu, now);
}
