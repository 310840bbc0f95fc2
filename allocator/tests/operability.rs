//! What an operator relies on beyond the protocol: logs as JSON lines when asked
//! (`SHAKE_LOG_FORMAT=json`), and the `build_info` metric naming the version and revision.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

#[test]
fn logs_are_json_lines_when_asked_and_build_info_names_the_build() {
    let scratch = Scratch::new("operability");
    let config = scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 10\n");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("SHAKE_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
    let metrics: std::net::SocketAddr = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("metrics="))
        .expect("a metrics address")
        .parse()
        .unwrap();
    let text = scrape(metrics);
    let info = text
        .lines()
        .find(|l| l.starts_with("shake_allocator_build_info{"))
        .expect("a build_info sample");
    assert!(info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{info}");
    assert!(info.contains("revision=\"") && info.ends_with(" 1"), "{info}");

    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let stderr = child.stderr.take().unwrap();
    assert!(child.wait().unwrap().success());
    let lines: Vec<String> = BufReader::new(stderr).lines().map(Result::unwrap).collect();
    assert!(lines.len() >= 2, "some logs: {lines:?}");
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(entry["level"].is_string() && entry["timestamp"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("allocator listening") || l.contains("serving edges")));
}
