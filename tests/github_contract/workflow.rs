//! The workflow's own script, and the full cycle as Actions would run it.

use super::*;

/// The `run:` script of the step named `step` in a workflow file (block scalar, dedented).
fn workflow_step_script(workflow: &str, step: &str) -> String {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".github/workflows")
            .join(workflow),
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == format!("- name: {step}"))
        .unwrap_or_else(|| panic!("no step {step:?} in {workflow}"));
    let run = (start..lines.len())
        .find(|&i| lines[i].trim_start().starts_with("run: |"))
        .expect("a run: | block");
    let indent = lines[run].len() - lines[run].trim_start().len();
    let body: Vec<&str> = lines[run + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .copied()
        .collect();
    let strip = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| l.get(strip..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The environment GitHub Actions gives a step of run `run_id` of ouroboros.yml, plus the
/// step's own `env:` (inputs and secrets) as the workflow maps them.
fn actions_env(
    server: &Server,
    run_id: u64,
    workspace: &std::path::Path,
    inputs: &serde_json::Map<String, Value>,
    secret: &str,
) -> Vec<(String, String)> {
    let input = |k: &str| {
        inputs
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let v = |k: &str, val: &str| (k.to_string(), val.to_string());
    vec![
        v("CI", "true"),
        v("GITHUB_ACTIONS", "true"),
        v("GITHUB_API_URL", &server.url()),
        v("GITHUB_SERVER_URL", &server.url()),
        v("GITHUB_REPOSITORY", REPO),
        v("GITHUB_REPOSITORY_OWNER", "octo"),
        v("GITHUB_RUN_ID", &run_id.to_string()),
        v("GITHUB_RUN_NUMBER", &(run_id - 9_000).to_string()),
        v("GITHUB_RUN_ATTEMPT", "1"),
        v("GITHUB_WORKFLOW", "Run Ouroboros server"),
        v(
            "GITHUB_WORKFLOW_REF",
            &format!("{REPO}/.github/workflows/ouroboros.yml@refs/heads/main"),
        ),
        v("GITHUB_EVENT_NAME", "workflow_dispatch"),
        v("GITHUB_REF", "refs/heads/main"),
        v("GITHUB_REF_NAME", "main"),
        v("GITHUB_WORKSPACE", &workspace.display().to_string()),
        v("RUNNER_OS", "Linux"),
        v("RUNNER_ARCH", "X64"),
        v(
            "RUNNER_TEMP",
            &workspace.join("_temp").display().to_string(),
        ),
        // The job's env: block (shortened lifetime for the test; everything else as written).
        v("OUROBOROS_LIFETIME", "12s"),
        v("OUROBOROS_HANDOFF_LEAD", "6s"),
        // The contract server's runs start at once (a hosted runner takes minutes).
        v("OUROBOROS_SUCCESSOR_START", "1s"),
        v("OUROBOROS_PAGES_MODE", "dispatch"),
        v("OUROBOROS_PAGES_BRANCH", "gh-pages"),
        v(
            "OUROBOROS_PAGES_URL",
            &format!("{}/pages/ouroboros.json", server.url()),
        ),
        // The step's env: block.
        v("OUROBOROS_GENERATION", &input("generation")),
        v(
            "OUROBOROS_PREDECESSOR_PEER_ID",
            &input("predecessor_peer_id"),
        ),
        v(
            "OUROBOROS_PREDECESSOR_ENDPOINTS",
            &input("predecessor_endpoints"),
        ),
        v("GITHUB_TOKEN", TOKEN),
        v("OUROBOROS_DISPATCH_TOKEN", ""),
        v("NGROK_AUTHTOKEN", ""),
        v("NGROK_DOMAIN", ""),
        v("OUROBOROS_SECRET", secret),
        // ICE secrets: STUN on loopback (nothing may leave the machine in a test), no TURN.
        v("OUROBOROS_STUN_URL", "stun:127.0.0.1:3478"),
        v("OUROBOROS_TURN_URL", ""),
        v("OUROBOROS_TURN_SECRET", ""),
        v("OUROBOROS_TURN_USERNAME", ""),
        v("OUROBOROS_TURN_CREDENTIAL", ""),
        v(
            "OUROBOROS_DATA_DIR",
            &workspace.join("_temp/ouroboros-data").display().to_string(),
        ),
        // Each hosted runner is its own machine; here they share one, so no fixed port.
        v("OUROBOROS_PORT", "0"),
    ]
}

/// Starts the "Run the node" step of ouroboros.yml, as a runner would, in its own workspace.
fn start_runner(
    server: &Server,
    run_id: u64,
    root: &std::path::Path,
    inputs: &serde_json::Map<String, Value>,
    secret: &str,
) -> std::process::Child {
    let workspace = root.join(format!("run-{run_id}"));
    std::fs::create_dir_all(workspace.join("target/release")).unwrap();
    std::fs::create_dir_all(workspace.join("_temp")).unwrap();
    // The cached build step left the binary at target/release/ouroboros.
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_ouroboros"),
        workspace.join("target/release/ouroboros"),
    )
    .unwrap();
    let log = std::fs::File::create(workspace.join("step.log")).unwrap();
    std::process::Command::new("bash")
        .arg("-e")
        .arg("-c")
        .arg(workflow_step_script("ouroboros.yml", "Run the node"))
        .current_dir(&workspace)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &workspace)
        .envs(actions_env(server, run_id, &workspace, inputs, secret))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn the_node_step_refuses_to_run_without_the_ring_secret() {
    // The real step script, with the secret missing: a clear error before the node starts.
    let script = workflow_step_script("ouroboros.yml", "Run the node");
    assert!(
        script.contains("exec ./target/release/ouroboros node"),
        "{script}"
    );
    assert!(
        !script.contains("${{"),
        "expressions never reach the script"
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("OUROBOROS_GENERATION", "0"),
            ("OUROBOROS_PREDECESSOR_PEER_ID", ""),
            ("OUROBOROS_PREDECESSOR_ENDPOINTS", ""),
            ("NGROK_DOMAIN", ""),
            ("OUROBOROS_DISPATCH_TOKEN", ""),
            ("OUROBOROS_PAGES_URL", ""),
            ("NGROK_AUTHTOKEN", ""),
            ("OUROBOROS_SECRET", ""),
            ("OUROBOROS_LIFETIME", "5h"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("::error::Add the OUROBOROS_SECRET repository secret"),
        "{stdout}"
    );
}

/// Whether `ouroboros node` runs the ring with the GitHub parts (`node::run` passing
/// `GithubArgs::cloud_parts` into the ring). Flip to `true` when that wiring lands: from then on
/// the full cycle below must pass.
const NODE_RUNS_THE_CLOUD_RING: bool = true;

/// Whether the binary has the flags the workflow uses (the node's ring wiring).
fn node_supports_the_workflow_flags() -> Result<(), String> {
    if !NODE_RUNS_THE_CLOUD_RING {
        return Err("node::run does not pass the GitHub launcher/publisher to the ring yet".into());
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ouroboros"))
        .args(["node", "--help"])
        .output()
        .map_err(|e| e.to_string())?;
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--launcher",
        "--publisher",
        "--tunnel",
        "--lifetime",
        "--pages-mode",
        "github",
    ] {
        if !help.contains(needle) {
            return Err(format!("`ouroboros node --help` has no {needle}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cloud_cycle_runs_several_generations() {
    if let Err(why) = node_supports_the_workflow_flags() {
        eprintln!(
            "skipping full_cloud_cycle_runs_several_generations: {why} (the node's GitHub wiring has not landed)"
        );
        return;
    }
    const GENERATIONS: u64 = 3;
    let secret = "ring-secret-0123456789abcdef-contract";
    let s = Server::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    s.g().events = Some(tx);
    let root = tempfile::tempdir().unwrap();
    // The operator's first run: Actions → Run workflow, default inputs.
    s.client()
        .workflow_dispatch(
            "ouroboros.yml",
            "main",
            &inputs(&[
                ("generation", "0"),
                ("predecessor_peer_id", ""),
                ("predecessor_endpoints", ""),
            ]),
            false,
        )
        .await
        .unwrap();
    let mut runners: Vec<(u64, std::process::Child)> = Vec::new();
    let mut deployed: Vec<DiscoveryRecord> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30 * (GENERATIONS + 1));
    while deployed.last().map(|r| r.generation) < Some(GENERATIONS) {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| {
                let logs: Vec<String> = runners
                    .iter()
                    .map(|(id, _)| {
                        std::fs::read_to_string(root.path().join(format!("run-{id}/step.log")))
                            .unwrap_or_default()
                    })
                    .collect();
                panic!(
                    "the ring stalled at {:?}; logs:\n{}",
                    deployed.last().map(|r| r.generation),
                    logs.join("\n----\n")
                )
            })
            .expect("server alive");
        match ev {
            GhEvent::Dispatched {
                run_id,
                workflow,
                inputs,
            } if workflow == "ouroboros.yml" => {
                s.g().runs.get_mut(&run_id).unwrap()["status"] = json!("in_progress");
                runners.push((
                    run_id,
                    start_runner(&s, run_id, root.path(), &inputs, secret),
                ));
            }
            GhEvent::Dispatched { .. } => {}
            GhEvent::Deployed(rec) => {
                deployed.push(DiscoveryRecord::from_json(rec.as_bytes()).unwrap())
            }
        }
    }
    // Generations only move forward, each record names the node it replaced.
    for w in deployed.windows(2) {
        assert!(
            w[1].generation >= w[0].generation,
            "{} then {}",
            w[0].generation,
            w[1].generation
        );
        if w[1].generation == w[0].generation + 1 {
            assert_eq!(
                w[1].previous.as_ref().map(|p| p.peer_id.as_str()),
                Some(w[0].peer_id.as_str())
            );
        }
    }
    eprintln!(
        "deployed: {:?}",
        deployed
            .iter()
            .map(|r| (r.generation, r.peer_id.as_str()))
            .collect::<Vec<_>>()
    );
    // Every generation was published, each by one peer.
    let mut by_gen: BTreeMap<u64, String> = BTreeMap::new();
    for r in &deployed {
        let prev = by_gen.insert(r.generation, r.peer_id.clone());
        assert!(
            prev.is_none() || prev.as_deref() == Some(r.peer_id.as_str()),
            "two peers published generation {}",
            r.generation
        );
    }
    assert_eq!(
        by_gen.keys().copied().collect::<Vec<_>>(),
        (0..=GENERATIONS).collect::<Vec<_>>()
    );
    // No secret and no token in anything sent to GitHub; successor inputs name the predecessor.
    let g = s.g();
    for seen in &g.seen {
        assert!(
            !seen.body.contains(secret) && !seen.body.contains(TOKEN),
            "{}",
            seen.body
        );
    }
    // Each predecessor checked its successor's GITHUB_RUN_ID through the runs API before the
    // handoff (in addition to the HMAC): one run lookup per taken-over generation at least.
    let run_lookups = g
        .seen
        .iter()
        .filter(|x| x.method == Method::GET && x.path.contains("/actions/runs/"))
        .count();
    assert!(
        run_lookups as u64 >= GENERATIONS,
        "only {run_lookups} run checks for {GENERATIONS} handoffs"
    );
    let node_dispatches: Vec<Value> = g
        .dispatches
        .iter()
        .filter(|(w, _)| w == "ouroboros.yml")
        .map(|(_, b)| b.clone())
        .collect();
    drop(g);
    assert!(node_dispatches.len() as u64 > GENERATIONS);
    for body in &node_dispatches[1..] {
        let inputs = &body["inputs"];
        let generation: u64 = inputs["generation"].as_str().unwrap().parse().unwrap();
        assert!(generation >= 1);
        if let Some(pred) = by_gen.get(&(generation - 1)) {
            assert_eq!(
                inputs["predecessor_peer_id"].as_str(),
                Some(pred.as_str()),
                "generation {generation} was told its predecessor"
            );
        }
        let eps: Vec<SignalingEndpoint> =
            serde_json::from_str(inputs["predecessor_endpoints"].as_str().unwrap()).unwrap();
        assert!(!eps.is_empty());
    }
    // The old generations handed over and left on their own, successfully.
    let n = runners.len();
    for (i, (run_id, child)) in runners.iter_mut().enumerate() {
        if i + 2 < n {
            let log = std::fs::read_to_string(root.path().join(format!("run-{run_id}/step.log")))
                .unwrap_or_default();
            let st = child.try_wait().unwrap();
            assert!(
                st.is_some_and(|st| st.success()),
                "run {run_id} still running or failed ({st:?}):\n{log}"
            );
        }
    }
    for (_, mut child) in runners {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test]
async fn node_with_a_failing_tunnel_keeps_serving_and_says_so() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    ouroboros::install_crypto_provider();
    let data = tempfile::tempdir().unwrap();
    // A closed port as ngrok's ingress: the session fails at once, whatever the network.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ouroboros"))
        .args([
            "node",
            "--port",
            "0",
            "--tunnel",
            "ngrok",
            "--tunnel-timeout",
            "5s",
            "--data-dir",
        ])
        .arg(data.path())
        .env("NGROK_AUTHTOKEN", "2fakeNgrokTokenForTheNodeTest")
        .env("OUROBOROS_NGROK_SERVER_ADDR", closed.to_string())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let wait = Duration::from_secs(60);
    let listen = tokio::time::timeout(wait, async {
        while let Some(l) = stdout.next_line().await.unwrap() {
            if let Some(u) = l.strip_prefix("listening on ") {
                return u.trim().to_string();
            }
        }
        panic!("node exited before listening")
    })
    .await
    .expect("node listening");
    // The failure is logged (an event on stderr, not a timer) …
    let logged = tokio::time::timeout(wait, async {
        while let Some(l) = stderr.next_line().await.unwrap() {
            if l.contains("tunnel failed") {
                return l;
            }
        }
        panic!("node exited without reporting the tunnel")
    })
    .await
    .expect("tunnel failure logged");
    assert!(logged.contains("ngrok"), "{logged}");
    assert!(
        !logged.contains("2fakeNgrokTokenForTheNodeTest"),
        "{logged}"
    );
    // … the node still serves, and /status says why there is no tunnel.
    let base = url::Url::parse(&listen).unwrap();
    let status: Value = reqwest::Client::new()
        .get(base.join("/status.json").unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tunnel = status["tunnel"].as_str().unwrap_or_default();
    assert!(
        tunnel.starts_with("failed: ngrok session failed"),
        "{status}"
    );
    let record: Value = reqwest::get(base.join("/ouroboros.json").unwrap())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(record.get("tunnel_url").is_none(), "{record}");
    child.kill().await.unwrap();
}
