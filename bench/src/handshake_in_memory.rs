//! `handshake`'s in-memory column: the server's time per full handshake with no socket and
//! no client beside it on the server's core. A client and a server `shake_loop::Engine` are
//! joined in memory under a fake clock (as `loop/tests/pair.rs` does); only the server
//! engine's calls are timed, by the wall clock of the one thread that runs both. What this
//! leaves out (system calls, the loop's waits, the kernel's UDP path) the socket figure keeps;
//! what it keeps is what a TLS or transport choice changes, with little of the machine's
//! run-to-run noise, so two server configurations compare closely within one run.
//!
//! Each handshake is the socket benchmark's: the server closes the connection as its
//! handshake completes, and the closing is timed too (the fake clock then moves past the
//! draining period, so no connection outlives its handshake).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shake_loop::quinn_proto::{Connection, ConnectionHandle, EndpointConfig, Incoming};
use shake_loop::{AppEvent, Engine, Handler, IncomingDecision};

/// What the in-memory run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InMemory {
    /// Full handshakes completed (both sides connected, the server's side closed and drained).
    pub handshakes: u64,
    /// The server engine's time per handshake, microseconds.
    pub server_us: f64,
}

/// Counts connections; the server side closes each as its handshake completes.
struct Side {
    connected: u64,
    close_on_connect: bool,
}

impl Handler for Side {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Accept
    }

    fn event(&mut self, now: Instant, _ch: ConnectionHandle, conn: &mut Connection, e: AppEvent) {
        if let AppEvent::Connected = e {
            self.connected += 1;
            if self.close_on_connect {
                conn.close(now, 0u32.into(), bytes::Bytes::new());
            }
        }
    }
}

/// The datagrams `engine` has queued, taken out.
fn take(engine: &mut Engine) -> Vec<BytesMut> {
    let transmits = engine.transmits();
    let out = transmits
        .datagrams
        .iter()
        .map(|d| BytesMut::from(&transmits.data[d.range.clone()]))
        .collect();
    let n = transmits.datagrams.len();
    transmits.consume(n);
    out
}

/// Full handshakes of `client` against `server` in memory for about `for_` (at least one),
/// timing the server's side. `None` if a handshake did not complete (a configuration the
/// client cannot talk to), or a connection outlived its handshake.
pub fn measure(
    server: quinn::ServerConfig,
    client: &quinn::ClientConfig,
    for_: Duration,
) -> Option<InMemory> {
    let client_addr: SocketAddr = "10.0.0.1:4433".parse().expect("address");
    let server_addr: SocketAddr = "10.0.0.2:443".parse().expect("address");
    let mut endpoint = EndpointConfig::default();
    endpoint.cid_generator(|| Box::new(shake_loop::cid::WorkerCids::new(0)));
    let mut server_engine = Engine::new(endpoint, Some(Arc::new(server)));
    let mut client_engine = Engine::new(EndpointConfig::default(), None);
    let mut server_side = Side { connected: 0, close_on_connect: true };
    let mut client_side = Side { connected: 0, close_on_connect: false };
    let mut now = Instant::now();
    let mut server_time = Duration::ZERO;
    let started = Instant::now();
    let mut handshakes = 0u64;
    while handshakes == 0 || started.elapsed() < for_ {
        client_engine.connect(now, client.clone(), server_addr, "localhost").ok()?;
        // Datagrams both ways until neither side sends any.
        loop {
            client_engine.flush(now);
            let to_server = take(&mut client_engine);
            let timed = Instant::now();
            for datagram in to_server.iter().cloned() {
                server_engine.handle_datagram(
                    now,
                    client_addr,
                    None,
                    None,
                    datagram,
                    &mut server_side,
                );
            }
            server_engine.flush(now);
            server_time += timed.elapsed();
            let to_client = take(&mut server_engine);
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
            for datagram in to_client {
                client_engine.handle_datagram(
                    now,
                    server_addr,
                    None,
                    None,
                    datagram,
                    &mut client_side,
                );
            }
        }
        handshakes += 1;
        if server_side.connected != handshakes || client_side.connected != handshakes {
            return None;
        }
        // Past every closing connection's draining period (a few PTOs of a microsecond RTT).
        now += Duration::from_secs(2);
        let timed = Instant::now();
        server_engine.handle_timeouts(now, &mut server_side);
        server_engine.flush(now);
        server_time += timed.elapsed();
        client_engine.handle_timeouts(now, &mut client_side);
        client_engine.flush(now);
        take(&mut server_engine);
        take(&mut client_engine);
    }
    if server_engine.connections() != 0 {
        return None;
    }
    Some(InMemory { handshakes, server_us: server_time.as_secs_f64() * 1e6 / handshakes as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    fn certificate() -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        (vec![cert.cert.der().clone()], key)
    }

    fn client_trusting(ca: &[CertificateDer<'static>]) -> quinn::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).expect("CA");
        quinn::ClientConfig::with_root_certificates(Arc::new(roots)).expect("client")
    }

    #[test]
    fn handshakes_complete_and_the_servers_time_is_counted() {
        let (chain, key) = certificate();
        let server = quinn::ServerConfig::with_single_cert(chain.clone(), key).expect("server");
        let measured =
            measure(server, &client_trusting(&chain), Duration::from_millis(50)).expect("done");
        assert!(measured.handshakes >= 1, "{measured:?}");
        // A full handshake signs and agrees a key: tens of microseconds at the very least.
        assert!(measured.server_us > 10.0 && measured.server_us < 100_000.0, "{measured:?}");
    }

    #[test]
    fn a_handshake_that_fails_gives_no_figure() {
        let (chain, key) = certificate();
        let (other_ca, _) = certificate();
        let server = quinn::ServerConfig::with_single_cert(chain, key).expect("server");
        assert_eq!(measure(server, &client_trusting(&other_ca), Duration::from_millis(50)), None);
    }
}
