//! sessionctl's command line. The help text is the manual: every command says what it does,
//! what it prints, and how it fails.
//!
//! The derived [`Cli`] is the one definition. [`Cli::from_env`] parses with it, but first
//! tries a tree holding only the subcommand the arguments name, and of the global options only
//! those the arguments name: building clap's whole tree costs about a quarter of a millisecond
//! per run (some 400 KB of heap, most of it the global options copied into every subcommand),
//! a fifth of what a `switch` costs end to end, and each global option left in costs clap
//! 10,000–16,000 instructions more to copy down, default and copy back. Help, version and every
//! error come from the whole tree, so they read exactly as before.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, FromArgMatches, Parser, Subcommand};

const AFTER_HELP: &str = "\
AUTOSTART:
  When no daemon answers, sessionctl starts one (`sessiond --detach` with the same
  directories) and waits up to 5 s for it. Many clients starting at once start one daemon.
  --no-autostart, or SESSIOND_NO_AUTOSTART=1, makes that an error instead. `daemon status`,
  `daemon stop`, `daemon log-level` and `version` never start a daemon.

OUTPUT:
  Human-readable by default. With --json every command prints exactly one JSON document on
  stdout (schemas: docs/cli-json.md), except the streams `watch` and `export`, which print
  JSON Lines; an error prints {\"error\": {\"code\", \"message\", \"exit_code\"}} on stderr.
  Nothing else is mixed in. Text from elsewhere shown to people (paths, prompts, provider
  ids, messages) has its terminal control characters escaped (\\u{1b}); a turn's output in
  `log` is printed as the turn wrote it.

EXIT STATUS:
  0  success
  1  the daemon refused or failed the request, or a local error (the message says which)
  2  bad command line
  3  daemon unreachable: not running (with autostart off), autostart failed, the connection
     broke, or no answer within --timeout
  4  client and daemon speak incompatible protocol versions (fix: sessionctl daemon restart)
  `send --wait`, `steer --wait` and `run` exit instead with the status of what they ran (a
  failed turn's exit code, the command's), which may be any number.

ENVIRONMENT:
  SESSIOND_RUNTIME_DIR   runtime directory (socket, lock and pid files)
  SESSIOND_STATE_DIR     state directory (database, log)
  SESSIOND_CONFIG        daemon configuration file
  SESSIOND_NO_AUTOSTART  set to 1 to never start a daemon (empty, 0, false, no or off: start it)
  SESSIOND_BIN           the sessiond program autostart runs (default: next to sessionctl,
                         else on PATH)

SESSIONS:
  SESSION is a full id, a name, a provider's session id, or an id prefix of at least 4 hex
  digits; names are unique within a project, so --project picks among equal names in
  different projects (and a session chosen otherwise must be in that project). Omitted, it
  is the current session of the context (--context, or SESSIOND_CONTEXT, default
  \"default\").

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

/// Options every command takes. Under a heading of their own, so a command's help lists its
/// own options first rather than interleaved with these.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Print one JSON document on stdout (errors as JSON on stderr)
    #[arg(long, global = true)]
    pub json: bool,

    /// Never start a daemon implicitly; fail with exit status 3 when none runs (`daemon
    /// start` and `daemon restart` still start one) [env: SESSIOND_NO_AUTOSTART=1]
    #[arg(long, global = true)]
    pub no_autostart: bool,

    /// Seconds to wait for any one answer from the daemon
    #[arg(long, global = true, value_name = "SECS", default_value_t = DEFAULT_TIMEOUT_SECS, value_parser = parse_timeout)]
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
    #[arg(long, global = true, value_name = "NAME", env = CONTEXT_ENV)]
    pub context: Option<String>,
}

/// `--timeout` when it is not given.
const DEFAULT_TIMEOUT_SECS: f64 = 10.0;

/// The environment variable `--context` falls back to.
const CONTEXT_ENV: &str = "SESSIOND_CONTEXT";

/// One of [`Global`]'s options, as much as the lean parse needs to decide whether to build it.
struct GlobalOption {
    /// clap's id, as the derive names it.
    id: &'static str,
    long: &'static str,
    /// The environment variable clap reads for it, if any.
    env: Option<&'static str>,
}

/// [`Global`]'s options, in order. A unit test holds this to the derive.
const GLOBAL_OPTIONS: &[GlobalOption] = &[
    GlobalOption::new("json", "json", None),
    GlobalOption::new("no_autostart", "no-autostart", None),
    GlobalOption::new("timeout", "timeout", None),
    GlobalOption::new("runtime_dir", "runtime-dir", None),
    GlobalOption::new("state_dir", "state-dir", None),
    GlobalOption::new("config", "config", None),
    GlobalOption::new("context", "context", Some(CONTEXT_ENV)),
];

impl GlobalOption {
    const fn new(id: &'static str, long: &'static str, env: Option<&'static str>) -> Self {
        GlobalOption { id, long, env }
    }
}

/// Naming a session. SESSION is a full id, a name, a provider's session id, or an id prefix of
/// at least 4 hex digits; omitted, it is the context's current session.
#[derive(Debug, Args)]
pub struct Target {
    /// The session [default: the context's current session]
    pub session: Option<String>,

    /// Look names up in this project only (a session chosen otherwise must be in it)
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
}

impl Cli {
    /// Parses the process's arguments: through the one-subcommand tree when that succeeds,
    /// else through the whole tree, which also renders help, version and errors.
    pub fn from_env() -> Result<Cli, clap::Error> {
        let args: Vec<OsString> = std::env::args_os().collect();
        match lean_parse(&args) {
            Some(cli) => cli.settle(),
            None => Cli::try_parse_from(&args)
                .map_err(|e| with_quoting_tip(e, &args))?
                .settle(),
        }
    }

    /// The rules clap cannot express: an empty `SESSIOND_CONTEXT` means unset, as every other
    /// `SESSIOND_*` variable's empty value does (clap takes it as the value ""); and a global
    /// option may conflict with a subcommand's.
    fn settle(mut self) -> Result<Cli, clap::Error> {
        if self.global.context.as_deref() == Some("")
            && std::env::var_os(CONTEXT_ENV).is_some_and(|v| v.is_empty())
        {
            self.global.context = None;
        }
        if self.global.json && matches!(&self.command, Command::Log(LogArgs { follow: true, .. })) {
            return Err(<Cli as clap::CommandFactory>::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                "the argument '--follow' cannot be used with '--json': following prints text as \
                 it comes (`sessionctl --json log` prints the transcript as one document, and \
                 `sessionctl --json watch` streams events as JSON Lines)",
            ));
        }
        Ok(self)
    }
}

/// A prompt of several unquoted words reaches `send` or `steer` as too many arguments; clap's
/// error alone ("unexpected value") does not say that quoting is the cure.
fn with_quoting_tip(mut e: clap::Error, args: &[OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let command = named_subcommand(args).map(|(name, _)| *name);
    if let (Some(name @ ("send" | "steer")), ErrorKind::TooManyValues) = (command, e.kind()) {
        let tip = format!(
            "a prompt of several words is one argument: quote it, as in `sessionctl {name} api \
             \"fix the login bug\"`"
        );
        e.insert(
            ContextKind::Suggested,
            ContextValue::StyledStrs(vec![tip.into()]),
        );
    }
    e
}

/// The subcommand `args` name: the first argument before any `--` that is one's name (it may
/// really be an option's value, which only a parse can tell).
fn named_subcommand(args: &[OsString]) -> Option<&'static (&'static str, Augment)> {
    args.iter()
        .skip(1)
        .take_while(|a| *a != "--")
        .find_map(|a| SUBCOMMANDS.iter().find(|(name, _)| a == name))
}

/// Parses `args` against a lean tree (see [`lean_tree`]), or returns `None` when that tree
/// does not accept them. It gives the whole tree's answer whenever it gives one: its
/// subcommand is the whole tree's and its root holds some of the whole root's global options
/// (a unit test compares the tree holding all of them), and a parse that ends without error
/// took the same path through either tree. The subcommand is the first argument that names
/// one; when that was really an option's value, the lean tree fails and the whole tree
/// decides.
fn lean_parse(args: &[OsString]) -> Option<Cli> {
    let &(name, augment) = named_subcommand(args)?;
    let named = named_globals(args);
    let mut matches = lean_tree(name, augment, &named)
        .try_get_matches_from(args)
        .ok()?;
    let global = Global::from_lean_matches(&matches, &named)?;
    let command = Command::from_arg_matches_mut(&mut matches).ok()?;
    Some(Cli { global, command })
}

/// The ids of the global options the lean tree must hold: those an argument names (`--LONG`
/// or `--LONG=VALUE`) and those whose environment variable is set. Any other takes its
/// default in the whole tree, which [`Global::from_lean_matches`] gives it too. An argument
/// that only looks like an option (a value after `--`, say) just keeps that option in.
fn named_globals(args: &[OsString]) -> Vec<&'static str> {
    let names = |long: &str| {
        args.iter().skip(1).any(|a| {
            a.as_encoded_bytes()
                .strip_prefix(b"--")
                .and_then(|rest| rest.strip_prefix(long.as_bytes()))
                .is_some_and(|tail| tail.first().is_none_or(|&b| b == b'='))
        })
    };
    GLOBAL_OPTIONS
        .iter()
        .filter(|o| names(o.long) || o.env.is_some_and(|v| std::env::var_os(v).is_some()))
        .map(|o| o.id)
        .collect()
}

/// The root, as the derive makes it but holding only the global options `globals` (by id),
/// with the one subcommand `name`. Each global option left out saves clap 10,000–16,000
/// instructions of copying it into the subcommand, defaulting it and copying it back.
fn lean_tree(name: &'static str, augment: Augment, globals: &[&str]) -> clap::Command {
    let mut root = lean_root();
    if !globals.is_empty() {
        let all = Global::augment_args(clap::Command::new("sessionctl"));
        root = root.args(
            all.get_arguments()
                .filter(|a| globals.contains(&a.get_id().as_str()))
                .cloned(),
        );
    }
    root.subcommand(augment(clap::Command::new(name)))
}

impl Global {
    /// The options from a lean parse whose tree held only the global options `globals` (by
    /// id); each of the others takes the default the derive gives it.
    fn from_lean_matches(m: &clap::ArgMatches, globals: &[&str]) -> Option<Global> {
        let has = |id: &str| globals.contains(&id);
        let flag = |id: &str| has(id) && m.get_flag(id);
        let path = |id: &str| has(id).then(|| m.get_one::<PathBuf>(id).cloned()).flatten();
        Some(Global {
            json: flag("json"),
            no_autostart: flag("no_autostart"),
            timeout: if has("timeout") {
                *m.get_one::<f64>("timeout")?
            } else {
                DEFAULT_TIMEOUT_SECS
            },
            runtime_dir: path("runtime_dir"),
            state_dir: path("state_dir"),
            config: path("config"),
            context: has("context")
                .then(|| m.get_one::<String>("context").cloned())
                .flatten(),
        })
    }
}

/// The root command as `#[command]` on [`Cli`] and the derive make it, less what only help
/// and version read.
fn lean_root() -> clap::Command {
    clap::Command::new("sessionctl")
        .subcommand_required(true)
        .arg_required_else_help(true)
}

/// How to add each top-level subcommand's arguments (and, for `daemon`, its subcommands) as
/// the derived [`Command`] does. A unit test holds this table to the derive.
type Augment = fn(clap::Command) -> clap::Command;
const SUBCOMMANDS: &[(&str, Augment)] = &[
    ("ping", |c| c),
    ("version", |c| c),
    ("new", NewArgs::augment_args),
    ("list", ListArgs::augment_args),
    ("show", Target::augment_args),
    ("switch", SwitchArgs::augment_args),
    ("current", |c| c),
    ("rename", RenameArgs::augment_args),
    ("close", Target::augment_args),
    ("reopen", Target::augment_args),
    ("regenerate", Target::augment_args),
    ("watch", WatchArgs::augment_args),
    ("send", SendArgs::augment_args),
    ("steer", SteerArgs::augment_args),
    ("promote", PromoteArgs::augment_args),
    ("log", LogArgs::augment_args),
    ("export", Target::augment_args),
    ("run", RunArgs::augment_args),
    ("queue", Target::augment_args),
    ("pause", Target::augment_args),
    ("resume", Target::augment_args),
    ("cancel", CancelArgs::augment_args),
    ("daemon", |c| {
        DaemonCommand::augment_subcommands(c)
            .subcommand_required(true)
            .arg_required_else_help(true)
    }),
];

/// Seconds, from a millisecond to a day. Under a nanosecond became a zero timeout, which
/// cannot be set on a socket; nothing answers in under a millisecond anyway.
fn parse_timeout(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if (0.001..=86_400.0).contains(&secs) => Ok(secs),
        _ => Err(format!(
            "{text:?} is not a number of seconds from 0.001 to 86400"
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
    New(NewArgs),

    /// List sessions, most recently active first; `*` marks the context's current one
    List(ListArgs),

    /// Show one session in full, with the process that owns it, if any
    Show(Target),

    /// Make a session the context's current one (reopening it if closed)
    Switch(SwitchArgs),

    /// Print the context's current session (marked if closed). With none, prints nothing on
    /// stdout and says so on stderr (exit 0), so `$(sessionctl current)` is empty
    Current,

    /// Rename a session
    Rename(RenameArgs),

    /// Close (archive) a session: hidden from `list` unless --all; `switch` or `reopen` bring
    /// it back
    Close(Target),

    /// Reopen a closed session
    Reopen(Target),

    /// Start a fresh session in the same project and provider, recording the old one as its
    /// parent, and make it current
    Regenerate(Target),

    /// Print events as JSON Lines until interrupted (Ctrl-C), or until the daemon stops
    ///
    /// When the daemon stops or restarts, watch prints the events of the stop (running turns
    /// settling `interrupted`) and ends with exit status 3 (`shutting_down`); run it again, or
    /// in a loop, to follow the next daemon. A reader that falls behind, or stops reading for
    /// a while (paused in a pager), is kept, and gets a `lagged` event saying how many
    /// events it missed when it reads again.
    ///
    /// With filters, an event is printed when it matches every kind of filter given, and any
    /// one value of each: `--session api --event turn_settled` prints api's settled turns. A
    /// --session name is looked up in the --project directories given. A value no event can
    /// carry is refused, not watched in silence: a session that does not exist, a provider
    /// neither configured nor any session's, a project that is neither a directory nor any
    /// session's.
    Watch(WatchArgs),

    /// Send a prompt to a session: it runs at once if the session is free, else it is
    /// queued. With one argument it goes to the context's current session. PROMPT `-` reads it
    /// from standard input. Prints the turn id (and its place in the queue, if queued, and
    /// whether the queue is paused).
    #[command(
        override_usage = "sessionctl send [OPTIONS] [SESSION] <PROMPT>",
        after_help = PROMPT_ARGUMENTS
    )]
    Send(SendArgs),

    /// Send a prompt that runs next: it interrupts the running turn (SIGINT to its process
    /// group, then SIGTERM and SIGKILL), which settles `interrupted`; with --no-interrupt it
    /// only goes to the head of the queue. A running turn still waiting for a slot under
    /// `max_concurrent_turns` has not run, so it is not interrupted: it goes back to the queue
    /// behind the steer, and runs after it. Arguments, --project, --wait and --follow are as
    /// for `send`. Refused, unless --no-interrupt, while the session's queue is paused with a
    /// turn running: the steer would wait behind the pause after the interruption.
    #[command(
        override_usage = "sessionctl steer [OPTIONS] [SESSION] <PROMPT>",
        after_help = PROMPT_ARGUMENTS
    )]
    Steer(SteerArgs),

    /// Move a queued turn to the head of its queue (nothing is interrupted)
    Promote(PromoteArgs),

    /// Print a session's transcript: each turn's prompt, status and output, oldest first
    Log(LogArgs),

    /// Write a session's transcript as JSON Lines: a {"type": "turn", …} line per turn, then
    /// a {"type": "output", …} line per chunk of its output
    Export(Target),

    /// Run an interactive command (say, the agent's own UI resuming this session) as the
    /// session's owner: refused while a turn runs or another process owns it (--wait waits);
    /// the session shows `attached`, turns sent meanwhile are queued, and the command's exit
    /// status is passed through. Ownership ends when the command ends or sessionctl dies.
    /// SIGTERM and SIGHUP sent to sessionctl are passed on to the command, and sessionctl
    /// gives the session back once it has ended. If the daemon restarts meanwhile, the
    /// session is attached again through the new one (a stopped daemon is not started; when
    /// the session could not be attached again, sessionctl says so as it ends).
    #[command(override_usage = "sessionctl run [OPTIONS] [SESSION] -- <CMD>...")]
    Run(RunArgs),

    /// Show a session's running turn and its queue
    Queue(Target),

    /// Hold a session's queue: the running turn finishes, queued ones wait until `resume`
    Pause(Target),

    /// Release a held queue (also after a cancelled turn or a daemon restart): the next
    /// queued turn starts
    Resume(Target),

    /// Remove a queued turn, or abort the running one (SIGINT to its process group, then
    /// SIGTERM, then SIGKILL); an aborted turn settles cancelled, whatever its exit status,
    /// and pauses its session's queue. Cancelling a queued steer withdraws its interruption
    Cancel(CancelArgs),

    /// Manage the daemon itself: status, start, stop, restart, log level, paths
    #[command(subcommand)]
    Daemon(DaemonCommand),
}

// Each subcommand's arguments are a struct of their own so that `SUBCOMMANDS` can build one
// subcommand without the others. Their help lives on the variants above: plain comments
// here, as a doc comment on a struct would become the subcommand's long help.

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Project root [default: the enclosing git repository of the current directory, else
    /// the current directory]
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Provider: shell, claude, codex, gemini, or one configured in config.toml
    #[arg(long, value_name = "NAME", default_value = "shell")]
    pub provider: String,
    /// A name, unique within the project (at most 100 characters)
    #[arg(long)]
    pub name: Option<String>,
    /// Working directory [default: the project root]
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this project's sessions
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Only this provider's sessions
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Only sessions in this phase (provisional, bound, archived, failed) or activity
    /// (idle, running, waiting_input, paused, attached, …)
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// Include archived (closed) sessions
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// The session: id, name, provider id or id prefix
    pub session: String,
    /// Look names up in this project only (a session chosen otherwise must be in it)
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RenameArgs {
    /// The session: id, name, provider id or id prefix
    pub session: String,
    /// The new name, unique within the project
    pub name: String,
    /// Look names up in this project only (a session chosen otherwise must be in it)
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only events about these sessions (repeatable; names are looked up in the --project
    /// directories given)
    #[arg(long, value_name = "SESSION")]
    pub session: Vec<String>,
    /// Only events in these projects (repeatable)
    #[arg(long, value_name = "DIR")]
    pub project: Vec<PathBuf>,
    /// Only events of these providers (repeatable)
    #[arg(long, value_name = "NAME")]
    pub provider: Vec<String>,
    /// Only these kinds, e.g. session_created, session_switched (repeatable)
    #[arg(long, value_name = "KIND")]
    pub event: Vec<String>,
}

/// The arguments of `send` and `steer`, as their help shows them.
const PROMPT_ARGUMENTS: &str = "Arguments:
  [SESSION]  The session [default: the context's current session]
  <PROMPT>   The prompt, one argument: quote it (`sessionctl send \"fix the tests\"`); `-` reads it
             from standard input";

#[derive(Debug, Args)]
pub struct SendArgs {
    /// [SESSION] PROMPT (described in PROMPT_ARGUMENTS: clap would show one optional,
    /// repeatable argument after a required one)
    #[arg(num_args = 1..=2, value_names = ["SESSION", "PROMPT"], required = true, hide = true)]
    pub args: Vec<String>,
    /// Look names up in this project only (a session chosen otherwise must be in it)
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Refuse (exit 1, code busy) instead of queueing when the session is busy
    #[arg(long)]
    pub no_queue: bool,
    /// Wait for the turn to finish and exit with its status: 0 when it completed, the
    /// provider's exit code when it failed with one, 1 otherwise
    #[arg(long)]
    pub wait: bool,
    /// Print the turn's output as it comes (stdout to stdout, stderr to stderr); implies
    /// --wait
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct SteerArgs {
    /// [SESSION] PROMPT (described in PROMPT_ARGUMENTS: clap would show one optional,
    /// repeatable argument after a required one)
    #[arg(num_args = 1..=2, value_names = ["SESSION", "PROMPT"], required = true, hide = true)]
    pub args: Vec<String>,
    /// Look names up in this project only (a session chosen otherwise must be in it)
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Do not interrupt the running turn; just run next
    #[arg(long)]
    pub no_interrupt: bool,
    /// Wait for the turn to finish and exit with its status: 0 when it completed, the
    /// provider's exit code when it failed with one, 1 otherwise
    #[arg(long)]
    pub wait: bool,
    /// Print the turn's output as it comes; implies --wait
    #[arg(long, short = 'f')]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The turn: its id or at least 4 hex digits of it
    pub turn: String,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only the turn whose id starts with TURN: hex digits of its id, with or without the
    /// dashes (several turns if several match; an error if none does)
    #[arg(long, value_name = "TURN")]
    pub turn: Option<String>,
    /// Only the last N turns (N at least 1)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub last: Option<u32>,
    /// Keep printing new turns and output as they come, until interrupted (exit 0) or the
    /// daemon stops (exit 3). Nothing is lost when the reader pauses (a pager): what the
    /// daemon could not hold meanwhile is read back from the transcript. Not with --turn:
    /// follow the session, or `send --follow`
    #[arg(long, short = 'f', conflicts_with = "turn")]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The session [default: the context's current session]
    pub session: Option<String>,
    /// Look names up in this project only (a session chosen otherwise must be in it)
    #[arg(long, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Wait until the session is free instead of failing
    #[arg(long)]
    pub wait: bool,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The turn: its id or at least 4 hex digits of it (`sessionctl queue` lists them)
    pub turn: String,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Show the running daemon's version, pid, uptime, paths, log level and connections.
    /// Exits 3 when no daemon runs (never starts one).
    Status,

    /// Start the daemon in the background if none runs; prints its pid
    Start,

    /// Stop the daemon gracefully and wait until it has exited. Running turns are ended with
    /// it (SIGINT, then SIGTERM and SIGKILL after the configured graces): they settle
    /// interrupted, their output kept, and each session's queue waits for `sessionctl
    /// resume`; clients waiting on them (`send --wait`, `watch`) see them settle before the
    /// daemon closes their connections. Succeeds (exit 0) when none was running. A daemon a
    /// systemd unit runs is refused: use `systemctl --user stop sessiond`.
    Stop,

    /// Stop the daemon (if running) and start a new one: the fix after upgrading sessiond
    /// or editing its config. A daemon that would not start (`sessiond --check-config` fails
    /// for it: a config error, an unsafe directory) is refused first, and the running one is
    /// left running. So is a daemon a systemd unit runs: use `systemctl --user restart
    /// sessiond`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Everything parsing reads from a command: its arguments in full, its settings, and its
    /// subcommands' shapes (the auto-generated `help` subcommand aside).
    fn shape(c: &clap::Command) -> Vec<String> {
        let mut lines: Vec<String> = c.get_arguments().map(|a| format!("{a:?}")).collect();
        lines.sort();
        // Every setting that steers parsing (the rest only shape help).
        let settings = [
            c.is_no_binary_name_set(),
            c.is_dont_delimit_trailing_values_set(),
            c.is_arg_required_else_help_set(),
            c.is_allow_negative_numbers_set(),
            c.is_trailing_var_arg_set(),
            c.is_allow_missing_positional_set(),
            c.is_subcommand_required_set(),
            c.is_allow_external_subcommands_set(),
            c.is_args_conflicts_with_subcommands_set(),
            c.is_subcommand_precedence_over_arg_set(),
            c.is_subcommand_negates_reqs_set(),
            c.is_multicall_set(),
        ];
        lines.push(format!(
            "settings {settings:?} aliases {:?} short {:?} long {:?}",
            c.get_all_aliases().collect::<Vec<_>>(),
            c.get_short_flag(),
            c.get_long_flag(),
        ));
        for sub in c.get_subcommands().filter(|s| s.get_name() != "help") {
            lines.push(format!("subcommand {}", sub.get_name()));
            lines.extend(shape(sub));
        }
        lines
    }

    /// `--version` and `--help` end a parse with an error (the lean tree has no version, and
    /// its help flag knows no long help), so the whole tree answers both.
    fn without_help_and_version(lines: Vec<String>) -> Vec<String> {
        lines
            .into_iter()
            .filter(|l| !l.contains("id: \"version\"") && !l.contains("id: \"help\""))
            .collect()
    }

    #[test]
    fn an_unquoted_prompt_gets_a_tip_to_quote_it() {
        for command in ["send", "steer"] {
            let args: Vec<OsString> = ["sessionctl", command, "fix", "the", "bug"]
                .iter()
                .map(OsString::from)
                .collect();
            let e = Cli::try_parse_from(&args).expect_err("three words are too many");
            let kind = e.kind();
            let text = with_quoting_tip(e, &args).render().to_string();
            assert!(text.contains("quote it"), "{command} ({kind:?}): {text}");
        }
        // Other commands' errors are left alone.
        let args: Vec<OsString> = ["sessionctl", "show", "a", "b"]
            .iter()
            .map(OsString::from)
            .collect();
        let e = Cli::try_parse_from(&args).expect_err("two sessions");
        let text = with_quoting_tip(e, &args).render().to_string();
        assert!(!text.contains("quote it"), "{text}");
    }

    #[test]
    fn each_subcommand_built_alone_has_the_whole_trees_shape() {
        let mut whole = Cli::command();
        whole.build();
        let names: Vec<&str> = whole
            .get_subcommands()
            .map(|s| s.get_name())
            .filter(|n| *n != "help")
            .collect();
        let table: Vec<&str> = SUBCOMMANDS.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names, table,
            "SUBCOMMANDS must list the derived subcommands, in order"
        );

        for &(name, augment) in SUBCOMMANDS {
            let all: Vec<&str> = GLOBAL_OPTIONS.iter().map(|o| o.id).collect();
            let mut lean = lean_tree(name, augment, &all);
            lean.build();
            let lean_sub = lean.find_subcommand(name).expect("built");
            let whole_sub = whole.find_subcommand(name).expect("derived");
            // A subcommand with a long description gives its help flag a long help in the
            // whole tree alone; the whole tree answers `--help` anyway.
            assert_eq!(
                without_help_and_version(shape(lean_sub)),
                without_help_and_version(shape(whole_sub)),
                "subcommand {name}"
            );
            // The root differs only by its help and version flags and its subcommands.
            let root = |c: &clap::Command| {
                without_help_and_version(shape(c))
                    .into_iter()
                    .take_while(|l| !l.starts_with("subcommand "))
                    .collect::<Vec<_>>()
            };
            assert_eq!(root(&lean), root(&whole), "root beside {name}");
        }
    }

    #[test]
    fn the_global_option_table_lists_the_derived_ones() {
        let globals = Global::augment_args(clap::Command::new("sessionctl"));
        let derived: Vec<(String, Option<String>, Option<String>)> = globals
            .get_arguments()
            .map(|a| {
                assert!(a.is_global_set(), "{} is not global", a.get_id());
                assert!(
                    a.get_short().is_none() && a.get_all_aliases().is_none(),
                    "the lean parse only recognises a global option by its long name"
                );
                let env = a.get_env().map(|v| v.to_string_lossy().into_owned());
                (a.get_id().to_string(), a.get_long().map(String::from), env)
            })
            .collect();
        let table: Vec<(String, Option<String>, Option<String>)> = GLOBAL_OPTIONS
            .iter()
            .map(|o| (o.id.into(), Some(o.long.into()), o.env.map(String::from)))
            .collect();
        assert_eq!(
            table, derived,
            "GLOBAL_OPTIONS must list Global's options, in order"
        );
    }

    /// The agreement test again, in child processes with `SESSIOND_CONTEXT` set (empty, which
    /// clap takes as a value, and not): every tree built reads it, so setting it in this
    /// process would race with the other tests.
    #[test]
    fn the_lean_parse_agrees_with_the_whole_tree_with_a_context_in_the_environment() {
        for value in ["", "nvim"] {
            let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "cli::tests::the_lean_parse_agrees_with_the_whole_tree",
                ])
                .env(CONTEXT_ENV, value)
                .output()
                .expect("run the test binary");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "with {CONTEXT_ENV}={value:?}:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn argv(line: &str) -> Vec<OsString> {
        std::iter::once("sessionctl")
            .chain(line.split(' ').filter(|w| !w.is_empty()))
            .map(OsString::from)
            .collect()
    }

    /// Whenever the lean parse answers, it answers as the whole tree does; and the commands
    /// people run all day do take the lean path.
    #[test]
    fn the_lean_parse_agrees_with_the_whole_tree() {
        let fast = [
            "ping",
            "--json list",
            "list --json --all",
            "switch abcd",
            "switch abcd --json --context nvim",
            "--context nvim switch abcd",
            "--timeout 2.5 current",
            "--timeout=3 list --state=running",
            "--context list list",
            "send abcd hello -f",
            "send - --no-queue",
            "steer abcd now --no-interrupt --wait",
            "run abcd --wait -- claude --resume --json",
            "log --last 3 -f",
            "cancel 1a2b",
            "daemon status --json",
            "daemon log-level debug",
            "new --provider claude --name fix-login --json",
            "rename abcd new-name",
            "watch --event session_switched --event session_created",
            "show",
            "--no-autostart --runtime-dir /r --state-dir=/s --config /c switch abcd",
            "switch abcd --runtime-dir=/r --no-autostart --timeout=0.5",
            "--json current --context=nvim",
            "run abcd -- claude --json --timeout",
            "rename abcd -- --config",
            "send abcd -- --context",
            "--context a switch abcd --context b",
            "daemon --timeout 1 log-level --json debug",
        ];
        let slow = [
            "",
            "--help",
            "-h",
            "-V",
            "--version",
            "help",
            "help switch",
            "switch --help",
            "switch -h",
            "daemon",
            "daemon --help",
            "swich abcd",
            "switch",
            "switch a b",
            "switch --bogus abcd",
            "--context ping switch abcd",
            "--timeout 0 ping",
            "--context",
            "send",
            "send a b c",
            "run abcd",
            "list --state",
            "log --last x",
            "log --last 0",
            "-- switch abcd",
            "--jsonx list",
            "--js list",
            "list --no-autostart=1",
            "--timeout ping",
            "--timeout 1e-10 ping",
            "switch abcd --json --json",
        ];
        for line in fast.iter().chain(&slow) {
            let args = argv(line);
            let whole = Cli::try_parse_from(&args);
            let lean = lean_parse(&args);
            if let Some(lean) = &lean {
                let whole = whole
                    .as_ref()
                    .expect("the lean parse accepted what the tree refuses");
                assert_eq!(format!("{lean:?}"), format!("{whole:?}"), "{line:?}");
            }
            assert_eq!(
                lean.is_some(),
                fast.contains(line),
                "{line:?} took the wrong path"
            );
        }
    }
}
