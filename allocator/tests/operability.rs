//! What an operator relies on beyond the protocol: logs as JSON lines when asked
//! (`SHAKE_LOG_FORMAT=json`), and the `build_info` metric naming the version and revision.

use std::fs::File;

use shake_testkit::metrics::scrape;
use shake_testkit::scratch::Scratch;
use shake_testkit::servers::Allocator;

#[test]
fn logs_are_json_lines_when_asked_and_build_info_names_the_build() {
    let scratch = Scratch::new("operability");
    let config = scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n");
    let log = scratch.dir.join("allocator.log");
    let mut command = Allocator::command(&config);
    command
        .env("SHAKE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(File::create(&log).unwrap());
    let mut alloc = Allocator::spawn(command).unwrap();
    let text = scrape(alloc.metrics);
    let info = text
        .lines()
        .find(|l| l.starts_with("shake_allocator_build_info{"))
        .expect("a build_info sample");
    assert!(info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{info}");
    assert!(info.contains("revision=\"") && info.ends_with(" 1"), "{info}");
    // A fjall allocator leads its own ledger: the fleet's "no allocator leads" alert must
    // not page on it.
    assert_eq!(shake_ops::http::metric_sum(&text, "shake_allocator_leader_epoch "), 1.0);

    assert!(alloc.process.terminate().success());
    let logs = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() >= 2, "some logs: {lines:?}");
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["level"].is_string() && entry["timestamp"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("allocator listening") || l.contains("serving edges")));
}
