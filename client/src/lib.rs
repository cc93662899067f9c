//! # sessiond_client: talk to the sessiond daemon
//!
//! The library behind `sessionctl`, the tests and the benchmark harness. It finds the daemon's
//! socket (the same rules as the daemon: `sessiond_proto::paths`), starts the daemon when none
//! runs and the caller allows it, performs the handshake, and turns typed method calls into
//! frames and back.
//!
//! Two clients over one set of rules:
//!
//! - [`Client`] (async, tokio): many concurrent calls pipelined on one connection, plus a
//!   stream of pushed events. For long-lived programs.
//! - [`BlockingClient`]: one call at a time with no runtime, and `hello` sent together with
//!   the first request, so a one-shot command costs one round trip. For CLIs and scripts.
//!
//! Neither reconnects. Once a connection has failed (the daemon gone, an answer too large, a
//! frame cut or stalled part-way), every later call on it fails at once saying why: connect
//! again.
//!
//! ```no_run
//! use sessiond_client::{BlockingClient, ConnectOptions};
//! use sessiond_proto::methods::{Status, StatusParams};
//! let opts = ConnectOptions::from_env()?;
//! let mut client = BlockingClient::connect(&opts)?;
//! let status = client.call::<Status>(StatusParams {})?;
//! println!("sessiond {} (pid {})", status.version, status.pid);
//! # Ok::<(), sessiond_client::ClientError>(())
//! ```
//!
//! How the modules meet: [`options`] says where and how to connect; `transport` reaches the
//! socket (refusing an unsafe runtime directory); [`autostart`] starts a daemon under a lock
//! when none answers; `exchange` interprets the daemon's frames for both clients, and
//! `payload` holds each frame the blocking client reads (on Linux, a large one in memory
//! advised for huge pages);
//! [`RawResult`] holds a result left encoded for callers that only pass it on (`json` prints
//! it as JSON without decoding it); [`error`] gives every failure a message, a stable code and
//! an exit status.

pub mod autostart;
mod blocking;
mod client;
pub mod error;
mod exchange;
mod json;
pub mod options;
mod payload;
mod raw;
mod transport;

pub use blocking::BlockingClient;
pub use client::{Client, EventStream};
pub use error::{exit, ClientError};
pub use options::ConnectOptions;
pub use raw::RawResult;
pub use sessiond_proto as proto;
pub use transport::{running_daemon, RunningDaemon};
