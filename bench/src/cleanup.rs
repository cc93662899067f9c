//! What the harness must not leave behind however it ends: the daemons it started, the tmux
//! server, and its temp dirs.
//!
//! A normal end undoes each through its owner's `Drop`. SIGINT, SIGTERM and SIGHUP would skip
//! those, so a thread of its own takes them, undoes everything registered here, and exits
//! with 128 + the signal's number. (It catches them rather than block them for a `sigwait`:
//! children inherit a blocked mask, and sessiond, pueued and the programs measured would
//! then never see a SIGTERM or a Ctrl-C; a caught signal is reset to its default by exec.)
//!
//! A SIGKILL cannot be handled, so what the harness starts does not rely on it. The daemons
//! carry a parent-death signal ([`die_with_harness`]). The tmux server forks away from its
//! client, so that would not reach it; its sessions' processes end when the harness does
//! instead (see `peers::Tmux`), and a server with no sessions exits. Every temp dir is made
//! inside one run directory whose name carries the harness's pid; the next run removes those
//! whose harness is gone ([`sweep_stale`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// The start of every run directory's name, followed by the harness's pid and a dash.
const RUN_DIR_PREFIX: &str = "sdbench-run-";

/// How long a daemon gets to exit on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(2);

struct Registry {
    /// Processes to stop: the daemons (sessiond, pueued) and the echo process.
    children: Vec<u32>,
    /// tmux program and socket of each server started.
    tmux: Vec<(PathBuf, PathBuf)>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    children: Vec::new(),
    tmux: Vec::new(),
});

static RUN_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Set when a signal began the cleanup: the main thread's commands then fail because their
/// daemons are being stopped, which is no failure worth reporting.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn is_interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The registry, even if a thread panicked holding it: cleaning up matters more then.
fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the thread that takes the signals that end a run, and returns once it has them
/// (before that, they end the harness with nothing yet to undo).
pub fn install() -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let (ready, caught) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let listen = || -> std::io::Result<_> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()?;
                let streams = rt.block_on(async {
                    Ok::<_, std::io::Error>((
                        signal(SignalKind::interrupt())?,
                        signal(SignalKind::terminate())?,
                        signal(SignalKind::hangup())?,
                    ))
                })?;
                Ok((rt, streams))
            };
            let (rt, (mut int, mut term, mut hup)) = match listen() {
                Ok(listening) => listening,
                Err(e) => {
                    let _ = ready.send(Err(format!("cannot catch signals: {e}")));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            let sig = rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => Signal::SIGINT,
                    _ = term.recv() => Signal::SIGTERM,
                    _ = hup.recv() => Signal::SIGHUP,
                }
            });
            interrupted(sig);
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    caught
        .recv()
        .map_err(|_| "the signal thread ended".to_string())?
}

/// Undoes everything registered and exits non-zero. The registry stays locked until the
/// exit, so the main thread cannot finish (see [`RunGuard`]) or register more meanwhile.
fn interrupted(sig: Signal) -> ! {
    INTERRUPTED.store(true, Ordering::SeqCst);
    eprintln!("sessiond-bench: {sig}: stopping what it started and removing its temp dirs");
    let reg = registry();
    stop_children(&reg.children);
    for (program, socket) in &reg.tmux {
        kill_tmux_server(program, socket);
    }
    if let Some(dir) = RUN_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(128 + sig as i32);
}

/// SIGTERM to each, then SIGKILL to those still there after [`STOP_GRACE`].
fn stop_children(pids: &[u32]) {
    let pids: Vec<Pid> = pids.iter().map(|&p| Pid::from_raw(p as i32)).collect();
    for &pid in &pids {
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    let mut left = pids;
    while !left.is_empty() && Instant::now() < deadline {
        // Reaped here, or by the main thread (then `waitpid` fails): gone either way.
        left.retain(|&pid| {
            matches!(
                waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in left {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
    }
}

/// Ends a tmux server and every session on it.
pub fn kill_tmux_server(program: &Path, socket: &Path) {
    let _ = Command::new(program)
        .arg("-S")
        .arg(socket)
        .arg("kill-server")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Held by `main` for the whole run; when it goes (last, a panic's unwinding included), it
/// waits for a cleanup an interrupt began (which ends the process) and removes the run
/// directory, whose daemons and peers are gone by then.
pub struct RunGuard;

impl Drop for RunGuard {
    fn drop(&mut self) {
        let _reg = registry();
        if let Some(dir) = RUN_DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn track_child(pid: u32) {
    registry().children.push(pid);
}

pub fn untrack_child(pid: u32) {
    registry().children.retain(|&p| p != pid);
}

pub fn track_tmux(program: &Path, socket: &Path) {
    registry()
        .tmux
        .push((program.to_path_buf(), socket.to_path_buf()));
}

pub fn untrack_tmux(socket: &Path) {
    registry().tmux.retain(|(_, s)| s != socket);
}

/// The directory every temp dir of this run is made in, made on first use.
pub fn run_dir() -> Result<&'static Path, String> {
    if let Some(dir) = RUN_DIR.get() {
        return Ok(dir);
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("{RUN_DIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?
        .keep();
    // Only the main thread makes temp dirs, so nothing can have set it meanwhile.
    Ok(RUN_DIR.get_or_init(|| dir))
}

/// A temp dir for one daemon or peer, inside the run directory.
pub fn temp_dir(prefix: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(run_dir()?)
        .map_err(|e| format!("temp dir: {e}"))
}

/// Sets a parent-death signal on `cmd`: SIGKILL when the harness's main thread exits (the
/// kernel ties it to the thread that forked, and the harness spawns from the main thread
/// only). For long-lived processes only: with a `pre_exec` hook std forks instead of using
/// `posix_spawn`, which would change what a measured command's own spawn costs.
fn die_with_harness(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let harness = nix::unistd::getpid();
    // SAFETY: between fork and exec only async-signal-safe calls are allowed: prctl and
    // getppid are system calls, and the error is built without allocating.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| std::io::Error::from_raw_os_error(e as i32))?;
            // The harness died before the signal was set: it will never come.
            if nix::unistd::getppid() != harness {
                return Err(std::io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Spawns a long-lived process that must not outlive the harness: with the parent-death
/// signal ([`die_with_harness`]), and tracked, so an interrupt stops it too. The caller
/// untracks it when it stops it.
pub fn spawn_tracked(cmd: &mut Command) -> std::io::Result<std::process::Child> {
    die_with_harness(cmd);
    let child = cmd.spawn()?;
    track_child(child.id());
    Ok(child)
}

/// Removes the run directories of earlier runs whose harness is gone (killed, so nothing
/// undid them), after ending any tmux server still listening in one. Returns how many.
pub fn sweep_stale() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(RUN_DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // Signal 0 checks the process exists; a pid in use by anything else is left alone.
        if pid == std::process::id() as i32
            || nix::sys::signal::kill(Pid::from_raw(pid), None) != Err(nix::errno::Errno::ESRCH)
        {
            continue;
        }
        let dir = entry.path();
        if let Some(tmux) = crate::binaries::on_path("tmux") {
            for socket in tmux_sockets(&dir) {
                kill_tmux_server(&tmux, &socket);
            }
        }
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The tmux sockets in the peers' dirs directly under a run directory.
fn tmux_sockets(run_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path().join(crate::peers::TMUX_SOCKET))
        .filter(|p| p.exists())
        .collect()
}
