//! The presence aggregator, sans-IO: plain synchronous code, time is an input.
//!
//! # Rules
//! - A device is present while it is in a room, or until `timeout` after
//!   the last message it sent (connecting, a heartbeat, any message),
//!   whether or not its socket is still open. So a connection that drops
//!   and comes back within the timeout changes nothing, and a device that
//!   vanishes goes offline `timeout` after it was last heard from. Logging
//!   out or revoking a device removes it at once.
//! - A present device's status is `in_call` while it is in a room, else
//!   what it last set (`online` when it never set one): `online`, `away` or
//!   `dnd`.
//! - An account's status is the highest of its present devices' statuses,
//!   in the order `in_call` > `dnd` > `online` > `away` > `offline`
//!   (`offline` when no device is present).
//!
//! # Run-loop contract
//! Feed inputs with the `handle_*` methods; each returns the account's
//! change, if its aggregated status changed. Call
//! [`PresenceTracker::handle_timeout`] no later than
//! [`PresenceTracker::poll_timeout`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::domain::Invalid;
use crate::domain::ids::{AccountId, DeviceId};

/// An account's (or a device's) presence status, lowest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// No device present.
    Offline,
    /// Present but idle.
    Away,
    /// Present and available.
    Online,
    /// Do not disturb.
    Dnd,
    /// In a room.
    InCall,
}

/// What a device can set itself to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Available.
    Online,
    /// Idle.
    Away,
    /// Do not disturb.
    Dnd,
}

impl Status {
    /// Its precedence as a number (`Offline` 0 ... `InCall` 4), the order
    /// of [`Ord`]: an account's status is its devices' highest. The shared
    /// presence of a cluster stores and aggregates these.
    pub fn rank(self) -> u8 {
        self as u8
    }

    /// The status of a [`Status::rank`]; `Offline` for anything else.
    pub fn from_rank(rank: i64) -> Status {
        match rank {
            1 => Status::Away,
            2 => Status::Online,
            3 => Status::Dnd,
            4 => Status::InCall,
            _ => Status::Offline,
        }
    }
}

impl From<DeviceStatus> for Status {
    fn from(s: DeviceStatus) -> Status {
        match s {
            DeviceStatus::Online => Status::Online,
            DeviceStatus::Away => Status::Away,
            DeviceStatus::Dnd => Status::Dnd,
        }
    }
}

/// An account's aggregated status changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// Whose.
    pub account: AccountId,
    /// The status before.
    pub previous: Status,
    /// The status now.
    pub status: Status,
    /// When the account was last heard from (for `last_seen` on going offline).
    pub last_active: Instant,
}

#[derive(Debug)]
struct DeviceState {
    account: AccountId,
    status: DeviceStatus,
    /// Rooms the device is in.
    calls: u32,
    /// Present until then, unless in a room.
    expires: Instant,
    last_active: Instant,
}

impl DeviceState {
    fn present(&self, now: Instant) -> bool {
        self.calls > 0 || now < self.expires
    }

    fn status(&self) -> Status {
        if self.calls > 0 {
            Status::InCall
        } else {
            self.status.into()
        }
    }
}

/// Presence of every account with a device present.
#[derive(Debug)]
pub struct PresenceTracker {
    timeout: Duration,
    devices: HashMap<DeviceId, DeviceState>,
    /// Each account's published status and its tracked devices.
    accounts: HashMap<AccountId, (Status, Vec<DeviceId>)>,
    /// Expiry deadlines; entries whose device has since moved on are skipped.
    deadlines: BinaryHeap<Reverse<(Instant, DeviceId)>>,
}

impl PresenceTracker {
    /// A tracker where devices expire `timeout` after they were last heard from.
    pub fn new(timeout: Duration) -> Self {
        PresenceTracker {
            timeout,
            devices: HashMap::new(),
            accounts: HashMap::new(),
            deadlines: BinaryHeap::new(),
        }
    }

    /// The account's aggregated status.
    pub fn status(&self, account: AccountId) -> Status {
        self.accounts
            .get(&account)
            .map_or(Status::Offline, |(s, _)| *s)
    }

    /// The accounts with a device present.
    pub fn present_accounts(&self) -> Vec<AccountId> {
        self.accounts
            .iter()
            .filter(|(_, (s, _))| *s != Status::Offline)
            .map(|(a, _)| *a)
            .collect()
    }

    /// A device's own status (`offline` when not present).
    pub fn device_status(&self, device: DeviceId) -> Status {
        self.devices
            .get(&device)
            .map_or(Status::Offline, DeviceState::status)
    }

    fn device_entry(
        &mut self,
        now: Instant,
        account: AccountId,
        device: DeviceId,
    ) -> &mut DeviceState {
        let (_, list) = self
            .accounts
            .entry(account)
            .or_insert_with(|| (Status::Offline, Vec::new()));
        if !list.contains(&device) {
            list.push(device);
        }
        self.devices.entry(device).or_insert(DeviceState {
            account,
            status: DeviceStatus::Online,
            calls: 0,
            expires: now,
            last_active: now,
        })
    }

    fn touch(&mut self, now: Instant, account: AccountId, device: DeviceId) {
        let expires = now + self.timeout;
        let d = self.device_entry(now, account, device);
        d.expires = expires;
        d.last_active = now;
        self.deadlines.push(Reverse((expires, device)));
    }

    /// The device connected or sent something (a heartbeat, any message).
    pub fn handle_activity(
        &mut self,
        now: Instant,
        account: AccountId,
        device: DeviceId,
    ) -> Option<Change> {
        self.touch(now, account, device);
        self.recompute(now, account, now)
    }

    /// The device set its own status (and is active).
    pub fn handle_set_status(
        &mut self,
        now: Instant,
        account: AccountId,
        device: DeviceId,
        status: DeviceStatus,
    ) -> Option<Change> {
        self.touch(now, account, device);
        self.device_entry(now, account, device).status = status;
        self.recompute(now, account, now)
    }

    /// The device entered a room.
    pub fn handle_call_started(
        &mut self,
        now: Instant,
        account: AccountId,
        device: DeviceId,
    ) -> Option<Change> {
        let d = self.device_entry(now, account, device);
        d.calls += 1;
        d.last_active = now;
        self.recompute(now, account, now)
    }

    /// The device left a room.
    pub fn handle_call_ended(&mut self, now: Instant, device: DeviceId) -> Option<Change> {
        let d = self.devices.get_mut(&device)?;
        d.calls = d.calls.saturating_sub(1);
        d.last_active = now;
        let account = d.account;
        if !d.present(now) {
            self.forget(device);
        }
        self.recompute(now, account, now)
    }

    /// The device logged out or was revoked: it is gone at once.
    pub fn handle_device_removed(&mut self, now: Instant, device: DeviceId) -> Option<Change> {
        let account = self.devices.get(&device)?.account;
        self.forget(device);
        self.recompute(now, account, now)
    }

    /// The account was disabled: all its devices are gone at once.
    pub fn handle_account_removed(&mut self, now: Instant, account: AccountId) -> Option<Change> {
        let devices = self.accounts.get(&account)?.1.clone();
        for d in devices {
            self.forget(d);
        }
        self.recompute(now, account, now)
    }

    /// Expires the devices not heard from within the timeout.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        while let Some(Reverse((at, device))) = self.deadlines.peek().copied() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            let Some(d) = self.devices.get(&device) else {
                continue;
            };
            if d.present(now) {
                continue;
            }
            let (account, last_active) = (d.account, d.last_active);
            self.forget(device);
            if let Some(c) = self.recompute(now, account, last_active) {
                changes.push(c);
            }
        }
        changes
    }

    /// When [`PresenceTracker::handle_timeout`] is next due.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, device))) = self.deadlines.peek().copied() {
            match self.devices.get(&device) {
                Some(d) if d.calls == 0 && d.expires == at => return Some(at),
                _ => {
                    self.deadlines.pop();
                }
            }
        }
        None
    }

    fn forget(&mut self, device: DeviceId) {
        if let Some(d) = self.devices.remove(&device)
            && let Some((_, list)) = self.accounts.get_mut(&d.account)
        {
            list.retain(|x| *x != device);
        }
    }

    fn recompute(
        &mut self,
        now: Instant,
        account: AccountId,
        last_active: Instant,
    ) -> Option<Change> {
        let (published, list) = self.accounts.get(&account)?;
        let status = list
            .iter()
            .filter_map(|d| self.devices.get(d))
            .filter(|d| d.present(now))
            .map(DeviceState::status)
            .max()
            .unwrap_or(Status::Offline);
        let previous = *published;
        if status == Status::Offline && list.is_empty() {
            self.accounts.remove(&account);
        } else if let Some(entry) = self.accounts.get_mut(&account) {
            entry.0 = status;
        }
        (status != previous).then_some(Change {
            account,
            previous,
            status,
            last_active,
        })
    }
}

/// An account's presence as its owner and mutual contacts see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Presence {
    /// Whose.
    pub account_id: AccountId,
    /// The aggregated status.
    pub status: Status,
    /// The status text the user set ("" when none).
    pub text: String,
    /// When offline: when the account was last online (ms since the epoch),
    /// if ever. `null` while not offline.
    pub last_seen: Option<i64>,
}

/// Longest status text, in characters.
pub const MAX_STATUS_TEXT: usize = 140;

/// An account's status text, trimmed; "" clears it.
pub fn check_status_text(raw: &str) -> Result<&str, Invalid> {
    let t = raw.trim();
    if t.chars().count() > MAX_STATUS_TEXT || t.chars().any(char::is_control) {
        return Err(Invalid::new(
            "text",
            format!("must be at most {MAX_STATUS_TEXT} characters without control characters"),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_follow_precedence_and_round_trip() {
        let all = [
            Status::Offline,
            Status::Away,
            Status::Online,
            Status::Dnd,
            Status::InCall,
        ];
        for w in all.windows(2) {
            assert!(w[0] < w[1] && w[0].rank() < w[1].rank());
        }
        for s in all {
            assert_eq!(Status::from_rank(i64::from(s.rank())), s);
        }
        assert_eq!(Status::from_rank(9), Status::Offline);
    }

    #[test]
    fn status_texts_are_trimmed_and_bounded() {
        assert_eq!(check_status_text("  focus time "), Ok("focus time"));
        assert_eq!(check_status_text("   "), Ok(""));
        assert_eq!(
            check_status_text(&"x".repeat(MAX_STATUS_TEXT)).map(str::len),
            Ok(MAX_STATUS_TEXT)
        );
        for bad in ["x".repeat(MAX_STATUS_TEXT + 1), "line\nbreak".to_owned()] {
            let e = check_status_text(&bad).expect_err("refused");
            assert_eq!(e.field, "text");
        }
    }

    const A: AccountId = AccountId(1);
    const B: AccountId = AccountId(2);
    const PHONE: DeviceId = DeviceId(10);
    const DESK: DeviceId = DeviceId(11);
    const WEB: DeviceId = DeviceId(20);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn status_of(c: Option<Change>) -> Option<Status> {
        c.map(|c| c.status)
    }

    #[test]
    fn a_device_goes_offline_only_after_the_heartbeat_timeout() {
        let t0 = Instant::now();
        let mut p = PresenceTracker::new(ms(300));
        assert_eq!(
            status_of(p.handle_activity(t0, A, PHONE)),
            Some(Status::Online)
        );
        assert_eq!(p.poll_timeout(), Some(t0 + ms(300)));
        // Heartbeats keep it online and push the deadline.
        assert_eq!(p.handle_activity(t0 + ms(200), A, PHONE), None);
        assert_eq!(p.poll_timeout(), Some(t0 + ms(500)));
        assert!(p.handle_timeout(t0 + ms(300)).is_empty());
        assert_eq!(p.status(A), Status::Online);
        // Silence: offline exactly at the deadline, last active at the last heartbeat.
        assert!(p.handle_timeout(t0 + ms(499)).is_empty());
        let changes = p.handle_timeout(t0 + ms(500));
        assert_eq!(
            changes,
            vec![Change {
                account: A,
                previous: Status::Online,
                status: Status::Offline,
                last_active: t0 + ms(200),
            }]
        );
        assert_eq!(p.status(A), Status::Offline);
        assert_eq!(p.poll_timeout(), None);
        assert!(p.devices.is_empty() && p.accounts.is_empty());
    }

    #[test]
    fn a_short_blip_changes_nothing() {
        let t0 = Instant::now();
        let mut p = PresenceTracker::new(ms(300));
        p.handle_activity(t0, A, PHONE);
        p.handle_set_status(t0, A, PHONE, DeviceStatus::Dnd);
        // The socket drops at 100 ms (no input) and the device reconnects at 250 ms.
        assert!(p.handle_timeout(t0 + ms(249)).is_empty());
        assert_eq!(p.handle_activity(t0 + ms(250), A, PHONE), None);
        assert!(p.handle_timeout(t0 + ms(400)).is_empty());
        // It kept its own status across the blip.
        assert_eq!(p.status(A), Status::Dnd);
    }

    #[test]
    fn devices_aggregate_by_precedence() {
        let t0 = Instant::now();
        let mut p = PresenceTracker::new(ms(1000));
        assert_eq!(
            status_of(p.handle_set_status(t0, A, PHONE, DeviceStatus::Away)),
            Some(Status::Away)
        );
        // online > away
        assert_eq!(
            status_of(p.handle_activity(t0, A, DESK)),
            Some(Status::Online)
        );
        // dnd > online
        assert_eq!(
            status_of(p.handle_set_status(t0, A, DESK, DeviceStatus::Dnd)),
            Some(Status::Dnd)
        );
        // in_call > dnd
        let c = p.handle_call_started(t0, A, PHONE).expect("change");
        assert_eq!((c.previous, c.status), (Status::Dnd, Status::InCall));
        assert_eq!(p.device_status(PHONE), Status::InCall);
        assert_eq!(p.device_status(DESK), Status::Dnd);
        // In a room, the phone stays present past its heartbeat timeout;
        // the desk expires, which changes nothing visible.
        assert!(p.handle_timeout(t0 + ms(1000)).is_empty());
        assert_eq!(p.status(A), Status::InCall);
        assert_eq!(p.device_status(DESK), Status::Offline);
        // Leaving the room after the timeout: the phone is gone too.
        let c = p.handle_call_ended(t0 + ms(1500), PHONE).expect("change");
        assert_eq!(c.status, Status::Offline);
        assert_eq!(c.last_active, t0 + ms(1500));
        // Another account is independent.
        assert_eq!(p.status(B), Status::Offline);
    }

    #[test]
    fn leaving_a_call_returns_to_the_device_status() {
        let t0 = Instant::now();
        let mut p = PresenceTracker::new(ms(1000));
        p.handle_set_status(t0, B, WEB, DeviceStatus::Away);
        assert_eq!(
            status_of(p.handle_call_started(t0, B, WEB)),
            Some(Status::InCall)
        );
        // Two rooms at once: in a call until both end.
        assert_eq!(p.handle_call_started(t0, B, WEB), None);
        assert_eq!(p.handle_call_ended(t0 + ms(10), WEB), None);
        assert_eq!(
            status_of(p.handle_call_ended(t0 + ms(20), WEB)),
            Some(Status::Away)
        );
        // A call without a device socket counts too.
        assert_eq!(
            status_of(p.handle_call_started(t0, A, PHONE)),
            Some(Status::InCall)
        );
        assert_eq!(p.poll_timeout(), Some(t0 + ms(1000)));
    }

    #[test]
    fn removing_devices_and_accounts_is_immediate() {
        let t0 = Instant::now();
        let mut p = PresenceTracker::new(ms(1000));
        p.handle_activity(t0, A, PHONE);
        p.handle_set_status(t0, A, DESK, DeviceStatus::Dnd);
        assert_eq!(
            status_of(p.handle_device_removed(t0 + ms(5), DESK)),
            Some(Status::Online)
        );
        assert_eq!(p.handle_device_removed(t0 + ms(5), DESK), None);
        p.handle_activity(t0, A, DESK);
        let c = p.handle_account_removed(t0 + ms(6), A).expect("change");
        assert_eq!((c.status, c.last_active), (Status::Offline, t0 + ms(6)));
        assert_eq!(p.poll_timeout(), None);
        assert!(p.handle_timeout(t0 + ms(5000)).is_empty());
    }
}
