//! Graceful shutdown: one signal every task can watch, and a drain that tells the server when
//! every connection has finished.
//!
//! The signal is a `watch` channel that moves forward twice. It is *triggered* (by SIGTERM,
//! SIGINT, SIGHUP or a `shutdown` request): the server stops accepting, running turns are
//! ended, and connections stay open but refuse new requests, so subscribers and `--wait`
//! clients see those turns settle. Once they have, the server *closes* it: every connection
//! sends its closing notice and ends. The drain is the mpsc trick: every connection holds a
//! clone of a sender it never uses; when the last clone is dropped the receiver wakes, and
//! the server knows nothing is in flight.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// How far shutdown has gone; only ever moves forward.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Stage {
    Serving,
    /// Triggered: turns are being ended; requests are refused.
    Ending,
    /// The turns are settled: connections close.
    Closing,
}

/// The trigger, owned by the daemon context.
pub struct ShutdownSignal {
    tx: watch::Sender<Stage>,
}

/// A task's view of the trigger.
#[derive(Clone)]
pub struct ShutdownListener {
    rx: watch::Receiver<Stage>,
}

impl ShutdownSignal {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(Stage::Serving).0,
        }
    }

    /// Starts shutdown; later calls do nothing.
    pub fn trigger(&self, reason: &str) {
        let started = self.tx.send_if_modified(|stage| {
            let first = *stage == Stage::Serving;
            if first {
                *stage = Stage::Ending;
            }
            first
        });
        if started {
            tracing::info!("shutting down: {reason}");
        }
    }

    /// Tells every connection to close: the turns have been ended.
    pub fn close(&self) {
        self.tx.send_replace(Stage::Closing);
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow() >= Stage::Ending
    }

    pub fn listener(&self) -> ShutdownListener {
        ShutdownListener {
            rx: self.tx.subscribe(),
        }
    }
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownListener {
    /// Resolves once shutdown has been triggered (at once if it already was). Cancel-safe.
    pub async fn triggered(&mut self) {
        self.reached(Stage::Ending).await;
    }

    /// Resolves once connections are to close (at once if they already are). Cancel-safe.
    pub async fn closing(&mut self) {
        self.reached(Stage::Closing).await;
    }

    async fn reached(&mut self, stage: Stage) {
        // The sender lives as long as the daemon context, which outlives every listener.
        let _ = self.rx.wait_for(|now| *now >= stage).await;
    }
}

/// Tracks work that shutdown must wait for.
pub struct Drain {
    tx: mpsc::Sender<()>,
    rx: mpsc::Receiver<()>,
}

/// Held by one unit of work (a connection); dropping it marks that work done.
#[derive(Clone)]
pub struct DrainGuard {
    _tx: mpsc::Sender<()>,
}

impl Drain {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(1);
        Self { tx, rx }
    }

    pub fn guard(&self) -> DrainGuard {
        DrainGuard {
            _tx: self.tx.clone(),
        }
    }

    /// Waits until every guard is dropped, or `grace` passes. Returns whether everything
    /// finished in time.
    pub async fn wait(self, grace: Duration) -> bool {
        let Drain { tx, mut rx } = self;
        drop(tx);
        tokio::time::timeout(grace, rx.recv()).await.is_ok()
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}
