//! Successor authentication and zero-loss state transfer (`protocol/handoff.md`).

mod secret;

pub use secret::{MIN_SECRET_LEN, SECRET_ENV, Secret, SecretError};
