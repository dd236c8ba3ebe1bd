//! HTTP errors with a status and a reason the client can read.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vela_media::MediaError;
use vela_media::core::{JoinError, SignalError};

use crate::domain::Invalid;
use crate::domain::call::state::CallError;
use crate::services::auth::{LimitError, NoRandomness, TooMany};
use crate::services::calls::{CallsError, Refusal};
use crate::services::hub::BusError;
use crate::services::password::PasswordError;
use crate::services::presence::PresenceError;
use crate::services::token::TokenError;

/// An error answered to an HTTP client as `{"error": code, "message": reason}`,
/// plus `"field"` when one input field is to blame and `"current"` (the
/// current record) on a version conflict.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Why.
    pub message: String,
    /// The input field at fault, for validation errors.
    pub field: Option<String>,
    /// The current state of a record an edit conflicted with.
    pub current: Option<serde_json::Value>,
    /// Seconds until a rate-limited request may be retried.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with this status and reason.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
            current: None,
            retry_after: None,
        }
    }

    /// 400 naming the input field at fault: `"<field>: <message>"`.
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = Self::bad_request(format!("{field}: {message}"));
        e.field = Some(field.to_owned());
        e
    }

    /// 401 Unauthorized.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 409 Conflict.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    /// 429 Too Many Requests, retry after `secs`.
    pub fn too_many(secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many attempts; retry in {secs} s"),
        );
        e.retry_after = Some(secs);
        e
    }

    /// 500, logged; the client sees only that something failed.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// 404 Not Found.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<crate::services::room_directory::DirectoryError> for ApiError {
    /// 503 with `Retry-After`: the room cannot be placed now (the cluster's
    /// Redis is away, or the room's node just died).
    fn from(e: crate::services::room_directory::DirectoryError) -> ApiError {
        if let Some(cause) = std::error::Error::source(&e) {
            // The heartbeat logs the outage once; each refusal only at debug.
            tracing::debug!(error = %cause, "room directory unavailable");
        }
        let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        err.retry_after = Some(e.retry_after_secs());
        err
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::invalid(&e.field, e.message)
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> ApiError {
        match e {
            CallError::NotFound => ApiError::not_found("no such call"),
            CallError::Conflict(m) => ApiError::conflict(m),
            CallError::Forbidden(m) => ApiError::forbidden(m),
            CallError::Invalid(m) => ApiError::invalid("to", m),
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(e: Refusal) -> ApiError {
        match e {
            Refusal::NotFound => ApiError::not_found("no such call"),
            Refusal::Conflict(m) => ApiError::conflict(m),
            Refusal::Forbidden(m) => ApiError::forbidden(m),
            Refusal::Invalid(m) => ApiError::invalid("to", m),
        }
    }
}

impl From<CallsError> for ApiError {
    fn from(e: CallsError) -> ApiError {
        match e {
            CallsError::Call(e) => e.into(),
            CallsError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            }
            e @ CallsError::Unavailable {
                retry_after_secs, ..
            } => {
                let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                err.retry_after = Some(retry_after_secs);
                err
            }
        }
    }
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        match e {
            PresenceError::Invalid(e) => e.into(),
            PresenceError::Store(e) => e.into(),
        }
    }
}

impl From<TooMany> for ApiError {
    fn from(e: TooMany) -> Self {
        ApiError::too_many(e.retry_after)
    }
}

impl From<LimitError> for ApiError {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::TooMany(e) => e.into(),
            LimitError::Unavailable { retry_after } => {
                let mut a = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                a.retry_after = Some(retry_after);
                a
            }
        }
    }
}

impl From<NoRandomness> for ApiError {
    fn from(e: NoRandomness) -> Self {
        ApiError::internal(e)
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy(secs) => {
                let mut a = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                a.retry_after = Some(secs);
                a
            }
            PasswordError::Failed(detail) => ApiError::internal(detail),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, e.to_string())
    }
}

impl From<MediaError> for ApiError {
    fn from(e: MediaError) -> Self {
        let status = match &e {
            MediaError::Join(JoinError::NotPermitted(_)) => StatusCode::FORBIDDEN,
            MediaError::Join(JoinError::RoomFull(_)) => StatusCode::CONFLICT,
            // The connection's WebRTC stack panicked (a server bug): the
            // request may be fine, the server is not.
            MediaError::Join(JoinError::ConnectionFailed)
            | MediaError::Signal(SignalError::ConnectionFailed) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            MediaError::Join(_) => StatusCode::BAD_REQUEST,
            MediaError::Signal(
                SignalError::UnknownParticipant
                | SignalError::UnknownRoom
                | SignalError::UnknownTrack,
            ) => StatusCode::NOT_FOUND,
            MediaError::Signal(SignalError::NotPermitted(_)) => StatusCode::FORBIDDEN,
            MediaError::Signal(SignalError::NoPendingOffer) => StatusCode::CONFLICT,
            MediaError::Signal(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<BusError> for ApiError {
    /// 503, retry in a second: the change is made, but the cluster's other
    /// nodes could not be told (their device sockets reload).
    fn from(e: BusError) -> Self {
        tracing::warn!(error = %e, "answering 503: the cluster bus is unavailable");
        let mut a = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        a.retry_after = Some(1);
        a
    }
}

/// Seconds a client waits before retrying when the database is unreachable.
const STORE_RETRY_AFTER_SECS: u64 = 2;

impl From<crate::services::store::StoreError> for ApiError {
    fn from(e: crate::services::store::StoreError) -> Self {
        use crate::services::store::StoreError;
        match e {
            StoreError::Conflict => ApiError::conflict("already exists"),
            // An outage (or a lost lock race): the request may succeed
            // again shortly, on this node or another.
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "store unavailable");
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the database is unavailable; retry in {STORE_RETRY_AFTER_SECS} s"),
                );
                a.retry_after = Some(STORE_RETRY_AFTER_SECS);
                a
            }
            e => ApiError::internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({
            "error": self.status.as_u16(),
            "message": self.message,
        });
        if let Some(field) = self.field {
            body["field"] = field.into();
        }
        if let Some(current) = self.current {
            body["current"] = current;
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_attempts_is_429_with_retry_after() {
        let e = ApiError::from(TooMany { retry_after: 7 });
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(7));
        assert_eq!(e.message, "too many attempts; retry in 7 s");
    }

    #[test]
    fn limits_out_of_reach_are_503_with_retry_after() {
        let e = ApiError::from(LimitError::Unavailable { retry_after: 5 });
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(5));
        assert!(e.message.contains("Redis"), "{}", e.message);
        let e = ApiError::from(LimitError::TooMany(TooMany { retry_after: 3 }));
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn a_store_outage_is_503_with_retry_after() {
        use crate::services::store::StoreError;
        let e = ApiError::from(StoreError::from(sqlx::Error::PoolTimedOut));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(STORE_RETRY_AFTER_SECS));
        let e = ApiError::from(StoreError::from(sqlx::Error::RowNotFound));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.retry_after, None);
    }

    #[test]
    fn a_busy_password_pool_is_503_with_retry_after() {
        let e = ApiError::from(PasswordError::Busy(1));
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.retry_after, Some(1));
        assert_eq!(
            e.message,
            "the server is busy checking passwords; retry in 1 s"
        );
    }
}
