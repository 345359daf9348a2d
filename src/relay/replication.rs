//! What a successor needs: a [`Snapshot`] of the whole store and the
//! [`ReplicationEvent`]s that follow it.

use serde::{Deserialize, Serialize};

use super::store::StoredMessage;

/// Version of the [`Snapshot`] format.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Per-room state that is not in its messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomState {
    /// Room name.
    pub name: String,
    /// Newest sequence number ever assigned (never decreases).
    pub head: u64,
    /// Every seq below this was evicted.
    pub evicted_before: u64,
}

/// Everything a successor must hold to continue the store: rooms with heads and
/// eviction marks, and every stored message in global store order (oldest first, the
/// order eviction follows). The deduplication map is carried by the messages
/// themselves (`from`, `id`) and rebuilt on restore; the legacy store is the legacy
/// room.
///
/// Encode with `serde_json` ([`Snapshot::to_json`]): message bodies are embedded as raw
/// JSON, not re-parsed into trees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Peer id of the node that took it.
    pub node: String,
    /// Generation of the node that took it.
    pub generation: u64,
    /// Every room with `head > 0`.
    pub rooms: Vec<RoomState>,
    /// Every stored message, in global store order.
    pub messages: Vec<StoredMessage>,
}

impl Snapshot {
    /// JSON encoding.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a snapshot always serialises")
    }

    /// Decodes [`Snapshot::to_json`]'s output.
    ///
    /// # Errors
    /// Malformed JSON or a message body that is not valid JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Total size of the stored messages' serialised bodies and envelopes.
    pub fn message_bytes(&self) -> usize {
        self.messages.iter().map(|m| m.payload().json().len()).sum()
    }
}

/// A state change the successor must replicate, in the order the primary made it.
///
/// Serialised externally tagged: `{"stored":{...}}`, `{"evicted":{"room","before"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicationEvent {
    /// A message was stored (by `publish` or a legacy client).
    Stored(StoredMessage),
    /// Every message of `room` with `seq < before` was evicted.
    Evicted {
        /// Room name.
        room: String,
        /// New eviction mark.
        before: u64,
    },
}

/// What [`super::Relay::apply_replication`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The event changed the store.
    Applied,
    /// Already reflected (duplicate or older seq / mark): ignored.
    Ignored,
}
