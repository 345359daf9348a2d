//! The axum shell: HTTP routes, the WebSocket upgrade, the socket driver around the
//! [`Realm`] and the timer task. The listener (plain TCP or TLS) and the serve loop are in
//! `listener.rs`; the WebSocket framing is in `ws.rs`.
//!
//! Architecture invariants:
//! - The realm lives behind one `std::sync::Mutex`, held only for one realm call plus the
//!   execution of its actions (pushing frames into per-socket outboxes); never across an
//!   `.await`, never while writing to a socket.
//! - Each socket has one task (it reads the socket, and writes what nobody else could) and
//!   one bounded [`Outbox`]. At most one writer at a time holds a socket's write claim. A
//!   frame for a plain-TCP socket whose outbox is empty and that nobody is writing to is
//!   written by the task that produced it, after its whole read batch and outside the realm
//!   lock (no wake-up of the destination's task); otherwise it queues and the claim holder
//!   writes it, in one write with whatever else is queued. What a socket does not take
//!   without blocking is finished by its own task. A socket whose outbox is full is
//!   dropped, so a slow reader never holds up anyone else.
//! - An idle socket holds no read or write buffer: reads go to a buffer on the stack, and
//!   the decoder and the outbox allocate only while a frame is split or something is queued.
//!
//! Size: ~1,400 lines, the axum shell (routes, CORS, the upgrade, the socket reader and
//! writers); the listener and serve loop are in `listener.rs`.

use std::{
    borrow::Cow,
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::Poll,
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{ConnectInfo, FromRef, RawQuery, Request, State, connect_info::Connected},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    serve::IncomingStream,
};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    sync::Notify,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::debug;

use super::{
    MaybeTls,
    config::{Cidr, SignalConfig},
    realm::{
        Action, Admission, CloseReason, ConnId, ConnectRequest, Realm, RealmConfig, Rejection,
        Stats,
    },
    wire::{self, Parsed},
    ws,
};

/// The most a socket task reads per syscall, into a buffer on the stack (an idle socket holds
/// no read buffer; `ws::Decoder` keeps bytes only while a frame is split across reads).
const READ_CHUNK: usize = 8 * 1024;
/// How long a closing socket waits for the client's close frame.
const LINGER: Duration = Duration::from_secs(1);
/// The writers' scratch buffer is given back when a large batch left it bigger than this.
const SCRATCH_KEEP: usize = 64 * 1024;

/// The body of `GET {path}`, as the reference serves it.
pub const INFO_JSON: &str = r#"{"name":"PeerJS Server","description":"A server side element to broker connections between PeerJS clients.","website":"https://peerjs.com/"}"#;

thread_local! {
    /// Where a writer encodes a batch of queued frames (one per thread, not per socket).
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Frames waiting to be written to one socket, shared by the realm (producer, under the
/// realm lock), the tasks that write to the socket directly, and the socket's own task.
///
/// Writing: at most one writer at a time holds the socket's write claim (`writing`). A
/// frame pushed while nobody writes and nothing is queued is handed back to the pusher
/// ([`Push::Direct`]), which writes it to the socket from its own task once the realm lock
/// is released; frames pushed meanwhile queue behind it and the claim holder writes them
/// too. What the socket does not take without blocking stays in `unsent` and the socket's
/// own task finishes it (waiting until the socket is writable).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
    /// The socket's write half (plain TCP). `None`: written by the socket's task only (TLS,
    /// other streams) or an in-process client.
    direct: Option<OwnedWriteHalf>,
    /// Set once the realm closed or dropped the socket: its reader stops feeding frames in.
    closing: AtomicBool,
}

#[derive(Debug, Default)]
struct OutboxState {
    frames: VecDeque<String>,
    /// Bytes queued: `frames` and `unsent`.
    bytes: usize,
    /// Encoded bytes a writer could not write without blocking (continued by the socket's
    /// task), and pongs.
    unsent: Vec<u8>,
    /// Someone holds the write claim.
    writing: bool,
    /// The close frame to write after what is queued.
    close: Option<Option<(u16, Cow<'static, str>)>>,
    /// The close frame is encoded (in `unsent` or written).
    close_sent: bool,
    killed: bool,
    gone: bool,
}

/// What [`Outbox::push`] did with a frame.
#[derive(Debug)]
pub(crate) enum Push {
    /// Queued (or dropped quietly: the socket is closing).
    Queued,
    /// The socket is gone or its queue is full.
    Rejected,
    /// Nothing queued and nobody writing: the caller holds the write claim and must call
    /// [`Outbox::write_direct`] with the frame (after releasing the realm lock).
    Direct(String),
}

/// How a write attempt ended.
enum Wrote {
    /// Everything queued is written.
    Done,
    /// The socket's buffer is full; the rest is in `unsent`.
    Blocked,
    /// The socket failed.
    Broken,
}

/// Writes as much of `buf` as the socket takes now; the count written, or an error other
/// than "would block".
fn try_write_all(sock: &OwnedWriteHalf, buf: &[u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match sock.try_write(&buf[n..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn close_frame(reason: CloseReason) -> Option<(u16, Cow<'static, str>)> {
    let frame = |code, reason| Some((code, Cow::Borrowed(reason)));
    match reason {
        CloseReason::Normal => None,
        CloseReason::Replaced => frame(1000, "replaced by a newer connection"),
        CloseReason::Policy => frame(1008, "policy violation"),
        CloseReason::TooBig => frame(1009, "message too big"),
    }
}

/// What the socket's own task has to do about its outbox.
enum TaskWork {
    /// Nothing to write (or another task is writing).
    Nothing,
    /// The realm dropped the socket (or it failed).
    Killed,
    /// Frames (and with `close`, the close frame) to write.
    Write {
        /// The socket is closing.
        close: bool,
    },
}

impl Outbox {
    fn new(direct: Option<OwnedWriteHalf>) -> Outbox {
        Outbox {
            direct,
            ..Outbox::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame, or hands it back to be written directly (see [`Push`]).
    fn push(&self, frame: String, max_frames: usize, max_bytes: usize) -> Push {
        {
            let mut s = self.lock();
            if s.gone || s.killed {
                return Push::Rejected;
            }
            if s.close.is_some() {
                return Push::Queued; // closing anyway: drop quietly
            }
            if self.direct.is_some() && !s.writing && s.bytes == 0 {
                s.writing = true;
                return Push::Direct(frame);
            }
            if s.frames.len() >= max_frames || s.bytes + frame.len() > max_bytes {
                return Push::Rejected;
            }
            s.bytes += frame.len();
            s.frames.push_back(frame);
            if s.writing {
                return Push::Queued; // the claim holder writes it
            }
        }
        self.notify.notify_one();
        Push::Queued
    }

    /// Writes `frame` (and whatever queued behind it) from the calling task; the caller
    /// holds the write claim ([`Push::Direct`]), which this releases.
    pub(crate) fn write_direct(&self, frame: String) {
        let Some(sock) = &self.direct else {
            return;
        };
        let queued = !self.lock().frames.is_empty();
        if !queued {
            // The common case: one frame, written without copying it.
            let (hdr, hlen) = ws::header(ws::OP_TEXT, frame.len());
            let total = hlen + frame.len();
            let bufs = [
                std::io::IoSlice::new(&hdr[..hlen]),
                std::io::IoSlice::new(frame.as_bytes()),
            ];
            let n = loop {
                match sock.try_write_vectored(&bufs) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break 0,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => return self.broken(),
                }
            };
            if n < total {
                let mut rest = Vec::with_capacity(total - n);
                if n < hlen {
                    rest.extend_from_slice(&hdr[n..hlen]);
                    rest.extend_from_slice(frame.as_bytes());
                } else {
                    rest.extend_from_slice(&frame.as_bytes()[n - hlen..]);
                }
                return self.blocked(rest);
            }
            match self.write_queued(sock, None, true) {
                Wrote::Done => {}
                Wrote::Blocked => self.release(),
                Wrote::Broken => self.broken(),
            }
        } else {
            match self.write_queued(sock, Some(frame), true) {
                Wrote::Done => {}
                Wrote::Blocked => self.release(),
                Wrote::Broken => self.broken(),
            }
        }
    }

    /// Under the write claim: writes `first`, what is unsent and what is queued, in one
    /// syscall per batch, until done or the socket would block. With `release`, the claim
    /// is given up in the same critical section that finds nothing more to write.
    fn write_queued(
        &self,
        sock: &OwnedWriteHalf,
        mut first: Option<String>,
        release: bool,
    ) -> Wrote {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            let wrote = loop {
                buf.clear();
                {
                    let mut s = self.lock();
                    if !s.unsent.is_empty() {
                        buf.extend_from_slice(&s.unsent);
                        s.unsent = Vec::new();
                    }
                    if let Some(f) = first.take() {
                        ws::push_frame(&mut buf, ws::OP_TEXT, f.as_bytes());
                    }
                    while let Some(f) = s.frames.pop_front() {
                        ws::push_frame(&mut buf, ws::OP_TEXT, f.as_bytes());
                    }
                    s.bytes = 0;
                    if buf.is_empty() {
                        if release {
                            s.writing = false;
                            let wake = s.close.is_some() || s.killed;
                            drop(s);
                            if wake {
                                self.notify.notify_one();
                            }
                        }
                        break Wrote::Done;
                    }
                }
                match try_write_all(sock, &buf) {
                    Ok(n) if n == buf.len() => continue,
                    Ok(n) => {
                        // The rest goes before what was queued meanwhile (already counted).
                        let mut s = self.lock();
                        let mut rest = buf[n..].to_vec();
                        s.bytes += rest.len();
                        rest.append(&mut s.unsent);
                        s.unsent = rest;
                        break Wrote::Blocked;
                    }
                    Err(_) => break Wrote::Broken,
                }
            };
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
            wrote
        })
    }

    /// A direct write left `rest` unwritten: the socket's task finishes it.
    fn blocked(&self, mut rest: Vec<u8>) {
        {
            let mut s = self.lock();
            s.bytes += rest.len();
            rest.append(&mut s.unsent);
            s.unsent = rest;
        }
        self.release();
    }

    /// Gives up the write claim and wakes the socket's task if it has work.
    fn release(&self) {
        let wake = {
            let mut s = self.lock();
            s.writing = false;
            s.close.is_some() || s.killed || s.bytes > 0
        };
        if wake {
            self.notify.notify_one();
        }
    }

    /// The socket failed under a writer: the socket's task ends it.
    fn broken(&self) {
        {
            let mut s = self.lock();
            s.killed = true;
            s.writing = false;
        }
        self.closing.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Queues a pong (its payload echoed) after what is queued; false if it does not fit.
    fn pong(&self, payload: &[u8], max_bytes: usize) -> bool {
        let mut s = self.lock();
        if s.bytes + payload.len() + 2 > max_bytes {
            return false;
        }
        ws::push_frame(&mut s.unsent, ws::OP_PONG, payload);
        s.bytes += payload.len() + 2;
        true
    }

    fn close(&self, reason: CloseReason) {
        self.close_with(close_frame(reason));
    }

    fn close_with(&self, frame: Option<(u16, Cow<'static, str>)>) {
        self.lock().close.get_or_insert(frame);
        self.closing.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    fn kill(&self) {
        self.lock().killed = true;
        self.closing.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// The socket is unregistered: nothing more is queued; what is queued is dropped
    /// (bytes of a frame half written stay, so that a close frame can follow them).
    fn mark_gone(&self) {
        let mut s = self.lock();
        s.gone = true;
        s.frames = VecDeque::new();
        s.bytes = s.unsent.len();
    }

    /// What the socket's task has to write now.
    fn task_work(&self) -> TaskWork {
        let s = self.lock();
        if s.killed {
            TaskWork::Killed
        } else if s.writing || (s.bytes == 0 && (s.close.is_none() || s.close_sent)) {
            TaskWork::Nothing
        } else {
            TaskWork::Write {
                close: s.close.is_some(),
            }
        }
    }

    /// Waits for the write claim (for the socket's task); false if the socket is killed.
    async fn claim(&self) -> bool {
        loop {
            {
                let mut s = self.lock();
                if s.killed {
                    return false;
                }
                if !s.writing {
                    s.writing = true;
                    return true;
                }
            }
            self.notify.notified().await;
        }
    }

    fn is_killed(&self) -> bool {
        self.lock().killed
    }

    /// Under the claim, once everything queued is written: queues the close frame if the
    /// socket is closing and it is not out yet; false if there is none to write.
    fn queue_close(&self) -> bool {
        let mut s = self.lock();
        let s = &mut *s;
        match &s.close {
            Some(frame) if !s.close_sent => {
                let before = s.unsent.len();
                ws::push_close(&mut s.unsent, frame.as_ref().map(|(c, r)| (*c, &**r)));
                s.bytes += s.unsent.len() - before;
                s.close_sent = true;
                true
            }
            _ => false,
        }
    }

    /// For a socket without a direct write half: everything queued, encoded into `buf`,
    /// and the close frame after it if the socket is closing; whether the close frame is in.
    fn take_encoded(&self, buf: &mut Vec<u8>) -> bool {
        let mut s = self.lock();
        buf.append(&mut s.unsent);
        s.unsent = Vec::new();
        while let Some(f) = s.frames.pop_front() {
            ws::push_frame(buf, ws::OP_TEXT, f.as_bytes());
        }
        s.frames = VecDeque::new();
        s.bytes = 0;
        let s = &mut *s;
        match &s.close {
            Some(frame) if !s.close_sent => {
                ws::push_close(buf, frame.as_ref().map(|(c, r)| (*c, &**r)));
                s.close_sent = true;
                true
            }
            _ => false,
        }
    }

    /// Resolves once the socket is killed.
    async fn killed(&self) {
        loop {
            if self.lock().killed {
                return;
            }
            self.notify.notified().await;
        }
    }
}

/// State shared by the routes, the socket tasks and the timer task.
pub(crate) struct Shared {
    pub(crate) config: SignalConfig,
    core: Mutex<Core>,
    /// Wakes the timer task when an earlier deadline appears.
    timer: Notify,
    next_conn: AtomicU64,
    sockets: AtomicUsize,
    /// Cancelled on shutdown: sockets close with 1001, the timer task ends.
    pub(crate) shutdown: CancellationToken,
    /// Tracks socket tasks so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
    /// Outbox bounds.
    max_frames: usize,
    max_bytes: usize,
}

struct Core {
    realm: Realm<Arc<Outbox>>,
    /// The deadline the timer task sleeps until.
    armed: Option<Instant>,
}

impl Shared {
    pub(crate) fn new(config: SignalConfig) -> Arc<Self> {
        let max_frames = config.write_queue.max(config.queues.per_peer + 2);
        // A full offline queue plus one more frame always fits (see `--write-queue-bytes`).
        let max_bytes = config
            .write_queue_bytes
            .max(config.queues.bytes_per_peer + config.max_frame_size);
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                realm: Realm::new(RealmConfig::from(&config)),
                armed: None,
            }),
            config,
            timer: Notify::new(),
            next_conn: AtomicU64::new(1),
            sockets: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            max_frames,
            max_bytes,
        });
        tokio::spawn(run_timers(shared.clone()));
        shared
    }

    /// Runs `f` on the realm, then executes every action it produced.
    pub(crate) fn with_realm<R>(&self, f: impl FnOnce(&mut Realm<Arc<Outbox>>, Instant) -> R) -> R {
        let mut direct = Vec::new();
        let r = self.with_realm_deferred(Instant::now(), &mut direct, f);
        write_direct(&mut direct);
        r
    }

    /// [`Shared::with_realm`], except that the frames to be written directly to their
    /// sockets ([`Push::Direct`]) are left in `direct`, for the caller to write with
    /// [`write_direct`] after a batch of realm calls (each socket's frames of the batch then
    /// go out in one write). The realm lock is never held while writing to a socket. `now`
    /// is the caller's: one clock read serves the frames of one read.
    fn with_realm_deferred<R>(
        &self,
        now: Instant,
        direct: &mut Vec<(Arc<Outbox>, String)>,
        f: impl FnOnce(&mut Realm<Arc<Outbox>>, Instant) -> R,
    ) -> R {
        let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut core.realm, now);
        while let Some(action) = core.realm.poll_output() {
            match action {
                Action::Send {
                    to,
                    conn,
                    frame,
                    dst,
                    src,
                } => match to.push(frame, self.max_frames, self.max_bytes) {
                    Push::Queued => {}
                    Push::Direct(frame) => direct.push((to, frame)),
                    Push::Rejected => {
                        core.realm
                            .undeliverable(now, conn, dst.as_deref(), src.as_deref());
                    }
                },
                Action::Close { to, reason, .. } => to.close(reason),
                Action::Drop { to, conn } => {
                    debug!(conn = conn.0, "dropping a socket that cannot keep up");
                    to.kill()
                }
            }
        }
        if let Some(t) = core.realm.poll_timeout()
            && core.armed.is_none_or(|a| t < a)
        {
            core.armed = Some(t);
            self.timer.notify_one();
        }
        r
    }

    pub(crate) fn stats(&self) -> Stats {
        let mut s = self
            .core
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .realm
            .stats();
        s.sockets = self.sockets.load(Ordering::Relaxed);
        s
    }

    pub(crate) fn next_conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }
}

/// Sleeps until the realm's next deadline (or an earlier one appears), then fires it.
async fn run_timers(shared: Arc<Shared>) {
    loop {
        let next = {
            let mut core = shared.core.lock().unwrap_or_else(|e| e.into_inner());
            core.armed = core.realm.poll_timeout();
            core.armed
        };
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.timer.notified() => {}
            _ = sleep => shared.with_realm(|realm, now| realm.handle_timeout(now)),
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP routes

/// The client address a connection came from (set by [`SignalListener`](super::SignalListener)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

impl Connected<IncomingStream<'_, super::SignalListener>> for RemoteAddr {
    fn connect_info(stream: IncomingStream<'_, super::SignalListener>) -> Self {
        *stream.remote_addr()
    }
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
}

impl FromRef<AppState> for Arc<Shared> {
    fn from_ref(s: &AppState) -> Self {
        s.shared.clone()
    }
}

/// Builds the signaling routes under the configured path.
pub(crate) fn router(shared: &Arc<Shared>, with_info: bool) -> Router {
    let base = shared.config.path.clone();
    let mut r = Router::new()
        .route(&format!("{base}{{key}}/id"), get(id_route))
        .route(&format!("{base}{{key}}/peers"), get(peers_route));
    if with_info {
        r = r.route(&base, get(info_route));
        if base != "/" {
            r = r.route(base.trim_end_matches('/'), get(info_route));
        }
    }
    r = r.route(&format!("{base}peerjs"), get(ws_route));
    if with_info {
        // Like the reference, unknown paths under the mount get Express's 404 (with CORS).
        r = r.fallback(not_found);
    }
    with_cors(
        shared,
        r.with_state(AppState {
            shared: shared.clone(),
        }),
    )
}

/// Express's 404 page (`Cannot GET /path`), `text/html`.
async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    let mut path = String::new();
    for c in uri.path().chars() {
        match c {
            '<' => path.push_str("&lt;"),
            '>' => path.push_str("&gt;"),
            '&' => path.push_str("&amp;"),
            '"' => path.push_str("&quot;"),
            c => path.push(c),
        }
    }
    let body = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Error</title>\n</head>\n<body>\n<pre>Cannot {method} {path}</pre>\n</body>\n</html>\n"
    );
    (
        StatusCode::NOT_FOUND,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// Wraps `router` in the reference's CORS behaviour.
pub(crate) fn with_cors(shared: &Arc<Shared>, router: Router) -> Router {
    router.layer(middleware::from_fn_with_state(shared.clone(), cors))
}

/// The reference's `cors` middleware: reflect an allowed Origin, `Vary: Origin`; answer
/// every OPTIONS as a preflight (204).
async fn cors(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let allowed = shared.config.cors.as_slice();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == o.as_bytes()))
        .cloned();
    if req.method() == Method::OPTIONS {
        let mut res = StatusCode::NO_CONTENT.into_response();
        let h = res.headers_mut();
        if let Some(o) = origin {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        }
        h.insert(
            header::VARY,
            HeaderValue::from_static("Origin, Access-Control-Request-Headers"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET,HEAD,PUT,PATCH,POST,DELETE"),
        );
        if let Some(rh) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            && !rh.is_empty()
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, rh.clone());
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        return res;
    }
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    if let Some(o) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
    }
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    res
}

/// `GET {path}`: the reference's info JSON.
pub fn info_response() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        INFO_JSON,
    )
        .into_response()
}

async fn info_route() -> Response {
    info_response()
}

async fn id_route(State(shared): State<Arc<Shared>>) -> Response {
    let id = loop {
        let id = uuid::Uuid::new_v4().to_string();
        if !shared.with_realm(|realm, _| realm.contains(&id)) {
            break id;
        }
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        id,
    )
        .into_response()
}

async fn peers_route(State(shared): State<Arc<Shared>>) -> Response {
    if !shared.config.allow_discovery {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            )],
            "Unauthorized",
        )
            .into_response();
    }
    let ids = shared.with_realm(|realm, _| realm.ids());
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into()),
    )
        .into_response()
}

/// The WebSocket query (`key`, `id`, `token`; the last occurrence wins, as with the
/// reference's `Object.fromEntries(URLSearchParams)`).
#[derive(Debug, Default)]
struct Query {
    key: Option<String>,
    id: Option<String>,
    token: Option<String>,
}

impl Query {
    fn parse(raw: &str) -> Query {
        let mut q = Query::default();
        for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
            match &*k {
                "key" => q.key = Some(v.into_owned()),
                "id" => q.id = Some(v.into_owned()),
                "token" => q.token = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    }
}

/// The client's address: the TCP peer's, unless the peer is a trusted proxy; then the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy (each proxy appends
/// the address it got the request from, so entries left of it are the client's own claims).
/// `None` only when the TCP peer is unknown (an in-process connection).
pub fn client_ip(trusted: &[Cidr], peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Some(ip) = parse_forwarded(entry) else {
            break; // garbage: trust nothing further left
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]:443`, `1.2.3.4:80`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// The `Sec-WebSocket-Key` of a WebSocket upgrade request, checked as axum's
/// `WebSocketUpgrade` checks it (HTTP/1.1 GET, `Connection` containing `upgrade`, `Upgrade:
/// websocket`, `Sec-WebSocket-Version: 13`); `None` if it is not one.
fn upgrade_key(req: &Request) -> Option<HeaderValue> {
    let h = req.headers();
    let contains = |name: header::HeaderName, value: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains(value))
    };
    let eq = |name: header::HeaderName, value: &str| {
        h.get(name)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
    };
    let ok = req.version() <= Version::HTTP_11
        && req.method() == Method::GET
        && contains(header::CONNECTION, "upgrade")
        && eq(header::UPGRADE, "websocket")
        && eq(header::SEC_WEBSOCKET_VERSION, "13");
    if !ok {
        return None;
    }
    h.get(header::SEC_WEBSOCKET_KEY).cloned()
}

async fn ws_route(
    State(shared): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    mut req: Request,
) -> Response {
    let upgrade = upgrade_key(&req).and_then(|key| {
        let on_upgrade = req.extensions_mut().remove::<OnUpgrade>()?;
        Some((key, on_upgrade))
    });
    let Some((key, on_upgrade)) = upgrade else {
        let uri = format!("{}peerjs", shared.config.path)
            .parse()
            .unwrap_or_default();
        return not_found(Method::GET, uri).await;
    };
    let query = Query::parse(query.as_deref().unwrap_or(""));
    let remote = req
        .extensions()
        .get::<ConnectInfo<RemoteAddr>>()
        .map(|r| r.0.0.ip());
    let ip = client_ip(&shared.config.trusted_proxies, remote, req.headers());
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                debug!("WebSocket upgrade failed: {e}");
                return;
            }
        };
        let guard = shared.tracker.token();
        let (io, prefix, direct) = split_upgraded(upgraded);
        let outbox = Arc::new(Outbox::new(direct));
        let (conn, id) = admit(&shared, query, ip, &outbox);
        run_socket(shared, io, prefix, conn, outbox, id).await;
        drop(guard);
    });
    let accept = HeaderValue::from_str(&ws::accept_key(key.as_bytes()))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (header::SEC_WEBSOCKET_ACCEPT, accept),
        ],
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// The socket driver

/// Any other stream a socket can be (TLS; whatever hyper hands over when it is not ours).
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// A socket's read side, and its write side when it has no direct write half.
enum SockIo {
    /// Plain TCP: the write half is the outbox's ([`Outbox::direct`]).
    Tcp(OwnedReadHalf),
    /// TLS or another stream: the socket's task does all the writing.
    Other(Box<dyn Stream>),
}

/// Takes the upgraded connection apart: plain TCP is split so that other tasks can write
/// to it; also the bytes hyper read past the upgrade request, copied out (hyper's `Bytes`
/// would keep its whole read buffer alive for as long as the socket lives).
fn split_upgraded(upgraded: Upgraded) -> (SockIo, Vec<u8>, Option<OwnedWriteHalf>) {
    match upgraded.downcast::<TokioIo<MaybeTls>>() {
        Ok(parts) => {
            let prefix = parts.read_buf.to_vec();
            match parts.io.into_inner() {
                MaybeTls::Plain(tcp) => {
                    let (r, w) = tcp.into_split();
                    (SockIo::Tcp(r), prefix, Some(w))
                }
                MaybeTls::Tls(tls) => (SockIo::Other(tls), prefix, None),
            }
        }
        Err(upgraded) => (
            SockIo::Other(Box::new(TokioIo::new(upgraded))),
            Vec::new(),
            None,
        ),
    }
}

/// Registers a freshly upgraded socket with the realm. Synchronous on purpose: nothing here
/// stays in the socket task's state.
fn admit(
    shared: &Shared,
    query: Query,
    addr: Option<IpAddr>,
    outbox: &Arc<Outbox>,
) -> (ConnId, Option<Arc<str>>) {
    shared.sockets.fetch_add(1, Ordering::Relaxed);
    let conn = shared.next_conn();
    let req = ConnectRequest {
        key: query.key.as_deref(),
        id: query.id.as_deref(),
        token: query.token.as_deref(),
        local: false,
        addr,
    };
    let id = match shared.with_realm(|realm, now| realm.connect(now, conn, outbox.clone(), &req)) {
        Admission::Open(id) => {
            debug!(conn = conn.0, %id, ?addr, "client registered");
            Some(id)
        }
        Admission::Rejected(why) => {
            debug!(conn = conn.0, ?why, ?addr, id = ?query.id, "connection refused");
            None
        }
    };
    (conn, id)
}

/// How a socket's driving ended.
enum End {
    /// Just drop the connection.
    Drop,
    /// Our close frame is out: wait (briefly) for the client's.
    Linger,
    /// The client sent a close frame: answer it with this one.
    Echo(Option<(u16, Cow<'static, str>)>),
}

/// The socket task: feeds what it reads to the realm, writes what the realm queued for this
/// socket that no other task wrote, and unregisters it at the end. Its state is what every
/// idle connection costs, so big and rare futures in it are boxed.
/// (A plain fn returning an `async move` block: an `async fn` would keep its arguments twice
/// in its state.)
#[allow(clippy::manual_async_fn)]
fn run_socket(
    shared: Arc<Shared>,
    mut io: SockIo,
    prefix: Vec<u8>,
    conn: ConnId,
    outbox: Arc<Outbox>,
    id: Option<Arc<str>>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let mut decoder = ws::Decoder::default();
        let end = drive_socket(
            &shared,
            &mut io,
            &mut decoder,
            prefix,
            conn,
            id.as_deref(),
            &outbox,
        )
        .await;
        // Unregister before completing the close handshake: once a client sees its close
        // acknowledged, its id is free.
        outbox.mark_gone();
        shared.with_realm(|realm, now| realm.disconnect(now, conn, id.as_deref()));
        match end {
            End::Drop => {}
            End::Linger => Box::pin(linger(&shared, &mut io, &mut decoder)).await,
            End::Echo(frame) => {
                outbox.close_with(frame);
                let _ = Box::pin(tokio::time::timeout(LINGER, write_out(&mut io, &outbox))).await;
            }
        }
        shared.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one read brought.
enum Step {
    /// Frames (or nothing complete yet): go on.
    More,
    /// The client's close frame.
    PeerClosed(Option<(u16, Cow<'static, str>)>),
    /// A frame or message above the size limit.
    TooBig,
    /// EOF, an I/O error or a protocol error.
    Failed,
}

async fn drive_socket(
    shared: &Shared,
    io: &mut SockIo,
    decoder: &mut ws::Decoder,
    mut prefix: Vec<u8>,
    conn: ConnId,
    id: Option<&str>,
    outbox: &Outbox,
) -> End {
    let mut step = Step::More;
    if !prefix.is_empty() {
        // Frames that came with the upgrade request.
        step = on_input(shared, decoder, &mut prefix, conn, id, outbox);
    }
    drop(prefix);
    // Registered once, not on every read (it only ever fires once).
    let mut shutdown = std::pin::pin!(shared.shutdown.cancelled());
    // The outbox's wake-up, kept registered across reads while the socket only reads. It is
    // dropped before anything else in this task waits on the same `Notify` (the write claim,
    // a blocked write): `notify_one` wakes the oldest waiter, which must be that one.
    let mut notified = std::pin::pin!(None::<tokio::sync::futures::Notified<'_>>);
    loop {
        match step {
            Step::More => {}
            Step::PeerClosed(frame) => return End::Echo(frame),
            Step::Failed => return End::Drop,
            Step::TooBig => {
                notified.set(None);
                if let Some(id) = id {
                    // The read side is finished; write ERROR and the close frame.
                    shared.with_realm(|realm, now| realm.too_big(now, conn, id));
                    let _ = Box::pin(tokio::time::timeout(LINGER, write_out(io, outbox))).await;
                }
                return End::Drop;
            }
        }
        match outbox.task_work() {
            TaskWork::Killed => return End::Drop,
            TaskWork::Write { close } => {
                notified.set(None);
                // Boxed: the write path's state would otherwise enlarge every idle socket's task.
                if !Box::pin(write_phase(shared, io, outbox)).await {
                    return End::Drop;
                }
                if close {
                    return End::Linger;
                }
                outbox.release();
                step = Step::More;
                continue;
            }
            TaskWork::Nothing => {}
        }
        if notified.is_none() {
            notified.set(Some(outbox.notify.notified()));
        }
        let wake = notified.as_mut().as_pin_mut().expect("armed just above");
        let woke = tokio::select! {
            biased;
            _ = &mut shutdown => Woke::Shutdown,
            _ = wake => Woke::Outbox,
            step = read_input(shared, io, decoder, conn, id, outbox) => Woke::Read(step),
        };
        step = match woke {
            Woke::Read(step) => step,
            Woke::Outbox => {
                notified.set(None); // spent
                Step::More
            }
            Woke::Shutdown => {
                notified.set(None);
                outbox.close_with(Some((1001, Cow::Borrowed("server shutting down"))));
                let sent = Box::pin(tokio::time::timeout(LINGER, write_out(io, outbox))).await;
                return if sent == Ok(true) {
                    End::Linger
                } else {
                    End::Drop
                };
            }
        };
    }
}

/// What ended a socket task's wait.
enum Woke {
    Shutdown,
    Outbox,
    Read(Step),
}

/// Reads once (at most [`READ_CHUNK`] bytes, into a buffer on the stack, so that a socket
/// waiting for input holds none) and hands the bytes to `f`.
async fn read_with<R>(io: &mut SockIo, mut f: impl FnMut(Option<&mut [u8]>) -> R) -> R {
    std::future::poll_fn(|cx| {
        let mut storage = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut storage);
        let r = match io {
            SockIo::Tcp(r) => Pin::new(r).poll_read(cx, &mut buf),
            SockIo::Other(s) => Pin::new(s).poll_read(cx, &mut buf),
        };
        match r {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                Poll::Ready(f(Some(buf.filled_mut())))
            }
            Poll::Ready(_) => Poll::Ready(f(None)), // EOF or error
        }
    })
    .await
}

async fn read_input(
    shared: &Shared,
    io: &mut SockIo,
    decoder: &mut ws::Decoder,
    conn: ConnId,
    id: Option<&str>,
    outbox: &Outbox,
) -> Step {
    read_with(io, |bytes| match bytes {
        Some(bytes) => on_input(shared, decoder, bytes, conn, id, outbox),
        None => Step::Failed,
    })
    .await
}

/// Decodes what one read brought and feeds it to the realm; the frames the realm has to
/// write directly are written after the whole batch.
fn on_input(
    shared: &Shared,
    decoder: &mut ws::Decoder,
    bytes: &mut [u8],
    conn: ConnId,
    id: Option<&str>,
    outbox: &Outbox,
) -> Step {
    let mut direct = Vec::new();
    let mut peer_close = None;
    // One clock read for the frames of one read.
    let mut now = None;
    let mut on_event = |event: ws::Event<'_>| {
        match event {
            ws::Event::Text(t) => on_frame(shared, conn, id, t, &mut now, &mut direct),
            ws::Event::Binary(b) => match std::str::from_utf8(b) {
                Ok(t) => on_frame(shared, conn, id, t, &mut now, &mut direct),
                Err(_) => on_frame(shared, conn, id, "\u{0}", &mut now, &mut direct),
            },
            ws::Event::Ping(p) => {
                if !outbox.closing.load(Ordering::Relaxed) {
                    outbox.pong(p, shared.max_bytes);
                }
            }
            ws::Event::Pong => {}
            ws::Event::Close(frame) => {
                // tungstenite's answer: the same code and reason, unless the code is one a
                // client may not send.
                peer_close = Some(frame.map(|(code, reason)| {
                    if ws::close_code_allowed(code) {
                        (code, Cow::Owned(reason.to_owned()))
                    } else {
                        (1002, Cow::Borrowed("Protocol violation"))
                    }
                }));
                return ws::Flow::Stop;
            }
        }
        if outbox.closing.load(Ordering::Relaxed) {
            ws::Flow::Stop // closed or dropped by the realm: read no further
        } else {
            ws::Flow::Continue
        }
    };
    let r = decoder.feed(bytes, shared.config.max_frame_size, &mut on_event);
    write_direct(&mut direct);
    match (r, peer_close) {
        (Ok(_), Some(frame)) => Step::PeerClosed(frame),
        (Ok(_), None) => Step::More,
        (Err(ws::WsError::TooBig), _) => Step::TooBig,
        (Err(ws::WsError::Protocol), _) => {
            debug!(conn = conn.0, "WebSocket protocol error");
            Step::Failed
        }
    }
}

/// Writes what the socket's task has to write (it holds the write claim): everything queued
/// and, when the socket is closing, the close frame. False if the socket failed, was
/// killed or the server shuts down meanwhile.
async fn write_phase(shared: &Shared, io: &mut SockIo, outbox: &Outbox) -> bool {
    tokio::select! {
        r = write_out(io, outbox) => r,
        _ = shared.shutdown.cancelled() => false,
    }
}

/// [`write_phase`] without the shutdown: waits for the write claim, then writes.
async fn write_out(io: &mut SockIo, outbox: &Outbox) -> bool {
    if !outbox.claim().await {
        return false;
    }
    match io {
        SockIo::Tcp(_) => {
            let Some(sock) = &outbox.direct else {
                return false;
            };
            loop {
                match outbox.write_queued(sock, None, false) {
                    Wrote::Done => {
                        if !outbox.queue_close() {
                            return true;
                        }
                    }
                    Wrote::Blocked => {
                        // Also woken when the socket is killed meanwhile (a slow reader).
                        tokio::select! {
                            r = sock.writable() => if r.is_err() { return false },
                            _ = outbox.notify.notified() => {}
                        }
                        if outbox.is_killed() {
                            return false;
                        }
                    }
                    Wrote::Broken => return false,
                }
            }
        }
        SockIo::Other(s) => loop {
            let mut buf = Vec::new();
            let close = outbox.take_encoded(&mut buf);
            if buf.is_empty() {
                return true;
            }
            let write = async { s.write_all(&buf).await.is_ok() && s.flush().await.is_ok() };
            tokio::select! {
                ok = write => if !ok { return false },
                _ = outbox.killed() => return false,
            }
            if close {
                return true;
            }
        },
    }
}

/// Reads until the client's close frame (or EOF), for at most [`LINGER`].
async fn linger(shared: &Shared, io: &mut SockIo, decoder: &mut ws::Decoder) {
    let max = shared.config.max_frame_size;
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            let more = read_with(io, |bytes| {
                let Some(bytes) = bytes else { return false };
                let mut closed = false;
                let r = decoder.feed(bytes, max, &mut |e| {
                    if matches!(e, ws::Event::Close(_)) {
                        closed = true;
                        ws::Flow::Stop
                    } else {
                        ws::Flow::Continue
                    }
                });
                r.is_ok() && !closed
            })
            .await;
            if !more {
                return;
            }
        }
    })
    .await;
}

/// Writes the frames left for direct writing by [`Shared::with_realm_deferred`].
fn write_direct(direct: &mut Vec<(Arc<Outbox>, String)>) {
    for (outbox, frame) in direct.drain(..) {
        outbox.write_direct(frame);
    }
}

fn on_frame(
    shared: &Shared,
    conn: ConnId,
    id: Option<&str>,
    text: &str,
    now: &mut Option<Instant>,
    direct: &mut Vec<(Arc<Outbox>, String)>,
) {
    let Some(id) = id else { return };
    match wire::parse(text) {
        Parsed::Message(msg) => {
            let now = *now.get_or_insert_with(Instant::now);
            shared.with_realm_deferred(now, direct, |realm, now| realm.message(now, conn, id, &msg))
        }
        Parsed::Malformed => {
            debug!(conn = conn.0, len = text.len(), "malformed frame");
            let now = *now.get_or_insert_with(Instant::now);
            shared.with_realm_deferred(now, direct, |realm, now| realm.malformed(now, conn, id))
        }
        Parsed::Ignored => {}
    }
}

// ---------------------------------------------------------------------------------------
// In-process clients

/// A client registered on the realm from inside the process (the node's own peer): no
/// socket, no rate limit, no alive timeout. It speaks the same JSON frames as a WebSocket
/// client. Dropping it unregisters the id.
pub struct LocalClient {
    shared: Arc<Shared>,
    conn: ConnId,
    id: Arc<str>,
    outbox: Arc<Outbox>,
}

impl LocalClient {
    pub(crate) fn connect(
        shared: &Arc<Shared>,
        id: &str,
        token: &str,
    ) -> Result<LocalClient, Rejection> {
        let conn = shared.next_conn();
        let outbox = Arc::new(Outbox::new(None));
        let req = ConnectRequest {
            key: Some(&shared.config.key),
            id: Some(id),
            token: Some(token),
            local: true,
            addr: None,
        };
        match shared.with_realm(|realm, now| realm.connect(now, conn, outbox.clone(), &req)) {
            Admission::Open(id) => Ok(LocalClient {
                shared: shared.clone(),
                conn,
                id,
                outbox,
            }),
            Admission::Rejected(why) => Err(why),
        }
    }

    /// The registered id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Handles `text` as if the client had sent it on its socket (`{"type":"ANSWER",
    /// "dst":…,"payload":…}` etc.; `src` is stamped by the realm).
    pub fn send(&self, text: &str) {
        let mut direct = Vec::new();
        on_frame(
            &self.shared,
            self.conn,
            Some(&self.id),
            text,
            &mut None,
            &mut direct,
        );
        write_direct(&mut direct);
    }

    /// The next frame for this client (`OPEN` first), or `None` once the server closed it
    /// (replaced by a reconnect with the same id and token, or shut down).
    pub async fn recv(&self) -> Option<String> {
        loop {
            {
                let mut s = self.outbox.lock();
                if let Some(f) = s.frames.pop_front() {
                    s.bytes -= f.len();
                    return Some(f);
                }
                if s.killed || s.close.is_some() || s.gone {
                    return None;
                }
            }
            tokio::select! {
                _ = self.outbox.notify.notified() => {}
                _ = self.shared.shutdown.cancelled() => return None,
            }
        }
    }
}

impl Drop for LocalClient {
    fn drop(&mut self) {
        self.outbox.mark_gone();
        let (conn, id) = (self.conn, self.id.clone());
        self.shared
            .with_realm(|realm, now| realm.disconnect(now, conn, Some(&id)));
    }
}

impl std::fmt::Debug for LocalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalClient")
            .field("id", &self.id)
            .field("conn", &self.conn)
            .finish()
    }
}
