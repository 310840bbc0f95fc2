//! DATAGRAM frames cut from one reused scratch buffer, without letting a connection whose
//! datagrams queue keep that buffer alive.
//!
//! A sender encodes each datagram into a large scratch `BytesMut` and hands quinn-proto the
//! split-off slice: no allocation per datagram. quinn-proto holds the slice until it is sent,
//! and a slice keeps its whole buffer alive. Sent at once (the usual case) it is gone by the
//! turn's end; but a connection whose datagrams queue (a peer that stops acknowledging, a full
//! congestion window) holds up to its send buffer of them, each perhaps from another buffer:
//! at the edge's 4 KB buffer, outcomes of about ten bytes and quinn-proto's 32 bytes of
//! bookkeeping each, some 96 buffers of 64 KB, 6 MB for one phone that sends shakes and never
//! acknowledges. So a datagram for a connection that already has datagrams waiting goes in a
//! copy of its own (an allocation, on that slow path only). The first datagram to wait is
//! still a slice, so a stalled connection pins at most one buffer, and only until the ones
//! behind it push it out of the queue (it is the oldest) once the queue is full.

use bytes::Bytes;
use quinn_proto::{Connection, SendDatagramError};

/// How a datagram went into its connection's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// As the slice it was given (nothing waited before it).
    Slice,
    /// As a copy of its own (datagrams were waiting).
    Copy,
}

/// Sends datagrams that are slices of a shared buffer (one per loop).
#[derive(Debug, Default)]
pub struct ScratchDatagrams {
    /// The most send-buffer space any connection has shown: what an empty queue shows (every
    /// connection of a loop shares its transport configuration, and the first datagram of any
    /// connection finds its queue empty).
    empty_queue_space: usize,
}

impl ScratchDatagrams {
    /// Queues `datagram` on `conn` (older unsent ones dropped to make room, as a datagram that
    /// waits loses its worth), copying it first if datagrams wait there already.
    pub fn send(
        &mut self,
        conn: &mut Connection,
        datagram: Bytes,
    ) -> Result<Queued, SendDatagramError> {
        let space = conn.datagrams().send_buffer_space();
        self.empty_queue_space = self.empty_queue_space.max(space);
        if space < self.empty_queue_space {
            conn.datagrams().send(Bytes::copy_from_slice(&datagram), true)?;
            return Ok(Queued::Copy);
        }
        conn.datagrams().send(datagram, true)?;
        Ok(Queued::Slice)
    }
}
