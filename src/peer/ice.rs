//! ICE servers in the W3C / PeerJS shape, their URLs, TURN REST credentials and the
//! candidate filter.
//!
//! One value is pasted everywhere: `--ice-servers '[{"urls":"stun:host:3478"}]'` on the node
//! and the examples, `new Peer({config: {iceServers}})` in a browser, and `ice_servers` in the
//! discovery record. [`parse_ice_servers`] reads it (`urls` a string or an array, `username`,
//! `credential`) and checks every URL ([`IceUrl`], RFC 7064 / RFC 7065), so a typo is a startup
//! error rather than a connection that silently never leaves the LAN.
//!
//! [`turn_rest_credentials`] mints coturn's time-limited credentials (`use-auth-secret`):
//! username `<expiry unix>:<name>`, credential `base64(HMAC-SHA1(secret, username))`.
//!
//! [`usable_candidate`] decides whether a candidate may cross to a remote peer: loopback and
//! link-local addresses never do, unless the peer keeps them for tests on one machine.

use std::net::IpAddr;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};

/// A STUN or TURN server for ICE: a W3C `RTCIceServer`.
///
/// # Format
/// `{"urls":"stun:stun.example.org:3478"}` or
/// `{"urls":["turn:turn.example.org:3478?transport=udp"],"username":"u","credential":"p"}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    /// `stun:`, `stuns:`, `turn:` or `turns:` URLs (a single string is accepted on input).
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential (password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// W3C `credentialType`: only `"password"` exists; accepted so browser configs paste as is.
    #[serde(
        default,
        rename = "credentialType",
        skip_serializing_if = "Option::is_none"
    )]
    pub credential_type: Option<String>,
}

impl IceServer {
    /// A STUN server from one URL.
    pub fn stun(url: impl Into<String>) -> Self {
        IceServer {
            urls: vec![url.into()],
            ..Default::default()
        }
    }

    /// The parsed URLs.
    ///
    /// # Errors
    /// [`IceConfigError`] for the first URL that does not parse.
    pub fn parsed_urls(&self) -> Result<Vec<IceUrl>, IceConfigError> {
        self.urls.iter().map(|u| IceUrl::parse(u)).collect()
    }

    /// Whether any URL is `turn:` or `turns:`.
    pub fn is_turn(&self) -> bool {
        self.parsed_urls()
            .map(|u| u.iter().any(|u| u.scheme.is_turn()))
            .unwrap_or(false)
    }

    /// Whether the server carries a user name and a credential.
    pub fn has_credentials(&self) -> bool {
        self.username.as_deref().is_some_and(|s| !s.is_empty())
            && self.credential.as_deref().is_some_and(|s| !s.is_empty())
    }
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A bad ICE server list or URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IceConfigError(pub String);

/// The scheme of an ICE server URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceScheme {
    /// `stun:` (UDP).
    Stun,
    /// `stuns:` (TLS).
    Stuns,
    /// `turn:` (UDP by default, `?transport=tcp` for TCP).
    Turn,
    /// `turns:` (TLS over TCP).
    Turns,
}

impl IceScheme {
    /// `turn:` or `turns:`.
    pub fn is_turn(self) -> bool {
        matches!(self, IceScheme::Turn | IceScheme::Turns)
    }
}

/// The transport an ICE server URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IceTransport {
    /// UDP (`stun:`, `turn:` and `?transport=udp`).
    Udp,
    /// TCP (`?transport=tcp`, and `stuns:` / `turns:`, which run TLS over TCP).
    Tcp,
}

/// One parsed `stun:` / `stuns:` / `turn:` / `turns:` URL (RFC 7064, RFC 7065).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceUrl {
    /// The scheme.
    pub scheme: IceScheme,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (3478 by default, 5349 for the TLS schemes).
    pub port: u16,
    /// Transport.
    pub transport: IceTransport,
}

impl IceUrl {
    /// Parses `scheme:host[:port][?transport=udp|tcp]`.
    ///
    /// # Errors
    /// [`IceConfigError`] naming the URL and what is wrong with it.
    pub fn parse(url: &str) -> Result<IceUrl, IceConfigError> {
        let bad = |why: &str| IceConfigError(format!("{url:?}: {why}"));
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| bad("expected stun:, stuns:, turn: or turns:"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "stun" => IceScheme::Stun,
            "stuns" => IceScheme::Stuns,
            "turn" => IceScheme::Turn,
            "turns" => IceScheme::Turns,
            _ => return Err(bad("expected stun:, stuns:, turn: or turns:")),
        };
        if rest.starts_with("//") {
            return Err(bad("no '//' after the scheme (stun:host:port)"));
        }
        let (hostport, query) = match rest.split_once('?') {
            Some((h, q)) => (h, Some(q)),
            None => (rest, None),
        };
        let secure = matches!(scheme, IceScheme::Stuns | IceScheme::Turns);
        let mut transport = if secure {
            IceTransport::Tcp
        } else {
            IceTransport::Udp
        };
        if let Some(q) = query {
            if !scheme.is_turn() {
                return Err(bad("only turn: and turns: URLs take a query"));
            }
            transport = match q.to_ascii_lowercase().as_str() {
                "transport=udp" if !secure => IceTransport::Udp,
                "transport=tcp" => IceTransport::Tcp,
                _ => return Err(bad("the query must be transport=udp or transport=tcp")),
            };
        }
        let default_port = if secure { 5349 } else { 3478 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in the host"))?;
            let port = match after {
                "" => default_port,
                p => p
                    .strip_prefix(':')
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| bad("bad port"))?,
            };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse::<u16>().map_err(|_| bad("bad port"))?,
                ),
                None => (hostport.to_string(), default_port),
            }
        };
        if port == 0 {
            return Err(bad("port 0"));
        }
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        {
            return Err(bad("missing or invalid host"));
        }
        Ok(IceUrl {
            scheme,
            host,
            port,
            transport,
        })
    }

    /// Whether webrtc 0.21 can use this URL itself: `stun:` and UDP `turn:`. The peer bridges
    /// `turns:` and `turn:…?transport=tcp` for it (`turn_bridge`); `stuns:` is for browsers.
    pub fn native_supported(&self) -> bool {
        matches!(
            (self.scheme, self.transport),
            (IceScheme::Stun, IceTransport::Udp) | (IceScheme::Turn, IceTransport::Udp)
        )
    }
}

/// Parses and checks a JSON array of `RTCIceServer` (the `--ice-servers` value).
/// `[]` means host candidates only.
///
/// TURN servers need `username` and `credential`, except when `turn_secret` is set: the
/// node then mints them ([`turn_rest_credentials`]).
///
/// # Errors
/// [`IceConfigError`]: not JSON, not an array of objects with `urls`, an unknown field, an
/// empty `urls`, a bad URL, or a TURN server without credentials.
pub fn parse_ice_servers(json: &str, turn_secret: bool) -> Result<Vec<IceServer>, IceConfigError> {
    let servers: Vec<IceServer> = serde_json::from_str(json).map_err(|e| {
        IceConfigError(format!(
            "expected a JSON array of {{\"urls\":…,\"username\":…,\"credential\":…}}: {e}"
        ))
    })?;
    for (i, s) in servers.iter().enumerate() {
        check_server(s, turn_secret).map_err(|e| IceConfigError(format!("server {i}: {e}")))?;
    }
    Ok(servers)
}

fn check_server(s: &IceServer, turn_secret: bool) -> Result<(), IceConfigError> {
    if s.urls.is_empty() {
        return Err(IceConfigError("urls is empty".into()));
    }
    let urls = s.parsed_urls()?;
    if let Some(t) = &s.credential_type
        && t != "password"
    {
        return Err(IceConfigError(format!(
            "credentialType {t:?} is not supported (only \"password\")"
        )));
    }
    if urls.iter().any(|u| u.scheme.is_turn()) && !s.has_credentials() && !turn_secret {
        return Err(IceConfigError(
            "a turn:/turns: server needs username and credential (or a TURN secret: OUROBOROS_TURN_SECRET)".into(),
        ));
    }
    Ok(())
}

/// TURN REST API credentials (coturn `use-auth-secret` / `static-auth-secret`): valid until
/// `expiry_unix` for `name`. Returns `(username, credential)` with username
/// `<expiry_unix>:<name>` and credential `base64(HMAC-SHA1(secret, username))`.
pub fn turn_rest_credentials(secret: &[u8], name: &str, expiry_unix: u64) -> (String, String) {
    let username = format!("{expiry_unix}:{name}");
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(username.as_bytes());
    let credential = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, credential)
}

/// `servers` with fresh TURN REST credentials filled into every TURN server that has none
/// (`secret` is the coturn `static-auth-secret`); STUN servers and TURN servers with their
/// own credentials are kept as they are.
pub fn with_turn_credentials(
    servers: &[IceServer],
    secret: &[u8],
    name: &str,
    expiry_unix: u64,
) -> Vec<IceServer> {
    servers
        .iter()
        .map(|s| {
            if s.is_turn() && !s.has_credentials() {
                let (username, credential) = turn_rest_credentials(secret, name, expiry_unix);
                IceServer {
                    username: Some(username),
                    credential: Some(credential),
                    ..s.clone()
                }
            } else {
                s.clone()
            }
        })
        .collect()
}

/// Whether an ICE candidate (`candidate:… <address> <port> typ …`) may be given to or taken
/// from a remote peer: not a loopback, unspecified or link-local address unless
/// `keep_loopback` (tests on one machine). mDNS names (`*.local`) and unparsable lines pass;
/// webrtc judges them.
pub fn usable_candidate(candidate: &str, keep_loopback: bool) -> bool {
    let line = candidate.trim().trim_start_matches("a=");
    let line = line.strip_prefix("candidate:").unwrap_or(line);
    let Some(addr) = line.split_ascii_whitespace().nth(4) else {
        return true;
    };
    let Ok(ip) = addr.trim_matches(['[', ']']).parse::<IpAddr>() else {
        return true;
    };
    if ip.is_unspecified() {
        return false;
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return false;
    }
    keep_loopback || !ip.is_loopback()
}

/// The ICE flags shared by `ouroboros node` and the examples.
#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct IceArgs {
    /// STUN/TURN servers for every WebRTC connection: a JSON array of RTCIceServer, the
    /// shape `new Peer({config: {iceServers}})` takes, e.g.
    /// `[{"urls":"stun:stun.example.org:3478"},{"urls":"turn:t.example.org:3478","username":"u","credential":"p"}]`.
    /// `[]` = host candidates only [default: `[]`, nothing leaves the LAN].
    #[cfg_attr(
        feature = "cli",
        arg(
        long = "ice-servers",
        env = "OUROBOROS_ICE_SERVERS",
        value_name = "JSON",
        value_parser = parse_ice_servers_arg
    ))]
    pub ice_servers: Option<IceServerList>,
    /// Offer loopback candidates (and accept them from the remote): for tests with every
    /// peer on one machine [default: only when the signaling server is on a loopback address].
    #[cfg_attr(
        feature = "cli",
        arg(
            long = "loopback-candidates",
            env = "OUROBOROS_LOOPBACK_CANDIDATES",
            value_name = "BOOL"
        )
    )]
    pub loopback_candidates: Option<bool>,
}

/// A parsed `--ice-servers` value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceServerList(pub Vec<IceServer>);

/// clap's parser for `--ice-servers`: the syntax and every URL; whether TURN servers have
/// credentials is checked by [`IceArgs::checked`], which knows about a TURN secret.
#[cfg(feature = "cli")]
fn parse_ice_servers_arg(s: &str) -> Result<IceServerList, IceConfigError> {
    parse_ice_servers(s, true).map(IceServerList)
}

impl IceArgs {
    /// The configured servers (`[]` when the flag is absent), with TURN credentials checked.
    ///
    /// # Errors
    /// [`IceConfigError`] starting `--ice-servers:` for a TURN server without credentials
    /// when there is no TURN secret.
    pub fn checked(&self, turn_secret: bool) -> Result<Vec<IceServer>, IceConfigError> {
        let servers = self.ice_servers.clone().unwrap_or_default().0;
        for (i, s) in servers.iter().enumerate() {
            check_server(s, turn_secret)
                .map_err(|e| IceConfigError(format!("--ice-servers: server {i}: {e}")))?;
        }
        for s in &servers {
            for u in &s.urls {
                if IceUrl::parse(u).is_ok_and(|u| u.scheme == IceScheme::Stuns) {
                    tracing::warn!(
                        url = %u,
                        "--ice-servers: this Rust peer does not use stuns: URLs; {u} is passed on to browsers only"
                    );
                }
            }
        }
        Ok(servers)
    }

    /// Applies `--loopback-candidates` to a peer configuration, when given.
    pub fn apply_loopback(&self, config: &mut super::PeerConfig) {
        if let Some(keep) = self.loopback_candidates {
            config.loopback_candidates = keep;
        }
    }
}

/// The servers' URLs without credentials, for logs.
pub fn describe(servers: &[IceServer]) -> String {
    if servers.is_empty() {
        return "none (host candidates only)".into();
    }
    servers
        .iter()
        .flat_map(|s| s.urls.iter().cloned())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_peerjs_shape() {
        let v = parse_ice_servers(
            r#"[{"urls":"stun:stun.example.org:3478"},
                {"urls":["turn:turn.example.org:3478?transport=udp","turn:turn.example.org?transport=tcp","turns:turn.example.org:443"],
                 "username":"u","credential":"p","credentialType":"password"}]"#,
            false,
        )
        .unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].urls, vec!["stun:stun.example.org:3478"]);
        assert_eq!(v[1].urls.len(), 3);
        let urls = v[1].parsed_urls().unwrap();
        assert_eq!((urls[0].port, urls[0].transport), (3478, IceTransport::Udp));
        assert_eq!((urls[1].port, urls[1].transport), (3478, IceTransport::Tcp));
        assert_eq!(
            (urls[2].scheme, urls[2].port, urls[2].transport),
            (IceScheme::Turns, 443, IceTransport::Tcp)
        );
        assert!(urls[0].native_supported() && !urls[1].native_supported());
        assert!(!urls[2].native_supported());
        assert_eq!(parse_ice_servers("[]", false).unwrap(), vec![]);
        // Round trip as the discovery record and the web chat see it.
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(parse_ice_servers(&json, false).unwrap(), v);
    }

    #[test]
    fn ipv6_hosts_and_default_ports() {
        let u = IceUrl::parse("stun:[2001:db8::1]:19302").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 19302));
        assert_eq!(IceUrl::parse("stun:[2001:db8::1]").unwrap().port, 3478);
        assert_eq!(IceUrl::parse("turns:t.example").unwrap().port, 5349);
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (json, want) in [
            ("stun:x", "expected a JSON array"),
            ("{}", "expected a JSON array"),
            (r#"[{"url":"stun:x"}]"#, "unknown field"),
            (r#"[{"urls":[]}]"#, "urls is empty"),
            (r#"[{"urls":"http://x"}]"#, "expected stun:"),
            (r#"[{"urls":"stun://x:1"}]"#, "no '//'"),
            (r#"[{"urls":"stun:x:99999"}]"#, "bad port"),
            (r#"[{"urls":"stun:x?transport=tcp"}]"#, "only turn:"),
            (
                r#"[{"urls":"turn:x?transport=sctp","username":"u","credential":"p"}]"#,
                "transport=udp",
            ),
            (r#"[{"urls":"stun:"}]"#, "missing or invalid host"),
            (r#"[{"urls":"turn:x"}]"#, "needs username and credential"),
            (
                r#"[{"urls":"turn:x","username":"u","credential":"p","credentialType":"oauth"}]"#,
                "credentialType",
            ),
        ] {
            let e = parse_ice_servers(json, false).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
        // With a TURN secret the node mints the credentials.
        assert!(parse_ice_servers(r#"[{"urls":"turn:x"}]"#, true).is_ok());
    }

    #[test]
    fn turn_rest_credentials_match_coturn() {
        // coturn's scheme: HMAC-SHA1 over "<expiry>:<name>" with the static-auth-secret.
        // Reference value computed with `printf %s 1700000000:alice | openssl dgst -sha1
        // -hmac north -binary | base64`.
        let (u, c) = turn_rest_credentials(b"north", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        assert_eq!(c, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
        let servers = vec![
            IceServer::stun("stun:s"),
            IceServer {
                urls: vec!["turn:t".into()],
                ..Default::default()
            },
            IceServer {
                urls: vec!["turn:t2".into()],
                username: Some("keep".into()),
                credential: Some("mine".into()),
                credential_type: None,
            },
        ];
        let filled = with_turn_credentials(&servers, b"north", "alice", 1_700_000_000);
        assert_eq!(filled[0], servers[0]);
        assert_eq!(filled[1].username.as_deref(), Some("1700000000:alice"));
        assert_eq!(filled[1].credential.as_deref(), Some(c.as_str()));
        assert_eq!(filled[2], servers[2]);
    }

    #[test]
    fn loopback_and_link_local_candidates_stay_home() {
        let c = |a: &str| format!("candidate:1 1 udp 2130706431 {a} 5000 typ host");
        for (addr, remote, local_test) in [
            ("203.0.113.5", true, true),
            ("10.1.0.2", true, true),
            ("127.0.0.1", false, true),
            ("::1", false, true),
            ("169.254.3.4", false, false),
            ("fe80::1", false, false),
            ("0.0.0.0", false, false),
            ("abcd-1234.local", true, true),
        ] {
            assert_eq!(usable_candidate(&c(addr), false), remote, "{addr}");
            assert_eq!(usable_candidate(&c(addr), true), local_test, "{addr}");
        }
        assert!(usable_candidate("garbage", false));
        assert!(usable_candidate(
            "candidate:2 1 udp 1 198.51.100.7 40000 typ srflx raddr 10.0.0.2 rport 5000",
            false
        ));
    }
}
