//! One edge worker: a thread with its own single-threaded runtime, its own QUIC endpoint on the
//! shared port, and its own [`WorkerCore`] (admission, batches, uplink state). Nothing it
//! touches per shake is shared with another thread, so nothing per shake takes a lock.
//!
//! This module is the I/O shell around the sans-IO core: quinn and tokio move bytes and time
//! in and out of it. Tasks on the worker (all on one thread, sharing `Rc<RefCell<WorkerState>>`;
//! no borrow is held across an await):
//! - accept: handshake admission on `Incoming`, then one session task per phone;
//! - session: `Hello` within the deadline, then datagrams and control frames until close;
//! - uplink: this worker's stream to the allocator: writes what the core's uplink hands out,
//!   feeds the allocator's frames back in;
//! - flush_by_age and housekeeping: batch ages, load reports, metrics.

use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use shake_proto::control::CAP_DATAGRAMS;
use shake_proto::datagram::{self, Datagram, Outcome};
use shake_proto::{AllocatorFrame, ControlFrame, ErrorCode, KeyRing};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::award_book::AwardBook;
use crate::config::EdgeConfig;
use crate::core::{self, PhoneEffect, WorkerCore};
use crate::handshakes::{self, Attempt, HandshakeDecision, HandshakeOutcome};
use crate::metrics::{DropReason, Dropped, EdgeMetrics};
use crate::outbox::Outbox;
use crate::phones::PhoneRef;
use crate::sources::{SourceLimiter, SourceLimits};
use crate::uplink::WorkerName;
use crate::user_sessions::{Claim, Closer};

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
    /// Awards sent and not yet acknowledged, whole edge.
    pub awards: Arc<AwardBook>,
    /// Live sessions by user (one per user per edge).
    pub sessions: Arc<crate::user_sessions::UserSessions>,
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

/// What the shell keeps beside each phone in the core.
#[derive(Debug)]
struct PhoneExt {
    control: Rc<Outbox>,
}

/// Counted by the shell on the worker thread, added to the shared metrics by housekeeping.
#[derive(Default)]
struct ShellCounts {
    malformed_datagrams: u64,
    shakes_before_welcome: u64,
    broadcasts_dropped: u64,
}

struct WorkerState {
    id: u16,
    core: WorkerCore<PhoneExt>,
    scratch: BytesMut,
    counts: ShellCounts,
    /// The in-flight count last added to the shared gauge (workers add their difference).
    in_flight_published: i64,
    sources: SourceLimiter,
    /// Woken when a shake opens a new batch, so the age flusher sleeps while none is open.
    batch_opened: Rc<Notify>,
    /// Woken when the uplink has something to write (a batch, an acknowledgement, a report).
    uplink_ready: Rc<Notify>,
    /// Woken when a batch is answered or a phone leaves (what a drain waits for).
    progress: Rc<Notify>,
    /// Broadcasts for the [`broadcaster`] task, one at a time, in order (at most
    /// [`BROADCASTS_QUEUED`] waiting).
    broadcasts: mpsc::Sender<Broadcast>,
    /// Frames dropped because a phone's outbox was full (shared with the broadcaster).
    outbox_full: Rc<std::cell::Cell<u64>>,
}

/// A control frame for every phone a worker had when it was sent.
type Broadcast = (Vec<Rc<Outbox>>, Bytes);

type State = Rc<RefCell<WorkerState>>;

impl WorkerState {
    fn encode(&mut self, f: impl FnOnce(&mut BytesMut)) -> Bytes {
        f(&mut self.scratch);
        self.scratch.split().freeze()
    }

    fn control_frame(&mut self, frame: &ControlFrame) -> Bytes {
        self.encode(|out| frame.encode(out))
    }

    /// Decides one shake (the core does) and wakes whoever its consequences concern.
    fn on_shake(
        &mut self,
        at: PhoneRef,
        shake: shake_proto::Shake,
        shared: &Shared,
    ) -> Option<Outcome> {
        let in_flight = self.core.uplink().in_flight();
        let open = self.core.uplink().batcher().open_len();
        let outcome = self.core.on_shake(at, shake, shared.now_us(), now_ms());
        if self.core.uplink().in_flight() > in_flight {
            self.uplink_ready.notify_one();
        }
        if open == 0 && self.core.uplink().batcher().open_len() > 0 {
            self.batch_opened.notify_one();
        }
        outcome
    }

    /// Delivers what the core asked for.
    fn deliver(&mut self, effects: Vec<PhoneEffect>) {
        for effect in effects {
            match effect {
                PhoneEffect::ToPhone(at, frame) => {
                    let bytes = self.control_frame(&frame);
                    if let Some(phone) = self.core.phones().get(at)
                        && !phone.ext.control.push(bytes)
                    {
                        self.outbox_full.set(self.outbox_full.get() + 1);
                    }
                }
                PhoneEffect::Broadcast(frame) => self.broadcast(&frame),
            }
        }
    }

    /// Sends a control frame to every phone of this worker, paced (see [`broadcaster`]).
    fn broadcast(&mut self, frame: &ControlFrame) {
        let bytes = self.control_frame(frame);
        let outboxes: Vec<Rc<Outbox>> =
            self.core.phones().iter().map(|p| p.ext.control.clone()).collect();
        if self.broadcasts.try_send((outboxes, bytes)).is_err() {
            // Only an allocator flooding round states gets here.
            self.counts.broadcasts_dropped += 1;
            tracing::error!(worker = self.id, "broadcast queue full: a round notice was dropped");
        }
    }
}

/// Spawns the worker's tasks and notices if one of them panicked (tokio catches a task's
/// panic and runs on; a task that ends without finishing its future panicked, since nothing
/// aborts them while the worker serves).
#[derive(Default)]
struct TaskWatch {
    failed: Rc<std::cell::Cell<bool>>,
    notify: Rc<Notify>,
}

/// Armed while its task runs; dropped armed means the task did not finish.
struct TaskGuard {
    failed: Rc<std::cell::Cell<bool>>,
    notify: Rc<Notify>,
    armed: bool,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.armed {
            self.failed.set(true);
            self.notify.notify_one();
        }
    }
}

impl TaskWatch {
    fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        let guard =
            TaskGuard { failed: self.failed.clone(), notify: self.notify.clone(), armed: true };
        tokio::task::spawn_local(async move {
            // The whole guard moves into the task (not just the field assigned below).
            let mut guard = guard;
            task.await;
            guard.armed = false;
        });
    }

    async fn failed(&self) {
        while !self.failed.get() {
            self.notify.notified().await;
        }
    }
}

/// Broadcasts waiting for the broadcaster at most (each holds the worker's phone list).
const BROADCASTS_QUEUED: usize = 64;

/// Phones a broadcast reaches before it lets the worker's other tasks run.
const BROADCAST_CHUNK: usize = 256;

/// Delivers broadcasts one after another, each to `BROADCAST_CHUNK` outboxes at a time with a
/// yield in between. A round notice pushed to 10,000 phones at once woke 10,000 sessions and
/// their connections ahead of everything else, and the shakes arriving at that moment (the
/// round opening) waited behind them: an estimated 300 ms at 30 us per message
/// (docs/PERFORMANCE.md). One task for all broadcasts keeps their order for every phone (two
/// tasks yielding in turn do not: tokio may resume them in either order).
async fn broadcaster(
    mut broadcasts: mpsc::Receiver<Broadcast>,
    outbox_full: Rc<std::cell::Cell<u64>>,
) {
    while let Some((outboxes, frame)) = broadcasts.recv().await {
        for chunk in outboxes.chunks(BROADCAST_CHUNK) {
            for outbox in chunk {
                if !outbox.push(frame.clone()) {
                    outbox_full.set(outbox_full.get() + 1);
                }
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
        let l = &shared.config.limits;
        let name = WorkerName {
            edge_id: shared.config.edge_id,
            worker_id: id,
            instance_id: WorkerName::random_instance_id(),
        };
        tracing::info!(worker = id, instance_id = name.instance_id, "worker starting");
        let core = WorkerCore::new(
            core::settings_for(&shared.config, workers),
            name,
            shared.awards.clone(),
            shared.now_us(),
        );
        let (broadcasts_tx, broadcasts_rx) = mpsc::channel(BROADCASTS_QUEUED);
        let outbox_full = Rc::new(std::cell::Cell::new(0));
        let state: State = Rc::new(RefCell::new(WorkerState {
            id,
            core,
            scratch: BytesMut::with_capacity(64 * 1024),
            counts: ShellCounts::default(),
            in_flight_published: 0,
            sources: SourceLimiter::new(SourceLimits::for_worker(l, workers)),
            batch_opened: Rc::new(Notify::new()),
            uplink_ready: Rc::new(Notify::new()),
            progress: Rc::new(Notify::new()),
            broadcasts: broadcasts_tx,
            outbox_full: outbox_full.clone(),
        }));
        let tasks = TaskWatch::default();
        tasks.spawn(broadcaster(broadcasts_rx, outbox_full));
        tasks.spawn(uplink(state.clone(), shared.clone(), allocator));
        tasks.spawn(flush_by_age(state.clone(), shared.clone()));
        tasks.spawn(housekeeping(state.clone(), shared.clone()));
        let serve = async {
            accept(state.clone(), shared.clone(), endpoint.clone(), &tasks).await;
            drain(&state, &shared).await;
        };
        tokio::select! {
            _ = serve => {}
            // tokio keeps a panicking task's panic to itself; a worker must not run on with a
            // piece missing, so the panic becomes this thread's (and the supervisor's news).
            _ = tasks.failed() => panic!("a task of edge worker {id} panicked"),
        }
        endpoint.close(ErrorCode::Draining.code().into(), b"edge stopping");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        Ok(())
    })
}

async fn accept(state: State, shared: Arc<Shared>, endpoint: quinn::Endpoint, tasks: &TaskWatch) {
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
        let source = incoming.remote_address().ip();
        let attempt = Attempt {
            source,
            validated: incoming.remote_address_validated(),
            in_progress: shared.handshakes.load(Ordering::Relaxed),
            phones: shared.phones.load(Ordering::Relaxed),
            draining: false,
            overloaded: false,
        };
        let decision =
            handshakes::decide(&l, &mut state.borrow_mut().sources, attempt, shared.now_us());
        if let Some(outcome) = decision.outcome() {
            shared.metrics.count_handshake(outcome);
        }
        let tracked = match decision {
            HandshakeDecision::Accept { tracked } => tracked,
            HandshakeDecision::Refuse(_) => {
                incoming.refuse();
                continue;
            }
            HandshakeDecision::Retry => {
                let _ = incoming.retry();
                continue;
            }
            HandshakeDecision::Ignore => {
                incoming.ignore();
                continue;
            }
        };
        shared.handshakes.fetch_add(1, Ordering::Relaxed);
        let source = tracked.then_some(source);
        tasks.spawn(session(state.clone(), shared.clone(), incoming, source));
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
    shared.metrics.count_session_closed(code);
    conn.close(code.code().into(), code.name().as_bytes());
}

/// Closes a session with `code` the way docs/PROTOCOL.md section 5.1 step 7 says: an `Error`
/// frame with the same code on the control stream first, then the connection close. The wait
/// for the phone to acknowledge the frame is bounded (200 ms).
async fn close_with_error(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    shared: &Shared,
    code: ErrorCode,
    reason: &str,
) {
    let mut out = BytesMut::new();
    ControlFrame::Error { code: code.code().into(), reason: reason.to_owned() }.encode(&mut out);
    if send.write_all(&out).await.is_ok() && send.finish().is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
    }
    close(conn, shared, code);
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

/// The datagrams a connection has already received, without waiting for more.
async fn take_received_datagrams(conn: &quinn::Connection) -> u64 {
    let mut taken = 0;
    loop {
        let mut next = std::pin::pin!(conn.read_datagram());
        let ready = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(matches!(next.as_mut().poll(cx), std::task::Poll::Ready(Ok(_))))
        })
        .await;
        if !ready {
            return taken;
        }
        taken += 1;
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
            shared.metrics.count_handshake(HandshakeOutcome::Failed);
            handshake_done(&state, &shared, source);
            return;
        }
    };
    shared.metrics.count_handshake(HandshakeOutcome::Accepted);
    handshake_done(&state, &shared, source);

    // The control stream and a valid Hello, within the deadline (which starts when the
    // handshake completes).
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.config.limits.hello_timeout_ms);
    let (mut send, mut recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(_)) => return,
        // No control stream: there is nowhere to put an Error frame.
        Err(_) => return close(&conn, &shared, ErrorCode::HelloTimeout),
    };
    let mut buf = BytesMut::with_capacity(256);
    let (token, caps) = match tokio::time::timeout_at(deadline, read_hello(&mut recv, &mut buf))
        .await
    {
        Ok(Ok(hello)) => hello,
        Ok(Err(ErrorCode::NoError)) => return,
        Ok(Err(code)) => {
            return close_with_error(&conn, &mut send, &shared, code, code.name()).await;
        }
        Err(_) => {
            let reason = "no valid Hello before the deadline";
            return close_with_error(&conn, &mut send, &shared, ErrorCode::HelloTimeout, reason)
                .await;
        }
    };
    let now_s = now_ms() / 1000;
    let claims = match shared.keys.verify(&token, now_s) {
        Ok(claims) => claims,
        Err(err) => {
            let code = ErrorCode::for_token_error(&err);
            shared.metrics.count_drops(DropReason::Protocol(err.label()), 1);
            return close_with_error(&conn, &mut send, &shared, code, &err.to_string()).await;
        }
    };
    // One live session per user on this edge: an older one, on any worker, is closed; past
    // the user's supersede budget this one is refused instead.
    let superseded = CancellationToken::new();
    let serial = shared.sessions.next_serial();
    let worker = state.borrow().id;
    let closer = Closer::Task(superseded.clone());
    if shared.sessions.claim(claims.user_id, serial, worker, closer, shared.now_us())
        == Claim::Refused
    {
        let code = ErrorCode::SessionInUse;
        let reason = "this user's session on this edge is in use";
        return close_with_error(&conn, &mut send, &shared, code, reason).await;
    }
    let datagrams = caps & CAP_DATAGRAMS != 0 && conn.max_datagram_size().is_some();
    let outbox = Rc::new(Outbox::default());
    // Shakes that arrived before Welcome are dropped (docs/PROTOCOL.md section 6).
    let early = take_received_datagrams(&conn).await;
    let (at, welcome) = {
        let mut s = state.borrow_mut();
        s.counts.shakes_before_welcome += early;
        let ext = PhoneExt { control: outbox.clone() };
        let at = s.core.add_phone(claims.user_id, ext, shared.now_us());
        let now = now_ms();
        let welcome = ControlFrame::Welcome {
            server_time_ms: now,
            min_shake_interval_ms: s.core.admission().min_interval_ms(),
            round: s.core.admission().current_round(now),
        };
        (at, s.control_frame(&welcome))
    };
    shared.phones.fetch_add(1, Ordering::Relaxed);
    shared.metrics.phones.inc();
    let mut closed_with = None;
    if send.write_all(&welcome).await.is_ok() {
        let mut phone = PhoneSession {
            at,
            datagrams,
            send: &mut send,
            recv: &mut recv,
            buf: &mut buf,
            superseded: &superseded,
        };
        closed_with = serve_phone(&state, &shared, &conn, &mut phone, &outbox).await;
    }
    shared.sessions.release(claims.user_id, serial);
    {
        let mut s = state.borrow_mut();
        s.core.remove_phone(at);
        s.progress.notify_waiters();
    }
    shared.phones.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.phones.dec();
    if let Some(code) = closed_with {
        close_with_error(&conn, &mut send, &shared, code, code.name()).await;
    }
}

/// One phone's session, after `Welcome`: where it sits in the core and its control stream.
struct PhoneSession<'a> {
    at: PhoneRef,
    datagrams: bool,
    send: &'a mut quinn::SendStream,
    recv: &'a mut quinn::RecvStream,
    buf: &'a mut BytesMut,
    /// Cancelled when a newer session of the same user starts on this edge.
    superseded: &'a CancellationToken,
}

/// Serves a phone until it leaves (`None`) or must be closed with a code.
async fn serve_phone(
    state: &State,
    shared: &Shared,
    conn: &quinn::Connection,
    phone: &mut PhoneSession<'_>,
    outbox: &Outbox,
) -> Option<ErrorCode> {
    let at = phone.at;
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
                    Ok(Datagram::Shake(shake)) => answer(state, at, shake, shared, phone.datagrams),
                    Ok(Datagram::Outcomes(_)) | Err(_) => {
                        state.borrow_mut().counts.malformed_datagrams += 1;
                        None
                    }
                };
                match answer {
                    Some(bytes) if phone.datagrams => {
                        let _ = conn.send_datagram(bytes);
                    }
                    Some(bytes) if phone.send.write_all(&bytes).await.is_err() => return None,
                    _ => {}
                }
            }
            read = phone.recv.read_buf(phone.buf) => {
                match read {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
                loop {
                    match ControlFrame::decode(phone.buf) {
                        Ok(Some(ControlFrame::AwardAck { award_id })) => {
                            let mut s = state.borrow_mut();
                            let verdict = s.core.on_award_ack(at, award_id, now_ms());
                            if verdict == crate::award_book::AckVerdict::Accepted {
                                s.uplink_ready.notify_one();
                            }
                        }
                        Ok(Some(ControlFrame::Shake(shake))) => {
                            let Some(bytes) = answer(state, at, shake, shared, false) else { continue };
                            if phone.send.write_all(&bytes).await.is_err() {
                                return None;
                            }
                        }
                        Ok(Some(ControlFrame::Error { .. })) => return None,
                        Ok(Some(_)) => return Some(ErrorCode::UnexpectedFrame),
                        Ok(None) => break,
                        Err(err) => {
                            shared.metrics.count_drops(DropReason::Protocol(err.label()), 1);
                            return Some(ErrorCode::for_decode_error(&err));
                        }
                    }
                }
            }
            frame = outbox.next() => {
                if phone.send.write_all(&frame).await.is_err() {
                    return None;
                }
            }
            _ = &mut stopping => return Some(ErrorCode::Draining),
            _ = phone.superseded.cancelled() => return Some(ErrorCode::SessionSuperseded),
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

/// This worker's stream to the allocator, across reconnects: writes whatever the core's
/// uplink hands out (a fresh `EdgeHello` and every unanswered batch after each reconnect),
/// and feeds the allocator's frames back into the core.
async fn uplink(
    state: State,
    shared: Arc<Shared>,
    mut allocator: watch::Receiver<Option<quinn::Connection>>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let (ready, progress) = {
        let s = state.borrow();
        (s.uplink_ready.clone(), s.progress.clone())
    };
    let stopping = shared.stop.cancelled();
    tokio::pin!(stopping);
    loop {
        let Some((mut send, mut recv)) =
            crate::link_pipe::open_stream(&mut allocator, &shared.stop).await
        else {
            return;
        };
        {
            let mut s = state.borrow_mut();
            let up = s.core.uplink();
            up.link_up();
            if up.links() > 1 {
                shared.metrics.batches_resent.inc_by(up.in_flight() as u64);
            }
        }
        buf.clear();
        'link: loop {
            loop {
                let frame = state.borrow_mut().core.uplink().poll_transmit();
                let Some(frame) = frame else { break };
                if send.write_all(&frame).await.is_err() {
                    break 'link;
                }
            }
            // Everything queued is written: a drain waiting for that may go on.
            progress.notify_waiters();
            tokio::select! {
                _ = ready.notified() => {}
                read = recv.read_buf(&mut buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break 'link;
                    }
                    loop {
                        match AllocatorFrame::decode(&mut buf) {
                            Ok(Some(frame)) => on_allocator_frame(&state, &shared, frame),
                            Ok(None) => break,
                            Err(err) => {
                                tracing::error!(%err, "malformed frame from the allocator");
                                break 'link;
                            }
                        }
                    }
                }
                _ = &mut stopping => return,
            }
        }
        let id = {
            let mut s = state.borrow_mut();
            s.core.uplink().link_down();
            s.id
        };
        tracing::warn!(worker = id, "allocator stream lost; will resend unanswered batches");
        let _ = tokio::time::timeout(Duration::from_millis(100), allocator.changed()).await;
    }
}

fn on_allocator_frame(state: &State, shared: &Shared, frame: AllocatorFrame) {
    let mut s = state.borrow_mut();
    match &frame {
        AllocatorFrame::RoundState { .. } => {
            shared.metrics.round_states.inc();
        }
        AllocatorFrame::UsersLimited { until_ms, user_ids } => {
            shared.sessions.note_limited(user_ids, *until_ms, now_ms());
        }
        _ => {}
    }
    let mut effects = Vec::new();
    s.core.on_allocator_frame(frame, shared.now_us(), now_ms(), &mut effects);
    s.deliver(effects);
    if s.core.uplink().has_output() {
        s.uplink_ready.notify_one();
    }
    s.progress.notify_waiters();
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
        let deadline = state.borrow().core.deadline_us();
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
        if s.core.poll_age(shared.now_us()) {
            s.uplink_ready.notify_one();
        }
    }
}

/// Every 100 ms publishes counts; every second queues a load report and sweeps the source
/// table.
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
        if ticks == 20 && shake_ops::supervise::failpoint("edge-worker-panic") {
            panic!("failpoint edge-worker-panic");
        }
        let mut s = state.borrow_mut();
        publish(&mut s, &shared);
        if ticks.is_multiple_of(10) {
            s.sources.sweep(shared.now_us());
            s.core.on_load_tick(now_ms());
            shared.metrics.users_live.set(shared.sessions.live() as i64);
            s.uplink_ready.notify_one();
        }
    }
}

fn publish(s: &mut WorkerState, shared: &Shared) {
    let metrics = &shared.metrics;
    metrics.add_core_counts(s.core.take_counts());
    let shell = std::mem::take(&mut s.counts);
    metrics.count_drops(Dropped::MalformedDatagram, shell.malformed_datagrams);
    metrics.count_drops(Dropped::ShakeBeforeWelcome, shell.shakes_before_welcome);
    metrics.count_drops(Dropped::BroadcastQueueFull, shell.broadcasts_dropped);
    metrics.count_drops(Dropped::OutboxFull, s.outbox_full.take());
    // Each worker adds its own change, so the gauge is the whole edge's sum.
    let in_flight = s.core.uplink().in_flight() as i64;
    metrics.in_flight_batches.inc_by(in_flight - s.in_flight_published);
    s.in_flight_published = in_flight;
    metrics.awards_outstanding.set(shared.awards.outstanding() as i64);
}

/// Waits until `done` holds, woken by `progress`, until `deadline` (or a stop, if `stop`
/// is given).
async fn wait_for(
    state: &State,
    deadline: tokio::time::Instant,
    stop: Option<&CancellationToken>,
    done: impl Fn(&mut WorkerState) -> bool,
) {
    let progress = state.borrow().progress.clone();
    let stopped = async {
        match stop {
            Some(stop) => stop.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stopped);
    loop {
        // Registered before the check, so a wake-up between the two is not lost.
        let notified = progress.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done(&mut state.borrow_mut()) || stop.is_some_and(CancellationToken::is_cancelled) {
            return;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => return,
            _ = &mut stopped => return,
        }
    }
}

/// SIGTERM: tell phones to go elsewhere, flush the open batch, wait for answers (bounded).
/// SIGINT: sessions close at once with DRAINING, each after its `Error` frame; they get a
/// moment (300 ms at most) to write it before the worker's runtime goes.
async fn drain(state: &State, shared: &Shared) {
    if shared.stop.is_cancelled() {
        let moment = tokio::time::Instant::now() + Duration::from_millis(300);
        wait_for(state, moment, None, |s| s.core.phones().is_empty()).await;
        return;
    }
    {
        let mut s = state.borrow_mut();
        s.broadcast(&ControlFrame::GoAway { reconnect_after_ms: 1_000 });
        if s.core.flush(shared.now_us()) {
            s.uplink_ready.notify_one();
        }
    }
    // Wait for the allocator's answers (their awards go out as they come) and for phones to
    // leave for another edge, up to the deadline.
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.config.limits.drain_deadline_ms);
    wait_for(state, deadline, Some(&shared.stop), |s| {
        s.core.uplink().in_flight() == 0 && s.core.phones().is_empty()
    })
    .await;
    // Acknowledgements still queued go up now: wait until the uplink has written them (or it
    // has no link), at most a second more.
    state.borrow().uplink_ready.notify_one();
    let written = tokio::time::Instant::now() + Duration::from_secs(1);
    wait_for(state, written, Some(&shared.stop), |s| !s.core.uplink().has_output()).await;
    let mut s = state.borrow_mut();
    publish(&mut s, shared);
    let unanswered = s.core.uplink().in_flight();
    tracing::info!(
        worker = s.id,
        unanswered,
        phones_left = s.core.phones().len(),
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
        let (tx, rx) = mpsc::channel(BROADCASTS_QUEUED);
        tx.try_send((outboxes.clone(), Bytes::from_static(b"open"))).unwrap();
        tx.try_send((outboxes.clone(), Bytes::from_static(b"close"))).unwrap();
        drop(tx);
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let task = tokio::task::spawn_local(broadcaster(rx, Rc::default()));
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
