//! The handoff transport over a PeerJS DataConnection (or the WebSocket path, [`FrameLink`]): encoding a [`Message`] for the
//! connection's serialization, `OHBF` fragments on `raw` connections (`protocol/handoff.md`),
//! and the reader/writer tasks of one connection.

use super::ConnId;
use super::message::{DecodeError, Sealed};
use crate::peer::codec::{Serialization, Value};
use crate::peer::{ConnectionError, DataConnection};
use tokio::sync::mpsc;

/// A received value that is not a handoff message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Neither binary, text nor an object.
    #[error("not a handoff message")]
    NotHandoff,
    /// An `OHBF` fragment shorter than its header.
    #[error("fragment without header")]
    NoHeader,
    /// Fragments adding up to more than the handoff message limit.
    #[error("fragmented handoff message above the size limit")]
    TooLarge,
    /// The message does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The connection reported an error.
    #[error(transparent)]
    Connection(ConnectionError),
}

/// Largest DataConnection message on a `raw` handoff connection: the 256 KiB SCTP
/// message limit both Ouroboros peers announce. Longer handoff messages are split into
/// `OHBF` fragments (see `protocol/handoff.md`).
pub const RAW_FRAME_MAX: usize = 256 * 1024;
/// Prefix of a fragment of a handoff message on a `raw` connection.
const FRAGMENT_MAGIC: &[u8; 4] = b"OHBF";
/// Fragment header: magic and the "last fragment" flag.
const FRAGMENT_HEADER: usize = 5;

/// Encodes a handoff message for a connection's serialization: `binary`/`msgpack` get the
/// binary frame, `json` the JSON object, `raw` the binary frame as is (split into `OHBF`
/// fragments above [`RAW_FRAME_MAX`]).
pub fn to_values(serialization: Serialization, m: &Sealed) -> Vec<Value> {
    match serialization {
        Serialization::Json => vec![Value::from_json(m.to_value())],
        Serialization::Raw => {
            let bytes = m.to_binary();
            if bytes.len() <= RAW_FRAME_MAX {
                return vec![Value::Bin(bytes.into())];
            }
            let part = RAW_FRAME_MAX - FRAGMENT_HEADER;
            let n = bytes.len().div_ceil(part);
            bytes
                .chunks(part)
                .enumerate()
                .map(|(i, p)| {
                    let mut f = Vec::with_capacity(FRAGMENT_HEADER + p.len());
                    f.extend_from_slice(FRAGMENT_MAGIC);
                    f.push(u8::from(i + 1 == n));
                    f.extend_from_slice(p);
                    Value::Bin(f.into())
                })
                .collect()
        }
        _ => vec![Value::Bin(m.to_binary().into())],
    }
}

/// Decodes one whole handoff message from either encoding (fragments go through
/// [`Defragmenter`]).
fn from_value(v: &Value) -> Result<Sealed, FrameError> {
    match v {
        Value::Bin(b) => Ok(Sealed::from_binary(b)?),
        Value::Str(s) => Ok(Sealed::from_json(s)?),
        Value::Map(_) => Ok(Sealed::from_value(v.to_json())?),
        _ => Err(FrameError::NotHandoff),
    }
}

/// Reassembles `OHBF` fragments (raw connections) into whole handoff messages.
#[derive(Debug, Default)]
pub struct Defragmenter {
    partial: Vec<u8>,
    broken: bool,
}

impl Defragmenter {
    /// Feeds one received value; returns a decoded message when one is complete.
    ///
    /// # Errors
    /// An undecodable message, or fragments adding up to more than the handoff message
    /// limit (the rest of that message is then skipped).
    pub fn push(&mut self, v: Value) -> Result<Option<Sealed>, FrameError> {
        let Value::Bin(b) = &v else {
            return from_value(&v).map(Some);
        };
        if !b.starts_with(FRAGMENT_MAGIC) {
            if !self.partial.is_empty() || self.broken {
                self.partial.clear();
                self.broken = false;
                tracing::debug!("handoff: unfinished fragmented message dropped");
            }
            return from_value(&v).map(Some);
        }
        let Some(&last) = b.get(4) else {
            return Err(FrameError::NoHeader);
        };
        let last = last != 0;
        if !self.broken {
            if self.partial.len() + b.len() - FRAGMENT_HEADER > super::message::MAX_MESSAGE_BYTES {
                self.partial = Vec::new();
                self.broken = true;
            } else {
                self.partial.extend_from_slice(&b[FRAGMENT_HEADER..]);
            }
        }
        if !last {
            return Ok(None);
        }
        if std::mem::take(&mut self.broken) {
            return Err(FrameError::TooLarge);
        }
        let whole = std::mem::take(&mut self.partial);
        Ok(Some(Sealed::from_binary(&whole)?))
    }
}

/// What a connection's reader task reports to its driver.
pub(super) enum Inbound {
    Msg(ConnId, Sealed),
    Closed(ConnId),
}

/// A handoff connection over a byte-message transport (the node's WebSocket path): every
/// message one whole `OHB1` binary handoff message (no fragments). Dropping `tx` closes it.
#[derive(Debug)]
pub struct FrameLink {
    /// The remote peer id (declared by the successor on a WebSocket; checked against
    /// `hello.successor_peer_id`, and the HMAC proofs bind it).
    pub peer: String,
    /// Metadata the remote declared (e.g. `github_run_id`), `Null` if none.
    pub metadata: serde_json::Value,
    /// The client's address (the TCP peer's, or the forwarded one from a trusted proxy),
    /// if known: the predecessor counts this connection's attempts against it.
    pub client_addr: Option<std::net::IpAddr>,
    /// Messages to the remote.
    pub tx: mpsc::Sender<Vec<u8>>,
    /// Messages from the remote; `None` once closed.
    pub rx: mpsc::Receiver<Vec<u8>>,
}

/// One handoff connection, whatever carries it.
#[derive(Debug)]
pub enum HandoffConn {
    /// A PeerJS DataConnection labelled `ouroboros-handoff`.
    DataChannel(DataConnection),
    /// The WebSocket path (`GET /handoff` on the predecessor's HTTP port).
    WebSocket(FrameLink),
}

impl From<DataConnection> for HandoffConn {
    fn from(c: DataConnection) -> Self {
        HandoffConn::DataChannel(c)
    }
}

impl HandoffConn {
    /// The remote peer id.
    pub fn peer(&self) -> &str {
        match self {
            HandoffConn::DataChannel(c) => c.peer(),
            HandoffConn::WebSocket(l) => &l.peer,
        }
    }

    /// Whom this connection's handoff attempts count against: the peer id the signaling
    /// server stamped on a DataConnection; the client address of a WebSocket (its peer id
    /// is only declared), or its declared peer id when the address is unknown.
    pub fn origin(&self) -> String {
        match self {
            HandoffConn::DataChannel(c) => c.peer().to_string(),
            HandoffConn::WebSocket(l) => match l.client_addr {
                Some(ip) => format!("ws:{ip}"),
                None => format!("ws-peer:{}", l.peer),
            },
        }
    }

    /// The remote's metadata, if any.
    pub fn metadata(&self) -> Option<&serde_json::Value> {
        match self {
            HandoffConn::DataChannel(c) => c.metadata(),
            HandoffConn::WebSocket(l) => Some(&l.metadata).filter(|m| !m.is_null()),
        }
    }

    /// `webrtc` or `ws`.
    pub fn transport(&self) -> &'static str {
        match self {
            HandoffConn::DataChannel(_) => "webrtc",
            HandoffConn::WebSocket(_) => "ws",
        }
    }

    /// Closes the connection (`flush`: after what was sent).
    pub async fn close(self, flush: bool) {
        match self {
            HandoffConn::DataChannel(c) => c.close(flush).await,
            HandoffConn::WebSocket(l) => drop(l),
        }
    }
}

/// [`attach`] for a [`FrameLink`]: whole binary handoff messages both ways.
fn attach_frames(
    id: ConnId,
    link: FrameLink,
    inbox: mpsc::UnboundedSender<Inbound>,
) -> mpsc::UnboundedSender<Sealed> {
    let FrameLink {
        tx: out, mut rx, ..
    } = link;
    let (tx, mut msgs) = mpsc::unbounded_channel::<Sealed>();
    tokio::spawn(async move {
        while let Some(m) = msgs.recv().await {
            if out.send(m.to_binary()).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            match Sealed::from_binary(&bytes) {
                Ok(m) => {
                    if inbox.send(Inbound::Msg(id, m)).is_err() {
                        break;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "handoff: undecodable message dropped"),
            }
        }
        let _ = inbox.send(Inbound::Closed(id));
    });
    tx
}

/// Spawns a reader task for `conn`; returns its writer channel.
pub(super) fn attach(
    id: ConnId,
    conn: HandoffConn,
    inbox: mpsc::UnboundedSender<Inbound>,
) -> mpsc::UnboundedSender<Sealed> {
    let conn = match conn {
        HandoffConn::DataChannel(c) => c,
        HandoffConn::WebSocket(l) => return attach_frames(id, l, inbox),
    };
    let serialization = conn.serialization();
    let (sender, mut receiver) = conn.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Sealed>();
    tokio::spawn(async move {
        'send: while let Some(m) = rx.recv().await {
            for v in to_values(serialization, &m) {
                if sender.send(&v).await.is_err() {
                    break 'send;
                }
            }
        }
        sender.close(true).await;
    });
    tokio::spawn(async move {
        let mut defrag = Defragmenter::default();
        while let Some(item) = receiver.recv().await {
            match item
                .map_err(FrameError::Connection)
                .and_then(|v| defrag.push(v))
            {
                Ok(None) => {}
                Ok(Some(m)) => {
                    if inbox.send(Inbound::Msg(id, m)).is_err() {
                        break;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "handoff: undecodable message dropped"),
            }
        }
        let _ = inbox.send(Inbound::Closed(id));
    });
    tx
}
