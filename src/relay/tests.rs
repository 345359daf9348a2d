//! Relay core tests. Every area drives a [`Harness`] (a relay with a fake clock) and
//! compares the outputs of each step with `check`: one line per case.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::wire::{ErrorCode, SignalingEndpoint};
use super::*;

/// A relay, a fake clock and a tidy view of its outputs.
struct Harness {
    relay: Relay,
    now: Instant,
    wall: u64,
}

/// The published schema; every output the tests see is validated against it.
const SCHEMA: &str = include_str!("../../protocol/relay.schema.json");

thread_local! {
    static SCHEMA_VALUE: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
}

/// Validates `v` against `#/$defs/<def>` with the subset of JSON Schema the file uses
/// (`$ref`, `oneOf`, `anyOf`, `type`, `const`, `enum`, `required`, `properties`,
/// `additionalProperties: false`, `items`, `minimum`, `maximum`, `minLength`,
/// `maxLength`, `maxItems`; `pattern` is checked by the room-name tests instead).
fn schema_errors(def: &str, v: &Value) -> Vec<String> {
    SCHEMA_VALUE.with(|root| {
        let mut errs = Vec::new();
        validate(root, &root["$defs"][def], v, def, &mut errs);
        errs
    })
}

fn validate(root: &Value, s: &Value, v: &Value, at: &str, errs: &mut Vec<String>) {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        assert!(root["$defs"].get(name).is_some(), "dangling $ref {r}");
        return validate(root, &root["$defs"][name], v, &format!("{at}>{name}"), errs);
    }
    for (kw, need) in [("oneOf", 1usize), ("anyOf", 0)] {
        if let Some(alts) = s.get(kw).and_then(Value::as_array) {
            let ok = alts
                .iter()
                .filter(|a| {
                    let mut e = Vec::new();
                    validate(root, a, v, at, &mut e);
                    e.is_empty()
                })
                .count();
            if (need == 1 && ok != 1) || ok == 0 {
                errs.push(format!("{at}: {ok} alternatives of {kw} match {v}"));
            }
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_u64() || v.is_i64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        });
        if !ok {
            errs.push(format!("{at}: {v} is not {t}"));
            return;
        }
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        errs.push(format!("{at}: {v} != {c}"));
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        errs.push(format!("{at}: {v} not in enum"));
    }
    if let Some(n) = v.as_f64() {
        if s.get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            errs.push(format!("{at}: {n} below minimum"));
        }
        if s.get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            errs.push(format!("{at}: {n} above maximum"));
        }
    }
    if let Some(st) = v.as_str() {
        let len = st.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            errs.push(format!("{at}: {st:?} too short"));
        }
        if s.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            errs.push(format!("{at}: {st:?} too long"));
        }
    }
    if let Some(o) = v.as_object() {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !o.contains_key(r.as_str().unwrap_or_default()) {
                errs.push(format!("{at}: missing {r}"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, pv) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(root, ps, pv, &format!("{at}.{k}"), errs),
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errs.push(format!("{at}: unexpected field {k}"))
                }
                None => {}
            }
        }
    }
    if let Some(a) = v.as_array() {
        if s.get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| a.len() as u64 > m)
        {
            errs.push(format!("{at}: too many items"));
        }
        if let Some(items) = s.get("items") {
            for (i, x) in a.iter().enumerate() {
                validate(root, items, x, &format!("{at}[{i}]"), errs);
            }
        }
    }
}

/// Checks an output against the schema: objects are `server` messages; strings holding
/// JSON are relay messages (text mode) or the seed's shapes.
#[track_caller]
fn assert_schema(out: &Outgoing) {
    let (def, v) = match out {
        Outgoing::Object(p) => ("server", p.value().clone()),
        Outgoing::Text(s) => match serde_json::from_str::<Value>(s) {
            Err(_) => {
                assert_eq!(&**s, "pong", "non-JSON strings are only the legacy pong");
                return;
            }
            Ok(v @ Value::Array(_)) => ("legacy_page", v),
            Ok(v) if v.get("op").is_some() => ("server", v),
            Ok(v) => ("legacy_stored", v),
        },
    };
    let errs = schema_errors(def, &v);
    assert!(errs.is_empty(), "{v} breaks the schema: {errs:#?}");
    // The Rust client's wire types read every relay message, losslessly.
    if def == "server" {
        let typed: wire::ServerMessage = serde_json::from_value(v.clone())
            .unwrap_or_else(|e| panic!("ServerMessage cannot read {v}: {e}"));
        let mut back = serde_json::to_value(&typed).unwrap();
        if let Some(ms) = back.get_mut("messages").and_then(Value::as_array_mut) {
            for m in ms {
                m["op"] = json!("msg"); // history elements are full msg objects
            }
        }
        assert_eq!(back, v, "wire types changed the message");
    }
}

/// An output as a comparable value: `Object` → the parsed object, `Text` →
/// `{"text": s}`, `Close` → `{"close": reason}`.
type Seen = (u64, Value);

fn config() -> RelayConfig {
    RelayConfig::new("node-1", 7)
}

fn relay_meta() -> Value {
    json!({"protocol": "ouroboros/1"})
}

fn named(name: &str) -> Value {
    json!({"protocol": "ouroboros/1", "client": name})
}

impl Harness {
    fn new(config: RelayConfig) -> Harness {
        let now = Instant::now();
        Harness {
            relay: Relay::new(config, now),
            now,
            wall: 1_000,
        }
    }

    fn from_relay(relay: Relay) -> Harness {
        Harness {
            relay,
            now: Instant::now(),
            wall: 1_000_000,
        }
    }

    fn drain(&mut self) -> Vec<Seen> {
        let mut v = Vec::new();
        while let Some(o) = self.relay.poll_output() {
            if let Output::Send { message, .. } = &o {
                assert_schema(message);
            }
            v.push(match o {
                Output::Send {
                    conn,
                    message: Outgoing::Object(p),
                } => {
                    let parsed: Value = serde_json::from_str(p.json()).expect("valid JSON");
                    assert_eq!(&parsed, p.value());
                    (conn.0, parsed)
                }
                Output::Send {
                    conn,
                    message: Outgoing::Text(s),
                } => (conn.0, json!({ "text": &*s })),
                Output::Close { conn, reason } => {
                    (conn.0, json!({ "close": format!("{reason:?}") }))
                }
            });
        }
        v
    }

    /// Opens a connection and returns what it produced.
    fn open(&mut self, id: u64, peer: &str, metadata: Value) -> Vec<Seen> {
        self.relay.connect(
            self.now,
            ConnId(id),
            ConnInfo {
                peer_id: peer.into(),
                metadata,
            },
        );
        self.drain()
    }

    /// Opens a declared relay connection and discards its `welcome`.
    fn open_relay(&mut self, id: u64, peer: &str, metadata: Value) {
        let mut metadata = metadata;
        if metadata.is_null() {
            metadata = relay_meta();
        }
        let out = self.open(id, peer, metadata);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].1["op"], "welcome");
    }

    fn send(&mut self, id: u64, msg: Value) -> Vec<Seen> {
        self.relay
            .handle_message(self.now, self.wall, ConnId(id), msg);
        self.drain()
    }

    /// Sends `msg` on `id` and asserts exactly `expected` comes out, in order.
    #[track_caller]
    fn check(&mut self, id: u64, msg: Value, expected: &[Seen]) {
        let got = self.send(id, msg.clone());
        assert_eq!(got, expected, "after {msg} on {id}");
    }

    /// Sends `msg` and asserts the single answer is an error with `code`.
    #[track_caller]
    fn check_error(&mut self, id: u64, msg: Value, code: &str, reference: Value) {
        let got = self.send(id, msg.clone());
        assert_eq!(got.len(), 1, "after {msg}: {got:?}");
        assert_eq!(got[0].0, id);
        let e = &got[0].1;
        assert_eq!(e["op"], "error", "after {msg}: {e}");
        assert_eq!(e["code"], code, "after {msg}: {e}");
        assert_eq!(e["ref"], reference, "after {msg}: {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    fn disconnect(&mut self, id: u64) -> Vec<Seen> {
        self.relay.disconnect(self.now, ConnId(id));
        self.drain()
    }

    /// Publishes and returns the seq from the ack (asserting one came back to `id`).
    #[track_caller]
    fn publish(&mut self, id: u64, room: &str, msg_id: &str, body: Value) -> u64 {
        let out = self.send(
            id,
            json!({"op":"publish","room":room,"id":msg_id,"body":body}),
        );
        let ack = out
            .iter()
            .find(|(c, v)| *c == id && v["op"] == "ack")
            .unwrap_or_else(|| panic!("no ack in {out:?}"));
        ack.1["seq"].as_u64().expect("seq")
    }
}

fn joined(id: u64, room: &str, head: u64) -> Seen {
    (id, json!({"op":"joined","room":room,"head":head}))
}

fn presence(id: u64, room: &str, joined: &[&str], left: &[&str]) -> Seen {
    (
        id,
        json!({"op":"presence","room":room,"joined":joined,"left":left}),
    )
}

fn msg(id: u64, room: &str, seq: u64, from: &str, ts: u64, mid: &str, body: Value) -> Seen {
    (
        id,
        json!({"op":"msg","room":room,"seq":seq,"from":from,"ts":ts,"id":mid,"body":body}),
    )
}

fn ack(id: u64, mid: &str, room: &str, seq: u64) -> Seen {
    (id, json!({"op":"ack","id":mid,"room":room,"seq":seq}))
}

fn text(id: u64, s: &str) -> Seen {
    (id, json!({ "text": s }))
}

// ----- greeting and protocol detection ----------------------------------------------

#[test]
fn welcome_and_protocol_detection() {
    let mut h = Harness::new(config());
    let limits = serde_json::to_value(Limits::default()).unwrap();
    let welcome = json!({"op":"welcome","node":"node-1","generation":7,"limits":limits});
    // Declared: greeted at once.
    assert_eq!(h.open(1, "p1", relay_meta()), vec![(1, welcome.clone())]);
    // Undeclared: nothing until the first message; an object means the relay protocol.
    assert_eq!(h.open(2, "p2", Value::Null), vec![]);
    h.check(
        2,
        json!({"op":"ping"}),
        &[(2, welcome.clone()), (2, json!({"op":"pong"}))],
    );
    // A JSON string with an op: relay protocol answered in strings.
    assert_eq!(h.open(3, "p3", json!({"client":"x"})), vec![]);
    let out = h.send(3, json!(r#"{"op":"ping"}"#));
    assert_eq!(out.len(), 2);
    let greeting: Value = serde_json::from_str(out[0].1["text"].as_str().unwrap()).unwrap();
    assert_eq!(greeting, welcome);
    assert_eq!(out[1], text(3, r#"{"op":"pong"}"#));
    // Any other string: legacy, answered in the seed's strings only.
    assert_eq!(h.open(4, "p4", Value::Null), vec![]);
    h.check(4, json!("ping"), &[text(4, "pong")]);
    h.check(4, json!("0"), &[text(4, "[]")]);
    // A non-object from a relay client is an error, and the connection stays usable.
    h.check_error(1, json!([1, 2]), "bad_request", Value::Null);
    h.check(1, json!({"op":"ping"}), &[(1, json!({"op":"pong"}))]);
    // The gap notice rides on later welcomes.
    h.relay.set_gap(Some(json!({"since_ms": 5})));
    let out = h.open(5, "p5", relay_meta());
    assert_eq!(out[0].1["gap"], json!({"since_ms": 5}));
}

// ----- join, since, live order ------------------------------------------------------

#[test]
fn join_since_and_live_order() {
    let mut h = Harness::new(config());
    h.open_relay(1, "pub", named("alice"));
    for i in 1..=5 {
        assert_eq!(h.publish(1, "r", &format!("m{i}"), json!(i)), i);
    }
    h.open_relay(2, "sub", named("bob"));
    // No since: no replay.
    h.check(
        2,
        json!({"op":"join","room":"r"}),
        &[joined(2, "r", 5), presence(2, "r", &["bob"], &[])],
    );
    h.send(2, json!({"op":"leave","room":"r"}));
    // since 3: 4 and 5 replayed after joined, then live 6.
    h.check(
        2,
        json!({"op":"join","room":"r","since":3}),
        &[
            joined(2, "r", 5),
            presence(2, "r", &["bob"], &[]),
            msg(2, "r", 4, "alice", 1000, "m4", json!(4)),
            msg(2, "r", 5, "alice", 1000, "m5", json!(5)),
        ],
    );
    h.wall = 2000;
    h.check(
        1,
        json!({"op":"publish","room":"r","id":"m6","body":{"k":"v"}}),
        &[
            ack(1, "m6", "r", 6),
            msg(2, "r", 6, "alice", 2000, "m6", json!({"k":"v"})),
        ],
    );
    // Rejoining while joined replays again and announces nothing.
    h.check(
        2,
        json!({"op":"join","room":"r","since":5}),
        &[
            joined(2, "r", 6),
            presence(2, "r", &["bob"], &[]),
            msg(2, "r", 6, "alice", 2000, "m6", json!({"k":"v"})),
        ],
    );
    // since 0 replays everything; since beyond head replays nothing.
    h.open_relay(3, "c", Value::Null);
    let out = h.send(3, json!({"op":"join","room":"r","since":0}));
    let seqs: Vec<u64> = out.iter().filter_map(|(_, v)| v["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    h.send(3, json!({"op":"leave","room":"r"}));
    let out = h.send(3, json!({"op":"join","room":"r","since":99}));
    assert!(out.iter().all(|(_, v)| v["op"] != "msg"));
}

// ----- publish, ack, dedup ----------------------------------------------------------

#[test]
fn publish_ack_and_dedup() {
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", named("alice"));
    h.open_relay(2, "p2", Value::Null);
    h.send(2, json!({"op":"join","room":"r"}));
    h.check(
        1,
        json!({"op":"publish","room":"r","id":"a","body":"x"}),
        &[
            ack(1, "a", "r", 1),
            msg(2, "r", 1, "alice", 1000, "a", json!("x")),
        ],
    );
    // Same id, same identity: acknowledged again with the same seq, not stored twice.
    h.check(
        1,
        json!({"op":"publish","room":"r","id":"a","body":"different"}),
        &[ack(1, "a", "r", 1)],
    );
    // Same identity on a new connection (a reconnect): still deduplicated.
    h.open_relay(3, "p3-new-peer-id", named("alice"));
    h.check(
        3,
        json!({"op":"publish","room":"r","id":"a","body":"x"}),
        &[ack(3, "a", "r", 1)],
    );
    // Identity declared in the first message instead of metadata.
    assert_eq!(h.open(4, "p4", Value::Null), vec![]);
    let out = h.send(
        4,
        json!({"op":"publish","room":"r","id":"a","body":"x","client":"alice"}),
    );
    assert_eq!(out[1], ack(4, "a", "r", 1));
    // The same id from another identity is another message.
    h.check(
        2,
        json!({"op":"publish","room":"r","id":"a","body":"y"}),
        &[
            ack(2, "a", "r", 2),
            msg(2, "r", 2, "p2", 1000, "a", json!("y")),
        ],
    );
    // The same id in another room is another message.
    assert_eq!(h.publish(1, "s", "a", json!(1)), 1);
    let m = h.relay.metrics();
    assert_eq!((m.published, m.deduplicated, m.messages), (3, 3, 3));
    // Identity cannot change after the first message.
    h.send(
        2,
        json!({"op":"publish","room":"r","id":"b","body":1,"client":"mallory"}),
    );
    let out = h.send(2, json!({"op":"history","room":"r","limit":1}));
    assert_eq!(out[0].1["messages"][0]["from"], "p2");
}

// ----- history ----------------------------------------------------------------------

#[test]
fn history_paging() {
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", Value::Null);
    for i in 1..=12u64 {
        h.wall = 1000 + i;
        h.publish(1, "r", &format!("m{i}"), json!(i));
    }
    let check = |h: &mut Harness, req: Value, seqs: &[u64], evicted: Option<u64>| {
        let out = h.send(1, req.clone());
        assert_eq!(out.len(), 1, "{req}");
        let v = &out[0].1;
        assert_eq!(v["op"], "history");
        assert_eq!(v["room"], req["room"]);
        let got: Vec<u64> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(got, seqs, "{req}");
        assert_eq!(
            v.get("evicted_before").and_then(Value::as_u64),
            evicted,
            "{req}"
        );
    };
    check(
        &mut h,
        json!({"op":"history","room":"r","limit":3}),
        &[12, 11, 10],
        None,
    );
    check(
        &mut h,
        json!({"op":"history","room":"r","before":10,"limit":3}),
        &[9, 8, 7],
        None,
    );
    check(
        &mut h,
        json!({"op":"history","room":"r","before":3,"limit":5}),
        &[2, 1],
        None,
    );
    check(
        &mut h,
        json!({"op":"history","room":"r","before":1}),
        &[],
        None,
    );
    check(
        &mut h,
        json!({"op":"history","room":"r","before":100,"limit":2}),
        &[12, 11],
        None,
    );
    check(&mut h, json!({"op":"history","room":"none"}), &[], None);
    // Default limit (50) returns all 12.
    let out = h.send(1, json!({"op":"history","room":"r"}));
    assert_eq!(out[0].1["messages"].as_array().unwrap().len(), 12);
    // Each element is the msg object as delivered.
    assert_eq!(
        out[0].1["messages"][0],
        json!({"op":"msg","room":"r","seq":12,"from":"p1","ts":1012,"id":"m12","body":12})
    );
    h.check_error(
        1,
        json!({"op":"history","room":"r","limit":0}),
        "bad_limit",
        json!("history"),
    );
    h.check_error(
        1,
        json!({"op":"history","room":"r","limit":501}),
        "bad_limit",
        json!("history"),
    );

    // Byte cap: pages stop growing past history_max_bytes, at least one message.
    let mut c = config();
    c.limits.history_max_bytes = 300;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    for i in 1..=5 {
        h.publish(1, "r", &format!("m{i}"), json!("x".repeat(100)));
    }
    let out = h.send(1, json!({"op":"history","room":"r","limit":5}));
    let n = out[0].1["messages"].as_array().unwrap().len();
    assert!((1..5).contains(&n), "{n}");

    // evicted_before after eviction.
    let mut c = config();
    c.memory_budget = 5 * (ENTRY_OVERHEAD + 80);
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    for i in 1..=20 {
        h.publish(1, "r", &format!("m{i}"), json!(i));
    }
    let out = h.send(1, json!({"op":"history","room":"r","limit":50}));
    let v = &out[0].1;
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let eb = v["evicted_before"].as_u64().unwrap();
    assert_eq!(*seqs.last().unwrap(), eb, "oldest stored is evicted_before");
    assert_eq!(seqs[0], 20);
    assert!(eb > 1 && eb < 20);
}

// ----- presence ---------------------------------------------------------------------

#[test]
fn presence_join_leave_disconnect() {
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", named("alice"));
    h.open_relay(2, "p2", named("bob"));
    h.open_relay(3, "p3", named("alice")); // a second connection of alice
    h.check(
        1,
        json!({"op":"join","room":"r"}),
        &[joined(1, "r", 0), presence(1, "r", &["alice"], &[])],
    );
    h.check(
        2,
        json!({"op":"join","room":"r"}),
        &[
            joined(2, "r", 0),
            presence(2, "r", &["alice", "bob"], &[]),
            presence(1, "r", &["bob"], &[]),
        ],
    );
    // Alice's second connection: no announcement (alice is already present).
    h.check(
        3,
        json!({"op":"join","room":"r"}),
        &[joined(3, "r", 0), presence(3, "r", &["alice", "bob"], &[])],
    );
    // Alice's first connection leaves: alice is still present through 3.
    h.check(1, json!({"op":"leave","room":"r"}), &[]);
    // Bob disconnects: the others hear it.
    assert_eq!(h.disconnect(2), vec![presence(3, "r", &[], &["bob"])]);
    h.check_error(
        1,
        json!({"op":"leave","room":"r"}),
        "not_joined",
        json!("leave"),
    );
    // Disconnect is idempotent.
    assert_eq!(h.disconnect(2), vec![]);
    assert_eq!(h.relay.metrics().clients, 2);
}

// ----- direct -----------------------------------------------------------------------

#[test]
fn direct_relay() {
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", named("alice"));
    h.open_relay(2, "p2", Value::Null);
    h.open(3, "legacy-peer", Value::Null);
    h.send(3, json!("0"));
    // By peer id and by client name.
    h.check(
        1,
        json!({"op":"direct","to":"p2","body":{"hi":1}}),
        &[(2, json!({"op":"direct","from":"alice","body":{"hi":1}}))],
    );
    h.check(
        2,
        json!({"op":"direct","to":"alice","body":"yo"}),
        &[(1, json!({"op":"direct","from":"p2","body":"yo"}))],
    );
    h.check(
        2,
        json!({"op":"direct","to":"p1","body":"yo"}),
        &[(1, json!({"op":"direct","from":"p2","body":"yo"}))],
    );
    // Legacy and absent peers are unknown.
    h.check_error(
        1,
        json!({"op":"direct","to":"legacy-peer","body":1}),
        "unknown_peer",
        json!("direct"),
    );
    h.check_error(
        1,
        json!({"op":"direct","to":"nobody","body":1}),
        "unknown_peer",
        json!("direct"),
    );
    h.disconnect(2);
    h.check_error(
        1,
        json!({"op":"direct","to":"p2","body":1}),
        "unknown_peer",
        json!("direct"),
    );
    assert_eq!(h.relay.metrics().direct, 3);
}

// ----- limits and error codes -------------------------------------------------------

#[test]
fn every_limit_and_error_code() {
    let mut c = config();
    c.limits.max_message_bytes = 100;
    c.limits.max_rooms_per_client = 2;
    c.limits.max_rooms = 3;
    c.limits.max_clients = 3;
    c.limits.rate_burst = 1000.0;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    let e = |h: &mut Harness, msg: Value, code: &str, r: Value| h.check_error(1, msg, code, r);
    e(&mut h, json!("not json"), "bad_request", Value::Null);
    e(&mut h, json!(5), "bad_request", Value::Null);
    e(&mut h, json!({"room":"r"}), "unknown_op", Value::Null);
    e(&mut h, json!({"op":"fly"}), "unknown_op", json!("fly"));
    e(&mut h, json!({"op":7}), "unknown_op", Value::Null);
    e(&mut h, json!({"op":"join"}), "bad_request", json!("join"));
    e(
        &mut h,
        json!({"op":"join","room":5}),
        "bad_request",
        json!("join"),
    );
    e(
        &mut h,
        json!({"op":"join","room":"r","since":-1}),
        "bad_request",
        json!("join"),
    );
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":"x"}),
        "bad_request",
        json!("x"),
    );
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":"","body":1}),
        "bad_request",
        json!(""),
    );
    let long_id = "i".repeat(129);
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":long_id,"body":1}),
        "bad_request",
        json!(long_id),
    );
    for bad in ["", ".hidden", "a b", "a/b", "ü", &"r".repeat(65)] {
        e(
            &mut h,
            json!({"op":"join","room":bad}),
            "bad_room",
            json!("join"),
        );
    }
    e(
        &mut h,
        json!({"op":"publish","room":"a b","id":"m","body":1}),
        "bad_room",
        json!("m"),
    );
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":"big","body":"x".repeat(100)}),
        "too_large",
        json!("big"),
    );
    e(
        &mut h,
        json!({"op":"direct","to":"p1","body":"x".repeat(100)}),
        "too_large",
        json!("direct"),
    );
    // Error texts quoting client input stay short.
    let out = h.send(1, json!({"op":"join","room":"r","since":"é".repeat(5000)}));
    let text = out[0].1["message"].as_str().unwrap();
    assert!(
        text.len() <= 256 && text.starts_with("invalid type"),
        "{text}"
    );
    // Exactly at the limit is fine (98 chars + 2 quotes = 100 bytes).
    assert_eq!(h.publish(1, "r", "fits", json!("x".repeat(98))), 1);
    h.send(1, json!({"op":"join","room":"r"}));
    h.send(1, json!({"op":"join","room":"s"}));
    e(
        &mut h,
        json!({"op":"join","room":"t"}),
        "too_many_rooms",
        json!("join"),
    );
    h.open_relay(2, "p2", Value::Null);
    h.send(2, json!({"op":"join","room":"t"}));
    h.check_error(
        2,
        json!({"op":"join","room":"u"}),
        "room_limit",
        json!("join"),
    );
    h.check_error(
        2,
        json!({"op":"publish","room":"u","id":"q","body":1}),
        "room_limit",
        json!("q"),
    );
    e(
        &mut h,
        json!({"op":"history","room":"r","limit":100000}),
        "bad_limit",
        json!("history"),
    );
    e(
        &mut h,
        json!({"op":"leave","room":"zz"}),
        "not_joined",
        json!("leave"),
    );
    e(
        &mut h,
        json!({"op":"direct","to":"zz","body":1}),
        "unknown_peer",
        json!("direct"),
    );
    h.relay.set_mode(Mode::Draining);
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":"late","body":1}),
        "read_only",
        json!("late"),
    );
    h.relay.set_mode(Mode::Primary);
    // Total clients: the third connection fits, the fourth is refused.
    h.open(3, "p3", Value::Null);
    let out = h.open(4, "p4", relay_meta());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1["code"], "server_full");
    assert_eq!(out[1], (4, json!({"close":"ServerFull"})));
    // Undeclared connections are closed without a word (they may be legacy).
    assert_eq!(
        h.open(5, "p5", Value::Null),
        vec![(5, json!({"close":"ServerFull"}))]
    );
    // After all that, connection 1 still works.
    h.check(1, json!({"op":"ping"}), &[(1, json!({"op":"pong"}))]);
    let m = h.relay.metrics();
    for code in ErrorCode::ALL
        .into_iter()
        .filter(|c| *c != ErrorCode::RateLimited)
    {
        assert!(
            m.errors[code.as_str()] > 0,
            "no {code} counted: {:?}",
            m.errors
        );
    }
}

#[test]
fn rate_limit_refills() {
    let mut c = config();
    c.limits.rate_burst = 3.0;
    c.limits.rate_per_sec = 1.0;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    for _ in 0..3 {
        h.check(1, json!({"op":"ping"}), &[(1, json!({"op":"pong"}))]);
    }
    h.check_error(1, json!({"op":"ping"}), "rate_limited", json!("ping"));
    h.check_error(
        1,
        json!({"op":"publish","room":"r","id":"m1","body":1}),
        "rate_limited",
        json!("m1"),
    );
    // Another connection has its own bucket.
    h.open_relay(2, "p2", Value::Null);
    h.check(2, json!({"op":"ping"}), &[(2, json!({"op":"pong"}))]);
    h.now += Duration::from_millis(1100);
    h.check(1, json!({"op":"ping"}), &[(1, json!({"op":"pong"}))]);
    h.check_error(1, json!({"op":"ping"}), "rate_limited", json!("ping"));
    // Legacy clients over the rate are dropped silently (they only get seed shapes).
    h.open(3, "legacy", Value::Null);
    for _ in 0..3 {
        h.send(3, json!("ping"));
    }
    assert_eq!(h.send(3, json!("ping")), vec![]);
    assert_eq!(h.relay.metrics().errors["rate_limited"], 4);
}

// ----- eviction ---------------------------------------------------------------------

#[test]
fn eviction_under_a_small_budget() {
    let mut c = config();
    c.memory_budget = 4_000;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    h.open_relay(2, "p2", Value::Null);
    h.send(2, json!({"op":"join","room":"b"}));
    let mut acked = Vec::new();
    for i in 1..=60u64 {
        let room = if i % 3 == 0 { "b" } else { "a" };
        let seq = h.publish(
            1,
            room,
            &format!("m{i}"),
            json!({"n": i, "pad": "x".repeat(40)}),
        );
        acked.push((room, seq));
        let m = h.relay.metrics();
        assert!(m.bytes_stored <= 4_000, "over budget: {}", m.bytes_stored);
    }
    // Seqs: dense per room, never reused.
    let a: Vec<u64> = acked
        .iter()
        .filter(|(r, _)| *r == "a")
        .map(|(_, s)| *s)
        .collect();
    let b: Vec<u64> = acked
        .iter()
        .filter(|(r, _)| *r == "b")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(a, (1..=40).collect::<Vec<_>>());
    assert_eq!(b, (1..=20).collect::<Vec<_>>());
    let m = h.relay.metrics();
    assert!(m.evicted_messages > 0);
    assert_eq!(m.evicted_messages as usize + m.messages, 60);
    // Global oldest first: what is left is the newest suffix of the publish order.
    let stats = h.relay.room_stats();
    let kept_a = stats["a"].messages;
    let kept_b = stats["b"].messages;
    assert_eq!(kept_a + kept_b, m.messages);
    let kept: Vec<(&str, u64)> = acked[60 - m.messages..].to_vec();
    assert_eq!(kept.iter().filter(|(r, _)| *r == "a").count(), kept_a);
    assert_eq!(stats["a"].evicted_before, 41 - kept_a as u64);
    assert_eq!(stats["b"].evicted_before, 21 - kept_b as u64);
    // Joining with since=0 replays only what is left, in order, and the head is intact.
    h.open_relay(3, "p3", Value::Null);
    let out = h.send(3, json!({"op":"join","room":"a","since":0}));
    assert_eq!(out[0], joined(3, "a", 40));
    let seqs: Vec<u64> = out.iter().filter_map(|(_, v)| v["seq"].as_u64()).collect();
    assert_eq!(seqs, ((41 - kept_a as u64)..=40).collect::<Vec<_>>());
    // The next publish continues after the head.
    assert_eq!(h.publish(1, "a", "next", json!(0)), 41);
    // A retry of an evicted message's id is stored anew (dedup lives with the message).
    assert_eq!(h.publish(1, "a", "m1", json!(0)), 42);
}

// ----- legacy protocol --------------------------------------------------------------

fn legacy_msg(user: &str, message: &str) -> Value {
    json!(format!(r#"{{"userName":"{user}","message":"{message}"}}"#))
}

#[test]
fn legacy_pages_and_broadcast() {
    let mut h = Harness::new(config());
    h.open(1, "l1", Value::Null);
    h.open(2, "l2", Value::Null);
    h.check(1, json!("0"), &[text(1, "[]")]);
    h.check(2, json!("0"), &[text(2, "[]")]);
    // Store + broadcast to every legacy client, the sender included, date stamped.
    for i in 1..=12u64 {
        h.wall = 100 + i;
        let want = format!(r#"{{"userName":"u","message":"m{i}","date":{}}}"#, 100 + i);
        h.check(
            1,
            legacy_msg("u", &format!("m{i}")),
            &[text(1, &want), text(2, &want)],
        );
    }
    let page = |ns: &[u64]| {
        let items: Vec<String> = ns
            .iter()
            .map(|i| format!(r#"{{"userName":"u","message":"m{i}","date":{}}}"#, 100 + i))
            .collect();
        format!("[{}]", items.join(","))
    };
    h.check(1, json!("0"), &[text(1, &page(&[12, 11, 10, 9, 8]))]);
    h.check(1, json!("5"), &[text(1, &page(&[7, 6, 5, 4, 3]))]);
    h.check(1, json!("10"), &[text(1, &page(&[2, 1]))]);
    h.check(1, json!("12"), &[text(1, "[]")]);
    h.check(1, json!("-2"), &[text(1, &page(&[12, 11, 10]))]);
    h.check(1, json!("ping"), &[text(1, "pong")]);
    // Ignored and invalid strings produce nothing (the seed logged them).
    for s in [
        "pong",
        "time to die",
        "hello",
        r#"{"userName":"u"}"#,
        r#"{"userName":1,"message":"m"}"#,
    ] {
        h.check(1, json!(s), &[]);
    }
    // Extra fields are kept; key order is the sender's; a sent date is overwritten in place.
    h.wall = 500;
    h.check(
        1,
        json!(r#"{"message":"hi","extra":[1, 2],"date":1,"userName":"v"}"#),
        &[
            text(
                1,
                r#"{"message":"hi","extra":[1,2],"date":500,"userName":"v"}"#,
            ),
            text(
                2,
                r#"{"message":"hi","extra":[1,2],"date":500,"userName":"v"}"#,
            ),
        ],
    );
    // Non-strings from a legacy client are ignored.
    h.check(1, json!({"op":"ping"}), &[]);
}

#[test]
fn legacy_and_relay_clients_share_the_room() {
    let mut h = Harness::new(config());
    h.open(1, "legacy-1", Value::Null);
    h.send(1, json!("0"));
    h.open_relay(2, "p2", named("bob"));
    h.send(2, json!({"op":"join","room":"global"}));
    h.wall = 42;
    // Legacy → relay: a msg with the object as body and no id; legacy gets the seed shape.
    h.check(
        1,
        legacy_msg("ann", "hello"),
        &[
            msg(
                2,
                "global",
                1,
                "legacy-1",
                42,
                "",
                json!({"userName":"ann","message":"hello"}),
            )
            .clone()
            .with_id(Value::Null),
            text(1, r#"{"userName":"ann","message":"hello","date":42}"#),
        ],
    );
    // Relay → legacy: a chat-shaped body passes as is; other bodies are wrapped.
    h.wall = 43;
    h.check(
        2,
        json!({"op":"publish","room":"global","id":"b1","body":{"userName":"bob","message":"hey"}}),
        &[
            ack(2, "b1", "global", 2),
            msg(
                2,
                "global",
                2,
                "bob",
                43,
                "b1",
                json!({"userName":"bob","message":"hey"}),
            ),
            text(1, r#"{"message":"hey","userName":"bob","date":43}"#),
        ],
    );
    h.check(
        2,
        json!({"op":"publish","room":"global","id":"b2","body":"plain"}),
        &[
            ack(2, "b2", "global", 3),
            msg(2, "global", 3, "bob", 43, "b2", json!("plain")),
            text(1, r#"{"userName":"bob","message":"plain","date":43}"#),
        ],
    );
    // Legacy pages include relay messages; history includes legacy ones.
    let out = h.send(1, json!("0"));
    assert_eq!(
        out,
        vec![text(
            1,
            r#"[{"userName":"bob","message":"plain","date":43},{"message":"hey","userName":"bob","date":43},{"userName":"ann","message":"hello","date":42}]"#
        )]
    );
    let out = h.send(2, json!({"op":"history","room":"global"}));
    assert_eq!(out[0].1["messages"].as_array().unwrap().len(), 3);
    // Other rooms never reach legacy clients; neither do presence nor moved.
    h.check(
        2,
        json!({"op":"publish","room":"other","id":"o","body":1}),
        &[ack(2, "o", "other", 1)],
    );
    h.open_relay(3, "p3", Value::Null);
    assert_eq!(
        h.send(3, json!({"op":"join","room":"global"})),
        vec![
            joined(3, "global", 3),
            presence(3, "global", &["bob", "p3"], &[]),
            presence(2, "global", &["p3"], &[]),
        ]
    );
    h.relay.announce_moved("next", &[], 8);
    let out = h.drain();
    assert!(out.iter().all(|(c, _)| *c != 1), "{out:?}");
    assert_eq!(h.relay.metrics().legacy_clients, 1);
}

trait WithId {
    fn with_id(self, id: Value) -> Self;
}

impl WithId for Seen {
    fn with_id(mut self, id: Value) -> Self {
        self.1["id"] = id;
        self
    }
}

// ----- snapshot, restore, replication -----------------------------------------------

/// A relay with rooms, dedup entries, evictions and legacy messages.
fn populated(budget: usize) -> Harness {
    let mut c = config();
    c.memory_budget = budget;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", named("alice"));
    h.open(2, "legacy", Value::Null);
    h.send(2, json!("0"));
    for i in 0..30u64 {
        h.wall = 10_000 + i;
        let room = ["a", "b", "c"][(i % 3) as usize];
        h.publish(1, room, &format!("m{i}"), json!({"i": i, "s": "é\"\n"}));
        if i % 5 == 0 {
            h.send(2, legacy_msg("leg", &format!("l{i}")));
        }
    }
    h.drain();
    h
}

#[test]
fn snapshot_restore_roundtrip() {
    for budget in [usize::MAX, 6_000] {
        let h = populated(budget);
        let snap = h.relay.export_snapshot();
        let bytes = snap.to_json();
        assert_eq!(
            bytes,
            serde_json::to_vec(&snap).unwrap(),
            "fast path = serde form"
        );
        let decoded = Snapshot::from_json(&bytes).unwrap();
        assert_eq!(decoded, snap);
        let mut c = config();
        c.memory_budget = budget;
        let restored = Relay::restore(c, decoded, Instant::now()).unwrap();
        assert_eq!(restored.export_snapshot(), snap);
        assert_eq!(restored.high_water(), h.relay.high_water());
        assert_eq!(restored.room_stats(), h.relay.room_stats());
        assert_eq!(
            restored.metrics().bytes_stored,
            h.relay.metrics().bytes_stored
        );
        let mut r = Harness::from_relay(restored);
        // Sequence numbers continue; dedup survives for messages still stored.
        r.open_relay(1, "other-peer-id", named("alice"));
        let hw = r.relay.high_water();
        assert_eq!(r.publish(1, "a", "fresh", json!(1)), hw["a"] + 1);
        let last = format!("m{}", 27); // room a's newest
        assert_eq!(r.publish(1, "a", &last, json!(1)), hw["a"]);
        // The legacy store came along.
        r.open(2, "legacy2", Value::Null);
        let out = r.send(2, json!("0"));
        assert!(out[0].1["text"].as_str().unwrap().contains("l25"));
    }
    // An inconsistent snapshot is refused.
    let mut snap = populated(usize::MAX).relay.export_snapshot();
    let in_a: Vec<usize> = (0..snap.messages.len())
        .filter(|i| snap.messages[*i].room() == "a")
        .collect();
    snap.messages.swap(in_a[0], in_a[1]);
    assert!(Relay::restore(config(), snap, Instant::now()).is_err());
    let mut snap = populated(usize::MAX).relay.export_snapshot();
    snap.rooms[0].head -= 1;
    assert!(Relay::restore(config(), snap, Instant::now()).is_err());
}

/// Feeds `bytes` to a [`StreamingRestore`] in pieces of `size` bytes.
fn restore_in_pieces(bytes: &[u8], size: usize, budget: usize) -> Result<Relay, RelayError> {
    let mut c = config();
    c.memory_budget = budget;
    let mut s = StreamingRestore::new(c, Instant::now());
    for piece in bytes.chunks(size) {
        s.feed(piece)?;
    }
    s.finish()
}

#[test]
fn snapshot_decodes_piece_by_piece_at_every_split() {
    for budget in [usize::MAX, 6_000] {
        let h = populated(budget);
        let snap = h.relay.export_snapshot();
        let bytes = snap.to_json();
        assert!(snap.messages.len() > 10, "seqs of two digits are split too");
        // Every split point: two pieces.
        for cut in 0..=bytes.len() {
            let mut d = SnapshotDecoder::new();
            d.feed(&bytes[..cut]).unwrap();
            let mut header = d.take_header();
            let mut messages = d.take_messages();
            d.feed(&bytes[cut..]).unwrap();
            header = header.or(d.take_header());
            messages.extend(d.take_messages());
            let (rest, tail) = d.finish().unwrap();
            messages.extend(tail);
            let header = header.or(rest).unwrap();
            assert_eq!(Snapshot::from_parts(header, messages), snap, "cut at {cut}");
        }
        // Many small pieces, straight into a relay.
        for size in [1, 2, 3, 7, 100, 4096, bytes.len()] {
            let restored = restore_in_pieces(&bytes, size, budget).unwrap();
            assert_eq!(restored.export_snapshot(), snap, "pieces of {size}");
            assert_eq!(restored.high_water(), h.relay.high_water());
            assert_eq!(
                restored.metrics().bytes_stored,
                h.relay.metrics().bytes_stored
            );
        }
        // serde's own layout with whitespace, keys in another order (messages first: held
        // until the header is complete) and unknown keys decode the same.
        let pretty = serde_json::to_vec_pretty(&snap).unwrap();
        assert_eq!(Snapshot::from_json(&pretty).unwrap(), snap);
        let text = String::from_utf8(bytes.clone()).unwrap();
        let unknown = text.replacen('{', r#"{"later":{"x":[1,"]}"]},"#, 1);
        let split = text.find(r#","messages":["#).unwrap();
        let messages_first = format!(
            r#"{{"messages":{},{}}}"#,
            &text[split + 12..text.len() - 1],
            &text[1..split]
        );
        for other in [unknown, messages_first] {
            assert_eq!(
                restore_in_pieces(other.as_bytes(), 5, budget)
                    .unwrap()
                    .export_snapshot(),
                snap,
                "{other}"
            );
        }
    }
}

#[test]
fn snapshot_json_writes_to_json_piece_by_piece_from_any_cursor() {
    let full = populated(usize::MAX).relay.export_snapshot();
    let mut one = full.clone();
    one.messages.truncate(1);
    let empty = Relay::new(config(), Instant::now()).export_snapshot();
    for snap in [full, one, empty] {
        let expected = snap.to_json();
        let json = SnapshotJson::new(snap);
        assert_eq!(json.len(), expected.len() as u64);
        assert_eq!(json.to_vec(), expected);
        for size in [1, 2, 5, 64, 1000] {
            let mut at = json.start();
            let mut starts = Vec::new();
            let mut pieces: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut piece = Vec::new();
                let next = json.write(at, size, &mut piece);
                if piece.is_empty() {
                    break;
                }
                starts.push(at);
                pieces.push(piece);
                at = next;
            }
            assert_eq!(pieces.concat(), expected, "pieces of {size}");
            assert_eq!(pieces.len(), expected.len().div_ceil(size));
            // Any piece again from its cursor (a resent chunk).
            for (i, start) in starts.iter().enumerate().step_by(7) {
                let mut again = Vec::new();
                json.write(*start, size, &mut again);
                assert_eq!(again, pieces[i]);
            }
        }
    }
}

#[test]
fn snapshot_decoder_takes_escaped_and_plain_messages_alike() {
    // Plain strings take the one-copy path, escaped ones the serde path; both must
    // rebuild the same messages (debug builds also compare each one-copy message with
    // the encoder's own).
    let m = |room: &str, seq: u64, from: &str, id: Option<&str>, body: &str| {
        StoredMessage::new(
            room.into(),
            seq,
            from.into(),
            1700 + seq,
            id.map(Into::into),
            body,
        )
    };
    let messages = vec![
        m("plain", 1, "alice", Some("a1"), r#"{"t":"x\"y"}"#),
        m("q\"uote", 1, "b\\ob", Some("i\nd"), r#""s""#),
        m("plain", 2, "ünï", None, "[1, 2]"),
        m("plain", 3, "alice", Some("a3"), "0"),
        m("q\"uote", 2, "alice", Some(""), "null"),
    ];
    let room = |name: &str, head| RoomState {
        name: name.into(),
        head,
        evicted_before: 1,
    };
    let snap = Snapshot {
        version: SNAPSHOT_VERSION,
        node: "n\"ode".into(),
        generation: 1,
        seq_floor: 0,
        rooms: vec![room("plain", 3), room("q\"uote", 2)],
        messages,
    };
    let bytes = snap.to_json();
    assert_eq!(Snapshot::from_json(&bytes).unwrap(), snap);
    for size in [1, 3, 17, bytes.len()] {
        let restored = restore_in_pieces(&bytes, size, usize::MAX)
            .unwrap()
            .export_snapshot();
        assert_eq!(restored.rooms, snap.rooms);
        assert_eq!(restored.messages, snap.messages, "pieces of {size}");
    }
    // A body that is not JSON is refused on either path.
    let text = String::from_utf8(bytes).unwrap();
    for bad in [
        text.replacen(r#""body":0"#, r#""body":0x"#, 1),
        text.replacen(r#""body":"s""#, r#""body":"s"#, 1),
    ] {
        assert!(
            restore_in_pieces(bad.as_bytes(), 4, usize::MAX).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn snapshot_decoder_refuses_bad_input_with_the_offset() {
    let snap = populated(usize::MAX).relay.export_snapshot();
    let bytes = snap.to_json();
    // Cut short anywhere: an error at finish (never a shorter snapshot, never a panic).
    for cut in (0..bytes.len()).step_by(7) {
        let e = restore_in_pieces(&bytes[..cut], 64, usize::MAX).unwrap_err();
        assert!(matches!(e, RelayError::Snapshot(_)), "{e}");
    }
    let err = |b: &[u8]| restore_in_pieces(b, 3, usize::MAX).unwrap_err().to_string();
    // Trailing garbage, a broken message, a message before the rooms.
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b" x");
    assert!(err(&trailing).contains(&format!("byte {}", bytes.len() + 1)));
    let text = String::from_utf8(bytes.clone()).unwrap();
    let broken = text.replacen(r#""seq":"#, r#""seq":-"#, 1);
    assert!(
        err(broken.as_bytes()).contains("invalid"),
        "{}",
        err(broken.as_bytes())
    );
    let twice = r#"{"version":1,"node":"n","generation":1,"rooms":[],"messages":[],"messages":[]}"#;
    assert!(err(twice.as_bytes()).contains("`messages` twice"));
    assert!(err(br#"{"version":1}"#).contains("missing"));
    assert!(err(br#"[1]"#).contains("byte 0: expected `{`"));
    // Restore checks apply as the messages arrive: a skipped seq is refused.
    let mut holes = snap.clone();
    holes.messages.remove(3);
    assert!(err(&holes.to_json()).contains("seq"));
    // A refused header fails every later call too (no panic).
    let mut future = snap.clone();
    future.version = 99;
    let bytes99 = future.to_json();
    let mut s = StreamingRestore::new(config(), Instant::now());
    let (head, rest) = bytes99.split_at(bytes99.len() / 2);
    assert!(
        s.feed(head)
            .unwrap_err()
            .to_string()
            .contains("unknown version 99")
    );
    assert!(s.feed(rest).is_err());
    assert!(s.finish().is_err());
    // Once failed, the decoder stays failed.
    let mut d = SnapshotDecoder::new();
    assert!(d.feed(b"]").is_err());
    assert!(d.feed(b"{}").is_err());
    assert!(d.finish().is_err());
    // A snapshot without messages.
    let empty = Relay::new(config(), Instant::now()).export_snapshot();
    let r = restore_in_pieces(&empty.to_json(), 1, usize::MAX).unwrap();
    assert_eq!(r.export_snapshot(), empty);
}

#[test]
fn replication_is_idempotent_and_converges() {
    for budget in [usize::MAX, 6_000] {
        let mut p = populated(budget);
        p.relay.set_replication(true);
        let snap = p.relay.export_snapshot();
        let mut c = config();
        c.memory_budget = budget;
        let mut s = Relay::restore(c, snap, Instant::now()).unwrap();
        s.set_mode(Mode::Draining);
        // The tail: more publishes (with evictions under the small budget).
        for i in 30..60u64 {
            p.wall = 20_000 + i;
            let room = ["a", "b", "d"][(i % 3) as usize];
            p.publish(1, room, &format!("m{i}"), json!({"i": i}));
            if i % 7 == 0 {
                p.send(2, legacy_msg("leg", &format!("l{i}")));
            }
        }
        let mut events = Vec::new();
        while let Some(e) = p.relay.poll_replication() {
            events.push(e);
        }
        assert!(events.len() >= 30);
        if budget != usize::MAX {
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, ReplicationEvent::Evicted { .. }))
            );
        }
        // Events survive their own encoding.
        for e in &events {
            let enc = serde_json::to_string(e).unwrap();
            assert_eq!(&serde_json::from_str::<ReplicationEvent>(&enc).unwrap(), e);
        }
        // Apply twice (and the first half a third time): the duplicates are ignored.
        let half = events.len() / 2;
        for e in events.iter().chain(&events).chain(&events[..half]) {
            s.apply_replication(e.clone()).unwrap();
        }
        assert_eq!(s.high_water(), p.relay.high_water());
        assert_eq!(
            s.export_snapshot().messages,
            p.relay.export_snapshot().messages
        );
        assert_eq!(s.room_stats(), p.relay.room_stats());
        // No stale store-order slots pile up on the replica.
        assert_eq!(s.order.len(), s.metrics().messages);
        let applied_again = events
            .iter()
            .map(|e| s.apply_replication(e.clone()).unwrap())
            .filter(|a| *a == Applied::Applied)
            .count();
        assert_eq!(applied_again, 0);
    }
    // A gap is an error and changes nothing.
    let mut p = populated(usize::MAX);
    p.relay.set_replication(true);
    let mut s = Relay::restore(config(), p.relay.export_snapshot(), Instant::now()).unwrap();
    p.publish(1, "a", "x1", json!(1));
    p.publish(1, "a", "x2", json!(2));
    let _first = p.relay.poll_replication().unwrap();
    let second = p.relay.poll_replication().unwrap();
    let before = s.high_water();
    assert!(matches!(
        s.apply_replication(second),
        Err(RelayError::Gap {
            expected: 11,
            got: 12,
            ..
        })
    ));
    assert_eq!(s.high_water(), before);
}

// ----- draining and moved -----------------------------------------------------------

#[test]
fn draining_and_moved() {
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", named("alice"));
    h.send(1, json!({"op":"join","room":"r"}));
    assert_eq!(h.publish(1, "r", "m1", json!(1)), 1);
    h.open(2, "legacy", Value::Null);
    h.send(2, json!("0"));
    h.open(3, "quiet", Value::Null); // undetermined: may be legacy, gets nothing yet
    h.relay.set_mode(Mode::Draining);
    assert!(!h.relay.metrics().primary);
    h.check_error(
        1,
        json!({"op":"publish","room":"r","id":"m2","body":2}),
        "read_only",
        json!("m2"),
    );
    assert!(ErrorCode::ReadOnly.retryable());
    // Already-stored ids are still acknowledged (they are not writes).
    h.check(
        1,
        json!({"op":"publish","room":"r","id":"m1","body":1}),
        &[ack(1, "m1", "r", 1)],
    );
    // Legacy writes are dropped; reads still work.
    h.check(2, legacy_msg("u", "lost"), &[]);
    h.check(2, json!("0"), &[text(2, "[]")]);
    let out = h.send(1, json!({"op":"history","room":"r"}));
    assert_eq!(out[0].1["messages"].as_array().unwrap().len(), 1);
    let ep = SignalingEndpoint {
        host: "127.0.0.1".into(),
        port: 9001,
        path: "/".into(),
        key: "peerjs".into(),
        secure: false,
    };
    h.relay
        .announce_moved("node-2", std::slice::from_ref(&ep), 8);
    let moved = json!({"op":"moved","peer_id":"node-2","signaling":[{"host":"127.0.0.1","port":9001,"path":"/","key":"peerjs","secure":false}],"generation":8});
    assert_eq!(h.drain(), vec![(1, moved.clone())]);
    // Relay clients that show up later get welcome, then moved.
    let out = h.open(4, "late", relay_meta());
    assert_eq!(out.len(), 2);
    assert_eq!(out[1], (4, moved.clone()));
    let out = h.send(3, json!({"op":"ping"}));
    assert_eq!(out[1], (3, moved));
    assert_eq!(out[2], (3, json!({"op":"pong"})));
    h.relay.set_mode(Mode::Primary);
    assert_eq!(h.publish(1, "r", "m2", json!(2)), 2);
}

#[test]
fn fan_out_shares_one_payload() {
    let mut h = Harness::new(config());
    h.open_relay(1, "pub", Value::Null);
    for i in 2..=11 {
        h.open_relay(i, &format!("s{i}"), Value::Null);
        h.send(i, json!({"op":"join","room":"r"}));
    }
    h.relay.handle_message(
        h.now,
        1,
        ConnId(1),
        json!({"op":"publish","room":"r","id":"x","body":1}),
    );
    let mut ptrs = Vec::new();
    while let Some(o) = h.relay.poll_output() {
        if let Output::Send {
            message: Outgoing::Object(p),
            ..
        } = o
            && p.json().contains(r#""op":"msg""#)
        {
            ptrs.push(Arc::as_ptr(&p));
        }
    }
    assert_eq!(ptrs.len(), 10);
    assert!(ptrs.iter().all(|p| *p == ptrs[0]));
    assert_eq!(h.relay.metrics().delivered, 10);
    let prom = h.relay.metrics().to_prometheus();
    assert!(
        prom.contains("\nouroboros_relay_delivered_total 10\n"),
        "{prom}"
    );
    assert!(prom.contains("ouroboros_relay_errors_total{code=\"read_only\"} 0\n"));
    assert!(prom.contains("\nouroboros_relay_clients 11\n"));
}

#[test]
fn schema_accepts_client_requests_and_rejects_wrong_shapes() {
    let ok = |def: &str, v: Value| assert_eq!(schema_errors(def, &v), Vec::<String>::new(), "{v}");
    let bad = |def: &str, v: Value| assert!(!schema_errors(def, &v).is_empty(), "{v} passed");
    ok("client", json!({"op":"join","room":"r","since":3}));
    ok(
        "client",
        json!({"op":"publish","room":"r","id":"i","body":null,"client":"me"}),
    );
    ok(
        "client",
        json!({"op":"history","room":"r","before":9,"limit":5}),
    );
    ok("client", json!({"op":"leave","room":"r"}));
    ok("client", json!({"op":"direct","to":"p","body":[1]}));
    ok("client", json!({"op":"ping"}));
    bad("client", json!({"op":"publish","room":"r","id":"i"}));
    bad("client", json!({"op":"join","room":"r","since":-1}));
    bad("client", json!({"op":"fly"}));
    bad("server", json!({"op":"ack","id":"i","room":"r","seq":0}));
    bad(
        "server",
        json!({"op":"joined","room":"r","head":1,"extra":true}),
    );
    bad(
        "server",
        json!({"op":"error","code":"nope","message":"","ref":null}),
    );
    ok(
        "legacy_message",
        json!({"userName":"u","message":"m","extra":1}),
    );
    bad("legacy_message", json!({"userName":"u","message":1}));
    // The Rust wire types produce schema-valid messages.
    let wire = [
        serde_json::to_value(wire::ClientMessage::Join {
            room: "r".into(),
            since: None,
        })
        .unwrap(),
        serde_json::to_value(wire::ClientMessage::History {
            room: "r".into(),
            before: Some(3),
            limit: None,
        })
        .unwrap(),
    ];
    for v in wire {
        ok("client", v);
    }
    // Every error code is in the schema's enum.
    for c in ErrorCode::ALL {
        ok("error_code", json!(c.as_str()));
    }
}

// ----- properties over random operation sequences -----------------------------------

mod prop {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap as Map;

    #[derive(Debug, Clone)]
    enum Op {
        Connect {
            conn: u64,
            declared: bool,
            name: u8,
        },
        Disconnect {
            conn: u64,
        },
        Join {
            conn: u64,
            room: u8,
            since: Option<u64>,
        },
        Leave {
            conn: u64,
            room: u8,
        },
        Publish {
            conn: u64,
            room: u8,
            id: u8,
            size: usize,
        },
        History {
            conn: u64,
            room: u8,
            before: Option<u64>,
            limit: u32,
        },
        Legacy {
            conn: u64,
            kind: u8,
            n: i8,
        },
        Garbage {
            conn: u64,
            text: String,
        },
        Tick {
            ms: u64,
        },
        Drain {
            on: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let conn = 0u64..6;
        prop_oneof![
            (conn.clone(), any::<bool>(), 0u8..4).prop_map(|(conn, declared, name)| Op::Connect {
                conn,
                declared,
                name
            }),
            conn.clone().prop_map(|conn| Op::Disconnect { conn }),
            (conn.clone(), 0u8..4, proptest::option::of(0u64..30))
                .prop_map(|(conn, room, since)| Op::Join { conn, room, since }),
            (conn.clone(), 0u8..4).prop_map(|(conn, room)| Op::Leave { conn, room }),
            (conn.clone(), 0u8..4, 0u8..12, 0usize..300).prop_map(|(conn, room, id, size)| {
                Op::Publish {
                    conn,
                    room,
                    id,
                    size,
                }
            }),
            (
                conn.clone(),
                0u8..4,
                proptest::option::of(0u64..40),
                0u32..8
            )
                .prop_map(|(conn, room, before, limit)| Op::History {
                    conn,
                    room,
                    before,
                    limit
                }),
            (conn.clone(), 0u8..4, any::<i8>()).prop_map(|(conn, kind, n)| Op::Legacy {
                conn,
                kind,
                n
            }),
            (conn.clone(), ".{0,20}").prop_map(|(conn, text)| Op::Garbage { conn, text }),
            (0u64..2000).prop_map(|ms| Op::Tick { ms }),
            any::<bool>().prop_map(|on| Op::Drain { on }),
        ]
    }

    const ROOMS: [&str; 4] = ["a", "b", "global", "bad room"];

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever clients do: no panic; seqs dense and never reused; heads never go
        /// back; the budget holds; legacy connections only get strings; each join
        /// session sees increasing seqs; a replica fed the replication stream and a
        /// restored snapshot both equal the primary.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..120)) {
            let mut c = config();
            c.memory_budget = 3_000;
            c.limits.rate_burst = 20.0;
            c.limits.rate_per_sec = 5.0;
            c.limits.max_rooms_per_client = 3;
            let mut h = Harness::new(c.clone());
            h.relay.set_replication(true);
            let mut replica = Relay::new(c.clone(), h.now);
            let mut open: Map<u64, bool> = Map::new(); // conn -> declared
            let mut legacy: std::collections::HashSet<u64> = Default::default();
            let mut last_seen: Map<(u64, String), u64> = Map::new();
            let mut hw = h.relay.high_water();
            for op in ops {
                h.wall += 1;
                match op {
                    Op::Connect { conn, declared, name } => {
                        let meta = match (declared, name) {
                            (true, 0) => relay_meta(),
                            (true, n) => named(&format!("n{n}")),
                            (false, _) => Value::Null,
                        };
                        h.relay.disconnect(h.now, ConnId(conn));
                        legacy.remove(&conn);
                        last_seen.retain(|(c, _), _| *c != conn);
                        h.relay.connect(h.now, ConnId(conn), ConnInfo { peer_id: format!("p{conn}"), metadata: meta });
                        open.insert(conn, declared);
                    }
                    Op::Disconnect { conn } => {
                        h.relay.disconnect(h.now, ConnId(conn));
                        open.remove(&conn);
                        legacy.remove(&conn);
                        last_seen.retain(|(c, _), _| *c != conn);
                    }
                    Op::Join { conn, room, since } => {
                        last_seen.remove(&(conn, ROOMS[room as usize].to_string()));
                        let mut m = json!({"op":"join","room":ROOMS[room as usize]});
                        if let Some(s) = since { m["since"] = json!(s); }
                        h.relay.handle_message(h.now, h.wall, ConnId(conn), m);
                    }
                    Op::Leave { conn, room } => {
                        h.relay.handle_message(h.now, h.wall, ConnId(conn), json!({"op":"leave","room":ROOMS[room as usize]}));
                    }
                    Op::Publish { conn, room, id, size } => {
                        h.relay.handle_message(h.now, h.wall, ConnId(conn),
                            json!({"op":"publish","room":ROOMS[room as usize],"id":format!("i{id}"),"body":"x".repeat(size)}));
                    }
                    Op::History { conn, room, before, limit } => {
                        let mut m = json!({"op":"history","room":ROOMS[room as usize],"limit":limit});
                        if let Some(b) = before { m["before"] = json!(b); }
                        h.relay.handle_message(h.now, h.wall, ConnId(conn), m);
                    }
                    Op::Legacy { conn, kind, n } => {
                        let s = match kind {
                            0 => n.to_string(),
                            1 => format!(r#"{{"userName":"u{n}","message":"m"}}"#),
                            2 => "ping".to_string(),
                            _ => format!("junk {n}"),
                        };
                        if open.contains_key(&conn) && !open[&conn] && !legacy.contains(&conn) {
                            // First message of an undeclared connection decides.
                            legacy.insert(conn);
                            let before = h.relay.metrics().legacy_clients;
                            h.relay.handle_message(h.now, h.wall, ConnId(conn), json!(s));
                            if h.relay.metrics().legacy_clients == before { legacy.remove(&conn); }
                        } else {
                            h.relay.handle_message(h.now, h.wall, ConnId(conn), json!(s));
                        }
                    }
                    Op::Garbage { conn, text } => {
                        h.relay.handle_message(h.now, h.wall, ConnId(conn), json!({"op": text, "room": 1}));
                    }
                    Op::Tick { ms } => h.now += Duration::from_millis(ms),
                    Op::Drain { on } => h.relay.set_mode(if on { Mode::Draining } else { Mode::Primary }),
                }
                // Outputs: schema-valid (checked in drain), strings only for legacy.
                for (conn, v) in h.drain() {
                    if legacy.contains(&conn) {
                        prop_assert!(v.get("text").is_some() || v.get("close").is_some(), "legacy got {v}");
                    }
                    if v["op"] == "msg" {
                        let key = (conn, v["room"].as_str().unwrap().to_string());
                        let seq = v["seq"].as_u64().unwrap();
                        if let Some(prev) = last_seen.get(&key) {
                            prop_assert!(seq > *prev, "seq {seq} after {prev} on {key:?}");
                        }
                        last_seen.insert(key, seq);
                    }
                }
                // Heads never go back; each room's log is contiguous up to its head.
                let now_hw = h.relay.high_water();
                for (room, head) in &hw {
                    prop_assert!(now_hw.get(room).copied().unwrap_or(0) >= *head);
                }
                hw = now_hw;
                let m = h.relay.metrics();
                prop_assert!(m.bytes_stored <= 3_000 || m.messages <= 1, "{m:?}");
                for (name, st) in h.relay.room_stats() {
                    prop_assert_eq!(st.evicted_before + st.messages as u64, st.head + 1, "room {}", name);
                }
                // The replica follows.
                while let Some(e) = h.relay.poll_replication() {
                    replica.apply_replication(e).unwrap();
                }
                while replica.poll_output().is_some() {}
            }
            prop_assert_eq!(replica.high_water(), h.relay.high_water());
            prop_assert_eq!(replica.export_snapshot().messages, h.relay.export_snapshot().messages);
            let snap = h.relay.export_snapshot();
            let restored = Relay::restore(c, Snapshot::from_json(&snap.to_json()).unwrap(), h.now).unwrap();
            prop_assert_eq!(restored.export_snapshot(), snap);
        }
    }
}

// ----- crash restore: gap, never reusing seqs ---------------------------------------

#[test]
fn crash_restore_opens_a_gap_and_never_reuses_seqs() {
    let mut p = Harness::new(config());
    p.open_relay(1, "p1", named("alice"));
    for i in 1..=5 {
        p.publish(1, "a", &format!("m{i}"), json!(i));
    }
    let backup = p.relay.export_snapshot().to_json();
    // Acknowledged after the backup, then the node dies.
    for i in 6..=8 {
        p.publish(1, "a", &format!("m{i}"), json!(i));
    }
    p.publish(1, "fresh", "f1", json!(1));
    p.publish(1, "fresh", "f2", json!(2));

    let mut s = Relay::restore(
        config(),
        Snapshot::from_json(&backup).unwrap(),
        Instant::now(),
    )
    .unwrap();
    let skipped = s.open_gap(1000);
    assert_eq!(skipped, [("a".to_string(), (6, 1005))].into());
    s.set_gap(Some(
        json!({"reason": "restored from backup", "rooms": {"a": [6, 1005]}}),
    ));
    let mut h = Harness::from_relay(s);
    let out = h.open(1, "alice-new-peer", named("alice"));
    assert_eq!(out[0].1["gap"]["rooms"]["a"], json!([6, 1005]));
    // The client resumes with what it saw on the lost node; new messages are beyond it.
    h.check(
        1,
        json!({"op":"join","room":"a","since":8}),
        &[joined(1, "a", 1005), presence(1, "a", &["alice"], &[])],
    );
    assert_eq!(h.publish(1, "a", "n1", json!("after")), 1006);
    let out = h.send(1, json!({"op":"join","room":"fresh","since":2}));
    assert_eq!(out[0], joined(1, "fresh", 1000));
    assert_eq!(h.publish(1, "fresh", "f3", json!(3)), 1001);
    // Dedup still holds for what the backup had.
    assert_eq!(h.publish(1, "a", "m3", json!(3)), 3);
    // History pages across the gap.
    let out = h.send(1, json!({"op":"history","room":"a","limit":3}));
    let seqs: Vec<u64> = out[0].1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1006, 5, 4]);
    let out = h.send(1, json!({"op":"join","room":"a","since":4}));
    let seqs: Vec<u64> = out.iter().filter_map(|(_, v)| v["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![5, 1006]);
    // A room that only existed for a moment is forgotten, and starts at the floor again.
    h.send(1, json!({"op":"join","room":"brief"}));
    h.send(1, json!({"op":"leave","room":"brief"}));
    assert!(!h.relay.room_stats().contains_key("brief"));
    // The floor and the holes travel to the next generation, by snapshot and by tail.
    let snap = h.relay.start_replication();
    assert_eq!(snap.seq_floor, 1000);
    let mut next = Relay::restore(
        config(),
        Snapshot::from_json(&snap.to_json()).unwrap(),
        Instant::now(),
    )
    .unwrap();
    assert_eq!(next.export_snapshot(), snap);
    assert_eq!(h.publish(1, "a", "n2", json!(2)), 1007);
    assert_eq!(h.publish(1, "other", "o1", json!(1)), 1001);
    while let Some(e) = h.relay.poll_replication() {
        next.apply_replication(e).unwrap();
    }
    assert_eq!(next.high_water(), h.relay.high_water());
    assert_eq!(next.export_snapshot(), h.relay.export_snapshot());
    // Without a floor, holes are refused.
    let mut bad = populated(usize::MAX).relay.export_snapshot();
    bad.messages.remove(3);
    assert!(Relay::restore(config(), bad.clone(), Instant::now()).is_err());
    bad.seq_floor = 10;
    assert!(Relay::restore(config(), bad, Instant::now()).is_ok());
}
