//! The physical floor: one UDP request and one UDP reply over loopback, moved in
//! `recvmmsg`/`sendmmsg` batches of up to 64 by a server thread pinned to one core, driven by
//! a client thread pinned to another that keeps a window of requests outstanding. Nothing a
//! QUIC server can do for one shake costs less than this pair of packets.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::stats::{per, rate_per_busy_core};
use crate::sys::{self, BATCH, Batch};

/// Size of a request and of its reply: about a shake datagram in a QUIC short-header packet.
pub const PAYLOAD: usize = 48;

/// What one floor run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloorFigures {
    /// Request/reply pairs completed.
    pub pairs: u64,
    /// Wall-clock seconds measured.
    pub seconds: f64,
    /// Server CPU time over the run, microseconds.
    pub server_cpu_us: u64,
}

impl FloorFigures {
    /// Pairs per second, as driven.
    pub fn pairs_per_s(&self) -> f64 {
        self.pairs as f64 / self.seconds.max(1e-9)
    }

    /// Server CPU microseconds per pair.
    pub fn cpu_us_per_pair(&self) -> f64 {
        per(self.server_cpu_us as f64, self.pairs)
    }

    /// Share of the run the server core was busy.
    pub fn server_busy(&self) -> f64 {
        self.server_cpu_us as f64 / (self.seconds * 1e6).max(1e-9)
    }

    /// Pairs per second one fully busy server core would move: the floor's maximum rate.
    pub fn max_pairs_per_s(&self) -> f64 {
        rate_per_busy_core(self.cpu_us_per_pair())
    }
}

fn socket() -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let s2 = socket2::SockRef::from(&socket);
    s2.set_recv_buffer_size(8 << 20)?;
    s2.set_send_buffer_size(8 << 20)?;
    socket.set_read_timeout(Some(Duration::from_millis(20)))?;
    Ok(socket)
}

/// Echoes every datagram back to its sender until `stop`; returns its CPU time and pairs.
fn serve(socket: &UdpSocket, core: usize, stop: &AtomicBool) -> (u64, u64) {
    let _ = sys::pin(0, core);
    let cpu_start = sys::thread_cpu_us();
    let mut batch = Batch::default();
    let mut pairs = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if batch.recv(socket).is_ok() {
            pairs += batch.send(socket).unwrap_or(0) as u64;
        }
    }
    (sys::thread_cpu_us() - cpu_start, pairs)
}

/// Keeps up to `window` requests outstanding against `server` for `duration`.
fn drive(
    server: SocketAddr,
    core: usize,
    duration: Duration,
    window: usize,
) -> std::io::Result<u64> {
    let _ = sys::pin(0, core);
    let socket = socket()?;
    let mut out = Batch::default();
    let mut back = Batch::default();
    let request = [0x5au8; PAYLOAD];
    let (mut outstanding, mut answered) = (0usize, 0u64);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        out.clear();
        while outstanding + out.len() < window && out.len() < BATCH {
            out.push(&request, server);
        }
        outstanding += out.send(&socket)?;
        match back.recv(&socket) {
            Ok(n) => {
                answered += n as u64;
                outstanding = outstanding.saturating_sub(n);
            }
            // Nothing within the read timeout: whatever was outstanding was dropped.
            Err(_) => outstanding = 0,
        }
    }
    Ok(answered)
}

/// Runs the floor: server on `server_core`, client on `client_core`.
pub fn run(
    server_core: usize,
    client_core: usize,
    duration: Duration,
    window: usize,
) -> std::io::Result<FloorFigures> {
    let server_socket = socket()?;
    let addr = server_socket.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || serve(&server_socket, server_core, &stop))
    };
    let started = Instant::now();
    let answered = std::thread::spawn(move || drive(addr, client_core, duration, window))
        .join()
        .map_err(|_| std::io::Error::other("floor client panicked"))??;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (server_cpu_us, _echoed) =
        server.join().map_err(|_| std::io::Error::other("floor server panicked"))?;
    Ok(FloorFigures { pairs: answered, seconds, server_cpu_us })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_rates_follow_from_the_counts() {
        let f = FloorFigures { pairs: 1_000_000, seconds: 2.0, server_cpu_us: 1_000_000 };
        assert_eq!(f.pairs_per_s(), 500_000.0);
        assert_eq!(f.cpu_us_per_pair(), 1.0);
        assert_eq!(f.server_busy(), 0.5);
        assert_eq!(f.max_pairs_per_s(), 1_000_000.0);
        let none = FloorFigures { pairs: 0, seconds: 1.0, server_cpu_us: 0 };
        assert_eq!((none.cpu_us_per_pair(), none.max_pairs_per_s()), (0.0, 0.0));
    }

    #[test]
    fn a_short_run_moves_pairs_and_counts_server_cpu() {
        let f = run(0, 0, Duration::from_millis(200), 128).unwrap();
        assert!(f.pairs > 100, "{f:?}");
        assert!(f.server_cpu_us > 0, "{f:?}");
    }
}
