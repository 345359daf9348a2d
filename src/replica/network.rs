//! How members reach each other: the [`Transport`] trait (Raft's three RPCs, addressed by
//! member id), [`Network`] (openraft's network factory on top of any transport) and
//! [`InProcessTransport`], the in-memory transport of the tests, which can kill a member or
//! cut one off and heal it.
//!
//! Between processes, [`HttpTransport`](super::HttpTransport) implements [`Transport`] (over HTTP
//! or the node's member links, every call signed with the ring's secret), and
//! [`ReplicaService`](super::ReplicaService) hands each request to the member's
//! [`Replica::raft`](super::Replica::raft).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Raft, RaftNetwork, RaftNetworkFactory};

use super::{NodeAddr, NodeId, TypeConfig};

/// The error of an RPC that may fail in the remote member's Raft (`E`) or on the way.
pub type RpcError<E = openraft::error::Infallible> =
    RPCError<NodeId, NodeAddr, RaftError<NodeId, E>>;

/// How long a member waits before retrying a member it could not reach.
const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(100);

/// Carries Raft's RPCs from one member (`from`) to another (`to`). Errors are openraft's:
/// [`RPCError::Unreachable`] when `to` cannot be reached (openraft backs off and retries),
/// [`RPCError::RemoteError`] when `to`'s Raft refused.
#[async_trait::async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Learns where member `to` lives (openraft hands the member's address over whenever it
    /// opens a link to it). Transports that route by id alone ignore it.
    fn learn(&self, _to: NodeId, _node: &NodeAddr) {}

    /// Log replication and heartbeats.
    async fn append_entries(
        &self,
        from: NodeId,
        to: NodeId,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError>;

    /// One chunk of a snapshot (openraft splits snapshots into
    /// `snapshot_max_chunk_size` chunks and sends them in order).
    async fn install_snapshot(
        &self,
        from: NodeId,
        to: NodeId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>>;

    /// A vote request of a candidate.
    async fn vote(
        &self,
        from: NodeId,
        to: NodeId,
        rpc: VoteRequest<NodeId>,
    ) -> Result<VoteResponse<NodeId>, RpcError>;
}

/// openraft's network factory for one member: every link it creates sends through the same
/// [`Transport`] as `from`.
pub struct Network<T: Transport> {
    /// The member this network belongs to (the sender of every RPC).
    from: NodeId,
    /// The shared transport.
    transport: Arc<T>,
}

impl<T: Transport> Network<T> {
    /// The network of member `from` over `transport`.
    pub fn new(from: NodeId, transport: Arc<T>) -> Self {
        Self { from, transport }
    }
}

impl<T: Transport> RaftNetworkFactory<TypeConfig> for Network<T> {
    type Network = NetworkLink<T>;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddr) -> Self::Network {
        self.transport.learn(target, node);
        NetworkLink {
            from: self.from,
            to: target,
            transport: Arc::clone(&self.transport),
        }
    }
}

/// One member's link to another: openraft's `RaftNetwork` over a [`Transport`].
pub struct NetworkLink<T: Transport> {
    /// The sender.
    from: NodeId,
    /// The receiver.
    to: NodeId,
    /// The shared transport.
    transport: Arc<T>,
}

impl<T: Transport> RaftNetwork<TypeConfig> for NetworkLink<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        self.transport.append_entries(self.from, self.to, rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        self.transport
            .install_snapshot(self.from, self.to, rpc)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        self.transport.vote(self.from, self.to, rpc).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(UNREACHABLE_BACKOFF))
    }
}

/// Why the in-process transport did not deliver an RPC.
#[derive(Debug, thiserror::Error)]
#[error("member {to} is unreachable from {from}: {why}")]
struct LinkDown {
    /// The sender.
    from: NodeId,
    /// The receiver.
    to: NodeId,
    /// Killed, cut off, or never registered.
    why: &'static str,
}

/// Who is reachable.
#[derive(Default)]
struct Router {
    /// Every registered member's Raft, by id.
    members: HashMap<NodeId, Raft<TypeConfig>>,
    /// Members cut off from every other member (both directions) until healed.
    isolated: HashSet<NodeId>,
}

/// The in-memory transport: an RPC is a direct call on the receiver's Raft. Tests kill a
/// member ([`InProcessTransport::kill`]: it is gone for good) or cut it off from all others
/// ([`InProcessTransport::isolate`], undone by [`InProcessTransport::heal`]); an RPC from or to
/// such a member fails as unreachable. Cheap to clone: clones share the routing.
#[derive(Clone, Default)]
pub struct InProcessTransport {
    /// Shared by every member's network.
    router: Arc<Mutex<Router>>,
}

impl InProcessTransport {
    /// A transport with no members.
    pub fn new() -> Self {
        Self::default()
    }

    fn router(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `raft` reachable as member `id` (replacing an earlier registration of `id`).
    pub fn register(&self, id: NodeId, raft: Raft<TypeConfig>) {
        let mut r = self.router();
        r.members.insert(id, raft);
        r.isolated.remove(&id);
    }

    /// Removes member `id` for good: every RPC to it fails from now on. (Stopping its Raft is
    /// the caller's: [`Replica::shutdown`](super::Replica::shutdown).)
    pub fn kill(&self, id: NodeId) {
        self.router().members.remove(&id);
        tracing::info!(member = id, "replica transport: killed");
    }

    /// Cuts member `id` off from every other member, in both directions.
    pub fn isolate(&self, id: NodeId) {
        self.router().isolated.insert(id);
        tracing::info!(member = id, "replica transport: isolated");
    }

    /// Reconnects a member cut off by [`InProcessTransport::isolate`].
    pub fn heal(&self, id: NodeId) {
        self.router().isolated.remove(&id);
        tracing::info!(member = id, "replica transport: healed");
    }

    /// The receiver's Raft, if `from` may reach `to` now.
    fn route(&self, from: NodeId, to: NodeId) -> Result<Raft<TypeConfig>, LinkDown> {
        let r = self.router();
        let down = |why| LinkDown { from, to, why };
        if r.isolated.contains(&from) || r.isolated.contains(&to) {
            return Err(down("cut off"));
        }
        if !r.members.contains_key(&from) {
            return Err(down("sender not registered or killed"));
        }
        r.members
            .get(&to)
            .cloned()
            .ok_or_else(|| down("not registered or killed"))
    }
}

/// A link that is down, as an RPC error (openraft backs off and retries).
fn unreachable<E: std::error::Error>(down: LinkDown) -> RpcError<E> {
    RPCError::Unreachable(Unreachable::new(&down))
}

/// A remote Raft's refusal, as an RPC error.
pub(super) fn remote<E: std::error::Error>(to: NodeId, e: RaftError<NodeId, E>) -> RpcError<E> {
    match e {
        // The receiver is shutting down: to the sender it is as good as unreachable.
        RaftError::Fatal(f) => RPCError::Network(NetworkError::new(&f)),
        e => RPCError::RemoteError(RemoteError::new(to, e)),
    }
}

#[async_trait::async_trait]
impl Transport for InProcessTransport {
    async fn append_entries(
        &self,
        from: NodeId,
        to: NodeId,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcError> {
        let raft = self.route(from, to).map_err(unreachable)?;
        let resp = raft.append_entries(rpc).await.map_err(|e| remote(to, e))?;
        // A member cut off while the call was in flight does not get the answer either.
        self.route(from, to).map_err(unreachable)?;
        Ok(resp)
    }

    async fn install_snapshot(
        &self,
        from: NodeId,
        to: NodeId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcError<InstallSnapshotError>> {
        let raft = self.route(from, to).map_err(unreachable)?;
        let resp = raft
            .install_snapshot(rpc)
            .await
            .map_err(|e| remote(to, e))?;
        // A member cut off while the call was in flight does not get the answer either.
        self.route(from, to).map_err(unreachable)?;
        Ok(resp)
    }

    async fn vote(
        &self,
        from: NodeId,
        to: NodeId,
        rpc: VoteRequest<NodeId>,
    ) -> Result<VoteResponse<NodeId>, RpcError> {
        let raft = self.route(from, to).map_err(unreachable)?;
        let resp = raft.vote(rpc).await.map_err(|e| remote(to, e))?;
        // A member cut off while the call was in flight does not get the answer either.
        self.route(from, to).map_err(unreachable)?;
        Ok(resp)
    }
}
