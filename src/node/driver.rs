//! Drives the sans-IO [`Relay`] with real DataConnections.
//!
//! One task owns the relay. Each connection has a reader task (decoded values → the relay
//! task, through one bounded channel shared by all readers) and a writer task fed by its
//! own bounded queue. The relay task hands outputs to writers with `try_send`, so a slow
//! client never blocks the relay or the other clients: a client whose queue is full is
//! disconnected (logged with the reason, counted in `slow_disconnects`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;
use tokio::sync::{Notify, mpsc, oneshot};

use super::status::{ClientStatus, RelayFigures, RoomStatus};
use super::transport::{
    DataChannelSink, DataChannelSource, FrameSink, FrameSource, Inbound, KEEPALIVE, Transport,
};
use crate::handoff::{HandoffHost, RelayFn, RelayStopped};
use crate::peer::DataConnection;
use crate::relay::{CloseReason, ConnId, ConnInfo, Outgoing, Output, Relay};

/// Messages queued for one connection before it counts as too slow and is dropped.
pub const WRITE_QUEUE: usize = 8192;
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
        writer: mpsc::Sender<WriteItem>,
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
}

/// What a writer task is fed.
pub(crate) enum WriteItem {
    Send(Outgoing),
    /// Send what is queued, then close.
    Close,
}

/// Counters the driver keeps beside the relay's own metrics.
#[derive(Debug, Default)]
struct Counters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    slow_disconnects: AtomicU64,
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
    /// Starts the relay task.
    pub fn spawn(relay: Relay) -> RelayHandle {
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let counters = Arc::new(Counters::default());
        let replication = Arc::new(Notify::new());
        tokio::spawn(relay_task(relay, rx, counters.clone(), replication.clone()));
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
        let (sender, receiver) = conn.split();
        self.serve_link(
            Transport::Webrtc,
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
        self.serve_link(Transport::Ws, info, source, sink);
    }

    /// Serves one client connection over any transport: registers it with the relay and
    /// spawns its reader (`source` → relay task) and writer (relay task → `sink`) tasks.
    pub(crate) fn serve_link(
        &self,
        transport: Transport,
        info: ConnInfo,
        mut source: impl FrameSource,
        sink: impl FrameSink,
    ) {
        let id = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        tracing::debug!(conn = id.0, peer = %info.peer_id, transport = transport.as_str(), "relay client connected");
        let (wtx, wrx) = mpsc::channel(WRITE_QUEUE);
        let tx = self.tx.clone();
        let counters = self.counters.clone();
        tokio::spawn(writer_task(sink, wrx));
        tokio::spawn(async move {
            if tx
                .send(Input::Open {
                    conn: id,
                    info,
                    transport,
                    writer: wtx,
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
) {
    let mut writers: HashMap<ConnId, mpsc::Sender<WriteItem>> = HashMap::new();
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
                if writers.remove(&conn).is_some() {
                    relay.disconnect(now, conn);
                }
            }
            Input::Figures(reply) => {
                clients.retain(|c, _| writers.contains_key(c));
                let _ = reply.send(figures(&relay, &counters, &rates, &clients));
            }
            Input::Run(f) => f(&mut relay),
        }
        dispatch(&mut relay, &mut writers, &counters, now);
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

fn dispatch(
    relay: &mut Relay,
    writers: &mut HashMap<ConnId, mpsc::Sender<WriteItem>>,
    counters: &Counters,
    now: Instant,
) {
    let mut slow: Vec<ConnId> = Vec::new();
    while let Some(out) = relay.poll_output() {
        match out {
            Output::Send { conn, message } => {
                let Some(w) = writers.get(&conn) else {
                    continue;
                };
                let len = message.text().len() as u64;
                match w.try_send(WriteItem::Send(message)) {
                    Ok(()) => {
                        counters.bytes_out.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        if !slow.contains(&conn) {
                            slow.push(conn);
                        }
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            Output::Close { conn, reason } => {
                if let Some(w) = writers.remove(&conn) {
                    let why = match reason {
                        CloseReason::ServerFull => "server full",
                    };
                    tracing::info!(conn = conn.0, reason = why, "relay closes connection");
                    // Queued messages (e.g. the `server_full` error) go first.
                    let _ = w.try_send(WriteItem::Close);
                }
            }
        }
    }
    for conn in slow {
        if let Some(w) = writers.remove(&conn) {
            counters.slow_disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                conn = conn.0,
                queue = WRITE_QUEUE,
                "disconnecting slow client: send queue full"
            );
            drop(w); // the writer closes the connection once its queue is gone
            relay.disconnect(now, conn);
            // Messages the relay queued for others because of this disconnect (presence).
            dispatch(relay, writers, counters, now);
        }
    }
}

/// Writes what the relay queues for one connection, in batches, until the relay drops it
/// (slow client, shutdown), asks it to close, or the remote side closes.
async fn writer_task(mut sink: impl FrameSink, mut rx: mpsc::Receiver<WriteItem>) {
    let mut items: Vec<WriteItem> = Vec::with_capacity(64);
    let mut batch: Vec<Outgoing> = Vec::with_capacity(64);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut items, 64) => n,
            _ = sink.closed() => return,
            _ = tokio::time::sleep(KEEPALIVE) => {
                if sink.keepalive().await.is_err() {
                    return;
                }
                continue;
            }
        };
        if n == 0 {
            // The relay dropped us (slow client or shutdown).
            sink.close(false).await;
            return;
        }
        let mut close = false;
        for item in items.drain(..) {
            match item {
                WriteItem::Close => {
                    close = true;
                    break;
                }
                WriteItem::Send(msg) => batch.push(msg),
            }
        }
        if !batch.is_empty()
            && let Err(e) = sink.send_batch(&mut batch).await
        {
            tracing::debug!(error = %e, "send to client failed");
            return;
        }
        batch.clear();
        if close {
            sink.close(true).await;
            return;
        }
    }
}
