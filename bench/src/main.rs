//! `sessiond-bench`: measures sessiond against a floor program and the peers a user would
//! otherwise use, in one run, and prints a table (`--json FILE` writes the same figures).
//!
//! How the pieces meet: [`binaries`] finds (or builds) what is measured, [`subject`] runs a
//! sessiond in temp dirs and populates it, [`peers`] runs tmux (and names pueue when it is
//! absent), [`stats`] summarises samples, and this file decides what is measured at which
//! size and in what order. Whole-process figures are interleaved (A B A B …) after a
//! warm-up, so drift on a noisy machine hits every contender alike; each row reports the
//! median with min–max and the ratio to the floor and to the peer measured beside it.
//!
//! Usage: `cargo run -p sessiond-bench --release -- [--quick] [--json FILE]`.

mod binaries;
mod inproc;
mod peers;
mod stats;
mod subject;

use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::binaries::Binaries;
use crate::stats::{Samples, Summary};
use crate::subject::Subject;

/// One line of the report.
#[derive(Debug, Serialize)]
struct Row {
    figure: String,
    sessions: Option<u64>,
    sessiond: Summary,
    /// Name and summary of the floor or peer measured beside it, with sessiond's ratio.
    compared: Vec<Comparison>,
    note: Option<String>,
}

#[derive(Debug, Serialize)]
struct Comparison {
    against: String,
    summary: Summary,
    ratio: f64,
}

#[derive(Default)]
struct Plan {
    sizes: Vec<usize>,
    runs: usize,
    warmup: usize,
    /// Largest tmux server started (each session is a process).
    tmux_max: usize,
    startup_sizes: Vec<usize>,
}

fn main() -> std::process::ExitCode {
    let mut quick = false;
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => match args.next() {
                Some(file) => json = Some(file),
                None => return usage("--json needs a file"),
            },
            "-h" | "--help" => {
                println!(
                    "sessiond-bench [--quick] [--json FILE]\n\n\
                     Measures sessionctl and sessiond against a floor program and tmux (and \
                     pueue when installed),\nin temp dirs, and prints a table. --quick is a \
                     subset that finishes in under 2 minutes.\nSee docs/performance.md."
                );
                return std::process::ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let plan = if quick {
        Plan {
            sizes: vec![1, 100, 1000],
            runs: 11,
            warmup: 3,
            tmux_max: 1000,
            startup_sizes: vec![1000, 10_000],
        }
    } else {
        Plan {
            sizes: vec![1, 100, 1000, 10_000],
            runs: 41,
            warmup: 5,
            tmux_max: 1000,
            startup_sizes: vec![1000, 10_000, 100_000],
        }
    };
    match run(&plan) {
        Ok((rows, notes)) => {
            print_table(&rows, &notes);
            if let Some(file) = json {
                let doc = serde_json::json!({"rows": rows, "notes": notes, "quick": quick});
                if let Err(e) = std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()) {
                    eprintln!("cannot write {file}: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sessiond-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn usage(why: &str) -> std::process::ExitCode {
    eprintln!("sessiond-bench: {why}\nusage: sessiond-bench [--quick] [--json FILE]");
    std::process::ExitCode::from(2)
}

/// Runs each contender `runs` times, interleaved, after `warmup` unrecorded rounds.
fn interleave(
    contenders: &mut [&mut dyn FnMut() -> Command],
    warmup: usize,
    runs: usize,
) -> Vec<Samples> {
    let mut samples = vec![Samples::default(); contenders.len()];
    for round in 0..warmup + runs {
        for (i, make) in contenders.iter_mut().enumerate() {
            let mut cmd = make();
            let started = Instant::now();
            let status = cmd.status();
            let took = started.elapsed();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => panic!("{cmd:?} failed: {s}"),
                Err(e) => panic!("{cmd:?}: {e}"),
            }
            if round >= warmup {
                samples[i].push(took);
            }
        }
    }
    samples
}

fn compare(against: &str, ours: &Summary, theirs: Summary) -> Comparison {
    Comparison {
        against: against.to_string(),
        summary: theirs,
        ratio: ours.median_ms / theirs.median_ms,
    }
}

fn run(plan: &Plan) -> Result<(Vec<Row>, Vec<String>), String> {
    let bins = Binaries::locate()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut tmux = match peers::Tmux::start() {
        Ok(t) => Some(t),
        Err(why) => {
            notes.push(format!("tmux skipped: {why}"));
            None
        }
    };
    if let Some(why) = peers::pueue_missing() {
        notes.push(format!("pueue skipped: {why}"));
    }

    let mut subject = Subject::new(&bins)?;
    subject.start()?;
    let socket = subject.socket();
    let mut ids: Vec<String> = Vec::new();
    for &size in &plan.sizes {
        ids.extend(subject.add_sessions(&rt, size - ids.len()));
        let tmux_ok = match tmux.as_mut().filter(|_| size <= plan.tmux_max) {
            Some(t) => t.grow_to(size).map(|()| true).unwrap_or_else(|e| {
                notes.push(format!("tmux at {size}: {e}"));
                false
            }),
            None => false,
        };
        eprintln!("measuring at {size} sessions…");

        // list
        let mut list = || {
            let mut c = subject.ctl(&bins.sessionctl);
            c.args(["--json", "list"]);
            c
        };
        let mut floor = || {
            let mut c = Command::new(&bins.floor);
            c.arg(&socket);
            c
        };
        let tmux_ref = tmux.as_ref().filter(|_| tmux_ok);
        let mut tmux_ls = || tmux_ref.expect("tmux").command(&["ls"]);
        let samples = if tmux_ok {
            interleave(
                &mut [&mut list, &mut floor, &mut tmux_ls],
                plan.warmup,
                plan.runs,
            )
        } else {
            interleave(&mut [&mut list, &mut floor], plan.warmup, plan.runs)
        };
        rows.push(row(
            "sessionctl list --json",
            size,
            &samples,
            &["floor", "tmux ls"],
        ));

        // switch
        let target = ids[0].clone();
        let mut switch = || {
            let mut c = subject.ctl(&bins.sessionctl);
            c.args(["switch", &target]);
            c
        };
        let mut has = || {
            tmux_ref
                .expect("tmux")
                .command(&["has-session", "-t", "s0"])
        };
        let samples = if tmux_ok {
            interleave(
                &mut [&mut switch, &mut floor, &mut has],
                plan.warmup,
                plan.runs,
            )
        } else {
            interleave(&mut [&mut switch, &mut floor], plan.warmup, plan.runs)
        };
        rows.push(row(
            "sessionctl switch",
            size,
            &samples,
            &["floor", "tmux has-session -t"],
        ));
    }

    // send, into a paused session (acknowledged and stored, not run), with 0 and 2,000 turns
    // already queued.
    let empty = subject.add_sessions(&rt, 2);
    subject.queue_turns(&rt, &empty[0], 0);
    subject.queue_turns(&rt, &empty[1], 2000);
    for (session, queued) in [(&empty[0], 0u64), (&empty[1], 2000)] {
        let mut send = || {
            let mut c = subject.ctl(&bins.sessionctl);
            c.args(["send", session, "true"]);
            c
        };
        let mut floor = || {
            let mut c = Command::new(&bins.floor);
            c.arg(&socket);
            c
        };
        let samples = interleave(&mut [&mut send, &mut floor], plan.warmup, plan.runs);
        let mut r = row(
            &format!("sessionctl send ({queued} turns queued)"),
            ids.len() + 2,
            &samples,
            &["floor"],
        );
        r.note = Some("into a paused session: durable acknowledgement, nothing spawned".into());
        rows.push(r);
    }

    // In-process round trips through the library against a raw socket echo.
    rows.extend(inproc::ping_vs_echo(
        &rt,
        &subject.options(),
        plan.runs * 50,
    )?);
    subject.stop();

    // Start-up to the first answered ping, and RSS, by size.
    for &size in &plan.startup_sizes {
        let mut fresh = Subject::new(&bins)?;
        fresh.start()?;
        fresh.add_sessions(&rt, size);
        fresh.stop();
        let mut startup = Samples::default();
        let mut rss = 0;
        for _ in 0..3 {
            startup.push(fresh.start()?);
            rss = fresh.rss().unwrap_or(0);
            fresh.stop();
        }
        rows.push(Row {
            figure: "daemon start-up to first ping".into(),
            sessions: Some(size as u64),
            sessiond: startup.summary(),
            compared: Vec::new(),
            note: Some(format!("RSS after start-up: {:.1} MB", rss as f64 / 1e6)),
        });
    }
    Ok((rows, notes))
}

/// A row from interleaved samples: the first is sessiond, the others what it is compared
/// with, named by `names`.
fn row(figure: &str, size: usize, samples: &[Samples], names: &[&str]) -> Row {
    let ours = samples[0].summary();
    Row {
        figure: figure.to_string(),
        sessions: Some(size as u64),
        sessiond: ours,
        compared: samples[1..]
            .iter()
            .zip(names)
            .map(|(s, name)| compare(name, &ours, s.summary()))
            .collect(),
        note: None,
    }
}

fn print_table(rows: &[Row], notes: &[String]) {
    println!(
        "| figure | sessions | sessiond median (min–max) ms | compared with | its median ms | ratio |"
    );
    println!("|---|---:|---|---|---:|---:|");
    for r in rows {
        let size = r.sessions.map_or(String::new(), |s| s.to_string());
        let ours = format!(
            "{:.2} ({:.2}–{:.2})",
            r.sessiond.median_ms, r.sessiond.min_ms, r.sessiond.max_ms
        );
        if r.compared.is_empty() {
            println!(
                "| {} | {size} | {ours} | {} | | |",
                r.figure,
                r.note.clone().unwrap_or_default()
            );
        }
        for (i, c) in r.compared.iter().enumerate() {
            let (figure, size, ours) = if i == 0 {
                (r.figure.as_str(), size.as_str(), ours.as_str())
            } else {
                ("", "", "")
            };
            println!(
                "| {figure} | {size} | {ours} | {} | {:.2} | {:.2}× |",
                c.against, c.summary.median_ms, c.ratio
            );
        }
    }
    for note in notes {
        println!("\n- {note}");
    }
}
