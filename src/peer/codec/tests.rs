//! Unit tests: documented encodings, chunking and reassembly limits, every serialization's
//! round trip (vectors from the JS libraries are in `vectors.rs`).

use super::*;
use serde_json::json;

/// Parses JSON keeping key order (the `json!` macro sorts keys).
fn jv(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

fn bin(frame: &Frame) -> &[u8] {
    match frame {
        Frame::Binary(b) => b,
        Frame::Text(_) => panic!("expected a binary frame"),
    }
}

fn packed(v: &Value) -> Vec<u8> {
    let frames = Encoder::new(Serialization::Binary).encode(v).unwrap();
    assert_eq!(frames.len(), 1);
    bin(&frames[0]).to_vec()
}

fn decode_all(dec: &mut Decoder, frames: Vec<Frame>) -> Vec<Decoded> {
    frames
        .into_iter()
        .flat_map(|f| dec.decode(f).unwrap())
        .collect()
}

#[test]
fn close_control_bytes_are_exact() {
    for ser in [Serialization::Binary, Serialization::BinaryUtf8] {
        let frames = Encoder::new(ser).encode_close().unwrap();
        assert_eq!(
            hex::encode(bin(&frames[0])),
            "81ba5f5f706565724461746181b474797065b5636c6f7365"
        );
        assert_eq!(
            Decoder::new(ser).decode(frames[0].clone()).unwrap(),
            vec![Decoded::Close]
        );
    }
    let close = Value::object([(
        "__peerData",
        Value::object([("type", Value::from("close"))]),
    )]);
    assert_eq!(packed(&close), BINARY_CLOSE);
    for ser in [Serialization::Json, Serialization::MsgPack] {
        let frames = Encoder::new(ser).encode_close().unwrap();
        assert_eq!(frames, Encoder::new(ser).encode(&close).unwrap());
        assert_eq!(
            Decoder::new(ser).decode(frames[0].clone()).unwrap(),
            vec![Decoded::Close]
        );
    }
    assert_eq!(
        Encoder::new(Serialization::Raw).encode_close().unwrap(),
        vec![]
    );
}

#[test]
fn documented_binarypack_encodings() {
    assert_eq!(hex::encode(packed(&Value::Int(-33))), "d0df");
    assert_eq!(
        hex::encode(packed(&Value::Int(1 << 32))),
        "d30000000100000000"
    );
    assert_eq!(hex::encode(packed(&Value::from("café"))), "b5636166c3a9");
    assert_eq!(
        hex::encode(packed(&Value::Float(1.5))),
        "cb3ff8000000000000"
    );
    assert_eq!(hex::encode(packed(&Value::Float(-0.0))), "00");
    assert_eq!(hex::encode(packed(&Value::Float(3.0))), "03");
    assert_eq!(
        hex::encode(packed(&Value::Float(f64::NAN))),
        "cb0000000000000000"
    );
    assert_eq!(hex::encode(packed(&Value::Undefined)), "c0");
    assert_eq!(
        hex::encode(packed(&Value::UInt(1 << 63))),
        "d38000000000000000"
    );
    assert!(matches!(
        Encoder::new(Serialization::Binary).encode(&Value::Float(f64::INFINITY)),
        Err(CodecError::InvalidInteger(_))
    ));
    assert!(matches!(
        Encoder::new(Serialization::Binary).encode(&Value::Float(1e300)),
        Err(CodecError::InvalidInteger(_))
    ));
}

#[test]
fn undefined_tags_consume_nothing() {
    let mut dec = Decoder::new(Serialization::Binary);
    for t in [
        0xc1u8, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7,
    ] {
        // [undefined, 1]: the tag must not eat the following byte.
        let frame = Frame::Binary(Bytes::from(vec![0x92, t, 0x01]));
        assert_eq!(
            dec.decode(frame).unwrap(),
            vec![Decoded::Message(Value::Array(vec![
                Value::Undefined,
                Value::Int(1)
            ]))]
        );
    }
}

#[test]
fn truncated_and_hostile_lengths_are_errors() {
    let mut dec = Decoder::new(Serialization::Binary);
    for input in [
        &b""[..],
        b"\xd9\xff\xff\xff\xff",
        b"\xdd\xff\xff\xff\xff",
        b"\xdf\xff\xff\xff\xff\x01",
        b"\xdb\xff\xff\xff\xffab",
        b"\x92\x01",
        b"\xcd\x01",
        b"\xcb\x00\x00",
    ] {
        assert!(
            dec.decode(Frame::Binary(Bytes::copy_from_slice(input)))
                .is_err(),
            "{input:?}"
        );
    }
    let deep = Bytes::from(vec![0x91; 10_000]);
    assert!(matches!(
        dec.decode(Frame::Binary(deep)),
        Err(CodecError::TooDeep(_))
    ));
    assert!(dec.decode(Frame::Text("x".into())).is_err());
}

fn big_message(len: usize) -> Value {
    Value::object([
        ("name", Value::from("blob")),
        (
            "data",
            Value::Bin(
                (0..len)
                    .map(|i| (i * 7 % 251) as u8)
                    .collect::<Vec<_>>()
                    .into(),
            ),
        ),
    ])
}

#[test]
fn chunking_layout_and_reassembly() {
    let msg = big_message(40_000);
    let whole = binarypack::pack(&msg).unwrap();
    let mut enc = Encoder::new(Serialization::Binary);
    let frames = enc.encode(&msg).unwrap();
    assert_eq!(frames.len(), whole.len().div_ceil(CHUNKED_MTU));
    // First chunk: {__peerData: 1, n: 0, data: <16300 bytes>, total: 3}
    let f0 = bin(&frames[0]);
    let mut head = vec![0x84, 0xba];
    head.extend_from_slice(b"__peerData");
    head.extend_from_slice(&[0x01, 0xb1, b'n', 0x00, 0xb4]);
    head.extend_from_slice(b"data");
    head.extend_from_slice(&[0xda, 0x3f, 0xac]);
    assert_eq!(&f0[..head.len()], &head[..]);
    assert_eq!(
        &f0[head.len()..head.len() + CHUNKED_MTU],
        &whole[..CHUNKED_MTU]
    );
    assert_eq!(&f0[head.len() + CHUNKED_MTU..], b"\xb5total\x03");
    // The next message gets id 2.
    let next = enc.encode(&msg).unwrap();
    assert_eq!(bin(&next[0])[12], 0x02);

    // Reversed order decodes too.
    let mut dec = Decoder::new(Serialization::Binary);
    let mut rev = frames.clone();
    rev.reverse();
    assert_eq!(
        decode_all(&mut dec, rev),
        vec![Decoded::Message(msg.clone())]
    );
    assert_eq!(dec.partial_messages(), 0);

    // A message of exactly 16300 packed bytes is not chunked; one more byte is.
    let probe = |n: usize| Value::Bin(vec![0u8; n].into());
    assert_eq!(binarypack::pack(&probe(16297)).unwrap().len(), 16300);
    assert_eq!(enc.encode(&probe(16297)).unwrap().len(), 1);
    assert_eq!(enc.encode(&probe(16298)).unwrap().len(), 2);
}

fn chunk(id: Value, n: Value, data: Value, total: Value) -> Frame {
    Frame::Binary(
        binarypack::pack(&Value::object([
            ("__peerData", id),
            ("n", n),
            ("data", data),
            ("total", total),
        ]))
        .unwrap()
        .into(),
    )
}

#[test]
fn bad_chunks_are_rejected_and_dropped() {
    let d = || Value::Bin(Bytes::from_static(b"\x01"));
    let mut dec = Decoder::new(Serialization::Binary);
    let bad = [
        chunk(1.into(), 0.into(), d(), 0.into()),
        chunk(1.into(), 2.into(), d(), 2.into()),
        chunk(1.into(), (-1).into(), d(), 2.into()),
        chunk(1.into(), 0.into(), "x".into(), 2.into()),
        chunk(1.into(), 0.into(), d(), (1i64 << 40).into()),
        chunk("x".into(), 0.into(), d(), 2.into()),
        chunk(1.into(), Value::Float(0.5), d(), 2.into()),
    ];
    for frame in bad {
        assert!(matches!(
            dec.decode(frame),
            Err(CodecError::InvalidChunk(_))
        ));
    }
    assert_eq!(dec.partial_messages(), 0);
    // Duplicate n drops the partial message.
    assert_eq!(
        dec.decode(chunk(7.into(), 0.into(), d(), 3.into()))
            .unwrap(),
        vec![]
    );
    assert_eq!(dec.partial_messages(), 1);
    assert!(
        dec.decode(chunk(7.into(), 0.into(), d(), 3.into()))
            .is_err()
    );
    assert_eq!(dec.partial_messages(), 0);
    // Mismatched total drops it too.
    dec.decode(chunk(8.into(), 0.into(), d(), 3.into()))
        .unwrap();
    assert!(
        dec.decode(chunk(8.into(), 1.into(), d(), 4.into()))
            .is_err()
    );
    assert_eq!(dec.partial_messages(), 0);
    // Too many partial messages: the oldest is dropped to make room.
    let limits = DecoderLimits {
        max_partial_messages: 2,
        ..DecoderLimits::default()
    };
    let mut dec = Decoder::with_limits(Serialization::Binary, limits);
    dec.decode(chunk(1.into(), 0.into(), d(), 2.into()))
        .unwrap();
    dec.decode(chunk(2.into(), 0.into(), d(), 2.into()))
        .unwrap();
    assert_eq!(
        dec.decode(chunk(3.into(), 0.into(), d(), 2.into()))
            .unwrap(),
        vec![]
    );
    assert_eq!(dec.partial_messages(), 2);
    assert_eq!(dec.evicted_partials(), 1);
    // Messages 2 and 3 complete; message 1 lost its first chunk and starts over.
    assert_eq!(
        dec.decode(chunk(2.into(), 1.into(), d(), 2.into()))
            .unwrap(),
        vec![Decoded::Message(Value::Int(1))]
    );
    assert_eq!(
        dec.decode(chunk(3.into(), 1.into(), d(), 2.into()))
            .unwrap(),
        vec![Decoded::Message(Value::Int(1))]
    );
    assert_eq!(
        dec.decode(chunk(1.into(), 1.into(), d(), 2.into()))
            .unwrap(),
        vec![]
    );
    assert_eq!(dec.partial_messages(), 1);
    // Byte budget: a new message evicts older partials; one message above it is refused.
    let limits = DecoderLimits {
        max_partial_bytes: 10,
        ..DecoderLimits::default()
    };
    let six = || Value::Bin(Bytes::from_static(b"\x01\x01\x01\x01\x01\x01"));
    let mut dec = Decoder::with_limits(Serialization::Binary, limits);
    dec.decode(chunk(1.into(), 0.into(), six(), 3.into()))
        .unwrap();
    dec.decode(chunk(2.into(), 0.into(), six(), 3.into()))
        .unwrap();
    assert_eq!(dec.partial_messages(), 1);
    assert!(matches!(
        dec.decode(chunk(2.into(), 1.into(), six(), 3.into())),
        Err(CodecError::MessageTooBig { .. })
    ));
    assert_eq!(dec.partial_messages(), 0);
}

/// A chunk frame with `pad` trailing bytes (BinaryPack ignores them, like peerjs).
fn padded(frame: Frame, pad: usize) -> Frame {
    let mut b = bin(&frame).to_vec();
    b.resize(b.len() + pad, 0);
    Frame::Binary(b.into())
}

#[test]
fn a_chunk_slice_is_charged_what_it_keeps_alive() {
    // The attack: 1-byte chunks, each padded to 256 KiB. Charged 1 byte each before, they
    // pinned 256 KiB each (≈16 GiB across 16 partial messages of 4117 chunks).
    let one = || Value::Bin(Bytes::from_static(b"\x01"));
    let mut dec = Decoder::new(Serialization::Binary);
    for n in 0..64 {
        let f = padded(chunk(1.into(), n.into(), one(), 4000.into()), 256 * 1024);
        assert_eq!(dec.decode(f).unwrap(), vec![]);
    }
    // Small slices were copied out: 64 bytes retained, no frame kept alive.
    assert_eq!(dec.chunks.buffered_bytes(), 64);
    // A slice that is most of its frame is kept and charged the whole frame.
    let big = Value::Bin(vec![7u8; 1000].into());
    let f = padded(chunk(2.into(), 0.into(), big, 2.into()), 100);
    let frame_len = f.len();
    dec.decode(f).unwrap();
    assert_eq!(dec.chunks.buffered_bytes(), 64 + frame_len);
    // The budget counts retained bytes: padded chunks cannot pin more than it.
    let limits = DecoderLimits {
        max_partial_bytes: 1 << 20,
        ..DecoderLimits::default()
    };
    let mut dec = Decoder::with_limits(Serialization::Binary, limits);
    let half = || Value::Bin(vec![1u8; 128 * 1024].into());
    for n in 0..64 {
        let f = padded(chunk(3.into(), n.into(), half(), 4000.into()), 100 * 1024);
        let _ = dec.decode(f);
        assert!(dec.chunks.buffered_bytes() <= 1 << 20);
    }
}

#[test]
fn message_size_limit_applies_to_reassembly() {
    let limits = DecoderLimits {
        max_message_size: 20_000,
        ..DecoderLimits::default()
    };
    let mut dec = Decoder::with_limits(Serialization::Binary, limits);
    let frames = Encoder::new(Serialization::Binary)
        .encode(&big_message(40_000))
        .unwrap();
    let results: Vec<_> = frames.into_iter().map(|f| dec.decode(f)).collect();
    assert!(results.iter().any(|r| r.is_err()));
    assert_eq!(dec.partial_messages(), 0);
}

#[test]
fn json_serialization() {
    let mut enc = Encoder::new(Serialization::Json);
    let v = jv(r#"{"b": [1, 2.5, "x", null, true], "a": {"c": -3}}"#);
    let frames = enc.encode(&v).unwrap();
    assert_eq!(
        bin(&frames[0]),
        br#"{"b":[1,2.5,"x",null,true],"a":{"c":-3}}"#.as_slice()
    );
    let mut dec = Decoder::new(Serialization::Json);
    assert_eq!(
        dec.decode(frames[0].clone()).unwrap(),
        vec![Decoded::Message(v.clone())]
    );
    // Text frames (peerjs ≤ 1.4) and a BOM are accepted.
    assert_eq!(
        dec.decode(Frame::Text("\u{feff}[1]".into())).unwrap(),
        vec![Decoded::Message(Value::Array(vec![Value::Int(1)]))]
    );
    // JSON.stringify semantics.
    let odd = Value::Map(vec![
        (Value::Int(1), Value::Float(2.0)),
        (Value::from("u"), Value::Undefined),
        (Value::from("n"), Value::Float(f64::NAN)),
        (
            Value::from("b"),
            Value::Bin(Bytes::from_static(b"\x01\x02")),
        ),
    ]);
    assert_eq!(
        bin(&enc.encode(&odd).unwrap()[0]),
        br#"{"1":2,"n":null,"b":[1,2]}"#.as_slice()
    );
    // Too big: >= 16300 bytes.
    let big = Value::from("x".repeat(16_298));
    assert!(matches!(
        enc.encode(&big),
        Err(CodecError::MessageTooBig { size: 16_300, .. })
    ));
    assert_eq!(
        enc.encode(&Value::from("x".repeat(16_297))).unwrap().len(),
        1
    );
    assert!(
        dec.decode(Frame::Binary(Bytes::from_static(b"{nope")))
            .is_err()
    );
}

#[test]
fn raw_serialization() {
    let mut enc = Encoder::new(Serialization::Raw);
    let mut dec = Decoder::new(Serialization::Raw);
    for v in [
        Value::from("héllo"),
        Value::Bin(Bytes::from_static(b"\x00\xff")),
    ] {
        let frames = enc.encode(&v).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(matches!(frames[0], Frame::Text(_)), v.as_str().is_some());
        assert_eq!(decode_all(&mut dec, frames), vec![Decoded::Message(v)]);
    }
    assert!(matches!(
        enc.encode(&Value::Int(1)),
        Err(CodecError::Unsupported { .. })
    ));
}

#[test]
fn msgpack_stream_spans_and_packs_frames() {
    let mut enc = Encoder::new(Serialization::MsgPack);
    let big = big_message(100_000);
    let frames = enc.encode(&big).unwrap();
    assert_eq!(frames.len(), 4);
    assert!(frames.iter().all(|f| f.len() <= MSGPACK_FRAME_SIZE));
    // Re-cut the stream of three messages at odd places.
    let small = Value::from_json(json!({"a": [1, -2, 3.5], "s": "ü"}));
    let mut stream = Vec::new();
    for v in [&small, &big, &small] {
        for f in enc.encode(v).unwrap() {
            stream.extend_from_slice(bin(&f));
        }
    }
    let mut dec = Decoder::new(Serialization::MsgPack);
    let mut out = Vec::new();
    for piece in stream.chunks(7777) {
        out.extend(
            dec.decode(Frame::Binary(Bytes::copy_from_slice(piece)))
                .unwrap(),
        );
    }
    assert_eq!(
        out,
        vec![
            Decoded::Message(small.clone()),
            Decoded::Message(big),
            Decoded::Message(small)
        ]
    );
    // A malformed stream fails for good.
    assert!(
        dec.decode(Frame::Binary(Bytes::from_static(b"\xc1")))
            .is_err()
    );
    assert!(matches!(
        dec.decode(Frame::Binary(Bytes::from_static(b"\x01"))),
        Err(CodecError::StreamFailed)
    ));
}

#[test]
fn msgpack_limits() {
    let limits = DecoderLimits {
        max_message_size: 1000,
        ..DecoderLimits::default()
    };
    let mut dec = Decoder::with_limits(Serialization::MsgPack, limits);
    // A bin32 header announcing 4 GiB is refused at once, without waiting or allocating.
    assert!(matches!(
        dec.decode(Frame::Binary(Bytes::from_static(b"\xc6\xff\xff\xff\xff"))),
        Err(CodecError::MessageTooBig { .. })
    ));
    let mut dec = Decoder::new(Serialization::MsgPack);
    assert!(matches!(
        dec.decode(Frame::Binary(Bytes::from(vec![0x91; 1000]))),
        Err(CodecError::TooDeep(_))
    ));
}

#[test]
fn pre_encoded_shares_the_buffer() {
    let msg = jv(r#"{"type": "msg", "room": "r", "seq": 7}"#);
    let pre = PreEncoded::new(Serialization::Binary, &msg).unwrap();
    let mut a = Encoder::new(Serialization::Binary);
    let mut b = Encoder::new(Serialization::BinaryUtf8);
    let fa = a.encode_pre(&pre).unwrap();
    let fb = b.encode_pre(&pre).unwrap();
    assert_eq!(fa, fb);
    assert_eq!(bin(&fa[0]).as_ptr(), bin(&fb[0]).as_ptr());
    assert!(matches!(
        Encoder::new(Serialization::Json).encode_pre(&pre),
        Err(CodecError::WrongSerialization { .. })
    ));
    let json_pre = PreEncoded::from_json(Serialization::Json, br#"{"a":1}"#).unwrap();
    assert_eq!(
        bin(&Encoder::new(Serialization::Json)
            .encode_pre(&json_pre)
            .unwrap()[0]),
        br#"{"a":1}"#.as_slice()
    );
    assert!(PreEncoded::from_json(Serialization::Json, b"{").is_err());
    let via_json = PreEncoded::from_json(
        Serialization::Binary,
        br#"{"type":"msg","room":"r","seq":7}"#,
    )
    .unwrap();
    assert_eq!(via_json, pre);
    // Big pre-encoded BinaryPack messages are chunked with each connection's ids.
    let big = PreEncoded::new(Serialization::Binary, &big_message(40_000)).unwrap();
    assert_eq!(a.encode_pre(&big).unwrap().len(), 3);
}

#[test]
fn serde_helpers() {
    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Msg {
        kind: String,
        seq: u64,
        ratio: f64,
        tags: Vec<String>,
        blob: Vec<u8>,
    }
    let m = Msg {
        kind: "x".into(),
        seq: 9,
        ratio: 0.25,
        tags: vec!["a".into()],
        blob: vec![1, 2],
    };
    let v = to_value(&m).unwrap();
    assert_eq!(v.as_map().unwrap()[0].0.as_str(), Some("kind"));
    assert_eq!(v.get("seq").and_then(Value::as_u64), Some(9));
    assert_eq!(from_value::<Msg>(&v).unwrap(), m);
    // Bin deserializes into Vec<u8>.
    let with_bin = Value::object([
        ("kind", Value::from("x")),
        ("seq", Value::Float(9.0)),
        ("ratio", Value::Float(0.25)),
        ("tags", Value::Array(vec![])),
        ("blob", Value::Bin(Bytes::from_static(b"\x01\x02"))),
    ]);
    assert_eq!(from_value::<Msg>(&with_bin).unwrap().blob, vec![1, 2]);
    assert!(from_value::<Msg>(&Value::Int(1)).is_err());
    assert_eq!(
        Value::from_json(v.to_json()).get("ratio"),
        Some(&Value::Float(0.25))
    );
}

#[test]
fn offer_strings() {
    for (s, ser) in [
        ("binary", Serialization::Binary),
        ("default", Serialization::Binary),
        ("binary-utf8", Serialization::BinaryUtf8),
        ("json", Serialization::Json),
        ("raw", Serialization::Raw),
        ("MsgPack", Serialization::MsgPack),
    ] {
        assert_eq!(Serialization::from_offer(s), Some(ser));
    }
    assert_eq!(Serialization::from_offer("bson"), None);
    assert_eq!(Serialization::BinaryUtf8.as_offer_str(), "binary");
    assert_eq!(Serialization::MsgPack.as_offer_str(), "MsgPack");
}

#[test]
fn timestamps() {
    let t = Value::timestamp(1_709_211_909, 7_000_000);
    assert_eq!(t.as_timestamp(), Some((1_709_211_909, 7_000_000)));
    assert_eq!(
        Value::timestamp(5, 0),
        Value::Ext(-1, Bytes::from_static(&[0, 0, 0, 5]))
    );
    assert_eq!(Value::timestamp(-5, 1).as_timestamp(), Some((-5, 1)));
    assert_eq!(t.to_json(), json!("2024-02-29T13:05:09.007Z"));
    let packed = binarypack::pack(&t).unwrap();
    let s = "Thu Feb 29 2024 13:05:09 GMT+0000 (Coordinated Universal Time)";
    assert_eq!(&packed[3..], s.as_bytes());
}
