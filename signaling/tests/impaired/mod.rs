//! The set-up of the impaired-link browser tests (`browser_layers`,
//! `browser_loss`, `browser_outage`): a server also reachable from a fresh
//! network namespace, Alice's Chromium on the host and Bob's inside the
//! namespace, whose link the test then caps, makes lossy or cuts.

use std::net::IpAddr;
use std::time::Duration;

use crate::browser::{self, Client, Harness, TestResult};
use crate::netns::Link;
use crate::quality;

/// Runs `scenario` with a fresh namespace's link, up to `attempts` times
/// (see [`browser::run_with_retries`]) within `limit` each.
pub async fn run(
    test: &str,
    limit: Duration,
    attempts: u32,
    scenario: impl AsyncFn(&Harness, &Link) -> TestResult,
) {
    quality::require_root();
    let link = Link::new().expect("network namespace");
    let config = browser::netns_config(&[IpAddr::V4(link.host_ip)]);
    browser::run_with_retries(test, limit, config, attempts, async |h| {
        scenario(h, &link).await
    })
    .await;
}

/// Alice's page on the host and Bob's in `link`'s namespace, both at
/// `room`'s page (not joined yet).
pub async fn open_pages(h: &Harness, link: &Link, room: &str) -> TestResult<(Client, Client)> {
    let path = format!("/?room={room}");
    let alice = h.open("alice", &path).await?;
    let bob = h
        .open_in_netns("bob", &link.ns, IpAddr::V4(link.host_ip), &path)
        .await?;
    Ok((alice, bob))
}
