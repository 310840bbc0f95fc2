//! A scratch directory for one test: dev certificates (a CA, the allocator, edges 1 and 2) in
//! `certs/`, and the configuration files of the servers the test starts, all removed on drop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::now_ms;
use crate::tokens::DEV_SECRET_HEX;

/// The admin API token of [`Scratch::with_admin_api`] and [`Scratch::admin_config`].
pub const ADMIN_TOKEN: &str = "control-room-token-0123456789";

/// The smallest round an allocator configuration can hold: one cash envelope of 100 cents.
pub const ONE_ENVELOPE: &str = "[rounds.cash]\ntotal_cents = 100\nenvelopes = 1\n";

/// Any port on loopback.
pub const ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Writes dev certificates into `dir`: a CA, the allocator's, and edges 1 and 2.
pub fn dev_certs(dir: &Path) {
    shake_allocator::dev_certs::generate(dir, &[1, 2])
        .unwrap_or_else(|e| panic!("dev certificates in {}: {e}", dir.display()));
}

/// Round `id` from `starts_at_ms` for `duration_s`, then the `extra` lines (its release, its
/// pools).
fn round(id: u32, starts_at_ms: u64, duration_s: u64, seed: u64, extra: &str) -> String {
    format!(
        "[[rounds]]\nid = {id}\nstarts_at_ms = {starts_at_ms}\nduration_s = {duration_s}\n\
         seed = {seed}\n{extra}"
    )
}

/// The bearer token of `GET /users/{id}` on the edges configured here
/// ([`crate::metrics::user_report`] sends it).
pub const USERS_TOKEN: &str = "risk-control-token-0123456789";

/// The allocator's socket buffers in the configurations written here: the kernel's stock
/// default and cap (`net.core.rmem_default`, `rmem_max`), what the tests had before the
/// buffer could be configured, and granted whole on any host (no warning in a test's log).
pub const ALLOCATOR_SOCKET_BUFFER: usize = 212_992;

/// A directory with dev certificates, removed on drop.
#[derive(Debug)]
pub struct Scratch {
    /// The directory.
    pub dir: PathBuf,
    /// When round 1 of [`Scratch::config`] opened: a moment before the directory was made,
    /// the same for every allocator of the test, restarted or not.
    round_start_ms: u64,
    /// How long round 1 lasts, seconds (600 unless [`Scratch::round_1_lasts`]).
    round_1_s: u64,
}

impl Scratch {
    /// A fresh directory named after `name`, with dev certificates.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shake-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        dev_certs(&dir.join("certs"));
        Self { dir, round_start_ms: now_ms() - 1_000, round_1_s: 600 }
    }

    /// Round 1 of the configurations written from now on opens `ms` from now instead.
    pub fn open_round_in(&mut self, ms: u64) {
        self.round_start_ms = now_ms() + ms;
    }

    /// Round 1 of the configurations written from now on lasts `s` seconds instead of 600.
    pub fn round_1_lasts(&mut self, s: u64) {
        self.round_1_s = s;
    }

    /// When round 1 ends, Unix milliseconds.
    pub fn round_1_end_ms(&self) -> u64 {
        self.round_start_ms + self.round_1_s * 1000
    }

    /// When round 1 opens (or opened), Unix milliseconds.
    pub fn round_start_ms(&self) -> u64 {
        self.round_start_ms
    }

    /// The dev certificates' directory.
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// The dev CA, which signed every certificate in [`Scratch::certs`].
    pub fn ca(&self) -> PathBuf {
        self.certs().join("ca.pem")
    }

    /// The fjall ledger of [`Scratch::config`].
    pub fn ledger(&self) -> PathBuf {
        self.dir.join("ledger")
    }

    /// An allocator configuration (`allocator.toml`, fjall ledger, any port) with one round
    /// that opened a moment ago and lasts 600 s; `round_extra` are the round's other lines.
    pub fn config(&self, round_extra: &str) -> PathBuf {
        self.fjall_config(ANY_PORT, "", round_extra)
    }

    /// [`Scratch::config`] listening on `listen`, with `top` lines (settings before the first
    /// table).
    pub fn fjall_config(&self, listen: SocketAddr, top: &str, round_extra: &str) -> PathBuf {
        let ledger = format!("ledger_path = \"{}\"\n{top}", self.ledger().display());
        let round = round(1, self.round_start_ms, self.round_1_s, 7, round_extra);
        self.write_allocator_config("allocator.toml", listen, &ledger, &round)
    }

    /// The same round for allocator `node` of several on one PostgreSQL ledger
    /// (`allocator-NODE.toml`), with two commit lanes: the tests drive the lanes' ordering
    /// through the real allocator (one lane, the default, is the path every fjall test takes).
    pub fn postgres_config(&self, node: &str, url: &str, round_extra: &str) -> PathBuf {
        let ledger = format!(
            "ledger = \"postgres\"\n[postgres]\nurl = \"{url}\"\nnode = \"{node}\"\n\
             lease_ms = 1500\nstandby_poll_ms = 100\ncommit_lanes = 2\n"
        );
        let round = round(1, self.round_start_ms, self.round_1_s, 7, round_extra);
        self.write_allocator_config(&format!("allocator-{node}.toml"), ANY_PORT, &ledger, &round)
    }

    /// An allocator configuration with the admin API on and two rounds armed for later
    /// (round 1 in an hour, all its 10 envelopes released at its opening; round 2 after it).
    pub fn admin_config(&self) -> PathBuf {
        let later = now_ms() + 3_600_000;
        let cash = "[rounds.cash]\ntotal_cents = 1000\nenvelopes = 10\n";
        let rounds = round(1, later, 60, 7, &format!("release = \"immediate\"\n{cash}"))
            + &round(2, later + 600_000, 60, 8, cash);
        let ledger = format!("ledger_path = \"{}\"\n", self.ledger().display());
        self.with_admin_api(self.write_allocator_config(
            "allocator.toml",
            ANY_PORT,
            &ledger,
            &rounds,
        ))
    }

    /// Turns the admin API on in `config` (any port, token [`ADMIN_TOKEN`] in `admin.token`).
    pub fn with_admin_api(&self, config: PathBuf) -> PathBuf {
        let token = self.dir.join("admin.token");
        std::fs::write(&token, ADMIN_TOKEN).expect("writing the admin token");
        let text = std::fs::read_to_string(&config).expect("reading the configuration");
        // Top-level settings come before the first table.
        let admin =
            format!("admin_listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n", token.display());
        std::fs::write(&config, admin + &text).expect("writing the configuration");
        config
    }

    /// An edge configuration (`edge.toml`, edge 1, two workers, any port) for the allocator at
    /// `allocator`: a 500 ms Hello deadline (unless `limits` sets one) and the `limits` lines
    /// (the end of the `[limits]` table; tables after it may follow).
    pub fn edge_config(&self, allocator: SocketAddr, limits: &str) -> PathBuf {
        let path = self.dir.join("edge.toml");
        let hello_timeout =
            if limits.contains("hello_timeout_ms") { "" } else { "hello_timeout_ms = 500\n" };
        let certs = self.certs();
        let certs = certs.display();
        let users_token = self.dir.join("users.token");
        std::fs::write(&users_token, USERS_TOKEN).expect("writing the users token");
        let users_token = users_token.display();
        let text = format!(
            r#"edge_id = 1
listen = "127.0.0.1:0"
workers = 2
metrics_listen = "127.0.0.1:0"
users_token_file = "{users_token}"
socket_buffer_bytes = 1048576
[tls]
cert = "{certs}/edge-1.pem"
key = "{certs}/edge-1.key"
[allocator]
addr = "{allocator}"
ca = "{certs}/ca.pem"
cert = "{certs}/edge-1.pem"
key = "{certs}/edge-1.key"
[[token_keys]]
id = 1
secret_hex = "{DEV_SECRET_HEX}"
[limits]
{hello_timeout}{limits}
"#
        );
        std::fs::write(&path, text).expect("writing the edge configuration");
        path
    }

    fn write_allocator_config(
        &self,
        name: &str,
        listen: SocketAddr,
        top: &str,
        rounds: &str,
    ) -> PathBuf {
        let path = self.dir.join(name);
        let certs = self.certs();
        let certs = certs.display();
        let text = format!(
            r#"listen = "{listen}"
metrics_listen = "127.0.0.1:0"
socket_buffer_bytes = {ALLOCATOR_SOCKET_BUFFER}
{top}
[tls]
cert = "{certs}/allocator.pem"
key = "{certs}/allocator.key"
edge_ca = "{certs}/ca.pem"
{rounds}
"#
        );
        std::fs::write(&path, text).expect("writing the allocator configuration");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
