//! One daemon per runtime directory, stale files after a crash, clean shutdown, safe dirs.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use nix::sys::signal::Signal;
use sessiond_proto::ErrorCode;
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
    sb.assert_cleaned_up();
}

#[test]
fn sigint_and_sighup_are_graceful_shutdowns_too() {
    for sig in [Signal::SIGINT, Signal::SIGHUP] {
        let sb = Sandbox::new();
        let mut daemon = sb.start_daemon();
        daemon.signal(sig);
        assert_eq!(daemon.wait().code(), Some(0), "{sig}");
        sb.assert_cleaned_up();
    }
}

#[test]
fn second_signal_during_a_slow_shutdown_exits_at_once() {
    let sb =
        Sandbox::with_config("[daemon]\nwrite_timeout_ms = 60000\nshutdown_grace_ms = 60000\n");
    let mut daemon = sb.start_daemon();
    // A client that never reads keeps its connection's writer blocked, so the graceful
    // shutdown would wait out the 60 s grace period.
    let mut hog = sb.raw();
    hog.handshake();
    hog.flood_unread(3000);
    std::thread::sleep(std::time::Duration::from_millis(300));
    daemon.signal(Signal::SIGTERM);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        daemon.running(),
        "the first signal waits for the stalled client"
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().code(), Some(1));
    sb.assert_cleaned_up();
}

#[test]
fn two_daemons_cannot_share_a_state_directory() {
    let sb = Sandbox::new();
    let _first = sb.start_daemon();
    let other_runtime = sb.root.join("run2");
    let out = run_bounded(
        std::process::Command::new(sessiond_tests::sessiond_bin())
            .arg("--runtime-dir")
            .arg(&other_runtime)
            .arg("--state-dir")
            .arg(&sb.state)
            .arg("--config")
            .arg(&sb.config),
    );
    assert_eq!(out.code(), 3, "{}", out.stderr());
    let err = out.stderr();
    assert!(err.contains("sessiond already running"), "{err}");
    assert!(
        err.contains(&sb.socket().display().to_string()),
        "names the running socket: {err}"
    );
    assert!(err.contains("same state directory"), "{err}");
}

#[test]
fn daemon_exits_when_its_runtime_directory_is_removed() {
    let sb = Sandbox::with_config("[daemon]\nsocket_check_interval_ms = 100\n");
    let mut daemon = sb.start_daemon();
    std::fs::remove_dir_all(&sb.runtime).unwrap();
    assert_eq!(daemon.wait().code(), Some(0));
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
    assert_eq!(v["result"]["grace_ms"], 5000);
    // Every connection, the idle one too, is told before it is closed.
    for c in [&mut conn, &mut idle] {
        let notice = c.read_error();
        assert_eq!((notice.code, notice.id), (ErrorCode::SHUTTING_DOWN, None));
        c.expect_closed();
    }
    assert_eq!(daemon.wait().code(), Some(0));
    sb.assert_cleaned_up();
}

#[test]
fn group_or_world_accessible_runtime_dir_is_refused_with_the_fix() {
    let sb = Sandbox::new();
    sb.make_runtime_dir(0o755);
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
    sb.make_runtime_dir(0o700);
    std::fs::create_dir(sb.socket()).unwrap(); // a directory where the socket goes
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
fn deleted_socket_is_recreated_and_a_waiting_client_gets_through() {
    let sb = Sandbox::with_config("[daemon]\nsocket_check_interval_ms = 300\n");
    let daemon = sb.start_daemon();
    std::fs::remove_file(sb.socket()).unwrap();
    // The client finds a daemon holding the lock without a socket: it waits for the socket
    // rather than start a second daemon, and reaches the same one.
    let v = sb.ctl(&["--json", "ping"]).json();
    assert_eq!(v["daemon_pid"], daemon.pid());
    let mut conn = sb.raw();
    conn.handshake();
    conn.request(1, "ping", serde_json::json!({}));
    assert_eq!(kind(&conn.read().unwrap()), "response");
}

#[test]
fn socket_missing_is_reported_not_papered_over_with_a_second_daemon() {
    let sb = Sandbox::with_config("[daemon]\nsocket_check_interval_ms = 600000\n");
    let mut daemon = sb.start_daemon();
    std::fs::remove_file(sb.socket()).unwrap();
    let out = sb.ctl(&["--json", "ping"]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    let err = out.json_error();
    assert_eq!(err["error"]["code"], "socket_missing", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("pid {}", daemon.pid())),
        "{message}"
    );
    // `stop` still works: the daemon cannot be asked, so it is signalled.
    let v = sb.ctl(&["--json", "daemon", "stop"]).json();
    assert_eq!(v["pid"], daemon.pid());
    assert_eq!(daemon.wait().code(), Some(0));
}
