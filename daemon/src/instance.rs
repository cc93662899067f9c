//! Single instance: the lock file that makes a second daemon impossible, and the pid file that
//! names the one that runs.
//!
//! `RUNTIME/sessiond.lock` is locked exclusively (flock through `std::fs::File::try_lock`) before
//! the socket is touched and held for the daemon's whole life; the kernel drops it when the
//! process dies, however it dies, so a stale lock cannot exist. Holding it is what makes any
//! socket file already present provably stale, and safe to replace. The pid file is only a
//! label for messages; it is never trusted to decide whether a daemon runs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;

use sessiond_proto::paths::Paths;

/// How long a starting daemon keeps trying a held lock before reporting "already running".
const PROBE_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// The held instance lock. Dropping it releases the lock.
pub struct Instance {
    lock: File,
    pid_file: PathBuf,
}

/// Why the instance lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another daemon holds the lock. The message format is relied on by people and scripts.
    #[error("sessiond already running (pid {pid}, socket {socket})")]
    AlreadyRunning { pid: String, socket: String },
    #[error("cannot use lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Instance {
    /// Takes the instance lock without waiting.
    pub fn acquire(paths: &Paths) -> Result<Instance, InstanceError> {
        let path = paths.lock_file();
        let io_err = |source| InstanceError::Io {
            path: path.clone(),
            source,
        };
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let lock = options.open(&path).map_err(io_err)?;
        // A client probing whether a daemon runs holds the lock for an instant; retry for a
        // moment so such a probe never makes a starting daemon call itself a duplicate.
        let deadline = std::time::Instant::now() + PROBE_GRACE;
        let mut attempt = lock.try_lock();
        while matches!(attempt, Err(std::fs::TryLockError::WouldBlock))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
            attempt = lock.try_lock();
        }
        match attempt {
            Ok(()) => Ok(Instance {
                lock,
                pid_file: paths.pid_file(),
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(InstanceError::AlreadyRunning {
                pid: read_pid(&paths.pid_file()).unwrap_or_else(|| "unknown".into()),
                socket: paths.socket().display().to_string(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(e)),
        }
    }

    /// The lock's descriptor, which a detaching daemon must keep open across the fork.
    pub fn lock_fd(&self) -> RawFd {
        self.lock.as_raw_fd()
    }

    /// Writes this process's pid to the pid file, atomically (write aside, then rename), so a
    /// reader never sees a half-written number.
    pub fn write_pid(&self) -> std::io::Result<()> {
        let tmp = self.pid_file.with_extension("pid.tmp");
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        writeln!(f, "{}", std::process::id())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.pid_file)
    }

    /// Removes the pid file, then releases the lock. Removal comes first so that whoever takes
    /// the lock next never finds our pid file.
    pub fn release(self) {
        if let Err(e) = std::fs::remove_file(&self.pid_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.pid_file.display(), "cannot remove pid file: {e}");
            }
        }
        drop(self.lock);
    }
}

/// Reads the pid recorded in a pid file, if any.
pub fn read_pid(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid = text.trim();
    (!pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit())).then(|| pid.to_string())
}
