//! The replicated log under failures, on the in-process transport: real openraft members with
//! short timeouts (heartbeat 50 ms, elections 150–300 ms). Every wait is on an event (a
//! member's metrics, a task's end) and bounded; nothing sleeps to synchronise.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use serde_json::json;

use super::*;

/// A whole test's bound.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one wait on metrics may take (elections included).
const WAIT: Duration = Duration::from_secs(10);
/// How long a client keeps retrying one publish through elections.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(10);

fn config() -> ReplicaConfig {
    ReplicaConfig {
        cluster: "test".to_owned(),
        heartbeat: Duration::from_millis(50),
        election_timeout_min: Duration::from_millis(150),
        election_timeout_max: Duration::from_millis(300),
        // Only the snapshots a test asks for.
        snapshot_every: 100_000,
        keep_after_snapshot: 0,
        // Small chunks: a snapshot travels in several install_snapshot RPCs.
        snapshot_chunk_bytes: 1024,
        snapshot_timeout: Duration::from_secs(10),
        catch_up_within: 64,
        write_timeout: Duration::from_secs(1),
    }
}

fn addr(id: NodeId) -> NodeAddr {
    NodeAddr::http(format!("in-process:{id}"))
}

/// An acknowledged publish: where it must be found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Ack {
    room: String,
    from: String,
    id: String,
    seq: Seq,
}

/// Members on one in-process transport.
struct Cluster {
    transport: Arc<InProcessTransport>,
    /// Every member started, killed ones included (their state stays readable).
    members: BTreeMap<NodeId, Replica>,
    /// Members killed: not asked anything any more.
    dead: BTreeSet<NodeId>,
}

impl Cluster {
    /// `ids` started, the first initialises the group with all of them as voters, and a
    /// leader is elected.
    async fn voters(ids: &[NodeId]) -> Self {
        let mut c = Cluster {
            transport: Arc::new(InProcessTransport::new()),
            members: BTreeMap::new(),
            dead: BTreeSet::new(),
        };
        for &id in ids {
            c.start(id).await;
        }
        let all: BTreeMap<NodeId, NodeAddr> = ids.iter().map(|&id| (id, addr(id))).collect();
        c.members[&ids[0]]
            .initialize(all)
            .await
            .expect("initialize");
        c.leader().await;
        c
    }

    async fn start(&mut self, id: NodeId) -> Replica {
        let r = Replica::start(id, &config(), Arc::clone(&self.transport))
            .await
            .expect("start");
        self.transport.register(id, r.raft().clone());
        self.members.insert(id, r.clone());
        r
    }

    fn live(&self) -> impl Iterator<Item = &Replica> {
        self.members
            .iter()
            .filter(|(id, _)| !self.dead.contains(id))
            .map(|(_, r)| r)
    }

    /// Kills a member: unreachable for good, Raft core stopped.
    async fn kill(&mut self, id: NodeId) {
        self.transport.kill(id);
        self.members[&id].shutdown().await.expect("shutdown");
        self.dead.insert(id);
    }

    /// The leader: a live member that says it leads (waits for an election if needed).
    async fn leader(&self) -> NodeId {
        self.leader_avoiding(&BTreeSet::new()).await
    }

    /// The leader among the live members not in `avoid`: of those that say they lead, the
    /// one with the highest term (a leader cut off from the others still says it leads, with
    /// an older term). Waits on the members' metrics while there is none.
    async fn leader_avoiding(&self, avoid: &BTreeSet<NodeId>) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let eligible: Vec<&Replica> =
                self.live().filter(|r| !avoid.contains(&r.id())).collect();
            let best = eligible
                .iter()
                .map(|r| r.metrics())
                .filter(|m| m.state == ServerState::Leader)
                .max_by_key(|m| m.current_term);
            if let Some(m) = best {
                return m.id;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "no leader within {WAIT:?}");
            // Wake on the next change of any eligible member's role, term or leader.
            let waits = eligible.iter().map(|r| {
                let seen = r.metrics();
                Box::pin(r.wait_for(left, "a change", move |m| {
                    m.state != seen.state
                        || m.current_term != seen.current_term
                        || m.current_leader != seen.current_leader
                }))
            });
            let _ = futures::future::select_all(waits).await;
        }
    }

    /// Publishes like a client that follows the leader: to the leader, retrying the same
    /// `(room, from, id)` on a retryable error until `PUBLISH_DEADLINE`. Only members in
    /// `avoid` are never asked.
    async fn publish(&self, avoid: &BTreeSet<NodeId>, room: &str, from: &str, id: &str) -> Ack {
        let deadline = tokio::time::Instant::now() + PUBLISH_DEADLINE;
        let mut target = None;
        loop {
            let to = match target.take() {
                Some(t) => t,
                None => self.leader_avoiding(avoid).await,
            };
            let Some(r) = self.members.get(&to).filter(|_| !avoid.contains(&to)) else {
                continue;
            };
            match r.publish(room, from, id, json!({ "text": id })).await {
                Ok(seq) => {
                    return Ack {
                        room: room.to_owned(),
                        from: from.to_owned(),
                        id: id.to_owned(),
                        seq,
                    };
                }
                Err(e) if e.is_retryable() || matches!(e, ReplicaError::Stopped(_)) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "publish {id} not acknowledged within {PUBLISH_DEADLINE:?}: {e}"
                    );
                    if let ReplicaError::ForwardToLeader {
                        leader: Some(l), ..
                    } = e
                        && !self.dead.contains(&l)
                        && !avoid.contains(&l)
                        && l != to
                    {
                        target = Some(l);
                    } else {
                        // A client's back-off: the next attempt asks for the leader again.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                Err(e) => panic!("publish {id}: {e}"),
            }
        }
    }

    /// Publishes `{prefix}-0`, `{prefix}-1`, … (`n` of them) to `room` from `alice` like
    /// [`Cluster::publish`], one after the other, and records their acks in `acks`.
    async fn publish_many(
        &self,
        avoid: &BTreeSet<NodeId>,
        prefix: &str,
        n: usize,
        acks: &mut Vec<Ack>,
    ) {
        for i in 0..n {
            acks.push(
                self.publish(avoid, "room", "alice", &format!("{prefix}-{i}"))
                    .await,
            );
        }
    }

    /// Waits until member `by` follows a leader other than `old`.
    async fn wait_for_new_leader(&self, by: NodeId, old: NodeId) {
        self.members[&by]
            .wait_for(WAIT, "a new leader", move |m| {
                m.current_leader.is_some_and(|l| l != old)
            })
            .await
            .expect("a new leader is elected");
    }

    /// Heals `cut` (of voters 1, 2, 3), publishes 5 more (`after-…`), and asserts that all
    /// three hold the same `room`, `len` messages long, without `cut`'s own `minority`
    /// publish (`what` says why it must not be there).
    async fn heal_and_check(&self, cut: NodeId, acks: &mut Vec<Ack>, len: usize, what: &str) {
        self.transport.heal(cut);
        self.publish_many(&BTreeSet::new(), "after", 5, acks).await;
        let all = ids(&[1, 2, 3]);
        self.converge(&all).await;
        self.check(&all, &["room"], acks);
        let history = self.members[&cut].history("room");
        assert_eq!(history.len(), len);
        assert!(history.iter().all(|m| m.id != "minority"), "{what}");
    }

    /// Waits until every member in `ids` has applied everything the leader has in its log.
    async fn converge(&self, ids: &BTreeSet<NodeId>) {
        let leader = self.leader().await;
        let target = self.members[&leader].metrics().last_log_index;
        for id in ids {
            self.members[id]
                .wait_for(WAIT, "caught up", move |m| {
                    m.last_applied.map(|l| l.index) >= target
                })
                .await
                .expect("member catches up");
        }
    }

    /// Asserts that the members in `ids` hold identical histories of `rooms`, numbered
    /// 1, 2, 3, … with no gap, and that every ack is in them exactly once at its `seq`.
    fn check(&self, ids: &BTreeSet<NodeId>, rooms: &[&str], acks: &[Ack]) {
        let first = *ids.iter().next().expect("a member");
        for room in rooms {
            let reference = self.members[&first].history(room);
            for (i, m) in reference.iter().enumerate() {
                assert_eq!(
                    m.seq,
                    i as u64 + 1,
                    "room {room}: gap or disorder on {first}"
                );
            }
            let mut seen = BTreeSet::new();
            for m in &reference {
                assert!(
                    seen.insert((m.from.clone(), m.id.clone())),
                    "room {room}: {}/{} stored twice",
                    m.from,
                    m.id
                );
            }
            for id in ids {
                assert_eq!(
                    self.members[id].history(room),
                    reference,
                    "room {room}: member {id} differs from member {first}"
                );
            }
            for ack in acks.iter().filter(|a| a.room == *room) {
                let found: Vec<&Message> = reference
                    .iter()
                    .filter(|m| m.from == ack.from && m.id == ack.id)
                    .collect();
                assert_eq!(found.len(), 1, "ack {ack:?} stored {} times", found.len());
                assert_eq!(found[0].seq, ack.seq, "ack {ack:?} stored at another seq");
            }
        }
    }
}

fn ids(v: &[NodeId]) -> BTreeSet<NodeId> {
    v.iter().copied().collect()
}

/// Voters 1, 2 and 3 but `id`.
fn all_but(id: NodeId) -> BTreeSet<NodeId> {
    ids(&[1, 2, 3]).into_iter().filter(|&i| i != id).collect()
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test finishes in time");
}

/// Many publishes from concurrent clients on 3 voters: every ack is on all three, exactly
/// once, at the same seq, and every room is numbered without gaps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_concurrent_publishes_agree_on_every_member() {
    bounded(async {
        let c = Arc::new(Cluster::voters(&[1, 2, 3]).await);
        let mut tasks = Vec::new();
        for client in 0..6 {
            let c = Arc::clone(&c);
            tasks.push(tokio::spawn(async move {
                let room = if client % 2 == 0 { "even" } else { "odd" };
                let from = format!("client-{client}");
                let mut acks = Vec::new();
                for n in 0..25 {
                    acks.push(
                        c.publish(&BTreeSet::new(), room, &from, &format!("m{n}"))
                            .await,
                    );
                }
                acks
            }));
        }
        let mut acks = Vec::new();
        for t in tasks {
            acks.extend(t.await.expect("client task"));
        }
        assert_eq!(acks.len(), 150);
        let all = ids(&[1, 2, 3]);
        c.converge(&all).await;
        c.check(&all, &["even", "odd"], &acks);
        // Nothing but the acknowledged messages: 75 per room, seqs 1..=75 all acknowledged.
        for room in ["even", "odd"] {
            assert_eq!(c.members[&1].history(room).len(), 75);
            let seqs: BTreeSet<Seq> = acks
                .iter()
                .filter(|a| a.room == room)
                .map(|a| a.seq)
                .collect();
            assert_eq!(seqs, (1..=75).collect());
        }
    })
    .await;
}

/// The leader dies: the survivors elect a new one, publishing goes on, and everything
/// acknowledged before the kill is on both survivors at the same seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_leader_killed_new_leader_keeps_every_ack() {
    bounded(async {
        let mut c = Cluster::voters(&[1, 2, 3]).await;
        let none = BTreeSet::new();
        let mut acks = Vec::new();
        c.publish_many(&none, "before", 20, &mut acks).await;
        let old = c.leader().await;
        c.kill(old).await;
        let survivors = all_but(old);
        let s = *survivors.iter().next().expect("a survivor");
        c.wait_for_new_leader(s, old).await;
        let new = c.leader().await;
        assert_ne!(new, old);
        c.publish_many(&none, "after", 20, &mut acks).await;
        c.converge(&survivors).await;
        c.check(&survivors, &["room"], &acks);
        assert_eq!(c.members[&new].history("room").len(), 40);
    })
    .await;
}

/// A follower cut off from the others: the majority goes on acknowledging, the isolated
/// member acknowledges nothing and stores nothing new; once healed it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_partitioned_follower_acks_nothing_and_catches_up() {
    bounded(async {
        let c = Cluster::voters(&[1, 2, 3]).await;
        let mut acks = Vec::new();
        c.publish_many(&BTreeSet::new(), "before", 10, &mut acks)
            .await;
        let leader = c.leader().await;
        let cut = if leader == 1 { 2 } else { 1 };
        c.converge(&ids(&[cut])).await;
        c.transport.isolate(cut);
        let cut_set = ids(&[cut]);
        c.publish_many(&cut_set, "during", 20, &mut acks).await;
        // The isolated member refuses (it is no leader and cannot become one), within a bound.
        let refused = tokio::time::timeout(
            Duration::from_secs(2),
            c.members[&cut].publish("room", "mallory", "minority", json!("x")),
        )
        .await;
        assert!(
            !matches!(refused, Ok(Ok(_))),
            "the isolated member acknowledged a publish: {refused:?}"
        );
        assert_eq!(
            c.members[&cut].history("room").len(),
            10,
            "nothing new reached it"
        );
        let majority = all_but(cut);
        c.converge(&majority).await;
        c.check(&majority, &["room"], &acks);
        c.heal_and_check(cut, &mut acks, 35, "the minority's publish was stored")
            .await;
    })
    .await;
}

/// The leader cut off from the others: its publish is never acknowledged (it cannot commit),
/// the majority elects a new leader and goes on; when healed, the old leader's uncommitted
/// entry is dropped and it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_partitioned_leader_acks_nothing() {
    bounded(async {
        let c = Cluster::voters(&[1, 2, 3]).await;
        let mut acks = Vec::new();
        c.publish_many(&BTreeSet::new(), "before", 10, &mut acks)
            .await;
        let old = c.leader().await;
        c.transport.isolate(old);
        let refused = c.members[&old]
            .publish("room", "mallory", "minority", json!("x"))
            .await;
        assert!(
            matches!(
                refused,
                Err(ReplicaError::NotCommitted(_) | ReplicaError::ForwardToLeader { .. })
            ),
            "the cut-off leader acknowledged a publish: {refused:?}"
        );
        let other = *all_but(old).iter().next().expect("a member");
        c.wait_for_new_leader(other, old).await;
        c.publish_many(&ids(&[old]), "during", 10, &mut acks).await;
        c.heal_and_check(
            old,
            &mut acks,
            25,
            "the cut-off leader's uncommitted publish was applied",
        )
        .await;
    })
    .await;
}

/// Rotation as a membership change: a 4th member joins as a learner and catches up from a
/// snapshot (the log before it is purged), becomes a voter, leadership leaves the oldest
/// member, which is removed. Nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_rotation_learner_snapshot_promote_remove_oldest() {
    bounded(async {
        let mut c = Cluster::voters(&[1, 2, 3]).await;
        let none = BTreeSet::new();
        let mut acks = Vec::new();
        c.publish_many(&none, "old", 30, &mut acks).await;
        acks.push(c.publish(&none, "other", "bob", "b0").await);
        // Snapshot and purge on the leader: the newcomer cannot get the first entries from
        // the log any more.
        let leader = c.leader().await;
        let upto = c.members[&leader]
            .snapshot_and_purge(WAIT)
            .await
            .expect("snapshot and purge");
        assert!(
            upto >= 31,
            "the snapshot covers the publishes (upto {upto})"
        );
        assert!(
            c.members[&leader]
                .metrics()
                .purged
                .is_some_and(|p| p.index >= upto),
            "the leader's log is purged"
        );

        let newcomer = c.start(4).await;
        c.members[&leader]
            .add_learner(4, addr(4), true)
            .await
            .expect("add learner");
        c.converge(&ids(&[4])).await;
        let m4 = newcomer.metrics();
        assert!(
            m4.snapshot.is_some_and(|s| s.index >= upto),
            "the learner caught up through the snapshot: {:?}",
            m4.snapshot
        );
        assert_eq!(newcomer.history("room").len(), 30);

        let leader = c.leader().await;
        c.members[&leader]
            .change_membership(ChangeMembers::Promote(ids(&[4])))
            .await
            .expect("promote");
        c.publish_many(&none, "mid", 10, &mut acks).await;

        // Leadership leaves the oldest member before it goes.
        let oldest = 1;
        if c.leader().await == oldest {
            let next = c.members[&oldest]
                .step_aside(WAIT)
                .await
                .expect("leadership moves");
            assert_ne!(next, oldest);
        }
        let leader = c.leader().await;
        assert_ne!(leader, oldest);
        c.members[&leader]
            .change_membership(ChangeMembers::Remove(ids(&[oldest])))
            .await
            .expect("remove the oldest");
        let voters = c.members[&leader]
            .wait_for(WAIT, "oldest removed", move |m| {
                !m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == oldest)
            })
            .await
            .expect("membership without the oldest");
        let voter_ids: BTreeSet<NodeId> =
            voters.membership_config.membership().voter_ids().collect();
        assert_eq!(voter_ids, ids(&[2, 3, 4]));
        c.kill(oldest).await;

        c.publish_many(&none, "new", 10, &mut acks).await;
        let ring = ids(&[2, 3, 4]);
        c.converge(&ring).await;
        c.check(&ring, &["room", "other"], &acks);
        assert_eq!(c.members[&4].history("room").len(), 50);
    })
    .await;
}

/// The same `(room, from, id)` twice: one message, one seq. The same id from another
/// identity is another message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_retry_is_idempotent() {
    bounded(async {
        let c = Cluster::voters(&[1, 2, 3]).await;
        let none = BTreeSet::new();
        let first = c.publish(&none, "room", "alice", "m1").await;
        let again = c.publish(&none, "room", "alice", "m1").await;
        assert_eq!(first.seq, 1);
        assert_eq!(again.seq, first.seq, "a retry gets the first seq");
        let next = c.publish(&none, "room", "alice", "m2").await;
        assert_eq!(next.seq, 2);
        let bob = c.publish(&none, "room", "bob", "m1").await;
        assert_eq!(bob.seq, 3, "another identity's m1 is another message");
        let all = ids(&[1, 2, 3]);
        c.converge(&all).await;
        c.check(&all, &["room"], &[first, next, bob]);
        assert_eq!(c.members[&2].history("room").len(), 3);
    })
    .await;
}

/// Bad input is refused with an error before anything is proposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_bad_publish_is_refused() {
    bounded(async {
        let c = Cluster::voters(&[1]).await;
        let r = &c.members[&1];
        let long = "x".repeat(MAX_ROOM_BYTES + 1);
        for (room, from, id) in [
            ("", "a", "1"),
            (long.as_str(), "a", "1"),
            ("room", "", "1"),
            ("room", "a", ""),
            ("room", "a\n", "1"),
        ] {
            assert!(
                matches!(
                    r.publish(room, from, id, json!(null)).await,
                    Err(ReplicaError::BadRequest { .. })
                ),
                "{room:?}/{from:?}/{id:?} accepted"
            );
        }
        assert!(r.rooms().is_empty());
        assert_eq!(
            r.publish("room", "a", "1", json!(1))
                .await
                .expect("publish"),
            1
        );
        // Initialising twice is an error, not a panic.
        assert!(r.initialize(BTreeMap::from([(1, addr(1))])).await.is_err());
    })
    .await;
}

/// The state machine alone: seqs per room, dedup, and a snapshot that reads back the same
/// and refuses inconsistent input.
#[test]
fn replica_room_logs_apply_and_snapshot() {
    let mut s = RoomLogs::new();
    let p = |room: &str, from: &str, id: &str| Command::Publish {
        room: room.into(),
        id: id.into(),
        from: from.into(),
        ts: 7,
        body: json!({ "id": id }),
    };
    assert_eq!(
        s.apply(&p("a", "x", "1")),
        Reply::Published {
            seq: 1,
            duplicate: false
        }
    );
    assert_eq!(
        s.apply(&p("b", "x", "1")),
        Reply::Published {
            seq: 1,
            duplicate: false
        }
    );
    assert_eq!(
        s.apply(&p("a", "x", "2")),
        Reply::Published {
            seq: 2,
            duplicate: false
        }
    );
    assert_eq!(
        s.apply(&p("a", "x", "1")),
        Reply::Published {
            seq: 1,
            duplicate: true
        }
    );
    assert_eq!(s.head("a"), 2);
    let bytes = s.to_snapshot().expect("snapshot");
    let back = RoomLogs::from_snapshot(&bytes).expect("read back");
    assert_eq!(back.history("a"), s.history("a"));
    assert_eq!(back.rooms(), vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(
        back.to_snapshot().expect("snapshot"),
        bytes,
        "same state, same bytes"
    );
    // The dedup index is rebuilt: a retry after a snapshot still gets its first seq.
    let mut back = back;
    assert_eq!(
        back.apply(&p("a", "x", "2")),
        Reply::Published {
            seq: 2,
            duplicate: true
        }
    );

    assert!(RoomLogs::from_snapshot(b"not json").is_err());
    let gap = br#"{"rooms":{"a":[{"seq":2,"from":"x","id":"1","ts":0,"body":null}]}}"#;
    assert!(matches!(
        RoomLogs::from_snapshot(gap),
        Err(SnapshotError::Inconsistent { .. })
    ));
    let twice = br#"{"rooms":{"a":[{"seq":1,"from":"x","id":"1","ts":0,"body":null},{"seq":2,"from":"x","id":"1","ts":0,"body":null}]}}"#;
    assert!(RoomLogs::from_snapshot(twice).is_err());
}

/// A member id is never reused: adding a member whose id is in use at another address is
/// refused (two launches that drew the same id cannot take each other's place), while adding
/// it again at its own address changes nothing (a retried join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_an_id_in_use_elsewhere_is_refused_and_a_retried_join_is_harmless() {
    bounded(async {
        let c = Cluster::voters(&[1, 2, 3]).await;
        let leader = &c.members[&c.leader().await];
        let before = leader.metrics().membership_config.log_id().map(|l| l.index);
        let taken = leader
            .add_learner(2, NodeAddr::http("inproc://somewhere-else"), false)
            .await;
        match taken {
            Err(ReplicaError::Membership(m)) => assert!(m.contains("in use"), "{m}"),
            other => panic!("an id in use at another address was accepted: {other:?}"),
        }
        leader
            .add_learner(2, addr(2), false)
            .await
            .expect("same address");
        let after = leader.metrics().membership_config.log_id().map(|l| l.index);
        assert_eq!(before, after, "no membership entry was written");
        assert_eq!(
            leader.metrics().membership_config.membership().get_node(&2),
            Some(&addr(2))
        );
    })
    .await;
}
