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
    let mut p = predecessor(4, cfg(), now);
    p.handle_open(now, ConnId(1), "succ");
    p.handle_message(now, ConnId(1), hello("succ", 5, None));
    assert_challenged(&mut p, ConnId(1));
    p.handle_message(
        now,
        ConnId(1),
        Message::Proof {
            mac: "00".repeat(32),
        },
    );
    assert_refused(&mut p, ConnId(1), RefuseCode::AuthFailed);
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
        Some(Transmit::Send(
            c,
            Sealed {
                msg: Message::Refused { code: got, .. },
                ..
            },
        )) => {
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
    let mut p = predecessor(4, cfg(), now);
    // A genuine exchange, recorded by an eavesdropper.
    let (s_nonce, s_hex) = auth::fresh_nonce(&mut seeded(3));
    let hello1 = hello("succ", 5, Some(s_hex));
    p.handle_open(now, ConnId(1), "succ");
    p.handle_message(now, ConnId(1), hello1.clone());
    let Some(Transmit::Send(
        ConnId(1),
        Sealed {
            msg: Message::Challenge { nonce, .. },
            ..
        },
    )) = p.poll_transmit()
    else {
        panic!("challenge expected")
    };
    let p_nonce = auth::parse_nonce(&nonce).unwrap();
    let proof = auth::prove(
        &Secret::new(SECRET.to_vec()).unwrap(),
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
    p.handle_open(now, ConnId(2), "succ");
    p.handle_message(now, ConnId(2), hello1);
    assert_refused(&mut p, ConnId(2), RefuseCode::Replay);
    // Replay the proof against a fresh challenge: it is bound to the old nonces.
    p.handle_open(now, ConnId(3), "succ");
    p.handle_message(now, ConnId(3), hello("succ", 5, None));
    assert_challenged(&mut p, ConnId(3));
    p.handle_message(now, ConnId(3), Message::Proof { mac: proof.clone() });
    assert_refused(&mut p, ConnId(3), RefuseCode::AuthFailed);
    // The genuine proof on the genuine connection still works.
    p.handle_message(now, ConnId(1), Message::Proof { mac: proof });
    assert!(matches!(
        p.poll_event(),
        Some(PredecessorEvent::Authenticated { resumed: false, .. })
    ));
}

#[test]
fn hello_checks_and_rate_limit() {
    let now = Instant::now();
    let mut p = predecessor(4, cfg(), now);
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
        let c = ConnId(i as u64 + 1);
        p.handle_open(now, c, remote);
        p.handle_message(now, c, msg);
        assert_refused(&mut p, c, code);
    }
    // The bad message did not take a token (it is not a hello); 4 were taken: one left.
    p.handle_open(now, ConnId(10), "succ");
    p.handle_message(now, ConnId(10), hello("succ", 5, None));
    assert_challenged(&mut p, ConnId(10));
    p.handle_open(now, ConnId(11), "succ");
    p.handle_message(now, ConnId(11), hello("succ", 5, None));
    assert_refused(&mut p, ConnId(11), RefuseCode::RateLimited);
    // Tokens come back with time.
    let later = now + Duration::from_secs(2);
    p.handle_open(later, ConnId(12), "succ");
    p.handle_message(later, ConnId(12), hello("succ", 5, None));
    assert_challenged(&mut p, ConnId(12));
    // Connections that never authenticate are closed after auth_timeout.
    p.handle_timeout(later + Duration::from_secs(5));
    let closed: Vec<_> = std::iter::from_fn(|| p.poll_transmit()).collect();
    assert!(
        closed.contains(&Transmit::Close(ConnId(10)))
            && closed.contains(&Transmit::Close(ConnId(12)))
    );
}

#[test]
fn second_successor_is_busy_and_loses_the_discovery_guard() {
    let now = Instant::now();
    let mut p = predecessor(4, cfg(), now);
    let mut s1 = connected_successor(now);
    authenticate(&mut s1, &mut p, now);
    assert!(matches!(
        p.poll_event(),
        Some(PredecessorEvent::Authenticated { .. })
    ));
    // Another successor of the same generation (a relaunch) is told to wait.
    p.handle_open(now, ConnId(2), "succ-b");
    p.handle_message(now, ConnId(2), hello("succ-b", 5, None));
    assert_refused(&mut p, ConnId(2), RefuseCode::Busy);
    assert!(RefuseCode::Busy.is_retryable());
    // And if it ever reaches the publish step, the guard makes it give up.
    let mut s2 = successor("succ-b", SuccessorConfig::default(), now);
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

#[test]
fn a_hello_flood_from_many_remotes_does_not_block_the_real_successor() {
    // Issue 14, point 2: one global attempt bucket let any outsider's hellos refuse the
    // real successor (`rate_limited`) for as long as the flood lasted. Now each remote has
    // its own bucket and the pending connections are bounded: 16 hellos per millisecond from
    // 8 fresh remotes and one busy remote, and the handoff completes during the flood.
    let mut pair = Pair::new(Wire::Binary);
    pair.flood = 8;
    pair.drive();
    pair.assert_handed_over();
    assert!(
        pair.live_during_flood,
        "the successor went live while the flood ran"
    );
    assert!(
        pair.flood_sent > 100,
        "the flood ran ({} hellos)",
        pair.flood_sent
    );
    assert!(
        !pair
            .s_events
            .iter()
            .any(|e| matches!(e, SuccessorEvent::GiveUp { .. })),
        "{:?}",
        pair.s_events
    );
}

#[test]
fn pending_connections_and_remote_buckets_are_bounded() {
    let now = Instant::now();
    let cfg = HandoffConfig {
        max_pending: 4,
        max_pending_per_remote: 2,
        max_remotes: 8,
        ..cfg()
    };
    let mut p = predecessor(4, cfg, now);
    // One remote may hold two pending connections; the third is closed at once.
    p.handle_open(now, ConnId(1), "m");
    p.handle_open(now, ConnId(2), "m");
    p.handle_open(now, ConnId(3), "m");
    assert_eq!(p.poll_transmit(), Some(Transmit::Close(ConnId(3))));
    // Four pending in all: a fifth evicts the oldest.
    let t1 = now + Duration::from_millis(1);
    p.handle_open(t1, ConnId(4), "n");
    p.handle_open(t1, ConnId(5), "o");
    assert_eq!(p.poll_transmit(), None);
    p.handle_open(t1, ConnId(6), "q");
    assert_eq!(p.poll_transmit(), Some(Transmit::Close(ConnId(1))));
    assert_eq!(p.poll_transmit(), None);
    // Each remote has its own bucket: "m" spends its 5 attempts, "succ" still gets in.
    for i in 0..5 {
        let c = ConnId(100 + i);
        p.handle_open(t1, c, "m");
        p.handle_message(t1, c, hello("m", 5, None));
        let _: Vec<_> = std::iter::from_fn(|| p.poll_transmit()).collect();
        p.handle_close(t1, c);
    }
    p.handle_open(t1, ConnId(200), "m");
    p.handle_message(t1, ConnId(200), hello("m", 5, None));
    assert_refused(&mut p, ConnId(200), RefuseCode::RateLimited);
    p.handle_open(t1, ConnId(201), "succ");
    p.handle_message(t1, ConnId(201), hello("succ", 5, None));
    assert_challenged(&mut p, ConnId(201));
    // At most `max_remotes` buckets are remembered.
    for i in 0..20 {
        let c = ConnId(300 + i);
        let r = format!("r{i}");
        p.handle_open(t1, c, &r);
        p.handle_message(t1, c, hello(&r, 5, None));
        p.handle_close(t1, c);
    }
    assert!(p.remembered_remotes() <= 8);
}

/// Delivers every queued message both ways between `s` and `p` (connection 1) until
/// neither has anything to send.
fn exchange(s: &mut Successor, p: &mut Predecessor, now: Instant) {
    loop {
        let mut progress = false;
        while let Some(m) = s.poll_transmit() {
            progress = true;
            p.handle_message(now, ConnId(1), m);
        }
        while let Some(t) = p.poll_transmit() {
            if let Transmit::Send(ConnId(1), m) = t {
                progress = true;
                s.handle_message(now, m);
            }
        }
        if !progress {
            return;
        }
    }
}

fn gave_up(s: &mut Successor) -> Option<GiveUpReason> {
    std::iter::from_fn(|| s.poll_event()).find_map(|e| match e {
        SuccessorEvent::GiveUp { reason, .. } => Some(reason),
        _ => None,
    })
}

#[test]
fn an_unauthenticated_refusal_is_ignored_and_the_successor_keeps_going() {
    // Issue 14, point 2: a `refused` was believed from anyone on the path; `aborted` or
    // `wrong_generation` from a stranger made the successor give up for good.
    let now = Instant::now();
    let mut p = predecessor(4, cfg(), now);
    let mut s = connected_successor(now);
    p.handle_open(now, ConnId(1), "succ");
    let hello = s.poll_transmit().unwrap();
    assert!(hello.auth.is_some(), "the hello proves the secret");
    p.handle_message(now, ConnId(1), hello);
    // Before the challenge arrives, strangers send refusals: plain, and with a made-up
    // nonce and tag.
    let forged = |code, nonce: Option<String>, auth: Option<String>| Sealed {
        msg: Message::Refused {
            code,
            message: "go away".into(),
            nonce,
        },
        auth,
    };
    s.handle_message(now, forged(RefuseCode::Aborted, None, None));
    s.handle_message(
        now,
        forged(
            RefuseCode::WrongGeneration,
            Some("11".repeat(32)),
            Some("22".repeat(32)),
        ),
    );
    assert_eq!(gave_up(&mut s), None);
    assert_eq!(s.phase(), SuccessorPhase::Authenticating);
    // The real exchange goes on.
    exchange(&mut s, &mut p, now);
    assert!(
        std::iter::from_fn(|| p.poll_event())
            .any(|e| matches!(e, PredecessorEvent::Authenticated { .. }))
    );
    // After authentication too: a plain `done` is ignored …
    s.handle_message(now, forged(RefuseCode::Done, None, None));
    assert_eq!(gave_up(&mut s), None);
    // … a sealed one from the predecessor counts.
    let real = p.seal_for_tests(
        ConnId(1),
        Message::Refused {
            code: RefuseCode::Aborted,
            message: "aborted".into(),
            nonce: None,
        },
    );
    s.handle_message(now, real);
    assert_eq!(
        gave_up(&mut s),
        Some(GiveUpReason::Refused(RefuseCode::Aborted))
    );
}

#[test]
fn a_refusal_of_the_hello_is_authenticated_by_the_nonce_it_carries() {
    let now = Instant::now();
    let mut p = predecessor(6, cfg(), now);
    let mut s = connected_successor(now);
    p.handle_open(now, ConnId(1), "succ");
    exchange(&mut s, &mut p, now);
    // Generation 5 is not 6 + 1: the predecessor's refusal is sealed and believed.
    assert_eq!(
        gave_up(&mut s),
        Some(GiveUpReason::Refused(RefuseCode::WrongGeneration))
    );
}

#[test]
fn a_successor_kept_out_gives_up_after_max_wait_and_reports_blocked() {
    // Issue 14, point 2: a successor refused with `rate_limited` (or `busy`) retried
    // forever — every refusal counted as a sign of life.
    let t0 = Instant::now();
    let pcfg = HandoffConfig {
        auth_burst: 1.0,
        auth_per_second: 0.0,
        ..cfg()
    };
    let mut p = predecessor(4, pcfg, t0);
    // Another connection of the same remote spent the only attempt (no `auth`: counted).
    p.handle_open(t0, ConnId(99), "succ");
    p.handle_message(t0, ConnId(99), hello("succ", 5, None));
    let _: Vec<_> = std::iter::from_fn(|| p.poll_transmit()).collect();
    let scfg = SuccessorConfig {
        max_wait: Duration::from_secs(30),
        ..SuccessorConfig::default()
    };
    let mut s = successor("succ", scfg, t0);
    let mut now = t0;
    let mut refusals = 0;
    let mut conn = ConnId(1);
    let reason = loop {
        let mut reason = None;
        while let Some(e) = s.poll_event() {
            match e {
                SuccessorEvent::Connect => {
                    conn.0 += 1;
                    p.handle_open(now, conn, "succ");
                    s.handle_connected(now);
                    // The successor's hello has no `auth` here: strip it, so the
                    // predecessor's bucket applies (an old successor, or a forged one).
                    while let Some(mut m) = s.poll_transmit() {
                        m.auth = None;
                        p.handle_message(now, conn, m);
                    }
                    while let Some(t) = p.poll_transmit() {
                        if let Transmit::Send(c, m) = t
                            && c == conn
                        {
                            refusals += 1;
                            s.handle_message(now, m);
                        }
                    }
                }
                SuccessorEvent::GiveUp { reason: r, .. } => reason = Some(r),
                _ => {}
            }
        }
        if let Some(r) = reason {
            break r;
        }
        now = s.poll_timeout().expect("a timer while trying");
        assert!(now <= t0 + Duration::from_secs(31), "gave up in time");
        s.handle_timeout(now);
    };
    assert_eq!(reason, GiveUpReason::Blocked);
    assert!(now >= t0 + Duration::from_secs(30));
    assert!(
        refusals > 10,
        "it kept trying meanwhile ({refusals} refusals)"
    );
}
