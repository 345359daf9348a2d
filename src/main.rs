//! The `ouroboros` binary: parses flags, sets up logs, runs a subcommand.

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "ouroboros",
    version,
    about = "A PeerJS signaling server and relay node that hands itself over to its successor"
)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, env = "OUROBOROS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once at start-up
enum Command {
    /// Run the PeerJS signaling server alone.
    Signal {
        #[command(flatten)]
        args: ouroboros::signaling::SignalArgs,
        /// Runtime threads: 1 runs the whole server on one thread (tokio's current-thread
        /// runtime: no hand-offs between workers, the least CPU per relayed message); 0 one
        /// worker per core (`TOKIO_WORKER_THREADS` overrides); N that many workers.
        #[arg(long, env = "OUROBOROS_THREADS", default_value_t = 1)]
        threads: usize,
    },
    /// Run the full node: signaling, relay peer, lifecycle and discovery.
    Node(ouroboros::node::NodeArgs),
    /// Run one member of a replicated relay log (issue 16; the relay's clients do not reach it
    /// yet).
    #[cfg(feature = "replicas")]
    Replica(ouroboros::node::replica::ReplicaArgs),
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // webrtc's ICE and TURN crates warn once per failed check or channel bind (tens of lines a
    // second while a candidate pair fails): only their errors by default; openraft logs every
    // vote and replication step at info: its warnings only (RUST_LOG overrides).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rtc_ice=error,rtc_turn=error,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The runtime for `threads` (see `signal --threads`; the other commands pass 0).
fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    use tokio::runtime::Builder;
    match threads {
        1 => Builder::new_current_thread().enable_all().build(),
        0 => Builder::new_multi_thread().enable_all().build(),
        n => Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

fn main() -> anyhow::Result<()> {
    ouroboros::install_crypto_provider();
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let threads = match &cli.command {
        Command::Signal { threads, .. } => *threads,
        _ => 0,
    };
    runtime(threads)?.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Signal { args, .. } => {
            ouroboros::signaling::run(args, ouroboros::shutdown_signal()).await?
        }
        Command::Node(args) => ouroboros::node::run(args, ouroboros::shutdown_signal()).await?,
        #[cfg(feature = "replicas")]
        Command::Replica(args) => {
            ouroboros::node::replica::run(args, ouroboros::shutdown_signal()).await?
        }
    }
    Ok(())
}
