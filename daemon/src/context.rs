//! The daemon's shared context: what every connection may read, and the few things it may
//! trigger: configuration, counters, the shutdown trigger, and access to the registry, which
//! alone owns session state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use sessiond_proto::paths::Paths;

use crate::config::DaemonConfig;
use crate::logging::LogControl;
use crate::ownership::SessionFiles;
use crate::provider::ProviderConfig;
use crate::registry::Registry;
use crate::registry::StartOrder;
use crate::runner::{Order, Orders};
use crate::shutdown::{ShutdownListener, ShutdownSignal};

/// What start-up assembles for the context.
pub struct Parts {
    pub paths: Paths,
    pub config: DaemonConfig,
    pub log: LogControl,
    pub log_file: Option<PathBuf>,
    pub registry: Registry,
    pub session_files: SessionFiles,
    pub providers: std::collections::BTreeMap<String, ProviderConfig>,
    pub supervisor: Option<String>,
    pub orders: Orders,
}

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
    /// Per-session lock and pid files, for reporting owners.
    pub session_files: SessionFiles,
    /// Every provider by name (built in and configured).
    pub providers: std::collections::BTreeMap<String, ProviderConfig>,
    /// The service manager running this daemon, if any (see `startup::supervisor`).
    pub supervisor: Option<String>,
    /// Start orders for the runner.
    orders: Orders,
    connections: AtomicU32,
    /// Answers of [`LARGE_ANSWER`] bytes or more written so far (see [`Self::large_answers`]).
    large_answers: AtomicU64,
    shutdown: ShutdownSignal,
    /// Every session and context. Behind a mutex only so that handlers on the event loop can
    /// reach it: the daemon serves on one thread, so it is never contended, and no code holds
    /// it across an await (each registry call is synchronous; commits are awaited after).
    registry: Mutex<Registry>,
}

impl Daemon {
    pub fn new(parts: Parts) -> Self {
        Self {
            paths: parts.paths,
            config: parts.config,
            pid: std::process::id(),
            started_at: sessiond_proto::now_ms(),
            started: Instant::now(),
            log: parts.log,
            log_file: parts.log_file,
            session_files: parts.session_files,
            providers: parts.providers,
            supervisor: parts.supervisor,
            orders: parts.orders,
            connections: AtomicU32::new(0),
            large_answers: AtomicU64::new(0),
            shutdown: ShutdownSignal::new(),
            registry: Mutex::new(parts.registry),
        }
    }

    /// Hands a turn the registry started to the runner.
    pub fn start_turn(&self, order: StartOrder) {
        // The runner lives as long as the daemon; if it is gone the daemon is stopping, and
        // the turn is settled as interrupted at the next start.
        let _ = self.orders.send(Order::Start(order));
    }

    /// Asks the runner to stop a running turn's worker (SIGINT, SIGTERM, SIGKILL).
    pub fn stop_worker(&self, turn: sessiond_proto::session::TurnId, pid: u32) {
        let _ = self.orders.send(Order::Stop { turn, pid });
    }

    /// The registry, for one synchronous step. Never hold the guard across an await.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn trigger_shutdown(&self, reason: &str) {
        // Before anything watches the trigger: from here on, no turn starts.
        self.registry().begin_stopping();
        self.shutdown.trigger(reason);
    }

    /// The second stage of shutdown: the turns have been ended; connections close.
    pub fn close_connections(&self) {
        self.shutdown.close();
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

    /// Counts an answer of `len` bytes written to a client, if it is a large one.
    pub fn note_answer_written(&self, len: usize) {
        if len >= LARGE_ANSWER {
            self.large_answers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many large answers have been written: the housekeeping tick hands freed memory
    /// back to the system once this stops changing.
    pub fn large_answers(&self) -> u64 {
        self.large_answers.load(Ordering::Relaxed)
    }
}

/// An answer this large (a listing of a few thousand sessions) leaves a freed buffer of its
/// size that the allocator keeps for reuse rather than returning.
pub const LARGE_ANSWER: usize = 1024 * 1024;

/// A counted connection; dropping it frees the slot.
pub struct ConnectionSlot<'a> {
    daemon: &'a Daemon,
}

impl Drop for ConnectionSlot<'_> {
    fn drop(&mut self) {
        self.daemon.connections.fetch_sub(1, Ordering::AcqRel);
    }
}
