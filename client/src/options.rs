//! How to reach the daemon: paths, autostart policy, timeouts.

use std::path::PathBuf;
use std::time::Duration;

use sessiond_proto::paths::{PathOverrides, Paths};

use crate::error::ClientError;

/// Environment variable that turns autostart off when set to anything but an empty value or
/// one of `0`, `false`, `no`, `off`, `f`, `n` (any case), which leave it on.
pub const ENV_NO_AUTOSTART: &str = "SESSIOND_NO_AUTOSTART";
/// Environment variable naming the `sessiond` program to autostart.
pub const ENV_DAEMON_BIN: &str = "SESSIOND_BIN";

/// Default wait for one answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long autostart waits for a new daemon to accept connections.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything needed to connect.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// Where the daemon's socket, state and config are (see [`Paths::resolve`]).
    pub paths: Paths,
    /// Start a daemon when none answers.
    pub autostart: bool,
    /// The `sessiond` program to start; default: `$SESSIOND_BIN`, else the `sessiond` next to
    /// this executable, else `sessiond` on `PATH`.
    pub daemon_program: Option<PathBuf>,
    /// Sent in `hello`, logged by the daemon.
    pub client_name: String,
    /// Longest wait for any one answer.
    pub timeout: Duration,
    /// Longest wait for an autostarted daemon to accept connections.
    pub startup_timeout: Duration,
}

impl ConnectOptions {
    /// Options for `paths` with autostart on and default timeouts.
    pub fn new(paths: Paths) -> Self {
        Self {
            paths,
            autostart: true,
            daemon_program: None,
            client_name: format!("sessiond_client {}", env!("CARGO_PKG_VERSION")),
            timeout: DEFAULT_TIMEOUT,
            startup_timeout: STARTUP_TIMEOUT,
        }
    }

    /// Options from the environment alone: the directories' `SESSIOND_*` variables and XDG
    /// defaults, and `SESSIOND_NO_AUTOSTART`.
    pub fn from_env() -> Result<Self, ClientError> {
        let paths = Paths::resolve(&PathOverrides::default())?;
        let mut options = Self::new(paths);
        options.autostart = !autostart_disabled_by_env();
        Ok(options)
    }

    /// The program autostart runs.
    pub fn daemon_program(&self) -> PathBuf {
        if let Some(p) = &self.daemon_program {
            return p.clone();
        }
        if let Some(p) = std::env::var_os(ENV_DAEMON_BIN).filter(|v| !v.is_empty()) {
            return PathBuf::from(p);
        }
        let sibling = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("sessiond")))
            .filter(|p| p.is_file());
        sibling.unwrap_or_else(|| PathBuf::from("sessiond"))
    }
}

/// Whether `SESSIOND_NO_AUTOSTART` asks for no autostart.
pub fn autostart_disabled_by_env() -> bool {
    std::env::var_os(ENV_NO_AUTOSTART).is_some_and(|v| disables(&v))
}

/// Any value but an empty one or a spelling of "no" disables autostart: someone who set the
/// variable at all most likely meant it, and `false` meaning "yes, disable" would be a trap.
fn disables(value: &std::ffi::OsStr) -> bool {
    let value = value.to_string_lossy().trim().to_ascii_lowercase();
    !matches!(
        value.as_str(),
        "" | "0" | "f" | "false" | "n" | "no" | "off"
    )
}

#[cfg(test)]
mod tests {
    use super::disables;

    #[test]
    fn only_an_empty_value_or_a_no_leaves_autostart_on() {
        for on in ["", "0", "false", "FALSE", "no", "Off", " 0 "] {
            assert!(!disables(on.as_ref()), "{on:?}");
        }
        for off in ["1", "true", "yes", "on", "please"] {
            assert!(disables(off.as_ref()), "{off:?}");
        }
    }
}
