//! The handoff wire messages and their two encodings (`protocol/handoff.md`).

use crate::discovery::SignalingEndpoint;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Protocol version carried in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Label of the DataConnection carrying the handoff.
pub const HANDOFF_LABEL: &str = "ouroboros-handoff";

/// Largest encoded message accepted.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;

/// Magic prefix of the binary encoding.
const BINARY_MAGIC: &[u8; 4] = b"OHB1";

/// Heads of every room: room name → highest sequence number.
pub type HighWater = BTreeMap<String, u64>;

/// Where a successor asks to continue an interrupted session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    /// The session to continue.
    pub session: u64,
    /// First chunk not yet verified.
    pub next_chunk: u32,
    /// First tail event not yet received.
    pub tail_next: u64,
}

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefuseCode {
    /// Malformed or unexpected message.
    BadMessage,
    /// Unsupported protocol version.
    Version,
    /// The claimed peer ids do not match the connection.
    WrongPeer,
    /// The successor is not generation + 1.
    WrongGeneration,
    /// Too many attempts.
    RateLimited,
    /// A nonce was used before.
    Replay,
    /// The proof was wrong.
    AuthFailed,
    /// Another successor's session is in progress.
    Busy,
    /// The handoff is already complete.
    Done,
    /// This successor's session was aborted (e.g. heads kept differing); it must stop.
    Aborted,
}

impl RefuseCode {
    /// Whether trying again later can succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            RefuseCode::RateLimited | RefuseCode::Busy | RefuseCode::Replay
        )
    }
}

/// One handoff message. `json` encoding: `{"t":"hello",...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Message {
    /// S → P: opens an attempt.
    Hello {
        /// Protocol version.
        v: u32,
        /// The successor's peer id.
        successor_peer_id: String,
        /// The peer id the successor wants to take over from.
        predecessor_peer_id: String,
        /// The successor's generation.
        generation: u64,
        /// Fresh random nonce, hex.
        nonce: String,
        /// The successor's signaling endpoints (where clients will be moved).
        endpoints: Vec<SignalingEndpoint>,
        /// Continue an interrupted session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    /// P → S: P's nonce and proof.
    Challenge {
        /// Fresh random nonce, hex.
        nonce: String,
        /// P's MAC, hex.
        mac: String,
    },
    /// S → P: S's proof.
    Proof {
        /// S's MAC, hex.
        mac: String,
    },
    /// P → S: the attempt is refused; P closes the connection.
    Refused {
        /// Why.
        code: RefuseCode,
        /// Human-readable detail.
        message: String,
        /// P's fresh nonce, hex, when the refusal answers a `hello` (no `challenge` was
        /// sent): with it the successor derives the session key that authenticates this
        /// refusal (`auth`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nonce: Option<String>,
    },
    /// P → S: authenticated; the transfer starts or resumes.
    Accepted {
        /// Session id.
        session: u64,
        /// Snapshot size in bytes.
        size: u64,
        /// Chunk size in bytes.
        chunk_size: u32,
        /// Number of chunks.
        chunks: u32,
        /// SHA-256 of the whole snapshot, hex.
        sha256: String,
        /// First chunk P will send.
        resume_chunk: u32,
        /// First tail event P will send.
        resume_tail: u64,
    },
    /// P → S: a snapshot chunk.
    Chunk {
        /// Session id.
        session: u64,
        /// Chunk index.
        index: u32,
        /// SHA-256 of `data`, hex.
        sha256: String,
        /// The bytes (base64 in JSON, raw in binary).
        #[serde(with = "b64", default)]
        data: Vec<u8>,
    },
    /// S → P: every chunk below `next` verified.
    ChunkAck {
        /// Session id.
        session: u64,
        /// First chunk not yet verified.
        next: u32,
    },
    /// S → P: resend from `index`.
    ChunkNack {
        /// Session id.
        session: u64,
        /// First chunk to resend.
        index: u32,
    },
    /// P → S: replication events `first..first + events.len()`.
    Tail {
        /// Session id.
        session: u64,
        /// Tail sequence of `events[0]`.
        first: u64,
        /// Encoded replication events (base64 in JSON).
        #[serde(with = "b64_list")]
        events: Vec<Vec<u8>>,
    },
    /// S → P: every tail event below `next` received.
    TailAck {
        /// Session id.
        session: u64,
        /// First tail event not yet received.
        next: u64,
    },
    /// P → S: writes are refused; final heads.
    CutOver {
        /// Session id.
        session: u64,
        /// The tail ends before this sequence.
        tail_end: u64,
        /// Every room's head.
        high_water: HighWater,
    },
    /// S → P: heads verified equal.
    Confirm {
        /// Session id.
        session: u64,
        /// The successor's heads.
        high_water: HighWater,
    },
    /// S → P: heads differ.
    Mismatch {
        /// Session id.
        session: u64,
        /// room → [expected, actual].
        rooms: BTreeMap<String, [u64; 2]>,
    },
    /// S → P: S is primary; move the clients.
    Live {
        /// Session id.
        session: u64,
    },
}

/// A message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than [`MAX_MESSAGE_BYTES`].
    #[error("handoff message of {0} bytes is too large")]
    TooLarge(usize),
    /// Not a valid message.
    #[error("malformed handoff message: {0}")]
    Malformed(String),
}

impl Message {
    /// The `t` name (for logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Challenge { .. } => "challenge",
            Message::Proof { .. } => "proof",
            Message::Refused { .. } => "refused",
            Message::Accepted { .. } => "accepted",
            Message::Chunk { .. } => "chunk",
            Message::ChunkAck { .. } => "chunk_ack",
            Message::ChunkNack { .. } => "chunk_nack",
            Message::Tail { .. } => "tail",
            Message::TailAck { .. } => "tail_ack",
            Message::CutOver { .. } => "cut_over",
            Message::Confirm { .. } => "confirm",
            Message::Mismatch { .. } => "mismatch",
            Message::Live { .. } => "live",
        }
    }

    /// The `json` encoding.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("handoff messages always serialize")
    }

    /// Decodes the `json` encoding.
    ///
    /// # Errors
    /// [`DecodeError`] for oversized or malformed input.
    pub fn from_json(text: &str) -> Result<Self, DecodeError> {
        if text.len() > MAX_MESSAGE_BYTES * 4 / 3 + 1024 {
            return Err(DecodeError::TooLarge(text.len()));
        }
        serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))
    }

    /// The `binary` encoding: `"OHB1"`, u32 BE header length, JSON header without `data`,
    /// then the raw chunk bytes.
    pub fn to_binary(&self) -> Vec<u8> {
        let (header, data) = self.binary_parts();
        encode_binary(&header, data)
    }

    /// What the session key authenticates: the JSON header of the binary encoding (a
    /// chunk's `data` is left out: its `sha256`, in the header, covers it, and the
    /// successor checks it).
    pub fn auth_bytes(&self) -> Vec<u8> {
        self.binary_parts().0.into_bytes()
    }

    /// The binary encoding's JSON header (without `data`) and the raw bytes after it.
    fn binary_parts(&self) -> (String, &[u8]) {
        match self {
            Message::Chunk {
                session,
                index,
                sha256,
                data,
            } => (
                serde_json::to_string(&Message::Chunk {
                    session: *session,
                    index: *index,
                    sha256: sha256.clone(),
                    data: Vec::new(),
                })
                .expect("handoff messages always serialize"),
                data,
            ),
            other => (other.to_json(), &[]),
        }
    }

    /// Decodes the `binary` encoding.
    ///
    /// # Errors
    /// [`DecodeError`] for oversized or malformed input.
    pub fn from_binary(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let malformed = |m: &str| DecodeError::Malformed(m.to_string());
        if bytes.len() < 8 || &bytes[..4] != BINARY_MAGIC {
            return Err(malformed("missing OHB1 prefix"));
        }
        let len = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        let header = bytes
            .get(8..8 + len)
            .ok_or_else(|| malformed("header length beyond the message"))?;
        let rest = &bytes[8 + len..];
        let mut msg: Message =
            serde_json::from_slice(header).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        match &mut msg {
            Message::Chunk { data, .. } => *data = rest.to_vec(),
            _ if !rest.is_empty() => return Err(malformed("trailing bytes after the header")),
            _ => {}
        }
        Ok(msg)
    }
}

/// A handoff message as it travels, with its authentication tag: `auth` (hex) on the wire,
/// a field of the message's JSON object (`json`) or of its `OHB1` header (`binary`, `raw`).
///
/// Every message after the `hello` carries one made with the session key (see
/// `protocol/handoff.md`, "Authenticated messages"), except `challenge` and `proof`, which
/// carry their own proofs; a `hello` may carry one made with the ring secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The message.
    pub msg: Message,
    /// Its tag, hex; `None` when unauthenticated.
    pub auth: Option<String>,
}

impl From<Message> for Sealed {
    fn from(msg: Message) -> Self {
        Sealed { msg, auth: None }
    }
}

/// `"OHB1"` ‖ u32 BE header length ‖ header ‖ data.
fn encode_binary(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + header.len() + data.len());
    out.extend_from_slice(BINARY_MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Only the `auth` field of a message, read beside the message itself.
#[derive(Deserialize)]
struct AuthField {
    #[serde(default)]
    auth: Option<String>,
}

/// `{"auth":"…",` + the rest of `json` (a JSON object), when there is a tag.
fn with_auth(json: String, auth: Option<&str>) -> String {
    match auth {
        Some(a) if json.starts_with('{') => {
            // The tag is hex (checked by whoever made it): no escaping needed.
            let mut out = String::with_capacity(json.len() + a.len() + 10);
            out.push_str("{\"auth\":");
            crate::json::push_json_str(&mut out, a);
            if json.len() > 2 {
                out.push(',');
            }
            out.push_str(&json[1..]);
            out
        }
        _ => json,
    }
}

impl Sealed {
    /// The `json` encoding (the message's object with `auth` added).
    pub fn to_json(&self) -> String {
        with_auth(self.msg.to_json(), self.auth.as_deref())
    }

    /// Decodes the `json` encoding.
    ///
    /// # Errors
    /// [`DecodeError`] for oversized or malformed input.
    pub fn from_json(text: &str) -> Result<Self, DecodeError> {
        let msg = Message::from_json(text)?;
        let auth = serde_json::from_str::<AuthField>(text)
            .map_err(|e| DecodeError::Malformed(e.to_string()))?
            .auth;
        Ok(Sealed { msg, auth })
    }

    /// The message as a JSON value (the `json` serialization of a DataConnection).
    pub fn to_value(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.msg).expect("handoff messages always serialize");
        if let (Some(a), Some(o)) = (&self.auth, v.as_object_mut()) {
            o.insert("auth".into(), serde_json::Value::String(a.clone()));
        }
        v
    }

    /// Reads a JSON value (the `json` serialization of a DataConnection).
    ///
    /// # Errors
    /// [`DecodeError::Malformed`] if it is not a handoff message.
    pub fn from_value(mut v: serde_json::Value) -> Result<Self, DecodeError> {
        let auth = match v.as_object_mut().and_then(|o| o.remove("auth")) {
            Some(serde_json::Value::String(a)) => Some(a),
            _ => None,
        };
        let msg = serde_json::from_value(v).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Ok(Sealed { msg, auth })
    }

    /// The `binary` encoding: as [`Message::to_binary`], `auth` in the header.
    pub fn to_binary(&self) -> Vec<u8> {
        let (header, data) = self.msg.binary_parts();
        encode_binary(&with_auth(header, self.auth.as_deref()), data)
    }

    /// Decodes the `binary` encoding.
    ///
    /// # Errors
    /// [`DecodeError`] for oversized or malformed input.
    pub fn from_binary(bytes: &[u8]) -> Result<Self, DecodeError> {
        let msg = Message::from_binary(bytes)?;
        // `from_binary` checked the prefix and the header's bounds.
        let len = u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
        let auth = serde_json::from_slice::<AuthField>(&bytes[8..8 + len])
            .map_err(|e| DecodeError::Malformed(e.to_string()))?
            .auth;
        Ok(Sealed { msg, auth })
    }
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(D::Error::custom)
    }
}

mod b64_list {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for e in v {
            seq.serialize_element(&base64::engine::general_purpose::STANDARD.encode(e))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.into_iter()
            .map(|s| {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(D::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_encodings_round_trip() {
        let msgs = vec![
            Message::Hello {
                v: 1,
                successor_peer_id: "s".into(),
                predecessor_peer_id: "p".into(),
                generation: 2,
                nonce: "00".repeat(32),
                endpoints: vec![],
                resume: Some(Resume {
                    session: 1,
                    next_chunk: 2,
                    tail_next: 3,
                }),
            },
            Message::Chunk {
                session: 1,
                index: 7,
                sha256: "ab".into(),
                data: vec![0, 1, 2, 255],
            },
            Message::Tail {
                session: 1,
                first: 9,
                events: vec![b"{}".to_vec(), vec![]],
            },
            Message::CutOver {
                session: 1,
                tail_end: 11,
                high_water: [("r".to_string(), 5)].into(),
            },
            Message::Refused {
                code: RefuseCode::Replay,
                message: "x".into(),
                nonce: None,
            },
        ];
        for m in msgs {
            assert_eq!(Message::from_json(&m.to_json()).unwrap(), m);
            assert_eq!(Message::from_binary(&m.to_binary()).unwrap(), m);
        }
        let j = Message::Chunk {
            session: 1,
            index: 0,
            sha256: "x".into(),
            data: vec![1, 2, 3],
        }
        .to_json();
        assert_eq!(
            j,
            r#"{"t":"chunk","session":1,"index":0,"sha256":"x","data":"AQID"}"#
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Message::from_binary(b"").is_err());
        assert!(Message::from_binary(b"OHB1\xff\xff\xff\xff{}").is_err());
        assert!(Message::from_binary(b"XXXX\0\0\0\0").is_err());
        let mut m = Message::Live { session: 1 }.to_binary();
        m.push(1);
        assert!(Message::from_binary(&m).is_err());
        assert!(Message::from_json(r#"{"t":"nope"}"#).is_err());
        assert!(
            Message::from_json(r#"{"t":"chunk","session":1,"index":0,"sha256":"x","data":"!!"}"#)
                .is_err()
        );
        assert!(matches!(
            Message::from_binary(&vec![0u8; MAX_MESSAGE_BYTES + 1]),
            Err(DecodeError::TooLarge(_))
        ));
    }
}
