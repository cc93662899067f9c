//! Routing: from a request frame's method name to its typed handler, and from the handler's
//! outcome to the answer frame.
//!
//! Each method is declared once in [`routes!`]: that one line gives the method its wire name
//! (from `sessiond_proto::methods`), decodes its params into the typed struct, calls the
//! handler, encodes the typed result, and lists the method in the `welcome` capabilities. A
//! handler never sees bytes and never writes to the client.
//!
//! Handlers are synchronous steps. A read answers at once; a change answers once its commit
//! is durable ([`Reply::AfterCommit`]), and the connection keeps reading while it waits, so a
//! client pipelining a thousand writes shares commits instead of paying one fsync each.

use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use sessiond_proto::envelope::{ErrorFrame, RequestParams, Response};
use sessiond_proto::frame;
use sessiond_proto::methods::{
    Archive, Attach, Cancel, Create, Current, Detach, Get, List, Log, Method, Pause, Ping, Promote,
    Queue, Regenerate, Rename, Reopen, Resume, SetLogLevel, Shutdown, Status, Steer, Submit,
    Subscribe, Switch, Unsubscribe,
};
use sessiond_proto::ErrorCode;

use crate::conn::Conn;
use crate::context::Daemon;
use crate::store::{Commit, StoreError};
use crate::{control, session_methods};

/// A request that failed; becomes an `error` frame carrying the request's id.
#[derive(Debug)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID_ARGUMENT, message)
    }
}

pub type HandlerResult<T> = Result<T, RequestError>;

/// A handler's outcome.
pub enum Reply<T> {
    /// Answer now.
    Now(T),
    /// Answer once this commit is durable (or fail the request if it is not).
    AfterCommit(T, Commit),
    /// Answer now with this frame, which the handler encoded itself straight from the
    /// registry's records (`listing`), because copying them out first would cost more than
    /// encoding them. It must decode as a response carrying `T`.
    Frame(Vec<u8>),
    /// Answer when this resolves (a read the store thread runs after earlier writes).
    Deferred(Pin<Box<dyn Future<Output = HandlerResult<T>> + Send>>),
}

/// A frame that becomes available later.
pub type LaterFrame = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// A request's encoded answer, as the connection must deliver it.
pub enum Answer {
    Now(Vec<u8>),
    /// Sent when the future resolves; a connection sends its later answers in request order,
    /// which is also the order the store completes them in.
    Later(LaterFrame),
}

impl Answer {
    /// The frame to send once `commit` has resolved this way.
    fn after_commit(
        id: u64,
        frame: Vec<u8>,
        outcome: Result<Result<(), StoreError>, tokio::sync::oneshot::error::RecvError>,
    ) -> Vec<u8> {
        let failure = match outcome {
            Ok(Ok(())) => return frame,
            Ok(Err(e)) => {
                return error_frame(
                    id,
                    RequestError::new(
                        ErrorCode::STORAGE_FAILED,
                        format!(
                            "{e}; the change is in effect and held in memory, and is saved \
                             when the database can be written again (sessiond retries every \
                             second) — unless the daemon stops first. Free disk space (or fix \
                             permissions); `sessionctl daemon status` shows when it has \
                             recovered"
                        ),
                    ),
                )
            }
            Err(_) => "the store stopped before saving the change; see the daemon's log \
                       (`sessionctl daemon status` shows where) and restart it: \
                       `sessionctl daemon restart`"
                .to_string(),
        };
        error_frame(id, RequestError::new(ErrorCode::INTERNAL, failure))
    }
}

macro_rules! routes {
    ($($method:ty => $handler:path),* $(,)?) => {
        /// Wire names of every method, in declaration order; the `welcome` capabilities.
        pub const METHODS: &[&str] = &[$(<$method as Method>::NAME),*];

        /// Runs one request's step and encodes its answer.
        pub fn dispatch(
            ctx: &Daemon,
            conn: &Conn,
            id: u64,
            method: &str,
            payload: &[u8],
        ) -> Answer {
            $(
                if method == <$method as Method>::NAME {
                    let outcome = match params::<$method>(payload) {
                        Ok(p) => $handler(ctx, conn, id, p),
                        Err(e) => Err(e),
                    };
                    return answer(id, outcome);
                }
            )*
            Answer::Now(error_frame(id, unknown_method(method)))
        }
    };
}

routes! {
    Ping => control::ping,
    Status => control::status,
    SetLogLevel => control::set_log_level,
    Shutdown => control::shutdown,
    Create => session_methods::create,
    List => session_methods::list,
    Get => session_methods::get,
    Switch => session_methods::switch,
    Current => session_methods::current,
    Rename => session_methods::rename,
    Archive => session_methods::archive,
    Reopen => session_methods::reopen,
    Regenerate => session_methods::regenerate,
    Subscribe => session_methods::subscribe,
    Unsubscribe => session_methods::unsubscribe,
    Submit => session_methods::submit,
    Queue => session_methods::queue,
    Pause => session_methods::pause,
    Resume => session_methods::resume,
    Cancel => session_methods::cancel,
    Steer => session_methods::steer,
    Promote => session_methods::promote,
    Log => session_methods::log,
    Attach => session_methods::attach,
    Detach => session_methods::detach,
}

/// Decodes a request's params for method `M`. Omitted params are read as an empty map, so a
/// method whose params are all optional may be called without any.
fn params<M: Method>(payload: &[u8]) -> HandlerResult<M::Params> {
    let invalid = |e: frame::FrameError| {
        RequestError::invalid_argument(format!(
            "invalid params for {}: {}; see PROTOCOL.md for its fields",
            M::NAME,
            strip_prefix(&e.to_string())
        ))
    };
    let wrapper: RequestParams<M::Params> = frame::decode(payload).map_err(invalid)?;
    match wrapper.params {
        Some(p) => Ok(p),
        None => decode_empty::<M::Params>().map_err(invalid),
    }
}

fn decode_empty<P: DeserializeOwned>() -> Result<P, frame::FrameError> {
    const EMPTY_MAP: &[u8] = &[0x80];
    frame::decode(EMPTY_MAP)
}

/// rmp-serde's messages start with our own "frame is not a valid message: " wrapper; inside a
/// params error that is noise.
fn strip_prefix(message: &str) -> &str {
    message
        .strip_prefix("frame is not a valid message: ")
        .unwrap_or(message)
}

fn unknown_method(method: &str) -> RequestError {
    RequestError::new(
        ErrorCode::UNKNOWN_METHOD,
        format!(
            "unknown method {method:?}; this daemon has: {}. If the method is new, the daemon \
             may be older than the client: `sessionctl daemon restart`",
            METHODS.join(", ")
        ),
    )
}

fn answer<R: serde::Serialize + Send + 'static>(
    id: u64,
    outcome: HandlerResult<Reply<R>>,
) -> Answer {
    match outcome {
        Ok(Reply::Now(result)) => Answer::Now(response_frame(id, &result)),
        Ok(Reply::Frame(frame)) => Answer::Now(frame),
        Ok(Reply::AfterCommit(result, commit)) => {
            let frame = response_frame(id, &result);
            Answer::Later(Box::pin(async move {
                Answer::after_commit(id, frame, commit.await)
            }))
        }
        Ok(Reply::Deferred(later)) => Answer::Later(Box::pin(async move {
            match later.await {
                Ok(result) => response_frame(id, &result),
                Err(e) => error_frame(id, e),
            }
        })),
        Err(e) => Answer::Now(error_frame(id, e)),
    }
}

fn response_frame<R: serde::Serialize>(id: u64, result: &R) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    match frame::encode_into(&mut buf, &Response::new(id, result)) {
        Ok(()) => buf,
        Err(e) => {
            tracing::error!("cannot encode the answer to request {id}: {e}");
            error_frame(
                id,
                RequestError::new(
                    ErrorCode::INTERNAL,
                    format!("the daemon could not encode its answer: {e}"),
                ),
            )
        }
    }
}

fn error_frame(id: u64, e: RequestError) -> Vec<u8> {
    frame::encode(&ErrorFrame::new(Some(id), e.code, e.message))
        .expect("an error frame of plain strings always encodes")
}
