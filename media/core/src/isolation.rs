//! One peer's str0m `Rtc` behind a wall: a panic inside it ends that peer,
//! not the shard.
//!
//! str0m parses what clients send (STUN, DTLS, RTP, RTCP, SDP); a bug there
//! that one client can trigger must not let it restart the server. Every
//! call into a peer's `Rtc` goes through [`PeerRtc::call`], which runs it
//! under `catch_unwind`: on a panic the `Rtc` is dropped unused and the
//! wrapper stays poisoned, refusing every later call without running it.
//! The SFU then removes the peer as one whose connection was lost (see
//! `Sfu::drive`). A site that gets [`Poisoned`] back queues the peer to be
//! driven, so it goes at once; its timer would take it at its next deadline.
//!
//! `catch_unwind` costs nothing until something panics (no allocation, no
//! lock), so the per-packet calls go through it too.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use str0m::Rtc;

/// What a call into a peer's `Rtc` does: named in the log when it panics,
/// and what a test hook picks to panic on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RtcCall {
    /// Building the `Rtc` and adding the server's own candidates.
    Build,
    /// A datagram from the client.
    Input,
    /// A timeout (str0m `handle_input(Input::Timeout)`).
    Timeout,
    /// Asking for its output or its state.
    Poll,
    /// Writing another participant's media into it (it subscribes).
    Forward,
    /// Asking it for a keyframe from its client (it publishes).
    Keyframe,
    /// Setting its send bitrates.
    Bandwidth,
    /// The SDP API: offers and answers either way.
    Sdp,
    /// A trickled remote candidate.
    Candidate,
    /// Closing it (DTLS close_notify) and draining the goodbyes.
    Close,
}

impl RtcCall {
    /// A name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            RtcCall::Build => "build",
            RtcCall::Input => "input",
            RtcCall::Timeout => "timeout",
            RtcCall::Poll => "poll",
            RtcCall::Forward => "forward",
            RtcCall::Keyframe => "keyframe",
            RtcCall::Bandwidth => "bandwidth",
            RtcCall::Sdp => "sdp",
            RtcCall::Candidate => "candidate",
            RtcCall::Close => "close",
        }
    }
}

/// The peer's `Rtc` panicked, now or before: nothing was called.
// `pub` in this private module (crate-visible) for `From<Poisoned> for SignalError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poisoned;

/// What a panic left to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Panic {
    /// The call that panicked.
    pub call: RtcCall,
    /// The panic's message (its payload, when a string).
    pub message: String,
}

// Inline, as the `Rtc` was in the (boxed) peer: a box would add a pointer
// chase to every call, a poisoned peer lives only until its next drive.
#[allow(clippy::large_enum_variant)]
enum State {
    Live(Rtc),
    Poisoned(Panic),
}

/// A peer's `Rtc`, reachable only through [`PeerRtc::call`].
pub(crate) struct PeerRtc {
    state: State,
    /// Test only: the next call of this kind panics.
    #[cfg(feature = "test-hooks")]
    fault: Option<RtcCall>,
}

impl PeerRtc {
    /// Builds the `Rtc` (a panic there poisons it from the start).
    pub fn build(build: impl FnOnce() -> Rtc) -> Self {
        let state = match catch_unwind(AssertUnwindSafe(build)) {
            Ok(rtc) => State::Live(rtc),
            Err(payload) => State::Poisoned(Panic {
                call: RtcCall::Build,
                message: message_of(payload),
            }),
        };
        PeerRtc {
            state,
            #[cfg(feature = "test-hooks")]
            fault: None,
        }
    }

    /// Runs `f` on the `Rtc`, unless it panicked before; a panic in `f`
    /// poisons it.
    ///
    /// `f` should touch nothing but the `Rtc`, values of its own, counters
    /// and the peer's own state: after a panic the peer is discarded, so
    /// what it left half-done is never seen (hence `AssertUnwindSafe`).
    #[inline]
    pub fn call<R>(&mut self, call: RtcCall, f: impl FnOnce(&mut Rtc) -> R) -> Result<R, Poisoned> {
        let State::Live(rtc) = &mut self.state else {
            return Err(Poisoned);
        };
        #[cfg(feature = "test-hooks")]
        let fault = self.fault.take_if(|c| *c == call).is_some();
        let result = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(feature = "test-hooks")]
            if fault {
                panic!("injected panic ({})", call.as_str());
            }
            f(rtc)
        }));
        match result {
            Ok(r) => Ok(r),
            Err(payload) => {
                let message = message_of(payload);
                let broken =
                    std::mem::replace(&mut self.state, State::Poisoned(Panic { call, message }));
                // Dropped without a call into it. Its drop glue runs over
                // state a panic left behind, so it is walled in too.
                if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(broken))) {
                    std::mem::forget(again);
                }
                Err(Poisoned)
            }
        }
    }

    /// Whether it panicked.
    #[inline]
    pub fn is_poisoned(&self) -> bool {
        matches!(self.state, State::Poisoned(_))
    }

    /// The panic that poisoned it, if any.
    pub fn panic(&self) -> Option<&Panic> {
        match &self.state {
            State::Poisoned(p) => Some(p),
            State::Live(_) => None,
        }
    }

    /// Test only: the next call of kind `on` panics inside the wall, as a
    /// bug in str0m would.
    #[cfg(feature = "test-hooks")]
    pub fn inject_panic(&mut self, on: RtcCall) {
        self.fault = Some(on);
    }
}

/// A panic's message: its payload when that is a string (as `panic!`
/// makes), else a placeholder. The payload is dropped inside the wall: a
/// payload's own drop may panic.
fn message_of(payload: Box<dyn Any + Send>) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned());
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn live() -> PeerRtc {
        PeerRtc::build(|| Rtc::builder().build(Instant::now()))
    }

    #[test]
    fn a_call_returns_what_the_rtc_says() {
        let mut rtc = live();
        assert_eq!(rtc.call(RtcCall::Poll, |r| r.is_alive()), Ok(true));
        assert!(!rtc.is_poisoned());
        assert_eq!(rtc.panic(), None);
    }

    #[test]
    fn a_panic_poisons_it_and_no_later_call_runs() {
        let mut rtc = live();
        let r: Result<(), Poisoned> = rtc.call(RtcCall::Input, |_| panic!("bad {}", "datagram"));
        assert_eq!(r, Err(Poisoned));
        assert!(rtc.is_poisoned());
        assert_eq!(
            rtc.panic(),
            Some(&Panic {
                call: RtcCall::Input,
                message: "bad datagram".into()
            })
        );
        let mut ran = false;
        assert_eq!(
            rtc.call(RtcCall::Close, |r| {
                ran = true;
                r.close()
            })
            .map(|_| ()),
            Err(Poisoned)
        );
        assert!(!ran, "a poisoned Rtc is never called again");
        // The first panic is the one reported.
        assert_eq!(rtc.panic().map(|p| p.call), Some(RtcCall::Input));
    }

    #[test]
    fn a_panic_with_a_static_or_other_payload_is_reported() {
        let mut rtc = live();
        let _ = rtc.call(RtcCall::Timeout, |_| -> () { panic!("static message") });
        assert_eq!(
            rtc.panic().map(|p| p.message.as_str()),
            Some("static message")
        );
        let mut rtc = live();
        let _ = rtc.call(RtcCall::Timeout, |_| -> () { std::panic::panic_any(42u32) });
        assert_eq!(
            rtc.panic().map(|p| p.message.as_str()),
            Some("panic with a non-string payload")
        );
    }

    #[test]
    fn a_panic_while_building_poisons_it_from_the_start() {
        let mut rtc = PeerRtc::build(|| panic!("no crypto"));
        assert_eq!(rtc.panic().map(|p| p.call), Some(RtcCall::Build));
        assert_eq!(rtc.call(RtcCall::Poll, |r| r.is_alive()), Err(Poisoned));
    }
}
