//! In-memory pair tests: a predecessor and a successor joined by message queues, a fake
//! relay on each side, clients publishing throughout, a fake clock (time moves only when
//! the harness jumps to the next `poll_timeout`) and fixed-seed RNGs.
//!
//! - this file: the harness (`FakeRelay`, `Pair`).
//! - `flows`: whole handoffs, breaks and resumes at each phase, bugs injected, deaths.
//! - `admission`: who may take over (secret, replay, hello checks, a second successor).
//! - `raw_framing`: `OHBF` fragments on `raw` connections.

mod admission;
mod flows;
mod raw_framing;

use super::*;
use crate::discovery::fixtures::{self, endpoint};
use crate::discovery::{DiscoveryRecord, PreviousNode, check_replace};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

const SECRET: &[u8] = b"ring secret for the tests";

/// A fixed-seed RNG: every nonce of a test run is the same on every run.
fn seeded(seed: u64) -> rand::rngs::StdRng {
    rand::SeedableRng::seed_from_u64(seed)
}

thread_local! {
    static NEXT_SEED: std::cell::Cell<u64> = const { std::cell::Cell::new(100) };
}

/// A fixed-seed RNG with a new seed at every call (the same sequence in every run of a
/// test: each test runs on its own thread).
fn next_seeded() -> rand::rngs::StdRng {
    seeded(NEXT_SEED.with(|n| n.replace(n.get() + 1)))
}

/// A minimal relay: rooms of (seq, body); replication events `{room, seq, body}` applied
/// idempotently.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FakeRelay {
    rooms: BTreeMap<String, Vec<(u64, String)>>,
    #[serde(skip)]
    draining: bool,
}

#[derive(Serialize, Deserialize)]
struct Event {
    room: String,
    seq: u64,
    body: String,
}

impl FakeRelay {
    fn publish(&mut self, room: &str, body: String) -> Option<Vec<u8>> {
        if self.draining {
            return None;
        }
        let log = self.rooms.entry(room.to_string()).or_default();
        let seq = log.last().map_or(1, |m| m.0 + 1);
        log.push((seq, body.clone()));
        Some(
            serde_json::to_vec(&Event {
                room: room.into(),
                seq,
                body,
            })
            .unwrap(),
        )
    }
    fn export(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap()
    }
    fn restore(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes).unwrap()
    }
    fn apply(&mut self, ev: &[u8]) {
        let e: Event = serde_json::from_slice(ev).unwrap();
        let log = self.rooms.entry(e.room).or_default();
        let head = log.last().map_or(0, |m| m.0);
        // Idempotent; an event beyond head + 1 (a gap) is refused.
        if e.seq == head + 1 {
            log.push((e.seq, e.body));
        }
    }
    fn high_water(&self) -> HighWater {
        self.rooms
            .iter()
            .map(|(r, l)| (r.clone(), l.last().map_or(0, |m| m.0)))
            .collect()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wire {
    Json,
    Binary,
}

/// Which direction a message travels.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    ToSuccessor,
    ToPredecessor,
}

type Hook = Box<dyn FnMut(Dir, &mut Message) -> Verdict>;

#[derive(PartialEq, Eq)]
enum Verdict {
    Deliver,
    /// Drop this message and break the connection.
    Break,
    /// Drop this message and everything after: the predecessor died.
    KillPredecessor,
}

fn record(peer: &str, generation: u64) -> DiscoveryRecord {
    DiscoveryRecord {
        previous: Some(PreviousNode {
            peer_id: "pred".into(),
            signaling: vec![endpoint(9000)],
        }),
        ..fixtures::record(peer, generation, 9001, SystemTime::UNIX_EPOCH)
    }
}

struct Pair {
    now: Instant,
    wire: Wire,
    p: Predecessor,
    s: Successor,
    p_relay: FakeRelay,
    s_relay: FakeRelay,
    /// Snapshot pieces of the restore in progress.
    s_pieces: Vec<u8>,
    /// The published discovery record (guarded like a real publisher).
    discovery: Option<DiscoveryRecord>,
    conn: Option<ConnId>,
    next_conn: ConnId,
    to_s: VecDeque<Sealed>,
    to_p: VecDeque<Sealed>,
    hook: Hook,
    /// Drop this many tail events on the successor side (bug injection).
    skip_apply: usize,
    /// Report wrong heads at every check (bug injection).
    lie_about_heads: bool,
    predecessor_dead: bool,
    /// Publishes per step while the predecessor is writable.
    publish_rate: usize,
    published: u64,
    refused_writes: u64,
    p_events: Vec<PredecessorEvent>,
    s_events: Vec<SuccessorEvent>,
    moved: bool,
    live: bool,
    /// Outsiders opening a connection and sending a `hello` each per step, from as many
    /// remotes, until the clients moved (a hello flood); time moves 1 ms per flood step.
    flood: usize,
    /// Hellos the flood sent so far.
    flood_sent: u64,
    /// Whether the successor went live while the flood was still running.
    live_during_flood: bool,
}

fn cfg() -> HandoffConfig {
    HandoffConfig {
        chunk_size: 128,
        window: 4,
        ..HandoffConfig::default()
    }
}

/// The predecessor `pred` of `generation`, with the ring secret and seed 1.
fn predecessor(generation: u64, cfg: HandoffConfig, now: Instant) -> Predecessor {
    Predecessor::new(
        "pred",
        generation,
        Secret::new(SECRET.to_vec()).unwrap(),
        cfg,
        now,
        seeded(1),
    )
}

/// The successor `peer` of generation 5 to `pred`, with the ring secret, no endpoints and
/// seed 2.
fn successor(peer: &str, cfg: SuccessorConfig, now: Instant) -> Successor {
    Successor::new(
        peer,
        "pred",
        5,
        Secret::new(SECRET.to_vec()).unwrap(),
        vec![],
        cfg,
        now,
        seeded(2),
    )
}

/// [`successor`] `succ` with the default config, told it is connected.
fn connected_successor(now: Instant) -> Successor {
    let mut s = successor("succ", SuccessorConfig::default(), now);
    assert_eq!(s.poll_event(), Some(SuccessorEvent::Connect));
    s.handle_connected(now);
    s
}

/// Asserts that `p`'s next transmit is a challenge on `conn`.
fn assert_challenged(p: &mut Predecessor, conn: ConnId) {
    let next = p.poll_transmit();
    assert!(
        matches!(
            next,
            Some(Transmit::Send(
                c,
                Sealed {
                    msg: Message::Challenge { .. },
                    ..
                }
            )) if c == conn
        ),
        "expected a challenge on {conn:?}, got {next:?}"
    );
}

/// Runs the authentication of `s` (connected) with `p` on connection 1: two rounds of
/// hello, challenge, proof and accepted.
fn authenticate(s: &mut Successor, p: &mut Predecessor, now: Instant) {
    p.handle_open(now, ConnId(1), "succ");
    for _ in 0..2 {
        while let Some(m) = s.poll_transmit() {
            p.handle_message(now, ConnId(1), m);
        }
        while let Some(Transmit::Send(_, m)) = p.poll_transmit() {
            s.handle_message(now, m);
        }
    }
}

impl Pair {
    fn new(wire: Wire) -> Self {
        Pair::with(wire, cfg(), SECRET)
    }

    fn with(wire: Wire, cfg: HandoffConfig, successor_secret: &[u8]) -> Self {
        let now = Instant::now();
        let mut p_relay = FakeRelay::default();
        for i in 0..200 {
            p_relay.publish(&format!("room-{}", i % 3), format!("old message {i}"));
        }
        Pair {
            now,
            wire,
            p: predecessor(4, cfg, now),
            s: Successor::new(
                "succ",
                "pred",
                5,
                Secret::new(successor_secret.to_vec()).unwrap(),
                vec![endpoint(9001)],
                SuccessorConfig::default(),
                now,
                seeded(2),
            ),
            p_relay,
            s_relay: FakeRelay::default(),
            s_pieces: Vec::new(),
            discovery: Some(record("pred", 4)),
            conn: None,
            next_conn: ConnId(1),
            to_s: VecDeque::new(),
            to_p: VecDeque::new(),
            hook: Box::new(|_, _| Verdict::Deliver),
            skip_apply: 0,
            lie_about_heads: false,
            predecessor_dead: false,
            publish_rate: 2,
            published: 0,
            refused_writes: 0,
            p_events: Vec::new(),
            s_events: Vec::new(),
            moved: false,
            live: false,
            flood: 0,
            flood_sent: 0,
            live_during_flood: false,
        }
    }

    /// One step of the hello flood: `flood` new connections from fresh remotes (and as
    /// many again from one remote), each sending a well-formed `hello` with a fresh nonce
    /// for generation 5, never a proof.
    fn flood_step(&mut self) {
        self.now += Duration::from_millis(1);
        self.p.handle_timeout(self.now);
        self.s.handle_timeout(self.now);
        for i in 0..self.flood {
            let n = self.flood_sent;
            self.flood_sent += 1;
            for (k, remote) in [format!("mallory-{n}"), "mallory".to_string()]
                .into_iter()
                .enumerate()
            {
                let c = ConnId(1_000_000 + 2 * n + k as u64);
                self.p.handle_open(self.now, c, &remote);
                let hello = Message::Hello {
                    v: 1,
                    successor_peer_id: remote.clone(),
                    predecessor_peer_id: "pred".into(),
                    generation: 5,
                    nonce: auth::fresh_nonce(&mut seeded(n * 2 + k as u64 + 7)).1,
                    endpoints: vec![],
                    resume: None,
                };
                self.p.handle_message(self.now, c, hello);
            }
            let _ = i;
        }
    }

    fn transcode(&self, m: Sealed) -> Sealed {
        match self.wire {
            Wire::Json => Sealed::from_json(&m.to_json()).unwrap(),
            Wire::Binary => Sealed::from_binary(&m.to_binary()).unwrap(),
        }
    }

    fn break_connection(&mut self) {
        if let Some(c) = self.conn.take() {
            self.to_s.clear();
            self.to_p.clear();
            if !self.predecessor_dead {
                self.p.handle_close(self.now, c);
            }
            self.s.handle_disconnected(self.now);
        }
    }

    /// Runs the hook on `m`, travelling `dir`: true to deliver it; false when the hook
    /// broke the connection (or killed the predecessor) instead.
    fn passes_hook(&mut self, dir: Dir, m: &mut Sealed) -> bool {
        match (self.hook)(dir, &mut m.msg) {
            Verdict::Deliver => return true,
            Verdict::Break => {}
            Verdict::KillPredecessor => self.predecessor_dead = true,
        }
        self.break_connection();
        false
    }

    /// One round of everything; returns whether anything happened.
    fn step(&mut self) -> bool {
        let mut progress = false;
        if self.flood > 0 && !self.moved && !self.predecessor_dead {
            self.flood_step();
            progress = true;
        }
        // Clients publish while the predecessor takes writes.
        if !self.predecessor_dead && !self.moved {
            for _ in 0..self.publish_rate {
                let n = self.published + self.refused_writes;
                match self
                    .p_relay
                    .publish(&format!("room-{}", n % 3), format!("live {n}"))
                {
                    Some(ev) => {
                        self.published += 1;
                        self.p.push_tail(ev);
                    }
                    None => self.refused_writes += 1,
                }
            }
        }
        // Predecessor events and transmits.
        let mut closing = false;
        while !self.predecessor_dead
            && let Some(ev) = self.p.poll_event()
        {
            progress = true;
            match &ev {
                PredecessorEvent::SnapshotNeeded => {
                    {
                        // The shell's part: hash the export (the core spawns nothing).
                        let prepared =
                            PreparedSnapshot::new(self.p_relay.export(), self.p.chunk_size());
                        self.p.provide_snapshot(self.now, prepared)
                    }
                }
                PredecessorEvent::ReadyForCutOver => {
                    self.p_relay.draining = true;
                    self.p.cut_over(self.now, self.p_relay.high_water());
                }
                PredecessorEvent::SuccessorLive { .. } => self.moved = true,
                _ => {}
            }
            self.p_events.push(ev);
        }
        while !self.predecessor_dead
            && let Some(t) = self.p.poll_transmit()
        {
            progress = true;
            match t {
                Transmit::Send(c, m) if Some(c) == self.conn => {
                    let m = self.transcode(m);
                    self.to_s.push_back(m);
                }
                Transmit::Send(..) => {}
                // A graceful close: what was sent before it is delivered first.
                Transmit::Close(c) if Some(c) == self.conn => closing = true,
                Transmit::Close(_) => {}
            }
        }
        // Successor events and transmits.
        while let Some(ev) = self.s.poll_event() {
            progress = true;
            match &ev {
                SuccessorEvent::Connect => {
                    if self.predecessor_dead {
                        self.s.handle_disconnected(self.now);
                    } else {
                        let c = self.next_conn;
                        self.next_conn.0 += 1;
                        self.conn = Some(c);
                        self.p.handle_open(self.now, c, "succ");
                        self.s.handle_connected(self.now);
                    }
                }
                SuccessorEvent::Close => self.break_connection(),
                SuccessorEvent::Reset => {
                    self.s_relay = FakeRelay::default();
                    self.s_pieces.clear();
                }
                SuccessorEvent::RestorePiece(b) => self.s_pieces.extend_from_slice(b),
                SuccessorEvent::RestoreFinish => {
                    self.s_relay = FakeRelay::restore(&std::mem::take(&mut self.s_pieces));
                    self.s.restore_done(self.now);
                }
                SuccessorEvent::ApplyTail(evs) => {
                    for e in evs {
                        if self.skip_apply > 0 {
                            self.skip_apply -= 1;
                            continue;
                        }
                        self.s_relay.apply(e);
                    }
                }
                SuccessorEvent::CheckHighWater { .. } => {
                    let mut hw = self.s_relay.high_water();
                    if self.lie_about_heads {
                        hw.insert("room-0".into(), 1);
                    }
                    self.s.confirm_high_water(self.now, &hw);
                }
                SuccessorEvent::Publish => {
                    let new = record("succ", 5);
                    let ok = self
                        .discovery
                        .as_ref()
                        .is_none_or(|cur| check_replace(cur, &new).is_ok());
                    if ok {
                        self.discovery = Some(new);
                        self.s.went_live(self.now);
                    } else {
                        self.s.publish_refused(self.now);
                    }
                }
                SuccessorEvent::Done => {
                    self.live = true;
                    self.live_during_flood = self.flood > 0;
                }
                _ => {}
            }
            self.s_events.push(ev);
        }
        while let Some(m) = self.s.poll_transmit() {
            progress = true;
            if self.conn.is_some() {
                self.to_p.push_back(self.transcode(m));
            }
        }
        // Deliver.
        while let Some(mut m) = self.to_s.pop_front() {
            progress = true;
            if !self.passes_hook(Dir::ToSuccessor, &mut m) {
                break;
            }
            self.s.handle_message(self.now, m);
        }
        if closing {
            self.break_connection();
        }
        while let Some(mut m) = self.to_p.pop_front() {
            progress = true;
            if !self.passes_hook(Dir::ToPredecessor, &mut m) {
                break;
            }
            if let (Some(c), false) = (self.conn, self.predecessor_dead) {
                self.p.handle_message(self.now, c, m);
            }
        }
        progress
    }

    /// Runs until nothing happens and no timer is pending, or `limit` steps.
    fn drive(&mut self) {
        for _ in 0..200_000 {
            if self.step() {
                continue;
            }
            let tp = if self.predecessor_dead {
                None
            } else {
                self.p.poll_timeout()
            };
            let next = [tp, self.s.poll_timeout()].into_iter().flatten().min();
            let Some(t) = next else { return };
            self.now = self.now.max(t);
            if !self.predecessor_dead {
                self.p.handle_timeout(self.now);
            }
            self.s.handle_timeout(self.now);
        }
        panic!("handoff did not settle");
    }

    fn assert_handed_over(&self) {
        assert!(self.live, "successor is live; events: {:?}", self.s_events);
        assert!(self.moved, "clients moved; events: {:?}", self.p_events);
        assert_eq!(self.p.phase(), PredecessorPhase::Done);
        assert_eq!(self.s.phase(), SuccessorPhase::Done);
        // Every acknowledged message is in the successor, once and in order.
        assert_eq!(self.s_relay.rooms, self.p_relay.rooms);
        let total: usize = self.s_relay.rooms.values().map(Vec::len).sum();
        assert_eq!(total as u64, 200 + self.published);
        for log in self.s_relay.rooms.values() {
            for (i, m) in log.iter().enumerate() {
                assert_eq!(m.0, i as u64 + 1, "dense sequence numbers");
            }
        }
        assert_eq!(self.discovery.as_ref().unwrap().peer_id, "succ");
        assert!(self.published > 10, "clients published during the handoff");
    }

    fn resumed(&self) -> bool {
        self.s_events
            .iter()
            .any(|e| matches!(e, SuccessorEvent::Authenticated { resumed: true, .. }))
    }
}
