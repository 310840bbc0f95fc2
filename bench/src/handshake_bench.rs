//! `handshake`: full and resumed QUIC handshakes per second against one server thread, for
//! several TLS configurations of the ring provider (cipher-suite order, key-exchange group).
//! It is how the edge's TLS order was chosen; the server thread's CPU time per handshake is read
//! from `/proc/thread-self/stat`, so the client's work does not blur the figure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::SupportedCipherSuite;
use rustls::crypto::ring::{cipher_suite, default_provider, kx_group};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One TLS configuration under test.
#[derive(Debug, Clone)]
pub struct Variant {
    /// Short name for the table.
    pub name: &'static str,
    /// TLS 1.3 suites, in preference order.
    pub suites: Vec<SupportedCipherSuite>,
    /// Key-exchange groups, in preference order.
    pub kx: Vec<&'static dyn SupportedKxGroup>,
}

/// The configurations compared.
pub fn variants() -> Vec<Variant> {
    use cipher_suite::*;
    vec![
        Variant {
            name: "rustls default (AES-256 first, X25519)",
            suites: vec![
                TLS13_AES_256_GCM_SHA384,
                TLS13_AES_128_GCM_SHA256,
                TLS13_CHACHA20_POLY1305_SHA256,
            ],
            kx: vec![kx_group::X25519, kx_group::SECP256R1],
        },
        Variant {
            name: "AES-128 first, X25519",
            suites: vec![
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ],
            kx: vec![kx_group::X25519, kx_group::SECP256R1],
        },
        Variant {
            name: "AES-128 first, P-256",
            suites: vec![
                TLS13_AES_128_GCM_SHA256,
                TLS13_AES_256_GCM_SHA384,
                TLS13_CHACHA20_POLY1305_SHA256,
            ],
            kx: vec![kx_group::SECP256R1, kx_group::X25519],
        },
    ]
}

fn provider(variant: &Variant) -> Arc<CryptoProvider> {
    let mut provider = default_provider();
    provider.cipher_suites = variant.suites.clone();
    provider.kx_groups = variant.kx.clone();
    Arc::new(provider)
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
}

/// This thread's user plus system CPU time, microseconds (Linux).
fn thread_cpu_us() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    let ticks = fields.get(10).copied().unwrap_or(0) + fields.get(11).copied().unwrap_or(0);
    ticks * 10_000 // 100 ticks per second on Linux
}

fn server_config(
    variant: &Variant,
    cert: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> quinn::ServerConfig {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider(variant))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(cert.to_vec(), key.clone_key())
        .expect("certificate");
    tls.alpn_protocols = vec![shake_proto::PHONE_ALPN.to_vec()];
    tls.ignore_client_order = true;
    tls.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
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

/// Runs the server on its own thread; returns its address and a way to stop it and read the
/// CPU it used and handshakes it completed.
fn spawn_server(
    config: quinn::ServerConfig,
) -> (SocketAddr, mpsc::Sender<()>, mpsc::Receiver<(u64, u64)>) {
    let (addr_tx, addr_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().expect("address"))
                .expect("bind");
            addr_tx.send(endpoint.local_addr().expect("address")).expect("send address");
            let cpu_start = thread_cpu_us();
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
            let _ = done_tx.send((thread_cpu_us() - cpu_start, handshakes));
        });
    });
    (addr_rx.recv().expect("server address"), stop_tx, done_rx)
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
) -> (f64, f64) {
    let (addr, stop, done) = spawn_server(server_config(variant, cert, key));
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

/// Measures every variant: a fresh dev certificate (ECDSA P-256), `for_` per measurement.
pub fn run(for_: Duration) -> Vec<HandshakeFigures> {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    let cert = params.self_signed(&key).expect("certificate");
    let chain = vec![cert.der().clone()];
    let key = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    variants()
        .iter()
        .map(|variant| {
            let (full_per_s, full_server_us) = measure(variant, &chain, &key, &chain, false, for_);
            let (resumed_per_s, resumed_server_us) =
                measure(variant, &chain, &key, &chain, true, for_);
            HandshakeFigures {
                name: variant.name,
                full_per_s,
                full_server_us,
                resumed_per_s,
                resumed_server_us,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_moves_forward() {
        let before = thread_cpu_us();
        let mut x = 0u64;
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(thread_cpu_us() >= before, "{x}");
    }

    #[test]
    fn every_variant_completes_handshakes() {
        for figures in run(Duration::from_millis(150)) {
            assert!(figures.full_per_s > 0.0, "{figures:?}");
            assert!(figures.resumed_per_s > 0.0, "{figures:?}");
        }
    }
}
