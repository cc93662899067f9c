//! Methods: each one a type naming its wire name, its params and its result.
//!
//! The client calls `client.call::<Status>(StatusParams {})` and gets a `StatusResult`; the
//! daemon routes on [`Method::NAME`] and decodes [`Method::Params`]. Both sides share these
//! definitions, so a field added here is added for both at once.
//!
//! Rules every params and result type follows, so that adding a field never breaks an older
//! peer: fields are named (maps on the wire), a field that may be absent is an `Option` or has
//! a `#[serde(default)]`, and `None` is omitted rather than sent as nil.

use std::fmt::Debug;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::version::ProtocolVersion;

/// A method of the protocol.
pub trait Method {
    /// The wire name, in snake_case.
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned + Debug + Clone + PartialEq + Send + 'static;
    type Result: Serialize + DeserializeOwned + Debug + Clone + PartialEq + Send + 'static;
}

macro_rules! method {
    ($(#[$doc:meta])* $name:ident = $wire:literal, $params:ty => $result:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub enum $name {}

        impl Method for $name {
            const NAME: &'static str = $wire;
            type Params = $params;
            type Result = $result;
        }
    };
}

method!(
    /// Liveness check; answers at once with no side effect.
    Ping = "ping", PingParams => Pong
);
method!(
    /// The daemon's version, pid, uptime, paths and load.
    Status = "status", StatusParams => StatusResult
);
method!(
    /// Changes the daemon's log filter at runtime (not persisted).
    SetLogLevel = "set_log_level", SetLogLevelParams => SetLogLevelResult
);
method!(
    /// Asks the daemon to shut down gracefully: it answers, stops accepting connections,
    /// finishes requests in flight, removes its socket and pid file, and exits 0.
    Shutdown = "shutdown", ShutdownParams => ShutdownResult
);

/// Params of `ping`: none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingParams {}

/// Result of `ping`: an empty map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {}

/// Params of `status`: none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusParams {}

/// Result of `status`. Paths are absolute and sent as strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResult {
    /// The daemon's program version.
    pub version: String,
    /// The protocol version it speaks.
    pub protocol: ProtocolVersion,
    pub pid: u32,
    /// When the daemon started, in milliseconds since the Unix epoch.
    pub started_at: u64,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    pub socket: String,
    pub runtime_dir: String,
    pub state_dir: String,
    /// The configuration file that was read, or would be read if it existed.
    pub config: String,
    /// Where the daemon's log goes when detached; absent when it logs to its own stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
    /// The current log filter, e.g. `"info"`.
    pub log_level: String,
    /// Client connections open right now, this one included.
    pub connections: u32,
    /// The most connections the daemon accepts at once.
    pub max_connections: u32,
    /// The largest frame the daemon accepts, in bytes.
    pub max_frame_bytes: u64,
}

/// Params of `set_log_level`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLogLevelParams {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a comma-separated list of
    /// `target=level` directives with an optional bare default level, e.g.
    /// `"sessiond::conn=debug,info"`.
    pub level: String,
}

/// Result of `set_log_level`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLogLevelResult {
    /// The filter in force before.
    pub previous: String,
    /// The filter in force now.
    pub level: String,
}

/// Params of `shutdown`: none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownParams {}

/// Result of `shutdown`, sent before the daemon starts closing connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownResult {
    /// The pid of the daemon that is shutting down, so a client can wait for it to exit.
    pub pid: u32,
    /// How long the daemon will wait for requests in flight before exiting anyway, in ms: how
    /// long a client should be prepared to wait for it to be gone.
    #[serde(default)]
    pub grace_ms: u64,
}
