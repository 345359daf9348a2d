//! Errors of the GitHub client, and the pure mapping from an HTTP answer to one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;

/// Longest excerpt of a response body kept in an error message.
const MAX_MESSAGE_CHARS: usize = 300;

/// Wait GitHub asks for after a secondary rate limit that names no time ("wait at least one minute").
pub const SECONDARY_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// What went wrong talking to GitHub. Messages never contain the token: bodies are redacted
/// before they are stored, and the token itself is never part of a request URL.
#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    /// A setting is missing or malformed (e.g. `GITHUB_REPOSITORY` not `owner/name`).
    #[error("GitHub client configuration: {0}")]
    Config(String),
    /// A request was refused locally because it would break a documented GitHub limit.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// 401: the token is missing, expired or wrong.
    #[error("GitHub rejected the token (401 Unauthorized): {message}")]
    Unauthorized {
        /// GitHub's `message`.
        message: String,
    },
    /// 403 that is not a rate limit: the token lacks a permission (e.g. `actions: write`).
    #[error(
        "GitHub refused the request (403 Forbidden; check the workflow's `permissions:`): {message}"
    )]
    Forbidden {
        /// GitHub's `message`.
        message: String,
    },
    /// 404: unknown repository, workflow file, branch, path or run (or no access to it).
    #[error("not found on GitHub (404): {message}")]
    NotFound {
        /// GitHub's `message`.
        message: String,
    },
    /// 409: a write raced another one (stale `sha` in the Contents API).
    #[error("conflict (409): {message}")]
    Conflict {
        /// GitHub's `message`.
        message: String,
    },
    /// 422 (or 400): GitHub refused the body — unknown workflow input, missing `ref`, bad `sha`.
    #[error("GitHub refused the request ({status} validation failed): {message}")]
    Unprocessable {
        /// 422, or 400 from servers that do not know a field.
        status: u16,
        /// GitHub's `message`.
        message: String,
    },
    /// 429, or 403 with rate-limit headers: primary or secondary rate limit.
    #[error(
        "GitHub rate limit ({status}{}): retry after {retry_after:?}, remaining {remaining:?}, reset {reset:?}: {message}",
        if *secondary { ", secondary" } else { "" }
    )]
    RateLimited {
        /// 429 or 403.
        status: u16,
        /// How long to wait before retrying, from `retry-after` or `x-ratelimit-reset`.
        retry_after: Option<Duration>,
        /// `x-ratelimit-remaining`.
        remaining: Option<u64>,
        /// `x-ratelimit-reset` (Unix seconds).
        reset: Option<u64>,
        /// A secondary (abuse) limit rather than the hourly quota.
        secondary: bool,
        /// GitHub's `message`.
        message: String,
    },
    /// Any other non-success status (5xx, unexpected 3xx).
    #[error("unexpected GitHub status {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// GitHub's `message` or a body excerpt.
        message: String,
    },
    /// The request did not complete (DNS, connect, TLS, timeout).
    #[error("network error talking to GitHub: {0}")]
    Network(String),
    /// The answer was not what the documented contract promises.
    #[error("unexpected GitHub response: {0}")]
    Decode(String),
}

impl GithubError {
    /// The HTTP status this error came from, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            GithubError::Unauthorized { .. } => Some(401),
            GithubError::Forbidden { .. } => Some(403),
            GithubError::NotFound { .. } => Some(404),
            GithubError::Conflict { .. } => Some(409),
            GithubError::Unprocessable { status, .. }
            | GithubError::RateLimited { status, .. }
            | GithubError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether a write failed because another writer got there first (409, or the 422 GitHub
    /// sends for a missing/mismatched `sha`): re-read and try again.
    pub fn is_conflict(&self) -> bool {
        match self {
            GithubError::Conflict { .. } => true,
            GithubError::Unprocessable {
                status: 422,
                message,
            } => {
                let m = message.to_ascii_lowercase();
                m.contains("sha") || m.contains("does not match")
            }
            _ => false,
        }
    }
}

/// Replaces every occurrence of `secret` in `text` (no-op for an empty secret).
pub(crate) fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "***")
    }
}

/// GitHub's error `message` from a body, or a short excerpt of the body.
pub(crate) fn body_message(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        message: Option<String>,
    }
    let text = match serde_json::from_str::<ErrorBody>(body) {
        Ok(ErrorBody { message: Some(m) }) => m,
        _ => body.trim().to_string(),
    };
    if text.chars().count() > MAX_MESSAGE_CHARS {
        let mut t: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        t.push('…');
        t
    } else if text.is_empty() {
        "(empty body)".to_string()
    } else {
        text
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Maps a non-success answer to an error. `message` is already redacted. `now` is the wall
/// clock used to turn `x-ratelimit-reset` into a wait.
pub(crate) fn classify(
    status: u16,
    headers: &HeaderMap,
    message: String,
    now: SystemTime,
) -> GithubError {
    let retry_after_secs = header_u64(headers, "retry-after");
    let remaining = header_u64(headers, "x-ratelimit-remaining");
    let reset = header_u64(headers, "x-ratelimit-reset");
    let lower = message.to_ascii_lowercase();
    let rate_limited = status == 429
        || (status == 403
            && (retry_after_secs.is_some()
                || remaining == Some(0)
                || lower.contains("rate limit")));
    if rate_limited {
        let secondary =
            lower.contains("secondary") || (remaining != Some(0) && retry_after_secs.is_some());
        let retry_after = if let Some(s) = retry_after_secs {
            Some(Duration::from_secs(s))
        } else if remaining == Some(0) {
            reset.map(|r| {
                let now_s = now
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                Duration::from_secs(r.saturating_sub(now_s).max(1))
            })
        } else {
            Some(SECONDARY_LIMIT_WAIT)
        };
        return GithubError::RateLimited {
            status,
            retry_after,
            remaining,
            reset,
            secondary,
            message,
        };
    }
    match status {
        401 => GithubError::Unauthorized { message },
        403 => GithubError::Forbidden { message },
        404 => GithubError::NotFound { message },
        409 => GithubError::Conflict { message },
        400 | 422 => GithubError::Unprocessable { status, message },
        _ => GithubError::Status { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const NOW: u64 = 1_800_000_000;
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn maps_plain_statuses() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify(401, &h, "Bad credentials".into(), now()),
            GithubError::Unauthorized { .. }
        ));
        assert!(matches!(
            classify(
                403,
                &h,
                "Resource not accessible by integration".into(),
                now()
            ),
            GithubError::Forbidden { .. }
        ));
        assert!(matches!(
            classify(404, &h, "Not Found".into(), now()),
            GithubError::NotFound { .. }
        ));
        assert!(matches!(
            classify(409, &h, "x".into(), now()),
            GithubError::Conflict { .. }
        ));
        assert!(matches!(
            classify(422, &h, "x".into(), now()),
            GithubError::Unprocessable { status: 422, .. }
        ));
        assert!(matches!(
            classify(502, &h, "x".into(), now()),
            GithubError::Status { status: 502, .. }
        ));
    }

    #[test]
    fn secondary_limit_with_retry_after() {
        let h = headers(&[("retry-after", "7"), ("x-ratelimit-remaining", "4000")]);
        match classify(
            403,
            &h,
            "You have exceeded a secondary rate limit".into(),
            now(),
        ) {
            GithubError::RateLimited {
                retry_after,
                secondary,
                remaining,
                ..
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)));
                assert!(secondary);
                assert_eq!(remaining, Some(4000));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn primary_limit_waits_until_reset() {
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &(NOW + 42).to_string()),
        ]);
        match classify(403, &h, "API rate limit exceeded".into(), now()) {
            GithubError::RateLimited {
                retry_after,
                secondary,
                ..
            } => {
                assert_eq!(retry_after, Some(Duration::from_secs(42)));
                assert!(!secondary);
            }
            e => panic!("{e:?}"),
        }
        // A reset in the past still waits a moment rather than hammering.
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", &(NOW - 5).to_string()),
        ]);
        match classify(429, &h, "x".into(), now()) {
            GithubError::RateLimited { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(1)))
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn secondary_limit_without_headers_waits_a_minute() {
        match classify(429, &HeaderMap::new(), "slow down".into(), now()) {
            GithubError::RateLimited { retry_after, .. } => {
                assert_eq!(retry_after, Some(SECONDARY_LIMIT_WAIT))
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn conflict_detection() {
        assert!(
            GithubError::Conflict {
                message: String::new()
            }
            .is_conflict()
        );
        assert!(
            GithubError::Unprocessable {
                status: 422,
                message: "Invalid request.\n\n\"sha\" wasn't supplied.".into()
            }
            .is_conflict()
        );
        assert!(
            !GithubError::Unprocessable {
                status: 422,
                message: "Unexpected inputs provided".into()
            }
            .is_conflict()
        );
    }

    #[test]
    fn body_message_and_redaction() {
        assert_eq!(
            body_message(r#"{"message":"Bad credentials","documentation_url":"x"}"#),
            "Bad credentials"
        );
        assert_eq!(body_message(""), "(empty body)");
        assert!(body_message(&"a".repeat(1000)).chars().count() <= MAX_MESSAGE_CHARS + 1);
        assert_eq!(redact("token ghs_abc here", "ghs_abc"), "token *** here");
        assert_eq!(redact("x", ""), "x");
    }
}
