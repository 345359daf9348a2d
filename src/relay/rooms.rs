//! Rooms: joining, leaving, presence and history paging.

use std::sync::Arc;

use super::store::Room;
use super::wire::{ErrorCode, ServerMessage};
use super::{ConnId, Payload, Refusal, Relay, refuse};
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

    /// The room, created if the room limit allows.
    pub(super) fn room_or_create(&mut self, room: &str) -> Result<&mut Room, Refusal> {
        if !self.rooms.contains_key(room) {
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
        let r = self.room_or_create(room)?;
        let name = r.name.clone();
        let mut announce = None;
        if !already {
            r.members.insert(conn);
            let n = r.presence.entry(identity.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                announce = Some(presence_payload(room, std::slice::from_ref(&identity), &[]));
            }
        }
        let joined = Payload::of(&ServerMessage::Joined {
            room: room.to_owned(),
            head: r.head,
        });
        let mut present: Vec<Arc<str>> = r.presence.keys().cloned().collect();
        present.sort();
        let members: Vec<ConnId> = r.members.iter().copied().filter(|m| *m != conn).collect();
        let replay: Vec<Arc<Payload>> = match since {
            None => Vec::new(),
            Some(s) => r
                .log
                .range(r.index_after(s)..)
                .map(|e| e.msg.payload().clone())
                .collect(),
        };
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
        if r.head == self.seq_floor && r.log.is_empty() && r.members.is_empty() {
            // Never-used rooms cost nothing to forget; rooms with a head stay forever
            // (recreating one would reuse sequence numbers).
            self.rooms.remove(room);
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
