//! A session's record and the state machine that every change of its phase or activity goes
//! through. The registry owns the records; this module only says which moves are legal, so an
//! invalid transition is an error at the one place that can make it, never a silent overwrite.
//!
//! A session also serializes itself in the wire shape of [`SessionInfo`], borrowing its fields,
//! so a listing of thousands of sessions is encoded straight from the registry instead of first
//! being copied into owned records (which cost more than the encoding itself).

use std::cell::RefCell;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use sessiond_proto::session::{Activity, Phase, SessionId, SessionInfo};

/// One session, as the registry holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    /// Shared with every other session of the same provider (thousands of sessions, a handful
    /// of providers).
    pub provider: Arc<str>,
    /// Shared with every other session of the same project, for the same reason.
    pub project: Arc<str>,
    pub cwd: String,
    pub name: Option<String>,
    pub phase: Phase,
    pub activity: Activity,
    pub created_at: u64,
    pub updated_at: u64,
    pub last_active_at: u64,
    pub parent_id: Option<SessionId>,
    pub provider_session_id: Option<String>,
    /// Earlier provider ids, oldest first.
    pub aliases: Vec<String>,
    pub queue_length: u32,
}

/// The wire shape of [`SessionInfo`] over borrowed fields; field order, names and omissions
/// must stay those of `SessionInfo` (the test `serializes_exactly_like_its_info` holds them
/// together). `owner` is never part of a record the registry produces, so it is absent here.
#[derive(Serialize)]
struct InfoView<'a> {
    id: SessionId,
    scope: Scope<'a>,
    provider: &'a str,
    project: &'a str,
    cwd: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    phase: Phase,
    activity: Activity,
    created_at: u64,
    updated_at: u64,
    last_active_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_id: Option<SessionId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    aliases: &'a [String],
    queue_length: u32,
}

impl Serialize for Session {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        InfoView {
            id: self.id,
            scope: Scope(self),
            provider: &self.provider,
            project: &self.project,
            cwd: &self.cwd,
            name: self.name.as_deref(),
            phase: self.phase,
            activity: self.activity,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_active_at: self.last_active_at,
            parent_id: self.parent_id,
            provider_session_id: self.provider_session_id.as_deref(),
            aliases: &self.aliases,
            queue_length: self.queue_length,
        }
        .serialize(serializer)
    }
}

/// A session's `project::provider::id`, assembled in a reused buffer: a serializer needs the
/// whole string at once, and a fresh allocation per session is most of a listing's cost.
struct Scope<'a>(&'a Session);

thread_local! {
    static SCOPE_BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

impl Serialize for Scope<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let s = self.0;
        SCOPE_BUFFER.with_borrow_mut(|buf| {
            buf.clear();
            buf.push_str(&s.project);
            buf.push_str("::");
            buf.push_str(&s.provider);
            buf.push_str("::");
            let mut id = uuid::Uuid::encode_buffer();
            buf.push_str(s.id.0.hyphenated().encode_lower(&mut id));
            serializer.serialize_str(buf)
        })
    }
}

/// A refused transition, worded for the user.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidTransition(pub String);

impl Session {
    /// `project::provider::id`.
    pub fn scope(&self) -> String {
        format!("{}::{}::{}", self.project, self.provider, self.id)
    }

    /// The record as clients see it (without the owner, which `get` adds). Serializing the
    /// session itself gives the same bytes without the copies.
    pub fn info(&self) -> SessionInfo {
        SessionInfo {
            id: self.id,
            scope: self.scope(),
            provider: self.provider.to_string(),
            project: self.project.to_string(),
            cwd: self.cwd.clone(),
            name: self.name.clone(),
            phase: self.phase,
            activity: self.activity,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_active_at: self.last_active_at,
            parent_id: self.parent_id,
            provider_session_id: self.provider_session_id.clone(),
            aliases: self.aliases.clone(),
            queue_length: self.queue_length,
            owner: None,
        }
    }

    /// A short description for candidate lists and messages: `1a2b3c4d "name" (project, provider)`.
    pub fn describe(&self) -> String {
        match &self.name {
            Some(name) => format!(
                "{} {name:?} ({}, {})",
                self.id.short(),
                self.project,
                self.provider
            ),
            None => format!("{} ({}, {})", self.id.short(), self.project, self.provider),
        }
    }

    /// Moves the phase, if the state machine allows it.
    pub fn set_phase(&mut self, to: Phase) -> Result<Phase, InvalidTransition> {
        let from = self.phase;
        if !phase_allowed(from, to) {
            return Err(InvalidTransition(format!(
                "session {} cannot go from {} to {}",
                self.id.short(),
                from.as_str(),
                to.as_str()
            )));
        }
        self.phase = to;
        Ok(from)
    }

    /// Moves the activity, if the state machine allows it.
    pub fn set_activity(&mut self, to: Activity) -> Result<Activity, InvalidTransition> {
        let from = self.activity;
        if !activity_allowed(from, to) {
            return Err(InvalidTransition(format!(
                "session {} cannot go from {} to {}",
                self.id.short(),
                from.as_str(),
                to.as_str()
            )));
        }
        self.activity = to;
        Ok(from)
    }

    /// The phase a reopened session returns to: bound if the provider ever named it.
    pub fn reopened_phase(&self) -> Phase {
        if self.provider_session_id.is_some() {
            Phase::Bound
        } else {
            Phase::Provisional
        }
    }
}

/// Legal phase moves. Archiving is allowed from any live phase; reopening returns an archived
/// session to provisional or bound; a failed session can only be archived.
pub fn phase_allowed(from: Phase, to: Phase) -> bool {
    use Phase::*;
    matches!(
        (from, to),
        (Provisional, Bound)
            | (Bound, Bound) // a provider changing its id (rebind)
            | (Provisional | Bound, Archived)
            | (Provisional | Bound, Failed)
            | (Failed, Archived)
            | (Archived, Provisional | Bound)
    )
}

/// Legal activity moves: a turn's life (idle → starting → running → idle, with waiting for
/// input and stopping on the way), holding the queue (paused), and an external owner
/// (attached). Any activity may return to idle, which is how settlement ends a turn.
pub fn activity_allowed(from: Activity, to: Activity) -> bool {
    use Activity::*;
    if from == to {
        return false;
    }
    matches!(
        (from, to),
        (_, Idle)
            | (Idle | Paused, Starting)
            | (Starting | WaitingInput, Running)
            | (Running, WaitingInput)
            | (Starting | Running | WaitingInput, Stopping)
            | (Idle | Starting | Running | WaitingInput | Stopping, Paused)
            | (Idle | Paused, Attached)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_and_reopen_are_legal_and_failed_is_terminal_but_for_archive() {
        assert!(phase_allowed(Phase::Provisional, Phase::Archived));
        assert!(phase_allowed(Phase::Archived, Phase::Bound));
        assert!(!phase_allowed(Phase::Archived, Phase::Archived));
        assert!(!phase_allowed(Phase::Failed, Phase::Bound));
        assert!(phase_allowed(Phase::Failed, Phase::Archived));
        assert!(!phase_allowed(Phase::Bound, Phase::Provisional));
    }

    #[test]
    fn activity_follows_a_turns_life() {
        assert!(activity_allowed(Activity::Idle, Activity::Starting));
        assert!(activity_allowed(Activity::Starting, Activity::Running));
        assert!(activity_allowed(Activity::Running, Activity::WaitingInput));
        assert!(activity_allowed(Activity::Running, Activity::Idle));
        assert!(!activity_allowed(Activity::Idle, Activity::Running));
        assert!(!activity_allowed(Activity::Attached, Activity::Starting));
        assert!(!activity_allowed(Activity::Idle, Activity::Idle));
    }

    fn session(full: bool) -> Session {
        Session {
            id: SessionId::new_v4(),
            provider: "claude".into(),
            project: "/srv/a project/ünï".into(),
            cwd: "/srv/a project/ünï/sub".into(),
            name: full.then(|| "fix \"the\" bug".to_string()),
            phase: Phase::Bound,
            activity: Activity::Running,
            created_at: 1,
            updated_at: 2,
            last_active_at: u64::MAX,
            parent_id: full.then(SessionId::new_v4),
            provider_session_id: full.then(|| "prov-1".to_string()),
            aliases: if full {
                vec!["old-1".into(), "old-2".into()]
            } else {
                vec![]
            },
            queue_length: 70_000,
        }
    }

    #[test]
    fn serializes_exactly_like_its_info() {
        for full in [false, true] {
            let s = session(full);
            assert_eq!(
                rmp_serde::to_vec_named(&s).unwrap(),
                rmp_serde::to_vec_named(&s.info()).unwrap(),
                "MessagePack differs (optional fields set: {full})"
            );
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                serde_json::to_string(&s.info()).unwrap(),
                "JSON differs (optional fields set: {full})"
            );
            // And decodes as the record clients read.
            let back: SessionInfo = rmp_serde::from_slice(&rmp_serde::to_vec_named(&s).unwrap())
                .expect("decodes as SessionInfo");
            assert_eq!(back, s.info());
        }
    }

    #[test]
    fn refused_transition_names_both_states_and_changes_nothing() {
        let mut s = Session {
            id: SessionId::new_v4(),
            provider: "shell".into(),
            project: "/p".into(),
            cwd: "/p".into(),
            name: None,
            phase: Phase::Failed,
            activity: Activity::Idle,
            created_at: 0,
            updated_at: 0,
            last_active_at: 0,
            parent_id: None,
            provider_session_id: None,
            aliases: vec![],
            queue_length: 0,
        };
        let err = s.set_phase(Phase::Bound).unwrap_err();
        assert!(
            err.0.contains("failed") && err.0.contains("bound"),
            "{}",
            err.0
        );
        assert_eq!(s.phase, Phase::Failed);
    }
}
