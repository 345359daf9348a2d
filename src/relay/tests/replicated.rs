//! A replicated relay (`RelayConfig::replicated`): publishes become proposals, messages are
//! stored only from committed entries, at the log's `seq`.

use super::*;

fn replicated() -> Harness {
    let mut c = config();
    c.replicated = true;
    Harness::new(c)
}

fn proposal(id: u64, room: &str, mid: &str, from: &str, body: &str) -> Seen {
    (
        id,
        json!({"propose": {"room": room, "id": mid, "from": from, "body": body, "ack": true}}),
    )
}

#[test]
fn a_publish_is_proposed_not_stored_and_acknowledged_when_the_log_says_so() {
    let mut h = replicated();
    h.open_relay(1, "p1", named("alice"));
    h.open_relay(2, "p2", named("bob"));
    h.check(
        2,
        json!({"op":"join","room":"lobby","since":0}),
        &[joined(2, "lobby", 0), presence(2, "lobby", &["bob"], &[])],
    );
    // Proposed: no ack, no msg, nothing stored.
    h.check(
        1,
        json!({"op":"publish","room":"lobby","id":"m1","body":{"t":"hi"}}),
        &[proposal(1, "lobby", "m1", "alice", r#"{"t":"hi"}"#)],
    );
    assert_eq!(h.relay.room_head("lobby"), 0);
    // The committed entry comes back (seq 5: the log's, not the relay's head + 1).
    let p = Proposal {
        conn: ConnId(1),
        room: "lobby".into(),
        id: "m1".into(),
        from: "alice".into(),
        body: r#"{"t":"hi"}"#.into(),
        ack: true,
    };
    h.relay
        .apply_committed("lobby", 5, "alice", "m1", 42, r#"{"t":"hi"}"#)
        .unwrap_err(); // a gap: 1..=4 are missing here
    for seq in 1..=4 {
        h.relay
            .apply_committed("lobby", seq, "carol", &format!("c{seq}"), 40, "null")
            .unwrap();
    }
    assert_eq!(h.drain().len(), 4, "the member got seqs 1..=4");
    h.relay
        .apply_committed("lobby", 5, "alice", "m1", 42, r#"{"t":"hi"}"#)
        .unwrap();
    assert_eq!(
        h.drain(),
        vec![msg(2, "lobby", 5, "alice", 42, "m1", json!({"t":"hi"}))]
    );
    // Applied again (a snapshot re-read, a retry): ignored.
    assert!(matches!(
        h.relay
            .apply_committed("lobby", 5, "alice", "m1", 42, r#"{"t":"hi"}"#)
            .unwrap(),
        Applied::Ignored
    ));
    h.relay.proposal_done(&p, Ok(5));
    assert_eq!(h.drain(), vec![ack(1, "m1", "lobby", 5)]);
    // A retry of a stored message is acknowledged from the store, without a proposal.
    h.check(
        1,
        json!({"op":"publish","room":"lobby","id":"m1","body":{"t":"hi"}}),
        &[ack(1, "m1", "lobby", 5)],
    );
    // Not committed in time: the retryable `unavailable`, referring to the id.
    h.relay.proposal_done(
        &Proposal {
            id: "m2".into(),
            ..p.clone()
        },
        Err(ProposalFailure::Unavailable("no leader".into())),
    );
    let out = h.drain();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1["code"], "unavailable");
    assert_eq!(out[0].1["ref"], "m2");
    assert!(ErrorCode::Unavailable.retryable());
    // The connection is gone when the outcome arrives: nothing is sent.
    h.disconnect(1);
    h.relay.proposal_done(&p, Ok(5));
    assert!(h.drain().is_empty());
}

#[test]
fn checks_happen_before_proposing() {
    let mut c = config();
    c.replicated = true;
    c.limits.max_message_bytes = 10;
    let mut h = Harness::new(c);
    h.open_relay(1, "p1", named("alice"));
    h.check_error(
        1,
        json!({"op":"publish","room":"a b","id":"x","body":1}),
        "bad_room",
        json!("x"),
    );
    h.check_error(
        1,
        json!({"op":"publish","room":"r","id":"x","body":"far too long"}),
        "too_large",
        json!("x"),
    );
}

#[test]
fn the_seed_protocol_proposes_with_a_generated_id_and_no_ack() {
    let mut h = replicated();
    h.open(1, "legacy-peer", Value::Null);
    let out = h.send(1, legacy_msg("ann", "hello"));
    assert_eq!(out.len(), 1, "{out:?}");
    let p = &out[0].1["propose"];
    assert_eq!(p["room"], "global");
    assert_eq!(p["ack"], false);
    assert!(p["id"].as_str().unwrap().starts_with("legacy-node-1-1-"));
    let out2 = h.send(1, legacy_msg("ann", "again"));
    assert_ne!(out2[0].1["propose"]["id"], p["id"], "ids are unique");
}
