//! The replicated ring's foundation: a relay log replicated with Raft (issue 16).
//!
//! Today a node is alone with its rooms: a runner that dies takes everything since the last
//! backup with it. Here each publish is an entry of a Raft log; it is acknowledged only once
//! a majority of the members have it, so the loss of any one member loses nothing that was
//! acknowledged. The wire format and the rules are in `protocol/replication.md`.
//!
//! # Layout
//!
//! - `mod.rs` (this file): the [`TypeConfig`], the log entry ([`Command`]), the reply
//!   ([`Reply`]) and [`ReplicaError`].
//! - `state.rs`: [`RoomLogs`], the deterministic core every member applies entries to (no I/O,
//!   no clock, no openraft): it assigns each room's `seq`, deduplicates retries, evicts by the
//!   ring's [`Retention`] (itself an entry: [`Command::Retain`]); its snapshot encoding.
//! - `snapshot.rs`: the sealed snapshot (a SHA-256 over the state's JSON), [`SnapshotBytes`]
//!   (openraft's snapshot data, shared without copies), the `snapshot` call's chunk envelope
//!   (raw bytes after a JSON header) and [`ChunkCheck`], which refuses a corrupt or truncated
//!   snapshot before it is installed.
//! - `refusals.rs`: [`RefusalLimit`], the per-address limit on refused member calls (`429`).
//! - `store.rs`: [`LogStore`] and [`StateMachine`], openraft's storage traits, in memory.
//! - `network.rs`: the [`Transport`] trait (three RPCs between members), [`Network`] (openraft's
//!   network on top of any `Transport`) and [`InProcessTransport`], the in-memory one the tests
//!   use, with `kill`, `isolate` and `heal`.
//! - `http.rs`: the members' calls between processes, signed with the ring's secret:
//!   [`HttpTransport`] (the sending side: HTTP `POST`s, or a [`MemberLink`] when the node gives
//!   it one) and [`ReplicaService`] (the receiving side, whatever carried the call).
//! - `addr.rs`: [`MemberAddr`], a member's routes (its base URL and its WebRTC routes), and the
//!   `ID=route` contacts.
//! - `link.rs`: member links, sans-IO: the `ORM1` frames, [`Reassembler`], [`MemberLink`] and
//!   [`LinkPolicy`] (the node's `member_link` owns the connections).
//! - `member.rs`: [`Replica`], the API the rest of the crate uses: start, `initialize`,
//!   `publish`, `add_learner`, `change_membership`, `step_aside`, `history`, `metrics`.
//!
//! # Design
//!
//! - **The log is the order.** A [`Command::Publish`] carries the room, the publisher's
//!   identity, its message id and the body, never a `seq`. The `seq` is assigned when the entry
//!   is *applied* (the room's head + 1, in [`RoomLogs::apply`]); every member applies the same
//!   entries in the same order, so every member assigns the same `seq`. A leader change cannot
//!   produce two messages at one `seq`: only committed entries are applied.
//! - **Retries are idempotent.** A publish whose `(room, from, id)` is already applied is not
//!   stored again; its reply carries the first `seq` (as the single node's relay does,
//!   `protocol/relay.md`). The check happens at apply time too, so a retry that raced the first
//!   attempt through two leaders is still stored once.
//! - **Acknowledged means committed on a majority.** [`Replica::publish`] returns only after
//!   openraft's `client_write` returns, i.e. after the entry is committed (on a majority of the
//!   voters) and applied on the leader. A member that is not the leader refuses with
//!   [`ReplicaError::ForwardToLeader`], naming the leader it knows of; forwarding is the
//!   caller's job (later: the node's).
//! - **Memory only.** Members are ephemeral runners; durability is the majority, not a disk.
//!   The log and the state machine live in memory; snapshots serialise the state machine
//!   (`state.rs`) so that a new member catches up by snapshot plus the log after it, even when
//!   the log before it was purged.
//! - **Rotation is a membership change**: a successor joins as a learner, catches up, is
//!   promoted to voter; leadership moves away from the oldest member, which is then removed.
//!   openraft 0.9 has no leader transfer call, and a voter asked to campaign while the others
//!   still hear from the leader is refused (leader lease): [`Replica::step_aside`] makes the
//!   leaving leader stop its heartbeats and never campaign again, so the others elect one of
//!   themselves after one election timeout.
//!
//! # Why openraft 0.9
//!
//! `cargo info openraft` (December 2026) lists 0.9.25 as the newest release and
//! 0.10.0-alpha.37 as the newest pre-release: 0.10 has no stable release yet, and an alpha's
//! API changes between releases. Everything this module needs is in 0.9: storage v2 (the
//! `storage-v2` feature unseals `RaftLogStorage`/`RaftStateMachine`), learners,
//! joint-consensus membership changes, chunked snapshots, metrics with `wait()`. What 0.10
//! adds that we would use: `trigger().transfer_leader(to)` (here: [`Replica::step_aside`], at
//! the cost of one election timeout) and pre-vote (here a member that was cut off may disrupt the
//! leader once when it comes back, with its higher term). Moving to 0.10 once it is stable
//! touches `store.rs`, `network.rs` and `member.rs`; `state.rs` and the entry format stay.
//!
//! # Not built yet
//!
//! A faster failover than openraft 0.9's leader lease allows (a failure detector that starts an
//! election), and a run on real GitHub runners. See `protocol/replication.md`.

#![warn(missing_docs)]

mod addr;
mod http;
mod link;
mod member;
mod network;
mod refusals;
mod snapshot;
mod state;
mod store;
#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use addr::{MemberAddr, RTC_SCHEME, RtcRoute};
pub use http::{
    Answer, Call, CallError, CallFailure, Checked, HistoryRequest, HttpTransport, JoinRequest,
    MAX_BODY_BYTES, MAX_CLOCK_SKEW, OPERATOR, Outcome, PATH_PREFIX, PublishRequest, RemoveRequest,
    ReplicaService, RpcKey, Status, status, system_now_ms,
};
pub use link::{
    CallCounts, Envelope, LINK_LABEL, LINK_WS_PATH, LinkError, LinkFrameError, LinkPath,
    LinkPolicy, MemberLink, Reassembler, ReceivedCall, Whole, encode_answer, encode_request,
};
pub use member::{ChangeMembers, MAX_ID_BYTES, MAX_ROOM_BYTES, Replica, ReplicaConfig};
pub use network::{InProcessTransport, Network, NetworkLink, RpcError, Transport};
pub use refusals::{MAX_ADDRESSES, REFUSAL_BURST, REFUSAL_RATE, RefusalLimit};
pub use snapshot::{
    ChunkCheck, SnapshotBytes, SnapshotError, decode_chunk, encode_chunk, open as open_snapshot,
};
pub use state::{MESSAGE_OVERHEAD, Message, Retention, RoomLogs};
pub use store::{Applied, LogStore, StateMachine};

/// A member's id in the Raft group (openraft's `NodeId`).
pub type NodeId = u64;

/// What a member is reachable at ([`MemberAddr`]: its HTTP URL and WebRTC routes); opaque to
/// openraft, the transport's business.
pub type NodeAddr = MemberAddr;

/// A publish's `seq`: its position in its room, from 1, dense, never reused.
pub type Seq = u64;

openraft::declare_raft_types!(
    /// The openraft types of the replicated relay log.
    pub TypeConfig:
        D = Command,
        R = Reply,
        NodeId = NodeId,
        Node = NodeAddr,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotBytes,
        AsyncRuntime = openraft::TokioRuntime,
);

/// One entry of the replicated log: a relay command. Every member applies it in log order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Append a message to a room. The `seq` is not in the entry: it is assigned when the
    /// entry is applied (the room's head + 1), the same on every member.
    Publish {
        /// The room (the relay's room name rules; checked before proposing).
        room: String,
        /// The publisher's message id: with `from` and `room` it deduplicates retries.
        id: String,
        /// The publisher's identity (the relay's `from`).
        from: String,
        /// When the proposing member accepted it, in ms since the Unix epoch (the relay's
        /// `ts`). In the entry, so every member stores the same value.
        ts: u64,
        /// The message body, any JSON value.
        body: serde_json::Value,
    },
    /// Set the ring's retention ([`Retention`]): from this entry on, every member keeps at
    /// most this much history, evicting the same messages in the same order. Proposed when a
    /// node bootstraps the ring, from its relay's limits.
    Retain {
        /// Bytes of messages all rooms together keep (`None`: no limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_bytes: Option<u64>,
        /// Messages one room keeps (`None`: no limit).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_messages: Option<u64>,
    },
}

/// What applying an entry produced (openraft's `R`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// A publish: its `seq`; `duplicate` when `(room, from, id)` was already stored and this
    /// is the first attempt's `seq`.
    Published {
        /// The message's `seq` in its room.
        seq: Seq,
        /// The entry was a retry of a stored message; nothing was appended.
        duplicate: bool,
    },
    /// A retention was applied; `evicted` messages went at once.
    Retained {
        /// How many messages the new limits evicted.
        evicted: u64,
    },
    /// An entry openraft writes itself (a blank entry of a new leader, a membership change).
    Internal,
}

/// An error of the replicated log's API.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// This member is not the leader; send the request to `leader` (if one is known).
    #[error("not the leader; forward to {leader:?}")]
    ForwardToLeader {
        /// The leader this member knows of, if any.
        leader: Option<NodeId>,
        /// Its routes, if known.
        addr: Option<NodeAddr>,
    },
    /// A field of the request breaks a rule (`field` names it); never retried.
    #[error("bad request: {field}: {reason}")]
    BadRequest {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The request could not be committed (no quorum reachable, membership change in
    /// progress, …); it may or may not be applied later. Retry with the same `id`.
    #[error("not committed: {0}")]
    NotCommitted(String),
    /// The member is shut down or its Raft core stopped.
    #[error("replica stopped: {0}")]
    Stopped(String),
    /// A configuration openraft refuses (e.g. election timeouts not above the heartbeat).
    #[error("bad configuration: {0}")]
    Config(String),
    /// A membership change was refused (e.g. another one is in progress, or the member to
    /// promote is not a learner).
    #[error("membership change refused: {0}")]
    Membership(String),
    /// The cluster was already initialised, or the membership given is not valid.
    #[error("initialize refused: {0}")]
    Initialize(String),
    /// Waiting on the member's metrics timed out or was interrupted.
    #[error("wait: {0}")]
    Wait(String),
    /// An entry was applied but its reply was not the kind expected (a broken invariant,
    /// reported instead of panicking).
    #[error("unexpected reply: {0:?}")]
    UnexpectedReply(Reply),
}

impl ReplicaError {
    /// Whether retrying the same request (same `id`) may succeed, here or at the leader.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ReplicaError::ForwardToLeader { .. } | ReplicaError::NotCommitted(_)
        )
    }
}
