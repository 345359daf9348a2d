//! The discovery record (where the node lives now) and the publishers that make it public.
//!
//! A [`DiscoveryRecord`] names the node that is primary for the ring right now: its PeerJS
//! peer id, the signaling endpoints it is registered on, its generation and lifetime, and
//! the node it replaced. Schema: `protocol/discovery.schema.json`.
//!
//! A [`Publisher`] makes the record public. Every publisher enforces the same guard,
//! [`check_replace`]: a record may only replace one of an older generation, or one of the
//! same generation written by the same peer. A stale or foreign node therefore never
//! overwrites a newer generation's record.

pub mod local;
pub mod signing;

pub use local::LocalPublisher;
pub use signing::{RingKeys, RingPublicKey, SignatureError, SignedKind};

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// The only record format version this build writes and reads.
pub const RECORD_VERSION: u32 = 1;

/// File name of the record, in a data dir and on Pages.
pub const RECORD_FILE: &str = "ouroboros.json";

/// One PeerJS signaling server the node's peer is registered on: what a browser passes to
/// `new Peer({host, port, path, key, secure})`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalingEndpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Server path prefix, e.g. `/`.
    pub path: String,
    /// PeerJS API key, e.g. `peerjs`.
    pub key: String,
    /// Whether to use `https`/`wss`.
    pub secure: bool,
    /// The node's peer id on this server when it is not the record's `peer_id`: the node
    /// moved to a fresh id there because another party held its id (a public server such as
    /// the PeerJS cloud lets anyone register any free id). Absent: the record's `peer_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
}

/// Path of the relay WebSocket on a node's HTTP server (`protocol/relay.md`).
pub const RELAY_WS_PATH: &str = "/relay";

impl SignalingEndpoint {
    /// The id to dial on this server: its own [`SignalingEndpoint::peer_id`], else `node`
    /// (the record's `peer_id`).
    pub fn peer_id_or<'a>(&'a self, node: &'a str) -> &'a str {
        self.peer_id.as_deref().unwrap_or(node)
    }

    /// Whether `other` names the same server (host, port, path, key and scheme), whatever
    /// id the node has there.
    pub fn same_server(&self, other: &SignalingEndpoint) -> bool {
        self.host == other.host
            && self.port == other.port
            && self.path == other.path
            && self.key == other.key
            && self.secure == other.secure
    }

    /// This server as a PeerJS server URL, `ws[s]://HOST:PORT/PATH?key=KEY` (what
    /// `PeerConfig::from_url` reads).
    pub fn server_url(&self) -> String {
        let path = if self.path.starts_with('/') {
            self.path.clone()
        } else {
            format!("/{}", self.path)
        };
        let key: String = url::form_urlencoded::byte_serialize(self.key.as_bytes()).collect();
        format!("{}{path}?key={key}", self.ws_origin())
    }

    /// `ws[s]://HOST:PORT` (an IPv6 host in brackets).
    fn ws_origin(&self) -> String {
        let scheme = if self.secure { "wss" } else { "ws" };
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// The relay WebSocket of the Ouroboros node whose HTTP server this endpoint is (its own
    /// signaling endpoint, or its tunnel's): `ws[s]://HOST:PORT/relay`. Other PeerJS servers
    /// have none (a client trying it gets an HTTP error).
    pub fn relay_ws_url(&self) -> String {
        format!("{}{RELAY_WS_PATH}", self.ws_origin())
    }
}

/// The node a record's node replaced: lets clients of the old node recognise the move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousNode {
    /// The predecessor's peer id.
    pub peer_id: String,
    /// The predecessor's signaling endpoints.
    pub signaling: Vec<SignalingEndpoint>,
}

/// Where the ring's primary node lives.
///
/// # Format
/// ```json
/// {"version":1,"peer_id":"ouroboros-x","generation":3,
///  "signaling":[{"host":"127.0.0.1","port":9000,"path":"/","key":"peerjs","secure":false}],
///  "ice_servers":[{"urls":["stun:stun.example.org:3478"]}],
///  "tunnel_url":"https://x.ngrok.app","relay_ws":"wss://x.ngrok.app/relay",
///  "started_at":"2026-11-23T15:00:00.000Z",
///  "expires_at":"2026-11-23T17:00:00.000Z",
///  "previous":{"peer_id":"ouroboros-w","signaling":[...]}}
/// ```
/// `tunnel_url`, `relay_ws` and `previous` are omitted when absent; `expires_at` is `null` for a node
/// that runs forever. Times are RFC 3339 in UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryRecord {
    /// Record format version, [`RECORD_VERSION`].
    pub version: u32,
    /// The node's PeerJS peer id.
    pub peer_id: String,
    /// Position in the ring: the first node is 0, each successor adds 1.
    pub generation: u64,
    /// Signaling servers the node's peer is registered on (the node's own first).
    pub signaling: Vec<SignalingEndpoint>,
    /// STUN/TURN servers clients should use (`new Peer({config: {iceServers}})`); `[]` means
    /// host candidates only, absent means the client's own defaults. TURN servers appear only
    /// with credentials: minted per client when served by the node itself, static ones only
    /// on the node's explicit opt-in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<Vec<crate::peer::IceServer>>,
    /// Public URL of the node's HTTP server through a tunnel, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_url: Option<String>,
    /// The relay protocol over a WebSocket on the node's HTTP port (`ws[s]://HOST:PORT/relay`,
    /// through the tunnel when there is one): the path that needs no UDP
    /// (`protocol/relay.md`). Absent in records of nodes without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ws: Option<String>,
    /// When the node started.
    #[serde(with = "rfc3339")]
    pub started_at: SystemTime,
    /// When the node will be gone at the latest (`null`: no planned end).
    #[serde(default, with = "rfc3339_opt")]
    pub expires_at: Option<SystemTime>,
    /// The node this one replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousNode>,
    /// Set when the node left without a successor (liveness rule 1, `protocol/handoff.md`):
    /// it stopped writes and left its state in a final backup; the next node recovers from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
    /// Every node of a replicated ring (`--replicas N`, `protocol/replication.md`), this one
    /// included, as its members know them now: a client may talk to any of them, and moves to
    /// another when its own goes away. Omitted for a ring of one node at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaNode>,
    /// The ring's public key (Ed25519, base64url): what `sig` here, and `welcome` and
    /// `moved` on the relay, are signed with ([`signing`]). Clients pin it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_key: Option<String>,
    /// Signature of every other field with `ring_key` ([`DiscoveryRecord::sign`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

/// One node of a replicated ring, as the discovery record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaNode {
    /// Its member id in the ring.
    pub id: u64,
    /// Its base URL (the members' calls, `/ouroboros.json`, `/status`).
    pub url: String,
    /// Its relay WebSocket.
    pub relay_ws: String,
}

/// How a node left without a successor ([`DiscoveryRecord::ended`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// When it stopped serving.
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
    /// Why: `shutdown` (told to stop), `no_successor` (no successor came in time) or
    /// `host_ending` (its runner's time was up, or the host went away).
    pub reason: String,
    /// Whether a final backup holds everything it acknowledged (a node recovering from it
    /// opens no gap).
    pub final_backup: bool,
}

impl DiscoveryRecord {
    /// Serializes the record as pretty JSON (what publishers write).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).expect("a record always serializes")
    }

    /// Parses and validates a record.
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] for malformed JSON, an unknown version, an empty peer id
    /// or an empty endpoint list.
    pub fn from_json(text: &[u8]) -> Result<Self, DiscoveryError> {
        let record: DiscoveryRecord =
            serde_json::from_slice(text).map_err(|e| DiscoveryError::Invalid(e.to_string()))?;
        record.validate()?;
        Ok(record)
    }

    /// Sets `ring_key` and signs the record with `keys` (call after the last change: any
    /// change afterwards breaks the signature).
    pub fn sign(&mut self, keys: &RingKeys) {
        self.ring_key = Some(keys.public_key().to_owned());
        self.sig = None;
        let value = serde_json::to_value(&*self).expect("a record always serializes");
        self.sig = Some(keys.sign(SignedKind::Record, &value));
    }

    /// Checks the record's signature: with `pinned`, the record must name that key and be
    /// signed with it; without, a record that names a key must be signed with it, and an
    /// unsigned record (no `ring_key`) passes. Returns the key that signed it, if any.
    ///
    /// # Errors
    /// [`SignatureError`]: not signed although a key is pinned, another key, a bad signature.
    pub fn verify(
        &self,
        pinned: Option<&RingPublicKey>,
    ) -> Result<Option<RingPublicKey>, SignatureError> {
        let key = match (&self.ring_key, pinned) {
            (None, None) => return Ok(None),
            (None, Some(_)) => return Err(SignatureError::Missing),
            (Some(k), pinned) => {
                let key = RingPublicKey::parse(k)?;
                if pinned.is_some_and(|p| *p != key) {
                    return Err(SignatureError::OtherKey);
                }
                key
            }
        };
        let value = serde_json::to_value(self).expect("a record always serializes");
        key.verify(SignedKind::Record, &value)?;
        Ok(Some(key))
    }

    /// Checks what the schema cannot express by types alone.
    ///
    /// # Errors
    /// [`DiscoveryError::Invalid`] naming the offending field.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        if self.version != RECORD_VERSION {
            return Err(DiscoveryError::Invalid(format!(
                "unsupported version {}",
                self.version
            )));
        }
        if self.peer_id.is_empty() || self.peer_id.len() > 256 {
            return Err(DiscoveryError::Invalid(
                "peer_id must be 1..=256 bytes".into(),
            ));
        }
        if self.signaling.is_empty() {
            return Err(DiscoveryError::Invalid(
                "signaling must list at least one endpoint".into(),
            ));
        }
        for e in &self.signaling {
            if e.host.is_empty() || e.port == 0 || e.key.is_empty() || !e.path.starts_with('/') {
                return Err(DiscoveryError::Invalid(
                    "signaling endpoint needs host, port, key and a path starting with /".into(),
                ));
            }
            if e.peer_id
                .as_deref()
                .is_some_and(|id| !crate::ids::is_peerjs_id(id) || id.len() > 256)
            {
                return Err(DiscoveryError::Invalid(
                    "a signaling endpoint's peer_id must be a valid PeerJS id".into(),
                ));
            }
        }
        Ok(())
    }
}

/// Why a record may not replace the current one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaleRecord {
    /// The published record belongs to a newer generation.
    #[error("record of generation {current} is newer than ours ({ours})")]
    OlderGeneration {
        /// Generation of the published record.
        current: u64,
        /// Generation we tried to publish.
        ours: u64,
    },
    /// Another peer already published this generation.
    #[error("generation {generation} is already published by another peer ({current_peer_id})")]
    ForeignPeer {
        /// The generation both claim.
        generation: u64,
        /// Peer id of the published record.
        current_peer_id: String,
    },
}

/// The publication guard: may `new` replace `current`?
///
/// A newer generation always may; the same generation only if written by the same peer
/// (a node refreshing its own record); an older generation never.
///
/// # Errors
/// [`StaleRecord`] saying why not.
pub fn check_replace(current: &DiscoveryRecord, new: &DiscoveryRecord) -> Result<(), StaleRecord> {
    use std::cmp::Ordering::*;
    match new.generation.cmp(&current.generation) {
        Greater => Ok(()),
        Equal if new.peer_id == current.peer_id => Ok(()),
        // The nodes of one replicated ring all describe the ring (its `replicas`): any of
        // them refreshes the record as the membership changes.
        Equal if !new.replicas.is_empty() && !current.replicas.is_empty() => Ok(()),
        Equal => Err(StaleRecord::ForeignPeer {
            generation: current.generation,
            current_peer_id: current.peer_id.clone(),
        }),
        Less => Err(StaleRecord::OlderGeneration {
            current: current.generation,
            ours: new.generation,
        }),
    }
}

/// Errors of discovery publishing and reading.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The guard refused: a newer generation (or another peer of ours) owns the record.
    #[error("refusing to publish: {0}")]
    Stale(#[from] StaleRecord),
    /// A record could not be parsed or is invalid.
    #[error("invalid discovery record: {0}")]
    Invalid(String),
    /// Local I/O failed.
    #[error("discovery I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A remote publisher (e.g. GitHub) failed; the message is safe to log.
    #[error("discovery publisher: {0}")]
    Remote(String),
}

impl DiscoveryError {
    /// Whether this is the guard refusing (the node must not consider itself primary).
    pub fn is_stale(&self) -> bool {
        matches!(self, DiscoveryError::Stale(_))
    }
}

/// Makes a discovery record public. Implementations: [`LocalPublisher`] (a folder), and
/// GitHub Pages in `github`.
///
/// Every implementation applies [`check_replace`] against the currently published record
/// atomically with the write (a lock, or an optimistic `sha` check), so of two nodes racing
/// to publish the same generation exactly one wins.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes `record`, unless the guard refuses.
    ///
    /// # Errors
    /// [`DiscoveryError::Stale`] if a newer generation (or another peer of the same
    /// generation) owns the record; other variants for I/O or remote failures.
    async fn publish(&self, record: &DiscoveryRecord) -> Result<(), DiscoveryError>;

    /// The currently published record, if any.
    ///
    /// # Errors
    /// I/O, remote or parse failures.
    async fn current(&self) -> Result<Option<DiscoveryRecord>, DiscoveryError>;

    /// A short name for logs and `/status` (`local`, `pages`).
    fn name(&self) -> &'static str;
}

/// A publisher that publishes nothing (for nodes without discovery); `current` is `None`.
#[derive(Debug, Default, Clone)]
pub struct NoPublisher;

#[async_trait::async_trait]
impl Publisher for NoPublisher {
    async fn publish(&self, _record: &DiscoveryRecord) -> Result<(), DiscoveryError> {
        Ok(())
    }
    async fn current(&self) -> Result<Option<DiscoveryRecord>, DiscoveryError> {
        Ok(None)
    }
    fn name(&self) -> &'static str {
        "none"
    }
}

/// RFC 3339 (UTC, milliseconds) serde for `SystemTime`.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::SystemTime;

    /// Serializes as `2026-11-23T15:00:00.000Z`.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    /// Parses any RFC 3339 UTC timestamp (`Z` suffix, optional fraction).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(D::Error::custom)
    }
}

/// Like [`rfc3339`] for `Option<SystemTime>` (`null` when absent).
pub mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::SystemTime;

    /// Serializes `None` as `null`.
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
            None => s.serialize_none(),
        }
    }

    /// Accepts `null` or an RFC 3339 UTC timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_rfc3339(&s).map_err(D::Error::custom))
            .transpose()
    }
}

/// Endpoints and records for the tests of this module and of `handoff`.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A `peerjs` server on the loopback at `port`, plain HTTP, no own peer id.
    pub(crate) fn endpoint(port: u16) -> SignalingEndpoint {
        SignalingEndpoint {
            host: "127.0.0.1".into(),
            port,
            path: "/".into(),
            key: "peerjs".into(),
            secure: false,
            peer_id: None,
        }
    }

    /// The unsigned record of `peer` at `generation`, signaling on the loopback at `port`,
    /// started at `started_at`, with no optional field set.
    pub(crate) fn record(
        peer: &str,
        generation: u64,
        port: u16,
        started_at: SystemTime,
    ) -> DiscoveryRecord {
        DiscoveryRecord {
            ring_key: None,
            sig: None,
            version: RECORD_VERSION,
            peer_id: peer.into(),
            generation,
            signaling: vec![endpoint(port)],
            ice_servers: None,
            relay_ws: None,
            tunnel_url: None,
            started_at,
            expires_at: None,
            previous: None,
            ended: None,
            replicas: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests;
