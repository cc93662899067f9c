//! `config.toml`: the daemon's tunables, each with a default and a range.
//!
//! A missing file at the default location means "all defaults"; a file named explicitly
//! (`--config`, `SESSIOND_CONFIG`) must exist. Unknown keys are refused, with the key and line,
//! because a misspelt limit that silently does nothing is worse than a daemon that says so.

use std::path::Path;
use std::time::Duration;

use std::collections::BTreeMap;

use serde::Deserialize;
use sessiond_proto::frame::DEFAULT_MAX_FRAME;
use sessiond_proto::paths::Paths;

use crate::provider::{self, ProviderConfig};

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    /// `[providers.NAME]`: added to, or replacing, the built-in providers.
    pub providers: BTreeMap<String, toml::Spanned<ProviderConfig>>,
}

/// `[daemon]`: limits and timeouts of the server itself.
#[derive(Clone, Debug, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a [daemon] table of settings"
)]
pub struct DaemonConfig {
    /// Largest frame payload a client may send, in bytes.
    pub max_frame_bytes: u64,
    /// Connections served at once; one more is refused with `busy`.
    pub max_connections: u32,
    /// How long a new connection has to deliver its `hello`.
    pub handshake_timeout_ms: u64,
    /// How long a frame may take to arrive once its first byte has.
    pub frame_timeout_ms: u64,
    /// How long the daemon waits for a client to accept written bytes, while an answer to it
    /// is waiting, before dropping it (a subscriber that only has events waiting is kept).
    pub write_timeout_ms: u64,
    /// How long shutdown waits for requests in flight before exiting anyway.
    pub shutdown_grace_ms: u64,
    /// How often the daemon checks that its socket file still exists (a /tmp cleaner may
    /// delete it) and recreates it if not; the same tick hands back the memory of large
    /// answers once a whole interval has passed without one.
    pub socket_check_interval_ms: u64,
    /// Log filter when neither `--log-level` nor `SESSIOND_LOG` is given.
    pub log_level: Option<String>,
    /// Turns running at once across all sessions; 0 means twice the number of CPUs.
    pub max_concurrent_turns: u32,
    /// Stopping a worker: SIGINT, then SIGTERM after this long, …
    pub interrupt_grace_ms: u64,
    /// … then SIGKILL after this long.
    pub terminate_grace_ms: u64,
    /// Output kept (stored and published) per turn; beyond it output is read and discarded.
    pub max_output_bytes: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME as u64,
            max_connections: 256,
            handshake_timeout_ms: 5_000,
            frame_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            shutdown_grace_ms: 5_000,
            socket_check_interval_ms: 10_000,
            log_level: None,
            max_concurrent_turns: 0,
            interrupt_grace_ms: 2_000,
            terminate_grace_ms: 3_000,
            max_output_bytes: 64 * 1024 * 1024,
        }
    }
}

impl DaemonConfig {
    pub fn max_frame(&self) -> usize {
        self.max_frame_bytes as usize
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_millis(self.frame_timeout_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    pub fn interrupt_grace(&self) -> Duration {
        Duration::from_millis(self.interrupt_grace_ms)
    }
    pub fn terminate_grace(&self) -> Duration {
        Duration::from_millis(self.terminate_grace_ms)
    }
    pub fn socket_check_interval(&self) -> Duration {
        Duration::from_millis(self.socket_check_interval_ms)
    }
    /// The concurrent-turn limit in force.
    pub fn turn_limit(&self) -> usize {
        match self.max_concurrent_turns {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()) * 2,
            n => n as usize,
        }
    }
}

/// A configuration that cannot be used; the message names the file and the fix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The line (from 1) where `table.key` is set in `text`, for messages about a value the TOML
/// parser accepted: under a `[table]` header, or dotted at the top. `None` for a spelling
/// this does not follow (an inline table); the message then names the key alone.
fn key_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let dotted = format!("{table}.{key}");
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            continue;
        }
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim().trim_matches('"');
        if (current == table && name == key) || (current.is_empty() && name == dotted) {
            return Some(i + 1);
        }
    }
    None
}

/// Bounds for each numeric setting: (key, value, min, max).
fn ranges(d: &DaemonConfig) -> [(&'static str, u64, u64, u64); 11] {
    [
        // A hello must fit; above 1 GiB a single client could pin too much memory.
        ("max_frame_bytes", d.max_frame_bytes, 1024, 1 << 30),
        ("max_connections", d.max_connections as u64, 1, 65_536),
        ("handshake_timeout_ms", d.handshake_timeout_ms, 10, 600_000),
        ("frame_timeout_ms", d.frame_timeout_ms, 10, 600_000),
        ("write_timeout_ms", d.write_timeout_ms, 10, 600_000),
        ("shutdown_grace_ms", d.shutdown_grace_ms, 0, 600_000),
        (
            "socket_check_interval_ms",
            d.socket_check_interval_ms,
            10,
            3_600_000,
        ),
        (
            "max_concurrent_turns",
            d.max_concurrent_turns as u64,
            0,
            4096,
        ),
        ("interrupt_grace_ms", d.interrupt_grace_ms, 0, 600_000),
        ("terminate_grace_ms", d.terminate_grace_ms, 0, 600_000),
        ("max_output_bytes", d.max_output_bytes, 1024, 1 << 40),
    ]
}

impl Config {
    /// Every provider: the built-in ones, with configured ones added or replacing them.
    pub fn providers(&self) -> BTreeMap<String, ProviderConfig> {
        let mut all = provider::builtin();
        for (name, spanned) in &self.providers {
            all.insert(name.clone(), spanned.get_ref().clone());
        }
        all
    }

    /// Settings that are valid but can never take effect, each naming its provider.
    pub fn warnings(&self) -> Vec<String> {
        self.providers
            .iter()
            .flat_map(|(name, provider)| {
                provider
                    .get_ref()
                    .warnings()
                    .into_iter()
                    .map(move |w| format!("[providers.{name}]: {w}"))
            })
            .collect()
    }

    /// Reads the configuration named by `paths`, or the defaults when the default file is absent.
    pub fn load(paths: &Paths) -> Result<Config, ConfigError> {
        let path = &paths.config;
        #[cfg(unix)]
        check_owner(path)?;
        let text = match read_text(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !paths.config_explicit => {
                return Ok(Config::default())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConfigError(format!(
                    "config file {} does not exist (it was named by --config or \
                     SESSIOND_CONFIG); create it or drop the setting to use the defaults",
                    path.display()
                )))
            }
            Err(e) => {
                return Err(ConfigError(format!(
                    "cannot read config file {}: {e}",
                    path.display()
                )))
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates the text of a config file; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            ConfigError(format!(
                "config file {} is invalid: {}",
                path.display(),
                e.to_string().trim_end()
            ))
        })?;
        for (key, value, min, max) in ranges(&config.daemon) {
            if !(min..=max).contains(&value) {
                let line = key_line(text, "daemon", key)
                    .map(|n| format!(", line {n}"))
                    .unwrap_or_default();
                return Err(ConfigError(format!(
                    "config file {}{line}: daemon.{key} = {value} is out of range; use a value \
                     from {min} to {max}",
                    path.display()
                )));
            }
        }
        for (name, spanned) in &config.providers {
            let line = text[..spanned.span().start.min(text.len())]
                .matches('\n')
                .count()
                + 1;
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !valid_name {
                return Err(ConfigError(format!(
                    "config file {}, line {line}: provider name {name:?} must be 1 to 64 of \
                     a-z, 0-9, '-' and '_'",
                    path.display()
                )));
            }
            spanned.get_ref().validate().map_err(|e| {
                let element = e
                    .element
                    .map(|el| format!(" (in {el:?})"))
                    .unwrap_or_default();
                ConfigError(format!(
                    "config file {}, line {line}: [providers.{name}]: {}{element}",
                    path.display(),
                    e.message
                ))
            })?;
        }
        if let Some(level) = &config.daemon.log_level {
            crate::logging::parse_filter(level).map_err(|e| {
                ConfigError(format!(
                    "config file {}: daemon.log_level: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(config)
    }
}

/// The largest config file read: far above any real one, and a bound on what a path such as
/// `/dev/zero` could make the daemon read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Refuses a config file another user owns or may write, as ssh refuses its own: the file
/// decides which programs sessiond runs as this user (a provider may redefine `shell`), so
/// whoever can change it could run anything as them. Root's files are trusted (a system-wide
/// file an administrator manages). Only regular files are checked: a pipe (`--config <(…)`)
/// or `/dev/null` is no file anyone else edits.
#[cfg(unix)]
fn check_owner(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(()); // reading it says what is wrong
    };
    if !meta.is_file() {
        return Ok(());
    }
    let me = sessiond_proto::paths::current_uid();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(ConfigError(format!(
            "config file {} belongs to uid {}, not to you (uid {me}), and it decides what \
             sessiond runs as you; use a config file of your own, or take this one over \
             (chown {me} {})",
            path.display(),
            meta.uid(),
            path.display()
        )));
    }
    let mode = meta.mode() & 0o777;
    // A group-writable file whose group is the user's own private one (umask 002 systems
    // give every user such a group) lets nobody else in.
    let group_is_mine = || {
        nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(meta.gid()))
            .ok()
            .flatten()
            .is_some_and(|g| {
                meta.gid() == nix::unistd::getgid().as_raw()
                    && g.mem.iter().all(|member| {
                        nix::unistd::User::from_name(member)
                            .ok()
                            .flatten()
                            .is_some_and(|u| u.uid.as_raw() == me)
                    })
            })
    };
    let bad = if mode & 0o020 != 0 && group_is_mine() {
        mode & 0o002
    } else {
        mode & 0o022
    };
    if bad != 0 && meta.uid() != me {
        return Err(ConfigError(format!(
            "config file {} can be changed by users other than its owner, uid {} (mode \
             {mode:o}), and it decides what sessiond runs as you; ask its owner to run chmod \
             go-w on it, or use a config file of your own",
            path.display(),
            meta.uid()
        )));
    }
    if bad != 0 {
        let who = match (bad & 0o020 != 0, bad & 0o002 != 0) {
            (true, true) => "its group and every user",
            (true, false) => "its group",
            _ => "every user",
        };
        return Err(ConfigError(format!(
            "config file {} can be changed by {who} (mode {mode:o}), and it decides what \
             sessiond runs as you; make it yours alone: chmod go-w {}",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Reads the config file's text. Besides a regular file, a device (`/dev/null`: all defaults)
/// and a pipe (`--config <(…)`) are read; a FIFO is opened without waiting for a writer, so
/// one that nothing writes to is refused instead of stalling the start for ever.
fn read_text(path: &Path) -> std::io::Result<String> {
    use std::io::{Error, Read};
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        nix::fcntl::OFlag::O_NONBLOCK.bits(),
    );
    let file = options.open(path)?;
    #[cfg(unix)]
    let fifo = {
        use std::os::unix::fs::FileTypeExt;
        // Reads block again from here: a pipe whose writer is still writing is read whole.
        nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )?;
        file.metadata()?.file_type().is_fifo()
    };
    #[cfg(not(unix))]
    let fifo = false;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::other(format!(
            "it is over {} KiB; is it the right file?",
            MAX_CONFIG_BYTES / 1024
        )));
    }
    if fifo && bytes.is_empty() {
        return Err(Error::other(
            "it is a FIFO that nothing wrote to; point --config or SESSIOND_CONFIG at a TOML \
             file",
        ));
    }
    String::from_utf8(bytes).map_err(|_| Error::other("it is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_out_of_range_is_named_with_its_line() {
        let text = "# mine\n[daemon]\n\n\nmax_connections = 0\n";
        let err = Config::parse(text, Path::new("c.toml")).unwrap_err().0;
        assert!(
            err.contains("c.toml, line 5: daemon.max_connections = 0"),
            "{err}"
        );
        let dotted = "daemon.write_timeout_ms = 1\n";
        let err = Config::parse(dotted, Path::new("c.toml")).unwrap_err().0;
        assert!(err.contains("line 1: daemon.write_timeout_ms"), "{err}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("", Path::new("c.toml")).unwrap();
        assert_eq!(c.daemon.max_frame_bytes, DEFAULT_MAX_FRAME as u64);
        assert_eq!(c.daemon.max_connections, 256);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name_and_line() {
        let err = Config::parse("[daemon]\nmax_conections = 3\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_conections"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn out_of_range_value_names_key_and_range() {
        let err = Config::parse("[daemon]\nmax_frame_bytes = 10\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("daemon.max_frame_bytes = 10"), "{err}");
        assert!(err.contains("1024"), "{err}");
    }

    #[test]
    fn providers_are_added_and_bad_templates_name_the_line() {
        let good = "[providers.aider]\ncommand = [\"aider\", \"--message\", \"{prompt}\"]\n";
        let c = Config::parse(good, Path::new("c.toml")).unwrap();
        let all = c.providers();
        assert!(all.contains_key("aider") && all.contains_key("shell"));
        let bad = "[daemon]\nmax_connections = 3\n\n[providers.aider]\ncommand = [\"aider\", \"{promt}\"]\n";
        let err = Config::parse(bad, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4"), "names the table header: {err}");
        assert!(err.contains("[providers.aider]"), "{err}");
        assert!(err.contains("unknown placeholder {promt}"), "{err}");
        let typo = "[providers.x]\ncommand = [\"x\", \"{prompt}\"]\noutptu = \"jsonl\"\n";
        let err = Config::parse(typo, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("outptu"), "{err}");
    }

    #[test]
    fn bad_log_level_is_refused() {
        let err = Config::parse("[daemon]\nlog_level = \"loud\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("loud"), "{err}");
    }
}
