//! openraft's storage, in memory: [`LogStore`] (the log, the vote, the committed index) and
//! [`StateMachine`] ([`RoomLogs`] plus the last applied log id, the membership and the
//! current snapshot).
//!
//! Members are ephemeral runners: durability is the majority, not a disk, so nothing here is
//! written to a file. A member that restarts comes back as a new member (a learner that
//! catches up), never with its old log.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};

use bytes::Bytes;

use super::{Message, NodeAddr, NodeId, Reply, RoomLogs, Seq, SnapshotBytes, TypeConfig};

/// Locks a mutex; a poisoned one (a panic elsewhere while holding it) is still read, since
/// every update below leaves the data consistent before anything that could panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The log's contents.
#[derive(Debug, Default)]
struct LogData {
    /// The last purged log id (entries up to it are gone: a snapshot covers them).
    last_purged: Option<LogId<NodeId>>,
    /// The entries by index.
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    /// The vote this member granted or holds.
    vote: Option<Vote<NodeId>>,
    /// The last committed log id this member knows of.
    committed: Option<LogId<NodeId>>,
}

/// The Raft log in memory. Cheap to clone: clones share the log (openraft's log reader is
/// one).
#[derive(Debug, Clone, Default)]
pub struct LogStore {
    /// Shared with the log readers openraft's replication tasks hold.
    inner: Arc<Mutex<LogData>>,
}

impl LogStore {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let log = lock(&self.inner);
        Ok(log.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let log = lock(&self.inner);
        let last = log
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(log.last_purged);
        Ok(LogState {
            last_purged_log_id: log.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        lock(&self.inner).vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.inner).vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        lock(&self.inner).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(lock(&self.inner).committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut log = lock(&self.inner);
            for e in entries {
                log.entries.insert(e.log_id.index, e);
            }
        }
        // In memory, appended is flushed.
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut log = lock(&self.inner);
        let _removed = log.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut log = lock(&self.inner);
        log.last_purged = Some(log_id);
        log.entries = log.entries.split_off(&(log_id.index + 1));
        Ok(())
    }
}

/// A built or installed snapshot: its metadata and the bytes of [`RoomLogs::to_snapshot`].
#[derive(Debug, Clone)]
struct StoredSnapshot {
    /// Which log prefix it covers, with which membership.
    meta: SnapshotMeta<NodeId, NodeAddr>,
    /// The sealed [`RoomLogs`], held once: every send of it reads this buffer.
    data: Bytes,
}

/// The state machine's contents.
#[derive(Debug, Default)]
struct MachineData {
    /// Every room's history.
    rooms: RoomLogs,
    /// The last entry applied.
    last_applied: Option<LogId<NodeId>>,
    /// The membership of the last membership entry applied.
    membership: StoredMembership<NodeId, NodeAddr>,
    /// The last snapshot built or installed (sent to members that need it).
    snapshot: Option<StoredSnapshot>,
    /// Snapshots built so far, to give each a distinct id.
    snapshots_built: u64,
}

/// What this member applied, in log order, for a consumer that mirrors the rooms (the node's
/// relay fans applied messages out to its clients): see [`Replica::applied_feed`](super::Replica::applied_feed).
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// A message was appended to `room` (a retry of a stored message is not reported).
    Message {
        /// The room.
        room: String,
        /// The message, with the `seq` it was given.
        message: Message,
    },
    /// A snapshot replaced the whole state: the consumer reads the rooms again
    /// ([`Replica::rooms`](super::Replica::rooms), [`Replica::history_after`](super::Replica::history_after)).
    Installed,
}

/// The replicated state machine: [`RoomLogs`] under openraft. Cheap to clone: clones share
/// the state (the [`Replica`](super::Replica) reads histories through one).
#[derive(Debug, Clone, Default)]
pub struct StateMachine {
    /// Shared with the snapshot builders and the replica's readers.
    inner: Arc<Mutex<MachineData>>,
    /// Where applied messages go, if someone listens (bounded: a slow consumer slows the
    /// applying, never loses an entry).
    feed: Arc<Mutex<Option<tokio::sync::mpsc::Sender<Applied>>>>,
}

impl StateMachine {
    /// An empty state machine.
    pub fn new() -> Self {
        Self::default()
    }

    /// A room's messages, oldest first (empty for an unknown room).
    pub fn history(&self, room: &str) -> Vec<Message> {
        lock(&self.inner).rooms.history(room)
    }

    /// A room's messages after `since`, at most `limit` ([`RoomLogs::history_after`]).
    pub fn history_after(&self, room: &str, since: Seq, limit: Option<usize>) -> Vec<Message> {
        lock(&self.inner).rooms.history_after(room, since, limit)
    }

    /// The names of the rooms, sorted.
    pub fn rooms(&self) -> Vec<String> {
        lock(&self.inner).rooms.rooms()
    }

    /// A room's last `seq` (0 for an unknown room).
    pub fn head(&self, room: &str) -> Seq {
        lock(&self.inner).rooms.head(room)
    }

    /// Every `seq` of `room` below this was evicted (1: none).
    pub fn evicted_before(&self, room: &str) -> Seq {
        lock(&self.inner).rooms.evicted_before(room)
    }

    /// The retention last applied.
    pub fn retention(&self) -> super::Retention {
        lock(&self.inner).rooms.retention()
    }

    /// The last log id applied.
    pub fn last_applied(&self) -> Option<LogId<NodeId>> {
        lock(&self.inner).last_applied
    }

    /// From now on, every applied message (and every installed snapshot) is sent to `feed`.
    pub fn set_feed(&self, feed: tokio::sync::mpsc::Sender<Applied>) {
        *lock(&self.feed) = Some(feed);
    }

    /// Sends `events` to the feed, if any, waiting while it is full; a feed whose receiver is
    /// gone is dropped.
    async fn report(&self, events: Vec<Applied>) {
        if events.is_empty() {
            return;
        }
        let Some(feed) = lock(&self.feed).clone() else {
            return;
        };
        for e in events {
            if feed.send(e).await.is_err() {
                *lock(&self.feed) = None;
                return;
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Serialising a large state takes seconds: off the async workers. The state stays
        // locked meanwhile (applying waits), so the snapshot is exactly `last_applied`.
        let inner = Arc::clone(&self.inner);
        let built = tokio::task::spawn_blocking(move || {
            let mut m = lock(&inner);
            let data = Bytes::from(m.rooms.to_snapshot()?);
            m.snapshots_built += 1;
            let snapshot_id = match m.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, m.snapshots_built),
                None => format!("none-{}", m.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: m.last_applied,
                last_membership: m.membership.clone(),
                snapshot_id,
            };
            m.snapshot = Some(StoredSnapshot {
                meta: meta.clone(),
                data: data.clone(),
            });
            Ok::<_, super::SnapshotError>((meta, data))
        })
        .await
        .map_err(|e| StorageIOError::read_state_machine(&e))?
        .map_err(|e| StorageIOError::read_state_machine(&e))?;
        let (meta, data) = built;
        tracing::debug!(snapshot = %meta.snapshot_id, bytes = data.len(), "replica: snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotBytes::shared(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeAddr>), StorageError<NodeId>>
    {
        let m = lock(&self.inner);
        Ok((m.last_applied, m.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let listening = lock(&self.feed).is_some();
        let mut events = Vec::new();
        let replies = {
            let mut m = lock(&self.inner);
            let mut replies = Vec::new();
            for entry in entries {
                m.last_applied = Some(entry.log_id);
                let reply = match &entry.payload {
                    EntryPayload::Blank => Reply::Internal,
                    EntryPayload::Normal(command) => {
                        let reply = m.rooms.apply(command);
                        if let (
                            true,
                            Reply::Published {
                                seq,
                                duplicate: false,
                            },
                            super::Command::Publish {
                                room,
                                id,
                                from,
                                ts,
                                body,
                            },
                        ) = (listening, reply, command)
                        {
                            events.push(Applied::Message {
                                room: room.clone(),
                                message: Message {
                                    seq,
                                    from: from.clone(),
                                    id: id.clone(),
                                    ts: *ts,
                                    body: body.clone(),
                                },
                            });
                        }
                        reply
                    }
                    EntryPayload::Membership(membership) => {
                        m.membership =
                            StoredMembership::new(Some(entry.log_id), membership.clone());
                        Reply::Internal
                    }
                };
                replies.push(reply);
            }
            replies
        };
        // After the lock: the consumer may read the state while it handles these.
        self.report(events).await;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<SnapshotBytes>, StorageError<NodeId>> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeAddr>,
        snapshot: Box<SnapshotBytes>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_bytes();
        // Reading a large snapshot takes seconds: off the async workers. It is checked
        // (checksum, seqs, ids) before anything is replaced; the HTTP transport has already
        // refused a corrupt one before handing it to openraft (`ChunkCheck`).
        let (rooms, data) = tokio::task::spawn_blocking(move || {
            RoomLogs::from_snapshot(&data).map(|rooms| (rooms, data))
        })
        .await
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = data.len(),
            "replica: snapshot installed"
        );
        {
            let mut m = lock(&self.inner);
            m.rooms = rooms;
            m.last_applied = meta.last_log_id;
            m.membership = meta.last_membership.clone();
            m.snapshot = Some(StoredSnapshot {
                meta: meta.clone(),
                data,
            });
        }
        self.report(vec![Applied::Installed]).await;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let m = lock(&self.inner);
        Ok(m.snapshot.as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(SnapshotBytes::shared(s.data.clone())),
        }))
    }
}
