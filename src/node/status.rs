//! What the node shows about itself: the `/status.json` snapshot, the `/status` HTML page
//! and the `/metrics` Prometheus text. Pure functions of a [`NodeStatus`], so they are
//! tested without a running node.

use serde::Serialize;
use std::fmt::Write as _;

/// A signaling server the node's peer is registered on, as shown on the status page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointStatus {
    /// `ws://host:port/path` style address (never carries secrets; the PeerJS key is public).
    pub url: String,
    /// `own` for the node's signaling server, `extra` for `--also-register` servers.
    pub kind: &'static str,
    /// `registered`, `connecting` or `retrying`.
    pub state: String,
    /// How many times the registration was (re)established.
    pub registrations: u64,
    /// Last error seen, if any (safe to show: no secrets in signaling errors).
    pub last_error: Option<String>,
}

/// Relay figures (from the relay's metrics).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RelayFigures {
    /// Connected clients.
    pub clients: u64,
    /// Rooms that hold messages or members.
    pub rooms: u64,
    /// Messages stored across rooms.
    pub messages_stored: u64,
    /// Approximate bytes the stored messages take (what the memory budget counts).
    pub bytes_stored: u64,
    /// The memory budget in bytes.
    pub memory_budget: u64,
    /// Messages evicted by the memory budget since start.
    pub messages_evicted: u64,
    /// Bytes evicted by the memory budget since start.
    pub bytes_evicted: u64,
    /// Publishes accepted since start.
    pub published: u64,
    /// Messages delivered to clients (live and replayed) since start.
    pub delivered: u64,
    /// Direct messages relayed since start.
    pub directs: u64,
    /// Errors answered to clients since start.
    pub errors: u64,
    /// Bytes received from clients since start.
    pub bytes_in: u64,
    /// Bytes sent to clients since start.
    pub bytes_out: u64,
    /// Clients disconnected because their send buffer was full.
    pub slow_disconnects: u64,
    /// Connections served with the seed's legacy protocol.
    pub legacy_clients: u64,
    /// Connected clients on a WebRTC DataChannel.
    pub clients_webrtc: u64,
    /// Connected clients on the relay WebSocket (`GET /relay`).
    pub clients_ws: u64,
    /// Publishes per second over the last sampling window.
    pub publish_rate: f64,
    /// Deliveries per second over the last sampling window.
    pub delivery_rate: f64,
}

/// One room on the status page.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoomStatus {
    /// Room name.
    pub name: String,
    /// Members now.
    pub members: u64,
    /// Highest sequence number.
    pub head: u64,
    /// Messages stored.
    pub stored: u64,
}

/// One connected relay client in `/status.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClientStatus {
    /// The node's connection number (in connection order).
    pub conn: u64,
    /// The client's PeerJS peer id (`ws-…` for a WebSocket client).
    pub peer_id: String,
    /// The name it declared on connecting, if any.
    pub client: Option<String>,
    /// `webrtc` or `ws`.
    pub transport: super::transport::Transport,
}

/// Everything `/status.json` returns and `/status` renders.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NodeStatus {
    /// The node's peer id.
    pub peer_id: String,
    /// The node's generation.
    pub generation: u64,
    /// When the node started (RFC 3339).
    pub started_at: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// When the node plans to be gone (RFC 3339), if it has a lifetime.
    pub expires_at: Option<String>,
    /// Seconds until the next rotation starts, if planned.
    pub next_rotation_secs: Option<u64>,
    /// Lifecycle state (`serving`, `handing-off`, …).
    pub lifecycle: String,
    /// The crash-recovery gap this node announces in `welcome.gap` (`reason`, `recovery`,
    /// `margin`, `skipped`; see `protocol/handoff.md`), or `null`: nothing known missing.
    pub gap: Option<serde_json::Value>,
    /// The path of the node's latest handoff connection, as predecessor or successor:
    /// `webrtc` (a DataConnection) or `ws` (the `/handoff` WebSocket); `null` before any.
    pub handoff_transport: Option<&'static str>,
    /// Why this node, as a successor, gave up on its predecessor and recovered from a
    /// backup: `unreachable` (silent) or `blocked` (it answered but admitted no transfer
    /// within `--handoff-max-wait`); `null` when it took over (or was the first node).
    pub handoff_gave_up: Option<&'static str>,
    /// Tunnel status (`none`, or the public URL / error).
    pub tunnel: String,
    /// Where the node listens (`http://127.0.0.1:9000/`).
    pub listen_url: String,
    /// Signaling registrations.
    pub endpoints: Vec<EndpointStatus>,
    /// Relay figures.
    pub relay: RelayFigures,
    /// The busiest rooms (at most a few dozen).
    pub rooms: Vec<RoomStatus>,
    /// Connected relay clients and the path each uses (the oldest 200).
    pub clients: Vec<ClientStatus>,
    /// Resident set size of the process in bytes (Linux), if known.
    pub rss_bytes: Option<u64>,
    /// Signaling server counters (a selection; `/metrics` has them all), name → value.
    pub signaling: Vec<(String, u64)>,
    /// A member of a replicated ring: its calls to the other members answered so far, by
    /// path (`{"webrtc": n, "websocket": n, "http": n}`); absent on a node without
    /// `--replicas`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_calls: Option<ReplicaCalls>,
    /// The node's version.
    pub version: &'static str,
}

/// A member's calls answered, by path ([`NodeStatus::replica_calls`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaCalls {
    /// Over WebRTC member links.
    pub webrtc: u64,
    /// Over WebSocket member links (through the tunnel).
    pub websocket: u64,
    /// As HTTP `POST`s.
    pub http: u64,
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `1.5 MiB` style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `2h 05m` style durations.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m:02}m")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Resident set size of this process (Linux `/proc/self/statm`, in pages of the system's page
/// size: 4 KiB on x86-64, 16 or 64 KiB on some arm64 kernels).
pub fn current_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size()?)
}

/// The system's memory page size (`sysconf(_SC_PAGESIZE)`).
fn page_size() -> Option<u64> {
    // SAFETY: sysconf only reads a system constant; it takes no pointers.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| *s > 0)
}

const STATUS_CSS: &str = r#"
:root{--bg:#f5f6f8;--card:#fff;--ink:#1c2230;--muted:#5e6778;--line:#dfe3ea;--ok:#1f8a4c;--warn:#b7791f;--bad:#c0392b;--accent:#2c6bed;
font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
body{margin:0;padding:1.2rem;max-width:72rem;margin-inline:auto}
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:.4rem 1.2rem;margin-bottom:1rem}
h1{font-size:1.4rem;margin:0}h2{font-size:.8rem;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);margin:0 0 .6rem}
.pill{display:inline-block;padding:.1rem .55rem;border-radius:1rem;font-size:.8rem;background:#e7efff;color:var(--accent);font-weight:600}
.pill.ok{background:#e3f4ea;color:var(--ok)}.pill.warn{background:#fbf0dc;color:var(--warn)}.pill.bad{background:#fbe5e2;color:var(--bad)}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.8rem;margin-bottom:1rem}
.card{background:var(--card);border:1px solid var(--line);border-radius:.6rem;padding:.8rem 1rem}
.big{font-size:1.6rem;font-weight:650;font-variant-numeric:tabular-nums}.sub{color:var(--muted);font-size:.8rem}
.meter{height:.5rem;background:var(--line);border-radius:.3rem;overflow:hidden;margin-top:.4rem}.meter>span{display:block;height:100%;background:var(--accent)}
table{width:100%;border-collapse:collapse;font-size:.9rem}th,td{text-align:left;padding:.35rem .4rem;border-bottom:1px solid var(--line);overflow-wrap:anywhere}
th{color:var(--muted);font-weight:600;font-size:.8rem}td.n{text-align:right;font-variant-numeric:tabular-nums}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(22rem,1fr));gap:.8rem}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.85em;overflow-wrap:anywhere}
footer{margin-top:1rem;color:var(--muted);font-size:.8rem}a{color:var(--accent)}
"#;

fn card(out: &mut String, id: &str, title: &str, value: &str, sub: &str) {
    let _ = write!(
        out,
        r#"<div class="card" id="{}"><h2>{}</h2><div class="big">{}</div><div class="sub">{}</div></div>"#,
        escape_html(id),
        escape_html(title),
        escape_html(value),
        escape_html(sub)
    );
}

/// Renders the `/status` page: self-contained HTML (inline CSS, no scripts beyond a
/// meta refresh, no external assets); every dynamic string is escaped.
pub fn render_html(s: &NodeStatus) -> String {
    let mut out = String::with_capacity(8192);
    out.push_str("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    out.push_str("<meta http-equiv=\"refresh\" content=\"10\">");
    let _ = write!(
        out,
        "<title>Ouroboros node {} · generation {}</title><style>{STATUS_CSS}</style></head><body>",
        escape_html(&s.peer_id),
        s.generation
    );
    let lifecycle_class = match s.lifecycle.as_str() {
        "serving" => "ok",
        "handing-off" | "launching" | "draining" => "warn",
        _ => "",
    };
    let _ = write!(
        out,
        r#"<header><h1>Ouroboros node</h1><span class="pill" id="generation">generation {}</span><span class="pill {}" id="lifecycle">{}</span><code id="peer-id">{}</code></header>"#,
        s.generation,
        lifecycle_class,
        escape_html(&s.lifecycle),
        escape_html(&s.peer_id)
    );
    if let Some(gap) = &s.gap {
        let _ = write!(
            out,
            r#"<p class="warn" id="gap">Recovered after a crash: messages may be missing (gap <code>{}</code>).</p>"#,
            escape_html(&gap.to_string())
        );
    }

    out.push_str(r#"<section class="grid" aria-label="summary">"#);
    card(
        &mut out,
        "uptime",
        "Uptime",
        &human_duration(s.uptime_secs),
        &format!("since {}", s.started_at),
    );
    let rotation = match s.next_rotation_secs {
        Some(secs) => human_duration(secs),
        None => "none planned".to_string(),
    };
    let expires = s.expires_at.as_deref().unwrap_or("runs until stopped");
    card(
        &mut out,
        "next-rotation",
        "Next rotation",
        &rotation,
        expires,
    );
    card(
        &mut out,
        "clients",
        "Clients",
        &s.relay.clients.to_string(),
        &format!(
            "{} WebRTC · {} WebSocket · {} legacy since start",
            s.relay.clients_webrtc, s.relay.clients_ws, s.relay.legacy_clients
        ),
    );
    card(
        &mut out,
        "rooms-count",
        "Rooms",
        &s.relay.rooms.to_string(),
        &format!("{} stored messages", s.relay.messages_stored),
    );
    card(
        &mut out,
        "rates",
        "Traffic",
        &format!("{:.1}/s", s.relay.delivery_rate),
        &format!(
            "delivered · {:.1}/s published · {} total",
            s.relay.publish_rate, s.relay.delivered
        ),
    );
    // Memory card with a meter.
    let pct = if s.relay.memory_budget > 0 {
        (s.relay.bytes_stored as f64 / s.relay.memory_budget as f64 * 100.0).min(100.0)
    } else {
        0.0
    };
    let _ = write!(
        out,
        r#"<div class="card" id="memory"><h2>Memory</h2><div class="big">{}</div><div class="sub">of {} budget · {} evicted · RSS {}</div><div class="meter" role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{:.0}" aria-label="memory budget used"><span style="width:{:.1}%"></span></div></div>"#,
        escape_html(&human_bytes(s.relay.bytes_stored)),
        escape_html(&human_bytes(s.relay.memory_budget)),
        s.relay.messages_evicted,
        escape_html(&s.rss_bytes.map(human_bytes).unwrap_or_else(|| "n/a".into())),
        pct,
        pct
    );
    out.push_str("</section>");

    out.push_str(r#"<div class="cols">"#);
    // Endpoints.
    out.push_str(r#"<section class="card" aria-labelledby="h-endpoints"><h2 id="h-endpoints">Signaling endpoints</h2><table id="endpoints"><thead><tr><th>URL</th><th>kind</th><th>state</th></tr></thead><tbody>"#);
    for e in &s.endpoints {
        let class = match e.state.as_str() {
            "registered" => "ok",
            "connecting" => "warn",
            _ => "bad",
        };
        let err = e
            .last_error
            .as_deref()
            .map(|m| format!("<div class=\"sub\">{}</div>", escape_html(m)))
            .unwrap_or_default();
        let _ = write!(
            out,
            r#"<tr><td><code>{}</code>{}</td><td>{}</td><td><span class="pill {}">{}</span></td></tr>"#,
            escape_html(&e.url),
            err,
            escape_html(e.kind),
            class,
            escape_html(&e.state)
        );
    }
    let _ = write!(
        out,
        r#"</tbody></table><p class="sub">HTTP: <code>{}</code> · tunnel: <span id="tunnel">{}</span></p></section>"#,
        escape_html(&s.listen_url),
        escape_html(&s.tunnel)
    );
    // Rooms.
    out.push_str(r#"<section class="card" aria-labelledby="h-rooms"><h2 id="h-rooms">Rooms</h2><table id="rooms"><thead><tr><th>room</th><th>members</th><th>head</th><th>stored</th></tr></thead><tbody>"#);
    if s.rooms.is_empty() {
        out.push_str(r#"<tr><td colspan="4" class="sub">no rooms yet</td></tr>"#);
    }
    for r in &s.rooms {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            escape_html(&r.name),
            r.members,
            r.head,
            r.stored
        );
    }
    out.push_str("</tbody></table></section>");
    // Counters.
    out.push_str(r#"<section class="card" aria-labelledby="h-counters"><h2 id="h-counters">Counters</h2><table id="counters"><tbody>"#);
    let relay = &s.relay;
    let rows: [(&str, String); 9] = [
        ("published", relay.published.to_string()),
        ("delivered", relay.delivered.to_string()),
        ("direct messages", relay.directs.to_string()),
        ("errors answered", relay.errors.to_string()),
        ("bytes in", human_bytes(relay.bytes_in)),
        ("bytes out", human_bytes(relay.bytes_out)),
        ("messages evicted", relay.messages_evicted.to_string()),
        ("bytes evicted", human_bytes(relay.bytes_evicted)),
        ("slow clients dropped", relay.slow_disconnects.to_string()),
    ];
    for (k, v) in rows.iter() {
        let _ = write!(
            out,
            r#"<tr><th>{}</th><td class="n">{}</td></tr>"#,
            escape_html(k),
            escape_html(v)
        );
    }
    for (k, v) in &s.signaling {
        let _ = write!(
            out,
            r#"<tr><th>signaling {}</th><td class="n">{}</td></tr>"#,
            escape_html(k),
            v
        );
    }
    out.push_str("</tbody></table></section></div>");
    let _ = write!(
        out,
        r#"<footer>ouroboros {} · <a href="/status.json">status.json</a> · <a href="/metrics">metrics</a> · <a href="/ouroboros.json">ouroboros.json</a> · <a href="/chat">chat</a> · refreshes every 10 s</footer></body></html>"#,
        escape_html(s.version)
    );
    out
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

/// Renders `/metrics` in the Prometheus text exposition format (version 0.0.4).
pub fn render_metrics(s: &NodeStatus) -> String {
    let mut out = String::with_capacity(4096);
    let r = &s.relay;
    if let Some(c) = s.replica_calls {
        let _ = writeln!(
            out,
            "# HELP ouroboros_replica_calls_total Calls to the other members of the replicated ring answered, by path.\n# TYPE ouroboros_replica_calls_total counter\nouroboros_replica_calls_total{{transport=\"webrtc\"}} {}\nouroboros_replica_calls_total{{transport=\"websocket\"}} {}\nouroboros_replica_calls_total{{transport=\"http\"}} {}",
            c.webrtc, c.websocket, c.http
        );
    }
    let _ = writeln!(
        out,
        "# HELP ouroboros_node_info Static node information.\n# TYPE ouroboros_node_info gauge\nouroboros_node_info{{peer_id=\"{}\",version=\"{}\"}} 1",
        s.peer_id
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
        s.version
    );
    metric(
        &mut out,
        "ouroboros_generation",
        "gauge",
        "Generation of this node in the ring.",
        s.generation,
    );
    metric(
        &mut out,
        "ouroboros_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        s.uptime_secs,
    );
    metric(
        &mut out,
        "ouroboros_relay_clients",
        "gauge",
        "Connected relay clients.",
        r.clients,
    );
    let _ = writeln!(
        out,
        "# HELP ouroboros_relay_clients_by_transport Connected relay clients by path (webrtc: DataChannel, ws: the /relay WebSocket).\n# TYPE ouroboros_relay_clients_by_transport gauge\nouroboros_relay_clients_by_transport{{transport=\"webrtc\"}} {}\nouroboros_relay_clients_by_transport{{transport=\"ws\"}} {}",
        r.clients_webrtc, r.clients_ws
    );
    metric(
        &mut out,
        "ouroboros_relay_rooms",
        "gauge",
        "Rooms with messages or members.",
        r.rooms,
    );
    metric(
        &mut out,
        "ouroboros_relay_messages_stored",
        "gauge",
        "Messages stored across rooms.",
        r.messages_stored,
    );
    metric(
        &mut out,
        "ouroboros_relay_bytes_stored",
        "gauge",
        "Bytes counted against the memory budget.",
        r.bytes_stored,
    );
    metric(
        &mut out,
        "ouroboros_relay_memory_budget_bytes",
        "gauge",
        "The memory budget.",
        r.memory_budget,
    );
    metric(
        &mut out,
        "ouroboros_relay_messages_evicted_total",
        "counter",
        "Messages evicted by the memory budget.",
        r.messages_evicted,
    );
    metric(
        &mut out,
        "ouroboros_relay_bytes_evicted_total",
        "counter",
        "Bytes evicted by the memory budget.",
        r.bytes_evicted,
    );
    metric(
        &mut out,
        "ouroboros_relay_published_total",
        "counter",
        "Publishes stored.",
        r.published,
    );
    metric(
        &mut out,
        "ouroboros_relay_delivered_total",
        "counter",
        "Messages delivered to clients.",
        r.delivered,
    );
    metric(
        &mut out,
        "ouroboros_relay_direct_total",
        "counter",
        "Direct messages relayed.",
        r.directs,
    );
    metric(
        &mut out,
        "ouroboros_relay_errors_total",
        "counter",
        "Error answers sent to clients.",
        r.errors,
    );
    metric(
        &mut out,
        "ouroboros_relay_bytes_in_total",
        "counter",
        "Bytes received from relay clients.",
        r.bytes_in,
    );
    metric(
        &mut out,
        "ouroboros_relay_bytes_out_total",
        "counter",
        "Bytes sent to relay clients.",
        r.bytes_out,
    );
    metric(
        &mut out,
        "ouroboros_relay_slow_disconnects_total",
        "counter",
        "Clients dropped because their send buffer was full.",
        r.slow_disconnects,
    );
    metric(
        &mut out,
        "ouroboros_relay_legacy_clients_total",
        "counter",
        "Connections served with the legacy seed protocol.",
        r.legacy_clients,
    );
    metric(
        &mut out,
        "ouroboros_relay_publish_rate",
        "gauge",
        "Publishes per second (recent window).",
        r.publish_rate,
    );
    metric(
        &mut out,
        "ouroboros_relay_delivery_rate",
        "gauge",
        "Deliveries per second (recent window).",
        r.delivery_rate,
    );
    if let Some(rss) = s.rss_bytes {
        metric(
            &mut out,
            "ouroboros_process_resident_memory_bytes",
            "gauge",
            "Resident set size.",
            rss,
        );
    }
    let registered = s
        .endpoints
        .iter()
        .filter(|e| e.state == "registered")
        .count();
    metric(
        &mut out,
        "ouroboros_signaling_registrations_up",
        "gauge",
        "Signaling servers the node's peer is registered on now.",
        registered,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_counted_in_the_systems_pages() {
        let page = page_size().expect("sysconf(_SC_PAGESIZE)");
        assert!(page.is_power_of_two() && page >= 4096, "{page}");
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
        let rss = current_rss().expect("RSS on Linux");
        // Resident pages move between the two reads; the unit must be the page size.
        assert_eq!(rss % page, 0);
        assert!(
            rss.abs_diff(pages * page) < 64 * page,
            "{rss} vs {pages} pages"
        );
    }

    fn sample() -> NodeStatus {
        NodeStatus {
            peer_id: "ouroboros-<b>x</b>".into(),
            generation: 3,
            started_at: "2026-11-23T15:00:00.000Z".into(),
            uptime_secs: 3725,
            expires_at: None,
            next_rotation_secs: Some(120),
            lifecycle: "serving".into(),
            gap: None,
            handoff_transport: None,
            handoff_gave_up: None,
            tunnel: "none".into(),
            listen_url: "http://127.0.0.1:9000/".into(),
            endpoints: vec![EndpointStatus {
                url: "ws://127.0.0.1:9000/peerjs".into(),
                kind: "own",
                state: "registered".into(),
                registrations: 1,
                last_error: Some("<script>".into()),
            }],
            relay: RelayFigures {
                clients: 2,
                memory_budget: 1 << 20,
                bytes_stored: 1 << 19,
                ..Default::default()
            },
            rooms: vec![RoomStatus {
                name: "a&b".into(),
                members: 1,
                head: 9,
                stored: 9,
            }],
            clients: Vec::new(),
            rss_bytes: Some(10 << 20),
            signaling: vec![("clients".into(), 3)],
            replica_calls: Some(ReplicaCalls {
                webrtc: 5,
                websocket: 2,
                http: 1,
            }),
            version: "0.1.0",
        }
    }

    #[test]
    fn html_escapes_every_dynamic_string() {
        let html = render_html(&sample());
        assert!(!html.contains("<b>x</b>"));
        assert!(html.contains("ouroboros-&lt;b&gt;x&lt;/b&gt;"));
        assert!(!html.contains("<script>"));
        assert!(html.contains("a&amp;b"));
        assert!(html.contains("1h 02m"));
        assert!(html.contains("50%") || html.contains("50.0%"));
    }

    #[test]
    fn a_crash_recovery_gap_is_shown() {
        assert!(!render_html(&sample()).contains("id=\"gap\""));
        let mut s = sample();
        s.gap = Some(serde_json::json!({"reason": "predecessor_lost", "room": "<i>"}));
        let html = render_html(&s);
        assert!(html.contains("id=\"gap\""));
        assert!(html.contains("predecessor_lost"));
        assert!(!html.contains("<i>"), "escaped");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["gap"]["reason"], "predecessor_lost");
        assert_eq!(
            serde_json::to_value(sample()).unwrap()["gap"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn metrics_are_prometheus_text() {
        let m = render_metrics(&sample());
        assert!(m.contains("ouroboros_relay_clients 2\n"));
        assert!(m.contains("ouroboros_relay_clients_by_transport{transport=\"ws\"} 0\n"));
        assert!(
            m.contains("ouroboros_node_info{peer_id=\"ouroboros-<b>x</b>\",version=\"0.1.0\"} 1")
        );
        for line in m.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(!name.is_empty());
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn humans() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m 01s");
        assert_eq!(human_duration(90061), "1d 1h 01m");
    }
}
