//! Whole-process figures: contenders started one at a time in rounds, each round in a fresh
//! order, after unrecorded warm-up rounds, and the row made of their times.
//!
//! Interleaving makes drift on a noisy machine hit every contender alike, and each ratio is
//! taken round by round (see [`Samples::paired_ratio`]).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::report::{Comparison, Row};
use crate::stats::Samples;

/// Quiet time before each process starts. A peer's server goes on working after its client
/// exits (tmux's does), and on two cores that work landed on whichever contender ran next:
/// `sessionctl switch` measured 1.71 × the floor right after `tmux has-session` and 1.43 ×
/// with no tmux in the rounds. A user does not start commands microseconds apart either.
const SETTLE: Duration = Duration::from_millis(2);

/// One command measured in the rounds.
pub struct Contender<'a> {
    name: String,
    /// A peer's failure leaves it out of the row with a note; any other's ends the run.
    peer: bool,
    make: Box<dyn FnMut() -> Command + 'a>,
    /// Run after each of its runs, untimed, before the next process's pause: puts back what
    /// the run changed (a queued turn, an added task).
    after: Option<Box<dyn FnMut() -> Result<(), String> + 'a>>,
}

impl<'a> Contender<'a> {
    /// sessionctl, or the floor program: what sessiond's figure is made of.
    pub fn ours(name: impl Into<String>, make: impl FnMut() -> Command + 'a) -> Self {
        Contender {
            name: name.into(),
            peer: false,
            make: Box::new(make),
            after: None,
        }
    }

    pub fn peer(name: impl Into<String>, make: impl FnMut() -> Command + 'a) -> Self {
        Contender {
            peer: true,
            ..Contender::ours(name, make)
        }
    }

    pub fn then(mut self, after: impl FnMut() -> Result<(), String> + 'a) -> Self {
        self.after = Some(Box::new(after));
        self
    }
}

/// Runs each contender `runs` times, interleaved, after `warmup` unrecorded rounds. Each
/// round runs them in a fresh order (a fixed-seed shuffle, so runs are repeatable), so none
/// always follows the same one, and each process starts after [`SETTLE`]. A peer that fails
/// is left out of the rounds after it, with why (`Err`); any other failure ends the
/// measurement.
fn interleave(
    contenders: &mut [Contender],
    warmup: usize,
    runs: usize,
) -> Result<Vec<Result<Samples, String>>, String> {
    let n = contenders.len();
    let mut samples: Vec<Result<Samples, String>> = vec![Ok(Samples::default()); n];
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..warmup + runs {
        for k in (1..n).rev() {
            order.swap(k, rng.below(k + 1));
        }
        for &i in &order {
            if samples[i].is_err() {
                continue;
            }
            let c = &mut contenders[i];
            let mut cmd = (c.make)();
            std::thread::sleep(SETTLE);
            let started = Instant::now();
            let status = cmd.status();
            let took = started.elapsed();
            // A peer's failure becomes a row's note, where its name says enough; sessiond's
            // ends the run, and the whole command helps whoever looks into it.
            let what = if c.peer {
                c.name.clone()
            } else {
                format!("{cmd:?}")
            };
            let ran = match status {
                Ok(s) if s.success() => Ok(()),
                Ok(s) => Err(format!("{what} ended with {s}")),
                Err(e) => Err(format!("{what} could not run: {e}")),
            }
            .and_then(|()| c.after.as_mut().map_or(Ok(()), |after| after()));
            match ran {
                Ok(()) if round >= warmup => {
                    if let Ok(s) = &mut samples[i] {
                        s.push(took);
                    }
                }
                Ok(()) => {}
                Err(why) if c.peer => {
                    samples[i] = Err(format!("{why} in round {} of {}", round + 1, warmup + runs));
                }
                Err(why) => return Err(why),
            }
        }
    }
    Ok(samples)
}

/// A small deterministic generator for shuffling the order of contenders (xorshift64).
struct XorShift(u64);

impl XorShift {
    /// A number in `0..n`; the slight bias of a modulo is irrelevant for a handful of items.
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Interleaves the contenders and makes the row: the first is sessiond's figure, each other
/// a comparison with sessiond's time over its own, round by round. A peer that failed is
/// left out of the comparisons and named in the row's note.
pub fn measure(
    figure: &str,
    sessions: u64,
    mut contenders: Vec<Contender>,
    warmup: usize,
    runs: usize,
) -> Result<Row, String> {
    let samples = interleave(&mut contenders, warmup, runs)?;
    let ours = match &samples[0] {
        Ok(s) => s,
        Err(why) => return Err(why.clone()),
    };
    let summary = ours.summary();
    let mut compared = Vec::new();
    let mut failures = Vec::new();
    for (c, s) in contenders.iter().zip(&samples).skip(1) {
        match s {
            Ok(s) => compared.push(Comparison {
                against: c.name.clone(),
                summary: s.summary(),
                ratio: ours.paired_ratio(s),
                paired: true,
            }),
            Err(why) => failures.push(format!("{why}; left out of this row")),
        }
    }
    Ok(Row {
        figure: figure.to_string(),
        sessions: Some(sessions),
        runs,
        warmup,
        sessiond: summary,
        compared,
        note: (!failures.is_empty()).then(|| failures.join("; ")),
    })
}

/// Adds `text` to a row's note.
pub fn add_note(row: &mut Row, text: &str) {
    row.note = Some(match row.note.take() {
        Some(note) => format!("{text}; {note}"),
        None => text.to_string(),
    });
}
