//! Single instance: the lock files that make a second daemon impossible, and the pid file that
//! names the one that runs.
//!
//! Two locks, both taken exclusively (flock through `std::fs::File::try_lock`) before the
//! socket is touched and held for the daemon's whole life:
//!
//! - `RUNTIME/sessiond.lock`: one daemon per socket. Holding it makes any socket file already
//!   present provably stale, and safe to replace.
//! - `STATE/sessiond.lock`: one daemon per state directory, whatever runtime directory it was
//!   given. Without it, a client that resolved a different runtime directory (no
//!   `XDG_RUNTIME_DIR` under cron or `sudo -u`, say) would start a second daemon on the same
//!   state. It records the owner's pid and socket so the refusal can say where the running
//!   daemon is.
//!
//! The kernel drops a lock when its process dies, however it dies, so a stale lock cannot
//! exist. The pid file is only a label for messages; it never decides whether a daemon runs.

use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sessiond_proto::paths::Paths;

/// How long a starting daemon keeps trying a held lock before reporting "already running": a
/// client probing whether a daemon runs holds the runtime lock for an instant, and must never
/// make a starting daemon call itself a duplicate.
const PROBE_GRACE: Duration = Duration::from_millis(200);

/// How long a daemon that lost the lock waits for the winner's pid file, to name it.
const OWNER_GRACE: Duration = Duration::from_secs(1);

/// The held instance locks. Dropping it releases them.
pub struct Instance {
    runtime_lock: File,
    state_lock: File,
    pid_file: PathBuf,
    socket: PathBuf,
}

/// Why the instance locks could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// Another daemon holds a lock. The message format is relied on by people and scripts.
    #[error("sessiond already running (pid {pid}, socket {socket}){note}")]
    AlreadyRunning {
        pid: String,
        socket: String,
        note: String,
    },
    #[error("cannot use lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn open_lock(path: &Path) -> Result<File, InstanceError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|source| InstanceError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Takes `file`'s lock, retrying briefly; `Ok(false)` when another process holds it.
fn try_lock(file: &File, path: &Path) -> Result<bool, InstanceError> {
    let deadline = Instant::now() + PROBE_GRACE;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(InstanceError::Io {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    }
}

impl Instance {
    /// Takes both instance locks without waiting (beyond the probe grace).
    pub fn acquire(paths: &Paths) -> Result<Instance, InstanceError> {
        let runtime_path = paths.lock_file();
        let runtime_lock = open_lock(&runtime_path)?;
        if !try_lock(&runtime_lock, &runtime_path)? {
            // The winner of a simultaneous start writes its pid file a moment after taking
            // the lock; wait for it (or for the lock, if a mere probe held it) so the message
            // names the daemon that runs.
            let deadline = Instant::now() + OWNER_GRACE;
            let pid = loop {
                // A pid file left by a daemon that crashed names a dead process: wait for the
                // winner's.
                let live = read_pid(&paths.pid_file()).filter(|pid| {
                    pid.parse::<u32>()
                        .is_ok_and(sessiond_proto::process::process_alive)
                });
                if let Some(pid) = live {
                    break Some(pid);
                }
                if Instant::now() >= deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
                if runtime_lock.try_lock().is_ok() {
                    return Self::acquire_state(paths, runtime_lock);
                }
            };
            return Err(InstanceError::AlreadyRunning {
                pid: pid.unwrap_or_else(|| "not yet recorded".into()),
                socket: paths.socket().display().to_string(),
                note: String::new(),
            });
        }
        Self::acquire_state(paths, runtime_lock)
    }

    /// Takes the state directory's lock, once the runtime one is held.
    fn acquire_state(paths: &Paths, runtime_lock: File) -> Result<Instance, InstanceError> {
        let state_path = paths.state_dir.join("sessiond.lock");
        let state_lock = open_lock(&state_path)?;
        if !try_lock(&state_lock, &state_path)? {
            // The owner wrote "PID SOCKET" into the file when it started.
            let owner = std::fs::read_to_string(&state_path).unwrap_or_default();
            let mut words = owner.split_whitespace();
            let pid = words.next().unwrap_or("unknown").to_string();
            let socket = words.next().unwrap_or("unknown").to_string();
            return Err(InstanceError::AlreadyRunning {
                pid,
                socket,
                note: format!(
                    " with the same state directory {}; use its runtime directory (the \
                     socket's) or stop it first",
                    paths.state_dir.display()
                ),
            });
        }
        Ok(Instance {
            runtime_lock,
            state_lock,
            pid_file: paths.pid_file(),
            socket: paths.socket(),
        })
    }

    /// Descriptors a detaching daemon must keep open across the fork.
    pub fn lock_fds(&self) -> [RawFd; 2] {
        [self.runtime_lock.as_raw_fd(), self.state_lock.as_raw_fd()]
    }

    /// The identity (device, inode) of the runtime lock file this process holds, to notice the
    /// runtime directory being deleted under it.
    pub fn runtime_lock_identity(&self) -> Option<(u64, u64)> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            self.runtime_lock
                .metadata()
                .ok()
                .map(|m| (m.dev(), m.ino()))
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    /// Records this process as the owner: the pid file (written aside and renamed, so a
    /// reader never sees half a number), and "PID SOCKET" in the state lock.
    pub fn write_pid(&mut self) -> Result<(), String> {
        let pid = std::process::id();
        sessiond_proto::paths::write_private_atomically(
            &self.pid_file,
            format!("{pid}\n").as_bytes(),
            true,
        )
        .map_err(|e| format!("cannot record the daemon's pid: {e}"))?;
        let owner = format!("{pid} {}\n", self.socket.display());
        let recorded = self
            .state_lock
            .set_len(0)
            .and_then(|()| self.state_lock.rewind())
            .and_then(|()| self.state_lock.write_all(owner.as_bytes()));
        recorded.map_err(|e| format!("cannot record the owner in the state lock file: {e}"))
    }

    /// Removes the pid file, then releases the locks. Removal comes first so that whoever takes
    /// the lock next never finds our pid file.
    pub fn release(self) {
        if let Err(e) = std::fs::remove_file(&self.pid_file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.pid_file.display(), "cannot remove pid file: {e}");
            }
        }
        drop(self.state_lock);
        drop(self.runtime_lock);
    }
}

/// Reads the pid recorded in a pid file, if any.
pub fn read_pid(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid = text.trim();
    (!pid.is_empty() && pid.chars().all(|c| c.is_ascii_digit())).then(|| pid.to_string())
}
