//! What held the edge's loop worker off its core while a latency level ran. A sample every
//! 250 ms puts the edge's datagrams that waited 10 ms or more in its socket beside the
//! worker's wait on the guest scheduler's run queue (`schedstat`) and what ran on its core
//! meanwhile: the edge's other threads (allocator link, metrics), other processes (the core's
//! busy time less steal and the edge's CPU), and the hypervisor (the core's steal time).
//! Intervals in which datagrams waited ("tail" intervals) are compared with the rest: a cause
//! shows up as much more of it in the tail intervals than in the calm ones; none of them
//! showing up says the time went where the guest cannot see (the host not running the core's
//! vCPU while the guest thinks it idle, which steal does not count).

use crate::procfs;

/// How the edge names its loop workers' threads (`edge-worker-N`).
const WORKER_THREADS: &str = "edge-worker";

/// Cumulative readings at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldOffSample {
    /// Edge datagrams that waited 10 ms or more in its socket so far.
    pub waited_10ms: u64,
    /// Run-queue wait of the edge's loop workers so far, microseconds.
    pub run_delay_us: u64,
    /// The loop workers' CPU time, microseconds.
    pub worker_cpu_us: u64,
    /// Busy time of the edge's core, microseconds (10 ms resolution).
    pub core_busy_us: u64,
    /// Steal time of the edge's core, microseconds (10 ms resolution).
    pub steal_us: u64,
    /// The edge's CPU time, all threads, microseconds.
    pub edge_cpu_us: u64,
}

impl HoldOffSample {
    /// Reads the edge `pid` pinned to `core`, given its count of 10 ms socket waits.
    pub fn read(pid: u32, core: usize, waited_10ms: u64) -> Self {
        let sched = procfs::sched_times(pid, WORKER_THREADS);
        Self {
            waited_10ms,
            run_delay_us: sched.named_run_delay_us,
            worker_cpu_us: sched.named_on_cpu_us,
            core_busy_us: procfs::core_busy_us(core).unwrap_or(0),
            steal_us: procfs::core_steal_us(core).unwrap_or(0),
            edge_cpu_us: sched.all_on_cpu_us,
        }
    }
}

/// Mean milliseconds per interval, in the tail intervals and in the calm ones.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TailAndCalm {
    /// In intervals where datagrams waited 10 ms or more.
    pub tail_ms: f64,
    /// In the others.
    pub calm_ms: f64,
}

/// The summary of one level's samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HoldOffs {
    /// Intervals in which some edge datagram waited 10 ms or more.
    pub tail_intervals: u64,
    /// Intervals in all.
    pub intervals: u64,
    /// The loop workers waiting on the guest's run queue.
    pub run_delay: TailAndCalm,
    /// The edge's other threads running on its core.
    pub edge_others: TailAndCalm,
    /// Other processes running on the edge's core.
    pub others_on_core: TailAndCalm,
    /// The hypervisor's steal on the edge's core.
    pub steal: TailAndCalm,
}

/// Compares the intervals between consecutive `samples`.
pub fn summarize(samples: &[HoldOffSample]) -> HoldOffs {
    let mut sums = [[0u64; 4]; 2];
    let mut counts = [0u64; 2];
    for pair in samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let d = |f: fn(&HoldOffSample) -> u64| f(&b).saturating_sub(f(&a));
        let tail = usize::from(d(|s| s.waited_10ms) > 0);
        let steal = d(|s| s.steal_us);
        let edge = d(|s| s.edge_cpu_us);
        let edge_others = edge.saturating_sub(d(|s| s.worker_cpu_us));
        let others = d(|s| s.core_busy_us).saturating_sub(steal + edge);
        counts[tail] += 1;
        let values = [d(|s| s.run_delay_us), edge_others, others, steal];
        for (sum, value) in sums[tail].iter_mut().zip(values) {
            *sum += value;
        }
    }
    let mean = |class: usize, what: usize| {
        if counts[class] == 0 { 0.0 } else { sums[class][what] as f64 / counts[class] as f64 / 1e3 }
    };
    let pair = |what| TailAndCalm { tail_ms: mean(1, what), calm_ms: mean(0, what) };
    HoldOffs {
        tail_intervals: counts[1],
        intervals: counts[0] + counts[1],
        run_delay: pair(0),
        edge_others: pair(1),
        others_on_core: pair(2),
        steal: pair(3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(waited: u64, run_delay: u64, busy: u64, steal: u64, edge: u64) -> HoldOffSample {
        HoldOffSample {
            waited_10ms: waited,
            run_delay_us: run_delay,
            // The worker is all of the edge but 1 ms per 100.
            worker_cpu_us: edge - edge / 100,
            core_busy_us: busy,
            steal_us: steal,
            edge_cpu_us: edge,
        }
    }

    #[test]
    fn tail_intervals_are_told_apart_from_calm_ones() {
        let samples = [
            at(0, 0, 0, 0, 0),
            // calm: 1 ms run-queue wait, the core busy only with the edge
            at(0, 1_000, 100_000, 0, 100_000),
            // tail: 30 ms on the run queue, 40 ms of others, 10 ms stolen
            at(5, 31_000, 250_000, 10_000, 200_000),
            // calm again
            at(5, 32_000, 350_000, 10_000, 300_000),
        ];
        let h = summarize(&samples);
        assert_eq!((h.tail_intervals, h.intervals), (1, 3));
        assert_eq!(h.run_delay, TailAndCalm { tail_ms: 30.0, calm_ms: 1.0 });
        assert_eq!(h.others_on_core, TailAndCalm { tail_ms: 40.0, calm_ms: 0.0 });
        assert_eq!(h.edge_others, TailAndCalm { tail_ms: 1.0, calm_ms: 1.0 });
        assert_eq!(h.steal, TailAndCalm { tail_ms: 10.0, calm_ms: 0.0 });
    }

    #[test]
    fn too_few_samples_give_nothing() {
        assert_eq!(summarize(&[]), HoldOffs::default());
        assert_eq!(summarize(&[at(1, 1, 1, 1, 1)]), HoldOffs::default());
    }
}
