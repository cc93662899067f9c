//! A session's record and the state machine that every change of its phase or activity goes
//! through. The registry owns the records; this module only says which moves are legal, so an
//! invalid transition is an error at the one place that can make it, never a silent overwrite.
//!
//! A listing is written straight from these records (see `listing`), not from copies made
//! with [`Session::info`].

use std::sync::Arc;

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

/// A refused transition, worded for the user.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidTransition(pub String);

impl Session {
    /// `project::provider::id`.
    pub fn scope(&self) -> String {
        format!("{}::{}::{}", self.project, self.provider, self.id)
    }

    /// The record as clients see it (without the owner, which `get` adds).
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
