//! A real allocator and a real edge as child processes, for the benchmarks that measure the
//! edge end to end: dev certificates and configurations in a scratch directory (written by the
//! same `scripts/lib.sh` functions the demo and the chaos runs use), one round, the edge
//! pinned to the server core and the allocator to the client core.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::now_ms;
use crate::processes::bin;
use crate::scratch::dev_certs;
use crate::servers::{Allocator, Edge};

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
    /// Pins every thread of a process to a core: the benchmarks' own system call (the kit
    /// makes none).
    pub pin: fn(u32, usize) -> std::io::Result<()>,
    /// Edge configuration lines to change: (line prefix, replacement line).
    pub edge_overrides: Vec<(String, String)>,
    /// The round's start spread, milliseconds (0: every phone at the opening).
    pub start_spread_ms: u32,
}

/// A running allocator and edge; killed on drop, so that a benchmark that failed half way
/// leaves no server behind.
// Fields drop in order: the edge before the allocator it is connected to.
#[derive(Debug)]
pub struct Fixture {
    dir: PathBuf,
    edge: Edge,
    allocator: Allocator,
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

fn lib_sh(function: &str, args: &[&str]) -> anyhow::Result<()> {
    let script = format!("source scripts/lib.sh && {function} \"$@\"");
    let status = Command::new("bash").arg("-c").arg(script).arg("lib.sh").args(args).status()?;
    if !status.success() {
        bail!("scripts/lib.sh {function} failed (run from the repository root)");
    }
    Ok(())
}

/// `command` with its log (stderr) in `log`.
fn logging_to(mut command: Command, log: &Path) -> anyhow::Result<Command> {
    let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command.stderr(Stdio::from(file));
    Ok(command)
}

impl Fixture {
    /// Starts the allocator, then the edge, and waits until both are ready.
    pub fn start(options: &FixtureOptions) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("{}-{}", options.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dev_certs(&dir.join("certs"));
        let round_opens_at_ms = now_ms() + options.round_opens_in_s * 1000;
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
        let allocator = Allocator::spawn(logging_to(
            Allocator::command(&alloc_config),
            &dir.join("allocator.log"),
        )?)?;
        let _ = (options.pin)(allocator.process.pid(), options.client_core);

        let edge_config = dir.join("edge.toml");
        let workers = options.workers.to_string();
        let alloc_addr = allocator.quic.to_string();
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
            // An override that meets no line would change nothing, silently.
            if let Some((prefix, _)) = overrides
                .iter()
                .find(|(prefix, _)| !text.lines().any(|line| line.starts_with(prefix.as_str())))
            {
                anyhow::bail!("no line of the edge's configuration starts with {prefix:?}");
            }
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
        let edge = Edge::spawn(logging_to(Edge::command(&edge_config), &dir.join("edge.log"))?)?;
        (options.pin)(edge.process.pid(), options.server_core)?;
        Ok(Self {
            ca: dir.join("certs/ca.pem"),
            edge_addr: edge.addr,
            edge_metrics: edge.metrics,
            dir,
            edge,
            allocator,
            round_opens_at_ms,
        })
    }

    /// Stops both cleanly, exports the allocator's ledger, and removes the scratch directory.
    pub fn stop_and_export(mut self) -> anyhow::Result<Ledger> {
        self.terminate();
        let config_path = self.dir.join("allocator.toml");
        let output = Command::new(bin("shake-allocator"))
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
        self.edge.process.pid()
    }

    /// Stops both cleanly (SIGTERM, then wait) and removes the scratch directory.
    pub fn stop(mut self) {
        self.terminate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// SIGTERM to the edge, then to the allocator, each waited for.
    fn terminate(&mut self) {
        self.edge.process.terminate();
        self.allocator.process.terminate();
    }
}
