//! `shake-phone`: one phone in a terminal, through the client library's quinn driver. It logs
//! in with a session token, connects to the first edge that takes it (reconnecting as a phone
//! app would), shakes when you press Enter (or every `--every-ms`), prints what the edge
//! says, and acknowledges each award once printed.
//!
//! Against the demo's edge (`scripts/demo.sh` leaves its certificates in target/demo/certs):
//!   shake-phone --edge 127.0.0.1:PORT --ca target/demo/certs/ca.pem \
//!     --dev-key-hex 7368...7d70 --user 42 --every-ms 200 --for-s 30

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use shake_client::quinn_driver::{self, Phone, PhoneCommand, PhoneEvent, Stopped};
use shake_client::{ReconnectSettings, SessionEvent, ShakePath};
use shake_proto::{Claims, KeyRing, Prize, Verdict};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

#[derive(Parser, Debug)]
#[command(
    name = "shake-phone",
    version,
    about = "One Shake phone in a terminal: press Enter to shake"
)]
struct Cli {
    /// An edge's address (repeat for several: the phone starts at one picked by its user and
    /// moves on to the others in an order of its own).
    #[arg(long = "edge", required = true, value_name = "ADDR")]
    edges: Vec<SocketAddr>,
    /// The CA that signed the edges' certificates (PEM).
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// The name in the edges' certificates.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// The session token from the login service, hex.
    #[arg(long, value_name = "HEX", conflicts_with = "dev_key_hex")]
    token_hex: Option<String>,
    /// Mint a token here with this token key (hex; the login service's job: for a local edge
    /// only, such as the demo's, whose development key is in swarm/scenarios/demo.toml).
    #[arg(long, value_name = "HEX", requires = "user")]
    dev_key_hex: Option<String>,
    /// The key id to mint with.
    #[arg(long, default_value_t = 1)]
    key_id: u32,
    /// The user to mint a token for.
    #[arg(long)]
    user: Option<u64>,
    /// Shake by itself every this many milliseconds (the phone still keeps the edge's pace).
    #[arg(long, value_name = "MS")]
    every_ms: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "S")]
    for_s: Option<u64>,
    /// Shake over the control stream instead of datagrams (the fallback for QUIC stacks
    /// without RFC 9221 datagrams).
    #[arg(long)]
    no_datagrams: bool,
}

fn main() -> ExitCode {
    let cli: Cli = shake_ops::exit::command_line();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("shake-phone: {err}");
            return ExitCode::FAILURE;
        }
    };
    shake_ops::exit::exit_status("shake-phone", runtime.block_on(run(cli)))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let token = token(&cli)?;
    let phone = Phone {
        edges: cli.edges.clone(),
        server_name: cli.server_name.clone(),
        client: quinn_driver::phone_client_config(&cli.ca, 16)?,
        token,
        reconnect: ReconnectSettings::default(),
        shake_path: if cli.no_datagrams { ShakePath::ControlStream } else { ShakePath::Datagrams },
    };
    let (commands, command_rx) = mpsc::channel(64);
    let (event_tx, mut events) = mpsc::channel(256);
    let driver = tokio::spawn(quinn_driver::run(phone, command_rx, event_tx));

    // Shakes: Enter, or a timer.
    let shaker = commands.clone();
    tokio::spawn(async move {
        match cli.every_ms {
            Some(ms) => {
                let mut every = tokio::time::interval(Duration::from_millis(ms.max(1)));
                loop {
                    every.tick().await;
                    if shaker.send(PhoneCommand::Shake).await.is_err() {
                        return;
                    }
                }
            }
            None => {
                let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                while let Ok(Some(_)) = lines.next_line().await {
                    if shaker.send(PhoneCommand::Shake).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    if let Some(s) = cli.for_s {
        let stopper = commands.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(s)).await;
            let _ = stopper.send(PhoneCommand::Stop).await;
        });
    }
    let mut awards = 0u64;
    while let Some(event) = events.recv().await {
        match event {
            PhoneEvent::Connecting(edge) => println!("connecting to {edge}"),
            PhoneEvent::Session(SessionEvent::Welcomed { round, min_shake_interval_ms }) => {
                println!(
                    "welcomed: round {} ({:?}), shake at most every {min_shake_interval_ms} ms{}",
                    round.round_id,
                    round.phase,
                    if cli.every_ms.is_none() { "; press Enter to shake" } else { "" }
                );
            }
            PhoneEvent::Session(SessionEvent::Outcome(outcome)) => match outcome.verdict {
                Verdict::NoLuck => println!("shake {}: no luck", outcome.seq),
                Verdict::Forwarded => println!("shake {}: in the draw", outcome.seq),
                Verdict::RoundClosed => println!("shake {}: no round open", outcome.seq),
                Verdict::SlowDown { retry_after_ms } => {
                    println!("shake {}: slow down ({retry_after_ms} ms)", outcome.seq)
                }
            },
            PhoneEvent::Session(SessionEvent::Award { award_id, round_id, prize }) => {
                awards += 1;
                match prize {
                    Prize::Cash { cents } => println!(
                        "AWARD {award_id}: {}.{:02} in round {round_id}",
                        cents / 100,
                        cents % 100
                    ),
                    Prize::Gift { sku } => println!("AWARD {award_id}: {sku} in round {round_id}"),
                }
                // Shown: acknowledged, so the ledger marks it delivered. From a task of its
                // own: this loop must not wait for room in the command channel, which the
                // driver may not read while it waits for room in this one.
                let commands = commands.clone();
                tokio::spawn(async move {
                    let _ = commands.send(PhoneCommand::AckAward(award_id)).await;
                });
            }
            PhoneEvent::Session(SessionEvent::Round(round)) => println!(
                "round {}: {:?}, {} to {}",
                round.round_id, round.phase, round.starts_at_ms, round.ends_at_ms
            ),
            PhoneEvent::Session(SessionEvent::Paced { min_shake_interval_ms }) => {
                println!("paced: at most every {min_shake_interval_ms} ms")
            }
            PhoneEvent::Session(SessionEvent::Ended(reason)) => {
                println!("session ended: {}", reason.name())
            }
            PhoneEvent::ShakeHeld(why) => println!("not sent: {why}"),
            PhoneEvent::Disconnected { end, next } => {
                println!("disconnected ({end:?}); next: {next:?}")
            }
        }
    }
    let stopped = driver.await.context("the phone's task")??;
    println!("{awards} awards");
    Ok(match stopped {
        Stopped::ByApp => ExitCode::SUCCESS,
        Stopped::Refused(code) => {
            eprintln!("shake-phone: refused for good: {} (a new token is needed)", code.name());
            ExitCode::from(2)
        }
    })
}

/// The token given, or one minted with the development key.
fn token(cli: &Cli) -> anyhow::Result<Bytes> {
    let hex = |text: &str| -> anyhow::Result<Vec<u8>> {
        let text = text.trim();
        // Checked first: slicing by bytes would split a multi-byte character (a panic).
        anyhow::ensure!(text.bytes().all(|b| b.is_ascii_hexdigit()), "not hex");
        anyhow::ensure!(text.len().is_multiple_of(2), "odd number of hex digits");
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).context("not hex"))
            .collect()
    };
    match (&cli.token_hex, &cli.dev_key_hex, cli.user) {
        (Some(token), _, _) => {
            let token = hex(token)?;
            let most = shake_proto::limits::MAX_TOKEN;
            anyhow::ensure!(token.len() <= most, "longer than a token may be ({most} bytes)");
            Ok(Bytes::from(token))
        }
        (None, Some(key), Some(user_id)) => {
            let mut ring = KeyRing::new();
            ring.insert(cli.key_id, &hex(key)?)?;
            let now_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let claims = Claims {
                key_id: cli.key_id,
                user_id,
                device_id: user_id,
                issued_at_s: now_s,
                expires_at_s: now_s + 3_600,
            };
            Ok(Bytes::copy_from_slice(&ring.mint(&claims)?))
        }
        _ => anyhow::bail!("give --token-hex, or --dev-key-hex and --user"),
    }
}
