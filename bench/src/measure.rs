//! Process measurements: CPU time and peak RSS from `getrusage`, and child runs that report them.
//!
//! Figures that compare processes (throughput, the Python peer) run each measured workload in a
//! fresh child process, so its peak RSS and CPU time are its own and not the orchestrator's.

use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

/// What a measured child reports on its last stdout line, as JSON. The Python peer's driver
/// prints the same fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ProcessStats {
    /// Distinct jobs handled.
    pub jobs: u64,
    /// Wall time of the measured part, seconds.
    pub wall_s: f64,
    /// CPU time (user + system) of the measured part, seconds.
    pub cpu_s: f64,
    /// Peak resident set size of the whole process, KiB.
    pub max_rss_kb: u64,
    /// Jobs that did not end as succeeded (must be 0 for a valid run).
    pub not_succeeded: u64,
    /// Records handled, duplicates included.
    #[serde(default)]
    pub records: u64,
    /// When the measured part started, ms since the epoch (drains only), so the parent can place
    /// its target server's calls on the child's time line.
    #[serde(default)]
    pub started_ms: i64,
}

impl ProcessStats {
    /// Jobs per second.
    pub(crate) fn jobs_per_s(&self) -> f64 {
        self.jobs as f64 / self.wall_s.max(1e-9)
    }

    /// CPU microseconds per job.
    pub(crate) fn cpu_us_per_job(&self) -> f64 {
        self.cpu_s * 1e6 / self.jobs.max(1) as f64
    }
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage only writes the struct it is given; zeroed is a valid rusage.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    }
}

/// CPU time (user + system) this process has used, seconds.
pub(crate) fn cpu_seconds() -> f64 {
    let u = rusage();
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Peak resident set size of this process, KiB: `VmHWM`, not `getrusage`'s `ru_maxrss`, which
/// Linux carries over from the parent across fork and exec (a child of a 30 MiB orchestrator
/// would report at least 30 MiB).
pub(crate) fn max_rss_kb() -> u64 {
    peak_rss_of(std::process::id()).unwrap_or(0)
}

/// Peak resident set size of a running process, KiB (`VmHWM` in `/proc/PID/status`).
pub(crate) fn peak_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmHWM:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// Resident memory of a running process that is file-backed (`RssFile`: its executable's and
/// libraries' pages), KiB.
pub(crate) fn file_rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("RssFile:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

/// Runs `program args` to completion and parses its last stdout line as [`ProcessStats`].
pub(crate) fn run_child(program: &Path, args: &[String]) -> Result<ProcessStats, String> {
    last_json_line(
        Command::new(program).args(args),
        &program.display().to_string(),
    )
}

/// Runs `command` to completion (stdin closed, stderr passed through) and parses its last
/// non-empty stdout line as `T`; errors name `label`.
pub(crate) fn last_json_line<T: serde::de::DeserializeOwned>(
    command: &mut Command,
    label: &str,
) -> Result<T, String> {
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{label}: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!("{label}: {}; stdout: {stdout}", output.status));
    }
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(last).map_err(|e| format!("{label}: unreadable stats {last:?}: {e}"))
}

/// This benchmark binary, to run itself as a measured child.
pub(crate) fn this_exe() -> Result<std::path::PathBuf, String> {
    std::env::current_exe().map_err(|e| format!("own path: {e}"))
}

/// CPU time a running process has used (user and system, `/proc/PID/stat`), and the sum over
/// its live children's, seconds: where a tick's machine time went (figure 8).
pub(crate) fn cpu_of(pid: u32) -> (f64, f64) {
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = |pid: &str| -> Option<(u32, f64)> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command in parentheses: state, ppid, … utime (14th field), stime (15th).
        let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
        let ppid = fields.get(1)?.parse().ok()?;
        let used = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((ppid, used / ticks))
    };
    let own = stat(&pid.to_string()).map_or(0.0, |(_, used)| used);
    let children = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| stat(entry.file_name().to_str()?))
        .filter(|(ppid, _)| *ppid == pid)
        .map(|(_, used)| used)
        .sum();
    (own, children)
}
