//! The soak: a local ring (`ouroboros node --launcher local`) rotating under load, with the
//! faults GitHub Actions has (`OUROBOROS_FAULTS`, see `src/lifecycle/faults.rs`), checked from
//! the outside by real Rust clients. Used by `benches/soak.rs` (the tool: any number of
//! rotations or a duration) and `tests/soak.rs` (the fast version in `cargo test`).
//!
//! Publishers publish numbered messages with their own ids (one in flight each, at a fixed
//! rate) and keep every acknowledgement; readers join the room and keep every message they
//! receive. At the end a fresh client reads the whole history from the newest node. The
//! verdict: rotations done, acknowledged messages, acknowledged messages missing from the
//! history, ids stored twice, seqs skipped (announced gaps), the longest time without any
//! acknowledgement (no primary), and whether every client ended on the newest generation.

#![allow(dead_code)]

use ouroboros::client::{Client, ClientConfig, ConnectionState, Event};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The soak ring's shared secret (its backups are audited with it).
const SECRET: &str = "a ring secret for the soak";

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The `ouroboros` binary.
    pub bin: PathBuf,
    /// Stop after this many rotations (the newest generation).
    pub rotations: u64,
    /// Or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// Extra `ouroboros node` flags (`--lifetime`, `--handoff-lead`, ...).
    pub node_args: Vec<String>,
    /// `OUROBOROS_FAULTS` for the ring (empty: none).
    pub faults: String,
    /// Publishing clients.
    pub publishers: usize,
    /// Messages per second per publisher.
    pub rate: f64,
    /// Reading clients.
    pub readers: usize,
    /// The ring is declared dead after this long without a new generation.
    pub stall: Duration,
    /// Keep the data dir (logs) here instead of a temporary one.
    pub keep_dir: Option<PathBuf>,
    /// Print progress on stderr.
    pub verbose: bool,
}

/// The outcome.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// The newest generation at the end.
    pub rotations: u64,
    /// Messages acknowledged to publishers.
    pub acked: usize,
    /// Acknowledged messages not in the newest node's history (or at another seq).
    pub missing: usize,
    /// Ids stored more than once.
    pub duplicated: usize,
    /// Seqs skipped in the history (an announced gap).
    pub skipped_seqs: u64,
    /// Acknowledged messages a reader never received.
    pub reader_missing: usize,
    /// The longest time without any acknowledgement.
    pub longest_without_primary: Duration,
    /// Clients live on the newest generation at the end / all clients.
    pub clients_on_newest: (usize, usize),
    /// The ring stopped rotating (no new generation within `stall`).
    pub stalled: bool,
    /// How long it ran.
    pub elapsed: Duration,
    /// Fault injections seen in the logs: (kind, count).
    pub faults: BTreeMap<String, usize>,
}

impl Verdict {
    /// Nothing acknowledged lost, nothing doubled, no gap, the ring alive, every client on the
    /// newest node.
    pub fn passed(&self) -> bool {
        self.missing == 0
            && self.duplicated == 0
            && self.skipped_seqs == 0
            && self.reader_missing == 0
            && !self.stalled
            && self.clients_on_newest.0 == self.clients_on_newest.1
    }

    /// The one-line summary.
    pub fn line(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        format!(
            "soak verdict: {} rotations={} acked={} missing={} duplicated={} skipped_seqs={} \
             reader_missing={} longest_without_primary={:.2}s clients_on_newest={}/{} \
             stalled={} elapsed={:.0}s faults=[{}]",
            if self.passed() { "PASS" } else { "FAIL" },
            self.rotations,
            self.acked,
            self.missing,
            self.duplicated,
            self.skipped_seqs,
            self.reader_missing,
            self.longest_without_primary.as_secs_f64(),
            self.clients_on_newest.0,
            self.clients_on_newest.1,
            self.stalled,
            self.elapsed.as_secs_f64(),
            faults.join(" "),
        )
    }
}

const ROOM: &str = "soak";

fn generation(record: &Path) -> Option<u64> {
    let bytes = std::fs::read(record).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["generation"].as_u64()
}

/// Pids of processes whose command line mentions `dir` (the ring's nodes: each has it in
/// `--data-dir`), found through /proc; nothing else is touched.
fn ring_pids(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != std::process::id() as i32)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

fn kill(pid: i32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// Counts the fault injections and exits the nodes logged.
fn scan_logs(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let patterns = [
        ("delay", "fault injection: launch delayed"),
        ("kill9", "fault injection: kill -9"),
        ("vanish", "fault injection: the host ends"),
        (
            "duplicate_stopped",
            "another successor of this generation took over",
        ),
        ("recovered", "recovered without the predecessor"),
        ("final_backup_no_gap", "final backup: nothing missing"),
        ("no_successor", "NoSuccessor"),
    ];
    let Ok(rd) = std::fs::read_dir(dir.join("logs")) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for (k, p) in patterns {
            let n = text.matches(p).count();
            if n > 0 {
                *out.entry(k.to_string()).or_default() += n;
            }
        }
    }
    out
}

/// Runs the soak; the ring is stopped (and every node it started killed) before returning.
pub async fn run(cfg: SoakConfig) -> Verdict {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = cfg
        .keep_dir
        .clone()
        .unwrap_or_else(|| tmp.path().join("data"));
    std::fs::create_dir_all(data.join("logs")).expect("data dir");
    let record = data.join("ouroboros.json");
    let log = std::fs::File::create(data.join("logs").join("node-gen0.log")).expect("log");
    let mut first = tokio::process::Command::new(&cfg.bin)
        .args(["node", "--port", "0", "--launcher", "local"])
        .args(&cfg.node_args)
        .arg("--data-dir")
        .arg(&data)
        .arg("--backup-dir")
        .arg(data.join("backups"))
        .args(["--backup-interval", "1s"])
        .env("OUROBOROS_SECRET", SECRET)
        .env("OUROBOROS_FAULTS", &cfg.faults)
        .env(
            "RUST_LOG",
            "info,rtc=error,rtc_ice=error,webrtc=error,webrtc_sctp=error",
        )
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start the first node");
    let started = Instant::now();
    while generation(&record).is_none() {
        if started.elapsed() > Duration::from_secs(30) || first.try_wait().ok().flatten().is_some()
        {
            stop_ring(&data, &mut first).await;
            panic!(
                "the first node did not publish its record (see {})",
                data.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let source = record.to_string_lossy().into_owned();
    let stop = Arc::new(AtomicBool::new(false));
    // Every acknowledgement, with its time: (when, seq, id).
    let acks: Arc<Mutex<Vec<(Instant, u64, String)>>> = Arc::default();

    // Readers: every message they receive, by seq.
    let mut readers = Vec::new();
    for r in 0..cfg.readers {
        let source = source.clone();
        let (client, mut events) =
            Client::connect_discovered(&source, ClientConfig::new(format!("reader-{r}")))
                .await
                .expect("reader connects");
        // From the first seq on: readers must see every acknowledged message.
        client.join(ROOM, Some(0)).await.expect("reader joins");
        let seen: Arc<Mutex<HashMap<u64, String>>> = Arc::default();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let Event::Message(m) = ev {
                    seen2
                        .lock()
                        .unwrap()
                        .insert(m.seq, m.id.unwrap_or_default());
                }
            }
        });
        readers.push((client, seen));
    }

    let mut publishers = Vec::new();
    for p in 0..cfg.publishers {
        let (source, stop, acks) = (source.clone(), stop.clone(), acks.clone());
        let period = Duration::from_secs_f64(1.0 / cfg.rate.max(0.1));
        publishers.push(tokio::spawn(async move {
            let cfg = ClientConfig::new(format!("publisher-{p}"));
            let (client, mut events) = Client::connect_discovered(&source, cfg)
                .await
                .expect("publisher connects");
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let id = format!("p{p}-{i}");
                match client.publish_with_id(ROOM, &id, json!(i)).await {
                    Ok(ack) => acks.lock().unwrap().push((Instant::now(), ack.seq, id)),
                    Err(e) => eprintln!("soak: publish {id} refused: {e}"),
                }
                i += 1;
            }
            client
        }));
    }
    // Watch the rotations.
    let mut last_gen = generation(&record).unwrap_or(0);
    let mut last_change = Instant::now();
    let mut stalled = false;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let g = generation(&record).unwrap_or(last_gen);
        if g != last_gen {
            if cfg.verbose {
                eprintln!(
                    "soak: generation {g} at {:.0}s, {} acked",
                    started.elapsed().as_secs_f64(),
                    acks.lock().unwrap().len()
                );
            }
            last_gen = g;
            last_change = Instant::now();
        }
        if g >= cfg.rotations || cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if last_change.elapsed() > cfg.stall {
            eprintln!(
                "soak: no new generation for {:?}: the ring is dead",
                cfg.stall
            );
            stalled = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    // The publishers finish their last publish (it stays pending until a node takes it).
    let mut clients = Vec::new();
    for p in publishers {
        match tokio::time::timeout(Duration::from_secs(60), p).await {
            Ok(Ok(c)) => clients.push(c),
            _ => eprintln!("soak: a publisher did not finish its last publish"),
        }
    }
    let newest = generation(&record).unwrap_or(last_gen);
    let mut acks = std::mem::take(&mut *acks.lock().unwrap());
    acks.sort_by_key(|a| a.0);
    let mut longest = Duration::ZERO;
    for w in acks.windows(2) {
        longest = longest.max(w[1].0 - w[0].0);
    }
    let max_seq = acks.iter().map(|a| a.1).max().unwrap_or(0);

    // Readers catch up; every client must be live on the newest generation.
    let all: Vec<&Client> = clients
        .iter()
        .chain(readers.iter().map(|(c, _)| c))
        .collect();
    let mut on_newest = 0;
    for c in &all {
        let live = tokio::time::timeout(
            Duration::from_secs(30),
            c.wait_state(
                |s| matches!(s, ConnectionState::Live { generation, .. } if *generation >= newest),
            ),
        )
        .await;
        if matches!(live, Ok(Ok(_))) {
            on_newest += 1;
        }
    }
    let catch_up = Instant::now() + Duration::from_secs(30);
    while readers
        .iter()
        .any(|(_, seen)| seen.lock().unwrap().keys().max().copied().unwrap_or(0) < max_seq)
        && Instant::now() < catch_up
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reader_missing = 0;
    for (r, (_, seen)) in readers.iter().enumerate() {
        let seen = seen.lock().unwrap();
        let missed: Vec<u64> = acks
            .iter()
            .filter(|(_, seq, id)| seen.get(seq) != Some(id))
            .map(|a| a.1)
            .collect();
        if !missed.is_empty() {
            eprintln!(
                "soak: reader-{r} missed {} acknowledged messages, seqs {:?}...",
                missed.len(),
                &missed[..missed.len().min(20)]
            );
        }
        reader_missing += missed.len();
    }

    // The newest node's whole history (a page that times out on the loaded machine is asked
    // for again; if the history still cannot be read whole, the newest node's final backup,
    // written when the ring is stopped below, is audited instead).
    let mut stored: Vec<(u64, String)> = Vec::new();
    let mut history_complete = false;
    let mut auditor_cfg = ClientConfig::new("auditor");
    auditor_cfg.request_timeout = Duration::from_secs(60);
    match Client::connect_discovered(&source, auditor_cfg).await {
        Ok((auditor, _ev)) => {
            let mut before = None;
            let mut failures = 0;
            loop {
                let page = match auditor.history(ROOM, before, Some(500)).await {
                    Ok(p) => p,
                    Err(e) if failures < 5 => {
                        failures += 1;
                        eprintln!("soak: history: {e}; asking again");
                        continue;
                    }
                    Err(e) => {
                        eprintln!("soak: history: {e}; giving up on the live history");
                        break;
                    }
                };
                if page.messages.is_empty() {
                    history_complete = true;
                    break;
                }
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
            auditor.close().await;
        }
        Err(e) => eprintln!("soak: the auditor could not connect: {e}"),
    }
    for c in &all {
        c.close().await;
    }
    let faults = scan_logs(&data);
    stop_ring(&data, &mut first).await;
    if !history_complete {
        match final_backup_history(&data).await {
            Some(h) => {
                eprintln!(
                    "soak: auditing the newest node's final backup instead ({} messages)",
                    h.len()
                );
                stored = h;
            }
            None => eprintln!("soak: no final backup to audit either"),
        }
    }
    stored.sort();
    let by_seq: HashMap<u64, &String> = stored.iter().map(|(s, id)| (*s, id)).collect();
    let lost: Vec<&(Instant, u64, String)> = acks
        .iter()
        .filter(|(_, seq, id)| by_seq.get(seq) != Some(&id))
        .collect();
    if !lost.is_empty() {
        let first: Vec<(u64, &str)> = lost.iter().take(20).map(|a| (a.1, a.2.as_str())).collect();
        eprintln!(
            "soak: {} acknowledged messages not in the history: {first:?}...",
            lost.len()
        );
    }
    let missing = lost.len();
    let mut ids: HashMap<&String, usize> = HashMap::new();
    for (_, id) in &stored {
        *ids.entry(id).or_default() += 1;
    }
    let duplicated = ids.values().filter(|n| **n > 1).count();
    let skipped_seqs = stored.windows(2).map(|w| w[1].0 - w[0].0 - 1).sum::<u64>()
        + stored.first().map_or(0, |f| f.0 - 1);

    Verdict {
        rotations: newest,
        acked: acks.len(),
        missing,
        duplicated,
        skipped_seqs,
        reader_missing,
        longest_without_primary: longest,
        clients_on_newest: (on_newest, all.len()),
        stalled,
        elapsed: started.elapsed(),
        faults,
    }
}

/// The room's messages in the newest backup of the ring (the newest node writes a final one
/// when it is stopped), decrypted with the soak's ring secret.
async fn final_backup_history(data: &Path) -> Option<Vec<(u64, String)>> {
    use ouroboros::handoff::{BackupKey, DirBackupStore, HostOps, Secret, SharedRelay};
    use ouroboros::relay::{Relay, RelayConfig};
    let key = BackupKey::derive(&Secret::new(SECRET.as_bytes().to_vec()).ok()?);
    let backup = DirBackupStore::new(data.join("backups"), 5)
        .with_key(key)
        .latest_blocking()
        .ok()??;
    let relay = SharedRelay::new(Relay::new(
        RelayConfig::new("auditor", backup.generation),
        std::time::Instant::now(),
    ));
    relay.restore(backup.snapshot).await.ok()?;
    let snapshot = relay.lock_with(|r| r.export_snapshot());
    Some(
        snapshot
            .messages
            .into_iter()
            .filter(|m| m.room() == ROOM)
            .map(|m| (m.seq(), m.id().unwrap_or_default().to_string()))
            .collect(),
    )
}

/// Ctrl-C to the newest node (it stops the successors still starting), then `kill -9` of
/// whatever of this ring still runs.
async fn stop_ring(data: &Path, first: &mut tokio::process::Child) {
    if let Ok(pid) = std::fs::read_to_string(data.join("ouroboros.pid"))
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        kill(pid, "-INT");
        let gone = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < gone {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = first.start_kill();
    let _ = first.wait().await;
    for pid in ring_pids(data) {
        kill(pid, "-9");
    }
}
