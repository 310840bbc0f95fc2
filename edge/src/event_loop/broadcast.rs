//! What the worker's core tells phones: a frame for one phone, or a broadcast to every serving
//! phone in slices of [`BROADCAST_PER_TURN`] a turn, so shakes are served between slices.

use super::*;

impl LoopWorker {
    /// Delivers what the core asked for to phones.
    pub(super) fn deliver(&mut self, engine: &mut Engine, effects: Vec<PhoneEffect>) {
        for effect in effects {
            match effect {
                PhoneEffect::ToPhone(at, frame) => {
                    let Some(&ch) = self.core.phones().get(at).map(|p| &p.ext) else { continue };
                    let bytes = self.encode(&frame);
                    engine.with_connection(ch, |conn| self.write_control(ch, conn, &bytes));
                }
                PhoneEffect::Broadcast(frame) => self.broadcast(engine, &frame),
            }
        }
    }

    /// Starts sending `frame` to every serving phone, [`BROADCAST_PER_TURN`] a turn. A phone
    /// that starts its session meanwhile learns the same from its `Welcome`; one whose slot
    /// comes after the cursor may hear it twice, which every broadcast frame allows.
    pub(super) fn broadcast(&mut self, engine: &mut Engine, frame: &ControlFrame) {
        let pace_ms = match frame {
            ControlFrame::RoundNotice { min_shake_interval_ms, .. }
            | ControlFrame::Pace { min_shake_interval_ms } => Some(*min_shake_interval_ms),
            _ => None,
        };
        let frame = self.encode(frame);
        while self.broadcasts.len() >= MAX_BROADCASTS {
            // A budget of every slot finishes at least the oldest.
            self.continue_broadcasts(engine, self.sessions.len().max(1));
        }
        self.broadcasts.push_back(Broadcast { frame, pace_ms, next: 0 });
    }

    /// Sends the broadcasts in progress to at most `budget` more phones.
    pub(super) fn continue_broadcasts(&mut self, engine: &mut Engine, mut budget: usize) {
        while budget > 0 {
            let Some(mut broadcast) = self.broadcasts.pop_front() else { return };
            while budget > 0 && broadcast.next < self.sessions.len() {
                let ch = ConnectionHandle(broadcast.next);
                broadcast.next += 1;
                let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::as_mut) else {
                    continue;
                };
                if matches!(session.phase, Phase::Serving(_)) {
                    // The phone now keeps what the frame tells: `tell_pace` compares with it.
                    if let Some(pace_ms) = broadcast.pace_ms {
                        session.told_pace_ms = pace_ms;
                    }
                    budget -= 1;
                    let frame = broadcast.frame.clone();
                    engine.with_connection(ch, |conn| self.write_control(ch, conn, &frame));
                }
            }
            if broadcast.next < self.sessions.len() {
                self.broadcasts.push_front(broadcast);
            }
        }
    }
}
