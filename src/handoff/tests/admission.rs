//! Who may take over: the secret, replayed nonces and proofs, the `hello` checks and the
//! rate limit, and a second successor while one is served.

use super::*;

#[test]
fn wrong_secret_is_refused_both_ways() {
    // The successor does not know the secret: it cannot verify the predecessor either.
    let mut pair = Pair::with(Wire::Json, cfg(), b"not the ring secret!!");
    pair.drive();
    assert!(!pair.live);
    assert!(pair.s_events.iter().any(|e| matches!(
        e,
        SuccessorEvent::GiveUp {
            reason: GiveUpReason::PredecessorNotAuthentic,
            transferred: Transferred::Nothing
        }
    )));
    assert_eq!(pair.p.phase(), PredecessorPhase::Idle, "nothing exported");
    assert!(
        !pair
            .p_events
            .iter()
            .any(|e| matches!(e, PredecessorEvent::SnapshotNeeded))
    );

    // A client that answers the challenge with a wrong proof is refused and logged.
    let now = Instant::now();
    let mut p = Predecessor::new(
        "pred",
        4,
        Secret::new(SECRET.to_vec()).unwrap(),
        cfg(),
        now,
        seeded(1),
    );
    p.handle_open(now, 1, "succ");
    p.handle_message(now, 1, hello("succ", 5, None));
    assert!(matches!(
        p.poll_transmit(),
        Some(Transmit::Send(1, Message::Challenge { .. }))
    ));
    p.handle_message(
        now,
        1,
        Message::Proof {
            mac: "00".repeat(32),
        },
    );
    assert_refused(&mut p, 1, RefuseCode::AuthFailed);
}

fn hello(successor: &str, generation: u64, nonce: Option<String>) -> Message {
    Message::Hello {
        v: 1,
        successor_peer_id: successor.into(),
        predecessor_peer_id: "pred".into(),
        generation,
        nonce: nonce.unwrap_or_else(|| auth::fresh_nonce(&mut next_seeded()).1),
        endpoints: vec![],
        resume: None,
    }
}

fn assert_refused(p: &mut Predecessor, conn: ConnId, code: RefuseCode) {
    match p.poll_transmit() {
        Some(Transmit::Send(c, Message::Refused { code: got, .. })) => {
            assert_eq!((c, got), (conn, code))
        }
        other => panic!("expected refused {code:?}, got {other:?}"),
    }
    assert_eq!(p.poll_transmit(), Some(Transmit::Close(conn)));
    let ev = std::iter::from_fn(|| p.poll_event()).last();
    assert!(
        matches!(ev, Some(PredecessorEvent::Refused { code: c, .. }) if c == code),
        "{ev:?}"
    );
}

#[test]
fn replayed_hello_and_proof_are_refused() {
    let now = Instant::now();
    let secret = Secret::new(SECRET.to_vec()).unwrap();
    let mut p = Predecessor::new("pred", 4, secret.clone(), cfg(), now, seeded(1));
    // A genuine exchange, recorded by an eavesdropper.
    let (s_nonce, s_hex) = auth::fresh_nonce(&mut seeded(3));
    let hello1 = hello("succ", 5, Some(s_hex));
    p.handle_open(now, 1, "succ");
    p.handle_message(now, 1, hello1.clone());
    let Some(Transmit::Send(1, Message::Challenge { nonce, .. })) = p.poll_transmit() else {
        panic!("challenge expected")
    };
    let p_nonce = auth::parse_nonce(&nonce).unwrap();
    let proof = auth::prove(
        &secret,
        auth::Role::Successor,
        &auth::Binding {
            predecessor_peer_id: "pred",
            successor_peer_id: "succ",
            generation: 5,
            successor_nonce: &s_nonce,
            predecessor_nonce: &p_nonce,
        },
    );
    // Replay the same hello: the nonce was seen.
    p.handle_open(now, 2, "succ");
    p.handle_message(now, 2, hello1);
    assert_refused(&mut p, 2, RefuseCode::Replay);
    // Replay the proof against a fresh challenge: it is bound to the old nonces.
    p.handle_open(now, 3, "succ");
    p.handle_message(now, 3, hello("succ", 5, None));
    assert!(matches!(
        p.poll_transmit(),
        Some(Transmit::Send(3, Message::Challenge { .. }))
    ));
    p.handle_message(now, 3, Message::Proof { mac: proof.clone() });
    assert_refused(&mut p, 3, RefuseCode::AuthFailed);
    // The genuine proof on the genuine connection still works.
    p.handle_message(now, 1, Message::Proof { mac: proof });
    assert!(matches!(
        p.poll_event(),
        Some(PredecessorEvent::Authenticated { resumed: false, .. })
    ));
}

#[test]
fn hello_checks_and_rate_limit() {
    let now = Instant::now();
    let mut p = Predecessor::new(
        "pred",
        4,
        Secret::new(SECRET.to_vec()).unwrap(),
        cfg(),
        now,
        seeded(1),
    );
    let cases = [
        ("succ", hello("mallory", 5, None), RefuseCode::WrongPeer),
        ("succ", hello("succ", 4, None), RefuseCode::WrongGeneration),
        ("succ", hello("succ", 6, None), RefuseCode::WrongGeneration),
        (
            "succ",
            hello("succ", 5, Some("abcd".into())),
            RefuseCode::BadMessage,
        ),
        ("succ", Message::Live { session: 1 }, RefuseCode::BadMessage),
    ];
    for (i, (remote, msg, code)) in cases.into_iter().enumerate() {
        let c = i as ConnId + 1;
        p.handle_open(now, c, remote);
        p.handle_message(now, c, msg);
        assert_refused(&mut p, c, code);
    }
    // The bad message did not take a token (it is not a hello); 4 were taken: one left.
    p.handle_open(now, 10, "succ");
    p.handle_message(now, 10, hello("succ", 5, None));
    assert!(matches!(
        p.poll_transmit(),
        Some(Transmit::Send(10, Message::Challenge { .. }))
    ));
    p.handle_open(now, 11, "succ");
    p.handle_message(now, 11, hello("succ", 5, None));
    assert_refused(&mut p, 11, RefuseCode::RateLimited);
    // Tokens come back with time.
    let later = now + Duration::from_secs(2);
    p.handle_open(later, 12, "succ");
    p.handle_message(later, 12, hello("succ", 5, None));
    assert!(matches!(
        p.poll_transmit(),
        Some(Transmit::Send(12, Message::Challenge { .. }))
    ));
    // Connections that never authenticate are closed after auth_timeout.
    p.handle_timeout(later + Duration::from_secs(5));
    let closed: Vec<_> = std::iter::from_fn(|| p.poll_transmit()).collect();
    assert!(closed.contains(&Transmit::Close(10)) && closed.contains(&Transmit::Close(12)));
}

#[test]
fn second_successor_is_busy_and_loses_the_discovery_guard() {
    let now = Instant::now();
    let mut p = Predecessor::new(
        "pred",
        4,
        Secret::new(SECRET.to_vec()).unwrap(),
        cfg(),
        now,
        seeded(1),
    );
    let mut s1 = Successor::new(
        "succ",
        "pred",
        5,
        Secret::new(SECRET.to_vec()).unwrap(),
        vec![],
        SuccessorConfig::default(),
        now,
        seeded(2),
    );
    s1.poll_event();
    s1.handle_connected(now);
    p.handle_open(now, 1, "succ");
    for _ in 0..2 {
        while let Some(m) = s1.poll_transmit() {
            p.handle_message(now, 1, m);
        }
        while let Some(Transmit::Send(_, m)) = p.poll_transmit() {
            s1.handle_message(now, m);
        }
    }
    assert!(matches!(
        p.poll_event(),
        Some(PredecessorEvent::Authenticated { .. })
    ));
    // Another successor of the same generation (a relaunch) is told to wait.
    p.handle_open(now, 2, "succ-b");
    p.handle_message(now, 2, hello("succ-b", 5, None));
    assert_refused(&mut p, 2, RefuseCode::Busy);
    assert!(RefuseCode::Busy.is_retryable());
    // And if it ever reaches the publish step, the guard makes it give up.
    let mut s2 = Successor::new(
        "succ-b",
        "pred",
        5,
        Secret::new(SECRET.to_vec()).unwrap(),
        vec![],
        SuccessorConfig::default(),
        now,
        seeded(2),
    );
    s2.publish_refused(now);
    let evs: Vec<_> = std::iter::from_fn(|| s2.poll_event()).collect();
    assert!(evs.iter().any(|e| matches!(
        e,
        SuccessorEvent::GiveUp {
            reason: GiveUpReason::Superseded,
            ..
        }
    )));
}
