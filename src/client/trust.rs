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

use crate::discovery::{DiscoveryRecord, RingPublicKey, SignatureError, SignedKind};

/// Why a ring key, `welcome`, `moved` or record is refused (the text of
/// [`Event::Untrusted`](super::Event::Untrusted)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum TrustError {
    /// The configured or recorded ring key is not one.
    #[error("ring key {key:?}: {error}")]
    BadKey {
        /// The key as given.
        key: String,
        /// Why it is not one.
        error: SignatureError,
    },
    /// The `welcome` is not signed with the pinned key.
    #[error("welcome: {0}")]
    WelcomeSignature(SignatureError),
    /// The `welcome` does not echo this connection's nonce (a replay).
    #[error("welcome: not an answer to this connection's nonce")]
    WelcomeNonce,
    /// The `welcome` names another node than the one the client meant to reach.
    #[error("welcome: from another node than {0}")]
    WelcomeNode(String),
    /// No verified `welcome` arrived in time on a connection with a pinned key.
    #[error("no welcome signed with the ring key in time")]
    NoWelcome,
    /// The `moved` is not signed with the pinned key.
    #[error("moved: {0}")]
    MovedSignature(SignatureError),
    /// The `moved` names no newer generation than the node's.
    #[error("moved: generation {generation} is not newer than the node's ({current})")]
    MovedNotNewer {
        /// The generation it names.
        generation: u64,
        /// The node's.
        current: u64,
    },
    /// The discovery record is not the ring's.
    #[error("discovery record: {0}")]
    Record(SignatureError),
}

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
    /// [`TrustError::BadKey`] if the key is not a ring key.
    pub fn new(configured: Option<&str>, from_record: Option<&str>) -> Result<Trust, TrustError> {
        let pinned = match configured.or(from_record) {
            Some(k) => Some(RingPublicKey::parse(k).map_err(|error| TrustError::BadKey {
                key: k.to_owned(),
                error,
            })?),
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

    /// Checks a `welcome` from `node` (see the module docs; `None`: any node of the ring, for a
    /// replicated ring) and keeps the name token it carries for `name`.
    ///
    /// # Errors
    /// Why the welcome is not the ring's.
    pub fn check_welcome(
        &mut self,
        m: &Json,
        node: Option<&str>,
        name: &str,
    ) -> Result<(), TrustError> {
        if let Some(key) = &self.pinned {
            key.verify(SignedKind::Welcome, m)
                .map_err(TrustError::WelcomeSignature)?;
            if m.get("nonce").and_then(Json::as_str) != Some(self.nonce.as_str()) {
                return Err(TrustError::WelcomeNonce);
            }
            if let Some(node) = node
                && m.get("node").and_then(Json::as_str) != Some(node)
            {
                return Err(TrustError::WelcomeNode(node.to_owned()));
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
    pub fn check_moved(&self, m: &Json, current: u64) -> Result<(), TrustError> {
        let Some(key) = &self.pinned else {
            return Ok(());
        };
        key.verify(SignedKind::Moved, m)
            .map_err(TrustError::MovedSignature)?;
        let generation = m.get("generation").and_then(Json::as_u64).unwrap_or(0);
        if generation <= current {
            return Err(TrustError::MovedNotNewer {
                generation,
                current,
            });
        }
        Ok(())
    }

    /// Checks a discovery record; the first signed one pins its key.
    ///
    /// # Errors
    /// Why the record is not the ring's.
    pub fn check_record(&mut self, r: &DiscoveryRecord) -> Result<(), TrustError> {
        match r.verify(self.pinned.as_ref()) {
            Ok(Some(key)) => {
                self.pinned.get_or_insert(key);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(TrustError::Record(e)),
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
        assert_eq!(t.check_welcome(&w, Some("n1"), "al"), Ok(()));
        assert_eq!(
            t.declaration("al").last().unwrap(),
            &("token", "tok".into())
        );
        assert!(
            t.check_welcome(&w, Some("n2"), "al").is_err(),
            "another node"
        );
        t.renew_nonce();
        assert!(
            t.check_welcome(&w, Some("n1"), "al").is_err(),
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

    /// The reasons `Event::Untrusted` carries (and the logs show) read as they always did.
    #[test]
    fn refusal_texts() {
        assert_eq!(
            Trust::new(Some("nope"), None).unwrap_err().to_string(),
            r#"ring key "nope": malformed ring key"#
        );
        for (e, text) in [
            (
                TrustError::WelcomeSignature(SignatureError::Missing),
                format!("welcome: {}", SignatureError::Missing),
            ),
            (
                TrustError::WelcomeNonce,
                "welcome: not an answer to this connection's nonce".into(),
            ),
            (
                TrustError::WelcomeNode("n1".into()),
                "welcome: from another node than n1".into(),
            ),
            (
                TrustError::NoWelcome,
                "no welcome signed with the ring key in time".into(),
            ),
            (
                TrustError::MovedNotNewer {
                    generation: 3,
                    current: 3,
                },
                "moved: generation 3 is not newer than the node's (3)".into(),
            ),
            (
                TrustError::Record(SignatureError::Invalid),
                format!("discovery record: {}", SignatureError::Invalid),
            ),
        ] {
            assert_eq!(e.to_string(), text);
        }
    }
}
