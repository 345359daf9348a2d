//! Admission: the `hello` checks (version, peer ids, generation, replay, rate), the
//! challenge, and what an authenticated successor gets (its session resumed, or a new one).

use super::{
    ConnId, MAX_ENDPOINTS, MAX_PEER_ID, Predecessor, PredecessorEvent, SEEN_NONCES, Session, Stage,
    Transmit,
};
use crate::discovery::SignalingEndpoint;
use crate::handoff::auth::{self, Binding, Role, SessionKeys};
use crate::handoff::message::{Message, PROTOCOL_VERSION, RefuseCode, Resume, Sealed};
use std::collections::VecDeque;
use std::time::Instant;

impl Predecessor {
    /// Refuses the attempt on `conn` and closes it. The refusal is sealed with the
    /// connection's session key when it has one (always once its `hello` had a valid
    /// nonce), and carries our nonce so that a successor refused before any challenge can
    /// check it too.
    pub(super) fn refuse(&mut self, conn: ConnId, code: RefuseCode, message: &str) {
        let nonce = self.conns.get(&conn).and_then(|c| c.nonce.clone());
        let refused = self.seal(
            conn,
            Message::Refused {
                code,
                message: message.to_string(),
                nonce,
            },
        );
        let remote = self
            .conns
            .remove(&conn)
            .map(|c| c.remote_peer_id)
            .unwrap_or_default();
        match code {
            RefuseCode::AuthFailed | RefuseCode::Replay | RefuseCode::WrongPeer => {
                tracing::warn!(remote_peer_id = %remote, ?code, message, "handoff attempt refused")
            }
            // A flood's refusals: not worth a log line each.
            RefuseCode::RateLimited | RefuseCode::Busy => {
                tracing::debug!(remote_peer_id = %remote, ?code, message, "handoff attempt refused")
            }
            _ => {
                tracing::info!(remote_peer_id = %remote, ?code, message, "handoff attempt refused")
            }
        }
        self.transmits.push_back(Transmit::Send(conn, refused));
        self.transmits.push_back(Transmit::Close(conn));
        self.events.push_back(PredecessorEvent::Refused {
            remote_peer_id: remote,
            code,
        });
    }

    pub(super) fn on_hello(&mut self, now: Instant, conn: ConnId, sealed: Sealed) {
        let Message::Hello {
            v,
            successor_peer_id,
            predecessor_peer_id,
            generation,
            nonce,
            endpoints,
            resume,
        } = sealed.msg
        else {
            return self.refuse(conn, RefuseCode::BadMessage, "expected hello");
        };
        let successor_nonce = auth::parse_nonce(&nonce);
        let (predecessor_nonce, p_hex) = auth::fresh_nonce(&mut self.rng);
        let mut vouched = false;
        if let Some(s_nonce) = &successor_nonce {
            // From here on every refusal is sealed: the successor can tell ours from a
            // stranger's.
            let mut binding = Binding {
                predecessor_peer_id: &self.peer_id,
                successor_peer_id: &successor_peer_id,
                generation,
                successor_nonce: s_nonce,
                predecessor_nonce: &[],
            };
            vouched = sealed
                .auth
                .as_deref()
                .is_some_and(|a| auth::verify_hello_auth(&self.secret, &binding, a));
            binding.predecessor_nonce = &predecessor_nonce;
            let keys = SessionKeys::derive(&self.secret, Role::Predecessor, &binding);
            if let Some(c) = self.conns.get_mut(&conn) {
                c.keys = Some(keys);
                c.nonce = Some(p_hex.clone());
                c.vouched = vouched;
            }
        }
        // A hello that proves the secret is not rate limited: a flood cannot spend the
        // real successor's attempts (replays are refused by their nonce below).
        let origin = self.conns[&conn].origin.clone();
        if !vouched && !self.take_attempt(now, &origin) {
            return self.refuse(conn, RefuseCode::RateLimited, "too many handoff attempts");
        }
        if v != PROTOCOL_VERSION {
            return self.refuse(conn, RefuseCode::Version, "unsupported handoff version");
        }
        let remote = self.conns[&conn].remote_peer_id.clone();
        if successor_peer_id != remote
            || predecessor_peer_id != self.peer_id
            || remote.len() > MAX_PEER_ID
        {
            return self.refuse(conn, RefuseCode::WrongPeer, "peer ids do not match");
        }
        if generation != self.generation + 1 {
            return self.refuse(
                conn,
                RefuseCode::WrongGeneration,
                &format!("expected generation {}", self.generation + 1),
            );
        }
        let Some(successor_nonce) = successor_nonce else {
            return self.refuse(conn, RefuseCode::BadMessage, "nonce must be 32 bytes hex");
        };
        if endpoints.len() > MAX_ENDPOINTS {
            return self.refuse(conn, RefuseCode::BadMessage, "too many endpoints");
        }
        if self.seen.contains(&successor_nonce) {
            return self.refuse(conn, RefuseCode::Replay, "nonce already used");
        }
        if self.done {
            return self.refuse(conn, RefuseCode::Done, "handoff already complete");
        }
        if self.aborted_successors.contains(&remote) {
            return self.refuse(
                conn,
                RefuseCode::Aborted,
                "this successor's handoff was aborted",
            );
        }
        if let Some(s) = &self.session
            && s.successor_peer_id != remote
            && s.conn.is_some()
        {
            return self.refuse(conn, RefuseCode::Busy, "another successor is being served");
        }
        self.seen.insert(successor_nonce);
        self.seen_order.push_back(successor_nonce);
        if self.seen_order.len() > SEEN_NONCES
            && let Some(old) = self.seen_order.pop_front()
        {
            self.seen.remove(&old);
        }
        let binding = Binding {
            predecessor_peer_id: &self.peer_id,
            successor_peer_id: &remote,
            generation,
            successor_nonce: &successor_nonce,
            predecessor_nonce: &predecessor_nonce,
        };
        let mac = auth::prove(&self.secret, Role::Predecessor, &binding);
        // The challenge carries its own proof; it is not sealed.
        self.transmits.push_back(Transmit::Send(
            conn,
            Message::Challenge { nonce: p_hex, mac }.into(),
        ));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.nonce = None;
            c.stage = Stage::AwaitProof {
                successor_nonce,
                predecessor_nonce,
                endpoints,
                resume,
            };
        }
    }

    pub(super) fn on_authenticated(
        &mut self,
        now: Instant,
        conn: ConnId,
        remote: String,
        endpoints: Vec<SignalingEndpoint>,
        resume: Option<Resume>,
    ) {
        // Resume the current session if it is this successor's and the positions fit.
        if let Some(s) = &mut self.session
            && s.successor_peer_id == remote
            && let (Some(r), Some(snap)) = (&resume, &s.snapshot)
            && r.session == s.id
            && r.next_chunk <= snap.chunks
            && r.tail_next >= s.tail_base
            && r.tail_next <= s.tail_end()
        {
            if let Some(old) = s.conn.replace(conn)
                && old != conn
            {
                self.conns.remove(&old);
                self.transmits.push_back(Transmit::Close(old));
            }
            s.lost_at = None;
            s.endpoints = endpoints;
            s.acked = s.acked.max(r.next_chunk);
            s.next_send = s.acked;
            while s.tail_base < r.tail_next {
                if let Some(e) = s.tail.pop_front() {
                    s.tail_bytes -= e.len();
                }
                s.tail_base += 1;
            }
            s.tail_send = r.tail_next;
            s.cut_over_sent = false;
            s.accepted_sent = true;
            let accepted = Message::Accepted {
                session: s.id,
                size: snap.source.len(),
                chunk_size: self.cfg.chunk_size as u32,
                chunks: snap.chunks,
                sha256: snap.sha256.clone(),
                resume_chunk: s.acked,
                resume_tail: s.tail_send,
            };
            tracing::info!(
                session = s.id,
                chunk = s.acked,
                tail = s.tail_send,
                "handoff: session resumed"
            );
            self.send(conn, accepted);
            self.events.push_back(PredecessorEvent::Authenticated {
                successor_peer_id: remote,
                resumed: true,
            });
            self.check_ready();
            return;
        }
        let restarts = match self.session.take() {
            Some(old) => {
                if let Some(c) = old.conn
                    && c != conn
                {
                    self.conns.remove(&c);
                    self.transmits.push_back(Transmit::Close(c));
                }
                if old.successor_peer_id == remote {
                    old.restarts
                } else {
                    0
                }
            }
            None => 0,
        };
        let _ = now;
        self.events.push_back(PredecessorEvent::Authenticated {
            successor_peer_id: remote.clone(),
            resumed: false,
        });
        self.start_session(conn, remote, endpoints, restarts);
    }

    pub(super) fn start_session(
        &mut self,
        conn: ConnId,
        successor_peer_id: String,
        endpoints: Vec<SignalingEndpoint>,
        restarts: u32,
    ) {
        let id = self.next_session;
        self.next_session += 1;
        self.session = Some(Session {
            id,
            successor_peer_id,
            endpoints,
            conn: Some(conn),
            lost_at: None,
            snapshot: None,
            accepted_sent: false,
            next_send: 0,
            acked: 0,
            tail: VecDeque::new(),
            tail_base: 0,
            tail_send: 0,
            tail_bytes: 0,
            ready_emitted: false,
            cut_over: None,
            cut_over_sent: false,
            confirmed: false,
            restarts,
        });
        self.events.push_back(PredecessorEvent::SnapshotNeeded);
    }
}
