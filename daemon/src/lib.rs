//! # sessiond: the daemon
//!
//! One per user; owns every coding-agent session on the machine and serves thin clients over a
//! local socket. The binary is `src/main.rs`; this library holds everything so tests and the
//! benchmark harness can reach the pieces.
//!
//! How the modules meet, in the order a request travels:
//!
//! - [`startup`] takes resources in a safe order: paths ([`sessiond_proto::paths`]), config
//!   ([`config`]), the single-instance lock ([`instance`]), detaching ([`platform`]), logging
//!   ([`logging`]), then the socket.
//! - [`server`] binds and accepts, keeps the socket file alive, and runs the shutdown
//!   sequence ([`shutdown`]).
//! - [`conn`] serves one client: peer check, handshake, then frames → [`dispatch`], answers
//!   through a bounded outbox to its writer.
//! - [`dispatch`] routes a method name to its typed handler; [`control`] holds the handlers
//!   for the daemon itself.
//! - [`context`] is what every connection shares: configuration, paths, counters, the
//!   shutdown trigger.
//!
//! Data flows one way: bytes → frame → typed request → handler → typed result → frame → bytes.

pub mod cli;
pub mod config;
pub mod conn;
pub mod context;
pub mod control;
pub mod dispatch;
pub mod events;
pub mod instance;
pub mod listing;
pub mod logging;
/// The per-session ownership files, shared with clients through the protocol crate.
pub use sessiond_proto::ownership;
pub mod platform;
pub mod provider;
pub mod recovery;
pub mod registry;
pub mod runner;
pub mod server;
pub mod session;
pub mod session_methods;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod turn;

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
