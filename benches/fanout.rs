//! Relay fan-out: one publisher, N subscribers (Rust clients over real DataChannels, `json`
//! serialization), against a release `ouroboros node` running as its own process.
//!
//! ```text
//! cargo bench --bench fanout -- [--subscribers 10,100] [--messages 2000] [--window 16]
//!                                [--serialization json|binary|msgpack] [--transport webrtc|ws]
//!                                [--body-bytes N]
//! ```
//!
//! `--window` is how many publishes the publisher keeps unacknowledged; `--serialization` is
//! the subscribers' (the publisher always uses `json`); `--transport` is every client's path
//! (`ws`: the node's relay WebSocket); `--body-bytes` pads each message body (bulk throughput).
//! Also prints the publisher's time to first message: connect until its first publish is
//! acknowledged.
//!
//! Prints, per subscriber count: delivered messages per second (all subscribers together,
//! first publish to last delivery), p50/p99/max publish→delivery latency, the node's CPU time
//! per delivered message and in total (from `/proc/PID/stat`), and its RSS at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ouroboros::client::{Client, ClientConfig, Event, Target, Transport};
use ouroboros::discovery::SignalingEndpoint;
use ouroboros::peer::Serialization;
use serde_json::json;
use tokio::io::AsyncBufReadExt;

struct Args {
    subscribers: Vec<usize>,
    messages: usize,
    window: usize,
    serialization: Serialization,
    transport: Transport,
    body_bytes: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        subscribers: vec![10, 100],
        messages: 2000,
        window: 16,
        serialization: Serialization::Json,
        transport: Transport::Webrtc,
        body_bytes: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--subscribers" => {
                a.subscribers = v.split(',').filter_map(|s| s.parse().ok()).collect();
                i += 1;
            }
            "--messages" => {
                a.messages = v.parse().expect("--messages N");
                i += 1;
            }
            "--window" => {
                a.window = v.parse().expect("--window N");
                i += 1;
            }
            "--serialization" => {
                a.serialization = Serialization::from_offer(&v)
                    .unwrap_or_else(|| panic!("--serialization json|binary|msgpack, not {v}"));
                i += 1;
            }
            "--transport" => {
                a.transport = v.parse().expect("--transport webrtc|ws");
                i += 1;
            }
            "--body-bytes" => {
                a.body_bytes = v.parse().expect("--body-bytes N");
                i += 1;
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    a
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|s| s.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0 // CLK_TCK is 100 on Linux
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| k * 1024)
        .unwrap_or(0)
}

struct NodeProc {
    child: tokio::process::Child,
    pid: u32,
    target: Target,
    _dir: tempfile::TempDir,
}

async fn start_node() -> NodeProc {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ouroboros"))
        .args(["node", "--host", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .args(["--client-rate", "10000000", "--client-burst", "10000000"])
        .env("RUST_LOG", "error")
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node binary runs");
    let pid = child.id().expect("pid");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut port, mut peer_id) = (0u16, String::new());
    while let Some(line) = lines.next_line().await.expect("read stdout") {
        if let Some(url) = line.strip_prefix("listening on http://") {
            port = url
                .split('/')
                .next()
                .and_then(|hp| hp.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("port");
        } else if let Some(id) = line.strip_prefix("node peer-id ") {
            peer_id = id.trim().to_string();
            break;
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    NodeProc {
        child,
        pid,
        target: Target::new(
            peer_id,
            0,
            vec![SignalingEndpoint {
                host: "127.0.0.1".into(),
                port,
                path: "/".into(),
                key: "peerjs".into(),
                secure: false,
                peer_id: None,
            }],
        ),
        _dir: dir,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(n: usize, args: &Args) {
    let mut node = start_node().await;
    let epoch = Arc::new(Instant::now());
    // Subscribers.
    let mut subs = Vec::with_capacity(n);
    for wave in (0..n).collect::<Vec<_>>().chunks(20) {
        let mut set = tokio::task::JoinSet::new();
        for &i in wave {
            let target = node.target.clone();
            let ser = args.serialization;
            let transport = args.transport;
            set.spawn(async move {
                let mut cfg = ClientConfig::new(format!("sub{i}"));
                cfg.serialization = ser;
                cfg.transport = transport;
                cfg.connect_timeout = Duration::from_secs(60);
                let (c, ev) = Client::connect(target, cfg)
                    .await
                    .expect("subscriber connects");
                c.join("bench", None).await.expect("join");
                (c, ev)
            });
        }
        while let Some(r) = set.join_next().await {
            subs.push(r.expect("task"));
        }
    }
    let mut pcfg = ClientConfig::new("publisher");
    pcfg.transport = args.transport;
    let connecting = Instant::now();
    let (publisher, _pev) = Client::connect(node.target.clone(), pcfg)
        .await
        .expect("publisher connects");
    publisher
        .publish("first", json!("first"))
        .await
        .expect("first publish");
    let first_message = connecting.elapsed();
    let pad = "x".repeat(args.body_bytes);
    // Warm-up: a few messages through every path.
    for _ in 0..20 {
        publisher
            .publish("bench", json!({"warm": true}))
            .await
            .expect("warm-up");
    }
    let total = args.messages;
    let mut receivers = tokio::task::JoinSet::new();
    let mut clients = Vec::new();
    for (c, mut ev) in subs {
        clients.push(c);
        let epoch = epoch.clone();
        receivers.spawn(async move {
            let mut lat = Vec::with_capacity(total);
            let mut last = Instant::now();
            while lat.len() < total {
                match tokio::time::timeout(Duration::from_secs(30), ev.recv()).await {
                    Ok(Some(Event::Message(m))) => {
                        if let Some(t) = m.body.get("t").and_then(|t| t.as_u64()) {
                            let now = epoch.elapsed().as_nanos() as u64;
                            lat.push((now.saturating_sub(t)) as f64 / 1e6);
                            last = Instant::now();
                        }
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            (lat, last)
        });
    }
    let cpu0 = cpu_seconds(node.pid);
    let start = Instant::now();
    // Publish with a window of outstanding (unacknowledged) publishes.
    let mut inflight: tokio::task::JoinSet<Result<_, ouroboros::client::ClientError>> =
        tokio::task::JoinSet::new();
    for _ in 0..total {
        if inflight.len() >= args.window {
            inflight
                .join_next()
                .await
                .expect("in flight")
                .expect("task")
                .expect("ack");
        }
        let p = publisher.clone();
        let t = epoch.elapsed().as_nanos() as u64;
        let body = if pad.is_empty() {
            json!({ "t": t })
        } else {
            json!({ "t": t, "pad": pad })
        };
        inflight.spawn(async move { p.publish("bench", body).await });
    }
    while let Some(r) = inflight.join_next().await {
        r.expect("task").expect("ack");
    }
    let publish_done = start.elapsed();
    let mut all = Vec::with_capacity(total * n);
    let mut last_delivery = start;
    let mut short = 0usize;
    while let Some(r) = receivers.join_next().await {
        let (lat, last) = r.expect("receiver");
        if lat.len() < total {
            short += total - lat.len();
        }
        all.extend(lat);
        last_delivery = last_delivery.max(last);
    }
    let elapsed = last_delivery.duration_since(start);
    let cpu = cpu_seconds(node.pid) - cpu0;
    let rss = rss_bytes(node.pid);
    all.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let delivered = all.len();
    println!(
        "{} subscribers {n:>4} | first message {:.0} ms | published {total} in {:.2}s ({:.0}/s) | delivered {delivered} ({} missing) in {:.2}s = {:.0} msgs/s = {:.1} MB/s of bodies | latency ms p50 {:.2} p99 {:.2} max {:.2} | node CPU {:.2}s = {:.1} µs/delivery | node RSS {:.1} MiB",
        args.transport,
        first_message.as_secs_f64() * 1e3,
        publish_done.as_secs_f64(),
        total as f64 / publish_done.as_secs_f64(),
        short,
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        delivered as f64 * (args.body_bytes + 30) as f64 / elapsed.as_secs_f64() / 1e6,
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN),
        cpu,
        cpu * 1e6 / delivered.max(1) as f64,
        rss as f64 / (1 << 20) as f64,
    );
    publisher.close().await;
    for c in clients {
        c.close().await;
    }
    let _ = node.child.kill().await;
}

#[tokio::main]
async fn main() {
    ouroboros::install_crypto_provider();
    let args = parse_args();
    println!(
        "relay fan-out over {}: 1 publisher (json), subscribers {:?}, window {}, {} messages per run, bodies {} bytes of padding, node = {} binary in its own process",
        args.transport,
        args.serialization,
        args.window,
        args.messages,
        args.body_bytes,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    for &n in &args.subscribers {
        run(n, &args).await;
    }
}
