//! The loop's system calls: batched UDP receive and send (`recvmmsg`, `sendmmsg`), waiting on
//! the socket and a wake-up (`ppoll`), the wake-up itself (an `eventfd`), pinning a loop's
//! thread to a core (`sched_setaffinity`), a loop thread's scheduling priority (`setpriority`),
//! and the CPU time a loop's thread has used (`clock_gettime`, `getrusage`).
//!
//! `unsafe` is allowed in this module only, because each of these is a libc call. Every call
//! gets buffers that live across it, with the lengths of those buffers; addresses are
//! `sockaddr_storage` (room for IPv4 and IPv6) converted by `socket2`'s `SockAddr`, never by
//! hand; every return value is checked and a failure becomes an `io::Error`.
#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use bytes::BytesMut;

/// Datagrams moved by one batched call.
pub const BATCH: usize = 64;
/// Largest datagram received (QUIC's datagrams are at most the path MTU, 1,500 on Ethernet;
/// a bigger one is truncated and QUIC drops it).
pub const SLOT: usize = 1_500;

/// Receives up to [`BATCH`] datagrams per call, each into a buffer of its own.
///
/// Each received datagram is handed out as a `BytesMut` split off its slot's buffer, so no
/// datagram is copied; once it has been dropped (quinn-proto keeps a datagram only while its
/// frames are read), the slot's next `reserve` reuses the same allocation. A slot to itself
/// bounds what a datagram quinn-proto holds on to can pin: a frame left unread (a DATAGRAM
/// frame waiting for the application, a STREAM frame above a gap) keeps its datagram's
/// 1,500 bytes alive, where one shared arena for the batch would have kept all 96,000.
pub struct RecvBatch {
    slots: Vec<BytesMut>,
    addrs: Vec<libc::sockaddr_storage>,
    /// Room for each datagram's control messages (its kernel receive timestamp and the
    /// socket's drop counter).
    controls: Vec<[u64; CONTROL_WORDS]>,
    /// Kernel receive times of the datagrams of the last call, one per datagram in order
    /// (`None` where the socket does not timestamp).
    pub received_at: Vec<Option<std::time::SystemTime>>,
    /// The socket's count of datagrams the kernel dropped because its receive buffer was full
    /// (`SO_RXQ_OVFL`, cumulative since the option was set, wrapping at 2^32), as of the last
    /// datagram that carried it; `None` until one did.
    pub kernel_drops: Option<u32>,
}

/// Control-message room per datagram, in 8-byte words: one `SCM_TIMESTAMPNS` (a 16-byte header
/// and a 16-byte `timespec`) and one `SO_RXQ_OVFL` (a 16-byte header and a `u32`, padded to
/// 24), with room to spare.
const CONTROL_WORDS: usize = 8;

/// `SO_RXQ_OVFL` (and its control message type): the kernel tells with each datagram how many
/// it dropped on this socket so far.
const SO_RXQ_OVFL: libc::c_int = 40;

/// `SO_TIMESTAMPNS` (and its control message type), the same on every Linux architecture the
/// project builds for (x86_64, aarch64).
const SO_TIMESTAMPNS: libc::c_int = 35;

/// Asks the kernel to stamp each datagram received on `socket` with the time it arrived
/// (`SO_TIMESTAMPNS`, the realtime clock), so the loop can tell how long datagrams waited in
/// the socket before it read them.
pub fn enable_receive_timestamps(socket: &UdpSocket) -> io::Result<()> {
    set_flag(socket, SO_TIMESTAMPNS)
}

/// Turns a boolean `SOL_SOCKET` option on.
fn set_flag(socket: &UdpSocket, option: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the option value is a c_int that lives across the call, with its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Asks the kernel to tell, with each datagram received on `socket`, how many datagrams it has
/// dropped on that socket for want of buffer room (`SO_RXQ_OVFL`): the overload the loop never
/// sees otherwise. Read as [`RecvBatch::kernel_drops`].
pub fn enable_drop_counts(socket: &UdpSocket) -> io::Result<()> {
    set_flag(socket, SO_RXQ_OVFL)
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").finish_non_exhaustive()
    }
}

impl Default for RecvBatch {
    fn default() -> Self {
        // SAFETY: sockaddr_storage and mmsghdr are plain data; all-zero is a valid value.
        let zero_addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        Self {
            slots: (0..BATCH).map(|_| BytesMut::with_capacity(SLOT)).collect(),
            addrs: vec![zero_addr; BATCH],
            controls: vec![[0; CONTROL_WORDS]; BATCH],
            received_at: Vec::with_capacity(BATCH),
            kernel_drops: None,
        }
    }
}

impl RecvBatch {
    /// Receives what is queued on `socket` without waiting: up to [`BATCH`] datagrams, each
    /// with its sender, appended to `out`. Returns how many (0 when none is queued).
    pub fn recv(
        &mut self,
        socket: &UdpSocket,
        out: &mut Vec<(SocketAddr, BytesMut)>,
    ) -> io::Result<usize> {
        // The headers and iovecs point into `self`: built on the stack for each call, so the
        // batch holds no raw pointer between calls (and can move to another thread).
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        let mut iovs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
        for ((((iov, header), addr), control), slot) in iovs
            .iter_mut()
            .zip(&mut headers)
            .zip(&mut self.addrs)
            .zip(&mut self.controls)
            .zip(&mut self.slots)
        {
            // Reuses the slot's allocation once its last datagram is gone, else makes another.
            slot.reserve(SLOT);
            iov.iov_base = slot.spare_capacity_mut().as_mut_ptr().cast();
            iov.iov_len = SLOT;
            header.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = control.as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
            header.msg_hdr.msg_flags = 0;
        }
        // SAFETY: every header points at an iovec on this stack frame, an address in `self` and
        // a slot's spare capacity (at least SLOT bytes, reserved above and not touched since),
        // all alive across the call; the lengths are theirs.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                _ => Err(err),
            };
        }
        let n = n as usize;
        self.received_at.clear();
        let mut stamps = [None; BATCH];
        for (header, slot) in headers.iter().zip(&mut stamps).take(n) {
            let mut stamp = None;
            // SAFETY: the kernel wrote `msg_controllen` bytes of control messages into this
            // header's buffer (in `self.controls`, alive); the CMSG macros walk within it, and
            // a message's data is read only when its length says the whole value is there (a
            // message the kernel cut short, for want of room, says less).
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&header.msg_hdr);
                while !cmsg.is_null() {
                    let holds = |bytes: usize| {
                        (*cmsg).cmsg_len as usize >= libc::CMSG_LEN(bytes as u32) as usize
                    };
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET
                        && (*cmsg).cmsg_type == SO_TIMESTAMPNS
                        && holds(size_of::<libc::timespec>())
                    {
                        let ts = std::ptr::read_unaligned(
                            libc::CMSG_DATA(cmsg).cast::<libc::timespec>(),
                        );
                        stamp = Some(
                            std::time::UNIX_EPOCH
                                + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32),
                        );
                    } else if (*cmsg).cmsg_level == libc::SOL_SOCKET
                        && (*cmsg).cmsg_type == SO_RXQ_OVFL
                        && holds(size_of::<u32>())
                    {
                        let drops = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<u32>());
                        self.kernel_drops = Some(drops);
                    }
                    cmsg = libc::CMSG_NXTHDR(&header.msg_hdr, cmsg);
                }
            }
            *slot = stamp;
        }
        for (((header, addr), stamp), slot) in
            headers.iter().zip(&self.addrs).zip(stamps).zip(&mut self.slots).take(n)
        {
            let size = (header.msg_len as usize).min(SLOT);
            // SAFETY: the kernel wrote datagram i's `msg_len` bytes (at most SLOT, the iovec's
            // length) at the start of slot i's spare capacity.
            unsafe { slot.set_len(size) };
            let datagram = slot.split_to(size);
            let len = header.msg_hdr.msg_namelen;
            let mut storage = socket2::SockAddrStorage::zeroed();
            // SAFETY: sockaddr_storage is this platform's own storage type; the kernel filled
            // `addr` with `len` bytes of a socket address.
            let from = unsafe {
                *storage.view_as::<libc::sockaddr_storage>() = *addr;
                socket2::SockAddr::new(storage, len)
            };
            // The stamps stay one per datagram handed out.
            if let Some(from) = from.as_socket() {
                out.push((from, datagram));
                self.received_at.push(stamp);
            }
        }
        Ok(n)
    }
}

/// What one [`send`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Datagrams done with, from the front: sent, or failed and dropped.
    pub taken: usize,
    /// Of those, the ones the kernel refused (an unreachable address, say): dropped, as a
    /// lost packet would be.
    pub failed: usize,
}

/// Sends `datagrams` (each a destination and a byte range of `data`), as many as the socket
/// takes now, in batches of up to [`BATCH`]. What is not taken stays for later (the socket's
/// buffer was full).
pub fn send(
    socket: &UdpSocket,
    data: &[u8],
    datagrams: &[(SocketAddr, std::ops::Range<usize>)],
) -> Sent {
    let mut done = Sent::default();
    // SAFETY: mmsghdr is plain data; all-zero is a valid value.
    let mut headers: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut iovs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BATCH];
    let mut addrs: Vec<socket2::SockAddr> = Vec::with_capacity(BATCH);
    while done.taken < datagrams.len() {
        let chunk = &datagrams[done.taken..datagrams.len().min(done.taken + BATCH)];
        addrs.clear();
        addrs.extend(chunk.iter().map(|(to, _)| socket2::SockAddr::from(*to)));
        for (i, ((_, range), addr)) in chunk.iter().zip(&addrs).enumerate() {
            let bytes = &data[range.clone()];
            iovs[i] =
                libc::iovec { iov_base: bytes.as_ptr().cast_mut().cast(), iov_len: bytes.len() };
            headers[i].msg_hdr.msg_name = addr.as_ptr().cast_mut().cast();
            headers[i].msg_hdr.msg_namelen = addr.len();
            headers[i].msg_hdr.msg_iov = &mut iovs[i];
            headers[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `chunk.len()` headers point at iovecs over `data` and at addresses
        // in `addrs`, all alive across the call; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                chunk.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => return done,
                // The first datagram of the chunk was refused: drop it and go on.
                _ => {
                    done.taken += 1;
                    done.failed += 1;
                    continue;
                }
            }
        }
        done.taken += n as usize;
        if (n as usize) < chunk.len() {
            // The next one would block, or fail: the next call finds out which.
            return done;
        }
    }
    done
}

/// A wake-up another thread can give the loop (an `eventfd`).
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    /// A new wake-up, not set.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes plain integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Wakes the loop (any number of calls before it wakes count as one).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Clears it (the loop calls this when it wakes).
    pub fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut value).cast(), 8) };
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// What woke a [`wait`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ready {
    /// The socket has datagrams.
    pub readable: bool,
    /// The socket can take datagrams (asked for only when sends are pending).
    pub writable: bool,
    /// The waker was set.
    pub woken: bool,
}

/// Waits until the socket is readable (or writable, if `want_write`), the waker is set, or
/// `timeout` passes (`None`: no limit). Nanosecond resolution, unlike `poll`'s milliseconds.
pub fn wait(
    socket: &UdpSocket,
    waker: &Waker,
    want_write: bool,
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    let mut events = libc::POLLIN;
    if want_write {
        events |= libc::POLLOUT;
    }
    let mut fds = [
        libc::pollfd { fd: socket.as_raw_fd(), events, revents: 0 },
        libc::pollfd { fd: waker.raw(), events: libc::POLLIN, revents: 0 },
    ];
    let spec = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let spec_ptr = spec.as_ref().map_or(std::ptr::null(), |s| s as *const libc::timespec);
    // SAFETY: `fds` and `spec` live across the call; the count matches `fds`.
    let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, spec_ptr, std::ptr::null()) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(Ready::default())
        } else {
            Err(err)
        };
    }
    Ok(Ready {
        readable: fds[0].revents & (libc::POLLIN | libc::POLLERR) != 0,
        writable: fds[0].revents & libc::POLLOUT != 0,
        woken: fds[1].revents & libc::POLLIN != 0,
    })
}

/// Pins thread `tid` (0: the calling thread) to `core`, so that one loop owns one core (and a
/// benchmark's load stays off the measured core).
pub fn pin(tid: u32, core: usize) -> io::Result<()> {
    if core >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no such core"));
    }
    // SAFETY: a zeroed `cpu_set_t` is the empty set, a valid value of the plain C type.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core` is below CPU_SETSIZE (checked above), inside the set's bits.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: the set lives across the call, with its size.
    let rc =
        unsafe { libc::sched_setaffinity(tid as libc::pid_t, size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Sets the calling thread's nice value (-20, the most favoured, to 19; Linux keeps it per
/// thread). Going below the current value needs `CAP_SYS_NICE` (or an `RLIMIT_NICE` that
/// allows it).
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: plain integers; `gettid` names the calling thread.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Puts the calling thread in the real-time `SCHED_FIFO` class at `priority` (1 to 99): it
/// then runs whenever it is runnable, ahead of every normal thread on its core, until it
/// blocks (the kernel's real-time throttling still leaves normal threads 5% of each second).
/// Needs `CAP_SYS_NICE` (or an `RLIMIT_RTPRIO` that allows it).
pub fn set_thread_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: `param` lives across the call; 0 names the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): what a loop actually ran,
/// as against the wall time its turns took (which includes time the scheduler or a CPU quota
/// held it off the core).
pub fn thread_cpu_time() -> io::Result<Duration> {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// [`thread_cpu_time`] in microseconds, 0 if the clock cannot be read.
pub fn thread_cpu_us() -> u64 {
    thread_cpu_time().map_or(0, |t| t.as_micros() as u64)
}

/// CPU time every thread of the process has used (`CLOCK_PROCESS_CPUTIME_ID`), in
/// microseconds, 0 if the clock cannot be read: what a CPU quota on the process's cgroup
/// counts.
pub fn process_cpu_us() -> u64 {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID).map_or(0, |t| t.as_micros() as u64)
}

/// What the calling thread has used so far (`getrusage(RUSAGE_THREAD)`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ThreadUsage {
    /// CPU time, user and system, microseconds.
    pub cpu_us: u64,
    /// Times the scheduler took the core from the thread while it could still run.
    pub involuntary_switches: u64,
}

/// [`ThreadUsage`] of the calling thread; zeros if it cannot be read.
pub fn thread_usage() -> ThreadUsage {
    // SAFETY: all-zero bytes are a valid `rusage` (integers and `timeval`s).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` lives across the call; `RUSAGE_THREAD` names the calling thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    if rc != 0 {
        return ThreadUsage::default();
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    ThreadUsage {
        cpu_us: us(usage.ru_utime) + us(usage.ru_stime),
        involuntary_switches: usage.ru_nivcsw as u64,
    }
}

fn cpu_clock(clock: libc::clockid_t) -> io::Result<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` lives across the call; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_cpu_time_counts_this_threads_work_and_not_its_sleep() {
        let before = thread_cpu_time().expect("clock");
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_cpu_time().expect("clock") - before;
        let spin_until = std::time::Instant::now() + Duration::from_millis(30);
        let mut x = 0u64;
        while std::time::Instant::now() < spin_until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let worked = thread_cpu_time().expect("clock") - before - slept;
        assert!(slept < Duration::from_millis(10), "sleeping used {slept:?}");
        assert!(worked >= Duration::from_millis(5), "spinning 30 ms used only {worked:?}");
    }

    /// The calling thread's scheduling class is `SCHED_FIFO`.
    fn thread_is_fifo() -> bool {
        // SAFETY: no arguments but the calling thread.
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_FIFO }
    }

    /// The calling thread's nice value.
    fn thread_nice() -> io::Result<i32> {
        // SAFETY: plain integers, `gettid` names the calling thread; -1 is a valid answer, so
        // errno tells a failure apart.
        unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
            if nice == -1 && *libc::__errno_location() != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(nice)
        }
    }

    #[test]
    fn a_threads_nice_value_is_its_own() {
        let main_nice = thread_nice().unwrap();
        // Raising the value (less favoured) is allowed without privileges.
        let set = std::thread::spawn(move || {
            set_thread_nice(main_nice + 3).unwrap();
            thread_nice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(set, main_nice + 3);
        assert_eq!(thread_nice().unwrap(), main_nice, "only the thread that asked changed");
    }

    #[test]
    fn fifo_is_granted_with_the_privilege_and_refused_without() {
        let (result, fifo) =
            std::thread::spawn(|| (set_thread_fifo(1), thread_is_fifo())).join().unwrap();
        match result {
            Ok(()) => assert!(fifo, "granted but not in effect"),
            Err(err) => {
                assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
                assert!(!fifo);
            }
        }
        assert!(!thread_is_fifo(), "only the thread that asked changed");
        assert!(set_thread_fifo(100).is_err(), "1 to 99 only");
    }

    #[test]
    fn thread_usage_counts_work_not_sleep() {
        let before = thread_usage();
        std::thread::sleep(Duration::from_millis(30));
        let slept = thread_usage().cpu_us - before.cpu_us;
        let spin_until = std::time::Instant::now() + Duration::from_millis(30);
        let mut x = 0u64;
        while std::time::Instant::now() < spin_until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = thread_usage();
        let worked = after.cpu_us - before.cpu_us - slept;
        assert!(slept < 10_000, "sleeping used {slept} us");
        assert!(worked >= 5_000, "spinning 30 ms used only {worked} us");
        assert!(after.involuntary_switches >= before.involuntary_switches);
    }

    #[test]
    fn a_thread_pins_to_a_core_it_has_and_not_to_one_it_lacks() {
        let on = std::thread::spawn(|| {
            pin(0, 0)?;
            // SAFETY: a zeroed set is valid; the kernel fills it for this thread.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: pid 0 is this thread; the set and its size live across the call.
            let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
            assert_eq!(rc, 0);
            // SAFETY: reading bits inside the set.
            Ok::<_, io::Error>((0..8).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect())
        });
        let cores: Vec<usize> = on.join().unwrap().unwrap();
        assert_eq!(cores, vec![0], "the thread runs on core 0 only");
        assert!(pin(0, 1 << 20).is_err());
    }

    #[test]
    fn datagrams_cross_loopback_in_batches_with_their_senders() {
        for (a, b) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let (a, b) = match (UdpSocket::bind(a), UdpSocket::bind(b)) {
                (Ok(a), Ok(b)) => (a, b),
                // Only IPv6 may be missing (a container without it); IPv4's loopback may not.
                (Err(err), _) | (_, Err(err)) if a.starts_with('[') => {
                    eprintln!("skipped: IPv6 loopback cannot be bound here ({err})");
                    continue;
                }
                (Err(err), _) | (_, Err(err)) => panic!("binding {a}: {err}"),
            };
            let to = b.local_addr().unwrap();
            let data: Vec<u8> = (0..10u8).flat_map(|i| [i; 40]).collect();
            let datagrams: Vec<_> = (0..10).map(|i| (to, i * 40..(i + 1) * 40)).collect();
            assert_eq!(send(&a, &data, &datagrams), Sent { taken: 10, failed: 0 });
            let waker = Waker::new().unwrap();
            let mut batch = RecvBatch::default();
            let mut got = Vec::new();
            while got.len() < 10 {
                let ready = wait(&b, &waker, false, Some(Duration::from_secs(2))).unwrap();
                assert!(ready.readable, "datagrams arrive");
                batch.recv(&b, &mut got).unwrap();
            }
            for (i, (from, bytes)) in got.iter().enumerate() {
                assert_eq!(*from, a.local_addr().unwrap());
                assert_eq!(&bytes[..], &[i as u8; 40][..]);
            }
            // Nothing more queued: a receive returns at once with none.
            assert_eq!(batch.recv(&b, &mut got).unwrap(), 0);
        }
    }

    #[test]
    fn a_wake_from_another_thread_ends_a_wait() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let waker = std::sync::Arc::new(Waker::new().unwrap());
        let other = waker.clone();
        let thread = std::thread::spawn(move || other.wake());
        let ready = wait(&socket, &waker, false, Some(Duration::from_secs(5))).unwrap();
        thread.join().unwrap();
        assert!(ready.woken && !ready.readable);
        waker.clear();
        let ready = wait(&socket, &waker, false, Some(Duration::from_millis(10))).unwrap();
        assert_eq!(ready, Ready::default(), "cleared, and the timeout ends the wait");
    }
}
