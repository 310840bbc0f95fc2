//! A CPU quota for one process, through a cgroup of its own: how the surge benchmark makes
//! the edge the bottleneck on a 2-core machine where the load generator costs about what the
//! edge does per shake. The quota is a share of one core enforced per period; the shorter the
//! period, the shorter each stall once the share is spent (a stall is up to
//! `period * (1 - share)`), which the benchmark measures and reports.
//!
//! cgroup v1 (`/sys/fs/cgroup/cpu`, `cpu.cfs_quota_us`) and v2 (`cpu.max`) are both handled;
//! it needs root. Dropping the quota moves the process back and removes the group.

use std::io;
use std::path::PathBuf;

/// A quota in force.
#[derive(Debug)]
pub struct CpuQuota {
    dir: PathBuf,
    parent_procs: PathBuf,
    pid: u32,
    /// Share of one core.
    pub share: f64,
    /// Enforcement period, microseconds.
    pub period_us: u64,
}

/// The cgroup v1 cpu controller's mount, if any.
const V1: &str = "/sys/fs/cgroup/cpu";
/// Where cgroup v2 may be mounted.
const V2: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];

impl CpuQuota {
    /// Puts process `pid` (all its threads) in a new group `name` limited to `share` of one
    /// core per `period_us`.
    pub fn apply(name: &str, pid: u32, share: f64, period_us: u64) -> io::Result<Self> {
        if !(share > 0.0 && share.is_finite() && (1_000..=1_000_000).contains(&period_us)) {
            return Err(io::Error::other("a quota needs a share above 0 and a 1 ms to 1 s period"));
        }
        // The kernel's least quota is 1 ms a period: refused rather than raised, so the share
        // the figures assume is the share enforced.
        let quota_us = (share * period_us as f64).round() as u64;
        if quota_us < 1_000 {
            return Err(io::Error::other(format!(
                "a share of {share} of a {period_us} us period is under the kernel's 1 ms least \
                 quota: raise the share or the period"
            )));
        }
        let v1 = PathBuf::from(V1);
        if v1.join("cpu.cfs_quota_us").exists() {
            let dir = v1.join(name);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("cpu.cfs_period_us"), period_us.to_string())?;
            std::fs::write(dir.join("cpu.cfs_quota_us"), quota_us.to_string())?;
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
            let parent_procs = v1.join("cgroup.procs");
            return Ok(Self { dir, parent_procs, pid, share, period_us });
        }
        for root in V2.map(PathBuf::from) {
            if !root.join("cgroup.subtree_control").exists() {
                continue;
            }
            // The cpu controller must be on for the root's children.
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
            let dir = root.join(name);
            std::fs::create_dir_all(&dir)?;
            if !dir.join("cpu.max").exists() {
                let _ = std::fs::remove_dir(&dir);
                continue;
            }
            std::fs::write(dir.join("cpu.max"), format!("{quota_us} {period_us}"))?;
            std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
            let parent_procs = root.join("cgroup.procs");
            return Ok(Self { dir, parent_procs, pid, share, period_us });
        }
        Err(io::Error::other(
            "no cgroup cpu controller found (cgroup v1 /sys/fs/cgroup/cpu or v2 cpu.max); the \
             surge benchmark needs one, and root",
        ))
    }

    /// Times the group was throttled and for how long in all, microseconds (its `cpu.stat`).
    pub fn throttled(&self) -> (u64, u64) {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        parse_throttled(&text)
    }
}

/// `(nr_throttled, throttled time in microseconds)` from a `cpu.stat` (v1 gives nanoseconds as
/// `throttled_time`, v2 microseconds as `throttled_usec`).
pub fn parse_throttled(text: &str) -> (u64, u64) {
    let mut count = 0;
    let mut us = 0;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else { continue };
        let Ok(value) = value.parse::<u64>() else { continue };
        match key {
            "nr_throttled" => count = value,
            "throttled_time" => us = value / 1000,
            "throttled_usec" => us = value,
            _ => {}
        }
    }
    (count, us)
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // A process still running goes back to the parent group; an empty group can go.
        let _ = std::fs::write(&self.parent_procs, self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_read_from_either_version() {
        let v1 = "nr_periods 500\nnr_throttled 120\nthrottled_time 3500000000\n";
        assert_eq!(parse_throttled(v1), (120, 3_500_000));
        let v2 = "usage_usec 9\nnr_periods 5\nnr_throttled 2\nthrottled_usec 1500\n";
        assert_eq!(parse_throttled(v2), (2, 1_500));
        assert_eq!(parse_throttled(""), (0, 0));
    }

    /// A share the kernel cannot enforce (under 1 ms a period) is refused before any group
    /// is made, not raised to 1 ms while the figures assume the share asked for.
    #[test]
    fn a_quota_under_the_kernels_least_is_refused() {
        let said = CpuQuota::apply("shake-test-never-made", std::process::id(), 0.25, 2_000)
            .unwrap_err()
            .to_string();
        assert!(said.contains("1 ms least"), "{said}");
    }
}
