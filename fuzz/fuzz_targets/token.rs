//! Fuzz target: `shake_proto::fuzz_checks::token` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shake_proto::fuzz_checks::token(data));
