//! [`Predecessor`]: the old node's side of the handoff. Sans-IO.
//!
//! # Call order
//! The driver reports connections on the `ouroboros-handoff` label with
//! [`Predecessor::handle_open`] / [`Predecessor::handle_message`] / [`Predecessor::handle_close`],
//! calls [`Predecessor::handle_timeout`] when [`Predecessor::poll_timeout`] has passed, and after
//! any call drains [`Predecessor::poll_event`] and [`Predecessor::poll_transmit`] until both
//! are empty. It answers events:
//! - `SnapshotNeeded` → export the relay snapshot, hash it off the async threads
//!   ([`PreparedSnapshot`]) and call [`Predecessor::provide_snapshot`];
//!   from then on pass every replication event to [`Predecessor::push_tail`].
//! - `ReadyForCutOver` → relay mode `Draining`, push the last replication events, then
//!   [`Predecessor::cut_over`] with the relay's high-water marks.
//! - `SuccessorLive` → send every client `moved`.

use super::auth::{self, Binding, Role};
use super::message::{HighWater, Message, PROTOCOL_VERSION, RefuseCode, Resume};
use super::snapshot::{PreparedSnapshot, Snapshot};
use super::{HandoffConfig, Secret, sha256_hex};
use crate::discovery::SignalingEndpoint;
use crate::rate::TokenBucket;
use rand::rngs::StdRng;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

/// Identifies one DataConnection (assigned by the driver).
pub type ConnId = u64;

/// How many used nonces are remembered for replay detection.
const SEEN_NONCES: usize = 4096;

/// Largest endpoint list accepted in `hello`.
const MAX_ENDPOINTS: usize = 16;

/// Largest peer id accepted.
const MAX_PEER_ID: usize = 256;

/// What the predecessor's driver must do on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Send a message on a connection.
    Send(ConnId, Message),
    /// Close a connection.
    Close(ConnId),
}

/// What happened, for the driver (and logs, metrics, lifecycle).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PredecessorEvent {
    /// A successor passed authentication (lifecycle: `SuccessorConnected`).
    Authenticated {
        /// Its peer id.
        successor_peer_id: String,
        /// Whether it resumed an interrupted session.
        resumed: bool,
    },
    /// Export the relay snapshot now and call `provide_snapshot`.
    SnapshotNeeded,
    /// Snapshot delivered and the tail caught up: cut over now. The core's decision (it
    /// is the only one that makes it); the shell carries it out in one step on the relay
    /// and answers with [`Predecessor::cut_over`].
    ReadyForCutOver,
    /// The cut-over was made: writes are refused, the final tail is on its way
    /// (lifecycle: `CutOver`, an observation).
    CutOver,
    /// The successor confirmed the final high-water marks.
    Confirmed,
    /// The successor is primary: move the clients there.
    SuccessorLive {
        /// Its peer id.
        successor_peer_id: String,
        /// Its signaling endpoints.
        endpoints: Vec<SignalingEndpoint>,
        /// Its generation.
        generation: u64,
    },
    /// An attempt was refused (already logged).
    Refused {
        /// The connection's remote peer id.
        remote_peer_id: String,
        /// Why.
        code: RefuseCode,
    },
    /// The successor's connection broke; waiting `resume_timeout` for it to resume.
    Interrupted,
    /// The session ended without a handoff (lifecycle: `HandoffAborted`).
    Aborted {
        /// Why (safe to log).
        reason: String,
    },
}

/// Where the predecessor's handoff stands (for `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredecessorPhase {
    /// No successor session.
    Idle,
    /// Authenticated; waiting for the snapshot export.
    AwaitingSnapshot,
    /// Chunks and tail flowing.
    Transferring,
    /// Writes refused; final tail sent, waiting for `confirm`.
    CutOver,
    /// Confirmed; waiting for `live`.
    Confirmed,
    /// Handed over.
    Done,
}

#[derive(Debug)]
enum Stage {
    AwaitHello,
    AwaitProof {
        successor_nonce: [u8; auth::NONCE_LEN],
        predecessor_nonce: [u8; auth::NONCE_LEN],
        endpoints: Vec<SignalingEndpoint>,
        resume: Option<Resume>,
    },
    Active,
}

#[derive(Debug)]
struct Conn {
    remote_peer_id: String,
    stage: Stage,
    opened: Instant,
}

#[derive(Debug)]
struct Session {
    id: u64,
    successor_peer_id: String,
    endpoints: Vec<SignalingEndpoint>,
    conn: Option<ConnId>,
    lost_at: Option<Instant>,
    snapshot: Option<Snapshot>,
    accepted_sent: bool,
    /// Next chunk to send.
    next_send: u32,
    /// Every chunk below this is acknowledged.
    acked: u32,
    /// Unacknowledged tail; `tail[0]` has sequence `tail_base`.
    tail: VecDeque<Vec<u8>>,
    tail_base: u64,
    tail_send: u64,
    tail_bytes: usize,
    ready_emitted: bool,
    cut_over: Option<(u64, HighWater)>,
    cut_over_sent: bool,
    confirmed: bool,
    restarts: u32,
}

impl Session {
    fn tail_end(&self) -> u64 {
        self.tail_base + self.tail.len() as u64
    }
}

/// The predecessor's handoff state machine (one per node; sessions span connections).
#[derive(Debug)]
pub struct Predecessor {
    peer_id: String,
    generation: u64,
    secret: Secret,
    cfg: HandoffConfig,
    conns: HashMap<ConnId, Conn>,
    attempts: TokenBucket,
    seen: HashSet<[u8; auth::NONCE_LEN]>,
    seen_order: VecDeque<[u8; auth::NONCE_LEN]>,
    session: Option<Session>,
    /// Successors whose session was aborted for a broken state (refused from then on).
    aborted_successors: HashSet<String>,
    next_session: u64,
    done: bool,
    transmits: VecDeque<Transmit>,
    events: VecDeque<PredecessorEvent>,
    /// Where nonces come from (injected: a seeded one in tests).
    rng: StdRng,
}

impl Predecessor {
    /// The handoff side of node `peer_id` of `generation`. Nonces come from `rng` (the
    /// shell passes `StdRng::from_os_rng()`, tests a seeded one).
    pub fn new(
        peer_id: impl Into<String>,
        generation: u64,
        secret: Secret,
        mut cfg: HandoffConfig,
        now: Instant,
        rng: StdRng,
    ) -> Self {
        cfg.chunk_size = cfg.chunk_size.max(1);
        cfg.window = cfg.window.max(1);
        Predecessor {
            peer_id: peer_id.into(),
            generation,
            secret,
            attempts: TokenBucket::new(cfg.auth_burst, cfg.auth_per_second, now),
            cfg,
            conns: HashMap::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            session: None,
            aborted_successors: HashSet::new(),
            next_session: 1,
            done: false,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
        }
    }

    /// Current phase.
    pub fn phase(&self) -> PredecessorPhase {
        if self.done {
            return PredecessorPhase::Done;
        }
        match &self.session {
            None => PredecessorPhase::Idle,
            Some(s) if s.snapshot.is_none() => PredecessorPhase::AwaitingSnapshot,
            Some(s) if s.confirmed => PredecessorPhase::Confirmed,
            Some(s) if s.cut_over.is_some() => PredecessorPhase::CutOver,
            Some(_) => PredecessorPhase::Transferring,
        }
    }

    /// Bytes of snapshot acknowledged so far and in total (progress for `/status`).
    pub fn progress(&self) -> Option<(u64, u64)> {
        let s = self.session.as_ref()?;
        let snap = s.snapshot.as_ref()?;
        let done = (s.acked as u64 * self.cfg.chunk_size as u64).min(snap.source.len());
        Some((done, snap.source.len()))
    }

    /// A DataConnection labelled `ouroboros-handoff` opened; `remote_peer_id` is the peer
    /// id the signaling server stamped on it.
    pub fn handle_open(&mut self, now: Instant, conn: ConnId, remote_peer_id: &str) {
        self.conns.insert(
            conn,
            Conn {
                remote_peer_id: remote_peer_id.to_string(),
                stage: Stage::AwaitHello,
                opened: now,
            },
        );
    }

    /// A connection closed (either side).
    pub fn handle_close(&mut self, now: Instant, conn: ConnId) {
        self.conns.remove(&conn);
        if let Some(s) = &mut self.session
            && s.conn == Some(conn)
        {
            s.conn = None;
            s.lost_at = Some(now);
            if !self.done {
                tracing::info!(
                    session = s.id,
                    "handoff: successor connection lost; waiting for resume"
                );
                self.events.push_back(PredecessorEvent::Interrupted);
            }
        }
    }

    fn refuse(&mut self, conn: ConnId, code: RefuseCode, message: &str) {
        let remote = self
            .conns
            .remove(&conn)
            .map(|c| c.remote_peer_id)
            .unwrap_or_default();
        match code {
            RefuseCode::AuthFailed | RefuseCode::Replay | RefuseCode::WrongPeer => {
                tracing::warn!(remote_peer_id = %remote, ?code, message, "handoff attempt refused")
            }
            _ => {
                tracing::info!(remote_peer_id = %remote, ?code, message, "handoff attempt refused")
            }
        }
        self.transmits.push_back(Transmit::Send(
            conn,
            Message::Refused {
                code,
                message: message.to_string(),
            },
        ));
        self.transmits.push_back(Transmit::Close(conn));
        self.events.push_back(PredecessorEvent::Refused {
            remote_peer_id: remote,
            code,
        });
    }

    /// A message arrived on `conn`.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match std::mem::replace(&mut c.stage, Stage::AwaitHello) {
            Stage::AwaitHello => self.on_hello(now, conn, msg),
            Stage::AwaitProof {
                successor_nonce,
                predecessor_nonce,
                endpoints,
                resume,
            } => {
                let Message::Proof { mac } = msg else {
                    return self.refuse(conn, RefuseCode::BadMessage, "expected proof");
                };
                let remote = c.remote_peer_id.clone();
                let binding = Binding {
                    predecessor_peer_id: &self.peer_id,
                    successor_peer_id: &remote,
                    generation: self.generation + 1,
                    successor_nonce: &successor_nonce,
                    predecessor_nonce: &predecessor_nonce,
                };
                if !auth::verify(&self.secret, Role::Successor, &binding, &mac) {
                    return self.refuse(conn, RefuseCode::AuthFailed, "proof does not verify");
                }
                c.stage = Stage::Active;
                tracing::info!(successor_peer_id = %remote, "handoff: successor authenticated");
                self.on_authenticated(now, conn, remote, endpoints, resume);
            }
            Stage::Active => {
                c.stage = Stage::Active;
                self.on_active(now, conn, msg);
            }
        }
    }

    fn on_hello(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let Message::Hello {
            v,
            successor_peer_id,
            predecessor_peer_id,
            generation,
            nonce,
            endpoints,
            resume,
        } = msg
        else {
            return self.refuse(conn, RefuseCode::BadMessage, "expected hello");
        };
        if !self.attempts.try_take(now, 1.0) {
            return self.refuse(conn, RefuseCode::RateLimited, "too many handoff attempts");
        }
        if v != PROTOCOL_VERSION {
            return self.refuse(conn, RefuseCode::Version, "unsupported handoff version");
        }
        let remote = self.conns[&conn].remote_peer_id.clone();
        if successor_peer_id != remote
            || predecessor_peer_id != self.peer_id
            || remote.len() > MAX_PEER_ID
        {
            return self.refuse(conn, RefuseCode::WrongPeer, "peer ids do not match");
        }
        if generation != self.generation + 1 {
            return self.refuse(
                conn,
                RefuseCode::WrongGeneration,
                &format!("expected generation {}", self.generation + 1),
            );
        }
        let Some(successor_nonce) = auth::parse_nonce(&nonce) else {
            return self.refuse(conn, RefuseCode::BadMessage, "nonce must be 32 bytes hex");
        };
        if endpoints.len() > MAX_ENDPOINTS {
            return self.refuse(conn, RefuseCode::BadMessage, "too many endpoints");
        }
        if self.seen.contains(&successor_nonce) {
            return self.refuse(conn, RefuseCode::Replay, "nonce already used");
        }
        if self.done {
            return self.refuse(conn, RefuseCode::Done, "handoff already complete");
        }
        if self.aborted_successors.contains(&remote) {
            return self.refuse(
                conn,
                RefuseCode::Aborted,
                "this successor's handoff was aborted",
            );
        }
        if let Some(s) = &self.session
            && s.successor_peer_id != remote
            && s.conn.is_some()
        {
            return self.refuse(conn, RefuseCode::Busy, "another successor is being served");
        }
        self.seen.insert(successor_nonce);
        self.seen_order.push_back(successor_nonce);
        if self.seen_order.len() > SEEN_NONCES
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        let (predecessor_nonce, p_hex) = auth::fresh_nonce(&mut self.rng);
        let binding = Binding {
            predecessor_peer_id: &self.peer_id,
            successor_peer_id: &remote,
            generation,
            successor_nonce: &successor_nonce,
            predecessor_nonce: &predecessor_nonce,
        };
        let mac = auth::prove(&self.secret, Role::Predecessor, &binding);
        self.transmits.push_back(Transmit::Send(
            conn,
            Message::Challenge { nonce: p_hex, mac },
        ));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.stage = Stage::AwaitProof {
                successor_nonce,
                predecessor_nonce,
                endpoints,
                resume,
            };
        }
    }

    fn on_authenticated(
        &mut self,
        now: Instant,
        conn: ConnId,
        remote: String,
        endpoints: Vec<SignalingEndpoint>,
        resume: Option<Resume>,
    ) {
        // Resume the current session if it is this successor's and the positions fit.
        if let Some(s) = &mut self.session
            && s.successor_peer_id == remote
            && let (Some(r), Some(snap)) = (&resume, &s.snapshot)
            && r.session == s.id
            && r.next_chunk <= snap.chunks
            && r.tail_next >= s.tail_base
            && r.tail_next <= s.tail_end()
        {
            if let Some(old) = s.conn.replace(conn)
                && old != conn
            {
                self.conns.remove(&old);
                self.transmits.push_back(Transmit::Close(old));
            }
            s.lost_at = None;
            s.endpoints = endpoints;
            s.acked = s.acked.max(r.next_chunk);
            s.next_send = s.acked;
            while s.tail_base < r.tail_next {
                if let Some(e) = s.tail.pop_front() {
                    s.tail_bytes -= e.len();
                }
                s.tail_base += 1;
            }
            s.tail_send = r.tail_next;
            s.cut_over_sent = false;
            s.accepted_sent = true;
            let accepted = Message::Accepted {
                session: s.id,
                size: snap.source.len(),
                chunk_size: self.cfg.chunk_size as u32,
                chunks: snap.chunks,
                sha256: snap.sha256.clone(),
                resume_chunk: s.acked,
                resume_tail: s.tail_send,
            };
            tracing::info!(
                session = s.id,
                chunk = s.acked,
                tail = s.tail_send,
                "handoff: session resumed"
            );
            self.transmits.push_back(Transmit::Send(conn, accepted));
            self.events.push_back(PredecessorEvent::Authenticated {
                successor_peer_id: remote,
                resumed: true,
            });
            self.check_ready();
            return;
        }
        let restarts = match self.session.take() {
            Some(old) => {
                if let Some(c) = old.conn
                    && c != conn
                {
                    self.conns.remove(&c);
                    self.transmits.push_back(Transmit::Close(c));
                }
                if old.successor_peer_id == remote {
                    old.restarts
                } else {
                    0
                }
            }
            None => 0,
        };
        let _ = now;
        self.events.push_back(PredecessorEvent::Authenticated {
            successor_peer_id: remote.clone(),
            resumed: false,
        });
        self.start_session(conn, remote, endpoints, restarts);
    }

    fn start_session(
        &mut self,
        conn: ConnId,
        successor_peer_id: String,
        endpoints: Vec<SignalingEndpoint>,
        restarts: u32,
    ) {
        let id = self.next_session;
        self.next_session += 1;
        self.session = Some(Session {
            id,
            successor_peer_id,
            endpoints,
            conn: Some(conn),
            lost_at: None,
            snapshot: None,
            accepted_sent: false,
            next_send: 0,
            acked: 0,
            tail: VecDeque::new(),
            tail_base: 0,
            tail_send: 0,
            tail_bytes: 0,
            ready_emitted: false,
            cut_over: None,
            cut_over_sent: false,
            confirmed: false,
            restarts,
        });
        self.events.push_back(PredecessorEvent::SnapshotNeeded);
    }

    /// Snapshot chunk size in bytes (for [`PreparedSnapshot::new`]).
    pub fn chunk_size(&self) -> usize {
        self.cfg.chunk_size
    }

    /// The relay snapshot exported for the current session (answer to `SnapshotNeeded`),
    /// hashed by the shell ([`PreparedSnapshot::new`] / [`PreparedSnapshot::from_json`],
    /// off the async threads): the core spawns no threads. Every replication event after
    /// this export must go to [`Predecessor::push_tail`]. Digests made with another chunk
    /// size are recomputed here, on this thread.
    pub fn provide_snapshot(&mut self, _now: Instant, prepared: PreparedSnapshot) {
        let chunk = self.cfg.chunk_size;
        let prepared = prepared.rechunk(chunk);
        let Some(s) = &mut self.session else {
            return;
        };
        if s.snapshot.is_some() {
            return;
        }
        let chunks = prepared.source.len().div_ceil(chunk as u64) as u32;
        let snap = Snapshot {
            sha256: prepared.sha256,
            chunks,
            source: prepared.source,
            chunk_sha256: prepared.chunk_sha256,
        };
        tracing::info!(
            session = s.id,
            bytes = snap.source.len(),
            chunks,
            "handoff: snapshot exported"
        );
        if let Some(conn) = s.conn {
            s.accepted_sent = true;
            self.transmits.push_back(Transmit::Send(
                conn,
                Message::Accepted {
                    session: s.id,
                    size: snap.source.len(),
                    chunk_size: chunk as u32,
                    chunks,
                    sha256: snap.sha256.clone(),
                    resume_chunk: 0,
                    resume_tail: 0,
                },
            ));
        }
        s.snapshot = Some(snap);
        self.check_ready();
    }

    /// Whether replication events are wanted now (a snapshot was exported and the
    /// cut-over has not happened).
    pub fn wants_tail(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.snapshot.is_some() && s.cut_over.is_none())
    }

    /// One encoded replication event, in relay order. Ignored unless [`Predecessor::wants_tail`].
    pub fn push_tail(&mut self, event: Vec<u8>) {
        if !self.wants_tail() {
            return;
        }
        let s = self
            .session
            .as_mut()
            .expect("wants_tail checked the session");
        s.tail_bytes += event.len();
        s.tail.push_back(event);
        if s.tail_bytes > self.cfg.max_tail_bytes {
            self.abort("tail backlog exceeded its limit (successor too slow)");
        }
    }

    /// Cut over (after `ReadyForCutOver`): the relay is `Draining` and every replication
    /// event up to now was pushed; `high_water` is every room's head.
    pub fn cut_over(&mut self, _now: Instant, high_water: HighWater) {
        let Some(s) = &mut self.session else {
            return;
        };
        if s.snapshot.is_none() || s.cut_over.is_some() {
            return;
        }
        tracing::info!(
            session = s.id,
            tail_end = s.tail_end(),
            rooms = high_water.len(),
            "handoff: cut-over"
        );
        s.cut_over = Some((s.tail_end(), high_water));
        self.events.push_back(PredecessorEvent::CutOver);
    }

    fn abort(&mut self, reason: &str) {
        if let Some(s) = self.session.take() {
            tracing::warn!(session = s.id, reason, "handoff aborted");
            if let Some(c) = s.conn {
                self.conns.remove(&c);
                self.transmits.push_back(Transmit::Close(c));
            }
            self.events.push_back(PredecessorEvent::Aborted {
                reason: reason.to_string(),
            });
        }
    }

    fn check_ready(&mut self) {
        let backlog = self.cfg.cutover_tail_backlog;
        if let Some(s) = &mut self.session
            && let Some(snap) = &s.snapshot
            && s.acked >= snap.chunks
            && !s.ready_emitted
            && s.cut_over.is_none()
            && s.tail.len() <= backlog
        {
            s.ready_emitted = true;
            self.events.push_back(PredecessorEvent::ReadyForCutOver);
        }
    }

    fn on_active(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let Some(s) = &mut self.session else {
            return;
        };
        if s.conn != Some(conn) {
            return;
        }
        let chunks = s.snapshot.as_ref().map_or(0, |x| x.chunks);
        match msg {
            Message::ChunkAck { session, next } if session == s.id && next <= chunks => {
                s.acked = s.acked.max(next);
                s.next_send = s.next_send.max(s.acked);
                self.check_ready();
            }
            Message::ChunkNack { session, index } if session == s.id && index < chunks => {
                tracing::warn!(
                    session,
                    index,
                    "handoff: chunk refused by the successor; resending"
                );
                s.next_send = index.max(s.acked);
            }
            Message::TailAck { session, next } if session == s.id && next <= s.tail_send => {
                while s.tail_base < next {
                    if let Some(e) = s.tail.pop_front() {
                        s.tail_bytes -= e.len();
                    }
                    s.tail_base += 1;
                }
                self.check_ready();
            }
            Message::Confirm {
                session,
                high_water,
            } if session == s.id && s.cut_over_sent => {
                let ours = &s
                    .cut_over
                    .as_ref()
                    .expect("cut_over_sent implies cut_over")
                    .1;
                if *ours == high_water {
                    s.confirmed = true;
                    tracing::info!(session, "handoff: successor confirmed the high-water marks");
                    self.events.push_back(PredecessorEvent::Confirmed);
                } else {
                    self.restart(now, conn, "successor confirmed different high-water marks");
                }
            }
            Message::Mismatch { session, rooms } if session == s.id => {
                tracing::warn!(session, ?rooms, "handoff: high-water mismatch");
                self.restart(now, conn, "high-water mismatch");
            }
            Message::Live { session } if session == s.id && s.cut_over_sent => {
                // `live` implies `confirm` (the confirm may have been lost with a broken
                // connection before the successor went live).
                if !s.confirmed {
                    s.confirmed = true;
                    self.events.push_back(PredecessorEvent::Confirmed);
                }
                self.done = true;
                self.transmits.push_back(Transmit::Close(conn));
                tracing::info!(session, successor = %s.successor_peer_id, "handoff: successor is live");
                self.events.push_back(PredecessorEvent::SuccessorLive {
                    successor_peer_id: s.successor_peer_id.clone(),
                    endpoints: s.endpoints.clone(),
                    generation: self.generation + 1,
                });
            }
            other => {
                tracing::debug!(kind = other.kind(), "handoff: unexpected message ignored");
            }
        }
    }

    fn restart(&mut self, _now: Instant, conn: ConnId, reason: &str) {
        let s = self.session.take().expect("restart with a session");
        if s.restarts >= self.cfg.max_restarts {
            self.aborted_successors.insert(s.successor_peer_id.clone());
            self.session = Some(s);
            return self.abort(&format!("{reason}; no restarts left"));
        }
        tracing::warn!(
            session = s.id,
            reason,
            "handoff: restarting with a fresh snapshot"
        );
        self.start_session(conn, s.successor_peer_id, s.endpoints, s.restarts + 1);
    }

    /// Time passed: drops connections that did not authenticate in time, aborts a session
    /// whose successor did not resume.
    pub fn handle_timeout(&mut self, now: Instant) {
        let late: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !matches!(c.stage, Stage::Active) && now >= c.opened + self.cfg.auth_timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            tracing::info!(
                conn = id,
                "handoff: connection did not authenticate in time"
            );
            self.conns.remove(&id);
            self.transmits.push_back(Transmit::Close(id));
        }
        if !self.done
            && let Some(s) = &self.session
            && s.lost_at
                .is_some_and(|t| now >= t + self.cfg.resume_timeout)
        {
            if s.confirmed {
                // It confirmed the final state and then vanished before `live` arrived: it
                // is publishing (or lost the guard, and then discovery names the winner).
                // Move the clients to it; never become writable again.
                self.done = true;
                tracing::warn!(
                    session = s.id,
                    "handoff: confirmed successor went quiet; moving clients to it"
                );
                self.events.push_back(PredecessorEvent::SuccessorLive {
                    successor_peer_id: s.successor_peer_id.clone(),
                    endpoints: s.endpoints.clone(),
                    generation: self.generation + 1,
                });
            } else {
                self.abort("successor did not resume in time");
            }
        }
    }

    /// When [`Predecessor::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self
            .conns
            .values()
            .filter(|c| !matches!(c.stage, Stage::Active))
            .map(|c| c.opened + self.cfg.auth_timeout);
        let session = self
            .session
            .as_ref()
            .filter(|_| !self.done)
            .and_then(|s| s.lost_at)
            .map(|t| t + self.cfg.resume_timeout);
        conns.chain(session).min()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<PredecessorEvent> {
        self.events.pop_front()
    }

    /// Next thing to put on the wire (generated on demand: chunks respect the window).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        let s = self.session.as_mut()?;
        let conn = s.conn?;
        if !s.accepted_sent {
            return None;
        }
        let snap = s.snapshot.as_ref()?;
        if s.tail_send < s.tail_end() {
            let start = (s.tail_send - s.tail_base) as usize;
            let mut bytes = 0;
            let mut events = Vec::new();
            for e in s.tail.iter().skip(start) {
                if !events.is_empty()
                    && (bytes + e.len() > self.cfg.tail_batch_bytes || events.len() >= 1024)
                {
                    break;
                }
                bytes += e.len();
                events.push(e.clone());
            }
            let first = s.tail_send;
            s.tail_send += events.len() as u64;
            return Some(Transmit::Send(
                conn,
                Message::Tail {
                    session: s.id,
                    first,
                    events,
                },
            ));
        }
        if s.next_send < snap.chunks && s.next_send < s.acked.saturating_add(self.cfg.window) {
            let index = s.next_send;
            let data = snap.source.chunk(index, self.cfg.chunk_size);
            s.next_send += 1;
            let sha256 = snap
                .chunk_sha256
                .get(index as usize)
                .cloned()
                .unwrap_or_else(|| sha256_hex(&data));
            return Some(Transmit::Send(
                conn,
                Message::Chunk {
                    session: s.id,
                    index,
                    sha256,
                    data,
                },
            ));
        }
        if let Some((tail_end, hw)) = &s.cut_over
            && !s.cut_over_sent
            && s.tail_send >= *tail_end
        {
            s.cut_over_sent = true;
            return Some(Transmit::Send(
                conn,
                Message::CutOver {
                    session: s.id,
                    tail_end: *tail_end,
                    high_water: hw.clone(),
                },
            ));
        }
        None
    }
}
