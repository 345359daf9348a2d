//! The relay protocol: greeting, join, publish, history, presence, direct, fan-out.

use super::*;

// ----- greeting and protocol detection ----------------------------------------------

#[test]
fn welcome_and_protocol_detection() {
    let mut h = Harness::new(config());
    let limits = serde_json::to_value(Limits::default()).unwrap();
    let welcome = json!({"op":"welcome","node":"node-1","generation":7,"limits":limits});
    // Declared: greeted at once.
    assert_eq!(h.open(1, "p1", relay_meta()), vec![(1, welcome.clone())]);
    // Undeclared: nothing until the first message; an object means the relay protocol.
    assert_eq!(h.open(2, "p2", Value::Null), vec![]);
    h.check(
        2,
        json!({"op":"ping"}),
        &[(2, welcome.clone()), (2, json!({"op":"pong"}))],
    );
    // A JSON string with an op: relay protocol answered in strings.
    assert_eq!(h.open(3, "p3", json!({"client":"x"})), vec![]);
    let out = h.send(3, json!(r#"{"op":"ping"}"#));
    assert_eq!(out.len(), 2);
    let greeting: Value = serde_json::from_str(out[0].1["text"].as_str().unwrap()).unwrap();
    let mut named_welcome = welcome.clone();
    named_welcome["client"] = json!("x"); // a declared name is told back
    assert_eq!(greeting, named_welcome);
    assert_eq!(out[1], text(3, r#"{"op":"pong"}"#));
    // Any other string: legacy, answered in the seed's strings only.
    assert_eq!(h.open(4, "p4", Value::Null), vec![]);
    h.check(4, json!("ping"), &[text(4, "pong")]);
    h.check(4, json!("0"), &[text(4, "[]")]);
    // A non-object from a relay client is an error, and the connection stays usable.
    h.check_error(1, json!([1, 2]), "bad_request", Value::Null);
    h.check(1, json!({"op":"ping"}), &[(1, json!({"op":"pong"}))]);
    // The gap notice rides on later welcomes.
    h.relay.set_gap(Some(json!({"since_ms": 5})));
    let out = h.open(5, "p5", relay_meta());
    assert_eq!(out[0].1["gap"], json!({"since_ms": 5}));
}

// ----- join, since, live order ------------------------------------------------------

#[test]
fn join_since_and_live_order() {
    let mut h = Harness::new(config());
    h.open_relay(1, "pub", named("alice"));
    for i in 1..=5 {
        assert_eq!(h.publish(1, "r", &format!("m{i}"), json!(i)), i);
    }
    h.open_relay(2, "sub", named("bob"));
    // No since: no replay.
    h.check(
        2,
        json!({"op":"join","room":"r"}),
        &[joined(2, "r", 5), presence(2, "r", &["bob"], &[])],
    );
    h.send(2, json!({"op":"leave","room":"r"}));
    // since 3: 4 and 5 replayed after joined, then live 6.
    h.check(
        2,
        json!({"op":"join","room":"r","since":3}),
        &[
            joined(2, "r", 5),
            presence(2, "r", &["bob"], &[]),
            msg(2, "r", 4, "alice", 1000, "m4", json!(4)),
            msg(2, "r", 5, "alice", 1000, "m5", json!(5)),
        ],
    );
    h.wall = 2000;
    h.check(
        1,
        json!({"op":"publish","room":"r","id":"m6","body":{"k":"v"}}),
        &[
            ack(1, "m6", "r", 6),
            msg(2, "r", 6, "alice", 2000, "m6", json!({"k":"v"})),
        ],
    );
    // Rejoining while joined replays again and announces nothing.
    h.check(
        2,
        json!({"op":"join","room":"r","since":5}),
        &[
            joined(2, "r", 6),
            presence(2, "r", &["bob"], &[]),
            msg(2, "r", 6, "alice", 2000, "m6", json!({"k":"v"})),
        ],
    );
    // since 0 replays everything; since beyond head replays nothing.
    h.open_relay(3, "c", Value::Null);
    let out = h.send(3, json!({"op":"join","room":"r","since":0}));
    let seqs: Vec<u64> = out.iter().filter_map(|(_, v)| v["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    h.send(3, json!({"op":"leave","room":"r"}));
    let out = h.send(3, json!({"op":"join","room":"r","since":99}));
    assert!(out.iter().all(|(_, v)| v["op"] != "msg"));
}

// ----- publish, ack, dedup ----------------------------------------------------------

#[test]
fn publish_ack_and_dedup() {
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", named("alice"));
    h.open_relay(2, "p2", Value::Null);
    h.send(2, json!({"op":"join","room":"r"}));
    h.check(
        1,
        json!({"op":"publish","room":"r","id":"a","body":"x"}),
        &[
            ack(1, "a", "r", 1),
            msg(2, "r", 1, "alice", 1000, "a", json!("x")),
        ],
    );
    // Same id, same identity: acknowledged again with the same seq, not stored twice.
    h.check(
        1,
        json!({"op":"publish","room":"r","id":"a","body":"different"}),
        &[ack(1, "a", "r", 1)],
    );
    // Same identity on a new connection (a reconnect): still deduplicated.
    h.open_relay(3, "p3-new-peer-id", named("alice"));
    h.check(
        3,
        json!({"op":"publish","room":"r","id":"a","body":"x"}),
        &[ack(3, "a", "r", 1)],
    );
    // Identity declared in the first message instead of metadata.
    assert_eq!(h.open(4, "p4", Value::Null), vec![]);
    let out = h.send(
        4,
        json!({"op":"publish","room":"r","id":"a","body":"x","client":"alice"}),
    );
    assert_eq!(out[1], ack(4, "a", "r", 1));
    // The same id from another identity is another message.
    h.check(
        2,
        json!({"op":"publish","room":"r","id":"a","body":"y"}),
        &[
            ack(2, "a", "r", 2),
            msg(2, "r", 2, "p2", 1000, "a", json!("y")),
        ],
    );
    // The same id in another room is another message.
    assert_eq!(h.publish(1, "s", "a", json!(1)), 1);
    let m = h.relay.metrics();
    assert_eq!((m.published, m.deduplicated, m.messages), (3, 3, 3));
    // Identity cannot change after the first message.
    h.send(
        2,
        json!({"op":"publish","room":"r","id":"b","body":1,"client":"mallory"}),
    );
    let out = h.send(2, json!({"op":"history","room":"r","limit":1}));
    assert_eq!(out[0].1["messages"][0]["from"], "p2");
}

// ----- history ----------------------------------------------------------------------

#[test]
fn history_paging() {
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", Value::Null);
    for i in 1..=12u64 {
        h.wall = 1000 + i;
        h.publish(1, "r", &format!("m{i}"), json!(i));
    }
    let check = |h: &mut Harness, req: Value, seqs: &[u64], evicted: Option<u64>| {
        let out = h.send(1, req.clone());
        assert_eq!(out.len(), 1, "{req}");
        let v = &out[0].1;
        assert_eq!(v["op"], "history");
        assert_eq!(v["room"], req["room"]);
        let got: Vec<u64> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(got, seqs, "{req}");
        assert_eq!(
            v.get("evicted_before").and_then(Value::as_u64),
            evicted,
            "{req}"
        );
    };
    check(
        &mut h,
        json!({"op":"history","room":"r","limit":3}),
        &[12, 11, 10],
        None,
    );
    check(
        &mut h,
        json!({"op":"history","room":"r","before":10,"limit":3}),
        &[9, 8, 7],
        None,
    );
    check(
        &mut h,
        json!({"op":"history","room":"r","before":3,"limit":5}),
        &[2, 1],
        None,
    );
    check(
        &mut h,
        json!({"op":"history","room":"r","before":1}),
        &[],
        None,
    );
    check(
        &mut h,
        json!({"op":"history","room":"r","before":100,"limit":2}),
        &[12, 11],
        None,
    );
    check(&mut h, json!({"op":"history","room":"none"}), &[], None);
    // Default limit (50) returns all 12.
    let out = h.send(1, json!({"op":"history","room":"r"}));
    assert_eq!(out[0].1["messages"].as_array().unwrap().len(), 12);
    // Each element is the msg object as delivered.
    assert_eq!(
        out[0].1["messages"][0],
        json!({"op":"msg","room":"r","seq":12,"from":"p1","ts":1012,"id":"m12","body":12})
    );
    for limit in [0, 501] {
        h.check_error(
            1,
            json!({"op":"history","room":"r","limit":limit}),
            "bad_limit",
            json!("history"),
        );
    }

    // Byte cap: pages stop growing past history_max_bytes, at least one message.
    let mut c = config();
    c.limits.history_max_bytes = 300;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    for i in 1..=5 {
        h.publish(1, "r", &format!("m{i}"), json!("x".repeat(100)));
    }
    let out = h.send(1, json!({"op":"history","room":"r","limit":5}));
    let n = out[0].1["messages"].as_array().unwrap().len();
    assert!((1..5).contains(&n), "{n}");

    // evicted_before after eviction.
    let mut c = config();
    c.memory_budget = 5 * (ENTRY_OVERHEAD + 80);
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    for i in 1..=20 {
        h.publish(1, "r", &format!("m{i}"), json!(i));
    }
    let out = h.send(1, json!({"op":"history","room":"r","limit":50}));
    let v = &out[0].1;
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let eb = v["evicted_before"].as_u64().unwrap();
    assert_eq!(*seqs.last().unwrap(), eb, "oldest stored is evicted_before");
    assert_eq!(seqs[0], 20);
    assert!(eb > 1 && eb < 20);
}

// ----- presence ---------------------------------------------------------------------

#[test]
fn presence_join_leave_disconnect() {
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", named("alice"));
    h.open_relay(2, "p2", named("bob"));
    h.open_relay(3, "p3", named("alice")); // a second connection of alice
    h.check(
        1,
        json!({"op":"join","room":"r"}),
        &[joined(1, "r", 0), presence(1, "r", &["alice"], &[])],
    );
    h.check(
        2,
        json!({"op":"join","room":"r"}),
        &[
            joined(2, "r", 0),
            presence(2, "r", &["alice", "bob"], &[]),
            presence(1, "r", &["bob"], &[]),
        ],
    );
    // Alice's second connection: no announcement (alice is already present).
    h.check(
        3,
        json!({"op":"join","room":"r"}),
        &[joined(3, "r", 0), presence(3, "r", &["alice", "bob"], &[])],
    );
    // Alice's first connection leaves: alice is still present through 3.
    h.check(1, json!({"op":"leave","room":"r"}), &[]);
    // Bob disconnects: the others hear it.
    assert_eq!(h.disconnect(2), vec![presence(3, "r", &[], &["bob"])]);
    h.check_error(
        1,
        json!({"op":"leave","room":"r"}),
        "not_joined",
        json!("leave"),
    );
    // Disconnect is idempotent.
    assert_eq!(h.disconnect(2), vec![]);
    assert_eq!(h.relay.metrics().clients, 2);
}

// ----- direct -----------------------------------------------------------------------

#[test]
fn direct_relay() {
    let mut h = Harness::new(config());
    h.open_relay(1, "p1", named("alice"));
    h.open_relay(2, "p2", Value::Null);
    h.open(3, "legacy-peer", Value::Null);
    h.send(3, json!("0"));
    // By peer id and by client name.
    h.check(
        1,
        json!({"op":"direct","to":"p2","body":{"hi":1}}),
        &[(2, json!({"op":"direct","from":"alice","body":{"hi":1}}))],
    );
    h.check(
        2,
        json!({"op":"direct","to":"alice","body":"yo"}),
        &[(1, json!({"op":"direct","from":"p2","body":"yo"}))],
    );
    h.check(
        2,
        json!({"op":"direct","to":"p1","body":"yo"}),
        &[(1, json!({"op":"direct","from":"p2","body":"yo"}))],
    );
    // Legacy, absent and gone peers are unknown.
    let unknown = |h: &mut Harness, to: &str| {
        h.check_error(
            1,
            json!({"op":"direct","to":to,"body":1}),
            "unknown_peer",
            json!("direct"),
        )
    };
    unknown(&mut h, "legacy-peer");
    unknown(&mut h, "nobody");
    h.disconnect(2);
    unknown(&mut h, "p2");
    assert_eq!(h.relay.metrics().direct, 3);
}

#[test]
fn fan_out_shares_one_payload() {
    let mut h = Harness::new(config());
    h.open_relay(1, "pub", Value::Null);
    for i in 2..=11 {
        h.open_relay(i, &format!("s{i}"), Value::Null);
        h.send(i, json!({"op":"join","room":"r"}));
    }
    h.relay.handle_message(
        h.now,
        1,
        ConnId(1),
        json!({"op":"publish","room":"r","id":"x","body":1}),
    );
    let mut ptrs = Vec::new();
    while let Some(o) = h.relay.poll_output() {
        if let Output::Send {
            message: Outgoing::Object(p),
            ..
        } = o
            && p.json().contains(r#""op":"msg""#)
        {
            ptrs.push(Arc::as_ptr(&p));
        }
    }
    assert_eq!(ptrs.len(), 10);
    assert!(ptrs.iter().all(|p| *p == ptrs[0]));
    assert_eq!(h.relay.metrics().delivered, 10);
    let m = h.relay.metrics();
    assert_eq!(m.errors.get("read_only"), Some(&0));
    assert_eq!(m.clients, 11);
}

#[test]
fn schema_accepts_client_requests_and_rejects_wrong_shapes() {
    let ok = |def: &str, v: Value| assert_eq!(schema_errors(def, &v), Vec::<String>::new(), "{v}");
    let bad = |def: &str, v: Value| assert!(!schema_errors(def, &v).is_empty(), "{v} passed");
    ok("client", json!({"op":"join","room":"r","since":3}));
    ok(
        "client",
        json!({"op":"publish","room":"r","id":"i","body":null,"client":"me"}),
    );
    ok(
        "client",
        json!({"op":"history","room":"r","before":9,"limit":5}),
    );
    ok("client", json!({"op":"leave","room":"r"}));
    ok("client", json!({"op":"direct","to":"p","body":[1]}));
    ok("client", json!({"op":"ping"}));
    bad("client", json!({"op":"publish","room":"r","id":"i"}));
    bad("client", json!({"op":"join","room":"r","since":-1}));
    bad("client", json!({"op":"fly"}));
    bad("server", json!({"op":"ack","id":"i","room":"r","seq":0}));
    bad(
        "server",
        json!({"op":"joined","room":"r","head":1,"extra":true}),
    );
    bad(
        "server",
        json!({"op":"error","code":"nope","message":"","ref":null}),
    );
    ok(
        "legacy_message",
        json!({"userName":"u","message":"m","extra":1}),
    );
    bad("legacy_message", json!({"userName":"u","message":1}));
    // The Rust wire types produce schema-valid messages.
    let wire = [
        serde_json::to_value(wire::ClientMessage::Join {
            room: "r".into(),
            since: None,
        })
        .unwrap(),
        serde_json::to_value(wire::ClientMessage::History {
            room: "r".into(),
            before: Some(3),
            limit: None,
        })
        .unwrap(),
    ];
    for v in wire {
        ok("client", v);
    }
    // Every error code is in the schema's enum.
    for c in ErrorCode::ALL {
        ok("error_code", json!(c.as_str()));
    }
}
