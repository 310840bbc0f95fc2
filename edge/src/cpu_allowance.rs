//! How much CPU this process may use: the smallest CPU quota of its cgroup and the cgroup's
//! ancestors (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`), in cores.
//!
//! Overload control needs it because an edge in a container with a CPU limit is throttled by
//! the kernel long before its loop looks busy: a worker allowed a quarter of a core that uses
//! a fifth of one is at 80% of its capacity, though its loop waits 80% of the wall time. The
//! workers re-read it once a second (a quota can be changed on a running container).
//!
//! The parsing is pure (text in, cores out) and the walk takes the hierarchy's root as an
//! argument, so both are tested on a directory tree the tests write.

use std::path::{Path, PathBuf};

/// Where cgroup v2 is commonly mounted (unified, or beside v1 in a hybrid setup).
const V2_ROOTS: [&str; 2] = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"];
/// Where cgroup v1's cpu controller is commonly mounted.
const V1_ROOTS: [&str; 2] = ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/cpu,cpuacct"];

/// The process's CPU allowance in cores; `None` when no cgroup limits it (or none can be
/// read: the machine's cores are the limit then).
pub fn process_cores() -> Option<f64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (v2_path, v1_path) = own_cgroups(&cgroups);
    let v2 = v2_path.and_then(|path| {
        V2_ROOTS.iter().map(Path::new).find_map(|root| smallest_quota(root, &path, read_v2))
    });
    let v1 = v1_path.and_then(|path| {
        V1_ROOTS.iter().map(Path::new).find_map(|root| smallest_quota(root, &path, read_v1))
    });
    match (v2, v1) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The share of one core each of `workers` may use when the process may use `cores`: at most
/// one (a worker is one thread).
pub fn per_worker(cores: Option<f64>, workers: usize) -> f64 {
    cores.map_or(1.0, |cores| (cores / workers.max(1) as f64).clamp(0.001, 1.0))
}

/// The process's cgroup paths from `/proc/self/cgroup`: the v2 one (`0::/path`) and the v1
/// cpu controller's (`N:cpu,cpuacct:/path`).
fn own_cgroups(text: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1 = Some(path.to_owned());
        }
    }
    (v2, v1)
}

/// The smallest quota from `root/path` up to `root` (an ancestor's limit binds its children);
/// `None` if no level has one, or `root/path` does not exist (not this hierarchy's mount).
fn smallest_quota(root: &Path, path: &str, read: fn(&Path) -> Option<f64>) -> Option<f64> {
    let mut dir: PathBuf = root.join(path.trim_start_matches('/'));
    if !dir.is_dir() {
        return None;
    }
    let mut smallest: Option<f64> = None;
    loop {
        if let Some(cores) = read(&dir) {
            smallest = Some(smallest.map_or(cores, |s| s.min(cores)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            return smallest;
        }
    }
}

fn read_v2(dir: &Path) -> Option<f64> {
    parse_cpu_max(&std::fs::read_to_string(dir.join("cpu.max")).ok()?)
}

fn read_v1(dir: &Path) -> Option<f64> {
    let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
    parse_v1(&quota, &period)
}

/// Cores from a v2 `cpu.max` (`"$MAX $PERIOD"`, `max` meaning no limit).
pub fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota = fields.next()?.parse::<f64>().ok()?;
    let period = fields.next().map_or(Some(100_000.0), |p| p.parse::<f64>().ok())?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// Cores from v1's `cpu.cfs_quota_us` (-1: no limit) and `cpu.cfs_period_us`.
pub fn parse_v1(quota: &str, period: &str) -> Option<f64> {
    let quota = quota.trim().parse::<f64>().ok()?;
    let period = period.trim().parse::<f64>().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_files_parse_and_no_limit_is_none() {
        assert_eq!(parse_cpu_max("25000 100000\n"), Some(0.25));
        assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max(""), None);
        assert_eq!(parse_v1("1000\n", "4000\n"), Some(0.25));
        assert_eq!(parse_v1("-1\n", "100000\n"), None);
        assert_eq!(parse_v1("garbage", "100000"), None);
        assert_eq!(per_worker(Some(0.25), 1), 0.25);
        assert_eq!(per_worker(Some(3.0), 2), 1.0, "a worker is one thread");
        assert_eq!(per_worker(Some(1.0), 4), 0.25);
        assert_eq!(per_worker(None, 2), 1.0);
    }

    #[test]
    fn the_own_cgroups_are_found_in_either_layout() {
        let hybrid = "12:cpu,cpuacct:/kubepods/pod1\n4:memory:/x\n0::/system.slice/edge\n";
        assert_eq!(
            own_cgroups(hybrid),
            (Some("/system.slice/edge".into()), Some("/kubepods/pod1".into()))
        );
        assert_eq!(own_cgroups("0::/\n"), (Some("/".into()), None));
        assert_eq!(own_cgroups("1:cpu:/a\n2:cpuacct:/b\n"), (None, Some("/a".into())));
        assert_eq!(own_cgroups("nonsense\n"), (None, None));
    }

    #[test]
    fn the_smallest_quota_on_the_way_up_binds() {
        let root = std::env::temp_dir().join(format!("shake-cpu-allowance-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let leaf = root.join("pod/edge");
        std::fs::create_dir_all(&leaf).expect("tree");
        std::fs::write(root.join("pod/cpu.max"), "50000 100000\n").expect("write");
        std::fs::write(leaf.join("cpu.max"), "max 100000\n").expect("write");
        assert_eq!(smallest_quota(&root, "/pod/edge", read_v2), Some(0.5), "the parent binds");
        std::fs::write(leaf.join("cpu.max"), "25000 100000\n").expect("write");
        assert_eq!(smallest_quota(&root, "/pod/edge", read_v2), Some(0.25), "the leaf binds");
        assert_eq!(smallest_quota(&root, "/elsewhere", read_v2), None, "not this mount");
        assert_eq!(smallest_quota(&root, "/", read_v2), None, "no limit at the root");
        std::fs::write(leaf.join("cpu.cfs_quota_us"), "1000\n").expect("write");
        std::fs::write(leaf.join("cpu.cfs_period_us"), "4000\n").expect("write");
        assert_eq!(smallest_quota(&root, "/pod/edge", read_v1), Some(0.25));
        std::fs::remove_dir_all(&root).expect("clean up");
    }
}
