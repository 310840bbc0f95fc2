//! `handshake`: full and resumed QUIC handshakes against one server thread pinned to one
//! core, clients on another: quinn's default server configuration, the edge's own (built by
//! `shake_edge::service::phone_server_config_from`, so what is measured is what runs), and
//! several TLS choices (cipher-suite order, key-exchange group, tickets per handshake, the
//! crypto library: ring or aws-lc-rs; the certificate: ECDSA P-256 or Ed25519). The
//! server thread's CPU time per handshake is the figure: the clients, not the server, bound the
//! rate on a small machine, so "handshakes per second on one server core" is one second of
//! server CPU divided by the CPU one handshake takes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::SupportedCipherSuite;
use rustls::crypto::SupportedKxGroup;
use rustls::crypto::ring::{cipher_suite, default_provider, kx_group};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::sys;

/// How a variant's server is configured.
#[derive(Debug, Clone)]
pub enum Setup {
    /// `quinn::ServerConfig::with_single_cert`: quinn's and rustls's defaults throughout (with
    /// the ALPN value set, which QUIC requires).
    QuinnDefault,
    /// The edge's phone configuration, default transport settings, on `shake-loop` (the
    /// edge's phone path: one thread drives `quinn_proto`).
    EdgeOnLoop,
    /// The same, with the provider's own TLS suites: every key built at once (the edge builds
    /// its keys on first use, `shake_edge::lazy_keys`).
    EdgeOnLoopEagerKeys,
    /// The same configuration on a quinn/tokio endpoint.
    Edge,
    /// A TLS choice on top of a plain quinn server.
    Tls {
        /// TLS 1.3 suites, in preference order.
        suites: Vec<SupportedCipherSuite>,
        /// Key-exchange groups, in preference order.
        kx: Vec<&'static dyn SupportedKxGroup>,
        /// Session tickets sent after each handshake.
        tickets: usize,
    },
    /// The edge's TLS choices (AES-128 first, X25519 first, two tickets) from one crypto
    /// library.
    Library(Crypto),
}

/// A crypto library rustls can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crypto {
    /// ring (what the project builds with).
    Ring,
    /// AWS-LC, through aws-lc-rs (what the edge's phone-facing TLS uses).
    AwsLc,
}

/// The server certificate's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    /// ECDSA with P-256 and SHA-256 (what `dev-certs` issues).
    EcdsaP256,
    /// Ed25519.
    Ed25519,
}

/// One server configuration under test.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Short name for the table.
    pub name: &'static str,
    /// How the server is set up.
    pub setup: Setup,
    /// Its certificate.
    pub cert: CertKind,
}

/// Index of quinn's default in [`variants`].
pub const QUINN_DEFAULT: usize = 0;
/// Index of the edge as it runs (its configuration on `shake-loop`) in [`variants`].
pub const EDGE: usize = 1;

/// The configurations compared.
pub fn variants() -> Vec<Variant> {
    use cipher_suite::*;
    let aes128_first =
        vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
    let x25519_first = vec![kx_group::X25519, kx_group::SECP256R1];
    let p256 = CertKind::EcdsaP256;
    vec![
        Variant { name: "quinn default", setup: Setup::QuinnDefault, cert: p256 },
        Variant { name: "shake-edge (shake-loop)", setup: Setup::EdgeOnLoop, cert: p256 },
        Variant {
            name: "shake-edge (shake-loop), keys at once",
            setup: Setup::EdgeOnLoopEagerKeys,
            cert: p256,
        },
        Variant { name: "shake-edge config, quinn/tokio", setup: Setup::Edge, cert: p256 },
        Variant {
            name: "rustls order (AES-256 first), X25519",
            setup: Setup::Tls {
                suites: vec![
                    TLS13_AES_256_GCM_SHA384,
                    TLS13_AES_128_GCM_SHA256,
                    TLS13_CHACHA20_POLY1305_SHA256,
                ],
                kx: x25519_first.clone(),
                tickets: 2,
            },
            cert: p256,
        },
        Variant {
            name: "AES-128 first, X25519",
            setup: Setup::Tls {
                suites: aes128_first.clone(),
                kx: x25519_first.clone(),
                tickets: 2,
            },
            cert: p256,
        },
        Variant {
            name: "AES-128 first, X25519, 1 ticket",
            setup: Setup::Tls { suites: aes128_first.clone(), kx: x25519_first, tickets: 1 },
            cert: p256,
        },
        Variant {
            name: "AES-128 first, P-256",
            setup: Setup::Tls {
                suites: aes128_first,
                kx: vec![kx_group::SECP256R1, kx_group::X25519],
                tickets: 2,
            },
            cert: p256,
        },
        Variant { name: "ring, ECDSA P-256", setup: Setup::Library(Crypto::Ring), cert: p256 },
        Variant {
            name: "ring, Ed25519",
            setup: Setup::Library(Crypto::Ring),
            cert: CertKind::Ed25519,
        },
        Variant {
            name: "aws-lc-rs, ECDSA P-256",
            setup: Setup::Library(Crypto::AwsLc),
            cert: p256,
        },
        Variant {
            name: "aws-lc-rs, Ed25519",
            setup: Setup::Library(Crypto::AwsLc),
            cert: CertKind::Ed25519,
        },
    ]
}

/// The edge's suite and group order from `crypto`, and its ticketer.
fn library(
    crypto: Crypto,
) -> (rustls::crypto::CryptoProvider, Arc<dyn rustls::server::ProducesTickets>) {
    match crypto {
        Crypto::Ring => {
            use cipher_suite::*;
            let mut provider = default_provider();
            provider.cipher_suites = vec![
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ];
            provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
            (provider, rustls::crypto::ring::Ticketer::new().expect("ticketer"))
        }
        Crypto::AwsLc => {
            use rustls::crypto::aws_lc_rs::{self, cipher_suite::*, kx_group};
            let mut provider = aws_lc_rs::default_provider();
            provider.cipher_suites = vec![
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ];
            provider.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1];
            (provider, aws_lc_rs::Ticketer::new().expect("ticketer"))
        }
    }
}

/// The measured figures of one variant.
#[derive(Debug, Clone)]
pub struct HandshakeFigures {
    /// Variant name.
    pub name: &'static str,
    /// Full handshakes completed per second.
    pub full_per_s: f64,
    /// Server CPU per full handshake, microseconds.
    pub full_server_us: f64,
    /// Resumed handshakes per second.
    pub resumed_per_s: f64,
    /// Server CPU per resumed handshake, microseconds.
    pub resumed_server_us: f64,
    /// The server's time per full handshake in memory (no socket; `handshake_in_memory`),
    /// microseconds; 0 where it did not complete.
    pub full_in_memory_us: f64,
}

impl HandshakeFigures {
    /// Full handshakes one fully busy server core completes per second.
    pub fn full_per_busy_core(&self) -> f64 {
        crate::stats::rate_per_busy_core(self.full_server_us)
    }

    /// Resumed handshakes one fully busy server core completes per second.
    pub fn resumed_per_busy_core(&self) -> f64 {
        crate::stats::rate_per_busy_core(self.resumed_server_us)
    }
}

/// The readable table and the JSON figures of a `handshake` run (`results` in [`variants`]
/// order).
pub fn table_and_figures(
    results: &[HandshakeFigures],
) -> (String, serde_json::Map<String, serde_json::Value>) {
    let mut table = format!(
        "handshake: QUIC + TLS 1.3, ECDSA P-256 certificate unless named, one pinned server thread\n\
         {:<38}{:>10}{:>12}{:>12}{:>10}{:>12}{:>12}{:>10}\n{}\n",
        "server configuration",
        "full/s",
        "CPU us",
        "full/s/core",
        "resumed/s",
        "CPU us",
        "res/s/core",
        "mem us",
        "-".repeat(116)
    );
    let mut figures = serde_json::Map::new();
    for (i, r) in results.iter().enumerate() {
        table += &format!(
            "{:<38}{:>10.0}{:>12.0}{:>12.0}{:>10.0}{:>12.0}{:>12.0}{:>10.1}\n",
            r.name,
            r.full_per_s,
            r.full_server_us,
            r.full_per_busy_core(),
            r.resumed_per_s,
            r.resumed_server_us,
            r.resumed_per_busy_core(),
            r.full_in_memory_us
        );
        figures.insert(
            format!("variant_{i}"),
            serde_json::json!({
                "name": r.name,
                "full_hs_per_s_driven": r.full_per_s.round(),
                "full_server_cpu_us": r.full_server_us.round(),
                "resumed_hs_per_s_driven": r.resumed_per_s.round(),
                "resumed_server_cpu_us": r.resumed_server_us.round(),
                "full_server_in_memory_us": (r.full_in_memory_us * 10.0).round() / 10.0,
            }),
        );
    }
    if let (Some(quinn), Some(edge)) = (results.get(QUINN_DEFAULT), results.get(EDGE)) {
        let ratio = crate::stats::ratio(edge.full_per_busy_core(), quinn.full_per_busy_core());
        table += &format!("hs_ratio_vs_quinn_default {ratio:.2} (goal >= 2)\n");
        figures.insert("edge_full_hs_per_s".into(), edge.full_per_busy_core().round().into());
        figures.insert(
            "quinn_default_full_hs_per_s".into(),
            quinn.full_per_busy_core().round().into(),
        );
        figures.insert("edge_resumed_hs_per_s".into(), edge.resumed_per_busy_core().round().into());
        figures.insert(
            "quinn_default_resumed_hs_per_s".into(),
            quinn.resumed_per_busy_core().round().into(),
        );
        figures
            .insert("hs_ratio_vs_quinn_default".into(), ((ratio * 100.0).round() / 100.0).into());
        figures.insert("goal_met".into(), (ratio >= 2.0).into());
        // The same comparison without the kernel, the loop or the client: the server's own
        // work per full handshake (not the goal's figure; it says how much of the ratio the
        // configurations make).
        let in_memory = crate::stats::ratio(quinn.full_in_memory_us, edge.full_in_memory_us);
        table += &format!(
            "in memory (server's time per full handshake, no socket): edge {:.1} us, quinn \
             default {:.1} us, ratio {in_memory:.2}\n",
            edge.full_in_memory_us, quinn.full_in_memory_us
        );
        figures.insert(
            "edge_full_in_memory_us".into(),
            ((edge.full_in_memory_us * 10.0).round() / 10.0).into(),
        );
        figures.insert(
            "quinn_default_full_in_memory_us".into(),
            ((quinn.full_in_memory_us * 10.0).round() / 10.0).into(),
        );
        figures.insert("hs_ratio_in_memory".into(), ((in_memory * 100.0).round() / 100.0).into());
    }
    (table, figures)
}

fn server_config(
    variant: &Variant,
    cert: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> quinn::ServerConfig {
    let (provider, ticketer, tickets) = match &variant.setup {
        Setup::QuinnDefault => {
            // What `quinn::ServerConfig::with_single_cert` builds (rustls's default provider,
            // TLS 1.3, 0-RTT allowed, the default session cache), plus the ALPN value QUIC
            // requires to be negotiated.
            let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("TLS 1.3")
                .with_no_client_auth()
                .with_single_cert(cert.to_vec(), key.clone_key())
                .expect("certificate");
            tls.max_early_data_size = u32::MAX;
            tls.alpn_protocols = vec![shake_proto::PHONE_ALPN.to_vec()];
            let crypto = QuicServerConfig::try_from(tls).expect("QUIC-capable suites");
            return quinn::ServerConfig::with_crypto(Arc::new(crypto));
        }
        Setup::Edge | Setup::EdgeOnLoop => {
            return shake_edge::service::phone_server_config_from(
                cert.to_vec(),
                key.clone_key(),
                &shake_edge::config::PhoneTransport::default(),
            )
            .expect("the edge's configuration");
        }
        Setup::EdgeOnLoopEagerKeys => {
            use rustls::crypto::aws_lc_rs::cipher_suite::*;
            let mut provider = (*shake_edge::service::phone_tls_provider()).clone();
            provider.cipher_suites = vec![
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ];
            return shake_edge::service::phone_server_config_with(
                Arc::new(provider),
                cert.to_vec(),
                key.clone_key(),
                &shake_edge::config::PhoneTransport::default(),
            )
            .expect("the edge's configuration, eager keys");
        }
        Setup::Tls { suites, kx, tickets } => {
            let mut provider = default_provider();
            provider.cipher_suites = suites.clone();
            provider.kx_groups = kx.clone();
            (provider, rustls::crypto::ring::Ticketer::new().expect("ticketer"), *tickets)
        }
        Setup::Library(crypto) => {
            let (provider, ticketer) = library(*crypto);
            (provider, ticketer, 2)
        }
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(cert.to_vec(), key.clone_key())
        .expect("certificate");
    tls.alpn_protocols = vec![shake_proto::PHONE_ALPN.to_vec()];
    tls.ignore_client_order = true;
    tls.ticketer = ticketer;
    tls.send_tls13_tickets = tickets;
    let crypto = QuicServerConfig::try_from(tls).expect("QUIC-capable suites");
    quinn::ServerConfig::with_crypto(Arc::new(crypto))
}

fn client_config(ca: &[CertificateDer<'static>], resume: bool) -> quinn::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone()).expect("CA");
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![shake_proto::PHONE_ALPN.to_vec()];
    tls.resumption = if resume {
        rustls::client::Resumption::in_memory_sessions(4096)
    } else {
        rustls::client::Resumption::disabled()
    };
    quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).expect("QUIC-capable client"),
    ))
}

/// A running server: its address, a way to stop it, and then the server thread's CPU
/// microseconds and the handshakes it completed.
type RunningServer = (SocketAddr, mpsc::Sender<()>, mpsc::Receiver<(u64, u64)>);

/// Runs `serve` on its own thread pinned to `server_core`: it sends its address, serves until
/// told to stop, and returns its thread's CPU microseconds and the handshakes it completed.
fn on_server_thread(
    server_core: usize,
    serve: impl FnOnce(mpsc::Sender<SocketAddr>, mpsc::Receiver<()>) -> (u64, u64) + Send + 'static,
) -> RunningServer {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sys::pin(0, server_core);
        let _ = done_tx.send(serve(addr_tx, stop_rx));
    });
    (addr_rx.recv().expect("server address"), stop_tx, done_rx)
}

/// A quinn/tokio server that closes each connection as its handshake completes.
fn spawn_server(config: quinn::ServerConfig, server_core: usize) -> RunningServer {
    on_server_thread(server_core, move |addr_tx, stop_rx| {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("address"))
                .expect("bind");
            addr_tx.send(endpoint.local_addr().expect("address")).expect("send address");
            let cpu_start = sys::thread_cpu_us();
            let mut handshakes = 0u64;
            loop {
                if stop_rx.try_recv().is_ok() {
                    break;
                }
                let Ok(Some(incoming)) =
                    tokio::time::timeout(Duration::from_millis(50), endpoint.accept()).await
                else {
                    continue;
                };
                if let Ok(conn) = incoming.await {
                    handshakes += 1;
                    conn.close(0u32.into(), b"");
                }
            }
            (sys::thread_cpu_us() - cpu_start, handshakes)
        })
    })
}

/// [`spawn_server`] on `shake-loop`: one thread drives the endpoint, closing each connection
/// once its handshake has completed and what that sent has gone out (the turn after), as the
/// quinn server does.
fn spawn_loop_server(config: quinn::ServerConfig, server_core: usize) -> RunningServer {
    on_server_thread(server_core, move |addr_tx, stop_rx| {
        let socket = std::net::UdpSocket::bind(("127.0.0.1", 0)).expect("bind");
        let mut driver = shake_loop::Driver::new(socket).expect("driver");
        driver.set_batch_delay(Duration::from_micros(shake_edge::config::DEFAULT_BATCH_DELAY_US));
        addr_tx.send(driver.local_addr().expect("address")).expect("send address");
        let mut endpoint = quinn::EndpointConfig::default();
        endpoint.cid_generator(|| Box::new(shake_loop::cid::WorkerCids::new(0)));
        let mut engine = shake_loop::Engine::new(endpoint, Some(Arc::new(config)));
        let mut shell = LoopHandshakes {
            stop: stop_rx,
            handshakes: 0,
            next_check: Instant::now(),
            connected: Vec::new(),
            to_close: Vec::new(),
        };
        let cpu_start = sys::thread_cpu_us();
        let _ = driver.run(&mut engine, &mut shell);
        (sys::thread_cpu_us() - cpu_start, shell.handshakes)
    })
}

/// The loop server's application: count each completed handshake and close the connection
/// on the next turn. (Closing at once would drop what completing the handshake queued,
/// `HANDSHAKE_DONE` and the session ticket, unsent: the client would have no ticket to resume
/// with, and a "resumed" handshake would be a full one.)
struct LoopHandshakes {
    stop: mpsc::Receiver<()>,
    handshakes: u64,
    next_check: Instant,
    /// Connected in this turn.
    connected: Vec<shake_loop::quinn_proto::ConnectionHandle>,
    /// Connected in the turn before, whose flush sent what the handshake's end queued.
    to_close: Vec<shake_loop::quinn_proto::ConnectionHandle>,
}

impl shake_loop::Handler for LoopHandshakes {
    fn incoming(
        &mut self,
        _now: Instant,
        _incoming: &shake_loop::quinn_proto::Incoming,
    ) -> shake_loop::IncomingDecision {
        shake_loop::IncomingDecision::Accept
    }

    fn event(
        &mut self,
        _now: Instant,
        ch: shake_loop::quinn_proto::ConnectionHandle,
        _conn: &mut shake_loop::quinn_proto::Connection,
        event: shake_loop::AppEvent,
    ) {
        if let shake_loop::AppEvent::Connected = event {
            self.handshakes += 1;
            self.connected.push(ch);
        }
    }
}

impl shake_loop::Shell for LoopHandshakes {
    fn turn(
        &mut self,
        now: Instant,
        engine: &mut shake_loop::Engine,
        _stats: &shake_loop::driver::DriverStats,
    ) -> shake_loop::Flow {
        for ch in self.to_close.drain(..) {
            engine.with_connection(ch, |conn| conn.close(now, 0u32.into(), bytes::Bytes::new()));
        }
        std::mem::swap(&mut self.to_close, &mut self.connected);
        if now >= self.next_check {
            self.next_check = now + Duration::from_millis(50);
            if self.stop.try_recv().is_ok() {
                return shake_loop::Flow::Stop;
            }
        }
        shake_loop::Flow::Continue
    }

    fn deadline(&mut self) -> Option<Instant> {
        Some(self.next_check)
    }
}

async fn hammer(
    addr: SocketAddr,
    client: quinn::ClientConfig,
    for_: Duration,
    concurrency: usize,
) -> u64 {
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("address")).expect("client");
    endpoint.set_default_client_config(client);
    // Prime the resumption cache (harmless without resumption).
    if let Ok(connecting) = endpoint.connect(addr, "localhost")
        && let Ok(conn) = connecting.await
    {
        let _ = conn.closed().await;
    }
    let end = Instant::now() + for_;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let endpoint = endpoint.clone();
        tasks.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < end {
                let Ok(connecting) = endpoint.connect(addr, "localhost") else { break };
                if let Ok(conn) = connecting.await {
                    done += 1;
                    let _ = tokio::time::timeout(Duration::from_millis(200), conn.closed()).await;
                }
            }
            done
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.unwrap_or(0);
    }
    total
}

fn measure(
    variant: &Variant,
    cert: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    ca: &[CertificateDer<'static>],
    resume: bool,
    for_: Duration,
    server_core: usize,
) -> (f64, f64) {
    let config = server_config(variant, cert, key);
    let (addr, stop, done) = match variant.setup {
        Setup::EdgeOnLoop | Setup::EdgeOnLoopEagerKeys => spawn_loop_server(config, server_core),
        _ => spawn_server(config, server_core),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    runtime.block_on(hammer(addr, client_config(ca, resume), for_, 32));
    let elapsed = started.elapsed();
    let _ = stop.send(());
    let (cpu_us, handshakes) = done.recv().unwrap_or((0, 0));
    let rate = handshakes as f64 / elapsed.as_secs_f64();
    let per = if handshakes > 0 { cpu_us as f64 / handshakes as f64 } else { 0.0 };
    (rate, per)
}

/// A fresh self-signed certificate for `localhost` with a key of `kind`.
fn certificate(kind: CertKind) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = match kind {
        CertKind::EcdsaP256 => rcgen::KeyPair::generate(),
        CertKind::Ed25519 => rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
    }
    .expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    (vec![cert.der().clone()], key)
}

/// Measures the first `count` variants (quinn's default and the edge are the first two): a
/// fresh certificate of its kind, `for_` per measurement, the server on `server_core` and the
/// clients on `client_core`.
pub fn run(
    for_: Duration,
    count: usize,
    server_core: usize,
    client_core: usize,
) -> Vec<HandshakeFigures> {
    let _ = sys::pin_process(std::process::id(), client_core);
    variants()
        .iter()
        .take(count)
        .map(|variant| {
            let (chain, key) = certificate(variant.cert);
            let (full_per_s, full_server_us) =
                measure(variant, &chain, &key, &chain, false, for_, server_core);
            let (resumed_per_s, resumed_server_us) =
                measure(variant, &chain, &key, &chain, true, for_, server_core);
            // In memory, on the server's core (nothing else runs there between measurements).
            let in_memory = std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let _ = sys::pin(0, server_core);
                        crate::handshake_in_memory::measure(
                            server_config(variant, &chain, &key),
                            &client_config(&chain, false),
                            for_,
                        )
                    })
                    .join()
                    .ok()
                    .flatten()
                    .map_or(0.0, |m| m.server_us)
            });
            HandshakeFigures {
                name: variant.name,
                full_per_s,
                full_server_us,
                resumed_per_s,
                resumed_server_us,
                full_in_memory_us: in_memory,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(name: &'static str, full_us: f64, resumed_us: f64) -> HandshakeFigures {
        HandshakeFigures {
            name,
            full_per_s: 1_000.0,
            full_server_us: full_us,
            resumed_per_s: 1_500.0,
            resumed_server_us: resumed_us,
            full_in_memory_us: full_us / 2.0,
        }
    }

    #[test]
    fn rates_per_core_and_the_ratio_come_from_server_cpu() {
        let results = [figures("quinn default", 200.0, 100.0), figures("shake-edge", 100.0, 50.0)];
        assert_eq!(results[1].full_per_busy_core(), 10_000.0);
        let (table, json) = table_and_figures(&results);
        assert!(table.contains("hs_ratio_vs_quinn_default 2.00"), "{table}");
        assert_eq!(json["edge_full_hs_per_s"], 10_000.0);
        assert_eq!(json["quinn_default_full_hs_per_s"], 5_000.0);
        assert_eq!(json["edge_resumed_hs_per_s"], 20_000.0);
        assert_eq!(json["hs_ratio_vs_quinn_default"], 2.0);
        assert_eq!(json["goal_met"], true);
        assert_eq!(json["edge_full_in_memory_us"], 50.0);
        assert_eq!(json["hs_ratio_in_memory"], 2.0);
        assert_eq!(json["variant_0"]["full_server_in_memory_us"], 100.0);
    }

    #[test]
    fn every_variant_completes_handshakes() {
        for figures in run(Duration::from_millis(150), usize::MAX, 0, 0) {
            assert!(figures.full_per_s > 0.0, "{figures:?}");
            assert!(figures.resumed_per_s > 0.0, "{figures:?}");
            assert!(figures.full_in_memory_us > 0.0, "{figures:?}");
        }
    }
}
