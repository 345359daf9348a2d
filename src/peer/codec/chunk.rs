//! peerjs's BinaryPack chunking and a bounded reassembler.
//!
//! # Format
//! A packed message longer than [`CHUNKED_MTU`] is cut into 16300-byte slices, each sent as
//! the packed map `{"__peerData": id, "n": index, "data": slice, "total": count}` (keys in
//! this order; `id` is a per-connection counter starting at 1). The receiver unpacks every
//! frame; a top-level map whose `__peerData` is truthy is a control message:
//! `{type: "close"}` closes, anything else is a chunk. When all `total` chunks of an id are
//! there, they are concatenated in index order and the result is handled again (it may in
//! turn be a close or a chunk, as in peerjs).
//!
//! # Limits
//! `total` must be in `1..=max_chunks` (enough 16300-byte chunks for `max_message_size`),
//! `n < total`, the same `total` on every chunk, no duplicate `n`, at most
//! `max_partial_messages` ids in progress, at most `max_message_size` bytes per message and
//! `max_partial_bytes` across all of them. Memory grows only with data actually received.
//!
//! # Retained bytes
//! A chunk's `data` is a zero-copy slice of the frame it came in, and a slice keeps its whole
//! frame alive: a 1-byte chunk padded to a 256 KiB frame (BinaryPack ignores trailing bytes)
//! would pin 256 KiB while counting 1. So a slice smaller than half its frame is copied out
//! (it then retains its own length), and a larger one is kept and charged its frame's length.
//! `max_partial_bytes` bounds these charged (retained) bytes, never just the data lengths.

use super::binarypack::{pack_bin, pack_i64, pack_str, unpack};
use super::{CHUNKED_MTU, CodecError, Decoded, DecoderLimits, Frame, Value, is_close, peer_data};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap};

/// Cuts a packed message into chunk frames for message `id`.
pub(crate) fn split(id: u64, packed: &Bytes) -> Vec<Frame> {
    let total = packed.len().div_ceil(CHUNKED_MTU);
    let id = i64::try_from(id).unwrap_or(i64::MAX);
    packed
        .chunks(CHUNKED_MTU)
        .enumerate()
        .map(|(n, data)| {
            let mut out = Vec::with_capacity(data.len() + 40);
            out.push(0x84);
            pack_str(&mut out, "__peerData");
            pack_i64(&mut out, id);
            pack_str(&mut out, "n");
            pack_i64(&mut out, n as i64);
            pack_str(&mut out, "data");
            pack_bin(&mut out, data);
            pack_str(&mut out, "total");
            pack_i64(&mut out, total as i64);
            Frame::Binary(out.into())
        })
        .collect()
}

/// One chunked message being received.
#[derive(Debug)]
struct Partial {
    /// Chunk count announced by the first chunk.
    total: u32,
    /// Chunks received so far, by index (grows only with received data).
    chunks: BTreeMap<u32, Bytes>,
    /// Bytes of data in `chunks` (the message's size so far).
    bytes: usize,
    /// Bytes `chunks` keep alive (see "Retained bytes" in the module docs).
    retained: usize,
    /// When the message started (eviction order: oldest first).
    seq: u64,
}

/// Reassembles chunked BinaryPack messages of one connection.
#[derive(Debug, Default)]
pub(crate) struct Reassembler {
    /// Partial messages by `__peerData` id.
    partials: HashMap<i64, Partial>,
    /// Bytes retained across all partial messages.
    bytes: usize,
    /// Sequence number for the next new partial message.
    next_seq: u64,
    /// Partial messages dropped to make room.
    evicted: u64,
}

impl Reassembler {
    pub(crate) fn partial_messages(&self) -> usize {
        self.partials.len()
    }

    /// Partial messages dropped so far to make room for newer ones.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Bytes retained by partial messages.
    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> usize {
        self.bytes
    }

    /// Handles one packed frame: returns the message or close it completes, if any.
    pub(crate) fn handle(
        &mut self,
        frame: Bytes,
        limits: &DecoderLimits,
    ) -> Result<Option<Decoded>, CodecError> {
        let mut packed = frame;
        // A loop, not recursion: a reassembled message may itself be a chunk.
        loop {
            let value = unpack(&packed, limits)?;
            let Some(pd) = peer_data(&value).filter(|v| v.is_truthy()) else {
                return Ok(Some(Decoded::Message(value)));
            };
            if is_close(pd) {
                return Ok(Some(Decoded::Close));
            }
            let frame_len = packed.len();
            match self.add_chunk(&value, frame_len, limits)? {
                Some(whole) => packed = whole,
                None => return Ok(None),
            }
        }
    }

    /// Stores one chunk that came in a frame of `frame_len` bytes; returns the concatenated
    /// message when it was the last one.
    fn add_chunk(
        &mut self,
        chunk: &Value,
        frame_len: usize,
        limits: &DecoderLimits,
    ) -> Result<Option<Bytes>, CodecError> {
        let id = chunk
            .get("__peerData")
            .and_then(Value::as_i64)
            .ok_or(CodecError::InvalidChunk("__peerData is not an integer id"))?;
        let fields = (|| {
            let total =
                chunk
                    .get("total")
                    .and_then(Value::as_u64)
                    .ok_or(CodecError::InvalidChunk(
                        "total is not a non-negative integer",
                    ))?;
            if total == 0 || total > limits.max_chunks() as u64 {
                return Err(CodecError::InvalidChunk("total is 0 or above the limit"));
            }
            let n = chunk
                .get("n")
                .and_then(Value::as_u64)
                .ok_or(CodecError::InvalidChunk("n is not a non-negative integer"))?;
            if n >= total {
                return Err(CodecError::InvalidChunk("n is not below total"));
            }
            let data = chunk
                .get("data")
                .and_then(Value::as_bytes)
                .ok_or(CodecError::InvalidChunk("data is not binary"))?;
            Ok((total as u32, n as u32, data.clone()))
        })();
        let (total, n, data) = match fields {
            Ok(f) => f,
            Err(e) => {
                self.drop_partial(id);
                return Err(e);
            }
        };

        // Checks against the partial message of this id, if any.
        if let Some(partial) = self.partials.get(&id) {
            let problem = if partial.total != total {
                Some(CodecError::InvalidChunk(
                    "total differs from earlier chunks",
                ))
            } else if partial.chunks.contains_key(&n) {
                Some(CodecError::InvalidChunk("duplicate chunk index"))
            } else {
                None
            };
            if let Some(e) = problem {
                self.drop_partial(id);
                return Err(e);
            }
        }
        // A small slice is copied out; a large one keeps its frame and is charged for it.
        let (data, retained) = if data.len().saturating_mul(2) < frame_len {
            let len = data.len();
            (Bytes::copy_from_slice(&data), len)
        } else {
            (data, frame_len)
        };
        let (own, own_retained) = self
            .partials
            .get(&id)
            .map_or((0, 0), |p| (p.bytes, p.retained));
        if own + data.len() > limits.max_message_size
            || own_retained + retained > limits.max_partial_bytes
        {
            self.drop_partial(id);
            return Err(CodecError::MessageTooBig {
                size: own + data.len(),
                limit: limits.max_message_size.min(limits.max_partial_bytes),
            });
        }
        // Make room by evicting the oldest other partial messages: a message whose chunk was
        // lost (or a peer that never finishes) cannot block the connection for good.
        while (!self.partials.contains_key(&id)
            && self.partials.len() >= limits.max_partial_messages)
            || self.bytes + retained > limits.max_partial_bytes
        {
            let Some(oldest) = self
                .partials
                .iter()
                .filter(|(other, _)| **other != id)
                .min_by_key(|(_, p)| p.seq)
                .map(|(other, _)| *other)
            else {
                break;
            };
            tracing::debug!(
                id = oldest,
                "dropping the oldest partial chunked message to make room"
            );
            self.drop_partial(oldest);
            self.evicted += 1;
        }
        if !self.partials.contains_key(&id) && self.partials.len() >= limits.max_partial_messages {
            // Only possible with max_partial_messages == 0.
            return Err(CodecError::TooManyPartials {
                messages: self.partials.len(),
                bytes: self.bytes,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let partial = self.partials.entry(id).or_insert_with(|| Partial {
            total,
            chunks: BTreeMap::new(),
            bytes: 0,
            retained: 0,
            seq,
        });
        partial.bytes += data.len();
        partial.retained += retained;
        self.bytes += retained;
        partial.chunks.insert(n, data);
        if partial.chunks.len() < partial.total as usize {
            return Ok(None);
        }
        let partial = self
            .partials
            .remove(&id)
            .expect("the partial message was just updated");
        self.bytes -= partial.retained;
        let mut whole = BytesMut::with_capacity(partial.bytes);
        for data in partial.chunks.values() {
            whole.extend_from_slice(data);
        }
        Ok(Some(whole.freeze()))
    }

    fn drop_partial(&mut self, id: i64) {
        if let Some(p) = self.partials.remove(&id) {
            self.bytes -= p.retained;
        }
    }
}
