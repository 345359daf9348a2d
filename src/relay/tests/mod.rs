//! Relay core tests. Every area drives a [`Harness`] (a relay with a fake clock) and
//! compares the outputs of each step with `check`: one line per case.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::wire::{ErrorCode, SignalingEndpoint};
use super::*;

mod handoff;
mod legacy;
mod limits;
mod properties;
mod protocol;

/// A relay, a fake clock and a tidy view of its outputs.
struct Harness {
    relay: Relay,
    now: Instant,
    wall: u64,
}

/// The published schema; every output the tests see is validated against it.
const SCHEMA: &str = include_str!("../../../protocol/relay.schema.json");

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

fn legacy_msg(user: &str, message: &str) -> Value {
    json!(format!(r#"{{"userName":"{user}","message":"{message}"}}"#))
}
