//! Ringing: placing a call, adding people, accepting, declining and
//! cancelling.

use super::*;

impl Calls {
    /// Places a call from `caller` (on `device`) to `invitees`, audio and
    /// video or audio only. Returns the call as the caller sees it.
    pub fn handle_invite(
        &mut self,
        now: i64,
        caller: Person,
        device: DeviceId,
        invitees: Vec<Invitee>,
        video: bool,
    ) -> Result<Call, CallError> {
        self.prune(now);
        if invitees.is_empty() {
            return Err(CallError::Invalid("invite at least one account"));
        }
        if invitees
            .iter()
            .any(|i| i.person.account_id == caller.account_id)
        {
            return Err(CallError::Invalid("you cannot call yourself"));
        }
        if invitees.len() + 1 > self.max_members {
            return Err(CallError::Invalid("too many people for one call"));
        }
        if self.in_call(caller.account_id) {
            return Err(CallError::Conflict(
                "you are already in a call; leave it first",
            ));
        }
        let id = CallId(self.next_id);
        self.next_id += 1;
        let me = caller.account_id;
        let call = Call {
            id,
            room: format!("{ROOM_PREFIX}{id}"),
            video,
            caller: me,
            state: CallState::Ringing,
            created_at: now,
            answered_at: None,
            ended_at: None,
            members: vec![Member {
                person: caller,
                state: MemberState::Joined,
                invited_by: me,
                invited_at: now,
                answered_at: None,
                device_id: Some(device),
                participant_id: None,
                ring_deadline: None,
                join_deadline: None,
                client: None,
                answered_device: Some(device),
                connection: None,
                previous: None,
                moves: Vec::new(),
            }],
            cancelled: false,
            messages: VecDeque::new(),
            next_seq: 1,
        };
        self.calls.insert(id, call);
        self.touch(id);
        self.add_members(now, id, me, invitees);
        if let Some(c) = self.calls.get(&id) {
            let c = c.clone();
            self.push(me, Event::CallOutgoing { call: c });
        }
        self.settle(now, id);
        self.calls.get(&id).cloned().ok_or(CallError::NotFound)
    }

    /// Adds `invitees` to call `id` on behalf of `by` (who is in it).
    pub fn handle_add(
        &mut self,
        now: i64,
        id: CallId,
        by: AccountId,
        invitees: Vec<Invitee>,
    ) -> Result<Call, CallError> {
        self.prune(now);
        let max = self.max_members;
        let call = self.live(id, by)?;
        if call.member(by).map(|m| m.state) != Some(MemberState::Joined) {
            return Err(CallError::Conflict(
                "only people in the call can add others",
            ));
        }
        if invitees.is_empty() {
            return Err(CallError::Invalid("invite at least one account"));
        }
        if invitees.iter().any(|i| i.person.account_id == by) {
            return Err(CallError::Invalid("you cannot call yourself"));
        }
        if invitees.iter().any(|i| {
            call.member(i.person.account_id)
                .is_some_and(|m| matches!(m.state, MemberState::Ringing | MemberState::Joined))
        }) {
            return Err(CallError::Conflict("already in the call or being rung"));
        }
        let new = invitees
            .iter()
            .filter(|i| call.member(i.person.account_id).is_none())
            .count();
        if call.members.len() + new > max {
            return Err(CallError::Invalid("too many people for one call"));
        }
        self.add_members(now, id, by, invitees);
        self.changed(id, &[]);
        self.settle(now, id);
        self.calls.get(&id).cloned().ok_or(CallError::NotFound)
    }

    pub(super) fn add_members(
        &mut self,
        now: i64,
        id: CallId,
        by: AccountId,
        invitees: Vec<Invitee>,
    ) {
        let deadline = now.saturating_add(self.ring_timeout_ms);
        let mut seen = Vec::new();
        for inv in invitees {
            let who = inv.person.account_id;
            if seen.contains(&who) {
                continue;
            }
            seen.push(who);
            let busy = self.in_call(who);
            let Some(call) = self.calls.get_mut(&id) else {
                return;
            };
            let state = if inv.filtered {
                MemberState::Filtered
            } else if busy {
                MemberState::Busy
            } else {
                MemberState::Ringing
            };
            let member = Member {
                person: inv.person,
                state,
                invited_by: by,
                invited_at: now,
                answered_at: None,
                device_id: None,
                participant_id: None,
                ring_deadline: (state == MemberState::Ringing).then_some(deadline),
                join_deadline: None,
                client: None,
                answered_device: None,
                connection: None,
                previous: None,
                moves: Vec::new(),
            };
            let i = match call.index(who) {
                Some(i) => {
                    call.members[i] = member;
                    i
                }
                None => {
                    call.members.push(member);
                    call.members.len() - 1
                }
            };
            match state {
                MemberState::Ringing => {
                    let caller = call
                        .member(by)
                        .map(|m| m.person.clone())
                        .unwrap_or_else(|| call.members[i].person.clone());
                    let snapshot = call.clone();
                    self.push(
                        who,
                        Event::CallRinging {
                            call: snapshot.clone(),
                            caller,
                            waiting: false,
                        },
                    );
                    self.out.push_back(Output::Notice(Notice::Ringing {
                        call: Box::new(snapshot),
                        account: who,
                    }));
                }
                MemberState::Busy => self.finish(now, id, i, Outcome::Busy, true),
                _ => self.finish(now, id, i, Outcome::Filtered, false),
            }
        }
    }

    /// `account` accepts on `device` (`client` tells apart several clients,
    /// e.g. browser tabs, of one device). The first accept wins.
    pub fn handle_accept(
        &mut self,
        now: i64,
        id: CallId,
        account: AccountId,
        device: DeviceId,
        client: Option<String>,
    ) -> Result<Call, CallError> {
        self.prune(now);
        let elsewhere = self.calls.iter().any(|(cid, c)| {
            *cid != id
                && c.state != CallState::Ended
                && c.member(account)
                    .is_some_and(|m| m.state == MemberState::Joined)
        });
        let join_by = now.saturating_add(self.join_timeout_ms);
        let call = self.live(id, account)?;
        let i = call.index(account).ok_or(CallError::NotFound)?;
        let m = &mut call.members[i];
        match m.state {
            _ if m.invited_by == account => {
                return Err(CallError::Conflict("you placed this call"));
            }
            MemberState::Ringing => {}
            MemberState::Joined if m.answered_device == Some(device) && m.client == client => {
                // The same client asking again (a retry): the same answer.
                return Ok(call.clone());
            }
            MemberState::Joined => return Err(CallError::Conflict("answered on another device")),
            _ => return Err(CallError::Conflict("the call is no longer ringing")),
        }
        if elsewhere {
            return Err(CallError::Conflict(
                "you are already in a call; leave it first",
            ));
        }
        m.state = MemberState::Joined;
        m.answered_at = Some(now);
        m.device_id = Some(device);
        m.answered_device = Some(device);
        m.client = client.clone();
        m.ring_deadline = None;
        m.join_deadline = Some(join_by);
        if call.answered_at.is_none() {
            call.answered_at = Some(now);
            call.state = CallState::Active;
            let caller = call.caller;
            if let Some(c) = call
                .members
                .iter_mut()
                .find(|m| m.person.account_id == caller)
            {
                c.answered_at = Some(now);
                if c.connection.is_none() {
                    c.join_deadline = Some(join_by);
                }
            }
        }
        let snapshot = call.clone();
        let to = call.involved();
        self.out.push_back(Output::Notice(Notice::Answered {
            call: Box::new(snapshot.clone()),
            account,
            device,
        }));
        self.push_all(&to, || Event::CallAnswered {
            call: snapshot.clone(),
            account_id: account,
            device_id: device,
            client_id: client.clone(),
        });
        self.push(
            account,
            Event::CallRingingStopped {
                call: snapshot.clone(),
                reason: "answered_elsewhere",
                device_id: device,
                client_id: client,
            },
        );
        self.touch(id);
        Ok(snapshot)
    }

    /// `account` declines (from any of its devices).
    pub fn handle_decline(
        &mut self,
        now: i64,
        id: CallId,
        account: AccountId,
    ) -> Result<Call, CallError> {
        self.prune(now);
        let call = self.live(id, account)?;
        let i = call.index(account).ok_or(CallError::NotFound)?;
        match call.members[i].state {
            MemberState::Ringing => {}
            MemberState::Joined => {
                return Err(CallError::Conflict("already answered; leave instead"));
            }
            _ => return Err(CallError::Conflict("the call is no longer ringing")),
        }
        self.finish(now, id, i, Outcome::Declined, true);
        if let Some(call) = self.calls.get(&id) {
            let snapshot = call.clone();
            let to = call.involved();
            self.push_all(&to, || Event::CallDeclined {
                call: snapshot.clone(),
                account_id: account,
            });
        }
        self.settle(now, id);
        self.snapshot(id)
    }

    /// The caller hangs up before anyone answered: the call ends for all.
    pub fn handle_cancel(
        &mut self,
        now: i64,
        id: CallId,
        account: AccountId,
    ) -> Result<Call, CallError> {
        self.prune(now);
        let call = self.live(id, account)?;
        if call.caller != account {
            return Err(CallError::Forbidden("only the caller can cancel"));
        }
        if call.answered_at.is_some() {
            return Err(CallError::Conflict("already answered; leave instead"));
        }
        call.cancelled = true;
        self.end(now, id);
        self.snapshot(id)
    }
}
