//! A UDP relay for fault tests (`shake-relay`): it listens on one loopback address, gives each
//! client its own upstream socket (so the server still sees one source per client, from the
//! client's own address on loopback), and drops, delays or cuts datagrams both ways by a
//! [`faults::FaultPlan`].
//!
//! Memory is bounded: at most `max_clients` clients (datagrams from more are dropped and
//! counted) and at most `queue` datagrams waiting out their delay per direction (more are
//! dropped and counted).

pub mod faults;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

use faults::{Fate, FaultPlan, Faults};

/// Largest datagram relayed (QUIC never sends more than this over loopback here).
const MAX_DATAGRAM: usize = 65_535;

/// The relay's settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where clients send.
    pub listen: SocketAddr,
    /// Where the relay forwards.
    pub upstream: SocketAddr,
    /// Faults applied in both directions.
    pub plan: FaultPlan,
    /// Most distinct clients.
    pub max_clients: usize,
    /// Most datagrams waiting per direction.
    pub queue: usize,
}

/// Is `addr` on this machine's loopback (127.0.0.0/8, ::1, or ::ffff:127.x)? The relay
/// serves nothing else: fault tests never aim traffic at, or take it from, another machine.
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// What the relay did, for its final JSON line.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct RelayReport {
    /// Datagrams sent on (due after their delay, and sent without an error).
    pub forwarded: u64,
    /// Dropped by random loss.
    pub lost: u64,
    /// Dropped in a cut window.
    pub cut: u64,
    /// Dropped because the delay queue was full.
    pub queue_full: u64,
    /// Dropped because there were too many clients.
    pub too_many_clients: u64,
    /// Distinct clients seen.
    pub clients: u64,
    /// Dropped because no upstream socket could be opened for the client (the first logged).
    pub upstream_failed: u64,
    /// Dropped because the send (either way) failed.
    pub send_failed: u64,
    /// Dropped because the client was not on loopback.
    pub not_loopback: u64,
}

/// One datagram waiting out its delay.
struct Pending {
    due: Instant,
    payload: Bytes,
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
}

/// Shared between the relay's tasks.
struct Shared {
    started: Instant,
    faults: Mutex<Faults>,
    queue_full: AtomicU64,
    too_many_clients: AtomicU64,
    clients: AtomicU64,
    sent: AtomicU64,
    upstream_failed: AtomicU64,
    send_failed: AtomicU64,
    not_loopback: AtomicU64,
}

impl Shared {
    /// Decides a datagram's fate and, when it is forwarded, queues it.
    fn relay(
        &self,
        queue: &mpsc::Sender<Pending>,
        payload: Bytes,
        socket: &Arc<UdpSocket>,
        to: Option<SocketAddr>,
    ) {
        let now = Instant::now();
        let fate = self.faults.lock().expect("faults lock").decide(now - self.started);
        if let Fate::Forward { at } = fate {
            let pending = Pending { due: self.started + at, payload, socket: socket.clone(), to };
            if queue.try_send(pending).is_err() {
                self.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A running relay.
pub struct Relay {
    /// The bound listening address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Relay {
    /// Binds and starts relaying on the current tokio runtime. Both addresses must be on
    /// loopback ([`is_loopback`]): another is refused (`InvalidInput`).
    pub async fn start(config: RelayConfig) -> std::io::Result<Self> {
        for (what, addr) in [("listen", config.listen), ("upstream", config.upstream)] {
            if !is_loopback(addr) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "{what} {addr} is not a loopback address: the relay is for tests on this machine"
                    ),
                ));
            }
        }
        let front = Arc::new(UdpSocket::bind(config.listen).await?);
        let addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            started: Instant::now(),
            faults: Mutex::new(Faults::new(config.plan.clone())),
            queue_full: AtomicU64::new(0),
            too_many_clients: AtomicU64::new(0),
            clients: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            upstream_failed: AtomicU64::new(0),
            send_failed: AtomicU64::new(0),
            not_loopback: AtomicU64::new(0),
        });
        let (to_server, to_server_rx) = mpsc::channel(config.queue.max(1));
        let (to_client, to_client_rx) = mpsc::channel(config.queue.max(1));
        tokio::spawn(deliver(to_server_rx, shared.clone()));
        tokio::spawn(deliver(to_client_rx, shared.clone()));
        tokio::spawn(accept_clients(front, config, shared.clone(), to_server, to_client));
        Ok(Self { addr, shared })
    }

    /// Counters so far.
    pub fn report(&self) -> RelayReport {
        let shared = &self.shared;
        let counts = shared.faults.lock().expect("faults lock").counts();
        RelayReport {
            forwarded: shared.sent.load(Ordering::Relaxed),
            lost: counts.lost,
            cut: counts.cut,
            queue_full: shared.queue_full.load(Ordering::Relaxed),
            too_many_clients: shared.too_many_clients.load(Ordering::Relaxed),
            clients: shared.clients.load(Ordering::Relaxed),
            upstream_failed: shared.upstream_failed.load(Ordering::Relaxed),
            send_failed: shared.send_failed.load(Ordering::Relaxed),
            not_loopback: shared.not_loopback.load(Ordering::Relaxed),
        }
    }
}

/// Reads from clients; the first datagram of a new client opens its upstream socket.
async fn accept_clients(
    front: Arc<UdpSocket>,
    config: RelayConfig,
    shared: Arc<Shared>,
    to_server: mpsc::Sender<Pending>,
    to_client: mpsc::Sender<Pending>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else { continue };
        // Only loopback clients (a wildcard listen is refused; this holds whatever the bind).
        if !is_loopback(client) {
            shared.not_loopback.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let upstream = match upstreams.get(&client) {
            Some(socket) => socket.clone(),
            None if upstreams.len() >= config.max_clients => {
                shared.too_many_clients.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            None => {
                let socket = match open_upstream(config.upstream, client).await {
                    Ok(socket) => socket,
                    Err(err) => {
                        // Counted, and said once a run: a relay that forwards nothing must
                        // not look like a link that is merely quiet.
                        if shared.upstream_failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("shake-relay: no upstream socket for {client}: {err}");
                        }
                        continue;
                    }
                };
                shared.clients.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve_replies(
                    socket.clone(),
                    front.clone(),
                    client,
                    shared.clone(),
                    to_client.clone(),
                ));
                upstreams.insert(client, socket.clone());
                socket
            }
        };
        shared.relay(&to_server, Bytes::copy_from_slice(&buf[..n]), &upstream, None);
    }
}

/// Opens a client's upstream socket. On loopback it binds the client's own address, so the
/// server's per-source limits see the clients' addresses rather than the relay's one.
async fn open_upstream(
    upstream: SocketAddr,
    client: SocketAddr,
) -> std::io::Result<Arc<UdpSocket>> {
    // A v4 client on a dual-stack listen arrives as ::ffff:127.x: its own address still.
    let client_ip = client.ip().to_canonical();
    let same_family = client_ip.is_ipv4() == upstream.is_ipv4();
    let local: SocketAddr = if same_family && client_ip.is_loopback() && upstream.ip().is_loopback()
    {
        (client_ip, 0).into()
    } else if upstream.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    Ok(Arc::new(socket))
}

/// Relays the server's replies to one client.
async fn serve_replies(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    shared: Arc<Shared>,
    to_client: mpsc::Sender<Pending>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok(n) = upstream.recv(&mut buf).await else { continue };
        shared.relay(&to_client, Bytes::copy_from_slice(&buf[..n]), &front, Some(client));
    }
}

/// Sends queued datagrams when they are due. Every datagram gets the same delay, so the queue
/// is in due order.
async fn deliver(mut queue: mpsc::Receiver<Pending>, shared: Arc<Shared>) {
    while let Some(pending) = queue.recv().await {
        tokio::time::sleep_until(pending.due).await;
        let sent = match pending.to {
            Some(to) => pending.socket.send_to(&pending.payload, to).await,
            None => pending.socket.send(&pending.payload).await,
        };
        let counter = if sent.is_ok() { &shared.sent } else { &shared.send_failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faults::Cut;
    use std::time::Duration;

    /// Slack for the relay's tasks to notice a cut has ended.
    const SETTLE: Duration = Duration::from_millis(20);

    async fn echo_server() -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    async fn relay(plan: FaultPlan, max_clients: usize) -> Relay {
        let upstream = echo_server().await;
        let listen = "127.0.0.1:0".parse().unwrap();
        Relay::start(RelayConfig { listen, upstream, plan, max_clients, queue: 1024 })
            .await
            .unwrap()
    }

    async fn ask(client: &UdpSocket, to: SocketAddr, what: &[u8]) -> Option<Vec<u8>> {
        client.send_to(what, to).await.unwrap();
        let mut buf = [0u8; 2048];
        let got = tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await;
        got.ok().map(|n| buf[..n.unwrap()].to_vec())
    }

    #[tokio::test]
    async fn datagrams_go_through_both_ways_after_the_delay() {
        let relay =
            relay(FaultPlan { delay: Duration::from_millis(30), ..FaultPlan::default() }, 8).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let sent = Instant::now();
        assert_eq!(ask(&client, relay.addr, b"shake").await.as_deref(), Some(&b"shake"[..]));
        assert!(sent.elapsed() >= Duration::from_millis(60), "30 ms each way");
        let report = relay.report();
        assert_eq!((report.forwarded, report.clients), (2, 1));
    }

    #[tokio::test]
    async fn a_cut_drops_both_ways_and_the_path_comes_back() {
        let cut = Cut { from: Duration::ZERO, length: Duration::from_millis(300) };
        let relay = relay(FaultPlan { cuts: vec![cut], ..FaultPlan::default() }, 8).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert_eq!(ask(&client, relay.addr, b"a").await, None);
        tokio::time::sleep(Duration::from_millis(300) + SETTLE).await;
        assert_eq!(ask(&client, relay.addr, b"b").await.as_deref(), Some(&b"b"[..]));
        assert_eq!(relay.report().cut, 1);
    }

    #[tokio::test]
    async fn the_server_sees_each_clients_own_loopback_address() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = server.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = server.recv_from(&mut buf).await {
                let _ = server.send_to(from.ip().to_string().as_bytes(), from).await;
            }
        });
        let listen = "127.0.0.1:0".parse().unwrap();
        let plan = FaultPlan::default();
        let relay = Relay::start(RelayConfig { listen, upstream, plan, max_clients: 8, queue: 64 })
            .await
            .unwrap();
        for address in ["127.1.2.3", "127.1.2.4"] {
            let client = UdpSocket::bind((address, 0)).await.unwrap();
            let seen = ask(&client, relay.addr, b"who").await.unwrap();
            assert_eq!(String::from_utf8(seen).unwrap(), address);
        }
    }

    #[tokio::test]
    async fn only_loopback_addresses_are_relayed() {
        let upstream = echo_server().await;
        let plan = FaultPlan::default();
        let start = |listen: &str, upstream: SocketAddr| {
            let config = RelayConfig {
                listen: listen.parse().unwrap(),
                upstream,
                plan: plan.clone(),
                max_clients: 8,
                queue: 8,
            };
            Relay::start(config)
        };
        for listen in ["0.0.0.0:0", "[::]:0"] {
            let refused = start(listen, upstream).await.unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput, "{listen}");
        }
        for elsewhere in ["192.0.2.1:443", "[2001:db8::1]:443"] {
            let refused = start("127.0.0.1:0", elsewhere.parse().unwrap()).await.unwrap_err();
            assert_eq!(refused.kind(), std::io::ErrorKind::InvalidInput, "{elsewhere}");
        }
        assert!(start("127.0.0.1:0", upstream).await.is_ok());
        assert!(is_loopback("[::ffff:127.0.0.5]:1".parse().unwrap()));
    }

    /// `forwarded` counts datagrams sent on, not those the delay queue had no room for.
    #[tokio::test]
    async fn datagrams_the_queue_drops_are_not_counted_as_forwarded() {
        let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let upstream = sink.local_addr().unwrap();
        let listen = "127.0.0.1:0".parse().unwrap();
        let plan = FaultPlan { delay: Duration::from_millis(100), ..FaultPlan::default() };
        let config = RelayConfig { listen, upstream, plan, max_clients: 8, queue: 1 };
        let relay = Relay::start(config).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..10 {
            client.send_to(b"x", relay.addr).await.unwrap();
        }
        let mut received = 0;
        let mut buf = [0u8; 16];
        while tokio::time::timeout(Duration::from_millis(400), sink.recv(&mut buf)).await.is_ok() {
            received += 1;
        }
        let report = relay.report();
        assert!(report.queue_full > 0, "{report:?}");
        assert_eq!(report.forwarded, received, "{report:?}");
        assert_eq!(report.forwarded + report.queue_full, 10, "{report:?}");
    }

    #[tokio::test]
    async fn clients_beyond_the_bound_are_dropped_and_counted() {
        let relay = relay(FaultPlan::default(), 1).await;
        let first = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let second = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        assert!(ask(&first, relay.addr, b"1").await.is_some());
        assert_eq!(ask(&second, relay.addr, b"2").await, None);
        assert_eq!((relay.report().clients, relay.report().too_many_clients), (1, 1));
    }
}
