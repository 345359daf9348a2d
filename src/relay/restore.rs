//! Building a relay from a snapshot: at once ([`Relay::restore`]) or step by step
//! ([`Restorer`]), and opening a gap after a crash restore.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use super::store::Room;
use super::{
    Relay, RelayConfig, RelayError, SNAPSHOT_VERSION, Snapshot, SnapshotHeader, StoredMessage,
};

impl Relay {
    /// A relay holding `snapshot`'s store (in [`Mode::Primary`]; set [`Mode::Draining`]
    /// until the handoff is confirmed). The budget of `config` applies. [`Restorer`] does
    /// the same step by step (while the snapshot is still arriving).
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] if a room's messages do not increase, exceed its head,
    /// precede its eviction mark, or skip seqs (allowed only once a crash-restore gap
    /// was opened in the ring, `seq_floor > 0`), a message names an unlisted room, or a head
    /// is above [`MAX_HEAD`].
    pub fn restore(
        config: RelayConfig,
        snapshot: Snapshot,
        now: Instant,
    ) -> Result<Relay, RelayError> {
        let (header, messages) = snapshot.into_parts();
        let mut r = Restorer::new(config, header, now)?;
        for m in messages {
            r.push(m)?;
        }
        r.finish()
    }

    /// After a crash restore from a backup that may predate what the lost node
    /// acknowledged: moves every room's head, and the head new rooms start from, forward
    /// by `margin`, so no sequence number the lost node may have handed out is ever
    /// reused and clients resuming with `since` up to `margin` beyond the backup miss
    /// nothing new. Returns each used room's skipped range `(first, last)` (for the
    /// `welcome` gap notice, [`Relay::set_gap`]). Call it right after [`Relay::restore`],
    /// before enabling replication; the floor travels in later snapshots.
    pub fn open_gap(&mut self, margin: u64) -> BTreeMap<String, (u64, u64)> {
        debug_assert!(self.replication.is_none(), "open_gap before replication");
        let old_floor = self.seq_floor;
        self.seq_floor = self.seq_floor.saturating_add(margin);
        let mut skipped = BTreeMap::new();
        for r in self.rooms.values_mut() {
            let old = r.head;
            r.head = r.head.saturating_add(margin);
            if r.log.is_empty() {
                r.evicted_before = r.head + 1;
            }
            if old > old_floor {
                skipped.insert(r.name.to_string(), (old + 1, r.head));
            }
        }
        skipped
    }
}

/// Largest room head (and seq floor) a snapshot may carry: far beyond what one seq per
/// message can reach, and leaving room for the next seq and for crash-restore gaps without
/// overflow.
pub const MAX_HEAD: u64 = 1 << 62;

/// [`Relay::restore`] step by step: the header first, then the messages in snapshot
/// order, then [`finish`](Restorer::finish). Each message is checked as it comes.
#[derive(Debug)]
pub struct Restorer {
    relay: Relay,
    heads: HashMap<String, u64>,
    holes_allowed: bool,
}

impl Restorer {
    /// Starts a relay with `header`'s rooms (no messages yet).
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] for an unknown version, an eviction mark outside the
    /// room's range, or a head or seq floor above [`MAX_HEAD`].
    pub fn new(
        config: RelayConfig,
        header: SnapshotHeader,
        now: Instant,
    ) -> Result<Restorer, RelayError> {
        let bad = |m: String| Err(RelayError::Snapshot(m));
        let mut r = Relay::new(config, now);
        if header.version != SNAPSHOT_VERSION {
            return bad(format!("unknown version {}", header.version));
        }
        if header.seq_floor > MAX_HEAD {
            return bad(format!("seq_floor {} above {MAX_HEAD}", header.seq_floor));
        }
        r.seq_floor = header.seq_floor;
        let mut heads: HashMap<String, u64> = HashMap::new();
        for rs in header.rooms {
            if rs.head > MAX_HEAD {
                return bad(format!(
                    "room {}: head {} above {MAX_HEAD}",
                    rs.name, rs.head
                ));
            }
            if rs.evicted_before == 0 || rs.evicted_before > rs.head.saturating_add(1) {
                return bad(format!(
                    "room {}: evicted_before {} outside 1..={}",
                    rs.name,
                    rs.evicted_before,
                    rs.head.saturating_add(1)
                ));
            }
            let name: Arc<str> = rs.name.as_str().into();
            let mut room = Room::new(name.clone(), 0);
            room.head = rs.evicted_before - 1;
            room.evicted_before = rs.evicted_before;
            r.rooms.insert(name, room);
            heads.insert(rs.name, rs.head);
        }
        Ok(Restorer {
            holes_allowed: header.seq_floor > 0,
            relay: r,
            heads,
        })
    }

    /// Adds the next message.
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] if it names an unlisted room or its seq does not follow
    /// the room's previous one (or exceeds the room's head).
    pub fn push(&mut self, m: StoredMessage) -> Result<(), RelayError> {
        let Some(room) = self.relay.rooms.get(m.room()) else {
            return Err(RelayError::Snapshot(format!(
                "message for unlisted room {}",
                m.room()
            )));
        };
        let head = self.heads.get(m.room()).copied().unwrap_or(0);
        let next_ok = if self.holes_allowed {
            m.seq() > room.head
        } else {
            m.seq() == room.head + 1
        };
        if !next_ok || m.seq() > head {
            return Err(RelayError::Snapshot(format!(
                "room {}: seq {} after {} (head {head})",
                m.room(),
                m.seq(),
                room.head
            )));
        }
        // `insert` raises the eviction mark of a room with an empty log to its first
        // message's seq; a snapshot carries its own mark, and a restore keeps it. Across a
        // crash-restore gap the two differ: a room whose oldest messages were evicted has
        // the mark after the last evicted seq (3), below its first stored message (5), and
        // restoring it with the mark raised to 5 made a relay whose snapshot differs from
        // the one it came from (found by the `snapshot_restore` fuzz target).
        let name = m.room_arc().clone();
        let evicted_before = room.evicted_before;
        self.relay.insert(m);
        if let Some(room) = self.relay.rooms.get_mut(&*name) {
            room.evicted_before = evicted_before;
        }
        Ok(())
    }

    /// The restored relay (budget enforced).
    ///
    /// # Errors
    /// [`RelayError::Snapshot`] if a room's messages end before its head (without a gap
    /// in the ring).
    pub fn finish(self) -> Result<Relay, RelayError> {
        let mut r = self.relay;
        for (name, head) in self.heads {
            if let Some(room) = r.rooms.get_mut(name.as_str()) {
                if room.head != head && !room.log.is_empty() && !self.holes_allowed {
                    return Err(RelayError::Snapshot(format!(
                        "room {name}: messages end at {} but head is {head}",
                        room.head
                    )));
                }
                room.head = head;
            }
        }
        r.enforce_budget();
        Ok(r)
    }
}
