//! The swarm's scenario file (TOML, annotated examples in `swarm/scenarios/`) and its
//! validation. Command-line flags override the main numbers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
pub use shake_ops::config::ConfigError;
use shake_ops::config::{Validate, invalid};

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Phones to simulate.
    pub phones: usize,
    /// Edges to spread phones over (a phone whose edge goes away moves to the next).
    pub edges: Vec<SocketAddr>,
    /// The name in the edges' certificates.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// CA that signed the edges' certificates.
    pub ca: PathBuf,
    /// How long the run lasts, seconds (connect ramp included).
    pub duration_s: u64,
    /// Client QUIC endpoints to spread phones over (source ports spread across edge workers).
    #[serde(default = "default_client_endpoints")]
    pub client_endpoints: usize,
    /// Session tokens.
    pub tokens: Tokens,
    /// Connecting.
    #[serde(default)]
    pub connect: Connect,
    /// Shaking.
    #[serde(default)]
    pub shaking: Shaking,
    /// Phones that leave and come back.
    #[serde(default)]
    pub churn: Churn,
    /// Misbehaving phones.
    #[serde(default)]
    pub hostile: Hostile,
    /// Seed of every random choice (jitter, hostile roles).
    #[serde(default)]
    pub seed: u64,
    /// What drives the phones' QUIC connections.
    #[serde(default)]
    pub driver: PhoneDriver,
}

/// What drives the phones' QUIC connections: both run the client library's session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PhoneDriver {
    /// quinn with tokio, a task per phone, as an app embeds it: every role, churn, the
    /// opening spike and moving to the next edge when one goes away.
    #[default]
    Quinn,
    /// `shake-loop`: the phones of each client socket on one event loop thread, no task per
    /// phone and no runtime between a phone and its socket, so its timings are closer to the
    /// edge's own (2,000 phones at 8 shakes/s on the 2-core VM, two runs each: p50 0.5-0.7 ms
    /// against quinn's 1.8-2.0 ms, for 1.24-1.30 times quinn's CPU). Honest phones only, no churn
    /// and no opening spike (each phone keeps its phase in the interval); the phones are split
    /// evenly over the edges and reconnect to their own edge.
    Loop,
}

/// How tokens are minted (as the login service would).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    /// Key id to sign with.
    pub key_id: u32,
    /// The HMAC secret, hex.
    pub secret_hex: String,
    /// First user id; phone `i` is user `first_user_id + i`.
    #[serde(default = "default_first_user")]
    pub first_user_id: u64,
}

/// The connect ramp.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Connect {
    /// New phones per second; 0 connects them all at once (a storm).
    pub phones_per_s: f64,
}

impl Default for Connect {
    fn default() -> Self {
        Self { phones_per_s: 2_000.0 }
    }
}

/// Shaking while a round is open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shaking {
    /// Shakes per second per phone.
    pub rate_per_s: f64,
    /// Each interval is scaled by a random factor in `1 +- jitter`.
    pub jitter: f64,
    /// Every phone shakes at once when a round opens (the "shake now" moment).
    pub spike: bool,
}

impl Default for Shaking {
    fn default() -> Self {
        Self { rate_per_s: 2.0, jitter: 0.5, spike: true }
    }
}

/// Phones that disconnect and reconnect (resuming their TLS session) during the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// Share of phones that churn.
    pub share: f64,
    /// Each churning phone reconnects about this often, seconds.
    pub every_s: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Self { share: 0.0, every_s: 10.0 }
    }
}

/// Misbehaving phones, as shares of the swarm.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hostile {
    /// Shake ten times the scenario's rate (and ignore slow-down).
    pub over_rate: f64,
    /// Present a token signed with the wrong key.
    pub forged_token: f64,
    /// Present an expired token.
    pub expired_token: f64,
    /// Send malformed datagrams between shakes.
    pub malformed: f64,
    /// Send a control frame larger than the protocol allows, after `Welcome`.
    pub oversized_frame: f64,
    /// Try to open many streams, then shake.
    pub stream_flood: f64,
    /// Start handshakes from fresh source ports over and over, and never say `Hello`.
    pub connection_flood: f64,
    /// Connections of multi-connection cheaters: each cheating user holds
    /// `connections_per_cheater` of them (spread over source addresses and edge workers),
    /// shaking at the scenario's rate from each, and reconnects whenever superseded.
    pub multi_connection: f64,
    /// Connections each cheating user holds.
    pub connections_per_cheater: usize,
}

impl Default for Hostile {
    fn default() -> Self {
        Self {
            over_rate: 0.0,
            forged_token: 0.0,
            expired_token: 0.0,
            malformed: 0.0,
            oversized_frame: 0.0,
            stream_flood: 0.0,
            connection_flood: 0.0,
            multi_connection: 0.0,
            connections_per_cheater: 10,
        }
    }
}

impl Hostile {
    /// Every share with its field name, in the order roles are drawn.
    pub fn shares(&self) -> [(&'static str, f64); 8] {
        [
            ("hostile.over_rate", self.over_rate),
            ("hostile.forged_token", self.forged_token),
            ("hostile.expired_token", self.expired_token),
            ("hostile.malformed", self.malformed),
            ("hostile.oversized_frame", self.oversized_frame),
            ("hostile.stream_flood", self.stream_flood),
            ("hostile.connection_flood", self.connection_flood),
            ("hostile.multi_connection", self.multi_connection),
        ]
    }
}

fn default_server_name() -> String {
    "localhost".to_owned()
}
fn default_client_endpoints() -> usize {
    8
}
fn default_first_user() -> u64 {
    1_000_000
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        shake_ops::config::load(path)
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        shake_ops::config::parse(text)
    }
}

/// The bounds a scenario is held to. Each is far past any run this machine or a test can make;
/// they exist so that an absurd number is a usage error, not a panic deep in the run (an
/// instant or duration overflowing) or a run that never ends.
const MAX_PHONES: usize = 10_000_000;
const MAX_DURATION_S: u64 = 7 * 24 * 3600;
const MAX_CLIENT_ENDPOINTS: usize = 4_096;
const SHAKE_RATE_RANGE: std::ops::RangeInclusive<f64> = 0.001..=1_000.0;
const MAX_CONNECT_RATE: f64 = 10_000_000.0;
const CHURN_EVERY_S_RANGE: std::ops::RangeInclusive<f64> = 1.0..=86_400.0;

impl Validate for Scenario {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_PHONES).contains(&self.phones) {
            return Err(invalid("phones", "1 to 10,000,000"));
        }
        if self.edges.is_empty() {
            return Err(invalid("edges", "at least one edge"));
        }
        if !(1..=MAX_DURATION_S).contains(&self.duration_s) {
            return Err(invalid("duration_s", "1 s to a week (604,800)"));
        }
        if !(1..=MAX_CLIENT_ENDPOINTS).contains(&self.client_endpoints) {
            return Err(invalid("client_endpoints", "1 to 4,096"));
        }
        if !SHAKE_RATE_RANGE.contains(&self.shaking.rate_per_s) {
            return Err(invalid("shaking.rate_per_s", "0.001 to 1,000"));
        }
        if !(0.0..1.0).contains(&self.shaking.jitter) {
            return Err(invalid("shaking.jitter", "must be in [0, 1)"));
        }
        let connect = self.connect.phones_per_s;
        if !(connect == 0.0 || (0.001..=MAX_CONNECT_RATE).contains(&connect)) {
            return Err(invalid("connect.phones_per_s", "0 (storm), or 0.001 to 10,000,000"));
        }
        if !(0.0..=1.0).contains(&self.churn.share) {
            return Err(invalid("churn.share", "a share between 0 and 1"));
        }
        if !CHURN_EVERY_S_RANGE.contains(&self.churn.every_s) {
            return Err(invalid("churn.every_s", "1 to 86,400"));
        }
        let shares = self.hostile.shares();
        for (field, share) in shares {
            if !(0.0..=1.0).contains(&share) {
                return Err(invalid(field, "a share between 0 and 1"));
            }
        }
        if shares.iter().map(|(_, share)| share).sum::<f64>() > 1.0 {
            return Err(invalid("hostile", "shares add up to more than 1"));
        }
        if !(2..=10_000).contains(&self.hostile.connections_per_cheater) {
            return Err(invalid("hostile.connections_per_cheater", "2 to 10,000"));
        }
        if self.driver == PhoneDriver::Loop {
            if let Some((field, _)) = shares.iter().find(|(_, share)| *share > 0.0) {
                return Err(invalid(
                    *field,
                    "must be 0 with driver = \"loop\" (honest phones only)",
                ));
            }
            if self.churn.share > 0.0 {
                return Err(invalid("churn.share", "must be 0 with driver = \"loop\""));
            }
            if self.shaking.spike {
                return Err(invalid(
                    "shaking.spike",
                    "must be false with driver = \"loop\" (phones keep their phase)",
                ));
            }
        }
        if hex(&self.tokens.secret_hex).is_none_or(|s| s.len() < 32) {
            return Err(invalid("tokens.secret_hex", "at least 32 bytes of hex"));
        }
        Ok(())
    }
}

/// Bytes from hex, if valid.
pub fn hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = include_str!("../scenarios/demo.toml");

    #[test]
    fn the_example_scenarios_are_valid() {
        let demo = Scenario::parse(DEMO).unwrap();
        assert!(demo.phones >= 1000);
        Scenario::parse(include_str!("../scenarios/hostile.toml")).unwrap();
        Scenario::parse(include_str!("../scenarios/storm.toml")).unwrap();
        let on_loop = Scenario::parse(include_str!("../scenarios/loop.toml")).unwrap();
        assert_eq!(on_loop.driver, PhoneDriver::Loop);
    }

    #[test]
    fn bad_values_name_their_field() {
        let field = |from: &str, to: &str| match Scenario::parse(&DEMO.replace(from, to)) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{to}: {other:?}"),
        };
        assert_eq!(field("phones = 2000", "phones = 0"), "phones");
        assert_eq!(field("jitter = 0.5", "jitter = 1.5"), "shaking.jitter");
        assert_eq!(field("rate_per_s = 2.0", "rate_per_s = 0.0"), "shaking.rate_per_s");
        assert_eq!(field("edges = [\"127.0.0.1:7443\"]", "edges = []"), "edges");
        assert_eq!(field("share = 0.1", "share = 2.0"), "churn.share");
    }

    /// Numbers past any real run are usage errors: each of these panicked in the run (an
    /// instant or a duration overflowing) or would never end.
    #[test]
    fn absurd_numbers_are_refused_not_run() {
        let field = |from: &str, to: &str| match Scenario::parse(&DEMO.replace(from, to)) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{to}: {other:?}"),
        };
        let huge = u64::MAX.to_string();
        assert_eq!(field("duration_s = 60", &format!("duration_s = {huge}")), "duration_s");
        assert_eq!(field("rate_per_s = 2.0", "rate_per_s = 1e-300"), "shaking.rate_per_s");
        assert_eq!(field("rate_per_s = 2.0", "rate_per_s = inf"), "shaking.rate_per_s");
        assert_eq!(field("phones_per_s = 1000", "phones_per_s = 1e-300"), "connect.phones_per_s");
        assert_eq!(field("phones_per_s = 1000", "phones_per_s = nan"), "connect.phones_per_s");
        assert_eq!(field("every_s = 10.0", "every_s = 1e300"), "churn.every_s");
        assert_eq!(field("phones = 2000", "phones = 100000000"), "phones");
        assert_eq!(field("client_endpoints = 8", "client_endpoints = 100000"), "client_endpoints");
        let at_the_bounds = DEMO
            .replace("duration_s = 60", "duration_s = 604800")
            .replace("rate_per_s = 2.0", "rate_per_s = 0.001")
            .replace("phones_per_s = 1000", "phones_per_s = 0");
        Scenario::parse(&at_the_bounds).unwrap();
    }

    #[test]
    fn the_loop_driver_takes_honest_phones_without_churn_or_spike() {
        let on_loop = |text: &str| Scenario::parse(&format!("driver = \"loop\"\n{text}"));
        let honest =
            DEMO.replace("share = 0.1", "share = 0.0").replace("spike = true", "spike = false");
        assert_eq!(on_loop(&honest).unwrap().driver, PhoneDriver::Loop);
        assert_eq!(Scenario::parse(DEMO).unwrap().driver, PhoneDriver::Quinn, "the default");
        let field = |text: &str| match on_loop(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(&honest.replace("share = 0.0", "share = 0.1")), "churn.share");
        assert_eq!(field(&honest.replace("spike = false", "spike = true")), "shaking.spike");
        assert_eq!(
            field(&honest.replace("over_rate = 0.0", "over_rate = 0.1")),
            "hostile.over_rate"
        );
        assert!(Scenario::parse(&format!("driver = \"tokio\"\n{honest}")).is_err());
    }
}
