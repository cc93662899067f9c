//! `sessiond-bench`: measures sessiond against a floor program and the peers a user would
//! otherwise use, in one run, and prints a table (`--json FILE` writes the same figures).
//!
//! How the pieces meet: [`binaries`] finds (or builds) what is measured, [`subject`] runs a
//! sessiond in temp dirs and populates it, [`peers`] runs tmux and pueue, [`rounds`] times
//! whole processes in interleaved rounds, [`inproc`], [`throughput`] and [`idle`] measure
//! through the library and /proc ([`placement`] pins processes to CPUs for the first),
//! [`stats`] summarises samples, [`report`] and [`meta`] say what was found and on what,
//! [`cleanup`] undoes it all however the run ends, and this file decides what is measured at
//! which size and in what order.
//!
//! Usage: `cargo run -p sessiond-bench --release -- [--quick] [--json FILE]`.

mod binaries;
mod cleanup;
mod idle;
mod inproc;
mod meta;
mod peers;
mod placement;
mod report;
mod rounds;
mod stats;
mod subject;
mod throughput;

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

use crate::binaries::Binaries;
use crate::meta::RunInfo;
use crate::report::{Report, Row, Scalar};
use crate::rounds::{add_note, measure, Contender};
use crate::stats::{Samples, Summary};
use crate::subject::Subject;

struct Plan {
    quick: bool,
    sizes: Vec<usize>,
    runs: usize,
    warmup: usize,
    startup_sizes: Vec<usize>,
    /// Seconds each requests-per-second figure runs.
    rps_secs: f64,
    submits_each: usize,
    event_switches: u64,
    /// The quiet window idle CPU is measured over.
    idle: Duration,
}

impl Plan {
    fn quick() -> Plan {
        Plan {
            quick: true,
            sizes: vec![1, 100, 1000],
            runs: 11,
            warmup: 3,
            startup_sizes: vec![1000, 10_000],
            rps_secs: 0.5,
            submits_each: 100,
            event_switches: 200,
            idle: Duration::from_secs(3),
        }
    }

    fn full() -> Plan {
        Plan {
            quick: false,
            sizes: vec![1, 100, 1000, 10_000],
            runs: 41,
            warmup: 5,
            startup_sizes: vec![1000, 10_000, 100_000],
            rps_secs: 2.0,
            submits_each: 300,
            event_switches: 1000,
            // Three housekeeping ticks, so "no CPU while idle" is judged over more than one.
            idle: subject::HOUSEKEEPING_TICK * 3,
        }
    }
}

/// Turns queued in the session the second `send` figure sends into (and tasks in pueue's
/// queue for its `pueue add`).
const SEND_QUEUED: usize = 2000;

/// Settled turns each session of the largest start-up store holds: a daemon in long use keeps
/// its sessions' history, and start-up must cope with it (it loads only queued and running
/// turns).
const STARTUP_TURNS_PER_SESSION: usize = 10;

fn main() -> ExitCode {
    // First: until it is in place a Ctrl-C would skip the cleanup.
    if let Err(e) = cleanup::install() {
        eprintln!("sessiond-bench: {e}");
        return ExitCode::FAILURE;
    }
    let _cleanup = cleanup::RunGuard;
    let swept = cleanup::sweep_stale();
    if swept > 0 {
        eprintln!("removed {swept} temp dirs left by earlier runs that were killed");
    }
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
                     Measures sessionctl and sessiond against a floor program, tmux and pueue \
                     (when installed),\nin temp dirs, and prints a table. --quick is a \
                     subset that finishes in under 2 minutes.\n--serve N starts a daemon \
                     with N sessions, prints the environment that points sessionctl at it,\n\
                     and keeps it until stdin closes (for profiling by hand).\n\
                     See docs/performance.md."
                );
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    if let Some(n) = serve {
        return match serve_populated(n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sessiond-bench: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let mut info = RunInfo::now(quick, plan.runs, plan.warmup);
    let mut report = Report::default();
    if let Err(e) = run(&plan, &mut report, &mut info) {
        if cleanup::is_interrupted() {
            // The signal's cleanup ends the process; dropping the guard waits for it.
            return ExitCode::FAILURE;
        }
        // What was measured before is still worth seeing.
        report.print(&info);
        eprintln!("sessiond-bench: the run ended early: {e}");
        return ExitCode::FAILURE;
    }
    report.print(&info);
    let missing = report.missing();
    if !missing.is_empty() {
        eprintln!("sessiond-bench: no figure for: {}", missing.join(", "));
        return ExitCode::FAILURE;
    }
    if let Some(file) = json {
        if let Err(e) = std::fs::write(&file, report.to_json(&info)) {
            eprintln!("cannot write {file}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn usage(why: &str) -> ExitCode {
    eprintln!("sessiond-bench: {why}\nusage: sessiond-bench [--quick] [--json FILE] | --serve N");
    ExitCode::from(2)
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

/// The runtime the library-driven figures and the populating run on.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// The floor program against `socket`: connect, `hello` and `ping`, two frames read, exit.
fn floor(bins: &Binaries, socket: &Path) -> Command {
    let mut c = Command::new(&bins.floor);
    c.arg(socket);
    c
}

/// A peer ready at `size` (`grown` is how growing it went), or a note saying why it is left
/// out at that size.
fn peer_ready(
    peer: &str,
    size: usize,
    grown: Option<Result<(), String>>,
    notes: &mut Vec<String>,
) -> bool {
    match grown {
        Some(Ok(())) => true,
        Some(Err(why)) => {
            notes.push(format!("{peer} left out at {size}: {why}"));
            false
        }
        // Not running at all: said once, when it would not start.
        None => false,
    }
}

fn run(plan: &Plan, report: &mut Report, info: &mut RunInfo) -> Result<(), String> {
    let bins = Binaries::locate()?;
    let rt = runtime()?;
    let notes = &mut report.notes;
    if plan.quick {
        notes.push(format!(
            "--quick measures list and switch at {:?} sessions only; 10000, for sessiond, tmux \
             and pueue alike, is in the full run",
            plan.sizes
        ));
    }
    let mut tmux = peers::Tmux::start()
        .inspect_err(|why| notes.push(format!("tmux skipped: {why}")))
        .ok();
    let mut pueue = peers::Pueue::start()
        .inspect_err(|why| notes.push(format!("pueue skipped: {why}")))
        .ok();
    info.tmux = tmux.as_ref().and_then(peers::Tmux::version);
    info.pueue = pueue.as_ref().and_then(peers::Pueue::version);

    let mut subject = Subject::new(&bins)?;
    subject.start()?;
    let socket = subject.socket();
    // A second daemon holding one session, so a switch at each larger size is compared with
    // a switch at one session in the same rounds.
    let mut single = Subject::new(&bins)?;
    single.start()?;
    let single_id = single.add_sessions(&rt, 1).remove(0);
    settle(
        "the second daemon",
        &single,
        &rt,
        &single_id,
        &mut report.notes,
    );
    let mut ids: Vec<String> = Vec::new();
    for &size in &plan.sizes {
        ids.extend(subject.add_sessions(&rt, size - ids.len()));
        if size == plan.sizes[0] {
            settle("the daemon", &subject, &rt, &ids[0], &mut report.notes);
        }
        let held = subject.sessions_held()?;
        let notes = &mut report.notes;
        let tmux_ok = peer_ready("tmux", size, tmux.as_mut().map(|t| t.grow_to(size)), notes);
        let pueue_ok = peer_ready(
            "pueue",
            size,
            pueue.as_mut().map(|p| p.grow_to(size)),
            notes,
        );
        let tmux_ref = tmux.as_ref().filter(|_| tmux_ok);
        let pueue_ref = pueue.as_ref().filter(|_| pueue_ok);
        eprintln!("measuring at {held} sessions…");

        // list
        let mut contenders = vec![
            Contender::ours("sessionctl", || {
                let mut c = subject.ctl(&bins.sessionctl);
                c.args(["--json", "list"]);
                c
            }),
            Contender::ours("floor", || floor(&bins, &socket)),
        ];
        if let Some(t) = tmux_ref {
            contenders.push(Contender::peer("tmux ls", || t.command(&["ls"])));
        }
        if let Some(p) = pueue_ref {
            contenders.push(Contender::peer("pueue status --json", || {
                p.command(&["status", "--json"])
            }));
        }
        report.rows.push(measure(
            "sessionctl list --json",
            held,
            contenders,
            plan.warmup,
            plan.runs,
        )?);

        // switch
        let target = ids[0].clone();
        let mut contenders = vec![
            Contender::ours("sessionctl", || {
                let mut c = subject.ctl(&bins.sessionctl);
                c.args(["switch", &target]);
                c
            }),
            Contender::ours("floor", || floor(&bins, &socket)),
            // The same switch from the floor program: what is left between it and sessionctl
            // is sessionctl's; between it and the floor, the daemon's commit.
            Contender::ours("floor's switch", || {
                let mut c = Command::new(&bins.floor);
                c.args(["--switch", target.as_str()]).arg(&socket);
                c
            }),
        ];
        if held > 1 {
            contenders.push(Contender::ours(
                "sessionctl switch, 1 session (second daemon)",
                || {
                    let mut c = single.ctl(&bins.sessionctl);
                    c.args(["switch", &single_id]);
                    c
                },
            ));
        }
        if let Some(t) = tmux_ref {
            contenders.push(Contender::peer("tmux has-session -t", || {
                t.command(&["has-session", "-t", "s0"])
            }));
        }
        report.rows.push(measure(
            "sessionctl switch",
            held,
            contenders,
            plan.warmup,
            plan.runs,
        )?);

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
                report.scalars.push(Scalar::new(
                    &format!("{} requests/s, {conns} connections", kind.name()),
                    Some(held),
                    rps,
                    "req/s",
                    (matches!(kind, throughput::Kind::List))
                        .then(|| "each list returns every session".to_string()),
                ));
            }
        }
    }
    // The peers and the second daemon would only disturb what follows.
    drop(tmux);
    drop(pueue);
    single.stop();

    measure_send(plan, &bins, &rt, &subject, report)?;

    // In-process round trips through the library against a raw socket echo.
    report.rows.extend(inproc::ping_vs_echo(
        &rt,
        &subject.options(),
        subject.pid(),
        &bins.floor,
        plan.runs * 50,
        &mut report.notes,
    )?);

    // Durable submits with 32 clients, into paused sessions.
    let paused = subject.add_sessions(&rt, 32);
    for session in &paused {
        subject.queue_turns(&rt, session, 0);
    }
    let held = subject.sessions_held()?;
    let rate =
        throughput::durable_submits(&rt, &subject.options(), &paused, 32, plan.submits_each)?;
    report.scalars.push(Scalar::new(
        "durable submits/s, 32 clients",
        Some(held),
        rate,
        "submits/s",
        Some(format!(
            "{} submits, each acknowledged after its commit",
            32 * plan.submits_each
        )),
    ));

    // Event delivery to 100 subscribers, then beside one that never reads.
    for stalled in [false, true] {
        let delivery = throughput::event_delivery(
            &rt,
            &subject.options(),
            &socket,
            &ids[0],
            100,
            plan.event_switches,
            stalled,
        )?;
        report.rows.push(delivery_row(
            &delivery,
            subject.sessions_held()?,
            plan,
            stalled,
        ));
    }

    // CPU used while idle. Not measurable (no daemon pid, no /proc): the figure is NaN,
    // which fails the check that every figure was produced.
    let held = subject.sessions_held()?;
    let (cpu, note) = match subject.pid().and_then(|pid| idle::measure(pid, plan.idle)) {
        Some(idle) => (
            idle.cpu_ms_per_sec,
            format!(
                "over {} s with no clients, a window holding {} (one every {} s); its threads \
                 woke {} times",
                plan.idle.as_secs(),
                ticks_in(plan.idle),
                subject::HOUSEKEEPING_TICK.as_secs(),
                idle.wakeups
            ),
        ),
        None => (f64::NAN, "could not be read from /proc".to_string()),
    };
    report.scalars.push(Scalar::new(
        "idle CPU",
        Some(held),
        cpu,
        "ms of CPU per second",
        Some(note),
    ));
    subject.stop();

    measure_startup(plan, &bins, &rt, report)
}

/// Settles a daemon's store before anything is timed on it (see [`Subject::settle_storage`]).
fn settle(
    which: &str,
    subject: &Subject,
    rt: &tokio::runtime::Runtime,
    session: &str,
    notes: &mut Vec<String>,
) {
    match subject.settle_storage(rt, session) {
        Ok(writes) => eprintln!("storage of {which} settled after {writes} switches"),
        Err(writes) => notes.push(format!(
            "the store of {which} was still growing after {writes} switches; the smallest \
             sizes may be timed before it settled"
        )),
    }
}

/// How many housekeeping ticks any window of this length holds.
fn ticks_in(window: Duration) -> String {
    let tick = subject::HOUSEKEEPING_TICK.as_secs_f64();
    let ticks = window.as_secs_f64() / tick;
    if ticks.fract() == 0.0 {
        format!("{ticks} housekeeping ticks")
    } else {
        format!("{} or {} housekeeping ticks", ticks.floor(), ticks.ceil())
    }
}

/// `send` into a paused session (acknowledged and stored, nothing spawned) with 0 and
/// [`SEND_QUEUED`] turns queued: first the two against each other and the floor, with no peer
/// in the rounds; then each against `pueue add` with as many tasks, and the floor. After each
/// run the turn or task it added is cancelled or removed, untimed, so every run finds the
/// queue at the length its row names.
fn measure_send(
    plan: &Plan,
    bins: &Binaries,
    rt: &tokio::runtime::Runtime,
    subject: &Subject,
    report: &mut Report,
) -> Result<(), String> {
    let sessions = subject.add_sessions(rt, 2);
    let (empty, full) = (&sessions[0], &sessions[1]);
    subject.queue_turns(rt, empty, 0);
    subject.queue_turns(rt, full, SEND_QUEUED);
    let held = subject.sessions_held()?;
    let socket = subject.socket();
    let send = |session: &str| {
        let mut c = subject.ctl(&bins.sessionctl);
        c.args(["send", session, "true"]);
        c
    };
    let mut keep_empty = subject.queue_keeper(empty, 0)?;
    let mut keep_full = subject.queue_keeper(full, SEND_QUEUED)?;
    let contenders = vec![
        Contender::ours("sessionctl", || send(full)).then(|| keep_full.cancel_sent()),
        Contender::ours("sessionctl send (0 turns queued)", || send(empty))
            .then(|| keep_empty.cancel_sent()),
        Contender::ours("floor", || floor(bins, &socket)),
    ];
    let mut row = measure(
        &format!("sessionctl send ({SEND_QUEUED} turns queued)"),
        held,
        contenders,
        plan.warmup,
        plan.runs,
    )?;
    add_note(
        &mut row,
        "into a paused session: acknowledged after its commit is fsynced, nothing spawned; \
         each sent turn is cancelled after its run, untimed",
    );
    report.rows.push(row);

    let mut adds = match peers::Pueue::start() {
        Ok(p) => p,
        Err(why) => {
            report.notes.push(format!(
                "sessionctl send not compared with pueue add: {why}"
            ));
            return Ok(());
        }
    };
    for (session, keeper, queued) in [
        (empty, &mut keep_empty, 0),
        (full, &mut keep_full, SEND_QUEUED),
    ] {
        if let Err(why) = adds.grow_to(queued) {
            report.notes.push(format!(
                "sessionctl send ({queued} turns queued) not compared with pueue add: {why}"
            ));
            continue;
        }
        let contenders = vec![
            Contender::ours("sessionctl", || send(session)).then(|| keeper.cancel_sent()),
            Contender::ours("floor", || floor(bins, &socket)),
            Contender::peer(format!("pueue add ({queued} tasks queued)"), || {
                adds.command(&["add", "--", "true"])
            })
            .then(|| adds.remove_added()),
        ];
        let mut row = measure(
            &format!("sessionctl send ({queued} turns queued)"),
            held,
            contenders,
            plan.warmup,
            plan.runs,
        )?;
        add_note(
            &mut row,
            "not the same durability: pueued saves its state by write and rename with no \
             fsync before answering, sessiond answers after an fsynced commit; each added \
             task and sent turn is removed after its run, untimed",
        );
        report.rows.push(row);
    }
    Ok(())
}

/// The row of one event-delivery measurement, which fails (NaN, and a note) if any delivery
/// was lost or the stalled subscriber was let go.
fn delivery_row(d: &throughput::Delivery, held: u64, plan: &Plan, stalled: bool) -> Row {
    let got = d.samples.len();
    let mut summary = d.samples.summary();
    let note = if got < d.expected {
        summary = Summary::failed(got);
        format!(
            "no figure: {got} of {} deliveries arrived (lost, or later than 30 s)",
            d.expected
        )
    } else if let Some(Err(why)) = &d.stalled {
        summary = Summary::failed(got);
        format!("no figure: {why}")
    } else {
        let p99 = summary
            .p99_ms
            .map_or("none".into(), |p| format!("{p:.3} ms"));
        let check = if stalled {
            "; the stalled subscriber was still connected and subscribed at the end"
        } else {
            ""
        };
        format!("p99 {p99} over {got} deliveries{check}")
    };
    Row {
        figure: format!(
            "event delivery to 100 subscribers{}",
            if stalled { ", one stalled" } else { "" }
        ),
        sessions: Some(held),
        runs: plan.event_switches as usize,
        warmup: 0,
        sessiond: summary,
        compared: Vec::new(),
        note: Some(note),
    }
}

/// Start-up to the first answered ping, and RSS, by size; the largest store also holds a
/// history of settled turns.
fn measure_startup(
    plan: &Plan,
    bins: &Binaries,
    rt: &tokio::runtime::Runtime,
    report: &mut Report,
) -> Result<(), String> {
    const STARTS: usize = 3;
    // Bytes; NaN when /proc could not be read, which the every-figure check reports.
    let mut rss_by_size: Vec<(u64, f64)> = Vec::new();
    let largest = plan.startup_sizes.iter().copied().max();
    for &size in &plan.startup_sizes {
        let mut fresh = Subject::new(bins)?;
        fresh.start()?;
        let ids = fresh.add_sessions(rt, size);
        let held = fresh.sessions_held()?;
        let mut note = String::new();
        if Some(size) == largest {
            fresh.add_settled_turns(rt, &ids, STARTUP_TURNS_PER_SESSION);
            note = format!(
                "; {} settled turns stored",
                size * STARTUP_TURNS_PER_SESSION
            );
        }
        fresh.stop();
        let mut startup = Samples::default();
        let mut rss = f64::NAN;
        for _ in 0..STARTS {
            startup.push(fresh.start()?);
            rss = fresh.rss().map_or(f64::NAN, |b| b as f64);
            fresh.stop();
        }
        rss_by_size.push((held, rss));
        let rss_text = if rss.is_finite() {
            format!("{:.1} MB", rss / 1e6)
        } else {
            "not readable".into()
        };
        report.rows.push(Row {
            figure: "daemon start-up to first ping".into(),
            sessions: Some(held),
            runs: STARTS,
            warmup: 0,
            sessiond: startup.summary(),
            compared: Vec::new(),
            note: Some(format!("RSS after start-up: {rss_text}{note}")),
        });
    }
    if let (Some(&(small, a)), Some(&(large, b))) = (rss_by_size.first(), rss_by_size.last()) {
        if large > small {
            report.scalars.push(Scalar::new(
                "RSS per idle session",
                None,
                (b - a) / (large - small) as f64,
                "bytes",
                Some(format!(
                    "RSS after start-up at {large} minus at {small}, per session"
                )),
            ));
        }
        for (size, rss) in rss_by_size {
            report.scalars.push(Scalar::new(
                "daemon RSS after start-up",
                Some(size),
                rss / 1e6,
                "MB",
                None,
            ));
        }
    }
    Ok(())
}
