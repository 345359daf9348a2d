//! [`CachedRunVerifier`]: the successor's run check with a memory, so a flood of handoff
//! connections claiming run ids costs a bounded number of GitHub API calls.

use super::{RunCheckError, RunVerifier};
use crate::rate::TokenBucket;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Settings of a [`CachedRunVerifier`].
#[derive(Debug, Clone, Copy)]
pub struct RunCacheConfig {
    /// How long a verdict (pass or fail) is reused for the same claimed run id.
    pub ttl: Duration,
    /// Verdicts remembered (the oldest is forgotten beyond this).
    pub max_entries: usize,
    /// API calls (cache misses) in a burst.
    pub lookup_burst: f64,
    /// Sustained API calls per second.
    pub lookups_per_second: f64,
}

impl Default for RunCacheConfig {
    fn default() -> Self {
        RunCacheConfig {
            ttl: Duration::from_secs(60),
            max_entries: 256,
            lookup_burst: 8.0,
            lookups_per_second: 0.2,
        }
    }
}

/// Why a claimed run was not accepted (the message is safe to log).
pub type RunVerdict = Result<u64, String>;

/// A [`RunVerifier`] whose verdicts are cached per claimed run id for `ttl` (failures
/// too: a repeated bogus claim costs one call per `ttl`), and whose API calls are
/// rate limited: a claim that misses the cache while the budget is spent is refused
/// without a call (and not cached), so the caller may come back later.
#[derive(Debug)]
pub struct CachedRunVerifier {
    verifier: RunVerifier,
    cfg: RunCacheConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    verdicts: HashMap<String, (Instant, RunVerdict)>,
    lookups: TokenBucket,
}

impl CachedRunVerifier {
    /// Caches `verifier`'s verdicts; `now` starts the lookup budget.
    pub fn new(verifier: RunVerifier, cfg: RunCacheConfig, now: Instant) -> Self {
        CachedRunVerifier {
            verifier,
            state: Mutex::new(State {
                verdicts: HashMap::new(),
                lookups: TokenBucket::new(cfg.lookup_burst, cfg.lookups_per_second, now),
            }),
            cfg,
        }
    }

    /// Verifies `claimed` at `now`: a cached verdict younger than `ttl`, or one API call if
    /// the budget allows.
    ///
    /// # Errors
    /// Why the run is not accepted (safe to log).
    pub async fn verify(&self, now: Instant, claimed: &str) -> RunVerdict {
        let key: String = claimed.trim().chars().take(40).collect();
        {
            let mut st = self.state.lock().expect("run cache lock poisoned");
            if let Some((at, verdict)) = st.verdicts.get(&key)
                && now.saturating_duration_since(*at) < self.cfg.ttl
            {
                return verdict.clone();
            }
            if !st.lookups.try_take(now, 1.0) {
                return Err("too many run checks; try again later".into());
            }
        }
        let verdict = self
            .verifier
            .verify(&key)
            .await
            .map_err(|e: RunCheckError| e.to_string());
        let mut st = self.state.lock().expect("run cache lock poisoned");
        if st.verdicts.len() >= self.cfg.max_entries.max(1) && !st.verdicts.contains_key(&key) {
            let oldest = st
                .verdicts
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                st.verdicts.remove(&k);
            }
        }
        st.verdicts.insert(key, (now, verdict.clone()));
        verdict
    }

    /// Verdicts remembered now.
    pub fn cached(&self) -> usize {
        self.state
            .lock()
            .expect("run cache lock poisoned")
            .verdicts
            .len()
    }
}
