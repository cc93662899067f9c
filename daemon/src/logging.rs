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

/// The daemon's modules: it logs under `sessiond::MODULE` (a unit test holds this list to the
/// modules `lib.rs` declares).
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

/// The protocol crate's modules that log in the daemon (a unit test holds this list to the
/// crate's sources).
const PROTO_MODULES: &[&str] = &["ownership"];

/// Whether a directive for `target` can match anything the daemon logs. A directive matches an
/// event whose target starts with it (`sessiond::con` covers `conn`, `context` and `control`).
fn matches_something(target: &str) -> bool {
    let daemon = MODULES.iter().map(|m| ("sessiond", m));
    let proto = PROTO_MODULES.iter().map(|m| ("sessiond_proto", m));
    daemon
        .chain(proto)
        .any(|(krate, module)| format!("{krate}::{module}").starts_with(target))
}

/// The directives' targets in `spec` that match nothing the daemon logs: almost certainly
/// typos, which a filter would otherwise accept and silently ignore. Empty for a filter that
/// does not parse (its error is [`parse_filter`]'s to give).
pub fn unmatched_targets(spec: &str) -> Vec<String> {
    spec.split(',')
        .filter_map(|part| part.split_once('='))
        .map(|(target, _)| target.trim())
        .filter(|target| !target.is_empty() && !matches_something(target))
        .map(str::to_string)
        .collect()
}

/// What to say about targets that match nothing, naming those that do.
pub fn unmatched_message(unmatched: &[String]) -> String {
    format!(
        "log target {} matches nothing sessiond logs; its targets are sessiond::MODULE, with \
         MODULE one of {}, and sessiond_proto::ownership",
        unmatched
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        MODULES.join(", ")
    )
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

    /// Replaces the filter; returns (previous, now). On error nothing changes. Unlike a filter
    /// given at start (where it is logged as a warning, so a config that ran before still
    /// runs), a target that matches nothing is refused here: it was typed just now.
    pub fn set(&self, spec: &str) -> Result<(String, String), String> {
        let (filter, text) = parse_filter(spec)?;
        let unmatched = unmatched_targets(&text);
        if !unmatched.is_empty() {
            return Err(unmatched_message(&unmatched));
        }
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
    fn finds_targets_that_match_nothing_sessiond_logs() {
        for typo in ["sesiond", "sessiond::cnn", "tokio", "sessiond::store::x"] {
            assert_eq!(
                unmatched_targets(&format!("info,{typo}=debug")),
                [typo],
                "{typo}"
            );
        }
        // Prefixes match as tracing matches them.
        for fine in [
            "sessiond",
            "sessiond::conn",
            "sessiond::con",
            "sessiond_proto",
            "sessiond_proto::ownership",
        ] {
            assert!(
                unmatched_targets(&format!("{fine}=trace")).is_empty(),
                "{fine}"
            );
        }
        assert!(unmatched_message(&["tokio".into()]).contains("sessiond::MODULE"));
    }

    #[test]
    fn the_module_lists_are_the_crates() {
        let declared: Vec<&str> = include_str!("lib.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("pub mod "))
            .map(|rest| rest.trim_end_matches(';'))
            .collect();
        assert_eq!(declared, MODULES, "update MODULES to lib.rs's modules");
        let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/src");
        let mut logging: Vec<String> = std::fs::read_dir(&proto)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| {
                std::fs::read_to_string(path).is_ok_and(|text| text.contains("tracing::"))
            })
            .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        logging.sort();
        assert_eq!(logging, PROTO_MODULES, "update PROTO_MODULES");
    }
}
