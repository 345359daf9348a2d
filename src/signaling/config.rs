//! Configuration: the `ouroboros signal` flags ([`SignalArgs`]) and the validated runtime
//! settings built from them ([`SignalConfig`]).

use std::{net::IpAddr, path::PathBuf, str::FromStr, time::Duration};

use super::SignalError;

/// Flags of `ouroboros signal` (also flattened into `ouroboros node`). Every flag falls back
/// to an `OUROBOROS_*` environment variable. Defaults follow the reference `peer` CLI, except
/// `--host` (127.0.0.1 here; pass 0.0.0.0 to accept connections from other machines).
#[derive(clap::Args, Debug, Clone)]
pub struct SignalArgs {
    /// Address to listen on (use 0.0.0.0 to accept connections from other machines).
    #[arg(long, env = "OUROBOROS_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the bound address is printed).
    #[arg(long, env = "OUROBOROS_PORT", default_value_t = 9000)]
    pub port: u16,
    /// Connection key clients must present on the WebSocket.
    #[arg(long, env = "OUROBOROS_KEY", default_value = "peerjs")]
    pub key: String,
    /// Mount path of the HTTP API and of the WebSocket (`{path}peerjs`).
    #[arg(long, env = "OUROBOROS_PATH", default_value = "/")]
    pub path: String,
    /// Milliseconds a message for an absent peer waits before its sender gets EXPIRE.
    #[arg(
        long,
        env = "OUROBOROS_EXPIRE_TIMEOUT",
        default_value_t = 5000,
        value_name = "MS"
    )]
    pub expire_timeout: u64,
    /// Milliseconds without HEARTBEAT after which a client is disconnected.
    #[arg(
        long,
        env = "OUROBOROS_ALIVE_TIMEOUT",
        default_value_t = 60000,
        value_name = "MS"
    )]
    pub alive_timeout: u64,
    /// Largest number of registered clients.
    #[arg(long, env = "OUROBOROS_CONCURRENT_LIMIT", default_value_t = 5000)]
    pub concurrent_limit: usize,
    /// Serve the list of connected ids at `{path}{key}/peers`.
    #[arg(long, env = "OUROBOROS_ALLOW_DISCOVERY")]
    pub allow_discovery: bool,
    /// Behind a reverse proxy on this machine: the same as `--trusted-proxy 127.0.0.0/8
    /// --trusted-proxy ::1` (take the client address from `X-Forwarded-For` when the
    /// connection comes from loopback).
    #[arg(long, env = "OUROBOROS_PROXIED")]
    pub proxied: bool,
    /// A reverse proxy (an address or CIDR block, repeatable; env: comma-separated) whose
    /// `X-Forwarded-For` names the client. From any other peer the header is ignored and
    /// the TCP peer address is the client's.
    #[arg(
        long = "trusted-proxy",
        env = "OUROBOROS_TRUSTED_PROXY",
        value_name = "IP[/BITS]",
        value_delimiter = ',',
        value_parser = Cidr::from_str
    )]
    pub trusted_proxy: Vec<Cidr>,
    /// WebSockets one client address may hold open (registered or not); 0 = unlimited.
    #[arg(
        long,
        env = "OUROBOROS_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 500,
        value_name = "SOCKETS"
    )]
    pub max_connections_per_address: usize,
    /// Messages per second all sockets of one client address may send together,
    /// sustained (every frame counts, LEAVE and HEARTBEAT included); 0 = unlimited.
    /// Excess: ERROR, close.
    #[arg(
        long,
        env = "OUROBOROS_ADDRESS_RATE_LIMIT",
        default_value_t = 1000.0,
        value_name = "PER_SECOND"
    )]
    pub address_rate_limit: f64,
    /// Burst of messages one client address may send above --address-rate-limit.
    #[arg(
        long,
        env = "OUROBOROS_ADDRESS_RATE_BURST",
        default_value_t = 2000.0,
        value_name = "MESSAGES"
    )]
    pub address_rate_burst: f64,
    /// Allowed CORS origin (repeatable; env: comma-separated). Without it the request's
    /// Origin is reflected.
    #[arg(
        long = "cors",
        env = "OUROBOROS_CORS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors: Vec<String>,
    /// PEM certificate chain: serve HTTPS/WSS (needs --tls-key).
    #[arg(long, env = "OUROBOROS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "OUROBOROS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest WebSocket message a client may send, in bytes (larger: ERROR, then close).
    #[arg(long, env = "OUROBOROS_MAX_FRAME_SIZE", default_value_t = 256 * 1024, value_name = "BYTES")]
    pub max_frame_size: usize,
    /// Messages per second a client may send, sustained (0 = unlimited). Excess: ERROR, close.
    #[arg(
        long,
        env = "OUROBOROS_RATE_LIMIT",
        default_value_t = 200.0,
        value_name = "PER_SECOND"
    )]
    pub rate_limit: f64,
    /// Burst of messages a client may send above --rate-limit.
    #[arg(
        long,
        env = "OUROBOROS_RATE_BURST",
        default_value_t = 400.0,
        value_name = "MESSAGES"
    )]
    pub rate_burst: f64,
    /// Malformed (non-JSON) messages tolerated in a burst (refilled at one per second);
    /// one more closes the client with ERROR.
    #[arg(
        long,
        env = "OUROBOROS_MALFORMED_LIMIT",
        default_value_t = 10.0,
        value_name = "MESSAGES"
    )]
    pub malformed_limit: f64,
    /// Messages held for one absent peer (more: the sender gets EXPIRE at once).
    #[arg(
        long,
        env = "OUROBOROS_QUEUE_PER_PEER",
        default_value_t = 64,
        value_name = "MESSAGES"
    )]
    pub queue_per_peer: usize,
    /// Bytes held for one absent peer.
    #[arg(long, env = "OUROBOROS_QUEUE_BYTES_PER_PEER", default_value_t = 1 << 20, value_name = "BYTES")]
    pub queue_bytes_per_peer: usize,
    /// Messages held for all absent peers together.
    #[arg(
        long,
        env = "OUROBOROS_QUEUE_TOTAL",
        default_value_t = 100_000,
        value_name = "MESSAGES"
    )]
    pub queue_total: usize,
    /// Bytes held for all absent peers together.
    #[arg(long, env = "OUROBOROS_QUEUE_BYTES_TOTAL", default_value_t = 64 << 20, value_name = "BYTES")]
    pub queue_bytes_total: usize,
    /// Frames waiting to be written to one socket; a client that falls further behind is
    /// disconnected (so one slow client never slows the others).
    #[arg(
        long,
        env = "OUROBOROS_WRITE_QUEUE",
        default_value_t = 256,
        value_name = "FRAMES"
    )]
    pub write_queue: usize,
    /// Bytes waiting to be written to one socket before it is dropped as too slow (raised
    /// to --queue-bytes-per-peer + --max-frame-size if smaller, so a full offline queue
    /// always fits).
    #[arg(long, env = "OUROBOROS_WRITE_QUEUE_BYTES", default_value_t = 1 << 20, value_name = "BYTES")]
    pub write_queue_bytes: usize,
    /// Milliseconds a client has to send its complete request headers (HTTP request or
    /// WebSocket upgrade); a slower one is disconnected. 0 = no limit.
    #[arg(
        long,
        env = "OUROBOROS_HEADER_READ_TIMEOUT",
        default_value_t = 10_000,
        value_name = "MS"
    )]
    pub header_read_timeout: u64,
}

impl Default for SignalArgs {
    fn default() -> Self {
        SignalArgs {
            host: "127.0.0.1".into(),
            port: 9000,
            key: "peerjs".into(),
            path: "/".into(),
            expire_timeout: 5000,
            alive_timeout: 60000,
            concurrent_limit: 5000,
            allow_discovery: false,
            proxied: false,
            trusted_proxy: Vec::new(),
            max_connections_per_address: 500,
            address_rate_limit: 1000.0,
            address_rate_burst: 2000.0,
            cors: Vec::new(),
            tls_cert: None,
            tls_key: None,
            max_frame_size: 256 * 1024,
            rate_limit: 200.0,
            rate_burst: 400.0,
            malformed_limit: 10.0,
            queue_per_peer: 64,
            queue_bytes_per_peer: 1 << 20,
            queue_total: 100_000,
            queue_bytes_total: 64 << 20,
            write_queue: 256,
            write_queue_bytes: 1 << 20,
            header_read_timeout: 10_000,
        }
    }
}

/// Bounds of the offline queues (messages for peers that are not connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages held for one absent peer.
    pub per_peer: usize,
    /// Bytes held for one absent peer.
    pub bytes_per_peer: usize,
    /// Messages held in all queues together.
    pub total: usize,
    /// Bytes held in all queues together.
    pub bytes_total: usize,
}

/// Limits per client address, so that one address cannot take the whole server.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AddressLimits {
    /// Sockets one address may hold open (0 = unlimited).
    pub connections: usize,
    /// Messages all sockets of one address may send together (`None` = unlimited).
    pub rate: Option<Rate>,
}

impl AddressLimits {
    /// No per-address limit.
    pub const UNLIMITED: AddressLimits = AddressLimits {
        connections: 0,
        rate: None,
    };
}

/// An address block: an IP address and a prefix length (`10.0.0.0/8`, `::1`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// The loopback blocks (`127.0.0.0/8`, `::1`), where a local reverse proxy or tunnel
    /// agent (ngrok's in-process forwarder) connects from.
    pub const LOOPBACK: [Cidr; 2] = [
        Cidr {
            addr: IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
            bits: 8,
        },
        Cidr {
            addr: IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            bits: 128,
        },
    ];

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, bits) = match s.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, bits })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// A per-client token bucket rate: `per_second` sustained, `burst` above it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Sustained messages per second.
    pub per_second: f64,
    /// Largest burst.
    pub burst: f64,
}

/// Validated settings of the signaling server. Build it from [`SignalArgs`] with
/// [`SignalConfig::from_args`], or start from [`SignalConfig::default`] and change fields
/// (tests do).
#[derive(Debug, Clone)]
pub struct SignalConfig {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0 = ephemeral).
    pub port: u16,
    /// Key a WebSocket client must present.
    pub key: String,
    /// Mount path, normalised to start and end with `/`.
    pub path: String,
    /// How long a queued message waits for its destination before EXPIRE.
    pub expire_timeout: Duration,
    /// How long a client may stay silent (no HEARTBEAT) before it is disconnected.
    pub alive_timeout: Duration,
    /// Largest number of registered clients.
    pub concurrent_limit: usize,
    /// Whether `{path}{key}/peers` lists the connected ids.
    pub allow_discovery: bool,
    /// Peers whose `X-Forwarded-For` names the client (reverse proxies, the tunnel agent).
    pub trusted_proxies: Vec<Cidr>,
    /// Limits per client address.
    pub per_address: AddressLimits,
    /// CORS allow-list; empty = reflect any Origin.
    pub cors: Vec<String>,
    /// TLS certificate chain and key (PEM files), if serving HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Largest client message in bytes.
    pub max_frame_size: usize,
    /// Per-client message rate; `None` = unlimited.
    pub rate: Option<Rate>,
    /// Malformed messages tolerated in a burst (refilled at one per second).
    pub malformed_limit: f64,
    /// Offline queue bounds.
    pub queues: QueueLimits,
    /// Frames buffered per socket before the client is dropped as too slow.
    pub write_queue: usize,
    /// Bytes buffered per socket before the client is dropped as too slow.
    pub write_queue_bytes: usize,
    /// How long a connection may take to send its request headers; `None` = no limit.
    pub header_read_timeout: Option<Duration>,
}

impl Default for SignalConfig {
    fn default() -> Self {
        SignalConfig::from_args(&SignalArgs::default()).expect("the default flags are valid")
    }
}

impl SignalConfig {
    /// Validates the flags.
    ///
    /// # Errors
    /// [`SignalError::Config`] when the path has characters a route cannot hold, a limit is
    /// zero, or a number is not finite.
    pub fn from_args(args: &SignalArgs) -> Result<Self, SignalError> {
        let bad = |msg: String| Err(SignalError::Config(msg));
        let path = normalise_path(&args.path);
        if path
            .chars()
            .any(|c| c.is_control() || matches!(c, '{' | '}' | '*' | '?' | '#' | ' '))
        {
            return bad(format!(
                "--path {:?} has characters a URL path cannot hold",
                args.path
            ));
        }
        if args.key.is_empty() {
            return bad("--key must not be empty".into());
        }
        if args.max_frame_size < 1024 {
            return bad("--max-frame-size must be at least 1024 bytes".into());
        }
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if ![
            args.rate_limit,
            args.rate_burst,
            args.malformed_limit,
            args.address_rate_limit,
            args.address_rate_burst,
        ]
        .into_iter()
        .all(ok)
        {
            return bad("rate limits must be finite and not negative".into());
        }
        if args.write_queue == 0 || args.queue_per_peer == 0 || args.queue_total == 0 {
            return bad("queue sizes must be at least 1".into());
        }
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => return bad("--tls-cert and --tls-key go together".into()),
        };
        Ok(SignalConfig {
            host: args.host.clone(),
            port: args.port,
            key: args.key.clone(),
            path,
            expire_timeout: Duration::from_millis(args.expire_timeout),
            alive_timeout: Duration::from_millis(args.alive_timeout),
            concurrent_limit: args.concurrent_limit,
            allow_discovery: args.allow_discovery,
            trusted_proxies: args
                .trusted_proxy
                .iter()
                .copied()
                .chain(args.proxied.then_some(Cidr::LOOPBACK).into_iter().flatten())
                .collect(),
            per_address: AddressLimits {
                connections: args.max_connections_per_address,
                rate: (args.address_rate_limit > 0.0).then_some(Rate {
                    per_second: args.address_rate_limit,
                    burst: args.address_rate_burst.max(1.0),
                }),
            },
            cors: args
                .cors
                .iter()
                .filter(|o| !o.is_empty())
                .cloned()
                .collect(),
            tls,
            max_frame_size: args.max_frame_size,
            rate: (args.rate_limit > 0.0).then_some(Rate {
                per_second: args.rate_limit,
                burst: args.rate_burst.max(1.0),
            }),
            malformed_limit: args.malformed_limit,
            queues: QueueLimits {
                per_peer: args.queue_per_peer,
                bytes_per_peer: args.queue_bytes_per_peer,
                total: args.queue_total,
                bytes_total: args.queue_bytes_total,
            },
            write_queue: args.write_queue,
            write_queue_bytes: args
                .write_queue_bytes
                .max(args.queue_bytes_per_peer + args.max_frame_size),
            header_read_timeout: (args.header_read_timeout > 0)
                .then(|| Duration::from_millis(args.header_read_timeout)),
        })
    }
}

/// `""`, `"/"` → `"/"`; `"myapp"`, `"/myapp/"` → `"/myapp/"`.
pub(crate) fn normalise_path(path: &str) -> String {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        format!("/{trimmed}/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalised() {
        assert_eq!(normalise_path(""), "/");
        assert_eq!(normalise_path("/"), "/");
        assert_eq!(normalise_path("myapp"), "/myapp/");
        assert_eq!(normalise_path("/myapp/"), "/myapp/");
        assert_eq!(normalise_path("/a/b"), "/a/b/");
    }

    #[test]
    fn cidr_blocks_parse_and_match() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.1".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!(Cidr::LOOPBACK[0].contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::LOOPBACK[1].contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }

    #[test]
    fn bad_flags_are_refused() {
        let args = SignalArgs {
            path: "/{x}".into(),
            ..SignalArgs::default()
        };
        assert!(SignalConfig::from_args(&args).is_err());
        let args = SignalArgs {
            rate_limit: f64::NAN,
            ..SignalArgs::default()
        };
        assert!(SignalConfig::from_args(&args).is_err());
        let c = SignalConfig::from_args(&SignalArgs {
            rate_limit: 0.0,
            ..SignalArgs::default()
        })
        .unwrap();
        assert!(c.rate.is_none());
    }
}
