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
/// (HS256, the API secret every node shares) no client can make. A socket
/// that carries one is never proxied again (no loops while a claim moves).
pub(crate) const FORWARDED_CLIENT: &str = "x-vela-forwarded-client";

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
pub(crate) fn redirect(state: &AppState, public_url: &str, node: &str, uri: &Uri) -> Response {
    state.metrics.redirected();
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
    let node = &state.cluster.as_ref()?.node().id;
    let now = u64::try_from(crate::domain::ids::now_ms() / 1000).unwrap_or(0);
    sign_with(secret, node, addr, now)
}

fn sign_with(secret: &str, node: &str, addr: IpAddr, now_secs: u64) -> Option<String> {
    let claims = Forwarded {
        addr: addr.to_string(),
        iss: node.to_owned(),
        aud: AUDIENCE.to_owned(),
        exp: now_secs + FORWARDED_VALIDITY.as_secs(),
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
    verify_with(secret, value)
}

fn verify_with(secret: &str, value: &str) -> Option<IpAddr> {
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

/// In front of the room API's per-room operations
/// (`/api/v1/rooms/{room}/...`): a room open on another node is operated
/// there, so the request is redirected (307) to it. Requests without a
/// valid token, for rooms open nowhere or here, or while Redis is away go
/// on to the handler, which answers as a single node would.
pub(crate) async fn redirect_room_api(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(room) = room_of_api_path(request.uri().path())
        && state.nodes.is_some()
        && crate::transports::auth::bearer(request.headers())
            .ok()
            .is_some_and(|t| state.keys.verify_credential(t).is_ok())
        && let Ok(room) = vela_media::core::RoomId::new(room)
        && let Ok(Some(crate::services::room_directory::RoomHome::Elsewhere { node, public_url })) =
            state.rooms.lookup(&room).await
    {
        return redirect(&state, &public_url, &node, request.uri());
    }
    next.run(request).await
}

/// The room a per-room operation of the room API names.
fn room_of_api_path(path: &str) -> Option<&str> {
    path.strip_prefix("/api/v1/rooms/")?
        .split('/')
        .next()
        .filter(|r| !r.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_of_a_room_api_path() {
        assert_eq!(room_of_api_path("/api/v1/rooms/r1"), Some("r1"));
        assert_eq!(
            room_of_api_path("/api/v1/rooms/r1/participants/a/tracks/1/mute"),
            Some("r1")
        );
        assert_eq!(room_of_api_path("/api/v1/rooms"), None);
        assert_eq!(room_of_api_path("/api/v1/rooms/"), None);
        assert_eq!(room_of_api_path("/api/v1/calls/1"), None);
    }

    #[test]
    fn only_a_fresh_address_signed_with_the_clusters_secret_is_trusted() {
        let now = u64::try_from(crate::domain::ids::now_ms() / 1000).unwrap();
        let addr: IpAddr = "203.0.113.7".parse().unwrap();
        let signed = sign_with("secret", "n2", addr, now).unwrap();
        assert_eq!(verify_with("secret", &signed), Some(addr));
        assert_eq!(verify_with("other", &signed), None);
        let old = sign_with("secret", "n2", addr, now - 120).unwrap();
        assert_eq!(verify_with("secret", &old), None);
        // A room token of the same key is no forwarded address.
        let keys = crate::services::token::TokenKeys::new("key", "secret");
        let token = keys
            .issue(
                "203.0.113.7",
                None,
                crate::services::token::VideoGrant::default(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(verify_with("secret", &token), None);
        assert_eq!(verify_with("secret", "garbage"), None);
    }
}
