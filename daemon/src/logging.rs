//! Logging: a tracing subscriber whose filter can be changed while the daemon runs.
//!
//! The filter syntax is deliberately small: a bare level, or comma-separated `target=level`
//! directives with an optional bare default (`"sessiond::conn=debug,info"`). Anything else is
//! refused by [`parse_filter`] with the offending part named, so `set_log_level` never
//! half-applies a typo.

use std::sync::Mutex;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, Registry};

/// Lines the log queue holds before dropping. The queue's slots are allocated and touched up
/// front, so tracing-appender's default of 128,000 lines cost 4 MB of resident memory in a
/// daemon that otherwise needs 7; 8,192 lines are still far more than the writer thread
/// falls behind by unless stderr itself is stalled.
const LOG_QUEUE_LINES: usize = 8192;

/// Keeps the log writer thread alive; dropping it flushes what is queued.
pub struct LogGuard(#[allow(dead_code)] tracing_appender::non_blocking::WorkerGuard);

/// The filter used when none is configured.
pub const DEFAULT_FILTER: &str = "info";

/// Changes the log filter at runtime.
pub struct LogControl {
    handle: reload::Handle<Targets, Registry>,
    /// The filter text in force, normalised, for `status` and `set_log_level`'s answer. Only
    /// touched for the instant of a swap; never held across I/O.
    current: Mutex<String>,
}

/// Parses a filter specification, returning the filter and its normalised text.
pub fn parse_filter(spec: &str) -> Result<(Targets, String), String> {
    let mut targets = Targets::new();
    let mut parts = Vec::new();
    let mut default = None;
    for raw in spec.split(',') {
        let part = raw.trim();
        if part.is_empty() {
            continue;
        }
        match part.split_once('=') {
            None => {
                let level = parse_level(part)?;
                default = Some(level);
                parts.push(level.to_string().to_lowercase());
            }
            Some((target, level)) => {
                let target = target.trim();
                let valid = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-');
                if !valid {
                    return Err(format!(
                        "{target:?} is not a valid log target; use a module path such as \
                         sessiond::conn"
                    ));
                }
                if !known_target(target) {
                    return Err(format!(
                        "log target {target:?} matches nothing sessiond logs; use sessiond, or \
                         sessiond::MODULE with MODULE one of {}",
                        MODULES.join(", ")
                    ));
                }
                let level = parse_level(level.trim())?;
                targets = targets.with_target(target, level);
                parts.push(format!("{target}={}", level.to_string().to_lowercase()));
            }
        }
    }
    if parts.is_empty() {
        return Err(
            "empty log filter; give a level (error, warn, info, debug, trace, off)".to_string(),
        );
    }
    // Without a bare level, everything not named keeps the default level rather than going
    // silent.
    let default = default.unwrap_or(LevelFilter::INFO);
    targets = targets.with_default(default);
    Ok((targets, parts.join(",")))
}

/// The daemon's modules: it logs under `sessiond` and `sessiond::MODULE`, nothing else (a
/// unit test holds this list to the modules `lib.rs` declares). A directive naming another
/// target is a typo that would silently match nothing, so it is refused.
const MODULES: &[&str] = &[
    "cli",
    "config",
    "conn",
    "context",
    "control",
    "dispatch",
    "events",
    "instance",
    "listing",
    "logging",
    "platform",
    "provider",
    "recovery",
    "registry",
    "runner",
    "server",
    "session",
    "session_methods",
    "shutdown",
    "startup",
    "store",
    "turn",
];

fn known_target(target: &str) -> bool {
    target == "sessiond"
        || target
            .strip_prefix("sessiond::")
            .and_then(|rest| rest.split("::").next())
            .is_some_and(|module| MODULES.contains(&module))
}

fn parse_level(text: &str) -> Result<LevelFilter, String> {
    match text.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::OFF),
        "error" => Ok(LevelFilter::ERROR),
        "warn" | "warning" => Ok(LevelFilter::WARN),
        "info" => Ok(LevelFilter::INFO),
        "debug" => Ok(LevelFilter::DEBUG),
        "trace" => Ok(LevelFilter::TRACE),
        _ => Err(format!(
            "{text:?} is not a log level; use one of error, warn, info, debug, trace, off"
        )),
    }
}

impl LogControl {
    /// Installs the global subscriber writing to stderr (which is the log file once detached).
    ///
    /// Lines go through a bounded queue to a writer thread, so a stderr that blocks (a
    /// terminal paused with ^S, a stalled pipe or journal) never stalls the event loop that
    /// serves every client; if the queue fills, lines are dropped instead. Must be called
    /// after detaching, since it starts a thread.
    ///
    /// The returned guard flushes buffered lines when dropped: keep it until the last line.
    pub fn init(spec: &str) -> Result<(LogControl, LogGuard), String> {
        let (filter, text) = parse_filter(spec)?;
        let (layer, handle) = reload::Layer::new(filter);
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(LOG_QUEUE_LINES)
            .finish(std::io::stderr());
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .with_target(true);
        tracing_subscriber::registry()
            .with(layer)
            .with(fmt)
            .try_init()
            .map_err(|e| format!("cannot install the logger: {e}"))?;
        let control = LogControl {
            handle,
            current: Mutex::new(text),
        };
        Ok((control, LogGuard(guard)))
    }

    /// The filter in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the filter; returns (previous, now). On error nothing changes.
    pub fn set(&self, spec: &str) -> Result<(String, String), String> {
        let (filter, text) = parse_filter(spec)?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let previous = std::mem::replace(&mut *current, text.clone());
        Ok((previous, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_levels_and_directives_and_normalises() {
        assert_eq!(parse_filter("INFO").unwrap().1, "info");
        assert_eq!(
            parse_filter(" sessiond::conn=Debug , warn ").unwrap().1,
            "sessiond::conn=debug,warn"
        );
    }

    #[test]
    fn refuses_unknown_level_and_bad_target() {
        assert!(parse_filter("loud").unwrap_err().contains("\"loud\""));
        assert!(parse_filter("a b=info").unwrap_err().contains("\"a b\""));
        assert!(parse_filter(" , ").unwrap_err().contains("empty"));
    }

    #[test]
    fn refuses_targets_sessiond_never_logs_under() {
        for typo in ["sesiond=debug", "sessiond::cnn=debug", "tokio=trace"] {
            let err = parse_filter(typo).unwrap_err();
            assert!(err.contains("matches nothing"), "{typo}: {err}");
        }
        for fine in [
            "sessiond=debug",
            "sessiond::conn=trace",
            "sessiond::store::x=info",
        ] {
            parse_filter(fine).unwrap_or_else(|e| panic!("{fine}: {e}"));
        }
    }

    #[test]
    fn the_module_list_is_the_crates() {
        let declared: Vec<&str> = include_str!("lib.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("pub mod "))
            .map(|rest| rest.trim_end_matches(';'))
            .collect();
        assert_eq!(declared, MODULES, "update MODULES to lib.rs's modules");
    }
}
