//! A small GitHub REST client: workflow dispatch, repository dispatch, contents, runs; and the
//! two things Ouroboros builds on it: the [`GithubLauncher`] that starts a successor run (plus
//! the [`RunVerifier`] that checks a successor's run id) and the [`PagesPublisher`] that makes
//! `ouroboros.json` public.
//!
//! Everything reads the environment GitHub Actions sets (`GITHUB_API_URL`, `GITHUB_REPOSITORY`,
//! `GITHUB_TOKEN`), so the same code runs against a local server that follows the documented
//! contract (see `tests/github_contract.rs`). The token is held in a [`SecretToken`] and never
//! reaches a log, a `Debug` print or an error message.

mod client;
mod error;
mod launcher;
mod pages;
mod run_cache;

use std::sync::Arc;

pub use client::{
    API_VERSION, ContentsUpdate, DEFAULT_API_URL, DEFAULT_PAT_ENV, DispatchedRun, FileContent,
    GithubClient, GithubConfig, MAX_CLIENT_PAYLOAD_PROPS, MAX_EVENT_TYPE_LEN, MAX_WORKFLOW_INPUTS,
    PutOutcome, RetryPolicy, RunRepository, SecretToken, WorkflowRun,
};
pub use error::{GithubError, SECONDARY_LIMIT_WAIT};
pub use launcher::{
    GithubLauncher, MAX_ENDPOINTS_INPUT_BYTES, RunCheckError, RunVerifier, successor_inputs,
};
pub use pages::{
    CONTENTS_ATTEMPTS, MAX_RECORD_BYTES, PagesMode, PagesPublisher, PublishOutcome,
    default_record_url, record_generation,
};
pub use run_cache::{CachedRunVerifier, RunCacheConfig, RunVerdict};

/// How `--publisher pages` gets the record onto Pages.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PagesModeArg {
    /// Commit the record with the Contents API (Pages served from a branch).
    Contents,
    /// Dispatch the deploy workflow with the record as input (Pages source "GitHub Actions").
    #[default]
    Dispatch,
}

/// Where `ouroboros node` publishes its discovery record.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PublisherKind {
    /// `ouroboros.json` in `--data-dir` (also served at `/ouroboros.json`).
    #[default]
    Local,
    /// GitHub Pages (see `--pages-mode`); needs `GITHUB_REPOSITORY` and a token.
    Pages,
}

/// GitHub flags of `ouroboros node` (used by `--launcher github` and `--publisher pages`).
#[derive(clap::Args, Debug, Clone)]
pub struct GithubArgs {
    /// Where the discovery record is published.
    #[arg(long, value_enum, env = "OUROBOROS_PUBLISHER", default_value_t = PublisherKind::Local)]
    pub publisher: PublisherKind,
    /// Workflow file that runs a node (dispatched to start the successor).
    #[arg(
        long,
        env = "OUROBOROS_GITHUB_WORKFLOW",
        default_value = "ouroboros.yml"
    )]
    pub github_workflow: String,
    /// Git ref the successor and deploy workflows run on (Actions sets GITHUB_REF_NAME).
    #[arg(long, env = "GITHUB_REF_NAME", default_value = "main")]
    pub github_ref: String,
    /// Environment variable holding an optional PAT used instead of GITHUB_TOKEN when set.
    #[arg(long, default_value = DEFAULT_PAT_ENV)]
    pub github_token_env: String,
    /// How the discovery record reaches Pages.
    #[arg(long, value_enum, env = "OUROBOROS_PAGES_MODE", default_value_t = PagesModeArg::Dispatch)]
    pub pages_mode: PagesModeArg,
    /// Branch written in `contents` mode.
    #[arg(long, env = "OUROBOROS_PAGES_BRANCH", default_value = "gh-pages")]
    pub pages_branch: String,
    /// File path written in `contents` mode.
    #[arg(long, env = "OUROBOROS_PAGES_PATH", default_value = "ouroboros.json")]
    pub pages_path: String,
    /// Deploy workflow dispatched in `dispatch` mode.
    #[arg(long, env = "OUROBOROS_PAGES_WORKFLOW", default_value = "static.yml")]
    pub pages_workflow: String,
    /// Public URL of the deployed record, read back before publishing in `dispatch` mode
    /// (default `https://{owner}.github.io/{repo}/ouroboros.json`).
    #[arg(long, env = "OUROBOROS_PAGES_URL")]
    pub pages_url: Option<url::Url>,
}

impl Default for GithubArgs {
    fn default() -> Self {
        GithubArgs {
            publisher: PublisherKind::Local,
            github_workflow: "ouroboros.yml".into(),
            github_ref: "main".into(),
            github_token_env: DEFAULT_PAT_ENV.into(),
            pages_mode: PagesModeArg::Dispatch,
            pages_branch: "gh-pages".into(),
            pages_path: "ouroboros.json".into(),
            pages_workflow: "static.yml".into(),
            pages_url: None,
        }
    }
}

impl GithubArgs {
    /// A client from the environment (`GITHUB_API_URL`, `GITHUB_REPOSITORY`, the token).
    pub fn client(&self) -> Result<Arc<GithubClient>, GithubError> {
        let cfg = GithubConfig::from_env(Some(&self.github_token_env))?;
        Ok(Arc::new(GithubClient::new(cfg)?))
    }

    /// The launcher for `--launcher github`.
    pub fn launcher(&self, client: Arc<GithubClient>) -> GithubLauncher {
        GithubLauncher::new(
            client,
            self.github_workflow.clone(),
            self.github_ref.clone(),
        )
    }

    /// The Pages mode these flags describe.
    pub fn pages_mode(&self, repository: &str) -> PagesMode {
        match self.pages_mode {
            PagesModeArg::Contents => PagesMode::Contents {
                branch: self.pages_branch.clone(),
                path: self.pages_path.clone(),
            },
            PagesModeArg::Dispatch => PagesMode::Dispatch {
                workflow: self.pages_workflow.clone(),
                git_ref: self.github_ref.clone(),
                record_url: self
                    .pages_url
                    .clone()
                    .or_else(|| default_record_url(repository)),
            },
        }
    }

    /// The publisher for `--publisher pages`.
    pub fn publisher(&self, client: Arc<GithubClient>) -> Result<PagesPublisher, GithubError> {
        let mode = self.pages_mode(client.repository());
        PagesPublisher::new(client, mode)
    }

    /// The cloud parts the ring needs for these flags: the GitHub launcher when `launcher` is
    /// [`LauncherKind::Github`](crate::lifecycle::LauncherKind::Github), the Pages publisher
    /// when `--publisher pages`; `None` where the ring's defaults apply. Builds the client only
    /// when one of them is wanted.
    ///
    /// # Errors
    /// [`GithubError::Config`] when GitHub is wanted but `GITHUB_REPOSITORY` or the token is
    /// missing.
    pub fn cloud_parts(
        &self,
        launcher: crate::lifecycle::LauncherKind,
    ) -> Result<CloudParts, GithubError> {
        let wants_launcher = launcher == crate::lifecycle::LauncherKind::Github;
        let wants_publisher = self.publisher == PublisherKind::Pages;
        if !wants_launcher && !wants_publisher {
            return Ok(CloudParts::default());
        }
        let client = self.client()?;
        Ok(CloudParts {
            launcher: wants_launcher.then(|| {
                Arc::new(self.launcher(client.clone())) as Arc<dyn crate::lifecycle::Launcher>
            }),
            publisher: if wants_publisher {
                Some(Arc::new(self.publisher(client.clone())?)
                    as Arc<dyn crate::discovery::Publisher>)
            } else {
                None
            },
            verifier: wants_launcher
                .then(|| RunVerifier::new(client, self.github_workflow.clone())),
        })
    }
}

/// The GitHub-backed parts of a node (see [`GithubArgs::cloud_parts`]).
#[derive(Default)]
pub struct CloudParts {
    /// `--launcher github`.
    pub launcher: Option<Arc<dyn crate::lifecycle::Launcher>>,
    /// `--publisher pages`.
    pub publisher: Option<Arc<dyn crate::discovery::Publisher>>,
    /// Checks a successor's `GITHUB_RUN_ID` (with `--launcher github`).
    pub verifier: Option<RunVerifier>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        github: GithubArgs,
    }

    #[test]
    fn flags_parse_and_local_needs_no_github() {
        let cli = Cli::try_parse_from([
            "x",
            "--publisher",
            "pages",
            "--pages-mode",
            "contents",
            "--pages-branch",
            "site",
            "--pages-path",
            "r/ouroboros.json",
            "--github-ref",
            "dev",
        ])
        .unwrap();
        assert_eq!(cli.github.publisher, PublisherKind::Pages);
        assert_eq!(
            cli.github.pages_mode("o/r"),
            PagesMode::Contents {
                branch: "site".into(),
                path: "r/ouroboros.json".into()
            }
        );
        let parts = GithubArgs::default()
            .cloud_parts(crate::lifecycle::LauncherKind::Local)
            .unwrap();
        assert!(parts.launcher.is_none() && parts.publisher.is_none() && parts.verifier.is_none());
        assert!(Cli::try_parse_from(["x", "--pages-mode", "ftp"]).is_err());
    }
}
