//! Throwaway PostgreSQL servers for tests, started by `scripts/pg-cluster.sh` on free loopback
//! ports (never 5432) and stopped on drop, or by the script's watcher once the test process is
//! gone; and the synchronous-replication faults the ledger's
//! tests need (commits that wait for a standby that never comes, their waits cancelled).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::scripts::script;

/// `scripts/pg-cluster.sh ARGS` with `env`, which must succeed. The servers it starts stop
/// once this process is gone (`PG_OWNER_PID`), even if it is killed before `Drop` runs.
fn pg_cluster(args: &[&str], env: &[(&str, &Path)]) {
    let mut command = Command::new("bash");
    command.arg(script("pg-cluster.sh")).args(args);
    command.env("PG_OWNER_PID", std::process::id().to_string());
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().expect("running pg-cluster.sh");
    assert!(
        output.status.success(),
        "pg-cluster.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A loopback TCP port free a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("its address").port()
}

/// One PostgreSQL server in its own directory.
#[derive(Debug)]
pub struct PgServer {
    /// Its data directory.
    pub dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PgServer {
    /// A primary in `dir`.
    pub fn primary(dir: &Path) -> Self {
        Self::start(dir, &[])
    }

    /// A primary that also serves TLS with this certificate and key (PEM).
    pub fn primary_tls(dir: &Path, cert: &Path, key: &Path) -> Self {
        Self::start(dir, &[("PG_TLS_CERT", cert), ("PG_TLS_KEY", key)])
    }

    /// A primary whose messages are in German (`lc_messages = 'de_DE.UTF-8'`), for what must
    /// not depend on the server's language. The locale is compiled with `localedef` into a
    /// directory beside `dir` (the machine need not have it installed), which the server finds
    /// through `LOCPATH`; the server is checked to speak German before this returns.
    pub fn primary_in_german(dir: &Path) -> Self {
        let locales = dir.with_extension("locales");
        std::fs::create_dir_all(&locales).expect("a directory for the locale");
        let compiled = Command::new("localedef")
            .args(["-i", "de_DE", "-f", "UTF-8"])
            .arg(locales.join("de_DE.UTF-8"))
            .output()
            .expect("running localedef (Debian's package `locales`)");
        assert!(
            compiled.status.success(),
            "localedef de_DE.UTF-8 failed: {}",
            String::from_utf8_lossy(&compiled.stderr)
        );
        let server = Self::start(dir, &[("LOCPATH", &locales)]);
        server.admin("postgres", "ALTER SYSTEM SET lc_messages = 'de_DE.UTF-8'");
        server.admin("postgres", "SELECT pg_reload_conf()::int::int8");
        // New sessions take the setting once the server has read it, after the reload.
        let started = Instant::now();
        loop {
            let refused = server.try_admin("postgres", "SELECT (1 / 0)::int8");
            if refused.as_ref().is_err_and(|message| message == "Division durch Null") {
                return server;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "not German: {refused:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start(dir: &Path, env: &[(&str, &Path)]) -> Self {
        let port = free_port();
        let dir_text = dir.to_str().expect("a UTF-8 path");
        pg_cluster(&["primary", dir_text, &port.to_string()], env);
        Self { dir: dir.to_path_buf(), port }
    }

    /// A connection string to database `db` on this server alone.
    pub fn url(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5", self.port)
    }

    /// Creates a database and returns its connection string.
    pub fn database(&self, db: &str) -> String {
        self.admin("postgres", &format!("CREATE DATABASE {db}"));
        self.url(db)
    }

    /// Runs `statement` on database `db` as the superuser and returns its rows' first columns
    /// as `int8` (0 where a row has none); panics on an error.
    pub fn admin(&self, db: &str, statement: &str) -> Vec<i64> {
        self.try_admin(db, statement).unwrap_or_else(|error| panic!("{statement}: {error}"))
    }

    /// [`Self::admin`], with the server's error message as the `Err`. (On a thread of its
    /// own: the blocking client must not run inside an async test's runtime.)
    pub fn try_admin(&self, db: &str, statement: &str) -> Result<Vec<i64>, String> {
        let url = self.url(db);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut client = postgres::Client::connect(&url, postgres::NoTls)
                        .expect("connecting to the server");
                    let rows = client.query(statement, &[]).map_err(|error| {
                        error.as_db_error().map_or(error.to_string(), |db| db.message().to_owned())
                    })?;
                    Ok(rows.iter().map(|row| row.try_get::<_, i64>(0).unwrap_or(0)).collect())
                })
                .join()
                .expect("the statement's thread")
        })
    }

    /// From now on every commit waits for a synchronous standby that never connects
    /// (`synchronous_standby_names = 'ANY 1 (nobody)'`). Returns once a probe commit on `db`
    /// was seen waiting (the setting is taken in some time after the reload), its wait then
    /// cancelled.
    pub fn hold_commits(&self, db: &str) {
        self.admin(db, "CREATE TABLE IF NOT EXISTS sync_probe (x int)");
        self.admin("postgres", "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (nobody)'");
        self.admin("postgres", "SELECT pg_reload_conf()::int::int8");
        let started = Instant::now();
        loop {
            assert!(started.elapsed() < Duration::from_secs(10), "commits never waited");
            let waited = std::thread::scope(|scope| {
                let probe = scope.spawn(|| {
                    self.admin(db, "INSERT INTO sync_probe VALUES (1) RETURNING 0::int8")
                });
                // Until the probe has ended, whenever it waits its wait is cancelled: one look
                // only missed a probe that began waiting after it, and the join then waited for
                // a standby that never comes (a CI hang).
                let mut waited = false;
                while !probe.is_finished() {
                    if self.waiting_commits() > 0 {
                        waited = true;
                        self.cancel_waiting_commits();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                probe.join().expect("the probe's thread");
                waited
            });
            if waited {
                return;
            }
        }
    }

    /// How many sessions wait for a synchronous standby now.
    pub fn waiting_commits(&self) -> i64 {
        self.admin("postgres", "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            [0]
    }

    /// Cancels every wait for a synchronous standby (`pg_cancel_backend`): each such commit
    /// stays committed on this server alone, and its session is warned. Returns how many.
    pub fn cancel_waiting_commits(&self) -> i64 {
        self.admin(
            "postgres",
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity \
             WHERE wait_event = 'SyncRep'",
        )[0]
    }

    /// Undoes [`Self::hold_commits`]: waiting commits complete, and new ones do not wait.
    pub fn release_commits(&self) {
        self.admin("postgres", "ALTER SYSTEM RESET synchronous_standby_names");
        self.admin("postgres", "SELECT pg_reload_conf()::int::int8");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script("pg-cluster.sh"))
            .arg("stop")
            .arg(&self.dir)
            .arg("immediate")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.dir.with_extension("locales"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test binary killed by a timeout never drops its servers: the script's watcher stops
    /// them once their owner is gone. Here the owner is a child process killed mid-test.
    #[test]
    fn a_server_stops_once_its_owner_is_gone() {
        let scratch = crate::scratch::Scratch::new("pg-owner-gone");
        let dir = scratch.dir.join("pg");
        let mut owner = Command::new("sleep").arg("600").spawn().expect("sleep");
        let port = free_port();
        let output = Command::new("bash")
            .arg(script("pg-cluster.sh"))
            .args(["primary", dir.to_str().expect("UTF-8"), &port.to_string()])
            .env("PG_OWNER_PID", owner.id().to_string())
            .output()
            .expect("running pg-cluster.sh");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let server = PgServer { dir: dir.clone(), port };
        assert_eq!(server.admin("postgres", "SELECT 1::int8"), vec![1]);
        let running = || dir.join("data/postmaster.pid").exists();
        std::thread::sleep(Duration::from_secs(2));
        assert!(running(), "the server stopped while its owner lives");
        owner.kill().expect("killing the owner");
        owner.wait().expect("reaping the owner");
        let killed = Instant::now();
        while running() {
            assert!(
                killed.elapsed() < Duration::from_secs(15),
                "the server outlived its owner by 15 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "the port still answers"
        );
    }
}
