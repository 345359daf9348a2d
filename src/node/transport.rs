//! The transport seam under the relay: frames in, frames out, close.
//!
//! A relay client reaches the node over a WebRTC DataChannel (a PeerJS DataConnection to the
//! node's peer id) or over a WebSocket on the node's own HTTP port (`GET /relay`,
//! `protocol/relay.md`), the path that needs no UDP and goes wherever signaling goes (a tunnel
//! included). Both enter the relay the same way ([`RelayHandle::serve_link`]): a reader task
//! feeding decoded messages to the relay task and a writer task fed by its own bounded queue.
//! Rooms, limits, acks, history, presence and `moved` never know which path a client uses;
//! only the two halves in this file do.
//!
//! [`RelayHandle::serve_link`]: super::RelayHandle

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use crate::peer::{ConnectionReceiver, ConnectionSender, Frame, Serialization, Value};
use crate::relay::Outgoing;

use super::address_gate::AddressPermit;

/// Which path a relay client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A WebRTC DataChannel (PeerJS DataConnection).
    Webrtc,
    /// The relay WebSocket on the node's HTTP port (`GET /relay`).
    Ws,
}

impl Transport {
    /// The label in `/status.json`, `/metrics` and logs: `webrtc` or `ws`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Webrtc => "webrtc",
            Transport::Ws => "ws",
        }
    }
}

/// One message from a client.
pub enum Inbound {
    /// A decoded message and its approximate size in bytes.
    Message(Json, u64),
    /// A frame that could not be decoded (logged; the connection stays up).
    Undecodable(String),
}

/// The receiving half of a client connection.
pub trait FrameSource: Send + 'static {
    /// The next message from the client; `None` once the connection is closed.
    fn recv(&mut self) -> impl Future<Output = Option<Inbound>> + Send;
}

/// Why a [`FrameSink`] could not send: the connection is gone or broken (the message says
/// how; safe to log).
#[derive(Debug, thiserror::Error)]
#[error("connection lost: {0}")]
pub struct SinkError(String);

impl SinkError {
    /// An error saying `e`.
    pub fn new(e: impl std::fmt::Display) -> Self {
        SinkError(e.to_string())
    }
}

/// The sending half of a client connection.
pub trait FrameSink: Send + 'static {
    /// Sends `batch` in order (and leaves it empty).
    ///
    /// # Errors
    /// The connection is gone (the writer stops).
    fn send_batch(
        &mut self,
        batch: &mut Vec<Outgoing>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;
    /// Closes the connection; with `flush`, after what was sent has gone out.
    fn close(self, flush: bool) -> impl Future<Output = ()> + Send;
    /// Resolves once the remote side has closed (the writer stops early).
    fn closed(&self) -> impl Future<Output = ()> + Send;
    /// Called after [`KEEPALIVE`] without anything to send (a WebSocket sends a ping so
    /// proxies and tunnels keep an idle connection open).
    fn keepalive(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }
}

/// Idle time after which the writer calls [`FrameSink::keepalive`].
pub const KEEPALIVE: Duration = Duration::from_secs(20);

// ----- DataChannel ---------------------------------------------------------------------

/// Rough size of a decoded value (for the bytes-in counter).
fn approx_size(v: &Value) -> u64 {
    match v {
        Value::Str(s) => s.len() as u64 + 2,
        Value::Bin(b) => b.len() as u64,
        Value::Array(a) => 2 + a.iter().map(approx_size).sum::<u64>(),
        Value::Map(m) => {
            2 + m
                .iter()
                .map(|(k, v)| approx_size(k) + approx_size(v) + 1)
                .sum::<u64>()
        }
        _ => 4,
    }
}

/// Messages of a DataConnection, decoded by its serialization.
pub struct DataChannelSource(pub ConnectionReceiver);

impl FrameSource for DataChannelSource {
    async fn recv(&mut self) -> Option<Inbound> {
        Some(match self.0.recv().await? {
            Ok(v) => {
                let n = approx_size(&v);
                Inbound::Message(v.to_json(), n)
            }
            Err(e) => Inbound::Undecodable(e.to_string()),
        })
    }
}

/// Sends on a DataConnection in its serialization.
pub struct DataChannelSink {
    sender: ConnectionSender,
    frames: Vec<Frame>,
}

impl DataChannelSink {
    /// Wraps the sending half of a DataConnection.
    pub fn new(sender: ConnectionSender) -> Self {
        DataChannelSink {
            sender,
            frames: Vec::with_capacity(64),
        }
    }
}

/// The frame(s) for one message on a connection whose serialization lets every recipient
/// share one encoding (`json`, `raw`); `None` for per-connection encoders.
fn shared_frame(ser: Serialization, msg: &Outgoing) -> Option<Frame> {
    match (ser, msg) {
        (Serialization::Json, Outgoing::Object(p)) => {
            Some(Frame::Binary(Bytes::copy_from_slice(p.json().as_bytes())))
        }
        (Serialization::Json, Outgoing::Text(s)) => Some(Frame::Binary(Bytes::from(
            serde_json::to_string(&**s).unwrap_or_default(),
        ))),
        (Serialization::Raw, m) => Some(Frame::Text(m.text().to_string())),
        _ => None,
    }
}

impl FrameSink for DataChannelSink {
    async fn send_batch(&mut self, batch: &mut Vec<Outgoing>) -> Result<(), SinkError> {
        let ser = self.sender.serialization();
        for msg in batch.drain(..) {
            if let Some(f) = shared_frame(ser, &msg) {
                self.frames.push(f);
                continue;
            }
            if !self.frames.is_empty() {
                self.sender
                    .send_frames(&self.frames)
                    .await
                    .map_err(SinkError::new)?;
                self.frames.clear();
            }
            match &msg {
                // Encoded once per delivery copy, shared by its recipients (no value tree kept).
                Outgoing::Object(p) => {
                    let pre = p.encoded(ser).map_err(SinkError::new)?;
                    self.sender.send_pre(&pre).await
                }
                Outgoing::Text(s) => self.sender.send(&Value::Str(s.to_string())).await,
            }
            .map_err(SinkError::new)?;
        }
        if !self.frames.is_empty() {
            let r = self.sender.send_frames(&self.frames).await;
            self.frames.clear();
            r.map_err(SinkError::new)?;
        }
        Ok(())
    }

    async fn close(self, flush: bool) {
        self.sender.close(flush).await;
    }

    async fn closed(&self) {
        self.sender.closed().await;
    }
}

// ----- WebSocket -----------------------------------------------------------------------

/// Text frames of the relay WebSocket, each one JSON value (binary frames are read as UTF-8
/// text too). A frame that is not JSON reaches the relay as a string, which answers
/// `bad_request`.
pub struct WsSource {
    stream: SplitStream<WebSocket>,
    stop: CancellationToken,
    /// The socket's place under the per-address limits; every message counts against its
    /// address's rate.
    permit: Option<AddressPermit>,
}

/// Sends every message as one text frame holding its JSON.
pub struct WsSink {
    sink: SplitSink<WebSocket, Message>,
}

/// Splits an upgraded relay WebSocket into its two halves; `stop` ends the reader (node
/// shutdown); `permit` is the socket's place under the per-address limits (the reader ends
/// when its address goes over its message rate).
pub fn websocket(
    ws: WebSocket,
    stop: CancellationToken,
    permit: Option<AddressPermit>,
) -> (WsSource, WsSink) {
    let (sink, stream) = ws.split();
    (
        WsSource {
            stream,
            stop,
            permit,
        },
        WsSink { sink },
    )
}

fn decode_text(text: &str) -> Inbound {
    let n = text.len() as u64;
    match serde_json::from_str::<Json>(text) {
        Ok(v) => Inbound::Message(v, n),
        Err(_) => Inbound::Message(Json::String(text.to_owned()), n),
    }
}

impl FrameSource for WsSource {
    async fn recv(&mut self) -> Option<Inbound> {
        loop {
            let next = tokio::select! {
                m = self.stream.next() => m,
                _ = self.stop.cancelled() => return None,
            };
            let next = next?;
            if matches!(next, Ok(Message::Text(_) | Message::Binary(_)))
                && let Some(p) = &self.permit
                && !p.take_message(std::time::Instant::now())
            {
                return None;
            }
            match next {
                Ok(Message::Text(t)) => return Some(decode_text(t.as_str())),
                Ok(Message::Binary(b)) => {
                    return Some(match std::str::from_utf8(&b) {
                        Ok(t) => decode_text(t),
                        Err(_) => Inbound::Undecodable("binary frame is not UTF-8".into()),
                    });
                }
                Ok(Message::Close(_)) => return None,
                Ok(_) => {} // ping/pong: answered by the WebSocket layer
                Err(e) => {
                    tracing::debug!(error = %e, "relay websocket read failed");
                    return None;
                }
            }
        }
    }
}

fn text_of(msg: &Outgoing) -> String {
    match msg {
        Outgoing::Object(p) => p.json().to_owned(),
        Outgoing::Text(s) => serde_json::to_string(&**s).unwrap_or_default(),
    }
}

impl FrameSink for WsSink {
    async fn send_batch(&mut self, batch: &mut Vec<Outgoing>) -> Result<(), SinkError> {
        for msg in batch.drain(..) {
            self.sink
                .feed(Message::Text(text_of(&msg).into()))
                .await
                .map_err(SinkError::new)?;
        }
        self.sink.flush().await.map_err(SinkError::new)
    }

    async fn close(mut self, flush: bool) {
        // With `flush` the relay refused the client (`server_full` was sent first); without,
        // the client was too slow or the node is stopping.
        let frame = Some(if flush {
            CloseFrame {
                code: 1013,
                reason: "try again later".into(),
            }
        } else {
            CloseFrame {
                code: 1001,
                reason: "closed by the node".into(),
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.sink.send(Message::Close(frame)).await;
            let _ = self.sink.close().await;
        })
        .await;
    }

    async fn closed(&self) {
        std::future::pending::<()>().await
    }

    async fn keepalive(&mut self) -> Result<(), SinkError> {
        self.sink
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(SinkError::new)
    }
}
