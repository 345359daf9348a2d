//! The soak tool: a local ring rotating under load with Actions-like faults, judged from the
//! outside by Rust clients (`tests/support/soak.rs`). Ends with one verdict line; exits 1 on
//! any loss, duplicate, gap, a dead ring or a client left behind.
//!
//! ```text
//! cargo bench --bench soak -- --rotations 1000 --lifetime 8s \
//!     --faults 'launch_delay=3s,duplicate=0.1,kill=0.1,kill_within=3s,vanish=0.05'
//! cargo bench --bench soak -- --duration 10m --lifetime 12s --publishers 2 --rate 20
//! ```
//!
//! Flags: `--rotations N` (default 100), `--duration D`, `--lifetime D` (default 8s, the
//! shortest a local ring supports), `--node-arg FLAG` (repeatable, passed to `ouroboros node`),
//! `--faults SPEC` (`OUROBOROS_FAULTS`, default none), `--publishers N` (2), `--rate R`
//! messages/s per publisher (20), `--readers N` (2), `--stall D` (ring declared dead after
//! this long without a new generation; default 6 lifetimes), `--keep-dir PATH` (keep the
//! ring's data and logs), `--bin PATH` (default: the `ouroboros` built with this bench).

#[path = "../tests/support/soak.rs"]
mod soak;

use std::time::Duration;

fn main() {
    ouroboros::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let mut cfg = soak::SoakConfig {
        bin: env!("CARGO_BIN_EXE_ouroboros").into(),
        rotations: 100,
        duration: None,
        node_args: Vec::new(),
        faults: String::new(),
        publishers: 2,
        rate: 20.0,
        readers: 2,
        stall: Duration::ZERO,
        keep_dir: None,
        verbose: true,
    };
    let mut lifetime = Duration::from_secs(8);
    let dur = |v: Option<String>| {
        humantime::parse_duration(&v.expect("a value")).expect("a duration such as 8s")
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rotations" => {
                cfg.rotations = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--rotations N")
            }
            "--duration" => cfg.duration = Some(dur(args.next())),
            "--lifetime" => lifetime = dur(args.next()),
            "--node-arg" => cfg.node_args.push(args.next().expect("--node-arg FLAG")),
            "--faults" => cfg.faults = args.next().expect("--faults SPEC"),
            "--publishers" => {
                cfg.publishers = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--publishers N")
            }
            "--rate" => cfg.rate = args.next().and_then(|v| v.parse().ok()).expect("--rate R"),
            "--readers" => {
                cfg.readers = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--readers N")
            }
            "--stall" => cfg.stall = dur(args.next()),
            "--keep-dir" => cfg.keep_dir = Some(args.next().expect("--keep-dir PATH").into()),
            "--bin" => cfg.bin = args.next().expect("--bin PATH").into(),
            "--bench" => {} // passed by `cargo bench`
            other => {
                eprintln!("soak: unknown argument {other:?} (see benches/soak.rs)");
                std::process::exit(2);
            }
        }
    }
    cfg.node_args.extend([
        "--lifetime".into(),
        humantime::format_duration(lifetime).to_string(),
    ]);
    if cfg.stall.is_zero() {
        cfg.stall = lifetime * 6;
    }
    eprintln!("soak: {cfg:?}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let verdict = rt.block_on(soak::run(cfg));
    println!("{}", verdict.line());
    if !verdict.passed() {
        std::process::exit(1);
    }
}
