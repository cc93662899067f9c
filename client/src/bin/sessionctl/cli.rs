//! sessionctl's command line. The help text is the manual: every command says what it does,
//! what it prints, and how it fails.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
AUTOSTART:
  When no daemon answers, sessionctl starts one (`sessiond --detach` with the same
  directories) and waits up to 5 s for it. Many clients starting at once start one daemon.
  --no-autostart, or SESSIOND_NO_AUTOSTART=1, makes that an error instead. `daemon status`,
  `daemon stop`, `daemon log-level` and `version` never start a daemon.

OUTPUT:
  Human-readable by default. With --json every command prints exactly one JSON document on
  stdout (schemas: docs/cli-json.md), and an error prints {\"error\": {\"code\", \"message\",
  \"exit_code\"}} on stderr. Nothing else is mixed in.

EXIT STATUS:
  0  success
  1  the daemon refused or failed the request, or a local error (the message says which)
  2  bad command line
  3  daemon unreachable: not running (with autostart off), autostart failed, the connection
     broke, or no answer within --timeout
  4  client and daemon speak incompatible protocol versions (fix: sessionctl daemon restart)

ENVIRONMENT:
  SESSIOND_RUNTIME_DIR   runtime directory (socket, lock and pid files)
  SESSIOND_STATE_DIR     state directory (database, log)
  SESSIOND_CONFIG        daemon configuration file
  SESSIOND_NO_AUTOSTART  set to 1 to never start a daemon
  SESSIOND_BIN           the sessiond program autostart runs (default: next to sessionctl,
                         else on PATH)

EXAMPLES:
  sessionctl ping                    start the daemon if needed and check it answers
  sessionctl daemon status --json    the daemon's pid, paths and load, as JSON
  sessionctl daemon log-level debug  more detail in the daemon's log, until it restarts
  sessionctl daemon restart          after upgrading sessiond";

/// sessionctl: control sessiond, the daemon that owns your coding-agent sessions.
#[derive(Debug, Parser)]
#[command(name = "sessionctl", version, after_long_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Print one JSON document on stdout (errors as JSON on stderr)
    #[arg(long, global = true)]
    pub json: bool,

    /// Never start a daemon; fail with exit status 3 when none runs
    /// [env: SESSIOND_NO_AUTOSTART=1]
    #[arg(long, global = true)]
    pub no_autostart: bool,

    /// Seconds to wait for any one answer from the daemon
    #[arg(long, global = true, value_name = "SECS", default_value = "10", value_parser = parse_timeout)]
    pub timeout: f64,

    /// Runtime directory (socket, lock and pid files) [env: SESSIOND_RUNTIME_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,

    /// State directory (database, log) [env: SESSIOND_STATE_DIR]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Daemon configuration file, passed on when starting the daemon [env: SESSIOND_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs > 0.0 && secs <= 86_400.0 => Ok(secs),
        _ => Err(format!(
            "{text:?} is not a number of seconds between 0 and 86400"
        )),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check that the daemon answers (starting it if needed); prints the round-trip time
    Ping,

    /// Print sessionctl's version and, if a daemon runs, the daemon's
    Version,

    /// Manage the daemon itself: status, start, stop, restart, log level, paths
    #[command(subcommand)]
    Daemon(DaemonCommand),
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show the running daemon's version, pid, uptime, paths, log level and connections.
    /// Exits 3 when no daemon runs (never starts one).
    Status,

    /// Start the daemon in the background if none runs; prints its pid
    Start,

    /// Stop the daemon gracefully and wait until it has exited. Succeeds (exit 0) when none
    /// was running.
    Stop,

    /// Stop the daemon (if running) and start a new one: the fix after upgrading sessiond
    Restart,

    /// Change the daemon's log filter until it exits. LEVEL is error, warn, info, debug,
    /// trace or off, or target=level directives such as "sessiond::conn=debug,info"
    LogLevel {
        /// The new filter
        level: String,
    },

    /// Print where the daemon's files are, without contacting it
    Paths,
}
