//! Successor authentication and zero-loss state transfer (`protocol/handoff.md`).
//!
//! Two sans-IO state machines, [`Predecessor`] (the old node) and [`Successor`] (the new
//! one), exchange [`Message`]s over a PeerJS DataConnection labelled [`HANDOFF_LABEL`]. They
//! never touch the relay, the network or the clock: the node's driver feeds them and acts on
//! their events (export/restore the relay, apply the tail, publish discovery, move clients).
//!
//! - [`auth`]: the mutual HMAC-SHA256 proofs.
//! - [`message`]: wire messages and their `json`/`binary` encodings.
//! - [`host`]: [`HandoffHost`], the one way in to a relay, and [`HostOps`], every operation
//!   the handoff does to it, written once.
//! - `snapshot`: [`PreparedSnapshot`], the snapshot's digests (hashed by the shell).
//! - [`driver`]: the async drivers over PeerJS DataConnections and a [`HandoffHost`];
//!   `transport` (encoding, `OHBF` fragments, a connection's reader/writer tasks) and
//!   `restore` ([`RestoreWorker`], the successor's restore thread) beside them.
//! - [`recovery`]: periodic backups and the successor's fallback when the predecessor died.
//! - [`backup`]: periodic snapshots for crash safety ([`BackupStore`], [`DirBackupStore`]).

pub mod auth;
pub mod backup;
pub mod driver;
pub mod host;
pub mod message;
mod predecessor;
pub mod recovery;
mod restore;
mod secret;
mod snapshot;
mod successor;
mod transport;

pub use backup::{Backup, BackupError, BackupKey, BackupStore, DirBackupStore};
pub use driver::{
    ConnectError, HandoffInbox, PredecessorHandle, SuccessorOutcome, run_successor,
    spawn_predecessor,
};
pub use host::{HandoffHost, HostError, HostOps, RelayFn, RelayStopped, SharedRelay};
pub use message::{HANDOFF_LABEL, HighWater, Message, RefuseCode, Sealed};
pub use predecessor::{ConnId, Predecessor, PredecessorEvent, PredecessorPhase, Transmit};
pub use recovery::{DEFAULT_GAP_MARGIN, Recovery, RecoverySource, recover, spawn_backups};
pub use restore::{RestoreError, RestoreWorker};
pub use secret::{MIN_SECRET_LEN, SECRET_ENV, Secret, SecretError};
pub use snapshot::PreparedSnapshot;
pub use successor::{
    GiveUpReason, Successor, SuccessorConfig, SuccessorEvent, SuccessorPhase, Transferred,
};
pub use transport::{Defragmenter, FrameError, FrameLink, HandoffConn, RAW_FRAME_MAX, to_values};

use sha2::{Digest, Sha256};
use std::time::Duration;

/// Predecessor settings (named limits; see `protocol/handoff.md`).
#[derive(Debug, Clone)]
pub struct HandoffConfig {
    /// Snapshot chunk size in bytes (default 255 KiB: a chunk and its header fit one
    /// 256 KiB DataConnection message on a `raw` connection).
    pub chunk_size: usize,
    /// Unacknowledged chunks in flight (default 32, 8 MiB: measured on loopback, 8 chunks
    /// in flight left the channel idle between acknowledgements).
    pub window: u32,
    /// Authentication attempts (`hello`s) admitted in a burst from one remote (a peer id
    /// on a DataConnection, a client address on the WebSocket path).
    pub auth_burst: f64,
    /// Sustained authentication attempts per second from one remote.
    pub auth_per_second: f64,
    /// Remotes whose attempt buckets are remembered (the least recently used is forgotten
    /// beyond this: memory stays bounded whatever the number of remotes).
    pub max_remotes: usize,
    /// Connections not yet authenticated, in all. Over it, the oldest one that did not show
    /// an authenticated `hello` is closed (a flood evicts itself, never a real successor).
    pub max_pending: usize,
    /// Connections not yet authenticated from one remote; more are closed at once.
    pub max_pending_per_remote: usize,
    /// A connection must authenticate within this time.
    pub auth_timeout: Duration,
    /// How long an interrupted session waits for its successor to resume.
    pub resume_timeout: Duration,
    /// Largest unacknowledged tail (bytes) before the session is aborted.
    pub max_tail_bytes: usize,
    /// Cut over once the snapshot is acknowledged and at most this many tail events are
    /// unacknowledged.
    pub cutover_tail_backlog: usize,
    /// Largest tail batch in bytes (events; base64 in the header makes the message ~4/3
    /// of this).
    pub tail_batch_bytes: usize,
    /// Fresh restarts allowed after a high-water mismatch.
    pub max_restarts: u32,
}

impl Default for HandoffConfig {
    fn default() -> Self {
        HandoffConfig {
            chunk_size: 255 * 1024,
            window: 32,
            auth_burst: 5.0,
            auth_per_second: 0.5,
            max_remotes: 1024,
            max_pending: 32,
            max_pending_per_remote: 4,
            auth_timeout: Duration::from_secs(5),
            resume_timeout: Duration::from_secs(10),
            max_tail_bytes: 256 << 20,
            cutover_tail_backlog: 1024,
            tail_batch_bytes: 128 * 1024,
            max_restarts: 2,
        }
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests;
