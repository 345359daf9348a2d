//! A replicated ring that renews itself (`--replicas N --lifetime L --launcher local|github`,
//! `protocol/replication.md`, "Rotation"): every member lives its own lifetime, starts its
//! successor as a *new member* a handoff lead before its end, waits until that member is a
//! voter, and then leaves (hands leadership over, has itself removed). The founding members
//! live staggered first lifetimes so that the ring renews one member at a time. The leader
//! also replaces a member that stopped answering ([`Replacement`]).
//!
//! The timing is [`MemberSchedule`] (pure, tested here); [`run`] drives one member through it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::replica::NodeMember;
use crate::lifecycle::{Launcher, LifecyclePlan, MemberLaunch, SuccessorRequest};
use crate::replica::NodeId;

/// When one member launches its successor and when it must be gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSchedule {
    /// This member's own lifetime, from its start.
    pub lifetime: Duration,
    /// When it launches its successor, from its start (`lifetime − lead`).
    pub launch_after: Duration,
    /// Where the host ends with the lifetime (GitHub Actions): when it leaves with or without a
    /// successor (`lifetime − margin`). A local host does not end: the member keeps
    /// relaunching until a successor joins.
    pub leave_by: Option<Duration>,
    /// The first wait for a launched successor to become a voter; doubles per attempt, up to 4×.
    pub successor_timeout: Duration,
}

impl MemberSchedule {
    /// The schedule of member `id` of a ring of `replicas` under `plan`; `None` when the plan
    /// launches nothing (no `--lifetime`, or `--launcher none`).
    ///
    /// Founding members (ids `1..=N`) live staggered first lifetimes: member `k` launches its
    /// successor at `(L − lead) × k / N`, so that the ring renews one member every
    /// `(L − lead) / N`; member `N` and every later member (a successor) lives the whole `L`.
    pub fn new(id: NodeId, replicas: usize, plan: &LifecyclePlan) -> Option<MemberSchedule> {
        let l = plan.lifetime?;
        if !plan.launches {
            return None;
        }
        let lead = plan.handoff_lead;
        let n = replicas.max(1) as u64;
        let lifetime = if (1..=n).contains(&id) {
            (l - lead).mul_f64(id as f64 / n as f64) + lead
        } else {
            l
        };
        Some(MemberSchedule {
            lifetime,
            launch_after: lifetime - lead,
            leave_by: plan
                .host_ends
                .then(|| lifetime.saturating_sub(plan.deadline_margin)),
            successor_timeout: plan.successor_timeout,
        })
    }

    /// The wait for the successor of launch `attempt` (from 1): the successor timeout,
    /// doubling per attempt, at most 4×.
    pub fn wait_for_attempt(&self, attempt: u32) -> Duration {
        self.successor_timeout * (1u32 << attempt.saturating_sub(1).min(2))
    }
}

/// A member id never used before in this ring: milliseconds since the Unix epoch × 1024 plus
/// 10 random bits. Below 2^53 (exact in JavaScript numbers) until the year 2248; two members
/// launched in the same millisecond collide with probability 1/1024, and the leader refuses a
/// `join` whose id is already a member at another address.
pub fn fresh_member_id(now_ms: u64) -> NodeId {
    now_ms * 1024 + rand::random_range(0..1024u64)
}

/// How a member's rotation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationEnd {
    /// Its successor (this member id) is a voter; it leaves the ring.
    HandedOver(NodeId),
    /// The ring removed it (the leader found it silent, or one too many): it stops without a
    /// successor.
    Removed,
    /// Its host was ending and no successor joined in time: it left without one.
    NoSuccessor,
    /// It was told to stop (SIGINT/SIGTERM): it left without a successor and abandoned the
    /// ones still starting.
    Stopped,
}

/// Where `run` gets what it needs; a trait so the schedule can be tested without processes.
#[async_trait::async_trait]
pub trait Ring: Send + Sync {
    /// This member's id.
    fn id(&self) -> NodeId;
    /// The voters with their base URLs.
    fn voters(&self) -> Vec<(NodeId, String)>;
    /// Waits until one of `ids` is a voter (`None`: not within `within`).
    async fn wait_for_any_voter(&self, ids: &[NodeId], within: Duration) -> Option<NodeId>;
    /// The voters as launch contacts (`ID=route` pairs; this member last).
    fn contacts(&self) -> Vec<(NodeId, String)> {
        let me = self.id();
        let mut v = self.voters();
        v.sort_by_key(|(id, _)| *id == me);
        v
    }
    /// Whether this member is still a voter.
    fn is_voter(&self) -> bool {
        let me = self.id();
        self.voters().iter().any(|(v, _)| *v == me)
    }
}

/// Resolves once `ring` no longer lists this member as a voter (checked every 250 ms).
async fn removed(ring: &dyn Ring) {
    while ring.is_voter() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[async_trait::async_trait]
impl Ring for NodeMember {
    fn id(&self) -> NodeId {
        NodeMember::id(self)
    }
    fn voters(&self) -> Vec<(NodeId, String)> {
        NodeMember::voters(self)
    }
    fn contacts(&self) -> Vec<(NodeId, String)> {
        NodeMember::contacts(self)
    }
    async fn wait_for_any_voter(&self, ids: &[NodeId], within: Duration) -> Option<NodeId> {
        NodeMember::wait_for_any_voter(self, ids, within).await
    }
}

/// Lives `schedule` for member `ring`: waits until the launch time,
/// launches successors (each attempt a fresh member id, joining through the live voters) until
/// one of them is a voter, and returns. The caller then leaves the ring ([`NodeMember::leave`]).
/// `stop` resolving ends it early ([`RotationEnd::Stopped`], after abandoning what was
/// launched).
pub async fn run(
    ring: &dyn Ring,
    schedule: MemberSchedule,
    launcher: Arc<dyn Launcher>,
    peer_id: &str,
    started: Instant,
    stop: impl std::future::Future<Output = ()>,
) -> RotationEnd {
    tokio::pin!(stop);
    tokio::select! {
        () = tokio::time::sleep_until(started + schedule.launch_after) => {}
        () = &mut stop => return RotationEnd::Stopped,
        () = removed(ring) => return RotationEnd::Removed,
    }
    let leave_by = schedule.leave_by.map(|d| started + d);
    let mut launched: Vec<NodeId> = Vec::new();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let id = fresh_member_id(crate::replica::system_now_ms());
        let me = ring.id();
        let join = ring.contacts();
        let request = SuccessorRequest {
            generation: 0,
            predecessor_peer_id: peer_id.to_owned(),
            predecessor_endpoints: Vec::new(),
            attempt,
            member: Some(MemberLaunch {
                id,
                join,
                founding: false,
            }),
        };
        match launcher.launch(&request).await {
            Ok(()) => {
                launched.push(id);
                println_flush(&format!(
                    "replica member {me} launched successor {id} (attempt {attempt})"
                ));
            }
            Err(e) => {
                tracing::warn!(member = me, attempt, error = %e, "replica: successor not launched")
            }
        }
        let mut wait = schedule.wait_for_attempt(attempt);
        if let Some(by) = leave_by {
            wait = wait.min(by.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            joined = ring.wait_for_any_voter(&launched, wait) => {
                if let Some(s) = joined {
                    return RotationEnd::HandedOver(s);
                }
            }
            () = &mut stop => {
                launcher.abandon().await;
                return RotationEnd::Stopped;
            }
            () = removed(ring) => return RotationEnd::Removed,
        }
        if leave_by.is_some_and(|by| Instant::now() >= by) {
            // A successor launched a moment ago may still join: the ring then has N again.
            return RotationEnd::NoSuccessor;
        }
        tracing::warn!(
            member = me,
            attempt,
            "replica: no successor joined in time; launching another"
        );
    }
}

/// The leader's watch over the other voters: one that has not answered a `status` call for
/// `dead_after` is replaced by a new member (launched like a successor), then removed once the
/// new one is a voter. A ring with more live voters than `--replicas` for longer than a
/// rotation's overlap (`surplus_after`; e.g. a successor launched twice joined twice, or a
/// member killed while it was leaving was replaced as well as succeeded) loses its
/// newest one (the highest id: ids grow with time), which stops when it sees itself removed.
/// Only the leader acts; a new leader starts its clocks afresh.
#[derive(Debug, Clone, Copy)]
pub struct Replacement {
    /// How long a voter may stay silent before it is replaced.
    pub dead_after: Duration,
    /// How often the voters are asked.
    pub probe_every: Duration,
    /// How long a replacement may take to become a voter before another is launched.
    pub join_within: Duration,
    /// How long more voters than `--replicas` may answer before the newest is removed: longer
    /// than a rotation's overlap (from the successor's promotion to its predecessor's removal).
    pub surplus_after: Duration,
}

/// Runs [`Replacement`] for `member` of a ring of `replicas` until `stop` resolves.
pub async fn replace_dead_members(
    member: &NodeMember,
    replicas: usize,
    policy: Replacement,
    launcher: Arc<dyn Launcher>,
    peer_id: &str,
    stop: impl std::future::Future<Output = ()>,
) {
    use std::collections::HashMap;
    tokio::pin!(stop);
    // Last time each voter answered (or when this member began to lead).
    let mut last_seen: HashMap<NodeId, Instant> = HashMap::new();
    // Silent member → (its replacement, when launched).
    let mut pending: HashMap<NodeId, (NodeId, Instant)> = HashMap::new();
    // Since when more voters than `replicas` answer.
    let mut surplus_since: Option<Instant> = None;
    let mut was_leader = false;
    let mut tick = tokio::time::interval(policy.probe_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = &mut stop => return,
        }
        let leader = member.is_leader();
        if !leader {
            was_leader = false;
            continue;
        }
        let now = Instant::now();
        if !was_leader {
            last_seen.clear();
            pending.clear();
            surplus_since = None;
            was_leader = true;
        }
        let me = member.id();
        let voters = member.voters();
        last_seen.retain(|id, _| voters.iter().any(|(v, _)| v == id));
        pending.retain(|id, _| voters.iter().any(|(v, _)| v == id));
        let mut dead = Vec::new();
        for (id, _) in voters.iter().filter(|(v, _)| *v != me) {
            let seen = *last_seen.entry(*id).or_insert(now);
            if member
                .answers(*id, policy.probe_every.max(Duration::from_secs(2)))
                .await
            {
                last_seen.insert(*id, Instant::now());
            } else if now.duration_since(seen) >= policy.dead_after {
                dead.push(*id);
            }
        }
        let live = voters.len() - dead.len();
        if live > replicas && dead.is_empty() {
            let since = *surplus_since.get_or_insert(now);
            let newest = voters.iter().map(|(v, _)| *v).filter(|v| *v != me).max();
            if since.elapsed() >= policy.surplus_after
                && let Some(newest) = newest
                && member.is_settled_voter(newest)
            {
                match member.remove(newest).await {
                    Ok(()) => {
                        surplus_since = None;
                        println_flush(&format!(
                            "replica member {me} removed member {newest}: {live} voters answer, \
                             --replicas is {replicas}"
                        ));
                    }
                    Err(f) => {
                        tracing::debug!(member = newest, failure = ?f, "replica: not removed yet")
                    }
                }
            }
        } else {
            surplus_since = None;
        }
        for gone in dead {
            // One replacement per silent member: launched once, given `join_within` to join.
            let replacement = match pending.get(&gone) {
                Some(&(id, at)) if at.elapsed() < policy.join_within => id,
                _ => {
                    tracing::warn!(
                        leader = me,
                        member = gone,
                        silent_for = ?policy.dead_after,
                        "replica: a voter stopped answering; replacing it"
                    );
                    let live: Vec<(NodeId, String)> = member
                        .contacts()
                        .into_iter()
                        .filter(|(v, _)| *v != gone)
                        .collect();
                    let id = fresh_member_id(crate::replica::system_now_ms());
                    let request = SuccessorRequest {
                        generation: 0,
                        predecessor_peer_id: peer_id.to_owned(),
                        predecessor_endpoints: Vec::new(),
                        attempt: 1,
                        member: Some(MemberLaunch {
                            id,
                            join: live,
                            founding: false,
                        }),
                    };
                    if let Err(e) = launcher.launch(&request).await {
                        tracing::warn!(error = %e, "replica: replacement not launched");
                        continue;
                    }
                    println_flush(&format!(
                        "replica member {me} launched member {id} to replace silent member {gone}"
                    ));
                    pending.insert(gone, (id, Instant::now()));
                    id
                }
            };
            // Removed once the replacement is a voter and the membership has settled (one
            // change at a time); until then, asked again at the next probe.
            if !member.is_settled_voter(replacement) {
                continue;
            }
            match member.remove(gone).await {
                Ok(()) => {
                    pending.remove(&gone);
                    last_seen.remove(&gone);
                    println_flush(&format!("replica member {me} removed silent member {gone}"));
                }
                Err(f) => tracing::debug!(member = gone, failure = ?f, "replica: not removed yet"),
            }
        }
    }
}

fn println_flush(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{LaunchError, LauncherKind, LifecycleArgs};
    use std::sync::Mutex;

    fn plan(lifetime: &str, launcher: LauncherKind) -> LifecyclePlan {
        LifecycleArgs {
            lifetime: Some(crate::lifecycle::parse_duration(lifetime).unwrap()),
            launcher,
            ..Default::default()
        }
        .plan()
        .unwrap()
    }

    #[test]
    fn founding_members_are_staggered_and_successors_live_the_whole_lifetime() {
        let p = plan("6h", LauncherKind::Github);
        // Lead 15 min (25%, at most 15 min), margin 2 min.
        let at = |id| MemberSchedule::new(id, 3, &p).unwrap();
        let m = |x: u64| Duration::from_secs(x * 60);
        assert_eq!(at(1).launch_after, m(115));
        assert_eq!(at(2).launch_after, m(230));
        assert_eq!(at(3).launch_after, m(345));
        assert_eq!(at(3).lifetime, m(360));
        assert_eq!(at(1).lifetime, m(130));
        assert_eq!(at(1).leave_by, Some(m(128)));
        // A successor: the whole lifetime, whatever its id.
        assert_eq!(at(4), at(3));
        assert_eq!(at(fresh_member_id(1_800_000_000_000)), at(3));
        // One member: the single node's own schedule.
        assert_eq!(MemberSchedule::new(1, 1, &p).unwrap().launch_after, m(345));
        // Nothing to launch with: no schedule.
        assert_eq!(
            MemberSchedule::new(1, 3, &plan("6h", LauncherKind::None)),
            None
        );
        // A local host does not end: no leave-by.
        let local = plan("20s", LauncherKind::Local);
        assert_eq!(MemberSchedule::new(2, 3, &local).unwrap().leave_by, None);
        let s = at(3);
        assert_eq!(s.wait_for_attempt(1), s.successor_timeout);
        assert_eq!(s.wait_for_attempt(2), s.successor_timeout * 2);
        assert_eq!(s.wait_for_attempt(9), s.successor_timeout * 4);
    }

    #[test]
    fn fresh_ids_are_exact_in_javascript_and_grow_with_time() {
        let now = 1_800_000_000_000u64;
        let a = fresh_member_id(now);
        let b = fresh_member_id(now + 1);
        assert!(a < b);
        assert!(a < (1 << 53));
        assert!(fresh_member_id(8_796_093_022_207) < (1 << 53), "until 2248");
    }

    /// A ring where launched members join after `join_delay`, unless `refuse` says otherwise.
    struct FakeRing {
        voters: Mutex<Vec<(NodeId, String)>>,
        join_delay: Duration,
    }

    #[async_trait::async_trait]
    impl Ring for FakeRing {
        fn id(&self) -> NodeId {
            1
        }
        fn voters(&self) -> Vec<(NodeId, String)> {
            self.voters.lock().unwrap().clone()
        }
        async fn wait_for_any_voter(&self, ids: &[NodeId], within: Duration) -> Option<NodeId> {
            let deadline = Instant::now() + within;
            loop {
                if let Some((v, _)) = self
                    .voters
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(v, _)| ids.contains(v))
                {
                    return Some(*v);
                }
                if Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }

    /// Records launches; the `n`-th launch's member joins `ring` after `ring.join_delay` when
    /// `joins(n)`.
    struct FakeLauncher {
        ring: Arc<FakeRing>,
        launches: Mutex<Vec<(Instant, SuccessorRequest)>>,
        joins: fn(usize) -> bool,
        abandoned: Mutex<bool>,
    }

    #[async_trait::async_trait]
    impl Launcher for FakeLauncher {
        async fn launch(&self, r: &SuccessorRequest) -> Result<(), LaunchError> {
            let n = {
                let mut l = self.launches.lock().unwrap();
                l.push((Instant::now(), r.clone()));
                l.len()
            };
            if (self.joins)(n) {
                let ring = self.ring.clone();
                let id = r.member.as_ref().unwrap().id;
                tokio::spawn(async move {
                    tokio::time::sleep(ring.join_delay).await;
                    ring.voters
                        .lock()
                        .unwrap()
                        .push((id, format!("http://m{id}")));
                });
            }
            Ok(())
        }
        fn name(&self) -> &'static str {
            "fake"
        }
        async fn abandon(&self) {
            *self.abandoned.lock().unwrap() = true;
        }
    }

    fn fixture(voters: usize, joins: fn(usize) -> bool) -> (Arc<FakeRing>, Arc<FakeLauncher>) {
        let ring = Arc::new(FakeRing {
            voters: Mutex::new(
                (1..=voters as u64)
                    .map(|i| (i, format!("http://m{i}")))
                    .collect(),
            ),
            join_delay: Duration::from_secs(3),
        });
        let launcher = Arc::new(FakeLauncher {
            ring: ring.clone(),
            launches: Mutex::default(),
            joins,
            abandoned: Mutex::new(false),
        });
        (ring, launcher)
    }

    fn schedule(host_ends: bool) -> MemberSchedule {
        MemberSchedule {
            lifetime: Duration::from_secs(100),
            launch_after: Duration::from_secs(75),
            leave_by: host_ends.then_some(Duration::from_secs(90)),
            successor_timeout: Duration::from_secs(5),
        }
    }

    /// Runs the member of `ring` from now on; returns how it ended and when it started.
    async fn rotate(
        ring: &Arc<FakeRing>,
        launcher: &Arc<FakeLauncher>,
        host_ends: bool,
        stop: impl std::future::Future<Output = ()>,
    ) -> (RotationEnd, Instant) {
        let t0 = Instant::now();
        let launcher: Arc<dyn Launcher> = launcher.clone();
        let end = run(
            ring.as_ref(),
            schedule(host_ends),
            launcher,
            "peer",
            t0,
            stop,
        )
        .await;
        (end, t0)
    }

    #[tokio::test(start_paused = true)]
    async fn launches_at_its_time_through_the_live_voters_and_hands_over_once_joined() {
        let (ring, launcher) = fixture(3, |_| true);
        let (end, t0) = rotate(&ring, &launcher, true, std::future::pending()).await;
        let launches = launcher.launches.lock().unwrap();
        assert_eq!(launches.len(), 1);
        let (at, req) = &launches[0];
        assert_eq!(at.duration_since(t0), Duration::from_secs(75));
        let m = req.member.as_ref().unwrap();
        assert_eq!(end, RotationEnd::HandedOver(m.id));
        // Join through the others first, then this member.
        assert_eq!(
            m.join.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [2, 3, 1]
        );
        assert!(!m.founding);
    }

    #[tokio::test(start_paused = true)]
    async fn relaunches_with_a_fresh_id_and_doubling_waits_until_one_joins() {
        // The first two launches never join; the third does.
        let (ring, launcher) = fixture(3, |n| n == 3);
        let (end, t0) = rotate(&ring, &launcher, false, std::future::pending()).await;
        let launches = launcher.launches.lock().unwrap();
        let times: Vec<u64> = launches
            .iter()
            .map(|(at, _)| at.duration_since(t0).as_secs())
            .collect();
        // 75, then after 5 s, then after 10 s.
        assert_eq!(times, [75, 80, 90]);
        let ids: std::collections::BTreeSet<NodeId> = launches
            .iter()
            .map(|(_, r)| r.member.as_ref().unwrap().id)
            .collect();
        assert_eq!(ids.len(), 3, "every attempt has its own id");
        assert_eq!(
            end,
            RotationEnd::HandedOver(launches[2].1.member.as_ref().unwrap().id)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_that_ends_leaves_by_its_deadline_without_a_successor() {
        let (ring, launcher) = fixture(3, |_| false);
        let (end, t0) = rotate(&ring, &launcher, true, std::future::pending()).await;
        assert_eq!(end, RotationEnd::NoSuccessor);
        assert_eq!(t0.elapsed(), Duration::from_secs(90));
        // 75, 80, (wait 10 s, cut at 90).
        assert_eq!(launcher.launches.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_member_stops_and_a_stop_abandons_the_launches() {
        let (ring, launcher) = fixture(3, |_| true);
        let gone = ring.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            gone.voters.lock().unwrap().retain(|(id, _)| *id != 1);
        });
        let (end, t0) = rotate(&ring, &launcher, true, std::future::pending()).await;
        assert_eq!(end, RotationEnd::Removed);
        assert!(t0.elapsed() < Duration::from_secs(31));
        assert!(launcher.launches.lock().unwrap().is_empty());

        let (ring, launcher) = fixture(3, |_| false);
        let (end, t0) = rotate(
            &ring,
            &launcher,
            false,
            tokio::time::sleep(Duration::from_secs(77)),
        )
        .await;
        assert_eq!(end, RotationEnd::Stopped);
        assert_eq!(t0.elapsed(), Duration::from_secs(77));
        assert!(*launcher.abandoned.lock().unwrap());
    }
}
