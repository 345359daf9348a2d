//! TURN over TCP and TLS for the native peer.
//!
//! webrtc 0.21's TURN client speaks UDP only: it skips `turn:…?transport=tcp` and `turns:`
//! URLs with a warning. Those are the URLs that work from a network that drops all UDP (a
//! runner or an office firewall), so the peer bridges them: each such URL becomes a
//! loopback UDP socket that webrtc is given as a plain `turn:127.0.0.1:PORT` server, and the
//! bridge carries every datagram over a TCP (or TLS) connection to the real server.
//!
//! TURN over a stream differs from TURN over UDP only in framing (RFC 8656 §7.1, §12.5):
//! STUN messages are self-delimiting (20-byte header + length, a multiple of 4) and
//! ChannelData messages carry their length and are padded to a multiple of 4 bytes. The
//! bridge splits the server's stream into those messages, unpadded, one datagram each, and
//! pads outgoing ChannelData. Message integrity covers neither the transport nor the padding,
//! so the TURN client's credentials and messages are untouched.
//!
//! One webrtc UDP socket (one `local_addr` of one PeerConnection) maps to one stream, as the
//! server sees one allocation per 5-tuple. Streams are opened on the first datagram, end when
//! either side closes or after [`IDLE_TIMEOUT`] without traffic, and there are at most
//! [`MAX_SESSIONS`] per bridge. A bridge ends when its peer closes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ice::{IceScheme, IceTransport, IceUrl};
use super::{IceServer, PeerError};

/// Streams (webrtc sockets) one bridge carries at once; more are dropped like lost packets.
pub(crate) const MAX_SESSIONS: usize = 64;
/// A stream with no traffic either way for this long is closed. webrtc refreshes its TURN
/// allocation and permissions every few minutes, so a live allocation is never idle this long.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long opening the TCP connection and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams queued for one stream while it connects or writes.
const SESSION_QUEUE: usize = 256;
/// Largest TURN message: a 20-byte STUN header + 65,535 (or 4 + 65,535 ChannelData, padded).
const MAX_MESSAGE: usize = 4 + 65_535 + 3;

/// Why a byte stream from a TURN server cannot be split into messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FramingError {
    /// The first two bits are neither a STUN message (`00`) nor ChannelData (`01`).
    #[error("neither a STUN message nor ChannelData (first byte {0:#04x})")]
    UnknownMessage(u8),
    /// A STUN message whose length is not a multiple of 4.
    #[error("STUN message length {0} is not a multiple of 4")]
    BadStunLength(usize),
}

/// Why a stream to a TURN server ended (other than by either side closing it).
#[derive(Debug, thiserror::Error)]
enum StreamError {
    /// The TCP connection was not open within [`CONNECT_TIMEOUT`].
    #[error("connect timed out")]
    ConnectTimedOut,
    /// The TCP connection could not be opened.
    #[error("connect: {0}")]
    Connect(std::io::Error),
    /// The TLS handshake did not finish within [`CONNECT_TIMEOUT`].
    #[error("TLS handshake timed out")]
    TlsTimedOut,
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    /// Writing to the server failed.
    #[error("write: {0}")]
    Write(std::io::Error),
    /// Reading from the server failed.
    #[error("read: {0}")]
    Read(std::io::Error),
    /// The server's stream does not split into messages.
    #[error("from the server: {0}")]
    Framing(FramingError),
    /// No traffic either way for [`IDLE_TIMEOUT`].
    #[error("idle")]
    Idle,
}

/// The next complete message at the front of `buf`: `Some((message_len, consumed))` where the
/// first `message_len` bytes are the message as a datagram carries it and `consumed` includes
/// the stream padding. `None` while the message is incomplete.
pub(crate) fn next_message(buf: &[u8]) -> Result<Option<(usize, usize)>, FramingError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    let (message, consumed) = match buf[0] >> 6 {
        0b00 => {
            if len % 4 != 0 {
                return Err(FramingError::BadStunLength(len));
            }
            (20 + len, 20 + len)
        }
        0b01 => (4 + len, (4 + len).next_multiple_of(4)),
        _ => return Err(FramingError::UnknownMessage(buf[0])),
    };
    Ok((buf.len() >= consumed).then_some((message, consumed)))
}

/// Padding to add after a datagram from webrtc when it goes on a stream: ChannelData is
/// padded to a multiple of 4 bytes; STUN messages already are.
pub(crate) fn stream_padding(datagram: &[u8]) -> usize {
    match datagram.first() {
        Some(b) if b >> 6 == 0b01 => datagram.len().next_multiple_of(4) - datagram.len(),
        _ => 0,
    }
}

/// Where a bridge connects: the server's host and port, with TLS for `turns:`.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls.is_some() {
            "turns"
        } else {
            "turn+tcp"
        };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// The ICE servers as webrtc gets them: `turn:…?transport=tcp` and `turns:` URLs are replaced
/// by a loopback `turn:` URL of a bridge started here (running until `closed`); `stun:` and
/// UDP `turn:` URLs are kept; `stuns:` (no STUN-over-TLS in webrtc, and of no use for a relay
/// candidate) is left to browsers.
///
/// # Errors
/// [`PeerError::InvalidConfig`] if TLS roots for `turns:` cannot be loaded or a host is not a
/// valid TLS server name; [`PeerError::Network`] if a loopback socket cannot be bound.
pub(crate) async fn native_ice_servers(
    servers: &[IceServer],
    tls_root_pem: Option<&str>,
    closed: &CancellationToken,
) -> Result<Vec<IceServer>, PeerError> {
    let mut out = Vec::with_capacity(servers.len());
    for server in servers {
        let mut urls = Vec::with_capacity(server.urls.len());
        for raw in &server.urls {
            let Ok(url) = IceUrl::parse(raw) else {
                continue;
            };
            if url.native_supported() {
                urls.push(raw.clone());
                continue;
            }
            let tls = match (url.scheme, url.transport) {
                (IceScheme::Turn, IceTransport::Tcp) => None,
                (IceScheme::Turns, _) => {
                    let config = crate::tls::client_config(tls_root_pem)
                        .map_err(|e| PeerError::InvalidConfig(format!("{raw}: {e}")))?;
                    let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                        .map_err(|e| PeerError::InvalidConfig(format!("{raw}: {e}")))?;
                    Some((config, name))
                }
                _ => continue,
            };
            let target = Target {
                host: url.host.clone(),
                port: url.port,
                tls,
            };
            let port = start_bridge(target, closed.clone()).await?;
            tracing::debug!(url = %raw, port, "TURN over a stream bridged for webrtc");
            urls.push(format!("turn:127.0.0.1:{port}?transport=udp"));
        }
        if !urls.is_empty() {
            out.push(IceServer {
                urls,
                ..server.clone()
            });
        }
    }
    Ok(out)
}

/// Binds a bridge's loopback socket and spawns its task; returns the port.
async fn start_bridge(target: Target, closed: CancellationToken) -> Result<u16, PeerError> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| PeerError::Network(format!("TURN bridge socket: {e}")))?;
    let port = socket
        .local_addr()
        .map_err(|e| PeerError::Network(format!("TURN bridge socket: {e}")))?
        .port();
    tokio::spawn(run_bridge(Arc::new(socket), target, closed));
    Ok(port)
}

/// Receives webrtc's datagrams and hands each to the stream of its source socket.
async fn run_bridge(socket: Arc<UdpSocket>, target: Target, closed: CancellationToken) {
    let mut sessions: HashMap<SocketAddr, mpsc::Sender<Bytes>> = HashMap::new();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, from) = tokio::select! {
            _ = closed.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // e.g. ICMP port unreachable reported on a later receive: not fatal.
                    tracing::trace!(error = %e, "TURN bridge receive");
                    continue;
                }
            },
        };
        // The source is webrtc's socket, bound to a host address (e.g. 10.0.0.5:PORT) or the
        // wildcard; only this host can reach a socket bound to 127.0.0.1.
        if n < 4 {
            continue;
        }
        sessions.retain(|_, tx| !tx.is_closed());
        if !sessions.contains_key(&from) {
            if sessions.len() >= MAX_SESSIONS {
                tracing::debug!(%target, "TURN bridge: too many streams; datagram dropped");
                continue;
            }
            let (tx, rx) = mpsc::channel(SESSION_QUEUE);
            tokio::spawn(run_session(
                socket.clone(),
                from,
                target.clone(),
                rx,
                closed.clone(),
            ));
            sessions.insert(from, tx);
        }
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        if let Some(tx) = sessions.get(&from)
            && tx.try_send(datagram).is_err()
        {
            // A full queue is a lost packet, as it would be on UDP; webrtc retransmits.
            tracing::trace!(%target, "TURN bridge queue full; datagram dropped");
        }
    }
}

/// One stream to the TURN server for webrtc's socket `peer`.
async fn run_session(
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    target: Target,
    rx: mpsc::Receiver<Bytes>,
    closed: CancellationToken,
) {
    let result = tokio::select! {
        _ = closed.cancelled() => Ok(()),
        r = async {
            let tcp = tokio::time::timeout(
                CONNECT_TIMEOUT,
                TcpStream::connect((target.host.as_str(), target.port)),
            )
            .await
            .map_err(|_| StreamError::ConnectTimedOut)?
            .map_err(StreamError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &target.tls {
                None => pump(tcp, &socket, peer, rx).await,
                Some((config, name)) => {
                    let tls = tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio_rustls::TlsConnector::from(config.clone()).connect(name.clone(), tcp),
                    )
                    .await
                    .map_err(|_| StreamError::TlsTimedOut)?
                    .map_err(StreamError::Tls)?;
                    pump(tls, &socket, peer, rx).await
                }
            }
        } => r,
    };
    match result {
        Ok(()) => tracing::debug!(%target, %peer, "TURN stream closed"),
        Err(e) => tracing::info!(%target, %peer, "TURN stream ended: {e}"),
    }
}

/// Carries datagrams both ways until either side ends or the stream is idle for
/// [`IDLE_TIMEOUT`].
async fn pump<S: AsyncRead + AsyncWrite>(
    stream: S,
    socket: &UdpSocket,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<(), StreamError> {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut inbound = BytesMut::with_capacity(4096);
    const PAD: [u8; 3] = [0; 3];
    loop {
        tokio::select! {
            datagram = rx.recv() => {
                let Some(datagram) = datagram else { return Ok(()) };
                let pad = stream_padding(&datagram);
                writer.write_all(&datagram).await.map_err(StreamError::Write)?;
                if pad > 0 {
                    writer.write_all(&PAD[..pad]).await.map_err(StreamError::Write)?;
                }
                writer.flush().await.map_err(StreamError::Write)?;
            }
            read = reader.read_buf(&mut inbound) => {
                if read.map_err(StreamError::Read)? == 0 {
                    return Ok(());
                }
                while let Some((len, consumed)) =
                    next_message(&inbound).map_err(StreamError::Framing)?
                {
                    // A loopback send only fails if webrtc's socket is gone: drop the message.
                    let _ = socket.send_to(&inbound[..len], peer).await;
                    inbound.advance(consumed);
                }
                inbound.reserve(4096);
            }
            _ = tokio::time::sleep(IDLE_TIMEOUT) => return Err(StreamError::Idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN Binding request header with `len` bytes of attributes (zeros).
    fn stun(len: u16) -> Vec<u8> {
        let mut m = vec![0x00, 0x01];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        m.extend_from_slice(&[7; 12]);
        m.extend(std::iter::repeat_n(0, usize::from(len)));
        m
    }

    fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = channel.to_be_bytes().to_vec();
        m.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn a_stream_splits_into_the_datagrams_that_were_framed() {
        let a = stun(8);
        let b = channel_data(0x4001, b"hello"); // 9 bytes, 3 bytes of padding on a stream
        let c = channel_data(0x4002, b"four");
        let mut stream = a.clone();
        stream.extend_from_slice(&b);
        stream.extend(std::iter::repeat_n(0, stream_padding(&b)));
        stream.extend_from_slice(&c);
        assert_eq!(stream_padding(&b), 3);
        assert_eq!(stream_padding(&c), 0);
        assert_eq!(stream_padding(&a), 0);

        let mut rest = &stream[..];
        let mut got = Vec::new();
        while let Some((len, consumed)) = next_message(rest).unwrap() {
            got.push(rest[..len].to_vec());
            rest = &rest[consumed..];
        }
        assert!(rest.is_empty());
        assert_eq!(got, vec![a, b, c]);
    }

    #[test]
    fn incomplete_messages_wait_for_more_bytes() {
        let m = channel_data(0x4000, b"abcde");
        for cut in 0..m.len() + 3 {
            let mut buf = m.clone();
            buf.extend_from_slice(&[0; 3]);
            let r = next_message(&buf[..cut]).unwrap();
            // The padding belongs to the message: it is complete only with its padding.
            assert_eq!(r.is_some(), cut >= 12, "cut at {cut}");
        }
        assert_eq!(next_message(&stun(4)[..23]).unwrap(), None);
        assert_eq!(next_message(&stun(4)).unwrap(), Some((24, 24)));
    }

    #[test]
    fn garbage_from_the_server_is_a_framing_error() {
        assert_eq!(
            next_message(&[0x80, 0, 0, 4, 1, 2, 3, 4]),
            Err(FramingError::UnknownMessage(0x80))
        );
        assert_eq!(next_message(&[]), Ok(None));
        let mut odd = stun(0);
        odd[3] = 5;
        assert_eq!(next_message(&odd), Err(FramingError::BadStunLength(5)));
    }

    /// A bridge carries a datagram to a TCP server with ChannelData padding, and the server's
    /// padded reply back as one unpadded datagram.
    #[tokio::test]
    async fn the_bridge_carries_datagrams_over_tcp_both_ways() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let closed = CancellationToken::new();
        let servers = vec![IceServer {
            urls: vec![
                "stun:127.0.0.1:1".into(),
                format!("turn:127.0.0.1:{}?transport=tcp", server_addr.port()),
            ],
            username: Some("u".into()),
            credential: Some("p".into()),
            credential_type: None,
        }];
        let native = native_ice_servers(&servers, None, &closed).await.unwrap();
        assert_eq!(native.len(), 1);
        assert_eq!(native[0].urls[0], "stun:127.0.0.1:1");
        let bridged = IceUrl::parse(&native[0].urls[1]).unwrap();
        assert!(bridged.native_supported(), "{bridged:?}");
        assert_eq!(bridged.host, "127.0.0.1");
        assert_eq!(native[0].username.as_deref(), Some("u"));

        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, bridged.port));
        let hello = channel_data(0x4001, b"hello");
        client.send_to(&hello, to).await.unwrap();
        let (mut conn, _) = server.accept().await.unwrap();
        let mut got = [0u8; 12];
        conn.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..9], &hello[..]);
        assert_eq!(&got[9..], &[0, 0, 0], "ChannelData is padded on the stream");

        // Two replies in one write, one padded: two datagrams, unpadded.
        let reply = channel_data(0x4001, b"abc");
        let mut wire = reply.clone();
        wire.push(0);
        wire.extend_from_slice(&stun(4));
        conn.write_all(&wire).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &reply[..]);
        let (n, _) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &stun(4)[..]);

        // Garbage from the server ends that stream; the bridge's next datagram opens a new one.
        conn.write_all(&[0xff, 0, 0, 0]).await.unwrap();
        let mut end = [0u8; 1];
        assert_eq!(
            conn.read(&mut end).await.unwrap(),
            0,
            "the bridge closed the stream"
        );
        closed.cancel();
    }
}
