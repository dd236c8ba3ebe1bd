//! What the transports do for a room served by another node of the
//! cluster (docs/architecture.md, "A join on the wrong node"): HTTP
//! requests are redirected (307) to the room's node; room sockets are
//! proxied there, carrying the client's address in a header only cluster
//! nodes can sign.

use std::net::IpAddr;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::transports::state::AppState;

/// The header a proxying node names the client's address in: a JWT
/// (HS256, the API secret every node shares) no client can make.
pub(crate) const FORWARDED_CLIENT: &str = "x-vela-forwarded-client";

/// The header naming the node that proxied a room socket: a proxied join
/// is never proxied again (no loops while a claim moves).
pub(crate) const PROXIED_BY: &str = "x-vela-proxied-by";

/// How long a forwarded address stays valid: the proxy signs it as it
/// connects.
const FORWARDED_VALIDITY: Duration = Duration::from_secs(60);

/// The audience of a forwarded address, so no other token of the API key
/// passes for one.
const AUDIENCE: &str = "vela-node-proxy";

#[derive(Debug, Serialize, Deserialize)]
struct Forwarded {
    /// The client's address.
    addr: String,
    /// The proxying node.
    iss: String,
    aud: String,
    exp: u64,
}

/// `307 Temporary Redirect` to the same path and query on the node at
/// `public_url`: the client repeats the request there, method, body and
/// `Authorization` included (RFC 9725 asks WHIP clients to).
pub(crate) fn redirect(public_url: &str, node: &str, uri: &Uri) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("{public_url}{path}");
    tracing::debug!(%node, %location, "redirected to the room's node");
    let mut response = (
        StatusCode::TEMPORARY_REDIRECT,
        axum::Json(serde_json::json!({
            "error": "elsewhere",
            "message": format!("the room is served by node {node}: repeat the request at {location}"),
            "node": node,
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// The signed header value naming `addr` as the client, from this node.
pub(crate) fn sign_forwarded(state: &AppState, addr: IpAddr) -> Option<String> {
    let (_, secret) = state.config.auth.effective_key();
    let node = state.cluster.as_ref()?.node().id.clone();
    let claims = Forwarded {
        addr: addr.to_string(),
        iss: node,
        aud: AUDIENCE.to_owned(),
        exp: u64::try_from(crate::domain::ids::now_ms() / 1000).unwrap_or(0)
            + FORWARDED_VALIDITY.as_secs(),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .ok()
}

/// The client's address a cluster node forwarded, if `headers` carry one
/// it signed; anything else (absent, forged, expired) is ignored.
pub(crate) fn forwarded_client(state: &AppState, headers: &HeaderMap) -> Option<IpAddr> {
    state.cluster.as_ref()?;
    let value = headers.get(FORWARDED_CLIENT)?.to_str().ok()?;
    let (_, secret) = state.config.auth.effective_key();
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&[AUDIENCE]);
    validation.leeway = 5;
    let data = jsonwebtoken::decode::<Forwarded>(
        value,
        &DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .ok()?;
    data.claims.addr.parse().ok()
}
