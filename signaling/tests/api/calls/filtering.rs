//! Do-not-disturb with a whitelist: a filtered call does not ring, the
//! caller hears "unavailable", the callee's history says "filtered".

#![allow(clippy::unwrap_used)]

use crate::calls;

use std::time::Duration;

use crate::common::{Api, DeviceClient, Login};
use calls::*;
use serde_json::{Value, json};

#[tokio::test]
async fn do_not_disturb_filters_everyone_but_the_whitelist() {
    with_calls(10_000, async |s, api| {
        let [ann, ben, cat] = users(api, ["ann", "ben", "cat"]).await;
        let ben_desk = another_device(api, &ben, "desk").await;
        api.link(&ann, &ben).await; // Ann and Ben: mutual contacts.
        let mut b = socket(s, &ben).await;
        let mut b2 = socket(s, &ben_desk).await;
        let mut a = socket(s, &ann).await;
        let mut c = socket(s, &cat).await;

        let v = api.get("/api/v1/calls/settings", &ben.access).await.ok(200);
        assert_eq!(v, json!({"dnd": false, "allow": "nobody"}));
        set_calls(api, &ben, json!({"dnd": true})).await;
        // Every device of the account learns the setting.
        b2.wait_for("call_settings", |m| {
            m["type"] == "call_settings" && m["dnd"] == true
        })
        .await;
        api.put(
            "/api/v1/calls/settings",
            &ben.access,
            json!({"allow": "everyone"}),
        )
        .await
        .err(400, Some("allow"));

        // Nobody allowed: even a mutual contact is filtered.
        let v = invite(api, &ann, &[ben.account], true).await.ok(201);
        let id = v["call"]["id"].as_i64().unwrap();
        assert_eq!(v["call"]["state"], "ended");
        assert_eq!(member_state(&v["call"], ben.account), "unavailable");
        assert_eq!(ended(&mut a, id).await, "unavailable");
        none_of(&mut b, "call_ringing", id, Duration::from_millis(200)).await;
        let seen = outcome_and_unseen(api, &ben, id).await;
        assert_eq!(seen, (Some("filtered".into()), Some(false)));
        assert_eq!(record(api, &ann, id).await["outcome"], "unavailable");

        // Contacts: Ann (mutual) rings; Cat (a stranger) does not...
        set_calls(api, &ben, json!({"allow": "contacts"})).await;
        rings_then_cancel(api, &ann, &ben, &mut b).await;
        let v = invite(api, &cat, &[ben.account], false).await.ok(201);
        let cid = v["call"]["id"].as_i64().unwrap();
        assert_eq!(ended(&mut c, cid).await, "unavailable");
        assert_eq!(record(api, &ben, cid).await["outcome"], "filtered");
        // ... until Ben puts Cat in his address book (as a favorite).
        api.post(
            "/api/v1/contacts",
            Some(&ben.access),
            json!({"display_name": "Cat", "linked_username": cat.username, "favorite": true}),
        )
        .await
        .ok(201);
        rings_then_cancel(api, &cat, &ben, &mut b).await;

        // Favorites: Cat rings, Ann (a contact but no favorite) does not.
        set_calls(api, &ben, json!({"allow": "favorites"})).await;
        rings_then_cancel(api, &cat, &ben, &mut b).await;
        let v = invite(api, &ann, &[ben.account], false).await.ok(201);
        assert_eq!(member_state(&v["call"], ben.account), "unavailable");

        // Do-not-disturb off: everyone rings again.
        set_calls(api, &ben_desk, json!({"dnd": false})).await;
        let id = call(api, &ann, &[ben.account]).await;
        expect_call(&mut b2, "call_ringing", id).await;
    })
    .await;
}

/// `PUT /api/v1/calls/settings` as `who`, which must succeed.
async fn set_calls(api: &Api, who: &Login, settings: Value) {
    api.put("/api/v1/calls/settings", &who.access, settings)
        .await
        .ok(200);
}

/// `caller` calls `callee`, whose device `dev` rings; then `caller` cancels.
async fn rings_then_cancel(api: &Api, caller: &Login, callee: &Login, dev: &mut DeviceClient) {
    let id = call(api, caller, &[callee.account]).await;
    expect_call(dev, "call_ringing", id).await;
    act(api, caller, id, "cancel").await.ok(200);
}
