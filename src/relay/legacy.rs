//! The seed's protocol (BigJumble/Ouroboros): JSON strings of `{userName, message, date}`.
//!
//! A legacy client sends `"n"` (a numeric string: a page of 5 stored messages, newest
//! first, skipping the newest `n`), `JSON.stringify({userName, message})` (stored with
//! `date` stamped and broadcast) or `"ping"`; it only ever receives strings.

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

use std::time::Instant;

use serde_json::Value;

use super::wire::ErrorCode;
use super::{ConnId, Mode, Outgoing, Output, Relay, StoredMessage};
use crate::json::push_json_str;

/// What a legacy string asks for.
#[derive(Debug, PartialEq)]
pub(crate) enum LegacyRequest {
    /// `"ping"`: answer `"pong"`.
    Ping,
    /// Strings the seed ignored (`"pong"`, `"time to die"`).
    Ignored,
    /// A numeric string: a page skipping the newest `n`.
    Page(f64),
    /// A valid chat message; the body (ordered JSON object text, without `date`).
    Store(String),
    /// Not valid JSON or not the `{userName: string, message: string}` shape.
    Invalid,
}

/// Classifies one legacy string the way the seed's `handleData` did.
pub(crate) fn parse(s: &str) -> LegacyRequest {
    match s {
        "ping" => return LegacyRequest::Ping,
        "pong" | "time to die" => return LegacyRequest::Ignored,
        _ => {}
    }
    if let Some(n) = js_number(s) {
        return LegacyRequest::Page(n);
    }
    match serde_json::from_str::<OrderedObject>(s) {
        Ok(obj) if obj.is_chat_message() => LegacyRequest::Store(obj.to_json(None)),
        _ => LegacyRequest::Invalid,
    }
}

/// JavaScript's `Number(s)` for a string; `None` for `NaN`.
pub(crate) fn js_number(s: &str) -> Option<f64> {
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if t.is_empty() {
        return Some(0.0);
    }
    match t {
        "Infinity" | "+Infinity" => return Some(f64::INFINITY),
        "-Infinity" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let radix = |p: &str, r: u32| -> Option<f64> {
        let digits = &t[p.len()..];
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(r)) {
            return None;
        }
        Some(digits.chars().fold(0.0, |acc, c| {
            acc * r as f64 + c.to_digit(r).unwrap_or(0) as f64
        }))
    };
    let lower = t.get(..2).map(str::to_ascii_lowercase);
    match lower.as_deref() {
        Some("0x") => return radix(&t[..2], 16),
        Some("0o") => return radix(&t[..2], 8),
        Some("0b") => return radix(&t[..2], 2),
        _ => {}
    }
    // StrDecimalLiteral: [+-] (digits [. digits?] | . digits) ([eE] [+-] digits)?
    let b = t.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let mut digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        digits += i - f;
    }
    if digits == 0 {
        return None;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    t.parse::<f64>().ok()
}

/// `messages.slice(max(0,len-n-5), max(0,len-n))` as an index range (JS slice semantics).
pub(crate) fn page_range(len: usize, n: f64) -> std::ops::Range<usize> {
    let lenf = len as f64;
    let to_index = |x: f64| -> usize {
        // x >= 0 here (max with 0); NaN cannot occur for finite len and non-NaN n,
        // except inf - inf, which JS also turns into NaN → 0.
        if x.is_nan() {
            0
        } else if x >= lenf {
            len
        } else {
            x.trunc() as usize
        }
    };
    let start = to_index((lenf - n - 5.0).max(0.0));
    let end = to_index((lenf - n).max(0.0));
    if start >= end { 0..0 } else { start..end }
}

/// A JSON object with its keys in wire order (as JavaScript keeps them).
#[derive(Debug)]
pub(crate) struct OrderedObject(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
                let mut pairs: Vec<(String, Box<RawValue>)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    // JSON.parse: a repeated key keeps its first position, takes the last value.
                    match pairs.iter_mut().find(|(pk, _)| *pk == k) {
                        Some(slot) => slot.1 = v,
                        None => pairs.push((k, v)),
                    }
                }
                Ok(OrderedObject(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

impl OrderedObject {
    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    fn string_field(&self, key: &str) -> Option<String> {
        self.get(key)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    }

    /// The seed's shape check: `userName` and `message` present and strings.
    fn is_chat_message(&self) -> bool {
        self.string_field("userName").is_some() && self.string_field("message").is_some()
    }

    /// `JSON.stringify` of the object, with `date` set to `date` if given (in place if
    /// the key exists, else appended), as `{...message, date}` does.
    fn to_json(&self, date: Option<u64>) -> String {
        let mut out = String::from("{");
        let mut date_done = false;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, k);
            out.push(':');
            match (k.as_str(), date) {
                ("date", Some(d)) => {
                    out.push_str(&d.to_string());
                    date_done = true;
                }
                _ => push_value(&mut out, v.get()),
            }
        }
        if let (Some(d), false) = (date, date_done) {
            if !self.0.is_empty() {
                out.push(',');
            }
            out.push_str(r#""date":"#);
            out.push_str(&d.to_string());
        }
        out.push('}');
        out
    }
}

/// Appends a JSON value in `JSON.stringify` form: strings re-escaped, whitespace
/// outside strings removed (numbers are kept as written).
fn push_value(out: &mut String, raw: &str) {
    if raw.starts_with('"')
        && let Ok(s) = serde_json::from_str::<String>(raw)
    {
        push_json_str(out, &s);
        return;
    }
    let mut in_str = false;
    let mut esc = false;
    for c in raw.chars() {
        if in_str {
            out.push(c);
            if esc {
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
}

/// The seed-shaped view of a stored message: the body itself plus `date` if it is a
/// `{userName: string, message: string}` object, else
/// `{"userName": from, "message": body-as-string, "date": ts}`.
pub(crate) fn view(body_json: &str, from: &str, ts: u64) -> String {
    if let Ok(obj) = serde_json::from_str::<OrderedObject>(body_json)
        && obj.is_chat_message()
    {
        return obj.to_json(Some(ts));
    }
    let mut out = String::from(r#"{"userName":"#);
    push_json_str(&mut out, from);
    out.push_str(r#","message":"#);
    match serde_json::from_str::<String>(body_json) {
        Ok(s) => push_json_str(&mut out, &s),
        Err(_) => push_json_str(&mut out, body_json),
    }
    out.push_str(r#","date":"#);
    out.push_str(&ts.to_string());
    out.push('}');
    out
}

impl Relay {
    pub(super) fn legacy_message(&mut self, now: Instant, wall_ms: u64, conn: ConnId, msg: Value) {
        let Value::String(s) = msg else {
            tracing::debug!(conn = conn.0, "legacy client sent a non-string: ignored");
            return self.count_error(ErrorCode::BadRequest);
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.bucket.try_take(now, 1.0) {
            return self.count_error(ErrorCode::RateLimited);
        }
        let from = c.identity.clone();
        c.seen = true;
        match parse(&s) {
            LegacyRequest::Ping => self.out.push_back(Output::Send {
                conn,
                message: Outgoing::Text("pong".into()),
            }),
            LegacyRequest::Ignored => {}
            LegacyRequest::Invalid => {
                tracing::debug!(
                    conn = conn.0,
                    "legacy message failed the shape check: ignored"
                );
                self.count_error(ErrorCode::BadRequest);
            }
            LegacyRequest::Page(n) => {
                let mut page = String::from("[");
                if let Some(r) = self.rooms.get(&self.legacy_room) {
                    let range = page_range(r.log.len(), n);
                    for (i, e) in r.log.range(range).rev().enumerate() {
                        if i > 0 {
                            page.push(',');
                        }
                        page.push_str(e.legacy.as_deref().unwrap_or("null"));
                    }
                }
                page.push(']');
                self.out.push_back(Output::Send {
                    conn,
                    message: Outgoing::Text(page.into()),
                });
            }
            LegacyRequest::Store(body) => {
                if self.mode == Mode::Draining {
                    return self.count_error(ErrorCode::ReadOnly);
                }
                if body.len() > self.config.limits.max_message_bytes {
                    return self.count_error(ErrorCode::TooLarge);
                }
                if self.config.replicated {
                    let room = self.legacy_room.clone();
                    let id = self.legacy_proposal_id(conn);
                    // The seed's protocol has no acknowledgements: a refusal is only counted.
                    if let Err((code, _)) = self.propose(conn, &room, &id, from, body, false) {
                        self.count_error(code);
                    }
                    return;
                }
                let room = self.legacy_room.clone();
                let head = self.rooms.get(&room).map_or(self.seq_floor, |r| r.head);
                let msg = StoredMessage::new(room, head + 1, from, wall_ms, None, &body);
                self.m.published += 1;
                self.store(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_like_js() {
        let check = |s: &str, want: Option<f64>| assert_eq!(js_number(s), want, "{s:?}");
        check("0", Some(0.0));
        check("", Some(0.0));
        check("  12 ", Some(12.0));
        check("-3", Some(-3.0));
        check("1.5", Some(1.5));
        check(".5", Some(0.5));
        check("5.", Some(5.0));
        check("1e2", Some(100.0));
        check("0x10", Some(16.0));
        check("0b101", Some(5.0));
        check("0o17", Some(15.0));
        check("Infinity", Some(f64::INFINITY));
        check("-Infinity", Some(f64::NEG_INFINITY));
        check("inf", None);
        check("NaN", None);
        check("nan", None);
        check("1e", None);
        check("-0x10", None);
        check("12abc", None);
        check("ping", None);
        check("{\"userName\":\"a\"}", None);
        check(".", None);
        check("+", None);
    }

    #[test]
    fn pages_like_js_slice() {
        let check = |len: usize, n: f64, want: std::ops::Range<usize>| {
            assert_eq!(page_range(len, n), want, "len {len} n {n}")
        };
        check(0, 0.0, 0..0);
        check(3, 0.0, 0..3);
        check(12, 0.0, 7..12);
        check(12, 5.0, 2..7);
        check(12, 10.0, 0..2);
        check(12, 12.0, 0..0);
        check(12, 100.0, 0..0);
        check(12, -3.0, 10..12);
        check(12, 1.5, 5..10);
        check(12, f64::INFINITY, 0..0);
        check(12, f64::NEG_INFINITY, 0..0);
    }

    #[test]
    fn requests() {
        assert_eq!(parse("ping"), LegacyRequest::Ping);
        assert_eq!(parse("pong"), LegacyRequest::Ignored);
        assert_eq!(parse("time to die"), LegacyRequest::Ignored);
        assert_eq!(parse("7"), LegacyRequest::Page(7.0));
        assert_eq!(
            parse(r#"{ "userName": "a\u0041", "message": "hi", "x": [1, 2] }"#),
            LegacyRequest::Store(r#"{"userName":"aA","message":"hi","x":[1,2]}"#.into())
        );
        assert_eq!(parse(r#"{"userName":"a"}"#), LegacyRequest::Invalid);
        assert_eq!(
            parse(r#"{"userName":1,"message":"m"}"#),
            LegacyRequest::Invalid
        );
        assert_eq!(parse(r#"["userName"]"#), LegacyRequest::Invalid);
        assert_eq!(parse("not json"), LegacyRequest::Invalid);
    }

    #[test]
    fn views() {
        assert_eq!(
            view(r#"{"userName":"a","message":"m"}"#, "p1", 5),
            r#"{"userName":"a","message":"m","date":5}"#
        );
        assert_eq!(
            view(r#"{"date":1,"userName":"a","message":"m"}"#, "p1", 5),
            r#"{"date":5,"userName":"a","message":"m"}"#
        );
        assert_eq!(
            view(r#""hello""#, "bob", 9),
            r#"{"userName":"bob","message":"hello","date":9}"#
        );
        assert_eq!(
            view(r#"{"t":1}"#, "bob", 9),
            r#"{"userName":"bob","message":"{\"t\":1}","date":9}"#
        );
    }
}
