//! Connects to a PeerJS peer, sends a JSON message N times, prints every reply as one line
//! of JSON, then closes with flush.
//!
//! `cargo run --release --example send -- --host H --port P --path PATH --key K --to ID --serialization S --message JSON [--count N]`
//!
//! `S` is `binary`, `binary-utf8`, `json`, `raw` or `msgpack`. With `raw`, a JSON string is
//! sent as a text frame and anything else as its JSON text. Binary replies print as
//! `{"$bin_len":N,"$sha256":"…"}`. Extra: `--binary-size N` sends N pattern bytes instead
//! of `--message`, `--reliable false` for an unordered channel.
//!
//! `--transport ws` talks to an Ouroboros node's relay WebSocket instead (`--relay-url`, by
//! default `ws[s]://HOST:PORT/relay`): the message goes as one JSON text frame and every
//! text frame received is a reply (the node's `welcome` first). `--transport auto` tries
//! WebRTC and falls back to the WebSocket when no DataChannel opens within
//! `--fallback-after`. The transport used is printed on stderr: `transport webrtc` or
//! `transport ws`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use ouroboros::client::Transport;
use ouroboros::peer::{ConnectOptions, DataConnection, Peer, PeerConfig, Serialization, Value};
use sha2::Digest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug)]
struct Args {
    /// Signaling server host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Signaling server port.
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Server path.
    #[arg(long, default_value = "/")]
    path: String,
    /// API key.
    #[arg(long, default_value = "peerjs")]
    key: String,
    /// Use wss/https.
    #[arg(long)]
    secure: bool,
    /// The peer id to connect to.
    #[arg(long)]
    to: String,
    /// binary, binary-utf8, json, raw or msgpack.
    #[arg(long, default_value = "binary")]
    serialization: String,
    /// The message, as JSON.
    #[arg(long, default_value = "null")]
    message: String,
    /// How many times to send it.
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Send this many pattern bytes (binary) instead of --message.
    #[arg(long)]
    binary_size: Option<usize>,
    /// Ordered channel (peerjs `reliable`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    reliable: bool,
    /// Seconds to wait for all replies.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// `webrtc`, `ws` (an Ouroboros node's relay WebSocket) or `auto` (WebRTC, then ws).
    #[arg(long, default_value = "webrtc")]
    transport: Transport,
    /// With `--transport auto`: how long WebRTC may take before the WebSocket is tried.
    #[arg(long, default_value = "2500ms", value_parser = humantime::parse_duration)]
    fallback_after: Duration,
    /// The relay WebSocket [default: ws(s)://HOST:PORT/relay].
    #[arg(long)]
    relay_url: Option<String>,
    /// ICE servers (`--ice-servers JSON`) and `--loopback-candidates`.
    #[command(flatten)]
    ice: ouroboros::peer::ice::IceArgs,
}

/// One line of JSON per reply; binary prints as its length and SHA-256.
fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Bin(b) => serde_json::json!({
            "$bin_len": b.len(),
            "$sha256": hex::encode(sha2::Sha256::digest(b)),
        }),
        Value::Array(a) => serde_json::Value::Array(a.iter().map(to_json).collect()),
        Value::Map(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => other.to_js_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        other => other.to_json(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ouroboros::install_crypto_provider();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                "warn,rtc=error,rtc_ice=error,rtc_dtls=error,rtc_sctp=error,webrtc=error".into()
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let serialization = Serialization::from_offer(&args.serialization)
        .with_context(|| format!("unknown serialization {:?}", args.serialization))?;
    let message = match args.binary_size {
        Some(n) => Value::Bin(Bytes::from(
            (0..n).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
        )),
        None => {
            let j: serde_json::Value =
                serde_json::from_str(&args.message).context("--message is not JSON")?;
            match (serialization, j) {
                (Serialization::Raw, serde_json::Value::String(s)) => Value::Str(s),
                (Serialization::Raw, other) => Value::Str(other.to_string()),
                (_, j) => Value::from_json(j),
            }
        }
    };
    let relay_url = args.relay_url.clone().unwrap_or_else(|| {
        let scheme = if args.secure { "wss" } else { "ws" };
        format!("{scheme}://{}:{}/relay", args.host, args.port)
    });
    let mut config = PeerConfig::new(args.host.clone(), args.port);
    config.path = args.path.clone();
    config.key = args.key.clone();
    config.secure = args.secure;
    config.ice_servers = args.ice.checked(false)?;
    args.ice.apply_loopback(&mut config);
    let open_rtc = async {
        let peer = Peer::open(config).await?;
        let conn = peer
            .connect(
                &args.to,
                ConnectOptions {
                    serialization,
                    reliable: args.reliable,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("connecting to {}", args.to))?;
        anyhow::Ok((peer, conn))
    };
    let rtc = match args.transport {
        Transport::Ws => None,
        Transport::Webrtc => Some(open_rtc.await?),
        Transport::Auto => match tokio::time::timeout(args.fallback_after, open_rtc).await {
            Ok(Ok(pc)) => Some(pc),
            Ok(Err(e)) => {
                eprintln!("webrtc failed ({e:#}); falling back to {relay_url}");
                None
            }
            Err(_) => {
                eprintln!(
                    "no DataChannel within {:?}; falling back to {relay_url}",
                    args.fallback_after
                );
                None
            }
        },
    };
    match rtc {
        Some((peer, conn)) => {
            eprintln!("transport webrtc");
            exchange_rtc(conn, message, args.count, args.timeout).await?;
            peer.close().await;
        }
        None => {
            eprintln!("transport ws");
            if args.binary_size.is_some() {
                bail!("--binary-size needs WebRTC: the relay WebSocket carries JSON text");
            }
            let text = match &message {
                Value::Str(s) if serialization == Serialization::Raw => s.clone(),
                _ => serde_json::to_string(&message.to_json())?,
            };
            exchange_ws(&relay_url, &text, args.count, args.timeout).await?;
        }
    }
    Ok(())
}

/// Sends `message` `count` times on the DataConnection and prints `count` replies.
async fn exchange_rtc(
    conn: DataConnection,
    message: Value,
    count: usize,
    timeout: u64,
) -> anyhow::Result<()> {
    let (tx, mut rx) = conn.split();
    let sender = tx.clone();
    let sending = tokio::spawn(async move {
        for _ in 0..count {
            sender.send(&message).await?;
        }
        Ok::<_, ouroboros::peer::ConnectionError>(())
    });
    let mut out = std::io::stdout().lock();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    for i in 0..count {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(v))) => {
                writeln!(out, "{}", to_json(&v))?;
                out.flush()?;
            }
            Ok(Some(Err(e))) => bail!("reply {i}: {e}"),
            Ok(None) => bail!("connection closed after {i} of {count} replies"),
            Err(_) => bail!("timed out after {i} of {count} replies"),
        }
    }
    sending.await??;
    tx.close(true).await;
    Ok(())
}

/// Sends `text` `count` times on the relay WebSocket and prints `count` replies.
async fn exchange_ws(url: &str, text: &str, count: usize, timeout: u64) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    for _ in 0..count {
        ws.feed(Message::text(text)).await?;
    }
    ws.flush().await?;
    let mut out = std::io::stdout().lock();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let mut i = 0;
    while i < count {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                writeln!(out, "{}", t.as_str())?;
                out.flush()?;
                i += 1;
            }
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) => {
                bail!("connection closed after {i} of {count} replies")
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => bail!("reply {i}: {e}"),
            Err(_) => bail!("timed out after {i} of {count} replies"),
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}
