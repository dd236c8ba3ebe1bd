//! Accounts over HTTP: sign-up, login, refresh rotation and reuse
//! detection, logout, password change, admin disable, bad input, and the
//! per-address limits behind a trusted reverse proxy or without one.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Api, DeviceClient, Login, start, start_with, with_config, with_server};
use serde_json::json;
use vela_config::Config;

const PW: &str = "correct horse battery";
const LIMIT: Duration = Duration::from_secs(60);

fn device(kind: &str) -> serde_json::Value {
    json!({"kind": kind, "label": "test"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_me_and_logout() {
    with_server(LIMIT, async |s, api| {
        let a = api
            .post(
                "/api/v1/accounts",
                None,
                json!({"username": "Alice", "password": PW, "display_name": " Alice A. "}),
            )
            .await
            .ok(201);
        assert_eq!(a["username"], "alice");
        assert_eq!(a["display_name"], "Alice A.");
        assert_eq!(a["roles"], json!(["user"]));
        assert!(a.get("password_hash").is_none());

        let v = api
            .post(
                "/api/v1/auth/login",
                None,
                json!({"username": "ALICE", "password": PW, "device": {"kind": "phone", "label": "Pixel"}}),
            )
            .await
            .ok(200);
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 900);
        assert_eq!(v["device"]["kind"], "phone");
        assert_eq!(v["device"]["label"], "Pixel");
        let login = Login::from(v);
        // The access token carries account, device, roles and permissions.
        let claims = vela_signaling::token::TokenKeys::new(
            vela_config::DEV_API_KEY,
            vela_config::DEV_API_SECRET,
        )
        .verify_access(&login.access)
        .unwrap();
        assert_eq!(claims.acc.0, login.account);
        assert_eq!(claims.dev.0, login.device);
        assert_eq!(claims.roles, vec!["user"]);
        assert!(claims.perms.contains(&"rooms:join".to_owned()));
        assert!(!claims.perms.contains(&"accounts:admin".to_owned()));

        let me = api.get("/api/v1/me", &login.access).await.ok(200);
        assert_eq!(me["id"], login.account);
        let me = api
            .call("PATCH", "/api/v1/me", Some(&login.access), Some(json!({"display_name": "Al"})))
            .await
            .ok(200);
        assert_eq!(me["display_name"], "Al");
        api.call("PATCH", "/api/v1/me", Some(&login.access), Some(json!({"display_name": ""})))
            .await
            .err(400, Some("display_name"));

        // No token, a garbage token, a room token: 401.
        api.call("GET", "/api/v1/me", None, None).await.err(401, None);
        api.get("/api/v1/me", "garbage").await.err(401, None);
        let room = common::dev_token(s, "r", "alice").await;
        api.get("/api/v1/me", &room).await.err(401, None);

        api.post("/api/v1/auth/logout", Some(&login.access), json!({}))
            .await
            .ok(204);
        api.get("/api/v1/me", &login.access).await.err(401, None);
        api.refresh(&login.refresh)
            .await
            .err(401, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_refuses_bad_input_and_taken_names() {
    tokio::time::timeout(LIMIT, async {
        let s = start().await;
        let api = Api::new(&s);
        api.register("bob", PW).await;
        // Taken, case-insensitively: 409 naming the field.
        api.post(
            "/api/v1/accounts",
            None,
            json!({"username": "BOB", "password": PW}),
        )
        .await
        .err(409, Some("username"));
        for (body, field) in [
            (json!({"username": "b", "password": PW}), "username"),
            (json!({"username": "bad name", "password": PW}), "username"),
            (
                json!({"username": "carol", "password": "short"}),
                "password",
            ),
            (
                json!({"username": "carol", "password": PW, "display_name": " "}),
                "display_name",
            ),
            (json!({"password": PW}), "username"),
            (json!({"username": "carol"}), "password"),
            (json!({"username": 5, "password": PW}), "username"),
            (
                json!({"username": "carol", "password": PW, "admin": true}),
                "admin",
            ),
        ] {
            api.post("/api/v1/accounts", None, body)
                .await
                .err(400, Some(field));
        }
        // Malformed JSON, wrong content type, oversize body.
        let url = format!("{}/api/v1/accounts", api.base);
        let r = api
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body("{nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let r = api.http.post(&url).body("username=x").send().await.unwrap();
        assert_eq!(r.status(), 415);
        let big = json!({"username": "carol", "password": "x".repeat(70_000)});
        let r = api.http.post(&url).json(&big).send().await.unwrap();
        assert_eq!(r.status(), 413);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"], 413);
        s.shutdown().await;

        // Sign-up can be closed.
        let s = start_with(|c| c.auth.allow_registration = false).await;
        Api::new(&s)
            .post(
                "/api/v1/accounts",
                None,
                json!({"username": "dave", "password": PW}),
            )
            .await
            .err(403, None);
        s.shutdown().await;
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_say_nothing_and_are_rate_limited() {
    let config = |c: &mut Config| {
        c.limits.login_attempts_per_minute = 3;
        c.limits.login_attempts_per_minute_per_address = 6;
    };
    with_config(LIMIT, config, async |_, api| {
        api.register("erin", PW).await;
        let login = |user: &str, pw: &str| {
            json!({"username": user, "password": pw, "device": device("desktop")})
        };
        // A wrong password and an unknown user look the same.
        let wrong = api.post("/api/v1/auth/login", None, login("erin", "wrong password")).await.err(401, None);
        let unknown = api.post("/api/v1/auth/login", None, login("nobody", PW)).await.err(401, None);
        assert_eq!(wrong["message"], unknown["message"]);
        // Bad device: 400 naming the field (checked before the password).
        api.post(
            "/api/v1/auth/login",
            None,
            json!({"username": "erin", "password": PW, "device": {"kind": "toaster", "label": "x"}}),
        )
        .await
        .err(400, Some("device.kind"));
        api.post(
            "/api/v1/auth/login",
            None,
            json!({"username": "erin", "password": PW, "device": {"kind": "web", "label": ""}}),
        )
        .await
        .err(400, Some("device.label"));
        // Two more failures use up erin's allowance: even the right password is 429.
        for _ in 0..2 {
            api.post("/api/v1/auth/login", None, login("erin", "wrong again")).await.err(401, None);
        }
        let r = api.post("/api/v1/auth/login", None, login("erin", PW)).await;
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry));
        r.err(429, None);
        // Another account is still fine from this address (4 failures so far)...
        api.register("frank", PW).await;
        api.login("frank", PW, "web", "tab").await;
        // ...until the address has used up its six.
        api.post("/api/v1/auth/login", None, login("nobody", PW)).await.err(401, None);
        api.post("/api/v1/auth/login", None, login("nobody2", PW)).await.err(401, None);
        api.post("/api/v1/auth/login", None, login("frank", PW)).await.err(429, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ups_are_limited_per_client_address() {
    // Without trusted proxies, X-Forwarded-For changes nothing: every
    // request here comes from 127.0.0.1.
    let config = |c: &mut Config| c.limits.signups_per_hour_per_address = 2;
    with_config(LIMIT, config, async |_, api| {
        let body = |user: &str| json!({"username": user, "password": PW});
        api.register("ann", PW).await;
        // A taken name hashed a password too: it counts.
        api.post("/api/v1/accounts", None, body("ann"))
            .await
            .err(409, Some("username"));
        let spoofed = api.forwarded_for("203.0.113.7");
        let r = spoofed.post("/api/v1/accounts", None, body("ben")).await;
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=3600).contains(&retry), "{retry}");
        r.err(429, None);
        // Input refused before any hashing does not count, nor hit the limit.
        spoofed
            .post(
                "/api/v1/accounts",
                None,
                json!({"username": "x y", "password": PW}),
            )
            .await
            .err(400, Some("username"));
        // Logging in is a different limit.
        api.login("ann", PW, "web", "tab").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_limits() {
    let config = |c: &mut Config| {
        c.server.trusted_proxies = vec!["127.0.0.0/8".into()];
        c.limits.signups_per_hour_per_address = 1;
        c.limits.login_attempts_per_minute_per_address = 2;
    };
    with_config(LIMIT, config, async |_, api| {
        let (one, two) = (
            api.forwarded_for("203.0.113.7"),
            api.forwarded_for("198.51.100.1, 127.0.0.1"),
        );
        one.register("ann", PW).await;
        two.register("ben", PW).await;
        let body = |user: &str| json!({"username": user, "password": PW});
        one.post("/api/v1/accounts", None, body("cat")).await.err(429, None);
        // The proxy's own address (no header) is a client of its own.
        api.register("dan", PW).await;
        // Failed logins, too, count per forwarded client.
        let login = |user: &str, pw: &str| {
            json!({"username": user, "password": pw, "device": device("web")})
        };
        for _ in 0..2 {
            one.post("/api/v1/auth/login", None, login("nobody", "wrong")).await.err(401, None);
        }
        one.post("/api/v1/auth/login", None, login("ann", PW)).await.err(429, None);
        two.login("ann", PW, "web", "tab").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_rotate_and_reuse_signs_the_device_out() {
    with_server(LIMIT, async |s, api| {
        let first = api.user("gina", "phone").await;
        let mut sock = DeviceClient::connect(s, &first.access, None).await;
        let r1 = api.refresh(&first.refresh).await.ok(200);
        let second = Login::from(r1);
        assert_ne!(second.refresh, first.refresh);
        assert_eq!(second.device, first.device);
        api.get("/api/v1/me", &second.access).await.ok(200);
        let third = Login::from(api.refresh(&second.refresh).await.ok(200));
        // Reusing a rotated token: 401, and the whole device is signed out.
        api.refresh(&first.refresh).await.err(401, None);
        let m = sock.expect("session_revoked").await;
        assert_eq!(m["reason"], "refresh_token_reused");
        assert_eq!(sock.closed().await, Some(4002));
        api.get("/api/v1/me", &third.access).await.err(401, None);
        api.refresh(&third.refresh).await.err(401, None);
        api.post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": "made-up"}),
        )
        .await
        .err(401, None);
        api.post("/api/v1/auth/refresh", None, json!({}))
            .await
            .err(400, Some("refresh_token"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_the_password_signs_other_devices_out() {
    with_server(LIMIT, async |s, api| {
        let phone = api.user("hank", "phone").await;
        let desk = api.login("hank", PW, "desktop", "Mac").await;
        let mut desk_sock = DeviceClient::connect(s, &desk.access, None).await;
        let change =
            |current: &str, new: &str| json!({"current_password": current, "new_password": new});
        api.put(
            "/api/v1/me/password",
            &phone.access,
            change("wrong one!", "a new password"),
        )
        .await
        .err(403, Some("current_password"));
        api.put("/api/v1/me/password", &phone.access, change(PW, "short"))
            .await
            .err(400, Some("new_password"));
        api.put(
            "/api/v1/me/password",
            &phone.access,
            change(PW, "a new password"),
        )
        .await
        .ok(204);
        assert_eq!(
            desk_sock.expect("session_revoked").await["reason"],
            "password_changed"
        );
        assert_eq!(desk_sock.closed().await, Some(4002));
        api.get("/api/v1/me", &desk.access).await.err(401, None);
        api.get("/api/v1/me", &phone.access).await.ok(200);
        api.post(
            "/api/v1/auth/login",
            None,
            json!({"username": "hank", "password": PW, "device": device("web")}),
        )
        .await
        .err(401, None);
        api.login("hank", "a new password", "web", "tab").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_disables_an_account_and_its_connections_close() {
    with_server(LIMIT, async |s, api| {
        let root = api.admin(s, "root", "desktop").await;
        assert_eq!(root.body["account"]["roles"], json!(["user", "admin"]));
        let ivy = api.user("ivy", "phone").await;
        let mut sock = DeviceClient::connect(s, &ivy.access, None).await;
        // Ivy joins a room with her access token.
        let mut room = common::Ws::connect(s).await;
        room.send(json!({"type": "join", "token": ivy.access, "room": "r1"}))
            .await;
        room.expect("joined").await;

        // Not an admin: 403.
        let path = format!("/api/v1/admin/accounts/{}/disable", root.account);
        api.post(&path, Some(&ivy.access), json!({}))
            .await
            .err(403, None);
        api.get("/api/v1/admin/accounts", &ivy.access)
            .await
            .err(403, None);
        let list = api
            .get("/api/v1/admin/accounts", &root.access)
            .await
            .ok(200);
        assert_eq!(list["accounts"].as_array().unwrap().len(), 2);
        api.get("/api/v1/admin/accounts?limit=0", &root.access)
            .await
            .err(400, Some("limit"));
        api.post(
            "/api/v1/admin/accounts/999/disable",
            Some(&root.access),
            json!({}),
        )
        .await
        .err(404, None);
        api.post(&path, Some(&root.access), json!({}))
            .await
            .err(400, None);

        let path = format!("/api/v1/admin/accounts/{}/disable", ivy.account);
        let a = api.post(&path, Some(&root.access), json!({})).await.ok(200);
        assert_eq!(a["disabled"], true);
        sock.expect("account_disabled").await;
        assert_eq!(sock.closed().await, Some(4003));
        assert_eq!(room.expect("left").await["reason"], "removed");
        assert_eq!(room.close_code().await, Some(4003));
        api.get("/api/v1/me", &ivy.access).await.err(401, None);
        api.refresh(&ivy.refresh).await.err(401, None);
        api.post(
            "/api/v1/auth/login",
            None,
            json!({"username": "ivy", "password": PW, "device": device("web")}),
        )
        .await
        .err(403, None);

        let path = format!("/api/v1/admin/accounts/{}/enable", ivy.account);
        assert_eq!(
            api.post(&path, Some(&root.access), json!({})).await.ok(200)["disabled"],
            false
        );
        api.login("ivy", PW, "web", "tab").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served() {
    with_server(LIMIT, async |s, _| {
        let r = reqwest::get(format!("{}/api/openapi.json", common::base(s)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let doc: serde_json::Value = r.json().await.unwrap();
        assert!(doc["paths"]["/api/v1/auth/login"]["post"].is_object());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_resets_a_forgotten_password() {
    with_server(LIMIT, async |s, api| {
        let root = api.admin(s, "root", "desktop").await;
        let june = api.user("june", "phone").await;
        let laptop = api.login("june", PW, "desktop", "laptop").await;
        let mut sock = DeviceClient::connect(s, &laptop.access, None).await;
        let path = format!("/api/v1/admin/accounts/{}/password", june.account);
        let reset = |pw: &str| json!({"new_password": pw});

        // Only an admin; a real account; a valid password.
        api.put(&path, &june.access, reset("a new password"))
            .await
            .err(403, None);
        api.put(
            "/api/v1/admin/accounts/999/password",
            &root.access,
            reset("a new password"),
        )
        .await
        .err(404, None);
        api.put(&path, &root.access, reset("short"))
            .await
            .err(400, Some("new_password"));
        api.get("/api/v1/me", &june.access).await.ok(200);

        api.put(&path, &root.access, reset("a new password"))
            .await
            .ok(204);
        // Every device is signed out, at once.
        assert_eq!(
            sock.expect("session_revoked").await["reason"],
            "password_reset"
        );
        assert_eq!(sock.closed().await, Some(4002));
        api.get("/api/v1/me", &june.access).await.err(401, None);
        api.get("/api/v1/me", &laptop.access).await.err(401, None);
        api.refresh(&june.refresh).await.err(401, None);
        // Only the new password gets in; the admin stays signed in.
        api.post(
            "/api/v1/auth/login",
            None,
            json!({"username": "june", "password": PW, "device": device("web")}),
        )
        .await
        .err(401, None);
        api.login("june", "a new password", "web", "tab").await;
        api.get("/api/v1/me", &root.access).await.ok(200);
    })
    .await;
}
