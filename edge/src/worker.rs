//! One edge worker: a thread with its own single-threaded runtime, its own QUIC endpoint on the
//! shared port, its own admission state, batcher and allocator stream. Nothing it touches per
//! shake is shared with another thread, so nothing per shake takes a lock.
//!
//! Tasks on the worker (all on one thread, sharing `Rc<RefCell<WorkerState>>`; no borrow is
//! held across an await):
//! - accept: handshake admission on `Incoming`, then one session task per phone;
//! - session: `Hello` within the deadline, then datagrams and control frames until close;
//! - uplink: this worker's stream to the allocator, resent batches after a reconnect;
//! - ticker: flush batches by age, load reports, award acknowledgements, metrics.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use shake_proto::allocator::PROTOCOL_VERSION;
use shake_proto::control::CAP_DATAGRAMS;
use shake_proto::datagram::{self, Datagram, Outcome};
use shake_proto::{AllocatorFrame, ControlFrame, ErrorCode, KeyRing, Verdict};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, AdmissionSettings, Decision};
use crate::batcher::{BatchSettings, Batcher, Flushed};
use crate::bucket::{Rate, TokenBucket};
use crate::config::EdgeConfig;
use crate::metrics::EdgeMetrics;
use crate::outbox::Outbox;
use crate::phones::{PhoneRef, PhoneTable};
use crate::sources::{SourceLimiter, SourceLimits, SourceVerdict};

/// What every worker shares (read-mostly, or per-connection atomics).
#[derive(Debug)]
pub struct Shared {
    /// The configuration.
    pub config: EdgeConfig,
    /// Token keys.
    pub keys: KeyRing,
    /// Metrics.
    pub metrics: Arc<EdgeMetrics>,
    /// Handshakes in progress, whole edge.
    pub handshakes: AtomicU32,
    /// Phones connected, whole edge.
    pub phones: AtomicU32,
    /// Where the clock starts for buckets.
    pub origin: Instant,
    /// Stop accepting, tell phones to go, flush, wait for answers.
    pub drain: CancellationToken,
    /// Stop at once.
    pub stop: CancellationToken,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

struct Phone {
    control: Rc<Outbox>,
    user_id: u64,
    bucket: TokenBucket,
}

/// Counted on the worker thread, added to the shared metrics by the ticker.
#[derive(Default)]
struct Counts {
    no_luck: u64,
    slow_down: u64,
    round_closed: u64,
    forwarded: u64,
    backpressure: u64,
    malformed_datagrams: u64,
    awards_written: u64,
    awards_orphaned: u64,
}

struct WorkerState {
    id: u16,
    workers: usize,
    admission: Admission,
    batcher: Batcher<PhoneRef>,
    phones: PhoneTable<Phone>,
    uplink: mpsc::UnboundedSender<Bytes>,
    acks: Vec<u64>,
    scratch: BytesMut,
    counts: Counts,
    flushed_at: HashMap<u64, Instant>,
    sources: SourceLimiter,
    /// Woken when a shake opens a new batch, so the age flusher sleeps while none is open.
    batch_opened: Rc<tokio::sync::Notify>,
    /// Broadcasts for the [`broadcaster`] task, one at a time, in order.
    broadcasts: mpsc::UnboundedSender<Broadcast>,
}

/// A control frame for every phone a worker had when it was sent.
type Broadcast = (Vec<Rc<Outbox>>, Bytes);

type State = Rc<RefCell<WorkerState>>;

impl WorkerState {
    /// Sends a flushed batch upstream and notes when, for the round-trip metric.
    fn send_batch(&mut self, flushed: Flushed, metrics: &EdgeMetrics) {
        metrics.batch_entries.observe(flushed.entries as f64);
        self.flushed_at.insert(flushed.seq, Instant::now());
        let _ = self.uplink.send(flushed.frame);
    }

    /// Decides one shake and returns the outcome to send.
    fn on_shake(
        &mut self,
        at: PhoneRef,
        shake: shake_proto::Shake,
        shared: &Shared,
    ) -> Option<Outcome> {
        let now_us = shared.now_us();
        let now_ms = now_ms();
        let Self { admission, batcher, phones, counts, .. } = self;
        let phone = phones.get_mut(at)?;
        let verdict = match admission.decide(shake.round_id, &mut phone.bucket, now_us, now_ms) {
            Decision::Answer(verdict) => verdict,
            Decision::Admit { round_id } => {
                match batcher.push(round_id, phone.user_id, at, now_us, now_ms) {
                    Ok(flushed) => {
                        if let Some(frame) = flushed {
                            self.send_batch(frame, &shared.metrics);
                        }
                        if self.batcher.open_len() == 1 {
                            self.batch_opened.notify_one();
                        }
                        Verdict::Forwarded
                    }
                    Err(_) => {
                        counts.backpressure += 1;
                        Verdict::NoLuck
                    }
                }
            }
        };
        match verdict {
            Verdict::NoLuck => self.counts.no_luck += 1,
            Verdict::SlowDown { .. } => self.counts.slow_down += 1,
            Verdict::RoundClosed => self.counts.round_closed += 1,
            Verdict::Forwarded => self.counts.forwarded += 1,
        }
        Some(Outcome { seq: shake.seq, verdict })
    }

    fn encode(&mut self, f: impl FnOnce(&mut BytesMut)) -> Bytes {
        f(&mut self.scratch);
        self.scratch.split().freeze()
    }

    fn control_frame(&mut self, frame: &ControlFrame) -> Bytes {
        self.encode(|out| frame.encode(out))
    }

    /// Sends a control frame to every phone of this worker, paced (see [`broadcaster`]).
    fn broadcast(&mut self, frame: &ControlFrame) {
        let bytes = self.control_frame(frame);
        let outboxes: Vec<Rc<Outbox>> = self.phones.iter().map(|p| p.control.clone()).collect();
        let _ = self.broadcasts.send((outboxes, bytes));
    }
}

/// Phones a broadcast reaches before it lets the worker's other tasks run.
const BROADCAST_CHUNK: usize = 256;

/// Delivers broadcasts one after another, each to `BROADCAST_CHUNK` outboxes at a time with a
/// yield in between. A round notice pushed to 10,000 phones at once woke 10,000 sessions and
/// their connections ahead of everything else, and the shakes arriving at that moment (the
/// round opening) waited behind them: an estimated 300 ms at 30 us per message
/// (docs/PERFORMANCE.md). One task for all broadcasts keeps their order for every phone (two
/// tasks yielding in turn do not: tokio may resume them in either order).
async fn broadcaster(mut broadcasts: mpsc::UnboundedReceiver<Broadcast>) {
    while let Some((outboxes, frame)) = broadcasts.recv().await {
        for chunk in outboxes.chunks(BROADCAST_CHUNK) {
            for outbox in chunk {
                outbox.push(frame.clone());
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Runs one worker on the current thread until stopped. `socket` is already bound to the
/// shared port.
pub fn run(
    id: u16,
    workers: usize,
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
    shared: Arc<Shared>,
    allocator: watch::Receiver<Option<quinn::Connection>>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        let config = &shared.config;
        let l = &config.limits;
        let now_us = shared.now_us();
        let share = workers as f64;
        let settings = AdmissionSettings {
            phone: Rate::new(l.phone_rate_per_s, l.phone_burst),
            fallback: Rate::new(l.fallback_rate_per_s / share, (l.fallback_burst / share).max(1.0)),
        };
        let batch = BatchSettings {
            max_entries: l.batch_max_entries,
            max_age_us: l.batch_max_age_us,
            max_in_flight: l.max_in_flight_batches,
        };
        let start_us =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64);
        let (uplink_tx, uplink_rx) = mpsc::unbounded_channel();
        let (broadcasts_tx, broadcasts_rx) = mpsc::unbounded_channel();
        let state: State = Rc::new(RefCell::new(WorkerState {
            id,
            workers,
            admission: Admission::new(settings, now_us),
            batcher: Batcher::new(batch, start_us),
            phones: PhoneTable::default(),
            uplink: uplink_tx,
            acks: Vec::new(),
            scratch: BytesMut::with_capacity(64 * 1024),
            counts: Counts::default(),
            flushed_at: HashMap::new(),
            sources: SourceLimiter::new(SourceLimits {
                in_progress: l.handshakes_per_source,
                rate: Rate::new(
                    l.new_handshakes_per_source_per_s / share,
                    (l.new_handshakes_per_source_burst / share).max(1.0),
                ),
                max_sources: (l.max_tracked_sources / workers).max(1),
            }),
            batch_opened: Rc::new(tokio::sync::Notify::new()),
            broadcasts: broadcasts_tx,
        }));
        tokio::task::spawn_local(broadcaster(broadcasts_rx));
        tokio::task::spawn_local(uplink(state.clone(), shared.clone(), allocator, uplink_rx));
        tokio::task::spawn_local(flush_by_age(state.clone(), shared.clone()));
        tokio::task::spawn_local(housekeeping(state.clone(), shared.clone()));
        accept(state.clone(), shared.clone(), endpoint.clone()).await;
        drain(&state, &shared).await;
        endpoint.close(ErrorCode::Draining.code().into(), b"edge stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        Ok(())
    })
}

async fn accept(state: State, shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    let l = shared.config.limits.clone();
    loop {
        let incoming = tokio::select! {
            _ = shared.drain.cancelled() => return,
            _ = shared.stop.cancelled() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let metrics = &shared.metrics;
        let source = incoming.remote_address().ip();
        let in_progress = shared.handshakes.load(Ordering::Relaxed);
        if in_progress >= l.max_handshakes || shared.phones.load(Ordering::Relaxed) >= l.max_phones
        {
            EdgeMetrics::add(&metrics.handshakes, "outcome", "refused", 1);
            incoming.refuse();
            continue;
        }
        let validated = incoming.remote_address_validated();
        // Retry is stateless and cheap: ask for it before charging the source, whose bucket
        // then pays once, for the validated attempt.
        if in_progress >= l.retry_above_handshakes && !validated {
            EdgeMetrics::add(&metrics.handshakes, "outcome", "retried", 1);
            let _ = incoming.retry();
            continue;
        }
        let verdict = state.borrow_mut().sources.on_attempt(source, validated, shared.now_us());
        let tracked = match verdict {
            SourceVerdict::Admit { tracked } => tracked,
            SourceVerdict::Busy => {
                EdgeMetrics::add(&metrics.handshakes, "outcome", "ignored", 1);
                incoming.ignore();
                continue;
            }
            SourceVerdict::TooFast => {
                EdgeMetrics::add(&metrics.handshakes, "outcome", "rate_limited", 1);
                incoming.refuse();
                continue;
            }
            SourceVerdict::ValidateFirst => {
                EdgeMetrics::add(&metrics.handshakes, "outcome", "retried", 1);
                let _ = incoming.retry();
                continue;
            }
        };
        shared.handshakes.fetch_add(1, Ordering::Relaxed);
        let source = tracked.then_some(source);
        tokio::task::spawn_local(session(state.clone(), shared.clone(), incoming, source));
    }
}

/// Ends a handshake's bookkeeping whichever way it went. `source` is set if the attempt was
/// counted against its source.
fn handshake_done(state: &State, shared: &Shared, source: Option<IpAddr>) {
    shared.handshakes.fetch_sub(1, Ordering::Relaxed);
    if let Some(source) = source {
        state.borrow_mut().sources.on_handshake_done(source);
    }
}

fn close(conn: &quinn::Connection, shared: &Shared, code: ErrorCode) {
    EdgeMetrics::add(&shared.metrics.sessions_closed, "code", code.name(), 1);
    conn.close(code.code().into(), code.name().as_bytes());
}

/// Reads control frames until `Hello` (which must come first).
async fn read_hello(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
) -> Result<(Bytes, u64), ErrorCode> {
    loop {
        match ControlFrame::decode(buf) {
            Ok(Some(ControlFrame::Hello { token, capabilities, .. })) => {
                return Ok((token, capabilities));
            }
            Ok(Some(_)) => return Err(ErrorCode::UnexpectedFrame),
            Ok(None) => {}
            Err(err) => return Err(ErrorCode::for_decode_error(&err)),
        }
        match recv.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(ErrorCode::NoError),
            Ok(_) => {}
        }
    }
}

async fn session(
    state: State,
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    source: Option<IpAddr>,
) {
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(_) => {
            handshake_done(&state, &shared, source);
            return;
        }
    };
    let conn = match connecting.await {
        Ok(conn) => conn,
        Err(_) => {
            EdgeMetrics::add(&shared.metrics.handshakes, "outcome", "failed", 1);
            handshake_done(&state, &shared, source);
            return;
        }
    };
    EdgeMetrics::add(&shared.metrics.handshakes, "outcome", "accepted", 1);
    handshake_done(&state, &shared, source);

    // The control stream and a valid Hello, within the deadline.
    let deadline = Duration::from_millis(shared.config.limits.hello_timeout_ms);
    let mut buf = BytesMut::with_capacity(256);
    let hello = tokio::time::timeout(deadline, async {
        let (send, mut recv) = conn.accept_bi().await.map_err(|_| ErrorCode::NoError)?;
        let (token, caps) = read_hello(&mut recv, &mut buf).await?;
        Ok::<_, ErrorCode>((send, recv, token, caps))
    })
    .await;
    let (mut send, mut recv, token, caps) = match hello {
        Ok(Ok(hello)) => hello,
        Ok(Err(ErrorCode::NoError)) => return,
        Ok(Err(code)) => return close(&conn, &shared, code),
        Err(_) => return close(&conn, &shared, ErrorCode::HelloTimeout),
    };
    let now_s = now_ms() / 1000;
    let claims = match shared.keys.verify(&token, now_s) {
        Ok(claims) => claims,
        Err(err) => {
            let code = ErrorCode::for_token_error(&err);
            let mut out = BytesMut::new();
            ControlFrame::Error { code: code.code().into(), reason: err.to_string() }
                .encode(&mut out);
            EdgeMetrics::add(&shared.metrics.drops, "reason", err.label(), 1);
            // Let the Error frame arrive before the close discards the stream (bounded wait).
            if send.write_all(&out).await.is_ok() && send.finish().is_ok() {
                let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
            }
            return close(&conn, &shared, code);
        }
    };
    let datagrams = caps & CAP_DATAGRAMS != 0 && conn.max_datagram_size().is_some();
    let outbox = Rc::new(Outbox::default());
    let (at, welcome) = {
        let mut s = state.borrow_mut();
        let bucket = s.admission.new_phone_bucket(shared.now_us());
        let at =
            s.phones.insert(Phone { control: outbox.clone(), user_id: claims.user_id, bucket });
        let now = now_ms();
        let welcome = ControlFrame::Welcome {
            server_time_ms: now,
            min_shake_interval_ms: s.admission.min_interval_ms(),
            round: s.admission.current_round(now),
        };
        (at, s.control_frame(&welcome))
    };
    shared.phones.fetch_add(1, Ordering::Relaxed);
    shared.metrics.phones.inc();
    let mut closed_with = None;
    if send.write_all(&welcome).await.is_ok() {
        closed_with = serve_phone(
            &state, &shared, &conn, at, datagrams, &mut send, &mut recv, &mut buf, &outbox,
        )
        .await;
    }
    state.borrow_mut().phones.remove(at);
    shared.phones.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.phones.dec();
    if let Some(code) = closed_with {
        close(&conn, &shared, code);
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_phone(
    state: &State,
    shared: &Shared,
    conn: &quinn::Connection,
    at: PhoneRef,
    datagrams: bool,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    outbox: &Outbox,
) -> Option<ErrorCode> {
    // Registered once per session, not once per shake: the stop token's waiter list is shared
    // by every phone of every worker, and registering in it takes its lock.
    let stopping = shared.stop.cancelled();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            // Shakes first: when one is waiting, nothing else is polled (or registered) at all.
            biased;
            datagram = conn.read_datagram() => {
                let Ok(payload) = datagram else { return None };
                let answer = match datagram::decode(&payload) {
                    Ok(Datagram::Shake(shake)) => answer(state, at, shake, shared, datagrams),
                    Ok(Datagram::Outcomes(_)) | Err(_) => {
                        state.borrow_mut().counts.malformed_datagrams += 1;
                        None
                    }
                };
                match answer {
                    Some(bytes) if datagrams => {
                        let _ = conn.send_datagram(bytes);
                    }
                    Some(bytes) if send.write_all(&bytes).await.is_err() => return None,
                    _ => {}
                }
            }
            read = recv.read_buf(buf) => {
                match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
                loop {
                    match ControlFrame::decode(buf) {
                        Ok(Some(ControlFrame::AwardAck { award_id })) => state.borrow_mut().acks.push(award_id),
                        Ok(Some(ControlFrame::Shake(shake))) => {
                            let Some(bytes) = answer(state, at, shake, shared, false) else { continue };
                            if send.write_all(&bytes).await.is_err() {
                                return None;
                            }
                        }
                        Ok(Some(ControlFrame::Error { .. })) => return None,
                        Ok(Some(_)) => return Some(ErrorCode::UnexpectedFrame),
                        Ok(None) => break,
                        Err(err) => {
                            EdgeMetrics::add(&shared.metrics.drops, "reason", err.label(), 1);
                            return Some(ErrorCode::for_decode_error(&err));
                        }
                    }
                }
            }
            frame = outbox.next() => {
                if send.write_all(&frame).await.is_err() {
                    return None;
                }
            }
            _ = &mut stopping => return Some(ErrorCode::Draining),
        }
    }
}

/// Decides one shake and encodes its outcome, as a datagram or as a control frame.
fn answer(
    state: &State,
    at: PhoneRef,
    shake: shake_proto::Shake,
    shared: &Shared,
    as_datagram: bool,
) -> Option<Bytes> {
    let mut s = state.borrow_mut();
    let outcome = s.on_shake(at, shake, shared)?;
    Some(if as_datagram {
        s.encode(|out| datagram::encode_outcomes(out, &[outcome]))
    } else {
        s.control_frame(&ControlFrame::outcomes(&[outcome]))
    })
}

/// This worker's stream to the allocator, across reconnects.
async fn uplink(
    state: State,
    shared: Arc<Shared>,
    mut allocator: watch::Receiver<Option<quinn::Connection>>,
    mut outgoing: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let conn = loop {
            if let Some(conn) = allocator.borrow_and_update().clone() {
                break conn;
            }
            tokio::select! {
                changed = allocator.changed() => if changed.is_err() { return },
                _ = shared.stop.cancelled() => return,
            }
        };
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            let _ = tokio::time::timeout(Duration::from_millis(200), allocator.changed()).await;
            continue;
        };
        let (hello, resend) = {
            let s = state.borrow();
            let mut hello = BytesMut::new();
            AllocatorFrame::EdgeHello {
                edge_id: shared.config.edge_id,
                worker_id: s.id,
                protocol_version: PROTOCOL_VERSION,
                highest_answered_seq: s.batcher.highest_answered(),
            }
            .encode(&mut hello);
            (hello.freeze(), s.batcher.unanswered().cloned().collect::<Vec<_>>())
        };
        shared.metrics.batches_resent.inc_by(resend.len() as u64);
        let mut ok = send.write_all(&hello).await.is_ok();
        for frame in resend {
            ok = ok && send.write_all(&frame).await.is_ok();
        }
        buf.clear();
        let stopping = shared.stop.cancelled();
        tokio::pin!(stopping);
        while ok {
            tokio::select! {
                frame = outgoing.recv() => {
                    let Some(frame) = frame else { return };
                    ok = send.write_all(&frame).await.is_ok();
                }
                read = recv.read_buf(&mut buf) => {
                    ok = matches!(read, Ok(n) if n > 0);
                    while ok {
                        match AllocatorFrame::decode(&mut buf) {
                            Ok(Some(frame)) => on_allocator_frame(&state, &shared, frame),
                            Ok(None) => break,
                            Err(err) => {
                                tracing::error!(%err, "malformed frame from the allocator");
                                ok = false;
                            }
                        }
                    }
                }
                _ = &mut stopping => return,
            }
        }
        tracing::warn!(
            worker = state.borrow().id,
            "allocator stream lost; will resend unanswered batches"
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), allocator.changed()).await;
    }
}

fn on_allocator_frame(state: &State, shared: &Shared, frame: AllocatorFrame) {
    let mut s = state.borrow_mut();
    match frame {
        AllocatorFrame::BatchResult { seq, winners } => {
            let Some((round_id, routes)) = s.batcher.on_result(seq) else { return };
            if let Some(at) = s.flushed_at.remove(&seq) {
                shared.metrics.allocator_rtt_seconds.observe(at.elapsed().as_secs_f64());
            }
            for winner in winners {
                let Some(&at) = routes.get(winner.entry_index as usize) else { continue };
                let award = ControlFrame::Award {
                    award_id: winner.award_id,
                    round_id,
                    prize: winner.prize,
                };
                let bytes = s.control_frame(&award);
                match s.phones.get_mut(at) {
                    Some(phone) => {
                        phone.control.push(bytes);
                        s.counts.awards_written += 1
                    }
                    // The phone is gone: the award stays undelivered in the ledger.
                    _ => s.counts.awards_orphaned += 1,
                }
            }
            s.batcher.recycle(routes);
        }
        AllocatorFrame::Quota { round_id, rate_per_s, burst, valid_until_ms } => {
            let share = s.workers as f64;
            let rate =
                Rate::new(f64::from(rate_per_s) / share, (f64::from(burst) / share).max(1.0));
            tracing::debug!(worker = s.id, round_id, rate_per_s, burst, valid_until_ms, "quota");
            s.admission.on_quota(round_id, rate, valid_until_ms);
        }
        AllocatorFrame::RoundState { round, min_shake_interval_ms } => {
            shared.metrics.round_states.inc();
            s.admission.on_round_state(round, min_shake_interval_ms);
            s.broadcast(&ControlFrame::RoundNotice { round, min_shake_interval_ms });
        }
        AllocatorFrame::Heartbeat { .. } => {}
        other => tracing::warn!(frame = other.name(), "unexpected frame from the allocator"),
    }
}

/// Flushes the open batch when it reaches its age limit. Sleeps until that deadline while a
/// batch is open and on `batch_opened` while none is, so an idle worker does not wake up every
/// millisecond (at 10,000 shakes/s a 1 ms tick cost about as much CPU as the shakes' own
/// decisions).
async fn flush_by_age(state: State, shared: Arc<Shared>) {
    let opened = state.borrow().batch_opened.clone();
    let stopping = shared.stop.cancelled();
    tokio::pin!(stopping);
    loop {
        let deadline = state.borrow().batcher.deadline_us();
        tokio::select! {
            _ = async {
                match deadline {
                    Some(us) => tokio::time::sleep_until((shared.origin + Duration::from_micros(us)).into()).await,
                    None => opened.notified().await,
                }
            } => {}
            _ = &mut stopping => return,
        }
        let mut s = state.borrow_mut();
        if let Some(frame) = s.batcher.poll_age(shared.now_us()) {
            s.send_batch(frame, &shared.metrics);
        }
    }
}

/// Every 100 ms publishes counts and sends award acknowledgements; every second sends a load
/// report.
async fn housekeeping(state: State, shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks = 0u64;
    let stopping = shared.stop.cancelled();
    tokio::pin!(stopping);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut stopping => return,
        }
        ticks += 1;
        let mut s = state.borrow_mut();
        publish(&mut s, &shared.metrics);
        send_acks(&mut s);
        if ticks.is_multiple_of(10) {
            s.sources.sweep(shared.now_us());
            let load = s.admission.take_load();
            let frame = s.encode(|out| {
                AllocatorFrame::LoadReport {
                    window_ms: 1000,
                    offered: load.offered,
                    admitted: load.admitted,
                }
                .encode(out)
            });
            let _ = s.uplink.send(frame);
        }
    }
}

/// Sends phones' award acknowledgements upstream as `AwardDelivered` frames.
fn send_acks(s: &mut WorkerState) {
    while !s.acks.is_empty() {
        let n = s.acks.len().min(shake_proto::limits::MAX_DELIVERED_IDS);
        let award_ids: Vec<u64> = s.acks.drain(..n).collect();
        let frame = s.encode(|out| AllocatorFrame::AwardDelivered { award_ids }.encode(out));
        let _ = s.uplink.send(frame);
    }
}

fn publish(s: &mut WorkerState, metrics: &EdgeMetrics) {
    let c = std::mem::take(&mut s.counts);
    EdgeMetrics::add(&metrics.verdicts, "verdict", "no_luck", c.no_luck);
    EdgeMetrics::add(&metrics.verdicts, "verdict", "slow_down", c.slow_down);
    EdgeMetrics::add(&metrics.verdicts, "verdict", "round_closed", c.round_closed);
    EdgeMetrics::add(&metrics.verdicts, "verdict", "forwarded", c.forwarded);
    EdgeMetrics::add(&metrics.drops, "reason", "backpressure", c.backpressure);
    EdgeMetrics::add(&metrics.drops, "reason", "malformed_datagram", c.malformed_datagrams);
    EdgeMetrics::add(&metrics.awards, "delivery", "written", c.awards_written);
    EdgeMetrics::add(&metrics.awards, "delivery", "phone_gone", c.awards_orphaned);
}

/// SIGTERM: tell phones to go elsewhere, flush the open batch, wait for answers (bounded).
async fn drain(state: &State, shared: &Shared) {
    if shared.stop.is_cancelled() {
        return;
    }
    {
        let mut s = state.borrow_mut();
        s.broadcast(&ControlFrame::GoAway { reconnect_after_ms: 1_000 });
        if let Some(frame) = s.batcher.flush() {
            s.send_batch(frame, &shared.metrics);
        }
    }
    // Wait for the allocator's answers (their awards go out as they come) and for phones to
    // leave for another edge, up to the deadline.
    let deadline = Instant::now() + Duration::from_millis(shared.config.limits.drain_deadline_ms);
    let busy = |s: &WorkerState| s.batcher.in_flight() > 0 || !s.phones.is_empty();
    while busy(&state.borrow()) && Instant::now() < deadline && !shared.stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Acknowledgements still queued go up now, and the uplink gets a moment to write them.
    send_acks(&mut state.borrow_mut());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = state.borrow_mut();
    publish(&mut s, &shared.metrics);
    tracing::info!(
        worker = s.id,
        unanswered = s.batcher.in_flight(),
        phones_left = s.phones.len(),
        "worker drained"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paced_broadcasts_reach_every_phone_once_and_keep_their_order() {
        let outboxes: Vec<Rc<Outbox>> =
            (0..BROADCAST_CHUNK * 3 + 7).map(|_| Rc::new(Outbox::default())).collect();
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send((outboxes.clone(), Bytes::from_static(b"open"))).unwrap();
        tx.send((outboxes.clone(), Bytes::from_static(b"close"))).unwrap();
        drop(tx);
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let task = tokio::task::spawn_local(broadcaster(rx));
                // Other tasks run between chunks: this one gets in before the first broadcast
                // is done with every phone.
                tokio::task::yield_now().await;
                tokio::task::yield_now().await;
                assert!(!outboxes[0].is_empty(), "the first chunk went out");
                assert!(outboxes.last().unwrap().is_empty(), "paced, not all at once");
                task.await.unwrap();
            })
            .await;
        for outbox in &outboxes {
            assert_eq!(outbox.len(), 2);
            assert_eq!(outbox.next().await, Bytes::from_static(b"open"));
            assert_eq!(outbox.next().await, Bytes::from_static(b"close"));
        }
    }
}
