//! A backup file from fuzzed bytes (or a well-formed header line with fuzzed fields and
//! a matching checksum over a fuzzed snapshot), read as `DirBackupStore` reads it, then
//! used as crash recovery uses it: compared by `total_head`, its snapshot restored and the
//! gap opened.
//!
//! Beyond "no panic": a backup that reads writes and reads back to itself (its time to the
//! millisecond the file keeps), and a restored backup's relay exports a snapshot that
//! restores again.
#![no_main]

use std::time::{Duration, Instant, UNIX_EPOCH};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use ouroboros::handoff::backup::total_head;
use ouroboros::handoff::{Backup, DEFAULT_GAP_MARGIN, sha256_hex};
use ouroboros::relay::{MAX_HEAD, Relay, RelayConfig, Snapshot};
use serde_json::json;

#[derive(Arbitrary, Debug)]
struct Shaped {
    generation: u64,
    peer_id: String,
    taken_at: TimeSpec,
    high_water: Vec<(String, u64)>,
    snapshot: SnapshotSpec,
    wrong_size: bool,
}

#[derive(Arbitrary, Debug)]
enum TimeSpec {
    Millis(u64),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum SnapshotSpec {
    Bytes(Vec<u8>),
    /// A small valid snapshot of one room with `n` messages.
    Room {
        head: u8,
        n: u8,
        floor: u8,
    },
}

impl Shaped {
    fn to_bytes(&self) -> Vec<u8> {
        let taken_at = match &self.taken_at {
            TimeSpec::Millis(ms) => {
                let t = UNIX_EPOCH + Duration::from_millis(ms % 253_402_300_799_000);
                humantime::format_rfc3339_millis(t).to_string()
            }
            TimeSpec::Text(s) => s.clone(),
        };
        let snapshot = match &self.snapshot {
            SnapshotSpec::Bytes(b) => b.clone(),
            SnapshotSpec::Room { head, n, floor } => {
                let n = u64::from(n % 8);
                let head = u64::from(*head % 16).max(n);
                let messages: Vec<_> = (head - n + 1..=head)
                    .map(|seq| json!({"room": "r", "seq": seq, "from": "c", "ts": 1, "id": null, "body": seq}))
                    .collect();
                json!({
                    "version": 1, "node": "n", "generation": 2, "seq_floor": u64::from(floor % 4),
                    "rooms": [{"name": "r", "head": head, "evicted_before": head - n + 1}],
                    "messages": messages,
                })
                .to_string()
                .into_bytes()
            }
        };
        let header = json!({
            "generation": self.generation,
            "peer_id": self.peer_id,
            "taken_at": taken_at,
            "high_water": self
                .high_water
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
            "size": snapshot.len() as u64 + u64::from(self.wrong_size),
            "sha256": sha256_hex(&snapshot),
        });
        let mut bytes = header.to_string().into_bytes();
        bytes.push(b'\n');
        bytes.extend_from_slice(&snapshot);
        bytes
    }
}

fn run(bytes: &[u8]) {
    let Ok(backup) = Backup::from_file_bytes(bytes) else {
        return;
    };
    // Written and read back: the same backup, its time cut to the millisecond.
    let back = Backup::from_file_bytes(&backup.to_file_bytes()).expect("own file reads");
    assert_eq!(back.generation, backup.generation);
    assert_eq!(back.peer_id, backup.peer_id);
    assert_eq!(back.high_water, backup.high_water);
    assert_eq!(back.snapshot, backup.snapshot);
    let cut = backup
        .taken_at
        .duration_since(back.taken_at)
        .expect("the time is cut, never moved forward");
    assert!(cut < Duration::from_millis(1));
    let twice = Backup::from_file_bytes(&back.to_file_bytes()).expect("own file reads");
    assert_eq!(twice, back);

    // What `recover` does with it.
    let _ = total_head(&backup.high_water);
    let Ok(snapshot) = Snapshot::from_json(&backup.snapshot) else {
        return;
    };
    let config = RelayConfig::new("successor", backup.generation.wrapping_add(1));
    let now = Instant::now();
    let Ok(mut relay) = Relay::restore(config.clone(), snapshot, now) else {
        return;
    };
    relay.open_gap(DEFAULT_GAP_MARGIN);
    relay.set_gap(Some(
        json!({"reason": "predecessor_lost", "margin": DEFAULT_GAP_MARGIN}),
    ));
    let own =
        Snapshot::from_json(&relay.export_snapshot().to_json()).expect("own snapshot decodes");
    // (Unless the gap takes a head beyond the limit a snapshot may carry.)
    let room_to_spare = own.seq_floor <= MAX_HEAD && own.rooms.iter().all(|r| r.head <= MAX_HEAD);
    let restored = Relay::restore(config, own, now);
    assert!(
        restored.is_ok() || !room_to_spare,
        "the recovered relay's snapshot does not restore: {restored:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        run(rest);
    } else if let Ok(shaped) = Shaped::arbitrary(&mut Unstructured::new(rest)) {
        run(&shaped.to_bytes());
    }
});
