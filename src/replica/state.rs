//! [`RoomLogs`]: every room's ordered history, the deterministic core each member applies the
//! replicated log to. No I/O, no clock, no openraft: the same commands in the same order give
//! the same rooms, the same `seq`s, the same evictions and the same snapshot bytes on every
//! member.
//!
//! # Retention
//! What a member keeps is bounded by the ring's [`Retention`], which is itself an entry of the
//! log ([`Command::Retain`]): every member applies the same limits at the same log index, so
//! every member evicts the same messages in the same order. Eviction is the relay's
//! (`relay/budget.rs`): over `max_bytes`, the oldest message of the room holding the most bytes
//! goes first (ties: the greatest room name); over `max_messages`, the room's oldest. An evicted
//! message leaves the room's head where it is (seqs are never reused) and its `(from, id)`
//! leaves the dedup index (a retry of it is stored again under a new `seq`, as on a single
//! node).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize};

use super::snapshot::{Opened, SnapshotError, open, seal};
use super::{Command, Reply, Seq};

/// What every stored message is charged beyond its `from`, `id` and JSON body, as the relay
/// charges its own entries (`relay::ENTRY_OVERHEAD`).
pub const MESSAGE_OVERHEAD: u64 = 160;

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

impl Message {
    /// What keeping it costs against [`Retention::max_bytes`]: `from`, `id`, the body's
    /// compact JSON, plus [`MESSAGE_OVERHEAD`]. A function of the entry alone.
    pub fn charge(&self) -> u64 {
        let mut counter = ByteCounter(0);
        // Writing a JSON value to a counter cannot fail.
        let _ = serde_json::to_writer(&mut counter, &self.body);
        self.from.len() as u64 + self.id.len() as u64 + counter.0 + MESSAGE_OVERHEAD
    }
}

/// Counts what is written to it.
struct ByteCounter(u64);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How much history the members keep: the ring's setting, applied through the log
/// ([`Command::Retain`]). `None`: no limit (a ring never told otherwise keeps everything).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// Bytes of messages (each charged [`Message::charge`]) all rooms together keep; over it,
    /// the oldest message of the largest room is evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Messages one room keeps; over it, the room's oldest is evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<u64>,
}

/// A kept message and its charge.
#[derive(Debug, Clone)]
struct Kept {
    message: Message,
    charge: u64,
}

/// One room: its kept messages in `seq` order, its head and the index that deduplicates
/// retries of the kept messages.
#[derive(Debug, Default, Clone)]
struct Room {
    /// The kept messages, oldest first; their seqs are consecutive and the last is `head`.
    messages: VecDeque<Kept>,
    /// The last `seq` handed out in this room (it stays when its message is evicted).
    head: Seq,
    /// The sum of the kept messages' charges.
    bytes: u64,
    /// `(from, id)` → `seq` of every kept message: a retry gets the first `seq`.
    by_id: HashMap<(String, String), Seq>,
}

impl Room {
    /// The first kept `seq` (`head + 1` when nothing is kept): every `seq` below it is gone.
    fn evicted_before(&self) -> Seq {
        self.messages
            .front()
            .map_or(self.head + 1, |k| k.message.seq)
    }
}

/// Every room's history: what the replicated log's entries produce when applied in order.
#[derive(Debug, Default, Clone)]
pub struct RoomLogs {
    /// Rooms by name; a `BTreeMap` so snapshots list rooms in one order on every member.
    /// Rooms are never forgotten (their head keeps seqs from being reused).
    rooms: BTreeMap<String, Room>,
    /// The ring's retention, as last applied.
    retention: Retention,
    /// The sum of every room's `bytes`.
    bytes: u64,
    /// `(bytes, name)` of every room that keeps a message: the largest is the last.
    by_size: BTreeSet<(u64, String)>,
}

/// The snapshot's JSON (format 2, inside the sealed envelope):
/// `{"retention":{…},"rooms":{"name":{"head":N,"messages":[message, …]},…}}`.
#[derive(Deserialize)]
struct SnapshotBody {
    #[serde(default)]
    retention: Retention,
    rooms: BTreeMap<String, SnapshotRoom>,
}

/// One room in [`SnapshotBody`].
#[derive(Deserialize)]
struct SnapshotRoom {
    head: Seq,
    messages: Vec<Message>,
}

/// The first format's JSON (bare, unsealed): every message of each room, seqs from 1.
#[derive(Deserialize)]
struct LegacyBody {
    rooms: BTreeMap<String, Vec<Message>>,
}

/// [`SnapshotBody`] borrowed from the state, so that writing a snapshot copies nothing.
#[derive(Serialize)]
struct SnapshotBodyRef<'a> {
    retention: Retention,
    rooms: BTreeMap<&'a str, SnapshotRoomRef<'a>>,
}

#[derive(Serialize)]
struct SnapshotRoomRef<'a> {
    head: Seq,
    messages: KeptSeq<'a>,
}

/// Serialises the kept messages as a JSON array of messages.
struct KeptSeq<'a>(&'a VecDeque<Kept>);

impl Serialize for KeptSeq<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for k in self.0 {
            seq.serialize_element(&k.message)?;
        }
        seq.end()
    }
}

impl RoomLogs {
    /// An empty state: no rooms, no retention limit.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one committed command and returns its reply. Deterministic: the `seq` is the
    /// room's head + 1, or the first attempt's `seq` for a retried `(room, from, id)` still
    /// kept; evictions follow from the retention in force.
    pub fn apply(&mut self, command: &Command) -> Reply {
        match command {
            Command::Publish {
                room,
                id,
                from,
                ts,
                body,
            } => {
                let key = (from.clone(), id.clone());
                if let Some(&seq) = self.rooms.get(room).and_then(|r| r.by_id.get(&key)) {
                    return Reply::Published {
                        seq,
                        duplicate: true,
                    };
                }
                let message = Message {
                    seq: 0,
                    from: from.clone(),
                    id: id.clone(),
                    ts: *ts,
                    body: body.clone(),
                };
                let seq = self.push(room, message);
                self.enforce(Some(room));
                Reply::Published {
                    seq,
                    duplicate: false,
                }
            }
            Command::Retain {
                max_bytes,
                max_messages,
            } => {
                self.retention = Retention {
                    max_bytes: *max_bytes,
                    max_messages: *max_messages,
                };
                let before = self.kept();
                self.enforce(None);
                Reply::Retained {
                    evicted: before - self.kept(),
                }
            }
        }
    }

    /// Appends `message` to `room` at its head + 1; returns that `seq`.
    fn push(&mut self, room: &str, mut message: Message) -> Seq {
        let r = self.rooms.entry(room.to_owned()).or_default();
        let charge = message.charge();
        message.seq = r.head + 1;
        r.head = message.seq;
        r.by_id
            .insert((message.from.clone(), message.id.clone()), message.seq);
        let old = r.bytes;
        r.bytes += charge;
        let new = r.bytes;
        let seq = message.seq;
        r.messages.push_back(Kept { message, charge });
        self.bytes += charge;
        self.resized(room, old, new);
        seq
    }

    /// Keeps `by_size` in step with a room's bytes going from `old` to `new`.
    fn resized(&mut self, room: &str, old: u64, new: u64) {
        if old > 0 {
            self.by_size.remove(&(old, room.to_owned()));
        }
        if new > 0 {
            self.by_size.insert((new, room.to_owned()));
        }
    }

    /// Evicts the oldest kept message of `room`, if any.
    fn evict_oldest(&mut self, room: &str) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        let Some(k) = r.messages.pop_front() else {
            return false;
        };
        let key = (k.message.from, k.message.id);
        if r.by_id.get(&key) == Some(&k.message.seq) {
            r.by_id.remove(&key);
        }
        let old = r.bytes;
        r.bytes -= k.charge;
        let new = r.bytes;
        self.bytes -= k.charge;
        self.resized(room, old, new);
        true
    }

    /// Applies the retention: the per-room count to `room` (every room, in name order, when
    /// `None`), then the byte budget across rooms.
    fn enforce(&mut self, room: Option<&str>) {
        if let Some(max) = self.retention.max_messages {
            let names: Vec<String> = match room {
                Some(r) => vec![r.to_owned()],
                None => self.rooms.keys().cloned().collect(),
            };
            for name in names {
                while self
                    .rooms
                    .get(&name)
                    .is_some_and(|r| r.messages.len() as u64 > max)
                {
                    self.evict_oldest(&name);
                }
            }
        }
        if let Some(max) = self.retention.max_bytes {
            while self.bytes > max {
                let Some((_, largest)) = self.by_size.last().cloned() else {
                    break;
                };
                if !self.evict_oldest(&largest) {
                    break;
                }
            }
        }
    }

    /// How many messages are kept, all rooms together.
    fn kept(&self) -> u64 {
        self.rooms.values().map(|r| r.messages.len() as u64).sum()
    }

    /// The retention in force.
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// The bytes kept, all rooms together (each message charged [`Message::charge`]).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A room's kept messages, oldest first (empty for an unknown room).
    pub fn history(&self, room: &str) -> Vec<Message> {
        self.history_after(room, 0, None)
    }

    /// A room's kept messages after `since` (their `seq` > `since`), oldest first, at most
    /// `limit` of them (all when `None`). When messages after `since` were evicted, the first
    /// one returned is above `since + 1` (or none is returned): see
    /// [`RoomLogs::evicted_before`].
    pub fn history_after(&self, room: &str, since: Seq, limit: Option<usize>) -> Vec<Message> {
        let Some(r) = self.rooms.get(room) else {
            return Vec::new();
        };
        // Kept seqs are consecutive from `evicted_before`.
        let skip = since
            .saturating_add(1)
            .saturating_sub(r.evicted_before())
            .min(r.messages.len() as u64) as usize;
        r.messages
            .iter()
            .skip(skip)
            .take(limit.unwrap_or(usize::MAX))
            .map(|k| k.message.clone())
            .collect()
    }

    /// A room's head: the last `seq` handed out (0 for an unknown room), evicted or not.
    pub fn head(&self, room: &str) -> Seq {
        self.rooms.get(room).map_or(0, |r| r.head)
    }

    /// Every `seq` of `room` below this was evicted (1: none; `head + 1`: all of them).
    pub fn evicted_before(&self, room: &str) -> Seq {
        self.rooms.get(room).map_or(1, Room::evicted_before)
    }

    /// The names of the rooms, sorted.
    pub fn rooms(&self) -> Vec<String> {
        self.rooms.keys().cloned().collect()
    }

    /// The snapshot's bytes (sealed, format 2): the same state gives the same bytes.
    ///
    /// # Errors
    /// Only if a body cannot be serialised (JSON values always can).
    pub fn to_snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        let body = SnapshotBodyRef {
            retention: self.retention,
            rooms: self
                .rooms
                .iter()
                .map(|(name, r)| {
                    (
                        name.as_str(),
                        SnapshotRoomRef {
                            head: r.head,
                            messages: KeptSeq(&r.messages),
                        },
                    )
                })
                .collect(),
        };
        // The charges are about the JSON size: a close first guess of the buffer.
        let hint = usize::try_from(self.bytes).unwrap_or(0);
        seal(hint, |buf| serde_json::to_writer(buf, &body)).map_err(SnapshotError::Json)
    }

    /// Reads a snapshot written by [`RoomLogs::to_snapshot`], or one of the first format (bare
    /// JSON, every message kept, no retention).
    ///
    /// # Errors
    /// Bytes that are not a snapshot or whose checksum does not verify; a room whose kept
    /// seqs are not consecutive up to its head, whose `(from, id)` repeats, or that holds
    /// more than the retention allows.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let body = match open(bytes)? {
            Opened::Sealed(json) => serde_json::from_slice::<SnapshotBody>(json)?,
            Opened::Legacy(json) => {
                let legacy: LegacyBody = serde_json::from_slice(json)?;
                SnapshotBody {
                    retention: Retention::default(),
                    rooms: legacy
                        .rooms
                        .into_iter()
                        .map(|(name, messages)| {
                            let head = messages.len() as u64;
                            (name, SnapshotRoom { head, messages })
                        })
                        .collect(),
                }
            }
        };
        let mut logs = RoomLogs {
            retention: body.retention,
            ..RoomLogs::default()
        };
        for (name, room) in body.rooms {
            let bad = |reason| SnapshotError::Inconsistent {
                room: name.clone(),
                reason,
            };
            let first = room.head + 1 - room.messages.len().min(room.head as usize) as u64;
            if room.messages.len() as u64 > room.head {
                return Err(bad("more messages than its head"));
            }
            let mut r = Room {
                head: room.head,
                ..Room::default()
            };
            for (i, m) in room.messages.into_iter().enumerate() {
                if m.seq != first + i as u64 {
                    return Err(bad("kept seqs are not consecutive up to the head"));
                }
                if r.by_id
                    .insert((m.from.clone(), m.id.clone()), m.seq)
                    .is_some()
                {
                    return Err(bad("a (from, id) is stored twice"));
                }
                let charge = m.charge();
                r.bytes += charge;
                r.messages.push_back(Kept { message: m, charge });
            }
            if logs
                .retention
                .max_messages
                .is_some_and(|max| r.messages.len() as u64 > max)
            {
                return Err(bad("more messages than the retention keeps"));
            }
            logs.bytes += r.bytes;
            if r.bytes > 0 {
                logs.by_size.insert((r.bytes, name.clone()));
            }
            logs.rooms.insert(name, r);
        }
        if logs.retention.max_bytes.is_some_and(|max| logs.bytes > max) {
            return Err(SnapshotError::Inconsistent {
                room: String::new(),
                reason: "more bytes than the retention keeps",
            });
        }
        Ok(logs)
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

    fn retain(max_bytes: Option<u64>, max_messages: Option<u64>) -> Command {
        Command::Retain {
            max_bytes,
            max_messages,
        }
    }

    fn seqs(v: Vec<Message>) -> Vec<Seq> {
        v.into_iter().map(|m| m.seq).collect()
    }

    #[test]
    fn history_after_is_the_slice_after_since_bounded_by_limit() {
        let mut logs = RoomLogs::new();
        for i in 1..=10 {
            logs.apply(&publish("lobby", &format!("m{i}")));
        }
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

    #[test]
    fn a_room_over_max_messages_evicts_its_oldest_and_keeps_numbering() {
        let mut logs = RoomLogs::new();
        logs.apply(&retain(None, Some(3)));
        for i in 1..=5 {
            logs.apply(&publish("lobby", &format!("m{i}")));
        }
        assert_eq!(seqs(logs.history("lobby")), vec![3, 4, 5]);
        assert_eq!(logs.head("lobby"), 5);
        assert_eq!(logs.evicted_before("lobby"), 3);
        // Below the oldest kept: what is kept, and the caller sees the gap (3 > 0 + 1).
        assert_eq!(seqs(logs.history_after("lobby", 0, None)), vec![3, 4, 5]);
        assert_eq!(seqs(logs.history_after("lobby", 1, Some(2))), vec![3, 4]);
        assert_eq!(seqs(logs.history_after("lobby", 3, None)), vec![4, 5]);
        // The next seq continues from the head, never reusing an evicted one.
        logs.apply(&publish("lobby", "m6"));
        assert_eq!(seqs(logs.history("lobby")), vec![4, 5, 6]);
        // Tightening the retention evicts at once, through the log.
        let reply = logs.apply(&retain(None, Some(1)));
        assert_eq!(reply, Reply::Retained { evicted: 2 });
        assert_eq!(seqs(logs.history("lobby")), vec![6]);
        assert_eq!(logs.evicted_before("lobby"), 6);
        assert_eq!(logs.evicted_before("nowhere"), 1);
    }

    #[test]
    fn over_max_bytes_the_largest_room_loses_its_oldest_first() {
        let mut logs = RoomLogs::new();
        let charge = |id: &str| {
            Message {
                seq: 0,
                from: "alice".into(),
                id: id.into(),
                ts: 0,
                body: serde_json::json!(id),
            }
            .charge()
        };
        // "big" gets 4 messages, "quiet" 1, all of the same charge (ids of one length).
        for i in 0..4 {
            logs.apply(&publish("big", &format!("b{i}")));
        }
        logs.apply(&publish("quiet", "q0"));
        let each = charge("b0");
        assert_eq!(logs.bytes(), 5 * each);
        // Room for 3: "big" (4 × each) is the largest until it is down to the size of "quiet".
        logs.apply(&retain(Some(3 * each), None));
        assert_eq!(seqs(logs.history("big")), vec![3, 4]);
        assert_eq!(seqs(logs.history("quiet")), vec![1]);
        logs.apply(&retain(Some(2 * each), None));
        assert_eq!(seqs(logs.history("big")), vec![4]);
        assert_eq!(seqs(logs.history("quiet")), vec![1]);
        // A tie (one message each): the greatest name goes first, as the relay does
        // ("quiet" > "big").
        logs.apply(&retain(Some(each), None));
        assert_eq!(seqs(logs.history("big")), vec![4]);
        assert!(logs.history("quiet").is_empty());
        assert_eq!(logs.head("quiet"), 1);
        assert_eq!(logs.evicted_before("quiet"), 2);
        // A publish to the emptied room continues its numbering.
        logs.apply(&publish("quiet", "q1"));
        assert_eq!(logs.head("quiet"), 2);
        assert!(logs.bytes() <= each);
    }

    #[test]
    fn dedup_covers_the_kept_messages_and_an_evicted_one_is_stored_again() {
        let mut logs = RoomLogs::new();
        logs.apply(&retain(None, Some(2)));
        for id in ["a", "b", "c"] {
            logs.apply(&publish("lobby", id));
        }
        // "c" and "b" are kept: a retry gets their seq, nothing is appended.
        assert_eq!(
            logs.apply(&publish("lobby", "c")),
            Reply::Published {
                seq: 3,
                duplicate: true
            }
        );
        assert_eq!(logs.head("lobby"), 3);
        // "a" was evicted: its retry is a new message (as on a single node, relay.md).
        assert_eq!(
            logs.apply(&publish("lobby", "a")),
            Reply::Published {
                seq: 4,
                duplicate: false
            }
        );
        // The index holds only kept messages: "b" left with its eviction.
        assert_eq!(logs.rooms["lobby"].by_id.len(), 2);
        assert_eq!(
            logs.apply(&publish("lobby", "b")),
            Reply::Published {
                seq: 5,
                duplicate: false
            }
        );
    }

    /// A random-ish mix of publishes, retries and retention changes.
    fn commands(n: u64) -> Vec<Command> {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut out = Vec::new();
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 50 {
                0 => out.push(retain(Some(2_000 + x % 3_000), Some(1 + x % 20))),
                1 => out.push(retain(None, None)),
                _ => out.push(Command::Publish {
                    room: format!("r{}", x % 7),
                    id: format!("m{}", x % (i + 1)),
                    from: format!("u{}", x % 3),
                    ts: i,
                    body: serde_json::json!({ "text": "x".repeat((x % 300) as usize) }),
                }),
            }
        }
        out
    }

    #[test]
    fn two_members_fed_the_same_commands_hold_the_same_bytes() {
        let (mut a, mut b) = (RoomLogs::new(), RoomLogs::new());
        let cmds = commands(3_000);
        for (i, c) in cmds.iter().enumerate() {
            assert_eq!(a.apply(c), b.apply(c), "command {i}");
            if i % 500 == 0 {
                assert_eq!(a.to_snapshot().unwrap(), b.to_snapshot().unwrap());
            }
        }
        let snap = a.to_snapshot().unwrap();
        assert_eq!(snap, b.to_snapshot().unwrap());
        // Something was evicted, and the limits hold.
        assert!(a.rooms().iter().any(|r| a.evicted_before(r) > 1));
        let r = a.retention();
        if let Some(max) = r.max_bytes {
            assert!(a.bytes() <= max);
        }
        // A member that installs the snapshot continues exactly as the others.
        let mut c = RoomLogs::from_snapshot(&snap).unwrap();
        assert_eq!(c.to_snapshot().unwrap(), snap);
        for cmd in commands(1_000) {
            assert_eq!(a.apply(&cmd), c.apply(&cmd));
        }
        assert_eq!(a.to_snapshot().unwrap(), c.to_snapshot().unwrap());
    }

    #[test]
    fn a_first_format_snapshot_is_read_and_a_bad_one_refused_clearly() {
        let legacy = br#"{"rooms":{"lobby":[
            {"seq":1,"from":"alice","id":"a","ts":0,"body":"a"},
            {"seq":2,"from":"alice","id":"b","ts":0,"body":"b"}]}}"#;
        let logs = RoomLogs::from_snapshot(legacy).unwrap();
        assert_eq!(seqs(logs.history("lobby")), vec![1, 2]);
        assert_eq!(logs.retention(), Retention::default());
        let gap = br#"{"rooms":{"lobby":[{"seq":2,"from":"alice","id":"b","ts":0,"body":"b"}]}}"#;
        assert!(matches!(
            RoomLogs::from_snapshot(gap),
            Err(SnapshotError::Inconsistent { .. })
        ));
        // Format 2: kept seqs must run up to the head.
        let mut logs = RoomLogs::new();
        logs.apply(&retain(None, Some(1)));
        logs.apply(&publish("lobby", "a"));
        logs.apply(&publish("lobby", "b"));
        let good = logs.to_snapshot().unwrap();
        let back = RoomLogs::from_snapshot(&good).unwrap();
        assert_eq!(back.evicted_before("lobby"), 2);
        assert_eq!(back.head("lobby"), 2);
        assert_eq!(back.retention(), logs.retention());
        let bad = seal(0, |buf| {
            buf.extend_from_slice(
                br#"{"retention":{},"rooms":{"lobby":{"head":5,"messages":[{"seq":2,"from":"a","id":"b","ts":0,"body":1}]}}}"#,
            );
            Ok::<_, ()>(())
        })
        .unwrap();
        assert!(matches!(
            RoomLogs::from_snapshot(&bad),
            Err(SnapshotError::Inconsistent { .. })
        ));
        let mut corrupt = good;
        let last = corrupt.len() - 2;
        corrupt[last] ^= 1;
        assert!(matches!(
            RoomLogs::from_snapshot(&corrupt),
            Err(SnapshotError::Checksum { .. })
        ));
    }
}
