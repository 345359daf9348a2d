//! [`HandoffHost`]: how the handoff drivers, recovery and backups reach a relay.
//!
//! A host has one way in, [`HandoffHost::run`]: run a closure on the relay where its owner
//! dispatches the relay's outputs (e.g. `moved`) right after. Every operation the handoff
//! needs (export the snapshot, take the tail, cut over, restore, …) is written once, on top
//! of it, in [`HostOps`]. Two hosts exist: [`SharedRelay`] (a relay behind a mutex, for
//! tests, benchmarks and embedders) and the node's relay task (`node::RelayHandle`, in
//! `node/`).

use super::message::HighWater;
use crate::discovery::SignalingEndpoint;
use crate::relay::{Mode, Relay, RelayConfig, ReplicationEvent, Snapshot};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// A closure run on the relay by [`HandoffHost::run`].
pub type RelayFn = Box<dyn FnOnce(&mut Relay) + Send>;

/// The relay's owner has stopped (the node is shutting down); the closure did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the relay has stopped")]
pub struct RelayStopped;

/// Why a host operation failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The relay's owner has stopped.
    #[error(transparent)]
    Stopped(#[from] RelayStopped),
    /// A snapshot could not be decoded or restored.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// A replication event could not be decoded or applied (a gap).
    #[error("replication event: {0}")]
    Replication(String),
}

/// Where a relay lives, for the handoff: the one thing a host must provide.
#[async_trait::async_trait]
pub trait HandoffHost: Send + Sync + 'static {
    /// Runs `f` on the relay and returns once it ran; outputs it queued are dispatched by
    /// the relay's owner right after.
    ///
    /// # Errors
    /// [`RelayStopped`] if the relay's owner has stopped (`f` did not run).
    async fn run(&self, f: RelayFn) -> Result<(), RelayStopped>;

    /// Notified whenever the relay may have queued replication events (a write was
    /// applied), so the predecessor pushes its tail when there is one instead of polling.
    fn replication_queued(&self) -> Arc<tokio::sync::Notify>;
}

fn encode_event(e: &ReplicationEvent) -> Vec<u8> {
    serde_json::to_vec(e).expect("replication events serialize")
}

fn take_events(r: &mut Relay) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| r.poll_replication())
        .map(|e| encode_event(&e))
        .collect()
}

/// Everything the handoff does to a relay, written once over [`HandoffHost::run`].
#[async_trait::async_trait]
pub trait HostOps: HandoffHost {
    /// Runs `f` on the relay and returns its result.
    ///
    /// # Errors
    /// [`RelayStopped`] if the relay's owner has stopped.
    async fn with_relay<T, F>(&self, f: F) -> Result<T, RelayStopped>
    where
        T: Send + 'static,
        F: FnOnce(&mut Relay) -> T + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(None));
        let out = slot.clone();
        self.run(Box::new(move |r| {
            *out.lock().expect("result slot poisoned") = Some(f(r));
        }))
        .await?;
        let v = slot.lock().expect("result slot poisoned").take();
        v.ok_or(RelayStopped)
    }

    /// Exports the snapshot and, in the same step, starts queuing replication events.
    /// (Cheap: the messages are shared with the store, not copied or encoded.) A stopped
    /// relay exports an empty store.
    async fn export_snapshot(&self) -> Snapshot {
        match self.with_relay(|r| r.start_replication()).await {
            Ok(s) => s,
            Err(RelayStopped) => {
                Relay::new(RelayConfig::new("stopped", 0), Instant::now()).export_snapshot()
            }
        }
    }

    /// Takes the queued replication events, encoded (JSON), oldest first.
    async fn take_replication(&self) -> Vec<Vec<u8>> {
        self.with_relay(take_events).await.unwrap_or_default()
    }

    /// Cuts over: stops accepting writes (`Draining`) and returns the last events and the
    /// heads, in one step.
    async fn enter_draining(&self) -> (Vec<Vec<u8>>, HighWater) {
        self.with_relay(|r| {
            r.set_mode(Mode::Draining);
            (take_events(r), r.high_water())
        })
        .await
        .unwrap_or_default()
    }

    /// Stops queuing replication events (the session was aborted).
    async fn stop_replication(&self) {
        let _ = self.with_relay(|r| r.set_replication(false)).await;
    }

    /// Sends every client `moved`.
    async fn announce_moved(
        &self,
        peer_id: &str,
        endpoints: &[SignalingEndpoint],
        generation: u64,
    ) {
        let peer_id = peer_id.to_string();
        let endpoints = endpoints.to_vec();
        let _ = self
            .with_relay(move |r| r.announce_moved(&peer_id, &endpoints, generation))
            .await;
    }

    /// Sets the relay's mode (`Draining` refuses writes, `Primary` accepts them).
    async fn set_mode(&self, mode: Mode) {
        let _ = self.with_relay(move |r| r.set_mode(mode)).await;
    }

    /// (Successor) replaces the store with an empty one (writes stay refused).
    async fn reset(&self) {
        let _ = self
            .with_relay(|r| {
                *r = Relay::new(r.config().clone(), Instant::now());
                r.set_mode(Mode::Draining);
            })
            .await;
    }

    /// (Successor) the configuration a restored store gets.
    async fn relay_config(&self) -> RelayConfig {
        self.with_relay(|r| r.config().clone())
            .await
            .unwrap_or_else(|_| RelayConfig::new("stopped", 0))
    }

    /// (Successor) replaces the store with `relay` (restored from a snapshot; writes stay
    /// refused until [`HostOps::set_mode`] `Primary`). The old store is freed off the async
    /// threads.
    async fn install(&self, mut relay: Relay) {
        relay.set_mode(Mode::Draining);
        if let Ok(old) = self.with_relay(move |r| std::mem::replace(r, relay)).await {
            tokio::task::spawn_blocking(move || drop(old));
        }
    }

    /// (Successor) replaces the store with a whole snapshot (writes stay refused). The
    /// handoff restores piece by piece instead (`RestoreWorker`); crash recovery uses this.
    ///
    /// # Errors
    /// [`HostError::Snapshot`] if the snapshot is invalid.
    async fn restore(&self, snapshot: Vec<u8>) -> Result<(), HostError> {
        let config = self.relay_config().await;
        let relay = tokio::task::spawn_blocking(move || {
            let snap = Snapshot::from_json(&snapshot)?;
            drop(snapshot);
            Relay::restore(config, snap, Instant::now())
        })
        .await
        .map_err(|e| HostError::Snapshot(e.to_string()))?
        .map_err(|e| HostError::Snapshot(e.to_string()))?;
        self.install(relay).await;
        Ok(())
    }

    /// (Successor) applies replication events in order.
    ///
    /// # Errors
    /// [`HostError::Replication`] if an event cannot be decoded or applied (a gap).
    async fn apply(&self, events: &[Vec<u8>]) -> Result<(), HostError> {
        let decoded: Vec<ReplicationEvent> = events
            .iter()
            .map(|e| serde_json::from_slice(e).map_err(|e| HostError::Replication(e.to_string())))
            .collect::<Result<_, _>>()?;
        self.with_relay(move |r| {
            for e in decoded {
                r.apply_replication(e)
                    .map_err(|e| HostError::Replication(e.to_string()))?;
            }
            Ok(())
        })
        .await?
    }

    /// Every room's head.
    async fn high_water(&self) -> HighWater {
        self.with_relay(|r| r.high_water())
            .await
            .unwrap_or_default()
    }

    /// A snapshot for the backup store (replication untouched) and the heads it holds
    /// (encoded off the async threads; empty if the relay stopped).
    async fn backup_snapshot(&self) -> (Vec<u8>, HighWater) {
        match self
            .with_relay(|r| (r.export_snapshot(), r.high_water()))
            .await
        {
            Ok((s, hw)) => (
                tokio::task::spawn_blocking(move || s.to_json())
                    .await
                    .unwrap_or_default(),
                hw,
            ),
            Err(RelayStopped) => (Vec::new(), HighWater::new()),
        }
    }

    /// (Successor, crash recovery) moves every head forward by `margin`
    /// (`Relay::open_gap`) and announces `notice` in `welcome.gap` (with the skipped
    /// ranges added as `skipped`). Returns the skipped ranges.
    async fn open_gap(
        &self,
        margin: u64,
        notice: serde_json::Value,
    ) -> BTreeMap<String, (u64, u64)> {
        self.with_relay(move |r| open_gap_on(r, margin, notice))
            .await
            .unwrap_or_default()
    }
}

impl<H: HandoffHost + ?Sized> HostOps for H {}

fn open_gap_on(
    r: &mut Relay,
    margin: u64,
    notice: serde_json::Value,
) -> BTreeMap<String, (u64, u64)> {
    let skipped = r.open_gap(margin);
    let mut notice = notice;
    if let Some(o) = notice.as_object_mut() {
        o.insert(
            "skipped".into(),
            serde_json::to_value(
                skipped
                    .iter()
                    .map(|(k, (a, b))| (k.clone(), [*a, *b]))
                    .collect::<BTreeMap<_, _>>(),
            )
            .expect("ranges serialize"),
        );
    }
    r.set_gap(Some(notice));
    skipped
}

/// A [`Relay`] behind a mutex, shared with whoever serves its clients; `changed` is
/// notified after every [`HandoffHost::run`] (the owner then drains `poll_output`).
#[derive(Clone)]
pub struct SharedRelay {
    relay: Arc<Mutex<Relay>>,
    /// Notified after every call (outputs may be queued).
    pub changed: Arc<tokio::sync::Notify>,
    replication: Arc<tokio::sync::Notify>,
}

impl SharedRelay {
    /// Shares `relay`.
    pub fn new(relay: Relay) -> SharedRelay {
        SharedRelay {
            relay: Arc::new(Mutex::new(relay)),
            changed: Arc::new(tokio::sync::Notify::new()),
            replication: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Runs `f` on the relay right here (a client's write, in tests and embedders), then
    /// wakes the handoff's tail if `f` queued replication events.
    pub fn lock_with<T>(&self, f: impl FnOnce(&mut Relay) -> T) -> T {
        let mut r = self.relay.lock().expect("relay lock poisoned");
        let out = f(&mut r);
        let queued = r.replication_backlog() > 0;
        drop(r);
        self.changed.notify_one();
        if queued {
            self.replication.notify_one();
        }
        out
    }
}

#[async_trait::async_trait]
impl HandoffHost for SharedRelay {
    async fn run(&self, f: RelayFn) -> Result<(), RelayStopped> {
        self.lock_with(f);
        Ok(())
    }

    fn replication_queued(&self) -> Arc<tokio::sync::Notify> {
        self.replication.clone()
    }
}
