//! Settlement at start-up: nothing the previous daemon left running runs twice, or at all.
//!
//! A turn stored as `running` belonged to a daemon that died. Its worker may still be alive
//! (workers lead their own process group, so the daemon's death does not take them along). If
//! the recorded pid is alive *and* its start time matches the one recorded (so the pid was
//! not reused by an unrelated process), its process group is terminated — SIGTERM, then
//! SIGKILL after the grace period — before anything else runs in that session. The turn is
//! then settled `interrupted` and the session's queue paused with `daemon_restarted`, so
//! queued work waits for the user to `resume` it rather than running on a broken context.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{info, warn};

use crate::platform::{process_alive, process_start_time, signal_group};
use crate::registry::Registry;

/// Settles every turn found running. Blocks (briefly) while surviving workers exit.
pub fn settle_at_startup(registry: &mut Registry, grace: Duration) {
    for turn in registry.found_running() {
        if let (Some(pid), Some(started)) = (turn.worker_pid, turn.worker_start_time) {
            if process_alive(pid) && process_start_time(pid) == Some(started) {
                warn!(turn = %turn.id, pid, "a worker of the previous daemon still runs; ending it");
                terminate(pid, grace);
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
