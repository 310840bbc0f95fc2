//! `shake-edge`: the edge node binary. A thin shell: parse the command line, load the
//! configuration, start, wait for a signal.
//!
//! Exit codes: 0 success, 64 bad command line or configuration, 1 any other failure (a
//! worker thread, or a worker's stream to the allocator, that panicked or failed stops the
//! whole edge with 1).
//! Signals: SIGTERM drains (stop accepting, `GoAway` to phones, flush batches, wait for the
//! allocator's answers up to `limits.drain_deadline_ms`); SIGINT stops at once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shake_edge::config::EdgeConfig;
use shake_edge::service;
use shake_ops::config::{EXIT_USAGE, check, load_or_exit};

const BIN: &str = "shake-edge";

#[derive(Parser, Debug)]
#[command(
    name = "shake-edge",
    version,
    args_conflicts_with_subcommands = true,
    about = "Shake edge node: QUIC from phones, session tokens, admission, batching to the allocator"
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
    /// Serve phones until SIGTERM (drain) or SIGINT (stop). For a dev setup, point the
    /// configuration at `shake-allocator dev-certs` output (see edge/shake-edge.example.toml).
    Run {
        /// The TOML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli: Cli = shake_ops::exit::command_line();
    shake_ops::init_logging("info");
    if let Some(path) = cli.check_config {
        return check::<EdgeConfig>(BIN, &path, |c| {
            format!("edge {}, {} workers", c.edge_id, c.worker_count())
        });
    }
    let Some(Command::Run { config }) = cli.command else {
        eprintln!("{BIN}: a command is needed (try --help)");
        return ExitCode::from(EXIT_USAGE);
    };
    let config = match load_or_exit::<EdgeConfig>(BIN, &config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    shake_ops::exit::exit_status(BIN, run(config).map(|()| ExitCode::SUCCESS))
}

fn run(config: EdgeConfig) -> anyhow::Result<()> {
    use shake_ops::signals::{StopSignal, StopSignals};
    let mut edge = service::start(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Handlers in place before the ready line: a SIGTERM right after it drains, never kills.
    let mut signals = {
        let _in_runtime = runtime.enter();
        StopSignals::install()?
    };
    let metrics = edge.metrics_addr.map_or("off".to_owned(), |a| a.to_string());
    // One line on stdout that scripts wait for.
    println!("shake-edge ready addr={} metrics={metrics} workers={}", edge.addr, edge.workers);
    runtime.block_on(async {
        tokio::select! {
            signal = signals.next() => match signal {
                StopSignal::Drain => edge.drain(),
                StopSignal::Stop => edge.stop(),
            },
            failure = edge.failure() => {
                // A worker, or the allocator link, is gone (a bug): its phones' shakes with it.
                // Stop everything, exit non-zero.
                tracing::error!(%failure, "stopping the edge");
                edge.stop();
            }
        }
    });
    // Joined on a thread of its own, so that a SIGINT during the drain still stops at once.
    let stopper = edge.stopper();
    let (joined, done) = tokio::sync::oneshot::channel();
    let joiner = std::thread::spawn(move || {
        let result = edge.join();
        let _ = joined.send(());
        result
    });
    runtime.block_on(async {
        let mut done = done;
        loop {
            tokio::select! {
                _ = &mut done => return,
                signal = signals.next() => if signal == StopSignal::Stop {
                    return stopper.stop();
                },
            }
        }
    });
    joiner.join().map_err(|_| anyhow::anyhow!("the edge's joining thread panicked"))??;
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
