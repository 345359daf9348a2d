//! `ouroboros replica`: one member of a replicated relay log as its own process, serving the
//! members' HTTP calls (`replica::ReplicaService`) on its own port. The building block of the
//! replicated ring (issue 16): today it stores and orders messages with a majority; the
//! relay's WebSocket and DataChannel clients do not reach it yet (`protocol/replication.md`).
//!
//! A member either starts a new ring as its only voter (`--bootstrap`) or joins a running one
//! through any of its members (`--join ID=URL`, repeatable): the leader adds it as a learner,
//! waits for it to catch up and makes it a voter. Removing a member is a `remove` call to any
//! member (`protocol/replication.md`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::args::{ReplicationArgs, parse_contact};
use super::driver::{Proposer, RelayHandle};
use crate::handoff::{SECRET_ENV, Secret};
use crate::relay::{Proposal, ProposalFailure, Relay};
use crate::replica::{
    Answer, Applied, CallFailure, HttpTransport, JoinRequest, MAX_BODY_BYTES, NodeAddr, NodeId,
    OPERATOR, Outcome, PATH_PREFIX, PublishRequest, Replica, ReplicaConfig, ReplicaService, RpcKey,
};

/// `ouroboros replica`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplicaArgs {
    /// This member's id: 1 or more, never reused in one ring (a restarted member is a new one).
    #[arg(long)]
    pub id: NodeId,
    /// The address to serve the members' calls on; calls to the other members leave from its
    /// IP address too, unless it is 0.0.0.0 or [::].
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The base URL the other members reach this one at (default: `http://` + the bound
    /// address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Start a new ring with this member as its only voter.
    #[arg(long, conflicts_with = "join")]
    pub bootstrap: bool,
    /// Join a running ring through this member (`ID=URL`); repeat it to name several, tried
    /// in turn until one answers.
    #[arg(long, value_parser = parse_contact)]
    pub join: Vec<(NodeId, String)>,
    /// How long to keep trying to join before giving up.
    #[arg(long, default_value = "60s", value_parser = crate::lifecycle::parse_duration)]
    pub join_timeout: Duration,
    /// The leader's heartbeat interval. openraft also bounds each replication call by it, so
    /// it must exceed the round trip between members under load.
    #[arg(long, default_value = "250ms", value_parser = crate::lifecycle::parse_duration)]
    pub heartbeat: Duration,
    /// The shortest election timeout (the longest is twice it).
    #[arg(long, default_value = "1s", value_parser = crate::lifecycle::parse_duration)]
    pub election_timeout: Duration,
    /// How long a publish waits to be committed on a majority.
    #[arg(long, default_value = "5s", value_parser = crate::lifecycle::parse_duration)]
    pub write_timeout: Duration,
}

/// The axum routes of a member's calls: `POST /replica/v1/{call}`, and the WebSocket member
/// link `GET /replica/v1/link`.
pub fn routes(service: ReplicaService) -> Router {
    let links = super::member_link::LinkServer::new(Some(service.clone()));
    Router::new()
        .route(&format!("{PATH_PREFIX}{{call}}"), post(handle))
        .with_state(service.clone())
        .merge(
            Router::new()
                .route(crate::replica::LINK_WS_PATH, axum::routing::get(link_ws))
                .with_state((service, links)),
        )
}

/// `GET /replica/v1/link`: a member link over a WebSocket (an address refused too often gets
/// 429 before the upgrade).
async fn link_ws(
    State((service, links)): State<(ReplicaService, super::member_link::LinkServer)>,
    node: Option<axum::Extension<ConnectInfo<crate::signaling::RemoteAddr>>>,
    direct: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Response {
    let ip = caller_ip(node, direct);
    if let Err(answer) = service.admit(ip) {
        return respond(answer);
    }
    let Ok(upgrade) = upgrade else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "the replicated ring's member link: a WebSocket (protocol/replication.md)\n",
        )
            .into_response();
    };
    upgrade
        .max_message_size(super::handoff_ws::HANDOFF_WS_MAX_MESSAGE)
        .on_upgrade(move |ws| async move {
            let link = super::handoff_ws::server_link(
                ws,
                String::new(),
                serde_json::Value::Null,
                ip,
                None,
            );
            links.accept_ws(link, ip);
        })
}

async fn handle(
    State(service): State<ReplicaService>,
    Path(call): Path<String>,
    node: Option<axum::Extension<ConnectInfo<crate::signaling::RemoteAddr>>>,
    direct: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Refused calls are counted by source address; one refused too often gets 429 at once.
    let ip = caller_ip(node, direct);
    if let Err(answer) = service.admit(ip) {
        return respond(answer);
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // The headers first: the body (up to 32 MiB) is read only for a request that may be genuine.
    let answer = match service.check_headers(&call, &header) {
        Err(answer) => answer,
        Ok(checked) => match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
            Ok(body) => service.handle_checked(checked, &body).await,
            Err(_) => Answer::too_large(),
        },
    };
    service.count(ip, &answer);
    respond(answer)
}

/// The caller's address: as the node's listener reports it (behind a trusted proxy, the
/// forwarded one), or the TCP peer's for `ouroboros replica`.
fn caller_ip(
    node: Option<axum::Extension<ConnectInfo<crate::signaling::RemoteAddr>>>,
    direct: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
) -> Option<std::net::IpAddr> {
    node.map(|n| n.0.0.0.ip())
        .or_else(|| direct.map(|d| d.0.0.ip()))
}

fn respond(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        answer.body,
    )
        .into_response()
}

/// A member's Raft timing, from its flags.
struct Timing {
    heartbeat: Duration,
    election_timeout: Duration,
    write_timeout: Duration,
}

/// Starts member `id`: its HTTP transport (calls leave from `bind` unless it is a wildcard
/// address), its Raft member and the service that answers the other members' calls.
async fn start_member(
    id: NodeId,
    key: Arc<RpcKey>,
    bind: std::net::IpAddr,
    timing: &Timing,
) -> anyhow::Result<(Replica, ReplicaService, Arc<HttpTransport>)> {
    let mut http = crate::tunnel::node_http_client_builder();
    if !bind.is_unspecified() {
        http = http.local_address(bind);
    }
    let http = http.build().context("HTTP client")?;
    let transport = Arc::new(HttpTransport::new(
        id,
        http,
        Arc::clone(&key),
        Duration::from_secs(10),
    ));
    let config = ReplicaConfig {
        heartbeat: timing.heartbeat,
        election_timeout_min: timing.election_timeout,
        election_timeout_max: timing.election_timeout * 2,
        write_timeout: timing.write_timeout,
        ..ReplicaConfig::default()
    };
    let replica = Replica::start(id, &config, Arc::clone(&transport)).await?;
    let service = ReplicaService::new(replica.clone(), key, Arc::clone(&transport));
    Ok((replica, service, transport))
}

/// Runs one member until `shutdown` resolves.
///
/// # Errors
/// No secret in [`SECRET_ENV`], a port that cannot be bound, a configuration openraft
/// refuses, or a join that did not succeed within `--join-timeout`.
pub async fn run(
    args: ReplicaArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if args.id == OPERATOR {
        bail!("--id 0 is reserved (an operator's calls); use 1 or more");
    }
    if !args.bootstrap && args.join.is_empty() {
        bail!("give --bootstrap (a new ring) or --join ID=URL (a running one)");
    }
    let secret = Secret::from_env()?
        .with_context(|| format!("{SECRET_ENV} must hold the ring's shared secret"))?;
    let key = Arc::new(RpcKey::from_secret(secret.expose()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    let bound = listener.local_addr()?;
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"));
    // Calls to the other members leave from the address this member listens on (when it is
    // one address), so that they come from where the membership says this member is.
    let timing = Timing {
        heartbeat: args.heartbeat,
        election_timeout: args.election_timeout,
        write_timeout: args.write_timeout,
    };
    let (replica, service, transport) = start_member(args.id, key, bound.ip(), &timing).await?;
    let app = routes(service);
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    });
    // The line tests and scripts wait for (stdout, one line).
    println!("replica member {} listening on {advertise}", args.id);
    if args.bootstrap {
        replica
            .initialize([(args.id, NodeAddr::http(advertise.clone()))].into())
            .await?;
        println!("replica member {} bootstrapped a new ring", args.id);
    } else {
        join(
            args.id,
            &args.join,
            args.join_timeout,
            &transport,
            &NodeAddr::http(advertise.clone()),
        )
        .await?;
        println!("replica member {} joined as a voter", args.id);
    }
    server.await.context("server task")??;
    if let Err(e) = replica.shutdown().await {
        tracing::warn!(error = %e, "replica: shutdown");
    }
    Ok(())
}

/// Asks the contacts in turn to add this member until one succeeds or `--join-timeout` ends.
async fn join(
    me: NodeId,
    contacts: &[(NodeId, String)],
    join_timeout: Duration,
    transport: &HttpTransport,
    advertise: &NodeAddr,
) -> anyhow::Result<()> {
    let request = JoinRequest {
        id: me,
        addr: advertise.addr.clone(),
        rtc: advertise.rtc.clone(),
    };
    let contacts = NodeAddr::from_contacts(contacts).map_err(anyhow::Error::msg)?;
    for (id, routes) in &contacts {
        transport.set_routes(*id, routes);
    }
    let deadline = tokio::time::Instant::now() + join_timeout;
    let mut last = String::from("no contact answered");
    while tokio::time::Instant::now() < deadline {
        for (id, _) in &contacts {
            match transport
                .call::<_, Outcome<()>>(*id, crate::replica::Call::Join, &request)
                .await
            {
                Ok(Outcome::Ok(())) => return Ok(()),
                Ok(Outcome::Err(f @ CallFailure::BadRequest { .. })) => {
                    bail!("join refused: {f:?}")
                }
                Ok(Outcome::Err(f)) => last = format!("member {id}: {f:?}"),
                Err(e) => last = e.to_string(),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("could not join within {join_timeout:?}: {last}")
}

// ----- a node of a replicated ring (`ouroboros node --replicas N`) ------------------------

/// Applied events the relay task takes in one go.
const FEED_BATCH: usize = 512;
/// Applied events waiting for the relay task before applying waits.
const FEED_CAPACITY: usize = 8192;

/// The replicated-log member inside `ouroboros node --replicas N`: its Raft member, the
/// members' calls it serves on the node's own HTTP port (`POST /replica/v1/{call}`), and the
/// bridge to the node's relay (publishes proposed to the log, committed entries fanned out).
#[derive(Debug, Clone)]
pub struct NodeMember {
    replica: Replica,
    service: ReplicaService,
    transport: Arc<HttpTransport>,
    write_timeout: Duration,
    /// The base URL given to the ring ([`NodeMember::enter`]).
    advertised: Arc<std::sync::Mutex<String>>,
    /// The relay [`NodeMember::feed`] feeds: a new ring's retention is its store budget.
    relay: Arc<std::sync::Mutex<Option<RelayHandle>>>,
}

/// The voters of `m`'s membership, with their base URLs.
fn voters_of(m: &openraft::RaftMetrics<NodeId, NodeAddr>) -> Vec<(NodeId, String)> {
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .filter(|(id, _)| voters.contains(id))
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect()
}

/// The first of `ids` that is a voter of a membership that is applied (so committed) and not
/// joint.
fn settled_voter(m: &openraft::RaftMetrics<NodeId, NodeAddr>, ids: &[NodeId]) -> Option<NodeId> {
    let applied = m.last_applied.map_or(0, |l| l.index);
    let at = m.membership_config.log_id().map_or(0, |l| l.index);
    let membership = m.membership_config.membership();
    if at > applied || membership.get_joint_config().len() != 1 {
        return None;
    }
    membership.voter_ids().find(|v| ids.contains(v))
}

/// The discovery record's view of the voters: base URL and relay WebSocket of each.
fn replica_nodes(voters: &[(NodeId, String)]) -> Vec<crate::discovery::ReplicaNode> {
    voters
        .iter()
        .map(|(id, url)| crate::discovery::ReplicaNode {
            id: *id,
            url: url.clone(),
            relay_ws: format!(
                "{}{}",
                url.replacen("http", "ws", 1),
                crate::discovery::RELAY_WS_PATH
            ),
        })
        .collect()
}

impl NodeMember {
    /// Starts member `args.replica_id` (not yet in a ring: see [`NodeMember::enter`]); its calls
    /// to the other members leave from `bind` unless it is a wildcard address.
    ///
    /// # Errors
    /// A reserved id, an HTTP client that cannot be built, or a configuration openraft refuses.
    pub async fn start(
        args: &ReplicationArgs,
        secret: &Secret,
        bind: std::net::IpAddr,
    ) -> anyhow::Result<NodeMember> {
        if args.replica_id == OPERATOR {
            bail!("--replica-id 0 is reserved (an operator's calls); use 1 or more");
        }
        let key = Arc::new(RpcKey::from_secret(secret.expose()));
        let timing = Timing {
            heartbeat: args.replica_heartbeat,
            election_timeout: args.replica_election_timeout,
            write_timeout: args.replica_write_timeout,
        };
        let (replica, service, transport) =
            start_member(args.replica_id, key, bind, &timing).await?;
        Ok(NodeMember {
            replica,
            service,
            transport,
            write_timeout: args.replica_write_timeout,
            advertised: Arc::default(),
            relay: Arc::default(),
        })
    }

    /// The base URL this member told the ring (empty before [`NodeMember::enter`]).
    pub fn advertised(&self) -> String {
        self.advertised
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Waits until the ring has `count` voters; returns them with their base URLs.
    ///
    /// # Errors
    /// Not within `within`.
    pub async fn wait_for_voters(
        &self,
        count: usize,
        within: Duration,
    ) -> anyhow::Result<Vec<(NodeId, String)>> {
        let m = self
            .replica
            .wait_for(within, "all voters", move |m| {
                m.membership_config.membership().voter_ids().count() >= count
            })
            .await?;
        Ok(voters_of(&m))
    }

    /// The ring's voters as this member knows them, with their base URLs.
    pub fn voters(&self) -> Vec<(NodeId, String)> {
        voters_of(&self.replica.metrics())
    }

    /// The voters as launch contacts (`ID=route` pairs, every route of each; this member
    /// last), for a new member to join through.
    pub fn contacts(&self) -> Vec<(NodeId, String)> {
        let m = self.replica.metrics();
        let membership = m.membership_config.membership();
        let me = self.replica.id();
        let mut voters: Vec<(NodeId, NodeAddr)> = membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|n| (id, n.clone())))
            .collect();
        voters.sort_by_key(|(id, _)| *id == me);
        NodeAddr::to_contacts(&voters)
    }

    /// Carries this member's calls over `link` as `policy` says.
    pub fn set_link(
        &self,
        link: Arc<dyn crate::replica::MemberLink>,
        policy: crate::replica::LinkPolicy,
    ) {
        self.transport.set_link(link, policy);
    }

    /// The answering side of this member's links.
    pub fn link_server(&self) -> super::member_link::LinkServer {
        super::member_link::LinkServer::new(Some(self.service.clone()))
    }

    /// Calls this member made that were answered, by path.
    pub fn calls_answered(&self) -> crate::replica::CallCounts {
        self.transport.answered()
    }

    /// The ring's voters as the discovery record lists them (`replicas`).
    pub fn nodes(&self) -> Vec<crate::discovery::ReplicaNode> {
        replica_nodes(&self.voters())
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.replica.id()
    }

    /// Whether this member leads the ring now.
    pub fn is_leader(&self) -> bool {
        self.replica.metrics().current_leader == Some(self.replica.id())
    }

    /// Waits until one of `ids` is a voter of a settled membership (committed, not a joint
    /// configuration: the next change may start) and returns it; `None` when `within` passes
    /// first.
    pub async fn wait_for_any_voter(&self, ids: &[NodeId], within: Duration) -> Option<NodeId> {
        let wanted = ids.to_vec();
        let m = self
            .replica
            .wait_for(within, "a new voter", move |m| {
                settled_voter(m, &wanted).is_some()
            })
            .await
            .ok()?;
        settled_voter(&m, ids)
    }

    /// Whether `id` is a voter of a settled membership now (see
    /// [`NodeMember::wait_for_any_voter`]).
    pub fn is_settled_voter(&self, id: NodeId) -> bool {
        settled_voter(&self.replica.metrics(), &[id]).is_some()
    }

    /// Whether member `id` answers a `status` call (authenticated) within `within`.
    pub async fn answers(&self, id: NodeId, within: Duration) -> bool {
        let call = self.transport.call::<_, Outcome<crate::replica::Status>>(
            id,
            crate::replica::Call::Status,
            &(),
        );
        matches!(
            tokio::time::timeout(within, call).await,
            Ok(Ok(Outcome::Ok(_)))
        )
    }

    /// Has member `id` removed from the voters (forwarded to the leader).
    ///
    /// # Errors
    /// The leader could not be reached or refused.
    pub async fn remove(&self, id: NodeId) -> Result<(), CallFailure> {
        match self.service.remove_member(id).await {
            Outcome::Ok(()) => Ok(()),
            Outcome::Err(f) => Err(f),
        }
    }

    /// Calls `f` with the ring's voters now and whenever they change (until the member stops).
    pub fn on_members_change(
        &self,
        f: impl Fn(Vec<crate::discovery::ReplicaNode>) + Send + Sync + 'static,
    ) {
        let mut metrics = self.replica.raft().metrics();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                // Metrics change with every entry; the voters seldom.
                let voters = voters_of(&metrics.borrow_and_update());
                if last.as_ref() != Some(&voters) {
                    f(replica_nodes(&voters));
                    last = Some(voters);
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The member's calls, to merge into the node's router.
    pub fn routes(&self) -> Router {
        routes(self.service.clone())
    }

    /// The member.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// What the node's relay proposes its publishes through.
    pub fn proposer(&self) -> Arc<dyn Proposer> {
        Arc::new(NodeProposer {
            service: self.service.clone(),
            write_timeout: self.write_timeout,
        })
    }

    /// Mirrors what this member applies into `relay` from now on (call it before
    /// [`NodeMember::enter`]): each committed message is stored there at its `seq` and fanned
    /// out to the room's members on this node.
    pub fn feed(&self, relay: RelayHandle) {
        if let Ok(mut r) = self.relay.lock() {
            *r = Some(relay.clone());
        }
        let mut feed = self.replica.applied_feed(FEED_CAPACITY);
        let replica = self.replica.clone();
        tokio::spawn(async move {
            while let Some(first) = feed.recv().await {
                let mut batch = vec![first];
                while batch.len() < FEED_BATCH {
                    match feed.try_recv() {
                        Ok(a) => batch.push(a),
                        Err(_) => break,
                    }
                }
                let replica = replica.clone();
                if relay
                    .with_relay(move |r| apply_batch(r, &replica, batch))
                    .await
                    .is_none()
                {
                    break;
                }
            }
        });
    }

    /// Starts a new ring with this member as its only voter (no `--replica-join`), or joins
    /// the running one and returns once it is a voter. Returns what it did, for the log line.
    ///
    /// # Errors
    /// The ring refused to start, or the join did not succeed within the join timeout.
    pub async fn enter(
        &self,
        args: &ReplicationArgs,
        advertise: &str,
        rtc: Vec<crate::replica::RtcRoute>,
    ) -> anyhow::Result<&'static str> {
        if let Ok(mut a) = self.advertised.lock() {
            advertise.clone_into(&mut a);
        }
        let me = NodeAddr {
            addr: advertise.to_owned(),
            rtc,
        };
        if args.replica_join.is_empty() {
            self.replica
                .initialize([(args.replica_id, me)].into())
                .await?;
            self.propose_retention().await;
            Ok("bootstrapped a new ring")
        } else {
            join(
                args.replica_id,
                &args.replica_join,
                args.replica_join_timeout,
                &self.transport,
                &me,
            )
            .await?;
            Ok("joined as a voter")
        }
    }

    /// Shuts the member down without leaving (it was removed already).
    pub async fn shut_down(&self) {
        if let Err(e) = self.replica.shutdown().await {
            tracing::warn!(error = %e, "replica: shutdown");
        }
    }

    /// Sets a new ring's retention, through the log, to the relay's store budget (so every
    /// member keeps and evicts the same history, bounded as this node's relay is). Retried
    /// until the write timeout (the first election may not be over); a ring left without one
    /// keeps everything, as before.
    async fn propose_retention(&self) {
        let relay = self.relay.lock().ok().and_then(|r| r.clone());
        let Some(relay) = relay else { return };
        let Some(budget) = relay.with_relay(|r| r.config().memory_budget).await else {
            return;
        };
        let retention = crate::replica::Retention {
            max_bytes: Some(budget as u64),
            max_messages: None,
        };
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        loop {
            match self.replica.set_retention(retention).await {
                Ok(_) => return,
                Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "replica: the ring's retention was not set; members keep everything");
                    return;
                }
            }
        }
    }

    /// Leaves the ring (a planned stop): hands leadership over if this member leads, and has
    /// itself removed from the voters, trying for at most `within`. Then shuts the member down.
    pub async fn leave(&self, within: Duration) {
        let me = self.replica.id();
        let deadline = tokio::time::Instant::now() + within;
        let alone = {
            let m = self.replica.metrics();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            voters == [me]
        };
        // The last voter cannot hand over to anyone: the ring ends with it.
        if alone {
            tracing::info!(member = me, "replica: the last voter stops; the ring ends");
        } else {
            self.remove_self(deadline).await;
        }
        if let Err(e) = self.replica.shutdown().await {
            tracing::warn!(error = %e, "replica: shutdown");
        }
    }
}

impl NodeMember {
    /// Has this member removed from the voters (stepping aside first if it leads), retrying
    /// until `deadline`.
    async fn remove_self(&self, deadline: tokio::time::Instant) {
        let me = self.replica.id();
        loop {
            match self.service.remove_member(me).await {
                Outcome::Ok(()) => {
                    tracing::info!(member = me, "replica: left the ring");
                    return;
                }
                Outcome::Err(f) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(member = me, failure = ?f, "replica: leaving, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Outcome::Err(f) => {
                    tracing::warn!(member = me, failure = ?f, "replica: could not leave the ring; the others remove it");
                    return;
                }
            }
        }
    }
}

/// Stores applied messages in the relay; after a gap or an installed snapshot, re-reads the
/// rooms from the member's state (what it holds beyond the relay's head).
fn apply_batch(relay: &mut Relay, replica: &Replica, batch: Vec<Applied>) {
    for a in batch {
        match a {
            Applied::Message { room, message } => {
                let body = message.body.to_string();
                if let Err(e) = relay.apply_committed(
                    &room,
                    message.seq,
                    &message.from,
                    &message.id,
                    message.ts,
                    &body,
                ) {
                    tracing::warn!(room, error = %e, "replica: relay behind the log; reading the room again");
                    catch_up(relay, replica, &room);
                }
            }
            Applied::Installed => {
                for room in replica.rooms() {
                    catch_up(relay, replica, &room);
                }
            }
        }
    }
}

/// Stores in the relay every message of `room` the member holds beyond the relay's head. What
/// the member evicted (its retention) becomes an eviction mark in the relay, as the relay's own
/// evictions are: clients see `evicted_before`, as on a single node.
fn catch_up(relay: &mut Relay, replica: &Replica, room: &str) {
    let head = relay.room_head(room);
    let before = replica.evicted_before(room);
    if before > head + 1 {
        let mark = crate::relay::ReplicationEvent::Evicted {
            room: room.to_owned(),
            before,
        };
        if let Err(e) = relay.apply_replication(mark) {
            tracing::error!(room, error = %e, "replica: cannot mark evicted history");
            return;
        }
    }
    let head = relay.room_head(room);
    for m in replica.history_after(room, head, None) {
        if let Err(e) =
            relay.apply_committed(room, m.seq, &m.from, &m.id, m.ts, &m.body.to_string())
        {
            tracing::error!(room, error = %e, "replica: cannot store a committed message");
            return;
        }
    }
}

/// Proposes the relay's publishes: at this member when it leads, else at the leader, retried
/// (same id: a retry is stored once) until the write timeout.
struct NodeProposer {
    service: ReplicaService,
    write_timeout: Duration,
}

#[async_trait::async_trait]
impl Proposer for NodeProposer {
    async fn propose(&self, p: &Proposal) -> Result<u64, ProposalFailure> {
        let body = serde_json::from_str(&p.body)
            .map_err(|e| ProposalFailure::Refused(format!("body: {e}")))?;
        let request = PublishRequest {
            room: p.room.clone(),
            from: p.from.clone(),
            id: p.id.clone(),
            body,
        };
        let deadline = tokio::time::Instant::now() + self.write_timeout;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.service.publish_from_client(request.clone()).await {
                Outcome::Ok(seq) => return Ok(seq),
                Outcome::Err(f) if !f.is_retryable() => {
                    return Err(ProposalFailure::Refused(format!("{f:?}")));
                }
                Outcome::Err(f) => {
                    if tokio::time::Instant::now() + pause >= deadline {
                        return Err(ProposalFailure::Unavailable(match f {
                            CallFailure::NoLeader { .. } => "no leader reachable".to_owned(),
                            CallFailure::NotCommitted { detail } => detail,
                            other => format!("{other:?}"),
                        }));
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(400));
                }
            }
        }
    }
}

// ----- a whole ring on one machine (`ouroboros node --replicas N --launcher local`) --------

/// Flags the other members of a local ring do not inherit from the node that starts them.
const MEMBER_NOT_INHERITED: &[&str] = &[
    "--replica-id",
    "--replica-join",
    "--replica-advertise",
    "--launcher",
    "--data-dir",
    "--port",
    "--peer-id",
    "--generation",
];

/// Environment variables they do not inherit, for the same reason.
const MEMBER_ENV_NOT_INHERITED: &[&str] = &[
    "OUROBOROS_REPLICA_ID",
    "OUROBOROS_REPLICA_JOIN",
    "OUROBOROS_REPLICA_ADVERTISE",
    "OUROBOROS_LAUNCHER",
    "OUROBOROS_DATA_DIR",
    "OUROBOROS_PORT",
    "OUROBOROS_PEER_ID",
    "OUROBOROS_GENERATION",
];

/// The other members of a ring run on this machine, started by its first node: each is
/// `ouroboros node` with this node's flags, its own member id, port and data dir
/// (`<data-dir>/member-<id>`), joining through this node; logs in
/// `<data-dir>/logs/member-<id>.log`; the ring's secret in `OUROBOROS_SECRET`, never argv.
#[derive(Debug)]
pub struct LocalMembers {
    children: Vec<(NodeId, tokio::process::Child)>,
}

impl LocalMembers {
    /// Starts members `2..=count` joining through member 1 at `first`.
    ///
    /// # Errors
    /// The data dir or a log file cannot be created, or a process cannot be started.
    pub fn spawn(
        count: usize,
        first: &str,
        data_dir: &std::path::Path,
        secret: &Secret,
    ) -> std::io::Result<LocalMembers> {
        let exe = std::env::current_exe()?;
        let base = crate::lifecycle::drop_flags(std::env::args_os().skip(1), MEMBER_NOT_INHERITED);
        let logs = data_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let mut children = Vec::new();
        for id in 2..=count as NodeId {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(logs.join(format!("member-{id}.log")))?;
            let mut cmd = tokio::process::Command::new(&exe);
            cmd.args(&base)
                .args(["--port", "0", "--replica-id", &id.to_string()])
                .arg("--replica-join")
                .arg(format!("1={first}"))
                .arg("--data-dir")
                .arg(data_dir.join(format!("member-{id}")))
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .env(SECRET_ENV, secret.to_env_value())
                .kill_on_drop(true);
            for var in MEMBER_ENV_NOT_INHERITED {
                cmd.env_remove(var);
            }
            let child = cmd.spawn()?;
            tracing::info!(
                member = id,
                pid = child.id(),
                "replica: local member started"
            );
            children.push((id, child));
        }
        Ok(LocalMembers { children })
    }

    /// Stops the members one after the other (SIGTERM: each hands leadership over and leaves
    /// the ring), waiting at most `each` for each; one that does not exit by then is killed.
    pub async fn stop(mut self, each: Duration) {
        for (id, child) in &mut self.children {
            if let Some(pid) = child.id() {
                // SAFETY: kill(2) on our own child, not yet reaped (it has an id).
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(each, child.wait()).await.is_err() {
                tracing::warn!(
                    member = *id,
                    "replica: local member did not stop; killing it"
                );
                let _ = child.kill().await;
            }
        }
    }
}
