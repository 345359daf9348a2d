//! Drives the sans-IO [`Relay`] with real DataConnections.
//!
//! One task owns the relay. Each connection has a reader task (decoded values → the relay
//! task, through one bounded channel shared by all readers) and a writer task fed by its
//! own bounded queue. The relay task hands outputs to writers with `try_send`, so a slow
//! client never blocks the relay or the other clients: a client whose queue is full is
//! disconnected (logged with the reason, counted in `slow_disconnects`).
//!
//! # Write-queue memory
//! Every queued message is charged its JSON length (four times that on `binary`/`msgpack`
//! connections, whose writers share an encoding of up to about three times the JSON: see
//! `relay::Payload`) until its writer has handed it to the connection. One connection may
//! hold [`QueueLimits::per_connection`] bytes; all of them together
//! [`QueueLimits::total`]. A message that would pass the total first disconnects the
//! connections with the largest queues (the slowest readers) until it fits; a disconnected
//! writer stops at once and drops what it held.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;
use tokio::sync::{Notify, mpsc, oneshot};

use super::status::{ClientStatus, RelayFigures, RoomStatus};
use super::transport::{
    DataChannelSink, DataChannelSource, FrameSink, FrameSource, Inbound, KEEPALIVE, SinkError,
    Transport,
};
use crate::handoff::{HandoffHost, RelayFn, RelayStopped};
use crate::peer::{DataConnection, Serialization};
use crate::relay::{
    CloseReason, ConnId, ConnInfo, Outgoing, Output, Proposal, ProposalFailure, Relay,
};

/// Messages queued for one connection before it counts as too slow and is dropped.
pub const WRITE_QUEUE: usize = 8192;
/// Default [`QueueLimits::per_connection`].
pub const WRITE_QUEUE_BYTES: usize = 8 << 20;

/// Byte limits of the write queues (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Bytes one connection's queue may hold before it counts as too slow.
    pub per_connection: usize,
    /// Bytes all queues may hold together.
    pub total: usize,
}

impl QueueLimits {
    /// The share of a memory budget the queues get: a quarter, at least 8 MiB (the rest,
    /// `budget - budget / 4`, is the store's); one connection at most [`WRITE_QUEUE_BYTES`].
    pub fn for_budget(budget: usize) -> QueueLimits {
        let total = (budget / 4).max(8 << 20);
        QueueLimits {
            per_connection: WRITE_QUEUE_BYTES.min(total),
            total,
        }
    }
}

/// What a queued message is charged: its JSON text, plus room for a shared BinaryPack or
/// msgpack encoding (at most about three times the JSON) on connections that need one.
fn charge_of(message: &Outgoing, encoded: bool) -> usize {
    let len = message.text().len() + 64;
    if encoded { len * 4 } else { len }
}
/// Inputs queued from all readers to the relay task.
pub const INPUT_QUEUE: usize = 8192;
/// Rooms listed on the status page.
const STATUS_ROOMS: usize = 50;
/// Clients listed in `/status.json` (the oldest connections; the counts cover all).
const STATUS_CLIENTS: usize = 200;

/// The relay's figures, its busiest rooms and its clients (with their transports).
pub(crate) type Figures = (RelayFigures, Vec<RoomStatus>, Vec<ClientStatus>);

/// What the relay task is fed.
pub(crate) enum Input {
    Open {
        conn: ConnId,
        info: ConnInfo,
        transport: Transport,
        writer: Writer,
    },
    Message {
        conn: ConnId,
        msg: Json,
    },
    Closed {
        conn: ConnId,
    },
    Figures(oneshot::Sender<Figures>),
    Run(RelayFn),
    /// What became of a proposal (a replicated relay).
    Proposed(Proposal, Result<u64, ProposalFailure>),
}

/// Publishes from one connection waiting for the replicated log, beyond the one in flight;
/// more are answered `unavailable` (the connection's rate limit normally keeps far below).
pub const MAX_PENDING_PROPOSALS: usize = 1024;

/// Proposes a replicated relay's publishes to the ring's log (the node's `--replicas`): the
/// relay task hands it each [`Proposal`] and feeds the outcome back to the relay.
#[async_trait::async_trait]
pub trait Proposer: Send + Sync + 'static {
    /// Proposes `p` and returns its `seq` once committed on a majority, or why not.
    async fn propose(&self, p: &Proposal) -> Result<u64, ProposalFailure>;
}

/// The proposals of each connection, in order: the front one is in flight. One at a time per
/// connection keeps a client's messages in the order it published them (concurrent proposals
/// could commit in any order).
#[derive(Default)]
struct Proposals {
    queues: HashMap<ConnId, VecDeque<Proposal>>,
}

impl Proposals {
    /// Queues `p`; returns it if it should be sent now (nothing else of its connection is in
    /// flight), or gives it back refused when the connection has too many waiting.
    fn push(&mut self, p: Proposal) -> Result<Option<Proposal>, Proposal> {
        let q = self.queues.entry(p.conn).or_default();
        if q.len() > MAX_PENDING_PROPOSALS {
            return Err(p);
        }
        q.push_back(p);
        Ok((q.len() == 1).then(|| q[0].clone()))
    }

    /// The front proposal of `conn` is done: returns the next one to send.
    fn done(&mut self, conn: ConnId) -> Option<Proposal> {
        let q = self.queues.get_mut(&conn)?;
        q.pop_front();
        match q.front() {
            Some(next) => Some(next.clone()),
            None => {
                self.queues.remove(&conn);
                None
            }
        }
    }

    /// The front proposal of `conn` was not committed in time: everything waiting behind it
    /// is given back too (to be answered `unavailable`), so that the client's retries, in its
    /// own order, keep its messages in the order it published them.
    fn failed(&mut self, conn: ConnId) -> Vec<Proposal> {
        self.queues
            .remove(&conn)
            .map(|q| q.into_iter().skip(1).collect())
            .unwrap_or_default()
    }

    /// `conn` closed: its waiting proposals (never acknowledged) are dropped; the one in
    /// flight finishes.
    fn closed(&mut self, conn: ConnId) {
        if let Some(q) = self.queues.get_mut(&conn) {
            q.truncate(1);
        }
    }
}

/// Sends `p` to the proposer and its outcome back to the relay task.
fn spawn_proposal(proposer: &Arc<dyn Proposer>, tx: &mpsc::WeakSender<Input>, p: Proposal) {
    let proposer = Arc::clone(proposer);
    let tx = tx.clone();
    tokio::spawn(async move {
        let outcome = proposer.propose(&p).await;
        if let Some(tx) = tx.upgrade() {
            let _ = tx.send(Input::Proposed(p, outcome)).await;
        }
    });
}

/// What a writer task is fed.
pub(crate) enum WriteItem {
    /// A message and the bytes it was charged.
    Send(Outgoing, usize),
    /// Send what is queued, then close.
    Close,
}

/// The relay task's end of one writer: its queue and what it holds.
pub(crate) struct Writer {
    tx: mpsc::Sender<WriteItem>,
    /// Stops the writer at once (a slow client): it drops what it holds.
    kill: tokio_util::sync::CancellationToken,
    /// Bytes charged to this queue so far (by the relay task).
    charged: usize,
    /// Bytes the writer has released so far (sent or dropped).
    released: Arc<AtomicUsize>,
    /// Whether messages are charged for an encoding (`binary`, `msgpack`).
    encoded: bool,
}

impl Writer {
    fn queued(&self) -> usize {
        self.charged
            .saturating_sub(self.released.load(Ordering::Relaxed))
    }
}

/// Bytes released by the writers, counted for one writer and for all.
struct Release {
    own: Arc<AtomicUsize>,
    all: Arc<AtomicUsize>,
}

impl Release {
    fn add(&self, n: usize) {
        if n > 0 {
            self.own.fetch_add(n, Ordering::Relaxed);
            self.all.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Counters the driver keeps beside the relay's own metrics.
#[derive(Debug, Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    slow_disconnects: AtomicU64,
    /// Bytes released by every writer (queued = charged by the relay task − this).
    released: Arc<AtomicUsize>,
}

/// A handle to the relay task: hand it connections, read its figures, run code on it.
#[derive(Clone)]
pub struct RelayHandle {
    tx: mpsc::Sender<Input>,
    next_conn: Arc<AtomicU64>,
    counters: Arc<Counters>,
    /// Notified by the relay task when replication events are queued (the handoff's tail).
    replication: Arc<Notify>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle").finish_non_exhaustive()
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RelayHandle {
    /// Starts the relay task, its write queues bounded by
    /// [`QueueLimits::for_budget`] of the relay's memory budget.
    pub fn spawn(relay: Relay) -> RelayHandle {
        let limits = QueueLimits::for_budget(relay.config().memory_budget);
        RelayHandle::spawn_with(relay, limits)
    }

    /// Starts the relay task with explicit write-queue limits.
    pub fn spawn_with(relay: Relay, queues: QueueLimits) -> RelayHandle {
        RelayHandle::spawn_replicated(relay, queues, None)
    }

    /// Starts the relay task; a replicated relay (`RelayConfig::replicated`) proposes its
    /// publishes through `proposer`.
    pub fn spawn_replicated(
        relay: Relay,
        queues: QueueLimits,
        proposer: Option<Arc<dyn Proposer>>,
    ) -> RelayHandle {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let counters = Arc::new(Counters::default());
        let replication = Arc::new(Notify::new());
        tokio::spawn(relay_task(
            relay,
            rx,
            counters.clone(),
            replication.clone(),
            queues,
            proposer.map(|p| (p, tx.downgrade())),
        ));
        RelayHandle {
            tx,
            next_conn: Arc::new(AtomicU64::new(1)),
            counters,
            replication,
        }
    }

    /// Serves one open DataConnection: registers it with the relay and spawns its reader
    /// and writer tasks.
    pub fn serve(&self, conn: DataConnection) {
        let info = ConnInfo {
            peer_id: conn.peer().to_string(),
            metadata: conn.metadata().cloned().unwrap_or(Json::Null),
        };
        tracing::debug!(peer = %info.peer_id, serialization = ?conn.serialization(), label = %conn.label(), "relay connection open");
        let encoded = matches!(
            conn.serialization(),
            Serialization::Binary | Serialization::BinaryUtf8 | Serialization::MsgPack
        );
        let (sender, receiver) = conn.split();
        self.serve_link(
            Transport::Webrtc,
            encoded,
            info,
            DataChannelSource(receiver),
            DataChannelSink::new(sender),
        );
    }

    /// Serves one upgraded relay WebSocket (`GET /relay`). It is a declared relay-protocol
    /// connection (welcomed at once) under a fresh `ws-…` peer id; `client` is its declared
    /// name, `token` and `nonce` as in a DataConnection's metadata.
    pub(crate) fn serve_ws(
        &self,
        ws: axum::extract::ws::WebSocket,
        query: super::http::RelayQuery,
        stop: tokio_util::sync::CancellationToken,
        permit: Option<super::address_gate::AddressPermit>,
    ) {
        let suffix = &super::random_peer_id()["ouroboros-".len()..];
        let mut metadata = serde_json::json!({ "protocol": crate::relay::wire::PROTOCOL });
        for (key, value) in [
            ("client", query.client),
            ("token", query.token),
            ("nonce", query.nonce),
        ] {
            if let Some(v) = value {
                metadata[key] = Json::String(v);
            }
        }
        let info = ConnInfo {
            peer_id: format!("ws-{suffix}"),
            metadata,
        };
        let (source, sink) = super::transport::websocket(ws, stop, permit);
        self.serve_link(Transport::Ws, false, info, source, sink);
    }

    /// Serves one client connection over any transport: registers it with the relay and
    /// spawns its reader (`source` → relay task) and writer (relay task → `sink`) tasks.
    /// `encoded`: the sink sends BinaryPack or msgpack (queued messages are charged for it).
    pub(crate) fn serve_link(
        &self,
        transport: Transport,
        encoded: bool,
        info: ConnInfo,
        mut source: impl FrameSource,
        sink: impl FrameSink,
    ) {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        tracing::debug!(conn = id.0, peer = %info.peer_id, transport = transport.as_str(), "relay client connected");
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
        let kill = tokio_util::sync::CancellationToken::new();
        let released = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            tx: wtx,
            kill: kill.clone(),
            charged: 0,
            released: released.clone(),
            encoded,
        };
        let release = Release {
            own: released,
            all: self.counters.released.clone(),
        };
        let tx = self.tx.clone();
        let counters = self.counters.clone();
        tokio::spawn(writer_task(sink, wrx, kill, release));
        tokio::spawn(async move {
            if tx
                .send(Input::Open {
                    conn: id,
                    info,
                    transport,
                    writer,
                })
                .await
                .is_err()
            {
                return;
            }
            while let Some(item) = source.recv().await {
                match item {
                    Inbound::Message(msg, n) => {
                        counters.bytes_in.fetch_add(n, Ordering::Relaxed);
                        if tx.send(Input::Message { conn: id, msg }).await.is_err() {
                            return;
                        }
                    }
                    Inbound::Undecodable(e) => {
                        tracing::debug!(conn = id.0, error = %e, "undecodable message")
                    }
                }
            }
            let _ = tx.send(Input::Closed { conn: id }).await;
        });
    }

    /// The relay's figures and busiest rooms now.
    pub(crate) async fn figures(&self) -> Option<Figures> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Input::Figures(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Runs `f` on the relay inside its task (outputs are dispatched afterwards) and
    /// returns its result. This is how lifecycle and handoff code reach the relay.
    ///
    /// # Errors
    /// `None` if the relay task has stopped.
    pub async fn with_relay<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Relay) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let run: RelayFn = Box::new(move |r| {
            let _ = tx.send(f(r));
        });
        self.tx.send(Input::Run(run)).await.ok()?;
        rx.await.ok()
    }
}

/// The node's relay as the handoff sees it: closures run inside the relay task, so the
/// relay's outputs (e.g. `moved`) are dispatched to clients right after.
#[async_trait::async_trait]
impl HandoffHost for RelayHandle {
    async fn run(&self, f: RelayFn) -> Result<(), RelayStopped> {
        self.with_relay(f).await.ok_or(RelayStopped)
    }

    fn replication_queued(&self) -> Arc<Notify> {
        self.replication.clone()
    }
}

struct Rates {
    samples: VecDeque<(Instant, u64, u64)>,
}

impl Rates {
    fn sample(&mut self, now: Instant, published: u64, delivered: u64) {
        self.samples.push_back((now, published, delivered));
        while self
            .samples
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > Duration::from_secs(10))
        {
            self.samples.pop_front();
        }
    }

    fn rates(&self) -> (f64, f64) {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => {
                let dt = b.0.duration_since(a.0).as_secs_f64();
                ((b.1 - a.1) as f64 / dt, (b.2 - a.2) as f64 / dt)
            }
            _ => (0.0, 0.0),
        }
    }
}

async fn relay_task(
    mut relay: Relay,
    mut rx: mpsc::Receiver<Input>,
    counters: Arc<Counters>,
    replication: Arc<Notify>,
    queues: QueueLimits,
    proposer: Option<(Arc<dyn Proposer>, mpsc::WeakSender<Input>)>,
) {
    let mut proposals = Proposals::default();
    let mut writers: HashMap<ConnId, Writer> = HashMap::new();
    // Bytes charged to every queue so far (queued = this − `counters.released`).
    let mut charged_total: usize = 0;
    // Who each connection is and which path it uses (for `/status.json` and `/metrics`).
    let mut clients: HashMap<ConnId, ClientStatus> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rates = Rates {
        samples: VecDeque::new(),
    };
    loop {
        let input = tokio::select! {
            i = rx.recv() => match i {
                Some(i) => i,
                None => break,
            },
            _ = tick.tick() => {
                let m = relay.metrics();
                rates.sample(Instant::now(), m.published, m.delivered);
                continue;
            }
        };
        let now = Instant::now();
        match input {
            Input::Open {
                conn,
                info,
                transport,
                writer,
            } => {
                writers.insert(conn, writer);
                clients.insert(
                    conn,
                    ClientStatus {
                        conn: conn.0,
                        peer_id: info.peer_id.clone(),
                        client: info
                            .metadata
                            .get("client")
                            .and_then(Json::as_str)
                            .map(str::to_owned),
                        transport,
                    },
                );
                relay.connect(now, conn, info);
            }
            Input::Message { conn, msg } => {
                if writers.contains_key(&conn) {
                    relay.handle_message(now, wall_ms(), conn, msg);
                }
            }
            Input::Closed { conn } => {
                clients.remove(&conn);
                proposals.closed(conn);
                if writers.remove(&conn).is_some() {
                    relay.disconnect(now, conn);
                }
            }
            Input::Proposed(p, outcome) => {
                let unavailable = match &outcome {
                    Err(ProposalFailure::Unavailable(reason)) => Some(reason.clone()),
                    _ => None,
                };
                relay.proposal_done(&p, outcome);
                if let Some(reason) = unavailable {
                    // Nothing behind it may commit before its retry.
                    for behind in proposals.failed(p.conn) {
                        relay.proposal_done(
                            &behind,
                            Err(ProposalFailure::Unavailable(reason.clone())),
                        );
                    }
                } else if let (Some(next), Some((proposer, tx))) =
                    (proposals.done(p.conn), &proposer)
                {
                    spawn_proposal(proposer, tx, next);
                }
            }
            Input::Figures(reply) => {
                clients.retain(|c, _| writers.contains_key(c));
                let _ = reply.send(figures(&relay, &counters, &rates, &clients));
            }
            Input::Run(f) => f(&mut relay),
        }
        let mut q = Queues {
            writers: &mut writers,
            charged: &mut charged_total,
            limits: queues,
            proposed: Vec::new(),
        };
        dispatch(&mut relay, &mut q, &counters, now);
        let proposed = std::mem::take(&mut q.proposed);
        let refusals_possible = !proposed.is_empty();
        for p in proposed {
            let Some((proposer, tx)) = &proposer else {
                relay.proposal_done(
                    &p,
                    Err(ProposalFailure::Refused(
                        "this node has no replicated log".into(),
                    )),
                );
                continue;
            };
            match proposals.push(p) {
                Ok(Some(now_p)) => spawn_proposal(proposer, tx, now_p),
                Ok(None) => {}
                Err(p) => relay.proposal_done(
                    &p,
                    Err(ProposalFailure::Unavailable(format!(
                        "more than {MAX_PENDING_PROPOSALS} publishes of this connection are waiting"
                    ))),
                ),
            }
        }
        if refusals_possible {
            // The refusals just made.
            dispatch(&mut relay, &mut q, &counters, now);
        }
        if relay.replication_backlog() > 0 {
            replication.notify_one();
        }
    }
}

fn figures(
    relay: &Relay,
    counters: &Counters,
    rates: &Rates,
    clients: &HashMap<ConnId, ClientStatus>,
) -> Figures {
    let m = relay.metrics();
    let on = |t: Transport| clients.values().filter(|c| c.transport == t).count() as u64;
    let (publish_rate, delivery_rate) = rates.rates();
    let f = RelayFigures {
        clients: m.clients as u64,
        rooms: m.rooms as u64,
        messages_stored: m.messages as u64,
        bytes_stored: m.bytes_stored as u64,
        memory_budget: m.memory_budget as u64,
        messages_evicted: m.evicted_messages,
        bytes_evicted: m.evicted_bytes,
        published: m.published,
        delivered: m.delivered,
        directs: m.direct,
        errors: m.errors.values().sum(),
        bytes_in: counters.bytes_in.load(Ordering::Relaxed),
        bytes_out: counters.bytes_out.load(Ordering::Relaxed),
        slow_disconnects: counters.slow_disconnects.load(Ordering::Relaxed),
        legacy_clients: m.legacy_clients as u64,
        clients_webrtc: on(Transport::Webrtc),
        clients_ws: on(Transport::Ws),
        publish_rate,
        delivery_rate,
    };
    let mut rooms: Vec<RoomStatus> = relay
        .room_stats()
        .into_iter()
        .map(|(name, r)| RoomStatus {
            name,
            members: r.members as u64,
            head: r.head,
            stored: r.messages as u64,
        })
        .collect();
    rooms.sort_by(|a, b| {
        (b.members, b.stored)
            .cmp(&(a.members, a.stored))
            .then(a.name.cmp(&b.name))
    });
    rooms.truncate(STATUS_ROOMS);
    let mut list: Vec<ClientStatus> = clients.values().cloned().collect();
    list.sort_by_key(|c| c.conn);
    list.truncate(STATUS_CLIENTS);
    (f, rooms, list)
}

/// The write queues as the relay task sees them.
struct Queues<'a> {
    writers: &'a mut HashMap<ConnId, Writer>,
    /// Bytes charged to all queues so far.
    charged: &'a mut usize,
    limits: QueueLimits,
    /// Publishes the relay asked to propose (a replicated relay).
    proposed: Vec<Proposal>,
}

impl Queues<'_> {
    /// Bytes all queues hold now.
    fn total(&self, released: &AtomicUsize) -> usize {
        self.charged
            .saturating_sub(released.load(Ordering::Relaxed))
    }

    /// Marks the connections with the largest queues (not yet in `slow`) as slow until
    /// `need` more bytes fit under the total; `doomed` counts what they hold.
    fn make_room(
        &self,
        need: usize,
        released: &AtomicUsize,
        slow: &mut Vec<ConnId>,
        doomed: &mut usize,
    ) {
        while self.total(released).saturating_sub(*doomed) + need > self.limits.total {
            let largest = self
                .writers
                .iter()
                .filter(|(c, _)| !slow.contains(c))
                .map(|(c, w)| (w.queued(), *c))
                .filter(|(q, _)| *q > 0)
                .max();
            let Some((held, conn)) = largest else {
                return;
            };
            *doomed += held;
            slow.push(conn);
        }
    }
}

fn dispatch(relay: &mut Relay, q: &mut Queues<'_>, counters: &Counters, now: Instant) {
    let mut slow: Vec<ConnId> = Vec::new();
    // Bytes held by the queues already marked slow (freed once their writers stop).
    let mut doomed = 0;
    while let Some(out) = relay.poll_output() {
        match out {
            Output::Send { conn, message } => {
                if slow.contains(&conn) {
                    continue;
                }
                let Some(w) = q.writers.get(&conn) else {
                    continue;
                };
                let charge = charge_of(&message, w.encoded);
                if w.queued() + charge > q.limits.per_connection {
                    doomed += w.queued();
                    slow.push(conn);
                    continue;
                }
                q.make_room(charge, &counters.released, &mut slow, &mut doomed);
                if slow.contains(&conn) {
                    continue;
                }
                let Some(w) = q.writers.get_mut(&conn) else {
                    continue;
                };
                let len = message.text().len() as u64;
                match w.tx.try_send(WriteItem::Send(message, charge)) {
                    Ok(()) => {
                        w.charged += charge;
                        *q.charged += charge;
                        counters.bytes_out.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        doomed += w.queued();
                        slow.push(conn);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            Output::Propose(p) => q.proposed.push(p),
            Output::Close { conn, reason } => {
                if let Some(w) = q.writers.remove(&conn) {
                    let why = match reason {
                        CloseReason::ServerFull => "server full",
                    };
                    tracing::info!(conn = conn.0, reason = why, "relay closes connection");
                    // Queued messages (e.g. the `server_full` error) go first.
                    let _ = w.tx.try_send(WriteItem::Close);
                }
            }
        }
    }
    for conn in slow {
        if let Some(w) = q.writers.remove(&conn) {
            counters.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                conn = conn.0,
                queued_bytes = w.queued(),
                "disconnecting slow client: send queue full"
            );
            // The writer stops at once, drops what it holds and closes the connection.
            w.kill.cancel();
            relay.disconnect(now, conn);
            // Messages the relay queued for others because of this disconnect (presence).
            dispatch(relay, q, counters, now);
        }
    }
}

/// Writes what the relay queues for one connection, in batches, until the relay drops it
/// (slow client: `kill`; shutdown), asks it to close, or the remote side closes. Every
/// message's charge is released once it is handed to the connection or dropped.
async fn writer_task(
    mut sink: impl FrameSink,
    mut rx: mpsc::Receiver<WriteItem>,
    kill: tokio_util::sync::CancellationToken,
    release: Release,
) {
    let mut items: Vec<WriteItem> = Vec::with_capacity(64);
    let mut batch: Vec<Outgoing> = Vec::with_capacity(64);
    let flush = loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut items, 64) => n,
            _ = sink.closed() => break None,
            _ = kill.cancelled() => break Some(false),
            _ = tokio::time::sleep(KEEPALIVE) => {
                if sink.keepalive().await.is_err() {
                    break None;
                }
                continue;
            }
        };
        if n == 0 {
            // The relay dropped us (shutdown).
            break Some(false);
        }
        let mut close = false;
        let mut held = 0;
        for item in items.drain(..) {
            match item {
                WriteItem::Close => {
                    close = true;
                    break;
                }
                WriteItem::Send(msg, charge) => {
                    held += charge;
                    batch.push(msg);
                }
            }
        }
        let sent = if batch.is_empty() {
            Ok(())
        } else {
            tokio::select! {
                r = sink.send_batch(&mut batch) => r,
                _ = kill.cancelled() => Err(SinkError::new("disconnected as too slow")),
            }
        };
        batch.clear();
        release.add(held);
        if let Err(e) = sent {
            tracing::debug!(error = %e, "send to client failed");
            break kill.is_cancelled().then_some(false);
        }
        if close {
            break Some(true);
        }
    };
    // Drop (and release) whatever is still queued: nothing more goes out.
    rx.close();
    let mut rest = 0;
    while let Ok(item) = rx.try_recv() {
        if let WriteItem::Send(_, charge) = item {
            rest += charge;
        }
    }
    release.add(rest);
    if let Some(flush) = flush {
        sink.close(flush).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(conn: u64, id: &str) -> Proposal {
        Proposal {
            conn: ConnId(conn),
            room: "r".into(),
            id: id.into(),
            from: "f".into(),
            body: "1".into(),
            ack: true,
        }
    }

    #[test]
    fn one_proposal_per_connection_in_flight_in_publish_order() {
        let mut q = Proposals::default();
        assert_eq!(q.push(p(1, "a")).unwrap(), Some(p(1, "a")));
        assert_eq!(q.push(p(1, "b")).unwrap(), None, "waits behind a");
        assert_eq!(q.push(p(1, "c")).unwrap(), None);
        assert_eq!(
            q.push(p(2, "x")).unwrap(),
            Some(p(2, "x")),
            "other connections are independent"
        );
        assert_eq!(q.done(ConnId(1)), Some(p(1, "b")));
        // Closed: what waits is dropped (never acknowledged), the one in flight finishes.
        q.closed(ConnId(1));
        assert_eq!(q.done(ConnId(1)), None);
        assert!(!q.queues.contains_key(&ConnId(1)));
        assert_eq!(q.done(ConnId(2)), None);
        assert!(q.queues.is_empty());
        for i in 0..=MAX_PENDING_PROPOSALS {
            q.push(p(3, &i.to_string())).unwrap();
        }
        assert!(q.push(p(3, "over")).is_err(), "bounded per connection");
        // Not committed: the ones behind the failed one come back, in order, and the
        // connection's queue is empty for the retries.
        let mut q = Proposals::default();
        for id in ["a", "b", "c"] {
            q.push(p(4, id)).unwrap();
        }
        assert_eq!(q.failed(ConnId(4)), [p(4, "b"), p(4, "c")]);
        assert_eq!(
            q.push(p(4, "a")).unwrap(),
            Some(p(4, "a")),
            "the retry goes first"
        );
    }
}
