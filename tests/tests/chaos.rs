//! Chaos: the daemon dies at random moments while clients create, rename, switch, submit,
//! steer, cancel, pause and resume, and after every restart nothing it acknowledged is missing,
//! no turn ran twice, no worker outlived the restart, and no two workers ever ran one session
//! at once. Separate cases kill it during start-up, during the settlement of turns a dead
//! daemon left running, and during a graceful shutdown.
//!
//! Every random choice (the workload, the kill moments) comes from one seed, printed at the
//! start and in every failure: `SESSIOND_CHAOS_SEED=S cargo test -p sessiond-tests --test chaos`
//! repeats a run's choices (thread and process timing still varies). `SESSIOND_CHAOS_ROUNDS`
//! sets how many kills the main test makes (default 8).
//!
//! How a turn is known to have run: every prompt appends one line to `ran/TURN_ID` in the
//! sandbox (the worker's environment carries `SESSIOND_TURN_ID`), so a file with two lines is a
//! turn that ran twice, and a file for a turn still queued is a turn that ran unrecorded.
//! Workers are found in /proc by the `SESSIOND_PROJECT` in their environment, which names this
//! sandbox's project directories, so parallel tests never see each other's.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sessiond_client::{Client, ClientError, ConnectOptions};
use sessiond_proto::methods::{
    Cancel, ContextParams, Create, CreateParams, Current, List, ListParams, Log, LogParams, Pause,
    Queue, Rename, RenameParams, Resume, SessionParams, Steer, SteerParams, Submit, SubmitParams,
    Subscribe, SubscribeParams, Switch, TurnParams,
};
use sessiond_proto::session::{SessionId, TurnId, TurnStatus};
use sessiond_proto::ErrorCode;
use sessiond_tests::report::{thousands, Row};
use sessiond_tests::{Daemon, Sandbox};

/// Concurrent clients in a round, one connection each.
const CLIENTS: usize = 6;
/// Contexts the clients switch.
const CONTEXTS: [&str; 4] = ["ctx0", "ctx1", "ctx2", "ctx3"];
/// Project directories sessions are spread over.
const PROJECTS: usize = 3;
/// What a restart adds to every context's generation (PROTOCOL.md, "contexts").
const GENERATION_STEP: u64 = 1 << 20;
/// Queued or running turns a client lets one session hold before it stops adding more, so the
/// queues (and the final drain) stay short.
const MAX_UNSETTLED_PER_SESSION: usize = 4;
/// Short grace periods keep settlement after a kill fast; the turns here never ignore signals.
const CONFIG: &str = "[daemon]\nmax_concurrent_turns = 4\ninterrupt_grace_ms = 100\n\
                      terminate_grace_ms = 300\nshutdown_grace_ms = 2000\n";
/// How long a daemon may take to accept after being started (settlement may wait for workers).
const START_WAIT: Duration = Duration::from_secs(20);

// ---- Seed and random choices ----------------------------------------------------------------

/// The run's seed: `SESSIOND_CHAOS_SEED` (decimal or 0x-hex) or one made from the clock.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        if let Ok(text) = std::env::var("SESSIOND_CHAOS_SEED") {
            let text = text.trim();
            if !text.is_empty() {
                let parsed = match text.strip_prefix("0x") {
                    Some(hex) => u64::from_str_radix(hex, 16),
                    None => text.parse(),
                };
                return parsed.unwrap_or_else(|e| panic!("SESSIOND_CHAOS_SEED={text:?}: {e}"));
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64;
        // Fits in a JavaScript-safe integer, so it can be pasted anywhere.
        (nanos ^ (u64::from(std::process::id()) << 20)) & ((1 << 53) - 1)
    })
}

fn rounds() -> usize {
    std::env::var("SESSIOND_CHAOS_ROUNDS")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.trim().parse().expect("SESSIOND_CHAOS_ROUNDS is a number"))
        .unwrap_or(8)
}

/// Prints the seed for one test and returns that test's generator, and a note that prints the
/// seed again if the test fails, whatever failed (an assertion, an `expect`, a timeout).
fn announce(test: &'static str, salt: u64) -> (u64, Rng, SeedNote) {
    let seed = seed();
    eprintln!("chaos {test}: seed {seed} (repeat with SESSIOND_CHAOS_SEED={seed})");
    (
        seed,
        Rng(seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        SeedNote { test, seed },
    )
}

/// Repeats the seed next to a failure.
struct SeedNote {
    test: &'static str,
    seed: u64,
}

impl Drop for SeedNote {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "chaos {}: FAILED with seed {} (repeat with SESSIOND_CHAOS_SEED={})",
                self.test, self.seed, self.seed
            );
        }
    }
}

/// SplitMix64: small, seedable, good enough to pick operations and delays.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An independent generator, so one client's choices do not depend on another's count.
    fn fork(&mut self, salt: u64) -> Rng {
        Rng(self.next() ^ salt.wrapping_mul(0xD6E8_FEB8_6659_FD93))
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize].clone())
    }
}

// ---- Processes --------------------------------------------------------------------------------

/// A process working for one of the sandbox's sessions: a worker or something it started.
#[derive(Clone, Debug)]
struct WorkerProc {
    pid: i32,
    pgid: i32,
    start: u64,
    session: String,
    turn: String,
}

impl WorkerProc {
    /// A worker leads its own process group; what it starts does not.
    fn is_leader(&self) -> bool {
        self.pid == self.pgid
    }

    fn alive(&self) -> bool {
        alive_as(self.pid, self.start)
    }
}

/// State, process group and start time (fields 3, 5 and 22 of /proc/PID/stat).
fn stat_of(pid: i32) -> Option<(char, i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and ')': count from the last ')'.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    Some((
        state,
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// Whether the process that had this pid and start time still runs (a zombie has ended; a
/// reused pid is another process).
fn alive_as(pid: i32, start: u64) -> bool {
    matches!(stat_of(pid), Some((state, _, started)) if state != 'Z' && started == start)
}

/// Every live process whose environment names a project under `root` (which ends in '/').
fn sandbox_processes(root: &str) -> Vec<WorkerProc> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let (mut project, mut session, mut turn) = (None, None, None);
        for var in environ.split(|b| *b == 0) {
            let text = || String::from_utf8_lossy(var).into_owned();
            if var.starts_with(b"SESSIOND_PROJECT=") {
                project = Some(text()["SESSIOND_PROJECT=".len()..].to_string() + "/");
            } else if var.starts_with(b"SESSIOND_SESSION_ID=") {
                session = Some(text()["SESSIOND_SESSION_ID=".len()..].to_string());
            } else if var.starts_with(b"SESSIOND_TURN_ID=") {
                turn = Some(text()["SESSIOND_TURN_ID=".len()..].to_string());
            }
        }
        let (Some(project), Some(session)) = (project, session) else {
            continue;
        };
        if !project.starts_with(root) {
            continue;
        }
        let Some((state, pgid, start)) = stat_of(pid) else {
            continue;
        };
        if state == 'Z' {
            continue;
        }
        found.push(WorkerProc {
            pid,
            pgid,
            start,
            session,
            turn: turn.unwrap_or_default(),
        });
    }
    found
}

/// What a non-blocking shared lock on a session's lock file found.
enum LockProbe {
    /// Someone holds it exclusively: the session is owned.
    Held,
    /// Nobody holds the file the path names.
    Free,
    /// There is no lock file.
    Missing,
    /// The file was replaced while being probed (an owner released and another claimed).
    Replaced,
}

/// Probes `STATE/sessions/ID.lock` the way the daemon's `inspect` does: a shared lock, given
/// back at once, so a claim racing it is delayed by an instant at most (claims retry for
/// 100 ms).
fn probe_lock(sessions_dir: &Path, session: &str) -> LockProbe {
    let path = sessions_dir.join(format!("{session}.lock"));
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LockProbe::Missing,
        Err(_) => return LockProbe::Replaced,
    };
    match file.try_lock_shared() {
        Err(std::fs::TryLockError::WouldBlock) => LockProbe::Held,
        Err(std::fs::TryLockError::Error(_)) => LockProbe::Replaced,
        Ok(()) => {
            use std::os::unix::fs::MetadataExt;
            let ours = file.metadata().map(|m| (m.dev(), m.ino())).ok();
            let named = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
            if ours.is_some() && ours == named {
                LockProbe::Free
            } else {
                LockProbe::Replaced
            }
        }
    }
}

#[derive(Default)]
struct SamplerState {
    /// Worker leaders seen since the last `take_seen`: (pid, start time) → session, turn.
    seen: HashMap<(i32, u64), (String, String)>,
    violations: Vec<String>,
    samples: u64,
    /// The most workers seen alive in one sample.
    most_at_once: usize,
    /// Probes that found a running worker's session lock held, as it must be.
    locks_held: u64,
    /// Probes that found it free or gone because the worker had just ended (it was not alive
    /// after the probe) or its file was being replaced.
    probes_at_exit: u64,
    /// Worker sightings (one per worker per sample).
    sightings: u64,
}

/// Samples the process table all through a test: at most one worker per session at any
/// moment, and every worker holds its session's lock.
struct Sampler {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<SamplerState>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(root: String, sessions_dir: PathBuf, seed: u64) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(SamplerState::default()));
        let thread = {
            let (stop, state) = (stop.clone(), state.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sample(&root, &sessions_dir, &state, seed);
                    std::thread::sleep(Duration::from_millis(8));
                }
            })
        };
        Sampler {
            stop,
            state,
            thread: Some(thread),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SamplerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The workers seen since the last call.
    fn take_seen(&self) -> Vec<WorkerProc> {
        std::mem::take(&mut self.state().seen)
            .into_iter()
            .map(|((pid, start), (session, turn))| WorkerProc {
                pid,
                pgid: pid,
                start,
                session,
                turn,
            })
            .collect()
    }

    fn assert_clean(&self, tag: &str) {
        let state = self.state();
        assert!(
            state.violations.is_empty(),
            "{tag}: the process sampler saw {} violations:\n{}",
            state.violations.len(),
            state.violations.join("\n")
        );
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sample(root: &str, sessions_dir: &Path, state: &Mutex<SamplerState>, seed: u64) {
    let leaders: Vec<WorkerProc> = sandbox_processes(root)
        .into_iter()
        .filter(WorkerProc::is_leader)
        .collect();
    let mut violations = Vec::new();
    let mut by_session: HashMap<&str, Vec<&WorkerProc>> = HashMap::new();
    for leader in &leaders {
        by_session.entry(&leader.session).or_default().push(leader);
    }
    for (session, workers) in &by_session {
        for (i, a) in workers.iter().enumerate() {
            for b in &workers[i + 1..] {
                // Reading /proc is not atomic: one may have ended before the other started.
                // Alive before and after b was seen alive means both ran at one moment.
                if a.alive() && b.alive() && a.alive() {
                    violations.push(format!(
                        "seed {seed}: two workers ran session {session} at once: pid {} (turn \
                         {}) and pid {} (turn {})",
                        a.pid, a.turn, b.pid, b.turn
                    ));
                }
            }
        }
    }
    let (mut held, mut at_exit) = (0, 0);
    for leader in &leaders {
        let probe = probe_lock(sessions_dir, &leader.session);
        // Alive when listed and alive after the probe: alive during it.
        let problem = match probe {
            LockProbe::Held => {
                held += 1;
                None
            }
            LockProbe::Replaced => {
                at_exit += 1;
                None
            }
            LockProbe::Missing => Some("its lock file does not exist"),
            LockProbe::Free => Some("nobody holds its lock file"),
        };
        if let Some(problem) = problem {
            if !leader.alive() {
                at_exit += 1;
            } else {
                violations.push(format!(
                    "seed {seed}: worker pid {} of session {} (turn {}) runs but {problem}",
                    leader.pid, leader.session, leader.turn
                ));
            }
        }
    }
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    state.samples += 1;
    state.sightings += leaders.len() as u64;
    state.locks_held += held;
    state.probes_at_exit += at_exit;
    state.most_at_once = state.most_at_once.max(leaders.len());
    for leader in leaders {
        state.seen.insert(
            (leader.pid, leader.start),
            (leader.session.clone(), leader.turn.clone()),
        );
    }
    state.violations.extend(violations);
}

/// Waits up to `grace` for the given processes to end; returns those still running then.
fn still_running_after(procs: &[WorkerProc], grace: Duration) -> Vec<WorkerProc> {
    let deadline = Instant::now() + grace;
    loop {
        let left: Vec<WorkerProc> = procs.iter().filter(|p| p.alive()).cloned().collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- Daemons ----------------------------------------------------------------------------------

/// Starts `sessiond` for the sandbox with its log appended to `log` (a pipe nobody reads could
/// fill and stall it), without waiting.
fn spawn_daemon(sb: &Sandbox, log: &Path) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open daemon log");
    let child = sb
        .sessiond()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn sessiond");
    Daemon { child }
}

/// The pid in the welcome of whoever answers on the socket, if anyone does.
fn welcome_pid(socket: &Path) -> Option<u32> {
    use sessiond_proto::envelope::{Hello, Welcome};
    use sessiond_proto::frame;
    use std::io::Write;
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let hello = Hello::new(
        sessiond_proto::PROTOCOL_VERSION,
        "chaos readiness probe",
        Some(std::process::id()),
    );
    stream.write_all(&frame::encode(&hello).ok()?).ok()?;
    let payload = frame::read_frame(&mut stream, 1 << 20).ok()??;
    frame::decode::<Welcome>(&payload).ok().map(|w| w.pid)
}

/// Starts `sessiond` and waits until it answers on the socket. A connection alone does not
/// prove that: a worker the dead daemon had forked but not yet exec'd still holds the old
/// listening socket, and the kernel accepts connections on it until the exec closes it.
fn start_daemon(sb: &Sandbox, log: &Path, tag: &str) -> Daemon {
    let mut daemon = spawn_daemon(sb, log);
    let deadline = Instant::now() + START_WAIT;
    while welcome_pid(&sb.socket()) != Some(daemon.pid() as u32) {
        if let Some(status) = daemon.child.try_wait().expect("try_wait") {
            panic!(
                "{tag}: sessiond exited with {status} before accepting; its log:\n{}",
                log_tail(log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{tag}: sessiond did not accept within {START_WAIT:?}; its log:\n{}",
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon
}

/// How often `text` occurs in a log.
fn count_in(log: &Path, text: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(text)
        .count()
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// SIGKILL, ignoring a daemon that is already gone.
fn sigkill(daemon: &Daemon) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(daemon.pid()), Signal::SIGKILL);
}

/// Asks the daemon to stop and waits for a clean exit.
fn stop_gracefully(mut daemon: Daemon, tag: &str) {
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait();
    assert_eq!(status.code(), Some(0), "{tag}: a graceful stop failed");
}

fn options(sb: &Sandbox) -> ConnectOptions {
    let mut opts = sb.connect_options();
    // A client must never start a daemon of its own after a kill.
    opts.autostart = false;
    opts
}

// ---- The database ----------------------------------------------------------------------------

/// A turn as the database held it at a kill.
#[derive(Clone, Debug)]
struct StoredTurn {
    session: SessionId,
    status: String,
    worker: Option<(i32, u64)>,
}

/// What the database held when the daemon died, read from a copy so the restarted daemon
/// recovers from exactly the file the dead one left.
struct CrashImage {
    integrity: String,
    sessions: HashSet<SessionId>,
    turns: HashMap<TurnId, StoredTurn>,
}

/// Copies the database (and its write-ahead log: the committed but not yet checkpointed
/// transactions live there) into a fresh directory, checks it, and reads it. Only while no
/// daemon runs.
fn crash_image(sb: &Sandbox, scratch: &Path) -> CrashImage {
    std::fs::create_dir_all(scratch).unwrap();
    let copy = scratch.join("sessiond.db");
    std::fs::copy(sb.state.join("sessiond.db"), &copy).expect("copy the database");
    let wal = sb.state.join("sessiond.db-wal");
    if wal.exists() {
        std::fs::copy(&wal, scratch.join("sessiond.db-wal")).expect("copy the WAL");
    }
    let conn = rusqlite::Connection::open(&copy).expect("open the copied database");
    let integrity = integrity_of(&conn);
    let mut sessions = HashSet::new();
    let mut stmt = conn.prepare("SELECT id FROM sessions").unwrap();
    for id in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
        sessions.insert(id.unwrap().parse().expect("a session id"));
    }
    let mut turns = HashMap::new();
    let mut stmt = conn
        .prepare("SELECT turn_id, session_id, status, worker_pid, worker_start_time FROM turns")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (turn, session, status, pid, start) = row.unwrap();
        turns.insert(
            turn.parse().expect("a turn id"),
            StoredTurn {
                session: session.parse().expect("a session id"),
                status,
                worker: pid.zip(start).map(|(p, s)| (p as i32, s as u64)),
            },
        );
    }
    CrashImage {
        integrity,
        sessions,
        turns,
    }
}

/// `PRAGMA integrity_check`: "ok", or every problem it lists.
fn integrity_of(conn: &rusqlite::Connection) -> String {
    let mut stmt = conn.prepare("PRAGMA integrity_check").unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.join("; ")
}

/// Integrity of the live file, with no daemon running.
fn integrity_of_file(db: &Path) -> String {
    integrity_of(&rusqlite::Connection::open(db).expect("open the database"))
}

/// Marker files: turn id → how many times it ran.
fn runs_by_turn(ran: &Path) -> HashMap<String, usize> {
    let mut runs = HashMap::new();
    for entry in std::fs::read_dir(ran)
        .expect("read the marker directory")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".term") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        runs.insert(name, text.lines().count());
    }
    runs
}

/// A shell prompt that records one run of its turn, with or without a pause around it. Most
/// are quick, so queues drain; a few take longer than the settlement's grace, so a worker the
/// restarted daemon failed to end would still be there to be found.
fn marker_prompt(rng: &mut Rng, ran: &Path) -> String {
    let mark = format!("echo ran >> {}/$SESSIOND_TURN_ID", ran.display());
    match rng.below(100) {
        0..=59 => mark,
        60..=79 => format!("{mark}; sleep 0.{}", rng.between(1, 3)),
        80..=95 => format!("sleep 0.{}; {mark}", rng.between(1, 2)),
        _ => format!("{mark}; sleep 0.9"),
    }
}

// ---- What the clients were told ---------------------------------------------------------------

/// How a request ended, for the record.
enum Outcome<T> {
    /// Answered with success: the change is durable.
    Acked(T),
    /// Answered with an error: nothing changed.
    Refused(String),
    /// No answer (the daemon died or shut down first): it may or may not have happened. True
    /// when the daemon said it was shutting down (PROTOCOL.md: then it did not run).
    CutOff(bool),
}

fn outcome<T>(result: Result<T, ClientError>) -> Outcome<T> {
    match result {
        Ok(value) => Outcome::Acked(value),
        Err(ClientError::Remote { code, message }) if code != ErrorCode::SHUTTING_DOWN => {
            Outcome::Refused(format!("{code:?}: {message}"))
        }
        Err(ClientError::Remote { .. }) => Outcome::CutOff(true),
        Err(_) => Outcome::CutOff(false),
    }
}

/// What the owning client last got acknowledged for a session's queue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hold {
    /// A pause was acknowledged and no resume sent since: the queue must come back held.
    Paused,
    /// Anything else (resumed, never paused, or a request cut off).
    Unknown,
}

struct SessionRec {
    /// The client that renames, pauses and resumes it (others only submit and switch), so
    /// "the last acknowledged" name and hold are well defined.
    owner: usize,
    name: String,
    /// Renames sent but not answered when the daemon died.
    pending_names: Vec<String>,
    hold: Hold,
}

#[derive(Default)]
struct ContextRec {
    /// The acknowledged switch with the highest generation.
    acked: Option<(u64, SessionId)>,
    /// Targets of switches sent but not (yet) answered.
    in_flight: Vec<SessionId>,
    /// The highest generation seen in any answer or event.
    max_seen: u64,
}

struct TurnRec {
    session: SessionId,
    /// A cancel was acknowledged while it was queued: it must never run.
    cancelled_queued: bool,
    /// The database held it as queued at a kill: it must wait for a resume, then run once.
    queued_at_a_kill: bool,
}

#[derive(Default)]
struct Ledger {
    /// Acknowledged sessions, in creation order.
    order: Vec<SessionId>,
    sessions: HashMap<SessionId, SessionRec>,
    contexts: BTreeMap<String, ContextRec>,
    /// Acknowledged turns.
    turns: HashMap<TurnId, TurnRec>,
    /// Turns known settled (an event, or a check after a restart).
    settled: HashSet<TurnId>,
    /// Acknowledged changes, by method.
    acked: BTreeMap<&'static str, u64>,
    /// Requests the daemon refused (pausing a paused queue, cancelling a settled turn).
    refused: u64,
    /// Requests cut off by a kill or a shutdown.
    cut_off: u64,
    /// Of those, the ones answered `shutting_down`.
    shutting_down: u64,
    /// Refusals of requests that must succeed.
    unexpected: Vec<String>,
}

impl Ledger {
    fn ack(&mut self, method: &'static str) {
        *self.acked.entry(method).or_default() += 1;
    }

    fn cut(&mut self, told_shutting_down: bool) {
        self.cut_off += 1;
        if told_shutting_down {
            self.shutting_down += 1;
        }
    }

    fn acked_total(&self) -> u64 {
        self.acked.values().sum()
    }

    fn unsettled_in(&self, session: SessionId) -> usize {
        self.turns
            .iter()
            .filter(|(id, t)| t.session == session && !self.settled.contains(id))
            .count()
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every client of a test shares.
struct Workload {
    projects: Vec<String>,
    ran: PathBuf,
}

// ---- Events -----------------------------------------------------------------------------------

/// What one subscribed connection saw during one daemon's life.
#[derive(Default, Debug)]
struct EventRecord {
    /// The `seq` the subscription started after.
    after: u64,
    seqs: Vec<u64>,
    /// Context → the generations of its `session_switched` events, in arrival order.
    generations: BTreeMap<String, Vec<u64>>,
}

#[derive(serde::Deserialize)]
struct AnyEvent {
    seq: u64,
    event: String,
    #[serde(default)]
    data: serde_json::Value,
}

/// Subscribes to everything; the task records events until the connection ends.
async fn subscriber(
    opts: &ConnectOptions,
    ledger: Shared,
) -> (tokio::task::JoinHandle<EventRecord>, u64) {
    let client = Client::connect(opts).await.expect("connect the subscriber");
    let mut events = client.take_events().expect("the event stream");
    let subscribed = client
        .call::<Subscribe>(SubscribeParams::default())
        .await
        .expect("subscribe");
    let after = subscribed.seq;
    let task = tokio::spawn(async move {
        // Owned here: dropping the client would end its reader.
        let _client = client;
        let mut record = EventRecord {
            after: subscribed.seq,
            ..Default::default()
        };
        while let Some(payload) = events.recv().await {
            let event: AnyEvent = sessiond_proto::frame::decode(&payload).expect("an event");
            record.seqs.push(event.seq);
            match event.event.as_str() {
                "turn_settled" => {
                    if let Some(turn) = event.data["turn"].as_str().and_then(|t| t.parse().ok()) {
                        lock(&ledger).settled.insert(turn);
                    }
                }
                "session_switched" => {
                    if let (Some(context), Some(generation)) = (
                        event.data["context"].as_str(),
                        event.data["generation"].as_u64(),
                    ) {
                        record
                            .generations
                            .entry(context.to_string())
                            .or_default()
                            .push(generation);
                        let mut ledger = lock(&ledger);
                        let rec = ledger.contexts.entry(context.to_string()).or_default();
                        rec.max_seen = rec.max_seen.max(generation);
                    }
                }
                _ => {}
            }
        }
        record
    });
    (task, after)
}

/// Event order within a connection: `seq` strictly increasing and above the subscription's
/// start; each context's generations strictly increasing.
fn check_event_order(record: &EventRecord, tag: &str) {
    if let Some(first) = record.seqs.first() {
        assert!(
            *first > record.after,
            "{tag}: first event seq {first} not above the subscription's {}",
            record.after
        );
    }
    for pair in record.seqs.windows(2) {
        assert!(
            pair[0] < pair[1],
            "{tag}: event seq went from {} to {} on one connection",
            pair[0],
            pair[1]
        );
    }
    for (context, generations) in &record.generations {
        for pair in generations.windows(2) {
            assert!(
                pair[0] < pair[1],
                "{tag}: context {context}'s generation went from {} to {} in its events",
                pair[0],
                pair[1]
            );
        }
    }
}

// ---- The clients ------------------------------------------------------------------------------

/// One client: a connection doing random operations until the daemon goes away.
async fn client_loop(
    me: usize,
    round: usize,
    opts: ConnectOptions,
    ledger: Shared,
    work: Arc<Workload>,
    mut rng: Rng,
) {
    let Ok(client) = Client::connect(&opts).await else {
        return;
    };
    // Half the rounds start by resuming this client's held queues, so turns a kill left
    // queued run later (and must run once).
    if rng.chance(50) {
        let mine: Vec<SessionId> = {
            let l = lock(&ledger);
            l.order
                .iter()
                .filter(|s| l.sessions[s].owner == me)
                .copied()
                .collect()
        };
        for session in mine {
            let queue = client
                .call::<Queue>(params_for(session))
                .await
                .map(|q| q.paused.is_some());
            match queue {
                Ok(true) => {
                    if !resume(&client, &ledger, session).await {
                        return;
                    }
                }
                Ok(false) => {}
                Err(_) => return,
            }
        }
    }
    let mut made = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(rng.between(2, 30))).await;
        let known = lock(&ledger).order.len();
        let roll = rng.below(100);
        let going = if made == 0 || known < 3 || roll < 8 {
            made += 1;
            create(&client, &ledger, &work, me, round, made, &mut rng).await
        } else if roll < 16 {
            rename(&client, &ledger, me, round, &mut rng).await
        } else if roll < 30 {
            switch(&client, &ledger, me, round, &mut rng).await
        } else if roll < 62 {
            submit(&client, &ledger, &work, &mut rng, false).await
        } else if roll < 70 {
            submit(&client, &ledger, &work, &mut rng, true).await
        } else if roll < 78 {
            cancel(&client, &ledger, &mut rng).await
        } else if roll < 85 {
            pause(&client, &ledger, me, &mut rng).await
        } else {
            match own_session(&ledger, me, &mut rng) {
                Some(session) => resume(&client, &ledger, session).await,
                None => true,
            }
        };
        if !going {
            return;
        }
    }
}

fn params_for(session: SessionId) -> SessionParams {
    SessionParams {
        session: Some(session.to_string()),
        ..Default::default()
    }
}

fn own_session(ledger: &Shared, me: usize, rng: &mut Rng) -> Option<SessionId> {
    let l = lock(ledger);
    let mine: Vec<SessionId> = l
        .order
        .iter()
        .filter(|s| l.sessions[s].owner == me)
        .copied()
        .collect();
    rng.pick(&mine)
}

/// Records a refusal of a request that must succeed.
fn unexpected(ledger: &Shared, what: String) {
    lock(ledger).unexpected.push(what);
}

async fn create(
    client: &Client,
    ledger: &Shared,
    work: &Workload,
    me: usize,
    round: usize,
    n: usize,
    rng: &mut Rng,
) -> bool {
    let name = format!("r{round}c{me}s{n}");
    let project = rng.pick(&work.projects).expect("projects");
    let result = client
        .call::<Create>(CreateParams {
            project,
            provider: "shell".into(),
            name: Some(name.clone()),
            cwd: None,
        })
        .await;
    match outcome(result) {
        Outcome::Acked(info) => {
            let mut l = lock(ledger);
            l.order.push(info.id);
            l.sessions.insert(
                info.id,
                SessionRec {
                    owner: me,
                    name,
                    pending_names: Vec::new(),
                    hold: Hold::Unknown,
                },
            );
            l.ack("create");
            true
        }
        Outcome::Refused(why) => {
            unexpected(ledger, format!("create {name}: {why}"));
            true
        }
        Outcome::CutOff(told) => {
            lock(ledger).cut(told);
            false
        }
    }
}

async fn rename(client: &Client, ledger: &Shared, me: usize, round: usize, rng: &mut Rng) -> bool {
    let Some(session) = own_session(ledger, me, rng) else {
        return true;
    };
    let name = format!("r{round}c{me}n{}", rng.below(1 << 40));
    lock(ledger)
        .sessions
        .get_mut(&session)
        .unwrap()
        .pending_names
        .push(name.clone());
    let result = client
        .call::<Rename>(RenameParams {
            session: Some(session.to_string()),
            project: None,
            context: None,
            name: name.clone(),
        })
        .await;
    let mut l = lock(ledger);
    match outcome(result) {
        Outcome::Acked(_) => {
            let rec = l.sessions.get_mut(&session).unwrap();
            rec.name = name;
            rec.pending_names.clear();
            l.ack("rename");
            true
        }
        Outcome::Refused(why) => {
            l.sessions.get_mut(&session).unwrap().pending_names.pop();
            l.unexpected
                .push(format!("rename {session} to {name}: {why}"));
            true
        }
        Outcome::CutOff(told) => {
            if told {
                // Not run: the daemon said so before closing.
                l.sessions.get_mut(&session).unwrap().pending_names.pop();
            }
            l.cut(told);
            false
        }
    }
}

async fn switch(client: &Client, ledger: &Shared, me: usize, round: usize, rng: &mut Rng) -> bool {
    // Mostly the shared contexts; sometimes one never switched before, whose first switch is
    // the one a restart must not forget it showed (its generation must not be handed out
    // again).
    let context = if rng.chance(25) {
        format!("r{round}c{me}x{}", rng.below(1 << 40))
    } else {
        rng.pick(&CONTEXTS).unwrap().to_string()
    };
    let target = {
        let mut l = lock(ledger);
        let Some(target) = rng.pick(&l.order) else {
            return true;
        };
        l.contexts
            .entry(context.clone())
            .or_default()
            .in_flight
            .push(target);
        target
    };
    let result = client
        .call::<Switch>(SessionParams {
            session: Some(target.to_string()),
            project: None,
            context: Some(context.clone()),
        })
        .await;
    let mut l = lock(ledger);
    // An error answer, `shutting_down` included, means it did not happen (PROTOCOL.md,
    // section 4); only a lost connection leaves it open.
    let settled = !matches!(
        result,
        Err(ClientError::Disconnected(_) | ClientError::Timeout(_))
    );
    let answer = outcome(result);
    let rec = l.contexts.get_mut(&context).unwrap();
    if settled {
        if let Some(i) = rec.in_flight.iter().position(|s| *s == target) {
            rec.in_flight.remove(i);
        }
    }
    match answer {
        Outcome::Acked(pointer) => {
            if rec.acked.is_none_or(|(g, _)| pointer.generation > g) {
                rec.acked = Some((pointer.generation, target));
            }
            rec.max_seen = rec.max_seen.max(pointer.generation);
            l.ack("switch");
            true
        }
        Outcome::Refused(why) => {
            l.unexpected
                .push(format!("switch {context} to {target}: {why}"));
            true
        }
        Outcome::CutOff(told) => {
            l.cut(told);
            false
        }
    }
}

async fn submit(
    client: &Client,
    ledger: &Shared,
    work: &Workload,
    rng: &mut Rng,
    steer: bool,
) -> bool {
    let session = {
        let l = lock(ledger);
        let Some(session) = rng.pick(&l.order) else {
            return true;
        };
        if l.unsettled_in(session) >= MAX_UNSETTLED_PER_SESSION {
            return true;
        }
        session
    };
    let prompt = marker_prompt(rng, &work.ran);
    let no_interrupt = steer && rng.chance(30);
    let (result, method) = if steer {
        let result = client
            .call::<Steer>(SteerParams {
                session: Some(session.to_string()),
                prompt,
                no_interrupt,
                ..Default::default()
            })
            .await;
        (result, "steer")
    } else {
        let result = client
            .call::<Submit>(SubmitParams {
                session: Some(session.to_string()),
                prompt,
                ..Default::default()
            })
            .await;
        (result, "submit")
    };
    let mut l = lock(ledger);
    match outcome(result) {
        Outcome::Acked(submitted) => {
            l.turns.insert(
                submitted.turn.turn_id,
                TurnRec {
                    session,
                    cancelled_queued: false,
                    queued_at_a_kill: false,
                },
            );
            l.ack(method);
            true
        }
        // A steer that would stop the running turn of a held queue is refused: nothing would
        // run after it. So is one while that turn is being cancelled (which pauses the queue).
        // Whether either holds then depends on other clients' pauses and cancels, so the
        // refusal is expected, and must change nothing.
        Outcome::Refused(why)
            if steer
                && !no_interrupt
                && (why.contains("queue is paused") || why.contains("is being cancelled")) =>
        {
            l.refused += 1;
            true
        }
        Outcome::Refused(why) => {
            l.unexpected.push(format!("{method} to {session}: {why}"));
            true
        }
        Outcome::CutOff(told) => {
            l.cut(told);
            false
        }
    }
}

async fn cancel(client: &Client, ledger: &Shared, rng: &mut Rng) -> bool {
    let turn = {
        let l = lock(ledger);
        let open: Vec<TurnId> = l
            .turns
            .keys()
            .filter(|t| !l.settled.contains(t))
            .copied()
            .collect();
        let Some(turn) = rng.pick(&open) else {
            return true;
        };
        turn
    };
    let result = client
        .call::<Cancel>(TurnParams {
            turn: turn.to_string(),
        })
        .await;
    let mut l = lock(ledger);
    match outcome(result) {
        Outcome::Acked(info) => {
            if info.status == TurnStatus::Cancelled {
                l.turns.get_mut(&turn).unwrap().cancelled_queued = true;
            }
            l.ack("cancel");
            true
        }
        // It settled meanwhile.
        Outcome::Refused(_) => {
            l.refused += 1;
            true
        }
        Outcome::CutOff(told) => {
            l.cut(told);
            false
        }
    }
}

async fn pause(client: &Client, ledger: &Shared, me: usize, rng: &mut Rng) -> bool {
    let Some(session) = own_session(ledger, me, rng) else {
        return true;
    };
    let before = lock(ledger).sessions[&session].hold;
    let result = client.call::<Pause>(params_for(session)).await;
    let mut l = lock(ledger);
    match outcome(result) {
        Outcome::Acked(_) => {
            l.sessions.get_mut(&session).unwrap().hold = Hold::Paused;
            l.ack("pause");
            true
        }
        // Already held (by a cancel, a kill, or this client).
        Outcome::Refused(_) => {
            l.sessions.get_mut(&session).unwrap().hold = before;
            l.refused += 1;
            true
        }
        Outcome::CutOff(told) => {
            l.sessions.get_mut(&session).unwrap().hold = Hold::Unknown;
            l.cut(told);
            false
        }
    }
}

async fn resume(client: &Client, ledger: &Shared, session: SessionId) -> bool {
    // From the moment it is sent, the queue may be released.
    lock(ledger).sessions.get_mut(&session).unwrap().hold = Hold::Unknown;
    let result = client.call::<Resume>(params_for(session)).await;
    let mut l = lock(ledger);
    match outcome(result) {
        Outcome::Acked(_) => {
            l.ack("resume");
            true
        }
        // Not held.
        Outcome::Refused(_) => {
            l.refused += 1;
            true
        }
        Outcome::CutOff(told) => {
            l.cut(told);
            false
        }
    }
}

// ---- Rounds -----------------------------------------------------------------------------------

/// How a round ends the daemon.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// SIGKILL.
    Kill9,
    /// SIGTERM (a graceful shutdown begins), then SIGKILL this many ms later.
    TermThenKill(u64),
}

/// Counts for the report.
#[derive(Default)]
struct Stats {
    rounds: u64,
    /// Workers found still running right after their daemon died.
    outlived: u64,
    /// Turns the database held as running at a kill, interrupted by the restart.
    interrupted: u64,
    integrity_checks: u64,
    events: u64,
    /// The last seq a subscriber saw before a kill.
    last_seq: Option<u64>,
    /// (last seq seen before a kill, the seq the next daemon's first subscription started
    /// after).
    seq_restarts: Vec<(u64, u64)>,
    /// Shutdowns that finished before their SIGKILL came.
    clean_exits: u64,
    /// SIGKILLs that came after the daemon had begun shutting down.
    mid_shutdown: u64,
}

/// One test's sandbox, daemon, clients' ledger and process sampler.
struct World {
    sb: Sandbox,
    rt: tokio::runtime::Runtime,
    ledger: Shared,
    work: Arc<Workload>,
    sampler: Sampler,
    seed: u64,
    rng: Rng,
    root: String,
    log: PathBuf,
    stats: Stats,
    /// The daemon serving now, and the events its subscriber records.
    daemon: Option<Daemon>,
    events: Option<tokio::task::JoinHandle<EventRecord>>,
}

impl World {
    fn new(seed: u64, rng: Rng) -> World {
        let sb = Sandbox::with_config(CONFIG);
        let projects: Vec<String> = (0..PROJECTS)
            .map(|i| sb.project(&format!("p{i}")).display().to_string())
            .collect();
        let canonical_root = std::fs::canonicalize(&sb.root).expect("canonical sandbox");
        let root = format!("{}/", canonical_root.display());
        let ran = canonical_root.join("ran");
        std::fs::create_dir_all(&ran).unwrap();
        let log = sb.root.join("daemon.log");
        let sampler = Sampler::start(root.clone(), sb.state.join("sessions"), seed);
        World {
            rt: sessiond_tests::tokio_runtime(),
            ledger: Arc::default(),
            work: Arc::new(Workload { projects, ran }),
            sampler,
            seed,
            rng,
            root,
            log,
            stats: Stats::default(),
            daemon: None,
            events: None,
            sb,
        }
    }

    fn tag(&self, round: usize) -> String {
        format!("seed {} round {round}", self.seed)
    }

    /// Starts a daemon and subscribes to its events.
    fn start(&mut self, tag: &str) {
        let daemon = start_daemon(&self.sb, &self.log, tag);
        let opts = options(&self.sb);
        let ledger = self.ledger.clone();
        let (events, after) = self.rt.block_on(subscriber(&opts, ledger));
        if let Some(last) = self.stats.last_seq.take() {
            self.stats.seq_restarts.push((last, after));
        }
        self.events = Some(events);
        self.daemon = Some(daemon);
    }

    /// One round: clients work, the daemon dies as `ending` says after a seeded delay, a new
    /// one starts, and everything is checked.
    fn round(&mut self, round: usize, ending: Ending) {
        let tag = self.tag(round);
        let opts = options(&self.sb);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|me| {
                let rng = self.rng.fork((round * CLIENTS + me) as u64);
                self.rt.spawn(client_loop(
                    me,
                    round,
                    opts.clone(),
                    self.ledger.clone(),
                    self.work.clone(),
                    rng,
                ))
            })
            .collect();
        let delay = self.rng.between(150, 1300);
        std::thread::sleep(Duration::from_millis(delay));
        let mut daemon = self.daemon.take().expect("a daemon runs");
        match ending {
            Ending::Kill9 => sigkill(&daemon),
            Ending::TermThenKill(ms) => {
                // The SIGKILL is timed from the moment the daemon logs that its shutdown has
                // begun, so it lands inside the shutdown (unless that finishes first).
                let began = count_in(&self.log, "shutting down: SIGTERM");
                daemon.signal(Signal::SIGTERM);
                let deadline = Instant::now() + Duration::from_secs(5);
                while count_in(&self.log, "shutting down: SIGTERM") == began
                    && daemon.running()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::thread::sleep(Duration::from_millis(ms));
                if daemon.running() {
                    sigkill(&daemon);
                    self.stats.mid_shutdown += 1;
                } else {
                    self.stats.clean_exits += 1;
                }
            }
        }
        daemon.wait();
        let outlived = sandbox_processes(&self.root)
            .into_iter()
            .filter(WorkerProc::is_leader)
            .count();
        self.stats.outlived += outlived as u64;
        self.rt.block_on(async {
            for client in clients {
                tokio::time::timeout(Duration::from_secs(15), client)
                    .await
                    .unwrap_or_else(|_| panic!("{tag}: a client did not stop after the kill"))
                    .expect("client task");
            }
        });
        let before = self
            .rt
            .block_on(self.events.take().expect("a subscriber"))
            .expect("subscriber task");
        check_event_order(&before, &tag);
        self.stats.events += before.seqs.len() as u64;
        let crash = crash_image(&self.sb, &self.sb.root.join(format!("crash-{round}")));
        self.stats.integrity_checks += 1;
        assert_eq!(
            crash.integrity, "ok",
            "{tag}: the database the killed daemon left fails integrity_check"
        );
        eprintln!(
            "{tag}: killed after {delay} ms ({ending:?}); {outlived} workers outlived it; \
             {} turns stored, {} running",
            crash.turns.len(),
            crash
                .turns
                .values()
                .filter(|t| t.status == "running")
                .count()
        );
        let seen = self.sampler.take_seen();
        self.start(&tag);
        self.verify(&tag, &crash, &before, &seen);
        self.stats.rounds += 1;
    }

    /// Everything that must hold after a restart.
    fn verify(&mut self, tag: &str, crash: &CrashImage, before: &EventRecord, seen: &[WorkerProc]) {
        // Durable before answered: the dead daemon's file has everything acknowledged.
        {
            let l = lock(&self.ledger);
            assert!(
                l.unexpected.is_empty(),
                "{tag}: requests that must succeed were refused:\n{}",
                l.unexpected.join("\n")
            );
            for id in &l.order {
                assert!(
                    crash.sessions.contains(id),
                    "{tag}: acknowledged session {id} is not in the database the killed daemon \
                     left"
                );
            }
            for id in l.turns.keys() {
                assert!(
                    crash.turns.contains_key(id),
                    "{tag}: acknowledged turn {id} is not in the database the killed daemon left"
                );
            }
        }

        // No orphan: every worker of the dead daemon ended before the new one answered, and
        // nothing runs for the sandbox's sessions (the new daemon starts nothing until a resume).
        let mut old: Vec<WorkerProc> = seen.to_vec();
        for (id, turn) in &crash.turns {
            if let Some((pid, start)) = turn.worker {
                old.push(WorkerProc {
                    pid,
                    pgid: pid,
                    start,
                    session: turn.session.to_string(),
                    turn: id.to_string(),
                });
            }
        }
        let mut now = sandbox_processes(&self.root);
        now.extend(old.into_iter().filter(WorkerProc::alive));
        if !now.is_empty() {
            // The daemon answers only after each worker it knows of has died (or been sent
            // SIGKILL and let go of the session lock), so a worker leader alive a moment later
            // is one it did not know of, however soon it might end by itself. What a worker
            // started may take a little longer to be scheduled and die.
            let (leaders, others): (Vec<WorkerProc>, Vec<WorkerProc>) =
                now.iter().cloned().partition(WorkerProc::is_leader);
            let mut left = still_running_after(&leaders, Duration::from_millis(200));
            left.extend(still_running_after(&others, Duration::from_secs(2)));
            let why: Vec<String> = left
                .iter()
                .map(|p| {
                    let stored = p
                        .turn
                        .parse::<TurnId>()
                        .ok()
                        .and_then(|t| crash.turns.get(&t));
                    let pid_file = std::fs::read_to_string(
                        self.sb
                            .state
                            .join("sessions")
                            .join(format!("{}.pid", p.session)),
                    )
                    .unwrap_or_default();
                    format!(
                        "pid {} (leader {}) of session {} turn {}: stored at the kill as {:?}; \
                         pid file {:?}",
                        p.pid,
                        p.pgid,
                        p.session,
                        p.turn,
                        stored.map(|t| (&t.status, t.worker)),
                        pid_file.trim()
                    )
                })
                .collect();
            assert!(
                left.is_empty(),
                "{tag}: processes of the previous daemon's workers survived the restart (a \
                 turn stored without a worker pid whose pid file names the dead daemon is the \
                 spawn window: see chaos_kill_between_spawn_and_pid_record_leaves_no_orphan):\n\
                 {}",
                why.join("\n")
            );
        }

        let opts = options(&self.sb);
        let ledger = self.ledger.clone();
        let contexts: Vec<String> = {
            let l = lock(&self.ledger);
            CONTEXTS
                .iter()
                .map(|c| c.to_string())
                .chain(l.contexts.keys().cloned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let (list, currents, logs, queues) = self.rt.block_on(async {
            let client = Client::connect(&opts).await.expect("connect after restart");
            let list = client
                .call::<List>(ListParams {
                    all: true,
                    ..Default::default()
                })
                .await
                .expect("list");
            let mut currents = BTreeMap::new();
            for context in contexts {
                let pointer = client
                    .call::<Current>(ContextParams {
                        context: Some(context.clone()),
                    })
                    .await
                    .expect("current");
                currents.insert(context, pointer);
            }
            let sessions: HashSet<SessionId> = {
                let l = lock(&ledger);
                l.turns
                    .values()
                    .map(|t| t.session)
                    .chain(crash.turns.values().map(|t| t.session))
                    .chain(l.order.iter().copied())
                    .collect()
            };
            let mut logs = HashMap::new();
            let mut queues = HashMap::new();
            for session in sessions {
                let log = client
                    .call::<Log>(LogParams {
                        session: Some(session.to_string()),
                        ..Default::default()
                    })
                    .await
                    .expect("log");
                logs.insert(session, log);
                let queue = client
                    .call::<Queue>(params_for(session))
                    .await
                    .expect("queue");
                queues.insert(session, queue);
            }
            (list, currents, logs, queues)
        });

        let mut l = lock(&self.ledger);
        let l = &mut *l;
        // Sessions and their names: the last acknowledged name, or one sent and cut off.
        let stored: HashMap<SessionId, Option<String>> = list
            .sessions
            .iter()
            .map(|s| (s.id, s.name.clone()))
            .collect();
        for id in &l.order {
            let rec = l.sessions.get_mut(id).unwrap();
            let name = stored.get(id).unwrap_or_else(|| {
                panic!("{tag}: acknowledged session {id} ({}) was lost", rec.name)
            });
            let name = name.clone().unwrap_or_default();
            assert!(
                name == rec.name || rec.pending_names.contains(&name),
                "{tag}: session {id} is named {name:?}; acknowledged {:?}, cut off {:?}",
                rec.name,
                rec.pending_names
            );
            rec.name = name;
            rec.pending_names.clear();
        }

        // Contexts: the last acknowledged switch or a later one cut off; generations only up.
        for (context, pointer) in &currents {
            let rec = l.contexts.entry(context.clone()).or_default();
            // PROTOCOL.md: a restart moves generations past anything a client may have seen,
            // so none is handed out twice. (A context never seen switched stays at 0.)
            let seen_before = rec.max_seen;
            if seen_before > 0 {
                assert!(
                    pointer.generation > seen_before,
                    "{tag}: context {context} is at generation {} after the restart, not above \
                     {seen_before} seen before it (in flight: {:?}; acknowledged: {:?}). At 0, \
                     this is the daemon bug chaos_kill_after_a_first_switch_is_seen_reuses_no_\
                     generation reproduces: a context whose first switch was shown but not \
                     saved is not moved up at the restart",
                    pointer.generation,
                    rec.in_flight,
                    rec.acked
                );
            }
            let session = pointer.session.as_ref().map(|s| s.id);
            if let Some((generation, acked)) = rec.acked {
                assert!(
                    pointer.generation >= generation + GENERATION_STEP,
                    "{tag}: context {context} at generation {} after a restart; the \
                     acknowledged switch had {generation}",
                    pointer.generation
                );
                assert!(
                    session == Some(acked) || session.is_some_and(|s| rec.in_flight.contains(&s)),
                    "{tag}: context {context} points at {session:?}; the last acknowledged \
                     switch was to {acked} (generation {generation}), cut off: {:?}",
                    rec.in_flight
                );
            } else if let Some(s) = session {
                assert!(
                    rec.in_flight.contains(&s),
                    "{tag}: context {context} points at {s}, never acknowledged nor sent"
                );
            }
            rec.acked = session.map(|s| (pointer.generation, s));
            rec.in_flight.clear();
            rec.max_seen = pointer.generation;
        }

        // Turns: each stored once; running at the kill → interrupted, its queue held;
        // queued at the kill → still queued, unrun; settled → unchanged.
        let runs = runs_by_turn(&self.work.ran);
        let mut status: HashMap<TurnId, TurnStatus> = HashMap::new();
        for (session, log) in &logs {
            for entry in &log.turns {
                let turn = &entry.turn;
                assert_eq!(
                    turn.session, *session,
                    "{tag}: turn {} is logged under another session",
                    turn.turn_id
                );
                assert!(
                    status.insert(turn.turn_id, turn.status).is_none(),
                    "{tag}: turn {} appears twice in session {session}'s log",
                    turn.turn_id
                );
            }
        }
        for (id, rec) in &l.turns {
            let now = status
                .get(id)
                .unwrap_or_else(|| panic!("{tag}: acknowledged turn {id} was lost"));
            if rec.cancelled_queued {
                assert_eq!(
                    *now,
                    TurnStatus::Cancelled,
                    "{tag}: turn {id} was cancelled while queued, acknowledged, and is now \
                     {now:?}"
                );
                assert!(
                    !runs.contains_key(&id.to_string()),
                    "{tag}: turn {id} ran although its cancel was acknowledged while queued"
                );
            }
        }
        for (id, stored) in &crash.turns {
            let now = *status.get(id).unwrap_or_else(|| {
                panic!("{tag}: turn {id} was in the database at the kill and is gone")
            });
            let queue = &queues[&stored.session];
            match stored.status.as_str() {
                "running" => {
                    assert_eq!(
                        now,
                        TurnStatus::Interrupted,
                        "{tag}: turn {id} was running at the kill and is {now:?} after it"
                    );
                    assert_eq!(
                        queue.paused.as_deref(),
                        Some("daemon_restarted"),
                        "{tag}: session {}'s turn {id} was interrupted by the restart but its \
                         queue is not held for a resume",
                        stored.session
                    );
                    self.stats.interrupted += 1;
                }
                "queued" => {
                    assert_eq!(
                        now,
                        TurnStatus::Queued,
                        "{tag}: turn {id} was queued at the kill and is {now:?} before any resume"
                    );
                    assert!(
                        queue.paused.is_some(),
                        "{tag}: session {} has turns queued across a restart but its queue is \
                         not held",
                        stored.session
                    );
                    if let Some(rec) = l.turns.get_mut(id) {
                        rec.queued_at_a_kill = true;
                    }
                }
                settled => assert_eq!(
                    now.as_str(),
                    settled,
                    "{tag}: turn {id} had settled as {settled} before the kill and is {now:?}"
                ),
            }
            assert!(
                queue.running.is_none(),
                "{tag}: session {} runs turn {:?} right after a restart, before any resume",
                stored.session,
                queue.running.as_ref().map(|t| t.turn_id)
            );
        }
        for (id, now) in &status {
            let times = runs.get(&id.to_string()).copied().unwrap_or(0);
            assert!(times <= 1, "{tag}: turn {id} ran {times} times");
            if *now == TurnStatus::Queued {
                assert_eq!(
                    times, 0,
                    "{tag}: turn {id} is recorded as never started but it ran"
                );
            }
            if *now == TurnStatus::Completed {
                assert_eq!(times, 1, "{tag}: turn {id} completed without running");
            }
            if now.settled() {
                l.settled.insert(*id);
            }
        }
        for (name, times) in &runs {
            assert!(*times <= 1, "{tag}: turn {name} ran {times} times");
        }

        // A pause acknowledged (and no resume sent since) survives.
        for id in &l.order {
            if l.sessions[id].hold == Hold::Paused {
                assert!(
                    queues[id].paused.is_some(),
                    "{tag}: session {id}'s acknowledged pause was lost"
                );
            }
        }

        // Seq: PROTOCOL.md promises it per daemon ("per-daemon, strictly increasing over all
        // events it emits"), so a restart may start it again; only the order within one
        // daemon's life is checked (check_event_order). What happened is kept for the report.
        if let Some(last) = before.seqs.last() {
            self.stats.last_seq = Some(*last);
        }
        self.sampler.assert_clean(tag);
    }

    /// Resumes every held queue until no turn is queued or running.
    fn drain(&mut self, tag: &str) {
        let opts = options(&self.sb);
        let sessions: Vec<SessionId> = lock(&self.ledger).order.clone();
        self.rt.block_on(async {
            let client = Client::connect(&opts).await.expect("connect to drain");
            let deadline = Instant::now() + Duration::from_secs(40);
            loop {
                let mut busy = 0;
                for session in &sessions {
                    let queue = client
                        .call::<Queue>(params_for(*session))
                        .await
                        .expect("queue");
                    if queue.paused.is_some() && !queue.queued.is_empty() {
                        client
                            .call::<Resume>(params_for(*session))
                            .await
                            .expect("resume");
                    }
                    if queue.running.is_some() || !queue.queued.is_empty() {
                        busy += 1;
                    }
                }
                if busy == 0 {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{tag}: {busy} sessions still have turns after 40 s of draining"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
}

// ---- The tests --------------------------------------------------------------------------------

#[test]
fn chaos_kill_9_at_random_moments_loses_nothing_acknowledged() {
    let (seed, rng, _note) = announce("kill_9", 1);
    let rounds = rounds();
    let started = Instant::now();
    let mut w = World::new(seed, rng);
    w.start(&w.tag(0));
    for round in 0..rounds {
        w.round(round, Ending::Kill9);
    }
    finish(
        &mut w,
        "chaos_kill_9",
        &format!(
            "{rounds} rounds of {CLIENTS} clients creating, renaming, switching, submitting, \
             steering, cancelling, pausing and resuming; SIGKILL at a seeded random moment \
             (150–1,300 ms in), restart, check"
        ),
        started,
    );
}

#[test]
fn chaos_kill_during_shutdown_loses_nothing_acknowledged() {
    let (seed, mut rng, _note) = announce("kill_during_shutdown", 4);
    let rounds = (rounds() / 2).max(3);
    let started = Instant::now();
    let mut w = World::new(seed, rng.fork(0));
    w.start(&w.tag(0));
    for round in 0..rounds {
        let after = rng.between(0, 15);
        w.round(round, Ending::TermThenKill(after));
    }
    let (clean, mid) = (w.stats.clean_exits, w.stats.mid_shutdown);
    finish(
        &mut w,
        "chaos_kill_during_shutdown",
        &format!(
            "{rounds} rounds of {CLIENTS} clients writing and turns running; SIGTERM at a seeded \
             moment, SIGKILL 0–15 ms after the daemon logged that its shutdown began ({mid} \
             landed mid-shutdown, {clean} shutdowns finished first)"
        ),
        started,
    );
}

/// After the last round: every queued turn is resumed and must run exactly once; then a clean
/// stop, the live file's integrity, and the report row.
fn finish(w: &mut World, scenario: &str, done: &str, started: Instant) {
    let tag = format!("seed {} final", w.seed);
    w.drain(&tag);
    let runs = runs_by_turn(&w.work.ran);
    let opts = options(&w.sb);
    let sessions: Vec<SessionId> = lock(&w.ledger).order.clone();
    let logs = w.rt.block_on(async {
        let client = Client::connect(&opts).await.expect("connect");
        let mut logs = Vec::new();
        for session in sessions {
            logs.push(
                client
                    .call::<Log>(LogParams {
                        session: Some(session.to_string()),
                        ..Default::default()
                    })
                    .await
                    .expect("log"),
            );
        }
        logs
    });
    let status: HashMap<TurnId, TurnStatus> = logs
        .iter()
        .flat_map(|log| log.turns.iter().map(|t| (t.turn.turn_id, t.turn.status)))
        .collect();
    let l = lock(&w.ledger);
    let mut ran_once = 0u64;
    let mut queued_then_ran = 0u64;
    for (id, rec) in &l.turns {
        let now = status
            .get(id)
            .unwrap_or_else(|| panic!("{tag}: acknowledged turn {id} was lost"));
        assert!(
            now.settled(),
            "{tag}: turn {id} is still {now:?} after the drain"
        );
        assert_ne!(
            *now,
            TurnStatus::Failed,
            "{tag}: turn {id} failed; its prompt cannot fail unless the daemon did"
        );
        let times = runs.get(&id.to_string()).copied().unwrap_or(0);
        assert!(times <= 1, "{tag}: turn {id} ran {times} times");
        if *now == TurnStatus::Completed {
            assert_eq!(times, 1, "{tag}: turn {id} completed without running");
        }
        ran_once += times as u64;
        if rec.queued_at_a_kill && times == 1 {
            queued_then_ran += 1;
        }
    }
    assert!(runs.values().all(|n| *n <= 1), "{tag}: a turn ran twice");
    let turns = l.turns.len() as u64;
    let acked = l.acked_total();
    let by_method: Vec<String> = l
        .acked
        .iter()
        .map(|(m, n)| format!("{} {m}", thousands(*n)))
        .collect();
    let (cut_off, told, refused) = (l.cut_off, l.shutting_down, l.refused);
    drop(l);
    let daemon = w.daemon.take().expect("a daemon runs");
    stop_gracefully(daemon, &tag);
    let _ = w.rt.block_on(w.events.take().expect("subscriber"));
    let integrity = integrity_of_file(&w.sb.state.join("sessiond.db"));
    assert_eq!(
        integrity, "ok",
        "{tag}: integrity_check of the final database"
    );
    w.sampler.assert_clean(&tag);
    let sampler = w.sampler.state();
    let (samples, most, held, at_exit, sightings) = (
        sampler.samples,
        sampler.most_at_once,
        sampler.locks_held,
        sampler.probes_at_exit,
        sampler.sightings,
    );
    drop(sampler);
    let s = &w.stats;
    // Seq is promised per daemon; say what a restart did to it.
    let seq_back = s
        .seq_restarts
        .iter()
        .filter(|(last, after)| after < last)
        .count();
    let seq_note = match s.seq_restarts.first() {
        Some((last, after)) if seq_back > 0 => format!(
            "; seq starts again with each daemon (PROTOCOL.md: per daemon): {seq_back} of {} \
             restarts went back, e.g. from {} to {}",
            s.seq_restarts.len(),
            thousands(*last),
            thousands(*after)
        ),
        _ => String::new(),
    };
    let result = format!(
        "seed {}; 0 of {} acknowledged changes lost ({}); {} requests cut off ({} answered \
         shutting_down), {} refused as expected; {} turns, each ran at most once ({} ran, {} \
         of them queued across a kill and run after a resume); {} turns running at a kill all \
         came back interrupted with their queue held; {} workers outlived their daemon, none the \
         restart; at most one \
         worker per session in {} process-table samples (up to {} workers at once; of {} worker \
         sightings the session lock was held in {}, the other {} probes met a worker that had \
         just exited); integrity_check ok {} times; {} events in seq \
         order{seq_note}; took {:.1} s",
        w.seed,
        thousands(acked),
        by_method.join(", "),
        thousands(cut_off),
        thousands(told),
        thousands(refused),
        thousands(turns),
        thousands(ran_once),
        thousands(queued_then_ran),
        thousands(s.interrupted),
        thousands(s.outlived),
        thousands(samples),
        most,
        thousands(sightings),
        thousands(held),
        thousands(at_exit),
        s.integrity_checks + 1,
        thousands(s.events),
        started.elapsed().as_secs_f64()
    );
    eprintln!("{scenario}: {result}");
    assert!(acked > 0 && turns > 0, "{tag}: the workload did nothing");
    Row::new("crash", scenario)
        .done(done)
        .runs(s.rounds)
        .checked(
            "after every restart: each acknowledged session, name, switch and turn present; \
             contexts at the last acknowledged switch or a cut-off later one, generations only \
             up; turns running at the kill interrupted with the queue held, queued ones still \
             queued and unrun; no turn ran twice (one marker line per run); no worker process \
             survived; never two workers for one session, each holding the session lock; seq \
             increasing per connection; integrity_check of the file the dead daemon left",
        )
        .result(result)
        .record();
}

/// One session's stored turns: id → status, and how many rows each id has.
fn turns_of(
    rt: &tokio::runtime::Runtime,
    opts: &ConnectOptions,
    session: SessionId,
) -> Vec<(TurnId, TurnStatus)> {
    rt.block_on(async {
        let client = Client::connect(opts).await.expect("connect");
        client
            .call::<Log>(LogParams {
                session: Some(session.to_string()),
                ..Default::default()
            })
            .await
            .expect("log")
            .turns
            .into_iter()
            .map(|t| (t.turn.turn_id, t.turn.status))
            .collect()
    })
}

fn queue_of(
    rt: &tokio::runtime::Runtime,
    opts: &ConnectOptions,
    session: SessionId,
) -> sessiond_proto::methods::QueueResult {
    rt.block_on(async {
        let client = Client::connect(opts).await.expect("connect");
        client
            .call::<Queue>(params_for(session))
            .await
            .expect("queue")
    })
}

/// Where a start-up kill landed, from what the killed daemon had logged and whether it had
/// written its pid file (it does just before opening the database).
fn start_up_phase(sb: &Sandbox, daemon: &Daemon, log: &Path) -> &'static str {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if text.contains("sessiond ready") {
        "after accepting"
    } else if text.contains("registry loaded") {
        "after loading, before accepting"
    } else if text.contains("still runs; ending it") || text.contains("settled as interrupted") {
        "while settling a turn"
    } else if sb.recorded_pid() == Some(daemon.pid()) {
        "while opening and loading the database"
    } else {
        "before opening the database"
    }
}

/// Context generations as stored.
fn stored_generations(scratch: &Path) -> BTreeMap<String, u64> {
    let conn = rusqlite::Connection::open(scratch.join("sessiond.db")).expect("open the copy");
    let mut stmt = conn
        .prepare("SELECT name, generation FROM contexts")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

#[test]
fn chaos_kill_during_start_up_loses_nothing() {
    let (seed, mut rng, _note) = announce("kill_during_start_up", 2);
    let started = Instant::now();
    let tag = format!("seed {seed} start-up");
    let sb = Sandbox::with_config(CONFIG);
    let root_path = std::fs::canonicalize(&sb.root).unwrap();
    let root = format!("{}/", root_path.display());
    let ran = root_path.join("ran");
    std::fs::create_dir_all(&ran).unwrap();
    let log = sb.root.join("daemon.log");
    let project = sb.project("p");
    let rt = sessiond_tests::tokio_runtime();
    let opts = options(&sb);
    let mark = format!("echo ran >> {}/$SESSIOND_TURN_ID", ran.display());
    const SESSIONS: usize = 2_000;

    // A populated state: 2,000 sessions, names, contexts, turns completed, queued behind held
    // queues, and one running whose worker outlives the daemon.
    let daemon = start_daemon(&sb, &log, &tag);
    let ids: Vec<SessionId> = rt
        .block_on(sessiond_tests::create_sessions(
            &sb.connect_options(),
            &project,
            SESSIONS,
        ))
        .into_iter()
        .map(|s| s.id)
        .collect();
    let picks: Vec<usize> = (0..CONTEXTS.len())
        .map(|_| rng.below(SESSIONS as u64) as usize)
        .collect();
    let (names, contexts, completed, queued, running) = rt.block_on(async {
        let client = Client::connect(&opts).await.expect("connect");
        let mut names = HashMap::new();
        for (i, id) in ids.iter().take(50).enumerate() {
            let name = format!("named-{i}");
            client
                .call::<Rename>(RenameParams {
                    session: Some(id.to_string()),
                    project: None,
                    context: None,
                    name: name.clone(),
                })
                .await
                .expect("rename");
            names.insert(*id, name);
        }
        let mut contexts = BTreeMap::new();
        for (context, pick) in CONTEXTS.iter().zip(&picks) {
            let pointer = client
                .call::<Switch>(SessionParams {
                    session: Some(ids[*pick].to_string()),
                    project: None,
                    context: Some(context.to_string()),
                })
                .await
                .expect("switch");
            contexts.insert(context.to_string(), (pointer.generation, ids[*pick]));
        }
        let submit = |session: SessionId, prompt: String| {
            let client = &client;
            async move {
                client
                    .call::<Submit>(SubmitParams {
                        session: Some(session.to_string()),
                        prompt,
                        ..Default::default()
                    })
                    .await
                    .expect("submit")
                    .turn
                    .turn_id
            }
        };
        let mut completed = Vec::new();
        for id in &ids[100..103] {
            completed.push((*id, submit(*id, mark.clone()).await));
        }
        let mut queued = Vec::new();
        for id in &ids[200..202] {
            client.call::<Pause>(params_for(*id)).await.expect("pause");
            for _ in 0..3 {
                queued.push((*id, submit(*id, mark.clone()).await));
            }
        }
        let running = (
            ids[300],
            submit(ids[300], format!("{mark}; exec sleep 30")).await,
        );
        (names, contexts, completed, queued, running)
    });
    sessiond_tests::eventually("the long turn's worker to start", || {
        ran.join(running.1.to_string()).exists()
    });
    for (session, turn) in &completed {
        sessiond_tests::eventually("the short turns to complete", || {
            turns_of(&rt, &opts, *session)
                .iter()
                .any(|(t, s)| t == turn && *s == TurnStatus::Completed)
        });
    }
    let worker: Vec<WorkerProc> = sandbox_processes(&root)
        .into_iter()
        .filter(WorkerProc::is_leader)
        .collect();
    assert_eq!(worker.len(), 1, "{tag}: one worker runs: {worker:?}");
    sigkill(&daemon);
    drop(daemon);
    assert!(worker[0].alive(), "{tag}: the worker outlives its daemon");

    // Start-ups killed at seeded moments. Each attempt watches for its socket to accept, and
    // later delays are drawn below the quickest start seen, so the kills spread over start-up
    // on a fast machine and a loaded one alike.
    let kills = 12;
    let mut phases: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut bound = Duration::from_millis(200);
    let mut generations: BTreeMap<String, u64> =
        contexts.iter().map(|(c, (g, _))| (c.clone(), *g)).collect();
    for k in 0..kills {
        let fraction = if k == 0 { 0 } else { rng.between(1, 1000) };
        let delay = bound * fraction as u32 / 1000;
        let attempt_log = sb.root.join(format!("start-up-{k}.log"));
        let spawned = Instant::now();
        let mut attempt = spawn_daemon(&sb, &attempt_log);
        while spawned.elapsed() < delay {
            // The dead daemon's socket file refuses until this one has bound a new one.
            if UnixStream::connect(sb.socket()).is_ok() {
                bound = bound.min(spawned.elapsed());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sigkill(&attempt);
        attempt.wait();
        let delay = delay.as_millis();
        let phase = start_up_phase(&sb, &attempt, &attempt_log);
        *phases.entry(phase).or_default() += 1;
        let scratch = sb.root.join(format!("start-up-crash-{k}"));
        let image = crash_image(&sb, &scratch);
        let ktag = format!("{tag} kill {k} ({delay} ms, {phase})");
        assert_eq!(image.integrity, "ok", "{ktag}: integrity_check");
        for id in &ids {
            assert!(
                image.sessions.contains(id),
                "{ktag}: session {id} is gone from the database"
            );
        }
        for (_, turn) in completed.iter().chain(&queued) {
            let expected = if queued.iter().any(|(_, t)| t == turn) {
                "queued"
            } else {
                "completed"
            };
            assert_eq!(
                image.turns[turn].status, expected,
                "{ktag}: turn {turn} changed in the database"
            );
        }
        let stored = &image.turns[&running.1].status;
        assert!(
            stored == "running" || stored == "interrupted",
            "{ktag}: the running turn is stored as {stored}"
        );
        for (context, generation) in stored_generations(&scratch) {
            let before = generations.entry(context.clone()).or_default();
            assert!(
                generation >= *before,
                "{ktag}: context {context}'s stored generation went back from {before} to \
                 {generation}"
            );
            *before = generation;
        }
        eprintln!("{ktag}");
    }

    // A normal start: everything is there, the old worker is gone, held queues still hold.
    let daemon = start_daemon(&sb, &log, &tag);
    assert!(
        still_running_after(&worker, Duration::from_secs(2)).is_empty(),
        "{tag}: the previous daemon's worker survived"
    );
    let left = still_running_after(&sandbox_processes(&root), Duration::from_secs(2));
    assert!(left.is_empty(), "{tag}: processes survived: {left:?}");
    let (listed, currents) = rt.block_on(async {
        let client = Client::connect(&opts).await.expect("connect");
        let listed = client
            .call::<List>(ListParams {
                all: true,
                ..Default::default()
            })
            .await
            .expect("list");
        let mut currents = BTreeMap::new();
        for context in CONTEXTS {
            currents.insert(
                context.to_string(),
                client
                    .call::<Current>(ContextParams {
                        context: Some(context.into()),
                    })
                    .await
                    .expect("current"),
            );
        }
        (listed, currents)
    });
    let stored: HashMap<SessionId, Option<String>> = listed
        .sessions
        .into_iter()
        .map(|s| (s.id, s.name))
        .collect();
    assert_eq!(stored.len(), SESSIONS, "{tag}: sessions after the kills");
    for id in &ids {
        let name = stored
            .get(id)
            .unwrap_or_else(|| panic!("{tag}: session {id} was lost"));
        assert_eq!(name.as_ref(), names.get(id), "{tag}: session {id}'s name");
    }
    for (context, (generation, session)) in &contexts {
        let now = &currents[context];
        assert_eq!(
            now.session.as_ref().map(|s| s.id),
            Some(*session),
            "{tag}: context {context}"
        );
        assert!(
            now.generation >= generation + GENERATION_STEP && now.generation > generations[context],
            "{tag}: context {context} at generation {}, was {generation} (stored {})",
            now.generation,
            generations[context]
        );
    }
    let runs = runs_by_turn(&ran);
    for (session, turn) in &completed {
        let turns = turns_of(&rt, &opts, *session);
        assert_eq!(
            turns,
            vec![(*turn, TurnStatus::Completed)],
            "{tag}: {session}"
        );
        assert_eq!(
            runs.get(&turn.to_string()),
            Some(&1),
            "{tag}: turn {turn} runs"
        );
    }
    let running_turns = turns_of(&rt, &opts, running.0);
    assert_eq!(
        running_turns,
        vec![(running.1, TurnStatus::Interrupted)],
        "{tag}: the turn running at the first kill is interrupted, once"
    );
    // Held; the reason is "daemon_restarted" only if this start settled the turn. Only the
    // hold is stored, not its reason, so a start after the one that settled it says "paused
    // before the daemon restarted".
    let reason = queue_of(&rt, &opts, running.0).paused;
    assert!(
        matches!(
            reason.as_deref(),
            Some("daemon_restarted" | "paused before the daemon restarted")
        ),
        "{tag}: the interrupted turn's queue is held: {reason:?}"
    );
    for (session, turn) in &queued {
        let queue = queue_of(&rt, &opts, *session);
        assert!(queue.paused.is_some(), "{tag}: {session}'s queue is held");
        assert!(
            queue.queued.iter().any(|t| t.turn_id == *turn),
            "{tag}: turn {turn} is still queued"
        );
        assert!(!runs.contains_key(&turn.to_string()), "{tag}: {turn} ran");
    }
    // Released, each queued turn runs once.
    rt.block_on(async {
        let client = Client::connect(&opts).await.expect("connect");
        for id in &ids[200..202] {
            client
                .call::<Resume>(params_for(*id))
                .await
                .expect("resume");
        }
    });
    for (session, turn) in &queued {
        sessiond_tests::eventually("the released turns to complete", || {
            turns_of(&rt, &opts, *session)
                .iter()
                .any(|(t, s)| t == turn && *s == TurnStatus::Completed)
        });
    }
    let runs = runs_by_turn(&ran);
    for (_, turn) in &queued {
        assert_eq!(
            runs.get(&turn.to_string()),
            Some(&1),
            "{tag}: turn {turn} runs"
        );
    }
    stop_gracefully(daemon, &tag);
    let integrity = integrity_of_file(&sb.state.join("sessiond.db"));
    assert_eq!(
        integrity, "ok",
        "{tag}: integrity_check of the final database"
    );

    let landed: Vec<String> = phases.iter().map(|(p, n)| format!("{n} {p}")).collect();
    let result = format!(
        "seed {seed}; kills landed: {}; 0 of {} sessions, {} names, {} context pointers and {} \
         turns lost or changed; the turn running at the first kill interrupted exactly once, \
         its worker ended; {} queued turns still held, then each ran once after resume; \
         generations never went back; integrity_check ok {} times; took {:.1} s",
        landed.join(", "),
        thousands(SESSIONS as u64),
        names.len(),
        contexts.len(),
        completed.len() + queued.len() + 1,
        queued.len(),
        kills + 1,
        started.elapsed().as_secs_f64()
    );
    eprintln!("chaos_kill_during_start_up: {result}");
    Row::new("crash", "chaos_kill_during_start_up")
        .done(format!(
            "SIGKILL {kills} times during start-up (after 0 ms, then seeded delays) with 2,000 \
             sessions, named ones, switched contexts, completed, queued and running turns"
        ))
        .runs(kills as u64)
        .checked(
            "after each kill: integrity_check, every session and turn still stored, stored \
             generations never lower; after a normal start: sessions, names, contexts, turn \
             statuses, no surviving worker, held queues still held and each queued turn run \
             once after resume",
        )
        .result(result)
        .record();
}

#[test]
fn chaos_kill_during_settlement_interrupts_each_turn_once() {
    let (seed, mut rng, _note) = announce("kill_during_settlement", 3);
    let started = Instant::now();
    let tag = format!("seed {seed} settlement");
    // Workers that shrug off SIGTERM make settlement wait the whole grace for each: a window
    // wide enough to kill the daemon inside it.
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 100\nterminate_grace_ms = 700\n");
    let root_path = std::fs::canonicalize(&sb.root).unwrap();
    let root = format!("{}/", root_path.display());
    let ran = root_path.join("ran");
    std::fs::create_dir_all(&ran).unwrap();
    let log = sb.root.join("daemon.log");
    let project = sb.project("p");
    let rt = sessiond_tests::tokio_runtime();
    let opts = options(&sb);
    let ran_text = ran.display().to_string();
    let mark = format!("echo ran >> {ran_text}/$SESSIOND_TURN_ID");
    // Its output goes nowhere: once its daemon is dead, a write to the old pipes (even the
    // shell's own "Terminated" note about a killed `sleep`) would end it by SIGPIPE.
    let stubborn = format!(
        "exec >/dev/null 2>&1; trap 'echo term >> {ran_text}/$SESSIOND_TURN_ID.term' TERM; \
         {mark}; while :; do sleep 0.05; done"
    );

    let daemon = start_daemon(&sb, &log, &tag);
    let sessions: Vec<(SessionId, TurnId, Vec<TurnId>)> = rt.block_on(async {
        let client = Client::connect(&opts).await.expect("connect");
        let mut sessions = Vec::new();
        for i in 0..3 {
            let id = client
                .call::<Create>(CreateParams {
                    project: project.display().to_string(),
                    provider: "shell".into(),
                    name: Some(format!("s{i}")),
                    cwd: None,
                })
                .await
                .expect("create")
                .id;
            let mut turns = Vec::new();
            for prompt in [&stubborn, &mark, &mark] {
                turns.push(
                    client
                        .call::<Submit>(SubmitParams {
                            session: Some(id.to_string()),
                            prompt: prompt.clone(),
                            ..Default::default()
                        })
                        .await
                        .expect("submit")
                        .turn
                        .turn_id,
                );
            }
            sessions.push((id, turns[0], turns[1..].to_vec()));
        }
        sessions
    });
    for (_, turn, _) in &sessions {
        sessiond_tests::eventually("the stubborn workers to start", || {
            ran.join(turn.to_string()).exists()
        });
    }
    let workers: Vec<WorkerProc> = sandbox_processes(&root)
        .into_iter()
        .filter(WorkerProc::is_leader)
        .collect();
    assert_eq!(workers.len(), 3, "{tag}: three workers: {workers:?}");
    sigkill(&daemon);
    drop(daemon);
    assert!(
        workers.iter().all(WorkerProc::alive),
        "{tag}: the workers outlive their daemon"
    );

    // Kill the next daemon as soon as its settlement has signalled a worker, and the one after
    // that once its settlement has ended one worker (SIGKILL after the grace).
    let mut kill_points = Vec::new();
    for (k, point) in ["first SIGTERM sent", "first worker ended"]
        .iter()
        .enumerate()
    {
        let attempt_log = sb.root.join(format!("settle-{k}.log"));
        let term_files = || {
            std::fs::read_dir(&ran)
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".term"))
                .count()
        };
        let terms_before = term_files();
        let mut attempt = spawn_daemon(&sb, &attempt_log);
        let deadline = Instant::now() + START_WAIT;
        loop {
            let reached = match k {
                0 => term_files() > terms_before,
                _ => workers.iter().any(|w| !w.alive()),
            };
            if reached {
                break;
            }
            assert!(
                attempt.running(),
                "{tag}: daemon {k} exited before the kill point: {}",
                log_tail(&attempt_log)
            );
            assert!(
                Instant::now() < deadline,
                "{tag}: daemon {k} never reached \"{point}\": {}",
                log_tail(&attempt_log)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let extra = rng.between(0, 60);
        std::thread::sleep(Duration::from_millis(extra));
        sigkill(&attempt);
        attempt.wait();
        let phase = start_up_phase(&sb, &attempt, &attempt_log);
        let image = crash_image(&sb, &sb.root.join(format!("settle-crash-{k}")));
        assert_eq!(image.integrity, "ok", "{tag}: integrity after kill {k}");
        let statuses: Vec<&str> = sessions
            .iter()
            .map(|(_, t, _)| image.turns[t].status.as_str())
            .collect();
        for status in &statuses {
            assert!(
                *status == "running" || *status == "interrupted",
                "{tag}: a stubborn turn is stored as {status} after kill {k}"
            );
        }
        let alive = workers.iter().filter(|w| w.alive()).count();
        eprintln!(
            "{tag}: daemon {k} killed {extra} ms after \"{point}\" ({phase}); stored {statuses:?}; \
             {alive} workers alive"
        );
        kill_points.push(format!(
            "{point} + {extra} ms ({phase}, {alive} of 3 workers alive)"
        ));
    }

    // The last start settles the rest: each stubborn turn interrupted exactly once, every
    // worker gone, every queue held with its two turns unrun.
    let daemon = start_daemon(&sb, &log, &tag);
    assert!(
        still_running_after(&workers, Duration::ZERO).is_empty(),
        "{tag}: a worker survived the settlement"
    );
    let left = still_running_after(&sandbox_processes(&root), Duration::from_secs(2));
    assert!(left.is_empty(), "{tag}: processes survived: {left:?}");
    let runs = runs_by_turn(&ran);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for (session, stubborn, queued) in &sessions {
        let turns = turns_of(&rt, &opts, *session);
        let mut expected = vec![(*stubborn, TurnStatus::Interrupted)];
        expected.extend(queued.iter().map(|t| (*t, TurnStatus::Queued)));
        let mut got = turns.clone();
        got.sort_by_key(|(t, _)| expected.iter().position(|(e, _)| e == t));
        assert_eq!(got, expected, "{tag}: session {session}'s turns");
        let queue = queue_of(&rt, &opts, *session);
        // "daemon_restarted" if this start settled it; a start after the one that did says
        // "paused before the daemon restarted" (only the hold is stored, not its reason).
        let reason = queue.paused.clone().unwrap_or_default();
        assert!(
            reason == "daemon_restarted" || reason == "paused before the daemon restarted",
            "{tag}: {session}'s queue is not held after the restart: {:?}",
            queue.paused
        );
        *reasons.entry(reason).or_default() += 1;
        assert!(queue.running.is_none(), "{tag}: {session} runs nothing");
        assert_eq!(
            runs.get(&stubborn.to_string()),
            Some(&1),
            "{tag}: {stubborn}"
        );
        for turn in queued {
            assert!(!runs.contains_key(&turn.to_string()), "{tag}: {turn} ran");
        }
    }
    // Resumed, the queued turns run once each, and no stubborn turn settles a second time.
    let ledger: Shared = Arc::default();
    let (events, _) = rt.block_on(subscriber(&opts, ledger.clone()));
    rt.block_on(async {
        let client = Client::connect(&opts).await.expect("connect");
        for (session, _, _) in &sessions {
            client
                .call::<Resume>(params_for(*session))
                .await
                .expect("resume");
        }
    });
    for (session, _, queued) in &sessions {
        sessiond_tests::eventually("the released turns to complete", || {
            let turns = turns_of(&rt, &opts, *session);
            queued.iter().all(|q| {
                turns
                    .iter()
                    .any(|(t, s)| t == q && *s == TurnStatus::Completed)
            })
        });
    }
    let runs = runs_by_turn(&ran);
    for (_, _, queued) in &sessions {
        for turn in queued {
            assert_eq!(runs.get(&turn.to_string()), Some(&1), "{tag}: {turn} runs");
        }
    }
    stop_gracefully(daemon, &tag);
    let record = rt.block_on(events).expect("subscriber");
    check_event_order(&record, &tag);
    let settled_again: Vec<TurnId> = lock(&ledger)
        .settled
        .iter()
        .filter(|t| sessions.iter().any(|(_, s, _)| s == *t))
        .copied()
        .collect();
    assert!(
        settled_again.is_empty(),
        "{tag}: interrupted turns settled again after the restart: {settled_again:?}"
    );
    let integrity = integrity_of_file(&sb.state.join("sessiond.db"));
    assert_eq!(
        integrity, "ok",
        "{tag}: integrity_check of the final database"
    );

    let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r:?}")).collect();
    let result = format!(
        "seed {seed}; daemons killed at: {}; then a normal start: 3 of 3 turns interrupted \
         exactly once (one row each, no second settle event), 0 of 3 workers alive, 3 of 3 \
         queues held ({}) with their 6 turns unrun, each run once after resume; \
         integrity_check ok 3 times; took {:.1} s",
        kill_points.join("; "),
        reasons.join(", "),
        started.elapsed().as_secs_f64()
    );
    eprintln!("chaos_kill_during_settlement: {result}");
    Row::new("crash", "chaos_kill_during_settlement")
        .done(
            "3 turns whose workers ignore SIGTERM left running by a SIGKILLed daemon; the next \
             daemon killed just after its settlement signalled a worker, the one after that \
             once its settlement had killed one",
        )
        .runs(2)
        .checked(
            "each turn interrupted exactly once, no worker alive, queue held with \
             daemon_restarted, queued turns unrun until resume and then run once, \
             integrity_check after each kill",
        )
        .result(result)
        .record();
}

// ---- Targeted kills at two narrow windows ------------------------------------------------------

/// Creates one `shell` session named `name` in `project`; returns its id.
fn create_named(
    rt: &tokio::runtime::Runtime,
    opts: &ConnectOptions,
    project: String,
    name: &str,
) -> SessionId {
    rt.block_on(async {
        let client = Client::connect(opts).await.expect("connect");
        client
            .call::<Create>(CreateParams {
                project,
                provider: "shell".into(),
                name: Some(name.into()),
                cwd: None,
            })
            .await
            .expect("create")
            .id
    })
}
//
// The random rounds above reach these windows only rarely; these two tests aim at them. Both
// fail against the daemon as it is (see the messages), so they are ignored until it is fixed:
// `cargo test -p sessiond-tests --test chaos -- --ignored`.

/// A switch to a context no switch has reached before is shown (its event, with generation 1)
/// before it is durable. Killed in between, the next daemon has no row for the context, so
/// nothing moves it up by 2^20, and its next switch hands out generation 1 again: PROTOCOL.md
/// promises "numbers a client saw from a daemon that crashed before saving them are never
/// reused". (daemon/src/registry.rs: `Registry::new` bumps only the contexts it loaded;
/// `point` starts a new one at 0.)
#[test]
fn chaos_kill_after_a_first_switch_is_seen_reuses_no_generation() {
    use sessiond_proto::session::EventFilter;
    let (seed, _, _note) = announce("first_switch_generation", 5);
    let tag = format!("seed {seed} first switch");
    let sb = Sandbox::with_config(CONFIG);
    let log = sb.root.join("daemon.log");
    let project = sb.project("p").display().to_string();
    let rt = sessiond_tests::tokio_runtime();
    let opts = options(&sb);
    let mut daemon = start_daemon(&sb, &log, &tag);
    let session = create_named(&rt, &opts, project, "s");
    let attempts = 20;
    let mut reused = Vec::new();
    for i in 0..attempts {
        let context = format!("fresh-{i}");
        // Kill the daemon the moment a subscriber sees the context's first switch.
        let shown = rt.block_on(async {
            let watcher = Client::connect(&opts).await.expect("connect");
            let mut events = watcher.take_events().expect("events");
            watcher
                .call::<Subscribe>(SubscribeParams {
                    filter: EventFilter {
                        events: vec!["session_switched".into()],
                        ..Default::default()
                    },
                })
                .await
                .expect("subscribe");
            let switcher = Client::connect(&opts).await.expect("connect");
            let target = context.clone();
            tokio::spawn(async move {
                let _ = switcher
                    .call::<Switch>(SessionParams {
                        session: Some(session.to_string()),
                        project: None,
                        context: Some(target),
                    })
                    .await;
            });
            loop {
                let payload = tokio::time::timeout(sessiond_tests::WAIT, events.recv())
                    .await
                    .expect("the switch's event")
                    .expect("an event");
                let event: AnyEvent = sessiond_proto::frame::decode(&payload).expect("event");
                if event.data["context"] == context.as_str() {
                    break event.data["generation"].as_u64().expect("generation");
                }
            }
        });
        sigkill(&daemon);
        daemon.wait();
        daemon = start_daemon(&sb, &log, &tag);
        let now = rt.block_on(async {
            let client = Client::connect(&opts).await.expect("connect");
            client
                .call::<Current>(ContextParams {
                    context: Some(context.clone()),
                })
                .await
                .expect("current")
                .generation
        });
        if now <= shown {
            reused.push(format!(
                "context {context}: generation {shown} was shown, the restarted daemon is at \
                 {now}, so its next switch hands out {} again",
                now + 1
            ));
        }
    }
    stop_gracefully(daemon, &tag);
    assert!(
        reused.is_empty(),
        "{tag}: {} of {attempts} kills right after a first switch was shown led to reused \
         generations:\n{}",
        reused.len(),
        reused.join("\n")
    );
    Row::new("crash", "chaos_kill_after_first_switch")
        .done("SIGKILL the moment a subscriber sees a context's first switch, then restart")
        .runs(attempts)
        .checked("the restarted daemon's generation for the context is above the one shown")
        .result(format!(
            "seed {seed}; 0 of {attempts} generations handed out twice"
        ))
        .record();
}

/// The daemon claims the session (its pid file names the daemon), spawns the worker, and only
/// then writes the worker's pid to the pid file and the turn's row. Killed in between, the next
/// daemon knows no pid for the worker: it waits out the grace for the lock the worker holds,
/// settles the turn `interrupted`, and leaves the worker running, owning the session.
/// (daemon/src/runner.rs `run_turn`: `cmd.spawn()` before `claim.hand_to` and
/// `worker_started`; daemon/src/recovery.rs `settle_at_startup` finds workers only by those.)
#[test]
fn chaos_kill_between_spawn_and_pid_record_leaves_no_orphan() {
    let (seed, mut rng, _note) = announce("spawn_window", 6);
    let tag = format!("seed {seed} spawn window");
    let sb = Sandbox::with_config(CONFIG);
    let log = sb.root.join("daemon.log");
    let project = sb.project("p").display().to_string();
    let root = format!("{}/", std::fs::canonicalize(&sb.root).unwrap().display());
    let rt = sessiond_tests::tokio_runtime();
    let opts = options(&sb);
    let mut daemon = start_daemon(&sb, &log, &tag);
    let session = create_named(&rt, &opts, project, "s");
    let pid_file = sb.state.join("sessions").join(format!("{session}.pid"));
    let attempts: usize = 12;
    let mut orphans = Vec::new();
    let mut missed = 0;
    // Ours, and in the way of the next attempt's claim: a survivor is recorded and ended.
    let sweep = |orphans: &mut Vec<String>, attempt: usize, record: &str| {
        let left = still_running_after(&sandbox_processes(&root), Duration::from_secs(1));
        if !left.is_empty() {
            orphans.push(format!(
                "attempt {attempt}: pid file {:?}; alive after the restart: {:?}",
                record.trim(),
                left.iter().map(|p| p.pid).collect::<Vec<_>>()
            ));
            for p in &left {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), Signal::SIGKILL);
            }
            assert!(still_running_after(&left, Duration::from_secs(2)).is_empty());
        }
    };
    for i in 0..attempts {
        // Sent from a task: the claim, spawn and pid record may all happen before the answer
        // reaches the client, so the pid file is watched from before the request goes out.
        let opts_for_task = opts.clone();
        let submitted = rt.spawn(async move {
            let client = Client::connect(&opts_for_task).await.expect("connect");
            // Held after the previous kill; refused the first time.
            let _ = client.call::<Resume>(params_for(session)).await;
            let _ = client
                .call::<Submit>(SubmitParams {
                    session: Some(session.to_string()),
                    prompt: "exec sleep 30".into(),
                    ..Default::default()
                })
                .await;
        });
        // The claim names the daemon; the kill comes 0–2 ms later, around the spawn. If the
        // pid file already names the worker (this thread was not scheduled in time), the kill
        // is an ordinary mid-turn one.
        let deadline = Instant::now() + sessiond_tests::WAIT;
        let daemon_pid = i64::from(daemon.pid());
        loop {
            let named = std::fs::read(&pid_file)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["pid"].as_i64());
            if named == Some(daemon_pid) {
                break;
            }
            let parent = named.and_then(|pid| stat_of(pid as i32)).map(|_| {
                std::fs::read_to_string(format!("/proc/{}/stat", named.unwrap_or(0)))
                    .unwrap_or_default()
            });
            let child_of_daemon = parent.is_some_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<i64>().ok())
                    == Some(daemon_pid)
            });
            if child_of_daemon {
                missed += 1;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{tag}: attempt {i}: the claim never showed; the pid file says {:?}; log: {}",
                std::fs::read_to_string(&pid_file),
                log_tail(&log)
            );
        }
        std::thread::sleep(Duration::from_micros(rng.between(0, 2000)));
        sigkill(&daemon);
        daemon.wait();
        let _ = rt.block_on(submitted);
        let record = std::fs::read_to_string(&pid_file).unwrap_or_default();
        daemon = start_daemon(&sb, &log, &tag);
        // A worker forked but not yet exec'd at the kill shows up a moment later: wait for
        // the settlement's grace before looking.
        std::thread::sleep(Duration::from_millis(300));
        sweep(&mut orphans, i, &record);
    }
    stop_gracefully(daemon, &tag);
    assert!(
        orphans.is_empty(),
        "{tag}: {} of {attempts} kills around a worker's spawn ({missed} of them missed the \
         window) left it running after the restart (the daemon's log says \"settled as \
         interrupted\" without \"ending it\"):\n{}",
        orphans.len(),
        orphans.join("\n")
    );
    Row::new("crash", "chaos_kill_around_spawn")
        .done("SIGKILL 0–2 ms after the session's claim names the daemon, around the spawn")
        .runs(attempts as u64)
        .checked("no process of the session survives the restart")
        .result(format!("seed {seed}; 0 of {attempts} workers survived"))
        .record();
}
