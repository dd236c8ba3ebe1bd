//! The ICE servers handed to clients (`[turn]`), with TURN credentials of
//! the TURN REST scheme (draft-uberti-behave-turn-rest), as coturn checks
//! them with `use-auth-secret`: the username is `<expiry>:<user>` (expiry in
//! Unix seconds), the password base64(HMAC-SHA1(secret, username)). The
//! TURN server needs nothing but the shared secret to check them, and
//! refuses them once the expiry has passed.
//!
//! Pure: time is an input.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha1::Sha1;
use vela_config::{TurnConfig, ice_scheme};

/// The servers every client is given, and the secret their TURN
/// credentials are made with.
#[derive(Clone, Default)]
pub struct IceServers {
    /// `stun:`/`stuns:` URIs: no credentials.
    stun: Vec<String>,
    /// `turn:`/`turns:` URIs: credentials per user.
    turn: Vec<String>,
    secret: Vec<u8>,
    ttl_secs: u64,
}

impl std::fmt::Debug for IceServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceServers")
            .field("stun", &self.stun)
            .field("turn", &self.turn)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// One entry of a client's ICE servers, shaped as WebRTC's `RTCIceServer`
/// (the page passes it to `new RTCPeerConnection` as is).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// The URIs (RFC 7064, RFC 7065).
    pub urls: Vec<String>,
    /// The TURN username: `<expiry>:<user>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The TURN password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// A TURN REST credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredential {
    /// `<expiry>:<user>`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
}

impl TurnCredential {
    /// The credential for `user` that the TURN server accepts until
    /// `expiry` (Unix seconds).
    pub fn new(secret: &[u8], expiry: u64, user: &str) -> TurnCredential {
        use base64::Engine as _;
        let username = format!("{expiry}:{user}");
        // HMAC takes a key of any length: new_from_slice cannot fail here.
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(username.as_bytes());
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        TurnCredential { username, password }
    }
}

impl IceServers {
    /// The servers of a (validated) `[turn]` section.
    pub fn from_config(config: &TurnConfig) -> IceServers {
        let (turn, stun) = config
            .urls
            .iter()
            .cloned()
            .partition(|u| ice_scheme(u).is_some_and(|s| s.is_turn()));
        IceServers {
            stun,
            turn,
            secret: config.secret.as_bytes().to_vec(),
            ttl_secs: config.ttl_secs,
        }
    }

    /// No servers configured: clients get an empty list.
    pub fn is_empty(&self) -> bool {
        self.stun.is_empty() && self.turn.is_empty()
    }

    /// The servers for `user` (who the TURN server's log names; never a
    /// secret), with credentials valid until `now` (Unix seconds) plus the
    /// configured lifetime.
    pub fn for_user(&self, user: &str, now: u64) -> Vec<IceServer> {
        let mut out = Vec::with_capacity(2);
        if !self.stun.is_empty() {
            out.push(IceServer {
                urls: self.stun.clone(),
                username: None,
                credential: None,
            });
        }
        if !self.turn.is_empty() {
            let c = TurnCredential::new(&self.secret, now.saturating_add(self.ttl_secs), user);
            out.push(IceServer {
                urls: self.turn.clone(),
                username: Some(c.username),
                credential: Some(c.password),
            });
        }
        out
    }
}

/// The `Link` header values that hand `servers` to a WHIP or WHEP client
/// (RFC 9725, "STUN/TURN server configuration"): one per URI.
pub fn link_headers(servers: &[IceServer]) -> Vec<String> {
    let mut out = Vec::new();
    for server in servers {
        for url in &server.urls {
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(credential)) = (&server.username, &server.credential) {
                link.push_str(&format!(
                    "; username={}; credential={}; credential-type=\"password\"",
                    quoted(user),
                    quoted(credential)
                ));
            }
            out.push(link);
        }
    }
    out
}

/// An HTTP quoted-string (RFC 9110): `"` and `\` escaped.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_is_coturns_hmac_of_the_username() {
        // RFC 2202, HMAC-SHA1 test case 2, base64: the MAC itself.
        let c = TurnCredential::new(b"Jefe", 0, "x");
        let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        use base64::Engine as _;
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
        assert_eq!(c.username, "0:x");
        // Computed independently: printf '1790000000:PA7' |
        //   openssl dgst -sha1 -hmac north-wind-0123456789 -binary | base64
        let c = TurnCredential::new(b"north-wind-0123456789", 1_790_000_000, "PA7");
        assert_eq!(c.username, "1790000000:PA7");
        assert_eq!(c.password, "+adu3JWUa3lrzlZD+XVepdAc7qo=");
    }

    fn servers(urls: &[&str]) -> IceServers {
        IceServers::from_config(&TurnConfig {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            secret: "north-wind-0123456789".to_owned(),
            ttl_secs: 600,
        })
    }

    #[test]
    fn stun_goes_without_credentials_and_turn_with_expiring_ones() {
        let s = servers(&[
            "stun:t.example.com:3478",
            "turn:t.example.com:3478?transport=udp",
            "turns:t.example.com:5349?transport=tcp",
        ]);
        let list = s.for_user("PA7", 1_789_999_400);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].urls, ["stun:t.example.com:3478"]);
        assert_eq!(list[0].username, None);
        assert_eq!(list[1].urls.len(), 2);
        assert_eq!(list[1].username.as_deref(), Some("1790000000:PA7"));
        assert_eq!(
            list[1].credential.as_deref(),
            Some("+adu3JWUa3lrzlZD+XVepdAc7qo=")
        );
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({"urls": ["stun:t.example.com:3478"]})
        );
        assert_eq!(json[1]["credential"], "+adu3JWUa3lrzlZD+XVepdAc7qo=");
        assert!(servers(&[]).for_user("PA7", 0).is_empty());
        assert!(!format!("{s:?}").contains("north-wind"));
    }

    #[test]
    fn link_headers_follow_rfc_9725() {
        let s = servers(&[
            "stun:t.example.com",
            "turns:t.example.com:443?transport=tcp",
        ]);
        let links = link_headers(&s.for_user("PA7", 1_789_999_400));
        assert_eq!(
            links,
            [
                "<stun:t.example.com>; rel=\"ice-server\"".to_owned(),
                "<turns:t.example.com:443?transport=tcp>; rel=\"ice-server\"; username=\"1790000000:PA7\"; credential=\"+adu3JWUa3lrzlZD+XVepdAc7qo=\"; credential-type=\"password\"".to_owned(),
            ]
        );
        assert_eq!(quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
