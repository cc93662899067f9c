//! The daemon's CPU use while nobody talks to it: CPU time per second, and how often its
//! threads woke, over a quiet window.

use std::collections::HashMap;
use std::time::Duration;

/// What a quiet window showed.
pub struct Idle {
    /// Milliseconds of CPU per second of wall time.
    pub cpu_ms_per_sec: f64,
    /// Times its threads slept and were woken (a thread started meanwhile counts from zero).
    pub wakeups: u64,
}

/// Measures `pid` over `window`, which begins a second after the caller's last request, so
/// the tail of that request is not counted. `None` without /proc or the process's CPU clock.
pub fn measure(pid: u32, window: Duration) -> Option<Idle> {
    std::thread::sleep(Duration::from_secs(1));
    let (cpu_before, woke_before) = (cpu_ns(pid)?, wakeups_by_thread(pid)?);
    std::thread::sleep(window);
    let (cpu_after, woke_after) = (cpu_ns(pid)?, wakeups_by_thread(pid)?);
    let wakeups = woke_after
        .iter()
        .map(|(tid, n)| n.saturating_sub(woke_before.get(tid).copied().unwrap_or(0)))
        .sum();
    Some(Idle {
        cpu_ms_per_sec: cpu_after.saturating_sub(cpu_before) as f64 / 1e6 / window.as_secs_f64(),
        wakeups,
    })
}

/// The process's CPU time so far, in nanoseconds: the kernel's process CPU clock, the exact
/// run time of all its threads, those that have exited included. (`utime` and `stime` in
/// `/proc/PID/stat` are clock ticks, 10 ms each, charged to whichever thread runs at the
/// tick, so a millisecond of work read as 0 or as 10 ms.)
fn cpu_ns(pid: u32) -> Option<u64> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).ok()?);
    let clock = nix::time::clock_getcpuclockid(pid).ok()?;
    let t = nix::time::clock_gettime(clock).ok()?;
    Some(u64::try_from(t.tv_sec()).ok()? * 1_000_000_000 + u64::try_from(t.tv_nsec()).ok()?)
}

/// Each thread's count of voluntary context switches (times it slept and was woken), by
/// thread id. A thread that is gone by the time it is read is left out.
fn wakeups_by_thread(pid: u32) -> Option<HashMap<String, u64>> {
    let mut counts = HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let count = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse::<u64>().ok());
        if let Some(count) = count {
            counts.insert(task.file_name().to_string_lossy().into_owned(), count);
        }
    }
    Some(counts)
}
