//! [`Replica`]: one member of the replicated relay log, and the API the rest of the crate uses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, RaftMetrics, SnapshotPolicy};

use super::network::{Network, Transport};
use super::store::{Applied, LogStore, StateMachine};
use super::{Command, Message, NodeAddr, NodeId, ReplicaError, Reply, Retention, Seq, TypeConfig};

/// Longest room name (bytes), as the relay's rule.
pub const MAX_ROOM_BYTES: usize = 64;
/// Longest message id or identity (bytes), as the relay's rule.
pub const MAX_ID_BYTES: usize = 128;

/// A member's Raft settings. The defaults suit members on different machines; tests use
/// shorter timeouts.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// The group's name (openraft checks that members agree; it also names the logs' spans).
    pub cluster: String,
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in
    /// `election_timeout_min..election_timeout_max` campaigns. Must exceed `heartbeat`.
    pub election_timeout_min: Duration,
    /// See `election_timeout_min`.
    pub election_timeout_max: Duration,
    /// Build a snapshot after this many entries applied since the last one.
    pub snapshot_every: u64,
    /// Entries kept in the log below the last snapshot (so slightly lagging members catch up
    /// from the log, not from a snapshot).
    pub keep_after_snapshot: u64,
    /// A snapshot travels in chunks of at most this many bytes.
    pub snapshot_chunk_bytes: u64,
    /// How long one snapshot chunk may take to be answered (openraft's
    /// `install_snapshot_timeout`, 200 ms by default there): the last chunk's answer waits for
    /// the receiver to check and install the whole snapshot, seconds for a GB of history.
    pub snapshot_timeout: Duration,
    /// [`Replica::add_learner`] with `blocking` returns once the learner is at most this many
    /// entries behind the leader (openraft's `replication_lag_threshold`, 5 000 by default,
    /// would let a learner with less history than that be promoted before it caught up).
    pub catch_up_within: u64,
    /// How long [`Replica::publish`] and the membership calls wait for a commit. A leader cut
    /// off from the majority cannot commit and is not told so until it hears a newer term:
    /// without this bound its callers would wait for the partition to heal.
    pub write_timeout: Duration,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            cluster: "ouroboros".to_owned(),
            heartbeat: Duration::from_millis(250),
            election_timeout_min: Duration::from_millis(1000),
            election_timeout_max: Duration::from_millis(2000),
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_timeout: Duration::from_secs(60),
            catch_up_within: 64,
            write_timeout: Duration::from_secs(5),
        }
    }
}

impl ReplicaConfig {
    /// openraft's configuration, validated.
    ///
    /// # Errors
    /// [`ReplicaError::Config`] when openraft refuses it (e.g. election timeouts not above the
    /// heartbeat).
    fn to_openraft(&self) -> Result<openraft::Config, ReplicaError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        openraft::Config {
            cluster_name: self.cluster.clone(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout_min),
            election_timeout_max: ms(self.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            install_snapshot_timeout: ms(self.snapshot_timeout),
            replication_lag_threshold: self.catch_up_within,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ReplicaError::Config(e.to_string()))
    }
}

/// A change of the voters (the learners are added with [`Replica::add_learner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeMembers {
    /// Make these learners voters.
    Promote(BTreeSet<NodeId>),
    /// Remove these voters from the group altogether (they are not kept as learners).
    Remove(BTreeSet<NodeId>),
}

/// One member of the replicated relay log: a Raft member (openraft), its log and its
/// [`RoomLogs`](super::RoomLogs). Cheap to clone: clones are the same member.
#[derive(Clone)]
pub struct Replica {
    /// This member's id.
    id: NodeId,
    /// The Raft core (openraft's tasks run on the tokio runtime that started it).
    raft: Raft<TypeConfig>,
    /// The state machine openraft applies to, shared so histories can be read.
    state: StateMachine,
    /// [`ReplicaConfig::write_timeout`].
    write_timeout: Duration,
    /// [`ReplicaConfig::catch_up_within`].
    catch_up_within: u64,
    /// Set by [`Replica::step_aside`]: this member refuses writes, so that no new entry it
    /// replicates keeps the followers from electing another leader.
    leaving: Arc<AtomicBool>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Checks a field's length: 1..=max bytes, no control characters.
fn check_field(field: &'static str, value: &str, max: usize) -> Result<(), ReplicaError> {
    if value.is_empty() || value.len() > max {
        return Err(ReplicaError::BadRequest {
            field,
            reason: "length out of range",
        });
    }
    if value.chars().any(char::is_control) {
        return Err(ReplicaError::BadRequest {
            field,
            reason: "control character",
        });
    }
    Ok(())
}

/// A write's error, in this module's terms.
fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeAddr>>) -> ReplicaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ReplicaError::ForwardToLeader {
                leader: f.leader_id,
                addr: f.leader_node,
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ReplicaError::Membership(e.to_string())
        }
        RaftError::Fatal(f) => ReplicaError::Stopped(f.to_string()),
    }
}

impl Replica {
    /// Starts member `id` with an empty log, reachable through `transport`. It does nothing
    /// until it is part of a group: [`Replica::initialize`] on one member of a new group, or
    /// [`Replica::add_learner`] on the leader of an existing one.
    ///
    /// # Errors
    /// A configuration openraft refuses ([`ReplicaError::Config`]), or openraft failing to
    /// start ([`ReplicaError::Stopped`]).
    pub async fn start<T: Transport>(
        id: NodeId,
        config: &ReplicaConfig,
        transport: Arc<T>,
    ) -> Result<Self, ReplicaError> {
        let raft_config = Arc::new(config.to_openraft()?);
        let state = StateMachine::new();
        let raft = Raft::new(
            id,
            raft_config,
            Network::new(id, transport),
            LogStore::new(),
            state.clone(),
        )
        .await
        .map_err(|e| ReplicaError::Stopped(e.to_string()))?;
        tracing::info!(member = id, "replica: started");
        Ok(Self {
            id,
            raft,
            state,
            write_timeout: config.write_timeout,
            catch_up_within: config.catch_up_within,
            leaving: Arc::new(AtomicBool::new(false)),
        })
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Raft core, for a transport to deliver incoming RPCs to
    /// (`append_entries`, `install_snapshot`, `vote`).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Creates a new group whose voters are `members` (this member among them). Call it on
    /// one member only, once.
    ///
    /// # Errors
    /// [`ReplicaError::Initialize`] when the member already belongs to a group or `members`
    /// does not include it; [`ReplicaError::Stopped`] after shutdown.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, NodeAddr>,
    ) -> Result<(), ReplicaError> {
        self.raft.initialize(members).await.map_err(|e| match e {
            RaftError::Fatal(f) => ReplicaError::Stopped(f.to_string()),
            RaftError::APIError(e) => ReplicaError::Initialize(e.to_string()),
        })
    }

    /// Publishes `body` to `room` as `from` with the publisher's message id `id`, and returns
    /// its `seq` once the entry is committed on a majority of the voters and applied here.
    /// A retry with the same `(room, from, id)` returns the first attempt's `seq` and stores
    /// nothing.
    ///
    /// # Errors
    /// - [`ReplicaError::BadRequest`]: `room` is not 1–64 bytes, or `from` or `id` not 1–128
    ///   bytes, or one holds a control character. Nothing is proposed.
    /// - [`ReplicaError::ForwardToLeader`]: this member is not the leader (or stopped being
    ///   it before the entry committed: it may still commit, so retry with the same `id`).
    /// - [`ReplicaError::NotCommitted`]: not committed within `write_timeout` (this member
    ///   leads but cannot reach a majority); it may still commit: retry with the same `id`.
    /// - [`ReplicaError::Stopped`]: this member is shut down.
    pub async fn publish(
        &self,
        room: &str,
        from: &str,
        id: &str,
        body: serde_json::Value,
    ) -> Result<Seq, ReplicaError> {
        check_field("room", room, MAX_ROOM_BYTES)?;
        check_field("from", from, MAX_ID_BYTES)?;
        check_field("id", id, MAX_ID_BYTES)?;
        let command = Command::Publish {
            room: room.to_owned(),
            id: id.to_owned(),
            from: from.to_owned(),
            ts: super::system_now_ms(),
            body,
        };
        let resp = self
            .bounded(self.raft.client_write(command))
            .await?
            .map_err(write_error)?;
        match resp.data {
            Reply::Published { seq, duplicate } => {
                tracing::debug!(member = self.id, room, seq, duplicate, log = %resp.log_id, "replica: published");
                Ok(seq)
            }
            other @ (Reply::Internal | Reply::Retained { .. }) => {
                Err(ReplicaError::UnexpectedReply(other))
            }
        }
    }

    /// Sets the ring's retention through the log ([`Command::Retain`]): once committed, every
    /// member keeps at most this much history and evicts the same messages. Returns how many
    /// messages the new limits evicted. Call on the leader (a node proposes it right after
    /// bootstrapping the ring, from its relay's limits).
    ///
    /// # Errors
    /// As [`Replica::publish`] (`ForwardToLeader`, `NotCommitted`, `Stopped`).
    pub async fn set_retention(&self, retention: Retention) -> Result<u64, ReplicaError> {
        let command = Command::Retain {
            max_bytes: retention.max_bytes,
            max_messages: retention.max_messages,
        };
        let resp = self
            .bounded(self.raft.client_write(command))
            .await?
            .map_err(write_error)?;
        match resp.data {
            Reply::Retained { evicted } => {
                tracing::info!(member = self.id, ?retention, evicted, log = %resp.log_id, "replica: retention set");
                Ok(evicted)
            }
            other => Err(ReplicaError::UnexpectedReply(other)),
        }
    }

    /// The retention this member applies (the last [`Command::Retain`] applied).
    pub fn retention(&self) -> Retention {
        self.state.retention()
    }

    /// Every `seq` of `room` below this was evicted here (1: none): a reader after `since`
    /// below it knows it missed messages ([`RoomLogs::evicted_before`](super::RoomLogs::evicted_before)).
    pub fn evicted_before(&self, room: &str) -> Seq {
        self.state.evicted_before(room)
    }

    /// Adds member `id` (reachable at `addr`) as a learner: it receives the log (or a
    /// snapshot) but does not vote. A member already there at that address is not added again.
    /// With `blocking`, returns once it has caught up, or [`ReplicaError::NotCommitted`] after
    /// `write_timeout` while it is still catching up (ask again: nothing restarts). Call on the
    /// leader.
    ///
    /// # Errors
    /// As [`Replica::publish`], plus [`ReplicaError::Membership`] when the change is refused.
    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: NodeAddr,
        blocking: bool,
    ) -> Result<(), ReplicaError> {
        // Adding a member already there, at the same address, again would write another
        // membership entry and restart the replication to it (a snapshot under way starts
        // over): a join retried while a learner catches up must not do that.
        let present = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&id)
            .cloned();
        // A member id is never reused: another process claiming one in use (two launches
        // that drew the same id) is refused, not given the member's place.
        if let Some(other) = present.as_ref().filter(|n| **n != addr) {
            return Err(ReplicaError::Membership(format!(
                "member id {id} is in use at {}; a new member needs a new id",
                other.addr
            )));
        }
        if present.is_none() {
            self.bounded(self.raft.add_learner(id, addr, false))
                .await?
                .map_err(write_error)?;
            tracing::info!(member = self.id, learner = id, "replica: learner added");
        }
        if blocking {
            self.caught_up(id).await?;
        }
        Ok(())
    }

    /// Waits, at most `write_timeout`, until member `id` is within `catch_up_within` entries of
    /// this leader's log.
    ///
    /// # Errors
    /// [`ReplicaError::NotCommitted`] (retryable) while it is still catching up (a snapshot of
    /// a GB takes longer than one wait: the caller asks again);
    /// [`ReplicaError::ForwardToLeader`] when this member is not the leader.
    async fn caught_up(&self, id: NodeId) -> Result<(), ReplicaError> {
        let within = self.catch_up_within;
        let me = self.id;
        let waited = self
            .wait_for(self.write_timeout, "learner caught up", move |m| {
                m.current_leader != Some(me)
                    || m.replication.as_ref().is_some_and(|r| {
                        r.get(&id).is_some_and(|matched| {
                            matched.map_or(0, |l| l.index) + within >= m.last_log_index.unwrap_or(0)
                        })
                    })
            })
            .await;
        match waited {
            Ok(m) if m.current_leader == Some(me) => Ok(()),
            Ok(m) => Err(ReplicaError::ForwardToLeader {
                leader: m.current_leader,
                addr: None,
            }),
            Err(_) => Err(ReplicaError::NotCommitted(format!(
                "member {id} is still catching up"
            ))),
        }
    }

    /// Changes the voters (joint consensus: returns once the final membership is committed).
    /// Call on the leader. Removing the leader itself works (it steps down once the
    /// change is committed), but [`Replica::step_aside`] first keeps the change itself off
    /// the leaving member.
    ///
    /// # Errors
    /// As [`Replica::publish`], plus [`ReplicaError::Membership`] when the change is refused
    /// (e.g. promoting a member that is not a learner).
    pub async fn change_membership(&self, change: ChangeMembers) -> Result<(), ReplicaError> {
        let (changes, retain) = match change.clone() {
            ChangeMembers::Promote(ids) => (openraft::ChangeMembers::AddVoterIds(ids), true),
            ChangeMembers::Remove(ids) => (openraft::ChangeMembers::RemoveVoters(ids), false),
        };
        self.bounded(self.raft.change_membership(changes, retain))
            .await?
            .map_err(write_error)?;
        tracing::info!(member = self.id, ?change, "replica: membership changed");
        Ok(())
    }

    /// Runs a write, at most `write_timeout`; refused at once while this member steps aside.
    async fn bounded<T>(&self, write: impl Future<Output = T>) -> Result<T, ReplicaError> {
        if self.leaving.load(Ordering::SeqCst) {
            return Err(ReplicaError::ForwardToLeader {
                leader: None,
                addr: None,
            });
        }
        tokio::time::timeout(self.write_timeout, write)
            .await
            .map_err(|_| {
                ReplicaError::NotCommitted(format!(
                    "not committed within {:?} (no quorum reachable?)",
                    self.write_timeout
                ))
            })
    }

    /// A room's messages as applied on this member, oldest first (empty for an unknown
    /// room). On a follower it may lag the leader by the entries not yet applied here.
    pub fn history(&self, room: &str) -> Vec<Message> {
        self.state.history(room)
    }

    /// A room's messages after `since` (a client resuming after a failover), at most `limit`,
    /// as applied on this member.
    pub fn history_after(&self, room: &str, since: Seq, limit: Option<usize>) -> Vec<Message> {
        self.state.history_after(room, since, limit)
    }

    /// Reports what this member applies from now on, in log order: each appended message,
    /// and each snapshot installed in place of the state (then read the rooms again). Call it
    /// before the member joins a group, so that nothing applied is missed. The channel holds
    /// `capacity` events; while it is full, applying waits.
    pub fn applied_feed(&self, capacity: usize) -> tokio::sync::mpsc::Receiver<Applied> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        self.state.set_feed(tx);
        rx
    }

    /// A room's head as applied here: its last `seq` (0 for an unknown room).
    pub fn head(&self, room: &str) -> Seq {
        self.state.head(room)
    }

    /// The names of the rooms this member holds, sorted.
    pub fn rooms(&self) -> Vec<String> {
        self.state.rooms()
    }

    /// openraft's metrics of this member now: role, term, leader, log and applied indexes,
    /// snapshot, membership.
    pub fn metrics(&self) -> RaftMetrics<NodeId, NodeAddr> {
        self.raft.metrics().borrow().clone()
    }

    /// The leader this member knows of.
    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Waits until this member's metrics satisfy `condition` (checked at once, then at each
    /// change), at most `timeout`.
    ///
    /// # Errors
    /// [`ReplicaError::Wait`] on timeout or when the member stops.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&RaftMetrics<NodeId, NodeAddr>) -> bool + Send,
    ) -> Result<RaftMetrics<NodeId, NodeAddr>, ReplicaError> {
        self.raft
            .wait(Some(timeout))
            .metrics(condition, what)
            .await
            .map_err(|e| ReplicaError::Wait(format!("member {}: {e}", self.id)))
    }

    /// Hands leadership over before this member leaves: it stops sending heartbeats and
    /// will not campaign again, so the other voters' election timers fire and one of them
    /// (one with an up-to-date log) is elected; returns the new leader, as this member
    /// learns it. Costs about one election timeout of unavailability. openraft 0.9 has no
    /// transfer call, and a voter asked to campaign while the others still hear from the
    /// leader is refused (leader lease), hence this way round.
    ///
    /// Works on a follower too (it only stops campaigning). Call it just before the member
    /// is removed: it never campaigns again, and refuses writes (`ForwardToLeader` with no
    /// leader) from now on, since entries it replicated would keep the followers from
    /// electing another leader.
    ///
    /// # Errors
    /// [`ReplicaError::Wait`] when no other leader shows up within `timeout` (this member then
    /// sends heartbeats and campaigns again).
    pub async fn step_aside(&self, timeout: Duration) -> Result<NodeId, ReplicaError> {
        let me = self.id;
        // New entries would reach the followers as heartbeats do: refuse writes first.
        self.leaving.store(true, Ordering::SeqCst);
        self.raft.runtime_config().elect(false);
        self.raft.runtime_config().heartbeat(false);
        let waited = self
            .wait_for(timeout, "another leader", move |m| {
                m.current_leader.is_some_and(|l| l != me)
            })
            .await;
        // As a follower, heartbeats are not sent anyway; if this failed it leads again.
        self.raft.runtime_config().heartbeat(true);
        match waited {
            Ok(m) => {
                let leader = m.current_leader.unwrap_or(me);
                tracing::info!(member = me, leader, "replica: leadership handed over");
                Ok(leader)
            }
            Err(e) => {
                self.raft.runtime_config().elect(true);
                self.leaving.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// Builds a snapshot of everything applied so far, waits for it (at most `timeout`) and
    /// purges the log it covers, so members that need those entries get the snapshot.
    /// Returns the index the snapshot covers.
    ///
    /// # Errors
    /// [`ReplicaError::Wait`] when the snapshot or the purge takes longer than `timeout`;
    /// [`ReplicaError::Stopped`] after shutdown.
    pub async fn snapshot_and_purge(&self, timeout: Duration) -> Result<u64, ReplicaError> {
        let applied = self.metrics().last_applied.map_or(0, |l| l.index);
        let stopped = |e: openraft::error::Fatal<NodeId>| ReplicaError::Stopped(e.to_string());
        self.raft.trigger().snapshot().await.map_err(stopped)?;
        let m = self
            .wait_for(timeout, "snapshot built", |m| {
                m.snapshot.is_some_and(|s| s.index >= applied)
            })
            .await?;
        let upto = m.snapshot.map_or(applied, |s| s.index);
        self.raft.trigger().purge_log(upto).await.map_err(stopped)?;
        self.wait_for(timeout, "log purged", |m| {
            m.purged.is_some_and(|p| p.index >= upto)
        })
        .await?;
        tracing::info!(
            member = self.id,
            upto,
            "replica: snapshot built, log purged"
        );
        Ok(upto)
    }

    /// Stops this member's Raft core. Its state stays readable ([`Replica::history`]).
    ///
    /// # Errors
    /// [`ReplicaError::Stopped`] when the core's task ended abnormally.
    pub async fn shutdown(&self) -> Result<(), ReplicaError> {
        self.raft
            .shutdown()
            .await
            .map_err(|e| ReplicaError::Stopped(e.to_string()))?;
        tracing::info!(member = self.id, "replica: shut down");
        Ok(())
    }
}
