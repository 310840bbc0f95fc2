//! Failpoints that hold a real binary's thread (`shake_ops::supervise::failpoint_hold`): where
//! such a process writes its marks, and the wait for one, so that a test acts once the hold
//! has begun rather than after a sleep that may end before it (and pass without the path it
//! names being taken).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The mark file of the process started with configuration `config`.
pub fn mark_file(config: &Path) -> PathBuf {
    config.with_extension("failpoints")
}

/// `command`, started with `config`, switched to the failpoints `names` and marking their
/// holds in [`mark_file`] (emptied first: marks of an earlier process with it do not count).
pub fn switch_on(command: &mut Command, config: &Path, names: &str) {
    let mark = mark_file(config);
    let _ = std::fs::remove_file(&mark);
    command.env("SHAKE_FAILPOINT", names).env("SHAKE_FAILPOINT_MARK", mark);
}

/// Waits, `within` at most, until the process started with `config` has begun a hold of
/// failpoint `name`; panics saying so otherwise.
pub async fn until_held(config: &Path, name: &str, within: Duration) {
    let (mark, started) = (mark_file(config), Instant::now());
    loop {
        let marks = std::fs::read_to_string(&mark).unwrap_or_default();
        if marks.lines().any(|line| line == name) {
            return;
        }
        assert!(started.elapsed() < within, "failpoint {name} not held within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
