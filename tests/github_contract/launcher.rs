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
