//! Sessions on the wire: identity, states, the record clients see, and the events about them.
//!
//! A session's identity is its daemon-assigned UUID (always a hyphenated string on the wire);
//! its *scope* is the triple (project, provider, id), shown as `project::provider::id`. The
//! provider's own id for the session (`provider_session_id`) is an alias: routing always uses
//! the daemon's id.

use serde::{Deserialize, Serialize};

/// The daemon's id for a session: a UUID, sent as a lowercase hyphenated string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub uuid::Uuid);

impl SessionId {
    pub fn new_v4() -> Self {
        Self(uuid::Uuid::new_v4())
    }
    /// The id as a 128-bit integer (its hex digits in order), for ordered indexes.
    pub fn as_u128(&self) -> u128 {
        self.0.as_u128()
    }
    pub fn from_u128(n: u128) -> Self {
        Self(uuid::Uuid::from_u128(n))
    }
    /// The first 8 hex digits, as people read it in tables.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for SessionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(SessionId)
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = uuid::Uuid::encode_buffer();
        s.serialize_str(self.0.hyphenated().encode_lower(&mut buf))
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(|_| {
            serde::de::Error::custom(format_args!(
                "{text:?} is not a session id (a hyphenated UUID)"
            ))
        })
    }
}

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Created; the provider has not yet reported its own id for it.
    Provisional,
    /// The provider's own session id is known.
    Bound,
    /// Closed by the user; hidden from listings unless asked for; reopened by a switch.
    Archived,
    /// The provider failed it beyond recovery.
    Failed,
}

/// What a session is doing right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    Idle,
    Starting,
    Running,
    /// The provider asks for approval or input.
    WaitingInput,
    Stopping,
    /// The turn queue is held.
    Paused,
    /// An external process (`sessionctl run`) owns the session.
    Attached,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Provisional,
        Phase::Bound,
        Phase::Archived,
        Phase::Failed,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Provisional => "provisional",
            Phase::Bound => "bound",
            Phase::Archived => "archived",
            Phase::Failed => "failed",
        }
    }
}

impl Activity {
    pub const ALL: [Activity; 7] = [
        Activity::Idle,
        Activity::Starting,
        Activity::Running,
        Activity::WaitingInput,
        Activity::Stopping,
        Activity::Paused,
        Activity::Attached,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Starting => "starting",
            Activity::Running => "running",
            Activity::WaitingInput => "waiting_input",
            Activity::Stopping => "stopping",
            Activity::Paused => "paused",
            Activity::Attached => "attached",
        }
    }
}

/// A session as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub id: SessionId,
    /// `project::provider::id`.
    pub scope: String,
    pub provider: String,
    /// Canonical absolute project root; stable for the session's life.
    pub project: String,
    /// Working directory of the session's work (may differ from the project root).
    pub cwd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub phase: Phase,
    pub activity: Activity,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    pub last_active_at: u64,
    /// The session this one was regenerated or forked from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<SessionId>,
    /// The provider's own id for this session, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_session_id: Option<String>,
    /// Earlier provider ids (after a /clear or compaction), oldest first; all still resolve.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Turns waiting to run.
    #[serde(default)]
    pub queue_length: u32,
    /// Who owns the session's lock right now; only in `get` answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// The process owning a session (from its lock and pid files).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Free text: "daemon worker", "sessionctl run".
    #[serde(default)]
    pub owner: String,
    /// When it took the session, ms since the epoch.
    #[serde(default)]
    pub since: u64,
    /// False when the files were left by a process that is gone (or whose pid was reused);
    /// `stale_reason` says which.
    pub live: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_reason: Option<String>,
}

/// Which events a subscription receives. Every non-empty list must contain the event's value;
/// empty lists match everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Session ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sessions: Vec<SessionId>,
    /// Project roots (canonical absolute paths).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub projects: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// Event kinds, e.g. `session_created`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
}

/// Event kinds about sessions.
pub mod event_kind {
    pub const SESSION_CREATED: &str = "session_created";
    pub const SESSION_STATE_CHANGED: &str = "session_state_changed";
    pub const SESSION_SWITCHED: &str = "session_switched";
    pub const SESSION_RENAMED: &str = "session_renamed";
    pub const SESSION_ARCHIVED: &str = "session_archived";
    pub const SESSION_REOPENED: &str = "session_reopened";
    pub const SESSION_REBOUND: &str = "session_rebound";
    /// A submitted turn started at once (the session was free).
    pub const SESSION_ACCEPTED: &str = "session_accepted";
    pub const TURN_QUEUED: &str = "turn_queued";
    pub const TURN_STARTED: &str = "turn_started";
    pub const TURN_OUTPUT: &str = "turn_output";
    pub const TURN_SETTLED: &str = "turn_settled";
    /// A queued turn moved to the head of its queue.
    pub const TURN_PROMOTED: &str = "turn_promoted";
    /// The provider asks the user for input or approval.
    pub const SESSION_WAITING_INPUT: &str = "session_waiting_input";
    /// The session's queue is held (`reason` says why); queued turns wait.
    pub const QUEUE_PAUSED: &str = "queue_paused";
    pub const QUEUE_RESUMED: &str = "queue_resumed";
    /// Not about a session: the subscriber fell behind.
    pub const LAGGED: &str = "lagged";
    pub const ALL: &[&str] = &[
        SESSION_CREATED,
        SESSION_STATE_CHANGED,
        SESSION_SWITCHED,
        SESSION_RENAMED,
        SESSION_ARCHIVED,
        SESSION_REOPENED,
        SESSION_REBOUND,
        SESSION_ACCEPTED,
        TURN_QUEUED,
        TURN_STARTED,
        TURN_OUTPUT,
        TURN_SETTLED,
        TURN_PROMOTED,
        SESSION_WAITING_INPUT,
        QUEUE_PAUSED,
        QUEUE_RESUMED,
        LAGGED,
    ];
}

impl SessionEvent {
    /// An event about `session` carrying only its scope; the kind's fields are set after.
    pub fn scope(session: SessionId, project: &str, provider: &str) -> Self {
        SessionEvent {
            session,
            project: project.to_string(),
            provider: provider.to_string(),
            info: None,
            field: None,
            from: None,
            to: None,
            reason: None,
            context: None,
            generation: None,
            turn: None,
            position: None,
            status: None,
            exit_code: None,
            stream: None,
            chunk: None,
            data: None,
        }
    }
}

/// Data of every session event: the session's scope, plus fields of the kind. Fields a kind
/// does not use are omitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub session: SessionId,
    pub project: String,
    pub provider: String,
    /// `session_created`: the whole new session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<SessionInfo>,
    /// `session_state_changed`: `phase` or `activity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `session_state_changed`, `session_renamed`, `session_rebound`: the old value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The new value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why, in words: "archived by a client", "reopened by a switch".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `session_switched`: the context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// `session_switched`: the context's new generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Turn events: the turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<TurnId>,
    /// `turn_queued`: its place in the queue (1-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// `turn_settled`: how it ended; `turn_output`: `stdout` or `stderr` is in `stream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TurnStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `turn_output`: which stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// `turn_output`: the chunk's number within the turn, from 0, with no gaps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u64>,
    /// `turn_output`: the text (invalid UTF-8 replaced; the stored transcript keeps bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// The daemon's id for a turn: a UUID, sent as a lowercase hyphenated string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TurnId(pub uuid::Uuid);

impl TurnId {
    pub fn new_v4() -> Self {
        Self(uuid::Uuid::new_v4())
    }
    /// The first 8 hex digits.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }
}

impl std::fmt::Display for TurnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl std::str::FromStr for TurnId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(TurnId)
    }
}

impl Serialize for TurnId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SessionId(self.0).serialize(s)
    }
}

impl<'de> Deserialize<'de> for TurnId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        SessionId::deserialize(d).map(|id| TurnId(id.0))
    }
}

/// How a turn was submitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnKind {
    Normal,
    /// Runs next, ahead of the queue.
    Steer,
}

/// Where a turn is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    Queued,
    Running,
    /// The process exited 0.
    Completed,
    /// The process exited non-zero, could not start, or timed out.
    Failed,
    /// Removed from the queue, or aborted while running, by a client.
    Cancelled,
    /// Stopped by a steer, or found running when the daemon restarted.
    Interrupted,
}

impl TurnStatus {
    pub const ALL: [TurnStatus; 6] = [
        TurnStatus::Queued,
        TurnStatus::Running,
        TurnStatus::Completed,
        TurnStatus::Failed,
        TurnStatus::Cancelled,
        TurnStatus::Interrupted,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            TurnStatus::Queued => "queued",
            TurnStatus::Running => "running",
            TurnStatus::Completed => "completed",
            TurnStatus::Failed => "failed",
            TurnStatus::Cancelled => "cancelled",
            TurnStatus::Interrupted => "interrupted",
        }
    }
    /// Whether the turn is over.
    pub fn settled(self) -> bool {
        !matches!(self, TurnStatus::Queued | TurnStatus::Running)
    }
}

/// A turn as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnInfo {
    pub turn_id: TurnId,
    pub session: SessionId,
    pub prompt: String,
    pub kind: TurnKind,
    pub status: TurnStatus,
    /// 1-based place in the queue while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed or was stopped, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
