//! Signing a webhook body as LiveKit does: a JWT (HS256, the API secret) in
//! the `Authorization` header whose `sha256` claim is the base64 SHA-256 of
//! the exact body bytes.

use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a signature stays valid (covers the retries of one delivery).
const VALIDITY: Duration = Duration::from_secs(300);

/// The claims of a webhook signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookClaims {
    /// The API key whose secret signed it.
    pub iss: String,
    /// Not before, seconds since the epoch.
    pub nbf: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Base64 (standard, padded) of the SHA-256 of the body.
    pub sha256: String,
}

/// Why a webhook signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Bad JWT: signature, issuer, expiry or format.
    #[error("invalid webhook token: {0}")]
    Token(String),
    /// The body is not the one that was signed.
    #[error("the body does not match the signed sha256")]
    BodyMismatch,
}

/// The `sha256` claim for `body`.
pub fn body_hash(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
}

/// Signs `body`; the result is the `Authorization` header's value.
pub fn sign(api_key: &str, api_secret: &str, body: &[u8], now_secs: u64) -> Result<String, String> {
    let claims = WebhookClaims {
        iss: api_key.to_owned(),
        nbf: now_secs.saturating_sub(1),
        exp: now_secs + VALIDITY.as_secs(),
        sha256: body_hash(body),
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(api_secret.as_bytes()),
    )
    .map_err(|e| e.to_string())
}

/// Checks a delivery as a receiver would: the token's signature, issuer and
/// expiry, then the body's hash.
pub fn verify(
    api_key: &str,
    api_secret: &str,
    authorization: &str,
    body: &[u8],
) -> Result<WebhookClaims, SignatureError> {
    let token = authorization
        .strip_prefix("Bearer ")
        .unwrap_or(authorization)
        .trim();
    let mut v = Validation::new(Algorithm::HS256);
    v.set_issuer(&[api_key]);
    v.set_required_spec_claims(&["exp", "iss"]);
    v.validate_nbf = true;
    let claims = jsonwebtoken::decode::<WebhookClaims>(
        token,
        &DecodingKey::from_secret(api_secret.as_bytes()),
        &v,
    )
    .map_err(|e| SignatureError::Token(e.to_string()))?
    .claims;
    if claims.sha256 != body_hash(body) {
        return Err(SignatureError::BodyMismatch);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-secret-that-is-long-enough-for-tests!!";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[test]
    fn a_signed_body_verifies_and_a_changed_one_does_not() {
        let body = br#"{"event":"room_started"}"#;
        let auth = sign("key", SECRET, body, now()).expect("sign");
        let c = verify("key", SECRET, &auth, body).expect("verify");
        assert_eq!(c.iss, "key");
        assert_eq!(
            verify("key", SECRET, &auth, br#"{"event":"room_finished"}"#),
            Err(SignatureError::BodyMismatch)
        );
        assert!(matches!(
            verify("key", "another-secret-that-is-long-enough-xx", &auth, body),
            Err(SignatureError::Token(_))
        ));
        assert!(matches!(
            verify("other", SECRET, &auth, body),
            Err(SignatureError::Token(_))
        ));
        let old = sign("key", SECRET, body, now() - 3600).expect("sign");
        assert!(matches!(
            verify("key", SECRET, &old, body),
            Err(SignatureError::Token(_))
        ));
    }
}
