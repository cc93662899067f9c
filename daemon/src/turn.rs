//! A turn's record: one prompt run through a session's provider. The registry owns the turns
//! that are not settled (queued or running); settled ones live only in the database.

use sessiond_proto::session::{SessionId, TurnId, TurnInfo, TurnKind, TurnStatus};

/// One turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub id: TurnId,
    pub session: SessionId,
    /// Sorts the session's queue; kept in the database so the order survives a restart. A
    /// steered or promoted turn takes a number below the head's.
    pub order: i64,
    pub prompt: String,
    pub kind: TurnKind,
    pub status: TurnStatus,
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// The worker process, while running, and its start time (guards against pid reuse when
    /// a restarted daemon looks for it).
    pub worker_pid: Option<u32>,
    pub worker_start_time: Option<u64>,
    /// Output chunks recorded so far (numbers the next one).
    pub output_chunks: u64,
    /// Output bytes kept so far, against the per-turn cap.
    pub output_bytes: u64,
    /// The cap was passed: the marker was sent and further output is discarded.
    pub output_truncated: bool,
    /// Output bytes streamed to subscribers but not saved, because the database could not be
    /// written at the time; the settled turn's error says so.
    pub output_unsaved: u64,
    /// Why it is being stopped while it runs, if it is.
    pub stop: Option<Stop>,
}

/// Why a running turn is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A client cancelled it: it settles `cancelled` and pauses the queue.
    Cancel,
    /// A steer takes its place: it settles `interrupted`, and the steer runs next.
    Steer,
}

impl Turn {
    pub fn info(&self, position: Option<u32>) -> TurnInfo {
        TurnInfo {
            turn_id: self.id,
            session: self.session,
            prompt: self.prompt.clone(),
            kind: self.kind,
            status: self.status,
            position,
            created_at: self.created_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            exit_code: self.exit_code,
            error: self.error.clone(),
        }
    }
}
