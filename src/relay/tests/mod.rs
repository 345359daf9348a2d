//! Relay core tests. Every area drives a [`Harness`] (a relay with a fake clock) and
//! compares the outputs of each step with `check`: one line per case.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::wire::ErrorCode;
use super::*;

mod fuzz;
mod handoff;
mod identity;
mod legacy;
mod limits;
mod properties;
mod protocol;
mod replicated;

/// A relay, a fake clock and a tidy view of its outputs.
struct Harness {
    relay: Relay,
    now: Instant,
    wall: u64,
}

/// The published schema; every output the tests see is validated against it.
const SCHEMA: &str = include_str!("../../../protocol/relay.schema.json");

thread_local! {
    /// One compiled validator per `$defs` entry, built on first use.
    static VALIDATORS: std::cell::RefCell<HashMap<String, std::rc::Rc<jsonschema::Validator>>> =
        std::cell::RefCell::new(HashMap::new());
}

/// Validates `v` against `#/$defs/<def>` of the published schema (with the `jsonschema`
/// crate, every keyword the file uses, `pattern` included). Returns the violations.
fn schema_errors(def: &str, v: &Value) -> Vec<String> {
    let validator = VALIDATORS.with(|cache| {
        cache
            .borrow_mut()
            .entry(def.to_owned())
            .or_insert_with(|| {
                let root: Value = serde_json::from_str(SCHEMA).expect("schema is JSON");
                assert!(root["$defs"].get(def).is_some(), "no $defs/{def}");
                let schema = json!({
                    "$schema": root["$schema"],
                    "$defs": root["$defs"],
                    "$ref": format!("#/$defs/{def}"),
                });
                std::rc::Rc::new(jsonschema::validator_for(&schema).expect("the schema compiles"))
            })
            .clone()
    });
    validator
        .iter_errors(v)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
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
                    assert_eq!(parsed, p.value());
                    (conn.0, parsed)
                }
                Output::Send {
                    conn,
                    message: Outgoing::Text(s),
                } => (conn.0, json!({ "text": &*s })),
                Output::Close { conn, reason } => {
                    (conn.0, json!({ "close": format!("{reason:?}") }))
                }
                Output::Propose(p) => (
                    p.conn.0,
                    json!({ "propose": { "room": p.room, "id": p.id, "from": p.from, "body": p.body, "ack": p.ack } }),
                ),
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
