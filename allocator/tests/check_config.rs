//! `--check-config` loads the certificates and keys the allocator's configuration names: a
//! missing one is exit 64 naming the field (before the fix it said "ok"); with
//! `--against-ledger` it also replays the ledger the configuration names.

use std::process::Command;

use shake_proto::{AllocatorFrame, Batch, BatchEntry};
use shake_testkit::edge_link::edge_worker;
use shake_testkit::now_ms;
use shake_testkit::processes::bin;
use shake_testkit::scratch::{ONE_ENVELOPE, Scratch};
use shake_testkit::servers::Allocator;

/// `shake-allocator --check-config CONFIG`: its exit status and what it said on stderr.
fn check_config(config: &std::path::Path) -> (Option<i32>, String) {
    let out =
        Command::new(bin("shake-allocator")).arg("--check-config").arg(config).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `shake-allocator --check-config CONFIG --against-ledger`: its exit status, and what it
/// said on stdout and stderr.
fn against_ledger(config: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(bin("shake-allocator"))
        .arg("--check-config")
        .arg(config)
        .arg("--against-ledger")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.code(), said.into_owned())
}

/// `--check-config --against-ledger` replays the ledger on the configured rounds as the next
/// start would: 0, with what it read, for the configuration that wrote it; 65 naming the award
/// for an edit the ledger does not fit, which the start refuses too (65, which its unit does
/// not restart); 1 while the allocator
/// runs and holds its fjall ledger locked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_against_the_ledger_replays_it_as_a_start_would() {
    let scratch = Scratch::new("check-against-ledger");
    let config = scratch.config(&format!("release = \"immediate\"\n{ONE_ENVELOPE}"));
    let mut alloc = Allocator::start(&config);
    let mut stream = edge_worker(alloc.quic, &scratch, 5).await.unwrap();
    let mut won = 0;
    for seq in 1..=20 {
        let entries: Vec<BatchEntry> =
            (0..20).map(|i| BatchEntry { user_id: seq * 100 + i, offset_us: i as u32 }).collect();
        stream.send(&AllocatorFrame::Batch(Batch::new(seq, 1, now_ms(), &entries))).await;
        won += stream.next_result().await.unwrap().1.len();
        if won > 0 {
            break;
        }
    }
    assert_eq!(won, 1, "the one envelope was won");
    let (code, said) = against_ledger(&config);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("a running allocator locks a fjall one"), "{said}");
    drop(stream);
    alloc.process.signal("TERM");
    assert!(alloc.process.wait().success());

    let (code, said) = against_ledger(&config);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("replays its ledger (1 awards, 0 round commands)"), "{said}");

    // The envelope, won at 100 cents, made 200 in the configuration.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("total_cents = 100", "total_cents = 200")).unwrap();
    assert_eq!(check_config(&config).0, Some(0), "a valid configuration");
    let (code, said) = against_ledger(&config);
    assert_eq!(code, Some(65), "{said}");
    let refusal = "ledger award 1 does not fit the configured round 1";
    assert!(said.contains(refusal), "{said}");
    let start =
        Command::new(bin("shake-allocator")).args(["run", "--config"]).arg(&config).output();
    let start = start.unwrap();
    assert_eq!(start.status.code(), Some(65), "no restart can mend it");
    assert!(String::from_utf8_lossy(&start.stderr).contains(refusal), "the start refuses it too");

    // Without --check-config, the flag is a usage error.
    let alone = Command::new(bin("shake-allocator")).arg("--against-ledger").output().unwrap();
    assert_eq!(alone.status.code(), Some(64));
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
