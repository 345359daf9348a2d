//! [`RoomLogs`]: every room's ordered history, the deterministic core each member applies the
//! replicated log to. No I/O, no clock, no openraft: the same commands in the same order give
//! the same rooms, the same `seq`s and the same snapshot bytes on every member.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::snapshot::{Opened, SnapshotError, open, seal};
use super::{Command, Reply, Seq};

/// One stored message, as every member holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Its position in the room: the room's head + 1 when it was applied.
    pub seq: Seq,
    /// The publisher's identity.
    pub from: String,
    /// The publisher's message id.
    pub id: String,
    /// When the proposing member accepted it (ms since the Unix epoch).
    pub ts: u64,
    /// The body.
    pub body: serde_json::Value,
}

/// One room: its messages in `seq` order and the index that deduplicates retries.
#[derive(Debug, Default, Clone)]
struct Room {
    /// Every message, oldest first; `messages[i].seq == i + 1` (nothing is evicted yet).
    messages: Vec<Message>,
    /// `(from, id)` → `seq` of every stored message: a retry gets the first `seq`.
    by_id: HashMap<(String, String), Seq>,
}

impl Room {
    /// The last `seq` handed out in this room (0 when empty).
    fn head(&self) -> Seq {
        self.messages.last().map_or(0, |m| m.seq)
    }
}

/// Every room's history: what the replicated log's entries produce when applied in order.
#[derive(Debug, Default, Clone)]
pub struct RoomLogs {
    /// Rooms by name; a `BTreeMap` so snapshots list rooms in one order on every member.
    rooms: BTreeMap<String, Room>,
}

/// The snapshot's JSON form: `{"rooms":{"name":[message, …], …}}`, messages in `seq` order.
#[derive(Deserialize)]
struct SnapshotBody {
    /// Each room's messages (the dedup index is rebuilt from them).
    rooms: BTreeMap<String, Vec<Message>>,
}

/// [`SnapshotBody`] borrowed from the state, so that writing a snapshot copies nothing.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    rooms: BTreeMap<&'a str, &'a [Message]>,
}

impl RoomLogs {
    /// An empty state: no rooms.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one committed command and returns its reply. Deterministic: the `seq` is the
    /// room's head + 1, or the first attempt's `seq` for a retried `(room, from, id)`.
    pub fn apply(&mut self, command: &Command) -> Reply {
        match command {
            Command::Publish {
                room,
                id,
                from,
                ts,
                body,
            } => {
                let r = self.rooms.entry(room.clone()).or_default();
                let key = (from.clone(), id.clone());
                if let Some(&seq) = r.by_id.get(&key) {
                    return Reply::Published {
                        seq,
                        duplicate: true,
                    };
                }
                let seq = r.head() + 1;
                r.messages.push(Message {
                    seq,
                    from: from.clone(),
                    id: id.clone(),
                    ts: *ts,
                    body: body.clone(),
                });
                r.by_id.insert(key, seq);
                Reply::Published {
                    seq,
                    duplicate: false,
                }
            }
        }
    }

    /// A room's messages, oldest first (empty for an unknown room).
    pub fn history(&self, room: &str) -> Vec<Message> {
        self.rooms
            .get(room)
            .map(|r| r.messages.clone())
            .unwrap_or_default()
    }

    /// A room's messages after `since` (their `seq` > `since`), oldest first, at most `limit`
    /// of them (all when `None`). Seqs are dense from 1, so this is a slice.
    pub fn history_after(&self, room: &str, since: Seq, limit: Option<usize>) -> Vec<Message> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        let start = usize::try_from(since)
            .unwrap_or(usize::MAX)
            .min(r.messages.len());
        let rest = &r.messages[start..];
        rest[..limit.unwrap_or(rest.len()).min(rest.len())].to_vec()
    }

    /// A room's head: the last `seq` handed out (0 for an unknown room).
    pub fn head(&self, room: &str) -> Seq {
        self.rooms.get(room).map_or(0, Room::head)
    }

    /// The names of the rooms, sorted.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms.keys().cloned().collect()
    }

    /// The snapshot's bytes: the same state gives the same bytes.
    ///
    /// # Errors
    /// Only if a body cannot be serialised (JSON values always can).
    pub fn to_snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let body = SnapshotBodyRef {
            rooms: self
                .rooms
                .iter()
                .map(|(name, r)| (name.as_str(), r.messages.as_slice()))
                .collect(),
        };
        seal(0, |buf| serde_json::to_writer(buf, &body)).map_err(SnapshotError::Json)
    }

    /// Reads a snapshot written by [`RoomLogs::to_snapshot`].
    ///
    /// # Errors
    /// Bytes that are not a snapshot, or a room whose `seq`s are not 1, 2, 3, … or whose
    /// `(from, id)` repeats.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let (Opened::Sealed(json) | Opened::Legacy(json)) = open(bytes)?;
        let body: SnapshotBody = serde_json::from_slice(json)?;
        let mut rooms = BTreeMap::new();
        for (name, messages) in body.rooms {
            let mut by_id = HashMap::with_capacity(messages.len());
            for (i, m) in messages.iter().enumerate() {
                if m.seq != i as u64 + 1 {
                    return Err(SnapshotError::Inconsistent {
                        room: name,
                        reason: "seqs are not 1, 2, 3, …",
                    });
                }
                if by_id
                    .insert((m.from.clone(), m.id.clone()), m.seq)
                    .is_some()
                {
                    return Err(SnapshotError::Inconsistent {
                        room: name,
                        reason: "a (from, id) is stored twice",
                    });
                }
            }
            rooms.insert(name, Room { messages, by_id });
        }
        Ok(Self { rooms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(room: &str, id: &str) -> Command {
        Command::Publish {
            room: room.into(),
            id: id.into(),
            from: "alice".into(),
            ts: 0,
            body: serde_json::json!(id),
        }
    }

    #[test]
    fn history_after_is_the_slice_after_since_bounded_by_limit() {
        let mut logs = RoomLogs::new();
        for i in 1..=10 {
            logs.apply(&publish("lobby", &format!("m{i}")));
        }
        let seqs = |v: Vec<Message>| v.into_iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(logs.history_after("lobby", 0, None)),
            (1..=10).collect::<Vec<_>>()
        );
        assert_eq!(seqs(logs.history_after("lobby", 7, None)), vec![8, 9, 10]);
        assert_eq!(seqs(logs.history_after("lobby", 2, Some(3))), vec![3, 4, 5]);
        assert_eq!(seqs(logs.history_after("lobby", 9, Some(5))), vec![10]);
        assert!(logs.history_after("lobby", 10, None).is_empty());
        assert!(logs.history_after("lobby", u64::MAX, Some(1)).is_empty());
        assert!(logs.history_after("lobby", 0, Some(0)).is_empty());
        assert!(logs.history_after("nowhere", 0, None).is_empty());
    }
}
