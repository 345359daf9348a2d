//! `ouroboros node`: the signaling server, the node's own peer, the relay, lifecycle,
//! discovery and tunnel, composed.
//!
//! # Layout
//! - this file: [`NodeArgs`], [`Node`] (start, accessors, shutdown) and [`run`].
//! - `driver`: the task owning the sans-IO [`Relay`](crate::relay::Relay) and the
//!   per-connection reader/writer tasks ([`RelayHandle`]).
//! - `registration`: the node's peer on each signaling server (its own and every
//!   `--also-register` one), re-registered with backoff.
//! - `http`: `/ouroboros.json`, `/status`, `/status.json`, `/metrics`, the web chat.
//! - [`ring`]: the node's life: joins its predecessor, serves the handoff to its successor,
//!   launches it on time, writes backups (the lifecycle and handoff cores, wired).
//! - [`status`]: the status snapshot and its HTML / Prometheus renderings.
//! - `web/`: the chat page (HTML, CSS, module script), embedded with `include_str!`.
//!
//! Size: ~850 lines, most of them [`Node::start`], which wires every part in the order they
//! depend on each other (relay, signaling, the node's peer, extra registrations, record);
//! read top to bottom it is the node's start-up sequence, so it stays in one place.

pub mod address_gate;
mod args;
mod driver;
pub mod handoff_ws;
mod http;
pub mod ice;
#[cfg(feature = "replicas")]
pub mod member_link;
mod registration;
#[cfg(feature = "replicas")]
pub mod replica;
pub mod ring;
#[cfg(feature = "replicas")]
pub mod rotation;
pub mod status;
pub mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::discovery::{
    DiscoveryRecord, LocalPublisher, Publisher, RECORD_VERSION, SignalingEndpoint,
};
use crate::lifecycle::LifecycleArgs;
use crate::peer::PeerConfig;
use crate::relay::{Relay, RelayConfig, wire::Limits};
use crate::signaling::{SignalArgs, SignalConfig, Signaling};
use crate::tunnel::TunnelArgs;

pub use args::{ReplicationArgs, default_memory_budget, parse_size, random_peer_id};
pub use driver::{QueueLimits, RelayHandle};
pub use http::{PEERJS_BUNDLE, PEERJS_INTEGRITY, PEERJS_SHA256, prefers_html};
use registration::{Registration, display_url, keep_registered};
use status::NodeStatus;

/// Where the web chat loads the PeerJS client from by default: the node's own copy of the
/// pinned bundle ([`PEERJS_BUNDLE`]), so the chat needs no internet.
pub const DEFAULT_PEERJS_URL: &str = "/peerjs.min.js";

/// The same pinned PeerJS client on a public CDN (`--peerjs-url` for it; the page then
/// checks it with subresource integrity).
pub const CDN_PEERJS_URL: &str = "https://unpkg.com/peerjs@1.5.5/dist/peerjs.min.js";

/// Flags of `ouroboros node`.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    /// Signaling server flags.
    #[command(flatten)]
    pub signal: SignalArgs,
    /// Lifetime and successor flags (also `--data-dir`).
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    /// Tunnel flags.
    #[command(flatten)]
    pub tunnel: TunnelArgs,
    /// GitHub flags (`--publisher pages`, `--launcher github`).
    #[command(flatten)]
    pub github: crate::github::GithubArgs,
    /// ICE flags (`--ice-servers`, `--loopback-candidates`).
    #[command(flatten)]
    pub ice: crate::peer::ice::IceArgs,
    /// Replicated ring flags (`--replicas`, `--replica-id`, `--replica-join`, …).
    #[command(flatten)]
    pub replication: ReplicationArgs,
    /// Publish TURN servers that have a static `username`/`credential` in the discovery
    /// record (which is public: anyone can then relay through them). Without it only STUN
    /// servers and, with `OUROBOROS_TURN_SECRET`, per-client time-limited TURN credentials
    /// from the node itself are handed out.
    #[arg(long, env = "OUROBOROS_PUBLISH_TURN_CREDENTIALS")]
    pub publish_turn_credentials: bool,
    /// The node's PeerJS peer id [default: `ouroboros-<random>`, kept in the data dir for
    /// a first-generation node so restarts keep it].
    #[arg(long, env = "OUROBOROS_PEER_ID")]
    pub peer_id: Option<String>,
    /// Bytes the relay may retain (`512MiB`, `2GB`, …): three quarters for stored messages
    /// (beyond it the largest room's oldest are evicted), a quarter (at least 8 MiB) for the
    /// clients' write queues [default: a quarter of RAM].
    #[arg(long, env = "OUROBOROS_MEMORY_BUDGET", value_parser = parse_size)]
    pub memory_budget: Option<u64>,
    /// Largest message body a client may publish, in bytes (`64KiB`).
    #[arg(long, env = "OUROBOROS_MAX_MESSAGE_SIZE", value_parser = parse_size, default_value = "65536")]
    pub max_message_size: u64,
    /// Relay requests per second one connection may make, sustained.
    #[arg(long, env = "OUROBOROS_CLIENT_RATE", default_value_t = 200.0)]
    pub client_rate: f64,
    /// Burst of relay requests one connection may make after a quiet period.
    #[arg(long, env = "OUROBOROS_CLIENT_BURST", default_value_t = 400.0)]
    pub client_burst: f64,
    /// Rooms one connection may have joined at once.
    #[arg(long, env = "OUROBOROS_MAX_ROOMS_PER_CLIENT", default_value_t = 64)]
    pub max_rooms_per_client: usize,
    /// Rooms the node holds in total.
    #[arg(long, env = "OUROBOROS_MAX_ROOMS", default_value_t = 100_000)]
    pub max_rooms: usize,
    /// Relay connections the node accepts.
    #[arg(long, env = "OUROBOROS_MAX_CLIENTS", default_value_t = 10_000)]
    pub max_clients: usize,
    /// Incoming WebRTC negotiations (OFFERs answered, channel not yet open) the node's peer
    /// runs at once, on each signaling server; more are refused with `EXPIRE`.
    #[arg(long, env = "OUROBOROS_MAX_INBOUND_NEGOTIATIONS", default_value_t = crate::peer::DEFAULT_MAX_INBOUND_NEGOTIATIONS)]
    pub max_inbound_negotiations: usize,
    /// Incoming negotiations from one remote peer id at once; more are refused with `EXPIRE`.
    #[arg(long, env = "OUROBOROS_MAX_INBOUND_NEGOTIATIONS_PER_PEER", default_value_t = crate::peer::DEFAULT_MAX_INBOUND_NEGOTIATIONS_PER_PEER)]
    pub max_inbound_negotiations_per_peer: usize,
    /// Also register the node's peer id on this PeerJS server (repeatable), e.g.
    /// `wss://0.peerjs.com/?key=peerjs`; listed in the discovery record.
    #[arg(
        long = "also-register",
        env = "OUROBOROS_ALSO_REGISTER",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub also_register: Vec<String>,
    /// Where the web chat loads the PeerJS client from: the node's own copy of peerjs 1.5.5
    /// (`/peerjs.min.js`), or a URL (the same version on a CDN is checked with subresource
    /// integrity, e.g. https://unpkg.com/peerjs@1.5.5/dist/peerjs.min.js).
    #[arg(long, env = "OUROBOROS_PEERJS_URL", default_value = DEFAULT_PEERJS_URL)]
    pub peerjs_url: String,
    /// Host name advertised for this node's signaling server in the discovery record
    /// [default: the listen address, 127.0.0.1 for a wildcard].
    #[arg(long, env = "OUROBOROS_PUBLIC_HOST")]
    pub public_host: Option<String>,
    /// Port advertised in the discovery record [default: the bound port].
    #[arg(long, env = "OUROBOROS_PUBLIC_PORT")]
    pub public_port: Option<u16>,
    /// Advertise `secure: true` (https/wss), e.g. behind a TLS-terminating proxy.
    #[arg(long, env = "OUROBOROS_PUBLIC_SECURE")]
    pub public_secure: bool,
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A flag is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The listener could not be bound, or serving failed.
    #[error("signaling server: {0}")]
    Signaling(String),
    /// The node's own peer could not register on its signaling server.
    #[error("node peer: {0}")]
    Peer(String),
    /// The data dir could not be used.
    #[error("data dir {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
}

/// Lifecycle facts shown on `/status` (set by the lifecycle code).
#[derive(Debug, Clone)]
pub struct LifecycleView {
    /// `serving`, `launching`, `handing-off`, `draining`, …
    pub state: String,
    /// When the next rotation starts (successor launch), if planned.
    pub next_rotation: Option<Instant>,
    /// When the node will be gone at the latest.
    pub expires_at: Option<SystemTime>,
}

/// State shared by the HTTP handlers and the node's tasks.
pub struct NodeShared {
    /// The discovery record this node serves at `/ouroboros.json`.
    pub record: RwLock<DiscoveryRecord>,
    /// Script URL of the PeerJS client for the web chat.
    pub peerjs_url: String,
    started: Instant,
    listen_url: String,
    registrations: Vec<Arc<Registration>>,
    relay: RelayHandle,
    signaling: Signaling,
    lifecycle: RwLock<LifecycleView>,
    tunnel: RwLock<String>,
    /// Where `ouroboros-handoff` connections to the node's peer go (`node::ring`).
    pub handoff: crate::handoff::HandoffInbox,
    /// Cancelled when the node stops (ends the relay WebSockets).
    stop: CancellationToken,
    /// The path of this node's latest handoff connection (`webrtc` or `ws`), for `/status`.
    handoff_transport: RwLock<Option<&'static str>>,
    /// Why the successor gave up on its predecessor (`unreachable`, `blocked`), for `/status`.
    handoff_gave_up: RwLock<Option<&'static str>>,
    /// Largest frame the relay WebSocket reads.
    relay_ws_max_message: usize,
    /// Per-address limits of `GET /relay` (signaling's per-address flags).
    relay_gate: Arc<address_gate::AddressGate>,
    /// Per-address limits of `GET /handoff` (signaling's per-address flags).
    handoff_gate: Arc<address_gate::AddressGate>,
    /// The ICE servers: the node's own, the published ones, fresh TURN credentials.
    pub ice: ice::NodeIce,
    /// The ring's shared secret (`OUROBOROS_SECRET`, or generated for a ring of local nodes).
    secret: crate::handoff::Secret,
    /// The ring's keys, derived from `secret`: they sign the record, `welcome` and `moved`.
    keys: Arc<crate::discovery::RingKeys>,
    /// Counts the node's moves to a fresh id on a server where its id was taken
    /// ([`NodeShared::move_endpoint`]); the ring republishes the record on each.
    endpoint_moves: tokio::sync::watch::Sender<u64>,
    /// A member's calls answered, by path.
    member_calls: Option<Arc<dyn Fn() -> status::ReplicaCalls + Send + Sync>>,
}

impl NodeShared {
    /// Records that the node's peer now has the id `id` on the signaling server `server`
    /// (its id was taken there): the endpoint in the record gains `peer_id`, the record is
    /// re-signed, and watchers of [`NodeShared::endpoint_moves`] are told.
    pub fn move_endpoint(&self, server: &SignalingEndpoint, id: &str) {
        {
            let mut record = self.record.write().expect("record lock poisoned");
            let node_id = record.peer_id.clone();
            let mut changed = false;
            for ep in record
                .signaling
                .iter_mut()
                .filter(|e| e.same_server(server))
            {
                ep.peer_id = (id != node_id).then(|| id.to_string());
                changed = true;
            }
            if !changed {
                return;
            }
            record.sign(&self.keys);
        }
        self.endpoint_moves.send_modify(|n| *n += 1);
    }

    /// Lists `replicas` (a replicated ring's live nodes) in the record and re-signs it;
    /// returns whether it changed.
    pub fn set_replicas(&self, replicas: Vec<crate::discovery::ReplicaNode>) -> bool {
        let mut record = self.record.write().expect("record lock poisoned");
        if record.replicas == replicas {
            return false;
        }
        record.replicas = replicas;
        record.sign(&self.keys);
        true
    }

    /// Changes whenever the node moved to a fresh id on one of its servers.
    pub fn endpoint_moves(&self) -> tokio::sync::watch::Receiver<u64> {
        self.endpoint_moves.subscribe()
    }

    /// The ring's shared secret.
    pub fn secret(&self) -> &crate::handoff::Secret {
        &self.secret
    }

    /// The ring's keys (derived from the secret).
    pub fn ring_keys(&self) -> &Arc<crate::discovery::RingKeys> {
        &self.keys
    }

    /// The address of the client behind a request to the node's HTTP port: the TCP peer's,
    /// or the one a trusted proxy forwarded (`--trusted-proxy`, as signaling counts it).
    pub fn client_addr(
        &self,
        remote: Option<axum::Extension<axum::extract::ConnectInfo<crate::signaling::RemoteAddr>>>,
        headers: &axum::http::HeaderMap,
    ) -> Option<std::net::IpAddr> {
        crate::signaling::client_ip(
            &self.signaling.config().trusted_proxies,
            remote.map(|r| r.0.0.0.ip()),
            headers,
        )
    }

    /// Records why the successor gave up on its predecessor (shown on `/status.json`).
    pub fn set_handoff_gave_up(&self, cause: &'static str) {
        *self
            .handoff_gave_up
            .write()
            .expect("handoff outcome lock poisoned") = Some(cause);
    }

    /// Records the path of a handoff connection (shown on `/status.json`).
    pub fn set_handoff_transport(&self, transport: &'static str) {
        *self
            .handoff_transport
            .write()
            .expect("handoff transport lock poisoned") = Some(transport);
    }

    /// `/metrics`: the node's figures and the signaling server's counters.
    pub async fn metrics(&self) -> String {
        let mut out = status::render_metrics(&self.status().await);
        self.signaling.stats().write_prometheus(&mut out);
        out
    }

    /// The status snapshot (`/status.json`).
    pub async fn status(&self) -> NodeStatus {
        let record = self.record.read().expect("record lock poisoned").clone();
        let (relay, rooms, clients) = self.relay.figures().await.unwrap_or_default();
        let gap = self.relay.with_relay(|r| r.gap().cloned()).await.flatten();
        let lc = self
            .lifecycle
            .read()
            .expect("lifecycle lock poisoned")
            .clone();
        let now = Instant::now();
        NodeStatus {
            peer_id: record.peer_id.clone(),
            generation: record.generation,
            started_at: humantime::format_rfc3339_millis(record.started_at).to_string(),
            uptime_secs: now.duration_since(self.started).as_secs(),
            expires_at: lc
                .expires_at
                .or(record.expires_at)
                .map(|t| humantime::format_rfc3339_millis(t).to_string()),
            next_rotation_secs: lc
                .next_rotation
                .map(|t| t.saturating_duration_since(now).as_secs()),
            lifecycle: lc.state,
            gap,
            handoff_transport: *self
                .handoff_transport
                .read()
                .expect("handoff transport lock poisoned"),
            handoff_gave_up: *self
                .handoff_gave_up
                .read()
                .expect("handoff outcome lock poisoned"),
            tunnel: self.tunnel.read().expect("tunnel lock poisoned").clone(),
            listen_url: self.listen_url.clone(),
            endpoints: self.registrations.iter().map(|r| r.status()).collect(),
            relay,
            rooms,
            clients,
            rss_bytes: status::current_rss(),
            signaling: signaling_figures(&self.signaling.stats()),
            replica_calls: self.member_calls.as_ref().map(|f| f()),
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// A running node.
pub struct Node {
    shared: Arc<NodeShared>,
    addr: SocketAddr,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    publisher: LocalPublisher,
    /// The node's member of a replicated ring (`--replicas N`).
    #[cfg(feature = "replicas")]
    member: Option<replica::NodeMember>,
    /// The base URL its member advertises unless told otherwise ([`Node::enter_ring`]).
    #[cfg(feature = "replicas")]
    ring_advertise: String,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .field("peer_id", &self.peer_id())
            .finish()
    }
}

/// The signaling counters shown on `/status` (all of them are in `/metrics`).
fn signaling_figures(s: &crate::signaling::Stats) -> Vec<(String, u64)> {
    vec![
        ("sockets".into(), s.sockets as u64),
        ("registered clients".into(), s.clients as u64),
        ("messages relayed".into(), s.relayed),
        ("messages queued".into(), s.queued),
        ("queued messages expired".into(), s.expired),
        (
            "frames dropped".into(),
            s.dropped + s.malformed + s.undeliverable,
        ),
    ]
}

pub use crate::discovery::RELAY_WS_PATH;

/// Largest relay WebSocket frame: the relay's [`crate::relay::max_frame_bytes`].
fn relay_ws_max_message(max_message_size: u64) -> usize {
    crate::relay::max_frame_bytes(usize::try_from(max_message_size).unwrap_or(usize::MAX / 4))
}

/// Makes glibc's allocator serve every block of 128 KiB or more with its own mapping, returned
/// to the system when freed (`mallopt(M_MMAP_THRESHOLD)`, which also stops glibc raising that
/// threshold as such blocks are freed). Without it, the node's large transient buffers
/// (decoded messages, encodings, frames) land in the heap between long-lived stored messages
/// and the freed space stays resident: 400 fanned-out 60 KB messages left ~390 MiB of RSS for
/// 24 MiB of live data (`tests/memory.rs`). Process-wide; other allocators ignore it.
fn return_large_frees_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it takes no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// What every registration of the node's peer shares (on its own server and on every
/// `--also-register` one): the node's id, reconnecting, the inbound negotiation limits, and
/// what its DataConnections decode and queue.
fn node_peer_config(
    cfg: &mut PeerConfig,
    peer_id: &str,
    args: &NodeArgs,
    decoder_limits: crate::peer::codec::DecoderLimits,
) {
    cfg.id = Some(peer_id.to_string());
    cfg.reconnect = true;
    cfg.max_inbound_negotiations = args.max_inbound_negotiations;
    cfg.max_inbound_negotiations_per_peer = args.max_inbound_negotiations_per_peer;
    // Every DataConnection to the node decodes within the relay's limits (the handoff's
    // 256 KiB raw frames fit too), not the codec's 64 MiB defaults.
    cfg.decoder_limits = decoder_limits;
    // The relay's writers stay charged to the budget until a send returns: what a
    // DataConnection queues beyond that is this much, not peerjs's 8 MiB.
    cfg.send_high_water = crate::peer::NODE_SEND_HIGH_WATER;
}

/// The endpoint an `--also-register` URL stands for.
fn endpoint_of(cfg: &PeerConfig) -> SignalingEndpoint {
    SignalingEndpoint {
        host: cfg.host.clone(),
        port: cfg.port,
        path: cfg.normalized_path(),
        key: cfg.key.clone(),
        secure: cfg.secure,
        peer_id: None,
    }
}

/// The peer id: the flag, else (first generation) the one kept in the data dir, else new.
fn choose_peer_id(args: &NodeArgs) -> Result<String, NodeError> {
    if let Some(id) = &args.peer_id {
        if !crate::ids::is_peerjs_id(id) {
            return Err(NodeError::Config(format!(
                "--peer-id {id:?} is not a valid PeerJS id (letters, digits, single '-', '_' or ' ' between them)"
            )));
        }
        return Ok(id.clone());
    }
    // A member that joins a replicated ring overlaps the member it replaces, which may share
    // its data dir (a successor on the same machine): it takes an id of its own.
    let first = args.lifecycle.generation == 0
        && !args.lifecycle.is_successor()
        && args.replication.replica_join.is_empty();
    if !first {
        return Ok(random_peer_id());
    }
    let dir = &args.lifecycle.data_dir;
    let file = dir.join("node-peer-id");
    if let Ok(s) = std::fs::read_to_string(&file) {
        let s = s.trim();
        if crate::ids::is_peerjs_id(s) {
            return Ok(s.to_string());
        }
    }
    let id = random_peer_id();
    std::fs::create_dir_all(dir).map_err(|e| NodeError::DataDir(dir.clone(), e))?;
    std::fs::write(&file, &id).map_err(|e| NodeError::DataDir(dir.clone(), e))?;
    Ok(id)
}

impl Node {
    /// Starts the node: binds the signaling server, starts the relay, registers the node's
    /// peer on its own server (and the `--also-register` ones), writes the discovery
    /// record. Prints `listening on http://ADDR/PATH` and `node peer-id ID` to stdout.
    ///
    /// # Errors
    /// [`NodeError`] if a flag is invalid, the port cannot be bound, or the node's peer
    /// cannot register on its own server.
    pub async fn start(args: NodeArgs) -> Result<Node, NodeError> {
        // The ring's secret (a generated one is inherited by local successors).
        let secret = crate::handoff::Secret::from_env_or_generate()
            .map_err(|e| NodeError::Config(e.to_string()))?;
        Node::start_in_ring(args, secret).await
    }

    /// [`Node::start`] for a node of the ring whose shared secret is `secret` (the binary
    /// reads it from `OUROBOROS_SECRET`; tests run two nodes of one ring in one process).
    ///
    /// # Errors
    /// As [`Node::start`].
    pub async fn start_in_ring(
        args: NodeArgs,
        secret: crate::handoff::Secret,
    ) -> Result<Node, NodeError> {
        return_large_frees_to_the_system();
        let peer_id = choose_peer_id(&args)?;
        // The keys every node of the ring derives from its secret.
        let keys = Arc::new(crate::discovery::RingKeys::from_secret(secret.expose()));
        let turn_secret = ice::NodeIce::secret_from_env();
        let ice_servers = args
            .ice
            .checked(turn_secret.is_some())
            .map_err(|e| NodeError::Config(e.to_string()))?;
        tracing::info!(ice_servers = %crate::peer::ice::describe(&ice_servers), turn_rest_credentials = turn_secret.is_some(), "ICE servers");
        let node_ice = ice::NodeIce::new(
            ice_servers,
            turn_secret,
            args.publish_turn_credentials,
            args.ice.loopback_candidates,
        );
        let generation = args.lifecycle.generation;
        let memory_budget = args.memory_budget.unwrap_or_else(default_memory_budget);
        let extra: Vec<PeerConfig> = args
            .also_register
            .iter()
            .map(|u| {
                PeerConfig::from_url(u)
                    .map_err(|e| NodeError::Config(format!("--also-register {u}: {e}")))
            })
            .collect::<Result<_, _>>()?;

        // The relay.
        let mut rc = RelayConfig::new(peer_id.clone(), generation);
        // One budget for everything the relay retains: a quarter (at least 8 MiB) for the
        // write queues, the rest for stored messages.
        let budget = usize::try_from(memory_budget).unwrap_or(usize::MAX);
        rc.memory_budget = budget - budget / 4;
        let queues = driver::QueueLimits::for_budget(budget);
        rc.keys = Some(keys.clone());
        rc.limits = Limits {
            max_message_bytes: usize::try_from(args.max_message_size).unwrap_or(usize::MAX),
            rate_per_sec: args.client_rate,
            rate_burst: args.client_burst,
            max_rooms_per_client: args.max_rooms_per_client,
            max_rooms: args.max_rooms,
            max_clients: args.max_clients,
            ..Limits::default()
        };
        let decoder_limits = crate::relay::decoder_limits(&rc.limits);
        rc.replicated = args.replication.enabled();
        #[cfg(not(feature = "replicas"))]
        if rc.replicated {
            return Err(NodeError::Config(
                "--replicas/--replica-join: this binary was built without the `replicas` feature"
                    .into(),
            ));
        }

        // The signaling server, with the node's routes beside it.
        let stop = CancellationToken::new();
        let mut sconfig =
            SignalConfig::from_args(&args.signal).map_err(|e| NodeError::Config(e.to_string()))?;
        if args.tunnel.kind == crate::tunnel::TunnelKind::Ngrok {
            // ngrok's in-process agent connects from loopback and names the real client in
            // `X-Forwarded-For`: per-address limits then apply to the real clients.
            sconfig
                .trusted_proxies
                .extend(crate::signaling::Cidr::LOOPBACK);
        }
        let path = sconfig.path.clone();
        let signaling = Signaling::new(sconfig.clone());
        let listener = crate::signaling::bind(&sconfig)
            .await
            .map_err(|e| NodeError::Signaling(e.to_string()))?;
        let addr = listener.local_addr();
        // The member of a replicated ring, and the relay that proposes its publishes to it.
        #[cfg(feature = "replicas")]
        let member = if rc.replicated {
            Some(
                replica::NodeMember::start(&args.replication, &secret, addr.ip())
                    .await
                    .map_err(|e| NodeError::Config(format!("replicated ring: {e:#}")))?,
            )
        } else {
            None
        };
        #[cfg(feature = "replicas")]
        let proposer = member.as_ref().map(replica::NodeMember::proposer);
        #[cfg(not(feature = "replicas"))]
        let proposer = None;
        let relay = RelayHandle::spawn_replicated(Relay::new(rc, Instant::now()), queues, proposer);
        #[cfg(feature = "replicas")]
        if let Some(m) = &member {
            m.feed(relay.clone());
        }
        let own_host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            addr.ip().to_string()
        };
        let own_endpoint = SignalingEndpoint {
            host: args.public_host.clone().unwrap_or_else(|| own_host.clone()),
            port: args.public_port.unwrap_or(addr.port()),
            path: path.clone(),
            key: sconfig.key.clone(),
            secure: args.public_secure,
            peer_id: None,
        };
        let mut own_cfg = PeerConfig::new(own_host.clone(), addr.port());
        own_cfg.path = path.clone();
        own_cfg.key = sconfig.key.clone();
        own_cfg.secure = listener.is_tls();
        #[cfg(feature = "replicas")]
        let listener_tls = listener.is_tls();
        node_peer_config(&mut own_cfg, &peer_id, &args, decoder_limits);
        // The node's id is reserved on its own server for this token: nobody can take it or
        // displace the node, and the node's connection is exempt from the client limits.
        let own_token = args::random_token();
        signaling.reserve(&peer_id, &own_token);
        own_cfg.token = Some(own_token);
        // The node's peer reaches its own server over loopback, but its WebRTC candidates are
        // for its clients: loopback ones only when the server itself listens on loopback.
        own_cfg.loopback_candidates = addr.ip().is_loopback();
        node_ice.apply(&mut own_cfg, SystemTime::now());
        let mut registrations = vec![Registration::new(display_url(&own_cfg), "own")];
        let mut endpoints = vec![own_endpoint];
        for cfg in &extra {
            registrations.push(Registration::new(display_url(cfg), "extra"));
            endpoints.push(endpoint_of(cfg));
        }
        let relay_ws = endpoints[0].relay_ws_url();
        let mut record = DiscoveryRecord {
            ring_key: None,
            sig: None,
            version: RECORD_VERSION,
            peer_id: peer_id.clone(),
            generation,
            signaling: endpoints,
            ice_servers: Some(node_ice.public()),
            tunnel_url: None,
            relay_ws: Some(relay_ws),
            started_at: SystemTime::now(),
            expires_at: args.lifecycle.lifetime.map(|l| SystemTime::now() + l),
            previous: args.lifecycle.predecessor_peer_id.clone().map(|p| {
                crate::discovery::PreviousNode {
                    peer_id: p,
                    signaling: args
                        .lifecycle
                        .predecessor_endpoints
                        .clone()
                        .map(|e| e.0)
                        .unwrap_or_default(),
                }
            }),
            ended: None,
            replicas: Vec::new(),
        };
        record.sign(&keys);
        let listen_url = listener.url(&path);
        let shared = Arc::new(NodeShared {
            record: RwLock::new(record),
            peerjs_url: args.peerjs_url.clone(),
            started: Instant::now(),
            listen_url: listen_url.clone(),
            registrations: registrations.clone(),
            relay: relay.clone(),
            signaling: signaling.clone(),
            lifecycle: RwLock::new(LifecycleView {
                state: "serving".into(),
                next_rotation: None,
                expires_at: None,
            }),
            tunnel: RwLock::new("none".into()),
            handoff: crate::handoff::HandoffInbox::default(),
            stop: stop.clone(),
            handoff_transport: RwLock::new(None),
            handoff_gave_up: RwLock::new(None),
            relay_ws_max_message: relay_ws_max_message(args.max_message_size),
            relay_gate: address_gate::AddressGate::new("relay", sconfig.per_address),
            handoff_gate: address_gate::AddressGate::new("handoff", sconfig.per_address),
            ice: node_ice.clone(),
            secret,
            keys,
            endpoint_moves: tokio::sync::watch::Sender::new(0),
            #[cfg(feature = "replicas")]
            member_calls: member.as_ref().map(|m| {
                let m = m.clone();
                Arc::new(move || {
                    let c = m.calls_answered();
                    status::ReplicaCalls {
                        webrtc: c.webrtc,
                        websocket: c.websocket,
                        http: c.http,
                    }
                }) as Arc<dyn Fn() -> status::ReplicaCalls + Send + Sync>
            }),
            #[cfg(not(feature = "replicas"))]
            member_calls: None,
        });
        let root = signaling.with_cors(
            axum::Router::new()
                .route(&path, axum::routing::get(http::root))
                .with_state(shared.clone()),
        );
        let app = signaling
            .router_without_info()
            .merge(root)
            .merge(http::routes(shared.clone()));
        #[cfg(feature = "replicas")]
        let app = match &member {
            Some(m) => app.merge(m.routes()),
            None => app,
        };
        let server = {
            let stop = stop.clone();
            let signaling = signaling.clone();
            tokio::spawn(async move {
                let shutdown = async move { stop.cancelled().await };
                if let Err(e) = signaling.serve(listener, app, shutdown).await {
                    tracing::error!(error = %e, "signaling server failed");
                }
            })
        };
        print_line(&format!("listening on {listen_url}"));

        // The node's own peer, on its own server (loopback WebSocket).
        let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
        // Who takes an incoming DataConnection, by its label.
        let incoming = Incoming {
            relay: relay.clone(),
            handoff: shared.handoff.clone(),
            #[cfg(feature = "replicas")]
            links: member.as_ref().map_or_else(
                || member_link::LinkServer::new(None),
                replica::NodeMember::link_server,
            ),
        };
        {
            let incoming = incoming.clone();
            tokio::spawn(keep_registered(
                own_cfg,
                registrations[0].clone(),
                move |c| incoming.route(c),
                Some(opened_tx),
                None, // the id is reserved on the node's own server
                stop.clone(),
            ));
        }
        match tokio::time::timeout(Duration::from_secs(30), opened_rx).await {
            Ok(Ok(Ok(_peer))) => {}
            Ok(Ok(Err(e))) => {
                stop.cancel();
                return Err(NodeError::Peer(e));
            }
            _ => {
                stop.cancel();
                return Err(NodeError::Peer("registration timed out".into()));
            }
        }
        print_line(&format!("node peer-id {peer_id}"));

        for (cfg, reg) in extra.into_iter().zip(registrations.iter().skip(1)) {
            let mut cfg = cfg;
            node_peer_config(&mut cfg, &peer_id, &args, decoder_limits);
            node_ice.apply(&mut cfg, SystemTime::now());
            // A successor (or another member of the ring) may reach this node through any of
            // its registrations (on GitHub Actions: the PeerJS cloud), so handoff and member
            // connections are routed here too.
            let incoming = incoming.clone();
            // Anyone may hold the node's id on a server the node does not run (the PeerJS
            // cloud): there the node moves to a fresh id and republishes its record.
            let server = endpoint_of(&cfg);
            let moves = shared.clone();
            let on_moved: registration::OnMoved =
                Box::new(move |id| moves.move_endpoint(&server, id));
            tokio::spawn(keep_registered(
                cfg,
                reg.clone(),
                move |c| incoming.route(c),
                None,
                Some(on_moved),
                stop.clone(),
            ));
        }

        // The member's calls to the others travel over WebRTC DataConnections where it can.
        #[cfg(feature = "replicas")]
        if let Some(m) = &member {
            let policy = args.replication.replica_transport;
            if policy != crate::replica::LinkPolicy::Http {
                let ice = node_ice.clone();
                let loopback = addr.ip().is_loopback();
                let configure: member_link::Configure = Arc::new(move |cfg: &mut PeerConfig| {
                    cfg.loopback_candidates = loopback;
                    ice.apply(cfg, SystemTime::now());
                });
                let link = member_link::RtcMemberLink::new(m.id(), configure, stop.clone());
                m.set_link(Arc::new(link), policy);
            }
        }

        // The base URL the other members reach this node at.
        #[cfg(feature = "replicas")]
        let ring_advertise = args
            .replication
            .replica_advertise
            .clone()
            .unwrap_or_else(|| {
                let scheme = if listener_tls { "https" } else { "http" };
                let host = args.public_host.clone().unwrap_or_else(|| own_host.clone());
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host
                };
                let port = args.public_port.unwrap_or(addr.port());
                format!("{scheme}://{host}:{port}")
            });

        let publisher = LocalPublisher::new(args.lifecycle.data_dir.clone());
        let node = Node {
            shared,
            addr,
            stop,
            server,
            publisher,
            #[cfg(feature = "replicas")]
            member,
            #[cfg(feature = "replicas")]
            ring_advertise,
        };
        // A member reached through a tunnel enters the ring once the tunnel's URL is known
        // (`run`); any other enters now.
        #[cfg(feature = "replicas")]
        if !defers_ring_entry(&args) {
            node.enter_ring(&args, None).await?;
        }
        if !args.lifecycle.is_successor() {
            node.publish().await;
        }
        Ok(node)
    }

    /// Starts a new replicated ring or joins the running one (`--replica-join`), advertising
    /// `advertise` (default: the node's own address or `--replica-advertise`), and from then on
    /// keeps the record's `replicas` current. Nothing for a node without `--replicas`.
    ///
    /// # Errors
    /// [`NodeError::Config`] when the ring cannot be started or joined (the node stops).
    #[cfg(feature = "replicas")]
    pub async fn enter_ring(
        &self,
        args: &NodeArgs,
        advertise: Option<String>,
    ) -> Result<(), NodeError> {
        let Some(m) = &self.member else {
            return Ok(());
        };
        let advertise = advertise.unwrap_or_else(|| self.ring_advertise.clone());
        let id = args.replication.replica_id;
        print_line(&format!("replica member {id} listening on {advertise}"));
        let rtc = if args.replication.replica_transport == crate::replica::LinkPolicy::Http {
            Vec::new()
        } else {
            rtc_routes(&self.record())
        };
        let what = match m.enter(&args.replication, &advertise, rtc).await {
            Ok(what) => what,
            Err(e) => {
                self.stop.cancel();
                return Err(NodeError::Config(format!("replicated ring: {e:#}")));
            }
        };
        print_line(&format!("replica member {id} {what}"));
        // The record lists the ring's live nodes from now on (at once, then on every change).
        if self.shared.set_replicas(m.nodes()) {
            self.publish().await;
        }
        let (shared, publisher) = (self.shared.clone(), self.publisher.clone());
        m.on_members_change(move |nodes| {
            if shared.set_replicas(nodes) {
                let record = shared.record.read().expect("record lock").clone();
                let publisher = publisher.clone();
                tokio::spawn(async move {
                    if let Err(e) = publisher.publish(&record).await {
                        tracing::warn!(error = %e, "discovery record not written");
                    }
                });
            }
        });
        Ok(())
    }

    /// Writes the current discovery record into the data dir (guarded: a newer generation's
    /// record is never overwritten; a refusal is logged).
    pub async fn publish(&self) {
        let record = self.record();
        match self.publisher.publish(&record).await {
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "discovery record not written"),
        }
    }

    /// The bound HTTP/WebSocket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's peer id.
    pub fn peer_id(&self) -> String {
        self.record().peer_id
    }

    /// The discovery record the node serves.
    pub fn record(&self) -> DiscoveryRecord {
        self.shared
            .record
            .read()
            .expect("record lock poisoned")
            .clone()
    }

    /// Replaces the served discovery record (lifecycle, tunnel), signed with the ring key.
    pub fn set_record(&self, record: DiscoveryRecord) {
        let mut record = record;
        record.sign(&self.shared.keys);
        *self.shared.record.write().expect("record lock poisoned") = record;
    }

    /// The node's member of a replicated ring, if it runs with `--replicas N`.
    #[cfg(feature = "replicas")]
    pub fn replica_member(&self) -> Option<&replica::NodeMember> {
        self.member.as_ref()
    }

    /// The relay task handle.
    pub fn relay(&self) -> &RelayHandle {
        &self.shared.relay
    }

    /// Shared state (for lifecycle code that updates the status page).
    pub fn shared(&self) -> &Arc<NodeShared> {
        &self.shared
    }

    /// Sets the lifecycle facts shown on `/status`.
    pub fn set_lifecycle(&self, view: LifecycleView) {
        *self
            .shared
            .lifecycle
            .write()
            .expect("lifecycle lock poisoned") = view;
    }

    /// Sets the tunnel status shown on `/status`.
    pub fn set_tunnel_status(&self, status: impl Into<String>) {
        *self.shared.tunnel.write().expect("tunnel lock poisoned") = status.into();
    }

    /// The status snapshot.
    pub async fn status(&self) -> NodeStatus {
        self.shared.status().await
    }

    /// Stops serving: closes the registrations and the HTTP server.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.server).await;
    }
}

fn print_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Hands an incoming DataConnection to the handoff, the member links or the relay, by its
/// label.
#[derive(Clone)]
struct Incoming {
    relay: RelayHandle,
    handoff: crate::handoff::HandoffInbox,
    #[cfg(feature = "replicas")]
    links: member_link::LinkServer,
}

impl Incoming {
    fn route(&self, c: crate::peer::DataConnection) {
        if c.label() == crate::handoff::HANDOFF_LABEL {
            return self
                .handoff
                .route(crate::handoff::HandoffConn::DataChannel(c));
        }
        #[cfg(feature = "replicas")]
        if c.label() == crate::replica::LINK_LABEL {
            return self.links.accept(c);
        }
        self.relay.serve(c)
    }
}

/// The WebRTC routes to this node's member: its peer id on each signaling server of its record
/// (with a tunnel, not the loopback ones: another runner's loopback is not this node).
#[cfg(feature = "replicas")]
fn rtc_routes(record: &DiscoveryRecord) -> Vec<crate::replica::RtcRoute> {
    record
        .signaling
        .iter()
        .filter(|ep| record.tunnel_url.is_none() || !crate::peer::is_loopback_host(&ep.host))
        .map(|ep| crate::replica::RtcRoute {
            peer: ep.peer_id_or(&record.peer_id).to_owned(),
            server: ep.server_url(),
        })
        .collect()
}

/// Runs the node until `shutdown` resolves.
pub async fn run(
    args: NodeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Refuse bad lifecycle settings (e.g. a lifetime too short for the launcher) before
    // anything starts.
    args.lifecycle.plan()?;
    let started = tokio::time::Instant::now();
    #[cfg(feature = "replicas")]
    let local_ring = args.replication.enabled()
        && args.replication.replica_join.is_empty()
        && args.lifecycle.lifetime.is_none()
        && args.lifecycle.launcher == crate::lifecycle::LauncherKind::Local;
    if args.replication.enabled() {
        use crate::lifecycle::LauncherKind;
        match (args.lifecycle.lifetime, args.lifecycle.launcher) {
            (Some(_), LauncherKind::None) => anyhow::bail!(
                "--replicas with --lifetime needs --launcher local or github: a member of a \
                 replicated ring starts its successor as a new member before its lifetime ends"
            ),
            (None, LauncherKind::Github) => anyhow::bail!(
                "--replicas with --launcher github needs --lifetime (the job's time limit ends \
                 each member; it starts its successor a handoff lead before)"
            ),
            _ => {}
        }
        if args.replication.replicas > 1
            && args.lifecycle.launcher == LauncherKind::Github
            && args.tunnel.ngrok_domain.is_some()
            && args.replication.replica_advertise.is_none()
        {
            anyhow::bail!(
                "--replicas above 1 with NGROK_DOMAIN: every member would be served at the same \
                 pooled URL; unset it (each member gets its own tunnel URL) or give each member \
                 --replica-advertise"
            );
        }
    }
    // Test-only fault injection (`OUROBOROS_FAULTS`): a launched node starting late.
    if let Some(d) = crate::lifecycle::start_delay() {
        tracing::warn!(delay = ?d, "fault injection: starting late");
        tokio::time::sleep(d).await;
    }
    let tunnel = args.tunnel.build();
    let publishes = !args.lifecycle.is_successor();
    let ring_args = args.clone();
    // `--launcher github` / `--publisher pages`: fail before serving if GitHub is not configured.
    let cloud = args.github.cloud_parts(args.lifecycle.launcher)?;
    let node = Node::start(args).await?;
    let tunnel = attach_tunnel(&node, tunnel.as_ref(), publishes).await;
    // A first node publishes through `--publisher` too (successors publish after the handoff;
    // a member of a replicated ring once it is in the ring, below).
    if let (true, false, Some(p)) = (publishes, ring_args.replication.enabled(), &cloud.publisher)
        && let Err(e) = p.publish(&node.record()).await
    {
        tracing::warn!(publisher = p.name(), error = %e, "discovery record not published");
    }
    // A member of a replicated ring serves until it is stopped or, with --lifetime, until its
    // successor is a voter; then it leaves the ring (hands leadership over, has itself
    // removed). Its rooms live in the ring, not in backups.
    #[cfg(feature = "replicas")]
    if let Some(m) = node.member.clone() {
        if defers_ring_entry(&ring_args) {
            // Advertise the tunnel's URL: the other members are not on this machine.
            let url = node.record().tunnel_url;
            if url.is_none() {
                tracing::warn!("replica: no tunnel URL; advertising the node's own address");
            }
            node.enter_ring(&ring_args, url.map(|u| u.trim_end_matches('/').to_owned()))
                .await?;
        }
        // Every member that enters the ring publishes the record (listing the ring's nodes)
        // through `--publisher`: at each rotation the newcomer refreshes it.
        if let Some(p) = &cloud.publisher
            && let Err(e) = p.publish(&node.record()).await
        {
            tracing::warn!(publisher = p.name(), error = %e, "discovery record not published");
        }
        let plan = ring_args.lifecycle.plan()?;
        let n = ring_args.replication.replicas;
        let schedule = rotation::MemberSchedule::new(m.id(), n, &plan);
        let Some(schedule) = schedule else {
            // `--launcher local` on the ring's first node: the other members, on this machine.
            let members = if local_ring {
                let first = m.advertised();
                let started = replica::LocalMembers::spawn(
                    n,
                    &first,
                    &ring_args.lifecycle.data_dir,
                    node.shared().secret(),
                )?;
                announce_ring(&m, n, Duration::from_secs(120)).await;
                Some(started)
            } else {
                None
            };
            shutdown.await;
            if let Some(members) = members {
                tracing::info!("stopping: the local members first");
                members.stop(Duration::from_secs(30)).await;
            }
            tracing::info!("stopping: leaving the replicated ring");
            m.leave(Duration::from_secs(20)).await;
            if let Some(t) = tunnel {
                t.close().await;
            }
            node.shutdown().await;
            return Ok(());
        };
        let launcher: Arc<dyn crate::lifecycle::Launcher> = match cloud.launcher {
            Some(l) => l,
            None => Arc::new(crate::lifecycle::LocalLauncher::from_current_process(
                ring_args.lifecycle.data_dir.clone(),
                node.shared().secret().clone(),
            )?),
        };
        ring::write_pid(&ring_args.lifecycle.data_dir);
        let stop = tokio_util::sync::CancellationToken::new();
        // The ring's first node starts the other founding members (staggered lifetimes).
        if ring_args.replication.replica_join.is_empty() && n > 1 {
            let first = m.contacts();
            for id in 2..=n as u64 {
                let request = crate::lifecycle::SuccessorRequest {
                    generation: 0,
                    predecessor_peer_id: node.peer_id(),
                    predecessor_endpoints: Vec::new(),
                    attempt: 1,
                    member: Some(crate::lifecycle::MemberLaunch {
                        id,
                        join: first.clone(),
                        founding: true,
                    }),
                };
                if let Err(e) = launcher.launch(&request).await {
                    tracing::error!(member = id, error = %e, "replica: founding member not launched");
                }
            }
            let (m, within) = (m.clone(), schedule.launch_after);
            tokio::spawn(async move { announce_ring(&m, n, within).await });
        }
        let replacing = {
            let (m, launcher, peer, stop) =
                (m.clone(), launcher.clone(), node.peer_id(), stop.clone());
            let policy = rotation::Replacement {
                dead_after: ring_args.replication.replica_dead_after,
                probe_every: (ring_args.replication.replica_heartbeat * 4)
                    .max(Duration::from_millis(500)),
                join_within: schedule.wait_for_attempt(3),
                surplus_after: schedule.successor_timeout,
            };
            tokio::spawn(async move {
                rotation::replace_dead_members(&m, n, policy, launcher, &peer, stop.cancelled())
                    .await
            })
        };
        let end = rotation::run(&m, schedule, launcher, &node.peer_id(), started, shutdown).await;
        stop.cancel();
        // Whatever the leader's watch was doing (a probe, a removal) is moot now.
        replacing.abort();
        let id = m.id();
        match end {
            rotation::RotationEnd::HandedOver(s) => print_line(&format!(
                "replica member {id} handed over to member {s}; leaving"
            )),
            other => print_line(&format!("replica member {id} leaving ({other:?})")),
        }
        if end == rotation::RotationEnd::Removed {
            m.shut_down().await;
        } else {
            m.leave(Duration::from_secs(20)).await;
        }
        ring::remove_pid(&ring_args.lifecycle.data_dir);
        if let Some(t) = tunnel {
            t.close().await;
        }
        node.shutdown().await;
        return Ok(());
    }
    // Lifetime, successor, handoff and crash safety (returns when the node should stop).
    let reason = ring::run(
        &node,
        &ring_args,
        ring::RingOptions {
            launcher: cloud.launcher,
            publisher: cloud.publisher,
            verifier: cloud.verifier,
            ..Default::default()
        },
        shutdown,
    )
    .await?;
    tracing::info!(?reason, "shutting down");
    if let Some(t) = tunnel {
        t.close().await;
    }
    node.shutdown().await;
    Ok(())
}

/// Whether a member of a replicated ring waits for its tunnel's URL before it enters the ring
/// (a tunnel is configured and no `--replica-advertise` given).
#[cfg(feature = "replicas")]
fn defers_ring_entry(args: &NodeArgs) -> bool {
    args.replication.enabled()
        && args.tunnel.kind != crate::tunnel::TunnelKind::None
        && args.replication.replica_advertise.is_none()
}

/// Prints `replicated ring of N members up: 1=URL 2=URL …` once the ring has `n` voters
/// (an error is logged when not within `within`).
#[cfg(feature = "replicas")]
async fn announce_ring(m: &replica::NodeMember, n: usize, within: Duration) {
    match m.wait_for_voters(n, within).await {
        Ok(voters) => print_line(&format!(
            "replicated ring of {n} members up: {}",
            voters
                .iter()
                .map(|(id, url)| format!("{id}={url}"))
                .collect::<Vec<_>>()
                .join(" ")
        )),
        Err(e) => tracing::error!(error = %e, "replica: the founding members did not all join"),
    }
}

/// Opens the tunnel in front of the node's HTTP server. Never fails: a tunnel that does not
/// come up is logged and shown on `/status`, and the node keeps serving without it. When up,
/// the record gains `tunnel_url` and the tunnel's signaling endpoint (right after the node's
/// own), and is republished if this node publishes (a successor publishes after its handoff).
pub async fn attach_tunnel(
    node: &Node,
    tunnel: &dyn crate::tunnel::Tunnel,
    publish: bool,
) -> Option<crate::tunnel::TunnelHandle> {
    let (status, handle) = crate::tunnel::establish(tunnel, node.local_addr()).await;
    node.set_tunnel_status(status.to_string());
    if let Some(url) = status.url() {
        let mut record = node.record();
        record.tunnel_url = Some(url.to_string());
        let own = record.signaling.first().cloned();
        if let Some(ep) = own.and_then(|o| status.signaling_endpoint(&o.path, &o.key)) {
            // The tunnel carries the relay WebSocket too: that URL works from anywhere.
            record.relay_ws = Some(ep.relay_ws_url());
            record.signaling.insert(1.min(record.signaling.len()), ep);
        }
        node.set_record(record);
        if publish {
            node.publish().await;
        }
    }
    handle
}
