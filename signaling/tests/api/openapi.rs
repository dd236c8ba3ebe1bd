//! The router and the OpenAPI document agree, asked of the running server:
//! every documented operation is routed (its answer is not the router's own
//! 404 or 405), and at a documented path every method the document does not
//! name gets the router's 405. The reverse for new paths (a route nobody
//! documented) is the unit test in `server`, over the lists the routers are
//! built from.

#![allow(clippy::unwrap_used)] // Tests fail loudly on purpose.

use crate::common;

use std::time::Duration;

use common::{Resp, with_server};
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);

/// The methods probed at each documented path.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// The router's own answer to an unrouted request: 404 (no such path) or
/// 405 (no such method there), both with an empty body; a handler's
/// refusal is a JSON error.
fn from_the_router(r: &Resp) -> bool {
    matches!(r.status, 404 | 405) && r.body.is_null()
}

/// `path` with each `{parameter}` replaced by `1`.
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').unwrap() + open;
        out.push_str(&rest[..open]);
        out.push('1');
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_serves_exactly_the_documented_operations() {
    with_server(LIMIT, async |_, api| {
        let doc = api
            .call("GET", "/api/openapi.json", None, None)
            .await
            .ok(200);
        let paths = doc["paths"].as_object().unwrap();
        let (mut operations, mut wrong) = (0, Vec::new());
        for (path, item) in paths {
            let url = concrete(path);
            for method in METHODS {
                // No token: nothing is changed, and a handler still answers
                // (401, 400 or its own error) rather than the router.
                let body = (method != "get" && method != "delete").then(|| json!({}));
                let r = api.call(&method.to_uppercase(), &url, None, body).await;
                let documented = item.get(method).is_some_and(Value::is_object);
                operations += usize::from(documented);
                if documented && from_the_router(&r) {
                    wrong.push(format!(
                        "{method} {path} is documented but not routed ({})",
                        r.status
                    ));
                } else if !documented && !from_the_router(&r) {
                    wrong.push(format!(
                        "{method} {path} is not documented but answers {} {}",
                        r.status, r.body
                    ));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "the router and openapi.json differ:\n{}",
            wrong.join("\n")
        );
        assert!(operations >= 50, "only {operations} operations documented");
        // The probe tells the router's answers apart: an unknown path is
        // its 404, a known one with a wrong method its 405.
        let r = api.call("GET", "/api/v1/no-such-thing", None, None).await;
        assert!(from_the_router(&r) && r.status == 404, "{r:?}");
        let r = api.call("PUT", "/api/v1/accounts", None, None).await;
        assert!(from_the_router(&r) && r.status == 405, "{r:?}");
    })
    .await;
}

#[test]
fn parameters_are_filled_in() {
    assert_eq!(
        concrete("/api/v1/rooms/{room}/participants/{identity}"),
        "/api/v1/rooms/1/participants/1"
    );
    assert_eq!(concrete("/api/v1/me"), "/api/v1/me");
}
