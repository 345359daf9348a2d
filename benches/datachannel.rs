//! DataConnection benchmark: messages/s (1 KiB) and MB/s (bulk, 64 KiB messages) over an
//! ordered `binary` connection (peerjs's default serialization, 16300-byte chunking), for
//! Rust → Rust, browser → Rust and browser ↔ browser (peerjs 1.5.5 in headless Chromium), in
//! the same run against one `ouroboros signal` server on loopback.
//!
//! Protocol for every pair: the sender sends N messages, then the string `"done"`; the sink
//! answers `{count, bytes}`; the sender's clock runs from the first send to that answer.
//!
//! ```text
//! cargo bench --bench datachannel                      # everything, 3 repetitions, medians
//! cargo bench --bench datachannel -- --reps 1 --no-browser
//! ```
//! Options: `--reps R` (3), `--msgs N` (20000), `--bulk-msgs M` (1600 = 100 MiB),
//! `--no-browser`; env `BENCH_SEND_WINDOW` / `BENCH_NATIVE_SEND_WINDOW` /
//! `BENCH_REACTOR_THREADS` override `PeerConfig::send_window` / `native_send_window` /
//! `reactor_threads` (Rust → Rust uses the native window). The browser half is `tests/js/bench/datachannel.mjs` (needs
//! `tests/js/node_modules` and `/usr/bin/chromium`).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ouroboros::peer::{ConnectOptions, Peer, PeerConfig, Serialization, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const KEY: &str = "benchkey";
const PATH: &str = "/bench/";
const SINK_ID: &str = "rust-sink";
const MSG_SIZE: usize = 1024;
const BULK_SIZE: usize = 64 * 1024;

struct Opts {
    reps: usize,
    msgs: usize,
    bulk_msgs: usize,
    browser: bool,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        reps: 3,
        msgs: 20_000,
        bulk_msgs: 1600,
        browser: true,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let next = || args.get(i + 1).and_then(|v| v.parse().ok());
        match args[i].as_str() {
            "--reps" => o.reps = next().unwrap_or(o.reps),
            "--msgs" => o.msgs = next().unwrap_or(o.msgs),
            "--bulk-msgs" => o.bulk_msgs = next().unwrap_or(o.bulk_msgs),
            "--no-browser" => {
                o.browser = false;
                i -= 1;
            }
            _ => {
                i -= 1; // ignore cargo's own flags such as --bench
            }
        }
        i += 2;
    }
    o
}

async fn start_server() -> (tokio::process::Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ouroboros"))
        .env("RUST_LOG", "warn")
        .args(["signal", "--port", "0", "--host", "127.0.0.1", "--key", KEY])
        .args(["--path", PATH, "--rate-limit", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start ouroboros signal");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    while let Some(line) = lines.next_line().await.expect("server stdout") {
        if let Some(rest) = line.strip_prefix("listening on http://") {
            let port = rest
                .split('/')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("port in the listening line");
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, port);
        }
    }
    panic!("the server exited before listening");
}

fn config(port: u16, id: Option<&str>) -> PeerConfig {
    let mut c = PeerConfig::new("127.0.0.1", port);
    c.key = KEY.into();
    c.path = PATH.into();
    c.id = id.map(str::to_string);
    if let Some(w) = std::env::var("BENCH_SEND_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.send_window = w;
    }
    if let Some(w) = std::env::var("BENCH_NATIVE_SEND_WINDOW")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.native_send_window = w;
    }
    if let Some(r) = std::env::var("BENCH_REACTOR_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        c.reactor_threads = r;
    }
    c
}

/// Counts messages until `"done"`, then answers `{count, bytes}`.
fn spawn_sink(peer: Peer) {
    tokio::spawn(async move {
        while let Some(conn) = peer.accept().await {
            tokio::spawn(async move {
                let (tx, mut rx) = conn.split();
                let (mut count, mut bytes) = (0i64, 0i64);
                while let Some(Ok(v)) = rx.recv().await {
                    match v {
                        Value::Str(s) if s == "done" => {
                            let reply = Value::object([
                                ("count", Value::Int(count)),
                                ("bytes", Value::Int(bytes)),
                            ]);
                            if tx.send(&reply).await.is_err() {
                                break;
                            }
                            (count, bytes) = (0, 0);
                        }
                        Value::Bin(b) => {
                            count += 1;
                            bytes += b.len() as i64;
                        }
                        _ => count += 1,
                    }
                }
            });
        }
    });
}

/// One Rust → Rust run: seconds for `n` messages of `size` bytes.
async fn rust_run(sender: &Peer, n: usize, size: usize) -> f64 {
    let opts = ConnectOptions {
        serialization: Serialization::Binary,
        reliable: true,
        ..Default::default()
    };
    let mut conn = sender.connect(SINK_ID, opts).await.expect("connect");
    let payload = Value::Bin(Bytes::from((0..size).map(|i| i as u8).collect::<Vec<u8>>()));
    let t0 = Instant::now();
    for _ in 0..n {
        conn.send(&payload).await.expect("send");
    }
    conn.send(&Value::Str("done".into())).await.expect("send");
    let reply = tokio::time::timeout(Duration::from_secs(300), conn.recv())
        .await
        .expect("reply in time")
        .expect("open")
        .expect("decodes");
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(
        reply.get("count").and_then(Value::as_i64),
        Some(n as i64),
        "{reply:?}"
    );
    assert_eq!(
        reply.get("bytes").and_then(Value::as_i64),
        Some((n * size) as i64)
    );
    conn.close(false).await;
    secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    ouroboros::install_crypto_provider();
    let o = parse_opts();
    let (_server, port) = start_server().await;
    let sink = Peer::open(config(port, Some(SINK_ID)))
        .await
        .expect("sink peer");
    spawn_sink(sink.clone());
    let sender = Peer::open(config(port, None)).await.expect("sender peer");

    // (pair, kind) -> seconds per repetition
    let mut results: BTreeMap<(String, &'static str), Vec<f64>> = BTreeMap::new();
    let kinds = [("msgs", o.msgs, MSG_SIZE), ("bulk", o.bulk_msgs, BULK_SIZE)];
    for rep in 0..o.reps {
        for (kind, n, size) in kinds {
            let secs = rust_run(&sender, n, size).await;
            eprintln!(
                "rep {rep} rust→rust {kind}: {n} x {size} B in {secs:.3} s = {:.0} msgs/s, {:.1} MB/s",
                n as f64 / secs,
                (n * size) as f64 / secs / 1e6
            );
            results
                .entry(("rust→rust".into(), kind))
                .or_default()
                .push(secs);
        }
        if o.browser {
            let script = concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/js/bench/datachannel.mjs"
            );
            let out = Command::new("node")
                .arg(script)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--path", PATH, "--key", KEY, "--rust-sink", SINK_ID])
                .args([
                    "--msgs",
                    &o.msgs.to_string(),
                    "--msg-size",
                    &MSG_SIZE.to_string(),
                ])
                .args(["--bulk-msgs", &o.bulk_msgs.to_string()])
                .args(["--bulk-size", &BULK_SIZE.to_string()])
                .stderr(Stdio::inherit())
                .output()
                .await
                .expect("run node");
            assert!(out.status.success(), "browser bench failed");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Ok(j) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let pair = j["pair"].as_str().unwrap_or("?").to_string();
                let kind = if j["kind"] == "msgs" { "msgs" } else { "bulk" };
                let secs = j["secs"].as_f64().unwrap_or(f64::NAN);
                eprintln!("rep {rep} {pair} {kind}: {secs:.3} s");
                results.entry((pair, kind)).or_default().push(secs);
            }
        }
    }

    println!(
        "\n| pair | msgs/s (1 KiB, {} msgs) | MB/s (64 KiB msgs, {} MiB) |",
        o.msgs,
        (o.bulk_msgs * BULK_SIZE) >> 20
    );
    println!("|---|---|---|");
    for pair in ["rust→rust", "browser→rust", "browser↔browser"] {
        let msgs = results.get(&(pair.to_string(), "msgs")).cloned();
        let bulk = results.get(&(pair.to_string(), "bulk")).cloned();
        if msgs.is_none() && bulk.is_none() {
            continue;
        }
        let fmt_msgs = msgs
            .map(|v| format!("{:.0}", o.msgs as f64 / median(v)))
            .unwrap_or_default();
        let fmt_bulk = bulk
            .map(|v| format!("{:.1}", (o.bulk_msgs * BULK_SIZE) as f64 / median(v) / 1e6))
            .unwrap_or_default();
        println!("| {pair} | {fmt_msgs} | {fmt_bulk} |");
    }
    println!(
        "\n(medians of {} repetitions; ordered `binary` connections, 64 KiB messages chunked by peerjs's 16300-byte rule)",
        o.reps
    );
    sender.close().await;
    sink.close().await;
}
