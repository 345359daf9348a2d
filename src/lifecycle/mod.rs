//! Lifetime, deadlines, and the launchers that start a node's successor.

/// Lifecycle flags of `ouroboros node`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LifecycleArgs {}

/// Starts a successor node.
pub trait Launcher: Send + Sync {}
