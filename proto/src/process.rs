//! Facts about processes and files that ownership decisions rest on: whether a pid still
//! runs, when it started (to tell a reused pid from the original), and a file's identity.
//! Unix only; elsewhere the answers are conservative.

#![cfg(unix)]

use nix::unistd::Pid;

/// When process `pid` started, in clock ticks since boot (field 22 of `/proc/PID/stat`).
/// A pid can be reused once its process is gone; the start time tells the new process from
/// the old. `None` where the system does not say (not Linux) or the process is gone.
pub fn process_start_time(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Field 2 is the command name in parentheses, and the name itself may contain
        // spaces and ')' ("(a) b)"), so the fields are counted from the last ')'. What
        // follows it starts at field 3, so field 22 is the 20th word.
        let after_comm = &stat[stat.rfind(')')? + 1..];
        after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// A file's identity, (device, inode): two paths or descriptors with equal identities are
/// the same file. Ownership compares the file it locked with the file its path names now.
pub fn file_identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Whether a process with this pid exists (kill with signal 0). A process of another user
/// exists too (EPERM); a zombie (exited, waiting to be reaped) does not.
pub fn process_alive(pid: u32) -> bool {
    // Pid 0 and negative pids name process groups for kill(2), never one process.
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    let exists = match nix::sys::signal::kill(Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    };
    // A zombie has exited and only waits for its parent (often init, after its daemon
    // died) to reap it: it runs nothing and holds nothing, so it is not alive.
    exists && !is_zombie(pid)
}

/// Whether the process has exited and waits to be reaped (Linux; false elsewhere).
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may contain them.
    stat.rfind(')')
        .and_then(|end| stat[end + 1..].split_whitespace().next())
        .is_some_and(|state| state == "Z")
}

/// Lets a child inherit `fd` across exec by clearing its close-on-exec flag. For use in a
/// `pre_exec` hook, between fork and exec, where only async-signal-safe calls (fcntl is one)
/// may run; giving a worker the session's lock descriptor is what keeps the session owned
/// for exactly as long as a process that can write it lives.
pub fn inherit_in_child(fd: std::os::fd::RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; no memory is touched.
    let flags = unsafe { nix::libc::fcntl(fd, nix::libc::F_GETFD) };
    if flags < 0
        || unsafe { nix::libc::fcntl(fd, nix::libc::F_SETFD, flags & !nix::libc::FD_CLOEXEC) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
