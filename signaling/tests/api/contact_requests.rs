//! Contact requests and mutual contacts over HTTP: send, list, accept,
//! decline, withdraw, crossed requests, unlinking, and the failure cases.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{DeviceClient, with_server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_sent_declined_withdrawn_and_accepted() {
    with_server(Duration::from_secs(60), async |s, api| {
        let vic = api.user("vic", "phone").await;
        let wes = api.user("wes", "web").await;
        let xan = api.user("xan", "desktop").await;
        let mut wes_sock = DeviceClient::connect(s, &wes.access, None).await;
        let send = |from: &str, body: serde_json::Value| {
            let api = api.clone();
            let from = from.to_owned();
            async move {
                api.post("/api/v1/contact-requests", Some(&from), body)
                    .await
            }
        };

        // Failure cases.
        send(&vic.access, json!({"username": "nobody"}))
            .await
            .err(404, None);
        send(&vic.access, json!({"username": "VIC"}))
            .await
            .err(400, Some("username"));
        send(&vic.access, json!({"username": "x"}))
            .await
            .err(400, Some("username"));
        send(
            &vic.access,
            json!({"username": "wes", "message": "m".repeat(281)}),
        )
        .await
        .err(400, Some("message"));
        send(&vic.access, json!({}))
            .await
            .err(400, Some("username"));

        // Vic asks Wes (case-insensitive username); Wes is told at once.
        let r = send(
            &vic.access,
            json!({"username": "Wes", "message": "hi, it's Vic"}),
        )
        .await
        .ok(201);
        assert_eq!(r["status"], "pending");
        let id = r["request"]["id"].as_i64().unwrap();
        let pushed = wes_sock.expect("contact_request").await;
        assert_eq!(pushed["request"]["message"], "hi, it's Vic");
        send(&vic.access, json!({"username": "wes"}))
            .await
            .err(409, None);
        let lists = api
            .get("/api/v1/contact-requests", &wes.access)
            .await
            .ok(200);
        assert_eq!(lists["incoming"][0]["id"], id);
        assert_eq!(lists["incoming"][0]["from"]["username"], "vic");
        assert_eq!(lists["outgoing"], json!([]));
        let lists = api
            .get("/api/v1/contact-requests", &vic.access)
            .await
            .ok(200);
        assert_eq!(lists["outgoing"][0]["to"]["username"], "wes");

        // Only the recipient accepts; strangers cannot touch it.
        let accept = format!("/api/v1/contact-requests/{id}/accept");
        api.post(&accept, Some(&vic.access), json!({}))
            .await
            .err(404, None);
        api.post(&accept, Some(&xan.access), json!({}))
            .await
            .err(404, None);
        api.delete(&format!("/api/v1/contact-requests/{id}"), &xan.access)
            .await
            .err(404, None);
        // Wes declines.
        api.delete(&format!("/api/v1/contact-requests/{id}"), &wes.access)
            .await
            .ok(204);
        assert_eq!(wes_sock.expect("contact_request_removed").await["id"], id);
        api.post(&accept, Some(&wes.access), json!({}))
            .await
            .err(404, None);
        api.delete(&format!("/api/v1/contact-requests/{id}"), &wes.access)
            .await
            .err(404, None);
        // Vic asks again and withdraws.
        let r = send(&vic.access, json!({"username": "wes"})).await.ok(201);
        let id = r["request"]["id"].as_i64().unwrap();
        api.delete(&format!("/api/v1/contact-requests/{id}"), &vic.access)
            .await
            .ok(204);
        // Crossed requests: the second links the two at once.
        send(&vic.access, json!({"username": "wes"})).await.ok(201);
        let r = send(&wes.access, json!({"username": "vic"})).await.ok(200);
        assert_eq!(r["status"], "mutual");
        assert_eq!(r["contact"]["username"], "vic");
        // Vic has no device socket open: offline.
        assert_eq!(r["contact"]["presence"]["status"], "offline");
        let added = wes_sock.expect("mutual_contact_added").await;
        assert_eq!(added["contact"]["id"], vic.account);
        send(&vic.access, json!({"username": "wes"}))
            .await
            .err(409, None);
        let m = api
            .get("/api/v1/mutual-contacts", &vic.access)
            .await
            .ok(200);
        assert_eq!(m["contacts"][0]["username"], "wes");
        assert_eq!(m["contacts"][0]["presence"]["status"], "online");
        let m = api
            .get("/api/v1/mutual-contacts", &xan.access)
            .await
            .ok(200);
        assert_eq!(m["contacts"], json!([]));
        let lists = api
            .get("/api/v1/contact-requests", &wes.access)
            .await
            .ok(200);
        assert_eq!(
            (
                lists["incoming"].as_array().unwrap().len(),
                lists["outgoing"].as_array().unwrap().len()
            ),
            (0, 0)
        );

        // Unlinking: 404 for a non-contact, then 204.
        api.delete(
            &format!("/api/v1/mutual-contacts/{}", xan.account),
            &vic.access,
        )
        .await
        .err(404, None);
        api.delete(
            &format!("/api/v1/mutual-contacts/{}", wes.account),
            &vic.access,
        )
        .await
        .ok(204);
        assert_eq!(
            wes_sock.expect("mutual_contact_removed").await["account_id"],
            vic.account
        );
        api.delete(
            &format!("/api/v1/mutual-contacts/{}", wes.account),
            &vic.access,
        )
        .await
        .err(404, None);
        // No token: 401.
        api.call("GET", "/api/v1/mutual-contacts", None, None)
            .await
            .err(401, None);
    })
    .await;
}
