//! Successor authentication and zero-loss state transfer (`protocol/handoff.md`).
