//! The device socket, `GET /api/v1/ws`: one per signed-in device, for
//! presence and pushes (docs/api.md, "Device socket").

use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::Instrument;

use crate::services::hub::{CLOSE_REVOKED, ConnKind, HubMsg};
use crate::services::push::{Push, Ready, SignOutReason};
use crate::services::rate_limit::TokenBucket;
use crate::services::store::SignInState;
use crate::services::token::AccessClaims;
use crate::transports::auth::{Authed, bearer};
use crate::transports::error::ApiError;
use crate::transports::http::presence::{SetPresence, apply};
use crate::transports::state::AppState;
use crate::transports::ws::{auth_timeout, close, limited, next_text, send_text};

/// Close code: the token was refused.
const CLOSE_AUTH_FAILED: u16 = 4001;
/// Close code: nothing heard for twice the heartbeat timeout.
const CLOSE_IDLE: u16 = 4008;

/// A message from a device.
#[derive(Debug)]
pub(crate) enum DeviceMessage {
    /// The first message (unless the upgrade carried `Authorization`).
    Auth(AuthBody),
    /// Keeps the device present; answered with `pong`. `ping` is the same.
    Heartbeat,
    /// Sets this device's status and/or the account's status text.
    SetPresence(SetPresence),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthBody {
    token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

/// Parses a device message; errors name the field at fault.
pub(crate) fn parse_message(text: &str) -> Result<DeviceMessage, ApiError> {
    let mut v: serde_json::Value = crate::transports::http::parse(text.as_bytes())?;
    let Some(obj) = v.as_object_mut() else {
        return Err(ApiError::bad_request("a message is a JSON object"));
    };
    let ty = match obj.remove("type") {
        Some(serde_json::Value::String(t)) => t,
        _ => return Err(ApiError::invalid("type", "is required")),
    };
    // The fields besides `type`, checked against the message's own shape.
    let rest = serde_json::Value::Object(std::mem::take(obj)).to_string();
    match ty.as_str() {
        "auth" => crate::transports::http::parse(rest.as_bytes()).map(DeviceMessage::Auth),
        "heartbeat" | "ping" => crate::transports::http::parse::<Empty>(rest.as_bytes())
            .map(|_| DeviceMessage::Heartbeat),
        "set_presence" => {
            crate::transports::http::parse(rest.as_bytes()).map(DeviceMessage::SetPresence)
        }
        _ => Err(ApiError::invalid(
            "type",
            format!("unknown message type {ty:?}"),
        )),
    }
}

/// `GET /api/v1/ws`: upgrades to a device socket. The token comes in an
/// `Authorization: Bearer` header or in the first message, `auth`.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let pre = if headers.contains_key(header::AUTHORIZATION) {
        let checked = match bearer(&headers) {
            Ok(t) => state.authenticate(t).await,
            Err(e) => Err(e),
        };
        match checked {
            Ok(c) => Some(c),
            Err(e) => return e.into_response(),
        }
    } else {
        None
    };
    let tracker = state.socket_tasks.clone();
    limited(ws, &state).on_upgrade(move |socket| tracker.track_future(run(state, socket, pre)))
}

async fn send_push(ws: &mut WebSocket, push: &Push) -> bool {
    match push.text() {
        Some(text) => send_text(ws, text).await,
        None => false,
    }
}

async fn send_error(ws: &mut WebSocket, e: &ApiError) -> bool {
    let error = Push::Error {
        code: e.status.as_u16(),
        message: e.message.clone(),
        field: e.field.clone(),
    };
    send_push(ws, &error).await
}

async fn run(state: AppState, mut ws: WebSocket, pre: Option<AccessClaims>) {
    let claims = match pre {
        Some(c) => c,
        None => match authenticate(&state, &mut ws).await {
            Ok(c) => c,
            Err((code, reason, error)) => {
                if let Some(e) = error {
                    send_error(&mut ws, &e).await;
                }
                return close(&mut ws, code, reason).await;
            }
        },
    };
    let span = tracing::info_span!("device_socket", account = %claims.acc, device = %claims.dev);
    serve(state, ws, claims).instrument(span).await;
}

type AuthFailure = (u16, &'static str, Option<ApiError>);

async fn authenticate(state: &AppState, ws: &mut WebSocket) -> Result<AccessClaims, AuthFailure> {
    let first = match tokio::time::timeout(auth_timeout(state), next_text(ws)).await {
        Err(_) => return Err((1008, "auth expected", None)),
        Ok(Err((code, reason))) => return Err((code, reason, None)),
        Ok(Ok(None)) => return Err((1000, "closed", None)),
        Ok(Ok(Some(t))) => t,
    };
    let token = match parse_message(&first) {
        Ok(DeviceMessage::Auth(AuthBody { token })) => token,
        Ok(_) => {
            return Err((
                CLOSE_AUTH_FAILED,
                "auth expected",
                Some(ApiError::unauthorized("the first message must be auth")),
            ));
        }
        Err(e) => return Err((CLOSE_AUTH_FAILED, "auth expected", Some(e))),
    };
    state
        .authenticate(&token)
        .await
        .map_err(|e| (CLOSE_AUTH_FAILED, "authentication failed", Some(e)))
}

async fn serve(state: AppState, mut ws: WebSocket, claims: AccessClaims) {
    let (account, device) = (claims.acc, claims.dev);
    let (_registration, mut pushes) = state.hub.register(account, device, ConnKind::Device);
    // A revoke between the token check and the registration would have missed this socket.
    if !matches!(
        state.store.sign_in_state(account, device).await,
        Ok(SignInState::Active)
    ) {
        let revoked = Push::SessionRevoked {
            device_id: device,
            reason: SignOutReason::Revoked,
        };
        send_push(&mut ws, &revoked).await;
        return close(&mut ws, CLOSE_REVOKED, "session revoked").await;
    }
    state.presence.activity(account, device);
    let timeout = Duration::from_millis(state.config.presence.heartbeat_timeout_ms);
    let ready = async {
        let me = state.presence.presence(account).await?;
        let contacts = state.presence.mutual_contacts(account).await?;
        let revision = state.store.contacts_revision(account).await?;
        Ok::<_, ApiError>(Push::Ready(Box::new(Ready {
            account_id: account,
            device_id: device,
            heartbeat_interval_ms: (timeout / 3).as_millis() as u64,
            presence: me,
            contacts,
            contacts_revision: revision,
        })))
    }
    .await;
    match ready {
        Ok(ready) => {
            if !send_push(&mut ws, &ready).await {
                return;
            }
        }
        Err(e) => {
            send_error(&mut ws, &e).await;
            return close(&mut ws, 1011, "internal error").await;
        }
    }
    tracing::info!("device socket open");
    let auth = Authed(claims);
    let mut shutdown = state.shutdown.clone();
    let idle = timeout * 2;
    let mut deadline = tokio::time::Instant::now() + idle;
    // A presence change is pushed to every contact's devices: bounded.
    let mut allowance = TokenBucket::new(
        state.config.limits.messages_per_second,
        std::time::Instant::now(),
    );
    loop {
        tokio::select! {
            incoming = next_text(&mut ws) => match incoming {
                Ok(Some(text)) => {
                    deadline = tokio::time::Instant::now() + idle;
                    if !allowance.take(1.0, std::time::Instant::now()) {
                        let e = ApiError::new(
                            axum::http::StatusCode::TOO_MANY_REQUESTS,
                            "too many messages (limits.messages_per_second): dropped",
                        );
                        if !send_error(&mut ws, &e).await {
                            break;
                        }
                        continue;
                    }
                    if !handle(&state, &mut ws, &auth, &text).await {
                        break;
                    }
                }
                Ok(None) => break,
                Err((code, reason)) => {
                    close(&mut ws, code, reason).await;
                    break;
                }
            },
            push = pushes.recv() => match push {
                Some(HubMsg::Event(text)) => {
                    if !send_text(&mut ws, text.as_ref().to_owned()).await {
                        break;
                    }
                }
                Some(HubMsg::Close { event, code, reason }) => {
                    if let Some(text) = event {
                        send_text(&mut ws, text.as_ref().to_owned()).await;
                    }
                    close(&mut ws, code, reason).await;
                    break;
                }
                None => {
                    close(&mut ws, 1013, "too slow to keep up").await;
                    break;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                close(&mut ws, CLOSE_IDLE, "heartbeat timeout").await;
                break;
            }
            _ = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                close(&mut ws, 1001, "server shutting down").await;
                break;
            }
        }
    }
    // The device stays present until its heartbeat timeout runs out.
    tracing::info!("device socket closed");
}

/// Handles one message; `false` when the socket is gone.
async fn handle(state: &AppState, ws: &mut WebSocket, auth: &Authed, text: &str) -> bool {
    let msg = match parse_message(text) {
        Ok(m) => m,
        Err(e) => {
            state.presence.activity(auth.account(), auth.device());
            return send_error(ws, &e).await;
        }
    };
    match msg {
        DeviceMessage::Heartbeat => {
            state.presence.activity(auth.account(), auth.device());
            send_push(ws, &Push::Pong).await
        }
        DeviceMessage::SetPresence(set) => match apply(state, auth, set).await {
            Ok(()) => true,
            Err(e) => {
                state.presence.activity(auth.account(), auth.device());
                send_error(ws, &e).await
            }
        },
        DeviceMessage::Auth(_) => {
            state.presence.activity(auth.account(), auth.device());
            send_error(ws, &ApiError::bad_request("already authenticated")).await
        }
    }
}
