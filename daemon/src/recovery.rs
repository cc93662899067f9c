//! Settlement at start-up: nothing the previous daemon left running runs twice, or at all.
//!
//! A turn stored as `running` belonged to a daemon that died. Its worker may still be alive
//! (workers lead their own process group, so the daemon's death does not take them along). The
//! worker is found three ways: the pid stored with the turn, the session's pid file (written
//! when the worker started, in case the turn's row was not yet saved), and — when the daemon
//! died before either named it — the processes holding the session's lock file open, which
//! the worker inherited. A candidate counts only
//! if it is alive *and* its start time matches the one recorded (so a reused pid is never
//! mistaken for it). Its process group is terminated — SIGTERM, then SIGKILL after the grace
//! period — and while the session's lock is still held by that group, the daemon waits, so
//! nothing else starts in that session until its last writer is gone. The turn is then settled
//! `interrupted` and the session's queue paused with `daemon_restarted`, so queued work waits
//! for the user to `resume` it rather than running on a broken context.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sessiond_proto::ownership::{OwnerStatus, SessionFiles};
use tracing::{info, warn};

use crate::platform::{
    process_alive, process_group_of, process_start_time, processes_with_open, signal_group,
};
use crate::registry::Registry;

/// Settles every turn found running. Blocks (briefly) while surviving workers exit.
pub fn settle_at_startup(registry: &mut Registry, files: &SessionFiles, grace: Duration) {
    for turn in registry.found_running() {
        let session = turn.session.to_string();
        let recorded = turn.worker_pid.zip(turn.worker_start_time);
        let from_pid_file = match files.inspect(&session) {
            Some(OwnerStatus::Live {
                record: Some(record),
            }) if record.owner == "daemon worker" => record.start_time.map(|t| (record.pid, t)),
            _ => None,
        };
        for (pid, started) in [recorded, from_pid_file].into_iter().flatten() {
            if process_alive(pid) && process_start_time(pid) == Some(started) {
                warn!(turn = %turn.id, pid, "a worker of the previous daemon still runs; ending it");
                terminate(pid, grace);
            }
        }
        // A worker whose pid was never recorded (the daemon died between spawning it and
        // saving the pid) still holds the lock it inherited: find it by the open lock file.
        let held = || matches!(files.inspect(&session), Some(OwnerStatus::Live { .. }));
        let mut unrecorded = std::collections::BTreeSet::new();
        if held() {
            let own_group = process_group_of(std::process::id());
            unrecorded.extend(
                processes_with_open(&files.lock_path(&session))
                    .into_iter()
                    .filter_map(process_group_of)
                    .filter(|group| Some(*group) != own_group),
            );
            for &group in &unrecorded {
                warn!(
                    turn = %turn.id,
                    group,
                    "an unrecorded worker of the previous daemon holds the session; ending it"
                );
                let _ = signal_group(group, Signal::SIGTERM);
            }
        }
        // Whatever of its group still holds the session's lock gets the grace period to go.
        let deadline = Instant::now() + grace;
        while held() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if held() && !unrecorded.is_empty() {
            for &group in &unrecorded {
                let _ = signal_group(group, Signal::SIGKILL);
            }
            let deadline = Instant::now() + grace;
            while held() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        info!(turn = %turn.id, session = %turn.session, "settled as interrupted after a restart");
        registry.interrupted_at_startup(turn.id);
    }
}

/// SIGTERM to the group, SIGKILL after `grace` if the leader still lives.
fn terminate(pid: u32, grace: Duration) {
    let _ = signal_group(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while process_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if process_alive(pid) {
        let _ = signal_group(pid, Signal::SIGKILL);
    }
}
