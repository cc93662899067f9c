//! What a run was: when, from which commit, on what machine, with which peers, and how many
//! runs each figure took — so a table or a JSON file can be read without the log beside it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct RunInfo {
    /// When the run began, UTC, RFC 3339.
    pub date: String,
    /// `git rev-parse --short HEAD` of the workspace the harness was built from; absent
    /// without git or outside a checkout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Whether tracked files differed from that commit; absent with `commit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dirty: Option<bool>,
    pub machine: Machine,
    pub quick: bool,
    /// Recorded and warm-up rounds of each whole-process row.
    pub runs: usize,
    pub warmup: usize,
    /// Versions of the peers measured (`tmux -V`, `pueue --version`); absent when not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tmux: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pueue: Option<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// CPUs this process may run on.
    pub cores: usize,
    /// e.g. `Linux 6.16.3`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// `MemTotal` from /proc/meminfo, in GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_gib: Option<f64>,
}

impl RunInfo {
    pub fn now(quick: bool, runs: usize, warmup: usize) -> RunInfo {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent();
        let commit = workspace.and_then(|w| git(w, &["rev-parse", "--short", "HEAD"]));
        // `--no-optional-locks`: status would otherwise refresh and rewrite the index.
        let dirty = commit.as_ref().and_then(|_| {
            workspace
                .and_then(|w| {
                    git(
                        w,
                        &[
                            "--no-optional-locks",
                            "status",
                            "--porcelain",
                            "--untracked-files=no",
                        ],
                    )
                })
                .map(|out| !out.is_empty())
        });
        RunInfo {
            date: rfc3339_utc(SystemTime::now()),
            commit,
            dirty,
            machine: Machine::this(),
            quick,
            runs,
            warmup,
            tmux: None,
            pueue: None,
        }
    }

    /// One line for the top of the printed report.
    pub fn describe(&self) -> String {
        let commit = match (&self.commit, self.dirty) {
            (Some(c), Some(true)) => format!("commit {c} with uncommitted changes"),
            (Some(c), _) => format!("commit {c}"),
            (None, _) => "commit unknown".into(),
        };
        let m = &self.machine;
        let mut parts = vec![
            self.date.clone(),
            commit,
            m.cpu.clone().unwrap_or_else(|| "CPU unknown".into()),
            format!("{} cores", m.cores),
        ];
        parts.extend(m.memory_gib.map(|g| format!("{g:.0} GiB")));
        parts.extend(m.kernel.clone());
        parts.push(format!(
            "{}{} rounds after {} warm-up",
            if self.quick { "--quick, " } else { "" },
            self.runs,
            self.warmup
        ));
        parts.extend(self.tmux.clone());
        parts.extend(self.pueue.clone());
        format!("Run: {}.", parts.join(", "))
    }
}

impl Machine {
    fn this() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|rest| rest.split_once(':'))
                    .map(|(_, model)| model.trim().to_string())
            });
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
        };
        let kernel = match (
            read("/proc/sys/kernel/ostype"),
            read("/proc/sys/kernel/osrelease"),
        ) {
            (Some(os), Some(release)) => Some(format!("{os} {release}")),
            _ => None,
        };
        let memory_gib = read("/proc/meminfo").and_then(|text| {
            let kb: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            // A tenth of a GiB is as fine as a machine's size needs saying.
            Some((kb / (1024.0 * 1024.0) * 10.0).round() / 10.0)
        });
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel,
            memory_gib,
        }
    }
}

/// `git ARGS` in `dir`, its output trimmed; `None` if git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `t` as `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = sessiond_proto::civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_the_calendar_s() {
        let at = |secs| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        // A leap day, the day after, and a century that is a leap year.
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(at(951_868_800), "2000-03-01T00:00:00Z");
        assert_eq!(at(1_709_164_800), "2024-02-29T00:00:00Z");
        assert_eq!(at(1_735_689_599), "2024-12-31T23:59:59Z");
        // 2100 is not a leap year: February 28 is followed by March 1.
        assert_eq!(at(4_107_456_000), "2100-02-28T00:00:00Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
