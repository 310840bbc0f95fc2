//! The allocator's TOML configuration: what it reads, the defaults, and `validate()`, which
//! names the field at fault so `--check-config` can say exactly what to fix.
//!
//! `allocator/shake-allocator.example.toml` is the annotated example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
pub use shake_ops::config::ConfigError;
use shake_ops::config::{TlsFile, Validate, check_tls_file, invalid};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// QUIC listen address for edges.
    pub listen: SocketAddr,
    /// The UDP receive and send buffer of the QUIC socket, bytes: every edge's batches land
    /// in it at a round's opening. The kernel caps it at `net.core.rmem_max` / `wmem_max`
    /// (the allocator warns when it grants less); what overflows it is counted in
    /// `shake_allocator_kernel_drops_total`.
    #[serde(default = "default_socket_buffer")]
    pub socket_buffer_bytes: usize,
    /// Prometheus `/metrics` listen address; none to serve no metrics.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// The admin API's listen address (live round commands, the audit log); none to serve
    /// none. Needs `admin_token_file`.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
    /// A file holding the admin API's bearer token (16 bytes or more, surrounding whitespace
    /// ignored). Keep it readable by the allocator and the operators' tools alone.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// Which store holds the award ledger: `fjall` (embedded, the default) or `postgres`.
    #[serde(default)]
    pub ledger: LedgerKind,
    /// Where the fjall ledger lives (a directory; created if missing). Needed with `fjall`.
    #[serde(default)]
    pub ledger_path: Option<PathBuf>,
    /// The PostgreSQL ledger and the leadership among allocators. Needed with `postgres`.
    #[serde(default)]
    pub postgres: Option<PostgresConfig>,
    /// Edges are given admission for `oversampling x` the prizes released per second.
    #[serde(default = "default_oversampling")]
    pub oversampling: f64,
    /// How long a `Quota` is valid; quotas are refreshed at a third of this.
    #[serde(default = "default_quota_valid_ms")]
    pub quota_valid_ms: u64,
    /// Most batches in flight in one group commit.
    #[serde(default = "default_max_group_batches")]
    pub max_group_batches: usize,
    /// One user's entries, whatever their connections and edges.
    #[serde(default)]
    pub user_rate: UserRateConfig,
    /// TLS files.
    pub tls: TlsConfig,
    /// The rounds of the show.
    #[serde(default)]
    pub rounds: Vec<RoundConfig>,
}

/// The per-user rate (`[user_rate]`): entries beyond it are no-luck, repeat offenders are
/// refused at the edges for a while.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserRateConfig {
    /// Entries per second one user may have drawn (the edge's per-phone rate).
    pub per_s: f64,
    /// Bucket depth, entries (the edge's per-phone burst).
    pub burst: f64,
    /// Users tracked at once (a fixed table, 16 bytes each, rounded up to a power of two:
    /// 100,000 makes 131,072, at most twice what is asked); a new user takes the place of
    /// the least restricted one in its set.
    pub max_tracked_users: usize,
    /// Entries over the rate after which edges are told to refuse the user.
    pub limit_after_excess: u32,
    /// How long edges refuse such a user, seconds.
    pub limit_for_s: u64,
}

impl Default for UserRateConfig {
    fn default() -> Self {
        let d = crate::user_rate::UserRateSettings::default();
        Self {
            per_s: d.per_s,
            burst: d.burst,
            max_tracked_users: d.max_tracked_users,
            limit_after_excess: d.limit_after_excess,
            limit_for_s: d.limit_for_ms / 1000,
        }
    }
}

impl UserRateConfig {
    /// The accounting's settings.
    pub fn settings(&self) -> crate::user_rate::UserRateSettings {
        crate::user_rate::UserRateSettings {
            per_s: self.per_s,
            burst: self.burst,
            max_tracked_users: self.max_tracked_users,
            limit_after_excess: self.limit_after_excess,
            limit_for_ms: self.limit_for_s.saturating_mul(1000),
        }
    }
}

/// The store that holds the award ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// fjall, in `ledger_path` on local disk: one allocator, one machine.
    #[default]
    Fjall,
    /// PostgreSQL (`[postgres]`): several allocators, one leader, a replicated ledger.
    Postgres,
}

/// `[postgres]`: where the ledger is and how this allocator takes part in the leadership.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// A libpq connection string. Name every server of the cluster and ask for the primary, so
    /// that a promoted standby is found without a change here:
    /// `host=db1,db2,db3 port=5432,5432,5432 user=shake dbname=shake target_session_attrs=read-write`.
    pub url: String,
    /// This allocator's name in the lease row (unique among the allocators).
    pub node: String,
    /// The QUIC address edges should use for this allocator while it leads (what standbys
    /// redirect edges to); default: the bound `listen` address.
    #[serde(default)]
    pub advertise: Option<SocketAddr>,
    /// How long a leader's lease lasts without renewal, milliseconds: a standby takes over
    /// this long after a leader stops renewing (crash, pause, partition). Renewed every third.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How often a standby looks at the lease, milliseconds.
    #[serde(default = "default_standby_poll_ms")]
    pub standby_poll_ms: u64,
    /// Awards a standby reads from the log at one look, at most (1 to 1,000,000; default
    /// 50,000). After a full page it looks again at once, so this bounds one snapshot's
    /// memory and length, not how fast a standby catches up.
    #[serde(default = "default_follow_page_awards")]
    pub follow_page_awards: u32,
    /// The CA (PEM) that signed the database servers' certificates: connections then use TLS,
    /// required and verified (the certificate must name the host in the URL). Without it,
    /// plain TCP: only for loopback or a trusted network.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Database sessions writing group commits at once (1 to 8; default 1): with 2, the next
    /// group is written while the last one's commit waits for its fsync and the synchronous
    /// standby; commits still land, and are answered, in order. 2 raises what the ledger
    /// makes durable near its capacity and cuts the wait there, but costs a few milliseconds
    /// of p99 on a lightly loaded ledger (README "Commit lanes": measured both ways).
    #[serde(default = "default_commit_lanes")]
    pub commit_lanes: usize,
}

fn default_commit_lanes() -> usize {
    1
}

fn default_lease_ms() -> u64 {
    3_000
}
fn default_standby_poll_ms() -> u64 {
    250
}
fn default_follow_page_awards() -> u32 {
    50_000
}

/// Certificate files (PEM). `shake-allocator dev-certs DIR` writes a working set.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The allocator's certificate chain.
    pub cert: PathBuf,
    /// The allocator's private key.
    pub key: PathBuf,
    /// CA whose certificates edges must present (mutual TLS).
    pub edge_ca: PathBuf,
}

/// How prizes become available over a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// Evenly over the round's duration (the default): the pool does not drain in a second.
    #[default]
    Linear,
    /// Everything at round open.
    Immediate,
}

/// One round of the show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundConfig {
    /// Round id, unique and non-zero.
    pub id: u32,
    /// Opening time, Unix milliseconds.
    pub starts_at_ms: u64,
    /// Length of the round, seconds.
    pub duration_s: u64,
    /// Seed of the cash split, the release order and the draw: recorded, so an audit replays.
    pub seed: u64,
    /// How prizes are released.
    #[serde(default)]
    pub release: Release,
    /// Cash envelopes one user may win in this round.
    #[serde(default = "one")]
    pub cash_per_user: u8,
    /// Gifts one user may win in this round.
    #[serde(default = "one")]
    pub gifts_per_user: u8,
    /// Minimum shake interval phones are asked to keep, milliseconds.
    #[serde(default = "default_min_shake_interval_ms")]
    pub min_shake_interval_ms: u32,
    /// Phones start shaking staggered over this window after the opening, each at a place of
    /// its own (a hash of its user), milliseconds; 0: every phone at the opening. A crowd told
    /// "shake now" at one instant then reaches the edges spread instead of at once.
    #[serde(default)]
    pub start_spread_ms: u32,
    /// The cash pool, if any.
    #[serde(default)]
    pub cash: Option<CashPool>,
    /// Gift pools.
    #[serde(default)]
    pub gifts: Vec<GiftPool>,
}

impl RoundConfig {
    /// Closing time, Unix milliseconds.
    pub fn ends_at_ms(&self) -> u64 {
        self.starts_at_ms.saturating_add(self.duration_s.saturating_mul(1000))
    }

    /// Number of prizes in the round.
    pub fn prize_count(&self) -> u64 {
        self.gifts
            .iter()
            .fold(self.cash.as_ref().map_or(0, |c| c.envelopes), |n, g| n.saturating_add(g.count))
    }

    /// Adds a top-up's prizes to the round as configured: cash joins the cash pool (totals and
    /// envelopes add up, the smallest envelope is the smaller), a gift whose SKU the round has
    /// joins that pool, another becomes a new pool. Each gift's pool index and count.
    pub fn top_up(&mut self, cash: Option<&CashPool>, gifts: &[GiftPool]) -> Vec<(u16, u64)> {
        if let Some(added) = cash {
            let pool = self.cash.get_or_insert(CashPool {
                total_cents: 0,
                envelopes: 0,
                min_cents: added.min_cents,
            });
            // Saturating: new commands are held to the bounds before they are recorded, and
            // one recorded before a bound existed must still replay.
            pool.total_cents = pool.total_cents.saturating_add(added.total_cents);
            pool.envelopes = pool.envelopes.saturating_add(added.envelopes);
            pool.min_cents = pool.min_cents.min(added.min_cents);
        }
        gifts
            .iter()
            .map(|gift| {
                let pool = match self.gifts.iter().position(|g| g.sku == gift.sku) {
                    Some(pool) => {
                        self.gifts[pool].count += gift.count;
                        pool
                    }
                    None => {
                        self.gifts.push(gift.clone());
                        self.gifts.len() - 1
                    }
                };
                (pool as u16, gift.count)
            })
            .collect()
    }

    /// The bounds a round is held to when it is configured or added, beyond [`Self::check`]:
    /// not applied when a command recorded by an earlier build is replayed (a ledger it wrote
    /// must still open). `at` names a field.
    pub fn check_limits(&self, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        // The range the live `interval` command allows: a slip (an extra zero) would let each
        // phone shake about once a round.
        if !crate::round_command::INTERVAL_RANGE_MS.contains(&self.min_shake_interval_ms) {
            return Err(invalid(at("min_shake_interval_ms"), "must be 10 to 60,000"));
        }
        if self.prize_count() > MAX_PRIZES_PER_ROUND {
            return Err(invalid(at("cash"), "more than 200,000,000 prizes in one round"));
        }
        if self.starts_at_ms > MAX_ROUND_START_MS {
            return Err(invalid(
                at("starts_at_ms"),
                "must be Unix milliseconds before the year 2100 (4,102,444,800,000); seconds \
                 are far in the past, microseconds past this bound",
            ));
        }
        if self.duration_s > MAX_ROUND_DURATION_S {
            return Err(invalid(at("duration_s"), "must be at most a week (604,800 s)"));
        }
        if self.cash.as_ref().is_some_and(|cash| cash.total_cents > MAX_CENTS_PER_POOL) {
            return Err(invalid(
                at("cash.total_cents"),
                "must be at most 1,000,000,000,000,000 cents a pool",
            ));
        }
        Ok(())
    }

    /// Checks one round on its own (its id, length, spread and pools); `at` names a field for
    /// the error. The configuration adds the checks between rounds (unique ids, no overlap);
    /// a round added during the show is checked the same way.
    pub fn check(&self, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(invalid(at("id"), "0 means \"no round\"; use 1 or more"));
        }
        if self.duration_s == 0 {
            return Err(invalid(at("duration_s"), "must be at least 1"));
        }
        if u64::from(self.start_spread_ms) >= self.duration_s.saturating_mul(1000) {
            return Err(invalid(at("start_spread_ms"), "must be shorter than the round"));
        }
        if self.cash.is_none() && self.gifts.is_empty() {
            return Err(invalid(at("cash"), "a round needs a cash pool or gifts"));
        }
        check_pools(self.cash.as_ref(), &self.gifts, at)?;
        if self.prize_count() > u64::from(u32::MAX) {
            return Err(invalid(at("cash"), "more than 2^32 prizes in one round"));
        }
        // A gift pool's index is 16 bits.
        if self.gifts.len() > usize::from(u16::MAX) + 1 {
            return Err(invalid(at("gifts"), "more than 65,536 gifts in one round"));
        }
        Ok(())
    }
}

/// A cash pool, split into random envelopes at round open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CashPool {
    /// The whole pool, cents; the envelopes sum to exactly this.
    pub total_cents: u64,
    /// Number of envelopes.
    pub envelopes: u64,
    /// Smallest envelope, cents.
    #[serde(default = "one_cent")]
    pub min_cents: u64,
}

/// A gift pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GiftPool {
    /// Stock-keeping unit (1 to 64 bytes): what awards carry.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// How many there are.
    pub count: u64,
}

/// Most prizes in one pool (a cash pool's envelopes, a gift's count): each is an item in the
/// allocator's memory (16 bytes), built when the pool is (at start, or when a top-up is
/// applied, and again at every restart from the recorded command).
pub const MAX_PRIZES_PER_POOL: u64 = 100_000_000;

/// Most prizes in one round, its top-ups included: each costs about 25 bytes of the
/// allocator's memory (the item, its awarded flag, its place in two availability trees), so
/// 5 GB at the limit, in every allocator that leads or stands by. Item indexes are 32 bits.
pub const MAX_PRIZES_PER_ROUND: u64 = 200_000_000;

/// The latest a round may be scheduled to open, Unix milliseconds (2100-01-01). A time given in
/// microseconds or nanoseconds is past it; past 2^62 it could not travel to the edges at all,
/// and a round recorded so would stop the allocator at every start.
pub const MAX_ROUND_START_MS: u64 = 4_102_444_800_000;

/// The longest a round may be configured or added, seconds (a week); `extend` lengthens it a
/// day at a time.
pub const MAX_ROUND_DURATION_S: u64 = 7 * 24 * 3600;

/// Most cents in one cash pool, top-ups included (ten trillion in the currency's unit): an
/// envelope travels as a varint, at most 2^62 - 1, and sums of pools must not wrap.
pub const MAX_CENTS_PER_POOL: u64 = 1_000_000_000_000_000;

/// Checks a cash pool and gift pools (a round's, or a top-up's); `at` names a field.
pub fn check_pools(
    cash: Option<&CashPool>,
    gifts: &[GiftPool],
    at: &dyn Fn(&str) -> String,
) -> Result<(), ConfigError> {
    if let Some(cash) = cash {
        if cash.envelopes == 0 || cash.envelopes > MAX_PRIZES_PER_POOL {
            return Err(invalid(at("cash.envelopes"), "must be 1 to 100,000,000"));
        }
        if cash.min_cents == 0 {
            return Err(invalid(at("cash.min_cents"), "must be at least 1"));
        }
        if cash.total_cents / cash.envelopes < cash.min_cents {
            return Err(invalid(at("cash.total_cents"), "must be at least envelopes x min_cents"));
        }
    }
    for (g, gift) in gifts.iter().enumerate() {
        if gift.sku.is_empty() || gift.sku.len() > shake_proto::limits::MAX_SKU {
            return Err(invalid(at(&format!("gifts[{g}].sku")), "must be 1 to 64 bytes"));
        }
        if gift.count == 0 || gift.count > MAX_PRIZES_PER_POOL {
            return Err(invalid(at(&format!("gifts[{g}].count")), "must be 1 to 100,000,000"));
        }
    }
    Ok(())
}

fn default_socket_buffer() -> usize {
    8 * 1024 * 1024
}
fn default_oversampling() -> f64 {
    4.0
}
fn default_quota_valid_ms() -> u64 {
    5_000
}
fn default_max_group_batches() -> usize {
    4_096
}
fn default_min_shake_interval_ms() -> u32 {
    100
}
fn one() -> u8 {
    1
}
fn one_cent() -> u64 {
    1
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        shake_ops::config::load(path)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        shake_ops::config::parse(text)
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        // Linux grants at most 2^30 - 1 bytes (INT_MAX / 2), whatever its cap.
        if !(65_536..=1 << 29).contains(&self.socket_buffer_bytes) {
            return Err(invalid("socket_buffer_bytes", "must be 65,536 to 536,870,912"));
        }
        if !(self.oversampling.is_finite() && self.oversampling > 0.0) {
            return Err(invalid("oversampling", "must be a positive number"));
        }
        // It is also how old an edge's last load report may be before its share goes: edges
        // report every second, so a shorter life would drop live edges' quota half the time.
        if !(2_000..=60_000).contains(&self.quota_valid_ms) {
            return Err(invalid(
                "quota_valid_ms",
                "must be 2,000 (edges report their load every second) to 60,000",
            ));
        }
        if self.admin_listen.is_some() && self.admin_token_file.is_none() {
            return Err(invalid("admin_token_file", "is needed with admin_listen"));
        }
        match (self.ledger, &self.ledger_path, &self.postgres) {
            (LedgerKind::Fjall, None, _) => {
                return Err(invalid("ledger_path", "is needed with ledger = \"fjall\""));
            }
            // Ignored, it would leave this allocator on a ledger of its own while the operator
            // believes it shares the show's: beside others, the same prizes paid by each.
            (LedgerKind::Fjall, _, Some(_)) => {
                return Err(invalid(
                    "postgres",
                    "is only read with ledger = \"postgres\"; with ledger = \"fjall\" this \
                     allocator keeps a ledger of its own (set ledger, or remove the table)",
                ));
            }
            (LedgerKind::Postgres, _, None) => {
                return Err(invalid("postgres", "is needed with ledger = \"postgres\""));
            }
            (LedgerKind::Postgres, _, Some(pg)) => {
                if pg.url.parse::<postgres::Config>().is_err() {
                    return Err(invalid("postgres.url", "is not a valid connection string"));
                }
                if pg.node.is_empty() || pg.node.len() > 64 {
                    return Err(invalid("postgres.node", "must be 1 to 64 bytes"));
                }
                if !(500..=60_000).contains(&pg.lease_ms) {
                    return Err(invalid("postgres.lease_ms", "must be 500 to 60,000"));
                }
                if pg.standby_poll_ms == 0 || pg.standby_poll_ms >= pg.lease_ms {
                    return Err(invalid("postgres.standby_poll_ms", "must be 1 to lease_ms - 1"));
                }
                if !(1..=1_000_000).contains(&pg.follow_page_awards) {
                    return Err(invalid("postgres.follow_page_awards", "must be 1 to 1,000,000"));
                }
                if !(1..=8).contains(&pg.commit_lanes) {
                    return Err(invalid("postgres.commit_lanes", "must be 1 to 8"));
                }
                // Standbys name the leader to edges by this address: a wildcard names none, and
                // edges would try the others blind.
                if pg.advertise.unwrap_or(self.listen).ip().is_unspecified() {
                    return Err(invalid(
                        "postgres.advertise",
                        "is needed when listen is a wildcard address (the address edges reach this allocator at)",
                    ));
                }
            }
            _ => {}
        }
        if self.max_group_batches == 0 {
            return Err(invalid("max_group_batches", "must be at least 1"));
        }
        let u = &self.user_rate;
        // Past a million a second the limit's interval rounds to 0 microseconds: no limit.
        if !(u.per_s.is_finite() && u.per_s > 0.0 && u.per_s <= 1_000.0) {
            return Err(invalid("user_rate.per_s", "must be above 0 and at most 1,000"));
        }
        if !(u.burst.is_finite() && u.burst >= 1.0) {
            return Err(invalid("user_rate.burst", "must be at least 1"));
        }
        if u.max_tracked_users == 0 || u.max_tracked_users > 100_000_000 {
            return Err(invalid("user_rate.max_tracked_users", "must be 1 to 100,000,000"));
        }
        if u.limit_after_excess == 0 {
            return Err(invalid("user_rate.limit_after_excess", "must be at least 1"));
        }
        if u.limit_for_s == 0 || u.limit_for_s > 86_400 {
            return Err(invalid("user_rate.limit_for_s", "must be 1 to 86,400"));
        }
        let mut previous_end: Option<(u32, u64)> = None;
        let mut sorted: Vec<&RoundConfig> = self.rounds.iter().collect();
        sorted.sort_by_key(|r| r.starts_at_ms);
        for round in &sorted {
            if let Some((other, end)) = previous_end
                && round.starts_at_ms < end
            {
                return Err(invalid(
                    format!("rounds[id={}].starts_at_ms", round.id),
                    format!("overlaps round {other}"),
                ));
            }
            previous_end = Some((round.id, round.ends_at_ms()));
        }
        for (i, round) in self.rounds.iter().enumerate() {
            let at = |field: &str| format!("rounds[{i}].{field}");
            if self.rounds[..i].iter().any(|r| r.id == round.id) {
                return Err(invalid(at("id"), format!("round id {} appears twice", round.id)));
            }
            round.check(&at)?;
            round.check_limits(&at)?;
        }
        Ok(())
    }

    fn check_files(&self) -> Result<(), ConfigError> {
        if let (LedgerKind::Fjall, Some(path)) = (self.ledger, &self.ledger_path) {
            check_ledger_dir(path).map_err(|why| invalid("ledger_path", why))?;
        }
        check_tls_file("tls.cert", &self.tls.cert, TlsFile::Certificates)?;
        check_tls_file("tls.key", &self.tls.key, TlsFile::PrivateKey)?;
        check_tls_file("tls.edge_ca", &self.tls.edge_ca, TlsFile::Certificates)?;
        if let Some(ca) = self.postgres.as_ref().and_then(|pg| pg.ca.as_ref()) {
            check_tls_file("postgres.ca", ca, TlsFile::Certificates)?;
        }
        if let (Some(_), Some(file)) = (self.admin_listen, &self.admin_token_file) {
            shake_ops::bearer::BearerToken::read(file)
                .map_err(|why| invalid("admin_token_file", why))?;
        }
        Ok(())
    }
}

/// A fjall ledger directory this user can write: the directory, or where it would be made
/// (its nearest existing ancestor), takes a file. A start would fail the same way at its
/// probe, after `--check-config` had said "ok" (a path outside the unit's writable paths, a
/// relative path resolved against `/`).
fn check_ledger_dir(path: &Path) -> Result<(), String> {
    let mut dir = path;
    while !dir.exists() {
        match dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => dir = parent,
            _ => {
                dir = Path::new(".");
                break;
            }
        }
    }
    let probe = dir.join(format!(".shake-check-config-{}", std::process::id()));
    std::fs::File::create(&probe)
        .map_err(|e| format!("{} cannot be written by this user ({e})", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../shake-allocator.example.toml");

    #[test]
    fn the_annotated_example_is_valid() {
        let config = Config::parse(EXAMPLE).unwrap();
        assert!(!config.rounds.is_empty());
        // Its commented-out [postgres] block too, every setting in it uncommented.
        let block: String = EXAMPLE
            .lines()
            .skip_while(|line| *line != "# [postgres]")
            .take_while(|line| line.starts_with('#') || line.starts_with(' '))
            .map(|line| format!("{}\n", line.strip_prefix("# ").unwrap_or(line)))
            .collect();
        assert!(block.contains("follow_page_awards"), "{block}");
        let text = EXAMPLE.replacen("[tls]", &format!("{block}[tls]"), 1).replacen(
            "ledger = \"fjall\"",
            "ledger = \"postgres\"",
            1,
        );
        let postgres = Config::parse(&text).unwrap().postgres.unwrap();
        assert_eq!((postgres.node.as_str(), postgres.follow_page_awards), ("alloc-a", 50_000));
        // A wildcard listen address names no leader to edges: the advertised one is needed.
        let wildcard = text.replacen("listen = \"127.0.0.1:", "listen = \"0.0.0.0:", 1);
        assert_ne!(wildcard, text);
        assert!(Config::parse(&wildcard).unwrap().postgres.unwrap().advertise.is_some());
        let unadvertised: String = wildcard
            .lines()
            .filter(|l| !l.starts_with("advertise"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(field_of(&unadvertised), "postgres.advertise");
        let alpn = std::str::from_utf8(shake_proto::ALLOCATOR_ALPN).unwrap();
        assert!(EXAMPLE.contains(&format!("ALPN {alpn}")), "the example names {alpn}");
    }

    fn with_round(round: &str) -> String {
        format!(
            "listen = \"127.0.0.1:0\"\nledger_path = \"l\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nedge_ca = \"a\"\n{round}"
        )
    }

    fn field_of(text: &str) -> String {
        match Config::parse(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_their_field() {
        let round = |extra: &str| {
            with_round(&format!(
                "[[rounds]]\nid = 1\nstarts_at_ms = 0\nduration_s = 10\nseed = 1\n{extra}"
            ))
        };
        assert_eq!(field_of(&round("")), "rounds[0].cash");
        assert_eq!(
            field_of(&round("[rounds.cash]\ntotal_cents = 10\nenvelopes = 0\n")),
            "rounds[0].cash.envelopes"
        );
        assert_eq!(
            field_of(&round("[rounds.cash]\ntotal_cents = 10\nenvelopes = 11\n")),
            "rounds[0].cash.total_cents"
        );
        assert_eq!(
            field_of(&round("[[rounds.gifts]]\nsku = \"\"\nname = \"x\"\ncount = 1\n")),
            "rounds[0].gifts[0].sku"
        );
        let two = with_round(
            "[[rounds]]\nid = 1\nstarts_at_ms = 0\nduration_s = 10\nseed = 1\n[[rounds.gifts]]\nsku = \"a\"\nname = \"a\"\ncount = 1\n\
             [[rounds]]\nid = 2\nstarts_at_ms = 5000\nduration_s = 10\nseed = 1\n[[rounds.gifts]]\nsku = \"a\"\nname = \"a\"\ncount = 1\n",
        );
        assert_eq!(field_of(&two), "rounds[id=2].starts_at_ms");
        assert_eq!(
            field_of(&round(
                "min_shake_interval_ms = 600000\n[rounds.cash]\ntotal_cents = 10\nenvelopes = 1\n"
            )),
            "rounds[0].min_shake_interval_ms"
        );
        assert_eq!(
            field_of(&format!("{}[postgres]\nurl = \"host=h\"\nnode = \"a\"\n", with_round(""))),
            "postgres"
        );
        assert_eq!(field_of(&format!("oversampling = 0.0\n{}", with_round(""))), "oversampling");
        for buffer in [4_096, (1u64 << 29) + 1] {
            let text = format!("socket_buffer_bytes = {buffer}\n{}", with_round(""));
            assert_eq!(field_of(&text), "socket_buffer_bytes");
        }
        assert_eq!(field_of(&with_round("[user_rate]\nper_s = 0.0\n")), "user_rate.per_s");
        assert_eq!(field_of(&with_round("[user_rate]\nper_s = 2e6\n")), "user_rate.per_s");
        assert_eq!(
            field_of(&format!("quota_valid_ms = 500\n{}", with_round(""))),
            "quota_valid_ms"
        );
        assert!(Config::parse(&format!("quota_valid_ms = 2000\n{}", with_round(""))).is_ok());
        assert_eq!(
            field_of(&format!("quota_valid_ms = {}\n{}", u64::MAX, with_round(""))),
            "quota_valid_ms"
        );
        let cash = "[rounds.cash]\ntotal_cents = 10\nenvelopes = 1\n";
        let timed = |starts_at_ms: u64, duration_s: u64| {
            Config::parse(&with_round(&format!(
                "[[rounds]]\nid = 1\nstarts_at_ms = {starts_at_ms}\nduration_s = {duration_s}\n\
                 seed = 1\n{cash}"
            )))
        };
        let field_of_timed = |starts_at_ms, duration_s| match timed(starts_at_ms, duration_s) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("{starts_at_ms} {duration_s}: {other:?}"),
        };
        // Microseconds for milliseconds, and a length near 2^64 (whose end passed 2^62 and
        // stopped the allocator at every start once a round was added so).
        assert_eq!(field_of_timed(1_765_000_000_000_000, 60), "rounds[0].starts_at_ms");
        assert_eq!(field_of_timed(0, u64::MAX / 2), "rounds[0].duration_s");
        assert!(timed(MAX_ROUND_START_MS, MAX_ROUND_DURATION_S).is_ok());
        assert_eq!(
            field_of(&with_round("[user_rate]\nlimit_for_s = 0\n")),
            "user_rate.limit_for_s"
        );
    }

    #[test]
    fn unknown_and_malformed_fields_are_parse_errors() {
        assert!(matches!(
            Config::parse(&format!("colour = 1\n{}", with_round(""))),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::parse("listen = \"not an address\""),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn each_ledger_kind_needs_its_own_settings() {
        let round = "[[rounds]]\nid = 1\nstarts_at_ms = 0\nduration_s = 1\nseed = 1\n[rounds.cash]\ntotal_cents = 10\nenvelopes = 1\n";
        let tls = "[tls]\ncert = \"c\"\nkey = \"k\"\nedge_ca = \"a\"\n";
        let text = |head: &str, tables: &str| {
            format!("listen = \"127.0.0.1:0\"\n{head}{tables}{tls}{round}")
        };
        assert_eq!(field_of(&text("", "")), "ledger_path");
        assert_eq!(field_of(&text("ledger = \"postgres\"\n", "")), "postgres");
        let pg = |settings: &str| {
            text(
                "ledger = \"postgres\"\n",
                &format!("[postgres]\nurl = \"host=db1,db2 user=shake\"\nnode = \"a\"\n{settings}"),
            )
        };
        let config = Config::parse(&pg("")).unwrap();
        let postgres = config.postgres.unwrap();
        assert_eq!((postgres.lease_ms, postgres.standby_poll_ms), (3_000, 250));
        assert_eq!(postgres.follow_page_awards, 50_000);
        assert_eq!(field_of(&pg("follow_page_awards = 0\n")), "postgres.follow_page_awards");
        assert_eq!(field_of(&pg("lease_ms = 100\n")), "postgres.lease_ms");
        assert_eq!(field_of(&pg("standby_poll_ms = 5000\n")), "postgres.standby_poll_ms");
        let bad_url = pg("").replace("host=db1,db2 user=shake", "port=notanumber");
        assert_eq!(field_of(&bad_url), "postgres.url");
        let no_node = pg("").replace("node = \"a\"", "node = \"\"");
        assert_eq!(field_of(&no_node), "postgres.node");
    }
}
