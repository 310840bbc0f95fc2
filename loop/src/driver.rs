//! The I/O driver: one thread, one UDP socket, one [`Engine`]. Each turn receives a batch,
//! lets the engine route it (the handler answers inline), fires due timers, lets the
//! [`Shell`] act on what came from outside the loop, flushes every touched connection and
//! sends the lot with `sendmmsg`. Between turns it waits for datagrams, the next deadline or a
//! wake-up from another thread, except after a turn that received datagrams: under load the
//! next ones are most likely there already, and the wait would be a system call for nothing.
//!
//! The driver measures its own busy share: time between waking and going back to wait, over
//! wall time. It is the loop's load, cheap to read, and what overload control watches.
//!
//! Several drivers can share one port (`SO_REUSEPORT`, one per core). The kernel picks a
//! socket by the datagram's addresses, so after a phone's NAT rebinds its port the datagram may
//! reach a worker that does not hold the connection. [`route_between`] joins drivers so that
//! each hands such a datagram to the owner its connection ID names ([`crate::cid`]) before its
//! endpoint sees it (which would otherwise answer with a stateless reset and kill the
//! connection).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::engine::{Engine, Handler};
use crate::udp::{self, BATCH, RecvBatch, Waker};

/// What the shell says after its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Flush what is queued and stop.
    Stop,
}

/// The application around a loop: the handler of connection events, plus what comes from
/// outside the loop (other threads, its own timers).
pub trait Shell: Handler {
    /// Once a turn, after the datagrams and timers: act on connections for outside inputs
    /// (through [`Engine::with_connection`]) and say whether to go on. `stats` are the
    /// driver's counters so far (for the shell's metrics).
    fn turn(&mut self, now: Instant, engine: &mut Engine, stats: &DriverStats) -> Flow;
    /// The shell's own next deadline, if any (the loop wakes for it).
    fn deadline(&mut self) -> Option<Instant>;
    /// Whether to take a datagram read from the socket after it waited there `waited_us`
    /// (`None` where the socket does not timestamp; for a datagram another worker handed
    /// over, its wait since it reached that worker's socket), before the endpoint sees it: a
    /// datagram refused here costs no decryption and no answer, the cheapest way to shed load.
    /// Counted in [`DriverStats::shed`]. The default takes every datagram.
    fn admit(&mut self, _now: Instant, _waited_us: Option<u64>, _datagram: &[u8]) -> bool {
        true
    }
    /// The datagram the endpoint is about to see reached the socket at `at`: the kernel's
    /// receive timestamp on the loop's clock (for a datagram held for an emulated path delay,
    /// the end of the hold; for one another worker handed over, its arrival in that worker's
    /// socket), `None` where it is not known (no timestamp). The handler events that datagram
    /// causes come before the next call, so a shell can time an answer from its arrival rather
    /// than from the turn, which a busy loop or its gather may start well after. `None` again
    /// before the timers run.
    fn arrived(&mut self, _at: Option<Instant>) {}
    /// The receive buffer the socket should have now, bytes as for `SO_RCVBUF` (`None`: the
    /// one it was made with). Read once a turn; applied when it changes. A shell bounds the
    /// kernel's queue with it under overload: a datagram queued longer than the peer's probe
    /// timeout is as good as lost, and a full buffer loses the fresh ones instead.
    fn receive_buffer(&mut self) -> Option<usize> {
        None
    }
}

/// Counters of one driver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DriverStats {
    /// Turns of the loop.
    pub turns: u64,
    /// `recvmmsg` calls that returned datagrams.
    pub recv_calls: u64,
    /// Datagrams received.
    pub datagrams_in: u64,
    /// `sendmmsg` rounds.
    pub send_calls: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams the kernel refused to send (dropped, as lost packets).
    pub send_failures: u64,
    /// Datagrams handed to the worker that owns their connection.
    pub forwarded_out: u64,
    /// Datagrams handed to this worker by another.
    pub forwarded_in: u64,
    /// Datagrams that could not be handed over (the owner's queue was full).
    pub forward_drops: u64,
    /// Datagrams the engine dropped because its send queue was full (QUIC recovers them as
    /// losses).
    pub transmit_drops: u64,
    /// Time spent working (not waiting), microseconds.
    pub busy_us: u64,
    /// Datagrams by how long they waited in the socket between the kernel's receive
    /// timestamp and the loop reading them: under 250 us, 250 us to 1 ms, 1 to 10 ms, 10 to
    /// 100 ms, 100 ms or more (see [`QUEUE_WAIT_BOUNDS_US`]; zero where the socket does not
    /// timestamp).
    pub queue_wait: [u64; 5],
    /// Total of those waits, microseconds.
    pub queue_wait_us: u64,
    /// Turns by how long they worked, in the same buckets: a long turn is time every
    /// datagram arriving meanwhile waits.
    pub turn_took: [u64; 5],
    /// Wall time of the turns that took [`LONG_TURN_US`] or more, microseconds.
    pub long_turn_wall_us: u64,
    /// CPU time the loop's thread used over those turns (from the end of the turn before,
    /// so its wait's few system calls are in), microseconds. Far less than
    /// [`Self::long_turn_wall_us`] means the turns were held off the core, not working.
    pub long_turn_cpu_us: u64,
    /// Times the guest's scheduler took the core from the thread in those turns: a turn held
    /// off the core with none of these was held by something the guest does not schedule
    /// (interrupts, or the hypervisor running another guest on the core).
    pub long_turn_preemptions: u64,
    /// Time spent in all, microseconds.
    pub wall_us: u64,
    /// Datagrams the shell refused before the endpoint saw them ([`Shell::admit`]).
    pub shed: u64,
    /// Datagrams the kernel dropped on the socket because its receive buffer was full
    /// (`SO_RXQ_OVFL`), as far as the received datagrams told.
    pub kernel_drops: u64,
    /// Datagrams dropped because the emulated path delay's queue was full.
    pub delay_drops: u64,
}

impl DriverStats {
    /// Adds the counters of a loop that ran beside this one: every count summed, the wall
    /// time the longer of the two (the loops ran at the same time, so the busy share of the
    /// sum is in cores).
    pub fn add(&mut self, other: &DriverStats) {
        let sum = |a: &mut u64, b: u64| *a += b;
        sum(&mut self.turns, other.turns);
        sum(&mut self.recv_calls, other.recv_calls);
        sum(&mut self.datagrams_in, other.datagrams_in);
        sum(&mut self.send_calls, other.send_calls);
        sum(&mut self.datagrams_out, other.datagrams_out);
        sum(&mut self.send_failures, other.send_failures);
        sum(&mut self.forwarded_out, other.forwarded_out);
        sum(&mut self.forwarded_in, other.forwarded_in);
        sum(&mut self.forward_drops, other.forward_drops);
        sum(&mut self.transmit_drops, other.transmit_drops);
        sum(&mut self.busy_us, other.busy_us);
        for (a, b) in self.queue_wait.iter_mut().zip(other.queue_wait) {
            sum(a, b);
        }
        sum(&mut self.queue_wait_us, other.queue_wait_us);
        for (a, b) in self.turn_took.iter_mut().zip(other.turn_took) {
            sum(a, b);
        }
        sum(&mut self.long_turn_wall_us, other.long_turn_wall_us);
        sum(&mut self.long_turn_cpu_us, other.long_turn_cpu_us);
        sum(&mut self.long_turn_preemptions, other.long_turn_preemptions);
        self.wall_us = self.wall_us.max(other.wall_us);
        sum(&mut self.shed, other.shed);
        sum(&mut self.kernel_drops, other.kernel_drops);
        sum(&mut self.delay_drops, other.delay_drops);
    }

    /// Share of the time spent working, 0 to 1.
    pub fn busy_share(&self) -> f64 {
        if self.wall_us == 0 { 0.0 } else { self.busy_us as f64 / self.wall_us as f64 }
    }
}

/// Upper bounds of the [`DriverStats::queue_wait`] buckets but the last, microseconds.
pub const QUEUE_WAIT_BOUNDS_US: [u64; 4] = [250, 1_000, 10_000, 100_000];

/// A turn this long or longer is accounted in [`DriverStats::long_turn_wall_us`] and beside
/// it (the start of the `turn_took` buckets of 10 ms and more).
pub const LONG_TURN_US: u64 = QUEUE_WAIT_BOUNDS_US[2];

/// The bucket of [`QUEUE_WAIT_BOUNDS_US`] a duration falls in.
fn wait_bucket(us: u64) -> usize {
    QUEUE_WAIT_BOUNDS_US.iter().take_while(|&&bound| us >= bound).count()
}

/// Most receive batches taken in one turn before timers and sends get their go.
const BATCHES_PER_TURN: usize = 4;

/// Datagrams one worker may have waiting from the others.
pub const FORWARD_QUEUE: usize = 4096;

/// A datagram on its way to the worker that owns its connection, with when it reached the
/// socket it came through (on the loops' clock; `None` where the socket does not stamp).
type Forwarded = (SocketAddr, BytesMut, Option<Instant>);

/// How a driver reaches the other workers on its port.
#[derive(Debug)]
struct Routes {
    me: usize,
    to: Vec<(SyncSender<Forwarded>, Arc<Waker>)>,
    from: Receiver<Forwarded>,
}

/// One socket's loop.
#[derive(Debug)]
pub struct Driver {
    socket: UdpSocket,
    recv: RecvBatch,
    received: Vec<(SocketAddr, BytesMut)>,
    pending: Vec<(SocketAddr, std::ops::Range<usize>)>,
    /// How long each datagram of the last batch waited in the socket, microseconds.
    waits: Vec<Option<u64>>,
    /// When each datagram of the last batch reached the socket, on the loop's clock.
    arrivals: Vec<Option<Instant>>,
    /// The kernel's drop counter as last read (it wraps at 2^32).
    kernel_drops_seen: Option<u32>,
    waker: Arc<Waker>,
    routes: Option<Routes>,
    stats: DriverStats,
    batch_delay: Duration,
    /// Datagrams the last turn received (its own and forwarded).
    last_turn_datagrams: usize,
    /// An emulated path delay: received datagrams are held this long before the endpoint
    /// sees them (zero: none).
    receive_delay: Duration,
    /// Datagrams held for the path delay, in arrival order (at most [`MAX_DELAYED`]).
    delayed: std::collections::VecDeque<(Instant, SocketAddr, BytesMut)>,
    /// The receive buffer the socket was made with, and the one the shell last asked for.
    receive_buffer: (usize, Option<usize>),
}

/// Most datagrams held for an emulated path delay; past it they are dropped (counted in
/// [`DriverStats::delay_drops`]), as a router's queue would.
pub const MAX_DELAYED: usize = 1 << 16;

/// Joins the drivers of one port: driver `i` is worker `i`, and each hands the others the
/// datagrams whose connection IDs name them.
pub fn route_between(drivers: &mut [Driver]) {
    let channels: Vec<(SyncSender<Forwarded>, Receiver<Forwarded>)> =
        drivers.iter().map(|_| std::sync::mpsc::sync_channel(FORWARD_QUEUE)).collect();
    let wakers: Vec<Arc<Waker>> = drivers.iter().map(Driver::waker).collect();
    let senders: Vec<SyncSender<Forwarded>> = channels.iter().map(|(tx, _)| tx.clone()).collect();
    for (me, (driver, (_, from))) in drivers.iter_mut().zip(channels).enumerate() {
        let to = senders.iter().cloned().zip(wakers.iter().cloned()).collect();
        driver.routes = Some(Routes { me, to, from });
    }
}

/// What the kernel granted `socket`'s receive and send buffers, comparable with what was asked:
/// Linux clamps a request to `net.core.rmem_max` / `wmem_max`, then reports double what it
/// grants (its bookkeeping overhead). Compared as read back, a grant of half the request
/// passed for the whole.
pub fn granted_buffers(socket: &impl std::os::fd::AsFd) -> std::io::Result<(usize, usize)> {
    let socket = socket2::SockRef::from(socket);
    Ok((socket.recv_buffer_size()? / 2, socket.send_buffer_size()? / 2))
}

/// A non-blocking UDP socket bound to `addr`, its receive and send buffers asked for `buffer`
/// bytes each, and the smaller of the two the kernel granted (comparable with `buffer`). A
/// short grant is logged as a warning with what it costs (`short_grant_costs`), the way to
/// raise it, and both sizes. `shared_port` sets `SO_REUSEPORT`, for one socket per worker on
/// one port; an IPv6 address takes IPv4 too.
pub fn buffered_socket(
    addr: SocketAddr,
    buffer: usize,
    shared_port: bool,
    short_grant_costs: &str,
) -> std::io::Result<(UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if shared_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_recv_buffer_size(buffer)?;
    socket.set_send_buffer_size(buffer)?;
    let (recv, send) = granted_buffers(&socket)?;
    let granted = recv.min(send);
    if granted < buffer {
        tracing::warn!(
            requested = buffer,
            granted,
            "kernel granted smaller UDP buffers (raise net.core.rmem_max / wmem_max): {short_grant_costs}"
        );
    }
    socket.bind(&addr.into())?;
    socket.set_nonblocking(true)?;
    Ok((socket.into(), granted))
}

impl Driver {
    /// A driver over `socket` (made non-blocking here).
    pub fn new(socket: UdpSocket) -> std::io::Result<Self> {
        socket.set_nonblocking(true)?;
        let (made_with, _) = granted_buffers(&socket)?;
        // Best effort: without timestamps the queue-wait counters stay at zero, without drop
        // counts `kernel_drops` does.
        let _ = udp::enable_receive_timestamps(&socket);
        let _ = udp::enable_drop_counts(&socket);
        Ok(Self {
            socket,
            recv: RecvBatch::default(),
            received: Vec::with_capacity(BATCH),
            pending: Vec::with_capacity(BATCH),
            waits: Vec::with_capacity(BATCH),
            arrivals: Vec::with_capacity(BATCH),
            kernel_drops_seen: None,
            waker: Arc::new(Waker::new()?),
            routes: None,
            stats: DriverStats::default(),
            batch_delay: Duration::ZERO,
            last_turn_datagrams: 0,
            receive_delay: Duration::ZERO,
            delayed: std::collections::VecDeque::new(),
            receive_buffer: (made_with, None),
        })
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Wakes the loop from another thread.
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// Lets datagrams gather for up to `delay` after a turn that was not full before the
    /// next wait, so that a lightly loaded loop wakes once per batch rather than once per
    /// datagram (interrupt moderation, in user space). A deadline sooner than that still
    /// wakes the loop on time; a full turn goes straight on. Zero (the default) waits at
    /// once. The price is up to `delay` of added latency per datagram.
    pub fn set_batch_delay(&mut self, delay: Duration) {
        self.batch_delay = delay;
    }

    /// Emulates a network path: every datagram received is held `delay` before the endpoint
    /// sees it, so a load generator on loopback meets its server at a realistic round-trip
    /// time (QUIC's loss recovery times itself on it: on loopback's tens of microseconds,
    /// any queue longer than the peer's ACK delay looks like loss). For load generators only.
    pub fn set_receive_delay(&mut self, delay: Duration) {
        self.receive_delay = delay;
    }

    /// Counters so far.
    pub fn stats(&self) -> DriverStats {
        self.stats
    }

    /// Runs until the shell says stop (then flushes once more).
    pub fn run(&mut self, engine: &mut Engine, shell: &mut impl Shell) -> std::io::Result<()> {
        let started = Instant::now();
        let mut woke = started;
        // One `getrusage` a turn: a long turn is then known as worked or held off the core.
        let mut usage = udp::thread_usage();
        // Whether the waker may be set: it is read (cleared) only then, not every turn.
        let mut woken = true;
        loop {
            let stop = self.turn(engine, shell, woke, woken)?;
            let now = Instant::now();
            let took = now.duration_since(woke).as_micros() as u64;
            self.stats.busy_us += took;
            self.stats.turn_took[wait_bucket(took)] += 1;
            let usage_now = udp::thread_usage();
            if took >= LONG_TURN_US {
                let d = |was: u64, is: u64| is.saturating_sub(was);
                self.stats.long_turn_wall_us += took;
                self.stats.long_turn_cpu_us += d(usage.cpu_us, usage_now.cpu_us);
                self.stats.long_turn_preemptions +=
                    d(usage.involuntary_switches, usage_now.involuntary_switches);
            }
            usage = usage_now;
            self.stats.wall_us = now.duration_since(started).as_micros() as u64;
            if stop {
                return Ok(());
            }
            let release = self.delayed.front().map(|(at, _, _)| *at);
            let deadline =
                [engine.next_timeout(), shell.deadline(), release].into_iter().flatten().min();
            let full = self.last_turn_datagrams >= BATCH * BATCHES_PER_TURN;
            if !self.batch_delay.is_zero() && !full {
                let gather_until = woke + self.batch_delay;
                let until = deadline.map_or(gather_until, |at| at.min(gather_until));
                let pause = until.saturating_duration_since(now);
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
            // After a turn that received datagrams, more are most likely waiting (and the
            // gather above, where set, let them collect): the next turn goes straight to
            // `recvmmsg`, which costs one empty call when none came, instead of a `ppoll` and
            // an eventfd read every turn under load. A wake-up meanwhile stays set in the
            // eventfd (the shell takes its inputs every turn anyway), and the next wait
            // returns at once for it.
            woken = false;
            if self.last_turn_datagrams == 0 {
                let now = Instant::now();
                let timeout = deadline.map(|at| at.saturating_duration_since(now));
                if timeout != Some(Duration::ZERO) {
                    let want_write = !engine.transmits().is_empty();
                    woken = udp::wait(&self.socket, &self.waker, want_write, timeout)?.woken;
                }
            }
            woke = Instant::now();
        }
    }

    /// One turn: receive, timers, the shell, flush, send. True when the shell said stop.
    /// `woken`: the wait said the waker was set (it is cleared before anything is taken, so
    /// a wake-up after this point is seen by the next wait).
    fn turn(
        &mut self,
        engine: &mut Engine,
        shell: &mut impl Shell,
        now: Instant,
        woken: bool,
    ) -> std::io::Result<bool> {
        self.stats.turns += 1;
        self.last_turn_datagrams = 0;
        if woken {
            self.waker.clear();
        }
        // Datagrams other workers received for our connections: shed, held and timed by
        // their arrival in the socket they came through, as our own are. At most a turn's
        // worth of receive batches: the others refill the queue as this worker empties it, so
        // "until it is empty" could last as long as they kept sending (a flood of Initials
        // whose connection IDs name this worker), with no timer, send or socket read between.
        // A turn that took its fill skips the next wait, so the rest are taken next turn.
        let mut taken_at = None;
        let mut forwarded = 0;
        while forwarded < BATCH * BATCHES_PER_TURN
            && let Some((from, datagram, arrived)) =
                self.routes.as_ref().and_then(|routes| routes.from.try_recv().ok())
        {
            forwarded += 1;
            self.last_turn_datagrams += 1;
            self.stats.forwarded_in += 1;
            let at = *taken_at.get_or_insert_with(Instant::now);
            let waited = arrived.map(|arrived| at.saturating_duration_since(arrived));
            let waited = waited.map(|w| w.as_micros() as u64);
            self.take(engine, shell, now, (from, datagram), waited, arrived);
        }
        for _ in 0..BATCHES_PER_TURN {
            let n = self.recv.recv(&self.socket, &mut self.received)?;
            if n > 0 {
                self.stats.recv_calls += 1;
                self.stats.datagrams_in += n as u64;
                self.last_turn_datagrams += n;
                self.count_queue_waits();
                self.count_kernel_drops();
            }
            // Taken out for the loop (and put back, its capacity kept) so that each datagram
            // can go through `take`.
            let mut received = std::mem::take(&mut self.received);
            for (i, (from, datagram)) in received.drain(..).enumerate() {
                let arrived = self.arrivals.get(i).copied().flatten();
                if let Some(routes) = &self.routes
                    && let Some(owner) = crate::cid::owner(&datagram, routes.to.len())
                    && owner != routes.me
                {
                    let (tx, waker) = &routes.to[owner];
                    match tx.try_send((from, datagram, arrived)) {
                        Ok(()) => {
                            self.stats.forwarded_out += 1;
                            waker.wake();
                        }
                        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                            self.stats.forward_drops += 1;
                        }
                    }
                    continue;
                }
                let waited = self.waits.get(i).copied().flatten();
                self.take(engine, shell, now, (from, datagram), waited, arrived);
            }
            self.received = received;
            if n < BATCH {
                break;
            }
        }
        while self.delayed.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((release, from, datagram)) = self.delayed.pop_front() {
                shell.arrived(Some(release));
                engine.handle_datagram(now, from, None, None, datagram, shell);
            }
        }
        shell.arrived(None);
        engine.handle_timeouts(now, shell);
        let flow = shell.turn(now, engine, &self.stats);
        // Never above the buffer the socket was made with; in 64 KiB steps, so that a rate
        // that wobbles does not mean a system call a turn.
        let made_with = self.receive_buffer.0;
        let wanted = shell.receive_buffer().map(|b| b.next_multiple_of(1 << 16).min(made_with));
        if wanted != self.receive_buffer.1 {
            self.receive_buffer.1 = wanted;
            let bytes = wanted.unwrap_or(made_with);
            // Best effort: a buffer that cannot change leaves the queue as it was.
            let _ = socket2::SockRef::from(&self.socket).set_recv_buffer_size(bytes);
        }
        engine.flush(now);
        self.send(engine);
        Ok(flow == Flow::Stop)
    }

    /// One datagram for a connection of this worker (received here or handed over), which
    /// waited `waited_us` since it `arrived` in a socket: the shell may shed it; an emulated
    /// path delay holds it; else the endpoint sees it now.
    fn take(
        &mut self,
        engine: &mut Engine,
        shell: &mut impl Shell,
        now: Instant,
        (from, datagram): (SocketAddr, BytesMut),
        waited_us: Option<u64>,
        arrived: Option<Instant>,
    ) {
        if !shell.admit(now, waited_us, &datagram) {
            self.stats.shed += 1;
            return;
        }
        if !self.receive_delay.is_zero() {
            if self.delayed.len() >= MAX_DELAYED {
                self.stats.delay_drops += 1;
            } else {
                // Released in the order held: a datagram handed over from another worker,
                // older than the ones held before it, waits for them (a forwarding's latency
                // at most; the emulated path only).
                let release = arrived.unwrap_or(now) + self.receive_delay;
                self.delayed.push_back((release, from, datagram));
            }
            return;
        }
        shell.arrived(arrived);
        engine.handle_datagram(now, from, None, None, datagram, shell);
    }

    fn count_queue_waits(&mut self) {
        self.waits.clear();
        self.arrivals.clear();
        // The stamps are on the wall clock; the loop runs on the monotonic one. Read both
        // together, so each arrival is the monotonic now less its wait.
        let (now, now_mono) = (std::time::SystemTime::now(), Instant::now());
        for &at in &self.recv.received_at {
            // A stamp a little ahead of `now` (clock steps) counts as no wait.
            let waited = at.map(|at| now.duration_since(at).unwrap_or_default());
            self.arrivals.push(waited.map(|w| now_mono.checked_sub(w).unwrap_or(now_mono)));
            let waited = waited.map(|w| w.as_micros() as u64);
            self.waits.push(waited);
            if let Some(waited) = waited {
                self.stats.queue_wait[wait_bucket(waited)] += 1;
                self.stats.queue_wait_us += waited;
            }
        }
    }

    fn count_kernel_drops(&mut self) {
        let Some(drops) = self.recv.kernel_drops else { return };
        // The first reading is the drops since the option was set, as is each difference.
        let was = self.kernel_drops_seen.replace(drops).unwrap_or(0);
        self.stats.kernel_drops += u64::from(drops.wrapping_sub(was));
    }

    fn send(&mut self, engine: &mut Engine) {
        let transmits = engine.transmits();
        self.stats.transmit_drops = transmits.dropped;
        if transmits.is_empty() {
            return;
        }
        self.pending.clear();
        self.pending.extend(transmits.datagrams.iter().map(|d| (d.destination, d.range.clone())));
        let sent = udp::send(&self.socket, &transmits.data, &self.pending);
        self.stats.send_calls += 1;
        self.stats.datagrams_out += (sent.taken - sent.failed) as u64;
        self.stats.send_failures += sent.failed as u64;
        transmits.consume(sent.taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_side_by_side_add_their_counts_and_keep_the_longer_wall_time() {
        let one = DriverStats {
            turns: 3,
            datagrams_in: 10,
            busy_us: 400,
            wall_us: 1_000,
            queue_wait: [1, 2, 0, 0, 0],
            turn_took: [3, 0, 0, 0, 0],
            kernel_drops: 1,
            long_turn_wall_us: 12_000,
            long_turn_cpu_us: 300,
            ..DriverStats::default()
        };
        let two = DriverStats {
            turns: 5,
            datagrams_in: 7,
            busy_us: 600,
            wall_us: 900,
            queue_wait: [0, 1, 0, 0, 4],
            turn_took: [4, 1, 0, 0, 0],
            delay_drops: 2,
            long_turn_wall_us: 20_000,
            long_turn_cpu_us: 19_000,
            long_turn_preemptions: 1,
            ..DriverStats::default()
        };
        let mut sum = one;
        sum.add(&two);
        assert_eq!((sum.turns, sum.datagrams_in, sum.busy_us), (8, 17, 1_000));
        assert_eq!(sum.queue_wait, [1, 3, 0, 0, 4]);
        assert_eq!(sum.turn_took, [7, 1, 0, 0, 0]);
        assert_eq!((sum.kernel_drops, sum.delay_drops), (1, 2));
        assert_eq!(
            (sum.long_turn_wall_us, sum.long_turn_cpu_us, sum.long_turn_preemptions),
            (32_000, 19_300, 1)
        );
        assert_eq!(sum.wall_us, 1_000, "the loops ran at the same time");
        assert!((sum.busy_share() - 1.0).abs() < 1e-9, "two loops' busy share is in cores");
    }
}
