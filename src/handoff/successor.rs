//! [`Successor`]: the new node's side of the handoff. Sans-IO.
//!
//! # Call order
//! After [`Successor::new`] the first event is `Connect`: the driver opens an
//! `ouroboros-handoff` DataConnection to the predecessor and reports
//! [`Successor::handle_connected`] (or [`Successor::handle_disconnected`] if that failed).
//! Messages go to [`Successor::handle_message`]; [`Successor::handle_timeout`] is called when
//! [`Successor::poll_timeout`] has passed; after any call drain [`Successor::poll_event`] and
//! [`Successor::poll_transmit`]. Events the driver answers:
//! - `Reset` → discard relay state and any restore in progress from an earlier session;
//!   `RestorePiece` → feed the piece to a restore (`relay::StreamingRestore`, the first
//!   piece starts one); `RestoreFinish` → finish it, install the relay, then call
//!   [`Successor::restore_done`]; `ApplyTail` → `apply_replication` for each event, in
//!   order.
//! - `CheckHighWater` → [`Successor::confirm_high_water`] with the relay's heads.
//! - `Publish` → publish the discovery record; then [`Successor::went_live`] (relay
//!   `Primary`) or, if the guard refused, [`Successor::publish_refused`].
//! - `GiveUp` → fall back (backup store) or exit, see `protocol/handoff.md`.
//!
//! Size: ~800 lines, one state machine whose phases (connect, authenticate, transfer, tail,
//! confirm, publish) share its session state; its tests are in `handoff/tests/`.

use super::auth::{self, Binding, Role, SessionKeys};
use super::message::{HighWater, Message, PROTOCOL_VERSION, RefuseCode, Resume, Sealed};
use super::{Secret, sha256_hex};
use crate::discovery::SignalingEndpoint;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Successor timing settings.
#[derive(Debug, Clone)]
pub struct SuccessorConfig {
    /// First reconnect delay; doubles up to `reconnect_max`.
    pub reconnect_initial: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Give up after this long without hearing from the predecessor.
    pub give_up_after: Duration,
    /// Give up after this long without progress (no `accepted`, chunk or tail), even
    /// while the predecessor answers: refusals (`rate_limited`, `busy`) or a flood of other
    /// connections must not hold a successor forever.
    pub max_wait: Duration,
    /// Largest snapshot accepted.
    pub max_snapshot_bytes: u64,
    /// Largest number of out-of-order tail events held back.
    pub max_pending_tail: usize,
}

impl Default for SuccessorConfig {
    fn default() -> Self {
        SuccessorConfig {
            reconnect_initial: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(2),
            give_up_after: Duration::from_secs(10),
            max_wait: Duration::from_secs(120),
            max_snapshot_bytes: 16 << 30,
            max_pending_tail: 1 << 20,
        }
    }
}

/// Why the successor stopped trying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GiveUpReason {
    /// No word from the predecessor for `give_up_after` (it is probably dead).
    PredecessorUnreachable,
    /// The predecessor answered but no transfer progressed for `max_wait` (it kept
    /// refusing us, e.g. rate limited or busy under a flood): treated like an unreachable
    /// predecessor.
    Blocked,
    /// The predecessor could not prove it knows the secret (three times).
    PredecessorNotAuthentic,
    /// The predecessor refused us for good (wrong secret, wrong generation, ...).
    Refused(RefuseCode),
    /// Another node already took over (the discovery guard refused, or `done`): exit.
    Superseded,
}

/// How much of the predecessor's state the successor holds when it gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transferred {
    /// Nothing usable (no complete snapshot).
    Nothing,
    /// The snapshot and part of the live tail (the predecessor was still taking writes).
    Snapshot,
    /// Everything up to the cut-over, but the final tail may be incomplete.
    CutOver,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuccessorEvent {
    /// Open a connection to the predecessor.
    Connect,
    /// Close the current connection (report `handle_disconnected` afterwards).
    Close,
    /// Mutual authentication succeeded.
    Authenticated {
        /// The session.
        session: u64,
        /// Whether an interrupted session continues.
        resumed: bool,
    },
    /// Discard relay state and any restore in progress from an earlier session.
    Reset,
    /// The next piece of the snapshot, verified (SHA-256) and in order: decode and restore
    /// it while the rest arrives. The first piece of a session starts a new restore.
    RestorePiece(Vec<u8>),
    /// Every piece arrived and the whole snapshot's SHA-256 matches: finish the restore
    /// (an empty one if there were no pieces), then call [`Successor::restore_done`].
    RestoreFinish,
    /// Replication events to apply in order (after `Restore`).
    ApplyTail(Vec<Vec<u8>>),
    /// Compare these with the relay's heads and call `confirm_high_water`.
    CheckHighWater {
        /// The predecessor's final heads.
        expected: HighWater,
    },
    /// Publish the discovery record now, then call `went_live` or `publish_refused`.
    Publish,
    /// Handed over: this node is primary.
    Done,
    /// Stopped trying.
    GiveUp {
        /// Why.
        reason: GiveUpReason,
        /// What we hold.
        transferred: Transferred,
    },
}

/// Where the successor stands (for `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SuccessorPhase {
    /// Waiting to (re)connect.
    Connecting,
    /// Authenticating.
    Authenticating,
    /// Receiving snapshot and tail.
    Transferring,
    /// Verifying, publishing.
    CuttingOver,
    /// Primary.
    Done,
    /// Gave up.
    GaveUp,
}

#[derive(Debug)]
enum Stage {
    /// Waiting for the driver's connection (`Connect` emitted) or for `retry_at`.
    Disconnected {
        retry_at: Option<Instant>,
    },
    AwaitChallenge {
        nonce: [u8; auth::NONCE_LEN],
    },
    AwaitAccepted,
    Active,
    Done,
    GaveUp,
}

#[derive(Debug)]
struct Session {
    id: u64,
    size: u64,
    chunk_size: u32,
    chunks: u32,
    sha256: String,
    /// Snapshot bytes received (and handed out as `RestorePiece`).
    received: u64,
    /// SHA-256 of the snapshot so far, fed chunk by chunk (no second pass at the end).
    hasher: Sha256,
    next_chunk: u32,
    nack_outstanding: bool,
    restored: bool,
    tail_next: u64,
    pending: BTreeMap<u64, Vec<u8>>,
    buffered: Vec<Vec<u8>>,
    cut_over: Option<(u64, HighWater)>,
    checking: bool,
    confirmed: bool,
    live: bool,
}

/// The successor's handoff state machine.
#[derive(Debug)]
pub struct Successor {
    peer_id: String,
    predecessor_peer_id: String,
    generation: u64,
    secret: Secret,
    endpoints: Vec<SignalingEndpoint>,
    cfg: SuccessorConfig,
    stage: Stage,
    session: Option<Session>,
    last_heard: Instant,
    /// When the transfer last progressed (an authenticated message after the proof).
    last_progress: Instant,
    backoff: Duration,
    bad_predecessor_proofs: u32,
    /// Messages to send, sealed when popped ([`Successor::poll_transmit`]).
    out: VecDeque<Message>,
    /// The current connection's session keys (from the verified challenge on).
    keys: Option<SessionKeys>,
    /// The `auth` of the `hello` waiting in `out`.
    hello_auth: Option<String>,
    events: VecDeque<SuccessorEvent>,
    /// Where nonces come from (injected: a seeded one in tests).
    rng: StdRng,
}

impl Successor {
    /// The successor `peer_id` of `generation`, taking over from `predecessor_peer_id`;
    /// `endpoints` are where its clients will be moved. Nonces come from `rng` (the shell
    /// passes `StdRng::from_os_rng()`, tests a seeded one).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        peer_id: impl Into<String>,
        predecessor_peer_id: impl Into<String>,
        generation: u64,
        secret: Secret,
        endpoints: Vec<SignalingEndpoint>,
        cfg: SuccessorConfig,
        now: Instant,
        rng: StdRng,
    ) -> Self {
        Successor {
            peer_id: peer_id.into(),
            predecessor_peer_id: predecessor_peer_id.into(),
            generation,
            secret,
            endpoints,
            backoff: cfg.reconnect_initial,
            cfg,
            stage: Stage::Disconnected { retry_at: None },
            session: None,
            last_heard: now,
            last_progress: now,
            bad_predecessor_proofs: 0,
            out: VecDeque::new(),
            keys: None,
            hello_auth: None,
            events: VecDeque::from([SuccessorEvent::Connect]),
            rng,
        }
    }

    /// Current phase.
    pub fn phase(&self) -> SuccessorPhase {
        if self.is_live() {
            return SuccessorPhase::Done;
        }
        match &self.stage {
            Stage::Disconnected { .. } => SuccessorPhase::Connecting,
            Stage::AwaitChallenge { .. } | Stage::AwaitAccepted => SuccessorPhase::Authenticating,
            Stage::Active if self.session.as_ref().is_some_and(|s| s.cut_over.is_some()) => {
                SuccessorPhase::CuttingOver
            }
            Stage::Active => SuccessorPhase::Transferring,
            Stage::Done => SuccessorPhase::Done,
            Stage::GaveUp => SuccessorPhase::GaveUp,
        }
    }

    /// Bytes of snapshot received and in total.
    pub fn progress(&self) -> Option<(u64, u64)> {
        self.session.as_ref().map(|s| (s.received, s.size))
    }

    fn finished(&self) -> bool {
        matches!(self.stage, Stage::Done | Stage::GaveUp)
    }

    /// The connection to the predecessor is open: authenticate (and ask to resume).
    pub fn handle_connected(&mut self, now: Instant) {
        if self.finished() {
            return;
        }
        let (nonce, hex_nonce) = auth::fresh_nonce(&mut self.rng);
        let resume = self.session.as_ref().map(|s| Resume {
            session: s.id,
            next_chunk: s.next_chunk,
            tail_next: s.tail_next,
        });
        // A new connection: nothing queued for the old one goes out on it.
        self.out.clear();
        self.keys = None;
        self.hello_auth = Some(auth::hello_auth(
            &self.secret,
            &Binding {
                predecessor_peer_id: &self.predecessor_peer_id,
                successor_peer_id: &self.peer_id,
                generation: self.generation,
                successor_nonce: &nonce,
                predecessor_nonce: &[],
            },
        ));
        self.out.push_back(Message::Hello {
            v: PROTOCOL_VERSION,
            successor_peer_id: self.peer_id.clone(),
            predecessor_peer_id: self.predecessor_peer_id.clone(),
            generation: self.generation,
            nonce: hex_nonce,
            endpoints: self.endpoints.clone(),
            resume,
        });
        self.stage = Stage::AwaitChallenge { nonce };
        let _ = now;
    }

    /// The connection closed or could not be opened: reconnect after a backoff. (Not
    /// needed after a `Close` event: the machine already scheduled the reconnect.)
    pub fn handle_disconnected(&mut self, now: Instant) {
        if self.finished() || matches!(self.stage, Stage::Disconnected { retry_at: Some(_) }) {
            return;
        }
        self.stage = Stage::Disconnected {
            retry_at: Some(now + self.backoff),
        };
        self.backoff = (self.backoff * 2).min(self.cfg.reconnect_max);
    }

    fn is_live(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.live)
    }

    fn give_up(&mut self, reason: GiveUpReason) {
        if self.finished() {
            return;
        }
        if self.is_live() {
            // Already primary; we only kept trying to deliver `live`.
            tracing::info!(
                ?reason,
                "handoff: stopped delivering `live` to the predecessor"
            );
            self.stage = Stage::Done;
            self.events.push_back(SuccessorEvent::Close);
            return;
        }
        let transferred = match &self.session {
            Some(s) if s.restored && s.cut_over.is_some() => Transferred::CutOver,
            Some(s) if s.restored => Transferred::Snapshot,
            _ => Transferred::Nothing,
        };
        tracing::warn!(?reason, ?transferred, "handoff: successor gives up");
        self.stage = Stage::GaveUp;
        self.events.push_back(SuccessorEvent::Close);
        self.events.push_back(SuccessorEvent::GiveUp {
            reason,
            transferred,
        });
    }

    /// Drops the connection and reconnects after the backoff.
    fn retry(&mut self, now: Instant) {
        self.events.push_back(SuccessorEvent::Close);
        self.stage = Stage::Disconnected {
            retry_at: Some(now + self.backoff),
        };
        self.backoff = (self.backoff * 2).min(self.cfg.reconnect_max);
    }

    /// Time passed: reconnects, gives up.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.finished() {
            return;
        }
        if now >= self.last_heard + self.cfg.give_up_after {
            return self.give_up(GiveUpReason::PredecessorUnreachable);
        }
        if now >= self.last_progress + self.cfg.max_wait {
            return self.give_up(GiveUpReason::Blocked);
        }
        if let Stage::Disconnected { retry_at: Some(t) } = self.stage
            && now >= t
        {
            self.stage = Stage::Disconnected { retry_at: None };
            self.events.push_back(SuccessorEvent::Connect);
        }
    }

    /// When [`Successor::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished() {
            return None;
        }
        let give_up =
            (self.last_heard + self.cfg.give_up_after).min(self.last_progress + self.cfg.max_wait);
        match self.stage {
            Stage::Disconnected { retry_at: Some(t) } => Some(t.min(give_up)),
            _ => Some(give_up),
        }
    }

    /// Next message for the predecessor: the `hello` with its `auth`, the `proof` as it
    /// is, everything else sealed with the session key.
    pub fn poll_transmit(&mut self) -> Option<Sealed> {
        let msg = self.out.pop_front()?;
        Some(match (&msg, &mut self.keys) {
            (Message::Hello { .. }, _) => Sealed {
                msg,
                auth: self.hello_auth.take(),
            },
            (Message::Proof { .. }, _) | (_, None) => msg.into(),
            (_, Some(k)) => k.seal(msg),
        })
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<SuccessorEvent> {
        self.events.pop_front()
    }

    /// A message from the predecessor. Only authenticated messages count (and prove the
    /// predecessor alive): the challenge by its proof, a refusal of our `hello` by the
    /// session key its nonce gives, everything later by the session key. Anything else
    /// is ignored (logged): a stranger on the path cannot stop us.
    pub fn handle_message(&mut self, now: Instant, msg: impl Into<Sealed>) {
        let sealed = msg.into();
        if matches!(self.stage, Stage::GaveUp) {
            return;
        }
        let authentic = match (&self.stage, &sealed.msg) {
            (Stage::AwaitChallenge { .. }, Message::Challenge { .. }) => true, // checked below
            (Stage::AwaitChallenge { nonce }, Message::Refused { nonce: Some(p), .. }) => {
                match auth::parse_nonce(p) {
                    Some(p_nonce) => SessionKeys::derive(
                        &self.secret,
                        Role::Successor,
                        &Binding {
                            predecessor_peer_id: &self.predecessor_peer_id,
                            successor_peer_id: &self.peer_id,
                            generation: self.generation,
                            successor_nonce: nonce,
                            predecessor_nonce: &p_nonce,
                        },
                    )
                    .open(&sealed),
                    None => false,
                }
            }
            (Stage::AwaitChallenge { .. }, _) => false,
            _ => self.keys.as_mut().is_some_and(|k| k.open(&sealed)),
        };
        if !authentic {
            tracing::warn!(
                kind = sealed.msg.kind(),
                "handoff: unauthenticated message from the predecessor's side ignored"
            );
            return;
        }
        let msg = sealed.msg;
        if let Message::Refused { code, message, .. } = &msg {
            self.last_heard = now;
            tracing::warn!(?code, message, "handoff: predecessor refused us");
            return match code {
                c if c.is_retryable() => self.retry(now),
                RefuseCode::Done if self.is_live() => {
                    // The predecessor got our `live`: nothing left to do.
                    self.stage = Stage::Done;
                    self.events.push_back(SuccessorEvent::Close);
                }
                RefuseCode::Done => self.give_up(GiveUpReason::Superseded),
                c => self.give_up(GiveUpReason::Refused(*c)),
            };
        }
        match std::mem::replace(&mut self.stage, Stage::AwaitAccepted) {
            Stage::AwaitChallenge { nonce } => {
                let Message::Challenge { nonce: p_hex, mac } = msg else {
                    // Only a challenge (or a refusal, handled above) gets here.
                    self.stage = Stage::AwaitChallenge { nonce };
                    return;
                };
                let p_nonce = auth::parse_nonce(&p_hex).unwrap_or_default();
                let binding = Binding {
                    predecessor_peer_id: &self.predecessor_peer_id,
                    successor_peer_id: &self.peer_id,
                    generation: self.generation,
                    successor_nonce: &nonce,
                    predecessor_nonce: &p_nonce,
                };
                if auth::parse_nonce(&p_hex).is_none()
                    || !auth::verify(&self.secret, Role::Predecessor, &binding, &mac)
                {
                    self.bad_predecessor_proofs += 1;
                    tracing::warn!("handoff: the predecessor's proof does not verify");
                    if self.bad_predecessor_proofs >= 3 {
                        return self.give_up(GiveUpReason::PredecessorNotAuthentic);
                    }
                    return self.retry(now);
                }
                self.last_heard = now;
                let mac = auth::prove(&self.secret, Role::Successor, &binding);
                self.keys = Some(SessionKeys::derive(&self.secret, Role::Successor, &binding));
                self.out.push_back(Message::Proof { mac });
                self.stage = Stage::AwaitAccepted;
            }
            Stage::AwaitAccepted | Stage::Active => {
                self.last_heard = now;
                self.last_progress = now;
                self.stage = Stage::Active;
                self.on_active(msg);
            }
            Stage::Done => {
                self.last_heard = now;
                self.last_progress = now;
                self.stage = Stage::Done;
                // Already primary: if the predecessor (re)sends its cut-over, answer `live`.
                if let (Message::CutOver { session, .. }, Some(s)) = (&msg, &self.session)
                    && *session == s.id
                {
                    self.out.push_back(Message::Live { session: s.id });
                }
            }
            other => {
                self.stage = other;
                tracing::debug!(
                    kind = msg.kind(),
                    "handoff: message while disconnected ignored"
                );
            }
        }
    }

    fn on_active(&mut self, msg: Message) {
        match msg {
            Message::Accepted {
                session,
                size,
                chunk_size,
                chunks,
                sha256,
                resume_chunk,
                resume_tail,
            } => {
                self.backoff = self.cfg.reconnect_initial;
                let valid = chunk_size > 0
                    && chunk_size as usize <= super::message::MAX_MESSAGE_BYTES
                    && size <= self.cfg.max_snapshot_bytes
                    && size.div_ceil(chunk_size as u64) == chunks as u64;
                if !valid {
                    tracing::warn!(size, chunk_size, chunks, "handoff: invalid accepted");
                    return self.give_up(GiveUpReason::Refused(RefuseCode::BadMessage));
                }
                if let Some(s) = &self.session
                    && s.id == session
                    && resume_chunk == s.next_chunk
                    && resume_tail == s.tail_next
                {
                    self.events.push_back(SuccessorEvent::Authenticated {
                        session,
                        resumed: true,
                    });
                    if let Some(s) = &mut self.session {
                        s.nack_outstanding = false;
                        if s.live {
                            self.out.push_back(Message::Live { session });
                        }
                    }
                    return;
                }
                if let Some(old) = self.session.take()
                    && (old.restored || old.received > 0)
                {
                    self.events.push_back(SuccessorEvent::Reset);
                }
                self.session = Some(Session {
                    id: session,
                    size,
                    chunk_size,
                    chunks,
                    sha256,
                    received: 0,
                    hasher: Sha256::new(),
                    next_chunk: 0,
                    nack_outstanding: false,
                    restored: false,
                    tail_next: 0,
                    pending: BTreeMap::new(),
                    buffered: Vec::new(),
                    cut_over: None,
                    checking: false,
                    confirmed: false,
                    live: false,
                });
                self.events.push_back(SuccessorEvent::Authenticated {
                    session,
                    resumed: false,
                });
                if chunks == 0 {
                    self.snapshot_complete();
                }
            }
            Message::Chunk {
                session,
                index,
                sha256,
                data,
            } => self.on_chunk(session, index, sha256, data),
            Message::Tail {
                session,
                first,
                events,
            } => self.on_tail(session, first, events),
            Message::CutOver {
                session,
                tail_end,
                high_water,
            } => {
                let Some(s) = &mut self.session else { return };
                if s.id != session {
                    return;
                }
                if s.live {
                    self.out.push_back(Message::Live { session });
                    return;
                }
                s.cut_over = Some((tail_end, high_water));
                s.checking = false;
                self.check_cut_over();
            }
            other => tracing::debug!(kind = other.kind(), "handoff: unexpected message ignored"),
        }
    }

    fn on_chunk(&mut self, session: u64, index: u32, sha: String, data: Vec<u8>) {
        let Some(s) = &mut self.session else { return };
        if s.id != session || index < s.next_chunk || s.next_chunk >= s.chunks {
            return; // duplicate or stale
        }
        let expected_len = if index + 1 == s.chunks {
            s.size - s.chunk_size as u64 * index as u64
        } else {
            s.chunk_size as u64
        };
        if index > s.next_chunk || data.len() as u64 != expected_len || sha256_hex(&data) != sha {
            if !s.nack_outstanding {
                tracing::warn!(
                    session,
                    index,
                    expected = s.next_chunk,
                    "handoff: chunk rejected; asking to resend"
                );
                s.nack_outstanding = true;
                self.out.push_back(Message::ChunkNack {
                    session,
                    index: s.next_chunk,
                });
            }
            return;
        }
        s.nack_outstanding = false;
        s.hasher.update(&data);
        s.received += data.len() as u64;
        s.next_chunk += 1;
        self.events.push_back(SuccessorEvent::RestorePiece(data));
        if s.next_chunk == s.chunks {
            // The last chunk is acknowledged once the snapshot is restored
            // (`restore_done`), so the predecessor does not cut over (stop writes) while
            // we are still restoring: that would widen the clients' write gap.
            self.snapshot_complete();
        } else {
            self.out.push_back(Message::ChunkAck {
                session,
                next: s.next_chunk,
            });
        }
    }

    fn snapshot_complete(&mut self) {
        let s = self.session.as_mut().expect("snapshot of a session");
        if hex::encode(s.hasher.finalize_reset()) != s.sha256 {
            tracing::warn!(
                session = s.id,
                "handoff: snapshot checksum mismatch; starting over"
            );
            s.received = 0;
            s.next_chunk = 0;
            self.events.push_back(SuccessorEvent::Reset);
            s.nack_outstanding = true;
            self.out.push_back(Message::ChunkNack {
                session: s.id,
                index: 0,
            });
            return;
        }
        s.restored = true;
        let buffered = std::mem::take(&mut s.buffered);
        tracing::info!(
            session = s.id,
            bytes = s.received,
            "handoff: snapshot received"
        );
        self.events.push_back(SuccessorEvent::RestoreFinish);
        if !buffered.is_empty() {
            self.events.push_back(SuccessorEvent::ApplyTail(buffered));
        }
        self.check_cut_over();
    }

    fn on_tail(&mut self, session: u64, first: u64, events: Vec<Vec<u8>>) {
        let max_pending = self.cfg.max_pending_tail;
        let Some(s) = &mut self.session else { return };
        if s.id != session {
            return;
        }
        for (i, e) in events.into_iter().enumerate() {
            let seq = first + i as u64;
            if seq >= s.tail_next && s.pending.len() < max_pending {
                s.pending.entry(seq).or_insert(e);
            }
        }
        let mut ready = Vec::new();
        while let Some(e) = s.pending.remove(&s.tail_next) {
            ready.push(e);
            s.tail_next += 1;
        }
        if !ready.is_empty() {
            if s.restored {
                self.events.push_back(SuccessorEvent::ApplyTail(ready));
            } else {
                s.buffered.extend(ready);
            }
        }
        self.out.push_back(Message::TailAck {
            session,
            next: s.tail_next,
        });
        self.check_cut_over();
    }

    fn check_cut_over(&mut self) {
        let Some(s) = &mut self.session else { return };
        if let Some((tail_end, hw)) = &s.cut_over
            && s.restored
            && s.tail_next >= *tail_end
            && !s.checking
            && !s.confirmed
        {
            s.checking = true;
            self.events.push_back(SuccessorEvent::CheckHighWater {
                expected: hw.clone(),
            });
        }
    }

    /// The restore is finished (`RestoreFinish`; or failed): acknowledge the last chunk,
    /// which lets the predecessor cut over.
    pub fn restore_done(&mut self, _now: Instant) {
        if let Some(s) = &self.session
            && s.restored
            && s.chunks > 0
        {
            self.out.push_back(Message::ChunkAck {
                session: s.id,
                next: s.chunks,
            });
        }
    }

    /// The relay's heads after applying everything (answer to `CheckHighWater`).
    pub fn confirm_high_water(&mut self, _now: Instant, actual: &HighWater) {
        let Some(s) = &mut self.session else { return };
        let Some((_, expected)) = &s.cut_over else {
            return;
        };
        if !s.checking || s.confirmed {
            return;
        }
        let mut rooms = BTreeMap::new();
        for (room, &seq) in expected {
            let got = actual.get(room).copied().unwrap_or(0);
            if got != seq {
                rooms.insert(room.clone(), [seq, got]);
            }
        }
        for (room, &got) in actual {
            if got != 0 && !expected.contains_key(room) {
                rooms.insert(room.clone(), [0, got]);
            }
        }
        if rooms.is_empty() {
            s.confirmed = true;
            self.out.push_back(Message::Confirm {
                session: s.id,
                high_water: expected.clone(),
            });
            self.events.push_back(SuccessorEvent::Publish);
        } else {
            tracing::warn!(?rooms, "handoff: high-water mismatch after the final tail");
            s.checking = false;
            s.cut_over = None;
            self.out.push_back(Message::Mismatch {
                session: s.id,
                rooms,
            });
        }
    }

    /// The discovery record is published and the relay is primary: tell the predecessor.
    pub fn went_live(&mut self, _now: Instant) {
        let Some(s) = &mut self.session else { return };
        if !s.confirmed {
            return;
        }
        s.live = true;
        self.out.push_back(Message::Live { session: s.id });
        // Stay connected (and reconnect if needed) until the predecessor has our `live`:
        // it answers a later hello with `refused: done`.
        self.events.push_back(SuccessorEvent::Done);
    }

    /// The discovery guard refused our record: another node is primary. Stop.
    pub fn publish_refused(&mut self, _now: Instant) {
        self.give_up(GiveUpReason::Superseded);
    }
}
