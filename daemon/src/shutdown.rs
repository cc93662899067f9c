//! Graceful shutdown: one signal every task can watch, and a drain that tells the server when
//! every connection has finished.
//!
//! The signal is a `watch` channel flipped once (by SIGTERM, SIGINT or a `shutdown` request).
//! The drain is the mpsc trick: every connection holds a clone of a sender it never uses; when
//! the last clone is dropped the receiver wakes, and the server knows nothing is in flight.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// The trigger, owned by the daemon context.
pub struct ShutdownSignal {
    tx: watch::Sender<bool>,
}

/// A task's view of the trigger.
#[derive(Clone)]
pub struct ShutdownListener {
    rx: watch::Receiver<bool>,
}

impl ShutdownSignal {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(false).0,
        }
    }

    /// Starts shutdown; later calls do nothing.
    pub fn trigger(&self, reason: &str) {
        if !*self.tx.borrow() {
            tracing::info!("shutting down: {reason}");
            self.tx.send_replace(true);
        }
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
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
        // The sender lives as long as the daemon context, which outlives every listener.
        let _ = self.rx.wait_for(|on| *on).await;
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
