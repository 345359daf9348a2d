//! One TLS trust policy for every outgoing connection: the platform's verifier (the OS trust
//! store, through `rustls-platform-verifier`) plus, optionally, extra root certificates given
//! as PEM (`PeerConfig::tls_root_pem`, for a self-hosted server with a private CA). The same
//! [`rustls::ClientConfig`] serves the WebSocket (tokio-tungstenite's rustls connector) and
//! HTTP (reqwest), so a private CA works for the id fetch and the socket alike.
//!
//! Loading the platform roots reads the OS store: the configuration without extra roots is
//! built once per process and shared ([`client_config`]), and so is one HTTP client
//! ([`http_client`]).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Why a TLS client configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The extra roots are not PEM, or hold no `CERTIFICATE` block.
    #[error("extra root certificates: {0}")]
    Pem(String),
    /// rustls refused a root or the platform store could not be loaded.
    #[error("TLS client configuration: {0}")]
    Config(String),
}

/// The `CERTIFICATE` blocks of `pem` (other blocks are skipped).
///
/// # Errors
/// [`TlsError::Pem`] if a block is malformed or there is no certificate.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn build(extra: Vec<CertificateDer<'static>>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| TlsError::Config(e.to_string()))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous() // not dangerous: the platform verifier does full WebPKI verification
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The client configuration trusting the platform's roots plus the certificates in
/// `extra_roots_pem`. Without extra roots the process-wide configuration is returned (built on
/// first use). No ALPN is set: a WebSocket must stay on HTTP/1.1 ([`http_client_builder`] adds
/// `h2` for HTTP).
///
/// # Errors
/// [`TlsError::Pem`] for unreadable extra roots; [`TlsError::Config`] if rustls refuses a root
/// or no root at all could be loaded (no OS store and no extra roots).
pub fn client_config(extra_roots_pem: Option<&str>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    match extra_roots_pem {
        Some(pem) => build(pem_certificates(pem.as_bytes())?),
        None => {
            static DEFAULT: OnceLock<Result<Arc<rustls::ClientConfig>, TlsError>> = OnceLock::new();
            DEFAULT.get_or_init(|| build(Vec::new())).clone()
        }
    }
}

/// A reqwest builder that uses `config` (with ALPN `h2`, `http/1.1`) for `https`.
pub fn http_client_builder(config: &rustls::ClientConfig) -> reqwest::ClientBuilder {
    let mut config = config.clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder().tls_backend_preconfigured(config)
}

/// The process-wide HTTP client for occasional requests (discovery records, id fetches): the
/// default trust policy, a 10 s timeout per request unless the request sets its own. It keeps
/// no idle connections, so it can be used from any Tokio runtime (a pooled connection would
/// belong to the runtime that opened it).
///
/// # Errors
/// [`TlsError::Config`] if the platform trust store cannot be loaded.
pub fn http_client() -> Result<reqwest::Client, TlsError> {
    static CLIENT: OnceLock<Result<reqwest::Client, TlsError>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            http_client_builder(&*client_config(None)?)
                .timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(0)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))
        })
        .clone()
}

/// A WebSocket opened by [`connect_websocket`].
pub type ClientWebSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Why [`connect_websocket`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WebSocketConnectError {
    /// No TLS client configuration (for `wss://`).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The connection or the WebSocket handshake failed.
    #[error("{0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// Opens a WebSocket (`ws://` or `wss://`) under the one trust policy: `wss://` verifies
/// the server with [`client_config`]`(extra_roots_pem)`, exactly as the id fetch and the
/// signaling socket do.
///
/// # Errors
/// [`WebSocketConnectError`]: no TLS configuration, or the connection or handshake failed.
pub async fn connect_websocket(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    config: Option<tokio_tungstenite::tungstenite::protocol::WebSocketConfig>,
    extra_roots_pem: Option<&str>,
) -> Result<ClientWebSocket, WebSocketConnectError> {
    let connector = if request.uri().scheme_str() == Some("wss") {
        Some(tokio_tungstenite::Connector::Rustls(client_config(
            extra_roots_pem,
        )?))
    } else {
        None
    };
    let (ws, _response) =
        tokio_tungstenite::connect_async_tls_with_config(request, config, true, connector).await?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_without_certificates_is_refused() {
        assert!(matches!(
            pem_certificates(b"not a pem"),
            Err(TlsError::Pem(_))
        ));
        let key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(pem_certificates(key_only), Err(TlsError::Pem(_))));
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(pem_certificates(broken), Err(TlsError::Pem(_))));
    }
}
