//! Error codes: the stable, machine-readable half of every error frame.
//!
//! A code is a snake_case string rather than a closed Rust enum so that a client built today
//! keeps the exact code a newer daemon sends (and can show it), instead of collapsing it into
//! "unknown". Match on the constants; treat any other value as a generic failure.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// A stable snake_case error code, e.g. `not_found`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(Cow<'static, str>);

impl ErrorCode {
    /// A frame could not be decoded, was not a map with a `type`, or had a type the receiver
    /// does not accept from this peer. The connection is closed when the frame had no `id`.
    pub const BAD_FRAME: Self = Self::from_static("bad_frame");
    /// A frame's length prefix exceeded the receiver's limit. The connection is closed.
    pub const FRAME_TOO_LARGE: Self = Self::from_static("frame_too_large");
    /// The first frame on a connection was not `hello`. The connection is closed.
    pub const HANDSHAKE_REQUIRED: Self = Self::from_static("handshake_required");
    /// Client and daemon speak different major protocol versions. The connection is closed.
    pub const VERSION_MISMATCH: Self = Self::from_static("version_mismatch");
    /// The request named a method this daemon does not have. The connection stays open.
    pub const UNKNOWN_METHOD: Self = Self::from_static("unknown_method");
    /// The request's params were missing, of the wrong type, or out of range.
    pub const INVALID_ARGUMENT: Self = Self::from_static("invalid_argument");
    /// The thing the request named (a session, a turn) does not exist.
    pub const NOT_FOUND: Self = Self::from_static("not_found");
    /// A prefix or name matched more than one thing; the message lists the candidates.
    pub const AMBIGUOUS: Self = Self::from_static("ambiguous");
    /// The peer is not allowed to talk to this daemon (another user). The connection is closed.
    pub const PERMISSION_DENIED: Self = Self::from_static("permission_denied");
    /// The target's state does not allow the request (archiving an archived session, closing a
    /// running one); the message says what state it is in.
    pub const INVALID_STATE: Self = Self::from_static("invalid_state");
    /// The database could not be written; the daemon refuses changes until it is restarted.
    pub const STORAGE_FAILED: Self = Self::from_static("storage_failed");
    /// The daemon or the target is at a limit right now (too many connections, session busy).
    pub const BUSY: Self = Self::from_static("busy");
    /// The peer took too long (to send its hello, or the rest of a frame). The connection is
    /// closed.
    pub const TIMEOUT: Self = Self::from_static("timeout");
    /// The daemon is shutting down and takes no new work.
    pub const SHUTTING_DOWN: Self = Self::from_static("shutting_down");
    /// A fault inside the daemon; the message and the daemon's log say more.
    pub const INTERNAL: Self = Self::from_static("internal");

    /// Every code this build knows, for documentation and tests.
    pub const ALL: &'static [ErrorCode] = &[
        Self::BAD_FRAME,
        Self::FRAME_TOO_LARGE,
        Self::HANDSHAKE_REQUIRED,
        Self::VERSION_MISMATCH,
        Self::UNKNOWN_METHOD,
        Self::INVALID_ARGUMENT,
        Self::NOT_FOUND,
        Self::AMBIGUOUS,
        Self::INVALID_STATE,
        Self::STORAGE_FAILED,
        Self::PERMISSION_DENIED,
        Self::BUSY,
        Self::TIMEOUT,
        Self::SHUTTING_DOWN,
        Self::INTERNAL,
    ];

    pub const fn from_static(code: &'static str) -> Self {
        Self(Cow::Borrowed(code))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for ErrorCode {
    fn from(code: String) -> Self {
        Self(Cow::Owned(code))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
