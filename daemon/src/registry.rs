//! The registry: every session and context, and the only code that changes them.
//!
//! Each change runs in one short critical section: validate (bad input changes nothing),
//! apply in memory, publish its events (so subscribers see a new session before its creator
//! gets the answer), and queue the row writes. The caller then awaits the returned
//! [`Commit`] *outside* the lock and acknowledges only once it is durable. Reads (`list`,
//! `get`, `current`) are served from memory and never touch the database.
//!
//! Lookups by id prefix use the UUIDs as 128-bit integers in a sorted set: a hex prefix of k
//! digits is exactly the integer range [p·2^(128−4k), (p+1)·2^(128−4k)), so a prefix lookup is
//! one range scan with no per-session strings.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use sessiond_proto::methods::{
    CreateParams, ListParams, RenameParams, SessionParams, SwitchResult,
};
use sessiond_proto::session::{
    event_kind, Activity, EventFilter, Phase, SessionEvent, SessionId, SessionInfo,
};
use sessiond_proto::ErrorCode;

use crate::dispatch::RequestError;
use crate::events::EventBus;
use crate::listing::Listing;
use crate::provider::ProviderConfig;
use crate::session::Session;
use crate::store::{Commit, Committer, ContextRow, Loaded, Store, Write};
use crate::turn::{Stop, Turn};
use sessiond_proto::methods::{AttachParams, QueueResult, SteerParams, SubmitParams, SubmitResult};
use sessiond_proto::session::{TurnId, TurnKind, TurnStatus};
use std::collections::VecDeque;

/// The context used when a client names none.
pub const DEFAULT_CONTEXT: &str = "default";
/// Longest session name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest context name, in bytes.
pub const MAX_CONTEXT_LEN: usize = 64;
/// Shortest id prefix accepted, in hex digits: shorter ones match too much to be useful.
pub const MIN_PREFIX: usize = 4;
/// Candidates listed in an `ambiguous` error.
const MAX_CANDIDATES: usize = 10;
/// Added to every context's generation when the daemon starts. A switch's generation is seen
/// (in its event and by `current`) a moment before it is committed; after a crash the stored
/// number may be lower than one a client saw, or a new context may have no row at all.
/// Starting each run far above the stored value, and new contexts at `starts × step`, keeps
/// generations strictly increasing for every client across restarts.
pub const GENERATION_RESTART_STEP: u64 = 1 << 20;

pub use sessiond_proto::methods::MAX_PROMPT_BYTES;

/// One session's turns in flight.
#[derive(Default)]
struct SessionQueue {
    running: Option<TurnId>,
    queued: VecDeque<TurnId>,
    /// Why the queue is held; queued turns wait while it is.
    paused: Option<String>,
}

/// What the runner needs to start a turn's process, taken from the registry at the moment the
/// turn starts.
#[derive(Clone, Debug)]
pub struct StartOrder {
    pub turn: TurnId,
    pub session: SessionId,
    pub provider: Arc<str>,
    pub project: Arc<str>,
    pub cwd: String,
    pub prompt: String,
    pub provider_session_id: Option<String>,
}

/// What became of a turn the runner offered to a steer ([`Registry::yield_to_steer`]).
pub enum Yielded {
    /// It was not steered past: start it (or stop it) as usual.
    No,
    /// It went back to its queue; start this one (the steer) in its slot, if there is one.
    To(Option<StartOrder>),
    /// It went back to its queue, and the daemon is stopping: nothing starts.
    Held,
}

/// A session's place in a listing as two integers: most recently active first, then newest
/// (both times inverted), then by id (its 128 bits in the byte order `Uuid`'s own ordering
/// uses). Comparing two `u128`s is a few instructions; the tuple of times and a 16-byte array
/// it replaced made the sort a fifth of a 10,000-session `list`.
type ListKey = (u128, u128);

fn list_key(s: &Session) -> ListKey {
    let times = ((u64::MAX - s.last_active_at) as u128) << 64 | (u64::MAX - s.created_at) as u128;
    (times, s.id.0.as_u128())
}

/// All sessions and contexts.
pub struct Registry {
    sessions: HashMap<SessionId, Session>,
    /// Every id as an integer, sorted, for prefix lookups.
    ids: BTreeSet<u128>,
    /// Sessions by name (names are unique per project, not across projects).
    by_name: HashMap<String, Vec<SessionId>>,
    /// Sessions by provider session id, current and earlier.
    by_provider_id: HashMap<String, Vec<SessionId>>,
    contexts: HashMap<String, ContextRow>,
    /// One shared string per project and provider.
    interned: HashMap<String, Arc<str>>,
    /// Where a context first switched in this run starts counting (see `new`).
    generation_floor: u64,
    /// The configured providers, for checking names and whether a prompt can reach them.
    providers: BTreeMap<String, ProviderConfig>,
    /// Sessions attached to a client's process: session → (connection, pid).
    attached: HashMap<SessionId, (u64, u32)>,
    /// Turns not yet settled, and each session's running turn and queue.
    turns: HashMap<TurnId, Turn>,
    queues: HashMap<SessionId, SessionQueue>,
    /// The next queue order number to hand out (above every stored one).
    next_order: i64,
    /// Set when the daemon begins to stop: no turn starts from then on.
    stopping: bool,
    store: Store,
    pub events: EventBus,
}

/// The pause reason of a queue whose running turn a graceful stop ended.
const DAEMON_STOPPED: &str = "daemon_stopped";

fn invalid(message: impl Into<String>) -> RequestError {
    RequestError::new(ErrorCode::INVALID_ARGUMENT, message)
}

fn not_found(message: impl Into<String>) -> RequestError {
    RequestError::new(ErrorCode::NOT_FOUND, message)
}

fn invalid_state(message: impl Into<String>) -> RequestError {
    RequestError::new(ErrorCode::INVALID_STATE, message)
}

/// What a cancel did.
pub struct Cancelled {
    /// The turn, as the answer shows it.
    pub turn: sessiond_proto::session::TurnInfo,
    /// Resolves once the change is saved.
    pub saved: Commit,
    /// A running worker the caller must stop (the turn settles when it exits).
    pub worker: Option<u32>,
    /// The turn that takes the cancelled one's place, when it had not started.
    pub next: Option<StartOrder>,
}

/// A turn selector's hex digits, lower-cased and without dashes: the form turn ids are
/// matched in by prefix, so a prefix may be copied from the hyphenated id or the plain one.
/// `None` when it holds anything but hex digits and dashes, or no digit at all.
pub fn turn_digits(selector: &str) -> Option<String> {
    let hex: String = selector
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (!hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())).then_some(hex)
}

/// The event data every session event starts from: its scope.
fn scope_event(s: &Session) -> SessionEvent {
    SessionEvent::scope(s.id, &s.project, &s.provider)
}

/// Checks a context name; `None` means the default.
pub fn context_name(name: Option<&str>) -> Result<String, RequestError> {
    let name = name.unwrap_or(DEFAULT_CONTEXT);
    let valid = !name.is_empty()
        && name.len() <= MAX_CONTEXT_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if valid {
        Ok(name.to_string())
    } else {
        Err(invalid(format!(
            "context name {name:?} is invalid: use 1 to {MAX_CONTEXT_LEN} letters, digits, \
             '.', '_', '-' or ':'"
        )))
    }
}

/// Checks a session name.
fn check_name(name: &str) -> Result<(), RequestError> {
    if name.trim().is_empty() {
        return Err(invalid(
            "a session name cannot be empty or only spaces; give a name, or omit it",
        ));
    }
    if name.trim() != name {
        return Err(invalid(format!(
            "session name {name:?} starts or ends with spaces, which lookups would not \
             match; remove them"
        )));
    }
    let chars = name.chars().count();
    if chars > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "session name is {chars} characters long; the limit is {MAX_NAME_CHARS}"
        )));
    }
    if let Some(c) = name.chars().find(|&c| unprintable_in_names(c)) {
        return Err(invalid(format!(
            "a session name cannot contain control characters (newlines, tabs, NUL), line or \
             paragraph separators, text-direction controls or invisible characters (found \
             U+{:04X}); they would break a listing or disguise the name",
            c as u32
        )));
    }
    Ok(())
}

/// Characters a name may not hold: controls (newline, tab, NUL, C1), Unicode line and
/// paragraph separators, the bidirectional overrides, embeddings and isolates that can make
/// a name display as something else in a terminal, and invisible characters (zero-width
/// space and joiners, word joiner, BOM, soft hyphen) that make two names look alike.
fn unprintable_in_names(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' // line, paragraph separator
                | '\u{200E}' | '\u{200F}' | '\u{061C}' // direction marks
                | '\u{202A}'..='\u{202E}' // embeddings and overrides
                | '\u{2066}'..='\u{2069}' // isolates
                | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}' | '\u{00AD}' // invisible
        )
}

/// Resolves a directory argument to its canonical absolute path.
fn canonical_dir(path: &str, what: &str) -> Result<String, RequestError> {
    if path.is_empty() {
        return Err(invalid(format!("the {what} path is empty")));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(invalid(format!(
            "the {what} path {path:?} is relative; send an absolute path"
        )));
    }
    let canonical = std::fs::canonicalize(p).map_err(|e| {
        invalid(format!(
            "the {what} {path} cannot be used: {e}; check that it exists"
        ))
    })?;
    if !canonical.is_dir() {
        return Err(invalid(format!(
            "the {what} {} is not a directory",
            canonical.display()
        )));
    }
    canonical.into_os_string().into_string().map_err(|p| {
        invalid(format!(
            "the {what} {} is not valid UTF-8, which the protocol cannot carry",
            p.to_string_lossy()
        ))
    })
}

/// The project a client means by `raw`, as sessions store it: its canonical path, or, when it
/// cannot be resolved (a deleted directory, whose sessions keep the path they were made
/// with), the path as written less any trailing slash, with why it could not be resolved.
pub fn project_as_meant(raw: &str) -> Result<String, (String, String)> {
    canonical_dir(raw, "project").map_err(|e| {
        let trimmed = raw.trim_end_matches('/');
        let lexical = if trimmed.is_empty() { raw } else { trimmed };
        (lexical.to_string(), e.message)
    })
}

impl Registry {
    /// Builds the registry from what the store loaded. `is_owned` says whether a process holds
    /// a session's lock now (a session left `attached` by a client that is gone is idle).
    /// Moves every context's generation past anything the previous run may have shown, and
    /// waits until that is saved.
    pub fn new(
        store: Store,
        loaded: Loaded,
        providers: BTreeMap<String, ProviderConfig>,
        is_owned: impl Fn(SessionId) -> bool,
    ) -> Result<Registry, String> {
        let mut registry = Registry {
            sessions: HashMap::with_capacity(loaded.sessions.len()),
            ids: BTreeSet::new(),
            by_name: HashMap::new(),
            by_provider_id: HashMap::new(),
            contexts: loaded
                .contexts
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
            interned: HashMap::new(),
            providers,
            attached: HashMap::new(),
            turns: HashMap::new(),
            queues: HashMap::new(),
            next_order: 1,
            stopping: false,
            generation_floor: 0,
            store,
            events: EventBus::default(),
        };
        for mut session in loaded.sessions {
            // A turn cannot be in progress in a daemon that just started; until turns exist,
            // a transient activity left by a crash falls back to idle (paused is kept), and so
            // does `attached` when no process holds the session any more.
            let transient = matches!(
                session.activity,
                Activity::Starting
                    | Activity::Running
                    | Activity::WaitingInput
                    | Activity::Stopping
            );
            // No connection of this daemon attached it, so none could ever detach it: clear
            // it. A process of a `run` that still holds the lock keeps it; a turn that finds
            // it so is put back and the queue paused, naming the owner.
            let attached = session.activity == Activity::Attached;
            let _ = &is_owned;
            if transient || attached {
                session.activity = Activity::Idle;
            }
            session.project = registry.intern(&session.project);
            session.provider = registry.intern(&session.provider);
            registry.index(&session);
            registry.sessions.insert(session.id, session);
        }
        // Unsettled turns come back in queue order: queued ones into their queues, running
        // ones as they were, for settlement before anything else runs.
        for turn in loaded.unsettled {
            if !registry.sessions.contains_key(&turn.session) {
                continue;
            }
            registry.next_order = registry.next_order.max(turn.order + 1);
            let queue = registry.queues.entry(turn.session).or_default();
            match turn.status {
                TurnStatus::Running => queue.running = Some(turn.id),
                _ => queue.queued.push_back(turn.id),
            }
            registry.turns.insert(turn.id, turn);
        }
        for (id, queue) in registry.queues.iter_mut() {
            if let Some(session) = registry.sessions.get_mut(id) {
                session.queue_length = queue.queued.len() as u32;
            }
            // Turns waiting with nothing running and nothing holding them would otherwise
            // never start: hold them for a `resume`, like those behind an interrupted turn.
            if queue.running.is_none() && queue.paused.is_none() && !queue.queued.is_empty() {
                queue.paused = Some("daemon_restarted".into());
            }
        }
        let paused: Vec<SessionId> = registry
            .sessions
            .values()
            .filter(|s| s.activity == Activity::Paused)
            .map(|s| s.id)
            .collect();
        for id in paused {
            registry.queues.entry(id).or_default().paused =
                Some("paused before the daemon restarted".into());
        }
        // This run's generations start above any the previous runs may have shown, saved or
        // not: a stored context moves up by a step, and a context first switched in this run
        // starts at a floor that grows with every start (a previous run's new context may
        // have shown its first generations and died before saving its row).
        // The first run on a fresh database starts at 0, so its first switch is generation 1.
        registry.generation_floor = loaded.starts.saturating_mul(GENERATION_RESTART_STEP);
        let starts = loaded.starts + 1;
        let floor = registry.generation_floor;
        let mut writes = vec![Write::Meta {
            key: crate::store::META_STARTS,
            value: starts,
        }];
        writes.extend(registry.contexts.values_mut().map(|c| {
            c.generation = (c.generation + GENERATION_RESTART_STEP).max(floor);
            Write::Context(c.clone())
        }));
        match registry.store.write(writes).blocking_recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("the store stopped during start-up".into()),
        }
        Ok(registry)
    }

    /// Which session a `log` means, and the context's generation when the context chose it.
    pub fn log_target(
        &self,
        session: Option<&str>,
        project: Option<&str>,
        context: Option<&str>,
    ) -> Result<(SessionId, Option<u64>), RequestError> {
        let context = context_name(context)?;
        let id = self.resolve(session, project, &context)?;
        let generation = session
            .is_none()
            .then(|| self.contexts.get(&context).map(|c| c.generation))
            .flatten();
        Ok((id, generation))
    }

    /// Runs a query on the store thread after the writes queued so far.
    pub fn read(&self, query: crate::store::Query) {
        self.store.read(query);
    }

    /// Resolves once every write queued before it is durable (an empty job: the store commits
    /// in order). The runner waits on it so no worker starts for a turn that is not saved.
    pub fn barrier(&self) -> Commit {
        self.store.write(Vec::new())
    }

    /// Why changes are refused, once the database could not be written.
    pub fn storage_failure(&self) -> Option<String> {
        self.store.failure()
    }

    /// Refuses a change while the database cannot be written: memory already holds changes
    /// the file does not, and more would only be lost with them if the daemon stopped.
    fn writable(&self) -> Result<(), RequestError> {
        match self.store.failure() {
            None => Ok(()),
            Some(why) => Err(RequestError::new(
                ErrorCode::STORAGE_FAILED,
                format!(
                    "the database {} cannot be written ({why}), so sessiond refuses changes \
                     for now; reads still work. Free disk space (or fix permissions): sessiond \
                     retries every second and accepts changes again by itself",
                    self.store.path().display()
                ),
            )),
        }
    }

    fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.interned.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.interned.insert(text.to_string(), shared.clone());
        shared
    }

    fn index(&mut self, s: &Session) {
        self.ids.insert(s.id.as_u128());
        if let Some(name) = &s.name {
            self.by_name.entry(name.clone()).or_default().push(s.id);
        }
        for pid in s.provider_session_id.iter().chain(&s.aliases) {
            let ids = self.by_provider_id.entry(pid.clone()).or_default();
            if !ids.contains(&s.id) {
                ids.push(s.id);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn store_path(&self) -> &Path {
        self.store.path()
    }

    fn session(&self, id: SessionId) -> &Session {
        &self.sessions[&id]
    }

    /// Finds the session a client means (see `sessiond_proto::methods` for the rules). A
    /// `project` narrows names, provider ids and prefixes to that project; a session found
    /// another way (the context's current one, a full id) must be in it, or the client meant
    /// something else and is told so rather than acting on another project's session.
    pub fn resolve(
        &self,
        selector: Option<&str>,
        project: Option<&str>,
        context: &str,
    ) -> Result<SessionId, RequestError> {
        // Sessions store canonical project paths; accept the path as the user wrote it. One
        // that cannot be resolved (a deleted directory) is compared as written, less any
        // trailing slash, and the reason goes into a refusal.
        let (project, unresolved) = match project.map(project_as_meant) {
            None => (None, None),
            Some(Ok(canonical)) => (Some(canonical), None),
            Some(Err((lexical, why))) => (Some(lexical), Some(why)),
        };
        let id = self.find(selector, project.as_deref(), context)?;
        match project {
            Some(p) if *self.session(id).project != *p => {
                let found = match selector {
                    None => format!("context {context:?}'s current session"),
                    Some(_) => "session".to_string(),
                };
                let why = unresolved.map_or(String::new(), |e| format!(" ({e})"));
                Err(invalid(format!(
                    "{found} {} belongs to another project than {p}{why}; name a session of \
                     that project, or leave out --project",
                    self.session(id).describe()
                )))
            }
            _ => Ok(id),
        }
    }

    /// `resolve` without the final project check; `project` is already canonical.
    fn find(
        &self,
        selector: Option<&str>,
        project: Option<&str>,
        context: &str,
    ) -> Result<SessionId, RequestError> {
        let Some(sel) = selector else {
            return self
                .contexts
                .get(context)
                .and_then(|c| c.session)
                .filter(|id| self.sessions.contains_key(id))
                .ok_or_else(|| {
                    not_found(format!(
                        "context {context:?} has no current session; name one, or switch to \
                         one first (`sessionctl switch SESSION`)"
                    ))
                });
        };
        let sel = sel.trim();
        if sel.is_empty() {
            return Err(invalid(
                "the session to act on is empty; give its name, id, id prefix or provider \
                 session id (`sessionctl list` shows them)",
            ));
        }
        // A UUID is usually our id, but a provider's own ids (Claude's, Codex's) are UUIDs
        // too, and so may a name be: when no session has it as id, keep looking.
        let as_id = sel.parse::<SessionId>().ok();
        let in_project = |id: &SessionId| project.is_none_or(|p| *self.session(*id).project == *p);
        // A session of another project with this id is the answer only when nothing in the
        // project has the UUID as a name or provider id (`resolve` then refuses it, by name).
        let id_elsewhere = as_id.filter(|id| self.sessions.contains_key(id));
        if let Some(id) = id_elsewhere.filter(in_project) {
            return Ok(id);
        }
        let by_name: Vec<SessionId> = self
            .by_name
            .get(sel)
            .map(|ids| ids.iter().copied().filter(in_project).collect())
            .unwrap_or_default();
        if !by_name.is_empty() {
            return self.one(by_name, &format!("name {sel:?}"), "--project");
        }
        let by_provider: Vec<SessionId> = self
            .by_provider_id
            .get(sel)
            .map(|ids| ids.iter().copied().filter(in_project).collect())
            .unwrap_or_default();
        if !by_provider.is_empty() {
            return self.one(
                by_provider,
                &format!("provider session id {sel:?}"),
                "the session's own id",
            );
        }
        let hex: String = sel.chars().filter(|c| *c != '-').collect();
        if hex.len() >= MIN_PREFIX && hex.len() < 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            let shift = 128 - 4 * hex.len() as u32;
            let value = u128::from_str_radix(&hex, 16).expect("checked hex");
            let low = value << shift;
            let high = low | ((1u128 << shift) - 1);
            let found: Vec<SessionId> = self
                .ids
                .range(low..=high)
                .map(|n| SessionId::from_u128(*n))
                .filter(in_project)
                .take(MAX_CANDIDATES + 1)
                .collect();
            if !found.is_empty() {
                return self.one(found, &format!("id prefix {sel:?}"), "a longer prefix");
            }
        }
        if let Some(id) = id_elsewhere {
            return Ok(id);
        }
        if let Some(id) = as_id {
            return Err(not_found(format!(
                "no session has id {id} (nor a name or provider session id equal to it); see \
                 `sessionctl list --all`"
            )));
        }
        let scope = project.map_or(String::new(), |p| format!(" in project {p}"));
        Err(not_found(format!(
            "no session matches {sel:?}{scope} (as an id, a name, a provider session id or an \
             id prefix of at least {MIN_PREFIX} hex digits); see `sessionctl list --all`"
        )))
    }

    fn one(
        &self,
        mut ids: Vec<SessionId>,
        what: &str,
        narrow: &str,
    ) -> Result<SessionId, RequestError> {
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        ids.sort();
        let shown: Vec<String> = ids
            .iter()
            .take(MAX_CANDIDATES)
            .map(|id| format!("  {}", self.session(*id).describe()))
            .collect();
        let more = if ids.len() > MAX_CANDIDATES {
            "\n  …and more"
        } else {
            ""
        };
        Err(RequestError::new(
            ErrorCode::AMBIGUOUS,
            format!(
                "{what} matches {} sessions; pick one with {narrow} or the full id:\n{}{more}",
                ids.len(),
                shown.join("\n")
            ),
        ))
    }

    fn name_taken(&self, project: &str, name: &str, except: Option<SessionId>) -> Option<&Session> {
        self.by_name.get(name)?.iter().find_map(|id| {
            let s = self.session(*id);
            (*s.project == *project && Some(*id) != except).then_some(s)
        })
    }

    fn name_conflict(other: &Session, name: &str) -> RequestError {
        // An archived holder is hidden from `list`: say where to see it, or the refusal
        // looks wrong.
        let archived = if other.phase == Phase::Archived {
            " (archived: `sessionctl list --all` shows it)"
        } else {
            ""
        };
        RequestError::new(
            ErrorCode::INVALID_ARGUMENT,
            format!(
                "name {name:?} is already used in project {} by session {}{archived}; choose \
                 another, or free it with `sessionctl rename {} NEW-NAME`",
                other.project,
                other.id.short(),
                other.id.short()
            ),
        )
    }

    /// Creates a session (provisional, idle).
    pub fn create(&mut self, p: CreateParams) -> Result<(SessionInfo, Commit), RequestError> {
        self.writable()?;
        if !self.providers.contains_key(&p.provider) {
            return Err(invalid(format!(
                "unknown provider {:?}; configured providers: {}",
                p.provider,
                self.configured_providers()
            )));
        }
        let project = canonical_dir(&p.project, "project")?;
        let cwd = match &p.cwd {
            Some(cwd) => canonical_dir(cwd, "working directory")?,
            None => project.clone(),
        };
        if let Some(name) = &p.name {
            check_name(name)?;
            if let Some(other) = self.name_taken(&project, name, None) {
                return Err(Self::name_conflict(other, name));
            }
        }
        let now = sessiond_proto::now_ms();
        let session = Session {
            id: SessionId::new_v4(),
            provider: self.intern(&p.provider),
            project: self.intern(&project),
            cwd,
            name: p.name,
            phase: Phase::Provisional,
            activity: Activity::Idle,
            created_at: now,
            updated_at: now,
            last_active_at: now,
            parent_id: None,
            provider_session_id: None,
            aliases: Vec::new(),
            queue_length: 0,
        };
        let (info, write) = self.insert(session);
        Ok((info, self.store.write(vec![write])))
    }

    /// Adds a new session, publishes `session_created`, and returns the row to write.
    fn insert(&mut self, session: Session) -> (SessionInfo, Write) {
        let info = session.info();
        self.index(&session);
        let mut event = scope_event(&session);
        event.info = Some(info.clone());
        self.events.publish(event_kind::SESSION_CREATED, event);
        let write = Write::Session(session.clone());
        self.sessions.insert(session.id, session);
        (info, write)
    }

    /// Records the provider's own id for a session: the first one binds a provisional
    /// session; a later, different one (after a /clear or a compaction) becomes current and
    /// the old one stays an alias, so every id the provider ever used still finds it.
    pub fn rebind(
        &mut self,
        id: SessionId,
        provider_session_id: &str,
    ) -> Result<Option<Commit>, RequestError> {
        // No `writable` check: this is what a running provider said, not a client's change.
        // While the database cannot be written it joins the held writes and is saved with
        // them; refusing it would lose the provider's session for good.
        let session = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| not_found(format!("no session has id {id}")))?;
        let old = session.provider_session_id.clone();
        if old.as_deref() == Some(provider_session_id) {
            return Ok(None);
        }
        if !matches!(session.phase, Phase::Provisional | Phase::Bound) {
            return Err(invalid_state(format!(
                "session {} is {}; only a live session can be rebound",
                session.id.short(),
                session.phase.as_str()
            )));
        }
        let from_phase = session
            .set_phase(Phase::Bound)
            .map_err(|e| invalid_state(e.0))?;
        if let Some(old) = &old {
            if !session.aliases.contains(old) {
                session.aliases.push(old.clone());
            }
        }
        session.provider_session_id = Some(provider_session_id.to_string());
        session.updated_at = sessiond_proto::now_ms();
        let write = Write::Session(session.clone());
        let ids = self
            .by_provider_id
            .entry(provider_session_id.to_string())
            .or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
        if from_phase != Phase::Bound {
            self.publish_phase(id, from_phase, "the provider reported its session id");
        }
        let mut event = scope_event(self.session(id));
        event.from = old;
        event.to = Some(provider_session_id.to_string());
        self.events.publish(event_kind::SESSION_REBOUND, event);
        Ok(Some(self.store.write(vec![write])))
    }

    /// Lists sessions, most recently active first.
    pub fn list(&self, p: &ListParams) -> Result<Listing<'_>, RequestError> {
        let context = context_name(p.context.as_deref())?;
        let state = match &p.state {
            None => None,
            Some(s) => Some(
                Phase::ALL
                    .iter()
                    .map(|p| p.as_str())
                    .chain(Activity::ALL.iter().map(|a| a.as_str()))
                    .find(|known| known == s)
                    .ok_or_else(|| {
                        invalid(format!(
                            "unknown state {s:?}; use a phase (provisional, bound, archived, \
                             failed) or an activity (idle, starting, running, waiting_input, \
                             stopping, paused, attached)"
                        ))
                    })?,
            ),
        };
        // A project that no longer exists on disk still lists its sessions by its old path.
        let (project, unresolved) = match p.project.as_deref().map(project_as_meant) {
            None => (None, None),
            Some(Ok(project)) => (Some(project), None),
            Some(Err((lexical, why))) => (Some(lexical.clone()), Some((lexical, why))),
        };
        let archived_wanted = p.all || state == Some("archived");
        // Most recently active first, then newest, then by id so the order is total. The keys
        // sit beside each reference: comparing through 10,000 pointers into the map costs a
        // cache miss per comparison, several times the rest of the sort.
        let mut matched: Vec<(ListKey, &Session)> = self
            .sessions
            .values()
            .filter(|s| archived_wanted || s.phase != Phase::Archived)
            .filter(|s| project.as_deref().is_none_or(|p| *s.project == *p))
            .filter(|s| p.provider.as_deref().is_none_or(|p| *s.provider == *p))
            .filter(|s| p.name.is_none() || s.name == p.name)
            .filter(|s| state.is_none_or(|st| s.phase.as_str() == st || s.activity.as_str() == st))
            .map(|s| (list_key(s), s))
            .collect();
        if matched.is_empty() {
            // Nothing matched: say so if nothing ever could (a mistyped path or provider).
            self.refuse_unknown(
                unresolved.as_slice(),
                p.provider.as_slice(),
                "none can be listed for it",
            )?;
        }
        // Unstable is exact here: no two entries share an id.
        matched.sort_unstable_by_key(|(key, _)| *key);
        Ok(Listing {
            sessions: matched.into_iter().map(|(_, s)| s).collect(),
            current: self.contexts.get(&context).and_then(|c| c.session),
        })
    }

    /// Refuses work on a session that is not live (archived or failed): submit, pause,
    /// resume and attach need one, and the refusal says how to bring it back.
    fn live(&self, id: SessionId) -> Result<(), RequestError> {
        let phase = self.session(id).phase;
        if matches!(phase, Phase::Provisional | Phase::Bound) {
            return Ok(());
        }
        Err(invalid_state(format!(
            "session {} is {}; reopen it first (`sessionctl reopen {}`)",
            id.short(),
            phase.as_str(),
            id.short()
        )))
    }

    /// Refuses new work for a session whose provider was dropped from the config: every turn
    /// of it would fail, and no command moves a session to another provider.
    fn provider_configured(&self, id: SessionId) -> Result<&ProviderConfig, RequestError> {
        let provider = &*self.session(id).provider;
        self.providers.get(provider).ok_or_else(|| {
            RequestError::new(
                ErrorCode::INVALID_STATE,
                format!(
                    "session {} uses provider {provider:?}, which is no longer configured \
                     (configured: {}); add [providers.{provider}] back to the config and run \
                     `sessionctl daemon restart`, or make a new session with another provider \
                     (`sessionctl new --provider NAME`)",
                    id.short(),
                    self.configured_providers()
                ),
            )
        })
    }

    fn configured_providers(&self) -> String {
        let names: Vec<&str> = self.providers.keys().map(String::as_str).collect();
        names.join(", ")
    }

    /// Refuses a subscription filter that names what no event can carry: a subscription lasts
    /// as long as its connection, so a mistyped value would otherwise wait in silence for
    /// ever. A session must exist. A project must be a directory (sessions can still be made
    /// in it) or some session's project; a provider must be configured or some session's: a
    /// deleted directory or a provider since dropped from the configuration still names the
    /// events of the sessions that carry it. `unresolved` holds each project that is not a
    /// directory, as `project_as_meant` gave it, with why.
    pub fn check_filter(
        &self,
        filter: &EventFilter,
        unresolved: &[(String, String)],
    ) -> Result<(), RequestError> {
        if let Some(id) = filter
            .sessions
            .iter()
            .find(|id| !self.sessions.contains_key(id))
        {
            return Err(not_found(format!(
                "no session has id {id}; a filter names sessions by their full id (`sessionctl \
                 watch --session` also takes names and prefixes)"
            )));
        }
        self.refuse_unknown(unresolved, &filter.providers, "no event can match it")
    }

    /// Refuses a project or provider that nothing has and nothing could have, so a typo is
    /// named instead of matching nothing in silence: a project that is not a directory
    /// (`unresolved`: its path and why) and that no session belongs to, a provider neither
    /// configured nor any session's (one since dropped from the config stays usable while
    /// sessions carry it). `consequence` says what that means for the request.
    fn refuse_unknown(
        &self,
        unresolved: &[(String, String)],
        providers: &[String],
        consequence: &str,
    ) -> Result<(), RequestError> {
        let mut projects: HashSet<&str> = unresolved.iter().map(|(p, _)| p.as_str()).collect();
        let mut unknown: HashSet<&str> = providers
            .iter()
            .map(String::as_str)
            .filter(|p| !self.providers.contains_key(*p))
            .collect();
        if projects.is_empty() && unknown.is_empty() {
            return Ok(());
        }
        for s in self.sessions.values() {
            projects.remove(&*s.project);
            unknown.remove(&*s.provider);
        }
        if let Some((project, why)) = unresolved
            .iter()
            .find(|(p, _)| projects.contains(p.as_str()))
        {
            return Err(invalid(format!(
                "no session belongs to project {project}, so {consequence} ({why})"
            )));
        }
        if let Some(provider) = providers.iter().find(|p| unknown.contains(p.as_str())) {
            return Err(invalid(format!(
                "unknown provider {provider:?}: no session has it and it is not configured \
                 (configured providers: {})",
                self.configured_providers()
            )));
        }
        Ok(())
    }

    /// One session's record.
    pub fn get(&self, p: &SessionParams) -> Result<SessionInfo, RequestError> {
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        Ok(self.session(id).info())
    }

    /// The context's pointer.
    pub fn current(&self, context: Option<&str>) -> Result<SwitchResult, RequestError> {
        let context = context_name(context)?;
        Ok(self.pointer(&context))
    }

    fn pointer(&self, context: &str) -> SwitchResult {
        let row = self.contexts.get(context);
        SwitchResult {
            context: context.to_string(),
            session: row
                .and_then(|c| c.session)
                .and_then(|id| self.sessions.get(&id))
                .map(Session::info),
            project: row.and_then(|c| c.project.clone()),
            // A context never saved reports where it would start: above anything a crashed
            // run may have shown for it, so a client takes "no session" as the newer answer.
            generation: row.map_or(self.generation_floor, |c| c.generation),
            reopened: false,
        }
    }

    /// Makes a session current in a context, reopening it if archived.
    pub fn switch(&mut self, p: &SessionParams) -> Result<(SwitchResult, Commit), RequestError> {
        self.writable()?;
        let context = context_name(p.context.as_deref())?;
        let Some(selector) = p.session.as_deref() else {
            return Err(invalid("switch needs a session: an id, a prefix or a name"));
        };
        let id = self.resolve(Some(selector), p.project.as_deref(), &context)?;
        let mut writes = Vec::with_capacity(2);
        let reopened = self.session(id).phase == Phase::Archived;
        if reopened {
            self.reopen_in_place(id, "reopened by a switch")?;
        }
        let now = sessiond_proto::now_ms();
        let session = self.sessions.get_mut(&id).expect("resolved");
        session.last_active_at = now;
        session.updated_at = now;
        writes.push(Write::Session(session.clone()));
        let (context_row, heard) = self.point(&context, id);
        writes.push(context_row);
        // A switch is answered before its fsync, which follows within a few milliseconds: a
        // person waits for it at a keystroke, and a crash of the daemon cannot lose it. A
        // reopening is a change of the session's own state, and waits for the disk as every
        // other change does. A switch someone subscribes to is committed by the store thread,
        // so this thread goes on to deliver its event meanwhile; one nobody hears is committed
        // here, which saves the two hand-overs between threads.
        let commit = if reopened {
            self.store.write(writes)
        } else if heard {
            self.store.write_then_flush(writes, Committer::StoreThread)
        } else {
            self.store.write_then_flush(writes, Committer::Here)
        };
        let pointer = SwitchResult {
            reopened,
            ..self.pointer(&context)
        };
        Ok((pointer, commit))
    }

    /// Points `context` at `id`, bumps its generation, publishes `session_switched`, and
    /// returns the row to write, and whether a subscriber will receive the event.
    fn point(&mut self, context: &str, id: SessionId) -> (Write, bool) {
        let session = &self.sessions[&id];
        let project = session.project.to_string();
        let row = self
            .contexts
            .entry(context.to_string())
            .or_insert_with(|| ContextRow {
                name: context.to_string(),
                session: None,
                project: None,
                generation: self.generation_floor,
            });
        row.session = Some(id);
        row.project = Some(project);
        row.generation += 1;
        let row = row.clone();
        let mut event = scope_event(session);
        event.context = Some(context.to_string());
        event.generation = Some(row.generation);
        let heard = self.events.publish(event_kind::SESSION_SWITCHED, event);
        (Write::Context(row), heard)
    }

    /// Renames a session.
    pub fn rename(&mut self, p: &RenameParams) -> Result<(SessionInfo, Commit), RequestError> {
        self.writable()?;
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        check_name(&p.name)?;
        let project = self.session(id).project.clone();
        if let Some(other) = self.name_taken(&project, &p.name, Some(id)) {
            return Err(Self::name_conflict(other, &p.name));
        }
        let session = self.sessions.get_mut(&id).expect("resolved");
        let old = session.name.replace(p.name.clone());
        session.updated_at = sessiond_proto::now_ms();
        let info = session.info();
        let write = Write::Session(session.clone());
        if let Some(old) = &old {
            if let Some(ids) = self.by_name.get_mut(old) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    self.by_name.remove(old);
                }
            }
        }
        self.by_name.entry(p.name.clone()).or_default().push(id);
        let mut event = scope_event(self.session(id));
        event.from = old;
        event.to = Some(p.name.clone());
        self.events.publish(event_kind::SESSION_RENAMED, event);
        Ok((info, self.store.write(vec![write])))
    }

    /// Archives a session.
    pub fn archive(&mut self, p: &SessionParams) -> Result<(SessionInfo, Commit), RequestError> {
        self.writable()?;
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        let session = self.sessions.get_mut(&id).expect("resolved");
        if session.phase == Phase::Archived {
            return Err(invalid_state(format!(
                "session {} is already archived; bring it back with `sessionctl reopen {}`",
                session.id.short(),
                session.id.short()
            )));
        }
        let waiting = self.queues.get(&id).map_or(0, |q| q.queued.len());
        if waiting > 0 {
            return Err(invalid_state(format!(
                "session {} has {waiting} queued turns; cancel them (`sessionctl queue {}` \
                 lists them) before closing it",
                id.short(),
                id.short()
            )));
        }
        let session = self.sessions.get_mut(&id).expect("resolved");
        if !matches!(session.activity, Activity::Idle | Activity::Paused) {
            return Err(invalid_state(format!(
                "session {} is {}; wait for it to finish or cancel its work before closing it",
                session.id.short(),
                session.activity.as_str()
            )));
        }
        let from = session
            .set_phase(Phase::Archived)
            .map_err(|e| invalid_state(e.0))?;
        session.updated_at = sessiond_proto::now_ms();
        let info = session.info();
        let write = Write::Session(session.clone());
        self.publish_phase(id, from, "archived by a client");
        self.events
            .publish(event_kind::SESSION_ARCHIVED, scope_event(self.session(id)));
        Ok((info, self.store.write(vec![write])))
    }

    /// Reopens an archived session.
    pub fn reopen(&mut self, p: &SessionParams) -> Result<(SessionInfo, Commit), RequestError> {
        self.writable()?;
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        if self.session(id).phase != Phase::Archived {
            return Err(invalid_state(format!(
                "session {} is not archived (it is {})",
                id.short(),
                self.session(id).phase.as_str()
            )));
        }
        self.reopen_in_place(id, "reopened by a client")?;
        let session = self.session(id);
        let (info, write) = (session.info(), Write::Session(session.clone()));
        Ok((info, self.store.write(vec![write])))
    }

    fn reopen_in_place(&mut self, id: SessionId, reason: &str) -> Result<(), RequestError> {
        let session = self.sessions.get_mut(&id).expect("resolved");
        let target = session.reopened_phase();
        let from = session.set_phase(target).map_err(|e| invalid_state(e.0))?;
        session.updated_at = sessiond_proto::now_ms();
        self.publish_phase(id, from, reason);
        self.events
            .publish(event_kind::SESSION_REOPENED, scope_event(self.session(id)));
        Ok(())
    }

    fn publish_phase(&mut self, id: SessionId, from: Phase, reason: &str) {
        let session = self.session(id);
        let mut event = scope_event(session);
        event.field = Some("phase".into());
        event.from = Some(from.as_str().into());
        event.to = Some(session.phase.as_str().into());
        event.reason = Some(reason.into());
        self.events
            .publish(event_kind::SESSION_STATE_CHANGED, event);
    }

    /// A fresh session in the same project and provider, child of the old one, made current.
    pub fn regenerate(
        &mut self,
        p: &SessionParams,
    ) -> Result<(SwitchResult, Commit), RequestError> {
        self.writable()?;
        let context = context_name(p.context.as_deref())?;
        let old_id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        self.provider_configured(old_id)?;
        let old = self.session(old_id);
        let now = sessiond_proto::now_ms();
        let fresh = Session {
            id: SessionId::new_v4(),
            provider: old.provider.clone(),
            project: old.project.clone(),
            cwd: old.cwd.clone(),
            name: None,
            phase: Phase::Provisional,
            activity: Activity::Idle,
            created_at: now,
            updated_at: now,
            last_active_at: now,
            parent_id: Some(old_id),
            provider_session_id: None,
            aliases: Vec::new(),
            queue_length: 0,
        };
        let id = fresh.id;
        let (_, session_row) = self.insert(fresh);
        let (context_row, _) = self.point(&context, id);
        // One job: the context can never be saved pointing at a session that was not.
        let commit = self.store.write(vec![session_row, context_row]);
        Ok((self.pointer(&context), commit))
    }
}

/// Turns: submitting, starting, output, settling. The runner (`runner`) does the processes;
/// every change of state happens here.
impl Registry {
    fn turn_event(&self, turn: &Turn) -> SessionEvent {
        let mut event = scope_event(self.session(turn.session));
        event.turn = Some(turn.id);
        event
    }

    fn set_activity(&mut self, id: SessionId, to: Activity, reason: &str) -> Option<Write> {
        let session = self.sessions.get_mut(&id)?;
        let from = session.set_activity(to).ok()?;
        session.updated_at = sessiond_proto::now_ms();
        let write = Write::Session(session.clone());
        let mut event = scope_event(session);
        event.field = Some("activity".into());
        event.from = Some(from.as_str().into());
        event.to = Some(to.as_str().into());
        event.reason = Some(reason.into());
        self.events
            .publish(event_kind::SESSION_STATE_CHANGED, event);
        Some(write)
    }

    fn sync_queue_length(&mut self, id: SessionId) -> Option<Write> {
        let length = self.queues.get(&id).map_or(0, |q| q.queued.len()) as u32;
        let session = self.sessions.get_mut(&id)?;
        (session.queue_length != length).then(|| {
            session.queue_length = length;
            Write::Session(session.clone())
        })
    }

    /// Marks `turn` running and returns what the runner needs; the turn must be the session's.
    fn start(&mut self, turn_id: TurnId, writes: &mut Vec<Write>) -> StartOrder {
        let now = sessiond_proto::now_ms();
        let turn = self.turns.get_mut(&turn_id).expect("unsettled turn");
        turn.status = TurnStatus::Running;
        turn.started_at = Some(now);
        // A steer's stop of the turn before it is done with once it starts itself.
        turn.interrupts = false;
        let session_id = turn.session;
        self.queues.entry(session_id).or_default().running = Some(turn_id);
        let turn = self.turns[&turn_id].clone();
        writes.push(Write::Turn(turn.clone()));
        writes.extend(self.set_activity(
            session_id,
            Activity::Starting,
            &format!("turn {} started", turn_id.short()),
        ));
        self.events
            .publish(event_kind::TURN_STARTED, self.turn_event(&turn));
        let session = self.session(session_id);
        StartOrder {
            turn: turn_id,
            session: session_id,
            provider: session.provider.clone(),
            project: session.project.clone(),
            cwd: session.cwd.clone(),
            prompt: turn.prompt,
            provider_session_id: session.provider_session_id.clone(),
        }
    }

    /// Submits a prompt: starts it if the session is free, else queues it (or refuses, with
    /// `no_queue`). The order, when present, must be handed to the runner.
    pub fn submit(
        &mut self,
        p: &SubmitParams,
    ) -> Result<(SubmitResult, Commit, Option<StartOrder>), RequestError> {
        self.writable()?;
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        if p.prompt.trim().is_empty() {
            return Err(invalid(
                "the prompt is empty; say what the session should do",
            ));
        }
        if p.prompt.len() > MAX_PROMPT_BYTES {
            return Err(invalid(sessiond_proto::methods::prompt_too_long(
                &p.prompt.len().to_string(),
            )));
        }
        self.live(id)?;
        if let Some(why) = self.provider_configured(id)?.refuse_prompt(&p.prompt) {
            return Err(invalid(format!(
                "provider {:?} of session {} cannot take this prompt: {why}",
                &*self.session(id).provider,
                id.short()
            )));
        }
        let session = self.session(id);
        let attached = session.activity == Activity::Attached || self.attached.contains_key(&id);
        let queue = self.queues.entry(id).or_default();
        let busy = attached
            || queue.running.is_some()
            || !queue.queued.is_empty()
            || queue.paused.is_some();
        if busy && p.no_queue {
            let why = match (&queue.running, &queue.paused) {
                (Some(turn), _) => format!("running turn {}", turn.short()),
                (None, Some(reason)) => format!("its queue is paused: {reason}"),
                (None, None) if attached => "attached to another process".to_string(),
                (None, None) => format!("{} turns queued", queue.queued.len()),
            };
            return Err(RequestError::new(
                ErrorCode::BUSY,
                format!(
                    "session {} is busy ({why}); nothing was queued because of no_queue. \
                     Send without it to queue the prompt",
                    id.short()
                ),
            ));
        }
        let order = self.next_order;
        self.next_order += 1;
        let turn = Turn::queued(id, order, p.prompt.clone(), sessiond_proto::now_ms());
        let turn_id = turn.id;
        self.turns.insert(turn_id, turn);
        let mut writes = Vec::with_capacity(3);
        let (accepted, start) = if busy {
            let queue = self.queues.get_mut(&id).expect("created above");
            queue.queued.push_back(turn_id);
            let position = queue.queued.len() as u32;
            let turn = self.turns[&turn_id].clone();
            writes.push(Write::Turn(turn.clone()));
            let mut event = self.turn_event(&turn);
            event.position = Some(position);
            self.events.publish(event_kind::TURN_QUEUED, event);
            writes.extend(self.sync_queue_length(id));
            (false, None)
        } else {
            let turn = self.turns[&turn_id].clone();
            self.events
                .publish(event_kind::SESSION_ACCEPTED, self.turn_event(&turn));
            (true, Some(self.start(turn_id, &mut writes)))
        };
        let turn = &self.turns[&turn_id];
        let info = turn.info(self.position(turn_id));
        let commit = self.store.write(writes);
        Ok((
            SubmitResult {
                accepted,
                turn: info,
                paused: self.held(id),
                attached: self.attached_pid(id),
            },
            commit,
            start,
        ))
    }

    /// Why a session's queue is held, or will be once a cancel under way lands: either way
    /// queued turns wait for `resume`.
    fn held(&self, id: SessionId) -> Option<String> {
        let paused = self.queues.get(&id)?.paused.clone();
        paused.or_else(|| {
            self.being_cancelled(id).map(|running| {
                format!(
                    "turn {} is being cancelled, which pauses the queue",
                    running.short()
                )
            })
        })
    }

    /// The session's running turn, if a cancel is stopping it (its settling pauses the queue).
    fn being_cancelled(&self, id: SessionId) -> Option<TurnId> {
        let running = self.queues.get(&id)?.running?;
        (self.turns.get(&running)?.stop == Some(Stop::Cancel)).then_some(running)
    }

    /// The pid a client attached the session to, while one is.
    fn attached_pid(&self, id: SessionId) -> Option<u32> {
        self.attached.get(&id).map(|&(_, pid)| pid)
    }

    /// Where each of a session's queued turns stands in its queue (1 = next).
    pub fn queue_positions(&self, session: SessionId) -> HashMap<TurnId, u32> {
        self.queues.get(&session).map_or_else(HashMap::new, |q| {
            q.queued
                .iter()
                .enumerate()
                .map(|(i, turn)| (*turn, i as u32 + 1))
                .collect()
        })
    }

    fn position(&self, turn: TurnId) -> Option<u32> {
        let t = self.turns.get(&turn)?;
        let queue = self.queues.get(&t.session)?;
        queue
            .queued
            .iter()
            .position(|q| *q == turn)
            .map(|i| i as u32 + 1)
    }

    /// Records that the turn's process started. True when a cancel or steer came first and
    /// the worker must be stopped at once.
    pub fn worker_started(&mut self, turn_id: TurnId, pid: u32, start_time: Option<u64>) -> bool {
        let Some(turn) = self.turns.get_mut(&turn_id) else {
            return false;
        };
        // A worker that starts as the daemon stops is ended with the others.
        if self.stopping && turn.stop.is_none() {
            turn.stop = Some(Stop::Shutdown);
        }
        let stop = turn.stop.is_some();
        turn.worker_pid = Some(pid);
        turn.worker_start_time = start_time;
        let (turn, session) = (turn.clone(), turn.session);
        let mut writes = vec![Write::Turn(turn)];
        writes.extend(self.set_activity(session, Activity::Running, "the provider started"));
        drop(self.store.write(writes));
        stop
    }

    /// Puts a turn that could not start because another process owns the session back at the
    /// head of its queue, and holds the queue with the reason, instead of failing it (and,
    /// one after another, everything queued behind it).
    pub fn requeue_blocked(&mut self, turn_id: TurnId, reason: &str) {
        let Some(turn) = self.turns.get_mut(&turn_id) else {
            return;
        };
        turn.status = TurnStatus::Queued;
        turn.started_at = None;
        turn.stop = None;
        turn.launching = false;
        let session = turn.session;
        let queue = self.queues.entry(session).or_default();
        if queue.running == Some(turn_id) {
            queue.running = None;
        }
        queue.queued.push_front(turn_id);
        queue.paused = Some(reason.to_string());
        let mut writes = self.renumber_front(session, 0);
        writes.push(Write::Turn(self.turns[&turn_id].clone()));
        writes.extend(self.sync_queue_length(session));
        writes.extend(self.set_activity(session, Activity::Paused, reason));
        self.publish_paused(session, reason);
        self.publish_requeued(turn_id, format!("it could not start: {reason}"));
        drop(self.store.write(writes));
    }

    /// A turn steered past while it waited for a run slot never ran, so it is not interrupted:
    /// it goes back to its queue behind the steer (the last, if several came), and the head
    /// of the queue takes its slot. Called by the runner once the slot comes (not at the
    /// steer, so the steer keeps the turn's place among the sessions waiting for slots, and
    /// no second start of this turn can race a first one still waiting). While the daemon
    /// stops, all of them wait in the queue, held.
    pub fn yield_to_steer(&mut self, turn_id: TurnId) -> Yielded {
        let Some(turn) = self.turns.get_mut(&turn_id) else {
            return Yielded::No;
        };
        if turn.stop != Some(Stop::Steer) || turn.worker_pid.is_some() {
            return Yielded::No;
        }
        turn.status = TurnStatus::Queued;
        turn.started_at = None;
        turn.stop = None;
        turn.launching = false;
        let session = turn.session;
        // Back in line right behind the last steer that asked to stop it (a queued turn's
        // `interrupts`); whatever the clients put at the head of the queue runs first.
        let queue = self.queues.entry(session).or_default();
        if queue.running == Some(turn_id) {
            queue.running = None;
        }
        let at = queue
            .queued
            .iter()
            .rposition(|t| self.turns.get(t).is_some_and(|t| t.interrupts))
            .map_or(0, |last| last + 1);
        queue.queued.insert(at, turn_id);
        let steer = queue.queued.get(at.wrapping_sub(1)).copied();
        let mut writes = self.renumber_front(session, at);
        writes.push(Write::Turn(self.turns[&turn_id].clone()));
        let reason = match steer {
            Some(steer) => format!(
                "steer {} came before it started, and runs first",
                steer.short()
            ),
            None => "a steer came before it started".into(),
        };
        if self.stopping {
            self.queues.entry(session).or_default().paused = Some(DAEMON_STOPPED.into());
            writes.extend(self.sync_queue_length(session));
            writes.extend(self.set_activity(session, Activity::Paused, DAEMON_STOPPED));
            self.publish_paused(session, DAEMON_STOPPED);
            self.publish_requeued(turn_id, reason);
            drop(self.store.write(writes));
            return Yielded::Held;
        }
        let next = self
            .queues
            .get_mut(&session)
            .filter(|q| q.paused.is_none())
            .and_then(|q| q.queued.pop_front());
        let order = match next {
            Some(next) => Some(self.start(next, &mut writes)),
            None => {
                // Held since the steer (a client paused the queue): nothing runs.
                let reason = format!("turn {} went back to its queue", turn_id.short());
                writes.extend(self.set_activity(session, Activity::Paused, &reason));
                None
            }
        };
        writes.extend(self.sync_queue_length(session));
        self.publish_requeued(turn_id, reason);
        drop(self.store.write(writes));
        Yielded::To(order)
    }

    /// `turn_queued` for a turn that went back to its queue, at the place it has now.
    fn publish_requeued(&mut self, turn_id: TurnId, reason: String) {
        let mut event = self.turn_event(&self.turns[&turn_id]);
        event.position = self.position(turn_id);
        event.reason = Some(reason);
        self.events.publish(event_kind::TURN_QUEUED, event);
    }

    /// Lowers order numbers among the first `upto + 1` turns of `session`'s queue, from the
    /// back, wherever one is not below the next: a turn put back into the queue keeps its old
    /// number, which promotes and steers since may have passed. The queue is rebuilt from
    /// these numbers at start-up. Returns the rows to write.
    fn renumber_front(&mut self, session: SessionId, upto: usize) -> Vec<Write> {
        let Some(queue) = self.queues.get(&session) else {
            return Vec::new();
        };
        let ids: Vec<TurnId> = queue.queued.iter().take(upto + 2).copied().collect();
        let mut writes = Vec::new();
        for pair in ids.windows(2).rev() {
            let next = self.turns[&pair[1]].order;
            let turn = self
                .turns
                .get_mut(&pair[0])
                .expect("queued turns are unsettled");
            if turn.order >= next {
                turn.order = next - 1;
                writes.push(Write::Turn(turn.clone()));
            }
        }
        writes
    }

    /// Applies what a `jsonl` provider's output said: its session id (binding or rebinding the
    /// session), or whether it waits for the user.
    pub fn provider_signal(&mut self, turn_id: TurnId, signal: crate::provider::Signal) {
        use crate::provider::Signal;
        let Some(session) = self.turns.get(&turn_id).map(|t| t.session) else {
            return;
        };
        match signal {
            Signal::SessionId(id) => {
                if let Err(e) = self.rebind(session, &id) {
                    tracing::warn!(session = %session, "cannot record provider id {id:?}: {}", e.message);
                }
            }
            Signal::NeedsInput(asks) => {
                let activity = self.session(session).activity;
                let write = match (asks, activity) {
                    (true, Activity::Running) => {
                        let write = self.set_activity(
                            session,
                            Activity::WaitingInput,
                            "the provider asks for input",
                        );
                        let mut event = self.turn_event(&self.turns[&turn_id]);
                        event.reason = Some("the provider asks for input or approval".into());
                        self.events
                            .publish(event_kind::SESSION_WAITING_INPUT, event);
                        write
                    }
                    (false, Activity::WaitingInput) => {
                        self.set_activity(session, Activity::Running, "the provider went on")
                    }
                    _ => None,
                };
                if let Some(write) = write {
                    drop(self.store.write(vec![write]));
                }
            }
        }
    }

    /// Records a chunk of a running turn's output and publishes it. Past `cap` bytes per turn
    /// output is dropped, after one chunk saying so.
    pub fn turn_output(&mut self, turn_id: TurnId, stream: &'static str, data: &[u8], cap: u64) {
        let Some(turn) = self.turns.get_mut(&turn_id) else {
            return;
        };
        if turn.output_truncated {
            return;
        }
        let room = cap.saturating_sub(turn.output_bytes) as usize;
        let marker;
        let data = if data.len() > room {
            turn.output_bytes = cap;
            turn.output_truncated = true;
            marker = [
                &data[..crate::turn::utf8_complete_prefix(&data[..room])],
                format!(
                    "\n[sessiond: this turn's output passed {cap} bytes (max_output_bytes); the \
                     rest is discarded, the turn goes on]\n"
                )
                .as_bytes(),
            ]
            .concat();
            &marker[..]
        } else {
            turn.output_bytes += data.len() as u64;
            data
        };
        let chunk = turn.output_chunks;
        turn.output_chunks += 1;
        let turn = turn.clone();
        let mut event = self.turn_event(&turn);
        event.stream = Some(stream.to_string());
        event.chunk = Some(chunk);
        event.data = Some(String::from_utf8_lossy(data).into_owned());
        self.events.publish(event_kind::TURN_OUTPUT, event);
        if self.store.failure().is_some() {
            // Holding a flood of output in memory until space returns could exhaust it; the
            // subscribers saw it, and the settled turn will say what the transcript lacks.
            if let Some(turn) = self.turns.get_mut(&turn_id) {
                turn.output_unsaved += data.len() as u64;
            }
            return;
        }
        // Output is not acknowledged to anyone; its commit rides along with the next one.
        drop(self.store.write(vec![Write::Output {
            turn: turn_id,
            chunk,
            stream,
            data: data.to_vec(),
        }]));
    }

    /// Settles a running turn and starts the session's next one, if any.
    pub fn settle(
        &mut self,
        turn_id: TurnId,
        status: TurnStatus,
        exit_code: Option<i32>,
        error: Option<String>,
    ) -> Option<StartOrder> {
        self.settle_turn(turn_id, status, exit_code, error)
            .and_then(|(_, next)| next)
    }

    /// [`Self::settle`], also returning the settled turn.
    fn settle_turn(
        &mut self,
        turn_id: TurnId,
        status: TurnStatus,
        exit_code: Option<i32>,
        error: Option<String>,
    ) -> Option<(Turn, Option<StartOrder>)> {
        let mut turn = self.turns.remove(&turn_id)?;
        // A stop is only ever asked of a worker that has not exited (a cancel after that is
        // refused), so the stop decides the status, whatever the exit: agents often exit 0 on
        // SIGINT. An aborted turn is cancelled, and holds the queue: what was queued after it
        // may depend on work that did not happen. A steered one is interrupted, and the steer
        // (at the head of the queue) runs next.
        let (status, error) = match turn.stop {
            Some(Stop::Cancel) => {
                let reason = format!("turn {} was cancelled", turn_id.short());
                self.queues.entry(turn.session).or_default().paused = Some(reason);
                (
                    TurnStatus::Cancelled,
                    error.or(Some("cancelled by a client".into())),
                )
            }
            Some(Stop::Steer) => (
                TurnStatus::Interrupted,
                Some("interrupted by a steer, which runs next".into()),
            ),
            Some(Stop::SteerWithdrawn) => (
                TurnStatus::Interrupted,
                Some("interrupted by a steer that was cancelled before it ran".into()),
            ),
            Some(Stop::Shutdown) => {
                self.queues.entry(turn.session).or_default().paused = Some(DAEMON_STOPPED.into());
                (
                    TurnStatus::Interrupted,
                    Some("the daemon was stopped while it ran; resume the queue to go on".into()),
                )
            }
            None => (status, error),
        };
        let error = match turn.output_unsaved {
            0 => error,
            lost => {
                let why = self
                    .store
                    .failure()
                    .unwrap_or_else(|| "a failed commit".into());
                let note = format!(
                    "{lost} bytes of output were streamed but not saved to the transcript: the \
                     database could not be written ({why})"
                );
                Some(error.map_or(note.clone(), |e| format!("{e}; {note}")))
            }
        };
        turn.status = status;
        turn.ended_at = Some(sessiond_proto::now_ms());
        turn.exit_code = exit_code;
        turn.error = error;
        let session_id = turn.session;
        let mut writes = vec![Write::Turn(turn.clone())];
        let mut event = self.turn_event(&turn);
        event.status = Some(status);
        event.exit_code = exit_code;
        event.reason = turn.error.clone();
        self.events.publish(event_kind::TURN_SETTLED, event);
        let queue = self.queues.entry(session_id).or_default();
        if queue.running == Some(turn_id) {
            queue.running = None;
        }
        let paused = self.queues.get(&session_id).and_then(|q| q.paused.clone());
        let rest = if paused.is_some() {
            Activity::Paused
        } else {
            Activity::Idle
        };
        writes.extend(self.set_activity(
            session_id,
            rest,
            &format!("turn {} {}", turn_id.short(), status.as_str()),
        ));
        if let (Some(Stop::Cancel | Stop::Shutdown), Some(reason)) = (turn.stop, &paused) {
            self.publish_paused(session_id, reason);
        }
        if let Some(session) = self.sessions.get_mut(&session_id) {
            session.last_active_at = sessiond_proto::now_ms();
            writes.push(Write::Session(session.clone()));
        }
        let stopping = self.stopping;
        let next = self
            .queues
            .get_mut(&session_id)
            .filter(|q| q.paused.is_none() && !stopping)
            .and_then(|q| q.queued.pop_front());
        let order = next.map(|next| {
            writes.extend(self.sync_queue_length(session_id));
            self.start(next, &mut writes)
        });
        drop(self.store.write(writes));
        Some((turn, order))
    }

    fn publish_paused(&mut self, id: SessionId, reason: &str) {
        let mut event = scope_event(self.session(id));
        event.reason = Some(reason.to_string());
        self.events.publish(event_kind::QUEUE_PAUSED, event);
    }

    /// Holds a session's queue. The running turn, if any, finishes; nothing else starts.
    pub fn pause(
        &mut self,
        p: &SessionParams,
        reason: &str,
    ) -> Result<(QueueResult, Commit), RequestError> {
        self.writable()?;
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        // An archived session runs nothing, and `resume` refuses it: a pause could not be undone.
        self.live(id)?;
        let queue = self.queues.entry(id).or_default();
        if let Some(already) = &queue.paused {
            return Err(invalid_state(format!(
                "session {}'s queue is already paused ({already}); `sessionctl resume {}` \
                 releases it",
                id.short(),
                id.short()
            )));
        }
        queue.paused = Some(reason.to_string());
        let running = queue.running.is_some();
        let mut writes = Vec::new();
        if !running {
            writes.extend(self.set_activity(id, Activity::Paused, reason));
        }
        self.publish_paused(id, reason);
        let result = self.queue(&SessionParams {
            session: Some(id.to_string()),
            ..Default::default()
        })?;
        Ok((result, self.store.write(writes)))
    }

    /// Releases a held queue and starts the next turn if none is running.
    pub fn resume(
        &mut self,
        p: &SessionParams,
    ) -> Result<(QueueResult, Commit, Option<StartOrder>), RequestError> {
        self.writable()?;
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        self.live(id)?;
        // Its queued turns would start only to fail, one after another.
        if self.queues.get(&id).is_some_and(|q| !q.queued.is_empty()) {
            self.provider_configured(id)?;
        }
        let attached = self.attached.contains_key(&id);
        let queue = self.queues.entry(id).or_default();
        if queue.paused.take().is_none() {
            return Err(invalid_state(format!(
                "session {}'s queue is not paused",
                id.short()
            )));
        }
        // An attached session's queue waits for the detach, which starts it.
        let next = if queue.running.is_none() && !attached {
            queue.queued.pop_front()
        } else {
            None
        };
        let mut writes = Vec::new();
        if self.session(id).activity == Activity::Paused && !attached {
            writes.extend(self.set_activity(id, Activity::Idle, "queue resumed"));
        }
        self.events
            .publish(event_kind::QUEUE_RESUMED, scope_event(self.session(id)));
        let order = next.map(|turn| {
            writes.extend(self.sync_queue_length(id));
            self.start(turn, &mut writes)
        });
        let result = self.queue(&SessionParams {
            session: Some(id.to_string()),
            ..Default::default()
        })?;
        Ok((result, self.store.write(writes), order))
    }

    /// Submits a turn that runs next. A running turn is interrupted unless `no_interrupt`;
    /// the answer then names its worker, which the caller must stop (the steer starts when it
    /// exits). A paused queue stays paused, with the steer at its head; one with a running turn
    /// is refused unless `no_interrupt`, as nothing would run after the interruption.
    #[allow(clippy::type_complexity)]
    pub fn steer(
        &mut self,
        p: &SteerParams,
    ) -> Result<
        (
            SubmitResult,
            Commit,
            Option<StartOrder>,
            Option<(TurnId, u32)>,
        ),
        RequestError,
    > {
        if !p.no_interrupt {
            // Stopping the running turn of a held queue would leave the steer waiting behind
            // the pause, and the session doing nothing, until someone resumes it.
            let context = context_name(p.context.as_deref())?;
            let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
            if let Some((running, reason)) = self
                .queues
                .get(&id)
                .and_then(|q| q.running.zip(q.paused.as_ref()))
            {
                return Err(invalid_state(format!(
                    "session {}'s queue is paused ({reason}): a steer would stop its running \
                     turn {} and then wait. Resume the queue first (`sessionctl resume {}`), or \
                     steer with --no-interrupt to put the prompt at the head of the queue",
                    id.short(),
                    running.short(),
                    id.short()
                )));
            }
            // A cancel under way pauses the queue when its turn settles: the same wait.
            if let Some(running) = self.being_cancelled(id) {
                return Err(invalid_state(format!(
                    "session {}'s running turn {} is being cancelled, which pauses the queue: \
                     a steer would wait behind the pause. Send it once the turn has settled, \
                     then resume (`sessionctl resume {}`), or steer with --no-interrupt to put \
                     the prompt at the head of the queue",
                    id.short(),
                    running.short(),
                    id.short()
                )));
            }
        }
        let submitted = SubmitParams {
            session: p.session.clone(),
            project: p.project.clone(),
            context: p.context.clone(),
            prompt: p.prompt.clone(),
            no_queue: false,
        };
        let (mut result, commit, start) = self.submit(&submitted)?;
        let turn_id = result.turn.turn_id;
        let session = result.turn.session;
        if let Some(turn) = self.turns.get_mut(&turn_id) {
            turn.kind = TurnKind::Steer;
        }
        if start.is_some() {
            // The session was free: it simply started.
            result.turn.kind = TurnKind::Steer;
            drop(commit);
            let commit = self
                .store
                .write(vec![Write::Turn(self.turns[&turn_id].clone())]);
            return Ok((result, commit, start, None));
        }
        self.move_to_head(turn_id);
        let mut event = self.turn_event(&self.turns[&turn_id]);
        event.position = Some(1);
        self.events.publish(event_kind::TURN_PROMOTED, event);
        let mut stop = None;
        if !p.no_interrupt {
            if let Some(t) = self.turns.get_mut(&turn_id) {
                t.interrupts = true;
            }
            if let Some(running) = self.queues.get(&session).and_then(|q| q.running) {
                if let Some(t) = self.turns.get_mut(&running) {
                    // A stop withdrawn with an earlier steer is taken up again.
                    if matches!(t.stop, None | Some(Stop::SteerWithdrawn)) && !t.exited {
                        t.stop = Some(Stop::Steer);
                        stop = t.worker_pid.map(|pid| (running, pid));
                    }
                }
            }
        }
        let turn = &self.turns[&turn_id];
        result.turn = turn.info(self.position(turn_id));
        // Answer only once the steer's kind and place are saved too (the store commits in
        // order, so this commit covers the submit's).
        drop(commit);
        let commit = self.store.write(vec![Write::Turn(turn.clone())]);
        Ok((result, commit, None, stop))
    }

    /// Puts a queued turn at the head of its session's queue, with an order number below the
    /// old head's so the order survives a restart.
    fn move_to_head(&mut self, turn_id: TurnId) {
        let Some(session) = self.turns.get(&turn_id).map(|t| t.session) else {
            return;
        };
        let Some(queue) = self.queues.get_mut(&session) else {
            return;
        };
        queue.queued.retain(|t| *t != turn_id);
        let head_order = queue
            .queued
            .front()
            .and_then(|head| self.turns.get(head))
            .map(|t| t.order);
        queue.queued.push_front(turn_id);
        if let (Some(head), Some(turn)) = (head_order, self.turns.get_mut(&turn_id)) {
            turn.order = turn.order.min(head - 1);
        }
    }

    /// Moves a queued turn to the head of its queue.
    pub fn promote(
        &mut self,
        selector: &str,
    ) -> Result<(sessiond_proto::session::TurnInfo, Commit), RequestError> {
        self.writable()?;
        let id = self.resolve_turn(selector)?;
        if self.turns[&id].status == TurnStatus::Running {
            return Err(invalid_state(format!(
                "turn {} is already running; promote moves queued turns",
                id.short()
            )));
        }
        self.move_to_head(id);
        let turn = self.turns[&id].clone();
        let mut event = self.turn_event(&turn);
        event.position = Some(1);
        self.events.publish(event_kind::TURN_PROMOTED, event);
        let info = turn.info(self.position(id));
        Ok((info, self.store.write(vec![Write::Turn(turn)])))
    }

    /// Attaches a session to a client's process, for connection `conn`.
    pub fn attach(
        &mut self,
        p: &AttachParams,
        conn: u64,
    ) -> Result<(SessionInfo, Commit), RequestError> {
        self.writable()?;
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        self.live(id)?;
        if let Some((_, pid)) = self.attached.get(&id) {
            return Err(RequestError::new(
                ErrorCode::BUSY,
                format!(
                    "session {} is already attached to pid {pid}; wait for it (`sessionctl run \
                     --wait`)",
                    id.short()
                ),
            ));
        }
        if let Some(turn) = self.queues.get(&id).and_then(|q| q.running) {
            return Err(RequestError::new(
                ErrorCode::BUSY,
                format!(
                    "session {} is running turn {}; wait for it (`sessionctl run --wait`) or \
                     cancel it (`sessionctl cancel {}`)",
                    id.short(),
                    turn.short(),
                    turn.short()
                ),
            ));
        }
        let write = self.set_activity(
            id,
            Activity::Attached,
            &format!("attached to pid {}", p.pid),
        );
        self.attached.insert(id, (conn, p.pid));
        let info = self.session(id).info();
        Ok((info, self.store.write(write.into_iter().collect())))
    }

    /// Ends connection `conn`'s attachment of a session; returns the next turn to start.
    pub fn detach(
        &mut self,
        p: &SessionParams,
        conn: u64,
    ) -> Result<(SessionInfo, Commit, Option<StartOrder>), RequestError> {
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        match self.attached.get(&id) {
            Some((owner, _)) if *owner == conn => {}
            _ => {
                return Err(invalid_state(format!(
                    "session {} is not attached through this connection",
                    id.short()
                )))
            }
        }
        let (writes, order) = self.end_attachment(id);
        let info = self.session(id).info();
        Ok((info, self.store.write(writes), order))
    }

    fn end_attachment(&mut self, id: SessionId) -> (Vec<Write>, Option<StartOrder>) {
        self.attached.remove(&id);
        let paused = self.queues.get(&id).is_some_and(|q| q.paused.is_some());
        let rest = if paused {
            Activity::Paused
        } else {
            Activity::Idle
        };
        let mut writes: Vec<Write> = self
            .set_activity(id, rest, "detached")
            .into_iter()
            .collect();
        let stopping = self.stopping;
        let next = self
            .queues
            .get_mut(&id)
            .filter(|q| q.paused.is_none() && q.running.is_none() && !stopping)
            .and_then(|q| q.queued.pop_front());
        let order = next.map(|turn| {
            writes.extend(self.sync_queue_length(id));
            self.start(turn, &mut writes)
        });
        (writes, order)
    }

    /// A connection closed: its subscriptions end, and sessions it attached are detached
    /// (its process is gone or no longer speaking for them). Returns turns to start.
    pub fn connection_closed(&mut self, conn: u64) -> Vec<StartOrder> {
        self.events.drop_connection(conn);
        let mine: Vec<SessionId> = self
            .attached
            .iter()
            .filter(|(_, (owner, _))| *owner == conn)
            .map(|(id, _)| *id)
            .collect();
        let mut orders = Vec::new();
        for id in mine {
            let (writes, order) = self.end_attachment(id);
            drop(self.store.write(writes));
            orders.extend(order);
        }
        orders
    }

    /// Finds an unsettled turn by full id or unique prefix.
    fn resolve_turn(&self, selector: &str) -> Result<TurnId, RequestError> {
        let sel = selector.trim();
        if sel.is_empty() {
            return Err(invalid(format!(
                "the turn to act on is empty; give its id or at least {MIN_PREFIX} hex digits \
                 of it (`sessionctl queue` lists them)"
            )));
        }
        if let Ok(id) = sel.parse::<TurnId>() {
            if self.turns.contains_key(&id) {
                return Ok(id);
            }
        }
        let Some(hex) = turn_digits(sel).filter(|hex| hex.len() >= MIN_PREFIX) else {
            return Err(not_found(format!(
                "no queued or running turn matches {sel:?}; give its id or at least \
                 {MIN_PREFIX} hex digits of it (`sessionctl queue` lists them)"
            )));
        };
        let found: Vec<TurnId> = self
            .turns
            .keys()
            .filter(|id| id.0.simple().to_string().starts_with(&hex))
            .copied()
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(not_found(format!(
                "no queued or running turn matches {sel:?}; settled turns cannot be changed \
                 (`sessionctl queue` lists the live ones)"
            ))),
            many => Err(RequestError::new(
                ErrorCode::AMBIGUOUS,
                format!(
                    "turn prefix {sel:?} matches {} turns: {}; give more digits",
                    many.len(),
                    many.iter()
                        .map(|t| t.short())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Cancels a turn. A queued one is settled at once; for a running one the answer carries
    /// its worker's pid, which the caller must signal (the turn settles when it exits).
    pub fn cancel(&mut self, selector: &str) -> Result<Cancelled, RequestError> {
        self.writable()?;
        let id = self.resolve_turn(selector)?;
        let turn = self.turns.get_mut(&id).expect("resolved");
        if turn.status == TurnStatus::Running && turn.worker_pid.is_none() && !turn.launching {
            // Waiting for a slot under max_concurrent_turns: nothing ran, so nothing is held;
            // the next queued turn takes its place. The cancel supersedes a steer's stop.
            turn.stop = None;
            let (turn, next) = self
                .settle_turn(
                    id,
                    TurnStatus::Cancelled,
                    None,
                    Some("cancelled by a client before it started".into()),
                )
                .expect("resolved");
            return Ok(Cancelled {
                turn: turn.info(None),
                saved: self.barrier(),
                worker: None,
                next,
            });
        }
        if turn.status == TurnStatus::Running && turn.exited {
            return Err(invalid_state(format!(
                "turn {} has already finished (its last output is being saved); nothing is \
                 left to cancel. `sessionctl log` shows how it settled",
                id.short()
            )));
        }
        if turn.status == TurnStatus::Running {
            turn.stop = Some(Stop::Cancel);
            let (info, pid) = (turn.info(None), turn.worker_pid);
            return Ok(Cancelled {
                turn: info,
                saved: self.barrier(),
                worker: pid,
                next: None,
            });
        }
        let mut turn = self.turns.remove(&id).expect("resolved");
        turn.status = TurnStatus::Cancelled;
        turn.ended_at = Some(sessiond_proto::now_ms());
        turn.error = Some("cancelled by a client before it started".into());
        if let Some(q) = self.queues.get_mut(&turn.session) {
            q.queued.retain(|t| *t != id);
        }
        if turn.interrupts {
            self.withdraw_steer(turn.session);
        }
        let mut writes = vec![Write::Turn(turn.clone())];
        writes.extend(self.sync_queue_length(turn.session));
        let mut event = self.turn_event(&turn);
        event.status = Some(TurnStatus::Cancelled);
        event.reason = turn.error.clone();
        self.events.publish(event_kind::TURN_SETTLED, event);
        Ok(Cancelled {
            turn: turn.info(None),
            saved: self.store.write(writes),
            worker: None,
            next: None,
        })
    }

    /// The runner has a slot for a turn and goes on to start it; false when the turn was
    /// settled meanwhile (cancelled while it waited), and there is nothing to start.
    pub fn begin_launch(&mut self, turn: TurnId) -> bool {
        match self.turns.get_mut(&turn) {
            Some(t) if t.status == TurnStatus::Running => {
                t.launching = true;
                true
            }
            _ => false,
        }
    }

    /// The worker pid of a turn still running, if it has one and it has not exited (a pid
    /// already reaped may be another process's by now).
    pub fn worker_of(&self, turn: TurnId) -> Option<u32> {
        self.turns
            .get(&turn)
            .filter(|t| t.status == TurnStatus::Running && !t.exited)
            .and_then(|t| t.worker_pid)
    }

    /// The worker pid of a turn still being stopped, for the next, harder signal: none once
    /// the stop was withdrawn (its steer cancelled) or the worker is gone.
    pub fn worker_to_press(&self, turn: TurnId) -> Option<u32> {
        self.worker_of(turn)
            .filter(|_| self.turns.get(&turn).is_some_and(Turn::pressed))
    }

    /// After a queued steer is cancelled: unless another steer is still waiting, the running
    /// turn it was stopping is stopped no further. A worker not started yet is not stopped
    /// at all; one that has had its SIGINT settles `interrupted` if it exits.
    fn withdraw_steer(&mut self, session: SessionId) {
        let Some(queue) = self.queues.get(&session) else {
            return;
        };
        let steer_waits = queue
            .queued
            .iter()
            .any(|t| self.turns.get(t).is_some_and(|t| t.interrupts));
        let Some(running) = queue.running.filter(|_| !steer_waits) else {
            return;
        };
        if let Some(t) = self.turns.get_mut(&running) {
            if t.stop == Some(Stop::Steer) {
                t.stop = t.worker_pid.map(|_| Stop::SteerWithdrawn);
            }
        }
    }

    /// Records that a turn's worker has exited; its output may still be draining.
    pub fn worker_exited(&mut self, turn: TurnId) {
        if let Some(t) = self.turns.get_mut(&turn) {
            t.exited = true;
        }
    }

    /// Whether a client's cancel or steer is to stop the turn: a turn that cannot start then
    /// settles as that asked, rather than going back to its queue.
    pub fn stopped_by_client(&self, turn: TurnId) -> bool {
        self.turns
            .get(&turn)
            .is_some_and(|t| matches!(t.stop, Some(Stop::Cancel | Stop::Steer)))
    }

    /// Whether the turn is to be stopped (the runner checks before starting it).
    pub fn stop_requested(&self, turn: TurnId) -> bool {
        self.turns.get(&turn).is_some_and(|t| t.stop.is_some())
    }

    /// Marks the daemon as stopping: from now on no turn starts (see [`Self::hold_if_stopping`])
    /// and a settled turn hands out no next one.
    pub fn begin_stopping(&mut self) {
        self.stopping = true;
    }

    /// At a graceful stop: every running turn is to end `interrupted`, its queue held (a cancel
    /// already under way stays a cancel). Returns the workers to signal: those no stop was
    /// already under way for, so none gets a second SIGINT.
    pub fn stop_all(&mut self) -> Vec<(TurnId, u32)> {
        self.stopping = true;
        let mut to_signal = Vec::new();
        // A turn being cancelled or steered stays so (its worker has had its SIGINT), and one
        // whose worker has exited keeps its exit status.
        for t in self.turns.values_mut().filter(|t| t.to_end_at_stop()) {
            if let Some(pid) = t.worker_pid {
                to_signal.push((t.id, pid));
            }
            t.stop = Some(Stop::Shutdown);
        }
        to_signal
    }

    /// Turns whose worker runs and that a stop would end `interrupted` (not those being
    /// cancelled or steered, nor those not started yet, which go back to their queues).
    pub fn turns_to_end(&self) -> usize {
        self.turns
            .values()
            .filter(|t| t.to_end_at_stop() && t.worker_pid.is_some())
            .count()
    }

    /// How many turns are running (or about to: started, waiting for a slot).
    pub fn running_turns(&self) -> usize {
        self.turns
            .values()
            .filter(|t| t.status == TurnStatus::Running)
            .count()
    }

    /// The workers running now, for a stop that cannot wait for them.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.turns
            .values()
            .filter(|t| t.status == TurnStatus::Running && !t.exited)
            .filter_map(|t| t.worker_pid)
            .collect()
    }

    /// Once the daemon is stopping, a turn about to start goes back to the head of its queue,
    /// held, as if it had never left it; returns whether it did. A turn being cancelled or
    /// steered away settles as that says instead.
    pub fn hold_if_stopping(&mut self, turn: TurnId) -> bool {
        let stop = self.turns.get(&turn).and_then(|t| t.stop);
        if !self.stopping || matches!(stop, Some(Stop::Cancel | Stop::Steer)) {
            return false;
        }
        self.requeue_blocked(turn, DAEMON_STOPPED);
        true
    }

    /// Turns that were running when the previous daemon stopped, for settlement at start-up.
    pub fn found_running(&self) -> Vec<Turn> {
        self.turns
            .values()
            .filter(|t| t.status == TurnStatus::Running)
            .cloned()
            .collect()
    }

    /// Settles a turn found running at start-up as interrupted and pauses its session's
    /// queue, so nothing queued runs on a context the crash may have broken.
    pub fn interrupted_at_startup(&mut self, turn: TurnId) {
        let Some(session) = self.turns.get(&turn).map(|t| t.session) else {
            return;
        };
        self.queues.entry(session).or_default().paused = Some("daemon_restarted".into());
        self.settle(
            turn,
            TurnStatus::Interrupted,
            None,
            Some("the daemon stopped while it ran; resume the queue to go on".into()),
        );
        self.publish_paused(session, "daemon_restarted");
    }

    /// The session's running turn and queue.
    pub fn queue(&self, p: &SessionParams) -> Result<QueueResult, RequestError> {
        let context = context_name(p.context.as_deref())?;
        let id = self.resolve(p.session.as_deref(), p.project.as_deref(), &context)?;
        let queue = self.queues.get(&id);
        Ok(QueueResult {
            session: id,
            paused: queue.and_then(|q| q.paused.clone()),
            running: queue
                .and_then(|q| q.running)
                .and_then(|t| self.turns.get(&t))
                .map(|t| t.info(None)),
            queued: queue
                .map(|q| {
                    q.queued
                        .iter()
                        .enumerate()
                        .filter_map(|(i, t)| self.turns.get(t).map(|t| t.info(Some(i as u32 + 1))))
                        .collect()
                })
                .unwrap_or_default(),
            attached: self.attached_pid(id),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_digits_drop_dashes_and_case_and_refuse_anything_else() {
        assert_eq!(turn_digits(" 2534AEC1-28 ").as_deref(), Some("2534aec128"));
        assert_eq!(turn_digits("f").as_deref(), Some("f"));
        for bad in ["", " ", "-", "--", "%", "ab_c", "abcg", "ab cd"] {
            assert_eq!(turn_digits(bad), None, "{bad:?}");
        }
    }

    fn registry() -> (Registry, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        (
            Registry::new(store, loaded, crate::provider::builtin(), |_| false).unwrap(),
            dir,
        )
    }

    fn create(r: &mut Registry, project: &Path, name: Option<&str>) -> SessionId {
        r.create(CreateParams {
            project: project.display().to_string(),
            provider: "shell".into(),
            name: name.map(str::to_string),
            cwd: None,
        })
        .unwrap()
        .0
        .id
    }

    /// The packed key orders a listing exactly as its definition: most recently active
    /// first, then newest, then by id, with times that tie in every combination.
    #[test]
    fn listing_order_is_activity_then_creation_then_id() {
        let (mut r, dir) = registry();
        let ids: Vec<SessionId> = (0..60).map(|_| create(&mut r, dir.path(), None)).collect();
        for (i, id) in ids.iter().enumerate() {
            let s = r.sessions.get_mut(id).unwrap();
            // Three activity times, four creation times, across the full u64 range's edges.
            s.last_active_at = [0, 1_700_000_000_000, u64::MAX][i % 3];
            s.created_at = [0, 5, 1_700_000_000_000, u64::MAX - 1][(i / 3) % 4];
        }
        let listed: Vec<SessionId> = r
            .list(&ListParams::default())
            .unwrap()
            .sessions
            .iter()
            .map(|s| s.id)
            .collect();
        let mut expected: Vec<&Session> = r.sessions.values().collect();
        expected.sort_by(|a, b| {
            (b.last_active_at, b.created_at)
                .cmp(&(a.last_active_at, a.created_at))
                .then(a.id.cmp(&b.id))
        });
        let expected: Vec<SessionId> = expected.iter().map(|s| s.id).collect();
        assert_eq!(listed, expected);
    }

    #[test]
    fn prefix_lookup_finds_one_and_reports_ambiguity_with_candidates() {
        let (mut r, dir) = registry();
        let ids: Vec<SessionId> = (0..40).map(|_| create(&mut r, dir.path(), None)).collect();
        for id in &ids {
            let text = id.to_string();
            assert_eq!(r.resolve(Some(&text[..13]), None, "default").unwrap(), *id);
        }
        // A 4-digit prefix is required; shorter input is not treated as a prefix.
        let first = ids[0].to_string();
        let err = r.resolve(Some(&first[..3]), None, "default").unwrap_err();
        assert_eq!(err.code, ErrorCode::NOT_FOUND);
    }

    #[test]
    fn names_are_unique_per_project_and_scoped_lookups_disambiguate() {
        let (mut r, dir) = registry();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let in_a = create(&mut r, &a, Some("fix-bug"));
        let in_b = create(&mut r, &b, Some("fix-bug"));
        let err = r
            .create(CreateParams {
                project: a.display().to_string(),
                provider: "shell".into(),
                name: Some("fix-bug".into()),
                cwd: None,
            })
            .unwrap_err();
        assert!(err.message.contains("already used"), "{}", err.message);
        let err = r.resolve(Some("fix-bug"), None, "default").unwrap_err();
        assert_eq!(err.code, ErrorCode::AMBIGUOUS);
        assert!(err.message.contains(&in_a.short()) && err.message.contains(&in_b.short()));
        let a_text = std::fs::canonicalize(&a).unwrap().display().to_string();
        assert_eq!(
            r.resolve(Some("fix-bug"), Some(&a_text), "default")
                .unwrap(),
            in_a
        );
    }

    #[test]
    fn rebind_binds_then_keeps_old_provider_ids_as_aliases() {
        let (mut r, dir) = registry();
        let id = create(&mut r, dir.path(), None);
        r.rebind(id, "prov-1").unwrap();
        assert_eq!(r.session(id).phase, Phase::Bound);
        assert!(
            r.rebind(id, "prov-1").unwrap().is_none(),
            "same id: no change"
        );
        r.rebind(id, "prov-2").unwrap();
        let s = r.session(id);
        assert_eq!(s.provider_session_id.as_deref(), Some("prov-2"));
        assert_eq!(s.aliases, vec!["prov-1".to_string()]);
        for alias in ["prov-1", "prov-2"] {
            assert_eq!(r.resolve(Some(alias), None, "default").unwrap(), id);
        }
        // created; provisional→bound state change; two rebounds (the repeat published nothing)
        assert_eq!(r.events.seq(), 4);
    }

    #[test]
    fn switch_bumps_generation_and_reopens_archived() {
        let (mut r, dir) = registry();
        let id = create(&mut r, dir.path(), Some("s"));
        let params = SessionParams {
            session: Some("s".into()),
            ..Default::default()
        };
        r.archive(&params).unwrap();
        let (first, _) = r.switch(&params).unwrap();
        assert_eq!(first.generation, 1);
        let info = first.session.unwrap();
        assert_eq!((info.id, info.phase), (id, Phase::Provisional));
        let (second, _) = r.switch(&params).unwrap();
        assert_eq!(second.generation, 2);
    }
}
