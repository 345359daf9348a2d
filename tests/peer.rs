//! Rust ↔ Rust over our signaling server (`ouroboros signal --port 0`, spawned per test):
//! every serialization ordered and unordered, big messages, flushed close, many connections
//! at once, EXPIRE / ID-TAKEN as typed errors, and the signaling client's reconnect.
//!
//! `PEER_TEST_SERVER=reference` runs the same tests against the reference `peer` npm server
//! (tests/js/node_modules) instead.

mod support;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use ouroboros::peer::{
    ConnectOptions, ConnectionError, Peer, PeerConfig, PeerError, PeerEvent, Serialization, Value,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::timeout;

const KEY: &str = "testkey";
const PATH: &str = "/p2p/";

struct Server {
    _child: Child,
    port: u16,
}

async fn start_server() -> Server {
    start_server_with(&[]).await
}

/// Our server (or the reference one, see `start_server`) with extra `ouroboros signal` flags.
async fn start_server_with(extra: &[&str]) -> Server {
    ouroboros::install_crypto_provider();
    let reference = std::env::var("PEER_TEST_SERVER").as_deref() == Ok("reference");
    let mut cmd = if reference {
        support::reference_command(&["--key", KEY, "--path", PATH, "--expire_timeout", "1000"])
    } else {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ouroboros"));
        c.env("RUST_LOG", "warn")
            .args(["signal", "--port", "0", "--host", "127.0.0.1", "--key", KEY])
            .args(["--path", PATH, "--expire-timeout", "1000"])
            .args(extra);
        c
    };
    cmd.stderr(Stdio::inherit());
    let (child, port) = support::spawn_listening(cmd, Duration::from_secs(20)).await;
    Server {
        _child: child,
        port,
    }
}

fn config(port: u16, id: Option<&str>) -> PeerConfig {
    let mut c = PeerConfig::new("127.0.0.1", port);
    c.key = KEY.into();
    c.path = PATH.into();
    c.id = id.map(str::to_string);
    c.udp_addrs = vec!["127.0.0.1:0".into()];
    c.connect_timeout = Duration::from_secs(15);
    c
}

/// Accepts every connection and echoes it.
fn spawn_echo(peer: Peer) {
    tokio::spawn(async move {
        while let Some(conn) = peer.accept().await {
            tokio::spawn(async move {
                let (tx, mut rx) = conn.split();
                while let Some(Ok(v)) = rx.recv().await {
                    if tx.send(&v).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn pattern(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>())
}

fn s(x: &str) -> Value {
    Value::Str(x.into())
}

fn sample_values(ser: Serialization) -> Vec<Value> {
    let map = Value::Map(vec![
        (s("a"), Value::Int(1)),
        (s("text"), s("héllo ☃ 𝄞")),
        (
            s("list"),
            Value::Array(vec![Value::Int(-33), Value::Bool(true), Value::Null]),
        ),
        (s("big"), Value::Int(1 << 40)),
        (s("pi"), Value::Float(3.25)),
    ]);
    match ser {
        Serialization::Raw => vec![s("text frame"), Value::Bin(pattern(1000)), s("")],
        Serialization::Json => vec![map, s("plain"), Value::Int(42), Value::Array(vec![])],
        _ => vec![
            map,
            s(&"x".repeat(40_000)),
            Value::Int(-1),
            Value::Bin(pattern(4)),
            Value::Bin(pattern(100_000)),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_serialization_ordered_and_unordered() {
    let srv = start_server().await;
    let echo = Peer::open(config(srv.port, Some("echo"))).await.unwrap();
    assert_eq!(echo.id(), "echo");
    spawn_echo(echo.clone());
    // No id configured: fetched from {path}{key}/id.
    let client = Peer::open(config(srv.port, None)).await.unwrap();
    assert!(!client.id().is_empty());
    for ser in [
        Serialization::Binary,
        Serialization::BinaryUtf8,
        Serialization::Json,
        Serialization::Raw,
        Serialization::MsgPack,
    ] {
        for reliable in [true, false] {
            let opts = ConnectOptions {
                label: Some(format!("{ser:?}-{reliable}")),
                serialization: ser,
                reliable,
                metadata: Some(serde_json::json!({"case": format!("{ser:?}")})),
            };
            let mut conn = client.connect("echo", opts).await.unwrap();
            assert!(conn.connection_id().starts_with("dc_"));
            assert_eq!(conn.peer(), "echo");
            assert_eq!(conn.serialization(), ser);
            // Our SDP carries `a=tool:ouroboros`, so the large send window applies.
            assert!(conn.remote_is_ouroboros());
            for v in sample_values(ser) {
                conn.send(&v).await.unwrap();
                let got = timeout(Duration::from_secs(10), conn.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{ser:?} reliable={reliable}: no echo"))
                    .expect("open")
                    .expect("decodes");
                assert_eq!(got, v, "{ser:?} reliable={reliable}");
            }
            conn.close(false).await;
        }
    }
    client.close().await;
    echo.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_messages_both_ways() {
    let srv = start_server().await;
    let echo = Peer::open(config(srv.port, Some("bigecho"))).await.unwrap();
    spawn_echo(echo.clone());
    let client = Peer::open(config(srv.port, None)).await.unwrap();
    for (ser, size) in [
        (Serialization::Binary, 8 << 20),
        (Serialization::MsgPack, 8 << 20),
        (Serialization::Raw, 256 << 10),
    ] {
        let opts = ConnectOptions {
            serialization: ser,
            reliable: true,
            ..Default::default()
        };
        let mut conn = client.connect("bigecho", opts).await.unwrap();
        let v = Value::Bin(pattern(size));
        conn.send(&v).await.unwrap();
        let got = timeout(Duration::from_secs(60), conn.recv())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert!(got == v, "{ser:?} {size} bytes differ");
        conn.close(true).await;
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushed_close_delivers_everything_first() {
    let srv = start_server().await;
    let sink = Peer::open(config(srv.port, Some("sink"))).await.unwrap();
    let client = Peer::open(config(srv.port, None)).await.unwrap();
    for ser in [
        Serialization::Binary,
        Serialization::Json,
        Serialization::MsgPack,
        Serialization::Raw,
    ] {
        let opts = ConnectOptions {
            serialization: ser,
            reliable: true,
            ..Default::default()
        };
        let sender = client.connect("sink", opts);
        let (conn, accepted) = tokio::join!(sender, sink.accept());
        let conn = conn.unwrap();
        let mut accepted = accepted.unwrap();
        let n = 300;
        let counter = tokio::spawn(async move {
            let mut count = 0;
            while let Some(item) = accepted.recv().await {
                item.unwrap();
                count += 1;
            }
            count
        });
        for i in 0..n {
            conn.send(&s(&format!("{i:05}{}", "p".repeat(2000))))
                .await
                .unwrap();
        }
        let started = std::time::Instant::now();
        conn.close(true).await;
        // The receiver saw every message, then the close (its recv ended by itself).
        let count = timeout(Duration::from_secs(10), counter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(count, n, "{ser:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{ser:?}: flushed close hit its timeout"
        );
    }
    client.close().await;
    sink.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_at_once_and_remote_close() {
    let srv = start_server().await;
    let echo = Peer::open(config(srv.port, Some("manyecho")))
        .await
        .unwrap();
    spawn_echo(echo.clone());
    let client = Peer::open(config(srv.port, None)).await.unwrap();
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let client = client.clone();
        let ok = ok.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = client
                .connect("manyecho", ConnectOptions::default())
                .await
                .unwrap();
            let v = Value::Int(i);
            conn.send(&v).await.unwrap();
            let got = timeout(Duration::from_secs(10), conn.recv()).await.unwrap();
            assert_eq!(got, Some(Ok(v)));
            ok.fetch_add(1, Ordering::SeqCst);
            conn
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await.unwrap());
    }
    assert_eq!(ok.load(Ordering::SeqCst), 12);
    // Closing the echo peer closes every connection: recv ends, send fails.
    echo.close().await;
    for mut c in conns {
        let end = timeout(Duration::from_secs(10), c.recv()).await.unwrap();
        assert!(end.is_none(), "{end:?}");
        assert_eq!(
            c.send(&Value::Null).await.unwrap_err(),
            ConnectionError::Closed
        );
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors_expire_and_id_taken() {
    let srv = start_server().await;
    let a = Peer::open(config(srv.port, Some("taken"))).await.unwrap();
    let err = Peer::open(config(srv.port, Some("taken")))
        .await
        .unwrap_err();
    assert_eq!(err, PeerError::IdTaken);
    let mut bad = config(srv.port, Some("x"));
    bad.key = "wrongkey".into();
    assert_eq!(
        Peer::open(bad).await.unwrap_err(),
        PeerError::Server("Invalid key provided".into())
    );
    assert!(matches!(
        Peer::open(config(srv.port, Some("bad id!"))).await,
        Err(PeerError::InvalidId(_))
    ));
    let mut events = a.events();
    let err = a
        .connect("nobody-here", ConnectOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err, PeerError::PeerUnavailable("nobody-here".into()));
    let ev = timeout(Duration::from_secs(5), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        PeerEvent::Error(PeerError::PeerUnavailable("nobody-here".into()))
    );
    a.close().await;
}

/// A TCP proxy whose connections can all be cut at once.
async fn start_proxy(upstream: u16) -> (u16, tokio::sync::watch::Sender<u64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let mut cut = cut_rx.clone();
            cut.mark_unchanged();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut.changed() => {}
                }
            });
        }
    });
    (port, cut_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signaling_reconnects_with_the_same_id() {
    let srv = start_server().await;
    let (proxy_port, cut) = start_proxy(srv.port).await;
    let mut cfg = config(proxy_port, Some("phoenix"));
    cfg.max_reconnect_delay = Duration::from_millis(500);
    let phoenix = Peer::open(cfg).await.unwrap();
    spawn_echo(phoenix.clone());
    let mut events = phoenix.events();
    let client = Peer::open(config(srv.port, None)).await.unwrap();
    let mut before = client
        .connect("phoenix", ConnectOptions::default())
        .await
        .unwrap();

    cut.send(1).unwrap();
    let mut seen = Vec::new();
    timeout(Duration::from_secs(15), async {
        while let Ok(ev) = events.recv().await {
            seen.push(ev.clone());
            if ev == PeerEvent::Reconnected {
                break;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no Reconnected; events {seen:?}"));
    assert!(seen.contains(&PeerEvent::Disconnected), "{seen:?}");
    assert_eq!(phoenix.id(), "phoenix");

    // The open connection survived the signaling outage...
    before.send(&s("still")).await.unwrap();
    assert_eq!(
        timeout(Duration::from_secs(5), before.recv())
            .await
            .unwrap(),
        Some(Ok(s("still")))
    );
    // ...and the re-registered id accepts new connections.
    let mut after = timeout(
        Duration::from_secs(20),
        client.connect("phoenix", ConnectOptions::default()),
    )
    .await
    .expect("connect after reconnect in time")
    .unwrap();
    after.send(&Value::Int(7)).await.unwrap();
    assert_eq!(
        timeout(Duration::from_secs(5), after.recv()).await.unwrap(),
        Some(Ok(Value::Int(7)))
    );
    client.close().await;
    phoenix.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_bounds_the_sender() {
    let srv = start_server().await;
    let sink = Peer::open(config(srv.port, Some("slowsink")))
        .await
        .unwrap();
    let client = Peer::open(config(srv.port, None)).await.unwrap();
    let opts = ConnectOptions {
        serialization: Serialization::Raw,
        reliable: true,
        ..Default::default()
    };
    let (conn, accepted) = tokio::join!(client.connect("slowsink", opts), sink.accept());
    let conn = conn.unwrap();
    let mut accepted = accepted.unwrap(); // never read until the end
    let msg = Value::Bin(pattern(64 * 1024));
    let mut sent = 0usize;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match conn.sender().try_send(&msg) {
            Ok(()) => sent += 64 * 1024,
            Err(ConnectionError::Full) => {
                // Full may be transient while the remote still drains into its buffers: wait a
                // little and retry until it stays full.
                tokio::time::sleep(Duration::from_millis(200)).await;
                if conn.sender().try_send(&msg) == Err(ConnectionError::Full) {
                    break;
                }
                sent += 64 * 1024;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never full after {sent} bytes"
        );
    }
    // Bounded: our 8 MiB send queue, plus what the receiving side holds before the reader
    // stops polling (webrtc's 256-message channel event queue = 16 MiB of 64 KiB messages,
    // the SCTP receive window, our 32-message decoded queue). Measured: ~45 MB.
    assert!(sent >= 8 << 20, "full too early: {sent}");
    assert!(sent <= 64 << 20, "memory grew to {sent} bytes");
    // `send` waits instead of failing, and everything arrives once the receiver reads.
    let waiting = tokio::spawn({
        let tx = conn.sender();
        let msg = msg.clone();
        async move { tx.send(&msg).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "send did not wait for room");
    let expected = sent / (64 * 1024) + 1;
    for i in 0..expected {
        let got = timeout(Duration::from_secs(20), accepted.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {expected} missing"));
        assert_eq!(got, Some(Ok(msg.clone())));
    }
    waiting.await.unwrap().unwrap();
    client.close().await;
    sink.close().await;
}

/// `PeerConfig::send_high_water` bounds what a connection queues towards a receiver that does
/// not read: once `try_send` stays `Full`, the sender holds at most the high-water mark plus
/// what SCTP has in flight (the native window). With peerjs's default it held ~8 MiB; the node
/// sets 1 MiB (issue 14, point 3: memory outside the budget).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_send_high_water_bounds_what_the_sender_queues() {
    let srv = start_server().await;
    let sink = Peer::open(config(srv.port, Some("slowsink2")))
        .await
        .unwrap();
    let mut cfg = config(srv.port, None);
    cfg.send_high_water = ouroboros::peer::NODE_SEND_HIGH_WATER;
    let client = Peer::open(cfg).await.unwrap();
    let opts = ConnectOptions {
        serialization: Serialization::Raw,
        reliable: true,
        ..Default::default()
    };
    let (conn, accepted) = tokio::join!(client.connect("slowsink2", opts), sink.accept());
    let conn = conn.unwrap();
    let _accepted = accepted.unwrap(); // never read
    let msg = Value::Bin(pattern(64 * 1024));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut max_buffered = 0;
    loop {
        match conn.sender().try_send(&msg) {
            Ok(()) => {}
            Err(ConnectionError::Full) => {
                max_buffered = max_buffered.max(conn.sender().buffered_amount().await);
                tokio::time::sleep(Duration::from_millis(200)).await;
                if conn.sender().try_send(&msg) == Err(ConnectionError::Full) {
                    break;
                }
            }
            Err(e) => panic!("{e}"),
        }
        assert!(std::time::Instant::now() < deadline, "never full");
    }
    let buffered = conn.sender().buffered_amount().await.max(max_buffered);
    // The high-water mark, one message over it, and SCTP's in-flight window (256 KiB towards
    // another Ouroboros peer) with room for its own accounting.
    let bound = ouroboros::peer::NODE_SEND_HIGH_WATER + 64 * 1024 + 512 * 1024;
    assert!(
        buffered <= bound,
        "the sender holds {buffered} bytes, more than {bound}"
    );
    assert!(buffered >= 512 * 1024, "full too early: {buffered}");
    client.close().await;
    sink.close().await;
}

/// `secure: true` end to end: id fetched over HTTPS, signaling over WSS (a server with a
/// private CA, trusted through `tls_root_pem`), a DataConnection through it. Without the
/// CA the certificate is refused, so the check is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_signaling_with_a_private_ca() {
    if std::env::var("PEER_TEST_SERVER").as_deref() == Ok("reference") {
        return; // the reference server is started without TLS here
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let cert = dir.join("test-server.pem");
    let key = dir.join("test-server.key");
    let srv = start_server_with(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let ca = std::fs::read_to_string(dir.join("test-ca.pem")).unwrap();
    let secure = |id: Option<&str>| {
        let mut c = config(srv.port, id);
        c.host = "localhost".into();
        c.secure = true;
        c.tls_root_pem = Some(ca.clone());
        c
    };
    let echo = Peer::open(secure(Some("tls-echo"))).await.unwrap();
    spawn_echo(echo.clone());
    // No id: fetched from https://localhost:PORT/p2p/testkey/id.
    let client = Peer::open(secure(None)).await.unwrap();
    assert!(!client.id().is_empty());
    let opts = ConnectOptions {
        serialization: Serialization::Json,
        ..Default::default()
    };
    let mut conn = client.connect("tls-echo", opts).await.unwrap();
    let v = Value::from_json(serde_json::json!({"over": "wss"}));
    conn.send(&v).await.unwrap();
    let got = timeout(Duration::from_secs(10), conn.recv())
        .await
        .expect("echo in time")
        .expect("open")
        .expect("decodes");
    assert_eq!(got, v);
    conn.close(false).await;
    client.close().await;

    // Without the private CA: the id fetch (HTTPS) and the WebSocket (WSS) both refuse
    // the certificate.
    let mut untrusted = secure(None);
    untrusted.tls_root_pem = None;
    let err = Peer::open(untrusted.clone()).await.unwrap_err();
    assert!(matches!(err, PeerError::IdFetch(_)), "{err:?}");
    untrusted.id = Some("tls-untrusted".into());
    untrusted.reconnect = false;
    let err = Peer::open(untrusted).await.unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    // A PEM without certificates is a configuration error.
    let mut bad = secure(Some("tls-bad"));
    bad.tls_root_pem = Some("not a pem".into());
    assert!(matches!(
        Peer::open(bad).await.unwrap_err(),
        PeerError::InvalidConfig(_)
    ));
    echo.close().await;
}

/// The handoff's `raw` framing over a real DataConnection: a 700 KiB handoff message goes
/// as `OHBF` fragments within the 256 KiB SCTP message limit and comes back whole; a
/// default-size chunk goes as one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoff_raw_frames_cross_a_real_channel() {
    use ouroboros::handoff::{Defragmenter, HandoffConfig, Message, Sealed, sha256_hex, to_values};
    let srv = start_server().await;
    let echo = Peer::open(config(srv.port, Some("raw-echo")))
        .await
        .unwrap();
    spawn_echo(echo.clone());
    let client = Peer::open(config(srv.port, None)).await.unwrap();
    let opts = ConnectOptions {
        serialization: Serialization::Raw,
        ..Default::default()
    };
    let mut conn = client.connect("raw-echo", opts).await.unwrap();
    for len in [HandoffConfig::default().chunk_size, 700 * 1024] {
        let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        let m = Sealed::from(Message::Chunk {
            session: 1,
            index: 0,
            sha256: sha256_hex(&data),
            data,
        });
        let frames = to_values(Serialization::Raw, &m);
        assert_eq!(frames.len(), if len > 300 * 1024 { 3 } else { 1 });
        for f in &frames {
            conn.send(f).await.unwrap();
        }
        let mut defrag = Defragmenter::default();
        let mut got = None;
        while got.is_none() {
            let v = timeout(Duration::from_secs(10), conn.recv())
                .await
                .expect("echo in time")
                .expect("open")
                .expect("decodes");
            got = defrag.push(v).unwrap();
        }
        assert_eq!(got, Some(m), "{len} bytes");
    }
    conn.close(false).await;
    client.close().await;
    echo.close().await;
}

/// The pump's own window (what a browser remote gets) under webrtc's larger limit: a
/// 1 MiB message and many small ones still flow, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_send_window_still_delivers_everything() {
    let srv = start_server().await;
    let gated = |id: Option<&str>| {
        let mut c = config(srv.port, id);
        // Ouroboros remotes get 16 KiB held by the pump, below webrtc's 64 KiB limit.
        c.native_send_window = 16 * 1024;
        c.send_window = 64 * 1024;
        c
    };
    let echo = Peer::open(gated(Some("gated-echo"))).await.unwrap();
    spawn_echo(echo.clone());
    let client = Peer::open(gated(None)).await.unwrap();
    let mut conn = client
        .connect("gated-echo", ConnectOptions::default())
        .await
        .unwrap();
    let big = Value::Bin(Bytes::from(vec![7u8; 1 << 20]));
    conn.send(&big).await.unwrap();
    for i in 0..200 {
        conn.send(&Value::Int(i)).await.unwrap();
    }
    let got = timeout(Duration::from_secs(20), conn.recv())
        .await
        .expect("1 MiB echo in time")
        .unwrap()
        .unwrap();
    assert_eq!(got, big);
    for i in 0..200 {
        let got = timeout(Duration::from_secs(10), conn.recv())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(got, Value::Int(i));
    }
    conn.close(false).await;
    client.close().await;
    echo.close().await;
}

/// Issue 14, point 4: an OFFER flood makes at most the configured number of
/// PeerConnections (in total and per remote peer); every refused OFFER gets `EXPIRE` with
/// the reason, and a real peer is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_flood_is_capped_and_refused_with_expire() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    if std::env::var("PEER_TEST_SERVER").as_deref() == Ok("reference") {
        return; // the flood speaks to our server's port directly
    }
    let srv = start_server_with(&["--address-rate-limit", "0"]).await;
    let mut cfg = config(srv.port, Some("capped"));
    cfg.max_inbound_negotiations = 16;
    cfg.max_inbound_negotiations_per_peer = 2;
    let node = Peer::open(cfg).await.unwrap();
    spawn_echo(node.clone());
    let sdp = "v=0\r\no=- 5813279395958358117 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Zs4l\r\na=ice-pwd:7W5Wz1bVaXxY2Zo3J0cHvGhB\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 3F:2A:91:0C:7D:5E:4B:88:19:A6:E2:3C:55:0D:9B:71:C4:60:2F:8E:13:D7:A5:B9:6C:40:F1:0E:97:2B:DA:34\r\n\
a=setup:actpass\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";
    let mut floods = Vec::new();
    for i in 0..4 {
        let url = format!(
            "ws://127.0.0.1:{}{PATH}peerjs?key={KEY}&id=flood{i}&token=t",
            srv.port
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let open = ws.next().await.unwrap().unwrap();
        assert_eq!(open.into_text().unwrap().as_str(), r#"{"type":"OPEN"}"#);
        for n in 0..10 {
            let offer = serde_json::json!({
                "type": "OFFER", "dst": "capped",
                "payload": {"sdp": {"sdp": sdp, "type": "offer"}, "type": "data",
                    "connectionId": format!("dc_f{i}_{n}"), "label": "x", "reliable": true,
                    "serialization": "json"},
            });
            ws.send(Message::text(offer.to_string())).await.unwrap();
        }
        floods.push(ws);
    }
    // Each flooder gets EXPIRE for its 8 OFFERs over the per-peer cap of 2.
    for (i, ws) in floods.iter_mut().enumerate() {
        let mut refused = 0;
        timeout(Duration::from_secs(20), async {
            while refused < 8 {
                let m = ws.next().await.unwrap().unwrap();
                let v: serde_json::Value =
                    serde_json::from_str(m.into_text().unwrap().as_str()).unwrap();
                if v["type"] == "EXPIRE" {
                    assert_eq!(v["src"], "capped");
                    assert!(
                        v["payload"]["msg"]
                            .as_str()
                            .unwrap()
                            .contains("too many connections being negotiated"),
                        "{v}"
                    );
                    assert!(
                        v["payload"]["connectionId"]
                            .as_str()
                            .unwrap()
                            .starts_with(&format!("dc_f{i}_"))
                    );
                    refused += 1;
                }
            }
        })
        .await
        .expect("every OFFER over the cap is refused");
    }
    let (pending, refused) = node.inbound_negotiations();
    assert_eq!(refused, 32);
    assert!(pending <= 8, "{pending} negotiations in progress");
    // A real peer is still served while the flood's negotiations wait for their timeout.
    let client = Peer::open(config(srv.port, None)).await.unwrap();
    let mut conn = client
        .connect("capped", ConnectOptions::default())
        .await
        .unwrap();
    conn.send(&s("hello")).await.unwrap();
    let got = timeout(Duration::from_secs(10), conn.recv()).await.unwrap();
    assert_eq!(got, Some(Ok(s("hello"))));
    client.close().await;
    node.close().await;
}
