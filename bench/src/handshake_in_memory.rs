//! `handshake`'s in-memory column: the server's time per full handshake with no socket and
//! no client beside it on the server's core. A client and a server `shake_loop::Engine` are
//! joined in memory under a fake clock (as `loop/tests/pair.rs` does); only the server
//! engine's calls are timed, by the wall clock of the one thread that runs both. What this
//! leaves out (system calls, the loop's waits, the kernel's UDP path) the socket figure keeps;
//! what it keeps is what a TLS or transport choice changes, with little of the machine's
//! run-to-run noise, so two server configurations compare closely within one run.
//!
//! Each handshake is the socket benchmark's: the server closes the connection once its
//! handshake has completed and what completing it sent (`HANDSHAKE_DONE`, the session ticket)
//! has gone out, and the closing is timed too (the fake clock then moves past the
//! draining period, so no connection outlives its handshake). The first handshake is not
//! timed: it warms the code up. Full handshakes only: resumed ones are left to the socket
//! figure (whether a handshake resumed is not visible here: the server pads its first flight
//! to 1,200 bytes either way, and quinn hides rustls's own account of it).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use shake_loop::quinn_proto::{Connection, ConnectionHandle, EndpointConfig, Incoming};
use shake_loop::{AppEvent, Engine, Handler, IncomingDecision};

/// What the in-memory run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InMemory {
    /// Handshakes timed (both sides connected, the server's side closed and drained).
    pub handshakes: u64,
    /// The server engine's time per handshake, microseconds.
    pub server_us: f64,
}

/// Counts connections; the server side closes each after the flush that follows its
/// handshake's completion (closing at once would drop the session ticket unsent).
struct Side {
    connected: u64,
    close_after_flush: bool,
    to_close: Vec<ConnectionHandle>,
}

impl Handler for Side {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Accept
    }

    fn event(&mut self, _now: Instant, ch: ConnectionHandle, _conn: &mut Connection, e: AppEvent) {
        if let AppEvent::Connected = e {
            self.connected += 1;
            if self.close_after_flush {
                self.to_close.push(ch);
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

/// Full handshakes of `client` (which must not resume) against `server` in memory for about
/// `for_` (at least one timed, after one that is not), timing the server's side. `None` if a handshake did not complete (a configuration the
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
    let mut server_side = Side { connected: 0, close_after_flush: true, to_close: Vec::new() };
    let mut client_side = Side { connected: 0, close_after_flush: false, to_close: Vec::new() };
    let mut now = Instant::now();
    let mut server_time = Duration::ZERO;
    let started = Instant::now();
    // The warm-up is handshake 0, not timed.
    let mut handshakes = 0u64;
    let mut timed_handshakes = 0u64;
    while timed_handshakes == 0 || started.elapsed() < for_ {
        let timing = handshakes > 0;
        let mut server_time_of_this = Duration::ZERO;
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
            let mut to_client = take(&mut server_engine);
            // What completing a handshake sent is out: now its connection closes.
            if !server_side.to_close.is_empty() {
                for ch in server_side.to_close.drain(..) {
                    server_engine.with_connection(ch, |conn| {
                        conn.close(now, 0u32.into(), bytes::Bytes::new());
                    });
                }
                server_engine.flush(now);
                to_client.extend(take(&mut server_engine));
            }
            server_time_of_this += timed.elapsed();
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
        if timing {
            timed_handshakes += 1;
        }
        // Past every closing connection's draining period (a few PTOs of a microsecond RTT).
        now += Duration::from_secs(2);
        let timed = Instant::now();
        server_engine.handle_timeouts(now, &mut server_side);
        server_engine.flush(now);
        server_time_of_this += timed.elapsed();
        if timing {
            server_time += server_time_of_this;
        }
        client_engine.handle_timeouts(now, &mut client_side);
        client_engine.flush(now);
        take(&mut server_engine);
        take(&mut client_engine);
    }
    if server_engine.connections() != 0 {
        return None;
    }
    Some(InMemory {
        handshakes: timed_handshakes,
        server_us: server_time.as_secs_f64() * 1e6 / timed_handshakes as f64,
    })
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

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A QUIC server with `chain` and `key`, on ring.
    fn server_with(
        chain: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'static>,
    ) -> quinn::ServerConfig {
        let tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_no_client_auth()
            .with_single_cert(chain.to_vec(), key.clone_key())
            .expect("certificate");
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("QUIC server");
        quinn::ServerConfig::with_crypto(Arc::new(quic))
    }

    fn client_trusting(ca: &[CertificateDer<'static>]) -> quinn::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).expect("CA");
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.resumption = rustls::client::Resumption::disabled();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC client");
        quinn::ClientConfig::new(Arc::new(quic))
    }

    #[test]
    fn handshakes_complete_and_the_servers_time_is_counted() {
        let (chain, key) = certificate();
        let measured =
            measure(server_with(&chain, &key), &client_trusting(&chain), Duration::from_millis(50))
                .expect("done");
        assert!(measured.handshakes >= 1, "{measured:?}");
        // A full handshake signs and agrees a key: tens of microseconds at the very least.
        assert!(measured.server_us > 10.0 && measured.server_us < 100_000.0, "{measured:?}");
    }

    #[test]
    fn a_handshake_that_fails_gives_no_figure() {
        let (chain, key) = certificate();
        let (other_ca, _) = certificate();
        let client = client_trusting(&other_ca);
        assert_eq!(measure(server_with(&chain, &key), &client, Duration::from_millis(50)), None);
    }
}
