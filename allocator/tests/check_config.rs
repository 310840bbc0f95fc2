//! `--check-config` loads the certificates and keys the allocator's configuration names: a
//! missing one is exit 64 naming the field (before the fix it said "ok").

use std::process::Command;

use shake_testkit::processes::bin;
use shake_testkit::scratch::Scratch;

#[test]
fn check_config_loads_the_tls_files() {
    let scratch = Scratch::new("check-config");
    let config = scratch.config("[rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n");
    let ok =
        Command::new(bin("shake-allocator")).arg("--check-config").arg(&config).output().unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let text = std::fs::read_to_string(&config).unwrap();
    let ca = scratch.ca().display().to_string();
    std::fs::write(&config, text.replace(&ca, "/nonexistent/ca.pem")).unwrap();
    let bad =
        Command::new(bin("shake-allocator")).arg("--check-config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("`tls.edge_ca`") && stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}
