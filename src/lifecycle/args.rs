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

impl LauncherKind {
    /// How long a successor this launcher starts usually takes from the launch request to
    /// its first handoff message: what every wait of the ring is scaled by. `local`: a
    /// process on this machine (start, bind, register, open a DataConnection; under 1 s
    /// even on a loaded two-core machine); `github`: a queued Actions run (minutes).
    pub fn expected_start(self) -> Duration {
        match self {
            LauncherKind::None => Duration::ZERO,
            LauncherKind::Local => Duration::from_secs(1),
            LauncherKind::Github => Duration::from_secs(2 * 60),
        }
    }
}

/// The default `--handoff-lead` for a lifetime: 25%, at most 15 min.
fn default_lead(lifetime: Duration) -> Duration {
    (lifetime / 4).min(Duration::from_secs(15 * 60))
}

/// The shortest `--lifetime` for `launcher` with the default lead and margin: the lead
/// (25%) must hold two expected starts (one to start, one for a relaunch), and the window
/// from the launch to the give-up (lead − margin, 15%) one whole start.
pub fn min_lifetime(launcher: LauncherKind) -> Duration {
    min_lifetime_for(launcher.expected_start())
}

/// [`min_lifetime`] for a successor that takes `start` to start.
fn min_lifetime_for(start: Duration) -> Duration {
    (start * 8).max(start.mul_f64(1.0 / 0.15))
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
    /// wait doubles with each attempt, up to 4×) [default: half the handoff lead, at least
    /// the launcher's expected start time (`local`: 1 s, `github`: 2 min)].
    #[arg(long, env = "OUROBOROS_SUCCESSOR_TIMEOUT", value_parser = parse_duration)]
    pub successor_timeout: Option<Duration>,
    /// How long the old node keeps serving `moved` after the cut-over before it exits.
    #[arg(long, env = "OUROBOROS_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = "3s")]
    pub drain_timeout: Duration,
    /// What starts the successor.
    #[arg(long, env = "OUROBOROS_LAUNCHER", value_enum, default_value_t = LauncherKind::None)]
    pub launcher: LauncherKind,
    /// How long a launched successor takes to start, which every wait of the ring scales
    /// with [default: the launcher's: `local` 1 s, `github` 2 min]. Lower it for a
    /// self-hosted runner that starts at once (or a test of the workflow).
    #[arg(long, env = "OUROBOROS_SUCCESSOR_START", value_parser = parse_duration)]
    pub successor_start: Option<Duration>,
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
    /// [default: 10s, at most the successor timeout when the node launches successors].
    #[arg(long, env = "OUROBOROS_HANDOFF_RESUME_TIMEOUT", value_parser = parse_duration)]
    pub handoff_resume_timeout: Option<Duration>,
    /// How long a successor keeps trying to reach a silent predecessor before it recovers
    /// from the newest backup [default: 10s; where the predecessor's host ends with its
    /// lifetime (not `--launcher local`), at most the handoff lead: a successor is launched a
    /// lead before that end, so a lead of silence outlasts the predecessor].
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
    /// How long a successor of this launcher takes to start
    /// ([`LauncherKind::expected_start`]).
    pub expected_start: Duration,
    /// Whether the host ends with the lifetime (GitHub Actions: the job's time limit) and the
    /// node must exit by then, with or without a successor. A local process's host does not
    /// end: its node keeps relaunching until a successor takes over (liveness rule 1).
    pub host_ends: bool,
    /// Drain time after the clients were moved.
    pub drain_timeout: Duration,
    /// Whether a successor is launched at all.
    pub launches: bool,
    /// How often a serving node reads the published record to see whether another node
    /// published a newer generation (liveness rule 5): the launcher's expected start, within
    /// 1–30 s (local: 1 s; GitHub Pages: 30 s, a few hundred API reads an hour).
    pub fence_interval: Duration,
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
        let handoff_lead = self.handoff_lead.unwrap_or_else(|| default_lead(l));
        let deadline_margin = self
            .deadline_margin
            .unwrap_or_else(|| (l / 10).min(Duration::from_secs(120)));
        let start = self
            .successor_start
            .unwrap_or_else(|| self.launcher.expected_start());
        let successor_timeout = self.successor_timeout.unwrap_or_else(|| {
            (handoff_lead / 2)
                .max(Duration::from_millis(500))
                .max(start)
        });
        if lifetime.is_some() && self.launcher != LauncherKind::None {
            // Waits scale with the launcher's start time: a lead that cannot hold a start
            // makes every rotation a race the predecessor loses (it gives up as the
            // successor arrives). Refuse it at startup, naming the minimum.
            let fmt = |d: Duration| humantime::format_duration(d).to_string();
            let launcher = format!("{:?}", self.launcher).to_lowercase();
            if handoff_lead < start * 2 || handoff_lead.saturating_sub(deadline_margin) < start {
                let hint = if self.handoff_lead.is_none() && self.deadline_margin.is_none() {
                    format!(
                        "; the shortest --lifetime with the default lead and margin is {}",
                        fmt(min_lifetime_for(start))
                    )
                } else {
                    String::new()
                };
                return Err(PlanError::Invalid(format!(
                    "--lifetime {} is too short for --launcher {launcher}: a successor takes \
                     about {} to start, so --handoff-lead ({}) must be at least {} and \
                     --handoff-lead minus --deadline-margin ({}) at least {}{hint}",
                    fmt(l),
                    fmt(start),
                    fmt(handoff_lead),
                    fmt(start * 2),
                    fmt(deadline_margin),
                    fmt(start),
                )));
            }
        }
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
            expected_start: start,
            host_ends: self.launcher != LauncherKind::Local,
            drain_timeout: self.drain_timeout,
            launches: lifetime.is_some() && self.launcher != LauncherKind::None,
            fence_interval: start.clamp(Duration::from_secs(1), Duration::from_secs(30)),
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
        match (self.handoff_resume_timeout, self.plan()) {
            (Some(t), _) => c.resume_timeout = t,
            // Scaled: an interrupted session is given one successor timeout to resume, so
            // that a dead successor is replaced within the lead.
            (None, Ok(p)) if p.launches => {
                c.resume_timeout = c.resume_timeout.min(p.successor_timeout)
            }
            _ => {}
        }
        c
    }

    /// The successor side's handoff settings: defaults with `--handoff-give-up-after` (whose
    /// default scales with the lifetime where the host ends with it: the handoff lead, at most
    /// the fixed default) and `--handoff-max-wait` (scaled to the lifetime when unset).
    pub fn successor_config(&self) -> crate::handoff::SuccessorConfig {
        let mut c = crate::handoff::SuccessorConfig::default();
        match (self.handoff_give_up_after, self.lifetime) {
            (Some(t), _) => c.give_up_after = t,
            // Only where the predecessor's host ends with its lifetime is a shorter wait
            // safe: a successor started a lead before that end and silent for a lead
            // outlasts it. A local predecessor may serve past its lifetime (liveness rule 1):
            // giving up on it sooner than the fixed default while it still serves made two
            // primaries in the soak (a successor restoring a large snapshot for 3.9 s gave up
            // on a 3 s wait), so there the default stays.
            (None, Some(l)) if self.launcher != LauncherKind::Local => {
                let lead = self.handoff_lead.unwrap_or_else(|| default_lead(l));
                c.give_up_after = c.give_up_after.min(lead);
            }
            _ => {}
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
        assert_eq!(p.expected_start, Duration::from_secs(1));
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
    fn waits_scale_with_the_lifetime_and_the_launcher() {
        // The successor's wait for a silent predecessor whose host ends with its lifetime:
        // the lead (a fraction of the lifetime), at most 10 s.
        let a = parse(&["--lifetime", "8s"]).unwrap();
        assert_eq!(a.successor_config().give_up_after, Duration::from_secs(2));
        let a = parse(&["--lifetime", "2h", "--launcher", "github"]).unwrap();
        assert_eq!(a.successor_config().give_up_after, Duration::from_secs(10));
        // A local predecessor may outlive its lifetime: the fixed wait (no hard deadline
        // ends the successor meanwhile, so it no longer outlasts anything).
        let a = parse(&["--lifetime", "8s", "--launcher", "local"]).unwrap();
        assert_eq!(a.successor_config().give_up_after, Duration::from_secs(10));
        let a = parse(&["--lifetime", "8s", "--handoff-give-up-after", "3s"]).unwrap();
        assert_eq!(a.successor_config().give_up_after, Duration::from_secs(3));
        // A relaunch never comes before a successor could have started.
        let p = parse(&["--lifetime", "8s", "--launcher", "local"])
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(p.successor_timeout, Duration::from_secs(1));
        let p = parse(&["--lifetime", "6h", "--launcher", "github"])
            .unwrap()
            .plan()
            .unwrap();
        assert_eq!(p.successor_timeout, Duration::from_secs(7 * 60 + 30));
        assert_eq!(p.expected_start, Duration::from_secs(120));
    }

    #[test]
    fn a_lifetime_too_short_for_the_launcher_is_refused_naming_the_minimum() {
        assert_eq!(min_lifetime(LauncherKind::Local), Duration::from_secs(8));
        let e = parse(&["--lifetime", "6s", "--launcher", "local"])
            .unwrap()
            .plan()
            .unwrap_err()
            .to_string();
        assert!(e.contains("too short for --launcher local"), "{e}");
        assert!(
            e.contains("the shortest --lifetime with the default lead and margin is 8s"),
            "{e}"
        );
        assert!(
            parse(&["--lifetime", "8s", "--launcher", "local"])
                .unwrap()
                .plan()
                .is_ok()
        );
        // With a lead that holds the start, 6 s runs.
        let a = parse(&[
            "--lifetime",
            "6s",
            "--launcher",
            "local",
            "--handoff-lead",
            "2s",
            "--deadline-margin",
            "500ms",
        ])
        .unwrap();
        assert!(a.plan().is_ok());
        // Without a launcher nothing is launched: no minimum.
        assert!(parse(&["--lifetime", "2s"]).unwrap().plan().is_ok());
        let e = parse(&["--lifetime", "20m", "--launcher", "github"])
            .unwrap()
            .plan();
        assert!(e.is_ok(), "{e:?}");
        let e = parse(&["--lifetime", "10m", "--launcher", "github"])
            .unwrap()
            .plan()
            .unwrap_err();
        assert!(e.to_string().contains("16m"), "{e}");
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
