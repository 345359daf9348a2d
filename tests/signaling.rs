//! Black-box tests of the signaling server over real sockets: every case of the reference
//! `peer` server's own test suite (see `peerjs-protocol.md` §5) plus each of our fixes
//! (`protocol/signaling.md`). The server runs in-process on 127.0.0.1:0 through the library
//! API with short timeouts; clients are tokio-tungstenite WebSockets and raw HTTP/1.1.
//!
//! No test sleeps to synchronise: each awaits the frame or close it expects (bounded by
//! [`WAIT`]); "nothing arrives" is asserted with a short bounded wait ([`QUIET`]).
//!
//! Size: one file of PeerJS-compatibility cases (~1,200 lines) that share its helpers; each
//! test is independent and named after the behaviour it pins.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use ouroboros::signaling::{self, SignalConfig, Signaling};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::CloseFrame},
};

/// Upper bound for anything we expect to happen.
const WAIT: Duration = Duration::from_secs(10);
/// How long we watch to assert that nothing arrives.
const QUIET: Duration = Duration::from_millis(150);

const OPEN: &str = r#"{"type":"OPEN"}"#;

// ------------------------------------------------------------------------------- helpers

/// An in-process server.
struct Server {
    addr: SocketAddr,
    path: String,
    scheme: &'static str,
    signaling: Signaling,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), signaling::SignalError>>>,
}

/// Test defaults: ephemeral port, no rate limit, short timeouts left to each test.
fn config() -> SignalConfig {
    SignalConfig {
        port: 0,
        rate: None,
        ..SignalConfig::default()
    }
}

async fn start(config: SignalConfig) -> Server {
    ouroboros::install_crypto_provider();
    let signaling = Signaling::new(config.clone());
    let listener = signaling::bind(&config).await.expect("bind");
    let addr = listener.local_addr();
    let scheme = if listener.is_tls() { "https" } else { "http" };
    let (stop, stopped) = oneshot::channel::<()>();
    let s = signaling.clone();
    let router = signaling.router();
    let task = tokio::spawn(async move {
        s.serve(listener, router, async {
            let _ = stopped.await;
        })
        .await
    });
    Server {
        addr,
        path: signaling.config().path.clone(),
        scheme,
        signaling,
        stop: Some(stop),
        task: Some(task),
    }
}

impl Server {
    fn ws_url(&self, query: &str) -> String {
        let scheme = if self.scheme == "https" { "wss" } else { "ws" };
        format!("{scheme}://{}{}peerjs{query}", self.addr, self.path)
    }

    /// Opens a WebSocket with a raw query string (e.g. `?key=peerjs&id=a&token=t`).
    async fn raw(&self, query: &str) -> Client {
        let (ws, _) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.ws_url(query)))
                .await
                .expect("connect timed out")
                .expect("connect");
        Client { ws }
    }

    /// Connects `id` with `token` and key `peerjs`, expecting `OPEN`.
    async fn join(&self, id: &str, token: &str) -> Client {
        self.join_key("peerjs", id, token).await
    }

    async fn join_key(&self, key: &str, id: &str, token: &str) -> Client {
        let mut c = self
            .raw(&format!("?key={key}&id={id}&token={token}&version=1.5.5"))
            .await;
        assert_eq!(c.recv().await, OPEN, "{id} should get OPEN");
        c
    }

    /// A plain HTTP/1.1 request; returns status, headers (lower-cased names) and body.
    async fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Http {
        let mut s = TcpStream::connect(self.addr).await.expect("tcp connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
            .await
            .expect("http timed out")
            .expect("read");
        let text = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("header end");
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Http {
            status,
            headers,
            body: body.to_string(),
        }
    }

    /// Triggers graceful shutdown and waits for `serve` to return.
    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("serve did not return after shutdown")
                .expect("serve task")
                .expect("serve");
        }
    }
}

struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a client observes.
#[derive(Debug, PartialEq)]
enum Event {
    Text(String),
    /// Close frame code (None: no status code) — or the stream ended.
    Closed(Option<u16>),
}

struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.expect("send");
    }

    /// The next text frame or close; pings/pongs are skipped.
    async fn event(&mut self) -> Event {
        loop {
            let next = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("nothing arrived in time");
            match next {
                Some(Ok(Message::Text(t))) => return Event::Text(t.to_string()),
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(frame.map(|f: CloseFrame| u16::from(f.code)));
                }
                Some(Ok(Message::Binary(b))) => panic!("unexpected binary frame {b:?}"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Event::Closed(None),
            }
        }
    }

    /// The next text frame (panics on close).
    async fn recv(&mut self) -> String {
        match self.event().await {
            Event::Text(t) => t,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame as JSON.
    async fn recv_json(&mut self) -> Value {
        serde_json::from_str(&self.recv().await).expect("JSON frame")
    }

    /// Expects a close (after any frames already checked); returns its code.
    async fn closed(&mut self) -> Option<u16> {
        match self.event().await {
            Event::Closed(code) => code,
            other => panic!("expected close, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives within [`QUIET`].
    async fn quiet(&mut self) {
        if let Ok(next) = tokio::time::timeout(QUIET, self.ws.next()).await {
            panic!("expected nothing, got {next:?}");
        }
    }

    /// Waits until the server has handled every frame sent so far: frames of one socket
    /// are handled in order, so the pong to a ping sent now comes after them. Fails if a
    /// text frame arrives first.
    async fn sync(&mut self) {
        self.ws
            .send(Message::Ping(b"sync".to_vec().into()))
            .await
            .expect("ping");
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no pong in time")
            {
                Some(Ok(Message::Pong(p))) if &p[..] == b"sync" => return,
                Some(Ok(Message::Pong(_) | Message::Ping(_))) => continue,
                other => panic!("expected pong, got {other:?}"),
            }
        }
    }

    /// Closes from the client side and waits for the server's acknowledgement.
    async fn close(mut self) {
        let _ = self.ws.close(None).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }
}

/// `{"type":"ERROR","payload":{"msg":<msg>}}` with the reference's key order.
fn error(msg: &str) -> String {
    format!(
        r#"{{"type":"ERROR","payload":{{"msg":{}}}}}"#,
        Value::from(msg)
    )
}

// ------------------------------------------------------------------- HTTP API and CORS

#[tokio::test]
async fn http_info_id_and_peers() {
    let s = start(SignalConfig {
        path: "/myapp/".into(),
        key: "k1".into(),
        ..config()
    })
    .await;
    for path in ["/myapp/", "/myapp"] {
        let r = s.http("GET", path, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("application/json; charset=utf-8")
        );
        assert_eq!(r.body, signaling::INFO_JSON);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["name"], "PeerJS Server");
    }
    // /id: any key works (as the reference), text/html, a UUID v4.
    for key in ["k1", "whatever"] {
        let r = s
            .http("GET", &format!("/myapp/{key}/id?ts=1&version=1.5.5"), &[])
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let id = uuid::Uuid::parse_str(&r.body).expect("uuid");
        assert_eq!(id.get_version_num(), 4);
        assert_eq!(r.body.len(), 36);
    }
    // /peers without --allow-discovery: 401.
    let r = s.http("GET", "/myapp/k1/peers", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (401, "Unauthorized"));
    // Unknown path: Express-style 404.
    let r = s.http("GET", "/myapp/k1/nothing", &[]).await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("Cannot GET /myapp/k1/nothing"));
}

#[tokio::test]
async fn peers_lists_ids_with_discovery() {
    let s = start(SignalConfig {
        allow_discovery: true,
        ..config()
    })
    .await;
    let r = s.http("GET", "/peerjs/peers", &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
    let _a = s.join("alice", "t").await;
    let _b = s.join("bob", "t").await;
    let r = s.http("GET", "/peerjs/peers", &[]).await;
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let mut ids: Vec<String> = serde_json::from_str(&r.body).unwrap();
    ids.sort();
    assert_eq!(ids, ["alice", "bob"]);
}

#[tokio::test]
async fn cors_reflects_any_origin_by_default() {
    let s = start(config()).await;
    let origin = "http://random-origin.example:1234";
    let r = s.http("GET", "/peerjs/id", &[("Origin", origin)]).await;
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    assert_eq!(r.header("vary"), Some("Origin"));
    // No Origin: no ACAO, still Vary.
    let r = s.http("GET", "/peerjs/id", &[]).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
    // Preflight.
    let r = s
        .http(
            "OPTIONS",
            "/peerjs/id",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "GET"),
                ("Access-Control-Request-Headers", "x-requested-with"),
            ],
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(origin));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET,HEAD,PUT,PATCH,POST,DELETE")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("x-requested-with")
    );
    assert_eq!(
        r.header("vary"),
        Some("Origin, Access-Control-Request-Headers")
    );
}

#[tokio::test]
async fn cors_allow_list() {
    let s = start(SignalConfig {
        cors: vec!["http://o1.example".into(), "http://o2.example".into()],
        ..config()
    })
    .await;
    for o in ["http://o1.example", "http://o2.example"] {
        let r = s.http("GET", "/peerjs/id", &[("Origin", o)]).await;
        assert_eq!(r.header("access-control-allow-origin"), Some(o));
    }
    let r = s
        .http("GET", "/peerjs/id", &[("Origin", "http://o3.example")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
    let r = s
        .http(
            "OPTIONS",
            "/peerjs/id",
            &[
                ("Origin", "http://o3.example"),
                ("Access-Control-Request-Method", "GET"),
            ],
        )
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn id_is_unused() {
    let s = start(config()).await;
    let r = s.http("GET", "/peerjs/id", &[]).await;
    let mut c = s.join(&r.body, "t").await;
    // The id it handed out is now registered; a new one differs.
    assert!(s.signaling.is_registered(&r.body));
    let r2 = s.http("GET", "/peerjs/id", &[]).await;
    assert_ne!(r.body, r2.body);
    c.quiet().await;
}

// ---------------------------------------------------------------------------- admission

#[tokio::test]
async fn websocket_path_follows_the_mount_path() {
    let s = start(config()).await;
    s.join("a", "t").await;
    let s = start(SignalConfig {
        path: "myapp".into(),
        ..config()
    })
    .await;
    assert!(s.ws_url("").ends_with("/myapp/peerjs"));
    s.join("a", "t").await;
    // /peerjs is not the socket when mounted at /myapp.
    let wrong = format!("ws://{}/peerjs?key=peerjs&id=b&token=t", s.addr);
    assert!(tokio_tungstenite::connect_async(wrong).await.is_err());
}

#[tokio::test]
async fn missing_or_empty_params_are_refused() {
    let s = start(config()).await;
    for q in [
        "",
        "?key=peerjs&id=a",
        "?key=peerjs&token=t",
        "?id=a&token=t",
        "?key=peerjs&id=&token=t",
        "?key=&id=a&token=t",
    ] {
        let mut c = s.raw(q).await;
        assert_eq!(
            c.recv().await,
            error("No id, token, or key supplied to websocket server"),
            "{q}"
        );
        assert_eq!(c.closed().await, None, "{q}");
    }
    assert_eq!(s.signaling.stats().rejected.no_params, 6);
}

#[tokio::test]
async fn wrong_key_is_refused_before_id_taken() {
    let s = start(SignalConfig {
        key: "k1".into(),
        ..config()
    })
    .await;
    let mut holder = s.join_key("k1", "a", "t").await;
    let mut c = s.raw("?key=peerjs&id=a&token=other").await;
    assert_eq!(c.recv().await, error("Invalid key provided"));
    assert_eq!(c.closed().await, None);
    holder.quiet().await;
}

#[tokio::test]
async fn id_taken_by_another_token() {
    let s = start(config()).await;
    let mut holder = s.join("a", "t1").await;
    let mut c = s.raw("?key=peerjs&id=a&token=t2").await;
    assert_eq!(
        c.recv().await,
        r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#
    );
    assert_eq!(c.closed().await, None);
    // The holder is unaffected.
    let mut b = s.join("b", "t").await;
    b.send(json!({"type": "OFFER", "dst": "a", "payload": 1}))
        .await;
    assert_eq!(
        holder.recv().await,
        r#"{"type":"OFFER","src":"b","dst":"a","payload":1}"#
    );
}

#[tokio::test]
async fn concurrent_limit_freed_on_close() {
    let s = start(SignalConfig {
        concurrent_limit: 1,
        ..config()
    })
    .await;
    let first = s.join("a", "t").await;
    let mut second = s.raw("?key=peerjs&id=b&token=t").await;
    assert_eq!(
        second.recv().await,
        error("Server has reached its concurrent user limit")
    );
    assert_eq!(second.closed().await, None);
    first.close().await;
    assert_eq!(s.signaling.stats().clients, 0);
    s.join("c", "t").await;
}

// ------------------------------------------------------------------------------- relay

#[tokio::test]
async fn relays_rebuilt_with_src_stamped() {
    let s = start(config()).await;
    let mut a = s.join("a", "ta").await;
    let mut b = s.join("b", "tb").await;
    a.send_text(r#"{"payload":{"sdp":{"type":"offer","sdp":"v=0\r\n"},"type":"data","connectionId":"dc_1"},"dst":"b","type":"OFFER","src":"forged","extra":true}"#)
        .await;
    assert_eq!(
        b.recv().await,
        r#"{"type":"OFFER","src":"a","dst":"b","payload":{"sdp":{"type":"offer","sdp":"v=0\r\n"},"type":"data","connectionId":"dc_1"}}"#
    );
    for t in ["ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"] {
        b.send(json!({"type": t, "dst": "a", "payload": {"n": t}}))
            .await;
        assert_eq!(
            a.recv().await,
            format!(r#"{{"type":"{t}","src":"b","dst":"a","payload":{{"n":"{t}"}}}}"#)
        );
    }
    // No payload: the key is left out.
    a.send(json!({"type": "CANDIDATE", "dst": "b"})).await;
    assert_eq!(
        b.recv().await,
        r#"{"type":"CANDIDATE","src":"a","dst":"b"}"#
    );
}

#[tokio::test]
async fn other_types_are_dropped_and_the_socket_stays_usable() {
    let s = start(config()).await;
    let mut a = s.join("a", "ta").await;
    let mut b = s.join("b", "tb").await;
    for t in [
        "HEARTBEAT",
        "OPEN",
        "ID-TAKEN",
        "ERROR",
        "INVALID-KEY",
        "FOO",
        "offer",
        "",
    ] {
        a.send(json!({"type": t, "dst": "b", "payload": {"dropped": t}}))
            .await;
    }
    a.send(json!({"dst": "b", "payload": "no type"})).await;
    for raw in [
        "[1,2]",
        "{}",
        "null",
        "\"s\"",
        "42",
        r#"{"type":"OFFER","dst":5}"#,
    ] {
        a.send_text(raw).await;
    }
    a.send(json!({"type": "OFFER", "dst": "b", "payload": "marker"}))
        .await;
    assert_eq!(
        b.recv().await,
        r#"{"type":"OFFER","src":"a","dst":"b","payload":"marker"}"#
    );
    b.send(json!({"type": "ANSWER", "dst": "a", "payload": "still open"}))
        .await;
    assert_eq!(
        a.recv().await,
        r#"{"type":"ANSWER","src":"b","dst":"a","payload":"still open"}"#
    );
    b.quiet().await;
}

#[tokio::test]
async fn binary_frames_carrying_json_are_handled() {
    let s = start(config()).await;
    let mut a = s.join("a", "ta").await;
    let mut b = s.join("b", "tb").await;
    a.ws.send(Message::binary(
        br#"{"type":"OFFER","dst":"b","payload":2}"#.to_vec(),
    ))
    .await
    .unwrap();
    assert_eq!(
        b.recv().await,
        r#"{"type":"OFFER","src":"a","dst":"b","payload":2}"#
    );
}

// ----------------------------------------------------------------------- queue and EXPIRE

#[tokio::test]
async fn queue_delivered_in_order_on_connect_leave_and_expire_not_queued() {
    let s = start(config()).await;
    let mut a = s.join("a", "ta").await;
    a.send(json!({"type": "OFFER", "dst": "b", "payload": 1}))
        .await;
    a.send(json!({"type": "LEAVE", "dst": "b"})).await;
    a.send(json!({"type": "EXPIRE", "dst": "b"})).await;
    a.send(json!({"type": "CANDIDATE", "dst": "b", "payload": 2}))
        .await;
    a.send(json!({"type": "CANDIDATE", "dst": "b", "payload": 3}))
        .await;
    // Frames from one socket are handled in order: once this round trip is back, the
    // queue holds everything above.
    let mut c = s.join("c", "tc").await;
    a.send(json!({"type": "OFFER", "dst": "c", "payload": "sync"}))
        .await;
    c.recv().await;
    assert_eq!(s.signaling.stats().queued_messages, 3);
    let mut b = s.join_key("peerjs", "b", "tb").await;
    assert_eq!(
        b.recv().await,
        r#"{"type":"OFFER","src":"a","dst":"b","payload":1}"#
    );
    assert_eq!(
        b.recv().await,
        r#"{"type":"CANDIDATE","src":"a","dst":"b","payload":2}"#
    );
    assert_eq!(
        b.recv().await,
        r#"{"type":"CANDIDATE","src":"a","dst":"b","payload":3}"#
    );
    b.quiet().await;
    assert_eq!(s.signaling.stats().queued_messages, 0);
}

#[tokio::test]
async fn queued_messages_expire_with_one_expire_per_destination() {
    let s = start(SignalConfig {
        expire_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut a = s.join("a", "ta").await;
    let t0 = Instant::now();
    a.send(json!({"type": "OFFER", "dst": "x", "payload": 1}))
        .await;
    a.send(json!({"type": "CANDIDATE", "dst": "x", "payload": 2}))
        .await;
    a.send(json!({"type": "OFFER", "dst": "y", "payload": 3}))
        .await;
    let mut got = vec![a.recv().await, a.recv().await];
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "EXPIRE came early: {:?}",
        t0.elapsed()
    );
    got.sort();
    assert_eq!(
        got,
        [
            r#"{"type":"EXPIRE","src":"x","dst":"a"}"#,
            r#"{"type":"EXPIRE","src":"y","dst":"a"}"#
        ]
    );
    a.quiet().await;
    // The queue is gone: x connecting later gets nothing.
    let mut x = s.join("x", "tx").await;
    x.quiet().await;
    let st = s.signaling.stats();
    assert_eq!((st.expired, st.queued_messages), (3, 0));
}

#[tokio::test]
async fn queue_survives_until_expiry() {
    // The reference's "queue survives 20 ms with expire 50 ms": a peer connecting before
    // the expiry still gets its messages.
    let s = start(SignalConfig {
        expire_timeout: Duration::from_millis(2000),
        ..config()
    })
    .await;
    let mut a = s.join("a", "ta").await;
    a.send(json!({"type": "OFFER", "dst": "late", "payload": 1}))
        .await;
    let mut c = s.join("c", "tc").await;
    a.send(json!({"type": "OFFER", "dst": "c"})).await;
    c.recv().await;
    let mut late = s.join("late", "t").await;
    assert_eq!(
        late.recv().await,
        r#"{"type":"OFFER","src":"a","dst":"late","payload":1}"#
    );
    a.quiet().await;
}

// -------------------------------------------------------------------------------- LEAVE

#[tokio::test]
async fn leave_without_dst_unregisters_the_sender() {
    let s = start(config()).await;
    let mut a = s.join("a", "ta").await;
    let mut b = s.join("b", "tb").await;
    // With dst: relayed.
    a.send(json!({"type": "LEAVE", "dst": "b"})).await;
    assert_eq!(b.recv().await, r#"{"type":"LEAVE","src":"a","dst":"b"}"#);
    // Without dst: a is unregistered, its socket stays open.
    a.send(json!({"type": "LEAVE"})).await;
    a.send(json!({"type": "HEARTBEAT"})).await;
    a.sync().await;
    assert!(!s.signaling.is_registered("a"));
    let mut a2 = s.join("a", "another-token").await;
    b.send(json!({"type": "OFFER", "dst": "a", "payload": "to a2"}))
        .await;
    assert_eq!(
        a2.recv().await,
        r#"{"type":"OFFER","src":"b","dst":"a","payload":"to a2"}"#
    );
    a.quiet().await;
}

// ---------------------------------------------------------------------------- liveness

#[tokio::test]
async fn silent_client_is_closed_after_alive_timeout() {
    let s = start(SignalConfig {
        alive_timeout: Duration::from_millis(400),
        ..config()
    })
    .await;
    let t0 = Instant::now();
    let mut silent = s.join("silent", "t").await;
    let mut beating = s.join("beating", "t").await;
    // `beating` sends HEARTBEAT every 100 ms (what a peerjs client does every 5 s) until
    // the silent one has been closed.
    let closed = async {
        let code = silent.closed().await;
        (code, t0.elapsed())
    };
    tokio::pin!(closed);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (code, after) = loop {
        tokio::select! {
            r = &mut closed => break r,
            _ = tick.tick() => beating.send(json!({"type": "HEARTBEAT"})).await,
        }
    };
    assert_eq!(code, None);
    assert!(
        after >= Duration::from_millis(400),
        "closed too early: {after:?}"
    );
    assert!(!s.signaling.is_registered("silent"));
    assert!(s.signaling.is_registered("beating"));
    assert_eq!(s.signaling.stats().closed.alive_timeout, 1);
    // The id is free again.
    s.join("silent", "new-token").await;
}

// ------------------------------------------------------------- better than the reference

#[tokio::test]
async fn same_id_and_token_reconnect_gets_open_and_replaces_the_old_socket() {
    let s = start(config()).await;
    let mut old = s.join("alice", "tok").await;
    let mut b = s.join("bob", "tb").await;
    let mut new = s.join("alice", "tok").await; // asserts OPEN
    assert_eq!(old.closed().await, Some(1000));
    b.send(json!({"type": "OFFER", "dst": "alice", "payload": "to the new socket"}))
        .await;
    assert_eq!(
        new.recv().await,
        r#"{"type":"OFFER","src":"bob","dst":"alice","payload":"to the new socket"}"#
    );
    assert_eq!(s.signaling.stats().closed.replaced, 1);
}

#[tokio::test]
async fn frame_above_the_limit_gets_error_then_close() {
    let s = start(SignalConfig {
        max_frame_size: 4096,
        ..config()
    })
    .await;
    let mut a = s.join("a", "ta").await;
    let mut b = s.join("b", "tb").await;
    // At the limit: fine.
    let fits = format!(
        r#"{{"type":"OFFER","dst":"b","payload":"{}"}}"#,
        "x".repeat(4096 - 40)
    );
    assert!(fits.len() <= 4096);
    a.send_text(&fits).await;
    assert!(b.recv().await.starts_with(r#"{"type":"OFFER","src":"a""#));
    a.send_text(&"y".repeat(5000)).await;
    assert_eq!(a.recv().await, error("Message too big (limit 4096 bytes)"));
    assert_eq!(a.closed().await, Some(1009));
    assert!(!s.signaling.is_registered("a"));
    // Others are unaffected.
    let mut c = s.join("c", "tc").await;
    c.send(json!({"type": "OFFER", "dst": "b"})).await;
    assert_eq!(b.recv().await, r#"{"type":"OFFER","src":"c","dst":"b"}"#);
}

#[tokio::test]
async fn offline_queues_are_bounded() {
    let s = start(SignalConfig {
        queues: signaling::QueueLimits {
            per_peer: 2,
            bytes_per_peer: 1 << 20,
            total: 3,
            bytes_total: 1 << 20,
        },
        ..config()
    })
    .await;
    let mut a = s.join("a", "ta").await;
    a.send(json!({"type": "OFFER", "dst": "x", "payload": 1}))
        .await;
    a.send(json!({"type": "OFFER", "dst": "x", "payload": 2}))
        .await;
    // Per-peer bound: refused at once with EXPIRE.
    a.send(json!({"type": "OFFER", "dst": "x", "payload": 3}))
        .await;
    assert_eq!(a.recv().await, r#"{"type":"EXPIRE","src":"x","dst":"a"}"#);
    a.send(json!({"type": "OFFER", "dst": "y", "payload": 4}))
        .await;
    // Total bound.
    a.send(json!({"type": "OFFER", "dst": "z", "payload": 5}))
        .await;
    assert_eq!(a.recv().await, r#"{"type":"EXPIRE","src":"z","dst":"a"}"#);
    let mut x = s.join("x", "t").await;
    assert_eq!(
        x.recv().await,
        r#"{"type":"OFFER","src":"a","dst":"x","payload":1}"#
    );
    assert_eq!(
        x.recv().await,
        r#"{"type":"OFFER","src":"a","dst":"x","payload":2}"#
    );
    x.quiet().await;
    assert_eq!(s.signaling.stats().queue_full, 2);
}

#[tokio::test]
async fn rate_limit_closes_with_error() {
    let s = start(SignalConfig {
        rate: Some(signaling::Rate {
            per_second: 1.0,
            burst: 5.0,
        }),
        ..config()
    })
    .await;
    let mut a = s.join("a", "ta").await;
    let mut b = s.join("b", "tb").await;
    for i in 0..5 {
        a.send(json!({"type": "CANDIDATE", "dst": "b", "payload": i}))
            .await;
    }
    for i in 0..5 {
        assert_eq!(b.recv_json().await["payload"], i);
    }
    a.send(json!({"type": "CANDIDATE", "dst": "b", "payload": 5}))
        .await;
    assert_eq!(a.recv().await, error("Rate limit exceeded"));
    assert_eq!(a.closed().await, Some(1008));
    b.quiet().await;
    assert_eq!(s.signaling.stats().closed.rate_limited, 1);
}

#[tokio::test]
async fn bad_ids_are_refused_with_a_clear_error() {
    let s = start(config()).await;
    let long = "x".repeat(257);
    let mut c = s.raw(&format!("?key=peerjs&id={long}&token=t")).await;
    assert_eq!(c.recv().await, error("Invalid id: longer than 256 bytes"));
    assert_eq!(c.closed().await, None);
    let mut c = s.raw("?key=peerjs&id=a%01b&token=t").await;
    assert_eq!(
        c.recv().await,
        error("Invalid id: contains control characters")
    );
    assert_eq!(c.closed().await, None);
    let mut c = s.raw(&format!("?key=peerjs&id=ok&token={long}")).await;
    assert_eq!(
        c.recv().await,
        error("Invalid token: longer than 256 bytes or contains control characters")
    );
    // 256 bytes is fine; percent-decoding as URLSearchParams does.
    s.join(&"y".repeat(256), "t").await;
    let mut sp = s.raw("?key=peerjs&id=with+space%21&token=t").await;
    assert_eq!(sp.recv().await, OPEN);
    assert!(s.signaling.is_registered("with space!"));
    // A destination that cannot be an id: EXPIRE at once, nothing queued.
    sp.send(json!({"type": "OFFER", "dst": "bad\u{1}dst"}))
        .await;
    assert_eq!(
        sp.recv_json().await,
        json!({"type": "EXPIRE", "src": "bad\u{1}dst", "dst": "with space!"})
    );
    assert_eq!(s.signaling.stats().queues, 0);
}

#[tokio::test]
async fn malformed_json_burst_closes_with_error() {
    let s = start(SignalConfig {
        malformed_limit: 2.0,
        ..config()
    })
    .await;
    let mut a = s.join("a", "ta").await;
    let mut b = s.join("b", "tb").await;
    // Malformed frames are counted but tolerated (limit + 1 in a burst)...
    for bad in ["{not json", "", "\u{0}"] {
        a.send_text(bad).await;
    }
    a.ws.send(Message::binary(vec![0xff, 0xfe])).await.unwrap();
    assert_eq!(a.recv().await, error("Too many malformed messages"));
    assert_eq!(a.closed().await, Some(1008));
    let st = s.signaling.stats();
    assert_eq!((st.malformed, st.closed.malformed), (4, 1));
    // ...and one below the burst does not close.
    let mut c = s.join("c", "tc").await;
    c.send_text("{oops").await;
    c.send(json!({"type": "OFFER", "dst": "b", "payload": "after"}))
        .await;
    assert_eq!(
        b.recv().await,
        r#"{"type":"OFFER","src":"c","dst":"b","payload":"after"}"#
    );
}

#[tokio::test]
async fn garbage_never_panics_or_harms_others() {
    let s = start(SignalConfig {
        malformed_limit: 1000.0,
        ..config()
    })
    .await;
    let mut a = s.join("a", "ta").await;
    let mut b = s.join("b", "tb").await;
    let deep = "[".repeat(10_000);
    let inputs = [
        deep.as_str(),
        r#"{"type":"OFFER","dst":"b","payload":"#,
        r#"{"type":"OFFER","dst":"b","payload":1,"payload":2}"#,
        r#"{"type":"OFFER","dst":"\ud800"}"#,
        r#"{"type":"OFFER","dst":null,"payload":{}}"#,
        r#"{"type":null}"#,
        r#"{"type":"OFFER","dst":"b","payload":1e999}"#,
        "\u{feff}{}",
        "{\"type\":\"OFFER\",\"dst\":\"b\",\"payload\":\"\\u0000\"}",
    ];
    for i in inputs {
        a.send_text(i).await;
    }
    a.ws.send(Message::Ping(vec![1, 2, 3].into()))
        .await
        .unwrap();
    a.send(json!({"type": "OFFER", "dst": "b", "payload": "alive"}))
        .await;
    // Whatever got through before (payloads are relayed verbatim, even `1e999`), the
    // marker arrives and the server still works.
    while !b.recv().await.contains(r#""payload":"alive""#) {}
    let r = s.http("GET", "/peerjs/id", &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn slow_reader_is_dropped_without_slowing_others() {
    let s = start(SignalConfig {
        write_queue: 4,
        queues: signaling::QueueLimits {
            per_peer: 2,
            ..config().queues
        },
        ..config()
    })
    .await;
    // `slow` never reads.
    let _slow = s.join("slow", "t").await;
    let flooder = s.join("flooder", "t").await;
    let mut a = s.join("a", "t").await;
    let mut b = s.join("b", "t").await;
    let payload = "p".repeat(200 * 1024);
    let frame = json!({"type": "OFFER", "dst": "slow", "payload": payload}).to_string();
    // Flood until the server gives up on `slow` and tells the flooder it left (as the
    // reference does when a send fails). Socket buffers absorb some megabytes first.
    let (mut tx, mut rx) = flooder.ws.split();
    let flood = async {
        for _ in 0..2000 {
            tx.send(Message::text(frame.clone()))
                .await
                .expect("flooder send");
        }
        panic!("slow reader was never dropped");
    };
    let bounce = tokio::select! {
        f = tokio::time::timeout(Duration::from_secs(60), rx.next()) => f.expect("no LEAVE in time"),
        _ = flood => unreachable!(),
    };
    let bounce = bounce.expect("flooder stream").expect("flooder frame");
    assert_eq!(
        bounce.into_text().unwrap().as_str(),
        r#"{"type":"LEAVE","src":"slow","dst":"flooder"}"#
    );
    assert!(!s.signaling.is_registered("slow"));
    assert_eq!(s.signaling.stats().closed.slow, 1);
    // Meanwhile, everyone else is served promptly.
    let t = Instant::now();
    a.send(json!({"type": "OFFER", "dst": "b", "payload": "fast"}))
        .await;
    assert_eq!(
        b.recv().await,
        r#"{"type":"OFFER","src":"a","dst":"b","payload":"fast"}"#
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn graceful_shutdown_closes_sockets_with_1001() {
    let mut s = start(config()).await;
    let mut a = s.join("a", "ta").await;
    let mut b = s.join("b", "tb").await;
    let stopping = async { s.shutdown().await };
    let (_, ca, cb) = tokio::join!(stopping, a.closed(), b.closed());
    assert_eq!((ca, cb), (Some(1001), Some(1001)));
    assert!(
        TcpStream::connect(s.addr).await.is_err(),
        "listener still open"
    );
}

/// A client that never finishes its request headers is disconnected after
/// `header_read_timeout` (hyper's timer); complete requests and upgraded WebSockets are not
/// affected by it.
#[tokio::test]
async fn half_sent_request_is_closed_after_the_header_read_timeout() {
    let limit = Duration::from_millis(300);
    let s = start(SignalConfig {
        header_read_timeout: Some(limit),
        ..config()
    })
    .await;
    // A WebSocket opened first stays open well past the limit.
    let mut a = s.join("a", "ta").await;

    let mut half = TcpStream::connect(s.addr).await.expect("tcp connect");
    let t = Instant::now();
    half.write_all(b"GET /peerjs/id HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, half.read_to_end(&mut buf))
        .await
        .expect("the half-sent request is still open");
    let closed_after = t.elapsed();
    // EOF, or a reset if the server closed with unread bytes; either way no response.
    assert!(
        read.is_err() || buf.is_empty() || buf.starts_with(b"HTTP/1.1 408"),
        "{buf:?}"
    );
    assert!(
        closed_after >= limit - Duration::from_millis(50),
        "{closed_after:?}"
    );
    assert!(
        closed_after < limit * 5,
        "closed only after {closed_after:?}"
    );

    // The server goes on serving, and the socket opened before is still usable.
    assert_eq!(s.http("GET", "/", &[]).await.status, 200);
    let mut b = s.join("b", "tb").await;
    b.send(json!({"type": "OFFER", "dst": "a", "payload": "after"}))
        .await;
    assert_eq!(
        a.recv().await,
        r#"{"type":"OFFER","src":"b","dst":"a","payload":"after"}"#
    );
}

#[tokio::test]
async fn local_client_relays_with_socket_clients() {
    let s = start(config()).await;
    let node = s
        .signaling
        .connect_local("node", "secret")
        .expect("register");
    assert_eq!(node.recv().await.as_deref(), Some(OPEN));
    assert_eq!(
        s.signaling.connect_local("node", "other").unwrap_err(),
        signaling::Rejection::IdTaken
    );
    let mut browser = s.join("browser", "t").await;
    browser
        .send(json!({"type": "OFFER", "dst": "node", "payload": {"sdp": 1}}))
        .await;
    assert_eq!(
        node.recv().await.as_deref(),
        Some(r#"{"type":"OFFER","src":"browser","dst":"node","payload":{"sdp":1}}"#)
    );
    node.send(r#"{"type":"ANSWER","dst":"browser","payload":{"sdp":2}}"#);
    assert_eq!(
        browser.recv().await,
        r#"{"type":"ANSWER","src":"node","dst":"browser","payload":{"sdp":2}}"#
    );
    drop(node);
    assert!(!s.signaling.is_registered("node"));
}

#[tokio::test]
async fn tls_serves_https_and_wss() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tls");
    let s = start(SignalConfig {
        tls: Some((dir.join("test-server.pem"), dir.join("test-server.key"))),
        ..config()
    })
    .await;
    assert_eq!(s.scheme, "https");
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(dir.join("test-ca.pem")).unwrap();
    for cert in ouroboros::tls::pem_certificates(&ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(tls));
    let url = format!(
        "wss://localhost:{}/peerjs?key=peerjs&id=secure&token=t",
        s.addr.port()
    );
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, true, Some(connector))
            .await
            .expect("wss connect");
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_text().unwrap().as_str(), OPEN);
    // Plain HTTP on the TLS port does not work.
    let r = tokio::time::timeout(WAIT, async {
        let mut t = TcpStream::connect(s.addr).await.unwrap();
        t.write_all(b"GET /peerjs/id HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = t.read_to_end(&mut buf).await;
        buf
    })
    .await
    .unwrap();
    assert!(!r.starts_with(b"HTTP/1.1 200"));
}

// ------------------------------------------------ per-address limits (issue 14, point 5)

impl Server {
    /// Opens a WebSocket from local address `from` (e.g. `127.0.0.2`) with extra request
    /// headers; returns the first event (OPEN, an ERROR frame, or a close).
    async fn join_from(&self, from: &str, id: &str, headers: &[(&str, &str)]) -> (Client, Event) {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{from}:0").parse().expect("address"))
            .expect("bind a loopback source address");
        let tcp = socket.connect(self.addr).await.expect("tcp connect");
        let mut req = self
            .ws_url(&format!("?key=peerjs&id={id}&token=t"))
            .into_client_request()
            .expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("connect timed out")
        .expect("connect");
        let mut c = Client { ws };
        let first = c.event().await;
        (c, first)
    }
}

const ADDRESS_LIMIT: &str =
    r#"{"type":"ERROR","payload":{"msg":"Too many connections from your address"}}"#;

fn limited(connections: usize) -> SignalConfig {
    SignalConfig {
        concurrent_limit: 10,
        per_address: signaling::AddressLimits {
            connections,
            rate: None,
        },
        ..config()
    }
}

#[tokio::test]
async fn one_address_cannot_exhaust_the_global_limit() {
    let mut s = start(limited(3)).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let (c, first) = s.join_from("127.0.0.1", &format!("a{i}"), &[]).await;
        assert_eq!(first, Event::Text(OPEN.into()));
        held.push(c);
    }
    let (mut c, first) = s.join_from("127.0.0.1", "a3", &[]).await;
    assert_eq!(first, Event::Text(ADDRESS_LIMIT.into()));
    assert_eq!(c.closed().await, None);
    // Another address still gets in: the global limit (10) was not used up by one address.
    for i in 0..3 {
        let (c, first) = s.join_from("127.0.0.2", &format!("b{i}"), &[]).await;
        assert_eq!(first, Event::Text(OPEN.into()), "b{i}");
        held.push(c);
    }
    assert_eq!(s.signaling.stats().rejected.address_limit, 1);
    // A closed socket frees its place.
    let mut first = held.remove(0);
    first.ws.close(None).await.expect("close");
    let _ = first.closed().await;
    let admitted = tokio::time::timeout(WAIT, async {
        loop {
            let (c, ev) = s.join_from("127.0.0.1", "a3", &[]).await;
            if ev == Event::Text(OPEN.into()) {
                return c;
            }
        }
    })
    .await
    .expect("the freed place is taken again");
    drop(admitted);
    s.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
    // Untrusted peer: every socket from 127.0.0.1 counts as 127.0.0.1, whatever it claims.
    let mut s = start(limited(2)).await;
    let mut held = Vec::new();
    for (i, xff) in ["192.0.2.1", "192.0.2.2"].iter().enumerate() {
        let (c, first) = s
            .join_from("127.0.0.1", &format!("u{i}"), &[("x-forwarded-for", xff)])
            .await;
        assert_eq!(first, Event::Text(OPEN.into()));
        held.push(c);
    }
    let (_, first) = s
        .join_from("127.0.0.1", "u2", &[("x-forwarded-for", "192.0.2.3")])
        .await;
    assert_eq!(first, Event::Text(ADDRESS_LIMIT.into()));
    s.shutdown().await;

    // Loopback is a trusted proxy (the tunnel agent): the forwarded address counts, the
    // right-most one that is not itself a proxy.
    let mut s = start(SignalConfig {
        trusted_proxies: signaling::Cidr::LOOPBACK.to_vec(),
        ..limited(2)
    })
    .await;
    let mut held = Vec::new();
    for (i, xff) in ["192.0.2.1", "192.0.2.2", "10.9.9.9, 192.0.2.3"]
        .iter()
        .enumerate()
    {
        let (c, first) = s
            .join_from("127.0.0.1", &format!("t{i}"), &[("x-forwarded-for", xff)])
            .await;
        assert_eq!(first, Event::Text(OPEN.into()), "{xff}");
        held.push(c);
    }
    // A client spoofing a left-hand entry is still counted by what the proxy appended.
    let (c, first) = s
        .join_from(
            "127.0.0.1",
            "t3",
            &[("x-forwarded-for", "198.51.100.1, 192.0.2.1")],
        )
        .await;
    assert_eq!(first, Event::Text(OPEN.into()));
    held.push(c);
    let (_, first) = s
        .join_from(
            "127.0.0.1",
            "t4",
            &[("x-forwarded-for", "198.51.100.2, 192.0.2.1")],
        )
        .await;
    assert_eq!(first, Event::Text(ADDRESS_LIMIT.into()));
    // A peer outside the trusted blocks is not believed: 127.0.0.2 is loopback too, so
    // use the header-less path to show the TCP address counts when there is no header.
    let (_, first) = s.join_from("127.0.0.2", "t5", &[]).await;
    assert_eq!(first, Event::Text(OPEN.into()));
    s.shutdown().await;
}

#[tokio::test]
async fn a_leave_flood_from_one_address_is_rate_limited() {
    let mut s = start(SignalConfig {
        per_address: signaling::AddressLimits {
            connections: 0,
            rate: Some(signaling::Rate {
                per_second: 5.0,
                burst: 50.0,
            }),
        },
        ..config()
    })
    .await;
    // Three sockets of one address, none over any per-client limit (config() has none),
    // send LEAVE frames to an absent peer (dropped, relayed to nobody).
    let mut socks = Vec::new();
    for i in 0..3 {
        socks.push(s.join(&format!("l{i}"), "t").await);
    }
    let mut sent = 0;
    'flood: for round in 0..100 {
        for c in socks.iter_mut() {
            if c.ws
                .send(Message::text(
                    json!({"type": "LEAVE", "dst": format!("nobody{round}")}).to_string(),
                ))
                .await
                .is_err()
            {
                break 'flood;
            }
            sent += 1;
        }
    }
    assert!(sent > 50);
    // One of them is told and closed with 1008; the limit is the address's, not a socket's.
    let mut closed = 0;
    for c in socks.iter_mut() {
        if let Ok(Event::Text(t)) = tokio::time::timeout(QUIET * 4, c.event()).await {
            assert_eq!(
                t,
                r#"{"type":"ERROR","payload":{"msg":"Rate limit exceeded"}}"#
            );
            assert_eq!(c.closed().await, Some(1008));
            closed += 1;
        }
    }
    assert!(closed >= 1, "no socket of the flooding address was closed");
    assert!(s.signaling.stats().closed.rate_limited >= 1);
    // Another address is served.
    let (_, first) = s.join_from("127.0.0.3", "other", &[]).await;
    assert_eq!(first, Event::Text(OPEN.into()));
    s.shutdown().await;
}
