//! What the client trusts: the ring's public key (pinned from the configuration or the first
//! signed discovery record), the `welcome`s, `moved`s and records it checks with it, and the
//! name token that proves the client's name on every node of the ring.
//!
//! - A **record** names a `ring_key` and is signed with it. With a key pinned, a record that
//!   names another key, or is unsigned, or whose signature fails, is refused; without one, the
//!   first record whose signature holds pins its key (an unsigned record pins nothing).
//! - Every connection sends a fresh `nonce` (metadata, `?nonce=`); with a key pinned, the
//!   **welcome** must echo it, name the node the client meant to reach, and be signed: an
//!   impostor (e.g. someone holding the node's id on a public signaling server) cannot.
//! - With a key pinned, a **moved** must be signed and name a newer generation than the
//!   node's; otherwise it is ignored and the client stays where it is.
//! - The welcome's `name_token` (for the client's own name) is kept and presented on every
//!   later connection, so the client keeps its name, its deduplication and its direct
//!   messages across reconnects and rotations.

use serde_json::Value as Json;

use crate::discovery::{DiscoveryRecord, RingPublicKey, SignedKind};

/// The client's trust state (see the module docs).
#[derive(Debug)]
pub(super) struct Trust {
    pinned: Option<RingPublicKey>,
    token: Option<String>,
    nonce: String,
}

impl Trust {
    /// Pins `configured` (base64url), else `from_record` (a record's verified key), if any.
    ///
    /// # Errors
    /// A message if `configured` is not a ring key.
    pub fn new(configured: Option<&str>, from_record: Option<&str>) -> Result<Trust, String> {
        let pinned = match configured.or(from_record) {
            Some(k) => Some(RingPublicKey::parse(k).map_err(|e| format!("ring key {k:?}: {e}"))?),
            None => None,
        };
        Ok(Trust {
            pinned,
            token: None,
            nonce: String::new(),
        })
    }

    /// The pinned key, if any.
    pub fn pinned(&self) -> Option<&RingPublicKey> {
        self.pinned.as_ref()
    }

    /// A fresh nonce for the next connection.
    pub fn renew_nonce(&mut self) {
        self.nonce = uuid::Uuid::new_v4().simple().to_string();
    }

    /// What a connection declares besides the protocol: `client`, `nonce` and, once the
    /// client has one, `token`.
    pub fn declaration(&self, name: &str) -> Vec<(&'static str, String)> {
        let mut v = vec![("client", name.to_owned()), ("nonce", self.nonce.clone())];
        if let Some(t) = &self.token {
            v.push(("token", t.clone()));
        }
        v
    }

    /// Checks a `welcome` from `node` (see the module docs) and keeps the name token it
    /// carries for `name`.
    ///
    /// # Errors
    /// Why the welcome is not the ring's.
    pub fn check_welcome(&mut self, m: &Json, node: &str, name: &str) -> Result<(), String> {
        if let Some(key) = &self.pinned {
            key.verify(SignedKind::Welcome, m)
                .map_err(|e| format!("welcome: {e}"))?;
            if m.get("nonce").and_then(Json::as_str) != Some(self.nonce.as_str()) {
                return Err("welcome: not an answer to this connection's nonce".into());
            }
            if m.get("node").and_then(Json::as_str) != Some(node) {
                return Err(format!("welcome: from another node than {node}"));
            }
        }
        if m.get("client").and_then(Json::as_str) == Some(name)
            && let Some(t) = m.get("name_token").and_then(Json::as_str)
        {
            self.token = Some(t.to_owned());
        }
        Ok(())
    }

    /// Checks a `moved` received from a node of generation `current`.
    ///
    /// # Errors
    /// Why it is not to be followed.
    pub fn check_moved(&self, m: &Json, current: u64) -> Result<(), String> {
        let Some(key) = &self.pinned else {
            return Ok(());
        };
        key.verify(SignedKind::Moved, m)
            .map_err(|e| format!("moved: {e}"))?;
        let generation = m.get("generation").and_then(Json::as_u64).unwrap_or(0);
        if generation <= current {
            return Err(format!(
                "moved: generation {generation} is not newer than the node's ({current})"
            ));
        }
        Ok(())
    }

    /// Checks a discovery record; the first signed one pins its key.
    ///
    /// # Errors
    /// Why the record is not the ring's.
    pub fn check_record(&mut self, r: &DiscoveryRecord) -> Result<(), String> {
        match r.verify(self.pinned.as_ref()) {
            Ok(Some(key)) => {
                self.pinned.get_or_insert(key);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(format!("discovery record: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::RingKeys;
    use serde_json::json;

    #[test]
    fn a_pinned_key_refuses_what_it_did_not_sign() {
        let keys = RingKeys::from_secret(b"ring secret of the trust tests");
        let mut t = Trust::new(Some(keys.public_key()), None).unwrap();
        t.renew_nonce();
        let mut w = json!({"op":"welcome","node":"n1","generation":2,"client":"al","name_token":"tok","nonce":t.nonce});
        keys.sign_in_place(SignedKind::Welcome, &mut w);
        assert_eq!(t.check_welcome(&w, "n1", "al"), Ok(()));
        assert_eq!(
            t.declaration("al").last().unwrap(),
            &("token", "tok".into())
        );
        assert!(t.check_welcome(&w, "n2", "al").is_err(), "another node");
        t.renew_nonce();
        assert!(
            t.check_welcome(&w, "n1", "al").is_err(),
            "a replayed welcome"
        );

        let mut m = json!({"op":"moved","peer_id":"n3","signaling":[],"generation":3});
        keys.sign_in_place(SignedKind::Moved, &mut m);
        assert_eq!(t.check_moved(&m, 2), Ok(()));
        assert!(t.check_moved(&m, 3).is_err(), "not newer");
        let mut tampered = m.clone();
        tampered["peer_id"] = json!("impostor");
        assert!(t.check_moved(&tampered, 2).is_err());
        let other = RingKeys::from_secret(b"some other ring's secret");
        let mut foreign = json!({"op":"moved","peer_id":"n3","signaling":[],"generation":3});
        other.sign_in_place(SignedKind::Moved, &mut foreign);
        assert!(t.check_moved(&foreign, 2).is_err());
        // Nothing pinned: everything goes (the node may be unsigned).
        let open = Trust::new(None, None).unwrap();
        assert_eq!(open.check_moved(&tampered, 2), Ok(()));
        assert!(Trust::new(Some("not a key"), None).is_err());
    }
}
