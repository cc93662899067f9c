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
mod throughput;

use std::process::Command;
use std::time::{Duration, Instant};

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

/// A figure that is one number (a rate, a size), not a set of timings.
#[derive(Debug, Serialize)]
struct Scalar {
    figure: String,
    sessions: Option<u64>,
    value: f64,
    unit: String,
    note: Option<String>,
}

fn scalar(
    figure: &str,
    sessions: Option<usize>,
    value: f64,
    unit: &str,
    note: Option<String>,
) -> Scalar {
    Scalar {
        figure: figure.to_string(),
        sessions: sessions.map(|s| s as u64),
        value,
        unit: unit.to_string(),
        note,
    }
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
    /// Most tasks pueue is given for `status` (each is added by a process).
    pueue_max: usize,
    startup_sizes: Vec<usize>,
    /// Seconds each requests-per-second figure runs.
    rps_secs: f64,
    submits_each: usize,
    event_switches: u64,
    idle_secs: u64,
}

fn main() -> std::process::ExitCode {
    let mut quick = false;
    let mut json = None;
    let mut serve = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--json" => match args.next() {
                Some(file) => json = Some(file),
                None => return usage("--json needs a file"),
            },
            "--serve" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => serve = Some(n),
                None => return usage("--serve needs a number of sessions"),
            },
            "-h" | "--help" => {
                println!(
                    "sessiond-bench [--quick] [--json FILE] | --serve N\n\n\
                     Measures sessionctl and sessiond against a floor program and tmux (and \
                     pueue when installed),\nin temp dirs, and prints a table. --quick is a \
                     subset that finishes in under 2 minutes.\n--serve N starts a daemon \
                     with N sessions, prints the environment that points sessionctl at it,\n\
                     and keeps it until stdin closes (for profiling by hand).\n\
                     See docs/performance.md."
                );
                return std::process::ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Some(n) = serve {
        return match serve_populated(n) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sessiond-bench: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let plan = if quick {
        Plan {
            sizes: vec![1, 100, 1000],
            runs: 11,
            warmup: 3,
            tmux_max: 1000,
            pueue_max: 1000,
            startup_sizes: vec![1000, 10_000],
            rps_secs: 0.5,
            submits_each: 100,
            event_switches: 200,
            idle_secs: 3,
        }
    } else {
        Plan {
            sizes: vec![1, 100, 1000, 10_000],
            runs: 41,
            warmup: 5,
            tmux_max: 1000,
            pueue_max: 1000,
            startup_sizes: vec![1000, 10_000, 100_000],
            rps_secs: 2.0,
            submits_each: 300,
            event_switches: 1000,
            idle_secs: 10,
        }
    };
    match run(&plan) {
        Ok((rows, scalars, notes)) => {
            print_table(&rows, &scalars, &notes);
            // CI runs --quick as a smoke test: no timing is judged, but every figure must
            // have been produced.
            let missing: Vec<&str> = rows
                .iter()
                .filter(|r| r.sessiond.n == 0 || !r.sessiond.median_ms.is_finite())
                .map(|r| r.figure.as_str())
                .chain(
                    scalars
                        .iter()
                        .filter(|s| !s.value.is_finite())
                        .map(|s| s.figure.as_str()),
                )
                .collect();
            if !missing.is_empty() {
                eprintln!("sessiond-bench: no figure for: {}", missing.join(", "));
                return std::process::ExitCode::FAILURE;
            }
            if let Some(file) = json {
                let doc = serde_json::json!({
                    "rows": rows, "scalars": scalars, "notes": notes, "quick": quick,
                });
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
    eprintln!("sessiond-bench: {why}\nusage: sessiond-bench [--quick] [--json FILE] | --serve N");
    std::process::ExitCode::from(2)
}

/// `--serve N`: a populated daemon to profile by hand. Prints `export` lines for a shell and
/// the daemon's pid, then waits for stdin to close; the temp dirs go with it.
fn serve_populated(n: usize) -> Result<(), String> {
    let bins = Binaries::locate()?;
    let rt = runtime()?;
    let mut subject = Subject::new(&bins)?;
    subject.start()?;
    subject.add_sessions(&rt, n);
    for (key, value) in subject.environment() {
        println!("export {key}={}", value.display());
    }
    println!("# sessiond pid {}", subject.pid().unwrap_or(0));
    println!("# sessionctl: {}", bins.sessionctl.display());
    eprintln!("serving {n} sessions; close stdin (Ctrl-D) to stop");
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    subject.stop();
    Ok(())
}

/// Quiet time before each process starts. A peer's server goes on working after its client
/// exits (tmux's does), and on two cores that work landed on whichever contender ran next:
/// `sessionctl switch` measured 1.71 × the floor right after `tmux has-session` and 1.43 ×
/// with no tmux in the rounds. A user does not start commands microseconds apart either.
const SETTLE: Duration = Duration::from_millis(2);

/// Settled turns each session of the largest start-up store holds: a daemon in long use keeps
/// its sessions' history, and start-up must cope with it (it loads only queued and running
/// turns).
const STARTUP_TURNS_PER_SESSION: usize = 10;

/// Runs each contender `runs` times, interleaved, after `warmup` unrecorded rounds. Each
/// round runs them in a fresh order (a fixed-seed shuffle, so runs are repeatable), so none
/// always follows the same one, and each process starts after [`SETTLE`].
fn interleave(
    contenders: &mut [&mut dyn FnMut() -> Command],
    warmup: usize,
    runs: usize,
) -> Vec<Samples> {
    let n = contenders.len();
    let mut samples = vec![Samples::default(); n];
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..warmup + runs {
        for k in (1..n).rev() {
            order.swap(k, rng.below(k + 1));
        }
        for &i in &order {
            let mut cmd = contenders[i]();
            std::thread::sleep(SETTLE);
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

fn compare(against: &str, ours: &Summary, theirs: Summary) -> Comparison {
    Comparison {
        against: against.to_string(),
        summary: theirs,
        ratio: ours.median_ms / theirs.median_ms,
    }
}

type Report = (Vec<Row>, Vec<Scalar>, Vec<String>);

/// The runtime the library-driven figures and the populating run on.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn run(plan: &Plan) -> Result<Report, String> {
    let bins = Binaries::locate()?;
    let rt = runtime()?;
    let mut rows = Vec::new();
    let mut scalars = Vec::new();
    let mut notes = Vec::new();
    let mut tmux = match peers::Tmux::start() {
        Ok(t) => Some(t),
        Err(why) => {
            notes.push(format!("tmux skipped: {why}"));
            None
        }
    };
    let mut pueue = match peers::Pueue::start() {
        Ok(p) => Some(p),
        Err(why) => {
            notes.push(format!("pueue skipped: {why}"));
            None
        }
    };

    let mut subject = Subject::new(&bins)?;
    subject.start()?;
    let socket = subject.socket();
    let mut ids: Vec<String> = Vec::new();
    for &size in &plan.sizes {
        ids.extend(subject.add_sessions(&rt, size - ids.len()));
        if size == plan.sizes[0] {
            match subject.settle_storage(&rt, &ids[0]) {
                Ok(writes) => eprintln!("storage settled after {writes} switches"),
                Err(writes) => notes.push(format!(
                    "the store's log was still growing after {writes} switches; the smallest \
                     sizes may be timed before it settled"
                )),
            }
        }
        let tmux_ok = match tmux.as_mut().filter(|_| size <= plan.tmux_max) {
            Some(t) => t.grow_to(size).map(|()| true).unwrap_or_else(|e| {
                notes.push(format!("tmux at {size}: {e}"));
                false
            }),
            None => false,
        };
        eprintln!("measuring at {size} sessions…");

        let pueue_ok = match pueue.as_mut().filter(|_| size <= plan.pueue_max) {
            Some(p) => p.grow_to(size).map(|()| true).unwrap_or_else(|e| {
                notes.push(format!("pueue at {size}: {e}"));
                false
            }),
            None => false,
        };
        let floor = || {
            let mut c = Command::new(&bins.floor);
            c.arg(&socket);
            c
        };
        let tmux_ref = tmux.as_ref().filter(|_| tmux_ok);
        let pueue_ref = pueue.as_ref().filter(|_| pueue_ok);

        // list
        let mut contenders: Contenders = vec![
            (
                "sessionctl",
                Box::new(|| {
                    let mut c = subject.ctl(&bins.sessionctl);
                    c.args(["--json", "list"]);
                    c
                }),
            ),
            ("floor", Box::new(floor)),
        ];
        if let Some(t) = tmux_ref {
            contenders.push(("tmux ls", Box::new(|| t.command(&["ls"]))));
        }
        if let Some(p) = pueue_ref {
            contenders.push((
                "pueue status --json",
                Box::new(|| p.command(&["status", "--json"])),
            ));
        }
        rows.push(measure("sessionctl list --json", size, contenders, plan));

        // switch
        let target = ids[0].clone();
        let mut contenders: Contenders = vec![
            (
                "sessionctl",
                Box::new(|| {
                    let mut c = subject.ctl(&bins.sessionctl);
                    c.args(["switch", &target]);
                    c
                }),
            ),
            ("floor", Box::new(floor)),
            // The same switch from the floor program: what is left between it and sessionctl
            // is sessionctl's; between it and the floor, the daemon's commit.
            (
                "floor's switch",
                Box::new(|| {
                    let mut c = Command::new(&bins.floor);
                    c.args(["--switch", target.as_str()]).arg(&socket);
                    c
                }),
            ),
        ];
        if let Some(t) = tmux_ref {
            contenders.push((
                "tmux has-session -t",
                Box::new(|| t.command(&["has-session", "-t", "s0"])),
            ));
        }
        rows.push(measure("sessionctl switch", size, contenders, plan));

        // Requests per second through the library, by method and connection count.
        for kind in [
            throughput::Kind::List,
            throughput::Kind::Get,
            throughput::Kind::Switch,
        ] {
            for conns in [1, 8, 64] {
                let rps = throughput::requests_per_second(
                    &rt,
                    &subject.options(),
                    &ids,
                    kind,
                    conns,
                    plan.rps_secs,
                )?;
                scalars.push(scalar(
                    &format!("{} requests/s, {conns} connections", kind.name()),
                    Some(size),
                    rps,
                    "req/s",
                    (matches!(kind, throughput::Kind::List))
                        .then(|| "each list returns every session".to_string()),
                ));
            }
        }
    }

    // send, into a paused session (acknowledged and stored, not run), with 0 and 2,000 turns
    // already queued; against `pueue add` into a paused group with as many tasks.
    let empty = subject.add_sessions(&rt, 2);
    subject.queue_turns(&rt, &empty[0], 0);
    subject.queue_turns(&rt, &empty[1], 2000);
    let send = |session: &str| {
        let mut c = subject.ctl(&bins.sessionctl);
        c.args(["send", session, "true"]);
        c
    };
    // The queue's length must not matter: both sessions and the floor, interleaved, with no
    // peer in the rounds (a peer's own work after answering would land on the next run).
    let contenders: Contenders = vec![
        ("sessionctl", Box::new(|| send(&empty[1]))),
        (
            "sessionctl send (0 turns queued)",
            Box::new(|| send(&empty[0])),
        ),
        (
            "floor",
            Box::new(|| {
                let mut c = Command::new(&bins.floor);
                c.arg(&socket);
                c
            }),
        ),
    ];
    let mut r = measure(
        "sessionctl send (2000 turns queued)",
        ids.len() + 2,
        contenders,
        plan,
    );
    r.note = Some("into a paused session: durable acknowledgement, nothing spawned".into());
    rows.push(r);
    // Against `pueue add` into a paused group holding as many tasks (a second pueue, empty
    // to begin with; why one is missing was noted already).
    if let Ok(mut adds) = peers::Pueue::start() {
        for (session, queued) in [(&empty[0], 0usize), (&empty[1], 2000)] {
            adds.grow_to(queued)?;
            let contenders: Contenders = vec![
                ("sessionctl", Box::new(|| send(session))),
                (
                    "pueue add",
                    Box::new(|| adds.command(&["add", "--", "true"])),
                ),
            ];
            rows.push(measure(
                &format!("sessionctl send ({queued} turns queued)"),
                ids.len() + 2,
                contenders,
                plan,
            ));
            adds.added(plan.warmup + plan.runs);
        }
    }

    // In-process round trips through the library against a raw socket echo.
    rows.extend(inproc::ping_vs_echo(
        &rt,
        &subject.options(),
        &bins.floor,
        plan.runs * 50,
    )?);

    // Durable submits with 32 clients, into paused sessions.
    let paused = subject.add_sessions(&rt, 32);
    for session in &paused {
        subject.queue_turns(&rt, session, 0);
    }
    let rate =
        throughput::durable_submits(&rt, &subject.options(), &paused, 32, plan.submits_each)?;
    scalars.push(scalar(
        "durable submits/s, 32 clients",
        Some(ids.len() + 34),
        rate,
        "submits/s",
        Some(format!(
            "{} submits, each acknowledged after its commit",
            32 * plan.submits_each
        )),
    ));

    // Event delivery to 100 subscribers, then beside one that never reads.
    for stalled in [false, true] {
        let samples = throughput::event_delivery(
            &rt,
            &subject.options(),
            &socket,
            &ids[0],
            100,
            plan.event_switches,
            stalled,
        )?;
        let s = samples.summary();
        rows.push(Row {
            figure: format!(
                "event delivery to 100 subscribers{}",
                if stalled { ", one stalled" } else { "" }
            ),
            sessions: Some(ids.len() as u64),
            sessiond: s,
            compared: Vec::new(),
            note: Some(format!("p99 {:.3} ms over {} deliveries", s.p99_ms, s.n)),
        });
    }

    // CPU used while idle.
    // Not measurable (no daemon pid, no /proc): the figure is NaN, which fails the check
    // that every figure was produced.
    let (cpu, note) = match idle_cpu(&subject, plan.idle_secs) {
        Some((cpu, wakeups)) => (
            cpu,
            format!(
                "over {} s with no clients; its threads woke {wakeups} times",
                plan.idle_secs
            ),
        ),
        None => (f64::NAN, "could not be read from /proc".to_string()),
    };
    scalars.push(scalar(
        "idle CPU",
        Some(ids.len() + 36),
        cpu,
        "ms of CPU per second",
        Some(note),
    ));
    subject.stop();

    // Start-up to the first answered ping, and RSS, by size; the largest store also holds a
    // history of settled turns.
    let mut rss_by_size = Vec::new();
    let largest = plan.startup_sizes.iter().copied().max();
    for &size in &plan.startup_sizes {
        let mut fresh = Subject::new(&bins)?;
        fresh.start()?;
        let ids = fresh.add_sessions(&rt, size);
        let mut note = String::new();
        if Some(size) == largest {
            fresh.add_settled_turns(&rt, &ids, STARTUP_TURNS_PER_SESSION);
            note = format!(
                "; {} settled turns stored",
                size * STARTUP_TURNS_PER_SESSION
            );
        }
        fresh.stop();
        let mut startup = Samples::default();
        let mut rss = 0;
        for _ in 0..3 {
            startup.push(fresh.start()?);
            rss = fresh.rss().unwrap_or(0);
            fresh.stop();
        }
        rss_by_size.push((size, rss));
        rows.push(Row {
            figure: "daemon start-up to first ping".into(),
            sessions: Some(size as u64),
            sessiond: startup.summary(),
            compared: Vec::new(),
            note: Some(format!(
                "RSS after start-up: {:.1} MB{note}",
                rss as f64 / 1e6
            )),
        });
    }
    if let (Some(&(small, a)), Some(&(large, b))) = (rss_by_size.first(), rss_by_size.last()) {
        if large > small {
            scalars.push(scalar(
                "RSS per idle session",
                None,
                (b as f64 - a as f64) / (large - small) as f64,
                "bytes",
                Some(format!(
                    "RSS after start-up at {large} minus at {small}, per session"
                )),
            ));
        }
        for (size, rss) in rss_by_size {
            scalars.push(scalar(
                "daemon RSS after start-up",
                Some(size),
                rss as f64 / 1e6,
                "MB",
                None,
            ));
        }
    }
    Ok((rows, scalars, notes))
}

/// The daemon's CPU time so far, in nanoseconds: the kernel's process CPU clock, the exact
/// run time of all its threads, those that have exited included. (`utime` and `stime` in
/// `/proc/PID/stat` are clock ticks, 10 ms each, charged to whichever thread runs at the
/// tick, so a millisecond of work read as 0 or as 10 ms.)
fn cpu_ns(pid: u32) -> Option<u64> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).ok()?);
    let clock = nix::time::clock_getcpuclockid(pid).ok()?;
    let t = nix::time::clock_gettime(clock).ok()?;
    Some(u64::try_from(t.tv_sec()).ok()? * 1_000_000_000 + u64::try_from(t.tv_nsec()).ok()?)
}

/// Each thread's count of voluntary context switches (times it slept and was woken), by
/// thread id. A thread that is gone by the time it is read is left out.
fn wakeups_by_thread(pid: u32) -> Option<std::collections::HashMap<String, u64>> {
    let mut counts = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let count = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok());
        if let Some(count) = count {
            counts.insert(task.file_name().to_string_lossy().into_owned(), count);
        }
    }
    Some(counts)
}

/// The daemon's CPU time per second of wall time while nobody talks to it, and how many
/// times its threads woke in that time (a thread started meanwhile counts from zero).
fn idle_cpu(subject: &Subject, secs: u64) -> Option<(f64, u64)> {
    let pid = subject.pid()?;
    std::thread::sleep(Duration::from_secs(1));
    let (cpu_before, woke_before) = (cpu_ns(pid)?, wakeups_by_thread(pid)?);
    std::thread::sleep(Duration::from_secs(secs));
    let (cpu_after, woke_after) = (cpu_ns(pid)?, wakeups_by_thread(pid)?);
    let wakeups = woke_after
        .iter()
        .map(|(tid, n)| n.saturating_sub(woke_before.get(tid).copied().unwrap_or(0)))
        .sum();
    let ms_per_sec = cpu_after.saturating_sub(cpu_before) as f64 / 1e6 / secs as f64;
    Some((ms_per_sec, wakeups))
}

/// Named commands measured side by side; the first is sessiond's.
type Contenders<'a> = Vec<(&'a str, Box<dyn FnMut() -> Command + 'a>)>;

/// Interleaves the contenders and makes the row: sessiond's figure and each other's ratio.
fn measure(figure: &str, size: usize, mut contenders: Contenders, plan: &Plan) -> Row {
    let names: Vec<&str> = contenders.iter().skip(1).map(|(name, _)| *name).collect();
    let mut makers: Vec<&mut dyn FnMut() -> Command> = contenders
        .iter_mut()
        .map(|(_, make)| make.as_mut() as &mut dyn FnMut() -> Command)
        .collect();
    let samples = interleave(&mut makers, plan.warmup, plan.runs);
    row(figure, size, &samples, &names)
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

fn print_table(rows: &[Row], scalars: &[Scalar], notes: &[String]) {
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
    println!("\n| figure | sessions | value | unit | note |");
    println!("|---|---:|---:|---|---|");
    for s in scalars {
        // Small values (idle CPU) keep three decimals, so a few microseconds show as such.
        let value = if s.value.abs() < 1.0 {
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
    for note in notes {
        println!("- {note}");
    }
}
