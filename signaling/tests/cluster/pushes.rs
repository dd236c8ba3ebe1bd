//! Pushes to devices across nodes: a change made on one node reaches the
//! device sockets on the others (in order, once), and a revocation cuts a
//! device off wherever it is connected.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use serde_json::json;

use crate::common::{DeviceClient, SessionClient};
use crate::nodes::Nodes;
use crate::rooms::rooms_on;

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn a_contact_edit_on_node_1_reaches_node_3_and_a_revoke_cuts_it_off_at_once() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let nodes = Nodes::start("pushes", 3, &[]).await;
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(10)).await,
                "{}",
                nodes.logs()
            );
        }
        let (n1, n2, n3) = (nodes[0].api(), nodes[1].api(), nodes[2].api());
        n1.register("mia", PASSWORD).await;
        let phone = n1.login("mia", PASSWORD, "phone", "Mia's phone").await;
        let desk = n3.login("mia", PASSWORD, "desktop", "Mia's desk").await;
        let mut sock = DeviceClient::connect_addr(&nodes[2].addr, &desk.access, None).await;

        // The address book: an edit made on node 1 reaches node 3's socket.
        let c = n1
            .post(
                "/api/v1/contacts",
                Some(&phone.access),
                json!({"display_name": "Ann Smith"}),
            )
            .await
            .ok(201);
        let pushed = sock.expect("contact_changed").await;
        assert_eq!(pushed["contact"], c);
        let path = format!("/api/v1/contacts/{}", c["id"]);
        let edited = n1
            .put(
                &path,
                &phone.access,
                json!({"display_name": "Ann Jones", "version": 1}),
            )
            .await
            .ok(200);
        let pushed = sock.expect("contact_changed").await;
        assert_eq!(pushed["contact"], edited);
        // A stale edit from node 2: 409 with the current entry, nothing pushed.
        let e = n2
            .put(
                &path,
                &desk.access,
                json!({"display_name": "Ann Lost", "version": 1}),
            )
            .await
            .err(409, None);
        assert_eq!(e["current"], edited);
        // Pushes from one node arrive in order, each once.
        for i in 0..20 {
            n1.put(
                &path,
                &phone.access,
                json!({"display_name": format!("Ann {i}"), "version": 2 + i}),
            )
            .await
            .ok(200);
        }
        for i in 0..20 {
            let m = sock.expect("contact_changed").await;
            assert_eq!(m["contact"]["display_name"], format!("Ann {i}"));
        }
        assert!(
            sock.collect(Duration::from_millis(300)).await.is_empty(),
            "nothing more"
        );

        // Node 2 sees node 3's socket among the connected devices.
        let list = n2.get("/api/v1/devices", &phone.access).await.ok(200);
        let connected = |id: i64| {
            list["devices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["id"] == id)
                .unwrap()["connected"]
                .clone()
        };
        assert_eq!(connected(desk.device), true, "{list}");
        assert_eq!(connected(phone.device), false, "{list}");

        // Revoked on node 1: cut off on node 3 at once, with its reason.
        let at = tokio::time::Instant::now();
        n1.delete(&format!("/api/v1/devices/{}", desk.device), &phone.access)
            .await
            .ok(204);
        let m = sock.expect("session_revoked").await;
        assert_eq!(m["device_id"], desk.device);
        assert_eq!(sock.closed().await, Some(4002));
        assert!(at.elapsed() < Duration::from_secs(1), "{:?}", at.elapsed());
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_room_session_of_a_device_revoked_during_a_redis_outage_ends_when_redis_is_back() {
    tokio::time::timeout(Duration::from_secs(90), async {
        let mut nodes = Nodes::start("pushes-outage", 2, &[]).await;
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(10)).await,
                "{}",
                nodes.logs()
            );
        }
        nodes[0].api().register("mia", PASSWORD).await;
        let phone = nodes[0]
            .api()
            .login("mia", PASSWORD, "phone", "Mia's phone")
            .await;
        let desk = nodes[1]
            .api()
            .login("mia", PASSWORD, "desktop", "Mia's desk")
            .await;
        let mut session =
            SessionClient::join_at(&nodes[1].addr, &desk.access, Some("team"), None, false)
                .await
                .unwrap();
        let mut room_node = None;
        for (i, n) in nodes.nodes.iter().enumerate() {
            if rooms_on(n).await.iter().any(|(r, _)| r == "team") {
                room_node = Some(i);
            }
        }
        let other = 1 - room_node.expect("the room is open on a node");

        // Redis goes away; the desk is revoked on the other node meanwhile:
        // the close cannot travel, the room session goes on...
        nodes.redis.stop();
        assert!(
            nodes[other]
                .wait_ready(false, Duration::from_secs(10))
                .await
        );
        nodes[other]
            .api()
            .delete(&format!("/api/v1/devices/{}", desk.device), &phone.access)
            .await
            .ok(204);
        session.pump(Duration::from_millis(500)).await;
        assert!(!session.saw_type("error"), "{:?}", session.seen);
        // ...until its node is back on the bus and checks it.
        nodes.redis.restart();
        assert_eq!(session.ws.close_code().await, Some(4002));
    })
    .await
    .expect("test timed out");
}
