//! Cutting a steady-state measurement window out of a running load: once every connection is
//! up, wait out a warm-up, then take the counters and the server's CPU time at the start and
//! at the end of the window. Fed with samples; time is an argument.

/// One reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Connections up.
    pub connected: u64,
    /// Messages sent so far.
    pub sent: u64,
    /// Replies received so far.
    pub answered: u64,
    /// Server CPU time so far, microseconds.
    pub cpu_us: u64,
    /// The load generator's traffic and work so far (zero where it does not count them).
    pub load: LoadSide,
}

/// What the load generator counts of itself (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadSide {
    /// UDP datagrams it sent (the server received).
    pub datagrams_out: u64,
    /// UDP datagrams it received (the server sent).
    pub datagrams_in: u64,
    /// Time its loops spent working, microseconds (all its threads together).
    pub busy_us: u64,
}

impl LoadSide {
    /// What a load on `shake-loop` counts of itself so far.
    pub fn of(counters: &shake_swarm::loop_phones::LoadCounters) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            datagrams_out: counters.datagrams_out.load(Relaxed),
            datagrams_in: counters.datagrams_in.load(Relaxed),
            busy_us: counters.busy_us.load(Relaxed),
        }
    }
}

/// What happened inside the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// Window length, seconds.
    pub seconds: f64,
    /// Messages sent in it.
    pub sent: u64,
    /// Replies received in it.
    pub answered: u64,
    /// Server CPU time in it, microseconds.
    pub cpu_us: u64,
    /// The load generator's traffic and work in it.
    pub load: LoadSide,
}

impl Measured {
    /// Replies per second.
    pub fn answered_per_s(&self) -> f64 {
        self.answered as f64 / self.seconds.max(1e-9)
    }

    /// Share of the window the server was busy (CPU seconds per second, one core = 1).
    pub fn busy(&self) -> f64 {
        self.cpu_us as f64 / (self.seconds * 1e6).max(1e-9)
    }

    /// Server CPU microseconds per reply.
    pub fn cpu_us_per_message(&self) -> f64 {
        crate::stats::per(self.cpu_us as f64, self.answered)
    }

    /// Replies per second one fully busy server core would give.
    pub fn max_per_busy_core(&self) -> f64 {
        crate::stats::rate_per_busy_core(self.cpu_us_per_message())
    }

    /// UDP datagrams the server received per reply (the message and the ACKs and whatever
    /// else the client sent); zero where the load does not count them.
    pub fn datagrams_in_per_message(&self) -> f64 {
        crate::stats::per(self.load.datagrams_out as f64, self.answered)
    }

    /// UDP datagrams the server sent per reply.
    pub fn datagrams_out_per_message(&self) -> f64 {
        crate::stats::per(self.load.datagrams_in as f64, self.answered)
    }

    /// Share of the window the load generator was busy (one core = 1).
    pub fn load_busy(&self) -> f64 {
        self.load.busy_us as f64 / (self.seconds * 1e6).max(1e-9)
    }

    /// Share of sent messages answered.
    pub fn answered_share(&self) -> f64 {
        if self.sent == 0 { 0.0 } else { self.answered as f64 / self.sent as f64 }
    }
}

/// The window's state machine.
#[derive(Debug, Clone)]
pub struct Window {
    connections: u64,
    warmup_s: f64,
    measure_s: f64,
    ready_at: Option<f64>,
    start: Option<Sample>,
    end: Option<Sample>,
}

impl Window {
    /// A window that opens `warmup_s` after `connections` are up and lasts `measure_s`.
    pub fn new(connections: u64, warmup_s: f64, measure_s: f64) -> Self {
        Self { connections, warmup_s, measure_s, ready_at: None, start: None, end: None }
    }

    /// Feeds one sample.
    pub fn feed(&mut self, sample: Sample) {
        if self.ready_at.is_none() && sample.connected >= self.connections {
            self.ready_at = Some(sample.t_s);
        }
        let Some(ready_at) = self.ready_at else { return };
        match self.start {
            None if sample.t_s >= ready_at + self.warmup_s => self.start = Some(sample),
            Some(start) if self.end.is_none() && sample.t_s >= start.t_s + self.measure_s => {
                self.end = Some(sample);
            }
            _ => {}
        }
    }

    /// The window, once it has closed.
    pub fn measured(&self) -> Option<Measured> {
        let (start, end) = (self.start?, self.end?);
        Some(Measured {
            seconds: end.t_s - start.t_s,
            sent: end.sent - start.sent,
            answered: end.answered - start.answered,
            cpu_us: end.cpu_us.saturating_sub(start.cpu_us),
            load: LoadSide {
                datagrams_out: end.load.datagrams_out - start.load.datagrams_out,
                datagrams_in: end.load.datagrams_in - start.load.datagrams_in,
                busy_us: end.load.busy_us - start.load.busy_us,
            },
        })
    }

    /// Seconds after the start of the load by which the window should have closed, if the
    /// connections come up at `connect_rate` per second.
    pub fn planned_end_s(&self, connect_rate: f64) -> f64 {
        self.connections as f64 / connect_rate.max(1e-9) + self.warmup_s + self.measure_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t_s: f64, connected: u64, sent: u64, cpu_us: u64) -> Sample {
        Sample { t_s, connected, sent, answered: sent, cpu_us, load: LoadSide::default() }
    }

    #[test]
    fn the_window_opens_after_the_warm_up_and_closes_after_the_measurement() {
        let mut w = Window::new(100, 2.0, 5.0);
        w.feed(at(1.0, 50, 10, 1_000));
        w.feed(at(2.0, 100, 20, 2_000)); // ready
        w.feed(at(3.0, 100, 30, 3_000));
        assert_eq!(w.measured(), None);
        w.feed(at(4.0, 100, 40, 4_000)); // start
        w.feed(at(8.0, 100, 80, 6_000));
        assert_eq!(w.measured(), None);
        w.feed(at(9.0, 99, 90, 9_000)); // end (a phone leaving later does not matter)
        w.feed(at(10.0, 100, 100, 10_000));
        let m = w.measured().unwrap();
        let load = LoadSide::default();
        assert_eq!(m, Measured { seconds: 5.0, sent: 50, answered: 50, cpu_us: 5_000, load });
        assert_eq!(m.answered_per_s(), 10.0);
        assert_eq!(m.cpu_us_per_message(), 100.0);
        assert_eq!(m.max_per_busy_core(), 10_000.0);
        assert!((m.busy() - 0.001).abs() < 1e-12);
        assert_eq!(m.answered_share(), 1.0);
        assert_eq!(w.planned_end_s(50.0), 9.0);
    }

    #[test]
    fn a_load_that_never_connects_fully_measures_nothing() {
        let mut w = Window::new(100, 0.0, 1.0);
        for t in 0..10 {
            w.feed(at(t as f64, 99, t * 10, t * 100));
        }
        assert_eq!(w.measured(), None);
        assert_eq!(Measured::default().answered_share(), 0.0);
    }
}
