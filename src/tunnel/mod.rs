//! Optional public reachability for the signaling server (ngrok).

/// Tunnel flags of `ouroboros node`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TunnelArgs {}
