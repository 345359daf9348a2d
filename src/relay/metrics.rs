//! Counters and gauges for `/metrics` and `/status`.

use std::collections::BTreeMap;

use super::wire::ErrorCode;
use super::{Mode, Relay};

impl Relay {
    /// Current counters and gauges.
    pub fn metrics(&self) -> Metrics {
        let mut m = self.m.clone();
        m.clients = self.conns.len();
        m.legacy_clients = self.legacy_conns.len();
        m.rooms = self.rooms.len();
        m.messages = self.messages;
        m.bytes_stored = self.bytes;
        m.memory_budget = self.config.memory_budget;
        m.primary = self.mode == Mode::Primary;
        m.errors = ErrorCode::ALL
            .iter()
            .zip(self.errors)
            .map(|(c, n)| (c.as_str(), n))
            .collect();
        m
    }

    /// Room → (head, evicted_before, stored messages, members), for `/status`.
    pub fn room_stats(&self) -> BTreeMap<String, RoomStats> {
        self.rooms
            .values()
            .map(|r| {
                (
                    r.name.to_string(),
                    RoomStats {
                        head: r.head,
                        evicted_before: r.evicted_before,
                        messages: r.log.len(),
                        members: r.members.len(),
                    },
                )
            })
            .collect()
    }

    pub(super) fn count_error(&mut self, code: ErrorCode) {
        self.errors[error_index(code)] += 1;
    }
}

/// Counters and gauges for `/metrics` and `/status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Open connections (all protocols, including undetermined ones).
    pub clients: usize,
    /// Connections speaking the legacy protocol.
    pub legacy_clients: usize,
    /// Rooms held.
    pub rooms: usize,
    /// Messages stored.
    pub messages: usize,
    /// Bytes charged against the budget.
    pub bytes_stored: usize,
    /// The budget.
    pub memory_budget: usize,
    /// Messages evicted since start.
    pub evicted_messages: u64,
    /// Bytes evicted since start.
    pub evicted_bytes: u64,
    /// Messages stored by clients since start (not counting replication).
    pub published: u64,
    /// Publishes acknowledged again instead of stored (repeated id).
    pub deduplicated: u64,
    /// `msg` deliveries (one per recipient, including legacy broadcasts).
    pub delivered: u64,
    /// `direct` messages relayed (one per recipient).
    pub direct: u64,
    /// Connections refused or closed for `max_clients`.
    pub refused: u64,
    /// Rooms freed after they stayed empty for `room_idle` (see `rooms.rs`).
    pub rooms_freed: u64,
    /// Errors by code (sent to relay clients, or silently counted for legacy clients).
    pub errors: BTreeMap<&'static str, u64>,
    /// Whether the node accepts writes.
    pub primary: bool,
}

/// One room's figures for `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RoomStats {
    /// Newest seq.
    pub head: u64,
    /// Every seq below this was evicted.
    pub evicted_before: u64,
    /// Messages stored.
    pub messages: usize,
    /// Subscribed connections.
    pub members: usize,
}

fn error_index(code: ErrorCode) -> usize {
    ErrorCode::ALL.iter().position(|c| *c == code).unwrap_or(0)
}
