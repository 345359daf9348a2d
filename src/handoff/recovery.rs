//! Crash safety around the handoff: periodic backups ([`spawn_backups`]) and the
//! successor's fallback when its predecessor is gone ([`recover`]).

use super::Transferred;
use super::backup::{Backup, BackupError, BackupStore, total_head};
use super::host::{HandoffHost, HostOps};
use super::message::HighWater;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How far every room's head moves forward after a crash recovery: more than the lost
/// node can plausibly have acknowledged since the last backup.
pub const DEFAULT_GAP_MARGIN: u64 = 10_000;

/// Where a recovered successor's state came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "source")]
pub enum RecoverySource {
    /// What the handoff transferred before the predecessor died (newer than any backup).
    Handoff {
        /// How far the transfer got.
        #[serde(skip)]
        transferred: Transferred,
    },
    /// The newest backup.
    Backup {
        /// Generation of the node that wrote it.
        generation: u64,
        /// When it was written.
        #[serde(with = "crate::discovery::rfc3339")]
        taken_at: SystemTime,
    },
    /// Nothing: no transfer, no backup. The node starts empty.
    Empty,
}

/// What a crash recovery did (for `/status`; also in `welcome.gap`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// Where the state came from.
    #[serde(flatten)]
    pub source: RecoverySource,
    /// Heads moved forward by this much (0: the predecessor's final backup was complete,
    /// no gap was opened).
    pub margin: u64,
    /// Per room: the skipped sequence range `[first, last]`.
    pub skipped: BTreeMap<String, (u64, u64)>,
}

/// The successor's fallback after [`super::SuccessorOutcome::GaveUp`] with
/// `PredecessorUnreachable`: keeps what the handoff transferred if it is at least as new
/// as the newest backup, else restores that backup; then opens the gap (`margin`) and
/// announces it in `welcome.gap` (with `cause`: why the handoff was given up, e.g.
/// `unreachable` or `blocked`) — unless the newest backup is the final one of
/// `predecessor` (generation, peer id): that node stopped writes before taking it, so
/// nothing acknowledged is missing, no gap is opened and seqs continue at the next one.
/// The caller then makes the relay primary and publishes discovery (a refusal by the
/// guard means another node took over: exit).
///
/// # Errors
/// Backup store failures, or an unrestorable backup.
pub async fn recover(
    host: &dyn HandoffHost,
    store: Option<&dyn BackupStore>,
    transferred: Transferred,
    margin: u64,
    cause: &str,
    predecessor: Option<(u64, &str)>,
) -> Result<Recovery, BackupError> {
    let ours = if transferred != Transferred::Nothing {
        Some(host.high_water().await)
    } else {
        None
    };
    let backup = match store {
        Some(s) => s.latest().await?,
        None => None,
    };
    let complete = backup.as_ref().is_some_and(|b| {
        b.is_final && predecessor.is_some_and(|(g, p)| b.generation == g && b.peer_id == p)
    });
    let source = match (ours, backup) {
        (Some(hw), Some(b)) if total_head(&hw) >= total_head(&b.high_water) => {
            RecoverySource::Handoff { transferred }
        }
        (_, Some(b)) => {
            host.restore(b.snapshot).await?;
            RecoverySource::Backup {
                generation: b.generation,
                taken_at: b.taken_at,
            }
        }
        (Some(_), None) => RecoverySource::Handoff { transferred },
        (None, None) => {
            host.reset().await;
            RecoverySource::Empty
        }
    };
    if complete {
        tracing::info!(
            ?source,
            "recovered from the predecessor's final backup: nothing missing, no gap"
        );
        return Ok(Recovery {
            source,
            margin: 0,
            skipped: BTreeMap::new(),
        });
    }
    let notice = serde_json::json!({
        "reason": "predecessor_lost",
        "cause": cause,
        "recovery": serde_json::to_value(&source).expect("serializes"),
        "margin": margin,
    });
    let skipped = host.open_gap(margin, notice).await;
    tracing::warn!(
        ?source,
        margin,
        rooms = skipped.len(),
        "recovered without the predecessor; gap announced"
    );
    Ok(Recovery {
        source,
        margin,
        skipped,
    })
}

/// Writes a backup every `interval` (skipped while nothing changed), until the returned
/// handle is aborted. Failures are logged and retried at the next tick.
pub fn spawn_backups(
    host: Arc<dyn HandoffHost>,
    store: Arc<dyn BackupStore>,
    interval: Duration,
    generation: u64,
    peer_id: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last: Option<HighWater> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = backup_once(&*host, &*store, generation, &peer_id, &mut last).await;
        }
    })
}

/// The node's last backup before it exits without a successor: stops writes first (the
/// relay refuses publishes from here on), then stores a backup marked final, so a
/// successor recovering from it opens no gap.
///
/// # Errors
/// Store failures (logged too).
pub async fn final_backup(
    host: &dyn HandoffHost,
    store: &dyn BackupStore,
    generation: u64,
    peer_id: &str,
) -> Result<(), BackupError> {
    host.set_mode(crate::relay::Mode::Draining).await;
    write_backup(host, store, generation, peer_id, true)
        .await
        .map(|_| ())
}

/// Writes one backup unless the heads equal `last`; updates `last`.
///
/// # Errors
/// Store failures (logged too).
pub async fn backup_once(
    host: &dyn HandoffHost,
    store: &dyn BackupStore,
    generation: u64,
    peer_id: &str,
    last: &mut Option<HighWater>,
) -> Result<bool, BackupError> {
    if let Some(last) = last
        && *last == host.high_water().await
    {
        return Ok(false);
    }
    *last = Some(write_backup(host, store, generation, peer_id, false).await?);
    Ok(true)
}

/// Takes and stores one backup; returns its heads.
async fn write_backup(
    host: &dyn HandoffHost,
    store: &dyn BackupStore,
    generation: u64,
    peer_id: &str,
    is_final: bool,
) -> Result<HighWater, BackupError> {
    let (snapshot, high_water) = host.backup_snapshot().await;
    let backup = Backup {
        generation,
        peer_id: peer_id.to_string(),
        taken_at: SystemTime::now(),
        high_water: high_water.clone(),
        snapshot,
        is_final,
    };
    match store.save(&backup).await {
        Ok(()) => Ok(high_water),
        Err(e) => {
            tracing::warn!(error = %e, store = store.name(), "backup failed");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handoff::backup::DirBackupStore;
    use crate::handoff::host::SharedRelay;
    use crate::relay::{ConnId, ConnInfo, Output, Relay, RelayConfig};
    use serde_json::{Value, json};
    use std::time::Instant;

    fn shared(node: &str) -> SharedRelay {
        SharedRelay::new(Relay::new(RelayConfig::new(node, 1), Instant::now()))
    }

    /// Opens client `conn` and returns its `welcome`.
    fn open(r: &SharedRelay, conn: u64) -> Value {
        r.lock_with(|relay| open_on(relay, conn))
    }

    fn open_on(relay: &mut Relay, conn: u64) -> Value {
        relay.connect(
            Instant::now(),
            ConnId(conn),
            ConnInfo {
                peer_id: format!("p{conn}"),
                metadata: json!({"protocol": "ouroboros/1", "client": format!("c{conn}")}),
            },
        );
        sent(relay)
            .into_iter()
            .find(|v| v["op"] == "welcome")
            .expect("welcome")
    }

    /// The JSON messages `relay` sent since the last call.
    fn sent(relay: &mut Relay) -> Vec<Value> {
        std::iter::from_fn(|| relay.poll_output())
            .filter_map(|o| match o {
                Output::Send { message, .. } => serde_json::from_str(message.text()).ok(),
                _ => None,
            })
            .collect()
    }

    fn publish(r: &SharedRelay, conn: u64, room: &str, id: &str) -> u64 {
        r.lock_with(|relay| publish_on(relay, conn, room, id))
    }

    /// Client `conn` publishes `id` to `room`; returns what the relay sent.
    fn send_publish(relay: &mut Relay, conn: u64, room: &str, id: &str) -> Vec<Value> {
        relay.handle_message(
            Instant::now(),
            0,
            ConnId(conn),
            json!({"op":"publish","room":room,"id":id,"body":"b"}),
        );
        sent(relay)
    }

    fn publish_on(relay: &mut Relay, conn: u64, room: &str, id: &str) -> u64 {
        send_publish(relay, conn, room, id)
            .into_iter()
            .find(|v| v["op"] == "ack")
            .and_then(|v| v["seq"].as_u64())
            .expect("ack")
    }

    /// Node `old` (generation 1) with client 1 and `n` messages `m0`, `m1`, … in room
    /// `r`, backed up once to `store` (`last`: see [`backup_once`]).
    async fn backed_up_old(
        store: &DirBackupStore,
        n: usize,
        last: &mut Option<HighWater>,
    ) -> SharedRelay {
        let old = shared("old");
        open(&old, 1);
        for i in 0..n {
            publish(&old, 1, "r", &format!("m{i}"));
        }
        assert!(backup_once(&old, store, 1, "old", last).await.unwrap());
        old
    }

    /// A fresh node `node` recovered from `store` after the predecessor `predecessor` of
    /// generation 1 went away with nothing transferred (margin 100), then made primary.
    async fn recover_fresh(
        node: &str,
        store: &DirBackupStore,
        predecessor: &str,
    ) -> (SharedRelay, Recovery) {
        let new = shared(node);
        let rec = recover(
            &new,
            Some(store),
            Transferred::Nothing,
            100,
            "unreachable",
            Some((1, predecessor)),
        )
        .await
        .unwrap();
        new.set_mode(crate::relay::Mode::Primary).await;
        (new, rec)
    }

    #[tokio::test]
    async fn backups_then_recovery_from_the_newest_backup_opens_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBackupStore::new(dir.path(), 3);
        let mut last = None;
        let old = backed_up_old(&store, 5, &mut last).await;
        assert!(
            !backup_once(&old, &store, 1, "old", &mut last)
                .await
                .unwrap(),
            "unchanged: skipped"
        );
        publish(&old, 1, "r", "m5"); // acknowledged after the backup, then the node dies

        let (new, rec) = recover_fresh("new", &store, "old").await;
        assert!(matches!(
            rec.source,
            RecoverySource::Backup { generation: 1, .. }
        ));
        assert_eq!(rec.skipped.get("r"), Some(&(6, 105)));
        let welcome = open(&new, 7);
        assert_eq!(welcome["gap"]["reason"], "predecessor_lost");
        assert_eq!(welcome["gap"]["cause"], "unreachable");
        assert_eq!(welcome["gap"]["recovery"]["source"], "backup");
        assert_eq!(welcome["gap"]["skipped"]["r"], json!([6, 105]));
        // No seq the lost node may have handed out is reused; new rooms start past it too.
        assert_eq!(publish(&new, 7, "r", "x"), 106);
        assert_eq!(publish(&new, 7, "fresh", "y"), 101);
    }

    #[tokio::test]
    async fn transferred_state_newer_than_the_backup_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBackupStore::new(dir.path(), 3);
        let old = backed_up_old(&store, 1, &mut None).await;
        publish(&old, 1, "r", "m1");
        // The successor got a snapshot with both messages before the predecessor died.
        let new = shared("new");
        let (bytes, _) = old.backup_snapshot().await;
        new.restore(bytes).await.unwrap();
        let rec = recover(
            &new,
            Some(&store),
            Transferred::Snapshot,
            10,
            "unreachable",
            None,
        )
        .await
        .unwrap();
        assert!(matches!(rec.source, RecoverySource::Handoff { .. }));
        assert_eq!(rec.skipped.get("r"), Some(&(3, 12)));
        // Without any backup or transfer the node starts empty, still with a gap.
        let empty = shared("empty");
        let rec = recover(&empty, None, Transferred::Nothing, 10, "blocked", None)
            .await
            .unwrap();
        empty.set_mode(crate::relay::Mode::Primary).await;
        assert_eq!(rec.source, RecoverySource::Empty);
        open(&empty, 2);
        assert_eq!(publish(&empty, 2, "r", "z"), 11);
    }

    #[tokio::test]
    async fn a_final_backup_of_the_predecessor_recovers_without_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirBackupStore::new(dir.path(), 3);
        let old = backed_up_old(&store, 5, &mut None).await;
        publish(&old, 1, "r", "m5");
        // The predecessor gives up: writes stop, then the final backup.
        final_backup(&old, &store, 1, "old").await.unwrap();
        let refused = old.lock_with(|relay| {
            send_publish(relay, 1, "r", "late")
                .iter()
                .any(|v| v["op"] != "ack")
        });
        assert!(refused, "no write is acknowledged after the final backup");
        assert!(store.latest().await.unwrap().unwrap().is_final);

        // Another node's final backup (not our predecessor's) still opens the gap.
        let (_, rec) = recover_fresh("other", &store, "someone-else").await;
        assert_eq!(rec.margin, 100);

        let (new, rec) = recover_fresh("new", &store, "old").await;
        assert!(matches!(
            rec.source,
            RecoverySource::Backup { generation: 1, .. }
        ));
        assert_eq!((rec.margin, rec.skipped.len()), (0, 0));
        let welcome = open(&new, 7);
        assert!(welcome.get("gap").is_none_or(Value::is_null), "{welcome}");
        // Seqs continue at the next one: 1..=6 were used.
        assert_eq!(publish(&new, 7, "r", "x"), 7);
    }
}
