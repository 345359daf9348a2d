//! Properties over random operation sequences.

use proptest::prelude::*;

use super::*;
use std::collections::HashMap as Map;

#[derive(Debug, Clone)]
enum Op {
    Connect {
        conn: u64,
        declared: bool,
        name: u8,
    },
    Disconnect {
        conn: u64,
    },
    Join {
        conn: u64,
        room: u8,
        since: Option<u64>,
    },
    Leave {
        conn: u64,
        room: u8,
    },
    Publish {
        conn: u64,
        room: u8,
        id: u8,
        size: usize,
    },
    History {
        conn: u64,
        room: u8,
        before: Option<u64>,
        limit: u32,
    },
    Legacy {
        conn: u64,
        kind: u8,
        n: i8,
    },
    Garbage {
        conn: u64,
        text: String,
    },
    Tick {
        ms: u64,
    },
    Drain {
        on: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0u64..6;
    prop_oneof![
        (conn.clone(), any::<bool>(), 0u8..4).prop_map(|(conn, declared, name)| Op::Connect {
            conn,
            declared,
            name
        }),
        conn.clone().prop_map(|conn| Op::Disconnect { conn }),
        (conn.clone(), 0u8..4, proptest::option::of(0u64..30))
            .prop_map(|(conn, room, since)| Op::Join { conn, room, since }),
        (conn.clone(), 0u8..4).prop_map(|(conn, room)| Op::Leave { conn, room }),
        (conn.clone(), 0u8..4, 0u8..12, 0usize..300).prop_map(|(conn, room, id, size)| {
            Op::Publish {
                conn,
                room,
                id,
                size,
            }
        }),
        (
            conn.clone(),
            0u8..4,
            proptest::option::of(0u64..40),
            0u32..8
        )
            .prop_map(|(conn, room, before, limit)| Op::History {
                conn,
                room,
                before,
                limit
            }),
        (conn.clone(), 0u8..4, any::<i8>()).prop_map(|(conn, kind, n)| Op::Legacy {
            conn,
            kind,
            n
        }),
        (conn.clone(), ".{0,20}").prop_map(|(conn, text)| Op::Garbage { conn, text }),
        (0u64..2000).prop_map(|ms| Op::Tick { ms }),
        any::<bool>().prop_map(|on| Op::Drain { on }),
    ]
}

const ROOMS: [&str; 4] = ["a", "b", "global", "bad room"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever clients do: no panic; seqs dense and never reused; heads never go
    /// back; the budget holds; legacy connections only get strings; each join
    /// session sees increasing seqs; a replica fed the replication stream and a
    /// restored snapshot both equal the primary.
    #[test]
    fn invariants_hold(ops in proptest::collection::vec(op(), 1..120)) {
        let mut c = config();
        c.memory_budget = 3_000;
        c.limits.rate_burst = 20.0;
        c.limits.rate_per_sec = 5.0;
        c.limits.max_rooms_per_client = 3;
        let mut h = Harness::new(c.clone());
        h.relay.set_replication(true);
        let mut replica = Relay::new(c.clone(), h.now);
        let mut open: Map<u64, bool> = Map::new(); // conn -> declared
        let mut legacy: std::collections::HashSet<u64> = Default::default();
        let mut last_seen: Map<(u64, String), u64> = Map::new();
        let mut hw = h.relay.high_water();
        for op in ops {
            h.wall += 1;
            match op {
                Op::Connect { conn, declared, name } => {
                    let meta = match (declared, name) {
                        (true, 0) => relay_meta(),
                        (true, n) => named(&format!("n{n}")),
                        (false, _) => Value::Null,
                    };
                    h.relay.disconnect(h.now, ConnId(conn));
                    legacy.remove(&conn);
                    last_seen.retain(|(c, _), _| *c != conn);
                    h.relay.connect(h.now, ConnId(conn), ConnInfo { peer_id: format!("p{conn}"), metadata: meta });
                    open.insert(conn, declared);
                }
                Op::Disconnect { conn } => {
                    h.relay.disconnect(h.now, ConnId(conn));
                    open.remove(&conn);
                    legacy.remove(&conn);
                    last_seen.retain(|(c, _), _| *c != conn);
                }
                Op::Join { conn, room, since } => {
                    last_seen.remove(&(conn, ROOMS[room as usize].to_string()));
                    let mut m = json!({"op":"join","room":ROOMS[room as usize]});
                    if let Some(s) = since { m["since"] = json!(s); }
                    h.relay.handle_message(h.now, h.wall, ConnId(conn), m);
                }
                Op::Leave { conn, room } => {
                    h.relay.handle_message(h.now, h.wall, ConnId(conn), json!({"op":"leave","room":ROOMS[room as usize]}));
                }
                Op::Publish { conn, room, id, size } => {
                    h.relay.handle_message(h.now, h.wall, ConnId(conn),
                        json!({"op":"publish","room":ROOMS[room as usize],"id":format!("i{id}"),"body":"x".repeat(size)}));
                }
                Op::History { conn, room, before, limit } => {
                    let mut m = json!({"op":"history","room":ROOMS[room as usize],"limit":limit});
                    if let Some(b) = before { m["before"] = json!(b); }
                    h.relay.handle_message(h.now, h.wall, ConnId(conn), m);
                }
                Op::Legacy { conn, kind, n } => {
                    let s = match kind {
                        0 => n.to_string(),
                        1 => format!(r#"{{"userName":"u{n}","message":"m"}}"#),
                        2 => "ping".to_string(),
                        _ => format!("junk {n}"),
                    };
                    if open.contains_key(&conn) && !open[&conn] && !legacy.contains(&conn) {
                        // First message of an undeclared connection decides.
                        legacy.insert(conn);
                        let before = h.relay.metrics().legacy_clients;
                        h.relay.handle_message(h.now, h.wall, ConnId(conn), json!(s));
                        if h.relay.metrics().legacy_clients == before { legacy.remove(&conn); }
                    } else {
                        h.relay.handle_message(h.now, h.wall, ConnId(conn), json!(s));
                    }
                }
                Op::Garbage { conn, text } => {
                    h.relay.handle_message(h.now, h.wall, ConnId(conn), json!({"op": text, "room": 1}));
                }
                Op::Tick { ms } => h.now += Duration::from_millis(ms),
                Op::Drain { on } => h.relay.set_mode(if on { Mode::Draining } else { Mode::Primary }),
            }
            // Outputs: schema-valid (checked in drain), strings only for legacy.
            for (conn, v) in h.drain() {
                if legacy.contains(&conn) {
                    prop_assert!(v.get("text").is_some() || v.get("close").is_some(), "legacy got {v}");
                }
                if v["op"] == "msg" {
                    let key = (conn, v["room"].as_str().unwrap().to_string());
                    let seq = v["seq"].as_u64().unwrap();
                    if let Some(prev) = last_seen.get(&key) {
                        prop_assert!(seq > *prev, "seq {seq} after {prev} on {key:?}");
                    }
                    last_seen.insert(key, seq);
                }
            }
            // Heads never go back; each room's log is contiguous up to its head.
            let now_hw = h.relay.high_water();
            for (room, head) in &hw {
                prop_assert!(now_hw.get(room).copied().unwrap_or(0) >= *head);
            }
            hw = now_hw;
            let m = h.relay.metrics();
            prop_assert!(m.bytes_stored <= 3_000 || m.messages <= 1, "{m:?}");
            for (name, st) in h.relay.room_stats() {
                prop_assert_eq!(st.evicted_before + st.messages as u64, st.head + 1, "room {}", name);
            }
            // The replica follows.
            while let Some(e) = h.relay.poll_replication() {
                replica.apply_replication(e).unwrap();
            }
            while replica.poll_output().is_some() {}
        }
        prop_assert_eq!(replica.high_water(), h.relay.high_water());
        prop_assert_eq!(replica.export_snapshot().messages, h.relay.export_snapshot().messages);
        let snap = h.relay.export_snapshot();
        let restored = Relay::restore(c, Snapshot::from_json(&snap.to_json()).unwrap(), h.now).unwrap();
        prop_assert_eq!(restored.export_snapshot(), snap);
    }
}
