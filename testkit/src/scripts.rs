//! The repository's scripts (`scripts/`), found from this crate's source and run to their
//! final JSON line.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root, where this crate's source is.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The path of `scripts/NAME`.
pub fn script(name: &str) -> PathBuf {
    repo_root().join("scripts").join(name)
}

/// The longest a script run by a test may take, seconds (the demo and the short chaos run
/// take two to three minutes on a 2-core machine).
const SCRIPT_WITHIN_S: u32 = 1_200;

/// Runs `scripts/NAME` from the repository root with `args`, the paths `env` and the values
/// `vars` in its environment, asserts it succeeded, and returns its last line parsed as JSON.
pub fn run_script(
    name: &str,
    args: &[&str],
    env: &[(&str, &Path)],
    vars: &[(&str, &str)],
) -> serde_json::Value {
    // Bounded: a script that hangs fails its test (exit 124) instead of holding CI.
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=10", &SCRIPT_WITHIN_S.to_string(), "bash"])
        .arg(script(name))
        .args(args)
        .current_dir(repo_root());
    for (key, path) in env {
        command.env(key, path);
    }
    for (key, value) in vars {
        command.env(key, value);
    }
    let output = command.output().unwrap_or_else(|err| panic!("running scripts/{name}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{name} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let line = stdout.lines().last().expect("a final JSON line");
    serde_json::from_str(line)
        .unwrap_or_else(|err| panic!("the last line is not JSON ({err}): {line}"))
}
