//! [`LifecycleArgs`] (flags) and the [`LifecyclePlan`] derived from them.

use crate::discovery::SignalingEndpoint;
use std::path::PathBuf;
use std::time::Duration;

/// Parses a human duration: `20s`, `2h`, `1h 30m`, `500ms`.
///
/// # Errors
/// A message naming the bad input.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// The predecessor's signaling endpoints, as passed in `--predecessor-endpoints` (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointList(pub Vec<SignalingEndpoint>);

fn parse_endpoints(s: &str) -> Result<EndpointList, String> {
    serde_json::from_str(s).map(EndpointList).map_err(|e| {
        format!(
            "--predecessor-endpoints must be a JSON array of {{host,port,path,key,secure}}: {e}"
        )
    })
}

/// Which [`Launcher`](super::Launcher) starts the successor.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LauncherKind {
    /// Launch nothing: the node serves until its lifetime ends.
    #[default]
    None,
    /// Spawn `ouroboros node` on this machine (a local ring).
    Local,
    /// Dispatch the GitHub Actions workflow.
    Github,
}

/// Lifecycle flags of `ouroboros node` (flattened into the node's flags).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LifecycleArgs {
    /// How long this node lives (e.g. `2h`, `20s`); unset: run until stopped.
    #[arg(long, env = "OUROBOROS_LIFETIME", value_parser = parse_duration)]
    pub lifetime: Option<Duration>,
    /// How long before the end of the lifetime the successor is launched
    /// [default: 25% of the lifetime, at most 15 min].
    #[arg(long, env = "OUROBOROS_HANDOFF_LEAD", value_parser = parse_duration)]
    pub handoff_lead: Option<Duration>,
    /// Safety margin before the hard deadline (end of lifetime): without a handoff under
    /// way by then, the node writes a final backup and exits
    /// [default: 10% of the lifetime, at most 2 min].
    #[arg(long, env = "OUROBOROS_DEADLINE_MARGIN", value_parser = parse_duration)]
    pub deadline_margin: Option<Duration>,
    /// How long to wait for a launched successor to connect before launching again (the
    /// wait doubles with each attempt, up to 4×) [default: half the handoff lead].
    #[arg(long, env = "OUROBOROS_SUCCESSOR_TIMEOUT", value_parser = parse_duration)]
    pub successor_timeout: Option<Duration>,
    /// How long the old node keeps serving `moved` after the cut-over before it exits.
    #[arg(long, env = "OUROBOROS_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = "3s")]
    pub drain_timeout: Duration,
    /// What starts the successor.
    #[arg(long, env = "OUROBOROS_LAUNCHER", value_enum, default_value_t = LauncherKind::None)]
    pub launcher: LauncherKind,
    /// This node's generation (0 for the first node; successors get predecessor + 1).
    #[arg(long, env = "OUROBOROS_GENERATION", default_value_t = 0)]
    pub generation: u64,
    /// Peer id of the node to take over from (set by the launcher).
    #[arg(long, env = "OUROBOROS_PREDECESSOR_PEER_ID")]
    pub predecessor_peer_id: Option<String>,
    /// Signaling endpoints of the predecessor, as JSON
    /// (`[{"host","port","path","key","secure"}]`; set by the launcher).
    #[arg(long, env = "OUROBOROS_PREDECESSOR_ENDPOINTS", value_parser = parse_endpoints)]
    pub predecessor_endpoints: Option<EndpointList>,
    /// Folder for periodic snapshots (crash safety); unset: no backups.
    #[arg(long, env = "OUROBOROS_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// How often a snapshot is written to `--backup-dir`.
    #[arg(long, env = "OUROBOROS_BACKUP_INTERVAL", value_parser = parse_duration, default_value = "30s")]
    pub backup_interval: Duration,
    /// Folder for `ouroboros.json`, successor logs and local state.
    #[arg(long, env = "OUROBOROS_DATA_DIR", default_value = "ouroboros-data")]
    pub data_dir: PathBuf,
    /// Size of one snapshot chunk sent to the successor (`64KiB`; 1 KiB to 1 MiB)
    /// [default: 255KiB]. Inherited by local successors.
    #[arg(long, env = "OUROBOROS_HANDOFF_CHUNK_SIZE", value_parser = parse_chunk_size)]
    pub handoff_chunk_size: Option<u64>,
    /// Snapshot chunks sent to the successor before waiting for its acknowledgement
    /// (1 to 256) [default: 32]. Chunk size × window bounds the bytes in flight.
    #[arg(long, env = "OUROBOROS_HANDOFF_WINDOW", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub handoff_window: Option<u32>,
    /// How long the predecessor keeps an interrupted handoff session for its successor
    /// to resume before it aborts it (and the lifecycle launches another successor)
    /// [default: 10s].
    #[arg(long, env = "OUROBOROS_HANDOFF_RESUME_TIMEOUT", value_parser = parse_duration)]
    pub handoff_resume_timeout: Option<Duration>,
    /// How long a successor keeps trying to reach a silent predecessor before it recovers
    /// from the newest backup and announces the gap [default: 10s].
    #[arg(long, env = "OUROBOROS_HANDOFF_GIVE_UP_AFTER", value_parser = parse_duration)]
    pub handoff_give_up_after: Option<Duration>,
    /// How long a successor waits for its transfer to start or go on while the predecessor
    /// answers but does not admit it (refusals such as `rate_limited` or `busy`, e.g. under
    /// a flood of other connections) before it gives up and recovers from the newest
    /// backup [default: 1/40 of the lifetime, between 30s and 10min; 2min without one].
    #[arg(long, env = "OUROBOROS_HANDOFF_MAX_WAIT", value_parser = parse_duration)]
    pub handoff_max_wait: Option<Duration>,
    /// How a successor reaches its predecessor: `webrtc` (a DataConnection through its
    /// signaling), `ws` (a WebSocket to `/handoff` on its HTTP port, e.g. through its tunnel:
    /// no UDP needed) or `auto` (WebRTC; the WebSocket when no DataChannel opens within
    /// `--handoff-fallback-after`). Inherited by local successors.
    #[arg(long, env = "OUROBOROS_HANDOFF_TRANSPORT", default_value = "auto")]
    pub handoff_transport: crate::client::Transport,
    /// With `--handoff-transport auto`: how long a WebRTC attempt may take.
    #[arg(long, env = "OUROBOROS_HANDOFF_FALLBACK_AFTER", default_value = "3s", value_parser = parse_duration)]
    pub handoff_fallback_after: Duration,
}

/// Smallest and largest `--handoff-chunk-size` (a chunk travels in one handoff message,
/// at most 2 MiB).
pub const HANDOFF_CHUNK_SIZE_RANGE: (u64, u64) = (1 << 10, 1 << 20);

fn parse_chunk_size(s: &str) -> Result<u64, String> {
    let v = crate::units::parse_size(s)?;
    let (lo, hi) = HANDOFF_CHUNK_SIZE_RANGE;
    if !(lo..=hi).contains(&v) {
        return Err(format!(
            "--handoff-chunk-size must be between 1KiB and 1MiB, got {s:?}"
        ));
    }
    Ok(v)
}

/// Why the lifecycle flags do not make sense together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A duration is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// The validated timing of a node's life (all defaults resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecyclePlan {
    /// Total lifetime; `None` runs forever.
    pub lifetime: Option<Duration>,
    /// Launch the successor this long before the hard deadline.
    pub handoff_lead: Duration,
    /// Give up waiting for a successor this long before the hard deadline.
    pub deadline_margin: Duration,
    /// First wait for a launched successor; doubles per attempt up to 4×.
    pub successor_timeout: Duration,
    /// Drain time after the clients were moved.
    pub drain_timeout: Duration,
    /// Whether a successor is launched at all.
    pub launches: bool,
}

impl LifecycleArgs {
    /// Resolves defaults and checks the durations fit into the lifetime.
    ///
    /// # Errors
    /// [`PlanError::Invalid`] with a message fit for the command line.
    pub fn plan(&self) -> Result<LifecyclePlan, PlanError> {
        let lifetime = self.lifetime;
        let l = lifetime.unwrap_or(Duration::ZERO);
        if lifetime == Some(Duration::ZERO) {
            return Err(PlanError::Invalid("--lifetime must be positive".into()));
        }
        let handoff_lead = self
            .handoff_lead
            .unwrap_or_else(|| (l / 4).min(Duration::from_secs(15 * 60)));
        let deadline_margin = self
            .deadline_margin
            .unwrap_or_else(|| (l / 10).min(Duration::from_secs(120)));
        let successor_timeout = self
            .successor_timeout
            .unwrap_or_else(|| (handoff_lead / 2).max(Duration::from_millis(500)));
        if lifetime.is_some() {
            if handoff_lead >= l {
                return Err(PlanError::Invalid(format!(
                    "--handoff-lead ({}) must be shorter than --lifetime ({})",
                    humantime::format_duration(handoff_lead),
                    humantime::format_duration(l)
                )));
            }
            if deadline_margin >= handoff_lead {
                return Err(PlanError::Invalid(format!(
                    "--deadline-margin ({}) must be shorter than --handoff-lead ({})",
                    humantime::format_duration(deadline_margin),
                    humantime::format_duration(handoff_lead)
                )));
            }
        }
        Ok(LifecyclePlan {
            lifetime,
            handoff_lead,
            deadline_margin,
            successor_timeout,
            drain_timeout: self.drain_timeout,
            launches: lifetime.is_some() && self.launcher != LauncherKind::None,
        })
    }

    /// Whether this node was started as a successor (it has a predecessor to take over from).
    pub fn is_successor(&self) -> bool {
        self.predecessor_peer_id.is_some()
    }

    /// The predecessor side's handoff settings: defaults with the `--handoff-*` flags
    /// applied.
    pub fn handoff_config(&self) -> crate::handoff::HandoffConfig {
        let mut c = crate::handoff::HandoffConfig::default();
        if let Some(size) = self.handoff_chunk_size {
            c.chunk_size = size as usize;
        }
        if let Some(window) = self.handoff_window {
            c.window = window;
        }
        if let Some(t) = self.handoff_resume_timeout {
            c.resume_timeout = t;
        }
        c
    }

    /// The successor side's handoff settings: defaults with `--handoff-give-up-after` and
    /// `--handoff-max-wait` (scaled to the lifetime when unset).
    pub fn successor_config(&self) -> crate::handoff::SuccessorConfig {
        let mut c = crate::handoff::SuccessorConfig::default();
        if let Some(t) = self.handoff_give_up_after {
            c.give_up_after = t;
        }
        c.max_wait = self.handoff_max_wait.unwrap_or(match self.lifetime {
            Some(l) => (l / 40).clamp(Duration::from_secs(30), Duration::from_secs(600)),
            None => Duration::from_secs(120),
        });
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        l: LifecycleArgs,
    }

    fn parse(args: &[&str]) -> Result<LifecycleArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.l)
    }

    #[test]
    fn defaults_scale_with_lifetime() {
        let a = parse(&["--lifetime", "20s", "--launcher", "local"]).unwrap();
        let p = a.plan().unwrap();
        assert_eq!(p.handoff_lead, Duration::from_secs(5));
        assert_eq!(p.deadline_margin, Duration::from_secs(2));
        assert_eq!(p.successor_timeout, Duration::from_millis(2500));
        assert!(p.launches);
        let p = parse(&["--lifetime", "2h"]).unwrap().plan().unwrap();
        assert_eq!(p.handoff_lead, Duration::from_secs(15 * 60));
        assert_eq!(p.deadline_margin, Duration::from_secs(120));
        assert!(!p.launches, "launcher defaults to none");
        let p = parse(&[]).unwrap().plan().unwrap();
        assert_eq!(p.lifetime, None);
        assert!(!p.launches);
    }

    #[test]
    fn successor_flags_parse() {
        let a = parse(&[
            "--generation",
            "7",
            "--predecessor-peer-id",
            "ouroboros-a",
            "--predecessor-endpoints",
            r#"[{"host":"127.0.0.1","port":9000,"path":"/","key":"peerjs","secure":false}]"#,
        ])
        .unwrap();
        assert_eq!(a.generation, 7);
        assert!(a.is_successor());
        assert_eq!(a.predecessor_endpoints.unwrap().0[0].port, 9000);
        let e = parse(&["--predecessor-endpoints", "nope"]).unwrap_err();
        assert!(e.to_string().contains("JSON array"), "{e}");
        let e = parse(&["--lifetime", "soon"]).unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
    }

    #[test]
    fn handoff_knobs_parse_validate_and_default() {
        let a = parse(&[]).unwrap();
        let (h, s) = (a.handoff_config(), a.successor_config());
        let (dh, ds) = (
            crate::handoff::HandoffConfig::default(),
            crate::handoff::SuccessorConfig::default(),
        );
        assert_eq!((h.chunk_size, h.window), (dh.chunk_size, dh.window));
        assert_eq!(h.resume_timeout, dh.resume_timeout);
        assert_eq!(s.give_up_after, ds.give_up_after);
        let a = parse(&[
            "--handoff-chunk-size",
            "4KiB",
            "--handoff-window",
            "2",
            "--handoff-resume-timeout",
            "3s",
            "--handoff-give-up-after",
            "4s",
        ])
        .unwrap();
        let (h, s) = (a.handoff_config(), a.successor_config());
        assert_eq!((h.chunk_size, h.window), (4096, 2));
        assert_eq!(h.resume_timeout, Duration::from_secs(3));
        assert_eq!(s.give_up_after, Duration::from_secs(4));
        for bad in [
            &["--handoff-chunk-size", "512"][..],
            &["--handoff-chunk-size", "2MiB"],
            &["--handoff-chunk-size", "lots"],
            &["--handoff-window", "0"],
            &["--handoff-window", "1000"],
            &["--handoff-resume-timeout", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn inconsistent_durations_are_refused() {
        let a = parse(&["--lifetime", "10s", "--handoff-lead", "10s"]).unwrap();
        assert!(a.plan().unwrap_err().to_string().contains("--handoff-lead"));
        let a = parse(&[
            "--lifetime",
            "10s",
            "--handoff-lead",
            "4s",
            "--deadline-margin",
            "5s",
        ])
        .unwrap();
        assert!(
            a.plan()
                .unwrap_err()
                .to_string()
                .contains("--deadline-margin")
        );
        assert!(parse(&["--lifetime", "0s"]).unwrap().plan().is_err());
    }
}
