//! The PeerJS signaling wire format: the only serde types of the signaling server.
//!
//! # Format
//! Every frame is a JSON object `{type, src?, dst?, payload?}` in a text frame. Inbound
//! frames are parsed lazily: only `type` and `dst` are decoded, `payload` stays raw JSON
//! ([`RawValue`]) and is copied verbatim into the relayed frame, which is rebuilt as
//! `{"type":…,"src":…,"dst":…,"payload":…}` (that key order; `payload` left out when the
//! client sent none). See `protocol/signaling.md`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::json::push_json_str;

mod skim;

/// Message types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsgType {
    /// Server → client: registered.
    Open,
    /// Peer is gone (relayed; without `dst`: unregister the sender).
    Leave,
    /// ICE candidate (relayed).
    Candidate,
    /// SDP offer (relayed).
    Offer,
    /// SDP answer (relayed).
    Answer,
    /// The destination never showed up (server → sender; relayed if a client sends it).
    Expire,
    /// Client → server liveness.
    Heartbeat,
    /// Server → client: the id belongs to another token.
    IdTaken,
    /// Server → client: fatal error, the socket closes.
    Error,
}

impl MsgType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MsgType::Open => "OPEN",
            MsgType::Leave => "LEAVE",
            MsgType::Candidate => "CANDIDATE",
            MsgType::Offer => "OFFER",
            MsgType::Answer => "ANSWER",
            MsgType::Expire => "EXPIRE",
            MsgType::Heartbeat => "HEARTBEAT",
            MsgType::IdTaken => "ID-TAKEN",
            MsgType::Error => "ERROR",
        }
    }

    /// Parses a wire name (exact, case-sensitive like the reference).
    pub fn from_name(s: &str) -> Option<MsgType> {
        Some(match s {
            "OPEN" => MsgType::Open,
            "LEAVE" => MsgType::Leave,
            "CANDIDATE" => MsgType::Candidate,
            "OFFER" => MsgType::Offer,
            "ANSWER" => MsgType::Answer,
            "EXPIRE" => MsgType::Expire,
            "HEARTBEAT" => MsgType::Heartbeat,
            "ID-TAKEN" => MsgType::IdTaken,
            "ERROR" => MsgType::Error,
            _ => return None,
        })
    }

    /// Whether the server forwards this type to `dst`.
    pub fn is_relayed(self) -> bool {
        matches!(
            self,
            MsgType::Offer
                | MsgType::Answer
                | MsgType::Candidate
                | MsgType::Leave
                | MsgType::Expire
        )
    }
}

/// Error texts, exactly as the reference server sends them.
pub mod text {
    /// Query lacks `id`, `token` or `key` (or one is empty).
    pub const NO_PARAMS: &str = "No id, token, or key supplied to websocket server";
    /// `key` differs from the server's.
    pub const INVALID_KEY: &str = "Invalid key provided";
    /// The id is registered with another token (sent as `ID-TAKEN`).
    pub const ID_TAKEN: &str = "ID is taken";
    /// `concurrent_limit` clients are registered.
    pub const LIMIT: &str = "Server has reached its concurrent user limit";
    /// Ours: id longer than [`super::MAX_ID_LEN`] bytes.
    pub const ID_TOO_LONG: &str = "Invalid id: longer than 256 bytes";
    /// Ours: id with control characters.
    pub const ID_CONTROL: &str = "Invalid id: contains control characters";
    /// Ours: token longer than [`super::MAX_ID_LEN`] bytes or with control characters.
    pub const BAD_TOKEN: &str =
        "Invalid token: longer than 256 bytes or contains control characters";
    /// Ours: the client's address has too many sockets open.
    pub const ADDRESS_LIMIT: &str = "Too many connections from your address";
    /// Ours: the client exceeded its message rate.
    pub const RATE_LIMITED: &str = "Rate limit exceeded";
    /// Ours: the client sent too many frames that are not JSON.
    pub const MALFORMED: &str = "Too many malformed messages";
    /// Ours, prefix of: a frame above the size limit (`… (limit N bytes)`).
    pub const TOO_BIG: &str = "Message too big";
}

pub use crate::ids::{MAX_ID_LEN, valid_id};

/// `{"type":"OPEN"}`.
pub const OPEN: &str = r#"{"type":"OPEN"}"#;
/// `{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}`.
pub const ID_TAKEN: &str = r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#;

/// `{"type":"ERROR","payload":{"msg":<msg>}}` (serde; the key order is the reference's).
pub fn error_frame(msg: &str) -> String {
    #[derive(Serialize)]
    struct ErrorFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        payload: ErrorPayload<'a>,
    }
    #[derive(Serialize)]
    struct ErrorPayload<'a> {
        msg: &'a str,
    }
    let frame = ErrorFrame {
        kind: MsgType::Error.as_str(),
        payload: ErrorPayload { msg },
    };
    // A struct of strings always serialises.
    serde_json::to_string(&frame).expect("an error frame always serialises")
}

/// `{"type":<kind>,"src":<src>,"dst":<dst>,"payload":<payload>}`; `payload` left out when
/// `None`.
///
/// Written by hand on purpose: this runs once per relayed OFFER/ANSWER/CANDIDATE, the
/// signaling server's hot path (`BENCHMARKS.md`, CPU per relayed message). It sizes the
/// buffer once and copies the raw payload without a serde pass. The tests below and
/// `tests/js/signaling-diff.test.mjs` pin its bytes to the reference server's.
pub fn relay_frame(kind: MsgType, src: &str, dst: &str, payload: Option<&str>) -> String {
    let payload_len = payload.map_or(0, |p| p.len() + 11);
    let mut out = String::with_capacity(40 + src.len() + dst.len() + payload_len);
    out.push_str(r#"{"type":""#);
    out.push_str(kind.as_str());
    out.push_str(r#"","src":"#);
    push_json_str(&mut out, src);
    out.push_str(r#","dst":"#);
    push_json_str(&mut out, dst);
    if let Some(p) = payload {
        out.push_str(r#","payload":"#);
        out.push_str(p);
    }
    out.push('}');
    out
}

/// An inbound client message, borrowed from the frame.
#[derive(Debug)]
pub struct Inbound<'a> {
    /// `type`, if it names a known message type (unknown types are dropped).
    pub kind: Option<MsgType>,
    /// `dst`, if present and a string.
    pub dst: Option<Cow<'a, str>>,
    /// `payload` as raw JSON text, validated (`null` is kept), if present.
    pub payload: Option<&'a str>,
}

/// What a frame turned out to be.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A JSON object; [`Inbound::kind`] says whether it is usable.
    Message(Inbound<'a>),
    /// Valid JSON of the wrong shape (not an object, `type`/`dst` not strings): dropped
    /// silently, like the reference.
    Ignored,
    /// Not JSON: counted; a burst closes the client.
    Malformed,
}

#[derive(Deserialize)]
struct RawInbound<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dst: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "keep_null")]
    payload: Option<&'a RawValue>,
}

fn keep_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue as Deserialize>::deserialize(d).map(Some)
}

/// Decodes a JSON string given as raw JSON without allocating when it has no escapes;
/// `None` if it is not a string.
fn raw_str(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// Parses one inbound frame. Never fails: bad input is [`Parsed::Malformed`] or
/// [`Parsed::Ignored`].
///
/// The usual frame is read by one hand-written pass (`wire/skim.rs`); anything it is not sure
/// of (malformed input, escaped keys, repeated keys, arrays, deep nesting) is decided by
/// serde_json, as every frame was before, so both give the same answers.
pub fn parse(text: &str) -> Parsed<'_> {
    match skim::skim(text) {
        Some(f) => inbound(f.kind, f.dst, f.payload),
        None => parse_serde(text),
    }
}

/// [`parse`] by serde_json alone.
fn parse_serde(text: &str) -> Parsed<'_> {
    if text
        .trim_start_matches([' ', '\n', '\t', '\r'])
        .starts_with('[')
    {
        // serde would read an array as the struct's fields in order; to the reference an
        // array has no `type`, so valid JSON that is an array is ignored.
        return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => Parsed::Ignored,
            Err(_) => Parsed::Malformed,
        };
    }
    match serde_json::from_str::<RawInbound<'_>>(text) {
        Ok(raw) => inbound(
            raw.kind.map(RawValue::get),
            raw.dst.map(RawValue::get),
            raw.payload.map(RawValue::get),
        ),
        Err(e) if e.is_data() => Parsed::Ignored,
        Err(_) => Parsed::Malformed,
    }
}

/// The message from the raw text of its fields (`type` and `dst` count as absent when
/// `null`, like serde's `Option`).
fn inbound<'a>(
    kind: Option<&'a str>,
    dst: Option<&'a str>,
    payload: Option<&'a str>,
) -> Parsed<'a> {
    let kind = match kind {
        None | Some("null") => None,
        Some(k) => match raw_str(k) {
            Some(name) => MsgType::from_name(&name),
            None => return Parsed::Ignored,
        },
    };
    let dst = match dst {
        None | Some("null") => None,
        Some(d) => match raw_str(d) {
            Some(s) => Some(s),
            None => return Parsed::Ignored,
        },
    };
    Parsed::Message(Inbound { kind, dst, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> Inbound<'_> {
        match parse(text) {
            Parsed::Message(m) => m,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn parses_type_dst_and_keeps_payload_raw() {
        let m = msg(
            r#"{"type":"OFFER","payload":{"sdp":{"type":"offer","sdp":"v=0\r\n"},"n":1.50},"dst":"b"}"#,
        );
        assert_eq!(m.kind, Some(MsgType::Offer));
        assert_eq!(m.dst.as_deref(), Some("b"));
        assert_eq!(
            m.payload.unwrap(),
            r#"{"sdp":{"type":"offer","sdp":"v=0\r\n"},"n":1.50}"#
        );
        let frame = relay_frame(MsgType::Offer, "a", "b", m.payload);
        assert_eq!(
            frame,
            r#"{"type":"OFFER","src":"a","dst":"b","payload":{"sdp":{"type":"offer","sdp":"v=0\r\n"},"n":1.50}}"#
        );
    }

    #[test]
    fn payload_null_is_kept_and_absent_is_omitted() {
        let m = msg(r#"{"type":"LEAVE","dst":"x","payload":null}"#);
        assert_eq!(m.payload.unwrap(), "null");
        assert_eq!(
            relay_frame(MsgType::Leave, "s", "x", m.payload),
            r#"{"type":"LEAVE","src":"s","dst":"x","payload":null}"#
        );
        let m = msg(r#"{"type":"LEAVE","dst":"x"}"#);
        assert!(m.payload.is_none());
        assert_eq!(
            relay_frame(MsgType::Leave, "s", "x", None),
            r#"{"type":"LEAVE","src":"s","dst":"x"}"#
        );
    }

    #[test]
    fn escapes_and_odd_shapes() {
        let m = msg(r#"{"type":"OF\u0046ER","dst":"a\"b"}"#);
        assert_eq!(m.kind, Some(MsgType::Offer));
        assert_eq!(m.dst.as_deref(), Some("a\"b"));
        assert!(msg(r#"{"type":"PING"}"#).kind.is_none());
        assert!(msg(r#"{"src":"forged","extra":[1,2]}"#).kind.is_none());
        assert!(matches!(parse("[1,2]"), Parsed::Ignored));
        assert!(matches!(parse(r#" ["OFFER","b",{}]"#), Parsed::Ignored));
        assert!(matches!(parse(r#"["OFFER","b",{}"#), Parsed::Malformed));
        assert!(matches!(parse("42"), Parsed::Ignored));
        assert!(matches!(parse(r#"{"type":5}"#), Parsed::Ignored));
        assert!(matches!(
            parse(r#"{"type":"OFFER","dst":7}"#),
            Parsed::Ignored
        ));
        assert!(matches!(parse("{nope"), Parsed::Malformed));
        assert!(matches!(parse(""), Parsed::Malformed));
        assert!(matches!(
            parse(r#"{"type":"OFFER"} trailing"#),
            Parsed::Malformed
        ));
    }

    #[test]
    fn json_strings_are_escaped_like_javascript() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"\\\n\u{1}é/");
        assert_eq!(s, r#""a\"\\\n\u0001é/""#);
        assert_eq!(
            error_frame("Invalid key provided"),
            r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#
        );
    }

    /// The fast path answers for the frames clients really send (the point of it).
    #[test]
    fn usual_frames_take_the_fast_path() {
        for text in [
            r#"{"type":"OFFER","payload":{"sdp":{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"},"type":"data","connectionId":"dc_x","label":"dc_x","reliable":true,"serialization":"binary"},"dst":"b"}"#,
            r#"{"type":"CANDIDATE","payload":{"candidate":{"candidate":"candidate:1 1 udp 2122260223 10.0.0.1 50000 typ host","sdpMLineIndex":0,"sdpMid":"0"},"type":"data","connectionId":"dc_x"},"dst":"b"}"#,
            r#"{"type":"HEARTBEAT"}"#,
            r#" { "type" : "LEAVE" , "dst" : null , "payload" : [1, -2.5e3, 0, true, false, null, {}, []] } "#,
            r#"{}"#,
        ] {
            assert!(skim::skim(text).is_some(), "{text}");
        }
        for text in [
            r#"{"ty\u0070e":"OFFER"}"#,
            r#"{"type":"OFFER","type":"ANSWER"}"#,
            r#"["OFFER","b",{}]"#,
            r#"{"type":"OFFER"} x"#,
            r#"{"type":"OFFER","payload":01}"#,
            "{\"type\":\"OF\u{1}FER\"}",
        ] {
            assert!(skim::skim(text).is_none(), "{text}");
        }
        let deep = format!("{{\"payload\":{}{}}}", "[".repeat(64), "]".repeat(64));
        assert!(skim::skim(&deep).is_some());
        let deeper = format!("{{\"payload\":{}{}}}", "[".repeat(65), "]".repeat(65));
        assert!(skim::skim(&deeper).is_none());
        assert!(matches!(parse(&deeper), Parsed::Message(_)));
    }

    mod differential {
        use super::*;
        use proptest::prelude::*;

        fn leaf() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("null".to_owned()),
                Just("true".to_owned()),
                Just("false".to_owned()),
                "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,2})?",
                "\"([a-zA-Z0-9 :=.\u{e9}\u{1f600}]|\\\\[nrtbf\"\\\\/]|\\\\u[0-9a-fA-F]{4}){0,40}\"",
                prop_oneof![
                    Just("OFFER"),
                    Just("ANSWER"),
                    Just("CANDIDATE"),
                    Just("LEAVE"),
                    Just("EXPIRE"),
                    Just("HEARTBEAT"),
                    Just("PING"),
                ]
                .prop_map(|t| format!("\"{t}\"")),
            ]
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("type"),
                Just("dst"),
                Just("payload"),
                Just("src"),
                Just("sdp"),
                Just(""),
                Just("ty\\u0070e"),
                Just("d\\\"st"),
            ]
            .prop_map(|k| format!("\"{k}\""))
        }

        fn ws() -> impl Strategy<Value = &'static str> {
            prop_oneof![6 => Just(""), 1 => Just(" "), 1 => Just("\n\t "), 1 => Just("\r")]
        }

        fn value() -> impl Strategy<Value = String> {
            leaf().prop_recursive(5, 40, 6, |inner| {
                prop_oneof![
                    prop::collection::vec((ws(), inner.clone(), ws()), 0..6).prop_map(|items| {
                        let items: Vec<String> = items
                            .into_iter()
                            .map(|(a, v, b)| format!("{a}{v}{b}"))
                            .collect();
                        format!("[{}]", items.join(","))
                    }),
                    prop::collection::vec((key(), ws(), inner, ws()), 0..6).prop_map(|items| {
                        let items: Vec<String> = items
                            .into_iter()
                            .map(|(k, a, v, b)| format!("{k}{a}:{b}{v}"))
                            .collect();
                        format!("{{{}}}", items.join(","))
                    }),
                ]
            })
        }

        /// Frames: mostly objects with the server's keys, sometimes any value, then a few
        /// random edits with bytes that matter to JSON.
        fn frame() -> impl Strategy<Value = String> {
            let object =
                prop::collection::vec((key(), ws(), value(), ws()), 0..6).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(k, a, v, b)| format!("{a}{k}{b}:{a}{v}{b}"))
                        .collect();
                    format!("{{{}}}", items.join(","))
                });
            let base = prop_oneof![4 => object, 1 => value()];
            let edits = prop::collection::vec(
                (
                    any::<prop::sample::Index>(),
                    0u8..3,
                    prop_oneof![
                        3 => prop::sample::select(b"{}[]\",:\\ \n0-.eE+tfnu\x01\x1f".to_vec()),
                        1 => 0u8..0x80,
                    ],
                ),
                0..3,
            );
            (base, edits).prop_map(|(text, edits)| {
                let mut bytes = text.into_bytes();
                for (at, op, byte) in edits {
                    let i = at.index(bytes.len() + 1);
                    match op {
                        0 => bytes.insert(i, byte),
                        1 if i < bytes.len() => {
                            bytes.remove(i);
                        }
                        _ if i < bytes.len() => bytes[i] = byte,
                        _ => bytes.push(byte),
                    }
                }
                // Edits can split a multi-byte character; frames are text.
                String::from_utf8_lossy(&bytes).into_owned()
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

            /// Whatever the fast path decides, serde_json decides the same.
            #[test]
            fn fast_path_agrees_with_serde_json(text in frame()) {
                let fast = format!("{:?}", parse(&text));
                let serde = format!("{:?}", parse_serde(&text));
                prop_assert_eq!(fast, serde, "{}", text);
            }

            /// And on any text at all (no panic, same answer).
            #[test]
            fn any_text_agrees_with_serde_json(text in any::<String>()) {
                let fast = format!("{:?}", parse(&text));
                let serde = format!("{:?}", parse_serde(&text));
                prop_assert_eq!(fast, serde, "{}", text);
            }
        }
    }
}
