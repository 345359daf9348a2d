//! The PeerJS signaling server.
//!
//! A sans-IO [`Realm`] holds every registered client, its token, the offline queues and
//! the liveness timers; the axum shell in `server` turns sockets into realm events and
//! realm actions into frames. Wire format: `protocol/signaling.md`.

/// The sans-IO realm. (Stub: being written.)
#[derive(Debug, Default)]
pub struct Realm;

/// Command-line and environment configuration of the signaling server.
#[derive(clap::Args, Debug, Clone)]
pub struct SignalArgs {
    /// Address to listen on (use 0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "OUROBOROS_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one.
    #[arg(long, env = "OUROBOROS_PORT", default_value_t = 9000)]
    pub port: u16,
}

/// Runs the signaling server until `shutdown` resolves.
pub async fn run(
    args: SignalArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let _ = (args, shutdown);
    Err(std::io::Error::other("signaling server not built yet"))
}
