//! The allocator's I/O shell: the QUIC endpoint, one task per edge worker stream, the actor that
//! owns the [`Core`], and the group-commit thread that owns the ledger ([`LedgerStore`]).
//!
//! ```text
//! stream tasks --ActorMsg--> actor (Core) --CommitJob--> committer thread (fjall, fsync)
//!      ^                        |   ^                           |
//!      +------ Outgoing --------+   +------ Committed ----------+
//! ```
//! An answer leaves the actor only after the committer reports its group durable.
//!
//! Every queue is bounded. Stream tasks wait for room in the actor's inbox (so QUIC flow
//! control holds a fast edge back); the actor waits for room in the commit queue
//! ([`COMMIT_QUEUE`] jobs); the committer's reports are at most one per job taken, so their
//! queue never holds more than the commit queue did. A stream whose edge does not read its
//! answers ([`OUTGOING_QUEUE`] frames behind) is closed; the edge reconnects and resends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicServerConfig;
use shake_proto::allocator::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use shake_proto::{ALLOCATOR_ALPN, AllocatorFrame, Batch, DecodeError, ErrorCode, VerdictCounts};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{
    AdminRequest, AdminTarget, CommandReply, Dashboard, EdgeView, RoundView, VerdictRates,
};
use crate::award::Award;
use crate::award::BatchKey;
use crate::config::{Config, LedgerKind};
use crate::core::{Core, CoreSettings, Effect, StreamId, WorkerHello};
use crate::draw::{Draw, RestoreError};
use crate::edge_handshakes::{self, EdgeHandshakes};
use crate::export::AwardQuery;
use crate::ledger::lanes::{CommitLanes, Report};
use crate::ledger::{
    self, AnsweredBatch, CommitGroup, LedgerError, LedgerStore, RetiredInstance, Snapshot,
    WorkerRecord,
};
use crate::metrics::{
    AwardLabels, MalformedLabels, Metrics, PrizeKind, Rejected, RejectedLabels, RoundLabels,
    StreamClosed, StreamClosedLabels,
};
use crate::round_command::{Refusal, RoundCommand, Submitted};
use shake_ops::http::{Endpoints, Readiness};
use shake_ops::tls::{self, TlsError};

/// Why the allocator could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// TLS files or settings.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The ledger failed; no answer is sent without it.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The ledger does not match the configured rounds.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// A recorded operator command does not replay on the configured rounds.
    #[error(
        "the recorded round command {command_id:?} ({action} of round {round_id} at {at_ms} ms, \
         by {issued_by}) does not replay on the configured rounds: {refusal}. The configuration \
         changed since it was recorded: a round added live must be configured the same, or not \
         at all"
    )]
    Commands {
        /// The command's id.
        command_id: String,
        /// What it did.
        action: &'static str,
        /// Its round.
        round_id: u32,
        /// When it took effect.
        at_ms: u64,
        /// Who asked.
        issued_by: String,
        /// Why it does not replay.
        refusal: Refusal,
    },
    /// The admin API could not start (its token file).
    #[error("admin API: {0}")]
    Admin(String),
    /// A socket could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The QUIC crypto configuration was refused.
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
    /// A task or thread of the allocator panicked: a bug. The process must not go on.
    #[error("internal failure: {0}")]
    Panicked(String),
}

/// Replays what the ledger recorded into `draw`: the commands first (an award may name a
/// round or a prize a command added), then the rounds long closed are finished (as of now: their
/// winners are not remembered again), then the awards. A start and a standby following the log
/// both replay this way.
pub(crate) fn replay(
    draw: &mut Draw,
    commands: &[RoundCommand],
    awards: &[Award],
) -> Result<(), ServeError> {
    for command in commands {
        draw.apply_command(command).map_err(|refusal| ServeError::replay(command, refusal))?;
    }
    draw.finish_closed(now_ms());
    for award in awards {
        draw.restore(award)?;
    }
    Ok(())
}

impl ServeError {
    /// The configured rounds do not replay the ledger (an award or a recorded command does
    /// not fit them): no retry or restart with this configuration can change that.
    pub fn is_replay_refusal(&self) -> bool {
        matches!(self, ServeError::Restore(_) | ServeError::Commands { .. })
    }

    /// `command`, recorded, does not replay on the configured rounds.
    pub fn replay(command: &RoundCommand, refusal: Refusal) -> Self {
        ServeError::Commands {
            command_id: command.command_id.clone(),
            action: command.action.name(),
            round_id: command.round_id,
            at_ms: command.at_ms,
            issued_by: command.issued_by.clone(),
            refusal,
        }
    }
}

/// Jobs the actor may queue for the commit thread before it waits.
pub const COMMIT_QUEUE: usize = 1024;
/// Frames queued for one edge stream before the stream is closed as not reading.
pub const OUTGOING_QUEUE: usize = 8192;

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

enum ActorMsg {
    Hello { stream: StreamId, hello: WorkerHello, handle: StreamHandle },
    ResultsReceived { stream: StreamId, highest: u64 },
    Batch { stream: StreamId, batch: Batch },
    Load { stream: StreamId, window_ms: u32, offered: u64 },
    Stats { stream: StreamId, phones: u64, verdicts: VerdictCounts },
    Delivered(Vec<u64>),
    AwardsWanted { stream: StreamId, user_ids: Vec<u64> },
    Closed(StreamId),
}

/// What the committer reports for one group: what is now durable, or why it failed.
type Committed = Result<CommittedGroup, LedgerError>;

/// What one group commit made durable.
struct CommittedGroup {
    batches: Vec<(BatchKey, Bytes)>,
    /// The awards of those batches, now owed to their users until acknowledged.
    awards: Vec<Award>,
    commands: Vec<RoundCommand>,
}

/// The actor's handle on one edge stream: frames to write (bounded), and a way to close it
/// even when that queue is full.
struct StreamHandle {
    frames: mpsc::Sender<Bytes>,
    closer: StreamCloser,
}

/// Closes one stream (both directions) with the first code given.
#[derive(Clone, Default)]
struct StreamCloser {
    token: CancellationToken,
    code: Arc<std::sync::OnceLock<ErrorCode>>,
}

impl StreamCloser {
    fn close(&self, code: ErrorCode) {
        let _ = self.code.set(code);
        self.token.cancel();
    }

    fn code(&self) -> Option<ErrorCode> {
        self.code.get().copied()
    }
}

enum CommitJob {
    Batch(AnsweredBatch),
    Command(RoundCommand),
    /// Support reads awards while the show runs: served once the group that was gathering
    /// when it came has committed (so it sees every award announced before it), by the
    /// reader's thread ([`start_reader`]), so that no group waits for it.
    Read(AwardRead),
    Delivered(Vec<u64>),
    Compact {
        forget: Vec<BatchKey>,
        worker: Option<WorkerRecord>,
        retired: Option<RetiredInstance>,
    },
}

/// A read of the ledger's awards for the admin API.
struct AwardRead {
    query: AwardQuery,
    reply: oneshot::Sender<Result<Vec<Award>, String>>,
}

/// A started allocator: where it listens, and how to wait for it.
#[derive(Debug)]
pub struct Running {
    /// The QUIC address edges connect to.
    pub quic_addr: SocketAddr,
    /// The metrics address, if serving.
    pub metrics_addr: Option<SocketAddr>,
    /// The admin API's address, if serving.
    pub admin_addr: Option<SocketAddr>,
    pub(crate) done: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Waits until the allocator has stopped. A panic inside it is an error, never `Ok`.
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.done.await {
            Ok(result) => result,
            Err(err) => Err(ServeError::Panicked(format!("allocator task: {err}"))),
        }
    }
}

/// How the allocator stops: `drain` answers what it has and exits; `stop` exits at once.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Graceful: stop accepting, finish pending commits and answers, then exit.
    pub drain: CancellationToken,
    /// Fast: close everything now.
    pub stop: CancellationToken,
}

impl Shutdown {
    /// Returns once a drain or a stop has been asked for.
    pub async fn requested(&self) {
        tokio::select! {
            _ = self.drain.cancelled() => {}
            _ = self.stop.cancelled() => {}
        }
    }
}

/// What every leadership term of the process shares: its metrics, its health, the admin
/// API's way to the term serving now, and its QUIC port's handshakes in progress.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shared {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Arc<Health>,
    pub(crate) admin: AdminTarget,
    pub(crate) edge_handshakes: Arc<EdgeHandshakes>,
}

/// Serves the admin API when configured (its token read from `admin_token_file`).
pub(crate) async fn serve_admin(
    config: &Config,
    shared: &Shared,
    shutdown: &Shutdown,
) -> Result<Option<SocketAddr>, ServeError> {
    let (Some(addr), Some(file)) = (config.admin_listen, &config.admin_token_file) else {
        return Ok(None);
    };
    let token = shake_ops::bearer::BearerToken::read(file).map_err(ServeError::Admin)?;
    let bound = crate::admin::spawn(addr, token, shared.admin.clone(), shutdown.stop.clone())
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(Some(bound))
}

/// What `/ready` reports, shared by every leadership term of the process.
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// The last term stopped on a failed commit.
    pub(crate) ledger_failed: AtomicBool,
    /// Another allocator leads the ledger (PostgreSQL): this one only redirects edges.
    pub(crate) standby: AtomicBool,
    /// The last group commit's duration, microseconds (0: none yet).
    pub(crate) last_commit_us: AtomicU64,
    /// The group commits the current term took and has not reported yet (a term's own: a
    /// commit thread left behind by an earlier term never touches the next one's).
    commits_in_flight: std::sync::Mutex<Arc<CommitsInFlight>>,
}

impl Health {
    /// A new term's record of its commits in flight, now the one reported.
    fn term_commits(&self) -> Arc<CommitsInFlight> {
        let fresh = Arc::new(CommitsInFlight::default());
        *lock(&self.commits_in_flight) = fresh.clone();
        fresh
    }

    /// How long the current term's oldest commit in flight has been (zero: none).
    pub(crate) fn oldest_commit(&self, now: Instant) -> Duration {
        lock(&self.commits_in_flight).oldest(now)
    }
}

/// How long a term's end waits for its commit thread (the groups it holds, those still queued)
/// before leaving it behind: a database that hangs would otherwise hold the term, and with it a
/// standby's takeover or the process's exit, for as long as it hangs. A group left behind was
/// answered to nobody; the next leader settles it from the log.
pub const COMMIT_THREAD_WAIT: Duration = Duration::from_secs(5);

/// A group commit in flight longer than this makes the allocator not ready: a commit takes
/// milliseconds, a slow one under a second.
pub const COMMIT_STUCK_AFTER: Duration = Duration::from_secs(5);

/// When each group commit still in flight was taken, oldest first (groups are reported in the
/// order they are taken). A commit that never returns (a database that stopped answering,
/// every synchronous standby gone, a disk that hangs) shows as an age that grows: the commit
/// histogram sees a commit only once it returns, and nothing else had moved. Touched once a
/// group, never per shake.
#[derive(Debug, Default)]
pub(crate) struct CommitsInFlight(std::sync::Mutex<std::collections::VecDeque<Instant>>);

impl CommitsInFlight {
    fn taken(&self, at: Instant) {
        lock(&self.0).push_back(at);
    }

    fn reported(&self) {
        lock(&self.0).pop_front();
    }

    /// The commit thread has ended: nothing of its term is in flight any more.
    fn clear(&self) {
        lock(&self.0).clear();
    }

    /// How long the oldest commit in flight has been (zero: none).
    pub(crate) fn oldest(&self, now: Instant) -> Duration {
        lock(&self.0).front().map_or(Duration::ZERO, |&taken| now.saturating_duration_since(taken))
    }
}

/// Opens the ledger, rebuilds state from it, binds and serves until shut down. With a
/// PostgreSQL ledger the allocator first waits as a standby until it wins the leadership
/// (see [`crate::ha`]).
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, ServeError> {
    if config.ledger == LedgerKind::Postgres {
        return crate::ha::start(config, shutdown).await;
    }
    // The read and the replay (seconds each for a ledger of millions of awards) run off the
    // runtime: the binary stops the start at a signal. The listeners are up between them, so
    // `/health` answers while the pools are rebuilt.
    let (store, snapshot) = {
        let config = config.clone();
        blocking(move || {
            let mut store = ledger::open(&config)?;
            // A ledger that cannot be written must stop the start, not the first commit
            // mid-show.
            store.probe()?;
            let snapshot = store.snapshot()?;
            Ok::<_, LedgerError>((store, snapshot))
        })
        .await?
    };
    let listening = listen(&config, false, &shutdown).await?;
    let rebuilt = {
        let config = config.clone();
        blocking(move || {
            if shake_ops::supervise::failpoint("allocator-slow-start") {
                std::thread::sleep(Duration::from_secs(10));
            }
            Rebuilt::from_snapshot(&config, snapshot)
        })
        .await?
    };
    // Its own ledger, led from the start (the gauge's meaning on PostgreSQL: this node serves).
    listening.shared.metrics.leader_epoch.set(1);
    let done = lead(
        &config,
        listening.endpoint,
        TermEnd::CloseEndpoint,
        store,
        rebuilt,
        &listening.shared,
        shutdown,
    )?;
    Ok(Running {
        quic_addr: listening.quic_addr,
        metrics_addr: listening.metrics_addr,
        admin_addr: listening.admin_addr,
        done,
    })
}

/// Everything a started allocator listens on, whatever its ledger.
pub(crate) struct Listening {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) quic_addr: SocketAddr,
    pub(crate) shared: Shared,
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) admin_addr: Option<SocketAddr>,
}

/// Binds the QUIC endpoint and serves the metrics and admin listeners; `standby` is what
/// `/ready` says until a term starts.
pub(crate) async fn listen(
    config: &Config,
    standby: bool,
    shutdown: &Shutdown,
) -> Result<Listening, ServeError> {
    let server = quic_server_config(config)?;
    let (socket, granted) = bind_socket(config.listen, config.socket_buffer_bytes)?;
    let quic_addr =
        socket.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    // Taken before quinn owns the socket; `None` where /proc cannot say (the count stays 0).
    let drops = shake_ops::kernel_drops::UdpDrops::of(&socket)
        .inspect_err(
            |err| tracing::warn!(%err, "the QUIC socket's kernel drops will not be counted"),
        )
        .ok();
    let endpoint = endpoint_on(socket, server, quic_addr)?;
    let shared = Shared::default();
    shared.health.standby.store(standby, Ordering::Relaxed);
    shared.metrics.socket_buffer_bytes.set(granted as i64);
    let metrics_addr = serve_metrics(config, &shared, drops, shutdown).await?;
    let admin_addr = serve_admin(config, &shared, shutdown).await?;
    Ok(Listening { endpoint, quic_addr, shared, metrics_addr, admin_addr })
}

/// Runs blocking ledger work (a read, a replay) off the async runtime.
pub(crate) async fn blocking<T: Send + 'static, E: Send + 'static>(
    work: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ServeError>
where
    ServeError: From<E>,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => Ok(result?),
        Err(err) => Err(ServeError::Panicked(format!("ledger task: {err}"))),
    }
}

/// The QUIC server configuration: mutual TLS, edges' streams only.
pub(crate) fn quic_server_config(config: &Config) -> Result<quinn::ServerConfig, ServeError> {
    let rustls = tls::mutual_tls_server(
        &config.tls.cert,
        &config.tls.key,
        &config.tls.edge_ca,
        ALLOCATOR_ALPN,
    )?;
    let crypto = QuicServerConfig::try_from(rustls).map_err(|e| ServeError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(256u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_idle_timeout(Some(Duration::from_secs(10).try_into().expect("10 s fits")));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Binds the UDP socket edges reach the allocator on (kept across leadership terms), its
/// buffers as configured; with the smaller of the two the kernel granted.
pub(crate) fn bind_socket(
    listen: SocketAddr,
    buffer: usize,
) -> Result<(std::net::UdpSocket, usize), ServeError> {
    let costs = "edges' batches at a round's opening may be dropped and resent late";
    shake_loop::driver::buffered_socket(listen, buffer, false, costs)
        .map_err(|source| ServeError::Bind { addr: listen, source })
}

/// A QUIC endpoint on (a clone of) the bound socket.
pub(crate) fn endpoint_on(
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
    addr: SocketAddr,
) -> Result<quinn::Endpoint, ServeError> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ServeError::Quic("no async runtime for the QUIC endpoint".into()))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves `/metrics` and `/ready` when configured.
pub(crate) async fn serve_metrics(
    config: &Config,
    shared: &Shared,
    drops: Option<shake_ops::kernel_drops::UdpDrops>,
    shutdown: &Shutdown,
) -> Result<Option<SocketAddr>, ServeError> {
    let Some(addr) = config.metrics_listen else { return Ok(None) };
    let m = shared.metrics.clone();
    let drops = std::sync::Mutex::new(drops);
    let draining = shutdown.drain.clone();
    let health = shared.health.clone();
    let scraped = shared.health.clone();
    let endpoints = Endpoints {
        metrics: Arc::new(move || {
            let oldest = scraped.oldest_commit(Instant::now());
            m.commit_oldest_seconds.set(oldest.as_secs_f64());
            m.ledger_calls_unanswered.set(ledger::deadline::unanswered());
            if let Some(drops) = lock(&drops).as_mut() {
                // A read that fails (the table unreadable for a moment) counts at the next.
                m.kernel_drops.inc_by(drops.since_last().unwrap_or(0));
            }
            m.render()
        }),
        ready: Arc::new(move || {
            let oldest = health.oldest_commit(Instant::now());
            if health.ledger_failed.load(Ordering::Relaxed) {
                Readiness::NotReady("the ledger is not writable".into())
            } else if draining.is_cancelled() {
                Readiness::NotReady("draining".into())
            } else if oldest >= COMMIT_STUCK_AFTER {
                Readiness::NotReady(format!(
                    "a ledger commit has not returned for {} s",
                    oldest.as_secs()
                ))
            } else if health.standby.load(Ordering::Relaxed) {
                Readiness::NotReady("standby: another allocator leads".into())
            } else {
                Readiness::Ready
            }
        }),
    };
    let bound = shake_ops::http::spawn(addr, endpoints, shutdown.stop.clone())
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    Ok(Some(bound))
}

/// What a term starts from: the draw with every award of the ledger replayed, and the stored
/// answers and worker records.
#[derive(Debug)]
pub(crate) struct Rebuilt {
    pub(crate) draw: Draw,
    pub(crate) answers: HashMap<BatchKey, Bytes>,
    pub(crate) workers: Vec<WorkerRecord>,
    pub(crate) commands: Vec<RoundCommand>,
    /// Awards not yet acknowledged by a phone.
    pub(crate) owed: Vec<Award>,
}

impl Rebuilt {
    /// Replays a whole snapshot.
    pub(crate) fn from_snapshot(config: &Config, snapshot: Snapshot) -> Result<Self, ServeError> {
        let mut draw = Draw::new(&config.rounds);
        replay(&mut draw, &snapshot.commands, &snapshot.awards)?;
        let owed = snapshot.awards.into_iter().filter(|a| !a.delivered).collect();
        Ok(Self {
            draw,
            answers: snapshot.answers,
            workers: snapshot.workers,
            commands: snapshot.commands,
            owed,
        })
    }
}

/// Whether `config`'s rounds replay what `store` holds, as a start or a takeover would replay
/// it (`--check-config --against-ledger`): the awards and round commands read, or why they do
/// not fit. Reads the whole ledger (blocking).
pub fn check_replay(
    config: &Config,
    store: &mut dyn LedgerStore,
) -> Result<Result<Replayed, ServeError>, LedgerError> {
    let snapshot = store.snapshot()?;
    let replayed = Replayed { awards: snapshot.awards.len(), commands: snapshot.commands.len() };
    Ok(Rebuilt::from_snapshot(config, snapshot).map(|_| replayed))
}

/// What [`check_replay`] replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Awards restored.
    pub awards: usize,
    /// Round commands applied.
    pub commands: usize,
}

/// Whether a term's end closes its endpoint, or only the connections it accepted (the endpoint
/// outlives the term: a standby keeps answering on it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TermEnd {
    /// Close the endpoint: the process is done with it.
    CloseEndpoint,
    /// Close this term's connections with `NOT_LEADER`; the endpoint stays.
    CloseConnections,
}

/// One leadership term: rebuilds the draw and the core from the snapshot, starts the commit
/// thread on `store`, accepts edges on `endpoint` and serves until `shutdown` (or a failed
/// commit).
pub(crate) fn lead(
    config: &Config,
    endpoint: quinn::Endpoint,
    end: TermEnd,
    store: Box<dyn LedgerStore>,
    rebuilt: Rebuilt,
    shared: &Shared,
    shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<Result<(), ServeError>>, ServeError> {
    let Rebuilt { draw, answers, workers, commands, owed } = rebuilt;
    let (metrics, health) = (shared.metrics.clone(), shared.health.clone());
    let gate = shared.edge_handshakes.clone();
    tracing::info!(
        answers = answers.len(),
        next_award_id = draw.next_award_id(),
        "ledger replayed"
    );
    let settings = CoreSettings {
        oversampling: config.oversampling,
        quota_valid_ms: config.quota_valid_ms,
        user_rate: config.user_rate.settings(),
    };
    let mut core = Core::new(settings, draw);
    let mut restored = Vec::new();
    core.restore(workers, answers, &mut restored);
    core.restore_command_log(commands);
    core.restore_owed(&owed);
    drop(owed);
    update_gauges(&core, &metrics);
    health.ledger_failed.store(false, Ordering::Relaxed);

    let (actor_tx, actor_rx) = mpsc::channel::<ActorMsg>(4096);
    let (commit_tx, commit_rx) = mpsc::channel::<CommitJob>(COMMIT_QUEUE);
    // Unbounded on purpose, yet bounded in fact: one report per group, and a group takes at
    // least one job from the bounded commit queue (see the module comment).
    let (committed_tx, committed_rx) = mpsc::unbounded_channel::<Committed>();
    let term_health = health.clone();
    let health_at_end = health.clone();
    let in_flight = health.term_commits();
    // Set when the term's end stops waiting for the commit thread: from then on the thread
    // touches nothing the process shares.
    let left_behind = Arc::new(AtomicBool::new(false));
    let committer = {
        let metrics = metrics.clone();
        let left_behind = left_behind.clone();
        let max_group = config.max_group_batches;
        let lanes = config.postgres.as_ref().map_or(1, |pg| pg.commit_lanes);
        std::thread::Builder::new()
            .name("ledger-commit".into())
            .spawn(move || {
                let mut store = store;
                let unopened = committed_tx.clone();
                let reads = start_reader(&mut *store);
                let report = report_commits(
                    committed_tx,
                    metrics.clone(),
                    (health.clone(), in_flight.clone(), left_behind.clone()),
                    reads,
                );
                let looped = commit_loop(
                    store,
                    lanes,
                    commit_rx,
                    (&report, &in_flight),
                    &metrics,
                    max_group,
                );
                in_flight.clear();
                match looped {
                    Ok(()) => {}
                    Err(_) if left_behind.load(Ordering::SeqCst) => {}
                    // A failed commit was reported by its lane; lanes that could not be opened
                    // (a database blip at takeover) are reported here, so the term ends as a
                    // ledger failure and the node stands by, not as a stopped process.
                    Err(unopened_why) => {
                        health.ledger_failed.store(true, Ordering::Relaxed);
                        if let Some(err) = unopened_why {
                            let _ = unopened.send(Err(err));
                        }
                    }
                }
            })
            .map_err(|e| ServeError::Panicked(format!("spawning the commit thread: {e}")))?
    };
    let (admin_tx, admin_rx) = mpsc::channel::<AdminRequest>(64);
    let admin = shared.admin.clone();
    *lock(&admin) = Some(admin_tx);
    let pipes =
        Pipes { inbox: actor_rx, commits: commit_tx, committed: committed_rx, admin: admin_rx };

    let quic_addr = endpoint.local_addr().ok();
    tracing::info!(?quic_addr, "allocator serving edges");
    Ok(tokio::spawn(async move {
        let connections = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writers = TaskTracker::new();
        let actor_gone = CancellationToken::new();
        let streams = Streams {
            accepted: connections.clone(),
            writers: writers.clone(),
            actor_gone: actor_gone.clone(),
        };
        let mut accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            actor_tx.clone(),
            (metrics.clone(), gate.clone()),
            streams,
            shutdown.clone(),
        ));
        let mut actor =
            Box::pin(actor_loop(core, restored, pipes, metrics.clone(), term_health, shutdown));
        // The accept loop ends early only when the endpoint is gone (its driver ended on a
        // socket error): no edge can reach this term any more, so it ends, with a failure.
        let mut accepting = true;
        let result = loop {
            tokio::select! {
                result = &mut actor => break result,
                ended = &mut accept, if accepting => {
                    accepting = false;
                    match ended {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => break Err(err),
                        Err(err) => break Err(ServeError::Panicked(format!("accept loop: {err}"))),
                    }
                }
            }
        };
        // Its end drops the commit queue's sender, which ends the commit thread.
        drop(actor);
        *lock(&admin) = None;
        accept.abort();
        // Until the term is over (its last answers written, its commit thread ended or left
        // behind), edges that dial in are told this node does not lead, naming no one: they try
        // their next allocator at once rather than wait out a handshake nobody accepts.
        let refusing = (end == TermEnd::CloseConnections).then(|| {
            let port = (metrics.clone(), gate.clone());
            tokio::spawn(redirect_edges(endpoint.clone(), Default::default(), port))
        });
        // Each stream's writer writes what the actor queued (a drain's last answers, all
        // durable), finishes, and waits for the edge to have it; then the connections close.
        actor_gone.cancel();
        writers.close();
        tokio::time::timeout(Duration::from_secs(2), writers.wait()).await.ok();
        match end {
            TermEnd::CloseEndpoint => {
                endpoint.close(ErrorCode::NoError.code().into(), b"allocator stopping");
                tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await.ok();
            }
            TermEnd::CloseConnections => {
                let accepted = std::mem::take(&mut *lock(&connections));
                for connection in accepted {
                    connection.close(ErrorCode::NotLeader.code().into(), b"");
                }
            }
        }
        drop(actor_tx);
        // The commit thread ends once the actor's sender is gone and it has committed what was
        // queued.
        let ended = match end {
            TermEnd::CloseConnections => {
                commit_thread_ended(committer, &left_behind, &health_at_end).await
            }
            // One machine's ledger (fjall): its commit thread ends with its store's flush and
            // compaction, which is waited for however long it takes, as before.
            TermEnd::CloseEndpoint => {
                match tokio::task::spawn_blocking(move || committer.join()).await {
                    Ok(Ok(())) => Ok(()),
                    _ => Err(ServeError::Panicked("the commit thread panicked".into())),
                }
            }
        };
        if let Some(refusing) = refusing {
            refusing.abort();
        }
        ended?;
        result
    }))
}

/// Waits up to [`COMMIT_THREAD_WAIT`] for a term's commit thread, off the runtime (on a thread
/// the process exit does not wait for); past that, marks it `left_behind` and clears the
/// commits in flight that `health` shows (the node stands by: its `/ready` and the stuck
/// commit's alert are not about a term that is over).
async fn commit_thread_ended(
    committer: std::thread::JoinHandle<()>,
    left_behind: &AtomicBool,
    health: &Health,
) -> Result<(), ServeError> {
    let (joined_tx, joined) = oneshot::channel();
    std::thread::Builder::new()
        .name("ledger-commit-join".into())
        .spawn(move || {
            let _ = joined_tx.send(committer.join().is_ok());
        })
        .map_err(|e| ServeError::Panicked(format!("spawning the commit thread's waiter: {e}")))?;
    match tokio::time::timeout(COMMIT_THREAD_WAIT, joined).await {
        Ok(Ok(true)) => Ok(()),
        Ok(_) => Err(ServeError::Panicked("the commit thread panicked".into())),
        Err(_) => {
            left_behind.store(true, Ordering::SeqCst);
            health.term_commits();
            tracing::error!(
                waited = ?COMMIT_THREAD_WAIT,
                "the ledger has not answered a group commit: its thread is left behind, its \
                 answers never sent; the next leader settles it from the log"
            );
            Err(ServeError::Ledger(LedgerError::NoAnswer {
                what: "group commit",
                after: COMMIT_THREAD_WAIT,
            }))
        }
    }
}

/// Closes every edge connection with `NOT_LEADER`, naming the leader's address (none while it
/// is empty: the edge tries its next allocator).
pub(crate) async fn redirect_edges(
    endpoint: quinn::Endpoint,
    leader: Arc<std::sync::Mutex<String>>,
    (metrics, gate): (Arc<Metrics>, Arc<EdgeHandshakes>),
) {
    while let Some(incoming) = endpoint.accept().await {
        let leader = leader.clone();
        let metrics = metrics.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            if let Some(connection) = edge_handshakes::handshake(&gate, incoming, &metrics).await {
                let address = lock(&leader).clone();
                metrics
                    .rejected_peers
                    .get_or_create(&RejectedLabels { reason: Rejected::NotLeader })
                    .inc();
                connection.close(ErrorCode::NotLeader.code().into(), address.as_bytes());
            }
        });
    }
}

/// Gathers groups until the actor goes away and hands each to the next commit lane (`lanes`
/// sessions where the store has them, see [`crate::ledger::lanes`]); `Err(None)` after a
/// failed commit (its lane reported it), `Err(Some(why))` when the lanes could not be opened
/// or started.
fn commit_loop(
    store: Box<dyn LedgerStore>,
    lanes: usize,
    mut jobs: mpsc::Receiver<CommitJob>,
    (report, in_flight): (&Arc<Report<Behind>>, &CommitsInFlight),
    metrics: &Metrics,
    max_group: usize,
) -> Result<(), Option<LedgerError>> {
    let mut lanes = CommitLanes::open(store, lanes, report).map_err(|err| {
        tracing::error!(%err, "opening the commit lanes");
        Some(err)
    })?;
    loop {
        lanes.wait_ready();
        if lanes.failed() {
            return Err(None);
        }
        let Some(first) = jobs.blocking_recv() else { break };
        let mut group = CommitGroup::default();
        let mut reads = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                CommitJob::Read(read) => reads.push(read),
                CommitJob::Batch(batch) => group.batches.push(batch),
                CommitJob::Command(command) => group.commands.push(command),
                CommitJob::Delivered(ids) => group.delivered.extend(ids),
                CommitJob::Compact { forget, worker, retired } => {
                    group.forget.extend(forget);
                    group.workers.extend(worker);
                    group.retired.extend(retired);
                }
            }
            if group.batches.len() < max_group {
                next = jobs.try_recv().ok();
            }
        }
        metrics.commit_queue.set(jobs.len() as i64);
        in_flight.taken(Instant::now());
        // Tests only: every group slow to commit, so a drain finds batches in flight; or the
        // first taking far longer than any commit should.
        if shake_ops::supervise::failpoint("allocator-slow-commit") {
            std::thread::sleep(Duration::from_millis(500));
        }
        static HUNG: AtomicBool = AtomicBool::new(false);
        if shake_ops::supervise::failpoint("allocator-commit-hangs")
            && !HUNG.swap(true, Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_secs(8));
        }
        if lanes.hand_over(group, Behind { handed: Instant::now(), reads }).is_err()
            || lanes.failed()
        {
            return Err(None);
        }
    }
    if lanes.finish() { Ok(()) } else { Err(None) }
}

/// What travels with a group to its lane: when it was handed over, and the reads to serve
/// once it has committed.
struct Behind {
    handed: Instant,
    reads: Vec<AwardRead>,
}

/// Support's reads queued for the reader's thread, at most: a read can scan the whole ledger
/// (seconds on millions of awards), and a caller answered 504 asks again, so an unbounded queue
/// let the asking outrun the reading for as long as it went on (review 20). Past it a read is
/// answered 503 "busy" at once.
const MAX_QUEUED_READS: usize = 32;

/// Support's reads on a thread and ledger handle of their own, if the store gives one: they are
/// handed over once the group they came behind has committed, and no group waits for them.
fn start_reader(store: &mut dyn LedgerStore) -> Option<SyncSender<AwardRead>> {
    let mut reader = match store.open_reader() {
        Ok(Some(reader)) => reader,
        Ok(None) => return None,
        Err(err) => {
            tracing::warn!(%err, "no ledger session for support's reads: served between commits");
            return None;
        }
    };
    let (reads_tx, reads_rx) = std::sync::mpsc::sync_channel::<AwardRead>(MAX_QUEUED_READS);
    let spawned = std::thread::Builder::new().name("ledger-reads".into()).spawn(move || {
        for read in reads_rx {
            serve_read(|query| reader.find_awards(query), read);
        }
    });
    spawned.ok().map(|_| reads_tx)
}

/// Queues `reads` for the reader's thread; a read that finds the queue full is answered "busy"
/// at once. Returns the reads the thread is gone for (the caller serves them itself).
fn queue_reads(reader: &SyncSender<AwardRead>, reads: Vec<AwardRead>) -> Vec<AwardRead> {
    let mut unsent = Vec::new();
    for read in reads {
        match reader.try_send(read) {
            Ok(()) => {}
            Err(TrySendError::Full(read)) => {
                let busy = "the ledger's reads are busy: retry in a few seconds";
                let _ = read.reply.send(Err(busy.to_owned()));
            }
            Err(TrySendError::Disconnected(read)) => unsent.push(read),
        }
    }
    unsent
}

/// What a lane does with each group's outcome, in group order: metrics, the report to the
/// actor, then the reads that waited behind the group. A lane's failure report is the first
/// of its term's; the actor ends the term on it.
fn report_commits(
    committed: mpsc::UnboundedSender<Committed>,
    metrics: Arc<Metrics>,
    (health, in_flight, left_behind): (Arc<Health>, Arc<CommitsInFlight>, Arc<AtomicBool>),
    reader: Option<SyncSender<AwardRead>>,
) -> Arc<Report<Behind>> {
    // To the reader's thread, or (none, or gone) here, in the lane's turn.
    let serve = move |store: &mut dyn LedgerStore, reads: Vec<AwardRead>| {
        if reads.is_empty() {
            return;
        }
        let unsent = match reader.as_ref() {
            Some(reader) => queue_reads(reader, reads),
            None => reads,
        };
        for read in unsent {
            serve_read(|query| store.find_awards(query), read);
        }
    };
    Arc::new(move |group: CommitGroup, behind: Behind, result, store: &mut dyn LedgerStore| {
        // A thread its term left behind tells no one: its actor is gone, and the process's
        // health and metrics are the next term's.
        if left_behind.load(Ordering::SeqCst) {
            return;
        }
        in_flight.reported();
        let Behind { handed, reads } = behind;
        if group.is_empty() {
            serve(store, reads);
            return;
        }
        // From hand-over to durable: the write, the wait for the group before it, the commit.
        let took = handed.elapsed();
        metrics.commit_seconds.observe(took.as_secs_f64());
        health.last_commit_us.store(took.as_micros().max(1) as u64, Ordering::Relaxed);
        metrics.commit_group_batches.observe(group.batches.len() as f64);
        let message = match result {
            Ok(()) => {
                metrics.delivery_marks.inc_by(group.delivered.len() as u64);
                for award in group.batches.iter().flat_map(|b| &b.awards) {
                    let prize = PrizeKind::from(&award.prize);
                    metrics
                        .awards
                        .get_or_create(&AwardLabels { round: award.round_id, prize })
                        .inc();
                }
                let awards = group.batches.iter().flat_map(|b| b.awards.iter().cloned()).collect();
                Ok(CommittedGroup {
                    batches: group.batches.into_iter().map(|b| (b.key, b.answer)).collect(),
                    awards,
                    commands: group.commands,
                })
            }
            Err(err) => Err(err),
        };
        let failed = message.is_err();
        // The actor gone means the term is ending: nothing to tell.
        let _ = committed.send(message);
        if !failed {
            serve(store, reads);
        }
    })
}

/// Answers one of support's reads (bounded by its limit) with `find`, unless its caller is
/// gone (answered 504 while the read waited, or went away): a scan nobody waits for is not
/// made. True when the read was made.
fn serve_read(
    find: impl FnOnce(&AwardQuery) -> Result<Vec<Award>, LedgerError>,
    read: AwardRead,
) -> bool {
    if read.reply.is_closed() {
        return false;
    }
    // Tests only: a read as slow as one of millions of awards.
    shake_ops::supervise::failpoint_hold("allocator-slow-award-read", Duration::from_secs(3));
    // Tests only: a read that outlasts the admin API's wait (a database that hangs).
    if shake_ops::supervise::failpoint("allocator-award-read-hangs") {
        std::thread::sleep(crate::admin::ANSWER_WAIT + Duration::from_secs(5));
    }
    let result = find(&read.query);
    let _ = read.reply.send(result.map_err(|e| e.to_string()));
    true
}

fn update_gauges(core: &Core, metrics: &Metrics) {
    metrics.answers_stored.set(core.stored_answers() as i64);
    metrics.awards_owed.set(core.owed_awards() as i64);
    metrics.users_tracked.set(core.tracked_users() as i64);
    metrics.winners_remembered.set(core.draw().winners_remembered() as i64);
    let now = now_ms();
    for round in core.draw().rounds() {
        let left = round.pool().items().len() - round.pool().awarded_count();
        let labels = RoundLabels { round: round.config().id };
        metrics.pool_remaining.get_or_create(&labels).set(left as i64);
        metrics.round_open.get_or_create(&labels).set(i64::from(round.timing().is_open(now)));
    }
}

/// The actor's queues: its inbox from stream tasks, the commit queue and the commit reports.
struct Pipes {
    inbox: mpsc::Receiver<ActorMsg>,
    commits: mpsc::Sender<CommitJob>,
    committed: mpsc::UnboundedReceiver<Committed>,
    admin: mpsc::Receiver<AdminRequest>,
}

async fn actor_loop(
    mut core: Core,
    mut effects: Vec<Effect>,
    mut pipes: Pipes,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let mut outgoing: HashMap<StreamId, StreamHandle> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut draining_since: Option<Instant> = None;
    // Batches that came during the drain, left unanswered for the next allocator.
    let mut left_for_the_next = 0u64;
    let mut counted = core.counters();
    // Admin API callers waiting for their command to be recorded, by command id.
    let mut waiting: HashMap<String, Vec<oneshot::Sender<CommandReply>>> = HashMap::new();
    // What the dashboard shows of the edges: which edge each stream is, each edge's load.
    let mut edges = EdgeBoard::default();
    loop {
        // Effects first: the commit report that ends a drain brings the last answers (and
        // perhaps delivery marks and compactions) with it.
        if !effects.is_empty() {
            apply(&mut effects, &mut outgoing, &pipes.commits, &metrics, &shutdown.stop).await?;
        }
        if let Some(since) = draining_since
            && (core.pending_batches() == 0 || since.elapsed() > Duration::from_secs(10))
        {
            tracing::info!(pending = core.pending_batches(), left_for_the_next, "drained");
            return Ok(());
        }
        tokio::select! {
            // Commit reports first: they release answers and room.
            biased;
            _ = shutdown.stop.cancelled() => return Ok(()),
            done = pipes.committed.recv() => match done {
                Some(Ok(done)) => {
                    core.on_awards_durable(&done.awards);
                    core.on_committed(&done.batches, now_ms(), &mut effects);
                    for command in done.commands {
                        let timing = core.on_command_recorded(&command, now_ms(), &mut effects);
                        tracing::info!(?command, ?timing, "operator command in effect");
                        for reply in waiting.remove(&command.command_id).unwrap_or_default() {
                            let _ = reply.send(CommandReply::Done {
                                command: command.clone(),
                                timing: timing.clone().ok(),
                            });
                        }
                    }
                }
                Some(Err(err)) => {
                    // Awards are money: never answer without a durable ledger.
                    tracing::error!(%err, "ledger commit failed; stopping");
                    return Err(ServeError::Ledger(err));
                }
                None => return Err(ServeError::Panicked("the commit thread stopped".into())),
            },
            _ = shutdown.drain.cancelled(), if draining_since.is_none() => {
                tracing::info!(pending = core.pending_batches(), "draining: answering what is in flight");
                draining_since = Some(Instant::now());
            }
            request = pipes.admin.recv() => {
                if let Some(request) = request {
                    let mut desk = AdminDesk {
                        waiting: &mut waiting,
                        edges: &edges,
                        health: &health,
                        commits: &pipes.commits,
                    };
                    admin_request(&mut core, request, &mut desk, &mut effects);
                }
            }
            _ = tick.tick() => {
                if shake_ops::supervise::failpoint("allocator-actor-panic") {
                    panic!("failpoint allocator-actor-panic");
                }
                core.on_tick(now_ms(), &mut effects);
                update_gauges(&core, &metrics);
            }
            msg = pipes.inbox.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                match msg {
                    ActorMsg::Hello { stream, hello, handle } => {
                        edges.stream_of.insert(stream, hello.edge_id);
                        edges.workers.entry(hello.edge_id).or_default();
                        outgoing.insert(stream, handle);
                        metrics.streams_open.set(outgoing.len() as i64);
                        tracing::info!(
                            stream,
                            edge_id = hello.edge_id,
                            worker_id = hello.worker_id,
                            instance_id = hello.instance_id,
                            highest = hello.highest_answered_seq,
                            "edge worker connected"
                        );
                        core.on_hello(stream, hello, now_ms(), &mut effects);
                    }
                    ActorMsg::ResultsReceived { stream, highest } => {
                        core.on_results_received(stream, highest, &mut effects);
                    }
                    // A drain answers what it has drawn and draws nothing more: the edge resends
                    // an unanswered batch to the next allocator. Drawn, what kept coming kept a
                    // commit always pending, and a drain under load ran its full 10 s and left
                    // its last answers unsent.
                    ActorMsg::Batch { .. } if draining_since.is_some() => left_for_the_next += 1,
                    ActorMsg::Batch { stream, batch } => {
                        metrics.batches.inc();
                        metrics.entries.inc_by(batch.len() as u64);
                        core.on_batch(stream, &batch, now_ms(), &mut effects);
                    }
                    ActorMsg::Load { stream, window_ms, offered } => {
                        edges.on_load(stream, window_ms, offered);
                        core.on_load_report(stream, window_ms, offered, now_ms());
                    }
                    ActorMsg::Stats { stream, phones, verdicts } => {
                        edges.on_stats(stream, phones, verdicts);
                    }
                    ActorMsg::Delivered(ids) => core.on_delivered(ids, &mut effects),
                    ActorMsg::AwardsWanted { stream, user_ids } => {
                        core.on_awards_wanted(stream, &user_ids, &mut effects);
                    }
                    ActorMsg::Closed(stream) => {
                        edges.on_closed(stream);
                        outgoing.remove(&stream);
                        metrics.streams_open.set(outgoing.len() as i64);
                        core.on_stream_closed(stream);
                    }
                }
            }
        }
        let now = core.counters();
        metrics.batches_replayed.inc_by(now.batches_replayed - counted.batches_replayed);
        metrics.batches_conflicting.inc_by(now.batches_conflicting - counted.batches_conflicting);
        if now.batches_conflicting > counted.batches_conflicting {
            tracing::error!(
                total = now.batches_conflicting,
                "a resent batch differs from the batch first drawn under its name: the edge will refuse the answer"
            );
        }
        metrics.answers_forgotten.inc_by(now.answers_forgotten - counted.answers_forgotten);
        metrics
            .entries_over_user_rate
            .inc_by(now.entries_over_user_rate - counted.entries_over_user_rate);
        metrics
            .entries_round_not_open
            .inc_by(now.entries_round_not_open - counted.entries_round_not_open);
        metrics.users_limited.inc_by(now.users_limited - counted.users_limited);
        metrics.users_evicted.inc_by(now.users_evicted - counted.users_evicted);
        metrics.offenders_untracked.inc_by(now.offenders_untracked - counted.offenders_untracked);
        metrics.awards_owed_sent.inc_by(now.awards_owed_sent - counted.awards_owed_sent);
        counted = now;
    }
}

/// The edges as the dashboard shows them.
#[derive(Debug, Default)]
struct EdgeBoard {
    stream_of: HashMap<StreamId, u64>,
    /// Edge -> worker stream -> what its latest reports said.
    workers: std::collections::BTreeMap<u64, HashMap<StreamId, WorkerBoard>>,
}

/// One worker stream's latest `LoadReport` and `WorkerStats`.
#[derive(Debug, Default, Clone, Copy)]
struct WorkerBoard {
    window_ms: u32,
    offered_per_s: f64,
    phones: u64,
    verdicts: VerdictCounts,
}

impl EdgeBoard {
    /// A worker stream closed: it is forgotten (an edge that reconnects gets new streams, so
    /// what is kept stays bounded by the streams open and the edges known).
    fn on_closed(&mut self, stream: StreamId) {
        if let Some(edge) = self.stream_of.remove(&stream)
            && let Some(workers) = self.workers.get_mut(&edge)
        {
            workers.remove(&stream);
        }
    }

    fn worker(&mut self, stream: StreamId) -> Option<&mut WorkerBoard> {
        let edge = self.stream_of.get(&stream)?;
        Some(self.workers.entry(*edge).or_default().entry(stream).or_default())
    }

    fn on_load(&mut self, stream: StreamId, window_ms: u32, offered: u64) {
        if let Some(worker) = self.worker(stream) {
            worker.window_ms = window_ms.max(1);
            worker.offered_per_s = offered as f64 * 1000.0 / f64::from(worker.window_ms);
        }
    }

    /// A worker's stats cover the window of its load report just before.
    fn on_stats(&mut self, stream: StreamId, phones: u64, verdicts: VerdictCounts) {
        if let Some(worker) = self.worker(stream) {
            worker.phones = phones;
            worker.verdicts = verdicts;
        }
    }

    fn views(&self) -> Vec<EdgeView> {
        self.workers
            .iter()
            .map(|(edge, by_stream)| {
                let open: Vec<&WorkerBoard> = self
                    .stream_of
                    .iter()
                    .filter(|(_, e)| *e == edge)
                    .filter_map(|(s, _)| by_stream.get(s))
                    .collect();
                let per_s = |count: fn(&VerdictCounts) -> u64| -> f64 {
                    open.iter()
                        .map(|w| count(&w.verdicts) as f64 * 1000.0 / f64::from(w.window_ms.max(1)))
                        .sum()
                };
                EdgeView {
                    edge_id: *edge,
                    streams: self.stream_of.values().filter(|e| *e == edge).count(),
                    offered_per_s: open.iter().map(|w| w.offered_per_s).sum(),
                    // Saturating: the counts are what edges say, up to 2^62 each.
                    phones: open.iter().fold(0u64, |sum, w| sum.saturating_add(w.phones)),
                    verdicts_per_s: VerdictRates {
                        no_luck: per_s(|v| v.no_luck),
                        slow_down: per_s(|v| v.slow_down),
                        round_closed: per_s(|v| v.round_closed),
                        forwarded: per_s(|v| v.forwarded),
                    },
                }
            })
            .collect()
    }
}

/// One dashboard snapshot from the serving term's state.
fn dashboard(core: &Core, edges: &EdgeBoard, health: &Health) -> Dashboard {
    let commit_us = health.last_commit_us.load(Ordering::Relaxed);
    let counters = core.counters();
    Dashboard {
        now_ms: now_ms(),
        leading: true,
        rounds: round_views(core, now_ms()),
        edges: edges.views(),
        entries_drawn: counters.entries_drawn,
        awards_granted: counters.awards_granted,
        award_latency_ms: core.award_latency().percentiles(now_ms(), 5_000),
        last_commit_ms: (commit_us > 0).then(|| commit_us as f64 / 1000.0),
    }
}

fn round_views(core: &Core, now: u64) -> Vec<RoundView> {
    core.draw()
        .rounds()
        .iter()
        .map(|round| {
            let timing = round.timing();
            let (cash_left_cents, gifts_left) = round.pool().left();
            RoundView {
                round_id: round.config().id,
                phase: timing.status(now).name(),
                starts_at_ms: timing.starts_at_ms,
                ends_at_ms: timing.ends_at_ms,
                min_shake_interval_ms: timing.min_shake_interval_ms,
                paused_at_ms: timing.paused_at_ms,
                left_ms: {
                    let (elapsed, whole) = timing.progress(now);
                    whole - elapsed
                },
                prizes: round.pool().items().len(),
                awarded: round.pool().awarded_count(),
                cash_left_cents,
                gifts_left,
            }
        })
        .collect()
}

/// Answers one admin API request (a command waits in `waiting` until it is recorded).
/// What answering the admin API needs beside the core.
struct AdminDesk<'a> {
    /// Callers waiting for their command to be recorded, by command id.
    waiting: &'a mut HashMap<String, Vec<oneshot::Sender<CommandReply>>>,
    edges: &'a EdgeBoard,
    health: &'a Health,
    /// Award reads go to the commit thread, which owns the ledger.
    commits: &'a mpsc::Sender<CommitJob>,
}

fn admin_request(
    core: &mut Core,
    request: AdminRequest,
    desk: &mut AdminDesk<'_>,
    effects: &mut Vec<Effect>,
) {
    // A request whose caller is gone (the API answered 504 while this actor was held up) is
    // not carried out: a command the operator was told "may still be recorded" would
    // otherwise take effect whenever the actor caught up (a round opened minutes late), and a
    // read would still go to the ledger. A resend under the same key submits it afresh.
    if request.caller_gone() {
        return;
    }
    let waiting = &mut *desk.waiting;
    match request {
        AdminRequest::Command { mut command, reply } => {
            command.at_ms = now_ms();
            let id = command.command_id.clone();
            let answer = match core.on_command(command, effects) {
                Submitted::Record(_) | Submitted::Recording => {
                    waiting.entry(id).or_default().push(reply);
                    return;
                }
                Submitted::Done(command) => {
                    let timing = core.draw().round(command.round_id).map(|r| *r.timing());
                    CommandReply::Done { command, timing }
                }
                Submitted::Refused(refusal) => CommandReply::Refused(refusal),
                Submitted::Busy => CommandReply::Busy,
            };
            let _ = reply.send(answer);
        }
        AdminRequest::Rounds { reply } => {
            let _ = reply.send(round_views(core, now_ms()));
        }
        AdminRequest::Audit { reply } => {
            let _ = reply.send(core.command_log().to_vec());
        }
        AdminRequest::Awards { query, reply } => {
            // Never wait here: a full commit queue says "busy" instead.
            let read = CommitJob::Read(AwardRead { query, reply });
            if let Err(mpsc::error::TrySendError::Full(CommitJob::Read(read))) =
                desk.commits.try_send(read)
            {
                let _ = read.reply.send(Err("the ledger is busy: retry".into()));
            }
        }
        AdminRequest::Dashboard { reply } => {
            let _ = reply.send(dashboard(core, desk.edges, desk.health));
        }
    }
}

/// Carries out the core's effects, in order. Waits for room in the commit queue.
async fn apply(
    effects: &mut Vec<Effect>,
    outgoing: &mut HashMap<StreamId, StreamHandle>,
    commits: &mpsc::Sender<CommitJob>,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> Result<(), ServeError> {
    let closed =
        |reason| metrics.streams_closed.get_or_create(&StreamClosedLabels { reason }).inc();
    for effect in effects.drain(..) {
        let job = match effect {
            Effect::Send(stream, frame) => {
                if let Some(handle) = outgoing.get(&stream)
                    && let Err(mpsc::error::TrySendError::Full(_)) = handle.frames.try_send(frame)
                {
                    // The edge reconnects and resends what it has not heard.
                    tracing::warn!(stream, "edge stream not reading its answers: closing it");
                    closed(StreamClosed::SlowReader);
                    handle.closer.close(ErrorCode::Internal);
                    outgoing.remove(&stream);
                }
                continue;
            }
            Effect::Close(stream, code) => {
                closed(StreamClosed::Code(code));
                if let Some(handle) = outgoing.remove(&stream) {
                    handle.closer.close(code);
                }
                continue;
            }
            Effect::Commit(batch) => CommitJob::Batch(batch),
            Effect::RecordCommand(command) => CommitJob::Command(command),
            Effect::MarkDelivered(ids) => CommitJob::Delivered(ids),
            Effect::Compact { forget, worker, retired } => {
                CommitJob::Compact { forget, worker, retired }
            }
        };
        // Raced against the stop: a commit thread that does not take jobs (a database that
        // hangs) must not hold the term's end.
        tokio::select! {
            sent = commits.send(job) => if sent.is_err() {
                return Err(ServeError::Panicked("the commit thread stopped".into()));
            },
            () = stop.cancelled() => return Ok(()),
        }
    }
    Ok(())
}

/// The connections a term accepted (closed ones pruned as new ones come).
type Accepted = Arc<std::sync::Mutex<Vec<quinn::Connection>>>;

/// Locks a mutex whose holder may have panicked (the data behind these stays consistent).
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding it left a plain list intact.
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the accept loop keeps of the streams it starts: the connections (to close them with a
/// term's end) and the streams' writers (to let them finish before the connections close).
struct Streams {
    accepted: Accepted,
    writers: TaskTracker,
    /// Cancelled once the actor is gone: a writer then sends what is queued and finishes.
    actor_gone: CancellationToken,
}

/// While draining: a new connection is refused at once (the edge tries its next allocator, or
/// this one again once it is back) rather than left unaccepted until its handshake times out.
async fn refuse_connections(endpoint: &quinn::Endpoint, stop: &CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming.refuse(),
                None => return,
            },
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    actor: mpsc::Sender<ActorMsg>,
    (metrics, gate): (Arc<Metrics>, Arc<EdgeHandshakes>),
    streams: Streams,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let Streams { accepted, writers, actor_gone } = streams;
    let stream_ids = Arc::new(AtomicU64::new(1));
    // Tests only: the endpoint lost a second into the term, as when its driver ends.
    if shake_ops::supervise::failpoint("allocator-endpoint-lost") {
        let lost = endpoint.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            lost.close(0u32.into(), b"failpoint");
        });
    }
    loop {
        let incoming = tokio::select! {
            _ = shutdown.drain.cancelled() => {
                refuse_connections(&endpoint, &shutdown.stop).await;
                return Ok(());
            }
            _ = shutdown.stop.cancelled() => return Ok(()),
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                // Nothing of this process closes the endpoint while a term accepts on it.
                None => return Err(ServeError::Quic(
                    "the QUIC endpoint stopped (its driver ended: a socket error); no edge can \
                     reach this allocator"
                        .into(),
                )),
            },
        };
        let actor = actor.clone();
        let metrics = metrics.clone();
        let stream_ids = stream_ids.clone();
        let accepted = accepted.clone();
        let writers = writers.clone();
        let actor_gone = actor_gone.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let Some(connection) = edge_handshakes::handshake(&gate, incoming, &metrics).await
            else {
                return;
            };
            // Tests only: a handshake that completes while the term ends.
            if shake_ops::supervise::failpoint_marked("allocator-hold-edge-connected") {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            {
                let mut list = lock(&accepted);
                // A handshake that completes once the term is ending: its connections closed
                // (or about to be, by `lead`, which takes this lock after `actor_gone` is
                // cancelled), this one would be left open, its streams ended by an actor that
                // is gone, and its edge, its link up, would draw nothing until a restart.
                if actor_gone.is_cancelled() {
                    drop(list);
                    connection.close(ErrorCode::NotLeader.code().into(), b"");
                    return;
                }
                list.retain(|c| c.close_reason().is_none());
                list.push(connection.clone());
            }
            tracing::info!(%remote, "edge connected");
            // invariant: mutual TLS is required, so an established connection has a chain.
            let peer_cert = connection
                .peer_identity()
                .and_then(|id| id.downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>().ok())
                .and_then(|chain| chain.into_iter().next());
            let Some(peer_cert) = peer_cert else {
                connection.close(ErrorCode::EdgeRejected.code().into(), b"no client certificate");
                return;
            };
            let peer_cert = Arc::new(peer_cert);
            while let Ok((send, recv)) = connection.accept_bi().await {
                let id = stream_ids.fetch_add(1, Ordering::Relaxed);
                let stream = EdgeLink {
                    stream: id,
                    connection: connection.clone(),
                    peer_cert: peer_cert.clone(),
                };
                let writer =
                    StreamWriter { send, tracker: writers.clone(), actor_gone: actor_gone.clone() };
                tokio::spawn(serve_stream(stream, writer, recv, actor.clone(), metrics.clone()));
            }
        });
    }
}

/// Who is on the other end of one stream.
struct EdgeLink {
    stream: StreamId,
    connection: quinn::Connection,
    peer_cert: Arc<rustls_pki_types::CertificateDer<'static>>,
}

/// A stream's sending half, the tracker its writer task joins, and the actor's end.
struct StreamWriter {
    send: quinn::SendStream,
    tracker: TaskTracker,
    actor_gone: CancellationToken,
}

async fn serve_stream(
    link: EdgeLink,
    writer: StreamWriter,
    mut recv: quinn::RecvStream,
    actor: mpsc::Sender<ActorMsg>,
    metrics: Arc<Metrics>,
) {
    let stream = link.stream;
    let (frames_tx, mut frames_rx) = mpsc::channel::<Bytes>(OUTGOING_QUEUE);
    let closer = StreamCloser::default();
    let StreamWriter { mut send, tracker, actor_gone } = writer;
    let writer = {
        let closer = closer.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = closer.token.cancelled() => break,
                    frame = frames_rx.recv() => match frame {
                        Some(frame) if send.write_all(&frame).await.is_ok() => {}
                        _ => break,
                    },
                    // The actor is gone (a stream that never said hello still holds its own
                    // sender): what it queued is all there will be.
                    _ = actor_gone.cancelled() => {
                        while let Ok(frame) = frames_rx.try_recv() {
                            if send.write_all(&frame).await.is_err() {
                                break;
                            }
                        }
                        break;
                    }
                }
            }
            if let Some(code) = closer.code() {
                let _ = send.reset(code.code().into());
            } else if send.finish().is_ok() {
                // Everything queued is written (the actor let go of the stream, or stopped):
                // done once the edge has it, or the connection is gone.
                let _ = send.stopped().await;
            }
        })
    };
    let mut handle = Some(StreamHandle { frames: frames_tx, closer: closer.clone() });
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let close_code = 'read: loop {
        loop {
            match AllocatorFrame::decode(&mut buf) {
                Ok(Some(frame)) => {
                    let msg = match (frame, handle.is_some()) {
                        (
                            AllocatorFrame::EdgeHello {
                                edge_id,
                                worker_id,
                                protocol_version,
                                instance_id,
                                highest_answered_seq,
                            },
                            true,
                        ) => {
                            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION)
                                .contains(&protocol_version)
                            {
                                // Loud: every shake of that edge goes undrawn until someone
                                // upgrades the allocators (before the edges) or rolls back.
                                tracing::warn!(
                                    stream,
                                    edge_id,
                                    protocol_version,
                                    "an edge speaks a protocol version this allocator does not \
                                     ({MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}): stream refused"
                                );
                                let reason = StreamClosed::Code(ErrorCode::UnsupportedVersion);
                                metrics
                                    .streams_closed
                                    .get_or_create(&StreamClosedLabels { reason })
                                    .inc();
                                break 'read Some(ErrorCode::UnsupportedVersion);
                            }
                            if !tls::certificate_names_edge(&link.peer_cert, edge_id) {
                                tracing::warn!(
                                    stream,
                                    edge_id,
                                    "certificate does not name this edge"
                                );
                                metrics
                                    .rejected_peers
                                    .get_or_create(&RejectedLabels { reason: Rejected::EdgeId })
                                    .inc();
                                link.connection.close(
                                    ErrorCode::EdgeRejected.code().into(),
                                    b"certificate does not name this edge",
                                );
                                break 'read None;
                            }
                            let hello = WorkerHello {
                                edge_id,
                                worker_id,
                                instance_id,
                                highest_answered_seq,
                                protocol_version,
                            };
                            let handle = handle.take().expect("checked by the match");
                            ActorMsg::Hello { stream, hello, handle }
                        }
                        (AllocatorFrame::Batch(batch), false) => ActorMsg::Batch { stream, batch },
                        (AllocatorFrame::LoadReport { window_ms, offered, .. }, false) => {
                            ActorMsg::Load { stream, window_ms, offered }
                        }
                        (AllocatorFrame::WorkerStats { phones, verdicts }, false) => {
                            ActorMsg::Stats { stream, phones, verdicts }
                        }
                        (AllocatorFrame::AwardDelivered { award_ids }, false) => {
                            ActorMsg::Delivered(award_ids)
                        }
                        (AllocatorFrame::AwardsWanted { user_ids }, false) => {
                            ActorMsg::AwardsWanted { stream, user_ids }
                        }
                        (AllocatorFrame::ResultsReceived { highest_answered_seq }, false) => {
                            ActorMsg::ResultsReceived { stream, highest: highest_answered_seq }
                        }
                        (AllocatorFrame::Heartbeat { .. }, false) => continue,
                        (frame, _) => {
                            tracing::warn!(
                                stream,
                                frame = frame.name(),
                                "unexpected frame from edge"
                            );
                            break 'read Some(ErrorCode::UnexpectedFrame);
                        }
                    };
                    // Waits for room in the actor's inbox: QUIC flow control then holds the
                    // edge back.
                    tokio::select! {
                        sent = actor.send(msg) => if sent.is_err() { break 'read None },
                        _ = closer.token.cancelled() => break 'read None,
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    record_malformed(&metrics, &err);
                    tracing::warn!(stream, %err, "malformed frame from edge");
                    break 'read Some(ErrorCode::for_decode_error(&err));
                }
            }
        }
        tokio::select! {
            read = recv.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => break None,
                Ok(_) => {}
            },
            _ = closer.token.cancelled() => break closer.code(),
        }
    };
    if let Some(code) = close_code {
        tracing::debug!(stream, code = %code, "closing edge stream");
        let _ = recv.stop(code.code().into());
        closer.close(code);
    }
    // The actor drops its handle on `Closed`; the writer then finishes what is queued.
    let _ = actor.send(ActorMsg::Closed(stream)).await;
    drop(handle);
    let _ = writer.await;
}

fn record_malformed(metrics: &Metrics, err: &DecodeError) {
    metrics.malformed_frames.get_or_create(&MalformedLabels { reason: err.label() }).inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read() -> (AwardRead, oneshot::Receiver<Result<Vec<Award>, String>>) {
        let (reply, answer) = oneshot::channel();
        (AwardRead { query: crate::export::export_page(0, 10), reply }, answer)
    }

    /// The reader's queue is bounded: a read past it is answered "busy" at once, not queued
    /// behind scans that may outlast its caller; with the thread gone, reads come back to be
    /// served where they are.
    #[test]
    fn support_reads_past_the_queue_are_answered_busy() {
        let (reader, queued) = std::sync::mpsc::sync_channel(MAX_QUEUED_READS);
        let (reads, mut answers): (Vec<_>, Vec<_>) = (0..=MAX_QUEUED_READS).map(|_| read()).unzip();
        assert!(queue_reads(&reader, reads).is_empty());
        let busy = answers.pop().unwrap().try_recv();
        assert!(matches!(&busy, Ok(Err(why)) if why.contains("busy")), "{busy:?}");
        assert!(answers.iter_mut().all(|a| a.try_recv().is_err()), "the rest wait their turn");
        drop(queued);
        let (gone, _answer) = read();
        assert_eq!(queue_reads(&reader, vec![gone]).len(), 1, "no thread: served here");
    }

    /// A read whose caller is gone (answered 504, or went away) is not made: a scan of the
    /// whole ledger for nobody.
    #[test]
    fn a_read_nobody_waits_for_is_not_made() {
        let mut scans = 0;
        let (abandoned, answer) = read();
        drop(answer);
        let mut scan = |_: &AwardQuery| {
            scans += 1;
            Ok(Vec::new())
        };
        assert!(!serve_read(&mut scan, abandoned));
        let (wanted, mut answer) = read();
        assert!(serve_read(&mut scan, wanted));
        assert_eq!(scans, 1);
        assert!(matches!(answer.try_recv(), Ok(Ok(awards)) if awards.is_empty()));
    }

    #[test]
    fn the_edge_board_sums_open_streams_and_forgets_closed_ones() {
        let mut board = EdgeBoard::default();
        let verdicts = VerdictCounts { no_luck: 90, slow_down: 4, round_closed: 0, forwarded: 10 };
        // An edge that reconnects again and again: one stream open at a time.
        for stream in 0..1_000 {
            board.stream_of.insert(stream, 7);
            board.on_load(stream, 1000, 100);
            board.on_stats(stream, 50, verdicts);
            if stream < 999 {
                board.on_closed(stream);
            }
        }
        assert_eq!(board.workers[&7].len(), 1, "closed streams are forgotten");
        board.stream_of.insert(5_000, 7);
        board.on_load(5_000, 500, 100);
        board.on_stats(5_000, 25, verdicts);
        let views = board.views();
        assert_eq!(views.len(), 1);
        let edge = &views[0];
        assert_eq!((edge.streams, edge.phones), (2, 75));
        assert_eq!(edge.offered_per_s, 100.0 + 200.0);
        assert_eq!(edge.verdicts_per_s.forwarded, 10.0 + 20.0);
        board.on_closed(999);
        board.on_closed(5_000);
        assert_eq!(board.views()[0].streams, 0, "the link shows down");
    }

    /// An edge that reports absurd phone counts (any varint) shows the most a total can be,
    /// not a sum wrapped around (or, in a debug build, a panic of the actor).
    #[test]
    fn absurd_phone_counts_saturate_the_total() {
        let mut board = EdgeBoard::default();
        for stream in 1..=5 {
            board.stream_of.insert(stream, 7);
            board.on_stats(stream, shake_proto::varint::MAX, VerdictCounts::default());
        }
        assert_eq!(board.views()[0].phones, u64::MAX);
    }
}
