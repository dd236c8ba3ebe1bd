//! HTTP errors with a status and a reason the client can read.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vela_media::MediaError;
use vela_media::core::{JoinError, SignalError};

use crate::token::TokenError;

/// An error answered to an HTTP client as `{"error": code, "message": reason}`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// Why.
    pub message: String,
}

impl ApiError {
    /// An error with this status and reason.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
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
            MediaError::Join(_) => StatusCode::BAD_REQUEST,
            MediaError::Signal(SignalError::UnknownParticipant) => StatusCode::NOT_FOUND,
            MediaError::Signal(SignalError::NoPendingOffer) => StatusCode::CONFLICT,
            MediaError::Signal(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": self.status.as_u16(),
            "message": self.message,
        });
        (self.status, Json(body)).into_response()
    }
}
