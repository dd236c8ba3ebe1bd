//! Leaving and ending: a member's part ends (with its history entry), a
//! call settles or ends, the server shuts down.

use super::*;

impl Calls {
    /// A member in the call leaves it.
    pub(super) fn leave(&mut self, now: i64, id: CallId, i: usize, kick: bool) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let outcome = if call.members[i].person.account_id == call.caller {
            caller_outcome(call)
        } else {
            Outcome::Answered
        };
        let connection = call.members[i].connection;
        if kick && let Some(c) = connection {
            self.out.push_back(Output::Kick(call.room.clone(), c));
        }
        self.finish(now, id, i, outcome, true);
        self.changed(id, &[]);
    }

    /// Ends member `i`'s part: state, history record, and (if `tell`) a
    /// `call_ended` to its devices.
    pub(super) fn finish(&mut self, now: i64, id: CallId, i: usize, outcome: Outcome, tell: bool) {
        self.touch(id);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        let m = &mut call.members[i];
        m.state = ended_state(outcome, m.state);
        m.ring_deadline = None;
        m.join_deadline = None;
        m.connection = None;
        m.previous = None;
        let account = m.person.account_id;
        let record = record(call, i, outcome, now);
        let snapshot = call.clone();
        // The callee who did not answer (the caller's record of an
        // unanswered call says missed too, but nobody missed a call there).
        if outcome == Outcome::Missed && account != call.caller {
            self.out.push_back(Output::Notice(Notice::Missed {
                call: Box::new(snapshot.clone()),
                account,
            }));
        }
        if tell {
            self.push(
                account,
                Event::CallEnded {
                    call: snapshot,
                    outcome,
                },
            );
        }
        self.out.push_back(Output::Record(record));
    }

    /// Ends the call if nobody is in it, or at most one person with nobody ringing.
    pub(super) fn settle(&mut self, now: i64, id: CallId) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        if call.state == CallState::Ended {
            return;
        }
        let joined = call.count(MemberState::Joined);
        let ringing = call.count(MemberState::Ringing);
        if joined == 0 || (ringing == 0 && joined <= 1) {
            self.end(now, id);
        }
    }

    /// Ends the call for everyone still in it or ringing.
    pub(super) fn end(&mut self, now: i64, id: CallId) {
        self.touch(id);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.state = CallState::Ended;
        call.ended_at = Some(now);
        let caller_first: Vec<usize> = (0..call.members.len()).collect();
        for i in caller_first {
            let Some(call) = self.calls.get(&id) else {
                return;
            };
            let m = &call.members[i];
            let Some(outcome) = ending_outcome(call, m) else {
                continue;
            };
            if let Some(c) = m.connection {
                self.out.push_back(Output::Kick(call.room.clone(), c));
            }
            self.finish(now, id, i, outcome, true);
        }
        if let Some(call) = self.calls.get(&id) {
            self.out.push_back(Output::Notice(Notice::Ended {
                call: Box::new(call.clone()),
            }));
        }
    }

    /// The server stops: every call still going on ends (and leaves its history).
    pub fn handle_shutdown(&mut self, now: i64) {
        let live: Vec<CallId> = self
            .calls
            .values()
            .filter(|c| c.state != CallState::Ended)
            .map(|c| c.id)
            .collect();
        for id in live {
            self.end(now, id);
        }
    }
}

/// Member `i`'s history entry, its part ending `now` with `outcome`.
fn record(call: &Call, i: usize, outcome: Outcome, now: i64) -> Record {
    let m = &call.members[i];
    let account = m.person.account_id;
    Record {
        account_id: account,
        call_id: call.id,
        direction: if account == call.caller {
            Direction::Outgoing
        } else {
            Direction::Incoming
        },
        video: call.video,
        participants: call
            .members
            .iter()
            .filter(|o| o.person.account_id != account)
            .map(|o| o.person.clone())
            .collect(),
        started_at: if account == call.caller {
            call.created_at
        } else {
            m.invited_at
        },
        answered_at: m.answered_at,
        ended_at: now,
        outcome,
        device_id: m.answered_device,
        handed_over_to: m.moves.clone(),
    }
}

/// Where a member in `state` stands once their part ended with `outcome`.
fn ended_state(outcome: Outcome, state: MemberState) -> MemberState {
    match outcome {
        Outcome::Answered => MemberState::Left,
        Outcome::Missed => MemberState::Missed,
        Outcome::Declined => MemberState::Declined,
        Outcome::Busy => MemberState::Busy,
        Outcome::Filtered => MemberState::Filtered,
        Outcome::Cancelled | Outcome::Unavailable if state == MemberState::Joined => {
            MemberState::Left
        }
        Outcome::Cancelled | Outcome::Unavailable => MemberState::Cancelled,
    }
}

/// `call` (as kept in an [`OpenCall`]) ended by a crash at `at`: as a
/// shutdown then would have left it.
pub fn interrupted(mut call: Call, at: i64) -> Call {
    call.state = CallState::Ended;
    call.ended_at = Some(at);
    for i in 0..call.members.len() {
        if let Some(outcome) = ending_outcome(&call, &call.members[i]) {
            call.members[i].state = ended_state(outcome, call.members[i].state);
        }
    }
    call
}

/// How the call ends for `m` if it ends now (`None`: their part is over).
fn ending_outcome(call: &Call, m: &Member) -> Option<Outcome> {
    match m.state {
        MemberState::Ringing => Some(Outcome::Cancelled),
        MemberState::Joined if m.person.account_id == call.caller => Some(caller_outcome(call)),
        MemberState::Joined => Some(Outcome::Answered),
        _ => None,
    }
}

/// The entries of everyone still in (or rung for) a call going on, as if it
/// ended at the last moment the call itself records.
pub(super) fn open_records(call: &Call) -> Vec<Record> {
    let last = call
        .members
        .iter()
        .flat_map(|m| [Some(m.invited_at), m.answered_at])
        .flatten()
        .chain([call.created_at])
        .max()
        .unwrap_or(call.created_at);
    (0..call.members.len())
        .filter_map(|i| {
            let outcome = ending_outcome(call, &call.members[i])?;
            Some(record(call, i, outcome, last))
        })
        .collect()
}

/// How the call went for its caller.
fn caller_outcome(call: &Call) -> Outcome {
    if call.answered_at.is_some() {
        return Outcome::Answered;
    }
    if call.cancelled {
        return Outcome::Cancelled;
    }
    let others: Vec<MemberState> = call
        .members
        .iter()
        .filter(|m| m.person.account_id != call.caller)
        .map(|m| m.state)
        .collect();
    for (state, outcome) in [
        (MemberState::Missed, Outcome::Missed),
        (MemberState::Declined, Outcome::Declined),
        (MemberState::Busy, Outcome::Busy),
        (MemberState::Filtered, Outcome::Unavailable),
    ] {
        if others.contains(&state) {
            return outcome;
        }
    }
    Outcome::Cancelled
}
