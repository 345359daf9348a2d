//! A replicated ring of whole nodes (issue 16): three `ouroboros node --replicas 3` processes
//! on loopback whose relays are one replicated log. Clients speak the relay protocol over the
//! relay WebSocket (`/relay`) to any node: publishers retry an unacknowledged publish (same
//! `id`) on another node when theirs dies or answers `unavailable`; subscribers move to another
//! node and resume with `since`. Meanwhile a random node (leader or follower) is killed with
//! SIGKILL and replaced 20 times, and every third round the oldest node is stopped (it hands
//! leadership over and leaves the ring) and replaced.
//!
//! Checked: every acknowledged message is in every surviving node's log exactly once, at the
//! `seq` it was acknowledged with; every subscriber received every room's messages in `seq`
//! order with no gap, and never two different messages at one `seq`.

#[path = "support/replica.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ouroboros::replica::{Call, Message};
use rand::Rng;
use serde_json::{Value, json};
use support::{
    Acks, Book, Kind, Logs, Member, audit, await_progress, book_of, join_new_of, kill_and_replace,
    operator, settled_histories, status_of, until_ok,
};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message as Frame;

const ROOMS: [&str; 2] = ["lobby", "ops"];

/// The tests of this file each run several whole nodes and time-bound protocol steps
/// (elections, renewals): on a two-core machine they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What one subscriber received: (room, seq) → (from, id).
type Received = BTreeMap<(String, u64), (String, String)>;

/// Connects to the relay WebSocket of a random live node as `client` (with its name token once
/// it has one); returns the socket once its `welcome` arrived, and the welcome.
async fn connect(book: &Book, client: &str, token: Option<&str>) -> Option<(Ws, Value)> {
    let base = {
        let b = book.lock().unwrap();
        b[rand::rng().random_range(0..b.len())].1.clone()
    };
    let mut url = format!("{}/relay?client={client}", base.replacen("http", "ws", 1));
    if let Some(t) = token {
        url.push_str("&token=");
        url.push_str(t);
    }
    let (mut ws, _) = timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()?;
    let welcome = next_json(&mut ws, Duration::from_secs(5)).await?;
    assert_eq!(welcome["op"], "welcome", "first frame: {welcome}");
    Some((ws, welcome))
}

/// The next JSON frame, or `None` when the socket ends or nothing comes within `within`.
async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    loop {
        match timeout(within, ws.next()).await.ok()?? {
            Ok(Frame::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Frame::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Keeps the identity `client` across nodes: the name token of the first `welcome` (the ring's
/// keys are the same on every node, so it is valid on all of them).
fn keep_identity(client: &str, token: &mut Option<String>, welcome: &Value) {
    assert_eq!(
        welcome["client"], client,
        "served under another identity: {welcome}"
    );
    if token.is_none() {
        *token = welcome["name_token"].as_str().map(str::to_owned);
        assert!(token.is_some(), "no name_token in {welcome}");
    }
}

/// A publisher over the relay WebSocket: publishes `p{n}-{k}` without pause, alternating rooms,
/// and waits for each `ack`. When its node dies, closes or answers `unavailable`, it re-sends
/// the same message (same `id`) on another node. A message not acknowledged within 60 s fails
/// the test.
async fn publisher(
    n: usize,
    book: Book,
    acks: Acks,
    progress: Arc<watch::Sender<usize>>,
    stop: Arc<AtomicBool>,
) -> usize {
    let from = format!("p{n}");
    let mut token: Option<String> = None;
    let mut ws: Option<Ws> = None;
    let mut k = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let room = ROOMS[k % ROOMS.len()];
        let id = format!("{from}-{k}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let seq = 'acked: loop {
            assert!(
                Instant::now() < deadline,
                "{id} was not acknowledged within 60 s"
            );
            let Some(socket) = ws.as_mut() else {
                match connect(&book, &from, token.as_deref()).await {
                    Some((s, welcome)) => {
                        keep_identity(&from, &mut token, &welcome);
                        ws = Some(s);
                    }
                    None => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                continue;
            };
            let publish =
                json!({ "op": "publish", "room": room, "id": id, "body": { "n": n, "k": k } });
            if socket.send(Frame::text(publish.to_string())).await.is_err() {
                ws = None;
                continue;
            }
            // The ack (or a retryable error) comes within the node's write timeout (3 s) plus
            // forwarding; a node that says nothing for 10 s is treated as gone.
            loop {
                let Some(m) = next_json(socket, Duration::from_secs(10)).await else {
                    ws = None;
                    continue 'acked;
                };
                match m["op"].as_str() {
                    Some("ack") if m["id"] == id.as_str() => {
                        assert_eq!(m["room"], room);
                        break 'acked m["seq"].as_u64().expect("ack.seq");
                    }
                    Some("error") if m["ref"] == id.as_str() => {
                        let code = m["code"].as_str().unwrap_or_default();
                        assert!(
                            matches!(code, "unavailable" | "rate_limited"),
                            "{id} refused: {m}"
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue 'acked;
                    }
                    Some("error") => panic!("{from}: unexpected error {m}"),
                    _ => {}
                }
            }
        };
        acks.lock()
            .unwrap()
            .insert((room.to_owned(), from.clone(), id), seq);
        progress.send_modify(|n| *n += 1);
        k += 1;
    }
    k
}

/// A subscriber over the relay WebSocket: joins every room on a random node, from the start
/// (`since: 0`) and afterwards from the last `seq` it received (following paged replays), and
/// moves to another node whenever its own goes away. Every `seq` must come in order: the next
/// one, or one already received (a node still catching up with the log sends again what the
/// client saw elsewhere), and then the same message. Runs until `heads` (the final rooms'
/// heads, set once the publishers stopped and the ring settled) are all received.
async fn subscriber(
    n: usize,
    book: Book,
    stop: Arc<AtomicBool>,
    heads: watch::Receiver<Option<HashMap<String, u64>>>,
) -> Received {
    let client = format!("s{n}");
    let mut token: Option<String> = None;
    let mut got = Received::new();
    let mut last: HashMap<&str, u64> = ROOMS.iter().map(|r| (*r, 0)).collect();
    let done = |last: &HashMap<&str, u64>| {
        heads.borrow().as_ref().is_some_and(|h| {
            ROOMS
                .iter()
                .all(|r| last[r] >= h.get(*r).copied().unwrap_or(0))
        })
    };
    let give_up = Instant::now() + Duration::from_secs(900);
    while !done(&last) {
        assert!(Instant::now() < give_up, "{client}: never caught up");
        let Some((mut ws, welcome)) = connect(&book, &client, token.as_deref()).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        keep_identity(&client, &mut token, &welcome);
        let mut joined_ok = true;
        for room in ROOMS {
            let join = json!({ "op": "join", "room": room, "since": last[room] });
            joined_ok &= ws.send(Frame::text(join.to_string())).await.is_ok();
        }
        let mut replay_to: HashMap<String, u64> = HashMap::new();
        while joined_ok && !done(&last) {
            let Some(m) = next_json(&mut ws, Duration::from_millis(500)).await else {
                if stop.load(Ordering::Relaxed)
                    || ws.send(Frame::Ping(vec![].into())).await.is_err()
                {
                    break; // gone (or settled with nothing more to come here: look elsewhere)
                }
                continue;
            };
            match m["op"].as_str() {
                Some("joined") => {
                    let room = m["room"].as_str().unwrap().to_owned();
                    match m["replay_to"].as_u64() {
                        Some(to) => replay_to.insert(room, to),
                        None => replay_to.remove(&room),
                    };
                }
                Some("msg") => {
                    let room = m["room"].as_str().unwrap();
                    let seq = m["seq"].as_u64().unwrap();
                    let what = (
                        m["from"].as_str().unwrap().to_owned(),
                        m["id"].as_str().unwrap().to_owned(),
                    );
                    let Some((room_key, l)) = last.iter_mut().find(|(r, _)| **r == room) else {
                        panic!("{client}: a message of a room it did not join: {m}");
                    };
                    if seq <= *l {
                        assert_eq!(
                            got.get(&(room.to_owned(), seq)),
                            Some(&what),
                            "{client}: two different messages at {room} seq {seq}"
                        );
                    } else {
                        assert_eq!(seq, *l + 1, "{client}: {room} jumped from seq {l} to {seq}");
                        *l = seq;
                        got.insert(((*room_key).to_owned(), seq), what);
                    }
                    if replay_to.get(room) == Some(&seq) {
                        let join = json!({ "op": "join", "room": room, "since": seq });
                        if ws.send(Frame::text(join.to_string())).await.is_err() {
                            break;
                        }
                    }
                }
                Some("error") => panic!("{client}: {m}"),
                _ => {}
            }
        }
    }
    got
}

/// Four publishers and two subscribers on the nodes of `book` (see [`publisher`] and
/// [`subscriber`]).
struct Load {
    acks: Acks,
    /// How many publishes were acknowledged so far.
    acked_so_far: watch::Receiver<usize>,
    /// Set to stop the publishers.
    stop: Arc<AtomicBool>,
    /// The final heads, for the subscribers ([`subscribers_got_the_log`]).
    heads_tx: watch::Sender<Option<HashMap<String, u64>>>,
    publishers: Vec<tokio::task::JoinHandle<usize>>,
    subscribers: Vec<tokio::task::JoinHandle<Received>>,
}

impl Load {
    fn start(book: &Book) -> Load {
        let acks: Acks = Arc::default();
        let (progress, acked_so_far) = watch::channel(0usize);
        let progress = Arc::new(progress);
        let stop = Arc::new(AtomicBool::new(false));
        let (heads_tx, heads) = watch::channel(None);
        let publishers = (0..4)
            .map(|n| {
                let (book, acks, stop, progress) =
                    (book.clone(), acks.clone(), stop.clone(), progress.clone());
                tokio::spawn(publisher(n, book, acks, progress, stop))
            })
            .collect();
        let subscribers = (0..2)
            .map(|n| tokio::spawn(subscriber(n, book.clone(), stop.clone(), heads.clone())))
            .collect();
        Load {
            acks,
            acked_so_far,
            stop,
            heads_tx,
            publishers,
            subscribers,
        }
    }
}

/// Tells the subscribers the rooms' final heads (from the settled `history`) and checks what
/// each received: every message of the log, once, at its seq.
async fn subscribers_got_the_log(
    history: &BTreeMap<String, Vec<Message>>,
    heads: &watch::Sender<Option<HashMap<String, u64>>>,
    subscribers: Vec<tokio::task::JoinHandle<Received>>,
) {
    heads
        .send(Some(
            history
                .iter()
                .map(|(room, h)| (room.clone(), h.len() as u64))
                .collect(),
        ))
        .unwrap();
    for s in subscribers {
        let got = timeout(Duration::from_secs(120), s)
            .await
            .expect("subscribers catch up within 120 s")
            .unwrap();
        for ((room, seq), (from, id)) in &got {
            let m: &Message = &history[room][*seq as usize - 1];
            assert_eq!(
                (&m.from, &m.id),
                (from, id),
                "a subscriber received another message at {room} seq {seq} than the log holds"
            );
        }
        let total: usize = history.values().map(Vec::len).sum();
        assert_eq!(got.len(), total, "a subscriber missed messages");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_clients_lose_nothing_through_twenty_node_kill_9s_with_rotations() {
    let _one = ONE_AT_A_TIME.lock().await;
    let logs = Logs::new();
    let op = operator();
    let mut first = Member::spawn(Kind::Node, "127.0.0.1", 1, &[], logs.path()).await;
    first
        .wait_line("bootstrapped a new ring", Duration::from_secs(60))
        .await;
    let mut members = vec![first];
    let book: Book = Arc::new(Mutex::new(book_of(&members)));
    for id in 2..=3 {
        members.push(join_new_of(Kind::Node, id, &book, logs.path()).await);
        *book.lock().unwrap() = book_of(&members);
    }
    let mut next_id = 4;

    let Load {
        acks,
        mut acked_so_far,
        stop,
        heads_tx,
        publishers,
        subscribers,
    } = Load::start(&book);

    let (mut kills, mut killed_leaders, mut rotations) = (0, 0, 0);
    for round in 0..20 {
        await_progress(&mut acked_so_far, 20, Duration::from_secs(60), round).await;
        // A random node, leader or follower, dies; a new node joins; the dead one is removed.
        killed_leaders += usize::from(
            kill_and_replace(Kind::Node, &mut members, &book, &op, next_id, logs.path()).await,
        );
        next_id += 1;
        kills += 1;
        // Every third round the oldest node is rotated out: a successor joins, then the oldest
        // is stopped (SIGTERM), hands leadership over if it leads, and removes itself.
        if round % 3 == 2 {
            members.push(join_new_of(Kind::Node, next_id, &book, logs.path()).await);
            next_id += 1;
            let oldest = members.remove(0);
            *book.lock().unwrap() = book_of(&members);
            oldest.stop().await;
            rotations += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut published = 0;
    for p in publishers {
        published += p.await.unwrap();
    }
    let history = settled_histories(&op, &members, &ROOMS).await;
    // The stopped nodes left the ring: only the live ones are voters.
    let status = status_of(&op, &members[0]).await.expect("status");
    let mut voters: Vec<u64> = status.voters.iter().map(|(id, _)| *id).collect();
    voters.sort_unstable();
    let mut live: Vec<u64> = members.iter().map(|m| m.id).collect();
    live.sort_unstable();
    assert_eq!(voters, live, "the voters are the live nodes");
    let (acked, stored) = audit(&history, &acks);
    subscribers_got_the_log(&history, &heads_tx, subscribers).await;
    eprintln!(
        "replicated nodes: {kills} kill -9 ({killed_leaders} of a leader), {rotations} rotations, \
         {published} published, {acked} acknowledged, {stored} stored, 0 lost; 2 subscribers \
         received all {stored} in order"
    );
    for m in members {
        m.stop().await;
    }
}

/// Starts `ouroboros node --replicas 3 --launcher local` (plus `extra` flags) with its data in
/// `data`; returns the first node's process and its `replicated ring of 3 members up: …` line.
async fn start_local_ring(
    logs: &Logs,
    data: &std::path::Path,
    extra: &[&str],
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ouroboros"));
    cmd.args(["node", "--host", "127.0.0.1", "--port", "0"])
        .args(["--replicas", "3", "--launcher", "local"])
        .args(extra)
        .arg("--data-dir")
        .arg(data)
        .args(["--replica-heartbeat", "300ms"])
        .args(["--replica-election-timeout", "1200ms"])
        .args(["--replica-write-timeout", "3s"])
        .env("OUROBOROS_SECRET", support::SECRET)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(logs.path().join("first.log")).unwrap())
        .kill_on_drop(true);
    let mut first = cmd.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(first.stdout.take().unwrap()).lines();
    let up = timeout(Duration::from_secs(120), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.starts_with("replicated ring of 3 members up: ") {
                return l;
            }
        }
        panic!("the first node exited before the ring was up");
    })
    .await
    .expect("the ring is up within 120 s");
    (first, up)
}

/// `ouroboros node --replicas 3 --launcher local`: one command runs a whole ring on this
/// machine. Its record lists the three nodes; the Rust client connected to the first node
/// moves to another when that one is killed with SIGKILL, and its publishes and its room
/// go on with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_command_runs_a_local_ring_and_the_rust_client_moves_to_a_live_node() {
    let _one = ONE_AT_A_TIME.lock().await;
    use ouroboros::client::{Client, ClientConfig, Event, Transport, discover};
    let logs = Logs::new();
    let data = logs.path().join("ring");
    let (mut first, up) = start_local_ring(&logs, &data, &[]).await;
    let urls: Vec<String> = up
        .rsplit(": ")
        .next()
        .unwrap()
        .split(' ')
        .map(|m| m.split_once('=').unwrap().1.to_owned())
        .collect();
    assert_eq!(urls.len(), 3, "{up}");
    // The record lists every node (it follows the membership, shortly after the joins).
    let source = format!("{}/ouroboros.json", urls[0]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let record = loop {
        let r = discover(&source).await.unwrap();
        if r.replicas.len() == 3 {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "record never listed 3 nodes: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (n, url) in record.replicas.iter().zip(&urls) {
        assert_eq!(&n.url, url);
        assert_eq!(
            n.relay_ws,
            format!("{}/relay", url.replacen("http", "ws", 1))
        );
    }
    let mut cfg = ClientConfig::new("alice");
    cfg.transport = Transport::Ws;
    cfg.ring_key = record.ring_key.clone();
    let (client, mut events) = Client::connect(record, cfg).await.unwrap();
    client.join("lobby", Some(0)).await.unwrap();
    for i in 1..=5u64 {
        let ack = client.publish("lobby", json!({ "i": i })).await.unwrap();
        assert_eq!(ack.seq, i);
    }
    // The node the client is connected to (the first, which started the ring) dies.
    first.start_kill().unwrap();
    let _ = first.wait().await;
    for i in 6..=10u64 {
        let ack = timeout(
            Duration::from_secs(60),
            client.publish("lobby", json!({ "i": i })),
        )
        .await
        .expect("acknowledged by another node within 60 s")
        .unwrap();
        assert_eq!(ack.seq, i, "the log goes on at the next seq");
    }
    let mut seen = Vec::new();
    while seen.len() < 10 {
        match timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(Event::Message(m))) => seen.push(m.seq),
            Ok(Some(_)) => {}
            other => panic!("events ended after {seen:?}: {other:?}"),
        }
    }
    assert_eq!(
        seen,
        (1..=10).collect::<Vec<_>>(),
        "every message once, in order"
    );
    client.close().await;
    // The two members it started outlive a SIGKILLed first node: stop them gracefully.
    let op = operator();
    let book: Book = Arc::new(Mutex::new(vec![(2, urls[1].clone()), (3, urls[2].clone())]));
    let status: ouroboros::replica::Status = until_ok(&op, &book, Call::Status, &()).await;
    assert!(status.voters.len() >= 2);
    let _ = std::process::Command::new("pkill")
        .args(["-TERM", "-f"])
        .arg(data.join("member-").to_string_lossy().as_ref())
        .status();
    // They leave the ring and exit: their ports close.
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in &urls[1..] {
        let addr = url.trim_start_matches("http://").to_owned();
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            assert!(
                Instant::now() < deadline,
                "{url} still serves 60 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Kills (SIGKILL) every process whose command line names `dir` when dropped: the members a
/// ring started on its own (detached, in their own process groups) never outlive the test.
struct KillUnder(std::path::PathBuf);

impl Drop for KillUnder {
    fn drop(&mut self) {
        // Again until none is left: a member may be launching another as it dies.
        for _ in 0..20 {
            let found = std::process::Command::new("pkill")
                .args(["-KILL", "-f"])
                .arg(self.0.to_string_lossy().as_ref())
                .status()
                .is_ok_and(|s| s.success());
            if !found {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The pid of the process of the ring under `dir` that runs member `id` (`--replica-id id`).
fn pid_of_member(dir: &std::path::Path, id: u64) -> Option<u32> {
    let dir = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let at = args.iter().position(|a| a == "--replica-id")?;
        let ours = args.iter().any(|a| a.contains(&dir));
        (ours && args.get(at + 1)? == &id.to_string()).then_some(pid)
    })
}

/// Every live node's history once the ring has settled: the live nodes are re-read from `book`
/// on every try, since the ring goes on renewing itself meanwhile.
async fn settled_ring_histories(
    op: &ouroboros::replica::HttpTransport,
    book: &Book,
) -> std::collections::BTreeMap<String, Vec<Message>> {
    use ouroboros::replica::{HistoryRequest, Outcome, Status};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the ring did not settle within 60 s"
        );
        let nodes = book.lock().unwrap().clone();
        let mut statuses = Vec::new();
        for (id, url) in &nodes {
            op.set_addr(*id, url);
            statuses.push(
                op.call::<_, Outcome<Status>>(*id, Call::Status, &())
                    .await
                    .ok()
                    .and_then(|o| match o {
                        Outcome::Ok(s) => Some(s),
                        Outcome::Err(_) => None,
                    }),
            );
        }
        let Some(all) = statuses.into_iter().collect::<Option<Vec<Status>>>() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let settled = all.iter().find(|s| s.role == "leader").is_some_and(|l| {
            all.iter()
                .all(|s| s.applied == l.last_log && s.leader == Some(l.id))
        });
        if !settled {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut histories = Vec::new();
        for (id, _) in &nodes {
            let mut rooms = std::collections::BTreeMap::new();
            for room in ROOMS {
                let req = HistoryRequest {
                    room: room.into(),
                    ..HistoryRequest::default()
                };
                if let Ok(Outcome::Ok(h)) = op
                    .call::<_, Outcome<Vec<Message>>>(*id, Call::History, &req)
                    .await
                {
                    rooms.insert(room.to_owned(), h);
                }
            }
            histories.push(rooms);
        }
        if histories.iter().any(|h| h.len() != ROOMS.len()) {
            continue; // a node left while it was read: read the ring again
        }
        for (h, (id, _)) in histories.iter().zip(&nodes) {
            assert!(
                *h == histories[0],
                "node {id} holds another history than node {}",
                nodes[0].0
            );
        }
        return histories.swap_remove(0);
    }
}

/// `ouroboros node --replicas 3 --launcher local --lifetime 24s`: the ring renews itself. Each
/// member starts its successor as a new member a lead before its (staggered) end, waits until
/// it is a voter and leaves; a member killed with SIGKILL is replaced by the leader and
/// removed. Under four publishers and two subscribers that follow the record's `replicas`,
/// nothing acknowledged is lost, doubled or reordered, and the ring ends with three voters.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ring_with_lifetimes_renews_itself_and_replaces_a_killed_member() {
    let _one = ONE_AT_A_TIME.lock().await;
    use ouroboros::client::discover;
    use std::collections::BTreeSet;
    let logs = Logs::new();
    let data = logs.path().join("ring");
    let _reaper = KillUnder(data.clone());
    let lifetimes = [
        "--lifetime",
        "24s",
        "--successor-timeout",
        "5s",
        "--replica-dead-after",
        "10s",
    ];
    let (mut first, up) = start_local_ring(&logs, &data, &lifetimes).await;
    let initial: Vec<(u64, String)> = up
        .rsplit(": ")
        .next()
        .unwrap()
        .split(' ')
        .map(|m| {
            let (id, url) = m.split_once('=').unwrap();
            (id.parse().unwrap(), url.to_owned())
        })
        .collect();
    assert_eq!(
        initial.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let book: Book = Arc::new(Mutex::new(initial));
    // The clients' view of the ring: the `replicas` of any live node's record.
    let seen: Arc<Mutex<BTreeSet<u64>>> = Arc::new(Mutex::new([1, 2, 3].into()));
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = {
        let (book, seen, watching) = (book.clone(), seen.clone(), watching.clone());
        tokio::spawn(async move {
            while watching.load(Ordering::Relaxed) {
                let nodes = book.lock().unwrap().clone();
                for (_, url) in nodes {
                    let Ok(Ok(r)) = timeout(
                        Duration::from_secs(2),
                        discover(&format!("{url}/ouroboros.json")),
                    )
                    .await
                    else {
                        continue;
                    };
                    if r.replicas.is_empty() {
                        continue;
                    }
                    let nodes: Vec<(u64, String)> =
                        r.replicas.iter().map(|n| (n.id, n.url.clone())).collect();
                    seen.lock().unwrap().extend(nodes.iter().map(|(id, _)| *id));
                    *book.lock().unwrap() = nodes;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let Load {
        acks,
        mut acked_so_far,
        stop,
        heads_tx,
        publishers,
        subscribers,
    } = Load::start(&book);

    // Let the ring renew itself a few times under load.
    let began = Instant::now();
    let renewed = |n: usize| seen.lock().unwrap().len() >= 3 + n;
    while !renewed(3) {
        assert!(
            began.elapsed() < Duration::from_secs(120),
            "the ring renewed {} members in 120 s",
            seen.lock().unwrap().len() - 3
        );
        await_progress(&mut acked_so_far, 1, Duration::from_secs(60), 0).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Kill -9 a member other than the first node's slot (any: the leader's loss only takes
    // longer), found by its `--replica-id` among the ring's processes.
    let (victim, pid) = {
        let nodes = book.lock().unwrap().clone();
        nodes
            .iter()
            .filter(|(id, _)| *id != 1)
            .find_map(|(id, _)| pid_of_member(&data, *id).map(|pid| (*id, pid)))
            .expect("a member's process")
    };
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    let killed_at = Instant::now();
    // The leader notices the silence, starts a new member, and removes the dead one.
    let replaced = loop {
        let nodes = book.lock().unwrap().clone();
        if nodes.len() == 3 && nodes.iter().all(|(id, _)| *id != victim) {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "member {victim} (killed) still listed after 60 s: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // And the ring goes on renewing itself.
    let before = seen.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.lock().unwrap().len() < before + 2 {
        assert!(
            Instant::now() < deadline,
            "the ring stopped renewing itself"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    await_progress(&mut acked_so_far, 20, Duration::from_secs(60), 1).await;
    stop.store(true, Ordering::Relaxed);
    let mut published = 0;
    for p in publishers {
        published += p.await.unwrap();
    }
    let op = operator();
    let history = settled_ring_histories(&op, &book).await;
    let (acked, stored) = audit(&history, &acks);
    subscribers_got_the_log(&history, &heads_tx, subscribers).await;
    watching.store(false, Ordering::Relaxed);
    watcher.await.unwrap();
    let members = seen.lock().unwrap().len();
    eprintln!(
        "self-renewing ring: {members} members over {:.0?} ({} joined after the founding 3), \
         member {victim} killed with kill -9 and replaced in {replaced:.1?}; {published} \
         published, {acked} acknowledged, {stored} stored, 0 lost; 2 subscribers received all \
         {stored} in order",
        began.elapsed(),
        members - 3
    );
    let _ = first.start_kill();
}

/// Sends one `publish` on `ws` and returns the `ack` or `error` that answers it (`None`: the
/// socket ended or nothing came within 20 s).
async fn publish_on(ws: &mut Ws, room: &str, id: &str) -> Option<Value> {
    let publish = json!({ "op": "publish", "room": room, "id": id, "body": id });
    ws.send(Frame::text(publish.to_string())).await.ok()?;
    loop {
        let m = next_json(ws, Duration::from_secs(20)).await?;
        let answers = (m["op"] == "ack" && m["id"] == id) || (m["op"] == "error" && m["ref"] == id);
        if answers {
            return Some(m);
        }
    }
}

/// A relay WebSocket to the node at `base` as `client`, once its `welcome` came.
async fn connect_to(base: &str, client: &str) -> Ws {
    let url = format!("{}/relay?client={client}", base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let welcome = next_json(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(welcome["op"], "welcome", "{welcome}");
    assert_eq!(welcome["client"], client, "{welcome}");
    ws
}

/// A node of a replicated ring (the leader) cut off from the other two by nftables, in a
/// network namespace of the test's own: its relay clients' publishes are answered
/// `unavailable` (none acknowledged, none stored), the other two elect a leader and acknowledge
/// theirs; healed, the node catches up and the subscriber that stayed on it receives everything
/// the majority committed, in order, with no gap.
#[test]
fn a_node_cut_off_by_the_network_acknowledges_nothing_and_its_clients_catch_up_when_healed() {
    let _one = ONE_AT_A_TIME.blocking_lock();
    support::in_own_network_namespace(
        "a_node_cut_off_by_the_network_acknowledges_nothing_and_its_clients_catch_up_when_healed",
        node_partition_inside_namespace,
    );
}

async fn node_partition_inside_namespace() {
    let logs = Logs::new();
    let op = operator();
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
    let mut first = Member::spawn(Kind::Node, ips[0], 1, &[], logs.path()).await;
    first
        .wait_line("bootstrapped a new ring", Duration::from_secs(60))
        .await;
    let mut members = vec![first];
    for (i, ip) in ips.iter().enumerate().skip(1) {
        let contacts = book_of(&members);
        let mut m = Member::spawn(Kind::Node, ip, i as u64 + 1, &contacts, logs.path()).await;
        m.wait_line("joined as a voter", Duration::from_secs(90))
            .await;
        members.push(m);
    }
    let acks: Acks = Arc::default();
    let acked = |m: &Value, from: &str, id: &str| {
        let seq = m["seq"].as_u64().expect("ack.seq");
        acks.lock()
            .unwrap()
            .insert(("lobby".into(), from.into(), id.to_owned()), seq);
    };
    let leader_id = status_of(&op, &members[0]).await.unwrap().leader.unwrap();
    let leader = members.iter().position(|m| m.id == leader_id).unwrap();
    let mut on_cut = connect_to(&members[leader].url, "pub").await;
    for i in 0..10 {
        let id = format!("before-{i}");
        let m = publish_on(&mut on_cut, "lobby", &id).await.unwrap();
        assert_eq!(m["op"], "ack", "{m}");
        acked(&m, "pub", &id);
    }
    // A subscriber that stays on the node that will be cut off.
    let mut sub = connect_to(&members[leader].url, "sub").await;
    let join = json!({ "op": "join", "room": "lobby", "since": 0 });
    sub.send(Frame::text(join.to_string())).await.unwrap();
    let mut received: Vec<(u64, String)> = Vec::new();
    let read_until = async |sub: &mut Ws, received: &mut Vec<(u64, String)>, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(90);
        while received.len() < n {
            assert!(
                Instant::now() < deadline,
                "the subscriber got {} of {n}",
                received.len()
            );
            let Some(m) = next_json(sub, Duration::from_secs(5)).await else {
                continue;
            };
            if m["op"] == "msg" {
                let seq = m["seq"].as_u64().unwrap();
                assert_eq!(seq, received.len() as u64 + 1, "in order, no gap: {m}");
                received.push((seq, m["id"].as_str().unwrap().to_owned()));
            }
        }
    };
    read_until(&mut sub, &mut received, 10).await;

    let rest: Vec<&str> = ips
        .iter()
        .copied()
        .filter(|ip| *ip != ips[leader])
        .collect();
    support::cut_off(ips[leader], &rest);
    let cut_at = Instant::now();
    // The cut-off leader's clients (they still reach it) get no ack: `unavailable`.
    for i in 0..3 {
        let id = format!("minority-{i}");
        let m = publish_on(&mut on_cut, "lobby", &id).await.unwrap();
        assert_eq!(m["op"], "error", "the cut-off node acknowledged {id}: {m}");
        assert_eq!(m["code"], "unavailable", "{m}");
    }
    // The other two elect a leader and go on.
    let other = members.iter().find(|m| m.id != leader_id).unwrap();
    let mut on_majority = connect_to(&other.url, "maj").await;
    let began = Instant::now();
    let mut first_ack = None;
    for i in 0..20 {
        let id = format!("during-{i}");
        loop {
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "the majority acknowledged nothing within 60 s"
            );
            let m = publish_on(&mut on_majority, "lobby", &id).await.unwrap();
            if m["op"] == "ack" {
                first_ack.get_or_insert(cut_at.elapsed());
                acked(&m, "maj", &id);
                break;
            }
            assert_eq!(m["code"], "unavailable", "{m}");
        }
    }
    support::heal();
    // Healed: the subscriber on the formerly cut-off node gets all 30, in order.
    read_until(&mut sub, &mut received, 30).await;
    assert!(
        received.iter().all(|(_, id)| !id.starts_with("minority-")),
        "a publish taken while cut off reached a subscriber: {received:?}"
    );
    let history = settled_histories(&op, &members, &["lobby"]).await;
    assert!(
        history["lobby"]
            .iter()
            .all(|m| !m.id.starts_with("minority-")),
        "publishes taken while cut off reached the log"
    );
    let (acked_n, stored) = audit(&history, &acks);
    assert_eq!((acked_n, stored), (30, 30));
    eprintln!(
        "node partition: 3 publishes on the cut-off leader answered unavailable, the majority's \
         first ack {:.1?} after the cut (after the 3 refusals), 30 acknowledged, the subscriber on the healed node got \
         all 30 in order",
        first_ack.unwrap()
    );
    for m in members {
        m.stop().await;
    }
}

/// One frame from a member link, reassembled into a whole message (`None`: the link closed or
/// nothing came within 10 s).
async fn next_whole(
    rx: &mut ouroboros::peer::DataConnection,
    frames: &mut ouroboros::replica::Reassembler,
) -> Option<ouroboros::replica::Whole> {
    use ouroboros::peer::codec::Value as Wire;
    loop {
        match timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Ok(Wire::Bin(b)))) => {
                if let Some(w) = frames
                    .push(&b)
                    .expect("the node's frames follow the format")
                {
                    return Some(w);
                }
            }
            _ => return None,
        }
    }
}

/// Sends one call on a member link.
async fn send_call(
    conn: &ouroboros::peer::DataConnection,
    number: u32,
    env: &ouroboros::replica::Envelope,
) {
    for f in ouroboros::replica::encode_request(number, env) {
        conn.send(&ouroboros::peer::codec::Value::Bin(f))
            .await
            .unwrap();
    }
}

/// Member links (`ouroboros-replica` DataConnections) are open to anyone who can reach the
/// node's peer: a call with a forged MAC is answered 401 and never run, a link that keeps
/// sending forged calls is closed, and so is one that sends a frame that is not a member
/// frame. A call signed with the ring's secret is answered. In a local ring the members' own
/// calls go over such links (their `/status.json` counts them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn member_links_answer_only_signed_calls_and_close_on_abuse() {
    use ouroboros::peer::{ConnectOptions, Peer, PeerConfig, codec::Serialization};
    use ouroboros::replica::{Envelope, LINK_LABEL, Reassembler, RpcKey, Whole, system_now_ms};
    let _one = ONE_AT_A_TIME.lock().await;
    ouroboros::install_crypto_provider();
    let logs = Logs::new();
    let data = tempfile::tempdir().unwrap();
    let _cleanup = KillUnder(data.path().to_path_buf());
    let (_first, up) = start_local_ring(&logs, data.path(), &[]).await;
    let base = up
        .split_whitespace()
        .find_map(|w| w.strip_prefix("1="))
        .expect("member 1 in the up line")
        .to_owned();
    let http = reqwest::Client::new();
    let get = async |path: &str| -> Value {
        let url = format!("{base}{path}");
        http.get(url).send().await.unwrap().json().await.unwrap()
    };
    let record = get("/ouroboros.json").await;
    let node_peer = record["peer_id"].as_str().unwrap().to_owned();
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let attacker = Peer::open(PeerConfig::new("127.0.0.1", port))
        .await
        .unwrap();
    let open = || async {
        attacker
            .connect(
                &node_peer,
                ConnectOptions {
                    label: Some(LINK_LABEL.into()),
                    serialization: Serialization::Raw,
                    reliable: true,
                    metadata: None,
                },
            )
            .await
            .unwrap()
    };
    let key = RpcKey::from_secret(support::SECRET.as_bytes());
    let call = |mac: Option<&str>| {
        let ts = system_now_ms();
        let body = bytes::Bytes::from_static(b"null");
        Envelope {
            call: Call::Status,
            from: 0,
            to: 1,
            ts,
            mac: mac.map_or_else(|| key.mac(Call::Status, 0, 1, ts, &body), str::to_owned),
            body,
        }
    };

    let mut conn = open().await;
    let mut frames = Reassembler::default();
    send_call(&conn, 1, &call(Some("forged"))).await;
    match next_whole(&mut conn, &mut frames).await {
        Some(Whole::Answer(1, status, _)) => assert_eq!(status, 401),
        other => panic!("forged call: {other:?}"),
    }
    send_call(&conn, 2, &call(None)).await;
    match next_whole(&mut conn, &mut frames).await {
        Some(Whole::Answer(2, 200, body)) => {
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["ok"]["id"], 1, "{v}");
        }
        other => panic!("signed call: {other:?}"),
    }
    // Forged calls until the node closes the link (it answers 20 refusals at most).
    let mut refused = 1;
    let mut closed = false;
    for n in 3..40 {
        send_call(&conn, n, &call(Some("forged"))).await;
        match next_whole(&mut conn, &mut frames).await {
            Some(Whole::Answer(_, 401, _)) => refused += 1,
            None => {
                closed = true;
                break;
            }
            other => panic!("forged call {n}: {other:?}"),
        }
    }
    assert!(closed, "the link stayed open after {refused} refused calls");
    assert!(refused <= 22, "{refused} refused calls answered");

    // A frame that is not a member frame closes the link at once.
    let mut conn = open().await;
    conn.send(&ouroboros::peer::codec::Value::Bin(
        bytes::Bytes::from_static(b"hello"),
    ))
    .await
    .unwrap();
    assert!(
        next_whole(&mut conn, &mut Reassembler::default())
            .await
            .is_none(),
        "a garbage frame did not close the link"
    );
    attacker.close().await;

    // The same over the WebSocket link: a forged call is answered 401.
    let url = format!(
        "{}{}",
        base.replacen("http", "ws", 1),
        ouroboros::replica::LINK_WS_PATH
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    for f in ouroboros::replica::encode_request(7, &call(Some("forged"))) {
        ws.send(Frame::Binary(f)).await.unwrap();
    }
    let mut frames = Reassembler::default();
    let answer = timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Frame::Binary(b))) => {
                    if let Some(w) = frames.push(&b).unwrap() {
                        return w;
                    }
                }
                other => panic!("link WebSocket: {other:?}"),
            }
        }
    })
    .await
    .expect("an answer on the link WebSocket");
    assert!(matches!(answer, Whole::Answer(7, 401, _)), "{answer:?}");

    // The members' own calls travel over links: the WebSocket while the WebRTC one opens, then
    // WebRTC.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = get("/status.json").await;
        let calls = &status["replica_calls"];
        if calls["webrtc"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(calls["http"], 0, "{calls}");
            break;
        }
        assert!(Instant::now() < deadline, "no call over WebRTC: {calls}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
