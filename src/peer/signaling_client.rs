//! The signaling client: the WebSocket from a [`Peer`](super::Peer) to a PeerJS server.
//!
//! - `GET {http}://{host}:{port}{path}{key}/id?ts=…&version=1.5.5` when no id is configured.
//! - WS `{ws}://{host}:{port}{path}peerjs?key=K&id=I&token=T&version=1.5.5`, then wait for
//!   `{"type":"OPEN"}` (`ERROR` / `ID-TAKEN` are typed errors).
//! - `{"type":"HEARTBEAT"}` every `heartbeat_interval` (5 s).
//! - Unlike peerjs, a dropped socket is reopened by itself with backoff ([`crate::retry`]:
//!   exponential, capped, full jitter), with the same id
//!   and token; messages queued meanwhile (pending negotiations) are sent after the
//!   reattach. The reference server re-attaches a same-token socket silently (no `OPEN`),
//!   so on reconnect a socket that stays open without an error counts as attached.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{PEERJS_VERSION, PeerConfig, PeerError, PeerEvent, Shared, negotiation};
use crate::retry::Backoff;

/// The WebSocket type of a signaling connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Capacity of the channel into the signaling task.
pub(crate) const OUTBOUND_QUEUE: usize = 4096;
/// Messages kept while disconnected (oldest dropped beyond this).
const PENDING_LIMIT: usize = 4096;
/// How long to wait for `OPEN` (and for the id fetch).
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// On reconnect, a socket silent this long after the upgrade counts as re-attached.
const SILENT_ATTACH: Duration = Duration::from_secs(2);
/// Largest signaling frame accepted from the server.
const MAX_FRAME: usize = 1024 * 1024;

/// A message from the server: `{type, src?, dst?, payload?}`.
#[derive(Debug, Deserialize)]
pub(crate) struct ServerMessage {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) src: Option<String>,
    #[serde(default)]
    pub(crate) payload: Option<serde_json::Value>,
}

fn host_port(config: &PeerConfig) -> String {
    if config.host.contains(':') {
        format!("[{}]:{}", config.host, config.port)
    } else {
        format!("{}:{}", config.host, config.port)
    }
}

/// The `/id` URL (peerjs adds a cache-busting `ts`).
pub(crate) fn id_url(config: &PeerConfig) -> String {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{}://{}{}{}/id?ts={}{}&version={}",
        if config.secure { "https" } else { "http" },
        host_port(config),
        config.normalized_path(),
        config.key,
        ts,
        rand::random::<u32>(),
        PEERJS_VERSION
    )
}

/// The WebSocket URL (no URL-encoding, exactly as peerjs builds it).
pub(crate) fn ws_url(config: &PeerConfig, id: &str, token: &str) -> String {
    format!(
        "{}://{}{}peerjs?key={}&id={}&token={}&version={}",
        if config.secure { "wss" } else { "ws" },
        host_port(config),
        config.normalized_path(),
        config.key,
        id,
        token,
        PEERJS_VERSION
    )
}

/// What one peer's requests to its signaling server share, built once when the peer opens:
/// the TLS configuration of `wss` (the platform's roots plus `tls_root_pem`, see
/// [`crate::tls`]) and the HTTP client of the id fetch.
#[derive(Clone)]
pub(crate) struct Transport {
    /// `None` for a plain `ws` server without extra roots.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `None` when the id is configured (nothing to fetch).
    http: Option<reqwest::Client>,
}

impl Transport {
    /// Builds the peer's TLS configuration and HTTP client (the process-wide ones unless
    /// `tls_root_pem` is set).
    pub(crate) fn new(config: &PeerConfig) -> Result<Transport, PeerError> {
        let tls_err =
            |e: crate::tls::TlsError| PeerError::InvalidConfig(format!("tls_root_pem: {e}"));
        let http_err = |e: String| PeerError::IdFetch(format!("HTTP client: {e}"));
        let tls = match (&config.tls_root_pem, config.secure) {
            (Some(pem), _) => Some(crate::tls::client_config(Some(pem)).map_err(tls_err)?),
            (None, true) => Some(
                crate::tls::client_config(None).map_err(|e| PeerError::Network(e.to_string()))?,
            ),
            (None, false) => None,
        };
        let http = match (&config.id, &tls, &config.tls_root_pem) {
            (Some(_), _, _) => None,
            (None, Some(tls), Some(_)) => Some(
                crate::tls::http_client_builder(tls)
                    .build()
                    .map_err(|e| http_err(e.to_string()))?,
            ),
            (None, _, _) => Some(crate::tls::http_client().map_err(|e| http_err(e.to_string()))?),
        };
        Ok(Transport { tls, http })
    }
}

/// Fetches a fresh id from `{path}{key}/id`.
pub(crate) async fn fetch_id(
    config: &PeerConfig,
    transport: &Transport,
) -> Result<String, PeerError> {
    let Some(http) = &transport.http else {
        return Err(PeerError::IdFetch(
            "no HTTP client (the id was configured)".into(),
        ));
    };
    let mut req = http.get(id_url(config)).timeout(OPEN_TIMEOUT);
    for (k, v) in &config.http_headers {
        req = req.header(k, v);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| PeerError::IdFetch(e.to_string()))?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(PeerError::IdFetch(format!("HTTP {}", resp.status())));
    }
    let body = resp
        .text()
        .await
        .map_err(|e| PeerError::IdFetch(e.to_string()))?;
    let id = body.trim().to_string();
    if id.is_empty() || id.len() > 256 || id.chars().any(|c| c.is_control()) {
        return Err(PeerError::IdFetch(
            "the server returned an unusable id".into(),
        ));
    }
    Ok(id)
}

async fn open_socket(
    config: &PeerConfig,
    transport: &Transport,
    id: &str,
    token: &str,
) -> Result<Ws, PeerError> {
    let url = ws_url(config, id, token);
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| PeerError::InvalidConfig(e.to_string()))?;
    for (k, v) in &config.http_headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| PeerError::InvalidConfig(format!("header {k}: {e}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| PeerError::InvalidConfig(format!("header {k}: {e}")))?;
        request.headers_mut().insert(name, value);
    }
    let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_FRAME))
        .max_frame_size(Some(MAX_FRAME));
    let connector = match (&transport.tls, config.secure) {
        (Some(tls), true) => Some(tokio_tungstenite::Connector::Rustls(tls.clone())),
        _ => None,
    };
    let fut =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config), true, connector);
    match tokio::time::timeout(OPEN_TIMEOUT, fut).await {
        Ok(Ok((ws, _resp))) => Ok(ws),
        Ok(Err(e)) => Err(PeerError::Network(e.to_string())),
        Err(_) => Err(PeerError::Timeout("WebSocket connect".into())),
    }
}

/// How an admission attempt ended.
pub(crate) struct Attached {
    pub(crate) ws: Ws,
    /// Messages that arrived instead of `OPEN` (silent same-token re-attach).
    pub(crate) early: Vec<String>,
}

/// Maps an admission reply to an error, if it is one.
fn admission_error(msg: &ServerMessage) -> Option<PeerError> {
    match msg.kind.as_str() {
        "ERROR" => Some(PeerError::Server(payload_msg(msg))),
        "ID-TAKEN" => Some(PeerError::IdTaken),
        "INVALID-KEY" => Some(PeerError::Server("Invalid key provided".into())),
        _ => None,
    }
}

fn payload_msg(msg: &ServerMessage) -> String {
    msg.payload
        .as_ref()
        .and_then(|p| p.get("msg"))
        .and_then(|m| m.as_str())
        .unwrap_or("unknown server error")
        .to_string()
}

/// Opens the socket and waits for admission. With `lenient`, silence for
/// [`SILENT_ATTACH`] (or any relayed message) also counts as attached.
async fn attach(
    config: &PeerConfig,
    transport: &Transport,
    id: &str,
    token: &str,
    lenient: bool,
) -> Result<Attached, PeerError> {
    let mut ws = open_socket(config, transport, id, token).await?;
    let wait = if lenient { SILENT_ATTACH } else { OPEN_TIMEOUT };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(n) => n,
            Err(_) if lenient => {
                return Ok(Attached {
                    ws,
                    early: Vec::new(),
                });
            }
            Err(_) => return Err(PeerError::Timeout("waiting for OPEN".into())),
        };
        match next {
            Some(Ok(Message::Text(t))) => {
                let Ok(msg) = serde_json::from_str::<ServerMessage>(&t) else {
                    continue;
                };
                if msg.kind == "OPEN" {
                    return Ok(Attached {
                        ws,
                        early: Vec::new(),
                    });
                }
                if let Some(e) = admission_error(&msg) {
                    return Err(e);
                }
                if lenient {
                    return Ok(Attached {
                        ws,
                        early: vec![t.to_string()],
                    });
                }
            }
            Some(Ok(Message::Close(_))) | None => {
                return Err(PeerError::Network("closed before OPEN".into()));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(PeerError::Network(e.to_string())),
        }
    }
}

/// First registration: resolves on `OPEN`.
pub(crate) async fn connect_and_open(
    config: &PeerConfig,
    transport: &Transport,
    id: &str,
    token: &str,
) -> Result<Ws, PeerError> {
    Ok(attach(config, transport, id, token, false).await?.ws)
}

/// First reconnect delay's ceiling (doubling up to `max_reconnect_delay`, full jitter).
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(250);

/// Whether an admission error ends the peer (vs. retry later).
fn is_fatal(e: &PeerError) -> bool {
    match e {
        PeerError::IdTaken | PeerError::InvalidConfig(_) => true,
        PeerError::Server(m) => !m.contains("concurrent user limit"),
        _ => false,
    }
}

enum End {
    /// The peer closed.
    Closed,
    /// The socket dropped.
    Lost(String),
    /// A fatal error (e.g. ID-TAKEN).
    Fatal(PeerError),
}

fn push_pending(pending: &mut VecDeque<String>, m: String) {
    if pending.len() >= PENDING_LIMIT {
        pending.pop_front();
        tracing::warn!("signaling: too many queued messages while disconnected; dropped oldest");
    }
    pending.push_back(m);
}

/// The signaling task: runs until the peer closes or a fatal error.
pub(crate) async fn run(shared: Arc<Shared>, ws: Ws, mut outbound: mpsc::Receiver<String>) {
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut current = Some(Attached {
        ws,
        early: Vec::new(),
    });
    let mut delays =
        Backoff::new(FIRST_RECONNECT_DELAY, shared.config.max_reconnect_delay).delays();
    loop {
        if let Some(att) = current.take() {
            for t in att.early {
                if let Some(e) = handle_text(&shared, &t) {
                    shared.emit(PeerEvent::Error(e));
                    break;
                }
            }
            match connected(&shared, att.ws, &mut outbound, &mut pending).await {
                End::Closed => break,
                End::Fatal(e) => {
                    shared.emit(PeerEvent::Error(e));
                    break;
                }
                End::Lost(reason) => {
                    tracing::info!(id = %shared.id, %reason, "signaling socket lost");
                    shared.emit(PeerEvent::Error(PeerError::Network(format!(
                        "Lost connection to server: {reason}"
                    ))));
                    shared.emit(PeerEvent::Disconnected);
                    if !shared.config.reconnect {
                        break;
                    }
                }
            }
        }
        // No retry bound: a peer keeps reconnecting until it is closed.
        let delay = delays
            .next_delay()
            .unwrap_or(shared.config.max_reconnect_delay);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        // Keep accepting outbound messages while waiting: they are sent after reattach.
        let cancelled = loop {
            tokio::select! {
                _ = &mut sleep => break false,
                _ = shared.closed.cancelled() => break true,
                m = outbound.recv() => match m {
                    Some(m) => push_pending(&mut pending, m),
                    None => break true,
                },
            }
        };
        if cancelled {
            break;
        }
        let result = tokio::select! {
            r = attach(&shared.config, &shared.transport, &shared.id, &shared.token, true) => r,
            _ = shared.closed.cancelled() => break,
        };
        match result {
            Ok(att) => {
                tracing::info!(id = %shared.id, "signaling socket re-attached");
                delays.reset();
                shared.emit(PeerEvent::Reconnected);
                current = Some(att);
            }
            Err(e) if is_fatal(&e) => {
                shared.emit(PeerEvent::Error(e));
                break;
            }
            Err(e) => tracing::debug!(error = %e, "signaling reconnect failed"),
        }
    }
    shared.closed.cancel();
    shared.emit(PeerEvent::Closed);
}

async fn connected(
    shared: &Arc<Shared>,
    ws: Ws,
    outbound: &mut mpsc::Receiver<String>,
    pending: &mut VecDeque<String>,
) -> End {
    let (mut sink, mut stream) = ws.split();
    while let Some(m) = pending.pop_front() {
        if let Err(e) = sink.send(Message::text(m.clone())).await {
            pending.push_front(m);
            return End::Lost(e.to_string());
        }
    }
    let period = shared.config.heartbeat_interval;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.closed.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                return End::Closed;
            }
            _ = heartbeat.tick() => {
                if let Err(e) = sink.send(Message::text(r#"{"type":"HEARTBEAT"}"#)).await {
                    return End::Lost(e.to_string());
                }
            }
            m = outbound.recv() => match m {
                Some(m) => {
                    if let Err(e) = sink.send(Message::text(m.clone())).await {
                        push_pending(pending, m);
                        return End::Lost(e.to_string());
                    }
                }
                None => return End::Closed,
            },
            f = stream.next() => match f {
                Some(Ok(Message::Text(t))) => {
                    if let Some(e) = handle_text(shared, &t) {
                        return End::Fatal(e);
                    }
                }
                Some(Ok(Message::Close(_))) | None => return End::Lost("closed by server".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return End::Lost(e.to_string()),
            },
        }
    }
}

/// Handles one server frame; returns a fatal error if the peer must stop.
fn handle_text(shared: &Arc<Shared>, text: &str) -> Option<PeerError> {
    let msg: ServerMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(error = %e, "ignoring a non-JSON signaling frame");
            return None;
        }
    };
    let src = msg.src.clone().unwrap_or_default();
    match msg.kind.as_str() {
        "OPEN" | "HEARTBEAT" => None,
        "ERROR" => {
            shared.emit(PeerEvent::Error(PeerError::Server(payload_msg(&msg))));
            None
        }
        "ID-TAKEN" => Some(PeerError::IdTaken),
        "EXPIRE" => {
            negotiation::on_expire(shared, &src, msg.payload);
            None
        }
        "LEAVE" => {
            negotiation::on_leave(shared, &src);
            None
        }
        "OFFER" => {
            negotiation::on_offer(shared, src, msg.payload);
            None
        }
        "ANSWER" | "CANDIDATE" => {
            negotiation::on_signal(shared, &src, &msg.kind, msg.payload);
            None
        }
        other => {
            tracing::debug!(kind = other, "ignoring signaling message");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_match_peerjs() {
        let mut c = PeerConfig::new("127.0.0.1", 9000);
        c.path = "myapp".into();
        assert_eq!(
            ws_url(&c, "abc", "tok"),
            "ws://127.0.0.1:9000/myapp/peerjs?key=peerjs&id=abc&token=tok&version=1.5.5"
        );
        let u = id_url(&c);
        assert!(
            u.starts_with("http://127.0.0.1:9000/myapp/peerjs/id?ts="),
            "{u}"
        );
        assert!(u.ends_with("&version=1.5.5"));
        c.secure = true;
        c.host = "::1".into();
        c.path = "/".into();
        assert!(ws_url(&c, "a", "t").starts_with("wss://[::1]:9000/peerjs?"));
    }

    #[test]
    fn admission_errors_are_typed() {
        let m: ServerMessage =
            serde_json::from_str(r#"{"type":"ERROR","payload":{"msg":"Invalid key provided"}}"#)
                .unwrap();
        assert_eq!(
            admission_error(&m),
            Some(PeerError::Server("Invalid key provided".into()))
        );
        let m: ServerMessage =
            serde_json::from_str(r#"{"type":"ID-TAKEN","payload":{"msg":"ID is taken"}}"#).unwrap();
        assert_eq!(admission_error(&m), Some(PeerError::IdTaken));
        assert!(is_fatal(&PeerError::IdTaken));
        assert!(!is_fatal(&PeerError::Server(
            "Server has reached its concurrent user limit".into()
        )));
        assert!(!is_fatal(&PeerError::Network("x".into())));
    }
}
