//! One retry policy for every reconnect and retry loop: exponential delays (doubling from
//! `first`, capped at `max`, the sequence from `backon`), **full jitter** (each delay drawn
//! uniformly from zero to its ceiling, so clients that lost the same node at the same moment
//! spread their retries instead of arriving together), and optional bounds on the number of
//! retries and on the total of the ceilings (so the time spent sleeping never exceeds it).
//!
//! The loops keep their own `select!` (commands, cancellation); they only ask [`Delays`] for
//! the next delay. Randomness can be injected ([`Delays::next_delay_with`]) for tests.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// A retry policy (cheap to copy). Build the running sequence with [`Backoff::delays`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub first: Duration,
    /// Largest ceiling (the doubling stops there).
    pub max: Duration,
    /// Retries before giving up; `None` = no limit.
    pub max_retries: Option<usize>,
    /// Bound on the sum of the ceilings of all delays; `None` = no bound.
    pub total: Option<Duration>,
}

impl Backoff {
    /// Doubling from `first` up to `max`, full jitter, no bound.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            max_retries: None,
            total: None,
        }
    }

    /// At most `n` retries.
    pub const fn with_max_retries(mut self, n: usize) -> Backoff {
        self.max_retries = Some(n);
        self
    }

    /// The ceilings of all delays add up to at most `total`.
    pub const fn with_total(mut self, total: Duration) -> Backoff {
        self.total = Some(total);
        self
    }

    /// A fresh sequence of delays.
    pub fn delays(&self) -> Delays {
        Delays {
            policy: *self,
            ceilings: self.ceilings(),
        }
    }

    fn ceilings(&self) -> <ExponentialBuilder as BackoffBuilder>::Backoff {
        let mut b = ExponentialBuilder::new()
            .with_factor(2.0)
            .with_min_delay(self.first)
            .with_max_delay(self.max.max(self.first))
            .without_max_times()
            .with_total_delay(self.total);
        if let Some(n) = self.max_retries {
            b = b.with_max_times(n);
        }
        b.build()
    }
}

/// The delays of one retry loop, from a [`Backoff`].
#[derive(Debug)]
pub struct Delays {
    policy: Backoff,
    ceilings: <ExponentialBuilder as BackoffBuilder>::Backoff,
}

impl Delays {
    /// The next delay (uniform in zero..=ceiling), or `None` once the retries or the total are
    /// used up.
    pub fn next_delay(&mut self) -> Option<Duration> {
        self.next_delay_with(rand::random::<f64>())
    }

    /// [`Delays::next_delay`] with the random draw given: `unit` in `0.0..=1.0` picks the
    /// delay as that fraction of the ceiling.
    pub fn next_delay_with(&mut self, unit: f64) -> Option<Duration> {
        let ceiling = self.ceilings.next()?;
        Some(ceiling.mul_f64(unit.clamp(0.0, 1.0)))
    }

    /// Starts over from the first delay (after a success).
    pub fn reset(&mut self) {
        self.ceilings = self.policy.ceilings();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ceilings(mut d: Delays, n: usize) -> Vec<Option<Duration>> {
        (0..n).map(|_| d.next_delay_with(1.0)).collect()
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let d = Backoff::new(250 * MS, 2000 * MS).delays();
        let expect = [250, 500, 1000, 2000, 2000, 2000].map(|m| Some(m * MS));
        assert_eq!(ceilings(d, 6), expect);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let mut d = Backoff::new(100 * MS, 100 * MS).delays();
        assert_eq!(d.next_delay_with(0.0), Some(Duration::ZERO));
        assert_eq!(d.next_delay_with(0.5), Some(50 * MS));
        assert_eq!(d.next_delay_with(1.0), Some(100 * MS));
        // Real draws stay within the ceiling and are not all the same.
        let draws: Vec<Duration> = (0..64).map(|_| d.next_delay().unwrap()).collect();
        assert!(draws.iter().all(|x| *x <= 100 * MS));
        assert!(draws.iter().any(|x| *x != draws[0]), "{draws:?}");
    }

    #[test]
    fn retries_and_total_are_bounded() {
        // (Powers of two: backon multiplies in f32.)
        let d = Backoff::new(125 * MS, 1000 * MS)
            .with_max_retries(3)
            .delays();
        assert_eq!(
            ceilings(d, 4),
            [Some(125 * MS), Some(250 * MS), Some(500 * MS), None]
        );
        // 250 + 500 + 1000 = 1750 fits in 2 s; the next 2000 would not.
        let d = Backoff::new(250 * MS, 10_000 * MS)
            .with_total(2000 * MS)
            .delays();
        assert_eq!(
            ceilings(d, 4),
            [Some(250 * MS), Some(500 * MS), Some(1000 * MS), None]
        );
    }

    #[test]
    fn reset_starts_over() {
        let mut d = Backoff::new(10 * MS, 1000 * MS)
            .with_max_retries(2)
            .delays();
        d.next_delay();
        d.next_delay();
        assert_eq!(d.next_delay(), None);
        d.reset();
        assert_eq!(d.next_delay_with(1.0), Some(10 * MS));
    }
}
