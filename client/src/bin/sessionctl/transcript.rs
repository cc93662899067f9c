//! How a session's transcript reads for people: `log` prints stored turns through it, and
//! `log --follow` prints the same, then live turns in the same form (a live turn's header
//! comes without its prompt, which events do not carry).
//!
//! A turn is a header line (`── ID STATUS (exit N) · AGE ──`), its prompt (`$ ` on the first
//! line, `> ` on each further one, so a prompt of several lines cannot pass for output), its
//! output as it was written, and its error in brackets. Output that does not end in a newline
//! gets one before the next line of ours, or it would run into the next header.

use std::io::{self, Write};

use sessiond_proto::methods::LogTurn;
use sessiond_proto::session::TurnId;

use crate::output::visible;

/// Writes transcript lines to `W`, keeping track of whether output left a line open and
/// whose header came last.
pub struct Transcript<W: Write> {
    w: W,
    /// Whether the last byte written ended a line (or nothing was written yet).
    at_line_start: bool,
    /// The turn whose header was written last: output of another turn needs its own first.
    shown: Option<TurnId>,
}

impl<W: Write> Transcript<W> {
    pub fn new(w: W) -> Self {
        Transcript {
            w,
            at_line_start: true,
            shown: None,
        }
    }

    /// A header for `turn`: `── ID STATUS (exit N) · AGE ──`, the parts given.
    pub fn header(
        &mut self,
        turn: TurnId,
        status: &str,
        exit_code: Option<i32>,
        age: Option<&str>,
    ) -> io::Result<()> {
        let exit = exit_code.map_or(String::new(), |c| format!(" (exit {c})"));
        let age = age.map_or(String::new(), |a| format!(" · {a}"));
        self.shown = Some(turn);
        self.line(&format!("── {} {status}{exit}{age} ──", turn.short()))
    }

    /// The prompt: `$ ` before its first line, `> ` before each further one. Control
    /// characters are escaped: a carriage return or an escape sequence could otherwise make
    /// the prompt read as something other than what ran.
    pub fn prompt(&mut self, prompt: &str) -> io::Result<()> {
        let prompt = visible(prompt);
        let mut lines = prompt.lines();
        self.line(&format!("$ {}", lines.next().unwrap_or_default()))?;
        for line in lines {
            self.line(&format!("> {line}"))?;
        }
        Ok(())
    }

    /// Live output of `turn`, under a header of its own when another turn's came last (a
    /// queued turn's, shown after the running one; a turn that started meanwhile).
    pub fn output_of(&mut self, turn: TurnId, data: &str) -> io::Result<()> {
        if self.shown != Some(turn) && !data.is_empty() {
            self.header(turn, "running", None, None)?;
        }
        self.output(data)
    }

    /// Output exactly as the turn wrote it (colours and all: it is the turn's own).
    pub fn output(&mut self, data: &str) -> io::Result<()> {
        if let Some(&last) = data.as_bytes().last() {
            self.w.write_all(data.as_bytes())?;
            self.at_line_start = last == b'\n';
        }
        Ok(())
    }

    /// A turn's error, in brackets.
    pub fn error(&mut self, error: &str) -> io::Result<()> {
        self.line(&format!("[{}]", visible(error)))
    }

    /// A stored turn: header with its age, prompt, output, error. A turn a transcript's page
    /// cut goes on in the next page: there its header and prompt are not repeated, and its
    /// error comes where it `ends`.
    pub fn turn(&mut self, entry: &LogTurn, now_ms: u64, ends: bool) -> io::Result<()> {
        let t = &entry.turn;
        if self.shown != Some(t.turn_id) {
            let age = crate::output::ago(now_ms, t.created_at);
            self.header(t.turn_id, t.status.as_str(), t.exit_code, Some(&age))?;
            self.prompt(&t.prompt)?;
        }
        for chunk in &entry.output {
            self.output(&chunk.data)?;
        }
        match &t.error {
            Some(error) if ends => self.error(error),
            _ => Ok(()),
        }
    }

    /// Whether `turn`'s header was the last one written, so its output goes on under it.
    pub fn showing(&self, turn: TurnId) -> bool {
        self.shown == Some(turn)
    }

    /// Whether nothing has been written yet.
    pub fn is_empty(&self) -> bool {
        self.shown.is_none() && self.at_line_start
    }

    /// The writer, for a line that is not part of any turn.
    pub fn inner(&mut self) -> &mut W {
        &mut self.w
    }

    /// Ends an open line, so what follows starts on its own.
    pub fn end_line(&mut self) -> io::Result<()> {
        if !self.at_line_start {
            self.w.write_all(b"\n")?;
            self.at_line_start = true;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }

    /// One line of ours, on a line of its own.
    fn line(&mut self, text: &str) -> io::Result<()> {
        self.end_line()?;
        self.w.write_all(text.as_bytes())?;
        self.w.write_all(b"\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_without_a_final_newline_never_runs_into_the_next_line() {
        let turn: TurnId = "00000000-0000-0000-0000-000000000000".parse().unwrap();
        let mut t = Transcript::new(Vec::new());
        t.header(turn, "running", None, None).unwrap();
        t.prompt("first\nsecond").unwrap();
        t.output("partial").unwrap();
        t.header(turn, "completed", Some(0), None).unwrap();
        t.output("done\n").unwrap();
        t.error("boom").unwrap();
        t.output("").unwrap();
        t.end_line().unwrap();
        let text = String::from_utf8(t.w).unwrap();
        assert_eq!(
            text,
            "── 00000000 running ──\n$ first\n> second\npartial\n\
             ── 00000000 completed (exit 0) ──\ndone\n[boom]\n"
        );
    }

    #[test]
    fn a_turn_cut_between_pages_reads_as_one() {
        use sessiond_proto::methods::OutputChunk;
        use sessiond_proto::session::{TurnInfo, TurnKind, TurnStatus};
        let turn: TurnId = "00000000-0000-0000-0000-000000000000".parse().unwrap();
        let entry = |chunk: u64, data: &str| LogTurn {
            turn: TurnInfo {
                turn_id: turn,
                session: "00000000-0000-0000-0000-000000000001".parse().unwrap(),
                prompt: "make".into(),
                kind: TurnKind::Normal,
                status: TurnStatus::Failed,
                position: None,
                created_at: 0,
                started_at: None,
                ended_at: None,
                exit_code: Some(2),
                error: Some("exited with status 2".into()),
            },
            output: vec![OutputChunk {
                chunk,
                stream: "stdout".into(),
                data: data.into(),
            }],
        };
        let mut t = Transcript::new(Vec::new());
        t.turn(&entry(0, "first half, "), 0, false).unwrap();
        t.turn(&entry(1, "second half\n"), 0, true).unwrap();
        let text = String::from_utf8(t.w).unwrap();
        assert_eq!(
            text,
            "── 00000000 failed (exit 2) · 0s ago ──\n$ make\nfirst half, second half\n\
             [exited with status 2]\n"
        );
    }
}
