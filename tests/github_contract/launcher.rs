//! The `GithubLauncher` and the `RunVerifier`.

use super::*;

#[tokio::test]
async fn launcher_dispatches_public_inputs_only() {
    let s = Server::start().await;
    let c = s.client();
    let launcher = GithubLauncher::new(c.clone(), "ouroboros.yml", "main");
    assert_eq!(Launcher::name(&launcher), "github");
    let run = launcher.dispatch(&successor(5)).await.unwrap().unwrap();
    launcher.launch(&successor(6)).await.unwrap();
    let g = s.g();
    assert_eq!(g.dispatches.len(), 2);
    let (wf, body) = &g.dispatches[0];
    assert_eq!(wf, "ouroboros.yml");
    assert_eq!(body["ref"], "main");
    let inputs = body["inputs"].as_object().unwrap();
    assert_eq!(
        inputs.keys().collect::<Vec<_>>(),
        ["generation", "predecessor_endpoints", "predecessor_peer_id"]
    );
    assert_eq!(inputs["generation"], "5");
    assert_eq!(inputs["predecessor_peer_id"], "ouroboros-node-4");
    let eps: Vec<SignalingEndpoint> =
        serde_json::from_str(inputs["predecessor_endpoints"].as_str().unwrap()).unwrap();
    assert_eq!(eps, successor(5).predecessor_endpoints);
    for seen in g.seen.iter() {
        assert!(
            !seen.body.contains(TOKEN),
            "token in a request body: {}",
            seen.body
        );
        assert!(
            !seen.body.to_ascii_lowercase().contains("secret"),
            "secret-ish field in: {}",
            seen.body
        );
    }
    assert_eq!(
        g.runs[&run.workflow_run_id]["path"],
        ".github/workflows/ouroboros.yml"
    );
}

#[tokio::test]
async fn a_member_of_a_replicated_ring_is_dispatched_with_the_inputs_the_workflow_declares() {
    let s = Server::start().await;
    let launcher = GithubLauncher::new(s.client(), "ouroboros.yml", "main");
    let mut req = successor(1);
    req.member = Some(ouroboros::lifecycle::MemberLaunch {
        id: 1_839_418_746_228_276,
        join: vec![
            (2, "https://a.ngrok-free.app".into()),
            (3, "https://b.ngrok-free.app".into()),
        ],
        founding: false,
    });
    // The server refuses inputs ouroboros.yml does not declare (422), as GitHub does.
    launcher.launch(&req).await.unwrap();
    let g = s.g();
    let inputs = g.dispatches[0].1["inputs"].as_object().unwrap().clone();
    assert_eq!(inputs["replica_id"], "1839418746228276");
    assert_eq!(
        inputs["replica_join"],
        "2=https://a.ngrok-free.app,3=https://b.ngrok-free.app"
    );
    for seen in g.seen.iter() {
        assert!(!seen.body.contains(TOKEN), "token in a request body");
    }
}

#[tokio::test]
async fn launcher_failure_is_a_launch_error() {
    let s = Server::start().await;
    s.g().workflows.remove("ouroboros.yml");
    let e = GithubLauncher::new(s.client(), "ouroboros.yml", "main")
        .launch(&successor(2))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
}

#[tokio::test]
async fn run_verifier_checks_repository_workflow_and_status() {
    let s = Server::start().await;
    let c = s.client();
    let set_run = |id: u64, path: &str, status: &str, repo: &str| {
        s.g().runs.insert(
            id,
            json!({"id": id, "path": path, "status": status, "repository": {"full_name": repo}}),
        );
    };
    set_run(1, ".github/workflows/ouroboros.yml", "in_progress", REPO);
    set_run(2, ".github/workflows/ci.yml", "in_progress", REPO);
    set_run(3, ".github/workflows/ouroboros.yml", "completed", REPO);
    set_run(
        4,
        ".github/workflows/ouroboros.yml",
        "in_progress",
        "mallory/ring",
    );
    set_run(
        5,
        ".github/workflows/ouroboros.yml@refs/heads/main",
        "in_progress",
        "Octo/Ring",
    );
    let v = RunVerifier::new(c.clone(), "ouroboros.yml").with_own_run_id(Some(77));
    assert_eq!(v.verify("1").await.unwrap(), 1);
    assert_eq!(v.verify(" 5 ").await.unwrap(), 5);
    assert!(matches!(
        v.verify("2").await,
        Err(RunCheckError::WrongWorkflow { .. })
    ));
    assert!(matches!(
        v.verify("3").await,
        Err(RunCheckError::NotInProgress { .. })
    ));
    assert!(matches!(
        v.verify("4").await,
        Err(RunCheckError::WrongRepository { .. })
    ));
    assert!(matches!(
        v.verify("6").await,
        Err(RunCheckError::Lookup(GithubError::NotFound { .. }))
    ));
    assert!(matches!(
        v.verify("77").await,
        Err(RunCheckError::OwnRun(77))
    ));
    assert!(matches!(
        v.verify("12; rm -rf").await,
        Err(RunCheckError::BadId(_))
    ));
    // A run the launcher just dispatched is found and checked the same way.
    let launcher = GithubLauncher::new(c, "ouroboros.yml", "main");
    let run = launcher.dispatch(&successor(2)).await.unwrap().unwrap();
    let id = run.workflow_run_id.to_string();
    assert!(matches!(
        launcher.verifier().verify(&id).await,
        Err(RunCheckError::NotInProgress { .. })
    ));
    s.g().runs.get_mut(&run.workflow_run_id).unwrap()["status"] = json!("in_progress");
    assert_eq!(
        launcher.verifier().verify(&id).await.unwrap(),
        run.workflow_run_id
    );
}

#[tokio::test]
async fn a_flood_of_run_checks_makes_a_bounded_number_of_api_calls() {
    // Issue 14, point 2: every handoff connection made its own runs API call, so a hello
    // flood was also a flood of GitHub API calls (and of the token's rate limit).
    let s = Server::start().await;
    s.g().runs.insert(
        1,
        json!({"id": 1, "path": ".github/workflows/ouroboros.yml", "status": "in_progress",
               "repository": {"full_name": REPO}}),
    );
    let calls = |s: &Server| {
        s.g()
            .seen
            .iter()
            .filter(|r| r.path.contains("/actions/runs/"))
            .count()
    };
    let t0 = std::time::Instant::now();
    let cfg = ouroboros::github::RunCacheConfig::default();
    let v = ouroboros::github::CachedRunVerifier::new(
        RunVerifier::new(s.client(), "ouroboros.yml"),
        cfg,
        t0,
    );
    // 200 connections claiming the real run, 200 claiming a run that does not exist.
    for _ in 0..200 {
        assert_eq!(v.verify(t0, "1").await, Ok(1));
        assert!(v.verify(t0, "6").await.is_err());
    }
    assert_eq!(calls(&s), 2, "one call per claimed run");
    // 100 distinct bogus claims: the lookup budget bounds the calls; the real run stays
    // cached (and is checked again after the TTL).
    for i in 0..100 {
        assert!(v.verify(t0, &format!("{}", 1000 + i)).await.is_err());
    }
    let after_flood = calls(&s);
    assert!(
        after_flood <= 2 + cfg.lookup_burst as usize,
        "{after_flood} calls"
    );
    assert_eq!(v.verify(t0, "1").await, Ok(1));
    assert_eq!(calls(&s), after_flood);
    let later = t0 + cfg.ttl + std::time::Duration::from_secs(10);
    assert_eq!(v.verify(later, "1").await, Ok(1));
    assert_eq!(calls(&s), after_flood + 1, "verdicts expire after the TTL");
    assert!(v.cached() <= cfg.max_entries);
}
