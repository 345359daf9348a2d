//! Identity bound to the connection (name tokens) and the signed `welcome` and `moved`.

use super::*;
use crate::discovery::{RingKeys, RingPublicKey, SignedKind};

const SECRET: &[u8] = b"the ring secret of the identity tests";

fn keyed() -> RelayConfig {
    let mut c = config();
    c.keys = Some(Arc::new(RingKeys::from_secret(SECRET)));
    c
}

fn ring_key() -> RingPublicKey {
    RingPublicKey::parse(RingKeys::from_secret(SECRET).public_key()).unwrap()
}

/// Opens a declared connection and returns its welcome and what followed it.
fn welcome(h: &mut Harness, id: u64, peer: &str, meta: Value) -> (Value, Vec<Value>) {
    let out = h.open(id, peer, meta);
    assert_eq!(out[0].1["op"], "welcome", "{out:?}");
    let rest = out[1..].iter().map(|(_, v)| v.clone()).collect();
    (out[0].1.clone(), rest)
}

fn with(name: &str, extra: Value) -> Value {
    let mut m = named(name);
    for (k, v) in extra.as_object().unwrap() {
        m[k] = v.clone();
    }
    m
}

#[test]
fn a_name_in_use_cannot_be_taken_without_its_token() {
    let mut h = Harness::new(keyed());
    let (w, rest) = welcome(&mut h, 1, "p-alice", named("alice"));
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(w["client"], "alice");
    let token = w["name_token"].as_str().unwrap().to_owned();

    // Bob declares alice: refused, served under his peer id.
    let (w, rest) = welcome(&mut h, 2, "p-bob", named("alice"));
    assert_eq!(w["client"], "p-bob");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0]["code"], "name_taken", "{rest:?}");
    // A wrong token does not help either.
    let wrong = RingKeys::from_secret(b"another ring, another secret").name_token("alice");
    let (w, rest) = welcome(&mut h, 3, "p-eve", with("alice", json!({"token": wrong})));
    assert_eq!(w["client"], "p-eve");
    assert_eq!(rest[0]["code"], "name_taken");

    // Direct messages to alice reach alice only; presence and `from` show who is who.
    h.open_relay(9, "p-carol", named("carol"));
    let out = h.send(9, json!({"op":"direct","to":"alice","body":"for alice"}));
    assert_eq!(
        out,
        vec![(1, json!({"op":"direct","from":"carol","body":"for alice"}))]
    );
    h.send(1, json!({"op":"join","room":"r"}));
    let out = h.send(2, json!({"op":"join","room":"r"}));
    assert_eq!(out[1], presence(2, "r", &["alice", "p-bob"], &[]));
    let seq = h.publish(2, "r", "m1", json!("hi"));
    assert_eq!(h.relay.export_snapshot().messages[0].from(), "p-bob");
    // Alice's own id m1 is hers, not bob's.
    assert_ne!(h.publish(1, "r", "m1", json!("mine")), seq);

    // The token takes the name on a second connection (the same client elsewhere).
    let (w, rest) = welcome(
        &mut h,
        4,
        "p-alice-2",
        with("alice", json!({"token": token})),
    );
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(w["client"], "alice");
    assert_eq!(w["name_token"], token.as_str());
}

#[test]
fn a_name_with_stored_messages_stays_its_owners_while_away() {
    let mut h = Harness::new(keyed());
    let (w, _) = welcome(&mut h, 1, "p-alice", named("alice"));
    let token = w["name_token"].as_str().unwrap().to_owned();
    let seq = h.publish(1, "r", "m1", json!("one"));
    h.disconnect(1);

    // Mallory claims alice while she is away: her message ids are not for the taking.
    let (w, rest) = welcome(&mut h, 2, "p-mallory", named("alice"));
    assert_eq!(w["client"], "p-mallory");
    assert_eq!(rest[0]["code"], "name_taken");
    let pre_claimed = h.publish(2, "r", "m2", json!("mallory's"));

    // Alice comes back with her token: her retry of m1 is acknowledged with its seq, m2 is
    // a new message of hers.
    let (w, rest) = welcome(
        &mut h,
        3,
        "p-alice-2",
        with("alice", json!({"token": token})),
    );
    assert!(rest.is_empty());
    assert_eq!(w["client"], "alice");
    assert_eq!(h.publish(3, "r", "m1", json!("one")), seq);
    assert_ne!(h.publish(3, "r", "m2", json!("two")), pre_claimed);
}

#[test]
fn a_free_name_is_granted_and_a_peer_id_in_use_as_a_name_is_not_the_connections() {
    let mut h = Harness::new(keyed());
    h.open_relay(1, "p-alice", named("alice"));
    // A connection whose peer id is someone's name gets a name of the node's making, and
    // `direct` to that peer id keeps reaching the name's holder only.
    let (w, rest) = welcome(&mut h, 2, "alice", relay_meta());
    let guest = w["client"].as_str().unwrap().to_owned();
    assert!(guest.starts_with("guest-"), "{w}");
    assert_eq!(rest[0]["code"], "name_taken");
    h.open_relay(3, "p-carol", named("carol"));
    let out = h.send(3, json!({"op":"direct","to":"alice","body":1}));
    assert_eq!(
        out,
        vec![(1, json!({"op":"direct","from":"carol","body":1}))]
    );
    let out = h.send(3, json!({"op":"direct","to":guest,"body":2}));
    assert_eq!(
        out,
        vec![(2, json!({"op":"direct","from":"carol","body":2}))]
    );
    // Undeclared: the first message's client, token and nonce settle the identity.
    let out = h.open(4, "p-dave", Value::Null);
    assert!(out.is_empty());
    let out = h.send(4, json!({"op":"ping","client":"dave","nonce":"n-4"}));
    assert_eq!(out[0].1["client"], "dave");
    assert_eq!(out[0].1["nonce"], "n-4");
    assert!(out[0].1["name_token"].is_string());
    assert_eq!(out[1].1, json!({"op":"pong"}));
    // A late claim (declared protocol, name in the first message) of a held name: refused.
    h.open_relay(5, "p-erin", relay_meta());
    let out = h.send(5, json!({"op":"ping","client":"alice"}));
    assert_eq!(out[0].1["code"], "name_taken");
    let out = h.send(3, json!({"op":"direct","to":"alice","body":3}));
    assert_eq!(
        out,
        vec![(1, json!({"op":"direct","from":"carol","body":3}))]
    );
}

#[test]
fn tokens_hold_on_every_node_of_the_ring() {
    // The successor restores the predecessor's state with the same ring keys: alice's
    // token and her stored ids hold there; without it the name is refused.
    let mut a = Harness::new(keyed());
    let (w, _) = welcome(&mut a, 1, "p-alice", named("alice"));
    let token = w["name_token"].as_str().unwrap().to_owned();
    let seq = a.publish(1, "r", "m1", json!("one"));
    let snap = a.relay.export_snapshot();
    let mut next = keyed();
    next.node = "node-2".into();
    next.generation = 8;
    let mut b = Harness::from_relay(Relay::restore(next, snap, Instant::now()).unwrap());
    let (_, rest) = welcome(&mut b, 2, "p-mallory", named("alice"));
    assert_eq!(rest[0]["code"], "name_taken");
    let (w, rest) = welcome(
        &mut b,
        3,
        "p-alice-2",
        with("alice", json!({"token": token})),
    );
    assert!(rest.is_empty());
    assert_eq!(w["client"], "alice");
    assert_eq!(b.publish(3, "r", "m1", json!("one")), seq);
}

#[test]
fn welcome_and_moved_are_signed_with_the_ring_key() {
    let mut h = Harness::new(keyed());
    let (w, _) = welcome(&mut h, 1, "p1", with("alice", json!({"nonce": "fresh-1"})));
    assert_eq!(w["nonce"], "fresh-1");
    assert_eq!(ring_key().verify(SignedKind::Welcome, &w), Ok(()));
    let mut forged = w.clone();
    forged["node"] = json!("impostor");
    assert!(ring_key().verify(SignedKind::Welcome, &forged).is_err());
    let ep = crate::discovery::fixtures::endpoint(9001);
    h.relay.announce_moved("node-2", &[ep], 8);
    let out = h.drain();
    let moved = &out[0].1;
    assert_eq!(moved["op"], "moved");
    assert_eq!(ring_key().verify(SignedKind::Moved, moved), Ok(()));
    let mut forged = moved.clone();
    forged["peer_id"] = json!("impostor");
    assert!(ring_key().verify(SignedKind::Moved, &forged).is_err());
    // Without ring keys: unsigned, no token (names are what clients say).
    let mut h = Harness::new(config());
    let (w, _) = welcome(&mut h, 1, "p1", named("alice"));
    assert!(
        w.get("sig").is_none() && w.get("name_token").is_none(),
        "{w}"
    );
}
