//! Every size limit of the protocol, in one place, so encoders, decoders and docs agree.
//!
//! A peer that exceeds one of these gets a typed [`DecodeError`](crate::DecodeError) and, on a
//! stream, a close with [`ErrorCode::FrameTooLarge`](crate::ErrorCode::FrameTooLarge) or
//! [`ErrorCode::MalformedFrame`](crate::ErrorCode::MalformedFrame).

/// Largest payload of one frame on a phone's control stream.
pub const MAX_CONTROL_PAYLOAD: usize = 1024;
/// Largest payload of one frame on an edge-allocator stream.
pub const MAX_ALLOCATOR_PAYLOAD: usize = 256 * 1024;
/// Largest DATAGRAM payload either side sends or accepts.
pub const MAX_DATAGRAM: usize = 1200;
/// Largest session token carried in `Hello`.
pub const MAX_TOKEN: usize = 128;
/// Largest gift SKU.
pub const MAX_SKU: usize = 64;
/// Largest reason text in `Error`.
pub const MAX_REASON: usize = 256;
/// Workers one edge may have: an `EdgeHello` names a worker id below it. (The allocator keeps
/// up to [`MAX_UNCONFIRMED_BATCHES`] answers per worker, so this bounds what one edge can make
/// it hold; an edge's connection ids carry its worker in one byte.)
pub const MAX_WORKERS_PER_EDGE: u16 = 256;
/// Most entries in one `Batch`.
pub const MAX_BATCH_ENTRIES: usize = 16_384;
/// Largest offset an edge writes in a batch entry, microseconds (about 18 minutes; a varint of
/// at most 4 bytes). A batch lives milliseconds, so only a wall-clock step inside one reaches
/// it; with 8-byte offsets, a full batch of 8-byte user ids (16 bytes an entry) would be larger
/// than [`MAX_ALLOCATOR_PAYLOAD`], refused by the allocator and resent for ever.
pub const MAX_ENTRY_OFFSET_US: u32 = (1 << 30) - 1;
/// Most bytes one winner takes in a `BatchResult`: its entry index (a varint of 2 bytes below
/// [`MAX_BATCH_ENTRIES`]), its award id (8) and the longest prize, a gift of [`MAX_SKU`] bytes
/// (its kind, a 2-byte length and the SKU).
pub const MAX_WINNER_LEN: usize = 2 + 8 + 1 + 2 + MAX_SKU;
/// Most winners one `BatchResult` lists, so that it fits [`MAX_ALLOCATOR_PAYLOAD`] (after its
/// sequence number and digest, 16 bytes) whatever they win. The allocator grants no more in
/// one batch: every entry of a batch can win (a large pool released at once), and 16,384
/// winners of long-named gifts would make an answer the edge refuses, and so never confirms.
/// Later entries of such a batch get no luck; the prizes stay for later shakes.
pub const MAX_WINNERS_PER_RESULT: usize = (MAX_ALLOCATOR_PAYLOAD - 16) / MAX_WINNER_LEN;
/// Most award ids in one `AwardDelivered`.
pub const MAX_DELIVERED_IDS: usize = 4096;
/// Most user ids in one `UsersLimited`.
pub const MAX_LIMITED_USERS: usize = 1024;
/// Most user ids in one `AwardsWanted` frame.
pub const MAX_WANTED_USERS: usize = 1024;
/// Most awards in one `AwardsOwed` frame (a user owed more gets several frames).
pub const MAX_OWED_AWARDS: usize = 64;

/// `AwardAck`s one phone session may have refused (an award id this edge did not send to
/// the session's user, or one already acknowledged); one more closes the session with
/// `FLOOD`. An honest phone's acks are refused only now and then (an award that reached it
/// twice, one sent by another edge before it reconnected); a phone acking ids at random takes
/// the edge's award book's lock at most this many times a session.
pub const MAX_REFUSED_AWARD_ACKS: u32 = 64;

/// Batches of one edge worker instance drawn by the allocator and not yet confirmed by the
/// edge (`ResultsReceived`); one more closes the stream with `FLOOD`.
pub const MAX_UNCONFIRMED_BATCHES: usize = 4096;

/// The longest wait an edge may tell a phone, milliseconds: a shake interval (`Welcome`,
/// `RoundNotice`, `Pace`), a slow-down's `retry_after_ms`, a drain's `reconnect_after_ms`. A
/// phone honours at most this, whatever it is told (one bad value from an edge must not park
/// its phones for weeks), and an edge's configuration cannot pace phones past it.
pub const MAX_TOLD_WAIT_MS: u32 = 600_000;
