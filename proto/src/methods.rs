//! Methods: each one a type naming its wire name, its params and its result.
//!
//! The client calls `client.call::<Status>(StatusParams {})` and gets a `StatusResult`; the
//! daemon routes on [`Method::NAME`] and decodes [`Method::Params`]. Both sides share these
//! definitions, so a field added here is added for both at once.
//!
//! Rules every params and result type follows, so that adding a field never breaks an older
//! peer: fields are named (maps on the wire), a field that may be absent is an `Option` or has
//! a `#[serde(default)]`, and `None` is omitted rather than sent as nil.

use std::fmt::Debug;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::version::ProtocolVersion;

/// A method of the protocol.
pub trait Method {
    /// The wire name, in snake_case.
    const NAME: &'static str;
    type Params: Serialize + DeserializeOwned + Debug + Clone + PartialEq + Send + 'static;
    type Result: Serialize + DeserializeOwned + Debug + Clone + PartialEq + Send + 'static;
}

macro_rules! method {
    ($(#[$doc:meta])* $name:ident = $wire:literal, $params:ty => $result:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub enum $name {}

        impl Method for $name {
            const NAME: &'static str = $wire;
            type Params = $params;
            type Result = $result;
        }
    };
}

method!(
    /// Liveness check; answers at once with no side effect.
    Ping = "ping", PingParams => Pong
);
method!(
    /// The daemon's version, pid, uptime, paths and load.
    Status = "status", StatusParams => StatusResult
);
method!(
    /// Changes the daemon's log filter at runtime (not persisted).
    SetLogLevel = "set_log_level", SetLogLevelParams => SetLogLevelResult
);
method!(
    /// Asks the daemon to shut down gracefully: it answers, stops accepting connections,
    /// finishes requests in flight, removes its socket and pid file, and exits 0.
    Shutdown = "shutdown", ShutdownParams => ShutdownResult
);

/// Params of `ping`: none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingParams {}

/// Result of `ping`: an empty map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {}

/// Params of `status`: none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusParams {}

/// Result of `status`. Paths are absolute and sent as strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResult {
    /// The daemon's program version.
    pub version: String,
    /// The protocol version it speaks.
    pub protocol: ProtocolVersion,
    pub pid: u32,
    /// When the daemon started, in milliseconds since the Unix epoch.
    pub started_at: u64,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    pub socket: String,
    pub runtime_dir: String,
    pub state_dir: String,
    /// The configuration file that was read, or would be read if it existed.
    pub config: String,
    /// Where the daemon's log goes when detached; absent when it logs to its own stderr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
    /// The current log filter, e.g. `"info"`.
    pub log_level: String,
    /// Client connections open right now, this one included.
    pub connections: u32,
    /// The most connections the daemon accepts at once.
    pub max_connections: u32,
    /// The largest frame the daemon accepts, in bytes.
    pub max_frame_bytes: u64,
    /// Sessions in the registry, archived ones included.
    #[serde(default)]
    pub sessions: u64,
    /// Event subscriptions open on all connections.
    #[serde(default)]
    pub subscriptions: u64,
    /// The database file.
    #[serde(default)]
    pub database: String,
    /// Set once a commit has failed: why. The daemon then refuses changes until restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_error: Option<String>,
    /// The service manager running the daemon (`"systemd"`), if one does: stop and restart it
    /// through that, or the manager loses it (and, with `Restart=on-failure`, leaves it down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<String>,
}

/// Params of `set_log_level`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLogLevelParams {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a comma-separated list of
    /// `target=level` directives with an optional bare default level, e.g.
    /// `"sessiond::conn=debug,info"`.
    pub level: String,
}

/// Result of `set_log_level`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetLogLevelResult {
    /// The filter in force before.
    pub previous: String,
    /// The filter in force now.
    pub level: String,
}

/// Params of `shutdown`: none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownParams {}

/// Result of `shutdown`, sent before the daemon starts closing connections.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownResult {
    /// The pid of the daemon that is shutting down, so a client can wait for it to exit.
    pub pid: u32,
    /// How long the daemon will wait for requests in flight, and for running turns to end,
    /// before exiting anyway, in ms: how long a client should be prepared to wait for it to be
    /// gone.
    #[serde(default)]
    pub grace_ms: u64,
    /// Turns whose workers ran when it was asked: the shutdown ends them (they settle
    /// `interrupted`, and their queues are held). Absent when none ran.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub running_turns: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

// ---- Sessions -------------------------------------------------------------------------------
//
// Selecting a session (`session` in the params below) accepts, in this order of precedence: a
// full id; a name; a provider's session id (current or earlier); a unique id prefix of at least
// four hex digits. A name or provider id that matches several sessions, or a prefix that does,
// is an `ambiguous` error listing them; `project` narrows a name, provider id or prefix to one
// project, and a session found without it (a full id, the current one) must be in it. An
// omitted `session` means the current session of `context` (default: "default").

method!(
    /// Creates a session. It is visible to listings and subscribers at once, as `provisional`.
    Create = "create", CreateParams => SessionInfo
);
method!(
    /// Lists sessions, most recently active first.
    List = "list", ListParams => ListResult
);
method!(
    /// One session, with its owner.
    Get = "get", SessionParams => SessionInfo
);
method!(
    /// Makes a session the context's current one (reopening it if archived).
    Switch = "switch", SessionParams => SwitchResult
);
method!(
    /// The context's current session and generation.
    Current = "current", ContextParams => SwitchResult
);
method!(
    /// Renames a session.
    Rename = "rename", RenameParams => SessionInfo
);
method!(
    /// Archives (closes) a session.
    Archive = "archive", SessionParams => SessionInfo
);
method!(
    /// Reopens an archived session.
    Reopen = "reopen", SessionParams => SessionInfo
);
method!(
    /// Creates a fresh session in the same project and provider, with `parent_id` set to the
    /// old one, and switches the context to it.
    Regenerate = "regenerate", SessionParams => SwitchResult
);
method!(
    /// Starts pushing events matching a filter on this connection. A filter value no event
    /// can carry (an unknown session, provider or kind, a project that is neither a directory
    /// nor any session's) is refused rather than matching nothing for ever.
    Subscribe = "subscribe", SubscribeParams => SubscribeResult
);
method!(
    /// Stops a subscription.
    Unsubscribe = "unsubscribe", UnsubscribeParams => UnsubscribeResult
);

use crate::session::{EventFilter, SessionId, SessionInfo};

/// Params of `create`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateParams {
    /// Project root: an existing directory; canonicalized by the daemon.
    pub project: String,
    /// A configured provider name (built in: shell, claude, codex, gemini).
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Working directory; defaults to the project root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Params of `list`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// A phase or activity name (`bound`, `running`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only sessions with exactly this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Include archived sessions (hidden by default).
    #[serde(default)]
    pub all: bool,
    /// The context whose current session the answer names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// Result of `list`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResult {
    pub sessions: Vec<SessionInfo>,
    /// The context's current session, if any (whether or not it is in this listing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<SessionId>,
}

/// Params naming one session (see the selection rules above).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// Params naming a context.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// Params of `rename`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenameParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    pub name: String,
}

/// A context's pointer: result of `switch`, `current` and `regenerate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchResult {
    pub context: String,
    /// Absent when the context points at nothing yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Incremented by every switch of this context; reads made for a switch carry it so a
    /// client can drop an answer that belongs to an older switch.
    pub generation: u64,
    /// Set by a `switch` that had to reopen the session first (it was archived). Absent
    /// otherwise, and from daemons older than this field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reopened: bool,
}

/// Params of `subscribe`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeParams {
    #[serde(default)]
    pub filter: EventFilter,
}

/// Result of `subscribe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeResult {
    /// Tags this subscription's events (`subscription` in each event frame); equal to the
    /// request's id.
    pub subscription: u64,
    /// The `seq` of the most recent event before this subscription began: events with a
    /// larger `seq` are delivered.
    pub seq: u64,
}

/// Params of `unsubscribe`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeParams {
    pub subscription: u64,
}

/// Result of `unsubscribe`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeResult {}

// ---- Turns ----------------------------------------------------------------------------------

method!(
    /// Submits a prompt to a session: it starts at once if the session is free, else it is
    /// queued (or refused, with `no_queue`).
    Submit = "submit", SubmitParams => SubmitResult
);
method!(
    /// The session's running turn and its queue.
    Queue = "queue", SessionParams => QueueResult
);

use crate::session::TurnInfo;

/// The largest prompt `submit` and `steer` accept, in bytes. A client can refuse a larger one
/// before sending it (the daemon refuses it with `invalid_argument` too).
pub const MAX_PROMPT_BYTES: usize = 1024 * 1024;

/// The refusal of a prompt over [`MAX_PROMPT_BYTES`], `size` bytes long, worded alike by the
/// daemon and by a client that refuses it first.
pub fn prompt_too_long(size: &str) -> String {
    format!(
        "the prompt is {size} bytes; the limit is {MAX_PROMPT_BYTES} bytes. Put long material in \
         a file and refer to it"
    )
}

/// What a turn or a `sessionctl run` in a session whose working directory `cwd` is gone says.
pub fn missing_cwd(cwd: &str) -> String {
    format!(
        "the session's working directory {cwd} no longer exists; recreate it, or start a new \
         session"
    )
}

/// Params of `submit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// What to run: given to the provider as `{prompt}` or on its stdin.
    pub prompt: String,
    /// Refuse (`busy`) rather than queue when the session is busy; nothing is stored.
    #[serde(default)]
    pub no_queue: bool,
}

/// Result of `submit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResult {
    /// True when the turn started at once; false when it was queued (its `position` says
    /// where).
    pub accepted: bool,
    pub turn: TurnInfo,
    /// Why the session's queue is held, when it is: the turn waits until `resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// The pid a client attached the session to (`sessionctl run`), when one did: the turn
    /// waits until it detaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<u32>,
}

/// Result of `queue`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueResult {
    pub session: SessionId,
    /// Why the queue is held, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<TurnInfo>,
    /// In the order they will run.
    pub queued: Vec<TurnInfo>,
    /// The pid a client attached the session to (`sessionctl run`), when one did: nothing
    /// starts until it detaches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<u32>,
}

method!(
    /// Holds a session's queue: the running turn finishes, queued ones wait.
    Pause = "pause", SessionParams => QueueResult
);
method!(
    /// Releases a held queue; the next queued turn starts if none is running.
    Resume = "resume", SessionParams => QueueResult
);
method!(
    /// Removes a queued turn, or aborts the running one (SIGINT to its process group, then
    /// SIGTERM, then SIGKILL). An aborted turn pauses its session's queue.
    Cancel = "cancel", TurnParams => TurnInfo
);

/// Params naming one turn: its full id or a unique prefix of at least 4 hex digits, among the
/// turns not yet settled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnParams {
    pub turn: String,
}

method!(
    /// Submits a prompt that runs next: by default it interrupts the running turn (which
    /// settles `interrupted`), with `no_interrupt` it only goes to the head of the queue.
    Steer = "steer", SteerParams => SubmitResult
);
method!(
    /// Moves a queued turn to the head of its queue, without interrupting anything.
    Promote = "promote", TurnParams => TurnInfo
);

/// Params of `steer`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SteerParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    pub prompt: String,
    /// Do not interrupt the running turn; only go to the head of the queue.
    #[serde(default)]
    pub no_interrupt: bool,
}

method!(
    /// A session's transcript: its turns, oldest first, each with its prompt and output.
    Log = "log", LogParams => LogResult
);

/// Params of `log`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Only the turns whose id starts with these hex digits (dashes and case ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<String>,
    /// Only the last N turns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<u32>,
    /// Answer with about this many bytes of prompts and output at most (always at least one
    /// chunk), and say in `next` where the rest begins. Without it the whole selection comes
    /// in one answer, which a client may be unable to take: see [`LogResult::next`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Where to go on from: the `next` of the previous answer. The selection is then the
    /// turns from that one on (still narrowed by `turn`; `last` no longer applies), the first
    /// of them from that chunk of its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<LogCursor>,
}

/// A place in a transcript: a turn, and the first chunk of its output still to come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    pub turn: crate::session::TurnId,
    pub chunk: u64,
}

/// Result of `log`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogResult {
    pub session: SessionId,
    /// When the session was the context's current one (no `session` given): the context's
    /// generation at the time, so a client can drop a transcript meant for an older switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    pub turns: Vec<LogTurn>,
    /// When `max_bytes` cut the answer short: ask again with this as `from` (and the same
    /// session, by id) for the rest. Absent when the transcript is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<LogCursor>,
}

/// One turn of a transcript.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogTurn {
    pub turn: TurnInfo,
    /// In the order it was produced.
    pub output: Vec<OutputChunk>,
}

/// One chunk of a turn's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub chunk: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The text (invalid UTF-8 replaced).
    pub data: String,
}

method!(
    /// Marks a session `attached` to a process of the client's (`sessionctl run`): turns
    /// submitted meanwhile are queued. Bound to the connection: it ends with `detach`, or when
    /// the connection closes. `busy` while a turn runs or another process is attached.
    Attach = "attach", AttachParams => SessionInfo
);
method!(
    /// Ends this connection's attachment; the next queued turn starts.
    Detach = "detach", SessionParams => SessionInfo
);

/// Params of `attach`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// The process that will own the session (it takes the session's lock itself).
    pub pid: u32,
}
