//! CI-sized end to end: `scripts/demo.sh` with the three real binaries (allocator, edge,
//! swarm) and a small swarm; its final JSON line must report every invariant held.
//!
//! The allocator and edge binaries come from the same `target/` directory as this test's own
//! `shake-swarm` (`cargo test --workspace` builds them for their own crates' tests).

use std::path::{Path, PathBuf};
use std::process::Command;

fn bin_dir() -> PathBuf {
    let swarm = Path::new(env!("CARGO_BIN_EXE_shake-swarm"));
    let dir = swarm.parent().expect("binary directory").to_owned();
    for bin in ["shake-allocator", "shake-edge"] {
        assert!(
            dir.join(bin).exists(),
            "{bin} is not built in {}: run `cargo test --workspace` (or cargo build) first",
            dir.display()
        );
    }
    dir
}

#[test]
fn the_demo_runs_two_rounds_and_every_invariant_holds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let demo_dir = std::env::temp_dir().join(format!("shake-demo-e2e-{}", std::process::id()));
    let output = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .current_dir(&root)
        .env("SHAKE_BIN_DIR", bin_dir())
        .env("SHAKE_DEMO_DIR", &demo_dir)
        .env("PHONES", "120")
        .env("ROUND_S", "3")
        .env("LEAD_S", "3")
        .output()
        .expect("running scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let line = stdout.lines().last().expect("a final JSON line");
    let summary: serde_json::Value = serde_json::from_str(line).expect("the last line is JSON");
    assert_eq!(summary["ok"], true, "{line}");
    assert_eq!(summary["phones"], 120);
    assert_eq!(summary["pool_overspent"], 0);
    assert_eq!(summary["ledger_mismatches"], 0);
    assert_eq!(summary["awards_granted_twice"], 0);
    assert!(summary["shakes"].as_u64().unwrap() > 120, "{line}");
    assert!(summary["awards_granted"].as_u64().unwrap() > 0, "{line}");
    assert_eq!(summary["awards_granted"], summary["awards_received"], "{line}");
    assert!(summary["p99_outcome_ms"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_dir_all(demo_dir);
}
