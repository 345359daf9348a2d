//! Publishes every line of stdin to a room of an Ouroboros node, in order, and reports each
//! acknowledgement as one line of JSON on stdout — a pipe into a room that survives rotations.
//!
//! ```text
//! tail -f app.log | cargo run --release --example publish -- --discovery ouroboros-data/ouroboros.json --room logs --name app-1
//! cargo run --release --example publish -- --discovery http://127.0.0.1:9000/ouroboros.json --room lobby --name bot --json < events.jsonl
//! ```
//!
//! Each line is published once its predecessor is acknowledged, so the room holds the lines
//! in stdin order (`seq` increases with the line number). A line is sent as a JSON string,
//! or with `--json` parsed as a JSON value. Empty lines are skipped. The program follows the
//! node across rotations (`moved`): unacknowledged lines are re-sent to the successor under
//! the same message id, so each line is stored exactly once. At the end of stdin it exits
//! after the last line is acknowledged (status 0), or with status 1 if a line was refused
//! (e.g. `too_large`; with the default `json` serialization a request must stay below
//! 16 300 bytes).
//!
//! stdout, one JSON object per line:
//!
//! ```text
//! {"event":"live","node":"<peer id>","generation":3,"transport":"webrtc"}   after every (re)connect (the node's welcome; transport webrtc or ws)
//! {"event":"ack","line":7,"id":"<message id>","room":"logs","seq":42}
//! {"event":"refused","line":8,"id":"<message id>","error":"node error too_large: ..."}
//! ```
//!
//! The client never gives up on the ring: while no node is reachable (a rotation, a successor
//! run still queued) it keeps reconnecting and re-reading discovery, and the lines read from
//! stdin wait in a queue of at most `--queue-lines`. When the queue is full the program says
//! so on stderr and stops reading stdin until the node acknowledges again (the writer then
//! blocks on the pipe); no line is dropped or refused for being offline.
//!
//! Message ids are `<name>-<run>-<line>` (`run`: random per start), so a restarted program
//! never collides with an earlier run. Progress and connection changes also go to stderr.

use anyhow::Context;
use clap::Parser;
use ouroboros::client::{Client, ClientConfig, ConnectionState, Event, Transport};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser, Debug)]
#[command(about = "Publish stdin lines to a room of an Ouroboros node, one ack per line on stdout")]
struct Args {
    /// Discovery record: an http(s) URL of ouroboros.json or a file path.
    #[arg(long)]
    discovery: String,
    /// Room to publish to.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Client name (the identity the node deduplicates publishes by).
    #[arg(long)]
    name: String,
    /// How to reach the node: `webrtc`, `ws` (the node's relay WebSocket, TCP only) or `auto`
    /// (WebRTC, falling back to the WebSocket when no DataChannel opens in time).
    #[arg(long, default_value = "auto")]
    transport: Transport,
    /// With `--transport auto`: how long WebRTC may take before the WebSocket is tried.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    fallback_after: std::time::Duration,
    /// Parse each line as a JSON value instead of sending it as a string.
    #[arg(long)]
    json: bool,
    /// Lines read ahead of the acknowledgements (kept while no node is reachable); when
    /// full, stdin is not read until the node acknowledges again.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    queue_lines: u64,
    /// ICE servers (`--ice-servers JSON`; default: the discovery record's) and
    /// `--loopback-candidates`.
    #[command(flatten)]
    ice: ouroboros::peer::ice::IceArgs,
}

/// Prints one JSON line on stdout.
fn emit(v: serde_json::Value) {
    println!("{v}");
}

/// The client configuration: `--ice-servers` replaces the record's servers when given.
fn client_config(args: &Args) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::new(&args.name);
    if args.ice.ice_servers.is_some() {
        cfg.ice_servers = Some(args.ice.checked(false)?);
    }
    cfg.loopback_candidates = args.ice.loopback_candidates;
    cfg.transport = args.transport;
    cfg.fallback_after = args.fallback_after;
    Ok(cfg)
}

/// Reads stdin into a queue of at most `bound` lines. When the queue is full (the node has
/// not acknowledged for a while), says so once on stderr and waits for room: stdin is not
/// read meanwhile, nothing is dropped.
fn read_stdin(bound: usize) -> tokio::sync::mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(bound);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        loop {
            let item = match lines.next_line().await {
                Ok(Some(line)) => Ok(line),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            let item = match tx.try_send(item) {
                Ok(()) => None,
                Err(tokio::sync::mpsc::error::TrySendError::Full(item)) => Some(item),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            };
            if let Some(item) = item {
                eprintln!(
                    "! {bound} lines are waiting for the node (queue full, --queue-lines); \
                     not reading stdin until it acknowledges again"
                );
                if tx.send(item).await.is_err() {
                    return;
                }
                eprintln!("* queue has room again; reading stdin");
            }
            if stop {
                return;
            }
        }
    });
    rx
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ouroboros::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,rtc=error,rtc_ice=error,rtc_dtls=error,webrtc=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (client, mut events) = Client::connect_discovered(&args.discovery, client_config(&args)?)
        .await
        .context("connecting to the node")?;
    // Connection events: report every welcome (the node and generation we are on now, and
    // the path: `webrtc` or `ws`).
    let handle = client.clone();
    let watcher = tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                Event::Welcome {
                    node, generation, ..
                } => {
                    let transport = handle.transport().map(|t| t.as_str());
                    emit(
                        json!({"event": "live", "node": node, "generation": generation, "transport": transport}),
                    )
                }
                Event::Moved {
                    peer_id,
                    generation,
                } => eprintln!("* node moving to generation {generation} ({peer_id})"),
                Event::State(ConnectionState::Offline { reason, retry_in }) => {
                    eprintln!("* offline ({reason}); retrying in {retry_in:?}");
                }
                Event::State(ConnectionState::Closed) => break,
                _ => {}
            }
        }
    });

    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut queue = read_stdin(args.queue_lines as usize);
    let (mut n, mut refused) = (0u64, 0u64);
    while let Some(line) = queue.recv().await {
        let line = line.context("reading stdin")?;
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let id = format!("{}-{run}-{n}", args.name);
        let body = if args.json {
            match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(e) => {
                    refused += 1;
                    emit(
                        json!({"event": "refused", "line": n, "id": id, "error": format!("not JSON: {e}")}),
                    );
                    continue;
                }
            }
        } else {
            serde_json::Value::String(line)
        };
        match client.publish_with_id(&args.room, &id, body).await {
            Ok(ack) => emit(
                json!({"event": "ack", "line": n, "id": id, "room": args.room, "seq": ack.seq}),
            ),
            Err(e) => {
                refused += 1;
                eprintln!("! line {n} not sent: {e}");
                emit(json!({"event": "refused", "line": n, "id": id, "error": e.to_string()}));
            }
        }
    }
    client.close().await;
    let _ = watcher.await;
    if refused > 0 {
        anyhow::bail!("{refused} of {n} lines were not published");
    }
    Ok(())
}
