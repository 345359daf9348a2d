//! Arbitrary bytes as a msgpack stream cut into frames at input-chosen places: the stream
//! decoder must never panic or allocate beyond its limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ouroboros::peer::codec::{Decoder, DecoderLimits, Frame, Serialization};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, body)) = data.split_first() else {
        return;
    };
    let limits = DecoderLimits {
        max_message_size: 1 << 20,
        max_values: 100_000,
        ..DecoderLimits::default()
    };
    let mut dec = Decoder::with_limits(Serialization::MsgPack, limits);
    for piece in body.chunks(usize::from(cut).max(1)) {
        if dec.decode(Frame::Binary(piece.to_vec().into())).is_err() {
            break;
        }
    }
});
