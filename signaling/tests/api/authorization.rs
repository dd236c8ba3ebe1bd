//! Authorisation, route by route: every mutating HTTP operation (each POST,
//! PUT, PATCH and DELETE of the OpenAPI document, plus WHIP/WHEP `DELETE`),
//! aimed at something of one account's (the owner's), tried by the owner,
//! another account, a room token, no token and an admin account (and, for
//! the server API and WHIP/WHEP, a room token with grants for another room;
//! for WHIP/WHEP, a room token whose identity spells the owner's account).
//! Each answer has the status the table says, and errors are JSON with a
//! message. After every attempt but those that act on the owner's things
//! (hers, an admin's on her account, her room's integration's and an
//! admin's on her room), everything she can observe is as it was: her
//! account, devices, address book, contact requests, mutual contacts,
//! presence, call settings, history and active calls, and her room session;
//! her device socket and room session were told nothing, and her refresh
//! token still works.
//!
//! The table is checked against the OpenAPI document, which a unit test in
//! `signaling/src/server.rs` checks against the lists the routers are built
//! from: a new mutating operation fails
//! `the_table_covers_every_mutating_operation` until it has a row here.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use base64::Engine;
use common::{Api, DeviceClient, Login, Peer, Resp, Seen, SessionClient, start_with};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vela_signaling::RunningServer;
use vela_signaling::token::{TokenKeys, VideoGrant};

const LIMIT: Duration = Duration::from_secs(120);

/// The owner's password: the other accounts' ("correct horse battery")
/// differs, so theirs never opens the owner's account.
const OWNER_PW: &str = "olive's own secret";
const PW: &str = "correct horse battery";
/// The owner's room (a room session in every group; WHIP and WHEP too in
/// the server API's).
const ROOM: &str = "home";

/// Who sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Caller {
    /// The owner: her access token (of the device that acts, not of the
    /// watched one; for WHIP/WHEP, of the watched one, not of the one that
    /// started the session). For the server API, her room's integration: a
    /// room token with roomCreate, roomList and roomAdmin for her room.
    Owner,
    /// Another account, a plain user.
    Other,
    /// A room token with roomJoin for the owner's room, no admin grants.
    RoomToken,
    /// A room token with every admin grant, for another room (server API
    /// and WHIP/WHEP rows only).
    Elsewhere,
    /// A room token for the owner's room whose identity spells her account
    /// as WHIP/WHEP sessions once named their owners (`account:<id>`)
    /// (WHIP/WHEP rows only).
    Impostor,
    /// No `Authorization` header.
    NoToken,
    /// An admin account (accounts:admin and rooms:admin).
    Admin,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Caller::Owner => "the owner",
            Caller::Other => "another account",
            Caller::RoomToken => "a room token",
            Caller::Elsewhere => "a room token with grants for another room",
            Caller::Impostor => "a room token named after the owner",
            Caller::NoToken => "no token",
            Caller::Admin => "an admin account",
        })
    }
}

/// Which API a row belongs to: decides what "the owner" is and which
/// callers a row must list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Account,
    Server,
    Whip,
}

/// Each mutating operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    SignUp,
    Login,
    Refresh,
    Logout,
    UpdateMe,
    ChangePassword,
    RenameDevice,
    RevokeDevice,
    DisableAccount,
    EnableAccount,
    ResetPassword,
    CreateContact,
    UpdateContact,
    DeleteContact,
    SendRequest,
    DeleteRequest,
    AcceptRequest,
    RemoveMutual,
    SetPresence,
    PlaceCall,
    AcceptCall,
    DeclineCall,
    CancelCall,
    LeaveCall,
    AddToCall,
    CallMessage,
    MissedSeen,
    CallSettings,
    CreateRoom,
    UpdateParticipant,
    MuteTrack,
    SendData,
    MintToken,
    RemoveParticipant,
    DeleteRoom,
    EndWhip,
    EndWhep,
}

/// One route of the table: the operation as the OpenAPI document names it
/// and the status each caller gets.
struct Row {
    op: Op,
    kind: Kind,
    method: &'static str,
    path: &'static str,
    expect: &'static [(Caller, u16)],
}

use Caller::{Admin, Elsewhere, Impostor, NoToken, Other, Owner, RoomToken};

const fn row(
    op: Op,
    kind: Kind,
    method: &'static str,
    path: &'static str,
    expect: &'static [(Caller, u16)],
) -> Row {
    Row {
        op,
        kind,
        method,
        path,
        expect,
    }
}

/// Accounts, devices and their administration. Sign-up with a token is an
/// admin's; login and refresh are authorised by their body (a password, a
/// refresh token), which the others lack; logout, `PATCH /me` and the own
/// password act on the caller's own account; someone else's device is 404.
#[rustfmt::skip]
const ACCOUNTS: &[Row] = &[
    row(Op::SignUp, Kind::Account, "post", "/api/v1/accounts",
        &[(Owner, 403), (Other, 403), (RoomToken, 401), (NoToken, 201), (Admin, 201)]),
    row(Op::Login, Kind::Account, "post", "/api/v1/auth/login",
        &[(Owner, 200), (Other, 401), (RoomToken, 401), (NoToken, 401), (Admin, 401)]),
    row(Op::Refresh, Kind::Account, "post", "/api/v1/auth/refresh",
        &[(Owner, 200), (Other, 401), (RoomToken, 401), (NoToken, 401), (Admin, 401)]),
    row(Op::Logout, Kind::Account, "post", "/api/v1/auth/logout",
        &[(Owner, 204), (Other, 204), (RoomToken, 401), (NoToken, 401), (Admin, 204)]),
    row(Op::UpdateMe, Kind::Account, "patch", "/api/v1/me",
        &[(Owner, 200), (Other, 200), (RoomToken, 401), (NoToken, 401), (Admin, 200)]),
    row(Op::ChangePassword, Kind::Account, "put", "/api/v1/me/password",
        &[(Owner, 204), (Other, 403), (RoomToken, 401), (NoToken, 401), (Admin, 403)]),
    row(Op::RenameDevice, Kind::Account, "patch", "/api/v1/devices/{id}",
        &[(Owner, 200), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::RevokeDevice, Kind::Account, "delete", "/api/v1/devices/{id}",
        &[(Owner, 204), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::DisableAccount, Kind::Account, "post", "/api/v1/admin/accounts/{id}/disable",
        &[(Owner, 403), (Other, 403), (RoomToken, 401), (NoToken, 401), (Admin, 200)]),
    row(Op::EnableAccount, Kind::Account, "post", "/api/v1/admin/accounts/{id}/enable",
        &[(Owner, 403), (Other, 403), (RoomToken, 401), (NoToken, 401), (Admin, 200)]),
    row(Op::ResetPassword, Kind::Account, "put", "/api/v1/admin/accounts/{id}/password",
        &[(Owner, 403), (Other, 403), (RoomToken, 401), (NoToken, 401), (Admin, 204)]),
];

/// The address book, contact requests, mutual contacts and presence.
/// Creating an entry, asking someone (tess) and setting presence act on the
/// caller's own; the owner's entry, request and link are 404 to others.
#[rustfmt::skip]
const ADDRESS_BOOK: &[Row] = &[
    row(Op::CreateContact, Kind::Account, "post", "/api/v1/contacts",
        &[(Owner, 201), (Other, 201), (RoomToken, 401), (NoToken, 401), (Admin, 201)]),
    row(Op::UpdateContact, Kind::Account, "put", "/api/v1/contacts/{id}",
        &[(Owner, 200), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::DeleteContact, Kind::Account, "delete", "/api/v1/contacts/{id}",
        &[(Owner, 200), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::SendRequest, Kind::Account, "post", "/api/v1/contact-requests",
        &[(Owner, 201), (Other, 201), (RoomToken, 401), (NoToken, 401), (Admin, 201)]),
    row(Op::DeleteRequest, Kind::Account, "delete", "/api/v1/contact-requests/{id}",
        &[(Owner, 204), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::AcceptRequest, Kind::Account, "post", "/api/v1/contact-requests/{id}/accept",
        &[(Owner, 200), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::RemoveMutual, Kind::Account, "delete", "/api/v1/mutual-contacts/{account_id}",
        &[(Owner, 204), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::SetPresence, Kind::Account, "put", "/api/v1/presence",
        &[(Owner, 200), (Other, 200), (RoomToken, 401), (NoToken, 401), (Admin, 200)]),
];

/// Calls: placing one (to tess), marking missed calls seen and the
/// do-not-disturb settings act on the caller's own; a call of the owner's
/// is 404 to anyone not in it.
#[rustfmt::skip]
const CALLS: &[Row] = &[
    row(Op::PlaceCall, Kind::Account, "post", "/api/v1/calls",
        &[(Owner, 201), (Other, 201), (RoomToken, 401), (NoToken, 401), (Admin, 201)]),
    row(Op::AcceptCall, Kind::Account, "post", "/api/v1/calls/{id}/accept",
        &[(Owner, 200), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::DeclineCall, Kind::Account, "post", "/api/v1/calls/{id}/decline",
        &[(Owner, 200), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::CancelCall, Kind::Account, "post", "/api/v1/calls/{id}/cancel",
        &[(Owner, 200), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::LeaveCall, Kind::Account, "post", "/api/v1/calls/{id}/leave",
        &[(Owner, 200), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::AddToCall, Kind::Account, "post", "/api/v1/calls/{id}/invite",
        &[(Owner, 200), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::CallMessage, Kind::Account, "post", "/api/v1/calls/{id}/messages",
        &[(Owner, 201), (Other, 404), (RoomToken, 401), (NoToken, 401), (Admin, 404)]),
    row(Op::MissedSeen, Kind::Account, "post", "/api/v1/calls/missed/seen",
        &[(Owner, 200), (Other, 200), (RoomToken, 401), (NoToken, 401), (Admin, 200)]),
    row(Op::CallSettings, Kind::Account, "put", "/api/v1/calls/settings",
        &[(Owner, 200), (Other, 200), (RoomToken, 401), (NoToken, 401), (Admin, 200)]),
];

/// The server API (aimed at the owner's room and its room session) and the
/// owner's WHIP and WHEP sessions. The server API is the room's
/// integration's and an admin's; a WHIP/WHEP session ends by any token of
/// the account that started it, and only by such.
#[rustfmt::skip]
const SERVER: &[Row] = &[
    row(Op::CreateRoom, Kind::Server, "post", "/api/v1/rooms",
        &[(Owner, 200), (Other, 403), (RoomToken, 403), (Elsewhere, 403), (NoToken, 401), (Admin, 200)]),
    row(Op::UpdateParticipant, Kind::Server, "patch", "/api/v1/rooms/{room}/participants/{identity}",
        &[(Owner, 200), (Other, 403), (RoomToken, 403), (Elsewhere, 403), (NoToken, 401), (Admin, 200)]),
    row(Op::MuteTrack, Kind::Server, "post", "/api/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute",
        &[(Owner, 200), (Other, 403), (RoomToken, 403), (Elsewhere, 403), (NoToken, 401), (Admin, 200)]),
    row(Op::SendData, Kind::Server, "post", "/api/v1/rooms/{room}/data",
        &[(Owner, 200), (Other, 403), (RoomToken, 403), (Elsewhere, 403), (NoToken, 401), (Admin, 200)]),
    row(Op::MintToken, Kind::Server, "post", "/api/v1/tokens",
        &[(Owner, 200), (Other, 403), (RoomToken, 403), (Elsewhere, 403), (NoToken, 401), (Admin, 200)]),
    row(Op::RemoveParticipant, Kind::Server, "delete", "/api/v1/rooms/{room}/participants/{identity}",
        &[(Owner, 204), (Other, 403), (RoomToken, 403), (Elsewhere, 403), (NoToken, 401), (Admin, 204)]),
    row(Op::DeleteRoom, Kind::Server, "delete", "/api/v1/rooms/{room}",
        &[(Owner, 204), (Other, 403), (RoomToken, 403), (Elsewhere, 403), (NoToken, 401), (Admin, 204)]),
    row(Op::EndWhip, Kind::Whip, "delete", "/whip/{room}/{session}",
        &[(Owner, 200), (Other, 403), (RoomToken, 403), (Elsewhere, 403), (Impostor, 403), (NoToken, 401), (Admin, 403)]),
    row(Op::EndWhep, Kind::Whip, "delete", "/whep/{room}/{session}",
        &[(Owner, 200), (Other, 403), (RoomToken, 403), (Elsewhere, 403), (Impostor, 403), (NoToken, 401), (Admin, 403)]),
];

/// The callers every row of a kind must list.
fn callers(kind: Kind) -> &'static [Caller] {
    match kind {
        Kind::Account => &[Owner, Other, RoomToken, NoToken, Admin],
        Kind::Server => &[Owner, Other, RoomToken, Elsewhere, NoToken, Admin],
        Kind::Whip => &[Owner, Other, RoomToken, Elsewhere, Impostor, NoToken, Admin],
    }
}

#[test]
fn the_table_covers_every_mutating_operation() {
    let doc: Value =
        serde_json::from_str(include_str!("../../src/transports/http/openapi.json")).unwrap();
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            if ["post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let rows = || {
        ACCOUNTS
            .iter()
            .chain(ADDRESS_BOOK)
            .chain(CALLS)
            .chain(SERVER)
    };
    let tabled: BTreeSet<(String, String)> = rows()
        .filter(|r| r.kind != Kind::Whip)
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    let missing: Vec<_> = documented.difference(&tabled).collect();
    assert!(
        missing.is_empty(),
        "mutating operations without a row: {missing:?}"
    );
    let unknown: Vec<_> = tabled.difference(&documented).collect();
    assert!(
        unknown.is_empty(),
        "rows for undocumented operations: {unknown:?}"
    );
    assert_eq!(
        tabled.len(),
        rows().filter(|r| r.kind != Kind::Whip).count(),
        "a row twice"
    );
    for r in rows() {
        let listed: Vec<Caller> = r.expect.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            listed,
            callers(r.kind),
            "{} {}: the callers",
            r.method,
            r.path
        );
        assert!(
            r.expect.iter().any(|(_, s)| (200..300).contains(s)),
            "{} {}: no caller may",
            r.method,
            r.path
        );
    }
    let ops: BTreeSet<String> = rows().map(|r| format!("{:?}", r.op)).collect();
    assert_eq!(ops.len(), rows().count(), "an operation in two rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_devices_route_by_route() {
    tokio::time::timeout(LIMIT, run(ACCOUNTS, false))
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_book_and_links_route_by_route() {
    tokio::time::timeout(LIMIT, run(ADDRESS_BOOK, false))
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_route_by_route() {
    tokio::time::timeout(LIMIT, run(CALLS, false))
        .await
        .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_and_whip_whep_route_by_route() {
    tokio::time::timeout(LIMIT, run(SERVER, true))
        .await
        .expect("test timed out");
}

/// Not a row of the table, but a room token's too: one whose identity
/// spells a device of the owner's (`olive/<device>`) joining her room over
/// `/ws` or WHIP is refused, rather than replacing her session as the same
/// identity joining again would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_token_named_after_the_owners_device_cannot_take_its_place() {
    tokio::time::timeout(LIMIT, async {
        let mut w = World::new(true).await;
        let named = |device: i64| {
            signed(
                &format!("olive/{device}"),
                VideoGrant {
                    room: Some(ROOM.into()),
                    room_join: true,
                    can_publish: Some(true),
                    can_subscribe: Some(true),
                    ..VideoGrant::default()
                },
            )
        };
        let before = w.snapshot().await;
        let e = SessionClient::join_with(&w.s, &named(w.watch.device), false)
            .await
            .err()
            .expect("a room token took the owner's room session");
        assert_eq!(e["code"], 403, "{e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        let whip = format!("{}/whip/{ROOM}", common::base(&w.s));
        let (status, body) = Peer::http(&whip, &named(w.act.device), true)
            .await
            .err()
            .expect("a room token took the owner's WHIP session");
        assert_eq!(status, 403, "{body}");
        let e: Value = serde_json::from_str(&body).unwrap();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        let after = w.snapshot().await;
        if before != after {
            panic!("the owner's state changed:\n{}", diff(&before, &after));
        }
        w.assert_untouched("after the impostors").await;
        w.finish().await;
    })
    .await
    .expect("test timed out");
}

/// Whether `caller`, when allowed, acts on the owner's things: the owner
/// herself (for the server API, her room's integration), and an admin
/// administering her account or moderating her room. Anyone else, allowed
/// or not, must leave everything of hers as it was.
fn acts_on_owner(r: &Row, caller: Caller) -> bool {
    match caller {
        Owner => true,
        Admin => {
            r.kind == Kind::Server
                || matches!(
                    r.op,
                    Op::DisableAccount | Op::EnableAccount | Op::ResetPassword
                )
        }
        _ => false,
    }
}

/// Runs `rows`. Per row: first every attempt that must leave the owner's
/// things alone (refused ones, and those of callers acting on their own
/// things), each against a fresh snapshot of the owner's state that must
/// not change; then the owner's sockets must have been told nothing and her
/// refresh token must still work; then the attempts that act on her things
/// (their effects are undone, or her sessions set up again, before the next).
async fn run(rows: &[Row], media: bool) {
    let mut w = World::new(media).await;
    for r in rows {
        let route = format!("{} {}", r.method.to_uppercase(), r.path);
        let allowed = |s: u16| (200..300).contains(&s);
        let (hands_off, acting): (Vec<_>, Vec<_>) = r
            .expect
            .iter()
            .partition(|(c, s)| !allowed(*s) || !acts_on_owner(r, *c));
        for &(caller, status) in &hands_off {
            let ctx = format!("{route} as {caller}");
            let a = w.prepare(r, caller).await;
            let before = w.snapshot().await;
            let resp = w.send(r, &a).await;
            assert_eq!(resp.status, status, "{ctx} ({}): {:?}", a.path, resp.body);
            if !allowed(status) {
                assert_eq!(resp.body["error"], status, "{ctx}: {:?}", resp.body);
                assert!(
                    resp.body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{ctx}: no message in {:?}",
                    resp.body
                );
            }
            let after = w.snapshot().await;
            if before != after {
                panic!(
                    "{ctx} changed the owner's state:\n{}",
                    diff(&before, &after)
                );
            }
            if allowed(status) {
                w.after_allowed(r, caller, &resp).await;
            }
        }
        w.assert_untouched(&route).await;
        for &(caller, status) in &acting {
            let a = w.prepare(r, caller).await;
            let resp = w.send(r, &a).await;
            assert_eq!(
                resp.status, status,
                "{route} as {caller} ({}): {:?}",
                a.path, resp.body
            );
            w.after_allowed(r, caller, &resp).await;
            w.settle().await;
        }
    }
    w.finish().await;
}

/// The keys whose values differ, both ways.
fn diff(before: &Value, after: &Value) -> String {
    let mut out = String::new();
    for (k, v) in before.as_object().unwrap() {
        if after[k] != *v {
            out += &format!("{k}:\n  before {v}\n  after  {}\n", after[k]);
        }
    }
    out
}

/// A request to send: the concrete path, body and token.
struct Attempt {
    path: String,
    body: Option<Value>,
    token: Option<String>,
}

/// A room token signed with the development key the test servers use.
fn signed(identity: &str, grant: VideoGrant) -> String {
    TokenKeys::new(vela_config::DEV_API_KEY, vela_config::DEV_API_SECRET)
        .issue(identity, None, grant, Duration::from_secs(3600))
        .unwrap()
}

/// The server, the owner (olive) with two devices, her sessions and her
/// things, and everyone else.
struct World {
    s: RunningServer,
    api: Api,
    /// The owner's password now.
    password: String,
    /// The owner's watched device: its socket is open, it is in the room,
    /// and its refresh token is tried after every row's refusals.
    watch: Login,
    /// The owner's other device: the one that acts as the owner.
    act: Login,
    sock: DeviceClient,
    /// The watched device's room session.
    home: Option<SessionClient>,
    /// The server API group: the room session publishes, and the acting
    /// device publishes by WHIP and views by WHEP.
    media: bool,
    whip: Option<Peer>,
    whep: Option<Peer>,
    other: Login,
    admin: Login,
    /// A mutual contact of the owner's.
    fern: Login,
    /// Asks the owner to be a contact, calls her.
    paul: Login,
    /// Someone everybody may ask or call.
    tess: Login,
    /// roomJoin for the owner's room.
    room_token: String,
    /// Every admin grant, for another room.
    elsewhere: String,
    /// roomCreate, roomList and roomAdmin for the owner's room.
    integration: String,
    /// roomJoin for the owner's room, identity `account:<owner>`.
    impostor: String,
    /// Makes names unique.
    n: u32,
}

impl World {
    async fn new(media: bool) -> World {
        let s = start_with(|c| {
            // Nothing may change by itself while the table runs: no device
            // times out, no call rings out or is left for not joining.
            c.presence.heartbeat_timeout_ms = 3_600_000;
            c.calls.ring_timeout_ms = 600_000;
            c.calls.join_timeout_ms = 600_000;
        })
        .await;
        let api = Api::new(&s);
        api.post(
            "/api/v1/accounts",
            None,
            json!({"username": "olive", "password": OWNER_PW, "display_name": "Olive"}),
        )
        .await
        .ok(201);
        let watch = api.login("olive", OWNER_PW, "phone", "olive's phone").await;
        let act = api
            .login("olive", OWNER_PW, "desktop", "olive's desktop")
            .await;
        let other = api.user("xavier", "web").await;
        let admin = api.admin(&s, "root", "web").await;
        let fern = api.user("fern", "phone").await;
        let paul = api.user("paul", "phone").await;
        let tess = api.user("tess", "phone").await;
        // Things of the owner's that others could aim at.
        api.link(&fern, &act).await;
        api.post(
            "/api/v1/contacts",
            Some(&act.access),
            json!({"display_name": "Ann", "favorite": true, "groups": ["work"]}),
        )
        .await
        .ok(201);
        api.post(
            "/api/v1/contact-requests",
            Some(&paul.access),
            json!({"username": "olive", "message": "hi"}),
        )
        .await
        .ok(201);
        let grant = |room: &str| VideoGrant {
            room: Some(room.into()),
            room_join: true,
            can_publish: Some(true),
            can_subscribe: Some(true),
            ..VideoGrant::default()
        };
        let room_token = signed("guest", grant(ROOM));
        let elsewhere = signed(
            "moderator",
            VideoGrant {
                room_create: false,
                room_list: true,
                room_admin: true,
                ..grant("elsewhere")
            },
        );
        let integration = signed(
            "integration",
            VideoGrant {
                room_create: true,
                room_list: true,
                room_admin: true,
                ..grant(ROOM)
            },
        );
        let impostor = signed(&format!("account:{}", watch.account), grant(ROOM));
        let sock = DeviceClient::connect(&s, &watch.access, None).await;
        let mut w = World {
            s,
            api,
            password: OWNER_PW.to_owned(),
            watch,
            act,
            sock,
            home: None,
            media,
            whip: None,
            whep: None,
            other,
            admin,
            fern,
            paul,
            tess,
            room_token,
            elsewhere,
            integration,
            impostor,
            n: 0,
        };
        w.restart_room().await;
        w.settle().await;
        w
    }

    fn next(&mut self) -> u32 {
        self.n += 1;
        self.n
    }

    /// The token `caller` sends on a row of `kind`.
    fn token(&self, kind: Kind, caller: Caller) -> Option<String> {
        Some(match caller {
            Caller::Owner => match kind {
                Kind::Account => self.act.access.clone(),
                Kind::Server => self.integration.clone(),
                // Any device of the account that started it.
                Kind::Whip => self.watch.access.clone(),
            },
            Caller::Other => self.other.access.clone(),
            Caller::RoomToken => self.room_token.clone(),
            Caller::Elsewhere => self.elsewhere.clone(),
            Caller::Impostor => self.impostor.clone(),
            Caller::NoToken => return None,
            Caller::Admin => self.admin.access.clone(),
        })
    }

    /// Sends `a` as row `r` says.
    async fn send(&self, r: &Row, a: &Attempt) -> Resp {
        let method = r.method.to_uppercase();
        self.api
            .call(&method, &a.path, a.token.as_deref(), a.body.clone())
            .await
    }

    /// The owner's room participant's identity, as a path segment.
    fn identity(&self) -> String {
        format!("olive%2F{}", self.watch.device)
    }

    /// Sets up what `r` aims at (if it is not there yet) and returns the
    /// request `caller` sends.
    async fn prepare(&mut self, r: &Row, caller: Caller) -> Attempt {
        let mut a = Attempt {
            path: r.path.to_owned(),
            body: None,
            token: self.token(r.kind, caller),
        };
        let n = self.next();
        let olive = self.watch.account;
        let mut changed = false;
        match r.op {
            Op::SignUp => {
                a.body = Some(json!({"username": format!("newcomer{n}"), "password": PW}));
            }
            Op::Login => {
                let password = if caller == Owner {
                    self.password.clone()
                } else {
                    "not olive's password".to_owned()
                };
                a.body = Some(json!({
                    "username": "olive", "password": password,
                    "device": {"kind": "web", "label": format!("login {n}")},
                }));
            }
            Op::Refresh => {
                let token = if caller == Owner {
                    self.act.refresh.clone()
                } else {
                    format!("not-a-refresh-token-{n}")
                };
                a.body = Some(json!({"refresh_token": token}));
            }
            Op::Logout => {
                // Logout signs out the caller's own device: a fresh one.
                let who = match caller {
                    Owner => Some(("olive", self.password.clone())),
                    Other => Some(("xavier", PW.to_owned())),
                    Admin => Some(("root", PW.to_owned())),
                    _ => None,
                };
                if let Some((name, pw)) = who {
                    let l = self
                        .api
                        .login(name, &pw, "other", &format!("to sign out {n}"))
                        .await;
                    a.token = Some(l.access);
                    changed = caller == Owner;
                }
            }
            Op::UpdateMe => a.body = Some(json!({"display_name": format!("Name {n}")})),
            Op::ChangePassword => {
                a.body = Some(json!({
                    "current_password": self.password,
                    "new_password": format!("olive's next secret {n}"),
                }));
            }
            Op::RenameDevice | Op::RevokeDevice => {
                a.path = format!("/api/v1/devices/{}", self.watch.device);
                if r.op == Op::RenameDevice {
                    a.body = Some(json!({"label": format!("renamed {n}")}));
                }
            }
            Op::DisableAccount | Op::EnableAccount | Op::ResetPassword => {
                a.path = r.path.replace("{id}", &olive.to_string());
                if r.op == Op::ResetPassword {
                    a.body = Some(json!({"new_password": format!("olive's reset secret {n}")}));
                }
            }
            Op::CreateContact => a.body = Some(json!({"display_name": format!("Entry {n}")})),
            Op::UpdateContact | Op::DeleteContact => {
                let (id, version);
                (id, version, changed) = self.owners_contact().await;
                if r.op == Op::UpdateContact {
                    a.path = format!("/api/v1/contacts/{id}");
                    // The right version: a refusal is for whose entry it
                    // is, not for a stale edit.
                    a.body =
                        Some(json!({"display_name": format!("Edited {n}"), "version": version}));
                } else {
                    a.path = format!("/api/v1/contacts/{id}?version={version}");
                }
            }
            Op::SendRequest => a.body = Some(json!({"username": "tess", "message": "hello"})),
            Op::DeleteRequest | Op::AcceptRequest => {
                let id;
                (id, changed) = self.pending_request().await;
                a.path = r.path.replace("{id}", &id.to_string());
            }
            Op::RemoveMutual => {
                changed = self.linked_to_fern().await;
                a.path = format!("/api/v1/mutual-contacts/{}", self.fern.account);
            }
            Op::SetPresence => a.body = Some(json!({"status": "dnd", "text": format!("busy {n}")})),
            Op::PlaceCall => {
                changed = self.hang_up_all().await;
                a.body = Some(json!({"to": [self.tess.account]}));
            }
            Op::AcceptCall | Op::DeclineCall => {
                let id;
                (id, changed) = self.ringing_call().await;
                a.path = r.path.replace("{id}", &id.to_string());
                a.body = Some(json!({}));
            }
            Op::CancelCall => {
                let id;
                (id, changed) = self.outgoing_call().await;
                a.path = r.path.replace("{id}", &id.to_string());
                a.body = Some(json!({}));
            }
            Op::LeaveCall | Op::AddToCall | Op::CallMessage => {
                let id;
                (id, changed) = self.active_call().await;
                a.path = r.path.replace("{id}", &id.to_string());
                a.body = Some(match r.op {
                    Op::AddToCall => json!({"to": [self.tess.account]}),
                    Op::CallMessage => json!({"text": format!("message {n}")}),
                    _ => json!({}),
                });
            }
            Op::MissedSeen => changed = self.missed_call().await,
            Op::CallSettings => a.body = Some(json!({"dnd": true, "allow": "nobody"})),
            Op::CreateRoom => {
                // An existing room is returned unchanged, whoever asks.
                a.body = Some(json!({"name": ROOM, "max_participants": 1, "metadata": "taken"}));
            }
            Op::DeleteRoom => a.path = format!("/api/v1/rooms/{ROOM}"),
            Op::UpdateParticipant | Op::RemoveParticipant => {
                a.path = format!("/api/v1/rooms/{ROOM}/participants/{}", self.identity());
                if r.op == Op::UpdateParticipant {
                    a.body =
                        Some(json!({"permission": {"can_publish": false, "can_subscribe": false}}));
                }
            }
            Op::MuteTrack => {
                let p = self
                    .api
                    .get(
                        &format!("/api/v1/rooms/{ROOM}/participants/{}", self.identity()),
                        &self.admin.access,
                    )
                    .await
                    .ok(200);
                let track = p["tracks"][0]["id"].as_str().unwrap().to_owned();
                a.path = format!(
                    "/api/v1/rooms/{ROOM}/participants/{}/tracks/{track}/mute",
                    self.identity()
                );
                a.body = Some(json!({"muted": true}));
            }
            Op::SendData => {
                a.path = format!("/api/v1/rooms/{ROOM}/data");
                let payload = base64::engine::general_purpose::STANDARD.encode("to olive");
                a.body = Some(json!({"payload": payload, "topic": "t"}));
            }
            Op::MintToken => a.body = Some(json!({"identity": format!("minted{n}"), "room": ROOM})),
            Op::EndWhip | Op::EndWhep => {
                let peer = if r.op == Op::EndWhip {
                    &self.whip
                } else {
                    &self.whep
                };
                a.path = peer.as_ref().unwrap().location.clone().unwrap();
            }
        }
        if changed {
            self.settle().await;
        }
        a
    }

    /// After an allowed request: undoes what would keep the next rows from
    /// running, or sets the owner's sessions up again where it ended them.
    async fn after_allowed(&mut self, r: &Row, caller: Caller, resp: &Resp) {
        match (r.op, caller) {
            (Op::Refresh, Owner) => self.act = Login::from(resp.body.clone()),
            (Op::ChangePassword, Owner) | (Op::ResetPassword, Admin) => {
                // Every other device is signed out, the room session too.
                let n = self.n;
                self.password = if r.op == Op::ChangePassword {
                    format!("olive's next secret {n}")
                } else {
                    format!("olive's reset secret {n}")
                };
                self.sign_in_again().await;
            }
            (Op::RevokeDevice, Owner) | (Op::DisableAccount, Admin) => self.sign_in_again().await,
            (Op::PlaceCall, _) => {
                let id = resp.body["call"]["id"].as_i64().unwrap();
                let token = self.token(r.kind, caller).unwrap();
                self.api
                    .post(
                        &format!("/api/v1/calls/{id}/cancel"),
                        Some(&token),
                        json!({}),
                    )
                    .await
                    .ok(200);
            }
            (Op::CallSettings, _) => {
                let token = self.token(r.kind, caller).unwrap();
                self.api
                    .put(
                        "/api/v1/calls/settings",
                        &token,
                        json!({"dnd": false, "allow": "contacts"}),
                    )
                    .await
                    .ok(200);
            }
            (
                Op::UpdateParticipant
                | Op::MuteTrack
                | Op::RemoveParticipant
                | Op::DeleteRoom
                | Op::EndWhip
                | Op::EndWhep,
                _,
            ) => self.restart_room().await,
            _ => {}
        }
    }

    /// Logs the owner in again on two new devices (enabling the account
    /// first, should the admin have disabled it), with a new socket and
    /// room session.
    async fn sign_in_again(&mut self) {
        self.api
            .post(
                &format!("/api/v1/admin/accounts/{}/enable", self.watch.account),
                Some(&self.admin.access),
                json!({}),
            )
            .await
            .ok(200);
        let n = self.next();
        self.watch = self
            .api
            .login(
                "olive",
                &self.password,
                "phone",
                &format!("olive's phone {n}"),
            )
            .await;
        self.act = self
            .api
            .login(
                "olive",
                &self.password,
                "desktop",
                &format!("olive's desktop {n}"),
            )
            .await;
        self.sock = DeviceClient::connect(&self.s, &self.watch.access, None).await;
        self.restart_room().await;
    }

    /// Closes the owner's room sessions and opens them again: the watched
    /// device in the room over `/ws` and, with `media`, publishing, and the
    /// acting device by WHIP and WHEP. Waits until the room shows them.
    async fn restart_room(&mut self) {
        // A dropped socket could be resumed, an abandoned WHIP session
        // lingers until ICE gives up: leave explicitly (whatever is left).
        if let Some(mut h) = self.home.take() {
            use futures_util::SinkExt;
            let leave = json!({"type": "leave"}).to_string();
            let _ = h.ws.inner.send(Message::Text(leave.into())).await;
            let _ = h.ws.inner.close(None).await;
            h.peer.close().await;
        }
        for p in [self.whip.take(), self.whep.take()].into_iter().flatten() {
            if let Some(location) = &p.location {
                self.api.delete(location, &self.act.access).await;
            }
            p.close().await;
        }
        // Until the old session's leave is through, a new join could find
        // the room closing; wait for it to be empty (or gone).
        self.wait_room(0).await;
        let home =
            SessionClient::join_room(&self.s, &self.watch.access, Some(ROOM), None, self.media)
                .await
                .unwrap_or_else(|e| panic!("the owner's join refused: {e}"));
        self.home = Some(home);
        if self.media {
            let base = common::base(&self.s);
            let whip = Peer::http(&format!("{base}/whip/{ROOM}"), &self.act.access, true)
                .await
                .unwrap_or_else(|e| panic!("the owner's WHIP refused: {e:?}"));
            let whep = Peer::http(&format!("{base}/whep/{ROOM}"), &self.act.access, false)
                .await
                .unwrap_or_else(|e| panic!("the owner's WHEP refused: {e:?}"));
            self.whip = Some(whip);
            self.whep = Some(whep);
            self.wait_room(2).await;
        } else {
            self.wait_room(1).await;
        }
        self.settle().await;
    }

    /// Waits (20 s at most: joins are slow on a loaded machine) until the
    /// room has `n` participants, each with all its tracks (two when
    /// publishing), and every peer connected.
    async fn wait_room(&mut self, n: usize) {
        let tracks = if self.media { 2 } else { 0 };
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = self
                .api
                .get(
                    &format!("/api/v1/rooms/{ROOM}/participants"),
                    &self.admin.access,
                )
                .await;
            let ps = r.body["participants"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let ready = if n == 0 {
                r.status == 404 || ps.is_empty()
            } else {
                r.status == 200
                    && ps.len() == n
                    && ps
                        .iter()
                        .all(|p| p["tracks"].as_array().map(Vec::len) == Some(tracks))
                    && self.home.as_ref().is_some_and(|h| h.peer.connected())
                    && [&self.whip, &self.whep]
                        .iter()
                        .all(|p| p.as_ref().is_none_or(Peer::connected))
            };
            if ready {
                return;
            }
            assert!(
                tokio::time::Instant::now() < end,
                "the owner's room did not settle at {n} participants: {:?}",
                r.body
            );
            if let Some(h) = self.home.as_mut() {
                h.pump(Duration::from_millis(50)).await;
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Lets what was set up arrive: reads the owner's socket and room
    /// session until both are quiet (200 ms without a message; 5 s at most).
    async fn settle(&mut self) {
        let end = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            assert!(
                tokio::time::Instant::now() < end,
                "the owner's sockets never went quiet"
            );
            let quiet = Duration::from_millis(200);
            let (sock, home) = (&mut self.sock, &mut self.home);
            let (sock, room) = tokio::join!(sock.next_within(quiet), async {
                match home.as_mut() {
                    Some(h) => {
                        let n = h.seen.len();
                        h.pump(quiet).await;
                        h.seen.len() > n
                    }
                    None => false,
                }
            });
            match sock {
                Some(Seen::Closed(c)) => panic!("the owner's device socket closed ({c:?})"),
                Some(Seen::Msg(_)) => continue,
                None if room => continue,
                None => return,
            }
        }
    }

    /// After a row's refused attempts: the owner's device socket is open and
    /// was told nothing, the room session was told nothing, and the watched
    /// device's refresh token still works.
    async fn assert_untouched(&mut self, ctx: &str) {
        let d = Duration::from_millis(250);
        let (sock, home) = (&mut self.sock, &mut self.home);
        let (seen, room) = tokio::join!(sock.collect(d), async {
            match home.as_mut() {
                Some(h) => {
                    let n = h.seen.len();
                    h.pump(d).await;
                    // The server's periodic connection quality reports come
                    // whatever is refused.
                    h.seen[n..]
                        .iter()
                        .filter(|v| v["type"] != "connection_quality")
                        .cloned()
                        .collect()
                }
                None => Vec::new(),
            }
        });
        assert!(
            seen.is_empty(),
            "{ctx}: the owner's device socket got {seen:?}"
        );
        assert!(
            room.is_empty(),
            "{ctx}: the owner's room session got {room:?}"
        );
        let r = self.api.refresh(&self.watch.refresh).await;
        assert_eq!(
            r.status, 200,
            "{ctx}: the owner's refresh token: {:?}",
            r.body
        );
        self.watch = Login::from(r.body);
    }

    /// Everything the owner can observe, as she sees it (and her room as
    /// an admin sees it).
    async fn snapshot(&self) -> Value {
        let mut snap = serde_json::Map::new();
        for (key, path) in [
            ("me", "/api/v1/me"),
            ("devices", "/api/v1/devices"),
            ("contacts", "/api/v1/contacts"),
            ("contact_changes", "/api/v1/contacts/changes?since=0"),
            ("contact_requests", "/api/v1/contact-requests"),
            ("mutual_contacts", "/api/v1/mutual-contacts"),
            ("presence", "/api/v1/presence"),
            ("call_settings", "/api/v1/calls/settings"),
            ("call_history", "/api/v1/calls/history"),
            ("calls_active", "/api/v1/calls/active"),
            ("missed_calls", "/api/v1/calls/missed-count"),
        ] {
            let r = self.api.get(path, &self.watch.access).await;
            assert_eq!(r.status, 200, "GET {path} as the owner: {:?}", r.body);
            snap.insert(key.into(), r.body);
        }
        let mut room = self
            .api
            .get(&format!("/api/v1/rooms/{ROOM}"), &self.admin.access)
            .await
            .ok(200);
        room.as_object_mut().unwrap().remove("age_secs");
        snap.insert("room".into(), room);
        let ps = self
            .api
            .get(
                &format!("/api/v1/rooms/{ROOM}/participants"),
                &self.admin.access,
            )
            .await
            .ok(200);
        snap.insert("participants".into(), ps);
        Value::Object(snap)
    }

    /// The owner's first address book entry (made if there is none): id,
    /// version, whether one was made.
    async fn owners_contact(&mut self) -> (i64, i64, bool) {
        let list = self
            .api
            .get("/api/v1/contacts", &self.watch.access)
            .await
            .ok(200);
        if let Some(c) = list["contacts"].as_array().unwrap().first() {
            return (
                c["id"].as_i64().unwrap(),
                c["version"].as_i64().unwrap(),
                false,
            );
        }
        let c = self
            .api
            .post(
                "/api/v1/contacts",
                Some(&self.act.access),
                json!({"display_name": "Ann"}),
            )
            .await
            .ok(201);
        (
            c["id"].as_i64().unwrap(),
            c["version"].as_i64().unwrap(),
            true,
        )
    }

    /// Paul's pending request to the owner (he asks again if there is
    /// none, first ending their link if they have one): its id, whether
    /// anything was done.
    async fn pending_request(&mut self) -> (i64, bool) {
        let reqs = self
            .api
            .get("/api/v1/contact-requests", &self.watch.access)
            .await
            .ok(200);
        let paul = self.paul.account;
        if let Some(r) = reqs["incoming"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["from"]["id"] == paul)
        {
            return (r["id"].as_i64().unwrap(), false);
        }
        let _ = self
            .api
            .delete(&format!("/api/v1/mutual-contacts/{paul}"), &self.act.access)
            .await;
        let r = self
            .api
            .post(
                "/api/v1/contact-requests",
                Some(&self.paul.access),
                json!({"username": "olive"}),
            )
            .await
            .ok(201);
        (r["request"]["id"].as_i64().unwrap(), true)
    }

    /// Links the owner and fern again if the link ended; whether it had.
    async fn linked_to_fern(&mut self) -> bool {
        let list = self
            .api
            .get("/api/v1/mutual-contacts", &self.watch.access)
            .await
            .ok(200);
        let fern = self.fern.account;
        if list["contacts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == fern)
        {
            return false;
        }
        self.api.link(&self.fern, &self.act).await;
        true
    }

    /// The calls `who` rings for or is in.
    async fn calls_of(&self, who: &Login) -> Vec<Value> {
        let r = self
            .api
            .get("/api/v1/calls/active", &who.access)
            .await
            .ok(200);
        r["calls"].as_array().unwrap().clone()
    }

    /// `who`'s state in `call`.
    fn state_in(call: &Value, who: &Login) -> String {
        call["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["account_id"] == who.account)
            .map(|m| m["state"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Ends every call anyone here rings for or is in; whether there was one.
    async fn hang_up_all(&mut self) -> bool {
        let mut any = false;
        for _ in 0..5 {
            let mut found = false;
            for who in [&self.act, &self.other, &self.admin, &self.paul, &self.tess] {
                for call in self.calls_of(who).await {
                    let id = call["id"].as_i64().unwrap();
                    let action = match Self::state_in(&call, who).as_str() {
                        "ringing" => "decline",
                        "joined" => "leave",
                        _ => continue,
                    };
                    self.api
                        .post(
                            &format!("/api/v1/calls/{id}/{action}"),
                            Some(&who.access),
                            json!({}),
                        )
                        .await
                        .ok(200);
                    found = true;
                }
            }
            if !found {
                return any;
            }
            any = true;
        }
        panic!("calls kept going after hanging up five times");
    }

    /// Paul calls the owner (do-not-disturb off); returns the call's id.
    async fn paul_calls_olive(&mut self) -> i64 {
        let s = self
            .api
            .get("/api/v1/calls/settings", &self.watch.access)
            .await
            .ok(200);
        assert_eq!(s["dnd"], false, "the owner's do-not-disturb was left on");
        let r = self
            .api
            .post(
                "/api/v1/calls",
                Some(&self.paul.access),
                json!({"to": [self.watch.account]}),
            )
            .await
            .ok(201);
        assert_eq!(Self::state_in(&r["call"], &self.watch), "ringing", "{r}");
        r["call"]["id"].as_i64().unwrap()
    }

    /// A call from paul ringing the owner.
    async fn ringing_call(&mut self) -> (i64, bool) {
        for c in self.calls_of(&self.act).await {
            if c["caller"] == self.paul.account && Self::state_in(&c, &self.act) == "ringing" {
                return (c["id"].as_i64().unwrap(), false);
            }
        }
        self.hang_up_all().await;
        (self.paul_calls_olive().await, true)
    }

    /// A call from the owner ringing paul.
    async fn outgoing_call(&mut self) -> (i64, bool) {
        for c in self.calls_of(&self.act).await {
            if c["caller"] == self.act.account && c["state"] == "ringing" {
                return (c["id"].as_i64().unwrap(), false);
            }
        }
        self.hang_up_all().await;
        let r = self
            .api
            .post(
                "/api/v1/calls",
                Some(&self.act.access),
                json!({"to": [self.paul.account]}),
            )
            .await
            .ok(201);
        (r["call"]["id"].as_i64().unwrap(), true)
    }

    /// A call the owner is in with paul.
    async fn active_call(&mut self) -> (i64, bool) {
        for c in self.calls_of(&self.act).await {
            if c["state"] == "active" && Self::state_in(&c, &self.act) == "joined" {
                return (c["id"].as_i64().unwrap(), false);
            }
        }
        self.hang_up_all().await;
        let id = self.paul_calls_olive().await;
        self.api
            .post(
                &format!("/api/v1/calls/{id}/accept"),
                Some(&self.act.access),
                json!({}),
            )
            .await
            .ok(200);
        (id, true)
    }

    /// An unseen missed call of the owner's (tess calls while she is in a
    /// call: busy); whether one was made.
    async fn missed_call(&mut self) -> bool {
        let m = self
            .api
            .get("/api/v1/calls/missed-count", &self.watch.access)
            .await
            .ok(200);
        if m["count"].as_i64().unwrap() > 0 {
            return false;
        }
        self.active_call().await;
        self.api
            .post(
                "/api/v1/calls",
                Some(&self.tess.access),
                json!({"to": [self.watch.account]}),
            )
            .await
            .ok(201);
        self.hang_up_all().await;
        let m = self
            .api
            .get("/api/v1/calls/missed-count", &self.watch.access)
            .await
            .ok(200);
        assert_eq!(m["count"], 1, "a busy call is a missed call");
        true
    }

    /// The end: the owner's socket is still open and her refresh token
    /// works; the server stops.
    async fn finish(mut self) {
        self.assert_untouched("at the end").await;
        if let Some(mut h) = self.home.take() {
            let _ = h.ws.inner.close(None).await;
            h.peer.close().await;
        }
        for p in [self.whip.take(), self.whep.take()].into_iter().flatten() {
            p.close().await;
        }
        self.s.shutdown().await;
    }
}
