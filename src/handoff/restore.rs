//! [`RestoreWorker`]: the successor's snapshot restored on its own thread while the rest
//! arrives (shell side of the handoff: the thread is started here, never in a core).

use crate::relay::{Relay, RelayConfig, RelayError, StreamingRestore};
use std::sync::Arc;
use std::time::Instant;

/// Why a snapshot was not restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The restore thread could not be started.
    #[error("cannot start the restore thread: {0}")]
    Spawn(#[from] std::io::Error),
    /// The snapshot is malformed or inconsistent.
    #[error("snapshot cannot be restored: {0}")]
    Invalid(RelayError),
    /// The restore thread stopped without an answer.
    #[error("the restore thread stopped")]
    Stopped,
}

/// A snapshot restored on its own thread while it arrives: pieces go in as they are
/// verified, [`RestoreWorker::finish`] returns the relay once the last one is in.
/// Dropping the worker abandons the restore.
pub struct RestoreWorker {
    pieces: Option<std::sync::mpsc::Sender<Vec<u8>>>,
    result: tokio::sync::oneshot::Receiver<Result<Relay, RestoreError>>,
    cancelled: Arc<std::sync::atomic::AtomicBool>,
}

impl RestoreWorker {
    /// Starts a restore into a relay with `config`.
    ///
    /// # Errors
    /// The thread cannot be started.
    pub fn start(config: RelayConfig) -> std::io::Result<RestoreWorker> {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let (done, result) = tokio::sync::oneshot::channel();
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = cancelled.clone();
        std::thread::Builder::new()
            .name("handoff-restore".into())
            .spawn(move || {
                let started = Instant::now();
                let mut restore = StreamingRestore::new(config, Instant::now());
                for piece in rx {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    // A failed restore keeps its first error for `finish`.
                    let _ = restore.feed(&piece);
                }
                let bytes = restore.consumed();
                let result = restore.finish().map_err(RestoreError::Invalid);
                tracing::debug!(
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    ok = result.is_ok(),
                    "handoff: streaming restore ended"
                );
                let _ = done.send(result);
            })?;
        Ok(RestoreWorker {
            pieces: Some(tx),
            result,
            cancelled,
        })
    }

    /// The next piece, in order.
    pub fn feed(&self, piece: Vec<u8>) {
        if let Some(tx) = &self.pieces {
            let _ = tx.send(piece);
        }
    }

    /// Waits until every piece is decoded and returns the relay.
    ///
    /// # Errors
    /// [`RestoreError::Invalid`] if the snapshot is malformed or inconsistent.
    pub async fn finish(mut self) -> Result<Relay, RestoreError> {
        self.pieces = None;
        (&mut self.result)
            .await
            .unwrap_or(Err(RestoreError::Stopped))
    }
}

impl Drop for RestoreWorker {
    fn drop(&mut self) {
        if self.pieces.is_some() {
            self.cancelled
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
