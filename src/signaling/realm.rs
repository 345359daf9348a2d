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
//!
//! Size: one state machine's event handlers (~900 lines) stay in one file on purpose, so the
//! admission, relay and expiry rules that interact are read together; its counters
//! (`realm/stats.rs`) and tests (`realm/tests.rs`) live beside it.

use std::{
    cmp::Ordering,
    collections::{BinaryHeap, HashMap, VecDeque, hash_map::Entry},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    config::{AddressLimits, QueueLimits, Rate, SignalConfig},
    wire::{self, Inbound, MsgType, text},
};
use crate::rate::TokenBucket;

mod stats;

pub use stats::{ClosedStats, RejectedStats, Stats};

/// Identifies one socket for the lifetime of a driver. Never reused.
pub use crate::ids::ConnId;

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
    /// Limits per client address (sockets, message rate).
    pub per_address: AddressLimits,
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
            per_address: c.per_address,
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
    /// The client's address (the TCP peer, or the forwarded address from a trusted proxy);
    /// per-address limits apply when it is known.
    pub addr: Option<IpAddr>,
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
    /// Ours: the client's address has `per_address.connections` sockets open already.
    AddressLimit,
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
    /// The node's own connection (a reserved id with its token, or an in-process client):
    /// exempt from the rate limits and never dropped as too slow.
    privileged: bool,
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

/// Sockets and message allowance of one client address.
#[derive(Debug)]
struct AddressState {
    /// Admitted sockets from this address still open (registered or detached).
    sockets: usize,
    /// Messages from all of this address's sockets together.
    rate: Option<TokenBucket>,
}

/// The signaling realm. See the module documentation for the call protocol.
#[derive(Debug)]
pub struct Realm<H> {
    config: RealmConfig,
    /// Ids reserved for one token (the node's own peer id): nobody else may register them,
    /// even while their owner is away.
    reserved: HashMap<Arc<str>, Box<str>>,
    /// Per-address state, for addresses with an open admitted socket.
    addresses: HashMap<IpAddr, AddressState>,
    /// The address of each admitted socket that counts against a per-address limit.
    conn_addrs: HashMap<ConnId, IpAddr>,
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
            reserved: HashMap::new(),
            addresses: HashMap::new(),
            conn_addrs: HashMap::new(),
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

    /// Reserves `id` for `token`: from now on only a connection presenting `token` may
    /// register `id` (anyone else gets `ID-TAKEN`, even while `id` is not registered), and
    /// that connection is privileged: exempt from the rate limits, the per-address limits
    /// and the concurrent limit, and never dropped as too slow (a frame that does not fit
    /// its write queue is refused instead, its sender gets `EXPIRE`). The node reserves its
    /// own peer id on its own signaling server.
    pub fn reserve(&mut self, id: &str, token: &str) {
        self.reserved.insert(Arc::from(id), Box::from(token));
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

    fn new_session(&self, now: Instant, conn: ConnId, handle: H, privileged: bool) -> Session<H> {
        Session {
            conn,
            handle,
            last_seen: now,
            rate: match self.config.rate {
                Some(r) if !privileged => Some(TokenBucket::new(r.burst, r.per_second, now)),
                _ => None,
            },
            malformed: None,
            privileged,
        }
    }

    /// Counts an admitted socket against its address (once it is known to be admitted).
    fn count_address(&mut self, now: Instant, conn: ConnId, addr: IpAddr) {
        let limits = self.config.per_address;
        if limits.connections == 0 && limits.rate.is_none() {
            return;
        }
        let state = self.addresses.entry(addr).or_insert_with(|| AddressState {
            sockets: 0,
            rate: limits
                .rate
                .map(|r| TokenBucket::new(r.burst, r.per_second, now)),
        });
        state.sockets += 1;
        self.conn_addrs.insert(conn, addr);
    }

    /// Forgets socket `conn`'s share of its address's limits (it closed).
    fn uncount_address(&mut self, conn: ConnId) {
        let Some(addr) = self.conn_addrs.remove(&conn) else {
            return;
        };
        if let Entry::Occupied(mut e) = self.addresses.entry(addr) {
            e.get_mut().sockets -= 1;
            if e.get().sockets == 0 {
                e.remove();
            }
        }
    }

    /// Takes one message from the allowance of socket `conn`'s address; false when the
    /// address is over its rate.
    fn take_address_rate(&mut self, now: Instant, conn: ConnId) -> bool {
        let Some(addr) = self.conn_addrs.get(&conn) else {
            return true;
        };
        self.addresses
            .get_mut(addr)
            .and_then(|a| a.rate.as_mut())
            .is_none_or(|b| b.try_take(now, 1.0))
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
        // None: not reserved; Some(true): the owner's token; Some(false): someone else.
        let reserved = self.reserved.get(id.as_str()).map(|t| **t == *token);
        if reserved == Some(false) {
            self.stats.rejected.id_taken += 1;
            return self.reject(conn, handle, Rejection::IdTaken, wire::ID_TAKEN.to_string());
        }
        let privileged = req.local || reserved == Some(true);
        let limits = self.config.per_address;
        if !privileged
            && limits.connections > 0
            && let Some(addr) = req.addr
            && self
                .addresses
                .get(&addr)
                .is_some_and(|a| a.sockets >= limits.connections)
        {
            self.stats.rejected.address_limit += 1;
            return self.reject(
                conn,
                handle,
                Rejection::AddressLimit,
                wire::error_frame(text::ADDRESS_LIMIT),
            );
        }
        let session = self.new_session(now, conn, handle.clone(), privileged);
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
                if self.clients.len() >= self.config.concurrent_limit && reserved.is_none() {
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
        if !privileged && let Some(addr) = req.addr {
            self.count_address(now, conn, addr);
        }
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
        // Every frame (LEAVE and HEARTBEAT included, from a registered or a detached socket)
        // counts against the address's allowance.
        if !self.take_address_rate(now, conn) {
            if self.expel(conn, id, text::RATE_LIMITED, CloseReason::Policy) {
                self.stats.closed.rate_limited += 1;
            }
            return;
        }
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
        payload: Option<&str>,
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
        if client.session.privileged {
            // The node's own connection is never dropped: the frame is refused instead, and
            // the sender of a relayed frame learns that it was not delivered.
            self.stats.node_busy += 1;
            if let Some(s) = src {
                self.notify_expire(s, &client_id);
            }
            return;
        }
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
        self.uncount_address(conn);
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
mod tests;
