//! The allocator's I/O shell: the QUIC endpoint, one task per edge worker stream, the actor that
//! owns the [`Core`], and the group-commit thread that owns the [`Ledger`].
//!
//! ```text
//! stream tasks --ActorMsg--> actor (Core) --CommitJob--> committer thread (fjall, fsync)
//!      ^                        |   ^                           |
//!      +------ Outgoing --------+   +------ Committed ----------+
//! ```
//! An answer leaves the actor only after the committer reports its group durable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicServerConfig;
use shake_proto::allocator::PROTOCOL_VERSION;
use shake_proto::{ALLOCATOR_ALPN, AllocatorFrame, Batch, DecodeError, ErrorCode, Prize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::award::BatchKey;
use crate::config::Config;
use crate::core::{Core, CoreSettings, Effect, StreamId};
use crate::draw::{Draw, RestoreError};
use crate::ledger::{AnsweredBatch, Ledger, LedgerError};
use crate::metrics::Metrics;
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
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

enum ActorMsg {
    Hello {
        stream: StreamId,
        edge_id: u64,
        worker_id: u16,
        highest: u64,
        tx: mpsc::UnboundedSender<Outgoing>,
    },
    Batch {
        stream: StreamId,
        batch: Batch,
    },
    Load {
        stream: StreamId,
        window_ms: u32,
        offered: u64,
    },
    Delivered(Vec<u64>),
    Closed(StreamId),
    Committed(Result<Vec<(BatchKey, Bytes)>, String>),
}

enum Outgoing {
    Frame(Bytes),
    Close(ErrorCode),
}

enum CommitJob {
    Batch(AnsweredBatch),
    Delivered(Vec<u64>),
}

/// A started allocator: where it listens, and how to wait for it.
#[derive(Debug)]
pub struct Running {
    /// The QUIC address edges connect to.
    pub quic_addr: SocketAddr,
    /// The metrics address, if serving.
    pub metrics_addr: Option<SocketAddr>,
    done: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Waits until the allocator has stopped.
    pub async fn wait(self) -> Result<(), ServeError> {
        self.done.await.unwrap_or(Ok(()))
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

/// Opens the ledger, rebuilds state from it, binds and serves until shut down.
pub async fn start(config: Config, shutdown: Shutdown) -> Result<Running, ServeError> {
    let ledger = Ledger::open(&config.ledger_path)?;
    let snapshot = ledger.snapshot()?;
    let mut draw = Draw::new(&config.rounds);
    for award in &snapshot.awards {
        draw.restore(award)?;
    }
    tracing::info!(
        awards = snapshot.awards.len(),
        answers = snapshot.answers.len(),
        next_award_id = draw.next_award_id(),
        "ledger replayed"
    );
    let metrics = Arc::new(Metrics::new());
    let settings =
        CoreSettings { oversampling: config.oversampling, quota_valid_ms: config.quota_valid_ms };
    let core = Core::new(settings, draw, snapshot.answers);
    update_pool_gauges(&core, &metrics);

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
    let endpoint = quinn::Endpoint::server(server, config.listen)
        .map_err(|source| ServeError::Bind { addr: config.listen, source })?;
    let quic_addr =
        endpoint.local_addr().map_err(|source| ServeError::Bind { addr: config.listen, source })?;

    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let m = metrics.clone();
            let handler: shake_ops::http::Handler = Arc::new(move |path| match path {
                "/metrics" => Some(("text/plain; version=0.0.4", m.render())),
                "/health" => Some(("text/plain", "ok\n".to_owned())),
                _ => None,
            });
            Some(
                shake_ops::http::spawn(addr, handler, shutdown.stop.clone())
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?,
            )
        }
        None => None,
    };

    let (actor_tx, actor_rx) = mpsc::channel::<ActorMsg>(4096);
    let (commit_tx, commit_rx) = std::sync::mpsc::channel::<CommitJob>();
    let committer = {
        let actor_tx = actor_tx.clone();
        let metrics = metrics.clone();
        let max_group = config.max_group_batches;
        std::thread::Builder::new()
            .name("ledger-commit".into())
            .spawn(move || commit_loop(&ledger, &commit_rx, &actor_tx, &metrics, max_group))
            .expect("spawning the commit thread")
    };

    tracing::info!(%quic_addr, metrics = ?metrics_addr, "allocator listening");
    let done = tokio::spawn(async move {
        let accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            actor_tx.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        let result = actor_loop(core, actor_rx, commit_tx, metrics, shutdown).await;
        accept.abort();
        endpoint.close(ErrorCode::NoError.code().into(), b"allocator stopping");
        tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await.ok();
        drop(actor_tx);
        // The commit thread ends once the actor's sender is gone; never abandon a commit.
        let _ = tokio::task::spawn_blocking(move || committer.join()).await;
        result
    });
    Ok(Running { quic_addr, metrics_addr, done })
}

fn commit_loop(
    ledger: &Ledger,
    jobs: &std::sync::mpsc::Receiver<CommitJob>,
    actor: &mpsc::Sender<ActorMsg>,
    metrics: &Metrics,
    max_group: usize,
) {
    while let Ok(first) = jobs.recv() {
        let mut batches = Vec::new();
        let mut delivered = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                CommitJob::Batch(batch) => batches.push(batch),
                CommitJob::Delivered(ids) => delivered.extend(ids),
            }
            if batches.len() < max_group {
                next = jobs.try_recv().ok();
            }
        }
        let started = Instant::now();
        let result = ledger.commit_group(&batches, &delivered);
        metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
        metrics.commit_group_batches.observe(batches.len() as f64);
        let message = match result {
            Ok(()) => {
                for award in batches.iter().flat_map(|b| &b.awards) {
                    let kind = match award.prize {
                        Prize::Cash { .. } => "cash",
                        Prize::Gift { .. } => "gift",
                    };
                    metrics
                        .awards
                        .get_or_create(&vec![
                            ("round", award.round_id.to_string()),
                            ("prize", kind.to_owned()),
                        ])
                        .inc();
                }
                Ok(batches.into_iter().map(|b| (b.key, b.answer)).collect())
            }
            Err(err) => Err(err.to_string()),
        };
        if actor.blocking_send(ActorMsg::Committed(message)).is_err() {
            return;
        }
    }
}

fn update_pool_gauges(core: &Core, metrics: &Metrics) {
    for round in core.draw().rounds() {
        let left = round.pool().items().len() - round.pool().awarded_count();
        metrics
            .pool_remaining
            .get_or_create(&vec![("round", round.config().id.to_string())])
            .set(left as i64);
    }
}

async fn actor_loop(
    mut core: Core,
    mut inbox: mpsc::Receiver<ActorMsg>,
    commits: std::sync::mpsc::Sender<CommitJob>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let mut outgoing: HashMap<StreamId, mpsc::UnboundedSender<Outgoing>> = HashMap::new();
    let mut effects = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut draining_since: Option<Instant> = None;
    loop {
        if let Some(since) = draining_since
            && (core.pending_batches() == 0 || since.elapsed() > Duration::from_secs(10))
        {
            tracing::info!(pending = core.pending_batches(), "drained");
            return Ok(());
        }
        tokio::select! {
            _ = shutdown.stop.cancelled() => return Ok(()),
            _ = shutdown.drain.cancelled(), if draining_since.is_none() => {
                tracing::info!(pending = core.pending_batches(), "draining: answering what is in flight");
                draining_since = Some(Instant::now());
            }
            _ = tick.tick() => {
                core.on_tick(now_ms(), &mut effects);
                update_pool_gauges(&core, &metrics);
            }
            msg = inbox.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                match msg {
                    ActorMsg::Hello { stream, edge_id, worker_id, highest, tx } => {
                        outgoing.insert(stream, tx);
                        metrics.streams_open.set(outgoing.len() as i64);
                        tracing::info!(stream, edge_id, worker_id, highest, "edge worker connected");
                        core.on_hello(stream, edge_id, worker_id, highest, now_ms(), &mut effects);
                    }
                    ActorMsg::Batch { stream, batch } => {
                        metrics.batches.inc();
                        metrics.entries.inc_by(batch.len() as u64);
                        let replayed = core.counters().batches_replayed;
                        core.on_batch(stream, &batch, now_ms(), &mut effects);
                        if core.counters().batches_replayed > replayed {
                            metrics.batches_replayed.inc();
                        }
                    }
                    ActorMsg::Load { stream, window_ms, offered } => {
                        core.on_load_report(stream, window_ms, offered, now_ms());
                    }
                    ActorMsg::Delivered(ids) => core.on_delivered(ids, &mut effects),
                    ActorMsg::Closed(stream) => {
                        outgoing.remove(&stream);
                        metrics.streams_open.set(outgoing.len() as i64);
                        core.on_stream_closed(stream);
                    }
                    ActorMsg::Committed(Ok(done)) => core.on_committed(&done, &mut effects),
                    ActorMsg::Committed(Err(err)) => {
                        // Awards are money: never answer without a durable ledger.
                        tracing::error!(%err, "ledger commit failed; stopping");
                        return Err(ServeError::Ledger(LedgerError::Failed(err)));
                    }
                }
            }
        }
        for effect in effects.drain(..) {
            match effect {
                Effect::Send(stream, frame) => {
                    if let Some(tx) = outgoing.get(&stream) {
                        let _ = tx.send(Outgoing::Frame(frame));
                    }
                }
                Effect::Close(stream, code) => {
                    if let Some(tx) = outgoing.remove(&stream) {
                        let _ = tx.send(Outgoing::Close(code));
                    }
                }
                Effect::Commit(batch) => {
                    let _ = commits.send(CommitJob::Batch(batch));
                }
                Effect::MarkDelivered(ids) => {
                    let _ = commits.send(CommitJob::Delivered(ids));
                }
            }
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    actor: mpsc::Sender<ActorMsg>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) {
    let stream_ids = Arc::new(AtomicU64::new(1));
    loop {
        let incoming = tokio::select! {
            _ = shutdown.drain.cancelled() => return,
            _ = shutdown.stop.cancelled() => return,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
        };
        let actor = actor.clone();
        let metrics = metrics.clone();
        let stream_ids = stream_ids.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(err) => {
                    tracing::warn!(%remote, %err, "edge handshake refused");
                    metrics
                        .rejected_peers
                        .get_or_create(&vec![("reason", "handshake".to_owned())])
                        .inc();
                    return;
                }
            };
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
                tokio::spawn(serve_stream(stream, send, recv, actor.clone(), metrics.clone()));
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

async fn serve_stream(
    link: EdgeLink,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    actor: mpsc::Sender<ActorMsg>,
    metrics: Arc<Metrics>,
) {
    let stream = link.stream;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(async move {
        while let Some(out) = out_rx.recv().await {
            match out {
                Outgoing::Frame(bytes) => {
                    if send.write_all(&bytes).await.is_err() {
                        return None;
                    }
                }
                Outgoing::Close(code) => {
                    let _ = send.reset(code.code().into());
                    return Some(code);
                }
            }
        }
        None
    });
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut hello_seen = false;
    let close_code = 'read: loop {
        loop {
            match AllocatorFrame::decode(&mut buf) {
                Ok(Some(frame)) => {
                    let msg = match (frame, hello_seen) {
                        (
                            AllocatorFrame::EdgeHello {
                                edge_id,
                                worker_id,
                                protocol_version,
                                highest_answered_seq,
                            },
                            false,
                        ) => {
                            if protocol_version != PROTOCOL_VERSION {
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
                                    .get_or_create(&vec![("reason", "edge_id".to_owned())])
                                    .inc();
                                link.connection.close(
                                    ErrorCode::EdgeRejected.code().into(),
                                    b"certificate does not name this edge",
                                );
                                break 'read None;
                            }
                            hello_seen = true;
                            let tx = out_tx.clone();
                            ActorMsg::Hello {
                                stream,
                                edge_id,
                                worker_id,
                                highest: highest_answered_seq,
                                tx,
                            }
                        }
                        (AllocatorFrame::Batch(batch), true) => ActorMsg::Batch { stream, batch },
                        (AllocatorFrame::LoadReport { window_ms, offered, .. }, true) => {
                            ActorMsg::Load { stream, window_ms, offered }
                        }
                        (AllocatorFrame::AwardDelivered { award_ids }, true) => {
                            ActorMsg::Delivered(award_ids)
                        }
                        (AllocatorFrame::Heartbeat { .. }, true) => continue,
                        (frame, _) => {
                            tracing::warn!(
                                stream,
                                frame = frame.name(),
                                "unexpected frame from edge"
                            );
                            break 'read Some(ErrorCode::UnexpectedFrame);
                        }
                    };
                    if actor.send(msg).await.is_err() {
                        break 'read None;
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
        match recv.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break None,
            Ok(_) => {}
        }
    };
    if let Some(code) = close_code {
        tracing::debug!(stream, code = %code, "closing edge stream");
        let _ = recv.stop(code.code().into());
        let _ = out_tx.send(Outgoing::Close(code));
    }
    drop(out_tx);
    // The actor drops its sender on `Closed`; the writer then finishes what is queued.
    let _ = actor.send(ActorMsg::Closed(stream)).await;
    let _ = writer.await;
}

fn record_malformed(metrics: &Metrics, err: &DecodeError) {
    metrics.malformed_frames.get_or_create(&vec![("reason", err.label().to_owned())]).inc();
}
