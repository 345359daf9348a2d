//! `OHBF` fragments on `raw` connections.

use crate::handoff::Message;
use crate::handoff::Sealed;
use crate::handoff::transport::{Defragmenter, RAW_FRAME_MAX, to_values};
use crate::peer::codec::{Serialization, Value};

fn chunk(len: usize) -> Message {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    Message::Chunk {
        session: 7,
        index: 3,
        sha256: crate::handoff::sha256_hex(&data),
        data,
    }
}

fn frame_len(v: &Value) -> usize {
    match v {
        Value::Bin(b) => b.len(),
        other => panic!("raw frames are binary, got {other:?}"),
    }
}

#[test]
fn a_default_chunk_is_one_raw_frame() {
    let m = Sealed::from(chunk(crate::handoff::HandoffConfig::default().chunk_size));
    let frames = to_values(Serialization::Raw, &m);
    assert_eq!(frames.len(), 1);
    assert!(frame_len(&frames[0]) <= RAW_FRAME_MAX);
    let mut d = Defragmenter::default();
    assert_eq!(d.push(frames[0].clone()).unwrap(), Some(m));
}

#[test]
fn big_messages_are_fragmented_and_reassembled() {
    let m = Sealed {
        msg: chunk(700 * 1024),
        auth: Some("ab".repeat(32)),
    };
    let frames = to_values(Serialization::Raw, &m);
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| frame_len(f) <= RAW_FRAME_MAX));
    let mut d = Defragmenter::default();
    assert_eq!(d.push(frames[0].clone()).unwrap(), None);
    assert_eq!(d.push(frames[1].clone()).unwrap(), None);
    assert_eq!(d.push(frames[2].clone()).unwrap(), Some(m.clone()));
    // The defragmenter is ready for the next message.
    let small = Sealed::from(Message::Live { session: 7 });
    let f = to_values(Serialization::Raw, &small);
    assert_eq!(d.push(f[0].clone()).unwrap(), Some(small));
    // Binary connections never fragment (BinaryPack chunks them instead).
    assert_eq!(to_values(Serialization::Binary, &m).len(), 1);
}

#[test]
fn fragments_beyond_the_message_limit_are_refused_and_skipped() {
    let m = Sealed::from(chunk(super::super::message::MAX_MESSAGE_BYTES + 1));
    let frames = to_values(Serialization::Raw, &m);
    let mut d = Defragmenter::default();
    let last = frames.len() - 1;
    for f in &frames[..last] {
        assert_eq!(d.push(f.clone()).unwrap(), None);
    }
    let err = d.push(frames[last].clone()).unwrap_err();
    assert!(matches!(err, crate::handoff::FrameError::TooLarge), "{err}");
    // A truncated fragment sequence followed by a whole message: the whole one decodes.
    let m2 = Sealed::from(chunk(600 * 1024));
    let frames = to_values(Serialization::Raw, &m2);
    assert_eq!(d.push(frames[0].clone()).unwrap(), None);
    let live = Sealed::from(Message::Live { session: 1 });
    let f = to_values(Serialization::Raw, &live);
    assert_eq!(d.push(f[0].clone()).unwrap(), Some(live));
    // Garbage is an error, not a panic.
    assert!(
        d.push(Value::Bin(bytes::Bytes::from_static(b"OHBF")))
            .is_err()
    );
    assert!(
        d.push(Value::Bin(bytes::Bytes::from_static(b"nonsense")))
            .is_err()
    );
}
