//! An allocator and an edge, the real binaries, on loopback in one scratch directory: what the
//! edge's integration tests run phones against. The allocator can be stopped and started again
//! on the same address over the same ledger, its round changed, while the edge runs on.

use std::net::SocketAddr;
use std::process::Stdio;

use crate::metrics;
use crate::scratch::{ANY_PORT, Scratch};
use crate::servers::{Allocator, Edge};

/// The allocator's quota lasts 3 s here (5 s by default): an edge cut off from it falls back
/// to its own limit sooner.
const QUOTA: &str = "quota_valid_ms = 3000\n";

/// How to start a [`World`].
#[derive(Debug, Clone)]
pub struct WorldSettings {
    /// Cash envelopes of one unit each in round 1, all released at its opening.
    pub envelopes: u64,
    /// Lines at the end of the edge's `[limits]` table (tables after it may follow).
    pub edge_limits: &'static str,
    /// Overload control on the edge's workers (`[overload] enabled`). Off for a test whose
    /// phones connect once and must get in, or count every refusal as another limit's: a
    /// worker held off its core mid-turn (a stalled VM, a busy test machine) is over its load
    /// target for an interval and refuses new handshakes. Not with an `[overload]` table in
    /// `edge_limits`.
    pub overload_control: bool,
    /// Round 1 opens this long after the start, milliseconds (0: it opened a moment before).
    pub round_opens_in_ms: u64,
    /// A round 2 (one envelope, a minute long), an hour after round 1 opens.
    pub round_2: bool,
    /// How long round 1 lasts, seconds.
    pub round_1_s: u64,
    /// This many rounds after round 1 (ids 2, 3, ...; one envelope each), a second long each,
    /// back to back from round 1's end (not with `round_2`).
    pub short_rounds_after: u32,
}

impl Default for WorldSettings {
    fn default() -> Self {
        Self {
            envelopes: 50,
            edge_limits: "",
            overload_control: true,
            round_opens_in_ms: 0,
            round_2: false,
            round_1_s: 600,
            short_rounds_after: 0,
        }
    }
}

/// An allocator and an edge with round 1 open (or about to open); torn down on drop.
// Fields drop in order: the processes before their directory.
#[derive(Debug)]
pub struct World {
    /// The edge.
    pub edge: Edge,
    /// The allocator, while it runs.
    allocator: Option<Allocator>,
    /// Where the allocator listens, again after a restart (the edge knows only this address).
    allocator_addr: SocketAddr,
    /// Round 1's pools.
    pools: String,
    /// Certificates, configurations and the allocator's ledger ([`Scratch::ledger`]).
    pub scratch: Scratch,
}

impl World {
    /// Starts the allocator, then the edge, and waits until both edge workers have heard
    /// round 1 from the allocator.
    pub async fn start(settings: WorldSettings) -> Self {
        Self::start_with_env(settings, &[]).await
    }

    /// As [`World::start`], with extra environment variables for the edge process.
    pub async fn start_with_env(settings: WorldSettings, env: &[(&str, &str)]) -> Self {
        let mut scratch = Scratch::new("edge-test");
        if settings.round_opens_in_ms > 0 {
            scratch.open_round_in(settings.round_opens_in_ms);
        }
        scratch.round_1_lasts(settings.round_1_s);
        let mut pools = format!(
            "release = \"immediate\"\n[rounds.cash]\ntotal_cents = {}\nenvelopes = {}\n",
            settings.envelopes * 100,
            settings.envelopes,
        );
        if settings.round_2 {
            // After round 1's pools, a table of its own.
            let starts_at_ms = scratch.round_start_ms() + 3_600_000;
            pools += &format!(
                "[[rounds]]\nid = 2\nstarts_at_ms = {starts_at_ms}\nduration_s = 60\nseed = 8\n\
                 [rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n"
            );
        }
        for n in 0..u64::from(settings.short_rounds_after) {
            let starts_at_ms = scratch.round_1_end_ms() + n * 1_000;
            pools += &format!(
                "[[rounds]]\nid = {}\nstarts_at_ms = {starts_at_ms}\nduration_s = 1\nseed = {}\n\
                 [rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n",
                n + 2,
                n + 8
            );
        }
        let config = scratch.fjall_config(ANY_PORT, QUOTA, &pools);
        let allocator = off_the_runtime(move || Allocator::start(&config)).await;
        let overload =
            if settings.overload_control { "" } else { "\n[overload]\nenabled = false\n" };
        let limits = format!("{}{overload}", settings.edge_limits);
        let mut edge = Edge::command(&scratch.edge_config(allocator.quic, &limits));
        let log = std::env::var("SHAKE_EDGE_LOG").unwrap_or_else(|_| "warn".into());
        edge.env("RUST_LOG", log).envs(env.iter().copied()).stderr(Stdio::inherit());
        let edge =
            off_the_runtime(move || Edge::spawn(edge)).await.unwrap_or_else(|e| panic!("{e:#}"));
        let world = Self {
            edge,
            allocator_addr: allocator.quic,
            allocator: Some(allocator),
            pools,
            scratch,
        };
        world.wait_for_metric("shake_edge_allocator_up", 1.0).await;
        // Both workers have heard every round from the allocator (the counter is the edge's
        // whole: one worker's link alone counts as many as the rounds).
        let rounds = 1 + u32::from(settings.round_2) + settings.short_rounds_after;
        world.wait_for_metric("shake_edge_round_states_total", 2.0 * f64::from(rounds)).await;
        world
    }

    /// A metric of the edge.
    pub fn metric(&self, prefix: &str) -> f64 {
        metrics::read(self.edge.metrics, prefix)
    }

    /// The edge's samples starting with `prefix`, summed: 0 while there is none (a labelled
    /// family, or a series of it, that may not exist yet).
    pub fn metric_family(&self, prefix: &str) -> f64 {
        metrics::read_family(self.edge.metrics, prefix)
    }

    /// The edge's metrics, as text.
    pub fn scrape(&self) -> String {
        metrics::scrape(self.edge.metrics)
    }

    /// A metric of the running allocator.
    pub fn allocator_metric(&self, prefix: &str) -> f64 {
        metrics::read(self.allocator_metrics(), prefix)
    }

    /// Waits until the edge's metric `prefix` reaches `at_least`.
    pub async fn wait_for_metric(&self, prefix: &str, at_least: f64) {
        let wanted = format!("at least {at_least}");
        metrics::wait_until(self.edge.metrics, prefix, &wanted, |v| v >= at_least).await;
    }

    /// Waits until the edge's metric `prefix` falls below `below`.
    pub async fn wait_for_metric_below(&self, prefix: &str, below: f64) {
        let wanted = format!("below {below}");
        metrics::wait_until(self.edge.metrics, prefix, &wanted, |v| v < below).await;
    }

    /// Waits until the allocator's metric `prefix` reaches `at_least`.
    pub async fn wait_for_allocator_metric(&self, prefix: &str, at_least: f64) {
        let wanted = format!("at least {at_least}");
        metrics::wait_until(self.allocator_metrics(), prefix, &wanted, |v| v >= at_least).await;
    }

    fn allocator_metrics(&self) -> SocketAddr {
        self.allocator.as_ref().expect("the allocator is running").metrics
    }

    /// Sends signal `name` to the allocator, while it runs.
    pub fn signal_allocator(&self, name: &str) {
        if let Some(allocator) = &self.allocator {
            allocator.process.signal(name);
        }
    }

    /// Stops the allocator at once (SIGINT) and waits for it to exit.
    pub async fn stop_allocator(&mut self) {
        if let Some(mut allocator) = self.allocator.take() {
            let status = off_the_runtime(move || {
                allocator.process.signal("INT");
                allocator.process.wait()
            })
            .await;
            assert!(status.success(), "the allocator stopped with {status}");
        }
    }

    /// Starts the allocator again on the same address, over the same ledger.
    pub async fn restart_allocator(&mut self) {
        self.restart_allocator_with("").await;
    }

    /// [`World::restart_allocator`] with `round_lines` added to round 1 (settings of the round
    /// itself, such as `min_shake_interval_ms = 2500`): its configuration file is written again
    /// and the process started on it.
    pub async fn restart_allocator_with(&mut self, round_lines: &str) {
        assert!(self.allocator.is_none(), "the allocator is still running");
        let round = format!("{round_lines}\n{}", self.pools);
        let config = self.scratch.fjall_config(self.allocator_addr, QUOTA, &round);
        self.allocator = Some(off_the_runtime(move || Allocator::start(&config)).await);
    }
}

/// Runs `f`, which waits for a process, on a thread of its own: the test's phones share the
/// runtime and must go on being served meanwhile.
async fn off_the_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a thread waiting for a process")
}
