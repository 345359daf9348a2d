//! `ouroboros node` end to end with Rust clients over real signaling and real DataChannels:
//! the relay protocol, replay, history, presence, direct, limits, the legacy protocol,
//! eviction, following `moved`, dual registration on the reference `peer` server, 200
//! concurrent clients, and the node's HTTP endpoints.

mod support;

use std::time::Duration;

use support::{Fetch, start_node, start_node_in_ring};

use ouroboros::client::{Client, ClientConfig, ClientError, Event, Target, Transport};
use ouroboros::handoff::HostOps;
use ouroboros::node::Node;
use ouroboros::peer::{ConnectOptions, Peer, PeerConfig, Serialization, Value};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

const WAIT: Duration = Duration::from_secs(20);

async fn client(node: &Node, name: &str, ser: Serialization) -> (Client, UnboundedReceiver<Event>) {
    client_on(node, name, ser, Transport::Webrtc).await
}

/// A client on the given path (`Webrtc`: a DataChannel in `ser`; `Ws`: the node's relay
/// WebSocket, JSON text). Checks it really uses that path.
async fn client_on(
    node: &Node,
    name: &str,
    ser: Serialization,
    transport: Transport,
) -> (Client, UnboundedReceiver<Event>) {
    let mut cfg = ClientConfig::new(name);
    cfg.serialization = ser;
    cfg.transport = transport;
    let (c, ev) = Client::connect(node.record(), cfg)
        .await
        .expect("client connects");
    assert_eq!(c.transport(), Some(transport), "{name} is on {transport}");
    (c, ev)
}

/// The next event matching `f`, skipping others; panics after [`WAIT`].
async fn next_matching<T>(
    events: &mut UnboundedReceiver<Event>,
    mut f: impl FnMut(&Event) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = events.recv().await.expect("event stream open");
            if let Some(t) = f(&ev) {
                return t;
            }
        }
    })
    .await
    .expect("expected event in time")
}

async fn next_msg(events: &mut UnboundedReceiver<Event>) -> ouroboros::client::Message {
    next_matching(events, |e| match e {
        Event::Message(m) => Some(m.clone()),
        _ => None,
    })
    .await
}

fn node_error(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Node { code, .. }) => code,
        other => panic!("expected a node error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_clients_publish_replay_page_history_presence_direct() {
    relay_protocol_between(Transport::Webrtc, Transport::Webrtc).await;
}

/// The same conversation with both clients on the relay WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_protocol_over_the_websocket() {
    relay_protocol_between(Transport::Ws, Transport::Ws).await;
}

/// A WebSocket client and a DataChannel client share rooms, presence and direct messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_datachannel_clients_talk_to_each_other() {
    relay_protocol_between(Transport::Ws, Transport::Webrtc).await;
}

/// Alice (on `ta`) and Bob (on `tb`, `binary` when on WebRTC): welcome, publish with acks
/// and dedup, replay with `since`, presence, live fan-out in order, history pages, direct,
/// ping, leave. Also what `/status.json` and `/metrics` say about their transports.
async fn relay_protocol_between(ta: Transport, tb: Transport) {
    let (node, _dir) = start_node(&[]).await;
    let (alice, mut a_ev) = client_on(&node, "alice", Serialization::Json, ta).await;
    let welcome = next_matching(&mut a_ev, |e| match e {
        Event::Welcome {
            node,
            generation,
            raw,
        } => Some((node.clone(), *generation, raw.clone())),
        _ => None,
    })
    .await;
    assert_eq!(welcome.0, node.peer_id());
    assert_eq!(welcome.1, 0);
    assert_eq!(welcome.2["limits"]["max_message_bytes"], 65536);

    assert_eq!(alice.join("lobby", None).await.unwrap(), 0);
    for i in 1..=9u64 {
        let ack = alice
            .publish("lobby", json!({"text": format!("m{i}")}))
            .await
            .unwrap();
        assert_eq!(ack.seq, i);
    }
    // Idempotent by id.
    let a1 = alice
        .publish_with_id("lobby", "fixed", json!("x"))
        .await
        .unwrap();
    let a2 = alice
        .publish_with_id("lobby", "fixed", json!("x"))
        .await
        .unwrap();
    assert_eq!(a1, a2);
    assert_eq!(a1.seq, 10);

    // Bob (binary serialization) replays from 6.
    let (bob, mut b_ev) = client_on(&node, "bob", Serialization::Binary, tb).await;
    assert_eq!(bob.join("lobby", Some(6)).await.unwrap(), 10);
    // Each client's path is shown (both are registered: bob's join was answered).
    let st = node.status().await;
    let shown: Vec<(Option<&str>, &str)> = st
        .clients
        .iter()
        .map(|c| (c.client.as_deref(), c.transport.as_str()))
        .collect();
    assert_eq!(
        shown,
        [(Some("alice"), ta.as_str()), (Some("bob"), tb.as_str())]
    );
    let on = |t: Transport| [ta, tb].iter().filter(|x| **x == t).count() as u64;
    assert_eq!(
        (st.relay.clients_webrtc, st.relay.clients_ws),
        (on(Transport::Webrtc), on(Transport::Ws))
    );
    let metrics = node.shared().metrics().await;
    assert!(
        metrics.contains(&format!(
            "ouroboros_relay_clients_by_transport{{transport=\"ws\"}} {}\n",
            on(Transport::Ws)
        )),
        "{metrics}"
    );
    for seq in 7..=10 {
        let m = next_msg(&mut b_ev).await;
        assert_eq!(m.seq, seq);
        assert_eq!(m.from, "alice");
    }
    // Presence: alice sees bob.
    next_matching(&mut a_ev, |e| match e {
        Event::Presence { room, joined, .. }
            if room == "lobby" && joined.contains(&"bob".to_string()) =>
        {
            Some(())
        }
        _ => None,
    })
    .await;
    // Live fan-out to bob, in order.
    for i in 0..20 {
        alice.publish("lobby", json!(i)).await.unwrap();
    }
    for i in 0..20 {
        let m = next_msg(&mut b_ev).await;
        assert_eq!(m.seq, 11 + i);
        assert_eq!(m.body, json!(i));
    }
    // History pages, newest first.
    let p1 = bob.history("lobby", None, Some(4)).await.unwrap();
    assert_eq!(
        p1.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![30, 29, 28, 27]
    );
    let p2 = bob.history("lobby", Some(3), Some(10)).await.unwrap();
    assert_eq!(
        p2.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(p2.messages[1].body, json!({"text": "m1"}));
    assert_eq!(p2.evicted_before, None);
    // Direct by client name.
    bob.direct("alice", json!({"hi": "there"})).await.unwrap();
    let (from, body) = next_matching(&mut a_ev, |e| match e {
        Event::Direct { from, body } => Some((from.clone(), body.clone())),
        _ => None,
    })
    .await;
    assert_eq!(from, "bob");
    assert_eq!(body, json!({"hi": "there"}));
    assert!(alice.ping().await.unwrap() < Duration::from_secs(5));
    // Leave: alice sees bob go.
    bob.leave("lobby").await.unwrap();
    next_matching(&mut a_ev, |e| match e {
        Event::Presence { left, .. } if left.contains(&"bob".to_string()) => Some(()),
        _ => None,
    })
    .await;
    alice.close().await;
    bob.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_documented_errors() {
    limits_on(Transport::Webrtc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_documented_errors_over_the_websocket() {
    limits_on(Transport::Ws).await;
}

async fn limits_on(transport: Transport) {
    let (node, _dir) = start_node(&[
        "--max-message-size",
        "1KiB",
        "--max-rooms-per-client",
        "2",
        "--client-rate",
        "1",
        "--client-burst",
        "30",
        "--max-clients",
        "1",
    ])
    .await;
    let (c, mut ev) = client_on(&node, "limited", Serialization::Json, transport).await;
    c.join("a", None).await.unwrap();
    assert_eq!(
        node_error(c.publish("a", json!("x".repeat(2000))).await),
        "too_large"
    );
    assert_eq!(node_error(c.join("no spaces!", None).await), "bad_room");
    c.join("b", None).await.unwrap();
    assert_eq!(node_error(c.join("c", None).await), "too_many_rooms");
    assert_eq!(
        node_error(c.history("a", None, Some(1_000_000)).await),
        "bad_limit"
    );
    c.leave("zzz").await.unwrap();
    let code = next_matching(&mut ev, |e| match e {
        Event::Error { code, .. } => Some(code.clone()),
        _ => None,
    })
    .await;
    assert_eq!(code, "not_joined");
    // A `json` frame of 16 300 bytes or more cannot be sent at all on a DataChannel
    // (peerjs's rule): the publish is refused here, not retried on a new connection after
    // every failure. The WebSocket carries it, and the node refuses it.
    match (
        transport,
        tokio::time::timeout(WAIT, c.publish("a", json!("y".repeat(17_000)))).await,
    ) {
        (Transport::Webrtc, Ok(Err(ClientError::Unsendable(_)))) => {}
        (Transport::Ws, Ok(r)) => assert_eq!(node_error(r), "too_large"),
        (_, other) => panic!("expected Unsendable / too_large, got {other:?}"),
    }
    // Still usable.
    assert_eq!(c.publish("a", json!("ok")).await.unwrap().seq, 1);
    // Rate: 30 burst at 1/s.
    let mut limited = false;
    for _ in 0..40 {
        if let Err(ClientError::Node { code, .. }) = c.publish("a", json!(1)).await {
            assert_eq!(code, "rate_limited");
            limited = true;
            break;
        }
    }
    assert!(limited, "rate limit never hit");
    // max_clients 1: a second client is refused.
    let mut cfg = ClientConfig::new("second");
    cfg.transport = transport;
    cfg.give_up_after = Some(Duration::from_secs(1));
    match Client::connect(node.record(), cfg).await {
        Ok((c2, mut ev2)) => {
            let code = next_matching(&mut ev2, |e| match e {
                Event::Error { code, .. } => Some(code.clone()),
                _ => None,
            })
            .await;
            assert_eq!(code, "server_full");
            c2.close().await;
        }
        Err(e) => panic!("the channel opens before the refusal: {e}"),
    }
    c.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_seed_protocol_over_a_real_data_connection() {
    let (node, _dir) = start_node(&[]).await;
    let ep = &node.record().signaling[0];
    let peer = Peer::open(PeerConfig::new(ep.host.clone(), ep.port))
        .await
        .unwrap();
    // The seed's client: default options (binary, unordered), no metadata.
    let conn = peer
        .connect(&node.peer_id(), ConnectOptions::default())
        .await
        .unwrap();
    let (tx, mut rx) = conn.split();
    let mut next_str = async || -> String {
        match tokio::time::timeout(WAIT, rx.recv()).await.unwrap() {
            Some(Ok(Value::Str(s))) => s,
            other => panic!("expected a string, got {other:?}"),
        }
    };
    tx.send(&Value::Str("0".into())).await.unwrap();
    assert_eq!(next_str().await, "[]");
    for i in 1..=6 {
        let m = json!({"userName": "old", "message": format!("hello {i}")}).to_string();
        tx.send(&Value::Str(m)).await.unwrap();
        let echo: serde_json::Value = serde_json::from_str(&next_str().await).unwrap();
        assert_eq!(echo["message"], format!("hello {i}"));
        assert!(echo["date"].is_string() || echo["date"].is_number());
    }
    tx.send(&Value::Str("0".into())).await.unwrap();
    let page: Vec<serde_json::Value> = serde_json::from_str(&next_str().await).unwrap();
    let texts: Vec<_> = page
        .iter()
        .map(|m| m["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        texts,
        ["hello 6", "hello 5", "hello 4", "hello 3", "hello 2"]
    );
    tx.send(&Value::Str("5".into())).await.unwrap();
    let page: Vec<serde_json::Value> = serde_json::from_str(&next_str().await).unwrap();
    assert_eq!(page.len(), 1);
    tx.send(&Value::Str("ping".into())).await.unwrap();
    assert_eq!(next_str().await, "pong");
    peer.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_a_small_budget_reports_and_never_reuses_seqs() {
    let (node, _dir) = start_node(&[
        "--memory-budget",
        "24KiB",
        "--client-burst",
        "2000",
        "--client-rate",
        "2000",
    ])
    .await;
    let (c, _ev) = client(&node, "filler", Serialization::Json).await;
    let body = json!("z".repeat(500));
    for i in 1..=100u64 {
        assert_eq!(c.publish("big", body.clone()).await.unwrap().seq, i);
    }
    let page = c.history("big", None, Some(500)).await.unwrap();
    let evicted_before = page.evicted_before.expect("eviction reported");
    assert!(evicted_before > 1);
    assert_eq!(page.messages[0].seq, 100);
    assert!(page.messages.iter().all(|m| m.seq >= evicted_before));
    assert_eq!(page.messages.len() as u64, 100 - evicted_before + 1);
    assert_eq!(c.publish("big", json!("after")).await.unwrap().seq, 101);
    let st = node.status().await;
    assert!(st.relay.messages_evicted > 0);
    assert!(st.relay.bytes_stored <= 24 * 1024);
    c.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_follows_moved_rejoins_with_since_and_resends_unacked() {
    follows_moved_on(Transport::Webrtc).await;
}

/// A WebSocket client follows `moved` to the successor's relay WebSocket (derived from the
/// successor's signaling endpoint in `moved`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_client_follows_moved_rejoins_with_since_and_resends_unacked() {
    follows_moved_on(Transport::Ws).await;
}

async fn follows_moved_on(transport: Transport) {
    // Two nodes of one ring: the same secret, so the same ring key signs a's `moved` and b's
    // `welcome` (the client pinned it from a's record).
    let secret: &[u8] = b"the secret of the moved test's ring";
    let (a, _da) = start_node_in_ring(&["--peer-id", "node-gen-a"], Some(secret)).await;
    let (b, _db) = start_node_in_ring(
        &["--peer-id", "node-gen-b", "--generation", "1"],
        Some(secret),
    )
    .await;
    let (c, mut ev) = client_on(&a, "mover", Serialization::Json, transport).await;
    c.join("r", None).await.unwrap();
    assert_eq!(c.publish("r", json!("on a")).await.unwrap().seq, 1);
    // A stops taking writes (handing over): the next publish stays pending.
    a.relay()
        .with_relay(|r| r.set_mode(ouroboros::relay::Mode::Draining))
        .await
        .unwrap();
    let pending = {
        let c = c.clone();
        tokio::spawn(async move {
            c.publish_with_id("r", "during-move", json!("pending"))
                .await
        })
    };
    // B already holds seq 1 (as a handoff would have brought it).
    let (seed, _sev) = client(&b, "seed", Serialization::Json).await;
    seed.publish("r", json!("on a")).await.unwrap();
    // A announces the move through the handoff seam (what the predecessor driver calls).
    let rb = b.record();
    HostOps::announce_moved(a.relay(), &rb.peer_id, &rb.signaling, rb.generation).await;
    let (peer_id, generation) = next_matching(&mut ev, |e| match e {
        Event::Moved {
            peer_id,
            generation,
        } => Some((peer_id.clone(), *generation)),
        _ => None,
    })
    .await;
    assert_eq!((peer_id.as_str(), generation), ("node-gen-b", 1));
    // The pending publish is re-sent to B and acknowledged there.
    let ack = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ack.seq, 2);
    // Live messages on B reach the client (it re-joined with since = 1).
    seed.publish("r", json!("on b")).await.unwrap();
    let m = next_msg(&mut ev).await;
    assert_eq!(m.seq, 2);
    let m = next_msg(&mut ev).await;
    assert_eq!((m.seq, m.body.clone()), (3, json!("on b")));
    match c.state() {
        ouroboros::client::ConnectionState::Live {
            node,
            generation,
            transport: t,
        } => {
            assert_eq!((node.as_str(), generation, t), ("node-gen-b", 1, transport));
        }
        s => panic!("unexpected state {s:?}"),
    }
    c.close().await;
    seed.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A publish refused as `read_only` by a node that then accepts writes without any `moved`
/// (a successor that published its record a moment before going writable) is re-sent on the
/// same connection and acknowledged. Before, it stayed pending for a `moved` that never came:
/// the client hung (seen as a hanging ring test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_refused_as_read_only_is_resent_when_the_node_accepts_writes() {
    let (node, _dir) = start_node(&[]).await;
    let (c, _ev) = client(&node, "writer", Serialization::Json).await;
    c.join("r", None).await.unwrap();
    node.relay()
        .with_relay(|r| r.set_mode(ouroboros::relay::Mode::Draining))
        .await
        .unwrap();
    let pending = {
        let c = c.clone();
        tokio::spawn(async move { c.publish_with_id("r", "early", json!("early")).await })
    };
    // Wait until the node refused it (its own error counter; polling the node's report).
    let deadline = std::time::Instant::now() + WAIT;
    while node.status().await.relay.errors == 0 {
        assert!(std::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !pending.is_finished(),
        "refused as read_only: still pending"
    );
    node.relay()
        .with_relay(|r| r.set_mode(ouroboros::relay::Mode::Primary))
        .await
        .unwrap();
    let ack = tokio::time::timeout(WAIT, pending)
        .await
        .expect("re-sent and acknowledged without a move")
        .unwrap()
        .unwrap();
    assert_eq!(ack.seq, 1);
    c.close().await;
    node.shutdown().await;
}

/// Starts the reference `peer` server (tests/js/node_modules) on an ephemeral port.
async fn start_reference_server() -> Option<(tokio::process::Child, u16)> {
    if !support::reference_installed() {
        eprintln!(
            "skipping: {} missing (run npm ci in tests/js)",
            support::REFERENCE_CLI
        );
        return None;
    }
    Some(support::spawn_listening(support::reference_command(&[]), WAIT).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_registration_on_the_reference_server() {
    let Some((mut reference, port)) = start_reference_server().await else {
        return;
    };
    let url = format!("ws://127.0.0.1:{port}/?key=peerjs");
    let (node, _dir) = start_node(&["--also-register", &url]).await;
    let record = node.record();
    assert_eq!(record.signaling.len(), 2);
    assert_eq!(record.signaling[1].port, port);
    // The extra registration comes up (it is started after the node's own).
    let mut up = false;
    for _ in 0..100 {
        let st = node.status().await;
        if st.endpoints[1].state == "registered" {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await; // polling the node's own report
    }
    assert!(up, "registered on the reference server");
    // A client of the reference server only.
    let mut cfg = ClientConfig::new("cloud-user");
    cfg.endpoint_index = 1;
    let target = Target::new(record.peer_id.clone(), 0, vec![record.signaling[1].clone()]);
    let (cloud, _cev) = Client::connect(target, cfg).await.unwrap();
    let (local, mut lev) = client(&node, "local-user", Serialization::Json).await;
    local.join("both", None).await.unwrap();
    cloud.join("both", None).await.unwrap();
    cloud
        .publish("both", json!("via the reference server"))
        .await
        .unwrap();
    assert_eq!(
        next_msg(&mut lev).await.body,
        json!("via the reference server")
    );
    cloud.close().await;
    local.close().await;
    node.shutdown().await;
    let _ = reference.kill().await;
}

/// Issue 14: someone holds the node's id on a public server it also registers on (the PeerJS
/// cloud runs this reference server). The node moves to a fresh id there, its record names
/// that id for that endpoint (signed), and a client of that server alone reaches the node.
/// Without the move the registration stays in "retrying" with "ID is taken" and the client
/// reaches the squatter's socket, or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_id_on_another_server_moves_the_node_to_a_fresh_id_there() {
    use futures::StreamExt;
    let Some((mut reference, port)) = start_reference_server().await else {
        return;
    };
    let id = "ouroboros-squatted1";
    // The squatter registers the node's id on the public server first.
    let (mut squatter, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{port}/peerjs?key=peerjs&id={id}&token=squatter&version=1.5.5"
    ))
    .await
    .expect("squatter connects");
    let open = tokio::time::timeout(WAIT, squatter.next())
        .await
        .expect("OPEN in time")
        .expect("a frame")
        .expect("a frame");
    assert!(
        open.to_string().contains("OPEN"),
        "squatter registered: {open}"
    );

    let url = format!("ws://127.0.0.1:{port}/?key=peerjs");
    let (node, _dir) = start_node(&["--peer-id", id, "--also-register", &url]).await;
    let mut moves = node.shared().endpoint_moves();
    tokio::time::timeout(WAIT, moves.wait_for(|n| *n > 0))
        .await
        .expect("the node moves to a fresh id on the squatted server in time")
        .expect("node alive");
    let record = node.record();
    assert_eq!(
        record.peer_id, id,
        "the node keeps its id on its own server"
    );
    assert_eq!(record.signaling[0].peer_id, None);
    let fresh = record.signaling[1]
        .peer_id
        .clone()
        .expect("the squatted endpoint names the node's fresh id");
    assert_ne!(fresh, id);
    assert!(ouroboros::ids::is_peerjs_id(&fresh), "{fresh}");
    record.verify(None).expect("the moved record is signed");
    assert!(
        record.verify(None).unwrap().is_some(),
        "signed with the ring key"
    );
    let served = reqwest::Client::new()
        .get(format!("http://{}/ouroboros.json", node.local_addr()))
        .json_ok()
        .await;
    assert_eq!(served["signaling"][1]["peer_id"], json!(fresh));

    // A client of the public server alone reaches the node under the fresh id.
    let mut cfg = ClientConfig::new("cloud-user");
    cfg.endpoint_index = 1;
    let target = Target::new(record.peer_id.clone(), 0, vec![record.signaling[1].clone()]);
    let (cloud, _cev) = Client::connect(target, cfg)
        .await
        .expect("client reaches the node");
    let (local, mut lev) = client(&node, "local-user", Serialization::Json).await;
    local.join("both", None).await.unwrap();
    cloud.join("both", None).await.unwrap();
    cloud
        .publish("both", json!("past the squatter"))
        .await
        .unwrap();
    assert_eq!(next_msg(&mut lev).await.body, json!("past the squatter"));
    cloud.close().await;
    local.close().await;
    node.shutdown().await;
    drop(squatter);
    let _ = reference.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients() {
    const N: usize = 200;
    let (node, _dir) = start_node(&[]).await;
    let record = node.record();
    // Connect in waves of 20 (each client is its own peer + PeerConnection on this 2-core box).
    let mut clients = Vec::with_capacity(N);
    for wave in 0..N / 20 {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..20 {
            let record = record.clone();
            let name = format!("c{:03}", wave * 20 + i);
            set.spawn(async move {
                let mut cfg = ClientConfig::new(&name);
                cfg.connect_timeout = Duration::from_secs(60);
                let (c, ev) = Client::connect(record, cfg).await.expect("connects");
                c.join("crowd", None).await.expect("joins");
                (name, c, ev)
            });
        }
        while let Some(r) = set.join_next().await {
            clients.push(r.unwrap());
        }
    }
    assert_eq!(node.status().await.relay.clients, N as u64);
    // Every client publishes once; every client receives all N messages, in seq order.
    let mut set = tokio::task::JoinSet::new();
    for (name, c, _) in &clients {
        let c = c.clone();
        let name = name.clone();
        set.spawn(async move { c.publish("crowd", json!(name)).await.unwrap().seq });
    }
    let mut seqs = Vec::new();
    while let Some(r) = set.join_next().await {
        seqs.push(r.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=N as u64).collect::<Vec<_>>());
    for (_, _, ev) in clients.iter_mut() {
        let mut seen = Vec::with_capacity(N);
        while seen.len() < N {
            seen.push(next_msg(ev).await.seq);
        }
        assert_eq!(seen, (1..=N as u64).collect::<Vec<_>>());
    }
    for (_, c, _) in &clients {
        c.close().await;
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_discovery_status_metrics_and_root_negotiation() {
    let (node, dir) = start_node(&[
        "--peer-id",
        "http-node",
        "--public-host",
        "chat.example.org",
        "--public-port",
        "443",
        "--public-secure",
    ])
    .await;
    let base = format!("http://{}", node.local_addr());
    let http = reqwest::Client::new();
    let res = http
        .get(format!("{base}/ouroboros.json"))
        .header("origin", "http://elsewhere.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let served: serde_json::Value = res.json().await.unwrap();
    assert_eq!(served["version"], 1);
    assert_eq!(served["peer_id"], "http-node");
    assert_eq!(served["generation"], 0);
    assert_eq!(
        served["signaling"][0],
        json!({"host":"chat.example.org","port":443,"path":"/","key":"peerjs","secure":true})
    );
    assert!(served["started_at"].is_string());
    // The same record is in the data dir.
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("ouroboros.json")).unwrap()).unwrap();
    assert_eq!(written, served);

    let (c, _ev) = client_local(&node, "metrics-user").await;
    c.publish("m", json!("one")).await.unwrap();
    let metrics = http.get(format!("{base}/metrics")).text_ok().await;
    assert!(metrics.contains("ouroboros_relay_clients 1\n"), "{metrics}");
    assert!(
        metrics.contains("ouroboros_relay_published_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("ouroboros_relay_rooms 1\n"), "{metrics}");
    let status: serde_json::Value = http.get(format!("{base}/status.json")).json_ok().await;
    assert_eq!(status["peer_id"], "http-node");
    assert_eq!(status["relay"]["clients"], 1);
    assert_eq!(status["endpoints"][0]["state"], "registered");
    // The root: HTML for browsers, the PeerJS JSON for programs.
    let html = http
        .get(format!("{base}/"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = html.text().await.unwrap();
    assert!(page.contains("<title>Ouroboros chat</title>"));
    // The node's own copy of the pinned PeerJS client, with subresource integrity.
    assert!(page.contains(&format!(
        r#"<script src="/peerjs.min.js" integrity="{}" crossorigin="anonymous">"#,
        ouroboros::node::PEERJS_INTEGRITY
    )));
    let bundle = http
        .get(format!("{base}/peerjs.min.js"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bundle[..], ouroboros::node::PEERJS_BUNDLE);
    let info: serde_json::Value = http.get(format!("{base}/")).json_ok().await;
    assert_eq!(info["name"], "PeerJS Server");
    let status_page = http.get(format!("{base}/status")).text_ok().await;
    assert!(status_page.contains("http-node"));
    c.close().await;
    node.shutdown().await;
}

/// A client that reaches the node on its bound address (the record advertises a public one).
async fn client_local(node: &Node, name: &str) -> (Client, UnboundedReceiver<Event>) {
    let mut target: Target = node.record().into();
    let addr = node.local_addr();
    target.signaling[0].host = addr.ip().to_string();
    target.signaling[0].port = addr.port();
    target.signaling[0].secure = false;
    Client::connect(target, ClientConfig::new(name))
        .await
        .expect("client connects")
}

// ------------------------------------------------------- outsiders (issue 14, points 1, 4)

/// An OFFER payload shaped like the one peerjs 1.5.5 sends from Chromium (a data channel
/// offer, candidates trickled separately), for connection `dc`.
fn chromium_offer(dc: &str) -> serde_json::Value {
    let sdp = "v=0\r\no=- 5813279395958358117 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Zs4l\r\na=ice-pwd:7W5Wz1bVaXxY2Zo3J0cHvGhB\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 3F:2A:91:0C:7D:5E:4B:88:19:A6:E2:3C:55:0D:9B:71:C4:60:2F:8E:13:D7:A5:B9:6C:40:F1:0E:97:2B:DA:34\r\n\
a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";
    json!({
        "sdp": {"sdp": sdp, "type": "offer"},
        "type": "data",
        "connectionId": dc,
        "label": dc,
        "reliable": true,
        "serialization": "json",
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw PeerJS signaling socket to the node's own server as `id` with `token`; returns the
/// socket and its first frame.
async fn raw_signaling(node: &Node, id: &str, token: &str) -> (Ws, String) {
    use futures::StreamExt;
    let url = format!(
        "ws://{}/peerjs?key=peerjs&id={id}&token={token}&version=1.5.5",
        node.local_addr()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a first frame in time")
        .expect("a first frame")
        .expect("a first frame");
    (
        ws,
        first.into_text().map(|t| t.to_string()).unwrap_or_default(),
    )
}

/// Sends 400 Chromium-shaped OFFERs for the node on `ws` (a client's whole burst).
async fn offer_flood(mut ws: Ws, node_id: String, tag: String) -> Ws {
    use futures::SinkExt;
    for n in 0..400 {
        let offer = json!({
            "type": "OFFER",
            "dst": node_id,
            "payload": chromium_offer(&format!("dc_{tag}_{n}")),
        });
        let frame = tokio_tungstenite::tungstenite::Message::text(offer.to_string());
        if ws.send(frame).await.is_err() {
            break;
        }
    }
    ws
}

/// The issue-14 id flood: five sockets send 2000 OFFERs to the node's id while a sixth loop
/// keeps trying to register that id. Before the fix the node's connection was dropped (rate
/// limit, write queue) and the loop took its id within ~128 ms. Now the id is reserved: the
/// node keeps it, its negotiations stay capped, and a real client still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_id_survives_an_offer_flood_and_a_registration_race() {
    let (node, _dir) = start_node(&[
        "--address-rate-limit",
        "0",
        "--max-inbound-negotiations",
        "64",
        "--max-inbound-negotiations-per-peer",
        "4",
    ])
    .await;
    let node_id = node.peer_id();
    let mut attackers = Vec::new();
    for i in 0..5 {
        let (ws, first) = raw_signaling(&node, &format!("flood{i}"), "t").await;
        assert_eq!(first, r#"{"type":"OPEN"}"#);
        attackers.push(ws);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let race = {
        let (node_addr, node_id, stop) = (node.local_addr(), node_id.clone(), stop.clone());
        tokio::spawn(async move {
            use futures::StreamExt;
            let mut attempts = 0u32;
            while !stop.is_cancelled() {
                attempts += 1;
                let url = format!(
                    "ws://{node_addr}/peerjs?key=peerjs&id={node_id}&token=thief{attempts}"
                );
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
                    continue;
                };
                if let Ok(Some(Ok(m))) = tokio::time::timeout(WAIT, ws.next()).await {
                    let text = m.into_text().map(|t| t.to_string()).unwrap_or_default();
                    if text == r#"{"type":"OPEN"}"# {
                        return Err(format!("the id was taken after {attempts} attempts"));
                    }
                    assert!(text.contains("ID-TAKEN"), "unexpected answer {text}");
                }
            }
            Ok(attempts)
        })
    };
    let floods = attackers
        .into_iter()
        .enumerate()
        .map(|(i, ws)| offer_flood(ws, node_id.clone(), format!("flood{i}")));
    let attackers = futures::future::join_all(floods).await;
    // Keep racing for a while after the flood, as the issue's attacker did.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let attempts = race
        .await
        .expect("race task")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(attempts > 1, "the registration loop ran");
    let status = node.status().await;
    assert_eq!(
        status.endpoints[0].state, "registered",
        "{:?}",
        status.endpoints[0]
    );
    assert_eq!(
        status.endpoints[0].registrations, 1,
        "the node never lost its registration"
    );
    // A real client still reaches the node's relay while the flood's negotiations are
    // pending (they hold at most 5 × 4 of the 64 places, for up to 30 s).
    let (alice, mut events) = client_local(&node, "alice").await;
    alice
        .join("after-flood", None)
        .await
        .expect("join after the flood");
    alice
        .publish("after-flood", json!("still here"))
        .await
        .expect("publish after the flood");
    let m = next_msg(&mut events).await;
    assert_eq!(m.body, json!("still here"));
    drop(attackers);
    node.shutdown().await;
}

/// Issue 14, point 7: the node's pages carry a CSP that forbids framing and foreign
/// scripts, and `nosniff`; `/status.json` stays readable from any origin (read-only, public
/// facts only — see SECURITY.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_carry_csp_frame_ancestors_and_nosniff() {
    let (node, _dir) = start_node(&[]).await;
    let base = format!("http://{}", node.local_addr());
    let http = reqwest::Client::new();
    for (path, accept) in [("/chat", "text/html"), ("/", "text/html,*/*;q=0.8")] {
        let res = http
            .get(format!("{base}{path}"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let h = res.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
        assert!(csp.contains("object-src 'none'"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    for path in ["/chat.js", "/chat.css", "/status"] {
        let res = http.get(format!("{base}{path}")).send().await.unwrap();
        let h = res.headers();
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("frame-ancestors 'none'"),
            "{path}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
    }
    // Programs still get the PeerJS info JSON at `/`, without the page's headers.
    let res = http.get(&base).send().await.unwrap();
    assert!(res.headers().get("content-security-policy").is_none());
    let res = http
        .get(format!("{base}/status.json"))
        .header("origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let body = res.text().await.unwrap();
    assert!(
        !body.contains("token") && !body.contains("secret"),
        "{body}"
    );
    node.shutdown().await;
}
