//! The signaling server's sans-IO core driven like its axum shell does: sockets connect
//! with fuzzed ids, tokens and keys, send fuzzed frames (parsed by `wire::parse`, as the
//! shell does), go silent, overflow, fail deliveries and close, under a fake clock.
//!
//! Beyond "no panic", after every step:
//! - every frame the realm sends is a JSON object with a string `type`, and a relayed
//!   frame parses back (`wire::parse`) to its type, destination and payload;
//! - nothing is sent to a socket after the realm closed or dropped it;
//! - every registered id is a valid id held by a socket that is still open;
//! - the offline queues stay within their limits and the counters agree with the realm;
//! - after `handle_timeout(now)` no timer is due at `now` any more.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ouroboros::signaling::{
    Action, AddressLimits, ConnId, ConnectRequest, MsgType, Parsed, QueueLimits, Rate, Realm,
    RealmConfig, parse, valid_id,
};

const KEY: &str = "peerjs";
const IDS: [&str; 5] = ["a", "b", "node", "c\u{e9}", "d\"q"];
const TOKENS: [&str; 3] = ["t1", "t2", "x"];
const SLOTS: usize = 6;
const TYPES: [&str; 9] = [
    "OFFER",
    "ANSWER",
    "CANDIDATE",
    "LEAVE",
    "EXPIRE",
    "HEARTBEAT",
    "OPEN",
    "ERROR",
    "PING",
];

/// An id or token: one of a few (so clients meet) or anything.
#[derive(Arbitrary, Debug)]
enum Pick {
    Known(u8),
    Any(String),
    Missing,
}

impl Pick {
    fn get<'a>(&'a self, pool: &[&'a str]) -> Option<&'a str> {
        match self {
            Pick::Known(i) => Some(pool[usize::from(*i) % pool.len()]),
            Pick::Any(s) => Some(s),
            Pick::Missing => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum FrameSpec {
    /// A frame as the client wrote it.
    Raw(String),
    /// A well-formed message: `type` from the list, `dst`, `payload` (raw JSON if valid).
    Msg {
        kind: u8,
        dst: Option<Pick>,
        payload: Option<String>,
    },
    /// Many well-formed messages at once (rate limits).
    Burst { kind: u8, dst: u8, count: u8 },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect {
        slot: u8,
        id: Pick,
        token: Pick,
        wrong_key: bool,
        local: bool,
        addr: Option<u8>,
    },
    Frame {
        slot: u8,
        frame: FrameSpec,
    },
    TooBig {
        slot: u8,
    },
    /// The client closes its socket.
    Close {
        slot: u8,
    },
    /// The driver cannot execute one of the recent sends (write queue full).
    Undeliverable {
        nth: u8,
    },
    Advance {
        ms: u16,
    },
    Reserve {
        id: u8,
        token: u8,
    },
}

#[derive(Debug)]
struct Socket {
    conn: ConnId,
    /// The id it was admitted with (the shell passes it with every frame).
    id: Option<String>,
}

struct Driver {
    realm: Realm<ConnId>,
    config: RealmConfig,
    now: Instant,
    next_conn: u64,
    slots: [Option<Socket>; SLOTS],
    /// Sockets the realm closed or dropped, or that closed themselves (the realm must not
    /// act on them any more).
    closed: HashSet<ConnId>,
    /// Sockets whose close the driver still has to report (`disconnect`).
    closing: Vec<ConnId>,
    /// Recent sends: (conn, dst, src), for `Undeliverable`.
    sent: Vec<(ConnId, Option<String>, Option<String>)>,
    reserved: usize,
}

fn message_frame(kind: u8, dst: Option<&str>, payload: Option<&str>) -> String {
    let mut v = serde_json::Map::new();
    v.insert("type".into(), TYPES[usize::from(kind) % TYPES.len()].into());
    if let Some(d) = dst {
        v.insert("dst".into(), d.into());
    }
    if let Some(p) = payload {
        let p = serde_json::from_str(p).unwrap_or_else(|_| serde_json::Value::from(p));
        v.insert("payload".into(), p);
    }
    serde_json::Value::Object(v).to_string()
}

impl Driver {
    fn new() -> Driver {
        let config = RealmConfig {
            key: KEY.into(),
            expire_timeout: Duration::from_secs(5),
            alive_timeout: Duration::from_secs(20),
            concurrent_limit: 4,
            max_frame_size: 512,
            rate: Some(Rate {
                per_second: 5.0,
                burst: 8.0,
            }),
            malformed_limit: 3.0,
            queues: QueueLimits {
                per_peer: 3,
                bytes_per_peer: 600,
                total: 5,
                bytes_total: 1500,
            },
            per_address: AddressLimits {
                connections: 2,
                rate: Some(Rate {
                    per_second: 10.0,
                    burst: 12.0,
                }),
            },
        };
        Driver {
            realm: Realm::new(config.clone()),
            config,
            now: Instant::now(),
            next_conn: 0,
            slots: Default::default(),
            closed: HashSet::new(),
            closing: Vec::new(),
            sent: Vec::new(),
            reserved: 0,
        }
    }

    fn slot(&self, slot: u8) -> Option<&Socket> {
        self.slots[usize::from(slot) % SLOTS].as_ref()
    }

    /// Executes the realm's actions, then reports the sockets it closed as gone (what the
    /// shell's socket task does once the close is written).
    fn drain(&mut self) {
        loop {
            while let Some(action) = self.realm.poll_output() {
                match action {
                    Action::Send {
                        to,
                        conn,
                        frame,
                        dst,
                        src,
                    } => {
                        assert_eq!(to, conn);
                        assert!(!self.closed.contains(&conn), "send after close: {frame}");
                        check_frame(&frame, dst.as_deref());
                        self.sent.push((
                            conn,
                            dst.map(|d| d.to_string()),
                            src.map(|s| s.to_string()),
                        ));
                        if self.sent.len() > 16 {
                            self.sent.remove(0);
                        }
                    }
                    Action::Close { to, conn, .. } | Action::Drop { to, conn } => {
                        assert_eq!(to, conn);
                        assert!(
                            self.closed.insert(conn),
                            "close of a closed socket: {conn:?}"
                        );
                        self.closing.push(conn);
                    }
                }
            }
            let Some(conn) = self.closing.pop() else {
                break;
            };
            if let Some(i) = self
                .slots
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.conn == conn))
            {
                let s = self.slots[i].take().expect("found");
                self.realm.disconnect(self.now, conn, s.id.as_deref());
            }
        }
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Connect {
                slot,
                id,
                token,
                wrong_key,
                local,
                addr,
            } => {
                let i = usize::from(slot) % SLOTS;
                if let Some(old) = self.slots[i].take() {
                    // The slot's previous socket closes first.
                    self.closed.insert(old.conn);
                    self.realm.disconnect(self.now, old.conn, old.id.as_deref());
                }
                self.next_conn += 1;
                let conn = ConnId(self.next_conn);
                let req = ConnectRequest {
                    key: Some(if wrong_key { "nope" } else { KEY }),
                    id: id.get(&IDS),
                    token: token.get(&TOKENS),
                    local,
                    addr: addr.map(|a| std::net::IpAddr::from([10, 0, 0, a % 3])),
                };
                let admitted = match self.realm.connect(self.now, conn, conn, &req) {
                    ouroboros::signaling::Admission::Open(id) => {
                        assert!(valid_id(&id));
                        Some(id.to_string())
                    }
                    ouroboros::signaling::Admission::Rejected(_) => None,
                };
                self.slots[i] = Some(Socket { conn, id: admitted });
            }
            Op::Frame { slot, frame } => {
                let Some(s) = self.slot(slot) else { return };
                let (conn, id) = (s.conn, s.id.clone());
                let texts = match frame {
                    FrameSpec::Raw(t) => vec![t],
                    FrameSpec::Msg { kind, dst, payload } => vec![message_frame(
                        kind,
                        dst.as_ref().and_then(|d| d.get(&IDS)),
                        payload.as_deref(),
                    )],
                    FrameSpec::Burst { kind, dst, count } => {
                        let f = message_frame(kind, Some(IDS[usize::from(dst) % IDS.len()]), None);
                        vec![f; usize::from(count % 32)]
                    }
                };
                for text in texts {
                    self.frame(conn, id.as_deref(), &text);
                }
            }
            Op::TooBig { slot } => {
                let Some(s) = self.slot(slot) else { return };
                if let Some(id) = s.id.clone() {
                    let conn = s.conn;
                    self.realm.too_big(self.now, conn, &id);
                }
            }
            Op::Close { slot } => {
                if let Some(s) = self.slots[usize::from(slot) % SLOTS].take() {
                    self.closed.insert(s.conn);
                    self.realm.disconnect(self.now, s.conn, s.id.as_deref());
                }
            }
            Op::Undeliverable { nth } => {
                if self.sent.is_empty() {
                    return;
                }
                let (conn, dst, src) = self.sent.remove(usize::from(nth) % self.sent.len());
                self.realm
                    .undeliverable(self.now, conn, dst.as_deref(), src.as_deref());
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(ms) * 4);
                if self.realm.poll_timeout().is_some_and(|t| t <= self.now) {
                    self.realm.handle_timeout(self.now);
                }
                assert!(
                    self.realm.poll_timeout().is_none_or(|t| t > self.now),
                    "a timer is still due after handle_timeout"
                );
            }
            Op::Reserve { id, token } => {
                if self.reserved < 2 {
                    self.reserved += 1;
                    self.realm.reserve(
                        IDS[usize::from(id) % IDS.len()],
                        TOKENS[usize::from(token) % TOKENS.len()],
                    );
                }
            }
        }
        self.drain();
        self.check();
    }

    /// What the shell's `on_frame` does with one text frame.
    fn frame(&mut self, conn: ConnId, id: Option<&str>, text: &str) {
        let Some(id) = id else { return };
        if text.len() > self.config.max_frame_size {
            self.realm.too_big(self.now, conn, id);
            return;
        }
        match parse(text) {
            Parsed::Message(msg) => self.realm.message(self.now, conn, id, &msg),
            Parsed::Malformed => self.realm.malformed(self.now, conn, id),
            Parsed::Ignored => {}
        }
        self.drain();
    }

    fn check(&self) {
        let stats = self.realm.stats();
        assert_eq!(stats.clients, self.realm.len());
        assert!(self.realm.len() <= self.config.concurrent_limit + self.reserved);
        assert!(stats.queued_messages <= self.config.queues.total);
        assert!(stats.queued_bytes <= self.config.queues.bytes_total);
        assert!(stats.queues <= stats.queued_messages);
        let open: HashMap<&str, usize> = self
            .slots
            .iter()
            .flatten()
            .filter_map(|s| s.id.as_deref())
            .fold(HashMap::new(), |mut m, id| {
                *m.entry(id).or_default() += 1;
                m
            });
        for id in self.realm.ids() {
            assert!(valid_id(&id), "registered invalid id {id:?}");
            assert!(
                open.contains_key(id.as_str()),
                "{id:?} is registered but none of its sockets is open"
            );
        }
        let open_sockets = self.slots.iter().flatten().count();
        assert!(stats.detached + self.realm.len() <= open_sockets);
    }
}

/// A frame the realm sends: a JSON object with a string `type`; relayed frames carry
/// `src` and `dst` and parse back to their type and destination.
fn check_frame(frame: &str, dst: Option<&str>) {
    let v: serde_json::Value = serde_json::from_str(frame).expect("frames are JSON");
    let kind = v["type"].as_str().expect("frames have a type");
    if v.get("src").is_some() {
        let Parsed::Message(m) = parse(frame) else {
            panic!("relayed frame does not parse: {frame}")
        };
        let t = MsgType::from_name(kind).expect("a known type");
        assert_eq!(m.kind, Some(t));
        assert_eq!(m.dst.as_deref(), v["dst"].as_str());
        assert_eq!(m.dst.as_deref(), dst, "frame addressed to someone else");
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut d = Driver::new();
    for op in ops.into_iter().take(200) {
        d.run(op);
    }
});
