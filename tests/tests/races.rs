//! Several processes racing for one session: `sessionctl run` (with and without `--wait`) and
//! turns sent with `sessionctl send`, all let go at the same instant. A session has exactly one
//! owner at any moment; every loser either waited its turn or was refused saying how to wait.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sessiond_tests::report::Row;
use sessiond_tests::{gated, release, Finished, Sandbox};

/// Bound for a whole race to finish: every contender runs one after the other, on a machine
/// busy with the rest of the suite, so this is far above the few seconds it takes.
const RACE_BOUND: Duration = Duration::from_secs(90);

/// Polls `f` until it holds or `bound` passes.
fn wait_until(what: &str, bound: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A daemon's shell session named `race`; returns (project dir, session id, its lock file).
fn race_session(sb: &Sandbox) -> (PathBuf, String, PathBuf) {
    let project = sb.project("p");
    let id = sb.new_session(&project, &["--name", "race"]);
    let lock = sb.state.join("sessions").join(format!("{id}.lock"));
    (project, id, lock)
}

/// The refusal a loser without `--wait` must give: code `busy` and the way to wait.
fn assert_clear_refusal(who: &str, out: &Finished) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{who} neither ran nor was refused\nstdout: {}\nstderr: {}",
        out.stdout,
        out.stderr
    );
    let err: serde_json::Value = serde_json::from_str(&out.stderr)
        .unwrap_or_else(|e| panic!("{who}: stderr is not a JSON error ({e}): {}", out.stderr));
    assert_eq!(err["error"]["code"], "busy", "{who}: {err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("session"), "{who}: {message}");
}

/// The shell text each contender runs as the session's owner: it proves it is alone (an
/// atomic `mkdir` two owners could not both make), that the session's lock is held while it
/// runs (a fresh `flock -n` on the lock file must fail), and records when it ran.
fn owner_script(tag: &str, lock: &Path) -> String {
    format!(
        "mkdir owner.d 2>/dev/null || echo 'OVERLAP {tag}' >> race.log; \
         s=$(date +%s%N); \
         if flock -n '{lock}' true; then echo 'UNLOCKED {tag}' >> race.log; fi; \
         sleep 0.3; \
         e=$(date +%s%N); \
         rmdir owner.d; \
         echo \"RAN {tag} $s $e\" >> race.log",
        lock = lock.display()
    )
}

#[test]
fn runs_and_turns_racing_for_one_session_never_own_it_together() {
    const WAITING_RUNS: usize = 5;
    const PLAIN_RUNS: usize = 3;
    const TURNS: usize = 3;
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let (project, id, lock) = race_session(&sb);

    let mut waiting = Vec::new();
    let mut plain = Vec::new();
    let mut turns = Vec::new();
    for i in 0..WAITING_RUNS {
        let mut cmd = sb.sessionctl();
        cmd.args(["--json", "run", "race", "--wait", "--", "sh", "-c"])
            .arg(owner_script(&format!("run-wait-{i}"), &lock));
        waiting.push(gated(&cmd, Stdio::piped()));
    }
    for i in 0..PLAIN_RUNS {
        let mut cmd = sb.sessionctl();
        cmd.args(["--json", "run", "race", "--", "sh", "-c"])
            .arg(owner_script(&format!("run-plain-{i}"), &lock));
        plain.push(gated(&cmd, Stdio::piped()));
    }
    for i in 0..TURNS {
        let mut cmd = sb.sessionctl();
        cmd.args(["--json", "send", "race"])
            .arg(owner_script(&format!("turn-{i}"), &lock));
        turns.push(gated(&cmd, Stdio::piped()));
    }
    release(&mut waiting);
    release(&mut plain);
    release(&mut turns);

    let deadline = Instant::now() + RACE_BOUND;
    for (i, gate) in waiting.into_iter().enumerate() {
        let out = gate.finish(deadline);
        assert!(
            out.status.success(),
            "run --wait {i} did not get its turn: {}",
            out.stderr
        );
    }
    let mut plain_ran = 0;
    let mut plain_refused = 0;
    for (i, gate) in plain.into_iter().enumerate() {
        let out = gate.finish(deadline);
        if out.status.success() {
            plain_ran += 1;
        } else {
            assert_clear_refusal(&format!("run {i} without --wait"), &out);
            let message = out.stderr;
            assert!(message.contains("--wait"), "says how to wait: {message}");
            plain_refused += 1;
        }
    }
    for (i, gate) in turns.into_iter().enumerate() {
        let out = gate.finish(deadline);
        assert!(out.status.success(), "send {i} failed: {}", out.stderr);
    }
    // The sends only queued their turns; they run once every attached command is done.
    let expected = WAITING_RUNS + plain_ran + TURNS;
    let log_path = project.join("race.log");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_until("every turn to run", RACE_BOUND, || {
        read_log().lines().filter(|l| l.starts_with("RAN ")).count() >= expected
    });
    wait_until("the session to come to rest", RACE_BOUND, || {
        let q = sb.ctl(&["--json", "queue", "race"]).json();
        q["running"].is_null() && q["queued"].as_array().is_some_and(|a| a.is_empty())
    });

    let log = read_log();
    let problems: Vec<&str> = log.lines().filter(|l| !l.starts_with("RAN ")).collect();
    assert!(
        problems.is_empty(),
        "an owner was not alone or not locked: {problems:?}\n{log}"
    );
    let mut spans: Vec<(u128, u128, String)> = log
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            assert_eq!(words.len(), 4, "{line}");
            (
                words[2].parse().unwrap(),
                words[3].parse().unwrap(),
                words[1].to_string(),
            )
        })
        .collect();
    assert_eq!(spans.len(), expected, "each owner ran exactly once: {log}");
    spans.sort();
    for pair in spans.windows(2) {
        let (_, first_end, first) = &pair[0];
        let (second_start, _, second) = &pair[1];
        assert!(
            first_end < second_start,
            "{first} and {second} owned the session at the same time: {spans:?}"
        );
    }
    let turns_ran = spans.iter().filter(|s| s.2.starts_with("turn-")).count();
    assert_eq!(turns_ran, TURNS, "every sent turn ran once");
    let history = sb.ctl(&["--json", "log", "race"]).json();
    let statuses: Vec<&str> = history["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["turn"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, vec!["completed"; TURNS], "{history}");
    // At rest, nobody owns it and no ownership file is left behind.
    let shown = sb.ctl(&["--json", "show", "race"]).json();
    assert!(shown["owner"].is_null(), "{shown}");
    assert_eq!(shown["activity"], "idle");
    let sessions = sb.state.join("sessions");
    assert!(!lock.exists(), "lock file left behind");
    assert!(!sessions.join(format!("{id}.pid")).exists());

    Row::new(
        "race",
        "runs_and_turns_racing_for_one_session_never_own_it_together",
    )
    .done(format!(
        "{WAITING_RUNS} `sessionctl run --wait`, {PLAIN_RUNS} `sessionctl run` and \
             {TURNS} `sessionctl send` on one session, released at the same instant; each \
             owner records its start and end, an atomic mkdir probe and a flock probe of the \
             session lock"
    ))
    .runs((WAITING_RUNS + PLAIN_RUNS + TURNS) as u64)
    .checked(
        "no two owners' [start, end] overlap; every owner held the session lock; every \
             loser waited (--wait) or was refused with `busy`; turns all completed; no owner \
             or lock file left",
    )
    .result(format!(
        "{} owners ran one at a time (0 overlaps, 0 unlocked); {WAITING_RUNS} of \
             {WAITING_RUNS} --wait runs waited and ran; {plain_ran} plain runs ran, \
             {plain_refused} refused with busy; {turns_ran} of {TURNS} turns completed",
        spans.len()
    ))
    .record();
}

#[test]
fn contenders_released_at_once_leave_exactly_one_owner() {
    const ROUNDS: usize = 6;
    const RUNS: usize = 3;
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let (project, id, _lock) = race_session(&sb);
    let started_path = project.join("started");
    let release_path = project.join("release");
    let mut run_wins = 0;
    let mut turn_wins = 0;
    let mut refused = 0;
    for round in 0..ROUNDS {
        let _ = std::fs::remove_file(&started_path);
        let _ = std::fs::remove_file(&release_path);
        // Each contender, once it owns the session, says so and holds on until the test lets
        // go: the winner is still the owner while every loser tries.
        let hold = |tag: &str| {
            format!(
                "echo '{tag}' >> started; \
                 while [ ! -e release ]; do sleep 0.02; done"
            )
        };
        let mut gates = Vec::new();
        let mut tags = Vec::new();
        for i in 0..RUNS {
            let tag = format!("run-{round}-{i}");
            let mut cmd = sb.sessionctl();
            cmd.args(["--json", "run", "race", "--", "sh", "-c"])
                .arg(hold(&tag));
            gates.push(gated(&cmd, Stdio::piped()));
            tags.push(tag);
        }
        // A turn competes too: with --no-queue it runs now or is refused, never queued.
        let tag = format!("turn-{round}");
        let mut cmd = sb.sessionctl();
        cmd.args(["--json", "send", "--no-queue", "race"])
            .arg(hold(&tag));
        gates.push(gated(&cmd, Stdio::piped()));
        tags.push(tag);
        release(&mut gates);

        let started = || -> Vec<String> {
            std::fs::read_to_string(&started_path)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        };
        // Settled: every contender has exited, except a run that is holding the session.
        wait_until("every contender to run or give up", RACE_BOUND, || {
            let now = started();
            !now.is_empty()
                && gates
                    .iter_mut()
                    .zip(&tags)
                    .all(|(gate, tag)| gate.exited() || now.contains(tag))
        });
        let winners = started();
        assert_eq!(winners.len(), 1, "round {round}: owners {winners:?}");
        let winner = winners[0].clone();
        let shown = sb.ctl(&["--json", "show", "race"]).json();
        let owner = &shown["owner"];
        assert_eq!(owner["live"], true, "round {round}: {shown}");
        let winner_index = tags.iter().position(|t| *t == winner).unwrap();
        if winner.starts_with("run-") {
            run_wins += 1;
            assert_eq!(shown["activity"], "attached", "{shown}");
            assert_eq!(owner["owner"], "sessionctl run", "{owner}");
            // The pid file names the command the winning sessionctl runs.
            let command = owner["pid"].as_u64().expect("an owner pid");
            assert_eq!(
                parent_of(command),
                Some(gates[winner_index].pid()),
                "{owner}"
            );
        } else {
            turn_wins += 1;
            assert_eq!(shown["activity"], "running", "{shown}");
            assert_eq!(owner["owner"], "daemon worker", "{owner}");
        }
        std::fs::write(&release_path, "").unwrap();
        let deadline = Instant::now() + RACE_BOUND;
        for (i, gate) in gates.into_iter().enumerate() {
            let out = gate.finish(deadline);
            if i == winner_index || (i == RUNS && !winner.starts_with("run-")) {
                assert!(out.status.success(), "{}: {}", tags[i], out.stderr);
            } else {
                assert_clear_refusal(&tags[i], &out);
                refused += 1;
            }
        }
        wait_until("the session to come to rest", RACE_BOUND, || {
            let shown = sb.ctl(&["--json", "show", "race"]).json();
            shown["owner"].is_null() && shown["activity"] == "idle"
        });
        // A second look: nobody started late.
        assert_eq!(started().len(), 1, "round {round}: {:?}", started());
    }
    let sessions = sb.state.join("sessions");
    assert!(!sessions.join(format!("{id}.lock")).exists());
    assert!(!sessions.join(format!("{id}.pid")).exists());
    assert_eq!(refused, ROUNDS * RUNS);

    Row::new(
        "race",
        "contenders_released_at_once_leave_exactly_one_owner",
    )
    .done(format!(
        "{ROUNDS} rounds, each releasing {RUNS} `sessionctl run` and one `sessionctl send \
             --no-queue` on one session at the same instant; the winner holds the session \
             until all others have finished"
    ))
    .runs((ROUNDS * (RUNS + 1)) as u64)
    .checked(
        "exactly one contender started per round, `show` names it as the live owner \
             (pid and kind); every other one exited 1 with code busy",
    )
    .result(format!(
        "{ROUNDS} of {ROUNDS} rounds had exactly 1 owner ({run_wins} won by a run, \
             {turn_wins} by a turn); {refused} of {refused} losers refused with busy"
    ))
    .record();
}

/// A live process's parent, from `/proc/PID/stat` (its fourth field, after the name, which may
/// hold spaces and parentheses).
fn parent_of(pid: u64) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
