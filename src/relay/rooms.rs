//! Rooms: joining, leaving, presence and history paging, and freeing idle rooms.
//!
//! # Freeing rooms
//! `max_rooms` caps the rooms the node holds. A room is forgotten when it has had no members
//! and no stored messages for `room_idle` (ten minutes by default) and a new room needs its
//! place: the relay then looks for such rooms (at most once a second) and frees them. A room
//! with stored messages is never freed (history does not vanish because a room went quiet);
//! eviction under the memory budget removes messages first, then the room may go. Sequence
//! numbers are never reused: a freed room's head raises the floor every new room starts
//! from, so a room created again continues above it. Only a primary frees rooms (a successor
//! mirrors its predecessor; the floor travels in snapshots, and the replication tail marks a
//! new room's start with an `Evicted` event before its first message).

use std::sync::Arc;
use std::time::Duration;

use super::store::Room;
use super::wire::{ErrorCode, ServerMessage};
use super::{ConnId, Mode, Payload, Refusal, Relay, refuse};
use crate::json::push_json_str;

impl Relay {
    pub(super) fn check_room(&self, room: &str) -> Result<(), Refusal> {
        let max = self.config.limits.max_room_name;
        let ok = !room.is_empty()
            && room.len() <= max
            && !room.starts_with('.')
            && room
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if ok {
            Ok(())
        } else {
            refuse(
                ErrorCode::BadRoom,
                format!(
                    "room names are 1-{max} bytes of A-Z a-z 0-9 . _ : - and do not start with '.'"
                ),
            )
        }
    }

    /// The room, created if the room limit allows (after freeing idle rooms if needed).
    pub(super) fn room_or_create(&mut self, room: &str) -> Result<&mut Room, Refusal> {
        if !self.rooms.contains_key(room) {
            if self.rooms.len() >= self.config.limits.max_rooms {
                self.free_idle_rooms();
            }
            if self.rooms.len() >= self.config.limits.max_rooms {
                return refuse(
                    ErrorCode::RoomLimit,
                    "the node holds its maximum number of rooms",
                );
            }
            let name: Arc<str> = room.into();
            self.rooms
                .insert(name.clone(), Room::new(name, self.seq_floor));
        }
        Ok(self.rooms.get_mut(room).expect("inserted above"))
    }

    /// Forgets every room that has been empty (no members, no stored messages) for
    /// `room_idle`, raising the seq floor to their heads. Runs at most once a second, and
    /// only on a primary.
    pub(super) fn free_idle_rooms(&mut self) {
        let now = self.now;
        if self.mode != Mode::Primary
            || self
                .last_sweep
                .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        let idle = self.config.room_idle;
        let mut floor = self.seq_floor;
        let before = self.rooms.len();
        self.rooms.retain(|_, r| {
            if !r.is_empty() {
                r.idle_since = None;
                return true;
            }
            let since = *r.idle_since.get_or_insert(now);
            if now.duration_since(since) < idle {
                return true;
            }
            floor = floor.max(r.head);
            false
        });
        self.seq_floor = floor;
        let freed = before - self.rooms.len();
        self.m.rooms_freed += freed as u64;
        if freed > 0 {
            tracing::debug!(freed, seq_floor = floor, "idle rooms freed");
        }
    }

    pub(super) fn join(
        &mut self,
        conn: ConnId,
        room: &str,
        since: Option<u64>,
    ) -> Result<(), Refusal> {
        self.check_room(room)?;
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let (proto, identity) = (c.proto, c.identity.clone());
        let already = c.rooms.iter().any(|r| &**r == room);
        if !already && c.rooms.len() >= self.config.limits.max_rooms_per_client {
            return refuse(
                ErrorCode::TooManyRooms,
                format!(
                    "at most {} rooms per connection",
                    self.config.limits.max_rooms_per_client
                ),
            );
        }
        let (page_max, page_bytes) = (
            self.config.limits.history_limit_max,
            self.config.limits.history_max_bytes,
        );
        let r = self.room_or_create(room)?;
        let name = r.name.clone();
        let mut announce = None;
        if !already {
            r.members.insert(conn);
            r.idle_since = None;
            let n = r.presence.entry(identity.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                announce = Some(presence_payload(room, std::slice::from_ref(&identity), &[]));
            }
        }
        let (replay, replay_to) = match since {
            None => (Vec::new(), None),
            Some(s) => replay_page(r, s, page_max as usize, page_bytes),
        };
        if replay_to.is_some() {
            r.catching_up.insert(conn);
        } else {
            r.catching_up.remove(&conn);
        }
        let joined = Payload::of(&ServerMessage::Joined {
            room: room.to_owned(),
            head: r.head,
            replay_to,
        });
        let mut present: Vec<Arc<str>> = r.presence.keys().cloned().collect();
        present.sort();
        let members: Vec<ConnId> = r.members.iter().copied().filter(|m| *m != conn).collect();
        if !already && let Some(c) = self.conns.get_mut(&conn) {
            c.rooms.push(name);
        }
        self.send(conn, proto, &joined);
        self.send(conn, proto, &presence_payload(room, &present, &[]));
        if let Some(p) = announce {
            for m in members {
                self.send_to(m, &p);
            }
        }
        self.m.delivered += replay.len() as u64;
        for p in &replay {
            self.send(conn, proto, p);
        }
        Ok(())
    }

    pub(super) fn leave(&mut self, conn: ConnId, room: &str) -> Result<(), Refusal> {
        self.check_room(room)?;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let Some(pos) = c.rooms.iter().position(|r| &**r == room) else {
            return refuse(ErrorCode::NotJoined, format!("not joined to {room}"));
        };
        c.rooms.swap_remove(pos);
        let identity = c.identity.clone();
        self.remove_member(room, conn, &identity);
        Ok(())
    }

    pub(super) fn remove_member(&mut self, room: &str, conn: ConnId, identity: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.members.remove(&conn);
        r.catching_up.remove(&conn);
        let gone = match r.presence.get_mut(identity) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                r.presence.remove(identity);
                true
            }
            None => false,
        };
        let members: Vec<ConnId> = r.members.iter().copied().collect();
        if r.is_empty() {
            if r.head <= self.seq_floor {
                // Never used (or below the floor): forgetting it costs nothing, a room
                // created again starts above its head anyway.
                self.rooms.remove(room);
            } else {
                r.idle_since = Some(self.now);
            }
        }
        if gone {
            let p = presence_payload(room, &[], std::slice::from_ref(identity));
            for m in members {
                self.send_to(m, &p);
            }
        }
    }

    pub(super) fn history(
        &mut self,
        conn: ConnId,
        room: &str,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(), Refusal> {
        self.check_room(room)?;
        let lim = &self.config.limits;
        let limit = limit.unwrap_or(lim.history_default_limit);
        if limit == 0 || limit > lim.history_limit_max {
            return refuse(
                ErrorCode::BadLimit,
                format!("limit must be 1-{}", lim.history_limit_max),
            );
        }
        let max_bytes = lim.history_max_bytes;
        // Written by hand: the page embeds each stored message's shared JSON text as is
        // (no re-serialising bodies); the tests read it back through `wire::ServerMessage`.
        let mut s = String::from(r#"{"op":"history","room":"#);
        push_json_str(&mut s, room);
        s.push_str(r#","messages":["#);
        let mut evicted_before = None;
        if let Some(r) = self.rooms.get(room) {
            let end = r.index_after(before.unwrap_or(u64::MAX).saturating_sub(1));
            for (count, e) in r.log.range(..end).rev().enumerate() {
                let json = e.msg.payload().json();
                if count == limit as usize || (count > 0 && s.len() + json.len() > max_bytes) {
                    break;
                }
                if count > 0 {
                    s.push(',');
                }
                s.push_str(json);
            }
            if r.evicted_before > 1 {
                evicted_before = Some(r.evicted_before);
            }
        }
        s.push(']');
        if let Some(eb) = evicted_before {
            s.push_str(r#","evicted_before":"#);
            s.push_str(&eb.to_string());
        }
        s.push('}');
        self.send_to(conn, &Payload::new(s));
        Ok(())
    }
}

/// One page of a `join` replay: the stored messages with `seq > since`, oldest first, at most
/// `max` of them (`history_limit_max`) and `max_bytes` of JSON (`history_max_bytes`; at least
/// one message), each as a delivery copy; and the seq it stops at when more is stored after.
fn replay_page(
    r: &Room,
    since: u64,
    max: usize,
    max_bytes: usize,
) -> (Vec<Arc<Payload>>, Option<u64>) {
    let start = r.index_after(since);
    let mut page = Vec::new();
    let mut bytes = 0;
    for e in r.log.range(start..) {
        let len = e.msg.payload().json().len();
        let full = page.len() == max || (!page.is_empty() && bytes + len > max_bytes);
        if full {
            let last = r.log[start + page.len() - 1].msg.seq();
            return (page, Some(last));
        }
        bytes += len;
        page.push(e.msg.payload().delivery());
    }
    (page, None)
}

/// `{"op":"presence","room","joined","left"}`, written by hand (one per join and leave, sent
/// to every member); the same shape as `wire::ServerMessage::Presence`.
fn presence_payload(room: &str, joined: &[Arc<str>], left: &[Arc<str>]) -> Arc<Payload> {
    let mut s = String::from(r#"{"op":"presence","room":"#);
    push_json_str(&mut s, room);
    for (key, list) in [(r#","joined":["#, joined), (r#"],"left":["#, left)] {
        s.push_str(key);
        for (i, n) in list.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            push_json_str(&mut s, n);
        }
    }
    s.push_str("]}");
    Payload::new(s)
}
