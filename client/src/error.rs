//! Client errors: each says what failed, for which path or request, and what to do, and maps
//! to one of sessionctl's documented exit codes.

use std::path::PathBuf;
use std::time::Duration;

use sessiond_proto::envelope::ErrorFrame;
use sessiond_proto::paths::PathError;
use sessiond_proto::ErrorCode;

/// sessionctl's exit codes; documented in the README and `sessionctl --help`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The daemon refused or failed the request, or a local error (the message says which).
    pub const FAILURE: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// No daemon could be reached: not running with autostart off, autostart failed, the
    /// connection broke, or it did not answer in time.
    pub const UNREACHABLE: u8 = 3;
    /// Client and daemon speak incompatible protocol versions.
    pub const VERSION_MISMATCH: u8 = 4;
}

/// Everything a call or a connection can fail with. [`ClientError::code`] names each for
/// machines (the `--json` error codes), [`ClientError::exit_code`] gives sessionctl's exit
/// status, and the message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens and the client may not start a daemon.
    #[error(
        "sessiond is not running (no daemon at {}); start it with `sessionctl daemon start` \
         (other commands start it themselves unless --no-autostart or SESSIOND_NO_AUTOSTART \
         is set)",
        socket.display()
    )]
    NotRunning {
        /// The socket nothing listens on.
        socket: PathBuf,
    },

    /// A daemon holds the instance lock but its socket is gone: it is stopping, or a cleaner
    /// deleted it.
    #[error(
        "sessiond is running ({detail}) but its socket {} is missing: it is shutting down \
         (try again once it has exited), or the socket file was deleted (it recreates it \
         within socket_check_interval_ms, 10 s by default; or restart it with `sessionctl \
         daemon restart`)",
        socket.display()
    )]
    SocketMissing {
        /// Where the socket should be.
        socket: PathBuf,
        /// The running daemon, as its pid file names it.
        detail: String,
    },

    /// The socket exists but connecting failed.
    #[error("cannot connect to sessiond at {}: {source}", socket.display())]
    Connect {
        /// The socket tried.
        socket: PathBuf,
        /// What connecting failed with.
        #[source]
        source: std::io::Error,
    },

    /// Starting the daemon failed.
    #[error("could not start sessiond: {reason}{}", log_tail_suffix(log, tail))]
    Autostart {
        /// What went wrong.
        reason: String,
        /// The daemon's log file.
        log: PathBuf,
        /// Its last lines written by this start, if any.
        tail: String,
    },

    /// The two sides speak different major protocol versions.
    #[error("{0}")]
    VersionMismatch(String),

    /// The daemon answered with an error.
    #[error("{message}")]
    Remote {
        /// The protocol's error code (proto/PROTOCOL.md).
        code: ErrorCode,
        /// The daemon's message: what failed and what to do.
        message: String,
    },

    /// The connection ended before the answer came.
    #[error("connection to sessiond lost: {0}; if it keeps happening, see `sessionctl daemon status` and the daemon's log")]
    Disconnected(String),

    /// No answer in time.
    #[error("sessiond did not answer within {0:?}; it may be overloaded or stuck: see `sessionctl daemon status` and its log, or allow longer (sessionctl --timeout; ConnectOptions::timeout)")]
    Timeout(Duration),

    /// The daemon sent something this client does not understand.
    #[error("unexpected answer from sessiond: {0}; the daemon and client may be from different builds (`sessionctl version`)")]
    Protocol(String),

    /// An answer larger than this client takes (`sessiond_proto::frame::CLIENT_MAX_FRAME`).
    /// The connection is unusable afterwards.
    #[error("sessiond's answer is {len} bytes, more than this client takes ({max}); ask for less at a time (a transcript: page it with `log`'s max_bytes, as sessionctl does; a listing: filter it)")]
    AnswerTooLarge {
        /// The answer's announced length.
        len: u64,
        /// The most this client takes.
        max: usize,
    },

    /// The runtime or state directory is unusable.
    #[error(transparent)]
    Path(#[from] PathError),

    /// Anything else local (a lock file, spawning a process).
    #[error("{0}")]
    Local(String),
}

fn log_tail_suffix(log: &std::path::Path, tail: &str) -> String {
    // A daemon that failed before it opened its log (a bad config, an unsafe directory) left
    // none: the reason says all, and pointing at a file that does not exist only misleads.
    if tail.trim().is_empty() && !log.exists() {
        String::new()
    } else if tail.trim().is_empty() {
        format!("\n(no log lines in {})", log.display())
    } else {
        format!("\nlast lines of {}:\n{}", log.display(), tail.trim_end())
    }
}

impl ClientError {
    /// Why a frame could not be read: the connection's end (closed, cut part-way, failed),
    /// an answer too large, or bytes that are not a frame.
    pub(crate) fn from_frame(e: sessiond_proto::frame::FrameError) -> ClientError {
        use sessiond_proto::frame::FrameError;
        match e {
            FrameError::TooLarge { len, max } => ClientError::AnswerTooLarge { len, max },
            FrameError::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                ClientError::Disconnected(format!("a frame stalled part-way: {e}"))
            }
            e @ (FrameError::Io(_) | FrameError::Truncated { .. }) => {
                ClientError::Disconnected(e.to_string())
            }
            e => ClientError::Protocol(e.to_string()),
        }
    }

    /// The same error again, for each of several waiters it ends (the type holds an
    /// `io::Error`, which is not `Clone`).
    pub(crate) fn duplicate(&self) -> ClientError {
        match self {
            ClientError::Remote { code, message } => ClientError::Remote {
                code: code.clone(),
                message: message.clone(),
            },
            ClientError::VersionMismatch(m) => ClientError::VersionMismatch(m.clone()),
            ClientError::Disconnected(m) => ClientError::Disconnected(m.clone()),
            ClientError::Timeout(t) => ClientError::Timeout(*t),
            ClientError::Protocol(m) => ClientError::Protocol(m.clone()),
            ClientError::AnswerTooLarge { len, max } => ClientError::AnswerTooLarge {
                len: *len,
                max: *max,
            },
            ClientError::Local(m) => ClientError::Local(m.clone()),
            other => ClientError::Disconnected(other.to_string()),
        }
    }

    /// A stable snake_case name for `--json` output: the daemon's code for remote errors, a
    /// client-side name otherwise.
    pub fn code(&self) -> &str {
        match self {
            ClientError::NotRunning { .. } => "daemon_not_running",
            ClientError::SocketMissing { .. } => "socket_missing",
            ClientError::Connect { .. } => "connect_failed",
            ClientError::Autostart { .. } => "autostart_failed",
            ClientError::VersionMismatch(_) => "version_mismatch",
            ClientError::Remote { code, .. } => code.as_str(),
            ClientError::Disconnected(_) => "disconnected",
            ClientError::Timeout(_) => "timeout",
            ClientError::Protocol(_) => "protocol_error",
            ClientError::AnswerTooLarge { .. } => "answer_too_large",
            ClientError::Path(_) => "unsafe_path",
            ClientError::Local(_) => "local_error",
        }
    }

    /// The sessionctl exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning { .. }
            | ClientError::SocketMissing { .. }
            | ClientError::Connect { .. }
            | ClientError::Autostart { .. }
            | ClientError::Disconnected(_)
            | ClientError::Timeout(_) => exit::UNREACHABLE,
            ClientError::VersionMismatch(_) => exit::VERSION_MISMATCH,
            ClientError::Remote { code, .. } if *code == ErrorCode::VERSION_MISMATCH => {
                exit::VERSION_MISMATCH
            }
            ClientError::Remote { code, .. } if *code == ErrorCode::SHUTTING_DOWN => {
                exit::UNREACHABLE
            }
            _ => exit::FAILURE,
        }
    }
}

impl From<ErrorFrame> for ClientError {
    fn from(e: ErrorFrame) -> Self {
        if e.code == ErrorCode::VERSION_MISMATCH {
            ClientError::VersionMismatch(e.message)
        } else {
            ClientError::Remote {
                code: e.code,
                message: e.message,
            }
        }
    }
}
