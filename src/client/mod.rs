//! The Rust client of an Ouroboros node: discover the node, connect over PeerJS, join
//! rooms, publish with acknowledgements, receive messages, presence and errors, and follow
//! the node across rotations.
//!
//! Wire protocol: `protocol/relay.md`. Messages are JSON objects sent through a PeerJS
//! DataConnection in any serialization (`json` by default), or as JSON text frames over the
//! node's relay WebSocket (`GET /relay`), the path that needs no UDP. [`Transport::Auto`]
//! (the default) tries WebRTC and falls back to the WebSocket when no DataChannel opens
//! within [`ClientConfig::fallback_after`].
//!
//! # Following rotations
//! When the node answers `{"op":"moved","peer_id","signaling","generation"}` (or the
//! connection drops), the client connects to the successor (or reconnects, re-reading the
//! discovery source if it has one), re-joins every room with `since` = the last sequence
//! number it saw there, and re-sends every publish not yet acknowledged. Publishes are
//! idempotent by `(client name, id)` on the node, so nothing is stored twice and nothing
//! acknowledged is lost. The client name travels in the connection's metadata
//! (`{"client": name}`), so it outlives the PeerJS peer id.
//!
//! # Example
//! ```no_run
//! # async fn demo() -> Result<(), ouroboros::client::ClientError> {
//! use ouroboros::client::{Client, ClientConfig, Event};
//! let record = ouroboros::client::discover("http://127.0.0.1:9000/ouroboros.json").await?;
//! let (client, mut events) = Client::connect(record, ClientConfig::new("alice")).await?;
//! client.join("lobby", None).await?;
//! let ack = client.publish("lobby", serde_json::json!("hello")).await?;
//! println!("stored as #{}", ack.seq);
//! while let Some(ev) = events.recv().await {
//!     if let Event::Message(m) = ev { println!("{}: {}", m.from, m.body); }
//! }
//! # Ok(()) }
//! ```

mod driver;
mod trust;

use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::{mpsc, oneshot};

use crate::discovery::{DiscoveryRecord, SignalingEndpoint};
use crate::peer::{IceServer, Serialization};

pub use driver::ConnectionState;

/// The path a client takes to the node (`--transport auto|webrtc|ws`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// WebRTC first; the relay WebSocket when no DataChannel opens within
    /// [`ClientConfig::fallback_after`] (or WebRTC fails sooner). Once the WebSocket was
    /// needed, reconnects (e.g. after `moved`) try it first.
    #[default]
    Auto,
    /// A WebRTC DataChannel to the node's peer id, through its signaling servers.
    Webrtc,
    /// The relay protocol over the node's WebSocket (`relay_ws` of the discovery record):
    /// TCP only, goes wherever signaling goes.
    Ws,
}

impl Transport {
    /// `auto`, `webrtc` or `ws`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Webrtc => "webrtc",
            Transport::Ws => "ws",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "webrtc" => Ok(Transport::Webrtc),
            "ws" => Ok(Transport::Ws),
            other => Err(format!(
                "unknown transport {other:?} (expected auto, webrtc or ws)"
            )),
        }
    }
}

/// Default of [`ClientConfig::fallback_after`].
pub const DEFAULT_FALLBACK_AFTER: Duration = Duration::from_millis(2500);

/// Errors of the client API.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ClientError {
    /// The discovery record could not be read or parsed.
    #[error("discovery: {0}")]
    Discovery(String),
    /// Connecting to the node failed (signaling or DataConnection).
    #[error("connect: {0}")]
    Connect(String),
    /// The node answered `{"op":"error"}` to this request.
    #[error("node error {code}: {message}")]
    Node {
        /// Error code (`rate_limited`, `too_large`, …; see `protocol/relay.md`).
        code: String,
        /// Human-readable explanation.
        message: String,
    },
    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The connection's serialization cannot carry this request (`json` frames stop below
    /// 16 300 bytes, as in peerjs; use `binary` or `msgpack` for bigger bodies). Nothing was
    /// sent and the connection stays up.
    #[error("cannot be sent on this connection: {0}")]
    Unsendable(String),
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

/// How a [`Client`] identifies itself and talks to the node.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Stable client name: the identity for presence, `from` and publish deduplication.
    pub name: String,
    /// DataConnection serialization (`json` by default, like browsers). The WebSocket path
    /// always carries JSON text.
    pub serialization: Serialization,
    /// WebRTC, the relay WebSocket, or WebRTC falling back to the WebSocket (default).
    pub transport: Transport,
    /// With [`Transport::Auto`]: how long a WebRTC attempt may take before the client falls
    /// back to the WebSocket ([`DEFAULT_FALLBACK_AFTER`]).
    pub fallback_after: Duration,
    /// Local UDP addresses of the client's WebRTC sockets (`None`: the peer's defaults).
    /// Binding only an address family the node has no candidates in (e.g. `[::1]:0` against
    /// an IPv4 node) makes WebRTC impossible, as a network without UDP to the node would:
    /// the fallback tests use that.
    pub udp_addrs: Option<Vec<String>>,
    /// STUN/TURN servers; `None` takes the discovery record's `ice_servers`
    /// ([`Client::connect_discovered`]), and none at all (host candidates) without a record.
    pub ice_servers: Option<Vec<IceServer>>,
    /// Offer and accept loopback candidates; `None`: only when the signaling host is a
    /// loopback address (tests on one machine).
    pub loopback_candidates: Option<bool>,
    /// How long one connection attempt may take.
    pub connect_timeout: Duration,
    /// How long a request (join, history, ping) waits for its answer.
    pub request_timeout: Duration,
    /// Upper bound of the reconnect backoff.
    pub max_backoff: Duration,
    /// Give up after this long without a connection. `None` (the default): keep
    /// reconnecting (jittered, capped backoff, re-reading discovery) until the client is
    /// closed, so a ring that comes back minutes later (a queued successor run) finds its
    /// clients still there. A limit is an option for programs that prefer to fail.
    pub give_up_after: Option<Duration>,
    /// Where to re-read the discovery record when the node is gone without `moved`.
    pub discovery_source: Option<String>,
    /// Prefer this signaling endpoint index of the record (0 = the node's own server).
    pub endpoint_index: usize,
    /// The ring's public key (the record's `ring_key`, base64url), pinned: records, `welcome`
    /// and `moved` not signed with it are refused. `None`: the key of the first signed record
    /// the client reads (the target's), if any; with no key at all nothing is checked.
    pub ring_key: Option<String>,
}

impl ClientConfig {
    /// Defaults for a client named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ClientConfig {
            name: name.into(),
            serialization: Serialization::Json,
            transport: Transport::Auto,
            fallback_after: DEFAULT_FALLBACK_AFTER,
            udp_addrs: None,
            ice_servers: None,
            loopback_candidates: None,
            connect_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(15),
            max_backoff: Duration::from_secs(5),
            give_up_after: None,
            discovery_source: None,
            endpoint_index: 0,
            ring_key: None,
        }
    }
}

/// A stored message as delivered by the node.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Room name.
    pub room: String,
    /// Sequence number in the room (dense, increasing).
    pub seq: u64,
    /// The publisher's client name.
    pub from: String,
    /// When the node stored it (Unix ms).
    pub ts: u64,
    /// The publisher's message id.
    pub id: Option<String>,
    /// The message body (any JSON value).
    pub body: Json,
}

/// A publish the node stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The sequence number it got.
    pub seq: u64,
}

/// A page of history, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// Messages, newest first.
    pub messages: Vec<Message>,
    /// Messages before this sequence number were evicted by the memory budget.
    pub evicted_before: Option<u64>,
}

/// Something the node told the client (or the client's connection did).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The node greeted us (after every (re)connect).
    Welcome {
        /// The node's peer id.
        node: String,
        /// Its generation.
        generation: u64,
        /// The whole `welcome` object (limits, gaps, …).
        raw: Json,
    },
    /// A stored message in a joined room (replayed or live). Never repeats a sequence number.
    Message(Message),
    /// Members joined or left a room.
    Presence {
        /// Room name.
        room: String,
        /// Client names that joined.
        joined: Vec<String>,
        /// Client names that left.
        left: Vec<String>,
    },
    /// A direct message from another client.
    Direct {
        /// Sender's client name.
        from: String,
        /// Body.
        body: Json,
    },
    /// An error not tied to a pending request.
    Error {
        /// Error code.
        code: String,
        /// Explanation.
        message: String,
        /// What it refers to (a message id or room), if any.
        reference: Option<String>,
    },
    /// The node told us to move to its successor; the client is following.
    Moved {
        /// Successor peer id.
        peer_id: String,
        /// Successor generation.
        generation: u64,
    },
    /// The connection state changed.
    State(ConnectionState),
    /// A `welcome`, `moved` or discovery record failed the check against the ring's key and
    /// was not acted on (a refused welcome drops that connection; a refused `moved` leaves
    /// the client where it is).
    Untrusted {
        /// What was refused and why.
        reason: String,
    },
    /// Anything else the node sent (forward compatibility).
    Other(Json),
}

/// Requests from the handle to the driver task.
pub(crate) enum Command {
    Join {
        room: String,
        since: Option<u64>,
        reply: oneshot::Sender<Result<u64, ClientError>>,
    },
    Leave {
        room: String,
    },
    Publish {
        room: String,
        id: String,
        body: Json,
        reply: oneshot::Sender<Result<Ack, ClientError>>,
    },
    History {
        room: String,
        before: Option<u64>,
        limit: Option<u32>,
        reply: oneshot::Sender<Result<HistoryPage, ClientError>>,
    },
    Direct {
        to: String,
        body: Json,
    },
    Ping {
        reply: oneshot::Sender<Result<Duration, ClientError>>,
    },
    Raw {
        msg: Json,
    },
    Close,
}

/// A connected client. Cheap to clone; the driver stops when every clone is dropped or
/// [`Client::close`] is called.
#[derive(Clone, Debug)]
pub struct Client {
    cmds: mpsc::Sender<Command>,
    name: String,
    state: tokio::sync::watch::Receiver<ConnectionState>,
}

/// Reads a discovery record from an `http(s)://` URL or a file path.
///
/// # Errors
/// [`ClientError::Discovery`] if it cannot be fetched, read or parsed.
pub async fn discover(source: &str) -> Result<DiscoveryRecord, ClientError> {
    let bytes = if source.starts_with("http://") || source.starts_with("https://") {
        // The process-wide client (platform roots loaded once), also used by rediscovery.
        let client =
            crate::tls::http_client().map_err(|e| ClientError::Discovery(e.to_string()))?;
        // A cache-buster defeats CDN caches (GitHub Pages caches for minutes).
        let sep = if source.contains('?') { '&' } else { '?' };
        let url = format!(
            "{source}{sep}t={}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis()
        );
        let res = client
            .get(&url)
            .header("ngrok-skip-browser-warning", "1")
            .send()
            .await
            .map_err(|e| ClientError::Discovery(format!("{source}: {e}")))?;
        if !res.status().is_success() {
            return Err(ClientError::Discovery(format!(
                "{source}: HTTP {}",
                res.status()
            )));
        }
        res.bytes()
            .await
            .map_err(|e| ClientError::Discovery(format!("{source}: {e}")))?
            .to_vec()
    } else {
        let path = source.strip_prefix("file://").unwrap_or(source);
        tokio::fs::read(path)
            .await
            .map_err(|e| ClientError::Discovery(format!("{path}: {e}")))?
    };
    DiscoveryRecord::from_json(&bytes).map_err(|e| ClientError::Discovery(e.to_string()))
}

/// Where a client connects: a node's peer id and the signaling servers it is on.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The node's peer id.
    pub peer_id: String,
    /// The node's generation (0 if unknown).
    pub generation: u64,
    /// Signaling endpoints, preferred first.
    pub signaling: Vec<SignalingEndpoint>,
    /// Relay WebSocket URLs, preferred first (see [`Target::relay_ws_urls`]); for a
    /// replicated ring, every node's after the first node's.
    pub relay_ws: Vec<String>,
    /// The target is a replicated ring (its record lists `replicas`): any of its nodes may
    /// answer, so a `welcome` may name another node than `peer_id` (its signature and the
    /// client's nonce still must hold).
    pub replicated: bool,
    /// The ring's public key, from a record whose signature holds with it (pinned by the
    /// client unless [`ClientConfig::ring_key`] is set).
    pub ring_key: Option<String>,
}

impl Target {
    /// A target from a peer id and signaling endpoints; the relay WebSocket URLs are derived
    /// from the endpoints ([`Target::relay_ws_urls`]).
    pub fn new(
        peer_id: impl Into<String>,
        generation: u64,
        signaling: Vec<SignalingEndpoint>,
    ) -> Self {
        let relay_ws = Target::relay_ws_urls(None, &signaling);
        Target {
            peer_id: peer_id.into(),
            generation,
            signaling,
            relay_ws,
            ring_key: None,
            replicated: false,
        }
    }

    /// Where a node's relay WebSocket may be: `first` (a record's `relay_ws`), then
    /// `ws[s]://HOST:PORT/relay` of every signaling endpoint (a node serves it on the HTTP
    /// server of its own signaling endpoints; other PeerJS servers just refuse it).
    pub fn relay_ws_urls(first: Option<&str>, signaling: &[SignalingEndpoint]) -> Vec<String> {
        let mut out: Vec<String> = first.map(str::to_owned).into_iter().collect();
        for e in signaling {
            let u = e.relay_ws_url();
            if !out.contains(&u) {
                out.push(u);
            }
        }
        out
    }
}

impl From<DiscoveryRecord> for Target {
    fn from(r: DiscoveryRecord) -> Self {
        let mut relay_ws = Target::relay_ws_urls(r.relay_ws.as_deref(), &r.signaling);
        for node in &r.replicas {
            if !relay_ws.contains(&node.relay_ws) {
                relay_ws.push(node.relay_ws.clone());
            }
        }
        let ring_key = match r.verify(None) {
            Ok(key) => key.map(|k| k.encoded()),
            Err(e) => {
                tracing::warn!(error = %e, "discovery record: its signature does not hold; its key is not pinned");
                None
            }
        };
        Target {
            ring_key,
            peer_id: r.peer_id,
            generation: r.generation,
            signaling: r.signaling,
            relay_ws,
            replicated: !r.replicas.is_empty(),
        }
    }
}

impl Client {
    /// Connects to the node named by `target` (a [`DiscoveryRecord`] or [`Target`]) and
    /// returns the handle and the event stream. Resolves once the DataConnection is open.
    ///
    /// # Errors
    /// [`ClientError::Connect`] if the first connection cannot be made.
    pub async fn connect(
        target: impl Into<Target>,
        config: ClientConfig,
    ) -> Result<(Client, mpsc::UnboundedReceiver<Event>), ClientError> {
        let (cmds, cmd_rx) = mpsc::channel(1024);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let name = config.name.clone();
        let state = driver::start(target.into(), config, cmd_rx, events_tx).await?;
        Ok((Client { cmds, name, state }, events_rx))
    }

    /// Reads the discovery record at `source` (URL or file) and connects; the source is
    /// re-read when the node disappears without `moved`.
    ///
    /// # Errors
    /// As [`discover`] and [`Client::connect`].
    pub async fn connect_discovered(
        source: &str,
        mut config: ClientConfig,
    ) -> Result<(Client, mpsc::UnboundedReceiver<Event>), ClientError> {
        let record = discover(source).await?;
        if let Some(key) = &config.ring_key {
            let pinned = crate::discovery::RingPublicKey::parse(key)
                .map_err(|e| ClientError::Discovery(format!("ring_key: {e}")))?;
            record
                .verify(Some(&pinned))
                .map_err(|e| ClientError::Discovery(format!("{source}: {e}")))?;
        }
        config
            .discovery_source
            .get_or_insert_with(|| source.to_string());
        if config.ice_servers.is_none() {
            config.ice_servers = record.ice_servers.clone();
        }
        Client::connect(record, config).await
    }

    /// This client's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    /// The path of the current connection (`Webrtc` or `Ws`), `None` while not connected.
    pub fn transport(&self) -> Option<Transport> {
        match &*self.state.borrow() {
            ConnectionState::Live { transport, .. } => Some(*transport),
            _ => None,
        }
    }

    /// Waits until the state satisfies `f`.
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the driver stopped first.
    pub async fn wait_state(
        &self,
        f: impl FnMut(&ConnectionState) -> bool,
    ) -> Result<ConnectionState, ClientError> {
        let mut rx = self.state.clone();
        rx.wait_for(f)
            .await
            .map(|s| s.clone())
            .map_err(|_| ClientError::Closed)
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Command,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Joins `room`; the node then replays every stored message with `seq > since` and
    /// sends live ones as [`Event::Message`]. Returns the room's head sequence number.
    ///
    /// # Errors
    /// [`ClientError::Node`] (bad room name, too many rooms, …), [`ClientError::Timeout`].
    pub async fn join(&self, room: &str, since: Option<u64>) -> Result<u64, ClientError> {
        let room = room.to_string();
        self.request(|reply| Command::Join { room, since, reply })
            .await
    }

    /// Leaves `room`.
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        self.cmds
            .send(Command::Leave {
                room: room.to_string(),
            })
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Publishes `body` to `room` with a fresh message id and waits for the node's ack.
    /// Survives rotations: an unacknowledged publish is re-sent to the successor.
    ///
    /// # Errors
    /// [`ClientError::Node`] (too large, rate limited, not joined, …).
    pub async fn publish(&self, room: &str, body: Json) -> Result<Ack, ClientError> {
        self.publish_with_id(room, &uuid::Uuid::new_v4().to_string(), body)
            .await
    }

    /// Publishes with a caller-chosen message id (repeating an id is acknowledged again,
    /// never stored twice).
    ///
    /// # Errors
    /// As [`Client::publish`].
    pub async fn publish_with_id(
        &self,
        room: &str,
        id: &str,
        body: Json,
    ) -> Result<Ack, ClientError> {
        let (room, id) = (room.to_string(), id.to_string());
        self.request(|reply| Command::Publish {
            room,
            id,
            body,
            reply,
        })
        .await
    }

    /// One page of `room`'s history, newest first, older than `before` (default: newest).
    ///
    /// # Errors
    /// [`ClientError::Node`], [`ClientError::Timeout`].
    pub async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ClientError> {
        let room = room.to_string();
        self.request(|reply| Command::History {
            room,
            before,
            limit,
            reply,
        })
        .await
    }

    /// Sends `body` to the client named `to` through the node.
    ///
    /// # Errors
    /// [`ClientError::Closed`]. Delivery errors arrive as [`Event::Error`].
    pub async fn direct(&self, to: &str, body: Json) -> Result<(), ClientError> {
        self.cmds
            .send(Command::Direct {
                to: to.to_string(),
                body,
            })
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Round trip to the node (`ping` → `pong`).
    ///
    /// # Errors
    /// [`ClientError::Timeout`], [`ClientError::Closed`].
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.request(|reply| Command::Ping { reply }).await
    }

    /// Sends any JSON object as is (tests of invalid input; answers arrive as events).
    ///
    /// # Errors
    /// [`ClientError::Closed`].
    pub async fn send_raw(&self, msg: Json) -> Result<(), ClientError> {
        self.cmds
            .send(Command::Raw { msg })
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Closes the connection and stops the driver.
    pub async fn close(&self) {
        let _ = self.cmds.send(Command::Close).await;
        let _ = self
            .state
            .clone()
            .wait_for(|s| matches!(s, ConnectionState::Closed))
            .await;
    }
}
