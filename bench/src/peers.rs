//! The tools users would otherwise reach for, each in a private socket and temp dir: tmux
//! (sessions) and pueue (a task queue), when they are on PATH.

use std::ffi::OsString;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::on_path;
use crate::cleanup;

/// The tmux socket's name in its temp dir (the sweep of stale runs looks for it too).
pub const TMUX_SOCKET: &str = "tmux.sock";

/// Sessions one tmux client creates, as commands chained with `;`: one client per session
/// took 7 ms a session here, a hundred per client about 2 ms up to 1,000 sessions (tmux's
/// own cost per session then grows: 3,000 took 10 s).
const TMUX_BATCH: usize = 100;

/// Pseudo-terminals tmux must leave free for the rest of the machine.
const PTY_SPARE: u64 = 128;

/// A private tmux server with some number of detached sessions.
pub struct Tmux {
    program: PathBuf,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    /// What each session runs: `cat` of this pipe's read end, opened through the harness's
    /// `/proc/PID/fd`. Only the harness holds the write end (std makes pipes close-on-exec),
    /// so when the harness ends, however it ends, every session's `cat` reads end-of-file
    /// and exits (or, started after, finds nothing to open), its session closes, and the
    /// server, left with none, exits. The server forks away from its client, so nothing
    /// else would stop it after a SIGKILL.
    lifeline: PathBuf,
    _pipe: (std::io::PipeReader, std::io::PipeWriter),
    sessions: usize,
    /// Why growing failed once; a partly made batch leaves the count unknown.
    broken: Option<String>,
    /// The server's pid, once there is a server: ending it takes seconds with thousands of
    /// sessions, and the harness waits for that rather than measure beside it.
    server: Option<nix::unistd::Pid>,
}

impl Tmux {
    /// `Err` (with the reason) when tmux is not installed.
    pub fn start() -> Result<Tmux, String> {
        let program = on_path("tmux").ok_or("tmux is not on PATH")?;
        let dir = cleanup::temp_dir("sdbench-tmux")?;
        let socket = dir.path().join(TMUX_SOCKET);
        let pipe = std::io::pipe().map_err(|e| format!("pipe: {e}"))?;
        let lifeline = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            pipe.0.as_raw_fd()
        ));
        cleanup::track_tmux(&program, &socket);
        Ok(Tmux {
            program,
            _dir: dir,
            socket,
            lifeline,
            _pipe: pipe,
            sessions: 0,
            broken: None,
            server: None,
        })
    }

    pub fn version(&self) -> Option<String> {
        version_of(&self.program, "-V")
    }

    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    /// Grows the server to `n` sessions, each running a process that waits for the harness
    /// to end. `Err` says why it cannot.
    pub fn grow_to(&mut self, n: usize) -> Result<(), String> {
        if let Some(why) = &self.broken {
            return Err(why.clone());
        }
        if n <= self.sessions {
            return Ok(());
        }
        check_ptys(n - self.sessions)?;
        let (started, from) = (Instant::now(), self.sessions);
        while self.sessions < n {
            // The server is forked by the first client and keeps its command line: one
            // session keeps that short.
            let batch = if self.sessions == 0 {
                1
            } else {
                (n - self.sessions).min(TMUX_BATCH)
            };
            let mut args: Vec<OsString> = Vec::new();
            for i in self.sessions..self.sessions + batch {
                if i > self.sessions {
                    args.push(";".into());
                }
                for arg in ["new-session", "-d", "-s", &format!("s{i}"), "cat"] {
                    args.push(arg.into());
                }
                args.push(self.lifeline.clone().into());
            }
            let status = self.command(&args).status();
            if !status.as_ref().is_ok_and(|s| s.success()) {
                let why = format!(
                    "tmux new-session failed between {} and {} sessions ({})",
                    self.sessions,
                    self.sessions + batch,
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                );
                self.broken = Some(why.clone());
                return Err(why);
            }
            self.sessions += batch;
            if self.server.is_none() {
                self.server = self.server_pid();
            }
        }
        eprintln!(
            "tmux: {n} sessions, the last {} made in {:.1} s",
            n - from,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

impl Tmux {
    fn server_pid(&self) -> Option<nix::unistd::Pid> {
        let out = self
            .command(&["display-message", "-p", "#{pid}"])
            .stdout(Stdio::piped())
            .output()
            .ok()?;
        let pid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
        Some(nix::unistd::Pid::from_raw(pid))
    }
}

/// Each tmux session holds a pseudo-terminal, and the kernel allows only so many
/// (`kernel.pty.max`, 4,096 by default). Checked before creating any, so tmux never takes the
/// last ones from the rest of the machine.
fn check_ptys(more: usize) -> Result<(), String> {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/kernel/pty/{name}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let (Some(max), Some(in_use)) = (read("max"), read("nr")) else {
        // Not Linux, or no /proc: tmux will say if it runs out.
        return Ok(());
    };
    if in_use + more as u64 + PTY_SPARE > max {
        return Err(format!(
            "each tmux session holds a pseudo-terminal, and this system allows {max} \
             (kernel.pty.max) with {in_use} in use: {more} more would leave fewer than \
             {PTY_SPARE} for everything else; raise kernel.pty.max to measure tmux at this size"
        ));
    }
    Ok(())
}

impl Drop for Tmux {
    fn drop(&mut self) {
        cleanup::kill_tmux_server(&self.program, &self.socket);
        cleanup::untrack_tmux(&self.socket);
        // `kill-server` returns at once; the server then ends each session's process.
        if let Some(pid) = self.server {
            let deadline = Instant::now() + Duration::from_secs(60);
            while nix::sys::signal::kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Tasks added one `pueue add` at a time. Each add rewrites pueued's whole state file, so
/// adding one costs time in proportion to the tasks already there (16 ms at 2,000 here) and
/// adding 10,000 would take about ten minutes; the rest are restored (see [`Pueue::grow_to`]).
const ADD_EACH_UP_TO: usize = 1000;

/// A private pueue daemon (`pueued`) with its default group paused, so tasks added to it are
/// stored and acknowledged but never run. Not the same work as a `send` into a paused
/// session: pueued saves its whole state (a JSON file) before it answers, by writing a new
/// file and renaming it over the old one, and never fsyncs it, so an acknowledged task can be
/// lost to a power cut; sessiond's `send` answers after its commit is fsynced.
pub struct Pueue {
    client: PathBuf,
    daemon_program: PathBuf,
    config: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
    daemon: Option<Child>,
    tasks: usize,
}

impl Pueue {
    pub fn start() -> Result<Pueue, String> {
        let (client, daemon_program) = match (on_path("pueue"), on_path("pueued")) {
            (Some(c), Some(d)) => (c, d),
            _ => {
                return Err("pueue/pueued not on PATH (`cargo install pueue` provides them)".into())
            }
        };
        let dir = cleanup::temp_dir("sdbench-pueue")?;
        let root = dir.path();
        for sub in ["data", "run"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| e.to_string())?;
        }
        let config = root.join("pueue.yml");
        std::fs::write(
            &config,
            format!(
                "shared:\n  pueue_directory: {data}\n  runtime_directory: {run}\n  \
                 use_unix_socket: true\n  unix_socket_path: {sock}\n",
                data = root.join("data").display(),
                run = root.join("run").display(),
                sock = root.join("pueue.sock").display(),
            ),
        )
        .map_err(|e| e.to_string())?;
        let mut pueue = Pueue {
            client,
            daemon_program,
            config,
            data: root.join("data"),
            _dir: dir,
            daemon: None,
            tasks: 0,
        };
        pueue.spawn_daemon()?;
        if !pueue.run(&["pause"]) {
            return Err("pueue pause failed".into());
        }
        Ok(pueue)
    }

    pub fn version(&self) -> Option<String> {
        version_of(&self.client, "--version")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.client);
        cmd.arg("-c")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> bool {
        self.command(args).status().is_ok_and(|s| s.success())
    }

    /// Starts pueued and waits until it answers.
    fn spawn_daemon(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.daemon_program);
        cmd.arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child =
            cleanup::spawn_tracked(&mut cmd).map_err(|e| format!("cannot start pueued: {e}"))?;
        self.daemon = Some(child);
        // Restoring 10,000 tasks takes it about a second.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.run(&["group"]) {
            if Instant::now() > deadline {
                return Err("pueued did not answer within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Asks pueued to shut down and waits for it (kills it after 10 s).
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.daemon.take() else {
            return;
        };
        let _ = self.run(&["shutdown"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        cleanup::untrack_child(child.id());
    }

    /// Grows the queue to `n` tasks (each `true`, never run: the group is paused). Up to
    /// [`ADD_EACH_UP_TO`] they are added by `pueue add`; past that pueued is stopped, copies
    /// of the last task it saved, with the next ids, are added to the state file it saved,
    /// and it is started again, which restores them: the state a pueued restarted with `n`
    /// tasks queued is in, reached in seconds. The result is checked with `pueue status`.
    pub fn grow_to(&mut self, n: usize) -> Result<(), String> {
        let started = Instant::now();
        let from = self.tasks;
        while self.tasks < n.min(ADD_EACH_UP_TO) {
            if !self.run(&["add", "--", "true"]) {
                return Err(format!("pueue add failed at {} tasks", self.tasks));
            }
            self.tasks += 1;
        }
        if self.tasks < n {
            self.restore_with(n)?;
        }
        if n > from {
            eprintln!(
                "pueue: {n} tasks, the last {} added in {:.1} s",
                n - from,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    fn restore_with(&mut self, n: usize) -> Result<(), String> {
        self.stop_daemon();
        let state_file = self.data.join("state.json");
        let text =
            std::fs::read_to_string(&state_file).map_err(|e| format!("pueue's state file: {e}"))?;
        let mut state: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| format!("pueue's state file: {e}"))?;
        let tasks = state["tasks"]
            .as_object_mut()
            .ok_or("pueue's state file holds no tasks map")?;
        // Ids are 0..tasks: measured adds are removed again, and pueue reuses the last id.
        if tasks.len() != self.tasks
            || (0..self.tasks).any(|id| !tasks.contains_key(&id.to_string()))
        {
            return Err(format!(
                "pueue's state file holds {} tasks, not ids 0 to {}",
                tasks.len(),
                self.tasks
            ));
        }
        let last = tasks
            .get(&(self.tasks - 1).to_string())
            .cloned()
            .ok_or("pueue holds no task to copy")?;
        for id in self.tasks..n {
            let mut task = last.clone();
            task["id"] = id.into();
            tasks.insert(id.to_string(), task);
        }
        // As pueued writes it: a new file renamed over the old.
        let partial = self.data.join("state.json.partial");
        std::fs::write(
            &partial,
            serde_json::to_vec(&state).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("pueue's state file: {e}"))?;
        std::fs::rename(&partial, &state_file).map_err(|e| format!("pueue's state file: {e}"))?;
        self.spawn_daemon()?;
        let out = self
            .command(&["status", "--json"])
            .stdout(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("pueue status --json after restoring: {e}"))?;
        let restored = status["tasks"].as_object().map_or(0, |t| t.len());
        let paused = status["groups"]["default"]["status"] == "Paused";
        if restored != n || !paused {
            return Err(format!(
                "pueued restored {restored} tasks, not {n}{}",
                if paused { "" } else { ", and its group runs" }
            ));
        }
        self.tasks = n;
        Ok(())
    }

    /// Removes the task the last `pueue add` made (pueue gives a new task the id after the
    /// highest), so the queue is as long for the next add.
    pub fn remove_added(&self) -> Result<(), String> {
        let id = self.tasks.to_string();
        if self.run(&["remove", &id]) {
            Ok(())
        } else {
            Err(format!("pueue remove {id} failed"))
        }
    }
}

impl Drop for Pueue {
    fn drop(&mut self) {
        self.stop_daemon();
    }
}

/// The first line `program flag` prints, e.g. `tmux 3.3a`.
fn version_of(program: &Path, flag: &str) -> Option<String> {
    let out = Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
}
