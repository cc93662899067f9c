//! The daemon's shared context: what every connection may read, and the few things it may
//! trigger. It holds configuration and counters, not session state (that has one owner, the
//! registry, arriving with sessions).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use sessiond_proto::paths::Paths;

use crate::config::DaemonConfig;
use crate::logging::LogControl;
use crate::shutdown::{ShutdownListener, ShutdownSignal};

/// Shared by every task through an `Arc`.
pub struct Daemon {
    pub paths: Paths,
    pub config: DaemonConfig,
    pub pid: u32,
    /// Wall-clock start, ms since the epoch (for `status`).
    pub started_at: u64,
    /// Monotonic start (for uptime, immune to clock changes).
    pub started: Instant,
    pub log: LogControl,
    /// Where stderr goes when detached.
    pub log_file: Option<PathBuf>,
    connections: AtomicU32,
    shutdown: ShutdownSignal,
}

impl Daemon {
    pub fn new(
        paths: Paths,
        config: DaemonConfig,
        log: LogControl,
        log_file: Option<PathBuf>,
    ) -> Self {
        Self {
            paths,
            config,
            pid: std::process::id(),
            started_at: sessiond_proto::now_ms(),
            started: Instant::now(),
            log,
            log_file,
            connections: AtomicU32::new(0),
            shutdown: ShutdownSignal::new(),
        }
    }

    pub fn trigger_shutdown(&self, reason: &str) {
        self.shutdown.trigger(reason);
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_triggered()
    }

    pub fn shutdown_listener(&self) -> ShutdownListener {
        self.shutdown.listener()
    }

    /// Counts a connection in; `None` when the daemon is at `max_connections`.
    pub fn admit_connection(&self) -> Option<ConnectionSlot<'_>> {
        let max = self.config.max_connections;
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionSlot { daemon: self })
    }

    pub fn connection_count(&self) -> u32 {
        self.connections.load(Ordering::Acquire)
    }
}

/// A counted connection; dropping it frees the slot.
pub struct ConnectionSlot<'a> {
    daemon: &'a Daemon,
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.daemon.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
