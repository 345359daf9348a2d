//! PeerJS DataConnection serializations: `binary`/`binary-utf8` (BinaryPack with
//! 16300-byte chunking), `json`, `raw` and `msgpack` (stream mode).
//!
//! Sans-IO: an [`Encoder`] turns a [`Value`] into DataChannel [`Frame`]s, a [`Decoder`]
//! turns received frames back into [`Decoded`] items. One encoder and one decoder per
//! connection (chunk ids and msgpack stream state are per connection).

use bytes::Bytes;

/// A dynamic PeerJS value: what JavaScript can send through a DataConnection.
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
    /// A map/object, in wire order.
    Map(Vec<(Value, Value)>),
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

/// One DataChannel message.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text (string) message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

/// What a decoder yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// An application message.
    Message(Value),
    /// The in-band close control `{__peerData:{type:"close"}}`.
    Close,
}

/// Codec errors.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Not implemented yet (stub).
    #[error("codec not implemented")]
    Unimplemented,
}

/// Per-connection encoder.
#[derive(Debug)]
pub struct Encoder {
    serialization: Serialization,
}

impl Encoder {
    /// A fresh encoder for one connection.
    pub fn new(serialization: Serialization) -> Self {
        Encoder { serialization }
    }
    /// Encodes one message into the frames to send, in order.
    pub fn encode(&mut self, value: &Value) -> Result<Vec<Frame>, CodecError> {
        let _ = (value, self.serialization);
        Err(CodecError::Unimplemented)
    }
    /// Encodes the in-band close control message.
    pub fn encode_close(&mut self) -> Result<Vec<Frame>, CodecError> {
        Err(CodecError::Unimplemented)
    }
}

/// Per-connection decoder (reassembles chunks, buffers msgpack streams).
#[derive(Debug)]
pub struct Decoder {
    serialization: Serialization,
}

impl Decoder {
    /// A fresh decoder for one connection.
    pub fn new(serialization: Serialization) -> Self {
        Decoder { serialization }
    }
    /// Feeds one received frame; returns the complete items it finished (possibly none).
    pub fn decode(&mut self, frame: Frame) -> Result<Vec<Decoded>, CodecError> {
        let _ = (frame, self.serialization);
        Err(CodecError::Unimplemented)
    }
}
