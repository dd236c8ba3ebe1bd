//! Password work under attack: concurrent guesses at one account get no
//! more answers than the login limit allows, and a storm of logins, sign-ups
//! or password changes is refused beyond the hashing pool (503 with
//! `Retry-After`) instead of hashing them all at once.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Api, with_config};
use serde_json::json;
use vela_config::Config;

const PW: &str = "correct horse battery";
const LIMIT: Duration = Duration::from_secs(90);

fn login(username: &str, password: &str) -> serde_json::Value {
    json!({"username": username, "password": password, "device": {"kind": "web", "label": "t"}})
}

/// The statuses of `bodies` posted to `path` all at once, and how many
/// 503s carried `Retry-After`.
async fn storm(api: &Api, path: &str, bodies: Vec<serde_json::Value>) -> (Vec<u16>, usize) {
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let (api, path) = (api.clone(), path.to_owned());
            tokio::spawn(async move { api.post(&path, None, b).await })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut retry_after = 0;
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 503 && r.headers.contains_key("retry-after") {
            retry_after += 1;
        }
        statuses.push(r.status);
    }
    (statuses, retry_after)
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_get_at_most_the_limits_answers() {
    // A pool large enough that no guess is refused for want of it: the
    // limit alone decides.
    let config = |c: &mut Config| c.limits.password_hashes_at_once = 64;
    with_config(LIMIT, config, async |_, api| {
        api.register("victim", PW).await;
        let guesses = (0..60)
            .map(|i| login("victim", &format!("guess {i}")))
            .collect();
        let (statuses, _) = storm(api, "/api/v1/auth/login", guesses).await;
        // 10 per account per minute: the guesses counted before hashing.
        assert_eq!(count(&statuses, 401), 10, "{statuses:?}");
        assert_eq!(count(&statuses, 429), 50, "{statuses:?}");
        // And the account is locked for the rest of the window.
        api.post("/api/v1/auth/login", None, login("victim", PW))
            .await
            .err(429, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_right_password_gives_the_address_its_attempt_back() {
    let config = |c: &mut Config| c.limits.login_attempts_per_minute_per_address = 3;
    with_config(LIMIT, config, async |_, api| {
        api.register("amy", PW).await;
        // Many right logins from one address use none of its failures.
        for _ in 0..5 {
            api.post("/api/v1/auth/login", None, login("amy", PW))
                .await
                .ok(200);
        }
        for _ in 0..3 {
            api.post("/api/v1/auth/login", None, login("amy", "wrong one"))
                .await
                .err(401, None);
        }
        api.post("/api/v1/auth/login", None, login("amy", PW))
            .await
            .err(429, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_beyond_the_hashing_pool_is_refused_with_retry_after() {
    // One hash at a time (and one waiting); limits that never trigger.
    let config = |c: &mut Config| {
        c.limits.password_hashes_at_once = 1;
        c.limits.login_attempts_per_minute = 10_000;
        c.limits.login_attempts_per_minute_per_address = 10_000;
        c.limits.signups_per_hour_per_address = 10_000;
    };
    with_config(LIMIT, config, async |_, api| {
        api.register("ann", PW).await;
        let ann = api.login("ann", PW, "web", "t").await;

        // Logins for unknown users: each would hash (against a dummy hash).
        let bodies = (0..40)
            .map(|i| login(&format!("ghost{i}"), "nope"))
            .collect();
        let (statuses, retry_after) = storm(api, "/api/v1/auth/login", bodies).await;
        let busy = count(&statuses, 503);
        assert_eq!(count(&statuses, 401) + busy, 40, "{statuses:?}");
        assert!(busy > 0, "nothing refused: {statuses:?}");
        assert!(count(&statuses, 401) >= 2, "{statuses:?}");
        assert_eq!(retry_after, busy, "every 503 says when to retry");

        // Sign-ups likewise.
        let bodies = (0..40)
            .map(|i| json!({"username": format!("new{i}"), "password": PW}))
            .collect();
        let (statuses, _) = storm(api, "/api/v1/accounts", bodies).await;
        assert!(count(&statuses, 503) > 0, "{statuses:?}");
        assert_eq!(count(&statuses, 201) + count(&statuses, 503), 40);

        // A password change while the pool is kept busy: 503.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let noise: Vec<_> = (0..8)
            .map(|i| {
                let (api, stop) = (api.clone(), stop.clone());
                tokio::spawn(async move {
                    // Bounded: at most 200 logins each.
                    for _ in 0..200 {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                        api.post("/api/v1/auth/login", None, login(&format!("noise{i}"), "x"))
                            .await;
                    }
                })
            })
            .collect();
        let mut refused = false;
        for _ in 0..50 {
            let r = api
                .put(
                    "/api/v1/me/password",
                    &ann.access,
                    json!({"current_password": PW, "new_password": PW}),
                )
                .await;
            match r.status {
                503 => {
                    assert!(r.headers.contains_key("retry-after"));
                    refused = true;
                    break;
                }
                204 => {}
                other => panic!("password change answered {other}"),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in noise {
            t.await.unwrap();
        }
        assert!(
            refused,
            "no password change was refused while the pool was busy"
        );

        // Once the storm is over, everything works.
        api.post("/api/v1/auth/login", None, login("ann", PW))
            .await
            .ok(200);
        api.register("after", PW).await;
    })
    .await;
}
