//! Contract tests for the cloud parts: the GitHub client, launcher, run verifier and Pages
//! publisher against a local server that follows GitHub's documented REST contract (status
//! codes, bodies, rate-limit headers), and the ngrok tunnel's failure and fallback paths
//! (plus an online test that runs only when `NGROK_AUTHTOKEN` is set).
//!
//! Run: `cargo test --test github_contract`.

mod client;
mod launcher;
mod ngrok;
mod pages;
#[path = "../support/mod.rs"]
mod support;
mod workflow;

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
use support::Fetch;

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

/// The `workflow_dispatch` inputs a workflow file declares, `(name, required)`, as GitHub reads
/// them: the keys under `on.workflow_dispatch.inputs` (6-space indent) and their `required:`.
fn workflow_inputs(path: &str) -> Vec<(&'static str, bool)> {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap();
    let mut inputs = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line == "    inputs:" {
            inside = true;
            continue;
        }
        if inside {
            if !line.starts_with("      ") && !line.trim().is_empty() {
                break;
            }
            if let Some(name) = line
                .strip_prefix("      ")
                .and_then(|l| l.strip_suffix(':'))
                && !name.starts_with(' ')
            {
                inputs.push((&*Box::leak(name.to_owned().into_boxed_str()), false));
            } else if line.trim() == "required: true"
                && let Some(last) = inputs.last_mut()
            {
                last.1 = true;
            }
        }
    }
    assert!(!inputs.is_empty(), "no inputs in {path}");
    inputs
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
            workflow_inputs(".github/workflows/ouroboros.yml"),
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

fn endpoint(host: &str) -> SignalingEndpoint {
    SignalingEndpoint {
        host: host.into(),
        port: 443,
        path: "/".into(),
        key: "peerjs".into(),
        secure: true,
        peer_id: None,
    }
}

fn successor(generation: u64) -> SuccessorRequest {
    SuccessorRequest {
        generation,
        predecessor_peer_id: format!("ouroboros-node-{}", generation - 1),
        predecessor_endpoints: vec![endpoint("abc.ngrok-free.dev"), endpoint("0.peerjs.com")],
        attempt: 1,
        member: None,
    }
}
