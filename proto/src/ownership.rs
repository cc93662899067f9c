//! Session ownership: which one process may write a session right now.
//!
//! A session is run by at most one process at a time: the daemon's worker running a turn, or a
//! `sessionctl run` in the user's terminal. Two files in `STATE/sessions/` say who:
//!
//! - `ID.lock` is locked exclusively (flock through `std::fs::File::try_lock`) by the owner for
//!   as long as it owns the session. The lock decides ownership. The kernel drops it when the
//!   last descriptor sharing it closes, however the process ends, so a held lock is never
//!   stale. The daemon lets the worker it spawns inherit the descriptor ([`Claim::lock_fd`]),
//!   so the session stays locked exactly as long as a process that can write it lives.
//! - `ID.pid` names the owner, `{"pid", "start_time", "owner", "since"}`, for messages and for
//!   `get` answers. It is only a label: a pid file beside a free lock was left by an owner that
//!   died, and [`SessionFiles::inspect`] says why it is stale (the pid has exited, or now
//!   belongs to another process, told apart by the start time).
//!
//! The order of operations is what the guarantees rest on:
//!
//! - [`SessionFiles::claim`]: open and lock `ID.lock`, check that the locked file is still the
//!   one the path names, then write `ID.pid` (a temporary file renamed over it, so a reader
//!   never sees half a record).
//! - [`Claim::release`]: remove `ID.pid` if it still names this claim, remove `ID.lock` while
//!   still holding its lock, then close it.
//!
//! So the pid file is only ever written or removed under the lock, and a free lock with a pid
//! file beside it means the owner died without releasing.
//!
//! A session at rest holds nothing open: both files exist only while a claim holds them, so
//! ten thousand idle sessions cost no descriptors and leave no files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process as platform;

/// Longest session id accepted. A UUID is 36 characters; the margin leaves room for another
/// scheme while keeping file names far below any file system's limit.
const MAX_ID_LEN: usize = 64;

/// How long a claim keeps trying a lock that is held before reporting the session as owned:
/// another claimant that locked a file the path no longer names holds it for an instant
/// before it notices and lets go, and that must not make a claim fail.
const CLAIM_GRACE: Duration = Duration::from_millis(100);

/// How many times a claim or probe reopens the lock file after finding that the file it
/// locked is no longer the one the path names (see [`lock_current`]). Each retry means an
/// owner released in between, so running out needs a burst of claims and releases.
const LOCK_ATTEMPTS: u32 = 16;

/// Largest pid file read. A record is under 200 bytes; anything much larger is not one, and
/// reading it whole would let a stray file cost memory.
const MAX_PID_FILE: u64 = 4096;

/// What a session's pid file says about its owner.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PidRecord {
    /// The owning process.
    pub pid: u32,
    /// When that process started, in clock ticks since boot (`/proc/PID/stat` field 22), so
    /// that a reused pid is not taken for the owner; `null` where the system does not say.
    #[serde(default)]
    pub start_time: Option<u64>,
    /// Who it is, in words: "daemon worker", "sessionctl run".
    #[serde(default)]
    pub owner: String,
    /// When it became the owner, milliseconds since the Unix epoch.
    #[serde(default)]
    pub since: u64,
}

impl PidRecord {
    /// A record for process `pid`, owning from now on.
    fn for_process(pid: u32, owner: &str) -> PidRecord {
        PidRecord {
            pid,
            start_time: platform::process_start_time(pid),
            owner: owner.to_string(),
            since: crate::now_ms(),
        }
    }

    /// Why this record no longer names a running owner, or `None` when its process still runs
    /// (as far as can be told: without a start time, a reused pid looks alive).
    fn gone_reason(&self) -> Option<String> {
        let pid = self.pid;
        if !platform::process_alive(pid) {
            return Some(format!("owner pid {pid} has exited"));
        }
        match (self.start_time, platform::process_start_time(pid)) {
            (Some(then), Some(now)) if then != now => Some(format!(
                "pid {pid} now belongs to another process (start time differs)"
            )),
            _ => None,
        }
    }
}

/// Who owns a session, as [`SessionFiles::inspect`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerStatus {
    /// The lock is held: someone owns the session now. `record` is what its pid file says
    /// (None if missing or unreadable, as it is for an instant while a claim is being made).
    Live { record: Option<PidRecord> },
    /// The lock is free but a pid file was left behind. `reason` says why it is stale, in
    /// words for a user: e.g. "owner pid 123 has exited" or "pid 123 now belongs to another
    /// process (start time differs)".
    Stale {
        record: Option<PidRecord>,
        reason: String,
    },
}

/// Why a session could not be claimed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another process holds the session's lock. `record` is its pid file, if readable.
    #[error("{}", held_message(.id, .record))]
    Held {
        id: String,
        record: Option<PidRecord>,
    },
    /// The id could not name a file safely (see [`SessionFiles::claim`]); nothing was touched.
    #[error(
        "invalid session id {id:?}: expected a lowercase hyphenated UUID such as \
         123e4567-e89b-12d3-a456-426614174000"
    )]
    InvalidId { id: String },
    #[error(
        "cannot use session ownership file {path}: {source}; check that the state directory \
         is writable by this user"
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn held_message(id: &str, record: &Option<PidRecord>) -> String {
    match record {
        Some(r) => format!(
            "session {id} is owned by pid {} ({}, since {}); wait for it to finish or stop \
             that process",
            r.pid,
            r.owner,
            utc(r.since)
        ),
        None => format!(
            "session {id} is owned by another process (its pid file is missing or \
             unreadable); wait for it to finish or stop that process"
        ),
    }
}

/// The directory of session ownership files, `STATE/sessions`. It holds no open file itself:
/// each [`Claim`] opens what it needs.
#[derive(Clone, Debug)]
pub struct SessionFiles {
    dir: PathBuf,
}

impl SessionFiles {
    /// Uses `dir`, creating it (mode 0700) if missing.
    pub fn open(dir: &Path) -> io::Result<SessionFiles> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create session directory {}: {e}", dir.display()),
            )
        })?;
        Ok(SessionFiles {
            dir: dir.to_owned(),
        })
    }

    /// Takes ownership of session `id` for process `pid` (usually `std::process::id()`),
    /// described as `owner` ("sessionctl run", "daemon worker").
    ///
    /// `id` must be 1 to 64 characters of lowercase hex digits and '-', starting with a digit
    /// (every [`crate::session::SessionId`] as displayed), else
    /// [`ClaimError::InvalidId`]: it becomes part of a file name, so '/', '..' and the like
    /// must never reach the path.
    ///
    /// Fails with [`ClaimError::Held`] when another process holds the lock (after a short
    /// grace for a claimant that is about to let go). A stale pid file is simply replaced.
    pub fn claim(&self, id: &str, pid: u32, owner: &str) -> Result<Claim, ClaimError> {
        check_id(id)?;
        let lock_path = self.lock_path(id);
        let pid_path = self.pid_path(id);
        let lock = match lock_current(&lock_path, Mode::Claim) {
            Ok(Locked::Taken(file)) => file,
            Ok(Locked::Held) => {
                return Err(ClaimError::Held {
                    id: id.to_string(),
                    record: read_record(&pid_path).ok().flatten(),
                })
            }
            // Claiming creates the file, so it cannot be missing.
            Ok(Locked::Missing) => unreachable!("a claim opens its lock file with create"),
            Err(source) => {
                return Err(ClaimError::Io {
                    path: lock_path,
                    source,
                })
            }
        };
        if let Ok(Some(old)) = read_record(&pid_path) {
            let reason = old
                .gone_reason()
                .unwrap_or_else(|| format!("pid {} no longer holds the lock", old.pid));
            tracing::info!(session = id, "replacing a stale pid file: {reason}");
        }
        let record = PidRecord::for_process(pid, owner);
        // From here on the claim exists, so a failure below releases it on drop and leaves no
        // lock file behind.
        let claim = Claim {
            lock: Some(lock),
            lock_path,
            pid_path,
            record,
            inherited: false,
        };
        write_record(&claim.pid_path, &claim.record).map_err(|source| ClaimError::Io {
            path: claim.pid_path.clone(),
            source,
        })?;
        Ok(claim)
    }

    /// Who owns `id` right now, without taking anything. `None` when there is neither a held
    /// lock nor a pid file, and for an id [`claim`](Self::claim) would refuse.
    ///
    /// The probe takes a shared lock for an instant: a held exclusive lock refuses it (the
    /// session is live), and two probes never refuse each other. It keeps that shared lock
    /// while reading the pid file, so an owner arriving in between cannot be called stale.
    pub fn inspect(&self, id: &str) -> Option<OwnerStatus> {
        check_id(id).ok()?;
        let lock_path = self.lock_path(id);
        let pid_path = self.pid_path(id);
        for _ in 0..LOCK_ATTEMPTS {
            let probe = match lock_current(&lock_path, Mode::Probe) {
                Ok(probe) => probe,
                Err(e) => {
                    // The lock cannot be examined (permissions, say); the pid file is the only
                    // witness left, so trust it as far as the process it names still runs.
                    tracing::warn!(path = %lock_path.display(), "cannot probe session lock: {e}");
                    return match read_record(&pid_path) {
                        Ok(None) => None,
                        Ok(Some(record)) => Some(match record.gone_reason() {
                            None => OwnerStatus::Live {
                                record: Some(record),
                            },
                            Some(reason) => OwnerStatus::Stale {
                                record: Some(record),
                                reason,
                            },
                        }),
                        Err(e) => Some(unreadable(&pid_path, e)),
                    };
                }
            };
            let probe_lock = match probe {
                Locked::Held => {
                    return Some(OwnerStatus::Live {
                        record: read_record(&pid_path).ok().flatten(),
                    })
                }
                Locked::Taken(file) => Some(file),
                Locked::Missing => None,
            };
            let record = match read_record(&pid_path) {
                Ok(None) => return None,
                Ok(Some(record)) => record,
                Err(e) => return Some(unreadable(&pid_path, e)),
            };
            // Without a lock file nothing was held while reading, and a claim creates the lock
            // file before writing the pid file: if it exists now, this record may be a new
            // owner's, so look again.
            if probe_lock.is_none() && lock_path.exists() {
                continue;
            }
            let reason = record.gone_reason().unwrap_or_else(|| {
                format!(
                    "pid {} is running but does not hold the session's lock",
                    record.pid
                )
            });
            return Some(OwnerStatus::Stale {
                record: Some(record),
                reason,
            });
        }
        // Owners came and went on every look; whoever it is now owns it.
        Some(OwnerStatus::Live {
            record: read_record(&pid_path).ok().flatten(),
        })
    }

    /// The session's lock file (which may not exist).
    pub fn lock_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.lock"))
    }

    fn pid_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.pid"))
    }
}

fn unreadable(pid_path: &Path, e: io::Error) -> OwnerStatus {
    OwnerStatus::Stale {
        record: None,
        reason: format!("its pid file {} cannot be read ({e})", pid_path.display()),
    }
}

/// Refuses ids that could escape the directory or spell one session two ways.
fn check_id(id: &str) -> Result<(), ClaimError> {
    let valid = id.len() <= MAX_ID_LEN
        && id.bytes().next().is_some_and(|b| b.is_ascii_hexdigit())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ClaimError::InvalidId { id: id.to_string() })
    }
}

/// Ownership of one session, held from [`SessionFiles::claim`] until [`Claim::release`] or
/// drop. Holds the open, locked lock file and the record written to the pid file.
#[derive(Debug)]
pub struct Claim {
    /// `None` only once released, so that drop after release does nothing.
    lock: Option<File>,
    lock_path: PathBuf,
    pid_path: PathBuf,
    record: PidRecord,
    /// A child inherited the lock; see `mark_inherited`.
    inherited: bool,
}

impl Claim {
    /// What the pid file says now.
    pub fn record(&self) -> &PidRecord {
        &self.record
    }

    /// The lock descriptor, for a worker process to inherit.
    ///
    /// It is close-on-exec, as std opens every file: the spawner clears that in the worker
    /// only (in `pre_exec`, say), so no other child keeps the session locked. Keep the claim
    /// until the worker has exited: releasing removes the lock file, and a worker still
    /// holding the old file would then own the session alongside whoever claims it next.
    pub fn lock_fd(&self) -> RawFd {
        self.lock
            .as_ref()
            .map(AsRawFd::as_raw_fd)
            .expect("a claim holds its lock until released")
    }

    /// Rewrites the pid file to name another process (the worker spawned to do the work),
    /// atomically. The lock is unchanged; the worker shares it by inheriting
    /// [`lock_fd`](Self::lock_fd).
    pub fn hand_to(&mut self, pid: u32, owner: &str) -> io::Result<()> {
        let record = PidRecord::for_process(pid, owner);
        write_record(&self.pid_path, &record).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot rewrite pid file {}: {e}", self.pid_path.display()),
            )
        })?;
        self.record = record;
        Ok(())
    }

    /// Gives ownership up: removes the pid file only if it still names this claim's record,
    /// removes the lock file while still holding the lock, then closes it. The lock file goes
    /// even if the pid file cannot be removed; the first error is returned.
    pub fn release(mut self) -> io::Result<()> {
        self.give_up()
    }

    /// Records that a child process inherited the lock descriptor: dropping the claim (rather
    /// than releasing it once the child is known to be gone) then leaves the files alone.
    pub fn mark_inherited(&mut self) {
        self.inherited = true;
    }

    fn give_up(&mut self) -> io::Result<()> {
        let Some(lock) = self.lock.take() else {
            return Ok(());
        };
        let mut first_error = None;
        // Only ours to remove: a pid file naming someone else was not written under this
        // claim's lock (a person edited it, say), and is left for inspect to report.
        if let Ok(Some(record)) = read_record(&self.pid_path) {
            if record == self.record {
                if let Err(e) = remove_if_present(&self.pid_path) {
                    first_error.get_or_insert(e);
                }
            }
        }
        // Removed while still locked, so no one can open it and then lock it after we close
        // (they would own a file no path names; see `lock_current`). Only if the path still
        // names our file: someone may have deleted the directory under us.
        match is_current(&lock, &self.lock_path) {
            Ok(true) => {
                if let Err(e) = remove_if_present(&self.lock_path) {
                    first_error.get_or_insert(e);
                }
            }
            Ok(false) => {}
            Err(e) => {
                first_error.get_or_insert(io::Error::new(
                    e.kind(),
                    format!("cannot examine {}: {e}", self.lock_path.display()),
                ));
            }
        }
        // Closed, not unlocked: an explicit unlock would also release a worker that inherited
        // the descriptor, while closing drops the lock only with its last descriptor.
        drop(lock);
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Claim {
    /// Releases, best effort: a claim must never outlive its value. Except when a worker
    /// inherited the lock and may still run (the daemon stopping mid-turn): then only this
    /// process's descriptor closes, the files stay, and the lock stays with the worker.
    fn drop(&mut self) {
        if self.inherited {
            return;
        }
        if let Err(e) = self.give_up() {
            tracing::warn!("releasing a session on drop: {e}");
        }
    }
}

/// What opening and locking a lock file found.
enum Locked {
    /// The lock is ours (exclusive for a claim, shared for a probe).
    Taken(File),
    /// Another process holds it.
    Held,
    /// A probe found no lock file.
    Missing,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Create the file if needed and lock it exclusively, with [`CLAIM_GRACE`].
    Claim,
    /// Open only if present and lock it shared, without waiting.
    Probe,
}

/// Opens and locks the lock file at `path`, making sure the locked file is the one `path`
/// names.
///
/// Removing the lock file on release opens a race: A holds the lock on inode 1; B opens the
/// path and gets inode 1; A unlinks the file and closes it; C creates inode 2 at the path and
/// locks it; B's lock on inode 1 now succeeds, and B and C both "own" the session. So after
/// locking, the locked file's (device, inode) is compared with what the path names now; if
/// they differ or the path is gone, the lock is worthless, and the file is closed and opened
/// again. The owner removes the file only while holding the lock, so once the identities
/// match under our lock, nobody can replace the file until we let go.
fn lock_current(path: &Path, mode: Mode) -> io::Result<Locked> {
    let deadline = Instant::now() + CLAIM_GRACE;
    for _ in 0..LOCK_ATTEMPTS {
        let file = match open_lock(path, mode) {
            Ok(file) => file,
            Err(e) if mode == Mode::Probe && e.kind() == io::ErrorKind::NotFound => {
                return Ok(Locked::Missing)
            }
            Err(e) => return Err(e),
        };
        loop {
            let attempt = match mode {
                Mode::Claim => file.try_lock(),
                Mode::Probe => file.try_lock_shared(),
            };
            match attempt {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock)
                    if mode == Mode::Claim && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Ok(Locked::Held),
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        if is_current(&file, path)? {
            return Ok(Locked::Taken(file));
        }
        if mode == Mode::Probe && !path.exists() {
            return Ok(Locked::Missing);
        }
    }
    Err(io::Error::other(format!(
        "the lock file was replaced {LOCK_ATTEMPTS} times while being locked; other processes \
         are claiming and releasing this session rapidly, try again"
    )))
}

fn open_lock(path: &Path, mode: Mode) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true);
    if mode == Mode::Claim {
        options.write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    options.open(path)
}

/// Whether `path` still names the file `file` has open.
fn is_current(file: &File, path: &Path) -> io::Result<bool> {
    let held = platform::file_identity(&file.metadata()?);
    match std::fs::metadata(path) {
        Ok(now) => Ok(platform::file_identity(&now) == held),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads a pid file: `Ok(None)` when there is none, an error when it cannot be read or is not
/// a record.
fn read_record(path: &Path) -> io::Result<Option<PidRecord>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_PID_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PID_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_PID_FILE} bytes, so not a pid record"),
        ));
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes a pid file atomically: a temporary file beside it, renamed over it. Only the lock
/// holder writes, so one temporary name per session suffices. No fsync: after a crash the lock
/// is free and the pid file stale whatever it says, and an unreadable one is reported as such.
fn write_record(path: &Path, record: &PidRecord) -> io::Result<()> {
    let mut text = serde_json::to_vec(record).map_err(io::Error::other)?;
    text.push(b'\n');
    crate::paths::write_private_atomically(path, &text, false)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io::Error::new(
            e.kind(),
            format!("cannot remove {}: {e}", path.display()),
        )),
        _ => Ok(()),
    }
}

/// Milliseconds since the epoch as a UTC time people read: "2023-11-14 22:13:20 UTC".
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = crate::civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::process::{Child, Command, Stdio};

    const ID: &str = "123e4567-e89b-12d3-a456-426614174000";

    fn files() -> (tempfile::TempDir, SessionFiles) {
        let dir = tempfile::tempdir().unwrap();
        let files = SessionFiles::open(&dir.path().join("sessions")).unwrap();
        (dir, files)
    }

    /// A pid that no process has: a child that has exited and been reaped.
    fn exited_pid() -> u32 {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// Descriptors of this process open on files under `dir`.
    fn fds_under(dir: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    /// Another process holding `path`'s lock through a descriptor it keeps, as a worker does.
    /// Returns once the lock is held.
    fn hold_in_child(path: &Path) -> Child {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec 9>>"$1" && flock -n 9 && echo locked && exec sleep 30"#)
            .arg("sh")
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "locked\n", "the child could not take the lock");
        child
    }

    #[test]
    fn claim_is_live_and_release_leaves_no_files() {
        let (dir, files) = files();
        let claim = files
            .claim(ID, std::process::id(), "sessionctl run")
            .unwrap();
        let ours = claim.record().clone();
        assert_eq!(ours.pid, std::process::id());
        assert_eq!(ours.owner, "sessionctl run");
        assert_eq!(ours.start_time, platform::process_start_time(ours.pid));
        assert!(ours.start_time.is_some(), "Linux reports start times");
        assert_eq!(
            files.inspect(ID),
            Some(OwnerStatus::Live { record: Some(ours) })
        );

        claim.release().unwrap();
        assert_eq!(files.inspect(ID), None);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sessions"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "files left after release: {left:?}");
    }

    #[test]
    fn unknown_session_has_no_owner() {
        let (_dir, files) = files();
        assert_eq!(files.inspect(ID), None);
    }

    #[test]
    fn second_claim_is_refused_with_the_owners_record() {
        let (_dir, files) = files();
        let first = files
            .claim(ID, std::process::id(), "daemon worker")
            .unwrap();
        match files.claim(ID, std::process::id(), "sessionctl run") {
            Err(ClaimError::Held { id, record }) => {
                assert_eq!(id, ID);
                assert_eq!(record.as_ref(), Some(first.record()));
                let message = ClaimError::Held { id, record }.to_string();
                assert!(
                    message.starts_with(&format!(
                        "session {ID} is owned by pid {} (daemon worker, since ",
                        std::process::id()
                    )),
                    "{message}"
                );
                assert!(message.ends_with("wait for it to finish or stop that process"));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        first.release().unwrap();
    }

    #[test]
    fn claim_is_refused_while_another_process_holds_the_lock() {
        let (dir, files) = files();
        let lock_path = dir.path().join("sessions").join(format!("{ID}.lock"));
        let pid_path = dir.path().join("sessions").join(format!("{ID}.pid"));
        let mut child = hold_in_child(&lock_path);
        let theirs = PidRecord::for_process(child.id(), "sessionctl run");
        write_record(&pid_path, &theirs).unwrap();

        match files.claim(ID, std::process::id(), "daemon worker") {
            Err(ClaimError::Held { record, .. }) => assert_eq!(record, Some(theirs.clone())),
            other => panic!("expected Held, got {other:?}"),
        }
        assert_eq!(
            files.inspect(ID),
            Some(OwnerStatus::Live {
                record: Some(theirs.clone())
            })
        );

        child.kill().unwrap();
        child.wait().unwrap();
        let Some(OwnerStatus::Stale { reason, .. }) = files.inspect(ID) else {
            panic!("a dead owner's pid file is stale");
        };
        assert_eq!(reason, format!("owner pid {} has exited", theirs.pid));
        let claim = files
            .claim(ID, std::process::id(), "daemon worker")
            .unwrap();
        assert_eq!(claim.record().pid, std::process::id());
        claim.release().unwrap();
    }

    #[test]
    fn pid_file_of_an_exited_process_is_stale_and_claim_replaces_it() {
        let (dir, files) = files();
        let pid_path = dir.path().join("sessions").join(format!("{ID}.pid"));
        let dead = PidRecord {
            pid: exited_pid(),
            start_time: Some(1),
            owner: "daemon worker".into(),
            since: 1_700_000_000_000,
        };
        write_record(&pid_path, &dead).unwrap();

        assert_eq!(
            files.inspect(ID),
            Some(OwnerStatus::Stale {
                record: Some(dead.clone()),
                reason: format!("owner pid {} has exited", dead.pid),
            })
        );
        let claim = files
            .claim(ID, std::process::id(), "sessionctl run")
            .unwrap();
        assert_eq!(
            read_record(&pid_path).unwrap().as_ref(),
            Some(claim.record())
        );
        claim.release().unwrap();
        assert!(!pid_path.exists());
    }

    #[test]
    fn pid_file_naming_a_reused_pid_is_stale_by_start_time() {
        let (dir, files) = files();
        let pid_path = dir.path().join("sessions").join(format!("{ID}.pid"));
        let mut record = PidRecord::for_process(std::process::id(), "sessionctl run");
        record.start_time = Some(record.start_time.unwrap() + 1);
        write_record(&pid_path, &record).unwrap();

        assert_eq!(
            files.inspect(ID),
            Some(OwnerStatus::Stale {
                record: Some(record),
                reason: format!(
                    "pid {} now belongs to another process (start time differs)",
                    std::process::id()
                ),
            })
        );
    }

    #[test]
    fn unreadable_pid_file_beside_a_free_lock_is_stale() {
        let (dir, files) = files();
        let pid_path = dir.path().join("sessions").join(format!("{ID}.pid"));
        std::fs::write(&pid_path, "12").unwrap();
        let Some(OwnerStatus::Stale {
            record: None,
            reason,
        }) = files.inspect(ID)
        else {
            panic!("expected Stale without a record");
        };
        assert!(reason.contains("cannot be read"), "{reason}");
        files.claim(ID, 1, "x").unwrap().release().unwrap();
        assert!(!pid_path.exists());
    }

    #[test]
    fn invalid_ids_are_refused_without_touching_files() {
        let (dir, files) = files();
        let long = "a".repeat(MAX_ID_LEN + 1);
        for id in [
            "",
            "../x",
            "..",
            "a/b",
            "/etc/passwd",
            "-rf",
            "ABC",
            "a.b",
            "a b",
            "a\0",
            &long,
        ] {
            assert!(
                matches!(files.claim(id, 1, "x"), Err(ClaimError::InvalidId { .. })),
                "{id:?} was accepted"
            );
            assert_eq!(files.inspect(id), None);
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("sessions"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropping_a_claim_releases_it() {
        let (dir, files) = files();
        drop(
            files
                .claim(ID, std::process::id(), "sessionctl run")
                .unwrap(),
        );
        assert_eq!(files.inspect(ID), None);
        assert!(!dir
            .path()
            .join("sessions")
            .join(format!("{ID}.lock"))
            .exists());
        files
            .claim(ID, std::process::id(), "sessionctl run")
            .unwrap()
            .release()
            .unwrap();
    }

    #[test]
    fn no_descriptor_is_held_at_rest() {
        let (dir, files) = files();
        let claim = files
            .claim(ID, std::process::id(), "daemon worker")
            .unwrap();
        assert_eq!(fds_under(dir.path()), 1, "a claim holds its lock file");
        claim.release().unwrap();
        assert_eq!(fds_under(dir.path()), 0);
        files.inspect(ID);
        assert_eq!(fds_under(dir.path()), 0);
    }

    #[test]
    fn hand_to_names_the_worker_and_release_removes_it() {
        let (dir, files) = files();
        let pid_path = dir.path().join("sessions").join(format!("{ID}.pid"));
        let mut claim = files.claim(ID, std::process::id(), "daemon").unwrap();
        let worker = exited_pid();
        claim.hand_to(worker, "daemon worker").unwrap();
        assert_eq!(claim.record().pid, worker);
        assert_eq!(claim.record().owner, "daemon worker");
        assert_eq!(
            read_record(&pid_path).unwrap().as_ref(),
            Some(claim.record())
        );
        // The lock, not the pid file, says the session is owned.
        assert!(matches!(
            files.inspect(ID),
            Some(OwnerStatus::Live { record: Some(r) }) if r.pid == worker
        ));
        claim.release().unwrap();
        assert!(!pid_path.exists());
    }

    #[test]
    fn release_keeps_a_pid_file_that_names_someone_else() {
        let (dir, files) = files();
        let pid_path = dir.path().join("sessions").join(format!("{ID}.pid"));
        let claim = files.claim(ID, std::process::id(), "daemon").unwrap();
        let other = PidRecord::for_process(exited_pid(), "edited by hand");
        write_record(&pid_path, &other).unwrap();
        claim.release().unwrap();
        assert_eq!(read_record(&pid_path).unwrap(), Some(other));
    }

    #[test]
    fn a_lock_on_a_file_the_path_no_longer_names_is_not_ownership() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let old = open_lock(&path, Mode::Claim).unwrap();
        old.try_lock().unwrap();
        assert!(is_current(&old, &path).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(!is_current(&old, &path).unwrap(), "the path is gone");
        let new = open_lock(&path, Mode::Claim).unwrap();
        assert!(
            !is_current(&old, &path).unwrap(),
            "the path names another file"
        );
        assert!(is_current(&new, &path).unwrap());
    }

    #[test]
    fn process_facts_tell_live_from_gone() {
        assert!(platform::process_alive(std::process::id()));
        assert!(!platform::process_alive(exited_pid()));
        assert!(!platform::process_alive(0));
        assert!(!platform::process_alive(u32::MAX));
        assert!(platform::process_start_time(std::process::id()).is_some());
        assert_eq!(platform::process_start_time(exited_pid()), None);
    }

    #[test]
    fn times_in_messages_are_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000_999), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
