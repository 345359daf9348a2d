//! A relay whose rooms are a replicated log's (`RelayConfig::replicated`, `--replicas N`).
//!
//! The relay still checks every publish (room, id, body, limits, rate) and answers reads
//! (join, `since`, history, presence) from its own store, but it no longer decides a
//! message's `seq`: a checked publish becomes an [`Output::Propose`], the driver proposes it
//! to the ring's log (`replica::Replica::publish`, forwarded to the leader), and reports the
//! outcome with [`Relay::proposal_done`] (the `ack`, or the retryable `unavailable`). Every
//! node stores a message only when its committed entry comes back, in log order, through
//! [`Relay::apply_committed`], which fans it out to the room's members here. So every node
//! holds the same messages at the same `seq`s, and a client may move between nodes with
//! `since`.

use std::sync::Arc;

use super::wire::ErrorCode;
use super::{
    Applied, ConnId, Output, Refusal, Relay, RelayError, ReplicationEvent, StoredMessage, refuse,
};

/// A checked publish the driver proposes to the replicated log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The publishing connection (gets the `ack` or the error).
    pub conn: ConnId,
    /// The room.
    pub room: String,
    /// The publisher's message id (a generated one for the seed's protocol).
    pub id: String,
    /// The publisher's identity (the message's `from`).
    pub from: String,
    /// The body as JSON text (checked: size, depth).
    pub body: String,
    /// Whether the connection expects an `ack` (the seed's protocol has none).
    pub ack: bool,
}

/// Why a proposal was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposalFailure {
    /// Not committed in time (no leader, no majority): the client may retry with the same id.
    Unavailable(String),
    /// The log refused the request itself (never retried).
    Refused(String),
}

impl Relay {
    /// Queues `body` from `conn` for the replicated log (the caller checked room, id, body).
    pub(super) fn propose(
        &mut self,
        conn: ConnId,
        room: &str,
        id: &str,
        from: Arc<str>,
        body: String,
        ack: bool,
    ) -> Result<(), Refusal> {
        // Creates the room here if it is new, under the room limit; the entry fills it later.
        self.room_or_create(room)?;
        self.out.push_back(Output::Propose(Proposal {
            conn,
            room: room.to_owned(),
            id: id.to_owned(),
            from: from.to_string(),
            body,
            ack,
        }));
        Ok(())
    }

    /// A fresh message id for a publish of the seed's protocol, which has none: unique per
    /// node and time, so a retry never collides with another message.
    pub(super) fn legacy_proposal_id(&mut self, conn: ConnId) -> String {
        self.proposals += 1;
        format!("legacy-{}-{}-{}", self.config.node, conn.0, self.proposals)
    }

    /// Reports what became of a [`Proposal`]: its `seq` (the `ack` goes to the connection if it
    /// is still here), or why not (`unavailable`, or `bad_request`).
    pub fn proposal_done(&mut self, proposal: &Proposal, outcome: Result<u64, ProposalFailure>) {
        if !proposal.ack {
            if outcome.is_ok() {
                self.m.published += 1;
            }
            return;
        }
        let Some(proto) = self.conns.get(&proposal.conn).map(|c| c.proto) else {
            return;
        };
        let result: Result<(), Refusal> = match outcome {
            Ok(seq) => {
                self.m.published += 1;
                let ack = super::requests::ack_payload(&proposal.id, &proposal.room, seq);
                self.send(proposal.conn, proto, &ack);
                Ok(())
            }
            Err(ProposalFailure::Unavailable(why)) => refuse(
                ErrorCode::Unavailable,
                format!("not committed: {why}; retry with the same id"),
            ),
            Err(ProposalFailure::Refused(why)) => refuse(ErrorCode::BadRequest, why),
        };
        if let Err((code, message)) = result {
            self.send_error(proposal.conn, code, &message, Some(&proposal.id));
        }
    }

    /// Stores a committed message of the replicated log at its `seq` and fans it out to the
    /// room's members here. A `seq` at or below the room's head is already stored (ignored); one
    /// above head + 1 is a gap ([`RelayError::Gap`]): the caller re-reads the room from the log.
    ///
    /// # Errors
    /// [`RelayError::Gap`].
    pub fn apply_committed(
        &mut self,
        room: &str,
        seq: u64,
        from: &str,
        id: &str,
        ts: u64,
        body: &str,
    ) -> Result<Applied, RelayError> {
        let msg = StoredMessage::new(room.into(), seq, from.into(), ts, Some(id.into()), body);
        self.apply_replication(ReplicationEvent::Stored(msg))
    }

    /// A room's head here (its last stored or evicted `seq`; 0 for a room never seen): a
    /// replicated node reads the log after it.
    pub fn room_head(&self, room: &str) -> u64 {
        self.rooms.get(room).map_or(self.seq_floor, |r| r.head)
    }
}
