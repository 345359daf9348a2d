//! [`SnapshotDecoder`]: decodes a [`Snapshot`](super::Snapshot)'s JSON as it arrives, piece
//! by piece, so a successor restores the store while the rest is still on the wire.
//!
//! The snapshot is one JSON object. Its top-level keys are read one `key: value` item at a
//! time; the `messages` array is read one message object at a time. An item cut by the end
//! of a piece waits for the next piece (only that item is kept, not the snapshot), so the
//! decoder holds at most one item besides the messages it has not handed out yet (all of
//! them only if the header fields come after the messages, which `to_json` never writes).
//!
//! The snapshot's types ([`Snapshot`], [`SnapshotHeader`], [`RoomState`]) live in
//! `replication`; this module reads them and `replication` never imports it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::replication::{RoomState, Snapshot, SnapshotHeader};
use super::store::StoredMessage;
use super::{Relay, RelayConfig, RelayError, Restorer};

/// One stored message as parsed, borrowing from the input (a `Cow` is owned only when
/// the JSON string had escapes).
#[derive(Deserialize)]
struct StoredRef<'a> {
    #[serde(borrow)]
    room: Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    from: Cow<'a, str>,
    ts: u64,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: &'a RawValue,
}

/// A message in exactly the form `Snapshot::to_json` writes it.
struct CanonicalMessage<'a> {
    room: &'a str,
    seq: u64,
    from: &'a str,
    ts: u64,
    id: Option<&'a str>,
    /// Where the body starts.
    body_at: usize,
    /// Length of the whole object.
    len: usize,
}

enum Canonical<'a> {
    Message(CanonicalMessage<'a>),
    /// Cut short (so far it matches).
    NeedMore,
    /// Not in the canonical form (or invalid): the general parser decides.
    Other,
}

/// Recognises a message written by `StoredMessage::write_json`: keys in its order, no
/// whitespace, strings without escapes, plain numbers. Such text is the message's payload
/// minus its `"op":"msg",`, so it is stored by one copy instead of being re-encoded; the
/// body is still validated. Anything else goes to serde (same result, slower).
fn canonical(input: &[u8]) -> Canonical<'_> {
    struct Cursor<'a> {
        input: &'a [u8],
        at: usize,
    }
    /// `Err(true)`: need more input; `Err(false)`: not canonical.
    type R<T> = Result<T, bool>;
    impl<'a> Cursor<'a> {
        fn lit(&mut self, lit: &[u8]) -> R<()> {
            let have = &self.input[self.at..];
            let n = lit.len().min(have.len());
            if have[..n] != lit[..n] {
                return Err(false);
            }
            if n < lit.len() {
                return Err(true);
            }
            self.at += n;
            Ok(())
        }
        /// The rest of a string whose opening quote was read, up to its closing quote.
        fn plain_str(&mut self) -> R<&'a str> {
            let start = self.at;
            let rest = &self.input[start..];
            let end = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .ok_or(true)?;
            if rest[end] != b'"' {
                return Err(false);
            }
            self.at += end + 1;
            std::str::from_utf8(&rest[..end]).map_err(|_| false)
        }
        fn number(&mut self) -> R<u64> {
            let rest = &self.input[self.at..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            if digits == rest.len() {
                return Err(true);
            }
            if digits == 0 || (digits > 1 && rest[0] == b'0') {
                return Err(false);
            }
            let mut n: u64 = 0;
            for &d in &rest[..digits] {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d - b'0')))
                    .ok_or(false)?;
            }
            self.at += digits;
            Ok(n)
        }
    }
    let mut c = Cursor { input, at: 0 };
    let parsed = (|| -> R<CanonicalMessage<'_>> {
        c.lit(br#"{"room":""#)?;
        let room = c.plain_str()?;
        c.lit(br#","seq":"#)?;
        let seq = c.number()?;
        c.lit(br#","from":""#)?;
        let from = c.plain_str()?;
        c.lit(br#","ts":"#)?;
        let ts = c.number()?;
        c.lit(br#","id":"#)?;
        let id = match c.input.get(c.at) {
            None => return Err(true),
            Some(b'n') => c.lit(b"null").map(|()| None)?,
            Some(_) => {
                c.lit(b"\"")?;
                Some(c.plain_str()?)
            }
        };
        c.lit(br#","body":"#)?;
        let body_at = c.at;
        match parse::<IgnoredAny>(&c.input[body_at..]) {
            Ok(Some((_, n))) => c.at += n,
            Ok(None) => return Err(true),
            Err(_) => return Err(false),
        }
        c.lit(b"}")?;
        Ok(CanonicalMessage {
            room,
            seq,
            from,
            ts,
            id,
            body_at,
            len: c.at,
        })
    })();
    match parsed {
        Ok(m) => Canonical::Message(m),
        Err(true) => Canonical::NeedMore,
        Err(false) => Canonical::Other,
    }
}

/// Where the decoder is in the top-level object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before `{`.
    Open,
    /// After `{`: a key or `}`.
    FirstKey,
    /// After `,`: a key.
    Key,
    /// After a value: `,` or `}`.
    AfterValue,
    /// After `"messages":[`: a message or `]`.
    FirstMessage,
    /// After a message: `,` or `]`.
    AfterMessage,
    /// After `,` in the messages array: a message.
    Message,
    /// After the closing `}`: only whitespace.
    Done,
}

/// What one step found.
enum Step {
    /// Consumed this many bytes.
    Took(usize),
    /// The next item is not complete yet.
    NeedMore,
}

/// Header fields as they are read.
#[derive(Default)]
struct Fields {
    version: Option<u32>,
    node: Option<String>,
    generation: Option<u64>,
    seq_floor: Option<u64>,
    rooms: Option<Vec<RoomState>>,
}

impl Fields {
    /// Every required field is present (`seq_floor` defaults to 0).
    fn complete(&self) -> bool {
        self.version.is_some()
            && self.node.is_some()
            && self.generation.is_some()
            && self.rooms.is_some()
    }
}

impl Snapshot {
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
}

/// Decodes [`Snapshot::to_json`](super::Snapshot::to_json)'s output incrementally.
///
/// [`feed`](Self::feed) pieces in order; take the header with
/// [`take_header`](Self::take_header) once it is complete (before the first message) and
/// the messages decoded so far with [`take_messages`](Self::take_messages);
/// [`finish`](Self::finish) checks that the snapshot ended properly. Room names and
/// publisher identities are interned (one shared allocation per distinct name).
pub struct SnapshotDecoder {
    buf: Vec<u8>,
    /// Stream offset of `buf[0]` (for error messages).
    offset: u64,
    /// Do not retry the pending item before `buf` holds this many bytes (an item that
    /// spans many pieces is parsed again only each time its bytes doubled).
    retry_at: usize,
    state: State,
    fields: Fields,
    /// The header is complete and the messages follow it.
    header_ready: bool,
    header_taken: bool,
    messages_seen: bool,
    interner: HashSet<Arc<str>>,
    messages: Vec<StoredMessage>,
    /// The first error (the decoder stops there).
    failed: Option<String>,
}

impl Default for SnapshotDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for SnapshotDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotDecoder")
            .field("offset", &self.offset)
            .field("pending", &self.buf.len())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

/// Parses one JSON value of type `T` at the start of `bytes`; `None` if it is not
/// complete yet. A value must be followed by at least one byte (in a snapshot every value
/// is followed by `,`, `]` or `}`), so a number cut by the end of a piece is not taken
/// for a shorter one.
///
/// An error found at the very end of `bytes` means "not complete yet" too: serde_json
/// reports a number cut after its `-`, `.`, `e`, `e+` or `e-` as an invalid number, not as
/// the end of the input, when it skips the value (`IgnoredAny`, `RawValue`: message bodies
/// and unknown fields). A value that is really invalid there is refused once more bytes
/// follow it (its error is then before the end), or by `finish` as cut short.
fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<Option<(T, usize)>, serde_json::Error> {
    let mut it = serde_json::Deserializer::from_slice(bytes).into_iter::<T>();
    match it.next() {
        Some(Ok(v)) if it.byte_offset() < bytes.len() => Ok(Some((v, it.byte_offset()))),
        Some(Ok(_)) | None => Ok(None),
        Some(Err(e)) if e.is_eof() || error_at_end(bytes, &e) => Ok(None),
        Some(Err(e)) => Err(e),
    }
}

/// `e` was found at the end of `bytes` (serde_json gives a line, from 1, and a byte column
/// within it, from 0; the end of the input is the column after its last byte).
fn error_at_end(bytes: &[u8], e: &serde_json::Error) -> bool {
    let line_start = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines = 1 + bytes.iter().filter(|&&b| b == b'\n').count();
    e.line() == lines && e.column() == bytes.len() - line_start
}

impl SnapshotDecoder {
    /// A decoder at the start of a snapshot.
    pub fn new() -> Self {
        SnapshotDecoder {
            buf: Vec::new(),
            offset: 0,
            retry_at: 0,
            state: State::Open,
            fields: Fields::default(),
            header_ready: false,
            header_taken: false,
            messages_seen: false,
            interner: HashSet::new(),
            messages: Vec::new(),
            failed: None,
        }
    }

    /// Decodes the next piece of the snapshot.
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] with the byte offset if the JSON is malformed or not laid
    /// out as a snapshot (a field twice, a field missing). The decoder stays
    /// failed: later calls return the same error.
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), RelayError> {
        if let Some(e) = &self.failed {
            return Err(RelayError::Snapshot(e.clone()));
        }
        if self.buf.is_empty() {
            // Nothing pending: decode straight from the piece, keep only its unfinished
            // last item.
            let used = self.run(piece)?;
            self.buf.extend_from_slice(&piece[used..]);
            return Ok(());
        }
        self.buf.extend_from_slice(piece);
        if self.buf.len() < self.retry_at {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let result = self.run(&buf);
        self.buf = buf;
        let used = result?;
        self.buf.drain(..used);
        Ok(())
    }

    /// Decodes every complete item in `input` (which starts at stream offset
    /// `self.offset`); returns the bytes consumed.
    fn run(&mut self, input: &[u8]) -> Result<usize, RelayError> {
        let mut pos = 0;
        let mut retry_at = 0;
        let result = loop {
            while pos < input.len() && is_ws(input[pos]) {
                pos += 1;
            }
            if pos == input.len() {
                break Ok(pos);
            }
            match self.step(input, pos) {
                Ok(Step::Took(n)) => pos += n,
                Ok(Step::NeedMore) => {
                    retry_at = (input.len() - pos) * 2;
                    break Ok(pos);
                }
                Err(e) => break Err(e),
            }
        };
        self.offset += pos as u64;
        self.retry_at = retry_at;
        if let Err(RelayError::Snapshot(e)) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn error(&self, at: usize, what: impl std::fmt::Display) -> RelayError {
        RelayError::Snapshot(format!("byte {}: {what}", self.offset + at as u64))
    }

    /// One token or item at `input[pos]` (not whitespace).
    fn step(&mut self, input: &[u8], pos: usize) -> Result<Step, RelayError> {
        let b = input[pos];
        let next = match (self.state, b) {
            (State::Open, b'{') => State::FirstKey,
            (State::FirstKey | State::AfterValue, b'}') => State::Done,
            (State::AfterValue, b',') => State::Key,
            (State::FirstKey | State::Key, b'"') => return self.field(input, pos),
            (State::FirstMessage | State::AfterMessage, b']') => State::AfterValue,
            (State::AfterMessage, b',') => State::Message,
            (State::FirstMessage | State::Message, b'{') => return self.message(input, pos),
            (state, _) => {
                let expected = match state {
                    State::Open => "`{`",
                    State::FirstKey => "a key or `}`",
                    State::Key => "a key",
                    State::AfterValue => "`,` or `}`",
                    State::FirstMessage => "a message or `]`",
                    State::AfterMessage => "`,` or `]`",
                    State::Message => "a message",
                    State::Done => "the end of the snapshot",
                };
                return Err(self.error(pos, format_args!("expected {expected}")));
            }
        };
        self.state = next;
        Ok(Step::Took(1))
    }

    /// `"key": value` at `input[pos]`, or `"messages": [`.
    fn field(&mut self, input: &[u8], pos: usize) -> Result<Step, RelayError> {
        let bytes = &input[pos..];
        let Some((key, mut at)) = parse::<Cow<'_, str>>(bytes).map_err(|e| self.error(pos, e))?
        else {
            return Ok(Step::NeedMore);
        };
        while at < bytes.len() && is_ws(bytes[at]) {
            at += 1;
        }
        match bytes.get(at) {
            None => return Ok(Step::NeedMore),
            Some(b':') => at += 1,
            Some(_) => return Err(self.error(pos + at, "expected `:`")),
        }
        while at < bytes.len() && is_ws(bytes[at]) {
            at += 1;
        }
        if at == bytes.len() {
            return Ok(Step::NeedMore);
        }
        let value = &bytes[at..];
        let f = &mut self.fields;
        let dup = match key.as_ref() {
            "messages" => self.messages_seen,
            "version" => f.version.is_some(),
            "node" => f.node.is_some(),
            "generation" => f.generation.is_some(),
            "seq_floor" => f.seq_floor.is_some(),
            "rooms" => f.rooms.is_some(),
            _ => false,
        };
        if dup {
            return Err(self.error(pos, format_args!("`{key}` twice")));
        }
        let taken = match key.as_ref() {
            "messages" => {
                if value[0] != b'[' {
                    return Err(self.error(pos + at, "expected `[` (messages)"));
                }
                self.messages_seen = true;
                // Messages can be handed out as they come only if the header came first
                // (`Snapshot::to_json`'s order); otherwise they wait for the end.
                self.header_ready = f.complete();
                self.state = State::FirstMessage;
                return Ok(Step::Took(at + 1));
            }
            k if self.header_ready
                && matches!(k, "version" | "node" | "generation" | "seq_floor") =>
            {
                return Err(self.error(pos, format_args!("`{k}` after the messages")));
            }
            "version" => parse(value).map(|o| o.map(|(v, n)| (f.version = Some(v), n))),
            "node" => parse(value).map(|o| o.map(|(v, n)| (f.node = Some(v), n))),
            "generation" => parse(value).map(|o| o.map(|(v, n)| (f.generation = Some(v), n))),
            "seq_floor" => parse(value).map(|o| o.map(|(v, n)| (f.seq_floor = Some(v), n))),
            "rooms" => parse(value).map(|o| o.map(|(v, n)| (f.rooms = Some(v), n))),
            _ => parse::<IgnoredAny>(value).map(|o| o.map(|(_, n)| ((), n))),
        };
        match taken.map_err(|e| self.error(pos + at, e))? {
            Some(((), n)) => {
                self.state = State::AfterValue;
                Ok(Step::Took(at + n))
            }
            None => Ok(Step::NeedMore),
        }
    }

    /// One message object at `input[pos]`.
    fn message(&mut self, input: &[u8], pos: usize) -> Result<Step, RelayError> {
        let at = self.offset + pos as u64;
        let interner = &mut self.interner;
        let mut intern = |s: &str| match interner.get(s) {
            Some(a) => a.clone(),
            None => {
                let a: Arc<str> = Arc::from(s);
                interner.insert(a.clone());
                a
            }
        };
        let (msg, n) = match canonical(&input[pos..]) {
            Canonical::Message(m) => {
                let text = &input[pos..pos + m.len];
                // The body's strings are not checked by the canonical scan: a byte that is
                // not UTF-8 is refused here (found by the `snapshot_restore` fuzz target).
                let text = std::str::from_utf8(text).map_err(|e| {
                    RelayError::Snapshot(format!(
                        "byte {}: a message that is not UTF-8",
                        at + e.valid_up_to() as u64
                    ))
                })?;
                let msg = StoredMessage::from_serde_form(
                    intern(m.room),
                    m.seq,
                    intern(m.from),
                    m.ts,
                    m.id.map(Arc::from),
                    text,
                    m.body_at,
                );
                (msg, m.len)
            }
            Canonical::NeedMore => return Ok(Step::NeedMore),
            Canonical::Other => {
                let parsed = parse::<StoredRef<'_>>(&input[pos..]);
                let parsed = parsed.map_err(|e| RelayError::Snapshot(format!("byte {at}: {e}")));
                let Some((m, n)) = parsed? else {
                    return Ok(Step::NeedMore);
                };
                let msg = StoredMessage::new(
                    intern(&m.room),
                    m.seq,
                    intern(&m.from),
                    m.ts,
                    m.id.map(|id| Arc::from(id.as_ref())),
                    m.body.get(),
                );
                (msg, n)
            }
        };
        self.messages.push(msg);
        self.state = State::AfterMessage;
        Ok(Step::Took(n))
    }

    /// The header, once (available as soon as the `messages` array begins; a snapshot
    /// without one yields it from [`finish`](Self::finish)).
    pub fn take_header(&mut self) -> Option<SnapshotHeader> {
        if !self.header_ready || self.header_taken {
            return None;
        }
        self.header_taken = true;
        let f = std::mem::take(&mut self.fields);
        Some(SnapshotHeader {
            version: f.version.unwrap_or_default(),
            node: f.node.unwrap_or_default(),
            generation: f.generation.unwrap_or_default(),
            seq_floor: f.seq_floor.unwrap_or_default(),
            rooms: f.rooms.unwrap_or_default(),
        })
    }

    /// The messages decoded since the last call, in snapshot order (none before the
    /// header: in a snapshot whose header fields follow its messages they are all held
    /// until [`finish`](Self::finish)).
    pub fn take_messages(&mut self) -> Vec<StoredMessage> {
        if !self.header_taken {
            return Vec::new();
        }
        std::mem::take(&mut self.messages)
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.offset
    }

    /// Checks that the snapshot is complete and returns what was not taken yet: the
    /// header (if [`take_header`](Self::take_header) did not) and the last messages.
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] if the snapshot is malformed, cut short or lacks a field.
    pub fn finish(mut self) -> Result<(Option<SnapshotHeader>, Vec<StoredMessage>), RelayError> {
        if let Some(e) = &self.failed {
            return Err(RelayError::Snapshot(e.clone()));
        }
        let buf = std::mem::take(&mut self.buf);
        let used = self.run(&buf)?;
        if self.state != State::Done || used < buf.len() {
            return Err(RelayError::Snapshot(format!(
                "cut short after {} bytes",
                self.offset
            )));
        }
        if !self.header_taken && !self.fields.complete() {
            return Err(RelayError::Snapshot(
                "missing version, node, generation or rooms".into(),
            ));
        }
        self.header_ready = true;
        let header = self.take_header();
        Ok((header, std::mem::take(&mut self.messages)))
    }
}

/// Decodes a snapshot piece by piece straight into a [`Restorer`]: what a successor runs
/// while the snapshot is still arriving.
#[derive(Debug)]
pub struct StreamingRestore {
    config: Option<RelayConfig>,
    now: Instant,
    decoder: SnapshotDecoder,
    restorer: Option<Restorer>,
    /// The first error: every later call returns it (nothing more is restored).
    failed: Option<String>,
}

impl StreamingRestore {
    /// A restore into a relay with `config`.
    pub fn new(config: RelayConfig, now: Instant) -> Self {
        StreamingRestore {
            config: Some(config),
            now,
            decoder: SnapshotDecoder::new(),
            restorer: None,
            failed: None,
        }
    }

    /// Hands `header` (once) and `messages` to the restorer.
    fn restore(
        &mut self,
        header: Option<SnapshotHeader>,
        messages: Vec<StoredMessage>,
    ) -> Result<(), RelayError> {
        if let Some(h) = header
            && let Some(config) = self.config.take()
        {
            self.restorer = Some(Restorer::new(config, h, self.now)?);
        }
        if messages.is_empty() {
            return Ok(());
        }
        let r = self
            .restorer
            .as_mut()
            .expect("the decoder yields the header before any message");
        messages.into_iter().try_for_each(|m| r.push(m))
    }

    /// Remembers the first error.
    fn check<T>(&mut self, result: Result<T, RelayError>) -> Result<T, RelayError> {
        if let Err(RelayError::Snapshot(e)) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn failed(&self) -> Result<(), RelayError> {
        match &self.failed {
            Some(e) => Err(RelayError::Snapshot(e.clone())),
            None => Ok(()),
        }
    }

    /// The next piece of the snapshot, in order.
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] if the snapshot is malformed or inconsistent so far; the
    /// restore stays failed (later calls return the same error).
    pub fn feed(&mut self, piece: &[u8]) -> Result<(), RelayError> {
        self.failed()?;
        let step = self.decoder.feed(piece).and_then(|()| {
            let header = self.decoder.take_header();
            let messages = self.decoder.take_messages();
            self.restore(header, messages)
        });
        self.check(step)
    }

    /// Snapshot bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.decoder.consumed()
    }

    /// The restored relay, once every piece was fed.
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] if the snapshot is cut short, malformed or inconsistent
    /// (or an earlier piece was).
    pub fn finish(mut self) -> Result<Relay, RelayError> {
        self.failed()?;
        let (header, rest) = std::mem::take(&mut self.decoder).finish()?;
        self.restore(header, rest)?;
        self.restorer
            .expect("finish yields the header when not taken")
            .finish()
    }
}
