//! The REST client: configuration, the request loop with bounded retries, and the endpoints
//! Ouroboros uses.

use std::{
    collections::BTreeMap,
    fmt,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use reqwest::{Method, StatusCode, header::HeaderValue};
use serde::{Deserialize, Serialize};
use url::Url;

use super::error::{GithubError, body_message, classify, redact};
use crate::retry::Backoff;

/// The public API, used when `GITHUB_API_URL` is not set.
pub const DEFAULT_API_URL: &str = "https://api.github.com";
/// The REST API version every request asks for.
pub const API_VERSION: &str = "2022-11-28";
/// Longest `event_type` of a repository dispatch (GitHub OpenAPI).
pub const MAX_EVENT_TYPE_LEN: usize = 100;
/// Most top-level properties of a repository dispatch's `client_payload`.
pub const MAX_CLIENT_PAYLOAD_PROPS: usize = 10;
/// Most inputs a workflow dispatch may carry (the conservative documented figure).
pub const MAX_WORKFLOW_INPUTS: usize = 10;
/// Largest response body read (Contents answers for our small JSON record are far smaller).
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// A token that never shows itself: `Debug` prints `***` and there is no `Display`.
#[derive(Clone)]
pub struct SecretToken(String);

impl SecretToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        SecretToken(token.into())
    }
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretToken(***)")
    }
}

/// How failed requests are retried (delays from [`crate::retry::Backoff`]: doubling, full
/// jitter; a rate limit's `retry-after` is honoured instead when GitHub sends one).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Ceiling of the first backoff for network errors, 5xx and rate limits without
    /// `retry-after` (doubled each time, up to `max_wait`).
    pub base_backoff: Duration,
    /// Longest wait honoured for a rate limit; a longer `retry-after` fails at once with
    /// [`GithubError::RateLimited`] so the caller can decide.
    pub max_wait: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_backoff: Duration::from_millis(500),
            max_wait: Duration::from_secs(90),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Where and as whom the client talks.
#[derive(Debug, Clone)]
pub struct GithubConfig {
    /// API root (`GITHUB_API_URL`), e.g. `https://api.github.com` or `https://ghe.example/api/v3`.
    pub api_url: Url,
    /// The token (`GITHUB_TOKEN`, or a PAT).
    pub token: SecretToken,
    /// `owner/name` (`GITHUB_REPOSITORY`).
    pub repository: String,
    /// `User-Agent` (GitHub requires one).
    pub user_agent: String,
    /// Retry behaviour.
    pub retry: RetryPolicy,
}

/// Name of the environment variable holding an optional PAT that takes precedence over
/// `GITHUB_TOKEN` (for organisations whose policy restricts `GITHUB_TOKEN`).
pub const DEFAULT_PAT_ENV: &str = "OUROBOROS_DISPATCH_TOKEN";

impl GithubConfig {
    /// Builds a config; checks the repository shape and the URL.
    pub fn new(api_url: &str, token: SecretToken, repository: &str) -> Result<Self, GithubError> {
        let api_url = Url::parse(api_url).map_err(|e| {
            GithubError::Config(format!("GITHUB_API_URL {api_url:?} is not a URL: {e}"))
        })?;
        if api_url.cannot_be_a_base() || !matches!(api_url.scheme(), "http" | "https") {
            return Err(GithubError::Config(format!(
                "GITHUB_API_URL {api_url} is not an http(s) URL"
            )));
        }
        let parts: Vec<&str> = repository.split('/').collect();
        if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
            return Err(GithubError::Config(format!(
                "GITHUB_REPOSITORY {repository:?} is not of the form owner/name"
            )));
        }
        if token.expose().is_empty() {
            return Err(GithubError::Config("the GitHub token is empty".into()));
        }
        Ok(GithubConfig {
            api_url,
            token,
            repository: repository.to_string(),
            user_agent: format!("ouroboros/{}", env!("CARGO_PKG_VERSION")),
            retry: RetryPolicy::default(),
        })
    }

    /// Reads the environment Actions sets: `GITHUB_API_URL` (default the public API),
    /// `GITHUB_REPOSITORY`, and the token from `pat_env` when that variable is set and not
    /// empty, else from `GITHUB_TOKEN`.
    pub fn from_env(pat_env: Option<&str>) -> Result<Self, GithubError> {
        Self::from_lookup(pat_env, |k| std::env::var(k).ok())
    }

    /// [`GithubConfig::from_env`] over any variable lookup (tests pass a map).
    pub fn from_lookup(
        pat_env: Option<&str>,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, GithubError> {
        let non_empty = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let api = non_empty("GITHUB_API_URL").unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let repo = non_empty("GITHUB_REPOSITORY")
            .ok_or_else(|| GithubError::Config("GITHUB_REPOSITORY is not set".into()))?;
        let token = pat_env
            .and_then(non_empty)
            .or_else(|| non_empty("GITHUB_TOKEN"))
            .ok_or_else(|| {
                GithubError::Config(format!(
                    "no GitHub token: set GITHUB_TOKEN{}",
                    pat_env.map(|p| format!(" or {p}")).unwrap_or_default()
                ))
            })?;
        Self::new(api.trim(), SecretToken::new(token.trim()), repo.trim())
    }
}

/// `workflow_run_id`, `run_url`, `html_url` of a dispatch made with `return_run_details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchedRun {
    /// The new run's id.
    pub workflow_run_id: u64,
    /// API URL of the run.
    #[serde(default)]
    pub run_url: String,
    /// Browser URL of the run.
    #[serde(default)]
    pub html_url: String,
}

/// A file read through the Contents API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// The blob sha: the optimistic lock for the next write.
    pub sha: String,
    /// The decoded bytes.
    pub content: Vec<u8>,
}

/// What a Contents write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// True for 201 (the file was created), false for 200 (updated).
    pub created: bool,
    /// The new blob sha.
    pub content_sha: String,
    /// The commit that wrote it.
    pub commit_sha: String,
}

/// The part of a workflow run Ouroboros looks at.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct WorkflowRun {
    /// Run id (`GITHUB_RUN_ID`).
    pub id: u64,
    /// Workflow name.
    #[serde(default)]
    pub name: Option<String>,
    /// Workflow file, e.g. `.github/workflows/ouroboros.yml` (may carry an `@ref` suffix).
    #[serde(default)]
    pub path: String,
    /// `queued`, `in_progress`, `completed`, …
    pub status: String,
    /// `success`, `failure`, … once completed.
    #[serde(default)]
    pub conclusion: Option<String>,
    /// The event that started it (`workflow_dispatch`).
    #[serde(default)]
    pub event: Option<String>,
    /// Browser URL.
    #[serde(default)]
    pub html_url: Option<String>,
    /// The repository the run belongs to.
    pub repository: RunRepository,
}

/// `repository` of a workflow run.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RunRepository {
    /// `owner/name`.
    pub full_name: String,
}

impl WorkflowRun {
    /// The workflow file name (`ouroboros.yml`) from `path`, without folders or `@ref`.
    pub fn workflow_file(&self) -> &str {
        let p = self.path.split('@').next().unwrap_or("");
        p.rsplit('/').next().unwrap_or(p)
    }
}

/// What an [`GithubClient::update_contents`] step decides after seeing the current file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentsUpdate {
    /// Write these bytes (with the sha just read as the lock).
    Write(Vec<u8>),
    /// Nothing to do (already up to date).
    Keep,
}

/// A GitHub REST client for one repository. `Debug` never shows the token.
pub struct GithubClient {
    http: reqwest::Client,
    config: GithubConfig,
    /// Cleared after a server refused `return_run_details`, so later dispatches skip it.
    run_details_supported: AtomicBool,
}

impl fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubClient")
            .field("api_url", &self.config.api_url.as_str())
            .field("repository", &self.config.repository)
            .field("token", &self.config.token)
            .finish()
    }
}

enum Body<'a> {
    None,
    Json(&'a serde_json::Value),
}

impl GithubClient {
    /// Builds a client. Needs the rustls provider ([`crate::install_crypto_provider`]).
    pub fn new(config: GithubConfig) -> Result<Self, GithubError> {
        let tls = crate::tls::client_config(None)
            .map_err(|e| GithubError::Config(format!("cannot build the HTTP client: {e}")))?;
        let http = crate::tls::http_client_builder(&tls)
            .user_agent(config.user_agent.clone())
            .timeout(config.retry.request_timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| GithubError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(GithubClient {
            http,
            config,
            run_details_supported: AtomicBool::new(true),
        })
    }

    /// The configured `owner/name`.
    pub fn repository(&self) -> &str {
        &self.config.repository
    }

    /// The configuration (the token inside stays hidden).
    pub fn config(&self) -> &GithubConfig {
        &self.config
    }

    /// `{api}/repos/{owner}/{name}/` followed by `segments`, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.config.api_url.clone();
        {
            let mut s = url
                .path_segments_mut()
                .expect("checked in GithubConfig::new: the API URL can be a base");
            s.pop_if_empty();
            s.push("repos");
            for part in self.config.repository.split('/') {
                s.push(part);
            }
            for seg in segments {
                s.push(seg);
            }
        }
        url
    }

    /// Sends one request with bounded retries: rate limits are waited out when the wait is at
    /// most `max_wait`; network errors and 5xx are retried with backoff only when `idempotent`.
    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Body<'_>,
        idempotent: bool,
    ) -> Result<(StatusCode, String), GithubError> {
        let policy = &self.config.retry;
        let secret = self.config.token.expose();
        // Backoff for network errors, 5xx and rate limits without `retry-after`; the ceilings
        // add up to at most `max_wait`.
        let mut delays = Backoff::new(policy.base_backoff, policy.max_wait)
            .with_max_retries(policy.max_retries as usize)
            .with_total(policy.max_wait)
            .delays();
        let mut attempt: u32 = 0;
        loop {
            let mut auth = HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| {
                GithubError::Config(
                    "the GitHub token has characters not allowed in a header".into(),
                )
            })?;
            auth.set_sensitive(true);
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(reqwest::header::AUTHORIZATION, auth)
                .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", API_VERSION);
            if let Body::Json(v) = body {
                req = req.json(v);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let msg = redact(&crate::tunnel::error_chain(&e), secret);
                    if idempotent && let Some(delay) = delays.next_delay() {
                        tracing::warn!(%url, attempt, error = %msg, "GitHub request failed; retrying");
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Err(GithubError::Network(msg));
                }
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let text = read_body(resp).await?;
            if status.is_success() {
                return Ok((status, text));
            }
            let err = classify(
                status.as_u16(),
                &headers,
                redact(&body_message(&text), secret),
                SystemTime::now(),
            );
            // GitHub's `retry-after` (or its rate-limit reset) wins over our own backoff.
            let wait = match &err {
                GithubError::RateLimited { retry_after, .. } => delays
                    .next_delay()
                    .map(|d| retry_after.unwrap_or(d))
                    .filter(|w| *w <= policy.max_wait),
                GithubError::Status { status, .. } if idempotent && *status >= 500 => {
                    delays.next_delay()
                }
                _ => None,
            };
            match wait {
                Some(w) => {
                    tracing::warn!(%url, attempt, status = status.as_u16(), wait_ms = w.as_millis() as u64, error = %err, "GitHub asked us to wait; retrying");
                    attempt += 1;
                    tokio::time::sleep(w).await;
                }
                _ => return Err(err),
            }
        }
    }

    /// `POST /repos/{o}/{r}/actions/workflows/{workflow_file}/dispatches` with `ref` and string
    /// inputs. With `return_run_details` the server may answer 200 with the new run's ids;
    /// servers that refuse the field (400/422) are asked again without it.
    ///
    /// # Errors
    /// 404 unknown workflow; 422 unknown input or missing ref; 401/403/429 as usual.
    pub async fn workflow_dispatch(
        &self,
        workflow_file: &str,
        git_ref: &str,
        inputs: &BTreeMap<String, String>,
        return_run_details: bool,
    ) -> Result<Option<DispatchedRun>, GithubError> {
        if workflow_file.is_empty() || workflow_file.contains('/') {
            return Err(GithubError::InvalidRequest(format!(
                "workflow {workflow_file:?} must be a file name such as ouroboros.yml"
            )));
        }
        if git_ref.is_empty() {
            return Err(GithubError::InvalidRequest(
                "a workflow dispatch needs a ref".into(),
            ));
        }
        if inputs.len() > MAX_WORKFLOW_INPUTS {
            return Err(GithubError::InvalidRequest(format!(
                "{} workflow inputs; GitHub accepts at most {MAX_WORKFLOW_INPUTS}",
                inputs.len()
            )));
        }
        let url = self.url(&["actions", "workflows", workflow_file, "dispatches"]);
        let want_details = return_run_details && self.run_details_supported.load(Ordering::Relaxed);
        let body = |details: bool| {
            let mut b = serde_json::json!({ "ref": git_ref, "inputs": inputs });
            if details {
                b["return_run_details"] = serde_json::Value::Bool(true);
            }
            b
        };
        let first = body(want_details);
        let result = self
            .send(Method::POST, url.clone(), Body::Json(&first), false)
            .await;
        let (status, text) = match result {
            Err(GithubError::Unprocessable { status, message }) if want_details => {
                tracing::info!(status, %message, "server refused return_run_details; dispatching without it");
                let second = body(false);
                let plain = self
                    .send(Method::POST, url, Body::Json(&second), false)
                    .await?;
                // Only now is it clear the field (not an input or the ref) was the problem.
                self.run_details_supported.store(false, Ordering::Relaxed);
                plain
            }
            other => other?,
        };
        if status == StatusCode::OK && !text.trim().is_empty() {
            let run: DispatchedRun = serde_json::from_str(&text)
                .map_err(|e| GithubError::Decode(format!("dispatch run details: {e}")))?;
            Ok(Some(run))
        } else {
            Ok(None)
        }
    }

    /// `POST /repos/{o}/{r}/dispatches` (`repository_dispatch`; needs `contents: write`).
    pub async fn repository_dispatch(
        &self,
        event_type: &str,
        client_payload: &serde_json::Value,
    ) -> Result<(), GithubError> {
        if event_type.is_empty() || event_type.chars().count() > MAX_EVENT_TYPE_LEN {
            return Err(GithubError::InvalidRequest(format!(
                "event_type must be 1..={MAX_EVENT_TYPE_LEN} characters"
            )));
        }
        match client_payload {
            serde_json::Value::Object(m) if m.len() <= MAX_CLIENT_PAYLOAD_PROPS => {}
            serde_json::Value::Object(m) => {
                return Err(GithubError::InvalidRequest(format!(
                    "client_payload has {} top-level properties; GitHub accepts at most {MAX_CLIENT_PAYLOAD_PROPS}",
                    m.len()
                )));
            }
            _ => {
                return Err(GithubError::InvalidRequest(
                    "client_payload must be a JSON object".into(),
                ));
            }
        }
        let body =
            serde_json::json!({ "event_type": event_type, "client_payload": client_payload });
        self.send(
            Method::POST,
            self.url(&["dispatches"]),
            Body::Json(&body),
            false,
        )
        .await?;
        Ok(())
    }

    fn contents_url(&self, path: &str, branch: Option<&str>) -> Result<Url, GithubError> {
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        if segs.is_empty() || segs.iter().any(|s| *s == "." || *s == "..") {
            return Err(GithubError::InvalidRequest(format!(
                "bad repository path {path:?}"
            )));
        }
        let mut all = vec!["contents"];
        all.extend(segs);
        let mut url = self.url(&all);
        if let Some(b) = branch {
            url.query_pairs_mut().append_pair("ref", b);
        }
        Ok(url)
    }

    /// `GET /repos/{o}/{r}/contents/{path}?ref={branch}`: the file's sha and decoded bytes, or
    /// `None` when GitHub answers 404 (no such file, or no such branch).
    pub async fn get_contents(
        &self,
        path: &str,
        branch: Option<&str>,
    ) -> Result<Option<FileContent>, GithubError> {
        #[derive(Deserialize)]
        struct Contents {
            #[serde(rename = "type")]
            kind: String,
            sha: String,
            #[serde(default)]
            content: String,
            #[serde(default)]
            encoding: String,
        }
        let url = self.contents_url(path, branch)?;
        let text = match self.send(Method::GET, url, Body::None, true).await {
            Ok((_, t)) => t,
            Err(GithubError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let c: Contents = serde_json::from_str(&text).map_err(|e| {
            GithubError::Decode(format!("contents of {path}: {e} (is it a directory?)"))
        })?;
        if c.kind != "file" {
            return Err(GithubError::Decode(format!(
                "{path} is a {}, not a file",
                c.kind
            )));
        }
        if c.encoding != "base64" {
            return Err(GithubError::Decode(format!(
                "{path} came with encoding {:?} (files over 1 MB are not inlined)",
                c.encoding
            )));
        }
        let packed: String = c
            .content
            .chars()
            .filter(|ch| !ch.is_ascii_whitespace())
            .collect();
        let content = base64::engine::general_purpose::STANDARD
            .decode(packed)
            .map_err(|e| GithubError::Decode(format!("base64 content of {path}: {e}")))?;
        Ok(Some(FileContent {
            sha: c.sha,
            content,
        }))
    }

    /// `PUT /repos/{o}/{r}/contents/{path}`: creates (no `sha`) or updates (with the `sha` last
    /// read) a file. A stale `sha` fails with a conflict ([`GithubError::is_conflict`]).
    pub async fn put_contents(
        &self,
        path: &str,
        branch: Option<&str>,
        message: &str,
        content: &[u8],
        sha: Option<&str>,
    ) -> Result<PutOutcome, GithubError> {
        #[derive(Deserialize)]
        struct Sha {
            sha: String,
        }
        #[derive(Deserialize)]
        struct Put {
            content: Sha,
            commit: Sha,
        }
        let url = self.contents_url(path, None)?;
        let mut body = serde_json::json!({
            "message": message,
            "content": base64::engine::general_purpose::STANDARD.encode(content),
        });
        if let Some(s) = sha {
            body["sha"] = s.into();
        }
        if let Some(b) = branch {
            body["branch"] = b.into();
        }
        // A PUT carrying a sha is safe to repeat: a replay after success fails with a conflict.
        let (status, text) = self
            .send(Method::PUT, url, Body::Json(&body), sha.is_some())
            .await?;
        let p: Put = serde_json::from_str(&text)
            .map_err(|e| GithubError::Decode(format!("contents write: {e}")))?;
        Ok(PutOutcome {
            created: status == StatusCode::CREATED,
            content_sha: p.content.sha,
            commit_sha: p.commit.sha,
        })
    }

    /// Read–decide–write with the `sha` as an optimistic lock: `decide` sees the current file
    /// (or `None`) and returns what to write; on a conflict the file is read again and `decide`
    /// runs again, up to `max_attempts` times. Returns `None` when `decide` chose
    /// [`ContentsUpdate::Keep`].
    pub async fn update_contents<E>(
        &self,
        path: &str,
        branch: Option<&str>,
        message: &str,
        max_attempts: u32,
        mut decide: impl FnMut(Option<&FileContent>) -> Result<ContentsUpdate, E>,
    ) -> Result<Option<PutOutcome>, E>
    where
        E: From<GithubError>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let current = self.get_contents(path, branch).await?;
            let bytes = match decide(current.as_ref())? {
                ContentsUpdate::Keep => return Ok(None),
                ContentsUpdate::Write(b) => b,
            };
            match self
                .put_contents(
                    path,
                    branch,
                    message,
                    &bytes,
                    current.as_ref().map(|c| c.sha.as_str()),
                )
                .await
            {
                Ok(out) => return Ok(Some(out)),
                Err(e) if e.is_conflict() && attempt < max_attempts.max(1) => {
                    tracing::info!(path, attempt, error = %e, "contents write lost a race; re-reading");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// `GET /repos/{o}/{r}/actions/runs/{run_id}`.
    pub async fn get_run(&self, run_id: u64) -> Result<WorkflowRun, GithubError> {
        let id = run_id.to_string();
        let (_, text) = self
            .send(
                Method::GET,
                self.url(&["actions", "runs", &id]),
                Body::None,
                true,
            )
            .await?;
        serde_json::from_str(&text)
            .map_err(|e| GithubError::Decode(format!("workflow run {run_id}: {e}")))
    }
}

/// Reads at most [`MAX_BODY_BYTES`] of a body as (lossy) UTF-8.
async fn read_body(mut resp: reqwest::Response) -> Result<String, GithubError> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| GithubError::Network(crate::tunnel::error_chain(&e)))?
    {
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(GithubError::Decode(format!(
                "response body over {MAX_BODY_BYTES} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn config_from_env_prefers_pat_and_defaults_api() {
        let c = GithubConfig::from_lookup(
            Some(DEFAULT_PAT_ENV),
            env(&[
                ("GITHUB_REPOSITORY", "o/r"),
                ("GITHUB_TOKEN", "t1"),
                (DEFAULT_PAT_ENV, "pat"),
            ]),
        )
        .unwrap();
        assert_eq!(c.token.expose(), "pat");
        assert_eq!(c.api_url.as_str(), "https://api.github.com/");
        let c = GithubConfig::from_lookup(
            Some(DEFAULT_PAT_ENV),
            env(&[
                ("GITHUB_REPOSITORY", "o/r"),
                ("GITHUB_TOKEN", "t1"),
                (DEFAULT_PAT_ENV, ""),
            ]),
        )
        .unwrap();
        assert_eq!(c.token.expose(), "t1");
    }

    #[test]
    fn config_errors_are_clear() {
        let e = GithubConfig::from_lookup(None, env(&[("GITHUB_TOKEN", "t")])).unwrap_err();
        assert!(e.to_string().contains("GITHUB_REPOSITORY"), "{e}");
        let e = GithubConfig::from_lookup(None, env(&[("GITHUB_REPOSITORY", "o/r")])).unwrap_err();
        assert!(e.to_string().contains("GITHUB_TOKEN"), "{e}");
        let e = GithubConfig::from_lookup(
            None,
            env(&[("GITHUB_REPOSITORY", "norepo"), ("GITHUB_TOKEN", "t")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("owner/name"), "{e}");
    }

    #[test]
    fn urls_keep_api_prefix_and_encode_segments() {
        crate::install_crypto_provider();
        let cfg =
            GithubConfig::new("https://ghe.example/api/v3", SecretToken::new("t"), "o/r").unwrap();
        let c = GithubClient::new(cfg).unwrap();
        assert_eq!(
            c.url(&["actions", "workflows", "a b.yml", "dispatches"])
                .as_str(),
            "https://ghe.example/api/v3/repos/o/r/actions/workflows/a%20b.yml/dispatches"
        );
        assert_eq!(
            c.contents_url("docs/ouroboros.json", Some("gh-pages"))
                .unwrap()
                .as_str(),
            "https://ghe.example/api/v3/repos/o/r/contents/docs/ouroboros.json?ref=gh-pages"
        );
        assert!(c.contents_url("../x", None).is_err());
    }

    #[test]
    fn run_workflow_file() {
        let run: WorkflowRun = serde_json::from_value(serde_json::json!({
            "id": 5, "path": ".github/workflows/ouroboros.yml@refs/heads/main", "status": "in_progress",
            "repository": {"full_name": "o/r"}
        }))
        .unwrap();
        assert_eq!(run.workflow_file(), "ouroboros.yml");
    }
}
