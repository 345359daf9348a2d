//! Crash safety: periodic snapshots in a [`BackupStore`], so a successor whose
//! predecessor died can restore the newest one (and announce the gap).

use super::{HighWater, sha256_hex};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::SystemTime;

/// One stored snapshot of the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// Generation of the node that took it.
    pub generation: u64,
    /// Peer id of the node that took it.
    pub peer_id: String,
    /// When it was taken.
    pub taken_at: SystemTime,
    /// Every room's head at that moment.
    pub high_water: HighWater,
    /// The encoded relay snapshot (`Relay::export_snapshot`).
    pub snapshot: Vec<u8>,
    /// The node stopped accepting writes before taking it and exited after: nothing was
    /// acknowledged after this state, so recovering from it needs no gap.
    pub is_final: bool,
}

/// Sum of all rooms' heads: a state with a larger total holds more messages (heads only
/// grow), so of two states of one ring the one with the larger total is newer. Saturates
/// (a backup's heads are read from its file).
pub fn total_head(high_water: &HighWater) -> u64 {
    high_water.values().fold(0, |sum, h| sum.saturating_add(*h))
}

/// Backup store failures.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Local I/O failed.
    #[error("backup I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A remote store failed (message safe to log).
    #[error("backup store: {0}")]
    Remote(String),
    /// The backup could not be restored into the relay.
    #[error("backup not restored: {0}")]
    Restore(#[from] super::host::HostError),
    /// A backup file that is not one: no header, a bad header, a size or checksum mismatch,
    /// or a sealed file that does not open with the ring's key.
    #[error("backup file unusable: {0}")]
    Invalid(String),
}

/// Where snapshots are kept. Implementations: [`DirBackupStore`] (`--backup-dir`).
#[async_trait::async_trait]
pub trait BackupStore: Send + Sync {
    /// Stores `backup` atomically and prunes old ones.
    ///
    /// # Errors
    /// I/O or remote failures.
    async fn save(&self, backup: &Backup) -> Result<(), BackupError>;

    /// The newest intact backup (corrupt ones are skipped and logged).
    ///
    /// # Errors
    /// I/O or remote failures.
    async fn latest(&self) -> Result<Option<Backup>, BackupError>;

    /// A short name for logs (`dir`).
    fn name(&self) -> &'static str;
}

/// File header of a stored backup (one JSON line before the snapshot bytes).
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    generation: u64,
    peer_id: String,
    #[serde(with = "crate::discovery::rfc3339")]
    taken_at: SystemTime,
    high_water: HighWater,
    size: u64,
    sha256: String,
    /// [`Backup::is_final`]; absent (false) in older backups.
    #[serde(default, rename = "final", skip_serializing_if = "std::ops::Not::not")]
    is_final: bool,
}

/// The key that encrypts and authenticates backups: derived from the ring secret
/// (`HMAC-SHA256(secret, "ouroboros-backup-key/1")`), so any node of the ring reads what
/// another wrote, and nobody else can read or forge one (a backup may sit where others
/// can read it, e.g. the Actions cache of a public repository).
#[derive(Clone)]
pub struct BackupKey([u8; 32]);

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKey(<redacted>)")
    }
}

/// Prefix of an encrypted backup file.
const SEALED_MAGIC: &[u8; 4] = b"OBK1";
/// Authenticated with every encrypted backup (domain separation).
const SEALED_AAD: &[u8] = b"ouroboros-backup/1";

impl BackupKey {
    /// The backup key of the ring whose secret is `secret`.
    pub fn derive(secret: &super::Secret) -> Self {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.expose())
            .expect("HMAC accepts keys of any length");
        mac.update(b"ouroboros-backup-key/1");
        BackupKey(mac.finalize().into_bytes().into())
    }

    fn aead(&self) -> ring::aead::LessSafeKey {
        ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &self.0)
                .expect("a 32-byte ChaCha20-Poly1305 key"),
        )
    }

    /// `"OBK1"` ‖ 12-byte random nonce ‖ ChaCha20-Poly1305 of `plain` (with its tag).
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let mut out = Vec::with_capacity(4 + 12 + plain.len() + 16);
        out.extend_from_slice(SEALED_MAGIC);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.aead()
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(SEALED_AAD),
                &mut body,
            )
            .expect("backups are far below ChaCha20-Poly1305's size limit");
        out.extend_from_slice(&body);
        out
    }

    /// The plain bytes of a sealed backup.
    ///
    /// # Errors
    /// Not a sealed backup, or it does not authenticate (another ring's, or changed).
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, BackupError> {
        if sealed.len() < 4 + 12 + 16 || &sealed[..4] != SEALED_MAGIC {
            return Err(BackupError::Invalid("not an encrypted backup".into()));
        }
        let nonce: [u8; 12] = sealed[4..16].try_into().expect("12 bytes");
        let mut body = sealed[16..].to_vec();
        let plain = self
            .aead()
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(SEALED_AAD),
                &mut body,
            )
            .map_err(|_| {
                BackupError::Invalid(
                    "the backup does not authenticate (another ring's secret, or altered)".into(),
                )
            })?;
        Ok(plain.to_vec())
    }
}

/// Backups as files `snapshot-g<generation>-<millis>.bin` in a folder: a JSON header line
/// (generation, peer id, time, heads, size, SHA-256) then the snapshot bytes; with a
/// [`BackupKey`] ([`DirBackupStore::with_key`]) the whole file is encrypted and
/// authenticated (`OBK1` ‖ nonce ‖ ChaCha20-Poly1305), and unencrypted files are refused.
/// Written atomically (temp + fsync + rename); the newest `keep` are kept. Names sort by
/// generation, then time, so the newest is last.
#[derive(Debug, Clone)]
pub struct DirBackupStore {
    /// The folder.
    dir: PathBuf,
    /// How many backups to keep.
    keep: usize,
    /// Encrypts what is written and authenticates what is read.
    key: Option<BackupKey>,
}

impl DirBackupStore {
    /// A store in `dir` keeping the newest `keep` (at least 1) backups.
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        DirBackupStore {
            dir: dir.into(),
            keep: keep.max(1),
            key: None,
        }
    }

    /// Encrypts every backup written with `key`, and reads only backups it authenticates.
    pub fn with_key(mut self, key: BackupKey) -> Self {
        self.key = Some(key);
        self
    }

    fn file_name(b: &Backup) -> String {
        let millis = b
            .taken_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("snapshot-g{:012}-{:016}.bin", b.generation, millis)
    }

    fn list(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("snapshot-g") && n.ends_with(".bin"))
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        files.sort();
        Ok(files)
    }

    /// Synchronous save.
    ///
    /// # Errors
    /// I/O failures.
    pub fn save_blocking(&self, b: &Backup) -> Result<(), BackupError> {
        let mut bytes = b.to_file_bytes();
        if let Some(key) = &self.key {
            bytes = key.seal(&bytes);
        }
        // Backups hold every stored message: readable by the node's user only.
        crate::discovery::local::write_atomic_private(&self.dir.join(Self::file_name(b)), &bytes)?;
        let files = self.list()?;
        if files.len() > self.keep {
            for old in &files[..files.len() - self.keep] {
                let _ = std::fs::remove_file(old);
            }
        }
        tracing::debug!(
            generation = b.generation,
            bytes = b.snapshot.len(),
            "backup written"
        );
        Ok(())
    }

    /// Synchronous [`BackupStore::latest`].
    ///
    /// # Errors
    /// I/O failures listing the folder.
    pub fn latest_blocking(&self) -> Result<Option<Backup>, BackupError> {
        for path in self.list()?.into_iter().rev() {
            match read_backup(&path, self.key.as_ref()) {
                Ok(b) => return Ok(Some(b)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unusable backup")
                }
            }
        }
        Ok(None)
    }
}

fn read_backup(path: &std::path::Path, key: Option<&BackupKey>) -> Result<Backup, BackupError> {
    let bytes = std::fs::read(path)?;
    let bytes = match key {
        Some(k) => k.open(&bytes)?,
        None => bytes,
    };
    Backup::from_file_bytes(&bytes)
}

impl Backup {
    /// The file form [`DirBackupStore`] writes: a JSON header line (generation, peer id,
    /// time, heads, size, SHA-256), then the snapshot bytes.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let header = Header {
            generation: self.generation,
            peer_id: self.peer_id.clone(),
            taken_at: self.taken_at,
            high_water: self.high_water.clone(),
            size: self.snapshot.len() as u64,
            sha256: sha256_hex(&self.snapshot),
            is_final: self.is_final,
        };
        let mut bytes = serde_json::to_vec(&header).expect("headers serialize");
        bytes.push(b'\n');
        bytes.extend_from_slice(&self.snapshot);
        bytes
    }

    /// Reads [`Backup::to_file_bytes`]'s form (what [`DirBackupStore`] reads back; also
    /// the fuzz target's entry point).
    ///
    /// # Errors
    /// What is wrong: no header line, a malformed header, a size or checksum mismatch.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Backup, BackupError> {
        let invalid = |m: String| BackupError::Invalid(m);
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| invalid("no header line".into()))?;
        let header: Header =
            serde_json::from_slice(&bytes[..nl]).map_err(|e| invalid(e.to_string()))?;
        let snapshot = bytes[nl + 1..].to_vec();
        if snapshot.len() as u64 != header.size || sha256_hex(&snapshot) != header.sha256 {
            return Err(invalid("size or checksum mismatch".into()));
        }
        Ok(Backup {
            generation: header.generation,
            peer_id: header.peer_id,
            taken_at: header.taken_at,
            high_water: header.high_water,
            snapshot,
            is_final: header.is_final,
        })
    }
}

#[async_trait::async_trait]
impl BackupStore for DirBackupStore {
    async fn save(&self, backup: &Backup) -> Result<(), BackupError> {
        let this = self.clone();
        let backup = backup.clone();
        tokio::task::spawn_blocking(move || this.save_blocking(&backup))
            .await
            .map_err(|e| BackupError::Io(std::io::Error::other(e)))?
    }

    async fn latest(&self) -> Result<Option<Backup>, BackupError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.latest_blocking())
            .await
            .map_err(|e| BackupError::Io(std::io::Error::other(e)))?
    }

    fn name(&self) -> &'static str {
        "dir"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn backup(generation: u64, secs: u64, body: &[u8]) -> Backup {
        Backup {
            generation,
            peer_id: format!("p{generation}"),
            taken_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs),
            high_water: [("r".to_string(), secs)].into(),
            snapshot: body.to_vec(),
            is_final: secs == 6,
        }
    }

    /// Found by the `backup_file` fuzz target: heads read from a backup file summed with
    /// overflow (a panic in debug builds, a wrong "newest" in release builds).
    #[test]
    fn total_head_saturates_and_files_read_back() {
        let mut b = backup(1, 10, b"snapshot");
        b.high_water = [("a".to_string(), u64::MAX), ("b".to_string(), 1)].into();
        assert_eq!(total_head(&b.high_water), u64::MAX);
        let back = Backup::from_file_bytes(&b.to_file_bytes()).unwrap();
        assert_eq!(back, b);
        let mut bytes = b.to_file_bytes();
        bytes.push(b'!');
        assert_eq!(
            Backup::from_file_bytes(&bytes).unwrap_err().to_string(),
            "backup file unusable: size or checksum mismatch"
        );
    }

    #[test]
    #[cfg(unix)]
    fn backups_are_written_0600_in_a_0700_folder() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("backups");
        let store = DirBackupStore::new(&dir, 3);
        store
            .save_blocking(&backup(1, 10, b"secret history"))
            .unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        assert_eq!(mode(&files[0]), 0o600, "{}", files[0].display());
    }

    #[test]
    fn encrypted_backups_round_trip_and_refuse_tampering_other_keys_and_plain_files() {
        let root = tempfile::tempdir().unwrap();
        let secret = crate::handoff::Secret::new(b"the ring secret, 16+".to_vec()).unwrap();
        let key = BackupKey::derive(&secret);
        let store = DirBackupStore::new(root.path(), 5).with_key(key.clone());
        let b = backup(3, 10, b"every message of the ring");
        store.save_blocking(&b).unwrap();
        assert_eq!(store.latest_blocking().unwrap(), Some(b.clone()));
        // On disk: no plaintext (neither the messages nor the header).
        let file = store.list().unwrap().pop().unwrap();
        let on_disk = std::fs::read(&file).unwrap();
        assert!(on_disk.starts_with(b"OBK1"));
        let text = String::from_utf8_lossy(&on_disk);
        assert!(!text.contains("every message") && !text.contains("peer_id"));
        // Another ring's key reads nothing.
        let other = crate::handoff::Secret::new(b"another ring secret!".to_vec()).unwrap();
        let foreign = DirBackupStore::new(root.path(), 5).with_key(BackupKey::derive(&other));
        assert_eq!(foreign.latest_blocking().unwrap(), None);
        // One flipped bit anywhere: refused (the older intact backup is used instead).
        let older = backup(3, 5, b"older state");
        store.save_blocking(&older).unwrap();
        let mut tampered = on_disk.clone();
        let mid = tampered.len() / 2;
        tampered[mid] ^= 1;
        std::fs::write(&file, &tampered).unwrap();
        assert_eq!(store.latest_blocking().unwrap(), Some(older));
        // A planted plaintext backup (valid checksum) is refused when a key is set.
        let plain = DirBackupStore::new(root.path(), 5);
        plain
            .save_blocking(&backup(9, 99, b"forged history"))
            .unwrap();
        assert_eq!(store.latest_blocking().unwrap().unwrap().generation, 3);
        assert!(key.open(b"OBK1short").is_err());
        assert!(format!("{key:?}").contains("redacted"));
    }

    #[tokio::test]
    async fn keeps_the_newest_and_skips_corrupt_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBackupStore::new(dir.path().join("b"), 3);
        assert_eq!(store.latest().await.unwrap(), None);
        for (g, s) in [(1, 10), (1, 20), (2, 5), (2, 6)] {
            store
                .save(&backup(g, s, format!("state {g} {s}").as_bytes()))
                .await
                .unwrap();
        }
        assert_eq!(store.list().unwrap().len(), 3, "pruned to keep=3");
        let latest = store.latest().await.unwrap().unwrap();
        assert_eq!(
            (latest.generation, latest.snapshot.as_slice()),
            (2, &b"state 2 6"[..])
        );
        assert!(latest.is_final, "the final mark survives the round trip");
        // Corrupt the newest: the one before is used.
        let newest = store.list().unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&newest).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&newest, bytes).unwrap();
        let latest = store.latest().await.unwrap().unwrap();
        assert_eq!(latest.snapshot, b"state 2 5");
        assert!(!latest.is_final);
        assert_eq!(total_head(&latest.high_water), 5);
    }
}
