//! Connection IDs that name the worker (the loop) owning the connection, so that a datagram
//! that reaches the wrong worker can be handed to its owner: after a phone's NAT rebinds its
//! port the kernel's `SO_REUSEPORT` hash picks a socket by the new address, not by the
//! connection.
//!
//! A CID is [`CID_LEN`] bytes: the owning worker's index, then random bytes. Clients choose
//! the destination CID of their first packets themselves (quinn uses 20 bytes), so only
//! short-header packets, and long-header packets whose destination CID has our length, are
//! routed by it; a handshake's first packets stay where the kernel put them.

use quinn_proto::{ConnectionId, ConnectionIdGenerator};
use rand::RngCore;

/// Bytes of every connection ID this edge issues.
pub const CID_LEN: usize = 8;

/// Issues CIDs that start with one worker's index.
#[derive(Debug, Clone, Copy)]
pub struct WorkerCids {
    worker: u8,
}

impl WorkerCids {
    /// CIDs for worker `worker`.
    pub fn new(worker: u8) -> Self {
        Self { worker }
    }
}

impl ConnectionIdGenerator for WorkerCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        bytes[0] = self.worker;
        rand::rng().fill_bytes(&mut bytes[1..]);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The worker that owns the connection a datagram is for, if its destination CID is one of
/// ours and names a worker below `workers`; `None` for anything else (a handshake's first
/// packets, garbage), which stays with the worker that received it.
pub fn owner(datagram: &[u8], workers: usize) -> Option<usize> {
    let first = *datagram.first()?;
    let worker = if first & 0x80 == 0 {
        // Short header: flags, then the destination CID (of our length, by construction).
        *datagram.get(1)?
    } else {
        // Long header: flags, version (4), DCID length, DCID.
        let len = *datagram.get(5)? as usize;
        if len != CID_LEN {
            return None;
        }
        *datagram.get(6)?
    };
    let worker = usize::from(worker);
    (worker < workers).then_some(worker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_name_their_worker_and_datagrams_find_it() {
        let mut cids = WorkerCids::new(3);
        let cid = cids.generate_cid();
        assert_eq!(cid.len(), CID_LEN);
        assert_eq!(cid[0], 3);
        assert_ne!(cids.generate_cid(), cid, "random after the worker byte");
        // A short-header packet for that CID.
        let mut short = vec![0x40];
        short.extend_from_slice(&cid);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(owner(&short, 4), Some(3));
        assert_eq!(owner(&short, 3), None, "no such worker");
        // A long-header packet with our CID, and one with a client's 20-byte CID.
        let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
        long.extend_from_slice(&cid);
        assert_eq!(owner(&long, 4), Some(3));
        let mut initial = vec![0xc0, 0, 0, 0, 1, 20];
        initial.extend_from_slice(&[9; 20]);
        assert_eq!(owner(&initial, 16), None);
        assert_eq!(owner(&[], 4), None);
        assert_eq!(owner(&[0x40], 4), None);
    }
}
