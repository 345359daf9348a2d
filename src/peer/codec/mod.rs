//! PeerJS DataConnection serializations: `binary`/`binary-utf8` (BinaryPack with
//! 16300-byte chunking), `json`, `raw` and `msgpack` (stream mode).
//!
//! Sans-IO: an [`Encoder`] turns a [`Value`] into DataChannel [`Frame`]s, a [`Decoder`]
//! turns received frames back into [`Decoded`] items. One encoder and one decoder per
//! connection (chunk ids and msgpack stream state are per connection).
//!
//! # Layout
//!
//! - `mod.rs` (this file): the public API: [`Value`], [`Serialization`], [`Frame`],
//!   [`Decoded`], [`Encoder`], [`Decoder`], [`DecoderLimits`], [`PreEncoded`], [`CodecError`].
//! - `value`: `Value` conveniences, the `Value` ↔ JSON mapping, serde glue ([`to_value`],
//!   [`from_value`]).
//! - `binarypack`: BinaryPack exactly as `peerjs-js-binarypack` 2.1.0 packs and unpacks it.
//! - `js`: the JavaScript number semantics it depends on (V8's `Math.log`, `ToInt32`, `Date`).
//! - `chunk`: peerjs's 16300-byte chunking and the bounded reassembler.
//! - `json`, `msgpack`: the other wire formats (raw needs no module).
//! - tests: `tests` (unit), `vectors` (JS-generated vectors in `protocol/vectors/`),
//!   `proptests` (round trips, shuffled chunks, arbitrary input never panics).
//!
//! The wire formats, the JavaScript quirks we keep and the limits are described in
//! `protocol/serializations.md`.
//!
//! # Hot path: encode once, send to many
//!
//! [`PreEncoded`] holds a message already serialized for one [`Serialization`]; the relay
//! builds it once and hands it to [`Encoder::encode_pre`] for every connection. When the
//! message needs no chunking (BinaryPack ≤ 16300 bytes, any JSON/raw message, msgpack
//! ≤ 32768 bytes) that is a reference-count bump per connection: no re-serialization and
//! no copy of the payload.
//!
//! # Example
//!
//! ```
//! use ouroboros::peer::codec::{Decoded, Decoder, Encoder, Serialization, Value};
//!
//! let mut enc = Encoder::new(Serialization::Binary);
//! let mut dec = Decoder::new(Serialization::Binary);
//! let msg = Value::from_json(serde_json::json!({"hello": [1, 2.5, "x"]}));
//! let mut out = Vec::new();
//! for frame in enc.encode(&msg).unwrap() {
//!     out.extend(dec.decode(frame).unwrap());
//! }
//! assert_eq!(out, vec![Decoded::Message(msg)]);
//! ```

mod binarypack;
mod chunk;
mod js;
mod json;
mod msgpack;
mod value;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

use bytes::Bytes;

pub use value::{from_value, to_value};

/// Largest packed BinaryPack message sent in one frame; bigger ones are chunked
/// (peerjs `util.chunkedMTU`).
pub const CHUNKED_MTU: usize = 16300;
/// A JSON message of this many bytes or more is refused (peerjs `message-too-big`).
pub const JSON_MAX_MESSAGE: usize = CHUNKED_MTU;
/// Largest DataChannel message of a msgpack stream (peerjs `StreamConnection._CHUNK_SIZE`).
pub const MSGPACK_FRAME_SIZE: usize = 32768;

/// The exact BinaryPack bytes of the close control `{__peerData:{type:"close"}}`.
pub const BINARY_CLOSE: &[u8] = b"\x81\xba__peerData\x81\xb4type\xb5close";
/// The exact JSON bytes of the close control.
pub const JSON_CLOSE: &[u8] = br#"{"__peerData":{"type":"close"}}"#;
/// The exact MessagePack bytes of the close control.
pub const MSGPACK_CLOSE: &[u8] = b"\x81\xaa__peerData\x81\xa4type\xa5close";

/// A dynamic PeerJS value: what JavaScript can send through a DataConnection.
///
/// Numbers: decoders produce [`Value::Int`] for integer encodings (exactly, even above
/// 2⁵³ where JavaScript rounds), [`Value::UInt`] only above `i64::MAX`, and
/// [`Value::Float`] for float encodings. Encoders follow JavaScript: a `Float` with an
/// integral value is sent as an integer, like the JS number it stands for.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// JS `null`.
    Null,
    /// JS `undefined` (BinaryPack encodes it as null; decoders produce it for `c1`, `d4–d7`, `c4–c9`).
    Undefined,
    /// A boolean.
    Bool(bool),
    /// An integer (BinaryPack/msgpack integer encodings).
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    UInt(u64),
    /// A non-integer number.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// Binary data (ArrayBuffer / Uint8Array).
    Bin(Bytes),
    /// An array.
    Array(Vec<Value>),
    /// A map/object, in wire order. Keys may be any value (BinaryPack and msgpack allow it);
    /// duplicates are kept as received.
    Map(Vec<(Value, Value)>),
    /// A MessagePack extension value `(type, data)`, kept verbatim so it re-encodes to the
    /// same bytes. Type `-1` is the timestamp extension (a JS `Date` from
    /// `@msgpack/msgpack`); see [`Value::as_timestamp`]. Only msgpack carries extensions:
    /// BinaryPack and JSON send a timestamp like a JS `Date` (BinaryPack: the
    /// `Date.prototype.toString()` string in UTC; JSON: the ISO string of `toJSON()`), and
    /// other extensions like the JS `ExtData` object `{type, data}`.
    Ext(i8, Bytes),
}

/// The serialization a DataConnection declared in its OFFER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Serialization {
    /// BinaryPack with chunking (peerjs default, `"binary"`).
    Binary,
    /// Same wire format as `Binary` (`"binary-utf8"`).
    BinaryUtf8,
    /// UTF-8 JSON in binary frames (`"json"`).
    Json,
    /// Frames passed through unchanged (`"raw"`).
    Raw,
    /// MessagePack stream (`"MsgPack"`).
    MsgPack,
}

impl Serialization {
    /// Parses the `serialization` field of an OFFER payload: `"binary"`, `"binary-utf8"`,
    /// `"default"` (peerjs maps it to BinaryPack), `"json"`, `"raw"`, `"MsgPack"` (also
    /// accepted in lower case). `None` for anything else.
    pub fn from_offer(s: &str) -> Option<Serialization> {
        match s {
            "binary" | "default" => Some(Serialization::Binary),
            "binary-utf8" => Some(Serialization::BinaryUtf8),
            "json" => Some(Serialization::Json),
            "raw" => Some(Serialization::Raw),
            "MsgPack" | "msgpack" => Some(Serialization::MsgPack),
            _ => None,
        }
    }

    /// The string to put in the OFFER payload. `BinaryUtf8` is announced as `"binary"`
    /// (same wire format; what peerjs 1.5 itself sends for both).
    pub fn as_offer_str(self) -> &'static str {
        match self {
            Serialization::Binary | Serialization::BinaryUtf8 => "binary",
            Serialization::Json => "json",
            Serialization::Raw => "raw",
            Serialization::MsgPack => "MsgPack",
        }
    }

    /// True for the two BinaryPack serializations.
    pub fn is_binarypack(self) -> bool {
        matches!(self, Serialization::Binary | Serialization::BinaryUtf8)
    }

    /// Whether peerjs forces the channel to be reliable (ordered) for this serialization
    /// (msgpack is a byte stream and cannot survive reordering).
    pub fn requires_reliable(self) -> bool {
        self == Serialization::MsgPack
    }

    /// True if two serializations share a wire format (so a [`PreEncoded`] made for one
    /// can be sent on the other).
    fn same_wire_format(self, other: Serialization) -> bool {
        self == other || (self.is_binarypack() && other.is_binarypack())
    }
}

impl std::fmt::Display for Serialization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Serialization::Binary => "binary",
            Serialization::BinaryUtf8 => "binary-utf8",
            Serialization::Json => "json",
            Serialization::Raw => "raw",
            Serialization::MsgPack => "MsgPack",
        })
    }
}

/// One DataChannel message.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text (string) message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Frame {
    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// True if the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a decoder yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// An application message.
    Message(Value),
    /// The in-band close control `{__peerData:{type:"close"}}`.
    Close,
}

/// Codec errors. Encoding errors leave the encoder usable. Decoding errors reject the
/// frame (and, for chunk errors, drop that partial message only); the decoder stays usable,
/// except the msgpack stream decoder, which cannot resynchronise and keeps failing with
/// [`CodecError::StreamFailed`] (close the connection).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// BinaryPack cannot encode this number (JS `"Invalid integer"`): ±Infinity or an
    /// integral value of magnitude above 2⁶⁴.
    #[error("Invalid integer: {0} cannot be encoded by BinaryPack")]
    InvalidInteger(f64),
    /// The message is too big: JSON messages of 16300 bytes or more (peerjs
    /// `message-too-big`, "Message too big for JSON channel"), or a received message above
    /// the decoder's `max_message_size`.
    #[error("message too big: {size} bytes (limit {limit})")]
    MessageTooBig {
        /// Size of the message (or of the part seen so far).
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// The serialization cannot carry this value (e.g. `raw` only sends strings and binary).
    #[error("{serialization} serialization cannot carry {what}")]
    Unsupported {
        /// The connection's serialization.
        serialization: Serialization,
        /// What was refused.
        what: &'static str,
    },
    /// A frame of the wrong kind (e.g. a text frame on a BinaryPack connection).
    #[error("unexpected {kind} frame for {serialization} serialization")]
    UnexpectedFrame {
        /// The connection's serialization.
        serialization: Serialization,
        /// `"text"` or `"binary"`.
        kind: &'static str,
    },
    /// The input ended inside a value.
    #[error("truncated input: {0}")]
    Truncated(&'static str),
    /// Malformed input (a reserved type byte, a string JavaScript cannot decode, …).
    #[error("malformed input: {0}")]
    Malformed(&'static str),
    /// Nesting deeper than the limit.
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    /// More values in one message than the limit.
    #[error("more than {0} values in one message")]
    TooManyValues(usize),
    /// An invalid chunk (`{__peerData, n, data, total}`); its partial message was dropped.
    #[error("invalid chunk: {0}")]
    InvalidChunk(&'static str),
    /// No room for a new partial chunked message (only with `max_partial_messages == 0`;
    /// otherwise the oldest partial message is dropped instead).
    #[error("too many partial chunked messages ({messages} messages, {bytes} bytes buffered)")]
    TooManyPartials {
        /// Partial messages held.
        messages: usize,
        /// Bytes held in them.
        bytes: usize,
    },
    /// Invalid JSON.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A [`PreEncoded`] made for another wire format.
    #[error("message pre-encoded for {pre} cannot be sent on a {conn} connection")]
    WrongSerialization {
        /// What the message was encoded for.
        pre: Serialization,
        /// The connection's serialization.
        conn: Serialization,
    },
    /// The msgpack stream failed earlier; it cannot resynchronise.
    #[error("msgpack stream failed earlier; close the connection")]
    StreamFailed,
    /// Converting between a Rust type and a [`Value`] failed.
    #[error("value conversion: {0}")]
    Conversion(String),
}

/// Decoder limits. Every limit is per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderLimits {
    /// Largest message accepted: a reassembled chunked BinaryPack message, a msgpack value
    /// (bytes buffered while it is incomplete), a JSON or raw frame. Default 64 MiB.
    pub max_message_size: usize,
    /// Chunked BinaryPack messages that may be partially received at once; beyond, the
    /// oldest partial message is dropped. Default 16.
    pub max_partial_messages: usize,
    /// Bytes buffered across all partial chunked messages; beyond, the oldest partial
    /// messages are dropped (a single message above it is refused). Default 64 MiB.
    pub max_partial_bytes: usize,
    /// Maximum nesting of arrays/maps. Default 256.
    pub max_depth: usize,
    /// Maximum number of values (scalars and containers) in one message, which bounds
    /// the memory a message can take once decoded. Default 4 Mi.
    pub max_values: usize,
}

impl Default for DecoderLimits {
    fn default() -> Self {
        DecoderLimits {
            max_message_size: 64 << 20,
            max_partial_messages: 16,
            max_partial_bytes: 64 << 20,
            max_depth: 256,
            max_values: 4 << 20,
        }
    }
}

impl DecoderLimits {
    /// Most chunks a message may announce (`total`): what a 16300-byte chunker needs for
    /// `max_message_size`.
    fn max_chunks(&self) -> usize {
        self.max_message_size.div_ceil(CHUNKED_MTU).max(1)
    }
}

/// Per-connection encoder.
#[derive(Debug)]
pub struct Encoder {
    /// Decides the wire format.
    serialization: Serialization,
    /// peerjs's `_dataCount`: the id of the next chunked message, starting at 1.
    next_chunk_id: u64,
}

impl Encoder {
    /// A fresh encoder for one connection.
    pub fn new(serialization: Serialization) -> Self {
        Encoder {
            serialization,
            next_chunk_id: 1,
        }
    }

    /// The serialization this encoder writes.
    pub fn serialization(&self) -> Serialization {
        self.serialization
    }

    /// Encodes one message into the frames to send, in order.
    ///
    /// # Errors
    /// [`CodecError::InvalidInteger`] (BinaryPack and ±∞ or |x| > 2⁶⁴),
    /// [`CodecError::MessageTooBig`] (JSON ≥ 16300 bytes), [`CodecError::Unsupported`]
    /// (`raw` with anything but `Str`/`Bin`), [`CodecError::TooDeep`] (nesting deeper
    /// than 1024).
    pub fn encode(&mut self, value: &Value) -> Result<Vec<Frame>, CodecError> {
        let pre = PreEncoded::new(self.serialization, value)?;
        self.encode_pre(&pre)
    }

    /// Sends a message encoded once with [`PreEncoded`]: no re-serialization, and when no
    /// chunking is needed the frame shares the pre-encoded buffer (no copy).
    ///
    /// # Errors
    /// [`CodecError::WrongSerialization`] if `pre` was made for another wire format.
    pub fn encode_pre(&mut self, pre: &PreEncoded) -> Result<Vec<Frame>, CodecError> {
        if !pre.serialization.same_wire_format(self.serialization) {
            return Err(CodecError::WrongSerialization {
                pre: pre.serialization,
                conn: self.serialization,
            });
        }
        Ok(match (&pre.payload, self.serialization) {
            (Frame::Binary(b), s) if s.is_binarypack() && b.len() > CHUNKED_MTU => {
                let id = self.next_chunk_id;
                self.next_chunk_id += 1;
                chunk::split(id, b)
            }
            (Frame::Binary(b), Serialization::MsgPack) if b.len() > MSGPACK_FRAME_SIZE => (0..b
                .len())
                .step_by(MSGPACK_FRAME_SIZE)
                .map(|start| {
                    Frame::Binary(b.slice(start..(start + MSGPACK_FRAME_SIZE).min(b.len())))
                })
                .collect(),
            (frame, _) => vec![frame.clone()],
        })
    }

    /// Encodes the in-band close control message `{__peerData:{type:"close"}}` (what
    /// peerjs's `close({flush: true})` sends; the receiver closes the connection).
    ///
    /// For `raw` this is empty: peerjs has no in-band close there (it would send the text
    /// `"[object Object]"`, which no receiver interprets), so just close the channel once
    /// the queued frames are flushed.
    pub fn encode_close(&mut self) -> Result<Vec<Frame>, CodecError> {
        Ok(match self.serialization {
            Serialization::Binary | Serialization::BinaryUtf8 => {
                vec![Frame::Binary(Bytes::from_static(BINARY_CLOSE))]
            }
            Serialization::Json => vec![Frame::Binary(Bytes::from_static(JSON_CLOSE))],
            Serialization::MsgPack => vec![Frame::Binary(Bytes::from_static(MSGPACK_CLOSE))],
            Serialization::Raw => Vec::new(),
        })
    }
}

/// A message serialized once for one wire format, to be sent on many connections with
/// [`Encoder::encode_pre`] (cloning it is a reference-count bump).
///
/// For BinaryPack it holds the packed message; chunking (which needs each connection's
/// message counter) happens in `encode_pre` only when the message is over 16300 bytes.
/// `Binary` and `BinaryUtf8` share one `PreEncoded`.
#[derive(Debug, Clone, PartialEq)]
pub struct PreEncoded {
    /// The wire format the payload is in.
    serialization: Serialization,
    /// The whole serialized message (text only for `raw` strings).
    payload: Frame,
}

impl PreEncoded {
    /// Serializes `value` for `serialization`.
    ///
    /// # Errors
    /// As [`Encoder::encode`].
    pub fn new(serialization: Serialization, value: &Value) -> Result<PreEncoded, CodecError> {
        let payload = match serialization {
            Serialization::Binary | Serialization::BinaryUtf8 => {
                Frame::Binary(binarypack::pack(value)?.into())
            }
            Serialization::Json => Frame::Binary(json_checked(json::encode(value)?)?),
            Serialization::Raw => match value {
                Value::Str(s) => Frame::Text(s.clone()),
                Value::Bin(b) => Frame::Binary(b.clone()),
                _ => {
                    return Err(CodecError::Unsupported {
                        serialization,
                        what: "values other than strings and binary",
                    });
                }
            },
            Serialization::MsgPack => Frame::Binary(msgpack::encode(value)?.into()),
        };
        Ok(PreEncoded {
            serialization,
            payload,
        })
    }

    /// Serializes a message given as JSON text (e.g. `serde_json::to_vec` output). For
    /// `json` the bytes are validated and used as they are (no re-serialization); for
    /// `raw` they are sent as one text frame; the other formats parse and re-encode them.
    ///
    /// # Errors
    /// [`CodecError::Json`] if `json` is not valid JSON; otherwise as [`Encoder::encode`].
    pub fn from_json(serialization: Serialization, json: &[u8]) -> Result<PreEncoded, CodecError> {
        match serialization {
            Serialization::Json => {
                serde_json::from_slice::<serde::de::IgnoredAny>(json)?;
                Ok(PreEncoded {
                    serialization,
                    payload: Frame::Binary(json_checked(json.to_vec())?),
                })
            }
            Serialization::Raw => {
                serde_json::from_slice::<serde::de::IgnoredAny>(json)?;
                let text = std::str::from_utf8(json)
                    .map_err(|_| CodecError::Malformed("JSON is not UTF-8"))?;
                Ok(PreEncoded {
                    serialization,
                    payload: Frame::Text(text.to_owned()),
                })
            }
            _ => {
                let value: Value = serde_json::from_slice(json)?;
                PreEncoded::new(serialization, &value)
            }
        }
    }

    /// Serializes any `Serialize` type (through [`to_value`]).
    ///
    /// # Errors
    /// [`CodecError::Conversion`] if `T` does not serialize; otherwise as [`Encoder::encode`].
    pub fn from_serialize<T: serde::Serialize + ?Sized>(
        serialization: Serialization,
        value: &T,
    ) -> Result<PreEncoded, CodecError> {
        PreEncoded::new(serialization, &to_value(value)?)
    }

    /// The serialization it was made for.
    pub fn serialization(&self) -> Serialization {
        self.serialization
    }

    /// Size of the serialized message in bytes (before any chunking).
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// True if the serialized message is empty (only possible for `raw`).
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}

/// Applies peerjs's JSON size rule (`byteLength >= 16300` → `message-too-big`).
fn json_checked(bytes: Vec<u8>) -> Result<Bytes, CodecError> {
    if bytes.len() >= JSON_MAX_MESSAGE {
        return Err(CodecError::MessageTooBig {
            size: bytes.len(),
            limit: JSON_MAX_MESSAGE - 1,
        });
    }
    Ok(bytes.into())
}

/// Per-connection decoder (reassembles chunks, buffers msgpack streams).
#[derive(Debug)]
pub struct Decoder {
    /// Decides the wire format.
    serialization: Serialization,
    /// Size, count and nesting limits.
    limits: DecoderLimits,
    /// Partial chunked BinaryPack messages.
    chunks: chunk::Reassembler,
    /// The msgpack byte stream.
    stream: msgpack::StreamDecoder,
}

impl Decoder {
    /// A fresh decoder for one connection, with [`DecoderLimits::default`].
    pub fn new(serialization: Serialization) -> Self {
        Decoder::with_limits(serialization, DecoderLimits::default())
    }

    /// A fresh decoder with explicit limits.
    pub fn with_limits(serialization: Serialization, limits: DecoderLimits) -> Self {
        Decoder {
            serialization,
            limits,
            chunks: chunk::Reassembler::default(),
            stream: msgpack::StreamDecoder::default(),
        }
    }

    /// The serialization this decoder reads.
    pub fn serialization(&self) -> Serialization {
        self.serialization
    }

    /// Number of chunked messages partially received (for metrics and tests).
    pub fn partial_messages(&self) -> usize {
        self.chunks.partial_messages()
    }

    /// Partial chunked messages dropped so far to make room for newer ones (see
    /// [`DecoderLimits::max_partial_messages`]).
    pub fn evicted_partials(&self) -> u64 {
        self.chunks.evicted()
    }

    /// Feeds one received frame; returns the complete items it finished (possibly none).
    ///
    /// # Errors
    /// The frame is rejected (see [`CodecError`]); the decoder stays usable, except after
    /// a msgpack stream error.
    pub fn decode(&mut self, frame: Frame) -> Result<Vec<Decoded>, CodecError> {
        let ser = self.serialization;
        match ser {
            Serialization::Binary | Serialization::BinaryUtf8 => {
                let Frame::Binary(bytes) = frame else {
                    return Err(CodecError::UnexpectedFrame {
                        serialization: ser,
                        kind: "text",
                    });
                };
                self.check_size(bytes.len())?;
                Ok(self
                    .chunks
                    .handle(bytes, &self.limits)?
                    .into_iter()
                    .collect())
            }
            Serialization::Json => {
                self.check_size(frame.len())?;
                let value = match &frame {
                    Frame::Text(s) => json::decode(s.as_bytes(), &self.limits)?,
                    Frame::Binary(b) => json::decode(b, &self.limits)?,
                };
                Ok(vec![control_or_message(value)])
            }
            Serialization::Raw => {
                self.check_size(frame.len())?;
                Ok(vec![Decoded::Message(match frame {
                    Frame::Text(s) => Value::Str(s),
                    Frame::Binary(b) => Value::Bin(b),
                })])
            }
            Serialization::MsgPack => {
                let Frame::Binary(bytes) = frame else {
                    return Err(CodecError::UnexpectedFrame {
                        serialization: ser,
                        kind: "text",
                    });
                };
                let values = self.stream.feed(&bytes, &self.limits)?;
                Ok(values.into_iter().map(control_or_message).collect())
            }
        }
    }

    fn check_size(&self, size: usize) -> Result<(), CodecError> {
        if size > self.limits.max_message_size {
            return Err(CodecError::MessageTooBig {
                size,
                limit: self.limits.max_message_size,
            });
        }
        Ok(())
    }
}

/// The `__peerData` property of a top-level map, as JavaScript's `obj["__peerData"]`
/// sees it (the last entry with that key wins).
fn peer_data(value: &Value) -> Option<&Value> {
    match value {
        Value::Map(entries) => entries
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == Some("__peerData"))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// True if `peer_data` is the close control `{type: "close"}`.
fn is_close(peer_data: &Value) -> bool {
    peer_data.get("type").and_then(Value::as_str) == Some("close")
}

/// Classifies a decoded JSON/msgpack message: the close control or an application
/// message (only BinaryPack carries chunks).
fn control_or_message(value: Value) -> Decoded {
    if peer_data(&value).is_some_and(is_close) {
        Decoded::Close
    } else {
        Decoded::Message(value)
    }
}
