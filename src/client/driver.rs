//! The client's driver task: owns the connection to the node, matches answers to
//! requests, and follows the node across rotations and reconnects.
//!
//! Size: the one task that owns the connection (~990 lines: both transports, requests,
//! reconnect and rotation following) stays in one file, because its state is shared by every
//! branch of its `select!` loop.

use std::collections::{BTreeMap, HashMap, VecDeque};

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::{mpsc, oneshot, watch};

use super::trust::TrustError;
use super::{
    Ack, ClientConfig, ClientError, Command, Event, HistoryPage, Message, Target, Transport,
};
use crate::discovery::SignalingEndpoint;
use crate::peer::{
    ConnectOptions, ConnectionError, ConnectionReceiver, ConnectionSender, Peer, PeerConfig,
    PeerError, Value,
};
use crate::relay::wire::{ClientMessage, MsgRecord, PROTOCOL, ServerMessage};
use crate::retry::Backoff;
use crate::tls::WebSocketConnectError;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type WsStream = crate::tls::ClientWebSocket;

/// Where the client's connection stands.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectionState {
    /// Opening the first connection or reconnecting.
    Connecting,
    /// Connected to the node (greeted or not yet).
    Live {
        /// The node's peer id.
        node: String,
        /// Its generation (from the record, then from `welcome`).
        generation: u64,
        /// The path in use: [`Transport::Webrtc`] or [`Transport::Ws`].
        transport: Transport,
    },
    /// Following a `moved` notice to this generation.
    Moving {
        /// The successor's generation.
        generation: u64,
    },
    /// Not connected; retrying after the given delay.
    Offline {
        /// Why the last attempt failed.
        reason: String,
        /// When the next attempt starts.
        retry_in: Duration,
    },
    /// Closed by the user or given up.
    Closed,
}

/// Error codes after which a publish stays pending and is re-sent to the successor.
const RETRYABLE: &[&str] = &["read_only", "unavailable"];
/// A publish refused as `read_only` is re-sent after this long on the same connection too: a
/// node that had just published its record may not yet accept writes, and one that is
/// handing over sends `moved` first (the re-send is then answered from the successor).
const READ_ONLY_RETRY: Duration = Duration::from_secs(1);
/// Ceiling of the first reconnect delay (doubling up to `ClientConfig::max_backoff`).
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);

struct RoomState {
    /// Highest sequence number seen (or the `since`/head the room was joined at).
    last_seq: Option<u64>,
    /// The seq the current `since` replay page stops at (`joined.replay_to`): once it is
    /// delivered, the next page is asked for with `join` since it.
    replay_to: Option<u64>,
}

struct PendingPublish {
    room: String,
    body: Json,
    order: u64,
    replies: Vec<oneshot::Sender<Result<Ack, ClientError>>>,
}

type PendingPing = (
    oneshot::Sender<Result<Duration, ClientError>>,
    Instant,
    Instant,
);

type Reply<T> = (oneshot::Sender<Result<T, ClientError>>, Instant);

/// The connection to the node, on either path.
enum Link {
    /// A DataConnection through the node's signaling server.
    Rtc {
        peer: Peer,
        sender: ConnectionSender,
        receiver: ConnectionReceiver,
    },
    /// The node's relay WebSocket: one JSON text frame per message.
    Ws(Box<WsStream>),
}

/// Why a link to the node could not be opened.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    /// The target lists no signaling endpoint.
    #[error("no signaling endpoint")]
    NoSignalingEndpoint,
    /// The target lists no relay WebSocket URL.
    #[error("no relay WebSocket URL")]
    NoRelayWs,
    /// The WebRTC path opened no DataChannel within this (every endpoint together).
    #[error("no DataChannel opened within {0:?}")]
    NoDataChannel(Duration),
    /// A signaling endpoint (`host:port`) or relay WebSocket URL did not answer in time.
    #[error("{0}: timed out")]
    TimedOut(String),
    /// The peer or its DataConnection could not be opened on a signaling endpoint
    /// (`host:port`).
    #[error("{at}: {error}")]
    Peer {
        /// The endpoint.
        at: String,
        /// Why.
        error: PeerError,
    },
    /// A relay WebSocket URL is not one.
    #[error("{url}: {error}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        error: url::ParseError,
    },
    /// No WebSocket request can be made for a relay WebSocket URL.
    #[error("{url}: {error}")]
    Request {
        /// The URL.
        url: String,
        /// Why.
        error: tokio_tungstenite::tungstenite::Error,
    },
    /// The relay WebSocket at a URL could not be opened.
    #[error("{url}: {error}")]
    WebSocket {
        /// The URL.
        url: String,
        /// Why.
        error: WebSocketConnectError,
    },
    /// Every relay WebSocket URL failed: why, in the order tried.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    AllRelayWs(Vec<LinkError>),
}

/// Why a message from the node could not be read.
#[derive(Debug, thiserror::Error)]
enum RecvError {
    /// The DataConnection could not decode it.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// A WebSocket frame is not JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// Why a send failed.
enum SendError {
    /// The connection cannot carry this message (it stays up).
    Unsendable(String),
    /// The connection is gone.
    Gone(String),
}

impl Link {
    fn transport(&self) -> Transport {
        match self {
            Link::Rtc { .. } => Transport::Webrtc,
            Link::Ws(_) => Transport::Ws,
        }
    }

    async fn send(&mut self, msg: &Json) -> Result<(), SendError> {
        match self {
            Link::Rtc { sender, .. } => match sender.send(&Value::from_json(msg.clone())).await {
                Ok(()) => Ok(()),
                Err(crate::peer::ConnectionError::Codec(e)) => Err(SendError::Unsendable(e)),
                Err(e) => Err(SendError::Gone(e.to_string())),
            },
            Link::Ws(ws) => ws
                .send(WsMessage::text(msg.to_string()))
                .await
                .map_err(|e| SendError::Gone(e.to_string())),
        }
    }

    /// The next message from the node; `None` once the connection is closed.
    async fn recv(&mut self) -> Option<Result<Json, RecvError>> {
        match self {
            Link::Rtc { receiver, .. } => Some(
                receiver
                    .recv()
                    .await?
                    .map(|v| v.to_json())
                    .map_err(RecvError::from),
            ),
            Link::Ws(ws) => loop {
                match ws.next().await? {
                    Ok(WsMessage::Text(t)) => {
                        return Some(serde_json::from_str(t.as_str()).map_err(RecvError::from));
                    }
                    Ok(WsMessage::Binary(b)) => {
                        return Some(serde_json::from_slice(&b).map_err(RecvError::from));
                    }
                    Ok(WsMessage::Close(_)) | Err(_) => return None,
                    Ok(_) => {} // ping/pong
                }
            },
        }
    }

    async fn close(self) {
        match self {
            Link::Rtc { peer, .. } => peer.close().await,
            Link::Ws(mut ws) => {
                let _ =
                    tokio::time::timeout(Duration::from_secs(2), WsStream::close(&mut ws, None))
                        .await;
            }
        }
    }
}

/// Opens the relay WebSocket at `url` with `declaration` (`client`, `nonce`, `token`) in
/// its query.
async fn open_ws(url: &str, declaration: &[(&str, String)]) -> Result<WsStream, LinkError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    crate::install_crypto_provider();
    let mut u = url::Url::parse(url).map_err(|error| LinkError::BadUrl {
        url: url.to_owned(),
        error,
    })?;
    for (k, v) in declaration {
        u.query_pairs_mut().append_pair(k, v);
    }
    let mut req = u
        .as_str()
        .into_client_request()
        .map_err(|error| LinkError::Request {
            url: url.to_owned(),
            error,
        })?;
    // Through an ngrok tunnel: skip its browser warning page.
    req.headers_mut().insert(
        "ngrok-skip-browser-warning",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("1"),
    );
    crate::tls::connect_websocket(req, None, None)
        .await
        .map_err(|error| LinkError::WebSocket {
            url: url.to_owned(),
            error,
        })
}

struct Driver {
    cfg: ClientConfig,
    target: Target,
    events: mpsc::UnboundedSender<Event>,
    state: watch::Sender<ConnectionState>,
    link: Option<Link>,
    rooms: BTreeMap<String, RoomState>,
    pending: HashMap<String, PendingPublish>,
    order: BTreeMap<u64, String>,
    next_order: u64,
    /// Pending joins in request order: (room, reply, deadline).
    joins: VecDeque<(String, Reply<u64>)>,
    /// Pending history requests in request order.
    histories: VecDeque<(String, Reply<HistoryPage>)>,
    /// Pending pings: (reply, sent at, deadline).
    pings: VecDeque<PendingPing>,
    /// Commands received while reconnecting, handled once connected again.
    deferred: VecDeque<Command>,
    /// With [`Transport::Auto`]: the WebSocket was needed once, so it is tried first.
    prefer_ws: bool,
    /// The pinned ring key, this connection's nonce, the name token.
    trust: super::trust::Trust,
    /// With a pinned key: since when the current connection waits for a verified `welcome`
    /// (nothing is sent on it before).
    unverified_since: Option<Instant>,
    /// When pending publishes refused as `read_only` are re-sent ([`READ_ONLY_RETRY`]).
    read_only_retry: Option<Instant>,
}

/// What the driver does after a message from the node.
enum Next {
    /// Nothing more.
    Stay,
    /// Follow `moved` to the new target.
    Follow,
    /// The node failed the ring key check: drop the connection (and reconnect).
    Drop,
    /// A verified `welcome` on a connection that waited for it: resume now.
    Welcomed,
}

/// Opens the first connection and spawns the driver.
pub(super) async fn start(
    target: Target,
    cfg: ClientConfig,
    cmds: mpsc::Receiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<watch::Receiver<ConnectionState>, ClientError> {
    let (state, state_rx) = watch::channel(ConnectionState::Connecting);
    let trust = super::trust::Trust::new(cfg.ring_key.as_deref(), target.ring_key.as_deref())
        .map_err(|e| ClientError::Connect(e.to_string()))?;
    let mut d = Driver {
        trust,
        unverified_since: None,
        read_only_retry: None,
        cfg,
        target,
        events,
        state,
        link: None,
        rooms: BTreeMap::new(),
        pending: HashMap::new(),
        order: BTreeMap::new(),
        next_order: 0,
        joins: VecDeque::new(),
        histories: VecDeque::new(),
        pings: VecDeque::new(),
        deferred: VecDeque::new(),
        prefer_ws: false,
    };
    d.establish().await?;
    d.await_welcome();
    tokio::spawn(d.run(cmds));
    Ok(state_rx)
}

fn endpoint_config(e: &SignalingEndpoint, cfg: &ClientConfig) -> PeerConfig {
    let mut pc = PeerConfig::new(e.host.clone(), e.port);
    pc.path = e.path.clone();
    pc.key = e.key.clone();
    pc.secure = e.secure;
    pc.ice_servers = cfg.ice_servers.clone().unwrap_or_default();
    if let Some(keep) = cfg.loopback_candidates {
        pc.loopback_candidates = keep;
    }
    pc.connect_timeout = cfg.connect_timeout;
    pc.reconnect = false;
    if let Some(addrs) = &cfg.udp_addrs {
        pc.udp_addrs = addrs.clone();
    }
    pc
}

enum Wake {
    Cmd(Option<Command>),
    Msg(Option<Result<Json, RecvError>>),
    Tick,
}

impl Driver {
    fn set_state(&self, s: ConnectionState) {
        if *self.state.borrow() != s {
            self.state.send_replace(s.clone());
            let _ = self.events.send(Event::State(s));
        }
    }

    /// One connection attempt on the configured path(s): WebRTC over every signaling
    /// endpoint of the target, the relay WebSocket over every URL of the target, or (auto)
    /// WebRTC for at most `fallback_after`, then the WebSocket.
    async fn establish(&mut self) -> Result<(), ClientError> {
        if let Some(old) = self.link.take() {
            old.close().await;
        }
        let order: &[Transport] = match (self.cfg.transport, self.prefer_ws) {
            (Transport::Webrtc, _) => &[Transport::Webrtc],
            (Transport::Ws, _) => &[Transport::Ws],
            (Transport::Auto, false) => &[Transport::Webrtc, Transport::Ws],
            (Transport::Auto, true) => &[Transport::Ws, Transport::Webrtc],
        };
        let mut errors = Vec::new();
        for (i, t) in order.iter().enumerate() {
            let started = Instant::now();
            self.trust.renew_nonce();
            let attempt = match t {
                Transport::Ws => self.open_ws_link().await,
                _ => {
                    let limit = if self.cfg.transport == Transport::Auto {
                        self.cfg.fallback_after
                    } else {
                        self.cfg.connect_timeout
                    };
                    match tokio::time::timeout(limit, self.open_rtc_link()).await {
                        Ok(r) => r,
                        Err(_) => Err(LinkError::NoDataChannel(limit)),
                    }
                }
            };
            match attempt {
                Ok(link) => {
                    let transport = link.transport();
                    if i > 0 {
                        tracing::info!(
                            transport = transport.as_str(),
                            node = %self.target.peer_id,
                            after = ?errors,
                            "connected to the node over the fallback path"
                        );
                    } else {
                        tracing::info!(
                            transport = transport.as_str(),
                            node = %self.target.peer_id,
                            "connected to the node"
                        );
                    }
                    if self.cfg.transport == Transport::Auto {
                        self.prefer_ws = transport == Transport::Ws;
                    }
                    self.link = Some(link);
                    self.set_state(ConnectionState::Live {
                        node: self.target.peer_id.clone(),
                        generation: self.target.generation,
                        transport,
                    });
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(transport = t.as_str(), elapsed = ?started.elapsed(), error = %e, "could not connect");
                    errors.push(format!("{}: {e}", t.as_str()));
                }
            }
        }
        Err(ClientError::Connect(errors.join("; ")))
    }

    /// A DataConnection to the target's peer id through its signaling endpoints.
    async fn open_rtc_link(&self) -> Result<Link, LinkError> {
        let n = self.target.signaling.len();
        let mut last_err = LinkError::NoSignalingEndpoint;
        for i in 0..n {
            let e = &self.target.signaling[(self.cfg.endpoint_index + i) % n];
            let pc = endpoint_config(e, &self.cfg);
            let attempt = async {
                let peer = Peer::open(pc).await?;
                let mut metadata = json!({ "protocol": PROTOCOL });
                for (k, v) in self.trust.declaration(&self.cfg.name) {
                    metadata[k] = Json::String(v);
                }
                let opts = ConnectOptions {
                    label: Some("ouroboros".into()),
                    serialization: self.cfg.serialization,
                    reliable: true,
                    metadata: Some(metadata),
                };
                // The node's id on this server (it may have moved there: `protocol/discovery.md`).
                match peer.connect(e.peer_id_or(&self.target.peer_id), opts).await {
                    Ok(conn) => Ok((peer, conn)),
                    Err(err) => {
                        peer.close().await;
                        Err(err)
                    }
                }
            };
            match tokio::time::timeout(self.cfg.connect_timeout, attempt).await {
                Ok(Ok((peer, conn))) => {
                    let (sender, receiver) = conn.split();
                    return Ok(Link::Rtc {
                        peer,
                        sender,
                        receiver,
                    });
                }
                Ok(Err(error)) => {
                    last_err = LinkError::Peer {
                        at: format!("{}:{}", e.host, e.port),
                        error,
                    }
                }
                Err(_) => last_err = LinkError::TimedOut(format!("{}:{}", e.host, e.port)),
            }
        }
        Err(last_err)
    }

    /// The target's relay WebSocket, trying its URLs in order.
    async fn open_ws_link(&self) -> Result<Link, LinkError> {
        if self.target.relay_ws.is_empty() {
            return Err(LinkError::NoRelayWs);
        }
        let mut errors = Vec::new();
        let declaration = self.trust.declaration(&self.cfg.name);
        for url in &self.target.relay_ws {
            match tokio::time::timeout(self.cfg.connect_timeout, open_ws(url, &declaration)).await {
                Ok(Ok(ws)) => return Ok(Link::Ws(Box::new(ws))),
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(LinkError::TimedOut(url.clone())),
            }
        }
        Err(LinkError::AllRelayWs(errors))
    }

    /// After (re)connecting: re-join rooms from the last seen sequence number, re-send
    /// unacknowledged publishes in their original order.
    async fn resume(&mut self) {
        let joins: Vec<ClientMessage> = self
            .rooms
            .iter()
            .map(|(room, st)| ClientMessage::Join {
                room: room.clone(),
                since: st.last_seq,
            })
            .collect();
        for j in joins {
            let _ = self.send(&j).await;
        }
        self.resend_pending().await;
    }

    /// Re-sends every unacknowledged publish in its original order (the node deduplicates
    /// by id, so one it already stored is only acknowledged again).
    async fn resend_pending(&mut self) {
        self.read_only_retry = None;
        let resend: Vec<(String, ClientMessage)> = self
            .order
            .values()
            .filter_map(|id| {
                self.pending.get(id).map(|p| {
                    let msg = ClientMessage::Publish {
                        room: p.room.clone(),
                        id: id.clone(),
                        body: p.body.clone(),
                    };
                    (id.clone(), msg)
                })
            })
            .collect();
        for (id, p) in resend {
            if let Err(e) = self.send(&p).await {
                self.fail_publish(&id, e);
            }
        }
    }

    /// Sends `msg`. A message the codec refuses (too big for the serialization) comes back
    /// as `Err` and the connection stays up — reconnecting would not help, and re-sending a
    /// pending publish after every reconnect would loop forever. Any other failure drops the
    /// link (the driver reconnects).
    async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        // A wire type always serialises (string keys, no failing `Serialize` impls).
        let json = serde_json::to_value(msg).expect("wire types always serialise");
        self.send_json(json).await
    }

    /// [`Driver::send`] for a JSON value as it is (`Client::send_raw`).
    async fn send_json(&mut self, msg: Json) -> Result<(), ClientError> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        match link.send(&msg).await {
            Ok(()) => Ok(()),
            Err(SendError::Unsendable(e)) => {
                tracing::warn!(error = %e, "message not sent: the connection cannot carry it");
                Err(ClientError::Unsendable(e))
            }
            Err(SendError::Gone(e)) => {
                tracing::debug!(error = %e, "send to node failed; reconnecting");
                self.drop_link().await;
                Ok(())
            }
        }
    }

    /// Gives up a pending publish: every caller waiting for it gets `err`.
    fn fail_publish(&mut self, id: &str, err: ClientError) {
        if let Some(p) = self.pending.remove(id) {
            self.order.remove(&p.order);
            for tx in p.replies {
                let _ = tx.send(Err(err.clone()));
            }
        }
    }

    async fn drop_link(&mut self) {
        if let Some(link) = self.link.take() {
            link.close().await;
        }
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut moving = false;
        loop {
            if self.link.is_none() {
                if !self.reconnect(&mut cmds, moving).await {
                    break;
                }
                moving = false;
                self.await_welcome();
                if self.unverified_since.is_none() && !self.resume_all().await {
                    return;
                }
                continue;
            }
            let wake = {
                let link = self.link.as_mut().expect("checked above");
                tokio::select! {
                    c = cmds.recv() => Wake::Cmd(c),
                    m = link.recv() => Wake::Msg(m),
                    _ = tick.tick() => Wake::Tick,
                }
            };
            match wake {
                Wake::Cmd(None) => break,
                Wake::Cmd(Some(c)) if self.unverified_since.is_some() => {
                    if matches!(c, Command::Close) {
                        break;
                    }
                    self.deferred.push_back(c);
                }
                Wake::Cmd(Some(c)) => {
                    if !self.command(c).await {
                        break;
                    }
                }
                Wake::Msg(Some(Ok(v))) => match self.incoming(v).await {
                    Next::Stay => {}
                    Next::Follow => {
                        moving = true;
                        self.drop_link().await;
                    }
                    Next::Drop => self.drop_link().await,
                    Next::Welcomed => {
                        if !self.resume_all().await {
                            return;
                        }
                    }
                },
                Wake::Msg(Some(Err(e))) => {
                    tracing::debug!(error = %e, "undecodable message from node");
                }
                Wake::Msg(None) => {
                    tracing::debug!("connection to node closed");
                    self.drop_link().await;
                }
                Wake::Tick => {
                    self.expire();
                    if self.unverified_since.is_none()
                        && self.read_only_retry.is_some_and(|t| t <= Instant::now())
                    {
                        self.resend_pending().await;
                    }
                    if self
                        .unverified_since
                        .is_some_and(|t| t.elapsed() > self.cfg.connect_timeout)
                    {
                        self.untrusted(TrustError::NoWelcome);
                        self.drop_link().await;
                    }
                }
            }
        }
        self.shutdown().await;
    }

    /// With a pinned ring key, nothing is sent on a new connection before its verified
    /// `welcome`.
    fn await_welcome(&mut self) {
        self.unverified_since = self.trust.pinned().map(|_| Instant::now());
    }

    /// Resumes on a connection (re-joins, re-sends) and runs the deferred commands; false
    /// if one of them closed the client (then it is shut down).
    async fn resume_all(&mut self) -> bool {
        self.resume().await;
        while let Some(c) = self.deferred.pop_front() {
            if !self.command(c).await {
                self.shutdown().await;
                return false;
            }
        }
        true
    }

    /// Reports a refused `welcome`, `moved` or record.
    fn untrusted(&self, reason: TrustError) {
        tracing::warn!(%reason, node = %self.target.peer_id, "refused: not signed by the ring's key");
        self.emit(Event::Untrusted {
            reason: reason.to_string(),
        });
    }

    async fn shutdown(&mut self) {
        self.drop_link().await;
        self.fail_all(ClientError::Closed);
        self.set_state(ConnectionState::Closed);
    }

    fn fail_all(&mut self, err: ClientError) {
        for (_, p) in self.pending.drain() {
            for r in p.replies {
                let _ = r.send(Err(err.clone()));
            }
        }
        self.order.clear();
        for (_, (r, _)) in self.joins.drain(..) {
            let _ = r.send(Err(err.clone()));
        }
        for (_, (r, _)) in self.histories.drain(..) {
            let _ = r.send(Err(err.clone()));
        }
        for (r, _, _) in self.pings.drain(..) {
            let _ = r.send(Err(err.clone()));
        }
    }

    /// Reconnects with backoff. Returns false if closed or given up.
    async fn reconnect(&mut self, cmds: &mut mpsc::Receiver<Command>, moving: bool) -> bool {
        let started = Instant::now();
        // Full jitter: every client of a node that just died reconnects at a different moment.
        let mut delays = Backoff::new(FIRST_RECONNECT_DELAY, self.cfg.max_backoff).delays();
        let mut attempt = 0u32;
        loop {
            self.set_state(if moving {
                ConnectionState::Moving {
                    generation: self.target.generation,
                }
            } else {
                ConnectionState::Connecting
            });
            let err = match self.establish().await {
                Ok(()) => return true,
                Err(e) => e.to_string(),
            };
            attempt += 1;
            if let Some(limit) = self.cfg.give_up_after
                && started.elapsed() > limit
            {
                tracing::warn!(error = %err, "giving up reconnecting to the node");
                return false;
            }
            if attempt.is_multiple_of(2)
                && let Some(src) = self.cfg.discovery_source.clone()
                && let Ok(r) = super::discover(&src).await
                && r.generation >= self.target.generation
            {
                match self.trust.check_record(&r) {
                    Ok(()) => self.target = r.into(),
                    Err(reason) => self.untrusted(reason),
                }
            }
            let delay = delays.next_delay().unwrap_or(self.cfg.max_backoff);
            self.set_state(ConnectionState::Offline {
                reason: err,
                retry_in: delay,
            });
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    c = cmds.recv() => match c {
                        None | Some(Command::Close) => return false,
                        Some(c) => self.deferred.push_back(c),
                    },
                }
            }
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        while self.joins.front().is_some_and(|(_, (_, d))| *d <= now) {
            let (_, (r, _)) = self.joins.pop_front().expect("front checked");
            let _ = r.send(Err(ClientError::Timeout("joined")));
        }
        while self.histories.front().is_some_and(|(_, (_, d))| *d <= now) {
            let (_, (r, _)) = self.histories.pop_front().expect("front checked");
            let _ = r.send(Err(ClientError::Timeout("history")));
        }
        while self.pings.front().is_some_and(|(_, _, d)| *d <= now) {
            let (r, _, _) = self.pings.pop_front().expect("front checked");
            let _ = r.send(Err(ClientError::Timeout("pong")));
        }
    }

    /// Handles one command; false means stop.
    async fn command(&mut self, c: Command) -> bool {
        let deadline = Instant::now() + self.cfg.request_timeout;
        match c {
            Command::Close => return false,
            Command::Join { room, since, reply } => {
                let st = self.rooms.entry(room.clone()).or_insert(RoomState {
                    last_seq: since,
                    replay_to: None,
                });
                if since.is_some() {
                    st.last_seq = since;
                }
                self.joins.push_back((room.clone(), (reply, deadline)));
                let _ = self.send(&ClientMessage::Join { room, since }).await;
            }
            Command::Leave { room } => {
                self.rooms.remove(&room);
                let _ = self.send(&ClientMessage::Leave { room }).await;
            }
            Command::Publish {
                room,
                id,
                body,
                reply,
            } => {
                let msg = ClientMessage::Publish {
                    room: room.clone(),
                    id: id.clone(),
                    body: body.clone(),
                };
                let key = id.clone();
                match self.pending.get_mut(&id) {
                    Some(p) => p.replies.push(reply),
                    None => {
                        let order = self.next_order;
                        self.next_order += 1;
                        self.order.insert(order, id.clone());
                        self.pending.insert(
                            id,
                            PendingPublish {
                                room,
                                body,
                                order,
                                replies: vec![reply],
                            },
                        );
                    }
                }
                if let Err(e) = self.send(&msg).await {
                    self.fail_publish(&key, e);
                }
            }
            Command::History {
                room,
                before,
                limit,
                reply,
            } => {
                let msg = ClientMessage::History {
                    room: room.clone(),
                    before,
                    limit,
                };
                self.histories.push_back((room, (reply, deadline)));
                let _ = self.send(&msg).await;
            }
            Command::Direct { to, body } => {
                let _ = self.send(&ClientMessage::Direct { to, body }).await;
            }
            Command::Ping { reply } => {
                self.pings.push_back((reply, Instant::now(), deadline));
                let _ = self.send(&ClientMessage::Ping).await;
            }
            Command::Raw { msg } => {
                let _ = self.send_json(msg).await;
            }
        }
        true
    }

    fn emit(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    /// Handles one message from the node; true means "moved: reconnect to the new target".
    /// Messages are read with the relay's own wire types ([`ServerMessage`]); anything they
    /// cannot read (an unknown `op`, a missing field) is passed on as [`Event::Other`].
    async fn incoming(&mut self, m: Json) -> Next {
        let msg = match ServerMessage::deserialize(&m) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::debug!(error = %e, "node message not understood");
                self.emit(Event::Other(m));
                return Next::Stay;
            }
        };
        if self.unverified_since.is_some() && !matches!(msg, ServerMessage::Welcome { .. }) {
            // Before a verified welcome nothing was asked on this connection: an error (e.g.
            // `server_full`, sent instead of a welcome) is only reported, the rest ignored.
            if let ServerMessage::Error {
                message, reference, ..
            } = msg
            {
                let code = m.get("code").and_then(Json::as_str).unwrap_or("unknown");
                self.emit(Event::Error {
                    code: code.to_owned(),
                    message,
                    reference,
                });
            } else {
                tracing::debug!("message before a verified welcome: ignored");
            }
            return Next::Stay;
        }
        match msg {
            ServerMessage::Welcome {
                node, generation, ..
            } => {
                let expected = (!self.target.replicated).then_some(self.target.peer_id.as_str());
                if let Err(reason) = self.trust.check_welcome(&m, expected, &self.cfg.name) {
                    self.untrusted(reason);
                    return Next::Drop;
                }
                self.target.generation = generation;
                let transport = self
                    .link
                    .as_ref()
                    .map_or(Transport::Webrtc, Link::transport);
                self.set_state(ConnectionState::Live {
                    node: node.clone(),
                    generation,
                    transport,
                });
                self.emit(Event::Welcome {
                    node,
                    generation,
                    raw: m,
                });
                if self.unverified_since.take().is_some() {
                    return Next::Welcomed;
                }
            }
            ServerMessage::Joined {
                room,
                head,
                replay_to,
            } => {
                if let Some(st) = self.rooms.get_mut(&room) {
                    if st.last_seq.is_none() {
                        st.last_seq = Some(head);
                    }
                    st.replay_to = replay_to;
                }
                let (done, rest): (VecDeque<_>, VecDeque<_>) =
                    self.joins.drain(..).partition(|(r, _)| *r == room);
                self.joins = rest;
                for (_, (r, _)) in done {
                    let _ = r.send(Ok(head));
                }
            }
            ServerMessage::Msg(record) => {
                let msg = Message::from(record);
                let mut next_page = None;
                if let Some(st) = self.rooms.get_mut(&msg.room) {
                    if st.replay_to.is_some_and(|t| msg.seq >= t) {
                        // The replay page is complete: ask for the next one.
                        st.replay_to = None;
                        next_page = Some(ClientMessage::Join {
                            room: msg.room.clone(),
                            since: Some(msg.seq),
                        });
                    }
                    if st.last_seq.is_some_and(|l| msg.seq <= l) {
                        if let Some(j) = next_page {
                            let _ = self.send(&j).await;
                        }
                        return Next::Stay; // already seen (replay overlap)
                    }
                    st.last_seq = Some(msg.seq);
                }
                self.emit(Event::Message(msg));
                if let Some(j) = next_page {
                    let _ = self.send(&j).await;
                }
            }
            ServerMessage::Ack { id, seq, .. } => {
                if let Some(p) = self.pending.remove(&id) {
                    self.order.remove(&p.order);
                    for r in p.replies {
                        let _ = r.send(Ok(Ack { seq }));
                    }
                }
            }
            ServerMessage::History {
                room,
                messages,
                evicted_before,
            } => {
                let page = HistoryPage {
                    messages: messages.into_iter().map(Message::from).collect(),
                    evicted_before,
                };
                if let Some(i) = self.histories.iter().position(|(r, _)| *r == room) {
                    let (_, (r, _)) = self.histories.remove(i).expect("index from position");
                    let _ = r.send(Ok(page));
                }
            }
            ServerMessage::Presence { room, joined, left } => {
                self.emit(Event::Presence { room, joined, left });
            }
            ServerMessage::Direct { from, body } => self.emit(Event::Direct { from, body }),
            ServerMessage::Pong => {
                if let Some((r, sent, _)) = self.pings.pop_front() {
                    let _ = r.send(Ok(sent.elapsed()));
                }
            }
            ServerMessage::Error {
                code,
                message,
                reference,
            } => {
                // The code as the node sent it (one this client does not know included).
                let code = m
                    .get("code")
                    .and_then(Json::as_str)
                    .unwrap_or(code.as_str())
                    .to_owned();
                let retryable = RETRYABLE.contains(&code.as_str());
                let err = ClientError::Node {
                    code: code.clone(),
                    message: message.clone(),
                };
                if let Some(r) = &reference {
                    if !retryable && let Some(p) = self.pending.remove(r) {
                        self.order.remove(&p.order);
                        for tx in p.replies {
                            let _ = tx.send(Err(err.clone()));
                        }
                        return Next::Stay;
                    }
                    if self.pending.contains_key(r) {
                        // Stays pending: re-sent after the move, or after READ_ONLY_RETRY.
                        self.read_only_retry
                            .get_or_insert_with(|| Instant::now() + READ_ONLY_RETRY);
                        return Next::Stay;
                    }
                    // Requests without an id are referred to by their op, oldest first.
                    if r == "join"
                        && let Some((room, (tx, _))) = self.joins.pop_front()
                    {
                        self.rooms.remove(&room);
                        let _ = tx.send(Err(err));
                        return Next::Stay;
                    }
                    if r == "history"
                        && let Some((_, (tx, _))) = self.histories.pop_front()
                    {
                        let _ = tx.send(Err(err));
                        return Next::Stay;
                    }
                }
                self.emit(Event::Error {
                    code,
                    message,
                    reference,
                });
            }
            ServerMessage::Moved {
                peer_id,
                signaling,
                generation,
                ..
            } => {
                if peer_id.is_empty() {
                    return Next::Stay;
                }
                if let Err(reason) = self.trust.check_moved(&m, self.target.generation) {
                    self.untrusted(reason);
                    return Next::Stay;
                }
                let signaling = if signaling.is_empty() {
                    self.target.signaling.clone()
                } else {
                    signaling
                };
                let relay_ws =
                    Target::relay_ws_urls(m.get("relay_ws").and_then(Json::as_str), &signaling);
                self.target = Target {
                    peer_id: peer_id.clone(),
                    generation,
                    signaling,
                    relay_ws,
                    ring_key: self.target.ring_key.take(),
                    replicated: false,
                };
                self.emit(Event::Moved {
                    peer_id,
                    generation,
                });
                return Next::Follow;
            }
        }
        Next::Stay
    }
}

impl From<MsgRecord> for Message {
    fn from(m: MsgRecord) -> Message {
        Message {
            room: m.room,
            seq: m.seq,
            from: m.from,
            ts: m.ts,
            id: m.id,
            body: m.body,
        }
    }
}
