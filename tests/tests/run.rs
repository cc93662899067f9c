//! `sessionctl run`: an interactive command owns a session while it runs.

use std::path::Path;
use std::process::{Child, Stdio};

use sessiond_tests::report::Row;
use sessiond_tests::{eventually, run_bounded, sessionctl_bin, Sandbox};

/// A daemon with one shell session `job` made current; returns its canonical project dir.
fn setup(sb: &Sandbox) -> std::path::PathBuf {
    let project = sb.project("p");
    sb.ctl(&[
        "new",
        "--project",
        project.to_str().unwrap(),
        "--name",
        "job",
    ])
    .ok();
    sb.ctl(&["switch", "job"]).ok();
    std::fs::canonicalize(project).unwrap()
}

/// Starts `sessionctl run -- sh -c SCRIPT` on the current session; `script` writes its shell's
/// pid to `attached.pid`. Returns sessionctl and the command's pid, once the command runs.
fn run_in_background(sb: &Sandbox, project: &Path, script: &str) -> (Child, i32) {
    let run = sb
        .sessionctl()
        .args(["run", "--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = project.join("attached.pid");
    eventually("the command to start", || pid_file.exists());
    (run, sessiond_tests::pid_written_to(&pid_file))
}

#[test]
fn run_gives_the_command_the_session_and_passes_its_status_through() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = setup(&sb);
    let id = sb.session_id("job");
    let out = sb.ctl(&[
        "run",
        "--",
        "sh",
        "-c",
        "echo $SESSIOND_SESSION_ID; pwd; exit 5",
    ]);
    assert_eq!(out.code(), 5, "{}", out.stderr());
    assert_eq!(out.stdout(), format!("{id}\n{}\n", project.display()));
    let after = sb.ctl(&["--json", "show", "job"]).json();
    assert_eq!(after["activity"], "idle");
    assert!(after["owner"].is_null(), "released: {}", after["owner"]);
}

#[test]
fn run_is_refused_while_a_turn_runs_and_waits_with_wait() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    setup(&sb);
    sb.ctl(&["send", "sleep 0.6"]).ok();
    let refused = sb.ctl(&["--json", "run", "--", "true"]);
    assert_eq!(refused.code(), 1);
    let err = refused.json_error();
    assert_eq!(err["error"]["code"], "busy");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("running turn"),
        "{err}"
    );
    let waited = sb.ctl(&["run", "--wait", "--", "true"]);
    assert_eq!(waited.code(), 0, "{}", waited.stderr());
    Row::new(
        "race",
        "run_is_refused_while_a_turn_runs_and_waits_with_wait",
    )
    .done("`sessionctl run` while a 0.6 s turn runs, then `sessionctl run --wait`")
    .runs(2)
    .checked("the refusal's exit status, code and message; that --wait gets the session")
    .result(format!(
        "refused with exit {} `busy` naming the running turn; --wait ran the command, exit {}",
        refused.code(),
        waited.code()
    ))
    .record();
}

#[test]
fn turns_sent_while_attached_are_queued_and_run_after() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = setup(&sb);
    let (mut run, command) = run_in_background(&sb, &project, "echo $$ > attached.pid; sleep 0.8");
    // The pid file names the command, which holds the lock as long as anything does.
    eventually("the pid file to name the command", || {
        sb.ctl(&["--json", "show", "job"]).json()["owner"]["pid"] == command
    });
    let shown = sb.ctl(&["--json", "show", "job"]).json();
    assert_eq!(shown["activity"], "attached");
    assert_eq!(shown["owner"]["owner"], "sessionctl run");
    assert_ne!(shown["owner"]["pid"], run.id());
    let sent = sb.ctl(&["--json", "send", "touch ran-after"]).json();
    assert_eq!(sent["accepted"], false, "queued while attached");
    // Both the answer and the queue say what the turn waits for.
    assert_eq!(sent["attached"], run.id(), "{sent}");
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert_eq!(queue["attached"], run.id(), "{queue}");
    assert!(sb
        .ctl(&["queue"])
        .ok()
        .contains(&format!("attached pid {}", run.id())));
    assert!(!project.join("ran-after").exists());
    assert!(run.wait().unwrap().success());
    assert!(sb.ctl(&["--json", "queue"]).json()["attached"].is_null());
    eventually("the queued turn to run after the command", || {
        project.join("ran-after").exists()
    });
}

#[test]
fn a_killed_run_gives_the_session_back() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = setup(&sb);
    let (mut run, pid) = run_in_background(&sb, &project, "echo $$ > attached.pid; exec sleep 30");
    sb.ctl(&["send", "touch ran-after"]).ok();
    run.kill().unwrap();
    run.wait().unwrap();
    // The orphaned command may linger; end it so it releases the inherited lock file.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    eventually("the queued turn to run once sessionctl is gone", || {
        project.join("ran-after").exists()
    });
    assert_ne!(
        sb.ctl(&["--json", "show", "job"]).json()["activity"],
        "attached"
    );
    // The session is free again: the queued turn settles, nobody owns it, no files are left,
    // and the next run gets it.
    eventually("the session to come to rest", || {
        let shown = sb.ctl(&["--json", "show", "job"]).json();
        shown["owner"].is_null() && shown["activity"] == "idle"
    });
    let id = sb.session_id("job");
    let sessions = sb.state.join("sessions");
    assert!(!sessions.join(format!("{id}.lock")).exists());
    assert!(!sessions.join(format!("{id}.pid")).exists());
    let again = sb.ctl(&["run", "--", "true"]);
    assert_eq!(again.code(), 0, "{}", again.stderr());
    let log = sb.ctl(&["--json", "log", "job"]).json();
    let status = log["turns"][0]["turn"]["status"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(status, "completed");
    Row::new("crash", "a_killed_run_gives_the_session_back")
        .done(
            "kill -9 of `sessionctl run` (and then of its orphaned command) while a turn \
               waits in the session's queue",
        )
        .runs(1)
        .checked(
            "that the queued turn runs, the session ends idle with no owner and no \
                  ownership files, and a new run gets it",
        )
        .result(format!(
            "queued turn ran ({status}); session idle, owner none, 0 lock/pid files; next run \
             exit {}",
            again.code()
        ))
        .record();
}

#[test]
fn run_holds_the_lock_the_daemon_checks_whatever_state_dir_it_was_told() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    setup(&sb);
    // A shell whose environment names another state directory than the daemon's: the lock must
    // still be taken where the daemon looks, or the session would seem free to it.
    let elsewhere = sb.root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let shown = run_bounded(
        sb.sessionctl()
            .env("SESSIOND_STATE_DIR", &elsewhere)
            .args(["run", "--", "sh", "-c", "\"$0\" --json show job"])
            .arg(sessionctl_bin()),
    );
    let shown = shown.json();
    assert_eq!(shown["activity"], "attached", "{shown}");
    assert_eq!(shown["owner"]["owner"], "sessionctl run", "{shown}");
    assert_eq!(shown["owner"]["live"], true, "{shown}");
    assert!(
        !elsewhere.join("sessions").exists(),
        "nothing is made in the state directory the daemon does not use"
    );
    let after = sb.ctl(&["--json", "show", "job"]).json();
    assert!(after["owner"].is_null(), "released: {}", after["owner"]);
}

#[test]
fn sigterm_to_run_is_passed_on_to_the_command_and_the_session_given_back() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = setup(&sb);
    let (mut run, _) = run_in_background(
        &sb,
        &project,
        "trap 'echo term > got-term; kill $!; exit 7' TERM; echo $$ > attached.pid; sleep 30 & wait",
    );
    // What `kill` and a closing terminal send: sessionctl stays to give the session back.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(run.wait().unwrap().code(), Some(7), "the command's status");
    assert!(
        project.join("got-term").exists(),
        "the command got the SIGTERM"
    );
    let shown = sb.ctl(&["--json", "show", "job"]).json();
    assert_eq!(shown["activity"], "idle", "{shown}");
    assert!(shown["owner"].is_null(), "{shown}");
}

#[test]
fn run_wait_waits_attached_and_says_once_what_for() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = setup(&sb);
    // A command left holding the session's lock after its sessionctl was killed.
    let (mut first, holder) =
        run_in_background(&sb, &project, "echo $$ > attached.pid; exec sleep 30");
    eventually("the pid file to name the command", || {
        sb.ctl(&["--json", "show", "job"]).json()["owner"]["pid"] == holder
    });
    first.kill().unwrap();
    first.wait().unwrap();
    eventually("the daemon to detach the killed client", || {
        sb.ctl(&["--json", "show", "job"]).json()["activity"] != "attached"
    });

    let said = sb.root.join("run-wait.err");
    let mut waiting = sb
        .sessionctl()
        .args(["run", "--wait", "--", "sh", "-c", "echo in > got-in"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&said).unwrap())
        .spawn()
        .unwrap();
    eventually("run --wait to say what it waits for", || {
        std::fs::read_to_string(&said)
            .unwrap()
            .contains(&format!("pid {holder} (sessionctl run) holds its lock"))
    });
    // It waits attached, without flapping: nothing queued may start meanwhile.
    sb.ctl(&["send", "touch turn-ran"]).ok();
    for _ in 0..6 {
        let shown = sb.ctl(&["--json", "show", "job"]).json();
        assert_eq!(shown["activity"], "attached", "{shown}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!project.join("turn-ran").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(waiting.wait().unwrap().success());
    assert!(project.join("got-in").exists());
    let told = std::fs::read_to_string(&said).unwrap();
    assert_eq!(told.lines().count(), 1, "said once: {told}");
    eventually("the queued turn to run after the command", || {
        project.join("turn-ran").exists()
    });
}

#[test]
fn run_in_a_deleted_working_directory_names_the_directory() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    let cwd = project.join("sub");
    std::fs::create_dir(&cwd).unwrap();
    sb.new_session(&project, &["--name", "job", "--cwd", cwd.to_str().unwrap()]);
    std::fs::remove_dir(&cwd).unwrap();
    let out = sb.ctl(&["--json", "run", "job", "--", "sh", "-c", "true"]);
    let err = out.refused(1, "local_error", "no longer exists");
    assert!(
        err["message"].as_str().unwrap().contains("sub"),
        "names the directory: {err}"
    );
    let shown = sb.ctl(&["--json", "show", "job"]).json();
    assert_eq!(shown["activity"], "idle", "nothing changed: {shown}");
}

#[test]
fn run_attaches_again_through_a_restarted_daemon() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    let project = setup(&sb);
    let (mut run, _) = run_in_background(
        &sb,
        &project,
        "echo $$ > attached.pid; while [ ! -e go ]; do sleep 0.05; done",
    );
    let attached_to_run = || {
        let shown = sb.ctl(&["--json", "show", "job"]).json();
        shown["activity"] == "attached"
    };
    eventually("the session to be attached", attached_to_run);
    // A crash, then a graceful stop: each new daemon finds the session attached again.
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait();
    let mut daemon = sb.start_daemon();
    eventually(
        "the session to be attached through the second daemon",
        attached_to_run,
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait().success());
    let _daemon = sb.start_daemon();
    eventually(
        "the session to be attached through the third daemon",
        attached_to_run,
    );
    // A turn sent now waits for the command, as it would have before the restarts.
    let sent = sb.ctl(&["--json", "send", "touch ran-after"]).json();
    assert_eq!(sent["accepted"], false, "{sent}");
    assert_eq!(sent["attached"], run.id(), "{sent}");
    assert!(!project.join("ran-after").exists());
    std::fs::write(project.join("go"), "").unwrap();
    assert!(run.wait().unwrap().success());
    eventually("the queued turn to run after the command", || {
        project.join("ran-after").exists()
    });
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert!(queue["paused"].is_null(), "{queue}");
    Row::new("crash", "run_attaches_again_through_a_restarted_daemon")
        .done(
            "`sessionctl run` holding a session while its daemon is killed with SIGKILL and \
             restarted, then stopped with SIGTERM and restarted",
        )
        .runs(1)
        .checked(
            "that each new daemon shows the session attached, a turn sent then is queued \
             behind the command, and runs once the command ends",
        )
        .result("attached again both times; the turn waited, then ran; queue not paused")
        .record();
}

#[test]
fn run_does_not_start_a_stopped_daemon_and_says_the_session_was_not_attached_again() {
    let sb = Sandbox::new();
    let mut daemon = sb.start_daemon();
    let project = setup(&sb);
    let run = sb
        .sessionctl()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "echo $$ > attached.pid; while [ ! -e go ]; do sleep 0.05; done; exit 4",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the command to start", || {
        project.join("attached.pid").exists()
    });
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait().success());
    // Long enough for several tries to attach again; none may start a daemon.
    std::thread::sleep(std::time::Duration::from_millis(600));
    std::fs::write(project.join("go"), "").unwrap();
    let out = run.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(4), "the command's status");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was not attached again after the daemon went away"),
        "{stderr}"
    );
    assert!(!sb.socket().exists(), "a daemon was started");
    assert!(!sb.pid_file().exists(), "a daemon was started");
}
