//! A sequence of hostile chunk frames `{__peerData, n, data, total}` built from the input:
//! reassembly must never panic, and partial state must stay within the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ouroboros::peer::codec::{Decoder, DecoderLimits, Encoder, Frame, Serialization, Value};

fuzz_target!(|data: &[u8]| {
    let limits = DecoderLimits {
        max_message_size: 64 * 1024,
        max_partial_messages: 4,
        max_partial_bytes: 96 * 1024,
        ..DecoderLimits::default()
    };
    let mut dec = Decoder::with_limits(Serialization::Binary, limits);
    let mut enc = Encoder::new(Serialization::Binary);
    // Each op: id, n, total, kind, len (u16), then `len` bytes of chunk data.
    let mut rest = data;
    while rest.len() >= 6 {
        let (id, n, total, kind) = (rest[0] % 6, rest[1] % 12, rest[2] % 12, rest[3]);
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]])) % 20_000;
        rest = &rest[6..];
        let take = len.min(rest.len());
        let (payload, tail) = rest.split_at(take);
        rest = tail;
        let field = |x: u8| match kind % 4 {
            0 => Value::Int(i64::from(x)),
            1 => Value::Float(f64::from(x) + 0.5),
            2 => Value::Str(x.to_string()),
            _ => Value::Int(-i64::from(x)),
        };
        let chunk = Value::object([
            (
                "__peerData",
                if kind & 0x10 == 0 {
                    Value::Int(i64::from(id))
                } else {
                    field(id)
                },
            ),
            (
                "n",
                if kind & 0x20 == 0 {
                    Value::Int(i64::from(n))
                } else {
                    field(n)
                },
            ),
            (
                "data",
                if kind & 0x40 == 0 {
                    Value::Bin(payload.to_vec().into())
                } else {
                    Value::Null
                },
            ),
            (
                "total",
                if kind & 0x80 == 0 {
                    Value::Int(i64::from(total))
                } else {
                    field(total)
                },
            ),
        ]);
        // Raw frames: send the chunk map itself, never re-chunked by our encoder.
        let Ok(frames) = enc.encode(&chunk) else {
            continue;
        };
        for f in frames {
            let _ = dec.decode(f);
        }
        assert!(dec.partial_messages() <= 4);
    }
    // Also the raw input as a frame (it may be a valid chunk or a close).
    let _ = dec.decode(Frame::Binary(data.to_vec().into()));
});
