//! The PostgreSQL half of `scripts/bench.sh allocator`: the same answered batches committed to
//! a primary whose commits wait for a synchronous standby (both started here on free loopback
//! ports by `scripts/pg-cluster.sh`, with its settings), with one and with two commit lanes
//! side by side.
//!
//! Two readings. Closed loop, fixed group sizes: the most awards per second each size and
//! lane count makes durable (a group is handed over the moment a lane is free). Open loop,
//! offered rates: batches arrive on a schedule, the committer groups whatever waits (as the
//! allocator's commit thread does) and each batch's wait from arrival to durable is timed;
//! that p99 at an offered 200,000 awards a second is the joint target.
//!
//! Both readings write what the allocator's group commits carry in a show's steady state, not
//! only the new awards: each group also marks delivered the awards of a group committed
//! earlier (phones acknowledged them: new rows of delivery marks), forgets that group's
//! stored answers (the edges confirmed them: an `UPDATE` of rows already written) and records
//! how far each of its edge workers has confirmed ([`FollowUps`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shake_allocator::award::{BatchKey, WorkerKey};
use shake_allocator::ledger::lanes::{CommitLanes, Report};
use shake_allocator::ledger::{
    AnsweredBatch, CommitGroup, LedgerStore, PostgresLedger, WorkerRecord, lease,
};
use shake_benchkit::stats;

/// Batches per group commit measured closed loop.
const GROUP_BATCHES: [usize; 4] = [1, 8, 16, 64];
/// Commit lanes measured, side by side for each reading.
const LANES: [usize; 2] = [1, 2];
/// Awards per second offered open loop.
const OFFERED: [f64; 3] = [100_000.0, 150_000.0, 200_000.0];
/// How long each offered rate runs: long enough that the p99 is not the wait of two or
/// three groups (2.5 s readings of one build ranged 9-130 ms at 100 k offered), short enough
/// that the benchmark's batches last at 200 k awards a second.
const OFFERED_FOR: Duration = Duration::from_secs(5);
/// The commit p99 the PostgreSQL ledger must keep (issue 15), milliseconds.
pub(crate) const P99_TARGET_MS: f64 = 20.0;
/// The awards per second it must make durable (issue 15).
pub(crate) const RATE_TARGET: f64 = 200_000.0;

/// One closed-loop configuration measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closed {
    pub(crate) lanes: usize,
    pub(crate) batches: usize,
    pub(crate) awards: usize,
    pub(crate) awards_per_s: f64,
    pub(crate) commit_p99_ms: f64,
}

/// One offered rate measured open loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offered {
    pub(crate) lanes: usize,
    pub(crate) offered_per_s: f64,
    pub(crate) awards_per_s: f64,
    /// Arrival at the committer to durable, per batch.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// The largest group the committer formed.
    pub(crate) max_group: usize,
}

/// Everything measured on PostgreSQL.
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures {
    pub(crate) closed: Vec<Closed>,
    pub(crate) offered: Vec<Offered>,
}

/// Starts the cluster under `dir`, measures, stops it.
pub(crate) fn measure(answered: &[AnsweredBatch], dir: &Path) -> Result<Figures, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster.sh");
    let free_port = || -> Result<u16, String> {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        Ok(socket.local_addr().map_err(|e| e.to_string())?.port())
    };
    let cluster = |args: &[&str]| -> Result<(), String> {
        let output = std::process::Command::new("bash")
            .arg(&script)
            .args(args)
            // Stopped by the script's watcher if this benchmark is killed before it stops them.
            .env("PG_OWNER_PID", std::process::id().to_string())
            .output()
            .map_err(|e| format!("running pg-cluster.sh: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    };
    let (primary, standby) = (dir.join("pg-primary"), dir.join("pg-standby"));
    let (primary_port, standby_port) = (free_port()?, free_port()?);
    let stop = || {
        for server in [&standby, &primary] {
            let _ = cluster(&["stop", &server.display().to_string(), "immediate"]);
        }
    };
    let measured = (|| {
        cluster(&["primary", &primary.display().to_string(), &primary_port.to_string(), "s1"])?;
        cluster(&[
            "standby",
            &standby.display().to_string(),
            &standby_port.to_string(),
            &primary_port.to_string(),
            "s1",
        ])?;
        let url = format!("host=127.0.0.1 port={primary_port} user=postgres dbname=postgres");
        let mut figures = Figures::default();
        for batches in GROUP_BATCHES {
            for lanes in LANES {
                figures.closed.push(closed(&url, answered, batches, lanes)?);
            }
        }
        for offered_per_s in OFFERED {
            for lanes in LANES {
                figures.offered.push(offered(&url, answered, offered_per_s, lanes)?);
            }
        }
        Ok(figures)
    })();
    stop();
    measured
}

/// Empty tables, a checkpoint (so no reading pays for the one before), the lease; the
/// leading session.
fn leading(url: &str) -> Result<Box<dyn LedgerStore>, String> {
    let mut ledger = PostgresLedger::open(url).map_err(|e| e.to_string())?;
    ledger
        .client()
        .batch_execute(
            "TRUNCATE shake_awards, shake_batches, shake_commits, shake_delivery_marks, \
             shake_workers; \
             CHECKPOINT; \
             UPDATE shake_leader SET expires_at = now()",
        )
        .map_err(|e| e.to_string())?;
    let epoch = lease::try_acquire(
        ledger.client(),
        "bench",
        "-",
        Duration::from_secs(60),
        lease::OwnLease::NeverTook,
    )
    .map_err(|e| e.to_string())?
    .ok_or("the lease is taken")?;
    ledger.lead(lease::Term::new(epoch, "bench"));
    Ok(Box::new(ledger))
}

/// Lanes that record, per group, each of its batches' arrival-to-durable time (ms).
struct TimedLanes {
    lanes: CommitLanes<Vec<Instant>>,
    latencies: Arc<Mutex<Vec<f64>>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl TimedLanes {
    fn start(store: Box<dyn LedgerStore>, lanes_wanted: usize) -> Result<Self, String> {
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let failure = Arc::new(Mutex::new(None::<String>));
        let (seen, failed) = (latencies.clone(), failure.clone());
        let report: Arc<Report<Vec<Instant>>> =
            Arc::new(move |_, arrived, result, _| match result {
                Ok(()) => seen
                    .lock()
                    .unwrap()
                    .extend(arrived.iter().map(|at| at.elapsed().as_secs_f64() * 1000.0)),
                Err(e) => *failed.lock().unwrap() = Some(e.to_string()),
            });
        let lanes = CommitLanes::open(store, lanes_wanted, &report).map_err(|e| e.to_string())?;
        if lanes.len() != lanes_wanted {
            return Err(format!("{} of {lanes_wanted} lanes opened", lanes.len()));
        }
        Ok(Self { lanes, latencies, failure })
    }

    fn hand_over(&mut self, group: CommitGroup, arrived: Vec<Instant>) -> Result<(), String> {
        self.lanes.hand_over(group, arrived).map_err(|_| "the lanes stopped".to_owned())
    }

    /// Waits for every group; the latencies sorted, once all `expected` are in.
    fn finish(self, expected: usize) -> Result<Vec<f64>, String> {
        self.lanes.finish();
        if let Some(why) = self.failure.lock().unwrap().take() {
            return Err(why);
        }
        let mut latencies = std::mem::take(&mut *self.latencies.lock().unwrap());
        if latencies.len() != expected {
            return Err(format!("{} of {expected} committed", latencies.len()));
        }
        latencies.sort_by(f64::total_cmp);
        Ok(latencies)
    }
}

/// The confirmations a group carries for groups committed before it: the delivery marks of
/// their awards, their stored answers to forget and their workers' records, as the allocator
/// writes them once phones and edges confirm. They follow `lag` groups behind (more than the lanes, so that the rows
/// they name are committed: a lane takes a group only once its previous one is durable).
struct FollowUps {
    handed: VecDeque<(Vec<u64>, Vec<BatchKey>)>,
    lag: usize,
    /// Delivery marks handed over so far.
    marked: u64,
    /// Workers recorded so far.
    workers: BTreeSet<(u64, u16)>,
}

impl FollowUps {
    fn behind(lanes: usize) -> Self {
        Self { handed: VecDeque::new(), lag: lanes + 1, marked: 0, workers: BTreeSet::new() }
    }

    /// Fails unless every mark handed over names an award committed, once: a reading whose
    /// marks were lost, or named no award, would not be the show's work.
    fn check(&self, url: &str) -> Result<(), String> {
        let mut client =
            postgres::Client::connect(url, postgres::NoTls).map_err(|e| e.to_string())?;
        let row = client
            .query_one(
                "SELECT count(*) FROM shake_awards WHERE award_id IN \
                 (SELECT unnest(award_ids) FROM shake_delivery_marks)",
                &[],
            )
            .map_err(|e| e.to_string())?;
        let delivered = row.get::<_, i64>(0) as u64;
        if delivered != self.marked {
            return Err(format!(
                "{delivered} awards delivered of {} marks handed over",
                self.marked
            ));
        }
        let row = client
            .query_one("SELECT count(*) FROM shake_workers", &[])
            .map_err(|e| e.to_string())?;
        let recorded = row.get::<_, i64>(0) as usize;
        if recorded == self.workers.len() {
            Ok(())
        } else {
            Err(format!("{recorded} worker records of {} workers confirmed", self.workers.len()))
        }
    }

    /// Adds to `group` the confirmations of the group `lag` before it, and remembers its own.
    fn attach(&mut self, group: &mut CommitGroup) {
        let ids = group.batches.iter().flat_map(|b| b.awards.iter().map(|a| a.award_id));
        let keys = group.batches.iter().map(|b| b.key);
        self.handed.push_back((ids.collect(), keys.collect()));
        if self.handed.len() > self.lag
            && let Some((delivered, forget)) = self.handed.pop_front()
        {
            self.marked += delivered.len() as u64;
            // One record per worker whose batches are confirmed: up to its last one.
            let mut confirmed = BTreeMap::new();
            for key in &forget {
                let seq =
                    confirmed.entry((key.edge_id, key.worker_id, key.instance_id)).or_default();
                *seq = key.seq.max(*seq);
            }
            self.workers.extend(confirmed.keys().map(|(edge, worker, _)| (*edge, *worker)));
            group.workers = confirmed
                .into_iter()
                .map(|((edge_id, worker_id, instance_id), confirmed_seq)| WorkerRecord {
                    worker: WorkerKey { edge_id, worker_id },
                    instance_id,
                    confirmed_seq,
                    retired: Vec::new(),
                })
                .collect();
            group.delivered = delivered;
            group.forget = forget;
        }
    }
}

fn percentile(sorted: &[f64], share: f64) -> f64 {
    sorted[((sorted.len() as f64 * share) as usize).min(sorted.len() - 1)]
}

/// Closed loop: enough groups of `batches` for a p99 (40 to 400, about 2,560 batches), each
/// handed over as soon as a lane is free; the p99 is per group.
fn closed(
    url: &str,
    answered: &[AnsweredBatch],
    batches: usize,
    lanes: usize,
) -> Result<Closed, String> {
    let count = (2_560 / batches).clamp(40, 400);
    let take = (batches * count).min(answered.len());
    let groups: Vec<CommitGroup> = answered[..take]
        .chunks(batches)
        .map(|chunk| CommitGroup { batches: chunk.to_vec(), ..CommitGroup::default() })
        .collect();
    let awards: usize = groups.iter().flat_map(|g| &g.batches).map(|b| b.awards.len()).sum();
    let mut timed = TimedLanes::start(leading(url)?, lanes)?;
    let mut follow_ups = FollowUps::behind(lanes);
    let count = groups.len();
    let started = Instant::now();
    for mut group in groups {
        follow_ups.attach(&mut group);
        // One arrival per group: the p99 is the groups'.
        timed.hand_over(group, vec![Instant::now()])?;
    }
    let latencies = timed.finish(count)?;
    let elapsed = started.elapsed();
    follow_ups.check(url)?;
    Ok(Closed {
        lanes,
        batches,
        awards: awards / count.max(1),
        awards_per_s: stats::per_second(awards as u64, elapsed),
        commit_p99_ms: percentile(&latencies, 0.99),
    })
}

/// Open loop: batches arrive at `offered_per_s` awards a second for [`OFFERED_FOR`]; the
/// committer takes whatever waits into one group (the allocator's default cap, 4,096 batches,
/// is never reached here) and hands it to the next free lane.
fn offered(
    url: &str,
    answered: &[AnsweredBatch],
    offered_per_s: f64,
    lanes: usize,
) -> Result<Offered, String> {
    let per_batch = answered.iter().map(|b| b.awards.len()).sum::<usize>() as f64
        / answered.len().max(1) as f64;
    let interval = Duration::from_secs_f64(per_batch / offered_per_s);
    let count = (OFFERED_FOR.as_secs_f64() / interval.as_secs_f64()) as usize;
    if count > answered.len() {
        return Err(format!(
            "{count} batches wanted for {OFFERED_FOR:?} at {offered_per_s} awards/s, {} drawn",
            answered.len()
        ));
    }
    let mut timed = TimedLanes::start(leading(url)?, lanes)?;
    let (arrive, arrivals) = std::sync::mpsc::sync_channel::<(Instant, AnsweredBatch)>(count);
    let schedule: Vec<AnsweredBatch> = answered[..count].to_vec();
    let started = Instant::now();
    let feeder = std::thread::spawn(move || {
        for (i, batch) in schedule.into_iter().enumerate() {
            let due = started + interval * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // Stamped with when it was due, not when the feeder got to it: a feeder held up
            // (by the same two cores) does not hide the wait it caused.
            if arrive.send((due, batch)).is_err() {
                return;
            }
        }
    });
    let mut follow_ups = FollowUps::behind(lanes);
    let mut max_group = 0;
    let mut awards = 0;
    loop {
        timed.lanes.wait_ready();
        let Ok(first) = arrivals.recv() else { break };
        let mut group = CommitGroup::default();
        let mut arrived = Vec::new();
        let mut next = Some(first);
        while let Some((at, batch)) = next.take() {
            awards += batch.awards.len();
            arrived.push(at);
            group.batches.push(batch);
            next = arrivals.try_recv().ok();
        }
        max_group = max_group.max(group.batches.len());
        follow_ups.attach(&mut group);
        timed.hand_over(group, arrived)?;
    }
    let _ = feeder.join();
    let latencies = timed.finish(count)?;
    let elapsed = started.elapsed();
    follow_ups.check(url)?;
    Ok(Offered {
        lanes,
        offered_per_s,
        awards_per_s: stats::per_second(awards as u64, elapsed),
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        max_group,
    })
}
