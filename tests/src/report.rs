//! Rows for `docs/reliability.md`, written by the tests that earn them.
//!
//! A reliability test ends, after its last assertion, by recording one [`Row`]: what it did,
//! how many times, what it checked and what it found. A row is written only when
//! `SESSIOND_RELIABILITY_DIR` names a directory (the test script sets it); each test binary
//! appends JSON lines to its own file there, one `write` per line so parallel tests in one
//! binary never interleave. The `sessiond-reliability-report` binary turns the directory into
//! the Markdown table, so the document is always a print of a real run, never typed by hand.
//!
//! Because the row is written after the assertions, a failing scenario leaves no row, and the
//! script that writes the document refuses to write it from a run that failed.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The environment variable naming the directory rows are written to.
pub const DIR_VAR: &str = "SESSIOND_RELIABILITY_DIR";

/// The report's sections, in the order the document shows them.
pub const SECTIONS: &[&str] = &["crash", "race", "fault", "bad input", "security", "load"];

/// One scenario's line in the reliability table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// One of [`SECTIONS`].
    pub section: String,
    /// Short name, unique in the report (the test's name is a good one).
    pub scenario: String,
    /// What was done to the daemon, in a sentence.
    pub done: String,
    /// How many times it was done (rounds, cases, kills, requests).
    pub runs: u64,
    /// What was checked afterwards.
    pub checked: String,
    /// What was found: figures, not adjectives ("0 of 4,512 acknowledged changes lost").
    pub result: String,
}

impl Row {
    pub fn new(section: &str, scenario: &str) -> Row {
        assert!(
            SECTIONS.contains(&section),
            "unknown reliability section {section:?}; use one of {SECTIONS:?}"
        );
        Row {
            section: section.to_owned(),
            scenario: scenario.to_owned(),
            done: String::new(),
            runs: 1,
            checked: String::new(),
            result: String::new(),
        }
    }

    pub fn done(mut self, text: impl Into<String>) -> Row {
        self.done = text.into();
        self
    }

    pub fn runs(mut self, runs: u64) -> Row {
        self.runs = runs;
        self
    }

    pub fn checked(mut self, text: impl Into<String>) -> Row {
        self.checked = text.into();
        self
    }

    pub fn result(mut self, text: impl Into<String>) -> Row {
        self.result = text.into();
        self
    }

    /// Appends the row to this test binary's file, if rows are being collected.
    pub fn record(self) {
        let Some(dir) = std::env::var_os(DIR_VAR).filter(|d| !d.is_empty()) else {
            return;
        };
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("create the reliability report directory");
        let binary = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tests".to_owned());
        let mut line = serde_json::to_vec(&self).expect("a row serializes");
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{binary}.jsonl")))
            .expect("open the reliability rows file");
        // One write of the whole line: O_APPEND keeps concurrent rows whole.
        file.write_all(&line).expect("write a reliability row");
    }
}

/// Formats a count with thousands separators, as the report's figures are read by people.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
