//! The native PeerJS peer: a signaling client for any PeerJS server and DataConnections
//! over `webrtc` that browsers running `peerjs` cannot tell from another browser.

pub mod codec;
