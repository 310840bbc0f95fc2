//! `shake-allocator`: the central allocator binary. A thin shell over the library: parse the
//! command line, load the configuration, run.
//!
//! Exit codes: 0 success, 64 bad command line or configuration, 65 a ledger that does not
//! match (`--against-ledger`, or a ledger this configuration cannot serve), 1 any other failure.
//! Signals: SIGTERM drains (answers what is in flight, then exits), SIGINT stops at once.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shake_allocator::config::Config;
use shake_allocator::ledger::{self, FjallLedger, LedgerStore};
use shake_allocator::service::{self, Shutdown};
use shake_allocator::{dev_certs, export};
use shake_ops::config::{EXIT_DATA, EXIT_USAGE, check, checked, load_or_exit};

const BIN: &str = "shake-allocator";
/// How long the exit waits for blocking work still running once serving is done.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

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
    /// With --check-config: also replay the ledger it names on its rounds, as the next start
    /// would (65: the ledger does not fit them, with the award or command named; 1: the ledger
    /// could not be read). A PostgreSQL ledger is read while the show runs; a fjall one is
    /// locked by its running allocator.
    #[arg(long, requires = "check_config")]
    against_ledger: bool,
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
    /// Live round commands through a running allocator's admin API (`admin_listen`).
    Round {
        #[command(subcommand)]
        action: RoundCli,
        /// The admin API's address.
        #[arg(long, global = true, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        /// The file holding the admin bearer token.
        #[arg(long, global = true, value_name = "FILE")]
        token_file: Option<PathBuf>,
        /// Who is asking (recorded in the audit log).
        #[arg(long = "as", global = true, default_value = "cli")]
        operator: String,
        /// The command's idempotency key: run the same command again with the same key and it
        /// takes effect once (default: a fresh key). An answer that does not come (503, 504, a
        /// broken connection) is retried under the same key, 5 tries 2 s apart; after that the
        /// CLI prints the key to resend with.
        #[arg(long, global = true)]
        id: Option<String>,
    },
    /// A PNG of the control room's dashboard as a running allocator serves it now, taken with
    /// headless chromium (installed by the browser script with apt-get when missing).
    Screenshot {
        /// The admin API's address.
        #[arg(long, value_name = "ADDR")]
        admin: std::net::SocketAddr,
        /// The file holding the admin bearer token.
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// Where to write the PNG.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The script that finds or installs chromium and chromedriver.
        #[arg(long, value_name = "FILE", default_value = "scripts/browser.sh")]
        browser_script: PathBuf,
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

#[derive(Subcommand, Debug, Clone)]
enum RoundCli {
    /// Every round: phase, times, interval, prizes awarded.
    List,
    /// Open a waiting round now (the host said "shake now").
    Go {
        /// The round.
        round: u32,
    },
    /// Move a round's close later.
    Extend {
        /// The round.
        round: u32,
        /// By this many seconds.
        #[arg(long)]
        by_s: u64,
    },
    /// Close a round now (or cancel one that has not opened).
    Close {
        /// The round.
        round: u32,
    },
    /// Ask phones to keep this interval between shakes.
    Interval {
        /// The round.
        round: u32,
        /// Milliseconds between shakes.
        #[arg(long)]
        ms: u32,
    },
    /// Stop taking shakes now, keeping the time the round has left.
    Pause {
        /// The round.
        round: u32,
    },
    /// Open a paused round again for the time it had left.
    Resume {
        /// The round.
        round: u32,
    },
    /// More prizes for a round that has not closed (released on its schedule).
    TopUp {
        /// The round.
        round: u32,
        /// Cash to add, cents, split into `--envelopes` new envelopes.
        #[arg(long, requires = "envelopes")]
        cash_cents: Option<u64>,
        /// How many envelopes the cash is split into.
        #[arg(long, requires = "cash_cents")]
        envelopes: Option<u64>,
        /// The smallest envelope, cents.
        #[arg(long, default_value_t = 1)]
        min_cents: u64,
        /// Gifts to add, `SKU=COUNT` (repeatable); a SKU the round has joins its pool.
        #[arg(long = "gift", value_name = "SKU=COUNT")]
        gifts: Vec<String>,
    },
    /// Add a round: a TOML file holding one round, with the keys of the configuration's
    /// `[[rounds]]` (id, starts_at_ms, duration_s, seed, cash, gifts, ...).
    Add {
        /// The round's file.
        file: PathBuf,
    },
    /// The audit log: every command recorded, oldest first.
    Audit,
}

fn main() -> ExitCode {
    let cli: Cli = shake_ops::exit::command_line();
    // fjall narrates its recovery at info; keep our own lines readable.
    shake_ops::init_logging("info,fjall=warn,lsm_tree=warn");
    if let Some(path) = cli.check_config {
        let summary = |c: &Config| format!("{} rounds", c.rounds.len());
        if !cli.against_ledger {
            return check::<Config>(BIN, &path, summary);
        }
        return match checked::<Config>(BIN, &path, summary) {
            Ok(config) => shake_ops::exit::exit_status(BIN, replays_its_ledger(&path, &config)),
            Err(code) => code,
        };
    }
    let Some(command) = cli.command else {
        eprintln!("{BIN}: a command is needed (try --help)");
        return ExitCode::from(EXIT_USAGE);
    };
    if let Some(missing) = missing_argument(&command) {
        eprintln!("{BIN}: give {missing} (try --help)");
        return ExitCode::from(EXIT_USAGE);
    }
    shake_ops::exit::exit_status(BIN, run(command))
}

/// `--check-config FILE --against-ledger`, the configuration valid: its rounds replay the
/// ledger it names (exit 0), or not (65, naming what does not fit).
fn replays_its_ledger(path: &Path, config: &Config) -> anyhow::Result<ExitCode> {
    let mut store = ledger::open_to_read(config)
        .context("opening the configured ledger (a running allocator locks a fjall one)")?;
    let replayed = service::check_replay(config, store.as_mut()).context("reading the ledger")?;
    Ok(match replayed {
        Ok(replayed) => {
            println!(
                "{}: replays its ledger ({} awards, {} round commands)",
                path.display(),
                replayed.awards,
                replayed.commands
            );
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("{BIN}: {}: does not replay its ledger: {err}", path.display());
            ExitCode::from(EXIT_DATA)
        }
    })
}

/// Whether a start or a term failed because the configured rounds do not replay the ledger.
fn does_not_replay(err: &anyhow::Error) -> bool {
    err.downcast_ref::<service::ServeError>().is_some_and(service::ServeError::is_replay_refusal)
}

/// An argument the command needs that clap cannot require (`round`'s are global, so that they
/// may follow the action): a usage error, 64, like any other.
fn missing_argument(command: &Command) -> Option<&'static str> {
    match command {
        Command::Round { admin: None, .. } => Some("--admin ADDR"),
        Command::Round { token_file: None, .. } => Some("--token-file FILE"),
        _ => None,
    }
}

/// The ledger named on the command line: a fjall directory, or whatever a configuration names.
fn open_ledger(
    ledger: Option<PathBuf>,
    config: Option<PathBuf>,
) -> anyhow::Result<Box<dyn LedgerStore>> {
    let store: Box<dyn LedgerStore> = match (ledger, config) {
        (Some(path), _) => Box::new(FjallLedger::open_existing(&path).with_context(|| {
            format!("opening {} (a running allocator holds it locked)", path.display())
        })?),
        (None, Some(config)) => ledger::open_to_read(&Config::load(&config)?)
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
            let served = runtime.block_on(serve(config));
            if matches!(served, Ok(Served::StoppedWhileStarting)) {
                // Not waiting for the start's ledger read, which runs on: nothing was served.
                runtime.shutdown_background();
            } else {
                // Everything served is done by now, or failed. What is left is blocking work on
                // a database that does not answer (a client's close, a call left behind), which
                // would hold the exit for as long as the server hangs.
                runtime.shutdown_timeout(EXIT_WAIT);
            }
            if let Err(err) = &served
                && does_not_replay(err)
            {
                // No restart can change it: 65, which the unit does not restart on.
                eprintln!(
                    "{BIN}: {err:#}\n{BIN}: mend the configuration (check it with --check-config \
                     FILE --against-ledger) and start again"
                );
                return Ok(ExitCode::from(EXIT_DATA));
            }
            served?;
        }
        Command::DevCerts { dir, edges } => {
            for path in dev_certs::generate(&dir, &edges)? {
                println!("{}", path.display());
            }
        }
        Command::Awards { ledger, config, user, round, undelivered } => {
            let mut ledger = open_ledger(ledger, config)?;
            let query = export::AwardQuery { user, round, undelivered, ..Default::default() };
            let awards = ledger.find_awards(&query)?;
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
        Command::Round { action, admin, token_file, operator, id } => {
            // (`missing_argument` has refused a round command without both, as a usage error.)
            let (Some(admin), Some(token_file)) = (admin, token_file) else {
                anyhow::bail!("give --admin ADDR and --token-file FILE")
            };
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("reading {}", token_file.display()))?;
            return round_command(admin, token.trim(), &operator, id, action);
        }
        Command::Screenshot { admin, token_file, out, browser_script } => {
            let token = std::fs::read_to_string(&token_file)
                .with_context(|| format!("reading {}", token_file.display()))?;
            screenshot(admin, token.trim(), &out, &browser_script)?;
            eprintln!("{BIN}: the dashboard is in {}", out.display());
        }
        Command::Export { ledger, config } => {
            let mut ledger = open_ledger(ledger, config)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut after = Some(0);
            while let Some(cursor) = after {
                let page = ledger.find_awards(&export::export_page(cursor, export::EXPORT_PAGE))?;
                match out.write_all(export::award_lines(&page).as_bytes()) {
                    // A reader that has seen enough (`| head`): not an error.
                    Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => break,
                    written => written.context("writing the export")?,
                }
                after = export::next_page_after(&page, export::EXPORT_PAGE);
            }
            match out.flush() {
                Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(err).context("writing the export")?
                }
                _ => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Opens the dashboard, waits until it shows live numbers (a round, and an edge once one is
/// connected), and writes its PNG.
fn screenshot(
    admin: std::net::SocketAddr,
    token: &str,
    out: &Path,
    browser_script: &Path,
) -> anyhow::Result<()> {
    use shake_ops::webdriver::Browser;
    let browser = Browser::start(browser_script)?;
    browser.open(&format!("http://{admin}/#token={token}"))?;
    let within = std::time::Duration::from_secs(20);
    browser.wait_text("#role", within, |t| t == "leader" || t == "standby")?;
    // Two snapshots: the rates need a previous one.
    browser.wait_text("#entries-rate", within, |t| !t.is_empty())?;
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    browser.screenshot(out)?;
    Ok(())
}

/// Sends one admin request and prints the answer's body; exit 1 unless it was a success.
fn round_command(
    admin: std::net::SocketAddr,
    token: &str,
    operator: &str,
    id: Option<String>,
    action: RoundCli,
) -> anyhow::Result<ExitCode> {
    use shake_ops::http::{body_of, request_with_body, status_of};
    let mut body = Vec::new();
    let (method, path) = match action {
        RoundCli::List => ("GET", "/rounds".to_owned()),
        RoundCli::Audit => ("GET", "/audit".to_owned()),
        RoundCli::Go { round } => ("POST", format!("/rounds/{round}/go")),
        RoundCli::Close { round } => ("POST", format!("/rounds/{round}/close")),
        RoundCli::Pause { round } => ("POST", format!("/rounds/{round}/pause")),
        RoundCli::Resume { round } => ("POST", format!("/rounds/{round}/resume")),
        RoundCli::Extend { round, by_s } => ("POST", format!("/rounds/{round}/extend?by_s={by_s}")),
        RoundCli::Interval { round, ms } => ("POST", format!("/rounds/{round}/interval?ms={ms}")),
        RoundCli::TopUp { round, cash_cents, envelopes, min_cents, gifts } => {
            let cash = cash_cents.zip(envelopes).map(|(total_cents, envelopes)| {
                serde_json::json!({
                    "total_cents": total_cents, "envelopes": envelopes, "min_cents": min_cents
                })
            });
            let mut gift_pools = Vec::new();
            for gift in &gifts {
                let (sku, count) = gift
                    .split_once('=')
                    .and_then(|(sku, count)| Some((sku, count.parse::<u64>().ok()?)))
                    .with_context(|| format!("--gift {gift}: expected SKU=COUNT"))?;
                gift_pools.push(serde_json::json!({ "sku": sku, "name": sku, "count": count }));
            }
            body = serde_json::to_vec(&serde_json::json!({ "cash": cash, "gifts": gift_pools }))?;
            ("POST", format!("/rounds/{round}/top-up"))
        }
        RoundCli::Add { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let round: shake_allocator::config::RoundConfig = toml::from_str(&text)
                .with_context(|| format!("{}: not a round", file.display()))?;
            body = serde_json::to_vec(&round)?;
            ("POST", "/rounds".to_owned())
        }
    };
    let bearer = format!("Bearer {token}");
    let key = id.unwrap_or_else(|| format!("cli-{:016x}", rand::random::<u64>()));
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Idempotency-Key", &key),
        ("X-Shake-Operator", operator),
    ];
    // A command whose answer was lost (the allocator stopped or lost its lease after recording
    // it, another command was being recorded, the connection broke) is sent again under the
    // same id, which the allocator applies at most once: a fresh id could top a pool up twice.
    let mut last = String::new();
    for attempt in 0..COMMAND_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(COMMAND_RETRY_AFTER);
        }
        let response = match request_with_body(admin, method, &path, &headers, &body) {
            Ok(response) => response,
            Err(err) => {
                last = format!("asking the admin API at {admin}: {err}");
                continue;
            }
        };
        let status = status_of(&response).unwrap_or(0);
        // 503: not taken now (another command being recorded, not the leader, stopping); any
        // other 5xx (a proxy's, a failure) says nothing of whether it was recorded. Both go
        // again under the same id, which is safe either way; a 4xx is the allocator's answer.
        if !(200..500).contains(&status) {
            last = format!("the allocator answered {status}: {}", body_of(&response).trim());
            continue;
        }
        print!("{}", body_of(&response));
        if status == 200 {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("{BIN}: the allocator answered {status}");
        return Ok(ExitCode::FAILURE);
    }
    eprintln!(
        "{BIN}: not confirmed after {COMMAND_ATTEMPTS} tries ({last}); the command may have been \
         recorded: send it again with --id {key} (an id is applied at most once), never with a \
         new one"
    );
    Ok(ExitCode::FAILURE)
}

/// Tries of one operator command whose answer did not come, and the pause between them.
const COMMAND_ATTEMPTS: u32 = 5;
const COMMAND_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// How [`serve`] ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
enum Served {
    /// Served until a signal, then drained or stopped.
    Served,
    /// A signal came before the start was done (a long ledger replay): nothing was served,
    /// so there was nothing to drain.
    StoppedWhileStarting,
}

async fn serve(config: Config) -> anyhow::Result<Served> {
    use shake_ops::signals::{StopSignal, StopSignals};
    let mut signals = StopSignals::install()?;
    let shutdown = Shutdown::default();
    let running = tokio::select! {
        running = service::start(config, shutdown.clone()) => running?,
        signal = signals.next() => {
            tracing::info!(?signal, "stopped while starting: nothing was served");
            return Ok(Served::StoppedWhileStarting);
        }
    };
    // One line on stdout that scripts wait for.
    let metrics = running.metrics_addr.map_or("off".to_owned(), |a| a.to_string());
    let admin = running.admin_addr.map_or("off".to_owned(), |a| a.to_string());
    println!("shake-allocator ready quic={} metrics={metrics} admin={admin}", running.quic_addr);
    let on_signal = {
        let shutdown = shutdown.clone();
        // A SIGINT during a drain still stops at once.
        tokio::spawn(async move {
            loop {
                match signals.next().await {
                    StopSignal::Drain => shutdown.drain.cancel(),
                    StopSignal::Stop => return shutdown.stop.cancel(),
                }
            }
        })
    };
    let result = running.wait().await;
    on_signal.abort();
    result?;
    Ok(Served::Served)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
