//! `--launcher github`: start the successor as a new run of `ouroboros.yml`, and check a
//! successor's claimed `GITHUB_RUN_ID`.

use std::{collections::BTreeMap, sync::Arc};

use super::client::{DispatchedRun, GithubClient};
use super::error::GithubError;

use crate::lifecycle::{LaunchError, Launcher, SuccessorRequest};

/// Largest `predecessor_endpoints` input accepted (GitHub caps the whole inputs payload; the
/// endpoints list is a handful of entries).
pub const MAX_ENDPOINTS_INPUT_BYTES: usize = 8 * 1024;

/// The workflow inputs for a successor: `generation`, `predecessor_peer_id`,
/// `predecessor_endpoints` (a JSON string), and for a member of a replicated ring `replica_id`
/// and `replica_join` (`ID=URL,…`). Workflow inputs are public, and a
/// [`SuccessorRequest`] holds no secrets by construction; nothing else is added here.
///
/// # Errors
/// [`GithubError::InvalidRequest`] when the endpoints list is too large for an input.
pub fn successor_inputs(req: &SuccessorRequest) -> Result<BTreeMap<String, String>, GithubError> {
    let endpoints = req.endpoints_json();
    if endpoints.len() > MAX_ENDPOINTS_INPUT_BYTES {
        return Err(GithubError::InvalidRequest(format!(
            "predecessor_endpoints is {} bytes; at most {MAX_ENDPOINTS_INPUT_BYTES}",
            endpoints.len()
        )));
    }
    let mut inputs = BTreeMap::from([
        ("generation".to_string(), req.generation.to_string()),
        (
            "predecessor_peer_id".to_string(),
            req.predecessor_peer_id.clone(),
        ),
        ("predecessor_endpoints".to_string(), endpoints),
    ]);
    // A member of a replicated ring: it joins through these members instead of taking over
    // from the predecessor (whose fields are then informational).
    if let Some(m) = &req.member {
        let join = m.join_arg();
        if join.len() > MAX_ENDPOINTS_INPUT_BYTES {
            return Err(GithubError::InvalidRequest(format!(
                "replica_join is {} bytes; at most {MAX_ENDPOINTS_INPUT_BYTES}",
                join.len()
            )));
        }
        inputs.insert("replica_id".to_string(), m.id.to_string());
        inputs.insert("replica_join".to_string(), join);
    }
    Ok(inputs)
}

/// Starts successors by dispatching a workflow (default `ouroboros.yml`) on a ref.
#[derive(Debug, Clone)]
pub struct GithubLauncher {
    client: Arc<GithubClient>,
    workflow: String,
    git_ref: String,
}

impl GithubLauncher {
    /// A launcher dispatching `workflow` on `git_ref`.
    pub fn new(
        client: Arc<GithubClient>,
        workflow: impl Into<String>,
        git_ref: impl Into<String>,
    ) -> Self {
        GithubLauncher {
            client,
            workflow: workflow.into(),
            git_ref: git_ref.into(),
        }
    }

    /// The workflow file dispatched.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }

    /// Dispatches the successor run. Returns the new run's ids when the server gives them
    /// (`return_run_details`), else `None` (the run still starts; its id arrives with the
    /// successor's handshake).
    pub async fn dispatch(
        &self,
        req: &SuccessorRequest,
    ) -> Result<Option<DispatchedRun>, GithubError> {
        let inputs = successor_inputs(req)?;
        let run = self
            .client
            .workflow_dispatch(&self.workflow, &self.git_ref, &inputs, true)
            .await?;
        tracing::info!(
            workflow = %self.workflow,
            git_ref = %self.git_ref,
            generation = req.generation,
            attempt = req.attempt,
            run_id = run.as_ref().map(|r| r.workflow_run_id),
            "successor run dispatched"
        );
        Ok(run)
    }

    /// A verifier for successors started by this launcher.
    pub fn verifier(&self) -> RunVerifier {
        RunVerifier::new(self.client.clone(), self.workflow.clone())
    }
}

#[async_trait::async_trait]
impl Launcher for GithubLauncher {
    async fn launch(&self, request: &SuccessorRequest) -> Result<(), LaunchError> {
        self.dispatch(request)
            .await
            .map(|_| ())
            .map_err(|e| LaunchError::Remote(e.to_string()))
    }

    fn name(&self) -> &'static str {
        "github"
    }
}

/// Why a claimed run id does not belong to a genuine successor.
#[derive(Debug, thiserror::Error)]
pub enum RunCheckError {
    /// The id is not a number.
    #[error("GITHUB_RUN_ID {0:?} is not a run id")]
    BadId(String),
    /// The run belongs to another repository.
    #[error("run {run_id} belongs to {actual}, not {expected}")]
    WrongRepository {
        /// The run.
        run_id: u64,
        /// Our repository.
        expected: String,
        /// The run's repository.
        actual: String,
    },
    /// The run is of another workflow.
    #[error("run {run_id} is of workflow {actual:?}, not {expected:?}")]
    WrongWorkflow {
        /// The run.
        run_id: u64,
        /// Our workflow file.
        expected: String,
        /// The run's workflow file.
        actual: String,
    },
    /// The run is not running.
    #[error("run {run_id} is {status}, not in_progress")]
    NotInProgress {
        /// The run.
        run_id: u64,
        /// Its status.
        status: String,
    },
    /// The id is the checker's own run.
    #[error("run {0} is this node's own run")]
    OwnRun(u64),
    /// The lookup failed (404 means no such run in this repository).
    #[error("cannot look up the run: {0}")]
    Lookup(#[from] GithubError),
}

/// Checks a successor's claimed `GITHUB_RUN_ID` through the runs API: same repository, same
/// workflow, `in_progress`. Used in addition to the HMAC proof, never instead of it.
#[derive(Debug, Clone)]
pub struct RunVerifier {
    client: Arc<GithubClient>,
    workflow: String,
    own_run_id: Option<u64>,
}

impl RunVerifier {
    /// A verifier expecting runs of `workflow` (a file name such as `ouroboros.yml`).
    pub fn new(client: Arc<GithubClient>, workflow: impl Into<String>) -> Self {
        RunVerifier {
            client,
            workflow: workflow.into(),
            own_run_id: std::env::var("GITHUB_RUN_ID")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    /// Sets (or clears) this node's own run id, which a successor may not claim.
    pub fn with_own_run_id(mut self, id: Option<u64>) -> Self {
        self.own_run_id = id;
        self
    }

    /// Verifies `claimed` (the successor's `GITHUB_RUN_ID`).
    pub async fn verify(&self, claimed: &str) -> Result<u64, RunCheckError> {
        let run_id: u64 = claimed
            .trim()
            .parse()
            .map_err(|_| RunCheckError::BadId(claimed.chars().take(40).collect()))?;
        if Some(run_id) == self.own_run_id {
            return Err(RunCheckError::OwnRun(run_id));
        }
        let run = self.client.get_run(run_id).await?;
        let expected_repo = self.client.repository();
        if !run.repository.full_name.eq_ignore_ascii_case(expected_repo) {
            return Err(RunCheckError::WrongRepository {
                run_id,
                expected: expected_repo.to_string(),
                actual: run.repository.full_name,
            });
        }
        if run.workflow_file() != self.workflow {
            return Err(RunCheckError::WrongWorkflow {
                run_id,
                expected: self.workflow.clone(),
                actual: run.workflow_file().to_string(),
            });
        }
        if run.status != "in_progress" {
            return Err(RunCheckError::NotInProgress {
                run_id,
                status: run.status,
            });
        }
        Ok(run_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::SignalingEndpoint;

    fn req(endpoints: Vec<SignalingEndpoint>) -> SuccessorRequest {
        SuccessorRequest {
            generation: 7,
            predecessor_peer_id: "node-abc".into(),
            predecessor_endpoints: endpoints,
            attempt: 1,
            member: None,
        }
    }

    fn ep(host: &str) -> SignalingEndpoint {
        SignalingEndpoint {
            host: host.into(),
            port: 443,
            path: "/".into(),
            key: "peerjs".into(),
            secure: true,
            peer_id: None,
        }
    }

    #[test]
    fn inputs_are_exactly_three_strings() {
        let inputs =
            successor_inputs(&req(vec![ep("x.ngrok-free.dev"), ep("0.peerjs.com")])).unwrap();
        assert_eq!(
            inputs.keys().collect::<Vec<_>>(),
            ["generation", "predecessor_endpoints", "predecessor_peer_id"]
        );
        assert_eq!(inputs["generation"], "7");
        let back: Vec<SignalingEndpoint> =
            serde_json::from_str(&inputs["predecessor_endpoints"]).unwrap();
        assert_eq!(back, vec![ep("x.ngrok-free.dev"), ep("0.peerjs.com")]);
    }

    #[test]
    fn oversized_endpoints_are_refused() {
        let r = req(vec![ep(&"x".repeat(MAX_ENDPOINTS_INPUT_BYTES))]);
        assert!(matches!(
            successor_inputs(&r),
            Err(GithubError::InvalidRequest(_))
        ));
    }
}
