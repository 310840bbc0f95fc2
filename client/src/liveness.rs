//! Whether the edge behind a live connection is still there, sans-IO: the driver's quicker
//! answer than QUIC's idle timeout (30 s) when an edge dies under its phones.
//!
//! A live edge answers every shake at once (the verdict never waits for the allocator), and
//! its QUIC stack acknowledges whatever the phone sends. So shakes unanswered for
//! [`EDGE_SILENT_MS`] *with no ACK frame from the edge meanwhile either* mean the edge is
//! gone, and the phone moves on ([`crate::ConnectionEnd::Silent`]). Answers that are merely
//! slow, from an edge that sheds load on purpose, come with ACKs: they are waited for, since a
//! reconnect costs the edge about ten shakes of work.

/// How long shakes may go unanswered, with nothing acknowledged, before the edge counts as
/// gone, milliseconds.
pub const EDGE_SILENT_MS: u64 = 2_000;

/// One connection's silence watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeSilence {
    /// The first shake sent since the edge was last heard from (the phone's milliseconds),
    /// and the ACK frames received from the edge by then.
    since: Option<(u64, u64)>,
}

impl EdgeSilence {
    /// A shake went out at `now_ms`; `acks_received` is the connection's count of ACK frames
    /// received so far (quinn: `conn.stats().frame_rx.acks`).
    pub fn shake_sent(&mut self, now_ms: u64, acks_received: u64) {
        self.since.get_or_insert((now_ms, acks_received));
    }

    /// Something came from the edge (an answer, a control frame): it is there.
    pub fn heard(&mut self) {
        self.since = None;
    }

    /// When to look again, if a shake is waiting for an answer.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.since.map(|(at, _)| at + EDGE_SILENT_MS)
    }

    /// True when shakes have waited [`EDGE_SILENT_MS`] with no answer and no ACK frame.
    pub fn is_silent(&self, now_ms: u64, acks_received: u64) -> bool {
        self.since.is_some_and(|(at, acks)| {
            now_ms.saturating_sub(at) >= EDGE_SILENT_MS && acks_received == acks
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unanswered_and_unacknowledged_shakes_make_an_edge_silent() {
        let mut watch = EdgeSilence::default();
        assert!(!watch.is_silent(10_000, 0), "nothing sent, nothing awaited");
        watch.shake_sent(1_000, 5);
        watch.shake_sent(1_500, 6); // the first unanswered shake is what counts
        assert_eq!(watch.deadline_ms(), Some(3_000));
        assert!(!watch.is_silent(2_999, 5));
        assert!(watch.is_silent(3_000, 5));
        // Slow answers from an edge that acknowledges packets: alive.
        assert!(!watch.is_silent(9_000, 7));
        watch.heard();
        assert_eq!(watch.deadline_ms(), None);
        assert!(!watch.is_silent(9_000, 5));
    }
}
