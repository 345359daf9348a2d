//! What a successor needs: a [`Snapshot`] of the whole store and the
//! [`ReplicationEvent`]s that follow it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::store::Room;
use super::store::StoredMessage;
use super::{Relay, RelayError};
use crate::json::push_json_str;

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

/// Everything in a snapshot except its messages (what must be known before they are
/// restored). [`Snapshot::to_json`] writes it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Peer id of the node that took it.
    pub node: String,
    /// Generation of the node that took it.
    pub generation: u64,
    /// The head new rooms start from.
    pub seq_floor: u64,
    /// Every room with `head > 0`.
    pub rooms: Vec<RoomState>,
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

impl Relay {
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
            .filter(|r| r.head > self.seq_floor || !r.log.is_empty())
            .map(|r| (r.name.to_string(), r.head))
            .collect()
    }

    /// The whole store (cheap: messages are shared, not copied).
    pub fn export_snapshot(&self) -> Snapshot {
        let mut rooms: Vec<RoomState> = self
            .rooms
            .values()
            // Rooms at or below the floor with nothing stored need no listing: a room made
            // again starts above the floor (freed rooms raised it to their heads).
            .filter(|r| r.head > self.seq_floor || !r.log.is_empty())
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
                    if r.dedup_remove(&e.msg) {
                        super::identity::count_publisher(
                            &mut self.publishers,
                            e.msg.publisher_arc(),
                            false,
                        );
                    }
                    freed += e.cost();
                    n += 1;
                }
                r.evicted_before = before;
                r.head = r.head.max(before - 1);
                if r.is_empty() {
                    r.idle_since = Some(self.now);
                }
                let old = r.bytes;
                r.bytes -= freed;
                let new = r.bytes;
                let name = r.name.clone();
                super::budget::resize(&mut self.by_size, &name, old, new);
                self.bytes -= freed;
                self.messages -= n;
                self.m.evicted_messages += n as u64;
                self.m.evicted_bytes += freed as u64;
                if let Some(q) = &mut self.replication {
                    q.push_back(ReplicationEvent::Evicted { room, before });
                }
                // The primary evicts fairly across rooms, not in store order: sweep the
                // store-order slots of what went.
                self.compact_order();
                Ok(Applied::Applied)
            }
        }
    }
}
