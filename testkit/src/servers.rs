//! The two servers as processes: `shake-allocator run` and `shake-edge run` on a configuration
//! file, each known by the addresses its ready line names.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::processes::{Process, bin};

/// `BIN run --config CONFIG`.
fn run_command(name: &str, config: &Path) -> Command {
    let mut command = Command::new(bin(name));
    command.args(["run", "--config"]).arg(config);
    command
}

/// A running allocator.
#[derive(Debug)]
pub struct Allocator {
    /// The process; killed on drop.
    pub process: Process,
    /// Where edges connect (QUIC).
    pub quic: SocketAddr,
    /// The metrics endpoint.
    pub metrics: SocketAddr,
    /// The admin API, when configured.
    pub admin: Option<SocketAddr>,
}

impl Allocator {
    /// The allocator serving `config`, to be changed (environment, stderr) and passed to
    /// [`Allocator::spawn`].
    pub fn command(config: &Path) -> Command {
        run_command("shake-allocator", config)
    }

    /// Starts `command` (from [`Allocator::command`]) and waits until it is ready.
    pub fn spawn(command: Command) -> anyhow::Result<Self> {
        let process = Process::start(command, "the allocator")?;
        Ok(Self {
            quic: process.addr("quic")?,
            metrics: process.addr("metrics")?,
            // `admin=off` when the admin API is not configured.
            admin: process.field("admin").and_then(|a| a.parse().ok()),
            process,
        })
    }

    /// The allocator serving `config`, its warnings and errors on the test's stderr.
    pub fn start(config: &Path) -> Self {
        let mut command = Self::command(config);
        command.env("RUST_LOG", "warn").stderr(Stdio::inherit());
        Self::spawn(command).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// A running edge.
#[derive(Debug)]
pub struct Edge {
    /// The process; killed on drop.
    pub process: Process,
    /// Where phones connect (QUIC).
    pub addr: SocketAddr,
    /// The metrics endpoint (also the edge's `/users/{id}`).
    pub metrics: SocketAddr,
}

impl Edge {
    /// The edge serving `config`, to be changed (environment, stderr) and passed to
    /// [`Edge::spawn`].
    pub fn command(config: &Path) -> Command {
        run_command("shake-edge", config)
    }

    /// Starts `command` (from [`Edge::command`]) and waits until it is ready.
    pub fn spawn(command: Command) -> anyhow::Result<Self> {
        let process = Process::start(command, "the edge")?;
        Ok(Self { addr: process.addr("addr")?, metrics: process.addr("metrics")?, process })
    }

    /// The edge serving `config`, its log dropped (a test that provokes what it logs).
    pub fn start_quiet(config: &Path) -> Self {
        let mut command = Self::command(config);
        command.env("RUST_LOG", "error").stderr(Stdio::null());
        Self::spawn(command).unwrap_or_else(|e| panic!("{e:#}"))
    }
}
