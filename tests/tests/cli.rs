//! sessionctl's commands, output forms and exit codes.

use sessiond_proto::envelope::{ErrorFrame, Welcome};
use sessiond_proto::{frame, ErrorCode, ProtocolVersion};
use sessiond_tests::report::Row;
use sessiond_tests::{run_bounded, Sandbox};

#[test]
fn json_output_is_one_document_per_command() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let ping = sb.ctl(&["--json", "ping"]).json();
    assert_eq!(ping["pong"], true);
    assert!(ping["round_trip_us"].as_u64().is_some());
    let version = sb.ctl(&["version", "--json"]).json();
    assert_eq!(version["client"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(version["daemon"]["pid"], ping["daemon_pid"]);
    let status = sb.ctl(&["--json", "daemon", "status"]).json();
    assert_eq!(status["pid"], ping["daemon_pid"]);
    assert_eq!(status["socket"], sb.socket().display().to_string());
    assert_eq!(status["max_frame_bytes"], 8 * 1024 * 1024);
    let paths = sb.ctl(&["--json", "daemon", "paths"]).json();
    assert_eq!(paths["socket"], sb.socket().display().to_string());
    assert_eq!(paths["config"], sb.config.display().to_string());
}

#[test]
fn human_status_shows_pid_paths_and_connections() {
    let sb = Sandbox::new();
    let daemon = sb.start_daemon();
    let text = sb.ctl(&["daemon", "status"]).ok();
    assert!(text.contains(&format!("pid {}", daemon.pid())), "{text}");
    assert!(text.contains(&sb.socket().display().to_string()), "{text}");
    assert!(text.contains("connections  1 of 256"), "{text}");
}

#[test]
fn log_level_command_reports_old_and_new_and_refuses_nonsense() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let v = sb.ctl(&["--json", "daemon", "log-level", "debug"]).json();
    assert_eq!(
        (v["previous"].as_str(), v["level"].as_str()),
        (Some("info"), Some("debug"))
    );
    let out = sb.ctl(&["daemon", "log-level", "chatty"]);
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr().contains("\"chatty\" is not a log level"),
        "{}",
        out.stderr()
    );
    // A target sessiond never logs under is a typo, refused rather than matching nothing.
    let out = sb.ctl(&["--json", "daemon", "log-level", "sessiond::cnn=trace"]);
    out.refused(1, "invalid_argument", "matches nothing sessiond logs");
    let status = sb.ctl(&["--json", "daemon", "status"]).json();
    assert_eq!(status["log_level"], "debug");
}

#[test]
fn stop_waits_for_exit_and_succeeds_when_nothing_runs() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    let v = sb.ctl(&["--json", "daemon", "stop"]).json();
    assert_eq!(v["stopped"], true);
    assert_eq!(v["pid"], daemon.pid());
    // stop returned only after the daemon let go of its lock: it is exiting or gone.
    assert_eq!(daemon.wait().code(), Some(0));
    assert!(!sb.socket().exists());
    let v = sb.ctl(&["--json", "daemon", "stop"]).json();
    assert_eq!(v["stopped"], false);
}

#[test]
fn status_never_starts_a_daemon() {
    let sb = Sandbox::new();
    let out = sb.ctl(&["daemon", "status"]);
    assert_eq!(out.code(), 3);
    assert!(out.stderr().contains("not running"), "{}", out.stderr());
    assert!(!sb.socket().exists());
    let v = sb.ctl(&["--json", "version"]).json();
    assert!(v["daemon"].is_null(), "{v}");
    assert!(!sb.socket().exists());
}

#[test]
fn start_and_restart_give_a_fresh_daemon() {
    let sb = Sandbox::new();
    let started = sb.ctl(&["--json", "daemon", "start"]).json();
    assert_eq!(started["started"], true);
    let again = sb.ctl(&["--json", "daemon", "start"]).json();
    assert_eq!(again["started"], false);
    assert_eq!(again["pid"], started["pid"]);
    let restarted = sb.ctl(&["--json", "daemon", "restart"]).json();
    assert_eq!(restarted["stopped_pid"], started["pid"]);
    assert_ne!(restarted["pid"], started["pid"]);
    let ping = sb.ctl(&["--json", "--no-autostart", "ping"]).json();
    assert_eq!(ping["daemon_pid"], restarted["pid"]);
}

#[test]
fn restart_with_a_config_pipe_is_refused_before_anything_stops() {
    let sb = Sandbox::new();
    // `--config <(…)`, in a shell, as people write it: the daemon started so reads it once;
    // a restart's check before stopping would read the next one, and the new daemon none.
    let ctl = sb.sessionctl();
    let mut bash = std::process::Command::new("bash");
    for (key, value) in ctl.get_envs() {
        match value {
            Some(value) => bash.env(key, value),
            None => bash.env_remove(key),
        };
    }
    bash.arg("-c")
        .arg(
            "\"$0\" --config <(echo) daemon start >/dev/null && \
             \"$0\" --json --config <(echo) daemon restart",
        )
        .arg(sessiond_tests::sessionctl_bin())
        .stdin(std::process::Stdio::null());
    let out = sessiond_tests::run_bounded(&mut bash);
    let err = out.refused(1, "local_error", "is a pipe");
    assert!(
        err["message"].as_str().unwrap().contains("not restarting"),
        "{err}"
    );
    // The daemon was left running.
    sb.ctl(&["--json", "--no-autostart", "ping"]).ok();
}

#[test]
fn restart_keeps_the_running_daemon_when_a_new_one_would_not_start() {
    let sb = Sandbox::new();
    let started = sb.ctl(&["--json", "daemon", "start"]).json();
    // The config is edited into an error while the daemon runs.
    std::fs::write(&sb.config, "[daemon]\nmax_connectoins = 4\n").unwrap();
    let out = sb.ctl(&["--json", "daemon", "restart"]);
    let err = out.refused(1, "local_error", "not restarting");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains("max_connectoins"), "{message}");
    assert!(
        message.contains(&format!("(pid {})", started["pid"])),
        "{message}"
    );
    let ping = sb.ctl(&["--json", "--no-autostart", "ping"]).json();
    assert_eq!(ping["daemon_pid"], started["pid"], "the daemon was stopped");
    // Mended, the restart goes ahead.
    std::fs::write(&sb.config, "[daemon]\nmax_connections = 4\n").unwrap();
    let restarted = sb.ctl(&["--json", "daemon", "restart"]).json();
    assert_eq!(restarted["stopped_pid"], started["pid"]);

    // A sessiond too old to know the check (it calls the flag a bad command line) does not
    // block the restart.
    let old = sb.root.join("old-sessiond");
    std::fs::write(
        &old,
        format!(
            "#!/bin/sh\nfor a; do [ \"$a\" = --check-config ] && exit 2; done\nexec '{}' \"$@\"\n",
            sessiond_tests::sessiond_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&old, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let again = run_bounded(
        sb.sessionctl()
            .env("SESSIOND_BIN", &old)
            .args(["--json", "daemon", "restart"]),
    )
    .json();
    assert_eq!(again["stopped_pid"], restarted["pid"]);

    // A daemon running with another state directory is not swapped for one that would not
    // see its sessions.
    sb.ctl(&["daemon", "stop"]).ok();
    let elsewhere = sb.root.join("other-state");
    let out = run_bounded(
        std::process::Command::new(sessiond_tests::sessiond_bin())
            .arg("--detach")
            .arg("--runtime-dir")
            .arg(&sb.runtime)
            .arg("--state-dir")
            .arg(&elsewhere)
            .arg("--config")
            .arg(&sb.config),
    );
    out.ok();
    let pid = sb.ctl(&["--json", "daemon", "status"]).json()["pid"].clone();
    let out = sb.ctl(&["--json", "daemon", "restart"]);
    let err = out.refused(1, "local_error", "not restarting");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("SESSIOND_STATE_DIR={}", elsewhere.display())),
        "{message}"
    );
    let status = sb.ctl(&["--json", "daemon", "status"]).json();
    assert_eq!(status["pid"], pid, "the daemon was stopped");
    sb.ctl(&["daemon", "stop"]).ok();
    Row::new(
        "bad input",
        "restart_keeps_the_running_daemon_when_a_new_one_would_not_start",
    )
    .done(
        "`sessionctl daemon restart` after a misspelt key was written into the config, then \
         beside a daemon running with another state directory",
    )
    .runs(2)
    .checked("exit status, message, and that the running daemon still answers")
    .result(
        "exit 1 naming the key (then the state directory to use) and the kept pid; the same \
         daemon answers; restart works once mended, and with a sessiond too old to check",
    )
    .record();
}

#[test]
fn version_says_what_the_client_is_even_when_the_daemon_cannot_be_asked() {
    let sb = Sandbox::new();
    sb.ctl(&["daemon", "start"]).ok();
    std::fs::remove_file(sb.socket()).unwrap();
    let out = sb.ctl(&["version"]);
    assert_eq!(out.code(), 3, "{}", out.stderr());
    assert!(out.stdout().starts_with("sessionctl "), "{}", out.stdout());
    assert!(out.stderr().contains("socket"), "{}", out.stderr());
    let _ = sb.ctl(&["daemon", "stop"]);
}

#[test]
fn the_runtime_fallback_is_in_tmpdir_else_in_tmp() {
    // Without XDG_RUNTIME_DIR: $TMPDIR/sessiond-UID, as PROTOCOL.md says clients must look.
    let sb = Sandbox::new();
    let uid = nix::unistd::geteuid();
    let runtime_dir = |tmpdir: Option<&std::path::Path>| {
        let mut cmd = sb.sessionctl();
        cmd.env_remove("SESSIOND_RUNTIME_DIR")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("TMPDIR")
            .args(["--json", "daemon", "paths"]);
        if let Some(dir) = tmpdir {
            cmd.env("TMPDIR", dir);
        }
        run_bounded(&mut cmd).json()["runtime_dir"].clone()
    };
    assert_eq!(
        runtime_dir(Some(&sb.root)),
        sb.root
            .join(format!("sessiond-{uid}"))
            .display()
            .to_string()
    );
    assert_eq!(runtime_dir(None), format!("/tmp/sessiond-{uid}"));
}

#[test]
fn usage_errors_exit_2_with_json_when_asked() {
    let sb = Sandbox::new();
    let out = sb.ctl(&["frobnicate"]);
    assert_eq!(out.code(), 2);
    let out = sb.ctl(&["--json", "daemon", "frobnicate"]);
    assert_eq!(out.code(), 2);
    assert_eq!(out.json_error()["error"]["code"], "usage");
    let out = sb.ctl(&["--timeout=-1", "ping"]);
    assert_eq!(out.code(), 2);
    assert!(out.stderr().contains("seconds"), "{}", out.stderr());
}

#[test]
fn help_is_a_manual() {
    let sb = Sandbox::new();
    let help = sb.ctl(&["--help"]).ok();
    for section in [
        "AUTOSTART",
        "EXIT STATUS",
        "ENVIRONMENT",
        "EXAMPLES",
        "daemon",
    ] {
        assert!(help.contains(section), "--help lacks {section}");
    }
    let help =
        run_bounded(std::process::Command::new(sessiond_tests::sessiond_bin()).arg("--help")).ok();
    for section in ["FILES", "SIGNALS", "EXIT STATUS"] {
        assert!(help.contains(section), "sessiond --help lacks {section}");
    }
}

/// Serves one connection on the sandbox socket with a scripted first answer, standing in for
/// a daemon of another protocol version.
fn fake_daemon(sb: &Sandbox, answer: Vec<u8>) -> std::thread::JoinHandle<()> {
    let listener = sb.fake_listener();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let _ = frame::read_frame(&mut stream, 1 << 20);
        std::io::Write::write_all(&mut stream, &answer).unwrap();
    })
}

#[test]
fn daemon_refusing_our_version_exits_4_with_its_message() {
    let sb = Sandbox::new();
    let message = sessiond_proto::version_mismatch_message(
        sessiond_proto::PROTOCOL_VERSION,
        ProtocolVersion::new(2, 0),
    );
    let refusal = frame::encode(&ErrorFrame::new(
        None,
        ErrorCode::VERSION_MISMATCH,
        message.clone(),
    ))
    .unwrap();
    let server = fake_daemon(&sb, refusal);
    let out = sb.ctl(&["--no-autostart", "--json", "ping"]);
    server.join().unwrap();
    assert_eq!(out.code(), 4);
    let err = out.json_error();
    assert_eq!(err["error"]["code"], "version_mismatch");
    assert_eq!(err["error"]["message"], message);
    let shown = err["error"]["message"].as_str().unwrap();
    assert!(shown.contains("2.0"), "{shown}");
    assert!(
        shown.contains(&sessiond_proto::PROTOCOL_VERSION.to_string()),
        "{shown}"
    );
    Row::new(
        "fault",
        "daemon_refusing_our_version_exits_4_with_its_message",
    )
    .done(format!(
        "`sessionctl ping` (protocol {}) against a daemon speaking 2.0 that refuses the \
             hello",
        sessiond_proto::PROTOCOL_VERSION
    ))
    .checked("exit status, error code and message")
    .result(format!(
        "exit {} with version_mismatch, the daemon's message naming both versions",
        out.code()
    ))
    .record();
}

#[test]
fn daemon_welcoming_with_another_major_is_refused_by_the_client() {
    // An older daemon (0.5) and a newer one (9.1) that welcome the client anyway.
    let mut refused = 0;
    for (major, minor) in [(0, 5), (9, 1)] {
        let sb = Sandbox::new();
        let theirs = format!("{major}.{minor}");
        let welcome = frame::encode(&Welcome::new(
            ProtocolVersion::new(major, minor),
            format!("{theirs}.0"),
            1,
            vec![],
        ))
        .unwrap();
        let server = fake_daemon(&sb, welcome);
        let out = sb.ctl(&["--no-autostart", "ping"]);
        server.join().unwrap();
        assert_eq!(out.code(), 4, "{theirs}: {}", out.stderr());
        let err = out.stderr();
        assert!(err.contains(&theirs), "{err}");
        assert!(
            err.contains(&sessiond_proto::PROTOCOL_VERSION.to_string()),
            "names our version too: {err}"
        );
        assert!(err.contains("sessionctl daemon restart"), "{err}");
        refused += 1;
    }
    Row::new(
        "fault",
        "daemon_welcoming_with_another_major_is_refused_by_the_client",
    )
    .done(format!(
        "`sessionctl ping` (protocol {}) against daemons that welcome it speaking 0.5 and \
             9.1",
        sessiond_proto::PROTOCOL_VERSION
    ))
    .runs(refused)
    .checked("exit status and message")
    .result(format!(
        "{refused} of 2 refused with exit 4 naming both versions and `sessionctl daemon \
             restart`"
    ))
    .record();
}

#[test]
fn daemon_that_never_answers_times_out_with_exit_3() {
    let sb = Sandbox::new();
    // Accepts and reads, never answers.
    let listener = sb.fake_listener();
    let holder = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(2));
        drop(stream);
    });
    let out = sb.ctl(&["--no-autostart", "--timeout", "0.3", "--json", "ping"]);
    assert_eq!(out.code(), 3);
    assert_eq!(out.json_error()["error"]["code"], "timeout");
    holder.join().unwrap();
    Row::new("fault", "daemon_that_never_answers_times_out_with_exit_3")
        .done("`sessionctl --timeout 0.3 ping` against a socket that accepts and never answers")
        .checked("exit status and error code")
        .result(format!("exit {} with timeout; no hang", out.code()))
        .record();
}

#[test]
fn a_daemon_that_goes_mid_answer_is_a_lost_connection_not_a_protocol_error() {
    let sb = Sandbox::new();
    // Half of a frame announced as 100 bytes, then the connection closes: a daemon killed, or
    // one that dropped a client it judged stalled, part-way through a write.
    let mut cut = 100u32.to_be_bytes().to_vec();
    cut.extend_from_slice(&[0x80; 50]);
    let server = fake_daemon(&sb, cut);
    let out = sb.ctl(&["--no-autostart", "--json", "ping"]);
    server.join().unwrap();
    assert_eq!(out.code(), 3, "{}", out.stderr());
    let err = out.json_error();
    assert_eq!(err["error"]["code"], "disconnected", "{err}");
    assert!(
        !err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("different builds"),
        "{err}"
    );
}
