//! [`AddressGate`]: per-client-address limits of the node's own WebSockets (`GET /relay`,
//! `GET /handoff`), with the semantics signaling gives `--max-connections-per-address` and
//! `--address-rate-limit` / `--address-rate-burst`: open sockets per address, and messages
//! per second from all sockets of one address together. The address is the one signaling
//! counts (`--trusted-proxy` and `X-Forwarded-For`, [`crate::signaling::client_ip`]).

use crate::rate::TokenBucket;
use crate::signaling::AddressLimits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The limits of one endpoint and what each address holds now. An address is remembered
/// only while it has a socket open, so the map holds at most as many entries as sockets.
#[derive(Debug)]
pub struct AddressGate {
    /// Which endpoint (for logs): `relay` or `handoff`.
    name: &'static str,
    limits: AddressLimits,
    open: Mutex<HashMap<IpAddr, Entry>>,
}

#[derive(Debug)]
struct Entry {
    sockets: usize,
    messages: Option<TokenBucket>,
}

/// One admitted socket's place; dropping it frees the place.
#[derive(Debug)]
pub struct AddressPermit {
    gate: Arc<AddressGate>,
    /// `None`: an in-process connection with no address (not limited).
    addr: Option<IpAddr>,
}

impl AddressGate {
    /// A gate named `name` (for logs) applying `limits`.
    pub fn new(name: &'static str, limits: AddressLimits) -> Arc<Self> {
        Arc::new(AddressGate {
            name,
            limits,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Admits one more socket from `addr`, or `None` when the address holds
    /// `connections` already.
    pub fn admit(self: &Arc<Self>, addr: Option<IpAddr>, now: Instant) -> Option<AddressPermit> {
        if let Some(ip) = addr {
            let mut open = self.open.lock().expect("address gate lock poisoned");
            let e = open.entry(ip).or_insert_with(|| Entry {
                sockets: 0,
                messages: self
                    .limits
                    .rate
                    .map(|r| TokenBucket::new(r.burst, r.per_second, now)),
            });
            if self.limits.connections > 0 && e.sockets >= self.limits.connections {
                tracing::info!(endpoint = self.name, %ip, "too many connections from one address");
                return None;
            }
            e.sockets += 1;
        }
        Some(AddressPermit {
            gate: self.clone(),
            addr,
        })
    }

    /// Sockets open from `addr` (for tests and `/status`).
    pub fn open_from(&self, addr: IpAddr) -> usize {
        self.open
            .lock()
            .expect("address gate lock poisoned")
            .get(&addr)
            .map_or(0, |e| e.sockets)
    }
}

impl AddressPermit {
    /// Counts one message from this socket's address; `false` when the address is over
    /// its message rate (the caller closes the socket).
    pub fn take_message(&self, now: Instant) -> bool {
        let Some(ip) = self.addr else { return true };
        let mut open = self.gate.open.lock().expect("address gate lock poisoned");
        let ok = match open.get_mut(&ip).and_then(|e| e.messages.as_mut()) {
            Some(bucket) => bucket.try_take(now, 1.0),
            None => true,
        };
        if !ok {
            tracing::info!(endpoint = self.gate.name, %ip, "address over its message rate; closing");
        }
        ok
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let Some(ip) = self.addr else { return };
        let mut open = self.gate.open.lock().expect("address gate lock poisoned");
        if let Some(e) = open.get_mut(&ip) {
            e.sockets = e.sockets.saturating_sub(1);
            if e.sockets == 0 {
                open.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signaling::Rate;

    #[test]
    fn sockets_and_messages_are_limited_per_address() {
        let t0 = Instant::now();
        let gate = AddressGate::new(
            "relay",
            AddressLimits {
                connections: 2,
                rate: Some(Rate {
                    per_second: 1.0,
                    burst: 3.0,
                }),
            },
        );
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = gate.admit(Some(a), t0).unwrap();
        let p2 = gate.admit(Some(a), t0).unwrap();
        assert!(
            gate.admit(Some(a), t0).is_none(),
            "third socket of one address"
        );
        let q = gate
            .admit(Some(b), t0)
            .expect("another address is not affected");
        assert!(gate.admit(None, t0).is_some(), "no address: not limited");
        // Three messages from both sockets of `a` together, then refused; `b` unaffected.
        assert!(p1.take_message(t0) && p2.take_message(t0) && p1.take_message(t0));
        assert!(!p2.take_message(t0));
        assert!(q.take_message(t0));
        assert!(p1.take_message(t0 + std::time::Duration::from_secs(1)));
        drop(p1);
        assert_eq!(gate.open_from(a), 1);
        assert!(gate.admit(Some(a), t0).is_some(), "a place was freed");
        drop(p2);
        drop(q);
        assert_eq!(gate.open_from(b), 0);
    }
}
