//! `--check-config` loads the certificates and keys the allocator's configuration names: a
//! missing one is exit 64 naming the field (before the fix it said "ok").

use std::process::Command;

use shake_testkit::processes::bin;
use shake_testkit::scratch::{ONE_ENVELOPE, Scratch};

/// `shake-allocator --check-config CONFIG`: its exit status and what it said on stderr.
fn check_config(config: &std::path::Path) -> (Option<i32>, String) {
    let out =
        Command::new(bin("shake-allocator")).arg("--check-config").arg(config).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn check_config_loads_the_tls_files() {
    let scratch = Scratch::new("check-config");
    let config = scratch.config(ONE_ENVELOPE);
    let (code, said) = check_config(&config);
    assert_eq!(code, Some(0), "{said}");
    let text = std::fs::read_to_string(&config).unwrap();
    let ca = scratch.ca().display().to_string();
    std::fs::write(&config, text.replace(&ca, "/nonexistent/ca.pem")).unwrap();
    let (code, stderr) = check_config(&config);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("`tls.edge_ca`") && stderr.contains("/nonexistent/ca.pem"), "{stderr}");
}

/// The admin token's file is checked by `--check-config` as at the start (the check said "ok"
/// for a missing or short token, and the start then failed).
#[test]
fn check_config_reads_the_admin_token() {
    let scratch = Scratch::new("check-config-admin");
    let config = scratch.admin_config();
    let check = || check_config(&config);
    assert_eq!(check().0, Some(0), "{}", check().1);
    std::fs::write(scratch.dir.join("admin.token"), "short\n").unwrap();
    let (code, said) = check();
    assert_eq!(code, Some(64), "{said}");
    assert!(said.contains("`admin_token_file`") && said.contains("16 bytes"), "{said}");
    std::fs::remove_file(scratch.dir.join("admin.token")).unwrap();
    assert_eq!(check().0, Some(64));
}

/// The support and settlement commands read a ledger that exists: a mistyped path is an
/// error, not an empty export, and nothing is created there.
#[test]
fn reading_a_ledger_that_is_not_there_fails_and_creates_nothing() {
    let scratch = Scratch::new("read-missing-ledger");
    let missing = scratch.dir.join("ledgr");
    // A directory that is there but holds no ledger (a parent, a scratch directory).
    let empty = scratch.dir.join("empty");
    std::fs::create_dir(&empty).unwrap();
    for (path, command) in
        [(&missing, "export"), (&missing, "awards"), (&empty, "export"), (&empty, "awards")]
    {
        let out = Command::new(bin("shake-allocator"))
            .args([command, "--ledger"])
            .arg(path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {said}");
        assert!(said.contains("no ledger at"), "{command}: {said}");
    }
    assert!(!missing.exists(), "created {}", missing.display());
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "a ledger created in {}",
        empty.display()
    );
}

/// `--check-config` checks that a fjall ledger's directory can be written (or made): the
/// start's probe found out only after the check had said "ok".
#[test]
fn check_config_finds_a_ledger_directory_that_cannot_be_written() {
    let scratch = Scratch::new("check-config-ledger");
    let config = scratch.config(ONE_ENVELOPE);
    let check = || check_config(&config);
    assert_eq!(check().0, Some(0), "{}", check().1);
    // Under a file, no directory can be made (root ignores permissions; this it cannot).
    let file = scratch.dir.join("not-a-directory");
    std::fs::write(&file, "x").unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    let ledger = scratch.ledger().display().to_string();
    std::fs::write(&config, text.replace(&ledger, &file.join("ledger").display().to_string()))
        .unwrap();
    let (code, said) = check();
    assert_eq!(code, Some(64), "{said}");
    assert!(said.contains("`ledger_path`"), "{said}");
}
