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
//!
//! # Layout
//! - this file: the types, the state, and the entry points (open/message/close/timeout).
//! - `admission`: who may take over: `hello` checks, the challenge, resume or a new session.
//! - `transfer`: the snapshot, the tail, the cut-over decision and what goes on the wire.

mod admission;
mod transfer;

use super::auth::{self, Binding, Role, SessionKeys};
use super::message::{HighWater, Message, RefuseCode, Resume, Sealed};
use super::snapshot::Snapshot;
use super::{HandoffConfig, Secret};
use crate::discovery::SignalingEndpoint;
use crate::rate::TokenBucket;
use rand::rngs::StdRng;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

pub use crate::ids::ConnId;

/// How many used nonces are remembered for replay detection.
const SEEN_NONCES: usize = 4096;

/// Largest endpoint list accepted in `hello`.
const MAX_ENDPOINTS: usize = 16;

/// Largest peer id accepted.
const MAX_PEER_ID: usize = 256;

/// What the predecessor's driver must do on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Send a message on a connection (with its `auth` once the connection has keys).
    Send(ConnId, Sealed),
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
    /// Who the attempt is counted against: the peer id on a DataConnection (stamped by the
    /// signaling server), the client address on the WebSocket path (where the peer id is
    /// only declared).
    origin: String,
    stage: Stage,
    opened: Instant,
    /// The `hello` carried a valid `auth` (its sender knows the secret): never evicted
    /// for a newer connection.
    vouched: bool,
    /// This connection's session keys, from its `hello` on: every message sent after the
    /// challenge is sealed, every message received after the proof must open.
    keys: Option<SessionKeys>,
    /// Our nonce for this connection (hex), sent in a refusal of its `hello`.
    nonce: Option<String>,
}

/// One remote's attempt budget.
#[derive(Debug)]
struct Attempts {
    bucket: TokenBucket,
    last_used: Instant,
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
    /// Attempt buckets per remote ([`Conn::origin`]), at most `cfg.max_remotes`.
    attempts: HashMap<String, Attempts>,
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
        cfg.max_remotes = cfg.max_remotes.max(1);
        cfg.max_pending = cfg.max_pending.max(1);
        cfg.max_pending_per_remote = cfg.max_pending_per_remote.max(1);
        let _ = now;
        Predecessor {
            peer_id: peer_id.into(),
            generation,
            secret,
            attempts: HashMap::new(),
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
    /// id the signaling server stamped on it (and the remote its attempts count against).
    pub fn handle_open(&mut self, now: Instant, conn: ConnId, remote_peer_id: &str) {
        self.handle_open_from(now, conn, remote_peer_id, remote_peer_id);
    }

    /// A handoff connection opened from `origin` (whom its attempts count against: the
    /// client address of a WebSocket, whose `remote_peer_id` is only declared).
    ///
    /// At most `max_pending_per_remote` connections of one origin and `max_pending` in all
    /// wait for authentication: a connection over the first limit is closed at once; over the
    /// second, the oldest waiting connection without an authenticated `hello` is closed.
    pub fn handle_open_from(
        &mut self,
        now: Instant,
        conn: ConnId,
        remote_peer_id: &str,
        origin: &str,
    ) {
        let pending = |c: &Conn| !matches!(c.stage, Stage::Active);
        let from_origin = self
            .conns
            .values()
            .filter(|c| pending(c) && c.origin == origin)
            .count();
        if from_origin >= self.cfg.max_pending_per_remote {
            tracing::debug!(
                conn = conn.0,
                origin,
                "handoff: too many pending connections from one remote"
            );
            self.transmits.push_back(Transmit::Close(conn));
            return;
        }
        if self.conns.values().filter(|c| pending(c)).count() >= self.cfg.max_pending {
            let oldest = self
                .conns
                .iter()
                .filter(|(_, c)| pending(c) && !c.vouched)
                .min_by_key(|(id, c)| (c.opened, **id))
                .map(|(id, _)| *id);
            match oldest {
                Some(old) => {
                    tracing::debug!(
                        conn = %old,
                        "handoff: pending connection evicted for a newer one"
                    );
                    self.conns.remove(&old);
                    self.transmits.push_back(Transmit::Close(old));
                }
                None => {
                    self.transmits.push_back(Transmit::Close(conn));
                    return;
                }
            }
        }
        self.conns.insert(
            conn,
            Conn {
                remote_peer_id: remote_peer_id.to_string(),
                origin: origin.to_string(),
                stage: Stage::AwaitHello,
                opened: now,
                vouched: false,
                keys: None,
                nonce: None,
            },
        );
    }

    /// `msg` for `conn`, sealed with its session key if it has one.
    fn seal(&mut self, conn: ConnId, msg: Message) -> Sealed {
        match self.conns.get_mut(&conn).and_then(|c| c.keys.as_mut()) {
            Some(k) => k.seal(msg),
            None => msg.into(),
        }
    }

    /// `msg` sealed for `conn` as the next message this side sends (tests inject
    /// messages the core would not make by itself).
    #[cfg(test)]
    pub(crate) fn seal_for_tests(&mut self, conn: ConnId, msg: Message) -> Sealed {
        self.seal(conn, msg)
    }

    /// Queues `msg` for `conn` (sealed, see [`Predecessor::seal`]).
    fn send(&mut self, conn: ConnId, msg: Message) {
        let sealed = self.seal(conn, msg);
        self.transmits.push_back(Transmit::Send(conn, sealed));
    }

    /// How many remotes' attempt buckets are remembered (at most `max_remotes`).
    pub fn remembered_remotes(&self) -> usize {
        self.attempts.len()
    }

    /// Takes one attempt from `origin`'s bucket (created full; the least recently used
    /// bucket is forgotten when `max_remotes` are remembered).
    fn take_attempt(&mut self, now: Instant, origin: &str) -> bool {
        if !self.attempts.contains_key(origin) && self.attempts.len() >= self.cfg.max_remotes {
            let lru = self
                .attempts
                .iter()
                .min_by_key(|(_, a)| a.last_used)
                .map(|(k, _)| k.clone());
            if let Some(k) = lru {
                self.attempts.remove(&k);
            }
        }
        let (burst, rate) = (self.cfg.auth_burst, self.cfg.auth_per_second);
        let a = self
            .attempts
            .entry(origin.to_string())
            .or_insert_with(|| Attempts {
                bucket: TokenBucket::new(burst, rate, now),
                last_used: now,
            });
        a.last_used = now;
        a.bucket.try_take(now, 1.0)
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

    /// A message arrived on `conn`. After the proof, a message whose `auth` does not open
    /// with the connection's session key is ignored (logged).
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: impl Into<Sealed>) {
        let sealed = msg.into();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        match std::mem::replace(&mut c.stage, Stage::AwaitHello) {
            Stage::AwaitHello => self.on_hello(now, conn, sealed),
            Stage::AwaitProof {
                successor_nonce,
                predecessor_nonce,
                endpoints,
                resume,
            } => {
                let Message::Proof { mac } = sealed.msg else {
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
                if !c.keys.as_mut().is_some_and(|k| k.open(&sealed)) {
                    tracing::warn!(
                        conn = conn.0,
                        kind = sealed.msg.kind(),
                        "handoff: unauthenticated message ignored"
                    );
                    return;
                }
                self.on_active(now, conn, sealed.msg);
            }
        }
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
                conn = id.0,
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
}
