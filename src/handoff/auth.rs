//! The mutual HMAC-SHA256 proofs of the handoff (`protocol/handoff.md`, "MAC").

use super::Secret;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Domain separation label of protocol version 1.
const LABEL: &[u8] = b"ouroboros-handoff/1";

/// Which side a proof is for (different labels: a proof cannot be reflected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Proof made by the predecessor.
    Predecessor,
    /// Proof made by the successor.
    Successor,
}

/// What both proofs are bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The predecessor's peer id.
    pub predecessor_peer_id: &'a str,
    /// The successor's peer id.
    pub successor_peer_id: &'a str,
    /// The successor's generation.
    pub generation: u64,
    /// The successor's nonce (raw bytes).
    pub successor_nonce: &'a [u8],
    /// The predecessor's nonce (raw bytes).
    pub predecessor_nonce: &'a [u8],
}

fn mac_for(secret: &Secret, role: Role, b: &Binding<'_>) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.expose()).expect("HMAC accepts keys of any length");
    let role: &[u8] = match role {
        Role::Predecessor => b"predecessor",
        Role::Successor => b"successor",
    };
    let generation = b.generation.to_be_bytes();
    for field in [
        LABEL,
        role,
        b.predecessor_peer_id.as_bytes(),
        b.successor_peer_id.as_bytes(),
        &generation,
        b.successor_nonce,
        b.predecessor_nonce,
    ] {
        mac.update(&(field.len() as u32).to_be_bytes());
        mac.update(field);
    }
    mac
}

/// The proof `role` sends, hex-encoded.
pub fn prove(secret: &Secret, role: Role, binding: &Binding<'_>) -> String {
    hex::encode(mac_for(secret, role, binding).finalize().into_bytes())
}

/// Checks a hex proof in constant time.
pub fn verify(secret: &Secret, role: Role, binding: &Binding<'_>, proof_hex: &str) -> bool {
    let Ok(proof) = hex::decode(proof_hex) else {
        return false;
    };
    mac_for(secret, role, binding).verify_slice(&proof).is_ok()
}

/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 32;

/// A fresh nonce from `rng` (the caller's, injected into the cores): raw bytes and hex.
pub fn fresh_nonce(rng: &mut impl rand::RngCore) -> ([u8; NONCE_LEN], String) {
    let mut n = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut n);
    (n, hex::encode(n))
}

/// Parses a hex nonce of exactly [`NONCE_LEN`] bytes.
pub fn parse_nonce(hex_str: &str) -> Option<[u8; NONCE_LEN]> {
    let v = hex::decode(hex_str).ok()?;
    v.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_every_field_and_role() {
        let secret = Secret::new(b"the ring secret!!".to_vec()).unwrap();
        let b = Binding {
            predecessor_peer_id: "p",
            successor_peer_id: "s",
            generation: 3,
            successor_nonce: &[1; 32],
            predecessor_nonce: &[2; 32],
        };
        let proof = prove(&secret, Role::Successor, &b);
        assert!(verify(&secret, Role::Successor, &b, &proof));
        assert!(
            !verify(&secret, Role::Predecessor, &b, &proof),
            "reflection"
        );
        let other = Secret::new(b"another secret!!!".to_vec()).unwrap();
        assert!(!verify(&other, Role::Successor, &b, &proof));
        for changed in [
            Binding {
                generation: 4,
                ..b.clone()
            },
            Binding {
                successor_peer_id: "x",
                ..b.clone()
            },
            Binding {
                predecessor_peer_id: "x",
                ..b.clone()
            },
            Binding {
                predecessor_nonce: &[3; 32],
                ..b.clone()
            },
            Binding {
                successor_nonce: &[3; 32],
                ..b.clone()
            },
        ] {
            assert!(!verify(&secret, Role::Successor, &changed, &proof));
        }
        // Field boundaries are unambiguous.
        let b1 = Binding {
            predecessor_peer_id: "ab",
            successor_peer_id: "c",
            ..b.clone()
        };
        let b2 = Binding {
            predecessor_peer_id: "a",
            successor_peer_id: "bc",
            ..b.clone()
        };
        assert_ne!(
            prove(&secret, Role::Successor, &b1),
            prove(&secret, Role::Successor, &b2)
        );
        assert!(!verify(&secret, Role::Successor, &b, "zz"));
        assert!(!verify(&secret, Role::Successor, &b, ""));
    }
}
