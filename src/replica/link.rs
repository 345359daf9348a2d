//! The members' calls over a message link (a PeerJS DataConnection labelled
//! `ouroboros-replica`, `raw` serialization, reliable and ordered) instead of HTTP: the same
//! signed calls, framed as binary messages (`protocol/replication.md`, "Calls over WebRTC").
//!
//! Sans-IO: [`encode_request`] / [`encode_answer`] turn one call or answer into frames of at
//! most [`FRAME_MAX`] bytes; [`Reassembler`] puts them back together with bounded memory. The
//! node's `member_link` module owns the DataConnections; [`MemberLink`] is how
//! [`HttpTransport`](super::HttpTransport) hands a call to it.
//!
//! A frame is `ORM1`, a kind byte (1 call, 2 answer), the call's number (u32, big endian, chosen
//! by the caller, unique among its calls in flight on the connection), a flags byte (bit 0:
//! the last frame of this message), then a part of the message. A whole call is a u16 length,
//! that many bytes of a JSON header `{"call","from","to","ts","mac"}` (the HTTP headers' values)
//! and the body; a whole answer is a u16 status and the body.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::http::Call;
use super::{MAX_BODY_BYTES, NodeId, RtcRoute};

/// The label of a member link's DataConnection.
pub const LINK_LABEL: &str = "ouroboros-replica";
/// Largest frame: the 256 KiB SCTP message both Ouroboros peers announce.
pub const FRAME_MAX: usize = 256 * 1024;
/// The frame prefix.
const MAGIC: &[u8; 4] = b"ORM1";
/// Magic, kind, number, flags.
const FRAME_HEADER: usize = 10;
/// Largest call header (JSON).
const MAX_CALL_HEADER: usize = 4096;
/// Largest whole message: a body of [`MAX_BODY_BYTES`] plus its header.
pub const MAX_MESSAGE_BYTES: usize = MAX_BODY_BYTES + 2 + MAX_CALL_HEADER;
/// Messages being reassembled at once on one connection.
pub const MAX_PARTIAL: usize = 16;
/// Bytes being reassembled at once on one connection.
pub const MAX_PARTIAL_BYTES: usize = 2 * MAX_MESSAGE_BYTES;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A call, from the member that opened the connection.
    Call = 1,
    /// The answer to a call.
    Answer = 2,
}

/// A signed member call, whatever carries it.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Which call.
    pub call: Call,
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's clock, ms since the Unix epoch.
    pub ts: u64,
    /// The HMAC ([`RpcKey::mac`](super::RpcKey::mac)).
    pub mac: String,
    /// The request body.
    pub body: Bytes,
}

/// The JSON header of a call.
#[derive(Serialize, Deserialize)]
struct CallHeader {
    call: String,
    from: NodeId,
    to: NodeId,
    ts: u64,
    mac: String,
}

/// A frame or message that breaks the format: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkFrameError {
    /// Not an `ORM1` frame, or a frame shorter than its header.
    #[error("not a member link frame")]
    NotAFrame,
    /// An unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// A message above `MAX_MESSAGE_BYTES` (32 MiB + 4 098), or more than `MAX_PARTIAL` (16)
    /// messages or `MAX_PARTIAL_BYTES` (64 MiB) being reassembled on one link.
    #[error("member link message too large, or too many at once")]
    TooLarge,
    /// A whole message whose call header does not read.
    #[error("bad call header: {0}")]
    Header(String),
}

/// Splits one message into frames.
fn frames(kind: Kind, number: u32, message: &[u8]) -> Vec<Bytes> {
    let part = FRAME_MAX - FRAME_HEADER;
    let n = message.len().div_ceil(part).max(1);
    (0..n)
        .map(|i| {
            let p = &message[i * part..message.len().min((i + 1) * part)];
            let mut f = Vec::with_capacity(FRAME_HEADER + p.len());
            f.extend_from_slice(MAGIC);
            f.push(kind as u8);
            f.extend_from_slice(&number.to_be_bytes());
            f.push(u8::from(i + 1 == n));
            f.extend_from_slice(p);
            Bytes::from(f)
        })
        .collect()
}

/// The frames of call `number` carrying `env`.
pub fn encode_request(number: u32, env: &Envelope) -> Vec<Bytes> {
    let header = serde_json::to_vec(&CallHeader {
        call: env.call.name().to_owned(),
        from: env.from,
        to: env.to,
        ts: env.ts,
        mac: env.mac.clone(),
    })
    .unwrap_or_default();
    let mut m = Vec::with_capacity(2 + header.len() + env.body.len());
    m.extend_from_slice(&u16::try_from(header.len()).unwrap_or(0).to_be_bytes());
    m.extend_from_slice(&header);
    m.extend_from_slice(&env.body);
    frames(Kind::Call, number, &m)
}

/// The frames of the answer to call `number`.
pub fn encode_answer(number: u32, status: u16, body: &[u8]) -> Vec<Bytes> {
    let mut m = Vec::with_capacity(2 + body.len());
    m.extend_from_slice(&status.to_be_bytes());
    m.extend_from_slice(body);
    frames(Kind::Answer, number, &m)
}

/// A call as received: its header's values (unchecked: the service checks them) and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedCall {
    /// The call's name as sent.
    pub call: String,
    /// The claimed sender.
    pub from: NodeId,
    /// The intended receiver.
    pub to: NodeId,
    /// The sender's timestamp.
    pub ts: u64,
    /// The MAC.
    pub mac: String,
    /// The body.
    pub body: Bytes,
}

/// A whole message from [`Reassembler::push`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whole {
    /// Call `number`.
    Call(u32, ReceivedCall),
    /// The answer to call `number`: status and body.
    Answer(u32, u16, Bytes),
}

/// Reassembles frames into whole messages, within [`MAX_PARTIAL`] messages and
/// [`MAX_PARTIAL_BYTES`] at once.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: HashMap<(u8, u32), Vec<u8>>,
    bytes: usize,
}

impl Reassembler {
    /// Takes one frame; returns a message when this frame completed one.
    ///
    /// # Errors
    /// [`LinkFrameError`]: the connection breaks the format and should be closed.
    pub fn push(&mut self, frame: &[u8]) -> Result<Option<Whole>, LinkFrameError> {
        if frame.len() < FRAME_HEADER || &frame[..4] != MAGIC {
            return Err(LinkFrameError::NotAFrame);
        }
        let kind = frame[4];
        if kind != Kind::Call as u8 && kind != Kind::Answer as u8 {
            return Err(LinkFrameError::Kind(kind));
        }
        let number = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]);
        let last = frame[9] & 1 == 1;
        let part = &frame[FRAME_HEADER..];
        let key = (kind, number);
        let whole = if let Some(mut buf) = self.partial.remove(&key) {
            self.bytes -= buf.len();
            if buf.len() + part.len() > MAX_MESSAGE_BYTES {
                return Err(LinkFrameError::TooLarge);
            }
            buf.extend_from_slice(part);
            if !last {
                self.keep(key, buf)?;
                return Ok(None);
            }
            Bytes::from(buf)
        } else if last {
            Bytes::copy_from_slice(part)
        } else {
            self.keep(key, part.to_vec())?;
            return Ok(None);
        };
        decode_whole(kind, number, whole).map(Some)
    }

    fn keep(&mut self, key: (u8, u32), buf: Vec<u8>) -> Result<(), LinkFrameError> {
        if self.partial.len() >= MAX_PARTIAL || self.bytes + buf.len() > MAX_PARTIAL_BYTES {
            return Err(LinkFrameError::TooLarge);
        }
        self.bytes += buf.len();
        self.partial.insert(key, buf);
        Ok(())
    }
}

fn decode_whole(kind: u8, number: u32, m: Bytes) -> Result<Whole, LinkFrameError> {
    if m.len() < 2 {
        return Err(LinkFrameError::NotAFrame);
    }
    let lead = usize::from(u16::from_be_bytes([m[0], m[1]]));
    if kind == Kind::Answer as u8 {
        return Ok(Whole::Answer(number, lead as u16, m.slice(2..)));
    }
    if lead > MAX_CALL_HEADER || m.len() < 2 + lead {
        return Err(LinkFrameError::Header("length".into()));
    }
    let h: CallHeader = serde_json::from_slice(&m[2..2 + lead])
        .map_err(|e| LinkFrameError::Header(e.to_string()))?;
    Ok(Whole::Call(
        number,
        ReceivedCall {
            call: h.call,
            from: h.from,
            to: h.to,
            ts: h.ts,
            mac: h.mac,
            body: m.slice(2 + lead..),
        },
    ))
}

/// Why a call over a link got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// No link to the member is open now (one is being opened): use another path.
    #[error("no link open yet")]
    NotUp,
    /// The link could not be opened, or closed during the call.
    #[error("link failed: {0}")]
    Failed(String),
    /// No answer within the call's time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The path of the WebSocket member link on a member's HTTP base URL.
pub const LINK_WS_PATH: &str = "/replica/v1/link";

/// Which link a call takes.
#[derive(Debug, Clone, Copy)]
pub enum LinkPath<'a> {
    /// A WebRTC DataConnection, opened through one of these routes.
    Rtc(&'a [RtcRoute]),
    /// A WebSocket to [`LINK_WS_PATH`] on this base URL (the member's tunnel).
    Ws(&'a str),
}

/// Carries signed member calls over links the node opens (WebRTC DataConnections and
/// WebSockets through the tunnel).
#[async_trait::async_trait]
pub trait MemberLink: Send + Sync + 'static {
    /// Sends `env` to member `env.to` over the link `path` names and returns the answer's
    /// status and body. With `wait`, waits (within `timeout`) for the link to open; without it,
    /// answers [`LinkError::NotUp`] at once when it is not open, and opens it for the next
    /// calls.
    async fn call(
        &self,
        path: LinkPath<'_>,
        env: &Envelope,
        timeout: Duration,
        wait: bool,
    ) -> Result<(u16, Bytes), LinkError>;
}

/// A member's calls answered, by the path they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CallCounts {
    /// Over WebRTC DataConnections.
    pub webrtc: u64,
    /// Over WebSocket links (through the tunnel).
    pub websocket: u64,
    /// As HTTP `POST`s.
    pub http: u64,
}

/// Which path a member's calls take (`--replica-transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LinkPolicy {
    /// WebRTC when the other member has a WebRTC route and a link to it is open; a WebSocket
    /// link to its HTTP base URL (its tunnel) while it opens, when it fails, or for a member
    /// without one.
    #[default]
    Auto,
    /// WebRTC only: calls wait for the link; nothing else is used.
    Webrtc,
    /// HTTP `POST`s only (no link; no WebRTC route is advertised).
    Http,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(body: Vec<u8>) -> Envelope {
        Envelope {
            call: Call::Append,
            from: 7,
            to: 9,
            ts: 123,
            mac: "m".into(),
            body: body.into(),
        }
    }

    #[test]
    fn calls_and_answers_of_any_size_come_back_whole_even_interleaved() {
        let big: Vec<u8> = (0..FRAME_MAX * 2 + 17).map(|i| (i % 251) as u8).collect();
        let a = encode_request(1, &env(big.clone()));
        let b = encode_request(2, &env(b"small".to_vec()));
        let c = encode_answer(1, 200, &big);
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|f| f.len() <= FRAME_MAX));
        let mut r = Reassembler::default();
        let mut out = Vec::new();
        // b and c arrive in the middle of a.
        for f in [&a[0], &b[0], &c[0], &a[1], &c[1], &a[2], &c[2]] {
            if let Some(w) = r.push(f).unwrap() {
                out.push(w);
            }
        }
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[0], Whole::Call(2, c) if c.body == b"small"[..]));
        match &out[1] {
            Whole::Call(1, c) => {
                assert_eq!((c.call.as_str(), c.from, c.to, c.ts), ("append", 7, 9, 123));
                assert_eq!(c.body, big[..]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&out[2], Whole::Answer(1, 200, b) if *b == big[..]));
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn hostile_frames_are_refused_and_memory_stays_bounded() {
        let mut r = Reassembler::default();
        assert_eq!(r.push(b"nope"), Err(LinkFrameError::NotAFrame));
        assert_eq!(
            r.push(b"ORM1\x09\0\0\0\0\x01x"),
            Err(LinkFrameError::Kind(9))
        );
        // A call header that is not JSON.
        let mut f = b"ORM1\x01\0\0\0\x01\x01".to_vec();
        f.extend_from_slice(&[0, 3]);
        f.extend_from_slice(b"xyz");
        assert!(matches!(r.push(&f), Err(LinkFrameError::Header(_))));
        // Too many unfinished messages at once.
        let mut r = Reassembler::default();
        for n in 0..MAX_PARTIAL as u32 {
            let f = frames(Kind::Call, n, &vec![0; FRAME_MAX * 2]);
            assert_eq!(r.push(&f[0]), Ok(None));
        }
        let f = frames(Kind::Call, 999, &vec![0; FRAME_MAX * 2]);
        assert_eq!(r.push(&f[0]), Err(LinkFrameError::TooLarge));
        // One message that never ends grows until MAX_MESSAGE_BYTES, then is refused.
        let mut r = Reassembler::default();
        let part = vec![0u8; FRAME_MAX - FRAME_HEADER];
        let mut frame = b"ORM1\x01\0\0\0\x05\x00".to_vec();
        frame.extend_from_slice(&part);
        let mut refused = false;
        for _ in 0..=MAX_MESSAGE_BYTES / part.len() + 1 {
            if r.push(&frame).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused);
    }
}
