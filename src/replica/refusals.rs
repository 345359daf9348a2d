//! [`RefusalLimit`]: a per-address limit on the member calls a member refuses (`401` bad or
//! missing authentication, `421` for another member, `404` no such call, `400` a body that does
//! not decode, `413` too large). An address that earned [`REFUSAL_BURST`] refusals in a row is
//! answered `429` before anything else is looked at, until it earned one back
//! ([`REFUSAL_RATE`] per second). Calls that are served never take a token: a member's Raft
//! traffic is never limited by its own calls, only by sharing its address with a flood.
//! Sans-IO: the caller passes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::rate::TokenBucket;

/// Refusals one address may earn in a burst before it is answered `429`.
pub const REFUSAL_BURST: f64 = 20.0;
/// Refusals per second an address earns back.
pub const REFUSAL_RATE: f64 = 2.0;
/// Addresses tracked at most; beyond it, the ones whose bucket refilled are forgotten, then
/// the one refused longest ago.
pub const MAX_ADDRESSES: usize = 4096;

/// One address's bucket.
#[derive(Debug)]
struct Entry {
    /// Refusals left.
    bucket: TokenBucket,
    /// Its last refusal.
    last: Instant,
}

/// Refusals by source address, bounded ([`MAX_ADDRESSES`]).
#[derive(Debug)]
pub struct RefusalLimit {
    table: HashMap<IpAddr, Entry>,
    burst: f64,
    per_second: f64,
    max_addresses: usize,
}

impl Default for RefusalLimit {
    fn default() -> Self {
        Self::new(REFUSAL_BURST, REFUSAL_RATE, MAX_ADDRESSES)
    }
}

impl RefusalLimit {
    /// `burst` refusals, `per_second` earned back, at most `max_addresses` tracked.
    pub fn new(burst: f64, per_second: f64, max_addresses: usize) -> Self {
        Self {
            table: HashMap::new(),
            burst,
            per_second,
            max_addresses: max_addresses.max(1),
        }
    }

    /// Whether a call from `ip` may be looked at now (its bucket holds a refusal). Takes
    /// nothing.
    pub fn admits(&self, ip: IpAddr, now: Instant) -> bool {
        // A probe on a copy: admitting takes nothing.
        self.table
            .get(&ip)
            .is_none_or(|e| e.bucket.clone().try_take(now, 1.0))
    }

    /// Records that a call from `ip` was refused.
    pub fn refused(&mut self, ip: IpAddr, now: Instant) {
        if !self.table.contains_key(&ip) && self.table.len() >= self.max_addresses {
            self.make_room(now);
        }
        let (burst, rate) = (self.burst, self.per_second);
        let e = self.table.entry(ip).or_insert_with(|| Entry {
            bucket: TokenBucket::new(burst, rate, now),
            last: now,
        });
        e.bucket.try_take(now, 1.0);
        e.last = now;
    }

    /// How many addresses are tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Forgets the addresses whose bucket is full again (as good as new), or else the one
    /// refused longest ago.
    fn make_room(&mut self, now: Instant) {
        let refill = if self.per_second > 0.0 {
            Duration::from_secs_f64(self.burst / self.per_second)
        } else {
            Duration::MAX
        };
        self.table
            .retain(|_, e| now.saturating_duration_since(e.last) < refill);
        if self.table.len() >= self.max_addresses
            && let Some(oldest) = self
                .table
                .iter()
                .min_by_key(|(_, e)| e.last)
                .map(|(ip, _)| *ip)
        {
            self.table.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn an_address_is_limited_after_its_burst_of_refusals_and_earns_them_back() {
        let t0 = Instant::now();
        let mut l = RefusalLimit::new(3.0, 1.0, 16);
        for _ in 0..3 {
            assert!(l.admits(ip(1), t0));
            l.refused(ip(1), t0);
        }
        assert!(!l.admits(ip(1), t0), "limited after 3 refusals");
        // Another address is not.
        assert!(l.admits(ip(2), t0));
        // One refusal earned back per second.
        let t1 = t0 + Duration::from_millis(1000);
        assert!(l.admits(ip(1), t1));
        l.refused(ip(1), t1);
        assert!(!l.admits(ip(1), t1));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_refilled_addresses_first() {
        let t0 = Instant::now();
        let mut l = RefusalLimit::new(2.0, 1.0, 4);
        for n in 0..4 {
            l.refused(ip(n), t0);
            l.refused(ip(n), t0);
        }
        assert_eq!(l.len(), 4);
        // Full: the one refused longest ago goes.
        let t1 = t0 + Duration::from_millis(10);
        l.refused(ip(9), t1);
        assert_eq!(l.len(), 4);
        // Later, every bucket refilled: all are forgotten to make room.
        let t2 = t1 + Duration::from_secs(5);
        l.refused(ip(10), t2);
        assert_eq!(l.len(), 1);
        for n in 0..200 {
            l.refused(IpAddr::from([10, 1, 0, n]), t2);
        }
        assert!(l.len() <= 4);
    }
}
