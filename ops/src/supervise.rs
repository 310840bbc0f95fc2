//! Threads whose end is news: every server thread that must live as long as the process is
//! spawned here, and its end (normal, failed or panicked) is reported on one channel, so the
//! binary can stop everything and exit non-zero instead of running on with a piece missing
//! (a dead edge worker's `SO_REUSEPORT` socket would silently take its phones with it).
//!
//! Also the one fault-injection point the tests use: [`failpoint`] reads `SHAKE_FAILPOINT`
//! (a comma-separated list of names) once, so a test can make a real binary panic in a named
//! place and check that the process stops with a non-zero exit. Unset, it costs one branch.

use std::sync::OnceLock;

use tokio::sync::mpsc;

/// How a supervised thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadEnd {
    /// Its function returned `Ok`.
    Finished,
    /// Its function returned an error.
    Failed(String),
    /// It panicked.
    Panicked,
}

/// One thread's end, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The thread's name.
    pub name: String,
    /// How.
    pub end: ThreadEnd,
}

/// Reports a thread's end when dropped, panicking or not.
struct EndGuard {
    name: String,
    end: Option<ThreadEnd>,
    tx: mpsc::UnboundedSender<Ended>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        let end = if std::thread::panicking() {
            ThreadEnd::Panicked
        } else {
            self.end.take().unwrap_or(ThreadEnd::Panicked)
        };
        let _ = self.tx.send(Ended { name: std::mem::take(&mut self.name), end });
    }
}

/// Where supervised threads report.
#[derive(Debug)]
pub struct Supervisor {
    tx: mpsc::UnboundedSender<Ended>,
    rx: mpsc::UnboundedReceiver<Ended>,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self { tx, rx }
    }
}

impl Supervisor {
    /// Spawns `f` on a named thread whose end will be reported.
    pub fn spawn<E: std::fmt::Display>(
        &self,
        name: String,
        f: impl FnOnce() -> Result<(), E> + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let tx = self.tx.clone();
        std::thread::Builder::new().name(name.clone()).spawn(move || {
            let mut guard = EndGuard { name, end: None, tx };
            guard.end = Some(match f() {
                Ok(()) => ThreadEnd::Finished,
                Err(err) => ThreadEnd::Failed(err.to_string()),
            });
        })
    }

    /// The next thread to end (waits). `None` only if every sender is gone.
    pub async fn next_end(&mut self) -> Option<Ended> {
        self.rx.recv().await
    }

    /// Ends reported so far, without waiting.
    pub fn ended(&mut self) -> Vec<Ended> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

/// Every fault a binary can be told to inject. A name outside this list in `SHAKE_FAILPOINT`
/// is refused at start ([`unknown_failpoints`]): a misspelt fault would otherwise inject
/// nothing, and the test that set it would pass without the fault it meant to survive.
pub const FAILPOINTS: &[&str] = &[
    "edge-worker-panic",
    "edge-link-stream-panic",
    "allocator-actor-panic",
    "allocator-slow-commit",
    "allocator-slow-start",
    "allocator-commit-hangs",
    "allocator-slow-award-read",
    "allocator-award-read-hangs",
    "allocator-slow-takeover-read",
    "allocator-takeover-read-fails",
    "allocator-slow-look",
    "allocator-stall-in-copy",
    "allocator-lane-open-fails",
    "allocator-endpoint-lost",
    "allocator-hold-edge-connected",
];

/// The names in a `SHAKE_FAILPOINT` value that are not in [`FAILPOINTS`].
pub fn unknown_failpoints(value: &str) -> Vec<String> {
    failpoint_names(value).filter(|name| !FAILPOINTS.contains(&name.as_str())).collect()
}

fn failpoint_names(value: &str) -> impl Iterator<Item = String> + '_ {
    value.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

/// True if the fault named `name` is switched on in `SHAKE_FAILPOINT` (tests only).
pub fn failpoint(name: &str) -> bool {
    static ON: OnceLock<Vec<String>> = OnceLock::new();
    debug_assert!(FAILPOINTS.contains(&name), "failpoint {name:?} is not in FAILPOINTS");
    ON.get_or_init(|| {
        std::env::var("SHAKE_FAILPOINT").map(|v| failpoint_names(&v).collect()).unwrap_or_default()
    })
    .iter()
    .any(|on| on == name)
}

/// Holds the calling thread for `hold` where the fault `name` is on (tests only), having first
/// appended the name, a line, to the file `SHAKE_FAILPOINT_MARK` names, if set: a test waits
/// for the mark instead of guessing with a sleep when the hold began. True if it held.
pub fn failpoint_hold(name: &str, hold: std::time::Duration) -> bool {
    if !failpoint_marked(name) {
        return false;
    }
    std::thread::sleep(hold);
    true
}

/// True if the fault `name` is on (tests only), its mark appended as [`failpoint_hold`] does:
/// for a hold the caller makes itself (an async task's, which must not block its thread).
pub fn failpoint_marked(name: &str) -> bool {
    if !failpoint(name) {
        return false;
    }
    if let Some(path) = std::env::var_os("SHAKE_FAILPOINT_MARK") {
        use std::io::Write;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
        if let Err(err) = file.and_then(|mut file| writeln!(file, "{name}")) {
            tracing::warn!(%err, name, "could not mark the failpoint's hold");
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_failpoint_is_named_and_known_ones_pass() {
        assert!(unknown_failpoints("").is_empty());
        assert!(unknown_failpoints(" allocator-slow-commit , edge-worker-panic").is_empty());
        assert_eq!(
            unknown_failpoints("allocator-slow-commit,alocator-actor-panic"),
            vec!["alocator-actor-panic".to_owned()]
        );
    }

    #[test]
    fn every_end_is_reported_with_how() {
        let mut supervisor = Supervisor::default();
        let handles = vec![
            supervisor.spawn("fine".into(), || Ok::<(), String>(())).unwrap(),
            supervisor.spawn("failed".into(), || Err::<(), String>("no socket".into())).unwrap(),
            supervisor
                .spawn("panicked".into(), || -> Result<(), String> { panic!("a bug") })
                .unwrap(),
        ];
        for handle in handles {
            let _ = handle.join();
        }
        let mut ended = supervisor.ended();
        ended.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(
            ended,
            vec![
                Ended { name: "failed".into(), end: ThreadEnd::Failed("no socket".into()) },
                Ended { name: "fine".into(), end: ThreadEnd::Finished },
                Ended { name: "panicked".into(), end: ThreadEnd::Panicked },
            ]
        );
    }
}
