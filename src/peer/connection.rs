//! An open PeerJS DataConnection and its two halves.
//!
//! - [`ConnectionSender`] encodes [`Value`]s with the connection's serialization and sends
//!   the frames in order. The channel's send buffer is bounded at
//!   [`PeerConfig::send_high_water`](super::PeerConfig::send_high_water) (by default
//!   [`SEND_HIGH_WATER`](super::SEND_HIGH_WATER), peerjs's 8 MiB): `send` waits while it is
//!   full, `try_send` returns [`ConnectionError::Full`] instead.
//! - [`ConnectionReceiver`] yields decoded values. A reader task drains the channel and
//!   decodes, so the in-band close control `{__peerData:{type:"close"}}` is honoured even
//!   when nobody reads; the queue to the receiver is bounded, so a slow reader
//!   back-pressures the remote sender through SCTP instead of growing memory.
//! - Closing the channel (either side, flushed or not, ICE failure) closes the
//!   PeerConnection too (webrtc-rs would otherwise keep it up ~30 s).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::PeerConnection;

use super::PeerError;
use super::codec::{
    CodecError, Decoded, Decoder, DecoderLimits, Encoder, Frame, PreEncoded, Serialization, Value,
};

/// Decoded messages queued for the receiver.
const RECV_QUEUE: usize = 32;
/// How long a flushed close waits for the remote side to close the channel.
pub const FLUSH_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors on one DataConnection.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConnectionError {
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// `try_send`: the send buffer is above the high-water mark.
    #[error("send buffer full")]
    Full,
    /// The value cannot be encoded, or a received frame cannot be decoded.
    #[error("codec: {0}")]
    Codec(String),
    /// ICE failed: the connection is gone.
    #[error("ICE connection failed")]
    IceFailed,
    /// webrtc refused the frame (e.g. larger than the remote's max message size).
    #[error("webrtc: {0}")]
    WebRtc(String),
}

impl From<CodecError> for ConnectionError {
    fn from(e: CodecError) -> Self {
        ConnectionError::Codec(e.to_string())
    }
}

/// What the OFFER said about a connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnMeta {
    pub(crate) peer: String,
    pub(crate) connection_id: String,
    pub(crate) label: String,
    pub(crate) serialization: Serialization,
    pub(crate) reliable: bool,
    pub(crate) metadata: Option<serde_json::Value>,
}

/// State shared by both halves, the reader task and the negotiation task.
pub(crate) struct ConnCore {
    pub(crate) meta: ConnMeta,
    dc: Arc<dyn DataChannel>,
    pc: Arc<dyn PeerConnection>,
    /// Cancelled once the channel and the PeerConnection are closed.
    pub(crate) closed: CancellationToken,
    shutting_down: AtomicBool,
    error: std::sync::Mutex<Option<ConnectionError>>,
    /// Bytes in flight the pump allows, when smaller than webrtc's own limit (a browser
    /// remote; see `webrtc_setup`).
    window: Option<usize>,
    /// The remote's SDP said it is an Ouroboros peer.
    remote_ouroboros: bool,
    /// Woken when the channel reports its buffered amount low.
    drained: tokio::sync::Notify,
}

impl ConnCore {
    /// Closes channel and PeerConnection once; `error` is reported to the receiver.
    pub(crate) async fn shutdown(&self, error: Option<ConnectionError>) {
        if let Some(e) = error {
            let mut slot = self.error.lock().expect("error lock poisoned");
            slot.get_or_insert(e);
        }
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        let _ = self.dc.close().await;
        let _ = self.pc.close().await;
        self.closed.cancel();
    }
}

/// An open DataConnection (PeerJS `DataConnection`). Split it to send and receive from
/// different tasks.
pub struct DataConnection {
    sender: ConnectionSender,
    receiver: ConnectionReceiver,
}

impl std::fmt::Debug for DataConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataConnection")
            .field("peer", &self.peer())
            .field("connection_id", &self.connection_id())
            .field("serialization", &self.serialization())
            .finish()
    }
}

impl DataConnection {
    /// Wraps an open channel: spawns the reader task and the send pump, which holds the
    /// channel to `window` bytes in flight when given; the decoder's limits and the send
    /// queue's high-water mark come from the peer's configuration.
    pub(crate) async fn start(
        meta: ConnMeta,
        dc: Arc<dyn DataChannel>,
        pc: Arc<dyn PeerConnection>,
        early: Vec<DataChannelEvent>,
        remote_ouroboros: bool,
        window: Option<usize>,
        (limits, high_water): (DecoderLimits, usize),
    ) -> (DataConnection, Arc<ConnCore>) {
        // At least one 64 KiB frame; semaphore acquisitions are u32-sized.
        let high_water = high_water.clamp(64 * 1024, u32::MAX as usize);
        let serialization = meta.serialization;
        if let Some(w) = window {
            let threshold = u32::try_from(w / 2).unwrap_or(u32::MAX);
            if let Err(e) = dc.set_buffered_amount_low_threshold(threshold).await {
                tracing::debug!(error = %e, "could not set the buffered-amount-low threshold");
            }
        }
        let core = Arc::new(ConnCore {
            meta,
            dc,
            pc,
            closed: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            error: std::sync::Mutex::new(None),
            window,
            remote_ouroboros,
            drained: tokio::sync::Notify::new(),
        });
        let (tx, rx) = mpsc::channel(RECV_QUEUE);
        tokio::spawn(read_loop(
            core.clone(),
            Decoder::with_limits(serialization, limits),
            tx,
            early,
        ));
        let (queue, queue_rx) = mpsc::unbounded_channel();
        tokio::spawn(pump(core.clone(), queue_rx));
        let conn = DataConnection {
            sender: ConnectionSender {
                core: core.clone(),
                encoder: Arc::new(tokio::sync::Mutex::new(Encoder::new(serialization))),
                queue,
                budget: Arc::new(Semaphore::new(high_water)),
                high_water,
            },
            receiver: ConnectionReceiver {
                core: core.clone(),
                rx,
            },
        };
        (conn, core)
    }

    fn core(&self) -> &ConnCore {
        &self.sender.core
    }
    /// The remote peer's id.
    pub fn peer(&self) -> &str {
        &self.core().meta.peer
    }
    /// The `dc_…` connection id.
    pub fn connection_id(&self) -> &str {
        &self.core().meta.connection_id
    }
    /// The channel label.
    pub fn label(&self) -> &str {
        &self.core().meta.label
    }
    /// The serialization from the OFFER.
    pub fn serialization(&self) -> Serialization {
        self.core().meta.serialization
    }
    /// Whether the channel is ordered (`reliable` in the OFFER).
    pub fn reliable(&self) -> bool {
        self.core().meta.reliable
    }
    /// Whether the remote announced itself as an Ouroboros peer (`a=tool:ouroboros` in its
    /// SDP), which gets the larger [`PeerConfig::native_send_window`](super::PeerConfig::native_send_window).
    pub fn remote_is_ouroboros(&self) -> bool {
        self.core().remote_ouroboros
    }
    /// The OFFER's metadata.
    pub fn metadata(&self) -> Option<&serde_json::Value> {
        self.core().meta.metadata.as_ref()
    }
    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.core().closed.is_cancelled()
    }
    /// Splits into a cloneable sender and the receiver.
    pub fn split(self) -> (ConnectionSender, ConnectionReceiver) {
        (self.sender, self.receiver)
    }
    /// A sender handle (clone) without giving up the receiver.
    pub fn sender(&self) -> ConnectionSender {
        self.sender.clone()
    }
    /// Sends one value; see [`ConnectionSender::send`].
    ///
    /// # Errors
    /// See [`ConnectionSender::send`].
    pub async fn send(&self, v: &Value) -> Result<(), ConnectionError> {
        self.sender.send(v).await
    }
    /// Sends a pre-encoded message; see [`ConnectionSender::send_pre`].
    ///
    /// # Errors
    /// See [`ConnectionSender::send_pre`].
    pub async fn send_pre(&self, pre: &PreEncoded) -> Result<(), ConnectionError> {
        self.sender.send_pre(pre).await
    }
    /// The next value; `None` once the connection is closed.
    pub async fn recv(&mut self) -> Option<Result<Value, ConnectionError>> {
        self.receiver.recv().await
    }
    /// Closes; with `flush`, after everything sent so far was delivered (peerjs's
    /// `close({flush: true})`).
    pub async fn close(self, flush: bool) {
        self.sender.close(flush).await
    }
}

/// The sending half. Cheap to clone; concurrent sends are serialised per message.
#[derive(Clone)]
pub struct ConnectionSender {
    core: Arc<ConnCore>,
    encoder: Arc<tokio::sync::Mutex<Encoder>>,
    /// Encoded frames for the pump task, in order.
    queue: mpsc::UnboundedSender<Queued>,
    /// Bytes allowed in the queue: `high_water` permits (each frame costs its length plus
    /// [`FRAME_OVERHEAD`]); a permit is released when its frame was handed to SCTP.
    budget: Arc<Semaphore>,
    /// [`PeerConfig::send_high_water`](super::PeerConfig::send_high_water) (default
    /// [`SEND_HIGH_WATER`]).
    high_water: usize,
}

/// Accounting overhead per queued frame, so tiny frames cannot pile up unboundedly.
const FRAME_OVERHEAD: usize = 64;

/// One queued frame; the last frame of a message carries the message's budget permit.
struct Queued {
    frame: Frame,
    _permit: Option<OwnedSemaphorePermit>,
}

fn map_webrtc(e: webrtc::error::Error) -> ConnectionError {
    match e {
        webrtc::error::Error::ErrDataChannelClosed => ConnectionError::Closed,
        webrtc::error::Error::ErrSendBufferFull => ConnectionError::Full,
        other => ConnectionError::WebRtc(other.to_string()),
    }
}

async fn send_frame(dc: &Arc<dyn DataChannel>, frame: Frame) -> Result<(), ConnectionError> {
    match frame {
        Frame::Text(s) => dc.send_text(&s).await.map_err(map_webrtc),
        Frame::Binary(b) => {
            let data = b.try_into_mut().unwrap_or_else(|b| BytesMut::from(&b[..]));
            dc.send(data).await.map_err(map_webrtc)
        }
    }
}

/// Longest wait between two checks of a gated channel's bytes in flight (the
/// buffered-amount-low event normally wakes the pump first).
const WINDOW_RECHECK: Duration = Duration::from_millis(1);

/// Waits until the connection's pump window (if it has one) has room: fewer bytes in
/// flight than the window. A frame always goes when nothing is in flight, however large.
async fn window_open(core: &ConnCore) -> Result<(), ConnectionError> {
    let Some(window) = core.window else {
        return Ok(());
    };
    loop {
        let in_flight = core.dc.outstanding_bytes().await.map_err(map_webrtc)?;
        // webrtc's own rule: below the window, the next frame goes (so a window holds
        // at least one frame plus whatever is partly acknowledged).
        if in_flight < window {
            return Ok(());
        }
        tokio::select! {
            _ = core.drained.notified() => {}
            _ = tokio::time::sleep(WINDOW_RECHECK) => {}
            _ = core.closed.cancelled() => return Err(ConnectionError::Closed),
        }
    }
}

/// Feeds queued frames to the channel. `dc.send` waits while the channel has more than
/// webrtc's limit in flight, and [`window_open`] holds a browser remote to the smaller
/// window, so frames leave at the pace the remote acknowledges them.
async fn pump(core: Arc<ConnCore>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = core.closed.cancelled() => break,
        };
        let Some(item) = item else { break };
        if window_open(&core).await.is_err() {
            break;
        }
        match send_frame(&core.dc, item.frame).await {
            Ok(()) => {}
            Err(ConnectionError::Closed) => break,
            Err(e) => {
                tracing::warn!(connection_id = %core.meta.connection_id, error = %e, "frame refused by the channel; dropped");
            }
        }
    }
}

fn frames_cost(frames: &[Frame], high_water: usize) -> u32 {
    let total: usize = frames.iter().map(|f| f.len() + FRAME_OVERHEAD).sum();
    // A message bigger than the whole budget waits for an empty queue, then goes alone.
    total.min(high_water) as u32
}

impl ConnectionSender {
    /// The remote peer's id.
    pub fn peer(&self) -> &str {
        &self.core.meta.peer
    }
    /// The `dc_…` connection id.
    pub fn connection_id(&self) -> &str {
        &self.core.meta.connection_id
    }
    /// The serialization this sender encodes with.
    pub fn serialization(&self) -> Serialization {
        self.core.meta.serialization
    }
    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.core.closed.is_cancelled()
    }
    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        self.core.closed.cancelled().await
    }

    fn enqueue(
        &self,
        frames: Vec<Frame>,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), ConnectionError> {
        let last = frames.len().saturating_sub(1);
        let mut permit = Some(permit);
        for (i, frame) in frames.into_iter().enumerate() {
            let item = Queued {
                frame,
                _permit: if i == last { permit.take() } else { None },
            };
            self.queue.send(item).map_err(|_| ConnectionError::Closed)?;
        }
        Ok(())
    }

    /// Waits for budget for `frames` (or the close), then queues them.
    async fn queue_frames(&self, frames: Vec<Frame>) -> Result<(), ConnectionError> {
        if frames.is_empty() {
            return Ok(());
        }
        let cost = frames_cost(&frames, self.high_water);
        let permit = tokio::select! {
            p = self.budget.clone().acquire_many_owned(cost) => p.map_err(|_| ConnectionError::Closed)?,
            _ = self.core.closed.cancelled() => return Err(ConnectionError::Closed),
        };
        self.enqueue(frames, permit)
    }

    /// Encodes and queues one value, waiting while more than the high-water mark's bytes
    /// (peerjs's 8 MiB unless configured) are queued. Frames then leave at the pace the remote acknowledges
    /// them (at most the send window in flight), in order.
    ///
    /// # Errors
    /// [`ConnectionError::Closed`], [`ConnectionError::Codec`] (e.g. a `json` message of
    /// 16300 bytes or more, `raw` with a non-string non-binary value).
    pub async fn send(&self, v: &Value) -> Result<(), ConnectionError> {
        if self.is_closed() {
            return Err(ConnectionError::Closed);
        }
        let mut enc = self.encoder.lock().await;
        let frames = enc.encode(v)?;
        self.queue_frames(frames).await
    }

    /// Like [`send`](Self::send) but never waits: [`ConnectionError::Full`] when the queue
    /// has no room for this message (or another send is waiting for room).
    ///
    /// # Errors
    /// As [`send`](Self::send), plus [`ConnectionError::Full`].
    pub fn try_send(&self, v: &Value) -> Result<(), ConnectionError> {
        if self.is_closed() {
            return Err(ConnectionError::Closed);
        }
        let Ok(mut enc) = self.encoder.try_lock() else {
            return Err(ConnectionError::Full);
        };
        let frames = enc.encode(v)?;
        self.try_enqueue(frames)
    }

    fn try_enqueue(&self, frames: Vec<Frame>) -> Result<(), ConnectionError> {
        if frames.is_empty() {
            return Ok(());
        }
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(frames_cost(&frames, self.high_water))
            .map_err(|e| match e {
                TryAcquireError::Closed => ConnectionError::Closed,
                TryAcquireError::NoPermits => ConnectionError::Full,
            })?;
        self.enqueue(frames, permit)
    }

    /// Sends a message serialized once with [`PreEncoded`] (e.g. one relay message to
    /// many connections): no re-serialization, and no copy unless it must be chunked. Same
    /// back-pressure as [`send`](Self::send).
    ///
    /// # Errors
    /// [`ConnectionError::Codec`] if `pre` was made for another wire format, otherwise as
    /// [`send`](Self::send).
    pub async fn send_pre(&self, pre: &PreEncoded) -> Result<(), ConnectionError> {
        if self.is_closed() {
            return Err(ConnectionError::Closed);
        }
        let mut enc = self.encoder.lock().await;
        let frames = enc.encode_pre(pre)?;
        self.queue_frames(frames).await
    }

    /// Sends frames that are already encoded for this connection's serialization (e.g. one
    /// `json` or `raw` encoding shared by many connections), in order, with the same
    /// back-pressure as [`send`](Self::send). Prefer [`send_pre`](Self::send_pre), which
    /// also handles chunked `binary` and `msgpack` correctly.
    ///
    /// # Errors
    /// [`ConnectionError::Closed`].
    pub async fn send_frames(&self, frames: &[Frame]) -> Result<(), ConnectionError> {
        if self.is_closed() {
            return Err(ConnectionError::Closed);
        }
        let _order = self.encoder.lock().await;
        self.queue_frames(frames.to_vec()).await
    }

    /// [`send_pre`](Self::send_pre) without waiting; see [`try_send`](Self::try_send).
    ///
    /// # Errors
    /// As [`send_pre`](Self::send_pre), plus [`ConnectionError::Full`].
    pub fn try_send_pre(&self, pre: &PreEncoded) -> Result<(), ConnectionError> {
        if self.is_closed() {
            return Err(ConnectionError::Closed);
        }
        let Ok(mut enc) = self.encoder.try_lock() else {
            return Err(ConnectionError::Full);
        };
        let frames = enc.encode_pre(pre)?;
        self.try_enqueue(frames)
    }

    /// Bytes queued or in flight (not yet acknowledged by the remote), approximately.
    pub async fn buffered_amount(&self) -> usize {
        let queued = self
            .high_water
            .saturating_sub(self.budget.available_permits());
        queued + self.core.dc.outstanding_bytes().await.unwrap_or(0)
    }

    /// Waits until everything queued so far was handed to the channel and acknowledged.
    async fn drained(&self) {
        loop {
            if self.core.closed.is_cancelled() {
                return;
            }
            if self.budget.available_permits() >= self.high_water
                && self.core.dc.outstanding_bytes().await.unwrap_or(0) == 0
            {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                _ = self.core.closed.cancelled() => return,
            }
        }
    }

    /// Closes the connection. With `flush`, everything sent before is delivered first: the
    /// close control `{__peerData:{type:"close"}}` goes after the data and the remote closes
    /// when it reads it (`raw` has no control message: the queue is drained instead).
    /// Gives up waiting after [`FLUSH_CLOSE_TIMEOUT`].
    pub async fn close(&self, flush: bool) {
        if flush && !self.is_closed() {
            let flushed = async {
                let frames = {
                    let mut enc = self.encoder.lock().await;
                    enc.encode_close().unwrap_or_default()
                };
                if frames.is_empty() {
                    self.drained().await;
                } else if self.queue_frames(frames).await.is_ok() {
                    self.core.closed.cancelled().await;
                }
            };
            let _ = tokio::time::timeout(FLUSH_CLOSE_TIMEOUT, flushed).await;
        }
        self.core.shutdown(None).await;
    }
}

/// The receiving half.
pub struct ConnectionReceiver {
    core: Arc<ConnCore>,
    rx: mpsc::Receiver<Result<Value, ConnectionError>>,
}

impl ConnectionReceiver {
    /// The remote peer's id.
    pub fn peer(&self) -> &str {
        &self.core.meta.peer
    }
    /// The `dc_…` connection id.
    pub fn connection_id(&self) -> &str {
        &self.core.meta.connection_id
    }
    /// The next value, in order of arrival; an `Err` for an undecodable frame or an ICE
    /// failure; `None` once closed (remote close, flushed close, ICE failure, local close).
    pub async fn recv(&mut self) -> Option<Result<Value, ConnectionError>> {
        self.rx.recv().await
    }
}

fn to_frame(data: BytesMut, is_string: bool) -> Frame {
    if is_string {
        match String::from_utf8(Vec::from(data)) {
            Ok(s) => Frame::Text(s),
            Err(e) => Frame::Binary(e.into_bytes().into()),
        }
    } else {
        Frame::Binary(data.freeze())
    }
}

/// Delivers one item; `false` if the connection closed meanwhile. A dropped receiver
/// is not an error: the reader keeps draining so close controls are still seen.
async fn deliver(
    core: &ConnCore,
    tx: &mpsc::Sender<Result<Value, ConnectionError>>,
    item: Result<Value, ConnectionError>,
) -> bool {
    tokio::select! {
        _ = tx.send(item) => true,
        _ = core.closed.cancelled() => false,
    }
}

/// What to do after one channel event.
enum Step {
    Continue,
    Stop,
}

async fn handle_event(
    core: &ConnCore,
    decoder: &mut Decoder,
    tx: &mpsc::Sender<Result<Value, ConnectionError>>,
    ev: Option<DataChannelEvent>,
) -> Step {
    match ev {
        Some(DataChannelEvent::OnMessage(m)) => {
            match decoder.decode(to_frame(m.data, m.is_string)) {
                Ok(items) => {
                    for item in items {
                        match item {
                            Decoded::Message(v) => {
                                if !deliver(core, tx, Ok(v)).await {
                                    return Step::Stop;
                                }
                            }
                            Decoded::Close => {
                                core.shutdown(None).await;
                                return Step::Stop;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(connection_id = %core.meta.connection_id, error = %e, "undecodable frame");
                    if !deliver(core, tx, Err(e.into())).await {
                        return Step::Stop;
                    }
                }
            }
            Step::Continue
        }
        Some(DataChannelEvent::OnClose) | None => {
            core.shutdown(None).await;
            Step::Stop
        }
        Some(DataChannelEvent::OnBufferedAmountLow) => {
            core.drained.notify_one();
            Step::Continue
        }
        Some(_) => Step::Continue,
    }
}

async fn read_loop(
    core: Arc<ConnCore>,
    mut decoder: Decoder,
    tx: mpsc::Sender<Result<Value, ConnectionError>>,
    early: Vec<DataChannelEvent>,
) {
    let mut stopped = false;
    for ev in early {
        if let Step::Stop = handle_event(&core, &mut decoder, &tx, Some(ev)).await {
            stopped = true;
            break;
        }
    }
    while !stopped {
        let ev = tokio::select! {
            ev = core.dc.poll() => ev,
            _ = core.closed.cancelled() => break,
        };
        stopped = matches!(handle_event(&core, &mut decoder, &tx, ev).await, Step::Stop);
    }
    let err = core.error.lock().expect("error lock poisoned").take();
    if let Some(e) = err {
        let _ = tx.try_send(Err(e));
    }
}

/// Maps a negotiation error for callers that want a connection error.
impl From<PeerError> for ConnectionError {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::Closed | PeerError::ConnectionClosed(_) => ConnectionError::Closed,
            other => ConnectionError::WebRtc(other.to_string()),
        }
    }
}
