//! The async drivers: [`Predecessor`] and [`Successor`] over PeerJS DataConnections, acting
//! on a relay through [`HandoffHost`](super::HandoffHost).
//!
//! - [`spawn_predecessor`]: the node routes every DataConnection labelled
//!   [`HANDOFF_LABEL`](super::HANDOFF_LABEL) to [`PredecessorHandle::conns`] and reads
//!   [`PredecessorHandle::events`] (lifecycle inputs).
//! - [`run_successor`]: connects to the predecessor through a caller-supplied `connect`
//!   function, transfers, publishes discovery through `publish`, and returns the outcome.
//!
//! A handoff connection ([`HandoffConn`]) is a DataConnection, or any byte-message channel
//! ([`FrameLink`]: the node's WebSocket path, `GET /handoff`, for two nodes without UDP
//! between them). Both carry the same messages and the same mutual authentication.

use super::host::{HandoffHost, HostOps};
use super::message::Message;
use super::{
    ConnId, GiveUpReason, Predecessor, PredecessorEvent, PredecessorPhase, PreparedSnapshot,
    Successor, SuccessorEvent, SuccessorPhase, Transferred, Transmit,
};
use crate::discovery::DiscoveryError;
use crate::peer::DataConnection;
use crate::peer::codec::{Serialization, Value};
use crate::relay::{Mode, Relay, RelayConfig, SnapshotJson, StreamingRestore};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// A snapshot restored on its own thread while it arrives: pieces go in as they are
/// verified, [`RestoreWorker::finish`] returns the relay once the last one is in.
/// Dropping the worker abandons the restore.
pub struct RestoreWorker {
    pieces: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    result: tokio::sync::oneshot::Receiver<Result<Relay, String>>,
    cancelled: Arc<std::sync::atomic::AtomicBool>,
}

impl RestoreWorker {
    /// Starts a restore into a relay with `config`.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(config: RelayConfig) -> std::io::Result<RestoreWorker> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let (done, result) = tokio::sync::oneshot::channel();
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = cancelled.clone();
        std::thread::Builder::new()
            .name("handoff-restore".into())
            .spawn(move || {
                let started = Instant::now();
                let mut restore = StreamingRestore::new(config, Instant::now());
                for piece in rx {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    // A failed restore keeps its first error for `finish`.
                    let _ = restore.feed(&piece);
                }
                let bytes = restore.consumed();
                let result = restore.finish().map_err(|e| e.to_string());
                tracing::debug!(
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    ok = result.is_ok(),
                    "handoff: streaming restore ended"
                );
                let _ = done.send(result);
            })?;
        Ok(RestoreWorker {
            pieces: Some(tx),
            result,
            cancelled,
        })
    }

    /// The next piece, in order.
    pub fn feed(&self, piece: Vec<u8>) {
        if let Some(tx) = &self.pieces {
            let _ = tx.send(piece);
        }
    }

    /// Waits until every piece is decoded and returns the relay.
    ///
    /// # Errors
    /// A message if the snapshot is malformed or inconsistent.
    pub async fn finish(mut self) -> Result<Relay, String> {
        self.pieces = None;
        (&mut self.result)
            .await
            .unwrap_or_else(|_| Err("the restore thread stopped".into()))
    }
}

impl Drop for RestoreWorker {
    fn drop(&mut self) {
        if self.pieces.is_some() {
            self.cancelled
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Largest DataConnection message on a `raw` handoff connection: the 256 KiB SCTP
/// message limit both Ouroboros peers announce. Longer handoff messages are split into
/// `OHBF` fragments (see `protocol/handoff.md`).
pub const RAW_FRAME_MAX: usize = 256 * 1024;
/// Prefix of a fragment of a handoff message on a `raw` connection.
const FRAGMENT_MAGIC: &[u8; 4] = b"OHBF";
/// Fragment header: magic and the "last fragment" flag.
const FRAGMENT_HEADER: usize = 5;

/// Encodes a handoff message for a connection's serialization: `binary`/`msgpack` get the
/// binary frame, `json` the JSON object, `raw` the binary frame as is (split into `OHBF`
/// fragments above [`RAW_FRAME_MAX`]).
pub fn to_values(serialization: Serialization, m: &Message) -> Vec<Value> {
    match serialization {
        Serialization::Json => vec![Value::from_json(
            serde_json::to_value(m).expect("serializes"),
        )],
        Serialization::Raw => {
            let bytes = m.to_binary();
            if bytes.len() <= RAW_FRAME_MAX {
                return vec![Value::Bin(bytes.into())];
            }
            let part = RAW_FRAME_MAX - FRAGMENT_HEADER;
            let n = bytes.len().div_ceil(part);
            bytes
                .chunks(part)
                .enumerate()
                .map(|(i, p)| {
                    let mut f = Vec::with_capacity(FRAGMENT_HEADER + p.len());
                    f.extend_from_slice(FRAGMENT_MAGIC);
                    f.push(u8::from(i + 1 == n));
                    f.extend_from_slice(p);
                    Value::Bin(f.into())
                })
                .collect()
        }
        _ => vec![Value::Bin(m.to_binary().into())],
    }
}

/// Decodes one whole handoff message from either encoding (fragments go through
/// [`Defragmenter`]).
fn from_value(v: &Value) -> Result<Message, String> {
    match v {
        Value::Bin(b) => Message::from_binary(b).map_err(|e| e.to_string()),
        Value::Str(s) => Message::from_json(s).map_err(|e| e.to_string()),
        Value::Map(_) => serde_json::from_value(v.to_json()).map_err(|e| e.to_string()),
        _ => Err("not a handoff message".into()),
    }
}

/// Reassembles `OHBF` fragments (raw connections) into whole handoff messages.
#[derive(Debug, Default)]
pub struct Defragmenter {
    partial: Vec<u8>,
    broken: bool,
}

impl Defragmenter {
    /// Feeds one received value; returns a decoded message when one is complete.
    ///
    /// # Errors
    /// An undecodable message, or fragments adding up to more than the handoff message
    /// limit (the rest of that message is then skipped).
    pub fn push(&mut self, v: Value) -> Result<Option<Message>, String> {
        let Value::Bin(b) = &v else {
            return from_value(&v).map(Some);
        };
        if !b.starts_with(FRAGMENT_MAGIC) {
            if !self.partial.is_empty() || self.broken {
                self.partial.clear();
                self.broken = false;
                tracing::debug!("handoff: unfinished fragmented message dropped");
            }
            return from_value(&v).map(Some);
        }
        let Some(&last) = b.get(4) else {
            return Err("fragment without header".into());
        };
        let last = last != 0;
        if !self.broken {
            if self.partial.len() + b.len() - FRAGMENT_HEADER > super::message::MAX_MESSAGE_BYTES {
                self.partial = Vec::new();
                self.broken = true;
            } else {
                self.partial.extend_from_slice(&b[FRAGMENT_HEADER..]);
            }
        }
        if !last {
            return Ok(None);
        }
        if std::mem::take(&mut self.broken) {
            return Err("fragmented handoff message above the size limit".into());
        }
        let whole = std::mem::take(&mut self.partial);
        Message::from_binary(&whole)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

enum Inbound {
    Msg(ConnId, Message),
    Closed(ConnId),
}

/// A handoff connection over a byte-message transport (the node's WebSocket path): every
/// message one whole `OHB1` binary handoff message (no fragments). Dropping `tx` closes it.
#[derive(Debug)]
pub struct FrameLink {
    /// The remote peer id (declared by the successor on a WebSocket; checked against
    /// `hello.successor_peer_id`, and the HMAC proof binds it).
    pub peer: String,
    /// Metadata the remote declared (e.g. `github_run_id`), `Null` if none.
    pub metadata: serde_json::Value,
    /// Messages to the remote.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Messages from the remote; `None` once closed.
    pub rx: mpsc::Receiver<Vec<u8>>,
}

/// One handoff connection, whatever carries it.
#[derive(Debug)]
pub enum HandoffConn {
    /// A PeerJS DataConnection labelled `ouroboros-handoff`.
    DataChannel(DataConnection),
    /// The WebSocket path (`GET /handoff` on the predecessor's HTTP port).
    WebSocket(FrameLink),
}

impl From<DataConnection> for HandoffConn {
    fn from(c: DataConnection) -> Self {
        HandoffConn::DataChannel(c)
    }
}

impl HandoffConn {
    /// The remote peer id.
    pub fn peer(&self) -> &str {
        match self {
            HandoffConn::DataChannel(c) => c.peer(),
            HandoffConn::WebSocket(l) => &l.peer,
        }
    }

    /// The remote's metadata, if any.
    pub fn metadata(&self) -> Option<&serde_json::Value> {
        match self {
            HandoffConn::DataChannel(c) => c.metadata(),
            HandoffConn::WebSocket(l) => Some(&l.metadata).filter(|m| !m.is_null()),
        }
    }

    /// `webrtc` or `ws`.
    pub fn transport(&self) -> &'static str {
        match self {
            HandoffConn::DataChannel(_) => "webrtc",
            HandoffConn::WebSocket(_) => "ws",
        }
    }

    /// Closes the connection (`flush`: after what was sent).
    pub async fn close(self, flush: bool) {
        match self {
            HandoffConn::DataChannel(c) => c.close(flush).await,
            HandoffConn::WebSocket(l) => drop(l),
        }
    }
}

/// Spawns a reader task for `conn`; returns its writer channel.
fn attach(
    id: ConnId,
    conn: HandoffConn,
    inbox: mpsc::UnboundedSender<Inbound>,
) -> mpsc::UnboundedSender<Message> {
    let conn = match conn {
        HandoffConn::DataChannel(c) => c,
        HandoffConn::WebSocket(l) => return attach_frames(id, l, inbox),
    };
    let serialization = conn.serialization();
    let (sender, mut receiver) = conn.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        'send: while let Some(m) = rx.recv().await {
            for v in to_values(serialization, &m) {
                if sender.send(&v).await.is_err() {
                    break 'send;
                }
            }
        }
        sender.close(true).await;
    });
    tokio::spawn(async move {
        let mut defrag = Defragmenter::default();
        while let Some(item) = receiver.recv().await {
            match item.map_err(|e| e.to_string()).and_then(|v| defrag.push(v)) {
                Ok(None) => {}
                Ok(Some(m)) => {
                    if inbox.send(Inbound::Msg(id, m)).is_err() {
                        break;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "handoff: undecodable message dropped"),
            }
        }
        let _ = inbox.send(Inbound::Closed(id));
    });
    tx
}

/// [`attach`] for a [`FrameLink`]: whole binary handoff messages both ways.
fn attach_frames(
    id: ConnId,
    link: FrameLink,
    inbox: mpsc::UnboundedSender<Inbound>,
) -> mpsc::UnboundedSender<Message> {
    let FrameLink {
        tx: out, mut rx, ..
    } = link;
    let (tx, mut msgs) = mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = msgs.recv().await {
            if out.send(m.to_binary()).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            match Message::from_binary(&bytes) {
                Ok(m) => {
                    if inbox.send(Inbound::Msg(id, m)).is_err() {
                        break;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "handoff: undecodable message dropped"),
            }
        }
        let _ = inbox.send(Inbound::Closed(id));
    });
    tx
}

/// The running predecessor side.
pub struct PredecessorHandle {
    /// Route every handoff connection here.
    pub conns: mpsc::Sender<HandoffConn>,
    /// Every event of the core, after the driver acted on it (for the lifecycle:
    /// `Authenticated` → `SuccessorConnected`, `CutOver` → `CutOver`, `SuccessorLive` →
    /// `ClientsMoved`, `Aborted` → `HandoffAborted`).
    pub events: mpsc::UnboundedReceiver<PredecessorEvent>,
    /// The current phase (for `/status`).
    pub phase: watch::Receiver<PredecessorPhase>,
}

/// Runs `pred` on its own task: accepts handoff connections, exports the snapshot, streams
/// the tail, cuts over when ready (the relay goes `Draining`) and announces `moved` when
/// the successor is live. Every [`PredecessorEvent`] is also forwarded on `events`
/// (`ReadyForCutOver` is forwarded after the cut-over was made).
pub fn spawn_predecessor(mut pred: Predecessor, host: Arc<dyn HandoffHost>) -> PredecessorHandle {
    let (conn_tx, mut conn_rx) = mpsc::channel::<HandoffConn>(16);
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (phase_tx, phase_rx) = watch::channel(pred.phase());
    tokio::spawn(async move {
        let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Inbound>();
        let mut writers: HashMap<ConnId, mpsc::UnboundedSender<Message>> = HashMap::new();
        let mut next_id: ConnId = 1;
        // Woken when the relay queued replication events: the tail is pushed as it is
        // written, with no polling.
        let replication = host.replication_queued();
        loop {
            let now = Instant::now();
            // Pump the machine.
            loop {
                let mut progress = false;
                while let Some(ev) = pred.poll_event() {
                    progress = true;
                    match &ev {
                        PredecessorEvent::SnapshotNeeded => {
                            let started = Instant::now();
                            let snap = host.export_snapshot().await;
                            let chunk = pred.chunk_size();
                            let prepared = tokio::task::spawn_blocking(move || {
                                PreparedSnapshot::from_json(SnapshotJson::new(snap), chunk)
                            })
                            .await
                            .expect("hashing does not panic");
                            tracing::info!(
                                bytes = prepared.len(),
                                ms = started.elapsed().as_millis() as u64,
                                "handoff: snapshot exported and hashed"
                            );
                            pred.provide_snapshot(now, prepared);
                        }
                        PredecessorEvent::ReadyForCutOver => {
                            // The core decided; carry it out in one step on the relay.
                            let (events, hw) = host.enter_draining().await;
                            for e in events {
                                pred.push_tail(e);
                            }
                            pred.cut_over(now, hw);
                        }
                        PredecessorEvent::SuccessorLive {
                            successor_peer_id,
                            endpoints,
                            generation,
                        } => {
                            host.announce_moved(successor_peer_id, endpoints, *generation)
                                .await
                        }
                        PredecessorEvent::Aborted { .. } => host.stop_replication().await,
                        _ => {}
                    }
                    let _ = ev_tx.send(ev);
                }
                while let Some(t) = pred.poll_transmit() {
                    progress = true;
                    match t {
                        Transmit::Send(c, m) => {
                            if let Some(w) = writers.get(&c) {
                                let _ = w.send(m);
                            }
                        }
                        Transmit::Close(c) => {
                            writers.remove(&c);
                        }
                    }
                }
                if !progress {
                    break;
                }
            }
            phase_tx.send_if_modified(|p| {
                let new = pred.phase();
                (*p != new).then(|| *p = new).is_some()
            });
            let timeout = pred.poll_timeout();
            let sleep = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                c = conn_rx.recv() => match c {
                    Some(c) => {
                        let id = next_id;
                        next_id += 1;
                        let remote = c.peer().to_string();
                        tracing::info!(peer = %remote, transport = c.transport(), "handoff: successor connection");
                        writers.insert(id, attach(id, c, inbox_tx.clone()));
                        pred.handle_open(Instant::now(), id, &remote);
                    }
                    None => break,
                },
                Some(m) = inbox.recv() => match m {
                    Inbound::Msg(c, m) => pred.handle_message(Instant::now(), c, m),
                    Inbound::Closed(c) => {
                        writers.remove(&c);
                        pred.handle_close(Instant::now(), c);
                    }
                },
                _ = replication.notified(), if pred.wants_tail() => {
                    for e in host.take_replication().await {
                        pred.push_tail(e);
                    }
                }
                _ = sleep => pred.handle_timeout(Instant::now()),
            }
        }
    });
    PredecessorHandle {
        conns: conn_tx,
        events: ev_rx,
        phase: phase_rx,
    }
}

/// How a successor's handoff ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuccessorOutcome {
    /// The state is ours, discovery is published, the relay is primary.
    Live,
    /// Stopped trying; see `protocol/handoff.md` for what to do per reason.
    GaveUp {
        /// Why.
        reason: GiveUpReason,
        /// What the relay holds now.
        transferred: Transferred,
    },
}

/// Runs the successor side to its end. `connect` opens a handoff connection (an
/// `ouroboros-handoff` DataConnection, or the WebSocket path) to the predecessor (the successor's peer must be registered on the
/// predecessor's signaling server under the successor's peer id); `publish` publishes the
/// successor's discovery record. `phase` (optional) reports progress for `/status`.
///
/// Returns as soon as the relay is primary (`Live`) — delivering `live` to the predecessor
/// continues on a background task — or when the successor gives up.
pub async fn run_successor<C, CF, T, P, PF>(
    mut succ: Successor,
    host: Arc<dyn HandoffHost>,
    mut connect: C,
    mut publish: P,
    phase: Option<watch::Sender<SuccessorPhase>>,
) -> SuccessorOutcome
where
    C: FnMut() -> CF + Send + 'static,
    CF: Future<Output = Result<T, String>> + Send + 'static,
    T: Into<HandoffConn> + Send + 'static,
    P: FnMut() -> PF + Send,
    PF: Future<Output = Result<(), DiscoveryError>> + Send,
{
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Inbound>();
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<Result<HandoffConn, String>>();
    let mut writer: Option<(ConnId, mpsc::UnboundedSender<Message>)> = None;
    let mut next_id: ConnId = 1;
    let mut outcome: Option<SuccessorOutcome> = None;
    // The restore in progress (started by the first snapshot piece of a session).
    let mut restoring: Option<std::io::Result<RestoreWorker>> = None;
    loop {
        let now = Instant::now();
        loop {
            let mut progress = false;
            while let Some(ev) = succ.poll_event() {
                progress = true;
                match ev {
                    SuccessorEvent::Connect => {
                        let fut = connect();
                        let tx = conn_tx.clone();
                        tokio::spawn(async move {
                            let _ = tx.send(fut.await.map(Into::into));
                        });
                    }
                    SuccessorEvent::Close => writer = None,
                    SuccessorEvent::Authenticated { session, resumed } => {
                        tracing::info!(
                            session,
                            resumed,
                            "handoff: authenticated to the predecessor"
                        );
                    }
                    SuccessorEvent::Reset => {
                        restoring = None;
                        host.reset().await;
                    }
                    SuccessorEvent::RestorePiece(piece) => {
                        if restoring.is_none() {
                            restoring = Some(RestoreWorker::start(host.relay_config().await));
                        }
                        if let Some(Ok(w)) = &restoring {
                            w.feed(piece);
                        }
                    }
                    SuccessorEvent::RestoreFinish => {
                        let started = Instant::now();
                        let worker = match restoring.take() {
                            Some(w) => w,
                            None => RestoreWorker::start(host.relay_config().await),
                        };
                        let restored = match worker {
                            Ok(w) => w.finish().await,
                            Err(e) => Err(format!("cannot start the restore thread: {e}")),
                        };
                        match restored {
                            Ok(relay) => {
                                host.install(relay).await;
                                tracing::info!(
                                    ms = started.elapsed().as_millis() as u64,
                                    "handoff: snapshot restored"
                                );
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "handoff: snapshot cannot be restored")
                            }
                        }
                        succ.restore_done(Instant::now());
                    }
                    SuccessorEvent::ApplyTail(events) => {
                        if let Err(e) = host.apply(&events).await {
                            // The heads check will catch it and restart the session.
                            tracing::warn!(error = %e, "handoff: tail event not applied");
                        }
                    }
                    SuccessorEvent::CheckHighWater { .. } => {
                        let hw = host.high_water().await;
                        succ.confirm_high_water(now, &hw);
                    }
                    SuccessorEvent::Publish => match publish().await {
                        Ok(()) => {
                            host.set_mode(Mode::Primary).await;
                            succ.went_live(now);
                        }
                        Err(e) if e.is_stale() => {
                            tracing::warn!(error = %e, "handoff: another node owns this generation");
                            succ.publish_refused(now);
                        }
                        Err(e) => {
                            // The state is confirmed and the predecessor refuses writes:
                            // serving matters more than the record (retried by the node).
                            tracing::error!(error = %e, "handoff: publishing discovery failed; going live anyway");
                            host.set_mode(Mode::Primary).await;
                            succ.went_live(now);
                        }
                    },
                    SuccessorEvent::Done => outcome = Some(SuccessorOutcome::Live),
                    SuccessorEvent::GiveUp {
                        reason,
                        transferred,
                    } => {
                        return SuccessorOutcome::GaveUp {
                            reason,
                            transferred,
                        };
                    }
                }
            }
            while let Some(m) = succ.poll_transmit() {
                progress = true;
                if let Some((_, w)) = &writer {
                    let _ = w.send(m);
                }
            }
            if !progress {
                break;
            }
        }
        if let Some(p) = &phase {
            p.send_if_modified(|x| {
                let new = succ.phase();
                (*x != new).then(|| *x = new).is_some()
            });
        }
        if let Some(o) = outcome.take() {
            // Keep delivering `live` in the background until the predecessor has it.
            tokio::spawn(finish_live(
                succ, writer, inbox, conn_rx, conn_tx, inbox_tx, next_id, connect,
            ));
            return o;
        }
        let timeout = succ.poll_timeout();
        tokio::select! {
            Some(c) = conn_rx.recv() => match c {
                Ok(c) => {
                    let id = next_id;
                    next_id += 1;
                    writer = Some((id, attach(id, c, inbox_tx.clone())));
                    succ.handle_connected(Instant::now());
                }
                Err(e) => {
                    tracing::info!(error = %e, "handoff: cannot reach the predecessor yet");
                    succ.handle_disconnected(Instant::now());
                }
            },
            Some(m) = inbox.recv() => match m {
                Inbound::Msg(c, m) if writer.as_ref().is_some_and(|w| w.0 == c) => {
                    succ.handle_message(Instant::now(), m)
                }
                Inbound::Closed(c) if writer.as_ref().is_some_and(|w| w.0 == c) => {
                    writer = None;
                    succ.handle_disconnected(Instant::now());
                }
                _ => {}
            },
            _ = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => succ.handle_timeout(Instant::now()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn finish_live<C, CF, T>(
    mut succ: Successor,
    mut writer: Option<(ConnId, mpsc::UnboundedSender<Message>)>,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
    mut conn_rx: mpsc::UnboundedReceiver<Result<HandoffConn, String>>,
    conn_tx: mpsc::UnboundedSender<Result<HandoffConn, String>>,
    inbox_tx: mpsc::UnboundedSender<Inbound>,
    mut next_id: ConnId,
    mut connect: C,
) where
    C: FnMut() -> CF + Send + 'static,
    CF: Future<Output = Result<T, String>> + Send + 'static,
    T: Into<HandoffConn> + Send + 'static,
{
    loop {
        while let Some(ev) = succ.poll_event() {
            match ev {
                SuccessorEvent::Connect => {
                    let fut = connect();
                    let tx = conn_tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(fut.await.map(Into::into));
                    });
                }
                SuccessorEvent::Close => writer = None,
                _ => {}
            }
        }
        while let Some(m) = succ.poll_transmit() {
            if let Some((_, w)) = &writer {
                let _ = w.send(m);
            }
        }
        let Some(timeout) = succ.poll_timeout() else {
            tracing::debug!("handoff: predecessor has our `live`");
            return;
        };
        tokio::select! {
            Some(c) = conn_rx.recv() => match c {
                Ok(c) => {
                    let id = next_id;
                    next_id += 1;
                    writer = Some((id, attach(id, c, inbox_tx.clone())));
                    succ.handle_connected(Instant::now());
                }
                Err(_) => succ.handle_disconnected(Instant::now()),
            },
            Some(m) = inbox.recv() => match m {
                Inbound::Msg(c, m) if writer.as_ref().is_some_and(|w| w.0 == c) => {
                    succ.handle_message(Instant::now(), m)
                }
                Inbound::Closed(c) if writer.as_ref().is_some_and(|w| w.0 == c) => {
                    writer = None;
                    succ.handle_disconnected(Instant::now());
                }
                _ => {}
            },
            _ = tokio::time::sleep_until(timeout.into()) => succ.handle_timeout(Instant::now()),
        }
    }
}

/// Where the node hands its handoff connections: DataConnections labelled
/// [`HANDOFF_LABEL`](super::HANDOFF_LABEL) and `GET /handoff` WebSockets (set once the
/// predecessor driver runs; until then they are closed).
#[derive(Clone, Default)]
pub struct HandoffInbox {
    tx: Arc<Mutex<Option<mpsc::Sender<HandoffConn>>>>,
}

impl std::fmt::Debug for HandoffInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandoffInbox").finish_non_exhaustive()
    }
}

impl HandoffInbox {
    /// Connects the inbox to a running predecessor driver.
    pub fn set(&self, tx: mpsc::Sender<HandoffConn>) {
        *self.tx.lock().expect("inbox lock poisoned") = Some(tx);
    }

    /// Routes one handoff connection (dropped, which closes it, if nothing listens or
    /// too many wait).
    pub fn route(&self, conn: HandoffConn) {
        let tx = self.tx.lock().expect("inbox lock poisoned").clone();
        match tx {
            Some(tx) => {
                if tx.try_send(conn).is_err() {
                    tracing::warn!("handoff connection dropped: driver busy or stopped");
                }
            }
            None => {
                tracing::info!(peer = %conn.peer(), "handoff connection refused: no handoff driver")
            }
        }
    }
}
