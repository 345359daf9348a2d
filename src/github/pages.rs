//! `--publisher pages`: make `ouroboros.json` public on GitHub Pages, either by committing it
//! through the Contents API (Pages served from a branch) or by dispatching `static.yml`, which
//! deploys it with the official Pages actions. A record never replaces one with a higher
//! generation.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use url::Url;

use super::client::{ContentsUpdate, DispatchedRun, GithubClient};
use super::error::GithubError;
use crate::discovery::{DiscoveryError, DiscoveryRecord, Publisher, check_replace};

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

    /// Publishes `record` unless the guard ([`check_replace`]) refuses it against the record
    /// currently published. In `contents` mode the guard runs on the record read with the
    /// `sha` that locks the write (re-read and re-checked after a conflict); in `dispatch`
    /// mode on the deployed record read back with a `?t=` cache-buster, and `static.yml`
    /// checks again right before it deploys.
    ///
    /// # Errors
    /// [`DiscoveryError::Stale`] when a newer generation (or another peer of the same
    /// generation) is published; [`DiscoveryError::Invalid`] for a bad record;
    /// [`DiscoveryError::Remote`] for GitHub failures (safe to log).
    pub async fn publish_record(
        &self,
        record: &DiscoveryRecord,
    ) -> Result<PublishOutcome, DiscoveryError> {
        record.validate()?;
        let json = record.to_json_pretty();
        if json.len() > MAX_RECORD_BYTES {
            return Err(DiscoveryError::Invalid(format!(
                "record is {} bytes; at most {MAX_RECORD_BYTES}",
                json.len()
            )));
        }
        match &self.mode {
            PagesMode::Contents { branch, path } => {
                let message = format!("ouroboros: publish generation {}", record.generation);
                let out = self
                    .client
                    .update_contents(path, Some(branch), &message, CONTENTS_ATTEMPTS, |current| {
                        if let Some(cur) = current {
                            if let Ok(published) = DiscoveryRecord::from_json(&cur.content) {
                                check_replace(&published, record).map_err(DiscoveryError::Stale)?;
                            }
                            if cur.content == json.as_bytes() {
                                return Ok(ContentsUpdate::Keep);
                            }
                        }
                        Ok::<_, DiscoveryError>(ContentsUpdate::Write(json.clone().into_bytes()))
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
                workflow, git_ref, ..
            } => {
                if let Some(published) = self.read_deployed().await {
                    check_replace(&published, record)?;
                }
                let inputs = BTreeMap::from([("record".to_string(), json)]);
                let run = self
                    .client
                    .workflow_dispatch(workflow, git_ref, &inputs, true)
                    .await
                    .map_err(remote)?;
                tracing::info!(workflow = %workflow, generation = record.generation, "Pages deploy dispatched");
                Ok(PublishOutcome::Dispatched { run })
            }
        }
    }

    /// The deployed record in dispatch mode (`None` when unreadable or absent).
    async fn read_deployed(&self) -> Option<DiscoveryRecord> {
        let PagesMode::Dispatch {
            record_url: Some(url),
            ..
        } = &self.mode
        else {
            return None;
        };
        let bytes = self.read_public(url).await?;
        DiscoveryRecord::from_json(&bytes).ok()
    }

    /// Reads the deployed record with a `?t=` cache-buster; any failure (not yet deployed,
    /// offline) returns `None`: the deploy workflow checks again before deploying.
    async fn read_public(&self, url: &Url) -> Option<Vec<u8>> {
        let mut u = url.clone();
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        u.query_pairs_mut().append_pair("t", &t.to_string());
        match self.http.get(u).send().await {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(b) if b.len() <= MAX_RECORD_BYTES => Some(b.to_vec()),
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

fn remote(e: GithubError) -> DiscoveryError {
    DiscoveryError::Remote(e.to_string())
}

impl From<GithubError> for DiscoveryError {
    fn from(e: GithubError) -> Self {
        remote(e)
    }
}

#[async_trait::async_trait]
impl Publisher for PagesPublisher {
    async fn publish(&self, record: &DiscoveryRecord) -> Result<(), DiscoveryError> {
        self.publish_record(record).await.map(|_| ())
    }

    /// Contents mode: the committed record, fresh (authenticated API, no CDN). Dispatch mode:
    /// the deployed record through the CDN with a cache-buster (`None` if not yet deployed).
    async fn current(&self) -> Result<Option<DiscoveryRecord>, DiscoveryError> {
        match &self.mode {
            PagesMode::Contents { branch, path } => {
                match self.client.get_contents(path, Some(branch)).await? {
                    Some(file) => DiscoveryRecord::from_json(&file.content).map(Some),
                    None => Ok(None),
                }
            }
            PagesMode::Dispatch { .. } => Ok(self.read_deployed().await),
        }
    }

    fn name(&self) -> &'static str {
        "pages"
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
