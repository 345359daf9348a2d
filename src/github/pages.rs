//! `--publisher pages`: make `ouroboros.json` public on GitHub Pages, either by committing it
//! through the Contents API (Pages served from a branch) or by dispatching `static.yml`, which
//! deploys it with the official Pages actions. A record never replaces one with a higher
//! generation.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use url::Url;

use super::client::{ContentsUpdate, DispatchedRun, GithubClient};
use super::error::GithubError;

/// Largest record published (it also travels as a workflow input in dispatch mode).
pub const MAX_RECORD_BYTES: usize = 32 * 1024;
/// How many times a Contents write is retried after losing a race.
pub const CONTENTS_ATTEMPTS: u32 = 5;

/// How the record reaches Pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PagesMode {
    /// Commit `path` on `branch` through the Contents API (Pages source: that branch).
    Contents {
        /// Branch written, e.g. `gh-pages`.
        branch: String,
        /// File path in the branch, e.g. `ouroboros.json`.
        path: String,
    },
    /// Dispatch `workflow` (`static.yml`) on `git_ref` with the record as the `record` input.
    Dispatch {
        /// Workflow file.
        workflow: String,
        /// Ref to run it on.
        git_ref: String,
        /// Where the deployed record is read back for the generation check
        /// (`https://{owner}.github.io/{repo}/ouroboros.json`); `None` skips the read.
        record_url: Option<Url>,
    },
}

/// Why a record was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The published record has a higher generation: this node is stale.
    #[error("refusing to publish generation {ours}: generation {published} is already published")]
    Stale {
        /// The generation we tried to publish.
        ours: u64,
        /// The generation found.
        published: u64,
    },
    /// The record itself is unusable.
    #[error("invalid discovery record: {0}")]
    InvalidRecord(String),
    /// GitHub said no.
    #[error(transparent)]
    Github(#[from] GithubError),
}

/// What publishing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Committed through the Contents API.
    Committed {
        /// The commit.
        commit_sha: String,
    },
    /// The branch already holds exactly this record.
    Unchanged,
    /// `static.yml` was dispatched (the deploy takes about a minute).
    Dispatched {
        /// The deploy run, when the server told us.
        run: Option<DispatchedRun>,
    },
}

/// The `generation` of a published record, if it has one.
pub fn record_generation(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()?
        .get("generation")?
        .as_u64()
}

/// The default public URL of the record for `owner/name`.
pub fn default_record_url(repository: &str) -> Option<Url> {
    let (owner, name) = repository.split_once('/')?;
    let owner = owner.to_ascii_lowercase();
    let s = if name.eq_ignore_ascii_case(&format!("{owner}.github.io")) {
        format!("https://{owner}.github.io/ouroboros.json")
    } else {
        format!("https://{owner}.github.io/{name}/ouroboros.json")
    };
    Url::parse(&s).ok()
}

/// Publishes discovery records to GitHub Pages.
#[derive(Debug, Clone)]
pub struct PagesPublisher {
    client: Arc<GithubClient>,
    mode: PagesMode,
    http: reqwest::Client,
}

impl PagesPublisher {
    /// A publisher writing through `client` in `mode`.
    pub fn new(client: Arc<GithubClient>, mode: PagesMode) -> Result<Self, GithubError> {
        let http = crate::tunnel::node_http_client_builder()
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| GithubError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(PagesPublisher { client, mode, http })
    }

    /// The mode.
    pub fn mode(&self) -> &PagesMode {
        &self.mode
    }

    /// Publishes `record_json` (whose `generation` must be `generation`), unless a record of a
    /// higher generation is already there.
    pub async fn publish(
        &self,
        record_json: &[u8],
        generation: u64,
    ) -> Result<PublishOutcome, PublishError> {
        if record_json.len() > MAX_RECORD_BYTES {
            return Err(PublishError::InvalidRecord(format!(
                "{} bytes; at most {MAX_RECORD_BYTES}",
                record_json.len()
            )));
        }
        let value: serde_json::Value = serde_json::from_slice(record_json)
            .map_err(|e| PublishError::InvalidRecord(format!("not JSON: {e}")))?;
        if !value.is_object() {
            return Err(PublishError::InvalidRecord("not a JSON object".into()));
        }
        match value.get("generation").map(|g| g.as_u64()) {
            None => {}
            Some(Some(g)) if g == generation => {}
            Some(g) => {
                return Err(PublishError::InvalidRecord(format!(
                    "record says generation {g:?}, publisher was told {generation}"
                )));
            }
        }
        match &self.mode {
            PagesMode::Contents { branch, path } => {
                let message = format!("ouroboros: publish generation {generation}");
                let out = self
                    .client
                    .update_contents(path, Some(branch), &message, CONTENTS_ATTEMPTS, |current| {
                        if let Some(cur) = current {
                            if let Some(published) = record_generation(&cur.content)
                                && published > generation
                            {
                                return Err(PublishError::Stale {
                                    ours: generation,
                                    published,
                                });
                            }
                            if cur.content == record_json {
                                return Ok(ContentsUpdate::Keep);
                            }
                        }
                        Ok(ContentsUpdate::Write(record_json.to_vec()))
                    })
                    .await?;
                Ok(match out {
                    Some(p) => PublishOutcome::Committed {
                        commit_sha: p.commit_sha,
                    },
                    None => PublishOutcome::Unchanged,
                })
            }
            PagesMode::Dispatch {
                workflow,
                git_ref,
                record_url,
            } => {
                if let Some(url) = record_url
                    && let Some(published) = self.read_published_generation(url).await
                    && published > generation
                {
                    return Err(PublishError::Stale {
                        ours: generation,
                        published,
                    });
                }
                let record = String::from_utf8(record_json.to_vec())
                    .map_err(|_| PublishError::InvalidRecord("not UTF-8".into()))?;
                let inputs = BTreeMap::from([("record".to_string(), record)]);
                let run = self
                    .client
                    .workflow_dispatch(workflow, git_ref, &inputs, true)
                    .await?;
                Ok(PublishOutcome::Dispatched { run })
            }
        }
    }

    /// Reads the deployed record's generation with a `?t=` cache-buster; any failure (not yet
    /// deployed, offline) returns `None`: the deploy workflow checks again before deploying.
    async fn read_published_generation(&self, url: &Url) -> Option<u64> {
        let mut u = url.clone();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        u.query_pairs_mut().append_pair("t", &t.to_string());
        match self.http.get(u).send().await {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(b) if b.len() <= MAX_RECORD_BYTES => record_generation(&b),
                _ => None,
            },
            Ok(r) => {
                tracing::debug!(status = r.status().as_u16(), %url, "no published record to compare with");
                None
            }
            Err(e) => {
                tracing::warn!(%url, error = %e, "cannot read the published record; the deploy workflow re-checks");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_of_records() {
        assert_eq!(
            record_generation(br#"{"generation":4,"peer_id":"x"}"#),
            Some(4)
        );
        assert_eq!(record_generation(br#"{"peer_id":"x"}"#), None);
        assert_eq!(record_generation(b"not json"), None);
    }

    #[test]
    fn record_urls() {
        assert_eq!(
            default_record_url("Me/ring").unwrap().as_str(),
            "https://me.github.io/ring/ouroboros.json"
        );
        assert_eq!(
            default_record_url("me/me.github.io").unwrap().as_str(),
            "https://me.github.io/ouroboros.json"
        );
        assert!(default_record_url("bad").is_none());
    }
}
