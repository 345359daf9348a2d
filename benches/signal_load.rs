//! Signaling load generator (a benchmark, not a test).
//!
//! Holds `--clients` PeerJS signaling clients on one server (each sends `HEARTBEAT` every
//! `--heartbeat-ms`), and among them runs OFFER/ANSWER ping-pong between `--pairs` pairs with `--window`
//! offers in flight per pair: the caller sends `OFFER {s, t, sdp}` to its callee, the callee answers
//! with an `ANSWER` carrying the same payload, the caller measures the round trip and sends the next
//! offer. After `--warmup` seconds it measures for `--duration` seconds and reports relayed messages per
//! second (OFFERs and ANSWERs received by clients) and RTT p50/p99. With `--server-pid` it also reads the
//! server's CPU time (`/proc/PID/stat` utime+stime) over the measured window and its RSS
//! (`/proc/PID/status` VmRSS) before and after connecting, giving CPU per relayed message and RSS per
//! connection. `--pairs 0` only connects and holds the clients for `--duration` seconds (max-clients
//! and idle-memory runs; `CONNECTED n` is printed once all attempts finished).
//!
//! The WebSocket client is a minimal hand-written RFC 6455 client (masked text frames, no
//! extensions) so that the generator spends as little CPU as possible: on a 2-core machine it
//! competes with the server under test.
//!
//! ```text
//! cargo bench --bench signal_load -- --url ws://127.0.0.1:9000/peerjs --clients 1000 --pairs 10 \
//!     --window 4 --duration 10 [--source-ips 127.0.0.2,127.0.0.3] [--server-pid PID] [--label ours]
//! ```
//! The last line of output is `RESULT {json}` for scripts (`scripts/bench-signaling`).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Command line of the load generator.
#[derive(Parser, Debug, Clone)]
#[command(name = "signal_load", about = "PeerJS signaling load generator")]
struct Args {
    /// Signaling WebSocket URL without query, e.g. ws://127.0.0.1:9000/peerjs.
    #[arg(long)]
    url: Option<String>,
    /// PeerJS key.
    #[arg(long, default_value = "peerjs")]
    key: String,
    /// Clients held in total (pair members included).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Ping-pong pairs (each pair is two of the clients).
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    /// Offers in flight per pair.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Measured seconds (with --pairs 0: seconds to hold the clients).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of ping-pong before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Local addresses to connect from, used round robin (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// HEARTBEAT period per client in ms (peerjs: 5000); 0 disables.
    #[arg(long, default_value_t = 5000)]
    heartbeat_ms: u64,
    /// Size of the SDP-like filler in each OFFER/ANSWER payload, bytes.
    #[arg(long, default_value_t = 400)]
    payload_bytes: usize,
    /// WebSocket handshakes in flight while connecting.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Seconds one connection attempt (TCP connect, upgrade, OPEN) may take.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Seconds the whole connect phase may take; attempts still pending then count as failed.
    #[arg(long)]
    connect_phase: Option<f64>,
    /// Server process to sample CPU time and RSS from (/proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Prefix of the peer ids (must differ between concurrent load processes).
    #[arg(long, default_value = "load")]
    id_prefix: String,
    /// Runtime worker threads (1 = current-thread runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Free-form label copied into the RESULT line.
    #[arg(long, default_value = "")]
    label: String,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Counters shared by all client tasks.
#[derive(Default)]
struct Shared {
    /// Relayed OFFER/ANSWER frames received by clients.
    relayed: AtomicU64,
    /// Whether RTT samples are recorded (the measured window).
    measuring: AtomicBool,
    /// Frames other than the expected relays (ERROR, EXPIRE, LEAVE...).
    unexpected: AtomicU64,
    /// Clients whose socket closed during the run.
    closed: AtomicUsize,
}

/// Where a client connects and who it is.
struct Target {
    addr: SocketAddr,
    host: String,
    path: String,
}

/// The role of one client in the run.
#[derive(Clone)]
enum Role {
    Idle,
    Caller { callee: String },
    Callee { caller: String },
}

fn main() {
    let args = Args::parse();
    let Some(url) = args.url.clone() else {
        println!(
            "signal_load: benchmark tool; run it as `cargo bench --bench signal_load -- --url ws://HOST:PORT/PATH/peerjs ...` (see --help)"
        );
        return;
    };
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .expect("tokio runtime");
    if let Err(err) = rt.block_on(run(args, url)) {
        eprintln!("signal_load: {err}");
        std::process::exit(1);
    }
}

fn parse_url(url: &str) -> io::Result<Target> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| io::Error::other("only ws:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/peerjs"),
    };
    let addr = hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("URL host does not resolve"))?;
    Ok(Target {
        addr,
        host: hostport.to_string(),
        path: path.to_string(),
    })
}

async fn run(args: Args, url: String) -> io::Result<()> {
    let target = Arc::new(parse_url(&url)?);
    let pairs = args.pairs;
    let clients = args.clients.max(pairs * 2);
    println!(
        "signal_load {} url={url} clients={clients} pairs={pairs} window={} payload={}B heartbeat={}ms threads={} sources={:?}",
        args.label,
        args.window,
        args.payload_bytes,
        args.heartbeat_ms,
        args.threads,
        args.source_ips
    );
    let shared = Arc::new(Shared::default());
    let epoch = Instant::now();
    let rss_before = args.server_pid.and_then(read_rss_kb);

    // ---- connect everything
    let (start_tx, start_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let filler: Arc<str> = "x".repeat(args.payload_bytes).into();
    let t_connect = Instant::now();
    let mut connecting = Vec::with_capacity(clients);
    for i in 0..clients {
        let (id, role) = if i < pairs {
            (
                format!("{}-a{i}", args.id_prefix),
                Role::Caller {
                    callee: format!("{}-b{i}", args.id_prefix),
                },
            )
        } else if i < 2 * pairs {
            let k = i - pairs;
            (
                format!("{}-b{k}", args.id_prefix),
                Role::Callee {
                    caller: format!("{}-a{k}", args.id_prefix),
                },
            )
        } else {
            (format!("{}-i{i}", args.id_prefix), Role::Idle)
        };
        let src = if args.source_ips.is_empty() {
            None
        } else {
            Some(args.source_ips[i % args.source_ips.len()])
        };
        let query = format!("key={}&id={id}&token=tok{i}&version=1.5.5", args.key);
        let target = target.clone();
        let sem = sem.clone();
        let timeout = Duration::from_secs_f64(args.connect_timeout);
        connecting.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let res = match tokio::time::timeout(timeout, Ws::connect(&target, &query, src)).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::other("connect attempt timed out")),
            };
            (id, role, res)
        }));
    }
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut tasks = Vec::with_capacity(clients);
    let mut connected = 0usize;
    let phase_deadline = args
        .connect_phase
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s));
    for mut c in connecting {
        let joined = match phase_deadline {
            Some(d) => match tokio::time::timeout_at(d, &mut c).await {
                Ok(j) => j,
                Err(_) => {
                    c.abort();
                    *errors.entry("connect phase over".into()).or_default() += 1;
                    continue;
                }
            },
            None => c.await,
        };
        let (id, role, res) = joined.expect("connect task");
        match res {
            Ok(ws) => {
                connected += 1;
                let client = Client {
                    id,
                    role,
                    ws,
                    shared: shared.clone(),
                    filler: filler.clone(),
                    window: args.window,
                    heartbeat: (args.heartbeat_ms > 0)
                        .then(|| Duration::from_millis(args.heartbeat_ms)),
                    epoch,
                };
                let (start, stop) = (start_rx.clone(), stop_rx.clone());
                tasks.push(tokio::spawn(client.run(start, stop)));
            }
            Err(err) => *errors.entry(short_error(&err)).or_default() += 1,
        }
    }
    let connect_secs = t_connect.elapsed().as_secs_f64();
    let failed = clients - connected;
    println!("CONNECTED {connected} failed {failed} in {connect_secs:.2} s");
    for (e, n) in &errors {
        println!("  connect error x{n}: {e}");
    }
    // Let the server settle (GC, lazily allocated buffers) before reading its memory.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_connected = args.server_pid.and_then(read_rss_kb);
    let rss_per_conn = match (rss_before, rss_connected) {
        (Some(b), Some(a)) if connected > 0 => {
            Some((a as f64 - b as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    if let (Some(b), Some(a)) = (rss_before, rss_connected) {
        println!(
            "server RSS {b} kB before, {a} kB with {connected} clients: {:.0} bytes per connection",
            rss_per_conn.unwrap_or(0.0)
        );
    }

    // ---- ping-pong
    let mut result = serde_json::json!({
        "label": args.label, "url": url, "clients": clients, "connected": connected, "failed": failed,
        "pairs": pairs, "window": args.window, "payload_bytes": args.payload_bytes,
        "connect_secs": connect_secs, "server_rss_kb_before": rss_before,
        "server_rss_kb_connected": rss_connected, "server_rss_bytes_per_conn": rss_per_conn,
    });
    if pairs > 0 && connected == clients {
        start_tx.send_replace(true);
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        let cpu0 = args.server_pid.and_then(read_cpu_ticks);
        let self0 = read_cpu_ticks(std::process::id());
        let n0 = shared.relayed.load(Ordering::Relaxed);
        shared.measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        println!("MEASURE START");
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        shared.measuring.store(false, Ordering::Relaxed);
        let secs = t0.elapsed().as_secs_f64();
        let n1 = shared.relayed.load(Ordering::Relaxed);
        let cpu1 = args.server_pid.and_then(read_cpu_ticks);
        let self1 = read_cpu_ticks(std::process::id());
        println!("MEASURE END");
        stop_tx.send_replace(true);
        let mut rtts: Vec<u32> = Vec::new();
        for t in tasks {
            if let Ok(mut samples) = t.await {
                rtts.append(&mut samples);
            }
        }
        rtts.sort_unstable();
        let relayed = n1 - n0;
        let rate = relayed as f64 / secs;
        let p50 = percentile_ms(&rtts, 0.50);
        let p99 = percentile_ms(&rtts, 0.99);
        println!(
            "relayed {relayed} msgs in {secs:.2} s = {rate:.0} msgs/s; RTT p50 {p50:.3} ms p99 {p99:.3} ms ({} samples)",
            rtts.len()
        );
        let server_cpu = cpu0.zip(cpu1).map(|(a, b)| (b - a) as f64 / CLK_TCK);
        let tool_cpu = self0.zip(self1).map(|(a, b)| (b - a) as f64 / CLK_TCK);
        let cpu_per_msg_us = server_cpu
            .filter(|_| relayed > 0)
            .map(|c| c * 1e6 / relayed as f64);
        if let Some(c) = server_cpu {
            println!(
                "server CPU {c:.2} s over the window = {:.2} us per relayed msg ({:.0}% of one core); load tool CPU {:.2} s",
                cpu_per_msg_us.unwrap_or(f64::NAN),
                c / secs * 100.0,
                tool_cpu.unwrap_or(f64::NAN)
            );
        }
        let unexpected = shared.unexpected.load(Ordering::Relaxed);
        let closed = shared.closed.load(Ordering::Relaxed);
        if unexpected > 0 || closed > 0 {
            println!(
                "WARNING: {unexpected} unexpected frames, {closed} sockets closed during the run"
            );
        }
        let obj = result.as_object_mut().expect("object");
        obj.insert("seconds".into(), secs.into());
        obj.insert("relayed".into(), relayed.into());
        obj.insert("msgs_per_sec".into(), rate.into());
        obj.insert("rtt_p50_ms".into(), p50.into());
        obj.insert("rtt_p99_ms".into(), p99.into());
        obj.insert("server_cpu_secs".into(), server_cpu.into());
        obj.insert("server_cpu_us_per_msg".into(), cpu_per_msg_us.into());
        obj.insert("tool_cpu_secs".into(), tool_cpu.into());
        obj.insert("unexpected_frames".into(), unexpected.into());
        obj.insert("closed_during_run".into(), closed.into());
    } else {
        if pairs > 0 {
            println!("not all clients connected: ping-pong skipped");
        }
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        let closed = shared.closed.load(Ordering::Relaxed);
        let obj = result.as_object_mut().expect("object");
        obj.insert("closed_during_hold".into(), closed.into());
        obj.insert(
            "server_rss_kb_end".into(),
            args.server_pid.and_then(read_rss_kb).into(),
        );
        stop_tx.send_replace(true);
    }
    println!("RESULT {result}");
    Ok(())
}

/// Linux exposes process times in USER_HZ ticks, 100 per second on every mainstream architecture.
const CLK_TCK: f64 = 100.0;

/// utime + stime of a process, in clock ticks.
fn read_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // after ") ": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// VmRSS of a process in kB.
fn read_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

fn short_error(err: &io::Error) -> String {
    let s = err.to_string();
    s.chars().take(120).collect()
}

/// A minimal client-side WebSocket over a TCP stream.
struct Ws {
    stream: TcpStream,
    rbuf: Vec<u8>,
    /// Accumulated fragments of a message (continuation frames).
    partial: Vec<u8>,
    mask_state: u32,
}

/// A decoded frame.
enum Frame {
    Text(Vec<u8>),
    Ping(Vec<u8>),
    Close,
    Other,
}

impl Ws {
    async fn connect(target: &Target, query: &str, src: Option<IpAddr>) -> io::Result<Ws> {
        let socket = if target.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = src {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        // Small kernel buffers: thousands of mostly idle sockets.
        let _ = socket.set_recv_buffer_size(32 * 1024);
        let _ = socket.set_send_buffer_size(32 * 1024);
        let stream = tokio::time::timeout(Duration::from_secs(30), socket.connect(target.addr))
            .await
            .map_err(|_| io::Error::other("TCP connect timed out"))??;
        stream.set_nodelay(true)?;
        let mut ws = Ws {
            stream,
            rbuf: Vec::with_capacity(1024),
            partial: Vec::new(),
            mask_state: 0x9e37_79b9 ^ (query.len() as u32).wrapping_mul(0x85eb_ca6b),
        };
        let key = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            rand::random::<[u8; 16]>(),
        );
        let req = format!(
            "GET {}?{query} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            target.path, target.host
        );
        ws.stream.write_all(req.as_bytes()).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(end) = find(&ws.rbuf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.rbuf[..end]).to_string();
                let status = head.lines().next().unwrap_or("").to_string();
                if !status.contains(" 101 ") {
                    return Err(io::Error::other(format!("handshake refused: {status}")));
                }
                ws.rbuf.drain(..end + 4);
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, ws.stream.read_buf(&mut ws.rbuf))
                .await
                .map_err(|_| io::Error::other("handshake timed out"))??;
            if n == 0 {
                return Err(io::Error::other("connection closed during handshake"));
            }
        }
        // The first frame must be OPEN.
        let first = tokio::time::timeout(Duration::from_secs(30), ws.next_text())
            .await
            .map_err(|_| io::Error::other("no OPEN within 30 s"))??;
        if first.as_slice() != br#"{"type":"OPEN"}"# {
            return Err(io::Error::other(format!(
                "expected OPEN, got {}",
                String::from_utf8_lossy(&first)
            )));
        }
        Ok(ws)
    }

    /// Reads until one text message is complete (answers pings, fails on close).
    async fn next_text(&mut self) -> io::Result<Vec<u8>> {
        loop {
            while let Some(frame) = self.parse_frame()? {
                match frame {
                    Frame::Text(t) => return Ok(t),
                    Frame::Ping(p) => self.send_frame(0xA, &p).await?,
                    Frame::Close => return Err(io::Error::other("closed by server")),
                    Frame::Other => {}
                }
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(io::Error::other("connection closed"));
            }
        }
    }

    /// Decodes one complete frame from the read buffer, if there is one.
    fn parse_frame(&mut self) -> io::Result<Option<Frame>> {
        let b = &self.rbuf;
        if b.len() < 2 {
            return Ok(None);
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (len, mut off) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        let mask = if masked {
            if b.len() < off + 4 {
                return Ok(None);
            }
            off += 4;
            Some([b[off - 4], b[off - 3], b[off - 2], b[off - 1]])
        } else {
            None
        };
        if b.len() < off + len {
            return Ok(None);
        }
        let mut payload = b[off..off + len].to_vec();
        if let Some(m) = mask {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= m[i % 4];
            }
        }
        self.rbuf.drain(..off + len);
        Ok(Some(match opcode {
            0x1 | 0x0 if !fin => {
                self.partial.extend_from_slice(&payload);
                Frame::Other
            }
            0x0 => {
                self.partial.extend_from_slice(&payload);
                Frame::Text(std::mem::take(&mut self.partial))
            }
            0x1 => Frame::Text(payload),
            0x8 => Frame::Close,
            0x9 => Frame::Ping(payload),
            _ => Frame::Other,
        }))
    }

    /// Appends a masked client frame to `out`.
    fn encode_frame(&mut self, opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
        out.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len < 65536 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // xorshift32: masking keys only have to be unpredictable to browsers' peers, not here.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        let m = x.to_be_bytes();
        out.extend_from_slice(&m);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        self.encode_frame(opcode, payload, &mut out);
        self.stream.write_all(&out).await
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Fields of an incoming relayed frame that the generator needs.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// The timing part of our payloads.
#[derive(Deserialize)]
struct Stamp {
    t: u64,
}

/// One connected client and its part in the run.
struct Client {
    id: String,
    role: Role,
    ws: Ws,
    shared: Arc<Shared>,
    filler: Arc<str>,
    window: usize,
    heartbeat: Option<Duration>,
    epoch: Instant,
}

impl Client {
    /// Runs until `stop`; returns the RTT samples (microseconds) taken while measuring.
    async fn run(
        mut self,
        mut start: watch::Receiver<bool>,
        mut stop: watch::Receiver<bool>,
    ) -> Vec<u32> {
        let mut samples = Vec::new();
        let mut seq = 0u64;
        let mut out = Vec::with_capacity(4096);
        // Spread heartbeats over the period so thousands of clients do not beat in step.
        let period = self.heartbeat.unwrap_or(Duration::from_secs(3600));
        let offset = Duration::from_millis(
            u64::from(rand::random::<u16>()) % period.as_millis().max(1) as u64,
        );
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut started = !matches!(self.role, Role::Caller { .. });
        let heartbeat_frame = br#"{"type":"HEARTBEAT"}"#;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                r = start.changed(), if !started => {
                    if r.is_err() { break; }
                    if *start.borrow() {
                        started = true;
                        if let Role::Caller { callee } = &self.role {
                            let callee = callee.clone();
                            for _ in 0..self.window {
                                self.push_offer(&callee, &mut seq, &mut out);
                            }
                        }
                    }
                }
                _ = beat.tick(), if self.heartbeat.is_some() => {
                    self.ws.encode_frame(0x1, heartbeat_frame, &mut out);
                }
                r = self.ws.stream.read_buf(&mut self.ws.rbuf) => {
                    match r {
                        Ok(0) | Err(_) => {
                            self.shared.closed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(_) => {}
                    }
                    loop {
                        let frame = match self.ws.parse_frame() {
                            Ok(Some(f)) => f,
                            Ok(None) => break,
                            Err(_) => break,
                        };
                        match frame {
                            Frame::Text(text) => self.on_text(&text, &mut seq, &mut out, &mut samples),
                            Frame::Ping(p) => self.ws.encode_frame(0xA, &p, &mut out),
                            Frame::Close => {
                                self.shared.closed.fetch_add(1, Ordering::Relaxed);
                                return samples;
                            }
                            Frame::Other => {}
                        }
                    }
                }
            }
            if !out.is_empty() {
                if self.ws.stream.write_all(&out).await.is_err() {
                    self.shared.closed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                out.clear();
            }
        }
        samples
    }

    fn push_offer(&mut self, callee: &str, seq: &mut u64, out: &mut Vec<u8>) {
        *seq += 1;
        let t = self.epoch.elapsed().as_nanos() as u64;
        let msg = format!(
            r#"{{"type":"OFFER","payload":{{"s":{seq},"t":{t},"sdp":"{}"}},"dst":"{callee}"}}"#,
            self.filler
        );
        self.ws.encode_frame(0x1, msg.as_bytes(), out);
    }

    fn on_text(&mut self, text: &[u8], seq: &mut u64, out: &mut Vec<u8>, samples: &mut Vec<u32>) {
        let Ok(msg) = serde_json::from_slice::<Incoming>(text) else {
            self.shared.unexpected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match (&self.role, msg.kind) {
            (Role::Callee { caller }, "OFFER") => {
                self.shared.relayed.fetch_add(1, Ordering::Relaxed);
                let payload = msg.payload.map(RawValue::get).unwrap_or("null");
                let reply = format!(r#"{{"type":"ANSWER","payload":{payload},"dst":"{caller}"}}"#);
                self.ws.encode_frame(0x1, reply.as_bytes(), out);
            }
            (Role::Caller { callee }, "ANSWER") => {
                self.shared.relayed.fetch_add(1, Ordering::Relaxed);
                if self.shared.measuring.load(Ordering::Relaxed)
                    && let Some(stamp) = msg
                        .payload
                        .and_then(|p| serde_json::from_str::<Stamp>(p.get()).ok())
                {
                    let now = self.epoch.elapsed().as_nanos() as u64;
                    samples
                        .push((now.saturating_sub(stamp.t) / 1000).min(u64::from(u32::MAX)) as u32);
                }
                let callee = callee.clone();
                self.push_offer(&callee, seq, out);
            }
            _ => {
                if self.shared.unexpected.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!(
                        "{}: unexpected frame {}",
                        self.id,
                        String::from_utf8_lossy(&text[..text.len().min(200)])
                    );
                }
            }
        }
    }
}
