//! Typed identifiers for rooms, participants, connections and tracks.

use std::fmt;
use std::str::FromStr;

/// An identifier string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdParseError {
    /// A room name must be 1 to 128 characters of `[A-Za-z0-9_.-]`.
    #[error("invalid room name {0:?}: use 1 to 128 characters of A-Z a-z 0-9 _ . -")]
    Room(String),
    /// A participant or track id has the wrong prefix or number.
    #[error("invalid id {0:?}")]
    Id(String),
}

/// The name of a room, as given by clients and tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

impl RoomId {
    /// Checks and wraps a room name.
    pub fn new(name: &str) -> Result<Self, IdParseError> {
        let ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(RoomId(name.to_owned()))
        } else {
            Err(IdParseError::Room(name.to_owned()))
        }
    }

    /// The room name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for RoomId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RoomId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RoomId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl FromStr for RoomId {
    type Err = IdParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RoomId::new(s)
    }
}

macro_rules! numeric_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.strip_prefix($prefix)
                    .and_then(|n| n.parse().ok())
                    .map($name)
                    .ok_or_else(|| IdParseError::Id(s.to_owned()))
            }
        }
    };
}

numeric_id!(
    /// A participant in a room, unique for the lifetime of the server (`PA<n>`).
    ParticipantId,
    "PA"
);
numeric_id!(
    /// One connection of a participant to the SFU (`PA<n>`, numbered with
    /// participants): the key of every per-connection call and signal.
    ///
    /// A participant's first connection has the participant's number; a
    /// handover moves the participant to a new connection with a new number,
    /// while the room goes on seeing the same [`ParticipantId`].
    ConnectionId,
    "PA"
);
numeric_id!(
    /// A published track, unique for the lifetime of the server (`TR<n>`).
    TrackId,
    "TR"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_json() {
        let json = serde_json::to_string(&ParticipantId(7)).expect("json");
        assert_eq!(json, "\"PA7\"");
        let back: ParticipantId = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, ParticipantId(7));
        assert!(serde_json::from_str::<ParticipantId>("\"TR7\"").is_err());
    }

    #[test]
    fn ids_round_trip() {
        let p = ParticipantId(42);
        assert_eq!(p.to_string(), "PA42");
        assert_eq!("PA42".parse::<ParticipantId>(), Ok(p));
        assert!("TR42".parse::<ParticipantId>().is_err());
        assert!("PA".parse::<ParticipantId>().is_err());
        assert_eq!("TR7".parse::<TrackId>(), Ok(TrackId(7)));
    }

    #[test]
    fn a_connection_reads_and_writes_as_the_participant_it_started() {
        // Clients see one `PA<n>` form: nothing changed on the wire when
        // connections got a type of their own.
        assert_eq!(ConnectionId(9).to_string(), ParticipantId(9).to_string());
        assert_eq!("PA9".parse::<ConnectionId>(), Ok(ConnectionId(9)));
        let json = serde_json::to_string(&ConnectionId(9)).expect("json");
        assert_eq!(json, "\"PA9\"");
        assert!("TR9".parse::<ConnectionId>().is_err());
    }

    #[test]
    fn room_names_are_checked() {
        assert!(RoomId::new("demo-1.a_b").is_ok());
        assert!(RoomId::new("").is_err());
        assert!(RoomId::new("a b").is_err());
        assert!(RoomId::new("a/b").is_err());
        assert!(RoomId::new(&"x".repeat(129)).is_err());
    }
}
