//! `sessionctl run`: an interactive command owns a session while it runs.

use std::process::Stdio;

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
    let mut run = sb
        .sessionctl()
        .args(["run", "--", "sh", "-c", "echo $$ > attached.pid; sleep 0.8"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the command to start", || {
        project.join("attached.pid").exists()
    });
    let shown = sb.ctl(&["--json", "show", "job"]).json();
    assert_eq!(shown["activity"], "attached");
    assert_eq!(shown["owner"]["owner"], "sessionctl run");
    assert_eq!(shown["owner"]["pid"], run.id());
    let sent = sb.ctl(&["--json", "send", "touch ran-after"]).json();
    assert_eq!(sent["accepted"], false, "queued while attached");
    assert!(!project.join("ran-after").exists());
    assert!(run.wait().unwrap().success());
    eventually("the queued turn to run after the command", || {
        project.join("ran-after").exists()
    });
}

#[test]
fn a_killed_run_gives_the_session_back() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = setup(&sb);
    let mut run = sb
        .sessionctl()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "echo $$ > attached.pid; exec sleep 30",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the command to start", || {
        project.join("attached.pid").exists()
    });
    sb.ctl(&["send", "touch ran-after"]).ok();
    run.kill().unwrap();
    run.wait().unwrap();
    // The orphaned command may linger; end it so it releases the inherited lock file.
    let pid: i32 = sessiond_tests::pid_written_to(&project.join("attached.pid"));
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
