//! Optional public reachability for the node's HTTP/WebSocket server (ngrok).
//!
//! A tunnel is a bonus, never a requirement: [`establish`] turns every failure (no token, no
//! network, timeout, refused domain) into [`TunnelStatus::Failed`] and the node keeps serving
//! locally and through the PeerJS cloud, saying so in its logs and `/status`.

use std::{net::SocketAddr, time::Duration};

use async_trait::async_trait;
use ngrok::{
    config::ForwarderBuilder,
    prelude::{EndpointInfo, TunnelCloser},
};
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Serialize;
use url::Url;

/// Header that makes ngrok's free plan skip its browser warning page. Every node-to-node and
/// Rust-client HTTP request sends it (browsers' `WebSocket` cannot).
pub const SKIP_BROWSER_WARNING_HEADER: &str = "ngrok-skip-browser-warning";

/// Default `--tunnel-timeout`.
pub const DEFAULT_TUNNEL_TIMEOUT: Duration = Duration::from_secs(20);

/// A reqwest client builder for node-to-node requests: the shared trust policy
/// ([`crate::tls`]), `ngrok-skip-browser-warning: 1` and an `ouroboros/<version>` User-Agent on
/// every request.
pub fn node_http_client_builder() -> reqwest::ClientBuilder {
    let mut headers = HeaderMap::new();
    headers.insert(SKIP_BROWSER_WARNING_HEADER, HeaderValue::from_static("1"));
    let builder = match crate::tls::client_config(None) {
        Ok(tls) => crate::tls::http_client_builder(&tls),
        // Without a platform trust store, reqwest's own `build()` reports the same failure.
        Err(_) => reqwest::Client::builder(),
    };
    builder
        .default_headers(headers)
        .user_agent(concat!("ouroboros/", env!("CARGO_PKG_VERSION")))
}

/// Extra HTTP headers for the native peer's signaling requests (`PeerConfig::http_headers`):
/// the ngrok skip header, so a node reaching another node's signaling server through its ngrok
/// URL never gets the warning page.
pub fn node_http_headers() -> Vec<(String, String)> {
    vec![(SKIP_BROWSER_WARNING_HEADER.to_string(), "1".to_string())]
}

/// Which tunnel `ouroboros node` opens.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelKind {
    /// No tunnel: reachable locally and through the PeerJS cloud only.
    #[default]
    None,
    /// An ngrok HTTP endpoint forwarding to the local server (`NGROK_AUTHTOKEN`).
    Ngrok,
}

/// Tunnel flags of `ouroboros node`.
#[derive(clap::Args, Debug, Clone)]
pub struct TunnelArgs {
    /// Public tunnel to open in front of the local server.
    #[arg(long = "tunnel", value_enum, env = "OUROBOROS_TUNNEL", default_value_t = TunnelKind::None)]
    pub kind: TunnelKind,
    /// ngrok domain to bind (with endpoint pooling, so a successor can take over the same URL).
    #[arg(long, env = "NGROK_DOMAIN")]
    pub ngrok_domain: Option<String>,
    /// How long to wait for the tunnel before serving without it (e.g. `20s`).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    pub tunnel_timeout: Duration,
    /// ngrok ingress to dial instead of ngrok's own (`host:port`; a custom agent ingress).
    #[arg(long, env = "OUROBOROS_NGROK_SERVER_ADDR", hide_short_help = true)]
    pub ngrok_server_addr: Option<String>,
}

impl Default for TunnelArgs {
    fn default() -> Self {
        TunnelArgs {
            kind: TunnelKind::None,
            ngrok_domain: None,
            tunnel_timeout: DEFAULT_TUNNEL_TIMEOUT,
            ngrok_server_addr: None,
        }
    }
}

impl TunnelArgs {
    /// The tunnel these flags describe.
    pub fn build(&self) -> Box<dyn Tunnel> {
        match self.kind {
            TunnelKind::None => Box::new(NoTunnel),
            TunnelKind::Ngrok => {
                let t = NgrokTunnel::from_env(self.ngrok_domain.clone(), self.tunnel_timeout);
                Box::new(match &self.ngrok_server_addr {
                    Some(a) => t.with_server_addr(a.clone()),
                    None => t,
                })
            }
        }
    }
}

/// The tunnel's state, as shown in `/status` and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TunnelStatus {
    /// `--tunnel none`.
    Disabled,
    /// Forwarding from `url`.
    Up {
        /// The public URL, e.g. `https://xyz.ngrok-free.dev`.
        url: String,
    },
    /// Could not open; the node serves without it.
    Failed {
        /// Why, in one line (never the token).
        reason: String,
    },
}

impl TunnelStatus {
    /// The public URL when up.
    pub fn url(&self) -> Option<&str> {
        match self {
            TunnelStatus::Up { url } => Some(url),
            _ => None,
        }
    }

    /// The signaling endpoint a client reaches through the tunnel (for the discovery record),
    /// given the server's `path` and `key`; `None` unless up with an http(s) URL.
    pub fn signaling_endpoint(
        &self,
        path: &str,
        key: &str,
    ) -> Option<crate::discovery::SignalingEndpoint> {
        let url = Url::parse(self.url()?).ok()?;
        let secure = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return None,
        };
        Some(crate::discovery::SignalingEndpoint {
            host: url.host_str()?.to_string(),
            port: url.port_or_known_default()?,
            path: path.to_string(),
            key: key.to_string(),
            secure,
            peer_id: None,
        })
    }
}

impl std::fmt::Display for TunnelStatus {
    /// One line for `/status` and logs: `none`, `up <url>`, `failed: <reason>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelStatus::Disabled => f.write_str("none"),
            TunnelStatus::Up { url } => write!(f, "up {url}"),
            TunnelStatus::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

/// Why a tunnel did not open.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// `NGROK_AUTHTOKEN` is missing.
    #[error("NGROK_AUTHTOKEN is not set")]
    MissingToken,
    /// A setting is unusable (bad server address).
    #[error("invalid tunnel setting: {0}")]
    Config(String),
    /// The ngrok session did not connect (network, TLS, authentication).
    #[error("ngrok session failed: {0}")]
    Connect(String),
    /// The endpoint was refused (domain not yours, pooling not allowed, limits).
    #[error("ngrok endpoint refused: {0}")]
    Endpoint(String),
    /// Nothing happened within the connect timeout.
    #[error("ngrok did not connect within {0:?}")]
    Timeout(Duration),
}

/// An open tunnel; dropping it closes it (asynchronously), [`TunnelHandle::close`] waits.
pub struct TunnelHandle {
    url: String,
    inner: HandleInner,
}

enum HandleInner {
    Ngrok {
        /// Kept alive for the forwarder's lifetime.
        _session: ngrok::Session,
        forwarder: ngrok::forwarder::Forwarder<ngrok::tunnel::HttpTunnel>,
    },
}

impl std::fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelHandle")
            .field("url", &self.url)
            .finish()
    }
}

impl TunnelHandle {
    /// The public URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Closes the endpoint so new connections go to a pooled successor (or nowhere).
    pub async fn close(self) {
        match self.inner {
            HandleInner::Ngrok { mut forwarder, .. } => {
                if let Err(e) = forwarder.close().await {
                    tracing::warn!(error = %e, "closing the ngrok endpoint failed");
                }
            }
        }
    }
}

/// Something that can make a local HTTP server publicly reachable.
#[async_trait]
pub trait Tunnel: Send + Sync {
    /// Short name for logs (`none`, `ngrok`).
    fn name(&self) -> &'static str;
    /// Opens the tunnel to `local` (e.g. `http://127.0.0.1:9000`). `Ok(None)`: no tunnel wanted.
    async fn open(&self, local: &Url) -> Result<Option<TunnelHandle>, TunnelError>;
}

/// `--tunnel none`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTunnel;

#[async_trait]
impl Tunnel for NoTunnel {
    fn name(&self) -> &'static str {
        "none"
    }
    async fn open(&self, _local: &Url) -> Result<Option<TunnelHandle>, TunnelError> {
        Ok(None)
    }
}

/// `--tunnel ngrok`: an ngrok HTTP endpoint (optionally on `domain`, pooled) forwarding to the
/// local server. WebSocket upgrades pass through the forwarder.
#[derive(Clone)]
pub struct NgrokTunnel {
    authtoken: Option<String>,
    domain: Option<String>,
    timeout: Duration,
    server_addr: Option<String>,
}

impl std::fmt::Debug for NgrokTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NgrokTunnel")
            .field("authtoken", &self.authtoken.as_ref().map(|_| "***"))
            .field("domain", &self.domain)
            .field("timeout", &self.timeout)
            .field("server_addr", &self.server_addr)
            .finish()
    }
}

impl NgrokTunnel {
    /// Reads `NGROK_AUTHTOKEN`; `domain` from `--ngrok-domain`/`NGROK_DOMAIN`.
    pub fn from_env(domain: Option<String>, timeout: Duration) -> Self {
        let authtoken = std::env::var("NGROK_AUTHTOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        Self::new(authtoken, domain, timeout)
    }

    /// An explicit configuration.
    pub fn new(authtoken: Option<String>, domain: Option<String>, timeout: Duration) -> Self {
        NgrokTunnel {
            authtoken,
            domain: domain.filter(|d| !d.trim().is_empty()),
            timeout,
            server_addr: None,
        }
    }

    /// Dials `addr` (`host:port`) instead of ngrok's ingress (a custom agent ingress; tests).
    pub fn with_server_addr(mut self, addr: impl Into<String>) -> Self {
        self.server_addr = Some(addr.into());
        self
    }

    async fn open_inner(&self, local: &Url) -> Result<TunnelHandle, TunnelError> {
        let token = self.authtoken.as_ref().ok_or(TunnelError::MissingToken)?;
        let mut builder = ngrok::Session::builder();
        builder.authtoken(token.clone());
        if let Some(addr) = &self.server_addr {
            builder
                .server_addr(addr.clone())
                .map_err(|e| TunnelError::Config(e.to_string()))?;
        }
        let session = builder
            .connect()
            .await
            .map_err(|e| TunnelError::Connect(redacted_chain(&e, token)))?;
        let mut endpoint = session.http_endpoint();
        if let Some(domain) = &self.domain {
            endpoint.domain(domain.clone()).pooling_enabled(true);
        }
        let forwarder = endpoint
            .listen_and_forward(local.clone())
            .await
            .map_err(|e| TunnelError::Endpoint(redacted_chain(&e, token)))?;
        Ok(TunnelHandle {
            url: forwarder.url().to_string(),
            inner: HandleInner::Ngrok {
                _session: session,
                forwarder,
            },
        })
    }
}

#[async_trait]
impl Tunnel for NgrokTunnel {
    fn name(&self) -> &'static str {
        "ngrok"
    }
    async fn open(&self, local: &Url) -> Result<Option<TunnelHandle>, TunnelError> {
        match tokio::time::timeout(self.timeout, self.open_inner(local)).await {
            Ok(r) => r.map(Some),
            Err(_) => Err(TunnelError::Timeout(self.timeout)),
        }
    }
}

/// The URL a tunnel forwards to for a server bound on `addr` (unspecified addresses become
/// loopback).
pub fn local_url(addr: SocketAddr) -> Url {
    let ip = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            SocketAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        addr.ip()
    };
    Url::parse(&format!("http://{}", SocketAddr::new(ip, addr.port())))
        .expect("a socket address makes a valid URL")
}

/// Opens `tunnel` to the server on `local`, never failing: logs the outcome and returns the
/// status for `/status` plus the handle to keep (and close at the end).
pub async fn establish(
    tunnel: &dyn Tunnel,
    local: SocketAddr,
) -> (TunnelStatus, Option<TunnelHandle>) {
    let url = local_url(local);
    match tunnel.open(&url).await {
        Ok(None) => (TunnelStatus::Disabled, None),
        Ok(Some(handle)) => {
            tracing::info!(tunnel = tunnel.name(), url = handle.url(), local = %url, "tunnel up");
            (
                TunnelStatus::Up {
                    url: handle.url().to_string(),
                },
                Some(handle),
            )
        }
        Err(e) => {
            tracing::warn!(
                tunnel = tunnel.name(),
                error = %e,
                "tunnel failed; serving locally and through the PeerJS cloud only"
            );
            (
                TunnelStatus::Failed {
                    reason: e.to_string(),
                },
                None,
            )
        }
    }
}

/// An error and its sources on one line (reqwest and ngrok hide the cause in `source()`).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn redacted_chain(e: &dyn std::error::Error, secret: &str) -> String {
    let s = error_chain(e);
    if secret.is_empty() {
        s
    } else {
        s.replace(secret, "***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_url_maps_unspecified_to_loopback() {
        assert_eq!(
            local_url("0.0.0.0:9000".parse().unwrap()).as_str(),
            "http://127.0.0.1:9000/"
        );
        assert_eq!(
            local_url("[::]:80".parse().unwrap()).as_str(),
            "http://[::1]/"
        );
        assert_eq!(
            local_url("10.0.0.2:1".parse().unwrap()).as_str(),
            "http://10.0.0.2:1/"
        );
    }

    #[test]
    fn status_serializes_for_status_page() {
        assert_eq!(
            serde_json::to_value(TunnelStatus::Disabled).unwrap(),
            serde_json::json!({"state":"disabled"})
        );
        assert_eq!(
            serde_json::to_value(TunnelStatus::Up {
                url: "https://a".into()
            })
            .unwrap(),
            serde_json::json!({"state":"up","url":"https://a"})
        );
    }

    #[test]
    fn tunnel_url_becomes_a_signaling_endpoint() {
        let up = TunnelStatus::Up {
            url: "https://abc.ngrok-free.dev".into(),
        };
        let ep = up.signaling_endpoint("/", "peerjs").unwrap();
        assert_eq!(
            (ep.host.as_str(), ep.port, ep.secure),
            ("abc.ngrok-free.dev", 443, true)
        );
        assert_eq!((ep.path.as_str(), ep.key.as_str()), ("/", "peerjs"));
        let ep = TunnelStatus::Up {
            url: "http://127.0.0.1:8080".into(),
        }
        .signaling_endpoint("/p/", "k")
        .unwrap();
        assert_eq!((ep.port, ep.secure), (8080, false));
        assert!(
            TunnelStatus::Disabled
                .signaling_endpoint("/", "peerjs")
                .is_none()
        );
        assert!(
            TunnelStatus::Up {
                url: "tcp://1.2.3.4:5".into()
            }
            .signaling_endpoint("/", "k")
            .is_none()
        );
        assert_eq!(
            node_http_headers(),
            vec![(SKIP_BROWSER_WARNING_HEADER.to_string(), "1".to_string())]
        );
    }

    #[test]
    fn debug_hides_authtoken() {
        let t = NgrokTunnel::new(Some("2abcSECRET".into()), None, DEFAULT_TUNNEL_TIMEOUT);
        assert!(!format!("{t:?}").contains("SECRET"));
    }

    #[tokio::test]
    async fn missing_token_fails_without_network() {
        let t = NgrokTunnel::new(None, None, DEFAULT_TUNNEL_TIMEOUT);
        let (status, handle) = establish(&t, "127.0.0.1:9".parse().unwrap()).await;
        assert!(handle.is_none());
        assert_eq!(
            status,
            TunnelStatus::Failed {
                reason: "NGROK_AUTHTOKEN is not set".into()
            }
        );
        let (status, _) = establish(&NoTunnel, "127.0.0.1:9".parse().unwrap()).await;
        assert_eq!(status, TunnelStatus::Disabled);
    }
}
