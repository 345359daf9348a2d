//! The node's memory account under the worst inputs of issue 14 (point 3), measured as the
//! process's resident set size (`/proc/self/statm` × the system's page size): a real node
//! in-process, real WebRTC and WebSocket clients.
//!
//! The bound: RSS grows by at most `--memory-budget` plus [`OVERHEAD`] (allocator slack,
//! the clients of this test, webrtc's buffers), whatever these inputs do. `Node::start` sets
//! glibc's mmap threshold (see `node::return_large_frees_to_the_system`); to compare with a
//! build without it, run with `MALLOC_MMAP_THRESHOLD_=131072`.

mod support;

use std::time::Duration;

use ouroboros::client::{Client, ClientConfig, Event, Transport};
use ouroboros::node::status::current_rss;
use ouroboros::peer::codec::{Encoder, Serialization};
use ouroboros::peer::{ConnectOptions, Frame, Peer, PeerConfig, PreEncoded, Value};
use serde_json::json;
use support::start_node;

const WAIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
/// The node's `--memory-budget` here.
const BUDGET: u64 = 32 * MIB;
/// Growth allowed beyond the budget: measured 5–12 MiB with these inputs (allocator slack,
/// the test's own clients and webrtc's buffers); 40 MiB leaves room for noise.
const OVERHEAD: u64 = 40 * MIB;

fn rss() -> u64 {
    current_rss().expect("RSS readable on Linux")
}

async fn client(
    node: &ouroboros::node::Node,
    name: &str,
    ser: Serialization,
    transport: Transport,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<Event>) {
    let mut cfg = ClientConfig::new(name);
    cfg.serialization = ser;
    cfg.transport = transport;
    Client::connect(node.record(), cfg)
        .await
        .expect("client connects")
}

/// A chunk frame `{__peerData: id, n, data: [1 byte], total}` padded to `size` bytes
/// (BinaryPack ignores trailing bytes, as peerjs does).
fn padded_chunk(id: i64, n: i64, total: i64, size: usize) -> Frame {
    let v = Value::object([
        ("__peerData", Value::Int(id)),
        ("n", Value::Int(n)),
        ("data", Value::Bin(vec![1u8].into())),
        ("total", Value::Int(total)),
    ]);
    let pre = PreEncoded::new(Serialization::Binary, &v).expect("packs");
    let mut frames = Encoder::new(Serialization::Binary)
        .encode_pre(&pre)
        .expect("one frame");
    let Some(Frame::Binary(b)) = frames.pop() else {
        panic!("a binary frame");
    };
    let mut bytes = b.to_vec();
    bytes.resize(size, 0);
    Frame::Binary(bytes.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_within_the_memory_budget_under_the_worst_inputs() {
    let budget = format!("{}MiB", BUDGET / MIB);
    let (node, _dir) = start_node(&[
        "--memory-budget",
        &budget,
        "--client-rate",
        "5000",
        "--client-burst",
        "5000",
    ])
    .await;
    // Everyone connects first: the baseline includes the clients and their channels.
    let (publisher, _pev) = client(&node, "pub", Serialization::Json, Transport::Ws).await;
    let (sub, mut sev) = client(&node, "sub", Serialization::Binary, Transport::Webrtc).await;
    sub.join("fat", None).await.unwrap();
    let ep = &node.record().signaling[0];
    let attacker = Peer::open(PeerConfig::new(ep.host.clone(), ep.port))
        .await
        .unwrap();
    let conn = attacker
        .connect(&node.peer_id(), ConnectOptions::default())
        .await
        .unwrap();
    let (tx, mut rx) = conn.split();
    publisher.publish("warm", json!("up")).await.unwrap();
    let base = rss();

    // 1. Chunk slices pinning their frames: 1-byte chunks of 16 unfinished messages, each
    // padded to 250 KiB. Counted as 1 byte each, every one kept its 250 KiB frame alive.
    let frames = 400;
    for i in 0..frames {
        let f = padded_chunk(1 + i % 16, i / 16, 60, 250 * 1024);
        tx.send_frames(&[f]).await.unwrap();
    }
    // A round trip on the attacker's connection: every frame before it was decoded.
    tx.send(&Value::from_json(json!({"op": "ping"})))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            match rx.recv().await {
                Some(Ok(v)) if v.get("op").and_then(Value::as_str) == Some("pong") => break,
                Some(_) => {}
                None => panic!("the attacker's connection closed"),
            }
        }
    })
    .await
    .expect("pong");
    let after_chunks = rss();
    let grown = after_chunks.saturating_sub(base);
    eprintln!(
        "{frames} padded chunks of 250 KiB: RSS {} → {} MiB (+{} MiB)",
        base / MIB,
        after_chunks / MIB,
        grown / MIB
    );
    assert!(
        grown <= BUDGET + OVERHEAD,
        "RSS grew by {} MiB after the padded chunks (bound {} MiB)",
        grown / MIB,
        (BUDGET + OVERHEAD) / MIB
    );
    // 2. Cached decoded values: bodies of 30 000 zeros (60 KB of JSON) fanned out to a
    // `binary` subscriber. The node used to keep each stored message's decoded value tree
    // (40 bytes per zero: ≈ 20× the 60 KB it charged) for as long as the message was stored.
    let body = json!(vec![0u8; 30_000]);
    let n = 400;
    for _ in 0..n {
        publisher.publish("fat", body.clone()).await.unwrap();
    }
    let mut got = 0;
    tokio::time::timeout(WAIT, async {
        while got < n {
            if let Some(Event::Message(_)) = sev.recv().await {
                got += 1;
            }
        }
    })
    .await
    .expect("the subscriber gets every message");
    let after_fanout = rss();
    let grown = after_fanout.saturating_sub(base);
    eprintln!(
        "fan-out of {n} × 60 KB to a binary subscriber: RSS {} → {} MiB (+{} MiB since the start)",
        after_chunks / MIB,
        after_fanout / MIB,
        grown / MIB
    );
    assert!(
        grown <= BUDGET + OVERHEAD,
        "RSS grew by {} MiB after the fan-out (bound {} MiB)",
        grown / MIB,
        (BUDGET + OVERHEAD) / MIB
    );

    // The node still serves.
    assert!(publisher.publish("fat", json!("still here")).await.is_ok());
    publisher.close().await;
    sub.close().await;
    node.shutdown().await;
}
