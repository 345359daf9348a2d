//! The async drivers: [`Predecessor`] and [`Successor`] over PeerJS DataConnections, acting
//! on a relay through [`HandoffHost`](super::HandoffHost).
//!
//! - [`spawn_predecessor`]: the node routes every DataConnection labelled
//!   [`HANDOFF_LABEL`](super::HANDOFF_LABEL) to [`PredecessorHandle::conns`] and reads
//!   [`PredecessorHandle::events`] (lifecycle inputs).
//! - [`run_successor`]: connects to the predecessor through a caller-supplied `connect`
//!   function, transfers, publishes discovery through `publish`, and returns the outcome.

use super::host::{HandoffHost, HostOps};
use super::message::Sealed;
use super::restore::RestoreWorker;
use super::transport::{HandoffConn, Inbound, attach};
use super::{
    ConnId, GiveUpReason, Predecessor, PredecessorEvent, PredecessorPhase, PreparedSnapshot,
    Successor, SuccessorEvent, SuccessorPhase, Transferred, Transmit,
};
use crate::discovery::DiscoveryError;
use crate::peer::PeerError;
use crate::relay::{Mode, SnapshotJson};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{mpsc, watch};

/// The successor could not open a handoff connection to its predecessor.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The predecessor listed no signaling endpoint.
    #[error("no predecessor endpoint")]
    NoEndpoint,
    /// Every endpoint failed: (`host:port`, why), in the order tried.
    #[error("{}", .0.iter().map(|(ep, e)| format!("{ep}: {e}")).collect::<Vec<_>>().join("; "))]
    Unreachable(Vec<(String, PeerError)>),
    /// The peer could not connect.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// No DataChannel opened within the WebRTC time limit (`--handoff-fallback-after`).
    #[error("no DataChannel within {0:?}")]
    TimedOut(std::time::Duration),
    /// The handoff WebSocket could not be opened at any endpoint: (URL, why).
    #[error("{}", .0.iter().map(|(url, e)| format!("{url}: {e}")).collect::<Vec<_>>().join("; "))]
    WebSocket(Vec<(String, String)>),
    /// Every path failed: (`webrtc` or `ws`, why), in the order tried.
    #[error("{}", .0.iter().map(|(path, e)| format!("{path}: {e}")).collect::<Vec<_>>().join("; "))]
    AllPaths(Vec<(&'static str, ConnectError)>),
}

/// The running predecessor side.
pub struct PredecessorHandle {
    /// Route every handoff connection here (DataConnection or WebSocket).
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
        let mut writers: HashMap<ConnId, mpsc::UnboundedSender<Sealed>> = HashMap::new();
        let mut next_id = ConnId(1);
        // Woken when the relay queued replication events: the tail is pushed as it is
        // written, with no polling.
        let replication = host.replication_queued();
        loop {
            let now = Instant::now();
            // Pump the machine.
            while let Some(out) = next_output(
                &mut pred,
                Predecessor::poll_event,
                Predecessor::poll_transmit,
            ) {
                let ev = match out {
                    Output::Event(ev) => ev,
                    Output::Transmit(Transmit::Send(c, m)) => {
                        if let Some(w) = writers.get(&c) {
                            let _ = w.send(m);
                        }
                        continue;
                    }
                    Output::Transmit(Transmit::Close(c)) => {
                        writers.remove(&c);
                        continue;
                    }
                };
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
            set_phase(&phase_tx, pred.phase());
            let sleep = sleep_until(pred.poll_timeout());
            tokio::select! {
                c = conn_rx.recv() => match c {
                    Some(c) => {
                        let id = next_id;
                        next_id.0 += 1;
                        let remote = c.peer().to_string();
                        let origin = c.origin();
                        tracing::debug!(peer = %remote, %origin, transport = c.transport(), "handoff: successor connection");
                        writers.insert(id, attach(id, c, inbox_tx.clone()));
                        pred.handle_open_from(Instant::now(), id, &remote, &origin);
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

/// One output of a core.
enum Output<E, T> {
    Event(E),
    Transmit(T),
}

/// A sans-IO core's ([`Predecessor`]'s, [`Successor`]'s) next output, taken with its
/// `poll_event` and `poll_transmit`: its events first (acting on one may queue more of
/// both), then its transmits. A driver takes them until there is none: the core is quiet.
fn next_output<C, E, T>(
    core: &mut C,
    poll_event: fn(&mut C) -> Option<E>,
    poll_transmit: fn(&mut C) -> Option<T>,
) -> Option<Output<E, T>> {
    match poll_event(core) {
        Some(ev) => Some(Output::Event(ev)),
        None => poll_transmit(core).map(Output::Transmit),
    }
}

/// Reports `new` on `phase` (watchers are woken only when it changed).
fn set_phase<T: PartialEq>(phase: &watch::Sender<T>, new: T) {
    phase.send_if_modified(|p| (*p != new).then(|| *p = new).is_some());
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

/// The result of a connection attempt to the predecessor: a new connection (numbered from
/// `next_id`, its messages to `inbox_tx`) becomes the current `writer`; a failure is
/// reported to `succ` and returned.
fn on_connect_result(
    succ: &mut Successor,
    writer: &mut Option<(ConnId, mpsc::UnboundedSender<Sealed>)>,
    next_id: &mut ConnId,
    inbox_tx: &mpsc::UnboundedSender<Inbound>,
    result: Result<HandoffConn, ConnectError>,
) -> Result<(), ConnectError> {
    match result {
        Ok(c) => {
            let id = *next_id;
            next_id.0 += 1;
            *writer = Some((id, attach(id, c, inbox_tx.clone())));
            succ.handle_connected(Instant::now());
            Ok(())
        }
        Err(e) => {
            succ.handle_disconnected(Instant::now());
            Err(e)
        }
    }
}

/// A message or close from the predecessor's connection; anything from an older connection
/// than the current `writer`'s is ignored.
fn on_inbound(
    succ: &mut Successor,
    writer: &mut Option<(ConnId, mpsc::UnboundedSender<Sealed>)>,
    m: Inbound,
) {
    match m {
        Inbound::Msg(c, m) if writer.as_ref().is_some_and(|w| w.0 == c) => {
            succ.handle_message(Instant::now(), m)
        }
        Inbound::Closed(c) if writer.as_ref().is_some_and(|w| w.0 == c) => {
            *writer = None;
            succ.handle_disconnected(Instant::now());
        }
        _ => {}
    }
}

/// Runs the successor side to its end. `connect` opens an `ouroboros-handoff`
/// DataConnection to the predecessor (the successor's peer must be registered on the
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
    CF: Future<Output = Result<T, ConnectError>> + Send + 'static,
    T: Into<HandoffConn> + Send + 'static,
    P: FnMut() -> PF + Send,
    PF: Future<Output = Result<(), DiscoveryError>> + Send,
{
    let (inbox_tx, mut inbox) = mpsc::unbounded_channel::<Inbound>();
    let (conn_tx, mut conn_rx) = mpsc::unbounded_channel::<Result<HandoffConn, ConnectError>>();
    let mut writer: Option<(ConnId, mpsc::UnboundedSender<Sealed>)> = None;
    let mut next_id = ConnId(1);
    let mut outcome: Option<SuccessorOutcome> = None;
    // The restore in progress (started by the first snapshot piece of a session).
    let mut restoring: Option<std::io::Result<RestoreWorker>> = None;
    loop {
        let now = Instant::now();
        while let Some(out) =
            next_output(&mut succ, Successor::poll_event, Successor::poll_transmit)
        {
            let ev = match out {
                Output::Event(ev) => ev,
                Output::Transmit(m) => {
                    if let Some((_, w)) = &writer {
                        let _ = w.send(m);
                    }
                    continue;
                }
            };
            match ev {
                SuccessorEvent::Connect => spawn_connect(connect(), &conn_tx),
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
                        Err(e) => Err(e.into()),
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
                SuccessorEvent::Publish => {
                    // Writable before the record names this node (the predecessor already
                    // refuses writes): a client that reads the record and connects at
                    // once is not refused as `read_only`.
                    host.set_mode(Mode::Primary).await;
                    match publish().await {
                        Ok(()) => succ.went_live(now),
                        Err(e) if e.is_stale() => {
                            host.set_mode(Mode::Draining).await;
                            tracing::warn!(error = %e, "handoff: another node owns this generation");
                            succ.publish_refused(now);
                        }
                        Err(e) => {
                            // The state is confirmed and the predecessor refuses writes:
                            // serving matters more than the record (retried by the node).
                            tracing::error!(error = %e, "handoff: publishing discovery failed; going live anyway");
                            succ.went_live(now);
                        }
                    }
                }
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
        if let Some(p) = &phase {
            set_phase(p, succ.phase());
        }
        if let Some(o) = outcome.take() {
            // Keep delivering `live` in the background until the predecessor has it.
            tokio::spawn(finish_live(
                succ, writer, inbox, conn_rx, conn_tx, inbox_tx, next_id, connect,
            ));
            return o;
        }
        let sleep = sleep_until(succ.poll_timeout());
        tokio::select! {
            Some(c) = conn_rx.recv() => {
                if let Err(e) = on_connect_result(&mut succ, &mut writer, &mut next_id, &inbox_tx, c) {
                    tracing::info!(error = %e, "handoff: cannot reach the predecessor yet");
                }
            }
            Some(m) = inbox.recv() => on_inbound(&mut succ, &mut writer, m),
            _ = sleep => succ.handle_timeout(Instant::now()),
        }
    }
}

/// Runs one connection attempt (`SuccessorEvent::Connect`) in the background; its result
/// arrives on `conn_tx`.
fn spawn_connect<CF, T>(
    attempt: CF,
    conn_tx: &mpsc::UnboundedSender<Result<HandoffConn, ConnectError>>,
) where
    CF: Future<Output = Result<T, ConnectError>> + Send + 'static,
    T: Into<HandoffConn> + Send + 'static,
{
    let tx = conn_tx.clone();
    tokio::spawn(async move {
        let _ = tx.send(attempt.await.map(Into::into));
    });
}

#[allow(clippy::too_many_arguments)]
async fn finish_live<C, CF, T>(
    mut succ: Successor,
    mut writer: Option<(ConnId, mpsc::UnboundedSender<Sealed>)>,
    mut inbox: mpsc::UnboundedReceiver<Inbound>,
    mut conn_rx: mpsc::UnboundedReceiver<Result<HandoffConn, ConnectError>>,
    conn_tx: mpsc::UnboundedSender<Result<HandoffConn, ConnectError>>,
    inbox_tx: mpsc::UnboundedSender<Inbound>,
    mut next_id: ConnId,
    mut connect: C,
) where
    C: FnMut() -> CF + Send + 'static,
    CF: Future<Output = Result<T, ConnectError>> + Send + 'static,
    T: Into<HandoffConn> + Send + 'static,
{
    loop {
        while let Some(out) =
            next_output(&mut succ, Successor::poll_event, Successor::poll_transmit)
        {
            match out {
                Output::Event(SuccessorEvent::Connect) => spawn_connect(connect(), &conn_tx),
                Output::Event(SuccessorEvent::Close) => writer = None,
                Output::Event(_) => {}
                Output::Transmit(m) => {
                    if let Some((_, w)) = &writer {
                        let _ = w.send(m);
                    }
                }
            }
        }
        let Some(timeout) = succ.poll_timeout() else {
            tracing::debug!("handoff: predecessor has our `live`");
            return;
        };
        tokio::select! {
            Some(c) = conn_rx.recv() => {
                let _ = on_connect_result(&mut succ, &mut writer, &mut next_id, &inbox_tx, c);
            }
            Some(m) = inbox.recv() => on_inbound(&mut succ, &mut writer, m),
            _ = tokio::time::sleep_until(timeout.into()) => succ.handle_timeout(Instant::now()),
        }
    }
}

/// Where the node hands its handoff connections (`GET /handoff` WebSockets too): DataConnections labelled
/// [`HANDOFF_LABEL`](super::HANDOFF_LABEL) (set once the predecessor driver runs; until
/// then they are closed).
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
