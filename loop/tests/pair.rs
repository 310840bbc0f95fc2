//! Two engines in memory, one fake clock, datagrams moved by hand (as quinn-proto's own tests
//! do with `Pair`): the loop's behaviour without a socket or a thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, Connection, ConnectionError, ConnectionHandle, Dir, EndpointConfig, Incoming,
    ServerConfig, StreamEvent, TransportConfig, VarInt,
};
use shake_loop::cid::{CID_LEN, WorkerCids};
use shake_loop::{AppEvent, Engine, Handler, IncomingDecision};

struct Certs {
    server: ServerConfig,
    client: ClientConfig,
}

fn certs(idle: Duration) -> Certs {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let chain = vec![cert.cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut server = ServerConfig::with_single_cert(chain.clone(), key).unwrap();
    let mut transport = TransportConfig::default();
    transport.max_idle_timeout(Some(idle.try_into().unwrap()));
    server.transport_config(Arc::new(transport));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[0].clone()).unwrap();
    let client = ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    Certs { server, client }
}

/// What a handler saw.
#[derive(Default)]
struct Seen {
    connected: Vec<ConnectionHandle>,
    datagrams: Vec<Bytes>,
    stream_data: Vec<u8>,
    lost: Vec<ConnectionError>,
    incoming: usize,
}

/// Echoes datagrams and stream data back; refuses if told to.
#[derive(Default)]
struct Echo {
    seen: Seen,
    decision: Option<IncomingDecision>,
}

impl Handler for Echo {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        self.seen.incoming += 1;
        self.decision.unwrap_or(IncomingDecision::Accept)
    }

    fn event(
        &mut self,
        _now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        event: AppEvent,
    ) {
        match event {
            AppEvent::Connected => self.seen.connected.push(ch),
            AppEvent::DatagramReceived => {
                while let Some(datagram) = conn.datagrams().recv() {
                    self.seen.datagrams.push(datagram.clone());
                    conn.datagrams().send(datagram, true).unwrap();
                }
            }
            AppEvent::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                while let Some(id) = conn.streams().accept(Dir::Bi) {
                    drain_and_echo(conn, id, &mut self.seen.stream_data, true);
                }
            }
            AppEvent::Stream(StreamEvent::Readable { id }) => {
                drain_and_echo(conn, id, &mut self.seen.stream_data, true);
            }
            AppEvent::Lost(reason) => self.seen.lost.push(reason),
            _ => {}
        }
    }
}

/// Records what arrives and echoes nothing.
#[derive(Default)]
struct Client {
    seen: Seen,
}

impl Handler for Client {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Refuse
    }

    fn event(
        &mut self,
        _now: Instant,
        ch: ConnectionHandle,
        conn: &mut Connection,
        event: AppEvent,
    ) {
        match event {
            AppEvent::Connected => self.seen.connected.push(ch),
            AppEvent::DatagramReceived => {
                while let Some(datagram) = conn.datagrams().recv() {
                    self.seen.datagrams.push(datagram);
                }
            }
            AppEvent::Stream(StreamEvent::Readable { id }) => {
                drain_and_echo(conn, id, &mut self.seen.stream_data, false);
            }
            AppEvent::Lost(reason) => self.seen.lost.push(reason),
            _ => {}
        }
    }
}

fn drain_and_echo(
    conn: &mut Connection,
    id: quinn_proto::StreamId,
    into: &mut Vec<u8>,
    echo: bool,
) {
    let mut got = Vec::new();
    if let Ok(mut recv) = conn.recv_stream(id).read(true) {
        while let Ok(Some(chunk)) = recv.next(usize::MAX) {
            got.extend_from_slice(&chunk.bytes);
        }
        let _ = recv.finalize();
    }
    if echo && !got.is_empty() {
        conn.send_stream(id).write(&got).unwrap();
    }
    into.extend_from_slice(&got);
}

/// A client engine and a server engine joined by a perfect wire, and a fake clock.
struct Pair {
    now: Instant,
    client: Engine,
    server: Engine,
    client_addr: SocketAddr,
    server_addr: SocketAddr,
    delivered: u64,
}

impl Pair {
    fn new(server: ServerConfig) -> Self {
        let mut endpoint = EndpointConfig::default();
        endpoint.cid_generator(|| Box::new(WorkerCids::new(0)));
        Self {
            now: Instant::now(),
            client: Engine::new(EndpointConfig::default(), None),
            server: Engine::new(endpoint, Some(Arc::new(server))),
            client_addr: "10.0.0.1:4433".parse().unwrap(),
            server_addr: "10.0.0.2:443".parse().unwrap(),
            delivered: 0,
        }
    }

    /// Moves datagrams both ways until neither side has any; true if any moved.
    fn step(&mut self, client: &mut Client, server: &mut Echo) -> bool {
        let mut moved = false;
        loop {
            self.client.flush(self.now);
            self.server.flush(self.now);
            let to_server = take(&mut self.client);
            let to_client = take(&mut self.server);
            if to_server.is_empty() && to_client.is_empty() {
                return moved;
            }
            moved = true;
            for (destination, bytes) in to_server {
                assert_eq!(destination, self.server_addr);
                self.delivered += 1;
                self.server.handle_datagram(self.now, self.client_addr, None, None, bytes, server);
            }
            for (destination, bytes) in to_client {
                assert_eq!(destination, self.client_addr);
                self.delivered += 1;
                self.client.handle_datagram(self.now, self.server_addr, None, None, bytes, client);
            }
        }
    }

    /// Steps, and when quiet moves the clock to the next deadline, until `until` passes.
    fn drive(&mut self, client: &mut Client, server: &mut Echo, until: Duration) {
        let end = self.now + until;
        loop {
            self.step(client, server);
            let next = [self.client.next_timeout(), self.server.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    self.client.handle_timeouts(self.now, client);
                    self.server.handle_timeouts(self.now, server);
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
    }
}

fn take(engine: &mut Engine) -> Vec<(SocketAddr, BytesMut)> {
    let transmits = engine.transmits();
    let out = transmits
        .datagrams
        .iter()
        .map(|d| (d.destination, BytesMut::from(&transmits.data[d.range.clone()])))
        .collect();
    let n = transmits.datagrams.len();
    transmits.consume(n);
    out
}

#[test]
fn a_handshake_and_a_datagram_echo_with_no_socket_and_no_thread() {
    let certs = certs(Duration::from_secs(30));
    let mut pair = Pair::new(certs.server);
    let (mut client, mut server) = (Client::default(), Echo::default());
    let ch = pair.client.connect(pair.now, certs.client, pair.server_addr, "localhost").unwrap();
    pair.drive(&mut client, &mut server, Duration::from_millis(100));
    assert_eq!(client.seen.connected, vec![ch]);
    assert_eq!(server.seen.connected.len(), 1);
    assert_eq!(pair.server.connections(), 1);

    // One datagram out; the echo is queued on the same connection in the same pass, so one
    // exchange moves it there and back.
    pair.client.with_connection(ch, |conn| {
        conn.datagrams().send(Bytes::from_static(b"shake"), true).unwrap();
    });
    pair.step(&mut client, &mut server);
    assert_eq!(server.seen.datagrams, vec![Bytes::from_static(b"shake")]);
    assert_eq!(client.seen.datagrams, vec![Bytes::from_static(b"shake")]);
    assert!(client.seen.lost.is_empty() && server.seen.lost.is_empty());
}

#[test]
fn server_connection_ids_name_the_worker() {
    let certs = certs(Duration::from_secs(30));
    let mut pair = Pair::new(certs.server);
    let (mut client, mut server) = (Client::default(), Echo::default());
    let ch = pair.client.connect(pair.now, certs.client, pair.server_addr, "localhost").unwrap();
    pair.drive(&mut client, &mut server, Duration::from_millis(100));
    // The client's packets now carry the server's CIDs: worker 0, CID_LEN bytes.
    pair.client.with_connection(ch, |conn| {
        conn.datagrams().send(Bytes::from_static(b"x"), true).unwrap();
    });
    pair.client.flush(pair.now);
    let sent = take(&mut pair.client);
    assert!(!sent.is_empty());
    for (_, bytes) in &sent {
        assert_eq!(bytes[0] & 0x80, 0, "a short-header packet");
        assert_eq!(shake_loop::cid::owner(bytes, 4), Some(0));
    }
    assert_eq!(CID_LEN, 8);
}

#[test]
fn a_stream_carries_bytes_both_ways() {
    let certs = certs(Duration::from_secs(30));
    let mut pair = Pair::new(certs.server);
    let (mut client, mut server) = (Client::default(), Echo::default());
    let ch = pair.client.connect(pair.now, certs.client, pair.server_addr, "localhost").unwrap();
    pair.drive(&mut client, &mut server, Duration::from_millis(100));
    pair.client.with_connection(ch, |conn| {
        let id = conn.streams().open(Dir::Bi).unwrap();
        conn.send_stream(id).write(b"hello on a stream").unwrap();
    });
    pair.drive(&mut client, &mut server, Duration::from_millis(100));
    assert_eq!(server.seen.stream_data, b"hello on a stream");
    assert_eq!(client.seen.stream_data, b"hello on a stream");
}

#[test]
fn the_idle_timeout_closes_both_sides_and_the_connections_drain() {
    let certs = certs(Duration::from_secs(5));
    let mut pair = Pair::new(certs.server);
    let (mut client, mut server) = (Client::default(), Echo::default());
    pair.client.connect(pair.now, certs.client, pair.server_addr, "localhost").unwrap();
    pair.drive(&mut client, &mut server, Duration::from_millis(100));
    assert_eq!(pair.server.connections(), 1);
    // Nothing sent for a minute of fake time: both time out, then drain and leave the table.
    pair.drive(&mut client, &mut server, Duration::from_secs(60));
    assert!(
        matches!(client.seen.lost.as_slice(), [ConnectionError::TimedOut]),
        "{:?}",
        client.seen.lost
    );
    assert!(
        matches!(server.seen.lost.as_slice(), [ConnectionError::TimedOut]),
        "{:?}",
        server.seen.lost
    );
    assert_eq!((pair.client.connections(), pair.server.connections()), (0, 0));
    assert!(pair.server.timers().is_empty() && pair.client.timers().is_empty());
    assert_eq!(pair.server.stats().connections_drained, 1);
}

#[test]
fn a_refused_attempt_costs_no_connection() {
    let certs = certs(Duration::from_secs(30));
    let mut pair = Pair::new(certs.server);
    let mut client = Client::default();
    let mut server = Echo { decision: Some(IncomingDecision::Refuse), ..Echo::default() };
    pair.client.connect(pair.now, certs.client, pair.server_addr, "localhost").unwrap();
    pair.drive(&mut client, &mut server, Duration::from_secs(1));
    assert_eq!(server.seen.incoming, 1);
    assert_eq!(pair.server.connections(), 0);
    assert!(
        matches!(client.seen.lost.as_slice(), [ConnectionError::ConnectionClosed(close)] if close.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED),
        "{:?}",
        client.seen.lost
    );
}

#[test]
fn an_application_close_reaches_the_peer() {
    let certs = certs(Duration::from_secs(30));
    let mut pair = Pair::new(certs.server);
    let (mut client, mut server) = (Client::default(), Echo::default());
    let ch = pair.client.connect(pair.now, certs.client, pair.server_addr, "localhost").unwrap();
    pair.drive(&mut client, &mut server, Duration::from_millis(100));
    pair.client.with_connection(ch, |conn| {
        conn.close(pair.now, VarInt::from_u32(0x30), Bytes::from_static(b"bye"));
    });
    pair.drive(&mut client, &mut server, Duration::from_secs(10));
    assert!(
        matches!(server.seen.lost.as_slice(), [ConnectionError::ApplicationClosed(close)] if close.error_code == VarInt::from_u32(0x30)),
        "{:?}",
        server.seen.lost
    );
    assert_eq!((pair.client.connections(), pair.server.connections()), (0, 0));
}

/// A server sending datagrams cut from one scratch buffer to a client that never acknowledges
/// (its packets are all lost): once they queue, the queue holds copies, so the scratch buffer
/// is the sender's alone again and is reused in place; sent as slices, the queued ones would
/// keep buffer after buffer alive.
#[test]
fn datagrams_queued_for_a_peer_that_does_not_acknowledge_do_not_pin_the_scratch_buffer() {
    use shake_loop::scratch_datagrams::{Queued, ScratchDatagrams};

    let mut certs = certs(Duration::from_secs(30));
    let mut transport = TransportConfig::default();
    // The edge's send buffer for phones (`[phone_transport] datagram_send_buffer`).
    transport.datagram_send_buffer_size(4 * 1024);
    certs.server.transport_config(Arc::new(transport));
    let mut pair = Pair::new(certs.server);
    let (mut client, mut server) = (Client::default(), Echo::default());
    pair.client.connect(pair.now, certs.client, pair.server_addr, "localhost").unwrap();
    pair.drive(&mut client, &mut server, Duration::from_millis(100));
    let phone = server.seen.connected[0];

    const SCRATCH: usize = 64 * 1024;
    let mut scratch = BytesMut::with_capacity(SCRATCH);
    let mut sender = ScratchDatagrams::default();
    let (mut slices, mut copies) = (0, 0);
    // Ten-byte datagrams, 200 KB of them: the scratch buffer fills three times over.
    for n in 0..20_000u64 {
        if scratch.capacity() < 10 {
            scratch.reserve(SCRATCH);
        }
        scratch.extend_from_slice(&n.to_be_bytes());
        scratch.extend_from_slice(b"ok");
        let datagram = scratch.split().freeze();
        match pair.server.with_connection(phone, |conn| sender.send(conn, datagram)) {
            Some(Ok(Queued::Slice)) => slices += 1,
            Some(Ok(Queued::Copy)) => copies += 1,
            other => panic!("datagram {n}: {other:?}"),
        }
        // Sent, and lost on the way: the client never sees them, so never acknowledges.
        pair.server.flush(pair.now);
        drop(take(&mut pair.server));
    }
    assert!(
        scratch.try_reclaim(SCRATCH),
        "a queued datagram still holds part of the scratch buffer ({slices} slices)"
    );
    assert!(copies > 10_000, "the window filled and datagrams queued: {slices} slices");
    assert!(slices > 100, "datagrams went as slices while the window was open: {slices}");
}
