//! The replicated ring's member links: members open PeerJS DataConnections (label
//! `ouroboros-replica`, `raw`, reliable) to each other through the signaling servers they are
//! registered on, with the node's ICE servers, or a WebSocket to `/replica/v1/link` at each
//! other's base URL (the tunnel), and carry the same signed calls as over HTTP
//! (`replica::link`'s frames). WebRTC crosses NATs with STUN (or TURN); the WebSocket through the
//! tunnel is the fallback (`replica::LinkPolicy`).
//!
//! - [`RtcMemberLink`] is the calling side: one outgoing link per member and path, opened on the
//!   first call (WebRTC: through the member's routes, a dialer peer with a random id on each
//!   signaling server, shared by all members reached there), reopened with backoff after it
//!   fails; many calls in flight on one link, matched to their answers by number.
//! - [`LinkServer`] is the answering side: the node's peers hand it every incoming
//!   DataConnection with the label, the node's HTTP server every upgraded link WebSocket; each
//!   call is answered by the member's `ReplicaService`, which checks its MAC, timestamp and
//!   receiver exactly as for HTTP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handoff::FrameLink;
use crate::peer::ConnectionReceiver;
use crate::peer::codec::{Serialization, Value};
use crate::peer::{ConnectOptions, ConnectionSender, DataConnection, Peer, PeerConfig};
use crate::replica::{
    Envelope, LINK_LABEL, LINK_WS_PATH, LinkError, LinkPath, MemberLink, NodeId, Reassembler,
    ReplicaService, RtcRoute, Whole, encode_answer, encode_request,
};

/// The sending half of a link, whatever carries it.
#[derive(Clone)]
enum FrameTx {
    Rtc(ConnectionSender),
    Ws(tokio::sync::mpsc::Sender<Vec<u8>>),
}

impl FrameTx {
    async fn send(&self, frame: Bytes) -> Result<(), String> {
        match self {
            FrameTx::Rtc(s) => s.send(&Value::Bin(frame)).await.map_err(|e| e.to_string()),
            FrameTx::Ws(tx) => tx
                .send(frame.to_vec())
                .await
                .map_err(|_| "the link closed".to_owned()),
        }
    }

    /// Closes a DataConnection (a WebSocket closes once its last sender is dropped).
    async fn close(&self) {
        if let FrameTx::Rtc(s) = self {
            s.close(false).await;
        }
    }
}

/// The receiving half of a link.
enum FrameRx {
    Rtc(ConnectionReceiver),
    Ws(tokio::sync::mpsc::Receiver<Vec<u8>>),
}

impl FrameRx {
    /// The next binary message; `None` once the link closed (or sent something else).
    async fn next(&mut self) -> Option<Bytes> {
        match self {
            FrameRx::Rtc(r) => match r.recv().await {
                Some(Ok(Value::Bin(b))) => Some(b),
                _ => None,
            },
            FrameRx::Ws(r) => r.recv().await.map(Bytes::from),
        }
    }
}

/// Which kind of link (a member has at most one of each open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Via {
    Rtc,
    Ws,
}

/// Member links a node answers at once (more are closed at once).
pub const MAX_LINKS_SERVED: usize = 64;
/// Calls of one link answered at once (the link is not read further meanwhile).
const MAX_CALLS_IN_FLIGHT: usize = 64;
/// Refused calls (bad MAC, wrong receiver, stale timestamp) after which a link is closed.
const MAX_REFUSED_PER_LINK: u32 = 20;
/// How long opening one DataConnection may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);
/// The first wait before reopening a link that could not be opened; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// See [`FIRST_BACKOFF`].
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one route may take before the next one is tried beside it.
const ROUTE_STAGGER: Duration = Duration::from_secs(2);

/// Sets up a dialer peer's config (the node's ICE servers, its HTTP headers, candidates).
pub type Configure = Arc<dyn Fn(&mut PeerConfig) + Send + Sync>;

/// One open link.
struct Conn {
    sender: FrameTx,
    /// Calls waiting for their answer, by number.
    pending: Mutex<HashMap<u32, oneshot::Sender<(u16, Bytes)>>>,
    next: AtomicU32,
    closed: CancellationToken,
}

impl Conn {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u32, oneshot::Sender<(u16, Bytes)>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `env` and waits for its answer until `deadline` (`timeout` after the call began).
    async fn request(
        &self,
        env: &Envelope,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(u16, Bytes), LinkError> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(number, tx);
        let sent = tokio::time::timeout_at(deadline, async {
            for f in encode_request(number, env) {
                self.sender.send(f).await?;
            }
            Ok::<(), String>(())
        })
        .await;
        let failed = match sent {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(LinkError::Failed(e)),
            Err(_) => Some(LinkError::Timeout(timeout)),
        };
        if let Some(e) = failed {
            self.pending().remove(&number);
            return Err(e);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(LinkError::Failed("the link closed".into())),
            Err(_) => {
                self.pending().remove(&number);
                Err(LinkError::Timeout(timeout))
            }
        }
    }
}

/// The state of the link to one member.
enum Slot {
    /// Open (until its `closed` fires).
    Up(Arc<Conn>),
    /// Being opened; the value turns `true` when the attempt ends.
    Opening(watch::Receiver<bool>),
    /// The last attempt failed: the next one not before `retry_at`.
    Down {
        retry_at: Instant,
        backoff: Duration,
        error: String,
    },
}

/// What a call finds.
enum Found {
    Up(Arc<Conn>),
    Opening(watch::Receiver<bool>),
    /// The last attempt failed (why); the next one is not due yet.
    Down(String),
}

struct Inner {
    me: NodeId,
    configure: Configure,
    /// Dialer peers by signaling server URL.
    dialers: tokio::sync::Mutex<HashMap<String, Arc<Peer>>>,
    links: Mutex<HashMap<(NodeId, Via), Slot>>,
    stop: CancellationToken,
}

/// The calling side of member links (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct RtcMemberLink {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RtcMemberLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtcMemberLink")
            .field("me", &self.inner.me)
            .finish_non_exhaustive()
    }
}

impl RtcMemberLink {
    /// Links of member `me`; `configure` prepares each dialer peer; everything closes when
    /// `stop` fires.
    pub fn new(me: NodeId, configure: Configure, stop: CancellationToken) -> Self {
        let inner = Arc::new(Inner {
            me,
            configure,
            dialers: tokio::sync::Mutex::default(),
            links: Mutex::default(),
            stop: stop.clone(),
        });
        // The dialer peers leave their signaling servers when the node stops.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            stop.cancelled().await;
            if let Some(inner) = weak.upgrade() {
                let dialers: Vec<Arc<Peer>> =
                    inner.dialers.lock().await.drain().map(|(_, p)| p).collect();
                for p in dialers {
                    p.close().await;
                }
            }
        });
        RtcMemberLink { inner }
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<(NodeId, Via), Slot>> {
        self.inner.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link to `to` over `path`, starting to open one when there is none and none is due
    /// to wait.
    fn find(&self, to: NodeId, path: LinkPath<'_>) -> Found {
        let via = match path {
            LinkPath::Rtc(_) => Via::Rtc,
            LinkPath::Ws(_) => Via::Ws,
        };
        let key = (to, via);
        let now = Instant::now();
        let mut links = self.links();
        let mut backoff = FIRST_BACKOFF;
        match links.get(&key) {
            Some(Slot::Up(c)) if !c.closed.is_cancelled() => return Found::Up(c.clone()),
            Some(Slot::Opening(rx)) => return Found::Opening(rx.clone()),
            Some(Slot::Down {
                retry_at, error, ..
            }) if now < *retry_at => return Found::Down(error.clone()),
            Some(Slot::Down { backoff: b, .. }) => backoff = *b,
            _ => {}
        }
        let (tx, rx) = watch::channel(false);
        links.insert(key, Slot::Opening(rx.clone()));
        drop(links);
        let this = self.clone();
        let target = match path {
            LinkPath::Rtc(routes) => Target::Rtc(routes.to_vec()),
            LinkPath::Ws(base) => Target::Ws(base.to_owned()),
        };
        tokio::spawn(async move {
            let opened = match &target {
                Target::Rtc(routes) => this.open(to, routes).await,
                Target::Ws(base) => this.open_ws(to, base).await,
            };
            let slot = match opened {
                Ok(conn) => Slot::Up(conn),
                Err(error) => {
                    tracing::info!(member = this.inner.me, to, ?via, %error, retry_in = ?backoff, "replica: member link not opened");
                    Slot::Down {
                        retry_at: Instant::now() + backoff,
                        backoff: (backoff * 2).min(MAX_BACKOFF),
                        error,
                    }
                }
            };
            this.links().insert(key, slot);
            let _ = tx.send(true);
        });
        Found::Opening(rx)
    }

    /// The dialer peer on `server` (opened on first use, reopened once closed).
    async fn dialer(&self, server: &str) -> Result<Arc<Peer>, String> {
        let open = |p: &Arc<Peer>| !p.is_closed();
        if let Some(p) = self
            .inner
            .dialers
            .lock()
            .await
            .get(server)
            .filter(|p| open(p))
        {
            return Ok(p.clone());
        }
        let mut cfg = PeerConfig::from_url(server).map_err(|e| e.to_string())?;
        cfg.id = Some(format!(
            "m{}-{}",
            self.inner.me,
            super::args::random_peer_id()
        ));
        cfg.connect_timeout = OPEN_TIMEOUT;
        cfg.http_headers = crate::tunnel::node_http_headers();
        (self.inner.configure)(&mut cfg);
        let peer = tokio::time::timeout(OPEN_TIMEOUT, Peer::open(cfg))
            .await
            .map_err(|_| format!("{server}: signaling did not open in {OPEN_TIMEOUT:?}"))?
            .map_err(|e| format!("{server}: {e}"))?;
        let peer = Arc::new(peer);
        let mut dialers = self.inner.dialers.lock().await;
        // Another link may have opened one meanwhile: keep that one.
        if let Some(p) = dialers.get(server).filter(|p| open(p)) {
            let p = p.clone();
            drop(dialers);
            peer.close().await;
            return Ok(p);
        }
        dialers.insert(server.to_owned(), peer.clone());
        Ok(peer)
    }

    /// One attempt through one route.
    async fn try_route(&self, r: RtcRoute) -> Result<(RtcRoute, DataConnection), String> {
        let peer = self.dialer(&r.server).await?;
        let opts = ConnectOptions {
            label: Some(LINK_LABEL.into()),
            serialization: Serialization::Raw,
            reliable: true,
            metadata: Some(serde_json::json!({ "member": self.inner.me })),
        };
        match tokio::time::timeout(OPEN_TIMEOUT, peer.connect(&r.peer, opts)).await {
            Ok(Ok(dc)) => Ok((r, dc)),
            Ok(Err(e)) => Err(format!("{} at {}: {e}", r.peer, r.server)),
            Err(_) => Err(format!(
                "{} at {}: not open in {OPEN_TIMEOUT:?}",
                r.peer, r.server
            )),
        }
    }

    /// Opens a DataConnection to member `to` through its routes: in order, the next one
    /// started when the ones before have failed or taken [`ROUTE_STAGGER`] (a route through an
    /// unreachable server costs seconds); the first open wins.
    async fn open(&self, to: NodeId, routes: &[RtcRoute]) -> Result<Arc<Conn>, String> {
        use futures::StreamExt as _;
        let mut attempts = futures::stream::FuturesUnordered::new();
        let mut errors = Vec::new();
        let mut next = 0;
        let mut due = Instant::now();
        loop {
            if next < routes.len() && (attempts.is_empty() || Instant::now() >= due) {
                attempts.push(Box::pin(self.try_route(routes[next].clone())));
                next += 1;
                due = Instant::now() + ROUTE_STAGGER;
                continue;
            }
            if attempts.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = attempts.next() => match done {
                    Ok((r, dc)) => {
                        tracing::info!(member = self.inner.me, to, peer = %r.peer, server = %r.server, "replica: member link open over WebRTC");
                        let (tx, rx) = dc.split();
                        return Ok(self.start(to, FrameTx::Rtc(tx), FrameRx::Rtc(rx)));
                    }
                    Err(e) => errors.push(e),
                },
                () = tokio::time::sleep_until(due), if next < routes.len() => {}
                () = self.inner.stop.cancelled() => return Err("stopping".into()),
            }
        }
        Err(if errors.is_empty() {
            "no WebRTC route".into()
        } else {
            errors.join("; ")
        })
    }

    /// Opens a WebSocket link to the member whose base URL is `base`.
    async fn open_ws(&self, to: NodeId, base: &str) -> Result<Arc<Conn>, String> {
        let url = format!(
            "{}{LINK_WS_PATH}",
            base.trim_end_matches('/').replacen("http", "ws", 1)
        );
        let link = tokio::time::timeout(OPEN_TIMEOUT, super::handoff_ws::open_frame_link(&url))
            .await
            .map_err(|_| format!("{url}: not open in {OPEN_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        tracing::info!(member = self.inner.me, to, %url, "replica: member link open over a WebSocket");
        let FrameLink { tx, rx, .. } = link;
        Ok(self.start(to, FrameTx::Ws(tx), FrameRx::Ws(rx)))
    }

    /// Starts the reader of an opened link.
    fn start(&self, to: NodeId, sender: FrameTx, mut receiver: FrameRx) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            sender,
            pending: Mutex::default(),
            next: AtomicU32::new(1),
            closed: CancellationToken::new(),
        });
        let c = conn.clone();
        let me = self.inner.me;
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            let mut frames = Reassembler::default();
            loop {
                let b = tokio::select! {
                    b = receiver.next() => b,
                    () = stop.cancelled() => break,
                };
                let Some(b) = b else { break };
                match frames.push(&b) {
                    Ok(None) => {}
                    Ok(Some(Whole::Answer(n, status, body))) => {
                        if let Some(tx) = c.pending().remove(&n) {
                            let _ = tx.send((status, body));
                        }
                    }
                    Ok(Some(Whole::Call(..))) => {
                        tracing::warn!(
                            member = me,
                            to,
                            "replica: a call on an outgoing member link; closing it"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(member = me, to, error = %e, "replica: member link broke the format; closing it");
                        break;
                    }
                }
            }
            c.closed.cancel();
            c.pending().clear();
            c.sender.close().await;
            tracing::info!(member = me, to, "replica: member link closed");
        });
        conn
    }
}

/// Where a link is being opened to.
enum Target {
    Rtc(Vec<RtcRoute>),
    Ws(String),
}

#[async_trait::async_trait]
impl MemberLink for RtcMemberLink {
    async fn call(
        &self,
        path: LinkPath<'_>,
        env: &Envelope,
        timeout: Duration,
        wait: bool,
    ) -> Result<(u16, Bytes), LinkError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(env.to, path) {
                Found::Up(conn) => return conn.request(env, deadline, timeout).await,
                Found::Opening(_) if !wait => return Err(LinkError::NotUp),
                Found::Opening(mut rx) => {
                    if tokio::time::timeout_at(deadline, rx.wait_for(|done| *done))
                        .await
                        .is_err()
                    {
                        return Err(LinkError::Timeout(timeout));
                    }
                }
                // A link that failed a moment ago fails the call at once (the caller's retry,
                // or openraft's, comes back later): waiting out the backoff would hold a
                // forwarded publish past the write timeout while a new leader is elected.
                Found::Down(error) => return Err(LinkError::Failed(error)),
            }
        }
    }
}

/// The answering side: serves incoming member links with the member's service (none: the
/// node is not a member, and such links are closed). Cheap to clone.
#[derive(Clone, Debug)]
pub struct LinkServer {
    service: Option<ReplicaService>,
    slots: Arc<Semaphore>,
}

impl LinkServer {
    /// Serves links with `service` (at most [`MAX_LINKS_SERVED`] at once).
    pub fn new(service: Option<ReplicaService>) -> Self {
        LinkServer {
            service,
            slots: Arc::new(Semaphore::new(MAX_LINKS_SERVED)),
        }
    }

    /// Takes an incoming DataConnection labelled [`LINK_LABEL`].
    pub fn accept(&self, dc: DataConnection) {
        let remote = dc.peer().to_owned();
        if dc.serialization() != Serialization::Raw {
            tracing::info!(peer = %remote, "replica: member link without raw serialization refused");
            tokio::spawn(async move { dc.close(false).await });
            return;
        }
        let (tx, rx) = dc.split();
        self.serve(FrameTx::Rtc(tx), FrameRx::Rtc(rx), remote, None);
    }

    /// Takes an upgraded link WebSocket from `ip`.
    pub fn accept_ws(&self, link: FrameLink, ip: Option<std::net::IpAddr>) {
        let FrameLink { tx, rx, .. } = link;
        let remote = ip.map_or_else(|| "?".to_owned(), |ip| ip.to_string());
        self.serve(FrameTx::Ws(tx), FrameRx::Ws(rx), remote, ip);
    }

    fn serve(&self, tx: FrameTx, rx: FrameRx, remote: String, ip: Option<std::net::IpAddr>) {
        let (Some(service), Ok(slot)) =
            (self.service.clone(), self.slots.clone().try_acquire_owned())
        else {
            tracing::info!(peer = %remote, "replica: member link refused (not a member, or too many links)");
            tokio::spawn(async move { tx.close().await });
            return;
        };
        tokio::spawn(async move {
            serve(tx, rx, service, remote, ip).await;
            drop(slot);
        });
    }
}

/// Answers the calls of one incoming link until it closes or breaks the rules; refused calls
/// count against `ip` too (the HTTP path's limit) when it is known.
async fn serve(
    sender: FrameTx,
    mut receiver: FrameRx,
    service: ReplicaService,
    remote: String,
    ip: Option<std::net::IpAddr>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_CALLS_IN_FLIGHT));
    let refused = Arc::new(AtomicU32::new(0));
    let mut frames = Reassembler::default();
    while let Some(b) = receiver.next().await {
        if refused.load(Ordering::Relaxed) >= MAX_REFUSED_PER_LINK {
            tracing::warn!(peer = %remote, "replica: member link refused too many calls; closing it");
            break;
        }
        let call = match frames.push(&b) {
            Ok(None) => continue,
            Ok(Some(Whole::Call(n, call))) => (n, call),
            Ok(Some(Whole::Answer(..))) | Err(_) => {
                tracing::info!(peer = %remote, "replica: member link broke the format; closing it");
                break;
            }
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (service, sender, refused) = (service.clone(), sender.clone(), refused.clone());
        tokio::spawn(async move {
            let (n, call) = call;
            let answer = service.handle_received(&call).await;
            if matches!(answer.status, 400 | 401 | 404 | 421) {
                refused.fetch_add(1, Ordering::Relaxed);
                if ip.is_some() {
                    service.count(ip, &answer);
                }
            }
            for f in encode_answer(n, answer.status, &answer.body) {
                if sender.send(f).await.is_err() {
                    break;
                }
            }
            drop(permit);
        });
    }
    sender.close().await;
}
