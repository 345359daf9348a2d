//! The node's ICE servers: what its own peers use, what the published discovery record
//! carries, and the fresh TURN credentials it hands to each client.
//!
//! - STUN servers go everywhere.
//! - A TURN server given with `username`/`credential` is used by the node; it is published
//!   (record, `/ouroboros.json`, `/ice`) only with `--publish-turn-credentials`, because the
//!   record on Pages is public and a long-lived TURN password in it is anyone's relay.
//! - A TURN server given without credentials needs `OUROBOROS_TURN_SECRET` (coturn's
//!   `static-auth-secret`, environment only): the node mints time-limited credentials (the
//!   TURN REST API scheme) for itself and, on every request for `/ouroboros.json` or `/ice`,
//!   for the client asking. They are never written into the published record.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::peer::ice::{IceServer, with_turn_credentials};

/// Environment variable holding coturn's `static-auth-secret` (never a flag: argv is visible
/// to every user of the machine and in the workflow's logs).
pub const TURN_SECRET_ENV: &str = "OUROBOROS_TURN_SECRET";

/// How long the credentials handed to a client stay valid. A TURN allocation is refreshed
/// with them, so they must outlast a chat session, and they are cheap to mint again.
pub const CLIENT_CREDENTIAL_TTL: Duration = Duration::from_secs(12 * 3600);

/// How long the node's own credentials stay valid: longer than any node lives on a runner.
pub const NODE_CREDENTIAL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The TURN REST user name part for clients and for the node itself.
const CLIENT_NAME: &str = "ouroboros-client";
const NODE_NAME: &str = "ouroboros-node";

/// The node's ICE configuration. `Debug` never shows the secret.
#[derive(Clone, Default)]
pub struct NodeIce {
    /// As configured with `--ice-servers`.
    servers: Vec<IceServer>,
    /// coturn's `static-auth-secret`, from [`TURN_SECRET_ENV`].
    turn_secret: Option<Vec<u8>>,
    /// `--publish-turn-credentials`: static TURN passwords may be published.
    publish_static: bool,
    /// `--loopback-candidates`, when given.
    pub(crate) loopback: Option<bool>,
}

impl std::fmt::Debug for NodeIce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeIce")
            .field("servers", &crate::peer::ice::describe(&self.servers))
            .field(
                "turn_secret",
                &self.turn_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("publish_static", &self.publish_static)
            .finish()
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl NodeIce {
    /// A configuration from checked servers, the TURN secret (if any) and the opt-in.
    pub fn new(
        servers: Vec<IceServer>,
        turn_secret: Option<Vec<u8>>,
        publish_static: bool,
        loopback: Option<bool>,
    ) -> Self {
        NodeIce {
            servers,
            turn_secret: turn_secret.filter(|s| !s.is_empty()),
            publish_static,
            loopback,
        }
    }

    /// The TURN secret from the environment (`None` when unset or empty).
    pub fn secret_from_env() -> Option<Vec<u8>> {
        std::env::var_os(TURN_SECRET_ENV)
            .map(|v| v.into_encoded_bytes())
            .filter(|v| !v.is_empty())
    }

    /// Whether a TURN secret is configured.
    pub fn has_turn_secret(&self) -> bool {
        self.turn_secret.is_some()
    }

    /// What the node's own peers use, with credentials minted at `now` when needed.
    pub fn for_node(&self, now: SystemTime) -> Vec<IceServer> {
        match &self.turn_secret {
            Some(secret) => with_turn_credentials(
                &self.servers,
                secret,
                NODE_NAME,
                unix(now + NODE_CREDENTIAL_TTL),
            ),
            None => self.servers.clone(),
        }
    }

    /// What the published record carries: no minted credentials, and static TURN passwords
    /// only with `--publish-turn-credentials`.
    pub fn public(&self) -> Vec<IceServer> {
        self.servers
            .iter()
            .filter(|s| !s.is_turn() || (s.has_credentials() && self.publish_static))
            .cloned()
            .collect()
    }

    /// What one client gets from the node itself (`/ouroboros.json`, `/ice`): the public
    /// servers plus TURN servers with credentials minted at `now`.
    pub fn for_client(&self, now: SystemTime) -> Vec<IceServer> {
        let Some(secret) = &self.turn_secret else {
            return self.public();
        };
        let expiry = unix(now + CLIENT_CREDENTIAL_TTL);
        self.servers
            .iter()
            .filter_map(|s| {
                if !s.is_turn() {
                    Some(s.clone())
                } else if !s.has_credentials() {
                    Some(
                        with_turn_credentials(std::slice::from_ref(s), secret, CLIENT_NAME, expiry)
                            .remove(0),
                    )
                } else {
                    self.publish_static.then(|| s.clone())
                }
            })
            .collect()
    }

    /// Sets a peer configuration's ICE servers (minted at `now`) and, when
    /// `--loopback-candidates` was given, its loopback choice.
    pub fn apply(&self, config: &mut crate::peer::PeerConfig, now: SystemTime) {
        config.ice_servers = self.for_node(now);
        if let Some(keep) = self.loopback {
            config.loopback_candidates = keep;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::ice::turn_rest_credentials;

    fn servers() -> Vec<IceServer> {
        crate::peer::parse_ice_servers(
            r#"[{"urls":"stun:s.example:3478"},
                {"urls":"turn:rest.example:3478"},
                {"urls":"turn:static.example:3478","username":"u","credential":"p"}]"#,
            true,
        )
        .unwrap()
    }

    #[test]
    fn a_static_password_is_published_only_on_opt_in() {
        let ice = NodeIce::new(servers(), None, false, None);
        let urls = |v: Vec<IceServer>| v.iter().map(|s| s.urls[0].clone()).collect::<Vec<_>>();
        assert_eq!(urls(ice.public()), vec!["stun:s.example:3478"]);
        assert_eq!(
            urls(ice.for_client(SystemTime::now())),
            vec!["stun:s.example:3478"]
        );
        let ice = NodeIce::new(servers(), None, true, None);
        assert_eq!(
            urls(ice.public()),
            vec!["stun:s.example:3478", "turn:static.example:3478"]
        );
    }

    #[test]
    fn minted_credentials_go_to_clients_never_to_the_record() {
        let ice = NodeIce::new(servers(), Some(b"north".to_vec()), false, None);
        assert!(format!("{ice:?}").contains("<redacted>"));
        assert!(!format!("{ice:?}").contains("north"));
        assert!(ice.public().iter().all(|s| s.credential.is_none()));
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let client = ice.for_client(now);
        assert_eq!(client.len(), 2, "{client:?}");
        let expiry = 1_700_000_000 + CLIENT_CREDENTIAL_TTL.as_secs();
        let (u, c) = turn_rest_credentials(b"north", CLIENT_NAME, expiry);
        assert_eq!(client[1].urls, vec!["turn:rest.example:3478"]);
        assert_eq!(client[1].username.as_deref(), Some(u.as_str()));
        assert_eq!(client[1].credential.as_deref(), Some(c.as_str()));
        // The node itself uses every server, the static one with its own password.
        let own = ice.for_node(now);
        assert_eq!(own.len(), 3);
        assert_eq!(own[2].credential.as_deref(), Some("p"));
        assert!(
            own[1]
                .username
                .as_deref()
                .unwrap()
                .ends_with(":ouroboros-node")
        );
    }
}
