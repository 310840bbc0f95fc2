//! The edge's TOML configuration, its defaults and `validate()`, which names the field at fault.
//! `edge/shake-edge.example.toml` is the annotated example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shake_ops::bearer::BearerToken;
pub use shake_ops::config::ConfigError;
use shake_ops::config::{TlsFile, Validate, check_tls_file, invalid};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// This edge's id; its allocator client certificate must name `edge-<id>`.
    pub edge_id: u64,
    /// The one UDP port phones connect to (every worker binds it with SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Worker threads, each with its own QUIC endpoint, batcher and allocator stream; 0 means
    /// one per core.
    #[serde(default)]
    pub workers: usize,
    /// How long a worker lets datagrams gather after a turn that was not
    /// full before it waits again, microseconds (interrupt moderation in user space). A
    /// lightly loaded worker then wakes once per batch, not once per datagram, for at most
    /// this much added latency; deadlines still wake it on time, and a full turn goes
    /// straight on. 0 waits at once.
    #[serde(default = "default_batch_delay_us")]
    pub batch_delay_us: u64,
    /// The workers' threads' nice value, -20 to 19 (0: left as the process has it). On a
    /// machine shared with other services, a negative value lets a worker take its core back
    /// as soon as it has datagrams, instead of waiting its turn behind a burst of another
    /// program's threads (docs/PERFORMANCE.md, "What held the edge off its core"). Below 0
    /// needs `CAP_SYS_NICE`; a worker that cannot set it does not start.
    #[serde(default)]
    pub worker_nice: i32,
    /// Runs the workers' threads in the real-time `SCHED_FIFO` class at this priority, 1 to 99
    /// (0: the normal scheduler, `worker_nice` applies). A worker then takes its core the
    /// moment it has work, ahead of every normal thread, and keeps it until it waits; the
    /// kernel's real-time throttling leaves other threads on the core 5% of each second when
    /// a worker is saturated. Needs `CAP_SYS_NICE`; a worker that cannot set it does not
    /// start.
    #[serde(default)]
    pub worker_fifo_priority: u8,
    /// Prometheus `/metrics` and `/health`; none to serve neither.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// A file holding the bearer token that `GET /users/{id}` on `metrics_listen` needs (16
    /// bytes or more, surrounding whitespace ignored); none to serve no user's report (the
    /// metrics listener is usually open to every scraper).
    #[serde(default)]
    pub users_token_file: Option<PathBuf>,
    /// UDP receive and send buffer per worker socket, bytes.
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer_bytes: usize,
    /// The certificate phones see (ECDSA P-256 recommended).
    pub tls: PhoneTls,
    /// The allocator link.
    pub allocator: AllocatorLink,
    /// HMAC keys for session tokens, by key id (rotation: keep the old key until its tokens
    /// expire).
    pub token_keys: Vec<TokenKey>,
    /// Sessions and admission.
    #[serde(default)]
    pub limits: Limits,
    /// QUIC transport settings for phones.
    #[serde(default)]
    pub transport: PhoneTransport,
    /// Overload control of the workers.
    #[serde(default)]
    pub overload: OverloadConfig,
}

/// Overload control: pacing phones, refusing handshakes and shedding datagrams when a worker
/// is over its target (docs/PERFORMANCE.md, "The round-open surge").
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadConfig {
    /// Off: a worker never paces, refuses or sheds for load (only for its other limits).
    pub enabled: bool,
    /// Queue delay target, milliseconds: while a worker sheds (a standing queue, the shortest
    /// wait of an interval above this; or kernel drops), a shake that waited longer in the
    /// socket is answered `SlowDown` instead of going to the allocator.
    pub queue_delay_target_ms: u64,
    /// A datagram big enough to carry a shake that waited longer than this in the socket is
    /// dropped unanswered, milliseconds.
    pub queue_delay_limit_ms: u64,
    /// How often a worker judges its load, milliseconds.
    pub interval_ms: u64,
    /// The longest interval between shakes a worker asks of its phones, milliseconds.
    pub max_pace_ms: u32,
    /// A worker whose loop was busy this share of an interval (0 to 1) counts as over its
    /// target: the share of the wall time its turns took, or of the CPU its cgroup's quota
    /// allows it that it used, whichever is higher.
    pub busy_target: f64,
    /// Shakes one fully busy core of this machine answers per second (0: not known), from
    /// `scripts/bench.sh edge` on the same hardware (its JSON field `edge_max_shakes_per_s`). Known, a worker paces
    /// its phones before a round opens: when its phones shaking at once would need more than
    /// this (times its share of a core, under a CPU quota), it tells them the pace and a
    /// start spread that keep it at its target load, so the opening never queues.
    pub shakes_per_core_s: f64,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            queue_delay_target_ms: 5,
            queue_delay_limit_ms: 100,
            interval_ms: 100,
            max_pace_ms: 10_000,
            busy_target: 0.9,
            shakes_per_core_s: 0.0,
        }
    }
}

impl OverloadConfig {
    /// The workers' settings.
    pub fn settings(&self) -> crate::overload::OverloadSettings {
        crate::overload::OverloadSettings {
            enabled: self.enabled,
            target_us: self.queue_delay_target_ms * 1000,
            limit_us: self.queue_delay_limit_ms * 1000,
            interval_us: self.interval_ms * 1000,
            max_pace_ms: self.max_pace_ms,
            busy_target: self.busy_target,
            shakes_per_core_s: self.shakes_per_core_s,
        }
    }
}

/// The edge's server certificate for phones.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhoneTls {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// How to reach the allocator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllocatorLink {
    /// Its QUIC address, or every allocator's (`["10.0.0.1:7000", "10.0.0.2:7000"]`) when
    /// several share a PostgreSQL ledger: the edge finds the leader (standbys redirect it).
    pub addr: Addresses,
    /// The name in its certificate.
    #[serde(default = "default_server_name")]
    pub server_name: String,
    /// CA that signed the allocator's certificate.
    pub ca: PathBuf,
    /// This edge's client certificate (must name `edge-<edge_id>`).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// One address or several: IP and port, each (host names are not resolved).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "AddressText")]
pub enum Addresses {
    /// One allocator.
    One(SocketAddr),
    /// Several, tried in order.
    Several(Vec<SocketAddr>),
}

/// [`Addresses`] as written, parsed by [`TryFrom`] so that a host name is refused by name
/// (serde's own refusal of an untagged `SocketAddr` says only that no variant matched).
#[derive(Deserialize)]
#[serde(untagged)]
enum AddressText {
    One(String),
    Several(Vec<String>),
}

impl TryFrom<AddressText> for Addresses {
    type Error = String;

    fn try_from(text: AddressText) -> Result<Self, String> {
        let parse = |s: &str| {
            s.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "`{s}` is not an IP address and port: host names are not resolved (give \
                     the allocator's address, as in 10.0.0.1:7400 or [2001:db8::1]:7400)"
                )
            })
        };
        match text {
            AddressText::One(s) => parse(&s).map(Addresses::One),
            AddressText::Several(list) => {
                list.iter().map(|s| parse(s)).collect::<Result<_, _>>().map(Addresses::Several)
            }
        }
    }
}

impl Addresses {
    /// Every address, in the order given.
    pub fn all(&self) -> Vec<SocketAddr> {
        match self {
            Addresses::One(addr) => vec![*addr],
            Addresses::Several(addrs) => addrs.clone(),
        }
    }
}

/// One session-token key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKey {
    /// Key id, as carried in tokens.
    pub id: u32,
    /// The HMAC secret, hex, at least 32 bytes.
    pub secret_hex: String,
}

impl TokenKey {
    /// The secret's bytes, if the hex is valid.
    pub fn secret(&self) -> Option<Vec<u8>> {
        let hex = self.secret_hex.trim();
        if !hex.len().is_multiple_of(2) {
            return None;
        }
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
    }
}

/// The longest drain a configuration may ask for, milliseconds: `deploy/systemd`'s edge unit
/// stops the process (SIGKILL) after `TimeoutStopSec`, which must outlast it, so a longer one
/// would be cut short with answers still in flight.
pub const MAX_DRAIN_DEADLINE_MS: u64 = 60_000;

/// Sessions and admission limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// A phone must send a valid `Hello` within this long of its handshake's completion,
    /// milliseconds.
    pub hello_timeout_ms: u64,
    /// A QUIC handshake must complete within this long of its first packet, milliseconds: an
    /// attempt that never completes holds a slot of `max_handshakes` and of its source's cap,
    /// and quinn-proto ends it only when it falls silent for the idle timeout.
    pub handshake_timeout_ms: u64,
    /// Each phone's own shakes per second (anti-spam).
    pub phone_rate_per_s: f64,
    /// Each phone's burst.
    pub phone_burst: f64,
    /// The edge's admission rate while no valid quota is known (allocator unreachable).
    pub fallback_rate_per_s: f64,
    /// Burst of the fallback bucket.
    pub fallback_burst: f64,
    /// Flush a batch at this many entries.
    pub batch_max_entries: usize,
    /// Flush a batch at this age, microseconds.
    pub batch_max_age_us: u64,
    /// Batches awaiting an answer per worker before admitted shakes get a local verdict.
    pub max_in_flight_batches: usize,
    /// Connection attempts in progress per source address and worker (handshaking, or
    /// connected and not yet past `Hello`) before new ones from it are ignored.
    pub handshakes_per_source: u32,
    /// New handshakes per second one source may start, for the whole edge, divided between
    /// its workers (a source that keeps one port reaches one worker, and its share); faster
    /// ones are refused. A source is an IPv4 address or an IPv6 /64. Phones behind one
    /// carrier NAT share it.
    pub new_handshakes_per_source_per_s: f64,
    /// Burst of that rate.
    pub new_handshakes_per_source_burst: f64,
    /// Source addresses tracked at once (whole edge); past it, unknown sources must answer a
    /// Retry first.
    pub max_tracked_sources: usize,
    /// Connection attempts in progress (whole edge: handshaking, or connected and not yet past
    /// `Hello`) before new ones are refused.
    pub max_handshakes: u32,
    /// Connection attempts in progress (whole edge, counted as for `max_handshakes`) past which
    /// clients must validate their address with a Retry first.
    pub retry_above_handshakes: u32,
    /// Connected phones (whole edge) before new handshakes are refused.
    pub max_phones: u32,
    /// On SIGTERM: how long to wait for the allocator's answers before exiting, milliseconds
    /// (at most [`MAX_DRAIN_DEADLINE_MS`]).
    pub drain_deadline_ms: u64,
    /// Awards sent to phones and not yet acknowledged that the edge remembers (whole edge), so
    /// that only the winner's phone can acknowledge one; past it the oldest are forgotten (they
    /// stay undelivered in the ledger).
    pub max_outstanding_awards: usize,
    /// How long an award sent to a phone may wait for its acknowledgement, seconds.
    pub award_ack_window_s: u64,
    /// One live session per user: how often a user's new session may supersede the live one,
    /// per minute (past it the new session is refused with `SESSION_IN_USE`).
    pub user_supersedes_per_min: f64,
    /// Burst of that rate (a phone that changed networks supersedes its stale session at once).
    pub user_supersede_burst: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            hello_timeout_ms: 5_000,
            handshake_timeout_ms: 10_000,
            phone_rate_per_s: 10.0,
            phone_burst: 20.0,
            fallback_rate_per_s: 1_000.0,
            fallback_burst: 100.0,
            batch_max_entries: 1024,
            batch_max_age_us: 2_000,
            max_in_flight_batches: 16,
            handshakes_per_source: 64,
            new_handshakes_per_source_per_s: 50.0,
            new_handshakes_per_source_burst: 200.0,
            max_tracked_sources: 65_536,
            max_handshakes: 4_096,
            retry_above_handshakes: 1_024,
            max_phones: 1_000_000,
            drain_deadline_ms: 5_000,
            max_outstanding_awards: 100_000,
            award_ack_window_s: 3_600,
            user_supersedes_per_min: 1.0,
            user_supersede_burst: 2.0,
        }
    }
}

/// QUIC transport for phones: the control stream and nothing more, small windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhoneTransport {
    /// Close a phone's connection after this long without packets, milliseconds.
    pub idle_timeout_ms: u64,
    /// Flow-control window of the control stream, bytes.
    pub stream_window: u32,
    /// Connection flow-control window, bytes.
    pub connection_window: u32,
    /// Send window per connection, bytes.
    pub send_window: u64,
    /// Buffered incoming datagrams per connection, bytes.
    pub datagram_receive_buffer: usize,
    /// Buffered outgoing datagrams per connection, bytes.
    pub datagram_send_buffer: usize,
}

impl Default for PhoneTransport {
    fn default() -> Self {
        Self {
            idle_timeout_ms: 30_000,
            stream_window: 4 * 1024,
            connection_window: 8 * 1024,
            send_window: 16 * 1024,
            datagram_receive_buffer: 4 * 1024,
            datagram_send_buffer: 4 * 1024,
        }
    }
}

fn default_batch_delay_us() -> u64 {
    DEFAULT_BATCH_DELAY_US
}

/// The longest `limits.batch_max_age_us`, microseconds (10 s).
pub const MAX_BATCH_AGE_US: u64 = 10_000_000;
/// The longest `limits.hello_timeout_ms` and `limits.handshake_timeout_ms` (10 min): past it,
/// a deadline overflowed the clock and stopped the worker at its first handshake.
pub const MAX_HELLO_TIMEOUT_MS: u64 = 600_000;

/// The longest a phone's connection may stay idle: an hour, far past a show's gap between
/// rounds (QUIC carries it as a varint of milliseconds, so a huge value fails only at start).
pub const MAX_IDLE_TIMEOUT_MS: u64 = 3_600_000;

/// The most awards a worker remembers sent and unacknowledged: its book takes twice this in
/// slots, and 2^24 is far past what a worker's phones could be owed.
pub const MAX_OUTSTANDING_AWARDS: usize = 1 << 24;
/// The longest `batch_delay_us`, microseconds (10 ms).
pub const MAX_BATCH_DELAY_US: u64 = 10_000;
/// The longest of the `[overload]` durations, milliseconds (a minute).
pub const MAX_OVERLOAD_MS: u64 = 60_000;

/// The default `batch_delay_us` (docs/PERFORMANCE.md has the measurement behind it).
pub const DEFAULT_BATCH_DELAY_US: u64 = 200;

fn default_socket_buffer() -> usize {
    8 * 1024 * 1024
}
fn default_server_name() -> String {
    "localhost".to_owned()
}

impl EdgeConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        shake_ops::config::load(path)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        shake_ops::config::parse(text)
    }

    /// Workers to run: the configured number, or one per core up to 256 (a connection ID
    /// names its worker in one byte).
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_WORKERS)
        } else {
            self.workers
        }
    }
}

/// The least a control stream's window (and the connection's) may be: a whole control frame
/// (at most [`shake_proto::limits::MAX_CONTROL_PAYLOAD`] and its header) and room for the next.
const MIN_CONTROL_WINDOW: usize = 2 * shake_proto::limits::MAX_CONTROL_PAYLOAD;

/// Most workers one edge runs: a connection ID names its worker in one byte, and the
/// allocator takes worker ids below [`shake_proto::limits::MAX_WORKERS_PER_EDGE`].
pub const MAX_WORKERS: usize = shake_proto::limits::MAX_WORKERS_PER_EDGE as usize;

impl Validate for EdgeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let addrs = self.allocator.addr.all();
        if addrs.is_empty() || addrs.len() > 16 {
            return Err(invalid("allocator.addr", "give 1 to 16 addresses"));
        }
        if addrs.iter().enumerate().any(|(i, a)| addrs[..i].contains(a)) {
            return Err(invalid("allocator.addr", "an address appears twice"));
        }
        // The id travels as a varint in every `EdgeHello`: a larger one could never be sent.
        if self.edge_id > shake_proto::varint::MAX {
            return Err(invalid("edge_id", "at most 2^62 - 1"));
        }
        if self.workers > MAX_WORKERS {
            return Err(invalid("workers", "at most 256"));
        }
        if !(-20..=19).contains(&self.worker_nice) {
            return Err(invalid("worker_nice", "a nice value, -20 to 19"));
        }
        if self.worker_fifo_priority > 99 {
            return Err(invalid("worker_fifo_priority", "0 (off) or 1 to 99"));
        }
        if self.users_token_file.is_some() && self.metrics_listen.is_none() {
            return Err(invalid("users_token_file", "is served on metrics_listen: set it too"));
        }
        if self.token_keys.is_empty() {
            return Err(invalid("token_keys", "at least one key is needed"));
        }
        for (i, key) in self.token_keys.iter().enumerate() {
            match key.secret() {
                None => return Err(invalid(format!("token_keys[{i}].secret_hex"), "not hex")),
                Some(s) if s.len() < shake_proto::token::MIN_SECRET_LEN => {
                    return Err(invalid(
                        format!("token_keys[{i}].secret_hex"),
                        "shorter than 32 bytes",
                    ));
                }
                Some(_) => {}
            }
            if self.token_keys[..i].iter().any(|k| k.id == key.id) {
                return Err(invalid(format!("token_keys[{i}].id"), "appears twice"));
            }
        }
        let l = &self.limits;
        let positive = [
            ("limits.phone_rate_per_s", l.phone_rate_per_s),
            ("limits.phone_burst", l.phone_burst),
            ("limits.fallback_burst", l.fallback_burst),
            ("limits.new_handshakes_per_source_per_s", l.new_handshakes_per_source_per_s),
            ("limits.new_handshakes_per_source_burst", l.new_handshakes_per_source_burst),
            ("limits.user_supersede_burst", l.user_supersede_burst),
        ];
        for (field, value) in positive {
            if !(value.is_finite() && value >= 1.0) {
                return Err(invalid(field, "must be at least 1"));
            }
        }
        if !(l.user_supersedes_per_min.is_finite() && l.user_supersedes_per_min > 0.0) {
            return Err(invalid("limits.user_supersedes_per_min", "must be above 0"));
        }
        if !(l.fallback_rate_per_s.is_finite() && l.fallback_rate_per_s >= 0.0) {
            return Err(invalid("limits.fallback_rate_per_s", "must be 0 or more"));
        }
        if !(1..=shake_proto::limits::MAX_BATCH_ENTRIES).contains(&l.batch_max_entries) {
            return Err(invalid("limits.batch_max_entries", "must be 1 to 16,384"));
        }
        // Upper bounds on durations: each is far past any useful value, and keeps a unit slip
        // (milliseconds for microseconds) from a silent stall, and the arithmetic on them
        // (times a thousand, added to now) from overflowing.
        if l.hello_timeout_ms > MAX_HELLO_TIMEOUT_MS {
            return Err(invalid("limits.hello_timeout_ms", "at most 600,000 (10 min)"));
        }
        if l.handshake_timeout_ms > MAX_HELLO_TIMEOUT_MS {
            return Err(invalid("limits.handshake_timeout_ms", "at most 600,000 (10 min)"));
        }
        if l.batch_max_age_us > MAX_BATCH_AGE_US {
            return Err(invalid("limits.batch_max_age_us", "at most 10,000,000 (10 s)"));
        }
        if self.batch_delay_us > MAX_BATCH_DELAY_US {
            return Err(invalid(
                "batch_delay_us",
                "at most 10,000 (10 ms: each turn that is not full waits this long)",
            ));
        }
        if l.batch_max_age_us == 0
            || l.max_in_flight_batches == 0
            || l.hello_timeout_ms == 0
            || l.handshake_timeout_ms == 0
        {
            return Err(invalid(
                "limits",
                "batch_max_age_us, max_in_flight_batches, hello_timeout_ms and \
                 handshake_timeout_ms must be above 0",
            ));
        }
        // The allocator keeps at most 4,096 batches of a worker drawn and not confirmed (in
        // flight, or answered with the confirmation still to come), and an outage's backlog
        // is resent whole before any confirmation: half of it, so that answered batches
        // awaiting their confirmation never tip a resend into FLOOD.
        if l.max_in_flight_batches > shake_proto::limits::MAX_UNCONFIRMED_BATCHES / 2 {
            return Err(invalid(
                "limits.max_in_flight_batches",
                "at most 2,048 (half what the allocator keeps unconfirmed for one worker)",
            ));
        }
        if l.handshakes_per_source == 0 || l.max_tracked_sources == 0 {
            return Err(invalid(
                "limits",
                "handshakes_per_source and max_tracked_sources must be above 0",
            ));
        }
        if l.max_outstanding_awards == 0 || l.award_ack_window_s == 0 {
            return Err(invalid(
                "limits",
                "max_outstanding_awards and award_ack_window_s must be above 0",
            ));
        }
        if l.max_outstanding_awards > MAX_OUTSTANDING_AWARDS {
            return Err(invalid("limits.max_outstanding_awards", "at most 16,777,216"));
        }
        if l.retry_above_handshakes > l.max_handshakes {
            return Err(invalid("limits.retry_above_handshakes", "must not exceed max_handshakes"));
        }
        if l.drain_deadline_ms > MAX_DRAIN_DEADLINE_MS {
            return Err(invalid(
                "limits.drain_deadline_ms",
                "at most 60,000 (the systemd unit's stop timeout must outlast the drain)",
            ));
        }
        let t = &self.transport;
        if t.idle_timeout_ms == 0 || t.idle_timeout_ms > MAX_IDLE_TIMEOUT_MS {
            return Err(invalid("transport.idle_timeout_ms", "1 to 3,600,000 (an hour)"));
        }
        // Each must hold the largest thing that goes through it, or the phone can never send
        // its `Hello` (HELLO_TIMEOUT for every phone) or a shake's datagram.
        let frame = (MIN_CONTROL_WINDOW, "at least 2048 (the largest control frame)");
        let datagram = (shake_proto::limits::MAX_DATAGRAM, "at least 1200 (the largest datagram)");
        for (field, value, (least, why)) in [
            ("transport.stream_window", t.stream_window as usize, frame),
            ("transport.connection_window", t.connection_window as usize, frame),
            ("transport.send_window", t.send_window.try_into().unwrap_or(usize::MAX), frame),
            ("transport.datagram_receive_buffer", t.datagram_receive_buffer, datagram),
            ("transport.datagram_send_buffer", t.datagram_send_buffer, datagram),
        ] {
            if value < least {
                return Err(invalid(field, why));
            }
        }
        let o = &self.overload;
        for (field, ms) in [
            ("overload.queue_delay_target_ms", o.queue_delay_target_ms),
            ("overload.queue_delay_limit_ms", o.queue_delay_limit_ms),
            ("overload.interval_ms", o.interval_ms),
        ] {
            if ms > MAX_OVERLOAD_MS {
                return Err(invalid(field, "at most 60,000"));
            }
        }
        if o.queue_delay_target_ms == 0 {
            return Err(invalid("overload.queue_delay_target_ms", "must be above 0"));
        }
        if o.queue_delay_limit_ms < o.queue_delay_target_ms {
            return Err(invalid("overload.queue_delay_limit_ms", "must be at least the target"));
        }
        if o.interval_ms < o.queue_delay_target_ms {
            return Err(invalid("overload.interval_ms", "must be at least queue_delay_target_ms"));
        }
        if !(o.busy_target > 0.0 && o.busy_target <= 1.0) {
            return Err(invalid("overload.busy_target", "must be above 0 and at most 1"));
        }
        if !(100..=shake_proto::limits::MAX_TOLD_WAIT_MS).contains(&o.max_pace_ms) {
            let most = shake_proto::limits::MAX_TOLD_WAIT_MS;
            let why = format!("must be 100 to {most} (phones honour no longer interval)");
            return Err(invalid("overload.max_pace_ms", why));
        }
        if !(o.shakes_per_core_s >= 0.0 && o.shakes_per_core_s.is_finite()) {
            return Err(invalid("overload.shakes_per_core_s", "must be 0 (unknown) or above"));
        }
        Ok(())
    }

    fn check_files(&self) -> Result<(), ConfigError> {
        check_tls_file("tls.cert", &self.tls.cert, TlsFile::Certificates)?;
        check_tls_file("tls.key", &self.tls.key, TlsFile::PrivateKey)?;
        check_tls_file("allocator.ca", &self.allocator.ca, TlsFile::Certificates)?;
        check_tls_file("allocator.cert", &self.allocator.cert, TlsFile::Certificates)?;
        check_tls_file("allocator.key", &self.allocator.key, TlsFile::PrivateKey)?;
        if let Some(file) = &self.users_token_file {
            BearerToken::read(file).map_err(|why| invalid("users_token_file", why))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../shake-edge.example.toml");

    #[test]
    fn the_annotated_example_is_valid() {
        let config = EdgeConfig::parse(EXAMPLE).unwrap();
        assert_eq!(config.limits.batch_max_entries, 1024);
        assert_eq!(config.token_keys[0].secret().unwrap().len(), 32);
    }

    fn field_of(text: &str) -> String {
        match EdgeConfig::parse(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn allocator_addresses_are_ip_and_port_and_a_name_is_refused_by_name() {
        let several = EXAMPLE
            .replace("addr = \"127.0.0.1:7400\"", "addr = [\"10.0.0.1:7400\", \"[::1]:7401\"]");
        let addrs = EdgeConfig::parse(&several).unwrap().allocator.addr.all();
        assert_eq!(addrs, ["10.0.0.1:7400".parse().unwrap(), "[::1]:7401".parse().unwrap()]);
        for named in ["\"alloc-a:7400\"", "[\"10.0.0.1:7400\", \"alloc-b:7400\"]"] {
            let text = EXAMPLE.replace("addr = \"127.0.0.1:7400\"", &format!("addr = {named}"));
            let said = EdgeConfig::parse(&text).unwrap_err().to_string();
            assert!(said.contains("host names are not resolved"), "{said}");
            assert!(said.contains("alloc-"), "{said}");
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let short = EXAMPLE.replace(
            "secret_hex = \"7368616b652d6465762d746f6b656e2d7365637265742d6e6f742d666f722d70\"",
            "secret_hex = \"abcd\"",
        );
        assert_eq!(field_of(&short), "token_keys[0].secret_hex");
        let window = EXAMPLE.replace("stream_window = 4096", "stream_window = 0");
        assert_eq!(field_of(&window), "transport.stream_window");
        let datagrams =
            EXAMPLE.replace("datagram_receive_buffer = 4096", "datagram_receive_buffer = 100");
        assert_eq!(field_of(&datagrams), "transport.datagram_receive_buffer");
        let batch = EXAMPLE.replace("batch_max_entries = 1024", "batch_max_entries = 0");
        assert_eq!(field_of(&batch), "limits.batch_max_entries");
        for pace in ["99", "600001"] {
            let text = EXAMPLE.replace("max_pace_ms = 10000", &format!("max_pace_ms = {pace}"));
            assert_eq!(field_of(&text), "overload.max_pace_ms", "{pace}");
        }
        for nice in ["-21", "20"] {
            let text = EXAMPLE.replace("worker_nice = 0", &format!("worker_nice = {nice}"));
            assert_eq!(field_of(&text), "worker_nice");
        }
        let nice = EXAMPLE.replace("worker_nice = 0", "worker_nice = -10");
        assert_eq!(EdgeConfig::parse(&nice).unwrap().worker_nice, -10);
        let fifo = EXAMPLE.replace("worker_fifo_priority = 0", "worker_fifo_priority = 100");
        assert_eq!(field_of(&fifo), "worker_fifo_priority");
        let retry =
            EXAMPLE.replace("retry_above_handshakes = 1024", "retry_above_handshakes = 99999");
        assert_eq!(field_of(&retry), "limits.retry_above_handshakes");
        let rate = EXAMPLE.replace(
            "new_handshakes_per_source_per_s = 50.0",
            "new_handshakes_per_source_per_s = 0.0",
        );
        assert_eq!(field_of(&rate), "limits.new_handshakes_per_source_per_s");
        let table = EXAMPLE.replace("max_tracked_sources = 65536", "max_tracked_sources = 0");
        assert_eq!(field_of(&table), "limits");
        let target = EXAMPLE.replace("queue_delay_target_ms = 5", "queue_delay_target_ms = 0");
        assert_eq!(field_of(&target), "overload.queue_delay_target_ms");
        let interval = EXAMPLE.replace("interval_ms = 100", "interval_ms = 2");
        assert_eq!(field_of(&interval), "overload.interval_ms");
        let limit = EXAMPLE.replace("queue_delay_limit_ms = 100", "queue_delay_limit_ms = 1");
        assert_eq!(field_of(&limit), "overload.queue_delay_limit_ms");
        let busy = EXAMPLE.replace("busy_target = 0.9", "busy_target = 1.5");
        assert_eq!(field_of(&busy), "overload.busy_target");
        let pace = EXAMPLE.replace("max_pace_ms = 10000", "max_pace_ms = 10");
        assert_eq!(field_of(&pace), "overload.max_pace_ms");
        let capacity = EXAMPLE.replace("shakes_per_core_s = 0.0", "shakes_per_core_s = -1.0");
        assert_eq!(field_of(&capacity), "overload.shakes_per_core_s");
        // Durations past any use: unit slips, or values whose arithmetic would overflow.
        let huge = u64::MAX.to_string();
        for (from, to, field) in [
            ("batch_max_age_us = 2000", "batch_max_age_us = 20000000", "limits.batch_max_age_us"),
            ("batch_delay_us = 200", "batch_delay_us = 200000", "batch_delay_us"),
            (
                "hello_timeout_ms = 5000",
                &format!("hello_timeout_ms = {huge}"),
                "limits.hello_timeout_ms",
            ),
            (
                "handshake_timeout_ms = 10000",
                &format!("handshake_timeout_ms = {huge}"),
                "limits.handshake_timeout_ms",
            ),
            ("interval_ms = 100", &format!("interval_ms = {huge}"), "overload.interval_ms"),
            (
                "queue_delay_limit_ms = 100",
                &format!("queue_delay_limit_ms = {huge}"),
                "overload.queue_delay_limit_ms",
            ),
        ] {
            assert_eq!(field_of(&EXAMPLE.replace(from, to)), field, "{to}");
        }
        // Numbers that could never travel, or that the allocator would refuse as a flood.
        for (from, to, field) in [
            ("edge_id = 1", "edge_id = 4611686018427387904", "edge_id"),
            (
                "max_in_flight_batches = 16",
                "max_in_flight_batches = 2049",
                "limits.max_in_flight_batches",
            ),
            (
                "max_outstanding_awards = 100000",
                "max_outstanding_awards = 16777217",
                "limits.max_outstanding_awards",
            ),
            ("idle_timeout_ms = 30000", "idle_timeout_ms = 3600001", "transport.idle_timeout_ms"),
        ] {
            assert_eq!(field_of(&EXAMPLE.replace(from, to)), field, "{to}");
        }
        for (from, to) in [
            ("edge_id = 1", "edge_id = 4611686018427387903"),
            ("max_in_flight_batches = 16", "max_in_flight_batches = 2048"),
            ("idle_timeout_ms = 30000", "idle_timeout_ms = 3600000"),
        ] {
            assert!(EdgeConfig::parse(&EXAMPLE.replace(from, to)).is_ok(), "{to}");
        }
        assert!(matches!(
            EdgeConfig::parse(&EXAMPLE.replace("edge_id = 1", "edge_id = \"one\"")),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn the_allocator_may_be_one_address_or_a_list() {
        let one = EdgeConfig::parse(EXAMPLE).unwrap();
        assert_eq!(one.allocator.addr.all(), vec!["127.0.0.1:7400".parse().unwrap()]);
        let list = EXAMPLE.replace(
            "addr = \"127.0.0.1:7400\"",
            "addr = [\"127.0.0.1:7400\", \"127.0.0.2:7400\"]",
        );
        let several = EdgeConfig::parse(&list).unwrap();
        assert_eq!(several.allocator.addr.all().len(), 2);
        let empty = EXAMPLE.replace("addr = \"127.0.0.1:7400\"", "addr = []");
        assert_eq!(field_of(&empty), "allocator.addr");
        let twice = EXAMPLE.replace(
            "addr = \"127.0.0.1:7400\"",
            "addr = [\"127.0.0.1:7400\", \"127.0.0.1:7400\"]",
        );
        assert_eq!(field_of(&twice), "allocator.addr");
    }

    /// A drain longer than the unit's stop timeout allows is refused (systemd would SIGKILL it
    /// with answers in flight); the longest allowed is accepted.
    #[test]
    fn a_drain_past_the_longest_the_unit_outlasts_is_refused() {
        let with = |ms: u64| {
            EXAMPLE.replace("drain_deadline_ms = 5000", &format!("drain_deadline_ms = {ms}"))
        };
        assert!(EdgeConfig::parse(&with(MAX_DRAIN_DEADLINE_MS)).is_ok());
        assert_eq!(field_of(&with(MAX_DRAIN_DEADLINE_MS + 1)), "limits.drain_deadline_ms");
    }
}
