//! Everything that differs between operating systems, in one place.
//!
//! Unix: peer credentials through interprocess (SO_PEERCRED / getpeereid), detaching with
//! fork + setsid and a readiness pipe, and the process facts that tell a session's live owner
//! from a stale pid file (whether a pid exists, and when it started). The transport itself goes through interprocess and the
//! locks through `std::fs::File::try_lock`, so a Windows port (named pipes, `LockFileEx`) needs
//! only this module: peer checks by the pipe's client token, and a detach that re-spawns the
//! daemon as a detached process instead of forking.

#[cfg(unix)]
pub use unix::*;

/// Process facts shared with clients (ownership checks run in `sessionctl run` too).
pub use sessiond_proto::process::{file_identity, process_alive, process_start_time};

#[cfg(not(unix))]
compile_error!("sessiond supports Unix only for now; see the README's platform notes");

#[cfg(unix)]
mod unix {
    use std::fs::File;
    use std::io::{self, Read, Write};
    use std::os::fd::{AsFd, AsRawFd, RawFd};
    use std::path::Path;
    use std::time::Duration;

    use interprocess::local_socket::tokio::Stream;
    use interprocess::local_socket::traits::StreamCommon;
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::unistd::{fork, setsid, ForkResult, Pid};

    /// Hands memory the allocator holds free back to the system. glibc keeps a freed buffer
    /// of a few megabytes (a large listing's) for reuse, having raised its own thresholds
    /// after the first such buffer, so without this an idle daemon keeps the memory of its
    /// largest recent answer: 3–4 MB with 10,000 sessions. Other allocators return it on
    /// their own.
    pub fn return_free_memory() {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks the allocator's free lists, under the allocator's
        // own locks, like any malloc call; it has no arguments that could be wrong.
        unsafe {
            nix::libc::malloc_trim(0);
        }
    }

    /// The effective uid and pid of the process at the other end of a connection.
    pub fn peer_identity(stream: &Stream) -> io::Result<(Option<u32>, Option<u32>)> {
        let creds = stream.peer_creds()?;
        Ok((creds.euid(), creds.pid().map(|p| p as u32)))
    }

    /// Which side of [`daemonize`] we are on.
    pub enum Fork {
        /// The process the user started; it waits for the daemon to become ready and exits.
        Parent(ParentWait),
        /// The daemon; it must call [`ReadySignal::ready`] once its socket accepts, or
        /// [`ReadySignal::fail`] with the reason.
        Child(ReadySignal),
    }

    /// Held by the parent: the read end of the readiness pipe and the child's pid.
    pub struct ParentWait {
        pipe: File,
        pub child: Pid,
    }

    /// Held by the daemon: the write end of the readiness pipe.
    pub struct ReadySignal {
        pipe: File,
    }

    const READY: &[u8] = b"ready\n";

    impl ParentWait {
        /// Waits until the daemon reports ready (`Ok`) or failure (`Err` with its words), or
        /// until `timeout` passes.
        pub fn wait(mut self, timeout: Duration) -> Result<(), String> {
            let mut got = Vec::new();
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
                let mut fds = [PollFd::new(self.pipe.as_fd(), PollFlags::POLLIN)];
                match poll(&mut fds, PollTimeout::from(ms)) {
                    // Nothing readable within what was left of the timeout.
                    Ok(0) => {
                        return Err(format!(
                            "the daemon (pid {}) did not become ready within {timeout:?}",
                            self.child
                        ))
                    }
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(format!("waiting for the daemon: {e}")),
                }
                let mut buf = [0u8; 4096];
                match self.pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got == READY {
                            return Ok(());
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(format!("waiting for the daemon: {e}")),
                }
            }
            let text = String::from_utf8_lossy(&got).trim().to_string();
            if text.is_empty() {
                Err(format!(
                    "the daemon (pid {}) exited before it was ready",
                    self.child
                ))
            } else {
                Err(text)
            }
        }
    }

    impl ReadySignal {
        /// Tells the parent the socket accepts connections.
        pub fn ready(mut self) {
            let _ = self.pipe.write_all(READY);
        }

        /// Tells the parent why the daemon could not start.
        pub fn fail(mut self, why: &str) {
            let _ = self.pipe.write_all(why.as_bytes());
        }
    }

    /// Forks into the background. Must run before any thread is started (no tokio runtime
    /// yet), which is why start-up does it first thing after taking the instance lock.
    ///
    /// The child becomes a session leader (no controlling terminal), moves to `/`, sends its
    /// stdin to /dev/null and stdout and stderr to `log` (appending), and closes every other
    /// descriptor it inherited except `keep` — so a client that spawned it through pipes sees
    /// them close and is never held open by the daemon.
    pub fn daemonize(log: &Path, keep: &[RawFd]) -> io::Result<Fork> {
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", log.display())))?;
        // SAFETY: no other thread exists yet (start-up calls this before building the runtime
        // or starting anything else), so the child inherits a consistent single-threaded state.
        match unsafe { fork() }? {
            ForkResult::Parent { child } => {
                drop(write_end);
                Ok(Fork::Parent(ParentWait {
                    pipe: File::from(read_end),
                    child,
                }))
            }
            ForkResult::Child => {
                drop(read_end);
                setsid()?;
                std::env::set_current_dir("/")?;
                let null = std::fs::OpenOptions::new().read(true).open("/dev/null")?;
                redirect(&null, 0)?;
                redirect(&log_file, 1)?;
                redirect(&log_file, 2)?;
                let mut kept = keep.to_vec();
                kept.push(write_end.as_raw_fd());
                close_inherited_fds(&kept, &[null.as_raw_fd(), log_file.as_raw_fd()]);
                Ok(Fork::Child(ReadySignal {
                    pipe: File::from(write_end),
                }))
            }
        }
    }

    fn redirect(file: &File, target: RawFd) -> io::Result<()> {
        // SAFETY: plain dup2 on descriptors this process owns: `file` stays open for the call,
        // and `target` is a standard descriptor number that dup2 atomically (re)points at it.
        if unsafe { nix::libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Marks every descriptor above 2 close-on-exec. A daemon started in the foreground keeps
    /// what its parent left open (a detached one closes it), and must not pass it on to every
    /// turn's worker: a pipe held open by a worker can keep the parent's reader waiting.
    pub fn cloexec_inherited_fds() {
        for fd in open_fds() {
            if fd > 2 {
                // SAFETY: fcntl on a descriptor number only sets a flag; one that closed since
                // it was listed fails harmlessly with EBADF.
                unsafe {
                    let flags = nix::libc::fcntl(fd, nix::libc::F_GETFD);
                    if flags >= 0 {
                        nix::libc::fcntl(fd, nix::libc::F_SETFD, flags | nix::libc::FD_CLOEXEC);
                    }
                }
            }
        }
    }

    /// This process's open descriptors (the listing's own among them, closed by then).
    fn open_fds() -> Vec<RawFd> {
        let dir = if Path::new("/proc/self/fd").is_dir() {
            "/proc/self/fd"
        } else {
            "/dev/fd"
        };
        match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Closes every descriptor above 2 except those in `keep`. Descriptors in `own` are closed
    /// by their owners' drop and skipped here.
    fn close_inherited_fds(keep: &[RawFd], own: &[RawFd]) {
        for fd in open_fds() {
            if fd > 2 && !keep.contains(&fd) && !own.contains(&fd) {
                // SAFETY: the descriptor was inherited and nothing in this process refers to
                // it (the directory handle used to list it is already closed; closing it again
                // fails harmlessly with EBADF).
                unsafe { nix::libc::close(fd) };
            }
        }
    }

    /// Processes (other than this one) that have `path` open: on Linux, found by looking at
    /// every readable `/proc/PID/fd`. Start-up uses it to find a worker whose pid was never
    /// recorded, because the daemon died between spawning it and saving its pid; the worker
    /// inherited the session's lock, so it holds the lock file open. Elsewhere: none found.
    pub fn processes_with_open(path: &Path) -> Vec<u32> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::MetadataExt;
            let Ok(target) = std::fs::metadata(path) else {
                return Vec::new();
            };
            let me = std::process::id();
            let Ok(procs) = std::fs::read_dir("/proc") else {
                return Vec::new();
            };
            procs
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                .filter(|&pid| pid != me)
                .filter(|pid| {
                    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                        fds.flatten().any(|fd| {
                            std::fs::metadata(fd.path()).is_ok_and(|meta| {
                                meta.dev() == target.dev() && meta.ino() == target.ino()
                            })
                        })
                    })
                })
                .collect()
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = path;
            Vec::new()
        }
    }

    /// Whether process `pid`'s environment holds `name=value` (Linux: `/proc/PID/environ`;
    /// elsewhere: never known, so false).
    pub fn process_has_env(pid: u32, name: &str, value: &str) -> bool {
        #[cfg(target_os = "linux")]
        {
            let wanted = format!("{name}={value}");
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (pid, name, value);
            false
        }
    }

    /// The process group `pid` belongs to.
    pub fn process_group_of(pid: u32) -> Option<u32> {
        let pid = i32::try_from(pid).ok()?;
        nix::unistd::getpgid(Some(Pid::from_raw(pid)))
            .ok()
            .map(|pgid| pgid.as_raw() as u32)
    }

    /// Sends `signal` to the process group led by `pid` (workers lead their own group, so this
    /// reaches whatever they started too).
    pub fn signal_group(pid: u32, signal: nix::sys::signal::Signal) -> io::Result<()> {
        let pid = i32::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
        nix::sys::signal::killpg(Pid::from_raw(pid), signal).map_err(io::Error::from)
    }
}
