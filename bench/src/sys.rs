//! The Linux system calls the benchmarks need and the standard library lacks: pinning a thread
//! or a process to a core, a thread's CPU time, and batched UDP I/O (`recvmmsg`/`sendmmsg`)
//! for the floor benchmark.
//!
//! `unsafe` is allowed in this module only, because each of these is a libc call. Every call
//! gets buffers that live across the call and lengths that match them; each wrapper checks the
//! return value and turns failures into `io::Error`.
#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

/// Pins the calling thread (`tid` 0) or thread `tid` to one core (the loop's own call).
pub use shake_loop::udp::pin;

/// Pins every thread of process `pid` to one core (threads it starts later inherit it).
pub fn pin_process(pid: u32, core: usize) -> io::Result<()> {
    for tid in crate::procfs::threads(pid) {
        pin(tid, core)?;
    }
    Ok(())
}

/// Sends SIGTERM to process `pid` (a clean stop for the project's servers).
pub fn terminate(pid: u32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// CPU time (user and system) the calling thread has used, microseconds (0 if the clock
/// cannot be read): the clock the edge's overload control reads too.
pub use shake_loop::udp::thread_cpu_us;

/// Datagrams moved by one batched call.
pub const BATCH: usize = 64;
/// Largest datagram the batched calls handle.
pub const SLOT: usize = 1500;

/// Buffers for batched UDP I/O on IPv4: `BATCH` slots of `SLOT` bytes, each with an address,
/// a length, and the `iovec`/`mmsghdr` that point at them. Everything is allocated once:
/// the headers point into the heap buffers of the vectors, which never grow or move.
pub struct Batch {
    data: Vec<[u8; SLOT]>,
    addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    count: usize,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch").field("count", &self.count).finish_non_exhaustive()
    }
}

impl Default for Batch {
    fn default() -> Self {
        // SAFETY: sockaddr_in and mmsghdr are plain data; all-zero is a valid value of each.
        let zero_addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let zero_header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        let mut batch = Self {
            data: vec![[0; SLOT]; BATCH],
            addrs: vec![zero_addr; BATCH],
            iovs: Vec::with_capacity(BATCH),
            headers: vec![zero_header; BATCH],
            count: 0,
        };
        for slot in &mut batch.data {
            batch.iovs.push(libc::iovec { iov_base: slot.as_mut_ptr().cast(), iov_len: SLOT });
        }
        for ((header, iov), addr) in
            batch.headers.iter_mut().zip(&mut batch.iovs).zip(&mut batch.addrs)
        {
            header.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in).cast();
            header.msg_hdr.msg_iov = iov;
            header.msg_hdr.msg_iovlen = 1;
        }
        batch
    }
}

const ADDR_LEN: libc::socklen_t = size_of::<libc::sockaddr_in>() as libc::socklen_t;

impl Batch {
    /// Datagrams held.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.count = 0;
    }

    /// Length of datagram `i`.
    pub fn datagram_len(&self, i: usize) -> usize {
        self.iovs[i].iov_len
    }

    /// Adds a datagram to `to`; false when full, too large or not IPv4.
    pub fn push(&mut self, payload: &[u8], to: SocketAddr) -> bool {
        let SocketAddr::V4(to) = to else { return false };
        if self.count == BATCH || payload.len() > SLOT {
            return false;
        }
        let i = self.count;
        self.data[i][..payload.len()].copy_from_slice(payload);
        self.iovs[i].iov_len = payload.len();
        self.addrs[i] = sockaddr(to);
        self.headers[i].msg_hdr.msg_namelen = ADDR_LEN;
        self.count += 1;
        true
    }

    /// Receives up to `BATCH` datagrams: blocks for the first (up to the socket's read
    /// timeout) and takes whatever else is queued. Each keeps its sender's address, so
    /// [`Batch::send`] right after is an echo.
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        for (iov, header) in self.iovs.iter_mut().zip(&mut self.headers) {
            iov.iov_len = SLOT;
            header.msg_hdr.msg_namelen = ADDR_LEN;
        }
        // SAFETY: every header points at an iovec, a buffer and an address owned by `self`,
        // which outlive the call; the lengths are the buffers' own.
        let n = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (iov, header) in self.iovs.iter_mut().zip(&self.headers).take(n) {
            iov.iov_len = header.msg_len as usize;
        }
        self.count = n;
        Ok(n)
    }

    /// Sends every held datagram to its address; returns how many went out.
    pub fn send(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        if self.count == 0 {
            return Ok(0);
        }
        // SAFETY: as in `recv`; only the first `count` headers, all filled, are passed.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                self.count as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is valid before the fields are set.
    let mut out: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    out.sin_family = libc::AF_INET as libc::sa_family_t;
    out.sin_port = addr.port().to_be();
    out.sin_addr = libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batched_datagrams_cross_loopback_and_come_back_with_their_sender() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let mut out = Batch::default();
        for i in 0..10u8 {
            assert!(out.push(&[i; 40], b.local_addr().unwrap()));
        }
        assert_eq!(out.send(&a).unwrap(), 10);
        let mut got = Batch::default();
        let mut total = 0;
        while total < 10 {
            total += got.recv(&b).unwrap();
        }
        assert_eq!(total, 10);
        // Echo the last batch back to its sender, as the floor server does.
        a.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let sent = got.send(&b).unwrap();
        let mut back = Batch::default();
        assert!(back.recv(&a).unwrap() >= 1 && sent >= 1);
        assert_eq!(back.datagram_len(0), 40);
    }

    #[test]
    fn thread_cpu_time_moves_forward_and_pinning_to_core_zero_works() {
        let before = thread_cpu_us();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_us() > before);
        pin(0, 0).unwrap();
        assert!(pin(0, 1 << 20).is_err());
    }
}
