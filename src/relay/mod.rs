//! The relay service: rooms, ordered per-room message logs, history, presence, direct
//! relay, limits and the memory budget. Sans-IO; wire format in `protocol/relay.md`.
