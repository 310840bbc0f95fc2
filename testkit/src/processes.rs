//! The project's binaries as child processes: where the build put them, starting one and
//! waiting for its ready line (`<name> ready key=value ...`, the one line a server prints on
//! stdout), reading that line's fields, and stopping it: SIGTERM and wait, or kill, which
//! dropping it does.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};

use anyhow::{Context, bail};

/// The directory holding this build's binaries: the one the running executable is in, or
/// above it for a test executable (`target/<profile>/deps/`). Every one of `required` must be
/// there.
pub fn bin_dir(required: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe.parent().expect("the executable's directory").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    for bin in required {
        assert!(
            dir.join(bin).exists(),
            "{bin} is not built in {}: run `cargo build --workspace --bins` first (scripts/test.sh \
             does)",
            dir.display()
        );
    }
    dir
}

/// The path of the project's binary `name`, which must be built.
pub fn bin(name: &str) -> PathBuf {
    bin_dir(&[name]).join(name)
}

/// The value of `key=` in a ready line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// How long a binary may take to print its ready line (a release build starts in well under a
/// second; a debug build under a loaded CI machine in a few).
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);

/// The longest a test waits for a process it started to exit: longer than any drain a test
/// configures (a server's drain is at most 60 s).
pub const EXIT_WITHIN: std::time::Duration = std::time::Duration::from_secs(120);

/// A running binary that has printed its ready line; killed on drop.
#[derive(Debug)]
pub struct Process {
    child: Child,
    what: String,
    ready: String,
    // Held open: a server that writes to a closed stdout fails.
    _stdout: BufReader<ChildStdout>,
}

impl Process {
    /// Starts `command` with its stdout piped and waits for its ready line; `what` names it in
    /// errors.
    pub fn start(mut command: Command, what: &str) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {what} ({:?})", command.get_program()))?;
        let stdout = BufReader::new(child.stdout.take().context("the child's stdout")?);
        // Read on a thread of its own, so that a child that hangs before its ready line fails
        // the test after READY_WITHIN instead of holding it (and CI) for ever.
        let (found, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut stdout = stdout;
            let mut ready = String::new();
            loop {
                ready.clear();
                match stdout.read_line(&mut ready) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if ready.contains(" ready ") => {
                        let _ = found.send((ready, stdout));
                        return;
                    }
                    Ok(_) => {}
                }
            }
        });
        match wait.recv_timeout(READY_WITHIN) {
            Ok((ready, stdout)) => {
                Ok(Self { child, what: what.to_owned(), ready, _stdout: stdout })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                let _ = child.wait();
                bail!("{what} exited before it was ready (see its log)");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{what} was not ready within {} s (see its log)", READY_WITHIN.as_secs());
            }
        }
    }

    /// The value of field `key` of the ready line.
    pub fn field(&self, key: &str) -> Option<&str> {
        field(&self.ready, key)
    }

    /// The address in field `key` of the ready line.
    pub fn addr(&self, key: &str) -> anyhow::Result<SocketAddr> {
        let value = self.field(key).with_context(|| {
            format!("no {key}= in the ready line of {}: {}", self.what, self.ready)
        })?;
        value.parse().with_context(|| format!("{key}={value} of {} is not an address", self.what))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends signal `name` (`TERM`, `INT`, ...). Until it is waited for the process keeps its
    /// id, so the signal cannot reach another process.
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// SIGTERM (the servers' clean stop), then waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait()
    }

    /// Waits for the exit, at most [`EXIT_WITHIN`]: a process that outlives it hangs (a drain
    /// that never ends), and is killed and reported, rather than holding CI for ever.
    pub fn wait(&mut self) -> ExitStatus {
        self.wait_within(EXIT_WITHIN)
    }

    /// [`Self::wait`], at most `within`.
    pub fn wait_within(&mut self, within: std::time::Duration) -> ExitStatus {
        exit_within(&mut self.child, within, &self.what)
    }

    /// How it exited, if it has.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let what = &self.what;
        self.child.try_wait().unwrap_or_else(|e| panic!("polling {what}: {e}"))
    }

    /// SIGKILL, then waits: the machine is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends signal `name` (`TERM`, `INT`, ...) to process `pid`. One that has exited already
/// cannot be signalled: that failure of kill is not the caller's concern, and waiting tells how
/// it ended.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .expect("running kill");
}

/// Waits (at most 10 s) until process `pid` handles each of `signals` (numbers: 2 SIGINT,
/// 15 SIGTERM, 1 SIGHUP), as its `SigCgt` mask says: a signal sent before a binary installed
/// its handlers takes the default action (the end), which a test of the handler must not
/// mistake for it. Panics if the process is gone or never installs them.
pub fn wait_for_handlers(pid: u32, signals: &[u32]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("process {pid} is gone: {e}"));
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or(0);
        if signals.iter().all(|&n| caught & (1 << (n - 1)) != 0) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{pid} never handled {signals:?}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Waits for `child` to exit, at most `within`: one that outlives it is killed and the test
/// fails, naming it `what`.
pub fn exit_within(child: &mut Child, within: std::time::Duration, what: &str) -> ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not exit within {within:?}: killed");
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A test or benchmark that failed half way must not leave servers behind.
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_fields() {
        let line = "shake-edge ready addr=127.0.0.1:4433 metrics=127.0.0.1:9000 workers=1\n";
        assert_eq!(field(line, "addr"), Some("127.0.0.1:4433"));
        assert_eq!(field(line, "workers"), Some("1"));
        assert_eq!(field(line, "quic"), None);
        assert_eq!(field(line, "add"), None, "a key is matched whole");
    }
}
