//! `sessiond`'s command line. The help text is the daemon's manual.

use std::path::PathBuf;

use clap::Parser;

const AFTER_HELP: &str = "\
FILES:
  RUNTIME/sessiond.sock   the socket clients connect to (mode 0600)
  RUNTIME/sessiond.lock   held locked for the daemon's life: one daemon per runtime dir
  STATE/sessiond.lock     likewise, one daemon per state dir; holds its pid and socket
  RUNTIME/sessiond.pid    the running daemon's pid
  RUNTIME/autostart.lock  serialises clients that start the daemon
  STATE/sessiond.log      the log, when started with --detach
  CONFIG                  optional settings (see the README's \"Configuration\")

  RUNTIME defaults to $XDG_RUNTIME_DIR/sessiond, else $TMPDIR/sessiond-UID
  (/tmp/sessiond-UID when TMPDIR is unset).
  STATE defaults to $XDG_STATE_HOME/sessiond (~/.local/state/sessiond; on macOS
  ~/Library/Application Support/sessiond).
  CONFIG defaults to $XDG_CONFIG_HOME/sessiond/config.toml (on macOS
  ~/Library/Application Support/sessiond/config.toml).
  Both directories must be owned by you and closed to others (mode 0700).

SIGNALS:
  SIGTERM, SIGINT, SIGHUP
                    shut down gracefully: stop accepting, finish requests in flight,
                    end running turns (interrupted; their queues pause until resumed),
                    remove the socket and pid file, exit 0
  a second one      during a slow shutdown: exit at once (status 1)

EXIT STATUS:
  0  clean shutdown (or, with --detach, the daemon is up and accepting; with
     --check-config, a daemon would start with these settings)
  1  could not start: unsafe directory, bad config, socket error (the message says which)
  2  bad command line
  3  another sessiond already runs on this runtime (or state) directory

EXAMPLES:
  sessiond                       run in the foreground (for systemd, launchd, a terminal)
  sessiond --detach              run in the background; returns once the socket accepts
  sessiond --check-config        would a daemon start with this config? (after editing it)
  SESSIOND_LOG=debug sessiond    verbose logging
  sessionctl daemon status       ask a running daemon about itself

You rarely start sessiond by hand: sessionctl starts it when none is running.";

/// The sessiond daemon: owns every coding-agent session on this machine and serves
/// sessionctl, editor plugins and scripts over a local socket.
#[derive(Debug, Parser)]
#[command(name = "sessiond", version, after_long_help = AFTER_HELP)]
pub struct Args {
    /// Directory for the socket, lock and pid files [env: SESSIOND_RUNTIME_DIR]
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,

    /// Directory for the database and the log [env: SESSIOND_STATE_DIR]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Configuration file [env: SESSIOND_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Run in the background: detach from the terminal, log to STATE/sessiond.log, and return
    /// once the socket accepts connections (or fail with the reason).
    #[arg(long)]
    pub detach: bool,

    /// Check what a start reads before it takes anything, then exit without starting: the
    /// config file, the log filter and both directories (not the database, which only a start
    /// opens). Prints what a daemon would use, and warnings about settings that never take
    /// effect, and exits 0; or prints why it would not start and exits 1. Takes no lock and
    /// creates nothing, so it is safe beside a running daemon; `sessionctl daemon restart`
    /// runs it before stopping one.
    #[arg(long, conflicts_with = "detach")]
    pub check_config: bool,

    /// Log filter: error, warn, info, debug, trace, off, or target=level directives
    /// such as "sessiond::conn=debug,info". Changeable at runtime with
    /// `sessionctl daemon log-level` [env: SESSIOND_LOG; empty means unset]
    #[arg(long, value_name = "FILTER", value_parser = log_filter_arg)]
    pub log_level: Option<String>,
}

/// Checks `--log-level` while parsing, so a typo is a bad command line (exit 2) and is found
/// before anything is taken.
fn log_filter_arg(spec: &str) -> Result<String, String> {
    crate::logging::parse_filter(spec).map(|(_, normalised)| normalised)
}
