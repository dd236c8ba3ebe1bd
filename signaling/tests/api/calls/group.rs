//! Group calls: several invitees at once, a third person added to a
//! running call (same room, nobody reconnects), people leave without ending
//! it for the others, the call ends when the last but one leaves.

#![allow(clippy::unwrap_used)]

use crate::calls;
use crate::common;

use std::time::Duration;

use calls::*;
use common::Ws;
use serde_json::json;

#[tokio::test]
async fn each_invitee_answers_on_their_own_and_leaving_ends_nothing_for_the_others() {
    with_calls(10_000, async |s, api| {
        let [ann, ben, cat, dan] = users(api, ["ann", "ben", "cat", "dan"]).await;
        let mut a = socket(s, &ann).await;
        let mut b = socket(s, &ben).await;
        let mut c = socket(s, &cat).await;
        let mut d = socket(s, &dan).await;
        let id = call(api, &ann, &[ben.account, cat.account, dan.account]).await;
        for dev in [&mut b, &mut c, &mut d] {
            expect_call(dev, "call_ringing", id).await;
        }
        act(api, &dan, id, "decline").await.ok(200);
        let declined = expect_call(&mut a, "call_declined", id).await;
        assert_eq!(declined["account_id"], dan.account);
        act(api, &ben, id, "accept").await.ok(200);
        act(api, &cat, id, "accept").await.ok(200);
        // Ann hangs up: Ben and Cat go on.
        act(api, &ann, id, "leave").await.ok(200);
        assert_eq!(ended(&mut a, id).await, "answered");
        let v = get_call(api, &ben, id).await;
        assert_eq!(v["call"]["state"], "active");
        assert_eq!(member_state(&v["call"], ann.account), "left");
        none_of(&mut b, "call_ended", id, Duration::from_millis(200)).await;
        // Ben hangs up: Cat is the last one; the call is over.
        act(api, &ben, id, "leave").await.ok(200);
        all_ended(&mut [&mut c, &mut b], id, "answered").await;
        assert_eq!(record(api, &dan, id).await["outcome"], "declined");
        let rc = record(api, &cat, id).await;
        assert_eq!(rc["outcome"], "answered");
        assert_eq!(rc["participants"].as_array().unwrap().len(), 3);
        assert_eq!(record(api, &ann, id).await["outcome"], "answered");
    })
    .await;
}

/// Joins the call room on the room WebSocket (signaling only).
async fn join_room(s: &vela_signaling::RunningServer, token: &str, room: &str) -> Ws {
    let mut ws = Ws::connect(s).await;
    ws.send(json!({"type": "join", "token": token, "room": room}))
        .await;
    let j = ws.recv().await.unwrap();
    assert_eq!(j["type"], "joined", "{j}");
    ws
}

#[tokio::test]
async fn a_third_person_joins_the_same_room_without_anyone_reconnecting() {
    with_calls(10_000, async |s, api| {
        let [ann, ben, cat] = users(api, ["ann", "ben", "cat"]).await;
        let mut c = socket(s, &cat).await;
        let v = invite(api, &ann, &[ben.account], false).await.ok(201);
        let id = v["call"]["id"].as_i64().unwrap();
        let room = v["room"].as_str().unwrap().to_owned();
        let mut ann_room = join_room(s, &ann.access, &room).await;
        act(api, &ben, id, "accept").await.ok(200);
        let mut ben_room = join_room(s, &ben.access, &room).await;
        ann_room.expect("participant_joined").await;

        // Ben adds Cat; only people in the call can.
        api.post(
            &format!("/api/v1/calls/{id}/invite"),
            Some(&cat.access),
            json!({"to": [cat.account]}),
        )
        .await
        .err(404, None);
        let v = api
            .post(
                &format!("/api/v1/calls/{id}/invite"),
                Some(&ben.access),
                json!({"to": [cat.account]}),
            )
            .await
            .ok(200);
        assert_eq!(member_state(&v["call"], cat.account), "ringing");
        let r = expect_call(&mut c, "call_ringing", id).await;
        assert_eq!(r["caller"]["username"], "ben");
        assert_eq!(r["call"]["room"], room.as_str());
        // Cat is not in the call yet: the room is closed to her.
        let mut early = Ws::connect(s).await;
        early
            .send(json!({"type": "join", "token": cat.access, "room": room}))
            .await;
        assert_eq!(early.expect("error").await["code"], 403);
        let v = act(api, &cat, id, "accept").await.ok(200);
        assert_eq!(v["room"], room.as_str());
        let _cat_room = join_room(s, &cat.access, &room).await;
        for ws in [&mut ann_room, &mut ben_room] {
            let j = ws.expect("participant_joined").await;
            assert_eq!(j["participant"]["account"], cat.account.to_string());
        }
        // Nobody left the room in the meantime.
        let v = get_call(api, &ann, id).await;
        for m in v["call"]["members"].as_array().unwrap() {
            assert_eq!(m["state"], "joined", "{m}");
            assert!(m["participant_id"].is_string(), "{m}");
        }
    })
    .await;
}

#[tokio::test]
async fn chat_reaches_every_device_of_everyone_in_the_call_in_order() {
    with_calls(10_000, async |s, api| {
        let (ann, ben, ben_desk, mut a, mut b1, mut b2) = ann_and_ben(s, api).await;
        let cat = api.user("cat", "phone").await;
        let id = call(api, &ann, &[ben.account, cat.account]).await;
        act(api, &ben, id, "accept").await.ok(200);
        let path = format!("/api/v1/calls/{id}/messages");
        // Cat, still ringing, cannot chat; empty text is refused.
        api.post(&path, Some(&cat.access), json!({"text": "hi"}))
            .await
            .err(409, None);
        api.post(&path, Some(&ann.access), json!({"text": "  "}))
            .await
            .err(400, Some("text"));
        let texts: Vec<String> = (0..10).map(|i| format!("message {i}")).collect();
        for (i, t) in texts.iter().enumerate() {
            let who = if i % 2 == 0 { &ann } else { &ben_desk };
            let m = api
                .post(&path, Some(&who.access), json!({"text": t}))
                .await
                .ok(201);
            assert_eq!(m["message"]["seq"], i as i64 + 1);
        }
        for dev in [&mut a, &mut b1, &mut b2] {
            let mut got = Vec::new();
            while got.len() < texts.len() {
                let m = expect_call(dev, "call_message", id).await;
                got.push(m["message"]["text"].as_str().unwrap().to_owned());
            }
            assert_eq!(got, texts);
        }
        // A device that looks later gets the chat with the call.
        let v = get_call(api, &ben, id).await;
        assert_eq!(v["messages"].as_array().unwrap().len(), 10);
        assert_eq!(v["messages"][1]["from"]["username"], "ben");
    })
    .await;
}
