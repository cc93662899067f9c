//! Reaching the socket: connect, or decide that nothing listens there.
//!
//! Before connecting, the runtime directory must be private (ours, 0700, not a link): a
//! socket in a directory someone else controls could be theirs, and everything sent to it
//! would be theirs too.

use std::io;
use std::path::Path;
use std::time::Duration;

use interprocess::local_socket::{
    ConnectOptions as SocketOptions, GenericFilePath, Name, Stream, ToFsName,
};
use interprocess::ConnectWaitMode;
use sessiond_proto::paths::{check_private_dir, DirKind, Paths};

use crate::error::ClientError;

/// The outcome of one connection attempt.
pub(crate) enum Attempt<S> {
    Connected(S),
    /// No socket, or nothing accepting on it: a daemon could be started.
    Absent,
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

fn socket_name(socket: &Path) -> Result<Name<'_>, ClientError> {
    socket
        .to_fs_name::<GenericFilePath>()
        .map_err(|source| ClientError::Connect {
            socket: socket.to_owned(),
            source,
        })
}

/// Refuses an unsafe runtime directory; `Ok(false)` when it does not exist yet.
fn runtime_dir_ready(paths: &Paths) -> Result<bool, ClientError> {
    match std::fs::symlink_metadata(&paths.runtime_dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        _ => {
            check_private_dir(&paths.runtime_dir, DirKind::Runtime)?;
            Ok(true)
        }
    }
}

/// One blocking connection attempt, waiting at most `timeout` for the daemon to accept.
pub(crate) fn try_connect_sync(
    paths: &Paths,
    timeout: Duration,
) -> Result<Attempt<Stream>, ClientError> {
    if !runtime_dir_ready(paths)? {
        return Ok(Attempt::Absent);
    }
    let socket = paths.socket();
    let result = SocketOptions::new()
        .name(socket_name(&socket)?)
        .wait_mode(ConnectWaitMode::Timeout(timeout))
        .connect_sync();
    match result {
        Ok(stream) => Ok(Attempt::Connected(stream)),
        Err(e) if is_absent(&e) => Ok(Attempt::Absent),
        Err(source) => Err(ClientError::Connect { socket, source }),
    }
}

/// One async connection attempt.
pub(crate) async fn try_connect_async(
    paths: &Paths,
) -> Result<Attempt<interprocess::local_socket::tokio::Stream>, ClientError> {
    if !runtime_dir_ready(paths)? {
        return Ok(Attempt::Absent);
    }
    let socket = paths.socket();
    let result = SocketOptions::new()
        .name(socket_name(&socket)?)
        .connect_tokio()
        .await;
    match result {
        Ok(stream) => Ok(Attempt::Connected(stream)),
        Err(e) if is_absent(&e) => Ok(Attempt::Absent),
        Err(source) => Err(ClientError::Connect { socket, source }),
    }
}

/// Explains why nothing answered when the client may not start a daemon: either none runs, or
/// one runs (it holds the instance lock) but its socket file is gone.
pub(crate) fn absent_error(paths: &Paths) -> ClientError {
    match running_daemon(paths) {
        Some(daemon) => ClientError::SocketMissing {
            socket: paths.socket(),
            detail: daemon.to_string(),
        },
        None => ClientError::NotRunning {
            socket: paths.socket(),
        },
    }
}

/// A daemon known to hold the instance lock of a runtime directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunningDaemon {
    /// From the pid file, when it could be read.
    pub pid: Option<u32>,
}

impl std::fmt::Display for RunningDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("pid unknown"),
        }
    }
}

/// Whether a daemon holds the instance lock of `paths`' runtime directory, whatever state its
/// socket is in.
///
/// Probing takes the lock for an instant when it is free. A daemon starting in that instant
/// retries its lock briefly before calling itself a duplicate, so a probe cannot make it fail.
pub fn running_daemon(paths: &Paths) -> Option<RunningDaemon> {
    let file = std::fs::File::open(paths.lock_file()).ok()?;
    match file.try_lock() {
        Err(std::fs::TryLockError::WouldBlock) => Some(RunningDaemon {
            pid: std::fs::read_to_string(paths.pid_file())
                .ok()
                .and_then(|t| t.trim().parse().ok()),
        }),
        Ok(()) | Err(std::fs::TryLockError::Error(_)) => None,
    }
}
