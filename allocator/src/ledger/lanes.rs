//! Commit lanes: several sessions of one ledger writing group commits at once, committing them
//! strictly in the order they were handed over.
//!
//! On PostgreSQL a group's commit waits for its fsync and for a synchronous standby, and its
//! `COPY` keeps one server process busy: with one session the allocator's group N+1 waits for
//! all of that. With two lanes, lane B writes group N+1 while lane A's commit of group N waits,
//! and the server works on both groups at once. Order still holds, because a lane commits only
//! when the group before its own has committed (its [`Turn`]), and it reports before it passes
//! the turn on: reports arrive in group order, and rows become visible in group order, which
//! the standbys following the log rely on (award ids grow with the group).
//!
//! Invariants: at most one group per lane is in flight (a lane takes its next group only after
//! it reported the last one); reports come in group order; after a failed group, every later
//! group is rolled back ([`Turn::Abandon`]) and reported as failed, so nothing commits after a
//! gap. A lane whose thread panics abandons every group still waiting (no turn would come).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{CommitGroup, LedgerError, LedgerStore};

/// What a group written and waiting to commit does next (see
/// [`LedgerStore::commit_group_in_turn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Every group before it has committed: commit.
    Go,
    /// The group before it is still committing: ask again.
    Wait,
    /// A group before it failed: roll back (its outcome must not follow a gap).
    Abandon,
}

/// How often a group waiting its turn asks again (and touches its transaction): well inside
/// PostgreSQL's idle-in-transaction timeout
/// ([`super::postgres::IDLE_IN_TRANSACTION_MS`]).
pub const TURN_POLL: Duration = Duration::from_millis(250);

/// Called by a lane with each group's outcome, in group order, before the next group may
/// commit; it may use the lane's store (to serve reads queued behind the group).
pub type Report<T> =
    dyn Fn(CommitGroup, T, Result<(), LedgerError>, &mut dyn LedgerStore) + Send + Sync;

#[derive(Debug, Default)]
struct Order {
    /// The sequence number of the group allowed to commit now (every group before it has
    /// reported).
    next: u64,
    /// Groups whose write is done (they wait for their turn, or have reported): writes end
    /// in order, because a group is handed over only once the one before it has written.
    written: u64,
    /// A group failed: every later one is abandoned.
    failed: bool,
    /// A lane's thread died (a panic): its group will never report, so no turn comes in
    /// order any more; every waiting group is abandoned at once.
    lane_died: bool,
}

/// Marks the lanes' order when its lane's thread unwinds, so the other lanes and the
/// dispatcher stop waiting for a turn that would never come.
struct DeathNotice<'a>(&'a Shared);

impl Drop for DeathNotice<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut now = lock(&self.0.0);
            now.failed = true;
            now.lane_died = true;
            self.0.1.notify_all();
        }
    }
}

type Shared = (Mutex<Order>, Condvar);

fn lock(order: &Mutex<Order>) -> MutexGuard<'_, Order> {
    order.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The lanes of one leader's term. Dropping it (or [`CommitLanes::finish`]) lets every group
/// handed over finish first.
pub struct CommitLanes<T: Send + 'static> {
    lanes: Vec<SyncSender<(u64, CommitGroup, T)>>,
    threads: Vec<JoinHandle<()>>,
    order: Arc<Shared>,
    handed: u64,
}

impl<T: Send + 'static> std::fmt::Debug for CommitLanes<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitLanes").field("lanes", &self.lanes.len()).finish_non_exhaustive()
    }
}

impl<T: Send + 'static> CommitLanes<T> {
    /// One lane per store, each on a thread of its own named `ledger-lane-N`.
    pub fn start(
        stores: Vec<Box<dyn LedgerStore>>,
        report: &Arc<Report<T>>,
    ) -> std::io::Result<Self> {
        let order: Arc<Shared> = Arc::new((Mutex::new(Order::default()), Condvar::new()));
        let mut lanes = Vec::with_capacity(stores.len());
        let mut threads = Vec::with_capacity(stores.len());
        for (index, store) in stores.into_iter().enumerate() {
            // A rendezvous: the hand-over blocks until the lane is free.
            let (tx, rx) = sync_channel(0);
            let (order, report) = (order.clone(), report.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ledger-lane-{index}"))
                    .spawn(move || run_lane(store, rx, &order, &*report))?,
            );
            lanes.push(tx);
        }
        Ok(Self { lanes, threads, order, handed: 0 })
    }

    /// Up to `wanted` lanes on `store`'s ledger: `store` is the first, the others are further
    /// sessions it opens ([`LedgerStore::open_lane`]; a store without them gets one lane).
    pub fn open(
        mut store: Box<dyn LedgerStore>,
        wanted: usize,
        report: &Arc<Report<T>>,
    ) -> Result<Self, LedgerError> {
        let mut stores = Vec::with_capacity(wanted.max(1));
        for _ in 1..wanted {
            match store.open_lane()? {
                Some(lane) => stores.push(lane),
                None => break,
            }
        }
        stores.insert(0, store);
        Self::start(stores, report)
            .map_err(|e| LedgerError::Failed(format!("starting the commit lanes: {e}")))
    }

    /// Waits until the next group can start at once: its lane is free and the group before
    /// it has written its rows (or a group failed). Gather the group after this returns: it
    /// then holds everything that arrived meanwhile, so groups stay as large as the ledger's
    /// pace makes them, which is what keeps a busy ledger efficient. (With one lane this is
    /// the plain group commit: gather while the last group commits.)
    pub fn wait_ready(&self) {
        let (state, changed) = &*self.order;
        let (seq, lanes) = (self.handed, self.lanes.len() as u64);
        let mut now = lock(state);
        let ready = |now: &Order| now.failed || (now.next + lanes > seq && now.written >= seq);
        while !ready(&now) {
            now = changed.wait(now).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Hands a group to the next lane, blocking while that lane is still busy with its last
    /// one. `Err` gives the group back when the lanes are gone.
    pub fn hand_over(
        &mut self,
        mut group: CommitGroup,
        with: T,
    ) -> Result<(), Box<(CommitGroup, T)>> {
        let seq = self.handed;
        group.seq = seq;
        let lane = &self.lanes[(seq % self.lanes.len() as u64) as usize];
        lane.send((seq, group, with)).map_err(|e| Box::new((e.0.1, e.0.2)))?;
        self.handed += 1;
        Ok(())
    }

    /// A group failed: nothing handed over from now on will commit.
    pub fn failed(&self) -> bool {
        lock(&self.order.0).failed
    }

    /// How many lanes there are.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Never: a term has at least one lane.
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Waits for every group handed over; `false` if a lane panicked.
    pub fn finish(mut self) -> bool {
        self.lanes.clear();
        std::mem::take(&mut self.threads).into_iter().all(|t| t.join().is_ok())
    }
}

impl<T: Send + 'static> Drop for CommitLanes<T> {
    fn drop(&mut self) {
        self.lanes.clear();
        for thread in std::mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }
}

fn run_lane<T>(
    mut store: Box<dyn LedgerStore>,
    groups: Receiver<(u64, CommitGroup, T)>,
    order: &Shared,
    report: &Report<T>,
) {
    let (state, changed) = order;
    let _notice = DeathNotice(order);
    for (seq, group, with) in groups {
        let mut turn = |poll: Duration| -> Turn {
            let mut now = lock(state);
            // Asked for its turn: the group's write is done.
            if now.written <= seq {
                now.written = seq + 1;
                changed.notify_all();
            }
            if now.next != seq {
                now = changed
                    .wait_timeout(now, poll)
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0;
            }
            // Even an abandoned group waits for its turn: reports stay in group order.
            match (now.next == seq, now.failed) {
                _ if now.lane_died => Turn::Abandon,
                (false, _) => Turn::Wait,
                (true, false) => Turn::Go,
                (true, true) => Turn::Abandon,
            }
        };
        let result = if group.is_empty() {
            // Nothing to write (reads only): it still waits its turn, so its reads see every
            // group handed over before it.
            wait_turn(&mut turn)
        } else {
            store.commit_group_in_turn(&group, &mut turn)
        };
        let failed = result.is_err();
        // A group can fail before its turn (a refused write): it still reports in its turn.
        let mut now = lock(state);
        while now.next != seq && !now.lane_died {
            now = changed.wait(now).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(now);
        // Report before passing the turn: reports arrive in group order.
        report(group, with, result, &mut *store);
        let mut now = lock(state);
        now.failed |= failed;
        now.written = now.written.max(seq + 1);
        now.next = seq + 1;
        changed.notify_all();
    }
}

/// Waits for the turn with nothing written; `Err` when an earlier group failed.
pub(super) fn wait_turn(turn: &mut dyn FnMut(Duration) -> Turn) -> Result<(), LedgerError> {
    loop {
        match turn(TURN_POLL) {
            Turn::Go => return Ok(()),
            Turn::Wait => {}
            Turn::Abandon => {
                return Err(LedgerError::Failed(
                    "an earlier group failed: this one was not committed".into(),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;
    use crate::award::BatchKey;
    use crate::ledger::{AnsweredBatch, Snapshot};

    /// A store that takes `write` to write a group (lane 0 slower than lane 1, so a lane that
    /// did not wait its turn would commit out of order), then commits by appending the group's
    /// sequence to a shared log; it fails the group whose sequence is `fail`, in its commit or
    /// already in its write (before its turn, as a refused `COPY` does).
    struct Recording {
        write: Duration,
        fail: Option<Fail>,
        log: Arc<Mutex<Vec<u64>>>,
    }

    #[derive(Debug, Clone, Copy)]
    enum Fail {
        Commit(u64),
        Write(u64),
    }

    impl LedgerStore for Recording {
        fn probe(&mut self) -> Result<(), LedgerError> {
            Ok(())
        }
        fn commit_group(&mut self, group: &CommitGroup) -> Result<(), LedgerError> {
            self.commit_group_in_turn(group, &mut |_| Turn::Go)
        }
        fn commit_group_in_turn(
            &mut self,
            group: &CommitGroup,
            turn: &mut dyn FnMut(Duration) -> Turn,
        ) -> Result<(), LedgerError> {
            std::thread::sleep(self.write);
            let seq = group.batches[0].key.seq;
            let refused = || Err(LedgerError::Failed("refused".into()));
            if matches!(self.fail, Some(Fail::Write(s)) if s == seq) {
                return refused();
            }
            wait_turn(turn)?;
            if matches!(self.fail, Some(Fail::Commit(s)) if s == seq) {
                return refused();
            }
            // The place the lanes stamped on it (the group was built with 0): a reader of the
            // ledger follows marks by it, so it must be the commit order.
            self.log.lock().unwrap().push(group.seq);
            Ok(())
        }
        fn snapshot(&mut self) -> Result<Snapshot, LedgerError> {
            Ok(Snapshot::default())
        }
        fn awards(
            &mut self,
            _keep: &mut dyn FnMut(&crate::award::Award) -> bool,
        ) -> Result<Vec<crate::award::Award>, LedgerError> {
            Ok(Vec::new())
        }
        fn stored_answers(&mut self) -> Result<usize, LedgerError> {
            Ok(0)
        }
    }

    fn group(seq: u64) -> CommitGroup {
        let key = BatchKey { edge_id: 1, worker_id: 0, instance_id: 1, seq };
        let batch = AnsweredBatch { key, answer: bytes::Bytes::new(), awards: Vec::new() };
        CommitGroup { batches: vec![batch], ..CommitGroup::default() }
    }

    /// Runs `groups` groups through two lanes; the commit log and the reports (sequence, ok).
    /// A lane stuck waiting for a turn that never comes fails the test instead of hanging it.
    fn run(groups: u64, fail: Option<Fail>) -> (Vec<u64>, Vec<(u64, bool)>) {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(run_lanes(groups, fail)));
        finished.recv_timeout(Duration::from_secs(20)).expect("the lanes deadlocked")
    }

    fn run_lanes(groups: u64, fail: Option<Fail>) -> (Vec<u64>, Vec<(u64, bool)>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let stores: Vec<Box<dyn LedgerStore>> = [Duration::from_millis(15), Duration::ZERO]
            .into_iter()
            .map(|write| Box::new(Recording { write, fail, log: log.clone() }) as _)
            .collect();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = reports.clone();
        let report: Arc<Report<u64>> = Arc::new(move |_, seq, result, _| {
            seen.lock().unwrap().push((seq, result.is_ok()));
        });
        let mut lanes = CommitLanes::start(stores, &report).unwrap();
        assert_eq!(lanes.len(), 2);
        for seq in 0..groups {
            lanes.hand_over(group(seq), seq).unwrap();
        }
        assert!(lanes.finish());
        let log = log.lock().unwrap().clone();
        let reports = reports.lock().unwrap().clone();
        (log, reports)
    }

    #[test]
    fn groups_commit_and_report_in_the_order_handed_over() {
        let (log, reports) = run(12, None);
        assert_eq!(log, (0..12).collect::<Vec<_>>());
        assert_eq!(reports, (0..12).map(|seq| (seq, true)).collect::<Vec<_>>());
    }

    #[test]
    fn a_lane_that_panics_abandons_the_rest_instead_of_hanging() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let log = Arc::new(Mutex::new(Vec::new()));
            let stores: Vec<Box<dyn LedgerStore>> = [Duration::from_millis(15), Duration::ZERO]
                .into_iter()
                .map(|write| Box::new(Recording { write, fail: None, log: log.clone() }) as _)
                .collect();
            let reports = Arc::new(Mutex::new(Vec::new()));
            let seen = reports.clone();
            let report: Arc<Report<u64>> = Arc::new(move |_, seq, result, _| {
                assert_ne!(seq, 4, "a report that panics");
                seen.lock().unwrap().push((seq, result.is_ok()));
            });
            let mut lanes = CommitLanes::start(stores, &report).unwrap();
            let mut handed = 0;
            for seq in 0..12 {
                lanes.wait_ready();
                if lanes.failed() || lanes.hand_over(group(seq), seq).is_err() {
                    break;
                }
                handed += 1;
            }
            let joined = lanes.finish();
            let _ = done.send((handed, joined, reports.lock().unwrap().clone()));
        });
        let (handed, joined, reports) =
            finished.recv_timeout(Duration::from_secs(20)).expect("the lanes hung");
        assert!(!joined, "the panicked lane is reported");
        assert!(handed < 12, "the dispatcher stopped handing over");
        assert_eq!(&reports[..4], &[(0, true), (1, true), (2, true), (3, true)]);
        assert!(reports[4..].iter().all(|(_, ok)| !ok), "nothing after the panic committed");
    }

    #[test]
    fn nothing_commits_after_a_failed_group() {
        // Group 5 runs on the fast lane: refused in its write, it fails before group 4 commits.
        for fail in [Fail::Commit(5), Fail::Write(5)] {
            let (log, reports) = run(12, Some(fail));
            assert_eq!(log, (0..5).collect::<Vec<_>>(), "{fail:?}: nothing after the failed group");
            let expected: Vec<(u64, bool)> = (0..12).map(|seq| (seq, seq < 5)).collect();
            assert_eq!(reports, expected, "{fail:?}: every group reported, in order");
        }
    }
}
