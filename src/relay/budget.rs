//! The store path: appending to a room's log, fanning out and the memory budget.
//!
//! # Eviction is fair across rooms
//! Over the budget, the oldest message of the room holding the most bytes goes first (ties:
//! the greatest room name), again and again: one room flooding the node evicts its own
//! history, and a quiet room keeps its messages until it is itself among the largest. The
//! rooms are kept ordered by size (`Relay::by_size`), so each eviction costs O(log rooms).

use std::collections::BTreeSet;
use std::sync::Arc;

use super::store::{Entry, Room};
use super::{Outgoing, Output, Proto, Relay, ReplicationEvent, StoredMessage, identity, legacy};

impl Relay {
    /// Stores a message made here (publish or legacy), fans it out, replicates it and
    /// enforces the budget.
    pub(super) fn store(&mut self, msg: StoredMessage) {
        if let Some(q) = &mut self.replication {
            // A room with nothing stored may have started above the successor's floor (rooms
            // freed since the snapshot raised ours): mark where it starts, so the successor
            // sees no gap (`apply_replication` takes an eviction mark for any room).
            let empty = self.rooms.get(msg.room()).is_none_or(|r| r.log.is_empty());
            if empty && msg.seq() > 1 {
                q.push_back(ReplicationEvent::Evicted {
                    room: msg.room().to_owned(),
                    before: msg.seq(),
                });
            }
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
        r.idle_since = None;
        if r.log.is_empty() {
            r.evicted_before = r.evicted_before.max(entry.msg.seq());
        }
        if r.dedup_insert(&entry.msg) {
            identity::count_publisher(&mut self.publishers, entry.msg.publisher_arc(), true);
        }
        r.log.push_back(entry.clone());
        let old = r.bytes;
        r.bytes += entry.cost();
        let new = r.bytes;
        resize(&mut self.by_size, &room_name, old, new);
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
        // One delivery copy for every member: the encodings binary/msgpack members make are
        // shared among them and die with their queues, never with the stored message.
        let delivery = entry.msg.payload().delivery();
        for m in r.members.difference(&r.catching_up) {
            if let Some(c) = self.conns.get(m) {
                let message = match c.proto {
                    Proto::Text => Outgoing::Text(entry.msg.payload().json_arc()),
                    _ => Outgoing::Object(delivery.clone()),
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

    /// Evicts the oldest message of the largest room while over budget (never the last
    /// message of the store).
    pub(super) fn enforce_budget(&mut self) {
        while self.bytes > self.config.memory_budget && self.messages > 1 {
            let Some((_, room)) = self.by_size.last().cloned() else {
                break;
            };
            let Some(r) = self.rooms.get_mut(&room) else {
                self.by_size.pop_last();
                continue;
            };
            let Some(e) = r.log.pop_front() else {
                let b = r.bytes;
                resize(&mut self.by_size, &room, b, 0);
                r.bytes = 0;
                continue;
            };
            let seq = e.msg.seq();
            if r.dedup_remove(&e.msg) {
                identity::count_publisher(&mut self.publishers, e.msg.publisher_arc(), false);
            }
            r.evicted_before = seq + 1;
            let cost = e.cost();
            let old = r.bytes;
            r.bytes -= cost;
            let new = r.bytes;
            resize(&mut self.by_size, &room, old, new);
            if r.is_empty() {
                r.idle_since = Some(self.now);
            }
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
        self.compact_order();
    }

    /// Drops the store-order slots of evicted messages: they leave from the front when the
    /// oldest messages go, but fair eviction also takes messages from the middle, so the
    /// slots are swept once they outnumber the stored messages (amortised O(1) each).
    pub(super) fn compact_order(&mut self) {
        while let Some((room, seq)) = self.order.front() {
            if self.rooms.get(room).and_then(|r| r.get(*seq)).is_some() {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() > 2 * self.messages + 1024 {
            let rooms = &self.rooms;
            self.order
                .retain(|(room, seq)| rooms.get(room).and_then(|r| r.get(*seq)).is_some());
        }
    }
}

/// Moves `room` from size `old` to size `new` in the size order (rooms of size 0 are not
/// listed).
pub(super) fn resize(
    by_size: &mut BTreeSet<(usize, Arc<str>)>,
    room: &Arc<str>,
    old: usize,
    new: usize,
) {
    if old == new {
        return;
    }
    if old > 0 {
        by_size.remove(&(old, room.clone()));
    }
    if new > 0 {
        by_size.insert((new, room.clone()));
    }
}
