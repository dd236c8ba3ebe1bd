//! When forwarded video skips str0m's pacer (issue 22).
//!
//! str0m's leaky-bucket pacer (`pacer/leaky.rs`, one per `Rtc`) counts every
//! RTP payload it sends as debt, paced or not, drains it at 1.1x the send
//! estimate, and holds a paced packet while the debt exceeds 40 ms of that
//! rate. A keyframe (5x a frame) sent unpaced leaves a debt that, at the
//! estimate's headroom over the media rate, takes up to seconds to drain, and
//! the delta frames behind it waited that long. The pacer's state is not
//! public, so it is modelled here from what vela writes to the peer; a video
//! packet skips the pacer while the model says the pacer would hold it.

use std::time::{Duration, Instant};

/// str0m's pacing rate over its send estimate (`pacer/control.rs`), as a
/// fraction: 11/10.
const PACING_FACTOR: (u64, u64) = (11, 10);
/// The burst str0m's pacer sends at once (`PACING` in `pacer/leaky.rs`,
/// below 12.6 Mbit/s).
const BURST: Duration = Duration::from_millis(40);
/// str0m's cap on the debt (`MAX_DEBT_IN_TIME`).
const MAX_DEBT: Duration = Duration::from_millis(500);
/// The send estimate str0m starts from (`Peer::new` enables it at 1 Mbit/s)
/// before the first one is reported.
const INITIAL_ESTIMATE: u64 = 1_000_000;

/// str0m's pacer debt towards one peer, as modelled from the payload bytes
/// written to it (resends and padding, which vela does not see, are left
/// out: the model errs towards pacing).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PacerModel {
    /// Payload bytes not yet drained at `at`.
    debt: u64,
    at: Option<Instant>,
}

impl PacerModel {
    /// Drains the debt to `now` at the pacing rate for send estimate
    /// `estimate` (bits/s; `None`: none reported yet); returns whether
    /// str0m's pacer would hold a paced packet written now. No margin:
    /// video that the pacer would send at once stays paced (with half the
    /// burst, a 3 kB frame at the initial estimate already went unpaced).
    pub fn would_hold(&mut self, now: Instant, estimate: Option<u64>) -> bool {
        let rate = pacing_rate(estimate);
        if let Some(at) = self.at {
            let drained = bytes_in(rate, now.saturating_duration_since(at));
            self.debt = self.debt.saturating_sub(drained);
        }
        self.at = Some(now.max(self.at.unwrap_or(now)));
        self.debt >= bytes_in(rate, BURST)
    }

    /// A payload of `bytes` was written to the peer (paced or not: str0m
    /// counts both), after [`would_hold`](Self::would_hold) for `now`.
    pub fn sent(&mut self, bytes: usize, estimate: Option<u64>) {
        let cap = bytes_in(pacing_rate(estimate), MAX_DEBT);
        self.debt = self.debt.saturating_add(bytes as u64).min(cap);
    }
}

/// str0m's pacing rate (bits/s) for send estimate `estimate`.
fn pacing_rate(estimate: Option<u64>) -> u64 {
    let e = estimate.unwrap_or(INITIAL_ESTIMATE);
    e.saturating_mul(PACING_FACTOR.0) / PACING_FACTOR.1
}

/// Bytes sent in `d` at `bps` bits/s.
fn bytes_in(bps: u64, d: Duration) -> u64 {
    let b = u128::from(bps) * d.as_micros() / 8 / 1_000_000;
    u64::try_from(b).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_frame_within_the_burst_is_left_to_the_pacer() {
        let t = Instant::now();
        let mut m = PacerModel::default();
        // 2 Mbit/s: pacing 2.2 Mbit/s, held from 40 ms of it: 11 kB.
        let e = Some(2_000_000);
        assert!(!m.would_hold(t, e));
        m.sent(10_000, e);
        assert!(!m.would_hold(t, e));
        m.sent(1_000, e);
        assert!(m.would_hold(t, e));
        // 2.2 Mbit/s drains 275 bytes a millisecond: 11 kB -> 10.45 kB in 2 ms.
        assert!(!m.would_hold(t + 2 * MS, e));
    }

    #[test]
    fn a_keyframe_is_held_until_its_debt_drains_at_the_pacing_rate() {
        let t = Instant::now();
        let mut m = PacerModel::default();
        let e = Some(2_000_000);
        assert!(!m.would_hold(t, e));
        m.sent(35_000, e);
        // (35 000 - 11 000) bytes at 275 bytes/ms: 87.3 ms.
        assert!(m.would_hold(t + 87 * MS, e));
        assert!(!m.would_hold(t + 88 * MS, e));
    }

    #[test]
    fn without_an_estimate_the_initial_one_applies_and_the_debt_is_capped() {
        let t = Instant::now();
        let mut m = PacerModel::default();
        assert!(!m.would_hold(t, None));
        // 1.1 Mbit/s: capped at 500 ms (68 750 bytes), held from 5 500:
        // 460 ms at 137.5 bytes/ms.
        m.sent(1_000_000, None);
        assert!(m.would_hold(t + 459 * MS, None));
        assert!(!m.would_hold(t + 461 * MS, None));
    }

    #[test]
    fn time_going_back_does_not_add_debt() {
        let t = Instant::now() + Duration::from_secs(1);
        let mut m = PacerModel::default();
        let e = Some(1_000_000);
        assert!(!m.would_hold(t, e));
        m.sent(10_000, e);
        assert!(m.would_hold(t - 10 * MS, e));
        assert!(!m.would_hold(t + 100 * MS, e));
    }
}
