//! Checking account access tokens against the store, the `Authed`
//! extractor, refresh tokens and the login rate limits.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::api_error::ApiError;
use crate::ids::{AccountId, DeviceId};
use crate::rate_limit::RateLimiter;
use crate::server::AppState;
use crate::store::SessionState;
use crate::token::AccessClaims;

impl AppState {
    /// Verifies an account access token and that its device is not revoked
    /// and its account not disabled (the store is asked every time).
    pub async fn authenticate(&self, token: &str) -> Result<AccessClaims, ApiError> {
        let claims = self.keys.verify_access(token)?;
        match self.store.session_state(claims.acc, claims.dev).await? {
            SessionState::Active => Ok(claims),
            SessionState::Revoked => Err(ApiError::unauthorized("this device was signed out")),
            SessionState::Disabled => Err(ApiError::unauthorized("this account is disabled")),
            SessionState::Unknown => Err(ApiError::unauthorized("unknown account or device")),
        }
    }
}

/// The `Authorization: Bearer` value of a request.
pub fn bearer(parts: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let v = parts
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    let v = v
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("Authorization must be a Bearer token"))
}

/// A request authenticated with a live account access token.
#[derive(Debug, Clone)]
pub struct Authed(pub AccessClaims);

impl Authed {
    /// The account.
    pub fn account(&self) -> AccountId {
        self.0.acc
    }

    /// The device.
    pub fn device(&self) -> DeviceId {
        self.0.dev
    }

    /// 403 unless the token carries `perm`.
    pub fn require(&self, perm: &str) -> Result<(), ApiError> {
        if self.0.has(perm) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!("needs the {perm} permission")))
        }
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(&parts.headers)?;
        Ok(Authed(state.authenticate(token).await?))
    }
}

/// A new opaque refresh token and the SHA-256 hash that is stored.
pub fn new_refresh_token() -> Result<(String, Vec<u8>), ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = refresh_hash(&token);
    Ok((token, hash))
}

/// The stored form of a refresh token.
pub fn refresh_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.trim().as_bytes()).to_vec()
}

/// Sign-ups per client address within any hour.
#[derive(Debug)]
pub struct SignupLimiter(Mutex<RateLimiter<IpAddr>>);

impl SignupLimiter {
    /// `per_hour` sign-ups allowed per address in any hour.
    pub fn new(per_hour: u32) -> Self {
        SignupLimiter(Mutex::new(RateLimiter::new(
            per_hour,
            Duration::from_secs(3600),
        )))
    }

    /// Counts a sign-up from `addr`; 429 when the address has none left.
    pub fn admit(&self, addr: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        let Ok(mut l) = self.0.lock() else {
            return Ok(());
        };
        l.check(&addr, now)
            .map_err(|wait| ApiError::too_many(wait.as_secs().max(1)))?;
        l.record(addr, now);
        Ok(())
    }
}

/// Failed-login counters per account (username) and per client address.
#[derive(Debug)]
pub struct LoginLimiter {
    accounts: Mutex<RateLimiter<String>>,
    addresses: Mutex<RateLimiter<IpAddr>>,
}

impl LoginLimiter {
    /// `per_account` and `per_address` failures allowed in any minute.
    pub fn new(per_account: u32, per_address: u32) -> Self {
        let minute = Duration::from_secs(60);
        LoginLimiter {
            accounts: Mutex::new(RateLimiter::new(per_account, minute)),
            addresses: Mutex::new(RateLimiter::new(per_address, minute)),
        }
    }

    /// 429 when either the username or the address has no attempts left.
    pub fn check(&self, username: &str, addr: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        let a = self
            .accounts
            .lock()
            .map_or(Ok(()), |mut l| l.check(&username.to_owned(), now));
        let b = self
            .addresses
            .lock()
            .map_or(Ok(()), |mut l| l.check(&addr, now));
        match (a, b) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(w), Ok(())) | (Ok(()), Err(w)) => Err(ApiError::too_many(w.as_secs().max(1))),
            (Err(w1), Err(w2)) => Err(ApiError::too_many(w1.max(w2).as_secs().max(1))),
        }
    }

    /// Counts a failed attempt against both.
    pub fn failed(&self, username: &str, addr: IpAddr) {
        let now = Instant::now();
        if let Ok(mut l) = self.accounts.lock() {
            l.record(username.to_owned(), now);
        }
        if let Ok(mut l) = self.addresses.lock() {
            l.record(addr, now);
        }
    }

    /// A successful login clears the account's failures (not the address's).
    pub fn succeeded(&self, username: &str) {
        if let Ok(mut l) = self.accounts.lock() {
            l.clear(&username.to_owned());
        }
    }
}
