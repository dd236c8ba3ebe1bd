//! The store against both backends: every test runs on SQLite (in memory,
//! or a file where several connections matter) and on a fresh database of
//! the test process's throwaway PostgreSQL (`vela_testkit`).

use super::*;
use crate::domain::account::Role;
use crate::domain::call::state::Invitee;
use crate::domain::call::{Calls, OpenCall, Output, Person};
use crate::domain::contact::{ContactBody, ContactFields, ContactFilter};
use crate::domain::device::DeviceKind;
use crate::domain::ids::{AccountId, CallId, ContactId, DeviceId};

/// Bounds every test: a hung database fails it rather than the run.
async fn within_limit<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(std::time::Duration::from_secs(60), test)
        .await
        .expect("the test finished in time");
}

/// A new empty PostgreSQL database (the server starts on first use).
async fn postgres_location() -> StoreLocation {
    let url = tokio::task::spawn_blocking(|| vela_testkit::Postgres::shared().database().url)
        .await
        .expect("start PostgreSQL");
    StoreLocation::Postgres { url }
}

/// A new SQLite file in a folder of its own (removed by the caller).
fn sqlite_file_location() -> (StoreLocation, std::path::PathBuf) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vela-store-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("store.sqlite").to_string_lossy().into_owned();
    (StoreLocation::Sqlite { path }, dir)
}

/// `on_both! { async fn name(s) { ... } }`: the body, given a [`Store`],
/// as two tests, `name::sqlite` (in memory) and `name::postgres`.
macro_rules! on_both {
    (async fn $name:ident($s:ident) $body:block) => {
        mod $name {
            use super::*;

            async fn run($s: Store) $body

            #[tokio::test]
            async fn sqlite() {
                within_limit(async {
                    run(Store::open(":memory:").await.expect("open")).await
                })
                .await
            }

            #[tokio::test]
            async fn postgres() {
                within_limit(async {
                    let at = postgres_location().await;
                    run(Store::connect(&at).await.expect("connect")).await
                })
                .await
            }
        }
    };
}

/// `on_shared! { async fn name(at) { ... } }`: the body, given a
/// [`StoreLocation`] it may open several times (several nodes, or several
/// connections), on a multi-threaded runtime, as two tests: `name::sqlite`
/// (a file) and `name::postgres`.
macro_rules! on_shared {
    (async fn $name:ident($at:ident) $body:block) => {
        mod $name {
            use super::*;

            async fn run($at: StoreLocation) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let (at, dir) = sqlite_file_location();
                within_limit(run(at)).await;
                let _ = std::fs::remove_dir_all(&dir);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                within_limit(async { run(postgres_location().await).await }).await
            }
        }
    };
}

fn fields(name: &str) -> ContactFields {
    ContactBody {
        version: None,
        display_name: name.into(),
        phones: vec![],
        emails: vec![],
        groups: vec!["work".into()],
        linked_account: None,
        linked_username: None,
        favorite: false,
        notes: String::new(),
    }
    .validate()
    .expect("valid")
}

async fn account(s: &Store, name: &str) -> AccountId {
    s.create_account(name, name, "hash", &[Role::User], 1)
        .await
        .expect("create")
        .id
}

on_both! {
async fn revisions_versions_and_tombstones(s) {
    let a = account(&s, "ann").await;
    let b = account(&s, "bob").await;
    assert!(matches!(
        s.create_account("ann", "x", "h", &[Role::User], 1).await,
        Err(StoreError::Conflict)
    ));
    let c1 = s.create_contact(a, &fields("Carl"), 10).await.expect("c1");
    let c2 = s.create_contact(a, &fields("Dora"), 11).await.expect("c2");
    assert_eq!((c1.version, c1.revision, c2.revision), (1, 1, 2));
    // Another account's book has its own revisions and sees nothing of a's.
    let other = s.create_contact(b, &fields("Eve"), 12).await.expect("b's");
    assert_eq!(other.revision, 1);
    assert!(s.contact(b, c1.id).await.expect("read").is_none());
    assert!(matches!(
        s.update_contact(b, c1.id, 1, &fields("X"), 13).await,
        Err(ContactWriteError::NotFound)
    ));

    let c1b = s
        .update_contact(a, c1.id, 1, &fields("Carl B"), 20)
        .await
        .expect("update");
    assert_eq!((c1b.version, c1b.revision), (2, 3));
    // A stale update changes nothing, not even the revision.
    match s.update_contact(a, c1.id, 1, &fields("Lost"), 21).await {
        Err(ContactWriteError::Stale { based_on, current }) => {
            assert_eq!(based_on, 1);
            assert_eq!(*current, c1b);
        }
        other => panic!("expected Stale, got {other:?}"),
    }
    assert_eq!(s.contacts_revision(a).await.expect("rev"), 3);
    let t = s.delete_contact(a, c2.id, None, 30).await.expect("delete");
    assert!(t.deleted && t.fields.is_none());
    assert_eq!((t.version, t.revision), (2, 4));
    assert!(matches!(
        s.delete_contact(a, c2.id, None, 31).await,
        Err(ContactWriteError::NotFound)
    ));

    let page = s.contact_changes(a, 2, 100).await.expect("changes");
    assert_eq!(page.revision, 4);
    let ids: Vec<(ContactId, bool)> = page.changes.iter().map(|c| (c.id, c.deleted)).collect();
    assert_eq!(ids, vec![(c1.id, false), (c2.id, true)]);
    // From 0: live entries only.
    let full = s.contact_changes(a, 0, 100).await.expect("full");
    assert_eq!(full.changes.len(), 1);
    // Paging: one at a time.
    let p1 = s.contact_changes(a, 2, 1).await.expect("page");
    assert!(p1.has_more);
    assert_eq!(p1.revision, 3);
    let p2 = s.contact_changes(a, p1.revision, 1).await.expect("page");
    assert!(!p2.has_more);
    assert_eq!(p2.revision, 4);

    let (list, rev) = s
        .list_contacts(
            a,
            &ContactFilter {
                q: Some("carl".into()),
                favorite: None,
                group: Some("work".into()),
            },
        )
        .await
        .expect("list");
    assert_eq!((list.len(), rev), (1, 4));

    // Linking a missing account is refused; linking a real one shows its username.
    let mut linked = fields("Bob");
    linked.linked_account = Some(AccountId(999));
    assert!(matches!(
        s.create_contact(a, &linked, 40).await,
        Err(ContactWriteError::NoSuchLinkedAccount)
    ));
    linked.linked_account = Some(b);
    let l = s.create_contact(a, &linked, 41).await.expect("linked");
    assert_eq!(l.linked_username.as_deref(), Some("bob"));
}
}

on_both! {
async fn devices_refresh_tokens_and_links(s) {
    let a = account(&s, "ann").await;
    let b = account(&s, "bob").await;
    let d = s
        .create_device(a, DeviceKind::Phone, "Pixel", 5)
        .await
        .expect("device");
    assert_eq!(
        s.sign_in_state(a, d.id).await.expect("state"),
        SignInState::Active
    );
    assert_eq!(
        s.sign_in_state(b, d.id).await.expect("state"),
        SignInState::Unknown
    );
    s.insert_refresh_token(d.id, b"t1", 1000)
        .await
        .expect("insert");
    assert_eq!(
        s.rotate_refresh_token(b"t1", b"t2", 2000, 10)
            .await
            .expect("rotate"),
        RefreshOutcome::Rotated {
            account: a,
            device: d.id
        }
    );
    assert_eq!(
        s.rotate_refresh_token(b"t1", b"t3", 2000, 11)
            .await
            .expect("reuse"),
        RefreshOutcome::Reused {
            account: a,
            device: d.id
        }
    );
    assert_eq!(
        s.rotate_refresh_token(b"t2", b"t4", 3000, 2000)
            .await
            .expect("expired"),
        RefreshOutcome::Invalid
    );
    assert!(s.revoke_device(a, d.id, 50).await.expect("revoke"));
    assert!(!s.revoke_device(a, d.id, 51).await.expect("again"));
    assert_eq!(
        s.sign_in_state(a, d.id).await.expect("state"),
        SignInState::Revoked
    );
    assert!(s.devices(a).await.expect("list").is_empty());

    use crate::domain::link::RequestOutcome;
    let r = match s.create_request(a, b, "hi", 60).await.expect("request") {
        RequestOutcome::Pending(r) => r,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        s.create_request(a, b, "again", 61).await,
        Err(StoreError::Conflict)
    ));
    assert!(
        s.accept_request(r.id, a, 62)
            .await
            .expect("wrong side")
            .is_none()
    );
    assert!(
        s.accept_request(r.id, b, 62)
            .await
            .expect("accept")
            .is_some()
    );
    assert!(s.is_mutual(b, a).await.expect("mutual"));
    assert_eq!(s.mutual_ids(a).await.expect("ids"), vec![b]);
    assert!(matches!(
        s.create_request(b, a, "", 63).await,
        Err(StoreError::Conflict)
    ));
    assert!(s.remove_mutual(b, a).await.expect("remove"));
    // Crossed requests link at once.
    assert!(matches!(
        s.create_request(a, b, "", 64).await,
        Ok(RequestOutcome::Pending(_))
    ));
    assert!(matches!(
        s.create_request(b, a, "", 65).await,
        Ok(RequestOutcome::Mutual)
    ));
    assert!(s.is_mutual(a, b).await.expect("mutual"));
}
}

on_both! {
async fn devices_whose_sessions_ran_out_are_found_and_their_tokens_dropped(s) {
    let a = account(&s, "ann").await;
    let device = |label: &'static str, at: i64| {
        let s = &s;
        async move {
            s.create_device(a, DeviceKind::Web, label, at)
                .await
                .expect("device")
                .id
        }
    };
    // Idle since 100; its token expired at 500.
    let gone = device("gone", 100).await;
    s.insert_refresh_token(gone, b"g1", 500)
        .await
        .expect("token");
    // Idle as long, but its token is good until 5000.
    let kept = device("kept", 100).await;
    s.insert_refresh_token(kept, b"k1", 5000)
        .await
        .expect("token");
    // Its unused token expired, a used one is still "valid" (kept for reuse
    // detection only): it cannot refresh either.
    let used = device("used", 100).await;
    s.insert_refresh_token(used, b"u1", 400)
        .await
        .expect("token");
    s.insert_refresh_token(used, b"u0", 5000)
        .await
        .expect("token");
    with_pool!(s, |pool| sqlx::query(
        "UPDATE refresh_tokens SET rotated_at = 90 WHERE token_hash = $1"
    )
    .bind(&b"u0"[..])
    .execute(pool)
    .await
    .map(|_| ()))
    .expect("mark used");
    // Recently active (a login just now, its token not stored yet).
    let fresh = device("fresh", 950).await;
    // Already revoked.
    let revoked = device("revoked", 100).await;
    s.revoke_device(a, revoked, 200).await.expect("revoke");

    let found = s.expired_devices(1000, 900).await.expect("expired");
    assert_eq!(found, vec![(a, gone), (a, used)]);
    let _ = (kept, fresh);
    assert_eq!(
        s.delete_expired_refresh_tokens(1000).await.expect("delete"),
        2
    );
    // The kept device still refreshes.
    assert!(matches!(
        s.rotate_refresh_token(b"k1", b"k2", 9000, 1000).await,
        Ok(RefreshOutcome::Rotated { .. })
    ));
}
}

on_both! {
async fn signing_out_all_devices_but_one_drops_their_tokens_only(s) {
    let a = account(&s, "ann").await;
    let b = account(&s, "bob").await;
    let mut devices = Vec::new();
    for (i, owner) in [(1u8, a), (2, a), (3, a), (4, b)] {
        let d = s.create_device(owner, DeviceKind::Web, "w", 5).await.expect("device");
        s.insert_refresh_token(d.id, &[i], 10_000).await.expect("token");
        devices.push(d.id);
    }
    let revoked = s
        .revoke_devices(a, Some(devices[0]), 50)
        .await
        .expect("revoke");
    assert_eq!(revoked, vec![devices[1], devices[2]]);
    assert_eq!(s.devices(a).await.expect("list").len(), 1);
    // The kept device and another account's still refresh; the others not.
    for (token, rotates) in [(1u8, true), (2, false), (3, false), (4, true)] {
        let outcome = s
            .rotate_refresh_token(&[token], &[token, 0], 10_000, 60)
            .await
            .expect("rotate");
        assert_eq!(
            matches!(outcome, RefreshOutcome::Rotated { .. }),
            rotates,
            "token {token}: {outcome:?}"
        );
    }
    // Without a device to keep: all of them.
    assert_eq!(s.revoke_devices(a, None, 70).await.expect("all"), vec![devices[0]]);
    assert!(s.devices(a).await.expect("list").is_empty());
}
}

on_shared! {
async fn concurrent_writers_queue_and_one_edit_wins(at) {
    let s = Store::connect(&at).await.expect("open");
    let a = account(&s, "ann").await;
    let c = s
        .create_contact(a, &fields("Base"), 1)
        .await
        .expect("create");
    // Twenty concurrent edits of version 1: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.update_contact(a, c.id, 1, &fields(&format!("Edit {i}")), 2)
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => won += 1,
            Err(ContactWriteError::Stale { current, .. }) => assert_eq!(current.version, 2),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
    assert_eq!(s.contacts_revision(a).await.expect("rev"), 2);
    // And twenty concurrent creates all land, with distinct revisions.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.create_contact(a, &fields(&format!("New {i}")), 3).await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("create");
    }
    assert_eq!(s.contacts_revision(a).await.expect("rev"), 22);
    s.close().await;
}
}

/// Call `id` from `a` to `b` placed at `at` (and answered at `answered`),
/// as the calls machine keeps it.
fn open_call(id: i64, a: AccountId, b: AccountId, at: i64, answered: Option<i64>) -> OpenCall {
    let minute = std::time::Duration::from_secs(60);
    let mut calls = Calls::new(CallId(id), minute, minute, 8);
    let person = |x: AccountId| Person {
        account_id: x,
        username: format!("u{}", x.0),
        display_name: String::new(),
    };
    let invitee = Invitee {
        person: person(b),
        filtered: false,
    };
    calls
        .handle_invite(at, person(a), DeviceId(1), vec![invitee], false)
        .expect("invite");
    if let Some(t) = answered {
        calls
            .handle_accept(t, CallId(id), b, DeviceId(2), None)
            .expect("accept");
    }
    std::iter::from_fn(|| calls.poll_output())
        .filter_map(|o| match o {
            Output::Journal(_, Some(open)) => Some(*open),
            _ => None,
        })
        .last()
        .expect("journaled")
}

on_both! {
async fn calls_a_crash_left_open_become_history_once(s) {
    let a = account(&s, "ann").await;
    let b = account(&s, "bob").await;
    // Call 7: answered at 1 500; call 8 rang, was kept twice, then ended
    // normally (its row removed).
    s.put_open_call(CallId(7), &open_call(7, a, b, 1_000, Some(1_500)), 1_600)
        .await
        .expect("put");
    let ringing = open_call(8, a, b, 2_000, None);
    s.put_open_call(CallId(8), &ringing, 2_000)
        .await
        .expect("put");
    s.put_open_call(CallId(8), &ringing, 2_100)
        .await
        .expect("replace");
    s.remove_open_call(CallId(8)).await.expect("remove");
    // Call 9: Bob's entry was stored, then the crash came before the row went.
    let nine = open_call(9, a, b, 3_000, Some(3_100));
    s.put_open_call(CallId(9), &nine, 3_100).await.expect("put");
    let bobs = nine
        .records
        .iter()
        .find(|r| r.account_id == b)
        .expect("bob's");
    s.add_call_record(bobs).await.expect("stored");
    assert_eq!(s.next_call_id().await.expect("next"), CallId(10));
    s.mark_alive(60_000).await.expect("alive");

    let calls = s.recover_open_calls(100_000).await.expect("recover");
    // Calls 7 and 9, ended at the last heartbeat; of call 9 only Ann's entry.
    let ids: Vec<CallId> = calls.iter().map(|c| c.call.id).collect();
    assert_eq!(ids, vec![CallId(7), CallId(9)]);
    assert!(calls.iter().all(|c| c.ended_at == 60_000));
    assert_eq!(calls[0].stored.len(), 2);
    assert!(calls[0].stored.iter().all(|r| r.duration_ms == 58_500));
    assert_eq!(calls[1].stored.len(), 1);
    assert_eq!(calls[1].stored[0].record.account_id, a);
    assert_eq!(s.call_history(a, None, 10).await.expect("history").len(), 2);
    assert_eq!(s.call_history(b, None, 10).await.expect("history").len(), 2);
    // Nothing is left to recover; the ids stay past every call.
    assert!(
        s.recover_open_calls(200_000)
            .await
            .expect("again")
            .is_empty()
    );
    assert_eq!(s.next_call_id().await.expect("next"), CallId(10));
}
}

on_both! {
async fn an_open_call_ends_no_later_than_the_restart(s) {
    let a = account(&s, "ann").await;
    let b = account(&s, "bob").await;
    // A heartbeat from a clock that was ahead: the call still ends by `now`,
    // and never before it was answered.
    s.mark_alive(90_000).await.expect("alive");
    s.put_open_call(CallId(1), &open_call(1, a, b, 1_000, Some(5_000)), 5_000)
        .await
        .expect("put");
    let calls = s.recover_open_calls(20_000).await.expect("recover");
    assert_eq!(calls[0].ended_at, 20_000);
    assert_eq!(calls[0].stored[0].record.ended_at, 20_000);
    s.put_open_call(CallId(2), &open_call(2, a, b, 30_000, Some(40_000)), 40_000)
        .await
        .expect("put");
    let calls = s.recover_open_calls(20_000).await.expect("recover");
    assert_eq!(calls[0].ended_at, 40_000);
    assert_eq!(calls[0].stored[0].record.ended_at, 40_000);
}
}

on_both! {
async fn accounts_present_at_a_crash_get_a_last_seen_time(s) {
    let a = account(&s, "ann").await;
    let b = account(&s, "bob").await;
    let c = account(&s, "cat").await;
    // Ann came online before the last heartbeat, Bob after it; Cat went
    // offline normally.
    s.set_present(a, 1_000).await.expect("present");
    s.set_present(b, 8_000).await.expect("present");
    s.set_present(c, 1_000).await.expect("present");
    s.set_last_seen(c, 2_000).await.expect("offline");
    s.mark_alive(5_000).await.expect("alive");
    assert_eq!(s.recover_presence(50_000).await.expect("recover"), 2);
    let seen = |x| {
        let s = s.clone();
        async move { s.presence(x).await.expect("read").last_seen_at }
    };
    assert_eq!(seen(a).await, Some(5_000));
    assert_eq!(seen(b).await, Some(8_000));
    assert_eq!(seen(c).await, Some(2_000));
    assert_eq!(s.recover_presence(60_000).await.expect("again"), 0);
}
}

on_shared! {
async fn two_nodes_racing_on_one_database_stay_consistent(at) {
    // Two nodes: two handles with their own connection pools.
    let n1 = Store::connect(&at).await.expect("node 1");
    let n2 = Store::connect(&at).await.expect("node 2");
    let node = |i: usize| if i.is_multiple_of(2) { n1.clone() } else { n2.clone() };
    let a = account(&n1, "ann").await;
    let b = account(&n2, "bob").await;

    // A stale edit loses whichever node makes it: of twenty edits of
    // version 1, one wins, the others see version 2.
    let c = n1.create_contact(a, &fields("Base"), 1).await.expect("create");
    let edits: Vec<_> = (0..20)
        .map(|i| {
            let s = node(i);
            tokio::spawn(async move {
                s.update_contact(a, c.id, 1, &fields(&format!("Edit {i}")), 2)
                    .await
            })
        })
        .collect();
    let mut won = 0;
    for t in edits {
        match t.await.expect("join") {
            Ok(_) => won += 1,
            Err(ContactWriteError::Stale { current, .. }) => assert_eq!(current.version, 2),
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);

    // One username, claimed on both nodes at once: one account.
    let signups: Vec<_> = (0..10)
        .map(|i| {
            let s = node(i);
            tokio::spawn(async move { s.create_account("cat", "Cat", "h", &[Role::User], 3).await })
        })
        .collect();
    let mut created = 0;
    for t in signups {
        match t.await.expect("join") {
            Ok(_) => created += 1,
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(created, 1);

    // One refresh token presented on both nodes at once: one rotation; the
    // rest is reuse, and only one new token was stored.
    let d = n1.create_device(a, DeviceKind::Phone, "p", 4).await.expect("device");
    n1.insert_refresh_token(d.id, b"old", 10_000).await.expect("token");
    let refreshes: Vec<_> = (0..10u8)
        .map(|i| {
            let s = node(usize::from(i));
            tokio::spawn(async move { s.rotate_refresh_token(b"old", &[b'n', i], 10_000, 5).await })
        })
        .collect();
    let mut rotated = 0;
    for t in refreshes {
        match t.await.expect("join").expect("rotate") {
            RefreshOutcome::Rotated { .. } => rotated += 1,
            RefreshOutcome::Reused { device, .. } => assert_eq!(device, d.id),
            RefreshOutcome::Invalid => panic!("the token is valid"),
        }
    }
    assert_eq!(rotated, 1);
    let unused: i64 = with_pool!(n1, |pool| sqlx::query_scalar(
        "SELECT COUNT(*) FROM refresh_tokens WHERE device_id = $1 AND rotated_at IS NULL"
    )
    .bind(d.id.0)
    .fetch_one(pool)
    .await)
    .expect("count");
    assert_eq!(unused, 1);

    // Logins on both nodes at once, with at most three devices: three live
    // at the end, every other one revoked by a later login.
    let logins: Vec<_> = (0..12)
        .map(|i| {
            let s = node(i);
            tokio::spawn(async move {
                s.create_device_within(b, DeviceKind::Web, "w", 10 + i as i64, 3).await
            })
        })
        .collect();
    let mut signed_out = 0;
    for t in logins {
        signed_out += t.await.expect("join").expect("login").1.len();
    }
    assert_eq!(n2.devices(b).await.expect("devices").len(), 3);
    assert_eq!(signed_out, 12 - 3);

    // Crossed contact requests made on two nodes at once meet: mutual, with
    // nothing left pending.
    use crate::domain::link::RequestOutcome;
    let (x, y) = (n1.clone(), n2.clone());
    let ab = tokio::spawn(async move { x.create_request(a, b, "", 20).await });
    let ba = tokio::spawn(async move { y.create_request(b, a, "", 20).await });
    let outcomes = [ab.await.expect("join"), ba.await.expect("join")];
    assert!(
        outcomes.iter().any(|o| matches!(o, Ok(RequestOutcome::Mutual))),
        "{outcomes:?}"
    );
    assert!(n1.is_mutual(a, b).await.expect("mutual"));
    let (incoming, outgoing) = n1.requests(a).await.expect("requests");
    assert!(incoming.is_empty() && outgoing.is_empty());
    n1.close().await;
    n2.close().await;
}
}

on_shared! {
async fn a_node_recovers_its_own_calls_and_presence_only(at) {
    let n1 = Store::connect(&at).await.expect("node 1").for_node("n1");
    let n2 = Store::connect(&at).await.expect("node 2").for_node("n2");
    assert_eq!((n1.node(), n2.node()), ("n1", "n2"));
    let a = account(&n1, "ann").await;
    let b = account(&n1, "bob").await;
    // Ann is online on node 1, Bob on node 2; each node runs a call.
    n1.set_present(a, 1_000).await.expect("present");
    n2.set_present(b, 1_000).await.expect("present");
    n1.put_open_call(CallId(1), &open_call(1, a, b, 1_000, Some(1_500)), 1_500)
        .await
        .expect("put");
    n2.put_open_call(CallId(2), &open_call(2, b, a, 1_000, Some(1_500)), 1_500)
        .await
        .expect("put");
    n1.mark_alive(5_000).await.expect("alive");
    n2.mark_alive(9_000).await.expect("alive");

    // Node 1 restarts after a crash: its call and Ann end at its own last
    // heartbeat; node 2's call and Bob are untouched.
    assert_eq!(n1.recover_presence(20_000).await.expect("recover"), 1);
    let calls = n1.recover_open_calls(20_000).await.expect("recover");
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].call.id, calls[0].ended_at), (CallId(1), 5_000));
    assert_eq!(n1.presence(a).await.expect("read").last_seen_at, Some(5_000));
    assert_eq!(n1.presence(b).await.expect("read").last_seen_at, None);
    assert!(n1.recover_open_calls(20_000).await.expect("again").is_empty());

    // Node 2's own recovery (were it to crash) finds its call and Bob.
    assert_eq!(n2.recover_presence(30_000).await.expect("recover"), 1);
    assert_eq!(n2.presence(b).await.expect("read").last_seen_at, Some(9_000));
    let calls = n2.recover_open_calls(30_000).await.expect("recover");
    assert_eq!(calls.len(), 1);
    assert_eq!((calls[0].call.id, calls[0].ended_at), (CallId(2), 9_000));
    n1.close().await;
    n2.close().await;
}
}

#[test]
fn a_postgres_location_never_shows_its_password() {
    let at = StoreLocation::Postgres {
        url: "postgres://vela:s3cret@db.example:5432/vela?sslmode=require&password=other".into(),
    };
    let shown = at.to_string();
    assert!(
        !shown.contains("s3cret") && !shown.contains("other"),
        "{shown}"
    );
    assert_eq!(
        shown,
        "postgres postgres://vela:***@db.example:5432/vela?sslmode=require&password=***"
    );
    let at = StoreLocation::Postgres {
        url: "postgres://vela@127.0.0.1:5432/db".into(),
    };
    assert_eq!(at.to_string(), "postgres postgres://vela@127.0.0.1:5432/db");
}

#[test]
fn the_configuration_picks_the_backend() {
    let mut config = vela_config::StoreConfig::default();
    assert_eq!(
        StoreLocation::from_config(&config).expect("default"),
        StoreLocation::Sqlite {
            path: config.path.clone()
        }
    );
    config.url = "postgres://u:p@h/d".into();
    assert_eq!(
        StoreLocation::from_config(&config).expect("postgres"),
        StoreLocation::Postgres {
            url: "postgres://u:p@h/d".into()
        }
    );
    config.url = "mysql://h/d".into();
    assert!(matches!(
        StoreLocation::from_config(&config),
        Err(StoreError::Location(_))
    ));
}

on_shared! {
async fn a_database_of_the_single_node_schema_upgrades_to_node_local(at) {
    use super::migrations::{Embedded, UpTo};
    // A database as the last single-node server left it (migrations 1 to
    // 3): a heartbeat, an account present at a crash, a call open.
    let old = "INSERT INTO node_alive (id, alive_at) VALUES (1, 5000)";
    let ann = "INSERT INTO accounts (username, display_name, password_hash, created_at,
                                     present_since)
               VALUES ('ann', 'Ann', 'h', 1, 1000)";
    let call = "INSERT INTO open_calls (call_id, body, updated_at) VALUES (1, '{}', 1000)";
    match &at {
        StoreLocation::Sqlite { path } => {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.expect("open");
            let m = sqlx::migrate::Migrator::new(UpTo(Embedded::Sqlite, 3)).await.expect("source");
            m.run(&pool).await.expect("migrate to 3");
            for sql in [old, ann, call] {
                sqlx::query(sql).execute(&pool).await.expect("insert");
            }
            pool.close().await;
        }
        StoreLocation::Postgres { url } => {
            let pool = sqlx::PgPool::connect(url).await.expect("connect");
            let m = sqlx::migrate::Migrator::new(UpTo(Embedded::Postgres, 3)).await.expect("source");
            m.run(&pool).await.expect("migrate to 3");
            for sql in [old, ann, call] {
                sqlx::query(sql).execute(&pool).await.expect("insert");
            }
            pool.close().await;
        }
    }
    // The new server (node "local") takes them as its own: Ann was last
    // seen at the old heartbeat. The call's body is unreadable, so it stays
    // for a person to look at; a named node finds none of it.
    let s = Store::connect(&at).await.expect("upgrade");
    let other = s.clone().for_node("n2");
    assert_eq!(other.recover_presence(9_000).await.expect("recover"), 0);
    assert_eq!(s.recover_presence(9_000).await.expect("recover"), 1);
    let a = s.account_by_username("ann").await.expect("read").expect("ann").0.id;
    assert_eq!(s.presence(a).await.expect("read").last_seen_at, Some(5_000));
    assert!(s.recover_open_calls(9_000).await.expect("recover").is_empty());
    let kept: Option<String> = with_pool!(s, |pool| sqlx::query_scalar(
        "SELECT node_id FROM open_calls WHERE call_id = 1"
    )
    .fetch_optional(pool)
    .await)
    .expect("read");
    assert_eq!(kept.as_deref(), Some(LOCAL_NODE));
    s.close().await;
}
}
