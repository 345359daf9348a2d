//! The relay core driven with fuzzed connections and messages: relay-protocol requests
//! (as objects or as JSON strings), the seed's legacy strings and arbitrary values, from a
//! few connections, with a fake clock, mode switches, `moved` notices and a successor
//! that follows by replication.
//!
//! Beyond "no panic", after every step:
//! - nothing is sent to a connection that is not open (except the refusal of a connection
//!   beyond `max_clients`), every object sent is a JSON object with a string `op`;
//! - the store stays within its memory budget (or holds a single message);
//! - the successor (restored from `start_replication`'s snapshot, then fed every
//!   replication event) holds exactly the primary's store;
//!
//! and at the end the primary's snapshot round-trips through JSON and restores into a
//! relay holding the same store.
#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ouroboros::relay::wire::{Limits, SignalingEndpoint};
use ouroboros::relay::{ConnId, ConnInfo, Mode, Outgoing, Output, Relay, RelayConfig, Snapshot};
use serde_json::{Value, json};

const ROOMS: [&str; 6] = ["lobby", "global", "r1", ".bad", "a b", "r2"];
const PEERS: [&str; 3] = ["p1", "p2", "p3"];
const SLOTS: usize = 4;

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Any(String),
}

impl Name {
    fn get(&self) -> String {
        match self {
            Name::Known(i) => {
                let pool: Vec<&str> = ROOMS.iter().chain(&PEERS).copied().collect();
                pool[usize::from(*i) % pool.len()].to_owned()
            }
            Name::Any(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Body {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A string of `n * 8` bytes (fills the budget quickly).
    Big(u8),
    Arr(Vec<Body>),
    Obj(Vec<(String, Body)>),
}

impl Body {
    fn get(&self) -> Value {
        match self {
            Body::Null => Value::Null,
            Body::Bool(b) => json!(b),
            Body::Int(i) => json!(i),
            Body::Float(f) => json!(f),
            Body::Str(s) => json!(s),
            Body::Big(n) => json!("x".repeat(usize::from(*n) * 8)),
            Body::Arr(v) => Value::Array(v.iter().map(Body::get).collect()),
            Body::Obj(v) => Value::Object(v.iter().map(|(k, b)| (k.clone(), b.get())).collect()),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Req {
    Join {
        room: Name,
        since: Option<u64>,
    },
    Publish {
        room: Name,
        id: Name,
        body: Body,
    },
    History {
        room: Name,
        before: Option<u64>,
        limit: Option<u32>,
    },
    Leave {
        room: Name,
    },
    Direct {
        to: Name,
        body: Body,
    },
    Ping,
    /// A request that also names the client (`client`, read from the first message only).
    Named {
        client: Name,
        req: Box<Req>,
    },
    /// Text that is sent as the JSON value it holds, or as a string if it is not JSON.
    Json(String),
    /// A string value as is (legacy, or a relay request sent as text).
    Str(String),
    /// The seed's chat message `{userName, message}` as a string.
    LegacyChat {
        user: String,
        message: String,
    },
    /// The seed's page request (a numeric string).
    LegacyPage(i16),
}

impl Req {
    fn get(&self) -> Value {
        match self {
            Req::Join { room, since } => json!({"op": "join", "room": room.get(), "since": since}),
            Req::Publish { room, id, body } => {
                json!({"op": "publish", "room": room.get(), "id": id.get(), "body": body.get()})
            }
            Req::History {
                room,
                before,
                limit,
            } => {
                json!({"op": "history", "room": room.get(), "before": before, "limit": limit})
            }
            Req::Leave { room } => json!({"op": "leave", "room": room.get()}),
            Req::Direct { to, body } => json!({"op": "direct", "to": to.get(), "body": body.get()}),
            Req::Ping => json!({"op": "ping"}),
            Req::Named { client, req } => {
                let mut v = req.get();
                if let Value::Object(m) = &mut v {
                    m.insert("client".into(), client.get().into());
                }
                v
            }
            Req::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone())),
            Req::Str(s) => Value::String(s.clone()),
            Req::LegacyChat { user, message } => {
                Value::String(json!({"userName": user, "message": message}).to_string())
            }
            Req::LegacyPage(n) => Value::String(n.to_string()),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Meta {
    None,
    Declared { client: Option<Name> },
    Json(String),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Connect {
        slot: u8,
        peer: u8,
        meta: Meta,
    },
    Disconnect {
        slot: u8,
    },
    /// `as_text`: send the request as a JSON string (the text form of the relay protocol).
    Message {
        slot: u8,
        req: Req,
        as_text: bool,
    },
    Advance {
        ms: u16,
    },
    Mode {
        draining: bool,
    },
    Moved {
        generation: u8,
    },
    /// A successor starts following (replaces the current one).
    StartReplication,
}

struct Driver {
    config: RelayConfig,
    relay: Relay,
    follower: Option<Relay>,
    now: Instant,
    wall_ms: u64,
    next_conn: u64,
    slots: [Option<ConnId>; SLOTS],
    open: HashSet<ConnId>,
}

fn config() -> RelayConfig {
    let mut c = RelayConfig::new("node", 1);
    c.limits = Limits {
        max_message_bytes: 1024,
        rate_per_sec: 10.0,
        rate_burst: 20.0,
        max_rooms_per_client: 3,
        max_rooms: 5,
        max_clients: 3,
        history_limit_max: 10,
        history_default_limit: 5,
        history_max_bytes: 2048,
        max_room_name: 16,
        max_name_bytes: 16,
    };
    c.memory_budget = 8 * 1024;
    c
}

impl Driver {
    fn new() -> Driver {
        let config = config();
        let now = Instant::now();
        Driver {
            relay: Relay::new(config.clone(), now),
            config,
            follower: None,
            now,
            wall_ms: 1_700_000_000_000,
            next_conn: 0,
            slots: [None; SLOTS],
            open: HashSet::new(),
        }
    }

    fn run(&mut self, op: Op) {
        let mut connecting = None;
        match op {
            Op::Connect { slot, peer, meta } => {
                let i = usize::from(slot) % SLOTS;
                if let Some(old) = self.slots[i].take() {
                    self.open.remove(&old);
                    self.relay.disconnect(self.now, old);
                }
                self.next_conn += 1;
                let conn = ConnId(self.next_conn);
                let metadata = match meta {
                    Meta::None => Value::Null,
                    Meta::Declared { client } => {
                        let mut m = json!({"protocol": "ouroboros/1"});
                        if let Some(c) = client {
                            m["client"] = c.get().into();
                        }
                        m
                    }
                    Meta::Json(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
                };
                let info = ConnInfo {
                    peer_id: PEERS[usize::from(peer) % PEERS.len()].into(),
                    metadata,
                };
                self.slots[i] = Some(conn);
                self.open.insert(conn);
                connecting = Some(conn);
                self.relay.connect(self.now, conn, info);
            }
            Op::Disconnect { slot } => {
                if let Some(conn) = self.slots[usize::from(slot) % SLOTS].take() {
                    self.open.remove(&conn);
                    self.relay.disconnect(self.now, conn);
                }
            }
            Op::Message { slot, req, as_text } => {
                let Some(conn) = self.slots[usize::from(slot) % SLOTS] else {
                    return;
                };
                let mut msg = req.get();
                if as_text && msg.is_object() {
                    msg = Value::String(msg.to_string());
                }
                self.relay.handle_message(self.now, self.wall_ms, conn, msg);
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(ms));
                self.wall_ms += u64::from(ms);
            }
            Op::Mode { draining } => self.relay.set_mode(if draining {
                Mode::Draining
            } else {
                Mode::Primary
            }),
            Op::Moved { generation } => {
                let ep = SignalingEndpoint {
                    host: "example.org".into(),
                    port: 443,
                    path: "/".into(),
                    key: "peerjs".into(),
                    secure: true,
                    peer_id: None,
                };
                self.relay
                    .announce_moved("next", &[ep], u64::from(generation));
            }
            Op::StartReplication => {
                let snapshot = self.relay.start_replication();
                let decoded = round_trip(&snapshot);
                let follower = Relay::restore(self.config.clone(), decoded, self.now)
                    .expect("a relay's own snapshot restores");
                self.follower = Some(follower);
            }
        }
        self.drain(connecting);
        self.check();
    }

    fn drain(&mut self, connecting: Option<ConnId>) {
        while let Some(out) = self.relay.poll_output() {
            match out {
                Output::Send { conn, message } => {
                    assert!(
                        self.open.contains(&conn) || Some(conn) == connecting,
                        "send to a connection that is not open: {}",
                        message.text()
                    );
                    if let Outgoing::Object(p) = &message {
                        let v: Value = serde_json::from_str(p.json()).expect("objects are JSON");
                        assert!(v["op"].is_string(), "object without op: {}", p.json());
                        assert_eq!(v, p.value());
                    }
                }
                Output::Close { conn, .. } => {
                    self.open.remove(&conn);
                    for s in self.slots.iter_mut() {
                        if *s == Some(conn) {
                            *s = None;
                        }
                    }
                }
            }
        }
        if let Some(f) = &mut self.follower {
            while let Some(e) = self.relay.poll_replication() {
                f.apply_replication(e)
                    .expect("replication applies in order");
            }
            while f.poll_output().is_some() {}
        }
    }

    fn check(&self) {
        let m = self.relay.metrics();
        assert_eq!(m.clients, self.open.len());
        assert!(m.clients <= self.config.limits.max_clients);
        assert!(
            m.bytes_stored <= self.config.memory_budget || m.messages <= 1,
            "{} bytes in {} messages above the budget",
            m.bytes_stored,
            m.messages
        );
        assert!(m.rooms <= self.config.limits.max_rooms + 1);
        if let Some(f) = &self.follower {
            assert_eq!(
                String::from_utf8_lossy(&f.export_snapshot().to_json()),
                String::from_utf8_lossy(&self.relay.export_snapshot().to_json()),
                "the successor diverged from the primary"
            );
        }
    }

    /// The primary's state restores from its snapshot.
    fn finish(self) {
        let snapshot = self.relay.export_snapshot();
        let bytes = snapshot.to_json();
        let restored = Relay::restore(self.config, round_trip(&snapshot), self.now)
            .expect("a relay's own snapshot restores");
        assert_eq!(
            String::from_utf8_lossy(&restored.export_snapshot().to_json()),
            String::from_utf8_lossy(&bytes),
            "the restored relay differs"
        );
        assert_eq!(restored.high_water(), self.relay.high_water());
    }
}

/// `to_json` then `from_json`: the same snapshot.
fn round_trip(s: &Snapshot) -> Snapshot {
    let bytes = s.to_json();
    let back = Snapshot::from_json(&bytes).expect("a snapshot's own JSON decodes");
    assert_eq!(&back, s, "snapshot JSON round trip");
    back
}

fuzz_target!(|ops: Vec<Op>| {
    let mut d = Driver::new();
    for op in ops.into_iter().take(300) {
        d.run(op);
    }
    d.finish();
});
