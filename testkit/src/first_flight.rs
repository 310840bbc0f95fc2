//! A QUIC client that sends the first flight of a handshake and nothing after it: an attempt
//! the server starts and whose Finished never comes (a stalled or hostile client), and what
//! the server sends back, told apart as Retry or not.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// First flights sent from one UDP socket.
#[derive(Debug)]
pub struct FirstFlights {
    socket: UdpSocket,
    client: quinn_proto::Endpoint,
}

/// What came back to the first flights.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Answers {
    /// Retry packets (the server asked the address to validate itself first).
    pub retries: usize,
    /// Anything else (the server's handshake, a close).
    pub others: usize,
}

impl FirstFlights {
    /// A socket bound to `local` (a loopback address, port 0 for any).
    pub fn bind(local: &str) -> Self {
        let socket = UdpSocket::bind(local).expect("a UDP socket for first flights");
        let config = Arc::new(quinn_proto::EndpointConfig::default());
        Self { socket, client: quinn_proto::Endpoint::new(config, None, false, None) }
    }

    /// Sends the first flight of a new connection to `server` (certificate name `name`).
    pub fn send(&mut self, config: quinn::ClientConfig, server: SocketAddr, name: &str) {
        let now = Instant::now();
        let (_, mut conn) = self.client.connect(now, config, server, name).expect("a connect");
        let mut datagram = Vec::new();
        let transmit = conn.poll_transmit(now, 1, &mut datagram).expect("a client Initial");
        self.socket.send_to(&datagram[..transmit.size], server).expect("sending an Initial");
    }

    /// Whether anything came back within `within` (the server took a first flight).
    pub fn answered(&self, within: Duration) -> bool {
        self.socket.set_read_timeout(Some(within)).expect("a read timeout");
        self.socket.recv_from(&mut [0u8; 2048]).is_ok()
    }

    /// The datagrams that came back until none came for `quiet`.
    pub fn answers(&self, quiet: Duration) -> Answers {
        self.socket.set_read_timeout(Some(quiet)).expect("a read timeout");
        let mut answers = Answers::default();
        let mut buf = [0u8; 2048];
        while let Ok((n, _)) = self.socket.recv_from(&mut buf) {
            // A long header (first bit set) of type Retry (bits 5-4 both set), QUIC v1.
            if n > 0 && buf[0] & 0xf0 == 0xf0 {
                answers.retries += 1;
            } else {
                answers.others += 1;
            }
        }
        answers
    }
}
