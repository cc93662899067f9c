//! Which CPUs the processes of an in-process figure run on.
//!
//! On a VM with two vCPUs a round trip between two processes costs about three times as much
//! when they sit on different vCPUs (the wake-up is an interrupt between vCPUs, which the
//! hypervisor delivers) as when they share one, and the scheduler keeps a process where it
//! last ran. Left alone, the daemon and the echo it is compared with could sit on different
//! sides of the client for minutes at a time: `ping` over the echo measured anywhere from
//! 0.41 to 2.56 × in twelve back-to-back runs. [`Pinned`] puts every thread of a process on
//! one CPU for as long as it lives, and puts them back where they were allowed to run after.

use std::path::PathBuf;

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs this process may run on, in order.
pub fn allowed_cpus() -> Result<Vec<usize>, String> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|e| format!("sched_getaffinity: {e}"))?;
    Ok((0..CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .collect())
}

/// Every thread of one process held on one CPU until dropped.
pub struct Pinned {
    pid: u32,
    before: CpuSet,
}

impl Pinned {
    /// Pins every thread `pid` has now; threads it starts later inherit the CPU from the
    /// thread that starts them.
    pub fn new(pid: u32, cpu: usize) -> Result<Pinned, String> {
        let before = sched_getaffinity(Pid::from_raw(pid as i32))
            .map_err(|e| format!("sched_getaffinity of process {pid}: {e}"))?;
        let mut one = CpuSet::new();
        one.set(cpu).map_err(|e| format!("CPU {cpu}: {e}"))?;
        let pinned = Pinned { pid, before };
        pinned.apply(&one)?;
        Ok(pinned)
    }

    fn apply(&self, set: &CpuSet) -> Result<(), String> {
        let tasks = PathBuf::from(format!("/proc/{}/task", self.pid));
        let entries = std::fs::read_dir(&tasks).map_err(|e| format!("{}: {e}", tasks.display()))?;
        for entry in entries.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|t| t.parse::<i32>().ok())
            else {
                continue;
            };
            // A thread that ended since the listing is no matter.
            match sched_setaffinity(Pid::from_raw(tid), set) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(format!("sched_setaffinity of thread {tid}: {e}")),
            }
        }
        Ok(())
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = self.apply(&self.before.clone());
    }
}
