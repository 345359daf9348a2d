//! Helpers for node flags: the default memory budget and peer id (sizes are parsed by
//! [`crate::units::parse_size`]).

pub use crate::units::parse_size;

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
