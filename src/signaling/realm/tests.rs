//! Realm tests: every event driven with a fake clock (plain `Instant`s), no sockets.

use super::*;
use crate::signaling::wire::{Parsed, parse};

/// A fake socket: its number (the same as its `ConnId`).
type H = u64;

/// What a test sees: frames and closes per socket.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Frame(H, String),
    Close(H, CloseReason),
    Drop(H),
}

struct Harness {
    realm: Realm<H>,
    t0: Instant,
    next: H,
}

fn config() -> RealmConfig {
    RealmConfig {
        key: "peerjs".into(),
        expire_timeout: Duration::from_millis(5000),
        alive_timeout: Duration::from_millis(60000),
        concurrent_limit: 5000,
        max_frame_size: 1024,
        rate: None,
        malformed_limit: 2.0,
        queues: QueueLimits {
            per_peer: 3,
            bytes_per_peer: 10_000,
            total: 5,
            bytes_total: 100_000,
        },
        per_address: AddressLimits::UNLIMITED,
    }
}

/// A request for `id` with `token` and the right key, from no known address.
fn request<'a>(id: &'a str, token: &'a str) -> ConnectRequest<'a> {
    ConnectRequest {
        key: Some("peerjs"),
        id: Some(id),
        token: Some(token),
        local: false,
        addr: None,
    }
}

impl Harness {
    fn new(config: RealmConfig) -> Self {
        Harness {
            realm: Realm::new(config),
            t0: Instant::now(),
            next: 0,
        }
    }
    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }
    fn drain(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        while let Some(a) = self.realm.poll_output() {
            out.push(match a {
                Action::Send { conn, frame, .. } => Out::Frame(conn.0, frame),
                Action::Close { conn, reason, .. } => Out::Close(conn.0, reason),
                Action::Drop { conn, .. } => Out::Drop(conn.0),
            });
        }
        out
    }
    /// Opens the next socket with `req` at `ms`; returns it, its admission and what it was
    /// sent.
    fn open(&mut self, ms: u64, req: &ConnectRequest) -> (H, Admission, Vec<Out>) {
        self.next += 1;
        let conn = self.next;
        let a = self.realm.connect(self.at(ms), ConnId(conn), conn, req);
        (conn, a, self.drain())
    }
    /// Connects `id` with `token` from `addr` at `ms`.
    fn connect_from(
        &mut self,
        ms: u64,
        id: &str,
        token: &str,
        addr: &str,
    ) -> (H, Admission, Vec<Out>) {
        self.open(
            ms,
            &ConnectRequest {
                addr: Some(addr.parse().expect("test address")),
                ..request(id, token)
            },
        )
    }
    /// Connects `id` with `token` at `ms`; returns the socket and what it was sent.
    fn connect(&mut self, ms: u64, id: &str, token: &str) -> (H, Admission, Vec<Out>) {
        self.open(ms, &request(id, token))
    }
    fn send(&mut self, ms: u64, conn: H, id: &str, text: &str) -> Vec<Out> {
        let conn = ConnId(conn);
        match parse(text) {
            Parsed::Message(m) => self.realm.message(self.at(ms), conn, id, &m),
            Parsed::Malformed => self.realm.malformed(self.at(ms), conn, id),
            Parsed::Ignored => {}
        }
        self.drain()
    }
    fn tick(&mut self, ms: u64) -> Vec<Out> {
        self.realm.handle_timeout(self.at(ms));
        self.drain()
    }
}

fn frame(conn: H, s: &str) -> Out {
    Out::Frame(conn, s.to_string())
}

/// PeerJS's `ERROR` frame with `msg` to `conn`.
fn error_frame(conn: H, msg: &str) -> Out {
    frame(
        conn,
        &format!(r#"{{"type":"ERROR","payload":{{"msg":"{msg}"}}}}"#),
    )
}

/// What a refused or offending `conn` gets: the `ERROR` frame with `msg`, then a close.
fn closed_with_error(conn: H, msg: &str, reason: CloseReason) -> Vec<Out> {
    vec![error_frame(conn, msg), Out::Close(conn, reason)]
}

#[test]
fn admission_order_and_texts() {
    let mut h = Harness::new(RealmConfig {
        concurrent_limit: 1,
        ..config()
    });
    let mut go = |key: Option<&str>, id: Option<&str>, token: Option<&str>| {
        let req = ConnectRequest {
            key,
            id,
            token,
            local: false,
            addr: None,
        };
        let (_, a, out) = h.open(0, &req);
        (a, out)
    };
    let (a, out) = go(Some("peerjs"), Some(""), Some("t"));
    assert_eq!(a, Admission::Rejected(Rejection::NoParams));
    assert_eq!(
        out,
        closed_with_error(
            1,
            "No id, token, or key supplied to websocket server",
            CloseReason::Normal
        )
    );
    let (a, out) = go(Some("nope"), Some("a"), Some("t"));
    assert_eq!(a, Admission::Rejected(Rejection::InvalidKey));
    assert_eq!(out[0], error_frame(2, "Invalid key provided"));
    let long = "x".repeat(257);
    let (a, out) = go(Some("peerjs"), Some(&long), Some("t"));
    assert_eq!(a, Admission::Rejected(Rejection::InvalidId));
    assert!(matches!(&out[0], Out::Frame(_, f) if f.contains("longer than 256 bytes")));
    let (a, _) = go(Some("peerjs"), Some("a\u{1}"), Some("t"));
    assert_eq!(a, Admission::Rejected(Rejection::InvalidId));
    let (a, out) = go(Some("peerjs"), Some("a"), Some("t"));
    assert_eq!(a, Admission::Open("a".into()));
    assert_eq!(out, vec![frame(5, r#"{"type":"OPEN"}"#)]);
    let (a, out) = go(Some("peerjs"), Some("a"), Some("other"));
    assert_eq!(a, Admission::Rejected(Rejection::IdTaken));
    assert_eq!(
        out,
        vec![
            frame(6, r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#),
            Out::Close(6, CloseReason::Normal)
        ]
    );
    let (a, out) = go(Some("peerjs"), Some("b"), Some("t"));
    assert_eq!(a, Admission::Rejected(Rejection::Limit));
    assert_eq!(
        out[0],
        error_frame(7, "Server has reached its concurrent user limit")
    );
    // Same id and token: replaces the socket even at the limit, OPEN again, old closed.
    let (a, out) = go(Some("peerjs"), Some("a"), Some("t"));
    assert_eq!(a, Admission::Open("a".into()));
    assert_eq!(
        out,
        vec![
            Out::Close(5, CloseReason::Replaced),
            frame(8, r#"{"type":"OPEN"}"#)
        ]
    );
    // The replaced socket's late close does not unregister the new one.
    h.realm.disconnect(h.t0, ConnId(5), Some("a"));
    assert!(h.realm.contains("a"));
    h.realm.disconnect(h.t0, ConnId(8), Some("a"));
    assert!(h.realm.is_empty());
    let s = h.realm.stats();
    assert_eq!(
        (
            s.rejected.no_params,
            s.rejected.invalid_key,
            s.rejected.invalid_id,
            s.rejected.id_taken,
            s.rejected.limit
        ),
        (1, 1, 2, 1, 1)
    );
    assert_eq!(s.closed.replaced, 1);
}

#[test]
fn relays_with_src_stamped_and_drops_other_types() {
    let mut h = Harness::new(config());
    let (a, ..) = h.connect(0, "a", "ta");
    let (b, ..) = h.connect(0, "b", "tb");
    let out = h.send(
        1,
        a,
        "a",
        r#"{"type":"OFFER","src":"forged","dst":"b","payload":{"x":1},"extra":2}"#,
    );
    assert_eq!(
        out,
        vec![frame(
            b,
            r#"{"type":"OFFER","src":"a","dst":"b","payload":{"x":1}}"#
        )]
    );
    for t in ["ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"] {
        let out = h.send(1, b, "b", &format!(r#"{{"type":"{t}","dst":"a"}}"#));
        assert_eq!(
            out,
            vec![frame(
                a,
                &format!(r#"{{"type":"{t}","src":"b","dst":"a"}}"#)
            )]
        );
    }
    for t in ["OPEN", "ERROR", "ID-TAKEN", "PING", "HEARTBEAT"] {
        assert!(
            h.send(1, a, "a", &format!(r#"{{"type":"{t}","dst":"b"}}"#))
                .is_empty()
        );
    }
    assert!(h.send(1, a, "a", r#"{"type":"OFFER"}"#).is_empty());
    assert_eq!(h.realm.stats().relayed, 5);
}

#[test]
fn queue_delivered_on_connect_in_order() {
    let mut h = Harness::new(config());
    let (a, ..) = h.connect(0, "a", "ta");
    // LEAVE and EXPIRE to an absent peer are not queued.
    for (ms, text) in [
        (10, r#"{"type":"OFFER","dst":"b","payload":1}"#),
        (20, r#"{"type":"CANDIDATE","dst":"b","payload":2}"#),
        (20, r#"{"type":"LEAVE","dst":"b"}"#),
        (20, r#"{"type":"EXPIRE","dst":"b"}"#),
    ] {
        assert!(h.send(ms, a, "a", text).is_empty(), "{text}");
    }
    assert_eq!(h.realm.stats().queued_messages, 2);
    let (b, _, out) = h.connect(100, "b", "tb");
    assert_eq!(
        out,
        vec![
            frame(b, r#"{"type":"OPEN"}"#),
            frame(b, r#"{"type":"OFFER","src":"a","dst":"b","payload":1}"#),
            frame(b, r#"{"type":"CANDIDATE","src":"a","dst":"b","payload":2}"#),
        ]
    );
    assert_eq!(h.realm.stats().queued_messages, 0);
    // The queue's expiry timer is stale now: nothing happens.
    assert!(h.tick(10_000).is_empty());
}

#[test]
fn queue_expires_with_one_expire_per_sender() {
    let mut h = Harness::new(config());
    let (a, ..) = h.connect(0, "a", "ta");
    let (c, ..) = h.connect(0, "c", "tc");
    h.send(1000, a, "a", r#"{"type":"OFFER","dst":"x"}"#);
    h.send(1100, a, "a", r#"{"type":"CANDIDATE","dst":"x"}"#);
    h.send(1200, c, "c", r#"{"type":"OFFER","dst":"x"}"#);
    h.send(1300, a, "a", r#"{"type":"OFFER","dst":"y"}"#);
    assert_eq!(h.realm.poll_timeout(), Some(h.at(6000)));
    assert!(h.tick(5999).is_empty());
    assert_eq!(
        h.tick(6000),
        vec![
            frame(a, r#"{"type":"EXPIRE","src":"x","dst":"a"}"#),
            frame(c, r#"{"type":"EXPIRE","src":"x","dst":"c"}"#),
        ]
    );
    assert_eq!(
        h.tick(6300),
        vec![frame(a, r#"{"type":"EXPIRE","src":"y","dst":"a"}"#)]
    );
    let s = h.realm.stats();
    assert_eq!((s.expired, s.queued_messages, s.queues), (4, 0, 0));
    // A sender that left gets nothing.
    h.send(7000, c, "c", r#"{"type":"OFFER","dst":"z"}"#);
    h.realm.disconnect(h.at(7001), ConnId(c), Some("c"));
    assert!(h.tick(20_000).iter().all(|o| !matches!(o, Out::Frame(..))));
}

#[test]
fn queues_are_bounded() {
    let mut h = Harness::new(config());
    let (a, ..) = h.connect(0, "a", "ta");
    for _ in 0..3 {
        assert!(
            h.send(1, a, "a", r#"{"type":"OFFER","dst":"x"}"#)
                .is_empty()
        );
    }
    // Per-peer bound (3): the fourth is refused with an immediate EXPIRE.
    assert_eq!(
        h.send(1, a, "a", r#"{"type":"OFFER","dst":"x"}"#),
        vec![frame(a, r#"{"type":"EXPIRE","src":"x","dst":"a"}"#)]
    );
    // Total bound (5).
    for _ in 0..2 {
        assert!(
            h.send(1, a, "a", r#"{"type":"OFFER","dst":"y"}"#)
                .is_empty()
        );
    }
    assert_eq!(h.send(1, a, "a", r#"{"type":"OFFER","dst":"z"}"#).len(), 1);
    let s = h.realm.stats();
    assert_eq!((s.queued_messages, s.queue_full), (5, 2));
    // Bytes bound per peer.
    let mut h = Harness::new(RealmConfig {
        queues: QueueLimits {
            bytes_per_peer: 100,
            ..config().queues
        },
        ..config()
    });
    let (a, ..) = h.connect(0, "a", "ta");
    let big = format!(
        r#"{{"type":"OFFER","dst":"x","payload":"{}"}}"#,
        "p".repeat(100)
    );
    assert_eq!(h.send(1, a, "a", &big).len(), 1);
    assert_eq!(h.realm.stats().queued_bytes, 0);
}

#[test]
fn invalid_dst_gets_expire() {
    let mut h = Harness::new(config());
    let (a, ..) = h.connect(0, "a", "ta");
    let long = "d".repeat(300);
    let out = h.send(1, a, "a", &format!(r#"{{"type":"OFFER","dst":"{long}"}}"#));
    assert_eq!(
        out,
        vec![frame(
            a,
            &format!(r#"{{"type":"EXPIRE","src":"{long}","dst":"a"}}"#)
        )]
    );
    assert_eq!(h.realm.stats().queues, 0);
}

#[test]
fn alive_timeout_with_fake_clock() {
    let mut h = Harness::new(config());
    let (a, ..) = h.connect(0, "a", "ta");
    let (b, ..) = h.connect(0, "b", "tb");
    h.send(30_000, a, "a", r#"{"type":"HEARTBEAT"}"#);
    // b sent no HEARTBEAT: closed at 60 s; a re-armed to 90 s.
    assert!(h.tick(59_999).is_empty());
    assert_eq!(h.tick(60_000), vec![Out::Close(b, CloseReason::Normal)]);
    assert!(!h.realm.contains("b") && h.realm.contains("a"));
    assert_eq!(h.realm.poll_timeout(), Some(h.at(90_000)));
    // A non-HEARTBEAT message does not refresh liveness (as the reference).
    h.send(80_000, a, "a", r#"{"type":"OFFER","dst":"q"}"#);
    let out = h.tick(90_000);
    assert!(out.contains(&Out::Close(a, CloseReason::Normal)), "{out:?}");
    assert_eq!(h.realm.stats().closed.alive_timeout, 2);
    // The id is free again.
    let (_, adm, _) = h.connect(90_001, "b", "new");
    assert_eq!(adm, Admission::Open("b".into()));
}

#[test]
fn leave_without_dst_detaches() {
    let mut h = Harness::new(config());
    let (a, ..) = h.connect(0, "a", "ta");
    let (b, ..) = h.connect(0, "b", "tb");
    assert!(h.send(1, a, "a", r#"{"type":"LEAVE"}"#).is_empty());
    assert!(!h.realm.contains("a"));
    // Its socket stays open but no longer relays.
    assert!(
        h.send(2, a, "a", r#"{"type":"OFFER","dst":"b"}"#)
            .is_empty()
    );
    // Someone else may take the id; the detached socket cannot act for them.
    let (a2, adm, _) = h.connect(3, "a", "other");
    assert_eq!(adm, Admission::Open("a".into()));
    assert_eq!(
        h.send(4, a2, "a", r#"{"type":"OFFER","dst":"b"}"#),
        vec![frame(b, r#"{"type":"OFFER","src":"a","dst":"b"}"#)]
    );
    // The detached socket is still subject to the alive timeout.
    let out = h.tick(60_000);
    assert!(out.contains(&Out::Close(a, CloseReason::Normal)), "{out:?}");
    h.realm.disconnect(h.at(60_001), ConnId(a), Some("a"));
    assert!(h.realm.contains("a"));
}

#[test]
fn rate_limit_and_malformed_burst() {
    let mut h = Harness::new(RealmConfig {
        rate: Some(Rate {
            per_second: 1.0,
            burst: 3.0,
        }),
        ..config()
    });
    let (a, ..) = h.connect(0, "a", "ta");
    for _ in 0..3 {
        assert!(h.send(0, a, "a", r#"{"type":"HEARTBEAT"}"#).is_empty());
    }
    assert_eq!(
        h.send(0, a, "a", r#"{"type":"HEARTBEAT"}"#),
        closed_with_error(a, "Rate limit exceeded", CloseReason::Policy)
    );
    assert!(!h.realm.contains("a"));
    // Malformed: limit 2 → the burst allows 3 (limit + 1), the 4th closes.
    let (b, ..) = h.connect(0, "b", "tb");
    for i in 0..3 {
        assert!(h.send(i * 10, b, "b", "{oops").is_empty());
    }
    // Refill at 1/s: after 1 s one more is allowed.
    assert!(h.send(1100, b, "b", "{oops").is_empty());
    assert_eq!(
        h.send(1100, b, "b", "{oops"),
        closed_with_error(b, "Too many malformed messages", CloseReason::Policy)
    );
    let s = h.realm.stats();
    assert_eq!(
        (s.malformed, s.closed.malformed, s.closed.rate_limited),
        (5, 1, 1)
    );
}

#[test]
fn too_big_and_undeliverable() {
    let mut h = Harness::new(config());
    let (a, ..) = h.connect(0, "a", "ta");
    let (b, ..) = h.connect(0, "b", "tb");
    h.realm.too_big(h.at(1), ConnId(a), "a");
    assert_eq!(
        h.drain(),
        closed_with_error(a, "Message too big (limit 1024 bytes)", CloseReason::TooBig)
    );
    let (a, ..) = h.connect(2, "a", "ta");
    // b's socket could not take a frame from a: b is dropped, a gets LEAVE from b.
    h.realm
        .undeliverable(h.at(3), ConnId(b), Some("b"), Some("a"));
    assert_eq!(
        h.drain(),
        vec![
            Out::Drop(b),
            frame(a, r#"{"type":"LEAVE","src":"b","dst":"a"}"#)
        ]
    );
    assert!(!h.realm.contains("b"));
    // Stale report for a socket that is no longer registered: nothing.
    h.realm
        .undeliverable(h.at(4), ConnId(b), Some("b"), Some("a"));
    assert!(h.drain().is_empty());
}

// ------------------------------------------------------------------ hardening (issue 14)

const ID_TAKEN_FRAME: &str = r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#;

#[test]
fn a_reserved_id_cannot_be_taken_even_while_its_owner_is_away() {
    let mut h = Harness::new(config());
    h.realm.reserve("node", "secret");
    // Nobody holds it yet: another token still gets ID-TAKEN.
    let (c, a, out) = h.connect(0, "node", "guess");
    assert_eq!(a, Admission::Rejected(Rejection::IdTaken));
    assert_eq!(
        out,
        vec![frame(c, ID_TAKEN_FRAME), Out::Close(c, CloseReason::Normal)]
    );
    // The owner registers; a second attempt with another token is refused; the owner's own
    // reconnect replaces its socket as usual.
    let (n1, a, _) = h.connect(1, "node", "secret");
    assert_eq!(a, Admission::Open("node".into()));
    let (_, a, _) = h.connect(2, "node", "guess");
    assert_eq!(a, Admission::Rejected(Rejection::IdTaken));
    let (n2, a, out) = h.connect(3, "node", "secret");
    assert_eq!(a, Admission::Open("node".into()));
    assert!(out.contains(&Out::Close(n1, CloseReason::Replaced)));
    // The owner leaves; the id stays reserved.
    h.realm.disconnect(h.at(4), ConnId(n2), Some("node"));
    let (_, a, _) = h.connect(5, "node", "guess");
    assert_eq!(a, Admission::Rejected(Rejection::IdTaken));
}

#[test]
fn the_reserved_owner_is_exempt_from_rate_limits_and_never_dropped_as_slow() {
    let mut h = Harness::new(RealmConfig {
        rate: Some(Rate {
            per_second: 1.0,
            burst: 2.0,
        }),
        concurrent_limit: 1,
        per_address: AddressLimits {
            connections: 1,
            rate: Some(Rate {
                per_second: 1.0,
                burst: 2.0,
            }),
        },
        ..config()
    });
    h.realm.reserve("node", "secret");
    let (x, _, _) = h.connect_from(0, "x", "t", "192.0.2.1");
    // At the concurrent limit and from an address that is at its socket limit: still admitted.
    let (n, a, _) = h.connect_from(0, "node", "secret", "192.0.2.1");
    assert_eq!(a, Admission::Open("node".into()));
    for i in 0..50 {
        let out = h.send(
            1,
            n,
            "node",
            &format!(r#"{{"type":"ANSWER","dst":"x","payload":{i}}}"#),
        );
        assert!(
            !out.iter().any(|o| matches!(o, Out::Close(c, _) if *c == n)),
            "the node was closed: {out:?}"
        );
    }
    // Its write queue overflows: the frame is refused (the sender gets EXPIRE), the node stays.
    h.realm
        .undeliverable(h.at(2), ConnId(n), Some("node"), Some("x"));
    assert_eq!(
        h.drain(),
        vec![frame(x, r#"{"type":"EXPIRE","src":"node","dst":"x"}"#)]
    );
    assert!(h.realm.contains("node"));
    assert_eq!(h.realm.stats().node_busy, 1);
    assert_eq!(h.realm.stats().closed.slow, 0);
}

#[test]
fn one_address_cannot_take_every_socket() {
    let mut h = Harness::new(RealmConfig {
        concurrent_limit: 10,
        per_address: AddressLimits {
            connections: 2,
            rate: None,
        },
        ..config()
    });
    let (a1, _, _) = h.connect_from(0, "a1", "t", "198.51.100.1");
    let (_a2, _, _) = h.connect_from(0, "a2", "t", "198.51.100.1");
    let (c, a, out) = h.connect_from(0, "a3", "t", "198.51.100.1");
    assert_eq!(a, Admission::Rejected(Rejection::AddressLimit));
    assert_eq!(
        out,
        closed_with_error(
            c,
            "Too many connections from your address",
            CloseReason::Normal
        )
    );
    // Another address is served; a detached socket (LEAVE without dst) still counts.
    let (_, a, _) = h.connect_from(0, "b1", "t", "198.51.100.2");
    assert_eq!(a, Admission::Open("b1".into()));
    h.send(1, a1, "a1", r#"{"type":"LEAVE"}"#);
    assert!(!h.realm.contains("a1"));
    let (_, a, _) = h.connect_from(2, "a3", "t", "198.51.100.1");
    assert_eq!(a, Admission::Rejected(Rejection::AddressLimit));
    // Once a socket closes, its place is free again.
    h.realm.disconnect(h.at(3), ConnId(a1), Some("a1"));
    let (_, a, _) = h.connect_from(3, "a3", "t", "198.51.100.1");
    assert_eq!(a, Admission::Open("a3".into()));
    assert_eq!(h.realm.stats().rejected.address_limit, 2);
}

#[test]
fn a_leave_flood_from_one_address_is_rate_limited_across_its_sockets() {
    let mut h = Harness::new(RealmConfig {
        per_address: AddressLimits {
            connections: 0,
            rate: Some(Rate {
                per_second: 10.0,
                burst: 20.0,
            }),
        },
        ..config()
    });
    let socks: Vec<H> = (0..4)
        .map(|i| h.connect_from(0, &format!("s{i}"), "t", "203.0.113.9").0)
        .collect();
    // Each socket alone would stay far below any per-client limit (rate: None here).
    let mut closed = Vec::new();
    for round in 0..10 {
        for (i, s) in socks.iter().enumerate() {
            let id = format!("s{i}");
            let out = h.send(
                1,
                *s,
                &id,
                &format!(r#"{{"type":"LEAVE","dst":"z{round}"}}"#),
            );
            if out.contains(&Out::Close(*s, CloseReason::Policy)) {
                assert!(out.contains(&error_frame(*s, "Rate limit exceeded")));
                closed.push(*s);
            }
        }
    }
    assert!(!closed.is_empty(), "40 LEAVEs in 0 s passed a burst of 20");
    // A LEAVE without dst (detach) counts too, and so does a detached socket's HEARTBEAT.
    let (d, _, _) = h.connect_from(0, "d", "t", "203.0.113.10");
    let mut n = 0;
    h.send(0, d, "d", r#"{"type":"LEAVE"}"#);
    loop {
        n += 1;
        let out = h.send(0, d, "d", r#"{"type":"HEARTBEAT"}"#);
        if out.contains(&Out::Close(d, CloseReason::Policy)) {
            break;
        }
        assert!(n < 100, "a detached socket's frames are never limited");
    }
    assert_eq!(n, 20);
    // Another address is not affected.
    let (_, a, _) = h.connect_from(2, "other", "t", "203.0.113.11");
    assert_eq!(a, Admission::Open("other".into()));
}
