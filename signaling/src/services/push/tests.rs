//! Every push against the wire docs/api.md documents: exact JSON for
//! samples of each kind, and each kind's fields against its table row.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use vela_media::core::ParticipantId;

use super::*;
use crate::domain::call::state::{Call, ChatMessage, Person, Record};
use crate::domain::call::{Allow, Direction, Outcome};
use crate::domain::contact::{ContactFields, Labeled};
use crate::domain::ids::{CallId, CallRecordId};
use crate::domain::presence::Status;

const API_MD: &str = include_str!("../../../../docs/api.md");

fn ann() -> AccountSummary {
    AccountSummary {
        id: AccountId(12),
        username: "ann".into(),
        display_name: "Ann Smith".into(),
    }
}

fn bob() -> AccountSummary {
    AccountSummary {
        id: AccountId(4),
        username: "bob".into(),
        display_name: "Bob".into(),
    }
}

fn person(a: AccountSummary) -> Person {
    Person {
        account_id: a.id,
        username: a.username,
        display_name: a.display_name,
    }
}

/// docs/api.md's example `presence`.
fn dnd() -> Presence {
    Presence {
        account_id: AccountId(3),
        status: Status::Dnd,
        text: "focus time".into(),
        last_seen: None,
    }
}

/// A call as docs/api.md describes it ("Objects"): Bob calls Ann, who
/// answered on device 9 and is in the room as PA7.
fn call_json() -> Value {
    json!({
        "id": 7, "room": "call-7", "video": true, "caller": 4, "state": "active",
        "created_at": 1_795_000_000_000_i64, "answered_at": 1_795_000_004_000_i64,
        "ended_at": null,
        "members": [
            {"account_id": 4, "username": "bob", "display_name": "Bob", "state": "joined",
             "invited_by": 4, "invited_at": 1_795_000_000_000_i64,
             "answered_at": 1_795_000_000_000_i64, "device_id": 5, "participant_id": "PA6"},
            {"account_id": 12, "username": "ann", "display_name": "Ann Smith",
             "state": "joined", "invited_by": 4, "invited_at": 1_795_000_000_000_i64,
             "answered_at": 1_795_000_004_000_i64, "device_id": 9, "participant_id": "PA7"},
        ],
    })
}

fn call() -> Call {
    serde_json::from_value(call_json()).expect("a call")
}

fn call_push(e: CallEvent) -> Push {
    Push::Call(Box::new(e))
}

fn entry() -> Contact {
    Contact {
        id: ContactId(7),
        version: 3,
        revision: 41,
        deleted: false,
        fields: Some(ContactFields {
            display_name: "Ann Smith".into(),
            phones: vec![Labeled {
                label: "mobile".into(),
                value: "+44 20 7946 0018".into(),
            }],
            emails: vec![],
            groups: vec!["work".into()],
            linked_account: Some(AccountId(12)),
            favorite: true,
            notes: String::new(),
        }),
        linked_username: Some("ann".into()),
        created_at: 1_790_000_000_000,
        updated_at: 1_790_000_100_000,
    }
}

/// Pushes of every kind with the JSON each must be on the wire.
fn samples() -> Vec<(Push, Value)> {
    let record = CallRecord {
        id: CallRecordId(31),
        unseen: true,
        record: Record {
            account_id: AccountId(12),
            call_id: CallId(7),
            direction: Direction::Incoming,
            video: false,
            participants: vec![person(bob())],
            started_at: 1_795_000_000_000,
            answered_at: None,
            ended_at: 1_795_000_030_000,
            outcome: Outcome::Missed,
            device_id: None,
            handed_over_to: vec![],
        },
        duration_ms: 0,
    };
    let message = ChatMessage {
        call_id: CallId(7),
        seq: 2,
        from: person(bob()),
        device_id: DeviceId(5),
        text: "hi".into(),
        sent_at: 1_795_000_005_000,
    };
    let call = call();
    let ann_json = json!({"id": 12, "username": "ann", "display_name": "Ann Smith"});
    let bob_person = json!({"account_id": 4, "username": "bob", "display_name": "Bob"});
    vec![
        (
            Push::Ready(Box::new(Ready {
                account_id: AccountId(3),
                device_id: DeviceId(9),
                heartbeat_interval_ms: 10_000,
                presence: dnd(),
                contacts: vec![MutualContact {
                    account: bob(),
                    presence: Presence {
                        account_id: AccountId(4),
                        status: Status::Online,
                        text: String::new(),
                        last_seen: None,
                    },
                }],
                contacts_revision: 41,
            })),
            // docs/api.md's example, the elided presences filled in.
            json!({"type": "ready", "account_id": 3, "device_id": 9,
                   "heartbeat_interval_ms": 10000,
                   "presence": {"account_id": 3, "status": "dnd", "text": "focus time",
                                "last_seen": null},
                   "contacts": [{"id": 4, "username": "bob", "display_name": "Bob",
                                 "presence": {"account_id": 4, "status": "online", "text": "",
                                              "last_seen": null}}],
                   "contacts_revision": 41}),
        ),
        (Push::Pong, json!({"type": "pong"})),
        (
            Push::Error {
                code: 400,
                message: "must be online, away or dnd".into(),
                field: Some("status".into()),
            },
            json!({"type": "error", "code": 400, "message": "must be online, away or dnd",
                   "field": "status"}),
        ),
        (
            Push::Error {
                code: 429,
                message: "too many messages".into(),
                field: None,
            },
            json!({"type": "error", "code": 429, "message": "too many messages"}),
        ),
        (
            Push::Presence(dnd()),
            // Verbatim from docs/api.md's device socket example.
            serde_json::from_str(
                r#"{"type":"presence","account_id":3,"status":"dnd","text":"focus time","last_seen":null}"#,
            )
            .expect("json"),
        ),
        (
            Push::Presence(Presence {
                account_id: AccountId(4),
                status: Status::Offline,
                text: String::new(),
                last_seen: Some(1_795_000_000_000),
            }),
            json!({"type": "presence", "account_id": 4, "status": "offline", "text": "",
                   "last_seen": 1_795_000_000_000_i64}),
        ),
        (
            Push::ContactChanged {
                revision: 41,
                contact: Box::new(entry()),
            },
            json!({"type": "contact_changed", "revision": 41, "contact": {
                "id": 7, "version": 3, "revision": 41, "display_name": "Ann Smith",
                "phones": [{"label": "mobile", "value": "+44 20 7946 0018"}], "emails": [],
                "groups": ["work"], "linked_account": 12, "linked_username": "ann",
                "favorite": true, "notes": "",
                "created_at": 1_790_000_000_000_i64, "updated_at": 1_790_000_100_000_i64}}),
        ),
        (
            Push::ContactDeleted {
                revision: 42,
                id: ContactId(7),
                version: 4,
            },
            json!({"type": "contact_deleted", "revision": 42, "id": 7, "version": 4}),
        ),
        (
            Push::ContactRequest {
                request: Box::new(ContactRequest {
                    id: RequestId(2),
                    from: bob(),
                    to: ann(),
                    message: "hello".into(),
                    created_at: 1_795_000_000_000,
                }),
            },
            json!({"type": "contact_request", "request": {"id": 2,
                   "from": {"id": 4, "username": "bob", "display_name": "Bob"},
                   "to": ann_json, "message": "hello", "created_at": 1_795_000_000_000_i64}}),
        ),
        (
            Push::ContactRequestRemoved { id: RequestId(2) },
            json!({"type": "contact_request_removed", "id": 2}),
        ),
        (
            Push::MutualContactAdded {
                contact: Box::new(MutualContact {
                    account: ann(),
                    presence: Presence {
                        account_id: AccountId(12),
                        status: Status::InCall,
                        text: String::new(),
                        last_seen: None,
                    },
                }),
            },
            json!({"type": "mutual_contact_added", "contact": {
                "id": 12, "username": "ann", "display_name": "Ann Smith",
                "presence": {"account_id": 12, "status": "in_call", "text": "", "last_seen": null}}}),
        ),
        (
            Push::MutualContactRemoved {
                account_id: AccountId(4),
            },
            json!({"type": "mutual_contact_removed", "account_id": 4}),
        ),
        (
            Push::SessionRevoked {
                device_id: DeviceId(9),
                reason: SignOutReason::RefreshTokenReused,
            },
            json!({"type": "session_revoked", "device_id": 9, "reason": "refresh_token_reused"}),
        ),
        (
            Push::AccountDisabled,
            json!({"type": "account_disabled"}),
        ),
        (
            call_push(CallEvent::CallRinging {
                call: call.clone(),
                caller: person(bob()),
                waiting: false,
            }),
            json!({"type": "call_ringing", "call": call_json(), "caller": bob_person,
                   "waiting": false}),
        ),
        (
            call_push(CallEvent::CallOutgoing { call: call.clone() }),
            json!({"type": "call_outgoing", "call": call_json()}),
        ),
        (
            call_push(CallEvent::CallAnswered {
                call: call.clone(),
                account_id: AccountId(12),
                device_id: DeviceId(9),
                client_id: None,
            }),
            json!({"type": "call_answered", "call": call_json(), "account_id": 12,
                   "device_id": 9, "client_id": null}),
        ),
        (
            call_push(CallEvent::CallRingingStopped {
                call: call.clone(),
                reason: "answered_elsewhere",
                device_id: DeviceId(9),
                client_id: Some("tab-1".into()),
            }),
            json!({"type": "call_ringing_stopped", "call": call_json(),
                   "reason": "answered_elsewhere", "device_id": 9, "client_id": "tab-1"}),
        ),
        (
            call_push(CallEvent::CallDeclined {
                call: call.clone(),
                account_id: AccountId(12),
            }),
            json!({"type": "call_declined", "call": call_json(), "account_id": 12}),
        ),
        (
            call_push(CallEvent::CallUpdated { call: call.clone() }),
            json!({"type": "call_updated", "call": call_json()}),
        ),
        (
            call_push(CallEvent::CallEnded {
                call,
                outcome: Outcome::Answered,
            }),
            json!({"type": "call_ended", "call": call_json(), "outcome": "answered"}),
        ),
        (
            call_push(CallEvent::CallMessage { message }),
            json!({"type": "call_message", "message": {"call_id": 7, "seq": 2,
                   "from": bob_person, "device_id": 5, "text": "hi",
                   "sent_at": 1_795_000_005_000_i64}}),
        ),
        (
            Push::CallHistory {
                record: Box::new(record),
            },
            json!({"type": "call_history", "record": {"id": 31, "unseen": true,
                   "account_id": 12, "call_id": 7, "direction": "incoming", "video": false,
                   "participants": [bob_person], "started_at": 1_795_000_000_000_i64,
                   "answered_at": null, "ended_at": 1_795_000_030_000_i64,
                   "outcome": "missed", "device_id": null, "handed_over_to": [],
                   "duration_ms": 0}}),
        ),
        (
            Push::MissedCalls { count: 0 },
            json!({"type": "missed_calls", "count": 0}),
        ),
        (
            Push::CallSettings(CallSettings {
                dnd: true,
                allow: Allow::Favorites,
            }),
            json!({"type": "call_settings", "dnd": true, "allow": "favorites"}),
        ),
    ]
}

#[test]
fn pushes_serialise_to_the_documented_json() {
    for (push, expected) in samples() {
        let text = push.encode().expect("encodes");
        let got: Value = serde_json::from_str(&text).expect("JSON");
        // Value equality tells null from absent and 7 from "7".
        assert_eq!(got, expected, "{push:?}");
    }
}

#[test]
fn the_call_sample_reads_back_as_written() {
    // The sample call is JSON turned into a `Call`: it must serialise back
    // unchanged, or the call pushes' expectations above would be circular.
    assert_eq!(serde_json::to_value(call()).expect("json"), call_json());
    assert_eq!(
        call().member(AccountId(12)).and_then(|m| m.participant_id),
        Some(ParticipantId(7))
    );
}

#[test]
fn every_sign_out_reason_is_its_wire_name_and_documented() {
    use SignOutReason::*;
    let row = API_MD
        .lines()
        .find(|l| l.starts_with("| `session_revoked` |"))
        .expect("docs/api.md's session_revoked row");
    for r in [
        Revoked,
        LoggedOut,
        PasswordChanged,
        PasswordReset,
        RefreshTokenReused,
        SessionExpired,
        DeviceLimit,
    ] {
        assert_eq!(serde_json::to_value(r).expect("json"), json!(r.as_str()));
        assert_eq!(r.to_string(), r.as_str());
        let named = format!("`{r}`");
        assert!(row.contains(&named), "{named} is not in {row:?}");
    }
}

/// docs/api.md's server-to-device tables: type -> (field, optional); for
/// `ready` ("see above"), the fields of the example above the tables.
fn documented() -> Vec<(String, Vec<(String, bool)>)> {
    let mut rows = vec![("ready".to_owned(), ready_example_fields())];
    for heading in [
        "Server to client:",
        "Device socket pushes (every device of the account):",
    ] {
        let at = API_MD
            .find(heading)
            .unwrap_or_else(|| panic!("docs/api.md has no {heading:?}"));
        let table = API_MD[at + heading.len()..]
            .lines()
            .skip_while(|l| l.trim().is_empty())
            .take_while(|l| l.starts_with('|'))
            .skip(2); // the header and the rule
        for line in table {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let ty = cells.get(1).map_or("", |c| c.trim_matches('`'));
            if ty == "ready" {
                continue;
            }
            rows.push((ty.to_owned(), fields(cells.get(2).copied().unwrap_or(""))));
        }
    }
    rows
}

/// The fields of docs/api.md's example `ready` (its elided presences,
/// `{...}`, made empty objects).
fn ready_example_fields() -> Vec<(String, bool)> {
    let at = API_MD
        .find(r#"S: {"type":"ready""#)
        .expect("docs/api.md's ready example");
    let example: String = API_MD[at + 3..]
        .lines()
        .take_while(|l| !l.starts_with("C:"))
        .collect();
    let example = example.replace("{...own...}", "{}").replace("{...}", "{}");
    let v: Value = serde_json::from_str(&example).expect("the ready example is JSON");
    v.as_object()
        .expect("an object")
        .keys()
        .filter(|k| *k != "type")
        .map(|k| (k.clone(), false))
        .collect()
}

/// The top-level field names of a table cell: backticked names outside
/// parentheses (which describe the values); `name?` is optional.
fn fields(cell: &str) -> Vec<(String, bool)> {
    let mut depth = 0usize;
    let mut top = String::new();
    for ch in cell.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            _ if depth == 0 => top.push(ch),
            _ => {}
        }
    }
    top.split('`')
        .skip(1)
        .step_by(2)
        .map(|f| match f.strip_suffix('?') {
            Some(name) => (name.to_owned(), true),
            None => (f.to_owned(), false),
        })
        .collect()
}

#[test]
fn every_push_has_the_fields_of_its_docs_row() {
    let docs = documented();
    assert!(docs.len() > 20, "docs/api.md's push tables: {docs:?}");
    let mut seen = BTreeSet::new();
    for (push, _) in samples() {
        let v = serde_json::to_value(&push).expect("json");
        let obj = v.as_object().expect("an object");
        let ty = obj["type"].as_str().expect("a type");
        let (_, documented) = docs
            .iter()
            .find(|(t, _)| t == ty)
            .unwrap_or_else(|| panic!("`{ty}` is not in docs/api.md's push tables"));
        let sent: BTreeSet<&str> = obj
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "type")
            .collect();
        let required: BTreeSet<&str> = documented
            .iter()
            .filter(|(_, opt)| !opt)
            .map(|(f, _)| f.as_str())
            .collect();
        let allowed: BTreeSet<&str> = documented.iter().map(|(f, _)| f.as_str()).collect();
        assert!(
            required.is_subset(&sent),
            "`{ty}`: sends {sent:?}, docs require {required:?}"
        );
        assert!(
            sent.is_subset(&allowed),
            "`{ty}`: sends {sent:?}, docs name {allowed:?}"
        );
        seen.insert(ty.to_owned());
    }
    let missing: Vec<&str> = docs
        .iter()
        .map(|(t, _)| t.as_str())
        .filter(|t| !seen.contains(*t))
        .collect();
    assert!(
        missing.is_empty(),
        "documented pushes without a sample: {missing:?}"
    );
}

#[test]
fn the_docs_table_reader_reads_a_row() {
    // A reader that found no fields would let the test above pass vacuously.
    assert_eq!(
        fields("`call`, `caller` (`{account_id, username}`: who), `waiting` (always false)"),
        vec![
            ("call".to_owned(), false),
            ("caller".to_owned(), false),
            ("waiting".to_owned(), false)
        ]
    );
    assert_eq!(
        fields("`code`, `message`, `field?`").last(),
        Some(&("field".to_owned(), true))
    );
    assert!(fields("").is_empty());
}
