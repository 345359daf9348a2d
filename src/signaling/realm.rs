//! The realm: every registered client, its token, the offline queues, expiry and liveness.
//!
//! A sans-IO state machine. It does no I/O and never reads the clock:
//! - `handle_*`-style methods ([`Realm::connect`], [`Realm::message`], [`Realm::malformed`],
//!   [`Realm::too_big`], [`Realm::undeliverable`], [`Realm::disconnect`],
//!   [`Realm::handle_timeout`]) feed it an event and the current time;
//! - [`Realm::poll_output`] drains the resulting [`Action`]s (frames to send, sockets to
//!   close), in order;
//! - [`Realm::poll_timeout`] says when [`Realm::handle_timeout`] must next be called.
//!
//! Call order: after any `handle_*` call, drain `poll_output` until `None`, executing each
//! action (an action that fails to execute is reported back through
//! [`Realm::undeliverable`]), then re-arm the timer with `poll_timeout`.
//!
//! Sockets are opaque handles `H` chosen by the driver (the axum shell uses its per-socket
//! outbox); the realm only stores them and hands them back in actions. Each socket also has
//! a [`ConnId`], unique for the driver's lifetime, so that a stale socket (one replaced by a
//! reconnect with the same id and token) can never act for the id's new socket.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, HashMap, VecDeque, hash_map::Entry},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::value::RawValue;

use super::{
    config::{QueueLimits, Rate, SignalConfig},
    wire::{self, Inbound, MsgType, text},
};
use crate::rate::TokenBucket;

/// Identifies one socket for the lifetime of a driver. Never reused.
pub type ConnId = u64;

/// The settings the realm needs, taken from [`SignalConfig`].
#[derive(Debug, Clone)]
pub struct RealmConfig {
    /// Key clients must present.
    pub key: String,
    /// Queue expiry.
    pub expire_timeout: Duration,
    /// Silence before a client is disconnected.
    pub alive_timeout: Duration,
    /// Largest number of registered clients.
    pub concurrent_limit: usize,
    /// Largest client message (for the ERROR text).
    pub max_frame_size: usize,
    /// Per-client message rate (`None` = unlimited).
    pub rate: Option<Rate>,
    /// Malformed messages tolerated in a burst.
    pub malformed_limit: f64,
    /// Offline queue bounds.
    pub queues: QueueLimits,
}

impl From<&SignalConfig> for RealmConfig {
    fn from(c: &SignalConfig) -> Self {
        RealmConfig {
            key: c.key.clone(),
            expire_timeout: c.expire_timeout,
            alive_timeout: c.alive_timeout,
            concurrent_limit: c.concurrent_limit,
            max_frame_size: c.max_frame_size,
            rate: c.rate,
            malformed_limit: c.malformed_limit,
            queues: c.queues,
        }
    }
}

/// The WebSocket query of a connecting client. Empty strings count as missing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectRequest<'a> {
    /// `key` query parameter.
    pub key: Option<&'a str>,
    /// `id` query parameter.
    pub id: Option<&'a str>,
    /// `token` query parameter.
    pub token: Option<&'a str>,
    /// An in-process client (the node's own peer): exempt from the rate limit and the
    /// alive timeout.
    pub local: bool,
}

/// Outcome of [`Realm::connect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Registered under this id; `OPEN` (and any queued messages) are in the outputs.
    Open(Arc<str>),
    /// Refused; the error frame and a close are in the outputs.
    Rejected(Rejection),
}

/// Why a connection was refused, in the order the checks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// `key`, `id` or `token` missing or empty.
    NoParams,
    /// Wrong `key`.
    InvalidKey,
    /// Id too long or with control characters (ours).
    InvalidId,
    /// Token too long or with control characters (ours).
    InvalidToken,
    /// Id registered with another token.
    IdTaken,
    /// Concurrent limit reached.
    Limit,
}

/// How a socket is to be closed. The driver maps it to a close frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A close frame without status code, as the reference sends (admission errors,
    /// alive timeout).
    Normal,
    /// Replaced by a newer socket with the same id and token (1000).
    Replaced,
    /// Rate limit or malformed-message burst (1008).
    Policy,
    /// Message above the size limit (1009).
    TooBig,
}

/// An output of the realm, for the driver to execute.
#[derive(Debug)]
pub enum Action<H> {
    /// Send `frame` (a JSON text frame) on socket `to`. If the socket cannot take it
    /// (its write queue is full or it is gone), call [`Realm::undeliverable`] with
    /// `conn`, `dst` and `src`.
    Send {
        /// Target socket.
        to: H,
        /// Target socket's id.
        conn: ConnId,
        /// The frame.
        frame: String,
        /// The target's registered id, when it has one.
        dst: Option<Arc<str>>,
        /// For relayed frames: the sender's id (it gets `LEAVE` if delivery fails).
        src: Option<Arc<str>>,
    },
    /// Close socket `to` after the frames already sent to it.
    Close {
        /// Target socket.
        to: H,
        /// Target socket's id.
        conn: ConnId,
        /// Close frame to use.
        reason: CloseReason,
    },
    /// Drop socket `to` at once, discarding what is still queued for it (slow consumer).
    Drop {
        /// Target socket.
        to: H,
        /// Target socket's id.
        conn: ConnId,
    },
}

/// Counters for metrics. Gauges are current values, the rest count since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open WebSockets (filled in by the driver).
    pub sockets: usize,
    /// Registered clients (gauge).
    pub clients: usize,
    /// Sockets that sent `LEAVE` without `dst` and are no longer registered (gauge).
    pub detached: usize,
    /// Destinations with queued messages (gauge).
    pub queues: usize,
    /// Messages in offline queues (gauge).
    pub queued_messages: usize,
    /// Bytes in offline queues (gauge).
    pub queued_bytes: usize,
    /// Frames relayed to a destination socket (including deliveries from a queue).
    pub relayed: u64,
    /// Messages put in an offline queue.
    pub queued: u64,
    /// Queued messages that expired (their senders got EXPIRE).
    pub expired: u64,
    /// Messages refused because a queue was full (senders got EXPIRE at once).
    pub queue_full: u64,
    /// Messages with an invalid `dst` (senders got EXPIRE at once).
    pub invalid_dst: u64,
    /// Frames dropped: unknown type, LEAVE/EXPIRE to an absent peer, no `dst`, detached.
    pub dropped: u64,
    /// Frames that were not JSON.
    pub malformed: u64,
    /// Frames a socket could not take.
    pub undeliverable: u64,
    /// Connections refused, by reason.
    pub rejected: RejectedStats,
    /// Clients closed by the server, by reason.
    pub closed: ClosedStats,
}

/// Refused connections by [`Rejection`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectedStats {
    /// [`Rejection::NoParams`].
    pub no_params: u64,
    /// [`Rejection::InvalidKey`].
    pub invalid_key: u64,
    /// [`Rejection::InvalidId`] and [`Rejection::InvalidToken`].
    pub invalid_id: u64,
    /// [`Rejection::IdTaken`].
    pub id_taken: u64,
    /// [`Rejection::Limit`].
    pub limit: u64,
}

/// Server-side closes by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClosedStats {
    /// No HEARTBEAT within the alive timeout.
    pub alive_timeout: u64,
    /// Over the rate limit.
    pub rate_limited: u64,
    /// Sent a message above the size limit.
    pub too_big: u64,
    /// Sent a burst of malformed frames.
    pub malformed: u64,
    /// Could not keep up with its write queue.
    pub slow: u64,
    /// Replaced by a reconnect with the same id and token.
    pub replaced: u64,
}

impl Stats {
    /// Appends the counters in Prometheus text format, names prefixed `ouroboros_signaling_`.
    pub fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let mut metric = |name: &str, kind: &str, help: &str, values: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP ouroboros_signaling_{name} {help}");
            let _ = writeln!(out, "# TYPE ouroboros_signaling_{name} {kind}");
            for (labels, v) in values {
                let _ = writeln!(out, "ouroboros_signaling_{name}{labels} {v}");
            }
        };
        let g = |v: usize| v as u64;
        metric(
            "sockets",
            "gauge",
            "Open WebSockets.",
            &[("", g(self.sockets))],
        );
        metric(
            "clients",
            "gauge",
            "Registered clients.",
            &[("", g(self.clients))],
        );
        metric(
            "queued_messages",
            "gauge",
            "Messages waiting for absent peers.",
            &[("", g(self.queued_messages))],
        );
        metric(
            "queued_bytes",
            "gauge",
            "Bytes waiting for absent peers.",
            &[("", g(self.queued_bytes))],
        );
        metric(
            "relayed_total",
            "counter",
            "Frames relayed to a destination.",
            &[("", self.relayed)],
        );
        metric(
            "queued_total",
            "counter",
            "Messages queued for an absent peer.",
            &[("", self.queued)],
        );
        metric(
            "expired_total",
            "counter",
            "Queued messages expired.",
            &[("", self.expired)],
        );
        metric(
            "refused_total",
            "counter",
            "Messages refused, senders got EXPIRE.",
            &[
                ("{reason=\"queue_full\"}", self.queue_full),
                ("{reason=\"invalid_dst\"}", self.invalid_dst),
            ],
        );
        metric(
            "dropped_total",
            "counter",
            "Frames dropped.",
            &[("", self.dropped)],
        );
        metric(
            "malformed_total",
            "counter",
            "Frames that were not JSON.",
            &[("", self.malformed)],
        );
        metric(
            "undeliverable_total",
            "counter",
            "Frames a socket could not take.",
            &[("", self.undeliverable)],
        );
        let r = &self.rejected;
        metric(
            "rejected_total",
            "counter",
            "Connections refused.",
            &[
                ("{reason=\"no_params\"}", r.no_params),
                ("{reason=\"invalid_key\"}", r.invalid_key),
                ("{reason=\"invalid_id\"}", r.invalid_id),
                ("{reason=\"id_taken\"}", r.id_taken),
                ("{reason=\"limit\"}", r.limit),
            ],
        );
        let c = &self.closed;
        metric(
            "closed_total",
            "counter",
            "Clients closed by the server.",
            &[
                ("{reason=\"alive_timeout\"}", c.alive_timeout),
                ("{reason=\"rate_limited\"}", c.rate_limited),
                ("{reason=\"too_big\"}", c.too_big),
                ("{reason=\"malformed\"}", c.malformed),
                ("{reason=\"slow\"}", c.slow),
                ("{reason=\"replaced\"}", c.replaced),
            ],
        );
    }
}

/// One socket's state.
#[derive(Debug)]
struct Session<H> {
    /// Which socket.
    conn: ConnId,
    /// The driver's handle to it.
    handle: H,
    /// Last HEARTBEAT (or registration); the alive timeout counts from here.
    last_seen: Instant,
    /// Message rate limit; `None` = unlimited.
    rate: Option<TokenBucket>,
    /// Malformed-frame allowance; made on the first malformed frame.
    malformed: Option<Box<TokenBucket>>,
}

impl<H> Session<H> {
    /// Takes one malformed-frame token (the bucket is made on first use: most clients never
    /// send a malformed frame, and every idle connection's bytes count).
    fn take_malformed(&mut self, now: Instant, limit: f64) -> bool {
        self.malformed
            .get_or_insert_with(|| Box::new(TokenBucket::new(limit + 1.0, 1.0, now)))
            .try_take(now, 1.0)
    }
}

/// A registered client.
#[derive(Debug)]
struct Client<H> {
    /// Its id (the map key, kept here to hand out clones).
    id: Arc<str>,
    /// Its token: a reconnect with the same id must present it.
    token: Box<str>,
    /// Its current socket.
    session: Session<H>,
}

/// A socket that unregistered itself with `LEAVE` without `dst` but stays open.
#[derive(Debug)]
struct Detached<H> {
    /// The socket; only HEARTBEAT is still honoured, and the alive timeout still applies.
    session: Session<H>,
}

/// One message waiting for an absent destination.
#[derive(Debug)]
struct Queued {
    /// Its sender, who gets EXPIRE if it expires.
    src: Arc<str>,
    /// The frame, already rebuilt for the destination.
    frame: String,
}

/// Messages for one absent destination.
#[derive(Debug)]
struct Queue {
    /// Tells this queue from an earlier one for the same id (expiry timers are lazy).
    generation: u64,
    /// FIFO.
    messages: VecDeque<Queued>,
    /// Sum of frame lengths.
    bytes: usize,
}

/// What a timer is for. Timers are lazy: a fired timer re-checks the state.
#[derive(Debug)]
enum TimerKind {
    /// Check socket `conn` (registered as `id`, or detached) for silence.
    Alive { conn: ConnId, id: Arc<str> },
    /// Expire the queue for `dst` if it is still generation `generation`.
    Expire { dst: Arc<str>, generation: u64 },
}

#[derive(Debug)]
struct Timer {
    at: Instant,
    seq: u64,
    kind: TimerKind,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    /// Reversed, so the `BinaryHeap` pops the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// The signaling realm. See the module documentation for the call protocol.
#[derive(Debug)]
pub struct Realm<H> {
    config: RealmConfig,
    clients: HashMap<Arc<str>, Client<H>>,
    detached: HashMap<ConnId, Detached<H>>,
    queues: HashMap<Arc<str>, Queue>,
    queued_messages: usize,
    queued_bytes: usize,
    timers: BinaryHeap<Timer>,
    seq: u64,
    outputs: VecDeque<Action<H>>,
    stats: Stats,
}

impl<H: Clone> Realm<H> {
    /// An empty realm.
    pub fn new(config: RealmConfig) -> Self {
        Realm {
            config,
            clients: HashMap::new(),
            detached: HashMap::new(),
            queues: HashMap::new(),
            queued_messages: 0,
            queued_bytes: 0,
            timers: BinaryHeap::new(),
            seq: 0,
            outputs: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The next action to execute, in order.
    pub fn poll_output(&mut self) -> Option<Action<H>> {
        self.outputs.pop_front()
    }

    /// When [`Realm::handle_timeout`] must next run (`None`: no timer pending).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.at)
    }

    /// Whether `id` is registered.
    pub fn contains(&self, id: &str) -> bool {
        self.clients.contains_key(id)
    }

    /// The registered ids, in no particular order.
    pub fn ids(&self) -> Vec<String> {
        self.clients.keys().map(|k| k.to_string()).collect()
    }

    /// Number of registered clients.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is registered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Counters; `sockets` is left 0 for the driver to fill in.
    pub fn stats(&self) -> Stats {
        Stats {
            clients: self.clients.len(),
            detached: self.detached.len(),
            queues: self.queues.len(),
            queued_messages: self.queued_messages,
            queued_bytes: self.queued_bytes,
            ..self.stats.clone()
        }
    }

    fn push_timer(&mut self, at: Instant, kind: TimerKind) {
        self.seq += 1;
        self.timers.push(Timer {
            at,
            seq: self.seq,
            kind,
        });
    }

    fn send(
        &mut self,
        to: H,
        conn: ConnId,
        frame: String,
        dst: Option<Arc<str>>,
        src: Option<Arc<str>>,
    ) {
        self.outputs.push_back(Action::Send {
            to,
            conn,
            frame,
            dst,
            src,
        });
    }

    fn close(&mut self, to: H, conn: ConnId, reason: CloseReason) {
        self.outputs.push_back(Action::Close { to, conn, reason });
    }

    fn new_session(&self, now: Instant, conn: ConnId, handle: H, local: bool) -> Session<H> {
        Session {
            conn,
            handle,
            last_seen: now,
            rate: match self.config.rate {
                Some(r) if !local => Some(TokenBucket::new(r.burst, r.per_second, now)),
                _ => None,
            },
            malformed: None,
        }
    }

    /// A socket connected with `req`. Runs the reference's admission checks in order
    /// (missing params, key, then ours: id and token validity, then id taken, limit);
    /// a reconnect with a registered id and the same token replaces the old socket (which
    /// is closed) and gets `OPEN`.
    pub fn connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        handle: H,
        req: &ConnectRequest<'_>,
    ) -> Admission {
        let non_empty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_owned);
        let (Some(key), Some(id), Some(token)) =
            (non_empty(req.key), non_empty(req.id), non_empty(req.token))
        else {
            self.stats.rejected.no_params += 1;
            return self.reject(
                conn,
                handle,
                Rejection::NoParams,
                wire::error_frame(text::NO_PARAMS),
            );
        };
        if key != self.config.key {
            self.stats.rejected.invalid_key += 1;
            return self.reject(
                conn,
                handle,
                Rejection::InvalidKey,
                wire::error_frame(text::INVALID_KEY),
            );
        }
        if !wire::valid_id(&id) {
            self.stats.rejected.invalid_id += 1;
            let msg = if id.len() > wire::MAX_ID_LEN {
                text::ID_TOO_LONG
            } else {
                text::ID_CONTROL
            };
            return self.reject(conn, handle, Rejection::InvalidId, wire::error_frame(msg));
        }
        if !wire::valid_id(&token) {
            self.stats.rejected.invalid_id += 1;
            return self.reject(
                conn,
                handle,
                Rejection::InvalidToken,
                wire::error_frame(text::BAD_TOKEN),
            );
        }
        let session = self.new_session(now, conn, handle.clone(), req.local);
        let id: Arc<str> = match self.clients.get_mut(id.as_str()) {
            Some(existing) if *existing.token != *token => {
                self.stats.rejected.id_taken += 1;
                return self.reject(conn, handle, Rejection::IdTaken, wire::ID_TAKEN.to_string());
            }
            Some(existing) => {
                let old = std::mem::replace(&mut existing.session, session);
                let id = existing.id.clone();
                self.stats.closed.replaced += 1;
                self.close(old.handle, old.conn, CloseReason::Replaced);
                id
            }
            None => {
                if self.clients.len() >= self.config.concurrent_limit {
                    self.stats.rejected.limit += 1;
                    return self.reject(
                        conn,
                        handle,
                        Rejection::Limit,
                        wire::error_frame(text::LIMIT),
                    );
                }
                let id: Arc<str> = Arc::from(id);
                self.clients.insert(
                    id.clone(),
                    Client {
                        id: id.clone(),
                        token: token.into_boxed_str(),
                        session,
                    },
                );
                id
            }
        };
        self.send(
            handle.clone(),
            conn,
            wire::OPEN.to_string(),
            Some(id.clone()),
            None,
        );
        if !req.local {
            self.push_timer(
                now + self.config.alive_timeout,
                TimerKind::Alive {
                    conn,
                    id: id.clone(),
                },
            );
        }
        if let Some(queue) = self.queues.remove(&id) {
            self.queued_messages -= queue.messages.len();
            self.queued_bytes -= queue.bytes;
            for q in queue.messages {
                self.stats.relayed += 1;
                self.send(handle.clone(), conn, q.frame, Some(id.clone()), Some(q.src));
            }
        }
        Admission::Open(id)
    }

    fn reject(&mut self, conn: ConnId, handle: H, why: Rejection, frame: String) -> Admission {
        self.send(handle.clone(), conn, frame, None, None);
        self.close(handle, conn, CloseReason::Normal);
        Admission::Rejected(why)
    }

    /// The registered client on socket `conn`, if `id` is still registered to it.
    fn current(&mut self, conn: ConnId, id: &str) -> Option<&mut Client<H>> {
        self.clients.get_mut(id).filter(|c| c.session.conn == conn)
    }

    /// Unregisters the socket `conn` (registered as `id` or detached) and returns it.
    fn remove_session(&mut self, conn: ConnId, id: &str) -> Option<Session<H>> {
        if self.current(conn, id).is_some() {
            self.clients.remove(id).map(|c| c.session)
        } else {
            self.detached.remove(&conn).map(|d| d.session)
        }
    }

    /// Sends ERROR `msg` to the socket, closes it and forgets it.
    fn expel(&mut self, conn: ConnId, id: &str, msg: &str, reason: CloseReason) -> bool {
        let Some(session) = self.remove_session(conn, id) else {
            return false;
        };
        self.send(
            session.handle.clone(),
            conn,
            wire::error_frame(msg),
            None,
            None,
        );
        self.close(session.handle, conn, reason);
        true
    }

    /// A parsed JSON message from socket `conn`, registered (at connect) as `id`.
    pub fn message(&mut self, now: Instant, conn: ConnId, id: &str, msg: &Inbound<'_>) {
        let Some(client) = self.current(conn, id) else {
            // Detached (or unknown) socket: only HEARTBEAT still counts.
            let Some(d) = self.detached.get_mut(&conn) else {
                self.stats.dropped += 1;
                return;
            };
            if d.session
                .rate
                .as_mut()
                .is_some_and(|b| !b.try_take(now, 1.0))
            {
                self.stats.closed.rate_limited += 1;
                self.expel(conn, id, text::RATE_LIMITED, CloseReason::Policy);
            } else if msg.kind == Some(MsgType::Heartbeat) {
                d.session.last_seen = now;
            } else {
                self.stats.dropped += 1;
            }
            return;
        };
        if client
            .session
            .rate
            .as_mut()
            .is_some_and(|b| !b.try_take(now, 1.0))
        {
            self.stats.closed.rate_limited += 1;
            self.expel(conn, id, text::RATE_LIMITED, CloseReason::Policy);
            return;
        }
        match msg.kind {
            Some(MsgType::Heartbeat) => client.session.last_seen = now,
            Some(kind) if kind.is_relayed() => {
                let src = client.id.clone();
                self.relay(now, src, conn, kind, msg.dst.as_deref(), msg.payload);
            }
            _ => self.stats.dropped += 1,
        }
    }

    fn relay(
        &mut self,
        now: Instant,
        src: Arc<str>,
        src_conn: ConnId,
        kind: MsgType,
        dst: Option<&str>,
        payload: Option<&RawValue>,
    ) {
        let quiet = matches!(kind, MsgType::Leave | MsgType::Expire);
        let Some(dst) = dst else {
            if kind == MsgType::Leave {
                // The reference unregisters the sender and leaves its socket open.
                if let Some(c) = self.clients.remove(&src) {
                    self.detached
                        .insert(src_conn, Detached { session: c.session });
                }
            } else {
                self.stats.dropped += 1;
            }
            return;
        };
        if !wire::valid_id(dst) {
            if quiet {
                self.stats.dropped += 1;
            } else {
                self.stats.invalid_dst += 1;
                self.notify_expire(&src, dst);
            }
            return;
        }
        if let Some(d) = self.clients.get(dst) {
            let frame = wire::relay_frame(kind, &src, dst, payload);
            let (to, conn, dst) = (d.session.handle.clone(), d.session.conn, d.id.clone());
            self.stats.relayed += 1;
            self.send(to, conn, frame, Some(dst), Some(src));
            return;
        }
        if quiet {
            self.stats.dropped += 1;
            return;
        }
        let frame = wire::relay_frame(kind, &src, dst, payload);
        let limits = self.config.queues;
        let (len, bytes) = self
            .queues
            .get(dst)
            .map_or((0, 0), |q| (q.messages.len(), q.bytes));
        if len >= limits.per_peer
            || bytes + frame.len() > limits.bytes_per_peer
            || self.queued_messages >= limits.total
            || self.queued_bytes + frame.len() > limits.bytes_total
        {
            self.stats.queue_full += 1;
            self.notify_expire(&src, dst);
            return;
        }
        let dst: Arc<str> = match self.queues.get_key_value(dst) {
            Some((k, _)) => k.clone(),
            None => Arc::from(dst),
        };
        let queue = match self.queues.entry(dst.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.seq += 1;
                let generation = self.seq;
                self.seq += 1;
                self.timers.push(Timer {
                    at: now + self.config.expire_timeout,
                    seq: self.seq,
                    kind: TimerKind::Expire {
                        dst: dst.clone(),
                        generation,
                    },
                });
                e.insert(Queue {
                    generation,
                    messages: VecDeque::new(),
                    bytes: 0,
                })
            }
        };
        queue.bytes += frame.len();
        self.queued_bytes += frame.len();
        self.queued_messages += 1;
        self.stats.queued += 1;
        queue.messages.push_back(Queued { src, frame });
    }

    /// Sends `{"type":"EXPIRE","src":<from>,"dst":<to>}` to `to` if it is registered.
    fn notify_expire(&mut self, to: &str, from: &str) {
        if let Some(c) = self.clients.get(to) {
            let frame = wire::relay_frame(MsgType::Expire, from, to, None);
            let (h, conn, id) = (c.session.handle.clone(), c.session.conn, c.id.clone());
            self.send(h, conn, frame, Some(id), None);
        }
    }

    /// Socket `conn` (registered as `id`) sent a frame that is not JSON. A burst above the
    /// malformed limit closes it with ERROR.
    pub fn malformed(&mut self, now: Instant, conn: ConnId, id: &str) {
        self.stats.malformed += 1;
        let limit = self.config.malformed_limit;
        let allowed = match self.current(conn, id) {
            Some(c) => c.session.take_malformed(now, limit),
            None => match self.detached.get_mut(&conn) {
                Some(d) => d.session.take_malformed(now, limit),
                None => return,
            },
        };
        if !allowed {
            self.stats.closed.malformed += 1;
            self.expel(conn, id, text::MALFORMED, CloseReason::Policy);
        }
    }

    /// Socket `conn` (registered as `id`) sent a message above the size limit: ERROR, close.
    pub fn too_big(&mut self, _now: Instant, conn: ConnId, id: &str) {
        let msg = format!(
            "{} (limit {} bytes)",
            text::TOO_BIG,
            self.config.max_frame_size
        );
        if self.expel(conn, id, &msg, CloseReason::TooBig) {
            self.stats.closed.too_big += 1;
        }
    }

    /// An [`Action::Send`] could not be executed: the socket's write queue was full or the
    /// socket is gone. The client is dropped as too slow, and the sender of a relayed frame
    /// gets `LEAVE` from the destination (as the reference does when a send fails).
    pub fn undeliverable(
        &mut self,
        _now: Instant,
        conn: ConnId,
        dst: Option<&str>,
        src: Option<&str>,
    ) {
        self.stats.undeliverable += 1;
        let Some(dst) = dst else { return };
        let Some(client) = self.current(conn, dst) else {
            return;
        };
        let client_id = client.id.clone();
        if let Some(c) = self.clients.remove(&client_id) {
            self.stats.closed.slow += 1;
            self.outputs.push_back(Action::Drop {
                to: c.session.handle,
                conn,
            });
        }
        if let Some(s) = src.and_then(|s| self.clients.get(s)) {
            let frame = wire::relay_frame(MsgType::Leave, &client_id, &s.id, None);
            let (h, c, id) = (s.session.handle.clone(), s.session.conn, s.id.clone());
            self.send(h, c, frame, Some(id), None);
        }
    }

    /// Socket `conn` closed (by the client, or after the server closed it). If it was still
    /// the registered socket of `id`, the client is unregistered; its queue is kept.
    pub fn disconnect(&mut self, _now: Instant, conn: ConnId, id: Option<&str>) {
        match id {
            Some(id) if self.current(conn, id).is_some() => {
                self.clients.remove(id);
            }
            _ => {
                self.detached.remove(&conn);
            }
        }
    }

    /// Fires every timer due at `now`: silent clients are closed (their queue dropped, as
    /// the reference does), expired queues are dropped and each distinct sender gets one
    /// `EXPIRE` from the absent destination.
    pub fn handle_timeout(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|t| t.at <= now) {
            let Some(timer) = self.timers.pop() else {
                break;
            };
            match timer.kind {
                TimerKind::Alive { conn, id } => self.check_alive(now, conn, id),
                TimerKind::Expire { dst, generation } => {
                    if self
                        .queues
                        .get(&dst)
                        .is_some_and(|q| q.generation == generation)
                    {
                        self.expire(&dst);
                    }
                }
            }
        }
    }

    fn check_alive(&mut self, now: Instant, conn: ConnId, id: Arc<str>) {
        let alive = self.config.alive_timeout;
        let last_seen = match self.current(conn, &id) {
            Some(c) => c.session.last_seen,
            None => match self.detached.get(&conn) {
                Some(d) => d.session.last_seen,
                None => return,
            },
        };
        let due = last_seen + alive;
        if due > now {
            self.push_timer(due, TimerKind::Alive { conn, id });
            return;
        }
        let registered = self.current(conn, &id).is_some();
        if let Some(session) = self.remove_session(conn, &id) {
            self.stats.closed.alive_timeout += 1;
            if registered && let Some(q) = self.queues.remove(&id) {
                self.queued_messages -= q.messages.len();
                self.queued_bytes -= q.bytes;
            }
            self.close(session.handle, conn, CloseReason::Normal);
        }
    }

    fn expire(&mut self, dst: &str) {
        let Some(queue) = self.queues.remove(dst) else {
            return;
        };
        self.queued_messages -= queue.messages.len();
        self.queued_bytes -= queue.bytes;
        self.stats.expired += queue.messages.len() as u64;
        let mut notified: Vec<&Arc<str>> = Vec::new();
        for q in &queue.messages {
            if notified.iter().any(|s| ***s == *q.src) {
                continue;
            }
            notified.push(&q.src);
            self.notify_expire(&q.src, dst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::wire::{Parsed, parse};

    /// A fake socket: its `ConnId`.
    type H = ConnId;

    /// What a test sees: frames and closes per socket.
    #[derive(Debug, PartialEq, Eq)]
    enum Out {
        Frame(ConnId, String),
        Close(ConnId, CloseReason),
        Drop(ConnId),
    }

    struct Harness {
        realm: Realm<H>,
        t0: Instant,
        next: ConnId,
    }

    fn config() -> RealmConfig {
        RealmConfig {
            key: "peerjs".into(),
            expire_timeout: Duration::from_millis(5000),
            alive_timeout: Duration::from_millis(60000),
            concurrent_limit: 5000,
            max_frame_size: 1024,
            rate: None,
            malformed_limit: 2.0,
            queues: QueueLimits {
                per_peer: 3,
                bytes_per_peer: 10_000,
                total: 5,
                bytes_total: 100_000,
            },
        }
    }

    impl Harness {
        fn new(config: RealmConfig) -> Self {
            Harness {
                realm: Realm::new(config),
                t0: Instant::now(),
                next: 0,
            }
        }
        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }
        fn drain(&mut self) -> Vec<Out> {
            let mut out = Vec::new();
            while let Some(a) = self.realm.poll_output() {
                out.push(match a {
                    Action::Send { conn, frame, .. } => Out::Frame(conn, frame),
                    Action::Close { conn, reason, .. } => Out::Close(conn, reason),
                    Action::Drop { conn, .. } => Out::Drop(conn),
                });
            }
            out
        }
        /// Connects `id` with `token` at `ms`; returns the socket and what it was sent.
        fn connect(&mut self, ms: u64, id: &str, token: &str) -> (ConnId, Admission, Vec<Out>) {
            self.next += 1;
            let conn = self.next;
            let req = ConnectRequest {
                key: Some("peerjs"),
                id: Some(id),
                token: Some(token),
                local: false,
            };
            let a = self.realm.connect(self.at(ms), conn, conn, &req);
            (conn, a, self.drain())
        }
        fn send(&mut self, ms: u64, conn: ConnId, id: &str, text: &str) -> Vec<Out> {
            match parse(text) {
                Parsed::Message(m) => self.realm.message(self.at(ms), conn, id, &m),
                Parsed::Malformed => self.realm.malformed(self.at(ms), conn, id),
                Parsed::Ignored => {}
            }
            self.drain()
        }
        fn tick(&mut self, ms: u64) -> Vec<Out> {
            self.realm.handle_timeout(self.at(ms));
            self.drain()
        }
    }

    fn frame(conn: ConnId, s: &str) -> Out {
        Out::Frame(conn, s.to_string())
    }

    #[test]
    fn admission_order_and_texts() {
        let mut h = Harness::new(RealmConfig {
            concurrent_limit: 1,
            ..config()
        });
        let mut go = |key: Option<&str>, id: Option<&str>, token: Option<&str>| {
            h.next += 1;
            let conn = h.next;
            let req = ConnectRequest {
                key,
                id,
                token,
                local: false,
            };
            let a = h.realm.connect(h.t0, conn, conn, &req);
            (a, h.drain())
        };
        let (a, out) = go(Some("peerjs"), Some(""), Some("t"));
        assert_eq!(a, Admission::Rejected(Rejection::NoParams));
        assert_eq!(
            out,
            vec![
                frame(
                    1,
                    r#"{"type":"ERROR","payload":{"msg":"No id, token, or key supplied to websocket server"}}"#
                ),
                Out::Close(1, CloseReason::Normal)
            ]
        );
        let (a, out) = go(Some("nope"), Some("a"), Some("t"));
        assert_eq!(a, Admission::Rejected(Rejection::InvalidKey));
        assert_eq!(
            out[0],
            frame(
                2,
                r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#
            )
        );
        let long = "x".repeat(257);
        let (a, out) = go(Some("peerjs"), Some(&long), Some("t"));
        assert_eq!(a, Admission::Rejected(Rejection::InvalidId));
        assert!(matches!(&out[0], Out::Frame(_, f) if f.contains("longer than 256 bytes")));
        let (a, _) = go(Some("peerjs"), Some("a\u{1}"), Some("t"));
        assert_eq!(a, Admission::Rejected(Rejection::InvalidId));
        let (a, out) = go(Some("peerjs"), Some("a"), Some("t"));
        assert_eq!(a, Admission::Open("a".into()));
        assert_eq!(out, vec![frame(5, r#"{"type":"OPEN"}"#)]);
        let (a, out) = go(Some("peerjs"), Some("a"), Some("other"));
        assert_eq!(a, Admission::Rejected(Rejection::IdTaken));
        assert_eq!(
            out,
            vec![
                frame(6, r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#),
                Out::Close(6, CloseReason::Normal)
            ]
        );
        let (a, out) = go(Some("peerjs"), Some("b"), Some("t"));
        assert_eq!(a, Admission::Rejected(Rejection::Limit));
        assert_eq!(
            out[0],
            frame(
                7,
                r#"{"type":"ERROR","payload":{"msg":"Server has reached its concurrent user limit"}}"#
            )
        );
        // Same id and token: replaces the socket even at the limit, OPEN again, old closed.
        let (a, out) = go(Some("peerjs"), Some("a"), Some("t"));
        assert_eq!(a, Admission::Open("a".into()));
        assert_eq!(
            out,
            vec![
                Out::Close(5, CloseReason::Replaced),
                frame(8, r#"{"type":"OPEN"}"#)
            ]
        );
        // The replaced socket's late close does not unregister the new one.
        h.realm.disconnect(h.t0, 5, Some("a"));
        assert!(h.realm.contains("a"));
        h.realm.disconnect(h.t0, 8, Some("a"));
        assert!(h.realm.is_empty());
        let s = h.realm.stats();
        assert_eq!(
            (
                s.rejected.no_params,
                s.rejected.invalid_key,
                s.rejected.invalid_id,
                s.rejected.id_taken,
                s.rejected.limit
            ),
            (1, 1, 2, 1, 1)
        );
        assert_eq!(s.closed.replaced, 1);
    }

    #[test]
    fn relays_with_src_stamped_and_drops_other_types() {
        let mut h = Harness::new(config());
        let (a, ..) = h.connect(0, "a", "ta");
        let (b, ..) = h.connect(0, "b", "tb");
        let out = h.send(
            1,
            a,
            "a",
            r#"{"type":"OFFER","src":"forged","dst":"b","payload":{"x":1},"extra":2}"#,
        );
        assert_eq!(
            out,
            vec![frame(
                b,
                r#"{"type":"OFFER","src":"a","dst":"b","payload":{"x":1}}"#
            )]
        );
        for t in ["ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"] {
            let out = h.send(1, b, "b", &format!(r#"{{"type":"{t}","dst":"a"}}"#));
            assert_eq!(
                out,
                vec![frame(
                    a,
                    &format!(r#"{{"type":"{t}","src":"b","dst":"a"}}"#)
                )]
            );
        }
        for t in ["OPEN", "ERROR", "ID-TAKEN", "PING", "HEARTBEAT"] {
            assert!(
                h.send(1, a, "a", &format!(r#"{{"type":"{t}","dst":"b"}}"#))
                    .is_empty()
            );
        }
        assert!(h.send(1, a, "a", r#"{"type":"OFFER"}"#).is_empty());
        assert_eq!(h.realm.stats().relayed, 5);
    }

    #[test]
    fn queue_delivered_on_connect_in_order() {
        let mut h = Harness::new(config());
        let (a, ..) = h.connect(0, "a", "ta");
        assert!(
            h.send(10, a, "a", r#"{"type":"OFFER","dst":"b","payload":1}"#)
                .is_empty()
        );
        assert!(
            h.send(20, a, "a", r#"{"type":"CANDIDATE","dst":"b","payload":2}"#)
                .is_empty()
        );
        // LEAVE and EXPIRE to an absent peer are not queued.
        assert!(
            h.send(20, a, "a", r#"{"type":"LEAVE","dst":"b"}"#)
                .is_empty()
        );
        assert!(
            h.send(20, a, "a", r#"{"type":"EXPIRE","dst":"b"}"#)
                .is_empty()
        );
        assert_eq!(h.realm.stats().queued_messages, 2);
        let (b, _, out) = h.connect(100, "b", "tb");
        assert_eq!(
            out,
            vec![
                frame(b, r#"{"type":"OPEN"}"#),
                frame(b, r#"{"type":"OFFER","src":"a","dst":"b","payload":1}"#),
                frame(b, r#"{"type":"CANDIDATE","src":"a","dst":"b","payload":2}"#),
            ]
        );
        assert_eq!(h.realm.stats().queued_messages, 0);
        // The queue's expiry timer is stale now: nothing happens.
        assert!(h.tick(10_000).is_empty());
    }

    #[test]
    fn queue_expires_with_one_expire_per_sender() {
        let mut h = Harness::new(config());
        let (a, ..) = h.connect(0, "a", "ta");
        let (c, ..) = h.connect(0, "c", "tc");
        h.send(1000, a, "a", r#"{"type":"OFFER","dst":"x"}"#);
        h.send(1100, a, "a", r#"{"type":"CANDIDATE","dst":"x"}"#);
        h.send(1200, c, "c", r#"{"type":"OFFER","dst":"x"}"#);
        h.send(1300, a, "a", r#"{"type":"OFFER","dst":"y"}"#);
        assert_eq!(h.realm.poll_timeout(), Some(h.at(6000)));
        assert!(h.tick(5999).is_empty());
        assert_eq!(
            h.tick(6000),
            vec![
                frame(a, r#"{"type":"EXPIRE","src":"x","dst":"a"}"#),
                frame(c, r#"{"type":"EXPIRE","src":"x","dst":"c"}"#),
            ]
        );
        assert_eq!(
            h.tick(6300),
            vec![frame(a, r#"{"type":"EXPIRE","src":"y","dst":"a"}"#)]
        );
        let s = h.realm.stats();
        assert_eq!((s.expired, s.queued_messages, s.queues), (4, 0, 0));
        // A sender that left gets nothing.
        h.send(7000, c, "c", r#"{"type":"OFFER","dst":"z"}"#);
        h.realm.disconnect(h.at(7001), c, Some("c"));
        assert!(h.tick(20_000).iter().all(|o| !matches!(o, Out::Frame(..))));
    }

    #[test]
    fn queues_are_bounded() {
        let mut h = Harness::new(config());
        let (a, ..) = h.connect(0, "a", "ta");
        for _ in 0..3 {
            assert!(
                h.send(1, a, "a", r#"{"type":"OFFER","dst":"x"}"#)
                    .is_empty()
            );
        }
        // Per-peer bound (3): the fourth is refused with an immediate EXPIRE.
        assert_eq!(
            h.send(1, a, "a", r#"{"type":"OFFER","dst":"x"}"#),
            vec![frame(a, r#"{"type":"EXPIRE","src":"x","dst":"a"}"#)]
        );
        // Total bound (5).
        assert!(
            h.send(1, a, "a", r#"{"type":"OFFER","dst":"y"}"#)
                .is_empty()
        );
        assert!(
            h.send(1, a, "a", r#"{"type":"OFFER","dst":"y"}"#)
                .is_empty()
        );
        assert_eq!(h.send(1, a, "a", r#"{"type":"OFFER","dst":"z"}"#).len(), 1);
        let s = h.realm.stats();
        assert_eq!((s.queued_messages, s.queue_full), (5, 2));
        // Bytes bound per peer.
        let mut h = Harness::new(RealmConfig {
            queues: QueueLimits {
                bytes_per_peer: 100,
                ..config().queues
            },
            ..config()
        });
        let (a, ..) = h.connect(0, "a", "ta");
        let big = format!(
            r#"{{"type":"OFFER","dst":"x","payload":"{}"}}"#,
            "p".repeat(100)
        );
        assert_eq!(h.send(1, a, "a", &big).len(), 1);
        assert_eq!(h.realm.stats().queued_bytes, 0);
    }

    #[test]
    fn invalid_dst_gets_expire() {
        let mut h = Harness::new(config());
        let (a, ..) = h.connect(0, "a", "ta");
        let long = "d".repeat(300);
        let out = h.send(1, a, "a", &format!(r#"{{"type":"OFFER","dst":"{long}"}}"#));
        assert_eq!(
            out,
            vec![frame(
                a,
                &format!(r#"{{"type":"EXPIRE","src":"{long}","dst":"a"}}"#)
            )]
        );
        assert_eq!(h.realm.stats().queues, 0);
    }

    #[test]
    fn alive_timeout_with_fake_clock() {
        let mut h = Harness::new(config());
        let (a, ..) = h.connect(0, "a", "ta");
        let (b, ..) = h.connect(0, "b", "tb");
        h.send(30_000, a, "a", r#"{"type":"HEARTBEAT"}"#);
        // b sent no HEARTBEAT: closed at 60 s; a re-armed to 90 s.
        assert!(h.tick(59_999).is_empty());
        assert_eq!(h.tick(60_000), vec![Out::Close(b, CloseReason::Normal)]);
        assert!(!h.realm.contains("b") && h.realm.contains("a"));
        assert_eq!(h.realm.poll_timeout(), Some(h.at(90_000)));
        // A non-HEARTBEAT message does not refresh liveness (as the reference).
        h.send(80_000, a, "a", r#"{"type":"OFFER","dst":"q"}"#);
        let out = h.tick(90_000);
        assert!(out.contains(&Out::Close(a, CloseReason::Normal)), "{out:?}");
        assert_eq!(h.realm.stats().closed.alive_timeout, 2);
        // The id is free again.
        let (_, adm, _) = h.connect(90_001, "b", "new");
        assert_eq!(adm, Admission::Open("b".into()));
    }

    #[test]
    fn leave_without_dst_detaches() {
        let mut h = Harness::new(config());
        let (a, ..) = h.connect(0, "a", "ta");
        let (b, ..) = h.connect(0, "b", "tb");
        assert!(h.send(1, a, "a", r#"{"type":"LEAVE"}"#).is_empty());
        assert!(!h.realm.contains("a"));
        // Its socket stays open but no longer relays.
        assert!(
            h.send(2, a, "a", r#"{"type":"OFFER","dst":"b"}"#)
                .is_empty()
        );
        // Someone else may take the id; the detached socket cannot act for them.
        let (a2, adm, _) = h.connect(3, "a", "other");
        assert_eq!(adm, Admission::Open("a".into()));
        assert_eq!(
            h.send(4, a2, "a", r#"{"type":"OFFER","dst":"b"}"#),
            vec![frame(b, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
        );
        // The detached socket is still subject to the alive timeout.
        let out = h.tick(60_000);
        assert!(out.contains(&Out::Close(a, CloseReason::Normal)), "{out:?}");
        h.realm.disconnect(h.at(60_001), a, Some("a"));
        assert!(h.realm.contains("a"));
    }

    #[test]
    fn rate_limit_and_malformed_burst() {
        let mut h = Harness::new(RealmConfig {
            rate: Some(Rate {
                per_second: 1.0,
                burst: 3.0,
            }),
            ..config()
        });
        let (a, ..) = h.connect(0, "a", "ta");
        for _ in 0..3 {
            assert!(h.send(0, a, "a", r#"{"type":"HEARTBEAT"}"#).is_empty());
        }
        assert_eq!(
            h.send(0, a, "a", r#"{"type":"HEARTBEAT"}"#),
            vec![
                frame(
                    a,
                    r#"{"type":"ERROR","payload":{"msg":"Rate limit exceeded"}}"#
                ),
                Out::Close(a, CloseReason::Policy)
            ]
        );
        assert!(!h.realm.contains("a"));
        // Malformed: limit 2 → the burst allows 3 (limit + 1), the 4th closes.
        let (b, ..) = h.connect(0, "b", "tb");
        for i in 0..3 {
            assert!(h.send(i * 10, b, "b", "{oops").is_empty());
        }
        // Refill at 1/s: after 1 s one more is allowed.
        assert!(h.send(1100, b, "b", "{oops").is_empty());
        assert_eq!(
            h.send(1100, b, "b", "{oops"),
            vec![
                frame(
                    b,
                    r#"{"type":"ERROR","payload":{"msg":"Too many malformed messages"}}"#
                ),
                Out::Close(b, CloseReason::Policy)
            ]
        );
        let s = h.realm.stats();
        assert_eq!(
            (s.malformed, s.closed.malformed, s.closed.rate_limited),
            (5, 1, 1)
        );
    }

    #[test]
    fn too_big_and_undeliverable() {
        let mut h = Harness::new(config());
        let (a, ..) = h.connect(0, "a", "ta");
        let (b, ..) = h.connect(0, "b", "tb");
        h.realm.too_big(h.at(1), a, "a");
        assert_eq!(
            h.drain(),
            vec![
                frame(
                    a,
                    r#"{"type":"ERROR","payload":{"msg":"Message too big (limit 1024 bytes)"}}"#
                ),
                Out::Close(a, CloseReason::TooBig)
            ]
        );
        let (a, ..) = h.connect(2, "a", "ta");
        // b's socket could not take a frame from a: b is dropped, a gets LEAVE from b.
        h.realm.undeliverable(h.at(3), b, Some("b"), Some("a"));
        assert_eq!(
            h.drain(),
            vec![
                Out::Drop(b),
                frame(a, r#"{"type":"LEAVE","src":"b","dst":"a"}"#)
            ]
        );
        assert!(!h.realm.contains("b"));
        // Stale report for a socket that is no longer registered: nothing.
        h.realm.undeliverable(h.at(4), b, Some("b"), Some("a"));
        assert!(h.drain().is_empty());
    }
}
