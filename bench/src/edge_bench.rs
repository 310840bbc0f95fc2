//! `scripts/bench.sh edge`: the real edge (with a real allocator) under a phone load, and
//! beside it, in the same run and under the same load, the references it is measured
//! against: a bare quinn datagram echo and the naive stream-per-shake design (both with the
//! edge's TLS and transport settings), and the UDP floor. Every server runs on one pinned
//! core; the load runs on another. The figure that compares them is server CPU time per
//! message, read over a steady-state window.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use shake_testkit::fixture::{Fixture, FixtureOptions};

use crate::floor::{self, FloorFigures};
use crate::loadgen::{self, LoadPlan};
use crate::quinn_echo::{self, EchoMode, EchoServer};
use crate::stats::ratio;
use crate::window::{LoadSide, Measured, Sample, Window};
use crate::{procfs, sys};
use shake_swarm::loop_phones::{LoadCounters, LoopLoad, LoopLoadPlan, LoopLoadReport, Speech};
use shake_swarm::{self as swarm, scenario::Scenario};

/// The load and the cores.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Phones (connections).
    pub phones: usize,
    /// Shakes (messages) per second per phone.
    pub rate_per_phone: f64,
    /// Connections opened per second.
    pub connect_rate: f64,
    /// Seconds between the last connection and the window.
    pub warmup_s: f64,
    /// Window length, seconds.
    pub measure_s: f64,
    /// Core the server under test runs on.
    pub server_core: usize,
    /// Core the load (and the allocator) run on.
    pub client_core: usize,
    /// Edge configuration lines to set, `key = value`, over the benchmark's own.
    pub edge_set: Vec<String>,
}

/// `--edge-set` lines as the fixture's overrides: (the line's prefix up to the key, the line).
pub fn overrides(lines: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    lines
        .iter()
        .map(|line| match line.split_once('=') {
            Some((key, _)) if !key.trim().is_empty() => {
                Ok((format!("{} ", key.trim()), line.trim().to_owned()))
            }
            _ => anyhow::bail!("--edge-set wants `key = value`, got {line:?}"),
        })
        .collect()
}

impl LoadOptions {
    /// The window opens once 99% of the phones are up (a few may be reconnecting at any time).
    fn window(&self) -> Window {
        Window::new(self.phones_needed(), self.warmup_s, self.measure_s)
    }

    /// Phones that must be up for the window to open: 99% of them.
    fn phones_needed(&self) -> u64 {
        (self.phones as u64 * 99).div_ceil(100)
    }

    /// Seconds the load must run for the window to close, with slack.
    fn run_s(&self) -> u64 {
        (self.window().planned_end_s(self.connect_rate) + 4.0).ceil() as u64
    }
}

/// Seconds quinn's load may run beyond [`LoadOptions::run_s`] before its window is given up.
const QUINN_LOAD_EXTRA_SLACK_S: u64 = 30;

/// Target for the edge's CPU per shake over quinn echo's per message (issue 13).
const CPU_RATIO_GOAL: f64 = 0.4;
/// Target for the edge's shakes per busy core over the floor's pairs per busy core.
const RATE_RATIO_GOAL: f64 = 0.5;

/// Client threads (sockets, each its own source address) of the loop load.
pub const LOAD_THREADS: usize = 8;

/// The loop load for `load`: its phones, rate and ramp, evenly phased, with the edge's
/// batch delay.
pub fn loop_plan(load: &LoadOptions) -> LoopLoadPlan {
    LoopLoadPlan {
        phones: load.phones,
        rate_per_phone: load.rate_per_phone,
        connect_rate: load.connect_rate,
        threads: LOAD_THREADS,
        jitter: 0.0,
        batch_delay: Duration::from_micros(shake_edge::config::DEFAULT_BATCH_DELAY_US),
        series_origin_unix_ms: 0,
        path_rtt: Duration::ZERO,
    }
}

/// Starts `load`'s phones on `shake-loop` (pinned to the load core) against `server`, whose
/// certificate `ca` signed, until `end`.
pub fn start_phones(
    server: std::net::SocketAddr,
    ca: &Path,
    speech: &Speech,
    load: &LoadOptions,
    end: std::time::Instant,
) -> anyhow::Result<LoopLoad> {
    start_phones_with(server, ca, speech, loop_plan(load), load, end)
}

/// [`start_phones`] with a plan of the caller's.
pub fn start_phones_with(
    server: std::net::SocketAddr,
    ca: &Path,
    speech: &Speech,
    plan: LoopLoadPlan,
    load: &LoadOptions,
    end: std::time::Instant,
) -> anyhow::Result<LoopLoad> {
    let client = swarm::phone_client_config(ca, load.phones.max(256))?;
    Ok(LoopLoad::start(server, "localhost", &client, speech, plan, Some(load.client_core), end)?)
}

/// Drives `server` with phones on `shake-loop` from the client core until the window closes;
/// `cpu_us` reads the server's CPU time so far.
fn measure_with_loop_load(
    server: std::net::SocketAddr,
    ca: &Path,
    speech: &Speech,
    load: &LoadOptions,
    cpu_us: impl Fn() -> u64,
) -> anyhow::Result<(Measured, LoopLoadReport)> {
    let started = std::time::Instant::now();
    let end = started + Duration::from_secs(load.run_s());
    let running = start_phones(server, ca, speech, load, end)?;
    let mut window = load.window();
    while window.measured().is_none() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
        let c = &running.counters;
        window.feed(Sample {
            t_s: started.elapsed().as_secs_f64(),
            connected: c.connected.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            answered: c.answered.load(Ordering::Relaxed),
            cpu_us: cpu_us(),
            load: LoadSide::of(c),
        });
    }
    let connected = running.counters.connected.load(Ordering::Relaxed);
    let report = running.finish()?;
    let measured = window.measured().with_context(|| {
        format!(
            "the window never closed: {connected} of {} phones up, {} connections lost, \
             sessions ended {:?}",
            load.phones, report.lost, report.ended
        )
    })?;
    Ok((measured, report))
}

/// Honest phones' session tokens for the demo scenario's dev key (which the fixture's edge
/// trusts): phone `i` is user `first_user_id + i`.
pub fn demo_tokens(phones: usize) -> anyhow::Result<Arc<Vec<bytes::Bytes>>> {
    let scenario = Scenario::parse(include_str!("../../swarm/scenarios/demo.toml"))?;
    Ok(Arc::new(swarm::honest_tokens(&scenario, phones)?))
}

/// The user id of [`demo_tokens`]' first phone (phone `i` is this plus `i`).
pub fn demo_first_user_id() -> anyhow::Result<u64> {
    Ok(Scenario::parse(include_str!("../../swarm/scenarios/demo.toml"))?.tokens.first_user_id)
}

/// The edge, with a real allocator, under the load.
pub fn measure_edge(load: &LoadOptions) -> anyhow::Result<Measured> {
    let run_s = load.run_s();
    let fixture = Fixture::start(&FixtureOptions {
        name: "shake-bench-edge".into(),
        round_opens_in_s: 1,
        round_s: run_s + 30,
        workers: 1,
        server_core: load.server_core,
        client_core: load.client_core,
        pin: sys::pin_process,
        edge_overrides: std::iter::once(shake_testkit::fixture::no_overload_control())
            .chain(overrides(&load.edge_set)?)
            .collect(),
        start_spread_ms: 0,
    })?;
    let pid = fixture.edge_pid();
    let speech = Speech::Shake { tokens: demo_tokens(load.phones)?, record: None };
    let measured = measure_with_loop_load(fixture.edge_addr, &fixture.ca, &speech, load, || {
        procfs::process_cpu_us(pid).unwrap_or(0)
    });
    fixture.stop();
    Ok(measured.context("the edge")?.0)
}

/// One of the references under the same load: the datagram echoes through the loop load,
/// the stream-per-message design through quinn's (the loop load speaks datagrams only).
pub fn measure_echo(mode: EchoMode, load: &LoadOptions) -> anyhow::Result<Measured> {
    let dir = std::env::temp_dir().join(format!("shake-bench-echo-{}", std::process::id()));
    shake_allocator::dev_certs::generate(&dir, &[1])?;
    let chain = shake_ops::tls::load_certs(&dir.join("allocator.pem"))?;
    let key = shake_ops::tls::load_key(&dir.join("allocator.key"))?;
    let server =
        EchoServer::start(mode, quinn_echo::server_config(mode, chain, key)?, load.server_core)?;
    let measured = if mode == EchoMode::StreamPerMessage {
        measure_with_quinn_load(&server, &dir.join("ca.pem"), mode, load)
    } else {
        measure_with_loop_load(server.addr, &dir.join("ca.pem"), &Speech::Echo, load, || {
            server.cpu_us()
        })
        .map(|(measured, _)| measured)
    };
    server.stop();
    let _ = std::fs::remove_dir_all(&dir);
    measured.with_context(|| format!("{mode:?}"))
}

/// quinn's own load (a task per connection) against an echo server.
fn measure_with_quinn_load(
    server: &EchoServer,
    ca: &Path,
    mode: EchoMode,
    load: &LoadOptions,
) -> anyhow::Result<Measured> {
    let client = swarm::phone_client_config(ca, 256)?;
    let plan = LoadPlan {
        connections: load.phones,
        rate_per_connection: load.rate_per_phone,
        connect_rate: load.connect_rate,
        endpoints: 8,
    };
    let counters = Arc::new(LoadCounters::default());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut window = load.window();
    let addr = server.addr;
    runtime.block_on(async {
        let started = tokio::time::Instant::now();
        // quinn's load ramps up on one core beside the messages of the phones already up. On
        // a slow hour (night of 2026-12-04) this row's window did not close in three runs in a
        // row, the message then too thin to say how far the load had got; a ramp fallen more
        // than run_s's 4 s behind is the likely cause. More slack costs nothing when the ramp
        // keeps up: the loop below ends as soon as the window closes.
        let end = started + Duration::from_secs(load.run_s() + QUINN_LOAD_EXTRA_SLACK_S);
        let driver = tokio::spawn(loadgen::run(addr, client, mode, plan, counters.clone(), end));
        while window.measured().is_none() && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(250)).await;
            window.feed(Sample {
                t_s: started.elapsed().as_secs_f64(),
                connected: counters.connected.load(Ordering::Relaxed),
                sent: counters.sent.load(Ordering::Relaxed),
                answered: counters.answered.load(Ordering::Relaxed),
                cpu_us: server.cpu_us(),
                load: LoadSide::of(&counters),
            });
        }
        driver.abort();
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    let failed = counters.failed.load(Ordering::Relaxed);
    match window.measured() {
        Some(measured) => Ok(measured),
        None => bail!(
            "the window never closed in {} s: {} of {} connections up ({} needed), {failed} \
             failed, {} messages sent, {} answered",
            load.run_s() + QUINN_LOAD_EXTRA_SLACK_S,
            counters.connected.load(Ordering::Relaxed),
            load.phones,
            load.phones_needed(),
            counters.sent.load(Ordering::Relaxed),
            counters.answered.load(Ordering::Relaxed),
        ),
    }
}

/// Everything `scripts/bench.sh edge` measures.
#[derive(Debug, Clone, Copy)]
pub struct EdgeFigures {
    /// The edge.
    pub edge: Measured,
    /// Bare quinn datagram echo.
    pub quinn_echo: Measured,
    /// The same echo on `shake-loop`.
    pub loop_echo: Measured,
    /// One stream per shake.
    pub naive_stream: Measured,
    /// The UDP floor.
    pub floor: FloorFigures,
}

impl EdgeFigures {
    /// Edge CPU per shake over quinn echo CPU per message (goal: at most [`CPU_RATIO_GOAL`]).
    pub fn cpu_ratio_vs_quinn_echo(&self) -> f64 {
        ratio(self.edge.cpu_us_per_message(), self.quinn_echo.cpu_us_per_message())
    }

    /// The loop's echo CPU per message over quinn's.
    pub fn loop_ratio_vs_quinn_echo(&self) -> f64 {
        ratio(self.loop_echo.cpu_us_per_message(), self.quinn_echo.cpu_us_per_message())
    }

    /// Edge shakes per busy core over floor pairs per busy core (goal: at least 0.5).
    pub fn rate_ratio_vs_floor(&self) -> f64 {
        ratio(self.edge.max_per_busy_core(), self.floor.max_pairs_per_s())
    }

    /// The rows the ratios are made of answered nearly every message in their windows, else
    /// the run measured nothing worth a figure.
    pub fn check_answered(&self) -> anyhow::Result<()> {
        for (name, m) in [
            ("the edge", &self.edge),
            ("quinn's echo", &self.quinn_echo),
            ("the loop's echo", &self.loop_echo),
        ] {
            anyhow::ensure!(
                m.answered > 0 && m.answered_share() >= MIN_ANSWERED_SHARE,
                "{name} answered {} of {} messages in its window ({:.1}%): its CPU per message \
                 would mean nothing",
                m.answered,
                m.sent,
                m.answered_share() * 100.0
            );
        }
        anyhow::ensure!(self.floor.pairs > 0, "the UDP floor answered nothing");
        Ok(())
    }
}

/// Runs the four measurements in turn.
pub fn run(load: &LoadOptions) -> anyhow::Result<EdgeFigures> {
    sys::pin_process(std::process::id(), load.client_core)?;
    let floor = floor::run(load.server_core, load.client_core, Duration::from_secs(3), 256)?;
    let edge = measure_edge(load)?;
    let quinn_echo = measure_echo(EchoMode::Datagram, load)?;
    let loop_echo = measure_echo(EchoMode::LoopDatagram, load)?;
    let naive_stream = measure_echo(EchoMode::StreamPerMessage, load)?;
    let figures = EdgeFigures { edge, quinn_echo, loop_echo, naive_stream, floor };
    figures.check_answered()?;
    Ok(figures)
}

/// The least share of its messages a row must answer for its CPU per message to mean
/// anything (a server that answered nothing costs "0 us" a message).
pub const MIN_ANSWERED_SHARE: f64 = 0.9;

/// The readable table and the JSON figures of an `edge` run.
pub fn table_and_figures(
    f: &EdgeFigures,
    load: &LoadOptions,
) -> (String, serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    let row = |name: &str, m: &Measured| {
        let counted = m.load.datagrams_out > 0;
        let per = |x: f64| if counted { format!("{x:.2}") } else { "-".into() };
        format!(
            "{name:<30}{:>12.0}{:>10.1}%{:>9.0}%{:>11.2}{:>14.0}{:>9}{:>9}{:>10}",
            m.answered_per_s(),
            m.answered_share() * 100.0,
            m.busy() * 100.0,
            m.cpu_us_per_message(),
            m.max_per_busy_core(),
            per(m.datagrams_in_per_message()),
            per(m.datagrams_out_per_message()),
            if counted { format!("{:.0}%", m.load_busy() * 100.0) } else { "-".into() },
        )
    };
    let mut table = format!(
        "edge: {} phones x {}/s, server on core {}, load on core {}; window {} s\n",
        load.phones, load.rate_per_phone, load.server_core, load.client_core, load.measure_s
    );
    table += &format!(
        "{:<30}{:>12}{:>11}{:>10}{:>11}{:>14}{:>9}{:>9}{:>10}\n",
        "server",
        "answered/s",
        "answered",
        "busy",
        "CPU us/msg",
        "max/s/core",
        "dgr in",
        "dgr out",
        "load busy"
    );
    table += &"-".repeat(116);
    table.push('\n');
    for (name, m) in [
        ("shake-edge (+ allocator)", &f.edge),
        ("quinn datagram echo", &f.quinn_echo),
        ("shake-loop datagram echo", &f.loop_echo),
        ("naive: stream per shake", &f.naive_stream),
    ] {
        table += &row(name, m);
        table.push('\n');
    }
    table += &format!(
        "{:<30}{:>12.0}{:>11}{:>9.0}%{:>11.2}{:>14.0}\n",
        "UDP floor (recvmmsg/sendmmsg)",
        f.floor.pairs_per_s(),
        "",
        f.floor.server_busy() * 100.0,
        f.floor.cpu_us_per_pair(),
        f.floor.max_pairs_per_s()
    );
    table += "dgr in/out: UDP datagrams the server received/sent per answered message, counted \
              by the loop load (the stream row's load is quinn's, which does not count them)\n";
    table += &format!(
        "cpu_ratio_vs_quinn_echo {:.2} (goal <= {CPU_RATIO_GOAL}), rate_ratio_vs_floor {:.3} \
         (goal >= {RATE_RATIO_GOAL})\n",
        f.cpu_ratio_vs_quinn_echo(),
        f.rate_ratio_vs_floor()
    );
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let value = json!({
        "phones": load.phones,
        "rate_per_phone": load.rate_per_phone,
        "window_s": load.measure_s,
        "edge_cpu_us_per_shake": round2(f.edge.cpu_us_per_message()),
        "quinn_echo_cpu_us_per_msg": round2(f.quinn_echo.cpu_us_per_message()),
        "loop_echo_cpu_us_per_msg": round2(f.loop_echo.cpu_us_per_message()),
        "loop_echo_max_msgs_per_s": f.loop_echo.max_per_busy_core().round(),
        "loop_echo_ratio_vs_quinn_echo": round2(f.loop_ratio_vs_quinn_echo()),
        "naive_stream_cpu_us_per_msg": round2(f.naive_stream.cpu_us_per_message()),
        "floor_cpu_us_per_pair": round2(f.floor.cpu_us_per_pair()),
        "edge_max_shakes_per_s": f.edge.max_per_busy_core().round(),
        "quinn_echo_max_msgs_per_s": f.quinn_echo.max_per_busy_core().round(),
        "naive_stream_max_msgs_per_s": f.naive_stream.max_per_busy_core().round(),
        "floor_max_pairs_per_s": f.floor.max_pairs_per_s().round(),
        "edge_answered_per_s": f.edge.answered_per_s().round(),
        "edge_answered_share": round2(f.edge.answered_share()),
        "edge_busy": round2(f.edge.busy()),
        "floor_pairs_per_s": f.floor.pairs_per_s().round(),
        "cpu_ratio_vs_quinn_echo": round2(f.cpu_ratio_vs_quinn_echo()),
        "rate_ratio_vs_floor": (f.rate_ratio_vs_floor() * 1000.0).round() / 1000.0,
        "edge_datagrams_in_per_shake": round2(f.edge.datagrams_in_per_message()),
        "edge_datagrams_out_per_shake": round2(f.edge.datagrams_out_per_message()),
        "quinn_echo_datagrams_in_per_msg": round2(f.quinn_echo.datagrams_in_per_message()),
        "loop_echo_datagrams_in_per_msg": round2(f.loop_echo.datagrams_in_per_message()),
        "load_busy_edge": round2(f.edge.load_busy()),
        "load": "shake-loop phones (shake-client sessions); quinn tasks for the stream row",
        "goals_met": f.cpu_ratio_vs_quinn_echo() <= CPU_RATIO_GOAL
            && f.rate_ratio_vs_floor() >= RATE_RATIO_GOAL,
    });
    (table, value.as_object().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(answered: u64, cpu_us: u64) -> Measured {
        Measured { seconds: 10.0, sent: answered, answered, cpu_us, load: Default::default() }
    }

    #[test]
    fn ratios_compare_cpu_per_message_and_rate_per_busy_core() {
        let figures = EdgeFigures {
            edge: measured(100_000, 1_000_000),       // 10 us per shake
            quinn_echo: measured(100_000, 2_000_000), // 20 us per message
            loop_echo: measured(100_000, 1_500_000),
            naive_stream: measured(100_000, 8_000_000),
            floor: FloorFigures { pairs: 1_000_000, seconds: 1.0, server_cpu_us: 2_000_000 }, // 2 us
        };
        assert_eq!(figures.cpu_ratio_vs_quinn_echo(), 0.5);
        assert_eq!(figures.rate_ratio_vs_floor(), 0.2); // 100 k/s against 500 k/s
        let load = LoadOptions {
            phones: 10,
            rate_per_phone: 1.0,
            connect_rate: 10.0,
            warmup_s: 0.0,
            measure_s: 10.0,
            server_core: 1,
            client_core: 0,
            edge_set: Vec::new(),
        };
        let (table, json) = table_and_figures(&figures, &load);
        assert!(table.contains("quinn datagram echo"), "{table}");
        assert_eq!(json["edge_cpu_us_per_shake"], 10.0);
        assert_eq!(json["floor_max_pairs_per_s"], 500_000.0);
        assert_eq!(json["cpu_ratio_vs_quinn_echo"], 0.5);
        assert_eq!(json["loop_echo_ratio_vs_quinn_echo"], 0.75);
        assert!(table.contains("shake-loop datagram echo"), "{table}");
        assert_eq!(json["goals_met"], false);
        assert!(figures.check_answered().is_ok());
        // A reference that answered nothing costs "0 us" a message, which would meet the goal.
        let silent = EdgeFigures { quinn_echo: measured(0, 2_000_000), ..figures };
        assert!(silent.check_answered().unwrap_err().to_string().contains("quinn's echo"));
        let lossy = EdgeFigures {
            edge: Measured { sent: 200_000, ..measured(100_000, 1_000_000) },
            ..figures
        };
        assert!(lossy.check_answered().is_err());
    }

    #[test]
    fn edge_set_lines_replace_the_line_of_their_key_and_bad_ones_are_refused() {
        let lines = vec!["batch_delay_us = 400".to_owned(), " workers=2 ".to_owned()];
        assert_eq!(
            overrides(&lines).unwrap(),
            vec![
                ("batch_delay_us ".to_owned(), "batch_delay_us = 400".to_owned()),
                ("workers ".to_owned(), "workers=2".to_owned()),
            ]
        );
        assert!(overrides(&["batch_delay_us 400".to_owned()]).is_err());
        assert!(overrides(&[" = 4".to_owned()]).is_err());
    }

    #[test]
    fn the_loop_load_is_a_steady_even_load_with_the_edges_batch_delay() {
        let load = LoadOptions {
            phones: 10_000,
            rate_per_phone: 2.0,
            connect_rate: 1_000.0,
            warmup_s: 2.0,
            measure_s: 10.0,
            server_core: 1,
            client_core: 0,
            edge_set: Vec::new(),
        };
        let plan = loop_plan(&load);
        assert_eq!((plan.phones, plan.rate_per_phone, plan.connect_rate), (10_000, 2.0, 1_000.0));
        assert_eq!((plan.jitter, plan.threads), (0.0, LOAD_THREADS));
        let delay = Duration::from_micros(shake_edge::config::DEFAULT_BATCH_DELAY_US);
        assert_eq!(plan.batch_delay, delay);
        assert_eq!(load.run_s(), 26);
    }
}
