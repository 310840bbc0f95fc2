//! The PostgreSQL group commit's statements, prepared once per session.
//!
//! An unprepared statement costs two round trips to the server (parse and describe, then
//! bind and execute); prepared, one. A group commit sends five (three of them `COPY`s, two
//! round trips each), and on a loaded machine each round trip is two context switches between
//! the allocator and its backend, so the commit's fixed cost is mostly round trips
//! (docs/PERFORMANCE.md, "Fewer round trips a commit"). The texts live here, beside nothing
//! else, so that what a commit sends is read in one place.

use postgres::{Client, Statement};

/// Every statement a group commit may send.
pub(super) struct CommitStatements {
    /// The leader's epoch, key-share locking the lease row until the commit.
    pub(super) check_epoch: Statement,
    /// Answered batches and their exact answer bytes.
    pub(super) copy_batches: Statement,
    /// Award rows.
    pub(super) copy_awards: Statement,
    /// Delivery marks (`delivery_marks`).
    pub(super) copy_marks: Statement,
    /// One operator command.
    pub(super) record_command: Statement,
    /// The confirmations and the commit's own row, in one statement: stored answers the edges
    /// confirmed lose their bytes (the batch's name stays taken), the workers' records are
    /// replaced, the instances they retired join the log of retirements, and the group's row
    /// goes into the log of commits (never updated, so its transaction id dates the commit:
    /// README "High availability", the fencing proof).
    pub(super) confirm_and_log: Statement,
}

impl CommitStatements {
    /// Prepares them all on `client` (one round trip each, once per session).
    pub(super) fn prepare(client: &mut Client) -> Result<Self, postgres::Error> {
        Ok(Self {
            check_epoch: client.prepare(super::postgres::CHECK_EPOCH)?,
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
                "COPY shake_delivery_marks (first_id, award_ids, epoch, group_seq) FROM STDIN BINARY",
            )?,
            record_command: client.prepare(
                "INSERT INTO shake_commands \
                 (command_id, round_id, action, issued_by, at_ms, epoch, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )?,
            // Data-modifying CTEs run whether or not the statement reads them; with empty
            // arrays they change nothing.
            confirm_and_log: client.prepare(
                "WITH forgotten AS ( \
                     UPDATE shake_batches b SET answer = NULL \
                     FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int8[]) \
                         AS f(e, w, i, s) \
                     WHERE (b.edge_id, b.worker_id, b.instance_id, b.seq) = (f.e, f.w, f.i, f.s) \
                 ), recorded AS ( \
                     INSERT INTO shake_workers \
                         (edge_id, worker_id, instance_id, confirmed_seq, retired) \
                     SELECT e, w, i, c, r::int8[] \
                     FROM unnest($5::int8[], $6::int4[], $7::int8[], $8::int8[], $9::text[]) \
                         AS u(e, w, i, c, r) \
                     ON CONFLICT (edge_id, worker_id) DO UPDATE SET \
                     instance_id = excluded.instance_id, confirmed_seq = excluded.confirmed_seq, \
                     retired = excluded.retired \
                 ), retiring AS ( \
                     INSERT INTO shake_retired_instances (edge_id, worker_id, instance_id, epoch) \
                     SELECT e, w, i, $13 FROM unnest($10::int8[], $11::int4[], $12::int8[]) \
                         AS r(e, w, i) \
                     ON CONFLICT DO NOTHING \
                 ) \
                 INSERT INTO shake_commits (epoch, batches, awards) VALUES ($13, $14, $15)",
            )?,
        })
    }
}
