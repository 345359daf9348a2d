//! Who a relay connection is: the identity it declares, bound to the connection with the
//! ring's name tokens, and the signed `welcome` and `moved`.
//!
//! Without ring keys ([`RelayConfig::keys`](super::RelayConfig::keys)) an identity is the
//! declared `client` name, else the peer id, as the client says. With them every identity —
//! a declared name or, without one, the peer id — is *claimed* when the connection is
//! welcomed:
//! - a claim with the name's valid token (`metadata.token`, `?token=`, `token` in the first
//!   message) is granted, whoever else holds the name (the same client on two connections);
//! - a claim without it is granted only if the name is not in use: no other relay
//!   connection has it as identity or peer id, and no stored message with an id was
//!   published under it (its deduplication state);
//! - otherwise the connection gets `error name_taken` and is served under its peer id (if
//!   that is free) or a name the node assigns (`guest-` and 16 hex digits only the ring can
//!   compute), and its peer id no longer reaches it by `direct` if that is in use.
//!
//! `welcome` then tells the client its identity (`client`) and the token that proves it on
//! any node of the ring (`name_token`), echoes its `nonce` and is signed (`sig`).

use std::sync::Arc;

use serde_json::{Map, Value};

use super::wire::{ErrorCode, ServerMessage};
use super::{ConnId, Payload, Relay};
use crate::discovery::SignedKind;

/// What a connection declared about itself before its welcome: from its metadata, or the
/// first message of a connection that did not declare the protocol.
#[derive(Debug, Default)]
pub(super) struct Declaration {
    /// `client`: the name it wants (any JSON value; checked when settled).
    pub client: Option<Value>,
    /// `token`: the name token proving `client`.
    pub token: Option<Value>,
    /// `nonce`: echoed in the signed `welcome`.
    pub nonce: Option<Value>,
}

impl Declaration {
    /// The declaration in a DataConnection's metadata (or a relay WebSocket's query).
    pub fn from_metadata(metadata: &Value) -> Declaration {
        let get = |k: &str| metadata.get(k).cloned();
        Declaration {
            client: get("client"),
            token: get("token"),
            nonce: get("nonce"),
        }
    }

    /// Adds what `first` (the first message) declares, removing those fields from it; the
    /// metadata's values win.
    pub fn take_from(&mut self, first: &mut Map<String, Value>) {
        for (key, slot) in [
            ("client", &mut self.client),
            ("token", &mut self.token),
            ("nonce", &mut self.nonce),
        ] {
            if let Some(v) = first.remove(key)
                && slot.is_none()
            {
                *slot = Some(v);
            }
        }
    }
}

/// Errors to send right after the welcome.
type Notices = Vec<(ErrorCode, String)>;

impl Relay {
    pub(super) fn valid_name(&self, n: &str) -> bool {
        !n.is_empty()
            && n.len() <= self.config.limits.max_name_bytes
            && !n.chars().any(char::is_control)
    }

    /// Whether `name` is in use by anyone but `conn`: another relay connection has it as
    /// identity or peer id, or stored messages with an id were published under it.
    fn in_use(&self, name: &str, conn: ConnId) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|v| v.iter().any(|c| *c != conn))
            || self.publishers.contains_key(name)
    }

    /// Settles `conn`'s identity from `d` (see the module docs) and builds its `welcome`.
    pub(super) fn settle_identity(
        &mut self,
        conn: ConnId,
        d: Declaration,
    ) -> (Arc<Payload>, Notices) {
        let mut notices = Notices::new();
        let Some(c) = self.conns.get(&conn) else {
            return (Payload::new(String::new()), notices);
        };
        let peer = c.peer_id.clone();
        let name: Option<Arc<str>> = match &d.client {
            None => None,
            Some(v) => match v.as_str().filter(|n| self.valid_name(n)) {
                Some(n) => Some(n.into()),
                None => {
                    notices.push((
                        ErrorCode::BadRequest,
                        "client must be a non-empty printable string of at most max_name_bytes; using the peer id".into(),
                    ));
                    None
                }
            },
        };
        let nonce = match &d.nonce {
            None => None,
            Some(v) => match v.as_str().filter(|n| self.valid_name(n)) {
                Some(n) => Some(n.to_owned()),
                None => {
                    notices.push((
                        ErrorCode::BadRequest,
                        "nonce must be a non-empty printable string of at most max_name_bytes; ignored".into(),
                    ));
                    None
                }
            },
        };
        let token = d.token.as_ref().and_then(Value::as_str);
        let (identity, named, peer_indexed, name_token) = match &self.config.keys {
            None => {
                let named = name.is_some();
                (name.unwrap_or_else(|| peer.clone()), named, true, None)
            }
            Some(keys) => {
                let candidate = name.clone().unwrap_or_else(|| peer.clone());
                let proven = token.is_some_and(|t| keys.check_name_token(&candidate, t));
                let peer_free = !self.in_use(&peer, conn);
                let identity = if proven || !self.in_use(&candidate, conn) {
                    candidate
                } else {
                    let fallback: Arc<str> = if name.is_some() && peer_free {
                        peer.clone()
                    } else {
                        let input = format!("{}\n{}\n{}", self.config.node, peer, conn.0);
                        format!("guest-{}", keys.tag(&input)).into()
                    };
                    let why = if token.is_some() {
                        "the token is not this name's"
                    } else {
                        "no token came with it"
                    };
                    notices.push((
                        ErrorCode::NameTaken,
                        format!(
                            "{candidate:?} is in use by another connection and {why}; served as {fallback:?}"
                        ),
                    ));
                    fallback
                };
                let name_token = keys.name_token(&identity);
                let peer_indexed = peer_free || identity == peer;
                (identity, name.is_some(), peer_indexed, Some(name_token))
            }
        };
        let keyed = self.config.keys.is_some();
        let client = (keyed || named).then(|| identity.to_string());
        if let Some(c) = self.conns.get_mut(&conn) {
            c.identity = identity;
            c.named = named;
            c.peer_indexed = peer_indexed;
        }
        let welcome = self.signed_payload(ServerMessage::Welcome {
            node: self.config.node.clone(),
            generation: self.config.generation,
            limits: self.config.limits.clone(),
            gap: self.gap.clone(),
            client,
            name_token,
            nonce,
            sig: None,
        });
        (welcome, notices)
    }

    /// A name declared by the first message of a connection that was welcomed already (it
    /// declared the protocol, but no name): granted on the same terms as at the welcome,
    /// except that no token can be handed out any more.
    pub(super) fn declare_identity(
        &mut self,
        conn: ConnId,
        name: Value,
        token: Option<Value>,
        reference: Option<&str>,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if c.named {
            return;
        }
        let ok = name
            .as_str()
            .filter(|n| self.valid_name(n))
            .map(Arc::<str>::from);
        let Some(name) = ok else {
            return self.send_error(
                conn,
                ErrorCode::BadRequest,
                "client must be a non-empty printable string; using the peer id",
                reference,
            );
        };
        if let Some(keys) = &self.config.keys {
            let proven = token
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|t| keys.check_name_token(&name, t));
            if !proven && self.in_use(&name, conn) {
                let current = c.identity.clone();
                return self.send_error(
                    conn,
                    ErrorCode::NameTaken,
                    &format!(
                        "{name:?} is in use by another connection; still served as {current:?}"
                    ),
                    reference,
                );
            }
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let old = std::mem::replace(&mut c.identity, name.clone());
        c.named = true;
        let (peer, peer_indexed) = (c.peer_id.clone(), c.peer_indexed);
        if old != peer || !peer_indexed {
            self.unindex(&old, conn);
        }
        if name != peer || !peer_indexed {
            self.index(&name, conn);
        }
    }

    /// `msg` as a payload, signed with the ring key when the relay has one (`welcome` and
    /// `moved`; other messages are sent as they are).
    pub(super) fn signed_payload(&self, msg: ServerMessage) -> Arc<Payload> {
        let Some(keys) = &self.config.keys else {
            return Payload::of(&msg);
        };
        let kind = match msg {
            ServerMessage::Welcome { .. } => SignedKind::Welcome,
            ServerMessage::Moved { .. } => SignedKind::Moved,
            _ => return Payload::of(&msg),
        };
        let value = serde_json::to_value(&msg).expect("server messages always serialise");
        let signature = keys.sign(kind, &value);
        let mut msg = msg;
        if let ServerMessage::Welcome { sig, .. } | ServerMessage::Moved { sig, .. } = &mut msg {
            *sig = Some(signature);
        }
        Payload::of(&msg)
    }
}

/// Counts `name` in or out of `publishers` when a room gains or loses its first / last
/// deduplication entry for it.
pub(super) fn count_publisher(
    publishers: &mut std::collections::HashMap<Arc<str>, usize>,
    name: &Arc<str>,
    added: bool,
) {
    if added {
        *publishers.entry(name.clone()).or_insert(0) += 1;
    } else if let Some(n) = publishers.get_mut(name) {
        *n -= 1;
        if *n == 0 {
            publishers.remove(name);
        }
    }
}
