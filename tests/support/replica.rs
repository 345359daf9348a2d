//! `ouroboros replica` members (or `ouroboros node --replicas 3` nodes) as child processes,
//! and an operator's client of them: shared by `tests/replica.rs`, `tests/replicated_node.rs`
//! and `benches/replica.rs`.

#![allow(dead_code)] // each user takes what it needs

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ouroboros::replica::{
    Call, CallFailure, HistoryRequest, HttpTransport, Message, NodeId, OPERATOR, Outcome,
    RemoveRequest, RpcKey, Status,
};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

/// The ring's secret in tests and benchmarks.
pub const SECRET: &str = "replica-test-secret-0123456789";

/// What a member process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `ouroboros replica`: the replicated log alone.
    Replica,
    /// `ouroboros node --replicas 3`: a whole node (signaling, relay WebSocket, the node's
    /// peer) whose relay is the replicated log's.
    Node,
}

/// One `ouroboros replica` (or `ouroboros node`) process.
pub struct Member {
    pub id: NodeId,
    pub url: String,
    pub child: Child,
    /// Its stdout lines (the `listening`, `bootstrapped` and `joined` lines).
    lines: mpsc::UnboundedReceiver<String>,
}

impl Member {
    /// The process's peak resident set (`VmHWM` in `/proc/{pid}/status`), in bytes (Linux).
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Starts member `id`: `--bootstrap` when `contacts` is empty, else `--join` each of them.
    /// Returns once it listens (not yet joined: see [`Member::wait_line`]).
    pub async fn start(
        id: NodeId,
        contacts: &[(NodeId, String)],
        logs: &std::path::Path,
    ) -> Member {
        Member::start_at("127.0.0.1", id, contacts, logs).await
    }

    /// [`Member::start`] listening (and calling the other members) from `ip`.
    pub async fn start_at(
        ip: &str,
        id: NodeId,
        contacts: &[(NodeId, String)],
        logs: &std::path::Path,
    ) -> Member {
        Member::spawn(Kind::Replica, ip, id, contacts, logs).await
    }

    /// Starts member `id` of `kind` on `ip`: a new ring when `contacts` is empty, else joining
    /// through them. Returns once it listens (not yet joined: see [`Member::wait_line`]).
    pub async fn spawn(
        kind: Kind,
        ip: &str,
        id: NodeId,
        contacts: &[(NodeId, String)],
        logs: &std::path::Path,
    ) -> Member {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ouroboros"));
        match kind {
            Kind::Replica => {
                cmd.args([
                    "replica",
                    "--id",
                    &id.to_string(),
                    "--listen",
                    &format!("{ip}:0"),
                ])
                .args(["--heartbeat", "300ms", "--election-timeout", "1200ms"])
                .args(["--write-timeout", "3s", "--join-timeout", "90s"]);
                if contacts.is_empty() {
                    cmd.arg("--bootstrap");
                }
                for (cid, url) in contacts {
                    cmd.arg("--join").arg(format!("{cid}={url}"));
                }
            }
            Kind::Node => {
                let data = logs.join(format!("node-{id}"));
                cmd.args(["node", "--host", ip, "--port", "0", "--replicas", "3"])
                    .args(["--replica-id", &id.to_string()])
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--replica-heartbeat", "300ms"])
                    .args(["--replica-election-timeout", "1200ms"])
                    .args(["--replica-write-timeout", "3s"])
                    .args(["--replica-join-timeout", "90s"])
                    // The test's clients publish without pause.
                    .args(["--client-rate", "100000", "--client-burst", "100000"]);
                for (cid, url) in contacts {
                    cmd.arg("--replica-join").arg(format!("{cid}={url}"));
                }
            }
        }
        let log = std::fs::File::create(logs.join(format!("member-{id}.log"))).unwrap();
        cmd.env("OUROBOROS_SECRET", SECRET)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn ouroboros replica");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut m = Member {
            id,
            url: String::new(),
            child,
            lines,
        };
        let line = m
            .wait_line(
                &format!("replica member {id} listening on"),
                Duration::from_secs(30),
            )
            .await;
        m.url = line.rsplit(' ').next().unwrap().to_owned();
        m
    }

    /// Waits for a stdout line containing `needle`.
    pub async fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(needle) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("member {} exited before printing {needle:?}", self.id),
                Err(_) => panic!("member {}: no {needle:?} line within {within:?}", self.id),
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("member still running") as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    pub async fn kill9(mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }

    /// SIGTERM (graceful), and waits for the exit.
    pub async fn stop(mut self) {
        self.signal(SIGTERM);
        timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("member stops on SIGTERM")
            .unwrap();
    }
}

use libc::SIGTERM;

/// The members' log folder: removed after a passing test, kept (and named) after a failure.
pub struct Logs(Option<tempfile::TempDir>);

impl Logs {
    pub fn new() -> Logs {
        Logs(Some(
            tempfile::Builder::new()
                .prefix("replica-test-")
                .tempdir()
                .unwrap(),
        ))
    }

    pub fn path(&self) -> &std::path::Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("members' logs kept in {}", dir.keep().display());
        }
    }
}

/// The live members' addresses, shared with the publishers.
pub type Book = Arc<Mutex<Vec<(NodeId, String)>>>;

/// An operator's client (member id 0) over the ring's key; a call may take 5 s.
pub fn operator() -> Arc<HttpTransport> {
    operator_with_timeout(Duration::from_secs(5))
}

/// An operator's client whose calls may take `limit`.
pub fn operator_with_timeout(limit: Duration) -> Arc<HttpTransport> {
    ouroboros::install_crypto_provider();
    Arc::new(HttpTransport::new(
        OPERATOR,
        reqwest::Client::new(),
        Arc::new(RpcKey::from_secret(SECRET.as_bytes())),
        limit,
    ))
}

/// Calls `call` on live members in turn until one answers `Ok` (60 s at most).
pub async fn until_ok<Req: serde::Serialize, T: serde::de::DeserializeOwned>(
    op: &HttpTransport,
    book: &Book,
    call: Call,
    req: &Req,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let members = book.lock().unwrap().clone();
        for (id, url) in members {
            op.set_addr(id, &url);
            match op.call::<_, Outcome<T>>(id, call, req).await {
                Ok(Outcome::Ok(v)) => return v,
                Ok(Outcome::Err(f @ CallFailure::BadRequest { .. })) => panic!("{call:?}: {f:?}"),
                Ok(Outcome::Err(f)) => last = format!("member {id}: {f:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{call:?} did not succeed within 60 s: {last}");
}

pub async fn status_of(op: &HttpTransport, m: &Member) -> Option<Status> {
    op.set_addr(m.id, &m.url);
    match op.call::<_, Outcome<Status>>(m.id, Call::Status, &()).await {
        Ok(Outcome::Ok(s)) => Some(s),
        _ => None,
    }
}

/// Starts member `id` joining through every member of `book` and waits until it is a voter.
pub async fn join_new(id: NodeId, book: &Book, logs: &std::path::Path) -> Member {
    join_new_of(Kind::Replica, id, book, logs).await
}

/// [`join_new`] for a member of `kind`.
pub async fn join_new_of(kind: Kind, id: NodeId, book: &Book, logs: &std::path::Path) -> Member {
    let contacts = book.lock().unwrap().clone();
    let mut m = Member::spawn(kind, "127.0.0.1", id, &contacts, logs).await;
    m.wait_line("joined as a voter", Duration::from_secs(90))
        .await;
    m
}

pub fn book_of(members: &[Member]) -> Vec<(NodeId, String)> {
    members.iter().map(|m| (m.id, m.url.clone())).collect()
}

/// What the publishers got acknowledged: (room, from, id) → seq.
pub type Acks = Arc<Mutex<HashMap<(String, String, String), u64>>>;

/// Waits until every member has applied everything its leader has, then returns each
/// member's history of every room, and checks they are the same.
pub async fn settled_histories(
    op: &HttpTransport,
    members: &[Member],
    rooms_to_read: &[&str],
) -> BTreeMap<String, Vec<Message>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut statuses = Vec::new();
        for m in members {
            statuses.push(status_of(op, m).await);
        }
        let all: Option<Vec<Status>> = statuses.into_iter().collect();
        if let Some(all) = all {
            let leader = all.iter().find(|s| s.role == "leader");
            if let Some(l) = leader
                && all
                    .iter()
                    .all(|s| s.applied == l.last_log && s.leader == Some(l.id))
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "members did not settle within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut first: Option<BTreeMap<String, Vec<Message>>> = None;
    for m in members {
        op.set_addr(m.id, &m.url);
        let mut rooms = BTreeMap::new();
        for room in rooms_to_read {
            let req = HistoryRequest {
                room: (*room).into(),
                ..HistoryRequest::default()
            };
            let Outcome::Ok(h) = op
                .call::<_, Outcome<Vec<Message>>>(m.id, Call::History, &req)
                .await
                .unwrap()
            else {
                panic!("history refused by member {}", m.id);
            };
            rooms.insert((*room).to_owned(), h);
        }
        match &first {
            None => first = Some(rooms),
            Some(f) => assert!(
                *f == rooms,
                "member {} holds another history than member {}",
                m.id,
                members[0].id
            ),
        }
    }
    first.unwrap()
}

/// Every room numbered 1, 2, 3, … with no `(from, id)` twice, and every acknowledged message
/// in it exactly once at its acknowledged seq. Returns (acknowledged, stored).
pub fn audit(history: &BTreeMap<String, Vec<Message>>, acks: &Acks) -> (usize, usize) {
    let mut at: HashMap<(String, String, String), u64> = HashMap::new();
    let mut stored = 0;
    for (room, messages) in history {
        for (i, m) in messages.iter().enumerate() {
            assert_eq!(m.seq, i as u64 + 1, "room {room}: seqs are not dense");
            let key = (room.clone(), m.from.clone(), m.id.clone());
            assert!(
                at.insert(key, m.seq).is_none(),
                "room {room}: {} stored twice",
                m.id
            );
            stored += 1;
        }
    }
    let acks = acks.lock().unwrap();
    for (key, seq) in acks.iter() {
        assert_eq!(
            at.get(key),
            Some(seq),
            "acknowledged {key:?} at seq {seq} is not there in the surviving members' log"
        );
    }
    (acks.len(), stored)
}

/// Waits until `acked` has grown by `more` (at most `within`): progress between faults.
pub async fn await_progress(
    acked: &mut tokio::sync::watch::Receiver<usize>,
    more: usize,
    within: Duration,
    round: usize,
) {
    let before = *acked.borrow();
    timeout(within, acked.wait_for(|n| *n >= before + more))
        .await
        .unwrap_or_else(|_| panic!("no progress before round {round}"))
        .unwrap();
}

/// Kills a random member of `kind` (leader or follower) with SIGKILL, has member `new_id`
/// join in its place, then removes the dead one from the voters. Returns whether it led.
pub async fn kill_and_replace(
    kind: Kind,
    members: &mut Vec<Member>,
    book: &Book,
    op: &HttpTransport,
    new_id: NodeId,
    logs: &std::path::Path,
) -> bool {
    use rand::Rng;
    let victim = rand::rng().random_range(0..members.len());
    let was_leader = status_of(op, &members[victim])
        .await
        .is_some_and(|s| s.role == "leader");
    let dead = members.remove(victim);
    let dead_id = dead.id;
    *book.lock().unwrap() = book_of(members);
    dead.kill9().await;
    members.push(join_new_of(kind, new_id, book, logs).await);
    *book.lock().unwrap() = book_of(members);
    until_ok::<_, ()>(op, book, Call::Remove, &RemoveRequest { id: dead_id }).await;
    was_leader
}

/// Environment variable set in the child test process that runs inside its own network
/// namespace ([`in_own_network_namespace`]).
pub const NETNS_ENV: &str = "OUROBOROS_REPLICA_NETNS";

/// Runs the test `name` (this very test binary, `--exact name`) again inside a network namespace
/// of its own (`unshare -n`, root only) where `inside` runs on a 4-thread runtime with the
/// namespace's loopback up; the
/// namespace, its interfaces and its nftables rules vanish with it. Prints `SKIPPED` and
/// returns when not root or when `unshare`, `nft` or `ip` is missing.
pub fn in_own_network_namespace<F: std::future::Future<Output = ()>>(
    name: &str,
    inside: impl FnOnce() -> F,
) {
    if std::env::var_os(NETNS_ENV).is_some() {
        run_tool("ip", &["link", "set", "lo", "up"]);
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
            .block_on(inside());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["unshare", "nft", "ip"].into_iter().all(|t| {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !root || !tools {
        eprintln!("SKIPPED: {name}: needs root, unshare, nft and ip (root={root}, tools={tools})");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(NETNS_ENV, "1")
        // The cuts name members by their loopback addresses (127.0.0.11, …), which are not
        // interface addresses: WebRTC's host candidates (127.0.0.1) and a WebSocket's source
        // address would slip past them. Nodes' calls go as HTTP POSTs from their own address.
        .env("OUROBOROS_REPLICA_TRANSPORT", "http")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the test failed in its namespace");
    assert!(
        text.contains("1 passed"),
        "the test did not run in its namespace"
    );
}

/// Runs `cmd` with `args`, panicking with its stderr if it fails.
pub fn run_tool(cmd: &str, args: &[&str]) {
    let out = std::process::Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops every packet between `cut` and each of `rest` (both ways) with an nftables table
/// `partition`, inside the caller's network namespace; [`heal`] removes it.
pub fn cut_off(cut: &str, rest: &[&str]) {
    let set = rest.join(", ");
    run_tool("nft", &["add", "table", "inet", "partition"]);
    run_tool(
        "nft",
        &["add chain inet partition out { type filter hook output priority 0 ; }"],
    );
    run_tool(
        "nft",
        &[&format!(
            "add rule inet partition out ip saddr {cut} ip daddr {{ {set} }} drop"
        )],
    );
    run_tool(
        "nft",
        &[&format!(
            "add rule inet partition out ip saddr {{ {set} }} ip daddr {cut} drop"
        )],
    );
}

/// Removes what [`cut_off`] added.
pub fn heal() {
    run_tool("nft", &["delete", "table", "inet", "partition"]);
}
