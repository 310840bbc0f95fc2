//! The driver on a real loopback socket, against a client from a different driver (quinn on
//! tokio): handshakes, datagram echoes, many connections, and a stop from another thread.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quinn_proto::{Connection, ConnectionHandle, EndpointConfig, Incoming, ServerConfig};
use shake_loop::cid::WorkerCids;
use shake_loop::driver::DriverStats;
use shake_loop::{AppEvent, Driver, Engine, Flow, Handler, IncomingDecision, Shell};

struct EchoShell {
    stop: Arc<AtomicBool>,
    echoed: u64,
}

impl Handler for EchoShell {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Accept
    }

    fn event(
        &mut self,
        _now: Instant,
        _ch: ConnectionHandle,
        conn: &mut Connection,
        event: AppEvent,
    ) {
        if let AppEvent::DatagramReceived = event {
            while let Some(datagram) = conn.datagrams().recv() {
                self.echoed += 1;
                let _ = conn.datagrams().send(datagram, true);
            }
        }
    }
}

impl Shell for EchoShell {
    fn turn(&mut self, _now: Instant, _engine: &mut Engine, _stats: &DriverStats) -> Flow {
        if self.stop.load(Ordering::Relaxed) { Flow::Stop } else { Flow::Continue }
    }

    fn deadline(&mut self) -> Option<Instant> {
        None
    }
}

fn tls() -> (ServerConfig, quinn::ClientConfig) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let chain = vec![cert.cert.der().clone()];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server = ServerConfig::with_single_cert(chain.clone(), key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(chain[0].clone()).unwrap();
    let client = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
    (server, client)
}

/// How far past the end of its send a datagram's arrival stamp may read: the kernel's clock
/// mapped onto the monotonic one (the read 30 ms later tells a stamp from a read time).
const STAMP_SLACK: Duration = Duration::from_millis(5);

#[test]
fn a_quinn_client_is_served_by_the_loop_and_the_loop_stops_on_request() {
    let (server, client_config) = tls();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut driver = Driver::new(socket).unwrap();
    let addr: SocketAddr = driver.local_addr().unwrap();
    let waker = driver.waker();
    let stop = Arc::new(AtomicBool::new(false));
    let mut endpoint = EndpointConfig::default();
    endpoint.cid_generator(|| Box::new(WorkerCids::new(0)));
    let mut engine = Engine::new(endpoint, Some(Arc::new(server)));
    let mut shell = EchoShell { stop: stop.clone(), echoed: 0 };
    let server = std::thread::spawn(move || {
        driver.run(&mut engine, &mut shell).unwrap();
        (driver.stats(), shell.echoed, engine.connections())
    });

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let received = runtime.block_on(async move {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(client_config);
        let mut received = 0;
        // 20 connections, 25 datagrams each, every echo awaited.
        for _ in 0..20 {
            let conn = endpoint.connect(addr, "localhost").unwrap().await.unwrap();
            for i in 0..25u8 {
                conn.send_datagram(vec![i; 32].into()).unwrap();
                let echo = tokio::time::timeout(Duration::from_secs(5), conn.read_datagram())
                    .await
                    .unwrap()
                    .unwrap();
                assert_eq!(&echo[..], &[i; 32][..]);
                received += 1;
            }
            conn.close(0u32.into(), b"done");
        }
        endpoint.wait_idle().await;
        received
    });
    assert_eq!(received, 500);
    stop.store(true, Ordering::Relaxed);
    waker.wake();
    let (stats, echoed, _connections): (DriverStats, u64, usize) = server.join().unwrap();
    assert_eq!(echoed, 500);
    assert!(stats.datagrams_in >= 500 && stats.datagrams_out >= 500, "{stats:?}");
    assert_eq!(stats.send_failures, 0);
    let busy = stats.busy_share();
    assert!(busy > 0.0 && busy < 1.0, "busy share {busy}");
}

/// Stops once `datagrams_in` reaches `until` or `deadline` passes; counts nothing itself.
struct CountingShell {
    until: u64,
    deadline: Instant,
}

impl Handler for CountingShell {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Ignore
    }

    fn event(&mut self, _: Instant, _: ConnectionHandle, _: &mut Connection, _: AppEvent) {}
}

impl Shell for CountingShell {
    fn turn(&mut self, now: Instant, _engine: &mut Engine, stats: &DriverStats) -> Flow {
        if stats.datagrams_in >= self.until || now >= self.deadline {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn deadline(&mut self) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(10))
    }
}

/// The queue a worker hands another worker's datagrams through is bounded: with the owner not
/// running, exactly `FORWARD_QUEUE` wait for it and every one past that is dropped and
/// counted (as a lost packet would be), never queued.
#[test]
fn datagrams_for_a_stalled_worker_are_bounded_and_counted() {
    let sockets: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut drivers: Vec<Driver> = sockets.into_iter().map(|s| Driver::new(s).unwrap()).collect();
    shake_loop::driver::route_between(&mut drivers);
    let stalled = drivers.pop().unwrap();
    let mut driver = drivers.pop().unwrap();
    let addr = driver.local_addr().unwrap();
    const SENT: u64 = shake_loop::driver::FORWARD_QUEUE as u64 + 1_000;
    let mut shell =
        CountingShell { until: SENT, deadline: Instant::now() + Duration::from_secs(20) };
    let mut engine = Engine::new(EndpointConfig::default(), None);
    let server = std::thread::spawn(move || {
        driver.run(&mut engine, &mut shell).unwrap();
        driver.stats()
    });
    // Short-header packets whose connection ID names worker 1, paced so the socket buffer
    // keeps up with the receiving driver.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut packet = [0u8; 40];
    packet[0] = 0x40;
    packet[1] = 1;
    for n in 0..SENT {
        packet[2..10].copy_from_slice(&n.to_be_bytes());
        client.send_to(&packet, addr).unwrap();
        if n % 100 == 99 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let stats = server.join().unwrap();
    assert!(stats.datagrams_in > shake_loop::driver::FORWARD_QUEUE as u64, "{stats:?}");
    assert_eq!(stats.forwarded_out, shake_loop::driver::FORWARD_QUEUE as u64, "{stats:?}");
    assert_eq!(stats.forward_drops, stats.datagrams_in - stats.forwarded_out, "{stats:?}");

    // The owner, running again, takes them a turn's worth at a time (its timers, sends and
    // socket get their go between), and every one of them.
    let mut stalled = stalled;
    let mut shell = PerTurnIntake {
        last: 0,
        most: 0,
        turns: 0,
        deadline: Instant::now() + Duration::from_secs(20),
    };
    let mut engine = Engine::new(EndpointConfig::default(), None);
    stalled.run(&mut engine, &mut shell).unwrap();
    assert_eq!(stalled.stats().forwarded_in, shake_loop::driver::FORWARD_QUEUE as u64);
    assert!(shell.most <= 256, "{} taken in one turn", shell.most);
    assert!(shell.turns >= 16, "{} turns", shell.turns);
}

/// Counts the datagrams handed over from other workers that each turn took; stops once the
/// whole forward queue is taken.
struct PerTurnIntake {
    last: u64,
    most: u64,
    turns: u64,
    deadline: Instant,
}

impl Handler for PerTurnIntake {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Ignore
    }

    fn event(&mut self, _: Instant, _: ConnectionHandle, _: &mut Connection, _: AppEvent) {}
}

impl Shell for PerTurnIntake {
    fn turn(&mut self, now: Instant, _engine: &mut Engine, stats: &DriverStats) -> Flow {
        self.most = self.most.max(stats.forwarded_in - self.last);
        self.last = stats.forwarded_in;
        self.turns += 1;
        if stats.forwarded_in >= shake_loop::driver::FORWARD_QUEUE as u64 || now >= self.deadline {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn deadline(&mut self) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(10))
    }
}

/// The kernel stamps each datagram with its arrival, so the loop can tell how long datagrams
/// waited in the socket: one that waited 20 ms before it was read reads as at least that old.
#[test]
fn received_datagrams_carry_their_kernel_arrival_time() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    shake_loop::udp::enable_receive_timestamps(&socket).unwrap();
    socket.set_nonblocking(true).unwrap();
    // The kernel turns arrival stamping on for the first timestamping socket through deferred
    // work; a datagram that arrives before it runs is stamped when read instead.
    std::thread::sleep(Duration::from_millis(200));
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = std::time::SystemTime::now();
    sender.send_to(b"one", socket.local_addr().unwrap()).unwrap();
    sender.send_to(b"two", socket.local_addr().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let mut batch = shake_loop::udp::RecvBatch::default();
    let mut out = Vec::new();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stamps = Vec::new();
    while received < 2 && Instant::now() < deadline {
        received += batch.recv(&socket, &mut out).unwrap();
        stamps.extend(batch.received_at.iter().flatten().copied());
    }
    assert_eq!(received, 2);
    assert_eq!(stamps.len(), 2, "one arrival time per datagram");
    let now = std::time::SystemTime::now();
    for at in stamps {
        assert!(at >= before - Duration::from_millis(1), "stamped before it was sent");
        let waited = now.duration_since(at).unwrap();
        assert!(waited >= Duration::from_millis(20), "waited {waited:?}");
    }
    // Without the option, no stamps (and nothing breaks).
    let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
    plain.set_nonblocking(true).unwrap();
    sender.send_to(b"three", plain.local_addr().unwrap()).unwrap();
    let mut got = 0;
    while got == 0 && Instant::now() < deadline {
        got = batch.recv(&plain, &mut out).unwrap();
    }
    assert_eq!(got, 1);
    assert_eq!(batch.received_at, [None], "one entry per datagram, unstamped");
}

/// A datagram held on to (quinn-proto keeps one while a frame of it waits to be read) pins its
/// own slot only: the rest of its batch's buffers are reused, each datagram arrives intact,
/// and a datagram too big for a slot is cut to it.
#[test]
fn a_datagram_held_on_to_pins_only_its_own_slot() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = socket.local_addr().unwrap();
    let mut batch = shake_loop::udp::RecvBatch::default();
    let receive = |batch: &mut shake_loop::udp::RecvBatch, payloads: &[&[u8]]| {
        for payload in payloads {
            sender.send_to(payload, to).unwrap();
        }
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.len() < payloads.len() && Instant::now() < deadline {
            batch.recv(&socket, &mut out).unwrap();
        }
        out.into_iter().map(|(_, datagram)| datagram).collect::<Vec<_>>()
    };
    let first = receive(&mut batch, &[b"kept", b"dropped"]);
    assert_eq!(first.iter().map(|d| &d[..]).collect::<Vec<_>>(), [&b"kept"[..], b"dropped"]);
    let (kept_at, dropped_at) = (first[0].as_ptr(), first[1].as_ptr());
    let kept = first.into_iter().next().unwrap();
    let big = vec![9u8; shake_loop::udp::SLOT + 100];
    let second = receive(&mut batch, &[b"one", b"two", &big]);
    assert_eq!(&kept[..], b"kept", "a held datagram is never overwritten");
    assert_ne!(second[0].as_ptr(), kept_at, "the held datagram's slot was written again");
    assert_eq!(second[1].as_ptr(), dropped_at, "the slot of a dropped datagram is reused");
    assert_eq!((&second[0][..], &second[1][..]), (&b"one"[..], &b"two"[..]));
    assert_eq!(second[2].len(), shake_loop::udp::SLOT);
}

#[test]
fn datagrams_the_kernel_dropped_for_want_of_buffer_are_counted() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    // The smallest receive buffer the kernel allows holds a handful of datagrams.
    socket2::SockRef::from(&socket).set_recv_buffer_size(1).unwrap();
    shake_loop::udp::enable_drop_counts(&socket).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent = 200;
    for _ in 0..sent {
        sender.send_to(&[7; 600], socket.local_addr().unwrap()).unwrap();
    }
    let mut batch = shake_loop::udp::RecvBatch::default();
    let mut out = Vec::new();
    let mut drain = |batch: &mut shake_loop::udp::RecvBatch| {
        let mut received = 0;
        loop {
            match batch.recv(&socket, &mut out).unwrap() {
                0 => return received,
                n => received += n,
            }
        }
    };
    let received = drain(&mut batch);
    assert!(received > 0 && received < sent, "received {received} of {sent}");
    // The datagrams queued before the buffer filled carry no count; the drops ride on the
    // next datagram queued after them.
    assert_eq!(batch.kernel_drops, None);
    sender.send_to(b"after", socket.local_addr().unwrap()).unwrap();
    // On loopback it is queued within the send, unless the machine is busy enough to defer it.
    let (mut after, asked) = (0, Instant::now());
    while after == 0 && asked.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
        after = drain(&mut batch);
    }
    assert_eq!(after, 1);
    let drops = batch.kernel_drops.expect("the drop count came with the next datagram");
    assert_eq!(received + drops as usize, sent, "every datagram either received or counted");
}

/// Each turn either sleeps (held off the core, as a preempted or stolen turn would be) or
/// spins (working) for `hold`; stops after `turns` turns of each.
struct HoldingShell {
    hold: Duration,
    turns: u32,
    done: u32,
}

impl Handler for HoldingShell {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Ignore
    }

    fn event(&mut self, _: Instant, _: ConnectionHandle, _: &mut Connection, _: AppEvent) {}
}

impl Shell for HoldingShell {
    fn turn(&mut self, _now: Instant, _engine: &mut Engine, _stats: &DriverStats) -> Flow {
        let until = Instant::now() + self.hold;
        if self.done < self.turns {
            std::thread::sleep(self.hold);
        } else {
            let mut x = 0u64;
            while Instant::now() < until {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        self.done += 1;
        if self.done == 2 * self.turns { Flow::Stop } else { Flow::Continue }
    }

    fn deadline(&mut self) -> Option<Instant> {
        Some(Instant::now())
    }
}

/// Turns of 10 ms or more are accounted by the wall clock and by the CPU their thread used,
/// so a turn held off the core reads differently from one that worked.
#[test]
fn long_turns_tell_time_held_off_the_core_from_time_worked() {
    let mut driver = Driver::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    let mut engine = Engine::new(EndpointConfig::default(), None);
    let hold = Duration::from_millis(15);
    let mut shell = HoldingShell { hold, turns: 4, done: 0 };
    driver.run(&mut engine, &mut shell).unwrap();
    let stats = driver.stats();
    // 4 sleeping turns and 4 spinning ones, each at least 15 ms.
    assert!(stats.long_turn_wall_us >= 8 * 15_000, "{stats:?}");
    assert!(stats.turn_took[3] + stats.turn_took[4] >= 8, "{stats:?}");
    // Only the spinning turns used the CPU (on a loaded machine a spin may lose some of its
    // time to others, so the bounds are loose).
    assert!(stats.long_turn_cpu_us >= 4 * 5_000, "{stats:?}");
    assert!(stats.long_turn_cpu_us <= stats.long_turn_wall_us - 4 * 10_000, "{stats:?}");
}

/// Stops when told (through a flag, as a shell's inputs from other threads come) once it has
/// read `datagrams`; waits for nothing of its own but a fallback deadline far away.
struct WokenShell {
    stop: Arc<AtomicBool>,
    datagrams: u64,
    fallback: Instant,
}

impl Handler for WokenShell {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Ignore
    }

    fn event(&mut self, _: Instant, _: ConnectionHandle, _: &mut Connection, _: AppEvent) {}
}

impl Shell for WokenShell {
    fn turn(&mut self, now: Instant, _engine: &mut Engine, stats: &DriverStats) -> Flow {
        let told = self.stop.load(Ordering::Relaxed) && stats.datagrams_in >= self.datagrams;
        if told || now >= self.fallback { Flow::Stop } else { Flow::Continue }
    }

    fn deadline(&mut self) -> Option<Instant> {
        Some(self.fallback)
    }
}

/// Wake-ups from other threads end an idle wait, each once: the loop reads the waker only
/// when a wait says it is set, and a set waker left unread would make every later wait return
/// at once (a spinning loop). A run of busy turns (datagrams every turn, no wait between
/// them) in the middle does not lose a wake-up given during it.
#[test]
fn a_wake_up_ends_one_wait_and_the_loop_does_not_spin_on_it() {
    let mut driver = Driver::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    let addr = driver.local_addr().unwrap();
    let waker = driver.waker();
    let stop = Arc::new(AtomicBool::new(false));
    let fallback = Instant::now() + Duration::from_secs(20);
    let mut shell = WokenShell { stop: stop.clone(), datagrams: 400, fallback };
    let mut engine = Engine::new(EndpointConfig::default(), None);
    let server = std::thread::spawn(move || {
        driver.run(&mut engine, &mut shell).unwrap();
        driver.stats()
    });
    const WAKES: u64 = 5;
    for _ in 0..WAKES {
        std::thread::sleep(Duration::from_millis(20));
        waker.wake();
    }
    // Busy turns: junk datagrams (the endpoint drops them), with a wake-up among them.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for n in 0..400u32 {
        client.send_to(&[0x40, 7, 7, 7, 7, 7, 7, 7, 7], addr).unwrap();
        if n == 200 {
            waker.wake();
        }
        if n % 50 == 49 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // The loop stops once told and every datagram is read (a datagram the kernel dropped
    // leaves it to the fallback, which fails below, naming the stats).
    std::thread::sleep(Duration::from_millis(50));
    let before_stop = Instant::now();
    stop.store(true, Ordering::Relaxed);
    waker.wake();
    let stats = server.join().unwrap();
    assert!(Instant::now() < fallback, "the stop's wake-up was lost, or a datagram: {stats:?}");
    assert!(before_stop.elapsed() < Duration::from_secs(5), "{stats:?}");
    assert_eq!(stats.datagrams_in, 400, "{stats:?}");
    // Each wake-up and each receiving turn is a turn or two; a spinning loop makes thousands
    // in the 200 ms this test idles.
    assert!(stats.turns <= 2 * (WAKES + 2) + 2 * 400, "{stats:?}");
    assert!(stats.busy_share() < 0.5, "{stats:?}");
}

/// Records what the driver says of each datagram's arrival; stops after `until` datagrams.
struct ArrivalShell {
    until: u64,
    deadline: Instant,
    arrivals: Vec<Option<Instant>>,
    first_turn: Option<Instant>,
}

impl Handler for ArrivalShell {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Ignore
    }

    fn event(&mut self, _: Instant, _: ConnectionHandle, _: &mut Connection, _: AppEvent) {}
}

impl Shell for ArrivalShell {
    fn turn(&mut self, now: Instant, _engine: &mut Engine, stats: &DriverStats) -> Flow {
        self.first_turn.get_or_insert(now);
        let seen = self.arrivals.iter().filter(|a| a.is_some()).count() as u64;
        if (stats.datagrams_in >= self.until && seen >= self.until) || now >= self.deadline {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn deadline(&mut self) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(5))
    }

    fn arrived(&mut self, at: Option<Instant>) {
        self.arrivals.push(at);
    }
}

/// Datagrams that waited in the socket before the loop ran are reported to the shell as
/// arrived when the kernel received them, on the loop's clock, not when the loop read them;
/// with an emulated path delay, when the hold ends. `None` comes before the timers, so no
/// event outside a datagram's handling is timed from a stale arrival.
#[test]
fn the_shell_is_told_when_each_datagram_reached_the_socket() {
    for hold in [Duration::ZERO, Duration::from_millis(50)] {
        let mut driver = Driver::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
        driver.set_receive_delay(hold);
        let addr = driver.local_addr().unwrap();
        // Arrival stamping starts through the kernel's deferred work (see above).
        std::thread::sleep(Duration::from_millis(200));
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = Instant::now();
        sender.send_to(&[0x40; 40], addr).unwrap();
        sender.send_to(&[0x40; 40], addr).unwrap();
        // Loopback delivers within the send call: a stamp is within the two sends' window
        // (give or take the mapping of the kernel's clock), however long a busy machine held
        // this thread between them, and 30 ms before the read.
        let sent_by = Instant::now();
        std::thread::sleep(Duration::from_millis(30));
        let mut shell = ArrivalShell {
            until: 2,
            deadline: Instant::now() + Duration::from_secs(5),
            arrivals: Vec::new(),
            first_turn: None,
        };
        let mut engine = Engine::new(EndpointConfig::default(), None);
        driver.run(&mut engine, &mut shell).unwrap();
        let read = shell.first_turn.unwrap();
        assert!(read >= sent_by + Duration::from_millis(30));
        let stamped: Vec<Instant> = shell.arrivals.iter().flatten().copied().collect();
        assert_eq!(stamped.len(), 2, "{hold:?}: {:?}", shell.arrivals);
        for at in stamped {
            let from_send = at.saturating_duration_since(sent);
            assert!(at + Duration::from_millis(1) >= sent + hold, "{hold:?}: {from_send:?}");
            assert!(at < sent_by + hold + STAMP_SLACK, "{hold:?}: {from_send:?}");
        }
        assert_eq!(shell.arrivals.last(), Some(&None), "reset before the timers");
    }
}

/// Worker 1 of a pair: what it is told of each datagram handed over to it (the wait its
/// `admit` sees, the arrival `arrived` reports); it takes only the first datagram (payload
/// byte 2 is 0) and stops once `until` were handed over.
struct OwnerShell {
    until: u64,
    deadline: Instant,
    waits: Vec<Option<u64>>,
    arrivals: Vec<Instant>,
}

impl Handler for OwnerShell {
    fn incoming(&mut self, _now: Instant, _incoming: &Incoming) -> IncomingDecision {
        IncomingDecision::Ignore
    }

    fn event(&mut self, _: Instant, _: ConnectionHandle, _: &mut Connection, _: AppEvent) {}
}

impl Shell for OwnerShell {
    fn turn(&mut self, now: Instant, _engine: &mut Engine, stats: &DriverStats) -> Flow {
        if stats.forwarded_in >= self.until || now >= self.deadline {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn deadline(&mut self) -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(5))
    }

    fn admit(&mut self, _now: Instant, waited_us: Option<u64>, datagram: &[u8]) -> bool {
        self.waits.push(waited_us);
        datagram[2] == 0
    }

    fn arrived(&mut self, at: Option<Instant>) {
        self.arrivals.extend(at);
    }
}

/// A datagram another worker received for a connection of ours (a phone whose NAT rebound its
/// port lands on another worker's socket) is shed and timed like one of our own: the owner's
/// shell sees how long it has waited since it reached the other worker's socket, and when.
#[test]
fn a_datagram_handed_over_keeps_its_wait_and_its_arrival() {
    let sockets: Vec<UdpSocket> = (0..2).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    let mut drivers: Vec<Driver> = sockets.into_iter().map(|s| Driver::new(s).unwrap()).collect();
    shake_loop::driver::route_between(&mut drivers);
    let mut owner = drivers.pop().unwrap();
    let mut receiver = drivers.pop().unwrap();
    let addr = receiver.local_addr().unwrap();
    // Arrival stamping starts through the kernel's deferred work (see above).
    std::thread::sleep(Duration::from_millis(200));
    // Two short-header packets whose connection ID names worker 1, sent to worker 0's socket
    // 30 ms before worker 0 reads it.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sent = Instant::now();
    for n in 0..2u8 {
        let mut packet = [0u8; 40];
        packet[0] = 0x40;
        packet[1] = 1;
        packet[2] = n;
        client.send_to(&packet, addr).unwrap();
    }
    let sent_by = Instant::now();
    std::thread::sleep(Duration::from_millis(30));
    let deadline = Instant::now() + Duration::from_secs(5);
    let owner_thread = std::thread::spawn(move || {
        let mut shell = OwnerShell { until: 2, deadline, waits: Vec::new(), arrivals: Vec::new() };
        let mut engine = Engine::new(EndpointConfig::default(), None);
        owner.run(&mut engine, &mut shell).unwrap();
        (shell, owner.stats())
    });
    let mut shell = CountingShell { until: 2, deadline };
    let mut engine = Engine::new(EndpointConfig::default(), None);
    receiver.run(&mut engine, &mut shell).unwrap();
    assert_eq!(receiver.stats().forwarded_out, 2);
    let (shell, stats) = owner_thread.join().unwrap();
    assert_eq!(stats.forwarded_in, 2, "{stats:?}");
    assert_eq!(shell.waits.len(), 2, "{:?}", shell.waits);
    for waited in &shell.waits {
        let waited = waited.expect("the wait of a stamped datagram is known to its owner");
        assert!((30_000..2_000_000).contains(&waited), "waited {waited} us");
    }
    assert_eq!(stats.shed, 1, "the shell refused the second: {stats:?}");
    assert_eq!(shell.arrivals.len(), 1, "the one taken is timed from its arrival");
    let from_send = shell.arrivals[0].saturating_duration_since(sent);
    assert!(shell.arrivals[0] + Duration::from_millis(1) >= sent, "arrived before it was sent");
    assert!(shell.arrivals[0] < sent_by + STAMP_SLACK, "arrived {from_send:?} after it was sent");
}

/// A buffer asked past the kernel's cap (`net.core.rmem_max`) reads back as what was granted,
/// not as the doubled figure the kernel reports, which had passed for a grant of the whole
/// request; one under the cap reads back as asked.
#[test]
fn buffers_read_back_as_granted() {
    let cap: usize =
        std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let granted = || shake_loop::driver::granted_buffers(&socket).unwrap();
    socket2::SockRef::from(&socket).set_recv_buffer_size(cap + 65_536).unwrap();
    assert_eq!(granted().0, cap, "asked {} with a cap of {cap}", cap + 65_536);
    let under = (cap / 2).max(8_192);
    socket2::SockRef::from(&socket).set_recv_buffer_size(under).unwrap();
    assert_eq!(granted().0, under);
}
