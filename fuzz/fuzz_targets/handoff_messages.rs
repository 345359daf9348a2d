//! Handoff messages from arbitrary bytes: the `binary` (`OHB1`) and `json` decoders of a
//! message with its authentication tag (`Sealed`, what a connection reads), and the `OHBF`
//! defragmenter fed a sequence of fuzzed values (fragments, whole messages, strings,
//! maps). Never a panic; every message that decodes encodes and decodes to itself (tag
//! included) in both encodings, and, cut into fragments anywhere, reassembles to itself.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ouroboros::handoff::{Defragmenter, Sealed, to_values};
use ouroboros::peer::codec::{Serialization, Value};

/// One value a handoff connection may receive.
#[derive(Arbitrary, Debug)]
enum Received {
    /// A binary message as is.
    Bin(Vec<u8>),
    /// An `OHBF` fragment.
    Fragment {
        last: u8,
        body: Vec<u8>,
    },
    /// A string (the `json` encoding as text).
    Str(String),
    /// An object (the `json` encoding as a map), from JSON text.
    Map(String),
    Int(i64),
}

impl Received {
    fn value(self) -> Value {
        match self {
            Received::Bin(b) => Value::Bin(b.into()),
            Received::Fragment { last, body } => {
                let mut f = b"OHBF".to_vec();
                f.push(last % 3);
                f.extend_from_slice(&body);
                Value::Bin(f.into())
            }
            Received::Str(s) => Value::Str(s),
            Received::Map(s) => match serde_json::from_str(&s) {
                Ok(v) => Value::from_json(v),
                Err(_) => Value::Str(s),
            },
            Received::Int(i) => Value::Int(i),
        }
    }
}

/// Every encoding of `m` decodes to `m`; its binary form cut at `cuts` reassembles to `m`.
fn check(m: &Sealed, cuts: &[u8]) {
    assert_eq!(&Sealed::from_json(&m.to_json()).expect("own json"), m);
    let bin = m.to_binary();
    assert_eq!(&Sealed::from_binary(&bin).expect("own binary"), m);
    for ser in [
        Serialization::Json,
        Serialization::Raw,
        Serialization::Binary,
    ] {
        let mut d = Defragmenter::default();
        let values = to_values(ser, m);
        let n = values.len();
        for (i, v) in values.into_iter().enumerate() {
            let got = d.push(v).expect("own frames decode");
            assert_eq!(got.is_some(), i + 1 == n);
            if let Some(got) = got {
                assert_eq!(&got, m);
            }
        }
    }
    // Fragments of fuzz-chosen sizes (the sender may cut anywhere).
    let mut d = Defragmenter::default();
    let mut rest = &bin[..];
    let mut sizes = cuts.iter().cycle();
    loop {
        let take = usize::from(*sizes.next().unwrap_or(&0))
            .max(1)
            .min(rest.len());
        let (part, tail) = rest.split_at(take);
        rest = tail;
        let mut f = b"OHBF".to_vec();
        f.push(u8::from(rest.is_empty()));
        f.extend_from_slice(part);
        let got = d.push(Value::Bin(f.into())).expect("fragments decode");
        if rest.is_empty() {
            assert_eq!(got.as_ref(), Some(m));
            break;
        }
        assert!(got.is_none());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(m) = Sealed::from_binary(body) {
                check(&m, body);
            }
        }
        1 => {
            if let Ok(m) = Sealed::from_json(&String::from_utf8_lossy(body)) {
                check(&m, body);
            }
        }
        _ => {
            let mut u = Unstructured::new(body);
            let Ok(values) = Vec::<Received>::arbitrary(&mut u) else {
                return;
            };
            let mut d = Defragmenter::default();
            for v in values {
                if let Ok(Some(m)) = d.push(v.value()) {
                    check(&m, &[7, 1, 200]);
                }
            }
        }
    }
});
