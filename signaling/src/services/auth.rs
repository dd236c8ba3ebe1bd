//! Checking account access tokens against the store, the `Authed`
//! extractor, refresh tokens and the login rate limits.

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::domain::account;
use crate::domain::ids::{AccountId, DeviceId};
use crate::services::rate_limit::RateLimiter;
use crate::services::store::SessionState;
use crate::services::token::AccessClaims;
use crate::transports::error::ApiError;
use crate::transports::state::AppState;

impl AppState {
    /// Verifies an account access token and that its device is not revoked
    /// and its account not disabled (the store is asked every time). The
    /// roles and permissions are the account's now, not the token's: a
    /// role granted or taken away counts from the next request.
    pub async fn authenticate(&self, token: &str) -> Result<AccessClaims, ApiError> {
        let mut claims = self.keys.verify_access(token)?;
        let (session, roles) = self.store.session(claims.acc, claims.dev).await?;
        match session {
            SessionState::Active => {
                claims.perms = account::permissions(&roles)
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                claims.roles = roles.iter().map(|r| r.as_str().to_owned()).collect();
                Ok(claims)
            }
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

/// Login attempts per account (username) and per client address.
#[derive(Debug)]
pub struct LoginLimiter {
    /// Both keys under one lock: an attempt is checked and counted against
    /// both at once.
    keys: Mutex<(RateLimiter<String>, RateLimiter<IpAddr>)>,
}

impl LoginLimiter {
    /// `per_account` and `per_address` failures allowed in any minute.
    pub fn new(per_account: u32, per_address: u32) -> Self {
        let minute = Duration::from_secs(60);
        LoginLimiter {
            keys: Mutex::new((
                RateLimiter::new(per_account, minute),
                RateLimiter::new(per_address, minute),
            )),
        }
    }

    /// Counts an attempt against the username and the address before the
    /// password is checked, so that N guesses sent at once get at most the
    /// limit's answers; 429 (counting nothing) when either has none left.
    pub fn attempt(&self, username: &str, addr: IpAddr) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let (accounts, addresses) = &mut *keys;
        let user = username.to_owned();
        let wait = match (accounts.check(&user, now), addresses.check(&addr, now)) {
            (Ok(()), Ok(())) => None,
            (Err(w), Ok(())) | (Ok(()), Err(w)) => Some(w),
            (Err(w1), Err(w2)) => Some(w1.max(w2)),
        };
        if let Some(w) = wait {
            return Err(ApiError::too_many(w.as_secs().max(1)));
        }
        accounts.record(user, now);
        addresses.record(addr, now);
        Ok(())
    }

    /// The attempt was right: the account's failures are forgotten and the
    /// address gets its attempt back (its earlier failures stay).
    pub fn succeeded(&self, username: &str, addr: IpAddr) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.0.clear(&username.to_owned());
        keys.1.unrecord(&addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_count_before_the_check_and_success_gives_one_back() {
        let l = LoginLimiter::new(3, 5);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..3 {
            assert!(l.attempt("alice", a).is_ok());
        }
        let e = l.attempt("alice", a).expect_err("fourth");
        assert_eq!(e.status, axum::http::StatusCode::TOO_MANY_REQUESTS);
        assert!(e.retry_after.is_some());
        // Another account from the same address: two attempts left there.
        assert!(l.attempt("bob", a).is_ok());
        l.succeeded("bob", a);
        assert!(l.attempt("bob", a).is_ok());
        assert!(l.attempt("carol", a).is_ok());
        assert!(l.attempt("dave", a).is_err(), "the address has used its 5");
        // A right password clears the account, not the address's failures.
        l.succeeded("alice", "192.0.2.2".parse().expect("ip"));
        assert!(l.attempt("alice", "192.0.2.2".parse().expect("ip")).is_ok());
    }
}
