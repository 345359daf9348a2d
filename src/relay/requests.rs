//! Relay-protocol requests: parsing a request, publish and direct.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use super::wire::{ClientMessage, ErrorCode};
use super::{ConnId, Mode, Payload, Refusal, Relay, StoredMessage, refuse};
use crate::json::push_json_str;

/// Deepest nesting of arrays and objects a message body may have (`too_large` beyond).
/// A body travels inside other JSON — a `msg`, a `history` page (three levels more), a
/// snapshot, replication — and serde_json, which the Rust client and a successor's snapshot
/// decoder read it with, refuses text nested more than 128 deep, while the binary codecs
/// accept 256: a deeper body was stored, and its `history` page or the snapshot holding it
/// could not be read (found by the `relay_messages` fuzz target).
pub const MAX_BODY_DEPTH: usize = 64;

/// `v` nests arrays and objects more than `depth` deep (looks no deeper than that).
fn deeper_than(v: &Value, depth: usize) -> bool {
    match v {
        Value::Array(a) => depth == 0 || a.iter().any(|v| deeper_than(v, depth - 1)),
        Value::Object(o) => depth == 0 || o.values().any(|v| deeper_than(v, depth - 1)),
        _ => false,
    }
}

impl Relay {
    pub(super) fn relay_message(&mut self, now: Instant, wall_ms: u64, conn: ConnId, msg: Value) {
        let msg = match msg {
            Value::String(s) => match serde_json::from_str::<Value>(&s) {
                Ok(v) => v,
                Err(e) => {
                    return self.send_error(
                        conn,
                        ErrorCode::BadRequest,
                        &format!("not a JSON request: {e}"),
                        None,
                    );
                }
            },
            v => v,
        };
        let Value::Object(mut map) = msg else {
            return self.send_error(conn, ErrorCode::BadRequest, "expected a JSON object", None);
        };
        let reference = map
            .get("id")
            .and_then(Value::as_str)
            .or_else(|| map.get("op").and_then(Value::as_str))
            .map(str::to_owned);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.bucket.try_take(now, 1.0) {
            let r = reference.as_deref();
            return self.send_error(
                conn,
                ErrorCode::RateLimited,
                "rate limit exceeded; slow down",
                r,
            );
        }
        if !c.seen {
            c.seen = true;
            if let Some(name) = map.remove("client") {
                let token = map.remove("token");
                self.declare_identity(conn, name, token, reference.as_deref());
            }
        }
        let op_known = matches!(
            map.get("op").and_then(Value::as_str),
            Some("join" | "publish" | "history" | "leave" | "direct" | "ping")
        );
        if !op_known {
            let what = match map.get("op") {
                Some(Value::String(s)) => format!("unknown op {s:?}"),
                Some(_) => "op must be a string".to_owned(),
                None => "missing op".to_owned(),
            };
            return self.send_error(conn, ErrorCode::UnknownOp, &what, reference.as_deref());
        }
        let req = match serde_json::from_value::<ClientMessage>(Value::Object(std::mem::take(
            &mut map,
        ))) {
            Ok(r) => r,
            Err(e) => {
                return self.send_error(
                    conn,
                    ErrorCode::BadRequest,
                    &e.to_string(),
                    reference.as_deref(),
                );
            }
        };
        let result = match req {
            ClientMessage::Join { room, since } => self.join(conn, &room, since),
            ClientMessage::Publish { room, id, body } => {
                self.publish(conn, wall_ms, &room, &id, &body)
            }
            ClientMessage::History {
                room,
                before,
                limit,
            } => self.history(conn, &room, before, limit),
            ClientMessage::Leave { room } => self.leave(conn, &room),
            ClientMessage::Direct { to, body } => self.direct(conn, &to, &body),
            ClientMessage::Ping => {
                let p = self.pong.clone();
                self.send_to(conn, &p);
                Ok(())
            }
        };
        if let Err((code, message)) = result {
            self.send_error(conn, code, &message, reference.as_deref());
        }
    }

    pub(super) fn publish(
        &mut self,
        conn: ConnId,
        wall_ms: u64,
        room: &str,
        id: &str,
        body: &Value,
    ) -> Result<(), Refusal> {
        self.check_room(room)?;
        if id.is_empty() || id.len() > self.config.limits.max_name_bytes {
            return refuse(
                ErrorCode::BadRequest,
                format!("id must be 1-{} bytes", self.config.limits.max_name_bytes),
            );
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let (proto, from) = (c.proto, c.identity.clone());
        if let Some(seq) = self.rooms.get(room).and_then(|r| r.dedup_lookup(&from, id)) {
            // Already stored: acknowledging again is a read, allowed while draining.
            self.m.deduplicated += 1;
            self.send(conn, proto, &ack_payload(id, room, seq));
            return Ok(());
        }
        if self.mode == Mode::Draining {
            return refuse(
                ErrorCode::ReadOnly,
                "the node is handing over; retry after moved",
            );
        }
        let body = self.body_json(body)?;
        if self.config.replicated {
            return self.propose(conn, room, id, from, body, true);
        }
        let r = self.room_or_create(room)?;
        let seq = r.head + 1;
        let msg = StoredMessage::new(r.name.clone(), seq, from, wall_ms, Some(id.into()), &body);
        self.m.published += 1;
        self.send(conn, proto, &ack_payload(id, room, seq));
        self.store(msg);
        Ok(())
    }

    /// `body` as JSON text, refused with `too_large` above `max_message_bytes` or nested
    /// deeper than [`MAX_BODY_DEPTH`].
    fn body_json(&self, body: &Value) -> Result<String, Refusal> {
        if deeper_than(body, MAX_BODY_DEPTH) {
            return refuse(
                ErrorCode::TooLarge,
                format!("body nests arrays and objects more than {MAX_BODY_DEPTH} deep"),
            );
        }
        let body = serde_json::to_string(body).expect("a JSON value always serialises");
        let max = self.config.limits.max_message_bytes;
        if body.len() > max {
            return refuse(
                ErrorCode::TooLarge,
                format!("body is {} bytes; the limit is {max}", body.len()),
            );
        }
        Ok(body)
    }

    pub(super) fn direct(&mut self, conn: ConnId, to: &str, body: &Value) -> Result<(), Refusal> {
        let body = self.body_json(body)?;
        let targets: Vec<ConnId> = self.by_name.get(to).cloned().unwrap_or_default();
        if targets.is_empty() {
            return refuse(
                ErrorCode::UnknownPeer,
                format!("no client {to:?} is connected"),
            );
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let mut s = String::from(r#"{"op":"direct","from":"#);
        push_json_str(&mut s, &c.identity);
        s.push_str(r#","body":"#);
        s.push_str(&body);
        s.push('}');
        let p = Payload::new(s);
        self.m.direct += targets.len() as u64;
        for t in targets {
            self.send_to(t, &p);
        }
        Ok(())
    }
}

/// `{"op":"ack","id","room","seq"}`, written by hand like `direct` above: one per publish, on
/// the path `BENCHMARKS.md` ("Relay fan-out") measures; `wire::ServerMessage::Ack` is the same
/// shape (the relay tests read every output back through it).
pub(super) fn ack_payload(id: &str, room: &str, seq: u64) -> Arc<Payload> {
    let mut s = String::from(r#"{"op":"ack","id":"#);
    push_json_str(&mut s, id);
    s.push_str(r#","room":"#);
    push_json_str(&mut s, room);
    s.push_str(r#","seq":"#);
    s.push_str(&seq.to_string());
    s.push('}');
    Payload::new(s)
}
