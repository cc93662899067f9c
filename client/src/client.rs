//! The async client: one connection shared by any number of concurrent calls.
//!
//! A reader task owns the receiving side and routes each frame by its head: an answer goes to
//! the call waiting for that `id` (as raw bytes, decoded by the caller, who knows the result
//! type), an event goes to the event stream. A call writes its own request when it can do so
//! without waiting, and otherwise hands it to a writer task that keeps the order ([`Outbox`]).
//! Calls only touch a short-lived map of pending ids; no lock is held across any await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use interprocess::local_socket::tokio::Stream;
use sessiond_proto::envelope::Welcome;
use sessiond_proto::frame::{
    tokio_io::{read_frame, wait_readable},
    CLIENT_MAX_FRAME,
};
use sessiond_proto::methods::Method;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::ClientError;
use crate::exchange;
use crate::options::ConnectOptions;
use crate::transport::{absent_error, try_connect_async, Attempt};

type Pending = Arc<Mutex<Calls>>;

/// The calls waiting for answers, and, once the connection has ended, why.
#[derive(Default)]
struct Calls {
    waiting: HashMap<u64, oneshot::Sender<Result<Vec<u8>, ClientError>>>,
    /// Set when the reader stops: later calls fail at once with it rather than wait.
    ended: Option<ClientError>,
}

/// Events buffered for the application. Answers never wait behind unread events: past this
/// many, events are counted instead of kept, and the stream reports the gap as a `lagged`
/// event, exactly as the daemon does for a connection that reads too slowly.
const EVENT_BUFFER: usize = 4096;

/// The pushed events of one connection, as raw frame payloads. Obtained once from
/// [`Client::take_events`]; ends (`None`) when the connection does, or the [`Client`] is
/// dropped.
///
/// Decode the head first (`sessiond_proto::frame::decode::<Event<IgnoredAny>>`, with serde's
/// `IgnoredAny`): a `lagged` event (`event_kind::LAGGED`) carries `{missed}` instead of a
/// session, and must be told apart before decoding the rest as `Event<SessionEvent>`.
pub struct EventStream {
    shared: Arc<EventBuffer>,
}

#[derive(Default)]
struct EventBuffer {
    state: Mutex<EventState>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct EventState {
    frames: std::collections::VecDeque<Vec<u8>>,
    /// Events dropped since the last one delivered, and the seq of the last of them.
    missed: u64,
    last_missed_seq: u64,
    total_missed: u64,
    closed: bool,
}

impl EventBuffer {
    fn push(&self, payload: Vec<u8>) {
        let mut state = lock(&self.state);
        // Once a gap has begun, everything after it waits behind the `lagged` notice: an
        // event must not be delivered before the notice of a gap that came earlier.
        if state.missed > 0 || state.frames.len() >= EVENT_BUFFER {
            // A dropped `lagged` notice carries the daemon's own count: keep it in ours.
            let missed = exchange::events_in(&payload);
            state.missed = state.missed.saturating_add(missed);
            state.total_missed = state.total_missed.saturating_add(missed);
            state.last_missed_seq = exchange::event_seq(&payload).unwrap_or(0);
        } else {
            state.frames.push_back(payload);
        }
        drop(state);
        self.ready.notify_one();
    }

    fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
    }
}

impl EventStream {
    /// The next event; after a gap, a `lagged {missed}` event first. `None` once the
    /// connection has closed and everything received was delivered.
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            {
                let mut state = lock(&self.shared.state);
                if let Some(frame) = state.frames.pop_front() {
                    return Some(frame);
                }
                if state.missed > 0 {
                    let missed = std::mem::take(&mut state.missed);
                    return Some(exchange::lagged(state.last_missed_seq, missed));
                }
                if state.closed {
                    return None;
                }
            }
            self.shared.ready.notified().await;
        }
    }
}

/// The sending side of a connection. A call writes its request itself, without waiting, when
/// nothing is queued: no hop through another task, which on a multi-threaded runtime can
/// cost a thread wake-up per call. Whatever cannot be written at once (the socket is full, or
/// earlier requests are still queued) goes to the writer task, which keeps the order.
struct Outbox {
    stream: OwnedWriteHalf,
    /// Requests handed to the writer task and not yet fully written. While any are, calls
    /// queue behind them instead of writing.
    queued: Mutex<usize>,
    queue: mpsc::UnboundedSender<Vec<u8>>,
}

impl Outbox {
    /// Writes `bytes` now or queues them; never waits, so a call dropped at any point leaves
    /// no half-written frame behind (the writer task finishes what was queued).
    fn send(&self, mut bytes: Vec<u8>) -> Result<(), ClientError> {
        let mut queued = lock(&self.queued);
        if *queued == 0 {
            let written = match write_without_waiting(&self.stream, &bytes) {
                Ok(written) => written,
                // The daemon closed the connection, maybe saying why (a request too large):
                // the reader gets that, and ends every call with it, this one included.
                Err(_) => return Ok(()),
            };
            if written == bytes.len() {
                return Ok(());
            }
            bytes.drain(..written);
        }
        // Queued while the count is held, so the writer task sees frames in call order.
        self.queue
            .send(bytes)
            .map_err(|_| ClientError::Disconnected("the connection is closed".into()))?;
        *queued += 1;
        Ok(())
    }
}

/// Writes as much of `bytes` as the socket takes without blocking; returns how much that was.
fn write_without_waiting(stream: &OwnedWriteHalf, bytes: &[u8]) -> std::io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match stream.try_write(&bytes[written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

/// Writes all of `bytes`, waiting for room as needed, through a half that calls share.
async fn write_all_shared(stream: &OwnedWriteHalf, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        let written = write_without_waiting(stream, bytes)?;
        bytes = &bytes[written..];
    }
    Ok(())
}

/// An async connection to the daemon.
///
/// `Send + Sync`: share one through an `Arc` and call it from any number of tasks at once;
/// the calls are pipelined on the one connection. It does not reconnect: once the daemon has
/// gone (a restart, say), every call fails at once with why, and the application connects
/// again. A call that timed out, or whose future was dropped, may still have reached the
/// daemon and been carried out: check before repeating one that changes something (a
/// `submit`).
pub struct Client {
    outbox: Arc<Outbox>,
    pending: Pending,
    next_id: AtomicU64,
    welcome: Welcome,
    timeout: Duration,
    events: Arc<EventBuffer>,
    events_taken: std::sync::atomic::AtomicBool,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Client {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // The reader, aborted, cannot end the stream itself.
        self.events.close();
    }
}

impl Client {
    /// Connects (starting the daemon if allowed and needed), and completes the handshake.
    pub async fn connect(opts: &ConnectOptions) -> Result<Client, ClientError> {
        let stream = match try_connect_async(&opts.paths).await? {
            Attempt::Connected(stream) => stream,
            Attempt::Absent if !opts.autostart => return Err(absent_error(&opts.paths)),
            Attempt::Absent => {
                let blocking_opts = opts.clone();
                tokio::task::spawn_blocking(move || {
                    crate::autostart::ensure_daemon(&blocking_opts)
                })
                .await
                .map_err(|e| ClientError::Local(format!("autostart task failed: {e}")))??;
                connect_with_backoff(opts).await?
            }
        };
        let (reader, mut w) = split(stream);
        let mut reader = BufReader::new(reader);
        // A failed hello write is not final: a daemon refusing the connection writes its
        // reason and closes, possibly before our bytes land. Read that reason first.
        let sent = w.write_all(&exchange::hello(&opts.client_name)).await;
        let first = tokio::time::timeout(
            opts.timeout,
            read_frame(&mut reader, CLIENT_MAX_FRAME, opts.timeout),
        )
        .await
        .map_err(|_| ClientError::Timeout(opts.timeout))?
        .map_err(|e| match &sent {
            Err(w) => ClientError::Disconnected(format!("sending hello: {w}")),
            Ok(()) => ClientError::Disconnected(format!("waiting for welcome: {e}")),
        })?;
        let welcome = exchange::welcome(&first)?;

        let pending: Pending = Arc::default();
        let (queue_tx, queue) = mpsc::unbounded_channel::<Vec<u8>>();
        let outbox = Arc::new(Outbox {
            stream: w,
            queued: Mutex::new(0),
            queue: queue_tx,
        });
        let events = Arc::new(EventBuffer::default());
        let reader_task = tokio::spawn(read_loop(reader, pending.clone(), events.clone()));
        let writer_task = tokio::spawn(write_loop(outbox.clone(), queue));
        Ok(Client {
            outbox,
            pending,
            next_id: AtomicU64::new(1),
            welcome,
            timeout: opts.timeout,
            events,
            events_taken: Default::default(),
            tasks: [reader_task, writer_task],
        })
    }

    /// The daemon's welcome: its version, pid and capabilities.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Calls method `M` and waits (at most the configured timeout) for its answer. Calls may
    /// run concurrently; they are pipelined on the one connection.
    pub async fn call<M: Method>(&self, params: M::Params) -> Result<M::Result, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = exchange::request::<M>(id, &params)?;
        let (tx, rx) = oneshot::channel();
        {
            let mut calls = lock(&self.pending);
            if let Some(why) = &calls.ended {
                return Err(why.duplicate());
            }
            calls.waiting.insert(id, tx);
        }
        let exchange = async {
            self.outbox.send(bytes)?;
            match rx.await {
                Ok(Ok(payload)) => exchange::answer::<M>(&payload),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ClientError::Disconnected("the connection is closed".into())),
            }
        };
        let outcome = tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout(self.timeout)));
        if outcome.is_err() {
            lock(&self.pending).waiting.remove(&id);
        }
        outcome
    }

    /// Events dropped in all because the application did not take them from the stream fast
    /// enough (each gap is also reported in the stream as `lagged`).
    pub fn events_dropped(&self) -> u64 {
        lock(&self.events.state).total_missed
    }

    /// The stream of pushed events. Can be taken once; `None` after that.
    pub fn take_events(&self) -> Option<EventStream> {
        if self.events_taken.swap(true, Ordering::Relaxed) {
            return None;
        }
        Some(EventStream {
            shared: self.events.clone(),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection's read half, for the reader task, and its write half, for calls and the
/// writer task.
///
/// Tokio's own halves, not reads and writes through a shared `&Stream`: a read through
/// `&Stream` that returns less than it asked for leaves the socket marked readable, so after
/// every answer the reader asked the socket again and was told "would block", one system
/// call more per call than the round trip needs. Tokio's read takes a short read as the
/// socket drained. (Dropping the write half, with the client, shuts down the sending side.)
fn split(stream: Stream) -> (OwnedReadHalf, OwnedWriteHalf) {
    let Stream::UdSocket(socket) = stream;
    tokio::net::UnixStream::from(socket).into_split()
}

async fn read_loop(
    mut reader: BufReader<OwnedReadHalf>,
    pending: Pending,
    events: Arc<EventBuffer>,
) {
    let why = loop {
        match wait_readable(&mut reader).await {
            Ok(true) => {}
            Ok(false) => {
                break ClientError::Disconnected("the daemon closed the connection".into())
            }
            Err(e) => break ClientError::Disconnected(e.to_string()),
        }
        // Once a frame has started, the daemon sends the rest at once; a generous bound only
        // guards against a wedged peer.
        let payload = match read_frame(&mut reader, CLIENT_MAX_FRAME, Duration::from_secs(60)).await
        {
            Ok(p) => p,
            Err(sessiond_proto::frame::tokio_io::ReadError::Frame(e)) => {
                break ClientError::from_frame(e)
            }
            Err(e) => break ClientError::Disconnected(e.to_string()),
        };
        let (kind, id) = match exchange::head(&payload) {
            Ok(head) => (head.kind, head.id),
            Err(e) => break e,
        };
        match (kind.as_str(), id) {
            ("response" | "error", Some(id)) => {
                if let Some(waiter) = lock(&pending).waiting.remove(&id) {
                    let _ = waiter.send(Ok(payload));
                }
            }
            ("error", None) => break exchange::error(&payload),
            // Never wait for the application here: answers queue behind this loop.
            ("event", _) => events.push(payload),
            _ => {}
        }
    };
    fail_all(&pending, why);
    events.close();
}

/// Writes what calls could not write at once, in the order they queued it.
async fn write_loop(outbox: Arc<Outbox>, mut queue: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(bytes) = queue.recv().await {
        if write_all_shared(&outbox.stream, &bytes).await.is_err() {
            // As for a direct write: the reader learns why the daemon closed the connection
            // (it may have said), and ends every call with that. Until it has, calls queue
            // here unwritten, and their timeouts bound the wait.
            return;
        }
        *lock(&outbox.queued) -= 1;
    }
}

/// Ends every call still waiting, and every later one, with the reason the connection ended.
fn fail_all(pending: &Pending, why: ClientError) {
    let mut calls = lock(pending);
    for (_, waiter) in calls.waiting.drain() {
        let _ = waiter.send(Err(why.duplicate()));
    }
    calls.ended = Some(why);
}

async fn connect_with_backoff(opts: &ConnectOptions) -> Result<Stream, ClientError> {
    let deadline = Instant::now() + opts.startup_timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Attempt::Connected(stream) = try_connect_async(&opts.paths).await? {
            return Ok(stream);
        }
        if Instant::now() >= deadline {
            return Err(absent_error(&opts.paths));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
