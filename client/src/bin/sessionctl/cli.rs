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

SESSIONS:
  SESSION is a full id, a name, a provider's session id, or an id prefix of at least 4 hex
  digits; names are unique within a project, so --project picks among equal names in
  different projects. Omitted, it is the current session of the context (--context, or
  SESSIOND_CONTEXT, default \"default\").

EXAMPLES:
  sessionctl new --provider claude --name fix-login
  sessionctl list --json             every open session, as JSON
  sessionctl switch fix-login        make it current (in the default context)
  sessionctl --context nvim current  what the editor's context points at
  sessionctl watch --event session_switched
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

    /// The context whose current session commands use and change: a terminal and an editor
    /// can follow different sessions [default: "default"]
    #[arg(long, global = true, value_name = "NAME", env = "SESSIOND_CONTEXT")]
    pub context: Option<String>,
}

/// Naming a session. SESSION is a full id, a name, a provider's session id, or an id prefix of
/// at least 4 hex digits; omitted, it is the context's current session.
#[derive(Debug, Args)]
pub struct Target {
    /// The session [default: the context's current session]
    pub session: Option<String>,

    /// Look names up in this project only (when a name exists in several)
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
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

    /// Create a session (visible at once, as provisional) and print its id
    New {
        /// Project root [default: the enclosing git repository of the current directory, else
        /// the current directory]
        #[arg(long, value_name = "DIR")]
        project: Option<PathBuf>,
        /// Provider: shell, claude, codex, gemini, or one configured in config.toml
        #[arg(long, value_name = "NAME", default_value = "shell")]
        provider: String,
        /// A name, unique within the project (at most 100 characters)
        #[arg(long)]
        name: Option<String>,
        /// Working directory [default: the project root]
        #[arg(long, value_name = "DIR")]
        cwd: Option<PathBuf>,
    },

    /// List sessions, most recently active first; `*` marks the context's current one
    List {
        /// Only this project's sessions
        #[arg(long, value_name = "DIR")]
        project: Option<PathBuf>,
        /// Only this provider's sessions
        #[arg(long, value_name = "NAME")]
        provider: Option<String>,
        /// Only sessions in this phase (provisional, bound, archived, failed) or activity
        /// (idle, running, waiting_input, paused, attached, …)
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
        /// Include archived (closed) sessions
        #[arg(long)]
        all: bool,
    },

    /// Show one session in full, with the process that owns it, if any
    Show(Target),

    /// Make a session the context's current one (reopening it if closed)
    Switch {
        /// The session: id, name, provider id or id prefix
        session: String,
        /// Look names up in this project only
        #[arg(long, value_name = "DIR")]
        project: Option<PathBuf>,
    },

    /// Print the context's current session
    Current,

    /// Rename a session
    Rename {
        /// The session: id, name, provider id or id prefix
        session: String,
        /// The new name, unique within the project
        name: String,
        /// Look names up in this project only
        #[arg(long, value_name = "DIR")]
        project: Option<PathBuf>,
    },

    /// Close (archive) a session: hidden from `list` unless --all; `switch` or `reopen` bring
    /// it back
    Close(Target),

    /// Reopen a closed session
    Reopen(Target),

    /// Start a fresh session in the same project and provider, recording the old one as its
    /// parent, and make it current
    Regenerate(Target),

    /// Print events as JSON Lines until interrupted (Ctrl-C)
    Watch {
        /// Only events about these sessions (repeatable)
        #[arg(long, value_name = "SESSION")]
        session: Vec<String>,
        /// Only events in these projects (repeatable)
        #[arg(long, value_name = "DIR")]
        project: Vec<PathBuf>,
        /// Only events of these providers (repeatable)
        #[arg(long, value_name = "NAME")]
        provider: Vec<String>,
        /// Only these kinds, e.g. session_created, session_switched (repeatable)
        #[arg(long, value_name = "KIND")]
        event: Vec<String>,
    },

    /// Send a prompt to a session: it runs at once if the session is free, else it is
    /// queued. With one argument it goes to the context's current session. PROMPT `-` reads it
    /// from standard input. Prints the turn id (and its place in the queue, if queued).
    Send {
        /// [SESSION] PROMPT
        #[arg(num_args = 1..=2, value_names = ["SESSION", "PROMPT"], required = true)]
        args: Vec<String>,
        /// Look names up in this project only
        #[arg(long, value_name = "DIR")]
        project: Option<PathBuf>,
        /// Refuse (exit 1, code busy) instead of queueing when the session is busy
        #[arg(long)]
        no_queue: bool,
        /// Wait for the turn to finish and exit with its status: 0 when it completed, the
        /// provider's exit code when it failed with one, 1 otherwise
        #[arg(long)]
        wait: bool,
        /// Print the turn's output as it comes (stdout to stdout, stderr to stderr); implies
        /// --wait
        #[arg(long, short = 'f')]
        follow: bool,
    },

    /// Send a prompt that runs next: it interrupts the running turn (SIGINT to its process
    /// group, then SIGTERM and SIGKILL), which settles `interrupted`; with --no-interrupt it
    /// only goes to the head of the queue. Takes the same options as `send`.
    Steer {
        /// [SESSION] PROMPT
        #[arg(num_args = 1..=2, value_names = ["SESSION", "PROMPT"], required = true)]
        args: Vec<String>,
        /// Look names up in this project only
        #[arg(long, value_name = "DIR")]
        project: Option<PathBuf>,
        /// Do not interrupt the running turn; just run next
        #[arg(long)]
        no_interrupt: bool,
        /// Wait for the turn to finish and exit with its status
        #[arg(long)]
        wait: bool,
        /// Print the turn's output as it comes; implies --wait
        #[arg(long, short = 'f')]
        follow: bool,
    },

    /// Move a queued turn to the head of its queue (nothing is interrupted)
    Promote {
        /// The turn: its id or at least 4 hex digits of it
        turn: String,
    },

    /// Print a session's transcript: each turn's prompt, status and output, oldest first
    Log {
        #[command(flatten)]
        target: Target,
        /// Only this turn (its id or a prefix)
        #[arg(long, value_name = "TURN")]
        turn: Option<String>,
        /// Only the last N turns
        #[arg(long, value_name = "N")]
        last: Option<u32>,
        /// Keep printing new turns and output as they come, until interrupted
        #[arg(long, short = 'f')]
        follow: bool,
    },

    /// Write a session's transcript as JSON Lines: a {"type": "turn", …} line per turn, then
    /// a {"type": "output", …} line per chunk of its output
    Export(Target),

    /// Run an interactive command (say, the agent's own UI resuming this session) as the
    /// session's owner: refused while a turn runs or another process owns it (--wait waits);
    /// the session shows `attached`, turns sent meanwhile are queued, and the command's exit
    /// status is passed through. Ownership ends when the command ends or sessionctl dies.
    Run {
        /// The session [default: the context's current session]
        session: Option<String>,
        /// Look names up in this project only
        #[arg(long, value_name = "DIR")]
        project: Option<PathBuf>,
        /// Wait until the session is free instead of failing
        #[arg(long)]
        wait: bool,
        /// The command and its arguments, after `--`
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },

    /// Show a session's running turn and its queue
    Queue(Target),

    /// Hold a session's queue: the running turn finishes, queued ones wait until `resume`
    Pause(Target),

    /// Release a held queue (also after a cancelled turn or a daemon restart): the next
    /// queued turn starts
    Resume(Target),

    /// Remove a queued turn, or abort the running one (SIGINT to its process group, then
    /// SIGTERM, then SIGKILL); an aborted turn pauses its session's queue
    Cancel {
        /// The turn: its id or at least 4 hex digits of it (`sessionctl queue` lists them)
        turn: String,
    },

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
