//! The native PeerJS peer: a signaling client for any PeerJS server and DataConnections
//! over `webrtc` that browsers running `peerjs` 1.5.5 cannot tell from another browser.
//!
//! # Layout
//!
//! - [`Peer`] (this file): configuration, the public handle, events and errors.
//! - `signaling_client`: the WebSocket to the PeerJS server (id fetch, OPEN, heartbeat,
//!   automatic reconnect with backoff keeping id and token, routing of relayed messages).
//! - `negotiation`: one task per connection driving its `RTCPeerConnection` through
//!   OFFER / ANSWER / CANDIDATE (candidates buffered until the remote description is set).
//! - [`connection`]: the open [`DataConnection`] and its [`ConnectionSender`] /
//!   [`ConnectionReceiver`] halves (bounded send buffering, in-band flushed close).
//! - `webrtc_setup`: the `SettingEngine` settings that make webrtc-rs fast with Chromium.
//! - `udp`: the `Runtime` wrapper that enlarges UDP socket buffers.
//! - [`codec`]: the PeerJS serializations.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ouroboros::peer::{ConnectOptions, Peer, PeerConfig, Value};
//! let peer = Peer::open(PeerConfig::new("127.0.0.1", 9000)).await?;
//! let mut conn = peer.connect("other-peer", ConnectOptions::default()).await?;
//! conn.send(&Value::Str("hello".into())).await?;
//! let reply = conn.recv().await;
//! conn.close(true).await;
//! # Ok(()) }
//! ```

pub mod codec;
pub mod connection;
pub mod ice;
mod negotiation;
mod signaling_client;
mod turn_bridge;
mod udp;
mod webrtc_setup;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

pub use codec::{Frame, PreEncoded, Serialization, Value};
pub use connection::{ConnectionError, ConnectionReceiver, ConnectionSender, DataConnection};
pub use ice::{IceConfigError, IceServer, parse_ice_servers};
pub use udp::BufferedUdpRuntime;

/// The node's [`PeerConfig::send_high_water`]: its relay writers are charged to the memory
/// budget until `send` returns, so this is what a connection holds outside the budget (plus
/// SCTP's window); four of the handoff's 255 KiB chunks still fit.
pub const NODE_SEND_HIGH_WATER: usize = 1 << 20;

/// The peerjs client version we announce in `version=` query parameters.
pub const PEERJS_VERSION: &str = "1.5.5";

/// peerjs's `MAX_BUFFERED_AMOUNT`: `send` waits (and `try_send` fails) while this many
/// bytes are queued on a connection.
pub const SEND_HIGH_WATER: usize = 8 * 1024 * 1024;

/// Default [`PeerConfig::send_window`]: bytes in flight (handed to SCTP, unacknowledged) per
/// channel towards a browser. Small enough that a burst never overflows Chromium's 128 KiB UDP
/// receive buffer (measured on loopback: 64 KiB still lost packets when the machine was busy,
/// 32 KiB none). It also caps one connection at `send_window / RTT` (≈ 650 KB/s at 50 ms):
/// raise it for bulk transfers over long paths.
pub const DEFAULT_SEND_WINDOW: usize = 32 * 1024;

/// Default [`PeerConfig::native_send_window`]: bytes in flight per channel towards another
/// Ouroboros peer (whose SDP carries `a=tool:ouroboros`). Its 4 MiB UDP buffers take the
/// bursts; measured Rust → Rust bulk on loopback: 32 KiB ≈ 93 MB/s, 256 KiB ≈ 134 MB/s,
/// 1 MiB no faster and 1 KiB messages 10× slower (see BENCHMARKS.md).
pub const DEFAULT_NATIVE_SEND_WINDOW: usize = 256 * 1024;

/// The UDP socket buffer size requested for every WebRTC socket (4 MiB).
pub const UDP_SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Where and how a [`Peer`] registers.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Signaling server host name or address.
    pub host: String,
    /// Signaling server port.
    pub port: u16,
    /// Server mount path; normalised to a leading and trailing `/`.
    pub path: String,
    /// API key (`peerjs` by default).
    pub key: String,
    /// Use `https`/`wss`.
    pub secure: bool,
    /// The id to register; `None` fetches one from `{path}{key}/id`.
    pub id: Option<String>,
    /// The token proving ownership of the id across reconnects; random when `None`.
    pub token: Option<String>,
    /// STUN/TURN servers (none by default: loopback and LAN only).
    pub ice_servers: Vec<IceServer>,
    /// Extra trusted root certificates (PEM, one or more) for `secure` servers, in addition
    /// to the platform's trust store (the same policy for the id fetch and the WebSocket, see
    /// [`crate::tls`]): for a self-hosted PeerJS server with a private CA.
    pub tls_root_pem: Option<String>,
    /// Extra HTTP headers on the id fetch and the WebSocket upgrade
    /// (e.g. `ngrok-skip-browser-warning`).
    pub http_headers: Vec<(String, String)>,
    /// Local UDP addresses for WebRTC sockets. A wildcard binds every interface except
    /// loopback and link-local ones.
    pub udp_addrs: Vec<String>,
    /// Also bind a `127.0.0.1` WebRTC socket, offer loopback candidates and accept remote
    /// ones: for tests with everything on one machine. Off, no loopback or link-local
    /// candidate is ever sent to or taken from a remote peer. [default: whether `host` is a
    /// loopback address]
    pub loopback_candidates: bool,
    /// How long `connect` waits for the channel to open.
    pub connect_timeout: Duration,
    /// HEARTBEAT period (peerjs: 5 s).
    pub heartbeat_interval: Duration,
    /// Reconnect to the signaling server by itself when the socket drops.
    pub reconnect: bool,
    /// Upper bound of the reconnect backoff.
    pub max_reconnect_delay: Duration,
    /// Bytes in flight per channel towards a browser (or any peer that is not Ouroboros)
    /// before the send queue waits for acknowledgements ([`DEFAULT_SEND_WINDOW`]); see
    /// `webrtc_setup` for why it is small.
    pub send_window: usize,
    /// Bytes in flight per channel towards another Ouroboros peer
    /// ([`DEFAULT_NATIVE_SEND_WINDOW`]).
    pub native_send_window: usize,
    /// Run every PeerConnection driver on a pool of this many dedicated reactor threads
    /// (webrtc's `with_dedicated_reactor_pool_size`; process-wide, the first value wins);
    /// 0 = on the caller's tokio runtime.
    pub reactor_threads: usize,
    /// Incoming OFFERs being negotiated at once (each holds a PeerConnection for up to
    /// `connect_timeout`); one more is refused: its sender gets `EXPIRE` (peerjs reports
    /// `peer-unavailable`). [`DEFAULT_MAX_INBOUND_NEGOTIATIONS`].
    pub max_inbound_negotiations: usize,
    /// Incoming OFFERs from one remote peer id being negotiated at once
    /// ([`DEFAULT_MAX_INBOUND_NEGOTIATIONS_PER_PEER`]).
    pub max_inbound_negotiations_per_peer: usize,
    /// Limits of every DataConnection's decoder (largest message, chunk reassembly, values,
    /// nesting). The default is the codec's ([`codec::DecoderLimits::default`], 64 MiB); a
    /// service sets its own (the node derives them from its relay limits).
    pub decoder_limits: codec::DecoderLimits,
    /// Bytes a DataConnection queues for sending before `send` waits (and `try_send` fails):
    /// peerjs's [`SEND_HIGH_WATER`] (8 MiB) by default. A service holding many connections
    /// lowers it so that what each connection buffers beyond its own accounting stays small
    /// (the node: [`NODE_SEND_HIGH_WATER`]). At least one 64 KiB frame always fits.
    pub send_high_water: usize,
}

/// Default [`PeerConfig::max_inbound_negotiations`].
pub const DEFAULT_MAX_INBOUND_NEGOTIATIONS: usize = 256;
/// Default [`PeerConfig::max_inbound_negotiations_per_peer`].
pub const DEFAULT_MAX_INBOUND_NEGOTIATIONS_PER_PEER: usize = 32;

impl PeerConfig {
    /// Config for `host:port`, key `peerjs`, path `/`, plain `ws`, no ICE servers; loopback
    /// candidates only when `host` itself is a loopback address (a test on one machine).
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let host = host.into();
        PeerConfig {
            loopback_candidates: is_loopback_host(&host),
            host,
            port,
            path: "/".into(),
            key: "peerjs".into(),
            secure: false,
            id: None,
            token: None,
            ice_servers: Vec::new(),
            tls_root_pem: None,
            http_headers: Vec::new(),
            udp_addrs: vec!["0.0.0.0:0".into()],
            connect_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(5),
            reconnect: true,
            max_reconnect_delay: Duration::from_secs(10),
            send_window: DEFAULT_SEND_WINDOW,
            native_send_window: DEFAULT_NATIVE_SEND_WINDOW,
            reactor_threads: 0,
            max_inbound_negotiations: DEFAULT_MAX_INBOUND_NEGOTIATIONS,
            max_inbound_negotiations_per_peer: DEFAULT_MAX_INBOUND_NEGOTIATIONS_PER_PEER,
            decoder_limits: codec::DecoderLimits::default(),
            send_high_water: SEND_HIGH_WATER,
        }
    }

    /// Parses `ws[s]://host[:port]/path?key=K` (also `http[s]://`).
    ///
    /// # Errors
    /// [`PeerError::InvalidConfig`] for another scheme, no host, or an unparsable URL.
    pub fn from_url(url: &str) -> Result<Self, PeerError> {
        let u =
            url::Url::parse(url).map_err(|e| PeerError::InvalidConfig(format!("{url}: {e}")))?;
        let secure = match u.scheme() {
            "ws" | "http" => false,
            "wss" | "https" => true,
            s => {
                return Err(PeerError::InvalidConfig(format!(
                    "unsupported scheme {s:?}"
                )));
            }
        };
        let host = u
            .host_str()
            .ok_or_else(|| PeerError::InvalidConfig(format!("{url}: no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u
            .port_or_known_default()
            .unwrap_or(if secure { 443 } else { 80 });
        let mut cfg = PeerConfig::new(host, port);
        cfg.secure = secure;
        cfg.path = u.path().to_string();
        for (k, v) in u.query_pairs() {
            if k == "key" {
                cfg.key = v.into_owned();
            }
        }
        Ok(cfg)
    }

    /// The path with a leading and trailing `/`.
    pub fn normalized_path(&self) -> String {
        let mut p = self.path.trim().to_string();
        if !p.starts_with('/') {
            p.insert(0, '/');
        }
        if !p.ends_with('/') {
            p.push('/');
        }
        p
    }
}

/// Options for [`Peer::connect`], as peerjs's `peer.connect(id, options)`.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Channel label; the connection id when `None`.
    pub label: Option<String>,
    /// Serialization announced in the OFFER.
    pub serialization: Serialization,
    /// `true` makes the channel ordered (peerjs default: `false`, unordered).
    pub reliable: bool,
    /// Free-form metadata shown to the remote side.
    pub metadata: Option<serde_json::Value>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            label: None,
            serialization: Serialization::Binary,
            reliable: false,
            metadata: None,
        }
    }
}

/// Errors of the peer and its signaling.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    /// Bad configuration (URL, path, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The requested id does not match peerjs's id rule.
    #[error("invalid peer id {0:?}")]
    InvalidId(String),
    /// The id could not be fetched from `{path}{key}/id`.
    #[error("could not get an ID from the server: {0}")]
    IdFetch(String),
    /// The WebSocket to the server could not be opened or was lost.
    #[error("network: {0}")]
    Network(String),
    /// The server sent `ERROR` with this message.
    #[error("server error: {0}")]
    Server(String),
    /// The server sent `ID-TAKEN`.
    #[error("ID is taken")]
    IdTaken,
    /// The server sent `EXPIRE` for this peer: it is not connected.
    #[error("could not connect to peer {0}")]
    PeerUnavailable(String),
    /// An operation did not finish in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// ICE/DTLS/SCTP negotiation failed.
    #[error("negotiation failed: {0}")]
    NegotiationFailed(String),
    /// The remote peer left (`LEAVE`) or closed before the channel opened.
    #[error("connection closed before it opened: {0}")]
    ConnectionClosed(String),
    /// The peer was closed.
    #[error("peer closed")]
    Closed,
}

/// What happens to a [`Peer`], in order (subscribe with [`Peer::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerEvent {
    /// Registered with the server under this id.
    Open(String),
    /// The signaling socket dropped; reconnecting (connections stay up).
    Disconnected,
    /// Registered again with the same id and token; queued signaling was sent.
    Reconnected,
    /// A non-fatal or fatal error (fatal ones are followed by [`PeerEvent::Closed`]).
    Error(PeerError),
    /// The peer is closed; no more events.
    Closed,
}

/// Routing entry of one connection (by connection id).
pub(crate) struct ConnEntry {
    pub(crate) peer: String,
    pub(crate) signals: mpsc::Sender<negotiation::Signal>,
    /// Distinguishes a replaced entry (repeated OFFER) from its successor.
    pub(crate) generation: u64,
    /// Remote candidates routed to it so far (capped).
    pub(crate) candidates: usize,
}

/// State shared by the handle, the signaling task and the connection tasks.
pub(crate) struct Shared {
    pub(crate) id: String,
    pub(crate) token: String,
    pub(crate) config: PeerConfig,
    /// TLS configuration and HTTP client for the signaling server, built once.
    pub(crate) transport: signaling_client::Transport,
    /// JSON frames for the signaling socket (queued while disconnected).
    pub(crate) outbound: mpsc::Sender<String>,
    pub(crate) events: broadcast::Sender<PeerEvent>,
    pub(crate) conns: Mutex<HashMap<String, ConnEntry>>,
    pub(crate) incoming_tx: mpsc::Sender<DataConnection>,
    pub(crate) incoming_rx: tokio::sync::Mutex<mpsc::Receiver<DataConnection>>,
    /// Cancelled when the peer closes.
    pub(crate) closed: CancellationToken,
    pub(crate) runtime: Arc<BufferedUdpRuntime>,
    /// Incoming negotiations in progress (bounded by the config's caps).
    pub(crate) inbound: Mutex<negotiation::InboundCount>,
    /// The ICE servers as webrtc gets them: TCP and TLS TURN URLs replaced by the loopback
    /// bridges of [`turn_bridge`], which run until `closed`.
    pub(crate) native_ice_servers: Vec<IceServer>,
}

impl Shared {
    pub(crate) fn emit(&self, ev: PeerEvent) {
        let _ = self.events.send(ev);
    }

    /// Queues one signaling message `{type, payload, dst}`.
    pub(crate) fn signal(&self, msg: String) {
        if self.outbound.try_send(msg).is_err() {
            tracing::warn!("signaling outbound queue full or closed; message dropped");
        }
    }
}

struct PeerHandle {
    shared: Arc<Shared>,
}

impl Drop for PeerHandle {
    fn drop(&mut self) {
        self.shared.closed.cancel();
    }
}

/// A PeerJS peer registered on a signaling server. Cheap to clone; the peer closes when
/// the last clone is dropped or [`Peer::close`] is called.
#[derive(Clone)]
pub struct Peer {
    handle: Arc<PeerHandle>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("id", &self.id()).finish()
    }
}

/// Maximum pending incoming connections not yet taken by [`Peer::accept`].
const INCOMING_QUEUE: usize = 256;

impl Peer {
    /// Registers with the server (fetching an id first if none is configured) and
    /// resolves once the server answered `OPEN`.
    ///
    /// # Errors
    /// [`PeerError::InvalidId`], [`PeerError::IdFetch`], [`PeerError::Network`],
    /// [`PeerError::Server`] (`ERROR`), [`PeerError::IdTaken`], [`PeerError::Timeout`].
    pub async fn open(config: PeerConfig) -> Result<Peer, PeerError> {
        if let Some(id) = &config.id
            && !crate::ids::is_peerjs_id(id)
        {
            return Err(PeerError::InvalidId(id.clone()));
        }
        let transport = signaling_client::Transport::new(&config)?;
        let id = match &config.id {
            Some(id) => id.clone(),
            None => signaling_client::fetch_id(&config, &transport).await?,
        };
        let token = config.token.clone().unwrap_or_else(random_token);
        let ws = signaling_client::connect_and_open(&config, &transport, &id, &token).await?;

        let (outbound, outbound_rx) = mpsc::channel(signaling_client::OUTBOUND_QUEUE);
        let (events, _) = broadcast::channel(256);
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_QUEUE);
        let closed = CancellationToken::new();
        let native_ice_servers = turn_bridge::native_ice_servers(
            &config.ice_servers,
            config.tls_root_pem.as_deref(),
            &closed,
        )
        .await?;
        let shared = Arc::new(Shared {
            id: id.clone(),
            token,
            config,
            transport,
            outbound,
            events,
            conns: Mutex::new(HashMap::new()),
            incoming_tx,
            incoming_rx: tokio::sync::Mutex::new(incoming_rx),
            closed,
            runtime: Arc::new(BufferedUdpRuntime::new(UDP_SOCKET_BUFFER)),
            inbound: Mutex::new(negotiation::InboundCount::default()),
            native_ice_servers,
        });
        shared.emit(PeerEvent::Open(id));
        tokio::spawn(signaling_client::run(shared.clone(), ws, outbound_rx));
        Ok(Peer {
            handle: Arc::new(PeerHandle { shared }),
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The id registered on the server.
    pub fn id(&self) -> &str {
        &self.shared().id
    }

    /// The token registered with the id (needed to take the id over after a restart).
    pub fn token(&self) -> &str {
        &self.shared().token
    }

    /// The configuration this peer was opened with.
    pub fn config(&self) -> &PeerConfig {
        &self.shared().config
    }

    /// Opens a DataConnection to `peer_id`; resolves when the channel is open.
    ///
    /// # Errors
    /// [`PeerError::PeerUnavailable`] (server `EXPIRE`), [`PeerError::ConnectionClosed`]
    /// (`LEAVE`), [`PeerError::Timeout`] after `connect_timeout`,
    /// [`PeerError::NegotiationFailed`], [`PeerError::Closed`].
    pub async fn connect(
        &self,
        peer_id: &str,
        opts: ConnectOptions,
    ) -> Result<DataConnection, PeerError> {
        if self.shared().closed.is_cancelled() {
            return Err(PeerError::Closed);
        }
        negotiation::connect(self.shared().clone(), peer_id.to_string(), opts).await
    }

    /// The next incoming connection, once its channel is open; `None` after close.
    pub async fn accept(&self) -> Option<DataConnection> {
        let shared = self.shared();
        let mut rx = tokio::select! {
            rx = shared.incoming_rx.lock() => rx,
            _ = shared.closed.cancelled() => return None,
        };
        tokio::select! {
            c = rx.recv() => c,
            _ = shared.closed.cancelled() => None,
        }
    }

    /// Subscribes to peer events from now on.
    pub fn events(&self) -> broadcast::Receiver<PeerEvent> {
        self.shared().events.subscribe()
    }

    /// Incoming negotiations in progress now (OFFERs answered whose channel is not open
    /// yet) and how many OFFERs were refused over the caps so far.
    pub fn inbound_negotiations(&self) -> (usize, u64) {
        let n = self.shared().inbound.lock().expect("inbound lock poisoned");
        (n.total, n.refused)
    }

    /// Whether the peer was closed.
    pub fn is_closed(&self) -> bool {
        self.shared().closed.is_cancelled()
    }

    /// Closes every connection and the signaling socket.
    pub async fn close(&self) {
        let shared = self.shared();
        shared.closed.cancel();
        // Let connection tasks observe the cancellation and close their PeerConnections.
        let entries: Vec<_> = shared
            .conns
            .lock()
            .expect("conns lock poisoned")
            .drain()
            .map(|(_, e)| e)
            .collect();
        for e in entries {
            let _ = e.signals.try_send(negotiation::Signal::Close);
        }
        tokio::task::yield_now().await;
    }
}

/// Whether `host` names this machine's loopback (`localhost`, `127.x`, `::1`).
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_matches(['[', ']']);
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A random base-36 string like `Math.random().toString(36).slice(2)` (11 chars).
pub(crate) fn random_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..11)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_url() {
        let c = PeerConfig::from_url("wss://example.com/myapp?key=k1").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.secure, c.key.as_str()),
            ("example.com", 443, true, "k1")
        );
        assert_eq!(c.normalized_path(), "/myapp/");
        let c = PeerConfig::from_url("ws://127.0.0.1:9000").unwrap();
        assert_eq!((c.port, c.secure, c.key.as_str()), (9000, false, "peerjs"));
        assert_eq!(c.normalized_path(), "/");
        assert!(PeerConfig::from_url("ftp://x/").is_err());
        assert!(PeerConfig::from_url("not a url").is_err());
    }

    #[test]
    fn token_shape() {
        let t = random_token();
        assert_eq!(t.len(), 11);
        assert!(t.bytes().all(|c| c.is_ascii_alphanumeric()));
    }
}
