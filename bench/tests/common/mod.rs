//! What the end-to-end script tests share: the project's binaries from the `target/` directory
//! this test was built into, and running a script to its final JSON line.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding this build's binaries; every one of `bins` must be there.
pub(crate) fn bin_dir(bins: &[&str]) -> PathBuf {
    let swarm = Path::new(env!("CARGO_BIN_EXE_shake-swarm"));
    let dir = swarm.parent().expect("binary directory").to_owned();
    for bin in bins {
        assert!(
            dir.join(bin).exists(),
            "{bin} is not built in {}: run `cargo test --workspace` (or cargo build) first",
            dir.display()
        );
    }
    dir
}

/// Runs `scripts/NAME` from the repository root with `args` and `env`, asserts it succeeded,
/// and returns its last line parsed as JSON.
pub(crate) fn run_script(
    name: &str,
    args: &[&str],
    env: &[(&str, &Path)],
    vars: &[(&str, &str)],
) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new("bash");
    command.arg(root.join("scripts").join(name)).args(args).current_dir(&root);
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
