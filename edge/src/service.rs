//! Starting and stopping an edge: TLS for phones and for the allocator link, one UDP socket per
//! worker on the shared port (SO_REUSEPORT, explicit buffers), the allocator connection
//! manager, the workers and the metrics endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::QuicClientConfig;
use shake_ops::bearer::BearerToken;
use shake_ops::http::Readiness;
use shake_ops::supervise::{Ended, Supervisor, ThreadEnd};
use shake_ops::tls::{self, TlsError};
use shake_proto::{ALLOCATOR_ALPN, ErrorCode, KeyRing, PHONE_ALPN};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::award_book::AwardBook;
use crate::config::EdgeConfig;
use crate::leader_search::{Attempt, LeaderSearch};
use crate::metrics::EdgeMetrics;
use crate::shared::Shared;
use crate::user_sessions::UserSessions;
use crate::{event_loop, link_pipe};

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// TLS files or settings.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A socket could not be set up.
    #[error("socket {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A token key could not be loaded.
    #[error("token key {0}: {1}")]
    TokenKey(u32, shake_proto::TokenError),
    /// The QUIC crypto configuration was refused.
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
    /// A thread or runtime could not start.
    #[error("starting threads: {0}")]
    Thread(std::io::Error),
    /// The token `GET /users` needs could not be read.
    #[error("users_token_file: {0}")]
    UsersToken(String),
}

/// Why a running edge stopped abnormally.
#[derive(Debug, Clone, thiserror::Error)]
#[error("edge {thread} ended unexpectedly: {how}")]
pub struct EdgeFailure {
    /// The thread that ended first.
    pub thread: String,
    /// How it ended (panicked, or its error).
    pub how: String,
}

/// Stops a running edge now, from any thread.
#[derive(Debug, Clone)]
pub struct EdgeStopper {
    stop: CancellationToken,
    wakers: Vec<Arc<shake_loop::udp::Waker>>,
}

impl EdgeStopper {
    /// Close everything now.
    pub fn stop(&self) {
        self.stop.cancel();
        self.wakers.iter().for_each(|w| w.wake());
    }
}

/// A running edge.
#[derive(Debug)]
pub struct RunningEdge {
    /// Where phones connect.
    pub addr: SocketAddr,
    /// Where metrics are served.
    pub metrics_addr: Option<SocketAddr>,
    /// Workers running.
    pub workers: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
    link: std::thread::JoinHandle<()>,
    supervisor: Supervisor,
    /// What [`RunningEdge::failure`] reported, for [`RunningEdge::join`] to return: the
    /// report is taken from the supervisor once.
    failed: Option<EdgeFailure>,
    /// Event-loop workers' wake-ups: a drain or stop must reach a loop that sleeps.
    wakers: Vec<Arc<shake_loop::udp::Waker>>,
    drain: CancellationToken,
    stop: CancellationToken,
}

impl RunningEdge {
    /// Graceful: stop accepting, `GoAway` to phones, flush and wait for answers (bounded).
    pub fn drain(&self) {
        self.drain.cancel();
        self.wakers.iter().for_each(|w| w.wake());
    }

    /// Fast: close everything now.
    pub fn stop(&self) {
        self.stopper().stop();
    }

    /// What [`RunningEdge::stop`] does, for another thread (a SIGINT during a drain, while
    /// the edge is being joined).
    pub fn stopper(&self) -> EdgeStopper {
        EdgeStopper { stop: self.stop.clone(), wakers: self.wakers.clone() }
    }

    /// Waits until a worker or the allocator link ends on its own, which is a failure: they
    /// end only after [`RunningEdge::drain`] or [`RunningEdge::stop`].
    pub async fn failure(&mut self) -> EdgeFailure {
        let failure = match self.supervisor.next_end().await {
            Some(ended) => failure_of(ended),
            None => EdgeFailure { thread: "supervisor".into(), how: "gone".into() },
        };
        self.failed = Some(failure.clone());
        failure
    }

    /// Waits for every worker to finish, then stops the allocator link and metrics. An error
    /// if a thread panicked or failed, or [`RunningEdge::failure`] reported one.
    pub fn join(mut self) -> Result<(), EdgeFailure> {
        for thread in self.threads {
            let _ = thread.join();
        }
        self.stop.cancel();
        let _ = self.link.join();
        if let Some(failed) = self.failed {
            return Err(failed);
        }
        match self.supervisor.ended().into_iter().find(|e| e.end != ThreadEnd::Finished) {
            Some(ended) => Err(failure_of(ended)),
            None => Ok(()),
        }
    }
}

fn failure_of(ended: Ended) -> EdgeFailure {
    let how = match ended.end {
        ThreadEnd::Finished => "returned".to_owned(),
        ThreadEnd::Failed(err) => err,
        ThreadEnd::Panicked => "panicked".to_owned(),
    };
    EdgeFailure { thread: ended.name, how }
}

/// The TLS provider phones meet: aws-lc-rs, AES-128-GCM first (QUIC's Initial packets use it
/// anyway, and it is the cheapest suite per packet), X25519 first (what phones send a key share
/// for, so no HelloRetryRequest). Chosen by `scripts/bench.sh handshake` (README): AES-128 first
/// completed 15% more full handshakes per second than rustls's default order (AES-256 first)
/// on the same machine; P-256 first made no measurable difference. aws-lc-rs over ring: in
/// the median of three runs, 0.95x the server CPU per full handshake and 0.88x per resumed
/// one with the ECDSA P-256 certificate (0.91x and 0.97x with Ed25519); one run of three had
/// ring ahead on full handshakes, none on resumed ones. The rest of the project (the
/// allocator link) stays on ring.
pub fn phone_tls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider, kx_group};
    // Built once: the lazy suites are `'static` (crate::lazy_keys).
    static SUITES: std::sync::OnceLock<Vec<rustls::SupportedCipherSuite>> =
        std::sync::OnceLock::new();
    let mut provider = default_provider();
    provider.cipher_suites = SUITES
        .get_or_init(|| {
            crate::keyed_hkdf::keyed_hkdf_suites(&crate::lazy_keys::lazy_suites(&[
                cipher_suite::TLS13_AES_128_GCM_SHA256,
                cipher_suite::TLS13_AES_256_GCM_SHA384,
                cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            ]))
        })
        .clone();
    provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
    Arc::new(provider)
}

fn phone_server_config(config: &EdgeConfig) -> Result<quinn::ServerConfig, StartError> {
    let chain = tls::load_certs(&config.tls.cert)?;
    let key = tls::load_key(&config.tls.key)?;
    phone_server_config_from(chain, key, &config.transport)
}

/// The QUIC server configuration phones meet: TLS 1.3 with [`phone_tls_provider`], one shared
/// ticketer, and the transport limits of `t`. Public so that the benchmarks measure exactly
/// what the edge runs.
pub fn phone_server_config_from(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    t: &crate::config::PhoneTransport,
) -> Result<quinn::ServerConfig, StartError> {
    phone_server_config_with(phone_tls_provider(), chain, key, t)
}

/// [`phone_server_config_from`] on another TLS provider (the benchmarks compare the edge's
/// choices one at a time).
pub fn phone_server_config_with(
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    t: &crate::config::PhoneTransport,
) -> Result<quinn::ServerConfig, StartError> {
    let mut rustls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::from)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::from)?;
    rustls.alpn_protocols = vec![PHONE_ALPN.to_vec()];
    rustls.ignore_client_order = true;
    // One ticketer, shared by every worker (they share this config), so a phone that lands on
    // another worker still resumes. With tickets, resumption is stateless: rustls's small
    // default session cache stays unused (a 65,536-entry cache here cost 6.4 MB for nothing).
    rustls.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(TlsError::from)?;
    // One ticket per handshake, not rustls's two: a phone resumes once per reconnect and gets a
    // fresh ticket then. Saves a ticket encryption and its bytes per handshake; the CPU
    // difference is within the noise of scripts/bench.sh handshake on the development VM.
    rustls.send_tls13_tickets = 1;
    let crypto =
        crate::phone_session::PhoneCrypto::new(Arc::new(rustls)).map_err(StartError::Quic)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(phone_transport(t)?));
    Ok(server)
}

/// Transport limits for phones: one bidirectional stream (the control stream), no
/// unidirectional ones, small windows, the idle timeout.
pub fn phone_transport(
    t: &crate::config::PhoneTransport,
) -> Result<quinn::TransportConfig, StartError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(t.stream_window.into())
        .receive_window(t.connection_window.into())
        .send_window(t.send_window)
        .datagram_receive_buffer_size(Some(t.datagram_receive_buffer))
        .datagram_send_buffer_size(t.datagram_send_buffer)
        // Shakes and outcomes are tens of bytes: probing for a larger path MTU buys nothing and
        // costs each new connection its probe packets. (Measured: no change in memory per idle
        // phone, 18.4 KiB either way; the probes are the point.)
        .mtu_discovery_config(None)
        // Phones are not asked to acknowledge at once (ACK-frequency threshold 0): tried on
        // 2026-12-07, it took 6-17% off the edge's CPU a shake at one shake a second, but in a
        // round's opening every packet to a phone drew its own ACK, and under a CPU quota the
        // surge's p99 went past 10 ms in 3 of 7 runs (PERFORMANCE.md).
        .max_idle_timeout(Some(
            Duration::from_millis(t.idle_timeout_ms)
                .try_into()
                .map_err(|_| StartError::Quic("idle timeout too large".into()))?,
        ));
    Ok(transport)
}

fn allocator_client_config(config: &EdgeConfig) -> Result<quinn::ClientConfig, StartError> {
    let a = &config.allocator;
    let rustls = tls::mutual_tls_client(&a.ca, &a.cert, &a.key, ALLOCATOR_ALPN)?;
    let crypto = QuicClientConfig::try_from(rustls).map_err(|e| StartError::Quic(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // A silent allocator (crashed, paused, cut off) is given up after three missed
    // keep-alives; the link then tries the next allocator, which leads by then or says who
    // does (its lease is shorter than this).
    transport
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(Duration::from_secs(3).try_into().expect("3 s fits")));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// One worker's socket: SO_REUSEPORT on the shared port, buffers set (and checked).
fn worker_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, StartError> {
    let costs = "bursts of connects may lose packets";
    shake_loop::driver::buffered_socket(addr, buffer, true, costs)
        .map(|(socket, _)| socket)
        .map_err(|source| StartError::Socket { addr, source })
}

/// Keeps one connection to the allocator up, reconnecting with backoff, and publishes it to
/// the workers' streams (`pipes`), which live on the same thread. The thread is supervised:
/// it ends before the edge stops only if a worker's stream panicked, and the edge then stops
/// with a failure (that worker's shakes would otherwise never reach the allocator again).
fn spawn_allocator_link(
    config: &EdgeConfig,
    client: quinn::ClientConfig,
    stop: CancellationToken,
    metrics: Arc<EdgeMetrics>,
    pipes: Vec<link_pipe::LinkEnds>,
    supervisor: &Supervisor,
) -> Result<std::thread::JoinHandle<()>, StartError> {
    let (tx, pipes_rx) = watch::channel(None);
    let addrs = config.allocator.addr.all();
    let server_name = config.allocator.server_name.clone();
    let bind: SocketAddr = if addrs[0].is_ipv6() { "[::]:0".parse() } else { "0.0.0.0:0".parse() }
        .expect("literal address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;
    // Bound before the thread starts, so that a socket the kernel refuses (no IPv6, no file
    // descriptors left) fails the start: inside the thread it was logged, and the edge ran on
    // with no allocator.
    let mut endpoint = {
        let _in_runtime = runtime.enter();
        quinn::Endpoint::client(bind).map_err(|source| StartError::Socket { addr: bind, source })?
    };
    endpoint.set_default_client_config(client);
    supervisor
        .spawn("allocator-link".into(), move || {
            runtime.block_on(async move {
                // The workers' allocator streams live here, beside the connection.
                let mut streams = tokio::task::JoinSet::new();
                for pipe in pipes {
                    let (allocator, stop, metrics) =
                        (pipes_rx.clone(), stop.clone(), metrics.clone());
                    streams.spawn(link_pipe::run(pipe, allocator, stop, metrics));
                }
                let link = LinkTo { addrs, server_name, published: tx, stop, metrics };
                let ended = tokio::select! {
                    () = link.keep_up(&endpoint) => Ok(()),
                    panicked = first_panic(&mut streams) => Err(panicked),
                };
                endpoint.close(0u32.into(), b"edge stopping");
                // Until the close has gone out (quinn's advice before exiting): with the
                // runtime dropped at once it may never leave, and the allocator then holds
                // this edge's streams, and shares quotas by its last load report, until their
                // idle timeout (seen once in CI, under load).
                tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await.ok();
                ended
            })
        })
        .map_err(StartError::Thread)
}

/// Resolves when one of the workers' allocator streams panics (a bug). A stream that returns
/// (its worker gone after a drain, or the edge stopping) is not one.
async fn first_panic(streams: &mut tokio::task::JoinSet<()>) -> String {
    while let Some(ended) = streams.join_next().await {
        if ended.as_ref().is_err_and(tokio::task::JoinError::is_panic) {
            return "a worker's allocator stream panicked".to_owned();
        }
    }
    std::future::pending().await
}

/// The allocator link's connection: where it goes, and who hears of it.
struct LinkTo {
    /// Every allocator's address, tried in turn (a standby's redirect names the next).
    addrs: Vec<SocketAddr>,
    server_name: String,
    /// The connection up (`Some`) or down, for the workers' streams.
    published: watch::Sender<Option<quinn::Connection>>,
    stop: CancellationToken,
    metrics: Arc<EdgeMetrics>,
}

impl LinkTo {
    /// Connects, follows redirects and reconnects with backoff until the edge stops
    /// ([`LeaderSearch`] says where and when).
    async fn keep_up(self, endpoint: &quinn::Endpoint) {
        let Self { addrs, server_name, published: tx, stop, metrics } = self;
        let mut search = LeaderSearch::new(addrs);
        while !stop.is_cancelled() {
            let addr = search.current();
            let attempt = match endpoint.connect(addr, &server_name) {
                Ok(connecting) => connecting.await.map_err(|e| e.to_string()),
                Err(err) => Err(err.to_string()),
            };
            let ended = match attempt {
                Ok(conn) => {
                    let up_at = Instant::now();
                    let _ = tx.send(Some(conn.clone()));
                    metrics.allocator_up.set(1);
                    let ended = tokio::select! {
                        reason = conn.closed() => link_ended(&reason, up_at.elapsed()),
                        _ = stop.cancelled() => Attempt::Lost(up_at.elapsed()),
                    };
                    metrics.allocator_up.set(0);
                    let _ = tx.send(None);
                    match ended {
                        Attempt::NotLeader(..) => {}
                        Attempt::Stopped(up_for) | Attempt::Lost(up_for) => {
                            if !stop.is_cancelled() {
                                tracing::warn!(%addr, ?up_for, ?ended, "allocator link down");
                            }
                        }
                        Attempt::Unreachable => {}
                    }
                    ended
                }
                Err(err) => {
                    tracing::warn!(%addr, %err, "allocator unreachable; answering phones with the local limit");
                    Attempt::Unreachable
                }
            };
            let next = search.ended(ended, Instant::now());
            if let Attempt::NotLeader(leader, _) = ended {
                if next.stale_redirect {
                    tracing::info!(standby = %addr, leader = ?leader, "allocator is a standby naming an allocator that just left: asking it again");
                } else {
                    tracing::info!(standby = %addr, leader = ?leader, "allocator is a standby: following it to the leader");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(next.pause) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}

/// What a link's close says of its allocator: a standby's `NOT_LEADER` (naming the leader in
/// its reason, if it knows one), a stop (`NO_ERROR`), or a loss.
fn link_ended(reason: &quinn::ConnectionError, up_for: Duration) -> Attempt {
    match reason {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == ErrorCode::NotLeader.code().into() =>
        {
            let leader = std::str::from_utf8(&close.reason).ok().and_then(|t| t.parse().ok());
            Attempt::NotLeader(leader, up_for)
        }
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == ErrorCode::NoError.code().into() =>
        {
            Attempt::Stopped(up_for)
        }
        _ => Attempt::Lost(up_for),
    }
}

/// `GET /users/{user_id}`: what this edge knows of one user, as JSON (for risk control and
/// support: live session, sessions started and superseded, limited by the allocator), to a
/// request that carries `token`. Without a token configured it is not served: the metrics
/// listener is usually open to every scraper.
fn users_route(sessions: Arc<UserSessions>, token: Option<BearerToken>) -> axum::Router {
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    let report = move |Path(user_id): Path<String>, headers: HeaderMap| async move {
        let Some(token) = token else {
            let why = "GET /users is off: set users_token_file to serve it\n";
            return (StatusCode::NOT_FOUND, why).into_response();
        };
        if !token.admits(&headers) {
            let why = "a bearer token (users_token_file) is needed\n";
            return (StatusCode::UNAUTHORIZED, why).into_response();
        }
        let Ok(user_id) = user_id.parse::<u64>() else {
            return (StatusCode::BAD_REQUEST, "user id must be a number\n").into_response();
        };
        let now_ms =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let user = sessions.report(user_id, now_ms);
        let body = serde_json::to_string(&user).unwrap_or_default() + "\n";
        ([(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    axum::Router::new().route("/users/{user_id}", axum::routing::get(report))
}

/// Starts the edge: workers, the allocator link and metrics. Returns once everything is bound.
pub fn start(config: EdgeConfig) -> Result<RunningEdge, StartError> {
    // Read before any thread starts: a failure here leaves nothing running.
    let users_token = config
        .users_token_file
        .as_deref()
        .map(BearerToken::read)
        .transpose()
        .map_err(StartError::UsersToken)?;
    let mut keys = KeyRing::new();
    for key in &config.token_keys {
        let secret = key.secret().unwrap_or_default();
        keys.insert(key.id, &secret).map_err(|e| StartError::TokenKey(key.id, e))?;
    }
    let server = phone_server_config(&config)?;
    let client = allocator_client_config(&config)?;
    let workers = config.worker_count();
    if config.overload.enabled && config.overload.shakes_per_core_s == 0.0 {
        tracing::warn!(
            "[overload] shakes_per_core_s is 0 (unknown): the first round's opening is met by \
             reacting (a queue, slow-downs, kernel drops), and only a capacity measured in an \
             overload paces the openings after it; set it to this machine's edge_max_shakes_per_s \
             (scripts/bench.sh edge: the JSON line, or max/s/core of its shake-edge (+ allocator) row)"
        );
    }
    let metrics = Arc::new(EdgeMetrics::new());
    let drain = CancellationToken::new();
    let stop = CancellationToken::new();

    // The first socket picks the port (when listen has port 0); the rest join it.
    let first = worker_socket(config.listen, config.socket_buffer_bytes)?;
    let addr =
        first.local_addr().map_err(|source| StartError::Socket { addr: config.listen, source })?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(worker_socket(addr, config.socket_buffer_bytes)?);
    }

    // The workers' drivers (joined so that each hands the others datagrams for their
    // connections) and their pipes to the allocator link.
    let mut drivers = Vec::with_capacity(sockets.len());
    for socket in sockets {
        let mut driver = shake_loop::Driver::new(socket)
            .map_err(|source| StartError::Socket { addr, source })?;
        driver.set_batch_delay(Duration::from_micros(config.batch_delay_us));
        drivers.push(driver);
    }
    shake_loop::driver::route_between(&mut drivers);
    let wakers: Vec<Arc<shake_loop::udp::Waker>> =
        drivers.iter().map(shake_loop::Driver::waker).collect();
    let (loop_ends, link_ends): (Vec<_>, Vec<_>) = wakers
        .iter()
        .enumerate()
        .map(|(id, waker)| link_pipe::pipe(id as u16, waker.clone()))
        .unzip();
    let supervisor = Supervisor::default();
    let link_thread = spawn_allocator_link(
        &config,
        client,
        stop.clone(),
        metrics.clone(),
        link_ends,
        &supervisor,
    )?;
    let metrics_listen = config.metrics_listen;
    let awards = Arc::new(AwardBook::new(
        config.limits.max_outstanding_awards,
        config.limits.award_ack_window_s.saturating_mul(1000),
    ));
    // A worker is woken to close a session another worker's newer one superseded.
    let session_wakers: Vec<Box<dyn Fn() + Send + Sync>> = wakers
        .iter()
        .map(|w| {
            let w = w.clone();
            Box::new(move || w.wake()) as Box<dyn Fn() + Send + Sync>
        })
        .collect();
    let supersedes = crate::bucket::Rate::new(
        config.limits.user_supersedes_per_min / 60.0,
        config.limits.user_supersede_burst,
    );
    let phone_rate =
        crate::bucket::Rate::new(config.limits.phone_rate_per_s, config.limits.phone_burst);
    let sessions = UserSessions::new(workers, session_wakers, supersedes, phone_rate);
    let shared = Arc::new(Shared {
        config,
        keys,
        metrics: metrics.clone(),
        handshakes: AtomicU32::new(0),
        phones: AtomicU32::new(0),
        awards,
        sessions: sessions.clone(),
        origin: Instant::now(),
        drain: drain.clone(),
        stop: stop.clone(),
    });
    let mut threads = Vec::new();
    // The workers, one event loop each.
    let server = Arc::new(server);
    let reset_key = Arc::new(
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map_err(|_| StartError::Quic("no randomness for the reset key".into()))?,
    );
    for (id, (driver, link)) in drivers.into_iter().zip(loop_ends).enumerate() {
        let start = event_loop::LoopStart {
            id: id as u16,
            workers,
            driver,
            server: server.clone(),
            reset_key: reset_key.clone(),
            link,
        };
        let shared = shared.clone();
        let thread = supervisor
            .spawn(format!("edge-worker-{id}"), move || event_loop::run(start, shared))
            .map_err(StartError::Thread)?;
        threads.push(thread);
    }

    let metrics_addr = match metrics_listen {
        Some(listen) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(StartError::Thread)?;
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind(listen))
                .map_err(|source| StartError::Socket { addr: listen, source })?;
            let bound = listener
                .local_addr()
                .map_err(|source| StartError::Socket { addr: listen, source })?;
            let drain_flag = drain.clone();
            let up = metrics.clone();
            let endpoints = shake_ops::http::Endpoints {
                metrics: Arc::new(move || metrics.render()),
                ready: Arc::new(move || {
                    if drain_flag.is_cancelled() {
                        Readiness::NotReady("draining".into())
                    } else if up.allocator_up.get() != 1 {
                        Readiness::NotReady("allocator link down".into())
                    } else {
                        Readiness::Ready
                    }
                }),
            };
            let stop_metrics = stop.clone();
            let app = shake_ops::http::router(endpoints).merge(users_route(sessions, users_token));
            std::thread::Builder::new()
                .name("edge-metrics".into())
                .spawn(move || {
                    runtime.block_on(shake_ops::http::serve_router(listener, app, stop_metrics))
                })
                .map_err(StartError::Thread)?;
            Some(bound)
        }
        None => None,
    };
    Ok(RunningEdge {
        addr,
        metrics_addr,
        workers,
        threads,
        link: link_thread,
        supervisor,
        failed: None,
        wakers,
        drain,
        stop,
    })
}
