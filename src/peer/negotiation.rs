//! Negotiation of one DataConnection: one task per connection id drives its
//! `RTCPeerConnection` through OFFER / ANSWER / CANDIDATE exactly as peerjs 1.5.5 does,
//! then supervises it (late candidates, ICE failure, `LEAVE`) until the channel closes.
//!
//! - The caller creates the channel (`ordered = reliable`) and sends the OFFER payload
//!   `{sdp:{sdp,type:"offer"}, type:"data", connectionId:"dc_…", metadata?, label,
//!   reliable, serialization}` in the browser's key order.
//! - The answerer sets the remote description, answers `{sdp, type:"data", connectionId}`
//!   and receives the channel from the remote side.
//! - Remote candidates that arrive before the remote description are buffered.
//! - A repeated OFFER with the same connection id closes the old connection.
//!
//! Size: one connection's negotiation task, end to end (caps, offer/answer, candidate
//! buffering, open/close), in one file of ~900 lines; splitting it would scatter one sequence
//! of awaits that is read top to bottom.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceCandidateInit, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription,
};

use super::connection::{ConnMeta, ConnectionError, DataConnection};
use super::ice;
use super::{
    ConnEntry, ConnectOptions, PeerError, PeerEvent, Serialization, Shared, random_token,
    webrtc_setup,
};

/// Signals routed to a connection task.
#[derive(Debug)]
pub(crate) enum Signal {
    /// The remote ANSWER's SDP.
    Answer(String),
    /// A remote ICE candidate.
    Candidate(RTCIceCandidateInit),
    /// The server could not deliver our OFFER (`EXPIRE`).
    Expire,
    /// The remote peer left (`LEAVE`).
    Leave,
    /// Replaced by a new OFFER with the same id, or the peer closed.
    Close,
}

/// Buffered signals per connection task.
const SIGNAL_QUEUE: usize = 256;
/// Messages kept if any arrive before `OnOpen` (they should not).
const MAX_EARLY_MESSAGES: usize = 64;
/// Remote candidates kept before the remote description is set.
const MAX_PENDING_CANDIDATES: usize = 128;
/// Remote candidates one connection takes in all: each is an address our ICE agent sends
/// connectivity checks to, so this bounds how far one OFFER can aim our traffic.
const MAX_REMOTE_CANDIDATES: usize = 32;

/// Incoming negotiations in progress, in total and per remote peer id.
#[derive(Debug, Default)]
pub(crate) struct InboundCount {
    pub(crate) total: usize,
    per_peer: std::collections::HashMap<String, usize>,
    pub(crate) refused: u64,
}

/// One admitted incoming negotiation; its place is freed when dropped (the channel opened,
/// or the negotiation failed).
struct InboundSlot {
    shared: Arc<Shared>,
    peer: String,
}

impl InboundSlot {
    /// Takes a place for an OFFER from `peer`, unless a cap is reached.
    fn take(shared: &Arc<Shared>, peer: &str) -> Option<InboundSlot> {
        let mut n = shared.inbound.lock().expect("inbound lock poisoned");
        let from_peer = n.per_peer.get(peer).copied().unwrap_or(0);
        if n.total >= shared.config.max_inbound_negotiations
            || from_peer >= shared.config.max_inbound_negotiations_per_peer
        {
            n.refused += 1;
            return None;
        }
        n.total += 1;
        *n.per_peer.entry(peer.to_string()).or_insert(0) += 1;
        Some(InboundSlot {
            shared: shared.clone(),
            peer: peer.to_string(),
        })
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        let mut n = self.shared.inbound.lock().expect("inbound lock poisoned");
        n.total -= 1;
        if let Some(c) = n.per_peer.get_mut(&self.peer) {
            *c -= 1;
            if *c == 0 {
                n.per_peer.remove(&self.peer);
            }
        }
    }
}

/// The refusal of an OFFER over the caps: `EXPIRE` to its sender (what a PeerJS server sends
/// when an OFFER cannot be delivered; peerjs reports `peer-unavailable`), with the reason
/// and the connection id in the payload (peerjs ignores it).
fn refusal_message(connection_id: &str, dst: &str) -> String {
    envelope(
        "EXPIRE",
        serde_json::json!({
            "msg": "too many connections being negotiated; try again later",
            "connectionId": connection_id,
        }),
        dst,
    )
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

// ---- wire payloads (field order = the browser's) ----

#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct SdpJson {
    pub(crate) sdp: String,
    #[serde(rename = "type")]
    pub(crate) kind: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OfferOut<'a> {
    sdp: SdpJson,
    #[serde(rename = "type")]
    kind: &'static str,
    connection_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a serde_json::Value>,
    label: &'a str,
    reliable: bool,
    serialization: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AnswerOut<'a> {
    sdp: SdpJson,
    #[serde(rename = "type")]
    kind: &'static str,
    connection_id: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CandidateJson {
    candidate: String,
    sdp_mid: String,
    #[serde(rename = "sdpMLineIndex")]
    sdp_mline_index: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    username_fragment: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CandidateOut<'a> {
    candidate: CandidateJson,
    #[serde(rename = "type")]
    kind: &'static str,
    connection_id: &'a str,
}

#[derive(Serialize)]
struct Envelope<'a, P: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    payload: P,
    dst: &'a str,
}

fn envelope<P: Serialize>(kind: &'static str, payload: P, dst: &str) -> String {
    serde_json::to_string(&Envelope { kind, payload, dst }).expect("signaling JSON serializes")
}

/// An incoming OFFER payload (lenient: peerjs versions differ in optional fields).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(crate) struct OfferIn {
    pub(crate) sdp: SdpJson,
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    pub(crate) connection_id: String,
    #[serde(default)]
    pub(crate) label: Option<String>,
    #[serde(default)]
    pub(crate) reliable: Option<bool>,
    #[serde(default)]
    pub(crate) serialization: Option<String>,
    #[serde(default)]
    pub(crate) metadata: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerIn {
    sdp: SdpJson,
    connection_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CandidateIn {
    candidate: RTCIceCandidateInit,
    connection_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnIdOnly {
    connection_id: String,
}

/// The OFFER frame we send (exposed for tests of byte compatibility).
pub(crate) fn offer_message(meta: &ConnMeta, sdp: String) -> String {
    envelope(
        "OFFER",
        OfferOut {
            sdp: SdpJson {
                sdp,
                kind: "offer".into(),
            },
            kind: "data",
            connection_id: &meta.connection_id,
            metadata: meta.metadata.as_ref(),
            label: &meta.label,
            reliable: meta.reliable,
            serialization: meta.serialization.as_offer_str(),
        },
        &meta.peer,
    )
}

fn answer_message(meta: &ConnMeta, sdp: String) -> String {
    envelope(
        "ANSWER",
        AnswerOut {
            sdp: SdpJson {
                sdp,
                kind: "answer".into(),
            },
            kind: "data",
            connection_id: &meta.connection_id,
        },
        &meta.peer,
    )
}

fn candidate_message(meta: &ConnMeta, c: RTCIceCandidateInit) -> String {
    let sdp_mid = match c.sdp_mid {
        Some(m) if !m.is_empty() => m,
        _ => "0".to_string(),
    };
    envelope(
        "CANDIDATE",
        CandidateOut {
            candidate: CandidateJson {
                candidate: c.candidate,
                sdp_mid,
                sdp_mline_index: c.sdp_mline_index.unwrap_or(0),
                username_fragment: c.username_fragment,
            },
            kind: "data",
            connection_id: &meta.connection_id,
        },
        &meta.peer,
    )
}

// ---- routing (called by the signaling task) ----

fn register(shared: &Shared, connection_id: &str, peer: &str) -> (u64, mpsc::Receiver<Signal>) {
    let (tx, rx) = mpsc::channel(SIGNAL_QUEUE);
    let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
    let old = shared.conns.lock().expect("conns lock poisoned").insert(
        connection_id.to_string(),
        ConnEntry {
            peer: peer.to_string(),
            signals: tx,
            generation,
            candidates: 0,
        },
    );
    if let Some(old) = old {
        tracing::debug!(connection_id, "repeated OFFER replaces the old connection");
        let _ = old.signals.try_send(Signal::Close);
    }
    (generation, rx)
}

fn unregister(shared: &Shared, connection_id: &str, generation: u64) {
    let mut conns = shared.conns.lock().expect("conns lock poisoned");
    if conns
        .get(connection_id)
        .is_some_and(|e| e.generation == generation)
    {
        conns.remove(connection_id);
    }
}

/// An OFFER from `src`: answer it in a new connection task.
pub(crate) fn on_offer(shared: &Arc<Shared>, src: String, payload: Option<serde_json::Value>) {
    let Some(offer) = payload.and_then(|p| serde_json::from_value::<OfferIn>(p).ok()) else {
        tracing::debug!(%src, "ignoring a malformed OFFER");
        return;
    };
    if offer.kind.as_deref().is_some_and(|k| k != "data") {
        tracing::debug!(%src, "ignoring a media OFFER (data connections only)");
        return;
    }
    let ser_name = offer.serialization.as_deref().unwrap_or("default");
    let Some(serialization) = Serialization::from_offer(ser_name) else {
        tracing::debug!(%src, serialization = ser_name, "OFFER with an unknown serialization");
        shared.emit(PeerEvent::Error(PeerError::NegotiationFailed(format!(
            "unknown serialization {ser_name:?} from {src}"
        ))));
        return;
    };
    if src.is_empty() || offer.connection_id.is_empty() {
        return;
    }
    let Some(slot) = InboundSlot::take(shared, &src) else {
        tracing::info!(peer = %src, connection_id = %offer.connection_id, "OFFER refused: too many negotiations in progress");
        shared.signal(refusal_message(&offer.connection_id, &src));
        return;
    };
    let meta = ConnMeta {
        peer: src,
        label: offer
            .label
            .clone()
            .unwrap_or_else(|| offer.connection_id.clone()),
        connection_id: offer.connection_id.clone(),
        serialization,
        reliable: offer.reliable.unwrap_or(false),
        metadata: offer.metadata.clone(),
    };
    let (generation, signals) = register(shared, &meta.connection_id, &meta.peer);
    let span = tracing::debug_span!("conn", id = %meta.connection_id, peer = %meta.peer);
    tokio::spawn(
        drive(
            shared.clone(),
            meta,
            Role::Answerer(offer.sdp.sdp),
            signals,
            generation,
            None,
            Some(slot),
        )
        .instrument(span),
    );
}

/// An ANSWER or CANDIDATE from `src`.
pub(crate) fn on_signal(
    shared: &Arc<Shared>,
    src: &str,
    kind: &str,
    payload: Option<serde_json::Value>,
) {
    let Some(payload) = payload else { return };
    let (connection_id, signal) = match kind {
        "ANSWER" => match serde_json::from_value::<AnswerIn>(payload) {
            Ok(a) => (a.connection_id, Signal::Answer(a.sdp.sdp)),
            Err(e) => {
                tracing::debug!(error = %e, "ignoring a malformed ANSWER");
                return;
            }
        },
        _ => match serde_json::from_value::<CandidateIn>(payload.clone()) {
            Ok(c) => {
                if !ice::usable_candidate(&c.candidate.candidate, shared.config.loopback_candidates)
                {
                    // A remote loopback/link-local address: our sockets cannot reach it, and
                    // every check to it would fail to send ("Failed to write packet").
                    tracing::debug!(candidate = %c.candidate.candidate, "ignoring a loopback or link-local remote candidate");
                    return;
                }
                (c.connection_id, Signal::Candidate(c.candidate))
            }
            Err(e) => {
                let id = serde_json::from_value::<ConnIdOnly>(payload)
                    .map(|c| c.connection_id)
                    .unwrap_or_default();
                tracing::debug!(error = %e, connection_id = id, "ignoring a malformed CANDIDATE");
                return;
            }
        },
    };
    let mut conns = shared.conns.lock().expect("conns lock poisoned");
    match conns.get_mut(&connection_id) {
        Some(e) if e.peer == src => {
            if matches!(signal, Signal::Candidate(_)) {
                if e.candidates >= MAX_REMOTE_CANDIDATES {
                    tracing::debug!(connection_id, "too many remote candidates; dropped");
                    return;
                }
                e.candidates += 1;
            }
            if e.signals.try_send(signal).is_err() {
                tracing::debug!(connection_id, "signal queue full; dropped");
            }
        }
        _ => tracing::debug!(connection_id, src, "signal for an unknown connection"),
    }
}

/// `EXPIRE` from the server (our messages to `src` could not be delivered), or from `src`
/// itself refusing one OFFER (its payload then names the `connectionId`: only that
/// connection fails).
pub(crate) fn on_expire(shared: &Arc<Shared>, src: &str, payload: Option<serde_json::Value>) {
    shared.emit(PeerEvent::Error(PeerError::PeerUnavailable(
        src.to_string(),
    )));
    if let Some(id) = payload.and_then(|p| serde_json::from_value::<ConnIdOnly>(p).ok()) {
        let conns = shared.conns.lock().expect("conns lock poisoned");
        if let Some(e) = conns.get(&id.connection_id).filter(|e| e.peer == src) {
            let _ = e.signals.try_send(Signal::Expire);
        }
        return;
    }
    for_peer(shared, src, || Signal::Expire);
}

/// `LEAVE` from `src`: close every connection to it.
pub(crate) fn on_leave(shared: &Arc<Shared>, src: &str) {
    for_peer(shared, src, || Signal::Leave);
}

fn for_peer(shared: &Shared, src: &str, signal: impl Fn() -> Signal) {
    let conns = shared.conns.lock().expect("conns lock poisoned");
    for e in conns.values().filter(|e| e.peer == src) {
        let _ = e.signals.try_send(signal());
    }
}

// ---- the connection task ----

enum Role {
    Offerer,
    Answerer(String),
}

enum PcEvent {
    Candidate(RTCIceCandidateInit),
    Channel(Arc<dyn DataChannel>),
    State(RTCPeerConnectionState),
}

struct Handler {
    tx: mpsc::UnboundedSender<PcEvent>,
    /// [`PeerConfig::loopback_candidates`](super::PeerConfig::loopback_candidates).
    keep_loopback: bool,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event.candidate.to_json() {
            Ok(c) if !ice::usable_candidate(&c.candidate, self.keep_loopback) => {
                tracing::debug!(candidate = %c.candidate, "not offering a loopback or link-local candidate");
            }
            Ok(c) => {
                let _ = self.tx.send(PcEvent::Candidate(c));
            }
            Err(e) => tracing::debug!(error = %e, "local candidate not serializable"),
        }
    }
    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let _ = self.tx.send(PcEvent::Channel(dc));
    }
    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.tx.send(PcEvent::State(state));
    }
}

/// `peer.connect(...)`: starts a connection task and waits for the channel to open.
pub(crate) async fn connect(
    shared: Arc<Shared>,
    peer: String,
    opts: ConnectOptions,
) -> Result<DataConnection, PeerError> {
    let connection_id = format!("dc_{}", random_token());
    let serialization = opts.serialization;
    let meta = ConnMeta {
        label: opts.label.unwrap_or_else(|| connection_id.clone()),
        connection_id,
        peer,
        serialization,
        // peerjs's MsgPack connection forces reliable (ordered) delivery.
        reliable: opts.reliable || serialization.requires_reliable(),
        metadata: opts.metadata,
    };
    let (generation, signals) = register(&shared, &meta.connection_id, &meta.peer);
    let (tx, rx) = oneshot::channel();
    let span = tracing::debug_span!("conn", id = %meta.connection_id, peer = %meta.peer);
    tokio::spawn(
        drive(
            shared,
            meta,
            Role::Offerer,
            signals,
            generation,
            Some(tx),
            None,
        )
        .instrument(span),
    );
    rx.await
        .unwrap_or_else(|_| Err(PeerError::NegotiationFailed("connection task ended".into())))
}

struct Negotiated {
    dc: Arc<dyn DataChannel>,
    remote_set: bool,
    /// The remote description carried `a=tool:ouroboros`.
    remote_ouroboros: bool,
    early: Vec<DataChannelEvent>,
}

async fn drive(
    shared: Arc<Shared>,
    meta: ConnMeta,
    role: Role,
    mut signals: mpsc::Receiver<Signal>,
    generation: u64,
    caller: Option<oneshot::Sender<Result<DataConnection, PeerError>>>,
    slot: Option<InboundSlot>,
) {
    let (pc_tx, mut pc_events) = mpsc::unbounded_channel();
    let handler = Arc::new(Handler {
        tx: pc_tx,
        keep_loopback: shared.config.loopback_candidates,
    });
    let pc = match webrtc_setup::build_peer_connection(&shared, handler).await {
        Ok(pc) => pc,
        Err(e) => {
            fail(&shared, &meta, caller, e);
            unregister(&shared, &meta.connection_id, generation);
            return;
        }
    };
    let negotiated = negotiate(&shared, &meta, role, &pc, &mut signals, &mut pc_events).await;
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(connection_id = %meta.connection_id, error = %e, "negotiation failed");
            let _ = pc.close().await;
            fail(&shared, &meta, caller, e);
            unregister(&shared, &meta.connection_id, generation);
            return;
        }
    };
    let Negotiated {
        dc,
        mut remote_set,
        remote_ouroboros,
        early,
    } = negotiated;
    let window = webrtc_setup::pump_window(&shared.config, remote_ouroboros);
    let (conn, core) = DataConnection::start(
        meta.clone(),
        dc,
        pc.clone(),
        early,
        remote_ouroboros,
        window,
        (shared.config.decoder_limits, shared.config.send_high_water),
    )
    .await;
    tracing::debug!(connection_id = %meta.connection_id, "data connection open");
    // Negotiated: the place among the incoming negotiations is free again.
    drop(slot);
    let relayed = log_selected_pair(&pc, &meta).await;
    // webrtc 0.21.1 holds what we send from a relay candidate until its driver wakes up (see
    // `webrtc_setup::wake_driver`): keep waking it for as long as this connection is relayed.
    let mut relay_flush = tokio::time::interval(webrtc_setup::RELAYED_FLUSH_INTERVAL);
    relay_flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    match caller {
        Some(tx) => {
            if let Err(Ok(conn)) = tx.send(Ok(conn)) {
                // The caller gave up (dropped the future): close what we opened.
                conn.close(false).await;
            }
        }
        None => {
            if shared.incoming_tx.try_send(conn).is_err() {
                tracing::warn!(connection_id = %meta.connection_id, "too many unaccepted connections; closing");
                core.shutdown(None).await;
            }
        }
    }
    // Supervise until the channel closes.
    let mut pending: Vec<RTCIceCandidateInit> = Vec::new();
    loop {
        tokio::select! {
            _ = core.closed.cancelled() => break,
            _ = shared.closed.cancelled() => {
                core.shutdown(None).await;
                break;
            }
            _ = relay_flush.tick(), if relayed => webrtc_setup::wake_driver(&pc).await,
            s = signals.recv() => match s {
                Some(Signal::Candidate(c)) => {
                    on_remote_candidate(&pc, remote_set, &mut pending, c).await
                }
                Some(Signal::Answer(_)) => { remote_set = true; }
                Some(Signal::Expire) => {}
                Some(Signal::Leave) | Some(Signal::Close) | None => {
                    core.shutdown(None).await;
                    break;
                }
            },
            ev = pc_events.recv() => match ev {
                Some(PcEvent::Candidate(c)) => shared.signal(candidate_message(&meta, c)),
                Some(PcEvent::State(RTCPeerConnectionState::Failed)) => {
                    shared.emit(PeerEvent::Error(PeerError::NegotiationFailed(format!(
                        "ICE failed on {} with {}", meta.connection_id, meta.peer
                    ))));
                    core.shutdown(Some(ConnectionError::IceFailed)).await;
                    break;
                }
                Some(PcEvent::State(RTCPeerConnectionState::Disconnected)) if remote_ouroboros => {
                    // Another Ouroboros process (a node, a successor, a Rust client) sent
                    // nothing, not even ICE keepalives, for ICE's disconnected timeout (5 s):
                    // it is gone (e.g. killed). Close now instead of after the failed timeout
                    // (25 s more), so a handoff learns its peer died and resumes or moves on.
                    // Browsers keep the standard behaviour (their networks do blip).
                    tracing::info!(connection_id = %meta.connection_id, peer = %meta.peer, "ICE disconnected from an Ouroboros peer; closing");
                    core.shutdown(Some(ConnectionError::IceFailed)).await;
                    break;
                }
                Some(PcEvent::State(RTCPeerConnectionState::Closed)) | None => {
                    core.shutdown(None).await;
                    break;
                }
                Some(PcEvent::Channel(extra)) => {
                    // peerjs uses one channel per PeerConnection; refuse others.
                    let _ = extra.close().await;
                }
                Some(PcEvent::State(_)) => {}
            },
        }
    }
    unregister(&shared, &meta.connection_id, generation);
    let _ = pc.close().await;
}

fn fail(
    shared: &Shared,
    meta: &ConnMeta,
    caller: Option<oneshot::Sender<Result<DataConnection, PeerError>>>,
    e: PeerError,
) {
    match caller {
        Some(tx) => {
            let _ = tx.send(Err(e));
        }
        None => {
            if !matches!(e, PeerError::Closed) {
                shared.emit(PeerEvent::Error(PeerError::NegotiationFailed(format!(
                    "incoming {} from {}: {e}",
                    meta.connection_id, meta.peer
                ))));
            }
        }
    }
}

/// Logs which candidate types carry the connection (`host`, `srflx`, `prflx`, `relay`):
/// what tells a NAT problem from a TURN problem in the field. Returns whether the local
/// candidate is a relay (TURN) one.
async fn log_selected_pair(pc: &Arc<dyn PeerConnection>, meta: &ConnMeta) -> bool {
    let Some(sctp) = pc.sctp().await else {
        return false;
    };
    let ice = sctp.transport().ice_transport();
    let Ok(Some(pair)) = ice.get_selected_candidate_pair().await else {
        return false;
    };
    tracing::info!(
        peer = %meta.peer,
        connection_id = %meta.connection_id,
        local = %format_args!("{} {}:{}", pair.local().typ, pair.local().address, pair.local().port),
        remote = %format_args!("{} {}:{}", pair.remote().typ, pair.remote().address, pair.remote().port),
        "ICE candidate pair selected"
    );
    pair.local().typ.to_string() == "relay"
}

async fn dc_poll(dc: &Option<Arc<dyn DataChannel>>) -> Option<DataChannelEvent> {
    match dc {
        Some(dc) => dc.poll().await,
        None => std::future::pending().await,
    }
}

/// A remote candidate: added at once once the remote description is set, else buffered (at
/// most [`MAX_PENDING_CANDIDATES`]; more are dropped).
async fn on_remote_candidate(
    pc: &Arc<dyn PeerConnection>,
    remote_set: bool,
    pending: &mut Vec<RTCIceCandidateInit>,
    c: RTCIceCandidateInit,
) {
    if remote_set {
        if let Err(e) = pc.add_ice_candidate(c).await {
            tracing::debug!(error = %e, "remote candidate rejected");
        }
    } else if pending.len() < MAX_PENDING_CANDIDATES {
        pending.push(c);
    }
}

async fn add_candidates(pc: &Arc<dyn PeerConnection>, pending: &mut Vec<RTCIceCandidateInit>) {
    for c in pending.drain(..) {
        if let Err(e) = pc.add_ice_candidate(c).await {
            tracing::debug!(error = %e, "buffered remote candidate rejected");
        }
    }
}

fn webrtc_err(what: &str, e: impl std::fmt::Display) -> PeerError {
    PeerError::NegotiationFailed(format!("{what}: {e}"))
}

/// Sets our local description and returns its SDP as sent (with the `a=tool` mark).
async fn set_local(
    pc: &Arc<dyn PeerConnection>,
    desc: RTCSessionDescription,
) -> Result<String, PeerError> {
    pc.set_local_description(desc.clone())
        .await
        .map_err(|e| webrtc_err("set_local_description", e))?;
    Ok(webrtc_setup::mark_sdp(desc.sdp))
}

async fn negotiate(
    shared: &Arc<Shared>,
    meta: &ConnMeta,
    role: Role,
    pc: &Arc<dyn PeerConnection>,
    signals: &mut mpsc::Receiver<Signal>,
    pc_events: &mut mpsc::UnboundedReceiver<PcEvent>,
) -> Result<Negotiated, PeerError> {
    let mut pending: Vec<RTCIceCandidateInit> = Vec::new();
    let mut remote_set = false;
    let mut remote_ouroboros = false;
    let offerer = matches!(role, Role::Offerer);
    let mut dc: Option<Arc<dyn DataChannel>> = None;
    match role {
        Role::Offerer => {
            let init = RTCDataChannelInit {
                ordered: meta.reliable,
                ..Default::default()
            };
            let channel = pc
                .create_data_channel(&meta.label, Some(init))
                .await
                .map_err(|e| webrtc_err("create_data_channel", e))?;
            dc = Some(channel);
            let offer = pc
                .create_offer(None)
                .await
                .map_err(|e| webrtc_err("create_offer", e))?;
            let sdp = set_local(pc, offer).await?;
            shared.signal(offer_message(meta, sdp));
        }
        Role::Answerer(sdp) => {
            remote_ouroboros = webrtc_setup::is_ouroboros_sdp(&sdp);
            let offer =
                RTCSessionDescription::offer(sdp).map_err(|e| webrtc_err("offer SDP", e))?;
            pc.set_remote_description(offer)
                .await
                .map_err(|e| webrtc_err("set_remote_description", e))?;
            remote_set = true;
            let answer = pc
                .create_answer(None)
                .await
                .map_err(|e| webrtc_err("create_answer", e))?;
            let sdp = set_local(pc, answer).await?;
            shared.signal(answer_message(meta, sdp));
        }
    }
    let deadline = tokio::time::sleep(shared.config.connect_timeout);
    tokio::pin!(deadline);
    let mut relay_flush = tokio::time::interval(webrtc_setup::RELAY_FLUSH_INTERVAL);
    relay_flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut early = Vec::new();
    loop {
        tokio::select! {
            _ = &mut deadline => return Err(PeerError::Timeout(format!("opening {}", meta.connection_id))),
            _ = relay_flush.tick() => webrtc_setup::wake_driver(pc).await,
            _ = shared.closed.cancelled() => return Err(PeerError::Closed),
            s = signals.recv() => match s {
                Some(Signal::Answer(sdp)) => {
                    if offerer && !remote_set {
                        remote_ouroboros = webrtc_setup::is_ouroboros_sdp(&sdp);
                        let answer = RTCSessionDescription::answer(sdp)
                            .map_err(|e| webrtc_err("answer SDP", e))?;
                        pc.set_remote_description(answer)
                            .await
                            .map_err(|e| webrtc_err("set_remote_description", e))?;
                        remote_set = true;
                        add_candidates(pc, &mut pending).await;
                    }
                }
                Some(Signal::Candidate(c)) => {
                    on_remote_candidate(pc, remote_set, &mut pending, c).await
                }
                Some(Signal::Expire) => return Err(PeerError::PeerUnavailable(meta.peer.clone())),
                Some(Signal::Leave) => return Err(PeerError::ConnectionClosed(format!("{} left", meta.peer))),
                Some(Signal::Close) | None => return Err(PeerError::Closed),
            },
            ev = pc_events.recv() => match ev {
                Some(PcEvent::Candidate(c)) => shared.signal(candidate_message(meta, c)),
                Some(PcEvent::Channel(ch)) => {
                    if dc.is_none() {
                        dc = Some(ch);
                    } else {
                        let _ = ch.close().await;
                    }
                }
                Some(PcEvent::State(RTCPeerConnectionState::Failed)) => {
                    return Err(PeerError::NegotiationFailed("ICE failed".into()));
                }
                Some(PcEvent::State(RTCPeerConnectionState::Closed)) | None => {
                    return Err(PeerError::ConnectionClosed("PeerConnection closed".into()));
                }
                Some(PcEvent::State(_)) => {}
            },
            ev = dc_poll(&dc) => match ev {
                Some(DataChannelEvent::OnOpen) => break,
                Some(DataChannelEvent::OnClose) | None => {
                    return Err(PeerError::ConnectionClosed("channel closed before open".into()));
                }
                Some(other @ DataChannelEvent::OnMessage(_)) if early.len() < MAX_EARLY_MESSAGES => early.push(other),
                Some(_) => {}
            },
        }
    }
    Ok(Negotiated {
        dc: dc.expect("the channel exists once it opened"),
        remote_set,
        remote_ouroboros,
        early,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ConnMeta {
        ConnMeta {
            peer: "bob".into(),
            connection_id: "dc_abc".into(),
            label: "chat".into(),
            serialization: Serialization::Binary,
            reliable: true,
            metadata: Some(serde_json::json!({"k": 1})),
        }
    }

    #[test]
    fn offer_is_byte_compatible_with_peerjs() {
        let m = offer_message(&meta(), "v=0\r\n".into());
        assert_eq!(
            m,
            r#"{"type":"OFFER","payload":{"sdp":{"sdp":"v=0\r\n","type":"offer"},"type":"data","connectionId":"dc_abc","metadata":{"k":1},"label":"chat","reliable":true,"serialization":"binary"},"dst":"bob"}"#
        );
        let mut no_meta = meta();
        no_meta.metadata = None;
        assert!(!offer_message(&no_meta, String::new()).contains("metadata"));
    }

    #[test]
    fn answer_and_candidate_shapes() {
        assert_eq!(
            answer_message(&meta(), "s".into()),
            r#"{"type":"ANSWER","payload":{"sdp":{"sdp":"s","type":"answer"},"type":"data","connectionId":"dc_abc"},"dst":"bob"}"#
        );
        let c = RTCIceCandidateInit {
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some(String::new()),
            sdp_mline_index: Some(0),
            username_fragment: None,
            url: None,
        };
        assert_eq!(
            candidate_message(&meta(), c),
            r#"{"type":"CANDIDATE","payload":{"candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0},"type":"data","connectionId":"dc_abc"},"dst":"bob"}"#
        );
    }

    #[test]
    fn parses_browser_offer_and_candidate() {
        let offer: OfferIn = serde_json::from_str(
            r#"{"sdp":{"sdp":"v=0","type":"offer"},"type":"data","connectionId":"dc_3e94b2o4nrn","metadata":{"probe":"binary"},"label":"dc-binary","reliable":true,"serialization":"binary"}"#,
        )
        .unwrap();
        assert_eq!(offer.connection_id, "dc_3e94b2o4nrn");
        assert_eq!(offer.reliable, Some(true));
        let c: CandidateIn = serde_json::from_str(
            r#"{"candidate":{"candidate":"candidate:4274633870 1 udp 2122194687 127.0.0.1 52972 typ host generation 0 ufrag /5TH network-id 3 network-cost 50","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"/5TH"},"type":"data","connectionId":"dc_x"}"#,
        )
        .unwrap();
        assert_eq!(c.candidate.sdp_mid.as_deref(), Some("0"));
        assert_eq!(c.candidate.username_fragment.as_deref(), Some("/5TH"));
    }
}
