//! [`Lifecycle`]: when to launch the successor, relaunch, hand off and exit. Sans-IO.
//!
//! # Call order
//! Feed [`Lifecycle::handle`] with what happened and [`Lifecycle::handle_timeout`] when
//! [`Lifecycle::poll_timeout`] has passed; after either, drain [`Lifecycle::poll_action`]
//! until it returns `None`. The machine never reads the clock.
//!
//! # States
//! ```text
//!  Joining ──Joined──► Serving ──launch_at──► Launching ──result──► AwaitingSuccessor
//!                         ▲                       ▲                     │    │
//!                         │                       └──retry (backoff)────┘    │ SuccessorConnected
//!                                                                            ▼
//!  Exited ◄──drain_until── Draining ◄──ClientsMoved── HandingOff (──CutOver──► cut_over)
//!                                                       │ HandoffAborted → AwaitingSuccessor
//!  Joining ──Superseded──► Exited (another successor of this generation is primary)
//! ```
//! From any state: `Shutdown` → Exited; the hard deadline (start + lifetime) → Exited; the
//! deadline margin passes without a handoff under way → Exited (no successor).
//!
//! # Liveness rules (`protocol/handoff.md`, "Liveness")
//! 1. A node exits without a successor only when told to stop (`Shutdown`) or when its host
//!    is about to end (the deadline margin, the hard deadline, `HostEnding`); the driver then
//!    stops writes and leaves a final backup. A host that does not end with the lifetime (a
//!    local process, [`LifecyclePlan::host_ends`] false) has no hard deadline: the node keeps
//!    serving and relaunching (backoff up to 4 successor timeouts) until a successor takes
//!    over.
//! 2. A successor that joins late (its predecessor gone, state recovered) plans its own
//!    successor from its own remaining time: it launches at once if the launch time has
//!    passed, and never gives up before one expected start plus one successor timeout
//!    after joining (only the hard deadline can end it sooner).
//! 3. Of two successors for one generation exactly one becomes primary; the other is told
//!    `Superseded` and exits cleanly, launching nothing.
//! 4. Waits scale with the lifetime and the launcher's expected start
//!    ([`LifecyclePlan::expected_start`]): a relaunch never comes before a start could finish.
//! 5. A serving node that sees a newer generation published while no handoff of its own is
//!    under way steps down (`NewerGenerationPublished` → `Fenced`): a successor gave up on it
//!    and recovered; two primaries must not both acknowledge writes. The driver checks the
//!    published record every [`LifecyclePlan::fence_interval`].

use super::LifecyclePlan;
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime};

/// Where a node is in its life (shown in `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LifecycleState {
    /// A successor taking over its predecessor's state; not yet serving.
    Joining,
    /// Serving; the successor is not due yet.
    Serving,
    /// The launcher was asked to start the successor (attempt number from 1).
    Launching {
        /// Launch attempt, from 1.
        attempt: u32,
    },
    /// Launched; waiting for the successor to connect and authenticate.
    AwaitingSuccessor {
        /// Launch attempt, from 1.
        attempt: u32,
    },
    /// An authenticated successor is receiving the state.
    HandingOff {
        /// Launch attempt, from 1.
        attempt: u32,
        /// Writes are refused; the final tail is on its way.
        cut_over: bool,
    },
    /// Clients were told to move; the node serves `moved` until the drain timeout.
    Draining,
    /// The node is done.
    Exited {
        /// Why.
        reason: ExitReason,
    },
}

impl LifecycleState {
    /// A short name: `serving`, `awaiting_successor`, ...
    pub fn name(&self) -> &'static str {
        match self {
            LifecycleState::Joining => "joining",
            LifecycleState::Serving => "serving",
            LifecycleState::Launching { .. } => "launching",
            LifecycleState::AwaitingSuccessor { .. } => "awaiting_successor",
            LifecycleState::HandingOff { .. } => "handing_off",
            LifecycleState::Draining => "draining",
            LifecycleState::Exited { .. } => "exited",
        }
    }
}

/// Why a node exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// Stopped by the operator (Ctrl-C / SIGTERM).
    Shutdown,
    /// Handed over and drained: the normal end.
    HandedOff,
    /// The deadline margin passed without a successor (the state is in the backup store).
    NoSuccessor,
    /// The hard deadline came (a handoff did not finish in time), or the host is ending.
    HardDeadline,
    /// Another successor of this generation became primary first; this node never served
    /// and stops cleanly (liveness rule 3).
    Superseded,
    /// A newer generation was published by a node that did not take over from this one (it
    /// gave up on it and recovered from a backup): this node stepped down, sending its
    /// clients there (liveness rule 5, the split-brain fence).
    Fenced,
}

/// What happened, fed to [`Lifecycle::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleInput {
    /// (Successor) the predecessor's state is ours, or was restored from a backup.
    Joined,
    /// The launcher accepted the launch request.
    LaunchSucceeded,
    /// The launcher failed (message safe to log).
    LaunchFailed(String),
    /// A successor connected and passed authentication.
    SuccessorConnected,
    /// The successor's connection broke before the end and was not resumed in time.
    HandoffAborted,
    /// Writes are now refused: the predecessor entered its final phase.
    CutOver,
    /// Every client was told `moved`.
    ClientsMoved,
    /// Operator asked to stop.
    Shutdown,
    /// (Successor) another successor of this generation is already primary.
    Superseded,
    /// The host is about to end (e.g. the run is being cancelled): stop as at the hard
    /// deadline, leaving a final backup.
    HostEnding,
    /// A newer generation is published while this node serves and no handoff is under way:
    /// another node is primary (rule 5); step down.
    NewerGenerationPublished,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleAction {
    /// Ask the launcher to start the successor (report back with `LaunchSucceeded` /
    /// `LaunchFailed`).
    Launch {
        /// Attempt number, from 1.
        attempt: u32,
    },
    /// Stop the node (write a final backup first unless handed off).
    Exit(ExitReason),
}

/// The lifecycle as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LifecycleStatus {
    /// Current state.
    #[serde(flatten)]
    pub state: LifecycleState,
    /// This node's generation.
    pub generation: u64,
    /// When the node started.
    #[serde(with = "crate::discovery::rfc3339")]
    pub started_at: SystemTime,
    /// Hard deadline (`null`: none).
    #[serde(with = "crate::discovery::rfc3339_opt")]
    pub expires_at: Option<SystemTime>,
    /// When the successor is (or was) due to be launched (`null`: never).
    #[serde(with = "crate::discovery::rfc3339_opt")]
    pub next_rotation_at: Option<SystemTime>,
    /// Launch attempts so far.
    pub launch_attempts: u32,
    /// Last launch error, if any.
    pub last_launch_error: Option<String>,
}

/// The sans-IO lifecycle of one node.
#[derive(Debug)]
pub struct Lifecycle {
    /// Timing settings.
    plan: LifecyclePlan,
    /// This node's generation (for status).
    generation: u64,
    /// Start instant and wall time (wall time only for status).
    #[cfg_attr(not(test), allow(dead_code))]
    started: Instant,
    started_wall: SystemTime,
    /// End of the lifetime: start + lifetime (for status and the launch time).
    deadline: Option<Instant>,
    /// The hard deadline the node exits at: the end of the lifetime when the host ends
    /// then (`LifecyclePlan::host_ends`); `None` for a local ring, whose host does not end:
    /// there the node keeps serving and relaunching until a successor takes over (rule 1).
    hard_deadline: Option<Instant>,
    /// When the successor is launched.
    launch_at: Option<Instant>,
    /// Without a handoff under way by then, exit.
    give_up_at: Option<Instant>,
    /// Next relaunch (AwaitingSuccessor) or end of drain (Draining).
    timer: Option<Instant>,
    state: LifecycleState,
    attempts: u32,
    last_launch_error: Option<String>,
    /// Pending actions.
    actions: std::collections::VecDeque<LifecycleAction>,
}

impl Lifecycle {
    /// A lifecycle starting at `now` (`now_wall` is the same moment in wall time, for
    /// status only). A successor starts in `Joining`, others in `Serving`.
    pub fn new(
        plan: LifecyclePlan,
        generation: u64,
        successor: bool,
        now: Instant,
        now_wall: SystemTime,
    ) -> Self {
        let deadline = plan.lifetime.map(|l| now + l);
        let launch_at = deadline
            .filter(|_| plan.launches)
            .map(|d| d - plan.handoff_lead);
        let hard_deadline = deadline.filter(|_| plan.host_ends || !plan.launches);
        let give_up_at = hard_deadline.map(|d| d - plan.deadline_margin);
        Lifecycle {
            plan,
            generation,
            started: now,
            started_wall: now_wall,
            deadline,
            hard_deadline,
            launch_at,
            give_up_at,
            timer: None,
            state: if successor {
                LifecycleState::Joining
            } else {
                LifecycleState::Serving
            },
            attempts: 0,
            last_launch_error: None,
            actions: Default::default(),
        }
    }

    /// Current state.
    pub fn state(&self) -> LifecycleState {
        self.state
    }

    /// The hard deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// When the successor is due to be launched, if ever.
    pub fn launch_at(&self) -> Option<Instant> {
        self.launch_at
    }

    /// Whether the node is done.
    pub fn is_exited(&self) -> bool {
        matches!(self.state, LifecycleState::Exited { .. })
    }

    /// Status for `/status`; `now`/`now_wall` map instants to wall time.
    pub fn status(&self, now: Instant, now_wall: SystemTime) -> LifecycleStatus {
        let wall = |t: Instant| {
            if t >= now {
                now_wall + (t - now)
            } else {
                now_wall - (now - t)
            }
        };
        LifecycleStatus {
            state: self.state,
            generation: self.generation,
            started_at: self.started_wall,
            expires_at: self.deadline.map(wall),
            next_rotation_at: self.launch_at.map(wall),
            launch_attempts: self.attempts,
            last_launch_error: self.last_launch_error.clone(),
        }
    }

    /// Next instant at which [`Lifecycle::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        use LifecycleState::*;
        let mut t = self.hard_deadline;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        match self.state {
            Exited { .. } => return None,
            Serving => {
                consider(self.launch_at);
                consider(self.give_up_at);
            }
            Launching { .. } => consider(self.give_up_at),
            AwaitingSuccessor { .. } => {
                consider(self.timer);
                consider(self.give_up_at);
            }
            Draining => consider(self.timer),
            Joining | HandingOff { .. } => {}
        }
        t
    }

    /// Next action for the driver.
    pub fn poll_action(&mut self) -> Option<LifecycleAction> {
        self.actions.pop_front()
    }

    fn exit(&mut self, reason: ExitReason) {
        if self.is_exited() {
            return;
        }
        tracing::info!(?reason, generation = self.generation, "lifecycle: exit");
        self.state = LifecycleState::Exited { reason };
        self.timer = None;
        self.actions.push_back(LifecycleAction::Exit(reason));
    }

    fn launch(&mut self) {
        self.attempts += 1;
        tracing::info!(
            attempt = self.attempts,
            generation = self.generation,
            "lifecycle: launching successor"
        );
        self.state = LifecycleState::Launching {
            attempt: self.attempts,
        };
        self.actions.push_back(LifecycleAction::Launch {
            attempt: self.attempts,
        });
    }

    /// Time has passed: launches, relaunches, ends the drain, enforces the deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        use LifecycleState::*;
        if self.is_exited() {
            return;
        }
        if self.hard_deadline.is_some_and(|d| now >= d) {
            let reason = if self.state == Draining {
                ExitReason::HandedOff
            } else {
                ExitReason::HardDeadline
            };
            return self.exit(reason);
        }
        let gave_up = self.give_up_at.is_some_and(|g| now >= g);
        match self.state {
            Serving | Launching { .. } | AwaitingSuccessor { .. } if gave_up => {
                self.exit(ExitReason::NoSuccessor)
            }
            Serving if self.launch_at.is_some_and(|t| now >= t) => self.launch(),
            AwaitingSuccessor { .. } if self.timer.is_some_and(|t| now >= t) => self.launch(),
            Draining if self.timer.is_some_and(|t| now >= t) => self.exit(ExitReason::HandedOff),
            _ => {}
        }
    }

    fn relaunch_wait(&self, failed: bool) -> Duration {
        let k = 1u32 << self.attempts.saturating_sub(1).min(2);
        if failed {
            (Duration::from_secs(1) * k).min(self.plan.successor_timeout)
        } else {
            self.plan.successor_timeout * k
        }
    }

    /// Something happened.
    pub fn handle(&mut self, now: Instant, input: LifecycleInput) {
        use LifecycleState::*;
        if self.is_exited() {
            return;
        }
        match (self.state, input) {
            (_, LifecycleInput::Shutdown) => self.exit(ExitReason::Shutdown),
            (_, LifecycleInput::HostEnding) => self.exit(ExitReason::HardDeadline),
            (Joining, LifecycleInput::Superseded) => self.exit(ExitReason::Superseded),
            (
                Serving | Launching { .. } | AwaitingSuccessor { .. },
                LifecycleInput::NewerGenerationPublished,
            ) => self.exit(ExitReason::Fenced),
            (Joining, LifecycleInput::Joined) => {
                self.state = Serving;
                // Rule 2: a late join never makes the node give up at once; the launch
                // (already due, if so) gets one start and one successor timeout.
                if let Some(g) = self.give_up_at {
                    let floor = now + self.plan.expected_start + self.plan.successor_timeout;
                    let floor = self.hard_deadline.map_or(floor, |d| floor.min(d));
                    self.give_up_at = Some(g.max(floor));
                }
            }
            (Launching { attempt }, LifecycleInput::LaunchSucceeded) => {
                self.state = AwaitingSuccessor { attempt };
                self.timer = Some(now + self.relaunch_wait(false));
            }
            (Launching { attempt }, LifecycleInput::LaunchFailed(e)) => {
                tracing::warn!(attempt, error = %e, "lifecycle: launching the successor failed");
                self.last_launch_error = Some(e);
                self.state = AwaitingSuccessor { attempt };
                self.timer = Some(now + self.relaunch_wait(true));
            }
            (
                Serving | Launching { .. } | AwaitingSuccessor { .. },
                LifecycleInput::SuccessorConnected,
            ) => {
                self.state = HandingOff {
                    attempt: self.attempts,
                    cut_over: false,
                };
                self.timer = None;
            }
            (HandingOff { attempt, .. }, LifecycleInput::HandoffAborted) => {
                // Give the same successor time to resume before launching another.
                self.state = AwaitingSuccessor { attempt };
                self.timer = Some(now + self.plan.successor_timeout);
            }
            (HandingOff { attempt, .. }, LifecycleInput::CutOver) => {
                self.state = HandingOff {
                    attempt,
                    cut_over: true,
                };
            }
            (HandingOff { .. } | AwaitingSuccessor { .. }, LifecycleInput::ClientsMoved) => {
                self.state = Draining;
                let until = now + self.plan.drain_timeout;
                self.timer = Some(self.hard_deadline.map_or(until, |d| until.min(d)));
            }
            (state, input) => {
                tracing::debug!(?state, ?input, "lifecycle: input ignored in this state");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LifecycleAction::*;

    fn plan(lifetime_s: u64, launches: bool) -> LifecyclePlan {
        LifecyclePlan {
            lifetime: Some(Duration::from_secs(lifetime_s)),
            handoff_lead: Duration::from_secs(lifetime_s / 4),
            deadline_margin: Duration::from_secs(lifetime_s / 10),
            successor_timeout: Duration::from_secs(lifetime_s / 8),
            expected_start: Duration::from_secs(1),
            host_ends: true,
            drain_timeout: Duration::from_secs(1),
            launches,
            fence_interval: Duration::from_secs(1),
        }
    }

    /// Runs the machine's timers until `until`, returning (time, action) pairs.
    fn run_until(l: &mut Lifecycle, until: Instant) -> Vec<(Duration, LifecycleAction)> {
        let t0 = l.started;
        let mut out = Vec::new();
        while let Some(t) = l.poll_timeout() {
            if t > until {
                break;
            }
            l.handle_timeout(t);
            while let Some(a) = l.poll_action() {
                out.push((t - t0, a));
            }
        }
        out
    }

    /// Runs the machine's timers until `until`, answering every launch with `report`;
    /// returns the launches (milliseconds since the start, attempt), the exits and the
    /// time of the last timer handled.
    fn run_launching(
        l: &mut Lifecycle,
        until: Instant,
        report: LifecycleInput,
    ) -> (Vec<(u64, u32)>, Vec<ExitReason>, Instant) {
        let t0 = l.started;
        let (mut launches, mut exits, mut now) = (Vec::new(), Vec::new(), t0);
        while let Some(t) = l.poll_timeout() {
            if t > until {
                break;
            }
            now = t;
            l.handle_timeout(t);
            while let Some(a) = l.poll_action() {
                match a {
                    Launch { attempt } => {
                        launches.push(((t - t0).as_millis() as u64, attempt));
                        l.handle(t, report.clone());
                    }
                    Exit(r) => exits.push(r),
                }
            }
        }
        (launches, exits, now)
    }

    /// Runs the machine's timers (up to 100 s after `at_s`) and asserts that the only
    /// action left is `Exit(reason)`, `at_s` seconds after the start.
    fn assert_exits_at(l: &mut Lifecycle, at_s: u64, reason: ExitReason) {
        let acts = run_until(l, l.started + Duration::from_secs(at_s + 100));
        assert_eq!(acts, vec![(Duration::from_secs(at_s), Exit(reason))]);
    }

    /// Reports the launch at `t` as succeeded and the successor as connected.
    fn successor_connects(l: &mut Lifecycle, t: Instant) {
        l.handle(t, LifecycleInput::LaunchSucceeded);
        l.handle(t, LifecycleInput::SuccessorConnected);
    }

    #[test]
    fn normal_rotation() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(plan(40, true), 3, false, t0, SystemTime::now());
        assert_eq!(l.state(), LifecycleState::Serving);
        assert_eq!(l.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        let acts = run_until(&mut l, t0 + Duration::from_secs(31));
        assert_eq!(acts, vec![(Duration::from_secs(30), Launch { attempt: 1 })]);
        successor_connects(&mut l, t0 + Duration::from_secs(31));
        assert_eq!(l.state().name(), "handing_off");
        assert_eq!(
            l.poll_timeout(),
            Some(t0 + Duration::from_secs(40)),
            "only the hard deadline"
        );
        let t = t0 + Duration::from_secs(31);
        l.handle(t, LifecycleInput::CutOver);
        l.handle(t, LifecycleInput::ClientsMoved);
        assert_eq!(l.state(), LifecycleState::Draining);
        assert_exits_at(&mut l, 32, ExitReason::HandedOff);
        assert!(l.is_exited());
        assert_eq!(l.poll_timeout(), None);
    }

    #[test]
    fn relaunches_with_backoff_then_gives_up_before_the_deadline() {
        let t0 = Instant::now();
        // lifetime 80 s: launch at 60, successor timeout 10 s, give up at 72.
        let mut l = Lifecycle::new(plan(80, true), 0, false, t0, SystemTime::now());
        let (launches, exits, now) = run_launching(
            &mut l,
            t0 + Duration::from_secs(1000),
            LifecycleInput::LaunchSucceeded,
        );
        assert_eq!(exits, vec![ExitReason::NoSuccessor]);
        // 60 → wait 10 → 70 → wait 20 → give up at 72.
        assert_eq!(launches, vec![(60_000, 1), (70_000, 2)]);
        assert_eq!(now - t0, Duration::from_secs(72));
        assert!(now < t0 + Duration::from_secs(80));
    }

    #[test]
    fn failed_launches_back_off_from_one_second() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(plan(80, true), 0, false, t0, SystemTime::now());
        let (launches, _, _) = run_launching(
            &mut l,
            t0 + Duration::from_secs(1000),
            LifecycleInput::LaunchFailed("boom".into()),
        );
        assert_eq!(
            &launches[..4],
            &[(60_000, 1), (61_000, 2), (63_000, 3), (67_000, 4)]
        );
        assert_eq!(
            l.state(),
            LifecycleState::Exited {
                reason: ExitReason::NoSuccessor
            }
        );
        let st = l.status(t0, SystemTime::now());
        assert_eq!(st.last_launch_error.as_deref(), Some("boom"));
    }

    #[test]
    fn hard_deadline_is_never_passed_during_a_slow_handoff() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(plan(40, true), 0, false, t0, SystemTime::now());
        run_until(&mut l, t0 + Duration::from_secs(30));
        l.handle(
            t0 + Duration::from_secs(30),
            LifecycleInput::LaunchSucceeded,
        );
        l.handle(
            t0 + Duration::from_secs(31),
            LifecycleInput::SuccessorConnected,
        );
        // The margin passes while handing off: keep going...
        assert!(run_until(&mut l, t0 + Duration::from_secs(39)).is_empty());
        // ...but never past the hard deadline.
        assert_exits_at(&mut l, 40, ExitReason::HardDeadline);
    }

    #[test]
    fn drain_is_cut_short_by_the_deadline_and_abort_waits_for_resume() {
        let t0 = Instant::now();
        let mut p = plan(40, true);
        p.drain_timeout = Duration::from_secs(30);
        let mut l = Lifecycle::new(p, 0, false, t0, SystemTime::now());
        run_until(&mut l, t0 + Duration::from_secs(30));
        let t = t0 + Duration::from_secs(31);
        successor_connects(&mut l, t);
        l.handle(t, LifecycleInput::HandoffAborted);
        assert_eq!(l.state(), LifecycleState::AwaitingSuccessor { attempt: 1 });
        assert_eq!(l.poll_timeout(), Some(t + Duration::from_secs(5)));
        l.handle(t, LifecycleInput::SuccessorConnected);
        l.handle(t, LifecycleInput::ClientsMoved);
        assert_exits_at(&mut l, 40, ExitReason::HandedOff);
    }

    #[test]
    fn forever_node_only_exits_on_shutdown() {
        let t0 = Instant::now();
        let mut p = plan(40, true);
        p.lifetime = None;
        let mut l = Lifecycle::new(p, 2, true, t0, SystemTime::now());
        assert_eq!(l.state(), LifecycleState::Joining);
        l.handle(t0, LifecycleInput::Joined);
        assert_eq!(l.poll_timeout(), None);
        l.handle(t0, LifecycleInput::Shutdown);
        assert_eq!(l.poll_action(), Some(Exit(ExitReason::Shutdown)));
        let json = serde_json::to_value(l.status(t0, SystemTime::now())).unwrap();
        assert_eq!(json["state"], "exited");
        assert_eq!(json["reason"], "shutdown");
        assert_eq!(json["generation"], 2);
        assert!(json["expires_at"].is_null());
    }

    /// Drives a machine to its first `Launch` (reporting `LaunchSucceeded`); returns when.
    fn launch_once(l: &mut Lifecycle) -> Instant {
        loop {
            let t = l.poll_timeout().expect("a timer");
            l.handle_timeout(t);
            if let Some(a) = l.poll_action() {
                assert!(matches!(a, Launch { .. }), "{a:?}");
                l.handle(t, LifecycleInput::LaunchSucceeded);
                return t;
            }
        }
    }

    #[test]
    fn two_successors_for_one_generation_one_primary_the_other_stops_cleanly() {
        let t0 = Instant::now();
        // The predecessor launched twice (the first was slow); both successors started.
        let mut p = Lifecycle::new(plan(40, true), 6, false, t0, SystemTime::now());
        let t = launch_once(&mut p);
        let relaunch = p.poll_timeout().unwrap();
        p.handle_timeout(relaunch);
        assert_eq!(p.poll_action(), Some(Launch { attempt: 2 }));
        p.handle(relaunch, LifecycleInput::LaunchSucceeded);
        // Both connect: one handoff; the second connection changes nothing.
        p.handle(relaunch, LifecycleInput::SuccessorConnected);
        p.handle(relaunch, LifecycleInput::SuccessorConnected);
        assert_eq!(
            p.state(),
            LifecycleState::HandingOff {
                attempt: 2,
                cut_over: false
            }
        );
        assert!(t < relaunch);
        let (mut a, mut b) = (
            Lifecycle::new(plan(40, true), 7, true, t, SystemTime::now()),
            Lifecycle::new(plan(40, true), 7, true, relaunch, SystemTime::now()),
        );
        a.handle(relaunch, LifecycleInput::Joined);
        b.handle(relaunch, LifecycleInput::Superseded);
        assert_eq!(a.state(), LifecycleState::Serving);
        assert_eq!(b.poll_action(), Some(Exit(ExitReason::Superseded)));
        assert_eq!(b.poll_action(), None, "the other launches nothing");
        assert_eq!(b.poll_timeout(), None);
        // Superseded is only for a node that never served.
        a.handle(relaunch, LifecycleInput::Superseded);
        assert_eq!(a.state(), LifecycleState::Serving);
    }

    #[test]
    fn a_newer_generation_published_by_another_node_fences_a_serving_node_only() {
        let t0 = Instant::now();
        // Serving, or waiting for a successor that never connected: step down.
        let mut serving = Lifecycle::new(plan(40, true), 3, false, t0, SystemTime::now());
        serving.handle(t0, LifecycleInput::NewerGenerationPublished);
        assert_eq!(serving.poll_action(), Some(Exit(ExitReason::Fenced)));
        let mut waiting = Lifecycle::new(plan(40, true), 3, false, t0, SystemTime::now());
        let t = launch_once(&mut waiting);
        waiting.handle(t, LifecycleInput::NewerGenerationPublished);
        assert_eq!(waiting.poll_action(), Some(Exit(ExitReason::Fenced)));
        // Handing off: the newer generation is our own successor's; carry on.
        let mut handing = Lifecycle::new(plan(40, true), 3, false, t0, SystemTime::now());
        let t = launch_once(&mut handing);
        handing.handle(t, LifecycleInput::SuccessorConnected);
        handing.handle(t, LifecycleInput::NewerGenerationPublished);
        assert!(matches!(handing.state(), LifecycleState::HandingOff { .. }));
        handing.handle(t, LifecycleInput::ClientsMoved);
        handing.handle(t, LifecycleInput::NewerGenerationPublished);
        assert_eq!(handing.state(), LifecycleState::Draining);
        // A joining successor is never fenced (rule 3 decides between successors).
        let mut joining = Lifecycle::new(plan(40, true), 4, true, t0, SystemTime::now());
        joining.handle(t0, LifecycleInput::NewerGenerationPublished);
        assert_eq!(joining.state(), LifecycleState::Joining);
    }

    #[test]
    fn predecessor_gone_before_the_handoff_successor_serves_and_plans_its_own_successor() {
        let t0 = Instant::now();
        // lifetime 40: launch at 30, give up at 36. The successor waited for its gone
        // predecessor, recovered, and joined 2 s after its start.
        let mut s = Lifecycle::new(plan(40, true), 9, true, t0, SystemTime::now());
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(40)));
        s.handle(t0 + Duration::from_secs(2), LifecycleInput::Joined);
        assert_eq!(s.state(), LifecycleState::Serving);
        // Its own plan, from its own start: not an exit, a launch at 30.
        let acts = run_until(&mut s, t0 + Duration::from_secs(31));
        assert_eq!(acts, vec![(Duration::from_secs(30), Launch { attempt: 1 })]);
    }

    #[test]
    fn late_successor_launches_at_once_and_never_exits_at_once() {
        let t0 = Instant::now();
        // Joined at 37 s of a 40 s life: past the launch time (30) and the give-up (36).
        // The successor of a `lifetime_s` life joins `joined_s` into it, past the launch
        // time: the timer is due at once and launches.
        let join_late = |lifetime_s: u64, joined_s: u64| {
            let mut s = Lifecycle::new(plan(lifetime_s, true), 9, true, t0, SystemTime::now());
            let joined = t0 + Duration::from_secs(joined_s);
            s.handle(joined, LifecycleInput::Joined);
            assert!(s.poll_timeout().unwrap() <= joined);
            s.handle_timeout(joined);
            assert_eq!(s.poll_action(), Some(Launch { attempt: 1 }));
            assert_eq!(s.poll_action(), None);
            s.handle(joined, LifecycleInput::LaunchSucceeded);
            s
        };
        let mut s = join_late(40, 37);
        // Not NoSuccessor at once: it waits one start + one successor timeout (1 + 5 s),
        // cut to the hard deadline (40).
        assert_exits_at(&mut s, 40, ExitReason::HardDeadline);
        // Joined early enough, the floor is one start + one timeout after the join.
        let mut s = join_late(80, 70);
        let acts = run_until(&mut s, t0 + Duration::from_secs(100));
        // The give-up moved from 72 to 80 (70 + 1 + 10 = 81, cut to the hard deadline): no
        // NoSuccessor exit at 72, two seconds after joining.
        assert!(
            !acts
                .iter()
                .any(|(_, a)| *a == Exit(ExitReason::NoSuccessor)),
            "{acts:?}"
        );
        assert_eq!(
            acts.last(),
            Some(&(Duration::from_secs(80), Exit(ExitReason::HardDeadline)))
        );
    }

    #[test]
    fn the_host_ending_stops_the_node_like_the_hard_deadline() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(plan(40, true), 1, false, t0, SystemTime::now());
        let t = launch_once(&mut l);
        l.handle(t, LifecycleInput::SuccessorConnected);
        l.handle(t, LifecycleInput::HostEnding);
        assert_eq!(l.poll_action(), Some(Exit(ExitReason::HardDeadline)));
    }

    #[test]
    fn a_local_node_never_exits_without_a_successor() {
        let t0 = Instant::now();
        let mut p = plan(40, true);
        p.host_ends = false;
        let mut l = Lifecycle::new(p, 3, false, t0, SystemTime::now());
        // Every successor fails to show up for 10 minutes.
        let (launches, exits, _) = run_launching(
            &mut l,
            t0 + Duration::from_secs(600),
            LifecycleInput::LaunchSucceeded,
        );
        assert!(exits.is_empty(), "exited ({exits:?}) without a successor");
        // 30, then +5, +10, +20, +20, ... past the lifetime, never giving up.
        assert_eq!(
            &launches[..5],
            &[
                (30_000, 1),
                (35_000, 2),
                (45_000, 3),
                (65_000, 4),
                (85_000, 5)
            ]
        );
        assert!(launches.len() > 25, "{launches:?}");
        assert!(!l.is_exited());
        // A successor finally takes over: the normal end.
        let t = t0 + Duration::from_secs(601);
        l.handle(t, LifecycleInput::SuccessorConnected);
        l.handle(t, LifecycleInput::ClientsMoved);
        assert_exits_at(&mut l, 602, ExitReason::HandedOff);
        // Told to stop, it stops.
        let mut p = plan(40, true);
        p.host_ends = false;
        let mut l = Lifecycle::new(p, 3, false, t0, SystemTime::now());
        l.handle(t0, LifecycleInput::Shutdown);
        assert_eq!(l.poll_action(), Some(Exit(ExitReason::Shutdown)));
    }
}
