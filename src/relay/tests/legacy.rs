//! The seed's legacy protocol, alone and beside relay clients.

use super::*;

// ----- legacy protocol --------------------------------------------------------------

#[test]
fn legacy_pages_and_broadcast() {
    let mut h = Harness::new(config());
    h.open(1, "l1", Value::Null);
    h.open(2, "l2", Value::Null);
    h.check(1, json!("0"), &[text(1, "[]")]);
    h.check(2, json!("0"), &[text(2, "[]")]);
    // Store + broadcast to every legacy client, the sender included, date stamped.
    for i in 1..=12u64 {
        h.wall = 100 + i;
        let want = format!(r#"{{"userName":"u","message":"m{i}","date":{}}}"#, 100 + i);
        h.check(
            1,
            legacy_msg("u", &format!("m{i}")),
            &[text(1, &want), text(2, &want)],
        );
    }
    let page = |ns: &[u64]| {
        let items: Vec<String> = ns
            .iter()
            .map(|i| format!(r#"{{"userName":"u","message":"m{i}","date":{}}}"#, 100 + i))
            .collect();
        format!("[{}]", items.join(","))
    };
    h.check(1, json!("0"), &[text(1, &page(&[12, 11, 10, 9, 8]))]);
    h.check(1, json!("5"), &[text(1, &page(&[7, 6, 5, 4, 3]))]);
    h.check(1, json!("10"), &[text(1, &page(&[2, 1]))]);
    h.check(1, json!("12"), &[text(1, "[]")]);
    h.check(1, json!("-2"), &[text(1, &page(&[12, 11, 10]))]);
    h.check(1, json!("ping"), &[text(1, "pong")]);
    // Ignored and invalid strings produce nothing (the seed logged them).
    for s in [
        "pong",
        "time to die",
        "hello",
        r#"{"userName":"u"}"#,
        r#"{"userName":1,"message":"m"}"#,
    ] {
        h.check(1, json!(s), &[]);
    }
    // Extra fields are kept; key order is the sender's; a sent date is overwritten in place.
    h.wall = 500;
    h.check(
        1,
        json!(r#"{"message":"hi","extra":[1, 2],"date":1,"userName":"v"}"#),
        &[
            text(
                1,
                r#"{"message":"hi","extra":[1,2],"date":500,"userName":"v"}"#,
            ),
            text(
                2,
                r#"{"message":"hi","extra":[1,2],"date":500,"userName":"v"}"#,
            ),
        ],
    );
    // Non-strings from a legacy client are ignored.
    h.check(1, json!({"op":"ping"}), &[]);
}

#[test]
fn legacy_and_relay_clients_share_the_room() {
    let mut h = Harness::new(config());
    h.open(1, "legacy-1", Value::Null);
    h.send(1, json!("0"));
    h.open_relay(2, "p2", named("bob"));
    h.send(2, json!({"op":"join","room":"global"}));
    h.wall = 42;
    // Legacy → relay: a msg with the object as body and no id; legacy gets the seed shape.
    h.check(
        1,
        legacy_msg("ann", "hello"),
        &[
            msg(
                2,
                "global",
                1,
                "legacy-1",
                42,
                "",
                json!({"userName":"ann","message":"hello"}),
            )
            .clone()
            .with_id(Value::Null),
            text(1, r#"{"userName":"ann","message":"hello","date":42}"#),
        ],
    );
    // Relay → legacy: a chat-shaped body passes as is; other bodies are wrapped.
    h.wall = 43;
    h.check(
        2,
        json!({"op":"publish","room":"global","id":"b1","body":{"userName":"bob","message":"hey"}}),
        &[
            ack(2, "b1", "global", 2),
            msg(
                2,
                "global",
                2,
                "bob",
                43,
                "b1",
                json!({"userName":"bob","message":"hey"}),
            ),
            text(1, r#"{"message":"hey","userName":"bob","date":43}"#),
        ],
    );
    h.check(
        2,
        json!({"op":"publish","room":"global","id":"b2","body":"plain"}),
        &[
            ack(2, "b2", "global", 3),
            msg(2, "global", 3, "bob", 43, "b2", json!("plain")),
            text(1, r#"{"userName":"bob","message":"plain","date":43}"#),
        ],
    );
    // Legacy pages include relay messages; history includes legacy ones.
    let out = h.send(1, json!("0"));
    assert_eq!(
        out,
        vec![text(
            1,
            r#"[{"userName":"bob","message":"plain","date":43},{"message":"hey","userName":"bob","date":43},{"userName":"ann","message":"hello","date":42}]"#
        )]
    );
    let out = h.send(2, json!({"op":"history","room":"global"}));
    assert_eq!(out[0].1["messages"].as_array().unwrap().len(), 3);
    // Other rooms never reach legacy clients; neither do presence nor moved.
    h.check(
        2,
        json!({"op":"publish","room":"other","id":"o","body":1}),
        &[ack(2, "o", "other", 1)],
    );
    h.open_relay(3, "p3", Value::Null);
    assert_eq!(
        h.send(3, json!({"op":"join","room":"global"})),
        vec![
            joined(3, "global", 3),
            presence(3, "global", &["bob", "p3"], &[]),
            presence(2, "global", &["p3"], &[]),
        ]
    );
    h.relay.announce_moved("next", &[], 8);
    let out = h.drain();
    assert!(out.iter().all(|(c, _)| *c != 1), "{out:?}");
    assert_eq!(h.relay.metrics().legacy_clients, 1);
}

trait WithId {
    fn with_id(self, id: Value) -> Self;
}

impl WithId for Seen {
    fn with_id(mut self, id: Value) -> Self {
        self.1["id"] = id;
        self
    }
}
