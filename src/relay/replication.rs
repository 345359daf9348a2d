//! What a successor needs: a [`Snapshot`] of the whole store and the
//! [`ReplicationEvent`]s that follow it.

use serde::{Deserialize, Serialize};

use super::RelayError;
use super::decode::{SnapshotDecoder, SnapshotHeader};
use super::store::{StoredMessage, push_json_str};

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
    /// The head new rooms start from: 0, or raised by every crash-restore gap
    /// (`Relay::open_gap`) so seqs are never reused.
    #[serde(default)]
    pub seq_floor: u64,
    /// Every room with `head > 0`.
    pub rooms: Vec<RoomState>,
    /// Every stored message, in global store order.
    pub messages: Vec<StoredMessage>,
}

impl Snapshot {
    /// JSON encoding (the serde form, written directly: bodies are copied verbatim).
    /// [`SnapshotJson`] produces the same bytes piece by piece.
    pub fn to_json(&self) -> Vec<u8> {
        let mut s = String::with_capacity(self.message_bytes() + 256);
        s.push_str(&self.json_head());
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            m.write_json(&mut s);
        }
        s.push_str(JSON_TAIL);
        s.into_bytes()
    }

    /// Everything before the first message: `{"version":…,"rooms":[…],"messages":[`.
    fn json_head(&self) -> String {
        let mut s = String::new();
        s.push_str(r#"{"version":"#);
        s.push_str(&self.version.to_string());
        s.push_str(r#","node":"#);
        push_json_str(&mut s, &self.node);
        s.push_str(r#","generation":"#);
        s.push_str(&self.generation.to_string());
        s.push_str(r#","seq_floor":"#);
        s.push_str(&self.seq_floor.to_string());
        s.push_str(r#","rooms":"#);
        s.push_str(&serde_json::to_string(&self.rooms).expect("room states serialise"));
        s.push_str(r#","messages":["#);
        s
    }

    /// Decodes [`Snapshot::to_json`]'s output (with [`SnapshotDecoder`], in one piece).
    ///
    /// Strings are borrowed from `bytes` while parsing, and room names and publisher
    /// identities are interned (one shared allocation per distinct name), which makes a
    /// large snapshot decode several times faster than a plain serde decode and keeps the
    /// restored store as compact as one that was built by publishing.
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] for malformed JSON, a message body that is not valid JSON,
    /// or a missing field.
    pub fn from_json(bytes: &[u8]) -> Result<Snapshot, RelayError> {
        // Nothing taken until `finish`: it returns the header and every message.
        let mut d = SnapshotDecoder::new();
        d.feed(bytes)?;
        let (header, messages) = d.finish()?;
        let header = header.expect("finish yields the header when not taken");
        Ok(Snapshot::from_parts(header, messages))
    }

    /// The header and the messages.
    pub fn into_parts(self) -> (SnapshotHeader, Vec<StoredMessage>) {
        (
            SnapshotHeader {
                version: self.version,
                node: self.node,
                generation: self.generation,
                seq_floor: self.seq_floor,
                rooms: self.rooms,
            },
            self.messages,
        )
    }

    /// A snapshot of `header` and `messages` (in store order).
    pub fn from_parts(header: SnapshotHeader, messages: Vec<StoredMessage>) -> Snapshot {
        Snapshot {
            version: header.version,
            node: header.node,
            generation: header.generation,
            seq_floor: header.seq_floor,
            rooms: header.rooms,
            messages,
        }
    }

    /// Total size of the stored messages' serialised bodies and envelopes.
    pub fn message_bytes(&self) -> usize {
        self.messages.iter().map(|m| m.payload().json().len()).sum()
    }
}

/// What follows the last message.
const JSON_TAIL: &str = "]}";

/// A position in a [`SnapshotJson`] (from [`SnapshotJson::start`] or
/// [`SnapshotJson::write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JsonCursor {
    /// 0: the head; 1..=n: message n - 1 (with its leading `,`); n + 1: the tail.
    part: usize,
    /// Bytes of `part` already written.
    offset: usize,
}

/// [`Snapshot::to_json`]'s bytes, produced piece by piece from any position without ever
/// holding them all: a handoff hashes the snapshot, then sends each chunk as it is
/// written, instead of keeping a second copy of the store as one buffer. The messages
/// are shared with the relay (cheap to hold).
#[derive(Debug, Clone)]
pub struct SnapshotJson {
    head: String,
    messages: Vec<StoredMessage>,
    len: u64,
}

impl SnapshotJson {
    /// The JSON of `snapshot`.
    pub fn new(snapshot: Snapshot) -> SnapshotJson {
        let head = snapshot.json_head();
        let messages = snapshot.messages;
        let len = head.len()
            + messages
                .iter()
                .map(|m| 1 + m.serde_form_tail().len())
                .sum::<usize>()
            + messages.len().saturating_sub(1)
            + JSON_TAIL.len();
        SnapshotJson {
            head,
            messages,
            len: len as u64,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it has no bytes (never: the head is always there).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte.
    pub fn start(&self) -> JsonCursor {
        JsonCursor::default()
    }

    /// The bytes of part `p`, in up to three pieces.
    fn part(&self, p: usize) -> [&[u8]; 3] {
        let n = self.messages.len();
        match p {
            0 => [self.head.as_bytes(), b"", b""],
            p if p <= n => [
                if p > 1 { b"," } else { b"" },
                b"{",
                self.messages[p - 1].serde_form_tail().as_bytes(),
            ],
            p if p == n + 1 => [JSON_TAIL.as_bytes(), b"", b""],
            _ => [b"", b"", b""],
        }
    }

    /// Appends up to `max` bytes from `at` to `out`; returns where the next byte is.
    /// Nothing is appended at the end.
    pub fn write(&self, at: JsonCursor, max: usize, out: &mut Vec<u8>) -> JsonCursor {
        let mut c = at;
        let mut remaining = max;
        while remaining > 0 && c.part <= self.messages.len() + 1 {
            let pieces = self.part(c.part);
            let part_len: usize = pieces.iter().map(|p| p.len()).sum();
            if c.offset >= part_len {
                c.part += 1;
                c.offset = 0;
                continue;
            }
            let mut skip = c.offset;
            for piece in pieces {
                if skip >= piece.len() {
                    skip -= piece.len();
                    continue;
                }
                let take = (piece.len() - skip).min(remaining);
                out.extend_from_slice(&piece[skip..skip + take]);
                skip = 0;
                remaining -= take;
                c.offset += take;
                if remaining == 0 {
                    break;
                }
            }
        }
        c
    }

    /// All of it (what [`Snapshot::to_json`] returns).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len as usize);
        self.write(self.start(), usize::MAX, &mut out);
        out
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
