//! The allocator link's side of the turn: frames in from the link thread (answers, quotas,
//! round states), the uplink's frames out to it.

use super::*;

impl LoopWorker {
    /// The allocator link: its events in, the uplink's frames out (while the pipe has room).
    pub(super) fn exchange_with_link(&mut self, now: Instant, engine: &mut Engine) {
        let now_us = self.now_us(now);
        let mut taken = 0;
        self.link_backlog = false;
        while let Ok(event) = self.link.from_link.try_recv() {
            match event {
                LinkEvent::Up => {
                    let up = self.core.on_link_up();
                    if up.links() > 1 {
                        self.shared.metrics.batches_resent.inc_by(up.in_flight() as u64);
                    }
                }
                LinkEvent::Down => self.core.uplink().link_down(),
                LinkEvent::Frame(frame) => {
                    match &frame {
                        shake_proto::AllocatorFrame::RoundState { .. } => {
                            self.shared.metrics.round_states.inc();
                        }
                        shake_proto::AllocatorFrame::UsersLimited { until_ms, user_ids } => {
                            let until_ms = self.core.local_time_ms(*until_ms);
                            self.shared.sessions.note_limited(user_ids, until_ms, now_ms());
                        }
                        _ => {}
                    }
                    let heartbeat = matches!(frame, shake_proto::AllocatorFrame::Heartbeat { .. });
                    let mut effects = Vec::new();
                    self.core.on_allocator_frame(frame, now_us, now_ms(), &mut effects);
                    if heartbeat {
                        let ahead = self.core.allocator_clock_ahead_ms();
                        self.shared.metrics.allocator_clock_ahead_ms.set(ahead);
                    }
                    self.deliver(engine, effects);
                }
            }
            taken += 1;
            if taken == LINK_EVENTS_PER_TURN {
                self.link_backlog = true;
                break;
            }
        }
        while self.link.to_link.capacity() > 0 {
            let Some(frame) = self.core.uplink().poll_transmit() else { break };
            if self.link.to_link.try_send(frame).is_err() {
                break;
            }
        }
    }
}
