//! The replicated ring's figures on whole nodes (issue 16, point 6), side by side with a single
//! node: acknowledged publishes per second and publish-to-ack latency (p50/p99) for 1 and 100
//! publishers over the relay WebSocket; the time from a leader's kill -9 to the next
//! acknowledged publish of a client that retries on the surviving nodes.
//!
//! ```text
//! cargo bench --bench replicated_node -- [--seconds 5] [--kills 5]
//! ```
//!
//! Nodes are `ouroboros node` processes on loopback (the binary built with this bench): one with
//! no `--replicas` (replicas 1: today's node, which acknowledges a publish once it is in its own
//! memory), and three with `--replicas 3` started and joined as `tests/replicated_node.rs` does
//! (`Kind::Node` in `tests/support/replica.rs`: heartbeat 300 ms, election timeout 1.2 s, write
//! timeout 3 s). Every publisher is its own relay WebSocket client (`/relay?client=NAME`), waits
//! for `welcome`, then publishes a 100-byte body and sends its next publish when the previous one
//! is acknowledged; publisher `p` writes to room `room-{p % 10}`. A publish answered
//! `unavailable` is re-sent with the same id (its latency counts from the first send). Each
//! line also gives the CPU time (`/proc/PID/stat`) each node and the bench's own clients used
//! per acknowledged publish. For the failover figure the survivors' `status` is polled every
//! 20 ms, to tell the election from what follows it.
//!
//! The relay's abuse limits are off on both configurations, or they would be what is measured:
//! `--client-rate 100000 --client-burst 100000` (per connection; the default is 200/s, burst
//! 400), and in the environment the nodes inherit `OUROBOROS_ADDRESS_RATE_LIMIT=0` and
//! `OUROBOROS_MAX_CONNECTIONS_PER_ADDRESS=0` (per client address, here all of them on
//! 127.0.0.1; the default 1,000 messages/s closes the sockets of an address over it).

#[path = "../tests/support/replica.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ouroboros::replica::{Call, HttpTransport, NodeId, RemoveRequest};
use serde_json::{Value, json};
use support::{Book, Kind, Logs, Member, book_of, join_new_of, operator, status_of, until_ok};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message as Frame;

/// Bytes of each publish's body (a JSON string of this many `x`).
const BODY_BYTES: usize = 100;
/// Rooms the publishers spread over.
const ROOMS: usize = 10;
/// How long a publish may wait for its `ack` (or an error) before it counts as unanswered: the
/// node answers within its write timeout (3 s) plus forwarding.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The command line.
struct Options {
    /// Seconds each load runs.
    seconds: u64,
    /// Leader kills for the failover figure.
    kills: usize,
}

impl Options {
    fn from_args() -> Options {
        let mut o = Options {
            seconds: 5,
            kills: 5,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--seconds" => o.seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(5),
                "--kills" => o.kills = args.next().and_then(|v| v.parse().ok()).unwrap_or(5),
                "--bench" => {}
                other => eprintln!("ignored argument {other}"),
            }
        }
        o.seconds = o.seconds.max(1);
        o.kills = o.kills.max(1);
        o
    }
}

fn main() {
    let options = Options::from_args();
    raise_fd_limit();
    // SAFETY: no other thread runs yet (the runtime is built below); the nodes started later
    // inherit these (command-line flags would win, none of them is given).
    unsafe {
        std::env::set_var("OUROBOROS_ADDRESS_RATE_LIMIT", "0");
        std::env::set_var("OUROBOROS_MAX_CONNECTIONS_PER_ADDRESS", "0");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(run(options));
}

/// 100 publishers hold a socket each, and the nodes inherit the limit: raise the soft limit on
/// open files to the hard one (at most 65,536) when it is lower.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = lim.rlim_max.min(65_536);
        if lim.rlim_cur < want {
            lim.rlim_cur = want;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                eprintln!("could not raise the open-files limit to {want}");
            }
        }
    }
}

async fn run(o: Options) {
    ouroboros::install_crypto_provider();
    let logs = Logs::new();
    let op = operator();
    let mut rows = Vec::new();

    // Replicas 1: a single node.
    {
        let node = SingleNode::start(logs.path()).await;
        for publishers in [1usize, 100] {
            let targets = vec![node.relay.clone(); publishers];
            let cpu = Cpu::start(&[node.pid]);
            let f = load(&format!("s{publishers}"), &targets, o.seconds).await;
            let cpu = cpu.per_ack(f.rate * o.seconds as f64);
            rows.push(Row::new(1, publishers, "the node", f, cpu));
        }
        node.kill().await;
    }

    // Replicas 3: three whole nodes.
    let mut next_id: NodeId = 1;
    let mut members = ring_of_three(logs.path(), &mut next_id).await;
    let l = settled(&op, &members).await;
    let f = (l + 1) % members.len();
    let relay = |m: &Member| relay_url(&m.url);
    for (tag, publishers, through, targets) in [
        ("l1", 1, "the leader", vec![relay(&members[l])]),
        ("f1", 1, "a follower", vec![relay(&members[f])]),
        (
            "a100",
            100,
            "all 3 nodes (34/33/33)",
            (0..100).map(|p| relay(&members[p % 3])).collect(),
        ),
        ("l100", 100, "the leader", vec![relay(&members[l]); 100]),
    ] {
        let mut pids = vec![members[l].pid() as u32];
        pids.extend(
            (0..members.len())
                .filter(|i| *i != l)
                .map(|i| members[i].pid() as u32),
        );
        let cpu = Cpu::start(&pids);
        let figures = load(tag, &targets, o.seconds).await;
        let cpu = cpu.per_ack(figures.rate * o.seconds as f64);
        rows.push(Row::new(3, publishers, through, figures, cpu));
    }

    println!(
        "| replicas | publishers | publishing through | acknowledged publishes/s | p50 publish → ack | p99 | re-sent after `unavailable` | unanswered | CPU µs per ack: nodes (leader first) ; bench clients |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }

    let mut times = Vec::new();
    let mut token = None;
    for round in 0..o.kills {
        let f = failover(&op, &mut members, round, &mut token).await;
        println!(
            "kill {}: leader {} killed; member {} leads {:.2} s after; the publish re-sent after `unavailable` {} time(s), acknowledged by member {} {:.2} s after",
            round + 1,
            f.dead,
            f.new_leader.map_or("?".into(), |(id, _)| id.to_string()),
            f.new_leader.map_or(f64::NAN, |(_, t)| t.as_secs_f64()),
            f.attempts - 1,
            f.via,
            f.acked.as_secs_f64()
        );
        times.push(f.acked);
        replace_dead(&op, &mut members, &mut next_id, logs.path()).await;
    }
    let each: Vec<String> = times
        .iter()
        .map(|t| format!("{:.2}", t.as_secs_f64()))
        .collect();
    times.sort();
    println!(
        "\nleader kill -9 → next acknowledged publish (3 nodes, {} kills): min {:.2} s, median {:.2} s, max {:.2} s (each: {} s)",
        times.len(),
        times[0].as_secs_f64(),
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        each.join(", ")
    );
    for m in members {
        m.kill9().await;
    }
}

/// CPU time (user + system) `pid` has used so far, from `/proc/PID/stat`.
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses, which may hold spaces): state is field 3,
    // utime and stime fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// CPU used by processes while a load runs: first what each node used (the leader first when
/// there is one), then the bench's own (the clients).
struct Cpu {
    pids: Vec<u32>,
    before: Vec<Duration>,
}

impl Cpu {
    fn start(nodes: &[u32]) -> Cpu {
        let mut pids = nodes.to_vec();
        pids.push(std::process::id());
        let before = pids.iter().map(|p| cpu_of(*p)).collect();
        Cpu { pids, before }
    }

    /// Microseconds of CPU per acknowledged publish: `nodes…; clients` as text.
    fn per_ack(&self, acks: f64) -> String {
        let used: Vec<f64> = self
            .pids
            .iter()
            .zip(&self.before)
            .map(|(p, b)| (cpu_of(*p).saturating_sub(*b)).as_secs_f64() * 1e6 / acks.max(1.0))
            .collect();
        let (clients, nodes) = used.split_last().expect("the bench's own pid");
        let nodes: Vec<String> = nodes.iter().map(|u| format!("{u:.0}")).collect();
        format!("{} ; {clients:.0}", nodes.join(" + "))
    }
}

/// One line of the table.
struct Row {
    replicas: usize,
    publishers: usize,
    through: &'static str,
    f: Figures,
    /// [`Cpu::per_ack`].
    cpu: String,
}

impl Row {
    fn new(
        replicas: usize,
        publishers: usize,
        through: &'static str,
        f: Figures,
        cpu: String,
    ) -> Row {
        Row {
            replicas,
            publishers,
            through,
            f,
            cpu,
        }
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, w: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            w,
            "| {} | {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {} | {} |",
            self.replicas,
            self.publishers,
            self.through,
            self.f.rate,
            ms(self.f.p50),
            ms(self.f.p99),
            self.f.resent,
            self.f.unanswered,
            self.cpu
        )
    }
}

/// What one load measured.
struct Figures {
    /// Publishes acknowledged within the window, per second.
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// Publishes re-sent after `unavailable` (or `rate_limited`).
    resent: usize,
    /// Publishes that got no answer within [`ANSWER_WITHIN`], or whose socket closed.
    unanswered: usize,
}

/// `ouroboros node` with no `--replicas`: replicas 1.
struct SingleNode {
    child: Child,
    pid: u32,
    /// `ws://HOST:PORT/relay`.
    relay: String,
}

impl SingleNode {
    async fn start(logs: &Path) -> SingleNode {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ouroboros"));
        cmd.args(["node", "--host", "127.0.0.1", "--port", "0"])
            .arg("--data-dir")
            .arg(logs.join("single"))
            .args(["--client-rate", "100000", "--client-burst", "100000"])
            .env("OUROBOROS_SECRET", support::SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(logs.join("single.log")).expect("a log file"))
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn ouroboros node");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let url = timeout(Duration::from_secs(30), async {
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) => {
                        if let Some(url) = l.strip_prefix("listening on ") {
                            return url.to_owned();
                        }
                    }
                    _ => panic!("the single node exited before listening"),
                }
            }
        })
        .await
        .expect("the single node listens within 30 s");
        // Keep reading its stdout: a node whose stdout is closed fails its next line.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        SingleNode {
            pid: child.id().expect("running"),
            child,
            relay: relay_url(&url),
        }
    }

    async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// `ws://HOST:PORT/relay` of a node whose base URL is `http://HOST:PORT[/…]`.
fn relay_url(base: &str) -> String {
    let host_port = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("split yields one item");
    format!("ws://{host_port}/relay")
}

/// Three `ouroboros node --replicas 3` on loopback: member 1 starts the ring, 2 and 3 join it.
async fn ring_of_three(logs: &Path, next_id: &mut NodeId) -> Vec<Member> {
    let mut first = Member::spawn(Kind::Node, "127.0.0.1", *next_id, &[], logs).await;
    *next_id += 1;
    first
        .wait_line("bootstrapped a new ring", Duration::from_secs(60))
        .await;
    let mut members = vec![first];
    while members.len() < 3 {
        let book: Book = Arc::new(Mutex::new(book_of(&members)));
        members.push(join_new_of(Kind::Node, *next_id, &book, logs).await);
        *next_id += 1;
    }
    members
}

/// Waits (30 s at most) until every member answers, one leads, all know it and it has every
/// member as a voter; returns the leader's index.
async fn settled(op: &HttpTransport, members: &[Member]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut statuses = Vec::new();
        for m in members {
            statuses.push(status_of(op, m).await);
        }
        if let Some(all) = statuses.into_iter().collect::<Option<Vec<_>>>()
            && let Some(l) = all.iter().position(|s| s.role == "leader")
            && all.iter().all(|s| s.leader == Some(all[l].id))
            && all[l].voters.len() == members.len()
            && members
                .iter()
                .all(|m| all[l].voters.iter().any(|(id, _)| *id == m.id))
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "the ring did not settle within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects to `relay` as `client` (with its name token once it has one); returns the socket
/// once `welcome` came, and the welcome.
async fn connect(relay: &str, client: &str, token: Option<&str>) -> Option<(Ws, Value)> {
    let mut url = format!("{relay}?client={client}");
    if let Some(t) = token {
        url.push_str("&token=");
        url.push_str(t);
    }
    let (mut ws, _) = timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .ok()?
    .ok()?;
    let welcome = next_json(&mut ws, Duration::from_secs(10)).await?;
    assert_eq!(welcome["op"], "welcome", "first frame: {welcome}");
    Some((ws, welcome))
}

/// The next JSON frame, or `None` when the socket ends or nothing comes within `within`.
async fn next_json(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, ws.next()).await.ok()?? {
            Ok(Frame::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Frame::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// How a publish ended.
enum Answer {
    /// `ack`.
    Ack,
    /// `unavailable` or `rate_limited`: re-send it.
    Retry,
    /// No answer within [`ANSWER_WITHIN`], or the socket ended.
    Gone,
}

/// Sends one publish and waits for its answer.
async fn publish(ws: &mut Ws, room: &str, id: &str, body: &Value) -> Answer {
    let frame = json!({ "op": "publish", "room": room, "id": id, "body": body });
    if ws.send(Frame::text(frame.to_string())).await.is_err() {
        return Answer::Gone;
    }
    loop {
        let Some(m) = next_json(ws, ANSWER_WITHIN).await else {
            return Answer::Gone;
        };
        match m["op"].as_str() {
            Some("ack") if m["id"] == id => return Answer::Ack,
            Some("error") if m["ref"] == id => {
                let code = m["code"].as_str().unwrap_or_default();
                assert!(
                    matches!(code, "unavailable" | "rate_limited"),
                    "{id} refused: {m}"
                );
                return Answer::Retry;
            }
            Some("error") => panic!("unexpected error {m}"),
            _ => {}
        }
    }
}

/// One publisher per entry of `targets` (the relay URL it connects to) publishing back to back
/// for `seconds`, once all of them are connected.
async fn load(tag: &str, targets: &[String], seconds: u64) -> Figures {
    let (ready_tx, mut ready) = mpsc::channel(targets.len());
    let (start_tx, start_rx) = watch::channel(None::<Instant>);
    let window = Duration::from_secs(seconds);
    let tasks: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(p, relay)| {
            let (relay, client) = (relay.clone(), format!("{tag}-p{p}"));
            let (ready_tx, mut start_rx) = (ready_tx.clone(), start_rx.clone());
            tokio::spawn(async move {
                let (mut ws, _) = connect(&relay, &client, None)
                    .await
                    .unwrap_or_else(|| panic!("{client} could not connect to {relay}"));
                ready_tx.send(()).await.expect("the bench waits");
                let start = *start_rx
                    .wait_for(Option::is_some)
                    .await
                    .expect("the bench starts it");
                let end = start.expect("checked") + window;
                let room = format!("room-{}", p % ROOMS);
                let body = Value::String("x".repeat(BODY_BYTES));
                let (mut lat, mut resent, mut unanswered) = (Vec::new(), 0usize, 0usize);
                let mut k = 0u64;
                'publishes: while Instant::now() < end {
                    let id = k.to_string();
                    let sent = Instant::now();
                    loop {
                        match publish(&mut ws, &room, &id, &body).await {
                            Answer::Ack => {
                                if Instant::now() <= end {
                                    lat.push(sent.elapsed());
                                }
                                break;
                            }
                            Answer::Retry if Instant::now() < end => resent += 1,
                            Answer::Retry => break 'publishes,
                            Answer::Gone => {
                                unanswered += 1;
                                eprintln!("{client}: publish {id} unanswered (socket gone or silent for {ANSWER_WITHIN:?})");
                                break 'publishes;
                            }
                        }
                    }
                    k += 1;
                }
                let _ = ws.close(None).await;
                (lat, resent, unanswered)
            })
        })
        .collect();
    drop(ready_tx);
    for _ in 0..targets.len() {
        timeout(Duration::from_secs(60), ready.recv())
            .await
            .expect("publishers connect within 60 s")
            .expect("a publisher panicked while connecting");
    }
    start_tx
        .send(Some(Instant::now()))
        .expect("publishers wait for the start");
    let (mut all, mut resent, mut unanswered) = (Vec::new(), 0, 0);
    for t in tasks {
        let (lat, r, u) = t.await.expect("a publisher panicked");
        all.extend(lat);
        resent += r;
        unanswered += u;
    }
    all.sort();
    Figures {
        rate: all.len() as f64 / seconds as f64,
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        resent,
        unanswered,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one leader kill measured.
struct Failover {
    /// The killed leader.
    dead: NodeId,
    /// Time from the kill to the ack.
    acked: Duration,
    /// The member whose client connection got the ack.
    via: NodeId,
    /// Sends of the publish (1: acknowledged at the first).
    attempts: usize,
    /// The first survivor seen leading (status polled every 20 ms), and when.
    new_leader: Option<(NodeId, Duration)>,
}

/// Kills the leader (found through `status`) with SIGKILL while a client holds a relay
/// WebSocket on each surviving node; right after the kill the client publishes on them in turn,
/// re-sending the same id after `unavailable`, until one acknowledges it. Meanwhile the
/// survivors' `status` is polled to see when one leads. The dead member stays in the voters
/// (see [`replace_dead`]); `members` loses it.
async fn failover(
    op: &HttpTransport,
    members: &mut Vec<Member>,
    round: usize,
    token: &mut Option<String>,
) -> Failover {
    let l = settled(op, members).await;
    let dead = members.remove(l);
    let dead_id = dead.id;
    let survivors: Vec<(NodeId, String)> = book_of(members);
    let body = Value::String("x".repeat(BODY_BYTES));
    // One socket per survivor, each used once before the kill (the client is warm).
    let mut sockets = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let (mut ws, welcome) = connect(&relay_url(&m.url), "failover", token.as_deref())
            .await
            .expect("the failover client connects");
        assert_eq!(welcome["client"], "failover", "{welcome}");
        if token.is_none() {
            *token = welcome["name_token"].as_str().map(str::to_owned);
        }
        let id = format!("warm-{round}-{i}");
        assert!(
            matches!(publish(&mut ws, "failover", &id, &body).await, Answer::Ack),
            "warm-up publish through member {} not acknowledged",
            m.id
        );
        sockets.push((m.id, ws));
    }
    let killed = Instant::now();
    dead.kill9().await;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(async move {
        let op = operator();
        for (id, url) in &survivors {
            op.set_addr(*id, url);
        }
        while !*stop_rx.borrow() && killed.elapsed() < Duration::from_secs(60) {
            for (id, _) in &survivors {
                if let Ok(ouroboros::replica::Outcome::Ok(s)) = op
                    .call::<_, ouroboros::replica::Outcome<ouroboros::replica::Status>>(
                        *id,
                        Call::Status,
                        &(),
                    )
                    .await
                    && s.role == "leader"
                {
                    return Some((*id, killed.elapsed()));
                }
            }
            let _ = timeout(Duration::from_millis(20), stop_rx.changed()).await;
        }
        None
    });
    let id = format!("after-kill-{round}");
    let mut attempt = 0;
    loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "no acknowledged publish within 60 s of the leader's kill"
        );
        let n = sockets.len();
        let (via, ws) = &mut sockets[attempt % n];
        attempt += 1;
        match publish(ws, "failover", &id, &body).await {
            Answer::Ack => {
                let acked = killed.elapsed();
                let via = *via;
                let _ = stop_tx.send(true);
                let new_leader = watcher.await.expect("the status watcher does not panic");
                return Failover {
                    dead: dead_id,
                    acked,
                    via,
                    attempts: attempt,
                    new_leader,
                };
            }
            Answer::Retry => {}
            Answer::Gone => panic!("member {via} did not answer the failover publish"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// After [`failover`]: a fresh node joins through the survivors and becomes a voter, then the
/// dead one is removed from the voters (as `kill_and_replace` does).
async fn replace_dead(
    op: &HttpTransport,
    members: &mut Vec<Member>,
    next_id: &mut NodeId,
    logs: &Path,
) {
    let book: Book = Arc::new(Mutex::new(book_of(members)));
    let status: ouroboros::replica::Status = until_ok(op, &book, Call::Status, &()).await;
    members.push(join_new_of(Kind::Node, *next_id, &book, logs).await);
    *next_id += 1;
    *book.lock().expect("book lock") = book_of(members);
    for (id, _) in status.voters {
        if !members.iter().any(|m| m.id == id) {
            until_ok::<_, ()>(op, &book, Call::Remove, &RemoveRequest { id }).await;
        }
    }
}
