//! The relay service: rooms, ordered per-room message logs, history, presence, direct
//! relay, limits and the memory budget. Sans-IO; wire format in `protocol/relay.md`.
//!
//! # Driving a [`Relay`]
//!
//! The relay does no I/O and never reads a clock. The node feeds it:
//! - [`Relay::connect`] when a DataConnection to the node's peer opens,
//! - [`Relay::handle_message`] for every decoded message on it (as a JSON value; a
//!   legacy client's strings arrive as `Value::String`),
//! - [`Relay::disconnect`] when it closes,
//!
//! and after **every** call drains [`Relay::poll_output`] (messages to send, connections
//! to close) and, while a successor is catching up, [`Relay::poll_replication`]. There
//! are no timers: rate limits refill lazily from the `now` passed in.
//!
//! Outgoing messages are serialised once and shared ([`Outgoing`]): a `msg` fanned out
//! to 100 subscribers is one JSON text and 100 reference-count increments.
//!
//! # Connections and protocols
//!
//! A connection whose metadata declares `{"protocol": "ouroboros/1"}` is greeted with
//! `welcome` at once. Otherwise the first message decides: an object (or a string
//! holding a JSON object with an `op`) means the relay protocol — `welcome` is sent
//! first, then the answer; any other string means the seed's legacy protocol
//! (`protocol/relay.md`), and the connection then only ever receives strings of the seed's shapes.
//!
//! A client's identity (the `from` of its messages, its presence name, the key of its
//! publish deduplication and of `direct`) is the `client` string in its metadata or in its
//! first message, else its peer id. With the ring's keys ([`RelayConfig::keys`]) the relay
//! binds it to the connection (`identity.rs`): a name held by another connection, or with
//! stored messages, is only granted with its name token; `welcome` (and `moved`) are signed.
//!
//! # Handoff
//!
//! [`Relay::export_snapshot`], [`Relay::restore`], [`Relay::set_replication`],
//! [`Relay::poll_replication`], [`Relay::apply_replication`], [`Relay::high_water`],
//! [`Relay::set_mode`] and [`Relay::announce_moved`] are what `handoff` builds on.

mod budget;
mod decode;
mod identity;
mod legacy;
mod metrics;
mod replicated;
mod replication;
mod requests;
mod restore;
mod rooms;
mod store;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::discovery::RingKeys;
use crate::rate::TokenBucket;

pub use decode::{SnapshotDecoder, StreamingRestore};
pub use metrics::{Metrics, RoomStats};
pub use replicated::{Proposal, ProposalFailure};
pub use replication::{
    Applied, JsonCursor, ReplicationEvent, RoomState, SNAPSHOT_VERSION, Snapshot, SnapshotHeader,
    SnapshotJson,
};
pub use requests::MAX_BODY_DEPTH;
pub use restore::{MAX_HEAD, Restorer};
use store::Room;
pub use store::{ENTRY_OVERHEAD, Payload, StoredMessage};
use wire::{ErrorCode, Limits, ServerMessage, SignalingEndpoint};

pub use crate::ids::ConnId;

/// Default [`RelayConfig::room_idle`]: ten minutes.
pub const DEFAULT_ROOM_IDLE: Duration = Duration::from_secs(600);

/// Relay settings (one struct; the node maps its flags onto it).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The node's peer id (sent in `welcome`).
    pub node: String,
    /// The node's generation (sent in `welcome`).
    pub generation: u64,
    /// Enforced limits (sent in `welcome`).
    pub limits: Limits,
    /// Bytes of stored messages (serialised size + [`ENTRY_OVERHEAD`] each) beyond which
    /// the oldest messages of the largest rooms are evicted (`budget.rs`).
    pub memory_budget: usize,
    /// The room that backs the legacy (seed) protocol.
    pub legacy_room: String,
    /// The ring's keys (derived from its secret, the same on every node of the ring). With
    /// them the relay binds client names to connections (name tokens) and signs `welcome`
    /// and `moved`; without them (the default of [`RelayConfig::new`]) a client is whatever
    /// name it declares and nothing is signed. `ouroboros node` always has them.
    pub keys: Option<Arc<RingKeys>>,
    /// How long a room must have been empty (no members, no stored messages) before it may
    /// be freed to make room for a new one (see `rooms.rs`).
    pub room_idle: Duration,
    /// The rooms are a replicated log's (`--replicas N`): a publish is not stored here but
    /// proposed ([`Output::Propose`]), and messages are stored only as committed entries come
    /// back ([`Relay::apply_committed`]), with the `seq` the log gave them.
    pub replicated: bool,
}

impl RelayConfig {
    /// Default limits, a 256 MiB budget and legacy room `global`.
    pub fn new(node: impl Into<String>, generation: u64) -> Self {
        RelayConfig {
            node: node.into(),
            generation,
            limits: Limits::default(),
            memory_budget: 256 * 1024 * 1024,
            legacy_room: "global".into(),
            keys: None,
            room_idle: DEFAULT_ROOM_IDLE,
            replicated: false,
        }
    }
}

/// Largest inbound message of a relay connection, in bytes, on any transport: room for a
/// `max_message_bytes` body and its envelope even when escaped or re-encoded (a float is 9
/// BinaryPack bytes for 4 JSON ones), so the relay itself answers `too_large`; at least 1 MiB.
pub fn max_frame_bytes(max_message_bytes: usize) -> usize {
    max_message_bytes
        .saturating_mul(2)
        .saturating_add(64 * 1024)
        .max(1 << 20)
}

/// Decoder limits for relay DataConnections, derived from the relay's [`Limits`] (never the
/// codec's 64 MiB defaults): one message at most [`max_frame_bytes`], at most two chunked
/// messages in progress holding at most that many retained bytes together, and no more
/// values than a `max_message_bytes` JSON body can hold (`[0,0,…]`: one per 2 bytes).
pub fn decoder_limits(limits: &Limits) -> crate::peer::codec::DecoderLimits {
    let frame = max_frame_bytes(limits.max_message_bytes);
    crate::peer::codec::DecoderLimits {
        max_message_size: frame,
        max_partial_messages: 2,
        max_partial_bytes: frame,
        max_values: limits.max_message_bytes / 2 + 1024,
        ..crate::peer::codec::DecoderLimits::default()
    }
}

/// What the driver learns about a connection when it opens.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The remote peer id.
    pub peer_id: String,
    /// The DataConnection's metadata (`Value::Null` if none). `protocol` and `client`
    /// are read from it.
    pub metadata: Value,
}

/// A message for one connection.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A relay-protocol object. Send it as the object `payload.json()` describes: its
    /// text as is for `json` (and `raw`) serialization, `payload.encoded(…)` for
    /// `binary`/`msgpack`.
    Object(Arc<Payload>),
    /// A string value (legacy clients, and relay clients that send their requests as
    /// JSON strings). Send it as a string whatever the serialization.
    Text(Arc<str>),
}

impl Outgoing {
    /// The text: the object's JSON, or the string.
    pub fn text(&self) -> &str {
        match self {
            Outgoing::Object(p) => p.json(),
            Outgoing::Text(s) => s,
        }
    }
}

/// Why the relay closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// `max_clients` reached (a declared relay client got `error server_full` first).
    ServerFull,
}

/// What the driver must do.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send `message` on `conn` (in order with earlier sends to `conn`).
    Send {
        /// Target connection.
        conn: ConnId,
        /// The message.
        message: Outgoing,
    },
    /// Close `conn` after sending what was queued for it. The relay has forgotten it.
    Close {
        /// Target connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// A replicated relay ([`RelayConfig::replicated`]): propose this publish to the ring's
    /// log, then report the outcome with [`Relay::proposal_done`]. The message is stored
    /// (and fanned out) when the committed entry comes back, through
    /// [`Relay::apply_committed`].
    Propose(Proposal),
}

/// Whether the node accepts writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accepts writes.
    Primary,
    /// Read-only (handing over, or a successor not yet confirmed): publishes are refused
    /// with the retryable `read_only`; joins, history, direct and ping still work.
    Draining,
}

/// Library errors of the relay (protocol errors go to clients as `error` messages).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A replicated message skips sequence numbers.
    #[error("replication gap in room {room}: expected seq {expected}, got {got}")]
    Gap {
        /// Room name.
        room: String,
        /// The next seq the room expects.
        expected: u64,
        /// The seq received.
        got: u64,
    },
    /// A snapshot is inconsistent.
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
}

/// How a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    /// No message yet and nothing declared.
    Undetermined,
    /// Relay protocol, answered with objects.
    Object,
    /// Relay protocol, answered with JSON strings (client sends strings).
    Text,
    /// The seed's protocol.
    Legacy,
}

#[derive(Debug)]
struct Conn {
    peer_id: Arc<str>,
    identity: Arc<str>,
    /// Identity declared in metadata (the first message may not change it).
    named: bool,
    /// Whether a message was handled (identity is fixed after the first).
    seen: bool,
    /// Whether `direct` to the peer id reaches this connection (not when the peer id was a
    /// name in use by another connection when this one was welcomed).
    peer_indexed: bool,
    /// What the metadata declared (`client`, `token`, `nonce`), until the welcome settles
    /// the identity.
    declared: Option<Box<identity::Declaration>>,
    proto: Proto,
    rooms: Vec<Arc<str>>,
    bucket: TokenBucket,
}

/// The relay core. See the [module docs](self) for the call order.
#[derive(Debug)]
pub struct Relay {
    config: RelayConfig,
    mode: Mode,
    conns: HashMap<ConnId, Conn>,
    rooms: HashMap<Arc<str>, Room>,
    /// Global store order (room, seq), oldest first (the order of a snapshot's messages);
    /// slots whose message is gone are skipped and swept (`compact_order`).
    order: VecDeque<(Arc<str>, u64)>,
    /// Rooms holding stored messages, by bytes charged (smallest first): eviction takes
    /// from the last.
    by_size: BTreeSet<(usize, Arc<str>)>,
    /// Peer id and identity → relay-protocol connections, for `direct`.
    by_name: HashMap<Arc<str>, Vec<ConnId>>,
    /// Identity → number of rooms where it has deduplication entries (stored messages with
    /// an id): such a name is in use even while nobody holds it.
    publishers: HashMap<Arc<str>, usize>,
    legacy_conns: BTreeSet<ConnId>,
    legacy_room: Arc<str>,
    out: VecDeque<Output>,
    replication: Option<VecDeque<ReplicationEvent>>,
    /// The `gap` notice carried by `welcome` (see [`Relay::set_gap`]).
    gap: Option<Value>,
    pong: Arc<Payload>,
    moved: Option<Arc<Payload>>,
    bytes: usize,
    messages: usize,
    /// The head a new room starts from (raised by [`Relay::open_gap`] and by freeing a
    /// room: never below the head of a room that was forgotten; 0 normally).
    seq_floor: u64,
    /// The latest `now` an input brought (the relay's only clock).
    now: Instant,
    /// When idle rooms were last looked for (at most once a second).
    last_sweep: Option<Instant>,
    m: Metrics,
    errors: [u64; ErrorCode::ALL.len()],
    /// Ids generated for the seed protocol's proposals so far (`replicated.rs`).
    proposals: u64,
}

/// A refusal: code and message, sent as `error` to relay clients.
type Refusal = (ErrorCode, String);

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err((code, message.into()))
}

impl Relay {
    /// An empty relay in [`Mode::Primary`].
    pub fn new(config: RelayConfig, now: Instant) -> Relay {
        let legacy_room: Arc<str> = config.legacy_room.as_str().into();
        Relay {
            gap: None,
            pong: Payload::of(&ServerMessage::Pong),
            config,
            mode: Mode::Primary,
            conns: HashMap::new(),
            rooms: HashMap::new(),
            order: VecDeque::new(),
            by_size: BTreeSet::new(),
            by_name: HashMap::new(),
            publishers: HashMap::new(),
            legacy_conns: BTreeSet::new(),
            legacy_room,
            out: VecDeque::new(),
            replication: None,
            moved: None,
            bytes: 0,
            messages: 0,
            seq_floor: 0,
            now,
            last_sweep: None,
            m: Metrics::default(),
            errors: [0; ErrorCode::ALL.len()],
            proposals: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Sets (or clears) the `gap` notice carried by every later `welcome` (after a
    /// crash restore: what may be missing).
    pub fn set_gap(&mut self, gap: Option<Value>) {
        self.gap = gap;
    }

    /// The `gap` notice every `welcome` carries (`None`: no known gap).
    pub fn gap(&self) -> Option<&Value> {
        self.gap.as_ref()
    }

    // ----- driver inputs ---------------------------------------------------------------

    /// A DataConnection opened. Declared relay clients are greeted now; a connection
    /// beyond `max_clients` is closed (`Output::Close`).
    pub fn connect(&mut self, now: Instant, conn: ConnId, info: ConnInfo) {
        self.tick(now);
        let declared =
            info.metadata.get("protocol").and_then(Value::as_str) == Some(wire::PROTOCOL);
        if self.conns.len() >= self.config.limits.max_clients {
            self.m.refused += 1;
            self.count_error(ErrorCode::ServerFull);
            if declared {
                let p = error_payload(
                    ErrorCode::ServerFull,
                    "the node has reached its client limit",
                    None,
                );
                self.out.push_back(Output::Send {
                    conn,
                    message: Outgoing::Object(p),
                });
            }
            self.out.push_back(Output::Close {
                conn,
                reason: CloseReason::ServerFull,
            });
            return;
        }
        if let Some(old) = self.conns.contains_key(&conn).then_some(conn) {
            tracing::debug!(
                conn = old.0,
                "connect for an open connection id: replacing it"
            );
            self.disconnect(now, old);
        }
        let peer_id: Arc<str> = info.peer_id.as_str().into();
        let declaration = identity::Declaration::from_metadata(&info.metadata);
        // Provisional (what a legacy connection keeps); a relay connection's identity is
        // settled when it is welcomed.
        let declared_name = declaration
            .client
            .as_ref()
            .and_then(Value::as_str)
            .filter(|n| self.valid_name(n));
        let identity: Arc<str> = declared_name.map_or_else(|| peer_id.clone(), Into::into);
        let limits = &self.config.limits;
        let c = Conn {
            peer_id,
            identity,
            named: declared_name.is_some(),
            seen: false,
            peer_indexed: true,
            declared: Some(Box::new(declaration)),
            proto: Proto::Undetermined,
            rooms: Vec::new(),
            bucket: TokenBucket::new(limits.rate_burst, limits.rate_per_sec, now),
        };
        self.conns.insert(conn, c);
        if declared {
            self.become_relay(conn, Proto::Object, None);
        }
    }

    /// A DataConnection closed (idempotent; unknown ids are ignored).
    pub fn disconnect(&mut self, now: Instant, conn: ConnId) {
        self.tick(now);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for room in &c.rooms {
            self.remove_member(room, conn, &c.identity);
        }
        self.legacy_conns.remove(&conn);
        if matches!(c.proto, Proto::Object | Proto::Text) {
            if c.peer_indexed {
                self.unindex(&c.peer_id, conn);
            }
            if c.identity != c.peer_id {
                self.unindex(&c.identity, conn);
            }
        }
    }

    /// One decoded message from `conn`. `wall_ms` (ms since the Unix epoch) stamps
    /// stored messages; `now` drives rate limits.
    pub fn handle_message(&mut self, now: Instant, wall_ms: u64, conn: ConnId, msg: Value) {
        self.tick(now);
        let Some(c) = self.conns.get(&conn) else {
            tracing::debug!(conn = conn.0, "message for an unknown connection");
            return;
        };
        let mut msg = msg;
        if c.proto == Proto::Undetermined {
            match &msg {
                Value::String(s) => match parse_op_object(s) {
                    Some(v) => {
                        msg = v;
                        self.become_relay(conn, Proto::Text, Some(&mut msg));
                    }
                    None => {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.proto = Proto::Legacy;
                            c.declared = None;
                        }
                        self.legacy_conns.insert(conn);
                    }
                },
                _ => self.become_relay(conn, Proto::Object, Some(&mut msg)),
            }
        }
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.proto == Proto::Legacy {
            self.legacy_message(now, wall_ms, conn, msg);
        } else {
            self.relay_message(now, wall_ms, conn, msg);
        }
    }

    /// Advances the relay's clock (never backwards).
    fn tick(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // ----- relay protocol --------------------------------------------------------------

    /// Makes `conn` a relay-protocol connection: settles its identity (from its metadata
    /// and the `client`, `token` and `nonce` of `first`, its first message, which loses
    /// them), indexes it for `direct`, sends `welcome` (then any identity error, then
    /// `moved` if the node has moved).
    fn become_relay(&mut self, conn: ConnId, proto: Proto, first: Option<&mut Value>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.proto = proto;
        let mut declaration = c.declared.take().map(|d| *d).unwrap_or_default();
        if let Some(Value::Object(map)) = first {
            declaration.take_from(map);
            if declaration.client.is_some() {
                c.seen = true;
            }
        }
        let (welcome, errors) = self.settle_identity(conn, declaration);
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (peer, ident, peer_indexed) = (c.peer_id.clone(), c.identity.clone(), c.peer_indexed);
        if peer_indexed {
            self.index(&peer, conn);
        }
        if ident != peer {
            self.index(&ident, conn);
        }
        self.send(conn, proto, &welcome);
        for (code, message) in errors {
            self.send_error(conn, code, &message, None);
        }
        if let Some(m) = self.moved.clone() {
            self.send(conn, proto, &m);
        }
    }

    fn index(&mut self, name: &Arc<str>, conn: ConnId) {
        let v = self.by_name.entry(name.clone()).or_default();
        if !v.contains(&conn) {
            v.push(conn);
        }
    }

    fn unindex(&mut self, name: &str, conn: ConnId) {
        if let Some(v) = self.by_name.get_mut(name) {
            v.retain(|c| *c != conn);
            if v.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    // ----- sending ---------------------------------------------------------------------

    fn send(&mut self, conn: ConnId, proto: Proto, p: &Arc<Payload>) {
        let message = match proto {
            Proto::Text => Outgoing::Text(p.json_arc()),
            _ => Outgoing::Object(p.clone()),
        };
        self.out.push_back(Output::Send { conn, message });
    }

    /// Sends a relay-protocol payload to `conn` in its protocol (never to legacy ones).
    fn send_to(&mut self, conn: ConnId, p: &Arc<Payload>) {
        if let Some(c) = self.conns.get(&conn)
            && matches!(c.proto, Proto::Object | Proto::Text)
        {
            let proto = c.proto;
            self.send(conn, proto, p);
        }
    }

    fn send_error(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        message: &str,
        reference: Option<&str>,
    ) {
        let message = truncate(message, MAX_ERROR_TEXT);
        let reference = reference.map(|r| truncate(r, MAX_ERROR_TEXT));
        tracing::debug!(conn = conn.0, %code, message, "request refused");
        self.count_error(code);
        self.send_to(conn, &error_payload(code, message, reference));
    }

    // ----- handoff ---------------------------------------------------------------------

    /// The write mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Switches between accepting writes and refusing them with `read_only`.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// Sends `{"op":"moved","peer_id","signaling","generation"}` to every relay-protocol
    /// client now, and to every relay client that appears later (after its `welcome`).
    /// Legacy clients get nothing (they only understand the seed's shapes).
    pub fn announce_moved(
        &mut self,
        peer_id: &str,
        signaling: &[SignalingEndpoint],
        generation: u64,
    ) {
        let p = self.signed_payload(ServerMessage::Moved {
            peer_id: peer_id.to_owned(),
            signaling: signaling.to_vec(),
            generation,
            sig: None,
        });
        let targets: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.proto, Proto::Object | Proto::Text))
            .map(|(id, _)| *id)
            .collect();
        let mut targets = targets;
        targets.sort();
        for t in targets {
            self.send_to(t, &p);
        }
        self.moved = Some(p);
    }
}

/// Longest `message` and `ref` of an `error` (they may quote client input).
const MAX_ERROR_TEXT: usize = 256;

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A string holding a JSON object with a string `op`: a relay request sent as text.
fn parse_op_object(s: &str) -> Option<Value> {
    if !s.trim_start().starts_with('{') {
        return None;
    }
    let v: Value = serde_json::from_str(s).ok()?;
    v.get("op").and_then(Value::as_str)?;
    Some(v)
}

fn error_payload(code: ErrorCode, message: &str, reference: Option<&str>) -> Arc<Payload> {
    Payload::of(&ServerMessage::Error {
        code,
        message: message.to_owned(),
        reference: reference.map(str::to_owned),
    })
}
