//! sessionctl brings the daemon up by itself, once, however many clients ask at once.

use std::collections::BTreeSet;

use sessiond_tests::{run_bounded, Sandbox};

#[test]
fn ten_concurrent_clients_start_exactly_one_daemon() {
    let sb = Sandbox::new();
    let children: Vec<_> = (0..10)
        .map(|_| {
            sb.sessionctl()
                .args(["--json", "ping"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut pids = BTreeSet::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "a client failed: {stderr}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        pids.insert(v["daemon_pid"].as_i64().unwrap());
    }
    assert_eq!(pids.len(), 1, "clients talked to several daemons: {pids:?}");
    assert_eq!(
        sb.recorded_pid().map(i64::from),
        pids.into_iter().next(),
        "and it is the one in the pid file"
    );
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
}

#[test]
fn failure_after_detaching_shows_the_log_tail() {
    let sb = Sandbox::new();
    sb.make_runtime_dir(0o700);
    std::fs::create_dir(sb.socket()).unwrap(); // a directory where the socket goes
    let out = sb.ctl(&["ping"]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    let err = out.stderr();
    assert!(err.contains("is a directory"), "{err}");
    assert!(err.contains("last lines of"), "shows the log: {err}");
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
