//! `shake-allocator`: the central allocator binary. A thin shell over the library: parse the
//! command line, load the configuration, run.
//!
//! Exit codes: 0 success, 64 bad command line or configuration, 1 any other failure.
//! Signals: SIGTERM drains (answers what is in flight, then exits), SIGINT stops at once.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shake_allocator::config::Config;
use shake_allocator::ledger::{self, FjallLedger, LedgerStore};
use shake_allocator::service::{self, Shutdown};
use shake_allocator::{dev_certs, export};
use shake_ops::config::{EXIT_USAGE, check, load_or_exit};

const BIN: &str = "shake-allocator";

#[derive(Parser, Debug)]
#[command(
    name = "shake-allocator",
    version,
    args_conflicts_with_subcommands = true,
    about = "Shake central allocator: rounds, prize pools, the draw and the durable award ledger"
)]
struct Cli {
    /// Validate a configuration file and exit (0: valid; 64: invalid, with the field named).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve edges until SIGTERM (drain) or SIGINT (stop).
    Run {
        /// The TOML configuration (see allocator/shake-allocator.example.toml).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write a development CA, an allocator certificate and edge client certificates.
    DevCerts {
        /// Output directory.
        dir: PathBuf,
        /// Edge ids to issue client certificates for.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        edges: Vec<u64>,
    },
    /// List awards from the ledger. A fjall ledger is locked while its allocator runs (stop it
    /// first); a PostgreSQL ledger is read while the show runs.
    Awards {
        /// The fjall ledger directory (or take the ledger from --config).
        #[arg(long, required_unless_present = "config")]
        ledger: Option<PathBuf>,
        /// Take the ledger (fjall or PostgreSQL) from this configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only this user's awards.
        #[arg(long)]
        user: Option<u64>,
        /// Only this round's awards.
        #[arg(long)]
        round: Option<u32>,
        /// Only awards no phone has acknowledged yet.
        #[arg(long)]
        undelivered: bool,
    },
    /// Every award as JSON lines, for settlement.
    Export {
        /// The fjall ledger directory (or take the ledger from --config).
        #[arg(long, required_unless_present = "config")]
        ledger: Option<PathBuf>,
        /// Take the ledger (fjall or PostgreSQL) from this configuration.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // fjall narrates its recovery at info; keep our own lines readable.
    shake_ops::init_logging("info,fjall=warn,lsm_tree=warn");
    if let Some(path) = cli.check_config {
        return check::<Config>(BIN, &path, |c| format!("{} rounds", c.rounds.len()));
    }
    let Some(command) = cli.command else {
        eprintln!("{BIN}: a command is needed (try --help)");
        return ExitCode::from(EXIT_USAGE);
    };
    match run(command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("{BIN}: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The ledger named on the command line: a fjall directory, or whatever a configuration names.
fn open_ledger(
    ledger: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<Box<dyn LedgerStore>> {
    let store: Box<dyn LedgerStore> = match (ledger, config) {
        (Some(path), _) => Box::new(FjallLedger::open(&path).with_context(|| {
            format!("opening {} (a running allocator holds it locked)", path.display())
        })?),
        (None, Some(config)) => ledger::open(&Config::load(&config)?)
            .context("opening the configured ledger (a running allocator locks a fjall one)")?,
        (None, None) => anyhow::bail!("give --ledger or --config"),
    };
    Ok(store)
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = match load_or_exit::<Config>(BIN, &config) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(config))?;
        }
        Command::DevCerts { dir, edges } => {
            for path in dev_certs::generate(&dir, &edges)? {
                println!("{}", path.display());
            }
        }
        Command::Awards { ledger, config, user, round, undelivered } => {
            let mut ledger = open_ledger(ledger, config)?;
            let awards = ledger.awards(&mut |a| {
                user.is_none_or(|u| a.user_id == u)
                    && round.is_none_or(|r| a.round_id == r)
                    && (!undelivered || !a.delivered)
            })?;
            println!(
                "{:>10} {:>6} {:>14} {:>12} {:>10}",
                "award", "round", "user", "prize", "delivered"
            );
            for a in &awards {
                let prize = match &a.prize {
                    shake_proto::Prize::Cash { cents } => {
                        format!("{}.{:02}", cents / 100, cents % 100)
                    }
                    shake_proto::Prize::Gift { sku } => sku.clone(),
                };
                println!(
                    "{:>10} {:>6} {:>14} {:>12} {:>10}",
                    a.award_id, a.round_id, a.user_id, prize, a.delivered
                );
            }
            println!("{} awards", awards.len());
        }
        Command::Export { ledger, config } => {
            let mut ledger = open_ledger(ledger, config)?;
            for award in ledger.awards(&mut |_| true)? {
                println!("{}", export::award_json(&award));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let shutdown = Shutdown::default();
    let running = service::start(config, shutdown.clone()).await?;
    // One line on stdout that scripts wait for.
    let metrics = running.metrics_addr.map_or("off".to_owned(), |a| a.to_string());
    println!("shake-allocator ready quic={} metrics={metrics}", running.quic_addr);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM: draining");
                    shutdown.drain.cancel();
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT: stopping");
                    shutdown.stop.cancel();
                }
            }
        })
    };
    let result = running.wait().await;
    signals.abort();
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
