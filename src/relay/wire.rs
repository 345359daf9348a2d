//! The relay protocol's wire types, shared by the node and the Rust client API.
//!
//! Every message is a JSON-like object with an `"op"` tag (`protocol/relay.md`). The
//! node never builds its hot-path messages through these types (it serialises each
//! outgoing message once, by hand, and shares it across subscribers); clients use
//! them to encode requests and decode answers:
//!
//! ```
//! use ouroboros::relay::wire::{ClientMessage, ServerMessage};
//! let join = ClientMessage::Join { room: "lobby".into(), since: Some(3) };
//! assert_eq!(serde_json::to_string(&join).unwrap(), r#"{"op":"join","room":"lobby","since":3}"#);
//! let ack: ServerMessage = serde_json::from_str(r#"{"op":"ack","id":"m1","room":"lobby","seq":4}"#).unwrap();
//! assert!(matches!(ack, ServerMessage::Ack { seq: 4, .. }));
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The value of `protocol` in a DataConnection's metadata that declares the relay
/// protocol: such connections are greeted with `welcome` as soon as they open.
pub const PROTOCOL: &str = "ouroboros/1";

/// A request from a client to the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientMessage {
    /// Subscribe to a room; answered by `joined`, then stored messages with `seq > since`
    /// (none if `since` is absent), then live messages.
    Join {
        /// Room name.
        room: String,
        /// Replay stored messages after this sequence number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// Store and fan out a message; answered by `ack`.
    Publish {
        /// Room name.
        room: String,
        /// The client's message id (the idempotency key).
        id: String,
        /// Any JSON value.
        body: Value,
    },
    /// A page of stored messages, newest first, with `seq < before`.
    History {
        /// Room name.
        room: String,
        /// Only messages with a smaller sequence number (default: all).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// Page size (default 50, at most [`Limits::history_limit_max`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Unsubscribe from a room.
    Leave {
        /// Room name.
        room: String,
    },
    /// Relay `body` to another client of the node (by peer id or client name).
    Direct {
        /// Peer id or client name of the recipient.
        to: String,
        /// Any JSON value.
        body: Value,
    },
    /// Liveness check; answered by `pong`.
    Ping,
}

impl ClientMessage {
    /// The `op` tag of this message.
    pub fn op(&self) -> &'static str {
        match self {
            ClientMessage::Join { .. } => "join",
            ClientMessage::Publish { .. } => "publish",
            ClientMessage::History { .. } => "history",
            ClientMessage::Leave { .. } => "leave",
            ClientMessage::Direct { .. } => "direct",
            ClientMessage::Ping => "ping",
        }
    }
}

/// A stored message as delivered (`msg`) and as listed in `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsgRecord {
    /// Room name.
    pub room: String,
    /// Sequence number in the room (dense, increasing, never reused).
    pub seq: u64,
    /// Identity of the publisher (its client name, else its peer id).
    pub from: String,
    /// Milliseconds since the Unix epoch when the node stored it.
    pub ts: u64,
    /// The publisher's message id (`null` for messages from legacy clients).
    pub id: Option<String>,
    /// The published value.
    pub body: Value,
}

/// One signaling endpoint a client can register on: the discovery record's type, so a
/// `moved` notice and `ouroboros.json` can never disagree on its shape.
pub use crate::discovery::SignalingEndpoint;

/// The limits a node enforces, announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest accepted `body` (serialised as JSON), in bytes (`too_large`).
    pub max_message_bytes: usize,
    /// Sustained requests per second per connection (`rate_limited`).
    pub rate_per_sec: f64,
    /// Burst of requests admitted after a quiet period.
    pub rate_burst: f64,
    /// Rooms one connection may have joined at once (`too_many_rooms`).
    pub max_rooms_per_client: usize,
    /// Rooms the node holds in total (`room_limit`).
    pub max_rooms: usize,
    /// Connections the node accepts (`server_full`).
    pub max_clients: usize,
    /// Largest `limit` of a `history` request (`bad_limit`).
    pub history_limit_max: u32,
    /// Page size of a `history` request without `limit`.
    pub history_default_limit: u32,
    /// A `history` page stops growing beyond this many bytes (at least one message is sent).
    pub history_max_bytes: usize,
    /// Longest room name, in bytes (`bad_room`; names are `[A-Za-z0-9._:-]`, not starting with `.`).
    pub max_room_name: usize,
    /// Longest client name and message id, in bytes (`bad_request`).
    pub max_name_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            rate_per_sec: 200.0,
            rate_burst: 400.0,
            max_rooms_per_client: 64,
            max_rooms: 100_000,
            max_clients: 10_000,
            history_limit_max: 500,
            history_default_limit: 50,
            history_max_bytes: 1024 * 1024,
            max_room_name: 64,
            max_name_bytes: 128,
        }
    }
}

/// A message from the node to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerMessage {
    /// First message on a relay-protocol connection.
    Welcome {
        /// The node's peer id.
        node: String,
        /// The node's generation (increases by one per rotation).
        generation: u64,
        /// What the node enforces.
        limits: Limits,
        /// Set after a crash restore: what may be missing (see `protocol/handoff.md`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gap: Option<Value>,
        /// The identity the node serves this connection under, when it declared a name (the
        /// name, or what it got instead with `name_taken`) or the node binds names.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// The token that proves `client` on a later connection to any node of the ring
        /// (`metadata.token`, `?token=`, or `token` in the first message).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name_token: Option<String>,
        /// The client's `nonce`, echoed (covered by `sig`: this welcome is fresh).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
        /// The ring's signature (`discovery::signing`; absent from nodes without ring keys).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sig: Option<String>,
    },
    /// Answer to `join`: the room's newest sequence number (0 if empty).
    Joined {
        /// Room name.
        room: String,
        /// Newest sequence number.
        head: u64,
        /// Set when the `since` replay is one page that stops at this seq (more is stored
        /// after it): once the `msg` with this seq arrives, `join` again with
        /// `since` = this seq for the next page. Until the last page the connection gets no
        /// live messages of the room (they come in the later pages), so nothing is missed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        replay_to: Option<u64>,
    },
    /// A stored message, replayed or live.
    Msg(MsgRecord),
    /// Answer to `publish`: the message is stored under `seq`.
    Ack {
        /// The client's message id.
        id: String,
        /// Room name.
        room: String,
        /// Sequence number it was stored under.
        seq: u64,
    },
    /// Answer to `history`: newest first.
    History {
        /// Room name.
        room: String,
        /// Up to `limit` messages, newest first.
        messages: Vec<MsgRecord>,
        /// Present once messages were evicted: every `seq` below it is gone.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        evicted_before: Option<u64>,
    },
    /// Members (client identities) that joined or left a room.
    Presence {
        /// Room name.
        room: String,
        /// Identities that joined.
        joined: Vec<String>,
        /// Identities that left.
        left: Vec<String>,
    },
    /// A `direct` message from another client.
    Direct {
        /// Identity of the sender.
        from: String,
        /// The value it sent.
        body: Value,
    },
    /// Answer to `ping`.
    Pong,
    /// A request was refused; the connection stays usable.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// The refused request's `id` if it had one, else its `op` (or `null`).
        #[serde(rename = "ref")]
        reference: Option<String>,
    },
    /// The node hands over: reconnect to `peer_id` and resume with `since`.
    Moved {
        /// The successor's peer id.
        peer_id: String,
        /// Where the successor is registered.
        signaling: Vec<SignalingEndpoint>,
        /// The successor's generation.
        generation: u64,
        /// The ring's signature (`discovery::signing`; absent from nodes without ring keys).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sig: Option<String>,
    },
}

/// Why a request was refused (`error.code`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "&'static str")]
pub enum ErrorCode {
    /// Not an object, missing or mistyped field, bad id or client name.
    BadRequest,
    /// `op` is missing or not one of the documented ones.
    UnknownOp,
    /// Room name breaks the naming rule.
    BadRoom,
    /// `body` larger than `max_message_bytes`.
    TooLarge,
    /// Per-connection rate exceeded (retryable).
    RateLimited,
    /// The connection has joined `max_rooms_per_client` rooms.
    TooManyRooms,
    /// The node holds `max_rooms` rooms.
    RoomLimit,
    /// The node has `max_clients` connections (the connection is then closed).
    ServerFull,
    /// `history.limit` outside `1..=history_limit_max`.
    BadLimit,
    /// `leave` of a room the connection has not joined.
    NotJoined,
    /// `direct` to a peer that is not connected.
    UnknownPeer,
    /// The node is handing over and accepts no writes (retryable; expect `moved`).
    ReadOnly,
    /// The declared client name (or the peer id) is held by another connection, or has
    /// stored messages, and no valid `token` for it came along: the connection is served
    /// under another identity (`welcome.client`).
    NameTaken,
    /// A replicated ring could not commit the publish in time (no leader reachable, or no
    /// majority): it may still be stored. Retryable with the same `id`, here or on another
    /// node of the ring.
    Unavailable,
    /// A code this client does not know (never sent by the node).
    Unknown,
}

impl ErrorCode {
    /// Every code the node sends, in documentation order.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::BadRoom,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::TooManyRooms,
        ErrorCode::RoomLimit,
        ErrorCode::ServerFull,
        ErrorCode::BadLimit,
        ErrorCode::NotJoined,
        ErrorCode::UnknownPeer,
        ErrorCode::ReadOnly,
        ErrorCode::NameTaken,
        ErrorCode::Unavailable,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RoomLimit => "room_limit",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::BadLimit => "bad_limit",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::NameTaken => "name_taken",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// Whether the same request may succeed if sent again later unchanged.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::ReadOnly
                | ErrorCode::ServerFull
                | ErrorCode::Unavailable
        )
    }
}

impl From<String> for ErrorCode {
    fn from(s: String) -> Self {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Unknown)
    }
}

impl From<ErrorCode> for &'static str {
    fn from(c: ErrorCode) -> Self {
        c.as_str()
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let check = |m: ServerMessage, json: &str| {
            assert_eq!(serde_json::to_string(&m).unwrap(), json);
            assert_eq!(serde_json::from_str::<ServerMessage>(json).unwrap(), m);
        };
        check(ServerMessage::Pong, r#"{"op":"pong"}"#);
        check(
            ServerMessage::Error {
                code: ErrorCode::ReadOnly,
                message: "x".into(),
                reference: None,
            },
            r#"{"op":"error","code":"read_only","message":"x","ref":null}"#,
        );
        check(
            ServerMessage::Msg(MsgRecord {
                room: "r".into(),
                seq: 1,
                from: "a".into(),
                ts: 5,
                id: Some("i".into()),
                body: serde_json::json!({"t":1}),
            }),
            r#"{"op":"msg","room":"r","seq":1,"from":"a","ts":5,"id":"i","body":{"t":1}}"#,
        );
        let e: ServerMessage =
            serde_json::from_str(r#"{"op":"error","code":"new_thing","message":"","ref":"x"}"#)
                .unwrap();
        assert!(matches!(
            e,
            ServerMessage::Error {
                code: ErrorCode::Unknown,
                ..
            }
        ));
        let p: ClientMessage = serde_json::from_str(r#"{"op":"ping"}"#).unwrap();
        assert_eq!(p, ClientMessage::Ping);
    }
}
