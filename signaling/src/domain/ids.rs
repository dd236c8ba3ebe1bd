//! Typed identifiers of accounts, devices, contacts and contact requests, and
//! the wall clock the stored records use.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A string that is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid id {0:?}: expected a positive integer")]
pub struct IdError(pub String);

macro_rules! db_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s.parse::<i64>() {
                    Ok(n) if n > 0 => Ok($name(n)),
                    _ => Err(IdError(s.to_owned())),
                }
            }
        }
    };
}

db_id!(
    /// An account (a person).
    AccountId
);
db_id!(
    /// A device (one login: a phone, a desktop, a browser).
    DeviceId
);
db_id!(
    /// An address book entry.
    ContactId
);
db_id!(
    /// A pending contact request.
    RequestId
);
db_id!(
    /// A call (one ringing, running or ended call between accounts).
    CallId
);
db_id!(
    /// An entry of an account's call history.
    CallRecordId
);

/// Milliseconds since the Unix epoch, the unit of every stored time.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_and_print_as_numbers() {
        assert_eq!("42".parse::<AccountId>(), Ok(AccountId(42)));
        assert_eq!(DeviceId(7).to_string(), "7");
        assert!("0".parse::<ContactId>().is_err());
        assert!("-1".parse::<ContactId>().is_err());
        assert!("x".parse::<RequestId>().is_err());
        assert_eq!(
            serde_json::to_string(&AccountId(3)).expect("json"),
            "3".to_owned()
        );
    }
}
