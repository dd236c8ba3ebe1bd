//! `[turn]`: the STUN and TURN servers handed to clients, with short-lived
//! credentials of the TURN REST scheme (coturn's `use-auth-secret`).

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Shortest allowed `turn.secret`: anyone who guesses it can relay through
/// the TURN server.
pub const MIN_TURN_SECRET_CHARS: usize = 16;
/// Shortest allowed `turn.ttl_secs`.
const MIN_TTL_SECS: u64 = 60;
/// Longest allowed `turn.ttl_secs` (a week).
const MAX_TTL_SECS: u64 = 7 * 86_400;

/// ICE servers for clients (`[turn]`).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// `stun:`, `turn:` and `turns:` URIs (RFC 7064, RFC 7065), e.g.
    /// `turn:turn.example.com:3478?transport=udp`,
    /// `turns:turn.example.com:5349?transport=tcp`. Empty: clients get no
    /// ICE servers.
    pub urls: Vec<String>,
    /// The secret shared with the TURN server (coturn's
    /// `static-auth-secret`); needed when any URI is `turn:` or `turns:`.
    /// Never printed (`Debug` hides it).
    pub secret: String,
    /// How long the credentials handed to a client stay valid, in seconds.
    /// The TURN server refuses them afterwards: longer than a call, since
    /// an ICE restart late in a call allocates a relay anew with them (a
    /// resume hands out new ones).
    pub ttl_secs: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: String::new(),
            // A day, as the TURN REST draft (draft-uberti-behave-turn-rest)
            // recommends: longer than any call, short enough that a leaked
            // credential soon stops working.
            ttl_secs: 86_400,
        }
    }
}

impl std::fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = if self.secret.is_empty() {
            "<none>"
        } else {
            "<hidden>"
        };
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("secret", &secret)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// The scheme of an ICE server URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceScheme {
    /// `stun:` (RFC 7064).
    Stun,
    /// `stuns:` (RFC 7064).
    Stuns,
    /// `turn:` (RFC 7065).
    Turn,
    /// `turns:` (RFC 7065).
    Turns,
}

impl IceScheme {
    /// A TURN server, which needs credentials.
    pub fn is_turn(self) -> bool {
        matches!(self, IceScheme::Turn | IceScheme::Turns)
    }
}

impl TurnConfig {
    /// Whether any URI is a TURN server (and credentials are minted).
    pub fn has_turn(&self) -> bool {
        self.urls
            .iter()
            .any(|u| ice_scheme(u).is_some_and(IceScheme::is_turn))
    }

    /// Checks the rules that serde cannot express.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for url in &self.urls {
            check_ice_url(url).map_err(|why| {
                ConfigError::invalid("turn.urls", format!("{url:?} is not a usable URI: {why}"))
            })?;
        }
        let secret = self.secret.chars().count();
        if self.has_turn() && secret < MIN_TURN_SECRET_CHARS {
            return Err(ConfigError::invalid(
                "turn.secret",
                format!(
                    "must be at least {MIN_TURN_SECRET_CHARS} characters with a turn: or turns: URI in turn.urls (the TURN server's static-auth-secret)"
                ),
            ));
        }
        if !self.has_turn() && secret > 0 {
            return Err(ConfigError::invalid(
                "turn.secret",
                "is set but turn.urls names no turn: or turns: URI to use it with",
            ));
        }
        if !(MIN_TTL_SECS..=MAX_TTL_SECS).contains(&self.ttl_secs) {
            return Err(ConfigError::invalid(
                "turn.ttl_secs",
                format!("must be between {MIN_TTL_SECS} and {MAX_TTL_SECS}"),
            ));
        }
        Ok(())
    }
}

/// The scheme of `url`, if it is one of the four ICE server schemes.
pub fn ice_scheme(url: &str) -> Option<IceScheme> {
    let (scheme, _) = url.split_once(':')?;
    match scheme.to_ascii_lowercase().as_str() {
        "stun" => Some(IceScheme::Stun),
        "stuns" => Some(IceScheme::Stuns),
        "turn" => Some(IceScheme::Turn),
        "turns" => Some(IceScheme::Turns),
        _ => None,
    }
}

/// `scheme:host[:port][?transport=udp|tcp]` (RFC 7064, RFC 7065); the URI
/// goes verbatim into JSON and into `Link: <...>` headers.
fn check_ice_url(url: &str) -> Result<(), &'static str> {
    let scheme = ice_scheme(url).ok_or("expected stun:, stuns:, turn: or turns:")?;
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | '"' | ','))
    {
        return Err("it contains spaces, quotes, commas or angle brackets");
    }
    let rest = &url[url.find(':').map_or(0, |i| i + 1)..];
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    if authority.starts_with("//") {
        return Err("no // after the scheme (turn:host:port)");
    }
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the bracketed host is not an IPv6 address");
        }
        match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("junk after the IPv6 address")?),
        }
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err("the host must be a name or an address");
        }
        port
    };
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err("the port must be 1..=65535");
    }
    match query {
        None => Ok(()),
        Some(_) if !scheme.is_turn() => Err("stun: and stuns: URIs take no ?transport"),
        Some("transport=udp" | "transport=tcp") => Ok(()),
        Some(_) => Err("the only query is ?transport=udp or ?transport=tcp"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_urls_are_checked() {
        for good in [
            "turn:turn.example.com:3478?transport=udp",
            "turns:turn.example.com:5349?transport=tcp",
            "turns:turn.example.com:443",
            "turn:10.0.0.1",
            "stun:stun.example.com:3478",
            "turn:[2001:db8::1]:3478?transport=tcp",
            "TURN:example.com",
        ] {
            assert_eq!(check_ice_url(good), Ok(()), "{good}");
        }
        for bad in [
            "http://turn.example.com",
            "turn:",
            "turn://turn.example.com:3478",
            "turn:turn.example.com:0",
            "turn:turn.example.com:99999",
            "turn:turn.example.com?transport=sctp",
            "stun:stun.example.com?transport=udp",
            "turn:bad host",
            "turn:x>; rel=\"evil\"",
            "turn:[::1",
            "turn:[nope]:3478",
        ] {
            assert!(check_ice_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_secret_is_never_printed() {
        let config = TurnConfig {
            urls: vec!["turn:t.example.com".into()],
            secret: "very-secret-value-1234".into(),
            ttl_secs: 600,
        };
        let shown = format!("{config:?} {config:#?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(shown.contains("<hidden>"), "{shown}");
    }
}
