//! Accounts are the store's: made on one node, used on any.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use std::time::Duration;

use crate::nodes::Nodes;

#[tokio::test]
async fn an_account_made_on_node_1_logs_in_on_node_2() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let nodes = Nodes::start("accounts", 2, &[]).await;
        for n in &nodes.nodes {
            assert!(
                n.wait_ready(true, Duration::from_secs(10)).await,
                "{}",
                nodes.logs()
            );
        }
        nodes[0]
            .api()
            .register("alice", "correct horse battery")
            .await;
        let login = nodes[1]
            .api()
            .login("alice", "correct horse battery", "desktop", "laptop")
            .await;
        assert!(login.account > 0);
        // The token node 2 issued is good on node 1.
        nodes[0]
            .api()
            .get("/api/v1/me", &login.access)
            .await
            .ok(200);
    })
    .await
    .expect("test timed out");
}
