//! The store path: appending to a room's log, fanning out and the memory budget
//! (global oldest-first eviction).

use std::sync::Arc;

use super::store::{Entry, Room};
use super::{Outgoing, Output, Proto, Relay, ReplicationEvent, StoredMessage, identity, legacy};

impl Relay {
    /// Stores a message made here (publish or legacy), fans it out, replicates it and
    /// enforces the budget.
    pub(super) fn store(&mut self, msg: StoredMessage) {
        if let Some(q) = &mut self.replication {
            q.push_back(ReplicationEvent::Stored(msg.clone()));
        }
        let entry = self.insert(msg);
        self.fan_out(&entry);
        self.enforce_budget();
    }

    /// Appends a message to its room's log (the caller checked `seq == head + 1`).
    pub(super) fn insert(&mut self, msg: StoredMessage) -> Entry {
        let legacy = (*msg.room_arc() == self.legacy_room)
            .then(|| Arc::<str>::from(legacy::view(msg.body_json(), msg.from(), msg.ts())));
        let entry = Entry { msg, legacy };
        let room_name = entry.msg.room_arc().clone();
        let floor = self.seq_floor;
        let r = self
            .rooms
            .entry(room_name.clone())
            .or_insert_with(|| Room::new(room_name.clone(), floor));
        debug_assert!(entry.msg.seq() > r.head);
        r.head = entry.msg.seq();
        if r.log.is_empty() {
            r.evicted_before = r.evicted_before.max(entry.msg.seq());
        }
        if r.dedup_insert(&entry.msg) {
            identity::count_publisher(&mut self.publishers, entry.msg.publisher_arc(), true);
        }
        r.log.push_back(entry.clone());
        self.bytes += entry.cost();
        self.messages += 1;
        self.order.push_back((r.name.clone(), entry.msg.seq()));
        entry
    }

    pub(super) fn fan_out(&mut self, entry: &Entry) {
        let Some(r) = self.rooms.get(entry.msg.room()) else {
            return;
        };
        let mut n = 0;
        for m in &r.members {
            if let Some(c) = self.conns.get(m) {
                let message = match c.proto {
                    Proto::Text => Outgoing::Text(entry.msg.payload().json_arc()),
                    _ => Outgoing::Object(entry.msg.payload().clone()),
                };
                self.out.push_back(Output::Send { conn: *m, message });
                n += 1;
            }
        }
        if let Some(text) = &entry.legacy {
            for m in &self.legacy_conns {
                self.out.push_back(Output::Send {
                    conn: *m,
                    message: Outgoing::Text(text.clone()),
                });
                n += 1;
            }
        }
        self.m.delivered += n;
    }

    /// Evicts the globally oldest messages while over budget (never the last one).
    pub(super) fn enforce_budget(&mut self) {
        while self.bytes > self.config.memory_budget && self.messages > 1 {
            let Some((room, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            if r.first_seq() != Some(seq) {
                continue; // already evicted through replication
            }
            let e = r.log.pop_front().expect("first_seq is Some");
            if r.dedup_remove(&e.msg) {
                identity::count_publisher(&mut self.publishers, e.msg.publisher_arc(), false);
            }
            r.evicted_before = seq + 1;
            let cost = e.cost();
            self.bytes -= cost;
            self.messages -= 1;
            self.m.evicted_messages += 1;
            self.m.evicted_bytes += cost as u64;
            if let Some(q) = &mut self.replication {
                match q.back_mut() {
                    Some(ReplicationEvent::Evicted { room: last, before }) if **last == *room => {
                        *before = seq + 1;
                    }
                    _ => q.push_back(ReplicationEvent::Evicted {
                        room: room.to_string(),
                        before: seq + 1,
                    }),
                }
            }
        }
    }
}
