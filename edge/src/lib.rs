//! `shake-edge`: the edge node at a CDN point of presence.
//!
//! Not built yet: the edge issue fills this crate (QUIC termination, session tokens,
//! token-bucket admission, batching and forwarding to the allocator).
