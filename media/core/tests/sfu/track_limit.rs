//! `SfuConfig::set_max_tracks_per_participant`: an offer that sends more
//! audio and video m-lines than allowed is refused before anything changes;
//! receive-only m-lines and data channels do not count.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Instant;

use str0m::change::SdpOffer;
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, Rtc};
use vela_media_core::{JoinRequest, PeerKind, RoomId, Sfu, SfuConfig, SignalError};

/// A client offer with `send` sending and `recv` receive-only audio m-lines.
fn offer(now: Instant, send: usize, recv: usize) -> SdpOffer {
    let mut rtc = Rtc::builder().build(now);
    rtc.add_local_candidate(Candidate::host("127.0.0.2:5000".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    for _ in 0..send {
        change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    }
    for _ in 0..recv {
        change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    }
    change.add_channel("vela".into());
    change.apply().unwrap().0
}

#[test]
fn an_offer_with_too_many_tracks_is_refused() {
    let now = Instant::now();
    let server = "127.0.0.1:7882".parse().unwrap();
    let mut sfu = Sfu::new(
        SfuConfig::new(vec![server]).set_max_tracks_per_participant(2),
        now,
    );
    let room = RoomId::new("room1").unwrap();
    let joined = sfu
        .handle_join(now, JoinRequest::new(room, "alice", PeerKind::Session))
        .unwrap();
    let p = joined.connection;
    match sfu.handle_offer(now, p, offer(now, 3, 0)) {
        Err(SignalError::TooManyTracks { offered, limit }) => {
            assert_eq!((offered, limit), (3, 2));
        }
        other => panic!("expected TooManyTracks, got {other:?}"),
    }
    // Nothing changed: the same participant can still offer within the
    // limit, receive-only m-lines and the data channel aside.
    assert!(sfu.handle_offer(now, p, offer(now, 2, 5)).is_ok());
    assert_eq!(sfu.stats().participants, 1);
}
