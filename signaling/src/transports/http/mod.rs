//! The account API under `/api/v1` (reference: docs/api.md and the OpenAPI
//! document served at `/api/openapi.json`).

mod accounts;
mod admin;
pub(crate) mod calls;
pub(crate) mod client_addr;
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

/// Every HTTP operation of the account API, as `(method, path)`; the
/// OpenAPI document must describe each (checked by a test).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const OPERATIONS: &[(&str, &str)] = &[
    ("post", "/api/v1/accounts"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/me"),
    ("patch", "/api/v1/me"),
    ("put", "/api/v1/me/password"),
    ("get", "/api/v1/devices"),
    ("patch", "/api/v1/devices/{id}"),
    ("delete", "/api/v1/devices/{id}"),
    ("get", "/api/v1/presence"),
    ("put", "/api/v1/presence"),
    ("get", "/api/v1/presence/{account_id}"),
    ("get", "/api/v1/contacts"),
    ("post", "/api/v1/contacts"),
    ("get", "/api/v1/contacts/changes"),
    ("get", "/api/v1/contacts/{id}"),
    ("put", "/api/v1/contacts/{id}"),
    ("delete", "/api/v1/contacts/{id}"),
    ("get", "/api/v1/contact-requests"),
    ("post", "/api/v1/contact-requests"),
    ("post", "/api/v1/contact-requests/{id}/accept"),
    ("delete", "/api/v1/contact-requests/{id}"),
    ("get", "/api/v1/mutual-contacts"),
    ("delete", "/api/v1/mutual-contacts/{account_id}"),
    ("get", "/api/v1/admin/accounts"),
    ("post", "/api/v1/admin/accounts/{id}/disable"),
    ("post", "/api/v1/admin/accounts/{id}/enable"),
    ("put", "/api/v1/admin/accounts/{id}/password"),
    ("get", "/api/v1/ws"),
    ("get", "/api/openapi.json"),
    ("post", "/api/v1/calls"),
    ("get", "/api/v1/calls/active"),
    ("get", "/api/v1/calls/history"),
    ("get", "/api/v1/calls/missed-count"),
    ("post", "/api/v1/calls/missed/seen"),
    ("get", "/api/v1/calls/settings"),
    ("put", "/api/v1/calls/settings"),
    ("get", "/api/v1/calls/{id}"),
    ("post", "/api/v1/calls/{id}/accept"),
    ("post", "/api/v1/calls/{id}/decline"),
    ("post", "/api/v1/calls/{id}/cancel"),
    ("post", "/api/v1/calls/{id}/leave"),
    ("post", "/api/v1/calls/{id}/invite"),
    ("post", "/api/v1/calls/{id}/messages"),
    ("post", "/api/v1/rooms"),
    ("get", "/api/v1/rooms"),
    ("get", "/api/v1/rooms/{room}"),
    ("delete", "/api/v1/rooms/{room}"),
    ("get", "/api/v1/rooms/{room}/participants"),
    ("get", "/api/v1/rooms/{room}/participants/{identity}"),
    ("patch", "/api/v1/rooms/{room}/participants/{identity}"),
    ("delete", "/api/v1/rooms/{room}/participants/{identity}"),
    (
        "post",
        "/api/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute",
    ),
    ("post", "/api/v1/rooms/{room}/data"),
    ("post", "/api/v1/tokens"),
];

/// The routes of the account API.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/accounts", post(accounts::register))
        .route("/api/v1/auth/login", post(accounts::login))
        .route("/api/v1/auth/refresh", post(accounts::refresh))
        .route("/api/v1/auth/logout", post(accounts::logout))
        .route("/api/v1/me", get(accounts::me).patch(accounts::update_me))
        .route("/api/v1/me/password", put(accounts::change_password))
        .route("/api/v1/devices", get(devices::list))
        .route(
            "/api/v1/devices/{id}",
            patch(devices::rename).delete(devices::revoke),
        )
        .route(
            "/api/v1/presence",
            get(presence::overview).put(presence::set),
        )
        .route("/api/v1/presence/{account_id}", get(presence::get_one))
        .route(
            "/api/v1/contacts",
            get(contacts::list).post(contacts::create),
        )
        .route("/api/v1/contacts/changes", get(contacts::changes))
        .route(
            "/api/v1/contacts/{id}",
            get(contacts::get_one)
                .put(contacts::update)
                .delete(contacts::remove),
        )
        .route(
            "/api/v1/contact-requests",
            get(links::list_requests).post(links::send_request),
        )
        .route(
            "/api/v1/contact-requests/{id}/accept",
            post(links::accept_request),
        )
        .route(
            "/api/v1/contact-requests/{id}",
            delete(links::delete_request),
        )
        .route("/api/v1/mutual-contacts", get(links::list_mutual))
        .route(
            "/api/v1/mutual-contacts/{account_id}",
            delete(links::remove_mutual),
        )
        .route("/api/v1/admin/accounts", get(admin::list))
        .route("/api/v1/admin/accounts/{id}/disable", post(admin::disable))
        .route("/api/v1/admin/accounts/{id}/enable", post(admin::enable))
        .route(
            "/api/v1/admin/accounts/{id}/password",
            put(admin::reset_password),
        )
        .merge(call_routes())
        .merge(room_routes())
}

/// The routes of the server API (rooms, moderation, tokens).
fn room_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rooms", post(rooms::create).get(rooms::list))
        .route(
            "/api/v1/rooms/{room}",
            get(rooms::get_one).delete(rooms::delete),
        )
        .route(
            "/api/v1/rooms/{room}/participants",
            get(rooms::participants),
        )
        .route(
            "/api/v1/rooms/{room}/participants/{identity}",
            get(rooms::participant)
                .patch(rooms::update)
                .delete(rooms::remove),
        )
        .route(
            "/api/v1/rooms/{room}/participants/{identity}/tracks/{track}/mute",
            post(rooms::mute),
        )
        .route("/api/v1/rooms/{room}/data", post(rooms::send_data))
        .route("/api/v1/tokens", post(rooms::mint_token))
}

/// The routes of the calls API.
fn call_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/calls", post(calls::invite))
        .route("/api/v1/calls/active", get(calls::active))
        .route("/api/v1/calls/history", get(calls::history))
        .route("/api/v1/calls/missed-count", get(calls::missed_count))
        .route("/api/v1/calls/missed/seen", post(calls::missed_seen))
        .route(
            "/api/v1/calls/settings",
            get(calls::settings).put(calls::set_settings),
        )
        .route("/api/v1/calls/{id}", get(calls::get_one))
        .route("/api/v1/calls/{id}/accept", post(calls::accept))
        .route("/api/v1/calls/{id}/decline", post(calls::decline))
        .route("/api/v1/calls/{id}/cancel", post(calls::cancel))
        .route("/api/v1/calls/{id}/leave", post(calls::leave))
        .route("/api/v1/calls/{id}/invite", post(calls::add))
        .route("/api/v1/calls/{id}/messages", post(calls::message))
        .route("/calls.js", get(calls_js))
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
pub(crate) async fn openapi() -> Response {
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

    #[test]
    fn the_openapi_document_describes_every_operation() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("openapi.json")).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
        for (method, path) in OPERATIONS {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "openapi.json lacks {method} {path}");
            assert!(op["summary"].is_string(), "{method} {path} has no summary");
            assert!(
                op["responses"].is_object(),
                "{method} {path} has no responses"
            );
        }
        let documented: usize = doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .map(|p| {
                p.as_object()
                    .map_or(0, |m| m.keys().filter(|k| *k != "parameters").count())
            })
            .sum();
        assert_eq!(
            documented,
            OPERATIONS.len(),
            "openapi.json documents operations the server lacks"
        );
    }
}
