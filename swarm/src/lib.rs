//! `shake-swarm`: a synthetic phone swarm. N phones, each a real QUIC connection with its own
//! session token running the client library's session, multiplexed over several client
//! endpoints, driven by a scenario: on quinn with tokio (every role) or on `shake-loop`
//! (`driver = "loop"`, honest phones, no task per phone).
//!
//! # Layout
//! - [`scenario`]: the scenario file and its validation.
//! - [`addresses`]: the local address of each client socket (per-source limits see many).
//! - [`schedule`]: open-loop shake timing (sans-IO).
//! - [`phone`]: one phone's life on quinn.
//! - [`loop_phones`]: the phones of each client socket on one `shake-loop` event loop (also
//!   the benchmarks' load).
//! - [`stats`]: what is measured.
//! - [`report`]: the summary table, the JSON report and the time series.
//! - [`plot`]: the time series as an SVG chart.
//! - [`verify`]: phones' awards against the allocator's ledger export.

pub mod addresses;
pub mod fairness;
pub mod hostile;
pub mod loop_phones;
pub mod phone;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod stats;
pub mod verify;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shake_proto::{Claims, KeyRing};

use self::loop_phones::{LoopLoad, LoopLoadPlan, Speech, SwarmRecord};
use self::phone::{PhoneContext, Role};
use self::report::{Report, TimePoint};
use self::scenario::{PhoneDriver, Scenario};
use self::stats::Stats;

/// A swarm that could not start.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    /// TLS files.
    #[error(transparent)]
    Tls(#[from] shake_ops::tls::TlsError),
    /// Sockets.
    #[error("client endpoint: {0}")]
    Io(#[from] std::io::Error),
    /// Tokens.
    #[error("token key: {0}")]
    Token(#[from] shake_proto::TokenError),
    /// QUIC crypto configuration.
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

fn client_config(scenario: &Scenario) -> Result<quinn::ClientConfig, SwarmError> {
    // Room for a resumption ticket per phone, so churning phones resume.
    phone_client_config(&scenario.ca, scenario.phones.max(256))
}

/// A phone's QUIC client configuration, as the client library makes it (TLS trusting `ca`,
/// room for `sessions` resumption tickets, 30 s idle timeout, 10 s keep-alives): the swarm
/// and the benchmarks' load generator are the same phones as an app's.
pub fn phone_client_config(
    ca: &std::path::Path,
    sessions: usize,
) -> Result<quinn::ClientConfig, SwarmError> {
    shake_client::quinn_driver::phone_client_config(ca, sessions)
        .map_err(|e| SwarmError::Quic(e.to_string()))
}

/// Picks each phone's role: each hostile share becomes an exact count (at least one phone when
/// the share is not zero, so a small swarm still meets every attacker), placed at positions
/// shuffled deterministically from the seed.
pub fn roles(scenario: &Scenario) -> Vec<Role> {
    let phones = scenario.phones;
    let mut roles = Vec::with_capacity(phones);
    for (role, (_, share)) in Role::HOSTILE.iter().zip(scenario.hostile.shares()) {
        let count = if share > 0.0 { ((share * phones as f64).round() as usize).max(1) } else { 0 };
        let room = phones - roles.len();
        roles.extend(std::iter::repeat_n(*role, count.min(room)));
    }
    roles.resize(phones, Role::Honest);
    roles.shuffle(&mut ChaCha8Rng::seed_from_u64(scenario.seed ^ 0x5eed));
    roles
}

/// Session tokens for `phones` honest phones of the scenario (phone `i` is user
/// `first_user_id + i`), valid for a day, minted with the scenario's key as the login
/// service would.
pub fn honest_tokens(scenario: &Scenario, phones: usize) -> Result<Vec<Bytes>, SwarmError> {
    let keys = login_keys(scenario)?;
    let now = unix_s();
    let mut tokens = Vec::with_capacity(phones);
    for i in 0..phones as u64 {
        let claims = day_claims(scenario, scenario.tokens.first_user_id + i, now);
        tokens.push(Bytes::copy_from_slice(&keys.mint(&claims)?));
    }
    Ok(tokens)
}

/// The login service's key ring for the scenario (its dev key).
fn login_keys(scenario: &Scenario) -> Result<KeyRing, SwarmError> {
    let secret = scenario::hex(&scenario.tokens.secret_hex).unwrap_or_default();
    let mut keys = KeyRing::new();
    keys.insert(scenario.tokens.key_id, &secret)?;
    Ok(keys)
}

/// A session token's claims for `user_id` (its own device), issued a minute before `now_s`
/// and valid for a day.
fn day_claims(scenario: &Scenario, user_id: u64, now_s: u64) -> Claims {
    Claims {
        key_id: scenario.tokens.key_id,
        user_id,
        device_id: user_id,
        issued_at_s: now_s - 60,
        expires_at_s: now_s + 86_400,
    }
}

fn unix_s() -> u64 {
    unix_ms() / 1_000
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Largest UDP payload a simulated phone accepts: an Ethernet-sized path, as phones have.
const PHONE_MAX_UDP_PAYLOAD: u16 = 1472;

/// A client endpoint bound to `local`, accepting Ethernet-sized payloads as a phone would.
/// quinn sizes an endpoint's receive buffer from the largest payload it accepts: with the
/// default 64 KiB that is 128 MiB of address space per endpoint on Linux.
pub fn client_endpoint(local: std::net::SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let mut config = quinn::EndpointConfig::default();
    config.max_udp_payload_size(PHONE_MAX_UDP_PAYLOAD).map_err(std::io::Error::other)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the endpoint"))?;
    quinn::Endpoint::new(config, None, phones_socket(local)?, runtime)
}

/// Receive and send buffer asked for a socket that phones share: a real phone has a socket
/// (and its buffer) of its own, and the hundreds of phones behind one swarm socket all hear
/// their answers at a round's opening. The kernel grants at most `net.core.rmem_max`.
pub const PHONES_SOCKET_BUFFER: usize = 4 << 20;

/// A UDP socket for phones bound to `local`, with [`PHONES_SOCKET_BUFFER`]. (With the
/// system's default, about 208 KiB, the 2,000 phones of `scripts/demo.sh` lost 650-1,170
/// datagrams on each of their 8 sockets at an opening: answers the edge had sent, counted as
/// shakes unanswered.)
pub fn phones_socket(local: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = match std::net::UdpSocket::bind(local) {
        // Linux routes all of 127.0.0.0/8 to `lo`; other systems may have 127.0.0.1 only. The
        // swarm still runs there, but every phone then shares the attacker's address.
        Err(err)
            if err.kind() == std::io::ErrorKind::AddrNotAvailable && local.ip().is_loopback() =>
        {
            std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))?
        }
        other => other?,
    };
    let buffers = socket2::SockRef::from(&socket);
    buffers.set_recv_buffer_size(PHONES_SOCKET_BUFFER)?;
    buffers.set_send_buffer_size(PHONES_SOCKET_BUFFER)?;
    Ok(socket)
}

/// Peak resident memory of this process, KiB (Linux), if known.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the scenario to its end; `on_second` sees the time series as it grows.
///
/// `interrupt` ends the run early (an operator's Ctrl-C): the phones stop where they are and
/// the report covers the time it ran, marked [`Report::interrupted`].
pub async fn run(
    scenario: &Scenario,
    on_second: impl FnMut(&TimePoint),
    interrupt: impl Future<Output = ()>,
) -> Result<Report, SwarmError> {
    let interrupt = std::pin::pin!(interrupt);
    match scenario.driver {
        PhoneDriver::Quinn => run_on_quinn(scenario, on_second, interrupt).await,
        PhoneDriver::Loop => run_on_loop(scenario, on_second, interrupt).await,
    }
}

/// How long a swarm loop gathers work after waking before it sends: none. The swarm measures
/// latency, and the edge's 200 us (the loop sleeps that long each turn) saved 7% of the
/// swarm's CPU (14.0 s against 15.0 s, 2,000 phones at 8 shakes/s on the 2-core VM) while
/// delaying every send it gathered.
const LOOP_BATCH_DELAY: Duration = Duration::ZERO;

/// The scenario's phones on `shake-loop` (honest ones, validation made sure): split evenly
/// over the edges, each edge's share on its own loop threads, recording into the same
/// [`Stats`] as the quinn phones.
async fn run_on_loop(
    scenario: &Scenario,
    mut on_second: impl FnMut(&TimePoint),
    mut interrupt: Pin<&mut impl Future<Output = ()>>,
) -> Result<Report, SwarmError> {
    let tokens = honest_tokens(scenario, scenario.phones)?;
    let config = client_config(scenario)?;
    let stats = Arc::new(Stats::default());
    let first_user_id = scenario.tokens.first_user_id;
    for i in 0..scenario.phones as u64 {
        stats.register_user(first_user_id + i, false);
    }
    let origin = Instant::now();
    let end = origin + Duration::from_secs(scenario.duration_s);
    let edges = scenario.edges.len();
    let per_edge = scenario.phones.div_ceil(edges);
    let mut loads = Vec::with_capacity(edges);
    for (k, edge) in scenario.edges.iter().enumerate() {
        let first = k * per_edge;
        let phones = per_edge.min(scenario.phones.saturating_sub(first));
        if phones == 0 {
            continue;
        }
        let speech = Speech::Shake {
            tokens: Arc::new(tokens[first..first + phones].to_vec()),
            record: Some(SwarmRecord {
                stats: stats.clone(),
                first_user_id: first_user_id + first as u64,
            }),
        };
        let plan = LoopLoadPlan {
            phones,
            rate_per_phone: scenario.shaking.rate_per_s,
            connect_rate: scenario.connect.phones_per_s / edges as f64,
            threads: (scenario.client_endpoints / edges).max(1),
            jitter: scenario.shaking.jitter,
            batch_delay: LOOP_BATCH_DELAY,
            series_origin_unix_ms: 0,
            path_rtt: Duration::ZERO,
        };
        loads.push(LoopLoad::start(
            *edge,
            &scenario.server_name,
            &config,
            &speech,
            plan,
            None,
            end,
        )?);
    }
    let mut series = Vec::new();
    let mut next_second = origin + Duration::from_secs(1);
    let mut interrupted = false;
    while next_second <= end {
        tokio::select! {
            () = tokio::time::sleep_until(next_second.into()) => {}
            () = &mut interrupt => {
                interrupted = true;
                break;
            }
        }
        series.push(report::time_point(&stats, origin));
        on_second(series.last().expect("just pushed"));
        next_second += Duration::from_secs(1);
    }
    // The loops stop at `end` on their own (or now, interrupted); joining them waits for their
    // last turn.
    tokio::task::spawn_blocking(move || {
        loads.into_iter().map(LoopLoad::finish).collect::<std::io::Result<Vec<_>>>()
    })
    .await
    .map_err(std::io::Error::other)??;
    // Every phone of the plan, those an interruption kept from connecting too: the loops start
    // them on their own schedule.
    let planned = (scenario.phones, scenario.phones);
    let mut report = Report::build(&stats, planned, origin.elapsed(), series, peak_rss_kib());
    report.interrupted = interrupted;
    Ok(report)
}

/// The scenario's phones on quinn with tokio, a task per phone.
async fn run_on_quinn(
    scenario: &Scenario,
    mut on_second: impl FnMut(&TimePoint),
    mut interrupt: Pin<&mut impl Future<Output = ()>>,
) -> Result<Report, SwarmError> {
    let keys = login_keys(scenario)?;
    let mut forger = KeyRing::new();
    forger.insert(scenario.tokens.key_id, &[0x5a; 32])?;
    let config = client_config(scenario)?;
    let mut endpoints = Vec::new();
    for i in 0..scenario.client_endpoints {
        let mut endpoint = client_endpoint(addresses::phone_endpoint(&scenario.edges, i))?;
        endpoint.set_default_client_config(config.clone());
        endpoints.push(endpoint);
    }
    let stats = Arc::new(Stats::default());
    let origin = Instant::now();
    let end = origin + Duration::from_secs(scenario.duration_s);
    let ctx = Arc::new(PhoneContext {
        edges: scenario.edges.clone(),
        server_name: scenario.server_name.clone(),
        rate_per_s: scenario.shaking.rate_per_s,
        jitter: scenario.shaking.jitter,
        spike: scenario.shaking.spike,
        churn_every: Duration::from_secs_f64(scenario.churn.every_s),
        client_config: config.clone(),
        origin,
        origin_unix_ms: unix_ms(),
        end,
        stats: stats.clone(),
    });
    let roles = roles(scenario);
    // Each cheater connection's place among the cheater connections (in phone order, so the
    // connections of one user are spread over the client endpoints and their addresses).
    let mut cheater_ordinal = vec![0usize; roles.len()];
    for (n, i) in (0..roles.len()).filter(|&i| roles[i] == Role::MultiConnection).enumerate() {
        cheater_ordinal[i] = n;
    }
    let mut churn_rng = ChaCha8Rng::seed_from_u64(scenario.seed ^ 0xc4u64);
    let now = unix_s();
    let mut tasks = tokio::task::JoinSet::new();
    let ramp = scenario.connect.phones_per_s;
    let mut series = Vec::new();
    let mut next_second = origin + Duration::from_secs(1);
    let mut interrupted = false;
    // Phones started: an interruption during the connect ramp leaves the rest out of the
    // report, which had counted every phone of the scenario.
    let mut started = 0;
    for (i, role) in roles.iter().copied().enumerate() {
        if ramp > 0.0 {
            let at = origin + Duration::from_secs_f64(i as f64 / ramp);
            tokio::select! {
                () = tokio::time::sleep_until(at.into()) => {}
                () = &mut interrupt => {
                    interrupted = true;
                    break;
                }
            }
        }
        let user_id = match role {
            // Cheaters' connections share users, numbered after every phone's own.
            Role::MultiConnection => {
                let group = cheater_ordinal[i] / scenario.hostile.connections_per_cheater;
                scenario.tokens.first_user_id + (scenario.phones + group) as u64
            }
            _ => scenario.tokens.first_user_id + i as u64,
        };
        match role {
            Role::Honest => stats.register_user(user_id, false),
            Role::MultiConnection => stats.register_user(user_id, true),
            _ => {}
        }
        let mut claims = day_claims(scenario, user_id, now);
        let ring = match role {
            Role::ForgedToken => &forger,
            Role::ExpiredToken => {
                claims.issued_at_s = now - 7_200;
                claims.expires_at_s = now - 3_600;
                &keys
            }
            _ => &keys,
        };
        let token = Bytes::copy_from_slice(&ring.mint(&claims)?);
        let churns = churn_rng.random::<f64>() < scenario.churn.share;
        let endpoint = endpoints[i % endpoints.len()].clone();
        tasks.spawn(phone::run(i, role, churns, token, user_id, endpoint, ctx.clone()));
        started = i + 1;
        if Instant::now() >= next_second {
            series.push(report::time_point(&stats, origin));
            on_second(series.last().expect("just pushed"));
            next_second += Duration::from_secs(1);
        }
    }
    while !interrupted {
        tokio::select! {
            done = tasks.join_next() => if done.is_none() { break },
            _ = tokio::time::sleep_until(next_second.into()) => {
                series.push(report::time_point(&stats, origin));
                on_second(series.last().expect("just pushed"));
                next_second += Duration::from_secs(1);
            }
            () = &mut interrupt => interrupted = true,
        }
    }
    // Interrupted, the phones stop where they are (their connections close with the
    // endpoints below).
    tasks.shutdown().await;
    for endpoint in &endpoints {
        endpoint.close(0u32.into(), b"swarm done");
    }
    for endpoint in &endpoints {
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }
    let honest = roles[..started].iter().filter(|r| **r == Role::Honest).count();
    let mut report =
        Report::build(&stats, (started, honest), origin.elapsed(), series, peak_rss_kib());
    report.interrupted = interrupted;
    Ok(report)
}

/// Counts phones connected right now (for progress).
pub fn connected(stats: &Stats) -> u64 {
    stats.connected.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile(phones: usize) -> Scenario {
        let mut scenario = Scenario::parse(include_str!("../scenarios/hostile.toml")).unwrap();
        scenario.phones = phones;
        scenario
    }

    #[test]
    fn hostile_shares_become_exact_counts_and_small_swarms_meet_every_attacker() {
        let count = |roles: &[Role], role: Role| roles.iter().filter(|r| **r == role).count();
        let roles = roles(&hostile(1_000));
        assert_eq!(roles.len(), 1_000);
        assert_eq!(count(&roles, Role::OverRate), 50);
        assert_eq!(count(&roles, Role::ConnectionFlood), 20);
        assert_eq!(count(&roles, Role::MultiConnection), 80);
        assert_eq!(count(&roles, Role::Honest), 680);
        let small = super::roles(&hostile(20));
        for role in Role::HOSTILE {
            assert!(count(&small, role) >= 1, "{role:?} in a swarm of 20");
        }
        // Deterministic from the seed, and shuffled (not all attackers first).
        assert_eq!(roles, super::roles(&hostile(1_000)));
        assert!(roles[..320].contains(&Role::Honest));
        // More attackers than phones: the swarm is all attackers, no more.
        assert_eq!(super::roles(&hostile(3)).len(), 3);
    }
}
