//! Property tests: round trips for every serialization, chunk reassembly under random
//! interleaving and reordering, msgpack streams re-cut at random places, and "arbitrary
//! input never panics" for every decoder (the bounded stand-in for `cargo fuzz`).

use super::*;
use proptest::prelude::*;

/// Floats whose BinaryPack encoding is their IEEE bits (elsewhere JS's `Math.log`-based
/// encoder garbles them; the JS-generated vectors cover those).
fn packs_exactly(f: f64) -> bool {
    let mut want = vec![0xcb];
    want.extend_from_slice(&f.to_bits().to_be_bytes());
    binarypack::pack(&Value::Float(f)).is_ok_and(|p| p == want)
}

fn arb_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(Value::Undefined),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        (-1000i64..1000).prop_map(Value::Int),
        any::<f64>()
            .prop_filter("finite, non-integral", |f| f.is_finite()
                && f.fract() != 0.0)
            .prop_map(Value::Float),
        (-1e6f64..1e6).prop_map(Value::Float),
        ".{0,40}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| Value::Bin(b.into())),
    ]
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_scalar().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner), 0..8).prop_map(Value::Map),
        ]
    })
}

/// What a value becomes after a BinaryPack round trip: undefined is sent as null, a JS
/// number with an integral value as an integer.
fn binarypack_model(v: &Value) -> Value {
    match v {
        Value::Undefined => Value::Null,
        Value::Float(f) if f.fract() == 0.0 => Value::Int(*f as i64),
        Value::Array(items) => Value::Array(items.iter().map(binarypack_model).collect()),
        Value::Map(e) => Value::Map(
            e.iter()
                .map(|(k, v)| (binarypack_model(k), binarypack_model(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn all_floats_exact(v: &Value) -> bool {
    match v {
        Value::Float(f) => f.fract() == 0.0 || packs_exactly(*f),
        Value::Array(items) => items.iter().all(all_floats_exact),
        Value::Map(e) => e
            .iter()
            .all(|(k, v)| all_floats_exact(k) && all_floats_exact(v)),
        _ => true,
    }
}

/// Top-level maps with a truthy `__peerData` are control messages in peerjs; skip them.
fn not_control(v: &Value) -> bool {
    peer_data(v).is_none_or(|pd| !pd.is_truthy())
}

fn decode_frames(dec: &mut Decoder, frames: Vec<Frame>) -> Vec<Decoded> {
    frames
        .into_iter()
        .flat_map(|f| dec.decode(f).expect("valid frame"))
        .collect()
}

/// What a value becomes after a msgpack round trip.
fn msgpack_model(v: &Value) -> Value {
    match v {
        Value::Undefined => Value::Null,
        Value::Float(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_991.0 => {
            Value::Int(*f as i64)
        }
        Value::Array(items) => Value::Array(items.iter().map(msgpack_model).collect()),
        Value::Map(e) => Value::Map(
            e.iter()
                .map(|(k, v)| (msgpack_model(k), msgpack_model(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// JSON-representable values: string keys, no binary, no undefined, finite numbers.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>()
            .prop_filter("finite, non-integral", |f| f.is_finite()
                && f.fract() != 0.0)
            .prop_map(Value::Float),
        ".{0,30}".prop_map(Value::Str),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((".{0,10}".prop_map(Value::Str), inner), 0..6)
                .prop_map(Value::Map),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn binarypack_round_trip(v in arb_value().prop_filter("exact floats", all_floats_exact)
        .prop_filter("not a control message", not_control)) {
        for ser in [Serialization::Binary, Serialization::BinaryUtf8] {
            let frames = Encoder::new(ser).encode(&v).unwrap();
            let out = decode_frames(&mut Decoder::new(ser), frames);
            prop_assert_eq!(out, vec![Decoded::Message(binarypack_model(&v))]);
        }
    }

    #[test]
    fn msgpack_round_trip(vs in proptest::collection::vec(arb_value(), 1..6), cut in 1usize..5000) {
        let mut enc = Encoder::new(Serialization::MsgPack);
        let mut stream = Vec::new();
        for v in &vs {
            for f in enc.encode(v).unwrap() {
                let Frame::Binary(b) = f else { panic!("binary") };
                stream.extend_from_slice(&b);
            }
        }
        let mut dec = Decoder::new(Serialization::MsgPack);
        let mut out = Vec::new();
        for piece in stream.chunks(cut) {
            out.extend(dec.decode(Frame::Binary(Bytes::copy_from_slice(piece))).unwrap());
        }
        let want: Vec<Decoded> = vs
            .iter()
            .map(|v| {
                let m = msgpack_model(v);
                if peer_data(&m).is_some_and(is_close) { Decoded::Close } else { Decoded::Message(m) }
            })
            .collect();
        prop_assert_eq!(out, want);
    }

    #[test]
    fn json_round_trip(v in arb_json()) {
        let mut enc = Encoder::new(Serialization::Json);
        match enc.encode(&v) {
            Ok(frames) => {
                prop_assert!(frames[0].len() < JSON_MAX_MESSAGE);
                let out = decode_frames(&mut Decoder::new(Serialization::Json), frames);
                let m = binarypack_model(&v);
                let want = if peer_data(&m).is_some_and(is_close) { Decoded::Close } else { Decoded::Message(m) };
                // Floats go through the shortest round-trip representation: exact.
                prop_assert_eq!(out, vec![want]);
            }
            Err(CodecError::MessageTooBig { size, .. }) => prop_assert!(size >= JSON_MAX_MESSAGE),
            Err(e) => return Err(TestCaseError::fail(e.to_string())),
        }
    }

    #[test]
    fn raw_round_trip(s in ".{0,100}", b in proptest::collection::vec(any::<u8>(), 0..100)) {
        let mut enc = Encoder::new(Serialization::Raw);
        let mut dec = Decoder::new(Serialization::Raw);
        for v in [Value::Str(s), Value::Bin(b.into())] {
            let out = decode_frames(&mut dec, enc.encode(&v).unwrap());
            prop_assert_eq!(out, vec![Decoded::Message(v)]);
        }
    }
}

/// Several big messages, their chunks shuffled together.
fn arb_chunked_batch() -> impl Strategy<Value = (Vec<Value>, Vec<(usize, usize)>)> {
    proptest::collection::vec((0usize..60_000, any::<u8>()), 1..5).prop_flat_map(|specs| {
        let msgs: Vec<Value> = specs
            .iter()
            .enumerate()
            .map(|(i, (len, seed))| {
                Value::object([
                    ("i", Value::Int(i as i64)),
                    (
                        "data",
                        Value::Bin(
                            (0..*len)
                                .map(|j| (j as u8).wrapping_mul(*seed))
                                .collect::<Vec<_>>()
                                .into(),
                        ),
                    ),
                ])
            })
            .collect();
        let counts: Vec<usize> = msgs
            .iter()
            .map(|m| {
                binarypack::pack(m)
                    .unwrap()
                    .len()
                    .div_ceil(CHUNKED_MTU)
                    .max(1)
            })
            .collect();
        let order: Vec<(usize, usize)> = counts
            .iter()
            .enumerate()
            .flat_map(|(m, &n)| (0..n).map(move |c| (m, c)))
            .collect();
        (Just(msgs), Just(order).prop_shuffle())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn chunks_reassemble_under_any_interleaving((msgs, order) in arb_chunked_batch()) {
        let mut enc = Encoder::new(Serialization::Binary);
        let frames: Vec<Vec<Frame>> = msgs.iter().map(|m| enc.encode(m).unwrap()).collect();
        let mut dec = Decoder::new(Serialization::Binary);
        let mut out = Vec::new();
        for (m, c) in order {
            out.extend(dec.decode(frames[m][c].clone()).unwrap());
        }
        prop_assert_eq!(dec.partial_messages(), 0);
        prop_assert_eq!(out.len(), msgs.len());
        for msg in &msgs {
            prop_assert!(out.contains(&Decoded::Message(msg.clone())));
        }
    }
}

/// Arbitrary bytes, and valid encodings with random byte edits.
fn arb_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        (
            arb_value(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)
        )
            .prop_map(|(v, edits)| {
                let mut b = binarypack::pack(&v).unwrap_or_default();
                if !b.is_empty() {
                    for (i, x) in edits {
                        let n = b.len();
                        b[i % n] = x;
                    }
                }
                b
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic(input in arb_input()) {
        let limits = DecoderLimits { max_message_size: 1 << 16, max_values: 10_000, ..DecoderLimits::default() };
        for ser in [Serialization::Binary, Serialization::Json, Serialization::Raw, Serialization::MsgPack] {
            let mut dec = Decoder::with_limits(ser, limits);
            let _ = dec.decode(Frame::Binary(input.clone().into()));
            // Split in two: streams and chunk state see partial input.
            let mut dec = Decoder::with_limits(ser, limits);
            let mid = input.len() / 2;
            let _ = dec.decode(Frame::Binary(Bytes::copy_from_slice(&input[..mid])));
            let _ = dec.decode(Frame::Binary(Bytes::copy_from_slice(&input[mid..])));
        }
    }

    #[test]
    fn hostile_chunks_never_panic_and_stay_bounded(
        chunks in proptest::collection::vec(
            (0i64..4, 0u64..6, 0u64..6, 0usize..3000, any::<bool>()), 1..40)
    ) {
        let limits = DecoderLimits {
            max_message_size: 8000,
            max_partial_bytes: 10_000,
            max_partial_messages: 3,
            ..DecoderLimits::default()
        };
        let mut dec = Decoder::with_limits(Serialization::Binary, limits);
        for (id, n, total, len, bin) in chunks {
            let data = if bin { Value::Bin(vec![7u8; len].into()) } else { Value::Int(len as i64) };
            let frame = Value::object([
                ("__peerData", Value::Int(id)),
                ("n", Value::from(n)),
                ("data", data),
                ("total", Value::from(total)),
            ]);
            let _ = dec.decode(Frame::Binary(binarypack::pack(&frame).unwrap().into()));
            prop_assert!(dec.partial_messages() <= 3);
            prop_assert!(dec.chunks.buffered_bytes() <= 10_000);
            prop_assert!(dec.chunks.buffered_bytes() <= 3 * 8000);
        }
    }
}
