//! The listener (plain TCP or TLS, accept with back-off) and [`serve`]: the accept loop that
//! serves each connection with hyper (header-read timeout, upgrades, graceful shutdown).
//! `server.rs` keeps the routes and the per-socket driver.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo, serve::Listener};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer,
    pem::{self, PemObject},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower_layer::Layer;
use tracing::{debug, info, warn};

use super::{
    SignalError,
    config::SignalConfig,
    server::{RemoteAddr, Shared},
};

/// How long `serve` waits for HTTP connections and sockets to close after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// TLS handshakes that take longer are abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound listening socket, plain or TLS. Create it with [`super::bind`], serve it with
/// [`super::Signaling::serve`].
pub struct SignalListener {
    tcp: TcpListener,
    addr: SocketAddr,
    tls: Option<TlsState>,
}

struct TlsState {
    acceptor: TlsAcceptor,
    done_tx: mpsc::Sender<(MaybeTls, RemoteAddr)>,
    done_rx: mpsc::Receiver<(MaybeTls, RemoteAddr)>,
}

impl std::fmt::Debug for SignalListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalListener")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl SignalListener {
    pub(crate) async fn bind(config: &SignalConfig) -> Result<SignalListener, SignalError> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(load_tls(cert, key)?),
            None => None,
        };
        let tcp = TcpListener::bind((config.host.as_str(), config.port)).await?;
        let addr = tcp.local_addr()?;
        Ok(SignalListener {
            tcp,
            addr,
            tls: tls.map(|acceptor| {
                let (done_tx, done_rx) = mpsc::channel(64);
                TlsState {
                    acceptor,
                    done_tx,
                    done_rx,
                }
            }),
        })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `http://ADDR{path}` (`https` with TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}{}", self.addr, path)
    }
}

fn load_tls(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, SignalError> {
    let tls_err = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        SignalError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err("cannot open", cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err("cannot read certificates from", cert, &e))?;
    if certs.is_empty() {
        return Err(SignalError::Tls(format!(
            "no certificate in {}",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            SignalError::Tls(format!("no private key in {}", key.display()))
        }
        e => tls_err("cannot read the key from", key, &e),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SignalError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| SignalError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn accept_tcp(tcp: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match tcp.accept().await {
            Ok((s, a)) => {
                let _ = s.set_nodelay(true);
                return (s, a);
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Listener for SignalListener {
    type Io = MaybeTls;
    type Addr = RemoteAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let Some(tls) = &mut self.tls else {
            let (s, a) = accept_tcp(&self.tcp).await;
            return (MaybeTls::Plain(s), RemoteAddr(a));
        };
        loop {
            tokio::select! {
                Some(done) = tls.done_rx.recv() => return done,
                (s, a) = accept_tcp(&self.tcp) => {
                    let acceptor = tls.acceptor.clone();
                    let tx = tls.done_tx.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(s)).await {
                            Ok(Ok(t)) => {
                                let _ = tx.send((MaybeTls::Tls(Box::new(t)), RemoteAddr(a))).await;
                            }
                            Ok(Err(e)) => debug!(%a, "TLS handshake failed: {e}"),
                            Err(_) => debug!(%a, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(RemoteAddr(self.addr))
    }
}

/// A plain or TLS connection.
#[derive(Debug)]
pub enum MaybeTls {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// HTTP request in progress finish, closes every WebSocket with 1001 and waits (bounded by
/// [`SHUTDOWN_GRACE`]) for both.
///
/// Each connection is served by hyper with a timer (axum's `serve` installs none), so a client
/// that has not sent its complete request headers within `config.header_read_timeout` is
/// disconnected instead of holding a socket forever. The remote address reaches the routes as
/// `ConnectInfo<RemoteAddr>`; WebSocket upgrades hand the connection over to the socket task.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    mut listener: SignalListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // hyper's own HTTP/1 connection (not hyper-util's auto builder, which wraps the stream
    // in a type of its own): the WebSocket route takes the upgraded socket back as the
    // `MaybeTls` it was, to split a plain TCP socket into halves (`server.rs`).
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout);
    let connections = TaskTracker::new();
    let stop = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (io, remote) = tokio::select! {
            conn = listener.accept() => conn,
            _ = &mut shutdown => break,
        };
        // `Extension` as a tower layer wraps the router once (an `Arc` clone and the address);
        // `Router::layer` would rebuild every route per connection.
        let service =
            TowerToHyperService::new(axum::Extension(ConnectInfo(remote)).layer(router.clone()));
        let conn = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let r = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    // Finish the request in progress, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                debug!(remote = %remote.0, "HTTP connection ended: {e}");
            }
        });
    }
    info!("shutting down: closing every socket");
    drop(listener);
    stop.cancel();
    connections.close();
    shared.shutdown.cancel();
    shared.tracker.close();
    let drained = async { tokio::join!(connections.wait(), shared.tracker.wait()) };
    if tokio::time::timeout(SHUTDOWN_GRACE, drained).await.is_err() {
        warn!("some connections did not close within {SHUTDOWN_GRACE:?}");
    }
    Ok(())
}
