//! A PostgreSQL outage under a running server (api_postgres only: an
//! SQLite file cannot go away like a database server): requests that need
//! the store get 503 with `Retry-After`, `/readyz` fails, and both recover
//! when the database is back, without a restart.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::{Duration, Instant};

use common::{Api, start_with};

const LIMIT: Duration = Duration::from_secs(60);

/// Runs `sql` on the server's maintenance database (`postgres`), beside
/// the database `url` names.
async fn admin(url: &str, sql: &str) {
    let (server, _) = url.rsplit_once('/').unwrap();
    let db = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    sqlx::query(sql).execute(&db).await.unwrap();
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_with_retry_after_until_it_is_back() {
    tokio::time::timeout(LIMIT, async {
        let mut url = String::new();
        let s = start_with(|c| url = c.store.url.clone()).await;
        let api = Api::new(&s);
        let ann = api.user("ann", "phone").await;
        api.get("/api/v1/contacts", &ann.access).await.ok(200);
        let name = url.rsplit_once('/').unwrap().1.to_owned();

        // The database refuses connections, and the server's are cut.
        admin(
            &url,
            &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
        )
        .await;
        admin(
            &url,
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ),
        )
        .await;
        let r = api.get("/api/v1/contacts", &ann.access).await;
        assert_eq!(r.status, 503, "{:?}", r.body);
        let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=10).contains(&retry), "Retry-After: {retry}");
        let ready = reqwest::get(format!("{}/readyz", common::base(&s)))
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);

        // Back: the next requests succeed on new connections.
        admin(
            &url,
            &format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"),
        )
        .await;
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let r = api.get("/api/v1/contacts", &ann.access).await;
            if r.status == 200 {
                break;
            }
            assert_eq!(r.status, 503, "{:?}", r.body);
            assert!(Instant::now() < until, "the server did not recover");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ready = reqwest::get(format!("{}/readyz", common::base(&s)))
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        s.shutdown().await;
    })
    .await
    .expect("test timed out");
}
