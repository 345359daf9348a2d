//! The relay protocol over the node's WebSocket (`GET /relay`, protocol/relay.md): the raw
//! frames, the Rust client's `auto` fallback when WebRTC cannot open, and clients on the
//! WebSocket following a real local ring through rotations with nothing acknowledged lost.
//! (The relay protocol itself over both paths: `tests/node.rs`, one body per transport.)
//!
//! WebRTC is made impossible without network namespaces by binding the client's WebRTC
//! sockets to IPv6 loopback only (`ClientConfig::udp_addrs = ["[::1]:0"]`) while the node
//! offers IPv4 candidates only: ICE has no candidate pair, so no DataChannel ever opens —
//! what a client on a network without UDP to the node sees.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use ouroboros::client::{Client, ClientConfig, ConnectionState, Transport};
use ouroboros::discovery::DiscoveryRecord;
use serde_json::{Value, json};
use support::start_node;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
            Some(Ok(Message::Close(c))) => panic!("closed: {c:?}"),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_on_the_relay_websocket() {
    let (node, _dir) = start_node(&["--max-message-size", "1KiB"]).await;
    let record = node.record();
    let url = record
        .relay_ws
        .clone()
        .expect("the record names the relay WebSocket");
    assert_eq!(
        url,
        format!("ws://127.0.0.1:{}/relay", node.local_addr().port())
    );
    // A plain GET is told to upgrade.
    let res = reqwest_get(&format!(
        "http://127.0.0.1:{}/relay",
        node.local_addr().port()
    ))
    .await;
    assert!(res.starts_with("HTTP/1.1 426"), "{res}");

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?client=raw"))
        .await
        .unwrap();
    // Declared: welcomed at once.
    let w = next_json(&mut ws).await;
    assert_eq!(w["op"], "welcome");
    assert_eq!(w["node"], node.peer_id().as_str());
    assert_eq!(w["limits"]["max_message_bytes"], 1024);
    send(&mut ws, json!({"op":"join","room":"r"})).await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op":"joined","room":"r","head":0})
    );
    let p = next_json(&mut ws).await;
    assert_eq!(
        (p["op"].as_str(), &p["joined"]),
        (Some("presence"), &json!(["raw"]))
    );
    send(
        &mut ws,
        json!({"op":"publish","room":"r","id":"m1","body":"hi"}),
    )
    .await;
    // The member gets the msg and the publisher the ack (either order).
    let mut got = [next_json(&mut ws).await, next_json(&mut ws).await];
    got.sort_by_key(|v| v["op"].as_str().unwrap_or("").to_owned());
    assert_eq!(got[0], json!({"op":"ack","id":"m1","room":"r","seq":1}));
    assert_eq!(
        (got[1]["op"].as_str(), got[1]["from"].as_str()),
        (Some("msg"), Some("raw"))
    );
    // Same id again: acknowledged again with the first seq (dedup by the declared name).
    send(
        &mut ws,
        json!({"op":"publish","room":"r","id":"m1","body":"hi"}),
    )
    .await;
    assert_eq!(
        next_json(&mut ws).await,
        json!({"op":"ack","id":"m1","room":"r","seq":1})
    );
    // Bad input: errors, never a closed socket.
    ws.send(Message::text("not json")).await.unwrap();
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["op"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    send(&mut ws, json!([1, 2])).await;
    assert_eq!(next_json(&mut ws).await["code"], "bad_request");
    send(
        &mut ws,
        json!({"op":"publish","room":"r","id":"big","body":"x".repeat(2000)}),
    )
    .await;
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("too_large"), Some("big"))
    );
    send(&mut ws, json!({"op":"ping"})).await;
    assert_eq!(next_json(&mut ws).await, json!({"op":"pong"}));
    // A second identity-less socket gets a `ws-…` peer id as its identity.
    let (mut anon, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut anon).await["op"], "welcome");
    send(&mut anon, json!({"op":"join","room":"r"})).await;
    next_json(&mut anon).await; // joined
    let p = next_json(&mut anon).await;
    let members: Vec<String> = serde_json::from_value(p["joined"].clone()).unwrap();
    assert!(members.contains(&"raw".to_string()));
    assert!(members.iter().any(|m| m.starts_with("ws-")), "{members:?}");
    let st = node.status().await;
    assert_eq!(st.relay.clients_ws, 2);
    ws.close(None).await.unwrap();
    drop(anon);
    node.shutdown().await;
}

/// Frames on `ws` up to its next `pong` (send a `ping` first).
async fn until_pong(ws: &mut Ws) -> Vec<Value> {
    send(ws, json!({"op":"ping"})).await;
    let mut got = Vec::new();
    loop {
        let v = next_json(ws).await;
        if v["op"] == "pong" {
            return got;
        }
        got.push(v);
    }
}

/// Issue 14, point 6: Mallory declares Alice's name. She gets `name_taken` and another
/// identity: Alice's direct messages stay Alice's, Mallory's messages are not from "alice",
/// and a message id Mallory uses first does not swallow Alice's publish with that id. Alice's
/// `name_token` takes her name on another connection. (On the code before name binding,
/// Mallory simply was "alice".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_take_another_clients_name() {
    let (node, _dir) = start_node(&[]).await;
    let url = node.record().relay_ws.unwrap();
    let open = |q: String| {
        let url = format!("{url}?{q}");
        async move { tokio_tungstenite::connect_async(url).await.unwrap().0 }
    };
    let mut alice = open("client=alice".into()).await;
    let w = next_json(&mut alice).await;
    assert_eq!(w["client"], "alice");
    let token = w["name_token"].as_str().expect("a name token").to_owned();
    send(&mut alice, json!({"op":"join","room":"r"})).await;
    next_json(&mut alice).await; // joined
    next_json(&mut alice).await; // presence

    let mut mallory = open("client=alice".into()).await;
    let w = next_json(&mut mallory).await;
    assert_ne!(w["client"], "alice", "{w}");
    let before_pong = until_pong(&mut mallory).await;
    assert_eq!(before_pong.len(), 1, "{before_pong:?}");
    assert_eq!(before_pong[0]["code"], "name_taken");

    // A direct message to alice reaches alice, not mallory.
    let mut carol = open("client=carol".into()).await;
    next_json(&mut carol).await;
    send(
        &mut carol,
        json!({"op":"direct","to":"alice","body":"for alice only"}),
    )
    .await;
    assert_eq!(
        next_json(&mut alice).await,
        json!({"op":"direct","from":"carol","body":"for alice only"})
    );
    assert!(
        until_pong(&mut mallory).await.is_empty(),
        "mallory got a direct"
    );

    // Mallory's publish is not from alice, and does not claim alice's next message id.
    send(
        &mut mallory,
        json!({"op":"publish","room":"r","id":"a-1","body":"fake"}),
    )
    .await;
    let ack = next_json(&mut mallory).await;
    let m = next_json(&mut alice).await;
    assert_eq!(m["op"], "msg");
    assert_ne!(m["from"], "alice", "{m}");
    send(
        &mut alice,
        json!({"op":"publish","room":"r","id":"a-1","body":"real"}),
    )
    .await;
    let mut got = [next_json(&mut alice).await, next_json(&mut alice).await];
    got.sort_by_key(|v| v["op"].as_str().unwrap_or("").to_owned());
    assert_eq!(got[0]["op"], "ack");
    assert_ne!(
        got[0]["seq"], ack["seq"],
        "alice's publish was taken for mallory's"
    );
    assert_eq!(
        (got[1]["from"].as_str(), got[1]["body"].as_str()),
        (Some("alice"), Some("real"))
    );

    // Alice's token takes her name on a second connection.
    let mut again = open(format!("client=alice&token={token}")).await;
    let w = next_json(&mut again).await;
    assert_eq!(w["client"], "alice");
    assert!(until_pong(&mut again).await.is_empty());
    node.shutdown().await;
}

/// A raw HTTP/1.1 GET (no upgrade), returning the status line and headers.
async fn reqwest_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let u = url::Url::parse(url).unwrap();
    let mut s = tokio::net::TcpStream::connect((u.host_str().unwrap(), u.port().unwrap()))
        .await
        .unwrap();
    s.write_all(
        format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            u.path()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Auto mode with WebRTC impossible (see the module doc): the client falls back to the
/// WebSocket within `fallback_after` and works; with WebRTC possible it stays on WebRTC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_the_websocket_when_no_datachannel_opens() {
    let (node, _dir) = start_node(&[]).await;
    let mut cfg = ClientConfig::new("no-udp");
    cfg.udp_addrs = Some(vec!["[::1]:0".into()]);
    cfg.fallback_after = Duration::from_millis(1500);
    let started = Instant::now();
    let (c, _ev) = Client::connect(node.record(), cfg).await.unwrap();
    let took = started.elapsed();
    assert_eq!(c.transport(), Some(Transport::Ws));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(1500 + 2000),
        "fell back after the WebRTC attempt's time limit, not much later: {took:?}"
    );
    c.join("r", None).await.unwrap();
    assert_eq!(c.publish("r", json!("over tcp")).await.unwrap().seq, 1);

    // The same client forced onto WebRTC cannot connect at all: the fallback is what saved it.
    let mut cfg = ClientConfig::new("no-udp-forced");
    cfg.udp_addrs = Some(vec!["[::1]:0".into()]);
    cfg.transport = Transport::Webrtc;
    cfg.connect_timeout = Duration::from_secs(2);
    assert!(Client::connect(node.record(), cfg).await.is_err());

    // With UDP, auto picks WebRTC.
    let (d, _ev) = Client::connect(node.record(), ClientConfig::new("with-udp"))
        .await
        .unwrap();
    assert_eq!(d.transport(), Some(Transport::Webrtc));
    d.join("r", Some(0)).await.unwrap();
    c.close().await;
    d.close().await;
    node.shutdown().await;
}

/// A local ring (`--launcher local`, 6 s lifetime) rotates three times while two clients on
/// the WebSocket publish (one forced `ws`, one `auto` that cannot do WebRTC): every
/// acknowledged message is stored once at its acked seq, dense, and both end on the newest
/// generation, still on the WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_follow_a_real_rotation_with_nothing_lost() {
    let writers = [
        Writer {
            name: "ws-writer-0",
            transport: Transport::Ws,
            no_udp: false,
        },
        Writer {
            name: "ws-writer-1",
            transport: Transport::Auto,
            no_udp: true,
        },
    ];
    run_ring(&[], &writers, 3).await;
}

/// The handoff itself over the WebSocket path (`--handoff-transport ws`, inherited by every
/// successor): two rotations with a WebRTC and a WebSocket client publishing, nothing
/// acknowledged lost, and the newest node's `/status.json` says its handoff came over `ws`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_over_the_websocket_path_keeps_every_acknowledged_message() {
    let writers = [
        Writer {
            name: "rtc-writer",
            transport: Transport::Webrtc,
            no_udp: false,
        },
        Writer {
            name: "ws-writer",
            transport: Transport::Ws,
            no_udp: false,
        },
    ];
    let (record, log) = run_ring(&["--handoff-transport", "ws"], &writers, 2).await;
    assert_eq!(record.0["handoff_transport"], "ws", "{}", record.0);
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("handoff: connected to the predecessor"))
        .collect();
    assert!(
        !said.is_empty() && said.iter().all(|l| l.contains("\"ws\"")),
        "every successor's log says it connected over ws:\n{log}"
    );
}

/// `--handoff-transport auto` (the default) with a WebRTC time limit no DataChannel can meet
/// (`--handoff-fallback-after 1ms`): every successor falls back to the WebSocket (its first
/// attempt says why; later reconnects go to the WebSocket first), and the rotation loses
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_falls_back_to_the_websocket_when_no_datachannel_opens_in_time() {
    let writers = [Writer {
        name: "rtc-writer",
        transport: Transport::Webrtc,
        no_udp: false,
    }];
    let (record, log) = run_ring(&["--handoff-fallback-after", "1ms"], &writers, 2).await;
    assert_eq!(record.0["handoff_transport"], "ws", "{}", record.0);
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("handoff: connected to the predecessor"))
        .collect();
    assert!(
        !said.is_empty()
            && said.iter().all(|l| l.contains("\"ws\""))
            && said
                .iter()
                .filter(|l| l.contains("no DataChannel within 1ms"))
                .count()
                >= 2,
        "the successors fell back after the WebRTC attempt:\n{log}"
    );
}

struct Writer {
    name: &'static str,
    transport: Transport,
    /// WebRTC impossible (UDP bound to `[::1]` only, see the module doc).
    no_udp: bool,
}

/// The newest node's `/status.json`.
struct Status(Value);

/// Runs a local ring with `flags` until generation `rotations` while `writers` publish; checks
/// that every acknowledged message is stored once, at its seq, dense, and every writer ends on
/// the newest generation on its path. Returns the newest node's status and the successors' logs.
async fn run_ring(flags: &[&str], writers: &[Writer], rotations: u64) -> (Status, String) {
    use tokio::io::AsyncBufReadExt;
    ouroboros::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let record_path = data.join("ouroboros.json");
    let bin =
        std::env::var("OUROBOROS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ouroboros").into());
    let mut first = tokio::process::Command::new(bin)
        .args([
            "node",
            "--port",
            "0",
            "--launcher",
            "local",
            "--lifetime",
            "6s",
        ])
        .args([
            "--handoff-lead",
            "3s",
            "--deadline-margin",
            "500ms",
            "--drain-timeout",
            "1s",
        ])
        .args(flags)
        .arg("--data-dir")
        .arg(&data)
        .env("OUROBOROS_SECRET", "a ring secret for the ws ring test")
        .env("RUST_LOG", "info,rtc=error,rtc_ice=error,webrtc=error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(first.stdout.take().unwrap()).lines();
    while let Some(l) = lines.next_line().await.unwrap() {
        if l.starts_with("node peer-id") {
            break;
        }
    }
    let wait = Instant::now() + WAIT;
    while !record_path.exists() {
        assert!(Instant::now() < wait, "no discovery record");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let read_record = || -> Option<DiscoveryRecord> {
        std::fs::read(&record_path)
            .ok()
            .and_then(|b| DiscoveryRecord::from_json(&b).ok())
    };
    let generation = || read_record().map_or(0, |r| r.generation);
    let source = record_path.to_string_lossy().into_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (c, w) in writers.iter().enumerate() {
        let source = source.clone();
        let stop = stop.clone();
        let (name, transport, no_udp) = (w.name, w.transport, w.no_udp);
        tasks.push(tokio::spawn(async move {
            let mut cfg = ClientConfig::new(name);
            cfg.request_timeout = Duration::from_secs(30);
            cfg.transport = transport;
            if no_udp {
                cfg.udp_addrs = Some(vec!["[::1]:0".into()]);
                cfg.fallback_after = Duration::from_millis(1000);
            }
            let (client, mut events) = Client::connect_discovered(&source, cfg).await.unwrap();
            let path = client.transport().expect("connected");
            if no_udp || transport == Transport::Ws {
                assert_eq!(path, Transport::Ws, "{name}");
            }
            tokio::spawn(async move { while events.recv().await.is_some() {} });
            client.join("ring", None).await.unwrap();
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("w{c}-{i}");
                let ack = client
                    .publish_with_id("ring", &id, json!(i))
                    .await
                    .unwrap_or_else(|e| panic!("publish {id}: {e}"));
                acked.push((ack.seq, id));
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (client, acked, path)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while generation() < rotations {
        assert!(
            Instant::now() < deadline,
            "ring stuck at generation {}",
            generation()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let newest = generation();
    let mut all_acked = Vec::new();
    for t in tasks {
        let (client, acked, path) = t.await.unwrap();
        let st = tokio::time::timeout(
            WAIT,
            client.wait_state(
                |s| matches!(s, ConnectionState::Live { generation, .. } if *generation >= newest),
            ),
        )
        .await
        .expect("client follows the ring")
        .unwrap();
        assert!(
            matches!(st, ConnectionState::Live { transport, .. } if transport == path),
            "still on {path}: {st:?}"
        );
        assert!(acked.len() > 20, "client published through the rotations");
        all_acked.extend(acked);
        client.close().await;
    }
    let mut cfg = ClientConfig::new("reader");
    cfg.transport = Transport::Ws;
    let (reader, _ev) = Client::connect_discovered(&source, cfg).await.unwrap();
    let mut stored: Vec<(u64, String)> = Vec::new();
    let mut before = None;
    loop {
        let page = reader.history("ring", before, Some(500)).await.unwrap();
        if page.messages.is_empty() {
            break;
        }
        before = page.messages.last().map(|m| m.seq);
        stored.extend(
            page.messages
                .into_iter()
                .map(|m| (m.seq, m.id.unwrap_or_default())),
        );
    }
    stored.sort();
    all_acked.sort();
    assert_eq!(
        stored, all_acked,
        "exactly the acknowledged messages, at their seqs"
    );
    for (i, (seq, _)) in stored.iter().enumerate() {
        assert_eq!(
            *seq,
            i as u64 + 1,
            "dense sequence across {newest} generations"
        );
    }
    reader.close().await;
    // The newest node's status (it took over through a handoff).
    let rec = read_record().expect("record");
    let ep = &rec.signaling[0];
    let status: Value = reqwest_json(&format!("http://{}:{}/status.json", ep.host, ep.port)).await;
    // Stop the ring: SIGINT to the newest generation.
    if let Ok(pid) = std::fs::read_to_string(data.join("ouroboros.pid")) {
        let _ = std::process::Command::new("kill")
            .args(["-INT", pid.trim()])
            .status();
        let gone = Instant::now() + Duration::from_secs(15);
        while std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
            && Instant::now() < gone
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = first.kill().await;
    let mut logs = String::new();
    if let Ok(dir) = std::fs::read_dir(data.join("logs")) {
        for e in dir.flatten() {
            logs.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    (Status(status), logs)
}

/// GET a JSON document over plain HTTP/1.1.
async fn reqwest_json(url: &str) -> Value {
    let res = reqwest_get(url).await;
    let body = res.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{url}: {e}: {res}"))
}

/// A stand-in for a node (or an impostor) on a relay WebSocket: each accepted connection
/// hands the test its query (`client`, `nonce`, `token`), a sender for frames to the client
/// and a receiver of the client's frames.
struct FakeConn {
    query: std::collections::HashMap<String, String>,
    tx: tokio::sync::mpsc::UnboundedSender<Value>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

// The handshake callback's `Result` type (and its large error) is tungstenite's.
#[allow(clippy::result_large_err)]
async fn fake_node() -> (String, tokio::sync::mpsc::UnboundedReceiver<FakeConn>) {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/relay", listener.local_addr().unwrap());
    let (conns_tx, conns) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let mut query = std::collections::HashMap::new();
            let Ok(mut ws) =
                tokio_tungstenite::accept_hdr_async(tcp, |r: &Request, resp: Response| {
                    let u = url::Url::parse(&format!("ws://x{}", r.uri())).unwrap();
                    query = u.query_pairs().into_owned().collect();
                    Ok(resp)
                })
                .await
            else {
                continue;
            };
            let (tx, mut out) = tokio::sync::mpsc::unbounded_channel::<Value>();
            let (in_tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let _ = conns_tx.send(FakeConn { query, tx, rx });
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        v = out.recv() => match v {
                            Some(v) => { let _ = ws.send(Message::text(v.to_string())).await; }
                            None => { let _ = ws.close(None).await; break; }
                        },
                        m = ws.next() => match m {
                            Some(Ok(Message::Text(t))) => { let _ = in_tx.send(serde_json::from_str(t.as_str()).unwrap()); }
                            Some(Ok(_)) => {}
                            _ => break,
                        },
                    }
                }
            });
        }
    });
    (url, conns)
}

/// A signed welcome for `conn` (its nonce echoed) from `node`, signed with `keys`.
fn welcome_for(
    conn: &FakeConn,
    keys: &ouroboros::discovery::RingKeys,
    node: &str,
    generation: u64,
) -> Value {
    let limits = serde_json::to_value(ouroboros::relay::wire::Limits::default()).unwrap();
    let mut w = json!({"op":"welcome","node":node,"generation":generation,"limits":limits,
        "client":conn.query["client"],"name_token":"tok","nonce":conn.query["nonce"]});
    keys.sign_in_place(ouroboros::discovery::SignedKind::Welcome, &mut w);
    w
}

async fn next_event<T>(
    ev: &mut tokio::sync::mpsc::UnboundedReceiver<ouroboros::client::Event>,
    mut f: impl FnMut(&ouroboros::client::Event) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let e = ev.recv().await.expect("client alive");
            if let Some(t) = f(&e) {
                return t;
            }
        }
    })
    .await
    .expect("the event in time")
}

/// Issue 14, point 6: a client that knows the ring's key (pinned from the record) refuses a
/// tampered `moved` and one signed by another key (it stays connected), refuses an impostor's
/// `welcome` without sending it anything, and follows a correctly signed `moved`, presenting
/// its name token there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_refuses_forged_moved_and_welcome_and_follows_signed_ones() {
    use ouroboros::client::{Event, Target};
    use ouroboros::discovery::{RingKeys, SignedKind};
    let keys = RingKeys::from_secret(b"the ring of the trust test");
    let other = RingKeys::from_secret(b"an impostor's own secret");
    let (url, mut conns) = fake_node().await;
    let target = Target {
        peer_id: "node-1".into(),
        generation: 1,
        signaling: vec![],
        relay_ws: vec![url.clone()],
        ring_key: Some(keys.public_key().to_owned()),
        replicated: false,
    };
    let mut cfg = ClientConfig::new("alice");
    cfg.transport = Transport::Ws;
    let connecting = tokio::spawn(Client::connect(target, cfg));
    let mut c1 = conns.recv().await.unwrap();
    assert!(
        c1.query["nonce"].len() >= 16,
        "a fresh nonce: {:?}",
        c1.query
    );
    c1.tx.send(welcome_for(&c1, &keys, "node-1", 1)).unwrap();
    let (client, mut ev) = connecting.await.unwrap().unwrap();
    next_event(&mut ev, |e| {
        matches!(e, Event::Welcome { .. }).then_some(())
    })
    .await;
    let joining = {
        let client = client.clone();
        tokio::spawn(async move { client.join("r", None).await })
    };
    assert_eq!(c1.rx.recv().await.unwrap()["op"], "join");
    c1.tx
        .send(json!({"op":"joined","room":"r","head":0}))
        .unwrap();
    joining.await.unwrap().unwrap();

    // A tampered moved and one signed by another ring: refused, the client stays.
    let mut moved =
        json!({"op":"moved","peer_id":"node-2","signaling":[],"generation":2,"relay_ws":url});
    keys.sign_in_place(SignedKind::Moved, &mut moved);
    let mut tampered = moved.clone();
    tampered["peer_id"] = json!("evil");
    c1.tx.send(tampered).unwrap();
    let why = next_event(&mut ev, |e| match e {
        Event::Untrusted { reason } => Some(reason.clone()),
        Event::Moved { .. } => panic!("followed a tampered moved"),
        _ => None,
    })
    .await;
    assert!(why.contains("moved"), "{why}");
    let mut foreign =
        json!({"op":"moved","peer_id":"evil","signaling":[],"generation":2,"relay_ws":url});
    other.sign_in_place(SignedKind::Moved, &mut foreign);
    c1.tx.send(foreign).unwrap();
    next_event(&mut ev, |e| match e {
        Event::Untrusted { .. } => Some(()),
        Event::Moved { .. } => panic!("followed a foreign moved"),
        _ => None,
    })
    .await;
    assert_eq!(client.transport(), Some(Transport::Ws), "still connected");

    // The signed moved is followed; an impostor answering there gets nothing and is left.
    c1.tx.send(moved).unwrap();
    next_event(&mut ev, |e| {
        matches!(e, Event::Moved { generation: 2, .. }).then_some(())
    })
    .await;
    let mut c2 = conns.recv().await.unwrap();
    assert_eq!(
        c2.query.get("token").map(String::as_str),
        Some("tok"),
        "the name token is presented"
    );
    c2.tx.send(welcome_for(&c2, &other, "node-2", 2)).unwrap();
    next_event(&mut ev, |e| {
        matches!(e, Event::Untrusted { .. }).then_some(())
    })
    .await;
    // The impostor's connection is closed with nothing sent on it (no join, no publish).
    assert!(
        tokio::time::timeout(WAIT, c2.rx.recv())
            .await
            .unwrap()
            .is_none(),
        "the client sent something to an impostor"
    );
    // The real successor: welcomed, the client re-joins with `since`.
    let mut c3 = conns.recv().await.unwrap();
    c3.tx.send(welcome_for(&c3, &keys, "node-2", 2)).unwrap();
    let join = c3.rx.recv().await.unwrap();
    assert_eq!(join, json!({"op":"join","room":"r","since":0}));
    client.close().await;
}

/// Opens a WebSocket to `url`; `Err(status)` when the upgrade is refused.
async fn try_ws(url: &str, forwarded_for: Option<&str>) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if let Some(ip) = forwarded_for {
        req.headers_mut()
            .insert("x-forwarded-for", ip.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// Waits until the node closes `ws` (a close frame or the end of the stream).
async fn closed_by_node(ws: &mut Ws) -> bool {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_and_handoff_websockets_are_limited_per_client_address() {
    // Issue 14, point 5: `/relay` and `/handoff` had no per-address limits at all (only
    // signaling had them): one address could open sockets and send messages without bound.
    // Loopback is a trusted proxy here, so each test client names its own address.
    let (node, _dir) = start_node(&[
        "--max-connections-per-address",
        "2",
        "--address-rate-limit",
        "5",
        "--address-rate-burst",
        "10",
        "--proxied",
    ])
    .await;
    // Handoff connections are held here (as a predecessor driver would hold them).
    let (held_tx, mut held) = tokio::sync::mpsc::channel(64);
    node.shared().handoff.set(held_tx);
    tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Some(c) = held.recv().await {
            keep.push(c);
        }
    });
    let port = node.local_addr().port();
    for path in ["relay?client=a", "handoff?peer=ouroboros-mallory"] {
        let url = format!("ws://127.0.0.1:{port}/{path}");
        let mut a1 = try_ws(&url, Some("198.51.100.7")).await.unwrap();
        let _a2 = try_ws(&url, Some("198.51.100.7")).await.unwrap();
        assert_eq!(
            try_ws(&url, Some("198.51.100.7")).await.err(),
            Some(429),
            "{path}: a third socket from one address"
        );
        // Another address is not affected, and a closed socket frees its place.
        let _b = try_ws(&url, Some("203.0.113.9")).await.unwrap();
        drop(a1.close(None).await);
        let mut freed = None;
        for _ in 0..100 {
            if let Ok(ws) = try_ws(&url, Some("198.51.100.7")).await {
                freed = Some(ws);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut a3 = freed.unwrap_or_else(|| panic!("{path}: the closed socket's place"));
        // More messages than the address's burst: the node closes the socket.
        for i in 0..40 {
            let frame = if path.starts_with("relay") {
                Message::text(json!({"op":"join","room":format!("r{i}")}).to_string())
            } else {
                Message::binary(b"not a handoff message".to_vec())
            };
            if a3.send(frame).await.is_err() {
                break;
            }
        }
        assert!(
            closed_by_node(&mut a3).await,
            "{path}: closed over the rate"
        );
    }
}
