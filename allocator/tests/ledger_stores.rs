//! One suite, both ledger stores: what the allocator writes in group commits comes back the
//! same from fjall and from PostgreSQL; and what only PostgreSQL promises (fencing by epoch,
//! a batch name and a prize taken once, versioned schema) holds.
//!
//! The PostgreSQL cases start their own server on a free loopback port
//! (`scripts/pg-cluster.sh`, as the `postgres` user when run as root).

use bytes::Bytes;
use shake_allocator::award::{Award, BatchKey, WorkerKey};
use shake_allocator::export::{self, AwardQuery};
use shake_allocator::ledger::lease::Term;
use shake_allocator::ledger::{
    AnsweredBatch, CommitGroup, FjallLedger, LedgerError, LedgerStore, PostgresLedger,
    RetiredInstance, WorkerRecord, lease,
};
use shake_allocator::round_command::{RoundAction, RoundCommand};
use shake_proto::Prize;
use shake_testkit::pg_server::PgServer;
use shake_testkit::scratch::{Scratch, dev_certs};
use std::time::Duration;

const TOP: u64 = (1 << 62) - 1;

fn key(seq: u64) -> BatchKey {
    // The largest ids the protocol carries (QUIC varints: below 2^62) come back exact.
    BatchKey { edge_id: 1, worker_id: 3, instance_id: TOP - 6, seq }
}

fn award(id: u64, seq: u64) -> Award {
    Award {
        award_id: id,
        round_id: 1,
        user_id: if id == 2 { TOP } else { 100 + id },
        item: id as u32,
        prize: if id == 3 {
            Prize::Gift { sku: "TEA-01".into() }
        } else {
            Prize::Cash { cents: 10 * id }
        },
        batch: key(seq),
        entry_index: seq as u32,
        granted_at_ms: 1_767_225_601_000 + id,
        delivered: false,
    }
}

fn batches(seqs: std::ops::RangeInclusive<u64>) -> Vec<AnsweredBatch> {
    seqs.map(|seq| AnsweredBatch {
        key: key(seq),
        answer: Bytes::from(vec![seq as u8; 3]),
        awards: vec![award(seq, seq)],
    })
    .collect()
}

fn commands() -> Vec<RoundCommand> {
    let command = |id: &str, action, at_ms| RoundCommand {
        command_id: id.into(),
        round_id: 1,
        action,
        issued_by: "director".into(),
        at_ms,
    };
    vec![
        command("go", RoundAction::Go, 1_000),
        // Two in one millisecond, named against the alphabet: the order is the recording's.
        command("slower", RoundAction::Interval { ms: 400 }, 2_000),
        command("longer", RoundAction::Extend { by_ms: 30_000 }, 2_000),
    ]
}

/// The shared suite: `reopen` gives a fresh handle on the same ledger (a restart).
fn groups_survive_reopening(mut reopen: impl FnMut() -> Box<dyn LedgerStore>) {
    let worker = WorkerRecord {
        worker: WorkerKey { edge_id: 1, worker_id: 3 },
        instance_id: TOP - 6,
        confirmed_seq: 1,
        retired: vec![4, TOP - 1],
    };
    {
        let mut ledger = reopen();
        ledger.probe().unwrap();
        ledger
            .commit_group(&CommitGroup { batches: batches(1..=3), ..CommitGroup::default() })
            .unwrap();
        ledger
            .commit_group(&CommitGroup {
                delivered: vec![2, 99],
                forget: vec![key(1)],
                workers: vec![worker.clone()],
                ..CommitGroup::default()
            })
            .unwrap();
        // A worker record is replaced, not added, and of two in one group the later one
        // stands; commands come back in the order recorded.
        let mut newer = worker.clone();
        newer.confirmed_seq = 2;
        ledger
            .commit_group(&CommitGroup {
                workers: vec![worker.clone(), newer],
                commands: commands()[..1].to_vec(),
                ..CommitGroup::default()
            })
            .unwrap();
        ledger
            .commit_group(&CommitGroup { commands: commands()[1..].to_vec(), ..Default::default() })
            .unwrap();
    }
    let mut ledger = reopen();
    let snapshot = ledger.snapshot().unwrap();
    let expected: Vec<Award> =
        (1..=3).map(|id| Award { delivered: id == 2, ..award(id, id) }).collect();
    assert_eq!(snapshot.awards, expected, "every award, in id order, with its delivery mark");
    assert_eq!(snapshot.answers.len(), 2, "the confirmed answer was compacted away");
    assert_eq!(snapshot.answers[&key(2)], Bytes::from(vec![2u8; 3]));
    assert_eq!(snapshot.answers[&key(3)], Bytes::from(vec![3u8; 3]));
    assert_eq!(snapshot.workers, vec![WorkerRecord { confirmed_seq: 2, ..worker }]);
    assert_eq!(ledger.stored_answers().unwrap(), 2);
    assert_eq!(snapshot.commands, commands());
    assert_eq!(ledger.awards(&mut |a| a.user_id == TOP).unwrap(), vec![expected[1].clone()]);
    assert!(ledger.awards(&mut |a| a.round_id == 2).unwrap().is_empty());
    // Support's questions, each answered as a full read filtered answers it (on PostgreSQL a
    // user's by its index, with the delivery marks).
    let every = ledger.awards(&mut |_| true).unwrap();
    let ask = |user, round, undelivered, limit| AwardQuery {
        user,
        round,
        undelivered,
        limit,
        ..AwardQuery::default()
    };
    for query in [
        ask(Some(TOP), None, false, 0),
        ask(Some(TOP), Some(1), true, 0),
        ask(Some(103), Some(1), false, 1),
        ask(Some(103), Some(2), false, 0),
        ask(Some(7), None, false, 0),
        ask(None, None, true, 1),
        ask(None, Some(1), false, 0),
        AwardQuery { after: 1, ..ask(None, None, false, 0) },
        AwardQuery { after: 1, ..ask(Some(TOP), None, false, 0) },
        AwardQuery { after: 2, ..ask(Some(TOP), None, false, 0) },
        AwardQuery { after: 1, ..ask(None, Some(1), false, 1) },
        AwardQuery { after: 3, ..ask(None, None, false, 0) },
        AwardQuery { after: u64::MAX, ..ask(None, None, false, 0) },
        AwardQuery { after: 1 << 63, ..ask(Some(TOP), None, false, 0) },
        AwardQuery { after: 1 << 63, ..ask(None, None, false, 0) },
    ] {
        let want: Vec<Award> =
            every.iter().filter(|a| query.matches(a)).take(query.most()).cloned().collect();
        assert_eq!(ledger.find_awards(&query).unwrap(), want, "{query:?}");
    }
    assert_eq!(
        ledger.find_awards(&ask(Some(TOP), None, false, 0)).unwrap(),
        vec![expected[1].clone()]
    );
    // An export, read page by page from its cursor, gives every award once, in id order.
    for size in [1, 2, 3, 4] {
        let mut paged = Vec::new();
        let mut after = Some(0);
        while let Some(cursor) = after {
            let page = ledger.find_awards(&export::export_page(cursor, size)).unwrap();
            assert!(page.len() <= size, "a page holds at most its size");
            after = export::next_page_after(&page, size);
            paged.extend(page);
        }
        assert_eq!(paged, every, "pages of {size}");
    }

    // Every instance a worker retired is read back, however many its record carried: the
    // record the newest eight (as the core writes it), the log each one as it retired.
    let restarted = WorkerKey { edge_id: 2, worker_id: 0 };
    let retire = |ids: std::ops::Range<u64>| -> Vec<RetiredInstance> {
        ids.map(|instance_id| RetiredInstance { worker: restarted, instance_id }).collect()
    };
    let record = WorkerRecord {
        worker: restarted,
        instance_id: 30,
        confirmed_seq: 0,
        retired: (22..30).collect(),
    };
    ledger.commit_group(&CommitGroup { retired: retire(10..20), ..Default::default() }).unwrap();
    ledger
        .commit_group(&CommitGroup {
            workers: vec![record.clone()],
            retired: retire(20..30),
            ..Default::default()
        })
        .unwrap();
    drop(ledger);
    let snapshot = reopen().snapshot().unwrap();
    let read = snapshot.workers.iter().find(|w| w.worker == restarted);
    assert_eq!(read, Some(&WorkerRecord { retired: (10..30).collect(), ..record }));
}

#[test]
fn fjall_keeps_groups_across_reopening() {
    let scratch = Scratch::new("ledger-fjall");
    let path = scratch.ledger();
    groups_survive_reopening(|| Box::new(FjallLedger::open(&path).unwrap()));
}

/// A fjall ledger written before its log of retirements existed lists retired instances only
/// in the workers' records, eight at most each: opened by this version, they join the log, so
/// a retirement after the upgrade, which pushes the oldest out of the record, loses none.
#[test]
fn fjall_keeps_the_retirements_an_older_version_recorded() {
    let scratch = Scratch::new("ledger-fjall-retired");
    let path = scratch.ledger();
    let worker = WorkerKey { edge_id: 4, worker_id: 2 };
    let record = |instance_id: u64, retired: std::ops::RangeInclusive<u64>| WorkerRecord {
        worker,
        instance_id,
        confirmed_seq: 0,
        retired: retired.collect(),
    };
    // As an older version wrote it: the record alone.
    let older = CommitGroup { workers: vec![record(9, 1..=8)], ..CommitGroup::default() };
    FjallLedger::open(&path).unwrap().commit_group(&older).unwrap();
    // This version retires instance 9: its record now lists 2..=9, the log 9.
    let retired = vec![RetiredInstance { worker, instance_id: 9 }];
    let newer = CommitGroup { workers: vec![record(10, 2..=9)], retired, ..Default::default() };
    FjallLedger::open(&path).unwrap().commit_group(&newer).unwrap();
    let workers = FjallLedger::open(&path).unwrap().snapshot().unwrap().workers;
    assert_eq!(workers, vec![WorkerRecord { retired: (1..=9).collect(), ..record(10, 2..=9) }]);
}

/// `node` at `address` tries for the lease, as a process that has not taken it before.
fn try_take(
    ledger: &mut PostgresLedger,
    node: &str,
    address: &str,
    lease_for: Duration,
) -> Result<Option<i64>, LedgerError> {
    lease::try_acquire(ledger.client(), node, address, lease_for, lease::OwnLease::NeverTook)
}

/// A PostgreSQL ledger that leads (holds the lease's epoch), taking back a lease `node` holds
/// as the process that took it (the tests reopen a ledger where a process would keep it).
fn leading(url: &str, node: &str) -> (PostgresLedger, i64) {
    let mut ledger = PostgresLedger::open(url).unwrap();
    let own = match lease::current(ledger.client()) {
        Ok(row) if row.holder == node => lease::OwnLease::TookAs(row.epoch),
        _ => lease::OwnLease::NeverTook,
    };
    let epoch =
        lease::try_acquire(ledger.client(), node, "127.0.0.1:1", Duration::from_secs(30), own)
            .unwrap()
            .expect("the lease is free");
    ledger.lead(Term::new(epoch, node));
    (ledger, epoch)
}

#[test]
fn postgres_keeps_groups_across_reopening_and_guards_the_money() {
    let scratch = Scratch::new("ledger-pg");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("suite");
    groups_survive_reopening(|| Box::new(leading(&url, "a").0));

    // A resend can never draw twice: a batch name already taken refuses the whole group.
    let (mut ledger, _) = leading(&url, "a");
    let again = AnsweredBatch { key: key(1), answer: Bytes::from_static(b"x"), awards: vec![] };
    let fresh = AnsweredBatch { key: key(9), answer: Bytes::from_static(b"y"), awards: vec![] };
    let refused = ledger.commit_group(&CommitGroup {
        batches: vec![fresh.clone(), again],
        ..CommitGroup::default()
    });
    assert!(matches!(refused, Err(LedgerError::Database(_))), "{refused:?}");
    // A prize paid twice (same round and item, another award id) is refused too.
    let mut twice = award(1, 10);
    twice.award_id = 50;
    let refused = ledger.commit_group(&CommitGroup {
        batches: vec![AnsweredBatch { key: key(10), answer: Bytes::new(), awards: vec![twice] }],
        ..CommitGroup::default()
    });
    assert!(matches!(refused, Err(LedgerError::Database(_))), "{refused:?}");
    let snapshot = ledger.snapshot().unwrap();
    assert_eq!(snapshot.awards.len(), 3, "nothing of a refused group was written");
    assert!(!snapshot.answers.contains_key(&key(9)));

    // Reads need no leadership; commits do.
    let mut reader = PostgresLedger::open(&url).unwrap();
    assert_eq!(reader.awards(&mut |_| true).unwrap().len(), 3);
    let refused = reader.commit_group(&CommitGroup { batches: vec![fresh], ..Default::default() });
    assert!(matches!(refused, Err(LedgerError::Failed(_))), "{refused:?}");
}

/// A renewal that reaches the server only after the lease ran out (left behind on a stopped
/// server that then resumes) renews nothing: the leader gave its term up at the lease's end,
/// and a lease renewed then would name a leader nobody has, holding every standby off for one
/// more lease.
#[test]
fn a_renewal_that_arrives_after_the_lease_ran_out_renews_nothing() {
    let scratch = Scratch::new("ledger-late-renewal");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("late_renewal");
    let mut leader = PostgresLedger::open(&url).unwrap();
    let short = Duration::from_millis(1_000);
    let epoch = try_take(&mut leader, "a", "127.0.0.1:1", short).unwrap().unwrap();
    let term = Term::new(epoch, "a");
    assert!(lease::renew(leader.client(), &term, short).unwrap(), "a renewal in time renews");

    std::thread::sleep(Duration::from_millis(1_200));
    assert!(!lease::renew(leader.client(), &term, short).unwrap(), "the late renewal renewed");
    let row = lease::current(leader.client()).unwrap();
    assert_eq!(row.epoch, epoch);
    assert!(row.expires_in_ms <= 0, "the lease runs on for {} ms", row.expires_in_ms);
    // And a standby takes it at once.
    let mut standby = PostgresLedger::open(&url).unwrap();
    assert_eq!(try_take(&mut standby, "b", "127.0.0.1:2", short).unwrap(), Some(epoch + 1));
}

#[test]
fn a_new_epoch_fences_the_old_leader() {
    let scratch = Scratch::new("ledger-fence");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("fence");
    let mut old = PostgresLedger::open(&url).unwrap();
    // Long enough that the first renewal lands inside it on a busy machine (a renewal after
    // the lease ran out renews nothing).
    let short = Duration::from_millis(1_000);
    let first = try_take(&mut old, "old", "127.0.0.1:1", short).unwrap().unwrap();
    old.lead(Term::new(first, "old"));
    old.commit_group(&CommitGroup { batches: batches(1..=1), ..CommitGroup::default() }).unwrap();

    // While the lease runs, a standby cannot take it, and renewing works.
    let mut standby = PostgresLedger::open(&url).unwrap();
    assert_eq!(try_take(&mut standby, "new", "127.0.0.1:2", short).unwrap(), None);
    assert!(lease::renew(old.client(), &Term::new(first, "old"), short).unwrap());
    let row = lease::current(standby.client()).unwrap();
    assert_eq!(
        (row.epoch, row.holder.as_str(), row.address.as_str()),
        (first, "old", "127.0.0.1:1")
    );

    // The old leader pauses past its lease; the standby takes over with a new epoch.
    std::thread::sleep(Duration::from_millis(1_200));
    let second = try_take(&mut standby, "new", "127.0.0.1:2", short).unwrap().unwrap();
    assert_eq!(second, first + 1);
    standby.lead(Term::new(second, "new"));

    // The old leader wakes: its commit is refused whole, and it cannot renew.
    let refused =
        old.commit_group(&CommitGroup { batches: batches(2..=2), ..CommitGroup::default() });
    match refused {
        Err(LedgerError::Fenced { held, current, holder }) => {
            assert_eq!((held, current, holder.as_str()), (first, second, "new"));
        }
        other => panic!("expected fencing, got {other:?}"),
    }
    assert!(!lease::renew(old.client(), &Term::new(first, "old"), short).unwrap());
    standby
        .commit_group(&CommitGroup { batches: batches(3..=3), ..CommitGroup::default() })
        .unwrap();
    let awards: Vec<u64> =
        standby.awards(&mut |_| true).unwrap().into_iter().map(|a| a.award_id).collect();
    assert_eq!(awards, vec![1, 3], "the fenced group wrote nothing");
    let epochs: Vec<(i64, i64)> = standby
        .client()
        .query("SELECT seq, epoch FROM shake_batches ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(epochs, vec![(1, first), (3, second)]);
    // The proof chaos.sh makes after a real pause: no group of an older epoch committed after
    // the takeover's transaction (commit timestamps are on in the test cluster).
    let proof = "SELECT count(*) FILTER (WHERE c.epoch < t.epoch AND \
        pg_xact_commit_timestamp(c.xmin) > pg_xact_commit_timestamp(t.xmin)), count(*) \
        FROM shake_commits c, shake_terms t WHERE t.epoch = $1";
    let row = standby.client().query_one(proof, &[&second]).unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (0, 2),
        "one commit per epoch, none late"
    );

    // A clean stop releases the lease: the next node takes it without waiting.
    lease::release(standby.client(), &Term::new(second, "new")).unwrap();
    let third = try_take(&mut old, "old", "127.0.0.1:1", Duration::from_secs(30));
    assert_eq!(third.unwrap(), Some(second + 1));
}

/// Every award is written twice, drawn then acknowledged: the mark must be a row of its own and
/// never touch the award's row, or each mark costs an update (at best heap-only, a quarter of
/// the ledger's capacity: docs/PERFORMANCE.md). And every mark must be found again, by the ledger
/// and by support's view, including those at the edge of a mark row's span.
#[test]
fn delivery_marks_are_rows_of_their_own_and_are_found_at_their_spans_edge() {
    use shake_allocator::ledger::delivery_marks::MARK_SPAN;
    let scratch = Scratch::new("ledger-marks");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("marks");
    let (mut ledger, _) = leading(&url, "a");
    let span = MARK_SPAN as u64;
    // Ids 1..=600 drawn densely, then a few far apart: right at a span's end and past it.
    let far = [1 + span - 1, 1 + span, 1 + 3 * span];
    let ids: Vec<u64> = (1..=600).chain(far).collect();
    let drawn: Vec<AnsweredBatch> = ids
        .chunks(100)
        .enumerate()
        .map(|(i, chunk)| AnsweredBatch {
            key: key(i as u64 + 1),
            answer: Bytes::from_static(b"a"),
            awards: chunk.iter().map(|id| award(*id, i as u64 + 1)).collect(),
        })
        .collect();
    ledger.commit_group(&CommitGroup { batches: drawn, ..CommitGroup::default() }).unwrap();
    let versions = |ledger: &mut PostgresLedger| -> Vec<(String, String)> {
        let rows = ledger
            .client()
            .query("SELECT ctid::text, xmin::text FROM shake_awards ORDER BY award_id", &[])
            .unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let before = versions(&mut ledger);

    // Every odd id of the dense run, in two groups with a repeat, plus the far ones; the
    // first row of marks starts at 1 and holds ids up to 1 + span - 1.
    let mut marked: Vec<u64> = (1..=600).filter(|id| id % 2 == 1).collect();
    marked.extend(far);
    let (first, second) = marked.split_at(150);
    ledger.commit_group(&CommitGroup { delivered: first.to_vec(), ..Default::default() }).unwrap();
    let mut again = second.to_vec();
    again.push(first[0]);
    ledger.commit_group(&CommitGroup { delivered: again, ..Default::default() }).unwrap();
    assert_eq!(versions(&mut ledger), before, "a mark touched an award row");

    let expected = |a: &Award| marked.contains(&a.award_id);
    let awards = ledger.awards(&mut |_| true).unwrap();
    assert_eq!(awards.len(), ids.len());
    for a in &awards {
        assert_eq!(a.delivered, expected(a), "award {} as the ledger reads it", a.award_id);
    }
    // Read from inside a mark row's span (what a standby following the log does).
    let tail = ledger.awards_after(599, 100).unwrap();
    assert_eq!(
        tail.iter().map(|a| a.award_id).collect::<Vec<_>>(),
        [600].iter().copied().chain(far).collect::<Vec<_>>()
    );
    for a in &tail {
        assert_eq!(a.delivered, expected(a), "award {} read after 599", a.award_id);
    }
    let owed: Vec<u64> = ledger.undelivered_awards().unwrap().iter().map(|a| a.award_id).collect();
    assert_eq!(owed, ids.iter().copied().filter(|id| !marked.contains(id)).collect::<Vec<_>>());
    // Support's view agrees, award by award.
    let rows = ledger
        .client()
        .query("SELECT award_id, delivered FROM shake_awards_with_delivery ORDER BY award_id", &[])
        .unwrap();
    let view: Vec<(u64, bool)> =
        rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get(1))).collect();
    assert_eq!(view, ids.iter().map(|id| (*id, marked.contains(id))).collect::<Vec<_>>());

    // The table refuses a row a reader would miss (an id a span or more above its first),
    // and an empty one; it takes one right at the span's end.
    let insert = |ledger: &mut PostgresLedger, ids: &[i64]| {
        ledger.client().execute(
            "INSERT INTO shake_delivery_marks (first_id, award_ids, epoch, group_seq) \
             VALUES ($1, $2, 0, 0)",
            &[&10_000i64, &ids],
        )
    };
    // A row without its group's place, as an allocator older than schema 7 writes it, is
    // refused: standbys could not follow it in commit order.
    let unplaced = ledger.client().execute(
        "INSERT INTO shake_delivery_marks (first_id, award_ids, epoch) VALUES (1, '{1}', 0)",
        &[],
    );
    assert!(unplaced.is_err(), "a mark row without group_seq was taken");
    assert!(insert(&mut ledger, &[10_000, 10_000 + MARK_SPAN]).is_err());
    assert!(insert(&mut ledger, &[9_999]).is_err());
    assert!(insert(&mut ledger, &[]).is_err());
    insert(&mut ledger, &[10_000, 10_000 + MARK_SPAN - 1]).expect("the span's last id");
}

/// A standby keeps the awards owed as it follows the log, so a takeover reads only the tail:
/// what it owes at the end must be what a full read of the ledger finds, whatever order the
/// marks came in: marks of awards it has read, of awards it has not read yet, and marks of a
/// new term (epoch up, group numbers back to 0). And what it read must add up to the commit
/// log, which an award row written outside a commit breaks.
#[test]
fn a_standby_following_the_log_owes_what_a_full_read_finds() {
    use shake_allocator::ledger::follow::Following;
    let scratch = Scratch::new("ledger-follow");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("follow");
    let mut first = PostgresLedger::open(&url).unwrap();
    let short = Duration::from_millis(300);
    let epoch = try_take(&mut first, "a", "127.0.0.1:1", short).unwrap().unwrap();
    first.lead(Term::new(epoch, "a"));
    let drawn = |ids: std::ops::RangeInclusive<u64>, seq: u64| AnsweredBatch {
        key: key(seq),
        answer: Bytes::from_static(b"a"),
        awards: ids.map(|id| award(id, seq)).collect(),
    };
    let group = |seq: u64, batches: Vec<AnsweredBatch>, delivered: Vec<u64>| CommitGroup {
        seq,
        batches,
        delivered,
        ..CommitGroup::default()
    };
    // Marks committed before the standby's first look reach it joined with their awards.
    first.commit_group(&group(0, vec![drawn(1..=300, 1)], (291..=300).collect())).unwrap();

    let mut standby = PostgresLedger::open(&url).unwrap();
    let mut following = Following::default();
    let look = |standby: &mut PostgresLedger, following: &mut Following, limit: i64| {
        let read = standby.follow(&following.cursor, limit).unwrap();
        following.take(&read);
        read.awards.len()
    };
    assert_eq!(look(&mut standby, &mut following, 100), 100);
    // Marks of awards read (1..=50) and of awards not read yet (250..=260).
    let marks: Vec<u64> = (1..=50).chain(250..=260).collect();
    first.commit_group(&group(1, vec![drawn(301..=320, 2)], marks)).unwrap();
    assert_eq!(look(&mut standby, &mut following, 100), 100);
    assert_eq!(look(&mut standby, &mut following, 1_000), 120);

    // A new term: the old lease runs out, another leader's groups count from 0 again.
    std::thread::sleep(Duration::from_millis(400));
    let mut second = PostgresLedger::open(&url).unwrap();
    let next = try_take(&mut second, "c", "127.0.0.1:2", short).unwrap().unwrap();
    assert_eq!(next, epoch + 1);
    second.lead(Term::new(next, "c"));
    let marks: Vec<u64> = (100..=110).chain([5, 315]).collect();
    second.commit_group(&group(0, vec![drawn(321..=330, 3)], marks)).unwrap();
    second.commit_group(&group(1, Vec::new(), vec![325])).unwrap();

    let takeover = standby.read_for_takeover(&following.cursor).unwrap();
    assert!(!takeover.tail.last_commit_gone);
    assert_eq!(takeover.tail.awards.len(), 10);
    following.take(&takeover.tail);
    assert!(following.adds_up(), "{} read, {} committed", following.read, following.committed);
    let full: Vec<u64> = standby.undelivered_awards().unwrap().iter().map(|a| a.award_id).collect();
    let expected: Vec<u64> = (1..=330)
        .filter(|id| !matches!(id, 1..=50 | 100..=110 | 250..=260 | 291..=300 | 315 | 325))
        .collect();
    assert_eq!(full, expected, "the full read");
    let owed: Vec<u64> = following.into_owed().iter().map(|a| a.award_id).collect();
    assert_eq!(owed, expected, "what the standby followed");

    // An award row the commit log does not count: the reads no longer add up.
    let mut following = Following::default();
    let read = standby.follow(&following.cursor, 1_000).unwrap();
    following.take(&read);
    assert!(following.adds_up());
    standby
        .client()
        .batch_execute(
            "INSERT INTO shake_awards (award_id, round_id, item, user_id, cash_cents, edge_id, \
             worker_id, instance_id, batch_seq, entry_index, granted_at_ms, epoch) \
             VALUES (331, 1, 331, 7, 5, 1, 3, 7, 9, 0, 0, 1)",
        )
        .unwrap();
    let read = standby.follow(&following.cursor, 1_000).unwrap();
    following.take(&read);
    assert!(!following.adds_up(), "a row outside a commit went unnoticed");

    // The last commit followed vanishes (seen on a primary that was lost before it replicated
    // it): a look and the takeover must see it gone, and again when its id is given to another
    // commit.
    let cursor = following.cursor;
    assert!(!standby.read_for_takeover(&cursor).unwrap().tail.last_commit_gone);
    assert!(!standby.follow(&cursor, 1).unwrap().last_commit_gone);
    let client = standby.client();
    let last = client
        .query_one("SELECT id, epoch FROM shake_commits ORDER BY id DESC LIMIT 1", &[])
        .unwrap();
    assert_eq!((last.get::<_, i64>(0), last.get::<_, i64>(1)), (cursor.commit_id, next));
    client.execute("DELETE FROM shake_commits WHERE id = $1", &[&cursor.commit_id]).unwrap();
    assert!(standby.read_for_takeover(&cursor).unwrap().tail.last_commit_gone, "a lost commit");
    assert!(standby.follow(&cursor, 1).unwrap().last_commit_gone, "a lost commit, followed");
    standby
        .client()
        .execute(
            "INSERT INTO shake_commits (id, epoch, batches, awards) VALUES ($1, $2, 0, 0)",
            &[&cursor.commit_id, &(next + 1)],
        )
        .unwrap();
    assert!(standby.read_for_takeover(&cursor).unwrap().tail.last_commit_gone, "its id reused");
    assert!(standby.follow(&cursor, 1).unwrap().last_commit_gone, "its id reused, followed");
}

/// A session on the database at `url`, its schema migrated as far as `version` only (as an
/// allocator of that version left it).
fn migrated_to(url: &str, version: i32) -> postgres::Client {
    use shake_allocator::ledger::postgres::MIGRATIONS;
    let mut client = shake_allocator::ledger::postgres::connect(url).unwrap().client;
    client
        .batch_execute(
            "CREATE TABLE shake_schema (version integer PRIMARY KEY, \
             applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .unwrap();
    for (applied, sql) in MIGRATIONS.iter().filter(|(v, _)| *v <= version) {
        client.batch_execute(sql).unwrap();
        client.execute("INSERT INTO shake_schema (version) VALUES ($1)", &[applied]).unwrap();
    }
    client
}

/// A host that accepts connections and never answers (a server that hangs: its kernel
/// completes the handshake and takes the startup message) is left behind at the URL's
/// `connect_timeout` and the next host serves; the next connection skips it at once while that
/// attempt is unanswered. The client's own `connect_timeout` covers the TCP connect alone.
#[test]
fn a_host_that_never_answers_is_passed_over_for_the_next() {
    use shake_allocator::ledger::{deadline, postgres, postgres::connect};
    use std::time::Instant;
    let scratch = Scratch::new("ledger-hung-host");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    // Never accepted: the kernel's backlog completes connections to it, and nothing answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_port = hung.local_addr().unwrap().port();
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={hung_port},{} user=postgres dbname=postgres \
         connect_timeout=1",
        server.port
    );
    let started = Instant::now();
    let first = connect(url.as_str()).expect("the second host serves");
    let took = started.elapsed();
    assert_eq!(first.host, format!("127.0.0.1:{}", server.port));
    assert!(took >= Duration::from_millis(900), "the hung host was not tried first: {took:?}");
    assert!(took < Duration::from_secs(4), "the hung host held the connection {took:?}");
    assert!(deadline::unanswered() >= 1, "the attempt left behind is counted");
    let started = Instant::now();
    let second = connect(url.as_str()).expect("the second host serves again");
    assert_eq!(second.host, first.host);
    let took = started.elapsed();
    assert!(took < Duration::from_millis(900), "the hung host was tried again: {took:?}");
    // Once the attempt left behind returns (the listener gone, its connection reset), the host
    // is tried again.
    let hung_host = format!("127.0.0.1:{hung_port}");
    assert!(postgres::host_is_hung(&hung_host));
    drop(hung);
    let dropped = Instant::now();
    while postgres::host_is_hung(&hung_host) {
        assert!(dropped.elapsed() < Duration::from_secs(5), "{hung_host} skipped for good");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A ledger written by an allocator of schema 4 (delivery marks in the award rows) keeps its
/// marks when a newer allocator migrates it.
#[test]
fn marks_of_an_older_schema_survive_the_migration() {
    let scratch = Scratch::new("ledger-marks-migration");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("older");
    let mut client = migrated_to(&url, 4);
    client
        .batch_execute(
            "INSERT INTO shake_awards (award_id, round_id, item, user_id, cash_cents, edge_id, \
             worker_id, instance_id, batch_seq, entry_index, granted_at_ms, epoch, delivered) \
             SELECT id, 1, id, 100 + id, 5, 1, 3, 7, 1, id, 0, 1, id % 3 = 0 \
             FROM generate_series(1, 10) AS id",
        )
        .unwrap();
    let mut ledger = PostgresLedger::open(&url).unwrap();
    let delivered: Vec<u64> =
        ledger.awards(&mut |a| a.delivered).unwrap().iter().map(|a| a.award_id).collect();
    assert_eq!(delivered, vec![3, 6, 9]);
    assert_eq!(ledger.undelivered_awards().unwrap().len(), 7);
}

#[test]
fn retired_instances_of_an_older_schema_survive_the_migration() {
    let scratch = Scratch::new("ledger-retired-migration");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("older");
    let mut client = migrated_to(&url, 8);
    client
        .batch_execute(
            "INSERT INTO shake_workers (edge_id, worker_id, instance_id, confirmed_seq, retired) \
             VALUES (1, 3, 9, 0, '{5, 6}')",
        )
        .unwrap();
    let mut ledger = PostgresLedger::open(&url).unwrap();
    // An allocator of the older version leading on the migrated schema rolls its list on.
    client.batch_execute("UPDATE shake_workers SET retired = '{7, 8}'").unwrap();
    let workers = ledger.snapshot().unwrap().workers;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].retired, vec![5, 6, 7, 8]);
}

/// A database whose default lets commits return before they are durable (`synchronous_commit
/// = off`, set by whoever runs the server, silently honoured) is overruled on every ledger
/// session; a stronger setting is kept.
#[test]
fn a_database_that_would_commit_before_the_flush_is_overruled() {
    let scratch = Scratch::new("ledger-sync-commit");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("lax");
    let setting = |client: &mut postgres::Client| -> String {
        client.query_one("SHOW synchronous_commit", &[]).unwrap().get(0)
    };
    server.admin("postgres", "ALTER DATABASE lax SET synchronous_commit = off");
    let mut client = shake_allocator::ledger::postgres::connect(&url).unwrap().client;
    assert_eq!(setting(&mut client), "on");
    let mut ledger = PostgresLedger::open(&url).unwrap();
    assert_eq!(setting(ledger.client()), "on");
    server.admin("postgres", "ALTER DATABASE lax SET synchronous_commit = remote_apply");
    let mut client = shake_allocator::ledger::postgres::connect(&url).unwrap().client;
    assert_eq!(setting(&mut client), "remote_apply");
}

#[test]
fn the_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let scratch = Scratch::new("ledger-schema");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("schema");
    let mut first = PostgresLedger::open(&url).unwrap();
    // Opening again (a second allocator, a restart) applies nothing twice.
    let mut second = PostgresLedger::open(&url).unwrap();
    let versions: Vec<i32> = second
        .client()
        .query("SELECT version FROM shake_schema ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known = shake_allocator::ledger::postgres::schema_version();
    assert_eq!(versions, (1..=known).collect::<Vec<_>>());
    first
        .client()
        .execute("INSERT INTO shake_schema (version) VALUES ($1)", &[&(known + 1)])
        .unwrap();
    match PostgresLedger::open(&url) {
        Err(LedgerError::Schema(why)) => assert!(why.contains("newer"), "{why}"),
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

/// The support and settlement commands read without changing the schema: an empty database
/// (a wrong address) and a ledger of an older schema are refused and left as they were; a
/// ledger at this build's schema reads.
#[test]
fn a_ledger_opened_to_read_is_never_created_or_migrated() {
    let scratch = Scratch::new("ledger-read-only");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let empty = server.database("empty");
    match PostgresLedger::open_to_read(&empty) {
        Err(LedgerError::Schema(why)) => assert!(why.contains("no Shake ledger"), "{why}"),
        other => panic!("an empty database must be refused, got {other:?}"),
    }
    let mut look = shake_allocator::ledger::postgres::connect(&empty).unwrap().client;
    let tables: i64 = look
        .query_one("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'shake_%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(tables, 0, "nothing created");
    let older_url = server.database("older_read");
    let mut older = migrated_to(&older_url, 8);
    match PostgresLedger::open_to_read(&older_url) {
        Err(LedgerError::Schema(why)) => assert!(why.contains("schema version 8"), "{why}"),
        other => panic!("an older schema must be refused, got {other:?}"),
    }
    let newest: i32 = older.query_one("SELECT max(version) FROM shake_schema", &[]).unwrap().get(0);
    assert_eq!(newest, 8, "not migrated");
    drop(PostgresLedger::open(&older_url).unwrap());
    let mut reader = PostgresLedger::open_to_read(&older_url).unwrap();
    assert!(reader.awards(&mut |_| true).unwrap().is_empty());
}

#[test]
fn a_leader_paused_inside_a_commit_does_not_block_the_takeover() {
    let scratch = Scratch::new("ledger-paused");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("paused");
    let short = Duration::from_millis(300);
    let mut old = PostgresLedger::open(&url).unwrap();
    let first = try_take(&mut old, "old", "127.0.0.1:1", short).unwrap().unwrap();
    // What a commit does first, then the process is frozen (SIGSTOP) before it goes on.
    let mut frozen = shake_allocator::ledger::postgres::connect(&url).unwrap().client;
    frozen.batch_execute("BEGIN").unwrap();
    frozen.query_one(shake_allocator::ledger::postgres::CHECK_EPOCH, &[]).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let mut standby = PostgresLedger::open(&url).unwrap();
    let started = std::time::Instant::now();
    let taken = try_take(&mut standby, "new", "127.0.0.1:2", short);
    let waited = started.elapsed();
    assert_eq!(taken.unwrap(), Some(first + 1), "the takeover went through after {waited:?}");
    let limit = shake_allocator::ledger::postgres::IDLE_IN_TRANSACTION_MS + 800;
    assert!(waited < Duration::from_millis(limit), "the takeover waited {waited:?}");
    // The frozen transaction was ended by the server: it can commit nothing.
    assert!(frozen.batch_execute("COMMIT").is_err() || frozen.is_closed());
}

/// A commit in flight locks the lease row until it ends: a takeover (a new epoch) must wait
/// for it, a renewal must not. With two commit lanes the commits' transactions overlap
/// without a gap, and a renewal that waited for them waited as long as the load lasted.
#[test]
fn a_commit_in_flight_holds_a_takeover_but_not_a_renewal() {
    use shake_allocator::ledger::lanes::Turn;
    use std::time::Instant;

    let scratch = Scratch::new("ledger-renewal");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("renewal");
    // The renewal lands inside the lease (one renewed after it ran out renews nothing), and
    // the takeover is tried once the renewed lease has run out, while the commit is open.
    let short = Duration::from_millis(600);
    let mut leader = PostgresLedger::open(&url).unwrap();
    let epoch = try_take(&mut leader, "old", "127.0.0.1:1", short).unwrap().unwrap();
    leader.lead(Term::new(epoch, "old"));
    let mut renewal = shake_allocator::ledger::postgres::connect(&url).unwrap().client;
    // A renewal that waits at all for the commit fails here, long before the commit ends.
    renewal.batch_execute("SET lock_timeout = 200").unwrap();

    let mut renewed = None;
    let mut takeover = None;
    let mut held_while_open = None;
    let opened = Instant::now();
    let mut turn = |poll: Duration| {
        if renewed.is_none() {
            let started = Instant::now();
            let term = Term::new(epoch, "old");
            renewed = Some((lease::renew(&mut renewal, &term, short), started.elapsed()));
            // Once the renewed lease runs out, a standby tries to take over.
            let url = url.clone();
            takeover = Some(std::thread::spawn(move || {
                let mut standby = PostgresLedger::open(&url).unwrap();
                std::thread::sleep(Duration::from_millis(700));
                try_take(&mut standby, "new", "127.0.0.1:2", short)
            }));
        }
        if opened.elapsed() < Duration::from_millis(1_200) {
            std::thread::sleep(poll.min(Duration::from_millis(100)));
            return Turn::Wait;
        }
        held_while_open = takeover.as_ref().map(|t| !t.is_finished());
        Turn::Go
    };
    let committed = leader.commit_group_in_turn(
        &CommitGroup { batches: batches(1..=1), ..Default::default() },
        &mut turn,
    );
    let (renewal_result, renewal_took) = renewed.expect("the turn was asked");
    // A renewal that waited for the commit's lock failed at its `lock_timeout` (no bound on
    // its time here: an fsync on a busy disk is not the defect).
    let renewal_seen = format!("{renewal_result:?} after {renewal_took:?}");
    assert!(matches!(renewal_result, Ok(true)), "the renewal: {renewal_seen}");
    committed.expect("the group committed under its epoch");
    assert_eq!(held_while_open, Some(true), "the takeover went through while the commit was open");
    let taken = takeover.unwrap().join().unwrap();
    assert_eq!(taken.unwrap(), Some(epoch + 1));
    // Which committed first, by the server's commit timestamps (the two clients' own clocks
    // read the ends of their calls, and either thread may be woken first).
    let order = "SELECT pg_xact_commit_timestamp(c.xmin) < pg_xact_commit_timestamp(t.xmin) \
        FROM shake_commits c, shake_terms t WHERE c.epoch = $1 AND t.epoch = $1 + 1";
    let committed_first: bool = renewal.query_one(order, &[&epoch]).unwrap().get(0);
    assert!(committed_first, "the takeover committed before the commit it waited for");
}

#[test]
fn the_ledger_reaches_its_database_over_verified_tls() {
    let scratch = Scratch::new("ledger-tls");
    let (ours, theirs) = (scratch.certs(), scratch.dir.join("other-ca"));
    dev_certs(&theirs);
    // The development server certificate names 127.0.0.1, the host in the URL.
    let server = PgServer::primary_tls(
        &scratch.dir.join("pg"),
        &ours.join("allocator.pem"),
        &ours.join("allocator.key"),
    );
    let url = server.url("postgres");
    let target =
        shake_allocator::ledger::postgres::Target::tls(&url, &ours.join("ca.pem")).unwrap();
    let mut ledger = PostgresLedger::open(&target).unwrap();
    let ssl: bool = ledger
        .client()
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    assert!(ssl, "the session runs over TLS");
    // A server whose certificate another CA signed is refused.
    let stranger =
        shake_allocator::ledger::postgres::Target::tls(&url, &theirs.join("ca.pem")).unwrap();
    assert!(matches!(PostgresLedger::open(&stranger), Err(LedgerError::Database(_))));
}

#[test]
fn two_commit_lanes_commit_in_order_and_a_group_outlives_its_wait() {
    use shake_allocator::ledger::lanes::{CommitLanes, Report, Turn};
    use std::sync::{Arc, Mutex};

    let scratch = Scratch::new("ledger-lanes");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("lanes");
    let (mut ledger, _) = leading(&url, "a");

    // A group written, then kept waiting for its turn longer than the server lets a session
    // sit idle in a transaction: it still commits (the wait touches the transaction).
    let waited = std::time::Instant::now();
    let idle = Duration::from_millis(shake_allocator::ledger::postgres::IDLE_IN_TRANSACTION_MS);
    let mut turn = |poll: Duration| {
        if waited.elapsed() < idle + Duration::from_millis(500) {
            std::thread::sleep(poll);
            Turn::Wait
        } else {
            Turn::Go
        }
    };
    ledger
        .commit_group_in_turn(
            &CommitGroup { batches: batches(1..=1), ..Default::default() },
            &mut turn,
        )
        .expect("a group that waited its turn commits");

    // Two sessions, twelve groups, the eighth refused (a batch name already taken): groups
    // commit in the order handed over, nothing after the refused one.
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let report: Arc<Report<u64>> = Arc::new(move |_, seq, result, _| {
        seen.lock().unwrap().push((seq, result.is_ok()));
    });
    let mut lanes = CommitLanes::open(Box::new(ledger), 2, &report).unwrap();
    assert_eq!(lanes.len(), 2, "PostgreSQL opens a second lane");
    for seq in 2..=13 {
        let mut group = batches(seq..=seq);
        if seq == 9 {
            group[0].key = key(1);
        }
        // Even groups are slow to write (2,000 awards), odd ones quick: a command written
        // ahead of its turn would take its sequence number before the slower group's.
        if seq % 2 == 0 {
            group[0].awards.extend((0..2_000).map(|i| award(1_000 * seq + 100 + i, seq)));
        }
        let mut command = commands().remove(0);
        command.command_id = format!("c{seq}");
        let group = CommitGroup { batches: group, commands: vec![command], ..Default::default() };
        lanes.hand_over(group, seq).unwrap();
    }
    assert!(lanes.finish());
    let reports = reports.lock().unwrap().clone();
    assert_eq!(reports, (2..=13).map(|seq| (seq, seq < 9)).collect::<Vec<_>>());
    // Commit order, from the commit timestamps (on in the test cluster).
    let mut reader = PostgresLedger::open(&url).unwrap();
    let committed: Vec<i64> = reader
        .client()
        .query("SELECT seq FROM shake_batches ORDER BY pg_xact_commit_timestamp(xmin), seq", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(committed, (1..=8).collect::<Vec<i64>>());
    let logged: Vec<String> = reader
        .client()
        .query("SELECT command_id FROM shake_commands ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(logged, (2..=8).map(|seq| format!("c{seq}")).collect::<Vec<_>>());
}

/// The same epoch under another node is another term. A takeover committed on a primary alone
/// (its wait for the synchronous standbys cancelled) is missing from the standby promoted in
/// that primary's place, where another node may then win the same epoch. The row is set here
/// as that promoted primary would have it: the first node's commit, renewal and release all
/// find the term not theirs.
#[test]
fn the_same_epoch_under_another_holder_is_not_this_leaders() {
    let scratch = Scratch::new("ledger-holder");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("holder");
    let lease_for = Duration::from_secs(30);
    let mut ledger = PostgresLedger::open(&url).unwrap();
    let epoch = try_take(&mut ledger, "x", "127.0.0.1:1", lease_for).unwrap().unwrap();
    let term = Term::new(epoch, "x");
    ledger.lead(term.clone());
    ledger.commit_group(&CommitGroup { batches: batches(1..=1), ..Default::default() }).unwrap();
    ledger
        .client()
        .execute("UPDATE shake_leader SET holder = 'y', address = '127.0.0.1:2' WHERE id = 1", &[])
        .unwrap();
    let refused =
        ledger.commit_group(&CommitGroup { batches: batches(2..=2), ..Default::default() });
    match refused {
        Err(LedgerError::Fenced { held, current, holder }) => {
            assert_eq!((held, current, holder.as_str()), (epoch, epoch, "y"));
        }
        other => panic!("expected the commit fenced, got {other:?}"),
    }
    assert!(!lease::renew(ledger.client(), &term, lease_for).unwrap(), "renewed y's lease");
    lease::release(ledger.client(), &term).unwrap();
    let row = lease::current(ledger.client()).unwrap();
    assert_eq!((row.epoch, row.holder.as_str()), (epoch, "y"));
    assert!(row.expires_in_ms > 1_000, "x released y's lease: {row:?}");
    let seqs: Vec<i64> = ledger
        .client()
        .query("SELECT seq FROM shake_batches ORDER BY seq", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(seqs, vec![1], "the fenced group wrote nothing");
}

/// A group commit whose wait for the synchronous standbys was cancelled is committed on the
/// primary alone, which a standby promoted in its place would not know: it is reported failed,
/// so its awards are never answered (the allocator ends the term, and the next leader answers
/// from the log once its own takeover, and with it every commit before, has replicated). The
/// server speaks German: its warning is known by its code, not its English text.
#[test]
fn a_group_commit_whose_wait_was_cancelled_is_refused() {
    let scratch = Scratch::new("ledger-unreplicated");
    let server = PgServer::primary_in_german(&scratch.dir.join("pg"));
    let url = server.database("unreplicated");
    let (mut ledger, _) = leading(&url, "a");
    ledger.commit_group(&CommitGroup { batches: batches(1..=1), ..Default::default() }).unwrap();
    server.hold_commits("unreplicated");
    let committing = std::thread::spawn(move || {
        let group = CommitGroup { batches: batches(2..=2), ..Default::default() };
        (ledger.commit_group(&group), ledger)
    });
    let started = std::time::Instant::now();
    while server.waiting_commits() == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the commit never waited");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(server.cancel_waiting_commits(), 1);
    let (result, mut ledger) = committing.join().unwrap();
    match result {
        Err(LedgerError::Failed(why)) => assert!(why.contains("may not be replicated"), "{why}"),
        other => panic!("expected the commit refused as unreplicated, got {other:?}"),
    }
    let stored = server.admin("unreplicated", "SELECT count(*) FROM shake_batches")[0];
    assert_eq!(stored, 2, "committed on the primary all the same (hence never answered)");
    // Replicated again, the same session commits (the warning was taken with the refusal).
    server.release_commits();
    ledger.commit_group(&CommitGroup { batches: batches(3..=3), ..Default::default() }).unwrap();
}

/// A lease under a node's name at its address is taken back at once only by the process that
/// took it, at the epoch it took: a former process (a restart within the lease) or a second
/// process under the same name and address waits for it to expire.
#[test]
fn only_the_process_that_took_a_lease_takes_it_back() {
    let scratch = Scratch::new("lease-own");
    let server = PgServer::primary(&scratch.dir.join("pg"));
    let url = server.database("shake");
    let mut ledger = PostgresLedger::open(&url).unwrap();
    let (node, at, long) = ("a", "127.0.0.1:1", Duration::from_secs(30));
    let take = |ledger: &mut PostgresLedger, own| {
        lease::try_acquire(ledger.client(), node, at, long, own).unwrap()
    };
    let first = take(&mut ledger, lease::OwnLease::NeverTook).expect("the lease is free");
    assert_eq!(take(&mut ledger, lease::OwnLease::NeverTook), None, "a former process's");
    assert_eq!(take(&mut ledger, lease::OwnLease::TookAs(first - 1)), None, "an older epoch's");
    let again = take(&mut ledger, lease::OwnLease::TookAs(first));
    assert_eq!(again, Some(first + 1), "its own, taken back");
    assert_eq!(take(&mut ledger, lease::OwnLease::TookAs(first)), None, "no longer at that epoch");
}
