//! Helpers for node flags: the default memory budget and peer id (sizes are parsed by
//! [`crate::units::parse_size`]).

pub use crate::units::parse_size;

use std::time::Duration;

/// Flags of a node of a replicated ring (`--replicas N`, `protocol/replication.md`).
#[derive(clap::Args, Debug, Clone)]
pub struct ReplicationArgs {
    /// How many nodes hold the rooms (3 is the recommended production value). 1 (the default)
    /// is one node at a time, handing over to its successor. Above 1 the node is a member of a
    /// replicated ring: a publish is acknowledged once a majority of the members store it.
    #[arg(long, env = "OUROBOROS_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
    /// This node's member id in the replicated ring: 1 or more, never reused in one ring (a
    /// restarted node is a new member).
    #[arg(long, env = "OUROBOROS_REPLICA_ID", default_value_t = 1)]
    pub replica_id: u64,
    /// Join a running replicated ring through this member (`ID=URL`, the member's base URL);
    /// repeat it to name several, tried in turn. Without it the node starts a new ring.
    #[arg(long = "replica-join", env = "OUROBOROS_REPLICA_JOIN", value_delimiter = ',', value_parser = parse_contact, value_name = "ID=URL")]
    pub replica_join: Vec<(u64, String)>,
    /// The base URL the other members reach this node at [default: `http://` + the bound
    /// address, or the public host and port when given].
    #[arg(long, env = "OUROBOROS_REPLICA_ADVERTISE")]
    pub replica_advertise: Option<String>,
    /// How long to keep trying to join before giving up.
    #[arg(long, default_value = "60s", value_parser = crate::lifecycle::parse_duration)]
    pub replica_join_timeout: Duration,
    /// The leader's heartbeat interval (it also bounds each replication call).
    #[arg(long, default_value = "250ms", value_parser = crate::lifecycle::parse_duration)]
    pub replica_heartbeat: Duration,
    /// The shortest election timeout (the longest is twice it).
    #[arg(long, default_value = "1s", value_parser = crate::lifecycle::parse_duration)]
    pub replica_election_timeout: Duration,
    /// How long a publish waits to be committed on a majority before the client is told
    /// `unavailable` (it may retry with the same id).
    #[arg(long, default_value = "5s", value_parser = crate::lifecycle::parse_duration)]
    pub replica_write_timeout: Duration,
    /// With `--lifetime`: how long a voter may leave the leader's `status` calls unanswered
    /// before the leader launches a new member in its place and removes it.
    #[arg(long, env = "OUROBOROS_REPLICA_DEAD_AFTER", default_value = "30s", value_parser = crate::lifecycle::parse_duration)]
    pub replica_dead_after: Duration,
    /// How members carry their calls to each other: `auto` opens a WebRTC DataConnection to
    /// each member through the signaling servers it is registered on (with the node's ICE
    /// servers) and uses HTTP while it opens or when it fails; `webrtc` never uses HTTP;
    /// `http` never uses WebRTC (and advertises no WebRTC route).
    #[cfg(feature = "replicas")]
    #[arg(
        long,
        env = "OUROBOROS_REPLICA_TRANSPORT",
        value_enum,
        default_value = "auto"
    )]
    pub replica_transport: crate::replica::LinkPolicy,
}

impl ReplicationArgs {
    /// Whether this node is a member of a replicated ring.
    pub fn enabled(&self) -> bool {
        self.replicas > 1 || !self.replica_join.is_empty()
    }
}

/// `ID=URL`: a member id (not 0, the operator's) and one of its routes: its `http(s)://` base
/// URL, or (with the `replicas` feature) a WebRTC route `peerjs:PEER@ws(s)://SERVER`.
pub fn parse_contact(s: &str) -> Result<(u64, String), String> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=URL"))?;
    let id = id
        .trim()
        .parse::<u64>()
        .map_err(|e| format!("{id:?}: not a member id: {e}"))?;
    if id == 0 {
        return Err("member id 0 is reserved".into());
    }
    #[cfg(feature = "replicas")]
    if url.trim().starts_with(crate::replica::RTC_SCHEME) {
        crate::replica::MemberAddr::default().add_contact_value(url)?;
        return Ok((id, url.trim().to_owned()));
    }
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?}: expected an http:// or https:// URL"));
    }
    Ok((id, url.to_owned()))
}

/// Total RAM of the machine (Linux `/proc/meminfo`), if known.
pub fn total_ram() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The default memory budget: a quarter of RAM, at least 64 MiB, 1 GiB if RAM is unknown.
pub fn default_memory_budget() -> u64 {
    match total_ram() {
        Some(ram) => (ram / 4).max(64 << 20),
        None => 1 << 30,
    }
}

/// A random default peer id, `ouroboros-<12 base-36 chars>` (valid for peerjs).
pub fn random_peer_id() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let tail: String = (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("ouroboros-{tail}")
}

/// A secret token for the node's own registration (32 base-36 chars, about 165 bits): the
/// node's peer id is reserved for it on the node's own signaling server.
pub fn random_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_peerjs_ids() {
        let id = random_peer_id();
        assert!(id.starts_with("ouroboros-"));
        assert_eq!(id.len(), "ouroboros-".len() + 12);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    }
}
