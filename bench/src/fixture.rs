//! A real allocator and a real edge as child processes, for the benchmarks that measure the
//! edge end to end: dev certificates and configurations in a scratch directory (written by the
//! same `scripts/lib.sh` functions the demo and the chaos runs use), one round, the edge
//! pinned to the server core and the allocator to the client core.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::sys;

/// How to start the pair.
#[derive(Debug, Clone)]
pub struct FixtureOptions {
    /// Name of the scratch directory (under the system's temp directory).
    pub name: String,
    /// The round opens this many seconds after the start.
    pub round_opens_in_s: u64,
    /// And lasts this long.
    pub round_s: u64,
    /// Edge workers.
    pub workers: usize,
    /// Core for the edge (all its threads).
    pub server_core: usize,
    /// Core for the allocator.
    pub client_core: usize,
    /// Edge configuration lines to change: (line prefix, replacement line).
    pub edge_overrides: Vec<(String, String)>,
    /// The round's start spread, milliseconds (0: every phone at the opening).
    pub start_spread_ms: u32,
}

/// A running allocator and edge.
#[derive(Debug)]
pub struct Fixture {
    dir: PathBuf,
    allocator: Child,
    edge: Child,
    _stdout: Vec<ChildStdout>,
    /// The edge's phone address.
    pub edge_addr: SocketAddr,
    /// The edge's metrics address.
    pub edge_metrics: SocketAddr,
    /// CA of the edge's certificate.
    pub ca: PathBuf,
    /// When the round opens, Unix milliseconds.
    pub round_opens_at_ms: u64,
}

/// Edge configuration override that turns overload control off: the benchmarks that measure
/// the edge's cost and latency at a steady load measure it without pacing or shedding (the
/// surge benchmark measures those).
pub fn no_overload_control() -> (String, String) {
    ("enabled ".into(), "enabled = false".into())
}

/// What the allocator's ledger held after a run, and its configuration.
#[derive(Debug)]
pub struct Ledger {
    /// `shake-allocator export` lines.
    pub export: String,
    /// The allocator's configuration.
    pub config: shake_allocator::config::Config,
}

/// The directory holding the project's binaries (the one this benchmark runs from).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("binary directory")?.to_owned())
}

fn lib_sh(function: &str, args: &[&str]) -> anyhow::Result<()> {
    let script = format!("source scripts/lib.sh && {function} \"$@\"");
    let status = Command::new("bash").arg("-c").arg(script).arg("lib.sh").args(args).status()?;
    if !status.success() {
        bail!("scripts/lib.sh {function} failed (run from the repository root)");
    }
    Ok(())
}

/// Waits for the `ready` line on a child's stdout and returns its `key=value` fields.
fn ready_line(stdout: &mut BufReader<ChildStdout>, what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line)? == 0 {
            bail!("{what} exited before it was ready (see its log)");
        }
        if line.contains(" ready ") {
            return Ok(line);
        }
    }
}

/// The value of `key=` in a ready line.
pub fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

fn spawn(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<(Child, BufReader<ChildStdout>)> {
    let mut child = Command::new(bin)
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("child stdout")?;
    Ok((child, BufReader::new(stdout)))
}

impl Fixture {
    /// Starts the allocator, then the edge, and waits until both are ready.
    pub fn start(options: &FixtureOptions) -> anyhow::Result<Self> {
        let bins = bin_dir()?;
        let dir = std::env::temp_dir().join(format!("{}-{}", options.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        shake_allocator::dev_certs::generate(&dir.join("certs"), &[1])?;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let round_opens_at_ms = now_ms + options.round_opens_in_s * 1000;
        let opens = round_opens_at_ms.to_string();
        let dir_str = dir.to_str().context("scratch directory path")?;
        let alloc_config = dir.join("allocator.toml");
        let alloc_config_str = alloc_config.to_str().context("path")?;
        let round_s = options.round_s.to_string();
        lib_sh(
            "write_allocator_config",
            &[alloc_config_str, dir_str, "127.0.0.1:0", &opens, &round_s],
        )?;
        if options.start_spread_ms > 0 {
            let text = std::fs::read_to_string(&alloc_config)?;
            let spread = format!("start_spread_ms = {}", options.start_spread_ms);
            let text: Vec<String> = text
                .lines()
                .flat_map(|line| {
                    let extra = line.starts_with("duration_s ").then(|| spread.clone());
                    std::iter::once(line.to_owned()).chain(extra)
                })
                .collect();
            std::fs::write(&alloc_config, text.join("\n") + "\n")?;
        }
        let (allocator, mut alloc_out) =
            spawn(&bins.join("shake-allocator"), &alloc_config, &dir.join("allocator.log"))?;
        let line = ready_line(&mut alloc_out, "the allocator")?;
        let alloc_addr = field(&line, "quic").context("allocator address")?;
        let _ = sys::pin_process(allocator.id(), options.client_core);

        let edge_config = dir.join("edge.toml");
        let workers = options.workers.to_string();
        lib_sh(
            "write_edge_config",
            &[edge_config.to_str().context("path")?, dir_str, "1", &alloc_addr, &workers],
        )?;
        {
            // The load generator connects every phone from one address: the per-source
            // handshake limits (a defence, not what these benchmarks measure) are lifted.
            let lifted = [
                ("handshakes_per_source ", "handshakes_per_source = 1000000"),
                ("new_handshakes_per_source_per_s ", "new_handshakes_per_source_per_s = 1e9"),
                ("new_handshakes_per_source_burst ", "new_handshakes_per_source_burst = 1e9"),
            ];
            let overrides: Vec<(String, String)> = lifted
                .iter()
                .map(|(prefix, line)| ((*prefix).to_owned(), (*line).to_owned()))
                .chain(options.edge_overrides.iter().cloned())
                .collect();
            let text = std::fs::read_to_string(&edge_config)?;
            let text: Vec<String> = text
                .lines()
                .map(|line| {
                    overrides
                        .iter()
                        .rev()
                        .find(|(prefix, _)| line.starts_with(prefix.as_str()))
                        .map_or_else(|| line.to_owned(), |(_, new)| new.clone())
                })
                .collect();
            std::fs::write(&edge_config, text.join("\n") + "\n")?;
        }
        let (edge, mut edge_out) =
            spawn(&bins.join("shake-edge"), &edge_config, &dir.join("edge.log"))?;
        let line = ready_line(&mut edge_out, "the edge")?;
        let edge_addr = field(&line, "addr").context("edge address")?.parse()?;
        let edge_metrics = field(&line, "metrics").context("edge metrics address")?.parse()?;
        sys::pin_process(edge.id(), options.server_core)?;
        Ok(Self {
            ca: dir.join("certs/ca.pem"),
            dir,
            allocator,
            edge,
            _stdout: vec![alloc_out.into_inner(), edge_out.into_inner()],
            edge_addr,
            edge_metrics,
            round_opens_at_ms,
        })
    }

    /// Stops both cleanly, exports the allocator's ledger, and removes the scratch directory.
    pub fn stop_and_export(mut self) -> anyhow::Result<Ledger> {
        let _ = sys::terminate(self.edge.id());
        let _ = self.edge.wait();
        let _ = sys::terminate(self.allocator.id());
        let _ = self.allocator.wait();
        let config_path = self.dir.join("allocator.toml");
        let output = Command::new(bin_dir()?.join("shake-allocator"))
            .args(["export", "--config"])
            .arg(&config_path)
            .stderr(Stdio::inherit())
            .output()
            .context("running shake-allocator export")?;
        if !output.status.success() {
            bail!("shake-allocator export failed");
        }
        let config = shake_allocator::config::Config::load(&config_path)?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(Ledger { export: String::from_utf8(output.stdout)?, config })
    }

    /// The edge's process id.
    pub fn edge_pid(&self) -> u32 {
        self.edge.id()
    }

    /// Stops both cleanly (SIGTERM, then wait) and removes the scratch directory.
    pub fn stop(mut self) {
        let _ = sys::terminate(self.edge.id());
        let _ = self.edge.wait();
        let _ = sys::terminate(self.allocator.id());
        let _ = self.allocator.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A benchmark that failed half way must not leave servers behind.
        let _ = self.edge.kill();
        let _ = self.allocator.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_fields() {
        let line = "shake-edge ready addr=127.0.0.1:4433 metrics=127.0.0.1:9000 workers=1\n";
        assert_eq!(field(line, "addr").as_deref(), Some("127.0.0.1:4433"));
        assert_eq!(field(line, "workers").as_deref(), Some("1"));
        assert_eq!(field(line, "quic"), None);
    }
}
