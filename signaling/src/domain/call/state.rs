//! The calls state machine, sans-IO: plain synchronous code; time (wall
//! clock milliseconds) is an input.
//!
//! # Rules
//! - A call has members: the caller (in the call from the start, on the
//!   device that called) and invitees. An invitee rings on every device
//!   until one device accepts (first wins: the account is then in the call
//!   on that device, its other devices stop ringing with
//!   `answered_elsewhere`), a device declines, the caller cancels, or
//!   `ring_timeout` passes (missed).
//! - An invitee already in another call is **busy** (not rung; no call
//!   waiting). An invitee whose do-not-disturb filters the caller is not rung
//!   either (`filtered` for them, `unavailable` for everyone else).
//! - A member in the call must join its room within `join_timeout` of
//!   accepting (the caller: of the call being answered), else they leave
//!   it (a client that accepted and then crashed does not keep the other
//!   side waiting, or themselves busy).
//! - A call ends when nobody is left in it, or when at most one person is
//!   left in it and nobody is still being rung. So a 1:1 call ends when
//!   either side hangs up; a group call goes on until the last but one leaves.
//! - Every member's part ends with a [`Record`] for its history: declined,
//!   missed, busy and filtered at once; the others when they leave or the
//!   call ends.
//! - The call room (`call-<id>`) admits only members in the call, on the
//!   device they are in the call on, or another of their devices that takes
//!   over the participant ([`Calls::authorize_join`]).
//!
//! # Run-loop contract
//! Feed inputs with the `handle_*` methods, then drain
//! [`Calls::poll_output`]; call [`Calls::handle_timeout`] no later than
//! [`Calls::poll_timeout`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vela_media::core::{ConnectionId, ParticipantId};

use super::{Direction, Outcome, ROOM_PREFIX};
use crate::domain::ids::{AccountId, CallId, DeviceId};

mod ending;
mod ring;
mod room;
#[cfg(test)]
mod tests;

pub use ending::interrupted;
use ending::open_records;

/// How long an ended call stays known (for late accepts and cancels, which
/// then get a clear "the call has ended").
const KEEP_ENDED_MS: i64 = 10 * 60 * 1000;
/// Chat messages kept per call (for devices that join late).
const KEEP_MESSAGES: usize = 200;

/// An account as calls show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// The account.
    pub account_id: AccountId,
    /// Its username.
    pub username: String,
    /// Its display name.
    pub display_name: String,
}

/// An account to ring, as the service resolved it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Invitee {
    /// Who.
    pub person: Person,
    /// Their do-not-disturb filters the caller.
    pub filtered: bool,
}

/// Where a member stands in a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Being rung.
    Ringing,
    /// In the call.
    Joined,
    /// Was in the call and left.
    Left,
    /// Declined.
    Declined,
    /// Did not answer in time.
    Missed,
    /// Was in another call.
    Busy,
    /// Filtered by do-not-disturb; shown to everyone as `unavailable`.
    #[serde(rename = "unavailable")]
    Filtered,
    /// The call was cancelled while ringing.
    Cancelled,
}

/// One account in a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    /// Who.
    #[serde(flatten)]
    pub person: Person,
    /// Where they stand.
    pub state: MemberState,
    /// Who invited them (the caller invites themself).
    pub invited_by: AccountId,
    /// When they were invited.
    pub invited_at: i64,
    /// When they answered (the caller: when the call started).
    pub answered_at: Option<i64>,
    /// The device they are in the call on.
    pub device_id: Option<DeviceId>,
    /// The room participant id others see them as, once in the room.
    pub participant_id: Option<ParticipantId>,
    #[serde(skip)]
    ring_deadline: Option<i64>,
    /// When they leave the call if they have not joined its room by then.
    #[serde(skip)]
    join_deadline: Option<i64>,
    #[serde(skip)]
    client: Option<String>,
    #[serde(skip)]
    answered_device: Option<DeviceId>,
    /// The live room connection (differs from the participant id after a handover).
    #[serde(skip)]
    connection: Option<ConnectionId>,
    /// The connection being taken over, while a handover runs.
    #[serde(skip)]
    previous: Option<(ConnectionId, DeviceId)>,
    #[serde(skip)]
    moves: Vec<DeviceId>,
}

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// Nobody has answered yet.
    Ringing,
    /// Someone answered.
    Active,
    /// Over.
    Ended,
}

/// A chat message in a call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    /// The call.
    pub call_id: CallId,
    /// Its position in the call's chat, from 1.
    pub seq: u64,
    /// The sender.
    pub from: Person,
    /// The sender's device.
    pub device_id: DeviceId,
    /// The text.
    pub text: String,
    /// When it was sent.
    pub sent_at: i64,
}

/// A call, as its members see it (read back, it lacks what is not shown:
/// the chat, each member's devices and deadlines).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// The call.
    pub id: CallId,
    /// Its room (join it on `/ws` with an access token).
    pub room: String,
    /// Video (else audio only).
    pub video: bool,
    /// Who called.
    pub caller: AccountId,
    /// Where it stands.
    pub state: CallState,
    /// When it was placed.
    pub created_at: i64,
    /// When someone first answered.
    pub answered_at: Option<i64>,
    /// When it ended.
    pub ended_at: Option<i64>,
    /// Everyone invited, the caller first.
    pub members: Vec<Member>,
    #[serde(skip)]
    cancelled: bool,
    #[serde(skip)]
    messages: VecDeque<ChatMessage>,
    #[serde(skip)]
    next_seq: u64,
}

impl Call {
    /// The member for `account`.
    pub fn member(&self, account: AccountId) -> Option<&Member> {
        self.members.iter().find(|m| m.person.account_id == account)
    }

    fn index(&self, account: AccountId) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.person.account_id == account)
    }

    fn count(&self, state: MemberState) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }

    /// The accounts still involved (ringing or in the call).
    fn involved(&self) -> Vec<AccountId> {
        self.members
            .iter()
            .filter(|m| matches!(m.state, MemberState::Ringing | MemberState::Joined))
            .map(|m| m.person.account_id)
            .collect()
    }

    /// The chat so far (the last messages).
    pub fn messages(&self) -> impl Iterator<Item = &ChatMessage> {
        self.messages.iter()
    }
}

/// A push for every device of one account.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Incoming call: ring.
    CallRinging {
        /// The call.
        call: Call,
        /// Who calls (or added this account to the call).
        caller: Person,
        /// Always false: a callee already in a call is busy, not rung.
        waiting: bool,
    },
    /// This account placed a call (shown on its other devices).
    CallOutgoing {
        /// The call.
        call: Call,
    },
    /// A member answered.
    CallAnswered {
        /// The call.
        call: Call,
        /// Who.
        account_id: AccountId,
        /// On which device.
        device_id: DeviceId,
        /// The accepting client's own id, if it gave one.
        client_id: Option<String>,
    },
    /// This account's ringing stopped because one of its devices answered.
    CallRingingStopped {
        /// The call.
        call: Call,
        /// `answered_elsewhere`.
        reason: &'static str,
        /// The device that answered.
        device_id: DeviceId,
        /// The accepting client's own id, if it gave one.
        client_id: Option<String>,
    },
    /// A member declined.
    CallDeclined {
        /// The call.
        call: Call,
        /// Who.
        account_id: AccountId,
    },
    /// Something else changed: members, states, devices, participant ids.
    CallUpdated {
        /// The call.
        call: Call,
    },
    /// The call is over for this account.
    CallEnded {
        /// The call.
        call: Call,
        /// How it ended for this account.
        outcome: Outcome,
    },
    /// A chat message.
    CallMessage {
        /// The message.
        message: ChatMessage,
    },
}

/// One account's history entry for a call, ready to store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Whose.
    pub account_id: AccountId,
    /// The call.
    pub call_id: CallId,
    /// Placed or received.
    pub direction: Direction,
    /// Video or audio only.
    pub video: bool,
    /// The other people in the call.
    pub participants: Vec<Person>,
    /// When the call was placed (or this account was added to it).
    pub started_at: i64,
    /// When this account's call was answered.
    pub answered_at: Option<i64>,
    /// When it ended for this account.
    pub ended_at: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// The device that answered (or placed) the call.
    pub device_id: Option<DeviceId>,
    /// Devices the call was handed over to, in order.
    pub handed_over_to: Vec<DeviceId>,
}

/// What the state machine asks of its service.
#[derive(Debug, Clone)]
pub enum Output {
    /// Push to every device of the account.
    Push(AccountId, Box<Event>),
    /// Store a history entry.
    Record(Record),
    /// Remove this room connection of this room (its member left or the
    /// call ended). In a cluster the room names the node's session: a
    /// connection id is unique on its node only.
    Kick(String, ConnectionId),
    /// Tell integrations (webhooks).
    Notice(Notice),
    /// Call `id` changed: keep it durably, so a crash does not lose it;
    /// `None` once it has ended (its entries went out as
    /// [`Output::Record`] before this). Comes after the outputs of the same
    /// change.
    Journal(CallId, Option<Box<OpenCall>>),
}

/// A call going on, as kept against a crash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenCall {
    /// The call as its members see it (for the `call_ended` webhook).
    pub call: Call,
    /// The history entries its members would get if it ended now
    /// (`ended_at` the last moment known).
    pub records: Vec<Record>,
    /// What the view leaves out, so that another node can take the call
    /// over ([`Calls::restore`]); absent in journals written before.
    #[serde(default)]
    pub kept: Option<Kept>,
}

/// The part of a call its view does not show, kept in its journal.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Kept {
    cancelled: bool,
    next_seq: u64,
    members: Vec<KeptMember>,
}

/// The part of a member its view does not show (not its room connection:
/// that belongs to the node it is on, and is announced again).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeptMember {
    ring_deadline: Option<i64>,
    join_deadline: Option<i64>,
    client: Option<String>,
    answered_device: Option<DeviceId>,
    moves: Vec<DeviceId>,
}

impl Kept {
    fn of(call: &Call) -> Kept {
        Kept {
            cancelled: call.cancelled,
            next_seq: call.next_seq,
            members: call
                .members
                .iter()
                .map(|m| KeptMember {
                    ring_deadline: m.ring_deadline,
                    join_deadline: m.join_deadline,
                    client: m.client.clone(),
                    answered_device: m.answered_device,
                    moves: m.moves.clone(),
                })
                .collect(),
        }
    }
}

/// A call event for integrations (webhooks): once per happening, not per device.
#[derive(Debug, Clone)]
pub enum Notice {
    /// An account's devices started ringing.
    Ringing {
        /// The call.
        call: Box<Call>,
        /// Who is rung.
        account: AccountId,
    },
    /// A member answered.
    Answered {
        /// The call.
        call: Box<Call>,
        /// Who.
        account: AccountId,
        /// On which device.
        device: DeviceId,
    },
    /// The call ended for everyone.
    Ended {
        /// The call.
        call: Box<Call>,
    },
    /// A member did not answer in time.
    Missed {
        /// The call.
        call: Box<Call>,
        /// Who.
        account: AccountId,
    },
}

/// Why a call operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No such call for this account (404).
    #[error("no such call")]
    NotFound,
    /// Not possible in the call's current state (409).
    #[error("{0}")]
    Conflict(&'static str),
    /// Not allowed for this account or device (403).
    #[error("{0}")]
    Forbidden(&'static str),
    /// Bad input (400).
    #[error("{0}")]
    Invalid(&'static str),
}

/// Every call.
#[derive(Debug)]
pub struct Calls {
    calls: BTreeMap<CallId, Call>,
    next_id: i64,
    ring_timeout_ms: i64,
    join_timeout_ms: i64,
    max_members: usize,
    out: VecDeque<Output>,
    /// Calls changed since their last [`Output::Journal`].
    dirty: BTreeSet<CallId>,
}

impl Calls {
    /// No calls; ids start at `first_id`; invitees ring for `ring_timeout`;
    /// a member in a call joins its room within `join_timeout`; at most
    /// `max_members` accounts per call.
    pub fn new(
        first_id: CallId,
        ring_timeout: Duration,
        join_timeout: Duration,
        max_members: usize,
    ) -> Self {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Calls {
            calls: BTreeMap::new(),
            next_id: first_id.0.max(1),
            ring_timeout_ms: ms(ring_timeout),
            join_timeout_ms: ms(join_timeout),
            max_members: max_members.max(2),
            out: VecDeque::new(),
            dirty: BTreeSet::new(),
        }
    }

    /// Takes over calls another node kept ([`Output::Journal`]) and lost
    /// (it was killed, or lost its lease): each goes on as it was, except
    /// that members in the call have no room connection known here. Those
    /// of an answered call must be in its room (the nodes announce their
    /// sessions again: [`Calls::handle_room_joined`]) or join it within the
    /// join timeout from `now`, else they leave as if they never joined.
    /// Ringing goes on to its deadline. The chat so far is lost. Journals
    /// without [`Kept`] (written before) restore with defaults.
    pub fn restore(&mut self, now: i64, open: Vec<OpenCall>) {
        let join_by = now.saturating_add(self.join_timeout_ms);
        for OpenCall { mut call, kept, .. } in open {
            let kept = kept.unwrap_or_default();
            call.cancelled = kept.cancelled;
            call.next_seq = kept.next_seq.max(1);
            let answered = call.answered_at.is_some();
            for (i, m) in call.members.iter_mut().enumerate() {
                let k = kept.members.get(i).cloned().unwrap_or_default();
                m.ring_deadline = match m.state {
                    MemberState::Ringing => Some(
                        k.ring_deadline
                            .unwrap_or(m.invited_at.saturating_add(self.ring_timeout_ms)),
                    ),
                    _ => None,
                };
                m.client = k.client;
                m.answered_device = k.answered_device.or(m.device_id);
                m.moves = k.moves;
                m.connection = None;
                m.previous = None;
                m.join_deadline = (m.state == MemberState::Joined && answered)
                    .then(|| k.join_deadline.unwrap_or(join_by).max(join_by));
            }
            self.next_id = self.next_id.max(call.id.0 + 1);
            let id = call.id;
            self.calls.insert(id, call);
            self.touch(id);
        }
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        if let Some(o) = self.out.pop_front() {
            return Some(o);
        }
        // Journal once per change, after what the change output (a crash
        // between a record and the journal then repeats, never loses, it).
        let id = self.dirty.pop_first()?;
        let open = self
            .calls
            .get(&id)
            .filter(|c| c.state != CallState::Ended)
            .map(|c| {
                Box::new(OpenCall {
                    call: c.clone(),
                    records: open_records(c),
                    kept: Some(Kept::of(c)),
                })
            });
        Some(Output::Journal(id, open))
    }

    /// Marks call `id` for journaling.
    fn touch(&mut self, id: CallId) {
        self.dirty.insert(id);
    }

    /// When [`Calls::handle_timeout`] is next due (ms since the epoch).
    pub fn poll_timeout(&self) -> Option<i64> {
        let ring = self
            .calls
            .values()
            .flat_map(|c| c.members.iter())
            .flat_map(|m| [m.ring_deadline, m.join_deadline])
            .flatten()
            .min();
        let prune = self
            .calls
            .values()
            .filter_map(|c| c.ended_at)
            .min()
            .map(|e| e + KEEP_ENDED_MS);
        match (ring, prune) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `account`'s view of a call it is (or was) a member of.
    pub fn call(&self, id: CallId, account: AccountId) -> Option<&Call> {
        self.calls.get(&id).filter(|c| c.member(account).is_some())
    }

    /// The calls `account` is ringing for or in.
    pub fn active_for(&self, account: AccountId) -> Vec<&Call> {
        self.calls
            .values()
            .filter(|c| c.state != CallState::Ended)
            .filter(|c| {
                c.member(account)
                    .is_some_and(|m| matches!(m.state, MemberState::Ringing | MemberState::Joined))
            })
            .collect()
    }

    /// Whether `account` is in a call now (answered or placed, not ended).
    pub fn in_call(&self, account: AccountId) -> bool {
        self.calls.values().any(|c| {
            c.state != CallState::Ended
                && c.member(account)
                    .is_some_and(|m| m.state == MemberState::Joined)
        })
    }

    fn push(&mut self, to: AccountId, event: Event) {
        self.out.push_back(Output::Push(to, Box::new(event)));
    }

    fn push_all(&mut self, to: &[AccountId], f: impl Fn() -> Event) {
        for a in to {
            self.push(*a, f());
        }
    }

    fn live(&mut self, id: CallId, account: AccountId) -> Result<&mut Call, CallError> {
        let call = self
            .calls
            .get_mut(&id)
            .filter(|c| c.member(account).is_some())
            .ok_or(CallError::NotFound)?;
        if call.state == CallState::Ended {
            return Err(CallError::Conflict("the call has ended"));
        }
        Ok(call)
    }

    /// `account` hangs up. Before anyone answered, the caller hanging up cancels.
    pub fn handle_leave(
        &mut self,
        now: i64,
        id: CallId,
        account: AccountId,
    ) -> Result<Call, CallError> {
        self.prune(now);
        let call = self.live(id, account)?;
        let i = call.index(account).ok_or(CallError::NotFound)?;
        match call.members[i].state {
            MemberState::Joined => {}
            MemberState::Ringing => {
                return Err(CallError::Conflict("not answered; decline instead"));
            }
            _ => return Err(CallError::Conflict("not in the call")),
        }
        if call.caller == account && call.answered_at.is_none() {
            call.cancelled = true;
            self.end(now, id);
            return self.snapshot(id);
        }
        self.leave(now, id, i, true);
        self.settle(now, id);
        self.snapshot(id)
    }

    /// A chat message from `account` (in the call) on `device`.
    pub fn handle_message(
        &mut self,
        now: i64,
        id: CallId,
        account: AccountId,
        device: DeviceId,
        text: String,
    ) -> Result<ChatMessage, CallError> {
        let call = self.live(id, account)?;
        let Some(m) = call
            .member(account)
            .filter(|m| m.state == MemberState::Joined)
        else {
            return Err(CallError::Conflict("only people in the call can chat"));
        };
        let message = ChatMessage {
            call_id: id,
            seq: call.next_seq,
            from: m.person.clone(),
            device_id: device,
            text,
            sent_at: now,
        };
        call.next_seq += 1;
        call.messages.push_back(message.clone());
        if call.messages.len() > KEEP_MESSAGES {
            call.messages.pop_front();
        }
        let to: Vec<AccountId> = call
            .members
            .iter()
            .filter(|m| m.state == MemberState::Joined)
            .map(|m| m.person.account_id)
            .collect();
        self.push_all(&to, || Event::CallMessage {
            message: message.clone(),
        });
        Ok(message)
    }

    /// Ends ringing that ran out of time (missed) and the part of members
    /// who never joined the room, and forgets old calls.
    pub fn handle_timeout(&mut self, now: i64) {
        let due = |deadline: fn(&Member) -> Option<i64>| -> Vec<(CallId, AccountId)> {
            self.calls
                .values()
                .flat_map(|c| {
                    c.members
                        .iter()
                        .filter(move |m| deadline(m).is_some_and(|d| d <= now))
                        .map(|m| (c.id, m.person.account_id))
                })
                .collect()
        };
        let missed = due(|m| m.ring_deadline);
        let absent = due(|m| m.join_deadline);
        for (id, account) in missed {
            let Some(i) = self.calls.get(&id).and_then(|c| c.index(account)) else {
                continue;
            };
            self.finish(now, id, i, Outcome::Missed, true);
            self.changed(id, &[]);
            self.settle(now, id);
        }
        for (id, account) in absent {
            // Still due: an earlier one of these may have ended the call.
            let Some(i) = self.calls.get(&id).and_then(|c| {
                let i = c.index(account)?;
                let m = &c.members[i];
                (m.state == MemberState::Joined && m.join_deadline.is_some_and(|d| d <= now))
                    .then_some(i)
            }) else {
                continue;
            };
            tracing::info!(call = %id, account = %account, "left the call: never joined its room");
            self.leave(now, id, i, false);
            self.settle(now, id);
        }
        self.prune(now);
    }

    fn snapshot(&self, id: CallId) -> Result<Call, CallError> {
        self.calls.get(&id).cloned().ok_or(CallError::NotFound)
    }

    /// Pushes `call_updated` to everyone involved (and `extra`).
    fn changed(&mut self, id: CallId, extra: &[AccountId]) {
        self.touch(id);
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let snapshot = call.clone();
        let mut to = call.involved();
        for a in extra {
            if !to.contains(a) {
                to.push(*a);
            }
        }
        self.push_all(&to, || Event::CallUpdated {
            call: snapshot.clone(),
        });
    }

    /// Forgets calls that ended long ago.
    fn prune(&mut self, now: i64) {
        self.calls
            .retain(|_, c| c.ended_at.is_none_or(|e| e + KEEP_ENDED_MS > now));
    }
}
