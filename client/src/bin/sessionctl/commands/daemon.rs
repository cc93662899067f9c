//! `sessionctl daemon …`: status, start, stop, restart, log-level, paths.

use std::time::{Duration, Instant};

use serde::Serialize;
use sessiond_client::{autostart, running_daemon, BlockingClient, ClientError, ConnectOptions};
use sessiond_proto::methods::{
    SetLogLevel, SetLogLevelParams, Shutdown, ShutdownParams, Status, StatusParams, StatusResult,
};

use crate::cli::DaemonCommand;
use crate::output::{human_duration, Out};

pub fn run(cmd: &DaemonCommand, opts: &ConnectOptions, out: &Out) -> Result<(), ClientError> {
    match cmd {
        DaemonCommand::Status => status(opts, out),
        DaemonCommand::Start => start(opts, out),
        DaemonCommand::Stop => stop(opts, out),
        DaemonCommand::Restart => restart(opts, out),
        DaemonCommand::LogLevel { level } => log_level(opts, out, level),
        DaemonCommand::Paths => paths(opts, out),
    }
}

/// Options that never start a daemon: for commands about the one that runs.
fn existing_only(opts: &ConnectOptions) -> ConnectOptions {
    let mut opts = opts.clone();
    opts.autostart = false;
    opts
}

fn fetch_status(opts: &ConnectOptions) -> Result<StatusResult, ClientError> {
    BlockingClient::connect(opts)?.call::<Status>(StatusParams {})
}

fn status(opts: &ConnectOptions, out: &Out) -> Result<(), ClientError> {
    let s = fetch_status(&existing_only(opts))?;
    out.emit(&s, |w| {
        writeln!(
            w,
            "sessiond {} (protocol {}), pid {}, up {}",
            s.version,
            s.protocol,
            s.pid,
            human_duration(s.uptime_ms)
        )?;
        let config_note = if std::path::Path::new(&s.config).exists() {
            ""
        } else {
            " (absent: defaults)"
        };
        let rows = [
            ("socket", s.socket.clone()),
            ("runtime dir", s.runtime_dir.clone()),
            ("state dir", s.state_dir.clone()),
            ("config", format!("{}{config_note}", s.config)),
            (
                "log",
                s.log_file
                    .clone()
                    .unwrap_or_else(|| "stderr of the daemon".into()),
            ),
            ("log level", s.log_level.clone()),
            (
                "connections",
                format!("{} of {}", s.connections, s.max_connections),
            ),
            ("max frame", format!("{} bytes", s.max_frame_bytes)),
            ("sessions", s.sessions.to_string()),
            ("subscribers", s.subscriptions.to_string()),
            ("database", s.database.clone()),
            (
                "storage",
                s.storage_error.as_ref().map_or("ok".to_string(), |e| {
                    format!("FAILING: {e} (changes are refused; it retries every second)")
                }),
            ),
        ];
        for (key, value) in rows {
            writeln!(w, "  {key:<12} {value}")?;
        }
        if let Some(manager) = &s.supervisor {
            writeln!(
                w,
                "  {:<12} {manager} (stop and restart it with `systemctl --user`)",
                "run by"
            )?;
        }
        Ok(())
    })
}

#[derive(Serialize)]
struct StartReport {
    /// Whether this command started it (false: it was already running).
    started: bool,
    pid: u32,
    socket: String,
}

fn start(opts: &ConnectOptions, out: &Out) -> Result<(), ClientError> {
    let started = match fetch_status(&existing_only(opts)) {
        Ok(_) => false,
        // Several `daemon start`s at once: only the one that started it says so. One that
        // comes while another is starting it finds the lock held and no socket yet, and waits
        // for the socket as autostart does.
        Err(ClientError::NotRunning { .. } | ClientError::SocketMissing { .. }) => {
            autostart::ensure_daemon(opts)?
        }
        Err(e) => return Err(e),
    };
    let s = fetch_status(&existing_only(opts))?;
    // Already running, but not as this sessionctl would have started it: the user asked for
    // these settings, and should not believe they are in force.
    if !started {
        let ours = &opts.paths;
        for (what, theirs, ours) in [
            ("state dir", &s.state_dir, &ours.state_dir),
            ("config", &s.config, &ours.config),
        ] {
            if std::path::Path::new(theirs) != *ours {
                eprintln!(
                    "sessionctl: the running daemon uses {what} {}, not {} as given here; \
                     to change it, `sessionctl daemon stop`, then start again",
                    crate::output::visible(theirs),
                    crate::output::visible(&ours.display().to_string())
                );
            }
        }
    }
    let report = StartReport {
        started,
        pid: s.pid,
        socket: s.socket,
    };
    out.emit(&report, |w| {
        let verb = if started {
            "started"
        } else {
            "already running:"
        };
        writeln!(
            w,
            "sessiond {verb} pid {}, socket {}",
            report.pid, report.socket
        )
    })
}

#[derive(Serialize)]
struct StopReport {
    /// Whether a daemon was stopped (false: none was running).
    stopped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    /// Turns that were running and were ended with it (absent when none ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_turns: Option<u32>,
}

/// A daemon that was stopped: its pid, and how many running turns it ended.
struct Stopped {
    pid: u32,
    ended_turns: u32,
}

/// `ended_turns` for `--json`: absent when no daemon was stopped or it ended no turn.
fn ended_turns(stopped: &Option<Stopped>) -> Option<u32> {
    stopped.as_ref().map(|s| s.ended_turns).filter(|&n| n > 0)
}

/// What to tell a person about turns a stop ended, if it ended any.
fn ended_note(ended_turns: u32) -> String {
    match ended_turns {
        0 => String::new(),
        n => format!(
            "; it ended {n} running turn{} (interrupted; each session's queue is paused until \
             `sessionctl resume SESSION`)",
            if n == 1 { "" } else { "s" }
        ),
    }
}

/// Asks the daemon to stop and waits until it has exited; `None` when none was running.
///
/// A daemon that cannot be asked (it speaks another protocol version after an upgrade, or its
/// socket was deleted) is sent SIGTERM instead, which every version treats as a graceful
/// shutdown: `restart` must work exactly when the client and daemon disagree.
fn stop_daemon(opts: &ConnectOptions) -> Result<Option<Stopped>, ClientError> {
    let opts = existing_only(opts);
    let asked =
        BlockingClient::connect(&opts).and_then(|mut c| c.call::<Shutdown>(ShutdownParams {}));
    let (pid, grace, ended_turns) = match asked {
        Ok(r) => (r.pid, Duration::from_millis(r.grace_ms), r.running_turns),
        Err(ClientError::NotRunning { .. }) => return Ok(None),
        Err(
            e @ (ClientError::VersionMismatch(_)
            | ClientError::SocketMissing { .. }
            | ClientError::Protocol(_)),
        ) => {
            let Some(pid) = running_daemon(&opts.paths).and_then(|d| d.pid) else {
                return Err(e);
            };
            terminate(pid).map_err(|err| {
                ClientError::Local(format!(
                    "cannot ask sessiond (pid {pid}) to stop: {e}; and SIGTERM failed: {err}"
                ))
            })?;
            (pid, DEFAULT_GRACE, 0)
        }
        Err(e) => return Err(e),
    };
    // The daemon holds its instance lock until the process is gone; the lock, unlike the pid,
    // cannot be fooled by pid reuse or by a zombie waiting for its parent.
    let patience = opts.timeout + grace;
    let deadline = Instant::now() + patience;
    while running_daemon(&opts.paths).is_some() {
        if Instant::now() >= deadline {
            return Err(ClientError::Local(format!(
                "sessiond (pid {pid}) was asked to shut down but had not exited after \
                 {patience:?}; check its log, or end it with `kill -9 {pid}`"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(Some(Stopped { pid, ended_turns }))
}

/// How long a daemon that could not tell us may take to stop, by its defaults: up to 8 s to
/// end running turns (interrupt and terminate graces, the output's drain, the last save), then
/// 5 s for its connections to finish.
const DEFAULT_GRACE: Duration = Duration::from_secs(13);

fn terminate(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .map_err(std::io::Error::from)
}

/// Refuses to `verb` a daemon a service manager runs: it would exit 0 and stay down (the unit
/// restarts only on failure), and the next command would start one the manager does not
/// supervise, logging to a file instead of the journal.
fn check_unsupervised(opts: &ConnectOptions, verb: &str, verbing: &str) -> Result<(), ClientError> {
    let Ok(s) = fetch_status(&existing_only(opts)) else {
        return Ok(());
    };
    match s.supervisor {
        Some(manager) => Err(ClientError::Local(format!(
            "not {verbing}: sessiond (pid {}) is run by {manager}; {verb} it with `systemctl \
             --user {verb} sessiond` or the unit `systemctl --user status {}` names (without \
             --user for a system unit). From here \
             it would stay stopped, and the next command would start a daemon {manager} does \
             not supervise.",
            s.pid, s.pid
        ))),
        None => Ok(()),
    }
}

fn stop(opts: &ConnectOptions, out: &Out) -> Result<(), ClientError> {
    check_unsupervised(opts, "stop", "stopping")?;
    let stopped = stop_daemon(opts)?;
    let report = StopReport {
        stopped: stopped.is_some(),
        pid: stopped.as_ref().map(|s| s.pid),
        ended_turns: ended_turns(&stopped),
    };
    out.emit(&report, |w| match &stopped {
        Some(s) => writeln!(
            w,
            "stopped sessiond (pid {}){}",
            s.pid,
            ended_note(s.ended_turns)
        ),
        None => writeln!(w, "sessiond is not running"),
    })
}

#[derive(Serialize)]
struct RestartReport {
    /// The pid of the daemon that was stopped, if one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    stopped_pid: Option<u32>,
    /// Turns that were running and were ended with it (absent when none ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_turns: Option<u32>,
    pid: u32,
    socket: String,
}

/// Refuses a restart that would not give back the daemon that runs (`pid`): one started from
/// here with another state directory or config (it would not see the same sessions), or one
/// that would not start at all (a config edited into an error, a directory opened to others).
/// Stopping first would cost the user the daemon they have.
fn check_replacement(opts: &ConnectOptions, pid: Option<u32>) -> Result<(), ClientError> {
    let which = pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default();
    // A daemon that cannot be asked (another protocol version, no socket) is restarted as
    // before: that is what restart is for.
    if let Ok(s) = fetch_status(&existing_only(opts)) {
        let ours = &opts.paths;
        let differ: Vec<String> = [
            (
                "state dir",
                &s.state_dir,
                &ours.state_dir,
                "SESSIOND_STATE_DIR",
            ),
            ("config", &s.config, &ours.config, "SESSIOND_CONFIG"),
        ]
        .into_iter()
        .filter(|(_, theirs, ours, _)| std::path::Path::new(theirs) != *ours)
        .map(|(what, theirs, ours, var)| {
            format!(
                "{what} {theirs} (this sessionctl would give a new one {}; set {var}={theirs})",
                ours.display()
            )
        })
        .collect();
        if !differ.is_empty() {
            return Err(ClientError::Local(format!(
                "not restarting: the running daemon{which} uses {}, so a new one started from \
                 here would not be the same daemon. Restart with its settings, or run \
                 `sessionctl daemon stop` first to change them on purpose.",
                differ.join(", and ")
            )));
        }
    }
    if let Some(reason) = autostart::start_refusal(opts)? {
        return Err(ClientError::Local(format!(
            "not restarting: a new sessiond would not start: {reason}\n\
             The running daemon{which} was left running. Fix the above, then run `sessionctl \
             daemon restart` again; `{}` checks without stopping anything.",
            autostart::check_command_line(opts)
        )));
    }
    Ok(())
}

fn restart(opts: &ConnectOptions, out: &Out) -> Result<(), ClientError> {
    check_unsupervised(opts, "restart", "restarting")?;
    if let Some(running) = running_daemon(&opts.paths) {
        check_replacement(opts, running.pid)?;
    }
    let stopped = stop_daemon(opts)?;
    autostart::ensure_daemon(opts)?;
    let s = fetch_status(&existing_only(opts))?;
    let report = RestartReport {
        stopped_pid: stopped.as_ref().map(|s| s.pid),
        ended_turns: ended_turns(&stopped),
        pid: s.pid,
        socket: s.socket,
    };
    out.emit(&report, |w| match &stopped {
        Some(old) => writeln!(
            w,
            "restarted sessiond: pid {} → pid {}{}",
            old.pid,
            report.pid,
            ended_note(old.ended_turns)
        ),
        None => writeln!(w, "started sessiond: pid {}", report.pid),
    })
}

fn log_level(opts: &ConnectOptions, out: &Out, level: &str) -> Result<(), ClientError> {
    let result =
        BlockingClient::connect(&existing_only(opts))?.call::<SetLogLevel>(SetLogLevelParams {
            level: level.to_string(),
        })?;
    out.emit(&result, |w| {
        writeln!(w, "log level: {} → {}", result.previous, result.level)
    })
}

#[derive(Serialize)]
struct PathsReport {
    runtime_dir: String,
    state_dir: String,
    config: String,
    socket: String,
    lock_file: String,
    pid_file: String,
    log_file: String,
}

fn paths(opts: &ConnectOptions, out: &Out) -> Result<(), ClientError> {
    let p = &opts.paths;
    let s = |path: std::path::PathBuf| path.display().to_string();
    let report = PathsReport {
        runtime_dir: s(p.runtime_dir.clone()),
        state_dir: s(p.state_dir.clone()),
        config: s(p.config.clone()),
        socket: s(p.socket()),
        lock_file: s(p.lock_file()),
        pid_file: s(p.pid_file()),
        log_file: s(p.log_file()),
    };
    out.emit(&report, |w| {
        for (key, value) in [
            ("runtime dir", &report.runtime_dir),
            ("state dir", &report.state_dir),
            ("config", &report.config),
            ("socket", &report.socket),
            ("lock file", &report.lock_file),
            ("pid file", &report.pid_file),
            ("log file", &report.log_file),
        ] {
            writeln!(w, "{key:<12} {value}")?;
        }
        Ok(())
    })
}
