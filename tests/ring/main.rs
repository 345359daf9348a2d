//! The ring, over real parts: a real signaling server, real PeerJS peers (WebRTC
//! DataConnections on loopback), real relays, the handoff drivers and the local discovery
//! publisher.
//!
//! The helpers live in `tests/support/ring.rs`.

#[path = "../support/ring.rs"]
mod support;
use support::*;

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

    let succ = Joining {
        id: "succ-node".into(),
        relay: shared_relay("succ-node", 1),
    };
    succ.relay.lock_with(|r| r.set_mode(Mode::Draining));
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        successor(
            &succ,
            "pred-node",
            port,
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
    let moved: Vec<Value> = pred
        .relay
        .lock_with(drain)
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
    assert_eq!(succ.relay.lock_with(|r| r.mode()), Mode::Primary);
    assert_eq!(pred.relay.lock_with(|r| r.mode()), Mode::Draining);
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
    let impostor = Joining {
        id: "impostor".into(),
        relay: shared_relay("impostor", 1),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(60),
        successor(
            &impostor,
            "pred-w",
            port,
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
    // The node encrypts its backups with the ring's key.
    let key = ouroboros::handoff::BackupKey::derive(
        &ouroboros::handoff::Secret::new(b"a ring secret for the crash test".to_vec()).unwrap(),
    );
    let store = ouroboros::handoff::DirBackupStore::new(&backups, 3).with_key(key);
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

/// kill -9 of the predecessor while snapshot chunks flow (1 KiB chunks, window 1: the
/// transfer takes seconds): the successor discards the partial snapshot, retries for
/// `--handoff-give-up-after`, restores the newest backup and announces the gap.
// ---------------------------------------------------------------------------------------
// kill -9 at each handoff phase, with real `ouroboros node` processes
// (`protocol/handoff.md`, "Broken connections and crashes").
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predecessor_killed_mid_snapshot_successor_recovers_from_backup_with_a_gap() {
    init();
    let started = Instant::now();
    let ring = CrashRing::new("a ring secret for the crash tests");
    let slow = ["--handoff-chunk-size", "1KiB", "--handoff-window", "1"].map(String::from);
    let Prepared {
        mut pred,
        filler,
        _events,
        prefill,
        stop,
        writer,
    } = prepare(&ring, &slow, 200, 4000, true).await;

    let succ = ring
        .start_successor(&pred, &["--handoff-give-up-after", "3s"])
        .await;
    let exported = pred
        .log
        .wait("handoff: snapshot exported", Duration::from_secs(30))
        .await;
    succ.log
        .wait(
            "handoff: authenticated to the predecessor",
            Duration::from_secs(30),
        )
        .await;
    pred.child.start_kill().unwrap();
    let _ = pred.child.wait().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        !succ.log.has("handoff: snapshot received"),
        "the kill missed the snapshot phase ({} chunks)",
        exported["fields"]["chunks"]
    );
    let gave_up = succ
        .log
        .wait("handoff: successor gives up", Duration::from_secs(30))
        .await;
    assert_eq!(gave_up["fields"]["reason"], "PredecessorUnreachable");
    assert_eq!(gave_up["fields"]["transferred"], "Nothing", "{gave_up}");
    // Nothing usable was transferred: the newest backup is restored.
    check_recovered_successor(&ring, &succ, &prefill, writer, &["backup"]).await;
    filler.close().await;
    eprintln!("mid-snapshot scenario took {:?}", started.elapsed());
}

/// kill -9 of the predecessor after the successor received the whole snapshot, while it
/// still restores it and the live tail streams, before the cut-over (a client publishes all
/// the time): the successor retries, then keeps its transferred state or restores the newest
/// backup, whichever is newer, and announces the gap. The successor restores each chunk as
/// it arrives and acknowledges the last one (which lets the predecessor cut over) only once
/// it is restored; 1 MiB chunks of many small messages keep that last step long enough
/// (hundreds of ms in a debug build) for the kill to land before the cut-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predecessor_killed_mid_tail_successor_keeps_the_newest_state_with_a_gap() {
    init();
    let started = Instant::now();
    let chunk = ["--handoff-chunk-size".to_string(), "1MiB".to_string()];
    let mut attempt = 0;
    let (ring, succ, prefill, writer, filler, _events, restored) = loop {
        attempt += 1;
        let ring = CrashRing::new("a ring secret for the crash tests");
        let Prepared {
            mut pred,
            filler,
            _events,
            prefill,
            stop,
            writer,
        } = prepare(&ring, &chunk, 16000, 100, true).await;
        let succ = ring
            .start_successor(&pred, &["--handoff-give-up-after", "3s"])
            .await;
        succ.log
            .wait("handoff: snapshot received", Duration::from_secs(60))
            .await;
        pred.child.start_kill().unwrap();
        let _ = pred.child.wait().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let restored = succ
            .log
            .wait("handoff: snapshot restored", Duration::from_secs(30))
            .await;
        if !pred.log.has("handoff: cut-over") {
            break (ring, succ, prefill, writer, filler, _events, restored);
        }
        // The last chunk was restored and acknowledged before the kill landed (a busy
        // machine): that is the after-cut-over scenario, tested on its own. Again.
        assert!(
            attempt < 3,
            "the kill missed the tail phase {attempt} times (restore took {} ms)",
            restored["fields"]["ms"]
        );
        eprintln!(
            "mid-tail: the kill missed the tail phase (restore took {} ms); again",
            restored["fields"]["ms"]
        );
        filler.close().await;
    };
    let gave_up = succ
        .log
        .wait("handoff: successor gives up", Duration::from_secs(30))
        .await;
    assert_eq!(gave_up["fields"]["reason"], "PredecessorUnreachable");
    assert_eq!(gave_up["fields"]["transferred"], "Snapshot", "{gave_up}");
    check_recovered_successor(&ring, &succ, &prefill, writer, &["handoff", "backup"]).await;
    filler.close().await;
    eprintln!(
        "mid-tail scenario took {:?} (restore {} ms)",
        started.elapsed(),
        restored["fields"]["ms"]
    );
}

/// kill -9 of the predecessor right after it logged its cut-over (writes refused, final
/// tail and `cut_over` on their way). Two documented outcomes, depending on what reached
/// the successor before the kill: it had `cut_over` and the whole final tail → it confirms,
/// publishes and serves without the predecessor, nothing lost, no gap; otherwise it retries,
/// keeps what it has (or the newest backup, if newer) and announces the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predecessor_killed_after_cut_over_successor_serves_with_every_acknowledged_message() {
    init();
    let started = Instant::now();
    let ring = CrashRing::new("a ring secret for the crash tests");
    let Prepared {
        mut pred,
        filler,
        _events,
        prefill,
        stop,
        writer,
    } = prepare(&ring, &[], 500, 1000, true).await;

    let succ = ring
        .start_successor(&pred, &["--handoff-give-up-after", "3s"])
        .await;
    pred.log
        .wait("handoff: cut-over", Duration::from_secs(60))
        .await;
    pred.child.start_kill().unwrap();
    let _ = pred.child.wait().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Which outcome: the successor took over by itself, or gave up and recovered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let took_over = loop {
        if succ.log.has("took over from the predecessor") {
            break true;
        }
        if succ.log.has("handoff: successor gives up") {
            break false;
        }
        assert!(
            Instant::now() < deadline,
            "the successor neither took over nor gave up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if took_over {
        eprintln!("after cut-over: the successor had everything and went live by itself");
        assert!(!succ.log.has("handoff: successor gives up"));
        check_lossless_successor(&ring, &succ.peer_id, &prefill, writer).await;
    } else {
        let gave_up = succ.log.all("handoff: successor gives up").remove(0);
        eprintln!("after cut-over: the final tail was cut off: {gave_up}");
        assert_eq!(gave_up["fields"]["reason"], "PredecessorUnreachable");
        assert!(
            ["Snapshot", "CutOver"].contains(&gave_up["fields"]["transferred"].as_str().unwrap()),
            "{gave_up}"
        );
        check_recovered_successor(&ring, &succ, &prefill, writer, &["handoff", "backup"]).await;
    }
    filler.close().await;
    eprintln!("after-cut-over scenario took {:?}", started.elapsed());
}

/// kill -9 of the successor while snapshot chunks flow (launched by its predecessor's
/// lifecycle, `--launcher local`): the predecessor keeps serving as primary, aborts the
/// session after `--handoff-resume-timeout`, relaunches after the successor timeout, and the
/// new successor takes over with every acknowledged message and no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successor_killed_mid_snapshot_predecessor_keeps_serving_and_relaunches() {
    init();
    let started = Instant::now();
    let ring = CrashRing::new("a ring secret for the crash tests");
    let args = [
        "--launcher",
        "local",
        // The successor is launched 6 s after the start (time to fill the node).
        "--lifetime",
        "90s",
        "--handoff-lead",
        "84s",
        "--deadline-margin",
        "2s",
        "--successor-timeout",
        "5s",
        "--handoff-resume-timeout",
        "2s",
        "--drain-timeout",
        "1s",
        "--handoff-chunk-size",
        "1KiB",
        "--handoff-window",
        "1",
    ]
    .map(String::from);
    let mut pred = ring.start("predecessor", &args).await;
    ring.wait_record(0, Duration::from_secs(20)).await;
    let (filler, _ev) = ring_client(&ring.source(), "filler").await;
    let mut prefill = fill(&filler, "fill", 100, 4000).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_writer(ring.source(), stop.clone()).await;

    let launched = pred
        .log
        .wait("launched local successor", Duration::from_secs(30))
        .await;
    assert_eq!(launched["fields"]["attempt"], 1);
    let first_pid = launched["fields"]["pid"].as_u64().unwrap() as u32;
    let gen1 = NodeLog::tail_file("generation 1", ring.data.join("logs/node-gen1.log"));
    pred.log
        .wait("handoff: snapshot exported", Duration::from_secs(30))
        .await;
    kill9(first_pid, &ring.data);
    // Dead (gone, or a zombie with an empty command line) within a second.
    let deadline = Instant::now() + Duration::from_secs(1);
    while std::fs::read(format!("/proc/{first_pid}/cmdline")).is_ok_and(|c| !c.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the first successor survived kill -9"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let killed_at = Instant::now();
    assert!(
        !gen1.has("handoff: snapshot received"),
        "the kill missed the snapshot phase"
    );
    let first_peer = gen1.peer_ids().remove(0);
    // Still primary: a publish is acknowledged while the successor is gone.
    let probe = |i: usize| {
        let filler = &filler;
        async move {
            let id = format!("fill-probe-{i}");
            let ack = tokio::time::timeout(
                Duration::from_secs(10),
                filler.publish_with_id("fill", &id, json!(i)),
            )
            .await
            .expect("the predecessor answers")
            .expect("the predecessor still accepts writes");
            (ack.seq, id)
        }
    };
    prefill.push(probe(0).await);
    let aborted = pred
        .log
        .wait("handoff aborted", Duration::from_secs(60))
        .await;
    eprintln!(
        "session aborted {:?} after the kill: {}",
        killed_at.elapsed(),
        aborted["fields"]["reason"]
    );
    prefill.push(probe(1).await);
    let relaunched = pred
        .log
        .wait_nth("launched local successor", 2, Duration::from_secs(30))
        .await;
    assert_eq!(relaunched["fields"]["attempt"], 2);
    // The lifecycle waited the successor timeout (5 s) after the abort before relaunching.
    let at = |v: &Value| humantime::parse_rfc3339_weak(v["timestamp"].as_str().unwrap()).unwrap();
    let waited = at(&relaunched).duration_since(at(&aborted)).unwrap();
    assert!(
        waited >= Duration::from_millis(4900),
        "relaunched {waited:?} after the abort"
    );
    gen1.wait("took over from the predecessor", Duration::from_secs(60))
        .await;
    let peers = gen1.peer_ids();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert_ne!(peers[1], first_peer);
    pred.log
        .wait("handoff: successor is live", Duration::from_secs(10))
        .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    check_lossless_successor(&ring, &peers[1], &prefill, writer).await;
    // The predecessor drains and exits on its own.
    let status = tokio::time::timeout(Duration::from_secs(20), pred.child.wait())
        .await
        .expect("the predecessor exits after the drain")
        .unwrap();
    assert!(status.success(), "{status}");
    filler.close().await;
    eprintln!("successor-killed scenario took {:?}", started.elapsed());
}

/// kill -9 of the predecessor as soon as it learnt the successor is live (`live`
/// received; `moved` may or may not have reached the clients): nothing lost, no gap, and
/// clients that missed `moved` find the successor through discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predecessor_killed_after_live_nothing_is_lost() {
    init();
    let started = Instant::now();
    let ring = CrashRing::new("a ring secret for the crash tests");
    let Prepared {
        mut pred,
        filler,
        _events,
        prefill,
        stop,
        writer,
    } = prepare(&ring, &[], 500, 1000, false).await;
    let succ = ring.start_successor(&pred, &[]).await;
    pred.log
        .wait("handoff: successor is live", Duration::from_secs(60))
        .await;
    pred.child.start_kill().unwrap();
    let _ = pred.child.wait().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    succ.log
        .wait("took over from the predecessor", Duration::from_secs(10))
        .await;
    assert!(!succ.log.has("handoff: successor gives up"));
    check_lossless_successor(&ring, &succ.peer_id, &prefill, writer).await;
    filler.close().await;
    eprintln!("after-live scenario took {:?}", started.elapsed());
}

/// Issue 19, liveness rule 1: a node told to stop with no successor stops writes, leaves a
/// final backup holding everything it acknowledged, and publishes a record that says it ended
/// (`ended`: reason, time, final backup). Without it the record still names a live-looking node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_without_a_successor_publishes_that_it_ended() {
    init();
    let ring = CrashRing::new("a ring secret for the ended test");
    let mut solo = ring
        .start("solo", &["--launcher".into(), "none".into()])
        .await;
    let record = ring.wait_record(0, Duration::from_secs(20)).await;
    assert_eq!(record.ended, None, "a serving node's record has no `ended`");
    let (client, _ev) = ring_client(&ring.source(), "alice").await;
    client.join("r", None).await.unwrap();
    let mut last = 0;
    for i in 0..5 {
        last = client
            .publish_with_id("r", &format!("m{i}"), json!(i))
            .await
            .unwrap()
            .seq;
    }
    client.close().await;
    let pid = solo.child.id().expect("running") as i32;
    // SAFETY: sends SIGTERM to the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), solo.child.wait())
        .await
        .expect("the node stops in time")
        .unwrap();
    assert!(status.success(), "stopped cleanly: {status}");
    let record = ring.record().expect("the record is still there");
    assert_eq!(record.peer_id, solo.peer_id);
    let ended = record
        .ended
        .clone()
        .expect("the record says the node ended");
    assert_eq!(ended.reason, "shutdown");
    assert!(ended.final_backup, "{ended:?}");
    record.verify(None).expect("signed");
    let key = ouroboros::handoff::BackupKey::derive(
        &ouroboros::handoff::Secret::new(b"a ring secret for the ended test".to_vec()).unwrap(),
    );
    let backup = ouroboros::handoff::DirBackupStore::new(&ring.backups, 5)
        .with_key(key)
        .latest_blocking()
        .unwrap()
        .expect("a final backup");
    assert!(backup.is_final);
    assert_eq!(backup.high_water.get("r").copied(), Some(last));
}

/// Issue 14's split brain, fenced (liveness rule 5): a successor that cannot reach its
/// predecessor (here: it was given an address where nothing listens) gives up, recovers from
/// the backup and publishes the next generation while the predecessor still serves. The
/// predecessor sees the newer generation in the published record, stops writes, sends its
/// clients `moved` to the new primary and exits cleanly, leaving no final backup of its
/// diverged state. Without the fence both serve and a client stays on the old node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predecessor_that_was_given_up_on_steps_down_when_the_next_generation_is_published() {
    init();
    let ring = CrashRing::new("a ring secret for the fence test");
    let mut pred = ring
        .start("pred", &["--launcher".into(), "none".into()])
        .await;
    ring.wait_record(0, Duration::from_secs(20)).await;
    let (client, _ev) = ring_client(&ring.source(), "alice").await;
    client.join("r", None).await.unwrap();
    let mut heads = BTreeMap::new();
    for i in 0..5 {
        let seq = client
            .publish_with_id("r", &format!("m{i}"), json!(i))
            .await
            .unwrap()
            .seq;
        heads.insert("r".to_string(), seq);
    }
    ring.wait_backup(&heads).await;
    // The successor is pointed at a port where nothing listens: it never reaches `pred`.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let succ = ring
        .start(
            "succ",
            &[
                "--generation".into(),
                "1".into(),
                "--predecessor-peer-id".into(),
                pred.peer_id.clone(),
                "--predecessor-endpoints".into(),
                serde_json::to_string(&[endpoint(dead_port)]).unwrap(),
                "--launcher".into(),
                "none".into(),
            ],
        )
        .await;
    let record = ring.wait_record(1, Duration::from_secs(60)).await;
    assert_eq!(
        record.peer_id, succ.peer_id,
        "the successor recovered and published"
    );
    // The predecessor steps down by itself and exits cleanly.
    let status = tokio::time::timeout(Duration::from_secs(30), pred.child.wait())
        .await
        .expect("the fenced predecessor exits")
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        pred.log.has("a newer generation was published by a node that did not take over from this one (it gave up on it: split brain); stepping down and sending the clients there"),
        "the predecessor says why it stepped down"
    );
    // The client followed `moved` to the new primary, and its writes land there.
    let live = tokio::time::timeout(
        Duration::from_secs(30),
        client.wait_state(|s| {
            matches!(
                s,
                ouroboros::client::ConnectionState::Live { generation: 1, .. }
            )
        }),
    )
    .await
    .expect("the client follows to generation 1")
    .unwrap();
    assert!(
        matches!(&live, ouroboros::client::ConnectionState::Live { node, .. } if *node == succ.peer_id),
        "{live:?}"
    );
    let after = client
        .publish_with_id("r", "after-fence", json!("after"))
        .await
        .unwrap()
        .seq;
    assert!(
        after > heads["r"],
        "written on the new primary after the recovered ones"
    );
    let stored = stored(&client, "r").await;
    for i in 0..5 {
        assert!(
            stored.iter().any(|(_, id)| id == &format!("m{i}")),
            "m{i} recovered: {stored:?}"
        );
    }
    client.close().await;
}
