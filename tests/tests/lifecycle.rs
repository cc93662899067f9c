//! One daemon per runtime directory, stale files after a crash, clean shutdown, safe dirs.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use nix::sys::signal::Signal;
use sessiond_tests::{eventually, kind, run_bounded, Sandbox};

#[test]
fn second_daemon_is_refused_while_first_runs() {
    let sb = Sandbox::new();
    let mut first = sb.start_daemon();
    let out = run_bounded(&mut sb.sessiond());
    assert_eq!(out.code(), 3, "stderr: {}", out.stderr());
    let expected = format!(
        "sessiond already running (pid {}, socket {})",
        first.pid(),
        sb.socket().display()
    );
    assert_eq!(out.stderr().trim(), expected);
    assert!(first.running(), "the first daemon must be unaffected");
    let mut conn = sb.raw();
    conn.handshake();
}

#[test]
fn socket_left_by_a_killed_daemon_is_replaced() {
    let sb = Sandbox::new();
    let mut first = sb.start_daemon();
    first.signal(Signal::SIGKILL);
    first.wait();
    assert!(
        sb.socket().exists(),
        "SIGKILL leaves the socket file behind"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(sb.socket()).is_err(),
        "and nothing answers on it"
    );
    let second = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    assert_eq!(sb.recorded_pid(), Some(second.pid()));
}

#[test]
fn daemons_started_at_the_same_instant_leave_exactly_one_serving() {
    let sb = Sandbox::new();
    let mut children: Vec<_> = (0..6)
        .map(|_| {
            sb.sessiond()
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    eventually("one daemon to serve", || {
        std::os::unix::net::UnixStream::connect(sb.socket()).is_ok()
    });
    // All but one exit with the documented status; exactly one keeps running.
    eventually("the losers to exit", || {
        children
            .iter_mut()
            .map(|c| c.try_wait().unwrap().is_some())
            .filter(|exited| *exited)
            .count()
            == 5
    });
    let mut running = 0;
    for child in &mut children {
        match child.try_wait().unwrap() {
            None => running += 1,
            Some(status) => assert_eq!(status.code(), Some(3)),
        }
    }
    assert_eq!(running, 1);
    let mut conn = sb.raw();
    conn.handshake();
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn sigterm_removes_socket_and_pid_file_and_exits_zero() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    assert!(sb.pid_file().exists());
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait();
    assert_eq!(status.code(), Some(0));
    assert!(!sb.socket().exists(), "socket removed");
    assert!(!sb.pid_file().exists(), "pid file removed");
}

#[test]
fn sigint_is_a_graceful_shutdown_too() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    daemon.signal(Signal::SIGINT);
    assert_eq!(daemon.wait().code(), Some(0));
    assert!(!sb.socket().exists());
}

#[test]
fn shutdown_request_is_answered_before_the_daemon_exits() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    let mut idle = sb.raw();
    idle.handshake();
    let mut conn = sb.raw();
    conn.handshake();
    conn.request(5, "shutdown", serde_json::json!({}));
    let payload = conn.read().expect("shutdown answered");
    let v = sessiond_tests::as_json(&payload);
    assert_eq!(v["id"], 5);
    assert_eq!(v["result"]["pid"], daemon.pid());
    conn.expect_closed();
    idle.expect_closed();
    assert_eq!(daemon.wait().code(), Some(0));
    assert!(!sb.socket().exists());
    assert!(!sb.pid_file().exists());
}

#[test]
fn group_or_world_accessible_runtime_dir_is_refused_with_the_fix() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(&sb.runtime).unwrap();
    std::fs::set_permissions(&sb.runtime, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_bounded(&mut sb.sessiond());
    assert_eq!(out.code(), 1);
    let err = out.stderr();
    assert!(err.contains(&sb.runtime.display().to_string()), "{err}");
    assert!(err.contains("chmod 700"), "{err}");
    assert!(!sb.socket().exists(), "nothing was created");
}

#[test]
fn symlinked_state_dir_is_refused() {
    let sb = Sandbox::new();
    let real = sb.root.join("real-state");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&real, &sb.state).unwrap();
    let out = run_bounded(&mut sb.sessiond());
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("symbolic link"), "{}", out.stderr());
}

#[test]
fn invalid_config_stops_start_up_naming_file_and_key() {
    let sb = Sandbox::with_config("[daemon]\nmax_connectoins = 4\n");
    let out = run_bounded(&mut sb.sessiond());
    assert_eq!(out.code(), 1);
    let err = out.stderr();
    assert!(err.contains(&sb.config.display().to_string()), "{err}");
    assert!(err.contains("max_connectoins"), "{err}");
}

#[test]
fn socket_and_directories_are_private() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&sb.runtime), 0o700);
    assert_eq!(mode(&sb.state), 0o700);
    assert_eq!(mode(&sb.socket()), 0o600);
}

#[test]
fn detach_returns_once_the_socket_accepts() {
    let sb = Sandbox::new();
    let out = run_bounded(sb.sessiond().arg("--detach"));
    let stdout = out.ok();
    let pid = sb.recorded_pid().expect("pid file written");
    assert!(stdout.contains(&format!("pid {pid}")), "{stdout}");
    // No waiting: the socket accepts as soon as --detach returned.
    let mut conn = sb.raw();
    conn.handshake();
    let log = std::fs::read_to_string(sb.log_file()).unwrap();
    assert!(log.contains("sessiond ready"), "{log}");
}

#[test]
fn detach_reports_a_start_up_failure_with_the_reason() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.socket()).unwrap(); // a directory where the socket goes
    std::fs::set_permissions(&sb.runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = run_bounded(sb.sessiond().arg("--detach"));
    assert_eq!(out.code(), 1);
    assert!(out.stderr().contains("is a directory"), "{}", out.stderr());
    assert!(
        out.stderr().contains("sessiond.log"),
        "names the log: {}",
        out.stderr()
    );
}

#[test]
fn deleted_socket_is_recreated_and_clients_are_told_meanwhile() {
    let sb = Sandbox::with_config("[daemon]\nsocket_check_interval_ms = 3000\n");
    let _daemon = sb.start_daemon();
    std::fs::remove_file(sb.socket()).unwrap();
    // Before the daemon notices: a client must not autostart a second daemon, and says why.
    let out = sb.ctl(&["--json", "ping"]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    let err = out.json_error();
    assert_eq!(err["error"]["code"], "socket_missing", "{err}");
    eventually("the socket to be recreated", || sb.socket().exists());
    let mut conn = sb.raw();
    conn.handshake();
    conn.request(1, "ping", serde_json::json!({}));
    assert_eq!(kind(&conn.read().unwrap()), "response");
}
