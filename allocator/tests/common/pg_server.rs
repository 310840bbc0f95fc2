//! Throwaway PostgreSQL servers for tests, started by `scripts/pg-cluster.sh` on free loopback
//! ports (never 5432) and stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster.sh")
}

fn run(args: &[&str]) {
    run_with(args, &[]);
}

fn run_with(args: &[&str], env: &[(&str, &Path)]) {
    let mut command = Command::new("bash");
    command.arg(script()).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "pg-cluster.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A loopback TCP port free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One PostgreSQL server in its own directory.
pub struct PgServer {
    pub dir: PathBuf,
    pub port: u16,
}

impl PgServer {
    /// A primary; with `sync` (standby names), commits wait for ANY 1 of them.
    pub fn primary(dir: &Path, sync: &str) -> Self {
        let port = free_port();
        let dir = dir.to_path_buf();
        let mut args = vec!["primary", dir.to_str().unwrap()];
        let port_text = port.to_string();
        args.push(&port_text);
        if !sync.is_empty() {
            args.push(sync);
        }
        run(&args);
        Self { dir, port }
    }

    /// A primary that also serves TLS with this certificate and key (PEM).
    pub fn primary_tls(dir: &Path, cert: &Path, key: &Path) -> Self {
        let port = free_port();
        run_with(
            &["primary", dir.to_str().unwrap(), &port.to_string()],
            &[("PG_TLS_CERT", cert), ("PG_TLS_KEY", key)],
        );
        Self { dir: dir.to_path_buf(), port }
    }

    /// A streaming standby of `primary`, named `name`.
    pub fn standby(dir: &Path, primary: &PgServer, name: &str) -> Self {
        let port = free_port();
        run(&[
            "standby",
            dir.to_str().unwrap(),
            &port.to_string(),
            &primary.port.to_string(),
            name,
        ]);
        Self { dir: dir.to_path_buf(), port }
    }

    /// A connection string to database `db` on this server alone.
    pub fn url(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=5", self.port)
    }

    /// Creates a database and returns its connection string. (On a thread of its own: the
    /// blocking client must not run inside an async test's runtime.)
    pub fn database(&self, db: &str) -> String {
        let admin_url = self.url("postgres");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls).unwrap();
                    admin.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
                })
                .join()
                .unwrap();
        });
        self.url(db)
    }

    /// SIGKILL: the machine is gone.
    pub fn kill(&self) {
        run(&["kill", self.dir.to_str().unwrap()]);
    }

    /// Promotes a standby to primary.
    pub fn promote(&self) {
        run(&["promote", self.dir.to_str().unwrap()]);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", self.dir.to_str().unwrap(), "immediate"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
