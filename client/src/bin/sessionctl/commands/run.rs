//! `sessionctl run`: a command in the user's terminal owns a session while it runs.
//!
//! The session's lock and pid files are the daemon's, in the state directory it reports.
//! Order matters: attach first (from then on the daemon queues new turns instead of starting
//! them), then take the session's lock in this process (so the lock names the real owner and
//! is released by the kernel if sessionctl dies), then run the command. Afterwards, release
//! the lock before detaching, so a queued turn the detach starts can take it.
//!
//! An attachment lasts as long as its connection, and the command may outlive the daemon (a
//! restart, an upgrade): while it runs, a [`Keeper`] thread waits on the connection and
//! attaches the session again through the next daemon.

use std::path::Path;
use std::time::Duration;

use sessiond_client::{BlockingClient, ClientError, ConnectOptions};
use sessiond_proto::methods::{
    Attach, AttachParams, Detach, Get, SessionParams, Status, StatusParams,
};
use sessiond_proto::ownership::{ClaimError, SessionFiles};
use sessiond_proto::ErrorCode;

use crate::output::visible;

/// How often `--wait` tries again, and how often a session whose daemon went is attached again.
const RETRY: Duration = Duration::from_millis(200);
/// The longest wait for a new daemon's answer when attaching again.
const REATTACH_TIMEOUT: Duration = Duration::from_secs(2);

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
                "sessionctl: waiting for session {}: {}",
                info.id.short(),
                visible(what)
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
    let (status, attached) = match cmd.spawn() {
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
            let keeper = Keeper::start(client, opts, id.clone());
            let status = child.wait();
            // Its pid may be another process's from now on.
            reaped.store(true, std::sync::atomic::Ordering::SeqCst);
            (status, keeper.stop(&info.id.short()))
        }
        Err(e) => {
            let _ = passed_on.thread_unblock();
            (Err(e), Some(client))
        }
    };
    // Before the detach, which may start a queued turn that needs the lock.
    let _ = claim.release();
    if let Some(mut client) = attached {
        if let Err(e) = detach(&mut client, &id) {
            // The command's own status matters more; the daemon detaches a closed connection.
            eprintln!(
                "sessionctl: could not detach session {id} cleanly: {}",
                visible(&e.to_string())
            );
        }
    }
    match status {
        Ok(status) => Ok(exit_code(status)),
        Err(e) => Err(ClientError::Local(format!(
            "cannot run {:?}: {e}",
            r.command[0]
        ))),
    }
}

/// Keeps the session attached while the command runs. A thread waits on the connection the
/// session is attached through; if the daemon goes (a restart, an upgrade), it attaches the
/// session again through the next daemon, so that turns sent meanwhile queue behind the
/// command instead of being started and finding its lock held. It does not start a daemon:
/// one stopped on purpose stays stopped.
enum Keeper {
    Watching {
        /// Dropped to end the wait: the thread's end of the pipe then reads as closed.
        wake: std::os::fd::OwnedFd,
        thread: std::thread::JoinHandle<Kept>,
    },
    /// No pipe could be made: the connection is just held, as before the daemon could go.
    Holding(BlockingClient),
}

/// What the keeper hands back: the connection the session is attached through, if any, and
/// why it is not, if it is not.
struct Kept {
    client: Option<BlockingClient>,
    lost: Option<String>,
}

impl Keeper {
    fn start(client: BlockingClient, opts: &ConnectOptions, id: String) -> Keeper {
        let mut opts = opts.clone();
        opts.autostart = false;
        // A new daemon answers at once or is not ready yet: try again rather than wait.
        opts.timeout = opts.timeout.min(REATTACH_TIMEOUT);
        let Ok((woken, wake)) = nix::unistd::pipe() else {
            return Keeper::Holding(client);
        };
        let thread = std::thread::spawn(move || keep_attached(client, &opts, &id, &woken));
        Keeper::Watching { wake, thread }
    }

    /// Ends the wait and returns the connection to detach through, if any; says on stderr
    /// when the session could not be attached again.
    fn stop(self, short: &str) -> Option<BlockingClient> {
        let (wake, thread) = match self {
            Keeper::Watching { wake, thread } => (wake, thread),
            Keeper::Holding(client) => return Some(client),
        };
        drop(wake);
        let kept = thread.join().ok()?;
        if let Some(lost) = kept.lost {
            eprintln!(
                "sessionctl: session {short} was not attached again after {}",
                visible(&lost)
            );
        }
        kept.client
    }
}

/// The keeper's thread; see [`Keeper`].
fn keep_attached(
    client: BlockingClient,
    opts: &ConnectOptions,
    id: &str,
    woken: &std::os::fd::OwnedFd,
) -> Kept {
    use std::os::fd::AsFd;
    let mut client = Some(client);
    let mut lost = None;
    loop {
        if let Some(attached) = client.as_mut() {
            match attached.wait_closed(woken.as_fd()) {
                Ok(false) => return Kept { client, lost },
                Ok(true) => lost = Some("the daemon went away".to_string()),
                Err(e) => lost = Some(format!("the connection failed ({e})")),
            }
            client = None;
        }
        if is_woken(woken, Some(RETRY)) {
            return Kept { client, lost };
        }
        match attach_again(opts, id) {
            Ok(attached) => {
                client = Some(attached);
                lost = None;
            }
            Err(Some(refused)) => {
                // This daemon will not take the session (closed, removed): nothing to retry.
                lost = Some(format!("the daemon restarted: {refused}"));
                is_woken(woken, None);
                return Kept { client, lost };
            }
            Err(None) => {}
        }
    }
}

/// Attaches the session through a new connection. `Err(None)`: no daemon answers yet, or it
/// is starting, stopping or busy with the session for a moment (try again); `Err(Some(why))`:
/// it refuses, or speaks another protocol (an upgrade), and trying again would not help.
fn attach_again(opts: &ConnectOptions, id: &str) -> Result<BlockingClient, Option<String>> {
    let attached = BlockingClient::connect(opts).and_then(|mut client| {
        client
            .call::<Attach>(AttachParams {
                session: Some(id.to_string()),
                project: None,
                context: None,
                pid: std::process::id(),
            })
            .map(|_| client)
    });
    match attached {
        Ok(client) => Ok(client),
        Err(
            ClientError::NotRunning { .. }
            | ClientError::SocketMissing { .. }
            | ClientError::Connect { .. }
            | ClientError::Disconnected(_)
            | ClientError::Timeout(_),
        ) => Err(None),
        Err(ClientError::Remote { code, .. })
            if [
                ErrorCode::BUSY,
                ErrorCode::SHUTTING_DOWN,
                ErrorCode::TIMEOUT,
            ]
            .contains(&code) =>
        {
            Err(None)
        }
        Err(refused) => Err(Some(refused.to_string())),
    }
}

/// Whether the keeper has been told to stop, waiting at most `wait` (`None`: until it is).
fn is_woken(woken: &std::os::fd::OwnedFd, wait: Option<Duration>) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let timeout = match wait {
        Some(wait) => PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
        None => PollTimeout::NONE,
    };
    let mut fds = [PollFd::new(woken.as_fd(), PollFlags::POLLIN)];
    loop {
        match poll(&mut fds, timeout) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
            Ok(_) => return fds[0].revents().is_some_and(|r| !r.is_empty()),
        }
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
