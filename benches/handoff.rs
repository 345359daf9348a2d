//! Handoff benchmark: how long a successor takes to take over N MB of stored messages,
//! and the client-visible write gap, over real PeerJS DataConnections on loopback.
//!
//! `cargo bench --bench handoff -- 10 100 1000` (sizes in MB of stored message bodies).
//!
//! Per size: a signaling server, a predecessor relay filled with 1 KiB messages in 16
//! rooms, a writer publishing every 2 ms until the predecessor refuses writes, then (on
//! `moved`) to the successor; the successor's `run_successor` is timed from start to
//! `Live`. The gap is the longest time between two consecutive acknowledged publishes of
//! the writer (it switches to the successor as soon as it is told `moved`; a real client
//! adds its reconnect, see BENCHMARKS.md). Every acknowledged publish is checked in the
//! successor.

use ouroboros::discovery::{
    DiscoveryRecord, LocalPublisher, Publisher, RECORD_VERSION, SignalingEndpoint,
};
use ouroboros::handoff::{
    ConnectError, HANDOFF_LABEL, HandoffConfig, Predecessor, PredecessorEvent, PreparedSnapshot,
    Secret, SharedRelay, Successor, SuccessorConfig, SuccessorOutcome, run_successor,
    spawn_predecessor,
};
use ouroboros::peer::codec::Serialization;
use ouroboros::peer::{ConnectOptions, Peer, PeerConfig};
use ouroboros::relay::{
    ConnId, ConnInfo, Mode, Output, Relay, RelayConfig, Snapshot, SnapshotJson, StreamingRestore,
};
use ouroboros::signaling::{self, SignalConfig, Signaling};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const SECRET: &[u8] = b"benchmark secret, long enough!!";

fn relay(node: &str, generation: u64) -> SharedRelay {
    let mut config = RelayConfig::new(node, generation);
    config.memory_budget = 8 << 30;
    config.limits.rate_per_sec = 1e12;
    config.limits.rate_burst = 1e12;
    config.limits.max_rooms_per_client = 1000;
    SharedRelay::new(Relay::new(config, Instant::now()))
}

fn open(r: &mut Relay, conn: u64, name: &str) {
    r.connect(
        Instant::now(),
        ConnId(conn),
        ConnInfo {
            peer_id: name.into(),
            metadata: json!({"protocol": "ouroboros/1", "client": name}),
        },
    );
    while r.poll_output().is_some() {}
}

/// Publishes and returns Ok(seq) or Err(error code); other outputs are returned too.
fn publish(
    r: &mut Relay,
    conn: u64,
    room: &str,
    id: &str,
    body: &str,
) -> (Result<u64, String>, Vec<Value>) {
    r.handle_message(
        Instant::now(),
        0,
        ConnId(conn),
        json!({"op":"publish","room":room,"id":id,"body":body}),
    );
    let mut result = Err("no answer".to_string());
    let mut other = Vec::new();
    while let Some(o) = r.poll_output() {
        if let Output::Send { conn: c, message } = o {
            let v: Value = serde_json::from_str(message.text()).unwrap_or(Value::Null);
            if c.0 == conn && v["op"] == "ack" && v["id"] == id {
                result = Ok(v["seq"].as_u64().unwrap());
            } else if c.0 == conn && v["op"] == "error" {
                result = Err(v["code"].as_str().unwrap_or("?").to_string());
            } else {
                other.push(v);
            }
        }
    }
    (result, other)
}

fn endpoint(port: u16) -> SignalingEndpoint {
    SignalingEndpoint {
        host: "127.0.0.1".into(),
        port,
        path: "/".into(),
        key: "peerjs".into(),
        secure: false,
        peer_id: None,
    }
}

/// Fills a relay like [`run`] does.
fn filled(node: &str, mb: usize) -> SharedRelay {
    let shared = relay(node, 0);
    shared.lock_with(|r| {
        open(r, 1, "filler");
        let body = "x".repeat(1000);
        let n = mb * 1024 * 1024 / 1024;
        for i in 0..n {
            let (res, _) = publish(r, 1, &format!("room-{}", i % 16), &format!("f{i}"), &body);
            res.unwrap();
        }
    });
    shared
}

/// `--phases`: the CPU-bound steps of a handoff one by one, no network: the predecessor's
/// export (store → chunks, hashed whole and per chunk, never held as one buffer), the
/// successor's streaming decode + restore in chunk-sized pieces, and for reference the
/// whole-buffer steps (`to_json` as backups use it, SHA-256 of it, decode — ours and plain
/// serde — and `Relay::restore`).
fn cpu_phases(mb: usize) {
    let chunk = HandoffConfig::default().chunk_size;
    let shared = filled("phases", mb);
    let snapshot = || shared.lock_with(|r| r.export_snapshot());
    // The only step that holds the relay (every client waits meanwhile).
    let t = Instant::now();
    let snap = snapshot();
    let locked = t.elapsed();
    let t = Instant::now();
    let prepared = PreparedSnapshot::from_json(SnapshotJson::new(snap), chunk);
    let export_hash = t.elapsed();
    drop(prepared);
    let t = Instant::now();
    let bytes = snapshot().to_json();
    let to_json = t.elapsed();
    let t = Instant::now();
    let digest = ouroboros::handoff::sha256_hex(&bytes);
    let hash = t.elapsed();
    // What a successor does while the snapshot arrives.
    let t = Instant::now();
    let mut streaming =
        StreamingRestore::new(shared.lock_with(|r| r.config().clone()), Instant::now());
    for piece in bytes.chunks(chunk) {
        streaming.feed(piece).unwrap();
    }
    let restored = streaming.finish().unwrap();
    let streamed = t.elapsed();
    drop(restored);
    // Each whole-buffer decoder twice, alternating, keeping the second time: the first
    // decode of a process pays for fresh pages that later ones reuse.
    let mut decode = Duration::ZERO;
    let mut decode_plain = Duration::ZERO;
    let mut snap = None;
    for _ in 0..2 {
        let t = Instant::now();
        let plain: Snapshot = serde_json::from_slice(&bytes).unwrap();
        decode_plain = t.elapsed();
        let n = plain.messages.len();
        drop(plain);
        drop(snap.take());
        let t = Instant::now();
        let ours = Snapshot::from_json(&bytes).unwrap();
        decode = t.elapsed();
        assert_eq!(ours.messages.len(), n);
        snap = Some(ours);
    }
    let snap = snap.expect("decoded");
    let t = Instant::now();
    let restored = Relay::restore(
        shared.lock_with(|r| r.config().clone()),
        snap,
        Instant::now(),
    )
    .unwrap();
    let restore = t.elapsed();
    drop(restored);
    println!(
        "phases {mb:>5} MB: snapshot {} bytes (sha256 {}…) | export_snapshot (relay held) {:.3}s | handoff export+hash {:.2}s | streaming decode+restore {:.2}s || whole buffer: to_json {:.2}s | sha256 {:.2}s | decode {:.2}s (plain serde {:.2}s) | restore {:.2}s",
        bytes.len(),
        &digest[..12],
        locked.as_secs_f64(),
        export_hash.as_secs_f64(),
        streamed.as_secs_f64(),
        to_json.as_secs_f64(),
        hash.as_secs_f64(),
        decode.as_secs_f64(),
        decode_plain.as_secs_f64(),
        restore.as_secs_f64(),
    );
}

async fn run(mb: usize) {
    let config = SignalConfig {
        host: "127.0.0.1".into(),
        port: 0,
        ..SignalConfig::default()
    };
    let sig = Signaling::new(config.clone());
    let listener = signaling::bind(&config).await.unwrap();
    let port = listener.local_addr().port();
    let app = sig.router();
    let sig2 = sig.clone();
    tokio::spawn(async move { sig2.serve(listener, app, std::future::pending()).await });

    let pred_id = format!("bench-pred-{mb}");
    let succ_id = format!("bench-succ-{mb}");
    let fill_start = Instant::now();
    let pred_relay = filled(&pred_id, mb);
    pred_relay.lock_with(|r| open(r, 2, "writer"));
    let fill = fill_start.elapsed();

    let mut pc = PeerConfig::new("127.0.0.1", port);
    pc.udp_addrs = vec!["127.0.0.1:0".into()];
    pc.id = Some(pred_id.clone());
    let pred_peer = Arc::new(Peer::open(pc.clone()).await.unwrap());
    let pred = Predecessor::new(
        pred_id.clone(),
        0,
        Secret::new(SECRET.to_vec()).unwrap(),
        HandoffConfig::default(),
        Instant::now(),
        rand::SeedableRng::from_os_rng(),
    );
    let mut handle = spawn_predecessor(pred, Arc::new(pred_relay.clone()));
    let conns = handle.conns.clone();
    let pp = pred_peer.clone();
    tokio::spawn(async move {
        while let Some(c) = pp.accept().await {
            if c.label() == HANDOFF_LABEL {
                let _ = conns.send(c.into()).await;
            }
        }
    });

    let succ_relay = relay(&succ_id, 1);
    succ_relay.lock_with(|r| r.set_mode(Mode::Draining));
    pc.id = Some(succ_id.clone());
    let succ_peer = Arc::new(Peer::open(pc).await.unwrap());

    // The writer: every 2 ms, to the predecessor until `moved`, then to the successor.
    let (pr, sr) = (pred_relay.clone(), succ_relay.clone());
    let writer = tokio::spawn(async move {
        let mut on_succ = false;
        let mut last_ack = Instant::now();
        let mut max_gap = Duration::ZERO;
        let mut acked = Vec::new();
        let mut pending: Option<String> = None;
        let mut i = 0u64;
        let mut succ_acks = 0;
        loop {
            let id = pending.clone().unwrap_or_else(|| {
                i += 1;
                format!("w{i}")
            });
            let (res, other) = if on_succ {
                sr.lock_with(|r| publish(r, 2, "live", &id, "hello"))
            } else {
                pr.lock_with(|r| publish(r, 2, "live", &id, "hello"))
            };
            if other.iter().any(|v| v["op"] == "moved") && !on_succ {
                on_succ = true;
                sr.lock_with(|r| open(r, 2, "writer"));
            }
            match res {
                Ok(seq) => {
                    let now = Instant::now();
                    max_gap = max_gap.max(now - last_ack);
                    last_ack = now;
                    acked.push((seq, id));
                    pending = None;
                    if on_succ {
                        succ_acks += 1;
                        if succ_acks >= 50 {
                            return (acked, max_gap);
                        }
                    }
                }
                Err(_) => pending = Some(id), // read_only or not joined yet: retry
            }
            if !on_succ {
                // `moved` arrives as a relay output to the writer's connection.
                let moved = pr.lock_with(|r| {
                    let mut seen = false;
                    while let Some(o) = r.poll_output() {
                        if let Output::Send { message, .. } = o
                            && message.text().contains("\"moved\"")
                        {
                            seen = true;
                        }
                    }
                    seen
                });
                if moved {
                    on_succ = true;
                    sr.lock_with(|r| open(r, 2, "writer"));
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let publisher = LocalPublisher::new(dir.path());
    let record = DiscoveryRecord {
        ring_key: None,
        sig: None,
        version: RECORD_VERSION,
        peer_id: succ_id.clone(),
        generation: 1,
        signaling: vec![endpoint(port)],
        ice_servers: None,
        tunnel_url: None,
        relay_ws: None,
        started_at: SystemTime::now(),
        expires_at: None,
        previous: None,
        ended: None,
        replicas: Vec::new(),
    };
    let succ = Successor::new(
        succ_id.clone(),
        pred_id.clone(),
        1,
        Secret::new(SECRET.to_vec()).unwrap(),
        vec![endpoint(port)],
        SuccessorConfig {
            give_up_after: Duration::from_secs(60),
            ..SuccessorConfig::default()
        },
        Instant::now(),
        rand::SeedableRng::from_os_rng(),
    );
    let sp = succ_peer.clone();
    let pid = pred_id.clone();
    let connect = move || {
        let sp = sp.clone();
        let pid = pid.clone();
        async move {
            sp.connect(
                &pid,
                ConnectOptions {
                    label: Some(HANDOFF_LABEL.into()),
                    serialization: Serialization::Raw,
                    reliable: true,
                    metadata: None,
                },
            )
            .await
            .map_err(ConnectError::from)
        }
    };
    let publish_rec = move || {
        let p = publisher.clone();
        let r = record.clone();
        async move { p.publish(&r).await }
    };
    let started = Instant::now();
    let outcome = run_successor(
        succ,
        Arc::new(succ_relay.clone()),
        connect,
        publish_rec,
        None,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(outcome, SuccessorOutcome::Live);
    while let Some(ev) = handle.events.recv().await {
        if matches!(ev, PredecessorEvent::SuccessorLive { .. }) {
            break;
        }
    }
    let (acked, gap) = writer.await.unwrap();
    // Zero lost: every acknowledged publish is in the successor at its seq.
    let snap = succ_relay.lock_with(|r| r.export_snapshot());
    let stored: std::collections::HashSet<(u64, String)> = snap
        .messages
        .iter()
        .filter(|m| m.room() == "live")
        .map(|m| (m.seq(), m.id().unwrap_or_default().to_string()))
        .collect();
    let lost = acked.iter().filter(|a| !stored.contains(a)).count();
    let total: usize = snap.message_bytes();
    println!(
        "handoff {mb:>5} MB: stored {:>8} msgs ({:.0} MB serialised), fill {:.1}s, handoff {:.2}s ({:.0} MB/s), max write gap {} ms, acked {}, lost {}",
        snap.messages.len(),
        total as f64 / 1e6,
        fill.as_secs_f64(),
        took.as_secs_f64(),
        total as f64 / 1e6 / took.as_secs_f64(),
        gap.as_millis(),
        acked.len(),
        lost
    );
    pred_peer.close().await;
    succ_peer.close().await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    ouroboros::install_crypto_provider();
    // `RUST_LOG=ouroboros::handoff=info` shows the phases (snapshot export, restore).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let phases = std::env::args().any(|a| a == "--phases");
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    for mb in sizes {
        if phases {
            cpu_phases(mb);
        } else {
            run(mb).await;
        }
    }
}
