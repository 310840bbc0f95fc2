//! The phone session on the loop: handshake admission's last step, `Hello` and `Welcome`,
//! the control stream, shakes out of datagrams decided and answered in the same pass, closes
//! with an `Error` first, and a lost connection's clean-up.

use super::*;

impl LoopWorker {
    /// Ends an attempt's count against its source's cap and the edge-wide ones: once it
    /// serves, or is over. A connection that completed its handshake and says nothing holds a
    /// session as surely as one still handshaking, so it counts until `Hello` (or its
    /// deadline): released at the handshake, a source's connections waiting out
    /// `hello_timeout_ms` were held back by its rate alone (200 + 50 a second by default), and
    /// ten addresses could hold every edge-wide slot, refusing every phone.
    pub(super) fn attempt_done(&mut self, source: Option<IpAddr>) {
        if let Some(source) = source {
            self.sources.on_handshake_done(source);
        }
        self.shared.handshakes.fetch_sub(1, Ordering::Relaxed);
    }

    /// Starts closing a session with `code`: an `Error` frame first when the control stream is
    /// open (docs/PROTOCOL.md 5.1 step 7), the close itself when it is acknowledged or after
    /// [`CLOSE_GRACE`].
    pub(super) fn start_close(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        code: ErrorCode,
        reason: &str,
    ) {
        let error = self
            .encode(&ControlFrame::Error { code: code.code().into(), reason: reason.to_owned() });
        let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::as_mut) else { return };
        if matches!(session.phase, Phase::Closing(_)) {
            return;
        }
        let left = std::mem::replace(&mut session.phase, Phase::Closing(code));
        let stream = session.stream;
        let source = session.source.take();
        let holds = session.holds.take();
        match left {
            Phase::Serving(at) => self.leave(now, at, holds),
            // Closed before its handshake completed: the handshake is over all the same (the
            // in-progress count must not leak).
            Phase::Handshake => {
                self.shared.metrics.count_handshake(HandshakeOutcome::Failed);
                self.attempt_done(source);
            }
            Phase::AwaitHello => self.attempt_done(source),
            Phase::Closing(_) => {}
        }
        match stream {
            Some(stream) => {
                // Written only after every queued frame: part of one still waiting for credit
                // would have the Error land inside it (the close code reaches the phone in
                // CONNECTION_CLOSE either way).
                self.flush_control(ch, conn);
                let clear = self
                    .sessions
                    .get(ch.0)
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.out.is_empty());
                let mut send = conn.send_stream(stream);
                if clear {
                    let _ = send.write(&error);
                }
                let _ = send.finish();
                self.deadlines.set(ch.0, Some(now + CLOSE_GRACE));
            }
            None => self.close_now(now, ch, conn, code),
        }
    }

    /// Closes a connection whose QUIC handshake did not complete by its deadline, counted
    /// `timed_out` (the phone sees `HELLO_TIMEOUT`: docs/PROTOCOL.md 5.1).
    pub(super) fn handshake_timed_out(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
    ) {
        let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::as_mut) else { return };
        if !matches!(session.phase, Phase::Handshake) {
            return;
        }
        // The session goes with the close (`close_now`): its accounting is settled here.
        let source = session.source.take();
        self.shared.metrics.count_handshake(HandshakeOutcome::TimedOut);
        self.attempt_done(source);
        self.close_now(now, ch, conn, ErrorCode::HelloTimeout);
    }

    pub(super) fn close_now(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        code: ErrorCode,
    ) {
        self.shared.metrics.count_session_closed(code);
        conn.close(now, VarInt::from_u32(code.code()), Bytes::from_static(code.name().as_bytes()));
        self.deadlines.set(ch.0, None);
        // Forgotten now: quinn-proto reports no `ConnectionLost` for a close of our own, so
        // the session (its read buffer, up to 64 queued frames) stayed until its slot was
        // handed to another connection. Its accounting was settled when the close began.
        if let Some(slot) = self.sessions.get_mut(ch.0) {
            *slot = None;
        }
    }

    /// Writes a control frame on the phone's stream, or queues it while the stream has no
    /// credit (bounded: a phone that stops reading loses frames, counted).
    pub(super) fn write_control(
        &mut self,
        ch: ConnectionHandle,
        conn: &mut Connection,
        frame: &[u8],
    ) {
        let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::as_mut) else { return };
        let Some(stream) = session.stream else { return };
        // A frame is a slice of the worker's 64 KB scratch buffer: one kept in the outbox is
        // copied out, or it would keep the whole buffer alive for as long as the phone does not
        // read (the outbox is the slow path: a stream out of credit).
        if session.out.is_empty() {
            match conn.send_stream(stream).write(frame) {
                Ok(n) if n == frame.len() => return,
                Ok(n) => {
                    session.out.push_back(Bytes::copy_from_slice(&frame[n..]));
                    // The rest is written until quinn-proto refuses it: only a refused write
                    // asks for the `Writable` event that flushes the outbox.
                    self.flush_control(ch, conn);
                    return;
                }
                Err(_) => {}
            }
        }
        if session.out.len() >= OUTBOX_FRAMES {
            self.counts.outbox_full += 1;
        } else {
            session.out.push_back(Bytes::copy_from_slice(frame));
        }
    }

    /// Writes the outbox until it is empty or quinn-proto refuses a write.
    ///
    /// invariant: an outbox left non-empty ends on a refused write. quinn-proto sends
    /// `Writable` only for a stream whose write it refused (no credit at all); a write cut
    /// short by the connection's credit or send window registers nothing, and an outbox left
    /// after one would wait for an event that never comes, every later frame queued behind it.
    pub(super) fn flush_control(&mut self, ch: ConnectionHandle, conn: &mut Connection) {
        let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::as_mut) else { return };
        let Some(stream) = session.stream else { return };
        while let Some(frame) = session.out.front_mut() {
            match conn.send_stream(stream).write(frame) {
                Ok(n) if n == frame.len() => {
                    session.out.pop_front();
                }
                Ok(0) | Err(_) => return,
                Ok(n) => *frame = frame.slice(n..),
            }
        }
    }

    /// Reads what the control stream has and acts on each complete frame.
    ///
    /// Every frame read is acted on or ends the session, so the buffer holds at most one
    /// incomplete frame and what one read brings (the stream's window): a session that will
    /// act on no more frames (handshaking, closing) reads nothing, and its window stays shut.
    pub(super) fn on_control_readable(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        id: StreamId,
    ) {
        {
            let Some(session) = self.session(ch) else { return };
            if session.stream != Some(id)
                || matches!(session.phase, Phase::Handshake | Phase::Closing(_))
            {
                return;
            }
            let mut stream = conn.recv_stream(id);
            let mut recv = match stream.read(true) {
                Ok(recv) => recv,
                Err(_) => return,
            };
            while let Ok(Some(chunk)) = recv.next(shake_proto::limits::MAX_CONTROL_PAYLOAD + 16) {
                session.buf.extend_from_slice(&chunk.bytes);
            }
            let _ = recv.finalize();
        }
        loop {
            let Some(session) = self.session(ch) else { return };
            let decoded = ControlFrame::decode(&mut session.buf);
            let frame = match decoded {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(err) => {
                    self.shared.metrics.count_drops(DropReason::Protocol(err.label()), 1);
                    let code = ErrorCode::for_decode_error(&err);
                    return self.start_close(now, ch, conn, code, code.name());
                }
            };
            let phase = match &session.phase {
                Phase::AwaitHello => None,
                Phase::Serving(at) => Some(*at),
                Phase::Handshake | Phase::Closing(_) => return,
            };
            match (frame, phase) {
                (ControlFrame::Hello { token, capabilities, .. }, None) => {
                    self.on_hello(now, ch, conn, &token, capabilities);
                }
                (ControlFrame::AwardAck { award_id }, Some(at)) => {
                    if self.core.on_award_ack(at, award_id, now_ms()).is_err() {
                        let code = ErrorCode::Flood;
                        let reason = "too many acknowledgements of awards not sent to this user";
                        return self.start_close(now, ch, conn, code, reason);
                    }
                }
                (ControlFrame::Shake(shake), Some(at)) => {
                    let now_us = self.now_us(now);
                    self.shakes_decided += 1;
                    if let Some(outcome) = self.decide(at, shake, now_us, now_ms()) {
                        let frame = self.encode(&ControlFrame::outcomes(&[outcome]));
                        self.write_control(ch, conn, &frame);
                        self.tell_pace(ch, conn);
                    }
                }
                (ControlFrame::Error { .. }, Some(_)) => {
                    // The phone is leaving: the session ends here, and nothing it sends after
                    // is read.
                    let code = ErrorCode::NoError;
                    return self.start_close(now, ch, conn, code, code.name());
                }
                (_, _) => {
                    let code = ErrorCode::UnexpectedFrame;
                    return self.start_close(now, ch, conn, code, code.name());
                }
            }
        }
    }

    pub(super) fn on_hello(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        token: &[u8],
        capabilities: u64,
    ) {
        let claims = match self.shared.keys.verify(token, now_ms() / 1000) {
            Ok(claims) => claims,
            Err(err) => {
                let code = ErrorCode::for_token_error(&err);
                self.shared.metrics.count_drops(DropReason::Protocol(err.label()), 1);
                return self.start_close(now, ch, conn, code, &err.to_string());
            }
        };
        // One live session per user on this edge: an older one, on any worker, is closed;
        // past the user's supersede budget this one is refused instead.
        let now_us = self.now_us(now);
        let serial = self.shared.sessions.next_serial();
        let closer = Closer { worker: self.id, conn: ch.0 };
        let resumed =
            match self.shared.sessions.claim(claims.user_id, serial, self.id, closer, now_us) {
                Claim::Fresh => self.shared.sessions.take_resting(claims.user_id, now_us),
                Claim::Superseded => {
                    tracing::debug!(
                        user_id = claims.user_id,
                        "a newer session supersedes the user's"
                    );
                    // The replaced session's bucket lives in its own worker: this one starts with a
                    // single shake, not a fresh burst (each replacement would buy one, within the
                    // supersede budget).
                    Some(self.core.admission().phone_bucket_holding(1.0, now_us))
                }
                Claim::Refused => {
                    tracing::debug!(
                        user_id = claims.user_id,
                        "session refused: the user's is in use"
                    );
                    let code = ErrorCode::SessionInUse;
                    let reason = "this user's session on this edge is in use";
                    return self.start_close(now, ch, conn, code, reason);
                }
            };
        // Shakes that arrived before Welcome are dropped (docs/PROTOCOL.md section 6).
        while conn.datagrams().recv().is_some() {
            self.counts.shakes_before_welcome += 1;
        }
        let at = self.core.add_phone(claims.user_id, ch, now_us, resumed);
        let now_ms = now_ms();
        let pace_ms = self.core.admission().min_interval_ms();
        let round = self.core.admission().current_round(now_ms);
        let welcome = self.encode(&ControlFrame::Welcome {
            server_time_ms: now_ms,
            min_shake_interval_ms: pace_ms,
            round,
        });
        let datagrams = capabilities & CAP_DATAGRAMS != 0 && conn.datagrams().max_size().is_some();
        if let Some(session) = self.session(ch) {
            session.phase = Phase::Serving(at);
            session.datagrams = datagrams;
            session.holds = Some((claims.user_id, serial));
            session.told_pace_ms = pace_ms;
        }
        self.deadlines.set(ch.0, None);
        // The attempt (reached from `AwaitHello` only) becomes a phone.
        let source = self.session(ch).and_then(|s| s.source.take());
        self.attempt_done(source);
        self.shared.phones.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.phones.inc();
        self.write_control(ch, conn, &welcome);
        // Rounds announced before this phone came are news to it: the broadcast that told
        // the others went out before it was here (docs/PROTOCOL.md section 4).
        let upcoming = self.core.admission().upcoming_rounds(now_ms, round.round_id);
        if upcoming.len() == crate::admission::UPCOMING_ROUNDS_AT_WELCOME {
            // There may be more than it was told: this phone knows the rounds up to the last.
            let told_through = upcoming.last().map_or(u64::MAX, |r| r.starts_at_ms);
            self.told_through_ms = self.told_through_ms.min(told_through);
        }
        for upcoming in upcoming {
            let notice =
                ControlFrame::RoundNotice { round: upcoming, min_shake_interval_ms: pace_ms };
            let notice = self.encode(&notice);
            self.write_control(ch, conn, &notice);
        }
        // Welcomed during a drain (its handshake was under way when the drain began, so the
        // drain's broadcast passed it by): told to go as the others were, not left to wait
        // for the drain's deadline and its idle timeout.
        if self.draining_since.is_some() {
            let go_away =
                self.encode(&ControlFrame::GoAway { reconnect_after_ms: RECONNECT_AFTER_DRAIN_MS });
            self.write_control(ch, conn, &go_away);
        }
    }

    pub(super) fn on_datagrams(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
    ) {
        let at = match self.session(ch).map(|s| (&s.phase, s.datagrams)) {
            Some((Phase::Serving(at), true)) => *at,
            Some((Phase::Serving(_), false)) | None | Some((Phase::Closing(_), _)) => {
                while conn.datagrams().recv().is_some() {
                    self.counts.datagrams_outside_session += 1;
                }
                return;
            }
            Some((Phase::Handshake | Phase::AwaitHello, _)) => {
                // Dropped and counted as they come (docs/PROTOCOL.md section 6), not left in
                // quinn-proto's buffer until Welcome: each one left there would keep its
                // received datagram alive for as long as the Hello takes, or forever.
                while conn.datagrams().recv().is_some() {
                    self.counts.shakes_before_welcome += 1;
                }
                return;
            }
        };
        let now_us = self.now_us(now);
        let now_ms = now_ms();
        let mut answered = false;
        while let Some(payload) = conn.datagrams().recv() {
            match datagram::decode(&payload) {
                Ok(Datagram::Shake(shake)) => {
                    self.shakes_decided += 1;
                    if let Some(outcome) = self.decide(at, shake, now_us, now_ms) {
                        datagram::encode_outcomes(&mut self.scratch, &[outcome]);
                        let answer = self.scratch.split().freeze();
                        let _ = self.outcomes.send(conn, answer);
                        answered = true;
                    }
                }
                Ok(Datagram::Outcomes(_)) | Err(_) => self.counts.malformed_datagrams += 1,
            }
        }
        if answered {
            self.tell_pace(ch, conn);
        }
    }

    /// Decides one shake: `SlowDown` (retry after the pace) if it waited past the queue delay
    /// target while a standing queue lasts, else the core's verdict.
    pub(super) fn decide(
        &mut self,
        at: PhoneRef,
        shake: shake_proto::Shake,
        now_us: u64,
        now_ms: u64,
    ) -> Option<shake_proto::Outcome> {
        if self.overload.slow_down(self.datagram_wait_us) {
            self.counts.slowed_for_load += 1;
            let retry_after_ms = self.core.admission().min_interval_ms();
            let verdict = shake_proto::Verdict::SlowDown { retry_after_ms };
            return Some(shake_proto::Outcome { seq: shake.seq, verdict });
        }
        self.core.on_shake(at, shake, now_us, now_ms)
    }

    /// Tells the phone the worker's pace if it changed since the phone last heard it: with an
    /// answer, so the `Pace` rides in the same packet and costs no send of its own, and reaches
    /// exactly the phones that are shaking.
    pub(super) fn tell_pace(&mut self, ch: ConnectionHandle, conn: &mut Connection) {
        let pace_ms = self.core.admission().min_interval_ms();
        let Some(session) = self.session(ch) else { return };
        if session.told_pace_ms == pace_ms {
            return;
        }
        session.told_pace_ms = pace_ms;
        self.counts.paces_told += 1;
        let frame = self.encode(&ControlFrame::Pace { min_shake_interval_ms: pace_ms });
        self.write_control(ch, conn, &frame);
    }

    /// A served phone's session is over (closed or lost): its phone leaves the worker, and its
    /// user, if the session held it, is released with the phone's shake bucket.
    fn leave(&mut self, now: Instant, at: PhoneRef, holds: Option<(u64, u64)>) {
        let bucket = self.core.remove_phone(at).map(|phone| phone.bucket());
        self.shared.phones.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.phones.dec();
        if let Some((user, serial)) = holds {
            self.shared.sessions.release(user, serial, bucket, self.now_us(now));
        }
    }

    pub(super) fn on_lost(&mut self, now: Instant, ch: ConnectionHandle, reason: &ConnectionError) {
        let Some(session) = self.sessions.get_mut(ch.0).and_then(Option::take) else { return };
        self.deadlines.set(ch.0, None);
        match session.phase {
            Phase::Handshake => {
                self.shared.metrics.count_handshake(HandshakeOutcome::Failed);
                self.attempt_done(session.source);
            }
            Phase::Serving(at) => self.leave(now, at, session.holds),
            Phase::AwaitHello => self.attempt_done(session.source),
            Phase::Closing(_) => {}
        }
        tracing::trace!(conn = ch.0, %reason, "phone connection lost");
    }
}
