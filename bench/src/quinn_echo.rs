//! The QUIC references the edge is measured against, each a server on one thread pinned to
//! one core, with the edge's own TLS configuration and transport limits:
//! - [`EchoMode::Datagram`]: a bare quinn (tokio) datagram echo, what quinn itself costs;
//! - [`EchoMode::StreamPerMessage`]: the naive design, one bidirectional stream per shake;
//! - [`EchoMode::LoopDatagram`]: the same datagram echo on `shake-loop` (quinn-proto driven
//!   from one thread, batched syscalls, no task per connection): what the edge's new I/O
//!   costs before any shake logic.

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
    /// Echo each datagram, on the `shake-loop` event loop.
    LoopDatagram,
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
pub struct EchoServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Box<dyn FnOnce() + Send>,
    cpu: mpsc::Receiver<u64>,
    cpu_now: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for EchoServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl EchoServer {
    /// Starts a server on its own thread pinned to `core`.
    pub fn start(mode: EchoMode, config: quinn::ServerConfig, core: usize) -> anyhow::Result<Self> {
        if mode == EchoMode::LoopDatagram {
            return Self::start_loop(config, core);
        }
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
                                        EchoMode::Datagram | EchoMode::LoopDatagram => {
                                            echo_datagrams(conn).await
                                        }
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
        let stop = Box::new(move || {
            let _ = stop.send(true);
        });
        Ok(Self { addr, stop, cpu, cpu_now })
    }

    /// The datagram echo on `shake-loop`, one pinned thread.
    fn start_loop(config: quinn::ServerConfig, core: usize) -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let socket = std::net::UdpSocket::bind(("127.0.0.1", 0))?;
        let mut driver = shake_loop::Driver::new(socket)?;
        // The edge's default, so the two loop rows differ only by what the edge does.
        driver.set_batch_delay(std::time::Duration::from_micros(
            shake_edge::config::DEFAULT_BATCH_DELAY_US,
        ));
        let addr = driver.local_addr()?;
        let waker = driver.waker();
        let stopping = Arc::new(AtomicBool::new(false));
        let (cpu_tx, cpu) = mpsc::channel();
        let cpu_now = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut shell = LoopEcho {
            stopping: stopping.clone(),
            cpu_now: cpu_now.clone(),
            started_cpu_us: 0,
            next_probe: std::time::Instant::now(),
        };
        std::thread::spawn(move || {
            let _ = sys::pin(0, core);
            shell.started_cpu_us = sys::thread_cpu_us();
            let mut endpoint = quinn::EndpointConfig::default();
            endpoint.cid_generator(|| Box::new(shake_loop::cid::WorkerCids::new(0)));
            let mut engine = shake_loop::Engine::new(endpoint, Some(Arc::new(config)));
            let _ = driver.run(&mut engine, &mut shell);
            let _ = cpu_tx.send(sys::thread_cpu_us() - shell.started_cpu_us);
        });
        let stop = Box::new(move || {
            stopping.store(true, Ordering::Relaxed);
            waker.wake();
        });
        Ok(Self { addr, stop, cpu, cpu_now })
    }

    /// Server CPU microseconds so far (updated every 100 ms).
    pub fn cpu_us(&self) -> u64 {
        self.cpu_now.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the server; returns its total CPU time, microseconds.
    pub fn stop(self) -> u64 {
        (self.stop)();
        self.cpu.recv().unwrap_or(0)
    }
}

/// The loop's echo: each datagram straight back on its connection, in the same pass.
struct LoopEcho {
    stopping: Arc<std::sync::atomic::AtomicBool>,
    cpu_now: Arc<std::sync::atomic::AtomicU64>,
    started_cpu_us: u64,
    next_probe: std::time::Instant,
}

impl shake_loop::Handler for LoopEcho {
    fn incoming(
        &mut self,
        _now: std::time::Instant,
        _incoming: &shake_loop::quinn_proto::Incoming,
    ) -> shake_loop::IncomingDecision {
        shake_loop::IncomingDecision::Accept
    }

    fn event(
        &mut self,
        _now: std::time::Instant,
        _ch: shake_loop::quinn_proto::ConnectionHandle,
        conn: &mut shake_loop::quinn_proto::Connection,
        event: shake_loop::AppEvent,
    ) {
        if let shake_loop::AppEvent::DatagramReceived = event {
            while let Some(datagram) = conn.datagrams().recv() {
                let _ = conn.datagrams().send(datagram, true);
            }
        }
    }
}

impl shake_loop::Shell for LoopEcho {
    fn turn(
        &mut self,
        now: std::time::Instant,
        _engine: &mut shake_loop::Engine,
        _stats: &shake_loop::driver::DriverStats,
    ) -> shake_loop::Flow {
        // The CPU probe, every 100 ms, as the quinn references publish theirs.
        if now >= self.next_probe {
            self.next_probe = now + std::time::Duration::from_millis(100);
            self.cpu_now.store(
                sys::thread_cpu_us() - self.started_cpu_us,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            shake_loop::Flow::Stop
        } else {
            shake_loop::Flow::Continue
        }
    }

    fn deadline(&mut self) -> Option<std::time::Instant> {
        Some(self.next_probe)
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
