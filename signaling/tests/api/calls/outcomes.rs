//! Calls between accounts, every outcome over the API and the device
//! sockets: ring every device, first accept wins, answered elsewhere,
//! decline, cancel, missed, busy, accepted but never joined; bad invites;
//! history and missed calls.

#![allow(clippy::unwrap_used)]

use crate::calls;
use crate::common;

use std::time::Duration;

use calls::*;
use common::with_config;
use serde_json::json;
use vela_config::Config;

#[tokio::test]
async fn every_device_rings_and_the_first_accept_wins() {
    with_calls(10_000, async |s, api| {
        let (ann, ben, ben_desk, mut a1, mut b1, mut b2) = ann_and_ben(s, api).await;
        let ann_tablet = another_device(api, &ann, "tablet").await;
        let mut a2 = socket(s, &ann_tablet).await;

        let v = invite(api, &ann, &[ben.account], true).await.ok(201);
        let id = v["call"]["id"].as_i64().unwrap();
        assert_eq!(v["room"], format!("call-{id}"));
        assert_eq!(v["call"]["state"], "ringing");
        assert_eq!(v["call"]["video"], true);
        for b in [&mut b1, &mut b2] {
            let r = expect_call(b, "call_ringing", id).await;
            assert_eq!(r["caller"]["display_name"], "ann");
            assert_eq!(r["caller"]["account_id"], ann.account);
        }
        // The caller's other device shows the outgoing call.
        expect_call(&mut a2, "call_outgoing", id).await;

        let v = api
            .post(
                &format!("/api/v1/calls/{id}/accept"),
                Some(&ben.access),
                json!({"client_id": "phone-app"}),
            )
            .await
            .ok(200);
        assert_eq!(v["room"], format!("call-{id}"));
        assert_eq!(v["call"]["state"], "active");
        // The other device stops ringing: answered elsewhere, by the phone.
        let stop = expect_call(&mut b2, "call_ringing_stopped", id).await;
        assert_eq!(stop["reason"], "answered_elsewhere");
        assert_eq!(stop["device_id"], ben.device);
        // ... and is too late to answer.
        act(api, &ben_desk, id, "accept").await.err(409, None);
        let answered = expect_call(&mut a1, "call_answered", id).await;
        assert_eq!(answered["device_id"], ben.device);
        // Both sides see the call from any device.
        let v = get_call(api, &ann_tablet, id).await;
        assert_eq!(member_state(&v["call"], ben.account), "joined");
        let active = api
            .get("/api/v1/calls/active", &ben_desk.access)
            .await
            .ok(200);
        assert_eq!(active["calls"][0]["id"], id);

        tokio::time::sleep(Duration::from_millis(50)).await;
        act(api, &ben, id, "leave").await.ok(200);
        for d in [&mut a1, &mut a2] {
            assert_eq!(ended(d, id).await, "answered");
        }
        for d in [&mut b1, &mut b2] {
            assert_eq!(ended(d, id).await, "answered");
        }
        let rb = record(api, &ben, id).await;
        assert_eq!(rb["outcome"], "answered");
        assert_eq!(rb["direction"], "incoming");
        assert_eq!(rb["device_id"], ben.device);
        assert_eq!(rb["video"], true);
        assert!(rb["duration_ms"].as_i64().unwrap() >= 50, "{rb}");
        assert_eq!(rb["participants"][0]["username"], "ann");
        let ra = record(api, &ann, id).await;
        assert_eq!(ra["outcome"], "answered");
        assert_eq!(ra["direction"], "outgoing");
        assert_eq!(ra["device_id"], ann.device);
        // The same history on every device.
        assert_eq!(history(api, &ben_desk).await, history(api, &ben).await);
    })
    .await;
}

#[tokio::test]
async fn decline_ends_the_call_on_every_device_of_both_sides() {
    with_calls(10_000, async |s, api| {
        let (ann, ben, ben_desk, mut a, mut b1, mut b2) = ann_and_ben(s, api).await;
        let id = call(api, &ann, &[ben.account]).await;
        expect_call(&mut b2, "call_ringing", id).await;
        act(api, &ben_desk, id, "decline").await.ok(200);
        all_ended(&mut [&mut a, &mut b1, &mut b2], id, "declined").await;
        // Nothing more to do with it.
        act(api, &ben, id, "accept").await.err(409, None);
        act(api, &ann, id, "cancel").await.err(409, None);
        all_recorded(api, &[&ben, &ann], id, "declined").await;
    })
    .await;
}

#[tokio::test]
async fn the_caller_cancels_and_every_device_stops_ringing() {
    with_calls(10_000, async |s, api| {
        let ann = api.user("ann", "phone").await;
        let ann_desk = another_device(api, &ann, "desk").await;
        let ben = api.user("ben", "phone").await;
        let ben_desk = another_device(api, &ben, "desk").await;
        let mut a2 = socket(s, &ann_desk).await;
        let mut b1 = socket(s, &ben).await;
        let mut b2 = socket(s, &ben_desk).await;
        let id = call(api, &ann, &[ben.account]).await;
        expect_call(&mut b1, "call_ringing", id).await;
        // Only the caller cancels.
        act(api, &ben, id, "cancel").await.err(403, None);
        act(api, &ann, id, "cancel").await.ok(200);
        all_ended(&mut [&mut b1, &mut b2, &mut a2], id, "cancelled").await;
        all_recorded(api, &[&ben, &ann], id, "cancelled").await;
    })
    .await;
}

#[tokio::test]
async fn no_answer_in_time_is_a_missed_call_any_device_can_clear() {
    with_calls(400, async |s, api| {
        let (ann, ben, ben_desk, mut a, mut b1, mut b2) = ann_and_ben(s, api).await;
        let id = call(api, &ann, &[ben.account]).await;
        all_ended(&mut [&mut a, &mut b1, &mut b2], id, "missed").await;
        let missed = b2.expect("missed_calls").await;
        assert_eq!(missed["count"], 1);
        let r = record(api, &ben, id).await;
        assert_eq!(
            (r["outcome"].as_str(), r["unseen"].as_bool()),
            (Some("missed"), Some(true))
        );
        assert_eq!(r["answered_at"], serde_json::Value::Null);
        assert_eq!(r["duration_ms"], 0);
        assert_eq!(record(api, &ann, id).await["outcome"], "missed");
        let count = api
            .get("/api/v1/calls/missed-count", &ben_desk.access)
            .await
            .ok(200);
        assert_eq!(count["count"], 1);
        // The caller has nothing unseen.
        let count = api
            .get("/api/v1/calls/missed-count", &ann.access)
            .await
            .ok(200);
        assert_eq!(count["count"], 0);
        // One device clears it; every device is told.
        api.post("/api/v1/calls/missed/seen", Some(&ben.access), json!({}))
            .await
            .ok(200);
        b2.wait_for("missed_calls 0", |m| {
            m["type"] == "missed_calls" && m["count"] == 0
        })
        .await;
        b1.wait_for("missed_calls 0", |m| {
            m["type"] == "missed_calls" && m["count"] == 0
        })
        .await;
        let count = api
            .get("/api/v1/calls/missed-count", &ben_desk.access)
            .await
            .ok(200);
        assert_eq!(count["count"], 0);
        assert_eq!(record(api, &ben, id).await["unseen"], false);
    })
    .await;
}

#[tokio::test]
async fn a_callee_already_in_a_call_is_busy() {
    with_calls(10_000, async |s, api| {
        let [ann, ben, cat] = users(api, ["ann", "ben", "cat"]).await;
        let mut b = socket(s, &ben).await;
        let mut c = socket(s, &cat).await;
        let first = call(api, &ann, &[ben.account]).await;
        act(api, &ben, first, "accept").await.ok(200);
        // Cat calls Ben, who is in a call: busy, no ringing.
        let v = invite(api, &cat, &[ben.account], false).await.ok(201);
        let id = v["call"]["id"].as_i64().unwrap();
        assert_eq!(v["call"]["state"], "ended");
        assert_eq!(member_state(&v["call"], ben.account), "busy");
        all_ended(&mut [&mut c, &mut b], id, "busy").await;
        none_of(&mut b, "call_ringing", id, Duration::from_millis(200)).await;
        let seen = outcome_and_unseen(api, &ben, id).await;
        assert_eq!(seen, (Some("busy".into()), Some(true)));
        assert_eq!(record(api, &cat, id).await["outcome"], "busy");
        // Ann, in a call, cannot place another.
        invite(api, &ann, &[cat.account], false)
            .await
            .err(409, None);
    })
    .await;
}

#[tokio::test]
async fn a_callee_who_accepts_and_never_joins_the_room_leaves_the_call() {
    let config = |c: &mut Config| c.calls.join_timeout_ms = 1_000;
    with_config(LIMIT, config, async |s, api| {
        let [ann, ben] = users(api, ["ann", "ben"]).await;
        let mut a = socket(s, &ann).await;
        let mut b = socket(s, &ben).await;
        let id = call(api, &ann, &[ben.account]).await;
        let mut in_room = join_room(s, &ann.access, &format!("call-{id}"), None, false)
            .await
            .unwrap();
        act(api, &ben, id, "accept").await.ok(200);
        // Ben's client never joins the room: after calls.join_timeout_ms
        // Ben is out of the call, and so the 1:1 call ends for both.
        all_ended(&mut [&mut b, &mut a], id, "answered").await;
        in_room.pump(Duration::from_millis(300)).await;
        assert!(in_room.saw_type("left"), "ann is told to leave the room");
        let v = get_call(api, &ann, id).await;
        assert_eq!(v["call"]["state"], "ended");
        assert_eq!(member_state(&v["call"], ben.account), "left");
        // Ben is not left busy: a new call rings.
        let v = invite(api, &ann, &[ben.account], false).await.ok(201);
        assert_eq!(member_state(&v["call"], ben.account), "ringing");
    })
    .await;
}

#[tokio::test]
async fn bad_invites_and_strangers() {
    let config = |c: &mut Config| {
        c.calls.ring_timeout_ms = 10_000;
    };
    with_config(LIMIT, config, async |s, api| {
        let root = api.admin(s, "root", "desktop").await;
        let [ann, ben, eve] = users(api, ["ann", "ben", "eve"]).await;
        invite(api, &ann, &[999_999], false).await.err(404, None);
        invite(api, &ann, &[ann.account], false)
            .await
            .err(400, Some("to"));
        invite(api, &ann, &[], false).await.err(400, Some("to"));
        api.post("/api/v1/calls", Some(&ann.access), json!({"to": ["x"]}))
            .await
            .err(400, Some("to[0]"));
        api.post("/api/v1/calls", None, json!({"to": [ben.account]}))
            .await
            .err(401, None);
        // A disabled account cannot be called.
        api.post(
            &format!("/api/v1/admin/accounts/{}/disable", eve.account),
            Some(&root.access),
            json!({}),
        )
        .await
        .ok(200);
        invite(api, &ann, &[eve.account], false)
            .await
            .err(404, None);
        // Someone else's call looks missing.
        let id = call(api, &ann, &[ben.account]).await;
        let carl = api.user("carl", "phone").await;
        for action in ["accept", "decline", "cancel", "leave"] {
            act(api, &carl, id, action).await.err(404, None);
        }
        api.get(&format!("/api/v1/calls/{id}"), &carl.access)
            .await
            .err(404, None);
        act(api, &ann, 424_242, "accept").await.err(404, None);
        act(api, &ann, id, "leave").await.ok(200);
        api.get("/api/v1/calls/nope", &ann.access)
            .await
            .err(404, None);
        api.get("/api/v1/calls/history?limit=0", &ann.access)
            .await
            .err(400, Some("limit"));
        api.get("/api/v1/calls/history?before=x", &ann.access)
            .await
            .err(400, Some("before"));
    })
    .await;
}

#[tokio::test]
async fn history_pages_newest_first() {
    with_calls(10_000, async |_, api| {
        let [ann, ben] = users(api, ["ann", "ben"]).await;
        let mut ids = Vec::new();
        for _ in 0..5 {
            let id = call(api, &ann, &[ben.account]).await;
            act(api, &ann, id, "cancel").await.ok(200);
            ids.push(id);
        }
        let mut seen = Vec::new();
        let mut path = "/api/v1/calls/history?limit=2".to_owned();
        loop {
            let page = api.get(&path, &ben.access).await.ok(200);
            let calls = page["calls"].as_array().unwrap();
            assert!(calls.len() <= 2);
            seen.extend(calls.iter().map(|c| c["call_id"].as_i64().unwrap()));
            match page["next_before"].as_i64() {
                Some(n) => path = format!("/api/v1/calls/history?limit=2&before={n}"),
                None => break,
            }
        }
        ids.reverse();
        assert_eq!(seen, ids);
    })
    .await;
}
