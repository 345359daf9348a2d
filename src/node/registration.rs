//! The node's peer registrations: one PeerJS peer with the node's id on each signaling
//! server (its own, plus every `--also-register` server). Each registration re-opens with
//! backoff when it fails, and hands every incoming DataConnection to the relay driver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::status::EndpointStatus;
use crate::peer::{DataConnection, Peer, PeerConfig, PeerError, PeerEvent};
use crate::retry::Backoff;

/// Shown on `/status` and `/metrics` for one registration.
#[derive(Debug)]
pub struct Registration {
    /// Where (a display URL without secrets).
    pub url: String,
    /// `own` or `extra`.
    pub kind: &'static str,
    state: Mutex<(String, u64, Option<String>)>,
}

impl Registration {
    /// A registration not yet attempted.
    pub fn new(url: String, kind: &'static str) -> Arc<Self> {
        Arc::new(Registration {
            url,
            kind,
            state: Mutex::new(("connecting".into(), 0, None)),
        })
    }

    fn set(&self, state: &str, registered: bool, error: Option<String>) {
        let mut s = self.state.lock().expect("registration lock poisoned");
        s.0 = state.to_string();
        if registered {
            s.1 += 1;
        }
        if error.is_some() {
            s.2 = error;
        }
    }

    /// A snapshot for the status page.
    pub fn status(&self) -> EndpointStatus {
        let s = self.state.lock().expect("registration lock poisoned");
        EndpointStatus {
            url: self.url.clone(),
            kind: self.kind,
            state: s.0.clone(),
            registrations: s.1,
            last_error: s.2.clone(),
        }
    }

    /// Whether the peer is registered now.
    pub fn is_up(&self) -> bool {
        self.state.lock().expect("registration lock poisoned").0 == "registered"
    }
}

/// A display URL for a peer config: `ws[s]://host:port/path` (the key is public in PeerJS,
/// but left out anyway).
pub fn display_url(cfg: &PeerConfig) -> String {
    format!(
        "{}://{}:{}{}",
        if cfg.secure { "wss" } else { "ws" },
        cfg.host,
        cfg.port,
        cfg.normalized_path()
    )
}

/// Called with the node's fresh id on a server where its id was taken, once the fresh id is
/// registered there.
pub type OnMoved = Box<dyn Fn(&str) + Send + Sync>;

/// Keeps the node's peer registered on one server until `stop` is cancelled, passing each
/// incoming connection to `on_conn`. The first successful open is reported on `opened`.
///
/// With `on_moved` (servers the node does not control, such as the PeerJS cloud, where anyone
/// may register any free id): when the server answers `ID-TAKEN`, another party holds the
/// node's id there, so the node moves to a fresh random id on that server at once and reports
/// it through `on_moved` after it registered (the node republishes its record). Without it
/// (the node's own server, where its id is reserved), `ID-TAKEN` is retried with backoff.
pub async fn keep_registered(
    cfg: PeerConfig,
    reg: Arc<Registration>,
    on_conn: impl Fn(DataConnection) + Send + Sync + 'static,
    opened: Option<tokio::sync::oneshot::Sender<Result<Peer, String>>>,
    on_moved: Option<OnMoved>,
    stop: CancellationToken,
) {
    let mut cfg = cfg;
    let mut opened = opened;
    let mut moved_to: Option<String> = None;
    const FIRST_DELAY: Duration = Duration::from_millis(200);
    const MAX_DELAY: Duration = Duration::from_secs(30);
    let mut delays = Backoff::new(FIRST_DELAY, MAX_DELAY).delays();
    loop {
        reg.set("connecting", false, None);
        let attempt = tokio::select! {
            r = Peer::open(cfg.clone()) => r,
            _ = stop.cancelled() => return,
        };
        match attempt {
            Ok(peer) => {
                reg.set("registered", true, None);
                tracing::info!(server = %reg.url, id = %peer.id(), "node peer registered");
                if let (Some(id), Some(f)) = (moved_to.take(), on_moved.as_ref()) {
                    f(&id);
                }
                if let Some(tx) = opened.take() {
                    let _ = tx.send(Ok(peer.clone()));
                }
                delays.reset();
                let mut events = peer.events();
                loop {
                    tokio::select! {
                        c = peer.accept() => match c {
                            Some(conn) => on_conn(conn),
                            None => break,
                        },
                        ev = events.recv() => match ev {
                            Ok(PeerEvent::Disconnected) => reg.set("reconnecting", false, None),
                            Ok(PeerEvent::Reconnected) | Ok(PeerEvent::Open(_)) => reg.set("registered", true, None),
                            Ok(PeerEvent::Error(e)) => {
                                tracing::warn!(server = %reg.url, error = %e, "node peer error");
                                let state = if reg.is_up() { "registered" } else { "reconnecting" };
                                reg.set(state, false, Some(e.to_string()));
                            }
                            Ok(PeerEvent::Closed) => break,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                        },
                        _ = stop.cancelled() => {
                            peer.close().await;
                            return;
                        }
                    }
                }
                peer.close().await;
                reg.set("retrying", false, Some("peer closed".into()));
            }
            Err(PeerError::IdTaken) if on_moved.is_some() => {
                let fresh = super::args::random_peer_id();
                tracing::warn!(
                    server = %reg.url,
                    taken = cfg.id.as_deref().unwrap_or_default(),
                    fresh = %fresh,
                    "another party holds the node's id on this server; moving to a fresh id there"
                );
                reg.set(
                    "moving",
                    false,
                    Some("ID-TAKEN: moved to a fresh id".into()),
                );
                cfg.id = Some(fresh.clone());
                // At once the first time (a fresh random id is free with overwhelming
                // probability); a server that refuses fresh ids too is retried with backoff.
                if moved_to.replace(fresh).is_none() {
                    continue;
                }
            }
            Err(e) => {
                tracing::warn!(server = %reg.url, error = %e, "node peer registration failed; retrying");
                reg.set("retrying", false, Some(e.to_string()));
                if let Some(tx) = opened.take() {
                    // The caller decides whether a failed first attempt is fatal.
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        }
        let delay = delays.next_delay().unwrap_or(MAX_DELAY);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return,
        }
    }
}
