//! The tools users would otherwise reach for, each in a private socket and temp dir: tmux
//! (sessions) now; pueue (a task queue) when `pueue` and `pueued` are on PATH.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::binaries::on_path;

/// A private tmux server with some number of detached sessions.
pub struct Tmux {
    program: PathBuf,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    sessions: usize,
}

impl Tmux {
    /// `None` (with the reason) when tmux is not installed.
    pub fn start() -> Result<Tmux, String> {
        let program = on_path("tmux").ok_or("tmux is not on PATH")?;
        let dir = tempfile::Builder::new()
            .prefix("sdbench-tmux")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let socket = dir.path().join("tmux.sock");
        Ok(Tmux {
            program,
            _dir: dir,
            socket,
            sessions: 0,
        })
    }

    pub fn command(&self, args: &[&str]) -> Command {
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

    /// Grows the server to `n` sessions, each running a process that waits forever.
    pub fn grow_to(&mut self, n: usize) -> Result<(), String> {
        while self.sessions < n {
            let name = format!("s{}", self.sessions);
            let status = self
                .command(&["new-session", "-d", "-s", &name, "sleep 1000000"])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!(
                    "tmux new-session failed at {} sessions",
                    self.sessions
                ));
            }
            self.sessions += 1;
        }
        Ok(())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]).status();
    }
}

/// A private pueue daemon (`pueued`) with its default group paused, so tasks added to it are
/// stored and acknowledged but never run — the same work as a `send` into a paused session.
pub struct Pueue {
    client: PathBuf,
    config: PathBuf,
    _dir: tempfile::TempDir,
    daemon: Option<std::process::Child>,
    tasks: usize,
}

impl Pueue {
    pub fn start() -> Result<Pueue, String> {
        let (client, daemon) = match (on_path("pueue"), on_path("pueued")) {
            (Some(c), Some(d)) => (c, d),
            _ => {
                return Err("pueue/pueued not on PATH (`cargo install pueue` provides them)".into())
            }
        };
        let dir = tempfile::Builder::new()
            .prefix("sdbench-pueue")
            .tempdir()
            .map_err(|e| e.to_string())?;
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
        let child = Command::new(daemon)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start pueued: {e}"))?;
        let pueue = Pueue {
            client,
            config,
            _dir: dir,
            daemon: Some(child),
            tasks: 0,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !pueue
            .command(&["status"])
            .status()
            .is_ok_and(|s| s.success())
        {
            if std::time::Instant::now() > deadline {
                return Err("pueued did not answer within 10 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if !pueue
            .command(&["pause"])
            .status()
            .is_ok_and(|s| s.success())
        {
            return Err("pueue pause failed".into());
        }
        Ok(pueue)
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

    /// Grows the queue to `n` tasks (each `true`, never run: the group is paused).
    pub fn grow_to(&mut self, n: usize) -> Result<(), String> {
        while self.tasks < n {
            let status = self
                .command(&["add", "--", "true"])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("pueue add failed at {} tasks", self.tasks));
            }
            self.tasks += 1;
        }
        Ok(())
    }

    /// Counts tasks added by measurement runs too.
    pub fn added(&mut self, n: usize) {
        self.tasks += n;
    }
}

impl Drop for Pueue {
    fn drop(&mut self) {
        let _ = self.command(&["shutdown"]).status();
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
