//! Several allocators, one leader: the process's life with a PostgreSQL ledger.
//!
//! ```text
//!   start --> standby --(lease won: epoch e)--> leader term e --(lease lost, fenced,
//!               ^  redirects edges: NOT_LEADER      |             commit failed)
//!               +-----------------------------------+
//! ```
//! - As a standby the allocator keeps its QUIC endpoint open and closes every edge connection
//!   with `NOT_LEADER`, naming the leader's address from the lease row; it looks at the lease
//!   every `standby_poll_ms` and takes it once expired ([`crate::ledger::lease`]).
//! - While standing by it follows the log: each look also reads what was committed since the
//!   last one (awards, delivery marks, commands) and replays it into a draw of its own, so
//!   pools, caps and the awards owed are warm ([`crate::ledger::follow`]). A look that finds
//!   the last commit it followed gone (a lost primary's, never replicated) follows the log
//!   again from its start.
//! - On winning, it reads the log to its end (what it has not followed, every stored answer
//!   and worker record; everything, if what it followed does not add up to the commit log),
//!   and serves; edges resend what is unanswered and get each answer exactly once.
//! - While leading, a renewal thread extends the lease every third of it. If the lease is
//!   taken over, or cannot be renewed before it would expire, the term stops at once
//!   (connections closed with `NOT_LEADER`); a commit refused as fenced, or failed with an
//!   unknown outcome, ends it too. Either way the allocator goes back to standby, and the next
//!   leader (maybe itself) rebuilds from the log, which settles any ambiguous commit.
//! - A clean stop (SIGTERM drain or SIGINT) releases the lease so a standby takes over at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shake_proto::ErrorCode;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, PostgresConfig};
use crate::draw::Draw;
use crate::ledger::follow::{FollowCursor, Followed, Following};
use crate::ledger::lease::{self, Term};
use crate::ledger::{LedgerError, LedgerStore, PostgresLedger, deadline, postgres as pg};
use crate::metrics::{FollowRestart, FollowRestartLabels, Leadership, LeadershipLabels};
use crate::service::{
    Listening, Rebuilt, Running, ServeError, Shared, Shutdown, TermEnd, blocking, lead, listen,
    lock, redirect_edges,
};

/// Starts an allocator on a PostgreSQL ledger: checks the database (and migrates its schema),
/// binds, and begins as a standby.
pub(crate) async fn start(config: Config, shutdown: Shutdown) -> Result<Running, ServeError> {
    let pg = config.postgres.clone().ok_or_else(|| {
        ServeError::Ledger(LedgerError::Failed("ledger = postgres needs [postgres]".into()))
    })?;
    let target = pg::Target::from_config(&pg)?;
    {
        // Fail the start, with the database's own words, on a wrong URL or a schema too new.
        let target = target.clone();
        blocking(move || PostgresLedger::open(&target).map(drop)).await?;
    }
    let Listening { endpoint, quic_addr, shared, metrics_addr, admin_addr } =
        listen(&config, true, &shutdown).await?;
    let node = Node {
        target,
        advertise: pg.advertise.unwrap_or(quic_addr),
        pg,
        config,
        endpoint,
        shared,
        shutdown,
        took_lease_as: Arc::new(AtomicI64::new(NEVER_TOOK)),
        reading: Arc::new(AtomicBool::new(false)),
    };
    let done = tokio::spawn(node.run());
    Ok(Running { quic_addr, metrics_addr, admin_addr, done })
}

struct Node {
    config: Config,
    pg: PostgresConfig,
    /// The database, as `pg` says to reach it.
    target: pg::Target,
    advertise: SocketAddr,
    endpoint: quinn::Endpoint,
    shared: Shared,
    shutdown: Shutdown,
    /// The epoch under which this process last took the lease ([`NEVER_TOOK`]: none): a lease
    /// under its name at another epoch is a former (or another) process's, and it waits for it
    /// to expire ([`lease::OwnLease`]).
    took_lease_as: Arc<AtomicI64>,
    /// A takeover read is running (perhaps one its term left behind): no second one starts
    /// beside it, each holding a session and a whole rebuilt ledger.
    reading: Arc<AtomicBool>,
}

/// [`Node::took_lease_as`] before this process has taken the lease.
const NEVER_TOOK: i64 = -1;

/// How a leadership term ended.
enum TermOutcome {
    /// The process was asked to stop.
    Shutdown,
    /// The lease was lost or a commit failed: back to standby.
    Lost,
    /// The term could not start (the ledger unreadable): back to standby after a lease, so
    /// that another allocator may take the lease this one released.
    Failed,
}

/// A lease won: its epoch, and the instant just before the statement that won it was sent
/// (the server dated the lease from that statement, later: a lease counted from here ends,
/// for the leader, no later than it does for the server; counted from before the look's
/// connection, which may take seconds, it could end before the first renewal was tried).
#[derive(Debug, Clone, Copy)]
struct Won {
    epoch: i64,
    asked_at: Instant,
}

/// What one look at the lease found.
enum Look {
    Won(Won),
    /// Another node leads; what the log gained since the last look.
    Led(lease::LeaderRow, Followed),
}

/// What a standby keeps warm: a draw with every command and award it has read from the log
/// replayed, and what it followed of the rest ([`Following`]: the awards owed, the cursors).
struct Warm {
    draw: Draw,
    following: Following,
}

impl Warm {
    fn new(config: &Config) -> Self {
        Self { draw: Draw::new(&config.rounds), following: Following::default() }
    }

    /// Applies the look's commands, then replays its awards, then takes in its marks.
    fn follow(&mut self, followed: &Followed) -> Result<(), ServeError> {
        crate::service::replay(&mut self.draw, &followed.commands, &followed.awards)?;
        self.following.take(followed);
        Ok(())
    }
}

impl Node {
    fn stopping(&self) -> bool {
        self.shutdown.drain.is_cancelled() || self.shutdown.stop.is_cancelled()
    }

    async fn run(self) -> Result<(), ServeError> {
        let result = async {
            while let Some((won, warm)) = self.stand_by().await? {
                match self.lead_term(won, warm).await? {
                    TermOutcome::Shutdown => break,
                    TermOutcome::Lost => {}
                    TermOutcome::Failed => {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(self.pg.lease_ms)) => {}
                            () = self.shutdown.requested() => break,
                        }
                    }
                }
            }
            Ok(())
        }
        .await;
        self.endpoint.close(ErrorCode::NoError.code().into(), b"allocator stopping");
        tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await.ok();
        result
    }

    /// Redirects edges and follows the log until this allocator wins the lease
    /// (`Some(won)`, with what it followed) or is stopped.
    async fn stand_by(&self) -> Result<Option<(Won, Warm)>, ServeError> {
        self.shared.health.standby.store(true, Ordering::Relaxed);
        self.shared.metrics.not_leading();
        let leader = Arc::new(Mutex::new(String::new()));
        let redirect = tokio::spawn(redirect_edges(
            self.endpoint.clone(),
            leader.clone(),
            (self.shared.metrics.clone(), self.shared.edge_handshakes.clone()),
        ));
        let poll = Duration::from_millis(self.pg.standby_poll_ms);
        // The page of the log a look reads: halved when one is left behind at its deadline (a
        // slow database still lets the standby advance), back up as pages come whole.
        let mut page = self.pg.follow_page_awards;
        let mut client: Option<PostgresLedger> = None;
        let mut last_holder = None;
        let mut warm = Warm::new(&self.config);
        self.shared.metrics.awards_followed.set(0);
        // Following the log again from its start, after what it had followed did not replay,
        // until it has caught up.
        let mut refollowing = false;
        let won = loop {
            if self.stopping() {
                break Ok(None);
            }
            let (target, node, advertise) =
                (self.target.clone(), self.pg.node.clone(), self.advertise.to_string());
            let lease_for = Duration::from_millis(self.pg.lease_ms);
            let mut held = client.take();
            let after = warm.following.cursor;
            let took_lease_as = self.took_lease_as.clone();
            let mut looked = tokio::task::spawn_blocking(move || {
                look_within(
                    held.take(),
                    &target,
                    (node, advertise, took_lease_as),
                    lease_for,
                    (after, page),
                )
            });
            let looked = tokio::select! {
                looked = &mut looked => looked,
                () = self.shutdown.requested() => {
                    self.let_go_of(looked).await;
                    break Ok(None);
                }
            };
            let (held, look) =
                looked.map_err(|e| ServeError::Panicked(format!("lease task: {e}")))?;
            client = held;
            match look {
                Ok(Look::Won(won)) => break Ok(Some(won)),
                Ok(Look::Led(row, followed)) => {
                    if last_holder.as_ref() != Some(&(row.epoch, row.holder.clone())) {
                        let here = self.advertise.to_string();
                        let own = row.holder == self.pg.node && row.address == here;
                        if own && row.epoch != self.took_lease_as.load(Ordering::SeqCst) {
                            tracing::info!(
                                epoch = row.epoch,
                                expires_in_ms = row.expires_in_ms,
                                "standby: the lease is this node's from a former process; \
                                 waiting for it to expire (a standby may take it first)"
                            );
                        } else if lease::names_another_process(&row, &self.pg.node, &here) {
                            tracing::error!(
                                epoch = row.epoch,
                                node = %row.holder,
                                address = %row.address,
                                "another allocator leads under this node's name: give each \
                                 allocator its own [postgres] node (this one waits its turn)"
                            );
                        } else {
                            tracing::info!(
                                epoch = row.epoch,
                                holder = %row.holder,
                                address = %row.address,
                                "standby: another allocator leads"
                            );
                        }
                        last_holder = Some((row.epoch, row.holder.clone()));
                    }
                    // First: edges are sent to whom the lease names now, whatever the log says.
                    *lock(&leader) = row.address;
                    if followed.last_commit_gone {
                        // Not a refusal: the log is settled, only what was followed of it is not.
                        tracing::warn!(
                            commit_id = warm.following.cursor.commit_id,
                            epoch = warm.following.cursor.commit_epoch,
                            "standby: the last commit it followed is gone from the log (seen on \
                             a primary since lost, never replicated); following the log again \
                             from its start"
                        );
                        self.restart_following(FollowRestart::CommitLost);
                        (warm, refollowing, page) =
                            (Warm::new(&self.config), false, self.pg.follow_page_awards);
                        continue;
                    }
                    if let Err(err) = warm.follow(&followed) {
                        // The log is intact (the check above), so this is most likely the
                        // configuration's refusal; but the warm state is read again from the
                        // log's start once before the process ends on it (through the cleanup
                        // below), which costs a read and spares a standby any doubt this check
                        // does not see.
                        if refollowing {
                            break Err(err);
                        }
                        tracing::warn!(
                            %err,
                            "standby: what it followed does not replay; following the log again \
                             from its start"
                        );
                        self.restart_following(FollowRestart::DidNotReplay);
                        (warm, refollowing, page) =
                            (Warm::new(&self.config), true, self.pg.follow_page_awards);
                        continue;
                    }
                    let read = i64::try_from(warm.following.read).unwrap_or(i64::MAX);
                    self.shared.metrics.awards_followed.set(read);
                    // A full page: the log is further ahead, read on at once. Waiting a poll
                    // between pages would cap the following at a page a poll (about 120 k
                    // awards a second at the defaults), below what a leader can commit: the
                    // standby would fall ever further behind, and a takeover's read grow.
                    if followed.awards.len() >= page as usize {
                        page = page.saturating_mul(2).min(self.pg.follow_page_awards);
                        continue;
                    }
                    refollowing = false;
                }
                Err(err) => {
                    if let LedgerError::NoAnswer { what: FOLLOW, .. } = err {
                        page = (page / 2).max(MIN_FOLLOW_PAGE);
                    }
                    tracing::warn!(%err, page, "standby: cannot read the lease or the log; retrying")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                () = self.shutdown.requested() => break Ok(None),
            }
        };
        redirect.abort();
        let _ = redirect.await;
        // Closing a blocking client blocks: never on the async runtime's threads.
        if let Some(client) = client {
            tokio::task::spawn_blocking(move || drop(client));
        }
        Ok(won?.map(|won| (won, warm)))
    }

    /// The standby's warm state is dropped, to follow the log again from its start.
    fn restart_following(&self, cause: FollowRestart) {
        self.shared.metrics.follow_restarts.get_or_create(&FollowRestartLabels { cause }).inc();
        self.shared.metrics.awards_followed.set(0);
    }

    /// Leads under the epoch `won` until the lease is lost, a commit fails, or the process stops.
    async fn lead_term(&self, won: Won, warm: Warm) -> Result<TermOutcome, ServeError> {
        let Won { epoch, asked_at } = won;
        tracing::info!(
            epoch,
            node = %self.pg.node,
            followed = warm.following.read,
            "leader: reading the log to its end"
        );
        self.count_term(Leadership::Won);
        let won = Term::new(epoch, &self.pg.node);
        if self.reading.load(Ordering::SeqCst) {
            tracing::warn!(
                epoch,
                "leader: an earlier takeover read, left behind, still runs; the lease released, \
                 standing by"
            );
            self.release_lease(&won).await;
            self.count_term(Leadership::Failed);
            return Ok(TermOutcome::Failed);
        }
        let started = Instant::now();
        let term_stop = self.shutdown.stop.child_token();
        let lost = Arc::new(AtomicBool::new(false));
        let term_over = CancellationToken::new();
        // Renewed from the moment it is won: on a large ledger the read below can outlast a
        // lease, and a lease lost to the read would hand the term to a standby that must then
        // read it all again itself.
        let renewer = match spawn_renewer(
            self.target.clone(),
            (self.pg.lease_ms, asked_at),
            won.clone(),
            lost.clone(),
            term_stop.clone(),
            term_over.clone(),
        ) {
            Ok(renewer) => renewer,
            Err(err) => {
                self.release_lease(&won).await;
                return Err(err);
            }
        };
        let target = self.target.clone();
        let config = self.config.clone();
        let held = won.clone();
        let (read_tx, read) = tokio::sync::oneshot::channel();
        let read_the_log = move || -> Result<_, ServeError> {
            // Tests only: a ledger that cannot be read at the term's start.
            if shake_ops::supervise::failpoint("allocator-takeover-read-fails") {
                return Err(ServeError::Ledger(LedgerError::Failed("failpoint".into())));
            }
            let mut ledger = PostgresLedger::open(&target)?;
            ledger.lead(held);
            let (rebuilt, tail) = read_to_the_end(&mut ledger, &config, warm)?;
            // Tests only: a read that outlasts the lease, as one of millions of awards would.
            if shake_ops::supervise::failpoint("allocator-slow-takeover-read") {
                std::thread::sleep(Duration::from_secs(4));
            }
            Ok((Box::new(ledger) as Box<dyn LedgerStore>, rebuilt, tail))
        };
        // On a thread of its own, raced against the term's end and the process's stop: a read
        // of millions of awards takes seconds, and one from a database that hangs never ends.
        // A read left behind ends with its thread, the process exit not waiting for it.
        self.reading.store(true, Ordering::SeqCst);
        let reading = self.reading.clone();
        let reader =
            std::thread::Builder::new().name("ledger-takeover-read".into()).spawn(move || {
                // Cleared however the read ends, a panic included.
                let _done = ClearOnDrop(reading);
                let _ = read_tx.send(read_the_log());
            });
        if let Err(err) = reader {
            self.reading.store(false, Ordering::SeqCst);
            stop_renewing(&term_over, renewer).await;
            self.release_lease(&won).await;
            return Err(ServeError::Panicked(format!("spawning the takeover read: {err}")));
        }
        // None: the term ended (its lease lost) or the process stops before the read did.
        let opened = tokio::select! {
            read = read => Some(
                read.map_err(|_| ServeError::Panicked("the takeover read panicked".into()))
                    .and_then(|read| read),
            ),
            () = term_stop.cancelled() => None,
            () = self.shutdown.requested() => None,
        };
        let (store, rebuilt) = match opened {
            Some(Ok((store, rebuilt, tail))) if !lost.load(Ordering::SeqCst) => {
                self.shared.metrics.takeover_tail_awards.set(tail as i64);
                (store, rebuilt)
            }
            failed => {
                // A store read to its end, its term lost meanwhile: closing its client blocks,
                // which panics on the runtime.
                let failed = failed.map(|read| {
                    read.map(|(store, _, _)| drop(tokio::task::spawn_blocking(move || drop(store))))
                });
                stop_renewing(&term_over, renewer).await;
                // The lease still names this node, renewed through the read. Kept, this node's
                // next look would take it again at once (a lease naming its own node is its
                // own) and fail the same way, for ever, while a standby that can read the log
                // never gets in: released, any standby may take it now.
                self.release_lease(&won).await;
                return match failed {
                    None if self.stopping() => {
                        tracing::info!(epoch, "leader: stopped during the takeover read");
                        self.count_term(Leadership::Stopped);
                        Ok(TermOutcome::Shutdown)
                    }
                    None | Some(Ok(_)) => {
                        tracing::warn!(
                            epoch,
                            "leader: lost the lease while reading the log; standing by"
                        );
                        self.count_term(Leadership::Lost);
                        Ok(TermOutcome::Lost)
                    }
                    // This node's rounds cannot replay the ledger (a round in its configuration
                    // that a command added, a changed seed or pool): no retry can change that.
                    Some(Err(err)) if err.is_replay_refusal() => {
                        tracing::error!(
                            %err,
                            epoch,
                            "leader: this allocator's configuration does not replay the ledger; \
                             stopping, the lease released for another allocator"
                        );
                        self.count_term(Leadership::Failed);
                        Err(err)
                    }
                    Some(Err(err @ ServeError::Panicked(_))) => {
                        self.count_term(Leadership::Failed);
                        Err(err)
                    }
                    Some(Err(err)) => {
                        tracing::warn!(
                            %err,
                            epoch,
                            "leader: could not read the ledger; the lease released, standing by"
                        );
                        self.count_term(Leadership::Failed);
                        Ok(TermOutcome::Failed)
                    }
                };
            }
        };
        let term = Shutdown { drain: self.shutdown.drain.clone(), stop: term_stop.clone() };
        self.shared.health.standby.store(false, Ordering::Relaxed);
        self.shared.metrics.leader_epoch.set(epoch);
        let serving = match lead(
            &self.config,
            self.endpoint.clone(),
            TermEnd::CloseConnections,
            store,
            rebuilt,
            &self.shared,
            term,
        ) {
            Ok(serving) => serving,
            Err(err) => {
                stop_renewing(&term_over, renewer).await;
                self.release_lease(&won).await;
                return Err(err);
            }
        };
        tracing::info!(
            epoch,
            read_ms = started.elapsed().as_millis() as u64,
            "leader: serving edges"
        );
        let result = match serving.await {
            Ok(result) => result,
            Err(err) => Err(ServeError::Panicked(format!("leader term: {err}"))),
        };
        stop_renewing(&term_over, renewer).await;
        self.shared.health.standby.store(true, Ordering::Relaxed);
        self.shared.metrics.not_leading();
        match result {
            Ok(()) if lost.load(Ordering::SeqCst) => {
                tracing::warn!(epoch, "leader: lost the lease; standing by");
                self.count_term(Leadership::Lost);
                Ok(TermOutcome::Lost)
            }
            Ok(()) => {
                self.release_lease(&won).await;
                self.count_term(Leadership::Stopped);
                Ok(TermOutcome::Shutdown)
            }
            // A commit thread left behind when the lease was lost (a database that hangs) is
            // the lost lease's doing: counted below as lost.
            Err(ServeError::Ledger(err))
                if !(lost.load(Ordering::SeqCst)
                    && matches!(err, LedgerError::NoAnswer { .. })) =>
            {
                // Fenced, or a commit with an unknown outcome: nothing unconfirmed was
                // announced; the next leader rebuilds from the log.
                tracing::error!(%err, epoch, "leader: the ledger refused a commit; standing by");
                self.count_term(if matches!(err, LedgerError::Fenced { .. }) {
                    Leadership::Fenced
                } else {
                    Leadership::Failed
                });
                if self.stopping() {
                    // A drain whose last commit failed ends the process with a failure, as on
                    // fjall: an exit of 0 reads as "every answer went out" to an operator and
                    // to the scripts that check it. The lease released (a fenced term's is
                    // another's, and its release matches nothing).
                    self.release_lease(&won).await;
                    return Err(ServeError::Ledger(err));
                }
                Ok(TermOutcome::Lost)
            }
            Err(err) if lost.load(Ordering::SeqCst) => {
                // The lease was lost (a takeover while this node was frozen, a database that
                // hangs): the term's threads ending under it are the consequence, not a
                // failure of the process; unless it drains, as above.
                if self.stopping() && matches!(err, ServeError::Ledger(_)) {
                    return Err(err);
                }
                tracing::warn!(%err, epoch, "leader: lost the lease; standing by");
                self.count_term(Leadership::Lost);
                Ok(TermOutcome::Lost)
            }
            Err(other) => {
                // A panic while serving ends the process: the lease released, so that a
                // standby takes over at its next look rather than after the lease.
                self.release_lease(&won).await;
                Err(other)
            }
        }
    }

    /// A look under way when the process is asked to stop: waited for, and a lease it won
    /// released. Left running, a look that won took the lease with nobody to serve or release
    /// it, and every standby waited a lease.
    async fn let_go_of(
        &self,
        look: tokio::task::JoinHandle<(Option<PostgresLedger>, Result<Look, LedgerError>)>,
    ) {
        let Ok((held, look)) = look.await else { return };
        // Closing a blocking client blocks: never on the async runtime's threads (there it
        // panics), whatever the look found.
        tokio::task::spawn_blocking(move || drop(held));
        if let Ok(Look::Won(Won { epoch, .. })) = look {
            self.release_lease(&Term::new(epoch, &self.pg.node)).await;
        }
    }

    /// Gives up `term`'s lease, so that a standby may take it at its next look ([`lease::release`]
    /// does not wait for the synchronous standbys). Waits at most a lease, for a database that
    /// does not answer: past that, the lease has expired anyway.
    async fn release_lease(&self, term: &Term) {
        let (target, term) = (self.target.clone(), term.clone());
        let epoch = term.epoch;
        let lease_for = Duration::from_millis(self.pg.lease_ms);
        let release = blocking(move || {
            deadline::within(lease_for, "lease release", move || {
                lease::release(&mut pg::connect(&target)?.client, &term)
            })
            .and_then(|released| released)
        });
        if let Err(err) = release.await {
            tracing::warn!(%err, epoch, "could not release the lease: a standby waits for it to expire");
        }
    }

    fn count_term(&self, outcome: Leadership) {
        self.shared.metrics.leadership.get_or_create(&LeadershipLabels { outcome }).inc();
    }
}

/// Clears its flag when dropped.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// What a look's read of the log's next page is called when it is left behind.
const FOLLOW: &str = "log follow";
/// The smallest page a look reads, however slow the database.
const MIN_FOLLOW_PAGE: u32 = 1_000;

/// One look ([`look_at_lease`], then the log's next page if another leads), each part within a
/// lease on the session `held` (or a new one). A part left behind on a database that hangs
/// takes its session with it, its host skipped, and the next look connects afresh (to a
/// promoted primary, perhaps); a page left behind makes the next one half as long.
fn look_within(
    held: Option<PostgresLedger>,
    target: &pg::Target,
    (node, advertise, took_lease_as): (String, String, Arc<AtomicI64>),
    lease_for: Duration,
    (after, page): (FollowCursor, u32),
) -> (Option<PostgresLedger>, Result<Look, LedgerError>) {
    let connected = match held {
        Some(connected) if !connected.is_closed() => connected,
        _ => match PostgresLedger::open_within(target, lease_for) {
            Ok(connected) => connected,
            Err(err) => return (None, Err(err)),
        },
    };
    let host = connected.host().to_owned();
    let left_behind = Arc::new(AtomicBool::new(false));
    let told = left_behind.clone();
    let seen = pg::within_on_host(&host, lease_for, "lease look", move || {
        let mut held = Some(connected);
        let seen = look_at_lease(&mut held, (&node, &advertise, &took_lease_as), lease_for, &told);
        (held, seen)
    });
    let (held, row) = match seen {
        Ok((held, Ok(LeaseSeen::Won(won)))) => return (held, Ok(Look::Won(won))),
        Ok((Some(held), Ok(LeaseSeen::Led(row)))) => (held, row),
        Ok((held, Ok(LeaseSeen::Led(_)))) => {
            return (held, Err(LedgerError::Failed("the look kept no session".into())));
        }
        Ok((held, Err(err))) => return (held, Err(err)),
        Err(err) => {
            left_behind.store(true, Ordering::SeqCst);
            return (None, Err(err));
        }
    };
    let followed = pg::within_on_host(&host, lease_for, FOLLOW, move || {
        let mut held = held;
        let followed = held.follow(&after, i64::from(page));
        (held, followed)
    });
    match followed {
        Ok((held, Ok(followed))) => (Some(held), Ok(Look::Led(row, followed))),
        // A failed statement drops the session: the next look reconnects.
        Ok((_, Err(err))) | Err(err) => (None, Err(err)),
    }
}

/// What a look at the lease found.
enum LeaseSeen {
    Won(Won),
    Led(lease::LeaderRow),
}

/// One look at the lease on the session in `ledger`: take it if it is free, else say who holds
/// it. Drops the session on a failed statement (the next look reconnects, finding a promoted
/// primary); a takeover refused as unreplicated keeps it. `took_lease_as` is the epoch this
/// process last took the lease under, set at each take. A look `left_behind` at its deadline
/// takes nothing: a newer look may hold the lease by now, and a take would end its term; one
/// that won all the same gives the lease back.
fn look_at_lease(
    ledger: &mut Option<PostgresLedger>,
    (node, advertise, took_lease_as): (&str, &str, &AtomicI64),
    lease_for: Duration,
    left_behind: &AtomicBool,
) -> Result<LeaseSeen, LedgerError> {
    let left = || LedgerError::Failed("a look left behind at its deadline".into());
    let mut connected = ledger.take().ok_or_else(|| LedgerError::Failed("no session".into()))?;
    // Not fatal: a role not allowed to end the leader's sessions still takes the lease once
    // they end by themselves.
    match lease::end_expired_commits(connected.client()) {
        Ok(0) => {}
        Ok(ended) => tracing::warn!(ended, "standby: ended the expired leader's commits in flight"),
        Err(err) => tracing::warn!(%err, "standby: could not end the expired leader's commits"),
    }
    connected.take_unreplicated();
    let own = match took_lease_as.load(Ordering::SeqCst) {
        NEVER_TOOK => lease::OwnLease::NeverTook,
        epoch => lease::OwnLease::TookAs(epoch),
    };
    if left_behind.load(Ordering::SeqCst) {
        return Err(left());
    }
    let asked_at = Instant::now();
    let taken = lease::try_acquire(connected.client(), node, advertise, lease_for, own)?;
    if let Some(epoch) = taken {
        if left_behind.load(Ordering::SeqCst) {
            lease::release(connected.client(), &Term::new(epoch, node))?;
            return Err(left());
        }
        took_lease_as.store(epoch, Ordering::SeqCst);
    }
    // Tests only: a look that has taken the lease, or found it held, and has yet to return.
    shake_ops::supervise::failpoint_hold("allocator-slow-look", Duration::from_secs(1));
    let look = match taken {
        // Committed on the primary alone: if the primary is lost, the standby promoted in its
        // place never saw this takeover, and another node may win the same epoch there. Not
        // taken: the next look takes it again (the row names this node) once replication
        // works, under the next epoch.
        Some(epoch) if connected.take_unreplicated() => {
            *ledger = Some(connected);
            return Err(LedgerError::Failed(format!(
                "the takeover of epoch {epoch}: its wait for the synchronous standbys was \
                 cancelled (committed on the primary alone); not taken"
            )));
        }
        Some(epoch) => LeaseSeen::Won(Won { epoch, asked_at }),
        None => LeaseSeen::Led(lease::current(connected.client())?),
    };
    *ledger = Some(connected);
    Ok(look)
}

/// A new leader's read: the log after what it followed, and the stored answers and worker
/// records; the awards owed come from what it followed ([`Following`]), so the read is as
/// long as the tail, not the ledger. If the last commit it followed is gone, the tail does not
/// replay on it, or the awards it read do not add up to what the commit log counts (none
/// should happen), it replays the whole ledger instead.
/// Returns the rebuilt state and how many awards it read.
fn read_to_the_end(
    ledger: &mut PostgresLedger,
    config: &Config,
    mut warm: Warm,
) -> Result<(Rebuilt, u64), ServeError> {
    let read = ledger.read_for_takeover(&warm.following.cursor)?;
    let gone = read.tail.last_commit_gone;
    // A tail that does not replay on what was followed is the same doubt: the whole ledger
    // settles it (and a configuration that does not replay it fails there too).
    let refused = if gone { None } else { warm.follow(&read.tail).err() };
    if let Some(err) = &refused {
        tracing::warn!(%err, "leader: the log's tail does not replay on what this standby followed");
    }
    if gone || refused.is_some() || !warm.following.adds_up() {
        tracing::warn!(
            last_commit_gone = gone,
            read = warm.following.read,
            committed = warm.following.committed,
            "leader: what this standby followed is not the ledger (its last commit is gone: \
             seen on a primary since lost, never replicated; or the awards read do not add up \
             to the commit log); replaying the whole ledger"
        );
        let snapshot = ledger.snapshot()?;
        let replayed = snapshot.awards.len() as u64;
        return Ok((Rebuilt::from_snapshot(config, snapshot)?, replayed));
    }
    let tail = read.tail.awards.len() as u64;
    tracing::info!(
        tail,
        total = warm.following.read,
        owed = warm.following.owed(),
        "leader: log read to its end"
    );
    let rebuilt = Rebuilt {
        draw: warm.draw,
        answers: read.answers,
        workers: read.workers,
        commands: read.commands,
        owed: warm.following.into_owed(),
    };
    Ok((rebuilt, tail))
}

/// Ends a term's renewals (`term_over`) and waits for the renewer's thread, off the runtime.
async fn stop_renewing(term_over: &CancellationToken, renewer: std::thread::JoinHandle<()>) {
    term_over.cancel();
    let _ = tokio::task::spawn_blocking(move || renewer.join()).await;
}

/// Renews the lease every third of it on a connection of its own. On a takeover, or when no
/// renewal succeeded for a whole lease (a standby may have taken over by now), sets `lost`
/// and stops the term.
fn spawn_renewer(
    target: pg::Target,
    (lease_ms, won_before): (u64, Instant),
    term: Term,
    lost: Arc<AtomicBool>,
    term_stop: CancellationToken,
    term_over: CancellationToken,
) -> Result<std::thread::JoinHandle<()>, ServeError> {
    let lease_for = Duration::from_millis(lease_ms);
    let every = lease_for / 3;
    std::thread::Builder::new()
        .name("lease-renewal".into())
        .spawn(move || {
            let mut client: Option<pg::Session> = None;
            // The lease as won: from just before the statement that won it. The first renewal
            // goes at once (the takeover's statement and the term's start took part of it).
            let mut renewed_at = won_before;
            let mut first = true;
            let epoch = term.epoch;
            let give_up = |why: &str| {
                tracing::error!(epoch, why, "leader: stopping this term");
                lost.store(true, Ordering::SeqCst);
                term_stop.cancel();
            };
            loop {
                let wait = match (first, client.is_some()) {
                    (true, _) => Duration::ZERO,
                    (false, true) => every,
                    (false, false) => Duration::from_millis(100),
                };
                first = false;
                let deadline = Instant::now() + wait;
                while Instant::now() < deadline {
                    if term_over.is_cancelled() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20).min(wait));
                }
                let attempt_at = Instant::now();
                // The attempt may not outlast the lease: a database that hangs would otherwise
                // hold this thread, and the term would serve on past its lease (its commits
                // hung too, its edges waiting on answers that never come).
                let Some(left) = lease_for.checked_sub(renewed_at.elapsed()) else {
                    return give_up("the lease could not be renewed before it expired");
                };
                let (held, target, term) = (client.take(), target.clone(), term.clone());
                // Connected within what is left of the lease too (a connection tries each host
                // for its own deadline, longer than a lease); then the renewal within what is
                // left after it, on the session's host, which later connections skip if the
                // renewal is left behind there.
                let session = match held {
                    Some(session) if !session.client.is_closed() => Ok(session),
                    _ => deadline::within(left, "connection for the renewal", move || {
                        pg::connect(&target)
                    })
                    .and_then(|connected| connected),
                };
                let renewed = session.and_then(|mut session| {
                    let host = session.host.clone();
                    let left = lease_for.saturating_sub(renewed_at.elapsed());
                    pg::within_on_host(&host, left, "lease renewal", move || {
                        let renewed = lease::renew(&mut session.client, &term, lease_for)?;
                        Ok::<_, LedgerError>((session, renewed))
                    })
                    .and_then(|renewal| renewal)
                });
                match renewed {
                    Ok((connected, true)) => {
                        client = Some(connected);
                        renewed_at = attempt_at;
                    }
                    Ok((_, false)) => {
                        return give_up(
                            "another allocator took the lease, or it ran out before the renewal \
                             reached the database",
                        );
                    }
                    Err(err) => {
                        tracing::warn!(%err, epoch, "leader: lease renewal failed; retrying");
                        // Measured from before the last good attempt: errs on the early side.
                        if renewed_at.elapsed() >= lease_for {
                            return give_up("the lease could not be renewed before it expired");
                        }
                    }
                }
            }
        })
        .map_err(|e| ServeError::Panicked(format!("spawning the lease renewal thread: {e}")))
}
