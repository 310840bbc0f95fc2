//! `shake-allocator`: the central allocator.
//!
//! Not built yet: the allocator issue fills this crate (rounds, pools, the draw, the ledger).
