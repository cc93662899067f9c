//! Where the daemon's files live, and the safety rules for its directories.
//!
//! Finding the socket is part of the contract: every client (sessionctl, an editor plugin, a
//! script) must look in the same place the daemon listens. The rules, in order of precedence:
//!
//! | directory | flag            | environment            | default                                           |
//! |-----------|-----------------|------------------------|---------------------------------------------------|
//! | runtime   | `--runtime-dir` | `SESSIOND_RUNTIME_DIR` | `$XDG_RUNTIME_DIR/sessiond`, else `$TMPDIR/sessiond-UID` (`/tmp/sessiond-UID` when `TMPDIR` is unset) |
//! | state     | `--state-dir`   | `SESSIOND_STATE_DIR`   | `$XDG_STATE_HOME/sessiond` (`~/.local/state/sessiond`) |
//! | config    | `--config`      | `SESSIOND_CONFIG`      | `$XDG_CONFIG_HOME/sessiond/config.toml`           |
//!
//! The runtime and state directories hold the socket, the lock and pid files and (later) every
//! prompt and transcript, so both must be private: owned by the user, mode 0700, and not a
//! symbolic link. [`ensure_private_dir`] creates them that way and refuses an existing one that
//! is not, naming the path and the fix, rather than repairing it silently: a directory someone
//! else created in `/tmp` is an attack (tmux #3216), not a glitch.

use std::io;
use std::path::{Path, PathBuf};

/// File names inside the runtime directory.
pub const SOCKET_FILE: &str = "sessiond.sock";
pub const LOCK_FILE: &str = "sessiond.lock";
pub const PID_FILE: &str = "sessiond.pid";
pub const AUTOSTART_LOCK_FILE: &str = "autostart.lock";
/// File names inside the state directory.
pub const LOG_FILE: &str = "sessiond.log";

pub const ENV_RUNTIME_DIR: &str = "SESSIOND_RUNTIME_DIR";
pub const ENV_STATE_DIR: &str = "SESSIOND_STATE_DIR";
pub const ENV_CONFIG: &str = "SESSIOND_CONFIG";

/// Longest socket path the platform's `sockaddr_un` holds (without the trailing NUL).
#[cfg(target_os = "linux")]
pub const MAX_SOCKET_PATH: usize = 107;
#[cfg(not(target_os = "linux"))]
pub const MAX_SOCKET_PATH: usize = 103;

/// Directories given explicitly (by flag); anything left `None` falls back to the environment
/// and then to the platform default.
#[derive(Clone, Debug, Default)]
pub struct PathOverrides {
    pub runtime_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

/// The resolved, absolute locations of everything the daemon uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub runtime_dir: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
    /// Whether the config path was named explicitly (flag or environment). A missing explicit
    /// file is an error; a missing default file means "all defaults".
    pub config_explicit: bool,
}

/// Which private directory a check is about; used to word errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirKind {
    Runtime,
    State,
}

impl DirKind {
    fn describe(self) -> &'static str {
        match self {
            DirKind::Runtime => "runtime directory",
            DirKind::State => "state directory",
        }
    }

    /// The settings that choose it, for advice on pointing it elsewhere.
    fn setting(self) -> &'static str {
        match self {
            DirKind::Runtime => "--runtime-dir or SESSIOND_RUNTIME_DIR",
            DirKind::State => "--state-dir or SESSIOND_STATE_DIR",
        }
    }
}

/// Why a path could not be resolved or used.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot find your home directory to place sessiond's {0}; set {1}")]
    NoHome(&'static str, &'static str),
    #[error(
        "socket path {path} is {len} bytes, over the platform limit of {max}; \
         set --runtime-dir or {ENV_RUNTIME_DIR} to a shorter directory"
    )]
    SocketPathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("{0}")]
    Unsafe(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Paths {
    /// Resolves every location from flags, then environment, then platform defaults. Relative
    /// paths are made absolute against the current directory, so a daemon that later changes
    /// directory (or is spawned by a client elsewhere) still finds the same files.
    pub fn resolve(overrides: &PathOverrides) -> Result<Paths, PathError> {
        let from_env = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let runtime_dir = match overrides
            .runtime_dir
            .clone()
            .or_else(|| from_env(ENV_RUNTIME_DIR))
        {
            Some(dir) => dir,
            None => default_runtime_dir(),
        };
        let state_dir = match overrides
            .state_dir
            .clone()
            .or_else(|| from_env(ENV_STATE_DIR))
        {
            Some(dir) => dir,
            None => default_state_dir()?,
        };
        let explicit_config = overrides.config.clone().or_else(|| from_env(ENV_CONFIG));
        let config_explicit = explicit_config.is_some();
        let config = match explicit_config {
            Some(file) => file,
            None => default_config_file()?,
        };
        for (path, what, flag, var) in [
            (
                &runtime_dir,
                "runtime directory",
                "--runtime-dir",
                ENV_RUNTIME_DIR,
            ),
            (&state_dir, "state directory", "--state-dir", ENV_STATE_DIR),
            (&config, "config file", "--config", ENV_CONFIG),
        ] {
            unexpanded_tilde(path, what, flag, var)?;
        }
        let paths = Paths {
            runtime_dir: absolute(&runtime_dir)?,
            state_dir: absolute(&state_dir)?,
            config: absolute(&config)?,
            config_explicit,
        };
        let socket = paths.socket();
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(PathError::SocketPathTooLong {
                path: socket,
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        Ok(paths)
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join(SOCKET_FILE)
    }
    pub fn lock_file(&self) -> PathBuf {
        self.runtime_dir.join(LOCK_FILE)
    }
    pub fn pid_file(&self) -> PathBuf {
        self.runtime_dir.join(PID_FILE)
    }
    pub fn autostart_lock(&self) -> PathBuf {
        self.runtime_dir.join(AUTOSTART_LOCK_FILE)
    }
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join(LOG_FILE)
    }
}

/// Refuses a path that starts with `~`: only a shell expands it, so one that got here
/// unexpanded (quoted, or set in a unit file or a config where no shell reads it) would name
/// a directory called `~` under the current one.
fn unexpanded_tilde(path: &Path, what: &str, flag: &str, var: &str) -> Result<(), PathError> {
    let starts_with_tilde = path
        .components()
        .next()
        .is_some_and(|first| first.as_os_str().to_string_lossy().starts_with('~'));
    if !starts_with_tilde {
        return Ok(());
    }
    Err(PathError::Unsafe(format!(
        "the {what} {} starts with '~', which only a shell expands (it was quoted, or set \
         where no shell reads it); give {flag} or {var} the whole path, e.g. $HOME{}",
        path.display(),
        path.to_string_lossy()
            .strip_prefix('~')
            .filter(|rest| rest.starts_with('/'))
            .unwrap_or("/…")
    )))
}

fn absolute(path: &Path) -> Result<PathBuf, PathError> {
    std::path::absolute(path).map_err(|source| PathError::Io {
        action: "cannot make absolute",
        path: path.to_owned(),
        source,
    })
}

fn default_runtime_dir() -> PathBuf {
    // XDG_RUNTIME_DIR is per-user, 0700 and cleaned at logout: the right home for a socket.
    // Without it (containers, cron, macOS) fall back to a per-uid name in the temp dir, which
    // the ownership and mode checks make safe. The temp dir is $TMPDIR when set: on macOS
    // that is a private per-user directory, where /tmp is shared (and anyone could take the
    // name first); it is also where every earlier version looked, so an upgraded client still
    // finds the daemon it must restart.
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        if dir.is_absolute() {
            return dir.join("sessiond");
        }
    }
    std::env::temp_dir().join(format!("sessiond-{}", current_uid()))
}

fn default_state_dir() -> Result<PathBuf, PathError> {
    let base =
        directories::BaseDirs::new().ok_or(PathError::NoHome("state directory", ENV_STATE_DIR))?;
    let root = base
        .state_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| base.data_local_dir().to_path_buf());
    Ok(root.join("sessiond"))
}

fn default_config_file() -> Result<PathBuf, PathError> {
    let base =
        directories::BaseDirs::new().ok_or(PathError::NoHome("configuration file", ENV_CONFIG))?;
    Ok(base.config_dir().join("sessiond").join("config.toml"))
}

/// Replaces `path` with `contents` atomically: written to a temporary file beside it (mode
/// 0600), then renamed over it, so a reader sees the old contents or the new, never half.
/// `durable` adds an fsync before the rename.
pub fn write_private_atomically(path: &Path, contents: &[u8], durable: bool) -> io::Result<()> {
    use std::io::Write;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut f| {
        f.write_all(contents)?;
        if durable {
            f.sync_all()?;
        }
        Ok(())
    });
    let done = written.and_then(|()| std::fs::rename(&tmp, path));
    if done.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    done.map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))
}

/// The effective uid of this process (0 on platforms without uids).
pub fn current_uid() -> u32 {
    #[cfg(unix)]
    {
        nix::unistd::geteuid().as_raw()
    }
    #[cfg(not(unix))]
    {
        0
    }
}

/// Creates `path` as a private directory if it is missing, then checks it with
/// [`check_private_dir`].
pub fn ensure_private_dir(path: &Path, kind: DirKind) -> Result<(), PathError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(path).map_err(|source| PathError::Io {
                action: "cannot create",
                path: path.to_owned(),
                source,
            })?;
        }
        Err(source) => {
            return Err(PathError::Io {
                action: "cannot inspect",
                path: path.to_owned(),
                source,
            })
        }
    }
    // Check after creating too: if someone else won a race to create it, this catches it.
    check_private_dir(path, kind)
}

/// Refuses `path` unless it is a real directory (not a symlink), owned by this user, and closed
/// to group and others.
pub fn check_private_dir(path: &Path, kind: DirKind) -> Result<(), PathError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| PathError::Io {
        action: "cannot inspect",
        path: path.to_owned(),
        source,
    })?;
    let (what, env) = (kind.describe(), kind.setting());
    let shown = path.display();
    if meta.file_type().is_symlink() {
        return Err(PathError::Unsafe(format!(
            "{what} {shown} is a symbolic link; sessiond does not follow links for its private \
             directories. Remove the link, or point {env} at a real directory."
        )));
    }
    if !meta.is_dir() {
        return Err(PathError::Unsafe(format!(
            "{what} {shown} exists but is not a directory; move it away, or point {env} \
             elsewhere."
        )));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let me = current_uid();
        if meta.uid() != me {
            return Err(PathError::Unsafe(format!(
                "{what} {shown} is owned by uid {}, not by you (uid {me}); someone else may have \
                 created it to intercept your sessions. Remove it as its owner or root, or point \
                 {env} at a directory you own.",
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(PathError::Unsafe(format!(
                "{what} {shown} is open to other users (mode {mode:04o}); restrict it with \
                 `chmod 700 {shown}`, or point {env} at a private directory."
            )));
        }
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_path_with_an_unexpanded_tilde_is_refused_with_the_whole_path_to_give() {
        let err = Paths::resolve(&PathOverrides {
            runtime_dir: Some("/tmp/r".into()),
            state_dir: Some("~/st".into()),
            config: Some("/tmp/c.toml".into()),
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("state directory ~/st starts with '~'"),
            "{err}"
        );
        assert!(err.contains("--state-dir or SESSIOND_STATE_DIR"), "{err}");
        assert!(err.contains("$HOME/st"), "{err}");
        // A '~' further in is an ordinary name.
        let paths = Paths::resolve(&PathOverrides {
            runtime_dir: Some("/tmp/r".into()),
            state_dir: Some("/tmp/a~b".into()),
            config: Some("/tmp/c.toml".into()),
        })
        .unwrap();
        assert_eq!(paths.state_dir, PathBuf::from("/tmp/a~b"));
    }

    #[test]
    fn creates_missing_directory_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/run");
        ensure_private_dir(&dir, DirKind::Runtime).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn refuses_group_readable_directory_and_names_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let err = ensure_private_dir(&dir, DirKind::Runtime)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode 0750"), "{err}");
        assert!(err.contains("chmod 700"), "{err}");
        assert!(err.contains(&dir.display().to_string()), "{err}");
    }

    #[test]
    fn refuses_symlinked_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = ensure_private_dir(&link, DirKind::State)
            .unwrap_err()
            .to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(err.contains(ENV_STATE_DIR), "{err}");
    }

    #[test]
    fn overrides_win_and_relative_paths_become_absolute() {
        let paths = Paths::resolve(&PathOverrides {
            runtime_dir: Some("rel/run".into()),
            state_dir: Some("/abs/state".into()),
            config: Some("/abs/config.toml".into()),
        })
        .unwrap();
        assert!(paths.runtime_dir.is_absolute());
        assert!(paths.runtime_dir.ends_with("rel/run"));
        assert_eq!(paths.state_dir, PathBuf::from("/abs/state"));
        assert!(paths.config_explicit);
        assert_eq!(paths.socket(), paths.runtime_dir.join("sessiond.sock"));
    }

    #[test]
    fn socket_path_over_the_limit_is_refused_with_the_fix() {
        let long = format!("/{}", "d".repeat(200));
        let err = Paths::resolve(&PathOverrides {
            runtime_dir: Some(long.into()),
            state_dir: Some("/s".into()),
            config: Some("/c".into()),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains(ENV_RUNTIME_DIR), "{err}");
        assert!(err.contains("over the platform limit"), "{err}");
    }
}
