//! Accounts: usernames, password rules, roles and permissions (hashing:
//! [`crate::services::password`]).

use serde::{Deserialize, Serialize};

use crate::domain::Invalid;
use crate::domain::ids::AccountId;

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// What an account is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every account.
    User,
    /// May list, disable and enable accounts.
    Admin,
}

impl Role {
    /// The role as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored role name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Join rooms with an access token.
pub const PERM_ROOMS_JOIN: &str = "rooms:join";
/// Publish tracks in rooms.
pub const PERM_ROOMS_PUBLISH: &str = "rooms:publish";
/// Receive tracks in rooms.
pub const PERM_ROOMS_SUBSCRIBE: &str = "rooms:subscribe";
/// Manage one's own address book, contact requests and presence.
pub const PERM_CONTACTS: &str = "contacts:write";
/// Administer accounts.
pub const PERM_ACCOUNTS_ADMIN: &str = "accounts:admin";
/// Administer every room through the server API (as the roomCreate,
/// roomList and roomAdmin grants of a service token).
pub const PERM_ROOMS_ADMIN: &str = "rooms:admin";

/// The permissions that `roles` grant, in a stable order.
pub fn permissions(roles: &[Role]) -> Vec<&'static str> {
    let mut p = vec![
        PERM_ROOMS_JOIN,
        PERM_ROOMS_PUBLISH,
        PERM_ROOMS_SUBSCRIBE,
        PERM_CONTACTS,
    ];
    if roles.contains(&Role::Admin) {
        p.push(PERM_ACCOUNTS_ADMIN);
        p.push(PERM_ROOMS_ADMIN);
    }
    p
}

/// An account as its owner and admins see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    /// The account's id.
    pub id: AccountId,
    /// The unique login name (lowercase).
    pub username: String,
    /// The name others see.
    pub display_name: String,
    /// Its roles; always includes `user`.
    pub roles: Vec<Role>,
    /// Disabled by an admin: no login, no tokens, no connections.
    pub disabled: bool,
    /// When it was created (ms since the epoch).
    pub created_at: i64,
}

impl Account {
    /// Whether the account holds the admin role.
    pub fn is_admin(&self) -> bool {
        self.roles.contains(&Role::Admin)
    }
}

/// Another account as a contact sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountSummary {
    /// The account's id.
    pub id: AccountId,
    /// Its username.
    pub username: String,
    /// Its display name.
    pub display_name: String,
}

/// Checks and normalizes a username: 3 to 32 of `a-z 0-9 . _ -`, starting
/// with a letter or digit; letters are lowered.
pub fn normalize_username(field: &str, raw: &str) -> Result<String, Invalid> {
    let name = raw.trim().to_ascii_lowercase();
    let ok = (3..=32).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(name)
    } else {
        Err(Invalid::new(
            field,
            "must be 3 to 32 characters of a-z 0-9 . _ - starting with a letter or digit",
        ))
    }
}

/// Checks a new password's length.
pub fn check_password(field: &str, password: &str) -> Result<(), Invalid> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Invalid::new(
            field,
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Invalid::new(
            field,
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a display name: 1 to 64 characters after trimming, no control characters.
pub fn check_display_name(field: &str, raw: &str) -> Result<String, Invalid> {
    let name = raw.trim();
    let n = name.chars().count();
    if n == 0 || n > 64 || name.chars().any(char::is_control) {
        return Err(Invalid::new(
            field,
            "must be 1 to 64 characters without control characters",
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalized_and_checked() {
        assert_eq!(normalize_username("u", " Alice.B ").expect("ok"), "alice.b");
        for bad in ["ab", "-abc", "a b c", "ålice", &"x".repeat(33)] {
            let e = normalize_username("username", bad).expect_err(bad);
            assert_eq!(e.field, "username");
        }
    }

    #[test]
    fn passwords_and_display_names_are_checked() {
        assert!(check_password("password", "short").is_err());
        assert!(check_password("password", "long enough").is_ok());
        assert!(check_password("password", &"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        assert_eq!(check_display_name("d", "  Bob  ").expect("ok"), "Bob");
        assert!(check_display_name("d", "   ").is_err());
        assert!(check_display_name("d", "a\u{0}b").is_err());
    }

    #[test]
    fn admins_get_the_admin_permission() {
        assert!(!permissions(&[Role::User]).contains(&PERM_ACCOUNTS_ADMIN));
        assert!(permissions(&[Role::User, Role::Admin]).contains(&PERM_ACCOUNTS_ADMIN));
    }
}
