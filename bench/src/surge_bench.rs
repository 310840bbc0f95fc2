//! `scripts/bench.sh surge`: the round-open surge. Phones connect and sit idle, then a round
//! opens and every phone wants to shake at once, a multiple of what the edge can answer; the
//! run shows, second by second, whether the edge stays fast for what it answers, paces the
//! phones under its capacity (before the opening, given the capacity this run measures first
//! as `shakes_per_core_s`; or reacting, without it), sheds what it cannot carry and never
//! collapses.
//!
//! How it overloads an edge on two cores without the load generator being the bottleneck:
//! the load generator costs about what the edge does per shake, so on equal cores it cannot
//! offer twice what the edge answers. The edge therefore runs under a CPU quota (a cgroup of
//! its own, `quota_share` of one core enforced every `quota_period_us`), and its capacity is
//! that share of what it answers per busy core (measured first, in the same run, without the
//! quota). The quota's own cost to latency is a stall of up to `period * (1 - share)` each
//! period once the share is spent; the table states it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;
use shake_testkit::fixture::{Fixture, FixtureOptions};

use crate::cpu_quota::CpuQuota;
use crate::edge_bench::{self, LoadOptions};
use crate::procfs;
use shake_swarm::loop_phones::Speech;
use shake_swarm::stats::{Percentiles, ReceivedAward};
use shake_swarm::{report::Report, verify};

/// Shakes per second the capacity is measured at (the edge benchmark's load).
const CALIBRATION_PER_S: f64 = 10_000.0;

/// How to run it.
#[derive(Debug, Clone)]
pub struct SurgeOptions {
    /// Phones.
    pub phones: usize,
    /// New connections per second during the ramp.
    pub connect_rate: f64,
    /// The edge's CPU quota, share of one core.
    pub quota_share: f64,
    /// The quota's enforcement period, microseconds.
    pub quota_period_us: u64,
    /// Shakes offered at the opening over the edge's capacity.
    pub overload: f64,
    /// Seconds the phones sit connected and idle before the round opens.
    pub idle_s: u64,
    /// The round's length, seconds.
    pub surge_s: u64,
    /// Round-trip time of the emulated path between phones and edge.
    pub phone_rtt: Duration,
    /// The round's start spread, milliseconds (0: every phone at the opening, the worst case).
    pub start_spread_ms: u32,
    /// Core of the edge.
    pub server_core: usize,
    /// Core of the load generator and the allocator.
    pub client_core: usize,
    /// Edge configuration lines to set (`key = value`, replacing the example's line of that
    /// key), to try other overload settings.
    pub edge_set: Vec<String>,
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct SurgeSecond {
    /// Start of the second, from the round's opening (negative: before).
    pub t_s: i64,
    /// Shakes the phones sent.
    pub offered: u64,
    /// Outcomes the phones received.
    pub answered: u64,
    /// Datagrams the kernel dropped on the edge's socket.
    pub kernel_drops: u64,
    /// Datagrams the edge dropped before decryption (waited past the limit).
    pub shed: u64,
    /// Shakes the edge answered `SlowDown` for load (waited past the target).
    pub slowed: u64,
    /// Datagrams the edge received.
    pub edge_in: u64,
    /// Datagrams the edge sent.
    pub edge_out: u64,
    /// The shake interval the edge asked for at the end of the second, milliseconds.
    pub pace_ms: u64,
    /// Shake to outcome of the shakes answered in this second, milliseconds.
    pub p50_ms: f64,
    /// The same, 99th percentile.
    pub p99_ms: f64,
    /// Handshakes the edge completed.
    pub handshakes: u64,
    /// Handshakes it refused for load.
    pub handshakes_refused: u64,
    /// Phones whose established connection was lost.
    pub reconnects: u64,
    /// The edge's resident memory at the end of the second, KiB.
    pub edge_rss_kib: u64,
    /// Share of one core the edge used.
    pub edge_cpu: f64,
    /// Share of its core the load generator's core was busy (whatever ran there).
    pub client_core_busy: f64,
}

/// What the run measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SurgeFigures {
    /// Shakes per second one busy core of the edge answers (measured without the quota).
    pub per_busy_core: f64,
    /// The edge's capacity under the quota: the larger of its share of `per_busy_core` and
    /// the most it answered in any second of the run.
    pub capacity_per_s: f64,
    /// Shakes per second the phones were planned to offer at the opening.
    pub planned_per_s: f64,
    /// Every second from `-idle_s` to the round's end.
    pub series: Vec<SurgeSecond>,
    /// Shake to outcome over the round (answered shakes), microseconds.
    pub answered_us: Percentiles,
    /// The same from 2 s after the opening.
    pub answered_after_2s_us: Percentiles,
    /// Sends the load generator made late or skipped.
    pub behind_schedule: u64,
    /// Times the quota throttled the edge, and for how long in all (microseconds), over the
    /// round.
    pub throttled: (u64, u64),
    /// The emulated path's round trip between phones and edge, milliseconds (latencies here
    /// are beyond it).
    pub phone_rtt_ms: f64,
    /// The round's start spread, milliseconds.
    pub start_spread_ms: u32,
    /// The quota.
    pub quota_share: f64,
    /// Its period, microseconds.
    pub quota_period_us: u64,
    /// Awards phones were told of that the ledger does not hold.
    pub awards_lost: u64,
    /// Prizes granted twice (by award id or by prize).
    pub awards_doubled: u64,
    /// Rounds whose cash paid out exceeds the pool.
    pub pools_overspent: u64,
    /// Awards granted in the ledger.
    pub awards_granted: u64,
    /// Phones connected when the quota started, before the opening.
    pub phones_connected: u64,
}

/// Cumulative counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    sent: u64,
    answered: u64,
    lost_active: u64,
    kernel_drops: u64,
    shed: u64,
    slowed: u64,
    edge_in: u64,
    edge_out: u64,
    pace_ms: u64,
    handshakes: u64,
    handshakes_refused: u64,
    rss_kib: u64,
    edge_cpu_us: u64,
    client_core_us: u64,
    at: Option<Instant>,
}

/// The sum of every sample of the metric whose lines start with `prefix`.
fn metric_sum(text: &str, prefix: &str) -> u64 {
    shake_ops::http::metric_sum(text, prefix) as u64
}

/// The largest sample of the metric whose lines start with `prefix`.
pub fn metric_max(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max) as u64
}

fn snapshot(
    fixture: &Fixture,
    load: &shake_swarm::loop_phones::LoadCounters,
    client_core: usize,
) -> Snapshot {
    let text = shake_ops::http::get(fixture.edge_metrics, "/metrics").unwrap_or_default();
    let pid = fixture.edge_pid();
    Snapshot {
        sent: load.sent.load(Ordering::Relaxed),
        answered: load.answered.load(Ordering::Relaxed),
        lost_active: load.lost_active.load(Ordering::Relaxed),
        kernel_drops: metric_sum(&text, "shake_edge_kernel_drops_total"),
        shed: metric_sum(&text, "shake_edge_shed_total{how=\"dropped\"}"),
        slowed: metric_sum(&text, "shake_edge_shed_total{how=\"slow_down\"}"),
        edge_in: metric_sum(&text, "shake_edge_datagrams_total{direction=\"in\"}"),
        edge_out: metric_sum(&text, "shake_edge_datagrams_total{direction=\"out\"}"),
        pace_ms: metric_max(&text, "shake_edge_pace_ms{"),
        handshakes: metric_sum(&text, "shake_edge_handshakes_total{outcome=\"accepted\"}"),
        handshakes_refused: metric_sum(
            &text,
            "shake_edge_handshakes_total{outcome=\"overloaded\"}",
        ),
        rss_kib: procfs::rss_kib(pid).unwrap_or(0),
        edge_cpu_us: procfs::process_cpu_us(pid).unwrap_or(0),
        client_core_us: procfs::core_busy_us(client_core).unwrap_or(0),
        at: Some(Instant::now()),
    }
}

/// Latencies less the emulated path's round trip, which every one of them includes whole.
pub fn beyond(p: Percentiles, rtt_ms: f64) -> Percentiles {
    if p.count == 0 {
        return p;
    }
    let less = |x: f64| (x - rtt_ms).max(0.0);
    Percentiles {
        count: p.count,
        p50: less(p.p50),
        p90: less(p.p90),
        p99: less(p.p99),
        p999: less(p.p999),
        p9999: less(p.p9999),
        max: less(p.max),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Measures the edge's capacity, then runs the surge.
pub fn run(options: &SurgeOptions) -> anyhow::Result<SurgeFigures> {
    crate::sys::pin_process(std::process::id(), options.client_core)?;
    // The edge's cost per shake falls as its load rises (bigger batches, fewer wake-ups):
    // calibrate at the edge benchmark's load, 10,000 shakes a second, whatever the phones.
    let calibration = LoadOptions {
        phones: options.phones,
        rate_per_phone: (CALIBRATION_PER_S / options.phones.max(1) as f64).max(1.0),
        connect_rate: options.connect_rate,
        warmup_s: 2.0,
        measure_s: 5.0,
        server_core: options.server_core,
        client_core: options.client_core,
        edge_set: options.edge_set.clone(),
    };
    let per_busy_core = edge_bench::measure_edge(&calibration)?.max_per_busy_core();
    let capacity = per_busy_core * options.quota_share;
    let planned_per_s = capacity * options.overload;
    let load =
        LoadOptions { rate_per_phone: planned_per_s / options.phones.max(1) as f64, ..calibration };
    let ramp_s = (options.phones as f64 / options.connect_rate).ceil() as u64 + 3;
    let fixture = Fixture::start(&FixtureOptions {
        name: "shake-bench-surge".into(),
        round_opens_in_s: ramp_s + options.idle_s,
        round_s: options.surge_s,
        workers: 1,
        server_core: options.server_core,
        client_core: options.client_core,
        // Phones shake faster than a person would: their own bucket is lifted so what they
        // offer reaches the edge's overload control, which is what is measured.
        pin: crate::sys::pin_process,
        edge_overrides: [
            ("phone_rate_per_s ".into(), "phone_rate_per_s = 1000.0".into()),
            ("phone_burst ".into(), "phone_burst = 1000.0".into()),
            // What an operator measures on the hardware before the show (`scripts/bench.sh
            // edge`); `--edge-set 'shakes_per_core_s = 0.0'` leaves the edge to react only.
            ("shakes_per_core_s ".into(), format!("shakes_per_core_s = {per_busy_core:.0}")),
        ]
        .into_iter()
        .chain(edge_bench::overrides(&options.edge_set)?)
        .collect(),
        start_spread_ms: options.start_spread_ms,
    })?;
    let opens_ms = fixture.round_opens_at_ms;
    let first_ms = opens_ms - options.idle_s * 1000;
    let speech = Speech::Shake { tokens: edge_bench::demo_tokens(options.phones)?, record: None };
    let end = Instant::now()
        + Duration::from_millis((opens_ms + options.surge_s * 1000).saturating_sub(unix_ms()))
        + Duration::from_secs(1);
    let mut plan = edge_bench::loop_plan(&load);
    plan.series_origin_unix_ms = first_ms;
    plan.path_rtt = options.phone_rtt;
    let running =
        edge_bench::start_phones_with(fixture.edge_addr, &fixture.ca, &speech, plan, &load, end)?;
    let seconds = options.idle_s + options.surge_s;
    let mut snaps: Vec<Snapshot> = Vec::with_capacity(seconds as usize + 1);
    let mut throttled_at_open = (0, 0);
    // The phones connect at full speed; the quota starts a second before the idle seconds
    // before the opening (it makes the surge an overload, it is not what the ramp measures;
    // an edge in a container has its quota from the start, and one that paces its phones
    // before the opening reads it then).
    std::thread::sleep(Duration::from_millis((first_ms - 1000).saturating_sub(unix_ms())));
    let connected_before = running.counters.connected.load(Ordering::Relaxed);
    let quota = CpuQuota::apply(
        &format!("shake-surge-{}", std::process::id()),
        fixture.edge_pid(),
        options.quota_share,
        options.quota_period_us,
    )?;
    for k in 0..=seconds {
        let at_ms = first_ms + k * 1000;
        std::thread::sleep(Duration::from_millis(at_ms.saturating_sub(unix_ms())));
        snaps.push(snapshot(&fixture, &running.counters, options.client_core));
        if k == options.idle_s {
            throttled_at_open = quota.throttled();
        }
    }
    let throttled_end = quota.throttled();
    let report = running.finish()?;
    drop(quota);
    let ledger = fixture.stop_and_export()?;

    let rtt_ms = options.phone_rtt.as_secs_f64() * 1000.0;
    let mut series = Vec::with_capacity(seconds as usize);
    for (k, pair) in snaps.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        let span_us = match (a.at, b.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_micros().max(1) as f64,
            _ => 1e6,
        };
        let h = report.outcome_by_s.get(k);
        let p = beyond(h.map(Percentiles::of).unwrap_or_default(), rtt_ms);
        series.push(SurgeSecond {
            t_s: k as i64 - options.idle_s as i64,
            offered: b.sent - a.sent,
            answered: b.answered - a.answered,
            kernel_drops: b.kernel_drops.saturating_sub(a.kernel_drops),
            shed: b.shed.saturating_sub(a.shed),
            slowed: b.slowed.saturating_sub(a.slowed),
            edge_in: b.edge_in.saturating_sub(a.edge_in),
            edge_out: b.edge_out.saturating_sub(a.edge_out),
            pace_ms: b.pace_ms,
            p50_ms: p.p50,
            p99_ms: p.p99,
            handshakes: b.handshakes.saturating_sub(a.handshakes),
            handshakes_refused: b.handshakes_refused.saturating_sub(a.handshakes_refused),
            reconnects: b.lost_active.saturating_sub(a.lost_active),
            edge_rss_kib: b.rss_kib,
            edge_cpu: b.edge_cpu_us.saturating_sub(a.edge_cpu_us) as f64 / span_us,
            client_core_busy: b.client_core_us.saturating_sub(a.client_core_us) as f64 / span_us,
        });
    }
    let merged = |from: usize| {
        let mut h: Histogram<u64> = shake_swarm::stats::histogram();
        for second in
            report.outcome_by_s.iter().skip(from).take((seconds as usize).saturating_sub(from))
        {
            let _ = h.add(second);
        }
        beyond(Percentiles::of(&h), rtt_ms)
    };
    let idle = options.idle_s as usize;
    let answered_peak = series.iter().map(|s| s.answered).max().unwrap_or(0) as f64;

    let first_user_id = edge_bench::demo_first_user_id()?;
    let phones_report = Report {
        awards: report
            .awards
            .iter()
            .map(|(index, award_id, round_id, prize)| {
                ReceivedAward::new(*award_id, first_user_id + *index as u64, *round_id, prize)
            })
            .collect(),
        ..Report::default()
    };
    let rows = verify::parse_export(&ledger.export)?;
    let pools = verify::configured_pools(&ledger.config, &[])?;
    let v = verify::verify(&phones_report, &rows, Some(&ledger.config), Some(&pools));
    Ok(SurgeFigures {
        per_busy_core,
        capacity_per_s: capacity.max(answered_peak),
        planned_per_s,
        series,
        answered_us: merged(idle),
        answered_after_2s_us: merged(idle + 2),
        behind_schedule: report.behind_schedule,
        throttled: (
            throttled_end.0.saturating_sub(throttled_at_open.0),
            throttled_end.1.saturating_sub(throttled_at_open.1),
        ),
        phone_rtt_ms: rtt_ms,
        start_spread_ms: options.start_spread_ms,
        quota_share: options.quota_share,
        quota_period_us: options.quota_period_us,
        awards_lost: v.received_not_in_ledger + v.told_other_prize,
        awards_doubled: v.granted_twice,
        pools_overspent: v.pools_overspent,
        awards_granted: v.awards_granted,
        phones_connected: connected_before,
    })
}

impl SurgeFigures {
    fn round(&self) -> impl Iterator<Item = &SurgeSecond> {
        self.series.iter().filter(|s| s.t_s >= 0)
    }

    /// What the phones would offer unpaced (every phone at its own rate from the opening)
    /// over the capacity: the surge. An edge that paces its phones before the opening keeps
    /// what they actually send ([`Self::offered_peak_factor`]) under its capacity.
    pub fn overload_factor(&self) -> f64 {
        self.planned_per_s / self.capacity_per_s.max(1.0)
    }

    /// The most shakes the phones sent in one second of the round over the capacity.
    pub fn offered_peak_factor(&self) -> f64 {
        let peak = self.round().map(|s| s.offered).max().unwrap_or(0) as f64;
        peak / self.capacity_per_s.max(1.0)
    }

    /// Answers over shakes offered from 2 s after the opening to the end (at most 1).
    pub fn answered_share_after_2s(&self) -> f64 {
        let (offered, answered) = self
            .round()
            .filter(|s| s.t_s >= 2)
            .fold((0, 0), |(o, a), s| (o + s.offered, a + s.answered));
        if offered == 0 { 0.0 } else { (answered as f64 / offered as f64).min(1.0) }
    }

    /// Seconds from the opening until the shakes offered stay under the capacity for the rest
    /// of the round (the round's length if they never do).
    pub fn s_to_under_capacity(&self) -> i64 {
        let round: Vec<&SurgeSecond> = self.round().collect();
        let mut under_from = round.len();
        for (i, s) in round.iter().enumerate().rev() {
            if (s.offered as f64) < self.capacity_per_s {
                under_from = i;
            } else {
                break;
            }
        }
        under_from as i64
    }

    /// Established phones that lost their connection during the round.
    pub fn surge_reconnects(&self) -> u64 {
        self.round().map(|s| s.reconnects).sum()
    }

    /// The edge's largest resident memory in the round over the last before it.
    pub fn rss_growth_ratio(&self) -> f64 {
        let before = self.series.iter().rfind(|s| s.t_s < 0).map(|s| s.edge_rss_kib);
        let peak = self.round().map(|s| s.edge_rss_kib).max();
        match (before, peak) {
            (Some(before), Some(peak)) if before > 0 => peak as f64 / before as f64,
            _ => 0.0,
        }
    }

    /// The load generator's core was saturated in a second of the round, or more than 1% of
    /// its sends were late.
    pub fn client_bound(&self) -> bool {
        let offered: u64 = self.round().map(|s| s.offered).sum();
        self.round().any(|s| s.client_core_busy > 0.95)
            || self.behind_schedule as f64 > 0.01 * offered as f64
    }
}

/// The readable table and the JSON figures.
pub fn table_and_figures(f: &SurgeFigures) -> (String, serde_json::Map<String, serde_json::Value>) {
    let stall_ms = f.quota_period_us as f64 * (1.0 - f.quota_share) / 1000.0;
    let mut table = format!(
        "surge: every phone wants to shake at once from the opening (the planned offer); the edge under a CPU quota of {:.0}% \
         of a core (period {:.1} ms: a stall of up to {stall_ms:.1} ms each period once spent)\n\
         capacity {:.0} shakes/s ({:.0} per busy core, measured first without the quota; or the \
         most answered in a second), planned offer {:.0}/s; phones {:.0} ms away (emulated), \
         latencies beyond that round trip; start spread {} ms; {} phones connected before\n\
         {:>5}{:>10}{:>10}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>9}{:>9}{:>7}{:>8}{:>7}{:>9}{:>7}{:>7}\n{}\n",
        f.quota_share * 100.0,
        f.quota_period_us as f64 / 1000.0,
        f.capacity_per_s,
        f.per_busy_core,
        f.planned_per_s,
        f.phone_rtt_ms,
        f.start_spread_ms,
        f.phones_connected,
        "t s",
        "offered",
        "answered",
        "k.drop",
        "dropped",
        "slowed",
        "dgr in",
        "dgr out",
        "pace",
        "p50 ms",
        "p99 ms",
        "hs",
        "hs ref",
        "recon",
        "rss MiB",
        "edge",
        "load",
        "-".repeat(136)
    );
    for s in &f.series {
        table += &format!(
            "{:>5}{:>10}{:>10}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>9.2}{:>9.2}{:>7}{:>8}{:>7}{:>9.1}{:>6.0}%{:>6.0}%\n",
            s.t_s,
            s.offered,
            s.answered,
            s.kernel_drops,
            s.shed,
            s.slowed,
            s.edge_in,
            s.edge_out,
            s.pace_ms,
            s.p50_ms,
            s.p99_ms,
            s.handshakes,
            s.handshakes_refused,
            s.reconnects,
            s.edge_rss_kib as f64 / 1024.0,
            s.edge_cpu * 100.0,
            s.client_core_busy * 100.0,
        );
    }
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let goals = [
        ("overload >= 2x", f.overload_factor() >= 2.0),
        ("answered after 2 s >= 99%", f.answered_share_after_2s() >= 0.99),
        ("p99 answered <= 10 ms", f.answered_us.p99 <= 10.0),
        ("under capacity within 2 s", f.s_to_under_capacity() <= 2),
        ("no reconnects", f.surge_reconnects() == 0),
        ("edge RSS within 10%", f.rss_growth_ratio() <= 1.1),
        ("no award lost or doubled, no pool overspent", {
            f.awards_lost + f.awards_doubled + f.pools_overspent == 0
        }),
        ("load generator not the bottleneck", !f.client_bound()),
    ];
    table += &format!(
        "overload {:.2}x (peak second sent {:.2}x) | answered after 2 s {:.2}% | p99 answered {:.2} ms (after 2 s {:.2}) | \
         under capacity after {} s | reconnects {} | RSS x{:.3} | awards {} granted, {} lost, \
         {} doubled, {} pools overspent | quota throttled the edge {} times, {:.0} ms in all\n",
        f.overload_factor(),
        f.offered_peak_factor(),
        f.answered_share_after_2s() * 100.0,
        f.answered_us.p99,
        f.answered_after_2s_us.p99,
        f.s_to_under_capacity(),
        f.surge_reconnects(),
        f.rss_growth_ratio(),
        f.awards_granted,
        f.awards_lost,
        f.awards_doubled,
        f.pools_overspent,
        f.throttled.0,
        f.throttled.1 as f64 / 1000.0,
    );
    for (goal, met) in goals {
        table += &format!("  {} {goal}\n", if met { "met   " } else { "MISSED" });
    }
    let mut figures = serde_json::Map::new();
    figures.insert("overload_factor".into(), round2(f.overload_factor()).into());
    figures.insert("offered_peak_factor".into(), round2(f.offered_peak_factor()).into());
    let round4 = |x: f64| (x * 1e4).round() / 1e4;
    figures.insert("answered_share_after_2s".into(), round4(f.answered_share_after_2s()).into());
    figures.insert("p99_answered_ms".into(), round2(f.answered_us.p99).into());
    figures.insert("p50_answered_ms".into(), round2(f.answered_us.p50).into());
    figures.insert("p99_answered_after_2s_ms".into(), round2(f.answered_after_2s_us.p99).into());
    figures.insert("s_to_under_capacity".into(), f.s_to_under_capacity().into());
    figures.insert("surge_reconnects".into(), f.surge_reconnects().into());
    figures.insert("rss_growth_ratio".into(), round4(f.rss_growth_ratio()).into());
    figures.insert("client_bound".into(), f.client_bound().into());
    figures.insert("awards_lost".into(), f.awards_lost.into());
    figures.insert("awards_doubled".into(), f.awards_doubled.into());
    figures.insert("pools_overspent".into(), f.pools_overspent.into());
    figures.insert("awards_granted".into(), f.awards_granted.into());
    figures.insert("capacity_per_s".into(), f.capacity_per_s.round().into());
    figures.insert("quota_share".into(), f.quota_share.into());
    figures.insert("phone_rtt_ms".into(), f.phone_rtt_ms.into());
    figures.insert("start_spread_ms".into(), f.start_spread_ms.into());
    figures.insert("phones_connected".into(), f.phones_connected.into());
    figures.insert("quota_period_ms".into(), (f.quota_period_us as f64 / 1000.0).into());
    figures.insert("kernel_drops".into(), f.round().map(|s| s.kernel_drops).sum::<u64>().into());
    figures.insert("dropped".into(), f.round().map(|s| s.shed).sum::<u64>().into());
    figures.insert("slowed".into(), f.round().map(|s| s.slowed).sum::<u64>().into());
    figures.insert(
        "handshakes_refused".into(),
        f.series.iter().map(|s| s.handshakes_refused).sum::<u64>().into(),
    );
    figures.insert("pace_ms_max".into(), f.round().map(|s| s.pace_ms).max().unwrap_or(0).into());
    figures.insert("goals_met".into(), goals.iter().all(|(_, met)| *met).into());
    (table, figures)
}

/// The series as an SVG: offered and answered against the capacity, what was shed or dropped,
/// the pace, and the p99 of what was answered.
pub fn svg(f: &SurgeFigures) -> String {
    use shake_swarm::plot::{Line, Panel, panels_svg};
    let t0 = f.series.first().map_or(0, |s| s.t_s);
    let x = |s: &SurgeSecond| (s.t_s - t0) as f64 + 0.5;
    let line = |name, colour, value: &dyn Fn(&SurgeSecond) -> f64| Line {
        name,
        colour,
        points: f.series.iter().map(|s| (x(s), value(s))).collect(),
    };
    let capacity = f.capacity_per_s;
    let panels = [
        Panel {
            title: "shakes per second (the round opens at the dashed time)",
            unit: "/s",
            lines: vec![
                line("offered", "#1f77b4", &|s| s.offered as f64),
                line("answered", "#2ca02c", &|s| s.answered as f64),
                line("capacity", "#7f7f7f", &|_| capacity),
            ],
        },
        Panel {
            title: "shed by the edge, dropped by the kernel, handshakes refused, per second",
            unit: "/s",
            lines: vec![
                line("dropped (too old)", "#ff7f0e", &|s| s.shed as f64),
                line("slowed down", "#e377c2", &|s| s.slowed as f64),
                line("kernel drops", "#9467bd", &|s| s.kernel_drops as f64),
                line("handshakes refused", "#8c564b", &|s| s.handshakes_refused as f64),
            ],
        },
        Panel {
            title: "pace the edge asks of its phones",
            unit: "ms",
            lines: vec![line("pace", "#17becf", &|s| s.pace_ms as f64)],
        },
        Panel {
            title: "shake to outcome of answered shakes, per second",
            unit: "ms",
            lines: vec![
                line("p99", "#d62728", &|s| s.p99_ms),
                line("p50", "#2ca02c", &|s| s.p50_ms),
            ],
        },
    ];
    let t_max = f.series.len() as f64;
    // The opening, on every panel.
    let label = format!("seconds; the round opens at {} s", -t0);
    panels_svg(&panels, t_max, &label, &[(-t0) as f64])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(t_s: i64, offered: u64, answered: u64, rss: u64) -> SurgeSecond {
        SurgeSecond {
            t_s,
            offered,
            answered,
            edge_rss_kib: rss,
            p99_ms: 3.0,
            client_core_busy: 0.5,
            ..SurgeSecond::default()
        }
    }

    fn figures(series: Vec<SurgeSecond>) -> SurgeFigures {
        SurgeFigures {
            per_busy_core: 40_000.0,
            capacity_per_s: 10_000.0,
            planned_per_s: 30_000.0,
            series,
            answered_us: Percentiles { count: 10, p50: 1.0, p99: 4.0, ..Percentiles::default() },
            quota_share: 0.25,
            quota_period_us: 5_000,
            ..SurgeFigures::default()
        }
    }

    #[test]
    fn the_surge_figures_read_the_series() {
        let f = figures(vec![
            second(-2, 0, 0, 100_000),
            second(-1, 0, 0, 100_000),
            second(0, 25_000, 10_000, 104_000),
            second(1, 14_000, 10_000, 105_000),
            second(2, 9_000, 8_990, 103_000),
            second(3, 12_000, 9_000, 103_000),
            second(4, 8_000, 8_000, 103_000),
            second(5, 8_000, 8_000, 103_000),
        ]);
        assert_eq!(f.overload_factor(), 3.0, "what the phones would offer unpaced");
        assert_eq!(f.offered_peak_factor(), 2.5, "the most they sent in a second");
        assert_eq!(f.s_to_under_capacity(), 4, "second 3 was over again");
        let share = (8_990.0 + 9_000.0 + 8_000.0 + 8_000.0) / (9_000.0 + 12_000.0 + 16_000.0);
        assert!((f.answered_share_after_2s() - share).abs() < 1e-9);
        assert!((f.rss_growth_ratio() - 1.05).abs() < 1e-9);
        assert!(!f.client_bound());
        let (table, json) = table_and_figures(&f);
        assert_eq!(
            (json["overload_factor"].as_f64(), json["offered_peak_factor"].as_f64()),
            (Some(3.0), Some(2.5))
        );
        assert_eq!(json["s_to_under_capacity"], 4);
        assert_eq!(json["goals_met"], false, "under capacity after 4 s misses the 2 s goal");
        assert!(table.contains("MISSED under capacity within 2 s"), "{table}");
        assert!(table.contains("met    p99 answered <= 10 ms"), "{table}");
        let svg = svg(&f);
        assert_eq!(svg.matches("<polyline").count(), 10, "every line of every panel");
        assert!(svg.contains("stroke-dasharray"), "the opening is marked");
    }

    #[test]
    fn a_saturated_load_core_or_a_late_sender_makes_the_run_client_bound() {
        let mut series = vec![second(-1, 0, 0, 1), second(0, 10_000, 10_000, 1)];
        series[1].client_core_busy = 0.97;
        assert!(figures(series).client_bound());
        let mut late = figures(vec![second(0, 10_000, 10_000, 1)]);
        late.behind_schedule = 200;
        assert!(late.client_bound());
    }

    #[test]
    fn metrics_are_summed_and_maxed_across_workers() {
        let text = "shake_edge_pace_ms{worker=\"0\"} 400\nshake_edge_pace_ms{worker=\"1\"} 900\n\
                    shake_edge_shed_total{how=\"dropped\"} 12\nshake_edge_handshakes_total{outcome=\"accepted\"} 3\n\
                    shake_edge_handshakes_total{outcome=\"overloaded\"} 5\n";
        assert_eq!(metric_max(text, "shake_edge_pace_ms{"), 900);
        assert_eq!(metric_sum(text, "shake_edge_shed_total{how=\"dropped\"}"), 12);
        assert_eq!(metric_sum(text, "shake_edge_handshakes_total{outcome=\"overloaded\"}"), 5);
    }
}
