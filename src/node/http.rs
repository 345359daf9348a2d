//! The node's own HTTP routes, next to the signaling server's: the discovery record, the
//! status page, metrics, and the web chat (`/`, `/chat`).

use std::sync::Arc;

use axum::{
    Router,
    extract::{
        ConnectInfo, Query, State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::NodeShared;
use super::status::render_html;
use crate::signaling::RemoteAddr;

const CHAT_HTML: &str = include_str!("web/chat.html");
const CHAT_JS: &str = include_str!("web/chat.js");
const CHAT_CSS: &str = include_str!("web/chat.css");

/// The `peerjs` browser bundle the node serves at [`PEERJS_PATH`]: a verbatim copy of
/// `dist/peerjs.min.js` from the npm package `peerjs` at [`PEERJS_VERSION`] (MIT,
/// `web/peerjs.LICENSE`), so the web chat works with no internet.
///
/// [`PEERJS_VERSION`]: crate::peer::PEERJS_VERSION
pub const PEERJS_BUNDLE: &[u8] = include_bytes!("web/peerjs.min.js");

/// Where the node serves [`PEERJS_BUNDLE`].
pub const PEERJS_PATH: &str = "/peerjs.min.js";

/// SHA-256 of [`PEERJS_BUNDLE`] (hex), checked by a test so the copy cannot drift.
pub const PEERJS_SHA256: &str = "7604d8c31bec4f134b0d15c2d80b1d095ea18af005354f439f14291fcd7b4168";

/// Subresource integrity of [`PEERJS_BUNDLE`]: the same bytes as the npm package's file,
/// which CDNs (unpkg, jsDelivr) serve unchanged.
pub const PEERJS_INTEGRITY: &str =
    "sha384-x0YgkOr/3UOZP2CRDxGW9e0Q+2Qjyr3uJrm4xU32Y7ZCNAo7Cc7bjhrZMi/dwczu";

/// Whether `url` names the pinned bundle (the node's own copy, or the same version's
/// `dist/peerjs.min.js` on a CDN), so the page can require [`PEERJS_INTEGRITY`].
fn is_pinned_bundle(url: &str) -> bool {
    url == PEERJS_PATH
        || url.ends_with(&format!(
            "/peerjs@{}/dist/peerjs.min.js",
            crate::peer::PEERJS_VERSION
        ))
}

/// The chat page with the PeerJS client's `<script>` filled in (URL escaped for an
/// attribute). The pinned bundle gets `integrity` and `crossorigin`, so a CDN serving
/// anything else is refused; another URL is loaded as given (the operator's choice).
pub fn chat_html(peerjs_url: &str) -> String {
    let src = super::status::escape_html(peerjs_url);
    let tag = if is_pinned_bundle(peerjs_url) {
        format!(
            r#"<script src="{src}" integrity="{PEERJS_INTEGRITY}" crossorigin="anonymous"></script>"#
        )
    } else {
        format!(r#"<script src="{src}"></script>"#)
    };
    CHAT_HTML.replace(r#"<script src="{{PEERJS_URL}}"></script>"#, &tag)
}

/// The chat page's Content-Security-Policy: scripts only from the node itself (and the
/// origin of `--peerjs-url` when it is another one, e.g. a CDN); no plugins, no `<base>`, no
/// inline script; never framed (`frame-ancestors 'none'`, against clickjacking).
/// `connect-src` stays open to every http(s)/ws(s) origin: the chat follows the discovery
/// record to other nodes and signaling servers (a successor's tunnel, the PeerJS cloud).
pub fn chat_csp(peerjs_url: &str) -> String {
    let mut script_src = "'self'".to_string();
    if let Ok(u) = url::Url::parse(peerjs_url)
        && matches!(u.scheme(), "http" | "https")
    {
        let origin = u.origin().ascii_serialization();
        if origin != "null" {
            script_src.push(' ');
            script_src.push_str(&origin);
        }
    }
    format!(
        "default-src 'self'; script-src {script_src}; style-src 'self'; img-src 'self' data:; \
         connect-src 'self' http: https: ws: wss:; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    )
}

/// Adds the headers every page of the node carries: `X-Content-Type-Options: nosniff`, and
/// `csp` as the Content-Security-Policy.
fn secured(mut res: Response, csp: &str) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    res
}

/// The status page: its own inline stylesheet, nothing else, never framed.
const STATUS_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'";
/// Scripts and stylesheets: never framed, never sniffed.
const ASSET_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// Routes served by the node itself (merged with the signaling router).
pub fn routes(shared: Arc<NodeShared>) -> Router {
    Router::new()
        .route("/ouroboros.json", get(discovery))
        .route("/ice", get(ice_servers))
        .route("/status", get(status_page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics))
        .route(super::RELAY_WS_PATH, get(relay_ws))
        .route(super::handoff_ws::HANDOFF_WS_PATH, get(handoff_ws))
        .route("/chat", get(chat))
        .route("/chat.js", get(chat_js))
        .route("/chat.css", get(chat_css))
        .route(PEERJS_PATH, get(peerjs_bundle))
        .route(
            "/favicon.ico",
            get(|| async { axum::http::StatusCode::NO_CONTENT }),
        )
        .with_state(shared)
}

/// `body` as `content_type`, [`cors`].
fn cors_body(content_type: &'static str, body: impl IntoResponse) -> Response {
    cors(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

fn cors(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// The record as this node serves it: with per-client TURN credentials when it mints them
/// (the published copy never has them).
async fn discovery(State(s): State<Arc<NodeShared>>) -> Response {
    let mut record = s.record.read().expect("record lock poisoned").clone();
    if s.ice.has_turn_secret() {
        record.ice_servers = Some(s.ice.for_client(std::time::SystemTime::now()));
        record.sign(s.ring_keys());
    }
    cors_body("application/json", record.to_json_pretty())
}

/// The relay WebSocket's query: `?client=NAME` declares the client's name (its identity, as
/// `metadata.client` does on a DataConnection), `?token=` proves it, `?nonce=` is echoed in
/// the signed `welcome`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct RelayQuery {
    pub client: Option<String>,
    pub token: Option<String>,
    pub nonce: Option<String>,
}

/// `GET /relay`: the relay protocol over a WebSocket (`protocol/relay.md`).
async fn relay_ws(
    State(s): State<Arc<NodeShared>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    Query(q): Query<RelayQuery>,
    remote: Option<axum::Extension<ConnectInfo<RemoteAddr>>>,
    headers: HeaderMap,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return cors(
            (
                StatusCode::UPGRADE_REQUIRED,
                [(header::UPGRADE, "websocket")],
                "the relay protocol over a WebSocket: open ws(s)://this-host/relay (protocol/relay.md)\n",
            )
                .into_response(),
        );
    };
    let addr = s.client_addr(remote, &headers);
    let Some(permit) = s.relay_gate.admit(addr, std::time::Instant::now()) else {
        return too_many_from_your_address();
    };
    let max = s.relay_ws_max_message;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| async move {
            s.relay.serve_ws(ws, q, s.stop.clone(), Some(permit));
        })
}

/// `429`: the client's address holds `--max-connections-per-address` sockets of this
/// endpoint already.
fn too_many_from_your_address() -> Response {
    cors(
        (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many connections from your address\n",
        )
            .into_response(),
    )
}

/// The handoff WebSocket's query: the successor's peer id (and GitHub run id, if any).
#[derive(Debug, serde::Deserialize)]
struct HandoffQuery {
    peer: Option<String>,
    github_run_id: Option<String>,
}

/// `GET /handoff`: the handoff over a WebSocket (`protocol/handoff.md`), routed to the
/// predecessor driver like an `ouroboros-handoff` DataConnection.
async fn handoff_ws(
    State(s): State<Arc<NodeShared>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    Query(q): Query<HandoffQuery>,
    remote: Option<axum::Extension<ConnectInfo<RemoteAddr>>>,
    headers: HeaderMap,
) -> Response {
    let addr = s.client_addr(remote, &headers);
    let Ok(upgrade) = upgrade else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket")],
            "the handoff between nodes: a WebSocket (protocol/handoff.md)\n",
        )
            .into_response();
    };
    let Some(peer) = q.peer.filter(|p| crate::ids::valid_id(p)) else {
        return (
            StatusCode::BAD_REQUEST,
            "?peer=<successor peer id> is required\n",
        )
            .into_response();
    };
    let Some(permit) = s.handoff_gate.admit(addr, std::time::Instant::now()) else {
        return too_many_from_your_address();
    };
    let metadata = match q.github_run_id {
        Some(run) => serde_json::json!({ super::ring::RUN_ID_METADATA: run }),
        None => serde_json::Value::Null,
    };
    let max = super::handoff_ws::HANDOFF_WS_MAX_MESSAGE;
    upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |ws| async move {
            tracing::info!(%peer, "handoff: a successor connected over the WebSocket");
            let link = super::handoff_ws::server_link(ws, peer, metadata, addr, Some(permit));
            s.handoff
                .route(crate::handoff::HandoffConn::WebSocket(link));
        })
}

/// `/ice`: the ICE servers for one client, TURN credentials fresh (a JSON array of
/// `RTCIceServer`, for `new Peer({config: {iceServers}})`).
async fn ice_servers(State(s): State<Arc<NodeShared>>) -> Response {
    let servers = s.ice.for_client(std::time::SystemTime::now());
    cors_body(
        "application/json",
        serde_json::to_string(&servers).unwrap_or_else(|_| "[]".into()),
    )
}

async fn status_json(State(s): State<Arc<NodeShared>>) -> Response {
    let st = s.status().await;
    cors_body(
        "application/json",
        serde_json::to_string_pretty(&st).unwrap_or_default(),
    )
}

async fn status_page(State(s): State<Arc<NodeShared>>) -> Response {
    let st = s.status().await;
    page(HTML, "no-store", render_html(&st), STATUS_CSP)
}

async fn metrics(State(s): State<Arc<NodeShared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics().await,
    )
        .into_response()
}

const HTML: &str = "text/html; charset=utf-8";

/// `body` as `content_type` with `cache_control`, [`secured`] under `csp`.
fn page(
    content_type: &'static str,
    cache_control: &'static str,
    body: impl IntoResponse,
    csp: &str,
) -> Response {
    let res = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache_control),
        ],
        body,
    )
        .into_response();
    secured(res, csp)
}

/// The chat page: revalidated on every load, under its [`chat_csp`].
fn chat_page(s: &NodeShared) -> Response {
    page(
        HTML,
        "no-cache",
        chat_html(&s.peerjs_url),
        &chat_csp(&s.peerjs_url),
    )
}

async fn chat(State(s): State<Arc<NodeShared>>) -> Response {
    chat_page(&s)
}

/// One of the chat's static assets: revalidated on every load, under [`ASSET_CSP`].
fn chat_asset(content_type: &'static str, body: &'static str) -> Response {
    page(content_type, "no-cache", body, ASSET_CSP)
}

async fn chat_js() -> Response {
    chat_asset("text/javascript; charset=utf-8", CHAT_JS)
}

async fn peerjs_bundle() -> Response {
    cors_body("text/javascript; charset=utf-8", PEERJS_BUNDLE)
}

async fn chat_css() -> Response {
    chat_asset("text/css; charset=utf-8", CHAT_CSS)
}

/// Quality of `media` in an Accept header (0 if absent; wildcards count).
fn quality(accept: &str, media: &str) -> f32 {
    let (ty, _) = media.split_once('/').unwrap_or((media, ""));
    let mut best: Option<(u8, f32)> = None; // (specificity, q)
    for part in accept.split(',') {
        let mut it = part.split(';');
        let range = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = it
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        let spec = if range == media {
            3
        } else if range == format!("{ty}/*") {
            2
        } else if range == "*/*" {
            1
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| spec > s) {
            best = Some((spec, q));
        }
    }
    best.map(|(_, q)| q).unwrap_or(0.0)
}

/// Whether a request's Accept header prefers HTML over JSON (browsers navigating do;
/// `fetch`, curl and PeerJS clients do not).
pub fn prefers_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let html = quality(accept, "text/html");
    html > 0.0 && html > quality(accept, "application/json")
}

/// `GET {path}`: the chat page for browsers navigating there, the PeerJS server's info
/// JSON for programs (the reference server's behaviour).
pub async fn root(State(s): State<Arc<NodeShared>>, headers: HeaderMap) -> Response {
    let mut res = if prefers_html(&headers) {
        chat_page(&s)
    } else {
        crate::signaling::info_response()
    };
    res.headers_mut()
        .append(header::VARY, HeaderValue::from_static("Accept"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_peerjs_is_the_pinned_one() {
        use base64::Engine;
        use sha2::Digest;
        assert_eq!(
            hex::encode(sha2::Sha256::digest(PEERJS_BUNDLE)),
            PEERJS_SHA256
        );
        let sri = format!(
            "sha384-{}",
            base64::engine::general_purpose::STANDARD.encode(sha2::Sha384::digest(PEERJS_BUNDLE))
        );
        assert_eq!(sri, PEERJS_INTEGRITY);
    }

    #[test]
    fn the_pinned_bundle_is_loaded_with_integrity() {
        for url in [
            PEERJS_PATH,
            "https://unpkg.com/peerjs@1.5.5/dist/peerjs.min.js",
            "https://cdn.jsdelivr.net/npm/peerjs@1.5.5/dist/peerjs.min.js",
        ] {
            let html = chat_html(url);
            assert!(
                html.contains(&format!(
                    r#"<script src="{url}" integrity="{PEERJS_INTEGRITY}" crossorigin="anonymous"></script>"#
                )),
                "{url}"
            );
        }
        let html = chat_html("http://127.0.0.1:1/x.js?a=1&b=\"");
        assert!(
            html.contains(r#"<script src="http://127.0.0.1:1/x.js?a=1&amp;b=&quot;"></script>"#)
        );
        assert!(!html.contains("{{PEERJS_URL}}"));
    }

    fn h(accept: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        m
    }

    #[test]
    fn accept_negotiation() {
        let browser =
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
        assert!(prefers_html(&h(browser)));
        assert!(!prefers_html(&h("*/*")));
        assert!(!prefers_html(&h("application/json")));
        assert!(!prefers_html(&h("application/json, text/html;q=0.5")));
        assert!(prefers_html(&h("text/html")));
        assert!(!prefers_html(&HeaderMap::new()));
    }

    #[test]
    fn the_chat_csp_allows_only_the_node_and_the_peerjs_origin() {
        let own = chat_csp(PEERJS_PATH);
        assert!(own.contains("script-src 'self';"), "{own}");
        assert!(own.contains("frame-ancestors 'none'"));
        assert!(own.contains("object-src 'none'"));
        assert!(
            !own.contains("unsafe"),
            "no unsafe-inline/eval for the chat: {own}"
        );
        let cdn = chat_csp(crate::node::CDN_PEERJS_URL);
        assert!(
            cdn.contains("script-src 'self' https://unpkg.com;"),
            "{cdn}"
        );
        // A value that would break out of the header is not an origin; only 'self' stays.
        let odd = chat_csp("javascript:alert(1)");
        assert!(odd.contains("script-src 'self';"), "{odd}");
    }

    #[test]
    fn chat_html_escapes_the_script_url() {
        let html = chat_html("https://x.example/p.js?a=1&b=\"2\"");
        assert!(html.contains("src=\"https://x.example/p.js?a=1&amp;b=&quot;2&quot;\""));
        assert!(!html.contains("{{PEERJS_URL}}"));
    }
}
