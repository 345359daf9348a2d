//! The fast soak (part of `cargo test`): a local ring at the shortest lifetime a local ring
//! supports (8 s) rotates two dozen times under load while the local launcher delays
//! launches beyond the handoff lead, starts duplicates, kills starting successors and lets
//! predecessors vanish mid-transfer; nothing acknowledged may be lost, doubled or skipped,
//! the ring must stay alive and every client end on the newest node. The long version is
//! `cargo bench --bench soak` (RELIABILITY.md).

#[path = "support/soak.rs"]
mod soak;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_survives_two_dozen_rotations_with_faults_and_loses_nothing() {
    let bin =
        std::env::var("OUROBOROS_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ouroboros").into());
    let rotations = std::env::var("OUROBOROS_SOAK_ROTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let cfg = soak::SoakConfig {
        bin: bin.into(),
        rotations,
        // A bound: a slow machine ends the run early rather than hang the suite.
        duration: Some(Duration::from_secs(240)),
        node_args: vec!["--lifetime".into(), "8s".into()],
        faults: "launch_delay=3s,duplicate=0.15,kill=0.1,kill_within=3s,vanish=0.1".into(),
        publishers: 2,
        rate: 20.0,
        readers: 2,
        stall: Duration::from_secs(48),
        keep_dir: std::env::var_os("OUROBOROS_SOAK_KEEP").map(Into::into),
        verbose: std::env::var("OUROBOROS_SOAK_VERBOSE").is_ok(),
    };
    let verdict = soak::run(cfg).await;
    eprintln!("{}", verdict.line());
    assert!(verdict.passed(), "{}", verdict.line());
    assert!(
        verdict.rotations >= 10,
        "too few rotations to mean anything: {}",
        verdict.line()
    );
}
