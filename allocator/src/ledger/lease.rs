//! Leadership among several allocators sharing one PostgreSQL ledger: a lease row
//! (`shake_leader`) with an epoch.
//!
//! - A standby takes the lease only once it has expired (by the database's clock, the only
//!   clock consulted), bumping the epoch; the holder renews it well before it expires.
//! - Every group commit key-share locks the row and checks its term (epoch and holder, see
//!   [`Term`]) inside its transaction
//!   (`PostgresLedger::commit_group`), so once a takeover commits, the old leader (paused,
//!   partitioned, or slow) commits nothing more, whatever its own clock says. The lease's
//!   duration only decides how soon a standby may take over, never whether two leaders can
//!   both write.
//! - The epoch is a key of the row (a unique index): a takeover changes it, so it waits for
//!   the commits in flight; a renewal or a release does not, so neither waits for any commit
//!   (`FOR KEY SHARE` does not conflict with an update that leaves every key as it was).
//! - A leader that stops cleanly releases the lease (expires it now), so a standby takes over
//!   at its next look instead of a lease later.

use std::time::Duration;

use postgres::Client;

use super::LedgerError;

/// A leader's term as the lease row names it: the epoch and the node that won it. Two nodes
/// can each believe they won the same epoch: one on a primary since lost, whose takeover was
/// never replicated (its wait for the synchronous standbys cancelled), the other on the standby
/// promoted in its place. So commits, renewals and releases check both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// The epoch won.
    pub epoch: i64,
    /// The node that won it (`[postgres] node`).
    pub holder: String,
}

impl Term {
    /// The term `holder` won as `epoch` ([`try_acquire`]).
    pub fn new(epoch: i64, holder: &str) -> Self {
        Self { epoch, holder: holder.to_owned() }
    }
}

/// Who leads now, as the ledger says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRow {
    /// Bumped by each takeover; 0 before anyone led.
    pub epoch: i64,
    /// The holder's node name ("" before anyone led).
    pub holder: String,
    /// The QUIC address its edges should use (what a standby redirects them to).
    pub address: String,
    /// Milliseconds until the lease expires (negative: expired), by the database's clock.
    pub expires_in_ms: i64,
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Reads the lease row.
pub fn current(client: &mut Client) -> Result<LeaderRow, LedgerError> {
    let row = client.query_one(
        "SELECT epoch, holder, address, \
         (extract(epoch FROM expires_at - now()) * 1000)::int8 FROM shake_leader WHERE id = 1",
        &[],
    )?;
    Ok(LeaderRow {
        epoch: row.get(0),
        holder: row.get(1),
        address: row.get(2),
        expires_in_ms: row.get(3),
    })
}

/// Which unexpired lease under this node's name, at this address, may be taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnLease {
    /// This process took the lease last under this epoch (a term it lost, a takeover that did
    /// not replicate): still at that epoch, it takes it back at once.
    TookAs(i64),
    /// This process has not taken the lease: one under its name is a former process's (or
    /// another process's under the same name and address), and it waits for it to expire
    /// like any standby. A restart within the lease (systemd's, a second after a crash) had
    /// taken it back at once: cold, it read the whole ledger while the warm standby waited,
    /// and a fault that came back with it kept every standby out for ever.
    NeverTook,
}

/// Takes the lease if it has expired (or is this node's own, the same node name at the same
/// address, and `own` says it may be taken back): returns the new epoch, or `None` while
/// another holds it.
///
/// The address is part of "own": two processes under one `[postgres] node` (a rolling update
/// that starts the new before it stops the old, a configuration cloned to another host) each
/// took the lease from the other as its own, for as long as both ran, every flip closing the
/// edges' connections. Now the second waits for the lease to expire, and says why
/// ([`names_another_process`]).
pub fn try_acquire(
    client: &mut Client,
    node: &str,
    address: &str,
    lease: Duration,
    own: OwnLease,
) -> Result<Option<i64>, LedgerError> {
    // The term is recorded in the same statement (one transaction): `shake_terms` is the
    // history of leaders, and its row's transaction dates the takeover.
    let row = client.query_opt(
        "WITH won AS (UPDATE shake_leader SET epoch = epoch + 1, holder = $1, address = $2, \
         acquired_at = now(), expires_at = now() + $3 * interval '1 millisecond' \
         WHERE id = 1 AND (expires_at <= now() OR (epoch = $4 AND holder = $1 AND address = $2) \
         OR holder = '') \
         RETURNING epoch, holder, address, acquired_at) \
         INSERT INTO shake_terms SELECT epoch, holder, address, acquired_at FROM won RETURNING epoch",
        // No epoch is negative: a process that never took the lease matches none.
        &[&node, &address, &millis(lease), &match own {
            OwnLease::TookAs(epoch) => epoch,
            OwnLease::NeverTook => -1,
        }],
    )?;
    Ok(row.map(|row| row.get(0)))
}

/// Whether the lease `row` (unexpired) is held under this node's name by another process (at
/// another address): the operator gave two allocators one `[postgres] node`.
pub fn names_another_process(row: &LeaderRow, node: &str, address: &str) -> bool {
    row.holder == node && row.address != address && row.expires_in_ms > 0
}

/// Once the lease has run out, ends the database sessions still holding the lease row: the
/// commits in flight of the leader whose lease it was. A leader frozen inside a group commit's
/// `COPY` (a paused process, a stalled host) is a session the server sees busy waiting for
/// rows, not idle, so neither `idle_in_transaction_session_timeout` nor `statement_timeout`
/// ends it (the server notices a timeout only when the next rows arrive), and its key-share
/// lock holds the takeover off for as long as it stays frozen. Ending such a session is what
/// fencing does to its commit anyway (refused once the epoch moves): rolled back, nothing
/// written; its leader, if it wakes, finds the connection gone and ends its term. A commit
/// holds the row share lock on `shake_leader` (its `FOR KEY SHARE`); no other ledger
/// statement takes that mode. Returns how many sessions were ended. The role must be allowed
/// to signal the leader's sessions: the same role for every allocator (or
/// `pg_signal_backend`).
pub fn end_expired_commits(client: &mut Client) -> Result<usize, LedgerError> {
    let ended = client.query(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
         WHERE l.locktype = 'relation' AND l.relation = 'shake_leader'::regclass \
         AND l.mode = 'RowShareLock' AND l.granted AND l.pid <> pg_backend_pid() \
         AND EXISTS (SELECT 1 FROM shake_leader WHERE id = 1 AND expires_at <= now())",
        &[],
    )?;
    Ok(ended.len())
}

/// Extends the lease held under `term`; `false` if it is no longer this term's (taken over)
/// or it ran out before the renewal reached the server. The second is what makes a renewal
/// left behind harmless: a server that was stopped (SIGSTOP, a frozen host) runs the statement
/// only when it resumes, long after the leader gave its term up; renewed then, the lease would
/// name a leader that serves nobody, and every standby would wait one more lease. The server's
/// clock at the statement (`clock_timestamp()`, not the transaction's `now()`) decides.
pub fn renew(client: &mut Client, term: &Term, lease: Duration) -> Result<bool, LedgerError> {
    let renewed = client.execute(
        "UPDATE shake_leader SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
         WHERE id = 1 AND epoch = $1 AND holder = $2 AND expires_at > clock_timestamp()",
        &[&term.epoch, &term.holder, &millis(lease)],
    )?;
    Ok(renewed == 1)
}

/// Gives the lease up (a stop, a failed term): a standby may take it at once. Committed
/// without waiting for the synchronous standbys: a release lost with its primary only leaves
/// the lease to expire, and waiting could hold a stopping process for ever when a lost standby
/// is what ended its term.
pub fn release(client: &mut Client, term: &Term) -> Result<(), LedgerError> {
    let mut tx = client.transaction()?;
    tx.batch_execute("SET LOCAL synchronous_commit = local")?;
    tx.execute(
        "UPDATE shake_leader SET expires_at = now() WHERE id = 1 AND epoch = $1 AND holder = $2",
        &[&term.epoch, &term.holder],
    )?;
    tx.commit()?;
    Ok(())
}
