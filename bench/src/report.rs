//! What a run reports: rows of timings with what they were compared with, single figures
//! (rates, sizes), notes, and the run's own description; printed as Markdown tables, or
//! written as JSON (its schema is in docs/performance.md).

use serde::Serialize;

use crate::meta::RunInfo;
use crate::stats::Summary;

/// One line of the report: a set of timings of sessiond's.
#[derive(Debug, Serialize)]
pub struct Row {
    pub figure: String,
    /// Sessions the daemon held, as it counted them.
    pub sessions: Option<u64>,
    /// Recorded runs (rounds, round trips, switches: what the figure counts).
    pub runs: usize,
    /// Unrecorded runs before them.
    pub warmup: usize,
    pub sessiond: Summary,
    /// The floor, the peers, or other sessiond figures measured in the same rounds.
    pub compared: Vec<Comparison>,
    pub note: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub against: String,
    pub summary: Summary,
    /// sessiond's time over this one's.
    pub ratio: f64,
    /// True when `ratio` is the median of per-round ratios (whole-process figures); false
    /// when it is the ratio of the two medians (in-process figures, measured in blocks).
    pub paired: bool,
}

/// A figure that is one number (a rate, a size), not a set of timings.
#[derive(Debug, Serialize)]
pub struct Scalar {
    pub figure: String,
    pub sessions: Option<u64>,
    pub value: f64,
    pub unit: String,
    pub note: Option<String>,
}

impl Scalar {
    pub fn new(
        figure: &str,
        sessions: Option<u64>,
        value: f64,
        unit: &str,
        note: Option<String>,
    ) -> Scalar {
        Scalar {
            figure: figure.to_string(),
            sessions,
            value,
            unit: unit.to_string(),
            note,
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub scalars: Vec<Scalar>,
    /// What was skipped or could not be measured, and why.
    pub notes: Vec<String>,
}

impl Report {
    /// Figures that were not produced: CI runs `--quick` as a smoke test that judges no
    /// timing but fails on these.
    pub fn missing(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.sessiond.n == 0 || !r.sessiond.median_ms.is_finite())
            .map(|r| r.figure.as_str())
            .chain(
                self.scalars
                    .iter()
                    .filter(|s| !s.value.is_finite())
                    .map(|s| s.figure.as_str()),
            )
            .collect()
    }

    pub fn to_json(&self, run: &RunInfo) -> Vec<u8> {
        let doc = serde_json::json!({
            "run": run,
            "rows": self.rows,
            "scalars": self.scalars,
            "notes": self.notes,
        });
        serde_json::to_vec_pretty(&doc).expect("the report serializes")
    }

    pub fn print(&self, run: &RunInfo) {
        println!("{}\n", run.describe());
        println!(
            "| figure | sessions | sessiond median (min–max) ms | compared with | its median ms \
             | ratio | note |"
        );
        println!("|---|---:|---|---|---:|---:|---|");
        for r in &self.rows {
            let size = r.sessions.map_or(String::new(), |s| s.to_string());
            let ours = format!(
                "{} ({}–{})",
                ms(r.sessiond.median_ms),
                ms(r.sessiond.min_ms),
                ms(r.sessiond.max_ms)
            );
            let note = r.note.clone().unwrap_or_default();
            if r.compared.is_empty() {
                println!("| {} | {size} | {ours} | | | | {note} |", r.figure);
            }
            for (i, c) in r.compared.iter().enumerate() {
                // The row's own columns and its note go on its first line only.
                let (figure, size, ours, note) = if i == 0 {
                    (
                        r.figure.as_str(),
                        size.as_str(),
                        ours.as_str(),
                        note.as_str(),
                    )
                } else {
                    ("", "", "", "")
                };
                println!(
                    "| {figure} | {size} | {ours} | {} | {} | {:.2}× | {note} |",
                    c.against,
                    ms(c.summary.median_ms),
                    c.ratio
                );
            }
        }
        println!("\n| figure | sessions | value | unit | note |");
        println!("|---|---:|---:|---|---|");
        for s in &self.scalars {
            // Small values (idle CPU) keep three decimals, so a few microseconds show as such.
            let value = if !s.value.is_finite() {
                "no figure".to_string()
            } else if s.value.abs() < 1.0 {
                format!("{:.3}", s.value)
            } else {
                format!("{:.1}", s.value)
            };
            println!(
                "| {} | {} | {value} | {} | {} |",
                s.figure,
                s.sessions.map_or(String::new(), |n| n.to_string()),
                s.unit,
                s.note.clone().unwrap_or_default()
            );
        }
        println!();
        for note in &self.notes {
            println!("- {note}");
        }
    }
}

/// Milliseconds as the tables show them: "no figure" rather than `NaN`.
fn ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "no figure".into()
    }
}
