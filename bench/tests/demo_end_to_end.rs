//! CI-sized end to end: `scripts/demo.sh` with the three real binaries (allocator, edge,
//! swarm) and a small swarm; its final JSON line must report every invariant held.

use shake_testkit::processes::bin_dir;
use shake_testkit::scripts::run_script;

#[test]
fn the_demo_runs_two_rounds_and_every_invariant_holds() {
    let bins = bin_dir(&["shake-allocator", "shake-edge"]);
    let demo_dir = std::env::temp_dir().join(format!("shake-demo-e2e-{}", std::process::id()));
    let summary = run_script(
        "demo.sh",
        &[],
        &[("SHAKE_BIN_DIR", &bins), ("SHAKE_DEMO_DIR", &demo_dir)],
        &[("PHONES", "120"), ("ROUND_S", "3"), ("LEAD_S", "3")],
    );
    let line = summary.to_string();
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

/// The same demo with the swarm's phones on `shake-loop` (`driver = "loop"`): the client
/// library's session on the event-loop driver, against the real edge, with every award the
/// phones were told found in the ledger.
#[test]
fn the_demo_on_the_loop_driver_keeps_every_invariant() {
    let bins = bin_dir(&["shake-allocator", "shake-edge", "shake-swarm"]);
    let demo_dir = std::env::temp_dir().join(format!("shake-demo-loop-{}", std::process::id()));
    let summary = run_script(
        "demo.sh",
        &[],
        &[("SHAKE_BIN_DIR", &bins), ("SHAKE_DEMO_DIR", &demo_dir)],
        &[
            ("PHONES", "120"),
            ("ROUND_S", "3"),
            ("LEAD_S", "3"),
            ("SCENARIO", "swarm/scenarios/loop.toml"),
        ],
    );
    let line = summary.to_string();
    assert_eq!(summary["ok"], true, "{line}");
    assert_eq!(summary["phones"], 120);
    assert_eq!(summary["ledger_mismatches"], 0, "{line}");
    assert!(summary["shakes"].as_u64().unwrap() > 120, "{line}");
    assert!(summary["awards_granted"].as_u64().unwrap() > 0, "{line}");
    assert_eq!(summary["awards_granted"], summary["awards_received"], "{line}");
    let _ = std::fs::remove_dir_all(demo_dir);
}

/// The live show on PostgreSQL: rounds armed for later, opened, paused, topped up, resumed,
/// extended, re-paced and closed, and a round added, through the CLI while the swarm runs, the ledger on a primary and a synchronous standby
/// that the script starts.
#[test]
fn a_live_show_on_postgres_applies_every_command_and_every_invariant_holds() {
    let bins = bin_dir(&["shake-allocator", "shake-edge"]);
    let demo_dir = std::env::temp_dir().join(format!("shake-demo-live-{}", std::process::id()));
    let summary = run_script(
        "demo.sh",
        &[],
        &[("SHAKE_BIN_DIR", &bins), ("SHAKE_DEMO_DIR", &demo_dir)],
        &[
            ("PHONES", "120"),
            ("ROUND_S", "6"),
            ("LEAD_S", "3"),
            ("SHOW", "live"),
            ("LEDGER", "postgres"),
        ],
    );
    let line = summary.to_string();
    assert_eq!(summary["ok"], true, "{line}");
    assert_eq!((&summary["show"], &summary["ledger"]), (&"live".into(), &"postgres".into()));
    assert_eq!(summary["commands_applied"], 9, "{line}");
    assert!(summary["awards_redelivered"].is_u64(), "{line}");
    assert!(summary["awards_granted"].as_u64().unwrap() > 0, "the commanded rounds drew: {line}");
    assert_eq!(summary["awards_granted"], summary["awards_received"], "{line}");
    let _ = std::fs::remove_dir_all(demo_dir);
}
