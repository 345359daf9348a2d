//! Registers a PeerJS id and echoes every message back on the same connection, whatever
//! its serialization.
//!
//! `cargo run --release --example echo_peer -- --host H --port P --path PATH --key K --id ID [--secure]`
//!
//! Prints `ready ID` once the server answered OPEN.

use std::io::Write;

use clap::Parser;
use ouroboros::peer::{DataConnection, Peer, PeerConfig, PeerEvent};

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
    /// Peer id to register.
    #[arg(long)]
    id: String,
    /// Use wss/https.
    #[arg(long)]
    secure: bool,
    /// ICE servers (`--ice-servers JSON`) and `--loopback-candidates`.
    #[command(flatten)]
    ice: ouroboros::peer::ice::IceArgs,
}

async fn echo(conn: DataConnection) {
    let (tx, mut rx) = conn.split();
    while let Some(item) = rx.recv().await {
        match item {
            Ok(v) => {
                if let Err(e) = tx.send(&v).await {
                    tracing::warn!(peer = tx.peer(), error = %e, "echo failed");
                    break;
                }
            }
            Err(e) => tracing::warn!(peer = tx.peer(), error = %e, "bad message"),
        }
    }
    tracing::info!(peer = tx.peer(), "connection closed");
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
    let mut config = PeerConfig::new(args.host, args.port);
    config.path = args.path;
    config.key = args.key;
    config.secure = args.secure;
    config.ice_servers = args.ice.checked(false)?;
    args.ice.apply_loopback(&mut config);
    config.id = Some(args.id);
    let peer = Peer::open(config).await?;
    let mut events = peer.events();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {}", peer.id())?;
        out.flush()?;
    }
    tokio::spawn(async move {
        while let Ok(ev) = events.recv().await {
            match ev {
                PeerEvent::Error(e) => tracing::warn!(error = %e, "peer error"),
                other => tracing::info!(event = ?other, "peer event"),
            }
        }
    });
    loop {
        tokio::select! {
            c = peer.accept() => match c {
                Some(conn) => {
                    tracing::info!(peer = conn.peer(), id = conn.connection_id(), serialization = ?conn.serialization(), "connection");
                    tokio::spawn(echo(conn));
                }
                None => break,
            },
            _ = ouroboros::shutdown_signal() => break,
        }
    }
    peer.close().await;
    Ok(())
}
