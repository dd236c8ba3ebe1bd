//! Safe defaults: with the development key (whose secret is public) the
//! server listens on loopback only unless told otherwise. (That the SQLite
//! file is private is in `sqlite_file.rs`.)

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::start_with;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_key_listens_on_loopback_only() {
    tokio::time::timeout(LIMIT, async {
        let any = |c: &mut vela_config::Config| c.server.http = "0.0.0.0:0".parse().unwrap();
        let s = start_with(any).await;
        assert!(s.http_addr.ip().is_loopback(), "{}", s.http_addr);
        s.shutdown().await;

        let s = start_with(|c| {
            any(c);
            c.auth.insecure_development_key_on_network = true;
        })
        .await;
        assert!(s.http_addr.ip().is_unspecified(), "{}", s.http_addr);
        s.shutdown().await;

        let s = start_with(|c| {
            any(c);
            c.auth.api_key = "prod".into();
            c.auth.api_secret = "0123456789abcdef0123456789abcdef".into();
        })
        .await;
        assert!(s.http_addr.ip().is_unspecified(), "{}", s.http_addr);
        s.shutdown().await;
    })
    .await
    .unwrap();
}
