//! `shake-phone`'s command line: bad input is an error that names it, never a panic.

use std::process::Command;

#[test]
fn a_token_that_is_not_hex_is_refused_with_a_reason() {
    // Multi-byte characters once split a byte slice (a panic, exit 101).
    for bad in ["a\u{e9}0", "\u{e9}\u{e9}", "zz", "abc"] {
        let out = Command::new(env!("CARGO_BIN_EXE_shake-phone"))
            .args(["--edge", "127.0.0.1:9", "--ca", "/nonexistent", "--token-hex", bad])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(101), "{bad:?} panicked: {said}");
        assert!(!out.status.success(), "{bad:?}");
        assert!(said.contains("hex"), "{bad:?}: {said}");
    }
    // 129 bytes of good hex: longer than `Hello` carries (the encoder's assert aborted).
    let long = "ab".repeat(129);
    let out = Command::new(env!("CARGO_BIN_EXE_shake-phone"))
        .args(["--edge", "127.0.0.1:9", "--ca", "/nonexistent", "--token-hex", &long])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.status.code() != Some(101), "{said}");
    assert!(said.contains("longer than a token"), "{said}");
}
