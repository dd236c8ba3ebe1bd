//! Admin rights: never taken by signing up, granted and taken away with
//! `vela admin` against the store (while the server runs), effective at
//! once whatever the tokens say; an admin creates accounts while sign-up
//! is closed; `auth.admins` is refused with a message saying what to do.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::cli::vela;
use crate::common;

use std::time::Duration;

use common::{StoreFile, with_config};
use serde_json::json;
use vela_config::Config;

const PW: &str = "correct horse battery";
const LIMIT: Duration = Duration::from_secs(60);

fn admin_cli(file: &StoreFile, args: &[&str]) -> (bool, String) {
    let out = vela()
        .env(common::store_variable(&file.location), &file.location)
        .arg("admin")
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rights_come_from_the_store_and_count_at_once() {
    let file = StoreFile::new("admins");
    with_config(LIMIT, file.config(), async |_, api| {
        // Signing up as "root" or "admin" gives nothing.
        let root = api.user("root", "desktop").await;
        assert_eq!(root.body["account"]["roles"], json!(["user"]));
        api.get("/api/v1/admin/accounts", &root.access)
            .await
            .err(403, None);

        // Granted on the command line, against the running server's store:
        // the same token works at once.
        let (ok, out) = admin_cli(&file, &["grant", "Root"]);
        assert!(ok, "{out}");
        assert!(out.contains("root is an admin"), "{out}");
        api.get("/api/v1/admin/accounts", &root.access)
            .await
            .ok(200);
        let (ok, out) = admin_cli(&file, &["list"]);
        assert!(ok && out.contains("\troot"), "{out}");
        assert_eq!(
            api.get("/api/v1/me", &root.access).await.ok(200)["roles"],
            json!(["user", "admin"])
        );

        // Taken away: refused at once, though the token still says admin
        // after a fresh login.
        let fresh = api.login("root", PW, "web", "fresh").await;
        assert_eq!(fresh.body["account"]["roles"], json!(["user", "admin"]));
        let (ok, out) = admin_cli(&file, &["revoke", "root"]);
        assert!(ok, "{out}");
        api.get("/api/v1/admin/accounts", &fresh.access)
            .await
            .err(403, None);
        api.post("/api/v1/rooms", Some(&fresh.access), json!({"name": "r"}))
            .await
            .err(403, None);
        let (ok, out) = admin_cli(&file, &["list"]);
        assert!(ok && !out.contains("root"), "{out}");
        let (ok, out) = admin_cli(&file, &["grant", "nobody"]);
        assert!(!ok && out.contains("no account named"), "{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_accounts_while_sign_up_is_closed() {
    let config = |c: &mut Config| {
        c.auth.allow_registration = false;
        c.limits.signups_per_hour_per_address = 1;
    };
    with_config(LIMIT, config, async |s, api| {
        let body = |name: &str| json!({"username": name, "password": PW});
        api.post("/api/v1/accounts", None, body("ann"))
            .await
            .err(403, None);
        // The first admin is made in the store (as `vela admin grant` does).
        let id = s
            .store()
            .create_account(
                "root",
                "Root",
                "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                &[vela_signaling::account::Role::User, vela_signaling::account::Role::Admin],
                0,
            )
            .await
            .unwrap()
            .id;
        api.put(
            &format!("/api/v1/admin/accounts/{id}/password"),
            "not-a-token",
            json!({"new_password": PW}),
        )
        .await
        .err(401, None);
        // (The password above matches nothing: set a real one in the store.)
        let hash = {
            let pool = vela_signaling::password::PasswordHasher::new(1);
            pool.reserve().unwrap().hash(PW.into()).await.unwrap()
        };
        s.store().set_password_hash(id, &hash).await.unwrap();
        let root = api.login("root", PW, "web", "t").await;
        // Admins are not held to the per-address sign-up limit either.
        for name in ["ann", "ben"] {
            let a = api
                .post("/api/v1/accounts", Some(&root.access), body(name))
                .await
                .ok(201);
            assert_eq!(a["roles"], json!(["user"]));
        }
        api.login("ann", PW, "web", "t").await;
        // Not an admin: still closed.
        let ann = api.login("ann", PW, "web", "t2").await;
        api.post("/api/v1/accounts", Some(&ann.access), body("cat"))
            .await
            .err(403, None);
    })
    .await;
}

#[test]
fn the_removed_auth_admins_setting_says_what_to_do() {
    let out = vela()
        .env("VELA_STORE_PATH", ":memory:")
        .args(["--config", "/dev/stdin"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin
                .take()
                .unwrap()
                .write_all(b"[auth]\nadmins = [\"root\"]\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("auth.admins") && err.contains("vela admin grant"),
        "{err}"
    );
}
