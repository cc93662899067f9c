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

/// Why pueue is not measured, when it is not.
pub fn pueue_missing() -> Option<String> {
    match (on_path("pueue"), on_path("pueued")) {
        (Some(_), Some(_)) => None,
        _ => Some("pueue/pueued not on PATH (`cargo install pueue` provides them)".into()),
    }
}
