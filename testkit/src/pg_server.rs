//! Throwaway PostgreSQL servers for tests, started by `scripts/pg-cluster.sh` on free loopback
//! ports (never 5432) and stopped on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::scripts::script;

/// `scripts/pg-cluster.sh ARGS` with `env`, which must succeed.
fn pg_cluster(args: &[&str], env: &[(&str, &Path)]) {
    let mut command = Command::new("bash");
    command.arg(script("pg-cluster.sh")).args(args);
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

    /// Creates a database and returns its connection string. (On a thread of its own: the
    /// blocking client must not run inside an async test's runtime.)
    pub fn database(&self, db: &str) -> String {
        let admin_url = self.url("postgres");
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut admin = postgres::Client::connect(&admin_url, postgres::NoTls)
                        .expect("connecting to the server");
                    admin.batch_execute(&format!("CREATE DATABASE {db}")).expect("CREATE DATABASE");
                })
                .join()
                .expect("creating the database");
        });
        self.url(db)
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
    }
}
