//! The PostgreSQL group commit's statements, prepared once per session.
//!
//! An unprepared statement costs two round trips to the server (parse and describe, then bind
//! and execute); prepared, one. A group commit runs six to eight of them, and on a loaded
//! machine each round trip is two context switches between the allocator and its backend, so
//! the commit's fixed cost is mostly round trips (docs/PERFORMANCE.md, "Fewer round trips a
//! commit"). The texts live here, beside nothing else, so that what a commit sends is read
//! in one place.

use postgres::{Client, Statement};

/// Every statement a group commit may send.
pub(super) struct CommitStatements {
    /// The leader's epoch, share-locking the lease row until the commit.
    pub(super) check_epoch: Statement,
    /// Answered batches and their exact answer bytes.
    pub(super) copy_batches: Statement,
    /// Award rows.
    pub(super) copy_awards: Statement,
    /// Delivery marks (`delivery_marks`).
    pub(super) copy_marks: Statement,
    /// Stored answers the edges confirmed: the bytes go, the batch's name stays taken.
    pub(super) forget_answers: Statement,
    /// One operator command.
    pub(super) record_command: Statement,
    /// One worker's record, replaced.
    pub(super) record_worker: Statement,
    /// The commit's own row in the log of commits.
    pub(super) commit_row: Statement,
}

impl CommitStatements {
    /// Prepares them all on `client` (one round trip each, once per session).
    pub(super) fn prepare(client: &mut Client) -> Result<Self, postgres::Error> {
        Ok(Self {
            check_epoch: client
                .prepare("SELECT epoch, holder FROM shake_leader WHERE id = 1 FOR SHARE")?,
            copy_batches: client.prepare(
                "COPY shake_batches (edge_id, worker_id, instance_id, seq, answer, epoch) \
                 FROM STDIN BINARY",
            )?,
            copy_awards: client.prepare(
                "COPY shake_awards (award_id, round_id, item, user_id, cash_cents, gift_sku, \
                 edge_id, worker_id, instance_id, batch_seq, entry_index, granted_at_ms, epoch) \
                 FROM STDIN BINARY",
            )?,
            copy_marks: client.prepare(
                "COPY shake_delivery_marks (first_id, award_ids, epoch) FROM STDIN BINARY",
            )?,
            forget_answers: client.prepare(
                "UPDATE shake_batches b SET answer = NULL \
                 FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int8[]) AS f(e, w, i, s) \
                 WHERE (b.edge_id, b.worker_id, b.instance_id, b.seq) = (f.e, f.w, f.i, f.s)",
            )?,
            record_command: client.prepare(
                "INSERT INTO shake_commands \
                 (command_id, round_id, action, issued_by, at_ms, epoch, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )?,
            record_worker: client.prepare(
                "INSERT INTO shake_workers \
                 (edge_id, worker_id, instance_id, confirmed_seq, retired) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (edge_id, worker_id) DO UPDATE SET \
                 instance_id = excluded.instance_id, confirmed_seq = excluded.confirmed_seq, \
                 retired = excluded.retired",
            )?,
            commit_row: client.prepare(
                "INSERT INTO shake_commits (epoch, batches, awards) VALUES ($1, $2, $3)",
            )?,
        })
    }
}
