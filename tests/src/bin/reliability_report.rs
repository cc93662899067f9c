//! Prints `docs/reliability.md` from the rows the reliability tests recorded.
//!
//! Usage: `sessiond-reliability-report DIR [--header TEXT]`. DIR holds the JSON-lines files
//! the tests wrote (see `sessiond_tests::report`); the table goes to standard output, one
//! section per heading in the report's fixed order, scenarios sorted by name within each.
//! Exits 2 if DIR holds no rows, so a run that recorded nothing cannot print an empty report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use sessiond_tests::report::{thousands, Row, SECTIONS};

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: sessiond-reliability-report DIR [--header TEXT]");
        return ExitCode::from(2);
    };
    let header = match (args.next(), args.next()) {
        (Some(flag), Some(text)) if flag == "--header" => Some(text.to_string_lossy().into_owned()),
        (None, None) => None,
        _ => {
            eprintln!("usage: sessiond-reliability-report DIR [--header TEXT]");
            return ExitCode::from(2);
        }
    };

    let mut rows: BTreeMap<(usize, String), Row> = BTreeMap::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) => {
            eprintln!(
                "cannot read {}: {err}; run the tests with SESSIOND_RELIABILITY_DIR set first",
                dir.display()
            );
            return ExitCode::from(2);
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|ext| ext != "jsonl") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let row: Row = match serde_json::from_str(line) {
                Ok(row) => row,
                Err(err) => {
                    eprintln!("{}:{}: not a reliability row: {err}", path.display(), n + 1);
                    return ExitCode::from(2);
                }
            };
            let section = SECTIONS
                .iter()
                .position(|s| *s == row.section)
                .unwrap_or(SECTIONS.len());
            rows.insert((section, row.scenario.clone()), row);
        }
    }
    if rows.is_empty() {
        eprintln!(
            "no reliability rows in {}; did the tests run with SESSIOND_RELIABILITY_DIR set?",
            dir.display()
        );
        return ExitCode::from(2);
    }

    println!("# Reliability\n");
    if let Some(header) = header {
        println!("{header}\n");
    }
    let mut current = None;
    for ((section, _), row) in &rows {
        if current != Some(*section) {
            current = Some(*section);
            println!(
                "\n## {}\n",
                SECTIONS.get(*section).copied().unwrap_or("other")
            );
            println!("| scenario | what was done | times | what was checked | result |");
            println!("|---|---|---:|---|---|");
        }
        println!(
            "| `{}` | {} | {} | {} | {} |",
            row.scenario,
            cell(&row.done),
            thousands(row.runs),
            cell(&row.checked),
            cell(&row.result)
        );
    }
    ExitCode::SUCCESS
}

/// A table cell: no pipes or newlines may break the row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
