//! The blocking client: one connection, one request at a time, no async runtime.
//!
//! This is what `sessionctl` uses: a one-shot command pays for process start, connect and one
//! round trip, nothing more. `hello` and the first request go out together (the protocol
//! allows requests before `welcome`), so a whole command is a single round trip.

use std::collections::VecDeque;
use std::io::{self, BufReader, Write};
use std::ops::Range;
use std::time::{Duration, Instant};

use interprocess::local_socket::traits::Stream as _;
use interprocess::local_socket::Stream;
use sessiond_proto::envelope::{ErrorFrame, Welcome};
use sessiond_proto::frame::{self, FrameError, CLIENT_MAX_FRAME};
use sessiond_proto::methods::Method;

use crate::autostart::ensure_daemon;
use crate::error::ClientError;
use crate::exchange;
use crate::options::ConnectOptions;
use crate::payload::Payload;
use crate::raw::RawResult;
use crate::transport::{absent_error, try_connect_sync, Attempt};

/// Frames read past, after a failed write, looking for the error that closed the connection.
const CLOSING_FRAMES: usize = 64;

/// What came outside a call: an event, or the connection's end.
enum Pushed {
    Event(Vec<u8>),
    /// With the error the daemon closed the connection with, if it sent one.
    Closed(Option<ClientError>),
}

/// A blocking connection to the daemon.
pub struct BlockingClient {
    reader: BufReader<Stream>,
    /// The encoded hello, until it is sent together with the first request.
    hello: Option<Vec<u8>>,
    welcome: Option<Welcome>,
    next_id: u64,
    timeout: Duration,
    /// Events that arrived while waiting for an answer, kept for [`Self::next_event`].
    events: VecDeque<Vec<u8>>,
    /// Why the connection cannot be used any more, once a read or write failed part-way
    /// through a frame, or the daemon closed it.
    broken: Option<String>,
}

impl BlockingClient {
    /// Connects, starting the daemon if allowed and needed. `hello` goes out with the first
    /// request (or when [`Self::welcome`] is asked for), and its answer is read then.
    pub fn connect(opts: &ConnectOptions) -> Result<Self, ClientError> {
        let stream = match try_connect_sync(&opts.paths, opts.timeout)? {
            Attempt::Connected(stream) => stream,
            Attempt::Absent if !opts.autostart => return Err(absent_error(&opts.paths)),
            Attempt::Absent => {
                ensure_daemon(opts)?;
                connect_with_backoff(opts)?
            }
        };
        // A write waits at most this long for the daemon to take a byte, too: a stopped
        // daemon must not hold a large request's write for ever.
        stream
            .set_recv_timeout(Some(opts.timeout))
            .and_then(|()| stream.set_send_timeout(Some(opts.timeout)))
            .map_err(|e| ClientError::Local(format!("cannot set socket timeout: {e}")))?;
        Ok(Self {
            reader: BufReader::new(stream),
            hello: Some(exchange::hello(&opts.client_name)),
            welcome: None,
            next_id: 1,
            timeout: opts.timeout,
            events: VecDeque::new(),
            broken: None,
        })
    }

    /// Refuses to go on after a failure that may have left the connection part-way through a
    /// frame: what came next would be read from the middle of one.
    fn usable(&self) -> Result<(), ClientError> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(ClientError::Disconnected(format!(
                "this connection cannot be used after an earlier failure ({why}); connect again"
            ))),
        }
    }

    /// Notes that `result` failed in a way that ends the connection's usefulness.
    fn note<T>(&mut self, result: Result<T, ClientError>) -> Result<T, ClientError> {
        if let Err(e) = &result {
            if self.broken.is_none() {
                self.broken = Some(e.to_string());
            }
        }
        result
    }

    /// Writes `bytes`, preceded by the hello if it has not gone out yet.
    fn send(&mut self, bytes: &[u8], what: &str) -> Result<(), ClientError> {
        self.usable()?;
        let mut w = self.reader.get_ref();
        let sent = match self.hello.take() {
            Some(mut first) => {
                first.extend_from_slice(bytes);
                w.write_all(&first)
            }
            None => w.write_all(bytes),
        };
        let sent = sent.map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.timeout)
            }
            _ => self.refusal_or(format!("sending {what}: {e}")),
        });
        self.note(sent)
    }

    /// After a failed write: a daemon that refuses a connection (another user, too many
    /// connections, another protocol) or a frame (too large) says why and closes, so a write
    /// can fail before the reason is read. Prefer that reason to a bare broken pipe.
    fn refusal_or(&mut self, write_error: String) -> ClientError {
        if self.welcome.is_none() {
            match self.read_payload().and_then(|p| exchange::welcome(&p)) {
                Ok(welcome) => self.welcome = Some(welcome),
                Err(ClientError::Disconnected(_) | ClientError::Timeout(_)) => {
                    return ClientError::Disconnected(write_error)
                }
                Err(refusal) => return refusal,
            }
        }
        // The peer has closed, so these reads end at once: answers and events still in
        // flight, then perhaps the error that closed the connection.
        for _ in 0..CLOSING_FRAMES {
            let Ok(payload) = self.read_payload() else {
                break;
            };
            if let Ok(refusal) = frame::decode::<ErrorFrame>(&payload) {
                if refusal.id.is_none() {
                    return refusal.into();
                }
            }
        }
        ClientError::Disconnected(write_error)
    }

    /// The daemon's welcome, reading it if it has not arrived yet.
    pub fn welcome(&mut self) -> Result<&Welcome, ClientError> {
        if self.hello.is_some() {
            self.send(&[], "hello")?;
        }
        if self.welcome.is_none() {
            let payload = self.read_payload()?;
            self.welcome = Some(exchange::welcome(&payload)?);
        }
        Ok(self.welcome.as_ref().expect("set above"))
    }

    /// Calls method `M` and waits for its answer.
    pub fn call<M: Method>(&mut self, params: M::Params) -> Result<M::Result, ClientError> {
        let (payload, _) = self.response_payload::<M>(params, false)?;
        exchange::response::<M>(&payload)
    }

    /// Calls method `M` and returns its result still encoded, for a caller that passes it on
    /// unchanged (`sessionctl list --json` prints it as JSON) instead of building the typed
    /// value: for a listing of thousands of sessions that is most of the client's time.
    pub fn call_raw<M: Method>(&mut self, params: M::Params) -> Result<RawResult, ClientError> {
        match self.response_payload::<M>(params, true)? {
            (payload, Some(result)) => Ok(RawResult::new(payload, result)),
            (_, None) => Err(ClientError::Protocol(format!(
                "malformed result for {}: the response has no \"result\"",
                M::NAME
            ))),
        }
    }

    /// Sends a request for `M` and reads frames until its answer. Returns a response's
    /// payload and, with `locate`, where its `result` is; an error answer becomes the error.
    /// A located result that ends the frame is not walked (its reader checks where it ends);
    /// otherwise the whole frame is checked here, as the typed decode does not refuse bytes
    /// after the value.
    fn response_payload<M: Method>(
        &mut self,
        params: M::Params,
        locate: bool,
    ) -> Result<(Payload, Option<Range<usize>>), ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = exchange::request::<M>(id, &params)?;
        self.send(&bytes, M::NAME)?;
        self.welcome()?;
        loop {
            let payload = self.read_payload()?;
            let (head, result) = if locate {
                exchange::head_and_result(&payload)?
            } else {
                (exchange::head(&payload)?, None)
            };
            match (head.kind.as_str(), head.id) {
                ("response", Some(got)) if got == id => return Ok((payload, result)),
                ("error", Some(got)) if got == id => return Err(exchange::error(&payload)),
                ("error", None) => return self.note(Err(exchange::error(&payload))),
                ("event", _) => self.events.push_back(payload.into_vec()),
                // An answer to an earlier call that timed out on our side: drop it.
                _ => {}
            }
        }
    }

    /// The next pushed event's payload (waiting for it). `Ok(None)` when the daemon closed
    /// the connection without a word; the error it closed it with when it sent one (a daemon
    /// stopping sends `shutting_down`). Waits at most the timeout set by
    /// [`Self::set_timeout`].
    pub fn next_event(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        self.usable()?;
        self.welcome()?;
        loop {
            match self.read_pushed()? {
                Some(Pushed::Event(event)) => return Ok(Some(event)),
                Some(Pushed::Closed(None)) => return Ok(None),
                Some(Pushed::Closed(Some(why))) => return Err(why),
                None => {}
            }
        }
    }

    /// Reads one frame outside a call: an event, the connection's end (with the error the
    /// daemon closed it with, if it sent one), or `None` for a late answer, which is skipped.
    fn read_pushed(&mut self) -> Result<Option<Pushed>, ClientError> {
        let payload = match self.read_payload() {
            Ok(payload) => payload,
            Err(ClientError::Disconnected(_)) => return Ok(Some(Pushed::Closed(None))),
            Err(e) => return Err(e),
        };
        let head = exchange::head(&payload)?;
        Ok(match (head.kind.as_str(), head.id) {
            ("event", _) => Some(Pushed::Event(payload.into_vec())),
            ("error", None) => {
                let why = exchange::error(&payload);
                self.broken = Some(why.to_string());
                Some(Pushed::Closed(Some(why)))
            }
            _ => None,
        })
    }

    /// Waits until the daemon ends the connection (`Ok(true)`: it closed it, or sent the
    /// notice that closes it) or `wake` becomes readable (`Ok(false)`), keeping events that
    /// arrive meanwhile for [`Self::next_event`].
    ///
    /// For a client that holds a connection open for what it keeps alive (an attachment ends
    /// with its connection) while it waits for something else: `sessionctl run` waits here
    /// while the command runs, and attaches again through a new daemon if this one goes.
    #[cfg(unix)]
    pub fn wait_closed(&mut self, wake: std::os::fd::BorrowedFd<'_>) -> Result<bool, ClientError> {
        use nix::errno::Errno;
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;

        self.welcome()?;
        loop {
            // A frame already read into the buffer would not wake `poll`.
            if self.reader.buffer().is_empty() {
                let Stream::UdSocket(socket) = self.reader.get_ref();
                let mut fds = [
                    PollFd::new(socket.as_fd(), PollFlags::POLLIN),
                    PollFd::new(wake, PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(Errno::EINTR) => continue,
                    Err(e) => return Err(ClientError::Local(format!("cannot wait: {e}"))),
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                if ready(&fds[1]) {
                    return Ok(false);
                }
                if !ready(&fds[0]) {
                    continue;
                }
            }
            match self.read_pushed()? {
                Some(Pushed::Event(event)) => self.events.push_back(event),
                Some(Pushed::Closed(_)) => return Ok(true),
                None => {}
            }
        }
    }

    /// Changes how long a read may wait; `None` waits forever (for following events). A wait
    /// that times out with nothing read leaves the connection usable; one that fails part-way
    /// through a frame, either way, does not: connect anew.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.timeout = timeout.unwrap_or(Duration::ZERO);
        self.reader
            .get_ref()
            .set_recv_timeout(timeout)
            .map_err(|e| ClientError::Local(format!("cannot set socket timeout: {e}")))
    }

    fn read_payload(&mut self) -> Result<Payload, ClientError> {
        use std::io::BufRead;
        self.usable()?;
        // Wait for the frame's first byte apart from the rest: a timeout here has read
        // nothing, so the connection is still whole (a late answer is skipped by its id), and
        // a caller may wait again for an event. Once a frame has begun, any failure ends it.
        match self.reader.fill_buf() {
            Ok([]) => {
                return self.note(Err(ClientError::Disconnected(
                    "the daemon closed the connection".into(),
                )))
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout(self.timeout))
            }
            Err(e) => return self.note(Err(ClientError::Disconnected(e.to_string()))),
        }
        let read = frame::read_header(&mut self.reader, CLIENT_MAX_FRAME).and_then(|len| {
            len.map(|len| Payload::read(&mut self.reader, len))
                .transpose()
        });
        let read = match read {
            Ok(Some(payload)) => Ok(payload),
            Ok(None) => Err(ClientError::Disconnected(
                "the daemon closed the connection".into(),
            )),
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::Timeout(self.timeout))
            }
            Err(e) => Err(ClientError::from_frame(e)),
        };
        self.note(read)
    }
}

/// Connects to a daemon that was just started, retrying briefly with backoff.
fn connect_with_backoff(opts: &ConnectOptions) -> Result<Stream, ClientError> {
    let deadline = Instant::now() + opts.startup_timeout;
    let mut pause = Duration::from_millis(2);
    loop {
        if let Attempt::Connected(stream) = try_connect_sync(&opts.paths, opts.timeout)? {
            return Ok(stream);
        }
        if Instant::now() >= deadline {
            return Err(absent_error(&opts.paths));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
