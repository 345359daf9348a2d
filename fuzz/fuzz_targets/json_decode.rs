//! Arbitrary bytes as one frame of the `json` serialization (a binary frame, or a text
//! frame when the first byte is odd): the decoder must return a value or an error, never
//! panic, and whatever it decodes must encode and decode to the same value (numbers
//! compared as JavaScript numbers: an integral float is sent as an integer).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ouroboros::peer::codec::{
    Decoded, Decoder, DecoderLimits, Encoder, Frame, Serialization, Value,
};

fn limits() -> DecoderLimits {
    DecoderLimits {
        max_message_size: 1 << 20,
        max_values: 100_000,
        ..DecoderLimits::default()
    }
}

/// The number a JS receiver sees.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// Equality as JavaScript sees the decoded value.
fn js_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return x == y;
    }
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| js_eq(a, b))
        }
        (Value::Map(x), Value::Map(y)) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|((ka, va), (kb, vb))| js_eq(ka, kb) && js_eq(va, vb))
        }
        _ => a == b,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let frame = if kind & 1 == 1 {
        Frame::Text(String::from_utf8_lossy(body).into_owned())
    } else {
        Frame::Binary(Bytes::copy_from_slice(body))
    };
    let mut dec = Decoder::with_limits(Serialization::Json, limits());
    let Ok(items) = dec.decode(frame) else {
        return;
    };
    assert_eq!(items.len(), 1, "one JSON frame is one message");
    let Decoded::Message(v) = &items[0] else {
        return;
    };
    let frames = Encoder::new(Serialization::Json)
        .encode(v)
        .expect("a decoded JSON value encodes");
    let mut again = Decoder::with_limits(Serialization::Json, limits());
    let mut out = Vec::new();
    for f in frames {
        out.extend(again.decode(f).expect("our own encoding decodes"));
    }
    match out.as_slice() {
        [Decoded::Message(w)] => assert!(js_eq(v, w), "round trip changed {v:?} into {w:?}"),
        other => panic!("round trip of {v:?} gave {other:?}"),
    }
});
