//! The discovery record (where the node lives now) and the publishers that make it public.

/// Where a node lives: its peer id, signaling endpoints, generation and times.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryRecord;
