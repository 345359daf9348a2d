//! Stored messages, pre-serialised payloads and the per-room log.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ConnId;
use crate::json::push_json_str;
use crate::peer::codec::{CodecError, PreEncoded, Serialization};

/// Bytes charged per stored message on top of its serialised size: the entry, its
/// log slot, its global-order slot and its deduplication entry.
pub const ENTRY_OVERHEAD: usize = 160;

/// A message serialised once and shared by every recipient.
///
/// `json()` is the exact JSON text of the message object (send it as is to `json` and
/// `raw` connections). [`Payload::encoded`] makes its BinaryPack or msgpack encoding once,
/// on first use, and every later recipient of the same `Payload` shares it.
///
/// # What it keeps alive
/// The encodings are caches: they live as long as the `Payload`. A stored message's own
/// payload (in the room's log, charged to the memory budget by its JSON length) is never
/// encoded: what is sent is a [`Payload::delivery`] copy (the same shared text, its own empty
/// caches), so an encoding lives only while a recipient's queue holds that copy — and the
/// node's write queues charge for it (`node::driver`). No decoded value tree is ever kept.
#[derive(Debug)]
pub struct Payload {
    json: Arc<str>,
    /// BinaryPack encoding (`binary`, `binary-utf8`); `None` inside if it cannot be encoded.
    binarypack: OnceLock<Option<PreEncoded>>,
    /// MessagePack encoding (`msgpack`); `None` inside if it cannot be encoded.
    msgpack: OnceLock<Option<PreEncoded>>,
}

impl Payload {
    /// Wraps JSON text the relay produced. Callers guarantee it is a valid JSON object.
    pub(crate) fn new(json: String) -> Arc<Payload> {
        Payload::shared(json.into())
    }

    fn shared(json: Arc<str>) -> Arc<Payload> {
        Arc::new(Payload {
            json,
            binarypack: OnceLock::new(),
            msgpack: OnceLock::new(),
        })
    }

    /// Serialises a wire message (off the hot path).
    pub(crate) fn of<T: Serialize>(msg: &T) -> Arc<Payload> {
        // Serialising a wire type to a String cannot fail: no maps with non-string keys,
        // no failing Serialize impls.
        Payload::new(serde_json::to_string(msg).expect("wire types always serialise"))
    }

    /// A copy to send: the same text (shared, not copied) with empty encoding caches, so
    /// the encodings its recipients make die with the copy, not with the stored message.
    pub(crate) fn delivery(&self) -> Arc<Payload> {
        Payload::shared(self.json.clone())
    }

    /// The JSON text of the message object.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The same text as a shareable string (for text-mode connections).
    pub fn json_arc(&self) -> Arc<str> {
        self.json.clone()
    }

    /// The message parsed as a `serde_json` tree (keys sorted). Parsed on every call, never
    /// cached (tests and diagnostics).
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.json).expect("the relay only builds valid JSON")
    }

    /// The message encoded for `serialization` (keys in wire order). BinaryPack and msgpack
    /// encodings are made once and shared by every caller of this `Payload`; `json` and
    /// `raw` are encoded on each call (send [`Payload::json`] to those instead).
    ///
    /// # Errors
    /// The serialization cannot carry the message (e.g. BinaryPack and an integer above
    /// 2⁶⁴).
    pub fn encoded(&self, serialization: Serialization) -> Result<PreEncoded, CodecError> {
        let cell = match serialization {
            Serialization::Binary | Serialization::BinaryUtf8 => &self.binarypack,
            Serialization::MsgPack => &self.msgpack,
            Serialization::Json | Serialization::Raw => {
                return PreEncoded::from_json(serialization, self.json.as_bytes());
            }
        };
        let made =
            cell.get_or_init(|| PreEncoded::from_json(serialization, self.json.as_bytes()).ok());
        match made {
            Some(pre) => Ok(pre.clone()),
            // Not encodable: encode again for the error (rare, and never cached).
            None => PreEncoded::from_json(serialization, self.json.as_bytes()),
        }
    }
}

/// How every stored message's payload starts; the rest is its serde form minus `{`.
const PAYLOAD_PREFIX: &str = r#"{"op":"msg","#;

/// One stored message: what the log keeps, what a snapshot lists and what replication
/// streams. Cloning is cheap (reference-counted text).
///
/// Its serde form is `{"room","seq","from","ts","id","body"}` with `body` as raw JSON;
/// encode it with `serde_json` (the body is embedded verbatim, not re-parsed).
#[derive(Debug, Clone)]
pub struct StoredMessage {
    room: Arc<str>,
    seq: u64,
    from: Arc<str>,
    ts: u64,
    id: Option<Arc<str>>,
    /// Where `body` starts in `payload`'s JSON (it ends one byte before the end).
    body_start: usize,
    /// The `msg` object delivered to clients.
    payload: Arc<Payload>,
}

impl StoredMessage {
    /// Builds the message and its `msg` payload. `body` must be valid JSON text.
    pub(crate) fn new(
        room: Arc<str>,
        seq: u64,
        from: Arc<str>,
        ts: u64,
        id: Option<Arc<str>>,
        body: &str,
    ) -> StoredMessage {
        let mut s = String::with_capacity(
            body.len() + room.len() + from.len() + id.as_deref().map_or(4, str::len) + 80,
        );
        s.push_str(PAYLOAD_PREFIX);
        s.push_str(r#""room":"#);
        push_json_str(&mut s, &room);
        s.push_str(r#","seq":"#);
        s.push_str(itoa(seq).as_str());
        s.push_str(r#","from":"#);
        push_json_str(&mut s, &from);
        s.push_str(r#","ts":"#);
        s.push_str(itoa(ts).as_str());
        s.push_str(r#","id":"#);
        match &id {
            Some(id) => push_json_str(&mut s, id),
            None => s.push_str("null"),
        }
        s.push_str(r#","body":"#);
        let body_start = s.len();
        s.push_str(body);
        s.push('}');
        StoredMessage {
            room,
            seq,
            from,
            ts,
            id,
            body_start,
            payload: Payload::new(s),
        }
    }

    /// The message whose serde form (what [`StoredMessage::write_json`] writes) is
    /// `text`, with its body at `text[body_at..text.len() - 1]`: the payload is that text
    /// with `"op":"msg",` put back, one copy. Callers guarantee `text` is exactly the form
    /// `new` would produce for these fields (no escapes in the strings, plain numbers).
    pub(crate) fn from_serde_form(
        room: Arc<str>,
        seq: u64,
        from: Arc<str>,
        ts: u64,
        id: Option<Arc<str>>,
        text: &str,
        body_at: usize,
    ) -> StoredMessage {
        debug_assert!(text.starts_with('{') && text.ends_with('}'));
        let mut s = String::with_capacity(PAYLOAD_PREFIX.len() + text.len() - 1);
        s.push_str(PAYLOAD_PREFIX);
        s.push_str(&text[1..]);
        let m = StoredMessage {
            room,
            seq,
            from,
            ts,
            id,
            body_start: PAYLOAD_PREFIX.len() + body_at - 1,
            payload: Payload::new(s),
        };
        debug_assert_eq!(
            m,
            StoredMessage::new(
                m.room.clone(),
                seq,
                m.from.clone(),
                ts,
                m.id.clone(),
                m.body_json()
            )
        );
        m
    }

    /// Room name.
    pub fn room(&self) -> &str {
        &self.room
    }
    /// Sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Publisher identity.
    pub fn from(&self) -> &str {
        &self.from
    }
    /// Store time, ms since the Unix epoch.
    pub fn ts(&self) -> u64 {
        self.ts
    }
    /// The publisher's message id (`None` for legacy messages).
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
    /// The body as JSON text.
    pub fn body_json(&self) -> &str {
        let j = self.payload.json();
        &j[self.body_start..j.len() - 1]
    }
    /// The `msg` object as delivered.
    pub fn payload(&self) -> &Arc<Payload> {
        &self.payload
    }
    /// Bytes charged against the memory budget (without the legacy view).
    pub fn cost(&self) -> usize {
        self.payload.json().len() + ENTRY_OVERHEAD
    }
    /// Appends the serde form (`{"room","seq","from","ts","id","body"}`) without
    /// re-validating the body. It is the payload without its leading `"op":"msg",`
    /// (`new` writes the same fields in the same order with the same escaping), so this is
    /// a copy.
    pub(crate) fn write_json(&self, s: &mut String) {
        s.push('{');
        s.push_str(self.serde_form_tail());
    }

    /// The serde form without its leading `{`.
    pub(crate) fn serde_form_tail(&self) -> &str {
        let payload = self.payload.json();
        debug_assert!(payload.starts_with(PAYLOAD_PREFIX));
        &payload[PAYLOAD_PREFIX.len()..]
    }

    pub(crate) fn room_arc(&self) -> &Arc<str> {
        &self.room
    }
    pub(crate) fn publisher_arc(&self) -> &Arc<str> {
        &self.from
    }
    pub(crate) fn id_arc(&self) -> Option<&Arc<str>> {
        self.id.as_ref()
    }
}

impl PartialEq for StoredMessage {
    fn eq(&self, other: &Self) -> bool {
        self.payload.json() == other.payload.json()
    }
}

fn itoa(n: u64) -> String {
    n.to_string()
}

#[derive(Serialize)]
struct StoredRef<'a> {
    room: &'a str,
    seq: u64,
    from: &'a str,
    ts: u64,
    id: Option<&'a str>,
    body: &'a RawValue,
}

#[derive(Deserialize)]
struct StoredOwned {
    room: String,
    seq: u64,
    from: String,
    ts: u64,
    id: Option<String>,
    body: Box<RawValue>,
}

impl Serialize for StoredMessage {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let body: &RawValue =
            serde_json::from_str(self.body_json()).map_err(serde::ser::Error::custom)?;
        StoredRef {
            room: &self.room,
            seq: self.seq,
            from: &self.from,
            ts: self.ts,
            id: self.id.as_deref(),
            body,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StoredMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let o = StoredOwned::deserialize(deserializer)?;
        Ok(StoredMessage::new(
            o.room.into(),
            o.seq,
            o.from.into(),
            o.ts,
            o.id.map(Into::into),
            o.body.get(),
        ))
    }
}

/// A log entry: the message plus, in the legacy room, its seed-shaped view.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub msg: StoredMessage,
    /// `{"userName","message","date"}` JSON text for legacy clients (legacy room only).
    pub legacy: Option<Arc<str>>,
}

impl Entry {
    pub fn cost(&self) -> usize {
        self.msg.cost() + self.legacy.as_deref().map_or(0, str::len)
    }
}

/// One room: its log, members and deduplication map.
#[derive(Debug)]
pub(crate) struct Room {
    pub name: Arc<str>,
    /// Newest sequence number ever assigned (0: none). Never decreases.
    pub head: u64,
    /// Every seq below this was evicted (1: nothing evicted).
    pub evicted_before: u64,
    /// Stored messages, seqs increasing within `evicted_before..=head` (contiguous unless
    /// a crash-restore gap was opened).
    pub log: VecDeque<Entry>,
    /// Connections subscribed.
    pub members: BTreeSet<ConnId>,
    /// Members still paging through a `since` replay: live messages skip them (the pages
    /// bring those messages later, in order).
    pub catching_up: BTreeSet<ConnId>,
    /// Identity → number of member connections with it (presence is per identity).
    pub presence: HashMap<Arc<str>, u32>,
    /// Publisher identity → message id → seq, for every stored message with an id.
    pub dedup: HashMap<Arc<str>, HashMap<Arc<str>, u64>>,
    /// Bytes its stored messages are charged ([`Entry::cost`] summed): the eviction order.
    pub bytes: usize,
    /// Since when it has had no members and no stored messages (`None`: not empty, or not
    /// known since when).
    pub idle_since: Option<std::time::Instant>,
}

impl Room {
    /// An empty room whose first message gets `floor + 1`.
    pub fn new(name: Arc<str>, floor: u64) -> Room {
        Room {
            name,
            head: floor,
            evicted_before: floor + 1,
            log: VecDeque::new(),
            members: BTreeSet::new(),
            catching_up: BTreeSet::new(),
            presence: HashMap::new(),
            dedup: HashMap::new(),
            bytes: 0,
            idle_since: None,
        }
    }

    /// No members and no stored messages.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.log.is_empty()
    }

    /// Seq of the oldest stored message, if any.
    pub fn first_seq(&self) -> Option<u64> {
        self.log.front().map(|e| e.msg.seq)
    }

    /// Index in `log` of the first message with `seq > since` (seqs increase; they are
    /// dense except across a crash-restore gap, see `Relay::open_gap`).
    pub fn index_after(&self, since: u64) -> usize {
        self.log.partition_point(|e| e.msg.seq <= since)
    }

    /// The stored message with `seq`, if any.
    pub fn get(&self, seq: u64) -> Option<&Entry> {
        let i = self.index_after(seq.saturating_sub(1));
        self.log.get(i).filter(|e| e.msg.seq == seq)
    }

    /// The seq a `publish` by `from` with `id` was stored under, if still stored.
    pub fn dedup_lookup(&self, from: &str, id: &str) -> Option<u64> {
        self.dedup.get(from).and_then(|m| m.get(id)).copied()
    }

    /// Records `msg`'s id; true if its publisher had no entry in this room before.
    pub fn dedup_insert(&mut self, msg: &StoredMessage) -> bool {
        let Some(id) = msg.id_arc() else {
            return false;
        };
        let m = self.dedup.entry(msg.publisher_arc().clone()).or_default();
        let first = m.is_empty();
        m.insert(id.clone(), msg.seq);
        first
    }

    /// Forgets `msg`'s id; true if that was its publisher's last entry in this room.
    pub fn dedup_remove(&mut self, msg: &StoredMessage) -> bool {
        if let Some(id) = msg.id()
            && let Some(m) = self.dedup.get_mut(msg.from())
        {
            if m.get(id) == Some(&msg.seq) {
                m.remove(id);
            }
            if m.is_empty() {
                self.dedup.remove(msg.from());
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_match_serde() {
        for s in [
            "",
            "plain",
            "q\"b\\s",
            "\n\r\t\u{8}\u{c}\u{1}\u{1f}",
            "ünï😀",
            "\u{7f}",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn stored_message_roundtrip() {
        let m = StoredMessage::new(
            "r\"".into(),
            7,
            "al\nice".into(),
            1700,
            Some("id1".into()),
            r#"{"a":[1,2]}"#,
        );
        let v: serde_json::Value = serde_json::from_str(m.payload().json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op":"msg","room":"r\"","seq":7,"from":"al\nice","ts":1700,"id":"id1","body":{"a":[1,2]}})
        );
        assert_eq!(m.body_json(), r#"{"a":[1,2]}"#);
        let enc = serde_json::to_string(&m).unwrap();
        assert_eq!(
            enc,
            r#"{"room":"r\"","seq":7,"from":"al\nice","ts":1700,"id":"id1","body":{"a":[1,2]}}"#
        );
        let mut direct = String::new();
        m.write_json(&mut direct);
        assert_eq!(direct, enc);
        let back: StoredMessage = serde_json::from_str(&enc).unwrap();
        assert_eq!(back, m);
        assert_eq!(m.payload().value()["body"]["a"][1], 2);
        let pre = m.payload().encoded(Serialization::Binary).unwrap();
        let mut dec = crate::peer::codec::Decoder::new(Serialization::Binary);
        let mut enc = crate::peer::codec::Encoder::new(Serialization::Binary);
        let frames = enc.encode_pre(&pre).unwrap();
        let got = dec.decode(frames[0].clone()).unwrap();
        let crate::peer::codec::Decoded::Message(cv) = &got[0] else {
            panic!("a message");
        };
        assert_eq!(cv.get("op").and_then(|v| v.as_str()), Some("msg"));
        assert_eq!(cv.to_json(), m.payload().value());
    }
}
