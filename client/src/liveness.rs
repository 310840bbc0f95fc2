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

    /// Looks at the deadline: true when shakes have waited [`EDGE_SILENT_MS`] with no answer
    /// and no ACK frame. Past the deadline with ACKs meanwhile (an answer lost, or shed), the
    /// edge is there and has acknowledged what was sent: the watch stops until the next
    /// shake, which is measured against the ACKs by then. (Watching on from now would ask an
    /// idle phone for ACKs it gives the edge nothing to send: a phone that stopped shaking
    /// after a lost answer was called silent 2 s later and left a live edge.)
    pub fn check(&mut self, now_ms: u64, acks_received: u64) -> bool {
        let Some((at, acks)) = self.since else { return false };
        if now_ms.saturating_sub(at) < EDGE_SILENT_MS {
            return false;
        }
        if acks_received == acks {
            return true;
        }
        self.since = None;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unanswered_and_unacknowledged_shakes_make_an_edge_silent() {
        let mut watch = EdgeSilence::default();
        assert!(!watch.check(10_000, 0), "nothing sent, nothing awaited");
        watch.shake_sent(1_000, 5);
        watch.shake_sent(1_500, 6); // the first unanswered shake is what counts
        assert_eq!(watch.deadline_ms(), Some(3_000));
        assert!(!watch.check(2_999, 5));
        assert!(watch.clone().check(3_000, 5));
        // Slow answers from an edge that acknowledges packets: alive; nothing more is awaited
        // until the next shake (an idle phone gives the edge nothing to acknowledge).
        assert!(!watch.check(9_000, 7));
        assert_eq!(watch.deadline_ms(), None, "no look due while nothing new was sent");
        assert!(!watch.check(30_000, 7), "an idle phone's edge is not silent");
        // The next shake is watched against the ACKs by then.
        watch.shake_sent(31_000, 7);
        assert_eq!(watch.deadline_ms(), Some(33_000));
        assert!(!watch.check(32_999, 7));
        assert!(watch.clone().check(33_000, 7), "the edge gone after all: no ACK since 31 s");
        watch.heard();
        assert_eq!(watch.deadline_ms(), None);
        assert!(!watch.check(19_000, 5));
    }
}
