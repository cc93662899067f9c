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
    /// Its worker has exited (its output may still be draining): there is nothing left to
    /// stop, and its exit status stands.
    pub exited: bool,
    /// The runner has a slot for it and is starting its worker. Before that a cancel settles
    /// it at once: there is no process to stop.
    pub launching: bool,
    /// A steer that stops the running turn (not `--no-interrupt`); cancelling it while queued
    /// withdraws that stop. Not stored: a restart ends every stop.
    pub interrupts: bool,
}

/// Why a running turn is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// A client cancelled it: it settles `cancelled` and pauses the queue.
    Cancel,
    /// A steer takes its place: it settles `interrupted`, and the steer runs next.
    Steer,
    /// The steer that interrupted it was cancelled before it ran: its worker has had its
    /// SIGINT, but is not pressed further; it settles `interrupted` if it exits, and the queue
    /// goes on.
    SteerWithdrawn,
    /// The daemon is stopping: it settles `interrupted` and pauses the queue, as a restart
    /// after a crash would leave it, but with its worker ended and its output saved.
    Shutdown,
}

impl Turn {
    /// Whether a stop of the daemon is to end it: running, its worker not exited, and no
    /// cancel or steer already stopping it.
    pub fn to_end_at_stop(&self) -> bool {
        self.status == TurnStatus::Running
            && matches!(self.stop, None | Some(Stop::SteerWithdrawn))
            && !self.exited
    }

    /// Whether its worker is to be pressed on (SIGTERM, then SIGKILL) if SIGINT did not end it.
    pub fn pressed(&self) -> bool {
        matches!(self.stop, Some(Stop::Cancel | Stop::Steer | Stop::Shutdown))
    }

    /// A new turn at the back of `session`'s queue (position `order`), not yet started.
    pub fn queued(session: SessionId, order: i64, prompt: String, created_at: u64) -> Turn {
        Turn {
            id: TurnId::new_v4(),
            session,
            order,
            prompt,
            kind: TurnKind::Normal,
            status: TurnStatus::Queued,
            created_at,
            started_at: None,
            ended_at: None,
            exit_code: None,
            error: None,
            worker_pid: None,
            worker_start_time: None,
            output_chunks: 0,
            output_bytes: 0,
            output_truncated: false,
            output_unsaved: 0,
            stop: None,
            exited: false,
            launching: false,
            interrupts: false,
        }
    }

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

/// The length of the longest prefix of `bytes` that does not end inside a UTF-8 character:
/// everything but a trailing lead byte whose continuation bytes have not all arrived. Output
/// is cut there so a character split across two pipe reads (or by the output cap) reaches
/// clients whole instead of as two replacement characters. Bytes that are not UTF-8 at all
/// are never held back.
pub fn utf8_complete_prefix(bytes: &[u8]) -> usize {
    // A character is at most 4 bytes, so only the last 3 can be an unfinished one.
    for back in 1..=bytes.len().min(3) {
        let at = bytes.len() - back;
        let byte = bytes[at];
        if byte & 0b1100_0000 == 0b1000_0000 {
            continue; // a continuation byte: its lead is further back
        }
        let needs = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return bytes.len(), // ASCII or never a lead byte
        };
        return if back < needs { at } else { bytes.len() };
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::utf8_complete_prefix;

    #[test]
    fn a_character_cut_short_is_held_back_and_anything_else_is_not() {
        let e_acute = "é".as_bytes(); // 2 bytes
        let euro = "€".as_bytes(); // 3 bytes
        let crab = "🦀".as_bytes(); // 4 bytes
        assert_eq!(utf8_complete_prefix(b""), 0);
        assert_eq!(utf8_complete_prefix(b"abc"), 3);
        assert_eq!(utf8_complete_prefix(&[b'a', e_acute[0]]), 1);
        assert_eq!(utf8_complete_prefix(&[b'a', e_acute[0], e_acute[1]]), 3);
        assert_eq!(utf8_complete_prefix(&euro[..2]), 0);
        assert_eq!(utf8_complete_prefix(euro), 3);
        for cut in 1..4 {
            assert_eq!(utf8_complete_prefix(&[b"xy", &crab[..cut]].concat()), 2);
        }
        assert_eq!(utf8_complete_prefix(crab), 4);
        // Invalid bytes pass through: a stray continuation, 0xFF, a lone 0xC0.
        assert_eq!(utf8_complete_prefix(&[b'a', 0x80, 0x80, 0x80]), 4);
        assert_eq!(utf8_complete_prefix(&[0xFF]), 1);
        assert_eq!(utf8_complete_prefix(&[b'a', 0xC0]), 2);
    }
}
