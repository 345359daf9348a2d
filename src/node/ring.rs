//! The ring for `ouroboros node`: joins the predecessor (or recovers without it), serves
//! the handoff to the successor, launches the successor on time, writes backups, and says
//! when the node must stop.
//!
//! Composition, not logic: the decisions are made by the sans-IO [`Lifecycle`] (when to
//! launch, when to exit) and the handoff cores (when to cut over); this file wires them to
//! the node's relay, its peer and the launcher.

use super::{LifecycleView, Node, NodeArgs};
use crate::client::Transport;
use crate::discovery::{LocalPublisher, Publisher, SignalingEndpoint};
use crate::handoff::{
    BackupError, BackupKey, BackupStore, ConnectError, DEFAULT_GAP_MARGIN, DirBackupStore,
    GiveUpReason, HANDOFF_LABEL, HandoffConn, HandoffHost, HostOps, Predecessor, PredecessorEvent,
    Secret, SecretError, Successor, SuccessorOutcome, recover, run_successor, spawn_backups,
    spawn_predecessor,
};
use crate::lifecycle::{
    ExitReason, Launcher, LauncherKind, Lifecycle, LifecycleAction, LifecycleInput, LifecycleState,
    LocalLauncher, NoLauncher, PlanError, SuccessorRequest,
};
use crate::peer::codec::Serialization;
use crate::peer::{ConnectOptions, DataConnection, Peer, PeerConfig};
use crate::relay::Mode;
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// File in the data dir holding the pid of the ring's current primary node
/// (`kill -INT $(cat ouroboros-data/ouroboros.pid)` stops the ring).
pub const PID_FILE: &str = "ouroboros.pid";

/// Parts another module may supply (e.g. GitHub's launcher and Pages publisher).
#[derive(Default)]
pub struct RingOptions {
    /// Starts successors; default from `--launcher` (`local`, `none`).
    pub launcher: Option<Arc<dyn Launcher>>,
    /// Publishes discovery; default: the data dir.
    pub publisher: Option<Arc<dyn Publisher>>,
    /// Keeps backups; default: `--backup-dir`, if set.
    pub backups: Option<Arc<dyn BackupStore>>,
    /// With `--launcher github`: a successor's handoff connection must carry its
    /// `GITHUB_RUN_ID` (metadata `github_run_id`), checked through the runs API before the
    /// HMAC handshake even starts (in addition to it, never instead).
    pub verifier: Option<crate::github::RunVerifier>,
}

/// Metadata key of the successor's `GITHUB_RUN_ID` on its handoff connection.
pub const RUN_ID_METADATA: &str = "github_run_id";

/// Forwards handoff connections to `to` only when their claimed run id passes `verifier`;
/// the others are logged and closed. Verdicts are cached and API calls rate limited
/// ([`crate::github::CachedRunVerifier`]): a flood of connections costs O(1) calls.
fn verified_handoff_inbox(
    verifier: crate::github::RunVerifier,
    to: tokio::sync::mpsc::Sender<HandoffConn>,
) -> tokio::sync::mpsc::Sender<HandoffConn> {
    let verifier = crate::github::CachedRunVerifier::new(
        verifier,
        crate::github::RunCacheConfig::default(),
        Instant::now(),
    );
    let (tx, mut rx) = tokio::sync::mpsc::channel::<HandoffConn>(4);
    tokio::spawn(async move {
        while let Some(conn) = rx.recv().await {
            let claimed = conn
                .metadata()
                .and_then(|m| m.get(RUN_ID_METADATA))
                .and_then(|v| v.as_str())
                .map(str::to_owned);
            let verdict = match claimed {
                Some(id) => verifier.verify(Instant::now(), &id).await,
                None => Err("no GITHUB_RUN_ID in the handoff connection".to_string()),
            };
            match verdict {
                Ok(run) => {
                    tracing::info!(peer = conn.peer(), run, "successor's run verified");
                    if to.send(conn).await.is_err() {
                        return;
                    }
                }
                Err(reason) => {
                    tracing::info!(peer = conn.peer(), %reason, "handoff refused: run check failed");
                    conn.close(false).await;
                }
            }
        }
    });
    tx
}

/// Forwards handoff connections to `to`, recording each one's path for `/status.json`.
fn observed_handoff_inbox(
    shared: Arc<super::NodeShared>,
    to: tokio::sync::mpsc::Sender<HandoffConn>,
) -> tokio::sync::mpsc::Sender<HandoffConn> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<HandoffConn>(4);
    tokio::spawn(async move {
        while let Some(conn) = rx.recv().await {
            shared.set_handoff_transport(conn.transport());
            if to.send(conn).await.is_err() {
                return;
            }
        }
    });
    tx
}

/// Errors that stop a node before it serves.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The lifecycle flags are invalid.
    #[error("{0}")]
    Plan(#[from] PlanError),
    /// `OUROBOROS_SECRET` is invalid.
    #[error("{0}")]
    Secret(#[from] SecretError),
    /// The local launcher cannot be set up.
    #[error("local launcher: {0}")]
    Launcher(#[source] std::io::Error),
    /// The predecessor was lost and recovery failed (this node must not serve).
    #[error("handoff failed: recovery: {0}")]
    Recovery(#[from] BackupError),
    /// The successor gave up for a reason that forbids serving (see `protocol/handoff.md`).
    #[error("handoff failed: {0:?}")]
    GaveUp(GiveUpReason),
}

fn view(l: &Lifecycle) -> LifecycleView {
    let now = Instant::now();
    let st = l.status(now, SystemTime::now());
    LifecycleView {
        state: l.state().name().replace('_', "-"),
        next_rotation: l.launch_at().filter(|t| *t > now),
        expires_at: st.expires_at,
    }
}

/// Runs the node's life until it must stop; returns why.
///
/// # Errors
/// [`RingError`] if the flags are invalid or a successor could not take over (it then
/// never served a write).
pub async fn run(
    node: &Node,
    args: &NodeArgs,
    opts: RingOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ExitReason, RingError> {
    let la = &args.lifecycle;
    let plan = la.plan()?;
    let secret = node.shared().secret().clone();
    let host: Arc<dyn HandoffHost> = Arc::new(node.relay().clone());
    let publisher: Arc<dyn Publisher> = opts
        .publisher
        .unwrap_or_else(|| Arc::new(LocalPublisher::new(la.data_dir.clone())));
    let backups: Option<Arc<dyn BackupStore>> = opts.backups.or_else(|| {
        la.backup_dir
            .clone()
            // Encrypted with the ring's key: the folder may be carried off the machine
            // (the workflow keeps it in the Actions cache).
            .map(|d| {
                Arc::new(DirBackupStore::new(d, 5).with_key(BackupKey::derive(&secret)))
                    as Arc<dyn BackupStore>
            })
    });
    let launcher: Arc<dyn Launcher> = match opts.launcher {
        Some(l) => l,
        None => match la.launcher {
            LauncherKind::Local => Arc::new(
                LocalLauncher::from_current_process(la.data_dir.clone(), secret.clone())
                    .map_err(RingError::Launcher)?,
            ),
            LauncherKind::Github => {
                tracing::error!(
                    "--launcher github needs the GitHub launcher from `github`; not launching"
                );
                Arc::new(NoLauncher)
            }
            LauncherKind::None => Arc::new(NoLauncher),
        },
    };
    let peer_id = node.peer_id();
    let generation = la.generation;
    let fence_interval = plan.fence_interval;
    let drain_timeout = plan.drain_timeout;
    let mut lifecycle = Lifecycle::new(
        plan,
        generation,
        la.is_successor(),
        Instant::now(),
        SystemTime::now(),
    );
    node.set_lifecycle(view(&lifecycle));

    let mut shutdown = Box::pin(shutdown);
    if la.is_successor() {
        // Invariant: no writes before the handoff is confirmed.
        node.relay()
            .with_relay(|r| r.set_mode(Mode::Draining))
            .await;
        let join = join(
            node,
            args,
            &secret,
            host.clone(),
            publisher.clone(),
            backups.clone(),
        );
        let joined = tokio::select! {
            r = join => r?,
            _ = &mut shutdown => return Ok(ExitReason::Shutdown),
        };
        lifecycle.handle(
            Instant::now(),
            match joined {
                Joined::Primary => LifecycleInput::Joined,
                Joined::Superseded => LifecycleInput::Superseded,
            },
        );
        if let LifecycleState::Exited { reason } = lifecycle.state() {
            // Another successor of our generation is primary: we never served; stop cleanly.
            tracing::info!(
                generation,
                "another successor of this generation took over; stopping"
            );
            node.set_lifecycle(view(&lifecycle));
            return Ok(reason);
        }
    }
    write_pid(&la.data_dir);
    node.set_lifecycle(view(&lifecycle));

    // Serve the handoff to our successor.
    let pred = Predecessor::new(
        peer_id.clone(),
        generation,
        secret.clone(),
        la.handoff_config(),
        Instant::now(),
        rand::SeedableRng::from_os_rng(),
    );
    let mut handle = spawn_predecessor(pred, host.clone());
    let conns = observed_handoff_inbox(node.shared().clone(), handle.conns.clone());
    match opts.verifier.clone() {
        Some(v) => node.shared().handoff.set(verified_handoff_inbox(v, conns)),
        None => node.shared().handoff.set(conns),
    }

    let backup_task = backups.clone().map(|store| {
        spawn_backups(
            host.clone(),
            store,
            la.backup_interval,
            generation,
            peer_id.clone(),
        )
    });
    let faults = crate::lifecycle::Faults::from_env();
    let (launch_tx, mut launch_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    // Whether a successor took over (then it, not us, is the ring's newest generation).
    let mut successor_live = false;
    // Liveness rule 5: a serving node reads the published record now and then; a newer
    // generation it did not hand over to means a successor gave up on it and recovered.
    let mut fence = tokio::time::interval(fence_interval);
    fence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut moves = node.shared().endpoint_moves();
    if *moves.borrow() > 0 {
        // Moved before the ring started: publish that record too.
        moves.mark_changed();
    }
    let reason = loop {
        while let Some(action) = lifecycle.poll_action() {
            match action {
                LifecycleAction::Launch { attempt } => {
                    let req = SuccessorRequest {
                        generation: generation + 1,
                        predecessor_peer_id: peer_id.clone(),
                        predecessor_endpoints: node.record().signaling,
                        attempt,
                        member: None,
                    };
                    let launcher = launcher.clone();
                    let tx = launch_tx.clone();
                    tokio::spawn(async move {
                        let r = launcher.launch(&req).await.map_err(|e| e.to_string());
                        let _ = tx.send(r);
                    });
                }
                LifecycleAction::Exit(reason) => {
                    // Liveness rule 1: leaving without a successor, stop writes and leave a
                    // final backup (a successor recovering from it opens no gap).
                    let mut final_backup = false;
                    // (Not when fenced: this node's state diverged from the primary's, and
                    // a final backup of it must not be what the next recovery picks.)
                    if !matches!(reason, ExitReason::HandedOff | ExitReason::Fenced)
                        && let Some(store) = &backups
                    {
                        if let Some(t) = &backup_task {
                            t.abort();
                        }
                        final_backup = crate::handoff::recovery::final_backup(
                            &*host, &**store, generation, &peer_id,
                        )
                        .await
                        .is_ok();
                    }
                    // ...and a discovery record that says so.
                    if let Some(why) = ended_reason(reason) {
                        let mut record = node.record();
                        record.ended = Some(crate::discovery::Ended {
                            at: SystemTime::now(),
                            reason: why.into(),
                            final_backup,
                        });
                        node.set_record(record);
                        match publisher.publish(&node.record()).await {
                            Ok(()) => tracing::info!(
                                reason = why,
                                final_backup,
                                "record says the node ended"
                            ),
                            Err(e) => tracing::warn!(error = %e, "final record not published"),
                        }
                    }
                    break;
                }
            }
        }
        if let LifecycleState::Exited { reason } = lifecycle.state() {
            break reason;
        }
        node.set_lifecycle(view(&lifecycle));
        let timeout = lifecycle.poll_timeout();
        tokio::select! {
            _ = &mut shutdown => lifecycle.handle(Instant::now(), LifecycleInput::Shutdown),
            _ = fence.tick(), if fenceable(&lifecycle) => {
                if let Ok(Some(r)) = publisher.current().await
                    && r.generation > generation
                    && r.peer_id != peer_id
                {
                    tracing::error!(
                        generation,
                        published = r.generation,
                        by = %r.peer_id,
                        "a newer generation was published by a node that did not take over from \
                         this one (it gave up on it: split brain); stepping down and sending the \
                         clients there"
                    );
                    host.set_mode(Mode::Draining).await;
                    host.announce_moved(&r.peer_id, &r.signaling, r.generation).await;
                    // Let `moved` reach the clients before the node stops.
                    tokio::time::sleep(drain_timeout.min(Duration::from_secs(2))).await;
                    lifecycle.handle(Instant::now(), LifecycleInput::NewerGenerationPublished);
                }
            }
            Ok(()) = moves.changed() => {
                // The node moved to a fresh id on a server where its id was taken: the
                // record names it; publish it (a newer generation's record is never
                // overwritten, so this is harmless once a successor took over).
                if let Err(e) = publisher.publish(&node.record()).await {
                    tracing::warn!(error = %e, "record with the moved id not published");
                }
            }
            Some(r) = launch_rx.recv() => lifecycle.handle(Instant::now(), match r {
                Ok(()) => LifecycleInput::LaunchSucceeded,
                Err(e) => LifecycleInput::LaunchFailed(e),
            }),
            Some(ev) = handle.events.recv() => {
                let input = match ev {
                    // Test-only fault (`OUROBOROS_FAULTS`): the host ends mid-transfer.
                    PredecessorEvent::Authenticated { .. } if faults.vanish_mid_transfer() => {
                        tracing::warn!("fault injection: the host ends mid-transfer");
                        Some(LifecycleInput::HostEnding)
                    }
                    PredecessorEvent::Authenticated { .. } => Some(LifecycleInput::SuccessorConnected),
                    PredecessorEvent::CutOver => Some(LifecycleInput::CutOver),
                    PredecessorEvent::SuccessorLive { .. } => {
                        successor_live = true;
                        Some(LifecycleInput::ClientsMoved)
                    }
                    PredecessorEvent::Aborted { .. } => Some(LifecycleInput::HandoffAborted),
                    _ => None,
                };
                if let Some(i) = input {
                    lifecycle.handle(Instant::now(), i);
                }
            }
            _ = async {
                match timeout {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => lifecycle.handle_timeout(Instant::now()),
        }
    };
    if let Some(t) = backup_task {
        t.abort();
    }
    if reason == ExitReason::Shutdown && !successor_live {
        // Stopping the ring: a successor still starting would give up on us, recover and
        // carry the ring on.
        launcher.abandon().await;
    }
    node.set_lifecycle(view(&lifecycle));
    remove_pid(&la.data_dir);
    Ok(reason)
}

/// Whether the node may be fenced now (rule 5): it serves and no successor of its own is
/// taking over (that one publishes the next generation legitimately).
fn fenceable(l: &Lifecycle) -> bool {
    matches!(
        l.state(),
        LifecycleState::Serving
            | LifecycleState::Launching { .. }
            | LifecycleState::AwaitingSuccessor { .. }
    )
}

/// The record's `ended.reason` for a node leaving with `reason` without a successor; `None`
/// when it handed off (its successor's record replaces it) or never served (superseded).
fn ended_reason(reason: ExitReason) -> Option<&'static str> {
    match reason {
        ExitReason::Shutdown => Some("shutdown"),
        ExitReason::NoSuccessor => Some("no_successor"),
        ExitReason::HardDeadline => Some("host_ending"),
        ExitReason::HandedOff | ExitReason::Superseded | ExitReason::Fenced => None,
    }
}

/// Writes this process's pid into `<dir>/ouroboros.pid`.
pub(crate) fn write_pid(dir: &std::path::Path) {
    let _ = crate::discovery::local::write_atomic(
        &dir.join(PID_FILE),
        std::process::id().to_string().as_bytes(),
    );
}

/// Removes `<dir>/ouroboros.pid` if it still holds this process's pid.
pub(crate) fn remove_pid(dir: &std::path::Path) {
    let path = dir.join(PID_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == std::process::id().to_string()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The successor's way to its predecessor, as `run_successor` calls it: every endpoint the
/// predecessor listed is tried in turn, starting with the one that worked last (our peer
/// there is kept open between attempts), and a `raw` `ouroboros-handoff` DataConnection is
/// opened (on GitHub Actions carrying `GITHUB_RUN_ID` for the predecessor's run check).
/// On Actions the first endpoint is the predecessor's own loopback address, which from
/// another runner reaches nothing (or our own server), so the PeerJS cloud or tunnel
/// endpoints after it must get their chance. `configure` adjusts each peer's settings
/// (production adds the node's ICE servers; tests pin the UDP sockets to loopback).
pub fn predecessor_connector(
    endpoints: Vec<SignalingEndpoint>,
    my_id: String,
    pred_id: String,
    configure: impl Fn(&mut PeerConfig) + Send + Sync + 'static,
) -> impl FnMut() -> BoxFuture<'static, Result<DataConnection, ConnectError>> + Send + 'static {
    // Our peer on the predecessor's signaling server that last worked, opened on first use:
    // (index into `endpoints`, peer).
    type Slot = Option<(usize, Arc<Peer>)>;
    let peer: Arc<tokio::sync::Mutex<Slot>> = Arc::default();
    let configure = Arc::new(configure);
    move || {
        let peer = peer.clone();
        let endpoints = endpoints.clone();
        let my_id = my_id.clone();
        let pred_id = pred_id.clone();
        let configure = configure.clone();
        Box::pin(async move {
            if endpoints.is_empty() {
                return Err(ConnectError::NoEndpoint);
            }
            let mut slot = peer.lock().await;
            // Start with the endpoint that worked last time, then the others in order.
            let first = slot.as_ref().map(|(i, _)| *i).unwrap_or(0);
            let mut errors = Vec::new();
            for k in 0..endpoints.len() {
                let i = (first + k) % endpoints.len();
                let ep = &endpoints[i];
                let at = format!("{}:{}", ep.host, ep.port);
                let reuse = slot
                    .as_ref()
                    .filter(|(j, p)| *j == i && !p.is_closed())
                    .map(|(_, p)| p.clone());
                let p = match reuse {
                    Some(p) => p,
                    None => {
                        let mut cfg = PeerConfig::new(ep.host.clone(), ep.port);
                        cfg.path = ep.path.clone();
                        cfg.key = ep.key.clone();
                        cfg.secure = ep.secure;
                        cfg.id = Some(my_id.clone());
                        cfg.connect_timeout = Duration::from_secs(10);
                        cfg.http_headers = crate::tunnel::node_http_headers();
                        configure(&mut cfg);
                        match Peer::open(cfg).await {
                            Ok(p) => Arc::new(p),
                            Err(e) => {
                                errors.push((at, e));
                                continue;
                            }
                        }
                    }
                };
                match p
                    .connect(
                        ep.peer_id_or(&pred_id),
                        ConnectOptions {
                            label: Some(HANDOFF_LABEL.into()),
                            // Whole handoff messages per DataConnection message
                            // (no BinaryPack 16 KB chunking): faster bulk.
                            serialization: Serialization::Raw,
                            reliable: true,
                            // On Actions the predecessor checks this run through the API.
                            metadata: std::env::var("GITHUB_RUN_ID")
                                .ok()
                                .map(|id| serde_json::json!({ RUN_ID_METADATA: id })),
                        },
                    )
                    .await
                {
                    Ok(conn) => {
                        *slot = Some((i, p));
                        return Ok(conn);
                    }
                    Err(e) => errors.push((at, e)),
                }
            }
            *slot = None;
            Err(ConnectError::Unreachable(errors))
        })
    }
}

/// The successor's way to its predecessor with the path `--handoff-transport` chooses:
/// `rtc` (a DataConnection through its signaling), the handoff WebSocket on its HTTP port
/// (`/handoff` of each endpoint: its own server, its tunnel), or `auto`: WebRTC for at most
/// `fallback_after`, then the WebSocket (which goes first on later reconnects once it was
/// needed). The path used is logged and recorded for `/status.json`.
fn fallback_connector(
    mut rtc: impl FnMut() -> BoxFuture<'static, Result<DataConnection, ConnectError>> + Send + 'static,
    endpoints: Vec<SignalingEndpoint>,
    my_id: String,
    transport: Transport,
    fallback_after: Duration,
    shared: Arc<super::NodeShared>,
) -> impl FnMut() -> BoxFuture<'static, Result<HandoffConn, ConnectError>> + Send + 'static {
    let prefer_ws = Arc::new(std::sync::atomic::AtomicBool::new(false));
    move || {
        let ws_first = prefer_ws.load(std::sync::atomic::Ordering::Relaxed);
        let order: &'static [Transport] = match (transport, ws_first) {
            (Transport::Webrtc, _) => &[Transport::Webrtc],
            (Transport::Ws, _) => &[Transport::Ws],
            (Transport::Auto, false) => &[Transport::Webrtc, Transport::Ws],
            (Transport::Auto, true) => &[Transport::Ws, Transport::Webrtc],
        };
        // Only start the WebRTC attempt if it is tried (it opens a peer).
        let rtc_attempt = order.contains(&Transport::Webrtc).then(&mut rtc);
        let endpoints = endpoints.clone();
        let my_id = my_id.clone();
        let prefer_ws = prefer_ws.clone();
        let shared = shared.clone();
        Box::pin(async move {
            let mut rtc_attempt = rtc_attempt;
            let mut errors = Vec::new();
            for t in order {
                let attempt = match t {
                    Transport::Ws => connect_ws(&endpoints, &my_id).await,
                    _ => {
                        let Some(fut) = rtc_attempt.take() else {
                            continue;
                        };
                        if transport == Transport::Auto {
                            match tokio::time::timeout(fallback_after, fut).await {
                                Ok(r) => r.map(HandoffConn::from),
                                Err(_) => Err(ConnectError::TimedOut(fallback_after)),
                            }
                        } else {
                            fut.await.map(HandoffConn::from)
                        }
                    }
                };
                match attempt {
                    Ok(conn) => {
                        tracing::info!(
                            transport = conn.transport(),
                            after = %ConnectError::AllPaths(std::mem::take(&mut errors)),
                            "handoff: connected to the predecessor"
                        );
                        if transport == Transport::Auto {
                            prefer_ws.store(
                                conn.transport() == "ws",
                                std::sync::atomic::Ordering::Relaxed,
                            );
                        }
                        shared.set_handoff_transport(conn.transport());
                        return Ok(conn);
                    }
                    Err(e) => errors.push((t.as_str(), e)),
                }
            }
            Err(ConnectError::AllPaths(errors))
        })
    }
}

/// The handoff WebSocket (`/handoff` on the predecessor's HTTP port) through one of its
/// endpoints: its own server, or its tunnel (which carries TCP only; no UDP needed).
async fn connect_ws(
    endpoints: &[SignalingEndpoint],
    my_id: &str,
) -> Result<HandoffConn, ConnectError> {
    if endpoints.is_empty() {
        return Err(ConnectError::NoEndpoint);
    }
    let run_id = std::env::var("GITHUB_RUN_ID").ok();
    let mut errors = Vec::new();
    for ep in endpoints {
        let url = super::handoff_ws::handoff_ws_url(ep);
        if errors.iter().any(|(u, _)| *u == url) {
            continue;
        }
        match tokio::time::timeout(
            Duration::from_secs(10),
            super::handoff_ws::connect(&url, my_id, run_id.as_deref()),
        )
        .await
        {
            Ok(Ok(link)) => return Ok(HandoffConn::WebSocket(link)),
            Ok(Err(e)) => errors.push((url, e.to_string())),
            Err(_) => errors.push((url, "timed out".to_string())),
        }
    }
    Err(ConnectError::WebSocket(errors))
}

/// How a successor's start ended.
enum Joined {
    /// It is the primary (took over, or recovered without the predecessor).
    Primary,
    /// Another successor of its generation is primary (liveness rule 3).
    Superseded,
}

/// The successor's start: take over from the predecessor, or recover without it.
async fn join(
    node: &Node,
    args: &NodeArgs,
    secret: &Secret,
    host: Arc<dyn HandoffHost>,
    publisher: Arc<dyn Publisher>,
    backups: Option<Arc<dyn BackupStore>>,
) -> Result<Joined, RingError> {
    let la = &args.lifecycle;
    let pred_id = la
        .predecessor_peer_id
        .clone()
        .expect("successor has a predecessor");
    let endpoints: Vec<SignalingEndpoint> = la
        .predecessor_endpoints
        .as_ref()
        .map(|e| e.0.clone())
        .unwrap_or_default();
    let my_id = node.peer_id();
    let record = node.record();
    let succ = Successor::new(
        my_id.clone(),
        pred_id.clone(),
        la.generation,
        secret.clone(),
        record.signaling.clone(),
        la.successor_config(),
        Instant::now(),
        rand::SeedableRng::from_os_rng(),
    );
    // The node's ICE servers (`--ice-servers`, TURN credentials) for our peer there.
    let ice = node.shared().ice.clone();
    let rtc = predecessor_connector(endpoints.clone(), my_id.clone(), pred_id, move |cfg| {
        ice.apply(cfg, std::time::SystemTime::now())
    });
    let connect = fallback_connector(
        rtc,
        endpoints,
        my_id,
        la.handoff_transport,
        la.handoff_fallback_after,
        node.shared().clone(),
    );
    let publish = {
        let publisher = publisher.clone();
        let record = record.clone();
        move || {
            let publisher = publisher.clone();
            let record = record.clone();
            async move { publisher.publish(&record).await }
        }
    };
    let started = Instant::now();
    let outcome = run_successor(succ, host.clone(), connect, publish, None).await;
    match outcome {
        SuccessorOutcome::Live => {
            tracing::info!(elapsed = ?started.elapsed(), generation = la.generation, "took over from the predecessor");
            Ok(Joined::Primary)
        }
        SuccessorOutcome::GaveUp {
            reason: reason @ (GiveUpReason::PredecessorUnreachable | GiveUpReason::Blocked),
            transferred,
        } => {
            let cause = match reason {
                GiveUpReason::Blocked => "blocked",
                _ => "unreachable",
            };
            tracing::error!(
                cause,
                elapsed = ?started.elapsed(),
                ?transferred,
                "handoff: gave up on the predecessor; recovering from the newest backup"
            );
            node.shared().set_handoff_gave_up(cause);
            let predecessor = la
                .generation
                .checked_sub(1)
                .map(|g| (g, la.predecessor_peer_id.as_deref().unwrap_or_default()));
            let rec = recover(
                &*host,
                backups.as_deref(),
                transferred,
                DEFAULT_GAP_MARGIN,
                cause,
                predecessor,
            )
            .await?;
            // Writable before the record names this node: a client that reads the record and
            // connects at once must not be refused as `read_only`.
            host.set_mode(Mode::Primary).await;
            match publisher.publish(&node.record()).await {
                Err(e) if e.is_stale() => {
                    host.set_mode(Mode::Draining).await;
                    tracing::info!(error = %e, "not serving: another node took over first");
                    return Ok(Joined::Superseded);
                }
                Err(e) => tracing::error!(error = %e, "discovery not published after recovery"),
                Ok(()) => {}
            }
            if rec.margin > 0 {
                tracing::warn!(?rec, "serving after a crash recovery (gap announced)");
            } else {
                tracing::info!(
                    ?rec,
                    "serving after recovering from the predecessor's final backup (no gap)"
                );
            }
            Ok(Joined::Primary)
        }
        SuccessorOutcome::GaveUp {
            reason: GiveUpReason::Superseded,
            ..
        } => Ok(Joined::Superseded),
        SuccessorOutcome::GaveUp { reason, .. } => Err(RingError::GaveUp(reason)),
    }
}
