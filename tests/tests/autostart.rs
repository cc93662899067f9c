//! sessionctl brings the daemon up by itself, once, however many clients ask at once.

use std::collections::BTreeSet;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sessiond_tests::report::Row;
use sessiond_tests::{gated, release, run_bounded, Gated, Sandbox};

/// The live (not zombie) sessiond processes serving `sb`'s runtime directory, found in /proc
/// by their command line: an autostarted daemon is no child of ours.
fn sessiond_processes(sb: &Sandbox) -> Vec<i32> {
    let runtime = sb.runtime.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_sessiond = args
            .first()
            .is_some_and(|a| std::path::Path::new(a).file_name() == Some("sessiond".as_ref()));
        if is_sessiond && args.contains(&runtime) && sessiond_tests::process_running(pid) {
            found.push(pid);
        }
    }
    found
}

#[test]
fn ten_concurrent_clients_start_exactly_one_daemon() {
    const ROUNDS: usize = 3;
    const CLIENTS: usize = 10;
    let sb = Sandbox::new();
    let mut answered = 0;
    for round in 0..ROUNDS {
        let mut gates: Vec<Gated> = (0..CLIENTS)
            .map(|_| {
                let mut cmd = sb.sessionctl();
                cmd.args(["--json", "ping"]);
                gated(&cmd, Stdio::piped())
            })
            .collect();
        release(&mut gates);
        let mut pids = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for gate in &mut gates {
            while gate.child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "a client hung");
                std::thread::sleep(Duration::from_millis(10));
            }
            let status = gate.child.wait().unwrap();
            let mut stdout = String::new();
            gate.child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut stdout)
                .unwrap();
            let mut stderr = String::new();
            gate.stderr.read_to_string(&mut stderr).unwrap();
            assert!(status.success(), "a client failed: {stderr}");
            let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
            pids.insert(v["daemon_pid"].as_i64().unwrap() as i32);
            answered += 1;
        }
        assert_eq!(pids.len(), 1, "clients talked to several daemons: {pids:?}");
        let pid = pids.into_iter().next().unwrap();
        assert_eq!(
            sb.recorded_pid(),
            Some(pid),
            "and it is the one in the pid file"
        );
        // The previous round's daemon let go of its lock before `stop` returned, but may take
        // a moment more to exit.
        sessiond_tests::eventually("only this round's daemon to run", || {
            sessiond_processes(&sb) == vec![pid]
        });
        // Each daemon that came up logged "sessiond ready" once (from a background thread,
        // so the line may lag a moment): a second one serving would show up here.
        let log = || std::fs::read_to_string(sb.log_file()).unwrap_or_default();
        sessiond_tests::eventually("this round's daemon to log that it is ready", || {
            log().matches("sessiond ready").count() > round
        });
        let log = log();
        let started = log.matches("sessiond ready").count();
        assert_eq!(started, round + 1, "daemons started so far: {log}");
        sb.ctl(&["daemon", "stop"]).ok();
    }
    Row::new("race", "ten_concurrent_clients_start_exactly_one_daemon")
        .done(format!(
            "{CLIENTS} `sessionctl ping` released at the same instant with no daemon running, \
             {ROUNDS} rounds (the daemon stopped between rounds)"
        ))
        .runs((ROUNDS * CLIENTS) as u64)
        .checked(
            "every client answered; the daemon pids they name; sessiond processes running; \
             `sessiond ready` lines in the daemon log",
        )
        .result(format!(
            "{answered} of {} clients answered; 1 daemon pid per round, 1 sessiond process, \
             {ROUNDS} daemons started in {ROUNDS} rounds",
            ROUNDS * CLIENTS
        ))
        .record();
}

#[test]
fn autostarted_daemon_is_detached_and_logs_to_the_state_dir() {
    let sb = Sandbox::new();
    let out = sb.ctl(&["ping"]);
    assert!(out.ok().starts_with("pong from sessiond"));
    let status = sb.ctl(&["--json", "daemon", "status"]).json();
    assert_eq!(status["log_file"], sb.log_file().display().to_string());
    assert_eq!(status["runtime_dir"], sb.runtime.display().to_string());
    assert_eq!(status["state_dir"], sb.state.display().to_string());
    // Detached: a new session, so not in the client's process group.
    let pid = status["pid"].as_i64().unwrap() as i32;
    let sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    assert_eq!(sid.as_raw(), pid, "the daemon leads its own session");
}

#[test]
fn no_autostart_by_flag_or_env_fails_with_exit_3_and_the_way_out() {
    let sb = Sandbox::new();
    let out = sb.ctl(&["--no-autostart", "ping"]);
    assert_eq!(out.code(), 3);
    assert!(
        out.stderr().contains("sessionctl daemon start"),
        "{}",
        out.stderr()
    );
    let out = run_bounded(
        sb.sessionctl()
            .env("SESSIOND_NO_AUTOSTART", "1")
            .args(["--json", "ping"]),
    );
    assert_eq!(out.code(), 3);
    assert_eq!(out.json_error()["error"]["code"], "daemon_not_running");
    assert!(!sb.socket().exists(), "no daemon was started");
}

#[test]
fn failed_autostart_shows_the_reason_and_exits_3() {
    // A config the daemon refuses makes every start fail; the client must say why.
    let sb = Sandbox::with_config("[daemon]\nmax_frame_bytes = 1\n");
    let out = sb.ctl(&["ping"]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    let err = out.stderr();
    assert!(err.contains("could not start sessiond"), "{err}");
    assert!(err.contains("max_frame_bytes = 1"), "{err}");
    assert!(!sb.socket().exists());
    Row::new("fault", "failed_autostart_shows_the_reason_and_exits_3")
        .done("`sessionctl ping` autostarting a daemon whose config it refuses")
        .checked("exit status and message; no daemon left")
        .result(format!(
            "exit {} with `could not start sessiond` and the daemon's reason (max_frame_bytes); \
             no socket",
            out.code()
        ))
        .record();
}

#[test]
fn failure_after_detaching_shows_the_log_tail() {
    let sb = Sandbox::new();
    // An earlier daemon's lines in the log are not this start's story.
    sb.ctl(&["ping"]).ok();
    sb.ctl(&["daemon", "stop"]).ok();
    assert!(std::fs::read_to_string(sb.log_file())
        .unwrap()
        .contains("sessiond ready"));
    std::fs::create_dir(sb.socket()).unwrap(); // a directory where the socket goes
    let out = sb.ctl(&["ping"]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    let err = out.stderr();
    assert!(err.contains("is a directory"), "{err}");
    assert!(err.contains("last lines of"), "shows the log: {err}");
    assert!(
        !err.contains("sessiond ready"),
        "only this start's lines: {err}"
    );
    Row::new("fault", "failure_after_detaching_shows_the_log_tail")
        .done(
            "`sessionctl ping` autostarting a daemon that fails after detaching (a directory \
               where its socket goes)",
        )
        .checked("exit status; the reason and the daemon log's tail in the message")
        .result(format!(
            "exit {} with `is a directory` and the last lines of sessiond.log",
            out.code()
        ))
        .record();
}

#[test]
fn missing_daemon_program_is_named() {
    let sb = Sandbox::new();
    let out = run_bounded(
        sb.sessionctl()
            .env("SESSIOND_BIN", sb.root.join("no-such-sessiond"))
            .arg("ping"),
    );
    assert_eq!(out.code(), 3);
    assert!(
        out.stderr().contains("no-such-sessiond"),
        "{}",
        out.stderr()
    );
    assert!(out.stderr().contains("SESSIOND_BIN"), "{}", out.stderr());
    Row::new("fault", "missing_daemon_program_is_named")
        .done("`sessionctl ping` with SESSIOND_BIN naming a program that does not exist")
        .checked("exit status and message")
        .result(format!(
            "exit {} naming the missing program and SESSIOND_BIN",
            out.code()
        ))
        .record();
}

#[test]
fn client_refuses_an_unsafe_runtime_dir() {
    let sb = Sandbox::new();
    sb.make_runtime_dir(0o777);
    let out = sb.ctl(&["--json", "ping"]);
    assert_eq!(out.code(), 1);
    let err = out.json_error();
    assert_eq!(err["error"]["code"], "unsafe_path");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("chmod 700"));
}

#[test]
fn a_daemon_program_that_exits_0_without_serving_is_an_autostart_failure() {
    let sb = Sandbox::new();
    for args in [&["--json", "ping"][..], &["--json", "daemon", "start"]] {
        let out = run_bounded(sb.sessionctl().env("SESSIOND_BIN", "/bin/true").args(args));
        let err = out.refused(3, "autostart_failed", "exited 0, but no daemon serves");
        assert!(
            !err["message"].as_str().unwrap().contains("daemon start"),
            "no advice to run what just failed: {err}"
        );
    }
}

#[test]
fn of_concurrent_daemon_starts_only_the_one_that_started_it_says_so() {
    let sb = Sandbox::new();
    let starts: Vec<_> = (0..6)
        .map(|_| {
            sb.sessionctl()
                .args(["--json", "daemon", "start"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let reports: Vec<serde_json::Value> = starts
        .into_iter()
        .map(|child| sessiond_tests::CtlOutput(child.wait_with_output().unwrap()).json())
        .collect();
    let started = reports.iter().filter(|r| r["started"] == true).count();
    assert_eq!(started, 1, "{reports:?}");
    let pids: BTreeSet<u64> = reports.iter().filter_map(|r| r["pid"].as_u64()).collect();
    assert_eq!(pids.len(), 1, "one daemon: {reports:?}");
    sb.ctl(&["daemon", "stop"]).ok();
}
