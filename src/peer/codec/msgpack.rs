//! The `MsgPack` serialization: standard MessagePack, as `@msgpack/msgpack` 2.8's
//! `Encoder` (default options) writes it, sent as a byte stream.
//!
//! # Format
//! Each message is encoded on its own and cut into frames of at most 32768 bytes (two
//! messages never share a frame when we send). The receiver treats all frames as one
//! stream: a value may span frames and a frame may hold several values.
//!
//! The stream decoder first *skims* the buffered bytes (headers only, resumable, with an
//! explicit stack, so every byte is looked at once however the value is split into
//! frames), then builds the [`Value`] once the whole value is there. Limits: the bytes of
//! one incomplete value (`max_message_size`), nesting (`max_depth`), values per message
//! (`max_values`). A malformed stream cannot be resynchronised: the decoder then fails for
//! good ([`CodecError::StreamFailed`]), as `decodeMultiStream` stops in peerjs.

use super::{CodecError, DecoderLimits, Value};
use bytes::{Bytes, BytesMut};

/// Deepest nesting the encoder accepts (guards the stack against hand-built values).
const MAX_ENCODE_DEPTH: usize = 1024;

/// Largest integer JavaScript treats as a "safe integer" (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// Encodes one value.
///
/// Numbers: `Int`/`UInt` use the smallest integer form (as `@msgpack/msgpack` does for safe
/// integers; beyond ±(2⁵³−1) we keep them exact as `cf`/`d3` where JS would send a
/// float64); a `Float` holding a safe integer is encoded as that integer (JS semantics,
/// `-0` → `00`); other floats as float64 `cb` (NaN as `7ff8…`).
pub(crate) fn encode(value: &Value) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    encode_into(&mut out, value, 0)?;
    Ok(out)
}

fn encode_into(out: &mut Vec<u8>, value: &Value, depth: usize) -> Result<(), CodecError> {
    if depth > MAX_ENCODE_DEPTH {
        return Err(CodecError::TooDeep(MAX_ENCODE_DEPTH));
    }
    match value {
        Value::Null | Value::Undefined => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Int(i) => encode_int(out, *i),
        Value::UInt(u) => match i64::try_from(*u) {
            Ok(i) => encode_int(out, i),
            Err(_) => {
                out.push(0xcf);
                out.extend_from_slice(&u.to_be_bytes());
            }
        },
        Value::Float(f) => {
            if f.fract() == 0.0 && f.abs() <= MAX_SAFE_INTEGER {
                encode_int(out, *f as i64);
            } else {
                let bits = if f.is_nan() {
                    0x7ff8_0000_0000_0000
                } else {
                    f.to_bits()
                };
                out.push(0xcb);
                out.extend_from_slice(&bits.to_be_bytes());
            }
        }
        Value::Str(s) => {
            let n = s.len();
            if n < 32 {
                out.push(0xa0 | n as u8);
            } else {
                write_len(out, n, [0xd9, 0xda, 0xdb]);
            }
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bin(b) => {
            write_len(out, b.len(), [0xc4, 0xc5, 0xc6]);
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            if items.len() < 16 {
                out.push(0x90 | items.len() as u8);
            } else {
                write_len16(out, items.len(), [0xdc, 0xdd]);
            }
            for item in items {
                encode_into(out, item, depth + 1)?;
            }
        }
        Value::Map(entries) => {
            if entries.len() < 16 {
                out.push(0x80 | entries.len() as u8);
            } else {
                write_len16(out, entries.len(), [0xde, 0xdf]);
            }
            for (k, v) in entries {
                encode_into(out, k, depth + 1)?;
                encode_into(out, v, depth + 1)?;
            }
        }
        Value::Ext(ty, data) => {
            match data.len() {
                1 => out.push(0xd4),
                2 => out.push(0xd5),
                4 => out.push(0xd6),
                8 => out.push(0xd7),
                16 => out.push(0xd8),
                n => write_len(out, n, [0xc7, 0xc8, 0xc9]),
            }
            out.push(*ty as u8);
            out.extend_from_slice(data);
        }
    }
    Ok(())
}

/// `encodeNumber` for a safe integer (and, beyond, the exact 64-bit forms).
fn encode_int(out: &mut Vec<u8>, i: i64) {
    if i >= 0 {
        if i < 0x80 {
            out.push(i as u8);
        } else if i < 0x100 {
            out.extend_from_slice(&[0xcc, i as u8]);
        } else if i < 0x10000 {
            out.push(0xcd);
            out.extend_from_slice(&(i as u16).to_be_bytes());
        } else if i < 0x1_0000_0000 {
            out.push(0xce);
            out.extend_from_slice(&(i as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(i as u64).to_be_bytes());
        }
    } else if i >= -0x20 {
        out.push(i as u8);
    } else if i >= -0x80 {
        out.extend_from_slice(&[0xd0, i as u8]);
    } else if i >= -0x8000 {
        out.push(0xd1);
        out.extend_from_slice(&(i as i16).to_be_bytes());
    } else if i >= -0x8000_0000 {
        out.push(0xd2);
        out.extend_from_slice(&(i as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&i.to_be_bytes());
    }
}

/// A length with 8/16/32-bit forms.
fn write_len(out: &mut Vec<u8>, n: usize, tags: [u8; 3]) {
    if n < 0x100 {
        out.extend_from_slice(&[tags[0], n as u8]);
    } else {
        write_len16(out, n, [tags[1], tags[2]]);
    }
}

/// A length with 16/32-bit forms (lengths beyond u32 cannot occur in a DataChannel
/// message; saturate rather than panic).
fn write_len16(out: &mut Vec<u8>, n: usize, tags: [u8; 2]) {
    if n < 0x10000 {
        out.push(tags[0]);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(tags[1]);
        out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
    }
}

/// The receiving side of a msgpack stream.
#[derive(Debug, Default)]
pub(crate) struct StreamDecoder {
    /// Received bytes not yet decoded (starts at the current value).
    buf: BytesMut,
    /// Bytes of the current value skimmed so far.
    pos: usize,
    /// Items still expected by each open array/map of the current value.
    stack: Vec<u64>,
    /// Values seen in the current value.
    values: usize,
    /// Set after a malformed stream.
    failed: bool,
}

/// What a type byte announces.
struct Header {
    /// Bytes of the header (type byte included).
    len: usize,
    /// Payload bytes after the header.
    payload: u64,
    /// Child values (map entries count twice).
    children: u64,
}

/// Parses the header at the start of `b`; `Ok(None)` if more bytes are needed.
fn header(b: &[u8]) -> Result<Option<Header>, CodecError> {
    let Some(&t) = b.first() else {
        return Ok(None);
    };
    let be = |from: usize, n: usize| -> Option<u64> {
        let s = b.get(from..from + n)?;
        Some(s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    let h = |len, payload, children| Header {
        len,
        payload,
        children,
    };
    Ok(Some(match t {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => h(1, 0, 0),
        0x80..=0x8f => h(1, 0, 2 * u64::from(t & 0x0f)),
        0x90..=0x9f => h(1, 0, u64::from(t & 0x0f)),
        0xa0..=0xbf => h(1, u64::from(t & 0x1f), 0),
        0xc1 => return Err(CodecError::Malformed("reserved msgpack type byte 0xc1")),
        0xc4 | 0xd9 => match be(1, 1) {
            Some(n) => h(2, n, 0),
            None => return Ok(None),
        },
        0xc5 | 0xda => match be(1, 2) {
            Some(n) => h(3, n, 0),
            None => return Ok(None),
        },
        0xc6 | 0xdb => match be(1, 4) {
            Some(n) => h(5, n, 0),
            None => return Ok(None),
        },
        // ext 8/16/32: length, then the type byte.
        0xc7 => match be(1, 1) {
            Some(n) => h(3, n, 0),
            None => return Ok(None),
        },
        0xc8 => match be(1, 2) {
            Some(n) => h(4, n, 0),
            None => return Ok(None),
        },
        0xc9 => match be(1, 4) {
            Some(n) => h(6, n, 0),
            None => return Ok(None),
        },
        0xca | 0xce | 0xd2 => h(1, 4, 0),
        0xcb | 0xcf | 0xd3 => h(1, 8, 0),
        0xcc | 0xd0 => h(1, 1, 0),
        0xcd | 0xd1 => h(1, 2, 0),
        0xd4 => h(2, 1, 0),
        0xd5 => h(2, 2, 0),
        0xd6 => h(2, 4, 0),
        0xd7 => h(2, 8, 0),
        0xd8 => h(2, 16, 0),
        0xdc => match be(1, 2) {
            Some(n) => h(3, 0, n),
            None => return Ok(None),
        },
        0xdd => match be(1, 4) {
            Some(n) => h(5, 0, n),
            None => return Ok(None),
        },
        0xde => match be(1, 2) {
            Some(n) => h(3, 0, 2 * n),
            None => return Ok(None),
        },
        0xdf => match be(1, 4) {
            Some(n) => h(5, 0, 2 * n),
            None => return Ok(None),
        },
    }))
}

impl StreamDecoder {
    /// Appends one frame to the stream; returns the values it completed, in order.
    pub(crate) fn feed(
        &mut self,
        frame: &[u8],
        limits: &DecoderLimits,
    ) -> Result<Vec<Value>, CodecError> {
        if self.failed {
            return Err(CodecError::StreamFailed);
        }
        self.buf.extend_from_slice(frame);
        let mut out = Vec::new();
        loop {
            match self.skim(limits) {
                Ok(Some(end)) => {
                    let bytes = self.buf.split_to(end).freeze();
                    self.pos = 0;
                    self.values = 0;
                    let mut p = Parser {
                        input: &bytes,
                        pos: 0,
                    };
                    match p.value(0, limits.max_depth) {
                        Ok(v) => out.push(v),
                        Err(e) => return Err(self.fail(e)),
                    }
                }
                Ok(None) => return Ok(out),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    fn fail(&mut self, e: CodecError) -> CodecError {
        self.failed = true;
        self.buf = BytesMut::new();
        self.stack = Vec::new();
        e
    }

    /// Advances over whole headers+payloads; `Some(end)` when the current value ends there.
    fn skim(&mut self, limits: &DecoderLimits) -> Result<Option<usize>, CodecError> {
        loop {
            let Some(h) = header(&self.buf[self.pos..])? else {
                return self.incomplete(self.buf.len(), limits);
            };
            let end = (self.pos as u64)
                .saturating_add(h.len as u64)
                .saturating_add(h.payload);
            if end > self.buf.len() as u64 {
                return self.incomplete(usize::try_from(end).unwrap_or(usize::MAX), limits);
            }
            self.values += 1;
            if self.values > limits.max_values {
                return Err(CodecError::TooManyValues(limits.max_values));
            }
            self.pos = end as usize;
            if h.children > 0 {
                if self.stack.len() >= limits.max_depth {
                    return Err(CodecError::TooDeep(limits.max_depth));
                }
                self.stack.push(h.children);
                continue;
            }
            // A value completed: close every container it completes.
            loop {
                match self.stack.last_mut() {
                    None => return Ok(Some(self.pos)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.stack.pop();
                    }
                }
            }
        }
    }

    /// The current value needs at least `needed` bytes: wait, unless that is over the limit.
    fn incomplete(
        &self,
        needed: usize,
        limits: &DecoderLimits,
    ) -> Result<Option<usize>, CodecError> {
        if needed > limits.max_message_size {
            return Err(CodecError::MessageTooBig {
                size: needed,
                limit: limits.max_message_size,
            });
        }
        Ok(None)
    }
}

/// Builds the value of a complete (skimmed) byte range.
struct Parser<'a> {
    input: &'a Bytes,
    pos: usize,
}

impl Parser<'_> {
    fn take(&mut self, n: u64) -> Result<&[u8], CodecError> {
        let n = usize::try_from(n).map_err(|_| CodecError::Truncated("msgpack value"))?;
        if n > self.input.len() - self.pos {
            return Err(CodecError::Truncated("msgpack value"));
        }
        let s = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn uint(&mut self, n: u64) -> Result<u64, CodecError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn bytes(&mut self, n: u64) -> Result<Bytes, CodecError> {
        let start = self.pos;
        self.take(n)?;
        Ok(self.input.slice(start..self.pos))
    }

    fn string(&mut self, n: u64) -> Result<Value, CodecError> {
        let b = self.take(n)?;
        Ok(Value::Str(String::from_utf8_lossy(b).into_owned()))
    }

    fn ext(&mut self, n: u64) -> Result<Value, CodecError> {
        let ty = self.uint(1)? as u8 as i8;
        Ok(Value::Ext(ty, self.bytes(n)?))
    }

    fn value(&mut self, depth: usize, max_depth: usize) -> Result<Value, CodecError> {
        let t = self.uint(1)? as u8;
        Ok(match t {
            0x00..=0x7f => Value::Int(i64::from(t)),
            0xe0..=0xff => Value::Int(i64::from(t as i8)),
            0x80..=0x8f => self.map(u64::from(t & 0x0f), depth, max_depth)?,
            0x90..=0x9f => self.array(u64::from(t & 0x0f), depth, max_depth)?,
            0xa0..=0xbf => self.string(u64::from(t & 0x1f))?,
            0xc0 => Value::Null,
            0xc1 => return Err(CodecError::Malformed("reserved msgpack type byte 0xc1")),
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let n = self.uint(1)?;
                Value::Bin(self.bytes(n)?)
            }
            0xc5 => {
                let n = self.uint(2)?;
                Value::Bin(self.bytes(n)?)
            }
            0xc6 => {
                let n = self.uint(4)?;
                Value::Bin(self.bytes(n)?)
            }
            0xc7 => {
                let n = self.uint(1)?;
                self.ext(n)?
            }
            0xc8 => {
                let n = self.uint(2)?;
                self.ext(n)?
            }
            0xc9 => {
                let n = self.uint(4)?;
                self.ext(n)?
            }
            0xca => Value::Float(f64::from(f32::from_bits(self.uint(4)? as u32))),
            0xcb => Value::Float(f64::from_bits(self.uint(8)?)),
            0xcc => Value::Int(self.uint(1)? as i64),
            0xcd => Value::Int(self.uint(2)? as i64),
            0xce => Value::Int(self.uint(4)? as i64),
            0xcf => Value::from(self.uint(8)?),
            0xd0 => Value::Int(i64::from(self.uint(1)? as u8 as i8)),
            0xd1 => Value::Int(i64::from(self.uint(2)? as u16 as i16)),
            0xd2 => Value::Int(i64::from(self.uint(4)? as u32 as i32)),
            0xd3 => Value::Int(self.uint(8)? as i64),
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let n = self.uint(1)?;
                self.string(n)?
            }
            0xda => {
                let n = self.uint(2)?;
                self.string(n)?
            }
            0xdb => {
                let n = self.uint(4)?;
                self.string(n)?
            }
            0xdc => {
                let n = self.uint(2)?;
                self.array(n, depth, max_depth)?
            }
            0xdd => {
                let n = self.uint(4)?;
                self.array(n, depth, max_depth)?
            }
            0xde => {
                let n = self.uint(2)?;
                self.map(n, depth, max_depth)?
            }
            0xdf => {
                let n = self.uint(4)?;
                self.map(n, depth, max_depth)?
            }
        })
    }

    fn array(&mut self, n: u64, depth: usize, max_depth: usize) -> Result<Value, CodecError> {
        if depth >= max_depth {
            return Err(CodecError::TooDeep(max_depth));
        }
        let remaining = (self.input.len() - self.pos) as u64;
        if n > remaining {
            return Err(CodecError::Truncated("msgpack array"));
        }
        let mut items = Vec::with_capacity(n as usize);
        for _ in 0..n {
            items.push(self.value(depth + 1, max_depth)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: u64, depth: usize, max_depth: usize) -> Result<Value, CodecError> {
        if depth >= max_depth {
            return Err(CodecError::TooDeep(max_depth));
        }
        let remaining = (self.input.len() - self.pos) as u64;
        if n.saturating_mul(2) > remaining {
            return Err(CodecError::Truncated("msgpack map"));
        }
        let mut entries = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = self.value(depth + 1, max_depth)?;
            let v = self.value(depth + 1, max_depth)?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}
