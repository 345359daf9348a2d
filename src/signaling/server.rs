//! The axum shell: HTTP routes, the WebSocket driver around the [`Realm`] and the timer
//! task. The listener (plain TCP or TLS) and the serve loop are in `listener.rs`.
//!
//! Architecture invariants:
//! - The realm lives behind one `std::sync::Mutex`, held only for one realm call plus the
//!   execution of its actions (pushing frames into per-socket outboxes); never across an
//!   `.await`.
//! - Each socket has one task and one bounded [`Outbox`]. Frames are written in batches
//!   (feed all that is queued, flush once). A socket whose outbox is full is dropped, so a
//!   slow reader never holds up anyone else.
//!
//! Size: ~800 lines, the axum shell (routes, CORS, the socket reader and writer); the listener
//! and serve loop are in `listener.rs`.

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{
        ConnectInfo, FromRef, RawQuery, Request, State,
        connect_info::Connected,
        ws::{
            CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection::WebSocketUpgradeRejection,
        },
    },
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    serve::IncomingStream,
};
use futures::SinkExt;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::debug;

use super::{
    config::{Cidr, SignalConfig},
    realm::{
        Action, Admission, CloseReason, ConnId, ConnectRequest, Realm, RealmConfig, Rejection,
        Stats,
    },
    wire::{self, Parsed},
};

/// tungstenite's read buffer per socket (also the most it reads per syscall). Small on
/// purpose: it is allocated (and zero-filled) for every socket, and 10k idle sockets must be
/// cheap. A typical OFFER (~0.6–1 KB) takes two reads.
const READ_BUFFER: usize = 512;
/// tungstenite writes to the socket once this much is buffered (and on every flush).
const WRITE_BUFFER: usize = 16 * 1024;
/// How long a closing socket waits for the client's close frame.
const LINGER: Duration = Duration::from_secs(1);

/// The body of `GET {path}`, as the reference serves it.
pub const INFO_JSON: &str = r#"{"name":"PeerJS Server","description":"A server side element to broker connections between PeerJS clients.","website":"https://peerjs.com/"}"#;

/// Frames waiting to be written to one socket, shared by the realm (producer, under the
/// realm lock) and the socket's task (consumer).
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    frames: VecDeque<String>,
    bytes: usize,
    close: Option<CloseReason>,
    killed: bool,
    gone: bool,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame; false if the socket is gone or its queue is full.
    fn push(&self, frame: String, max_frames: usize, max_bytes: usize) -> bool {
        {
            let mut s = self.lock();
            if s.gone || s.killed {
                return false;
            }
            if s.close.is_some() {
                return true; // closing anyway: drop quietly
            }
            if s.frames.len() >= max_frames || s.bytes + frame.len() > max_bytes {
                return false;
            }
            s.bytes += frame.len();
            s.frames.push_back(frame);
        }
        self.notify.notify_one();
        true
    }

    fn close(&self, reason: CloseReason) {
        self.lock().close.get_or_insert(reason);
        self.notify.notify_one();
    }

    fn kill(&self) {
        self.lock().killed = true;
        self.notify.notify_one();
    }

    fn mark_gone(&self) {
        let mut s = self.lock();
        s.gone = true;
        s.frames = VecDeque::new();
    }

    /// Everything queued (the buffer itself is handed over, so an idle outbox holds no
    /// memory), the pending close, and whether the socket was killed.
    fn take(&self) -> (VecDeque<String>, Option<CloseReason>, bool) {
        let mut s = self.lock();
        s.bytes = 0;
        (std::mem::take(&mut s.frames), s.close.take(), s.killed)
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
        let now = Instant::now();
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
                } => {
                    if !to.push(frame, self.max_frames, self.max_bytes) {
                        core.realm
                            .undeliverable(now, conn, dst.as_deref(), src.as_deref());
                    }
                }
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

async fn ws_route(
    State(shared): State<Arc<Shared>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    RawQuery(query): RawQuery,
    remote: Option<axum::Extension<ConnectInfo<RemoteAddr>>>,
    headers: HeaderMap,
) -> Response {
    let Ok(upgrade) = upgrade else {
        let uri = format!("{}peerjs", shared.config.path)
            .parse()
            .unwrap_or_default();
        return not_found(Method::GET, uri).await;
    };
    let query = Query::parse(query.as_deref().unwrap_or(""));
    let ip = client_ip(
        &shared.config.trusted_proxies,
        remote.map(|r| r.0.0.0.ip()),
        &headers,
    );
    let max = shared.config.max_frame_size;
    upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| {
            let guard = shared.tracker.token();
            let (conn, outbox, id) = admit(&shared, query, ip);
            async move {
                run_socket(shared, ws, conn, outbox, id).await;
                drop(guard);
            }
        })
}

// ---------------------------------------------------------------------------------------
// The socket driver

fn close_message(reason: CloseReason) -> Message {
    let frame = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }))
    };
    match reason {
        CloseReason::Normal => Message::Close(None),
        CloseReason::Replaced => frame(1000, "replaced by a newer connection"),
        CloseReason::Policy => frame(1008, "policy violation"),
        CloseReason::TooBig => frame(1009, "message too big"),
    }
}

async fn write_batch(
    ws: &mut WebSocket,
    frames: VecDeque<String>,
    close: Option<CloseReason>,
) -> Result<(), axum::Error> {
    for f in frames {
        ws.feed(Message::Text(f.into())).await?;
    }
    if let Some(reason) = close {
        ws.feed(close_message(reason)).await?;
    }
    ws.flush().await
}

/// Reads until the client's close frame (or EOF), for at most [`LINGER`].
async fn linger(ws: &mut WebSocket) {
    let _ =
        tokio::time::timeout(LINGER, async { while let Some(Ok(_)) = ws.recv().await {} }).await;
}

fn is_too_big(e: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    e.into_inner()
        .downcast_ref::<WsError>()
        .is_some_and(|e| matches!(e, WsError::Capacity(_)))
}

/// Registers a freshly upgraded socket with the realm. Synchronous on purpose: nothing here
/// stays in the socket task's state.
fn admit(
    shared: &Shared,
    query: Query,
    addr: Option<IpAddr>,
) -> (ConnId, Arc<Outbox>, Option<Arc<str>>) {
    shared.sockets.fetch_add(1, Ordering::Relaxed);
    let conn = shared.next_conn();
    let outbox = Arc::new(Outbox::default());
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
    (conn, outbox, id)
}

/// The socket task: writes what the realm queues for this socket, feeds what it reads to
/// the realm, and unregisters it at the end. Its state is what every idle connection costs,
/// so big and rare futures in it are boxed.
/// (A plain fn returning an `async move` block: an `async fn` would keep its arguments twice
/// in its state.)
#[allow(clippy::manual_async_fn)]
fn run_socket(
    shared: Arc<Shared>,
    mut ws: WebSocket,
    conn: ConnId,
    outbox: Arc<Outbox>,
    id: Option<Arc<str>>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let close_handshake = drive_socket(&shared, &mut ws, conn, id.as_deref(), &outbox).await;
        // Unregister before completing the close handshake: once a client sees its close
        // acknowledged, its id is free.
        outbox.mark_gone();
        shared.with_realm(|realm, now| realm.disconnect(now, conn, id.as_deref()));
        if close_handshake {
            Box::pin(linger(&mut ws)).await;
        }
        shared.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes one batch unless the socket is killed or the server shuts down meanwhile; false if
/// the socket is done for.
async fn write_phase(
    shared: &Shared,
    ws: &mut WebSocket,
    outbox: &Outbox,
    frames: VecDeque<String>,
    close: Option<CloseReason>,
) -> bool {
    tokio::select! {
        r = write_batch(ws, frames, close) => r.is_ok(),
        _ = outbox.killed() => false,
        _ = shared.shutdown.cancelled() => false,
    }
}

async fn drive_socket(
    shared: &Shared,
    ws: &mut WebSocket,
    conn: ConnId,
    id: Option<&str>,
    outbox: &Outbox,
) -> bool {
    loop {
        let (frames, close, killed) = outbox.take();
        if killed {
            return false;
        }
        if !frames.is_empty() || close.is_some() {
            // Boxed: the write path's state would otherwise enlarge every idle socket's task.
            if !Box::pin(write_phase(shared, ws, outbox, frames, close)).await {
                return false;
            }
            if close.is_some() {
                return true;
            }
            continue;
        }
        tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => {
                let bye = Message::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }));
                return Box::pin(tokio::time::timeout(LINGER, ws.send(bye))).await.is_ok_and(|r| r.is_ok());
            }
            _ = outbox.notify.notified() => {}
            msg = ws.recv() => match msg {
                None => return false,
                Some(Ok(Message::Text(t))) => on_frame(shared, conn, id, t.as_str()),
                Some(Ok(Message::Binary(b))) => match std::str::from_utf8(&b) {
                    Ok(t) => on_frame(shared, conn, id, t),
                    Err(_) => on_frame(shared, conn, id, "\u{0}"),
                },
                Some(Ok(Message::Close(_))) => {
                    return true;
                }
                Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                Some(Err(e)) => {
                    if is_too_big(e) && let Some(id) = id {
                        // The read side is finished; write ERROR and the close frame.
                        shared.with_realm(|realm, now| realm.too_big(now, conn, id));
                        let (frames, close, _) = outbox.take();
                        let _ = Box::pin(tokio::time::timeout(LINGER, write_batch(ws, frames, close))).await;
                    }
                    return false;
                }
            },
        }
    }
}

fn on_frame(shared: &Shared, conn: ConnId, id: Option<&str>, text: &str) {
    let Some(id) = id else { return };
    match wire::parse(text) {
        Parsed::Message(msg) => shared.with_realm(|realm, now| realm.message(now, conn, id, &msg)),
        Parsed::Malformed => {
            debug!(conn = conn.0, len = text.len(), "malformed frame");
            shared.with_realm(|realm, now| realm.malformed(now, conn, id))
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
        let outbox = Arc::new(Outbox::default());
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
        on_frame(&self.shared, self.conn, Some(&self.id), text);
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
