//! The programs measured: sessiond, sessionctl and the floor from this workspace (built in
//! release mode if they are not beside this harness), and the peers found on PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Binaries {
    pub sessiond: PathBuf,
    pub sessionctl: PathBuf,
    pub floor: PathBuf,
}

impl Binaries {
    /// Finds the workspace's binaries next to this one. Under `cargo run` (which builds only
    /// the harness) it first has cargo build them, in the harness's profile — a no-op when
    /// they are up to date; otherwise they must already be there.
    pub fn locate() -> Result<Binaries, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
        let dir = exe
            .parent()
            .ok_or("the harness has no directory")?
            .to_path_buf();
        let found = Binaries {
            sessiond: dir.join("sessiond"),
            sessionctl: dir.join("sessionctl"),
            floor: dir.join("sessiond-floor"),
        };
        if let Some(cargo) = std::env::var_os("CARGO") {
            // The workspace this harness was built from, wherever it is run from; the target
            // dir is cargo's own choice again (CARGO_TARGET_DIR is passed through), so the
            // programs land beside this one.
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .ok_or("the harness's crate has no workspace")?
                .join("Cargo.toml");
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "--locked", "--bins"])
                .arg("--manifest-path")
                .arg(manifest)
                .args(["-p", "sessiond", "-p", "sessionctl", "-p", "sessiond-bench"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err("building sessiond, sessionctl and sessiond-floor failed".into());
            }
        }
        for path in [&found.sessiond, &found.sessionctl, &found.floor] {
            if !path.is_file() {
                return Err(format!(
                    "{} is missing; run the harness with `cargo run -p sessiond-bench --release`, \
                     which builds it",
                    path.display()
                ));
            }
        }
        Ok(found)
    }
}

/// `name`'s full path if it is on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}
