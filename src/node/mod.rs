//! `ouroboros node`: the signaling server, the node's own peer, the relay, lifecycle,
//! discovery and tunnel, composed.

use crate::{lifecycle::LifecycleArgs, signaling::SignalArgs, tunnel::TunnelArgs};

/// Flags of `ouroboros node`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Signaling server flags.
    #[command(flatten)]
    pub signal: SignalArgs,
    /// Lifetime and successor flags.
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    /// Tunnel flags.
    #[command(flatten)]
    pub tunnel: TunnelArgs,
}

/// Runs the node until `shutdown` resolves (or its lifetime ends).
pub async fn run(
    args: NodeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::signaling::run(args.signal, shutdown).await?;
    Ok(())
}
