//! The PeerJS signaling server.
//!
//! A sans-IO [`Realm`] holds every registered client, its token, the offline queues and
//! the liveness timers; the axum shell in `server` turns sockets into realm events and
//! realm actions into frames. Wire format and our deviations from the reference `peer`
//! server: `protocol/signaling.md`.
//!
//! # Files
//! - `config.rs`: [`SignalArgs`] (the CLI flags) and [`SignalConfig`] (validated settings).
//! - `wire.rs`: the JSON frames (the only serde types here).
//! - `realm.rs`: the sans-IO core ([`Realm`], [`Action`], [`Stats`]).
//! - `server.rs`: routes, CORS, the per-socket driver, the timer task.
//! - `ws.rs`: the WebSocket framing (handshake key, frame decoder, server frames).
//! - `listener.rs`: the listener (plain or TLS), accept with back-off, the serve loop.
//!
//! # Embedding (what `ouroboros node` uses)
//! ```no_run
//! # async fn demo() -> Result<(), ouroboros::signaling::SignalError> {
//! use ouroboros::signaling::{self, SignalConfig, Signaling};
//! let config = SignalConfig { port: 0, ..SignalConfig::default() };
//! let signaling = Signaling::new(config.clone());          // inside a Tokio runtime
//! let listener = signaling::bind(&config).await?;
//! println!("listening on {}", listener.url(&config.path));
//! // The node adds its own routes (it serves GET {path} itself, so it takes the
//! // routes without the info JSON and may call `signaling::info_response()`):
//! let app = signaling
//!     .router_without_info()
//!     .merge(signaling.with_cors(axum::Router::new().route(
//!         &config.path,
//!         axum::routing::get(|| async { signaling::info_response() }),
//!     )));
//! let peer = signaling.connect_local("node-peer-id", "secret-token").expect("free id");
//! signaling.serve(listener, app, async { /* shutdown signal */ }).await?;
//! # drop(peer); Ok(()) }
//! ```

mod config;
mod listener;
mod realm;
mod server;
mod wire;
mod ws;

use std::{future::Future, io::Write, sync::Arc};

pub use config::{AddressLimits, Cidr, QueueLimits, Rate, SignalArgs, SignalConfig};
pub use listener::{MaybeTls, SignalListener};
pub use realm::{
    Action, Admission, CloseReason, ClosedStats, ConnId, ConnectRequest, Realm, RealmConfig,
    RejectedStats, Rejection, Stats,
};
pub use server::{INFO_JSON, LocalClient, RemoteAddr, client_ip, info_response};
pub use wire::{Inbound, MAX_ID_LEN, MsgType, Parsed, parse, text, valid_id};

/// Errors of the signaling server.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// A flag has an invalid value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
}

/// A running signaling service: the realm, its timer task and counters. Cheap to clone
/// (all clones share one realm).
///
/// Build it with [`Signaling::new`] (inside a Tokio runtime), take its routes with
/// [`Signaling::router`] (or [`Signaling::router_without_info`] to serve `GET {path}`
/// yourself), bind with [`bind`] and run with [`Signaling::serve`]. [`Signaling::stats`]
/// gives the counters for `/metrics` ([`Stats::write_prometheus`]).
#[derive(Clone)]
pub struct Signaling {
    shared: Arc<server::Shared>,
}

impl std::fmt::Debug for Signaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signaling")
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Signaling {
    /// Creates the realm and starts its timer task (expiry, liveness). Must be called inside
    /// a Tokio runtime; the timer task ends when [`Signaling::serve`] shuts down.
    pub fn new(mut config: SignalConfig) -> Signaling {
        config.path = config::normalise_path(&config.path);
        Signaling {
            shared: server::Shared::new(config),
        }
    }

    /// The settings.
    pub fn config(&self) -> &SignalConfig {
        &self.shared.config
    }

    /// Every route of the reference server under the configured path: `GET {path}` (info
    /// JSON), `GET {path}{key}/id`, `GET {path}{key}/peers` (all with CORS) and the WebSocket
    /// at `{path}peerjs`.
    pub fn router(&self) -> axum::Router {
        server::router(&self.shared, true)
    }

    /// [`Signaling::router`] without `GET {path}`, for an embedder that serves that path
    /// itself (use [`info_response`] for the JSON and [`Signaling::with_cors`] for the same
    /// CORS headers).
    pub fn router_without_info(&self) -> axum::Router {
        server::router(&self.shared, false)
    }

    /// Wraps `router` in the signaling server's CORS policy (reflect an allowed Origin,
    /// `Vary: Origin`, preflight answered with 204).
    pub fn with_cors(&self, router: axum::Router) -> axum::Router {
        server::with_cors(&self.shared, router)
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Whether `id` is registered.
    pub fn is_registered(&self, id: &str) -> bool {
        self.shared.with_realm(|realm, _| realm.contains(id))
    }

    /// Reserves `id` for `token` (the node's own peer id): nobody else can register or
    /// displace it, even while its owner is away, and the connection that presents `token`
    /// is exempt from the rate and per-address limits and never dropped as too slow. See
    /// [`Realm::reserve`].
    pub fn reserve(&self, id: &str, token: &str) {
        self.shared.with_realm(|realm, _| realm.reserve(id, token));
    }

    /// Registers an in-process client (the node's own peer) under `id` with `token`,
    /// through the same admission checks as a socket (except the key). See [`LocalClient`].
    ///
    /// # Errors
    /// The [`Rejection`] a socket would have got (e.g. [`Rejection::IdTaken`]).
    pub fn connect_local(&self, id: &str, token: &str) -> Result<LocalClient, Rejection> {
        LocalClient::connect(&self.shared, id, token)
    }

    /// Serves `router` (normally [`Signaling::router`], possibly merged with more routes) on
    /// `listener` until `shutdown` resolves; then stops accepting, closes every WebSocket
    /// with close code 1001 and waits up to 3 s for them.
    ///
    /// # Errors
    /// I/O errors of the server.
    pub async fn serve(
        &self,
        listener: SignalListener,
        router: axum::Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), SignalError> {
        listener::serve(&self.shared, listener, router, shutdown).await?;
        Ok(())
    }

    /// Closes every socket with 1001 now (what `serve` does on shutdown).
    pub fn close_all(&self) {
        self.shared.shutdown.cancel();
    }
}

/// Binds `config.host:config.port` (and loads the TLS certificate when configured).
///
/// # Errors
/// [`SignalError::Io`] if the address cannot be bound, [`SignalError::Tls`] if the
/// certificate or key cannot be loaded.
pub async fn bind(config: &SignalConfig) -> Result<SignalListener, SignalError> {
    SignalListener::bind(config).await
}

/// Runs the signaling server alone until `shutdown` resolves (`ouroboros signal`). Prints
/// one line `listening on http://ADDR/PATH` (`https` with TLS) to stdout once bound.
///
/// # Errors
/// Invalid flags, bind or TLS failures.
pub async fn run(
    args: SignalArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SignalError> {
    let config = SignalConfig::from_args(&args)?;
    let signaling = Signaling::new(config.clone());
    let listener = bind(&config).await?;
    let url = listener.url(&config.path);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {url}")?;
        out.flush()?;
    }
    tracing::info!(%url, key = %config.key, "signaling server started");
    signaling
        .serve(listener, signaling.router(), shutdown)
        .await
}
