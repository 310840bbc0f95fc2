//! What the benchmarks read about another process from `/proc`: its CPU time, its resident
//! memory, its threads. The parsing is separate from the reading so it can be tested.

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ; 100 on every Linux the project
/// targets).
const TICKS_PER_S: u64 = 100;

/// User plus system time, in ticks, from the text of a `/proc/*/stat` file.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // After the name: state (3rd field overall) ... utime is the 14th, stime the 15th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` field (e.g. `VmRSS`, `VmHWM`) from the text of a `/proc/*/status` file.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Busy time (everything but idle and I/O wait), in ticks, of core `core` from the text of
/// `/proc/stat`.
pub fn stat_core_busy_ticks(stat: &str, core: usize) -> Option<u64> {
    let name = format!("cpu{core}");
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let ticks: Vec<u64> =
        line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some(ticks.iter().sum::<u64>() - idle)
}

/// Time the hypervisor ran something else while core `core` had work (steal), in ticks, from
/// the text of `/proc/stat`.
pub fn stat_core_steal_ticks(stat: &str, core: usize) -> Option<u64> {
    let name = format!("cpu{core}");
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

/// Steal time of core `core` so far, microseconds (10 ms resolution).
pub fn core_steal_us(core: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat_core_steal_ticks(&stat, core).map(|ticks| ticks * (1_000_000 / TICKS_PER_S))
}

/// A thread's time on the CPU and runnable but waiting for one (the guest scheduler's run
/// queue), nanoseconds, from the text of `/proc/*/task/*/schedstat` (on-CPU, run-queue wait,
/// slices).
pub fn schedstat_times_ns(schedstat: &str) -> Option<(u64, u64)> {
    let mut fields = schedstat.split_whitespace().map(str::parse::<u64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

/// Scheduler times of process `pid`'s threads so far, microseconds: (on the CPU, waiting on
/// the run queue), for all its threads and for those whose name starts with `named` (threads
/// that have exited are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedTimes {
    /// Every thread's time on the CPU.
    pub all_on_cpu_us: u64,
    /// The named threads' time on the CPU.
    pub named_on_cpu_us: u64,
    /// The named threads' time waiting for a CPU.
    pub named_run_delay_us: u64,
}

/// [`SchedTimes`] of process `pid`, naming the threads whose name starts with `named`.
pub fn sched_times(pid: u32, named: &str) -> SchedTimes {
    let mut times = SchedTimes::default();
    for tid in threads(pid) {
        let read = |file: &str| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{file}"));
        let Some((on_cpu, run_delay)) =
            read("schedstat").ok().as_deref().and_then(schedstat_times_ns)
        else {
            continue;
        };
        times.all_on_cpu_us += on_cpu / 1_000;
        if read("comm").is_ok_and(|comm| comm.starts_with(named)) {
            times.named_on_cpu_us += on_cpu / 1_000;
            times.named_run_delay_us += run_delay / 1_000;
        }
    }
    times
}

/// Busy time of core `core` so far, all processes on it, microseconds (10 ms resolution).
pub fn core_busy_us(core: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat_core_busy_ticks(&stat, core).map(|ticks| ticks * (1_000_000 / TICKS_PER_S))
}

/// CPU time process `pid` has used, all threads, microseconds (10 ms resolution).
pub fn process_cpu_us(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu_ticks(&stat).map(|ticks| ticks * (1_000_000 / TICKS_PER_S))
}

/// The effective user id, from the text of a `/proc/*/status` file.
pub fn status_effective_uid(status: &str) -> Option<u32> {
    let ids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    ids.split_whitespace().nth(1)?.parse().ok()
}

/// This process runs as root (and so may give the edge's workers real-time priority).
pub fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| status_effective_uid(&status) == Some(0))
}

/// Resident memory of process `pid` now, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?, "VmRSS")
}

/// Thread ids of process `pid`.
pub fn threads(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_the_command_name_even_with_spaces_in_it() {
        let stat = "4242 (shake edge) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 25 0 0 20 0 3 0";
        assert_eq!(stat_cpu_ticks(stat), Some(175));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1"), None);
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tshake-edge\nVmHWM:\t  51200 kB\nVmRSS:\t  40960 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(40_960));
        assert_eq!(status_kib(status, "VmHWM"), Some(51_200));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(status_effective_uid("Name:\tx\nUid:\t1000\t0\t0\t0\n"), Some(0));
        assert_eq!(status_effective_uid("Uid:\t0\t1000\t0\t0\n"), Some(1000));
        assert_eq!(status_effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(process_cpu_us(me).is_some());
        assert!(threads(me).contains(&me));
    }

    #[test]
    fn core_busy_is_everything_but_idle_and_iowait() {
        let stat =
            "cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 1 2 3 40 5 6 7 8 0 0\ncpu1 9 9 9 9 9 9 9 9 0 0\n";
        assert_eq!(stat_core_busy_ticks(stat, 0), Some(1 + 2 + 3 + 6 + 7 + 8));
        assert_eq!(stat_core_busy_ticks(stat, 1), Some(9 * 6));
        assert_eq!(stat_core_busy_ticks(stat, 2), None);
        assert_eq!(stat_core_steal_ticks(stat, 0), Some(8));
        assert_eq!(stat_core_steal_ticks(stat, 2), None);
    }

    #[test]
    fn schedstat_gives_time_on_the_cpu_and_on_the_run_queue() {
        assert_eq!(schedstat_times_ns("624010 1500 2\n"), Some((624_010, 1_500)));
        assert_eq!(schedstat_times_ns("624010"), None);
        let me = std::process::id();
        let mine = sched_times(me, "");
        assert!(mine.all_on_cpu_us > 0 && mine.named_on_cpu_us == mine.all_on_cpu_us);
        assert_eq!(sched_times(me, "no thread is named this").named_on_cpu_us, 0);
        assert!(
            sched_times(me, "").all_on_cpu_us >= mine.all_on_cpu_us,
            "a counter never goes back"
        );
    }
}
