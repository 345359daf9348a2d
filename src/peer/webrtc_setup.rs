//! Building a `PeerConnection` the way PeerJS interop needs it.
//!
//! Three `SettingEngine` settings matter with Chromium (measured: open time 210 ms → 35 ms):
//! - ICE connectivity checks every 20 ms (webrtc-rs only sends checks on its 200 ms tick),
//!   with 50 binding requests so a pair does not give up after 7 × 20 ms;
//! - the DTLS **server** role when answering (`a=setup:passive`), which avoids a ~200 ms
//!   stall of the DTLS client role;
//! - a 256 KiB SCTP max message size (Chromium's), instead of webrtc-rs's 64 KiB.
//!
//! Every channel also gets a send window: at most that many bytes are handed to SCTP and
//! unacknowledged at a time. Without it webrtc-rs puts a whole multi-megabyte message on the
//! wire in one burst as its congestion window opens (loopback RTTs are tiny); Chromium's
//! 128 KiB UDP receive buffer overflows, the tail of the burst is lost and SCTP recovers only
//! on its 1 s minimum retransmission timer (measured: 1 MiB Rust → Chromium round trips of
//! 0.3 s / 1.3 s / 3.4 s and an occasional stall of more than 15 s; with a 32 KiB window:
//! 0.25–0.6 s every time, no drops). Another Ouroboros peer has 4 MiB UDP buffers
//! ([`super::BufferedUdpRuntime`]) and takes a larger window, which is worth 40 % more bulk
//! throughput. The remote is not known when the PeerConnection is built (an offerer learns
//! it from the answer), so webrtc enforces the larger [`PeerConfig::native_send_window`]
//! and the DataConnection's pump holds a non-Ouroboros remote to the smaller
//! [`PeerConfig::send_window`]. Ouroboros peers recognise each other by the standard
//! session-level `a=tool:` attribute (RFC 8866 §6.3) we add to the SDP we send; browsers
//! ignore it. The DataConnection keeps its own 8 MiB queue in front of all this
//! ([`super::SEND_HIGH_WATER`]).
//!
//! [`PeerConfig::native_send_window`]: super::PeerConfig::native_send_window
//! [`PeerConfig::send_window`]: super::PeerConfig::send_window

use std::sync::Arc;
use std::time::Duration;

use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;
use rtc::peer_connection::transport::RTCDtlsRole;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceServer, SettingEngineBuilder,
};

use super::ice::IceUrl;
use super::{IceServer, PeerError, Shared};

/// ICE check interval used instead of rtc-ice's 200 ms.
pub(crate) const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// Binding requests per candidate pair before it fails.
pub(crate) const ICE_MAX_BINDING_REQUESTS: u16 = 50;
/// Chromium's SCTP max message size.
pub(crate) const SCTP_MAX_MESSAGE: u32 = 262_144;

/// How long the controlling agent waits before it may nominate a server-reflexive, a
/// peer-reflexive or a relayed pair (rtc-ice's defaults: 0.5 s, 1 s and 2 s). Those waits
/// give a better pair the chance to succeed first; with checks every 20 ms a working host
/// or srflx pair has succeeded long before, and the defaults made a TURN connection take
/// 4.5 s to open (measured in the NAT lab, see BENCHMARKS.md).
pub(crate) const ICE_SRFLX_MIN_WAIT: Duration = Duration::from_millis(0);
/// See [`ICE_SRFLX_MIN_WAIT`].
pub(crate) const ICE_PRFLX_MIN_WAIT: Duration = Duration::from_millis(0);
/// See [`ICE_SRFLX_MIN_WAIT`].
pub(crate) const ICE_RELAY_MIN_WAIT: Duration = Duration::from_millis(0);

/// How often [`wake_driver`] runs while a DataChannel is opening. Each handshake step through
/// a relay candidate can wait up to one interval on each side, and opening takes about ten
/// steps (DTLS, SCTP, DCEP); the wake-ups stop once the channel is open.
pub(crate) const RELAY_FLUSH_INTERVAL: Duration = Duration::from_millis(5);
/// How often [`wake_driver`] runs after opening, for a connection whose selected local
/// candidate is a relay one (without it, e.g. the reply to a close waited for ICE's 5 s
/// disconnected timeout). It bounds what webrtc 0.21.1 adds to each relayed packet.
pub(crate) const RELAYED_FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Makes the PeerConnection's driver loop run one iteration, without changing anything.
///
/// Works around webrtc 0.21.1's driver (`peer_connection/driver.rs`, `poll_writes`): it drains
/// the TURN relayer's output (step 1.b) *before* it hands the core's packets to the relayer
/// (step 1.c, `flush_writes` → `handle_write` → `RTCTurnRelayer::handle_write`, which only
/// queues them in the TURN client), and `poll_timeout` does not count that queue. Everything a
/// peer sends from its relay candidate therefore waits for the loop's next wake-up, which
/// during the DTLS and SCTP handshakes is a 1 s retransmission timer or the 2 s ICE keepalive:
/// a Rust client through TURN opened in 2.2–2.8 s in the NAT lab. Setting the configuration
/// the connection already has changes nothing (the driver keeps it for the next gathering,
/// where the same servers keep their allocations) but sends the driver an event, so doing it
/// every [`RELAY_FLUSH_INTERVAL`] while the channel opens flushes the queue within 5 ms, on
/// both the offering and the answering side. See BENCHMARKS.md ("Reaching the node through
/// NATs").
pub(crate) async fn wake_driver(pc: &Arc<dyn PeerConnection>) {
    let configuration = pc.get_configuration().await;
    if let Err(e) = pc.set_configuration(configuration).await {
        tracing::trace!(error = %e, "driver wake-up");
    }
}

/// The ICE servers in webrtc's form, keeping only the URLs webrtc 0.21 can use itself
/// (`stun:` and UDP `turn:`; it would skip the others with a warning per connection). TCP and
/// TLS TURN URLs reach here already bridged ([`super::turn_bridge`]).
fn native_ice_servers(servers: &[IceServer]) -> Vec<RTCIceServer> {
    servers
        .iter()
        .filter_map(|s| {
            let urls: Vec<String> = s
                .urls
                .iter()
                .filter(|u| IceUrl::parse(u).is_ok_and(|u| u.native_supported()))
                .cloned()
                .collect();
            (!urls.is_empty()).then(|| RTCIceServer {
                urls,
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// The local UDP addresses to bind: the configured ones, plus a loopback socket when the
/// peer keeps loopback candidates and none is configured.
fn bind_addrs(config: &super::PeerConfig) -> Vec<String> {
    let mut addrs = config.udp_addrs.clone();
    let has_loopback = addrs.iter().any(|a| {
        a.parse::<std::net::SocketAddr>()
            .is_ok_and(|a| a.ip().is_loopback())
    });
    if config.loopback_candidates && !has_loopback {
        addrs.push("127.0.0.1:0".into());
    }
    addrs
}

/// The SDP attribute that tells another Ouroboros peer who sent a description.
pub(crate) const SDP_TOOL: &str = "a=tool:ouroboros";

/// Adds [`SDP_TOOL`] at session level (before the first media section) of an SDP we send.
pub(crate) fn mark_sdp(sdp: String) -> String {
    if is_ouroboros_sdp(&sdp) {
        return sdp;
    }
    let line = format!("{SDP_TOOL}\r\n");
    match sdp.find("\nm=") {
        Some(i) => {
            let mut out = String::with_capacity(sdp.len() + line.len());
            out.push_str(&sdp[..=i]);
            out.push_str(&line);
            out.push_str(&sdp[i + 1..]);
            out
        }
        None => {
            let mut out = sdp;
            if !out.is_empty() && !out.ends_with('\n') {
                out.push_str("\r\n");
            }
            out.push_str(&line);
            out
        }
    }
}

/// Whether a remote SDP came from an Ouroboros peer (carries [`SDP_TOOL`] at session level).
pub(crate) fn is_ouroboros_sdp(sdp: &str) -> bool {
    let session = sdp.split("\nm=").next().unwrap_or("");
    session.lines().any(|l| l.trim_end() == SDP_TOOL)
}

/// The per-channel limit webrtc enforces: the larger of the two windows.
pub(crate) fn channel_limit(config: &super::PeerConfig) -> usize {
    config.native_send_window.max(config.send_window).max(1)
}

/// The window the DataConnection's pump holds a channel to, if smaller than webrtc's limit.
pub(crate) fn pump_window(config: &super::PeerConfig, remote_is_ouroboros: bool) -> Option<usize> {
    let wanted = if remote_is_ouroboros {
        config.native_send_window
    } else {
        config.send_window
    }
    .max(1);
    (wanted < channel_limit(config)).then_some(wanted)
}

/// Builds one PeerConnection with the interop settings and `handler`.
pub(crate) async fn build_peer_connection(
    shared: &Shared,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>, PeerError> {
    let settings = SettingEngineBuilder::new()
        .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_MAX_BINDING_REQUESTS))
        .with_answering_dtls_role(RTCDtlsRole::Server)
        .with_sctp_max_message_size(SctpMaxMessageSize::Bounded(SCTP_MAX_MESSAGE))
        .with_srflx_acceptance_min_wait(Some(ICE_SRFLX_MIN_WAIT))
        .with_prflx_acceptance_min_wait(Some(ICE_PRFLX_MIN_WAIT))
        .with_relay_acceptance_min_wait(Some(ICE_RELAY_MIN_WAIT))
        .build();
    let configuration = RTCConfigurationBuilder::new()
        .with_ice_servers(native_ice_servers(&shared.native_ice_servers))
        .build();
    let mut builder = PeerConnectionBuilder::new();
    if shared.config.reactor_threads > 0 {
        builder = builder.with_dedicated_reactor_pool_size(shared.config.reactor_threads);
    }
    let pc = builder
        .with_configuration(configuration)
        .with_setting_engine(settings)
        .with_runtime(shared.runtime.clone())
        .with_handler(handler)
        .with_udp_addrs(bind_addrs(&shared.config))
        .with_data_channel_send_buffer_limit(channel_limit(&shared.config))
        .build()
        .await
        .map_err(|e| PeerError::NegotiationFailed(format!("building the PeerConnection: {e}")))?;
    Ok(Arc::new(pc))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_OFFER: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=extmap-allow-mixed\r\na=msid-semantic: WMS\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sctp-port:5000\r\na=max-message-size:262144\r\n";

    #[test]
    fn marked_sdp_has_the_tool_line_at_session_level() {
        assert!(!is_ouroboros_sdp(CHROME_OFFER));
        let marked = mark_sdp(CHROME_OFFER.to_string());
        assert!(is_ouroboros_sdp(&marked));
        let (session, media) = marked.split_once("\r\nm=").expect("media section kept");
        assert!(session.ends_with("\r\na=tool:ouroboros"));
        assert!(media.starts_with("application 9"));
        assert_eq!(marked.len(), CHROME_OFFER.len() + SDP_TOOL.len() + 2);
        // Idempotent.
        assert_eq!(mark_sdp(marked.clone()), marked);
    }

    #[test]
    fn a_tool_line_inside_a_media_section_does_not_count() {
        let sdp = format!("{CHROME_OFFER}{SDP_TOOL}\r\n");
        assert!(!is_ouroboros_sdp(&sdp));
        assert!(!is_ouroboros_sdp(
            "a=tool:ouroboros-fake\r\nm=application 9\r\n"
        ));
    }

    #[test]
    fn browsers_get_the_small_window_and_ouroboros_peers_the_large_one() {
        let mut c = crate::peer::PeerConfig::new("127.0.0.1", 1);
        c.send_window = 32 * 1024;
        c.native_send_window = 256 * 1024;
        assert_eq!(channel_limit(&c), 256 * 1024);
        assert_eq!(pump_window(&c, true), None);
        assert_eq!(pump_window(&c, false), Some(32 * 1024));
        c.native_send_window = 16 * 1024;
        assert_eq!(channel_limit(&c), 32 * 1024);
        assert_eq!(pump_window(&c, true), Some(16 * 1024));
        assert_eq!(pump_window(&c, false), None);
    }
}
