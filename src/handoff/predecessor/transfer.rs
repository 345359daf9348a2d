//! Transfer: the snapshot (chunks within the window), the tail, the cut-over decision
//! (`ReadyForCutOver`: this core is its only owner), the successor's acknowledgements, and
//! what goes on the wire next.

use super::{ConnId, Predecessor, PredecessorEvent, Snapshot, Transmit};
use crate::handoff::message::{HighWater, Message};
use crate::handoff::{PreparedSnapshot, sha256_hex};
use std::time::Instant;

impl Predecessor {
    /// Snapshot chunk size in bytes (for [`PreparedSnapshot::new`]).
    pub fn chunk_size(&self) -> usize {
        self.cfg.chunk_size
    }

    /// The relay snapshot exported for the current session (answer to `SnapshotNeeded`),
    /// hashed by the shell ([`PreparedSnapshot::new`] / [`PreparedSnapshot::from_json`],
    /// off the async threads): the core spawns no threads. Every replication event after
    /// this export must go to [`Predecessor::push_tail`]. Digests made with another chunk
    /// size are recomputed here, on this thread.
    pub fn provide_snapshot(&mut self, _now: Instant, prepared: PreparedSnapshot) {
        let chunk = self.cfg.chunk_size;
        let prepared = prepared.rechunk(chunk);
        let Some(s) = &mut self.session else {
            return;
        };
        if s.snapshot.is_some() {
            return;
        }
        let chunks = prepared.source.len().div_ceil(chunk as u64) as u32;
        let snap = Snapshot {
            sha256: prepared.sha256,
            chunks,
            source: prepared.source,
            chunk_sha256: prepared.chunk_sha256,
        };
        tracing::info!(
            session = s.id,
            bytes = snap.source.len(),
            chunks,
            "handoff: snapshot exported"
        );
        let accepted = s.conn.map(|conn| {
            (
                conn,
                Message::Accepted {
                    session: s.id,
                    size: snap.source.len(),
                    chunk_size: chunk as u32,
                    chunks,
                    sha256: snap.sha256.clone(),
                    resume_chunk: 0,
                    resume_tail: 0,
                },
            )
        });
        s.accepted_sent = accepted.is_some();
        s.snapshot = Some(snap);
        if let Some((conn, m)) = accepted {
            self.send(conn, m);
        }
        self.check_ready();
    }

    /// Whether replication events are wanted now (a snapshot was exported and the
    /// cut-over has not happened).
    pub fn wants_tail(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.snapshot.is_some() && s.cut_over.is_none())
    }

    /// One encoded replication event, in relay order. Ignored unless [`Predecessor::wants_tail`].
    pub fn push_tail(&mut self, event: Vec<u8>) {
        if !self.wants_tail() {
            return;
        }
        let s = self
            .session
            .as_mut()
            .expect("wants_tail checked the session");
        s.tail_bytes += event.len();
        s.tail.push_back(event);
        if s.tail_bytes > self.cfg.max_tail_bytes {
            self.abort("tail backlog exceeded its limit (successor too slow)");
        }
    }

    /// Cut over (after `ReadyForCutOver`): the relay is `Draining` and every replication
    /// event up to now was pushed; `high_water` is every room's head.
    pub fn cut_over(&mut self, _now: Instant, high_water: HighWater) {
        let Some(s) = &mut self.session else {
            return;
        };
        if s.snapshot.is_none() || s.cut_over.is_some() {
            return;
        }
        tracing::info!(
            session = s.id,
            tail_end = s.tail_end(),
            rooms = high_water.len(),
            "handoff: cut-over"
        );
        s.cut_over = Some((s.tail_end(), high_water));
        self.events.push_back(PredecessorEvent::CutOver);
    }

    pub(super) fn abort(&mut self, reason: &str) {
        if let Some(s) = self.session.take() {
            tracing::warn!(session = s.id, reason, "handoff aborted");
            if let Some(c) = s.conn {
                self.conns.remove(&c);
                self.transmits.push_back(Transmit::Close(c));
            }
            self.events.push_back(PredecessorEvent::Aborted {
                reason: reason.to_string(),
            });
        }
    }

    pub(super) fn check_ready(&mut self) {
        let backlog = self.cfg.cutover_tail_backlog;
        if let Some(s) = &mut self.session
            && let Some(snap) = &s.snapshot
            && s.acked >= snap.chunks
            && !s.ready_emitted
            && s.cut_over.is_none()
            && s.tail.len() <= backlog
        {
            s.ready_emitted = true;
            self.events.push_back(PredecessorEvent::ReadyForCutOver);
        }
    }

    pub(super) fn on_active(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let Some(s) = &mut self.session else {
            return;
        };
        if s.conn != Some(conn) {
            return;
        }
        let chunks = s.snapshot.as_ref().map_or(0, |x| x.chunks);
        match msg {
            Message::ChunkAck { session, next } if session == s.id && next <= chunks => {
                s.acked = s.acked.max(next);
                s.next_send = s.next_send.max(s.acked);
                self.check_ready();
            }
            Message::ChunkNack { session, index } if session == s.id && index < chunks => {
                tracing::warn!(
                    session,
                    index,
                    "handoff: chunk refused by the successor; resending"
                );
                s.next_send = index.max(s.acked);
            }
            Message::TailAck { session, next } if session == s.id && next <= s.tail_send => {
                while s.tail_base < next {
                    if let Some(e) = s.tail.pop_front() {
                        s.tail_bytes -= e.len();
                    }
                    s.tail_base += 1;
                }
                self.check_ready();
            }
            Message::Confirm {
                session,
                high_water,
            } if session == s.id && s.cut_over_sent => {
                let ours = &s
                    .cut_over
                    .as_ref()
                    .expect("cut_over_sent implies cut_over")
                    .1;
                if *ours == high_water {
                    s.confirmed = true;
                    tracing::info!(session, "handoff: successor confirmed the high-water marks");
                    self.events.push_back(PredecessorEvent::Confirmed);
                } else {
                    self.restart(now, conn, "successor confirmed different high-water marks");
                }
            }
            Message::Mismatch { session, rooms } if session == s.id => {
                tracing::warn!(session, ?rooms, "handoff: high-water mismatch");
                self.restart(now, conn, "high-water mismatch");
            }
            Message::Live { session } if session == s.id && s.cut_over_sent => {
                // `live` implies `confirm` (the confirm may have been lost with a broken
                // connection before the successor went live).
                if !s.confirmed {
                    s.confirmed = true;
                    self.events.push_back(PredecessorEvent::Confirmed);
                }
                self.done = true;
                self.transmits.push_back(Transmit::Close(conn));
                tracing::info!(session, successor = %s.successor_peer_id, "handoff: successor is live");
                self.events.push_back(PredecessorEvent::SuccessorLive {
                    successor_peer_id: s.successor_peer_id.clone(),
                    endpoints: s.endpoints.clone(),
                    generation: self.generation + 1,
                });
            }
            other => {
                tracing::debug!(kind = other.kind(), "handoff: unexpected message ignored");
            }
        }
    }

    pub(super) fn restart(&mut self, _now: Instant, conn: ConnId, reason: &str) {
        let s = self.session.take().expect("restart with a session");
        if s.restarts >= self.cfg.max_restarts {
            self.aborted_successors.insert(s.successor_peer_id.clone());
            self.session = Some(s);
            return self.abort(&format!("{reason}; no restarts left"));
        }
        tracing::warn!(
            session = s.id,
            reason,
            "handoff: restarting with a fresh snapshot"
        );
        self.start_session(conn, s.successor_peer_id, s.endpoints, s.restarts + 1);
    }

    /// Next thing to put on the wire (generated on demand: chunks respect the window),
    /// sealed with its connection's session key.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        let (conn, msg) = self.next_transfer()?;
        Some(Transmit::Send(conn, self.seal(conn, msg)))
    }

    /// The next chunk, tail batch or cut-over of the session, if one may go now.
    fn next_transfer(&mut self) -> Option<(ConnId, Message)> {
        let s = self.session.as_mut()?;
        let conn = s.conn?;
        if !s.accepted_sent {
            return None;
        }
        let snap = s.snapshot.as_ref()?;
        if s.tail_send < s.tail_end() {
            let start = (s.tail_send - s.tail_base) as usize;
            let mut bytes = 0;
            let mut events = Vec::new();
            for e in s.tail.iter().skip(start) {
                if !events.is_empty()
                    && (bytes + e.len() > self.cfg.tail_batch_bytes || events.len() >= 1024)
                {
                    break;
                }
                bytes += e.len();
                events.push(e.clone());
            }
            let first = s.tail_send;
            s.tail_send += events.len() as u64;
            return Some((
                conn,
                Message::Tail {
                    session: s.id,
                    first,
                    events,
                },
            ));
        }
        if s.next_send < snap.chunks && s.next_send < s.acked.saturating_add(self.cfg.window) {
            let index = s.next_send;
            let data = snap.source.chunk(index, self.cfg.chunk_size);
            s.next_send += 1;
            let sha256 = snap
                .chunk_sha256
                .get(index as usize)
                .cloned()
                .unwrap_or_else(|| sha256_hex(&data));
            return Some((
                conn,
                Message::Chunk {
                    session: s.id,
                    index,
                    sha256,
                    data,
                },
            ));
        }
        if let Some((tail_end, hw)) = &s.cut_over
            && !s.cut_over_sent
            && s.tail_send >= *tail_end
        {
            s.cut_over_sent = true;
            return Some((
                conn,
                Message::CutOver {
                    session: s.id,
                    tail_end: *tail_end,
                    high_water: hw.clone(),
                },
            ));
        }
        None
    }
}
