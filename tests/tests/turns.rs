//! Turns: prompts run through providers, one at a time per session, in order, with their
//! output streamed and their exit status kept.

use std::path::Path;

use sessiond_tests::Sandbox;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A sandbox with a daemon and one shell session made current; returns its project dir.
fn shell_session(sb: &Sandbox) -> std::path::PathBuf {
    let project = sb.project("p");
    sb.ctl(&["new", "--project", path_str(&project), "--name", "job"])
        .ok();
    sb.ctl(&["switch", "job"]).ok();
    project
}

#[test]
fn follow_streams_both_outputs_and_passes_the_exit_code_through() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    let out = sb.ctl(&["send", "--follow", "echo to-out; echo to-err >&2; exit 7"]);
    assert_eq!(out.code(), 7, "stderr: {}", out.stderr());
    assert_eq!(out.stdout(), "to-out\n");
    assert!(out.stderr().starts_with("to-err\n"), "{}", out.stderr());
    assert!(
        out.stderr().contains("failed (exit code 7)"),
        "{}",
        out.stderr()
    );
    let ok = sb.ctl(&["send", "--wait", "true"]);
    assert_eq!(ok.code(), 0, "{}", ok.stderr());
}

#[test]
fn turns_run_one_at_a_time_in_submission_order_each_once() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let log = project.join("order.log");
    // The first turn holds the session long enough for the rest to queue behind it.
    let first = sb
        .ctl(&["--json", "send", "sleep 0.5; echo 0 >> order.log"])
        .json();
    assert_eq!(first["accepted"], true);
    for i in 1..6 {
        let queued = sb
            .ctl(&["--json", "send", &format!("echo {i} >> order.log")])
            .json();
        assert_eq!(queued["accepted"], false);
        assert_eq!(queued["turn"]["position"], i);
        assert_eq!(queued["turn"]["status"], "queued");
    }
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert_eq!(queue["queued"].as_array().unwrap().len(), 5);
    assert!(queue["running"].is_object());
    let last = sb.ctl(&["send", "--wait", "echo done >> order.log"]);
    assert_eq!(last.code(), 0, "{}", last.stderr());
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(lines, "0\n1\n2\n3\n4\n5\ndone\n", "order or count wrong");
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert!(queue["running"].is_null() && queue["queued"].as_array().unwrap().is_empty());
    let listed = sb.ctl(&["--json", "show", "job"]).json();
    assert_eq!(listed["activity"], "idle");
    assert_eq!(listed["queue_length"], 0);
}

#[test]
fn no_queue_refuses_a_busy_session_and_stores_nothing() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    sb.ctl(&["send", "sleep 1"]).ok();
    let refused = sb.ctl(&["--json", "send", "--no-queue", "echo never"]);
    assert_eq!(refused.code(), 1);
    assert_eq!(refused.json_error()["error"]["code"], "busy");
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert!(queue["queued"].as_array().unwrap().is_empty());
}

#[test]
fn prompt_reaches_the_provider_byte_exact_as_one_argument() {
    let sb =
        Sandbox::with_config("[providers.echoer]\ncommand = [\"printf\", \"%s\", \"{prompt}\"]\n");
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    sb.ctl(&[
        "new",
        "--project",
        path_str(&project),
        "--provider",
        "echoer",
        "--name",
        "e",
    ])
    .ok();
    let nasty = "a; rm -rf / && $(reboot) `id` \"dq\" 'sq' \\ * ?\n  second line\t{cwd}";
    let out = sb.ctl(&["send", "--follow", "e", nasty]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert_eq!(out.stdout(), nasty);
}

#[test]
fn missing_provider_program_fails_the_turn_naming_it() {
    let sb = Sandbox::with_config(
        "[providers.ghost]\ncommand = [\"no-such-agent-cli\", \"{prompt}\"]\n",
    );
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    sb.ctl(&[
        "new",
        "--project",
        path_str(&project),
        "--provider",
        "ghost",
        "--name",
        "g",
    ])
    .ok();
    let out = sb.ctl(&["send", "--wait", "g", "hello"]);
    assert_eq!(out.code(), 1);
    let err = out.stderr();
    assert!(err.contains("provider_unavailable"), "{err}");
    assert!(err.contains("no-such-agent-cli"), "{err}");
    // The session is free again for the next turn.
    let shown = sb.ctl(&["--json", "show", "g"]).json();
    assert_eq!(shown["activity"], "idle");
}

#[test]
fn worker_gets_the_session_environment_and_working_directory() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let id = sb.session_id("job");
    let out = sb.ctl(&[
        "send",
        "--follow",
        "echo $SESSIOND_SESSION_ID; echo $SESSIOND_PROJECT; pwd; test -n \"$SESSIOND_TURN_ID\"",
    ]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let canonical = std::fs::canonicalize(&project).unwrap();
    assert_eq!(
        out.stdout(),
        format!("{id}\n{}\n{}\n", canonical.display(), canonical.display())
    );
}

#[test]
fn empty_and_oversized_prompts_are_refused() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    let empty = sb.ctl(&["send", "  "]);
    assert_eq!(empty.code(), 1);
    assert!(empty.stderr().contains("empty"), "{}", empty.stderr());
    let big = "x".repeat(1024 * 1024 + 1);
    let mut cmd = sb.sessionctl();
    cmd.args(["send", "-"]).stdin(std::process::Stdio::piped());
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), big.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limit is 1048576 bytes"), "{err}");
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert!(queue["running"].is_null());
}

#[test]
fn pause_holds_the_queue_and_resume_releases_it_in_order() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let paused = sb.ctl(&["--json", "pause"]).json();
    assert_eq!(paused["paused"], "paused by a client");
    for i in 0..3 {
        let sent = sb
            .ctl(&["--json", "send", &format!("echo {i} >> order.log")])
            .json();
        assert_eq!(sent["accepted"], false, "a paused session queues");
    }
    assert_eq!(
        sb.ctl(&["--json", "show", "job"]).json()["activity"],
        "paused"
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !project.join("order.log").exists(),
        "nothing ran while paused"
    );
    let again = sb.ctl(&["pause"]);
    assert_eq!(again.code(), 1);
    assert!(
        again.stderr().contains("already paused"),
        "{}",
        again.stderr()
    );
    sb.ctl(&["resume"]).ok();
    let last = sb.ctl(&["send", "--wait", "echo end >> order.log"]);
    assert_eq!(last.code(), 0, "{}", last.stderr());
    assert_eq!(
        std::fs::read_to_string(project.join("order.log")).unwrap(),
        "0\n1\n2\nend\n"
    );
}

#[test]
fn cancelling_a_queued_turn_removes_it_unrun() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    sb.ctl(&["send", "sleep 0.4"]).ok();
    let queued = sb.ctl(&["--json", "send", "touch never-ran"]).json();
    let turn = queued["turn"]["turn_id"].as_str().unwrap().to_string();
    let cancelled = sb.ctl(&["--json", "cancel", &turn[..8]]).json();
    assert_eq!(cancelled["status"], "cancelled");
    let after = sb.ctl(&["send", "--wait", "true"]);
    assert_eq!(
        after.code(),
        0,
        "the queue was not paused: {}",
        after.stderr()
    );
    assert!(!project.join("never-ran").exists());
    let gone = sb.ctl(&["cancel", &turn]);
    assert_eq!(gone.code(), 1);
    assert!(
        gone.stderr().contains("no queued or running turn"),
        "{}",
        gone.stderr()
    );
}

#[test]
fn cancelling_a_running_turn_stops_it_and_pauses_the_queue() {
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 200\nterminate_grace_ms = 200\n");
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    // This worker ignores SIGINT and SIGTERM: only the final SIGKILL can end it.
    let running = sb
        .ctl(&[
            "--json",
            "send",
            "trap '' INT TERM; echo $$ > worker.pid; sleep 30",
        ])
        .json();
    let turn = running["turn"]["turn_id"].as_str().unwrap().to_string();
    sessiond_tests::eventually("the worker to start", || {
        project.join("worker.pid").exists()
    });
    let pid: i32 = sessiond_tests::pid_written_to(&project.join("worker.pid"));
    sb.ctl(&["send", "touch ran-after-cancel"]).ok();
    let answer = sb.ctl(&["--json", "cancel", &turn]).json();
    assert_eq!(
        answer["status"], "running",
        "settles when its process exits"
    );
    sessiond_tests::eventually("the worker to be killed", || {
        !sessiond_tests::process_running(pid)
    });
    sessiond_tests::eventually("the queue to pause", || {
        sb.ctl(&["--json", "queue"]).json()["paused"]
            .as_str()
            .is_some_and(|r| r.contains("cancelled"))
    });
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !project.join("ran-after-cancel").exists(),
        "queued work must not run after an aborted turn until resumed"
    );
    sb.ctl(&["resume"]).ok();
    sessiond_tests::eventually("the queued turn to run", || {
        project.join("ran-after-cancel").exists()
    });
}

#[test]
fn kill_9_mid_turn_leaves_no_orphan_and_resume_runs_the_queue_once() {
    let sb = Sandbox::with_config("[daemon]\nterminate_grace_ms = 500\n");
    let mut daemon = sb.start_daemon();
    let project = shell_session(&sb);
    sb.ctl(&["send", "echo $$ > worker.pid; exec sleep 60"])
        .ok();
    sb.ctl(&["send", "echo once >> queued.log"]).ok();
    sessiond_tests::eventually("the worker to start", || {
        project.join("worker.pid").exists()
    });
    let pid: i32 = sessiond_tests::pid_written_to(&project.join("worker.pid"));
    daemon.signal(nix::sys::signal::Signal::SIGKILL);
    daemon.wait();
    let alive = sessiond_tests::process_running;
    assert!(
        alive(pid),
        "a worker outlives its daemon (it leads its own process group)"
    );

    let _restarted = sb.start_daemon();
    assert!(
        !alive(pid),
        "the restarted daemon ended the old worker before serving"
    );
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert_eq!(queue["paused"], "daemon_restarted");
    assert!(queue["running"].is_null());
    assert_eq!(
        queue["queued"].as_array().unwrap().len(),
        1,
        "nothing queued was lost"
    );
    assert!(
        !project.join("queued.log").exists(),
        "nothing ran before resume"
    );
    sb.ctl(&["resume"]).ok();
    let after = sb.ctl(&["send", "--wait", "true"]);
    assert_eq!(after.code(), 0, "{}", after.stderr());
    assert_eq!(
        std::fs::read_to_string(project.join("queued.log")).unwrap(),
        "once\n"
    );
}

#[test]
fn the_worker_owns_the_session_while_it_runs() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    sb.ctl(&["send", "echo $$ > worker.pid; sleep 0.6"]).ok();
    sessiond_tests::eventually("the worker to start", || {
        project.join("worker.pid").exists()
    });
    let pid: u64 = sessiond_tests::pid_written_to(&project.join("worker.pid")) as u64;
    sessiond_tests::eventually("the pid file to name the worker", || {
        let owner = &sb.ctl(&["--json", "show", "job"]).json()["owner"];
        owner["pid"].as_u64() == Some(pid)
    });
    let owner = sb.ctl(&["--json", "show", "job"]).json()["owner"].clone();
    assert_eq!(owner["live"], true);
    assert_eq!(owner["owner"], "daemon worker");
    sb.ctl(&["send", "--wait", "true"]).ok();
    let after = sb.ctl(&["--json", "show", "job"]).json();
    assert!(
        after["owner"].is_null(),
        "released after the turn: {}",
        after["owner"]
    );
}

#[test]
fn children_left_behind_neither_hang_the_turn_nor_outlive_it() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let out = sb.ctl(&[
        "send",
        "--follow",
        "sleep 60 & echo $! > bg.pid; echo started",
    ]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    assert_eq!(out.stdout(), "started\n");
    let bg: i32 = sessiond_tests::pid_written_to(&project.join("bg.pid"));
    sessiond_tests::eventually("the leftover child to be ended", || {
        !sessiond_tests::process_running(bg)
    });
    // And the session is free for the next turn.
    assert_eq!(sb.ctl(&["send", "--wait", "true"]).code(), 0);
}

#[test]
fn a_turn_over_its_providers_timeout_fails_saying_so() {
    let sb = Sandbox::with_config(
        "[daemon]\ninterrupt_grace_ms = 100\nterminate_grace_ms = 100\n\n\
         [providers.slow]\ncommand = [\"sh\", \"-c\", \"{prompt}\"]\ntimeout_secs = 1\n",
    );
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    sb.ctl(&[
        "new",
        "--project",
        project.to_str().unwrap(),
        "--provider",
        "slow",
        "--name",
        "s",
    ])
    .ok();
    let out = sb.ctl(&["send", "--wait", "s", "sleep 30"]);
    assert_eq!(out.code(), 1);
    assert!(
        out.stderr().contains("timed out after 1 s"),
        "{}",
        out.stderr()
    );
}

#[test]
fn steer_interrupts_the_running_turn_and_runs_next_without_pausing() {
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 200\nterminate_grace_ms = 200\n");
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    sb.ctl(&[
        "send",
        "echo $$ > long.pid; sleep 30; echo never >> order.log",
    ])
    .ok();
    sb.ctl(&["send", "echo queued >> order.log"]).ok();
    sessiond_tests::eventually("the long turn to start", || {
        project.join("long.pid").exists()
    });
    let steered = sb.ctl(&["steer", "--wait", "echo steer >> order.log"]);
    assert_eq!(steered.code(), 0, "{}", steered.stderr());
    let after = sb.ctl(&["send", "--wait", "echo last >> order.log"]);
    assert_eq!(after.code(), 0, "{}", after.stderr());
    assert_eq!(
        std::fs::read_to_string(project.join("order.log")).unwrap(),
        "steer\nqueued\nlast\n",
        "the steer ran next, the queue went on, the interrupted turn never finished"
    );
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert!(
        queue["paused"].is_null(),
        "a steer does not pause the queue"
    );
}

#[test]
fn steer_without_interrupt_and_promote_reorder_the_queue() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    sb.ctl(&["send", "sleep 0.5; echo first >> order.log"]).ok();
    sb.ctl(&["send", "echo a >> order.log"]).ok();
    let b = sb.ctl(&["--json", "send", "echo b >> order.log"]).json();
    let steer = sb
        .ctl(&["--json", "steer", "--no-interrupt", "echo s >> order.log"])
        .json();
    assert_eq!(steer["turn"]["position"], 1);
    assert_eq!(steer["turn"]["kind"], "steer");
    let b_id = b["turn"]["turn_id"].as_str().unwrap().to_string();
    let promoted = sb.ctl(&["--json", "promote", &b_id[..8]]).json();
    assert_eq!(promoted["position"], 1);
    let order: Vec<String> = sb.ctl(&["--json", "queue"]).json()["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["prompt"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        order,
        [
            "echo b >> order.log",
            "echo s >> order.log",
            "echo a >> order.log"
        ]
    );
    sb.ctl(&["send", "--wait", "true"]).ok();
    assert_eq!(
        std::fs::read_to_string(project.join("order.log")).unwrap(),
        "first\nb\ns\na\n"
    );
    let running = sb.ctl(&["--json", "send", "sleep 0.3"]).json();
    let running_id = running["turn"]["turn_id"].as_str().unwrap().to_string();
    let refused = sb.ctl(&["promote", &running_id]);
    assert_eq!(refused.code(), 1);
    assert!(
        refused.stderr().contains("already running"),
        "{}",
        refused.stderr()
    );
}

#[test]
fn a_jsonl_provider_binds_the_session_and_later_ids_become_aliases() {
    // A scripted agent: the first turn has no id to resume; later turns get the bound one.
    let sb = Sandbox::with_config(
        "[providers.agent]\n\
         first_command = [\"sh\", \"-c\", \"{prompt}\"]\n\
         command = [\"sh\", \"-c\", \"echo '{{\\\"resumed\\\": \\\"{provider_session_id}\\\"}}'; {prompt}\"]\n\
         output = \"jsonl\"\n\
         session_id_pointer = \"/session_id\"\n\
         needs_input_pointer = \"/type\"\n\
         needs_input_value = \"ask\"\n",
    );
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    sb.ctl(&[
        "new",
        "--project",
        project.to_str().unwrap(),
        "--provider",
        "agent",
        "--name",
        "a",
    ])
    .ok();
    let first = sb.ctl(&["send", "--wait", "a", "echo '{\"session_id\": \"conv-1\"}'"]);
    assert_eq!(first.code(), 0, "{}", first.stderr());
    let shown = sb.ctl(&["--json", "show", "a"]).json();
    assert_eq!(shown["phase"], "bound");
    assert_eq!(shown["provider_session_id"], "conv-1");

    let second = sb.ctl(&[
        "send",
        "--follow",
        "a",
        "echo '{\"session_id\": \"conv-2\"}'",
    ]);
    assert_eq!(second.code(), 0, "{}", second.stderr());
    assert!(
        second.stdout().starts_with("{\"resumed\": \"conv-1\"}"),
        "the second turn resumed the provider's session: {}",
        second.stdout()
    );
    let shown = sb.ctl(&["--json", "show", "a"]).json();
    assert_eq!(shown["provider_session_id"], "conv-2");
    assert_eq!(shown["aliases"], serde_json::json!(["conv-1"]));
    for alias in ["conv-1", "conv-2"] {
        assert_eq!(sb.ctl(&["--json", "show", alias]).json()["id"], shown["id"]);
    }
    // A last line without its newline (one object written, then exit) still counts.
    sb.ctl(&[
        "send",
        "--wait",
        "a",
        "printf '{\"session_id\": \"conv-3\"}'",
    ])
    .ok();
    let shown = sb.ctl(&["--json", "show", "a"]).json();
    assert_eq!(shown["provider_session_id"], "conv-3", "{shown}");
    // An id that could not be handed back (a NUL would fail every later turn at its
    // start) is not taken.
    sb.ctl(&[
        "send",
        "--wait",
        "a",
        "echo '{\"session_id\": \"x\\u0000y\"}'",
    ])
    .ok();
    assert_eq!(
        sb.ctl(&["--json", "show", "a"]).json()["provider_session_id"],
        "conv-3"
    );
    let next = sb.ctl(&["send", "--follow", "a", "true"]);
    assert_eq!(next.code(), 0, "{}", next.stderr());
    assert!(next.stdout().contains("conv-3"), "{}", next.stdout());

    // A line asking for input shows as waiting_input while the turn waits.
    sb.ctl(&["send", "a", "echo '{\"type\": \"ask\"}'; sleep 0.6"])
        .ok();
    sessiond_tests::eventually("the session to wait for input", || {
        sb.ctl(&["--json", "show", "a"]).json()["activity"] == "waiting_input"
    });
    sb.ctl(&["send", "--wait", "a", "true"]).ok();
    assert_eq!(sb.ctl(&["--json", "show", "a"]).json()["activity"], "idle");
}

#[test]
fn a_turn_reaches_its_own_daemon_and_not_the_starting_clients_context() {
    // A daemon started with flags, from an environment with a context and a log filter of
    // its own (as when a client in an editor's context autostarts it).
    let sb = Sandbox::new();
    let mut daemon = sessiond_tests::Daemon {
        child: sb
            .sessiond()
            .env("SESSIOND_CONTEXT", "nvim")
            .env("SESSIOND_LOG", "debug")
            .env_remove("SESSIOND_RUNTIME_DIR")
            .env_remove("SESSIOND_STATE_DIR")
            .env_remove("SESSIOND_CONFIG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sessiond"),
    };
    sessiond_tests::eventually("the daemon to accept", || {
        std::os::unix::net::UnixStream::connect(sb.socket()).is_ok()
    });
    shell_session(&sb);
    // A hook inside the turn runs sessionctl with nothing but what the turn was given.
    let ctl = sessiond_tests::sessionctl_bin();
    let script = format!(
        "env | grep '^SESSIOND_' | sort; env -u SESSIOND_BIN '{}' --no-autostart current",
        ctl.display()
    );
    let turn = sb.ctl(&["send", "--follow", &script]);
    assert_eq!(turn.code(), 0, "{}{}", turn.stdout(), turn.stderr());
    let out = turn.stdout();
    assert!(!out.contains("SESSIOND_CONTEXT="), "{out}");
    assert!(!out.contains("SESSIOND_LOG="), "{out}");
    let runtime = format!("SESSIOND_RUNTIME_DIR={}", sb.runtime.display());
    assert!(out.contains(&runtime), "{out}");
    assert!(out.contains("SESSIOND_SESSION_ID="), "{out}");
    // The default context's current session, in this daemon: the turn's own.
    assert!(
        out.lines()
            .any(|l| l.contains("context default") && l.contains("job")),
        "{out}"
    );
    assert!(!out.contains("nvim"), "{out}");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    daemon.wait();
}

#[test]
fn a_flood_of_output_is_capped_and_slows_no_other_session() {
    let sb = Sandbox::with_config("[daemon]\nmax_output_bytes = 1048576\n");
    let daemon = sb.start_daemon();
    let project = sb.project("p");
    for name in ["loud", "quiet"] {
        sb.ctl(&[
            "new",
            "--project",
            project.to_str().unwrap(),
            "--name",
            name,
        ])
        .ok();
    }
    let mut loud = sb.sessionctl();
    loud.args([
        "send",
        "--follow",
        "loud",
        "head -c 30000000 /dev/zero | tr '\\0' x; echo; echo tail-end >&2",
    ]);
    let loud = loud
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Meanwhile another session's turns run and the daemon answers.
    for _ in 0..3 {
        assert_eq!(sb.ctl(&["send", "--wait", "quiet", "true"]).code(), 0);
        sb.ctl(&["ping"]).ok();
    }
    let out = loud.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.len() < 1_100_000,
        "kept output is capped: {} bytes",
        stdout.len()
    );
    assert!(stdout.contains("[sessiond: this turn's output passed 1048576 bytes"));
    let rss_kb = sessiond_tests::rss_kb(daemon.pid());
    assert!(
        rss_kb < 64 * 1024,
        "daemon RSS {rss_kb} kB after a 30 MB flood"
    );
}

#[test]
fn log_and_export_give_the_transcript_in_order() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    sb.ctl(&["send", "--wait", "echo one; echo err >&2"]).ok();
    assert_eq!(
        sb.ctl(&["send", "--wait", "printf 'two\\nlines\\n'; exit 4"])
            .code(),
        4
    );
    let log = sb.ctl(&["--json", "log"]).json();
    let turns = log["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[0]["turn"]["prompt"], "echo one; echo err >&2");
    assert_eq!(turns[0]["turn"]["status"], "completed");
    let first: String = turns[0]["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["data"].as_str().unwrap())
        .collect();
    assert!(
        first.contains("one\n") && first.contains("err\n"),
        "{first}"
    );
    assert_eq!(turns[1]["turn"]["exit_code"], 4);
    assert_eq!(turns[1]["turn"]["status"], "failed");
    // The context's current session was meant: the answer carries its generation.
    let current = sb.ctl(&["--json", "current"]).json();
    assert_eq!(log["generation"], current["generation"]);

    let last = sb.ctl(&["--json", "log", "job", "--last", "1"]).json();
    assert_eq!(last["turns"].as_array().unwrap().len(), 1);
    assert!(
        last["generation"].is_null(),
        "a named session is not a context read"
    );

    let human = sb.ctl(&["log"]).ok();
    assert!(human.contains("$ echo one; echo err >&2"), "{human}");
    assert!(human.contains("failed (exit 4)"), "{human}");

    let export = sb.ctl(&["export", "job"]).ok();
    let lines: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"turn"));
    assert_eq!(kinds.iter().filter(|k| **k == "turn").count(), 2);
    let two: String = lines
        .iter()
        .filter(|l| l["type"] == "output" && l["turn_id"] == turns[1]["turn"]["turn_id"])
        .map(|l| l["data"].as_str().unwrap())
        .collect();
    assert_eq!(two, "two\nlines\n");
}

#[test]
fn log_narrowed_to_a_turn_takes_its_id_in_either_form_and_names_a_miss() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    sb.ctl(&["send", "--wait", "echo one"]).ok();
    sb.ctl(&["send", "--wait", "echo two"]).ok();
    let all = sb.ctl(&["--json", "log"]).json();
    let second = all["turns"][1]["turn"]["turn_id"]
        .as_str()
        .unwrap()
        .to_string();
    let plain = second.replace('-', "");
    // Twelve digits of the plain form run past the id's first dash.
    for form in [
        second.clone(),
        plain.clone(),
        plain[..12].to_string(),
        second[..13].to_uppercase(),
    ] {
        let log = sb.ctl(&["--json", "log", "--turn", &form]).json();
        let turns = log["turns"].as_array().unwrap();
        assert_eq!(turns.len(), 1, "--turn {form}: {log}");
        assert_eq!(
            turns[0]["turn"]["turn_id"],
            second.as_str(),
            "--turn {form}"
        );
        assert_eq!(turns[0]["output"][0]["data"], "two\n");
    }

    // No turn of the session starts with these digits: an error, not an empty transcript.
    let firsts: Vec<char> = all["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            t["turn"]["turn_id"]
                .as_str()
                .unwrap()
                .chars()
                .next()
                .unwrap()
        })
        .collect();
    let unused = ["0", "1", "2"]
        .into_iter()
        .find(|d| !firsts.contains(&d.chars().next().unwrap()))
        .unwrap();
    sb.ctl(&["--json", "log", "--turn", unused]).refused(
        1,
        "not_found",
        "no turn whose id starts with",
    );
    // SQL wildcards are not id digits: refused, where they once matched every turn.
    for pattern in ["%", "_", "ab%"] {
        sb.ctl(&["--json", "log", "--turn", pattern])
            .refused(1, "invalid_argument", "hex digits");
    }
    // Following prints every turn as it comes, so it cannot be narrowed to one.
    let both = sb.ctl(&["log", "-f", "--turn", &plain]);
    assert_eq!(both.code(), 2, "stderr: {}", both.stderr());
    assert!(
        both.stderr().contains("cannot be used with"),
        "{}",
        both.stderr()
    );
}

#[test]
fn log_refuses_options_it_cannot_honour() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    sb.ctl(&["send", "--wait", "echo one"]).ok();
    sb.ctl(&["send", "--wait", "echo two"]).ok();
    // Following prints text as it comes, so it cannot be one JSON document.
    sb.ctl(&["--json", "log", "-f"])
        .refused(2, "usage", "'--follow' cannot be used with '--json'");
    // No turns is never what `--last` asks for: refused by sessionctl, and by the daemon.
    let out = sb.ctl(&["log", "--last", "0"]);
    assert_eq!(out.code(), 2, "stdout: {}", out.stdout());
    let mut conn = sb.raw();
    conn.handshake();
    conn.request(2, "log", serde_json::json!({"last": 0}));
    let err = conn.read_error();
    assert_eq!(err.code, sessiond_proto::ErrorCode::INVALID_ARGUMENT);
    assert!(err.message.contains("at least 1"), "{}", err.message);
    conn.request(3, "log", serde_json::json!({"last": 1}));
    let answer = sessiond_tests::as_json(&conn.read().unwrap());
    let turns = answer["result"]["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 1, "{answer}");
    assert_eq!(turns[0]["turn"]["prompt"], "echo two", "the last one");
}

#[test]
fn log_follow_prints_the_transcript_then_new_output_once() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    sb.ctl(&["send", "--wait", "echo before"]).ok();
    let mut follow = sb
        .sessionctl()
        .args(["log", "-f"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Subscribed once the daemon counts its subscription.
    sessiond_tests::eventually("log -f to subscribe", || {
        sb.ctl(&["--json", "daemon", "status"]).json()["subscriptions"] == 1
    });
    sb.ctl(&["send", "--wait", "echo live-1; echo live-2"]).ok();
    // The follower got the same events as `send --wait`; give its printing a moment.
    std::thread::sleep(std::time::Duration::from_millis(500));
    follow.kill().unwrap();
    let out = follow.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("$ echo before\nbefore\n"), "{text}");
    assert_eq!(text.matches("live-1\nlive-2\n").count(), 1, "{text}");
    assert!(text.contains("completed"), "{text}");
}

#[test]
fn concurrent_submits_from_many_clients_each_run_once_in_acceptance_order() {
    use sessiond_proto::methods::{Submit, SubmitParams};
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let opts = sb.connect_options();
    let runtime = sessiond_tests::tokio_runtime();
    let per_client: Vec<Vec<String>> = runtime.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let opts = opts.clone();
                tokio::spawn(async move {
                    let client = sessiond_client::Client::connect(&opts).await.unwrap();
                    let mut mine = Vec::new();
                    for _ in 0..10 {
                        let result = client
                            .call::<Submit>(SubmitParams {
                                session: Some("job".into()),
                                prompt: "echo $SESSIOND_TURN_ID >> ran.log".into(),
                                ..Default::default()
                            })
                            .await
                            .unwrap();
                        mine.push(result.turn.turn_id.to_string());
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    let log = project.join("ran.log");
    sessiond_tests::eventually("all 80 turns to run", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 80)
    });
    // Nothing more is coming: the queue is empty.
    sessiond_tests::eventually("the queue to drain", || {
        let q = sb.ctl(&["--json", "queue"]).json();
        q["running"].is_null() && q["queued"].as_array().unwrap().is_empty()
    });
    let ran: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ran.len(), 80, "every turn ran exactly once");
    let unique: std::collections::BTreeSet<&String> = ran.iter().collect();
    assert_eq!(unique.len(), 80, "no turn ran twice");
    for mine in &per_client {
        let positions: Vec<usize> = mine
            .iter()
            .map(|id| {
                ran.iter()
                    .position(|r| r == id)
                    .expect("a submitted turn ran")
            })
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "a client's turns ran out of the order they were accepted: {positions:?}"
        );
    }
}

#[test]
fn a_turn_whose_session_is_owned_elsewhere_waits_at_the_head_of_a_paused_queue() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let id = sb.session_id("job");
    std::fs::create_dir_all(sb.state.join("sessions")).unwrap();
    let lock = sb.state.join("sessions").join(format!("{id}.lock"));
    // Another process holds the session's lock (as a surviving owner would).
    let mut holder = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec 9>{}; flock 9; echo locked; exec sleep 30",
            lock.display()
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "locked\n");
    sb.ctl(&["send", "touch ran"]).ok();
    sb.ctl(&["send", "touch ran-second"]).ok();
    sessiond_tests::eventually("the queue to pause naming the owner", || {
        sb.ctl(&["--json", "queue"]).json()["paused"]
            .as_str()
            .is_some_and(|r| r.contains("owned by"))
    });
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert_eq!(
        queue["queued"].as_array().unwrap().len(),
        2,
        "nothing failed or was lost"
    );
    assert_eq!(queue["queued"][0]["prompt"], "touch ran");
    holder.kill().unwrap();
    holder.wait().unwrap();
    sb.ctl(&["resume"]).ok();
    sessiond_tests::eventually("both turns to run once the session is free", || {
        project.join("ran").exists() && project.join("ran-second").exists()
    });
}

#[test]
fn a_cancel_before_the_worker_starts_still_stops_it() {
    let sb = Sandbox::with_config(
        "[daemon]\nmax_concurrent_turns = 1\ninterrupt_grace_ms = 200\nterminate_grace_ms = 200\n",
    );
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let other = sb.project("q");
    sb.ctl(&[
        "new",
        "--project",
        other.to_str().unwrap(),
        "--name",
        "other",
    ])
    .ok();
    // The only slot is taken, so job's turn is running (for the registry) but has no worker.
    sb.ctl(&["send", "other", "sleep 0.8"]).ok();
    let waiting = sb
        .ctl(&["--json", "send", "job", "touch should-not-run; sleep 30"])
        .json();
    assert_eq!(waiting["accepted"], true);
    let turn = waiting["turn"]["turn_id"].as_str().unwrap().to_string();
    sb.ctl(&["cancel", &turn]).ok();
    sessiond_tests::eventually("the turn to settle", || {
        let q = sb.ctl(&["--json", "queue", "job"]).json();
        q["running"].is_null()
    });
    assert!(!project.join("should-not-run").exists());
    let log = sb.ctl(&["--json", "log", "job"]).json();
    assert_eq!(log["turns"][0]["turn"]["status"], "cancelled");
}

/// A steer that comes while the running turn still waits for a run slot does not interrupt
/// it: it never ran. It goes back to the queue behind the steer, which runs first in the
/// slot, and then it runs whole; the client waiting for it sees it complete.
#[test]
fn a_steer_before_the_worker_starts_runs_first_and_the_turn_after_it() {
    let sb = Sandbox::with_config(
        "[daemon]\nmax_concurrent_turns = 1\ninterrupt_grace_ms = 200\nterminate_grace_ms = 200\n",
    );
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let other = sb.project("q");
    sb.ctl(&["new", "--project", path_str(&other), "--name", "other"])
        .ok();
    // other's turn holds the only slot until `go` exists.
    sb.ctl(&[
        "send",
        "other",
        "touch holding; while [ ! -e go ]; do sleep 0.02; done",
    ])
    .ok();
    sessiond_tests::eventually("other's turn to hold the slot", || {
        other.join("holding").exists()
    });
    let (mut watch, events) = sb.spawn_lines(&[
        "--json",
        "watch",
        "--session",
        "job",
        "--event",
        "turn_queued",
    ]);
    sessiond_tests::eventually("watch to subscribe", || {
        sb.ctl(&["--json", "daemon", "status"]).json()["subscriptions"] == 1
    });
    let mut send = sb.sessionctl();
    send.args(["send", "--wait", "job", "echo first >> order.log"]);
    let waiter = std::thread::spawn(move || sessiond_tests::run_bounded(&mut send));
    // Running for the registry, but with no worker: it waits for the slot.
    sessiond_tests::eventually("the turn to wait for the slot", || {
        sb.ctl(&["--json", "queue", "job"]).json()["running"].is_object()
    });
    let first = sb.ctl(&["--json", "queue", "job"]).json()["running"]["turn_id"]
        .as_str()
        .unwrap()
        .to_string();
    let steer = sb
        .ctl(&["--json", "steer", "job", "echo steer >> order.log"])
        .json();
    let steer = steer["turn"]["turn_id"].as_str().unwrap().to_string();
    std::fs::write(other.join("go"), "").unwrap();

    let waited = waiter.join().unwrap();
    assert_eq!(waited.code(), 0, "the waited-for turn: {}", waited.stderr());
    assert_eq!(
        std::fs::read_to_string(project.join("order.log")).unwrap(),
        "steer\nfirst\n",
        "the steer runs first, then the turn it went ahead of, each once"
    );
    let log = sb.ctl(&["--json", "log", "job"]).json();
    let turns: Vec<(&str, &str)> = log["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["turn"]["turn_id"].as_str().unwrap(),
                t["turn"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        turns,
        [(steer.as_str(), "completed"), (first.as_str(), "completed")]
    );
    // Clients learn that it went back to its queue, next after the steer that now runs, and
    // why (after the steer's own turn_queued).
    let event = loop {
        let line = events
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a turn_queued event for the turn that went back");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["data"]["turn"] == first.as_str() {
            break event;
        }
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert_eq!(event["data"]["position"], 1, "{event}");
    let reason = event["data"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("steer {}", &steer[..8])),
        "{event}"
    );
}

/// Two steers while the running turn waits for a slot, and the daemon stopped before the
/// slot comes: the turn goes back behind both, the queue is held, and a restarted daemon
/// (which rebuilds the queue from the stored order) runs the steers, newest first as steers
/// go, then the turn.
#[test]
fn a_turn_two_steers_went_ahead_of_keeps_its_place_across_a_restart() {
    let sb = Sandbox::with_config(
        "[daemon]\nmax_concurrent_turns = 1\ninterrupt_grace_ms = 200\nterminate_grace_ms = 200\n",
    );
    let mut daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let other = sb.project("q");
    sb.ctl(&["new", "--project", path_str(&other), "--name", "other"])
        .ok();
    sb.ctl(&["send", "other", "touch holding; sleep 30"]).ok();
    sessiond_tests::eventually("other's turn to hold the slot", || {
        other.join("holding").exists()
    });
    sb.ctl(&["send", "job", "echo first >> order.log"]).ok();
    sessiond_tests::eventually("the turn to wait for the slot", || {
        sb.ctl(&["--json", "queue", "job"]).json()["running"].is_object()
    });
    sb.ctl(&["steer", "job", "echo steer-1 >> order.log"]).ok();
    sb.ctl(&["steer", "job", "echo steer-2 >> order.log"]).ok();
    // The stop ends other's turn, which frees the slot while the daemon is stopping.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait().success());
    let _daemon = sb.start_daemon();
    let queue = sb.ctl(&["--json", "queue", "job"]).json();
    let prompts: Vec<&str> = queue["queued"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["prompt"].as_str().unwrap())
        .collect();
    assert_eq!(
        prompts,
        [
            "echo steer-2 >> order.log",
            "echo steer-1 >> order.log",
            "echo first >> order.log"
        ],
        "{queue}"
    );
    assert!(queue["running"].is_null(), "{queue}");
    assert!(!project.join("order.log").exists(), "nothing ran");
    sb.ctl(&["resume", "job"]).ok();
    let last = sb.ctl(&["send", "--wait", "job", "echo end >> order.log"]);
    assert_eq!(last.code(), 0, "{}", last.stderr());
    assert_eq!(
        std::fs::read_to_string(project.join("order.log")).unwrap(),
        "steer-2\nsteer-1\nfirst\nend\n"
    );
    let log = sb.ctl(&["--json", "log", "job"]).json();
    assert!(
        log["turns"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["turn"]["status"] == "completed"),
        "no turn was interrupted: {log}"
    );
}

/// A daemon started in the foreground inherits whatever its parent had open; none of it may
/// reach a worker (a pipe kept open by a worker can hang the parent that waits for its end).
#[test]
fn a_worker_gets_no_descriptor_the_daemon_inherited() {
    let sb = Sandbox::new();
    let marker = sb.root.join("inherited-marker");
    let file = std::fs::File::create(&marker).unwrap();
    // Inheritable, as a careless parent would leave it.
    nix::fcntl::fcntl(
        &file,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let _daemon = sb.start_daemon();
    drop(file);
    let project = sb.project("p");
    sb.ctl(&["new", "--project", project.to_str().unwrap(), "--name", "s"])
        .ok();
    let out = sb.ctl(&[
        "send",
        "--follow",
        "s",
        "for fd in /proc/$$/fd/*; do readlink \"$fd\" || true; done",
    ]);
    assert_eq!(out.code(), 0, "{}", out.stderr());
    let seen = out.stdout();
    assert!(
        !seen.contains("inherited-marker"),
        "the worker holds a descriptor the daemon inherited:\n{seen}"
    );
    assert!(
        seen.contains(".lock"),
        "the worker should hold the session lock:\n{seen}"
    );
}

#[test]
fn a_held_queue_is_named_when_a_prompt_joins_it_and_a_steer_does_not_strand_it() {
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 200\nterminate_grace_ms = 200\n");
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let id = sb.session_id("job");
    let short = &id[..8];
    sb.ctl(&["send", "echo $$ > long.pid; sleep 30"]).ok();
    sessiond_tests::eventually("the long turn to start", || {
        project.join("long.pid").exists()
    });
    sb.ctl(&["pause"]).ok();

    // A steer would interrupt the running turn and then wait behind the pause: refused, and
    // nothing changes.
    let before = sb.ctl(&["--json", "queue"]).json();
    sb.ctl(&["--json", "steer", "echo steered >> order.log"])
        .refused(1, "invalid_state", &format!("sessionctl resume {short}"));
    assert_eq!(
        sb.ctl(&["--json", "queue"]).json(),
        before,
        "nothing changed"
    );
    let pid = sessiond_tests::pid_written_to(&project.join("long.pid"));
    assert!(sessiond_tests::process_running(pid), "the turn still runs");

    // Joining the held queue says so, with the command that releases it.
    let sent = sb.ctl(&["send", "echo sent >> order.log"]).ok();
    assert!(
        sent.contains("the queue is paused: paused by a client")
            && sent.contains(&format!("`sessionctl resume {short}`")),
        "{sent}"
    );
    let json = sb
        .ctl(&[
            "--json",
            "steer",
            "--no-interrupt",
            "echo steered >> order.log",
        ])
        .json();
    assert_eq!(json["paused"], "paused by a client", "{json}");
    assert_eq!(json["turn"]["position"], 1, "{json}");

    // A --wait says what it waits for before waiting; after a resume it ends as usual.
    let mut waiting = sb
        .sessionctl()
        .args(["send", "--wait", "echo waited >> order.log"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut notice = String::new();
    {
        use std::io::BufRead;
        let stderr = waiting.stderr.as_mut().unwrap();
        std::io::BufReader::new(stderr)
            .read_line(&mut notice)
            .unwrap();
    }
    assert!(
        notice.contains("waits: the queue is paused") && notice.contains("sessionctl resume"),
        "{notice}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    sb.ctl(&["resume"]).ok();
    assert!(waiting.wait().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(project.join("order.log")).unwrap(),
        "steered\nsent\nwaited\n"
    );
}

#[test]
fn pause_refuses_an_archived_session_it_could_not_resume() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    sb.ctl(&["close", "job"]).ok();
    sb.ctl(&["--json", "pause", "job"])
        .refused(1, "invalid_state", "archived");
    let shown = sb.ctl(&["--json", "show", "job"]).json();
    assert_eq!(shown["activity"], "idle", "{shown}");
    sb.ctl(&["--json", "resume", "job"])
        .refused(1, "invalid_state", "sessionctl reopen");
}

#[test]
fn wait_passes_through_only_a_failed_turns_exit_code() {
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 2000\n");
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    // The provider answers SIGINT by exiting 7: the code is the cancellation's doing, not a
    // verdict on the work, so --wait exits 1.
    let waiting = sb
        .sessionctl()
        .args([
            "send",
            "--wait",
            "trap 'exit 7' INT; echo $$ > worker.pid; sleep 30 & wait",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sessiond_tests::eventually("the worker to start", || {
        project.join("worker.pid").exists()
    });
    let queue = sb.ctl(&["--json", "queue"]).json();
    let turn = queue["running"]["turn_id"].as_str().unwrap().to_string();
    sb.ctl(&["cancel", &turn]).ok();
    let out = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cancelled (exit code 7)"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
}

#[test]
fn the_transcript_keeps_prompts_output_and_headers_apart() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    sb.ctl(&["send", "--wait", "printf partial"]).ok();
    sb.ctl(&["send", "--wait", "echo one\necho two"]).ok();
    // Output without a final newline ends its line before the next header, and a prompt's
    // further lines are marked, so neither passes for output.
    let log = sb.ctl(&["log", "job"]).ok();
    assert!(log.contains("$ printf partial\npartial\n── "), "{log}");
    assert!(log.contains("$ echo one\n> echo two\none\ntwo\n"), "{log}");

    // `log --follow` prints the same, then live turns alike.
    let (mut follow, lines) = sb.spawn_lines(&["log", "--follow", "job"]);
    let wait = std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut next = || {
        let line = lines
            .recv_timeout(wait)
            .unwrap_or_else(|_| panic!("log --follow printed no further line"));
        seen.push(line.clone());
        line
    };
    while next() != "two" {}
    sb.ctl(&["send", "--wait", "printf tail"]).ok();
    assert!(next().ends_with(" running ──"));
    assert_eq!(next(), "tail");
    let settled = next();
    assert!(
        settled.starts_with("── ") && settled.ends_with(" completed (exit 0) ──"),
        "{settled}"
    );
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(seen.contains(&"partial".to_string()), "{seen:?}");
    assert!(seen.contains(&"> echo two".to_string()), "{seen:?}");
}

#[test]
fn a_graceful_stop_ends_running_turns_and_holds_their_queues() {
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 500\nterminate_grace_ms = 500\n");
    sb.ctl(&["daemon", "start"]).ok();
    let project = shell_session(&sb);
    sb.ctl(&["send", "echo $$ > worker.pid; echo started; exec sleep 60"])
        .ok();
    sb.ctl(&["send", "echo once >> queued.log"]).ok();
    sessiond_tests::eventually("the worker to start", || {
        project.join("worker.pid").exists()
    });
    let pid = sessiond_tests::pid_written_to(&project.join("worker.pid"));
    let stopped = sb.ctl(&["--json", "daemon", "stop"]).json();
    assert_eq!(stopped["ended_turns"], 1, "{stopped}");
    // The worker went with its daemon, where it used to run on unsupervised until the next
    // daemon ended it.
    assert!(
        !sessiond_tests::process_running(pid),
        "the worker outlived a graceful stop"
    );
    let log = sb.ctl(&["--json", "log", "job", "--last", "2"]).json();
    let ended = &log["turns"][0];
    assert_eq!(ended["turn"]["status"], "interrupted", "{log}");
    assert!(
        ended["turn"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("daemon was stopped")),
        "{log}"
    );
    assert!(
        ended["output"][0]["data"]
            .as_str()
            .is_some_and(|d| d.contains("started")),
        "the output before the stop was kept: {log}"
    );
    // The queued turn waits for a resume, and then runs once.
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert!(queue["paused"].is_string(), "{queue}");
    assert_eq!(queue["queued"].as_array().unwrap().len(), 1, "{queue}");
    assert!(!project.join("queued.log").exists());
    sb.ctl(&["resume"]).ok();
    sessiond_tests::eventually("the queued turn to run", || {
        project.join("queued.log").exists()
    });
    let human = sb.ctl(&["daemon", "stop"]).ok();
    assert!(!human.contains("ended"), "nothing ran: {human}");
    assert_eq!(
        std::fs::read_to_string(project.join("queued.log")).unwrap(),
        "once\n"
    );
    sessiond_tests::report::Row::new(
        "fault",
        "a_graceful_stop_ends_running_turns_and_holds_their_queues",
    )
    .done("`sessionctl daemon stop` while a turn ran (`sleep 60`) and another was queued")
    .checked("the worker after the stop; the turn, its output and the queue after a restart")
    .result(
        "stop reported 1 ended turn; the worker was gone when it returned; the turn settled \
         interrupted with its output kept; the queued turn waited for resume, then ran once",
    )
    .record();
}

#[test]
fn a_stop_holds_turns_that_had_not_started_and_interrupts_those_that_exit_0() {
    // One turn at a time: b's turn waits for a's slot when the stop comes.
    let sb = Sandbox::with_config(
        "[daemon]\nmax_concurrent_turns = 1\ninterrupt_grace_ms = 500\nterminate_grace_ms = 500\n",
    );
    sb.ctl(&["daemon", "start"]).ok();
    let a = sb.project("a");
    let b = sb.project("b");
    let in_a = sb.new_session(&a, &["--name", "a"]);
    let in_b = sb.new_session(&b, &["--name", "b"]);
    // An agent that takes SIGINT as "finish now" and exits 0.
    sb.ctl(&[
        "send",
        &in_a,
        "trap 'exit 0' INT; echo $$ > worker.pid; sleep 60 & wait",
    ])
    .ok();
    sessiond_tests::eventually("a's worker to start", || a.join("worker.pid").exists());
    sb.ctl(&["send", &in_b, "touch b_ran"]).ok();
    let stopped = sb.ctl(&["--json", "daemon", "stop"]).json();
    assert_eq!(stopped["ended_turns"], 1, "only a's turn ran: {stopped}");
    sb.ctl(&["daemon", "start"]).ok();
    let a_log = sb.ctl(&["--json", "log", &in_a]).json();
    assert_eq!(
        a_log["turns"][0]["turn"]["status"], "interrupted",
        "exit 0 on SIGINT is not completing the work: {a_log}"
    );
    // b's turn never started: it waits in its queue, held, not settled as interrupted.
    let b_queue = sb.ctl(&["--json", "queue", &in_b]).json();
    assert!(b_queue["running"].is_null(), "{b_queue}");
    assert_eq!(b_queue["queued"].as_array().unwrap().len(), 1, "{b_queue}");
    assert!(b_queue["paused"].is_string(), "{b_queue}");
    assert!(!b.join("b_ran").exists());
    sb.ctl(&["resume", &in_b]).ok();
    sessiond_tests::eventually("b's turn to run on resume", || b.join("b_ran").exists());
    sb.ctl(&["daemon", "stop"]).ok();
}

#[test]
fn a_second_signal_during_a_stop_takes_the_workers_with_it() {
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 20000\n");
    let mut daemon = sb.start_daemon();
    let project = shell_session(&sb);
    // A worker that shrugs off SIGINT and SIGTERM: the stop would wait its graces.
    sb.ctl(&["send", "trap '' INT TERM; echo $$ > worker.pid; sleep 60"])
        .ok();
    sessiond_tests::eventually("the worker to start", || {
        project.join("worker.pid").exists()
    });
    let pid = sessiond_tests::pid_written_to(&project.join("worker.pid"));
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(daemon.running(), "the stop waits for the worker's grace");
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(daemon.wait().code(), Some(1));
    sessiond_tests::eventually("the worker to be killed with its daemon", || {
        !sessiond_tests::process_running(pid)
    });
}

#[test]
fn a_turn_whose_worker_finished_keeps_its_status_through_a_stop() {
    let sb = Sandbox::new();
    sb.ctl(&["daemon", "start"]).ok();
    let project = shell_session(&sb);
    // The worker exits 0 at once, but a process it left outside its group holds the output
    // open, so the turn waits for its output to drain when the stop comes.
    sb.ctl(&["send", "setsid sleep 3 & echo done > done; exit 0"])
        .ok();
    sessiond_tests::eventually("the worker to finish", || project.join("done").exists());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let stopped = sb.ctl(&["--json", "daemon", "stop"]).json();
    assert!(stopped["ended_turns"].is_null(), "{stopped}");
    sb.ctl(&["daemon", "start"]).ok();
    let log = sb.ctl(&["--json", "log", "job"]).json();
    assert_eq!(log["turns"][0]["turn"]["status"], "completed", "{log}");
    sb.ctl(&["daemon", "stop"]).ok();
}

#[test]
fn clients_see_the_turns_a_stop_ends_settle_and_new_requests_are_refused_meanwhile() {
    // The worker shrugs off SIGINT, so the stop spends its interrupt grace ending it: time
    // for requests to arrive while it does.
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 3000\n");
    sb.ctl(&["daemon", "start"]).ok();
    let project = shell_session(&sb);
    let id = sb.session_id("job");
    let waiting = sb
        .sessionctl()
        .args([
            "send",
            "--wait",
            "trap '' INT; echo $$ > worker.pid; sleep 60",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn send --wait");
    sessiond_tests::eventually("the worker to start", || {
        project.join("worker.pid").exists()
    });
    let mut conn = sb.raw();
    conn.handshake();
    let (_, answer) = conn.call(
        1,
        "subscribe",
        serde_json::json!({"filter": {"events": ["turn_settled"], "sessions": [id]}}),
    );
    assert_eq!(sessiond_tests::kind(&answer), "response");

    let stop = sb
        .sessionctl()
        .args(["--json", "daemon", "stop"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn daemon stop");
    sessiond_tests::eventually("the stop to begin (the socket goes first)", || {
        !sb.socket().exists()
    });
    // The connection is still served, but a new request is not run.
    let (mut events, refused) = conn.call(2, "new", serde_json::json!({"project": "/"}));
    let refused: sessiond_proto::envelope::ErrorFrame =
        sessiond_proto::frame::decode(&refused).expect("an error frame");
    assert_eq!(refused.id, Some(2));
    assert_eq!(refused.code, sessiond_proto::ErrorCode::SHUTTING_DOWN);
    assert!(refused.message.contains("not run"), "{}", refused.message);
    // The turn settles where the subscriber sees it, and only then does the connection close.
    loop {
        let payload = conn
            .read()
            .expect("the connection closed before the turn settled");
        match sessiond_tests::kind(&payload).as_str() {
            "event" => events.push(payload),
            "error" => {
                let closing: sessiond_proto::envelope::ErrorFrame =
                    sessiond_proto::frame::decode(&payload).unwrap();
                assert_eq!(closing.id, None);
                assert_eq!(closing.code, sessiond_proto::ErrorCode::SHUTTING_DOWN);
                break;
            }
            other => panic!("unexpected {other}: {}", sessiond_tests::as_json(&payload)),
        }
    }
    conn.expect_closed();
    let settled: Vec<_> = events
        .iter()
        .map(|e| sessiond_tests::session_event(e))
        .collect();
    assert_eq!(settled.len(), 1, "one turn settled");
    assert_eq!(
        settled[0].data.status,
        Some(sessiond_proto::session::TurnStatus::Interrupted)
    );

    // The client waiting on the turn was told how it ended, not that the daemon went away.
    let waited = sessiond_tests::CtlOutput(waiting.wait_with_output().unwrap());
    assert_eq!(waited.code(), 1, "stderr: {}", waited.stderr());
    assert!(
        waited.stderr().contains("interrupted") && waited.stderr().contains("daemon was stopped"),
        "{}",
        waited.stderr()
    );
    let stopped = sessiond_tests::CtlOutput(stop.wait_with_output().unwrap()).json();
    assert_eq!(stopped["ended_turns"], 1, "{stopped}");
}

/// The settled turn with this id in `sessionctl log --json`.
fn settled(sb: &Sandbox, session: &str, turn: &str) -> serde_json::Value {
    let log = sb.ctl(&["--json", "log", session]).json();
    log["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["turn"].clone())
        .find(|t| t["turn_id"] == turn)
        .unwrap_or_else(|| panic!("no turn {turn} in {log}"))
}

fn turn_id(answer: &serde_json::Value) -> String {
    answer["turn"]["turn_id"].as_str().unwrap().to_string()
}

/// Sends `prompt`, which writes its shell's pid to `worker.pid`, to the current session and
/// waits for the worker to start; returns the turn's id and the worker's pid.
fn start_worker(sb: &Sandbox, project: &Path, prompt: &str) -> (String, i32) {
    let pid_file = project.join("worker.pid");
    let _ = std::fs::remove_file(&pid_file);
    let turn = turn_id(&sb.ctl(&["--json", "send", prompt]).json());
    sessiond_tests::eventually("the worker to start", || pid_file.exists());
    (turn, sessiond_tests::pid_written_to(&pid_file))
}

#[test]
fn a_cancel_or_steer_decides_the_status_of_an_agent_that_exits_0_on_sigint() {
    let sb = Sandbox::new();
    sb.ctl(&["daemon", "start"]).ok();
    let project = shell_session(&sb);
    // Like many agents: SIGINT means "finish now", and the process exits 0.
    let polite = "trap 'exit 0' INT; echo $$ > worker.pid; sleep 60 & wait";
    let (first, _) = start_worker(&sb, &project, polite);
    sb.ctl(&["send", "touch ran-after-cancel"]).ok();
    sb.ctl(&["cancel", &first]).ok();
    sessiond_tests::eventually("the cancelled turn to settle", || {
        sb.ctl(&["--json", "queue"]).json()["running"].is_null()
    });
    let turn = settled(&sb, "job", &first);
    assert_eq!(turn["status"], "cancelled", "{turn}");
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert!(queue["paused"].is_string(), "the queue holds: {queue}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!project.join("ran-after-cancel").exists());

    // A steer interrupts it the same way, and runs next.
    sb.ctl(&["resume"]).ok();
    sessiond_tests::eventually("the queued turn to run", || {
        project.join("ran-after-cancel").exists()
    });
    let (second, _) = start_worker(&sb, &project, polite);
    sb.ctl(&["steer", "--wait", "touch steered"]).ok();
    let turn = settled(&sb, "job", &second);
    assert_eq!(turn["status"], "interrupted", "{turn}");
    assert!(project.join("steered").exists());
}

#[test]
fn a_steer_is_refused_while_the_running_turn_is_being_cancelled() {
    let sb = Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 5000\n");
    sb.ctl(&["daemon", "start"]).ok();
    let project = shell_session(&sb);
    let (first, _) = start_worker(&sb, &project, "trap '' INT; echo $$ > worker.pid; sleep 60");
    sb.ctl(&["cancel", &first]).ok();
    // The cancel will pause the queue: a steer would stop nothing and wait behind the pause.
    sb.ctl(&["--json", "steer", "touch steered"])
        .refused(1, "invalid_state", "is being cancelled");
    // A prompt queued meanwhile is told it will wait for a resume.
    let queued = sb.ctl(&["--json", "send", "touch later"]).json();
    assert!(
        queued["paused"]
            .as_str()
            .is_some_and(|p| p.contains("being cancelled")),
        "{queued}"
    );
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert_eq!(queue["queued"].as_array().unwrap().len(), 1, "{queue}");
}

#[test]
fn cancelling_a_turn_that_waits_for_a_slot_settles_it_at_once() {
    let sb = Sandbox::with_config("[daemon]\nmax_concurrent_turns = 1\n");
    sb.ctl(&["daemon", "start"]).ok();
    let a = sb.project("a");
    let b = sb.project("b");
    let in_a = sb.new_session(&a, &["--name", "a"]);
    let in_b = sb.new_session(&b, &["--name", "b"]);
    sb.ctl(&["send", &in_a, "echo $$ > worker.pid; sleep 60"])
        .ok();
    sessiond_tests::eventually("a's worker to start", || a.join("worker.pid").exists());
    // b's turn holds no slot: it shows running, but no process runs it.
    let waiting = turn_id(&sb.ctl(&["--json", "send", &in_b, "touch b_ran"]).json());
    let cancelled = sb.ctl(&["--json", "cancel", &waiting]).json();
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    // Nothing ran, so nothing is held: b is free again at once.
    let queue = sb.ctl(&["--json", "queue", &in_b]).json();
    assert!(queue["running"].is_null(), "{queue}");
    assert!(queue["paused"].is_null(), "{queue}");
    let turn = settled(&sb, &in_b, &waiting);
    assert_eq!(turn["status"], "cancelled", "{turn}");
    // Once a's turn ends, b's next turn gets the slot, and the cancelled one never ran.
    let after = turn_id(&sb.ctl(&["--json", "send", &in_b, "touch b_next"]).json());
    let running = sb.ctl(&["--json", "queue", &in_a]).json();
    sb.ctl(&["cancel", running["running"]["turn_id"].as_str().unwrap()])
        .ok();
    sessiond_tests::eventually("b's next turn to run", || b.join("b_next").exists());
    assert!(!b.join("b_ran").exists());
    sessiond_tests::eventually("b's next turn to settle", || {
        settled(&sb, &in_b, &after)["status"] == "completed"
    });
}

#[test]
fn cancelling_a_queued_steer_stops_pressing_the_turn_it_interrupted() {
    // The cancel must come within the interrupt grace, or SIGTERM has already gone.
    let sb =
        Sandbox::with_config("[daemon]\ninterrupt_grace_ms = 1500\nterminate_grace_ms = 300\n");
    sb.ctl(&["daemon", "start"]).ok();
    let project = shell_session(&sb);
    // Shrugs off SIGINT; SIGTERM would end it. It finishes when the test says.
    let (first, pid) = start_worker(
        &sb,
        &project,
        "trap '' INT; echo $$ > worker.pid; while [ ! -e release ]; do sleep 0.05; done",
    );
    sb.ctl(&["send", "touch queued_ran"]).ok();
    let steer = turn_id(&sb.ctl(&["--json", "steer", "touch steered"]).json());
    sb.ctl(&["cancel", &steer]).ok();
    // Well past both graces: the worker was not sent SIGTERM or SIGKILL.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(
        sessiond_tests::process_running(pid),
        "the worker was pressed for a steer that was withdrawn"
    );
    // A new steer takes the stop up again: it interrupts and runs next, not after the turn.
    sb.ctl(&["steer", "--wait", "touch steered_again"]).ok();
    assert!(!sessiond_tests::process_running(pid), "pressed to the end");
    assert!(project.join("steered_again").exists());
    sessiond_tests::eventually("the queued turn to run after the steer", || {
        project.join("queued_ran").exists()
    });
    let turn = settled(&sb, "job", &first);
    assert_eq!(turn["status"], "interrupted", "{turn}");
    assert!(!project.join("steered").exists());
}

/// Runs `sessionctl ARGS` with `input` on its standard input.
fn ctl_with_input(sb: &Sandbox, args: &[&str], input: Vec<u8>) -> sessiond_tests::CtlOutput {
    use std::io::Write;
    let mut child = sb
        .sessionctl()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sessionctl");
    let mut stdin = child.stdin.take().unwrap();
    // sessionctl may stop reading early (it refuses past the limit): a broken pipe is fine.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    sessiond_tests::CtlOutput(out)
}

#[test]
fn oversized_prompts_and_frames_are_refused_with_their_reason() {
    let sb = Sandbox::with_config("[daemon]\nmax_frame_bytes = 65536\n");
    sb.ctl(&["daemon", "start"]).ok();
    shell_session(&sb);
    // Far past the prompt limit (and the daemon's frame limit): refused as the limit, not as
    // a lost connection (exit 3, which a script would take for a missing daemon).
    let huge = ctl_with_input(&sb, &["--json", "send", "-"], vec![b'x'; 9 << 20]);
    huge.refused(1, "invalid_argument", "the limit is 1048576 bytes");
    // Within the prompt limit but past this daemon's frame limit: the daemon's reason, read
    // after the write broke, not a broken pipe.
    let large = ctl_with_input(&sb, &["--json", "send", "-"], vec![b'x'; 900 << 10]);
    large.refused(1, "frame_too_large", "daemon.max_frame_bytes");
    let queue = sb.ctl(&["--json", "queue"]).json();
    assert!(queue["running"].is_null(), "nothing was queued: {queue}");
    assert_eq!(queue["queued"].as_array().unwrap().len(), 0, "{queue}");
}

/// Reads `out` on a thread of its own, `chunk` bytes at a time with `pause` after each (a
/// slow reader), into the buffer returned, until the writer closes it.
fn read_in_background(
    mut out: impl std::io::Read + Send + 'static,
    chunk: usize,
    pause: std::time::Duration,
) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let reader = seen.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; chunk];
        while let Ok(n @ 1..) = out.read(&mut buf) {
            reader.lock().unwrap().extend_from_slice(&buf[..n]);
            std::thread::sleep(pause);
        }
    });
    seen
}

#[test]
fn a_slow_but_steady_follower_is_kept_however_long_the_output_takes() {
    // The daemon drops a client that accepts nothing for 1 s; this one always accepts
    // something, just slowly: 2 MB of output at about 0.8 MB/s takes seconds to pass. (The
    // socket frees room a buffer of about 100 KB at a time, so much less than 1 s would drop
    // a reader this slow between two of them.)
    let sb = Sandbox::with_config("[daemon]\nwrite_timeout_ms = 1000\n");
    sb.ctl(&["daemon", "start"]).ok();
    shell_session(&sb);
    let errors = sb.root.join("follow.err");
    let mut follow = sb
        .sessionctl()
        .args(["log", "--follow", "job"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .expect("spawn log --follow");
    let out = follow.stdout.take().unwrap();
    let seen = read_in_background(out, 4096, std::time::Duration::from_millis(5));
    let spew = "i=0; while [ $i -lt 2000 ]; do printf '%01000d\\n' $i; i=$((i+1)); done";
    sb.ctl(&["send", "--wait", spew]).ok();
    sessiond_tests::eventually("the follower to read the turn's end", || {
        String::from_utf8_lossy(&seen.lock().unwrap()).contains("completed (exit 0)")
    });
    assert!(
        follow.try_wait().unwrap().is_none(),
        "log --follow ended: {}",
        std::fs::read_to_string(&errors).unwrap()
    );
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn a_follower_paused_far_past_the_write_timeout_is_kept_and_shows_every_byte_once() {
    // The follower's stdout is a pipe nobody reads while 15 MB of output pass: it stops
    // reading its socket for seconds, past write_timeout_ms many times over, and the daemon
    // drops what does not fit in its queue (`lagged`). Kept, it must read the transcript
    // again and print every line once, in order.
    let sb = Sandbox::with_config("[daemon]\nwrite_timeout_ms = 200\n");
    sb.ctl(&["daemon", "start"]).ok();
    shell_session(&sb);
    sb.ctl(&["send", "--wait", "echo before"]).ok();
    let errors = sb.root.join("follow.err");
    let mut follow = sb
        .sessionctl()
        .args(["log", "--follow", "job"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .expect("spawn log --follow");
    sessiond_tests::eventually("log --follow to subscribe", || {
        sb.ctl(&["--json", "daemon", "status"]).json()["subscriptions"] == 1
    });
    const LINES: u32 = 2_000_000;
    sb.ctl(&["send", "--wait", &format!("seq 1 {LINES}")]).ok();
    std::thread::sleep(std::time::Duration::from_secs(1));
    sb.ctl(&["send", "--wait", "echo after"]).ok();
    assert!(
        follow.try_wait().unwrap().is_none(),
        "log --follow ended while paused: {}",
        std::fs::read_to_string(&errors).unwrap()
    );

    let out = follow.stdout.take().unwrap();
    let seen = read_in_background(out, 1 << 16, std::time::Duration::ZERO);
    let done = |text: &str| {
        text.lines()
            .rev()
            .take(3)
            .any(|l| l.starts_with("── ") && l.ends_with(" completed (exit 0) ──"))
            && text.contains("\nafter\n")
    };
    sessiond_tests::eventually("the follower to print the last turn's end", || {
        done(&String::from_utf8_lossy(&seen.lock().unwrap()))
    });
    let _ = follow.kill();
    let _ = follow.wait();
    let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    let number = |l: &&str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit());
    let numbers: Vec<&str> = text.lines().filter(number).collect();
    let ours: Vec<&str> = text.lines().filter(|l| !number(l)).collect();
    assert_eq!(
        numbers.len(),
        LINES as usize,
        "every line of output, once: {ours:?}"
    );
    assert!(
        numbers
            .iter()
            .zip(1..)
            .all(|(l, n)| l.parse::<u32>() == Ok(n)),
        "in order"
    );
    assert_eq!(text.matches("\nbefore\n").count(), 1, "{}", &text[..200]);
    assert_eq!(text.matches("\nafter\n").count(), 1);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("── ") && l.contains(" completed (exit 0)"))
            .count(),
        3,
        "each turn's end once"
    );
    let said = std::fs::read_to_string(&errors).unwrap();
    assert!(
        said.is_empty(),
        "nothing was lost, so nothing to say: {said}"
    );
}

#[test]
fn a_paused_follower_of_the_last_turns_reads_back_only_what_it_follows() {
    // `--last 1` shows only a queued turn; the running one before it is followed live. After
    // a lag, the re-read goes on from the running turn: not from the session's start, which
    // would print the history `--last` left out, in the middle of the output.
    let sb = Sandbox::with_config("[daemon]\nwrite_timeout_ms = 200\n");
    sb.ctl(&["daemon", "start"]).ok();
    shell_session(&sb);
    sb.ctl(&["send", "--wait", "echo OLD-TURN"]).ok();
    const LINES: u32 = 1_500_000;
    sb.ctl(&["send", &format!("sleep 1; seq 1 {LINES}")]).ok();
    sb.ctl(&["send", "echo QUEUED-TURN"]).ok();
    let mut follow = sb
        .sessionctl()
        .args(["log", "--follow", "--last", "1", "job"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn log --follow");
    sessiond_tests::eventually("log --follow to subscribe", || {
        sb.ctl(&["--json", "daemon", "status"]).json()["subscriptions"] == 1
    });
    sb.ctl(&["send", "--wait", "echo AFTER-TURN"]).ok();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let out = follow.stdout.take().unwrap();
    let seen = read_in_background(out, 1 << 16, std::time::Duration::ZERO);
    sessiond_tests::eventually("the follower to print the last turn", || {
        String::from_utf8_lossy(&seen.lock().unwrap()).contains("\nAFTER-TURN\n")
    });
    let _ = follow.kill();
    let _ = follow.wait();
    let text = String::from_utf8(seen.lock().unwrap().clone()).unwrap();
    assert!(
        !text.contains("OLD-TURN"),
        "history --last left out was printed"
    );
    let numbers: Vec<u32> = text.lines().filter_map(|l| l.parse().ok()).collect();
    assert_eq!(numbers.last(), Some(&LINES));
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "the running turn's output once, in order"
    );
    assert_eq!(text.matches("\nQUEUED-TURN\n").count(), 1);
    assert_eq!(text.matches("\nAFTER-TURN\n").count(), 1);
}

#[test]
fn send_follow_paused_by_its_reader_still_prints_every_byte_and_the_exit() {
    use std::io::Read;
    // As above, for `send --follow`: it used to give up ("fell behind … lost some") when
    // the daemon dropped events it could not hold for it.
    let sb = Sandbox::with_config("[daemon]\nwrite_timeout_ms = 200\n");
    sb.ctl(&["daemon", "start"]).ok();
    let project = shell_session(&sb);
    const LINES: u32 = 2_000_000;
    let errors = sb.root.join("send.err");
    let mut send = sb
        .sessionctl()
        .args([
            "send",
            "--follow",
            &format!("seq 1 {LINES}; touch done; exit 3"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&errors).unwrap())
        .spawn()
        .expect("spawn send --follow");
    sessiond_tests::eventually("the turn to finish", || project.join("done").exists());
    std::thread::sleep(std::time::Duration::from_secs(1));
    let mut text = String::new();
    send.stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let status = send.wait().unwrap();
    let said = std::fs::read_to_string(&errors).unwrap();
    assert_eq!(status.code(), Some(3), "the turn's exit status: {said}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), LINES as usize, "every line, once: {said}");
    assert!(
        lines
            .iter()
            .zip(1..)
            .all(|(l, n)| l.parse::<u32>() == Ok(n)),
        "in order"
    );
    assert!(!said.contains("fell behind"), "{said}");
}

#[test]
fn log_follow_heads_live_output_with_the_turn_it_belongs_to() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let (running, _) = start_worker(
        &sb,
        &project,
        "echo $$ > worker.pid; echo before; while [ ! -e go ]; do sleep 0.05; done; echo after",
    );
    sb.ctl(&["send", "echo queued-output"]).ok();
    // The transcript says where a queued turn stands, as `queue` does.
    let log = sb.ctl(&["--json", "log", "job"]).json();
    assert_eq!(log["turns"][1]["turn"]["position"], 1, "{log}");
    assert!(log["turns"][0]["turn"].get("position").is_none(), "{log}");
    let export = sb.ctl(&["export", "job"]).stdout();
    let queued: serde_json::Value = serde_json::from_str(export.lines().last().unwrap()).unwrap();
    assert_eq!(queued["position"], 1, "{queued}");
    // The history ends with the queued turn's header and prompt; what the running turn
    // writes next must not read as the queued turn's output.
    let (mut follow, lines) = sb.spawn_lines(&["log", "--follow", "job"]);
    let wait = std::time::Duration::from_secs(20);
    let next = || {
        lines
            .recv_timeout(wait)
            .unwrap_or_else(|_| panic!("log --follow printed no further line"))
    };
    while next() != "$ echo queued-output" {}
    std::fs::write(project.join("go"), "").unwrap();
    let short = &running[..8];
    assert_eq!(next(), format!("── {short} running ──"));
    assert_eq!(next(), "after");
    assert_eq!(next(), format!("── {short} completed (exit 0) ──"));
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn a_transcript_comes_in_pages_that_join_up_exactly() {
    use sessiond_proto::methods::{Log, LogCursor, LogParams};
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    for prompt in [
        "echo one; sleep 0.1; echo two",
        "echo three; sleep 0.1; echo four",
    ] {
        sb.ctl(&["send", "--wait", prompt]).ok();
    }
    let id = sb.session_id("job");
    sessiond_tests::tokio_runtime().block_on(async {
        let client = sessiond_client::Client::connect(&sb.connect_options())
            .await
            .unwrap();
        let ask = |from: Option<LogCursor>, max_bytes: Option<u64>| LogParams {
            session: Some(id.clone()),
            max_bytes,
            from,
            ..Default::default()
        };
        let whole = client.call::<Log>(ask(None, None)).await.unwrap();
        assert!(whole.next.is_none());
        let chunks: usize = whole.turns.iter().map(|t| t.output.len()).sum();
        assert!(chunks >= 4, "{whole:?}");
        // One byte a page: each page holds a single chunk (or a turn with none), and says
        // where the next begins; joined, the pages are the whole transcript.
        let mut joined: Vec<(String, u64, String)> = Vec::new();
        let mut from = None;
        let mut pages = 0;
        loop {
            let page = client.call::<Log>(ask(from, Some(1))).await.unwrap();
            pages += 1;
            let taken: usize = page.turns.iter().map(|t| t.output.len()).sum();
            assert!(taken <= 1, "page {pages}: {page:?}");
            for turn in &page.turns {
                for c in &turn.output {
                    joined.push((turn.turn.turn_id.to_string(), c.chunk, c.data.clone()));
                }
            }
            match page.next {
                Some(next) => from = Some(next),
                None => break,
            }
        }
        let expected: Vec<_> = whole
            .turns
            .iter()
            .flat_map(|t| {
                t.output
                    .iter()
                    .map(|c| (t.turn.turn_id.to_string(), c.chunk, c.data.clone()))
            })
            .collect();
        assert_eq!(joined, expected);
        assert!(pages >= chunks, "{pages} pages for {chunks} chunks");
        // A place that is not in the transcript, and an empty budget, are refused.
        let elsewhere = LogCursor {
            turn: "00000000-0000-4000-8000-000000000000".parse().unwrap(),
            chunk: 0,
        };
        let err = client
            .call::<Log>(ask(Some(elsewhere), None))
            .await
            .unwrap_err();
        assert_eq!(err.code(), "not_found", "{err}");
        let err = client.call::<Log>(ask(None, Some(0))).await.unwrap_err();
        assert_eq!(err.code(), "invalid_argument", "{err}");
    });
}

#[test]
fn pages_join_up_while_queued_turns_start_between_them() {
    use sessiond_proto::methods::{Log, LogParams};
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    let project = shell_session(&sb);
    let wait_for = |file: &str| format!("while [ ! -e {file} ]; do sleep 0.05; done");
    let (first, _) = start_worker(
        &sb,
        &project,
        &format!("echo $$ > worker.pid; {}", wait_for("go1")),
    );
    let second = turn_id(&sb.ctl(&["--json", "send", &wait_for("go2")]).json());
    let third = turn_id(&sb.ctl(&["--json", "send", "echo third"]).json());
    let id = sb.session_id("job");
    let ids = sessiond_tests::tokio_runtime().block_on(async {
        let client = sessiond_client::Client::connect(&sb.connect_options())
            .await
            .unwrap();
        let ask = |from| LogParams {
            session: Some(id.clone()),
            max_bytes: Some(1),
            from,
            ..Default::default()
        };
        let page = client.call::<Log>(ask(None)).await.unwrap();
        let mut ids: Vec<String> = page
            .turns
            .iter()
            .map(|t| t.turn.turn_id.to_string())
            .collect();
        // Between the pages the first turn ends and the second starts, while the third, sent
        // before the second started, still waits.
        std::fs::write(project.join("go1"), "").unwrap();
        sessiond_tests::eventually("the second turn to start", || {
            settled(&sb, "job", &second)["status"] == "running"
        });
        let mut from = page.next;
        while let Some(next) = from {
            let page = client.call::<Log>(ask(Some(next))).await.unwrap();
            for t in &page.turns {
                let id = t.turn.turn_id.to_string();
                if ids.last() != Some(&id) {
                    ids.push(id);
                }
            }
            from = page.next;
        }
        ids
    });
    std::fs::write(project.join("go2"), "").unwrap();
    assert_eq!(ids, [first, second, third], "each turn once, in order");
}

#[test]
fn export_gives_every_turn_its_line_when_a_page_ends_between_turns() {
    // A provider that takes its prompt on stdin: prompts of 1 MB do not fit in an argument.
    let sb = Sandbox::with_config("[providers.catp]\ncommand = [\"cat\"]\nprompt = \"stdin\"\n");
    let _daemon = sb.start_daemon();
    let project = sb.project("p");
    sb.ctl(&[
        "new",
        "--project",
        path_str(&project),
        "--provider",
        "catp",
        "--name",
        "job",
    ])
    .ok();
    sb.ctl(&["pause", "job"]).ok();
    // 18 prompts of 1 MB, held in the queue: a 16 MiB page ends between two of them.
    let mut prompt = vec![b'#'; 1_000_000];
    for i in 0..18u8 {
        prompt[1] = b'a' + i;
        ctl_with_input(&sb, &["send", "job", "-"], prompt.clone()).ok();
    }
    let export = sb.ctl(&["export", "job"]).stdout();
    assert_eq!(
        export
            .lines()
            .filter(|l| l.contains("\"type\":\"turn\""))
            .count(),
        18
    );
    let log = sb.ctl(&["--json", "log", "job"]).json();
    assert_eq!(log["turns"].as_array().unwrap().len(), 18);
    let text = sb.ctl(&["log", "job"]).stdout();
    assert_eq!(text.lines().filter(|l| l.starts_with("── ")).count(), 18);
}

#[test]
fn log_and_export_join_a_turn_cut_between_two_pages() {
    let sb = Sandbox::new();
    let _daemon = sb.start_daemon();
    shell_session(&sb);
    // 2 × 9 MB of output: more than one page of the client's (16 MiB), so the second turn's
    // output is cut between two answers.
    let big = "head -c 9000000 /dev/zero | tr '\\0' a; echo";
    sb.ctl(&["send", "--wait", big]).ok();
    sb.ctl(&["send", "--wait", &format!("{big}; exit 3")]);
    let log = sb.ctl(&["--json", "log", "job"]).json();
    let turns = log["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 2);
    assert!(log.get("next").is_none(), "joined into one document");
    for turn in turns {
        let chunks = turn["output"].as_array().unwrap();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c["chunk"], i as u64, "no chunk lost or repeated");
        }
        let bytes: usize = chunks
            .iter()
            .map(|c| c["data"].as_str().unwrap().len())
            .sum();
        assert_eq!(bytes, 9_000_001);
    }
    let text = sb.ctl(&["log", "job"]).stdout();
    assert_eq!(text.matches("── ").count(), 2, "one header a turn");
    let output: usize = text
        .lines()
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b == b'a'))
        .map(str::len)
        .sum();
    assert_eq!(output, 18_000_000, "all of both turns' output, once");
    let export = sb.ctl(&["export", "job"]).stdout();
    let lines: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.iter().filter(|l| l["type"] == "turn").count(), 2);
    let data: usize = lines
        .iter()
        .filter(|l| l["type"] == "output")
        .map(|l| l["data"].as_str().unwrap().len())
        .sum();
    assert_eq!(data, 18_000_002);
}
