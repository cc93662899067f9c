//! One client connection: peer check, handshake, then requests until either side stops.
//!
//! A connection is two loops over one socket, run side by side in the connection's task:
//!
//! - the **reader** waits (without a time limit) for the next frame to begin, then gives the
//!   rest of it `frame_timeout` to arrive; it answers each request through the outbox, in
//!   arrival order;
//! - the **writer** drains the outbox, and the connection's event queue, to the socket. It
//!   drops the client when its socket takes no byte for `write_timeout` while an answer is
//!   waiting (however long the whole write takes; the socket frees room a buffer, some
//!   100 KB, at a time). A write of events alone waits as long as it must: a subscriber
//!   paused in a pager is kept, and its event queue counts what it misses.
//!
//! They share nothing but a bounded channel, so a client that stops reading fills its own
//! outbox, stalls only its own reader, and is dropped when a write makes no progress. Events
//! never wait for anyone: the queue they land in is bounded, and overflow becomes a `lagged`
//! notice, so a stalled subscriber holds at most its queue and the write in progress. No lock
//! is held across any of this I/O, and nothing here can make another connection wait.
//!
//! Errors follow the protocol's rule: an error with an `id` fails one request and the
//! connection goes on; an error without one is about the connection, which is closed right
//! after the error is flushed.

use std::collections::VecDeque;
use std::sync::Arc;

use interprocess::local_socket::tokio::Stream;
use sessiond_proto::envelope::{ErrorFrame, FrameHead, Hello, Welcome};
use sessiond_proto::frame::{
    self,
    tokio_io::{read_frame, wait_readable, ReadError},
    FrameError,
};
use sessiond_proto::{ErrorCode, PROTOCOL_VERSION};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::context::Daemon;
use crate::dispatch::{self, Answer, LaterFrame, METHODS};
use crate::events::EventQueue;
use crate::shutdown::DrainGuard;

/// What handlers may know about the connection a request came on.
pub struct Conn {
    /// Unique for the daemon's life; names the connection in logs and subscriptions.
    pub id: u64,
    /// Where the connection's subscriptions deliver events.
    pub events: Arc<EventQueue>,
}

/// Encoded frames waiting to be written. Bounded so a client that never reads cannot make the
/// daemon buffer without limit; 64 answers is deep enough for any sane pipeline.
const OUTBOX_FRAMES: usize = 64;

/// Read buffer per connection: large enough that a pipelined burst of small requests costs one
/// read syscall, small enough that thousands of idle connections stay cheap.
const READ_BUFFER: usize = 8 * 1024;

/// Serves one accepted connection until it closes. The caller wraps it in a span naming the
/// connection.
pub async fn serve(ctx: Arc<Daemon>, stream: Stream, id: u64, _drain: DrainGuard) {
    let (peer_uid, peer_pid) = match crate::platform::peer_identity(&stream) {
        Ok(identity) => identity,
        Err(e) => {
            warn!("cannot read peer credentials, refusing connection: {e}");
            (None, None)
        }
    };
    let me = sessiond_proto::paths::current_uid();
    if peer_uid != Some(me) {
        warn!(
            peer_uid = ?peer_uid,
            peer_pid = ?peer_pid,
            "refused a connection from another user"
        );
        refuse(
            &ctx,
            &stream,
            ErrorCode::PERMISSION_DENIED,
            format!(
                "this sessiond belongs to uid {me}; connections from other users (yours is {}) \
                 are refused. Use your own daemon: drop --runtime-dir / SESSIOND_RUNTIME_DIR \
                 if they point here",
                peer_uid.map_or("unknown".to_string(), |u| u.to_string())
            ),
        )
        .await;
        return;
    }
    let Some(_slot) = ctx.admit_connection() else {
        warn!(
            max = ctx.config.max_connections,
            "connection limit reached; refusing"
        );
        refuse(
            &ctx,
            &stream,
            ErrorCode::BUSY,
            format!(
                "sessiond is serving its maximum of {} connections; close idle clients or raise \
                 daemon.max_connections in {}",
                ctx.config.max_connections,
                ctx.paths.config.display()
            ),
        )
        .await;
        return;
    };
    debug!(peer_pid = ?peer_pid, "connected");

    let conn = Conn {
        id,
        events: Arc::new(EventQueue::default()),
    };
    let (outbox, queue) = mpsc::channel(OUTBOX_FRAMES);
    let mut stream = stream;
    let (read_half, write_half) = halves(&mut stream);
    let reader = read_loop(&ctx, &conn, read_half, outbox);
    let writer = write_loop(&ctx, write_half, queue, &conn.events);
    tokio::pin!(reader, writer);
    tokio::select! {
        why = &mut reader => {
            // Let the writer flush every answer already produced (the reader dropped its
            // outbox, so the writer ends when the queue is empty).
            let flushed = writer.await;
            debug!("closed: {why}{}", flushed.err().map(|e| format!(" ({e})")).unwrap_or_default());
        }
        failed = &mut writer => {
            debug!("closed: {}", failed.err().unwrap_or("writer finished"));
        }
    }
    let orders = ctx.registry().connection_closed(conn.id);
    for order in orders {
        ctx.start_turn(order);
    }
}

/// The connection's two halves, for its reader and its writer.
///
/// Tokio's own halves, not reads and writes through `&Stream`: a read through `&Stream` that
/// returns less than it asked for leaves the socket marked readable, so after every request
/// the reader asked the socket again and was told "would block", one system call more per
/// request than the round trip needs. Tokio's read takes a short read as the socket drained.
fn halves(stream: &mut Stream) -> (ReadHalf<'_>, WriteHalf<'_>) {
    let Stream::UdSocket(socket) = stream;
    socket.inner_mut().split()
}

/// Writes a connection-level error to a client that will not be served, then drops it.
async fn refuse(ctx: &Daemon, stream: &Stream, code: ErrorCode, message: String) {
    let bytes = frame::encode(&ErrorFrame::new(None, code, message))
        .expect("an error frame of plain strings always encodes");
    let mut w = stream;
    let _ = tokio::time::timeout(ctx.config.write_timeout(), w.write_all(&bytes)).await;
}

/// Sends an encoded frame to the writer; false when the writer is gone.
async fn send(outbox: &mpsc::Sender<Vec<u8>>, bytes: Vec<u8>) -> bool {
    outbox.send(bytes).await.is_ok()
}

/// Sends a connection-level error (no id).
async fn send_fatal(outbox: &mpsc::Sender<Vec<u8>>, code: ErrorCode, message: String) {
    let bytes = frame::encode(&ErrorFrame::new(None, code, message))
        .expect("an error frame of plain strings always encodes");
    send(outbox, bytes).await;
}

/// Reads frames until the connection should close; returns why, for the log.
async fn read_loop(
    ctx: &Daemon,
    conn: &Conn,
    stream: ReadHalf<'_>,
    outbox: mpsc::Sender<Vec<u8>>,
) -> &'static str {
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream);
    let max = ctx.config.max_frame();
    let mut shutdown = ctx.shutdown_listener();

    // Handshake: the whole hello must arrive within handshake_timeout of connecting.
    let hello = tokio::time::timeout(ctx.config.handshake_timeout(), async {
        match wait_readable(&mut reader).await {
            Ok(true) => Some(read_frame(&mut reader, max, ctx.config.frame_timeout()).await),
            _ => None,
        }
    })
    .await;
    let payload = match hello {
        Err(_) => {
            send_fatal(
                &outbox,
                ErrorCode::TIMEOUT,
                format!(
                    "no hello within {:?} of connecting; a client's first frame must be hello \
                     (PROTOCOL.md, section 3)",
                    ctx.config.handshake_timeout()
                ),
            )
            .await;
            return "handshake timed out";
        }
        Ok(None) => return "client left before its hello",
        Ok(Some(Err(e))) => {
            report_read_error(&outbox, e, max).await;
            return "bad hello frame";
        }
        Ok(Some(Ok(payload))) => payload,
    };
    if let Err(why) = handshake(&outbox, &payload).await {
        return why;
    }

    let mut pending = Pending::default();
    let mut since_yield = 0;
    let mut read_error = None;
    let mut shutting_down = false;
    let why = loop {
        tokio::select! {
            biased;
            // Until then, a stopping daemon keeps the connection, so its subscriptions and
            // pending answers go on, but refuses new requests (`handle_frame`).
            _ = shutdown.closing() => {
                shutting_down = true;
                break "daemon shutting down";
            }
            frame = pending.next(), if !pending.is_empty() => {
                if !send(&outbox, frame).await {
                    break "writer gone";
                }
                continue;
            }
            // With too many answers waiting on commits, stop reading until some land.
            readable = wait_readable(&mut reader), if pending.len() < MAX_PENDING => match readable {
                Ok(true) => {}
                Ok(false) => break "client closed the connection",
                Err(_) => break "connection reset",
            },
        }
        let payload = match read_frame(&mut reader, max, ctx.config.frame_timeout()).await {
            Ok(payload) => payload,
            Err(e) => {
                read_error = Some(e);
                break "bad or incomplete frame";
            }
        };
        if !handle_frame(ctx, conn, &payload, &outbox, &mut pending).await {
            break "connection-level error";
        }
        // Frames already in the read buffer never make this loop wait, so without this a
        // client pipelining thousands of requests would hold the event loop and starve every
        // other connection, its subscribers' writers included, until it ran dry. A short
        // quantum keeps even a dozen such clients from outrunning a subscriber's queue.
        since_yield += 1;
        if since_yield == FRAMES_PER_TURN {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
    };
    // Changes already started happen whatever becomes of the connection; answer them before
    // any closing notice, in case the client is still listening.
    while !pending.is_empty() {
        let frame = pending.next().await;
        send(&outbox, frame).await;
    }
    if let Some(e) = read_error {
        report_read_error(&outbox, e, max).await;
    }
    if shutting_down {
        send_fatal(
            &outbox,
            ErrorCode::SHUTTING_DOWN,
            "sessiond has shut down; requests on this connection that got no answer were \
             not run. The next client command starts a new daemon."
                .to_string(),
        )
        .await;
    }
    why
}

/// Answers that wait for their commits before they may be sent.
const MAX_PENDING: usize = 1024;

/// Frames one connection handles before letting the other tasks run. With the event queue
/// at 1,024, sixteen connections flooding requests still leave a subscriber's writer a turn
/// every 256 events.
const FRAMES_PER_TURN: usize = 16;

/// Answers waiting on commits or reads, oldest first. The store completes jobs in the order it
/// receives them, so the oldest always completes first and waiting on it alone is enough.
#[derive(Default)]
struct Pending(VecDeque<LaterFrame>);

impl Pending {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    /// Waits for the oldest answer and returns its frame. Cancel-safe: nothing is removed
    /// until it has resolved.
    async fn next(&mut self) -> Vec<u8> {
        let frame = self.0.front_mut().expect("next() on an empty queue").await;
        self.0.pop_front();
        frame
    }
}

/// Tells the client why a frame could not be read, when it is still there to hear it.
async fn report_read_error(outbox: &mpsc::Sender<Vec<u8>>, e: ReadError, max: usize) {
    match e {
        ReadError::Frame(FrameError::TooLarge { len, .. }) => {
            send_fatal(
                outbox,
                ErrorCode::FRAME_TOO_LARGE,
                format!(
                    "frame of {len} bytes exceeds this daemon's limit of {max} bytes \
                     (daemon.max_frame_bytes in config.toml); send less per request"
                ),
            )
            .await
        }
        ReadError::TimedOut(after) => {
            send_fatal(
                outbox,
                ErrorCode::TIMEOUT,
                format!("the rest of a started frame did not arrive within {after:?}"),
            )
            .await
        }
        // The client left mid-frame or the socket failed: nobody to tell.
        ReadError::Frame(_) => {}
    }
}

/// Checks the hello and answers welcome, or refuses. Err carries the reason to close.
async fn handshake(outbox: &mpsc::Sender<Vec<u8>>, payload: &[u8]) -> Result<(), &'static str> {
    let head = FrameHead::decode(payload);
    match head {
        Ok(head) if head.kind == "hello" => {}
        Ok(head) => {
            send_fatal(
                outbox,
                ErrorCode::HANDSHAKE_REQUIRED,
                format!(
                    "the first frame must be hello, not {:?} (PROTOCOL.md, section 3)",
                    head.kind
                ),
            )
            .await;
            return Err("no handshake");
        }
        Err(e) => {
            send_fatal(outbox, ErrorCode::BAD_FRAME, bad_frame_message(&e)).await;
            return Err("undecodable hello");
        }
    }
    let hello: Hello = match frame::decode(payload) {
        Ok(hello) => hello,
        Err(e) => {
            send_fatal(
                outbox,
                ErrorCode::BAD_FRAME,
                format!("malformed hello: {e}; it needs protocol: [major, minor]"),
            )
            .await;
            return Err("malformed hello");
        }
    };
    if !PROTOCOL_VERSION.compatible_with(hello.protocol) {
        info!(
            client = hello.client.as_deref().unwrap_or(""),
            client_protocol = %hello.protocol,
            "refused a client speaking another protocol version"
        );
        send_fatal(
            outbox,
            ErrorCode::VERSION_MISMATCH,
            sessiond_proto::envelope::version_mismatch_message(hello.protocol, PROTOCOL_VERSION),
        )
        .await;
        return Err("protocol version mismatch");
    }
    debug!(client = hello.client.as_deref().unwrap_or(""), client_pid = ?hello.pid, protocol = %hello.protocol, "hello");
    let welcome = Welcome::new(
        PROTOCOL_VERSION,
        crate::VERSION,
        std::process::id(),
        METHODS.iter().map(|m| m.to_string()).collect(),
    );
    let bytes = frame::encode(&welcome).expect("welcome always encodes");
    if send(outbox, bytes).await {
        Ok(())
    } else {
        Err("writer gone")
    }
}

fn bad_frame_message(e: &FrameError) -> String {
    format!(
        "frame is not a MessagePack map with a string \"type\" ({e}); see PROTOCOL.md, section 2"
    )
}

/// Handles one frame after the handshake. Returns false when the connection must close.
async fn handle_frame(
    ctx: &Daemon,
    conn: &Conn,
    payload: &[u8],
    outbox: &mpsc::Sender<Vec<u8>>,
    pending: &mut Pending,
) -> bool {
    let head = match FrameHead::decode(payload) {
        Ok(head) => head,
        // A map with a usable id but a malformed head (a method that is not a string, say)
        // fails only that request; anything less cannot be answered and closes.
        Err(e) => match FrameHead::salvage_id(payload) {
            Some(id) => {
                let bytes = frame::encode(&ErrorFrame::new(
                    Some(id),
                    ErrorCode::BAD_FRAME,
                    bad_frame_message(&e),
                ))
                .expect("an error frame of plain strings always encodes");
                return send(outbox, bytes).await;
            }
            None => {
                send_fatal(outbox, ErrorCode::BAD_FRAME, bad_frame_message(&e)).await;
                return false;
            }
        },
    };
    let reject = |id: Option<u64>, message: String| {
        frame::encode(&ErrorFrame::new(id, ErrorCode::BAD_FRAME, message))
            .expect("an error frame of plain strings always encodes")
    };
    match (head.kind.as_str(), head.id) {
        ("request", Some(id)) if ctx.shutting_down() => {
            let bytes = frame::encode(&ErrorFrame::new(
                Some(id),
                ErrorCode::SHUTTING_DOWN,
                "sessiond is stopping: it is ending the running turns (each settles \
                 `interrupted`), then closes this connection; this request was not run. The \
                 next client command starts a new daemon."
                    .to_string(),
            ))
            .expect("an error frame of plain strings always encodes");
            send(outbox, bytes).await
        }
        ("request", Some(id)) => {
            let answer = match head.method.as_deref() {
                Some(method) => dispatch::dispatch(ctx, conn, id, method, payload),
                None => Answer::Now(reject(Some(id), "request has no method".into())),
            };
            match answer {
                Answer::Now(bytes) => send(outbox, bytes).await,
                Answer::Later(frame) => {
                    pending.0.push_back(frame);
                    true
                }
            }
        }
        ("request", None) => {
            send(
                outbox,
                reject(
                    None,
                    "request has no integer id, so it cannot be answered".into(),
                ),
            )
            .await;
            false
        }
        (kind, id) => {
            let why = if kind == "hello" {
                "hello was already received on this connection".to_string()
            } else {
                format!("a client may send hello and request frames, not {kind:?}")
            };
            send(outbox, reject(id, why)).await && id.is_some()
        }
    }
}

/// Answers smaller than this are coalesced with their neighbours into one write.
const COALESCE_UNDER: usize = 64 * 1024;
/// A coalesced write stops growing past this.
const BATCH_LIMIT: usize = 256 * 1024;

/// `answer`, preceded by the events published before it was produced: a subscribed client
/// sees a change's events before the answer to the change.
fn after_events(events: &EventQueue, answer: Vec<u8>) -> Vec<u8> {
    let mut frames = events.take();
    if frames.is_empty() {
        answer
    } else {
        frames.push(answer);
        frames.concat()
    }
}

/// Writes answers and events until the answer queue closes (Ok) or the client stops
/// accepting bytes.
async fn write_loop(
    ctx: &Daemon,
    mut w: WriteHalf<'_>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    events: &EventQueue,
) -> Result<(), &'static str> {
    let mut shutdown = ctx.shutdown_listener();
    // An answer taken from the queue while coalescing but too large to copy into the batch,
    // or while a write of events waited: it is written next, on its own.
    let mut carried: Option<Vec<u8>> = None;
    loop {
        // Whether this write carries an answer, which a client that stops reading is not
        // allowed to hold up for more than the write timeout.
        let mut answers = true;
        let first = match carried.take() {
            Some(answer) => after_events(events, answer),
            None => tokio::select! {
                biased;
                answer = queue.recv() => match answer {
                    Some(answer) => after_events(events, answer),
                    None => break,
                },
                _ = events.ready.notified() => {
                    let frames = events.take();
                    if frames.is_empty() {
                        continue;
                    }
                    answers = false;
                    frames.concat()
                }
            },
        };
        // Coalesce small answers already queued into one write. A large answer (a listing of
        // thousands of sessions) is never copied into a batch: it goes out alone.
        let mut bytes = first;
        if bytes.len() < COALESCE_UNDER {
            let mut batch: Option<Vec<u8>> = None;
            while batch.as_ref().map_or(bytes.len(), Vec::len) < BATCH_LIMIT {
                match queue.try_recv() {
                    Ok(more) if more.len() < COALESCE_UNDER => {
                        let batch = batch.get_or_insert_with(|| {
                            let mut b = Vec::with_capacity(2 * (bytes.len() + more.len()));
                            b.extend_from_slice(&bytes);
                            b
                        });
                        batch.extend_from_slice(&more);
                        answers = true;
                    }
                    Ok(large) => {
                        carried = Some(large);
                        answers = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(batch) = batch {
                bytes = batch;
            }
        }
        let stall = Stall {
            timeout: ctx.config.write_timeout(),
            answers,
        };
        match write_while_accepted(&mut w, &bytes, stall, &mut queue, &mut shutdown).await {
            Ok(held) => {
                ctx.note_answer_written(bytes.len());
                // Only a write of events alone takes an answer from the queue, and such a
                // write carries none over.
                if held.is_some() {
                    carried = held;
                }
            }
            Err(Stalled::Gone) => return Err("client went away"),
            Err(Stalled::Stopped) => {
                warn!(
                    "client's socket took nothing for {:?} with an answer waiting (it \
                     stopped reading, or reads slower than its socket frees room); dropping it",
                    ctx.config.write_timeout()
                );
                return Err("client stopped reading");
            }
        }
    }
    Ok(())
}

/// Why a write to a client ended early.
enum Stalled {
    /// The connection failed.
    Gone,
    /// The client accepted nothing for as long as it was allowed.
    Stopped,
}

/// How long a write that makes no progress may go on.
struct Stall {
    /// Once an answer waits: the configured write timeout.
    timeout: std::time::Duration,
    /// Whether the write carries an answer already.
    answers: bool,
}

/// How long a stalled write may go on once the daemon is closing connections: long enough
/// for a client that is reading to take the rest, well inside the shutdown grace.
const CLOSING_STALL: std::time::Duration = std::time::Duration::from_millis(500);

/// Writes all of `bytes`, giving up when the client accepts nothing for as long as it may:
/// never, for events alone (a subscriber paused in a pager is kept; its queue counts what it
/// misses, and it gets `lagged` when it reads again); `stall.timeout` once an answer waits,
/// in this write or behind it, or the client's reader has gone (it closed its side);
/// [`CLOSING_STALL`] once the daemon closes connections (shutdown waits for this one, and a
/// client that takes nothing could not take its closing notice either). Time counts from
/// the last progress, or from the answer's arrival, so a slow but steady reader (a terminal
/// over ssh taking a batch of events megabytes long) is kept however long it takes.
///
/// While events alone wait, nothing polls: the write, the next answer and the closing each
/// wake it. An answer taken from `queue` meanwhile is returned, to be written next.
async fn write_while_accepted(
    w: &mut WriteHalf<'_>,
    mut bytes: &[u8],
    stall: Stall,
    queue: &mut mpsc::Receiver<Vec<u8>>,
    shutdown: &mut crate::shutdown::ShutdownListener,
) -> Result<Option<Vec<u8>>, Stalled> {
    use tokio::time::Instant;
    let mut held: Option<Vec<u8>> = None;
    let mut reader_gone = false;
    let mut closing = false;
    let mut since = Instant::now();
    while !bytes.is_empty() {
        // Most writes find room at once: try alone first, so the common case costs no timer
        // and no other future (a switch seen by 100 subscribers is 100 of these in a row).
        let mut write = std::pin::pin!(w.write(bytes));
        let now = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(write.as_mut(), cx))
        })
        .await;
        match now {
            std::task::Poll::Ready(Ok(0) | Err(_)) => return Err(Stalled::Gone),
            std::task::Poll::Ready(Ok(n)) => {
                bytes = &bytes[n..];
                since = Instant::now();
                continue;
            }
            std::task::Poll::Pending => {}
        }
        let limit = if closing {
            Some(CLOSING_STALL)
        } else if stall.answers || held.is_some() || reader_gone {
            Some(stall.timeout)
        } else {
            None
        };
        let give_up = async {
            match limit {
                Some(limit) => tokio::time::sleep_until(since + limit).await,
                None => std::future::pending().await,
            }
        };
        let watch_queue = limit.is_none();
        tokio::select! {
            biased;
            written = &mut write => match written {
                Ok(0) | Err(_) => return Err(Stalled::Gone),
                Ok(n) => {
                    bytes = &bytes[n..];
                    since = Instant::now();
                }
            },
            () = give_up => return Err(Stalled::Stopped),
            next = queue.recv(), if watch_queue => {
                // From here the answer has the whole timeout to be taken.
                since = Instant::now();
                match next {
                    Some(answer) => held = Some(answer),
                    None => reader_gone = true,
                }
            }
            () = shutdown.closing(), if !closing => closing = true,
        }
    }
    Ok(held)
}
