//! Ouroboros: a PeerJS-compatible signaling server, a native PeerJS peer and a relay
//! service that keeps itself alive by starting its successor, handing over all its
//! state and moving its clients before its host goes away.
//!
//! # Layout
//!
//! - [`signaling`]: the PeerJS signaling server. A sans-IO [`signaling::Realm`] (clients,
//!   tokens, offline queues, expiry, liveness) under a thin axum shell.
//! - [`peer`]: the native PeerJS peer: signaling client, DataConnections over `webrtc`,
//!   and the PeerJS serializations in [`peer::codec`].
//! - [`relay`]: the node's service: rooms, ordered per-room logs, history, presence,
//!   direct relay, limits and the memory budget (sans-IO).
//! - [`client`]: the Rust client of a node: discover, connect, join, publish, follow rotations.
//! - [`node`]: composes signaling, peer and relay into `ouroboros node`.
//! - [`handoff`]: successor authentication and zero-loss state transfer.
//! - [`lifecycle`]: lifetime, deadlines and the [`lifecycle::Launcher`]s that start successors.
//! - [`discovery`]: the [`discovery::DiscoveryRecord`] and the publishers that make it public.
//! - [`tunnel`]: optional public reachability (ngrok).
//! - [`github`]: a small GitHub REST client (dispatch, contents, runs).
//! - [`replica`]: the replicated ring's foundation: the relay log replicated with Raft
//!   (openraft), with an in-process network for tests; not wired into the node yet.
//! - [`rate`]: the token bucket shared by every rate limit.
//! - [`retry`]: the one retry policy (exponential, capped, full jitter) of every reconnect and
//!   retry loop.
//! - [`tls`]: the one TLS trust policy (platform roots plus optional extra roots) of every
//!   outgoing connection.
//! - [`units`]: byte sizes on the command line.
//! - [`ids`]: connection ids and the peer-id rules every protocol shares; `json`: the
//!   JSON string escaping of the hand-written hot-path writers.

//!
//! # Cargo features
//!
//! - `server`: [`signaling`] (axum, hyper-util).
//! - `tunnel`: [`tunnel`] (ngrok).
//! - `node` (default; implies both): [`node`], [`handoff`], [`lifecycle`], [`github`] and the
//!   `ouroboros` binary.
//! - `replicas` (default): [`replica`] (openraft).
//!
//! With `default-features = false` the crate is the peer, the relay client, the relay core
//! and discovery: no server, no tunnel, no GitHub client.

// Every dependency in Cargo.toml is used by the library: clippy's `-D warnings` turns an
// unused one into an error. The exceptions are the binary's own (listed below). Not in test
// builds, which also see the dev-dependencies of the examples.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

// Used only by `src/main.rs` (logging set-up), not by the library.
#[cfg(feature = "node")]
use tracing_subscriber as _;

pub mod client;
pub mod discovery;
#[cfg(feature = "node")]
pub mod github;
#[cfg(feature = "node")]
pub mod handoff;
pub mod ids;
pub(crate) mod json;
#[cfg(feature = "node")]
pub mod lifecycle;
#[cfg(feature = "node")]
pub mod node;
pub mod peer;
pub mod rate;
pub mod relay;
#[cfg(feature = "replicas")]
pub mod replica;
pub mod retry;
#[cfg(feature = "server")]
pub mod signaling;
pub mod tls;
#[cfg(feature = "tunnel")]
pub mod tunnel;
pub mod units;

/// Installs the process-wide rustls crypto provider (ring). Call first thing in `main`
/// and in tests that use TLS; calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Resolves when the process receives SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
