//! A fixed-rate QUIC load for the reference servers ([`crate::quinn_echo`]): connections
//! spread over several client endpoints, each sending one small message at its own steady
//! rate (phases spread so the load is smooth), either as a datagram or on a fresh stream.
//! Counts what was sent and answered; the harness reads the counters to cut a window.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use shake_swarm::loop_phones::LoadCounters;
use tokio::time::Instant;

use crate::quinn_echo::EchoMode;

/// The load.
#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    /// Connections (phones).
    pub connections: usize,
    /// Messages per second per connection.
    pub rate_per_connection: f64,
    /// New connections per second while ramping up.
    pub connect_rate: f64,
    /// Client endpoints (UDP sockets) the connections share.
    pub endpoints: usize,
}

/// Size of a message: a shake datagram's size.
const MESSAGE: [u8; 14] = [0x07; 14];

/// Runs the load against `server` until `end`.
pub async fn run(
    server: SocketAddr,
    client: quinn::ClientConfig,
    mode: EchoMode,
    plan: LoadPlan,
    counters: Arc<LoadCounters>,
    end: Instant,
) -> std::io::Result<()> {
    let mut endpoints = Vec::with_capacity(plan.endpoints.max(1));
    for _ in 0..plan.endpoints.max(1) {
        let mut endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into())?;
        endpoint.set_default_client_config(client.clone());
        endpoints.push(endpoint);
    }
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / plan.rate_per_connection.max(1e-3));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..plan.connections {
        let at = start + Duration::from_secs_f64(i as f64 / plan.connect_rate.max(1.0));
        tokio::time::sleep_until(at).await;
        let endpoint = endpoints[i % endpoints.len()].clone();
        let counters = counters.clone();
        // Spread phases over the interval so the load is smooth, not in waves.
        let phase = interval.mul_f64((i as f64 * 0.618_034) % 1.0);
        tasks.spawn(async move {
            let Ok(connecting) = endpoint.connect(server, "localhost") else {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let Ok(conn) = connecting.await else {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            counters.connected.fetch_add(1, Ordering::Relaxed);
            let first = Instant::now() + phase;
            match mode {
                EchoMode::Datagram | EchoMode::LoopDatagram => {
                    datagrams(conn, first, interval, end, &counters).await
                }
                EchoMode::StreamPerMessage => streams(conn, first, interval, end, &counters).await,
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"done");
    }
    Ok(())
}

/// A steady tick from `first` every `interval`; a late tick delays the next ones rather than
/// bursting to catch up.
fn steady(first: Instant, interval: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval_at(first, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

async fn datagrams(
    conn: quinn::Connection,
    first: Instant,
    interval: Duration,
    end: Instant,
    counters: &LoadCounters,
) {
    let mut ticks = steady(first, interval);
    let message = Bytes::from_static(&MESSAGE);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if Instant::now() >= end {
                    break;
                }
                if conn.send_datagram(message.clone()).is_ok() {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            reply = conn.read_datagram() => {
                if reply.is_err() {
                    break;
                }
                counters.answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    conn.close(0u32.into(), b"done");
}

async fn streams(
    conn: quinn::Connection,
    first: Instant,
    interval: Duration,
    end: Instant,
    counters: &LoadCounters,
) {
    let mut ticks = steady(first, interval);
    let mut pending = tokio::task::JoinSet::new();
    loop {
        ticks.tick().await;
        if Instant::now() >= end {
            break;
        }
        let conn = conn.clone();
        counters.sent.fetch_add(1, Ordering::Relaxed);
        pending.spawn(async move {
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            send.write_all(&MESSAGE).await.ok()?;
            send.finish().ok()?;
            recv.read_to_end(64).await.ok()
        });
        while let Some(done) = pending.try_join_next() {
            if matches!(done, Ok(Some(_))) {
                counters.answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    conn.close(0u32.into(), b"done");
}
