//! Tokens, all JWT (HS256) signed with the API secret:
//! - room tokens, with LiveKit-shaped video grants for one room;
//! - account access tokens (claim `typ: "access"`), issued at login to one
//!   device of an account, carrying the account, the device, roles and
//!   permissions. Each kind is refused where the other is expected.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::ids::{AccountId, DeviceId};

/// The room grants of a token (LiveKit's `video` claim).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VideoGrant {
    /// The room the token is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// May join `room`.
    #[serde(default)]
    pub room_join: bool,
    /// May publish tracks; absent means allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish: Option<bool>,
    /// May receive tracks; absent means allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_subscribe: Option<bool>,
    /// May send data messages; absent means allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub can_publish_data: Option<bool>,
    /// Server API: may create and delete rooms.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub room_create: bool,
    /// Server API: may list rooms.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub room_list: bool,
    /// Server API: may moderate `room` (participants, tracks, data, tokens).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub room_admin: bool,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed the token.
    pub iss: String,
    /// The participant identity: needed to join a room, absent from the
    /// tokens LiveKit's server SDKs sign for their RoomService calls.
    #[serde(default)]
    pub sub: String,
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default)]
    pub nbf: u64,
    /// The room grants.
    #[serde(default)]
    pub video: VideoGrant,
}

/// The `typ` claim of account access tokens.
pub const ACCESS_TYP: &str = "access";

/// The claims of an account access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The API key that signed the token.
    pub iss: String,
    /// The account id, as a string (JWT convention).
    pub sub: String,
    /// Always [`ACCESS_TYP`].
    pub typ: String,
    /// The account.
    pub acc: AccountId,
    /// The device the token was issued to.
    pub dev: DeviceId,
    /// The account's username.
    pub name: String,
    /// The account's roles (`user`, `admin`).
    pub roles: Vec<String>,
    /// What the token allows (see `account::permissions`).
    pub perms: Vec<String>,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default)]
    pub nbf: u64,
}

impl AccessClaims {
    /// Whether the token carries permission `perm`.
    pub fn has(&self, perm: &str) -> bool {
        self.perms.iter().any(|p| p == perm)
    }
}

/// A verified token of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A room token.
    Room(Claims),
    /// An account access token (still to be checked against revocation).
    Access(AccessClaims),
}

/// Why a token was refused; all of these are 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// No token was given.
    #[error("missing access token")]
    Missing,
    /// The token has expired.
    #[error("access token expired")]
    Expired,
    /// The token was not signed with this server's key, or is malformed.
    #[error("invalid access token: {0}")]
    Invalid(String),
}

/// Signs and checks tokens with one API key and secret.
#[derive(Clone)]
pub struct TokenKeys {
    api_key: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("api_key", &self.api_key)
            .finish()
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenKeys {
    /// Keys for this API key and secret.
    pub fn new(api_key: &str, api_secret: &str) -> Self {
        TokenKeys {
            api_key: api_key.to_owned(),
            encoding: EncodingKey::from_secret(api_secret.as_bytes()),
            decoding: DecodingKey::from_secret(api_secret.as_bytes()),
        }
    }

    /// A signed token for `identity` in `room`, valid for `ttl`.
    pub fn issue(
        &self,
        identity: &str,
        name: Option<&str>,
        grant: VideoGrant,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let now = now_secs();
        let claims = Claims {
            iss: self.api_key.clone(),
            sub: identity.to_owned(),
            name: name.map(str::to_owned),
            exp: now + ttl.as_secs(),
            nbf: now.saturating_sub(1),
            video: grant,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Signs an account access token; `claims.iss`, `typ`, `iat`, `nbf`
    /// and `exp` are filled in here.
    pub fn issue_access(
        &self,
        mut claims: AccessClaims,
        ttl: Duration,
    ) -> Result<String, TokenError> {
        let now = now_secs();
        claims.iss = self.api_key.clone();
        claims.typ = ACCESS_TYP.to_owned();
        claims.iat = now;
        claims.nbf = now.saturating_sub(1);
        claims.exp = now + ttl.as_secs();
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Checks a room token: signature, algorithm, issuer, expiry and
    /// not-before. An account access token is refused.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match self.verify_credential(token)? {
            Credential::Room(c) => Ok(c),
            Credential::Access(_) => Err(TokenError::Invalid(
                "an account access token is not a room token".into(),
            )),
        }
    }

    /// Checks an account access token (signature, expiry, `typ`); a room
    /// token is refused.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        match self.verify_credential(token)? {
            Credential::Access(c) => Ok(c),
            Credential::Room(_) => Err(TokenError::Invalid(
                "a room token is not an account access token".into(),
            )),
        }
    }

    /// Checks a token of either kind.
    pub fn verify_credential(&self, token: &str) -> Result<Credential, TokenError> {
        let value = self.decode(token)?;
        let invalid = |e: serde_json::Error| TokenError::Invalid(e.to_string());
        if value.get("typ").and_then(|t| t.as_str()) == Some(ACCESS_TYP) {
            serde_json::from_value(value)
                .map(Credential::Access)
                .map_err(invalid)
        } else {
            serde_json::from_value(value)
                .map(Credential::Room)
                .map_err(invalid)
        }
    }

    fn decode(&self, token: &str) -> Result<serde_json::Value, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[&self.api_key]);
        // No `sub`: a service token has no identity (a join checks for one).
        v.set_required_spec_claims(&["exp", "iss"]);
        v.validate_nbf = true;
        v.leeway = 5;
        jsonwebtoken::decode::<serde_json::Value>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }
}

impl Claims {
    /// The display name, or the identity.
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.sub)
    }

    /// May publish.
    pub fn can_publish(&self) -> bool {
        self.video.can_publish.unwrap_or(true)
    }

    /// May subscribe.
    pub fn can_subscribe(&self) -> bool {
        self.video.can_subscribe.unwrap_or(true)
    }

    /// May send data messages.
    pub fn can_publish_data(&self) -> bool {
        self.video.can_publish_data.unwrap_or(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(room: &str) -> VideoGrant {
        VideoGrant {
            room: Some(room.into()),
            room_join: true,
            can_publish: Some(false),
            can_subscribe: None,
            ..VideoGrant::default()
        }
    }

    #[test]
    fn issued_tokens_verify_with_their_grants() {
        let k = TokenKeys::new("key", "a-secret-that-is-long-enough-for-tests!!");
        let t = k
            .issue("alice", Some("Alice"), grant("r1"), Duration::from_secs(60))
            .expect("issue");
        let c = k.verify(&t).expect("verify");
        assert_eq!(c.sub, "alice");
        assert_eq!(c.display_name(), "Alice");
        assert_eq!(c.video.room.as_deref(), Some("r1"));
        assert!(!c.can_publish());
        assert!(c.can_subscribe());
    }

    #[test]
    fn wrong_key_secret_or_garbage_is_refused() {
        let k = TokenKeys::new("key", "a-secret-that-is-long-enough-for-tests!!");
        let t = k
            .issue("alice", None, grant("r1"), Duration::from_secs(60))
            .expect("issue");
        let other_secret = TokenKeys::new("key", "another-secret-that-is-long-enough-xx");
        assert!(matches!(
            other_secret.verify(&t),
            Err(TokenError::Invalid(_))
        ));
        let other_key = TokenKeys::new("key2", "a-secret-that-is-long-enough-for-tests!!");
        assert!(matches!(other_key.verify(&t), Err(TokenError::Invalid(_))));
        assert!(matches!(k.verify("not.a.jwt"), Err(TokenError::Invalid(_))));
        assert_eq!(k.verify(""), Err(TokenError::Missing));
    }

    /// LiveKit's Node server SDK signs its API calls with no `sub`: such a
    /// token verifies, with an empty identity (joins refuse it).
    #[test]
    fn a_token_without_an_identity_verifies() {
        let k = TokenKeys::new("key", "a-secret-that-is-long-enough-for-tests!!");
        let claims = serde_json::json!({
            "iss": "key", "exp": now_secs() + 60, "video": {"roomList": true}
        });
        let t = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"a-secret-that-is-long-enough-for-tests!!"),
        )
        .expect("encode");
        let c = k.verify(&t).expect("verify");
        assert_eq!(c.sub, "");
        assert!(c.video.room_list);
    }

    #[test]
    fn expired_tokens_are_refused() {
        let k = TokenKeys::new("key", "a-secret-that-is-long-enough-for-tests!!");
        let claims = Claims {
            iss: "key".into(),
            sub: "a".into(),
            name: None,
            exp: now_secs() - 100,
            nbf: 0,
            video: grant("r"),
        };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &k.encoding)
            .expect("encode");
        assert_eq!(k.verify(&t), Err(TokenError::Expired));
    }

    fn access() -> AccessClaims {
        AccessClaims {
            iss: String::new(),
            sub: "5".into(),
            typ: String::new(),
            acc: AccountId(5),
            dev: DeviceId(9),
            name: "alice".into(),
            roles: vec!["user".into()],
            perms: vec!["rooms:join".into()],
            iat: 0,
            exp: 0,
            nbf: 0,
        }
    }

    #[test]
    fn access_tokens_and_room_tokens_are_told_apart() {
        let k = TokenKeys::new("key", "a-secret-that-is-long-enough-for-tests!!");
        let t = k
            .issue_access(access(), Duration::from_secs(60))
            .expect("issue");
        let c = k.verify_access(&t).expect("verify");
        assert_eq!(
            (c.acc, c.dev, c.typ.as_str()),
            (AccountId(5), DeviceId(9), "access")
        );
        assert!(c.has("rooms:join") && !c.has("accounts:admin"));
        assert!(matches!(k.verify(&t), Err(TokenError::Invalid(_))));
        let room = k
            .issue("alice", None, grant("r1"), Duration::from_secs(60))
            .expect("issue");
        assert!(matches!(
            k.verify_access(&room),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            k.verify_credential(&room),
            Ok(Credential::Room(_))
        ));
        let other = TokenKeys::new("key", "another-secret-that-is-long-enough-xx");
        assert!(other.verify_access(&t).is_err());
    }
}
