//! Contract tests for the cloud parts: the GitHub client, launcher, run verifier and Pages
//! publisher against a local server that follows GitHub's documented REST contract (status
//! codes, bodies, rate-limit headers), and the ngrok tunnel's failure and fallback paths
//! (plus an online test that runs only when `NGROK_AUTHTOKEN` is set).
//!
//! Run: `cargo test --test github_contract`.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use ouroboros::{
    discovery::{DiscoveryError, DiscoveryRecord, Publisher, SignalingEndpoint, StaleRecord},
    github::{
        ContentsUpdate, GithubClient, GithubConfig, GithubError, GithubLauncher, PagesMode,
        PagesPublisher, PublishOutcome, RetryPolicy, RunCheckError, RunVerifier, SecretToken,
    },
    lifecycle::{Launcher, SuccessorRequest},
    tunnel::{self, NgrokTunnel, SKIP_BROWSER_WARNING_HEADER, TunnelStatus},
};
use serde_json::{Value, json};
use sha2::Digest;

const TOKEN: &str = "ghs_contractTestToken0123456789abcdef";
const REPO: &str = "octo/ring";
const DOCS: &str = "https://docs.github.com/rest";

// ---------------------------------------------------------------------------------------------
// The contract server
// ---------------------------------------------------------------------------------------------

/// A canned answer returned before normal handling (rate limits, outages).
#[derive(Clone)]
struct Canned {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Value,
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: String,
}

#[derive(Default)]
struct Gh {
    /// workflow file → declared inputs (name, required).
    workflows: HashMap<String, Vec<(&'static str, bool)>>,
    branches: HashSet<String>,
    supports_run_details: bool,
    /// (branch, path) → (bytes, sha).
    files: HashMap<(String, String), (Vec<u8>, String)>,
    runs: HashMap<u64, Value>,
    next_run_id: u64,
    /// Accepted workflow dispatches: (workflow, body).
    dispatches: Vec<(String, Value)>,
    repo_dispatches: Vec<Value>,
    seen: Vec<Seen>,
    canned: VecDeque<Canned>,
    /// Before each of the next N PUTs, another writer changes the file (the client's sha goes stale).
    race_puts: VecDeque<Vec<u8>>,
    /// The record "deployed" by static.yml, served at `/pages/ouroboros.json`.
    deployed: Option<String>,
    /// Cache-buster values seen on `/pages/ouroboros.json`.
    pages_reads: Vec<Option<String>>,
    /// Every record static.yml deployed, in order.
    deploy_history: Vec<String>,
    /// Where accepted dispatches are announced (the Actions simulator listens).
    events: Option<tokio::sync::mpsc::UnboundedSender<GhEvent>>,
}

/// What the contract server tells the Actions simulator.
#[derive(Debug, Clone)]
enum GhEvent {
    /// A workflow run was created by a dispatch.
    Dispatched {
        run_id: u64,
        workflow: String,
        inputs: serde_json::Map<String, Value>,
    },
    /// static.yml deployed a record.
    Deployed(String),
}

type Shared = Arc<Mutex<Gh>>;

fn blob_sha(content: &[u8]) -> String {
    let mut h = sha2::Sha256::new();
    h.update(format!("blob {}\0", content.len()));
    h.update(content);
    hex::encode(h.finalize())[..40].to_string()
}

fn err(status: u16, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"message": message, "documentation_url": DOCS, "status": status.to_string()})),
    )
        .into_response()
}

async fn gate(State(gh): State<Shared>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let canned = {
        let mut g = gh.lock().unwrap();
        g.seen.push(Seen {
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            headers: parts.headers.clone(),
            body: String::from_utf8_lossy(&bytes).into_owned(),
        });
        g.canned.pop_front()
    };
    if parts.uri.path().starts_with("/repos/") {
        let auth = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {TOKEN}")) && auth != Some(&format!("token {TOKEN}")) {
            return err(401, "Bad credentials");
        }
    }
    if let Some(c) = canned {
        let mut resp = (StatusCode::from_u16(c.status).unwrap(), Json(c.body)).into_response();
        for (k, v) in c.headers {
            resp.headers_mut()
                .insert(k, HeaderValue::from_str(&v).unwrap());
        }
        return resp;
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// `Some(404)` unless `owner/repo` is the repository this server knows.
fn check_repo(owner: &str, repo: &str) -> Option<Response> {
    (format!("{owner}/{repo}") != REPO).then(|| err(404, "Not Found"))
}

async fn workflow_dispatch(
    State(gh): State<Shared>,
    Path((owner, repo, wf)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = check_repo(&owner, &repo) {
        return r;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return err(400, "Problems parsing JSON");
    };
    let mut g = gh.lock().unwrap();
    let Some(declared) = g.workflows.get(&wf).cloned() else {
        return err(404, "Not Found");
    };
    let Some(r) = body.get("ref").and_then(Value::as_str) else {
        return err(422, "Invalid request.\n\n\"ref\" wasn't supplied.");
    };
    if !g.branches.contains(r) {
        return err(422, &format!("No ref found for: {r}"));
    }
    let inputs = body.get("inputs").cloned().unwrap_or(json!({}));
    let Some(inputs) = inputs.as_object() else {
        return err(
            422,
            "Invalid request.\n\nFor 'properties/inputs', is not an object.",
        );
    };
    let unexpected: Vec<&String> = inputs
        .keys()
        .filter(|k| !declared.iter().any(|(d, _)| d == k))
        .collect();
    if !unexpected.is_empty() {
        return err(422, &format!("Unexpected inputs provided: {unexpected:?}"));
    }
    if inputs.values().any(|v| !v.is_string()) {
        return err(
            422,
            "Invalid request.\n\nFor 'properties/inputs', values must be strings.",
        );
    }
    if let Some((missing, _)) = declared
        .iter()
        .find(|(d, req)| *req && !inputs.contains_key(*d))
    {
        return err(422, &format!("Required input '{missing}' not provided"));
    }
    let details = body
        .get("return_run_details")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if body.get("return_run_details").is_some() && !g.supports_run_details {
        return err(
            400,
            "Invalid request.\n\n\"return_run_details\" is not a permitted key.",
        );
    }
    g.next_run_id += 1;
    let id = g.next_run_id;
    g.runs.insert(
        id,
        json!({"id": id, "name": wf, "path": format!(".github/workflows/{wf}"), "status": "queued",
               "conclusion": null, "event": "workflow_dispatch", "html_url": format!("https://github.com/{REPO}/actions/runs/{id}"),
               "repository": {"full_name": REPO}}),
    );
    // static.yml deploys its `record` input to Pages.
    if wf == "static.yml"
        && let Some(rec) = inputs.get("record").and_then(Value::as_str)
    {
        g.deployed = Some(rec.to_string());
        g.deploy_history.push(rec.to_string());
        if let Some(tx) = &g.events {
            let _ = tx.send(GhEvent::Deployed(rec.to_string()));
        }
    }
    g.dispatches.push((wf.clone(), body.clone()));
    if let Some(tx) = &g.events {
        let _ = tx.send(GhEvent::Dispatched {
            run_id: id,
            workflow: wf.clone(),
            inputs: inputs.clone(),
        });
    }
    if details {
        (
            StatusCode::OK,
            Json(json!({
                "workflow_run_id": id,
                "run_url": format!("https://api.github.com/repos/{REPO}/actions/runs/{id}"),
                "html_url": format!("https://github.com/{REPO}/actions/runs/{id}"),
            })),
        )
            .into_response()
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

async fn repository_dispatch(
    State(gh): State<Shared>,
    Path((owner, repo)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check_repo(&owner, &repo) {
        return r;
    }
    match body.get("event_type").and_then(Value::as_str) {
        Some(e) if !e.is_empty() && e.chars().count() <= 100 => {}
        _ => return err(422, "Invalid request.\n\n\"event_type\" wasn't supplied."),
    }
    if body
        .get("client_payload")
        .and_then(Value::as_object)
        .is_some_and(|m| m.len() > 10)
    {
        return err(
            422,
            "Invalid request.\n\nclient_payload has too many properties.",
        );
    }
    gh.lock().unwrap().repo_dispatches.push(body);
    StatusCode::NO_CONTENT.into_response()
}

async fn contents_get(
    State(gh): State<Shared>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = check_repo(&owner, &repo) {
        return r;
    }
    let g = gh.lock().unwrap();
    let branch = q.get("ref").cloned().unwrap_or_else(|| "main".into());
    if !g.branches.contains(&branch) {
        return err(404, &format!("No commit found for the ref {branch}"));
    }
    let Some((bytes, sha)) = g.files.get(&(branch, path.clone())) else {
        return err(404, "Not Found");
    };
    // GitHub wraps the base64 at 60 characters.
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    let wrapped: Vec<String> = b64
        .as_bytes()
        .chunks(60)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    Json(json!({
        "type": "file", "encoding": "base64", "size": bytes.len(),
        "name": path.rsplit('/').next(), "path": path, "sha": sha,
        "content": wrapped.join("\n") + "\n",
    }))
    .into_response()
}

async fn contents_put(
    State(gh): State<Shared>,
    Path((owner, repo, path)): Path<(String, String, String)>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = check_repo(&owner, &repo) {
        return r;
    }
    let mut g = gh.lock().unwrap();
    let branch = body
        .get("branch")
        .and_then(Value::as_str)
        .unwrap_or("main")
        .to_string();
    if !g.branches.contains(&branch) {
        return err(404, &format!("Branch {branch} not found"));
    }
    let (Some(_message), Some(content)) = (
        body.get("message").and_then(Value::as_str),
        body.get("content").and_then(Value::as_str),
    ) else {
        return err(
            422,
            "Invalid request.\n\n\"message\", \"content\" weren't supplied.",
        );
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(content) else {
        return err(422, "content is not valid Base64");
    };
    let key = (branch.clone(), path.clone());
    if let Some(other) = g.race_puts.pop_front() {
        let sha = blob_sha(&other);
        g.files.insert(key.clone(), (other, sha));
    }
    let given = body.get("sha").and_then(Value::as_str);
    let created = match (g.files.get(&key), given) {
        (Some(_), None) => return err(422, "Invalid request.\n\n\"sha\" wasn't supplied."),
        (Some((_, cur)), Some(s)) if cur != s => {
            return err(409, &format!("{path} does not match {s}"));
        }
        (None, Some(_)) => return err(409, &format!("{path} does not match")),
        (Some(_), Some(_)) => false,
        (None, None) => true,
    };
    let sha = blob_sha(&bytes);
    g.files.insert(key, (bytes, sha.clone()));
    let commit = blob_sha(format!("commit {sha}").as_bytes());
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(
            json!({"content": {"name": path.rsplit('/').next(), "path": path, "sha": sha},
                    "commit": {"sha": commit, "message": body["message"]}}),
        ),
    )
        .into_response()
}

async fn get_run(
    State(gh): State<Shared>,
    Path((owner, repo, id)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = check_repo(&owner, &repo) {
        return r;
    }
    let g = gh.lock().unwrap();
    match id.parse::<u64>().ok().and_then(|id| g.runs.get(&id)) {
        Some(run) => Json(run.clone()).into_response(),
        None => err(404, "Not Found"),
    }
}

async fn pages_record(
    State(gh): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut g = gh.lock().unwrap();
    g.pages_reads.push(q.get("t").cloned());
    match &g.deployed {
        Some(r) => ([("content-type", "application/json")], r.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "404 File not found").into_response(),
    }
}

struct Server {
    addr: SocketAddr,
    gh: Shared,
}

impl Server {
    async fn start() -> Server {
        let mut g = Gh {
            supports_run_details: true,
            next_run_id: 9_000,
            ..Default::default()
        };
        g.workflows.insert(
            "ouroboros.yml".into(),
            vec![
                ("generation", false),
                ("predecessor_peer_id", false),
                ("predecessor_endpoints", false),
            ],
        );
        g.workflows
            .insert("static.yml".into(), vec![("record", true)]);
        g.workflows.insert("ci.yml".into(), vec![]);
        g.branches
            .extend(["main".to_string(), "gh-pages".to_string()]);
        let gh: Shared = Arc::new(Mutex::new(g));
        let app = Router::new()
            .route(
                "/repos/{owner}/{repo}/actions/workflows/{wf}/dispatches",
                post(workflow_dispatch),
            )
            .route(
                "/repos/{owner}/{repo}/dispatches",
                post(repository_dispatch),
            )
            .route("/repos/{owner}/{repo}/actions/runs/{id}", get(get_run))
            .route(
                "/repos/{owner}/{repo}/contents/{*path}",
                get(contents_get).put(contents_put),
            )
            .route("/pages/ouroboros.json", get(pages_record))
            .layer(middleware::from_fn_with_state(gh.clone(), gate))
            .with_state(gh.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { addr, gh }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client_with(&self, token: &str, retry: RetryPolicy) -> Arc<GithubClient> {
        ouroboros::install_crypto_provider();
        let mut cfg = GithubConfig::new(&self.url(), SecretToken::new(token), REPO).unwrap();
        cfg.retry = retry;
        Arc::new(GithubClient::new(cfg).unwrap())
    }

    fn client(&self) -> Arc<GithubClient> {
        self.client_with(TOKEN, fast_retry())
    }

    fn g(&self) -> std::sync::MutexGuard<'_, Gh> {
        self.gh.lock().unwrap()
    }

    fn can(&self, status: u16, headers: &[(&'static str, String)], message: &str) {
        self.g().canned.push_back(Canned {
            status,
            headers: headers.to_vec(),
            body: json!({"message": message, "documentation_url": DOCS}),
        });
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_retries: 3,
        base_backoff: Duration::from_millis(10),
        max_wait: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
    }
}

fn inputs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Client paths
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Launcher and run verifier
// ---------------------------------------------------------------------------------------------

fn endpoint(host: &str) -> SignalingEndpoint {
    SignalingEndpoint {
        host: host.into(),
        port: 443,
        path: "/".into(),
        key: "peerjs".into(),
        secure: true,
    }
}

fn successor(generation: u64) -> SuccessorRequest {
    SuccessorRequest {
        generation,
        predecessor_peer_id: format!("ouroboros-node-{}", generation - 1),
        predecessor_endpoints: vec![endpoint("abc.ngrok-free.dev"), endpoint("0.peerjs.com")],
        attempt: 1,
    }
}

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

// ---------------------------------------------------------------------------------------------
// Pages publisher
// ---------------------------------------------------------------------------------------------

fn record(peer: &str, generation: u64) -> DiscoveryRecord {
    DiscoveryRecord {
        version: 1,
        peer_id: peer.into(),
        generation,
        signaling: vec![endpoint("0.peerjs.com")],
        tunnel_url: Some("https://abc.ngrok-free.dev".into()),
        relay_ws: None,
        started_at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        expires_at: Some(UNIX_EPOCH + Duration::from_secs(1_800_007_200)),
        previous: None,
    }
}

fn contents_publisher(s: &Server) -> PagesPublisher {
    PagesPublisher::new(
        s.client(),
        PagesMode::Contents {
            branch: "gh-pages".into(),
            path: "ouroboros.json".into(),
        },
    )
    .unwrap()
}

fn published(s: &Server) -> DiscoveryRecord {
    let g = s.g();
    DiscoveryRecord::from_json(&g.files[&("gh-pages".to_string(), "ouroboros.json".to_string())].0)
        .unwrap()
}

#[tokio::test]
async fn contents_publisher_writes_and_guards_generations() {
    let s = Server::start().await;
    let p = contents_publisher(&s);
    assert_eq!(p.current().await.unwrap(), None);
    assert!(matches!(
        p.publish_record(&record("a", 1)).await.unwrap(),
        PublishOutcome::Committed { .. }
    ));
    assert_eq!(published(&s), record("a", 1));
    assert_eq!(
        p.publish_record(&record("a", 1)).await.unwrap(),
        PublishOutcome::Unchanged
    );
    let mut refreshed = record("a", 1);
    refreshed.tunnel_url = None;
    p.publish(&refreshed).await.unwrap();
    p.publish(&record("b", 2)).await.unwrap();
    assert_eq!(p.current().await.unwrap(), Some(record("b", 2)));
    // A stale node cannot go back, and another peer cannot take the same generation.
    let e = p.publish(&record("a", 1)).await.unwrap_err();
    assert!(
        matches!(
            e,
            DiscoveryError::Stale(StaleRecord::OlderGeneration {
                current: 2,
                ours: 1
            })
        ),
        "{e:?}"
    );
    let e = p.publish(&record("x", 2)).await.unwrap_err();
    assert!(
        matches!(e, DiscoveryError::Stale(StaleRecord::ForeignPeer { .. })),
        "{e:?}"
    );
    assert_eq!(published(&s), record("b", 2));
    // A seed file that is not a record is replaced.
    {
        let mut g = s.g();
        let seed = b"{\"0\":\"null\"}".to_vec();
        let sha = blob_sha(&seed);
        g.files
            .insert(("gh-pages".into(), "ouroboros.json".into()), (seed, sha));
    }
    p.publish(&record("c", 3)).await.unwrap();
    assert_eq!(published(&s), record("c", 3));
}

#[tokio::test]
async fn contents_publisher_rechecks_the_guard_after_a_conflict() {
    let s = Server::start().await;
    let p = contents_publisher(&s);
    p.publish(&record("a", 1)).await.unwrap();
    // Another writer commits an unrelated change first: we re-read and win.
    s.g().race_puts.push_back(
        record("a", 1)
            .to_json_pretty()
            .replace("abc.ngrok", "zzz.ngrok")
            .into_bytes(),
    );
    p.publish(&record("b", 2)).await.unwrap();
    assert_eq!(published(&s), record("b", 2));
    // The racing writer is generation 4: after the conflict, the re-read refuses our 3.
    s.g()
        .race_puts
        .push_back(record("d", 4).to_json_pretty().into_bytes());
    let e = p.publish(&record("c", 3)).await.unwrap_err();
    assert!(
        matches!(
            e,
            DiscoveryError::Stale(StaleRecord::OlderGeneration {
                current: 4,
                ours: 3
            })
        ),
        "{e:?}"
    );
    assert_eq!(published(&s), record("d", 4));
}

#[tokio::test]
async fn dispatch_publisher_deploys_through_static_yml_and_guards() {
    let s = Server::start().await;
    let url = url::Url::parse(&format!("{}/pages/ouroboros.json", s.url())).unwrap();
    let p = PagesPublisher::new(
        s.client(),
        PagesMode::Dispatch {
            workflow: "static.yml".into(),
            git_ref: "main".into(),
            record_url: Some(url),
        },
    )
    .unwrap();
    assert_eq!(
        p.current().await.unwrap(),
        None,
        "nothing deployed yet (404)"
    );
    let out = p.publish_record(&record("a", 1)).await.unwrap();
    assert!(
        matches!(out, PublishOutcome::Dispatched { run: Some(_) }),
        "{out:?}"
    );
    assert_eq!(p.current().await.unwrap(), Some(record("a", 1)));
    p.publish(&record("b", 2)).await.unwrap();
    let e = p.publish(&record("a", 1)).await.unwrap_err();
    assert!(e.is_stale(), "{e:?}");
    let g = s.g();
    assert_eq!(
        g.dispatches.len(),
        2,
        "the stale record was never dispatched"
    );
    let (wf, body) = &g.dispatches[1];
    assert_eq!(wf, "static.yml");
    assert_eq!(
        body["inputs"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["record"]
    );
    let sent =
        DiscoveryRecord::from_json(body["inputs"]["record"].as_str().unwrap().as_bytes()).unwrap();
    assert_eq!(sent, record("b", 2));
    assert!(
        !g.pages_reads.is_empty() && g.pages_reads.iter().all(|t| t.is_some()),
        "every read has ?t="
    );
    // Reads of the public record send the ngrok/skip header and our User-Agent.
    let read = g
        .seen
        .iter()
        .find(|r| r.path == "/pages/ouroboros.json")
        .unwrap();
    assert_eq!(read.headers[SKIP_BROWSER_WARNING_HEADER], "1");
    assert!(
        read.headers.get("authorization").is_none(),
        "the token never goes to Pages"
    );
}

// ---------------------------------------------------------------------------------------------
// ngrok: failure, fallback, and the opt-in online test
// ---------------------------------------------------------------------------------------------

async fn local_site() -> SocketAddr {
    let app = Router::new().route("/", get(|| async { "ouroboros local" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn still_serves(addr: SocketAddr) {
    let body = tunnel::node_http_client_builder()
        .build()
        .unwrap()
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ouroboros local");
}

#[tokio::test]
async fn ngrok_unreachable_fails_fast_and_the_node_keeps_serving() {
    ouroboros::install_crypto_provider();
    let site = local_site().await;
    // A port nobody listens on: the session's TCP connect is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let t = NgrokTunnel::new(
        Some("2fakeNgrokToken".into()),
        Some("x.ngrok-free.dev".into()),
        Duration::from_secs(10),
    )
    .with_server_addr(closed.to_string());
    let t0 = Instant::now();
    let (status, handle) = tunnel::establish(&t, site).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "failed fast: {:?}",
        t0.elapsed()
    );
    assert!(handle.is_none());
    match &status {
        TunnelStatus::Failed { reason } => {
            assert!(reason.contains("ngrok session failed"), "{reason}");
            assert!(!reason.contains("2fakeNgrokToken"));
        }
        s => panic!("{s:?}"),
    }
    assert_eq!(serde_json::to_value(&status).unwrap()["state"], "failed");
    still_serves(site).await;
}

#[tokio::test]
async fn ngrok_silent_server_times_out_and_the_node_keeps_serving() {
    ouroboros::install_crypto_provider();
    let site = local_site().await;
    // Accepts TCP and never answers the TLS handshake.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let t = NgrokTunnel::new(
        Some("2fakeNgrokToken".into()),
        None,
        Duration::from_millis(300),
    )
    .with_server_addr(format!("localhost:{}", silent_addr.port()));
    let t0 = Instant::now();
    let (status, handle) = tunnel::establish(&t, site).await;
    let took = t0.elapsed();
    assert!(handle.is_none());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(
        status,
        TunnelStatus::Failed {
            reason: "ngrok did not connect within 300ms".into()
        }
    );
    still_serves(site).await;
}

#[tokio::test]
async fn ngrok_default_ingress_offline_is_a_clean_failure() {
    // With no network (this machine) the real ingress lookup fails; online with a fake token,
    // authentication fails. Either way: Failed, no panic, no token in the reason.
    ouroboros::install_crypto_provider();
    let site = local_site().await;
    let t = NgrokTunnel::new(
        Some("2fakeNgrokToken_notreal".into()),
        None,
        Duration::from_secs(15),
    );
    let (status, _) = tunnel::establish(&t, site).await;
    match status {
        TunnelStatus::Failed { reason } => {
            assert!(!reason.contains("2fakeNgrokToken_notreal"), "{reason}")
        }
        s => panic!("a fake token cannot open a tunnel: {s:?}"),
    }
    still_serves(site).await;
}

#[tokio::test]
async fn ngrok_online_opt_in() {
    let Ok(token) = std::env::var("NGROK_AUTHTOKEN") else {
        eprintln!(
            "skipping ngrok_online_opt_in: set NGROK_AUTHTOKEN (and optionally NGROK_DOMAIN) to run it"
        );
        return;
    };
    ouroboros::install_crypto_provider();
    let site = local_site().await;
    let t = NgrokTunnel::new(
        Some(token),
        std::env::var("NGROK_DOMAIN").ok(),
        Duration::from_secs(30),
    );
    let (status, handle) = tunnel::establish(&t, site).await;
    let url = match &status {
        TunnelStatus::Up { url } => url.clone(),
        s => panic!("ngrok did not come up: {s:?}"),
    };
    let body = tunnel::node_http_client_builder()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "ouroboros local", "served through {url}");
    handle.unwrap().close().await;
}

// ---------------------------------------------------------------------------------------------
// The workflow's own script, and the full cycle as Actions would run it
// ---------------------------------------------------------------------------------------------

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
