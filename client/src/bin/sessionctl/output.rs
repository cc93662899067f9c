//! Printing results and errors, in human or JSON form, in one place.
//!
//! Every command hands its result here as a serializable value plus a closure that renders it
//! for people; `--json` picks the first, otherwise the second. A closed stdout (`| head`) ends
//! output quietly instead of panicking.

use std::io::{self, Write};

use serde::Serialize;
use sessiond_client::{ClientError, RawResult};

/// Where and how a command prints.
pub struct Out {
    pub json: bool,
}

impl Out {
    /// Prints `value` as JSON, or runs `human` to print it for people, with terminal control
    /// characters shown as escapes (see [`Visible`]).
    pub fn emit<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), ClientError> {
        self.emit_verbatim(value, |w| human(&mut Visible(w)))
    }

    /// [`Self::emit`] for the one human form that must pass bytes on as they are: a
    /// transcript, whose turns' output keeps its colours. Its writer escapes the rest itself.
    pub fn emit_verbatim<T: Serialize>(
        &self,
        value: &T,
        human: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    ) -> Result<(), ClientError> {
        // Buffered: a listing of thousands of sessions is one write, not one per line.
        let mut lock = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
        let result = if self.json {
            serde_json::to_writer_pretty(&mut lock, value)
                .map_err(io::Error::from)
                .and_then(|()| writeln!(lock))
        } else {
            human(&mut lock)
        };
        written(result.and_then(|()| lock.flush()))
    }
}

/// A writer for text shown to people that comes partly from elsewhere (project paths, names,
/// provider ids, prompts, the daemon's messages): terminal control characters in it are
/// written as escapes (`\u{1b}`, `\r`), newlines and tabs kept, so such text cannot move the
/// cursor, retitle the window, recolour the terminal or hide what precedes it.
pub struct Visible<W: Write>(pub W);

impl<W: Write> Write for Visible<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Formatting writes whole `str` pieces, so a character is never split between calls.
        self.0
            .write_all(visible(&String::from_utf8_lossy(buf)).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `text` with terminal control characters (C0 but newline and tab, DEL, C1) escaped.
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.contains(hidden) {
        return text.into();
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if hidden(c) {
            shown.extend(c.escape_default());
        } else {
            shown.push(c);
        }
    }
    shown.into()
}

impl Out {
    /// Prints a result as JSON straight from the daemon's MessagePack, without decoding it
    /// into typed values first (see `RawResult`): `--json` output is the result exactly as
    /// PROTOCOL.md describes it, so the two forms carry the same fields.
    pub fn emit_raw(&self, raw: &RawResult) -> Result<(), ClientError> {
        let mut lock = io::stdout().lock();
        match raw.write_json(&mut lock).and_then(|()| writeln!(lock)) {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                Err(ClientError::Protocol(e.to_string()))
            }
            result => written(result.and_then(|()| lock.flush())),
        }
    }
}

/// The end of printing: a closed stdout (`| head`) is a quiet success, any other failure an
/// error naming it.
pub fn written(result: io::Result<()>) -> Result<(), ClientError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(ClientError::Local(format!("cannot write output: {e}"))),
    }
}

/// Prints an error on stderr and returns its exit status.
pub fn report(err: &ClientError, json: bool) -> u8 {
    let code = err.exit_code();
    if json {
        let doc = serde_json::json!({
            "error": { "code": err.code(), "message": err.to_string(), "exit_code": code }
        });
        eprintln!("{doc}");
    } else {
        eprintln!("sessionctl: {}", visible(&err.to_string()));
    }
    code
}

/// How long ago `then` was, as people read it in a table: "12s ago", "5m ago", "3h ago".
pub fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Renders a duration in milliseconds the way people read uptimes: "3d 4h", "2h 5m", "4m 10s".
pub fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_and_text_kept() {
        assert_eq!(
            visible("/tmp/p\u{1b}[2J\u{1b}]0;T\u{7}x\r\u{9b}y\u{7f}"),
            "/tmp/p\\u{1b}[2J\\u{1b}]0;T\\u{7}x\\r\\u{9b}y\\u{7f}"
        );
        assert_eq!(visible("a\tb\nc ü €"), "a\tb\nc ü €");
        let mut w = Visible(Vec::new());
        let red = "\u{1b}[31m";
        writeln!(w, "{red} ok").unwrap();
        assert_eq!(w.0, b"\\u{1b}[31m ok\n");
    }
}
