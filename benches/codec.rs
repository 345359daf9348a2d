//! Codec throughput: encode and decode per serialization, chunked BinaryPack bulk
//! messages, and the encode-once fan-out path (`PreEncoded`). Prints one line per figure.
//!
//! `cargo bench --bench codec` (release build; single thread, no I/O).

use bytes::Bytes;
use ouroboros::peer::codec::{Decoder, Encoder, Frame, PreEncoded, Serialization, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Runs `f` repeatedly for about `budget`; returns (iterations, elapsed).
fn run(budget: Duration, mut f: impl FnMut()) -> (u64, Duration) {
    // Warm up.
    for _ in 0..10 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    (n, start.elapsed())
}

/// A ~1 KiB chat-like message.
fn small_message() -> Value {
    serde_json::from_str(&format!(
        r#"{{"type":"msg","room":"lobby","seq":123456,"at":1700000000123,"from":"peer-{}",
        "body":{{"text":"{}","tags":["a","b","c"],"score":0.75,"ok":true}}}}"#,
        "x".repeat(20),
        "héllo wörld ".repeat(75)
    ))
    .expect("valid JSON")
}

fn main() {
    let budget = Duration::from_millis(1500);
    let small = small_message();
    println!("# codec benchmark (single thread)");
    for ser in [
        Serialization::Binary,
        Serialization::Json,
        Serialization::MsgPack,
    ] {
        let mut enc = Encoder::new(ser);
        let frames = enc.encode(&small).expect("encodes");
        let size: usize = frames.iter().map(Frame::len).sum();
        let (n, t) = run(budget, || {
            black_box(enc.encode(black_box(&small)).expect("encodes"));
        });
        let enc_rate = n as f64 / t.as_secs_f64();
        let mut dec = Decoder::new(ser);
        let (n, t) = run(budget, || {
            for f in &frames {
                black_box(dec.decode(f.clone()).expect("decodes"));
            }
        });
        let dec_rate = n as f64 / t.as_secs_f64();
        println!(
            "{ser:<8} small message ({size} B): encode {:>9.0} msgs/s, decode {:>9.0} msgs/s",
            enc_rate, dec_rate
        );
    }

    // Bulk: 64 KiB binary messages (BinaryPack chunks them into 5 frames).
    let bulk = Value::Bin(Bytes::from(
        (0..65_536u32).map(|i| i as u8).collect::<Vec<_>>(),
    ));
    for ser in [
        Serialization::Binary,
        Serialization::MsgPack,
        Serialization::Raw,
    ] {
        let mut enc = Encoder::new(ser);
        let frames = enc.encode(&bulk).expect("encodes");
        let (n, t) = run(budget, || {
            black_box(enc.encode(black_box(&bulk)).expect("encodes"));
        });
        let enc_mbs = n as f64 * 65_536.0 / t.as_secs_f64() / 1e6;
        let mut dec = Decoder::new(ser);
        let (n, t) = run(budget, || {
            for f in &frames {
                black_box(dec.decode(f.clone()).expect("decodes"));
            }
        });
        let dec_mbs = n as f64 * 65_536.0 / t.as_secs_f64() / 1e6;
        println!(
            "{ser:<8} 64 KiB binary ({} frames): encode {:>7.0} MB/s, decode {:>7.0} MB/s",
            frames.len(),
            enc_mbs,
            dec_mbs
        );
    }

    // Fan-out: one message to 1000 connections, encoded per connection vs once.
    let mut encoders: Vec<Encoder> = (0..1000)
        .map(|_| Encoder::new(Serialization::Binary))
        .collect();
    let (n, t) = run(budget, || {
        for e in &mut encoders {
            black_box(e.encode(black_box(&small)).expect("encodes"));
        }
    });
    let per_conn = t.as_secs_f64() / (n as f64 * 1000.0) * 1e9;
    let (n, t) = run(budget, || {
        let pre = PreEncoded::new(Serialization::Binary, &small).expect("encodes");
        for e in &mut encoders {
            black_box(e.encode_pre(&pre).expect("same format"));
        }
    });
    let pre_conn = t.as_secs_f64() / (n as f64 * 1000.0) * 1e9;
    println!(
        "fan-out to 1000 binary connections: encode each {per_conn:.0} ns/conn, PreEncoded {pre_conn:.0} ns/conn"
    );
}
