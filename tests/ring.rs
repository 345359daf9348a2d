//! The ring, over real parts: a real signaling server, real PeerJS peers (WebRTC
//! DataConnections on loopback), real relays, the handoff drivers and the local discovery
//! publisher.

use ouroboros::discovery::{
    DiscoveryRecord, LocalPublisher, PreviousNode, Publisher, RECORD_VERSION, SignalingEndpoint,
};
use ouroboros::handoff::{
    GiveUpReason, HANDOFF_LABEL, HandoffConfig, HandoffHost, Predecessor, PredecessorEvent, Secret,
    SharedRelay, Successor, SuccessorConfig, SuccessorOutcome, Transferred, run_successor,
    spawn_predecessor,
};
use ouroboros::peer::codec::Serialization;
use ouroboros::peer::{ConnectOptions, Peer, PeerConfig};
use ouroboros::relay::{ConnId, ConnInfo, Mode, Output, Relay, RelayConfig};
use ouroboros::signaling::{self, SignalConfig, Signaling};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

const SECRET: &[u8] = b"ring test secret, 32 bytes long!";

fn init() {
    ouroboros::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn start_signaling() -> (u16, tokio::sync::oneshot::Sender<()>) {
    let config = SignalConfig {
        host: "127.0.0.1".into(),
        port: 0,
        ..SignalConfig::default()
    };
    let signaling = Signaling::new(config.clone());
    let listener = signaling::bind(&config).await.expect("bind");
    let port = listener.local_addr().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = signaling.router();
    tokio::spawn(async move {
        let _ = signaling
            .serve(listener, app, async {
                let _ = rx.await;
            })
            .await;
    });
    (port, tx)
}

fn peer_config(port: u16, id: &str) -> PeerConfig {
    let mut c = PeerConfig::new("127.0.0.1", port);
    c.id = Some(id.into());
    c.udp_addrs = vec!["127.0.0.1:0".into()];
    c.connect_timeout = Duration::from_secs(5);
    c
}

fn endpoint(port: u16) -> SignalingEndpoint {
    SignalingEndpoint {
        host: "127.0.0.1".into(),
        port,
        path: "/".into(),
        key: "peerjs".into(),
        secure: false,
    }
}

fn shared_relay(node: &str, generation: u64) -> SharedRelay {
    let mut config = RelayConfig::new(node, generation);
    config.limits.rate_per_sec = 1e9;
    config.limits.rate_burst = 1e9;
    SharedRelay {
        relay: Arc::new(Mutex::new(Relay::new(config.clone(), Instant::now()))),
        config,
        changed: Arc::new(tokio::sync::Notify::new()),
    }
}

fn record(
    peer: &str,
    generation: u64,
    port: u16,
    previous: Option<(&str, u16)>,
) -> DiscoveryRecord {
    DiscoveryRecord {
        version: RECORD_VERSION,
        peer_id: peer.into(),
        generation,
        signaling: vec![endpoint(port)],
        tunnel_url: None,
        started_at: SystemTime::now(),
        expires_at: None,
        previous: previous.map(|(p, port)| PreviousNode {
            peer_id: p.into(),
            signaling: vec![endpoint(port)],
        }),
    }
}

/// Drains the relay's outputs; returns (conn, JSON) pairs.
fn drain(relay: &mut Relay) -> Vec<(u64, Value)> {
    std::iter::from_fn(|| relay.poll_output())
        .filter_map(|o| match o {
            Output::Send { conn, message } => Some((
                conn.0,
                serde_json::from_str(message.text()).unwrap_or(Value::Null),
            )),
            Output::Close { .. } => None,
        })
        .collect()
}

/// A relay client of `relay` (connection `conn`, identity `name`).
fn open_client(relay: &SharedRelay, conn: u64, name: &str) {
    let mut r = relay.relay.lock().unwrap();
    r.connect(
        Instant::now(),
        ConnId(conn),
        ConnInfo {
            peer_id: format!("peer-{name}"),
            metadata: json!({"protocol": "ouroboros/1", "client": name}),
        },
    );
    drain(&mut r);
}

/// Publishes one message; returns the ack's seq, or the error code.
fn publish(
    relay: &SharedRelay,
    conn: u64,
    room: &str,
    id: &str,
    body: &str,
) -> Result<u64, String> {
    let mut r = relay.relay.lock().unwrap();
    r.handle_message(
        Instant::now(),
        0,
        ConnId(conn),
        json!({"op": "publish", "room": room, "id": id, "body": body}),
    );
    for (c, v) in drain(&mut r) {
        if c != conn {
            continue;
        }
        if v["op"] == "ack" && v["id"] == id {
            return Ok(v["seq"].as_u64().unwrap());
        }
        if v["op"] == "error" {
            return Err(v["code"].as_str().unwrap_or("?").to_string());
        }
    }
    Err("no answer".into())
}

/// Every stored message of `relay`: room → [(seq, id)], in seq order.
fn contents(relay: &SharedRelay) -> BTreeMap<String, Vec<(u64, String)>> {
    let snap = relay.relay.lock().unwrap().export_snapshot();
    let mut out: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for m in snap.messages {
        out.entry(m.room().to_string())
            .or_default()
            .push((m.seq(), m.id().unwrap_or_default().to_string()));
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

struct Node {
    peer: Arc<Peer>,
    relay: SharedRelay,
}

/// Starts the predecessor side on `pred_peer`: handoff connections go to the driver.
fn serve_predecessor(
    peer: Arc<Peer>,
    relay: &SharedRelay,
    generation: u64,
    cfg: HandoffConfig,
) -> tokio::sync::mpsc::UnboundedReceiver<PredecessorEvent> {
    let pred = Predecessor::new(
        peer.id().to_string(),
        generation,
        Secret::new(SECRET.to_vec()).unwrap(),
        cfg,
        Instant::now(),
    );
    let handle = spawn_predecessor(pred, Arc::new(relay.clone()));
    let conns = handle.conns.clone();
    tokio::spawn(async move {
        while let Some(c) = peer.accept().await {
            if c.label() == HANDOFF_LABEL {
                let _ = conns.send(c).await;
            }
        }
    });
    handle.events
}

async fn successor(
    node: &Node,
    pred_id: &str,
    generation: u64,
    secret: &[u8],
    publisher: LocalPublisher,
    record: DiscoveryRecord,
    cfg: SuccessorConfig,
) -> SuccessorOutcome {
    let succ = Successor::new(
        node.peer.id().to_string(),
        pred_id.to_string(),
        generation,
        Secret::new(secret.to_vec()).unwrap(),
        record.signaling.clone(),
        cfg,
        Instant::now(),
    );
    let peer = node.peer.clone();
    let pred_id = pred_id.to_string();
    let connect = move || {
        let peer = peer.clone();
        let pred_id = pred_id.clone();
        async move {
            peer.connect(
                &pred_id,
                ConnectOptions {
                    label: Some(HANDOFF_LABEL.into()),
                    serialization: Serialization::Binary,
                    reliable: true,
                    metadata: None,
                },
            )
            .await
            .map_err(|e| e.to_string())
        }
    };
    let publish = move || {
        let publisher = publisher.clone();
        let record = record.clone();
        async move { publisher.publish(&record).await }
    };
    run_successor(succ, Arc::new(node.relay.clone()), connect, publish, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_over_peerjs_keeps_every_acknowledged_message() {
    init();
    let (port, _stop) = start_signaling().await;
    let data = tempfile::tempdir().unwrap();
    let publisher = LocalPublisher::new(data.path());
    publisher
        .publish(&record("pred-node", 0, port, None))
        .await
        .unwrap();

    let pred = Node {
        peer: Arc::new(Peer::open(peer_config(port, "pred-node")).await.unwrap()),
        relay: shared_relay("pred-node", 0),
    };
    // History before the handoff: 3000 messages in 5 rooms.
    open_client(&pred.relay, 1, "alice");
    for i in 0..3000 {
        publish(
            &pred.relay,
            1,
            &format!("room-{}", i % 5),
            &format!("old-{i}"),
            &"x".repeat(200),
        )
        .unwrap();
    }
    let mut pred_events = serve_predecessor(
        pred.peer.clone(),
        &pred.relay,
        0,
        HandoffConfig {
            chunk_size: 64 * 1024,
            ..HandoffConfig::default()
        },
    );

    // A client publishing continuously until the predecessor refuses writes.
    open_client(&pred.relay, 2, "bob");
    let writer_relay = pred.relay.clone();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0.. {
            let id = format!("live-{i}");
            let room = format!("room-{}", i % 5);
            match publish(&writer_relay, 2, &room, &id, "hello") {
                Ok(seq) => acked.push((room, seq, id)),
                Err(code) => {
                    assert_eq!(code, "read_only");
                    return (acked, i);
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        unreachable!()
    });

    let succ = Node {
        peer: Arc::new(Peer::open(peer_config(port, "succ-node")).await.unwrap()),
        relay: shared_relay("succ-node", 1),
    };
    succ.relay.relay.lock().unwrap().set_mode(Mode::Draining);
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        successor(
            &succ,
            "pred-node",
            1,
            SECRET,
            publisher.clone(),
            record("succ-node", 1, port, Some(("pred-node", port))),
            SuccessorConfig::default(),
        ),
    )
    .await
    .expect("handoff finishes");
    assert_eq!(outcome, SuccessorOutcome::Live);
    eprintln!("handoff took {:?}", started.elapsed());

    // The predecessor hears `live` and moves its clients.
    let live = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = pred_events.recv().await {
            if let PredecessorEvent::SuccessorLive {
                successor_peer_id, ..
            } = ev
            {
                return successor_peer_id;
            }
        }
        panic!("predecessor events ended");
    })
    .await
    .expect("predecessor learns the successor is live");
    assert_eq!(live, "succ-node");
    let moved: Vec<Value> = drain(&mut pred.relay.relay.lock().unwrap())
        .into_iter()
        .filter(|(c, v)| *c == 1 && v["op"] == "moved")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(moved.len(), 1, "alice was told to move");
    assert_eq!(moved[0]["peer_id"], "succ-node");
    assert_eq!(moved[0]["generation"], 1);
    assert_eq!(moved[0]["signaling"][0]["port"], port);

    let (acked, attempts) = writer.await.unwrap();
    assert!(
        acked.len() > 5,
        "publishes were acknowledged during the handoff ({attempts})"
    );
    // Every acknowledged message is in the successor exactly once, at its seq, and the
    // successor holds exactly the predecessor's store.
    let got = contents(&succ.relay);
    assert_eq!(got, contents(&pred.relay));
    for (room, seq, id) in &acked {
        let log = &got[room];
        assert_eq!(log.iter().filter(|(_, i)| i == id).count(), 1, "{id} once");
        assert!(log.contains(&(*seq, id.clone())), "{id} at seq {seq}");
    }
    for log in got.values() {
        for (i, (seq, _)) in log.iter().enumerate() {
            assert_eq!(*seq, i as u64 + 1, "dense and in order");
        }
    }
    assert_eq!(
        got.values().map(Vec::len).sum::<usize>(),
        3000 + acked.len()
    );
    // The successor is primary and took over discovery; the predecessor stays read-only.
    assert_eq!(succ.relay.relay.lock().unwrap().mode(), Mode::Primary);
    assert_eq!(pred.relay.relay.lock().unwrap().mode(), Mode::Draining);
    let rec = publisher.current().await.unwrap().unwrap();
    assert_eq!((rec.peer_id.as_str(), rec.generation), ("succ-node", 1));
    // A publish retried after the move (same client, same id) is not stored twice.
    open_client(&succ.relay, 9, "bob");
    let (room, seq, id) = acked.last().unwrap().clone();
    assert_eq!(publish(&succ.relay, 9, &room, &id, "hello"), Ok(seq));
    // And the stale predecessor cannot republish its record.
    let err = publisher
        .publish(&record("pred-node", 0, port, None))
        .await
        .unwrap_err();
    assert!(err.is_stale(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused_and_the_predecessor_keeps_serving() {
    init();
    let (port, _stop) = start_signaling().await;
    let data = tempfile::tempdir().unwrap();
    let publisher = LocalPublisher::new(data.path());
    publisher
        .publish(&record("pred-w", 0, port, None))
        .await
        .unwrap();
    let pred = Node {
        peer: Arc::new(Peer::open(peer_config(port, "pred-w")).await.unwrap()),
        relay: shared_relay("pred-w", 0),
    };
    open_client(&pred.relay, 1, "alice");
    publish(&pred.relay, 1, "r", "m1", "before").unwrap();
    let mut events = serve_predecessor(pred.peer.clone(), &pred.relay, 0, HandoffConfig::default());
    let impostor = Node {
        peer: Arc::new(Peer::open(peer_config(port, "impostor")).await.unwrap()),
        relay: shared_relay("impostor", 1),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        successor(
            &impostor,
            "pred-w",
            1,
            b"a wrong secret of enough length",
            publisher.clone(),
            record("impostor", 1, port, None),
            SuccessorConfig {
                reconnect_initial: Duration::from_millis(50),
                ..SuccessorConfig::default()
            },
        ),
    )
    .await
    .expect("the impostor gives up");
    assert_eq!(
        outcome,
        SuccessorOutcome::GaveUp {
            reason: GiveUpReason::PredecessorNotAuthentic,
            transferred: Transferred::Nothing
        }
    );
    // Nothing was exported, the predecessor still takes writes, discovery is unchanged.
    let mut seen = HashSet::new();
    while let Ok(ev) = events.try_recv() {
        seen.insert(format!("{ev:?}"));
        assert!(!matches!(
            ev,
            PredecessorEvent::SnapshotNeeded | PredecessorEvent::Authenticated { .. }
        ));
    }
    assert!(impostor.relay.high_water().await.is_empty());
    assert_eq!(publish(&pred.relay, 1, "r", "m2", "after"), Ok(2));
    assert_eq!(
        publisher.current().await.unwrap().unwrap().peer_id,
        "pred-w"
    );
}

/// The ring as a product: `ouroboros node --lifetime … --launcher local` started once,
/// Rust clients publishing continuously through at least ten rotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_ring_rotates_ten_times_and_keeps_every_acknowledged_message() {
    use ouroboros::client::{Client, ClientConfig, ConnectionState};
    use tokio::io::AsyncBufReadExt;
    init();
    const ROTATIONS: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let record_path = data.join("ouroboros.json");
    // OUROBOROS_BIN overrides the binary (the shared target dir may hold another build).
    let bin =
        std::env::var("OUROBOROS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ouroboros").into());
    let mut first = tokio::process::Command::new(bin)
        .args([
            "node",
            "--port",
            "0",
            "--launcher",
            "local",
            "--lifetime",
            "6s",
        ])
        .args([
            // Generous for a loaded 2-core CI machine running debug builds: a successor
            // has 3 s to start, register and take over.
            "--handoff-lead",
            "3s",
            "--deadline-margin",
            "500ms",
            "--drain-timeout",
            "1s",
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--backup-dir")
        .arg(data.join("backups"))
        .env("OUROBOROS_SECRET", "a ring secret for the ring test")
        .env("RUST_LOG", "info,rtc=error,rtc_ice=error,webrtc=error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(first.stdout.take().unwrap()).lines();
    while let Some(l) = lines.next_line().await.unwrap() {
        if l.starts_with("node peer-id") {
            break;
        }
    }
    let wait = Instant::now() + Duration::from_secs(20);
    while !record_path.exists() {
        assert!(Instant::now() < wait, "no discovery record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let generation = || -> u64 {
        std::fs::read(&record_path)
            .ok()
            .and_then(|b| DiscoveryRecord::from_json(&b).ok())
            .map_or(0, |r| r.generation)
    };
    let source = record_path.to_string_lossy().into_owned();

    // Three clients, each publishing its own numbered messages as fast as acks come.
    let mut writers = Vec::new();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for c in 0..3 {
        let source = source.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut cfg = ClientConfig::new(format!("writer-{c}"));
            cfg.request_timeout = Duration::from_secs(30);
            let (client, mut events) = Client::connect_discovered(&source, cfg).await.unwrap();
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            client.join("ring", None).await.unwrap();
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("w{c}-{i}");
                let ack = client
                    .publish_with_id("ring", &id, json!(i))
                    .await
                    .unwrap_or_else(|e| panic!("publish {id}: {e}"));
                acked.push((ack.seq, id));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (client, acked)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    while generation() < ROTATIONS {
        assert!(
            Instant::now() < deadline,
            "ring stuck at generation {}",
            generation()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let newest = generation();
    let mut all_acked = Vec::new();
    for w in writers {
        let (client, acked) = w.await.unwrap();
        // Every client ends on the newest node.
        let st = tokio::time::timeout(
            Duration::from_secs(20),
            client.wait_state(
                |s| matches!(s, ConnectionState::Live { generation, .. } if *generation >= newest),
            ),
        )
        .await
        .expect("client follows the ring")
        .unwrap();
        assert!(matches!(st, ConnectionState::Live { .. }));
        assert!(acked.len() > 20, "client published through the rotations");
        all_acked.extend(acked);
        client.close().await;
    }
    // A fresh reader sees every acknowledged message exactly once, in ack order.
    let (reader, _ev) = Client::connect_discovered(&source, ClientConfig::new("reader"))
        .await
        .unwrap();
    let mut stored: Vec<(u64, String)> = Vec::new();
    let mut before = None;
    loop {
        let page = reader.history("ring", before, Some(500)).await.unwrap();
        if page.messages.is_empty() {
            break;
        }
        before = page.messages.last().map(|m| m.seq);
        stored.extend(
            page.messages
                .into_iter()
                .map(|m| (m.seq, m.id.unwrap_or_default())),
        );
    }
    stored.sort();
    all_acked.sort();
    assert_eq!(
        stored, all_acked,
        "exactly the acknowledged messages, at their seqs"
    );
    for (i, (seq, _)) in stored.iter().enumerate() {
        assert_eq!(
            *seq,
            i as u64 + 1,
            "dense sequence across {newest} generations"
        );
    }
    reader.close().await;

    // Ctrl-C on the newest generation stops the ring.
    let pid: i32 = std::fs::read_to_string(data.join("ouroboros.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let gone = Instant::now() + Duration::from_secs(15);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < gone, "newest node did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = generation();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(generation(), last, "no successor after the stop");
    let _ = first.kill().await;
}

/// kill -9 of the predecessor before the successor reaches it: the successor retries,
/// then restores the newest backup, announces the gap in `welcome`, and takes over
/// discovery; no acknowledged seq is reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_predecessor_successor_recovers_from_backup_with_a_gap() {
    use ouroboros::client::{Client, ClientConfig, Event};
    use tokio::io::AsyncBufReadExt;
    init();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let backups = data.join("backups");
    let record_path = data.join("ouroboros.json");
    let bin =
        std::env::var("OUROBOROS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ouroboros").into());
    let start = |extra: Vec<String>| {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.args(["node", "--port", "0", "--backup-interval", "200ms"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--backup-dir")
            .arg(&backups)
            .args(extra)
            .env("OUROBOROS_SECRET", "a ring secret for the crash test")
            .env("RUST_LOG", "info,rtc=error,rtc_ice=error,webrtc=error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd.spawn().unwrap()
    };
    let mut old = start(vec![]);
    let mut lines = tokio::io::BufReader::new(old.stdout.take().unwrap()).lines();
    while let Some(l) = lines.next_line().await.unwrap() {
        if l.starts_with("node peer-id") {
            break;
        }
    }
    let wait = Instant::now() + Duration::from_secs(20);
    while !record_path.exists() {
        assert!(Instant::now() < wait, "no discovery record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old_record = DiscoveryRecord::from_json(&std::fs::read(&record_path).unwrap()).unwrap();
    let source = record_path.to_string_lossy().into_owned();
    let (client, _ev) = Client::connect_discovered(&source, ClientConfig::new("alice"))
        .await
        .unwrap();
    client.join("r", None).await.unwrap();
    let mut last = 0;
    for i in 0..20 {
        last = client
            .publish_with_id("r", &format!("m{i}"), json!(i))
            .await
            .unwrap()
            .seq;
    }
    // Wait for a backup that holds every acknowledged message (its high-water mark for the
    // room reaches the last acked seq), then kill -9.
    let store = ouroboros::handoff::DirBackupStore::new(&backups, 3);
    let wait = Instant::now() + Duration::from_secs(30);
    loop {
        let covered = store
            .latest_blocking()
            .ok()
            .flatten()
            .is_some_and(|b| b.high_water.get("r").copied().unwrap_or(0) >= last);
        if covered {
            break;
        }
        assert!(Instant::now() < wait, "no backup holding seq {last}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.close().await;
    old.kill().await.unwrap();

    let mut new = start(vec![
        "--generation".into(),
        "1".into(),
        "--predecessor-peer-id".into(),
        old_record.peer_id.clone(),
        "--predecessor-endpoints".into(),
        serde_json::to_string(&old_record.signaling).unwrap(),
    ]);
    let wait = Instant::now() + Duration::from_secs(60);
    loop {
        let g = std::fs::read(&record_path)
            .ok()
            .and_then(|b| DiscoveryRecord::from_json(&b).ok())
            .map_or(0, |r| r.generation);
        if g == 1 {
            break;
        }
        assert!(Instant::now() < wait, "successor did not take over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (client, mut events) = Client::connect_discovered(&source, ClientConfig::new("alice"))
        .await
        .unwrap();
    let welcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Event::Welcome {
                raw, generation, ..
            }) = events.recv().await
            {
                return (raw, generation);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(welcome.1, 1);
    assert_eq!(
        welcome.0["gap"]["reason"], "predecessor_lost",
        "{}",
        welcome.0
    );
    assert_eq!(welcome.0["gap"]["recovery"]["source"], "backup");
    // The backed-up messages survived; a new publish never reuses an old seq.
    client.join("r", None).await.unwrap();
    let page = client.history("r", None, Some(100)).await.unwrap();
    assert!(
        page.messages.iter().any(|m| m.id.as_deref() == Some("m19")),
        "backup holds the acked messages"
    );
    let seq = client
        .publish_with_id("r", "after", json!("x"))
        .await
        .unwrap()
        .seq;
    assert!(
        seq > last + 1000,
        "seq {seq} skips past the gap (last acked {last})"
    );
    client.close().await;
    let _ = new.kill().await;
}
