//! Starting the daemon when none answers, so that `sessionctl` alone is enough.
//!
//! Many clients may find no daemon at the same moment (a shell starting ten status lines, an
//! editor opening). They serialise on `RUNTIME/autostart.lock`; whoever holds it first tries to
//! connect once more (someone may have just started it), and only then runs
//! `sessiond --detach`, which returns once its socket accepts. The rest, getting the lock
//! after, find the daemon already up. The daemon's own instance lock makes a duplicate
//! impossible even if this serialisation were bypassed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sessiond_proto::paths::{ensure_private_dir, DirKind};

use crate::error::ClientError;
use crate::options::ConnectOptions;
use crate::transport::{running_daemon, try_connect_sync, Attempt};

/// sessiond's exit status when another daemon already runs (see `sessiond --help`).
const DAEMON_EXIT_ALREADY_RUNNING: i32 = 3;

/// How long a daemon without a socket is given to recreate it or exit: longer than its default
/// housekeeping tick (`socket_check_interval_ms`, 10 s), which recreates a deleted socket.
const SOCKET_RETURN: Duration = Duration::from_secs(12);

/// sessiond's exit status for a bad command line.
const DAEMON_EXIT_USAGE: i32 = 2;

/// Makes sure a daemon runs, starting one if needed. Returns once one accepts connections or
/// the startup timeout passes: whether this call started it (false: one was up, or another
/// client started it meanwhile).
pub fn ensure_daemon(opts: &ConnectOptions) -> Result<bool, ClientError> {
    let paths = &opts.paths;
    ensure_private_dir(&paths.runtime_dir, DirKind::Runtime)?;
    let deadline = Instant::now() + opts.startup_timeout;
    let lock_path = paths.autostart_lock();
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let lock = options
        .open(&lock_path)
        .map_err(|e| ClientError::Local(format!("cannot open {}: {e}", lock_path.display())))?;
    lock_until(&lock, deadline).map_err(|e| match e {
        None => ClientError::Local(format!(
            "another client has held {} for {:?} while starting sessiond; check `ps` for a \
             stuck sessiond or sessionctl",
            lock_path.display(),
            opts.startup_timeout
        )),
        Some(e) => ClientError::Local(format!("cannot lock {}: {e}", lock_path.display())),
    })?;
    // Someone else may have started it while we waited for the lock.
    if let Attempt::Connected(_) = try_connect_sync(paths, opts.timeout)? {
        return Ok(false);
    }
    // A daemon holds the instance lock but has no socket: it is shutting down (it removes the
    // socket first and exits once its turns are ended and its connections closed), or a
    // cleaner deleted its socket (it recreates it on its next housekeeping tick). Either way,
    // wait for the socket or for the lock to become free rather than start a daemon that
    // would be refused; long enough for the default tick.
    let deadline = deadline.max(Instant::now() + SOCKET_RETURN);
    let mut waited = false;
    while let Some(daemon) = running_daemon(paths) {
        waited = true;
        if let Attempt::Connected(_) = try_connect_sync(paths, opts.timeout)? {
            return Ok(false);
        }
        if Instant::now() >= deadline {
            return Err(ClientError::SocketMissing {
                socket: paths.socket(),
                detail: daemon.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The old daemon has exited: the new one gets the whole start-up time.
    let deadline = if waited {
        Instant::now() + opts.startup_timeout
    } else {
        deadline
    };
    spawn_detached(opts, deadline).map(|()| true)
    // `lock` is released when dropped here, after the daemon accepts.
}

/// Takes `file`'s lock, waiting until `deadline`. `Err(None)` on timeout.
fn lock_until(file: &File, deadline: Instant) -> Result<(), Option<std::io::Error>> {
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(Some(e)),
        }
    }
}

/// `sessiond` with the directories (and the config, when chosen) of `opts`: what autostart runs.
fn daemon_command(opts: &ConnectOptions) -> Command {
    let paths = &opts.paths;
    let mut cmd = Command::new(opts.daemon_program());
    cmd.arg("--runtime-dir")
        .arg(&paths.runtime_dir)
        .arg("--state-dir")
        .arg(&paths.state_dir);
    // Only pass the config when it was chosen explicitly: an explicit file must exist, while
    // the default one may be absent.
    if paths.config_explicit {
        cmd.arg("--config").arg(&paths.config);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn cannot_run(program: &Path, e: &std::io::Error) -> String {
    format!(
        "cannot run {}: {e}; install sessiond beside this program or on PATH, or set \
         SESSIOND_BIN to it",
        program.display()
    )
}

/// Why a daemon started now would not come up, as `sessiond --check-config` finds with the
/// directories and config autostart would give it; `None` when it would start. Starts
/// nothing, so `daemon restart` asks this before stopping the daemon that runs.
///
/// A sessiond too old to know the check (it refuses the flag as a bad command line) passes:
/// the restart then goes ahead as it did before the check existed.
pub fn start_refusal(opts: &ConnectOptions) -> Result<Option<String>, ClientError> {
    if let Some(reason) = read_once(opts) {
        return Ok(Some(reason));
    }
    let program = opts.daemon_program();
    let mut cmd = daemon_command(opts);
    cmd.arg("--check-config");
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        // A daemon that cannot even be run would not start either.
        Err(e) => return Ok(Some(cannot_run(&program, &e))),
    };
    // Read while it runs: a long message must not fill the pipe and stall it.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    });
    // It reads one file; a config path that is a FIFO nobody writes must not hang us.
    let deadline = Instant::now() + opts.startup_timeout;
    let Some(status) = wait_until(&mut child, deadline, &program)? else {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(Some(format!(
            "`{} --check-config` did not finish within {:?}; is the config file {} readable?",
            program.display(),
            opts.startup_timeout,
            opts.paths.config.display()
        )));
    };
    if status.success() || status.code() == Some(DAEMON_EXIT_USAGE) {
        return Ok(None);
    }
    let stderr = stderr
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    Ok(Some(match stderr.trim() {
        "" => format!(
            "`{} --check-config` exited with {status}",
            program.display()
        ),
        text => text.strip_prefix("sessiond: ").unwrap_or(text).to_string(),
    }))
}

/// Why the config cannot serve both a check and a start: a pipe (`--config <(…)`) gives its
/// text to the first reader only, so the check would take it and the new daemon find it
/// empty, after the running one was stopped.
fn read_once(opts: &ConnectOptions) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let paths = &opts.paths;
        let kind = std::fs::metadata(&paths.config).ok()?.file_type();
        if paths.config_explicit && (kind.is_fifo() || kind.is_socket()) {
            return Some(format!(
                "the config {} is a pipe, which only its first reader gets: the check made \
                 before stopping the running daemon would take it, and the new one would find \
                 it empty. Write the config to a file and pass that",
                paths.config.display()
            ));
        }
    }
    let _ = opts;
    None
}

/// The `sessiond --check-config` command [`start_refusal`] runs, as a line to paste into a
/// shell.
pub fn check_command_line(opts: &ConnectOptions) -> String {
    let mut cmd = daemon_command(opts);
    cmd.arg("--check-config");
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| shell_word(&word.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `word` as a shell reads it back: as it is when that is safe, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `sessiond --detach` with the same directories and waits for it to report ready.
fn spawn_detached(opts: &ConnectOptions, deadline: Instant) -> Result<(), ClientError> {
    let paths = &opts.paths;
    let program = opts.daemon_program();
    let mut cmd = daemon_command(opts);
    cmd.arg("--detach");
    // What the log held before: only what this start writes explains its failure.
    let log_start = std::fs::metadata(paths.log_file()).map_or(0, |m| m.len());
    let mut child = cmd.spawn().map_err(|e| ClientError::Autostart {
        reason: cannot_run(&program, &e),
        log: paths.log_file(),
        tail: String::new(),
    })?;
    let Some(status) = wait_until(&mut child, deadline, &program)? else {
        // It may still come up; leave it be rather than kill a daemon mid-start.
        return Err(ClientError::Autostart {
            reason: format!(
                "{} did not report ready within {:?}",
                program.display(),
                opts.startup_timeout
            ),
            log: paths.log_file(),
            tail: log_tail(&paths.log_file(), log_start),
        });
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    if status.success() {
        // `sessiond --detach` exits 0 only once its socket accepts: a program that exits 0
        // without serving it is not one (a wrapper that forgot to wait, say).
        return match try_connect_sync(paths, opts.timeout)? {
            Attempt::Connected(_) => Ok(()),
            Attempt::Absent => Err(ClientError::Autostart {
                reason: format!(
                    "{} exited 0, but no daemon serves {}; the program autostart runs must be \
                     sessiond (see SESSIOND_BIN), which exits once its socket accepts",
                    program.display(),
                    paths.socket().display()
                ),
                log: paths.log_file(),
                tail: log_tail(&paths.log_file(), log_start),
            }),
        };
    }
    if status.code() == Some(DAEMON_EXIT_ALREADY_RUNNING) {
        // Another daemon won: on our runtime directory (its socket is missing), or on our
        // state directory from another runtime directory (its message says where).
        return Err(match running_daemon(paths) {
            Some(daemon) => ClientError::SocketMissing {
                socket: paths.socket(),
                detail: daemon.to_string(),
            },
            None => ClientError::Autostart {
                reason: stderr.trim().to_string(),
                log: paths.log_file(),
                tail: String::new(),
            },
        });
    }
    let reason = match stderr.trim() {
        "" => format!("{} exited with {status}", program.display()),
        text => text.to_string(),
    };
    Err(ClientError::Autostart {
        reason,
        log: paths.log_file(),
        tail: log_tail(&paths.log_file(), log_start),
    })
}

/// Waits for `child` (running `program`) to exit; `None` if it has not by `deadline`.
fn wait_until(
    child: &mut std::process::Child,
    deadline: Instant,
    program: &Path,
) -> Result<Option<std::process::ExitStatus>, ClientError> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(ClientError::Local(format!(
                    "waiting for {}: {e}",
                    program.display()
                )))
            }
        }
    }
}

/// The last lines the daemon's log gained past byte `from`, for an error message.
fn log_tail(path: &Path, from: u64) -> String {
    const LINES: usize = 15;
    const WINDOW: u64 = 16 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A log shorter than before was replaced: all of it is new.
    let from = if len < from { 0 } else { from };
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(WINDOW).max(from)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..].join("\n")
}
