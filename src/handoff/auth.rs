//! The mutual HMAC-SHA256 proofs of the handoff (`protocol/handoff.md`, "MAC").

use super::Secret;
use super::message::{Message, Sealed};
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

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Predecessor => b"predecessor",
            Role::Successor => b"successor",
        }
    }
}

fn mac_for(secret: &Secret, role: Role, b: &Binding<'_>) -> HmacSha256 {
    labelled_mac(secret, role.label(), b)
}

/// HMAC-SHA256 keyed by the secret over the label, then every field of the binding.
fn labelled_mac(secret: &Secret, role: &[u8], b: &Binding<'_>) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.expose()).expect("HMAC accepts keys of any length");
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

/// The `auth` of a `hello`: `HMAC(secret, "hello", …)` over the binding with an empty
/// predecessor nonce. It tells the predecessor, before any challenge, that the sender knows
/// the secret (such a connection is never evicted for a newer one); a replayed `hello` is
/// refused by its nonce, and the challenge and proof still follow.
pub fn hello_auth(secret: &Secret, binding: &Binding<'_>) -> String {
    hex::encode(
        labelled_mac(secret, b"hello", binding)
            .finalize()
            .into_bytes(),
    )
}

/// Checks a `hello`'s `auth` in constant time.
pub fn verify_hello_auth(secret: &Secret, binding: &Binding<'_>, auth_hex: &str) -> bool {
    let Ok(tag) = hex::decode(auth_hex) else {
        return false;
    };
    labelled_mac(secret, b"hello", binding)
        .verify_slice(&tag)
        .is_ok()
}

/// The keys of one authenticated connection: the session key (derived from the secret and
/// the binding: both nonces, both peer ids, the generation) and a counter of the messages
/// each way. Every message after the `hello` (but `challenge` and `proof`) carries
/// `auth = HMAC(session key, sender's role, counter (u64 BE), message header)`: a message
/// from anyone without the secret, replayed, reordered or reflected does not verify.
#[derive(Clone)]
pub struct SessionKeys {
    key: [u8; 32],
    me: Role,
    sent: u64,
    received: u64,
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys")
            .field("me", &self.me)
            .field("sent", &self.sent)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// The keys of `me` for the connection `binding` describes.
    pub fn derive(secret: &Secret, me: Role, binding: &Binding<'_>) -> Self {
        let key = labelled_mac(secret, b"session", binding)
            .finalize()
            .into_bytes()
            .into();
        SessionKeys {
            key,
            me,
            sent: 0,
            received: 0,
        }
    }

    fn tag(&self, from: Role, counter: u64, msg: &Message) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC accepts any key");
        let label = from.label();
        mac.update(&(label.len() as u32).to_be_bytes());
        mac.update(label);
        mac.update(&counter.to_be_bytes());
        mac.update(&msg.auth_bytes());
        mac
    }

    /// `msg` with its tag, as the next message sent.
    pub fn seal(&mut self, msg: Message) -> Sealed {
        let tag = hex::encode(self.tag(self.me, self.sent, &msg).finalize().into_bytes());
        self.sent += 1;
        Sealed {
            msg,
            auth: Some(tag),
        }
    }

    /// Whether `sealed` is the next message from the other side (then it counts).
    pub fn open(&mut self, sealed: &Sealed) -> bool {
        let other = match self.me {
            Role::Predecessor => Role::Successor,
            Role::Successor => Role::Predecessor,
        };
        let Some(tag) = sealed.auth.as_deref().and_then(|a| hex::decode(a).ok()) else {
            return false;
        };
        let ok = self
            .tag(other, self.received, &sealed.msg)
            .verify_slice(&tag)
            .is_ok();
        if ok {
            self.received += 1;
        }
        ok
    }
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

    fn secret() -> Secret {
        Secret::new(b"the ring secret!!".to_vec()).unwrap()
    }

    /// `s` (generation 3) takes over from `p`; the nonces are all 1s and all 2s.
    fn binding() -> Binding<'static> {
        Binding {
            predecessor_peer_id: "p",
            successor_peer_id: "s",
            generation: 3,
            successor_nonce: &[1; 32],
            predecessor_nonce: &[2; 32],
        }
    }

    #[test]
    fn proofs_bind_every_field_and_role() {
        let (secret, b) = (secret(), binding());
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

    #[test]
    fn sealed_messages_verify_once_in_order_and_one_way() {
        let (secret, b) = (secret(), binding());
        let mut p = SessionKeys::derive(&secret, Role::Predecessor, &b);
        let mut s = SessionKeys::derive(&secret, Role::Successor, &b);
        let m1 = p.seal(Message::Live { session: 1 });
        let m2 = p.seal(Message::Live { session: 2 });
        assert!(!s.open(&m2), "out of order");
        assert!(s.open(&m1));
        assert!(!s.open(&m1), "replayed");
        let mut forged = m2.clone();
        forged.msg = Message::Live { session: 3 };
        assert!(!s.open(&forged), "changed");
        assert!(
            !s.open(&Sealed::from(Message::Live { session: 2 })),
            "no tag"
        );
        assert!(s.open(&m2));
        // A successor's message does not verify as the predecessor's (no reflection).
        let mine = s.seal(Message::Live { session: 9 });
        assert!(!SessionKeys::derive(&secret, Role::Successor, &b).open(&mine));
        assert!(p.open(&mine));
        // Another secret, another key.
        let other = Secret::new(b"another secret!!!".to_vec()).unwrap();
        let mut o = SessionKeys::derive(&other, Role::Successor, &b);
        assert!(!o.open(
            &SessionKeys::derive(&secret, Role::Predecessor, &b).seal(Message::Live { session: 1 })
        ));
        // The hello's auth binds the secret and the binding.
        let h = hello_auth(&secret, &b);
        assert!(verify_hello_auth(&secret, &b, &h));
        assert!(!verify_hello_auth(&other, &b, &h));
        assert!(!verify_hello_auth(
            &secret,
            &Binding {
                generation: 4,
                ..b.clone()
            },
            &h
        ));
        assert_ne!(h, prove(&secret, Role::Successor, &b));
    }
}
