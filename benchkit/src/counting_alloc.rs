//! A global allocator that counts allocations, so a benchmark can show how many a code path
//! makes. Only a benchmark whose figure is an allocation or heap-byte count installs it, with
//! `#[global_allocator]` in its own target (`edge/benches/hot_path.rs`,
//! `allocator/benches/soak.rs`); every other program keeps the system allocator untouched.
//!
//! `unsafe` is allowed in this module only: implementing `GlobalAlloc` is unsafe by definition.
//! Every method forwards to the system allocator unchanged and adds relaxed atomic counter
//! updates (allocations, and bytes live), so the contract `GlobalAlloc` asks for is the
//! system allocator's own.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Counts allocations (and reallocations) made through it, and the bytes they hold.
#[derive(Debug)]
pub struct CountingAlloc {
    allocations: AtomicU64,
    live_bytes: AtomicI64,
}

impl CountingAlloc {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self { allocations: AtomicU64::new(0), live_bytes: AtomicI64::new(0) }
    }

    /// Allocations so far.
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::Relaxed)
    }

    /// Bytes allocated and not yet freed (what the heap holds for the program, without the
    /// allocator's own overhead).
    pub fn live_bytes(&self) -> i64 {
        self.live_bytes.load(Ordering::Relaxed)
    }
}

impl Default for CountingAlloc {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.live_bytes.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.live_bytes.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        self.live_bytes.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` through us with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.live_bytes.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` through us with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}
