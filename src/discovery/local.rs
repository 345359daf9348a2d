//! [`LocalPublisher`]: the record as `ouroboros.json` in a data dir.

use super::{DiscoveryError, DiscoveryRecord, Publisher, RECORD_FILE, check_replace};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes the record to `<dir>/ouroboros.json` atomically (temp file, fsync, rename, fsync
/// of the dir) under an exclusive lock on `<dir>/ouroboros.json.lock`, so that nodes of one
/// ring sharing a data dir apply the guard one at a time.
#[derive(Debug, Clone)]
pub struct LocalPublisher {
    /// The folder holding the record (created if missing).
    dir: PathBuf,
}

impl LocalPublisher {
    /// A publisher writing into `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalPublisher { dir: dir.into() }
    }

    /// Path of the record file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(RECORD_FILE)
    }

    fn lock(&self) -> std::io::Result<File> {
        std::fs::create_dir_all(&self.dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(format!("{RECORD_FILE}.lock")))?;
        lock.lock()?;
        Ok(lock)
    }

    /// Synchronous publish (the async trait method runs this on a blocking thread).
    ///
    /// # Errors
    /// As [`Publisher::publish`]. An unreadable existing record is replaced (logged).
    pub fn publish_blocking(&self, record: &DiscoveryRecord) -> Result<(), DiscoveryError> {
        record.validate()?;
        let _lock = self.lock()?;
        match read_record(&self.path()) {
            Ok(Some(current)) => check_replace(&current, record)?,
            Ok(None) => {}
            Err(DiscoveryError::Invalid(e)) => {
                tracing::warn!(error = %e, "replacing an invalid discovery record");
            }
            Err(e) => return Err(e),
        }
        write_atomic(&self.path(), record.to_json_pretty().as_bytes())?;
        tracing::info!(
            generation = record.generation,
            peer_id = %record.peer_id,
            path = %self.path().display(),
            "discovery record published"
        );
        Ok(())
    }

    /// Synchronous read of the current record.
    ///
    /// # Errors
    /// I/O or parse failures.
    pub fn current_blocking(&self) -> Result<Option<DiscoveryRecord>, DiscoveryError> {
        read_record(&self.path())
    }
}

fn read_record(path: &Path) -> Result<Option<DiscoveryRecord>, DiscoveryError> {
    match std::fs::read(path) {
        Ok(bytes) => DiscoveryRecord::from_json(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces `path` with `bytes` atomically: a reader sees the old or the new content,
/// never a mix, and after a crash the file is one of the two.
///
/// # Errors
/// I/O failures; the temp file is removed on failure.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, false)
}

/// [`write_atomic`] for a file only its owner may read: created `0600` (its folder, when
/// created here, `0700`) on Unix. For backups, which hold every stored message.
///
/// # Errors
/// I/O failures (the temporary file is removed).
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_with(path, bytes, true)
}

fn write_atomic_with(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if private && !dir.as_os_str().is_empty() && !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        }
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[async_trait::async_trait]
impl Publisher for LocalPublisher {
    async fn publish(&self, record: &DiscoveryRecord) -> Result<(), DiscoveryError> {
        let this = self.clone();
        let record = record.clone();
        tokio::task::spawn_blocking(move || this.publish_blocking(&record))
            .await
            .map_err(|e| DiscoveryError::Io(std::io::Error::other(e)))?
    }

    async fn current(&self) -> Result<Option<DiscoveryRecord>, DiscoveryError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.current_blocking())
            .await
            .map_err(|e| DiscoveryError::Io(std::io::Error::other(e)))?
    }

    fn name(&self) -> &'static str {
        "local"
    }
}
