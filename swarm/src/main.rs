//! `shake-swarm`: the synthetic phone swarm. `run` drives a scenario against edges and reports;
//! `verify` checks the phones' awards against the allocator's ledger export.
//!
//! Exit codes: 0 ok; 2 a `--max-*` threshold was crossed; 3 verification found a broken
//! invariant; 64 a bad scenario or command line; 130 the run was interrupted (SIGINT, SIGTERM
//! or SIGHUP: its report, covering the time it ran, is written and printed all the same); 1
//! anything else.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use shake_ops::config::Validate;
use shake_swarm::report::Report;
use shake_swarm::scenario::Scenario;
use shake_swarm::{self as swarm, verify};

#[derive(Parser, Debug)]
#[command(name = "shake-swarm", version, about = "Synthetic phone swarm for Shake edges")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario (see swarm/scenarios/) and print a summary, then one JSON line.
    Run {
        /// The scenario file.
        #[arg(long, short)]
        scenario: PathBuf,
        /// Override the number of phones.
        #[arg(long)]
        phones: Option<usize>,
        /// Override the run length, seconds.
        #[arg(long)]
        duration: Option<u64>,
        /// Override the edges (repeat for several).
        #[arg(long = "edge")]
        edges: Vec<SocketAddr>,
        /// Override the CA file.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// Override the connect ramp (phones per second; 0 = storm).
        #[arg(long)]
        connect_rate: Option<f64>,
        /// Override each phone's shake rate per second.
        #[arg(long)]
        shake_rate: Option<f64>,
        /// Override what drives the phones: quinn (a tokio task per phone, every role) or loop
        /// (`shake-loop` event loops, honest phones without churn or spike, far cheaper).
        #[arg(long, value_enum)]
        driver: Option<swarm::scenario::PhoneDriver>,
        /// Write the full report (with every award received) as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the per-second time series as JSON lines.
        #[arg(long)]
        timeseries: Option<PathBuf>,
        /// Draw rates and p99 latency over time into an SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Exit 2 if p99 shake-to-outcome (corrected) exceeds this many milliseconds.
        #[arg(long, value_name = "MS")]
        max_p99: Option<f64>,
        /// Exit 2 if more errors than this occurred.
        #[arg(long, value_name = "N")]
        max_errors: Option<u64>,
    },
    /// Compare a run's awards with the ledger (`shake-allocator export` output).
    Verify {
        /// The run's `--json` report.
        #[arg(long)]
        report: PathBuf,
        /// The ledger export (JSON lines).
        #[arg(long)]
        ledger: PathBuf,
        /// The allocator configuration, to check pools and per-user caps.
        #[arg(long)]
        allocator_config: Option<PathBuf>,
        /// The allocator's audit log (`shake-allocator round audit`, JSON lines): rounds added
        /// and pools topped up during the show count in the checks.
        #[arg(long, requires = "allocator_config")]
        commands: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli: Cli = shake_ops::exit::command_line();
    shake_ops::init_logging("warn");
    match cli.command {
        Command::Run {
            scenario,
            phones,
            duration,
            edges,
            ca,
            connect_rate,
            shake_rate,
            driver,
            json,
            timeseries,
            plot,
            max_p99,
            max_errors,
        } => {
            let mut scenario = match Scenario::load(&scenario) {
                Ok(s) => s,
                Err(err) => {
                    eprintln!("shake-swarm: {}: {err}", scenario.display());
                    return ExitCode::from(64);
                }
            };
            if let Some(n) = phones {
                scenario.phones = n;
            }
            if let Some(d) = duration {
                scenario.duration_s = d;
            }
            if !edges.is_empty() {
                scenario.edges = edges;
            }
            if let Some(ca) = ca {
                scenario.ca = ca;
            }
            if let Some(rate) = connect_rate {
                scenario.connect.phones_per_s = rate;
            }
            if let Some(rate) = shake_rate {
                scenario.shaking.rate_per_s = rate;
            }
            if let Some(driver) = driver {
                scenario.driver = driver;
            }
            if let Err(err) = scenario.validate() {
                eprintln!("shake-swarm: {err}");
                return ExitCode::from(64);
            }
            match run(&scenario, json, timeseries, plot) {
                Ok(report) if report.interrupted => ExitCode::from(130),
                Ok(report) => {
                    let mut code = ExitCode::SUCCESS;
                    if max_p99.is_some_and(|max| report.latency_ms.outcome.p99 > max) {
                        eprintln!(
                            "shake-swarm: p99 {:.2} ms is over --max-p99",
                            report.latency_ms.outcome.p99
                        );
                        code = ExitCode::from(2);
                    }
                    let errors: u64 = report.errors.values().sum();
                    if max_errors.is_some_and(|max| errors > max) {
                        eprintln!("shake-swarm: {errors} errors is over --max-errors");
                        code = ExitCode::from(2);
                    }
                    code
                }
                Err(err) => shake_ops::exit::exit_status("shake-swarm", Err(err)),
            }
        }
        Command::Verify { report, ledger, allocator_config, commands } => {
            let verdict = verify_run(&report, &ledger, allocator_config, commands);
            shake_ops::exit::exit_status(
                "shake-swarm",
                verdict.map(|holds| if holds { ExitCode::SUCCESS } else { ExitCode::from(3) }),
            )
        }
    }
}

fn run(
    scenario: &Scenario,
    json: Option<PathBuf>,
    timeseries: Option<PathBuf>,
    plot: Option<PathBuf>,
) -> anyhow::Result<Report> {
    let probe = swarm::phones_socket((std::net::Ipv4Addr::LOCALHOST, 0).into())?;
    let (granted, _) = shake_loop::driver::granted_buffers(&probe)?;
    if granted < swarm::PHONES_SOCKET_BUFFER {
        eprintln!(
            "shake-swarm: the kernel grants {granted} bytes of receive buffer a socket, not {} \
             (raise net.core.rmem_max): phones sharing a socket may lose answers at an opening",
            swarm::PHONES_SOCKET_BUFFER
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let progress = ProgressBar::new(scenario.duration_s);
    progress.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let interrupt = {
        let _in_runtime = runtime.enter();
        interrupt_signals()?
    };
    let on_second = |point: &swarm::report::TimePoint| {
        progress.set_position(point.t_s as u64);
        progress.set_message(format!(
            "phones {} | shakes {} | outcomes {} | awards {} | p99 {:.1} ms",
            point.connected, point.sent, point.outcomes, point.awards, point.p99_outcome_ms
        ));
    };
    let report = runtime.block_on(swarm::run(scenario, on_second, interrupt))?;
    progress.finish_and_clear();
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)
            .with_context(|| path.display().to_string())?;
    }
    if let Some(path) = timeseries {
        let lines: Vec<String> =
            report.series.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
        std::fs::write(&path, lines.join("\n") + "\n")
            .with_context(|| path.display().to_string())?;
    }
    if let Some(path) = plot {
        std::fs::write(&path, swarm::plot::svg(&report.series))
            .with_context(|| path.display().to_string())?;
    }
    // A terminal that hung up is gone: the report is in --json all the same.
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "{}", report.summary())
        .and_then(|()| writeln!(stdout, "{}", report.json_line()));
    Ok(report)
}

/// Resolves at SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal or SSH session gone): the run
/// then ends early with its report. A second one ends the process at once (exit 130).
fn interrupt_signals() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    async fn any(int: &mut Signal, term: &mut Signal, hup: &mut Signal) {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    }
    Ok(async move {
        any(&mut int, &mut term, &mut hup).await;
        // Best effort: after a hang-up there may be no terminal to tell.
        let _ = writeln!(
            std::io::stderr(),
            "shake-swarm: interrupted: stopping the phones and writing the report (again to quit at once)"
        );
        tokio::spawn(async move {
            any(&mut int, &mut term, &mut hup).await;
            std::process::exit(130);
        });
    })
}

fn verify_run(
    report: &PathBuf,
    ledger: &PathBuf,
    config: Option<PathBuf>,
    commands: Option<PathBuf>,
) -> anyhow::Result<bool> {
    let report: Report = serde_json::from_str(
        &std::fs::read_to_string(report).with_context(|| report.display().to_string())?,
    )?;
    let rows = verify::parse_export(
        &std::fs::read_to_string(ledger).with_context(|| ledger.display().to_string())?,
    )?;
    let mut config = match config {
        Some(path) => Some(shake_allocator::config::Config::load(&path)?),
        None => None,
    };
    let mut log = Vec::new();
    if let Some(path) = commands {
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        for (n, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            let command = shake_allocator::round_command::RoundCommand::decode(line.as_bytes())
                .map_err(|_| anyhow::anyhow!("{}:{}: not a command", path.display(), n + 1))?;
            log.push(command);
        }
    }
    // The pools as the allocator built them (for every prize paid), and the rounds as the
    // commands left them (for their sizes and caps).
    let pools = config.as_ref().map(|c| verify::configured_pools(c, &log)).transpose()?;
    if let Some(config) = config.as_mut() {
        for command in &log {
            shake_allocator::round_command::apply_to_rounds(&mut config.rounds, command);
        }
    }
    let v = verify::verify(&report, &rows, config.as_ref(), pools.as_ref());
    let verdict = |name: &str| report.verdicts.get(name).copied().unwrap_or(0);
    let share =
        |n: u64| if report.outcomes > 0 { n as f64 * 100.0 / report.outcomes as f64 } else { 0.0 };
    println!("Shake run summary");
    println!("-----------------");
    if report.interrupted {
        // Awards drawn for shakes whose phones were stopped before they heard are in the
        // ledger and not in the report: the comparison below may name them.
        println!("(the run was interrupted: its phones' view is partial)");
    }
    println!("{:<34}{:>12}", "phones", report.phones);
    println!("{:<34}{:>12}", "shakes sent", report.shakes);
    for name in ["no_luck", "slow_down", "round_closed", "forwarded"] {
        println!("  {:<32}{:>12}  ({:.1}%)", name, verdict(name), share(verdict(name)));
    }
    println!("{:<34}{:>12}", "awards granted (ledger)", v.awards_granted);
    println!("{:<34}{:>12}", "awards delivered (acknowledged)", v.awards_delivered);
    println!("{:<34}{:>12}", "awards undelivered (queryable)", v.awards_undelivered);
    println!("{:<34}{:>12}", "awards received by phones", report.awards_received);
    for (round, (paid, pool)) in &v.cash_by_round {
        println!(
            "round {round}: cash paid {}.{:02} of a pool of {}.{:02}",
            paid / 100,
            paid % 100,
            pool / 100,
            pool % 100
        );
    }
    println!("{:<34}{:>12.2}", "p50 shake->outcome (ms)", report.latency_ms.outcome.p50);
    println!("{:<34}{:>12.2}", "p99 shake->outcome (ms)", report.latency_ms.outcome.p99);
    println!("{:<34}{:>12.2}", "p99 shake->award (ms)", report.latency_ms.award.p99);
    println!("{:<34}{:>12}", "ledger mismatches", v.ledger_mismatches());
    println!("{:<34}{:>12}", "  heard by a user not paid", v.paid_other_user);
    println!("{:<34}{:>12}", "  told another prize or round", v.told_other_prize);
    println!("{:<34}{:>12}", "prizes granted twice", v.granted_twice);
    println!("{:<34}{:>12}", "per-user cap violations", v.cap_violations);
    println!("{:<34}{:>12}", "pools overspent", v.pools_overspent);
    println!("{:<34}{:>12}", "drained pools not paid exactly", v.cash_inexact);
    println!("{:<34}{:>12}", "prizes not as the pools hold them", v.prizes_not_in_pools);
    println!("{:<34}{:>12}", "invariants", if v.ok() { "hold" } else { "BROKEN" });
    let line = serde_json::json!({
        "ok": v.ok(),
        "phones": report.phones,
        "shakes": report.shakes,
        "verdicts": report.verdicts,
        "awards_granted": v.awards_granted,
        "awards_delivered": v.awards_delivered,
        "awards_undelivered": v.awards_undelivered,
        "awards_received": report.awards_received,
        "awards_lost": v.received_not_in_ledger,
        "awards_doubled": v.granted_twice,
        "pool_overspent": v.pools_overspent,
        "cash_inexact": v.cash_inexact,
        "awards_granted_twice": v.granted_twice,
        "cap_violations": v.cap_violations,
        "ledger_mismatches": v.ledger_mismatches(),
        "awards_paid_other_user": v.paid_other_user,
        "awards_told_other_prize": v.told_other_prize,
        "prizes_not_in_pools": v.prizes_not_in_pools,
        "p50_outcome_ms": report.latency_ms.outcome.p50,
        "p99_outcome_ms": report.latency_ms.outcome.p99,
        "p99_honest_outcome_ms": report.latency_ms.honest_outcome.p99,
        "p99_award_ms": report.latency_ms.award.p99,
        "sessions": report.sessions,
        "errors": report.errors.values().sum::<u64>(),
        "closed_by_edge": report.closed_by_edge,
        "limited": report.limited,
    });
    println!("{line}");
    Ok(v.ok())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
