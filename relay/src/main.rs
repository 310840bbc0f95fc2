//! `shake-relay`: a UDP relay for fault tests. Put it between phones and an edge, or between an
//! edge and the allocator, and it drops, delays or cuts datagrams both ways. Loopback only by
//! intent: chaos tests never aim it at another machine.
//!
//! Prints `shake-relay ready addr=ADDR` once listening; on SIGTERM or SIGINT prints one JSON
//! line of counters and exits 0.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use shake_relay::faults::{Cut, FaultPlan};
use shake_relay::{Relay, RelayConfig};

/// UDP relay that drops, delays and cuts datagrams (fault tests on loopback).
#[derive(Parser, Debug)]
#[command(name = "shake-relay", version)]
struct Cli {
    /// Address to listen on (clients send here): loopback only.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address to forward to: loopback only.
    #[arg(long)]
    upstream: SocketAddr,
    /// Share of datagrams dropped at random, each way (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Extra one-way delay, milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Drop everything from FROM seconds after the relay starts, for LENGTH seconds
    /// (FROM+LENGTH); repeatable.
    #[arg(long = "cut", value_name = "FROM+LENGTH")]
    cuts: Vec<Cut>,
    /// Seed of the loss draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Most distinct clients over the relay's life (more are dropped and counted).
    #[arg(long, default_value_t = 4_096)]
    max_clients: usize,
    /// Most datagrams waiting out the delay, per direction.
    #[arg(long, default_value_t = 65_536)]
    queue: usize,
}

fn main() -> ExitCode {
    let cli: Cli = shake_ops::exit::command_line();
    if !(0.0..=1.0).contains(&cli.loss) {
        eprintln!("shake-relay: --loss must be between 0 and 1");
        return ExitCode::from(64);
    }
    for (flag, addr) in [("--listen", cli.listen), ("--upstream", cli.upstream)] {
        if !shake_relay::is_loopback(addr) {
            eprintln!(
                "shake-relay: {flag} {addr} is not a loopback address (tests on this machine only)"
            );
            return ExitCode::from(64);
        }
    }
    if cli.queue == 0 || cli.max_clients == 0 {
        eprintln!("shake-relay: --queue and --max-clients must be at least 1");
        return ExitCode::from(64);
    }
    shake_ops::exit::exit_status("shake-relay", run(cli).map(|()| ExitCode::SUCCESS))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut signals = shake_ops::signals::StopSignals::install()?;
        let plan = FaultPlan {
            loss: cli.loss,
            delay: Duration::from_millis(cli.delay_ms),
            cuts: cli.cuts,
            seed: cli.seed,
        };
        let config = RelayConfig {
            listen: cli.listen,
            upstream: cli.upstream,
            plan,
            max_clients: cli.max_clients,
            queue: cli.queue,
        };
        let relay = Relay::start(config).await.context("binding the relay")?;
        println!("shake-relay ready addr={}", relay.addr);
        // Either signal ends the relay: it holds nothing worth draining.
        let _ = signals.next().await;
        println!("{}", serde_json::to_string(&relay.report())?);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
