//! Frames between an edge worker and the allocator (ALPN `shake-alloc/3`), on one long-lived
//! bidirectional stream per edge worker.
//!
//! Framed as in [`crate::frame`], payloads of at most [`MAX_ALLOCATOR_PAYLOAD`] bytes. A
//! `Batch` carries no per-entry routing data: the allocator answers with the entry indexes of
//! the winners only, and the edge maps an index back to its phone.
//!
//! A batch is named by (edge id, worker id, instance id, seq): the instance id is drawn at
//! random when an edge worker starts and `seq` counts from 1, so no clock can make two batches
//! share a name. Every `BatchResult` echoes the [`BatchDigest`] of the batch it answers, so an
//! edge can prove an answer belongs to the batch it holds before it announces a winner.

use bytes::{Bytes, BytesMut};

use crate::frame::{self, FrameStart};
use crate::limits::{
    MAX_ALLOCATOR_PAYLOAD, MAX_BATCH_ENTRIES, MAX_DELIVERED_IDS, MAX_LIMITED_USERS,
    MAX_OWED_AWARDS, MAX_WANTED_USERS, MAX_WORKERS_PER_EDGE,
};
use crate::reader::Reader;
use crate::{DecodeError, Prize, RoundInfo, varint};

/// The edge-allocator protocol version this crate speaks. ALPN `shake-alloc/3` carries the
/// layout; versions within it add frames compatibly (3 added `UsersLimited`, 4 `AwardsWanted`
/// and `AwardsOwed`, 5 `WorkerStats`), and a side only sends a frame the peer's version knows
/// (allocators are upgraded before edges).
pub const PROTOCOL_VERSION: u32 = 5;
/// The oldest version an allocator of this crate still serves.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// Bytes of a [`BatchDigest`].
pub const BATCH_DIGEST_LEN: usize = 8;

/// The first 8 bytes of the SHA-256 of a `Batch` frame's payload (the bytes after its type and
/// length), exactly as sent. A `BatchResult` carries the digest of the batch it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct BatchDigest(pub [u8; BATCH_DIGEST_LEN]);

impl BatchDigest {
    /// The digest of a `Batch` payload.
    pub fn of_payload(payload: &[u8]) -> Self {
        let hash = ring::digest::digest(&ring::digest::SHA256, payload);
        let mut out = [0u8; BATCH_DIGEST_LEN];
        out.copy_from_slice(&hash.as_ref()[..BATCH_DIGEST_LEN]);
        Self(out)
    }
}

/// Frame type numbers on an edge-allocator stream.
pub mod frame_type {
    /// [`EdgeHello`](super::AllocatorFrame::EdgeHello)
    pub const EDGE_HELLO: u64 = 0x21;
    /// [`Batch`](super::AllocatorFrame::Batch)
    pub const BATCH: u64 = 0x22;
    /// [`BatchResult`](super::AllocatorFrame::BatchResult)
    pub const BATCH_RESULT: u64 = 0x23;
    /// [`Quota`](super::AllocatorFrame::Quota)
    pub const QUOTA: u64 = 0x24;
    /// [`RoundState`](super::AllocatorFrame::RoundState)
    pub const ROUND_STATE: u64 = 0x25;
    /// [`LoadReport`](super::AllocatorFrame::LoadReport)
    pub const LOAD_REPORT: u64 = 0x26;
    /// [`AwardDelivered`](super::AllocatorFrame::AwardDelivered)
    pub const AWARD_DELIVERED: u64 = 0x27;
    /// [`Heartbeat`](super::AllocatorFrame::Heartbeat)
    pub const HEARTBEAT: u64 = 0x28;
    /// [`ResultsReceived`](super::AllocatorFrame::ResultsReceived)
    pub const RESULTS_RECEIVED: u64 = 0x29;
    /// [`UsersLimited`](super::AllocatorFrame::UsersLimited)
    pub const USERS_LIMITED: u64 = 0x2a;
    /// [`AwardsWanted`](super::AllocatorFrame::AwardsWanted)
    pub const AWARDS_WANTED: u64 = 0x2b;
    /// [`AwardsOwed`](super::AllocatorFrame::AwardsOwed)
    pub const AWARDS_OWED: u64 = 0x2c;
    /// [`WorkerStats`](super::AllocatorFrame::WorkerStats)
    pub const WORKER_STATS: u64 = 0x2d;
}

/// An award granted to a user and not yet acknowledged by any of their phones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwedAward {
    /// The award.
    pub award_id: u64,
    /// The round it was won in.
    pub round_id: u32,
    /// What it pays.
    pub prize: Prize,
}

/// One admitted shake inside a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchEntry {
    /// The shaking user, from the verified session token.
    pub user_id: u64,
    /// When the edge admitted the shake, microseconds after the batch's base time.
    pub offset_us: u32,
}

impl BatchEntry {
    /// Decodes the entry at the front of `buf`: the entry and the bytes it took.
    #[inline]
    fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let truncated = |_| DecodeError::Truncated;
        let (user_id, user_len) = varint::decode(buf).map_err(truncated)?;
        let (offset, offset_len) = varint::decode(&buf[user_len..]).map_err(truncated)?;
        let offset_us = u32::try_from(offset).map_err(|_| DecodeError::InvalidValue("offset"))?;
        Ok((Self { user_id, offset_us }, user_len + offset_len))
    }
}

/// Checks that `entries` is a whole number of well-formed entries, at most
/// [`MAX_BATCH_ENTRIES`], and counts them. This is the validation pass of every batch the
/// allocator receives, so it reads only what it must: varint lengths, and the value of an
/// offset only when its length allows more than 32 bits.
fn count_entries(entries: &[u8]) -> Result<usize, DecodeError> {
    let mut at = 0;
    let mut count = 0;
    while at < entries.len() {
        if count == MAX_BATCH_ENTRIES {
            return Err(DecodeError::TooManyEntries { max: MAX_BATCH_ENTRIES });
        }
        at += 1 << (entries[at] >> 6);
        let Some(&offset_first) = entries.get(at) else {
            return Err(DecodeError::Truncated);
        };
        let offset_len = 1 << (offset_first >> 6);
        if offset_len == 8 {
            // Only the eight-byte form can exceed u32; decode it to check.
            let (offset, _) = varint::decode(&entries[at..]).map_err(|_| DecodeError::Truncated)?;
            if offset > u64::from(u32::MAX) {
                return Err(DecodeError::InvalidValue("offset"));
            }
        }
        at += offset_len;
        count += 1;
    }
    if at > entries.len() {
        return Err(DecodeError::Truncated);
    }
    Ok(count)
}

/// Iterator over the entries of a [`Batch`].
#[derive(Debug, Clone)]
pub struct BatchEntries<'a> {
    rest: &'a [u8],
    left: usize,
}

impl Iterator for BatchEntries<'_> {
    type Item = BatchEntry;

    #[inline]
    fn next(&mut self) -> Option<BatchEntry> {
        // invariant: `count_entries` accepted these bytes, so decoding cannot fail here.
        let (entry, len) = BatchEntry::decode(self.rest).ok()?;
        self.rest = &self.rest[len..];
        self.left -= 1;
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for BatchEntries<'_> {}

/// A batch of admitted shakes from one edge worker, for one round.
///
/// `(edge id, worker id, instance id, seq)` names a batch for ever: a resend carries the same
/// sequence and gets the same answer.
///
/// Equality compares content. The digest belongs to the bytes a batch was decoded from: a
/// non-minimal varint makes the same content digest differently, so it is left out.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Sequence number, per edge worker, increasing from 1.
    pub seq: u64,
    /// The round every entry was admitted in.
    pub round_id: u32,
    /// Unix milliseconds that entry offsets count from.
    pub base_time_ms: u64,
    entries: Bytes,
    len: usize,
    digest: BatchDigest,
}

impl Batch {
    /// A batch holding `entries` (tests, tools and benchmarks; the edge uses [`BatchWriter`]).
    ///
    /// # Panics
    /// If there are more than [`MAX_BATCH_ENTRIES`] entries.
    pub fn new(seq: u64, round_id: u32, base_time_ms: u64, entries: &[BatchEntry]) -> Self {
        assert!(entries.len() <= MAX_BATCH_ENTRIES, "batch over {MAX_BATCH_ENTRIES} entries");
        let mut body = BytesMut::with_capacity(entries.len() * 6);
        for entry in entries {
            put_entry(&mut body, entry);
        }
        let mut batch = Self {
            seq,
            round_id,
            base_time_ms,
            entries: body.freeze(),
            len: entries.len(),
            digest: BatchDigest::default(),
        };
        let mut frame = BytesMut::new();
        AllocatorFrame::Batch(batch.clone()).encode(&mut frame);
        let header = frame::check(&frame, usize::MAX).expect("a frame just encoded");
        batch.digest = BatchDigest::of_payload(&frame[header.header_len..]);
        batch
    }

    /// The digest of the payload this batch was decoded from (or encodes to).
    pub fn digest(&self) -> BatchDigest {
        self.digest
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True for a batch without entries (legal, if useless).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries in order; entry index `i` is the `i`th item.
    pub fn entries(&self) -> BatchEntries<'_> {
        BatchEntries { rest: &self.entries, left: self.len }
    }
}

impl PartialEq for Batch {
    fn eq(&self, other: &Self) -> bool {
        (self.seq, self.round_id, self.base_time_ms, self.len, &self.entries)
            == (other.seq, other.round_id, other.base_time_ms, other.len, &other.entries)
    }
}

impl Eq for Batch {}

#[inline]
fn put_entry(out: &mut BytesMut, entry: &BatchEntry) {
    varint::put(out, entry.user_id);
    varint::put(out, u64::from(entry.offset_us));
}

/// Writes a `Batch` frame straight into an output buffer, one entry at a time, so the edge
/// never holds a list of entries: the encoded frame is the batch.
#[derive(Debug)]
pub struct BatchWriter {
    start: FrameStart,
    len: usize,
}

/// A `Batch` frame completed by [`BatchWriter::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedBatch {
    /// Where the payload starts in the output buffer.
    pub payload_at: usize,
    /// The digest of the payload, which the allocator's answer must echo.
    pub digest: BatchDigest,
}

impl BatchWriter {
    /// Starts a `Batch` frame at the end of `out`.
    pub fn begin(out: &mut BytesMut, seq: u64, round_id: u32, base_time_ms: u64) -> Self {
        let start = frame::begin(out, frame_type::BATCH);
        varint::put(out, seq);
        varint::put(out, u64::from(round_id));
        varint::put(out, base_time_ms);
        Self { start, len: 0 }
    }

    /// Appends one entry.
    ///
    /// # Panics
    /// If the batch already holds [`MAX_BATCH_ENTRIES`]: callers flush at a smaller size.
    #[inline]
    pub fn push(&mut self, out: &mut BytesMut, entry: BatchEntry) {
        assert!(self.len < MAX_BATCH_ENTRIES, "batch over {MAX_BATCH_ENTRIES} entries");
        put_entry(out, &entry);
        self.len += 1;
    }

    /// Entries written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Completes the frame and digests its payload (once per batch, not per entry).
    pub fn finish(self, out: &mut BytesMut) -> FinishedBatch {
        let payload_at = frame::finish(out, self.start);
        FinishedBatch { payload_at, digest: BatchDigest::of_payload(&out[payload_at..]) }
    }
}

/// Shakes answered, by verdict (`WorkerStats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VerdictCounts {
    /// No-luck.
    pub no_luck: u64,
    /// Slow-down.
    pub slow_down: u64,
    /// Round-closed.
    pub round_closed: u64,
    /// Forwarded to the allocator.
    pub forwarded: u64,
}

/// One winning entry of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Winner {
    /// Index of the entry in its batch.
    pub entry_index: u32,
    /// Ledger id of the award.
    pub award_id: u64,
    /// What it pays.
    pub prize: Prize,
}

/// One frame on an edge-allocator stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocatorFrame {
    /// Edge -> allocator, first frame on each worker stream.
    EdgeHello {
        /// The edge's id (also in its client certificate's name).
        edge_id: u64,
        /// The worker within the edge that owns this stream.
        worker_id: u16,
        /// [`PROTOCOL_VERSION`] of the edge.
        protocol_version: u32,
        /// Drawn at random when the worker starts (62 bits): with `seq`, names its batches.
        instance_id: u64,
        /// Every batch of this instance up to this sequence has an answer at the edge.
        highest_answered_seq: u64,
    },
    /// Edge -> allocator: admitted shakes to draw.
    Batch(Batch),
    /// Allocator -> edge: the answer to one batch, winners only, after they are durable.
    BatchResult {
        /// The batch answered.
        seq: u64,
        /// The digest of the batch answered, as the allocator received it.
        digest: BatchDigest,
        /// The winning entries, in entry order.
        winners: Vec<Winner>,
    },
    /// Allocator -> edge: the edge's admission rate for a round.
    Quota {
        /// The round it applies to.
        round_id: u32,
        /// Admitted shakes per second for the whole edge.
        rate_per_s: u32,
        /// Bucket depth.
        burst: u32,
        /// After this Unix millisecond the edge falls back to its local limit.
        valid_until_ms: u64,
    },
    /// Allocator -> edge: a round's state and pacing.
    RoundState {
        /// The round.
        round: RoundInfo,
        /// The minimum shake interval phones should keep, milliseconds.
        min_shake_interval_ms: u32,
    },
    /// Edge -> allocator: load over the last window, for quota sharing.
    LoadReport {
        /// Length of the window, milliseconds.
        window_ms: u32,
        /// Shakes offered in the round during the window.
        offered: u64,
        /// Shakes admitted during the window.
        admitted: u64,
    },
    /// Edge -> allocator: these awards reached their phones.
    AwardDelivered {
        /// Acknowledged award ids (1 to [`MAX_DELIVERED_IDS`]).
        award_ids: Vec<u64>,
    },
    /// Either way: liveness, with the sender's clock.
    Heartbeat {
        /// Sender's clock, Unix milliseconds.
        now_ms: u64,
    },
    /// Edge -> allocator: every batch of this stream's worker instance up to this sequence has
    /// its result at the edge and will never be sent again; the allocator may forget them.
    ResultsReceived {
        /// The highest sequence up to which every batch is answered.
        highest_answered_seq: u64,
    },
    /// Allocator -> edge: these users' entries went over the per-user rate; the edge answers
    /// their shakes no-luck without forwarding them until `until_ms`.
    UsersLimited {
        /// Unix milliseconds the limit lasts until.
        until_ms: u64,
        /// The users (1 to [`MAX_LIMITED_USERS`]).
        user_ids: Vec<u64>,
    },
    /// Edge -> allocator (version 4): these users' sessions just started on this worker; the
    /// allocator answers an `AwardsOwed` for each of them it owes awards.
    AwardsWanted {
        /// The users (1 to [`MAX_WANTED_USERS`]).
        user_ids: Vec<u64>,
    },
    /// Edge -> allocator (version 5): what one worker serves and answered over the last
    /// window, for the control room (sent with each `LoadReport`).
    WorkerStats {
        /// Phones with a session on this worker now.
        phones: u64,
        /// Shakes answered over the window, by verdict.
        verdicts: VerdictCounts,
    },
    /// Allocator -> edge (version 4): awards granted to this user, durable, that no phone
    /// has acknowledged yet. The edge sends each to the user's phones as an `Award`.
    AwardsOwed {
        /// The user.
        user_id: u64,
        /// The awards (1 to [`MAX_OWED_AWARDS`]).
        awards: Vec<OwedAward>,
    },
}

impl AllocatorFrame {
    /// Appends this frame, header included.
    ///
    /// # Panics
    /// If a list breaks its documented limit (no award ids, or more than
    /// [`MAX_DELIVERED_IDS`]; no user ids, or more than [`MAX_LIMITED_USERS`]): the peer could
    /// not decode it.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = frame::begin(out, self.frame_type());
        match self {
            AllocatorFrame::EdgeHello {
                edge_id,
                worker_id,
                protocol_version,
                instance_id,
                highest_answered_seq,
            } => {
                varint::put(out, *edge_id);
                varint::put(out, u64::from(*worker_id));
                varint::put(out, u64::from(*protocol_version));
                varint::put(out, *instance_id);
                varint::put(out, *highest_answered_seq);
            }
            AllocatorFrame::Batch(batch) => {
                varint::put(out, batch.seq);
                varint::put(out, u64::from(batch.round_id));
                varint::put(out, batch.base_time_ms);
                out.extend_from_slice(&batch.entries);
            }
            AllocatorFrame::BatchResult { seq, digest, winners } => {
                varint::put(out, *seq);
                out.extend_from_slice(&digest.0);
                for winner in winners {
                    varint::put(out, u64::from(winner.entry_index));
                    varint::put(out, winner.award_id);
                    winner.prize.encode(out);
                }
            }
            AllocatorFrame::Quota { round_id, rate_per_s, burst, valid_until_ms } => {
                varint::put(out, u64::from(*round_id));
                varint::put(out, u64::from(*rate_per_s));
                varint::put(out, u64::from(*burst));
                varint::put(out, *valid_until_ms);
            }
            AllocatorFrame::RoundState { round, min_shake_interval_ms } => {
                round.encode(out);
                varint::put(out, u64::from(*min_shake_interval_ms));
            }
            AllocatorFrame::LoadReport { window_ms, offered, admitted } => {
                varint::put(out, u64::from(*window_ms));
                varint::put(out, *offered);
                varint::put(out, *admitted);
            }
            AllocatorFrame::WorkerStats { phones, verdicts } => {
                varint::put(out, *phones);
                varint::put(out, verdicts.no_luck);
                varint::put(out, verdicts.slow_down);
                varint::put(out, verdicts.round_closed);
                varint::put(out, verdicts.forwarded);
            }
            AllocatorFrame::AwardDelivered { award_ids } => {
                assert!(
                    (1..=MAX_DELIVERED_IDS).contains(&award_ids.len()),
                    "AwardDelivered carries 1 to {MAX_DELIVERED_IDS} ids"
                );
                for id in award_ids {
                    varint::put(out, *id);
                }
            }
            AllocatorFrame::Heartbeat { now_ms } => varint::put(out, *now_ms),
            AllocatorFrame::ResultsReceived { highest_answered_seq } => {
                varint::put(out, *highest_answered_seq)
            }
            AllocatorFrame::UsersLimited { until_ms, user_ids } => {
                assert!(
                    (1..=MAX_LIMITED_USERS).contains(&user_ids.len()),
                    "UsersLimited carries 1 to {MAX_LIMITED_USERS} ids"
                );
                varint::put(out, *until_ms);
                for id in user_ids {
                    varint::put(out, *id);
                }
            }
            AllocatorFrame::AwardsWanted { user_ids } => {
                assert!(
                    (1..=MAX_WANTED_USERS).contains(&user_ids.len()),
                    "AwardsWanted carries 1 to {MAX_WANTED_USERS} ids"
                );
                for id in user_ids {
                    varint::put(out, *id);
                }
            }
            AllocatorFrame::AwardsOwed { user_id, awards } => {
                assert!(
                    (1..=MAX_OWED_AWARDS).contains(&awards.len()),
                    "AwardsOwed carries 1 to {MAX_OWED_AWARDS} awards"
                );
                varint::put(out, *user_id);
                for award in awards {
                    varint::put(out, award.award_id);
                    varint::put(out, u64::from(award.round_id));
                    award.prize.encode(out);
                }
            }
        }
        frame::finish(out, start);
    }

    /// The frame type number.
    pub fn frame_type(&self) -> u64 {
        use frame_type::*;
        match self {
            AllocatorFrame::EdgeHello { .. } => EDGE_HELLO,
            AllocatorFrame::Batch(_) => BATCH,
            AllocatorFrame::BatchResult { .. } => BATCH_RESULT,
            AllocatorFrame::Quota { .. } => QUOTA,
            AllocatorFrame::RoundState { .. } => ROUND_STATE,
            AllocatorFrame::LoadReport { .. } => LOAD_REPORT,
            AllocatorFrame::AwardDelivered { .. } => AWARD_DELIVERED,
            AllocatorFrame::Heartbeat { .. } => HEARTBEAT,
            AllocatorFrame::ResultsReceived { .. } => RESULTS_RECEIVED,
            AllocatorFrame::UsersLimited { .. } => USERS_LIMITED,
            AllocatorFrame::AwardsWanted { .. } => AWARDS_WANTED,
            AllocatorFrame::AwardsOwed { .. } => AWARDS_OWED,
            AllocatorFrame::WorkerStats { .. } => WORKER_STATS,
        }
    }

    /// A short, fixed name for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            AllocatorFrame::EdgeHello { .. } => "edge_hello",
            AllocatorFrame::Batch(_) => "batch",
            AllocatorFrame::BatchResult { .. } => "batch_result",
            AllocatorFrame::Quota { .. } => "quota",
            AllocatorFrame::RoundState { .. } => "round_state",
            AllocatorFrame::LoadReport { .. } => "load_report",
            AllocatorFrame::AwardDelivered { .. } => "award_delivered",
            AllocatorFrame::Heartbeat { .. } => "heartbeat",
            AllocatorFrame::ResultsReceived { .. } => "results_received",
            AllocatorFrame::UsersLimited { .. } => "users_limited",
            AllocatorFrame::AwardsWanted { .. } => "awards_wanted",
            AllocatorFrame::AwardsOwed { .. } => "awards_owed",
            AllocatorFrame::WorkerStats { .. } => "worker_stats",
        }
    }

    /// Takes the next frame off the front of a stream buffer. `Ok(None)`: read more.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        match frame::split(buf, MAX_ALLOCATOR_PAYLOAD)? {
            Some((frame_type, payload)) => Self::parse(frame_type, &payload).map(Some),
            None => Ok(None),
        }
    }

    /// Parses one complete payload of the given frame type.
    pub fn parse(frame_type: u64, payload: &Bytes) -> Result<Self, DecodeError> {
        use frame_type::*;
        let mut r = Reader::new(payload);
        let frame = match frame_type {
            EDGE_HELLO => AllocatorFrame::EdgeHello {
                edge_id: r.varint()?,
                worker_id: match r.varint_u16("worker id")? {
                    id if id < MAX_WORKERS_PER_EDGE => id,
                    _ => return Err(DecodeError::InvalidValue("worker id")),
                },
                protocol_version: r.varint_u32("protocol version")?,
                instance_id: r.varint()?,
                highest_answered_seq: r.varint()?,
            },
            BATCH => {
                let seq = r.varint()?;
                let round_id = r.varint_u32("round id")?;
                let base_time_ms = r.varint()?;
                let entries = r.remaining();
                // Entries run to the end of the payload: nothing can trail them.
                return Ok(AllocatorFrame::Batch(Batch {
                    seq,
                    round_id,
                    base_time_ms,
                    entries: payload.slice_ref(entries),
                    len: count_entries(entries)?,
                    digest: BatchDigest::of_payload(payload),
                }));
            }
            BATCH_RESULT => {
                let seq = r.varint()?;
                let digest = BatchDigest(r.array()?);
                // Grows with the bytes actually present (each winner takes at least 4),
                // never with a count the peer claims.
                let mut winners = Vec::new();
                while !r.is_empty() {
                    let entry_index = r.varint_u32("entry index")?;
                    if entry_index as usize >= MAX_BATCH_ENTRIES {
                        return Err(DecodeError::InvalidValue("entry index"));
                    }
                    winners.push(Winner {
                        entry_index,
                        award_id: r.varint()?,
                        prize: Prize::decode(&mut r)?,
                    });
                }
                AllocatorFrame::BatchResult { seq, digest, winners }
            }
            QUOTA => AllocatorFrame::Quota {
                round_id: r.varint_u32("round id")?,
                rate_per_s: r.varint_u32("rate")?,
                burst: r.varint_u32("burst")?,
                valid_until_ms: r.varint()?,
            },
            ROUND_STATE => AllocatorFrame::RoundState {
                round: RoundInfo::decode(&mut r)?,
                min_shake_interval_ms: r.varint_u32("min shake interval")?,
            },
            LOAD_REPORT => AllocatorFrame::LoadReport {
                window_ms: r.varint_u32("window")?,
                offered: r.varint()?,
                admitted: r.varint()?,
            },
            WORKER_STATS => AllocatorFrame::WorkerStats {
                phones: r.varint()?,
                verdicts: VerdictCounts {
                    no_luck: r.varint()?,
                    slow_down: r.varint()?,
                    round_closed: r.varint()?,
                    forwarded: r.varint()?,
                },
            },
            AWARD_DELIVERED => AllocatorFrame::AwardDelivered {
                award_ids: r.list("award id count", MAX_DELIVERED_IDS, Reader::varint)?,
            },
            HEARTBEAT => AllocatorFrame::Heartbeat { now_ms: r.varint()? },
            RESULTS_RECEIVED => {
                AllocatorFrame::ResultsReceived { highest_answered_seq: r.varint()? }
            }
            USERS_LIMITED => AllocatorFrame::UsersLimited {
                until_ms: r.varint()?,
                user_ids: r.list("user id count", MAX_LIMITED_USERS, Reader::varint)?,
            },
            AWARDS_WANTED => AllocatorFrame::AwardsWanted {
                user_ids: r.list("user id count", MAX_WANTED_USERS, Reader::varint)?,
            },
            AWARDS_OWED => AllocatorFrame::AwardsOwed {
                user_id: r.varint()?,
                awards: r.list("award count", MAX_OWED_AWARDS, |r| {
                    Ok(OwedAward {
                        award_id: r.varint()?,
                        round_id: r.varint_u32("round id")?,
                        prize: Prize::decode(r)?,
                    })
                })?,
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(frame)
    }
}
