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
}

/// Backups as files `snapshot-g<generation>-<millis>.bin` in a folder: a JSON header line
/// (generation, peer id, time, heads, size, SHA-256) then the snapshot bytes. Written
/// atomically (temp + fsync + rename); the newest `keep` are kept. Names sort by generation,
/// then time, so the newest is last.
#[derive(Debug, Clone)]
pub struct DirBackupStore {
    /// The folder.
    dir: PathBuf,
    /// How many backups to keep.
    keep: usize,
}

impl DirBackupStore {
    /// A store in `dir` keeping the newest `keep` (at least 1) backups.
    pub fn new(dir: impl Into<PathBuf>, keep: usize) -> Self {
        DirBackupStore {
            dir: dir.into(),
            keep: keep.max(1),
        }
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
        let bytes = b.to_file_bytes();
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
            match read_backup(&path) {
                Ok(b) => return Ok(Some(b)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping unusable backup")
                }
            }
        }
        Ok(None)
    }
}

fn read_backup(path: &std::path::Path) -> Result<Backup, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
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
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Backup, String> {
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("no header line")?;
        let header: Header = serde_json::from_slice(&bytes[..nl]).map_err(|e| e.to_string())?;
        let snapshot = bytes[nl + 1..].to_vec();
        if snapshot.len() as u64 != header.size || sha256_hex(&snapshot) != header.sha256 {
            return Err("size or checksum mismatch".into());
        }
        Ok(Backup {
            generation: header.generation,
            peer_id: header.peer_id,
            taken_at: header.taken_at,
            high_water: header.high_water,
            snapshot,
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
            Backup::from_file_bytes(&bytes).unwrap_err(),
            "size or checksum mismatch"
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
        // Corrupt the newest: the one before is used.
        let newest = store.list().unwrap().pop().unwrap();
        let mut bytes = std::fs::read(&newest).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&newest, bytes).unwrap();
        let latest = store.latest().await.unwrap().unwrap();
        assert_eq!(latest.snapshot, b"state 2 5");
        assert_eq!(total_head(&latest.high_water), 5);
    }
}
