//! The realm's counters and their Prometheus text.

#[cfg(doc)]
use super::Rejection;

/// Counters for metrics. Gauges are current values, the rest count since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open WebSockets (filled in by the driver).
    pub sockets: usize,
    /// Registered clients (gauge).
    pub clients: usize,
    /// Sockets that sent `LEAVE` without `dst` and are no longer registered (gauge).
    pub detached: usize,
    /// Destinations with queued messages (gauge).
    pub queues: usize,
    /// Messages in offline queues (gauge).
    pub queued_messages: usize,
    /// Bytes in offline queues (gauge).
    pub queued_bytes: usize,
    /// Frames relayed to a destination socket (including deliveries from a queue).
    pub relayed: u64,
    /// Messages put in an offline queue.
    pub queued: u64,
    /// Queued messages that expired (their senders got EXPIRE).
    pub expired: u64,
    /// Messages refused because a queue was full (senders got EXPIRE at once).
    pub queue_full: u64,
    /// Messages with an invalid `dst` (senders got EXPIRE at once).
    pub invalid_dst: u64,
    /// Frames the node's own (privileged) connection could not take at once: refused, the
    /// sender got EXPIRE; the node stays connected.
    pub node_busy: u64,
    /// Frames dropped: unknown type, LEAVE/EXPIRE to an absent peer, no `dst`, detached.
    pub dropped: u64,
    /// Frames that were not JSON.
    pub malformed: u64,
    /// Frames a socket could not take.
    pub undeliverable: u64,
    /// Connections refused, by reason.
    pub rejected: RejectedStats,
    /// Clients closed by the server, by reason.
    pub closed: ClosedStats,
}

/// Refused connections by [`Rejection`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RejectedStats {
    /// [`Rejection::NoParams`].
    pub no_params: u64,
    /// [`Rejection::InvalidKey`].
    pub invalid_key: u64,
    /// [`Rejection::InvalidId`] and [`Rejection::InvalidToken`].
    pub invalid_id: u64,
    /// [`Rejection::IdTaken`].
    pub id_taken: u64,
    /// [`Rejection::Limit`].
    pub limit: u64,
    /// [`Rejection::AddressLimit`].
    pub address_limit: u64,
}

/// Server-side closes by cause.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClosedStats {
    /// No HEARTBEAT within the alive timeout.
    pub alive_timeout: u64,
    /// Over the rate limit.
    pub rate_limited: u64,
    /// Sent a message above the size limit.
    pub too_big: u64,
    /// Sent a burst of malformed frames.
    pub malformed: u64,
    /// Could not keep up with its write queue.
    pub slow: u64,
    /// Replaced by a reconnect with the same id and token.
    pub replaced: u64,
}

impl Stats {
    /// Appends the counters in Prometheus text format, names prefixed `ouroboros_signaling_`.
    pub fn write_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let mut metric = |name: &str, kind: &str, help: &str, values: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP ouroboros_signaling_{name} {help}");
            let _ = writeln!(out, "# TYPE ouroboros_signaling_{name} {kind}");
            for (labels, v) in values {
                let _ = writeln!(out, "ouroboros_signaling_{name}{labels} {v}");
            }
        };
        let g = |v: usize| v as u64;
        metric(
            "sockets",
            "gauge",
            "Open WebSockets.",
            &[("", g(self.sockets))],
        );
        metric(
            "clients",
            "gauge",
            "Registered clients.",
            &[("", g(self.clients))],
        );
        metric(
            "queued_messages",
            "gauge",
            "Messages waiting for absent peers.",
            &[("", g(self.queued_messages))],
        );
        metric(
            "queued_bytes",
            "gauge",
            "Bytes waiting for absent peers.",
            &[("", g(self.queued_bytes))],
        );
        metric(
            "relayed_total",
            "counter",
            "Frames relayed to a destination.",
            &[("", self.relayed)],
        );
        metric(
            "queued_total",
            "counter",
            "Messages queued for an absent peer.",
            &[("", self.queued)],
        );
        metric(
            "expired_total",
            "counter",
            "Queued messages expired.",
            &[("", self.expired)],
        );
        metric(
            "refused_total",
            "counter",
            "Messages refused, senders got EXPIRE.",
            &[
                ("{reason=\"queue_full\"}", self.queue_full),
                ("{reason=\"invalid_dst\"}", self.invalid_dst),
                ("{reason=\"node_busy\"}", self.node_busy),
            ],
        );
        metric(
            "dropped_total",
            "counter",
            "Frames dropped.",
            &[("", self.dropped)],
        );
        metric(
            "malformed_total",
            "counter",
            "Frames that were not JSON.",
            &[("", self.malformed)],
        );
        metric(
            "undeliverable_total",
            "counter",
            "Frames a socket could not take.",
            &[("", self.undeliverable)],
        );
        let r = &self.rejected;
        metric(
            "rejected_total",
            "counter",
            "Connections refused.",
            &[
                ("{reason=\"no_params\"}", r.no_params),
                ("{reason=\"invalid_key\"}", r.invalid_key),
                ("{reason=\"invalid_id\"}", r.invalid_id),
                ("{reason=\"id_taken\"}", r.id_taken),
                ("{reason=\"limit\"}", r.limit),
                ("{reason=\"address_limit\"}", r.address_limit),
            ],
        );
        let c = &self.closed;
        metric(
            "closed_total",
            "counter",
            "Clients closed by the server.",
            &[
                ("{reason=\"alive_timeout\"}", c.alive_timeout),
                ("{reason=\"rate_limited\"}", c.rate_limited),
                ("{reason=\"too_big\"}", c.too_big),
                ("{reason=\"malformed\"}", c.malformed),
                ("{reason=\"slow\"}", c.slow),
                ("{reason=\"replaced\"}", c.replaced),
            ],
        );
    }
}
