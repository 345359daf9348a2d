//! Lifetime, deadlines, and the launchers that start a node's successor.
//!
//! - [`LifecycleArgs`]: the node's lifecycle flags (`--lifetime`, `--handoff-lead`, ...),
//!   turned into a validated [`LifecyclePlan`].
//! - [`Lifecycle`]: a sans-IO state machine deciding when to launch the successor, when to
//!   relaunch, and when to exit. It never passes the hard deadline.
//! - [`Launcher`]: starts a successor. [`LocalLauncher`] spawns `ouroboros node` as a
//!   detached process; [`NoLauncher`] launches nothing; GitHub's lives in `github`.
//!
//! The ring that runs all of it for `ouroboros node` is composition and lives in
//! `node::ring`; this module stays a pure state machine plus the [`Launcher`] trait.

mod args;
mod faults;
mod launcher;
mod machine;

pub use args::{
    EndpointList, LauncherKind, LifecycleArgs, LifecyclePlan, PlanError, min_lifetime,
    parse_duration,
};
pub use faults::{FAULTS_ENV, Faults, START_DELAY_ENV, start_delay};
pub use launcher::{
    LaunchError, Launcher, LocalLauncher, MemberLaunch, NoLauncher, SuccessorRequest, drop_flags,
    successor_base_args,
};
pub use machine::{
    ExitReason, Lifecycle, LifecycleAction, LifecycleInput, LifecycleState, LifecycleStatus,
};
