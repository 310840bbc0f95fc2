//! The award ledger on PostgreSQL: for high availability (a primary with synchronous
//! standbys), and for settlement and support, who read the awards with SQL on any replica
//! while the show runs.
//!
//! One group commit is one transaction: the leader's epoch is checked first (the lease row is
//! key-share locked, so a takeover, which changes the epoch, waits for the commit in flight
//! and every later commit of the old leader sees the new epoch and writes nothing: fencing
//! without trusting clocks; a renewal, which does not change it, waits for nothing), then
//! the batches and their exact answer bytes, the award rows and the delivery marks go in with
//! binary `COPY` (marks as rows of their own: an award row is written once, never updated),
//! then confirmed answers and worker records. A batch's name is the primary key of
//! `shake_batches` and a prize (round, item) is unique in `shake_awards`, so a resend can never
//! draw twice and a prize can never be paid twice, whatever the allocators do: the database
//! refuses the transaction.
//!
//! The schema is created and migrated by the allocator itself ([`MIGRATIONS`], applied under an
//! advisory lock, recorded in `shake_schema`). README's "The ledger on PostgreSQL" documents
//! the tables and example queries. Ids are `u64` below 2^62 (the protocol's varints), so they
//! read in SQL as the same positive `bigint`.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::error::SqlState;
use postgres::types::Type;
use postgres::{Client, NoTls, Transaction};
use shake_proto::Prize;

use super::commit_statements::CommitStatements;
use super::deadline;
use super::delivery_marks::{self, MARK_SPAN};
use super::lanes::{TURN_POLL, Turn};
use super::lease::Term;
use super::{
    CommitGroup, LedgerError, LedgerStore, RetiredInstance, Snapshot, WorkerRecord, merge_retired,
};
use crate::award::{Award, BatchKey, CorruptRow, WorkerKey};
use crate::export::AwardQuery;
use crate::round_command::RoundCommand;

/// The schema, one migration per version, applied in order. Never edit a released one: add.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE shake_awards (
        award_id bigint PRIMARY KEY,
        round_id bigint NOT NULL,
        item bigint NOT NULL,
        user_id bigint NOT NULL,
        cash_cents bigint,
        gift_sku text,
        edge_id bigint NOT NULL,
        worker_id integer NOT NULL,
        instance_id bigint NOT NULL,
        batch_seq bigint NOT NULL,
        entry_index bigint NOT NULL,
        granted_at_ms bigint NOT NULL,
        epoch bigint NOT NULL,
        delivered boolean NOT NULL DEFAULT false,
        CONSTRAINT one_prize_once UNIQUE (round_id, item),
        CONSTRAINT cash_or_gift CHECK ((cash_cents IS NULL) <> (gift_sku IS NULL))
    );
    CREATE INDEX shake_awards_by_user ON shake_awards (user_id);
    CREATE TABLE shake_batches (
        edge_id bigint NOT NULL,
        worker_id integer NOT NULL,
        instance_id bigint NOT NULL,
        seq bigint NOT NULL,
        answer bytea,
        epoch bigint NOT NULL,
        committed_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (edge_id, worker_id, instance_id, seq)
    );
    CREATE INDEX shake_batches_unconfirmed ON shake_batches (edge_id) WHERE answer IS NOT NULL;
    CREATE TABLE shake_workers (
        edge_id bigint NOT NULL,
        worker_id integer NOT NULL,
        instance_id bigint NOT NULL,
        confirmed_seq bigint NOT NULL,
        retired bigint[] NOT NULL,
        PRIMARY KEY (edge_id, worker_id)
    );
    CREATE TABLE shake_leader (
        id integer PRIMARY KEY CHECK (id = 1),
        epoch bigint NOT NULL,
        holder text NOT NULL,
        address text NOT NULL,
        acquired_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL
    );
    INSERT INTO shake_leader VALUES (1, 0, '', '', now(), now());
    CREATE TABLE shake_terms (
        epoch bigint PRIMARY KEY,
        holder text NOT NULL,
        address text NOT NULL,
        acquired_at timestamptz NOT NULL
    );
    CREATE TABLE shake_commits (
        id bigserial PRIMARY KEY,
        epoch bigint NOT NULL,
        batches integer NOT NULL,
        awards integer NOT NULL,
        at timestamptz NOT NULL DEFAULT clock_timestamp()
    );
    CREATE TABLE shake_probe (id integer PRIMARY KEY, at timestamptz NOT NULL);",
    ),
    (
        2,
        "CREATE TABLE shake_commands (
        seq bigserial PRIMARY KEY,
        command_id text NOT NULL UNIQUE,
        round_id bigint NOT NULL,
        action text NOT NULL,
        issued_by text NOT NULL,
        at_ms bigint NOT NULL,
        epoch bigint NOT NULL,
        body text NOT NULL
    );",
    ),
    (
        3,
        // Support looks awards up by user with `=` only: a hash index answers that and costs
        // the group commit less than a B-tree fed random user ids.
        "DROP INDEX shake_awards_by_user;
    CREATE INDEX shake_awards_by_user ON shake_awards USING hash (user_id);",
    ),
    (
        4,
        // Every award is written twice: inserted when drawn, updated when its phone
        // acknowledges it (`delivered`). On a full page the update puts the new row version on
        // another page and adds an entry to each of the three indexes; with half of each page
        // left free it stays on its page and touches no index (a heap-only update): 16,384
        // marks took 280 ms against 83 ms on 655,360 rows (docs/PERFORMANCE.md, "The ledger on
        // PostgreSQL"). The price is a heap twice the size. New pages only: rows already
        // written keep theirs.
        "ALTER TABLE shake_awards SET (fillfactor = 50);",
    ),
    (
        5,
        // Delivery marks become rows of their own, insert-only, a run of nearby award ids per
        // row (`delivery_marks`): an award row is never touched again once written, so the
        // table goes back to full pages. 4096 and 4095 are `delivery_marks::MARK_SPAN` (and
        // one less); the CHECK refuses a row a reader's bounded range scan would miss.
        "CREATE FUNCTION shake_marks_within_span(first_id bigint, award_ids bigint[])
        RETURNS boolean LANGUAGE sql IMMUTABLE STRICT
        AS 'SELECT coalesce(bool_and(id >= first_id AND id - first_id < 4096), false)
            FROM unnest(award_ids) AS id';
    CREATE TABLE shake_delivery_marks (
        first_id bigint NOT NULL,
        award_ids bigint[] NOT NULL,
        epoch bigint NOT NULL,
        marked_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT marks_within_span CHECK (shake_marks_within_span(first_id, award_ids))
    );
    CREATE INDEX shake_delivery_marks_by_first_id ON shake_delivery_marks (first_id);
    INSERT INTO shake_delivery_marks (first_id, award_ids, epoch)
        SELECT award_id, ARRAY[award_id], epoch FROM shake_awards WHERE delivered;
    ALTER TABLE shake_awards DROP COLUMN delivered;
    ALTER TABLE shake_awards SET (fillfactor = 100);
    CREATE VIEW shake_awards_with_delivery AS
        SELECT a.*, EXISTS (
            SELECT 1 FROM shake_delivery_marks m
            WHERE m.first_id BETWEEN a.award_id - 4095 AND a.award_id
              AND a.award_id = ANY (m.award_ids)
        ) AS delivered
        FROM shake_awards a;",
    ),
    (
        6,
        // The epoch becomes a key of the lease row, so a commit locks it `FOR KEY SHARE`
        // ([`CHECK_EPOCH`]): a takeover, which changes the epoch, still waits for every commit
        // in flight, but a renewal, which changes only `expires_at`, waits for none. Under a
        // plain share lock a renewal queued behind the commits of two lanes, whose
        // transactions overlap without a gap, waited as long as the load lasted (new share
        // locks are granted past a waiting update), and the leader lost a lease it was using.
        "CREATE UNIQUE INDEX shake_leader_epoch ON shake_leader (epoch);",
    ),
    (
        7,
        // A standby follows the delivery marks in commit order, so a takeover reads only the
        // marks it has not ([`super::follow`]): each row names its group's place in its term
        // (`CommitGroup::seq`). Rows written before this version read 0: older than every term
        // of a migrated fleet (a standby starting up takes them through its awards); an
        // allocator of an older version still leading is kept from writing more by migration 8.
        "ALTER TABLE shake_delivery_marks ADD COLUMN group_seq bigint NOT NULL DEFAULT 0;
    CREATE INDEX shake_delivery_marks_in_commit_order
        ON shake_delivery_marks (epoch, group_seq, first_id);",
    ),
    (
        8,
        // An allocator older than version 7, still leading while a newer one migrated the
        // schema, would write its marks with `group_seq` 0 in its current term: rows a
        // standby's cursor orders by `first_id` within (epoch, 0), not by commit, so it would
        // miss some. Without a default such a write is refused (and that leader's term ends at
        // its first group with marks); rows already written keep their 0.
        "ALTER TABLE shake_delivery_marks ALTER COLUMN group_seq DROP DEFAULT;",
    ),
    (
        9,
        // Every instance a worker ever retired, written once: `shake_workers.retired` keeps
        // only the newest eight, and a stale process under an instance retired before them was
        // taken for a new one, its resends drawn again. Older allocators still write the
        // array (and read only it); this one reads both.
        "CREATE TABLE shake_retired_instances (
        edge_id bigint NOT NULL,
        worker_id integer NOT NULL,
        instance_id bigint NOT NULL,
        epoch bigint NOT NULL,
        PRIMARY KEY (edge_id, worker_id, instance_id)
    );
    INSERT INTO shake_retired_instances
        SELECT edge_id, worker_id, unnest(retired), 0 FROM shake_workers
        ON CONFLICT DO NOTHING;",
    ),
];

/// What a group commit runs first: the leader's epoch and holder, the lease row key-share
/// locked until the commit (see migration 6).
pub const CHECK_EPOCH: &str = "SELECT epoch, holder FROM shake_leader WHERE id = 1 FOR KEY SHARE";

/// The newest schema version this allocator knows.
pub fn schema_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Serializes migrations across allocators starting together ("SHAKE" in ASCII).
const MIGRATION_LOCK: i64 = 0x0053_4841_4b45;

/// Where the ledger's database is, and how to reach it: a libpq-style connection string, and
/// the TLS configuration when the servers are reached over TLS.
#[derive(Clone)]
pub struct Target {
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("tls", &self.tls.is_some()).finish_non_exhaustive()
    }
}

impl Target {
    /// Plain TCP (a database on loopback or a trusted network).
    pub fn plain(url: impl Into<String>) -> Self {
        Self { url: url.into(), tls: None }
    }

    /// TLS to every server, each verified against `ca` (its certificate must name the host
    /// the URL gives); TLS is then required, never merely preferred.
    pub fn tls(url: impl Into<String>, ca: &std::path::Path) -> Result<Self, LedgerError> {
        let mut config = shake_ops::tls::client(ca, b"postgresql")
            .map_err(|e| LedgerError::Schema(format!("the database CA {}: {e}", ca.display())))?;
        // PostgreSQL 15 negotiates TLS inside its own protocol, without ALPN.
        config.alpn_protocols.clear();
        Ok(Self { url: url.into(), tls: Some(Arc::new(config)) })
    }

    /// From the allocator's `[postgres]` settings.
    pub fn from_config(pg: &crate::config::PostgresConfig) -> Result<Self, LedgerError> {
        match &pg.ca {
            Some(ca) => Self::tls(pg.url.clone(), ca),
            None => Ok(Self::plain(pg.url.clone())),
        }
    }
}

impl From<&str> for Target {
    fn from(url: &str) -> Self {
        Self::plain(url)
    }
}

impl From<&String> for Target {
    fn from(url: &String) -> Self {
        Self::plain(url.clone())
    }
}

impl From<&Target> for Target {
    fn from(target: &Target) -> Self {
        target.clone()
    }
}

/// How long data sent to the database may go unacknowledged by its host's kernel before the
/// connection is given up. A server busy with a long commit still acknowledges at once; only
/// a host that is gone does not.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// `url` with this ledger's time limits where it sets none ([`connect`]).
fn connection_config(url: &str) -> Result<postgres::Config, LedgerError> {
    let mut config = postgres::Config::from_str(url)?;
    config.keepalives(true).keepalives_idle(Duration::from_secs(2));
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(1));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// How long one host may take to connect, start a session and answer its first statements,
/// unless the URL's `connect_timeout` says otherwise (libpq's meaning: per host).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Hosts with connection attempts left behind at their deadline and not answered since (a
/// count per host): the next connections skip them, so that a hung server costs one thread
/// and one socket, not one per attempt.
static HUNG_HOSTS: Mutex<BTreeMap<String, i64>> = Mutex::new(BTreeMap::new());

fn hung_hosts() -> std::sync::MutexGuard<'static, BTreeMap<String, i64>> {
    HUNG_HOSTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn count_hung(host: &str, by: i64) {
    let mut hung = hung_hosts();
    let count = hung.entry(host.to_owned()).or_default();
    *count += by;
    if *count == 0 {
        hung.remove(host);
    }
}

/// [`deadline::within`] for a call to `host`: one left behind makes connections skip the host
/// until it returns. A host counts as hung while more calls were left behind there than have
/// returned (the two counts may come in either order).
pub fn within_on_host<T: Send + 'static>(
    host: &str,
    limit: Duration,
    what: &'static str,
    call: impl FnOnce() -> T + Send + 'static,
) -> Result<T, LedgerError> {
    let answered = host.to_owned();
    let result = deadline::within_then(limit, what, call, move || count_hung(&answered, -1));
    if let Err(LedgerError::NoAnswer { .. }) = &result {
        count_hung(host, 1);
    }
    result
}

/// Whether connections skip `host` now (a call left behind there has not returned).
pub fn host_is_hung(host: &str) -> bool {
    hung_hosts().get(host).is_some_and(|&count| count > 0)
}

/// How far past the client's own TCP connect timeout a session's start is left behind.
const HUNG_MARGIN: Duration = Duration::from_millis(500);

/// A session [`connect`] opened.
pub struct Session {
    /// The connection.
    pub client: Client,
    /// Set by a server warning that a commit may be on the primary alone.
    pub unreplicated: Arc<AtomicBool>,
    /// The host it is on, as the URL names it (`host:port`).
    pub host: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("host", &self.host).finish_non_exhaustive()
    }
}

/// Connects to the database named by a libpq-style connection string, which may name several
/// hosts (`host=a,b,c port=...`); with `target_session_attrs=read-write` the connection goes
/// to whichever is the primary now. Each host is tried in turn, and has [`CONNECT_TIMEOUT`] (or
/// the URL's `connect_timeout`) to connect, start the session and answer its settings; a host
/// that does not (a hung server, whose kernel still accepts the connection and acknowledges
/// the startup) is left behind for the next, and skipped until that attempt returns
/// ([`deadline`]). The client's own `connect_timeout` covers the TCP connect alone, so a hung
/// primary first in the list had held every later connection, the promoted one never tried.
///
/// A primary that vanishes without a reset (its host powered off, a partition) is given up
/// within seconds, unless the URL says otherwise: TCP keep-alives after 2 s idle, every
/// second, three unanswered ending the connection, and [`TCP_USER_TIMEOUT`] for data sent and
/// not acknowledged. The kernel's defaults (nine probes 75 s apart; about 15 minutes of
/// retransmission) had held every allocator on the lost primary for that long.
pub fn connect(target: impl Into<Target>) -> Result<Session, LedgerError> {
    let target = target.into();
    let config = connection_config(&target.url)?;
    let limit = config.get_connect_timeout().copied().unwrap_or(CONNECT_TIMEOUT);
    // A transaction whose wait for the synchronous standbys was cancelled is committed on the
    // primary alone and the server only warns: that commit is not durable by our standard.
    // The warning has no code of its own, only the generic one (01000), and its text is in the
    // server's language, so any generic warning counts: no statement of the ledger's raises
    // one otherwise, and a false alarm costs a retried commit, never an award.
    let unreplicated = Arc::new(AtomicBool::new(false));
    let mut last = None;
    for (host, mut one) in one_config_per_host(&config) {
        if host_is_hung(&host) {
            last = Some(LedgerError::NoAnswer { what: "connection", after: limit });
            continue;
        }
        let flag = unreplicated.clone();
        one.notice_callback(move |notice| {
            if may_leave_a_commit_unreplicated(notice.code()) {
                flag.store(true, Ordering::SeqCst);
                tracing::warn!(notice = notice.message(), "ledger database warning");
            } else {
                tracing::debug!(notice = notice.message(), "ledger database notice");
            }
        });
        let tls = target.tls.clone();
        // A little past the client's own TCP connect timeout, so that a host that is gone
        // (its connect refused or timed out) fails as such and is not taken for a hung one.
        let attempt = within_on_host(&host, limit + HUNG_MARGIN, "connection", move || {
            open_session(&mut one, tls)
        });
        match attempt {
            Ok(Ok(client)) => return Ok(Session { client, unreplicated, host }),
            Ok(Err(err)) => last = Some(err),
            Err(err) => {
                tracing::warn!(
                    host,
                    ?limit,
                    "ledger database: no answer while connecting (the server hangs); \
                     trying the next host, this one skipped until it answers"
                );
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| LedgerError::Failed("the ledger URL names no host".into())))
}

/// One host's connection and session settings.
fn open_session(
    config: &mut postgres::Config,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Client, LedgerError> {
    let mut client = match tls {
        Some(tls) => {
            config.ssl_mode(postgres::config::SslMode::Require);
            config.connect(tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone()))?
        }
        None => config.connect(NoTls)?,
    };
    // A leader paused or hung inside a commit holds the lease row's key-share lock: the server
    // ends such a transaction after a second of silence, so the takeover (and the fencing)
    // never waits on it; and no ledger statement waits on a lock for long.
    client.batch_execute(&format!(
        "SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}; \
         SET lock_timeout = {LOCK_TIMEOUT_MS}"
    ))?;
    insist_on_durable_commits(&mut client)?;
    Ok(client)
}

/// `config` split into one configuration per host it names, each with every other setting,
/// and the host's name for the logs: libpq's rules (a single port serves every host; a
/// `hostaddr` goes with the host in its place). A configuration naming no host is kept whole.
fn one_config_per_host(config: &postgres::Config) -> Vec<(String, postgres::Config)> {
    use postgres::config::Host;
    let (hosts, addrs, ports) = (config.get_hosts(), config.get_hostaddrs(), config.get_ports());
    let count = hosts.len().max(addrs.len());
    // Counts that do not match (which the client refuses when it connects to them all) are
    // left to it whole, to refuse.
    let matched = (hosts.is_empty() || addrs.is_empty() || hosts.len() == addrs.len())
        && (ports.len() <= 1 || ports.len() == count);
    if count == 0 || !matched {
        return vec![("(as given)".to_owned(), config.clone())];
    }
    let mut order: Vec<usize> = (0..count).collect();
    if config.get_load_balance_hosts() == postgres::config::LoadBalanceHosts::Random {
        use rand::seq::SliceRandom as _;
        order.shuffle(&mut rand::rng());
    }
    order
        .into_iter()
        .map(|i| {
            let mut one = postgres::Config::new();
            let mut name = String::new();
            match hosts.get(i) {
                Some(Host::Tcp(host)) => {
                    one.host(host);
                    name.push_str(host);
                }
                Some(Host::Unix(path)) => {
                    one.host_path(path);
                    name.push_str(&path.display().to_string());
                }
                None => {}
            }
            // One name may stand for several servers (a certificate's name with an address
            // for each): the address keeps them apart.
            if let Some(addr) = addrs.get(i) {
                one.hostaddr(*addr);
                name = if name.is_empty() { addr.to_string() } else { format!("{name}/{addr}") };
            }
            let port = match ports {
                [one_port] => Some(*one_port),
                ports => ports.get(i).copied(),
            };
            if let Some(port) = port {
                one.port(port);
                name = format!("{name}:{port}");
            }
            if let Some(user) = config.get_user() {
                one.user(user);
            }
            if let Some(password) = config.get_password() {
                one.password(password);
            }
            if let Some(dbname) = config.get_dbname() {
                one.dbname(dbname);
            }
            if let Some(options) = config.get_options() {
                one.options(options);
            }
            if let Some(name) = config.get_application_name() {
                one.application_name(name);
            }
            if let Some(timeout) = config.get_connect_timeout() {
                one.connect_timeout(*timeout);
            }
            if let Some(timeout) = config.get_tcp_user_timeout() {
                one.tcp_user_timeout(*timeout);
            }
            if let Some(interval) = config.get_keepalives_interval() {
                one.keepalives_interval(interval);
            }
            if let Some(retries) = config.get_keepalives_retries() {
                one.keepalives_retries(retries);
            }
            one.ssl_mode(config.get_ssl_mode())
                .ssl_negotiation(config.get_ssl_negotiation())
                .keepalives(config.get_keepalives())
                .keepalives_idle(config.get_keepalives_idle())
                .target_session_attrs(config.get_target_session_attrs())
                .channel_binding(config.get_channel_binding())
                .load_balance_hosts(config.get_load_balance_hosts());
            (name, one)
        })
        .collect()
}

/// A commit answers edges only once it is on disk, and on a synchronous standby where the
/// server has any: a role, database or server default of `synchronous_commit` `off` or
/// `local` (which the server honours silently, with no warning to catch) is raised to `on`
/// for this session. `remote_write` and `remote_apply` are kept (each waits for a standby).
/// A server with no synchronous standbys is allowed (one machine's durability) and said.
fn insist_on_durable_commits(client: &mut Client) -> Result<(), LedgerError> {
    let row = client.query_one(
        "SELECT current_setting('synchronous_commit'), \
                current_setting('synchronous_standby_names')",
        &[],
    )?;
    let (commit, standbys): (String, String) = (row.get(0), row.get(1));
    if matches!(commit.as_str(), "off" | "local") {
        tracing::warn!(
            synchronous_commit = commit,
            "the ledger database's synchronous_commit would answer awards before they are \
             durable; this allocator's sessions use 'on'"
        );
        client.batch_execute("SET synchronous_commit = on")?;
    }
    if standbys.trim().is_empty() {
        tracing::warn!(
            "the ledger database has no synchronous standbys (synchronous_standby_names is \
             empty): awards survive a crash of its server, not the loss of its machine"
        );
    }
    Ok(())
}

/// Whether a notice with this code may be the server's word that a commit's wait for the
/// synchronous standbys was cancelled (PostgreSQL's `SyncRepWaitForLSN` raises a plain
/// `WARNING`, SQLSTATE 01000, in every language).
fn may_leave_a_commit_unreplicated(code: &SqlState) -> bool {
    *code == SqlState::WARNING
}

/// How long a ledger session may sit idle inside a transaction before the server ends it.
pub const IDLE_IN_TRANSACTION_MS: u64 = 1_000;
/// Awards a page of support's reads holds (rows and decoded awards), where a question is not
/// one user's.
const READ_PAGE: i64 = 10_000;
/// How long a ledger statement waits for a lock before it fails.
pub const LOCK_TIMEOUT_MS: u64 = 2_000;

/// Creates or migrates the schema to [`schema_version`]; refuses a database migrated by a newer
/// allocator.
pub fn migrate(client: &mut Client) -> Result<i32, LedgerError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS shake_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )?;
    let current: i32 =
        tx.query_one("SELECT coalesce(max(version), 0) FROM shake_schema", &[])?.get(0);
    if current > schema_version() {
        return Err(LedgerError::Schema(format!(
            "the database is at schema version {current}, newer than this allocator's {}",
            schema_version()
        )));
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO shake_schema (version) VALUES ($1)", &[version])?;
        tracing::info!(version, "ledger schema migrated");
    }
    tx.commit()?;
    Ok(schema_version())
}

/// The ledger in PostgreSQL. It commits only while it holds the leader epoch given to
/// [`PostgresLedger::lead`].
pub struct PostgresLedger {
    client: Client,
    /// Prepared on the first commit of this session.
    statements: Option<CommitStatements>,
    term: Option<Term>,
    unreplicated: Arc<AtomicBool>,
    /// Where it connected: a lane opens another session there.
    target: Target,
    /// The host this session is on ([`Session::host`]).
    host: String,
}

impl std::fmt::Debug for PostgresLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLedger").field("term", &self.term).finish_non_exhaustive()
    }
}

pub(super) fn signed(value: u64) -> i64 {
    value as i64
}

pub(super) fn unsigned(value: i64) -> u64 {
    value as u64
}

fn narrow(value: i64) -> Result<u32, CorruptRow> {
    u32::try_from(value).map_err(|_| CorruptRow)
}

impl PostgresLedger {
    /// Connects and migrates the schema. Reads work at once; commits wait for [`Self::lead`].
    pub fn open(target: impl Into<Target>) -> Result<Self, LedgerError> {
        let target = target.into();
        let Session { mut client, unreplicated, host } = connect(&target)?;
        migrate(&mut client)?;
        Ok(Self { client, statements: None, term: None, unreplicated, target, host })
    }

    /// [`Self::open`] for a standby's look: the connection within its deadlines per host, the
    /// schema check (a no-op once the start has migrated, but a statement all the same) within
    /// `limit`, left behind on a server that hangs between the two.
    pub fn open_within(target: impl Into<Target>, limit: Duration) -> Result<Self, LedgerError> {
        let target = target.into();
        let Session { client, unreplicated, host } = connect(&target)?;
        let checked = within_on_host(&host.clone(), limit, "schema check", move || {
            let mut client = client;
            migrate(&mut client).map(|_| client)
        });
        let client = checked.and_then(|migrated| migrated)?;
        Ok(Self { client, statements: None, term: None, unreplicated, target, host })
    }

    /// Connects to read what a show's allocators wrote, changing nothing (the support and
    /// settlement commands, which may run beside the show): the schema must be this build's,
    /// neither created nor migrated (a newer build's migration during the show can end the
    /// leader's term; an empty database is a wrong address, not an empty ledger).
    pub fn open_to_read(target: impl Into<Target>) -> Result<Self, LedgerError> {
        let target = target.into();
        let Session { mut client, unreplicated, host } = connect(&target)?;
        let found = client.query_one("SELECT to_regclass('shake_schema') IS NOT NULL", &[])?;
        if !found.get::<_, bool>(0) {
            return Err(LedgerError::Schema(
                "no Shake ledger in this database (no shake_schema table)".into(),
            ));
        }
        let version: i32 =
            client.query_one("SELECT coalesce(max(version), 0) FROM shake_schema", &[])?.get(0);
        if version != schema_version() {
            return Err(LedgerError::Schema(format!(
                "the ledger is at schema version {version} and this build reads version {}: \
                 read it with the build the show's allocators run",
                schema_version()
            )));
        }
        Ok(Self { client, statements: None, term: None, unreplicated, target, host })
    }

    /// Commits from now on under this leader term (won by [`super::lease::try_acquire`]).
    pub fn lead(&mut self, term: Term) {
        self.term = Some(term);
    }

    /// Whether a statement's wait for the synchronous standbys was cancelled since the last
    /// call (the server committed it on the primary alone, and only warned).
    pub fn take_unreplicated(&self) -> bool {
        self.unreplicated.swap(false, Ordering::SeqCst)
    }

    /// A user's awards by the index on `user_id` (support's usual question: a few rows,
    /// where reading every award took the whole table into memory, seconds on millions);
    /// other questions read every award.
    fn find_awards_here(&mut self, query: &AwardQuery) -> Result<Vec<Award>, LedgerError> {
        if i64::try_from(query.after).is_err() {
            // No award id is that large (ids are BIGINT); as a signed value it would wrap.
            return Ok(Vec::new());
        }
        let Some(user) = query.user else {
            // Page by page from the cursor, so that only the answer is held, never the whole
            // table's rows (rows become visible in id order: a page read is never overtaken).
            let mut keep = query.keeper();
            let mut out = Vec::new();
            let mut after = query.after;
            while out.len() < query.most() {
                let page = self.read_awards(after, READ_PAGE, &mut |_| true)?;
                let Some(last) = page.last() else { break };
                after = last.award_id;
                out.extend(page.into_iter().filter(|award| keep(award)));
            }
            return Ok(out);
        };
        let rows = self.client.query(
            "SELECT award_id, round_id, item, user_id, cash_cents, gift_sku, edge_id, worker_id, \
             instance_id, batch_seq, entry_index, granted_at_ms, delivered \
             FROM shake_awards_with_delivery WHERE user_id = $1 AND award_id > $2 \
             ORDER BY award_id",
            &[&signed(user), &signed(query.after)],
        )?;
        let mut keep = query.keeper();
        let mut out = Vec::new();
        for row in &rows {
            let award = award_of(row)?;
            if keep(&award) {
                out.push(award);
            }
        }
        Ok(out)
    }

    /// The connection was lost.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// The connection, for the lease and for tests' queries.
    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The host this session is on (`host:port`, as the URL names it).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The session and its commit statements, prepared on first use.
    fn prepared(&mut self) -> Result<(&mut Client, &CommitStatements), LedgerError> {
        let sql = match &mut self.statements {
            Some(sql) => sql,
            slot @ None => slot.insert(CommitStatements::prepare(&mut self.client)?),
        };
        Ok((&mut self.client, sql))
    }

    fn check_epoch(
        tx: &mut Transaction<'_>,
        sql: &CommitStatements,
        held: &Term,
    ) -> Result<(), LedgerError> {
        let row = tx.query_one(&sql.check_epoch, &[])?;
        let (current, holder): (i64, String) = (row.get(0), row.get(1));
        // The holder too: the same epoch under another node is another term (see `Term`).
        if current != held.epoch || holder != held.holder {
            return Err(LedgerError::Fenced { held: held.epoch, current, holder });
        }
        Ok(())
    }

    fn write_batches(
        tx: &mut Transaction<'_>,
        sql: &CommitStatements,
        group: &CommitGroup,
        epoch: i64,
    ) -> Result<(), LedgerError> {
        if group.batches.is_empty() {
            return Ok(());
        }
        let sink = tx.copy_in(&sql.copy_batches)?;
        let mut rows = BinaryCopyInWriter::new(
            sink,
            &[Type::INT8, Type::INT4, Type::INT8, Type::INT8, Type::BYTEA, Type::INT8],
        );
        for batch in &group.batches {
            let key = &batch.key;
            rows.write(&[
                &signed(key.edge_id),
                &i32::from(key.worker_id),
                &signed(key.instance_id),
                &signed(key.seq),
                &&batch.answer[..],
                &epoch,
            ])?;
        }
        rows.finish()?;
        if group.batches.iter().all(|b| b.awards.is_empty()) {
            return Ok(());
        }
        Self::copy_awards(tx, sql, group, epoch)
    }

    fn copy_awards(
        tx: &mut Transaction<'_>,
        sql: &CommitStatements,
        group: &CommitGroup,
        epoch: i64,
    ) -> Result<(), LedgerError> {
        let sink = tx.copy_in(&sql.copy_awards)?;
        // Tests only: the leader frozen inside a `COPY` (the server waits for its rows).
        if shake_ops::supervise::failpoint("allocator-stall-in-copy") {
            std::thread::sleep(Duration::from_secs(30));
        }
        let mut rows = BinaryCopyInWriter::new(
            sink,
            &[
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::TEXT,
                Type::INT8,
                Type::INT4,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
            ],
        );
        for award in group.batches.iter().flat_map(|b| &b.awards) {
            let (cents, sku) = match &award.prize {
                Prize::Cash { cents } => (Some(signed(*cents)), None),
                Prize::Gift { sku } => (None, Some(sku.as_str())),
            };
            rows.write(&[
                &signed(award.award_id),
                &i64::from(award.round_id),
                &i64::from(award.item),
                &signed(award.user_id),
                &cents,
                &sku,
                &signed(award.batch.edge_id),
                &i32::from(award.batch.worker_id),
                &signed(award.batch.instance_id),
                &signed(award.batch.seq),
                &i64::from(award.entry_index),
                &signed(award.granted_at_ms),
                &epoch,
            ])?;
        }
        rows.finish()?;
        Ok(())
    }

    /// The group's delivery marks as new rows ([`delivery_marks`]). A mark for an id with no
    /// award row, or marked before, is harmless (as in fjall): delivered means marked at least
    /// once.
    fn write_delivery_marks(
        tx: &mut Transaction<'_>,
        sql: &CommitStatements,
        group: &CommitGroup,
        epoch: i64,
    ) -> Result<(), LedgerError> {
        if group.delivered.is_empty() {
            return Ok(());
        }
        let sink = tx.copy_in(&sql.copy_marks)?;
        let mut rows =
            BinaryCopyInWriter::new(sink, &[Type::INT8, Type::INT8_ARRAY, Type::INT8, Type::INT8]);
        let group_seq = signed(group.seq);
        for row in delivery_marks::mark_rows(&group.delivered) {
            rows.write(&[&row.first_id, &row.award_ids, &epoch, &group_seq])?;
        }
        rows.finish()?;
        Ok(())
    }

    /// What goes in turn: operator commands (rare: one statement each), then the
    /// confirmations (forgotten answers, worker records, retired instances) and the commit's
    /// own row, all in one
    /// statement, one round trip, however many edge workers confirmed.
    fn write_in_turn(
        tx: &mut Transaction<'_>,
        sql: &CommitStatements,
        group: &CommitGroup,
        epoch: i64,
    ) -> Result<(), LedgerError> {
        for command in &group.commands {
            let body = String::from_utf8(command.encode()).unwrap_or_default();
            let action = serde_json::to_value(&command.action)
                .ok()
                .and_then(|v| v.get("action").and_then(|a| a.as_str()).map(str::to_owned))
                .unwrap_or_default();
            tx.execute(
                &sql.record_command,
                &[
                    &command.command_id,
                    &i64::from(command.round_id),
                    &action,
                    &command.issued_by,
                    &signed(command.at_ms),
                    &epoch,
                    &body,
                ],
            )?;
        }
        // The row of a forgotten answer stays (its name is still taken); only the bytes go.
        let forget = |f: fn(&BatchKey) -> i64| -> Vec<i64> { group.forget.iter().map(f).collect() };
        // A group may carry several records of one worker (one per confirmation gathered into
        // it); the last is its record, as if each had been written in turn. (One statement
        // may not upsert a row twice.)
        let mut latest: HashMap<WorkerKey, &WorkerRecord> = HashMap::new();
        for record in &group.workers {
            latest.insert(record.worker, record);
        }
        let records: Vec<&WorkerRecord> = latest.into_values().collect();
        let worker =
            |f: fn(&WorkerRecord) -> i64| -> Vec<i64> { records.iter().map(|r| f(r)).collect() };
        // Each worker's retired instances as an array literal, cast back to int8[] by the
        // statement: unnest cannot take an array of arrays of different lengths.
        let retired: Vec<String> = records
            .iter()
            .map(|r| {
                let ids: Vec<String> = r.retired.iter().map(|id| signed(*id).to_string()).collect();
                format!("{{{}}}", ids.join(","))
            })
            .collect();
        let retiring =
            |f: fn(&RetiredInstance) -> i64| -> Vec<i64> { group.retired.iter().map(f).collect() };
        let awards: usize = group.batches.iter().map(|b| b.awards.len()).sum();
        tx.execute(
            &sql.confirm_and_log,
            &[
                &forget(|k| signed(k.edge_id)),
                &group.forget.iter().map(|k| i32::from(k.worker_id)).collect::<Vec<i32>>(),
                &forget(|k| signed(k.instance_id)),
                &forget(|k| signed(k.seq)),
                &worker(|r| signed(r.worker.edge_id)),
                &records.iter().map(|r| i32::from(r.worker.worker_id)).collect::<Vec<i32>>(),
                &worker(|r| signed(r.instance_id)),
                &worker(|r| signed(r.confirmed_seq)),
                &retired,
                &retiring(|r| signed(r.worker.edge_id)),
                &group.retired.iter().map(|r| i32::from(r.worker.worker_id)).collect::<Vec<i32>>(),
                &retiring(|r| signed(r.instance_id)),
                &epoch,
                &(group.batches.len() as i32),
                &(awards as i32),
            ],
        )?;
        Ok(())
    }

    /// Awards with ids above `after`, in id order, at most `limit`: what a standby following
    /// the log reads each time it looks. (One leader commits its groups in id order, so rows
    /// become visible in id order.)
    pub fn awards_after(&mut self, after: u64, limit: i64) -> Result<Vec<Award>, LedgerError> {
        self.read_awards(after, limit, &mut |_| true)
    }

    /// The operator commands after the first `skip`, in log order: what a standby following
    /// the log applies before the awards it read (read them after the awards: a command an
    /// award depends on was committed before it).
    pub fn commands_after(&mut self, skip: usize) -> Result<Vec<RoundCommand>, LedgerError> {
        let rows = self
            .client
            .query("SELECT body FROM shake_commands ORDER BY seq OFFSET $1", &[&(skip as i64)])?;
        rows.iter().map(|row| Ok(RoundCommand::decode(row.get::<_, &str>(0).as_bytes())?)).collect()
    }

    /// Every award no phone has acknowledged (what a new leader owes its users).
    pub fn undelivered_awards(&mut self) -> Result<Vec<Award>, LedgerError> {
        self.read_awards(0, i64::MAX, &mut |a| !a.delivered)
    }

    /// Runs `read` inside one read-only, repeatable-read transaction: everything it reads is
    /// from one instant.
    pub(super) fn in_snapshot<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, LedgerError>,
    ) -> Result<T, LedgerError> {
        // The session's 1 s idle-in-transaction limit is for transactions that hold the lease
        // row's lock; this one holds no row lock, and between its statements the allocator
        // decodes what it read, which on millions of awards takes longer than a second.
        self.client.batch_execute(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
             SET LOCAL idle_in_transaction_session_timeout = 60000",
        )?;
        let read = read(self);
        let ended = self.client.batch_execute("COMMIT");
        let read = read?;
        ended?;
        Ok(read)
    }

    /// Every stored (unconfirmed) answer.
    pub(super) fn read_answers(&mut self) -> Result<HashMap<BatchKey, Bytes>, LedgerError> {
        let mut answers = HashMap::new();
        for row in self.client.query(
            "SELECT edge_id, worker_id, instance_id, seq, answer FROM shake_batches \
             WHERE answer IS NOT NULL",
            &[],
        )? {
            let key = BatchKey {
                edge_id: unsigned(row.get(0)),
                worker_id: u16::try_from(row.get::<_, i32>(1)).map_err(|_| CorruptRow)?,
                instance_id: unsigned(row.get(2)),
                seq: unsigned(row.get(3)),
            };
            answers.insert(key, Bytes::from(row.get::<_, Vec<u8>>(4)));
        }
        Ok(answers)
    }

    /// Every edge worker's record, with every instance it ever retired (one snapshot).
    pub(super) fn read_workers(&mut self) -> Result<Vec<WorkerRecord>, LedgerError> {
        let mut workers = Vec::new();
        for row in self.client.query(
            "SELECT w.edge_id, w.worker_id, w.instance_id, w.confirmed_seq, w.retired, \
                 ARRAY(SELECT r.instance_id FROM shake_retired_instances r \
                       WHERE (r.edge_id, r.worker_id) = (w.edge_id, w.worker_id)) \
             FROM shake_workers w ORDER BY w.edge_id, w.worker_id",
            &[],
        )? {
            let mut record = WorkerRecord {
                worker: WorkerKey {
                    edge_id: unsigned(row.get(0)),
                    worker_id: u16::try_from(row.get::<_, i32>(1)).map_err(|_| CorruptRow)?,
                },
                instance_id: unsigned(row.get(2)),
                confirmed_seq: unsigned(row.get(3)),
                retired: row.get::<_, Vec<i64>>(4).into_iter().map(unsigned).collect(),
            };
            merge_retired(&mut record, row.get::<_, Vec<i64>>(5).into_iter().map(unsigned));
            workers.push(record);
        }
        Ok(workers)
    }

    /// The awards after id `after` (at most `limit`, in id order) that `keep` accepts, each with
    /// its delivery mark as of this read.
    pub(super) fn read_awards(
        &mut self,
        after: u64,
        limit: i64,
        keep: &mut dyn FnMut(&Award) -> bool,
    ) -> Result<Vec<Award>, LedgerError> {
        // The marks of the ids read are in rows whose first id lies from `after - MARK_SPAN`
        // up to the last id read (`delivery_marks`): one pass over those, joined by hash. A
        // page's marks are bounded above by its last id, so a standby reading a long ledger
        // page by page reads each mark row about once (unbounded, each page read every later
        // mark: 39 s to follow 5 M awards from the start, `scripts/bench.sh takeover`); a read
        // to the end needs no bound, and spares the page's materialization (19 s against 11 s
        // for the same 5 M).
        let rows = if limit == i64::MAX {
            self.client.query(
                "SELECT a.award_id, round_id, item, user_id, cash_cents, gift_sku, edge_id, \
                 worker_id, instance_id, batch_seq, entry_index, granted_at_ms, \
                 m.id IS NOT NULL \
                 FROM shake_awards a LEFT JOIN ( \
                     SELECT DISTINCT unnest(award_ids) AS id FROM shake_delivery_marks \
                     WHERE first_id > $1::int8 - $2::int8) m ON m.id = a.award_id \
                 WHERE a.award_id > $1 ORDER BY a.award_id",
                &[&signed(after), &MARK_SPAN],
            )?
        } else {
            self.client.query(
                "WITH a AS ( \
                     SELECT award_id, round_id, item, user_id, cash_cents, gift_sku, edge_id, \
                     worker_id, instance_id, batch_seq, entry_index, granted_at_ms \
                     FROM shake_awards WHERE award_id > $1 ORDER BY award_id LIMIT $2), \
                 m AS ( \
                     SELECT DISTINCT unnest(award_ids) AS id FROM shake_delivery_marks \
                     WHERE first_id > $1::int8 - $3::int8 \
                     AND first_id <= (SELECT max(award_id) FROM a)) \
                 SELECT a.*, m.id IS NOT NULL FROM a LEFT JOIN m ON m.id = a.award_id \
                 ORDER BY a.award_id",
                &[&signed(after), &limit, &MARK_SPAN],
            )?
        };
        let mut out = Vec::new();
        for row in rows {
            let award = award_of(&row)?;
            if keep(&award) {
                out.push(award);
            }
        }
        Ok(out)
    }
}

/// An award from a row of the columns [`PostgresLedger::read_awards`] selects, in its order.
fn award_of(row: &postgres::Row) -> Result<Award, CorruptRow> {
    let prize = match (row.get::<_, Option<i64>>(4), row.get::<_, Option<String>>(5)) {
        (Some(cents), None) => Prize::Cash { cents: unsigned(cents) },
        (None, Some(sku)) => Prize::Gift { sku },
        _ => return Err(CorruptRow),
    };
    Ok(Award {
        award_id: unsigned(row.get(0)),
        round_id: narrow(row.get(1))?,
        item: narrow(row.get(2))?,
        user_id: unsigned(row.get(3)),
        prize,
        batch: BatchKey {
            edge_id: unsigned(row.get(6)),
            worker_id: u16::try_from(row.get::<_, i32>(7)).map_err(|_| CorruptRow)?,
            instance_id: unsigned(row.get(8)),
            seq: unsigned(row.get(9)),
        },
        entry_index: narrow(row.get(10))?,
        granted_at_ms: unsigned(row.get(11)),
        delivered: row.get(12),
    })
}

impl LedgerStore for PostgresLedger {
    fn probe(&mut self) -> Result<(), LedgerError> {
        self.client.execute(
            "INSERT INTO shake_probe VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET at = now()",
            &[],
        )?;
        Ok(())
    }

    fn commit_group(&mut self, group: &CommitGroup) -> Result<(), LedgerError> {
        self.commit_group_in_turn(group, &mut |_| Turn::Go)
    }

    /// Writes the group's new rows (`COPY`) inside its transaction first, the rest once `turn`
    /// allows, then commits: another lane's session can write the next group's rows
    /// meanwhile. While the turn says [`Turn::Wait`] the open transaction is touched every
    /// [`TURN_POLL`], so the server's idle-in-transaction timeout never ends a group that
    /// only waits its turn.
    fn commit_group_in_turn(
        &mut self,
        group: &CommitGroup,
        turn: &mut dyn FnMut(Duration) -> Turn,
    ) -> Result<(), LedgerError> {
        let term = self.term.clone().ok_or_else(|| {
            LedgerError::Failed("commit without the leadership (no epoch held)".into())
        })?;
        let epoch = term.epoch;
        let (client, sql) = self.prepared()?;
        let mut tx = client.transaction()?;
        Self::check_epoch(&mut tx, sql, &term)?;
        // Ahead of the turn: only new rows with keys no other group has (batch names, award
        // ids, prizes drawn once) and delivery marks (insert-only, under no unique key), so no
        // lane ever waits on a row the other lane holds.
        Self::write_batches(&mut tx, sql, group, epoch)?;
        Self::write_delivery_marks(&mut tx, sql, group, epoch)?;
        loop {
            match turn(TURN_POLL) {
                Turn::Go => break,
                Turn::Wait => tx.batch_execute("SELECT 1")?,
                // Dropping the transaction rolls it back.
                Turn::Abandon => {
                    return Err(LedgerError::Failed(
                        "an earlier group failed: this one was rolled back".into(),
                    ));
                }
            }
        }
        // In turn, with every earlier group committed: what updates rows an earlier group may
        // have written or locked (forgotten answers, worker records) and what takes a
        // sequence number (commands, the commit's row), so the log's order is the commit
        // order and the lanes never wait on each other's row locks.
        Self::write_in_turn(&mut tx, sql, group, epoch)?;
        tx.commit()?;
        if self.take_unreplicated() {
            return Err(LedgerError::Failed(
                "a commit's wait for the synchronous standbys was cancelled: it may not be \
                 replicated"
                    .into(),
            ));
        }
        Ok(())
    }

    fn open_reader(&mut self) -> Result<Option<Box<dyn LedgerStore>>, LedgerError> {
        // Reads need no leadership: a session of its own.
        Ok(Some(Box::new(Self::open(self.target.clone())?)))
    }

    fn open_lane(&mut self) -> Result<Option<Box<dyn LedgerStore>>, LedgerError> {
        // Tests only: the database refusing a term's second session (a blip at takeover).
        if shake_ops::supervise::failpoint("allocator-lane-open-fails") {
            return Err(LedgerError::Failed("failpoint allocator-lane-open-fails".into()));
        }
        let Session { client, unreplicated, host } = connect(&self.target)?;
        Ok(Some(Box::new(Self {
            client,
            statements: None,
            term: self.term.clone(),
            unreplicated,
            target: self.target.clone(),
            host,
        })))
    }

    fn snapshot(&mut self) -> Result<Snapshot, LedgerError> {
        self.in_snapshot(|ledger| {
            Ok(Snapshot {
                awards: ledger.read_awards(0, i64::MAX, &mut |_| true)?,
                answers: ledger.read_answers()?,
                workers: ledger.read_workers()?,
                commands: ledger.commands_after(0)?,
            })
        })
    }

    fn awards(&mut self, keep: &mut dyn FnMut(&Award) -> bool) -> Result<Vec<Award>, LedgerError> {
        self.read_awards(0, i64::MAX, keep)
    }

    /// A session of support's reads that the server closed (an idle timeout, a pooler, a
    /// DBA's `pg_terminate_backend`) is opened again and the read tried once more: kept
    /// closed, every read of the term answered 503. Only a session with no term (the reader's)
    /// reopens; a commit lane's closed session ends its term.
    fn find_awards(&mut self, query: &AwardQuery) -> Result<Vec<Award>, LedgerError> {
        match self.find_awards_here(query) {
            Err(err) if self.term.is_none() && self.client.is_closed() => {
                tracing::warn!(%err, "the ledger session for support's reads was closed; opening another");
                let Session { client, unreplicated, host } = connect(&self.target)?;
                (self.client, self.unreplicated, self.statements) = (client, unreplicated, None);
                self.host = host;
                self.find_awards_here(query)
            }
            read => read,
        }
    }

    fn stored_answers(&mut self) -> Result<usize, LedgerError> {
        let count: i64 = self
            .client
            .query_one("SELECT count(*) FROM shake_batches WHERE answer IS NOT NULL", &[])?
            .get(0);
        Ok(count as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database host that vanishes without a reset is given up within seconds; a limit the
    /// URL sets stands.
    #[test]
    fn a_silent_host_is_given_up_within_seconds_unless_the_url_says_otherwise() {
        let config = connection_config("host=db1,db2 dbname=shake").unwrap();
        assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(2));
        assert_eq!(config.get_keepalives_interval(), Some(Duration::from_secs(1)));
        assert_eq!(config.get_keepalives_retries(), Some(3));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(5)));
        let url = "host=db1 tcp_user_timeout=20 keepalives_interval=7 keepalives_retries=9 \
                   connect_timeout=11";
        let config = connection_config(url).unwrap();
        assert_eq!(config.get_tcp_user_timeout(), Some(&Duration::from_secs(20)));
        assert_eq!(config.get_keepalives_interval(), Some(Duration::from_secs(7)));
        assert_eq!(config.get_keepalives_retries(), Some(9));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(11)));
    }

    /// Each host's configuration is the one a URL naming that host alone would give: every
    /// setting kept, the host's own address and port, one port serving every host.
    #[test]
    fn each_host_is_tried_with_every_setting_of_the_url() {
        let settings = "user=shake password=secret dbname=ledger options=-cwork_mem=4MB \
                        application_name=alloc sslmode=disable connect_timeout=3 \
                        tcp_user_timeout=4 keepalives_idle=5 keepalives_interval=6 \
                        keepalives_retries=7 target_session_attrs=read-write \
                        channel_binding=disable load_balance_hosts=disable";
        let split = |url: &str| one_config_per_host(&connection_config(url).unwrap());
        let alone = |url: &str| split(url).remove(0).1;
        let hosts = split(&format!("host=db1,db2,db3 port=5433,5434,5435 {settings}"));
        let names: Vec<&str> = hosts.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["db1:5433", "db2:5434", "db3:5435"]);
        let second = &hosts[1].1;
        let expected = alone(&format!("host=db2 port=5434 {settings}"));
        assert_eq!(format!("{second:?}"), format!("{expected:?}"));
        // Not in the configuration's Debug output.
        assert_eq!(second.get_password(), Some(&b"secret"[..]));
        assert_eq!(second.get_ssl_negotiation(), expected.get_ssl_negotiation());
        assert_eq!(second.get_channel_binding(), expected.get_channel_binding());
        assert_eq!(second.get_load_balance_hosts(), expected.get_load_balance_hosts());
        assert_eq!(second.get_target_session_attrs(), expected.get_target_session_attrs());

        let one_port = split("host=db1,db2 hostaddr=10.0.0.1,10.0.0.2 port=6000");
        assert_eq!(one_port[1].0, "db2/10.0.0.2:6000");
        assert_eq!(one_port[1].1.get_ports(), [6000]);
        assert_eq!(
            one_port[1].1.get_hostaddrs(),
            ["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
        );
        let no_port = split("host=db1,db2");
        assert_eq!(no_port[1].0, "db2");
        assert!(no_port[1].1.get_ports().is_empty());
        // One certificate name for two servers: two hosts all the same, skipped apart.
        let one_name = split("host=db,db hostaddr=10.0.0.1,10.0.0.2 port=5432");
        let names: Vec<&str> = one_name.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["db/10.0.0.1:5432", "db/10.0.0.2:5432"]);
        // Counts the client refuses are left whole for it to refuse.
        for url in ["host=db1,db2 port=1,2,3", "host=db1,db2 hostaddr=10.0.0.1"] {
            let whole = split(url);
            assert_eq!(whole.len(), 1, "{url}");
            assert_eq!(whole[0].1.get_hosts().len(), 2, "{url}");
        }
    }
}
