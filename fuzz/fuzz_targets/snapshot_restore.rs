//! A relay snapshot from fuzzed bytes (or a well-formed snapshot with fuzzed rooms, heads,
//! seqs and names), decoded at once (`Snapshot::from_json`), piece by piece
//! (`SnapshotDecoder`) and restored while streaming (`StreamingRestore`, what a successor
//! runs) and at once (`Relay::restore`, what crash recovery runs).
//!
//! Beyond "no panic": both decoders and both restores agree; a decoded snapshot encodes
//! and decodes to itself; a restored relay's own snapshot restores again, also after a
//! crash-restore gap (`open_gap`) that leaves every head within `MAX_HEAD`.
#![no_main]

use std::time::Instant;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ouroboros::relay::{MAX_HEAD, Relay, RelayConfig, Snapshot, SnapshotDecoder, StreamingRestore};
use serde_json::{Value, json};

const NAMES: [&str; 4] = ["lobby", "global", "r\u{e9}", "a\"b"];

#[derive(Arbitrary, Debug)]
struct Room {
    name: u8,
    head: u64,
    evicted_before: u64,
}

#[derive(Arbitrary, Debug)]
struct Msg {
    room: u8,
    seq: u64,
    from: String,
    ts: u64,
    id: Option<String>,
    body: BodyKind,
}

#[derive(Arbitrary, Debug)]
enum BodyKind {
    Str(String),
    Num(f64),
    Raw(String),
    Nested(Vec<i32>),
}

/// A snapshot-shaped document with fuzzed contents.
#[derive(Arbitrary, Debug)]
struct Shaped {
    version: u8,
    seq_floor: Option<u64>,
    rooms: Vec<Room>,
    messages: Vec<Msg>,
    /// Key order: header fields after the messages.
    messages_first: bool,
    /// Pretty-printed (whitespace, not `to_json`'s canonical form).
    pretty: bool,
}

fn small(v: u64) -> u64 {
    // Mostly small values (consistent snapshots), sometimes extremes.
    if v >> 60 == 0xf { v } else { v % 8 }
}

impl Shaped {
    fn to_bytes(&self) -> Vec<u8> {
        let name = |i: u8| NAMES[usize::from(i) % NAMES.len()];
        let rooms: Vec<Value> = self
            .rooms
            .iter()
            .map(|r| json!({"name": name(r.name), "head": small(r.head), "evicted_before": small(r.evicted_before)}))
            .collect();
        let messages: Vec<Value> = self
            .messages
            .iter()
            .map(|m| {
                let body = match &m.body {
                    BodyKind::Str(s) => json!(s),
                    BodyKind::Num(f) => json!(f),
                    BodyKind::Raw(s) => serde_json::from_str(s).unwrap_or(Value::Null),
                    BodyKind::Nested(v) => json!({"v": v}),
                };
                json!({"room": name(m.room), "seq": small(m.seq), "from": m.from, "ts": m.ts, "id": m.id, "body": body})
            })
            .collect();
        let mut doc = serde_json::Map::new();
        if self.messages_first {
            doc.insert("messages".into(), messages.clone().into());
        }
        doc.insert("version".into(), json!(self.version % 3));
        doc.insert("node".into(), json!("n"));
        doc.insert("generation".into(), json!(3));
        if let Some(f) = self.seq_floor {
            doc.insert("seq_floor".into(), json!(small(f)));
        }
        doc.insert("rooms".into(), rooms.into());
        if !self.messages_first {
            doc.insert("messages".into(), messages.into());
        }
        let doc = Value::Object(doc);
        if self.pretty {
            serde_json::to_vec_pretty(&doc).expect("serializes")
        } else {
            serde_json::to_vec(&doc).expect("serializes")
        }
    }
}

fn config(small_budget: bool) -> RelayConfig {
    let mut c = RelayConfig::new("successor", 4);
    if small_budget {
        c.memory_budget = 2048;
    }
    c
}

/// Cuts `bytes` into pieces of sizes taken from `cuts` (cycled).
fn pieces<'a>(bytes: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = cuts.iter().cycle();
    while !rest.is_empty() {
        let n = usize::from(*sizes.next().unwrap_or(&255))
            .max(1)
            .min(rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

fn exported(r: &Relay) -> Vec<u8> {
    r.export_snapshot().to_json()
}

fn run(bytes: &[u8], cuts: &[u8], small_budget: bool, margin: u64) {
    let now = Instant::now();
    let whole = Snapshot::from_json(bytes);

    // Piece by piece: the same result.
    let mut d = SnapshotDecoder::new();
    let mut header = None;
    let mut messages = Vec::new();
    let mut fed = Ok(());
    for p in pieces(bytes, cuts) {
        fed = d.feed(p);
        if fed.is_err() {
            break;
        }
        header = header.or_else(|| d.take_header());
        messages.extend(d.take_messages());
    }
    let streamed = fed.and_then(|()| d.finish()).map(|(h, rest)| {
        messages.extend(rest);
        Snapshot::from_parts(header.or(h).expect("a header"), messages)
    });
    match (&whole, &streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decoded in pieces differs"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("at once: {:?}, in pieces: {:?}", a.is_ok(), b.is_ok()),
    }

    // Streaming restore against restore at once.
    let mut sr = StreamingRestore::new(config(small_budget), now);
    let mut ok = true;
    for p in pieces(bytes, cuts) {
        if sr.feed(p).is_err() {
            ok = false;
            break;
        }
    }
    let streaming = if ok { sr.finish().ok() } else { None };
    let Ok(snapshot) = whole else {
        assert!(
            streaming.is_none(),
            "streaming restored an undecodable snapshot"
        );
        return;
    };
    let again = Snapshot::from_json(&snapshot.to_json()).expect("own JSON decodes");
    assert_eq!(again, snapshot, "snapshot JSON round trip");
    let at_once = Relay::restore(config(small_budget), snapshot, now).ok();
    match (&at_once, &streaming) {
        (Some(a), Some(b)) => assert_eq!(exported(a), exported(b), "restores differ"),
        (None, None) => return,
        (a, b) => panic!("at once: {:?}, streaming: {:?}", a.is_some(), b.is_some()),
    }
    let mut relay = at_once.expect("restored");
    let own = Snapshot::from_json(&exported(&relay)).expect("own snapshot decodes");
    let again = Relay::restore(config(small_budget), own, now).expect("own snapshot restores");
    assert_eq!(exported(&again), exported(&relay));
    assert_eq!(again.high_water(), relay.high_water());

    // After a crash restore the gap is opened; the next successor restores that state
    // (unless the gap takes a head beyond the limit a snapshot may carry).
    relay.open_gap(margin);
    let own = Snapshot::from_json(&exported(&relay)).expect("own snapshot decodes");
    let room_to_spare = own.seq_floor <= MAX_HEAD && own.rooms.iter().all(|r| r.head <= MAX_HEAD);
    let restored = Relay::restore(config(small_budget), own, now);
    assert!(
        restored.is_ok() || !room_to_spare,
        "own snapshot does not restore after a gap: {restored:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // The node always uses `DEFAULT_GAP_MARGIN`; smaller ones too.
    let margin = [0, 1, 1000, 10_000][usize::from(mode >> 2) % 4];
    let small_budget = mode & 2 != 0;
    if mode & 1 == 0 {
        // Raw bytes; the piece sizes come from the bytes themselves.
        run(rest, rest.get(..8).unwrap_or(&[]), small_budget, margin);
    } else {
        let mut u = Unstructured::new(rest);
        let Ok(cuts) = <[u8; 4]>::arbitrary(&mut u) else {
            return;
        };
        let Ok(shaped) = Shaped::arbitrary(&mut u) else {
            return;
        };
        run(&shaped.to_bytes(), &cuts, small_budget, margin);
    }
});
