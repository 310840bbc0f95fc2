//! The loop's state machine, sans-IO: one `quinn_proto::Endpoint`, its `Connection`s in a
//! table indexed by connection handle, every connection's timer in one [`Timers`], and the
//! datagrams to send in one queue. Time is an argument; no socket, no thread, no task.
//!
//! Call order, once per batch of received datagrams (the I/O driver in `driver` does this, the
//! tests do it by hand):
//! 1. [`Engine::handle_datagram`] for each datagram: the endpoint routes it, new connections go
//!    through [`Handler::incoming`] before any cryptography, and application events come out
//!    of the connection to [`Handler::event`] at once, with the connection in hand, so the
//!    handler's answer is queued on the same connection in the same pass;
//! 2. [`Engine::handle_timeouts`] for the deadlines that passed;
//! 3. anything else the shell has for connections, through [`Engine::with_connection`];
//! 4. [`Engine::flush`]: every connection touched since the last flush is asked for its
//!    datagrams (`poll_transmit`), which go to the send queue, and its deadline is re-read
//!    (it moves after almost every call);
//! 5. the shell sends [`Engine::transmits`] and sleeps until [`Engine::next_timeout`] or the
//!    next datagram.
//!
//! Handler events are delivered with the engine borrowed: a handler acts on the connection it
//! is given, and on others only between passes (step 3).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, ConnectError, Connection, ConnectionError, ConnectionHandle, DatagramEvent,
    EcnCodepoint, Endpoint, EndpointConfig, Incoming, ServerConfig, StreamEvent,
};

use crate::timers::Timers;

/// What to do with a connection attempt, decided from its first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingDecision {
    /// Go on with the handshake.
    Accept,
    /// Close it at once with CONNECTION_REFUSED.
    Refuse,
    /// Ask the client to prove its address first (a Retry packet).
    Retry,
    /// Drop it silently (the client will resend).
    Ignore,
}

/// An application event on one connection.
#[derive(Debug)]
pub enum AppEvent {
    /// The handshake completed.
    Connected,
    /// Datagrams are waiting (`conn.datagrams().recv()`).
    DatagramReceived,
    /// Datagrams that were blocked went out.
    DatagramsUnblocked,
    /// A stream event (opened, readable, writable, finished, stopped...).
    Stream(StreamEvent),
    /// The connection is closed (by either side, or timed out); it lingers until drained, and
    /// nothing more comes from it.
    Lost(ConnectionError),
}

/// The application side of a loop.
pub trait Handler {
    /// A new connection attempt.
    fn incoming(&mut self, now: Instant, incoming: &Incoming) -> IncomingDecision;
    /// An event on connection `ch`, which is `conn`.
    fn event(&mut self, now: Instant, ch: ConnectionHandle, conn: &mut Connection, event: AppEvent);
    /// An attempt [`Handler::incoming`] accepted is now connection `ch` (before any of its
    /// events).
    fn accepted(&mut self, _now: Instant, _ch: ConnectionHandle) {}
    /// An attempt [`Handler::incoming`] accepted failed before it became a connection (a stale
    /// or unauthenticated first packet).
    fn accept_failed(&mut self, _now: Instant) {}
}

/// One datagram to send, in [`Transmits::data`] at `range`.
#[derive(Debug, Clone)]
pub struct OutDatagram {
    /// Where to.
    pub destination: SocketAddr,
    /// Which local address to send from, when the socket has several.
    pub src_ip: Option<IpAddr>,
    /// ECN bits.
    pub ecn: Option<EcnCodepoint>,
    /// Bytes in [`Transmits::data`].
    pub range: std::ops::Range<usize>,
}

/// The datagrams waiting to be sent, packed in one buffer.
#[derive(Debug, Default)]
pub struct Transmits {
    /// Every datagram's bytes.
    pub data: Vec<u8>,
    /// The datagrams, oldest first.
    pub datagrams: Vec<OutDatagram>,
    /// Datagrams dropped because the queue was full (QUIC recovers them as losses).
    pub dropped: u64,
}

impl Transmits {
    /// Most datagrams held before new ones are dropped.
    pub const MAX: usize = 4096;

    fn push(&mut self, transmit: &quinn_proto::Transmit, bytes: &[u8]) {
        // A transmit may hold several datagrams of `segment_size` (GSO); the engine asks for
        // one at a time, but split defensively.
        let size = transmit.segment_size.unwrap_or(transmit.size).max(1);
        for chunk in bytes[..transmit.size].chunks(size) {
            if self.datagrams.len() >= Self::MAX {
                self.dropped += 1;
                continue;
            }
            let start = self.data.len();
            self.data.extend_from_slice(chunk);
            self.datagrams.push(OutDatagram {
                destination: transmit.destination,
                src_ip: transmit.src_ip,
                ecn: transmit.ecn,
                range: start..self.data.len(),
            });
        }
    }

    /// Forgets the first `n` datagrams (they were sent).
    pub fn consume(&mut self, n: usize) {
        if n >= self.datagrams.len() {
            self.datagrams.clear();
            self.data.clear();
            return;
        }
        let offset = self.datagrams[n].range.start;
        self.datagrams.drain(..n);
        self.data.drain(..offset);
        for datagram in &mut self.datagrams {
            datagram.range = datagram.range.start - offset..datagram.range.end - offset;
        }
    }

    /// Nothing to send.
    pub fn is_empty(&self) -> bool {
        self.datagrams.is_empty()
    }
}

/// Counters of one engine.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams queued to send.
    pub datagrams_out: u64,
    /// Connections accepted (server) or started (client).
    pub connections_opened: u64,
    /// Connections drained and removed.
    pub connections_drained: u64,
    /// Accepts that failed (stale, or the first packet did not authenticate).
    pub accept_failures: u64,
}

/// The most datagrams one connection may queue in one flush; a connection with more stays
/// touched and goes on at the next flush, so one busy connection cannot starve the rest.
const PER_CONNECTION_PER_FLUSH: usize = 32;

/// A QUIC endpoint and its connections, driven by hand.
pub struct Engine {
    endpoint: Endpoint,
    server: Option<Arc<ServerConfig>>,
    conns: Vec<Option<Connection>>,
    timers: Timers,
    touched: Vec<usize>,
    is_touched: Vec<bool>,
    live: usize,
    scratch: Vec<u8>,
    transmits: Transmits,
    stats: EngineStats,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("connections", &self.live)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine; `server` is `None` for a client-only endpoint.
    pub fn new(config: EndpointConfig, server: Option<Arc<ServerConfig>>) -> Self {
        Self {
            endpoint: Endpoint::new(Arc::new(config), server.clone(), true, None),
            server,
            conns: Vec::new(),
            timers: Timers::default(),
            touched: Vec::new(),
            is_touched: Vec::new(),
            live: 0,
            scratch: Vec::with_capacity(1500),
            transmits: Transmits::default(),
            stats: EngineStats::default(),
        }
    }

    /// Connections held (established, handshaking or draining).
    pub fn connections(&self) -> usize {
        self.live
    }

    /// Counters so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// The datagrams waiting to be sent.
    pub fn transmits(&mut self) -> &mut Transmits {
        &mut self.transmits
    }

    /// The earliest deadline of any connection.
    pub fn next_timeout(&mut self) -> Option<Instant> {
        self.timers.earliest()
    }

    /// Live timers (one per connection that has a deadline).
    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    /// Starts a connection to `remote` (a client).
    pub fn connect(
        &mut self,
        now: Instant,
        config: ClientConfig,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<ConnectionHandle, ConnectError> {
        let (ch, conn) = self.endpoint.connect(now, config, remote, server_name)?;
        self.insert(ch, conn);
        Ok(ch)
    }

    /// Runs `f` on connection `ch` (if it is still here) and marks it for the next flush.
    pub fn with_connection<T>(
        &mut self,
        ch: ConnectionHandle,
        f: impl FnOnce(&mut Connection) -> T,
    ) -> Option<T> {
        let conn = self.conns.get_mut(ch.0)?.as_mut()?;
        let out = f(conn);
        self.touch(ch.0);
        Some(out)
    }

    /// One received datagram.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
        handler: &mut impl Handler,
    ) {
        self.stats.datagrams_in += 1;
        self.scratch.clear();
        match self.endpoint.handle(now, remote, local_ip, ecn, data, &mut self.scratch) {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(conn) = self.conns.get_mut(ch.0).and_then(Option::as_mut) {
                    conn.handle_event(event);
                    self.drive(ch, now, handler);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                self.on_incoming(now, incoming, handler);
            }
            Some(DatagramEvent::Response(transmit)) => {
                self.queue(&transmit);
            }
            None => {}
        }
    }

    fn on_incoming(&mut self, now: Instant, incoming: Incoming, handler: &mut impl Handler) {
        self.scratch.clear();
        match handler.incoming(now, &incoming) {
            IncomingDecision::Accept => {
                match self.endpoint.accept(incoming, now, &mut self.scratch, self.server.clone()) {
                    Ok((ch, conn)) => {
                        self.insert(ch, conn);
                        handler.accepted(now, ch);
                        self.drive(ch, now, handler);
                    }
                    Err(err) => {
                        self.stats.accept_failures += 1;
                        handler.accept_failed(now);
                        if let Some(response) = err.response {
                            self.queue(&response);
                        }
                    }
                }
            }
            IncomingDecision::Refuse => {
                let transmit = self.endpoint.refuse(incoming, &mut self.scratch);
                self.queue(&transmit);
            }
            IncomingDecision::Retry => match self.endpoint.retry(incoming, &mut self.scratch) {
                Ok(transmit) => self.queue(&transmit),
                // Already retried once: the address is validated; it cannot be asked again.
                Err(err) => {
                    let transmit = self.endpoint.refuse(err.into_incoming(), &mut self.scratch);
                    self.queue(&transmit);
                }
            },
            IncomingDecision::Ignore => self.endpoint.ignore(incoming),
        }
    }

    /// Every connection whose deadline is at or before `now`.
    pub fn handle_timeouts(&mut self, now: Instant, handler: &mut impl Handler) {
        while let Some(index) = self.timers.pop_expired(now) {
            let ch = ConnectionHandle(index);
            if let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) {
                conn.handle_timeout(now);
                self.drive(ch, now, handler);
            }
        }
    }

    /// Collects the datagrams of every connection touched since the last flush, and their new
    /// deadlines.
    pub fn flush(&mut self, now: Instant) {
        let touched = std::mem::take(&mut self.touched);
        let mut again = Vec::new();
        for index in &touched {
            self.is_touched[*index] = false;
        }
        for index in touched.iter().copied() {
            let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else { continue };
            let mut sent = 0;
            while sent < PER_CONNECTION_PER_FLUSH {
                self.scratch.clear();
                let Some(transmit) = conn.poll_transmit(now, 1, &mut self.scratch) else { break };
                self.stats.datagrams_out += 1;
                self.transmits.push(&transmit, &self.scratch);
                sent += 1;
            }
            if sent == PER_CONNECTION_PER_FLUSH {
                again.push(index);
            }
            self.settle(ConnectionHandle(index));
        }
        for index in again {
            self.touch(index);
        }
        self.touched_recycle(touched);
    }

    fn touched_recycle(&mut self, mut old: Vec<usize>) {
        // Keep the larger allocation for next time.
        if old.capacity() > self.touched.capacity() {
            old.clear();
            old.append(&mut self.touched);
            self.touched = old;
        }
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: Connection) {
        if ch.0 >= self.conns.len() {
            self.conns.resize_with(ch.0 + 1, || None);
            self.is_touched.resize(ch.0 + 1, false);
        }
        // invariant: quinn-proto hands out a slab's vacant key, never a live one.
        debug_assert!(self.conns[ch.0].is_none());
        self.conns[ch.0] = Some(conn);
        self.live += 1;
        self.stats.connections_opened += 1;
        self.touch(ch.0);
    }

    fn touch(&mut self, index: usize) {
        if !self.is_touched[index] {
            self.is_touched[index] = true;
            self.touched.push(index);
        }
    }

    /// Application events, then endpoint events, of one connection; it is flushed later.
    /// (Application events first: a connection that timed out is drained at once, and its
    /// `Lost` must still reach the handler.)
    fn drive(&mut self, ch: ConnectionHandle, now: Instant, handler: &mut impl Handler) {
        let Some(conn) = self.conns.get_mut(ch.0).and_then(Option::as_mut) else { return };
        while let Some(event) = conn.poll() {
            let event = match event {
                quinn_proto::Event::HandshakeDataReady => continue,
                quinn_proto::Event::Connected => AppEvent::Connected,
                quinn_proto::Event::ConnectionLost { reason } => AppEvent::Lost(reason),
                quinn_proto::Event::Stream(event) => AppEvent::Stream(event),
                quinn_proto::Event::DatagramReceived => AppEvent::DatagramReceived,
                quinn_proto::Event::DatagramsUnblocked => AppEvent::DatagramsUnblocked,
            };
            handler.event(now, ch, conn, event);
        }
        if !self.settle(ch) {
            self.touch(ch.0);
        }
    }

    /// Hands the connection's endpoint events to the endpoint (and any answer back), re-reads
    /// its deadline, and removes it once drained. True if it was removed.
    fn settle(&mut self, ch: ConnectionHandle) -> bool {
        let Some(conn) = self.conns.get_mut(ch.0).and_then(Option::as_mut) else { return true };
        while let Some(event) = conn.poll_endpoint_events() {
            let drained = event.is_drained();
            if let Some(answer) = self.endpoint.handle_event(ch, event) {
                conn.handle_event(answer);
            }
            if drained {
                self.conns[ch.0] = None;
                self.timers.set(ch.0, None);
                self.live -= 1;
                self.stats.connections_drained += 1;
                return true;
            }
        }
        self.timers.set(ch.0, conn.poll_timeout());
        false
    }

    fn queue(&mut self, transmit: &quinn_proto::Transmit) {
        self.stats.datagrams_out += 1;
        self.transmits.push(transmit, &self.scratch);
    }
}
