//! Durable storage: SQLite in WAL mode, owned by one thread.
//!
//! The registry changes its in-memory state, then hands the store a batch of row writes and
//! waits for the commit before acknowledging the client. The store thread takes every batch
//! already queued and commits them in one transaction (group commit), so durability costs one
//! fsync per burst rather than one per request, and a slow disk delays only the writers.
//!
//! A switch is the one change answered before its fsync ([`Store::write_then_flush`]): once
//! it is in the write-ahead log, which a crash of the daemon cannot lose, with the fsync
//! right after. When the store thread has nothing queued, the switch is committed on a second
//! connection by whoever holds the registry (no hand-over to the store thread and back), and
//! the store thread is asked to fsync the log and, now and then, to checkpoint it. Writes
//! still commit in the order they are made: that connection is used only while nothing is
//! queued, and only the registry's holder queues.
//!
//! At start-up [`Store::open`] applies versioned migrations and loads everything; from then on
//! reads are served from the registry's memory and the database is written, never read. A
//! database that cannot be used (damaged, from a newer sessiond, read-only, disk full) stops
//! the daemon with the file and what to do; it is never silently recreated.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sessiond_proto::session::{Activity, Phase, SessionId};
use tokio::sync::oneshot;

use crate::session::Session;
use crate::turn::Turn;
use sessiond_proto::session::{TurnId, TurnKind, TurnStatus};

/// File name inside the state directory.
pub const DB_FILE: &str = "sessiond.db";

/// Schema versions, in order; `PRAGMA user_version` records how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: sessions, their provider-id aliases, and contexts.
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        project TEXT NOT NULL,
        cwd TEXT NOT NULL,
        name TEXT,
        phase TEXT NOT NULL,
        activity TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        last_active_at INTEGER NOT NULL,
        parent_id TEXT,
        provider_session_id TEXT
     );
     CREATE TABLE session_aliases (
        session_id TEXT NOT NULL,
        provider_session_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        PRIMARY KEY (session_id, provider_session_id)
     );
     CREATE TABLE contexts (
        name TEXT PRIMARY KEY,
        session_id TEXT,
        project TEXT,
        generation INTEGER NOT NULL
     );",
    // 2: turns (the queue is the unsettled ones, in `queue_order`) and their output chunks.
    "CREATE TABLE turns (
        turn_id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL,
        queue_order INTEGER NOT NULL,
        prompt TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        ended_at INTEGER,
        exit_code INTEGER,
        error TEXT,
        worker_pid INTEGER,
        worker_start_time INTEGER
     );
     CREATE INDEX turns_by_session ON turns (session_id, queue_order);
     CREATE INDEX turns_unsettled ON turns (status) WHERE status IN ('queued', 'running');
     CREATE TABLE turn_output (
        turn_id TEXT NOT NULL,
        chunk INTEGER NOT NULL,
        stream TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (turn_id, chunk)
     );",
    // 3: daemon-wide counters (`starts`: how many times a daemon has started on this file).
    // A database an earlier version used counts as started once: that daemon's new contexts
    // may have shown generations it never saved.
    "CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
     );
     INSERT INTO meta (key, value)
        SELECT 'starts', 1
        WHERE EXISTS (SELECT 1 FROM sessions) OR EXISTS (SELECT 1 FROM contexts);",
];

/// The `meta` key counting daemon starts.
pub const META_STARTS: &str = "starts";

/// What went wrong inside the store: SQLite itself, or content it cannot accept.
#[derive(Debug)]
enum DbError {
    Sqlite(rusqlite::Error),
    /// Readable, but not something this build can use (newer schema, unknown state names).
    Unusable(String),
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Sqlite(e)
    }
}

/// Which part of a session's transcript to read: the `log` method's narrowing and paging.
#[derive(Clone, Copy, Debug, Default)]
pub struct Selection<'a> {
    /// A turn id's hex digits (as `registry::turn_digits` gives them): only the turns whose
    /// id starts with them.
    pub digits: Option<&'a str>,
    /// Only the last N turns (ignored with `from`).
    pub last: Option<u32>,
    /// Go on from here: this turn and those after it, the first from this chunk.
    pub from: Option<sessiond_proto::methods::LogCursor>,
    /// Stop after about this many bytes of prompts and output (always taking one chunk).
    pub max_bytes: Option<u64>,
}

/// A read transcript: its turns (the last perhaps cut short), and where the rest begins
/// when `max_bytes` cut it.
pub type Transcript = (
    Vec<sessiond_proto::methods::LogTurn>,
    Option<sessiond_proto::methods::LogCursor>,
);

/// A session's turns and their output, as `select` narrows and pages them: first the turns
/// that have run or settled, in the order that happened (when each started, or settled
/// unstarted), then the queued ones in queue order. `None` when `select.digits` matched none
/// of the session's turns, or `select.from` names no turn of the selection.
///
/// The order is what keeps pages joining up: a turn's place among those that ran never
/// changes, and the queued turn that starts next (the head of the queue) moves from the
/// first place after them to the last place among them, which is the same place. So the
/// turns from a page's `next` on are still the ones not yet read, unless the queue itself
/// was reordered (a promote, a steer) between the pages.
///
/// The prefix is matched here rather than with SQL's `LIKE`: ids are stored hyphenated, so a
/// prefix of the plain form would miss past its eighth digit, and `%` or `_` in a pattern
/// would match anything.
pub fn transcript(
    conn: &Connection,
    session: SessionId,
    select: Selection<'_>,
) -> rusqlite::Result<Option<Transcript>> {
    use sessiond_proto::methods::{LogCursor, LogTurn, OutputChunk};
    let mut stmt = conn.prepare_cached(
        "SELECT turn_id, queue_order, prompt, kind, status, created_at, started_at, ended_at,
                exit_code, error
         FROM turns WHERE session_id = ?1
         ORDER BY COALESCE(started_at, ended_at) IS NULL, COALESCE(started_at, ended_at),
                  queue_order, created_at",
    )?;
    let mut turns = Vec::new();
    let mut rows = stmt.query(params![session.to_string()])?;
    let mut plain = [0u8; uuid::fmt::Simple::LENGTH];
    let digits = select.digits;
    while let Some(r) = rows.next()? {
        let id_text: String = r.get(0)?;
        let Ok(turn_id) = id_text.parse::<TurnId>() else {
            continue;
        };
        if digits.is_some_and(|d| !turn_id.0.simple().encode_lower(&mut plain).starts_with(d)) {
            continue;
        }
        let status_text: String = r.get(4)?;
        let kind_text: String = r.get(3)?;
        turns.push(sessiond_proto::session::TurnInfo {
            turn_id,
            session,
            prompt: r.get(2)?,
            kind: if kind_text == "steer" {
                TurnKind::Steer
            } else {
                TurnKind::Normal
            },
            status: TurnStatus::ALL
                .into_iter()
                .find(|s| s.as_str() == status_text)
                .unwrap_or(TurnStatus::Failed),
            position: None,
            created_at: r.get::<_, i64>(5)? as u64,
            started_at: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
            ended_at: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            exit_code: r.get(8)?,
            error: r.get(9)?,
        });
    }
    if digits.is_some() && turns.is_empty() {
        return Ok(None);
    }
    let mut first_chunk = 0;
    if let Some(from) = select.from {
        let Some(at) = turns.iter().position(|t| t.turn_id == from.turn) else {
            return Ok(None);
        };
        turns.drain(..at);
        first_chunk = from.chunk;
    } else if let Some(last) = select.last {
        let skip = turns.len().saturating_sub(last as usize);
        turns.drain(..skip);
    }
    let budget = select.max_bytes.unwrap_or(u64::MAX);
    let mut used = 0u64;
    let mut output = conn.prepare_cached(
        "SELECT chunk, stream, data FROM turn_output WHERE turn_id = ?1 AND chunk >= ?2
         ORDER BY chunk",
    )?;
    let mut log = Vec::with_capacity(turns.len());
    let mut next = None;
    'turns: for turn in turns {
        let start = std::mem::take(&mut first_chunk);
        if used >= budget && !log.is_empty() {
            next = Some(LogCursor {
                turn: turn.turn_id,
                chunk: start,
            });
            break;
        }
        used += turn.prompt.len() as u64;
        let id = turn.turn_id;
        log.push(LogTurn {
            turn,
            output: Vec::new(),
        });
        let mut rows = output.query(params![id.to_string(), start as i64])?;
        while let Some(r) = rows.next()? {
            let chunk = r.get::<_, i64>(0)? as u64;
            let data = r.get_ref(2)?.as_bytes()?;
            let taken = log.len() > 1 || !log[0].output.is_empty();
            if used + data.len() as u64 > budget && taken {
                next = Some(LogCursor { turn: id, chunk });
                break 'turns;
            }
            used += data.len() as u64;
            let chunk = OutputChunk {
                chunk,
                stream: r.get(1)?,
                data: String::from_utf8_lossy(data).into_owned(),
            };
            log.last_mut().expect("pushed above").output.push(chunk);
        }
    }
    Ok(Some((log, next)))
}

/// One row write.
#[derive(Clone, Debug)]
pub enum Write {
    /// Insert or replace a session's row (aliases included).
    Session(Session),
    /// Insert or replace a context.
    Context(ContextRow),
    /// Insert or replace a turn.
    Turn(Turn),
    /// Set a daemon-wide counter in `meta`.
    Meta { key: &'static str, value: u64 },
    /// Append one chunk of a turn's output.
    Output {
        turn: TurnId,
        chunk: u64,
        stream: &'static str,
        data: Vec<u8>,
    },
}

/// A context as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextRow {
    pub name: String,
    pub session: Option<SessionId>,
    pub project: Option<String>,
    pub generation: u64,
}

/// Everything in the database the registry keeps in memory, read once at start-up.
pub struct Loaded {
    pub sessions: Vec<Session>,
    pub contexts: Vec<ContextRow>,
    /// Turns not yet settled (queued, or running when the last daemon stopped), in queue order.
    pub unsettled: Vec<Turn>,
    /// How many daemons started on this database before this one.
    pub starts: u64,
}

/// A failed commit, shared by every write in the batch.
#[derive(Clone, Debug, thiserror::Error)]
#[error("cannot save to {path}: {message}")]
pub struct StoreError {
    pub path: Arc<PathBuf>,
    pub message: String,
}

/// Resolves when the writes it was handed to the store are durable (or failed).
pub type Commit = oneshot::Receiver<Result<(), StoreError>>;

/// A query run on the store thread, in order with the writes queued before it.
pub type Query = Box<dyn FnOnce(&Connection) + Send>;

enum Job {
    Write {
        writes: Vec<Write>,
        done: oneshot::Sender<Result<(), StoreError>>,
        flush: Flush,
    },
    Read(Query),
    /// Fsync the write-ahead log: a switch was committed on the caller's connection and
    /// answered (see [`Store::write_then_flush`]).
    Flush,
}

/// Which thread commits a switch when it may be either ([`Store::write_then_flush`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Committer {
    /// The caller, on its own connection, when the store thread has nothing queued: quicker
    /// for the switch, but the caller's thread does nothing else meanwhile.
    Here,
    /// The store thread, while the caller goes on (to deliver the switch's event, say).
    StoreThread,
}

/// When a write is flushed to the disk, relative to its answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flush {
    /// Before: the commit's fsync is done when its [`Commit`] resolves.
    BeforeAnswer,
    /// Right after: the [`Commit`] resolves once the transaction is in the database's log
    /// (it survives the daemon's crash), and the store thread fsyncs the log next.
    AfterAnswer,
}

/// The handle the registry writes through.
pub struct Store {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    path: Arc<PathBuf>,
    /// Why the last commit failed, while changes are held unsaved (see [`run`]); the registry
    /// refuses changes while it is set.
    failure: Arc<std::sync::Mutex<Option<String>>>,
    /// A second connection, used only by [`Store::write_then_flush`] on the caller's thread
    /// (which holds the registry), when the store thread has nothing queued. `None` if it
    /// could not be opened: then everything goes through the store thread.
    inline: Option<Connection>,
    /// Writes queued to the store thread and not yet answered. Only the registry's holder
    /// queues writes, so when this is 0 the store thread holds no write transaction and
    /// nothing is waiting to commit before a write made here.
    unanswered: Arc<AtomicUsize>,
}

/// The largest number of jobs committed in one transaction; bounds the latency one commit
/// adds for the first writer in a burst.
const MAX_BATCH: usize = 4096;

impl Store {
    /// Opens (creating if absent) the database in `state_dir`, migrates it, and loads it.
    pub fn open(state_dir: &Path) -> Result<(Store, Loaded), String> {
        let path = state_dir.join(DB_FILE);
        let conn = open_connection(&path)?;
        let loaded = load(&conn).map_err(|e| explain(&path, &e))?;
        let inline = open_inline(&path)
            .map_err(|e| {
                tracing::warn!(
                    database = %path.display(),
                    "cannot open a second connection ({e}); switches are committed by the \
                     store thread"
                )
            })
            .ok();
        let (jobs, queue) = mpsc::channel::<Job>();
        let path = Arc::new(path);
        let failure = Arc::new(std::sync::Mutex::new(None));
        let unanswered = Arc::new(AtomicUsize::new(0));
        let shared = Shared {
            path: path.clone(),
            failure: failure.clone(),
            unanswered: unanswered.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("sessiond-store".into())
            .spawn(move || run(conn, queue, shared))
            .map_err(|e| format!("cannot start the store thread: {e}"))?;
        Ok((
            Store {
                jobs: Some(jobs),
                thread: Some(thread),
                path,
                failure,
                inline,
                unanswered,
            },
            loaded,
        ))
    }

    /// Queues writes for the next commit; the [`Commit`] resolves once they are on disk.
    pub fn write(&self, writes: Vec<Write>) -> Commit {
        self.queue(writes, Flush::BeforeAnswer)
    }

    /// Writes whose answer need not wait for the disk: the [`Commit`] resolves once they are
    /// committed to the database's write-ahead log, which a crash of the daemon cannot lose,
    /// and the log is fsynced within [`FLUSH_DELAY`]. Only an OS crash or power loss before
    /// then can lose them. For a switch of the current session, which a person waits for at
    /// a keystroke and whose loss (the context points where it did before, at a lower
    /// generation than the next run's) costs nothing.
    ///
    /// With [`Committer::Here`], when the store thread has nothing queued, they are committed
    /// on the caller's own connection (a few page writes into the OS's cache, no fsync), and
    /// the store thread is asked to fsync the log afterwards: that saves the two hand-overs
    /// between threads, each a wake-up of a sleeping thread. Otherwise, or if that commit
    /// fails, they queue behind the others, so writes still commit in the order they were
    /// made.
    pub fn write_then_flush(&mut self, writes: Vec<Write>, committer: Committer) -> Commit {
        if committer == Committer::Here
            && self.unanswered.load(Ordering::Acquire) == 0
            && self.failure().is_none()
        {
            if let Some(conn) = self.inline.as_mut() {
                match commit(conn, writes.iter()) {
                    Ok(()) => {
                        let flushing = self
                            .jobs
                            .as_ref()
                            .is_some_and(|jobs| jobs.send(Job::Flush).is_ok());
                        let (done, commit) = oneshot::channel();
                        let _ = done.send(if flushing {
                            Ok(())
                        } else {
                            Err(StoreError {
                                path: self.path.clone(),
                                message: "the store thread has stopped, so nothing is flushed \
                                          to disk"
                                    .into(),
                            })
                        });
                        return commit;
                    }
                    Err(e) => tracing::debug!(
                        database = %self.path.display(),
                        "a switch could not be committed on the caller's connection ({e}); \
                         the store thread commits it"
                    ),
                }
            }
        }
        self.queue(writes, Flush::AfterAnswer)
    }

    fn queue(&self, writes: Vec<Write>, flush: Flush) -> Commit {
        let (done, commit) = oneshot::channel();
        let job = Job::Write {
            writes,
            done,
            flush,
        };
        if let Some(jobs) = &self.jobs {
            self.unanswered.fetch_add(1, Ordering::AcqRel);
            if let Err(mpsc::SendError(Job::Write { done, .. })) = jobs.send(job) {
                self.unanswered.fetch_sub(1, Ordering::AcqRel);
                let _ = done.send(Err(StoreError {
                    path: self.path.clone(),
                    message: "the store thread has stopped".into(),
                }));
            }
        }
        commit
    }

    /// Runs `query` on the store thread after every write queued before it has committed.
    /// (If the thread is gone, the query is dropped and its answer channel closes.)
    pub fn read(&self, query: Query) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(Job::Read(query));
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the database can no longer be written, once a commit has failed.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Store {
    /// Lets the thread commit what is queued, then joins it.
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Creates the database file owner-only (or makes an existing one so) before SQLite opens
/// it: SQLite gives its `-wal` and `-shm` files the database file's mode, so all three stay
/// private whatever the umask, not only behind the private state directory.
fn make_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            match created {
                // Another process creating it at this instant is the instance lock's business.
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(format!(
                    "cannot create the database {}: {e}",
                    path.display()
                )),
            }
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_file() && mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))
                    .map_err(|e| {
                        format!(
                            "the database {} is readable by others (mode {mode:o}) and cannot \
                             be made private: {e}; run `chmod 600 {}`",
                            path.display(),
                            path.display()
                        )
                    })?;
            }
            Ok(())
        }
    }
}

/// SQLite's page cache, in KiB given as a negative count (SQLite's convention for a size).
const PAGE_CACHE_KIB: i64 = -256;

/// How long the store thread's connection waits for a lock another process holds (a reader
/// of the database by hand, say) before a commit fails.
const STORE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn open_connection(path: &Path) -> Result<Connection, String> {
    make_private(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn =
        Connection::open_with_flags(path, flags).map_err(|e| explain(path, &e.into()))?;
    let setup = |conn: &mut Connection| -> Result<(), DbError> {
        // WAL: readers never block the writer and a crash never tears a commit. FULL: a commit
        // is on disk before it is acknowledged (group commit pays for the fsync).
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // The whole database is read once, at start-up; after that a commit touches a few
        // pages. SQLite's default 2 MB page cache would only keep start-up's pages resident.
        conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)?;
        conn.busy_timeout(STORE_BUSY_TIMEOUT)?;
        // SQLite silently opens a write-protected file read-only; every change would then
        // fail after the daemon had started. Find out now, with a real write transaction.
        if conn.is_readonly(rusqlite::MAIN_DB)? {
            return Err(DbError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
                Some("the database file is read-only".into()),
            )));
        }
        conn.execute_batch("BEGIN IMMEDIATE; COMMIT;")?;
        migrate(conn)
    };
    setup(&mut conn).map_err(|e| explain(path, &e))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(DbError::Unusable(format!(
            "it was written by a newer sessiond (schema {version}; this one knows up to \
             {known}). Upgrade sessiond, or move the file aside to start an empty registry"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Turns an SQLite error into a message naming the file and the fix.
fn explain(path: &Path, e: &DbError) -> String {
    use rusqlite::ErrorCode::*;
    let shown = path.display();
    let e = match e {
        DbError::Unusable(what) => return format!("cannot use database {shown}: {what}"),
        DbError::Sqlite(e) => e,
    };
    let advice = match e.sqlite_error_code() {
        Some(NotADatabase | DatabaseCorrupt) => format!(
            "the file is damaged or is not a sessiond database. Move it aside \
             (`mv {shown} {shown}.broken`) and start again to begin with an empty registry; \
             the sessions in it will not be loaded"
        ),
        Some(ReadOnly) => format!(
            "the file or its directory is read-only; make them writable (`chmod u+w {shown}`)"
        ),
        Some(DiskFull) => "the disk is full; free some space and start again".to_string(),
        Some(CannotOpen | PermissionDenied) => {
            "check that the state directory exists and is yours".to_string()
        }
        Some(DatabaseBusy | DatabaseLocked) => {
            "another process holds the database; is another sessiond using this state \
             directory?"
                .to_string()
        }
        _ => String::new(),
    };
    if advice.is_empty() {
        format!("cannot use database {shown}: {e}")
    } else {
        format!("cannot use database {shown}: {e}; {advice}")
    }
}

fn parse_phase(text: &str) -> Option<Phase> {
    Phase::ALL.into_iter().find(|p| p.as_str() == text)
}

fn parse_activity(text: &str) -> Option<Activity> {
    Activity::ALL.into_iter().find(|a| a.as_str() == text)
}

fn load(conn: &Connection) -> Result<Loaded, DbError> {
    let bad = DbError::Unusable;
    let mut interned: std::collections::HashMap<String, Arc<str>> = Default::default();
    let mut intern = |s: String| -> Arc<str> {
        interned
            .entry(s)
            .or_insert_with_key(|k| Arc::from(k.as_str()))
            .clone()
    };
    let mut aliases: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut stmt = conn.prepare(
        "SELECT session_id, provider_session_id FROM session_aliases ORDER BY session_id, position",
    )?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (id, alias) = row?;
        aliases.entry(id).or_default().push(alias);
    }
    let mut stmt = conn.prepare(
        "SELECT id, provider, project, cwd, name, phase, activity, created_at, updated_at,
                last_active_at, parent_id, provider_session_id FROM sessions",
    )?;
    let mut rows = stmt.query([])?;
    let mut sessions = Vec::new();
    while let Some(r) = rows.next()? {
        let id_text: String = r.get(0)?;
        let id: SessionId = id_text
            .parse()
            .map_err(|_| bad(format!("row with invalid session id {id_text:?}")))?;
        let phase_text: String = r.get(5)?;
        let activity_text: String = r.get(6)?;
        let phase = parse_phase(&phase_text).ok_or_else(|| {
            bad(format!(
                "session {id_text} has unknown phase {phase_text:?} (written by a newer sessiond?)"
            ))
        })?;
        let activity = parse_activity(&activity_text).ok_or_else(|| {
            bad(format!(
                "session {id_text} has unknown activity {activity_text:?} (written by a newer \
                 sessiond?)"
            ))
        })?;
        let parent_id = match r.get::<_, Option<String>>(10)? {
            Some(text) => Some(
                text.parse()
                    .map_err(|_| bad(format!("session {id_text} has invalid parent {text:?}")))?,
            ),
            None => None,
        };
        sessions.push(Session {
            id,
            provider: intern(r.get(1)?),
            project: intern(r.get(2)?),
            cwd: r.get(3)?,
            name: r.get(4)?,
            phase,
            activity,
            created_at: r.get::<_, i64>(7)? as u64,
            updated_at: r.get::<_, i64>(8)? as u64,
            last_active_at: r.get::<_, i64>(9)? as u64,
            parent_id,
            provider_session_id: r.get(11)?,
            aliases: aliases.remove(&id_text).unwrap_or_default(),
            queue_length: 0,
        });
    }
    let mut stmt = conn.prepare("SELECT name, session_id, project, generation FROM contexts")?;
    let mut rows = stmt.query([])?;
    let mut contexts = Vec::new();
    while let Some(r) = rows.next()? {
        let session = match r.get::<_, Option<String>>(1)? {
            Some(text) => Some(
                text.parse()
                    .map_err(|_| bad(format!("context points at invalid id {text:?}")))?,
            ),
            None => None,
        };
        contexts.push(ContextRow {
            name: r.get(0)?,
            session,
            project: r.get(2)?,
            generation: r.get::<_, i64>(3)? as u64,
        });
    }
    let mut stmt = conn.prepare(
        "SELECT turn_id, session_id, queue_order, prompt, kind, status, created_at, started_at,
                ended_at, exit_code, error, worker_pid, worker_start_time
         FROM turns WHERE status IN ('queued', 'running') ORDER BY queue_order",
    )?;
    let mut rows = stmt.query([])?;
    let mut unsettled = Vec::new();
    while let Some(r) = rows.next()? {
        let id_text: String = r.get(0)?;
        let session_text: String = r.get(1)?;
        let kind_text: String = r.get(4)?;
        let status_text: String = r.get(5)?;
        unsettled.push(Turn {
            id: id_text
                .parse()
                .map_err(|_| bad(format!("turn with invalid id {id_text:?}")))?,
            session: session_text.parse().map_err(|_| {
                bad(format!(
                    "turn {id_text} has invalid session {session_text:?}"
                ))
            })?,
            order: r.get(2)?,
            prompt: r.get(3)?,
            kind: match kind_text.as_str() {
                "steer" => TurnKind::Steer,
                "normal" => TurnKind::Normal,
                other => return Err(bad(format!("turn {id_text} has unknown kind {other:?}"))),
            },
            status: TurnStatus::ALL
                .into_iter()
                .find(|s| s.as_str() == status_text)
                .ok_or_else(|| bad(format!("turn {id_text} has unknown status {status_text:?}")))?,
            created_at: r.get::<_, i64>(6)? as u64,
            started_at: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            ended_at: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
            exit_code: r.get(9)?,
            error: r.get(10)?,
            worker_pid: r.get::<_, Option<i64>>(11)?.map(|v| v as u32),
            worker_start_time: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
            output_chunks: 0,
            output_bytes: 0,
            output_truncated: false,
            output_unsaved: 0,
            stop: None,
            exited: false,
            launching: false,
            interrupts: false,
        });
    }
    let starts: Option<i64> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            params![META_STARTS],
            |r| r.get(0),
        )
        .optional()?;
    Ok(Loaded {
        sessions,
        contexts,
        unsettled,
        starts: starts.unwrap_or(0) as u64,
    })
}

/// How often a store that could not write tries again. The first retry after space returns
/// saves what was held and lifts the refusal of changes.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Writes memory holds but the database does not, after a failed commit, and why they failed.
/// They are saved, in order and before anything newer, once a commit succeeds again.
struct Backlog {
    writes: Vec<Write>,
    last_attempt: Instant,
}

/// The store thread: commit every queued job together, acknowledge each, repeat.
///
/// When a commit fails (disk full, I/O error), its writes are kept in a backlog, the failure is
/// published (the registry then refuses changes and `status` reports it), and every later write
/// joins the backlog and is answered with the failure, since it is not durable. Every
/// [`RETRY_INTERVAL`] — on a fixed schedule, whatever reads come meanwhile — the backlog is
/// tried again; when it commits, the failure is cleared. Reads go on throughout, seeing what
/// is saved.
fn run(mut conn: Connection, queue: mpsc::Receiver<Job>, shared: Shared) {
    let Shared {
        path,
        failure,
        unanswered,
    } = shared;
    let set_failure = |message: Option<String>| {
        *failure.lock().unwrap_or_else(|e| e.into_inner()) = message;
    };
    let mut held_read = None;
    let mut backlog: Option<Backlog> = None;
    let mut sync = Synchronous::Full;
    let mut log = LogFlush::new(write_ahead_log(&path));
    loop {
        // A switch answered before its fsync that cannot be flushed is a failing disk like
        // any other: changes are refused until a retry flushes it (with whatever is held).
        if let Err(e) = log.flush_if_due(&conn, &path) {
            let message = format!("cannot flush the write-ahead log: {e}");
            tracing::error!(
                database = %path.display(),
                "{message}; refusing changes, and retrying every {} s",
                RETRY_INTERVAL.as_secs()
            );
            backlog.get_or_insert_with(|| Backlog {
                writes: Vec::new(),
                last_attempt: Instant::now(),
            });
            set_failure(Some(message));
        }
        // A retry that is due comes first, so neither reads nor a quiet queue put it off.
        if let Some(held) = &mut backlog {
            if held.last_attempt.elapsed() >= RETRY_INTERVAL {
                held.last_attempt = Instant::now();
                // Flushed explicitly: held writes may be none (only a failed flush), and a
                // commit that writes nothing does not fsync.
                let retried = sync
                    .set(&conn, Synchronous::Full)
                    .and_then(|()| commit(&mut conn, held.writes.iter()))
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        log.sync()
                            .map_err(|e| format!("cannot flush the write-ahead log: {e}"))
                    });
                match retried {
                    Ok(()) => {
                        tracing::info!(
                            database = %path.display(),
                            "saved {} held changes; accepting changes again",
                            held.writes.len()
                        );
                        backlog = None;
                        log.flushed();
                        set_failure(None);
                    }
                    Err(e) => set_failure(Some(e)),
                }
            }
        }
        // A read waits for the writes queued before it, so it starts the next round.
        let next = match (held_read.take(), &backlog) {
            (Some(read), _) => Ok(read),
            (None, held) => {
                let retry = held
                    .as_ref()
                    .map(|h| RETRY_INTERVAL.saturating_sub(h.last_attempt.elapsed()));
                match retry.into_iter().chain(log.wait()).min() {
                    Some(wait) => queue.recv_timeout(wait),
                    None => queue
                        .recv()
                        .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                }
            }
        };
        let first = match next {
            Ok(Job::Read(query)) => {
                query(&conn);
                continue;
            }
            Ok(Job::Flush) => {
                log.inline_commit();
                continue;
            }
            Ok(write) => write,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Err(e) = log.flush_now(&conn, &path) {
                    tracing::error!(
                        database = %path.display(),
                        "stopping, and cannot flush the write-ahead log: {e}"
                    );
                }
                if let Some(held) = backlog.take() {
                    // Stopping: one last try, so nothing held is lost if space came back.
                    let retried = sync
                        .set(&conn, Synchronous::Full)
                        .and_then(|()| commit(&mut conn, held.writes.iter()));
                    if let Err(e) = retried {
                        tracing::error!(
                            database = %path.display(),
                            "stopping with {} changes that could not be saved: {e}",
                            held.writes.len()
                        );
                    }
                }
                break;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(read @ Job::Read(_)) => {
                    held_read = Some(read);
                    break;
                }
                // Sent only when no write is unanswered, so never behind one; a batch's own
                // flush would cover it anyway.
                Ok(Job::Flush) => {}
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let writes = |batch: &[Job]| -> Vec<Write> {
            batch
                .iter()
                .flat_map(|job| match job {
                    Job::Write { writes, .. } => writes.clone(),
                    Job::Read(_) | Job::Flush => Vec::new(),
                })
                .collect()
        };
        // Flushed after the answers only if every job in the batch allows it.
        let flush = if batch.iter().all(|job| {
            matches!(
                job,
                Job::Write {
                    flush: Flush::AfterAnswer,
                    ..
                }
            )
        }) {
            Flush::AfterAnswer
        } else {
            Flush::BeforeAnswer
        };
        let wanted = match flush {
            Flush::AfterAnswer => Synchronous::Normal,
            Flush::BeforeAnswer => Synchronous::Full,
        };
        let result = match &mut backlog {
            // Nothing held: commit as usual.
            None => sync
                .set(&conn, wanted)
                .and_then(|()| {
                    commit(
                        &mut conn,
                        batch.iter().flat_map(|job| match job {
                            Job::Write { writes, .. } => writes.as_slice(),
                            Job::Read(_) | Job::Flush => &[],
                        }),
                    )
                })
                .map_err(|e| {
                    let message = e.to_string();
                    tracing::error!(
                        database = %path.display(),
                        "commit failed: {message}; holding changes in memory, refusing new ones, \
                         and retrying every {} s",
                        RETRY_INTERVAL.as_secs()
                    );
                    backlog = Some(Backlog {
                        writes: writes(&batch),
                        last_attempt: Instant::now(),
                    });
                    set_failure(Some(message.clone()));
                    message
                }),
            // Held writes go first; these join them, not durable until the next retry.
            Some(held) => {
                held.writes.extend(writes(&batch));
                Err(failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .unwrap_or_default())
            }
        };
        let result = result.map_err(|message| StoreError {
            path: path.clone(),
            message,
        });
        let committed = result.is_ok();
        let answered = batch.len();
        for job in batch {
            if let Job::Write { done, .. } = job {
                let _ = done.send(result.clone());
            }
        }
        unanswered.fetch_sub(answered, Ordering::AcqRel);
        if committed {
            match flush {
                Flush::BeforeAnswer => log.flushed(),
                Flush::AfterAnswer => log.request(),
            }
        }
    }
}

/// How long after its answer a switch's write-ahead log is fsynced. Not at once: the fsync
/// (a write to the virtual disk, and its completion) then competes for the CPU with the
/// client that is printing the answer and exiting, which a person at a prompt waits for;
/// 5 ms later it does not, and one fsync covers every switch made meanwhile. Measured by
/// hand, 400 interleaved rounds: the floor program's switch 1.147 × its ping with the fsync
/// at once, 1.088 × with it 5 ms later; `sessionctl switch` 1.260 × against 1.169 ×.
const FLUSH_DELAY: Duration = Duration::from_millis(5);

/// The store thread's account of the write-ahead log's fsync for switches: when it is due,
/// whether one failed, and how many switches the registry's connection committed since the
/// log was last checkpointed.
struct LogFlush {
    log: PathBuf,
    due: Option<Instant>,
    /// That connection never checkpoints (it would fsync where a person waits), so this
    /// thread does, every [`INLINE_CHECKPOINT`] of them, lest the log grow without end.
    inline_commits: u32,
}

impl LogFlush {
    fn new(log: PathBuf) -> LogFlush {
        LogFlush {
            log,
            due: None,
            inline_commits: 0,
        }
    }

    /// A switch was answered before its fsync: flush within [`FLUSH_DELAY`].
    fn request(&mut self) {
        self.due.get_or_insert(Instant::now() + FLUSH_DELAY);
    }

    /// A switch was committed on the registry's connection and answered.
    fn inline_commit(&mut self) {
        self.inline_commits += 1;
        self.request();
    }

    /// How long until the flush is due, if one is.
    fn wait(&self) -> Option<Duration> {
        self.due
            .map(|due| due.saturating_duration_since(Instant::now()))
    }

    /// A commit was fsynced before its answer: that covered the log up to it, and this
    /// thread's connection checkpoints by itself once the log is long (SQLite's default).
    fn flushed(&mut self) {
        self.due = None;
        self.inline_commits = 0;
    }

    fn flush_if_due(&mut self, conn: &Connection, path: &Path) -> std::io::Result<()> {
        if self.due.is_some_and(|due| Instant::now() >= due) {
            self.flush_now(conn, path)?;
        }
        Ok(())
    }

    /// Flushes the log if a flush is owed, and checkpoints it now and then.
    fn flush_now(&mut self, conn: &Connection, path: &Path) -> std::io::Result<()> {
        if self.due.take().is_none() {
            return Ok(());
        }
        self.sync()?;
        if self.inline_commits >= INLINE_CHECKPOINT {
            match restart_log(conn) {
                Ok(true) => self.inline_commits = 0,
                // Tried again half an interval later, so a reader holding on does not make
                // every flush wait for it.
                Ok(false) => self.inline_commits = INLINE_CHECKPOINT / 2,
                Err(e) => {
                    self.inline_commits = 0;
                    tracing::warn!(database = %path.display(), "checkpoint failed: {e}");
                }
            }
        }
        Ok(())
    }

    /// Fsyncs the log now (its data: a change of its size is synced with it).
    fn sync(&self) -> std::io::Result<()> {
        std::fs::File::open(&self.log).and_then(|f| f.sync_data())
    }
}

/// Checkpoints the whole log into the database so that the next commit starts the log again
/// from its beginning; false if a writer or a reader kept it from finishing.
///
/// Not a passive checkpoint: switches go on committing on the registry's connection while
/// this thread checkpoints, and a passive checkpoint lets them, so under back-to-back
/// switches it always ended with frames it had not copied, the log never started again, and
/// it grew by a page or two a switch without end. A `RESTART` checkpoint takes the write
/// lock: a switch made meanwhile finds it taken (that connection never waits) and is
/// committed by this thread after it. It waits [`CHECKPOINT_WAIT`] at most, for a switch
/// being committed or a reader in another process, and then leaves the rest for the next.
fn restart_log(conn: &Connection) -> rusqlite::Result<bool> {
    conn.busy_timeout(CHECKPOINT_WAIT)?;
    let busy = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| {
        row.get::<_, i64>(0)
    });
    conn.busy_timeout(STORE_BUSY_TIMEOUT)?;
    Ok(busy? == 0)
}

/// How long a checkpoint waits for the write lock and for readers of the log: a switch being
/// committed holds the lock for well under a millisecond.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(50);

/// What the store thread shares with the [`Store`] handle.
struct Shared {
    path: Arc<PathBuf>,
    failure: Arc<std::sync::Mutex<Option<String>>>,
    unanswered: Arc<AtomicUsize>,
}

/// Switches committed on the registry's connection between two checkpoints by the store
/// thread: about SQLite's own threshold of 1,000 pages of log, at two pages a switch.
const INLINE_CHECKPOINT: u32 = 500;

/// The registry's own connection, for [`Store::write_then_flush`]: the database is open and
/// migrated already. It never waits for a lock (the store thread holds none when it is used;
/// another process might, and then the write goes to that thread instead), does not fsync at
/// its commits (the store thread does, after the answer; SQLite still syncs the log's header
/// when it starts the log again, once per checkpoint) and never checkpoints (the store
/// thread does that too).
fn open_inline(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    // rusqlite's default is to wait 5 s, on the thread that serves every client.
    conn.busy_timeout(Duration::ZERO)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "cache_size", PAGE_CACHE_KIB)?;
    Ok(conn)
}

/// The write-ahead log SQLite keeps beside the database in WAL mode.
fn write_ahead_log(database: &Path) -> PathBuf {
    let mut log = database.as_os_str().to_owned();
    log.push("-wal");
    PathBuf::from(log)
}

/// SQLite's `synchronous` setting for the next commit, as the connection has it now. FULL
/// fsyncs the write-ahead log at every commit; NORMAL leaves the log in the OS's cache (a
/// crash of the process loses nothing, and SQLite fsyncs it before a checkpoint copies it into
/// the database), and the store thread fsyncs it itself after answering.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Synchronous {
    Full,
    Normal,
}

impl Synchronous {
    /// Sets the connection's setting to `to`, if it is not that already.
    fn set(&mut self, conn: &Connection, to: Synchronous) -> rusqlite::Result<()> {
        if *self != to {
            let value = match to {
                Synchronous::Full => "FULL",
                Synchronous::Normal => "NORMAL",
            };
            conn.pragma_update(None, "synchronous", value)?;
            *self = to;
        }
        Ok(())
    }
}

/// A session's saved aliases, in no order. With `ORDER BY position`, SQLite prepared the
/// statement again in every transaction (its re-prepare count rose by one per switch): a parse
/// and plan, some 70 µs on the test VM, on the path of every write of a session. A session has
/// a handful of aliases; they are sorted after reading instead.
const SAVED_ALIASES: &str =
    "SELECT position, provider_session_id FROM session_aliases WHERE session_id = ?1";

fn commit<'a>(
    conn: &mut Connection,
    writes: impl Iterator<Item = &'a Write>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    // Rows change in place (`ON CONFLICT … DO UPDATE`), not by `INSERT OR REPLACE`, which
    // deletes and re-inserts and so rewrote every index entry of the row: a switch logged four
    // pages to the WAL instead of two, a turn starting or ending four instead of two. Each
    // page is written and fsynced before the client hears back.
    {
        let mut upsert_session = tx.prepare_cached(
            "INSERT INTO sessions (id, provider, project, cwd, name, phase, activity,
                created_at, updated_at, last_active_at, parent_id, provider_session_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (id) DO UPDATE SET provider = excluded.provider,
                project = excluded.project, cwd = excluded.cwd, name = excluded.name,
                phase = excluded.phase, activity = excluded.activity,
                created_at = excluded.created_at, updated_at = excluded.updated_at,
                last_active_at = excluded.last_active_at, parent_id = excluded.parent_id,
                provider_session_id = excluded.provider_session_id",
        )?;
        let mut saved_aliases = tx.prepare_cached(SAVED_ALIASES)?;
        let mut clear_aliases =
            tx.prepare_cached("DELETE FROM session_aliases WHERE session_id = ?1")?;
        let mut add_alias = tx.prepare_cached(
            "INSERT INTO session_aliases (session_id, provider_session_id, position)
             VALUES (?1, ?2, ?3)",
        )?;
        let mut upsert_turn = tx.prepare_cached(
            "INSERT INTO turns (turn_id, session_id, queue_order, prompt, kind, status,
                created_at, started_at, ended_at, exit_code, error, worker_pid, worker_start_time)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (turn_id) DO UPDATE SET prompt = excluded.prompt,
                kind = excluded.kind, status = excluded.status,
                created_at = excluded.created_at, started_at = excluded.started_at,
                ended_at = excluded.ended_at, exit_code = excluded.exit_code,
                error = excluded.error, worker_pid = excluded.worker_pid,
                worker_start_time = excluded.worker_start_time",
        )?;
        // SQLite rewrites an index whose column an UPDATE sets, even to the same value; so the
        // upsert above leaves out `session_id` (a turn never moves) and `queue_order`, which
        // changes only when a turn is promoted or steered past and is set here when it does.
        let mut reorder_turn = tx.prepare_cached(
            "UPDATE turns SET queue_order = ?2 WHERE turn_id = ?1 AND queue_order != ?2",
        )?;
        let mut add_output = tx.prepare_cached(
            "INSERT OR REPLACE INTO turn_output (turn_id, chunk, stream, data)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut set_meta =
            tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
        let mut upsert_context = tx.prepare_cached(
            "INSERT INTO contexts (name, session_id, project, generation)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET session_id = excluded.session_id,
                project = excluded.project, generation = excluded.generation",
        )?;
        for write in writes {
            match write {
                Write::Session(s) => {
                    let id = s.id.to_string();
                    upsert_session.execute(params![
                        id,
                        &*s.provider,
                        &*s.project,
                        s.cwd,
                        s.name,
                        s.phase.as_str(),
                        s.activity.as_str(),
                        s.created_at as i64,
                        s.updated_at as i64,
                        s.last_active_at as i64,
                        s.parent_id.map(|p| p.to_string()),
                        s.provider_session_id,
                    ])?;
                    // Most writes of a session leave its aliases as they were; rewriting
                    // them anyway would log two more pages.
                    let mut saved = saved_aliases
                        .query_map(params![id], |row| {
                            Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
                        })?
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    saved.sort_unstable_by_key(|(position, _)| *position);
                    if !saved.iter().map(|(_, alias)| alias).eq(&s.aliases) {
                        clear_aliases.execute(params![id])?;
                        for (position, alias) in s.aliases.iter().enumerate() {
                            add_alias.execute(params![id, alias, position as i64])?;
                        }
                    }
                }
                Write::Turn(t) => {
                    upsert_turn.execute(params![
                        t.id.to_string(),
                        t.session.to_string(),
                        t.order,
                        t.prompt,
                        match t.kind {
                            TurnKind::Normal => "normal",
                            TurnKind::Steer => "steer",
                        },
                        t.status.as_str(),
                        t.created_at as i64,
                        t.started_at.map(|v| v as i64),
                        t.ended_at.map(|v| v as i64),
                        t.exit_code,
                        t.error,
                        t.worker_pid.map(i64::from),
                        t.worker_start_time.map(|v| v as i64),
                    ])?;
                    reorder_turn.execute(params![t.id.to_string(), t.order])?;
                }
                Write::Output {
                    turn,
                    chunk,
                    stream,
                    data,
                } => {
                    add_output.execute(params![turn.to_string(), *chunk as i64, stream, data])?;
                }
                Write::Meta { key, value } => {
                    set_meta.execute(params![key, *value as i64])?;
                }
                Write::Context(c) => {
                    upsert_context.execute(params![
                        c.name,
                        c.session.map(|s| s.to_string()),
                        c.project,
                        c.generation as i64,
                    ])?;
                }
            }
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(name: &str) -> Session {
        Session {
            id: SessionId::new_v4(),
            provider: "shell".into(),
            project: "/p".into(),
            cwd: "/p".into(),
            name: Some(name.into()),
            phase: Phase::Bound,
            activity: Activity::Idle,
            created_at: 1,
            updated_at: 2,
            last_active_at: 3,
            parent_id: Some(SessionId::new_v4()),
            provider_session_id: Some("p-2".into()),
            aliases: vec!["p-0".into(), "p-1".into()],
            queue_length: 0,
        }
    }

    #[test]
    fn committed_writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = session("a");
        let ctx = ContextRow {
            name: "default".into(),
            session: Some(s.id),
            project: Some("/p".into()),
            generation: 7,
        };
        {
            let (store, loaded) = Store::open(dir.path()).unwrap();
            assert!(loaded.sessions.is_empty());
            let commit = store.write(vec![Write::Session(s.clone()), Write::Context(ctx.clone())]);
            commit.blocking_recv().unwrap().unwrap();
        }
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.sessions, vec![s]);
        assert_eq!(loaded.contexts, vec![ctx]);
    }

    /// A switch with nothing queued is committed before `write_then_flush` returns (its
    /// answer is ready at once) and is in the file; one made while a write is queued waits
    /// its turn behind it, so the file never holds the later change without the earlier.
    #[test]
    fn a_switch_commits_at_once_when_nothing_is_queued_and_in_order_when_something_is() {
        let dir = tempfile::tempdir().unwrap();
        let s = session("a");
        let ctx = |generation| switched_to(&s, generation);
        {
            let mut store = store_holding(dir.path(), &s);
            let mut at_once = store.write_then_flush(vec![Write::Context(ctx(1))], Committer::Here);
            assert!(matches!(at_once.try_recv(), Ok(Ok(()))), "answered at once");
            let reader = Connection::open(dir.path().join(DB_FILE)).unwrap();
            let stored: i64 = reader
                .query_row("SELECT generation FROM contexts", [], |r| r.get(0))
                .unwrap();
            assert_eq!(stored, 1, "committed before the answer");
            drop(reader);
            // Made while an earlier write is queued (or, if the thread was quick, just
            // answered): either way it commits after that one.
            let earlier = store.write(vec![Write::Context(ctx(2))]);
            let later = store.write_then_flush(vec![Write::Context(ctx(3))], Committer::Here);
            later.blocking_recv().unwrap().unwrap();
            earlier.blocking_recv().unwrap().unwrap();
        }
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded.contexts, vec![ctx(3)]);
    }

    /// Switches made back to back on the registry's connection, as a script or a benchmark
    /// makes them, while the store thread checkpoints now and then: every checkpoint must
    /// let the log start again, so its file stops growing at about one checkpoint interval's
    /// worth of switches. (A checkpoint that let switches commit while it copied the log
    /// left it longer than it had copied, and the log then never started again: it grew by
    /// a page or two a switch without end.)
    #[test]
    fn the_log_stops_growing_under_back_to_back_switches() {
        let dir = tempfile::tempdir().unwrap();
        let s = session("a");
        let mut store = store_holding(dir.path(), &s);
        let interval = u64::from(INLINE_CHECKPOINT);
        let switches = interval * 20;
        for generation in 1..=switches {
            store
                .write_then_flush(
                    vec![Write::Context(switched_to(&s, generation))],
                    Committer::Here,
                )
                .blocking_recv()
                .unwrap()
                .unwrap();
        }
        let (end, page) = wal_end(dir.path());
        let frames = end / (page + 24);
        // A switch logs one page; one interval's worth, plus those made while a flush waits
        // its delay and a checkpoint runs, with room for a slow machine.
        assert!(
            frames <= 4 * interval,
            "the log holds {frames} frames after {switches} switches, a checkpoint every \
             {interval}"
        );
    }

    /// A store in `dir` with `s` saved in it.
    fn store_holding(dir: &Path, s: &Session) -> Store {
        let (store, _) = Store::open(dir).unwrap();
        store
            .write(vec![Write::Session(s.clone())])
            .blocking_recv()
            .unwrap()
            .unwrap();
        store
    }

    /// The default context switched to `s`, at `generation`.
    fn switched_to(s: &Session, generation: u64) -> ContextRow {
        ContextRow {
            name: "default".into(),
            session: Some(s.id),
            project: Some("/p".into()),
            generation,
        }
    }

    /// Where the WAL ends, and its page size (a big-endian u32 at byte 8 of its header).
    fn wal_end(dir: &Path) -> (u64, u64) {
        let wal = std::fs::read(dir.join(format!("{DB_FILE}-wal"))).unwrap();
        let page = u32::from_be_bytes(wal[8..12].try_into().unwrap());
        (wal.len() as u64, u64::from(page))
    }

    /// WAL frames (a 24-byte header, then a page) appended since the WAL ended at `before`.
    /// The WAL only grows until a checkpoint, 1,000 pages away from these tests.
    fn frames_since(dir: &Path, before: (u64, u64)) -> u64 {
        let (end, page) = wal_end(dir);
        let grown = end
            .checked_sub(before.0)
            .expect("the WAL restarted during the test");
        assert_eq!(grown % (page + 24), 0, "not whole frames: {grown} bytes");
        grown / (page + 24)
    }

    /// Every page a commit changes is written before the client hears back, and fsynced with
    /// the commit, so a switch must change only the two rows' pages, and a turn's status
    /// change only its row and the one index on status, whatever other indexes the tables
    /// have.
    #[test]
    fn a_change_rewrites_rows_in_place_and_logs_only_their_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let (mut s, mut other) = (session("a"), session("b"));
        let mut ctx = ContextRow {
            name: "default".into(),
            session: Some(s.id),
            project: Some("/p".into()),
            generation: 1,
        };
        let mut turn = Turn::queued(s.id, 1, "p".into(), 10);
        let mut ending = Turn::queued(s.id, 2, "p".into(), 10);
        let commit = |writes| store.write(writes).blocking_recv().unwrap().unwrap();
        commit(vec![
            Write::Session(s.clone()),
            Write::Session(other.clone()),
            Write::Context(ctx.clone()),
            Write::Turn(turn.clone()),
            Write::Turn(ending.clone()),
        ]);

        // A switch: the session's activity times and the context's pointer.
        let before = wal_end(dir.path());
        s.updated_at = 20;
        s.last_active_at = 20;
        ctx.generation = 2;
        commit(vec![Write::Session(s.clone()), Write::Context(ctx.clone())]);
        assert_eq!(frames_since(dir.path(), before), 2);

        // A turn starting.
        let before = wal_end(dir.path());
        turn.status = TurnStatus::Running;
        turn.started_at = Some(30);
        turn.worker_pid = Some(4242);
        commit(vec![Write::Turn(turn.clone())]);
        assert_eq!(frames_since(dir.path(), before), 2);
        // Promoted: its place in the queue changes too.
        turn.order = -5;
        commit(vec![Write::Turn(turn.clone())]);

        // A turn ending: it leaves the index of unsettled turns.
        let before = wal_end(dir.path());
        ending.status = TurnStatus::Completed;
        ending.ended_at = Some(40);
        ending.exit_code = Some(0);
        commit(vec![Write::Turn(ending.clone())]);
        assert_eq!(frames_since(dir.path(), before), 2);

        // Every column was updated, not just kept from the first insert; aliases reordered
        // on one session and all dropped on the other.
        s.cwd = "/p/sub".into();
        s.name = None;
        s.phase = Phase::Archived;
        s.provider_session_id = Some("p-3".into());
        s.aliases = vec!["p-1".into(), "p-2".into(), "p-0".into()];
        other.aliases.clear();
        commit(vec![
            Write::Session(s.clone()),
            Write::Session(other.clone()),
        ]);
        drop(store);
        let (_store, loaded) = Store::open(dir.path()).unwrap();
        let mut expected = vec![s.clone(), other];
        let mut got = loaded.sessions.clone();
        expected.sort_by_key(|x| x.id.to_string());
        got.sort_by_key(|x| x.id.to_string());
        assert_eq!(got, expected);
        assert_eq!(loaded.contexts, vec![ctx]);
        let [running] = loaded.unsettled.as_slice() else {
            panic!("one unsettled turn: {:?}", loaded.unsettled.len());
        };
        assert_eq!(running.id, turn.id);
        assert_eq!(running.status, TurnStatus::Running);
        assert_eq!(running.worker_pid, Some(4242));
        assert_eq!(running.order, -5);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let (log, _) = transcript(&conn, s.id, Selection::default())
            .unwrap()
            .unwrap();
        let ended = &log
            .iter()
            .find(|t| t.turn.turn_id == ending.id)
            .unwrap()
            .turn;
        assert_eq!(ended.status, TurnStatus::Completed);
        assert_eq!((ended.ended_at, ended.exit_code), (Some(40), Some(0)));
    }

    /// Every write of a session reads its saved aliases; that statement must stay prepared
    /// from one transaction to the next.
    #[test]
    fn writing_a_session_again_prepares_nothing_again() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let mut conn = open_connection(&dir.path().join(DB_FILE)).unwrap();
        let mut s = session("a");
        for at in 0..5 {
            s.updated_at = at;
            commit(&mut conn, [Write::Session(s.clone())].iter()).unwrap();
        }
        let stmt = conn.prepare_cached(SAVED_ALIASES).unwrap();
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::Run), 5);
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[test]
    fn garbage_file_is_refused_with_the_way_out_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        std::fs::write(&path, b"this is not sqlite, it is a shopping list").unwrap();
        let err = Store::open(dir.path()).err().unwrap();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("mv "), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"this is not sqlite, it is a shopping list"
        );
    }

    #[test]
    fn database_from_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(dir.path()).err().unwrap();
        assert!(err.contains("newer sessiond"), "{err}");
        assert!(err.contains("99"), "{err}");
    }
}
