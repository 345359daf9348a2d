//! The server side of the WebSocket framing (RFC 6455) for the signaling sockets: the
//! opening handshake's accept key, a frame decoder and server frame encoding.
//!
//! Ours rather than tungstenite's so that an idle socket holds no buffers (the decoder keeps
//! bytes only while a frame is split across reads) and so that a frame can be written to a
//! socket by whichever task produced it (`server.rs`). It accepts what tungstenite accepted
//! with the same limits: masked client frames only, no extensions (reserved bits set is a
//! protocol error), control frames final and at most 125 bytes, fragmented messages
//! reassembled, text valid UTF-8, a frame or message above the size limit is
//! [`WsError::TooBig`].

use base64::Engine as _;
use sha1::{Digest, Sha1};

const OP_CONTINUE: u8 = 0x0;
/// Opcode of a text frame.
pub(crate) const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
pub(crate) const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub(crate) const OP_PONG: u8 = 0xA;

/// The most bytes a server frame header takes (unmasked, 64-bit length).
pub(crate) const MAX_HEADER: usize = 10;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub(crate) fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

/// A final, unmasked frame header (a server's frames are never masked) and its length.
pub(crate) fn header(opcode: u8, len: usize) -> ([u8; MAX_HEADER], usize) {
    let mut h = [0u8; MAX_HEADER];
    h[0] = 0x80 | opcode;
    if len < 126 {
        h[1] = len as u8;
        (h, 2)
    } else if let Ok(len) = u16::try_from(len) {
        h[1] = 126;
        h[2..4].copy_from_slice(&len.to_be_bytes());
        (h, 4)
    } else {
        h[1] = 127;
        h[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        (h, 10)
    }
}

/// Appends a final, unmasked frame header.
pub(crate) fn push_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    let (h, n) = header(opcode, len);
    out.extend_from_slice(&h[..n]);
}

/// Appends a whole final frame.
pub(crate) fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    push_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
}

/// Appends a close frame: empty, or `code` and `reason`.
pub(crate) fn push_close(out: &mut Vec<u8>, close: Option<(u16, &str)>) {
    match close {
        None => push_header(out, OP_CLOSE, 0),
        Some((code, reason)) => {
            push_header(out, OP_CLOSE, 2 + reason.len());
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(reason.as_bytes());
        }
    }
}

/// Whether a client may send this close code (tungstenite's `CloseCode::is_allowed`): not
/// 1004–1006, 1014, 1015, 1016–2999 or outside 1000–4999.
pub(crate) fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

/// What the client sent: one complete message or control frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (to be answered with a pong carrying it).
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame: no payload, or a code and a UTF-8 reason.
    Close(Option<(u16, &'a str)>),
}

/// Why the connection must be failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsError {
    /// A frame or message above the size limit.
    TooBig,
    /// Anything else against RFC 6455 (unmasked, reserved bits, bad opcode, bad UTF-8, …).
    Protocol,
}

/// Whether the decoder should go on with the frames after this event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Decode the next frame.
    Continue,
    /// Stop here; the rest of the input is dropped.
    Stop,
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Fragments {
    text: bool,
    data: Vec<u8>,
}

/// Decodes a client's frames from the bytes read from its socket. Holds memory only while a
/// frame is split across reads or a fragmented message is incomplete.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// The start of a frame whose rest has not arrived yet.
    partial: Vec<u8>,
    /// A fragmented message in progress.
    message: Option<Box<Fragments>>,
}

struct Header {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: [u8; 4],
    /// Header length (with the mask).
    head: usize,
    /// Payload length.
    len: usize,
}

/// Parses a client frame header; `None` if more bytes are needed.
fn parse_header(buf: &[u8], max: usize) -> Result<Option<Header>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let (len, off) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (u64::from_be_bytes(a), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > max as u64 {
        return Err(WsError::TooBig);
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Protocol); // a client's frames must be masked
    }
    let Some(m) = buf.get(off..off + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        rsv: b0 & 0x70,
        opcode: b0 & 0x0f,
        mask: [m[0], m[1], m[2], m[3]],
        head: off + 4,
        len: len as usize,
    }))
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

impl Decoder {
    /// Decodes `input` (bytes just read from the socket), calling `on_event` for every complete
    /// message or control frame, in order, until it returns [`Flow::Stop`]; the bytes after
    /// that frame are kept for the next call, so that the stream stays in step (a closing
    /// socket goes on reading until the client's close frame). `max` bounds a frame and a
    /// reassembled message. After an error the connection must be failed.
    pub(crate) fn feed(
        &mut self,
        input: &mut [u8],
        max: usize,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Flow, WsError> {
        if self.partial.is_empty() {
            let (used, flow) = self.decode(input, max, on_event)?;
            if used < input.len() {
                self.partial.extend_from_slice(&input[used..]);
            }
            return Ok(flow);
        }
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(input);
        let (used, flow) = self.decode(&mut buf, max, on_event)?;
        if used < buf.len() {
            buf.drain(..used);
            self.partial = buf;
        }
        Ok(flow)
    }

    /// Whether a frame has been started but not completed.
    #[cfg(test)]
    fn is_mid_frame(&self) -> bool {
        !self.partial.is_empty()
    }

    fn decode(
        &mut self,
        buf: &mut [u8],
        max: usize,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<(usize, Flow), WsError> {
        let mut pos = 0;
        loop {
            let rest = &mut buf[pos..];
            let Some(h) = parse_header(rest, max)? else {
                return Ok((pos, Flow::Continue));
            };
            if rest.len() < h.head + h.len {
                return Ok((pos, Flow::Continue));
            }
            let payload = &mut rest[h.head..h.head + h.len];
            unmask(payload, h.mask);
            pos += h.head + h.len;
            if self.frame(&h, payload, max, on_event)? == Flow::Stop {
                return Ok((pos, Flow::Stop));
            }
        }
    }

    fn frame(
        &mut self,
        h: &Header,
        payload: &[u8],
        max: usize,
        on_event: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Flow, WsError> {
        if h.rsv != 0 {
            return Err(WsError::Protocol);
        }
        if h.opcode >= 0x8 {
            if !h.fin || payload.len() > 125 {
                return Err(WsError::Protocol);
            }
            return Ok(on_event(match h.opcode {
                OP_CLOSE => match payload {
                    [] => Event::Close(None),
                    [_] => return Err(WsError::Protocol),
                    [a, b, reason @ ..] => {
                        let reason = std::str::from_utf8(reason).map_err(|_| WsError::Protocol)?;
                        Event::Close(Some((u16::from_be_bytes([*a, *b]), reason)))
                    }
                },
                OP_PING => Event::Ping(payload),
                OP_PONG => Event::Pong,
                _ => return Err(WsError::Protocol),
            }));
        }
        match (h.opcode, self.message.as_mut()) {
            (OP_CONTINUE, None) => Err(WsError::Protocol),
            (OP_CONTINUE, Some(m)) => {
                if m.data.len() + payload.len() > max {
                    return Err(WsError::TooBig);
                }
                m.data.extend_from_slice(payload);
                if !h.fin {
                    return Ok(Flow::Continue);
                }
                let Some(m) = self.message.take() else {
                    return Err(WsError::Protocol);
                };
                deliver(m.text, &m.data, on_event)
            }
            (OP_TEXT | OP_BINARY, Some(_)) => Err(WsError::Protocol),
            (OP_TEXT | OP_BINARY, None) => {
                let text = h.opcode == OP_TEXT;
                if h.fin {
                    return deliver(text, payload, on_event);
                }
                self.message = Some(Box::new(Fragments {
                    text,
                    data: payload.to_vec(),
                }));
                Ok(Flow::Continue)
            }
            _ => Err(WsError::Protocol),
        }
    }
}

fn deliver(
    text: bool,
    data: &[u8],
    on_event: &mut dyn FnMut(Event<'_>) -> Flow,
) -> Result<Flow, WsError> {
    if text {
        let t = std::str::from_utf8(data).map_err(|_| WsError::Protocol)?;
        Ok(on_event(Event::Text(t)))
    } else {
        Ok(on_event(Event::Binary(data)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![b0];
        if payload.len() < 126 {
            out.push(0x80 | payload.len() as u8);
        } else if payload.len() <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    /// Feeds `input` in pieces of `step` bytes; the events as owned strings.
    fn run(input: &[u8], step: usize, max: usize) -> (Vec<String>, Result<Flow, WsError>) {
        let mut d = Decoder::default();
        let mut seen = Vec::new();
        let mut last = Ok(Flow::Continue);
        for piece in input.chunks(step) {
            let mut piece = piece.to_vec();
            last = d.feed(&mut piece, max, &mut |e| {
                seen.push(format!("{e:?}"));
                if matches!(e, Event::Close(_)) {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            });
            if last != Ok(Flow::Continue) {
                break;
            }
        }
        (seen, last)
    }

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let mut input = client_frame(0x81, br#"{"type":"HEARTBEAT"}"#);
        input.extend(client_frame(0x89, b"hi"));
        input.extend(client_frame(0x82, &[b'x'; 300]));
        input.extend(client_frame(0x01, b"ab"));
        input.extend(client_frame(0x8A, b""));
        input.extend(client_frame(0x80, "cé".as_bytes()));
        input.extend(client_frame(0x88, &[0x03, 0xe8, b'o', b'k']));
        input.extend(client_frame(0x81, b"after close: dropped"));
        let want = vec![
            r#"Text("{\"type\":\"HEARTBEAT\"}")"#.to_string(),
            "Ping([104, 105])".into(),
            format!("Binary({:?})", vec![b'x'; 300]),
            "Pong".into(),
            r#"Text("abcé")"#.into(),
            r#"Close(Some((1000, "ok")))"#.into(),
        ];
        for step in [1, 2, 3, 7, 64, 1000] {
            let (seen, last) = run(&input, step, 1000);
            assert_eq!(seen, want, "step {step}");
            assert_eq!(last, Ok(Flow::Stop), "step {step}");
        }
    }

    #[test]
    fn bytes_after_a_stop_are_decoded_next_time() {
        let mut input = client_frame(0x81, b"one");
        input.extend(client_frame(0x81, b"two"));
        input.extend(client_frame(0x81, b"three"));
        let cut = input.len() - 3; // "three" split across two reads
        let mut d = Decoder::default();
        let mut seen = Vec::new();
        let flow = d.feed(&mut input[..cut].to_vec(), 100, &mut |e| {
            seen.push(format!("{e:?}"));
            Flow::Stop
        });
        assert_eq!(flow, Ok(Flow::Stop));
        for piece in [&input[..0], &input[cut..]] {
            let flow = d.feed(&mut piece.to_vec(), 100, &mut |e| {
                seen.push(format!("{e:?}"));
                Flow::Continue
            });
            assert_eq!(flow, Ok(Flow::Continue));
        }
        assert_eq!(
            seen,
            [r#"Text("one")"#, r#"Text("two")"#, r#"Text("three")"#]
        );
    }

    #[test]
    fn protocol_errors() {
        let unmasked = vec![0x81, 0x01, b'a'];
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked),
            ("reserved bit", client_frame(0xC1, b"a")),
            ("unknown data opcode", client_frame(0x83, b"a")),
            ("unknown control opcode", client_frame(0x8B, b"")),
            ("fragmented control", client_frame(0x09, b"")),
            ("control too long", client_frame(0x89, &[0; 126])),
            ("continuation first", client_frame(0x80, b"a")),
            ("bad utf-8", client_frame(0x81, &[0xff])),
            ("close of one byte", client_frame(0x88, &[3])),
            (
                "close reason not utf-8",
                client_frame(0x88, &[3, 232, 0xff]),
            ),
            ("data inside a fragmented message", {
                let mut v = client_frame(0x01, b"a");
                v.extend(client_frame(0x81, b"b"));
                v
            }),
        ];
        for (what, input) in cases {
            assert_eq!(run(&input, 1000, 1000).1, Err(WsError::Protocol), "{what}");
        }
    }

    #[test]
    fn size_limits() {
        // A frame above the limit fails on its header, before its payload arrives.
        let big = client_frame(0x81, &[b'a'; 70_000]);
        assert_eq!(run(&big[..14], 1000, 65_536).1, Err(WsError::TooBig));
        assert_eq!(run(&big, 100_000, 100_000).0.len(), 1);
        // A fragmented message above the limit, though each frame is within it.
        let mut frag = client_frame(0x01, &[b'a'; 600]);
        frag.extend(client_frame(0x80, &[b'a'; 600]));
        assert_eq!(run(&frag, 1000, 1000).1, Err(WsError::TooBig));
        assert_eq!(run(&frag, 1000, 1200).0.len(), 1);
    }

    #[test]
    fn decoder_holds_nothing_between_whole_frames() {
        let mut d = Decoder::default();
        let mut input = client_frame(0x81, b"one");
        let half = input.len() / 2;
        assert_eq!(
            d.feed(&mut input[..half], 100, &mut |_| Flow::Continue),
            Ok(Flow::Continue)
        );
        assert!(d.is_mid_frame());
        assert_eq!(
            d.feed(&mut input[half..], 100, &mut |_| Flow::Continue),
            Ok(Flow::Continue)
        );
        assert!(!d.is_mid_frame());
        assert_eq!(d.partial.capacity(), 0);
    }

    #[test]
    fn server_frames() {
        let mut out = Vec::new();
        push_frame(&mut out, OP_TEXT, b"hi");
        assert_eq!(out, [0x81, 2, b'h', b'i']);
        out.clear();
        push_header(&mut out, OP_TEXT, 300);
        assert_eq!(out, [0x81, 126, 1, 44]);
        out.clear();
        push_header(&mut out, OP_TEXT, 70_000);
        assert_eq!(out, [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        out.clear();
        push_close(&mut out, Some((1009, "x")));
        assert_eq!(out, [0x88, 3, 0x03, 0xf1, b'x']);
        assert!(close_code_allowed(1000) && close_code_allowed(4999));
        assert!(!close_code_allowed(1005) && !close_code_allowed(1014) && !close_code_allowed(999));
    }
}
