//! Providers that misbehave — hang, ignore signals, leave children behind, close their output
//! early, print bytes that are not UTF-8 or a gigabyte without a newline — and prompts that
//! cannot travel as a command-line argument. Every fault must end with the turn settled, the
//! worker's process group gone, and the daemon serving pings and other sessions' turns
//! throughout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sessiond_proto::envelope::ErrorFrame;
use sessiond_proto::{frame, ErrorCode};
use sessiond_tests::report::Row;
use sessiond_tests::{
    as_json, eventually, kind, process_running, rss_kb, CtlOutput, Sandbox, WAIT,
};

/// A gigabyte through a debug-build daemon on a loaded two-core machine takes seconds, not
/// the harness's usual ten.
const SLOW_SETTLE: Duration = Duration::from_secs(150);

/// The daemon's memory bound while a provider streams a gigabyte.
const RSS_LIMIT_KB: u64 = 128 * 1024;

/// A hanging worker with a child, both in the worker's process group.
const HANG: &str = "echo $$ > worker.pid; sleep 1000 & echo $! > child.pid; wait";

fn wait_for(what: &str, bound: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + bound;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {bound:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A session `name` on `provider`, in a project of its own; returns the project (the
/// worker's working directory).
fn session(sb: &Sandbox, name: &str, provider: &str) -> PathBuf {
    let project = sb.project(name);
    sb.new_session(&project, &["--provider", provider, "--name", name]);
    project
}

/// Submits without waiting; returns the turn's id.
fn submit(sb: &Sandbox, session: &str, prompt: &str) -> String {
    let sent = sb.ctl(&["--json", "send", session, prompt]).json();
    sent["turn"]["turn_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no turn id in {sent}"))
        .to_string()
}

/// Submits over a raw connection, which carries any string (NUL included) unchanged.
fn raw_submit(sb: &Sandbox, session: &str, prompt: &str) -> Result<Value, ErrorFrame> {
    let mut conn = sb.raw();
    conn.handshake();
    let (_, answer) = conn.call(1, "submit", json!({"session": session, "prompt": prompt}));
    match kind(&answer).as_str() {
        "response" => Ok(as_json(&answer)["result"].clone()),
        "error" => Err(frame::decode(&answer).expect("an error frame")),
        other => panic!("unexpected {other}: {}", as_json(&answer)),
    }
}

/// Runs `sessionctl ARGS` with `input` on its stdin, reading its output as it comes (bounded
/// by [`WAIT`]): stdin is the only way to hand it a prompt holding NUL or longer than an argv
/// element may be, and a transcript of a megabyte would fill a pipe nobody reads.
fn ctl_with_stdin(sb: &Sandbox, args: &[&str], input: &[u8]) -> CtlOutput {
    let mut child = sb
        .sessionctl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sessionctl");
    let pid = child.id() as i32;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // A refused prompt may close the pipe before it is all written.
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(output) = rx.recv_timeout(WAIT) else {
        // Not reaped yet (its waiter still waits), so the pid is still this child's.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        panic!("sessionctl {args:?} did not finish within {WAIT:?}");
    };
    writer.join().expect("stdin writer");
    CtlOutput(output.expect("sessionctl output"))
}

/// `sessionctl --json ARGS` for answers that may be large (transcripts).
fn ctl_json_big(sb: &Sandbox, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    ctl_with_stdin(sb, &all, b"").json()
}

/// The turn's `{turn, output}` entry from `sessionctl --json log`.
fn log_entry(sb: &Sandbox, session: &str, turn: &str) -> Value {
    let log = ctl_json_big(sb, &["log", session, "--turn", turn]);
    log["turns"][0].clone()
}

/// Waits until the turn settles; returns its log entry.
fn settled(sb: &Sandbox, session: &str, turn: &str, bound: Duration) -> Value {
    let mut entry = Value::Null;
    wait_for(&format!("turn {turn} to settle"), bound, || {
        entry = log_entry(sb, session, turn);
        matches!(
            entry["turn"]["status"].as_str(),
            Some("completed" | "failed" | "cancelled" | "interrupted")
        )
    });
    entry
}

/// A log entry's output on `stream`, chunks joined.
fn output_of(entry: &Value, stream: &str) -> String {
    entry["output"]
        .as_array()
        .expect("output chunks")
        .iter()
        .filter(|c| c["stream"] == stream)
        .map(|c| c["data"].as_str().expect("chunk data"))
        .collect()
}

/// How long a settled turn ran, by the daemon's own timestamps.
fn ran_secs(turn: &Value) -> f64 {
    settled_ms_after(turn, stamp(turn, "started_at")) as f64 / 1000.0
}

fn stamp(turn: &Value, key: &str) -> u64 {
    turn[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no {key}: {turn}"))
}

/// Milliseconds from `since` (ms since the epoch) to the turn's settlement.
fn settled_ms_after(turn: &Value, since: u64) -> u64 {
    stamp(turn, "ended_at").saturating_sub(since)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// The pid a command wrote to `path`, once the whole number is there.
fn pid_in(path: &Path) -> i32 {
    let mut pid = 0;
    eventually(
        &format!("a pid in {}", path.display()),
        || match std::fs::read_to_string(path).map(|t| t.trim().parse()) {
            Ok(Ok(p)) => {
                pid = p;
                true
            }
            _ => false,
        },
    );
    pid
}

/// `/proc/PID/stat` fields after the command name: state, ppid, pgrp, session, …
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit(')').next()?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Live processes in process group `pgid`; zombies (already dead, awaiting a reaper) are not.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Some(fields) = stat_fields(pid) else {
            continue;
        };
        let dead = matches!(fields[0].as_str(), "Z" | "X" | "x");
        if !dead && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid) {
            members.push(pid);
        }
    }
    members
}

/// SIGKILL is asynchronous: the group may take a moment to be reaped from /proc.
fn assert_group_gone(pgid: i32) {
    eventually(&format!("process group {pgid} to be gone"), || {
        group_members(pgid).is_empty()
    });
}

/// What a [`Watch`] saw.
#[derive(Default)]
struct Seen {
    pings: u64,
    max_rss_kb: u64,
}

/// Pings the daemon on a connection of its own and samples its RSS, until finished. A ping
/// unanswered within [`WAIT`] fails the test when the watch is finished.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Seen>>,
}

impl Watch {
    fn start(sb: &Sandbox, daemon_pid: i32) -> Watch {
        let mut conn = sb.raw();
        conn.handshake();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            for id in 1.. {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let (_, answer) = conn.call(id, "ping", json!({}));
                assert_eq!(kind(&answer), "response", "{}", as_json(&answer));
                seen.pings += 1;
                seen.max_rss_kb = seen.max_rss_kb.max(rss_kb(daemon_pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            seen
        });
        Watch {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("finished once");
        thread
            .join()
            .expect("the daemon stopped answering pings during the fault")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Ends, by pid, processes this test's worker started and named in pid files: a worker and
/// what it leaves behind survive the sandbox's daemon being killed after a failed assertion,
/// and an escaped child survives a passing test.
struct Reaper(Vec<PathBuf>);

impl Reaper {
    fn of(dir: &Path, files: &[&str]) -> Reaper {
        Reaper(files.iter().map(|f| dir.join(f)).collect())
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        for file in &self.0 {
            let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            else {
                continue;
            };
            // Only our own sleepers and shells: never a stranger that reused the pid.
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"sleep\0") || c.starts_with(b"sh\0"));
            if ours && process_running(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// Another session's turn runs to completion, with its output, while the fault goes on.
fn bystander_runs(sb: &Sandbox) {
    let out = sb.ctl(&["send", "--follow", "bystander", "echo alive"]);
    assert_eq!(out.code(), 0, "bystander turn: {}", out.stderr());
    assert_eq!(out.stdout(), "alive\n");
}

#[test]
fn a_hanging_provider_fails_at_its_timeout_and_leaves_no_process() {
    let sb = Sandbox::with_config(concat!(
        "[daemon]\ninterrupt_grace_ms = 200\nterminate_grace_ms = 200\n\n",
        "[providers.hang]\ncommand = [\"sh\", \"-c\", \"{prompt}\"]\ntimeout_secs = 2\n",
    ));
    let daemon = sb.start_daemon();
    let project = session(&sb, "hang", "hang");
    session(&sb, "bystander", "shell");
    let _reaper = Reaper::of(&project, &["worker.pid", "child.pid"]);
    let watch = Watch::start(&sb, daemon.pid());
    let turn = submit(&sb, "hang", HANG);
    let worker = pid_in(&project.join("worker.pid"));
    let child = pid_in(&project.join("child.pid"));
    bystander_runs(&sb);
    let entry = settled(&sb, "hang", &turn, 3 * WAIT);
    let seen = watch.finish();
    assert_eq!(entry["turn"]["status"], "failed", "{entry}");
    let error = entry["turn"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("timed out after 2 s"), "{error}");
    assert!(entry["turn"]["exit_code"].is_null(), "{entry}");
    assert_group_gone(worker);
    assert!(!process_running(child), "the worker's child outlived it");
    bystander_runs(&sb);
    sb.ctl(&["ping"]).ok();
    let secs = ran_secs(&entry["turn"]);
    Row::new("fault", "provider_hangs_timeout")
        .done("a provider (timeout_secs = 2) that sleeps for ever with a child in its group")
        .runs(1)
        .checked(
            "the turn fails saying it timed out; worker and child gone; pings and another \
             session's turns answered during and after",
        )
        .result(format!(
            "settled failed \"{error}\" {secs:.1} s after it started; process group gone; {} \
             pings answered meanwhile; 2 bystander turns completed",
            seen.pings
        ))
        .record();
}

#[test]
fn cancelling_a_hanging_turn_settles_it_cancelled_and_leaves_no_process() {
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 200\nterminate_grace_ms = 200\n");
    let daemon = sb.start_daemon();
    let project = session(&sb, "hang", "shell");
    session(&sb, "bystander", "shell");
    let _reaper = Reaper::of(&project, &["worker.pid", "child.pid"]);
    let watch = Watch::start(&sb, daemon.pid());
    let turn = submit(&sb, "hang", HANG);
    let worker = pid_in(&project.join("worker.pid"));
    let child = pid_in(&project.join("child.pid"));
    let members = group_members(worker);
    assert!(
        members.contains(&worker) && members.contains(&child),
        "worker {worker} and child {child} share the worker's group: {members:?}"
    );
    bystander_runs(&sb);
    let cancelled_at = now_ms();
    let answer = sb.ctl(&["--json", "cancel", &turn]).json();
    assert_eq!(
        answer["status"], "running",
        "settles when its process exits"
    );
    let entry = settled(&sb, "hang", &turn, 3 * WAIT);
    let seen = watch.finish();
    assert_eq!(entry["turn"]["status"], "cancelled", "{entry}");
    assert_group_gone(worker);
    assert!(!process_running(child), "the worker's child outlived it");
    let queue = sb.ctl(&["--json", "queue", "hang"]).json();
    assert!(
        queue["paused"]
            .as_str()
            .is_some_and(|r| r.contains("cancelled")),
        "{queue}"
    );
    sb.ctl(&["resume", "hang"]).ok();
    let again = sb.ctl(&["send", "--wait", "hang", "true"]);
    assert_eq!(
        again.code(),
        0,
        "the session runs turns again: {}",
        again.stderr()
    );
    bystander_runs(&sb);
    let after = settled_ms_after(&entry["turn"], cancelled_at);
    let error = entry["turn"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Row::new("fault", "provider_hangs_cancel")
        .done("cancel of a turn whose provider sleeps for ever with a child in its group")
        .runs(1)
        .checked(
            "the turn settles cancelled and pauses its queue; worker and child gone; pings and \
             another session's turns answered; the session runs again after resume",
        )
        .result(format!(
            "settled cancelled (\"{error}\") {after} ms after the cancel; process group of {} \
             gone; {} pings answered meanwhile; 2 bystander turns completed",
            members.len(),
            seen.pings
        ))
        .record();
}

#[test]
fn a_provider_ignoring_sigint_and_sigterm_is_killed_with_its_child() {
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 300\nterminate_grace_ms = 300\n");
    let daemon = sb.start_daemon();
    let project = session(&sb, "stubborn", "shell");
    session(&sb, "bystander", "shell");
    let _reaper = Reaper::of(&project, &["worker.pid", "child.pid"]);
    let watch = Watch::start(&sb, daemon.pid());
    // The child inherits the ignored signals, so only SIGKILL ends either.
    let turn = submit(
        &sb,
        "stubborn",
        "trap '' INT TERM; sleep 1000 & echo $! > child.pid; echo $$ > worker.pid; wait",
    );
    let worker = pid_in(&project.join("worker.pid"));
    let child = pid_in(&project.join("child.pid"));
    let members = group_members(worker);
    assert!(
        members.contains(&worker) && members.contains(&child),
        "worker {worker} and child {child} share the worker's group: {members:?}"
    );
    let cancelled_at = now_ms();
    let answer = sb.ctl(&["--json", "cancel", &turn]).json();
    assert_eq!(answer["status"], "running");
    bystander_runs(&sb);
    let entry = settled(&sb, "stubborn", &turn, 3 * WAIT);
    let seen = watch.finish();
    assert_eq!(entry["turn"]["status"], "cancelled", "{entry}");
    let error = entry["turn"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("SIGKILL"),
        "only SIGKILL could end it: {error}"
    );
    assert_group_gone(worker);
    assert!(!process_running(child), "the worker's child outlived it");
    sb.ctl(&["resume", "stubborn"]).ok();
    let again = sb.ctl(&["send", "--wait", "stubborn", "true"]);
    assert_eq!(again.code(), 0, "{}", again.stderr());
    let after = settled_ms_after(&entry["turn"], cancelled_at);
    Row::new("fault", "provider_ignores_sigterm")
        .done(
            "cancel of a turn whose provider and its child ignore SIGINT and SIGTERM \
             (grace 300 ms + 300 ms)",
        )
        .runs(1)
        .checked("settles cancelled by SIGKILL; every process of the group gone; daemon answers")
        .result(format!(
            "settled cancelled (\"{error}\") {after} ms after the cancel; group of {} \
             (worker + child) gone; {} pings answered meanwhile; bystander turn completed",
            members.len(),
            seen.pings
        ))
        .record();
}

#[test]
fn children_left_behind_neither_hold_the_turn_nor_the_session() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon();
    let project = session(&sb, "forks", "shell");
    session(&sb, "bystander", "shell");
    let _reaper = Reaper::of(&project, &["worker.pid", "ingroup.pid", "escaped.pid"]);
    let watch = Watch::start(&sb, daemon.pid());
    // One child stays in the worker's group; one leaves it with setsid, keeping the output
    // pipes (and the session's lock descriptor) open after the worker exits. The worker waits
    // until the escape is done, so the group kill cannot catch it half-way.
    let turn = submit(
        &sb,
        "forks",
        "echo $$ > worker.pid; sleep 1000 & echo $! > ingroup.pid; \
         setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' & \
         while [ ! -s escaped.pid ]; do sleep 0.05; done; echo started",
    );
    let worker = pid_in(&project.join("worker.pid"));
    let ingroup = pid_in(&project.join("ingroup.pid"));
    let escaped = pid_in(&project.join("escaped.pid"));
    let fields = stat_fields(escaped).expect("the escaped child runs");
    assert_eq!(
        fields[3],
        escaped.to_string(),
        "the escaped child leads a session of its own: {fields:?}"
    );
    assert_ne!(fields[2], worker.to_string(), "it left the worker's group");
    bystander_runs(&sb);
    let entry = settled(&sb, "forks", &turn, 3 * WAIT);
    assert_eq!(entry["turn"]["status"], "completed", "{entry}");
    assert_eq!(entry["turn"]["exit_code"], 0);
    assert_eq!(output_of(&entry, "stdout"), "started\n");
    assert_group_gone(worker);
    assert!(
        !process_running(ingroup),
        "the child in the worker's group outlived the turn"
    );
    // The escaped child still holds the worker's lock descriptor; the session must not stay
    // owned because of it.
    let next = sb.ctl(&["send", "--follow", "forks", "echo next"]);
    assert_eq!(next.code(), 0, "{}", next.stderr());
    assert_eq!(next.stdout(), "next\n");
    let seen = watch.finish();
    bystander_runs(&sb);
    let escaped_alive = process_running(escaped);
    let secs = ran_secs(&entry["turn"]);
    Row::new("fault", "provider_leaves_children")
        .done(
            "a provider exits leaving one child in its group and one that left it with setsid \
             and holds the output pipes open",
        )
        .runs(1)
        .checked(
            "the turn settles completed with its output; the in-group child is killed; the \
             session's next turn runs; pings and another session's turns answered",
        )
        .result(format!(
            "settled completed {secs:.1} s after it started (the 2 s drain bound); in-group \
             child gone; escaped child {} afterwards (outside the group; killed by the \
             test); next turn ran; {} pings answered; 2 bystander turns completed",
            if escaped_alive { "still alive" } else { "gone" },
            seen.pings
        ))
        .record();
}

#[test]
fn a_provider_closing_its_output_early_settles_when_it_exits() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon();
    let project = session(&sb, "closer", "shell");
    session(&sb, "bystander", "shell");
    let _reaper = Reaper::of(&project, &["worker.pid"]);
    let watch = Watch::start(&sb, daemon.pid());
    // The worker lives on after closing both pipes until the test releases it, so "still
    // running after end of output" is observed, not raced.
    let turn = submit(
        &sb,
        "closer",
        "echo $$ > worker.pid; echo before-out; echo before-err >&2; exec >&- 2>&-; \
         touch closed; while [ ! -e release ]; do sleep 0.05; done; echo after-close; exit 0",
    );
    let worker = pid_in(&project.join("worker.pid"));
    eventually("the worker to close its output", || {
        project.join("closed").exists()
    });
    bystander_runs(&sb);
    let during = log_entry(&sb, "closer", &turn);
    assert_eq!(
        during["turn"]["status"], "running",
        "end of output is not the end of the turn: {during}"
    );
    std::fs::write(project.join("release"), "").unwrap();
    let entry = settled(&sb, "closer", &turn, 3 * WAIT);
    assert_eq!(entry["turn"]["status"], "completed", "{entry}");
    assert_eq!(entry["turn"]["exit_code"], 0);
    assert_eq!(output_of(&entry, "stdout"), "before-out\n");
    assert_eq!(output_of(&entry, "stderr"), "before-err\n");
    assert_group_gone(worker);
    // A non-zero exit after closing is kept too.
    let failing = sb.ctl(&["send", "--wait", "closer", "echo x; exec >&- 2>&-; exit 5"]);
    assert_eq!(failing.code(), 5, "{}", failing.stderr());
    let last = sb.ctl(&["--json", "log", "closer", "--last", "1"]).json()["turns"][0].clone();
    assert_eq!(last["turn"]["status"], "failed");
    assert_eq!(last["turn"]["exit_code"], 5);
    assert_eq!(output_of(&last, "stdout"), "x\n");
    let seen = watch.finish();
    Row::new("fault", "provider_closes_output")
        .done("providers close stdout and stderr, then keep running, then exit 0 (and exit 5)")
        .runs(2)
        .checked(
            "the turn stays running after end of output, settles on exit with its code, and \
             keeps the output written before the close",
        )
        .result(format!(
            "running with both pipes closed; settled completed exit 0 and failed exit 5, \
             before-close output kept on both streams; process group gone; {} pings answered; \
             bystander turn completed",
            seen.pings
        ))
        .record();
}

/// Files of the daemon's store, where the transcript's bytes are kept.
fn store_holds(state: &Path, needle: &[u8]) -> bool {
    ["sessiond.db", "sessiond.db-wal"].iter().any(|name| {
        std::fs::read(state.join(name))
            .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    })
}

#[test]
fn invalid_utf8_output_is_replaced_in_text_and_kept_as_bytes_in_the_store() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon();
    let project = session(&sb, "bytes", "shell");
    session(&sb, "bystander", "shell");
    let _reaper = Reaper::of(&project, &["worker.pid"]);
    let watch = Watch::start(&sb, daemon.pid());
    let out = sb.ctl(&[
        "send",
        "--follow",
        "bytes",
        "echo $$ > worker.pid; printf 'm-\\377\\376abc\\n'; printf 'e-\\200\\n' >&2",
    ]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    // PROTOCOL.md (turn_output): data is text, invalid UTF-8 replaced; the store keeps bytes.
    assert_eq!(out.0.stdout, "m-\u{FFFD}\u{FFFD}abc\n".as_bytes());
    assert!(
        out.0.stderr.starts_with("e-\u{FFFD}\n".as_bytes()),
        "{}",
        out.stderr()
    );
    let entry = sb.ctl(&["--json", "log", "bytes", "--last", "1"]).json()["turns"][0].clone();
    assert_eq!(entry["turn"]["status"], "completed");
    assert_eq!(output_of(&entry, "stdout"), "m-\u{FFFD}\u{FFFD}abc\n");
    assert_eq!(output_of(&entry, "stderr"), "e-\u{FFFD}\n");
    let export = sb.ctl(&["export", "bytes"]).ok();
    let exported: String = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("each export line is JSON"))
        .filter(|l| l["type"] == "output" && l["stream"] == "stdout")
        .map(|l| l["data"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(exported, "m-\u{FFFD}\u{FFFD}abc\n");
    assert!(
        store_holds(&sb.state, b"m-\xff\xfeabc\n"),
        "the store keeps the bytes as the provider wrote them"
    );
    assert_group_gone(pid_in(&project.join("worker.pid")));
    bystander_runs(&sb);
    let seen = watch.finish();
    Row::new("fault", "provider_invalid_utf8")
        .done("a provider prints bytes that are not UTF-8 (FF FE, a lone 80) on both streams")
        .runs(1)
        .checked("send --follow, log --json and export show U+FFFD; the store keeps the bytes")
        .result(format!(
            "settled completed; each invalid byte shown as U+FFFD in follow, log and export; \
             raw bytes found in the store; daemon up, {} pings answered, bystander turn \
             completed",
            seen.pings
        ))
        .record();
}

#[test]
fn valid_utf8_split_across_reads_is_shown_intact() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = session(&sb, "split", "shell");
    // One write of 16,386 bytes: the daemon's 16,384-byte read ends inside the "é".
    let text = format!("{}é\n", "a".repeat(16383));
    std::fs::write(project.join("split.txt"), &text).unwrap();
    let out = sb.ctl(&["send", "--wait", "split", "cat split.txt"]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let entry = sb.ctl(&["--json", "log", "split", "--last", "1"]).json()["turns"][0].clone();
    let shown = output_of(&entry, "stdout");
    assert!(
        shown == text,
        "valid UTF-8 came back altered: ends {:?}",
        &shown[shown.len().saturating_sub(8)..]
    );
    Row::new("fault", "valid_utf8_split_across_reads_is_shown_intact")
        .done("a provider wrote 16,386 bytes in one write, a two-byte character straddling the daemon's 16 KiB read")
        .runs(1)
        .checked("the transcript from `log --json` equals what was written")
        .result("the character arrived whole (chunks are cut at character boundaries)")
        .record();
}

/// Streams a gigabyte with no newline through a provider whose output format is `output`,
/// then one JSON line; returns the row's result figures.
fn gigabyte_line(output: &str) -> (Seen, f64, u64) {
    let pointer = if output == "jsonl" {
        "session_id_pointer = \"/session_id\"\n"
    } else {
        ""
    };
    let sb = Sandbox::with_config(&format!(
        "[daemon]\nmax_output_bytes = 65536\n\n\
         [providers.flood]\ncommand = [\"sh\", \"-c\", \"{{prompt}}\"]\noutput = \"{output}\"\n\
         {pointer}"
    ));
    let daemon = sb.start_daemon();
    let project = session(&sb, "flood", "flood");
    session(&sb, "bystander", "shell");
    let _reaper = Reaper::of(&project, &["worker.pid"]);
    let rss_before = rss_kb(daemon.pid());
    let watch = Watch::start(&sb, daemon.pid());
    let turn = submit(
        &sb,
        "flood",
        "echo $$ > worker.pid; head -c 1073741824 /dev/zero; echo; \
         echo '{\"session_id\": \"after-the-flood\"}'",
    );
    let worker = pid_in(&project.join("worker.pid"));
    bystander_runs(&sb);
    let entry = settled(&sb, "flood", &turn, SLOW_SETTLE);
    let seen = watch.finish();
    assert_eq!(entry["turn"]["status"], "completed", "{entry}");
    assert_eq!(entry["turn"]["exit_code"], 0);
    let kept = output_of(&entry, "stdout");
    let marker = kept.trim_start_matches('\0');
    assert_eq!(
        kept.len() - marker.len(),
        65536,
        "exactly max_output_bytes of the line are kept"
    );
    assert!(
        marker.starts_with("\n[sessiond: this turn's output passed 65536 bytes"),
        "then the marker, and nothing after it: {marker:?}"
    );
    assert!(marker.len() < 512, "{marker:?}");
    if output == "jsonl" {
        let shown = sb.ctl(&["--json", "show", "flood"]).json();
        assert_eq!(
            shown["provider_session_id"], "after-the-flood",
            "the line scanner reads the line after the gigabyte"
        );
    }
    assert!(
        seen.max_rss_kb < RSS_LIMIT_KB,
        "daemon RSS reached {} kB (from {rss_before} kB) while a gigabyte line streamed",
        seen.max_rss_kb
    );
    assert_group_gone(worker);
    bystander_runs(&sb);
    let secs = ran_secs(&entry["turn"]);
    (seen, secs, rss_before)
}

fn gigabyte_row(output: &str, scenario: &str, (seen, secs, rss_before): (Seen, f64, u64)) {
    let extra = if output == "jsonl" {
        "; the JSON line after it bound the session"
    } else {
        ""
    };
    Row::new("fault", scenario)
        .done(format!(
            "an `output = \"{output}\"` provider prints a 1 GiB line with no newline \
             (max_output_bytes = 65536)"
        ))
        .runs(1)
        .checked(format!(
            "settles completed; 65,536 bytes kept then the cap marker; daemon RSS under \
             {} MiB while it streams; pings and another session's turns answered",
            RSS_LIMIT_KB / 1024
        ))
        .result(format!(
            "settled completed in {secs:.1} s; 65,536 bytes + marker kept{extra}; daemon RSS \
             peaked at {:.1} MiB (from {:.1} MiB); {} pings answered; 2 bystander turns \
             completed",
            seen.max_rss_kb as f64 / 1024.0,
            rss_before as f64 / 1024.0,
            seen.pings
        ))
        .record();
}

#[test]
fn a_gigabyte_line_from_a_text_provider_is_capped_in_bounded_memory() {
    let figures = gigabyte_line("text");
    gigabyte_row("text", "provider_gigabyte_line_text", figures);
}

#[test]
fn a_gigabyte_line_from_a_jsonl_provider_is_capped_in_bounded_memory() {
    let figures = gigabyte_line("jsonl");
    gigabyte_row("jsonl", "provider_gigabyte_line_jsonl", figures);
}

/// Nothing was stored for the session and the daemon still answers.
fn assert_nothing_queued(sb: &Sandbox, session: &str, turns: usize) {
    let queue = sb.ctl(&["--json", "queue", session]).json();
    assert!(
        queue["running"].is_null() && queue["queued"].as_array().unwrap().is_empty(),
        "{queue}"
    );
    let log = ctl_json_big(sb, &["log", session]);
    assert_eq!(log["turns"].as_array().unwrap().len(), turns, "{log}");
    sb.ctl(&["ping"]).ok();
}

#[test]
fn a_prompt_with_nul_is_refused_at_submit_for_an_argv_provider() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    session(&sb, "argv", "shell");
    let refused = raw_submit(&sb, "argv", "echo before\0after").expect_err("refused");
    assert_eq!(
        refused.code,
        ErrorCode::INVALID_ARGUMENT,
        "{}",
        refused.message
    );
    for needed in ["NUL", "prompt = \"stdin\""] {
        assert!(
            refused.message.contains(needed),
            "the message says {needed}: {}",
            refused.message
        );
    }
    let cli = ctl_with_stdin(&sb, &["--json", "send", "argv", "-"], b"echo a\0b");
    assert_eq!(cli.code(), 1, "{}", cli.stderr());
    let error = cli.json_error();
    assert_eq!(error["error"]["code"], "invalid_argument", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("NUL") && m.contains("stdin")),
        "{error}"
    );
    assert_nothing_queued(&sb, "argv", 0);
    Row::new("security", "prompt_nul_to_argv_provider")
        .done("prompts holding a NUL byte submitted to the argv shell provider (raw wire and sessionctl send -)")
        .runs(2)
        .checked("refused at submit with invalid_argument naming NUL and prompt = \"stdin\"; nothing stored")
        .result(format!(
            "2 of 2 refused with invalid_argument (\"{}\"); 0 turns stored; daemon answers",
            refused.message
        ))
        .record();
}

#[test]
fn a_prompt_longer_than_an_argument_may_be_is_refused_at_submit_for_an_argv_provider() {
    // Linux's MAX_ARG_STRLEN is 32 pages counting the terminating NUL; the shell provider's
    // element is the bare {prompt}.
    const LIMIT: usize = 32 * 4096 - 1;
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    session(&sb, "argv", "shell");
    // At the limit the prompt runs: a shell comment, so the worker ignores its content.
    let at = format!("#{}", "x".repeat(LIMIT - 1));
    let ran = ctl_with_stdin(&sb, &["send", "--wait", "argv", "-"], at.as_bytes());
    assert_eq!(
        ran.code(),
        0,
        "a {LIMIT}-byte prompt runs: {}",
        ran.stderr()
    );
    let mut messages = Vec::new();
    for len in [LIMIT + 1, 1024 * 1024] {
        let over = format!("#{}", "x".repeat(len - 1));
        let refused = raw_submit(&sb, "argv", &over).expect_err("refused");
        assert_eq!(
            refused.code,
            ErrorCode::INVALID_ARGUMENT,
            "{}",
            refused.message
        );
        for needed in [LIMIT.to_string().as_str(), "stdin"] {
            assert!(
                refused.message.contains(needed),
                "a {len}-byte prompt's refusal says {needed}: {}",
                refused.message
            );
        }
        messages.push(refused.message);
    }
    let cli = ctl_with_stdin(
        &sb,
        &["--json", "send", "argv", "-"],
        format!("#{}", "x".repeat(LIMIT)).as_bytes(),
    );
    assert_eq!(cli.code(), 1, "{}", cli.stderr());
    assert_eq!(cli.json_error()["error"]["code"], "invalid_argument");
    assert_nothing_queued(&sb, "argv", 1);
    Row::new("security", "prompt_over_argv_limit")
        .done(format!(
            "prompts of {LIMIT} (the argv element limit), {} and 1,048,576 bytes to the argv \
             shell provider",
            LIMIT + 1
        ))
        .runs(4)
        .checked("at the limit it runs; over it, refused at submit with invalid_argument naming the limit and stdin")
        .result(format!(
            "{LIMIT} bytes ran (exit 0); 3 of 3 longer refused (\"{}\"); nothing else stored",
            messages[0]
        ))
        .record();
}

/// A prompt of exactly `len` bytes full of what a shell or a C string would mangle.
fn hostile_prompt(len: usize) -> String {
    let pattern = "a\0b\n$(touch pwned) `touch pwned`; rm -rf / && echo \"dq\" 'sq' \\ * ? | > < \
                   {prompt} {{ }} %s %n é 🙂\r\t\0\0\n";
    let mut prompt = String::with_capacity(len);
    while prompt.len() + pattern.len() <= len {
        prompt.push_str(pattern);
    }
    while prompt.len() < len {
        prompt.push('x');
    }
    prompt
}

#[test]
fn a_stdin_provider_gets_a_megabyte_prompt_byte_exact() {
    let sb = Sandbox::with_config(
        "[providers.piped]\ncommand = [\"sh\", \"-c\", \"echo $$ > worker.pid; cat > prompt.bin\"]\n\
         prompt = \"stdin\"\n",
    );
    let _daemon = sb.start_daemon();
    let project = session(&sb, "piped", "piped");
    let _reaper = Reaper::of(&project, &["worker.pid"]);
    let prompt = hostile_prompt(1024 * 1024);
    assert_eq!(prompt.len(), 1024 * 1024);
    let accepted = raw_submit(&sb, "piped", &prompt).expect("a stdin provider takes any bytes");
    let turn = accepted["turn"]["turn_id"].as_str().unwrap().to_string();
    let entry = settled(&sb, "piped", &turn, 3 * WAIT);
    assert_eq!(entry["turn"]["status"], "completed", "{}", entry["turn"]);
    let got = std::fs::read(project.join("prompt.bin")).expect("the provider wrote its stdin");
    assert_eq!(got.len(), prompt.len());
    assert!(got == prompt.as_bytes(), "the prompt arrived altered");
    assert_eq!(
        entry["turn"]["prompt"].as_str().map(str::len),
        Some(prompt.len())
    );
    assert!(
        entry["turn"]["prompt"] == prompt.as_str(),
        "stored prompt altered"
    );
    assert!(!project.join("pwned").exists(), "nothing in it was run");
    assert_group_gone(pid_in(&project.join("worker.pid")));
    sb.ctl(&["ping"]).ok();
    let nuls = prompt.bytes().filter(|b| *b == 0).count();
    let lines = prompt.bytes().filter(|b| *b == b'\n').count();
    Row::new("security", "prompt_megabyte_on_stdin")
        .done(format!(
            "a 1,048,576-byte prompt with {nuls} NULs, {lines} newlines, shell metacharacters \
             and multibyte characters submitted to a prompt = \"stdin\" provider"
        ))
        .runs(1)
        .checked("accepted; the bytes the provider read from stdin and the stored prompt equal it; nothing in it ran")
        .result("1,048,576 of 1,048,576 bytes arrived identical; stored prompt identical; turn completed")
        .record();
}
