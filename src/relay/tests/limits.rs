//! Limits, error codes, rate limits and eviction under the memory budget.

use super::*;

// ----- limits and error codes -------------------------------------------------------

#[test]
fn every_limit_and_error_code() {
    let mut c = config();
    c.limits.max_message_bytes = 100;
    c.limits.max_rooms_per_client = 2;
    c.limits.max_rooms = 3;
    c.limits.max_clients = 3;
    c.limits.rate_burst = 1000.0;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    let e = |h: &mut Harness, msg: Value, code: &str, r: Value| h.check_error(1, msg, code, r);
    e(&mut h, json!("not json"), "bad_request", Value::Null);
    e(&mut h, json!(5), "bad_request", Value::Null);
    e(&mut h, json!({"room":"r"}), "unknown_op", Value::Null);
    e(&mut h, json!({"op":"fly"}), "unknown_op", json!("fly"));
    e(&mut h, json!({"op":7}), "unknown_op", Value::Null);
    e(&mut h, json!({"op":"join"}), "bad_request", json!("join"));
    e(
        &mut h,
        json!({"op":"join","room":5}),
        "bad_request",
        json!("join"),
    );
    e(
        &mut h,
        json!({"op":"join","room":"r","since":-1}),
        "bad_request",
        json!("join"),
    );
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":"x"}),
        "bad_request",
        json!("x"),
    );
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":"","body":1}),
        "bad_request",
        json!(""),
    );
    let long_id = "i".repeat(129);
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":long_id,"body":1}),
        "bad_request",
        json!(long_id),
    );
    for bad in ["", ".hidden", "a b", "a/b", "ü", &"r".repeat(65)] {
        e(
            &mut h,
            json!({"op":"join","room":bad}),
            "bad_room",
            json!("join"),
        );
    }
    e(
        &mut h,
        json!({"op":"publish","room":"a b","id":"m","body":1}),
        "bad_room",
        json!("m"),
    );
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":"big","body":"x".repeat(100)}),
        "too_large",
        json!("big"),
    );
    e(
        &mut h,
        json!({"op":"direct","to":"p1","body":"x".repeat(100)}),
        "too_large",
        json!("direct"),
    );
    // Error texts quoting client input stay short.
    let out = h.send(1, json!({"op":"join","room":"r","since":"é".repeat(5000)}));
    let text = out[0].1["message"].as_str().unwrap();
    assert!(
        text.len() <= 256 && text.starts_with("invalid type"),
        "{text}"
    );
    // Exactly at the limit is fine (98 chars + 2 quotes = 100 bytes).
    assert_eq!(h.publish(1, "r", "fits", json!("x".repeat(98))), 1);
    h.send(1, json!({"op":"join","room":"r"}));
    h.send(1, json!({"op":"join","room":"s"}));
    e(
        &mut h,
        json!({"op":"join","room":"t"}),
        "too_many_rooms",
        json!("join"),
    );
    h.open_relay(2, "p2", Value::Null);
    h.send(2, json!({"op":"join","room":"t"}));
    h.check_error(
        2,
        json!({"op":"join","room":"u"}),
        "room_limit",
        json!("join"),
    );
    h.check_error(
        2,
        json!({"op":"publish","room":"u","id":"q","body":1}),
        "room_limit",
        json!("q"),
    );
    e(
        &mut h,
        json!({"op":"history","room":"r","limit":100000}),
        "bad_limit",
        json!("history"),
    );
    e(
        &mut h,
        json!({"op":"leave","room":"zz"}),
        "not_joined",
        json!("leave"),
    );
    e(
        &mut h,
        json!({"op":"direct","to":"zz","body":1}),
        "unknown_peer",
        json!("direct"),
    );
    h.relay.set_mode(Mode::Draining);
    e(
        &mut h,
        json!({"op":"publish","room":"r","id":"late","body":1}),
        "read_only",
        json!("late"),
    );
    h.relay.set_mode(Mode::Primary);
    // Total clients: the third connection fits, the fourth is refused.
    h.open(3, "p3", Value::Null);
    let out = h.open(4, "p4", relay_meta());
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].1["code"], "server_full");
    assert_eq!(out[1], (4, json!({"close":"ServerFull"})));
    // Undeclared connections are closed without a word (they may be legacy).
    assert_eq!(
        h.open(5, "p5", Value::Null),
        vec![(5, json!({"close":"ServerFull"}))]
    );
    // After all that, connection 1 still works.
    h.check(1, json!({"op":"ping"}), &[(1, json!({"op":"pong"}))]);
    let m = h.relay.metrics();
    // name_taken needs ring keys: `identity::a_name_in_use_cannot_be_taken_without_its_token`;
    // unavailable a replicated relay: `replicated::a_publish_is_proposed_not_stored_…`.
    for code in ErrorCode::ALL.into_iter().filter(|c| {
        !matches!(
            c,
            ErrorCode::RateLimited | ErrorCode::NameTaken | ErrorCode::Unavailable
        )
    }) {
        assert!(
            m.errors[code.as_str()] > 0,
            "no {code} counted: {:?}",
            m.errors
        );
    }
}

#[test]
fn rate_limit_refills() {
    let mut c = config();
    c.limits.rate_burst = 3.0;
    c.limits.rate_per_sec = 1.0;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    for _ in 0..3 {
        h.check(1, json!({"op":"ping"}), &[(1, json!({"op":"pong"}))]);
    }
    h.check_error(1, json!({"op":"ping"}), "rate_limited", json!("ping"));
    h.check_error(
        1,
        json!({"op":"publish","room":"r","id":"m1","body":1}),
        "rate_limited",
        json!("m1"),
    );
    // Another connection has its own bucket.
    h.open_relay(2, "p2", Value::Null);
    h.check(2, json!({"op":"ping"}), &[(2, json!({"op":"pong"}))]);
    h.now += Duration::from_millis(1100);
    h.check(1, json!({"op":"ping"}), &[(1, json!({"op":"pong"}))]);
    h.check_error(1, json!({"op":"ping"}), "rate_limited", json!("ping"));
    // Legacy clients over the rate are dropped silently (they only get seed shapes).
    h.open(3, "legacy", Value::Null);
    for _ in 0..3 {
        h.send(3, json!("ping"));
    }
    assert_eq!(h.send(3, json!("ping")), vec![]);
    assert_eq!(h.relay.metrics().errors["rate_limited"], 4);
}

// ----- eviction ---------------------------------------------------------------------

#[test]
fn eviction_under_a_small_budget() {
    let mut c = config();
    c.memory_budget = 4_000;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", Value::Null);
    h.open_relay(2, "p2", Value::Null);
    h.send(2, json!({"op":"join","room":"b"}));
    let mut acked = Vec::new();
    for i in 1..=60u64 {
        let room = if i % 3 == 0 { "b" } else { "a" };
        let seq = h.publish(
            1,
            room,
            &format!("m{i}"),
            json!({"n": i, "pad": "x".repeat(40)}),
        );
        acked.push((room, seq));
        let m = h.relay.metrics();
        assert!(m.bytes_stored <= 4_000, "over budget: {}", m.bytes_stored);
    }
    // Seqs: dense per room, never reused.
    let a: Vec<u64> = acked
        .iter()
        .filter(|(r, _)| *r == "a")
        .map(|(_, s)| *s)
        .collect();
    let b: Vec<u64> = acked
        .iter()
        .filter(|(r, _)| *r == "b")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(a, (1..=40).collect::<Vec<_>>());
    assert_eq!(b, (1..=20).collect::<Vec<_>>());
    let m = h.relay.metrics();
    assert!(m.evicted_messages > 0);
    assert_eq!(m.evicted_messages as usize + m.messages, 60);
    // Fair across rooms: the larger room gave up its oldest until both hold about as much
    // (a published twice as much as b); each keeps the newest suffix of its own log.
    let stats = h.relay.room_stats();
    let kept_a = stats["a"].messages;
    let kept_b = stats["b"].messages;
    assert_eq!(kept_a + kept_b, m.messages);
    assert!(kept_a.abs_diff(kept_b) <= 1, "a {kept_a}, b {kept_b}");
    assert_eq!(stats["a"].evicted_before, 41 - kept_a as u64);
    assert_eq!(stats["b"].evicted_before, 21 - kept_b as u64);
    // Joining with since=0 replays only what is left, in order, and the head is intact.
    h.open_relay(3, "p3", Value::Null);
    let out = h.send(3, json!({"op":"join","room":"a","since":0}));
    assert_eq!(out[0], joined(3, "a", 40));
    let seqs: Vec<u64> = out.iter().filter_map(|(_, v)| v["seq"].as_u64()).collect();
    assert_eq!(seqs, ((41 - kept_a as u64)..=40).collect::<Vec<_>>());
    // The next publish continues after the head.
    assert_eq!(h.publish(1, "a", "next", json!(0)), 41);
    // A retry of an evicted message's id is stored anew (dedup lives with the message).
    assert_eq!(h.publish(1, "a", "m1", json!(0)), 42);
}

#[test]
fn a_flooding_room_evicts_its_own_history_not_a_quiet_rooms() {
    let mut c = config();
    c.memory_budget = 20_000;
    let mut h = Harness::new(c);
    h.open_relay(1, "quiet", Value::Null);
    h.open_relay(2, "flood", Value::Null);
    for i in 1..=5u64 {
        assert_eq!(h.publish(1, "calm", &format!("q{i}"), json!("hello")), i);
    }
    // The flood: 2000 messages, 20 times the budget. Globally oldest-first eviction took the
    // quiet room's five messages with the first ones.
    for i in 1..=2000u64 {
        h.publish(
            2,
            "storm",
            &format!("f{i}"),
            json!({"pad": "x".repeat(150)}),
        );
        if i % 50 == 0 {
            h.now += Duration::from_secs(1); // stay under the rate limit
        }
        assert!(h.relay.metrics().bytes_stored <= 20_000);
    }
    let stats = h.relay.room_stats();
    assert_eq!(
        stats["calm"].messages, 5,
        "the quiet room keeps its history"
    );
    assert_eq!(stats["calm"].evicted_before, 1);
    assert!(stats["storm"].evicted_before > 1900);
    let page = h.send(1, json!({"op":"history","room":"calm"}));
    assert_eq!(page[0].1["messages"].as_array().unwrap().len(), 5);
    assert!(page[0].1.get("evicted_before").is_none());
}

#[test]
fn idle_empty_rooms_are_freed_so_the_room_cap_is_not_permanent() {
    let mut c = config();
    c.limits.max_rooms = 100;
    c.limits.rate_burst = 10_000.0;
    c.memory_budget = 8_000;
    c.room_idle = Duration::from_secs(600);
    let mut h = Harness::new(c);
    h.open_relay(1, "flooder", Value::Null);
    // The flood: one message in each of 100 rooms takes every place. The budget keeps about
    // 30 of the messages; the other rooms are left empty (nothing stored, no members).
    for i in 0..100 {
        assert_eq!(
            h.publish(1, &format!("f{i}"), &format!("m{i}"), json!("x")),
            1
        );
    }
    let kept: Vec<String> = h
        .relay
        .room_stats()
        .into_iter()
        .filter(|(_, r)| r.messages > 0)
        .map(|(n, _)| n)
        .collect();
    assert!(!kept.is_empty() && kept.len() < 100, "{}", kept.len());
    h.open_relay(2, "user", Value::Null);
    let join_new = json!({"op":"join","room":"new"});
    // Empty, but not for `room_idle` yet: still refused.
    h.now += Duration::from_secs(599);
    h.check_error(2, join_new.clone(), "room_limit", json!("join"));
    // Past the idle time the empty rooms are freed; the ones with history stay.
    h.now += Duration::from_secs(2);
    let out = h.send(2, join_new.clone());
    assert_eq!(
        out[0],
        joined(2, "new", 1),
        "a new room starts above every freed head"
    );
    let stats = h.relay.room_stats();
    assert_eq!(stats.len(), kept.len() + 1);
    assert!(kept.iter().all(|k| stats[k.as_str()].messages == 1));
    assert_eq!(h.relay.metrics().rooms_freed, (100 - kept.len()) as u64);
    // A freed room made again never reuses a seq: it continues above the floor.
    let freed = (0..100)
        .map(|i| format!("f{i}"))
        .find(|n| !kept.contains(n))
        .unwrap();
    assert_eq!(h.publish(1, &freed, "again", json!("y")), 2);
    // A room with a member is never freed, however long it stays quiet.
    h.now += Duration::from_secs(3600);
    for i in 0..200 {
        h.send(1, json!({"op":"join","room":format!("g{i}")}));
        h.send(1, json!({"op":"leave","room":format!("g{i}")}));
    }
    assert!(h.relay.room_stats().contains_key("new"));
}

#[test]
fn a_since_replay_comes_in_pages_and_nothing_is_missed() {
    let mut c = config();
    c.limits.history_limit_max = 100;
    c.limits.rate_burst = 100_000.0;
    let mut h = Harness::new(c);
    h.open_relay(1, "writer", Value::Null);
    for i in 1..=250u64 {
        h.publish(1, "big", &format!("m{i}"), json!(i));
    }
    h.open_relay(2, "reader", Value::Null);
    let seqs = |out: &[Seen], to: u64| -> Vec<u64> {
        out.iter()
            .filter(|(c, v)| *c == to && v["op"] == "msg")
            .map(|(_, v)| v["seq"].as_u64().unwrap())
            .collect()
    };
    // The first page: 100 messages, and where it stops.
    let out = h.send(2, json!({"op":"join","room":"big","since":0}));
    assert_eq!(
        out[0].1,
        json!({"op":"joined","room":"big","head":250,"replay_to":100})
    );
    assert_eq!(seqs(&out, 2), (1..=100).collect::<Vec<_>>());
    // A live message while the reader pages is not sent to it: a later page brings it.
    let out = h.send(
        1,
        json!({"op":"publish","room":"big","id":"live1","body":0}),
    );
    assert!(seqs(&out, 2).is_empty(), "{out:?}");
    let out = h.send(2, json!({"op":"join","room":"big","since":100}));
    assert_eq!(out[0].1["replay_to"], 200);
    assert_eq!(seqs(&out, 2), (101..=200).collect::<Vec<_>>());
    // The last page has no `replay_to`; from then on live messages flow.
    let out = h.send(2, json!({"op":"join","room":"big","since":200}));
    assert_eq!(out[0], joined(2, "big", 251));
    assert_eq!(seqs(&out, 2), (201..=251).collect::<Vec<_>>());
    let out = h.send(
        1,
        json!({"op":"publish","room":"big","id":"live2","body":0}),
    );
    assert_eq!(seqs(&out, 2), vec![252]);
    // A replay flood: every `join` with since=0 answers one page at most.
    h.open_relay(3, "flooder", Value::Null);
    for _ in 0..200 {
        let out = h.send(3, json!({"op":"join","room":"big","since":0}));
        let to_flooder = out.iter().filter(|(c, _)| *c == 3).count();
        assert!(to_flooder <= 102, "{to_flooder}");
    }
    // Pages also stop at `history_max_bytes` (at least one message each).
    let mut c = config();
    c.limits.history_max_bytes = 1;
    let mut h = Harness::new(c);
    h.open_relay(1, "w", Value::Null);
    h.publish(1, "r", "a", json!(1));
    h.publish(1, "r", "b", json!(2));
    let out = h.send(1, json!({"op":"join","room":"r","since":0}));
    assert_eq!(out[0].1["replay_to"], 1);
    assert_eq!(seqs(&out, 1), vec![1]);
}
