//! Building a `PeerConnection` the way PeerJS interop needs it.
//!
//! Three `SettingEngine` settings matter with Chromium (measured: open time 210 ms → 35 ms):
//! - ICE connectivity checks every 20 ms (webrtc-rs only sends checks on its 200 ms tick),
//!   with 50 binding requests so a pair does not give up after 7 × 20 ms;
//! - the DTLS **server** role when answering (`a=setup:passive`), which avoids a ~200 ms
//!   stall of the DTLS client role;
//! - a 256 KiB SCTP max message size (Chromium's), instead of webrtc-rs's 64 KiB.
//!
//! Every channel also gets a send-buffer limit of `PeerConfig::send_window` (32 KiB by
//! default): at most that many bytes are handed to SCTP and unacknowledged at a time. Without
//! it webrtc-rs puts a whole multi-megabyte message on the wire in one burst as its congestion
//! window opens (loopback RTTs are tiny); Chromium's 128 KiB UDP receive buffer overflows, the
//! tail of the burst is lost and SCTP recovers only on its 1 s minimum retransmission timer
//! (measured: 1 MiB Rust → Chromium round trips of 0.3 s / 1.3 s / 3.4 s and an occasional
//! stall of more than 15 s; with a 32 KiB window: 0.25–0.6 s every time, no drops). The
//! DataConnection keeps its own 8 MiB queue in front of it ([`super::SEND_HIGH_WATER`]), and UDP sockets get 4 MiB
//! buffers ([`super::BufferedUdpRuntime`]).

use std::sync::Arc;
use std::time::Duration;

use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;
use rtc::peer_connection::transport::RTCDtlsRole;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceServer, SettingEngineBuilder,
};

use super::{IceServer, PeerError, Shared};

/// ICE check interval used instead of rtc-ice's 200 ms.
pub(crate) const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// Binding requests per candidate pair before it fails.
pub(crate) const ICE_MAX_BINDING_REQUESTS: u16 = 50;
/// Chromium's SCTP max message size.
pub(crate) const SCTP_MAX_MESSAGE: u32 = 262_144;

fn ice_server(s: &IceServer) -> RTCIceServer {
    RTCIceServer {
        urls: s.urls.clone(),
        username: s.username.clone().unwrap_or_default(),
        credential: s.credential.clone().unwrap_or_default(),
    }
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
        .build();
    let configuration = RTCConfigurationBuilder::new()
        .with_ice_servers(shared.config.ice_servers.iter().map(ice_server).collect())
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
        .with_udp_addrs(shared.config.udp_addrs.clone())
        .with_data_channel_send_buffer_limit(shared.config.send_window.max(1))
        .build()
        .await
        .map_err(|e| PeerError::NegotiationFailed(format!("building the PeerConnection: {e}")))?;
    Ok(Arc::new(pc))
}
