//! The two QUIC references the edge is measured against, each a quinn server on one thread
//! pinned to one core, with the edge's own TLS configuration and transport limits:
//! - [`EchoMode::Datagram`]: a bare datagram echo, what quinn itself costs per message;
//! - [`EchoMode::StreamPerMessage`]: the naive design, one bidirectional stream per shake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shake_edge::config::PhoneTransport;

use crate::sys;

/// Which reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoMode {
    /// Echo each datagram.
    Datagram,
    /// Accept a stream per message, read it to the end, answer, finish.
    StreamPerMessage,
}

/// Streams a naive client may have open at once per connection.
pub const NAIVE_STREAMS: u32 = 64;

/// The server configuration: the edge's, with room for many streams in the naive mode.
pub fn server_config(
    mode: EchoMode,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<quinn::ServerConfig> {
    let settings = PhoneTransport::default();
    let mut config = shake_edge::service::phone_server_config_from(chain, key, &settings)?;
    if mode == EchoMode::StreamPerMessage {
        let mut transport = shake_edge::service::phone_transport(&settings)?;
        transport.max_concurrent_bidi_streams(NAIVE_STREAMS.into());
        config.transport_config(Arc::new(transport));
    }
    Ok(config)
}

/// A running reference server.
#[derive(Debug)]
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    cpu: mpsc::Receiver<u64>,
    cpu_now: Arc<std::sync::atomic::AtomicU64>,
}

impl EchoServer {
    /// Starts a server on its own thread pinned to `core`.
    pub fn start(mode: EchoMode, config: quinn::ServerConfig, core: usize) -> anyhow::Result<Self> {
        let (addr_tx, addr_rx) = mpsc::channel();
        let (cpu_tx, cpu) = mpsc::channel();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let cpu_now = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let cpu_probe = cpu_now.clone();
        std::thread::spawn(move || {
            let _ = sys::pin(0, core);
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(err) => return addr_tx.send(Err(anyhow::Error::from(err))),
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let endpoint = match quinn::Endpoint::server(config, ([127, 0, 0, 1], 0).into()) {
                    Ok(endpoint) => endpoint,
                    Err(err) => return addr_tx.send(Err(err.into())),
                };
                let _ = addr_tx.send(endpoint.local_addr().map_err(Into::into));
                let started = sys::thread_cpu_us();
                // The CPU probe: published every 100 ms so the harness can read a window.
                tokio::task::spawn_local(async move {
                    loop {
                        cpu_probe.store(
                            sys::thread_cpu_us() - started,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                });
                loop {
                    tokio::select! {
                        incoming = endpoint.accept() => {
                            let Some(incoming) = incoming else { break };
                            tokio::task::spawn_local(async move {
                                if let Ok(conn) = incoming.await {
                                    match mode {
                                        EchoMode::Datagram => echo_datagrams(conn).await,
                                        EchoMode::StreamPerMessage => echo_streams(conn).await,
                                    }
                                }
                            });
                        }
                        _ = stopped.changed() => break,
                    }
                }
                endpoint.close(0u32.into(), b"done");
                let _ = cpu_tx.send(sys::thread_cpu_us() - started);
                Ok(())
            })
        });
        let addr = addr_rx.recv()??;
        Ok(Self { addr, stop, cpu, cpu_now })
    }

    /// Server CPU microseconds so far (updated every 100 ms).
    pub fn cpu_us(&self) -> u64 {
        self.cpu_now.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the server; returns its total CPU time, microseconds.
    pub fn stop(self) -> u64 {
        let _ = self.stop.send(true);
        self.cpu.recv().unwrap_or(0)
    }
}

async fn echo_datagrams(conn: quinn::Connection) {
    while let Ok(datagram) = conn.read_datagram().await {
        let _ = conn.send_datagram(datagram);
    }
}

async fn echo_streams(conn: quinn::Connection) {
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::task::spawn_local(async move {
            if let Ok(request) = recv.read_to_end(64).await {
                let _ = send.write_all(&request).await;
                let _ = send.finish();
            }
        });
    }
}
