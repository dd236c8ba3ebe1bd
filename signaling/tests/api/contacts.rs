//! The network address book: CRUD, validation, incremental sync with
//! tombstones, conflict detection, and pushes to every device.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{DeviceClient, with_server};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

fn ann() -> Value {
    json!({
        "display_name": "Ann Smith",
        "phones": [{"label": "mobile", "value": "+44 20 7946 0018"}],
        "emails": [{"label": "work", "value": "ann@example.com"}],
        "groups": ["work"],
        "favorite": true,
        "notes": "met at the conference",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_read_update_delete_and_validation() {
    with_server(LIMIT, async |_, api| {
        let me = api.user("mia", "phone").await;
        let other = api.user("ned", "web").await;
        let t = &me.access;

        let c = api.post("/api/v1/contacts", Some(t), ann()).await.ok(201);
        assert_eq!(c["display_name"], "Ann Smith");
        assert_eq!(c["phones"][0]["value"], "+44 20 7946 0018");
        assert_eq!(c["emails"][0]["label"], "work");
        assert_eq!(c["groups"], json!(["work"]));
        assert_eq!(c["favorite"], true);
        assert_eq!(c["linked_account"], Value::Null);
        assert_eq!(
            (c["version"].as_i64(), c["revision"].as_i64()),
            (Some(1), Some(1))
        );
        let id = c["id"].as_i64().unwrap();
        let path = format!("/api/v1/contacts/{id}");
        assert_eq!(api.get(&path, t).await.ok(200), c);

        // Linked to the account of a user here: by username (anyone), not by
        // id (that would tell any account's name by its id), and an unknown
        // id is refused alike.
        let by_id = json!({"display_name": "Ned", "linked_account": other.account});
        api.post("/api/v1/contacts", Some(t), by_id)
            .await
            .err(400, Some("linked_account"));
        let b = json!({"display_name": "Ned", "linked_username": "Ned"});
        let linked = api
            .post("/api/v1/contacts", Some(t), b.clone())
            .await
            .ok(201);
        assert_eq!(linked["linked_username"], "ned");
        assert_eq!(linked["linked_account"], other.account);
        // An edit may keep the link by its id.
        let lid = linked["id"].as_i64().unwrap();
        api.put(
            &format!("/api/v1/contacts/{lid}"),
            t,
            json!({"display_name": "Ned B", "version": 1, "linked_account": other.account}),
        )
        .await
        .ok(200);
        api.post(
            "/api/v1/contacts",
            Some(t),
            json!({"display_name": "X", "linked_account": 424242}),
        )
        .await
        .err(400, Some("linked_account"));
        api.post(
            "/api/v1/contacts",
            Some(t),
            json!({"display_name": "X", "linked_username": "nobody-here"}),
        )
        .await
        .err(400, Some("linked_username"));

        // Validation names the field.
        for (body, field) in [
            (json!({"display_name": ""}), "display_name"),
            (json!({}), "display_name"),
            (
                json!({"display_name": "X", "phones": [{"value": "12"}]}),
                "phones[0].value",
            ),
            (
                json!({"display_name": "X", "phones": [{"value": "555 0100", "kind": "x"}]}),
                "phones[0].kind",
            ),
            (
                json!({"display_name": "X", "emails": [{"value": "nope"}]}),
                "emails[0].value",
            ),
            (
                json!({"display_name": "X", "groups": ["ok", " "]}),
                "groups[1]",
            ),
            (json!({"display_name": "X", "favorite": "yes"}), "favorite"),
            (
                json!({"display_name": "X", "notes": "n".repeat(4001)}),
                "notes",
            ),
            (json!({"display_name": "X", "version": 1}), "version"),
            (json!({"display_name": "X", "colour": "red"}), "colour"),
        ] {
            api.post("/api/v1/contacts", Some(t), body)
                .await
                .err(400, Some(field));
        }
        // Oversize body.
        let big = json!({"display_name": "X", "notes": "n".repeat(70_000)});
        assert_eq!(api.post("/api/v1/contacts", Some(t), big).await.status, 413);

        // List with filters.
        let all = api.get("/api/v1/contacts", t).await.ok(200);
        assert_eq!(all["contacts"].as_array().unwrap().len(), 2);
        assert_eq!(all["revision"], 3);
        let fav = api.get("/api/v1/contacts?favorite=true", t).await.ok(200);
        assert_eq!(fav["contacts"].as_array().unwrap().len(), 1);
        let q = api
            .get("/api/v1/contacts?q=SMITH&group=work", t)
            .await
            .ok(200);
        assert_eq!(q["contacts"][0]["id"], id);
        api.get("/api/v1/contacts?favorite=maybe", t)
            .await
            .err(400, Some("favorite"));
        api.get("/api/v1/contacts?sort=name", t)
            .await
            .err(400, Some("sort"));

        // Update: needs the version it is based on.
        let mut edit = ann();
        edit["display_name"] = json!("Ann Jones");
        api.put(&path, t, edit.clone())
            .await
            .err(400, Some("version"));
        edit["version"] = json!(1);
        let u = api.put(&path, t, edit.clone()).await.ok(200);
        assert_eq!(
            (u["version"].as_i64(), u["revision"].as_i64()),
            (Some(2), Some(4))
        );
        assert_eq!(u["display_name"], "Ann Jones");
        // Stale: 409 with the current record.
        edit["display_name"] = json!("Ann Lost");
        let e = api.put(&path, t, edit.clone()).await.err(409, None);
        assert_eq!(e["current"], u);
        // Nobody else's book: 404.
        api.get(&path, &other.access).await.err(404, None);
        edit["version"] = json!(2);
        api.put(&path, &other.access, edit.clone())
            .await
            .err(404, None);
        api.delete(&path, &other.access).await.err(404, None);
        api.get("/api/v1/contacts/abc", t).await.err(404, None);

        // Delete: a stale version is 409, then the tombstone comes back.
        api.delete(&format!("{path}?version=1"), t)
            .await
            .err(409, None);
        let tomb = api.delete(&format!("{path}?version=2"), t).await.ok(200);
        assert_eq!(tomb["deleted"], true);
        assert!(tomb.get("display_name").is_none());
        assert_eq!(
            (tomb["version"].as_i64(), tomb["revision"].as_i64()),
            (Some(3), Some(5))
        );
        api.get(&path, t).await.err(404, None);
        api.put(&path, t, edit).await.err(404, None);
        api.delete(&path, t).await.err(404, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_since_a_revision_include_tombstones() {
    with_server(LIMIT, async |_, api| {
        let me = api.user("olga", "desktop").await;
        let t = &me.access;
        let mut ids = Vec::new();
        for name in ["A", "B", "C", "D"] {
            let c = api
                .post("/api/v1/contacts", Some(t), json!({"display_name": name}))
                .await
                .ok(201);
            ids.push(c["id"].as_i64().unwrap());
        }
        // A device that synced at revision 4 ...
        let base = api.get("/api/v1/contacts/changes?since=0", t).await.ok(200);
        assert_eq!(base["revision"], 4);
        assert_eq!(base["changes"].as_array().unwrap().len(), 4);
        assert_eq!(base["has_more"], false);
        // ... then B is edited, C deleted, E added.
        api.put(
            &format!("/api/v1/contacts/{}", ids[1]),
            t,
            json!({"display_name": "B2", "version": 1}),
        )
        .await
        .ok(200);
        api.delete(&format!("/api/v1/contacts/{}", ids[2]), t)
            .await
            .ok(200);
        let e = api
            .post("/api/v1/contacts", Some(t), json!({"display_name": "E"}))
            .await
            .ok(201);
        let since = api.get("/api/v1/contacts/changes?since=4", t).await.ok(200);
        assert_eq!(since["revision"], 7);
        let changes = since["changes"].as_array().unwrap();
        let summary: Vec<(i64, bool, i64)> = changes
            .iter()
            .map(|c| {
                (
                    c["id"].as_i64().unwrap(),
                    c["deleted"].as_bool().unwrap_or(false),
                    c["revision"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (ids[1], false, 5),
                (ids[2], true, 6),
                (e["id"].as_i64().unwrap(), false, 7)
            ]
        );
        assert_eq!(changes[0]["display_name"], "B2");
        // Nothing new since the current revision.
        let none = api.get("/api/v1/contacts/changes?since=7", t).await.ok(200);
        assert_eq!(none["changes"], json!([]));
        // Paging.
        let p1 = api
            .get("/api/v1/contacts/changes?since=4&limit=2", t)
            .await
            .ok(200);
        assert_eq!(
            (p1["has_more"].as_bool(), p1["revision"].as_i64()),
            (Some(true), Some(6))
        );
        let p2 = api
            .get("/api/v1/contacts/changes?since=6&limit=2", t)
            .await
            .ok(200);
        assert_eq!(
            (p2["has_more"].as_bool(), p2["revision"].as_i64()),
            (Some(false), Some(7))
        );
        // From 0, deleted entries are left out.
        let full = api.get("/api/v1/contacts/changes", t).await.ok(200);
        assert_eq!(full["changes"].as_array().unwrap().len(), 4);
        // Bad parameters.
        api.get("/api/v1/contacts/changes?since=-1", t)
            .await
            .err(400, Some("since"));
        api.get("/api/v1/contacts/changes?since=8", t)
            .await
            .err(400, Some("since"));
        api.get("/api/v1/contacts/changes?since=x", t)
            .await
            .err(400, Some("since"));
        api.get("/api/v1/contacts/changes?limit=0", t)
            .await
            .err(400, Some("limit"));
        api.get("/api/v1/contacts/changes?limit=1001", t)
            .await
            .err(400, Some("limit"));
        // Another account has its own revisions.
        let other = api.user("pete", "web").await;
        let o = api
            .get("/api/v1/contacts/changes?since=0", &other.access)
            .await
            .ok(200);
        assert_eq!(
            (
                o["revision"].as_i64(),
                o["changes"].as_array().unwrap().len()
            ),
            (Some(0), 0)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_edits_are_pushed_and_concurrent_edits_lose_nothing() {
    with_server(LIMIT, async |s, api| {
        let phone = api.user("quinn", "phone").await;
        let desk = api.login("quinn", "correct horse battery", "desktop", "PC").await;
        let stranger = api.user("rose", "web").await;
        let mut phone_sock = DeviceClient::connect(s, &phone.access, None).await;
        let mut desk_sock = DeviceClient::connect(s, &desk.access, None).await;
        let mut stranger_sock = DeviceClient::connect(s, &stranger.access, None).await;
        assert_eq!(desk_sock.ready["contacts_revision"], 0);

        // An edit on the phone reaches the desktop (and the phone itself).
        let c = api.post("/api/v1/contacts", Some(&phone.access), ann()).await.ok(201);
        let id = c["id"].as_i64().unwrap();
        let pushed = desk_sock.expect("contact_changed").await;
        assert_eq!(pushed["revision"], 1);
        assert_eq!(pushed["contact"], c);
        phone_sock.expect("contact_changed").await;

        // Both devices edit version 1 at the same time: one wins, one gets 409.
        let path = format!("/api/v1/contacts/{id}");
        let mut from_phone = ann();
        from_phone["version"] = json!(1);
        from_phone["phones"] = json!([{"label": "mobile", "value": "+44 20 7946 0999"}]);
        let mut from_desk = ann();
        from_desk["version"] = json!(1);
        from_desk["notes"] = json!("prefers e-mail");
        let (a, b) = tokio::join!(
            api.put(&path, &phone.access, from_phone.clone()),
            api.put(&path, &desk.access, from_desk.clone())
        );
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(statuses, [200, 409], "{:?} {:?}", a.body, b.body);
        let (winner, loser, loser_token, loser_edit, field) = if a.status == 200 {
            (a, b, &desk.access, from_desk, "notes")
        } else {
            (b, a, &phone.access, from_phone, "phones")
        };
        // The loser is handed the current record, which is the winner's.
        let current = loser.body["current"].clone();
        assert_eq!(current, winner.body);
        // It applies its own change on top and retries from that version.
        let mut retry = json!({"version": current["version"]});
        for k in ["display_name", "phones", "emails", "groups", "favorite", "notes"] {
            retry[k] = current[k].clone();
        }
        retry[field] = loser_edit[field].clone();
        let merged = api.put(&path, loser_token, retry).await.ok(200);
        assert_eq!(merged["version"], 3);
        // Nothing was lost: both edits are in.
        assert_eq!(merged["notes"], "prefers e-mail");
        assert_eq!(merged["phones"][0]["value"], "+44 20 7946 0999");
        // Each device saw both changes, in revision order.
        for sock in [&mut phone_sock, &mut desk_sock] {
            let first = sock.expect("contact_changed").await;
            let second = sock.expect("contact_changed").await;
            assert_eq!((first["revision"].as_i64(), second["revision"].as_i64()), (Some(2), Some(3)));
            assert_eq!(second["contact"], merged);
        }
        // A deletion is pushed as such.
        api.delete(&path, &desk.access).await.ok(200);
        let d = phone_sock.expect("contact_deleted").await;
        assert_eq!((d["id"].as_i64(), d["revision"].as_i64(), d["version"].as_i64()), (Some(id), Some(4), Some(4)));
        // Nothing of it reached the other account.
        let seen = stranger_sock.collect(Duration::from_millis(200)).await;
        assert!(
            !seen.iter().any(|s| matches!(s, common::Seen::Msg(m) if m["type"].as_str().is_some_and(|t| t.starts_with("contact")))),
            "{seen:?}"
        );
    })
    .await;
}
