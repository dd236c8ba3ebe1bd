//! The call room: who may join it, and members' room sessions starting and
//! ending (a member whose session ends without a handover leaves).

use super::*;

impl Calls {
    /// Who may join `room` (a call room): a member in the call, on the device
    /// it is in the call on; or with `take_over` naming its participant, on
    /// any of its devices. Returns the connection to hand over from.
    pub fn authorize_join(
        &self,
        room: &str,
        account: AccountId,
        device: DeviceId,
        take_over: Option<ConnectionId>,
    ) -> Result<Option<ConnectionId>, CallError> {
        let Some(call) = self
            .calls
            .values()
            .find(|c| c.room == room && c.state != CallState::Ended)
        else {
            return Err(CallError::Forbidden("no such call going on"));
        };
        let Some(m) = call
            .member(account)
            .filter(|m| m.state == MemberState::Joined)
        else {
            return Err(CallError::Forbidden("you are not in this call"));
        };
        match take_over {
            None if m.device_id == Some(device) => Ok(None),
            None => Err(CallError::Forbidden(
                "the call is on another of your devices: join with take_over",
            )),
            // The client names its participant or its connection, both `PA<n>`.
            Some(c) if m.participant_id.is_some_and(|p| p.0 == c.0) || m.connection == Some(c) => {
                m.connection.map(Some).ok_or(CallError::Conflict(
                    "nothing to take over yet: your call has not joined the room",
                ))
            }
            Some(_) => Err(CallError::Forbidden(
                "take_over must name your own participant in the call",
            )),
        }
    }

    /// A room connection of `account`'s `device` joined `room` as `public`
    /// (its participant id) on `connection`.
    pub fn handle_room_joined(
        &mut self,
        room: &str,
        account: AccountId,
        device: DeviceId,
        connection: ConnectionId,
        public: ParticipantId,
    ) {
        let Some(call) = self
            .calls
            .values_mut()
            .find(|c| c.room == room && c.state != CallState::Ended)
        else {
            return;
        };
        let Some(i) = call.index(account) else {
            return;
        };
        let m = &mut call.members[i];
        if m.state != MemberState::Joined {
            return;
        }
        if m.connection == Some(connection) {
            // Announced again (a cluster's new owner of the calls, or its
            // node back on Redis): nothing changed.
            m.join_deadline = None;
            return;
        }
        if m.device_id != Some(device) {
            m.moves.push(device);
        }
        m.previous = match (m.connection, m.device_id) {
            // A new participant has its connection's number; a handover's does not.
            (Some(c), Some(d)) if public.0 != connection.0 => Some((c, d)),
            _ => None,
        };
        m.device_id = Some(device);
        m.connection = Some(connection);
        m.participant_id = Some(public);
        m.join_deadline = None;
        let id = call.id;
        self.changed(id, &[]);
    }

    /// A room connection ended: if it was a member's, the member left.
    pub fn handle_room_left(&mut self, now: i64, connection: ConnectionId) {
        self.room_left(now, None, connection);
    }

    /// `account`'s room connection of `room` ended. In a cluster a
    /// connection id is unique on its node only, and a call's room can
    /// move to another node (its node was killed): the room and the
    /// account tell apart connections that share a number.
    pub fn handle_room_left_in(
        &mut self,
        now: i64,
        room: &str,
        account: AccountId,
        connection: ConnectionId,
    ) {
        self.room_left(now, Some((room, account)), connection);
    }

    /// The node serving `room` is gone with `connection` (killed: its
    /// session never ended). Its member is not taken to have left: they
    /// rejoin the room (opened again elsewhere) within the join timeout,
    /// or leave then.
    pub fn handle_room_lost(
        &mut self,
        now: i64,
        room: &str,
        account: AccountId,
        connection: ConnectionId,
    ) {
        let join_by = now.saturating_add(self.join_timeout_ms);
        let Some(call) = self
            .calls
            .values_mut()
            .find(|c| c.room == room && c.state != CallState::Ended)
        else {
            return;
        };
        let mut hit = false;
        for m in call
            .members
            .iter_mut()
            .filter(|m| m.person.account_id == account)
        {
            if m.previous.map(|p| p.0) == Some(connection) {
                m.previous = None;
            }
            if m.connection == Some(connection) && m.state == MemberState::Joined {
                m.connection = None;
                m.previous = None;
                m.join_deadline = Some(join_by);
                hit = true;
            }
        }
        if hit {
            let id = call.id;
            self.changed(id, &[]);
        }
    }

    fn room_left(&mut self, now: i64, of: Option<(&str, AccountId)>, connection: ConnectionId) {
        let mut hit = None;
        for call in self.calls.values_mut() {
            if call.state == CallState::Ended || of.is_some_and(|(r, _)| r != call.room) {
                continue;
            }
            for (i, m) in call.members.iter_mut().enumerate() {
                if of.is_some_and(|(_, a)| a != m.person.account_id) {
                    continue;
                }
                if m.previous.map(|p| p.0) == Some(connection) {
                    // The old connection of a handover: the call goes on.
                    m.previous = None;
                    return;
                }
                if m.connection == Some(connection) && m.state == MemberState::Joined {
                    if let Some((prev, dev)) = m.previous.take() {
                        // A handover that failed: the old device keeps the call.
                        m.connection = Some(prev);
                        m.device_id = Some(dev);
                        m.moves.pop();
                        hit = Some((call.id, None));
                    } else {
                        hit = Some((call.id, Some(i)));
                    }
                    break;
                }
            }
            if hit.is_some() {
                break;
            }
        }
        match hit {
            Some((id, None)) => self.changed(id, &[]),
            Some((id, Some(i))) => {
                let (caller, answered) = self
                    .calls
                    .get(&id)
                    .map(|c| {
                        (
                            c.members[i].person.account_id == c.caller,
                            c.answered_at.is_some(),
                        )
                    })
                    .unwrap_or((false, true));
                if caller && !answered {
                    if let Some(c) = self.calls.get_mut(&id) {
                        c.cancelled = true;
                    }
                    self.end(now, id);
                } else {
                    self.leave(now, id, i, false);
                    self.settle(now, id);
                }
            }
            None => {}
        }
    }
}
