//! Snapshots as they are held and as they travel (`protocol/replication.md`, "Snapshots").
//!
//! - **The sealed format**: `OUROSNP2` (8 bytes), the SHA-256 of everything after the first
//!   40 bytes (32 bytes), then the state's JSON ([`RoomLogs`](super::RoomLogs)). [`seal`] writes
//!   it without copying the body; [`open`] checks it (a snapshot of the first format, bare JSON,
//!   is still read: [`Opened::Legacy`]).
//! - **[`SnapshotBytes`]**: openraft's snapshot data. A built or installed snapshot is one
//!   [`Bytes`] shared by every reader (each member sending it to a learner reads the same
//!   buffer; nothing is copied per send); a snapshot being received is a `Vec` written chunk by
//!   chunk, frozen into `Bytes` when installed.
//! - **The chunk envelope** of the `snapshot` call: a length-prefixed JSON header and the
//!   chunk's raw bytes ([`encode_chunk`], [`decode_chunk`]), instead of openraft's serde form
//!   whose `data` is a JSON array of numbers (3–4 bytes on the wire per byte).
//! - **[`ChunkCheck`]**: the receiver hashes the chunks of a snapshot as they arrive, in order,
//!   and refuses the last one when the whole does not match its SHA-256, so that a corrupt or
//!   truncated snapshot is never handed to openraft to install.

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use openraft::raft::InstallSnapshotRequest;
use openraft::{SnapshotMeta, Vote};
use ring::digest;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::{NodeAddr, NodeId, TypeConfig};

/// The first bytes of a sealed snapshot (format 2).
pub const MAGIC: &[u8; 8] = b"OUROSNP2";
/// The sealed header: [`MAGIC`] and the SHA-256 of the rest.
pub const SEALED_HEADER_BYTES: usize = MAGIC.len() + DIGEST_BYTES;
/// A SHA-256 digest's length.
const DIGEST_BYTES: usize = 32;
/// The largest chunk header a receiver accepts (the membership of a ring is small).
pub const MAX_CHUNK_HEADER_BYTES: usize = 64 << 10;

/// A snapshot, or a chunk of one, that is refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state's JSON does not decode.
    #[error("snapshot is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A room's messages are not numbered as they must be, or an id appears twice.
    #[error("room {room:?}: {reason}")]
    Inconsistent {
        /// The room.
        room: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Neither a sealed snapshot nor the first format's JSON.
    #[error("not a snapshot (no OUROSNP2 header, not JSON)")]
    UnknownFormat,
    /// Shorter than the sealed header.
    #[error("snapshot truncated: {len} bytes, the header alone is {SEALED_HEADER_BYTES}")]
    Truncated {
        /// How many bytes there were.
        len: u64,
    },
    /// The SHA-256 of the bytes is not the one in the header: corrupt or truncated.
    #[error("snapshot checksum mismatch over {len} bytes (corrupt or truncated)")]
    Checksum {
        /// How many bytes were hashed.
        len: u64,
    },
    /// A chunk that does not follow the previous one of its snapshot.
    #[error("snapshot {id:?}: chunk at offset {got}, expected {expected}")]
    OutOfOrder {
        /// The snapshot's id.
        id: String,
        /// Where the next chunk should start.
        expected: u64,
        /// Where this one starts.
        got: u64,
    },
    /// A chunk envelope that does not decode.
    #[error("bad snapshot chunk: {0}")]
    Envelope(&'static str),
}

/// A sealed snapshot: [`MAGIC`], the SHA-256 of the body, the body that `write_body` appends
/// to the buffer it is given (no copy of the body is made).
///
/// # Errors
/// What `write_body` returns.
pub fn seal<E>(
    capacity: usize,
    write_body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let mut buf = Vec::with_capacity(capacity.saturating_add(SEALED_HEADER_BYTES));
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&[0; DIGEST_BYTES]);
    write_body(&mut buf)?;
    let d = digest::digest(&digest::SHA256, &buf[SEALED_HEADER_BYTES..]);
    buf[MAGIC.len()..SEALED_HEADER_BYTES].copy_from_slice(d.as_ref());
    Ok(buf)
}

/// What [`open`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened<'a> {
    /// A sealed snapshot whose checksum verified: its body.
    Sealed(&'a [u8]),
    /// A snapshot of the first format (bare JSON, no checksum).
    Legacy(&'a [u8]),
}

/// Checks a snapshot and returns its body.
///
/// # Errors
/// [`SnapshotError::Truncated`], [`SnapshotError::Checksum`] or
/// [`SnapshotError::UnknownFormat`].
pub fn open(bytes: &[u8]) -> Result<Opened<'_>, SnapshotError> {
    if bytes.first() == Some(&b'{') {
        return Ok(Opened::Legacy(bytes));
    }
    if !bytes.starts_with(MAGIC) && !MAGIC.starts_with(bytes) {
        return Err(SnapshotError::UnknownFormat);
    }
    if bytes.len() < SEALED_HEADER_BYTES {
        return Err(SnapshotError::Truncated {
            len: bytes.len() as u64,
        });
    }
    let body = &bytes[SEALED_HEADER_BYTES..];
    if digest::digest(&digest::SHA256, body).as_ref() != &bytes[MAGIC.len()..SEALED_HEADER_BYTES] {
        return Err(SnapshotError::Checksum {
            len: body.len() as u64,
        });
    }
    Ok(Opened::Sealed(body))
}

/// openraft's snapshot data: a shared, immutable buffer (a built or installed snapshot) or a
/// growing one (a snapshot being received), with a position for reads, writes and seeks.
#[derive(Debug, Default)]
pub struct SnapshotBytes {
    buf: Buf,
    pos: u64,
}

#[derive(Debug)]
enum Buf {
    /// Read by any number of senders without copying.
    Shared(Bytes),
    /// Written by the chunks of a snapshot being received.
    Owned(Vec<u8>),
}

impl Default for Buf {
    fn default() -> Self {
        Buf::Owned(Vec::new())
    }
}

impl SnapshotBytes {
    /// A reader of `bytes` (a clone of `Bytes` shares the buffer).
    pub fn shared(bytes: Bytes) -> Self {
        Self {
            buf: Buf::Shared(bytes),
            pos: 0,
        }
    }

    /// The bytes, without copying.
    pub fn into_bytes(self) -> Bytes {
        match self.buf {
            Buf::Shared(b) => b,
            Buf::Owned(v) => Bytes::from(v),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match &self.buf {
            Buf::Shared(b) => b,
            Buf::Owned(v) => v,
        }
    }

    /// The buffer to write to (a shared one is copied first; openraft writes only to the
    /// buffer `begin_receiving_snapshot` gave it, an owned one).
    fn owned(&mut self) -> &mut Vec<u8> {
        if let Buf::Shared(b) = &self.buf {
            self.buf = Buf::Owned(b.to_vec());
        }
        match &mut self.buf {
            Buf::Owned(v) => v,
            Buf::Shared(_) => unreachable!("made owned above"),
        }
    }
}

impl AsyncRead for SnapshotBytes {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let data = this.as_slice();
        let start = usize::try_from(this.pos)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let n = (data.len() - start).min(buf.remaining());
        buf.put_slice(&data[start..start + n]);
        this.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotBytes {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let Ok(start) = usize::try_from(this.pos) else {
            return Poll::Ready(Err(io::Error::other("snapshot offset beyond memory")));
        };
        let end = start.saturating_add(data.len());
        let v = this.owned();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[start..end].copy_from_slice(data);
        this.pos = end as u64;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for SnapshotBytes {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let (base, delta) = match position {
            SeekFrom::Start(n) => {
                this.pos = n;
                return Ok(());
            }
            SeekFrom::End(d) => (this.as_slice().len() as u64, d),
            SeekFrom::Current(d) => (this.pos, d),
        };
        this.pos = base
            .checked_add_signed(delta)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

/// The JSON header of a chunk envelope: [`InstallSnapshotRequest`] without its data, plus the
/// data's length.
#[derive(Serialize, Deserialize)]
struct ChunkHeader {
    vote: Vote<NodeId>,
    meta: SnapshotMeta<NodeId, NodeAddr>,
    offset: u64,
    done: bool,
    len: u64,
}

/// The `snapshot` call's body: a 4-byte big-endian length *n*, *n* bytes of JSON header
/// (`{"vote","meta","offset","done","len"}`), then exactly `len` raw bytes of the chunk.
pub fn encode_chunk(req: &InstallSnapshotRequest<TypeConfig>) -> Vec<u8> {
    let header = ChunkHeader {
        vote: req.vote,
        meta: req.meta.clone(),
        offset: req.offset,
        done: req.done,
        len: req.data.len() as u64,
    };
    // A struct of integers, strings and maps: serialising it cannot fail.
    let header = serde_json::to_vec(&header).unwrap_or_default();
    let mut body = Vec::with_capacity(4 + header.len() + req.data.len());
    body.extend_from_slice(
        &u32::try_from(header.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    body.extend_from_slice(&header);
    body.extend_from_slice(&req.data);
    body
}

/// Reads a `snapshot` call's body ([`encode_chunk`]).
///
/// # Errors
/// [`SnapshotError::Envelope`]: too short, a header over [`MAX_CHUNK_HEADER_BYTES`] or not
/// JSON, or data that is not exactly `len` bytes (a truncated chunk).
pub fn decode_chunk(body: &[u8]) -> Result<InstallSnapshotRequest<TypeConfig>, SnapshotError> {
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or(SnapshotError::Envelope("shorter than its length prefix"))?;
    let n = u32::from_be_bytes(*len) as usize;
    if n > MAX_CHUNK_HEADER_BYTES || n > rest.len() {
        return Err(SnapshotError::Envelope("header length out of range"));
    }
    let (header, data) = rest.split_at(n);
    let header: ChunkHeader = serde_json::from_slice(header)
        .map_err(|_| SnapshotError::Envelope("header is not the chunk's JSON"))?;
    if header.len != data.len() as u64 {
        return Err(SnapshotError::Envelope(
            "data is not the length the header declares (truncated or trailing bytes)",
        ));
    }
    Ok(InstallSnapshotRequest {
        vote: header.vote,
        meta: header.meta,
        offset: header.offset,
        data: data.to_vec(),
        done: header.done,
    })
}

/// Checks the chunks of the snapshots a member receives, before openraft sees them: they must
/// come in order (a retry of the last chunk passes), and the last one (`done`) only when the
/// SHA-256 of everything after the sealed header is the one in the header.
#[derive(Default)]
pub struct ChunkCheck {
    stream: Option<Stream>,
}

impl std::fmt::Debug for ChunkCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkCheck")
            .field("snapshot", &self.stream.as_ref().map(|s| &s.id))
            .finish()
    }
}

/// One snapshot being received.
struct Stream {
    /// Its id (`SnapshotMeta::snapshot_id`).
    id: String,
    /// Where the next chunk starts.
    next: u64,
    /// Where the last chunk started (a retry of it starts there again).
    last: u64,
    /// The sealed header, as it arrives.
    header: Vec<u8>,
    /// SHA-256 over what follows the header.
    hash: digest::Context,
}

impl ChunkCheck {
    /// A checker with no snapshot under way.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks one chunk of snapshot `id`: `data` at `offset`, the last one when `done`.
    ///
    /// # Errors
    /// [`SnapshotError::OutOfOrder`] for a chunk that does not continue its snapshot;
    /// [`SnapshotError::UnknownFormat`] for a snapshot that is not sealed;
    /// [`SnapshotError::Truncated`] or [`SnapshotError::Checksum`] for a last chunk after which
    /// the snapshot does not verify. After an error the snapshot starts over (at offset 0).
    pub fn check(
        &mut self,
        id: &str,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> Result<(), SnapshotError> {
        let r = self.step(id, offset, data, done);
        if r.is_err() || done {
            self.stream = None;
        }
        r
    }

    fn step(
        &mut self,
        id: &str,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> Result<(), SnapshotError> {
        if offset == 0 {
            self.stream = Some(Stream {
                id: id.to_owned(),
                next: 0,
                last: 0,
                header: Vec::with_capacity(SEALED_HEADER_BYTES),
                hash: digest::Context::new(&digest::SHA256),
            });
        }
        let Some(s) = self.stream.as_mut().filter(|s| s.id == id) else {
            return Err(SnapshotError::OutOfOrder {
                id: id.to_owned(),
                expected: 0,
                got: offset,
            });
        };
        let len = data.len() as u64;
        if offset != s.next {
            // The sender retries a chunk whose answer it did not get: already counted.
            if offset == s.last && offset + len == s.next && !done {
                return Ok(());
            }
            return Err(SnapshotError::OutOfOrder {
                id: id.to_owned(),
                expected: s.next,
                got: offset,
            });
        }
        let take = (SEALED_HEADER_BYTES - s.header.len()).min(data.len());
        s.header.extend_from_slice(&data[..take]);
        if !MAGIC.starts_with(&s.header[..s.header.len().min(MAGIC.len())]) {
            return Err(SnapshotError::UnknownFormat);
        }
        s.hash.update(&data[take..]);
        s.last = offset;
        s.next = offset + len;
        if !done {
            return Ok(());
        }
        if s.header.len() < SEALED_HEADER_BYTES {
            return Err(SnapshotError::Truncated { len: s.next });
        }
        let hashed = s.next - SEALED_HEADER_BYTES as u64;
        let digest = s.hash.clone().finish();
        if digest.as_ref() != &s.header[MAGIC.len()..] {
            return Err(SnapshotError::Checksum { len: hashed });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    fn sealed(body: &[u8]) -> Vec<u8> {
        seal(body.len(), |buf| {
            buf.extend_from_slice(body);
            Ok::<_, ()>(())
        })
        .unwrap()
    }

    /// Feeds `snapshot` to a [`ChunkCheck`] in chunks of `size`; the result of the last one.
    fn feed(
        check: &mut ChunkCheck,
        id: &str,
        snapshot: &[u8],
        size: usize,
    ) -> Result<(), SnapshotError> {
        let chunks: Vec<&[u8]> = snapshot.chunks(size).collect();
        let mut offset = 0;
        for (i, c) in chunks.iter().enumerate() {
            let done = i + 1 == chunks.len();
            check.check(id, offset, c, done)?;
            offset += c.len() as u64;
        }
        Ok(())
    }

    #[test]
    fn a_sealed_snapshot_opens_and_any_change_is_refused() {
        let body = br#"{"rooms":{"lobby":{"head":1}}}"#;
        let s = sealed(body);
        assert_eq!(&s[..8], MAGIC);
        assert_eq!(open(&s).unwrap(), Opened::Sealed(body));
        for i in [8, 20, SEALED_HEADER_BYTES, s.len() - 1] {
            let mut bad = s.clone();
            bad[i] ^= 1;
            assert!(
                matches!(open(&bad), Err(SnapshotError::Checksum { .. })),
                "byte {i}"
            );
        }
        assert!(matches!(
            open(&s[..s.len() - 1]),
            Err(SnapshotError::Checksum { .. })
        ));
        assert!(matches!(
            open(&s[..20]),
            Err(SnapshotError::Truncated { len: 20 })
        ));
        assert!(matches!(open(b"junk"), Err(SnapshotError::UnknownFormat)));
        assert_eq!(
            open(b"{\"rooms\":{}}").unwrap(),
            Opened::Legacy(b"{\"rooms\":{}}")
        );
    }

    #[test]
    fn chunks_of_a_sound_snapshot_pass_and_a_corrupt_or_truncated_one_is_refused_at_its_end() {
        let body: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let s = sealed(&body);
        for size in [1, 7, 40, 41, 1024, s.len()] {
            assert!(
                feed(&mut ChunkCheck::new(), "a", &s, size).is_ok(),
                "size {size}"
            );
        }
        // One bit flipped anywhere in the body, or in the recorded checksum: refused.
        let mut check = ChunkCheck::new();
        for i in [SEALED_HEADER_BYTES, 5_000, s.len() - 1, 9] {
            let mut bad = s.clone();
            bad[i] ^= 0x80;
            assert!(
                matches!(
                    feed(&mut check, "b", &bad, 1024),
                    Err(SnapshotError::Checksum { .. })
                ),
                "byte {i}"
            );
        }
        // Truncated: the sender says done before the end.
        let cut = &s[..s.len() - 100];
        assert!(matches!(
            feed(&mut check, "c", cut, 1024),
            Err(SnapshotError::Checksum { .. })
        ));
        assert!(matches!(
            feed(&mut check, "d", &s[..30], 1024),
            Err(SnapshotError::Truncated { len: 30 })
        ));
        // Not sealed (the first format, bare JSON): refused on the first chunk.
        assert!(matches!(
            check.check("e", 0, b"{\"rooms\":{}}", true),
            Err(SnapshotError::UnknownFormat)
        ));
        // The checker still accepts a sound snapshot after all that.
        assert!(feed(&mut check, "f", &s, 1024).is_ok());
    }

    #[test]
    fn chunks_must_come_in_order_and_a_retried_chunk_is_not_counted_twice() {
        let s = sealed(&[7; 5000]);
        let mut check = ChunkCheck::new();
        // A chunk skipped: refused.
        check.check("a", 0, &s[..1000], false).unwrap();
        assert!(matches!(
            check.check("a", 2000, &s[2000..3000], false),
            Err(SnapshotError::OutOfOrder {
                expected: 1000,
                got: 2000,
                ..
            })
        ));
        // Nothing under way: a chunk not at 0 is refused; another snapshot's chunk too.
        assert!(check.check("a", 1000, &s[1000..2000], false).is_err());
        check.check("a", 0, &s[..1000], false).unwrap();
        assert!(check.check("b", 1000, &s[1000..2000], false).is_err());
        // A chunk sent twice (its answer was lost) is accepted once and hashed once.
        check.check("a", 0, &s[..1000], false).unwrap();
        check.check("a", 1000, &s[1000..2000], false).unwrap();
        check.check("a", 1000, &s[1000..2000], false).unwrap();
        check.check("a", 2000, &s[2000..4000], false).unwrap();
        check.check("a", 4000, &s[4000..], true).unwrap();
    }

    fn request(data: Vec<u8>) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: SnapshotMeta {
                last_log_id: Some(openraft::LogId::new(
                    openraft::CommittedLeaderId::new(3, 1),
                    42,
                )),
                last_membership: Default::default(),
                snapshot_id: "1-42-1".into(),
            },
            offset: 4096,
            data,
            done: false,
        }
    }

    #[test]
    fn a_chunk_travels_raw_and_a_truncated_or_padded_envelope_is_refused() {
        let data: Vec<u8> = (0..=255).cycle().take(3000).collect();
        let body = encode_chunk(&request(data.clone()));
        let n = u32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
        assert_eq!(
            &body[4 + n..],
            &data[..],
            "the data follows the header, raw"
        );
        let back = decode_chunk(&body).unwrap();
        assert_eq!(back, request(data));
        assert!(decode_chunk(&body[..body.len() - 1]).is_err());
        let mut padded = body.clone();
        padded.push(0);
        assert!(decode_chunk(&padded).is_err());
        assert!(decode_chunk(&body[..3]).is_err());
        let mut huge = body.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_chunk(&huge).is_err());
        let mut garbled = body;
        garbled[5] = b'!';
        assert!(decode_chunk(&garbled).is_err());
    }

    #[tokio::test]
    async fn snapshot_bytes_read_seek_and_write_like_a_cursor() {
        let mut w = SnapshotBytes::default();
        w.write_all(b"hello").await.unwrap();
        w.seek(SeekFrom::Start(8)).await.unwrap();
        w.write_all(b"!").await.unwrap();
        w.seek(SeekFrom::Start(0)).await.unwrap();
        w.write_all(b"J").await.unwrap();
        let b = w.into_bytes();
        assert_eq!(&b[..], b"Jello\0\0\0!");
        let mut r = SnapshotBytes::shared(b.clone());
        assert_eq!(r.seek(SeekFrom::End(0)).await.unwrap(), 9);
        r.seek(SeekFrom::Start(1)).await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"ello\0\0\0!");
        assert!(r.seek(SeekFrom::Current(-100)).await.is_err());
        // Readers share the buffer: the same allocation.
        assert_eq!(
            SnapshotBytes::shared(b.clone()).into_bytes().as_ptr(),
            b.as_ptr()
        );
    }
}
