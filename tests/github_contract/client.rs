//! The GitHub client against the contract server: dispatches, contents with the sha lock,
//! rate limits, retries and the token never showing.

use super::*;

#[tokio::test]
async fn workflow_dispatch_sends_the_documented_request() {
    let s = Server::start().await;
    let c = s.client();
    let run = c
        .workflow_dispatch(
            "ouroboros.yml",
            "main",
            &inputs(&[("generation", "3")]),
            false,
        )
        .await
        .unwrap();
    assert_eq!(run, None, "204 carries no run details");
    let g = s.g();
    let seen = g.seen.last().unwrap();
    assert_eq!(seen.method, Method::POST);
    assert_eq!(
        seen.path,
        "/repos/octo/ring/actions/workflows/ouroboros.yml/dispatches"
    );
    assert_eq!(seen.headers["accept"], "application/vnd.github+json");
    assert_eq!(seen.headers["x-github-api-version"], "2022-11-28");
    assert!(
        seen.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("ouroboros/")
    );
    let body: Value = serde_json::from_str(&seen.body).unwrap();
    assert_eq!(body, json!({"ref": "main", "inputs": {"generation": "3"}}));
}

#[tokio::test]
async fn workflow_dispatch_returns_run_details_when_supported() {
    let s = Server::start().await;
    let run = s
        .client()
        .workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), true)
        .await
        .unwrap()
        .expect("200 with run details");
    assert_eq!(run.workflow_run_id, 9_001);
    assert!(run.html_url.ends_with("/actions/runs/9001"));
    assert!(s.g().runs.contains_key(&9_001));
}

#[tokio::test]
async fn workflow_dispatch_falls_back_without_run_details() {
    let s = Server::start().await;
    s.g().supports_run_details = false;
    let c = s.client();
    assert_eq!(
        c.workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), true)
            .await
            .unwrap(),
        None
    );
    {
        let g = s.g();
        assert_eq!(g.seen.len(), 2, "one refused attempt, one plain dispatch");
        assert!(g.seen[0].body.contains("return_run_details"));
        assert!(!g.seen[1].body.contains("return_run_details"));
        assert_eq!(g.dispatches.len(), 1);
    }
    // The client remembers: the next dispatch goes out plain at once.
    c.workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), true)
        .await
        .unwrap();
    let g = s.g();
    assert_eq!(g.seen.len(), 3);
    assert!(!g.seen[2].body.contains("return_run_details"));
}

#[tokio::test]
async fn workflow_dispatch_errors_are_typed() {
    let s = Server::start().await;
    let c = s.client();
    let e = c
        .workflow_dispatch("nope.yml", "main", &inputs(&[]), false)
        .await
        .unwrap_err();
    assert!(matches!(e, GithubError::NotFound { .. }), "{e:?}");
    let e = c
        .workflow_dispatch("ouroboros.yml", "main", &inputs(&[("secret", "x")]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(e, GithubError::Unprocessable { status: 422, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("Unexpected inputs"), "{e}");
    assert!(!e.is_conflict());
    let e = c
        .workflow_dispatch("ouroboros.yml", "nobranch", &inputs(&[]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(e, GithubError::Unprocessable { .. }) && e.to_string().contains("No ref found"),
        "{e}"
    );
    // A 422 for a bad input, asked with return_run_details, is retried once without the field
    // and still reported; the client keeps asking for run details afterwards.
    let e = c
        .workflow_dispatch("ouroboros.yml", "main", &inputs(&[("bogus", "1")]), true)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Unexpected inputs"), "{e}");
    assert!(
        c.workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), true)
            .await
            .unwrap()
            .is_some(),
        "run details still requested after an unrelated 422"
    );
    let e = c
        .workflow_dispatch("static.yml", "main", &inputs(&[]), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Required input"), "{e}");
    // Refused locally, before any request: an empty ref and a path as workflow.
    let before = s.g().seen.len();
    assert!(matches!(
        c.workflow_dispatch("ouroboros.yml", "", &inputs(&[]), false)
            .await,
        Err(GithubError::InvalidRequest(_))
    ));
    assert!(matches!(
        c.workflow_dispatch(".github/workflows/x.yml", "main", &inputs(&[]), false)
            .await,
        Err(GithubError::InvalidRequest(_))
    ));
    assert_eq!(s.g().seen.len(), before);
    // 401 with a wrong token.
    let bad = s.client_with("ghs_wrong", fast_retry());
    let e = bad
        .workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), false)
        .await
        .unwrap_err();
    assert!(matches!(e, GithubError::Unauthorized { .. }), "{e:?}");
    assert_eq!(e.status(), Some(401));
}

#[tokio::test]
async fn repository_dispatch_and_its_limits() {
    let s = Server::start().await;
    let c = s.client();
    c.repository_dispatch("trigger_node", &json!({"generation": "1"}))
        .await
        .unwrap();
    assert_eq!(
        s.g().repo_dispatches,
        vec![json!({"event_type": "trigger_node", "client_payload": {"generation": "1"}})]
    );
    let many: serde_json::Map<String, Value> =
        (0..11).map(|i| (format!("k{i}"), json!(i))).collect();
    assert!(matches!(
        c.repository_dispatch("x", &Value::Object(many)).await,
        Err(GithubError::InvalidRequest(_))
    ));
    assert!(matches!(
        c.repository_dispatch(&"e".repeat(101), &json!({})).await,
        Err(GithubError::InvalidRequest(_))
    ));
    assert_eq!(s.g().repo_dispatches.len(), 1);
}

#[tokio::test]
async fn contents_read_write_with_sha_lock() {
    let s = Server::start().await;
    let c = s.client();
    assert_eq!(
        c.get_contents("site/ouroboros.json", Some("gh-pages"))
            .await
            .unwrap(),
        None
    );
    let created = c
        .put_contents(
            "site/ouroboros.json",
            Some("gh-pages"),
            "create",
            b"{\"a\":1}",
            None,
        )
        .await
        .unwrap();
    assert!(created.created);
    let file = c
        .get_contents("site/ouroboros.json", Some("gh-pages"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(file.content, b"{\"a\":1}");
    assert_eq!(file.sha, created.content_sha);
    // A long file survives GitHub's line-wrapped base64.
    let long = vec![b'x'; 5000];
    let upd = c
        .put_contents(
            "site/ouroboros.json",
            Some("gh-pages"),
            "update",
            &long,
            Some(&file.sha),
        )
        .await
        .unwrap();
    assert!(!upd.created);
    assert_eq!(
        c.get_contents("site/ouroboros.json", Some("gh-pages"))
            .await
            .unwrap()
            .unwrap()
            .content,
        long
    );
    // Stale sha → 409; no sha on an existing file → 422; both are conflicts.
    let e = c
        .put_contents(
            "site/ouroboros.json",
            Some("gh-pages"),
            "stale",
            b"1",
            Some(&file.sha),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, GithubError::Conflict { .. }) && e.is_conflict(),
        "{e:?}"
    );
    let e = c
        .put_contents("site/ouroboros.json", Some("gh-pages"), "nosha", b"1", None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, GithubError::Unprocessable { status: 422, .. }) && e.is_conflict(),
        "{e:?}"
    );
    // Unknown branch.
    assert_eq!(c.get_contents("x", Some("nope")).await.unwrap(), None);
    assert!(matches!(
        c.put_contents("x", Some("nope"), "m", b"1", None).await,
        Err(GithubError::NotFound { .. })
    ));
}

#[tokio::test]
async fn update_contents_rereads_after_a_conflict() {
    let s = Server::start().await;
    let c = s.client();
    c.put_contents("n.txt", None, "seed", b"0", None)
        .await
        .unwrap();
    // Two other writers get in before our next two writes.
    s.g().race_puts.extend([b"10".to_vec(), b"20".to_vec()]);
    let mut seen = Vec::new();
    let out = c
        .update_contents("n.txt", None, "increment", 5, |cur| {
            let n: u64 = String::from_utf8_lossy(&cur.unwrap().content)
                .parse()
                .unwrap();
            seen.push(n);
            Ok::<_, GithubError>(ContentsUpdate::Write((n + 1).to_string().into_bytes()))
        })
        .await
        .unwrap();
    assert!(out.is_some());
    assert_eq!(seen, vec![0, 10, 20], "each retry decides on a fresh read");
    assert_eq!(
        s.g().files[&("main".to_string(), "n.txt".to_string())].0,
        b"21"
    );
    // Bounded: with more racing writers than attempts, the conflict comes back.
    s.g()
        .race_puts
        .extend((0..3).map(|i| format!("{}", 100 + i).into_bytes()));
    let e = c
        .update_contents("n.txt", None, "increment", 2, |_| {
            Ok::<_, GithubError>(ContentsUpdate::Write(b"x".to_vec()))
        })
        .await
        .unwrap_err();
    assert!(e.is_conflict(), "{e:?}");
    // Keep writes nothing.
    let before = s.g().seen.len();
    let out = c
        .update_contents("n.txt", None, "noop", 2, |_| {
            Ok::<_, GithubError>(ContentsUpdate::Keep)
        })
        .await
        .unwrap();
    assert_eq!(out, None);
    assert_eq!(s.g().seen.len(), before + 1, "one GET, no PUT");
}

#[tokio::test]
async fn rate_limits_are_waited_out_within_bounds() {
    let s = Server::start().await;
    let c = s.client();
    // Secondary limit (429 + retry-after: 1): waited, then the dispatch goes through.
    s.can(
        429,
        &[("retry-after", "1".into())],
        "You have exceeded a secondary rate limit.",
    );
    let t0 = Instant::now();
    c.workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), false)
        .await
        .unwrap();
    assert!(
        t0.elapsed() >= Duration::from_secs(1),
        "retry-after honoured ({:?})",
        t0.elapsed()
    );
    assert_eq!(s.g().dispatches.len(), 1);

    // Primary limit (403, remaining 0, reset in 1 s): waited until the reset.
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    s.can(
        403,
        &[
            ("x-ratelimit-remaining", "0".into()),
            ("x-ratelimit-reset", reset.to_string()),
        ],
        "API rate limit exceeded for installation ID 1.",
    );
    let t0 = Instant::now();
    c.get_contents("none", None).await.unwrap();
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "waited for the reset ({:?})",
        t0.elapsed()
    );

    // A wait longer than max_wait fails at once with the details.
    s.can(
        403,
        &[
            ("retry-after", "120".into()),
            ("x-ratelimit-remaining", "4999".into()),
        ],
        "secondary rate limit",
    );
    let t0 = Instant::now();
    let e = c
        .workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), false)
        .await
        .unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2));
    match e {
        GithubError::RateLimited {
            status: 403,
            retry_after,
            secondary: true,
            remaining: Some(4999),
            ..
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(120)))
        }
        e => panic!("{e:?}"),
    }

    // Retries are bounded: max_retries 3 → 4 requests, then the 429 comes back.
    for _ in 0..5 {
        s.can(429, &[("retry-after", "0".into())], "secondary rate limit");
    }
    let before = s.g().seen.len();
    let e = c.get_run(1).await.unwrap_err();
    assert!(
        matches!(e, GithubError::RateLimited { status: 429, .. }),
        "{e:?}"
    );
    assert_eq!(s.g().seen.len() - before, 4);
    s.g().canned.clear();
}

#[tokio::test]
async fn server_errors_retry_reads_but_not_dispatches() {
    let s = Server::start().await;
    let c = s.client();
    s.can(502, &[], "Server Error");
    assert_eq!(
        c.get_contents("x", None).await.unwrap(),
        None,
        "GET retried after 502"
    );
    s.can(502, &[], "Server Error");
    let e = c
        .workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), false)
        .await
        .unwrap_err();
    assert!(
        matches!(e, GithubError::Status { status: 502, .. }),
        "{e:?}"
    );
    assert!(
        s.g().dispatches.is_empty(),
        "a dispatch is never blindly repeated"
    );
    // Network errors are errors, not panics.
    let cfg = GithubConfig::new("http://127.0.0.1:9", SecretToken::new(TOKEN), REPO).unwrap();
    let dead = GithubClient::new(fast_retry().apply(cfg)).unwrap();
    assert!(matches!(
        dead.get_run(1).await,
        Err(GithubError::Network(_))
    ));
}

trait Apply {
    fn apply(self, cfg: GithubConfig) -> GithubConfig;
}
impl Apply for RetryPolicy {
    fn apply(self, mut cfg: GithubConfig) -> GithubConfig {
        cfg.retry = self;
        cfg
    }
}

#[tokio::test]
async fn the_token_never_shows() {
    use std::io::Write;
    // Capture everything the client logs while it fails in every way.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(sub);

    let s = Server::start().await;
    let c = s.client();
    let mut texts = vec![format!("{c:?}"), format!("{:?}", c.config())];
    // A server that echoes the token back in its error message (worst case).
    s.can(422, &[], &format!("bad token {TOKEN} in request"));
    s.can(
        429,
        &[("retry-after", "0".into())],
        &format!("slow down {TOKEN}"),
    );
    s.can(
        403,
        &[("retry-after", "999".into())],
        &format!("secondary rate limit {TOKEN}"),
    );
    let mut errors = vec![
        c.workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), false)
            .await
            .unwrap_err(),
        c.workflow_dispatch("ouroboros.yml", "main", &inputs(&[]), false)
            .await
            .unwrap_err(),
        c.workflow_dispatch("nope.yml", "main", &inputs(&[]), false)
            .await
            .unwrap_err(),
        c.get_run(424242).await.unwrap_err(),
    ];
    let dead = GithubClient::new(
        fast_retry()
            .apply(GithubConfig::new("http://127.0.0.1:9", SecretToken::new(TOKEN), REPO).unwrap()),
    )
    .unwrap();
    errors.push(dead.get_run(1).await.unwrap_err());
    errors.push(
        s.client_with("ghs_wrong_token_xyz", fast_retry())
            .get_run(1)
            .await
            .unwrap_err(),
    );
    for e in &errors {
        texts.push(format!("{e}"));
        texts.push(format!("{e:?}"));
    }
    let launcher_err = GithubLauncher::new(c.clone(), "nope.yml", "main")
        .launch(&successor(4))
        .await
        .unwrap_err();
    texts.push(format!("{launcher_err} {launcher_err:?}"));
    texts.push(String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned());
    for t in &texts {
        assert!(!t.contains(TOKEN), "token leaked into: {t}");
        assert!(!t.contains("ghs_wrong_token_xyz"), "token leaked into: {t}");
    }
    assert!(
        texts.iter().any(|t| t.contains("***")),
        "redaction marks the spot"
    );
    assert!(
        texts.last().unwrap().contains("retrying"),
        "the retry was logged (and checked)"
    );
}
