//! One daemon per runtime directory, stale files after a crash, clean shutdown, safe dirs.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;
use sessiond_proto::ErrorCode;
use sessiond_tests::report::Row;
use sessiond_tests::{eventually, gated, kind, release, run_bounded, Gated, Sandbox};

#[test]
fn second_daemon_is_refused_while_first_runs() {
    let sb = Sandbox::new();
    let mut first = sb.start_daemon();
    let expected = format!(
        "sessiond already running (pid {}, socket {})",
        first.pid(),
        sb.socket().display()
    );
    // Once, and again with --detach, which must refuse before forking just the same.
    let mut refusals = 0;
    for detach in [false, true] {
        let mut cmd = sb.sessiond();
        if detach {
            cmd.arg("--detach");
        }
        let out = run_bounded(&mut cmd);
        assert_eq!(out.code(), 3, "stderr: {}", out.stderr());
        assert_eq!(out.stderr().trim(), expected);
        refusals += 1;
    }
    assert!(first.running(), "the first daemon must be unaffected");
    assert_eq!(
        sb.recorded_pid(),
        Some(first.pid()),
        "the pid file is untouched"
    );
    let mut conn = sb.raw();
    conn.handshake();
    Row::new("race", "second_daemon_is_refused_while_first_runs")
        .done("started a second sessiond (foreground, then --detach) on a runtime dir in use")
        .runs(refusals)
        .checked("exit status, the exact message, the first daemon, its pid file and socket")
        .result(format!(
            "{refusals} of {refusals} refused with exit 3 and `sessiond already running (pid N, \
             socket P)`; the first daemon kept its pid file and served a handshake"
        ))
        .record();
}

/// The live (not zombie) sessiond processes serving `sb`'s runtime directory, found in /proc
/// by their command line: a daemon a client autostarted is no child of ours.
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
fn socket_left_by_a_killed_daemon_is_replaced() {
    let sb = Sandbox::new();
    // Twice: a daemon started by hand replaces the stale socket, and so does one a client
    // autostarts when it finds nothing answering there.
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
    let mut second = sb.start_daemon();
    let mut conn = sb.raw();
    conn.handshake();
    assert_eq!(sb.recorded_pid(), Some(second.pid()));
    second.signal(Signal::SIGKILL);
    second.wait();
    assert!(sb.socket().exists(), "the second kill leaves a socket too");
    let ping = sb.ctl(&["--json", "ping"]).json();
    let third = ping["daemon_pid"].as_i64().unwrap() as i32;
    assert_ne!(third, second.pid());
    assert_eq!(sb.recorded_pid(), Some(third));
    assert_eq!(sessiond_processes(&sb), vec![third], "one daemon runs");
    Row::new("crash", "socket_left_by_a_killed_daemon_is_replaced")
        .done(
            "kill -9 a daemon (leaving its socket and pid files), then start one by hand; \
               kill -9 again, then let `sessionctl ping` autostart one",
        )
        .runs(2)
        .checked("the stale socket is replaced, the new daemon answers and the pid file names it")
        .result(
            "2 of 2 stale sockets replaced: a handshake with the hand-started daemon, \
                 a ping answered by the autostarted one; 1 sessiond process afterwards",
        )
        .record();
}

/// Starts `n` daemons on one runtime directory at the same instant, `rounds` times (a fresh
/// sandbox each); checks that exactly one serves and that every other one exits 3 with the
/// documented message naming the winner. Records the row as `scenario`.
fn daemons_started_at_once(n: usize, rounds: usize, scenario: &str) {
    let mut losers_seen = 0;
    for round in 0..rounds {
        let sb = Sandbox::new();
        let mut gates: Vec<Gated> = (0..n)
            .map(|_| gated(&sb.sessiond(), Stdio::null()))
            .collect();
        release(&mut gates);
        eventually("one daemon to serve", || {
            std::os::unix::net::UnixStream::connect(sb.socket()).is_ok()
        });
        // A loser gives up after the instance lock's short probe grace. Wait until all but one
        // have exited, or the bound passes, and then look: two survivors fail below.
        let deadline = std::time::Instant::now() + sessiond_tests::WAIT;
        while gates
            .iter_mut()
            .map(|g| g.child.try_wait().unwrap().is_some())
            .filter(|exited| *exited)
            .count()
            < n - 1
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let running: Vec<i32> = gates
            .iter_mut()
            .filter_map(|g| {
                let alive = g.child.try_wait().unwrap().is_none();
                alive.then(|| g.child.id() as i32)
            })
            .collect();
        assert_eq!(running.len(), 1, "round {round}: serving {running:?}");
        let winner = running[0];
        assert_eq!(sb.recorded_pid(), Some(winner), "the pid file names it");
        let mut conn = sb.raw();
        conn.hello();
        let welcome = sessiond_tests::as_json(&conn.read().expect("welcome"));
        assert_eq!(welcome["pid"], winner, "the socket is the winner's");
        let expected = format!(
            "sessiond already running (pid {winner}, socket {})",
            sb.socket().display()
        );
        for gate in &mut gates {
            if gate.child.id() as i32 == winner {
                continue;
            }
            let status = gate.child.wait().unwrap();
            let mut err = String::new();
            gate.stderr.read_to_string(&mut err).unwrap();
            assert_eq!(status.code(), Some(3), "round {round}: {err}");
            assert_eq!(err.trim(), expected, "round {round}");
            losers_seen += 1;
        }
    }
    assert_eq!(losers_seen, rounds * (n - 1));
    Row::new("race", scenario)
        .done(format!(
            "{n} sessiond processes released at the same instant on one runtime directory, \
             {rounds} rounds"
        ))
        .runs((rounds * n) as u64)
        .checked(
            "exactly one serves (socket, pid file and welcome name it); every other one exits \
             3 printing `sessiond already running (pid N, socket P)` with the winner's pid",
        )
        .result(format!(
            "{rounds} of {rounds} rounds had 1 daemon serving; {losers_seen} of {losers_seen} \
             losers exited 3 with the exact message"
        ))
        .record();
}

#[test]
fn two_daemons_started_at_the_same_instant_leave_exactly_one_serving() {
    daemons_started_at_once(
        2,
        5,
        "two_daemons_started_at_the_same_instant_leave_exactly_one_serving",
    );
}

#[test]
fn ten_daemons_started_at_the_same_instant_leave_exactly_one_serving() {
    daemons_started_at_once(
        10,
        3,
        "ten_daemons_started_at_the_same_instant_leave_exactly_one_serving",
    );
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
    Row::new(
        "fault",
        "sigterm_removes_socket_and_pid_file_and_exits_zero",
    )
    .done("SIGTERM to a serving daemon")
    .checked("exit status; socket and pid file removed")
    .result("exit 0; 0 files left behind")
    .record();
}

#[test]
fn sigint_and_sighup_are_graceful_shutdowns_too() {
    let mut clean = 0;
    for sig in [Signal::SIGINT, Signal::SIGHUP] {
        let sb = Sandbox::new();
        let mut daemon = sb.start_daemon();
        daemon.signal(sig);
        assert_eq!(daemon.wait().code(), Some(0), "{sig}");
        sb.assert_cleaned_up();
        clean += 1;
    }
    Row::new("fault", "sigint_and_sighup_are_graceful_shutdowns_too")
        .done("SIGINT to one serving daemon, SIGHUP to another")
        .runs(clean)
        .checked("exit status; socket and pid file removed")
        .result(format!("{clean} of 2 exited 0 leaving no files"))
        .record();
}

#[test]
fn second_signal_during_a_slow_shutdown_exits_at_once() {
    let sb = Sandbox::with_config(
        "[daemon]\ninterrupt_grace_ms = 60000\nterminate_grace_ms = 60000\n\
         shutdown_grace_ms = 60000\n",
    );
    let mut daemon = sb.start_daemon();
    // A turn that ignores SIGINT: a graceful stop interrupts it and waits out the 60 s
    // grace for it to end.
    sb.new_session(&sb.project("p"), &["--name", "job"]);
    sb.ctl(&["send", "job", "trap '' INT; sleep 60"]).ok();
    sessiond_tests::eventually("the turn to run", || {
        !sb.ctl(&["--json", "queue", "job"]).json()["running"].is_null()
    });
    daemon.signal(Signal::SIGTERM);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        daemon.running(),
        "the first signal waits for the turn to end"
    );
    daemon.signal(Signal::SIGTERM);
    assert_eq!(daemon.wait().code(), Some(1));
    sb.assert_cleaned_up();
    Row::new(
        "fault",
        "second_signal_during_a_slow_shutdown_exits_at_once",
    )
    .done(
        "SIGTERM while a turn that ignores SIGINT runs (60 s graces), then a second \
         SIGTERM",
    )
    .runs(1)
    .checked("the first signal waits for the turn; the second ends the daemon; files")
    .result("still running after the first signal; exit 1 after the second; 0 files left")
    .record();
}

#[test]
fn two_daemons_cannot_share_a_state_directory() {
    let sb = Sandbox::new();
    let first = sb.start_daemon();
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
    assert!(
        err.contains(&format!("sessiond already running (pid {}", first.pid())),
        "{err}"
    );
    assert!(
        err.contains(&sb.socket().display().to_string()),
        "names the running socket: {err}"
    );
    assert!(err.contains("same state directory"), "{err}");
    assert!(
        !other_runtime.join("sessiond.sock").exists(),
        "no second socket"
    );
    Row::new("race", "two_daemons_cannot_share_a_state_directory")
        .done("started a second daemon with another runtime dir on a state dir in use")
        .checked("exit status and message; no second socket")
        .result("exit 3 naming the running daemon's pid, its socket and the shared state dir")
        .record();
}

#[test]
fn daemon_exits_when_its_runtime_directory_is_removed() {
    let sb = Sandbox::with_config("[daemon]\nsocket_check_interval_ms = 100\n");
    let mut daemon = sb.start_daemon();
    std::fs::remove_dir_all(&sb.runtime).unwrap();
    assert_eq!(daemon.wait().code(), Some(0));
    Row::new(
        "fault",
        "daemon_exits_when_its_runtime_directory_is_removed",
    )
    .done("rm -rf of a serving daemon's runtime dir (as at logout)")
    .checked("that the daemon notices and exits rather than serve an unreachable socket")
    .result("exited 0 on its own")
    .record();
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

/// One way to make a private directory unsafe.
#[derive(Clone, Copy, Debug)]
enum Unsafe {
    Mode(u32),
    Symlink,
    ForeignOwner,
    NotADirectory,
}

impl Unsafe {
    /// What the refusal must say.
    fn phrase(self) -> String {
        match self {
            Unsafe::Mode(mode) => format!("mode {mode:04o}"),
            Unsafe::Symlink => "symbolic link".into(),
            Unsafe::ForeignOwner => format!("owned by uid {FOREIGN_UID}"),
            Unsafe::NotADirectory => "not a directory".into(),
        }
    }

    /// Makes `dir` unsafe this way; returns a file whose contents must stay as they are.
    fn apply(self, sb: &Sandbox, dir: &std::path::Path) -> std::path::PathBuf {
        match self {
            Unsafe::Mode(mode) => {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).unwrap();
                dir.to_path_buf()
            }
            Unsafe::Symlink => {
                // The link points at a directory that would pass every other check.
                let real = sb.root.join("real-target");
                std::fs::create_dir(&real).unwrap();
                std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
                std::os::unix::fs::symlink(&real, dir).unwrap();
                real
            }
            Unsafe::ForeignOwner => {
                std::fs::create_dir_all(dir).unwrap();
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
                nix::unistd::chown(
                    dir,
                    Some(nix::unistd::Uid::from_raw(FOREIGN_UID)),
                    Some(nix::unistd::Gid::from_raw(FOREIGN_UID)),
                )
                .unwrap();
                dir.to_path_buf()
            }
            Unsafe::NotADirectory => {
                std::fs::write(dir, "somebody's file").unwrap();
                dir.to_path_buf()
            }
        }
    }
}

/// The owner of a planted directory: `nobody` on Debian.
const FOREIGN_UID: u32 = 65534;

/// What a directory or file holds, to show a refusal changed nothing in it.
fn snapshot(path: &std::path::Path) -> Vec<String> {
    if path.is_dir() {
        let mut names: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    } else {
        vec![std::fs::read_to_string(path).unwrap()]
    }
}

#[test]
fn unsafe_runtime_and_state_dirs_are_refused_by_daemon_and_client() {
    let mut cases = vec![
        Unsafe::Mode(0o755),
        Unsafe::Mode(0o750),
        Unsafe::Mode(0o705),
        Unsafe::Mode(0o711),
        Unsafe::Mode(0o777),
        Unsafe::Symlink,
        Unsafe::NotADirectory,
    ];
    // Only root can give a directory to another user.
    let foreign_tested = sessiond_tests::is_root();
    if foreign_tested {
        cases.push(Unsafe::ForeignOwner);
    } else {
        eprintln!("foreign-owner cases skipped: chown needs root (CI runs as root)");
    }
    let mut refused = 0;
    for runtime in [true, false] {
        for case in &cases {
            let what = format!(
                "{} dir, {case:?}",
                if runtime { "runtime" } else { "state" }
            );
            // The daemon, started by hand.
            let sb = Sandbox::new();
            let dir = if runtime { &sb.runtime } else { &sb.state };
            let witness = case.apply(&sb, dir);
            let before = snapshot(&witness);
            let out = run_bounded(&mut sb.sessiond());
            assert_eq!(out.code(), 1, "{what}: {}", out.stderr());
            let err = out.stderr();
            assert!(err.contains(&dir.display().to_string()), "{what}: {err}");
            assert!(err.contains(&case.phrase()), "{what}: {err}");
            if let Unsafe::Mode(_) = case {
                assert!(
                    err.contains("chmod 700"),
                    "{what}: says how to fix it: {err}"
                );
            }
            assert!(!sb.socket().exists(), "{what}: a socket was made");
            assert!(!sb.pid_file().exists(), "{what}: a pid file was made");
            assert_eq!(
                snapshot(&witness),
                before,
                "{what}: the directory was changed"
            );
            refused += 1;

            // The client: it refuses an unsafe runtime dir itself, before connecting or
            // starting anything; an unsafe state dir makes the daemon it starts refuse.
            let sb = Sandbox::new();
            let dir = if runtime { &sb.runtime } else { &sb.state };
            let witness = case.apply(&sb, dir);
            let before = snapshot(&witness);
            let out = sb.ctl(&["--json", "ping"]);
            let err = out.json_error();
            let message = err["error"]["message"].as_str().unwrap();
            if runtime {
                assert_eq!(out.code(), 1, "{what}: {err}");
                assert_eq!(err["error"]["code"], "unsafe_path", "{what}: {err}");
            } else {
                assert_eq!(out.code(), 3, "{what}: {err}");
                assert!(
                    message.contains("could not start sessiond"),
                    "{what}: {err}"
                );
            }
            assert!(message.contains(&case.phrase()), "{what}: {err}");
            assert!(!sb.socket().exists(), "{what}: a daemon was started");
            assert_eq!(
                snapshot(&witness),
                before,
                "{what}: the directory was changed"
            );
            refused += 1;
        }
    }
    let kinds = cases.len() as u64;
    Row::new(
        "security",
        "unsafe_runtime_and_state_dirs_are_refused_by_daemon_and_client",
    )
    .done(format!(
        "runtime and state dirs made unsafe {kinds} ways (modes 0755, 0750, 0705, 0711, \
             0777; a symlink to a private dir; a regular file{}), each met by `sessiond` and \
             by `sessionctl ping`",
        if foreign_tested {
            "; owned by uid 65534"
        } else {
            ""
        }
    ))
    .runs(refused)
    .checked(
        "exit status, a message naming the dir and the problem (and `chmod 700` for \
                  modes), no socket or pid file, the unsafe dir's contents unchanged",
    )
    .result(format!(
        "{refused} of {refused} refused: sessiond exit 1; sessionctl exit 1 unsafe_path \
             (runtime) or exit 3 could-not-start (state); 0 sockets created"
    ))
    .record();
}

#[test]
fn invalid_config_stops_start_up_naming_file_and_key() {
    let sb = Sandbox::with_config("[daemon]\nmax_connectoins = 4\n");
    let out = run_bounded(&mut sb.sessiond());
    assert_eq!(out.code(), 1);
    let err = out.stderr();
    assert!(err.contains(&sb.config.display().to_string()), "{err}");
    assert!(err.contains("max_connectoins"), "{err}");
    assert!(!sb.socket().exists());
    Row::new(
        "bad input",
        "invalid_config_stops_start_up_naming_file_and_key",
    )
    .done("started sessiond with a misspelt key in config.toml")
    .checked("exit status, message, no socket")
    .result("exit 1 naming the file and the key `max_connectoins`; no socket")
    .record();
}

#[test]
fn a_config_others_may_change_is_refused_as_ssh_refuses_its_own() {
    use std::os::unix::fs::PermissionsExt;
    // Whoever can write the config decides what runs as its user: here, the `shell` provider
    // replaced by something else.
    let sb = Sandbox::with_config(
        "[providers.shell]\ncommand = [\"sh\", \"-c\", \"echo replaced; {prompt}\"]\n",
    );
    let chmod =
        |mode| std::fs::set_permissions(&sb.config, std::fs::Permissions::from_mode(mode)).unwrap();
    // Group-writable counts only when the group is not the user's own private one.
    let other_group =
        nix::unistd::chown(&sb.config, None, Some(nix::unistd::Gid::from_raw(65534))).is_ok();
    let cases: &[(u32, &str)] = if other_group {
        &[(0o666, "its group and every user"), (0o620, "its group")]
    } else {
        &[(0o666, "every user")]
    };
    for &(mode, who) in cases {
        chmod(mode);
        let out = run_bounded(sb.sessiond().arg("--check-config"));
        assert_eq!(out.code(), 1, "{}", out.stderr());
        assert!(
            out.stderr().contains(&format!("can be changed by {who}"))
                && out.stderr().contains("chmod go-w"),
            "{}",
            out.stderr()
        );
        // Autostart says the same, and no daemon is left behind.
        let err = sb
            .ctl(&["--json", "list"])
            .refused(3, "autostart_failed", "chmod go-w");
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(&*sb.config.to_string_lossy()), "{message}");
        assert!(
            !message.contains("no log lines"),
            "no log was written: {message}"
        );
        assert!(!sb.socket().exists());
    }
    // Writable by the user's own private group (umask 002 systems): nobody else's.
    let me = nix::unistd::getuid();
    let own = nix::unistd::getgid();
    nix::unistd::chown(&sb.config, None, Some(own)).unwrap();
    let private = nix::unistd::Group::from_gid(own)
        .unwrap()
        .is_some_and(|g| g.mem.is_empty());
    if private {
        chmod(0o660);
        run_bounded(sb.sessiond().arg("--check-config")).ok();
    }
    // Another user's file: refused too (only where this test may hand a file to another).
    chmod(0o644);
    if nix::unistd::chown(&sb.config, Some(nix::unistd::Uid::from_raw(65534)), None).is_ok() {
        let out = run_bounded(sb.sessiond().arg("--check-config"));
        assert_eq!(out.code(), 1, "{}", out.stderr());
        assert!(
            out.stderr().contains("belongs to uid 65534"),
            "{}",
            out.stderr()
        );
        nix::unistd::chown(&sb.config, Some(me), None).unwrap();
    }
    // Readable by others is fine (as ssh allows), and so is a pipe nobody else edits.
    run_bounded(sb.sessiond().arg("--check-config")).ok();
    sb.ctl(&["list"]).ok();
}

#[test]
fn check_config_refuses_what_a_start_would_trip_on_and_start_names_other_settings() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    // A state dir that cannot be created: its parent is a file.
    let file = sb.root.join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = run_bounded(
        std::process::Command::new(sessiond_tests::sessiond_bin())
            .arg("--runtime-dir")
            .arg(&sb.runtime)
            .arg("--state-dir")
            .arg(file.join("state"))
            .arg("--config")
            .arg(&sb.config)
            .arg("--check-config"),
    );
    assert_eq!(out.code(), 1, "{}", out.stdout());
    assert!(
        out.stderr().contains("cannot create") && out.stderr().contains("a-file"),
        "{}",
        out.stderr()
    );
    // A log path that is a directory: a detached start (autostart's) cannot open it.
    std::fs::create_dir(&sb.state).unwrap();
    std::fs::set_permissions(&sb.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(sb.state.join("sessiond.log")).unwrap();
    let out = run_bounded(sb.sessiond().arg("--check-config"));
    assert_eq!(out.code(), 1, "{}", out.stdout());
    assert!(out.stderr().contains("is a directory"), "{}", out.stderr());
    std::fs::remove_dir(sb.state.join("sessiond.log")).unwrap();
    run_bounded(sb.sessiond().arg("--check-config")).ok();

    // `daemon start` beside a daemon started with another config says so.
    sb.ctl(&["daemon", "start"]).ok();
    let other = sb.root.join("other.toml");
    std::fs::write(&other, "").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = run_bounded(
        sb.sessionctl()
            .env("SESSIOND_CONFIG", &other)
            .args(["daemon", "start"]),
    );
    assert!(out.ok().contains("already running"));
    assert!(
        out.stderr().contains("uses config") && out.stderr().contains("other.toml"),
        "{}",
        out.stderr()
    );
    assert!(!run_bounded(sb.sessionctl().args(["daemon", "start"]))
        .stderr()
        .contains("uses config"));
    sb.ctl(&["daemon", "stop"]).ok();
}

#[test]
fn check_config_says_whether_a_start_would_succeed_and_touches_nothing() {
    // A good config, directories not made yet: it passes, says what a daemon would use, and
    // creates neither directory (a start would).
    let sb = Sandbox::with_config(
        "[daemon]\nlog_level = \"debug\"\n[providers.mine]\ncommand = [\"echo\", \"{prompt}\"]\n",
    );
    let out = run_bounded(sb.sessiond().arg("--check-config"));
    let text = out.ok();
    assert!(text.contains("sessiond would start with"), "{text}");
    assert!(text.contains("debug (from daemon.log_level"), "{text}");
    assert!(text.contains("mine"), "{text}");
    assert!(text.contains("absent: a start creates it"), "{text}");
    assert!(!sb.runtime.exists() && !sb.state.exists());

    // Beside a running daemon it is not refused as a second one.
    let mut daemon = sb.start_daemon();
    run_bounded(sb.sessiond().arg("--check-config")).ok();

    // What would stop a start stops the check, named: a misspelt key, a bad SESSIOND_LOG.
    std::fs::write(&sb.config, "[daemon]\nmax_connectoins = 4\n").unwrap();
    let out = run_bounded(sb.sessiond().arg("--check-config"));
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(out.stderr().contains("max_connectoins"), "{}", out.stderr());
    std::fs::write(&sb.config, "").unwrap();
    let out = run_bounded(
        sb.sessiond()
            .arg("--check-config")
            .env("SESSIOND_LOG", "sessiond=loud"),
    );
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(
        out.stderr().contains("\"loud\" is not a log level")
            && out.stderr().contains("SESSIOND_LOG"),
        "{}",
        out.stderr()
    );
    // An empty SESSIOND_LOG means unset, as every SESSIOND_ variable's does; a bad
    // --log-level is a bad command line.
    let out = run_bounded(sb.sessiond().arg("--check-config").env("SESSIOND_LOG", ""));
    assert!(out.ok().contains("info (the default)"), "{}", out.stdout());
    let out = run_bounded(
        sb.sessiond()
            .args(["--check-config", "--log-level", "loud"]),
    );
    assert_eq!(out.code(), 2, "{}", out.stderr());
    // A config path that is a FIFO is refused, where reading it waited for a writer for ever.
    let fifo = sb.root.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // The sandbox's own sessiond names its config file: these name another.
    let check_with = |config: &std::path::Path| {
        run_bounded(
            Command::new(sessiond_tests::sessiond_bin())
                .arg("--check-config")
                .arg("--runtime-dir")
                .arg(&sb.runtime)
                .arg("--state-dir")
                .arg(&sb.state)
                .arg("--config")
                .arg(config),
        )
    };
    let out = check_with(&fifo);
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(
        out.stderr().contains("FIFO that nothing wrote to"),
        "{}",
        out.stderr()
    );
    // A device reads as it is: /dev/null is all defaults.
    let defaults = check_with(std::path::Path::new("/dev/null"));
    assert!(
        defaults.ok().contains("config       /dev/null"),
        "{}",
        defaults.stdout()
    );
    // What is valid but surely a mistake starts, with a warning: a filter target nothing
    // logs under, a first_command nothing ever ends.
    std::fs::write(
        &sb.config,
        "[daemon]\nlog_level = \"info,tokio=warn\"\n[providers.once]\n\
         first_command = [\"echo\", \"{prompt}\"]\ncommand = [\"echo\", \"{prompt}\"]\n",
    )
    .unwrap();
    let out = run_bounded(sb.sessiond().arg("--check-config"));
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert!(
        out.stderr().contains("warning: log filter") && out.stderr().contains("\"tokio\""),
        "{}",
        out.stderr()
    );
    assert!(
        out.stderr().contains("warning: [providers.once]"),
        "{}",
        out.stderr()
    );
    std::fs::write(&sb.config, "").unwrap();
    // An unsafe directory too, and the running daemon was never disturbed.
    std::fs::set_permissions(&sb.state, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run_bounded(sb.sessiond().arg("--check-config"));
    assert_eq!(out.code(), 1, "{}", out.stderr());
    assert!(out.stderr().contains("chmod 700"), "{}", out.stderr());
    assert!(daemon.running(), "a check stopped the running daemon");
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.wait().success());
    Row::new(
        "bad input",
        "check_config_says_whether_a_start_would_succeed_and_touches_nothing",
    )
    .done(
        "`sessiond --check-config` with a good config, beside a running daemon, then with a \
         misspelt key, a bad SESSIOND_LOG, an empty one, a bad --log-level, a FIFO nothing \
         writes as the config, /dev/null, settings that never take effect, an open state \
         directory",
    )
    .runs(10)
    .checked("exit status and message of each; directories created; the running daemon")
    .result(
        "exit 0 and nothing created for the good ones (with a warning naming each setting \
         that never takes effect); 1 naming the key, the variable, the FIFO and the chmod \
         fix; 2 for the flag; the running daemon untouched",
    )
    .record();
}

/// Octal mode bits (permissions only) of `path`, not following a final symlink.
fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn socket_and_directories_are_private() {
    // Under umask 000, so that only the daemon's own choices keep its files private.
    let sb = Sandbox::new();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"umask 000; exec "$0" "$@""#)
        .arg(sessiond_tests::sessiond_bin())
        .arg("--runtime-dir")
        .arg(&sb.runtime)
        .arg("--state-dir")
        .arg(&sb.state)
        .arg("--config")
        .arg(&sb.config)
        .env_remove("SESSIOND_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut daemon = cmd.spawn().unwrap();
    eventually("the daemon to accept", || {
        std::os::unix::net::UnixStream::connect(sb.socket()).is_ok()
    });
    // Make the state dir hold a session, its database pages and the sessions directory.
    let project = sb.project("p");
    sb.new_session(&project, &["--name", "private"]);
    assert_eq!(mode_of(&sb.runtime), 0o700);
    assert_eq!(mode_of(&sb.state), 0o700);
    assert_eq!(mode_of(&sb.socket()), 0o600);
    let mut checked = 0;
    let mut databases = 0;
    let mut open = Vec::new();
    let mut pending = vec![sb.runtime.clone(), sb.state.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            let mode = mode_of(&path);
            checked += 1;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("sessiond.db")
            {
                databases += 1;
            }
            // Private by their own modes too, not only behind the 0700 directories.
            if mode & 0o077 != 0 {
                open.push(format!("{} {mode:04o}", path.display()));
            }
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            }
        }
    }
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(open.is_empty(), "open to group or others: {open:?}");
    assert!(databases >= 2, "the database and its WAL were not found");
    Row::new("security", "socket_and_directories_are_private")
        .done("ran sessiond under umask 000 and created a session")
        .runs(1)
        .checked("modes of the runtime and state dirs, the socket, and every file beneath them")
        .result(format!(
            "runtime and state dirs 0700, socket 0600; {checked} entries beneath them \
             ({databases} SQLite files among them), 0 open to group or others"
        ))
        .record();
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
    // The log is written by a background thread, so the line may land a moment after the
    // daemon reported ready to its parent.
    eventually("the log to say the daemon is ready", || {
        std::fs::read_to_string(sb.log_file()).is_ok_and(|log| log.contains("sessiond ready"))
    });
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
    assert!(sb.socket().is_dir(), "the directory is left alone");
    Row::new("fault", "detach_reports_a_start_up_failure_with_the_reason")
        .done("sessiond --detach with a directory where its socket goes")
        .checked("the parent's exit status and message")
        .result("exit 1 with the child's reason (`is a directory`) and the log's path")
        .record();
}

#[test]
fn deleted_socket_is_recreated_and_a_waiting_client_gets_through() {
    const DELETIONS: usize = 3;
    let sb = Sandbox::with_config("[daemon]\nsocket_check_interval_ms = 300\n");
    let daemon = sb.start_daemon();
    for round in 0..DELETIONS {
        std::fs::remove_file(sb.socket()).unwrap();
        // The client finds a daemon holding the lock without a socket: it waits for the
        // socket rather than start a second daemon, and reaches the same one.
        let v = sb.ctl(&["--json", "ping"]).json();
        assert_eq!(v["daemon_pid"], daemon.pid(), "round {round}");
        assert_eq!(mode_of(&sb.socket()), 0o600, "recreated private");
        assert_eq!(sb.recorded_pid(), Some(daemon.pid()));
        assert_eq!(sessiond_processes(&sb), vec![daemon.pid()], "one daemon");
        let mut conn = sb.raw();
        conn.handshake();
        conn.request(1, "ping", serde_json::json!({}));
        assert_eq!(kind(&conn.read().unwrap()), "response");
    }
    Row::new(
        "fault",
        "deleted_socket_is_recreated_and_a_waiting_client_gets_through",
    )
    .done(format!(
        "deleted a serving daemon's socket file {DELETIONS} times, each followed at once \
             by `sessionctl ping` (socket check every 300 ms)"
    ))
    .runs(DELETIONS as u64)
    .checked(
        "the daemon recreates the socket (0600); the client waits for it and reaches \
                  the same daemon; the number of sessiond processes",
    )
    .result(format!(
        "{DELETIONS} of {DELETIONS} sockets recreated 0600; {DELETIONS} pings answered by \
             the original pid; 1 sessiond process throughout"
    ))
    .record();
}

#[test]
fn socket_missing_is_reported_not_papered_over_with_a_second_daemon() {
    let sb = Sandbox::with_config("[daemon]\nsocket_check_interval_ms = 600000\n");
    let mut daemon = sb.start_daemon();
    std::fs::remove_file(sb.socket()).unwrap();
    // The client waits longer than the default housekeeping tick for the socket to return:
    // past the usual bound on a command.
    let out = sessiond_tests::CtlOutput(sb.sessionctl().args(["--json", "ping"]).output().unwrap());
    assert_eq!(out.code(), 3, "{}", out.stderr());
    let err = out.json_error();
    assert_eq!(err["error"]["code"], "socket_missing", "{err}");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("pid {}", daemon.pid())),
        "{message}"
    );
    assert!(
        message.contains(&sb.socket().display().to_string()),
        "names the socket: {message}"
    );
    // No second daemon was started to paper over it.
    assert!(!sb.socket().exists(), "nobody made a new socket");
    assert_eq!(sessiond_processes(&sb), vec![daemon.pid()]);
    assert_eq!(sb.recorded_pid(), Some(daemon.pid()));
    // `stop` still works: the daemon cannot be asked, so it is signalled.
    let v = sb.ctl(&["--json", "daemon", "stop"]).json();
    assert_eq!(v["pid"], daemon.pid());
    assert_eq!(daemon.wait().code(), Some(0));
    Row::new(
        "fault",
        "socket_missing_is_reported_not_papered_over_with_a_second_daemon",
    )
    .done(
        "deleted a serving daemon's socket (never rechecked), then ran `sessionctl ping` \
               and `sessionctl daemon stop`",
    )
    .runs(1)
    .checked("the client's exit status and error; sessiond processes; that stop still works")
    .result(
        "ping exit 3 `socket_missing` naming the pid and socket; 1 sessiond process, \
                 no new socket; stop signalled it and it exited 0",
    )
    .record();
}

#[test]
fn a_daemon_systemd_runs_is_not_stopped_or_restarted_from_sessionctl() {
    let sb = Sandbox::new();
    // systemd as the daemon's parent: a shell under that name (a process's name is the file
    // name it was run by; a link, not a copy, which another test's fork could hold open for
    // writing and make "busy"), with the id systemd gives every service run.
    let systemd = sb.root.join("systemd");
    std::os::unix::fs::symlink("/bin/sh", &systemd).unwrap();
    let mut service = std::process::Command::new(&systemd)
        .arg("-c")
        .arg("\"$0\" \"$@\"; exit $?")
        .arg(sessiond_tests::sessiond_bin())
        .args(["--runtime-dir", sb.runtime.to_str().unwrap()])
        .args(["--state-dir", sb.state.to_str().unwrap()])
        .args(["--config", sb.config.to_str().unwrap()])
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .env_remove("SESSIOND_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    sessiond_tests::eventually("the daemon to answer", || {
        sb.ctl(&["--no-autostart", "ping"]).code() == 0
    });
    let status = sb.ctl(&["--json", "daemon", "status"]).json();
    assert_eq!(status["supervisor"], "systemd", "{status}");
    let pid = status["pid"].as_u64().unwrap();
    assert!(sb.ctl(&["daemon", "status"]).ok().contains("run by"));
    for (verb, args) in [
        ("stop", ["daemon", "stop"]),
        ("restart", ["daemon", "restart"]),
    ] {
        let out = sb.ctl(&["--json", args[0], args[1]]);
        let err = out.refused(1, "local_error", "is run by systemd");
        let message = err["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("systemctl --user {verb} sessiond")),
            "{message}"
        );
        let still = sb.ctl(&["--json", "daemon", "status"]).json();
        assert_eq!(still["pid"].as_u64(), Some(pid), "{verb} changed nothing");
    }
    // What systemd does to stop it: SIGTERM to the daemon.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(service.wait().unwrap().success());

    // A daemon started from a shell is not a service's, whatever it inherited.
    let mut plain = sb.sessiond();
    plain
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut daemon = plain.spawn().unwrap();
    sessiond_tests::eventually("the daemon to answer", || {
        sb.ctl(&["--no-autostart", "ping"]).code() == 0
    });
    let status = sb.ctl(&["--json", "daemon", "status"]).json();
    assert!(status["supervisor"].is_null(), "{status}");
    sb.ctl(&["daemon", "stop"]).ok();
    assert!(daemon.wait().unwrap().success());
}

#[test]
fn a_client_waits_for_a_deleted_socket_to_be_recreated() {
    // Recreated on the next housekeeping tick, longer after than a start-up may take.
    let sb = Sandbox::with_config("[daemon]\nsocket_check_interval_ms = 7000\n");
    let mut daemon = sb.start_daemon();
    std::fs::remove_file(sb.socket()).unwrap();
    let out = sessiond_tests::CtlOutput(sb.sessionctl().args(["--json", "ping"]).output().unwrap());
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert_eq!(
        sessiond_processes(&sb),
        vec![daemon.pid()],
        "no second daemon"
    );
    sb.ctl(&["daemon", "stop"]).ok();
    assert_eq!(daemon.wait().code(), Some(0));
}
