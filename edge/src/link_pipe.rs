//! The allocator stream of one event-loop worker, run on the allocator-link thread's tokio
//! runtime beside the quinn connection to the allocator. The worker's uplink *state* lives on
//! the loop thread (the sans-IO [`Uplink`](crate::uplink::Uplink) inside its core); this task
//! only moves bytes: frames the loop hands out go to the stream, frames the allocator sends go
//! to the loop (each followed by a wake-up of the loop), and the link's ups and downs too.
//!
//! Both directions are bounded channels. The loop hands out frames only while the channel to
//! the link has room (what it cannot hand out stays in its uplink state); the link waits for
//! room before reading more from the allocator, so QUIC flow control holds the allocator back.
//! On each new stream the task first discards what the loop queued for the old one: the loop
//! hears `Down` before that and `Up` after, and resends from its own state.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use shake_loop::udp::Waker;
use shake_proto::{AllocatorFrame, ErrorCode};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::metrics::EdgeMetrics;

/// The most read from the stream at once.
const READ_CHUNK: usize = 64 * 1024;

/// Frames waiting in each direction, at most.
pub const PIPE_FRAMES: usize = 1024;

/// What the link tells the loop.
#[derive(Debug)]
pub enum LinkEvent {
    /// A new stream to the allocator is open: send `EdgeHello` and everything unanswered.
    Up,
    /// The stream is gone.
    Down,
    /// A frame from the allocator.
    Frame(AllocatorFrame),
}

/// The loop's ends of the pipe.
#[derive(Debug)]
pub struct LoopEnds {
    /// Frames for the allocator.
    pub to_link: mpsc::Sender<Bytes>,
    /// What the link says.
    pub from_link: mpsc::Receiver<LinkEvent>,
}

/// The link's ends of the pipe.
#[derive(Debug)]
pub struct LinkEnds {
    from_loop: mpsc::Receiver<Bytes>,
    to_loop: mpsc::Sender<LinkEvent>,
    waker: Arc<Waker>,
    worker: u16,
}

/// A pipe for worker `worker`, whose loop wakes with `waker`.
pub fn pipe(worker: u16, waker: Arc<Waker>) -> (LoopEnds, LinkEnds) {
    let (to_link, from_loop) = mpsc::channel(PIPE_FRAMES);
    let (to_loop, from_link) = mpsc::channel(PIPE_FRAMES);
    (LoopEnds { to_link, from_link }, LinkEnds { from_loop, to_loop, waker, worker })
}

impl LinkEnds {
    async fn tell(&self, event: LinkEvent) -> bool {
        let sent = self.to_loop.send(event).await.is_ok();
        self.waker.wake();
        sent
    }
}

/// A new stream on the allocator connection, once there is one (the link task keeps the
/// connection in `allocator`, reconnecting as needed); a failed open waits for the next
/// connection, up to 200 ms, and tries again. `None` once `stop` is cancelled or the link
/// task is gone.
async fn open_stream(
    allocator: &mut watch::Receiver<Option<quinn::Connection>>,
    stop: &CancellationToken,
) -> Option<(quinn::SendStream, quinn::RecvStream)> {
    loop {
        let conn = loop {
            if let Some(conn) = allocator.borrow_and_update().clone() {
                break conn;
            }
            tokio::select! {
                changed = allocator.changed() => if changed.is_err() { return None },
                _ = stop.cancelled() => return None,
            }
        };
        match conn.open_bi().await {
            Ok(stream) => return Some(stream),
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_millis(200), allocator.changed()).await;
            }
        }
    }
}

/// How long a worker waits before it opens another stream after the allocator refused one
/// (a version it does not speak, an edge id another edge also uses): a refusal repeats, and
/// retrying ten times a second only fills the logs of both sides.
const AFTER_REFUSAL: Duration = Duration::from_secs(1);

/// The codes [`refusal`] reads as a refusal that repeats.
pub const REFUSAL_CODES: [ErrorCode; 2] =
    [ErrorCode::UnsupportedVersion, ErrorCode::DuplicateWorker];

/// The error code the allocator refused this worker's stream with, and what an operator should
/// do about it, if it was a refusal that repeats until an operator acts: a protocol version it
/// does not speak, or an edge id another edge uses. Any other reset (a slow reader closed, a
/// flood) is a lost stream, resent at once.
pub fn refusal(code: quinn::VarInt) -> Option<(ErrorCode, &'static str)> {
    match ErrorCode::from_code(code.into_inner())? {
        code @ ErrorCode::UnsupportedVersion => Some((
            code,
            "the allocator does not speak this edge's protocol version: upgrade the allocators \
             before the edges (or roll this edge back)",
        )),
        code @ ErrorCode::DuplicateWorker => Some((
            code,
            "another edge uses this edge_id (or a stale process of this one runs): each edge \
             needs an id of its own",
        )),
        _ => None,
    }
}

/// Keeps the worker's stream to the allocator, across reconnects, until `stop`.
pub async fn run(
    mut ends: LinkEnds,
    mut allocator: watch::Receiver<Option<quinn::Connection>>,
    stop: CancellationToken,
    metrics: Arc<EdgeMetrics>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let Some((mut send, mut recv)) = open_stream(&mut allocator, &stop).await else { return };
        // Frames the loop queued for the old stream: it resends them itself after `Up`.
        while ends.from_loop.try_recv().is_ok() {}
        if !ends.tell(LinkEvent::Up).await {
            return;
        }
        if shake_ops::supervise::failpoint("edge-link-stream-panic") {
            // A moment after the edge said it was ready, as the worker's failpoint does.
            tokio::time::sleep(Duration::from_secs(1)).await;
            panic!("failpoint edge-link-stream-panic");
        }
        buf.clear();
        let refused = 'stream: loop {
            tokio::select! {
                frame = ends.from_loop.recv() => {
                    let Some(frame) = frame else { return };
                    match send.write_all(&frame).await {
                        Ok(()) => {}
                        Err(quinn::WriteError::Stopped(code)) => break 'stream refusal(code),
                        Err(_) => break 'stream None,
                    }
                }
                read = recv.read_chunk(READ_CHUNK, true) => {
                    match read {
                        Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                        Err(quinn::ReadError::Reset(code)) => break 'stream refusal(code),
                        Ok(None) | Err(_) => break 'stream None,
                    }
                    loop {
                        match AllocatorFrame::decode(&mut buf) {
                            Ok(Some(frame)) => {
                                if !ends.tell(LinkEvent::Frame(frame)).await {
                                    return;
                                }
                            }
                            Ok(None) => break,
                            Err(err) => {
                                tracing::error!(%err, "malformed frame from the allocator");
                                break 'stream None;
                            }
                        }
                    }
                }
                _ = stop.cancelled() => return,
            }
        };
        match refused {
            Some((code, advice)) => {
                metrics.count_allocator_refusal(code);
                tracing::error!(
                    worker = ends.worker,
                    %code,
                    "the allocator refused this worker's stream: {advice}"
                );
            }
            None => tracing::warn!(
                worker = ends.worker,
                "allocator stream lost; will resend unanswered batches"
            ),
        }
        if !ends.tell(LinkEvent::Down).await {
            return;
        }
        if refused.is_some() {
            tokio::select! {
                _ = tokio::time::sleep(AFTER_REFUSAL) => {}
                _ = stop.cancelled() => return,
            }
        } else {
            let _ = tokio::time::timeout(Duration::from_millis(100), allocator.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_that_repeat_are_refusals() {
        let code = |c: ErrorCode| refusal(quinn::VarInt::from_u32(c.code())).map(|r| r.0);
        assert_eq!(code(ErrorCode::UnsupportedVersion), Some(ErrorCode::UnsupportedVersion));
        assert_eq!(code(ErrorCode::DuplicateWorker), Some(ErrorCode::DuplicateWorker));
        for lost in [ErrorCode::NoError, ErrorCode::Internal, ErrorCode::Flood] {
            assert_eq!(code(lost), None, "{lost}");
        }
        // The metrics export exactly these from 0.
        for any in ErrorCode::ALL {
            assert_eq!(code(any).is_some(), REFUSAL_CODES.contains(&any), "{any}");
        }
        assert!(refusal(quinn::VarInt::from_u32(0x7777)).is_none(), "a code we do not know");
    }
}
