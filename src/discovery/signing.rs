//! The ring's keys: what lets a client tell the ring's nodes from an impostor, and a relay
//! client's name from someone else's claim to it.
//!
//! Every node of a ring derives the same [`RingKeys`] from the ring's shared secret
//! (`OUROBOROS_SECRET`) with HKDF-SHA256:
//! - an **Ed25519 key** that signs the discovery record, `welcome` and `moved`; its public
//!   half is the record's `ring_key`, which clients pin ([`RingPublicKey`]);
//! - an **HMAC-SHA256 key** for relay **name tokens**: `name_token = HMAC(key, name)`, handed
//!   to the client that holds a name and presented by it to take the name again (after a
//!   reconnect or a `moved`), on any node of the ring.
//!
//! # What is signed
//! `sig` (base64url, no padding) is an Ed25519 signature over
//! `"ouroboros/1 " + kind + "\n" + canonical JSON`, where `kind` is `record`, `welcome` or
//! `moved` and the canonical JSON is the object without `sig` (and without the fields the
//! kind leaves out: [`WELCOME_UNSIGNED`]) written compactly with every object's keys sorted
//! (by their UTF-8 bytes), no spaces, strings escaped as `JSON.stringify` does, and integers
//! as decimal digits. Signed objects hold no fractional numbers, so a browser reproduces
//! the same bytes with a sorted `JSON.stringify` (`protocol/discovery.md`).
//!
//! Secrets and keys never reach `Debug` output or logs.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use ring::{hkdf, hmac};
use serde_json::Value;

/// What a signature is over: the first line of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedKind {
    /// The discovery record (`ouroboros.json`).
    Record,
    /// A relay `welcome`.
    Welcome,
    /// A relay `moved`.
    Moved,
}

impl SignedKind {
    /// `record`, `welcome` or `moved`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignedKind::Record => "record",
            SignedKind::Welcome => "welcome",
            SignedKind::Moved => "moved",
        }
    }

    /// Top-level fields the signature does not cover (besides `sig`).
    fn unsigned(self) -> &'static [&'static str] {
        match self {
            SignedKind::Welcome => WELCOME_UNSIGNED,
            SignedKind::Record | SignedKind::Moved => &[],
        }
    }
}

/// Fields of `welcome` its signature leaves out: the node's settings (they hold fractional
/// numbers) and the crash-restore notice. Everything else — `node`, `generation`, `client`,
/// `name_token`, `nonce` — is covered.
pub const WELCOME_UNSIGNED: &[&str] = &["limits", "gap"];

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The object carries no `sig` (or it is not a string).
    #[error("not signed")]
    Missing,
    /// `sig` or the key is not valid base64url, or has the wrong length.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The signature does not verify with the key.
    #[error("signature does not verify with the ring key")]
    Invalid,
    /// The record names another ring key than the pinned one.
    #[error("signed by another ring key")]
    OtherKey,
    /// Not a JSON object.
    #[error("not a JSON object")]
    NotObject,
}

/// The ring's private keys (every node of a ring derives the same ones from its secret).
pub struct RingKeys {
    signing: Ed25519KeyPair,
    names: hmac::Key,
    public: String,
}

impl std::fmt::Debug for RingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingKeys")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

/// HKDF output length (ring's `KeyType`).
struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// A 32-byte key derived from `secret` with HKDF-SHA256 (`salt`, info `label`): every key the
/// ring derives from its shared secret, each under its own salt or label.
pub fn derive_key(secret: &[u8], salt: &[u8], label: &[u8]) -> [u8; 32] {
    expand(
        &hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(secret),
        label,
    )
}

fn expand(prk: &hkdf::Prk, label: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    prk.expand(&[label], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

impl RingKeys {
    /// The keys of the ring whose shared secret is `secret`: HKDF-SHA256 with salt
    /// `ouroboros ring keys v1`, info `ed25519 seed` (the signing key's seed) and
    /// `relay name tokens` (the HMAC key).
    pub fn from_secret(secret: &[u8]) -> RingKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"ouroboros ring keys v1").extract(secret);
        let seed = expand(&prk, b"ed25519 seed");
        let signing =
            Ed25519KeyPair::from_seed_unchecked(&seed).expect("any 32-byte seed is an Ed25519 key");
        let names = hmac::Key::new(hmac::HMAC_SHA256, &expand(&prk, b"relay name tokens"));
        let public = B64.encode(signing.public_key().as_ref());
        RingKeys {
            signing,
            names,
            public,
        }
    }

    /// The public key, base64url (the record's `ring_key`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The signature (base64url) of `object` as `kind` (see the module docs).
    pub fn sign(&self, kind: SignedKind, object: &Value) -> String {
        B64.encode(self.signing.sign(&signed_bytes(kind, object)).as_ref())
    }

    /// Adds `sig` to `object` (a JSON object; anything else is left as is).
    pub fn sign_in_place(&self, kind: SignedKind, object: &mut Value) {
        let sig = self.sign(kind, object);
        if let Value::Object(m) = object {
            m.insert("sig".into(), Value::String(sig));
        }
    }

    /// The name token of `name` (base64url of `HMAC(key, "name\n" + name)`).
    pub fn name_token(&self, name: &str) -> String {
        B64.encode(hmac::sign(&self.names, &token_input(name)).as_ref())
    }

    /// Whether `token` is `name`'s token (constant time).
    pub fn check_name_token(&self, name: &str, token: &str) -> bool {
        B64.decode(token)
            .is_ok_and(|t| hmac::verify(&self.names, &token_input(name), &t).is_ok())
    }

    /// A short tag only this ring can compute for `input` (hex, 16 characters): names the
    /// relay assigns itself.
    pub fn tag(&self, input: &str) -> String {
        let mut data = b"tag\n".to_vec();
        data.extend_from_slice(input.as_bytes());
        let t = hmac::sign(&self.names, &data);
        t.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn token_input(name: &str) -> Vec<u8> {
    let mut data = b"name\n".to_vec();
    data.extend_from_slice(name.as_bytes());
    data
}

/// A ring's public key, as clients pin it.
#[derive(Clone, PartialEq, Eq)]
pub struct RingPublicKey {
    raw: [u8; 32],
}

impl std::fmt::Debug for RingPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingPublicKey({})", self.encoded())
    }
}

impl RingPublicKey {
    /// Parses a base64url public key (the record's `ring_key`).
    ///
    /// # Errors
    /// [`SignatureError::Malformed`] unless it is 32 bytes of base64url.
    pub fn parse(key: &str) -> Result<RingPublicKey, SignatureError> {
        let bytes = B64
            .decode(key)
            .map_err(|_| SignatureError::Malformed("ring key"))?;
        let raw: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SignatureError::Malformed("ring key"))?;
        Ok(RingPublicKey { raw })
    }

    /// The base64url form.
    pub fn encoded(&self) -> String {
        B64.encode(self.raw)
    }

    /// Checks `object`'s `sig` as `kind`.
    ///
    /// # Errors
    /// [`SignatureError`] saying why it does not verify.
    pub fn verify(&self, kind: SignedKind, object: &Value) -> Result<(), SignatureError> {
        let Value::Object(m) = object else {
            return Err(SignatureError::NotObject);
        };
        let sig = m
            .get("sig")
            .and_then(Value::as_str)
            .ok_or(SignatureError::Missing)?;
        let sig = B64
            .decode(sig)
            .map_err(|_| SignatureError::Malformed("sig"))?;
        UnparsedPublicKey::new(&ED25519, &self.raw)
            .verify(&signed_bytes(kind, object), &sig)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// The bytes a `kind` signature covers: `"ouroboros/1 " + kind + "\n"` and `object`'s
/// canonical JSON without `sig` and the kind's unsigned fields.
pub fn signed_bytes(kind: SignedKind, object: &Value) -> Vec<u8> {
    let mut out = format!("ouroboros/1 {}\n", kind.as_str());
    match object {
        Value::Object(m) => {
            let skip = kind.unsigned();
            let mut keys: Vec<&String> = m
                .keys()
                .filter(|k| *k != "sig" && !skip.contains(&k.as_str()))
                .collect();
            keys.sort();
            write_object(&mut out, keys.into_iter().map(|k| (k, &m[k])));
        }
        other => write_canonical(&mut out, other),
    }
    out.into_bytes()
}

fn write_object<'a>(out: &mut String, entries: impl Iterator<Item = (&'a String, &'a Value)>) {
    out.push('{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(k.clone()).to_string());
        out.push(':');
        write_canonical(out, v);
    }
    out.push('}');
}

/// Compact JSON with every object's keys sorted.
fn write_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            write_object(out, keys.into_iter().map(|k| (k, &m[k])));
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, x);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_same_secret_gives_the_same_keys_and_another_secret_others() {
        let a = RingKeys::from_secret(b"a ring secret of some length");
        let b = RingKeys::from_secret(b"a ring secret of some length");
        let c = RingKeys::from_secret(b"another ring secret, longer");
        assert_eq!(a.public_key(), b.public_key());
        assert_ne!(a.public_key(), c.public_key());
        assert_eq!(a.name_token("alice"), b.name_token("alice"));
        assert!(b.check_name_token("alice", &a.name_token("alice")));
        assert!(!b.check_name_token("alice2", &a.name_token("alice")));
        assert!(!c.check_name_token("alice", &a.name_token("alice")));
        assert!(!a.check_name_token("alice", "not base64!"));
        assert!(!format!("{a:?}").contains(&a.name_token("x")));
    }

    #[test]
    fn signatures_cover_every_field_but_the_unsigned_ones_and_ignore_key_order() {
        let keys = RingKeys::from_secret(b"a ring secret of some length");
        let pk = RingPublicKey::parse(keys.public_key()).unwrap();
        let mut w =
            json!({"op":"welcome","node":"n","generation":3,"nonce":"x","limits":{"rate":200.0}});
        keys.sign_in_place(SignedKind::Welcome, &mut w);
        assert_eq!(pk.verify(SignedKind::Welcome, &w), Ok(()));
        // Key order and unsigned fields do not matter.
        let mut reordered: Value = serde_json::from_str(
            r#"{"limits":{"rate":100},"generation":3,"sig":"S","node":"n","op":"welcome","nonce":"x"}"#,
        )
        .unwrap();
        reordered["sig"] = w["sig"].clone();
        assert_eq!(pk.verify(SignedKind::Welcome, &reordered), Ok(()));
        // Another kind, a changed field, another key: refused.
        assert_eq!(
            pk.verify(SignedKind::Moved, &w),
            Err(SignatureError::Invalid)
        );
        let mut t = w.clone();
        t["generation"] = json!(4);
        assert_eq!(
            pk.verify(SignedKind::Welcome, &t),
            Err(SignatureError::Invalid)
        );
        let other = RingKeys::from_secret(b"another ring secret, longer");
        let opk = RingPublicKey::parse(other.public_key()).unwrap();
        assert_eq!(
            opk.verify(SignedKind::Welcome, &w),
            Err(SignatureError::Invalid)
        );
        let mut unsigned = w.clone();
        unsigned.as_object_mut().unwrap().remove("sig");
        assert_eq!(
            pk.verify(SignedKind::Welcome, &unsigned),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn canonical_bytes_are_sorted_compact_json() {
        let v = json!({"b":[1,{"z":true,"a":null}],"a":"é\"\n","sig":"x"});
        assert_eq!(
            String::from_utf8(signed_bytes(SignedKind::Record, &v)).unwrap(),
            "ouroboros/1 record\n{\"a\":\"é\\\"\\n\",\"b\":[1,{\"a\":null,\"z\":true}]}"
        );
    }
}
