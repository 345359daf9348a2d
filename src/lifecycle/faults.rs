//! Test-only fault injection for a local ring (`OUROBOROS_FAULTS`), modelling what GitHub
//! Actions does to a ring: successor runs that start late or twice, runners that die, runs
//! cancelled mid-handoff. Read only by the local launcher and the node's ring; unset (the
//! normal case) every knob is off. Never set it in production.
//!
//! Format: comma-separated `key=value`:
//! - `launch_delay=2s`: each locally launched successor waits a random time in `0..=2s`
//!   before it starts (like a queued run; passed to it in `OUROBOROS_FAULT_START_DELAY`, in
//!   milliseconds, so the wait goes on even if its predecessor exits meanwhile);
//! - `duplicate=0.2`: with this probability a launch starts two successors;
//! - `kill=0.1`, `kill_within=3s`: with this probability a launched successor gets `kill -9`
//!   at a random moment in `0..=kill_within` (default 3 s), unless its generation has been
//!   published by then (a successor that already serves is never killed: that would lose
//!   acknowledged messages by design, which is not what the soak measures);
//! - `vanish=0.1`: with this probability a predecessor's host ends when its successor has
//!   authenticated (mid-transfer): it stops writes, leaves its final backup and exits.

use rand::Rng;
use std::time::Duration;

/// Environment variable holding the fault settings.
pub const FAULTS_ENV: &str = "OUROBOROS_FAULTS";

/// Environment variable (milliseconds) making a launched node wait before it starts.
pub const START_DELAY_ENV: &str = "OUROBOROS_FAULT_START_DELAY";

/// Test-only: the start delay a fault-injecting launcher gave this process, if any.
pub fn start_delay() -> Option<Duration> {
    std::env::var(START_DELAY_ENV)
        .ok()?
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
        .filter(|d| !d.is_zero())
}

/// Fault settings (all off by default).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Upper bound of the random delay before each local launch.
    pub launch_delay: Duration,
    /// Probability that a launch starts two successors.
    pub duplicate: f64,
    /// Probability that a launched successor is killed.
    pub kill: f64,
    /// Upper bound of the random moment of that kill.
    pub kill_within: Duration,
    /// Probability that the host ends mid-transfer.
    pub vanish: f64,
}

impl Faults {
    /// From [`FAULTS_ENV`]; bad entries are logged and ignored.
    pub fn from_env() -> Faults {
        std::env::var(FAULTS_ENV)
            .map(|s| Faults::parse(&s))
            .unwrap_or_default()
    }

    /// Parses the format above.
    pub fn parse(s: &str) -> Faults {
        let mut f = Faults {
            kill_within: Duration::from_secs(3),
            ..Faults::default()
        };
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
            let dur = || super::parse_duration(v).ok();
            let p = || v.parse::<f64>().ok().filter(|p| (0.0..=1.0).contains(p));
            let ok = match k {
                "launch_delay" => dur().map(|d| f.launch_delay = d).is_some(),
                "kill_within" => dur().map(|d| f.kill_within = d).is_some(),
                "duplicate" => p().map(|p| f.duplicate = p).is_some(),
                "kill" => p().map(|p| f.kill = p).is_some(),
                "vanish" => p().map(|p| f.vanish = p).is_some(),
                _ => false,
            };
            if !ok {
                tracing::warn!(entry, "{FAULTS_ENV}: ignored");
            }
        }
        if f != Faults::parse_off() {
            tracing::warn!(faults = ?f, "{FAULTS_ENV} is set: injecting faults (test only)");
        }
        f
    }

    fn parse_off() -> Faults {
        Faults {
            kill_within: Duration::from_secs(3),
            ..Faults::default()
        }
    }

    fn chance(p: f64) -> bool {
        p > 0.0 && rand::rng().random_bool(p.min(1.0))
    }

    /// A random launch delay (zero when off).
    pub fn launch_delay(&self) -> Duration {
        random_up_to(self.launch_delay)
    }

    /// Whether this launch starts a second successor.
    pub fn duplicate(&self) -> bool {
        Faults::chance(self.duplicate)
    }

    /// When to kill this launched successor, if at all.
    pub fn kill_after(&self) -> Option<Duration> {
        Faults::chance(self.kill).then(|| random_up_to(self.kill_within))
    }

    /// Whether the host ends now, mid-transfer.
    pub fn vanish_mid_transfer(&self) -> bool {
        Faults::chance(self.vanish)
    }
}

fn random_up_to(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::rng().random_range(0..=max.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_knobs_and_ignores_bad_entries() {
        let f = Faults::parse(
            "launch_delay=2s, duplicate=0.5,kill=1,kill_within=500ms,vanish=0,x=1,kill=7",
        );
        assert_eq!(f.launch_delay, Duration::from_secs(2));
        assert_eq!(f.duplicate, 0.5);
        assert_eq!(f.kill, 1.0);
        assert_eq!(f.kill_within, Duration::from_millis(500));
        assert!(!f.vanish_mid_transfer());
        assert!(f.kill_after().unwrap() <= Duration::from_millis(500));
        assert!(f.launch_delay() <= Duration::from_secs(2));
        let off = Faults::parse("");
        assert!(!off.duplicate() && off.kill_after().is_none());
        assert_eq!(off.launch_delay(), Duration::ZERO);
    }
}
