//! The account API under `/api/v1` (reference: docs/api.md and the OpenAPI
//! document served at `/api/openapi.json`).

mod accounts;
mod admin;
pub(crate) mod calls;
pub(crate) mod client_addr;
mod cluster;
mod contacts;
pub(crate) mod devices;
pub(crate) mod links;
pub(crate) mod metrics;
pub(crate) mod presence;
pub(crate) mod rooms;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use serde::de::DeserializeOwned;

use crate::transports::error::ApiError;
use crate::transports::state::AppState;

/// Declares documented routes once: each invocation builds a router and its
/// `OPERATIONS` from one list, so the OpenAPI document, checked against
/// every such list by a unit test in `server`, is checked against the
/// routers themselves.
macro_rules! documented_routes {
    ($($path:literal => $method:ident($handler:path) $(.$more:ident($more_handler:path))*;)+) => {
        /// HTTP operations of the API, as `(method, path)`: with the other
        /// invocations' lists, the OpenAPI document must describe each and
        /// no other (checked by a test in `server`).
        #[cfg_attr(not(test), allow(dead_code))]
        pub(crate) const OPERATIONS: &[(&str, &str)] = &[
            $((stringify!($method), $path), $((stringify!($more), $path),)*)+
        ];

        /// The routes of [`OPERATIONS`].
        fn documented_router() -> Router<AppState> {
            Router::new()$(.route($path, $method($handler)$(.$more($more_handler))*))+
        }
    };
}

pub(crate) use documented_routes;

// The OpenAPI document, the account API, the calls API and the server API
// (rooms, moderation, tokens); `server` adds the device socket's route the
// same way. A documented route goes in such a list, never in a `.route` of
// its own, or the check cannot see it.
documented_routes! {
    "/api/openapi.json" => get(openapi);
    "/api/v1/accounts" => post(accounts::register);
    "/api/v1/auth/login" => post(accounts::login);
    "/api/v1/auth/refresh" => post(accounts::refresh);
    "/api/v1/auth/logout" => post(accounts::logout);
    "/api/v1/me" => get(accounts::me).patch(accounts::update_me);
    "/api/v1/me/password" => put(accounts::change_password);
    "/api/v1/devices" => get(devices::list);
    "/api/v1/devices/{id}" => patch(devices::rename).delete(devices::revoke);
    "/api/v1/presence" => get(presence::overview).put(presence::set);
    "/api/v1/presence/{account_id}" => get(presence::get_one);
    "/api/v1/contacts" => get(contacts::list).post(contacts::create);
    "/api/v1/contacts/changes" => get(contacts::changes);
    "/api/v1/contacts/{id}" =>
        get(contacts::get_one).put(contacts::update).delete(contacts::remove);
    "/api/v1/contact-requests" => get(links::list_requests).post(links::send_request);
    "/api/v1/contact-requests/{id}/accept" => post(links::accept_request);
    "/api/v1/contact-requests/{id}" => delete(links::delete_request);
    "/api/v1/mutual-contacts" => get(links::list_mutual);
    "/api/v1/mutual-contacts/{account_id}" => delete(links::remove_mutual);
    "/api/v1/admin/accounts" => get(admin::list);
    "/api/v1/admin/accounts/{id}/disable" => post(admin::disable);
    "/api/v1/admin/accounts/{id}/enable" => post(admin::enable);
    "/api/v1/admin/accounts/{id}/password" => put(admin::reset_password);
    "/api/v1/rooms" => post(rooms::create).get(rooms::list);
    "/api/v1/rooms/{room}" => get(rooms::get_one).delete(rooms::delete);
    "/api/v1/rooms/{room}/participants" => get(rooms::participants);
    "/api/v1/rooms/{room}/participants/{identity}" =>
        get(rooms::participant).patch(rooms::update).delete(rooms::remove);
    "/api/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute" => post(rooms::mute);
    "/api/v1/rooms/{room}/data" => post(rooms::send_data);
    "/api/v1/tokens" => post(rooms::mint_token);
    "/api/v1/cluster/nodes" => get(cluster::nodes);
    "/api/v1/calls" => post(calls::invite);
    "/api/v1/calls/active" => get(calls::active);
    "/api/v1/calls/history" => get(calls::history);
    "/api/v1/calls/missed-count" => get(calls::missed_count);
    "/api/v1/calls/missed/seen" => post(calls::missed_seen);
    "/api/v1/calls/settings" => get(calls::settings).put(calls::set_settings);
    "/api/v1/calls/{id}" => get(calls::get_one);
    "/api/v1/calls/{id}/accept" => post(calls::accept);
    "/api/v1/calls/{id}/decline" => post(calls::decline);
    "/api/v1/calls/{id}/cancel" => post(calls::cancel);
    "/api/v1/calls/{id}/leave" => post(calls::leave);
    "/api/v1/calls/{id}/invite" => post(calls::add);
    "/api/v1/calls/{id}/messages" => post(calls::message);
}

/// The routes of the HTTP API, and the calls script of the web page.
pub(crate) fn routes() -> Router<AppState> {
    documented_router().route("/calls.js", get(calls_js))
}

/// `GET /calls.js`: the web page's calls (loaded by `/`).
async fn calls_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../../../static/calls.js"),
    )
        .into_response()
}

/// `GET /api/openapi.json`: the OpenAPI 3.1 document of the HTTP API.
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// A JSON request body. Errors are JSON too: 415 without a JSON content
/// type, 413 over `limits.max_message_bytes`, 400 naming the field for
/// malformed, missing, unknown or mistyped fields.
pub(crate) struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().starts_with("application/json"));
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ));
        }
        parse(&bytes).map(Body)
    }
}

/// Parses JSON, naming the field at fault in errors.
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.inner().to_string();
        // A missing field is reported at its parent: add its name.
        let missing = inner
            .split('`')
            .nth(1)
            .filter(|_| inner.starts_with("missing field"));
        let path = e.path().to_string();
        let field = match missing {
            Some(name) if path == "." => name.to_owned(),
            Some(name) => format!("{path}.{name}"),
            None => path,
        };
        // The body itself, or a path through an empty key (`""`, `a.`),
        // names no field.
        let unnamed = field.is_empty() || field.ends_with('.') || field.contains("..");
        if unnamed || e.inner().is_syntax() || e.inner().is_eof() {
            ApiError::bad_request(format!("malformed JSON: {inner}"))
        } else {
            ApiError::invalid(&field, inner)
        }
    })
}

/// The account `id`, or 404.
pub(crate) async fn load_account(
    state: &AppState,
    id: crate::domain::ids::AccountId,
) -> Result<crate::domain::account::Account, ApiError> {
    state
        .store
        .account(id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such account"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        kind: String,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Inner,
    }

    fn field(json: &str) -> Option<String> {
        parse::<Outer>(json.as_bytes()).expect_err(json).field
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(field(r#"{"inner":{"kind":"x"}}"#).as_deref(), Some("name"));
        assert_eq!(
            field(r#"{"name":1,"inner":{"kind":"x"}}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            field(r#"{"name":"a","inner":{}}"#).as_deref(),
            Some("inner.kind")
        );
        assert_eq!(
            field(r#"{"name":"a","inner":{"kind":"x","extra":1}}"#).as_deref(),
            Some("inner.extra")
        );
        let e = parse::<Outer>(b"{nope").expect_err("syntax");
        assert_eq!(e.field, None);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    /// Found by the `api_json` fuzz target: an unknown key that is empty
    /// made `field` empty (or `inner.`) and the message start with ": ".
    #[test]
    fn an_empty_key_names_no_field() {
        for json in [
            r#"{"":1}"#,
            r#"{"name":"a","inner":{"":1}}"#,
            r#"{"name":"a","inner":{"kind":"x","":1}}"#,
        ] {
            let e = parse::<Outer>(json.as_bytes()).expect_err(json);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{json}");
            assert_eq!(e.field, None, "{json}");
            assert!(
                e.message.contains("unknown field ``"),
                "{json}: {}",
                e.message
            );
            assert!(!e.message.starts_with(':'), "{json}: {}", e.message);
        }
    }
}
