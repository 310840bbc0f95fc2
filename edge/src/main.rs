//! `shake-edge` binary.
fn main() {}
