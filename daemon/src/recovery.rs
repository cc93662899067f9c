//! Settlement at start-up: nothing the previous daemon left running runs twice, or at all.
//!
//! A turn stored as `running` belonged to a daemon that died. Its worker may still be alive
//! (workers lead their own process group, so the daemon's death does not take them along). The
//! worker is found three ways: the pid stored with the turn, the session's pid file (written
//! when the worker started, in case the turn's row was not yet saved), and — when the daemon
//! died before either named it — the processes holding the session's lock file open (the
//! worker inherited it) whose environment names the turn. A candidate counts only
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
    process_alive, process_group_of, process_has_env, process_start_time, processes_with_open,
    signal_group,
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
        // saving the pid) still holds the lock it inherited: find it among the processes with
        // the lock file open — only those carrying this turn's id in their environment, so a
        // process that merely reads the file is never touched — with their start times, so a
        // pid reused during the grace period is never signalled.
        let held = || matches!(files.inspect(&session), Some(OwnerStatus::Live { .. }));
        let turn_id = turn.id.to_string();
        let mut unrecorded: Vec<(u32, Option<u64>)> = Vec::new();
        if held() {
            unrecorded = processes_with_open(&files.lock_path(&session))
                .into_iter()
                .filter(|&pid| process_has_env(pid, "SESSIOND_TURN_ID", &turn_id))
                .map(|pid| (pid, process_start_time(pid)))
                .collect();
            for &(pid, _) in &unrecorded {
                warn!(
                    turn = %turn.id,
                    pid,
                    "an unrecorded worker of the previous daemon holds the session; ending it"
                );
            }
            signal_unrecorded(&unrecorded, Signal::SIGTERM);
        }
        // Whatever of its group still holds the session's lock gets the grace period to go.
        let deadline = Instant::now() + grace;
        while held() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if held() && !unrecorded.is_empty() {
            signal_unrecorded(&unrecorded, Signal::SIGKILL);
            let deadline = Instant::now() + grace;
            while held() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        info!(turn = %turn.id, session = %turn.session, "settled as interrupted after a restart");
        registry.interrupted_at_startup(turn.id);
    }
}

/// Signals each process still the one found (same start time): its whole group when it leads
/// one (a worker does), else itself alone.
fn signal_unrecorded(found: &[(u32, Option<u64>)], signal: Signal) {
    for &(pid, started) in found {
        if started.is_none() || process_start_time(pid) != started {
            continue;
        }
        if process_group_of(pid) == Some(pid) {
            let _ = signal_group(pid, signal);
        } else if let Ok(raw) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), signal);
        }
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
