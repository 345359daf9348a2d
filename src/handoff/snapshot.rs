//! [`PreparedSnapshot`]: a relay snapshot with its digests, whole and per chunk, made by
//! the shell off the async threads (hashing a large store takes a while, on two threads)
//! and handed to the sans-IO [`Predecessor`](super::Predecessor), which sends it chunk by
//! chunk without holding it whole.

use super::sha256_hex;
use crate::relay::{JsonCursor, SnapshotJson};
use sha2::{Digest, Sha256};

/// A snapshot being sent: its source and digests.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub(super) source: Source,
    pub(super) sha256: String,
    pub(super) chunks: u32,
    /// SHA-256 of every chunk, computed once.
    pub(super) chunk_sha256: Vec<String>,
}

/// Where a snapshot's bytes come from.
#[derive(Debug)]
pub(super) enum Source {
    /// One buffer.
    Bytes(Vec<u8>),
    /// Written chunk by chunk from the relay's messages when sent; `starts[i]` is where
    /// chunk `i` begins.
    Json {
        json: SnapshotJson,
        starts: Vec<JsonCursor>,
    },
}

impl Source {
    pub(super) fn len(&self) -> u64 {
        match self {
            Source::Bytes(b) => b.len() as u64,
            Source::Json { json, .. } => json.len(),
        }
    }

    /// Chunk `index` of `chunk_size` bytes (the last one may be shorter).
    pub(super) fn chunk(&self, index: u32, chunk_size: usize) -> Vec<u8> {
        match self {
            Source::Bytes(b) => {
                let start = (index as usize * chunk_size).min(b.len());
                let end = (start + chunk_size).min(b.len());
                b[start..end].to_vec()
            }
            Source::Json { json, starts } => {
                let mut out = Vec::with_capacity(chunk_size);
                if let Some(at) = starts.get(index as usize) {
                    json.write(*at, chunk_size, &mut out);
                }
                out
            }
        }
    }
}

/// A snapshot with its digests (whole and per chunk), prepared off the async threads
/// for [`Predecessor::provide_snapshot`](super::Predecessor::provide_snapshot): hashing a large snapshot takes a while.
#[derive(Debug)]
pub struct PreparedSnapshot {
    pub(super) source: Source,
    chunk_size: usize,
    pub(super) sha256: String,
    pub(super) chunk_sha256: Vec<String>,
}

impl PreparedSnapshot {
    /// Hashes `bytes` whole and in `chunk_size` pieces, on two threads.
    pub fn new(bytes: Vec<u8>, chunk_size: usize) -> PreparedSnapshot {
        let chunk_size = chunk_size.max(1);
        let (sha256, chunk_sha256) = std::thread::scope(|scope| {
            let whole = scope.spawn(|| sha256_hex(&bytes));
            let chunks: Vec<String> = bytes.chunks(chunk_size).map(sha256_hex).collect();
            (whole.join().expect("hashing does not panic"), chunks)
        });
        PreparedSnapshot {
            source: Source::Bytes(bytes),
            chunk_size,
            sha256,
            chunk_sha256,
        }
    }

    /// Hashes `json` whole and in `chunk_size` pieces, on two threads, writing it twice
    /// through a reused chunk buffer instead of holding it whole; chunks are written
    /// again when they are sent. (The store's text is copied, never re-encoded, so
    /// writing costs little next to hashing, and no fresh memory is touched.)
    pub fn from_json(json: SnapshotJson, chunk_size: usize) -> PreparedSnapshot {
        let chunk_size = chunk_size.max(1);
        let pieces = |on_piece: &mut dyn FnMut(JsonCursor, &[u8])| {
            let mut buf = Vec::with_capacity(chunk_size);
            let mut at = json.start();
            loop {
                buf.clear();
                let next = json.write(at, chunk_size, &mut buf);
                if buf.is_empty() {
                    break;
                }
                on_piece(at, &buf);
                at = next;
            }
        };
        let (sha256, (starts, chunk_sha256)) = std::thread::scope(|scope| {
            let whole = scope.spawn(|| {
                let mut h = Sha256::new();
                pieces(&mut |_, b| h.update(b));
                hex::encode(h.finalize())
            });
            let mut starts = Vec::new();
            let mut hashes = Vec::new();
            pieces(&mut |at, b| {
                starts.push(at);
                hashes.push(sha256_hex(b));
            });
            (
                whole.join().expect("hashing does not panic"),
                (starts, hashes),
            )
        });
        PreparedSnapshot {
            source: Source::Json { json, starts },
            chunk_size,
            sha256,
            chunk_sha256,
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.source.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same snapshot with digests for `chunk_size` (recomputed on this thread, with
    /// no helper thread, only if it differs).
    pub(super) fn rechunk(self, chunk_size: usize) -> PreparedSnapshot {
        let chunk_size = chunk_size.max(1);
        if chunk_size == self.chunk_size {
            return self;
        }
        let bytes = self.into_bytes();
        PreparedSnapshot {
            sha256: sha256_hex(&bytes),
            chunk_sha256: bytes.chunks(chunk_size).map(sha256_hex).collect(),
            source: Source::Bytes(bytes),
            chunk_size,
        }
    }

    /// The whole snapshot as one buffer.
    pub fn into_bytes(self) -> Vec<u8> {
        match self.source {
            Source::Bytes(b) => b,
            Source::Json { json, .. } => json.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::{ConnId, ConnInfo, Relay, RelayConfig};
    use serde_json::json;
    use std::time::Instant;

    #[test]
    fn a_snapshot_written_chunk_by_chunk_matches_its_buffer() {
        let now = Instant::now();
        let mut relay = Relay::new(RelayConfig::new("n", 1), now);
        let info = ConnInfo {
            peer_id: "p".into(),
            metadata: json!({"protocol": "ouroboros/1", "client": "al\"ice"}),
        };
        relay.connect(now, ConnId(1), info);
        for i in 0..200u64 {
            let body = json!({"i": i, "s": "é\"\n".repeat(i as usize % 5)});
            let room = format!("room-{}", i % 3);
            let msg = json!({"op":"publish","room":room,"id":format!("m{i}"),"body":body});
            relay.handle_message(now, 1000 + i, ConnId(1), msg);
        }
        while relay.poll_output().is_some() {}
        let snap = relay.export_snapshot();
        assert_eq!(snap.messages.len(), 200);
        let bytes = snap.to_json();
        for chunk_size in [1, 100, 4096, bytes.len(), bytes.len() + 1] {
            let a = PreparedSnapshot::new(bytes.clone(), chunk_size);
            let b = PreparedSnapshot::from_json(SnapshotJson::new(snap.clone()), chunk_size);
            assert_eq!(a.sha256, b.sha256);
            assert_eq!(a.chunk_sha256, b.chunk_sha256);
            assert_eq!(a.len(), b.len());
            let chunks = bytes.len().div_ceil(chunk_size) as u32;
            assert_eq!(b.chunk_sha256.len(), chunks as usize);
            for i in (0..chunks).step_by(13).chain([chunks - 1]) {
                assert_eq!(
                    a.source.chunk(i, chunk_size),
                    b.source.chunk(i, chunk_size),
                    "chunk {i} of {chunk_size}"
                );
            }
            assert_eq!(b.into_bytes(), bytes);
        }
    }
}
