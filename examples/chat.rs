//! A terminal chat on an Ouroboros node.
//!
//! ```text
//! cargo run --release --example chat -- --discovery http://127.0.0.1:9000/ouroboros.json --room lobby --name alice
//! cargo run --release --example chat -- --discovery ouroboros-data/ouroboros.json --room lobby --name bob
//! ```
//!
//! Reads the discovery record (URL or file), connects to the node, joins the room (showing
//! the last messages), publishes every line typed on stdin and prints messages as they
//! arrive. Follows the node across rotations without losing or repeating a message.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Parser;
use ouroboros::client::{Client, ClientConfig, ConnectionState, Event, Message, Transport};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser, Debug)]
#[command(about = "Chat in a room of an Ouroboros node")]
struct Args {
    /// Discovery record: an http(s) URL of ouroboros.json or a file path.
    #[arg(long)]
    discovery: String,
    /// Room to join.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Your name (the client identity; keep it stable to keep deduplication across restarts).
    #[arg(long)]
    name: String,
    /// How to reach the node: `webrtc`, `ws` (the node's relay WebSocket, TCP only) or `auto`
    /// (WebRTC, falling back to the WebSocket when no DataChannel opens in time).
    #[arg(long, default_value = "auto")]
    transport: Transport,
    /// With `--transport auto`: how long WebRTC may take before the WebSocket is tried.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    fallback_after: std::time::Duration,
    /// How many earlier messages to show on join.
    #[arg(long, default_value_t = 20)]
    history: u32,
    /// ICE servers (`--ice-servers JSON`; default: the discovery record's) and
    /// `--loopback-candidates`.
    #[command(flatten)]
    ice: ouroboros::peer::ice::IceArgs,
}

fn clock(ts: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ts);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.get(11..19).unwrap_or(&s).to_string()
}

fn show(m: &Message) {
    let body = match &m.body {
        serde_json::Value::String(s) => s.clone(),
        other => other
            .get("text")
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| other.to_string()),
    };
    println!("[{}] #{} {}: {}", clock(m.ts), m.seq, m.from, body);
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ouroboros::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let (client, mut events) = Client::connect_discovered(&args.discovery, client_config(&args)?)
        .await
        .context("connecting to the node")?;
    if let ConnectionState::Live {
        node, transport, ..
    } = client.state()
    {
        eprintln!("* connected to {node} over {transport}");
    }
    let head = client.join(&args.room, None).await.context("joining")?;
    if args.history > 0 && head > 0 {
        let page = client.history(&args.room, None, Some(args.history)).await?;
        for m in page.messages.iter().rev() {
            show(m);
        }
    }
    eprintln!(
        "joined {} as {} (type a line and press Enter; Ctrl-D quits)",
        args.room, args.name
    );

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut publishing = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            line = lines.next_line(), if stdin_open => match line? {
                Some(line) if !line.trim().is_empty() => {
                    let c = client.clone();
                    let room = args.room.clone();
                    publishing.spawn(async move {
                        if let Err(e) = c.publish(&room, serde_json::Value::String(line)).await {
                            eprintln!("! not sent: {e}");
                        }
                    });
                }
                Some(_) => {}
                None => stdin_open = false,
            },
            ev = events.recv() => match ev {
                Some(Event::Message(m)) => show(&m),
                Some(Event::Presence { room, joined, left }) => {
                    for n in joined { eprintln!("* {n} joined {room}"); }
                    for n in left { eprintln!("* {n} left {room}"); }
                }
                Some(Event::Direct { from, body }) => println!("(direct) {from}: {body}"),
                Some(Event::Error { code, message, .. }) => eprintln!("! {code}: {message}"),
                Some(Event::Moved { peer_id, generation }) => {
                    eprintln!("* node moving to generation {generation} ({peer_id})");
                }
                Some(Event::State(ConnectionState::Live { node, transport, .. })) => {
                    eprintln!("* connected to {node} over {transport}");
                }
                Some(Event::State(ConnectionState::Offline { reason, retry_in })) => {
                    eprintln!("* offline ({reason}); retrying in {retry_in:?}");
                }
                Some(Event::Untrusted { reason }) => eprintln!("! refused: {reason}"),
                Some(Event::State(ConnectionState::Closed)) | None => break,
                Some(_) => {}
            },
        }
        if !stdin_open {
            // Wait until every line typed was acknowledged (or refused), then leave.
            let drain = async { while publishing.join_next().await.is_some() {} };
            if tokio::time::timeout(Duration::from_secs(30), drain)
                .await
                .is_err()
            {
                eprintln!("! some messages were not acknowledged");
            }
            break;
        }
    }
    client.close().await;
    Ok(())
}
