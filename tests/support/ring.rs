//! Helpers of the ring tests (`tests/ring/`): an in-process signaling server, relays and
//! clients driven by hand, the successor through the production connector, and the
//! real-process ring (`CrashRing`: nodes of the `ouroboros` binary, kill -9, logs) with the
//! checks that every acknowledged message survived.

// The imports are re-exported for the tests that `use support::*`.
#![allow(unused_imports)]

pub use ouroboros::discovery::{
    DiscoveryRecord, LocalPublisher, PreviousNode, Publisher, RECORD_VERSION, SignalingEndpoint,
};
pub use ouroboros::handoff::{
    GiveUpReason, HANDOFF_LABEL, HandoffConfig, HostOps, Predecessor, PredecessorEvent, Secret,
    SharedRelay, Successor, SuccessorConfig, SuccessorOutcome, Transferred, run_successor,
    spawn_predecessor,
};
pub use ouroboros::node::ring::predecessor_connector;
pub use ouroboros::peer::{Peer, PeerConfig};
pub use ouroboros::relay::{ConnId, ConnInfo, Mode, Output, Relay, RelayConfig};
pub use ouroboros::signaling::{self, SignalConfig, Signaling};
pub use serde_json::{Value, json};
pub use std::collections::{BTreeMap, HashSet};
pub use std::sync::{Arc, Mutex};
pub use std::time::{Duration, Instant, SystemTime};

pub const SECRET: &[u8] = b"ring test secret, 32 bytes long!";

pub fn init() {
    ouroboros::install_crypto_provider();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub async fn start_signaling() -> (u16, tokio::sync::oneshot::Sender<()>) {
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

pub fn peer_config(port: u16, id: &str) -> PeerConfig {
    let mut c = PeerConfig::new("127.0.0.1", port);
    c.id = Some(id.into());
    c.udp_addrs = vec!["127.0.0.1:0".into()];
    c.connect_timeout = Duration::from_secs(5);
    c
}

pub fn endpoint(port: u16) -> SignalingEndpoint {
    SignalingEndpoint {
        host: "127.0.0.1".into(),
        port,
        path: "/".into(),
        key: "peerjs".into(),
        secure: false,
        peer_id: None,
    }
}

pub fn shared_relay(node: &str, generation: u64) -> SharedRelay {
    let mut config = RelayConfig::new(node, generation);
    config.limits.rate_per_sec = 1e9;
    config.limits.rate_burst = 1e9;
    SharedRelay::new(Relay::new(config, Instant::now()))
}

pub fn record(
    peer: &str,
    generation: u64,
    port: u16,
    previous: Option<(&str, u16)>,
) -> DiscoveryRecord {
    DiscoveryRecord {
        ring_key: None,
        sig: None,
        version: RECORD_VERSION,
        peer_id: peer.into(),
        generation,
        signaling: vec![endpoint(port)],
        ice_servers: None,
        relay_ws: None,
        tunnel_url: None,
        started_at: SystemTime::now(),
        expires_at: None,
        previous: previous.map(|(p, port)| PreviousNode {
            peer_id: p.into(),
            signaling: vec![endpoint(port)],
        }),
        ended: None,
        replicas: Vec::new(),
    }
}

/// Drains the relay's outputs; returns (conn, JSON) pairs.
pub fn drain(relay: &mut Relay) -> Vec<(u64, Value)> {
    std::iter::from_fn(|| relay.poll_output())
        .filter_map(|o| match o {
            Output::Send { conn, message } => Some((
                conn.0,
                serde_json::from_str(message.text()).unwrap_or(Value::Null),
            )),
            Output::Close { .. } | Output::Propose(_) => None,
        })
        .collect()
}

/// A relay client of `relay` (connection `conn`, identity `name`).
pub fn open_client(relay: &SharedRelay, conn: u64, name: &str) {
    relay.lock_with(|r| {
        r.connect(
            Instant::now(),
            ConnId(conn),
            ConnInfo {
                peer_id: format!("peer-{name}"),
                metadata: json!({"protocol": "ouroboros/1", "client": name}),
            },
        );
        drain(r);
    });
}

/// Publishes one message; returns the ack's seq, or the error code.
pub fn publish(
    relay: &SharedRelay,
    conn: u64,
    room: &str,
    id: &str,
    body: &str,
) -> Result<u64, String> {
    // Through the host, as a client's write: the handoff's tail is woken.
    let out = relay.lock_with(|r| {
        r.handle_message(
            Instant::now(),
            0,
            ConnId(conn),
            json!({"op": "publish", "room": room, "id": id, "body": body}),
        );
        drain(r)
    });
    for (c, v) in out {
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
pub fn contents(relay: &SharedRelay) -> BTreeMap<String, Vec<(u64, String)>> {
    let snap = relay.lock_with(|r| r.export_snapshot());
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

pub struct Node {
    pub peer: Arc<Peer>,
    pub relay: SharedRelay,
}

/// Starts the predecessor side on `pred_peer`: handoff connections go to the driver.
pub fn serve_predecessor(
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
        rand::SeedableRng::from_os_rng(),
    );
    let handle = spawn_predecessor(pred, Arc::new(relay.clone()));
    let conns = handle.conns.clone();
    tokio::spawn(async move {
        while let Some(c) = peer.accept().await {
            if c.label() == HANDOFF_LABEL {
                let _ = conns.send(c.into()).await;
            }
        }
    });
    handle.events
}

/// A successor that is not registered yet: the production connector registers its peer
/// on the predecessor's signaling server when it first connects.
pub struct Joining {
    pub id: String,
    pub relay: SharedRelay,
}

/// Runs the successor side through the production path: `node::ring`'s connector (a `raw`
/// connection, endpoints tried in turn) and `run_successor`.
#[allow(clippy::too_many_arguments)]
pub async fn successor(
    node: &Joining,
    pred_id: &str,
    pred_port: u16,
    generation: u64,
    secret: &[u8],
    publisher: LocalPublisher,
    record: DiscoveryRecord,
    cfg: SuccessorConfig,
) -> SuccessorOutcome {
    let succ = Successor::new(
        node.id.clone(),
        pred_id.to_string(),
        generation,
        Secret::new(secret.to_vec()).unwrap(),
        record.signaling.clone(),
        cfg,
        Instant::now(),
        rand::SeedableRng::from_os_rng(),
    );
    let connect = predecessor_connector(
        vec![endpoint(pred_port)],
        node.id.clone(),
        pred_id.to_string(),
        // Loopback only, as every peer of these tests.
        |c| c.udp_addrs = vec!["127.0.0.1:0".into()],
    );
    let publish = move || {
        let publisher = publisher.clone();
        let record = record.clone();
        async move { publisher.publish(&record).await }
    };
    run_successor(succ, Arc::new(node.relay.clone()), connect, publish, None).await
}

/// The `ouroboros` binary (`OUROBOROS_BIN` overrides it).
pub fn node_bin() -> String {
    std::env::var("OUROBOROS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ouroboros").into())
}

/// The log of one `ouroboros node` (started with `--log-format json`): every line as it
/// comes, JSON log lines parsed, other lines (`node peer-id …`) as strings.
#[derive(Clone)]
pub struct NodeLog {
    pub name: String,
    pub lines: Arc<Mutex<Vec<Value>>>,
    pub changed: Arc<tokio::sync::Notify>,
}

impl NodeLog {
    pub fn new(name: &str) -> NodeLog {
        NodeLog {
            name: name.into(),
            lines: Arc::default(),
            changed: Arc::default(),
        }
    }

    pub fn push(&self, line: &str) {
        let v = serde_json::from_str::<Value>(line)
            .ok()
            .filter(Value::is_object)
            .unwrap_or_else(|| Value::String(line.to_string()));
        self.lines.lock().unwrap().push(v);
        self.changed.notify_waiters();
    }

    /// Collects the lines of a pipe (a child the test started).
    pub fn read_pipe(&self, pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        use tokio::io::AsyncBufReadExt;
        let me = self.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(pipe).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                me.push(&l);
            }
        });
    }

    /// Collects the lines of a log file another process appends to (a successor launched
    /// by its predecessor writes `<data-dir>/logs/node-gen<N>.log`); polled every 5 ms.
    pub fn tail_file(name: &str, path: std::path::PathBuf) -> NodeLog {
        let log = NodeLog::new(name);
        let me = log.clone();
        tokio::spawn(async move {
            let mut done = 0usize;
            let mut partial = String::new();
            loop {
                if let Ok(bytes) = std::fs::read(&path)
                    && bytes.len() > done
                {
                    partial.push_str(&String::from_utf8_lossy(&bytes[done..]));
                    done = bytes.len();
                    while let Some(i) = partial.find('\n') {
                        let line: String = partial.drain(..=i).collect();
                        me.push(line.trim_end());
                    }
                }
                if Arc::strong_count(&me.lines) == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        log
    }

    /// Log lines whose message is `message`.
    pub fn all(&self, message: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["fields"]["message"] == message)
            .cloned()
            .collect()
    }

    pub fn has(&self, message: &str) -> bool {
        !self.all(message).is_empty()
    }

    /// The peer id the node printed (`node peer-id ID`), if printed yet (the last one: a
    /// relaunched generation appends to the same file).
    pub fn peer_ids(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str()?.strip_prefix("node peer-id ").map(str::to_owned))
            .collect()
    }

    /// Waits for the `n`-th (from 1) line with `message`.
    pub async fn wait_nth(&self, message: &str, n: usize, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if let Some(v) = self.all(message).into_iter().nth(n - 1) {
                return v;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let tail: Vec<String> = {
                    let lines = self.lines.lock().unwrap();
                    lines
                        .iter()
                        .rev()
                        .take(15)
                        .rev()
                        .map(|v| v.to_string())
                        .collect()
                };
                panic!(
                    "{}: no {message:?} (#{n}) within {within:?}; last lines:\n{}",
                    self.name,
                    tail.join("\n")
                );
            }
        }
    }

    pub async fn wait(&self, message: &str, within: Duration) -> Value {
        self.wait_nth(message, 1, within).await
    }

    pub async fn wait_peer_id(&self, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let changed = self.changed.notified();
            if let Some(id) = self.peer_ids().pop() {
                return id;
            }
            assert!(
                tokio::time::timeout_at(deadline, changed).await.is_ok(),
                "{}: no `node peer-id` line within {within:?}",
                self.name
            );
        }
    }
}

/// `kill -9 pid`, only if `pid` is still a node of the ring in `data` (its command line
/// names the ring's data dir): a pid that exited may have been reused by another process.
pub fn kill9(pid: u32, data: &std::path::Path) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let needle = data.as_os_str().as_encoded_bytes();
    if !cmdline.windows(needle.len()).any(|w| w == needle) {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// A crash scenario's folder and processes. Dropping it kill -9s every node the test
/// started and every successor any node launched (found in the logs).
pub struct CrashRing {
    pub _dir: tempfile::TempDir,
    pub data: std::path::PathBuf,
    pub backups: std::path::PathBuf,
    pub record_path: std::path::PathBuf,
    pub secret: &'static str,
    pub pids: Mutex<Vec<u32>>,
    pub logs: Mutex<Vec<NodeLog>>,
}

impl Drop for CrashRing {
    fn drop(&mut self) {
        let mut pids = self.pids.lock().unwrap().clone();
        let mut logs = self.logs.lock().unwrap().clone();
        for entry in std::fs::read_dir(self.data.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let log = NodeLog::new("reaper");
            for l in std::fs::read_to_string(entry.path())
                .unwrap_or_default()
                .lines()
            {
                log.push(l);
            }
            logs.push(log);
        }
        for log in logs {
            pids.extend(
                log.all("launched local successor")
                    .iter()
                    .filter_map(|v| v["fields"]["pid"].as_u64())
                    .map(|p| p as u32),
            );
        }
        for pid in pids {
            kill9(pid, &self.data);
        }
    }
}

/// A node process the test started.
pub struct NodeProc {
    pub child: tokio::process::Child,
    pub log: NodeLog,
    pub peer_id: String,
}

impl CrashRing {
    pub fn new(secret: &'static str) -> CrashRing {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        CrashRing {
            backups: data.join("backups"),
            record_path: data.join("ouroboros.json"),
            data,
            _dir: dir,
            secret,
            pids: Mutex::default(),
            logs: Mutex::default(),
        }
    }

    /// Starts `ouroboros --log-format json node` on port 0 with this ring's data and
    /// backup dirs, backups every 200 ms, generous client rate limits, plus `extra`.
    pub async fn start(&self, name: &str, extra: &[String]) -> NodeProc {
        let mut cmd = tokio::process::Command::new(node_bin());
        cmd.args(["--log-format", "json", "node", "--port", "0"])
            .args(["--backup-interval", "200ms"])
            .args(["--client-rate", "100000", "--client-burst", "100000"])
            .arg("--data-dir")
            .arg(&self.data)
            .arg("--backup-dir")
            .arg(&self.backups)
            .args(extra)
            .env("OUROBOROS_SECRET", self.secret)
            .env("RUST_LOG", "info,rtc=error,rtc_ice=error,webrtc=error")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        self.pids.lock().unwrap().push(child.id().unwrap());
        let log = NodeLog::new(name);
        log.read_pipe(child.stdout.take().unwrap());
        log.read_pipe(child.stderr.take().unwrap());
        self.logs.lock().unwrap().push(log.clone());
        let peer_id = log.wait_peer_id(Duration::from_secs(30)).await;
        NodeProc {
            child,
            log,
            peer_id,
        }
    }

    /// The published discovery record, if any.
    pub fn record(&self) -> Option<DiscoveryRecord> {
        std::fs::read(&self.record_path)
            .ok()
            .and_then(|b| DiscoveryRecord::from_json(&b).ok())
    }

    /// Waits until the discovery record names `generation` (or a newer one).
    pub async fn wait_record(&self, generation: u64, within: Duration) -> DiscoveryRecord {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.record().filter(|r| r.generation >= generation) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "discovery record did not reach generation {generation} within {within:?} (now {:?})",
                self.record().map(|r| (r.generation, r.peer_id))
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn source(&self) -> String {
        self.record_path.to_string_lossy().into_owned()
    }

    /// Starts a successor by hand (as `LocalLauncher` would): generation 1 of `pred`.
    pub async fn start_successor(&self, pred: &NodeProc, extra: &[&str]) -> NodeProc {
        let rec = self.record().expect("predecessor's record");
        assert_eq!(rec.peer_id, pred.peer_id);
        let mut args: Vec<String> = vec![
            "--generation".into(),
            "1".into(),
            "--predecessor-peer-id".into(),
            pred.peer_id.clone(),
            "--predecessor-endpoints".into(),
            serde_json::to_string(&rec.signaling).unwrap(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        self.start("successor", &args).await
    }

    /// Waits for a backup whose high-water marks reach `heads`.
    pub async fn wait_backup(&self, heads: &BTreeMap<String, u64>) {
        // The nodes encrypt their backups with the ring's key.
        let key = ouroboros::handoff::BackupKey::derive(
            &Secret::new(self.secret.as_bytes().to_vec()).unwrap(),
        );
        let store = ouroboros::handoff::DirBackupStore::new(&self.backups, 5).with_key(key);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let covered = store.latest_blocking().ok().flatten().is_some_and(|b| {
                heads
                    .iter()
                    .all(|(room, seq)| b.high_water.get(room).copied().unwrap_or(0) >= *seq)
            });
            if covered {
                return;
            }
            assert!(Instant::now() < deadline, "no backup holding {heads:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A client of the ring that follows it through discovery.
pub async fn ring_client(
    source: &str,
    name: &str,
) -> (
    ouroboros::client::Client,
    tokio::sync::mpsc::UnboundedReceiver<ouroboros::client::Event>,
) {
    let mut cfg = ouroboros::client::ClientConfig::new(name);
    cfg.request_timeout = Duration::from_secs(10);
    ouroboros::client::Client::connect_discovered(source, cfg)
        .await
        .unwrap_or_else(|e| panic!("client {name} cannot connect: {e}"))
}

/// A started predecessor (generation 0) with `n` messages of `body_len` bytes in room
/// `fill`, a writer publishing to room `live` (see [`spawn_writer`]) and, when
/// `backed_up`, a backup that covers the fill.
pub struct Prepared {
    pub pred: NodeProc,
    pub filler: ouroboros::client::Client,
    pub _events: tokio::sync::mpsc::UnboundedReceiver<ouroboros::client::Event>,
    pub prefill: Vec<(u64, String)>,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    pub writer: tokio::task::JoinHandle<(ouroboros::client::Client, Vec<(u64, String)>)>,
}

pub async fn prepare(
    ring: &CrashRing,
    extra: &[String],
    n: usize,
    body_len: usize,
    backed_up: bool,
) -> Prepared {
    let pred = ring.start("predecessor", extra).await;
    ring.wait_record(0, Duration::from_secs(20)).await;
    let (filler, _events) = ring_client(&ring.source(), "filler").await;
    let prefill = fill(&filler, "fill", n, body_len).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_writer(ring.source(), stop.clone()).await;
    if backed_up {
        ring.wait_backup(&BTreeMap::from([(
            "fill".to_string(),
            prefill.len() as u64,
        )]))
        .await;
    }
    Prepared {
        pred,
        filler,
        _events,
        prefill,
        stop,
        writer,
    }
}

/// Publishes `n` messages of `body_len` bytes to `room`, 64 at a time; returns the acks as
/// (seq, id).
pub async fn fill(
    client: &ouroboros::client::Client,
    room: &str,
    n: usize,
    body_len: usize,
) -> Vec<(u64, String)> {
    client.join(room, None).await.unwrap();
    let body = "x".repeat(body_len);
    let mut acked = Vec::new();
    for batch in (0..n).collect::<Vec<_>>().chunks(64) {
        let acks = futures::future::join_all(batch.iter().map(|i| {
            let id = format!("{room}-{i}");
            let body = body.clone();
            async move {
                let ack = client
                    .publish_with_id(room, &id, json!(body))
                    .await
                    .unwrap_or_else(|e| panic!("fill {id}: {e}"));
                (ack.seq, id)
            }
        }))
        .await;
        acked.extend(acks);
    }
    acked
}

/// A client publishing to room `live` as fast as acks come until `stop` or the first
/// error (its node died); returns once the first publish is acknowledged, with the task
/// that yields the client and its acks as (seq, id).
pub async fn spawn_writer(
    source: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(ouroboros::client::Client, Vec<(u64, String)>)> {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let (client, mut events) = ring_client(&source, "writer").await;
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        client.join("live", None).await.unwrap();
        let mut first_tx = Some(first_tx);
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let id = format!("live-{i}");
            match client.publish_with_id("live", &id, json!(i)).await {
                Ok(ack) => acked.push((ack.seq, id)),
                Err(_) => break,
            }
            if let Some(tx) = first_tx.take() {
                let _ = tx.send(());
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (client, acked)
    });
    tokio::time::timeout(Duration::from_secs(30), first_rx)
        .await
        .expect("the writer's first publish is acknowledged")
        .expect("the writer runs");
    task
}

/// Every stored message of `room` as (seq, id), oldest first.
pub async fn stored(client: &ouroboros::client::Client, room: &str) -> Vec<(u64, String)> {
    client.join(room, None).await.unwrap();
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = client.history(room, before, Some(50)).await.unwrap();
        if page.messages.is_empty() {
            break;
        }
        before = page.messages.last().map(|m| m.seq);
        out.extend(
            page.messages
                .into_iter()
                .map(|m| (m.seq, m.id.unwrap_or_default())),
        );
    }
    out.sort();
    out
}

/// The first `welcome` on `events`.
pub async fn welcome(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<ouroboros::client::Event>,
) -> Value {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Some(ouroboros::client::Event::Welcome { raw, .. }) => return raw,
                Some(_) => {}
                None => panic!("client events ended before `welcome`"),
            }
        }
    })
    .await
    .expect("a welcome")
}

/// `/status.json` of the node a discovery record names.
pub async fn status_json(rec: &DiscoveryRecord) -> Value {
    let ep = &rec.signaling[0];
    reqwest::Client::new()
        .get(format!("http://{}:{}/status.json", ep.host, ep.port))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Checks what a recovered node holds in `room` against what was acknowledged: every stored
/// seq is unique and below the gap; every acknowledged message is stored at its seq or lies
/// in the announced skipped range `[first, last]` (lost with the predecessor — the gap says
/// so). Returns how many acknowledged messages were lost.
pub fn check_against_gap(
    room: &str,
    stored: &[(u64, String)],
    acked: &[(u64, String)],
    skipped: Option<(u64, u64)>,
) -> usize {
    let by_seq: BTreeMap<u64, &str> = stored.iter().map(|(s, i)| (*s, i.as_str())).collect();
    assert_eq!(by_seq.len(), stored.len(), "{room}: a seq stored twice");
    let ids: HashSet<&str> = stored.iter().map(|(_, i)| i.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "{room}: an id stored twice");
    let mut lost = 0;
    for (seq, id) in acked {
        match by_seq.get(seq) {
            Some(got) => assert_eq!(got, id, "{room}: seq {seq} reused"),
            None => {
                let (first, last) = skipped.unwrap_or_else(|| {
                    panic!("{room}: acknowledged {id} (seq {seq}) lost without a gap")
                });
                assert!(
                    (first..=last).contains(seq),
                    "{room}: acknowledged {id} (seq {seq}) lost outside the gap [{first}, {last}]"
                );
                lost += 1;
            }
        }
    }
    if let Some((first, last)) = skipped {
        assert!(
            stored.iter().all(|(s, _)| !(first..=last).contains(s)),
            "{room}: something stored inside the gap"
        );
    }
    lost
}

/// The range of `room` a gap notice announces as possibly lost: its `skipped` entry, or,
/// for a room the recovered state did not know at all (created after the newest backup),
/// everything up to the margin (new rooms start past it; these scenarios recover once, so
/// the previous floor is 0).
pub fn skipped(gap: &Value, room: &str) -> Option<(u64, u64)> {
    if gap.is_null() {
        return None;
    }
    let r = &gap["skipped"][room];
    match (r[0].as_u64(), r[1].as_u64()) {
        (Some(first), Some(last)) => Some((first, last)),
        _ => Some((1, gap["margin"].as_u64()?)),
    }
}

/// The checks shared by the "predecessor killed" scenarios once the successor serves:
/// discovery moved to generation 1 (the successor), `welcome` and `/status.json` carry the
/// same gap notice (`predecessor_lost`), nothing acknowledged is lost outside the announced
/// gap, a new publish never reuses a seq, and the writer ends on the successor.
pub async fn check_recovered_successor(
    ring: &CrashRing,
    succ: &NodeProc,
    prefill: &[(u64, String)],
    writer: tokio::task::JoinHandle<(ouroboros::client::Client, Vec<(u64, String)>)>,
    expected_sources: &[&str],
) -> Value {
    use ouroboros::client::ConnectionState;
    let rec = ring.wait_record(1, Duration::from_secs(60)).await;
    assert_eq!(
        (rec.generation, rec.peer_id.as_str()),
        (1, succ.peer_id.as_str())
    );
    succ.log
        .wait(
            "serving after a crash recovery (gap announced)",
            Duration::from_secs(10),
        )
        .await;
    let (reader, mut events) = ring_client(&ring.source(), "reader").await;
    let welcome = welcome(&mut events).await;
    assert_eq!(welcome["generation"], 1, "{welcome}");
    let gap = welcome["gap"].clone();
    assert_eq!(gap["reason"], "predecessor_lost", "{welcome}");
    let source = gap["recovery"]["source"].as_str().unwrap_or_default();
    assert!(
        expected_sources.contains(&source),
        "recovery source {source:?}, expected one of {expected_sources:?}: {gap}"
    );
    let status = status_json(&rec).await;
    assert_eq!(status["generation"], 1);
    assert_eq!(status["gap"], gap, "/status.json announces the same gap");

    let stored_fill = stored(&reader, "fill").await;
    assert!(
        check_against_gap("fill", &stored_fill, prefill, skipped(&gap, "fill")) == 0,
        "the prefill was in the backup and the snapshot"
    );
    let (writer_client, acked) = writer.await.unwrap();
    assert!(!acked.is_empty(), "the writer published during the handoff");
    let stored_live = stored(&reader, "live").await;
    let lost = check_against_gap("live", &stored_live, &acked, skipped(&gap, "live"));
    eprintln!(
        "recovered from {source}: {} of {} acknowledged live messages lost inside the gap {:?}",
        lost,
        acked.len(),
        skipped(&gap, "live")
    );
    // A new publish lands past the gap: no seq the dead node handed out is reused.
    let (_, last) = skipped(&gap, "live").expect("the live room's gap");
    let seq = reader
        .publish_with_id("live", "after-recovery", json!("x"))
        .await
        .unwrap()
        .seq;
    assert!(seq > last, "seq {seq} after the gap ending at {last}");
    // The writer, whose node died under it, finds the successor through discovery.
    tokio::time::timeout(
        Duration::from_secs(30),
        writer_client.wait_state(
            |s| matches!(s, ConnectionState::Live { generation, .. } if *generation >= 1),
        ),
    )
    .await
    .expect("the writer follows the ring to the successor")
    .unwrap();
    writer_client.close().await;
    reader.close().await;
    gap
}

/// Every acknowledged message stored exactly once at its seq, seqs dense from 1.
pub fn check_lossless(room: &str, stored: &[(u64, String)], acked: &[(u64, String)]) {
    let lost = check_against_gap(room, stored, acked, None);
    assert_eq!(lost, 0);
    for (i, (seq, _)) in stored.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "{room}: dense sequence");
    }
}

/// The checks of a handoff that lost nothing: generation 1 is `succ_peer_id` in discovery,
/// its `welcome` and `/status.json` announce no gap, every acknowledged message is stored
/// exactly once at its seq, and the writer ends on the newest node.
pub async fn check_lossless_successor(
    ring: &CrashRing,
    succ_peer_id: &str,
    prefill: &[(u64, String)],
    writer: tokio::task::JoinHandle<(ouroboros::client::Client, Vec<(u64, String)>)>,
) {
    use ouroboros::client::ConnectionState;
    let rec = ring.wait_record(1, Duration::from_secs(60)).await;
    assert_eq!((rec.generation, rec.peer_id.as_str()), (1, succ_peer_id));
    let status = status_json(&rec).await;
    assert_eq!(status["generation"], 1);
    assert_eq!(status["gap"], Value::Null, "no gap on /status.json");
    let (reader, mut events) = ring_client(&ring.source(), "reader").await;
    let welcome = welcome(&mut events).await;
    assert_eq!(welcome["gap"], Value::Null, "no gap in welcome: {welcome}");
    check_lossless("fill", &stored(&reader, "fill").await, prefill);
    let (writer_client, acked) = writer.await.unwrap();
    assert!(!acked.is_empty(), "the writer published during the handoff");
    check_lossless("live", &stored(&reader, "live").await, &acked);
    let newest = ring.record().map_or(1, |r| r.generation);
    tokio::time::timeout(
        Duration::from_secs(30),
        writer_client.wait_state(
            |s| matches!(s, ConnectionState::Live { generation, .. } if *generation >= newest),
        ),
    )
    .await
    .expect("the writer ends on the newest node")
    .unwrap();
    writer_client.close().await;
    reader.close().await;
}
