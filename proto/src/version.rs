//! Protocol versions and the compatibility rule between a client and a daemon.

use serde::{Deserialize, Serialize};

/// A protocol version, sent on the wire as the two-element array `[major, minor]`.
///
/// Peers with the same major version interoperate: a minor bump only adds optional fields,
/// methods, events or error codes, which the older side ignores or refuses by name. A different
/// major version means the frames themselves changed, so the daemon refuses the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "(u32, u32)", into = "(u32, u32)")]
pub struct ProtocolVersion {
    pub major: u32,
    pub minor: u32,
}

/// The version this build speaks.
pub const PROTOCOL_VERSION: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

impl ProtocolVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// Whether a peer speaking `other` can talk to one speaking `self`.
    pub fn compatible_with(self, other: ProtocolVersion) -> bool {
        self.major == other.major
    }
}

impl From<(u32, u32)> for ProtocolVersion {
    fn from((major, minor): (u32, u32)) -> Self {
        Self { major, minor }
    }
}

impl From<ProtocolVersion> for (u32, u32) {
    fn from(v: ProtocolVersion) -> Self {
        (v.major, v.minor)
    }
}

impl std::fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_is_compatible_whatever_the_minor() {
        assert!(ProtocolVersion::new(1, 0).compatible_with(ProtocolVersion::new(1, 7)));
        assert!(!ProtocolVersion::new(1, 0).compatible_with(ProtocolVersion::new(2, 0)));
    }
}
