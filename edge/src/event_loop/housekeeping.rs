//! The worker's periodic and closing work: metrics, load reports and overload judgement every
//! interval, the drain and the fast stop, superseded sessions closed.

use super::*;

impl LoopWorker {
    /// Every 100 ms (true when it ran).
    pub(super) fn housekeeping(&mut self, now: Instant) -> bool {
        if now < self.next_housekeeping {
            return false;
        }
        self.next_housekeeping = now + Duration::from_millis(100);
        self.ticks += 1;
        self.drain_seen = self.drain_seen || self.shared.drain.is_cancelled();
        self.stop_seen = self.stop_seen || self.shared.stop.is_cancelled();
        if self.ticks == 20 && shake_ops::supervise::failpoint("edge-worker-panic") {
            panic!("failpoint edge-worker-panic");
        }
        let metrics = &self.shared.metrics;
        metrics.add_core_counts(self.core.take_counts());
        let c = std::mem::take(&mut self.counts);
        metrics.count_drops(Dropped::MalformedDatagram, c.malformed_datagrams);
        metrics.count_drops(Dropped::ShakeBeforeWelcome, c.shakes_before_welcome);
        metrics.count_drops(Dropped::OutboxFull, c.outbox_full);
        metrics.count_drops(Dropped::DatagramOutsideSession, c.datagrams_outside_session);
        let uplink = self.core.uplink();
        let (acks, wanted) = (uplink.take_acks_dropped(), uplink.take_wanted_dropped());
        metrics.count_drops(Dropped::AwardAckQueueFull, acks);
        metrics.count_drops(Dropped::OwedRequestQueueFull, wanted);
        metrics.paces_told.inc_by(c.paces_told);
        EdgeMetrics::add(&metrics.shed, &ShedLabels { how: Shed::SlowDown }, c.slowed_for_load);
        let in_flight = self.core.uplink().in_flight() as i64;
        metrics.in_flight_batches.inc_by(in_flight - self.in_flight_published);
        self.in_flight_published = in_flight;
        metrics.awards_outstanding.set(self.shared.awards.outstanding() as i64);
        let (was, is) = (self.published_stats, self.driver_stats);
        metrics.add_loop_stats(self.id, &was, &is);
        self.published_stats = is;
        if self.ticks.is_multiple_of(10) {
            let now_us = self.now_us(now);
            self.sources.sweep(now_us);
            self.core.on_load_tick(now_us, now_ms());
            metrics.users_live.set(self.shared.sessions.live() as i64);
            let handshakes = self.shared.handshakes.load(Ordering::Relaxed);
            metrics.handshakes_in_progress.set(i64::from(handshakes));
            let held = self.sessions.iter().flatten().count() as i64;
            let labels = crate::metrics::WorkerLabels { worker: self.id };
            metrics.sessions_held.get_or_create(&labels).set(held);
            if self.shared.config.overload.enabled {
                self.cpu_quota = crate::cpu_allowance::process_cores();
            }
        }
        true
    }

    /// Tells every phone of this worker the next round to open before it opens, if a phone
    /// here may not know it: as soon as no round is open (between rounds, the worker's quiet
    /// time), else when it opens within [`crate::overload::OPENING_LEAD_US`]. A phone hears of
    /// rounds from its `Welcome` (the open or next one, and the 8 soonest after it) and from
    /// notices of rounds announced or changed while it is here; without this, a phone that
    /// stayed for a show of more than nine rounds never heard of the tenth and sat it and every
    /// later one out. Rounds open one after another, so once the next is told, every phone
    /// here knows every round up to it ([`LoopWorker::told_through_ms`]).
    pub(super) fn announce_next_round(&mut self, engine: &mut Engine) {
        if self.draining_since.is_some() {
            return;
        }
        let now_ms = now_ms();
        let admission = self.core.admission();
        let Some(round) = admission.next_round(now_ms) else { return };
        if round.starts_at_ms <= self.told_through_ms {
            return;
        }
        let opens_in_us = (round.starts_at_ms - now_ms).saturating_mul(1000);
        if admission.open_round(now_ms).is_some() && opens_in_us > crate::overload::OPENING_LEAD_US
        {
            return;
        }
        let notice = ControlFrame::RoundNotice {
            round: admission.told(round),
            min_shake_interval_ms: admission.min_interval_ms(),
        };
        self.told_through_ms = round.starts_at_ms;
        self.broadcast(engine, &notice);
    }

    /// Drain (SIGTERM) and stop (SIGINT), as seen at the last housekeeping tick (at most
    /// 100 ms late), carried out once a turn.
    pub(super) fn shutdown(&mut self, now: Instant, engine: &mut Engine) -> Flow {
        if self.stop_seen {
            return self.close_every_phone(now, engine);
        }
        if self.drain_seen {
            let since = *self.draining_since.get_or_insert(now);
            if since == now {
                let go_away = ControlFrame::GoAway { reconnect_after_ms: RECONNECT_AFTER_DRAIN_MS };
                self.broadcast(engine, &go_away);
            }
            // Every turn, not only the first: phones still connected shake on (each told
            // `Forwarded`), and a batch left open when the last of them goes would never leave.
            let now_us = self.now_us(now);
            self.core.flush(now_us);
            let deadline = Duration::from_millis(self.shared.config.limits.drain_deadline_ms);
            let answered = self.core.uplink().in_flight() == 0 && !self.core.uplink().has_output();
            let left = self.core.phones().is_empty();
            let late = now.duration_since(since) >= deadline;
            if (answered && left) || (late && self.stopping_since.is_none()) {
                tracing::info!(
                    worker = self.id,
                    unanswered = self.core.uplink().in_flight(),
                    phones_left = self.core.phones().len(),
                    "worker drained"
                );
            }
            if answered && left {
                return Flow::Stop;
            }
            if late {
                // Phones still here at the deadline are closed as SIGINT closes them: dropped
                // without a word, each waited for its idle timeout to learn the edge had gone.
                return self.close_every_phone(now, engine);
            }
        }
        Flow::Continue
    }

    /// Closes every phone's session with `DRAINING` on the first call (an `Error` frame, then
    /// the close), then stops once all have closed or after [`STOP_GRACE`].
    fn close_every_phone(&mut self, now: Instant, engine: &mut Engine) -> Flow {
        let since = *self.stopping_since.get_or_insert(now);
        if since == now {
            let serving: Vec<ConnectionHandle> = self.phone_connections();
            for ch in serving {
                engine.with_connection(ch, |conn| {
                    let code = ErrorCode::Draining;
                    self.start_close(now, ch, conn, code, code.name());
                });
            }
        }
        let closed = self.sessions.iter().flatten().all(|s| matches!(s.phase, Phase::Closing(_)));
        if now.duration_since(since) >= STOP_GRACE || (closed && engine.connections() == 0) {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// Closes this worker's sessions that a newer session of their user superseded.
    pub(super) fn close_superseded(&mut self, now: Instant, engine: &mut Engine) {
        for old in self.shared.sessions.take_superseded(self.id) {
            let ch = ConnectionHandle(old.conn);
            let current = self.session(ch).is_some_and(|s| {
                matches!(s.phase, Phase::Serving(_)) && s.holds.is_some_and(|h| h.1 == old.serial)
            });
            if current {
                engine.with_connection(ch, |conn| {
                    let code = ErrorCode::SessionSuperseded;
                    self.start_close(now, ch, conn, code, "a newer session of this user started");
                });
            }
        }
    }

    /// Feeds the loop's counters to overload control; at the end of each of its intervals,
    /// the pace it sets and its verdict go to admission and the metrics. The pace reaches the
    /// phones with their next answers (a broadcast to every phone costs what a second of
    /// answers does, and a phone paced to a long interval hears a lower pace one interval
    /// later).
    pub(super) fn judge_load(&mut self, now_us: u64, stats: &DriverStats, engine: &mut Engine) {
        if !self.overload.due(now_us) {
            return;
        }
        // The interval of the round phones go by now (a round opened or closed since the
        // allocator's last word; its `RoundState` normally says so first).
        self.core.admission_mut().refresh_interval(now_ms());
        let reading = LoopReading {
            // What this worker's socket gave (forwarded datagrams are counted by the worker
            // that read them).
            datagrams_in: stats.datagrams_in,
            shed: stats.shed,
            kernel_drops: stats.kernel_drops,
            busy_us: stats.busy_us,
            wall_us: stats.wall_us,
            // The loop's own thread: this runs inside its turn.
            cpu_us: shake_loop::udp::thread_cpu_us().saturating_sub(self.cpu_at_start_us.0),
            cpu_allowance: self.cpu_allowance(),
            process_cpu_us: shake_loop::udp::process_cpu_us()
                .saturating_sub(self.cpu_at_start_us.1),
            process_quota: self.cpu_quota.unwrap_or(0.0),
            shakes: self.shakes_decided,
            handshakes: self.handshakes_done,
            phones: self.core.phones().len() as u64,
        };
        let base_ms = self.core.admission().base_interval_ms();
        let Some(verdict) = self.overload.on_turn(now_us, reading, base_ms) else { return };
        let pace_ms = self.overload.pace_ms(base_ms);
        let was = self.core.admission().min_interval_ms();
        self.core.admission_mut().set_pace_ms(pace_ms);
        if pace_ms != was {
            tracing::info!(
                worker = self.id,
                pace_ms,
                overload = format!("{:.2}", verdict.overload),
                busy = format!("{:.2}", verdict.busy),
                capacity_per_s = verdict.capacity_per_s.round(),
                cpu_allowance = self.cpu_allowance(),
                "pace changed"
            );
        }
        self.shared.metrics.set_overload(self.id, pace_ms, &verdict);
        self.pace_before_opening(now_us, reading.phones, engine);
    }

    /// Before a round opens, the pace and start spread the worker's capacity (measured in its
    /// last overload, or configured) needs for the phones it holds, told to every phone at
    /// once while the worker is idle (`Overload::before_opening`): a `RoundNotice` with both.
    fn pace_before_opening(&mut self, now_us: u64, phones: u64, engine: &mut Engine) {
        let now_ms = now_ms();
        let Some(round) = self.core.admission().next_round(now_ms) else { return };
        let opens_in_us = (round.starts_at_ms - now_ms).saturating_mul(1000);
        if opens_in_us <= crate::overload::OPENING_LEAD_US && self.shared.config.overload.enabled {
            // The pace is told to every phone once: from the quota in force now, not as read
            // up to a second ago.
            self.cpu_quota = crate::cpu_allowance::process_cores();
        }
        let base_ms = self.core.admission().base_interval_ms();
        let Some(pace_ms) = self.overload.before_opening(
            now_us,
            opens_in_us,
            phones,
            self.cpu_allowance(),
            base_ms,
        ) else {
            return;
        };
        let admission = self.core.admission_mut();
        admission.set_pace_ms(pace_ms);
        admission.spread_start_over(round.round_id, pace_ms);
        let told = admission.told(round);
        tracing::info!(
            worker = self.id,
            pace_ms,
            start_spread_ms = told.start_spread_ms,
            phones,
            opens_in_ms = opens_in_us / 1000,
            cpu_allowance = self.cpu_allowance(),
            "pace set before the opening"
        );
        let notice = ControlFrame::RoundNotice { round: told, min_shake_interval_ms: pace_ms };
        self.told_through_ms = self.told_through_ms.max(round.starts_at_ms);
        self.broadcast(engine, &notice);
    }

    pub(super) fn phone_connections(&self) -> Vec<ConnectionHandle> {
        self.sessions
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                s.as_ref().is_some_and(|s| !matches!(s.phase, Phase::Closing(_) | Phase::Handshake))
            })
            .map(|(i, _)| ConnectionHandle(i))
            .collect()
    }
}
