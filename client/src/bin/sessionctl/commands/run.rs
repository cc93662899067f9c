//! `sessionctl run`: a command in the user's terminal owns a session while it runs.
//!
//! The session's lock and pid files are the daemon's, in the state directory it reports.
//! Order matters: attach first (from then on the daemon queues new turns instead of starting
//! them), then take the session's lock in this process (so the lock names the real owner and
//! is released by the kernel if sessionctl dies), then run the command. Afterwards, release
//! the lock before detaching, so a queued turn the detach starts can take it.

use std::path::Path;
use std::time::Duration;

use sessiond_client::{BlockingClient, ClientError, ConnectOptions};
use sessiond_proto::methods::{
    Attach, AttachParams, Detach, Get, SessionParams, Status, StatusParams,
};
use sessiond_proto::ownership::{ClaimError, SessionFiles};
use sessiond_proto::ErrorCode;

/// How often `--wait` tries again.
const RETRY: Duration = Duration::from_millis(200);

pub struct Run<'a> {
    pub session: Option<&'a str>,
    pub project: Option<String>,
    pub wait: bool,
    pub command: &'a [String],
}

pub fn run(opts: &ConnectOptions, context: Option<&str>, r: Run) -> Result<u8, ClientError> {
    let mut client = BlockingClient::connect(opts)?;
    let info = client.call::<Get>(SessionParams {
        session: r.session.map(str::to_string),
        project: r.project.clone(),
        context: context.map(str::to_string),
    })?;
    let id = info.id.to_string();
    // The lock must be the one the daemon checks, in its state directory, which is not this
    // process's when the two were given different `--state-dir`s or environments.
    let state_dir = client.call::<Status>(StatusParams {})?.state_dir;
    let files = SessionFiles::open(&Path::new(&state_dir).join("sessions")).map_err(|e| {
        ClientError::Local(format!(
            "cannot use the daemon's session files in {state_dir}: {e}"
        ))
    })?;
    // Checked before anything changes: the command would fail to start there, and the error
    // would name the command, not the directory.
    if !Path::new(&info.cwd).is_dir() {
        return Err(ClientError::Local(sessiond_proto::methods::missing_cwd(
            &info.cwd,
        )));
    }
    // `--wait` says once what it waits for, and waits attached: detaching between tries
    // would flap the session between attached and idle, and let a queued turn start and
    // find the lock taken.
    let mut told = false;
    let mut tell = |what: &str| {
        if !told {
            eprintln!(
                "sessionctl: waiting for session {}: {what}",
                info.id.short()
            );
            told = true;
        }
    };
    let claim = loop {
        let attached = client.call::<Attach>(AttachParams {
            session: Some(id.clone()),
            project: None,
            context: None,
            pid: std::process::id(),
        });
        match attached {
            Ok(_) => {}
            Err(ClientError::Remote { code, message }) if code == ErrorCode::BUSY && r.wait => {
                tell(&message);
                std::thread::sleep(RETRY);
                continue;
            }
            Err(e) => return Err(e),
        }
        let claimed = loop {
            match files.claim(&id, std::process::id(), "sessionctl run") {
                Err(ClaimError::Held { record, .. }) if r.wait => {
                    tell(
                        &record.map_or("another process holds its lock".to_string(), |r| {
                            format!("pid {} ({}) holds its lock", r.pid, r.owner)
                        }),
                    );
                    std::thread::sleep(RETRY);
                }
                other => break other,
            }
        };
        match claimed {
            Ok(claim) => break claim,
            Err(e) => {
                detach(&mut client, &id)?;
                return Err(ClientError::Remote {
                    code: ErrorCode::BUSY,
                    message: format!("{e} (or wait for it: `sessionctl run --wait`)"),
                });
            }
        }
    };
    let mut cmd = std::process::Command::new(&r.command[0]);
    cmd.args(&r.command[1..])
        .current_dir(&info.cwd)
        .env("SESSIOND_SESSION_ID", &id)
        .env("SESSIOND_PROJECT", &info.project);
    if let Some(psid) = &info.provider_session_id {
        cmd.env("SESSIOND_PROVIDER_SESSION_ID", psid);
    }
    // The command inherits the lock too: if sessionctl is killed, the session stays owned for
    // as long as the command (or anything it started) can still write it.
    let lock_fd = claim.lock_fd();
    // SIGTERM and SIGHUP are held for a thread that passes them on to the command: this
    // process must outlive it to give the session back.
    let passed_on = passed_on_signals();
    let _ = passed_on.thread_block();
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: runs in the child between fork and exec and only calls fcntl and
        // sigprocmask, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                sessiond_proto::process::inherit_in_child(lock_fd)?;
                nix::sys::signal::sigprocmask(
                    nix::sys::signal::SigmaskHow::SIG_UNBLOCK,
                    Some(&passed_on_signals()),
                    None,
                )
                .map_err(std::io::Error::from)
            });
        }
    }
    let mut claim = claim;
    let status = match cmd.spawn() {
        Ok(mut child) => {
            claim.mark_inherited();
            // The pid file names the process that holds the lock for as long as anything
            // does: the command outlives a sessionctl killed with SIGKILL.
            if let Err(e) = claim.hand_to(child.id(), "sessionctl run") {
                eprintln!("sessionctl: cannot name the command in the session's pid file: {e}");
            }
            // The terminal's Ctrl-C goes to the command, which decides what it means; this
            // process must stay to give the session back.
            ignore_interrupts();
            let reaped = pass_on_signals(child.id(), passed_on);
            let status = child.wait();
            // Its pid may be another process's from now on.
            reaped.store(true, std::sync::atomic::Ordering::SeqCst);
            status
        }
        Err(e) => {
            let _ = passed_on.thread_unblock();
            Err(e)
        }
    };
    let _ = claim.release();
    if let Err(e) = detach(&mut client, &id) {
        // The command's own status matters more; the daemon detaches a closed connection.
        eprintln!("sessionctl: could not detach session {id} cleanly: {e}");
    }
    match status {
        Ok(status) => Ok(exit_code(status)),
        Err(e) => Err(ClientError::Local(format!(
            "cannot run {:?}: {e}",
            r.command[0]
        ))),
    }
}

fn detach(client: &mut BlockingClient, id: &str) -> Result<(), ClientError> {
    client
        .call::<Detach>(SessionParams {
            session: Some(id.to_string()),
            ..Default::default()
        })
        .map(|_| ())
}

fn ignore_interrupts() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: setting a signal to be ignored installs no handler code.
    unsafe {
        let _ = signal(Signal::SIGINT, SigHandler::SigIgn);
        let _ = signal(Signal::SIGQUIT, SigHandler::SigIgn);
    }
}

/// What sessionctl passes on to the command rather than dying of: the signals that end a
/// process politely (`kill`, a closed terminal).
fn passed_on_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set
}

/// Passes each of `signals` (blocked in every thread) on to the command until the returned
/// flag says it has been reaped; later ones are left pending (sessionctl is about to exit).
fn pass_on_signals(
    pid: u32,
    signals: nix::sys::signal::SigSet,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let reaped = std::sync::Arc::new(AtomicBool::new(false));
    let Ok(pid) = i32::try_from(pid) else {
        return reaped;
    };
    let done = reaped.clone();
    std::thread::spawn(move || {
        while let Ok(signal) = signals.wait() {
            if done.load(Ordering::SeqCst) {
                break;
            }
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
        }
    });
    reaped
}

/// The command's status as sessionctl's own: its exit code, or 128 + the signal that ended it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        _ => 1,
    }
}
