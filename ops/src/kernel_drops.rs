//! What the kernel dropped on a UDP socket whose receive path is not ours (quinn's endpoint on
//! the allocator): the `drops` column of `/proc/net/udp` and `/proc/net/udp6`, found by the
//! socket's inode. The edge's own loop learns the same count from `SO_RXQ_OVFL` with each
//! datagram; quinn does not pass that control message on.

use std::io;
use std::os::fd::AsRawFd;

/// A socket's count of datagrams dropped for want of receive-buffer room, read on demand.
#[derive(Debug)]
pub struct UdpDrops {
    inode: u64,
    /// The kernel's count at the last read (it wraps at 2^32).
    seen: u32,
}

impl UdpDrops {
    /// Watches `socket` (taken before it is handed to whatever reads it: the count follows the
    /// socket, not this handle). Its drops so far count as already seen.
    pub fn of(socket: &impl AsRawFd) -> io::Result<Self> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd()))?;
        let inode = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not a socket: {}", link.display())))?;
        let mut drops = Self { inode, seen: 0 };
        drops.seen = drops.read()?;
        Ok(drops)
    }

    /// Datagrams dropped since the last call.
    pub fn since_last(&mut self) -> io::Result<u64> {
        let now = self.read()?;
        let new = now.wrapping_sub(self.seen);
        self.seen = now;
        Ok(u64::from(new))
    }

    fn read(&self) -> io::Result<u32> {
        // This process's network namespace (what /proc/net links to).
        for table in ["/proc/self/net/udp", "/proc/self/net/udp6"] {
            if let Some(drops) = drops_in(&std::fs::read_to_string(table)?, self.inode) {
                return Ok(drops);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no UDP socket with inode {}", self.inode),
        ))
    }
}

/// The `drops` of the row whose `inode` is `inode` in a `/proc/net/udp` table (the 10th and
/// 13th columns; IPv4 and IPv6 tables alike).
pub fn drops_in(table: &str, inode: u64) -> Option<u32> {
    table.lines().skip(1).find_map(|row| {
        let columns: Vec<&str> = row.split_whitespace().collect();
        (columns.get(9)?.parse::<u64>().ok()? == inode).then(|| columns.get(12)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:A1B2 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 17
  124: 0100007F:A1B3 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4243 2 0000000000000000 4294967295
";

    #[test]
    fn a_row_is_found_by_its_inode() {
        assert_eq!(drops_in(TABLE, 4242), Some(17));
        assert_eq!(drops_in(TABLE, 4243), Some(u32::MAX));
        assert_eq!(drops_in(TABLE, 17), None, "the drops column is not an inode");
        assert_eq!(drops_in("garbage\n1 2 3\n", 3), None);
    }

    #[test]
    fn a_socket_is_found_and_starts_at_zero() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut drops = UdpDrops::of(&socket).unwrap();
        assert_eq!(drops.since_last().unwrap(), 0);
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(UdpDrops::of(&file).is_err(), "a file is not a socket");
    }

    /// 2 MB sent at a socket nobody reads, its buffer the kernel's least (a few KiB, whatever
    /// the host's default): what did not fit is counted, once.
    #[test]
    fn what_overflows_an_unread_socket_is_counted_once() {
        let unread = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&unread).set_recv_buffer_size(4_096).unwrap();
        let mut drops = UdpDrops::of(&unread).unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let datagram = [7u8; 1_000];
        for _ in 0..2_000 {
            sender.send_to(&datagram, unread.local_addr().unwrap()).unwrap();
        }
        let dropped = drops.since_last().unwrap();
        assert!((1..2_000).contains(&dropped), "{dropped} of 2,000 dropped");
        assert_eq!(drops.since_last().unwrap(), 0, "counted again");
    }
}
