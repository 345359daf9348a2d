//! A token bucket, the one rate limiter every layer uses. Sans-IO: the caller passes `now`.

use std::time::{Duration, Instant};

/// A classic token bucket: holds up to `capacity` tokens, refilled continuously at
/// `per_second`. Each admitted event takes tokens; an empty bucket refuses.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Largest burst admitted after a quiet period.
    capacity: f64,
    /// Sustained rate, tokens per second.
    per_second: f64,
    /// Tokens available at `last`.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `capacity` below 1 is raised to 1 so one event can always pass.
    pub fn new(capacity: f64, per_second: f64, now: Instant) -> Self {
        let capacity = capacity.max(1.0);
        TokenBucket {
            capacity,
            per_second: per_second.max(0.0),
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = self.last.max(now);
    }

    /// Takes `n` tokens if available; returns whether the event is admitted.
    pub fn try_take(&mut self, now: Instant, n: f64) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// How long until `n` tokens are available (zero if they are now).
    pub fn wait_time(&mut self, now: Instant, n: f64) -> Duration {
        self.refill(now);
        if self.tokens >= n || self.per_second == 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3.0, 1.0, t0);
        assert!(b.try_take(t0, 1.0));
        assert!(b.try_take(t0, 1.0));
        assert!(b.try_take(t0, 1.0));
        assert!(!b.try_take(t0, 1.0));
        assert_eq!(b.wait_time(t0, 1.0), Duration::from_secs(1));
        let t1 = t0 + Duration::from_millis(1500);
        assert!(b.try_take(t1, 1.0));
        assert!(!b.try_take(t1, 1.0));
        // Never above capacity.
        let t2 = t1 + Duration::from_secs(100);
        for _ in 0..3 {
            assert!(b.try_take(t2, 1.0));
        }
        assert!(!b.try_take(t2, 1.0));
    }
}
