//! The replicated log between processes: Raft's three RPCs and the members' own calls
//! (publish, history, status, join, remove) as HTTP `POST`s with JSON bodies, each
//! authenticated with an HMAC of the ring's shared secret (`protocol/replication.md`,
//! "Transport between processes").
//!
//! - [`HttpTransport`] is the sending side: a [`Transport`] for openraft plus
//!   [`HttpTransport::call`] for the members' calls. It learns where each member lives from the
//!   membership (openraft hands the member's [`NodeAddr`] to the network factory).
//! - [`ReplicaService`] is the receiving side, free of any web framework: it takes the call's
//!   name, its headers and its body, and returns a status and a JSON body. The node mounts it
//!   under [`PATH_PREFIX`] on its HTTP server (`node::replica`).
//!
//! The MAC covers the call, the sender, the receiver, a timestamp and the body, so a request
//! cannot be redirected to another member, another call, or replayed after
//! [`MAX_CLOCK_SKEW`]. A replay inside that window repeats an idempotent request: Raft's RPCs
//! carry terms and log ids, and a publish is deduplicated by `(room, from, id)`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use openraft::SnapshotSegmentId;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, SnapshotMismatch, Unreachable};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use ring::hmac;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::link::{CallCounts, Envelope, LinkError, LinkPath, LinkPolicy, MemberLink};
use super::network::{RpcError, Transport, remote};
use super::refusals::RefusalLimit;
use super::snapshot::{ChunkCheck, decode_chunk, encode_chunk};
use super::{ChangeMembers, Message, NodeAddr, NodeId, Replica, ReplicaError, Seq, TypeConfig};
use crate::discovery::signing::derive_key;

/// Every call's path starts with this; the call's name follows (`/replica/v1/append`).
pub const PATH_PREFIX: &str = "/replica/v1/";
/// The largest request body a member accepts (a batch of log entries or a snapshot chunk).
pub const MAX_BODY_BYTES: usize = 32 << 20;
/// How far a request's timestamp may be from the receiver's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The longest a `snapshot` call may take (the last chunk's answer waits for the receiver to
/// install the snapshot: seconds for a GB); [`ReplicaConfig::snapshot_timeout`](super::ReplicaConfig::snapshot_timeout) bounds it too.
pub const SNAPSHOT_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The sender id of a caller that is not a member (an operator's tool holding the secret).
pub const OPERATOR: NodeId = 0;

/// Header: the sender's member id ([`OPERATOR`] for a tool).
pub const HEADER_FROM: &str = "x-replica-from";
/// Header: the receiver's member id.
pub const HEADER_TO: &str = "x-replica-to";
/// Header: the sender's clock, ms since the Unix epoch.
pub const HEADER_TS: &str = "x-replica-ts";
/// Header: base64url (no padding) of the HMAC-SHA256 of [`RpcKey::mac`]'s input.
pub const HEADER_MAC: &str = "x-replica-mac";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The calls a member answers, by the last part of their path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Raft: log replication and heartbeats.
    Append,
    /// Raft: one chunk of a snapshot.
    Snapshot,
    /// Raft: a vote request.
    Vote,
    /// Publish a message ([`PublishRequest`]); a follower forwards it to the leader.
    Publish,
    /// A room's history as applied on this member ([`HistoryRequest`]).
    History,
    /// This member's role, leader, log and membership ([`Status`]).
    Status,
    /// Add a member: learner, catch up, voter ([`JoinRequest`]); forwarded to the leader.
    Join,
    /// Remove a voter ([`RemoveRequest`]); forwarded to the leader, which steps aside first
    /// when it is the one removed.
    Remove,
}

impl Call {
    /// Every call.
    pub const ALL: [Call; 8] = [
        Call::Append,
        Call::Snapshot,
        Call::Vote,
        Call::Publish,
        Call::History,
        Call::Status,
        Call::Join,
        Call::Remove,
    ];

    /// The call's name in its path.
    pub fn name(self) -> &'static str {
        match self {
            Call::Append => "append",
            Call::Snapshot => "snapshot",
            Call::Vote => "vote",
            Call::Publish => "publish",
            Call::History => "history",
            Call::Status => "status",
            Call::Join => "join",
            Call::Remove => "remove",
        }
    }

    /// The call named `name`, if any.
    pub fn from_name(name: &str) -> Option<Call> {
        Call::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The key that authenticates calls between the members of one ring, derived from the ring's
/// shared secret (HKDF-SHA256, salt `ouroboros replica rpc v1`, info `mac`).
pub struct RpcKey {
    key: hmac::Key,
}

impl std::fmt::Debug for RpcKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RpcKey(..)")
    }
}

impl RpcKey {
    /// The key of the ring whose shared secret is `secret`.
    pub fn from_secret(secret: &[u8]) -> RpcKey {
        let key = derive_key(secret, b"ouroboros replica rpc v1", b"mac");
        RpcKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
        }
    }

    /// The MAC input: `ouroboros-replica-v1\n{call}\n{from}\n{to}\n{ts}\n` followed by the body.
    fn input(call: Call, from: NodeId, to: NodeId, ts: u64, body: &[u8]) -> Vec<u8> {
        let mut data = format!(
            "ouroboros-replica-v1\n{}\n{from}\n{to}\n{ts}\n",
            call.name()
        )
        .into_bytes();
        data.extend_from_slice(body);
        data
    }

    /// The MAC of a request (base64url, no padding).
    pub fn mac(&self, call: Call, from: NodeId, to: NodeId, ts: u64, body: &[u8]) -> String {
        B64.encode(hmac::sign(&self.key, &Self::input(call, from, to, ts, body)).as_ref())
    }

    /// Whether `mac` is the request's MAC (constant time).
    pub fn verify(
        &self,
        call: Call,
        from: NodeId,
        to: NodeId,
        ts: u64,
        body: &[u8],
        mac: &str,
    ) -> bool {
        B64.decode(mac).is_ok_and(|m| {
            hmac::verify(&self.key, &Self::input(call, from, to, ts, body), &m).is_ok()
        })
    }
}

/// The milliseconds since the Unix epoch (0 for a clock before 1970).
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `POST publish`: a message to append to a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublishRequest {
    /// The room.
    pub room: String,
    /// The publisher's identity.
    pub from: String,
    /// The publisher's message id (a retry repeats it).
    pub id: String,
    /// The body.
    pub body: serde_json::Value,
}

/// `POST history`: which room, and from where.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// The room.
    pub room: String,
    /// Only messages after this `seq` (a client resuming after a failover); 0 (the default):
    /// from the first.
    #[serde(default)]
    pub since: Seq,
    /// At most this many messages (the default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// `POST join`: the member to add.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Its member id (never 0, never reused).
    pub id: NodeId,
    /// Its base URL (`http://127.0.0.1:8080`; empty when it takes calls over WebRTC only).
    pub addr: String,
    /// Its WebRTC routes (at most [`MAX_RTC_ROUTES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtc: Vec<super::RtcRoute>,
}

/// Most WebRTC routes a joining member may give.
pub const MAX_RTC_ROUTES: usize = 8;

/// `POST remove`: the voter to remove.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    /// Its member id.
    pub id: NodeId,
}

/// `POST status`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This member.
    pub id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// The leader it knows of.
    pub leader: Option<NodeId>,
    /// Its current term.
    pub term: u64,
    /// The index of its last log entry (0: none).
    pub last_log: u64,
    /// The index of the last entry it applied (0: none).
    pub applied: u64,
    /// The voters, by id, with their addresses.
    pub voters: Vec<(NodeId, String)>,
    /// The learners, by id, with their addresses.
    pub learners: Vec<(NodeId, String)>,
}

/// A member call's outcome in its body: `{"ok": …}` or `{"err": …}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome<T> {
    /// It worked.
    Ok(T),
    /// It did not.
    Err(CallFailure),
}

/// Why a member call did not work, as it travels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallFailure {
    /// No leader could take it (an election is under way, or the leader was unreachable):
    /// retry, with the same message id for a publish.
    NoLeader {
        /// The leader the member knows of.
        leader: Option<NodeId>,
    },
    /// Not committed in time (a leader cut off from the majority): retry with the same id.
    NotCommitted {
        /// Detail.
        detail: String,
    },
    /// A field breaks a rule; do not retry.
    BadRequest {
        /// The field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A membership change was refused (another one is under way, …).
    Refused {
        /// Detail.
        detail: String,
    },
    /// The member is shutting down.
    Stopped,
}

impl CallFailure {
    /// Whether the same call (same message id) may work later or elsewhere.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, CallFailure::BadRequest { .. })
    }
}

impl From<ReplicaError> for CallFailure {
    fn from(e: ReplicaError) -> Self {
        match e {
            ReplicaError::ForwardToLeader { leader, .. } => CallFailure::NoLeader { leader },
            ReplicaError::NotCommitted(detail) => CallFailure::NotCommitted { detail },
            ReplicaError::BadRequest { field, reason } => CallFailure::BadRequest {
                field: field.to_owned(),
                reason: reason.to_owned(),
            },
            ReplicaError::Stopped(_) => CallFailure::Stopped,
            e @ (ReplicaError::Membership(_)
            | ReplicaError::Initialize(_)
            | ReplicaError::Config(_)
            | ReplicaError::Wait(_)
            | ReplicaError::UnexpectedReply(_)) => CallFailure::Refused {
                detail: e.to_string(),
            },
        }
    }
}

/// Why an HTTP call to a member did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The member could not be reached (connection refused, timeout, reset).
    #[error("member {to} at {addr}: unreachable: {detail}")]
    Unreachable {
        /// The member.
        to: NodeId,
        /// Where it was called.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// The member answered with an HTTP error (401: the MAC or the clock; 404: no such call).
    #[error("member {to}: HTTP {status}: {body}")]
    Status {
        /// The member.
        to: NodeId,
        /// The status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The member's answer is not the JSON expected.
    #[error("member {to}: bad answer: {detail}")]
    Decode {
        /// The member.
        to: NodeId,
        /// What is wrong.
        detail: String,
    },
    /// No address is known for the member.
    #[error("no address known for member {0}")]
    NoAddress(NodeId),
}

/// The sending side: calls to other members, over HTTP or, when the node gave it a
/// [`MemberLink`] and the member has a WebRTC route, over a DataConnection (the
/// [`LinkPolicy`] decides).
pub struct HttpTransport {
    /// This sender's id ([`OPERATOR`] for a tool).
    from: NodeId,
    http: reqwest::Client,
    key: Arc<RpcKey>,
    /// Where each member lives (learned from the membership, or set).
    book: Mutex<HashMap<NodeId, NodeAddr>>,
    /// How long one call may take.
    timeout: Duration,
    /// The node's WebRTC links, once it has set them ([`HttpTransport::set_link`]).
    link: std::sync::OnceLock<(Arc<dyn MemberLink>, LinkPolicy)>,
    /// Calls answered over WebRTC, over WebSocket links and over HTTP.
    answered: [std::sync::atomic::AtomicU64; 3],
}

impl std::fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport for member `from` (or [`OPERATOR`]) over `http`, signing with `key`; each
    /// call is bounded by `timeout`.
    pub fn new(from: NodeId, http: reqwest::Client, key: Arc<RpcKey>, timeout: Duration) -> Self {
        Self {
            from,
            http,
            key,
            book: Mutex::new(HashMap::new()),
            timeout,
            link: std::sync::OnceLock::new(),
            answered: Default::default(),
        }
    }

    /// Carries calls over `link` from now on, as `policy` says (set once; later calls are
    /// ignored). Without it every call goes over HTTP.
    pub fn set_link(&self, link: Arc<dyn MemberLink>, policy: LinkPolicy) {
        let _ = self.link.set((link, policy));
    }

    /// Calls answered so far, by path.
    pub fn answered(&self) -> CallCounts {
        use std::sync::atomic::Ordering::Relaxed;
        CallCounts {
            webrtc: self.answered[0].load(Relaxed),
            websocket: self.answered[1].load(Relaxed),
            http: self.answered[2].load(Relaxed),
        }
    }

    /// Records that member `id` lives at `addr` (a base URL), keeping its WebRTC routes.
    pub fn set_addr(&self, id: NodeId, addr: &str) {
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .addr = addr.trim_end_matches('/').to_owned();
    }

    /// Records all of member `id`'s routes.
    pub fn set_routes(&self, id: NodeId, routes: &NodeAddr) {
        let mut routes = routes.clone();
        routes.addr = routes.addr.trim_end_matches('/').to_owned();
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, routes);
    }

    /// Where member `id` takes HTTP calls, if known.
    pub fn addr(&self, id: NodeId) -> Option<String> {
        self.routes(id).map(|r| r.addr).filter(|a| !a.is_empty())
    }

    /// All of member `id`'s routes, if known.
    pub fn routes(&self, id: NodeId) -> Option<NodeAddr> {
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Sends `call` with `req` to member `to` and decodes its answer.
    ///
    /// # Errors
    /// [`CallError`]: unreachable, an HTTP error status, an answer that does not decode, or no
    /// address for `to`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        to: NodeId,
        call: Call,
        req: &Req,
    ) -> Result<Resp, CallError> {
        let body = serde_json::to_vec(req).map_err(|e| CallError::Decode {
            to,
            detail: format!("request: {e}"),
        })?;
        let answer = self
            .send(to, call, body, "application/json", self.timeout)
            .await?;
        serde_json::from_slice(&answer).map_err(|e| CallError::Decode {
            to,
            detail: e.to_string(),
        })
    }

    /// Sends `body` (already encoded, of `content_type`) as `call` to member `to`, signed;
    /// returns the body of a 200 answer. With a [`MemberLink`]: over WebRTC when the member
    /// has a route and its link is open (or the policy is [`LinkPolicy::Webrtc`]), else over
    /// the WebSocket link to its base URL; as an HTTP `POST` with [`LinkPolicy::Http`] or
    /// without a link.
    async fn send(
        &self,
        to: NodeId,
        call: Call,
        body: Vec<u8>,
        content_type: &'static str,
        timeout: Duration,
    ) -> Result<bytes::Bytes, CallError> {
        use std::sync::atomic::Ordering::Relaxed;
        let routes = self.routes(to).ok_or(CallError::NoAddress(to))?;
        let ts = system_now_ms();
        let mac = self.key.mac(call, self.from, to, ts, &body);
        let body = bytes::Bytes::from(body);
        let answered = |status: u16, bytes: bytes::Bytes| {
            if status != 200 {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
                return Err(CallError::Status {
                    to,
                    status,
                    body: text,
                });
            }
            Ok(bytes)
        };
        let use_link = self
            .link
            .get()
            .filter(|(_, policy)| *policy != LinkPolicy::Http && !routes.rtc.is_empty());
        let env = || Envelope {
            call,
            from: self.from,
            to,
            ts,
            mac: mac.clone(),
            body: body.clone(),
        };
        let unreachable_at = |e: LinkError| CallError::Unreachable {
            to,
            addr: routes.to_string(),
            detail: e.to_string(),
        };
        if let Some((link, policy)) = use_link {
            // Without a base URL there is nothing to fall back to: wait for the link.
            let wait = *policy == LinkPolicy::Webrtc || routes.addr.is_empty();
            match link
                .call(LinkPath::Rtc(&routes.rtc), &env(), timeout, wait)
                .await
            {
                Ok((status, bytes)) => {
                    self.answered[0].fetch_add(1, Relaxed);
                    return answered(status, bytes);
                }
                Err(LinkError::NotUp | LinkError::Failed(_)) if !wait => {}
                Err(e) => return Err(unreachable_at(e)),
            }
        }
        if let Some((link, LinkPolicy::Auto)) = self.link.get()
            && !routes.addr.is_empty()
        {
            return match link
                .call(LinkPath::Ws(&routes.addr), &env(), timeout, true)
                .await
            {
                Ok((status, bytes)) => {
                    self.answered[1].fetch_add(1, Relaxed);
                    answered(status, bytes)
                }
                Err(e) => Err(unreachable_at(e)),
            };
        }
        if routes.addr.is_empty() {
            return Err(CallError::NoAddress(to));
        }
        let addr = routes.addr;
        let unreachable = |e: reqwest::Error| CallError::Unreachable {
            to,
            addr: addr.clone(),
            detail: e.to_string(),
        };
        let resp = self
            .http
            .post(format!("{addr}{PATH_PREFIX}{}", call.name()))
            .timeout(timeout)
            .header(HEADER_FROM, self.from.to_string())
            .header(HEADER_TO, to.to_string())
            .header(HEADER_TS, ts.to_string())
            .header(HEADER_MAC, mac)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(unreachable)?;
        self.answered[2].fetch_add(1, Relaxed);
        answered(status, bytes)
    }

    /// A Raft RPC: the remote Raft's own result, or an error openraft understands.
    async fn raft_call<Req: Serialize, Resp: DeserializeOwned, E>(
        &self,
        to: NodeId,
        call: Call,
        req: &Req,
    ) -> Result<Resp, RpcError<E>>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<Resp, RaftError<NodeId, E>> = self
            .call(to, call, req)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        answer.map_err(|e| remote(to, e))
    }
}

#[async_trait::async_trait]
impl Transport for HttpTransport {
    fn learn(&self, to: NodeId, node: &NodeAddr) {
        self.set_routes(to, node);
    }

    async fn append_entries(
        &self,
        _from: NodeId,
        to: NodeId,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.raft_call(to, Call::Append, &rpc).await
    }

    async fn install_snapshot(
        &self,
        _from: NodeId,
        to: NodeId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        // The chunk's bytes travel raw after a JSON header, not as openraft's JSON array.
        let body = encode_chunk(&rpc);
        let answer = self
            .send(
                to,
                Call::Snapshot,
                body,
                "application/octet-stream",
                self.timeout.max(SNAPSHOT_CALL_TIMEOUT),
            )
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let answer: Result<
            InstallSnapshotResponse<NodeId>,
            RaftError<NodeId, InstallSnapshotError>,
        > = serde_json::from_slice(&answer)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        answer.map_err(|e| remote(to, e))
    }

    async fn vote(
        &self,
        _from: NodeId,
        to: NodeId,
        rpc: VoteRequest<NodeId>,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.raft_call(to, Call::Vote, &rpc).await
    }
}

/// An answer of [`ReplicaService::handle`]: an HTTP status and a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Vec<u8>,
}

impl Answer {
    fn json<T: Serialize>(value: &T) -> Answer {
        match serde_json::to_vec(value) {
            Ok(body) => Answer { status: 200, body },
            Err(e) => Answer::error(500, &format!("cannot encode the answer: {e}")),
        }
    }

    /// 413: the body is over [`MAX_BODY_BYTES`] (or was cut off before its end).
    pub fn too_large() -> Answer {
        Answer::error(413, "body too large")
    }

    fn error(status: u16, message: &str) -> Answer {
        Answer {
            status,
            body: serde_json::to_vec(&serde_json::json!({ "error": message })).unwrap_or_default(),
        }
    }
}

/// A request's headers, checked by [`ReplicaService::check_headers`] (all but the MAC).
#[derive(Debug, Clone)]
pub struct Checked {
    call: Call,
    from: NodeId,
    to: NodeId,
    ts: u64,
    mac: String,
}

/// The receiving side: authenticates a call and runs it on this member.
#[derive(Clone)]
pub struct ReplicaService {
    replica: Replica,
    key: Arc<RpcKey>,
    /// Calls to other members (forwarding to the leader).
    transport: Arc<HttpTransport>,
    /// The clock the timestamp is checked against.
    now_ms: fn() -> u64,
    /// The snapshot being received, checked chunk by chunk.
    chunks: Arc<Mutex<ChunkCheck>>,
    /// Refused calls by source address: an address refused too often gets `429`.
    refusals: Arc<Mutex<RefusalLimit>>,
}

impl std::fmt::Debug for ReplicaService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaService")
            .field("member", &self.replica.id())
            .finish_non_exhaustive()
    }
}

impl ReplicaService {
    /// The service of `replica`, checking calls with `key` and forwarding through
    /// `transport` (the same one the member's Raft sends through).
    pub fn new(replica: Replica, key: Arc<RpcKey>, transport: Arc<HttpTransport>) -> Self {
        Self {
            replica,
            key,
            transport,
            now_ms: system_now_ms,
            chunks: Arc::new(Mutex::new(ChunkCheck::new())),
            refusals: Arc::new(Mutex::new(RefusalLimit::default())),
        }
    }

    /// The same service with another clock (tests of the timestamp check).
    pub fn with_clock(mut self, now_ms: fn() -> u64) -> Self {
        self.now_ms = now_ms;
        self
    }

    /// The same service with another refusal limit (tests).
    pub fn with_refusal_limit(mut self, limit: RefusalLimit) -> Self {
        self.refusals = Arc::new(Mutex::new(limit));
        self
    }

    /// Whether a call from `ip` may be looked at: `Err(429)` when the address was refused
    /// too often lately ([`RefusalLimit`]). Call first, before the headers. An unknown
    /// address (`None`) is never limited.
    ///
    /// # Errors
    /// The `429` answer to send.
    pub fn admit(&self, ip: Option<std::net::IpAddr>) -> Result<(), Answer> {
        let Some(ip) = ip else { return Ok(()) };
        let admitted = self
            .refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admits(ip, std::time::Instant::now());
        if admitted {
            Ok(())
        } else {
            Err(Answer::error(
                429,
                "too many refused requests from this address; retry later",
            ))
        }
    }

    /// Counts `answer` against `ip` when it is a refusal (400, 401, 404, 413, 421).
    pub fn count(&self, ip: Option<std::net::IpAddr>, answer: &Answer) {
        let Some(ip) = ip else { return };
        if matches!(answer.status, 400 | 401 | 404 | 413 | 421) {
            tracing::debug!(member = self.replica.id(), %ip, status = answer.status, "replica: call refused");
            self.refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .refused(ip, std::time::Instant::now());
        }
    }

    /// [`ReplicaService::handle`] for a call from `ip`: `429` when it was refused too often,
    /// and a refusal counted against it.
    pub async fn handle_from(
        &self,
        ip: Option<std::net::IpAddr>,
        name: &str,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
    ) -> Answer {
        if let Err(answer) = self.admit(ip) {
            return answer;
        }
        let answer = self.handle(name, header, body).await;
        self.count(ip, &answer);
        answer
    }

    /// The member this service runs on.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Handles the call named `name` with the request's `header` values and `body`.
    pub async fn handle(
        &self,
        name: &str,
        header: impl Fn(&str) -> Option<String>,
        body: &[u8],
    ) -> Answer {
        match self.check_headers(name, &header) {
            Ok(checked) => self.handle_checked(checked, body).await,
            Err(answer) => answer,
        }
    }

    /// Handles a call that came over a member link (a DataConnection): the same checks as an
    /// HTTP call's, on the values its frame carried.
    pub async fn handle_received(&self, c: &super::ReceivedCall) -> Answer {
        let header = |name: &str| match name {
            HEADER_FROM => Some(c.from.to_string()),
            HEADER_TO => Some(c.to.to_string()),
            HEADER_TS => Some(c.ts.to_string()),
            HEADER_MAC => Some(c.mac.clone()),
            _ => None,
        };
        self.handle(&c.call, header, &c.body).await
    }

    /// Handles a call whose headers [`ReplicaService::check_headers`] accepted: checks the
    /// body's size and the MAC, then runs it.
    pub async fn handle_checked(&self, checked: Checked, body: &[u8]) -> Answer {
        let Checked {
            call,
            from,
            to,
            ts,
            mac,
        } = checked;
        if body.len() > MAX_BODY_BYTES {
            return Answer::too_large();
        }
        if !self.key.verify(call, from, to, ts, body, &mac) {
            return Answer::error(401, "bad MAC");
        }
        // A call a member forwarded is not forwarded again (one hop at most); an operator's,
        // or a joining member's, is. Asked only by the calls that may forward (not on every
        // heartbeat).
        let may_forward = || !self.is_member(from);
        match call {
            Call::Append => {
                self.raft(body, |r: AppendEntriesRequest<TypeConfig>| async move {
                    self.replica.raft().append_entries(r).await
                })
                .await
            }
            Call::Snapshot => self.snapshot_chunk(from, body).await,
            Call::Vote => {
                self.raft(body, |r: VoteRequest<NodeId>| async move {
                    self.replica.raft().vote(r).await
                })
                .await
            }
            Call::Publish => match decode::<PublishRequest>(body) {
                Ok(r) => Answer::json(&self.publish(r, may_forward()).await),
                Err(a) => a,
            },
            Call::History => match decode::<HistoryRequest>(body) {
                Ok(r) => Answer::json(&Outcome::<Vec<Message>>::Ok(
                    self.replica.history_after(&r.room, r.since, r.limit),
                )),
                Err(a) => a,
            },
            Call::Status => Answer::json(&Outcome::Ok(status(&self.replica))),
            Call::Join => match decode::<JoinRequest>(body) {
                Ok(r) => Answer::json(&self.join(r, may_forward()).await),
                Err(a) => a,
            },
            Call::Remove => match decode::<RemoveRequest>(body) {
                Ok(r) => Answer::json(&self.remove(r, may_forward()).await),
                Err(a) => a,
            },
        }
    }

    /// Checks what can be checked before the body is read — the call exists, the
    /// authentication headers are there, the timestamp is within [`MAX_CLOCK_SKEW`] of this
    /// member's clock, the request is for this member — so that a server reads the body (up to
    /// [`MAX_BODY_BYTES`]) only of a request that may be genuine. The MAC, which covers the body,
    /// is checked by [`ReplicaService::handle`].
    ///
    /// # Errors
    /// The answer to send instead: 404, 401 or 421.
    pub fn check_headers(
        &self,
        name: &str,
        header: &impl Fn(&str) -> Option<String>,
    ) -> Result<Checked, Answer> {
        let call = Call::from_name(name).ok_or_else(|| Answer::error(404, "no such call"))?;
        let num = |h: &str| header(h).and_then(|v| v.trim().parse::<u64>().ok());
        let (Some(from), Some(to), Some(ts), Some(mac)) = (
            num(HEADER_FROM),
            num(HEADER_TO),
            num(HEADER_TS),
            header(HEADER_MAC),
        ) else {
            return Err(Answer::error(
                401,
                "missing or malformed authentication headers",
            ));
        };
        let skew = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
        if (self.now_ms)().abs_diff(ts) > skew {
            return Err(Answer::error(
                401,
                "timestamp too far from this member's clock",
            ));
        }
        if to != self.replica.id() {
            return Err(Answer::error(421, "this request is for another member"));
        }
        Ok(Checked {
            call,
            from,
            to,
            ts,
            mac,
        })
    }

    /// One chunk of a snapshot ([`decode_chunk`]'s envelope): checked in order by
    /// [`ChunkCheck`], so that the last chunk of a snapshot whose SHA-256 does not verify never
    /// reaches openraft (which would install it). A refused chunk is answered with openraft's
    /// `SnapshotMismatch` (expecting offset 0): the sender starts the snapshot over.
    async fn snapshot_chunk(&self, from: NodeId, body: &[u8]) -> Answer {
        let req = match decode_chunk(body) {
            Ok(req) => req,
            Err(e) => return Answer::error(400, &e.to_string()),
        };
        let checked = self.chunks.lock().unwrap_or_else(|p| p.into_inner()).check(
            &req.meta.snapshot_id,
            req.offset,
            &req.data,
            req.done,
        );
        if let Err(e) = checked {
            tracing::warn!(
                member = self.replica.id(),
                from,
                snapshot = %req.meta.snapshot_id,
                offset = req.offset,
                error = %e,
                "replica: snapshot chunk refused; the sender starts over"
            );
            let id = req.meta.snapshot_id.clone();
            let refused: Result<InstallSnapshotResponse<NodeId>, _> =
                Err(RaftError::<NodeId, _>::APIError(
                    InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                        expect: SnapshotSegmentId {
                            id: id.clone(),
                            offset: 0,
                        },
                        got: SnapshotSegmentId {
                            id,
                            offset: req.offset,
                        },
                    }),
                ));
            return Answer::json(&refused);
        }
        Answer::json(&self.replica.raft().install_snapshot(req).await)
    }

    /// Whether `id` is a voter or learner of this member's membership.
    fn is_member(&self, id: NodeId) -> bool {
        id != OPERATOR
            && self
                .replica
                .metrics()
                .membership_config
                .membership()
                .nodes()
                .any(|(n, _)| *n == id)
    }

    /// Runs a Raft RPC and answers with its `Result`, as openraft serialises it.
    async fn raft<Req, Resp, E, F, Fut>(&self, body: &[u8], run: F) -> Answer
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        E: std::error::Error + Serialize,
        F: FnOnce(Req) -> Fut,
        Fut: Future<Output = Result<Resp, RaftError<NodeId, E>>>,
    {
        match decode::<Req>(body) {
            Ok(req) => Answer::json(&run(req).await),
            Err(a) => a,
        }
    }

    /// The leader to forward to, when this member is not it and `may_forward` (a call from a
    /// member is never forwarded again: one hop at most).
    fn forward_target(&self, e: &ReplicaError, may_forward: bool) -> Option<NodeId> {
        match e {
            ReplicaError::ForwardToLeader {
                leader: Some(leader),
                addr,
            } if may_forward && *leader != self.replica.id() => {
                let known = addr.clone().or_else(|| {
                    self.replica
                        .metrics()
                        .membership_config
                        .membership()
                        .get_node(leader)
                        .cloned()
                });
                if let Some(routes) = known {
                    self.transport.set_routes(*leader, &routes);
                }
                Some(*leader)
            }
            _ => None,
        }
    }

    /// A publish from this member's own clients (the node's relay): here when this member
    /// leads, else forwarded once to the leader it knows of.
    pub async fn publish_from_client(&self, r: PublishRequest) -> Outcome<Seq> {
        self.publish(r, true).await
    }

    /// Removes voter `id` (this member leaving the ring, for example): here when this member
    /// leads, else at the leader; a leader that removes itself steps aside first.
    pub async fn remove_member(&self, id: NodeId) -> Outcome<()> {
        self.remove(RemoveRequest { id }, true).await
    }

    /// A publish here, or at the leader.
    async fn publish(&self, r: PublishRequest, may_forward: bool) -> Outcome<Seq> {
        match self
            .replica
            .publish(&r.room, &r.from, &r.id, r.body.clone())
            .await
        {
            Ok(seq) => Outcome::Ok(seq),
            Err(e) => match self.forward_target(&e, may_forward) {
                Some(leader) => self.forwarded(leader, Call::Publish, &r).await,
                None => Outcome::Err(e.into()),
            },
        }
    }

    /// Adds a learner, waits for it to catch up, makes it a voter; or forwards to the leader.
    async fn join(&self, r: JoinRequest, may_forward: bool) -> Outcome<()> {
        if r.id == OPERATOR {
            return Outcome::Err(CallFailure::BadRequest {
                field: "id".into(),
                reason: "member id 0 is reserved".into(),
            });
        }
        let routes_ok = r.rtc.len() <= MAX_RTC_ROUTES
            && r.rtc
                .iter()
                .all(|x| x.peer.len() <= 256 && x.server.len() <= 1024)
            && r.addr.len() <= 1024;
        if !routes_ok {
            return Outcome::Err(CallFailure::BadRequest {
                field: "rtc".into(),
                reason: format!("at most {MAX_RTC_ROUTES} routes of bounded length"),
            });
        }
        let added = self
            .replica
            .add_learner(
                r.id,
                NodeAddr {
                    addr: r.addr.clone(),
                    rtc: r.rtc.clone(),
                },
                true,
            )
            .await;
        let done = match added {
            Ok(()) => {
                self.replica
                    .change_membership(ChangeMembers::Promote([r.id].into()))
                    .await
            }
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => Outcome::Ok(()),
            Err(e) => match self.forward_target(&e, may_forward) {
                Some(leader) => self.forwarded(leader, Call::Join, &r).await,
                None => Outcome::Err(e.into()),
            },
        }
    }

    /// Removes a voter; the leader removing itself first hands leadership over and forwards.
    async fn remove(&self, r: RemoveRequest, may_forward: bool) -> Outcome<()> {
        let me = self.replica.id();
        if r.id == me && self.replica.current_leader() == Some(me) {
            return match self.replica.step_aside(Duration::from_secs(10)).await {
                Ok(leader) => self.forwarded(leader, Call::Remove, &r).await,
                Err(e) => Outcome::Err(e.into()),
            };
        }
        match self
            .replica
            .change_membership(ChangeMembers::Remove([r.id].into()))
            .await
        {
            Ok(()) => Outcome::Ok(()),
            Err(e) => match self.forward_target(&e, may_forward) {
                Some(leader) => self.forwarded(leader, Call::Remove, &r).await,
                None => Outcome::Err(e.into()),
            },
        }
    }

    /// Forwards a call to `leader`; a failure to reach it is a [`CallFailure::NoLeader`].
    async fn forwarded<Req: Serialize, T: DeserializeOwned>(
        &self,
        leader: NodeId,
        call: Call,
        req: &Req,
    ) -> Outcome<T> {
        match self.transport.call(leader, call, req).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::debug!(member = self.replica.id(), leader, error = %e, "replica: forward failed");
                Outcome::Err(CallFailure::NoLeader {
                    leader: Some(leader),
                })
            }
        }
    }
}

/// Decodes a request body, or the 400 answer.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| Answer::error(400, &format!("bad request: {e}")))
}

/// A member's [`Status`] from its metrics.
pub fn status(replica: &Replica) -> Status {
    let m = replica.metrics();
    let membership = m.membership_config.membership();
    let voter_ids: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
    let mut voters = Vec::new();
    let mut learners = Vec::new();
    for (id, node) in membership.nodes() {
        if voter_ids.contains(id) {
            voters.push((*id, node.addr.clone()));
        } else {
            learners.push((*id, node.addr.clone()));
        }
    }
    Status {
        id: replica.id(),
        role: format!("{:?}", m.state).to_lowercase(),
        leader: m.current_leader,
        term: m.current_term,
        last_log: m.last_log_index.unwrap_or(0),
        applied: m.last_applied.map_or(0, |l| l.index),
        voters,
        learners,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::InProcessTransport;

    const NOW: u64 = 1_800_000_000_000;

    fn clock() -> u64 {
        NOW
    }

    async fn service() -> ReplicaService {
        crate::install_crypto_provider();
        let replica = Replica::start(
            7,
            &crate::replica::ReplicaConfig::default(),
            Arc::new(InProcessTransport::new()),
        )
        .await
        .unwrap();
        let key = Arc::new(RpcKey::from_secret(b"the ring's shared secret"));
        let transport = Arc::new(HttpTransport::new(
            7,
            reqwest::Client::new(),
            Arc::clone(&key),
            Duration::from_secs(1),
        ));
        ReplicaService::new(replica, key, transport).with_clock(clock)
    }

    /// The headers of a request signed with `secret`.
    fn signed(
        secret: &[u8],
        call: Call,
        to: NodeId,
        ts: u64,
        body: &[u8],
    ) -> HashMap<&'static str, String> {
        let mac = RpcKey::from_secret(secret).mac(call, OPERATOR, to, ts, body);
        HashMap::from([
            (HEADER_FROM, OPERATOR.to_string()),
            (HEADER_TO, to.to_string()),
            (HEADER_TS, ts.to_string()),
            (HEADER_MAC, mac),
        ])
    }

    async fn ask(
        s: &ReplicaService,
        name: &str,
        headers: &HashMap<&'static str, String>,
        body: &[u8],
    ) -> u16 {
        s.handle(name, |h| headers.get(h).cloned(), body)
            .await
            .status
    }

    #[tokio::test]
    async fn a_call_is_answered_only_when_signed_for_this_member_this_call_and_this_body() {
        let s = service().await;
        let secret = b"the ring's shared secret".as_slice();
        let ok = signed(secret, Call::Status, 7, NOW, b"null");
        let answer = s.handle("status", |h| ok.get(h).cloned(), b"null").await;
        assert_eq!(answer.status, 200);
        let status: Outcome<Status> = serde_json::from_slice(&answer.body).unwrap();
        assert!(matches!(status, Outcome::Ok(Status { id: 7, .. })));

        // Another body, another call, another secret, no headers: 401.
        assert_eq!(ask(&s, "status", &ok, b"{}").await, 401);
        assert_eq!(ask(&s, "history", &ok, b"null").await, 401);
        let other = signed(b"another ring's secret!!", Call::Status, 7, NOW, b"null");
        assert_eq!(ask(&s, "status", &other, b"null").await, 401);
        assert_eq!(ask(&s, "status", &HashMap::new(), b"null").await, 401);
        // A timestamp further than MAX_CLOCK_SKEW from the member's clock: 401; within: 200.
        let skew = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap();
        let late = signed(secret, Call::Status, 7, NOW - skew - 1, b"null");
        assert_eq!(ask(&s, "status", &late, b"null").await, 401);
        let early = signed(secret, Call::Status, 7, NOW + skew + 1, b"null");
        assert_eq!(ask(&s, "status", &early, b"null").await, 401);
        let edge = signed(secret, Call::Status, 7, NOW - skew, b"null");
        assert_eq!(ask(&s, "status", &edge, b"null").await, 200);
        // Signed for member 8: 421.
        let elsewhere = signed(secret, Call::Status, 8, NOW, b"null");
        assert_eq!(ask(&s, "status", &elsewhere, b"null").await, 421);
        // Unknown call: 404; a body that is not the call's request: 400.
        assert_eq!(ask(&s, "nope", &ok, b"null").await, 404);
        let bad = signed(secret, Call::Publish, 7, NOW, b"{\"room\":1}");
        assert_eq!(ask(&s, "publish", &bad, b"{\"room\":1}").await, 400);
        s.replica().shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn requests_that_cannot_be_genuine_are_refused_before_their_body_is_read() {
        let s = service().await;
        let secret = b"the ring's shared secret".as_slice();
        let status = |r: Result<Checked, Answer>| r.map_or_else(|a| a.status, |_| 200);
        let none = HashMap::<&str, String>::new();
        assert_eq!(
            status(s.check_headers("status", &|h| none.get(h).cloned())),
            401
        );
        let skew = u64::try_from(MAX_CLOCK_SKEW.as_millis()).unwrap();
        let stale = signed(secret, Call::Append, 7, NOW - skew - 1, b"");
        assert_eq!(
            status(s.check_headers("append", &|h| stale.get(h).cloned())),
            401
        );
        let other = signed(secret, Call::Append, 8, NOW, b"");
        assert_eq!(
            status(s.check_headers("append", &|h| other.get(h).cloned())),
            421
        );
        assert_eq!(
            status(s.check_headers("nope", &|h| other.get(h).cloned())),
            404
        );
        // Headers that may be genuine pass; the MAC over the body is checked by `handle`.
        let fine = signed(secret, Call::Append, 7, NOW, b"any body");
        assert_eq!(
            status(s.check_headers("append", &|h| fine.get(h).cloned())),
            200
        );
        assert_eq!(ask(&s, "append", &fine, b"another body").await, 401);
        s.replica().shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn an_address_refused_too_often_gets_429_and_signed_calls_are_never_counted() {
        let s = service()
            .await
            .with_refusal_limit(RefusalLimit::new(5.0, 0.0, 16));
        let secret = b"the ring's shared secret".as_slice();
        let flood = Some(std::net::IpAddr::from([127, 0, 0, 2]));
        let member = Some(std::net::IpAddr::from([127, 0, 0, 1]));
        let ok = signed(secret, Call::Status, 7, NOW, b"null");
        let bad = signed(b"not the ring's secret!!", Call::Status, 7, NOW, b"null");
        // Genuine calls from the member's address, many of them: never limited.
        for _ in 0..50 {
            let a = s
                .handle_from(member, "status", |h| ok.get(h).cloned(), b"null")
                .await;
            assert_eq!(a.status, 200);
        }
        // A flood of bad MACs from another address: 401 five times, then 429.
        let mut statuses = Vec::new();
        for _ in 0..8 {
            let a = s
                .handle_from(flood, "status", |h| bad.get(h).cloned(), b"null")
                .await;
            statuses.push(a.status);
        }
        assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429, 429]);
        // Unknown calls and requests for another member count too; the member is still served.
        let a = s
            .handle_from(member, "status", |h| ok.get(h).cloned(), b"null")
            .await;
        assert_eq!(a.status, 200);
        let other = Some(std::net::IpAddr::from([127, 0, 0, 3]));
        for _ in 0..5 {
            assert_eq!(
                s.handle_from(other, "nope", |h| ok.get(h).cloned(), b"null")
                    .await
                    .status,
                404
            );
        }
        assert_eq!(
            s.handle_from(other, "status", |h| ok.get(h).cloned(), b"null")
                .await
                .status,
            429
        );
        s.replica().shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_publish_to_a_member_outside_any_ring_is_refused_as_retryable() {
        let s = service().await;
        let body = serde_json::to_vec(&PublishRequest {
            room: "lobby".into(),
            from: "alice".into(),
            id: "m-1".into(),
            body: serde_json::json!("hi"),
        })
        .unwrap();
        let h = signed(b"the ring's shared secret", Call::Publish, 7, NOW, &body);
        let answer = s.handle("publish", |n| h.get(n).cloned(), &body).await;
        assert_eq!(answer.status, 200);
        let outcome: Outcome<Seq> = serde_json::from_slice(&answer.body).unwrap();
        match outcome {
            Outcome::Err(f) => assert!(f.is_retryable(), "{f:?}"),
            Outcome::Ok(seq) => panic!("acknowledged at {seq} without a ring"),
        }
        s.replica().shutdown().await.unwrap();
    }
}
