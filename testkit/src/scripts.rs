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

/// Every environment variable the scripts read as a setting (`grep -oh '${[A-Z_]*:-'
/// scripts/*.sh`); `scripts_knobs_are_all_listed` checks the list against the scripts.
pub const SCRIPT_KNOBS: &[&str] = &[
    "COMMIT_LANES",
    "CONNECT_RATE",
    "HOSTILE_P99_FLOOR_MS",
    "HOSTILE_PAIRS",
    "HOSTILE_RATIO_MAX",
    "LEAD_S",
    "LEDGER",
    "PG_OWNER_PID",
    "PG_TLS_CERT",
    "PG_TLS_KEY",
    "PG_URL",
    "PHONES",
    "ROUND_S",
    "SCENARIO",
    "SCREENSHOT",
    "SHAKES_PER_CORE_S",
    "SHAKE_BIN_DIR",
    "SHAKE_CHAOS_DIR",
    "SHAKE_DEMO_DIR",
    "SHAKE_RATE",
    "SHAKE_TEST_BACKTRACE",
    "SHOW",
];

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
    // The scripts' own knobs come from the test alone: one exported in the caller's shell
    // (`PG_URL` would send the demo's test to that database) must not reach them.
    for knob in SCRIPT_KNOBS {
        command.env_remove(knob);
    }
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

/// A promtool for the alert rules' tests (`scripts/promtool.sh`: the one on `PATH`, else one
/// taken from Debian's prometheus package); panics saying why there is none.
pub fn promtool() -> PathBuf {
    let output = Command::new(script("promtool.sh"))
        .output()
        .unwrap_or_else(|err| panic!("running scripts/promtool.sh: {err}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/promtool.sh found no promtool:\n{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    PathBuf::from(stdout.lines().last().expect("promtool.sh prints its path").trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `${NAME:-` a script reads is in [`SCRIPT_KNOBS`]: a knob added to a script and
    /// not here would leak in from the caller's shell.
    #[test]
    fn scripts_knobs_are_all_listed() {
        let dir = repo_root().join("scripts");
        let mut read = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "sh") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for piece in text.split("${").skip(1) {
                if let Some((name, _)) = piece.split_once(":-")
                    && name.starts_with(|c: char| c.is_ascii_uppercase())
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                {
                    read.insert(name.to_owned());
                }
            }
        }
        let listed: std::collections::BTreeSet<String> =
            SCRIPT_KNOBS.iter().map(|k| (*k).to_owned()).collect();
        let missing: Vec<&String> = read.difference(&listed).collect();
        assert!(missing.is_empty(), "scripts read knobs not in SCRIPT_KNOBS: {missing:?}");
        assert!(read.contains("PG_URL"), "the scan found the scripts' knobs");
    }
}
