//! The calls state machine on a virtual clock.

use super::*;

const RING: Duration = Duration::from_secs(30);
const JOIN: Duration = Duration::from_secs(20);
const T0: i64 = 1_000_000;

fn person(n: i64) -> Person {
    Person {
        account_id: AccountId(n),
        username: format!("user{n}"),
        display_name: format!("User {n}"),
    }
}

fn inv(n: i64) -> Invitee {
    Invitee {
        person: person(n),
        filtered: false,
    }
}

const A: AccountId = AccountId(1);
const B: AccountId = AccountId(2);
const C: AccountId = AccountId(3);
const DA: DeviceId = DeviceId(10);
const DB1: DeviceId = DeviceId(20);
const DB2: DeviceId = DeviceId(21);
const DC: DeviceId = DeviceId(30);

fn machine() -> Calls {
    Calls::new(CallId(1), RING, JOIN, 8)
}

/// A calls B, B answers on DB1, both are in the room (PA1, PA2); the
/// outputs so far drained.
fn answered_in_room(c: &mut Calls) -> CallId {
    let id = call_ab(c);
    c.handle_accept(T0, id, B, DB1, None).expect("accept");
    c.handle_room_joined("call-1", A, DA, ConnectionId(1), ParticipantId(1));
    c.handle_room_joined("call-1", B, DB1, ConnectionId(2), ParticipantId(2));
    drain(c);
    id
}

fn drain(c: &mut Calls) -> Vec<Output> {
    std::iter::from_fn(|| c.poll_output()).collect()
}

/// The pushes to `to`, as event type names.
fn pushes(out: &[Output], to: AccountId) -> Vec<&'static str> {
    out.iter()
        .filter_map(|o| match o {
            Output::Push(a, e) if *a == to => Some(kind(e)),
            _ => None,
        })
        .collect()
}

fn kind(e: &Event) -> &'static str {
    match e {
        Event::CallRinging { .. } => "call_ringing",
        Event::CallOutgoing { .. } => "call_outgoing",
        Event::CallAnswered { .. } => "call_answered",
        Event::CallRingingStopped { .. } => "call_ringing_stopped",
        Event::CallDeclined { .. } => "call_declined",
        Event::CallUpdated { .. } => "call_updated",
        Event::CallEnded { .. } => "call_ended",
        Event::CallMessage { .. } => "call_message",
    }
}

fn ended(out: &[Output], to: AccountId) -> Option<Outcome> {
    out.iter().find_map(|o| match o {
        Output::Push(a, e) if *a == to => match &**e {
            Event::CallEnded { outcome, .. } => Some(*outcome),
            _ => None,
        },
        _ => None,
    })
}

fn records(out: &[Output]) -> Vec<Record> {
    out.iter()
        .filter_map(|o| match o {
            Output::Record(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn record_of(out: &[Output], a: AccountId) -> Record {
    records(out)
        .into_iter()
        .find(|r| r.account_id == a)
        .unwrap_or_else(|| panic!("no record for {a}"))
}

fn kicks(out: &[Output]) -> Vec<ConnectionId> {
    out.iter()
        .filter_map(|o| match o {
            Output::Kick(_, p) => Some(*p),
            _ => None,
        })
        .collect()
}

/// A calls B (1:1, video); returns the call id.
fn call_ab(c: &mut Calls) -> CallId {
    let call = c
        .handle_invite(T0, person(1), DA, vec![inv(2)], true)
        .expect("invite");
    call.id
}

#[test]
fn invite_rings_the_callee_and_shows_outgoing_to_the_caller() {
    let mut c = machine();
    let call = c
        .handle_invite(T0, person(1), DA, vec![inv(2)], true)
        .expect("invite");
    assert_eq!(call.room, "call-1");
    assert_eq!(call.state, CallState::Ringing);
    let out = drain(&mut c);
    assert_eq!(pushes(&out, B), vec!["call_ringing"]);
    assert_eq!(pushes(&out, A), vec!["call_outgoing"]);
    let Output::Push(_, e) = &out[0] else {
        panic!("a push first")
    };
    let Event::CallRinging { caller, .. } = &**e else {
        panic!("ringing first: {e:?}")
    };
    assert_eq!(caller.display_name, "User 1");
    assert_eq!(c.poll_timeout(), Some(T0 + 30_000));
    assert!(c.in_call(A) && !c.in_call(B));
}

#[test]
fn first_accept_wins_and_the_other_devices_stop_ringing() {
    let mut c = machine();
    let id = call_ab(&mut c);
    drain(&mut c);
    let call = c
        .handle_accept(T0 + 1000, id, B, DB1, Some("tab1".into()))
        .expect("accept");
    assert_eq!(call.state, CallState::Active);
    let out = drain(&mut c);
    assert_eq!(
        pushes(&out, B),
        vec!["call_answered", "call_ringing_stopped"]
    );
    assert_eq!(pushes(&out, A), vec!["call_answered"]);
    // The second device (or tab) is too late.
    assert_eq!(
        c.handle_accept(T0 + 1001, id, B, DB2, None).map(|_| ()),
        Err(CallError::Conflict("answered on another device"))
    );
    assert_eq!(
        c.handle_accept(T0 + 1001, id, B, DB1, Some("tab2".into()))
            .map(|_| ()),
        Err(CallError::Conflict("answered on another device"))
    );
    // The same client again: the same answer.
    assert!(
        c.handle_accept(T0 + 1002, id, B, DB1, Some("tab1".into()))
            .is_ok()
    );
    // The room admits the answering device, and the caller's.
    assert_eq!(c.authorize_join("call-1", B, DB1, None), Ok(None));
    assert_eq!(c.authorize_join("call-1", A, DA, None), Ok(None));
    assert!(matches!(
        c.authorize_join("call-1", B, DB2, None),
        Err(CallError::Forbidden(_))
    ));
    assert!(matches!(
        c.authorize_join("call-1", C, DC, None),
        Err(CallError::Forbidden(_))
    ));
}

#[test]
fn two_accepts_at_once_exactly_one_wins() {
    let mut c = machine();
    let id = call_ab(&mut c);
    let first = c.handle_accept(T0, id, B, DB2, None);
    let second = c.handle_accept(T0, id, B, DB1, None);
    assert!(first.is_ok());
    assert!(second.is_err());
    let call = c.call(id, B).expect("call");
    assert_eq!(call.member(B).and_then(|m| m.device_id), Some(DB2));
}

#[test]
fn decline_ends_a_one_to_one_call_on_both_sides() {
    let mut c = machine();
    let id = call_ab(&mut c);
    drain(&mut c);
    c.handle_decline(T0 + 500, id, B).expect("decline");
    let out = drain(&mut c);
    assert_eq!(ended(&out, B), Some(Outcome::Declined));
    assert_eq!(ended(&out, A), Some(Outcome::Declined));
    assert!(pushes(&out, A).contains(&"call_declined"));
    assert_eq!(record_of(&out, B).outcome, Outcome::Declined);
    assert_eq!(record_of(&out, B).direction, Direction::Incoming);
    let ra = record_of(&out, A);
    assert_eq!(
        (ra.outcome, ra.direction),
        (Outcome::Declined, Direction::Outgoing)
    );
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Ended));
    // Too late for anything else.
    assert_eq!(
        c.handle_accept(T0 + 600, id, B, DB1, None).map(|_| ()),
        Err(CallError::Conflict("the call has ended"))
    );
    assert!(!c.in_call(A));
}

#[test]
fn cancel_stops_the_ringing_everywhere() {
    let mut c = machine();
    let id = call_ab(&mut c);
    drain(&mut c);
    assert!(matches!(
        c.handle_cancel(T0, id, B),
        Err(CallError::Forbidden(_))
    ));
    c.handle_cancel(T0 + 100, id, A).expect("cancel");
    let out = drain(&mut c);
    assert_eq!(ended(&out, A), Some(Outcome::Cancelled));
    assert_eq!(ended(&out, B), Some(Outcome::Cancelled));
    assert_eq!(record_of(&out, B).outcome, Outcome::Cancelled);
}

#[test]
fn cancel_racing_accept_ends_in_one_state() {
    // Accept first: the cancel is refused and the call goes on.
    let mut c = machine();
    let id = call_ab(&mut c);
    c.handle_accept(T0, id, B, DB1, None).expect("accept");
    assert_eq!(
        c.handle_cancel(T0, id, A).map(|_| ()),
        Err(CallError::Conflict("already answered; leave instead"))
    );
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Active));
    // Cancel first: the accept is refused and the call is over.
    let mut c = machine();
    let id = call_ab(&mut c);
    c.handle_cancel(T0, id, A).expect("cancel");
    assert_eq!(
        c.handle_accept(T0, id, B, DB1, None).map(|_| ()),
        Err(CallError::Conflict("the call has ended"))
    );
    assert_eq!(c.call(id, B).map(|c| c.state), Some(CallState::Ended));
}

#[test]
fn no_answer_in_time_is_missed() {
    let mut c = machine();
    let id = call_ab(&mut c);
    drain(&mut c);
    c.handle_timeout(T0 + 29_999);
    assert!(drain(&mut c).is_empty());
    c.handle_timeout(T0 + 30_000);
    let out = drain(&mut c);
    assert_eq!(ended(&out, B), Some(Outcome::Missed));
    assert_eq!(ended(&out, A), Some(Outcome::Missed));
    assert_eq!(record_of(&out, B).outcome, Outcome::Missed);
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Ended));
    // The ended call is forgotten after a while.
    assert!(c.poll_timeout().is_some());
    c.handle_timeout(T0 + 30_000 + KEEP_ENDED_MS);
    assert!(c.call(id, A).is_none());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn a_callee_in_another_call_is_busy() {
    let mut c = machine();
    let first = call_ab(&mut c);
    c.handle_accept(T0, first, B, DB1, None).expect("accept");
    drain(&mut c);
    let call = c
        .handle_invite(T0 + 10, person(3), DC, vec![inv(2)], false)
        .expect("invite");
    assert_eq!(call.state, CallState::Ended);
    let out = drain(&mut c);
    assert!(!pushes(&out, B).contains(&"call_ringing"));
    assert_eq!(ended(&out, B), Some(Outcome::Busy));
    assert_eq!(ended(&out, C), Some(Outcome::Busy));
    assert_eq!(record_of(&out, B).outcome, Outcome::Busy);
    assert_eq!(record_of(&out, C).outcome, Outcome::Busy);
    // A caller in a call cannot place another.
    assert!(matches!(
        c.handle_invite(T0, person(1), DA, vec![inv(3)], false),
        Err(CallError::Conflict(_))
    ));
}

#[test]
fn a_filtered_call_does_not_ring_and_the_caller_hears_unavailable() {
    let mut c = machine();
    let call = c
        .handle_invite(
            T0,
            person(1),
            DA,
            vec![Invitee {
                person: person(2),
                filtered: true,
            }],
            false,
        )
        .expect("invite");
    assert_eq!(call.state, CallState::Ended);
    let json = serde_json::to_value(&call).expect("json");
    assert_eq!(json["members"][1]["state"], "unavailable");
    let out = drain(&mut c);
    assert!(pushes(&out, B).is_empty(), "nothing reaches the callee");
    assert_eq!(ended(&out, A), Some(Outcome::Unavailable));
    assert_eq!(record_of(&out, B).outcome, Outcome::Filtered);
    assert_eq!(record_of(&out, A).outcome, Outcome::Unavailable);
}

#[test]
fn bad_invites_are_refused() {
    let mut c = machine();
    assert!(matches!(
        c.handle_invite(T0, person(1), DA, vec![], false),
        Err(CallError::Invalid(_))
    ));
    assert!(matches!(
        c.handle_invite(T0, person(1), DA, vec![inv(1)], false),
        Err(CallError::Invalid(_))
    ));
    let many: Vec<Invitee> = (2..=9).map(inv).collect();
    assert!(matches!(
        c.handle_invite(T0, person(1), DA, many, false),
        Err(CallError::Invalid(_))
    ));
    assert!(c.call(CallId(1), A).is_none());
    assert!(c.call(CallId(1), C).is_none());
}

#[test]
fn answered_call_hangup_records_duration_and_device() {
    let mut c = machine();
    let id = call_ab(&mut c);
    c.handle_accept(T0 + 2_000, id, B, DB2, None)
        .expect("accept");
    drain(&mut c);
    assert!(matches!(
        c.handle_leave(T0, id, C),
        Err(CallError::NotFound)
    ));
    c.handle_leave(T0 + 62_000, id, B).expect("leave");
    let out = drain(&mut c);
    let rb = record_of(&out, B);
    assert_eq!(rb.outcome, Outcome::Answered);
    assert_eq!(rb.device_id, Some(DB2));
    assert_eq!(rb.answered_at, Some(T0 + 2_000));
    assert_eq!(rb.ended_at, T0 + 62_000);
    let ra = record_of(&out, A);
    assert_eq!(ra.outcome, Outcome::Answered);
    assert_eq!(ra.device_id, Some(DA));
    assert_eq!(ra.participants, vec![person(2)]);
    assert_eq!(ended(&out, A), Some(Outcome::Answered));
}

#[test]
fn caller_hanging_up_before_an_answer_cancels() {
    let mut c = machine();
    let id = call_ab(&mut c);
    drain(&mut c);
    c.handle_leave(T0 + 5, id, A).expect("leave");
    let out = drain(&mut c);
    assert_eq!(ended(&out, B), Some(Outcome::Cancelled));
    assert_eq!(record_of(&out, A).outcome, Outcome::Cancelled);
}

#[test]
fn group_call_each_invitee_on_their_own_and_the_last_leaves() {
    let mut c = machine();
    let call = c
        .handle_invite(T0, person(1), DA, vec![inv(2), inv(3), inv(4)], true)
        .expect("invite");
    let id = call.id;
    let out = drain(&mut c);
    for who in [B, C, AccountId(4)] {
        assert_eq!(pushes(&out, who), vec!["call_ringing"]);
    }
    c.handle_decline(T0 + 1, id, AccountId(4)).expect("decline");
    c.handle_accept(T0 + 2, id, B, DB1, None).expect("b");
    c.handle_accept(T0 + 3, id, C, DC, None).expect("c");
    drain(&mut c);
    // A leaves: B and C go on.
    c.handle_leave(T0 + 10, id, A).expect("a leaves");
    let out = drain(&mut c);
    assert_eq!(ended(&out, A), Some(Outcome::Answered));
    assert_eq!(ended(&out, B), None);
    assert_eq!(c.call(id, B).map(|c| c.state), Some(CallState::Active));
    // B leaves: C is alone, the call ends.
    c.handle_leave(T0 + 20, id, B).expect("b leaves");
    let out = drain(&mut c);
    assert_eq!(ended(&out, C), Some(Outcome::Answered));
    assert_eq!(c.call(id, C).map(|c| c.state), Some(CallState::Ended));
}

#[test]
fn adding_a_third_person_to_a_running_call() {
    let mut c = machine();
    let id = call_ab(&mut c);
    c.handle_accept(T0, id, B, DB1, None).expect("accept");
    drain(&mut c);
    assert!(matches!(
        c.handle_add(T0, id, C, vec![inv(4)]),
        Err(CallError::NotFound)
    ));
    let call = c.handle_add(T0 + 5, id, B, vec![inv(3)]).expect("add");
    assert_eq!(call.room, "call-1");
    let out = drain(&mut c);
    assert_eq!(pushes(&out, C).first(), Some(&"call_ringing"));
    assert!(pushes(&out, A).contains(&"call_updated"));
    assert!(matches!(
        c.handle_add(T0 + 6, id, A, vec![inv(3)]),
        Err(CallError::Conflict(_))
    ));
    // B leaves while C still rings: A waits for C.
    c.handle_leave(T0 + 7, id, B).expect("leave");
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Active));
    c.handle_accept(T0 + 8, id, C, DC, None).expect("c accepts");
    assert_eq!(c.authorize_join("call-1", C, DC, None), Ok(None));
    // C misses nothing: the call is answered, A and C are in it.
    let call = c.call(id, A).expect("call");
    assert_eq!(call.count(MemberState::Joined), 2);
    // A re-adds B, who declines; the call goes on.
    c.handle_add(T0 + 9, id, A, vec![inv(2)]).expect("re-add");
    c.handle_decline(T0 + 10, id, B).expect("decline");
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Active));
}

#[test]
fn an_added_person_who_misses_does_not_end_the_call() {
    let mut c = machine();
    let id = answered_in_room(&mut c);
    c.handle_add(T0 + 1, id, A, vec![inv(3)]).expect("add");
    drain(&mut c);
    c.handle_timeout(T0 + 1 + 30_000);
    let out = drain(&mut c);
    assert_eq!(ended(&out, C), Some(Outcome::Missed));
    assert_eq!(ended(&out, A), None);
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Active));
}

#[test]
fn a_member_who_accepts_and_never_joins_the_room_leaves_the_call() {
    let mut c = machine();
    let id = call_ab(&mut c);
    c.handle_room_joined("call-1", A, DA, ConnectionId(1), ParticipantId(1));
    c.handle_accept(T0 + 5, id, B, DB1, None).expect("accept");
    drain(&mut c);
    let join_by = T0 + 5 + JOIN.as_millis() as i64;
    assert_eq!(c.poll_timeout(), Some(join_by));
    c.handle_timeout(join_by - 1);
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Active));
    // B's client never came: B leaves, and a 1:1 call with one side left ends.
    c.handle_timeout(join_by);
    let out = drain(&mut c);
    assert_eq!(ended(&out, B), Some(Outcome::Answered));
    assert_eq!(ended(&out, A), Some(Outcome::Answered));
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Ended));
    // Nor is B busy any longer.
    assert!(!c.in_call(B));
}

#[test]
fn a_caller_who_never_joins_the_room_leaves_once_answered() {
    let mut c = machine();
    let id = call_ab(&mut c);
    // Ringing does not start the caller's clock (the ring may outlast it).
    c.handle_timeout(T0 + JOIN.as_millis() as i64 + 1);
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Ringing));
    let answer = T0 + JOIN.as_millis() as i64 + 2;
    c.handle_accept(answer, id, B, DB1, None).expect("accept");
    c.handle_room_joined("call-1", B, DB1, ConnectionId(2), ParticipantId(2));
    drain(&mut c);
    c.handle_timeout(answer + JOIN.as_millis() as i64);
    let out = drain(&mut c);
    assert_eq!(ended(&out, A), Some(Outcome::Answered));
    assert_eq!(ended(&out, B), Some(Outcome::Answered));
    // B was in the room: told to leave it.
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Kick(_, p) if *p == ConnectionId(2)))
    );
}

#[test]
fn when_nobody_joins_the_room_each_part_ends_once() {
    let mut c = machine();
    let id = call_ab(&mut c);
    c.handle_accept(T0, id, B, DB1, None).expect("accept");
    drain(&mut c);
    // Both deadlines fall at once: the first to leave ends the call for the
    // other, who must not leave it a second time.
    c.handle_timeout(T0 + JOIN.as_millis() as i64);
    let out = drain(&mut c);
    for who in [A, B] {
        let records = out
            .iter()
            .filter(|o| matches!(o, Output::Record(r) if r.account_id == who))
            .count();
        assert_eq!(records, 1, "{who:?}: {out:?}");
        assert_eq!(
            pushes(&out, who)
                .iter()
                .filter(|k| **k == "call_ended")
                .count(),
            1
        );
    }
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Ended));
}

#[test]
fn members_in_the_room_have_no_join_deadline() {
    let mut c = machine();
    let id = answered_in_room(&mut c);
    assert_eq!(c.poll_timeout(), None);
    c.handle_timeout(T0 + 10 * JOIN.as_millis() as i64);
    assert!(drain(&mut c).is_empty());
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Active));
}

#[test]
fn handover_keeps_the_call_and_records_the_move() {
    let mut c = machine();
    let id = answered_in_room(&mut c);
    assert_eq!(
        c.call(id, A)
            .and_then(|c| c.member(B))
            .and_then(|m| m.participant_id),
        Some(ParticipantId(2))
    );
    // B's other device takes over participant PA2.
    assert_eq!(
        c.authorize_join("call-1", B, DB2, Some(ConnectionId(2))),
        Ok(Some(ConnectionId(2)))
    );
    assert!(matches!(
        c.authorize_join("call-1", B, DB2, Some(ConnectionId(1))),
        Err(CallError::Forbidden(_))
    ));
    c.handle_room_joined("call-1", B, DB2, ConnectionId(3), ParticipantId(2));
    let out = drain(&mut c);
    assert!(pushes(&out, B).contains(&"call_updated"));
    // The old connection drops out: nothing ends.
    c.handle_room_left(T0 + 10, ConnectionId(2));
    assert!(drain(&mut c).is_empty());
    let m = c.call(id, A).and_then(|c| c.member(B)).expect("b").clone();
    assert_eq!(m.device_id, Some(DB2));
    assert_eq!(m.participant_id, Some(ParticipantId(2)));
    // A second handover names the same participant, and reaches the new connection.
    assert_eq!(
        c.authorize_join("call-1", B, DB1, Some(ConnectionId(2))),
        Ok(Some(ConnectionId(3)))
    );
    // The new connection leaving is the member leaving.
    c.handle_room_left(T0 + 20, ConnectionId(3));
    let out = drain(&mut c);
    let rb = record_of(&out, B);
    assert_eq!(rb.device_id, Some(DB1));
    assert_eq!(rb.handed_over_to, vec![DB2]);
    assert_eq!(ended(&out, A), Some(Outcome::Answered));
    assert_eq!(kicks(&out), vec![ConnectionId(1)]);
}

#[test]
fn a_failed_handover_leaves_the_call_on_the_old_device() {
    let mut c = machine();
    let id = call_ab(&mut c);
    c.handle_accept(T0, id, B, DB1, None).expect("accept");
    c.handle_room_joined("call-1", B, DB1, ConnectionId(2), ParticipantId(2));
    c.handle_room_joined("call-1", B, DB2, ConnectionId(3), ParticipantId(2));
    c.handle_room_left(T0 + 1, ConnectionId(3));
    let m = c.call(id, A).and_then(|c| c.member(B)).expect("b").clone();
    assert_eq!(m.device_id, Some(DB1));
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Active));
}

#[test]
fn leaving_through_the_api_removes_the_room_connection() {
    let mut c = machine();
    let id = answered_in_room(&mut c);
    c.handle_leave(T0 + 5, id, B).expect("leave");
    let out = drain(&mut c);
    assert_eq!(kicks(&out), vec![ConnectionId(2), ConnectionId(1)]);
    // A's connection closing afterwards changes nothing.
    c.handle_room_left(T0 + 6, ConnectionId(1));
    assert!(drain(&mut c).is_empty());
}

#[test]
fn the_caller_closing_the_room_before_an_answer_cancels() {
    let mut c = machine();
    let id = call_ab(&mut c);
    c.handle_room_joined("call-1", A, DA, ConnectionId(1), ParticipantId(1));
    drain(&mut c);
    c.handle_room_left(T0 + 3, ConnectionId(1));
    let out = drain(&mut c);
    assert_eq!(ended(&out, B), Some(Outcome::Cancelled));
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Ended));
}

#[test]
fn chat_reaches_everyone_in_the_call_in_order() {
    let mut c = machine();
    let call = c
        .handle_invite(T0, person(1), DA, vec![inv(2), inv(3)], false)
        .expect("invite");
    let id = call.id;
    c.handle_accept(T0, id, B, DB1, None).expect("accept");
    drain(&mut c);
    assert!(matches!(
        c.handle_message(T0, id, C, DC, "hi".into()),
        Err(CallError::Conflict(_))
    ));
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        let m = c
            .handle_message(T0 + i as i64, id, A, DA, (*text).into())
            .expect("message");
        assert_eq!(m.seq, i as u64 + 1);
    }
    let out = drain(&mut c);
    let texts = |to: AccountId| -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Push(a, e) if *a == to => match &**e {
                    Event::CallMessage { message } => Some(message.text.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    };
    assert_eq!(texts(A), vec!["one", "two", "three"]);
    assert_eq!(texts(B), vec!["one", "two", "three"]);
    assert!(texts(C).is_empty(), "a ringing invitee gets no chat");
    assert_eq!(c.call(id, B).map(|c| c.messages().count()), Some(3));
}

#[test]
fn accepting_while_in_another_call_is_refused() {
    let mut c = machine();
    let first = call_ab(&mut c);
    // C calls A... A is in a call (placed it), so A is busy; instead C calls D,
    // and D, ringing, first joins another call.
    let second = c
        .handle_invite(T0, person(3), DC, vec![inv(4)], false)
        .expect("invite")
        .id;
    c.handle_add(T0, first, A, vec![inv(4)]).expect("add d");
    c.handle_accept(T0, first, AccountId(4), DeviceId(40), None)
        .expect("d joins the first");
    assert_eq!(
        c.handle_accept(T0, second, AccountId(4), DeviceId(40), None)
            .map(|_| ()),
        Err(CallError::Conflict(
            "you are already in a call; leave it first"
        ))
    );
    assert!(matches!(
        c.handle_accept(T0, first, A, DA, None),
        Err(CallError::Conflict("you placed this call"))
    ));
}

/// The records of the last journal output for call `id` in `out`
/// (`Some(None)`: it ended).
fn journal(out: &[Output], id: CallId) -> Option<Option<Vec<Record>>> {
    out.iter().rev().find_map(|o| match o {
        Output::Journal(j, open) if *j == id => Some(open.as_ref().map(|o| o.records.clone())),
        _ => None,
    })
}

#[test]
fn a_call_going_on_is_journaled_as_the_history_it_would_leave() {
    let mut c = machine();
    let id = c
        .handle_invite(T0, person(1), DA, vec![inv(2), inv(3)], false)
        .expect("invite")
        .id;
    let out = drain(&mut c);
    // One journal entry per change, after the change's other outputs.
    let journals = out
        .iter()
        .filter(|o| matches!(o, Output::Journal(..)))
        .count();
    assert_eq!(journals, 1);
    assert!(matches!(out.last(), Some(Output::Journal(..))));
    // Ringing: cancelled for all, as a shutdown now would record it.
    let open = journal(&out, id).flatten().expect("open");
    let outcomes: Vec<(AccountId, Outcome)> =
        open.iter().map(|r| (r.account_id, r.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![
            (A, Outcome::Cancelled),
            (B, Outcome::Cancelled),
            (C, Outcome::Cancelled)
        ]
    );

    // B answers on DB1 and moves to DB2; C declines (its entry is stored
    // now and leaves the journal).
    c.handle_accept(T0 + 2_000, id, B, DB1, None)
        .expect("accept");
    c.handle_room_joined("call-1", B, DB1, ConnectionId(2), ParticipantId(2));
    c.handle_room_joined("call-1", B, DB2, ConnectionId(5), ParticipantId(2));
    c.handle_decline(T0 + 3_000, id, C).expect("decline");
    let out = drain(&mut c);
    assert_eq!(record_of(&out, C).outcome, Outcome::Declined);
    let open = journal(&out, id).flatten().expect("open");
    assert_eq!(open.len(), 2);
    let b = open.iter().find(|r| r.account_id == B).expect("B");
    assert_eq!(b.outcome, Outcome::Answered);
    assert_eq!(b.answered_at, Some(T0 + 2_000));
    assert_eq!(b.device_id, Some(DB1));
    assert_eq!(b.handed_over_to, vec![DB2]);
    let a = open.iter().find(|r| r.account_id == A).expect("A");
    assert_eq!(a.outcome, Outcome::Answered);
    // Ended at the last moment the call knows of (the answer), at least.
    assert!(open.iter().all(|r| r.ended_at == T0 + 2_000));
    // The call as kept reads back, and a crash ends it as a shutdown would.
    let kept = out
        .iter()
        .rev()
        .find_map(|o| match o {
            Output::Journal(_, Some(open)) => Some(open.clone()),
            _ => None,
        })
        .expect("kept");
    let json = serde_json::to_string(&kept).expect("json");
    let back: OpenCall = serde_json::from_str(&json).expect("read back");
    assert_eq!(back.records, open);
    let ended = interrupted(back.call, T0 + 5_000);
    assert_eq!(ended.state, CallState::Ended);
    assert_eq!(ended.ended_at, Some(T0 + 5_000));
    let states: Vec<MemberState> = ended.members.iter().map(|m| m.state).collect();
    assert_eq!(
        states,
        vec![MemberState::Left, MemberState::Left, MemberState::Declined]
    );
    assert_eq!(ended.members[1].participant_id, Some(ParticipantId(2)));

    // A chat message changes nothing a history entry holds: no journal.
    c.handle_message(T0 + 4_000, id, B, DB2, "hi".into())
        .expect("message");
    let out = drain(&mut c);
    assert_eq!(journal(&out, id), None);

    // The end: entries out, then the journal forgets the call.
    c.handle_leave(T0 + 9_000, id, A).expect("leave");
    let out = drain(&mut c);
    assert_eq!(records(&out).len(), 2);
    assert_eq!(journal(&out, id), Some(None));
    assert!(matches!(out.last(), Some(Output::Journal(_, None))));
    assert!(drain(&mut c).is_empty());
}

/// The journal of call `id` among `out`.
fn journaled(out: &[Output], id: CallId) -> Option<OpenCall> {
    out.iter().rev().find_map(|o| match o {
        Output::Journal(j, Some(open)) if *j == id => Some((**open).clone()),
        _ => None,
    })
}

#[test]
fn a_connection_is_matched_in_its_own_room_only() {
    let mut c = machine();
    let id = answered_in_room(&mut c);
    // A connection with the same number in another room (another node),
    // or of another member (its room moved to another node): not B's.
    c.handle_room_left_in(T0 + 1, "call-9", B, ConnectionId(2));
    c.handle_room_left_in(T0 + 1, "call-1", A, ConnectionId(2));
    assert!(drain(&mut c).is_empty());
    c.handle_room_left_in(T0 + 2, "call-1", B, ConnectionId(2));
    let out = drain(&mut c);
    assert_eq!(ended(&out, A), Some(Outcome::Answered));
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Ended));
}

#[test]
fn a_lost_room_session_gives_its_member_the_join_timeout_to_rejoin() {
    let mut c = machine();
    let id = answered_in_room(&mut c);
    c.handle_room_lost(T0 + 10, "call-1", A, ConnectionId(2));
    assert!(drain(&mut c).is_empty(), "not A's connection");
    c.handle_room_lost(T0 + 10, "call-1", B, ConnectionId(2));
    let out = drain(&mut c);
    assert!(pushes(&out, A).contains(&"call_updated"));
    assert!(records(&out).is_empty());
    // B rejoins in time: the call goes on.
    c.handle_room_joined("call-1", B, DB1, ConnectionId(7), ParticipantId(7));
    c.handle_timeout(T0 + 10 + JOIN.as_millis() as i64);
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Active));
    // A's session is lost and A never rejoins: A leaves, the 1:1 call ends.
    c.handle_room_lost(T0 + 20, "call-1", A, ConnectionId(1));
    drain(&mut c);
    c.handle_timeout(T0 + 20 + JOIN.as_millis() as i64);
    let out = drain(&mut c);
    assert_eq!(record_of(&out, A).outcome, Outcome::Answered);
    assert_eq!(c.call(id, A).map(|c| c.state), Some(CallState::Ended));
    assert_eq!(kicks(&out), vec![ConnectionId(7)]);
}

#[test]
fn another_machine_restores_a_call_from_its_journal() {
    let mut old = machine();
    let id = old
        .handle_invite(T0, person(1), DA, vec![inv(2), inv(3)], false)
        .expect("invite")
        .id;
    old.handle_accept(T0 + 5, id, B, DB2, Some("tab".into()))
        .expect("accept");
    old.handle_room_joined("call-1", A, DA, ConnectionId(1), ParticipantId(1));
    old.handle_room_joined("call-1", B, DB2, ConnectionId(2), ParticipantId(2));
    let kept = journaled(&drain(&mut old), id).expect("journaled");
    // Through the store's JSON, as a new owner reads it.
    let kept: OpenCall = serde_json::from_str(&serde_json::to_string(&kept).unwrap()).unwrap();

    let mut new = Calls::new(CallId(1), RING, JOIN, 8);
    let now = T0 + 1_000;
    new.restore(now, vec![kept]);
    let out = drain(&mut new);
    assert!(journaled(&out, id).is_some(), "kept again by its new owner");
    assert!(records(&out).is_empty(), "nothing ends on a takeover");
    // Members in the call must be back in its room within the join timeout.
    assert_eq!(new.poll_timeout(), Some(now + JOIN.as_millis() as i64));
    let restored = new.call(id, C).expect("restored").clone();
    assert_eq!(
        restored.member(C).map(|m| m.state),
        Some(MemberState::Ringing)
    );
    assert_eq!(restored.member(B).and_then(|m| m.device_id), Some(DB2));
    // New calls get new ids.
    let other = new
        .handle_invite(now, person(4), DeviceId(40), vec![inv(5)], false)
        .expect("invite");
    assert!(other.id > id);
    // B is announced again by its node; the same accept is still B's.
    new.handle_room_joined("call-1", B, DB2, ConnectionId(2), ParticipantId(2));
    assert!(matches!(
        new.handle_accept(now, id, B, DB2, Some("tab".into())),
        Ok(_) | Err(CallError::Conflict(_))
    ));
    assert!(new.in_call(B), "B is busy for other calls");
    // A never comes back: after the join timeout A leaves, once; B and C go on.
    new.handle_accept(now + 1, id, C, DC, None)
        .expect("C answers");
    new.handle_room_joined("call-1", C, DC, ConnectionId(3), ParticipantId(3));
    drain(&mut new);
    new.handle_timeout(now + JOIN.as_millis() as i64);
    let out = drain(&mut new);
    let ra = records(&out);
    assert_eq!(ra.len(), 1, "{ra:?}");
    assert_eq!(ra[0].account_id, A);
    assert_eq!(ra[0].outcome, Outcome::Answered);
    assert_eq!(new.call(id, B).map(|c| c.state), Some(CallState::Active));
    // B's entry keeps the device it answered on.
    new.handle_leave(now + 30_000, id, B).expect("leave");
    let out = drain(&mut new);
    assert_eq!(record_of(&out, B).device_id, Some(DB2));
}
