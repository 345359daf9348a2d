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
//! publish deduplication) is the `client` string in its metadata or in its first
//! message, else its peer id.
//!
//! # Handoff
//!
//! [`Relay::export_snapshot`], [`Relay::restore`], [`Relay::set_replication`],
//! [`Relay::poll_replication`], [`Relay::apply_replication`], [`Relay::high_water`],
//! [`Relay::set_mode`] and [`Relay::announce_moved`] are what `handoff` builds on.

mod decode;
mod legacy;
mod replication;
mod store;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::rate::TokenBucket;

pub use decode::{SnapshotDecoder, SnapshotHeader, StreamingRestore};
pub use replication::{
    Applied, JsonCursor, ReplicationEvent, RoomState, SNAPSHOT_VERSION, Snapshot, SnapshotJson,
};
pub use store::{ENTRY_OVERHEAD, Payload, StoredMessage};
use store::{Entry, Room, push_json_str};
use wire::{ClientMessage, ErrorCode, Limits, ServerMessage, SignalingEndpoint};

/// Identifies one connection; assigned by the driver, unique while it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

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
    /// the oldest messages of all rooms are evicted.
    pub memory_budget: usize,
    /// The room that backs the legacy (seed) protocol.
    pub legacy_room: String,
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
        }
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
    /// text as is for `json` (and `raw`) serialization, `payload.value()` encoded for
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

/// Counters and gauges for `/metrics` and `/status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Open connections (all protocols, including undetermined ones).
    pub clients: usize,
    /// Connections speaking the legacy protocol.
    pub legacy_clients: usize,
    /// Rooms held.
    pub rooms: usize,
    /// Messages stored.
    pub messages: usize,
    /// Bytes charged against the budget.
    pub bytes_stored: usize,
    /// The budget.
    pub memory_budget: usize,
    /// Messages evicted since start.
    pub evicted_messages: u64,
    /// Bytes evicted since start.
    pub evicted_bytes: u64,
    /// Messages stored by clients since start (not counting replication).
    pub published: u64,
    /// Publishes acknowledged again instead of stored (repeated id).
    pub deduplicated: u64,
    /// `msg` deliveries (one per recipient, including legacy broadcasts).
    pub delivered: u64,
    /// `direct` messages relayed (one per recipient).
    pub direct: u64,
    /// Connections refused or closed for `max_clients`.
    pub refused: u64,
    /// Errors by code (sent to relay clients, or silently counted for legacy clients).
    pub errors: BTreeMap<&'static str, u64>,
    /// Whether the node accepts writes.
    pub primary: bool,
}

impl Metrics {
    /// Prometheus text exposition (names `ouroboros_relay_*`), for `/metrics`.
    pub fn to_prometheus(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(s, "# HELP ouroboros_relay_{name} {help}");
            let _ = writeln!(s, "# TYPE ouroboros_relay_{name} {kind}");
            let _ = writeln!(s, "ouroboros_relay_{name} {value}");
        };
        let g = "gauge";
        let c = "counter";
        metric(
            "clients",
            g,
            "Open relay connections (all protocols).",
            self.clients as f64,
        );
        metric(
            "legacy_clients",
            g,
            "Connections speaking the seed's protocol.",
            self.legacy_clients as f64,
        );
        metric("rooms", g, "Rooms held.", self.rooms as f64);
        metric("messages", g, "Messages stored.", self.messages as f64);
        metric(
            "bytes_stored",
            g,
            "Bytes charged against the memory budget.",
            self.bytes_stored as f64,
        );
        metric(
            "memory_budget_bytes",
            g,
            "The memory budget.",
            self.memory_budget as f64,
        );
        metric(
            "primary",
            g,
            "1 if the node accepts writes.",
            f64::from(u8::from(self.primary)),
        );
        metric(
            "evicted_messages_total",
            c,
            "Messages evicted by the memory budget.",
            self.evicted_messages as f64,
        );
        metric(
            "evicted_bytes_total",
            c,
            "Bytes evicted by the memory budget.",
            self.evicted_bytes as f64,
        );
        metric(
            "published_total",
            c,
            "Messages stored from clients.",
            self.published as f64,
        );
        metric(
            "deduplicated_total",
            c,
            "Publishes acknowledged again (repeated id).",
            self.deduplicated as f64,
        );
        metric(
            "delivered_total",
            c,
            "Message deliveries (one per recipient).",
            self.delivered as f64,
        );
        metric(
            "direct_total",
            c,
            "Direct messages relayed (one per recipient).",
            self.direct as f64,
        );
        metric(
            "refused_total",
            c,
            "Connections refused at the client limit.",
            self.refused as f64,
        );
        let _ = writeln!(
            s,
            "# HELP ouroboros_relay_errors_total Refused requests by error code."
        );
        let _ = writeln!(s, "# TYPE ouroboros_relay_errors_total counter");
        for (code, n) in &self.errors {
            let _ = writeln!(s, "ouroboros_relay_errors_total{{code=\"{code}\"}} {n}");
        }
        s
    }
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
    /// Global store order (room, seq), oldest first; entries whose message is already
    /// gone (evicted by replication) are skipped when they reach the front.
    order: VecDeque<(Arc<str>, u64)>,
    /// Peer id and identity → relay-protocol connections, for `direct`.
    by_name: HashMap<Arc<str>, Vec<ConnId>>,
    legacy_conns: BTreeSet<ConnId>,
    legacy_room: Arc<str>,
    out: VecDeque<Output>,
    replication: Option<VecDeque<ReplicationEvent>>,
    welcome: Arc<Payload>,
    /// The `gap` notice carried by `welcome` (see [`Relay::set_gap`]).
    gap: Option<Value>,
    pong: Arc<Payload>,
    moved: Option<Arc<Payload>>,
    bytes: usize,
    messages: usize,
    /// The head a new room starts from (raised by [`Relay::open_gap`]; 0 normally).
    seq_floor: u64,
    m: Metrics,
    errors: [u64; ErrorCode::ALL.len()],
}

fn error_index(code: ErrorCode) -> usize {
    ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0)
}

/// A refusal: code and message, sent as `error` to relay clients.
type Refusal = (ErrorCode, String);

fn refuse<T>(code: ErrorCode, message: impl Into<String>) -> Result<T, Refusal> {
    Err((code, message.into()))
}

impl Relay {
    /// An empty relay in [`Mode::Primary`].
    pub fn new(config: RelayConfig, _now: Instant) -> Relay {
        let legacy_room: Arc<str> = config.legacy_room.as_str().into();
        let mut r = Relay {
            welcome: Payload::new(String::new()),
            gap: None,
            pong: Payload::of(&ServerMessage::Pong),
            config,
            mode: Mode::Primary,
            conns: HashMap::new(),
            rooms: HashMap::new(),
            order: VecDeque::new(),
            by_name: HashMap::new(),
            legacy_conns: BTreeSet::new(),
            legacy_room,
            out: VecDeque::new(),
            replication: None,
            moved: None,
            bytes: 0,
            messages: 0,
            seq_floor: 0,
            m: Metrics::default(),
            errors: [0; ErrorCode::ALL.len()],
        };
        r.set_gap(None);
        r
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Sets (or clears) the `gap` notice carried by every later `welcome` (after a
    /// crash restore: what may be missing).
    pub fn set_gap(&mut self, gap: Option<Value>) {
        self.welcome = Payload::of(&ServerMessage::Welcome {
            node: self.config.node.clone(),
            generation: self.config.generation,
            limits: self.config.limits.clone(),
            gap: gap.clone(),
        });
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
        let declared_name = info
            .metadata
            .get("client")
            .and_then(Value::as_str)
            .filter(|n| self.valid_name(n));
        let identity: Arc<str> = declared_name.map_or_else(|| peer_id.clone(), Into::into);
        let limits = &self.config.limits;
        let c = Conn {
            peer_id,
            identity,
            named: declared_name.is_some(),
            seen: false,
            proto: Proto::Undetermined,
            rooms: Vec::new(),
            bucket: TokenBucket::new(limits.rate_burst, limits.rate_per_sec, now),
        };
        self.conns.insert(conn, c);
        if declared {
            self.become_relay(conn, Proto::Object);
            let bad_name = info.metadata.get("client").is_some() && declared_name.is_none();
            if bad_name {
                self.send_error(
                    conn,
                    ErrorCode::BadRequest,
                    "metadata.client must be a non-empty printable string; using the peer id",
                    None,
                );
            }
        }
    }

    /// A DataConnection closed (idempotent; unknown ids are ignored).
    pub fn disconnect(&mut self, _now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        for room in &c.rooms {
            self.remove_member(room, conn, &c.identity);
        }
        self.legacy_conns.remove(&conn);
        if matches!(c.proto, Proto::Object | Proto::Text) {
            self.unindex(&c.peer_id, conn);
            if c.identity != c.peer_id {
                self.unindex(&c.identity, conn);
            }
        }
    }

    /// One decoded message from `conn`. `wall_ms` (ms since the Unix epoch) stamps
    /// stored messages; `now` drives rate limits.
    pub fn handle_message(&mut self, now: Instant, wall_ms: u64, conn: ConnId, msg: Value) {
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
                        self.become_relay(conn, Proto::Text);
                    }
                    None => {
                        if let Some(c) = self.conns.get_mut(&conn) {
                            c.proto = Proto::Legacy;
                        }
                        self.legacy_conns.insert(conn);
                    }
                },
                _ => self.become_relay(conn, Proto::Object),
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

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    // ----- relay protocol --------------------------------------------------------------

    fn become_relay(&mut self, conn: ConnId, proto: Proto) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.proto = proto;
        let (peer, ident) = (c.peer_id.clone(), c.identity.clone());
        self.index(&peer, conn);
        if ident != peer {
            self.index(&ident, conn);
        }
        let w = self.welcome.clone();
        self.send(conn, proto, &w);
        if let Some(m) = self.moved.clone() {
            self.send(conn, proto, &m);
        }
    }

    fn relay_message(&mut self, now: Instant, wall_ms: u64, conn: ConnId, msg: Value) {
        let msg = match msg {
            Value::String(s) => match serde_json::from_str::<Value>(&s) {
                Ok(v) => v,
                Err(e) => {
                    return self.send_error(
                        conn,
                        ErrorCode::BadRequest,
                        &format!("not a JSON request: {e}"),
                        None,
                    );
                }
            },
            v => v,
        };
        let Value::Object(mut map) = msg else {
            return self.send_error(conn, ErrorCode::BadRequest, "expected a JSON object", None);
        };
        let reference = map
            .get("id")
            .and_then(Value::as_str)
            .or_else(|| map.get("op").and_then(Value::as_str))
            .map(str::to_owned);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.bucket.try_take(now, 1.0) {
            let r = reference.as_deref();
            return self.send_error(
                conn,
                ErrorCode::RateLimited,
                "rate limit exceeded; slow down",
                r,
            );
        }
        if !c.seen {
            c.seen = true;
            if let Some(name) = map.remove("client") {
                self.declare_identity(conn, name, reference.as_deref());
            }
        }
        let op_known = matches!(
            map.get("op").and_then(Value::as_str),
            Some("join" | "publish" | "history" | "leave" | "direct" | "ping")
        );
        if !op_known {
            let what = match map.get("op") {
                Some(Value::String(s)) => format!("unknown op {s:?}"),
                Some(_) => "op must be a string".to_owned(),
                None => "missing op".to_owned(),
            };
            return self.send_error(conn, ErrorCode::UnknownOp, &what, reference.as_deref());
        }
        let req = match serde_json::from_value::<ClientMessage>(Value::Object(std::mem::take(
            &mut map,
        ))) {
            Ok(r) => r,
            Err(e) => {
                return self.send_error(
                    conn,
                    ErrorCode::BadRequest,
                    &e.to_string(),
                    reference.as_deref(),
                );
            }
        };
        let result = match req {
            ClientMessage::Join { room, since } => self.join(conn, &room, since),
            ClientMessage::Publish { room, id, body } => {
                self.publish(conn, wall_ms, &room, &id, &body)
            }
            ClientMessage::History {
                room,
                before,
                limit,
            } => self.history(conn, &room, before, limit),
            ClientMessage::Leave { room } => self.leave(conn, &room),
            ClientMessage::Direct { to, body } => self.direct(conn, &to, &body),
            ClientMessage::Ping => {
                let p = self.pong.clone();
                self.send_to(conn, &p);
                Ok(())
            }
        };
        if let Err((code, message)) = result {
            self.send_error(conn, code, &message, reference.as_deref());
        }
    }

    fn declare_identity(&mut self, conn: ConnId, name: Value, reference: Option<&str>) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.named {
            return;
        }
        let ok = name
            .as_str()
            .filter(|n| self.valid_name(n))
            .map(Arc::<str>::from);
        let Some(name) = ok else {
            return self.send_error(
                conn,
                ErrorCode::BadRequest,
                "client must be a non-empty printable string; using the peer id",
                reference,
            );
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let old = std::mem::replace(&mut c.identity, name.clone());
        c.named = true;
        let peer = c.peer_id.clone();
        if old != peer {
            self.unindex(&old, conn);
        }
        if name != peer {
            self.index(&name, conn);
        }
    }

    fn valid_name(&self, n: &str) -> bool {
        !n.is_empty()
            && n.len() <= self.config.limits.max_name_bytes
            && !n.chars().any(char::is_control)
    }

    fn check_room(&self, room: &str) -> Result<(), Refusal> {
        let max = self.config.limits.max_room_name;
        let ok = !room.is_empty()
            && room.len() <= max
            && !room.starts_with('.')
            && room
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(())
        } else {
            refuse(
                ErrorCode::BadRoom,
                format!(
                    "room names are 1-{max} bytes of A-Z a-z 0-9 . _ : - and do not start with '.'"
                ),
            )
        }
    }

    /// The room, created if the room limit allows.
    fn room_or_create(&mut self, room: &str) -> Result<&mut Room, Refusal> {
        if !self.rooms.contains_key(room) {
            if self.rooms.len() >= self.config.limits.max_rooms {
                return refuse(
                    ErrorCode::RoomLimit,
                    "the node holds its maximum number of rooms",
                );
            }
            let name: Arc<str> = room.into();
            self.rooms
                .insert(name.clone(), Room::new(name, self.seq_floor));
        }
        Ok(self.rooms.get_mut(room).expect("inserted above"))
    }

    fn join(&mut self, conn: ConnId, room: &str, since: Option<u64>) -> Result<(), Refusal> {
        self.check_room(room)?;
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let (proto, identity) = (c.proto, c.identity.clone());
        let already = c.rooms.iter().any(|r| &**r == room);
        if !already && c.rooms.len() >= self.config.limits.max_rooms_per_client {
            return refuse(
                ErrorCode::TooManyRooms,
                format!(
                    "at most {} rooms per connection",
                    self.config.limits.max_rooms_per_client
                ),
            );
        }
        let r = self.room_or_create(room)?;
        let name = r.name.clone();
        let mut announce = None;
        if !already {
            r.members.insert(conn);
            let n = r.presence.entry(identity.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                announce = Some(presence_payload(room, std::slice::from_ref(&identity), &[]));
            }
        }
        let joined = Payload::of(&ServerMessage::Joined {
            room: room.to_owned(),
            head: r.head,
        });
        let mut present: Vec<Arc<str>> = r.presence.keys().cloned().collect();
        present.sort();
        let members: Vec<ConnId> = r.members.iter().copied().filter(|m| *m != conn).collect();
        let replay: Vec<Arc<Payload>> = match since {
            None => Vec::new(),
            Some(s) => r
                .log
                .range(r.index_after(s)..)
                .map(|e| e.msg.payload().clone())
                .collect(),
        };
        if !already && let Some(c) = self.conns.get_mut(&conn) {
            c.rooms.push(name);
        }
        self.send(conn, proto, &joined);
        self.send(conn, proto, &presence_payload(room, &present, &[]));
        if let Some(p) = announce {
            for m in members {
                self.send_to(m, &p);
            }
        }
        self.m.delivered += replay.len() as u64;
        for p in &replay {
            self.send(conn, proto, p);
        }
        Ok(())
    }

    fn leave(&mut self, conn: ConnId, room: &str) -> Result<(), Refusal> {
        self.check_room(room)?;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let Some(pos) = c.rooms.iter().position(|r| &**r == room) else {
            return refuse(ErrorCode::NotJoined, format!("not joined to {room}"));
        };
        c.rooms.swap_remove(pos);
        let identity = c.identity.clone();
        self.remove_member(room, conn, &identity);
        Ok(())
    }

    fn remove_member(&mut self, room: &str, conn: ConnId, identity: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.members.remove(&conn);
        let gone = match r.presence.get_mut(identity) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                r.presence.remove(identity);
                true
            }
            None => false,
        };
        let members: Vec<ConnId> = r.members.iter().copied().collect();
        if r.head == self.seq_floor && r.log.is_empty() && r.members.is_empty() {
            // Never-used rooms cost nothing to forget; rooms with a head stay forever
            // (recreating one would reuse sequence numbers).
            self.rooms.remove(room);
        }
        if gone {
            let p = presence_payload(room, &[], std::slice::from_ref(identity));
            for m in members {
                self.send_to(m, &p);
            }
        }
    }

    fn publish(
        &mut self,
        conn: ConnId,
        wall_ms: u64,
        room: &str,
        id: &str,
        body: &Value,
    ) -> Result<(), Refusal> {
        self.check_room(room)?;
        if id.is_empty() || id.len() > self.config.limits.max_name_bytes {
            return refuse(
                ErrorCode::BadRequest,
                format!("id must be 1-{} bytes", self.config.limits.max_name_bytes),
            );
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let (proto, from) = (c.proto, c.identity.clone());
        if let Some(seq) = self.rooms.get(room).and_then(|r| r.dedup_lookup(&from, id)) {
            // Already stored: acknowledging again is a read, allowed while draining.
            self.m.deduplicated += 1;
            self.send(conn, proto, &ack_payload(id, room, seq));
            return Ok(());
        }
        if self.mode == Mode::Draining {
            return refuse(
                ErrorCode::ReadOnly,
                "the node is handing over; retry after moved",
            );
        }
        let body = serde_json::to_string(body).expect("a JSON value always serialises");
        let max = self.config.limits.max_message_bytes;
        if body.len() > max {
            return refuse(
                ErrorCode::TooLarge,
                format!("body is {} bytes; the limit is {max}", body.len()),
            );
        }
        let r = self.room_or_create(room)?;
        let seq = r.head + 1;
        let msg = StoredMessage::new(r.name.clone(), seq, from, wall_ms, Some(id.into()), &body);
        self.m.published += 1;
        self.send(conn, proto, &ack_payload(id, room, seq));
        self.store(msg);
        Ok(())
    }

    /// Stores a message made here (publish or legacy), fans it out, replicates it and
    /// enforces the budget.
    fn store(&mut self, msg: StoredMessage) {
        if let Some(q) = &mut self.replication {
            q.push_back(ReplicationEvent::Stored(msg.clone()));
        }
        let entry = self.insert(msg);
        self.fan_out(&entry);
        self.enforce_budget();
    }

    /// Appends a message to its room's log (the caller checked `seq == head + 1`).
    fn insert(&mut self, msg: StoredMessage) -> Entry {
        let legacy = (*msg.room_arc() == self.legacy_room)
            .then(|| Arc::<str>::from(legacy::view(msg.body_json(), msg.from(), msg.ts())));
        let entry = Entry { msg, legacy };
        let room_name = entry.msg.room_arc().clone();
        let floor = self.seq_floor;
        let r = self
            .rooms
            .entry(room_name.clone())
            .or_insert_with(|| Room::new(room_name.clone(), floor));
        debug_assert!(entry.msg.seq() > r.head);
        r.head = entry.msg.seq();
        if r.log.is_empty() {
            r.evicted_before = r.evicted_before.max(entry.msg.seq());
        }
        r.dedup_insert(&entry.msg);
        r.log.push_back(entry.clone());
        self.bytes += entry.cost();
        self.messages += 1;
        self.order.push_back((r.name.clone(), entry.msg.seq()));
        entry
    }

    fn fan_out(&mut self, entry: &Entry) {
        let Some(r) = self.rooms.get(entry.msg.room()) else {
            return;
        };
        let mut n = 0;
        for m in &r.members {
            if let Some(c) = self.conns.get(m) {
                let message = match c.proto {
                    Proto::Text => Outgoing::Text(entry.msg.payload().json_arc()),
                    _ => Outgoing::Object(entry.msg.payload().clone()),
                };
                self.out.push_back(Output::Send { conn: *m, message });
                n += 1;
            }
        }
        if let Some(text) = &entry.legacy {
            for m in &self.legacy_conns {
                self.out.push_back(Output::Send {
                    conn: *m,
                    message: Outgoing::Text(text.clone()),
                });
                n += 1;
            }
        }
        self.m.delivered += n;
    }

    /// Evicts the globally oldest messages while over budget (never the last one).
    fn enforce_budget(&mut self) {
        while self.bytes > self.config.memory_budget && self.messages > 1 {
            let Some((room, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            if r.first_seq() != Some(seq) {
                continue; // already evicted through replication
            }
            let e = r.log.pop_front().expect("first_seq is Some");
            r.dedup_remove(&e.msg);
            r.evicted_before = seq + 1;
            let cost = e.cost();
            self.bytes -= cost;
            self.messages -= 1;
            self.m.evicted_messages += 1;
            self.m.evicted_bytes += cost as u64;
            if let Some(q) = &mut self.replication {
                match q.back_mut() {
                    Some(ReplicationEvent::Evicted { room: last, before }) if **last == *room => {
                        *before = seq + 1;
                    }
                    _ => q.push_back(ReplicationEvent::Evicted {
                        room: room.to_string(),
                        before: seq + 1,
                    }),
                }
            }
        }
    }

    fn history(
        &mut self,
        conn: ConnId,
        room: &str,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(), Refusal> {
        self.check_room(room)?;
        let lim = &self.config.limits;
        let limit = limit.unwrap_or(lim.history_default_limit);
        if limit == 0 || limit > lim.history_limit_max {
            return refuse(
                ErrorCode::BadLimit,
                format!("limit must be 1-{}", lim.history_limit_max),
            );
        }
        let max_bytes = lim.history_max_bytes;
        let mut s = String::from(r#"{"op":"history","room":"#);
        push_json_str(&mut s, room);
        s.push_str(r#","messages":["#);
        let mut evicted_before = None;
        if let Some(r) = self.rooms.get(room) {
            let end = r.index_after(before.unwrap_or(u64::MAX).saturating_sub(1));
            for (count, e) in r.log.range(..end).rev().enumerate() {
                let json = e.msg.payload().json();
                if count == limit as usize || (count > 0 && s.len() + json.len() > max_bytes) {
                    break;
                }
                if count > 0 {
                    s.push(',');
                }
                s.push_str(json);
            }
            if r.evicted_before > 1 {
                evicted_before = Some(r.evicted_before);
            }
        }
        s.push(']');
        if let Some(eb) = evicted_before {
            s.push_str(r#","evicted_before":"#);
            s.push_str(&eb.to_string());
        }
        s.push('}');
        self.send_to(conn, &Payload::new(s));
        Ok(())
    }

    fn direct(&mut self, conn: ConnId, to: &str, body: &Value) -> Result<(), Refusal> {
        let body = serde_json::to_string(body).expect("a JSON value always serialises");
        let max = self.config.limits.max_message_bytes;
        if body.len() > max {
            return refuse(
                ErrorCode::TooLarge,
                format!("body is {} bytes; the limit is {max}", body.len()),
            );
        }
        let targets: Vec<ConnId> = self.by_name.get(to).cloned().unwrap_or_default();
        if targets.is_empty() {
            return refuse(
                ErrorCode::UnknownPeer,
                format!("no client {to:?} is connected"),
            );
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let mut s = String::from(r#"{"op":"direct","from":"#);
        push_json_str(&mut s, &c.identity);
        s.push_str(r#","body":"#);
        s.push_str(&body);
        s.push('}');
        let p = Payload::new(s);
        self.m.direct += targets.len() as u64;
        for t in targets {
            self.send_to(t, &p);
        }
        Ok(())
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

    // ----- legacy protocol -------------------------------------------------------------

    fn legacy_message(&mut self, now: Instant, wall_ms: u64, conn: ConnId, msg: Value) {
        let Value::String(s) = msg else {
            tracing::debug!(conn = conn.0, "legacy client sent a non-string: ignored");
            return self.count_error(ErrorCode::BadRequest);
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.bucket.try_take(now, 1.0) {
            return self.count_error(ErrorCode::RateLimited);
        }
        let from = c.identity.clone();
        c.seen = true;
        match legacy::parse(&s) {
            legacy::LegacyRequest::Ping => self.out.push_back(Output::Send {
                conn,
                message: Outgoing::Text("pong".into()),
            }),
            legacy::LegacyRequest::Ignored => {}
            legacy::LegacyRequest::Invalid => {
                tracing::debug!(
                    conn = conn.0,
                    "legacy message failed the shape check: ignored"
                );
                self.count_error(ErrorCode::BadRequest);
            }
            legacy::LegacyRequest::Page(n) => {
                let mut page = String::from("[");
                if let Some(r) = self.rooms.get(&self.legacy_room) {
                    let range = legacy::page_range(r.log.len(), n);
                    for (i, e) in r.log.range(range).rev().enumerate() {
                        if i > 0 {
                            page.push(',');
                        }
                        page.push_str(e.legacy.as_deref().unwrap_or("null"));
                    }
                }
                page.push(']');
                self.out.push_back(Output::Send {
                    conn,
                    message: Outgoing::Text(page.into()),
                });
            }
            legacy::LegacyRequest::Store(body) => {
                if self.mode == Mode::Draining {
                    return self.count_error(ErrorCode::ReadOnly);
                }
                if body.len() > self.config.limits.max_message_bytes {
                    return self.count_error(ErrorCode::TooLarge);
                }
                let room = self.legacy_room.clone();
                let head = self.rooms.get(&room).map_or(self.seq_floor, |r| r.head);
                let msg = StoredMessage::new(room, head + 1, from, wall_ms, None, &body);
                self.m.published += 1;
                self.store(msg);
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

    fn count_error(&mut self, code: ErrorCode) {
        self.errors[error_index(code)] += 1;
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
        let p = Payload::of(&ServerMessage::Moved {
            peer_id: peer_id.to_owned(),
            signaling: signaling.to_vec(),
            generation,
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

    /// Enables replication and returns the snapshot it follows, in one step: the
    /// events [`Relay::poll_replication`] yields from now on are exactly what happens
    /// after this snapshot. The predecessor's answer to `SnapshotNeeded`.
    pub fn start_replication(&mut self) -> Snapshot {
        self.set_replication(true);
        self.export_snapshot()
    }

    /// Starts (`true`) or stops queuing [`ReplicationEvent`]s. Take the snapshot in the
    /// same step as enabling it: events then describe exactly what follows the snapshot.
    /// While enabled, drain [`Relay::poll_replication`] after every call.
    pub fn set_replication(&mut self, enabled: bool) {
        self.replication = enabled.then(VecDeque::new);
    }

    /// The next replication event, oldest first.
    pub fn poll_replication(&mut self) -> Option<ReplicationEvent> {
        self.replication.as_mut()?.pop_front()
    }

    /// Number of queued replication events (for back-pressure).
    pub fn replication_backlog(&self) -> usize {
        self.replication.as_ref().map_or(0, VecDeque::len)
    }

    /// Room → head (newest seq) for every room that ever stored a message.
    pub fn high_water(&self) -> BTreeMap<String, u64> {
        self.rooms
            .values()
            .filter(|r| r.head > self.seq_floor)
            .map(|r| (r.name.to_string(), r.head))
            .collect()
    }

    /// The whole store (cheap: messages are shared, not copied).
    pub fn export_snapshot(&self) -> Snapshot {
        let mut rooms: Vec<RoomState> = self
            .rooms
            .values()
            .filter(|r| r.head > self.seq_floor)
            .map(|r| RoomState {
                name: r.name.to_string(),
                head: r.head,
                evicted_before: r.evicted_before,
            })
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        // `order` lists every room's messages in seq order, like the room's log: walk each
        // log with a cursor instead of searching it for every message (this runs with the
        // relay held).
        let mut cursors: HashMap<&str, (&Room, usize)> = HashMap::with_capacity(self.rooms.len());
        let mut messages = Vec::with_capacity(self.order.len());
        for (name, seq) in &self.order {
            let (room, at) = match cursors.get_mut(name.as_ref()) {
                Some(c) => c,
                None => match self.rooms.get(name) {
                    Some(r) => cursors.entry(name).or_insert((r, 0)),
                    None => continue,
                },
            };
            while room.log.get(*at).is_some_and(|e| e.msg.seq() < *seq) {
                *at += 1;
            }
            if let Some(e) = room.log.get(*at).filter(|e| e.msg.seq() == *seq) {
                messages.push(e.msg.clone());
                *at += 1;
            }
        }
        Snapshot {
            version: SNAPSHOT_VERSION,
            node: self.config.node.clone(),
            generation: self.config.generation,
            seq_floor: self.seq_floor,
            rooms,
            messages,
        }
    }

    /// A relay holding `snapshot`'s store (in [`Mode::Primary`]; set [`Mode::Draining`]
    /// until the handoff is confirmed). The budget of `config` applies. [`Restorer`] does
    /// the same step by step (while the snapshot is still arriving).
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] if a room's messages do not increase, exceed its head,
    /// precede its eviction mark, or skip seqs (allowed only once a crash-restore gap
    /// was opened in the ring, `seq_floor > 0`), or a message names an unlisted room.
    pub fn restore(
        config: RelayConfig,
        snapshot: Snapshot,
        now: Instant,
    ) -> Result<Relay, RelayError> {
        let (header, messages) = snapshot.into_parts();
        let mut r = Restorer::new(config, header, now)?;
        for m in messages {
            r.push(m)?;
        }
        r.finish()
    }

    /// After a crash restore from a backup that may predate what the lost node
    /// acknowledged: moves every room's head, and the head new rooms start from, forward
    /// by `margin`, so no sequence number the lost node may have handed out is ever
    /// reused and clients resuming with `since` up to `margin` beyond the backup miss
    /// nothing new. Returns each used room's skipped range `(first, last)` (for the
    /// `welcome` gap notice, [`Relay::set_gap`]). Call it right after [`Relay::restore`],
    /// before enabling replication; the floor travels in later snapshots.
    pub fn open_gap(&mut self, margin: u64) -> BTreeMap<String, (u64, u64)> {
        debug_assert!(self.replication.is_none(), "open_gap before replication");
        let old_floor = self.seq_floor;
        self.seq_floor = self.seq_floor.saturating_add(margin);
        let mut skipped = BTreeMap::new();
        for r in self.rooms.values_mut() {
            let old = r.head;
            r.head = r.head.saturating_add(margin);
            if r.log.is_empty() {
                r.evicted_before = r.head + 1;
            }
            if old > old_floor {
                skipped.insert(r.name.to_string(), (old + 1, r.head));
            }
        }
        skipped
    }

    /// Applies one event from the primary (idempotent: a seq at or below the room's head,
    /// or an eviction mark already passed, is ignored). Stored messages are fanned out
    /// to local members and legacy clients like live ones.
    ///
    /// # Errors
    /// [`RelayError::Gap`] if a message skips sequence numbers (the store is unchanged).
    pub fn apply_replication(&mut self, event: ReplicationEvent) -> Result<Applied, RelayError> {
        match event {
            ReplicationEvent::Stored(m) => {
                let head = self.rooms.get(m.room()).map_or(self.seq_floor, |r| r.head);
                if m.seq() <= head {
                    return Ok(Applied::Ignored);
                }
                if m.seq() != head + 1 {
                    return Err(RelayError::Gap {
                        room: m.room().to_owned(),
                        expected: head + 1,
                        got: m.seq(),
                    });
                }
                if let Some(q) = &mut self.replication {
                    q.push_back(ReplicationEvent::Stored(m.clone()));
                }
                let entry = self.insert(m);
                self.fan_out(&entry);
                self.enforce_budget();
                Ok(Applied::Applied)
            }
            ReplicationEvent::Evicted { room, before } => {
                let Some(r) = self.rooms.get_mut(room.as_str()) else {
                    // Nothing stored here for it; remember the mark so seqs continue.
                    if before > 1 {
                        let name: Arc<str> = room.as_str().into();
                        let mut nr = Room::new(name.clone(), self.seq_floor);
                        nr.head = nr.head.max(before - 1);
                        nr.evicted_before = before;
                        self.rooms.insert(name, nr);
                        return Ok(Applied::Applied);
                    }
                    return Ok(Applied::Ignored);
                };
                if before <= r.evicted_before {
                    return Ok(Applied::Ignored);
                }
                let mut freed = 0;
                let mut n = 0;
                while r.first_seq().is_some_and(|s| s < before) {
                    let e = r.log.pop_front().expect("first_seq is Some");
                    r.dedup_remove(&e.msg);
                    freed += e.cost();
                    n += 1;
                }
                r.evicted_before = before;
                r.head = r.head.max(before - 1);
                self.bytes -= freed;
                self.messages -= n;
                self.m.evicted_messages += n as u64;
                self.m.evicted_bytes += freed as u64;
                if let Some(q) = &mut self.replication {
                    q.push_back(ReplicationEvent::Evicted { room, before });
                }
                // The primary evicts globally oldest first, so what it evicted sits at
                // the front of the store order here too: drop those slots.
                while let Some((room, seq)) = self.order.front() {
                    if self.rooms.get(room).and_then(|r| r.get(*seq)).is_some() {
                        break;
                    }
                    self.order.pop_front();
                }
                Ok(Applied::Applied)
            }
        }
    }

    // ----- observability ---------------------------------------------------------------

    /// Current counters and gauges.
    pub fn metrics(&self) -> Metrics {
        let mut m = self.m.clone();
        m.clients = self.conns.len();
        m.legacy_clients = self.legacy_conns.len();
        m.rooms = self.rooms.len();
        m.messages = self.messages;
        m.bytes_stored = self.bytes;
        m.memory_budget = self.config.memory_budget;
        m.primary = self.mode == Mode::Primary;
        m.errors = ErrorCode::ALL
            .iter()
            .zip(self.errors)
            .map(|(c, n)| (c.as_str(), n))
            .collect();
        m
    }

    /// Room → (head, evicted_before, stored messages, members), for `/status`.
    pub fn room_stats(&self) -> BTreeMap<String, RoomStats> {
        self.rooms
            .values()
            .map(|r| {
                (
                    r.name.to_string(),
                    RoomStats {
                        head: r.head,
                        evicted_before: r.evicted_before,
                        messages: r.log.len(),
                        members: r.members.len(),
                    },
                )
            })
            .collect()
    }
}

/// One room's figures for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RoomStats {
    /// Newest seq.
    pub head: u64,
    /// Every seq below this was evicted.
    pub evicted_before: u64,
    /// Messages stored.
    pub messages: usize,
    /// Subscribed connections.
    pub members: usize,
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

fn ack_payload(id: &str, room: &str, seq: u64) -> Arc<Payload> {
    let mut s = String::from(r#"{"op":"ack","id":"#);
    push_json_str(&mut s, id);
    s.push_str(r#","room":"#);
    push_json_str(&mut s, room);
    s.push_str(r#","seq":"#);
    s.push_str(&seq.to_string());
    s.push('}');
    Payload::new(s)
}

fn presence_payload(room: &str, joined: &[Arc<str>], left: &[Arc<str>]) -> Arc<Payload> {
    let mut s = String::from(r#"{"op":"presence","room":"#);
    push_json_str(&mut s, room);
    for (key, list) in [(r#","joined":["#, joined), (r#"],"left":["#, left)] {
        s.push_str(key);
        for (i, n) in list.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            push_json_str(&mut s, n);
        }
    }
    s.push_str("]}");
    Payload::new(s)
}

/// [`Relay::restore`] step by step: the header first, then the messages in snapshot
/// order, then [`finish`](Restorer::finish). Each message is checked as it comes.
#[derive(Debug)]
pub struct Restorer {
    relay: Relay,
    heads: HashMap<String, u64>,
    holes_allowed: bool,
}

impl Restorer {
    /// Starts a relay with `header`'s rooms (no messages yet).
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] for an unknown version or an eviction mark outside the
    /// room's range.
    pub fn new(
        config: RelayConfig,
        header: SnapshotHeader,
        now: Instant,
    ) -> Result<Restorer, RelayError> {
        let bad = |m: String| Err(RelayError::Snapshot(m));
        let mut r = Relay::new(config, now);
        if header.version != SNAPSHOT_VERSION {
            return bad(format!("unknown version {}", header.version));
        }
        r.seq_floor = header.seq_floor;
        let mut heads: HashMap<String, u64> = HashMap::new();
        for rs in header.rooms {
            if rs.evicted_before == 0 || rs.evicted_before > rs.head.saturating_add(1) {
                return bad(format!(
                    "room {}: evicted_before {} outside 1..={}",
                    rs.name,
                    rs.evicted_before,
                    rs.head.saturating_add(1)
                ));
            }
            let name: Arc<str> = rs.name.as_str().into();
            let mut room = Room::new(name.clone(), 0);
            room.head = rs.evicted_before - 1;
            room.evicted_before = rs.evicted_before;
            r.rooms.insert(name, room);
            heads.insert(rs.name, rs.head);
        }
        Ok(Restorer {
            holes_allowed: header.seq_floor > 0,
            relay: r,
            heads,
        })
    }

    /// Adds the next message.
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] if it names an unlisted room or its seq does not follow
    /// the room's previous one (or exceeds the room's head).
    pub fn push(&mut self, m: StoredMessage) -> Result<(), RelayError> {
        let Some(room) = self.relay.rooms.get(m.room()) else {
            return Err(RelayError::Snapshot(format!(
                "message for unlisted room {}",
                m.room()
            )));
        };
        let head = self.heads.get(m.room()).copied().unwrap_or(0);
        let next_ok = if self.holes_allowed {
            m.seq() > room.head
        } else {
            m.seq() == room.head + 1
        };
        if !next_ok || m.seq() > head {
            return Err(RelayError::Snapshot(format!(
                "room {}: seq {} after {} (head {head})",
                m.room(),
                m.seq(),
                room.head
            )));
        }
        self.relay.insert(m);
        Ok(())
    }

    /// The restored relay (budget enforced).
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] if a room's messages end before its head (without a gap
    /// in the ring).
    pub fn finish(self) -> Result<Relay, RelayError> {
        let mut r = self.relay;
        for (name, head) in self.heads {
            if let Some(room) = r.rooms.get_mut(name.as_str()) {
                if room.head != head && !room.log.is_empty() && !self.holes_allowed {
                    return Err(RelayError::Snapshot(format!(
                        "room {name}: messages end at {} but head is {head}",
                        room.head
                    )));
                }
                room.head = head;
            }
        }
        r.enforce_budget();
        Ok(r)
    }
}
