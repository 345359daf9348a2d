//! Where a member is reached: [`MemberAddr`], the node value of the membership (openraft's
//! `Node`). A member has up to two kinds of route:
//!
//! - `addr`, the base URL of its HTTP calls (`POST {addr}/replica/v1/{call}`): its own port, or
//!   its tunnel's URL;
//! - `rtc`, the PeerJS signaling servers it is registered on with its peer id there
//!   ([`RtcRoute`]): another member opens a DataConnection labelled `ouroboros-replica` to it
//!   through one of them, and the calls then travel over WebRTC (ICE with the node's STUN/TURN
//!   servers), which crosses NATs without a tunnel.
//!
//! In contacts (`--replica-join`, the `replica_join` workflow input) a route is one `ID=…`
//! entry: `ID=http(s)://…` for the HTTP route, `ID=peerjs:PEER@ws(s)://host:port/path?key=K`
//! for a WebRTC route; one member may have several entries (`protocol/replication.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::NodeId;

/// The prefix of a WebRTC route in a contact.
pub const RTC_SCHEME: &str = "peerjs:";

/// A member's routes (the membership's node value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberAddr {
    /// The base URL of its HTTP calls (`http(s)://host:port`); empty when it has none.
    pub addr: String,
    /// Its WebRTC routes, in the order to try them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtc: Vec<RtcRoute>,
}

/// One way to open a DataConnection to a member: its peer id on a PeerJS signaling server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RtcRoute {
    /// The member's peer id on that server.
    pub peer: String,
    /// The server, as `ws[s]://host:port/path?key=K` (what `PeerConfig::from_url` reads).
    pub server: String,
}

impl std::fmt::Display for MemberAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)?;
        for r in &self.rtc {
            write!(f, " {RTC_SCHEME}{}@{}", r.peer, r.server)?;
        }
        Ok(())
    }
}

impl MemberAddr {
    /// A member reached over HTTP only.
    pub fn http(addr: impl Into<String>) -> MemberAddr {
        MemberAddr {
            addr: addr.into(),
            rtc: Vec::new(),
        }
    }

    /// Its routes as contact values (the part after `ID=`): the HTTP URL (when there is one),
    /// then each WebRTC route.
    pub fn contact_values(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.addr.is_empty() {
            out.push(self.addr.clone());
        }
        out.extend(
            self.rtc
                .iter()
                .map(|r| format!("{RTC_SCHEME}{}@{}", r.peer, r.server)),
        );
        out
    }

    /// Adds one contact value (`http(s)://…` or `peerjs:PEER@SERVER`) to these routes; an
    /// HTTP URL replaces the one there.
    ///
    /// # Errors
    /// A value of neither form, or a WebRTC route without a peer id or a `ws(s)://` server.
    pub fn add_contact_value(&mut self, value: &str) -> Result<(), String> {
        let value = value.trim();
        if let Some(rest) = value.strip_prefix(RTC_SCHEME) {
            let (peer, server) = rest
                .split_once('@')
                .ok_or_else(|| format!("{value:?}: expected {RTC_SCHEME}PEER@ws(s)://SERVER"))?;
            if peer.is_empty() || peer.len() > 256 || peer.chars().any(char::is_control) {
                return Err(format!("{value:?}: bad peer id"));
            }
            if !(server.starts_with("ws://") || server.starts_with("wss://")) {
                return Err(format!(
                    "{value:?}: the signaling server must be a ws:// or wss:// URL"
                ));
            }
            let route = RtcRoute {
                peer: peer.to_owned(),
                server: server.to_owned(),
            };
            if !self.rtc.contains(&route) {
                self.rtc.push(route);
            }
            return Ok(());
        }
        let url = value.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{value:?}: expected an http(s):// URL or {RTC_SCHEME}PEER@ws(s)://SERVER"
            ));
        }
        url.clone_into(&mut self.addr);
        Ok(())
    }

    /// Groups contacts (`(id, value)` pairs, several per member allowed) into each member's
    /// routes, in the order the members first appear.
    ///
    /// # Errors
    /// The first value that is not a route.
    pub fn from_contacts(
        contacts: &[(NodeId, String)],
    ) -> Result<Vec<(NodeId, MemberAddr)>, String> {
        let mut order = Vec::new();
        let mut by_id: BTreeMap<NodeId, MemberAddr> = BTreeMap::new();
        for (id, value) in contacts {
            let entry = by_id.entry(*id).or_insert_with(|| {
                order.push(*id);
                MemberAddr::default()
            });
            entry.add_contact_value(value)?;
        }
        Ok(order
            .into_iter()
            .filter_map(|id| by_id.remove(&id).map(|a| (id, a)))
            .collect())
    }

    /// Each `(id, routes)` as contacts (`(id, value)` pairs).
    pub fn to_contacts(members: &[(NodeId, MemberAddr)]) -> Vec<(NodeId, String)> {
        members
            .iter()
            .flat_map(|(id, a)| a.contact_values().into_iter().map(move |v| (*id, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_round_trip_and_group_by_member() {
        let contacts = vec![
            (2, "http://10.0.0.2:9000/".to_string()),
            (1, "https://a.example".to_string()),
            (
                2,
                "peerjs:node-b@ws://203.0.113.10:9000/?key=peerjs".to_string(),
            ),
            (
                2,
                "peerjs:node-b2@wss://0.peerjs.com/?key=peerjs".to_string(),
            ),
        ];
        let members = MemberAddr::from_contacts(&contacts).unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].0, 2);
        assert_eq!(members[0].1.addr, "http://10.0.0.2:9000");
        assert_eq!(members[0].1.rtc.len(), 2);
        assert_eq!(members[0].1.rtc[1].peer, "node-b2");
        assert_eq!(members[1].1, MemberAddr::http("https://a.example"));
        let back = MemberAddr::to_contacts(&members);
        assert_eq!(MemberAddr::from_contacts(&back).unwrap(), members);
    }

    #[test]
    fn bad_contact_values_are_refused_with_the_reason() {
        let mut a = MemberAddr::default();
        for bad in [
            "ftp://x",
            "peerjs:nopeer",
            "peerjs:@ws://x/",
            "peerjs:p@http://x/",
            "",
        ] {
            assert!(a.add_contact_value(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(a, MemberAddr::default());
    }

    #[test]
    fn the_old_basic_node_form_still_reads() {
        let a: MemberAddr = serde_json::from_str(r#"{"addr":"http://x:1"}"#).unwrap();
        assert_eq!(a, MemberAddr::http("http://x:1"));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"addr":"http://x:1"}"#
        );
    }
}
