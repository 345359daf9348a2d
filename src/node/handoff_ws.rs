//! The handoff over a WebSocket on the predecessor's HTTP port (`GET /handoff`): the path
//! for two nodes with no UDP between them (two runners behind NATs, no TURN), through the
//! predecessor's tunnel. Same messages (one whole `OHB1` binary message per WebSocket binary
//! message) and the same mutual authentication as on a DataConnection (`protocol/handoff.md`).

use std::time::Duration;

use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

use super::address_gate::AddressPermit;
use crate::discovery::SignalingEndpoint;
use crate::handoff::FrameLink;

/// Path of the handoff WebSocket on a node's HTTP server.
pub const HANDOFF_WS_PATH: &str = "/handoff";
/// Largest handoff WebSocket message: a handoff message (2 MiB at most) and its header.
pub const HANDOFF_WS_MAX_MESSAGE: usize = 2 * 1024 * 1024 + 64 * 1024;
/// Handoff messages queued each way per connection.
const QUEUE: usize = 64;

/// The handoff WebSocket of the node whose HTTP server `ep` is: `ws[s]://HOST:PORT/handoff`.
pub fn handoff_ws_url(ep: &SignalingEndpoint) -> String {
    let relay = ep.relay_ws_url();
    format!(
        "{}{HANDOFF_WS_PATH}",
        relay.trim_end_matches(crate::discovery::RELAY_WS_PATH)
    )
}

/// What a WebSocket message is for the handoff.
enum Frame {
    Data(Vec<u8>),
    Skip,
    Closed,
}

/// The two WebSocket libraries' message types as the pump sees them (the server side is
/// axum's, the client side tungstenite's): binary frames carry handoff messages, a close
/// ends the link, anything else is skipped.
trait WsMessage: Send + Sized + 'static {
    fn binary(bytes: Vec<u8>) -> Self;
    fn frame(self) -> Frame;
    fn close() -> Self;
}

/// Both message types name their variants alike (`Binary(Bytes)`, `Close(Option<_>)`).
macro_rules! ws_message {
    ($t:ty) => {
        impl WsMessage for $t {
            fn binary(bytes: Vec<u8>) -> Self {
                Self::Binary(bytes.into())
            }
            fn frame(self) -> Frame {
                match self {
                    Self::Binary(b) => Frame::Data(b.to_vec()),
                    Self::Close(_) => Frame::Closed,
                    _ => Frame::Skip,
                }
            }
            fn close() -> Self {
                Self::Close(None)
            }
        }
    };
}
ws_message!(axum::extract::ws::Message);
ws_message!(tokio_tungstenite::tungstenite::Message);

/// Moves whole messages between `ws` and a [`FrameLink`]'s channels until either side ends.
fn pump<S, M, E>(
    ws: S,
    peer: String,
    metadata: serde_json::Value,
    client_addr: Option<std::net::IpAddr>,
    permit: Option<AddressPermit>,
) -> FrameLink
where
    S: Sink<M> + Stream<Item = Result<M, E>> + Send + 'static,
    M: WsMessage,
    E: std::fmt::Display + Send + 'static,
{
    let (to_ws, from_ws, close) = (M::binary, M::frame, M::close());
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    // Cancelled when the reader ends (the remote closed, or its address went over its
    // message rate): the writer then closes the socket.
    let reader_done = tokio_util::sync::CancellationToken::new();
    let done = reader_done.clone();
    tokio::spawn(async move {
        loop {
            let bytes = tokio::select! {
                b = out_rx.recv() => b,
                _ = done.cancelled() => None,
            };
            let Some(bytes) = bytes else { break };
            if sink.send(to_ws(bytes)).await.is_err() {
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = sink.send(close).await;
            let _ = sink.close().await;
        })
        .await;
    });
    tokio::spawn(async move {
        let _done = reader_done.drop_guard();
        while let Some(m) = stream.next().await {
            match m.map(from_ws) {
                Ok(Frame::Data(_))
                    if permit
                        .as_ref()
                        .is_some_and(|p| !p.take_message(std::time::Instant::now())) =>
                {
                    return;
                }
                Ok(Frame::Data(b)) => {
                    if in_tx.send(b).await.is_err() {
                        return;
                    }
                }
                Ok(Frame::Skip) => {}
                Ok(Frame::Closed) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "handoff websocket read failed");
                    return;
                }
            }
        }
    });
    FrameLink {
        peer,
        metadata,
        client_addr,
        tx: out_tx,
        rx: in_rx,
    }
}

/// The predecessor's side: an upgraded `GET /handoff?peer=ID` socket from `client_addr`
/// as a [`FrameLink`]; `permit` is its place under the per-address limits (the socket
/// closes when its address goes over its message rate).
pub fn server_link(
    ws: axum::extract::ws::WebSocket,
    peer: String,
    metadata: serde_json::Value,
    client_addr: Option<std::net::IpAddr>,
    permit: Option<AddressPermit>,
) -> FrameLink {
    pump(ws, peer, metadata, client_addr, permit)
}

/// Why [`connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffWsError {
    /// The handoff URL is not a WebSocket URL.
    #[error("{url}: {reason}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection, TLS or the WebSocket handshake failed.
    #[error("{url}: {source}")]
    Connect {
        /// The URL given.
        url: String,
        /// The failure.
        #[source]
        source: crate::tls::WebSocketConnectError,
    },
}

/// The successor's side: opens `url` (`…/handoff`) declaring `peer` (and the GitHub run id,
/// if any) and returns it as a [`FrameLink`].
///
/// # Errors
/// The WebSocket cannot be opened.
pub async fn connect(
    url: &str,
    peer: &str,
    run_id: Option<&str>,
) -> Result<FrameLink, HandoffWsError> {
    let bad_url = |reason: String| HandoffWsError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let mut u = url::Url::parse(url).map_err(|e| bad_url(e.to_string()))?;
    u.query_pairs_mut().append_pair("peer", peer);
    if let Some(run) = run_id {
        u.query_pairs_mut()
            .append_pair(crate::node::ring::RUN_ID_METADATA, run);
    }
    open_frame_link(u.as_str()).await
}

/// Opens the WebSocket at `url` (with the node's HTTP headers) as a [`FrameLink`] of whole
/// binary messages: the handoff's client side, and the replicated ring's member links.
///
/// # Errors
/// The URL is not a WebSocket URL, or the WebSocket cannot be opened.
pub async fn open_frame_link(url: &str) -> Result<FrameLink, HandoffWsError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    crate::install_crypto_provider();
    let mut req = url
        .into_client_request()
        .map_err(|e| HandoffWsError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    for (k, v) in crate::tunnel::node_http_headers() {
        if let (Ok(k), Ok(v)) = (
            tokio_tungstenite::tungstenite::http::HeaderName::try_from(k.as_str()),
            tokio_tungstenite::tungstenite::http::HeaderValue::try_from(v.as_str()),
        ) {
            req.headers_mut().insert(k, v);
        }
    }
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(HANDOFF_WS_MAX_MESSAGE))
        .max_frame_size(Some(HANDOFF_WS_MAX_MESSAGE));
    let ws = crate::tls::connect_websocket(req, Some(config), None)
        .await
        .map_err(|source| HandoffWsError::Connect {
            url: url.to_string(),
            source,
        })?;
    Ok(pump(ws, String::new(), serde_json::Value::Null, None, None))
}
