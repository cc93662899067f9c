//! The state directory's file system fills up while a turn streams output: the daemon says so
//! (to `status`, to the turn, to anyone trying a change), keeps serving reads, loses nothing it
//! acknowledged, and takes changes again by itself once space returns.
//!
//! The state directory is a small tmpfs of its own, which needs root (mount); elsewhere the
//! test says it was skipped and why.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sessiond_tests::report::{thousands, Row};
use sessiond_tests::{as_json, eventually, is_root, session_event, Sandbox};

/// A tmpfs mounted on a directory for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a daemon still holding files open cannot keep the mount (and the test's
        // temp dir) alive after a failure.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes to `path` until the file system refuses; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).expect("create the filler file");
    let block = vec![0x5a_u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Whatever fits in the last partial block too, so not even a page is left.
    let _ = file.write(&[0x5a; 512]);
    written
}

fn storage_error(sb: &Sandbox) -> Option<String> {
    let status = sb.ctl(&["--json", "daemon", "status"]).json();
    status["storage_error"].as_str().map(str::to_owned)
}

#[test]
fn a_full_disk_refuses_changes_keeps_reads_and_recovers_when_space_returns() {
    if !is_root() {
        eprintln!("SKIPPED: mounting a small tmpfs for the state directory needs root");
        return;
    }
    let sb = Sandbox::new();
    let _mount = match Tmpfs::mount(&sb.state, "16m") {
        Ok(mount) => mount,
        Err(why) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the state directory: {why}");
            return;
        }
    };
    let mut daemon = sb.start_daemon();
    let project = sb.project("p");
    let acknowledged: Vec<String> = (0..20)
        .map(|i| sb.new_session(&project, &["--name", &format!("kept-{i}")]))
        .collect();
    let streamer = sb.new_session(&project, &["--name", "streamer"]);

    let mut settled = sb.raw();
    settled.handshake();
    let (_, answer) = settled.call(
        1,
        "subscribe",
        serde_json::json!({"filter": {"events": ["turn_settled"], "sessions": [streamer]}}),
    );
    assert_eq!(
        sessiond_tests::kind(&answer),
        "response",
        "{}",
        as_json(&answer)
    );

    // A turn that prints a line every 20 ms until told to stop: its output keeps arriving
    // while the disk fills, and it ends when the test says.
    let stop = sb.root.join("stop-streaming");
    let prompt = format!(
        "i=0; while [ ! -e '{}' ]; do echo line $i; i=$((i+1)); sleep 0.02; done; echo finished",
        stop.display()
    );
    sb.ctl(&["send", "streamer", &prompt]).ok();
    eventually("the turn's first output to be saved", || {
        sb.ctl(&["log", "streamer"]).stdout().contains("line 1\n")
    });
    // Queued behind it: must not start while a crash could forget it started.
    let marker = sb.root.join("second-ran");
    sb.ctl(&[
        "send",
        "streamer",
        &format!("echo ran >> '{}'", marker.display()),
    ])
    .ok();

    let filler = sb.state.join("filler");
    let filled = fill(&filler);
    eventually("status to report the failed commit", || {
        storage_error(&sb).is_some()
    });
    let why = storage_error(&sb).unwrap();

    // A change is refused, naming the cause and that it recovers by itself, and changes
    // nothing.
    let refused = sb.ctl(&[
        "--json",
        "new",
        "--project",
        project.to_str().unwrap(),
        "--name",
        "refused",
    ]);
    assert_ne!(refused.code(), 0, "a change was accepted on a full disk");
    let error = refused.json_error()["error"].clone();
    assert_eq!(error["code"], "storage_failed", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("disk space") && message.contains("retries"),
        "the refusal does not say what to do: {message}"
    );

    // Reads go on.
    let listed = sb.list_all()["sessions"].clone();
    assert_eq!(listed.as_array().unwrap().len(), 21, "{listed}");
    sb.ctl(&["show", "kept-7"]).ok();
    assert!(sb.ctl(&["log", "streamer"]).stdout().contains("line 1\n"));

    // The turn ends while nothing can be saved: its settlement says what the transcript lacks.
    std::fs::write(&stop, b"").unwrap();
    let event = session_event(&settled.read_event());
    let reason = event.data.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("not saved"),
        "the settled turn does not report its unsaved output: {}",
        as_json(&rmp_serde::to_vec_named(&event).unwrap())
    );

    // The next turn is handed to the runner, which finds it cannot be saved as started.
    eventually("the queue to be paused for the database", || {
        let queue = sb.ctl(&["--json", "queue", "streamer"]).json();
        queue["paused"]
            .as_str()
            .is_some_and(|why| why.contains("database"))
    });
    assert!(
        !marker.exists(),
        "a turn started while nothing could be saved"
    );

    // Space returns: changes are accepted again without a restart, and the held turn runs
    // once resumed.
    std::fs::remove_file(&filler).unwrap();
    // A client reading the transcript all the while must not put the retry off.
    eventually("the daemon to recover once space returned", || {
        sb.ctl(&["log", "streamer"]).ok();
        storage_error(&sb).is_none()
    });
    sb.ctl(&["resume", "streamer"]).ok();
    eventually("the held turn to run", || marker.exists());
    let after = sb.new_session(&project, &["--name", "after-recovery"]);

    // Nothing acknowledged is lost, and the settlement held in memory reached the disk.
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait().success());
    drop(daemon);
    let _daemon = sb.start_daemon();
    let listed = sb.list_all()["sessions"].clone();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    for id in acknowledged.iter().chain([&streamer, &after]) {
        assert!(ids.contains(&id.as_str()), "session {id} was lost");
    }
    assert_eq!(ids.len(), 22, "{listed}");
    let export = sb.ctl(&["export", "streamer"]).ok();
    let turn: serde_json::Value = export
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|record| record["type"] == "turn")
        .unwrap_or_else(|| panic!("no turn record in the export: {export}"));
    assert_eq!(turn["status"], "completed", "{turn}");
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "ran\n");
    assert!(
        turn["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not saved"),
        "{turn}"
    );

    Row::new(
        "fault",
        "a_full_disk_refuses_changes_keeps_reads_and_recovers_when_space_returns",
    )
    .done(
        "16 MiB tmpfs as the state dir, filled to ENOSPC while a turn streamed a line every \
             20 ms; the turn then finished; the filler was removed",
    )
    .runs(1)
    .checked(
        "status.storage_error set; a create refused with storage_failed saying what to do; \
             list/show/log served; the turn's settlement names its unsaved output; the turn \
             queued behind it did not start and its queue paused; changes accepted again without a restart; after a restart every acknowledged session is \
             there and the settlement held in memory was saved",
    )
    .result(format!(
        "filled {} bytes; failure reported as {why:?}; 0 of 21 acknowledged sessions lost; \
             recovered without restart",
        thousands(filled)
    ))
    .record();
}
