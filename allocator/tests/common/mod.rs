//! Test harness: the real `shake-allocator` binary in a temporary directory, and a minimal
//! edge client speaking the real protocol over real QUIC with mutual TLS.
#![allow(dead_code, unreachable_pub)]

pub mod pg_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use quinn::crypto::rustls::QuicClientConfig;
use shake_ops::tls;
use shake_proto::{ALLOCATOR_ALPN, AllocatorFrame};
use tokio::io::AsyncReadExt;

pub const BIN: &str = env!("CARGO_BIN_EXE_shake-allocator");

/// The admin API token of [`Scratch::admin_config`].
pub const TOKEN: &str = "control-room-token-0123456789";

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A scratch directory with dev certificates, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("shake-{name}-{}-{}", std::process::id(), now_ms()));
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new(BIN)
            .args(["dev-certs", "--edges", "1,2"])
            .arg(dir.join("certs"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        Self { dir }
    }

    /// Writes a configuration with one round that opened a moment ago (fjall ledger).
    pub fn config(&self, round_extra: &str) -> PathBuf {
        let ledger = format!("ledger_path = \"{}\"\n", self.dir.join("ledger").display());
        self.write_config("allocator.toml", &ledger, round_extra)
    }

    /// The same round for allocator `node` of several on one PostgreSQL ledger.
    pub fn postgres_config(&self, node: &str, url: &str, round_extra: &str) -> PathBuf {
        let ledger = format!(
            "ledger = \"postgres\"\n[postgres]\nurl = \"{url}\"\nnode = \"{node}\"\nlease_ms = 1500\nstandby_poll_ms = 100\n"
        );
        self.write_config(&format!("allocator-{node}.toml"), &ledger, round_extra)
    }

    /// A configuration with the admin API on (token [`TOKEN`]) and two rounds armed for later
    /// (round 1 in an hour, all its 10 envelopes released at its opening; round 2 after it).
    pub fn admin_config(&self) -> PathBuf {
        let token = self.dir.join("admin.token");
        std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
        let path = self.dir.join("allocator.toml");
        let later = now_ms() + 3_600_000;
        std::fs::write(
            &path,
            format!(
                r#"listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token_file = "{token}"
ledger_path = "{ledger}"
[tls]
cert = "{certs}/allocator.pem"
key = "{certs}/allocator.key"
edge_ca = "{certs}/ca.pem"
[[rounds]]
id = 1
starts_at_ms = {later}
duration_s = 60
seed = 7
release = "immediate"
[rounds.cash]
total_cents = 1000
envelopes = 10
[[rounds]]
id = 2
starts_at_ms = {after}
duration_s = 60
seed = 8
[rounds.cash]
total_cents = 1000
envelopes = 10
"#,
                token = token.display(),
                ledger = self.dir.join("ledger").display(),
                certs = self.dir.join("certs").display(),
                after = later + 600_000,
            ),
        )
        .unwrap();
        path
    }

    fn write_config(&self, name: &str, ledger: &str, round_extra: &str) -> PathBuf {
        static START_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let path = self.dir.join(name);
        let text = format!(
            r#"listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
{ledger}
[tls]
cert = "{certs}/allocator.pem"
key = "{certs}/allocator.key"
edge_ca = "{certs}/ca.pem"
[[rounds]]
id = 1
starts_at_ms = {start}
duration_s = 600
seed = 7
{round_extra}
"#,
            certs = self.dir.join("certs").display(),
            // Every allocator of one test serves the same round.
            start = START_MS.get_or_init(|| now_ms() - 1_000),
        );
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running allocator process; killed on drop.
pub struct Allocator {
    pub child: Child,
    pub quic: SocketAddr,
    pub metrics: SocketAddr,
    /// The admin API, when configured.
    pub admin: Option<SocketAddr>,
}

impl Allocator {
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in ready line {line:?}"))
                .parse()
                .unwrap()
        };
        let admin = line.split_whitespace().find_map(|w| w.strip_prefix("admin=")?.parse().ok());
        Self { quic: field("quic="), metrics: field("metrics="), admin, child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fetches the Prometheus text from the metrics address.
pub fn scrape(addr: SocketAddr) -> String {
    shake_ops::http::get(addr, "/metrics").unwrap()
}

/// The value of a metric line starting with `prefix`, or 0.
pub fn metric(text: &str, prefix: &str) -> f64 {
    shake_ops::http::metric_sum(text, prefix)
}

pub fn client_config(certs: &Path, identity: Option<&str>) -> quinn::ClientConfig {
    let rustls = match identity {
        Some(name) => tls::mutual_tls_client(
            &certs.join("ca.pem"),
            &certs.join(format!("{name}.pem")),
            &certs.join(format!("{name}.key")),
            ALLOCATOR_ALPN,
        )
        .unwrap(),
        None => tls::client(&certs.join("ca.pem"), ALLOCATOR_ALPN).unwrap(),
    };
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(rustls).unwrap()))
}

pub async fn connect(
    addr: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Connection, String> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let connecting = endpoint.connect(addr, "localhost").map_err(|e| e.to_string())?;
    connecting.await.map_err(|e| e.to_string())
}

/// Edge 1's worker 0 (instance `instance_id`) connected to the allocator at `addr` with the
/// scratch directory's dev certificates, its `EdgeHello` sent.
pub async fn edge_worker(
    addr: SocketAddr,
    scratch: &Scratch,
    instance_id: u64,
) -> Result<EdgeStream, String> {
    let conn = connect(addr, client_config(&scratch.dir.join("certs"), Some("edge-1"))).await?;
    let mut stream = EdgeStream::open(&conn).await;
    stream
        .send(&AllocatorFrame::EdgeHello {
            edge_id: 1,
            worker_id: 0,
            protocol_version: shake_proto::allocator::PROTOCOL_VERSION,
            instance_id,
            highest_answered_seq: 0,
        })
        .await;
    Ok(stream)
}

/// One edge worker stream.
pub struct EdgeStream {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub buf: BytesMut,
}

impl EdgeStream {
    pub async fn open(conn: &quinn::Connection) -> Self {
        let (send, recv) = conn.open_bi().await.unwrap();
        Self { conn: conn.clone(), send, recv, buf: BytesMut::new() }
    }

    pub async fn send(&mut self, frame: &AllocatorFrame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.send.write_all(&out).await.unwrap();
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.unwrap();
    }

    /// The next frame with its raw bytes, or an error string (stream reset, timeout).
    pub async fn recv(&mut self) -> Result<(AllocatorFrame, Vec<u8>), String> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let before = self.buf.clone();
                if let Some(frame) =
                    AllocatorFrame::decode(&mut self.buf).map_err(|e| e.to_string())?
                {
                    let used = before.len() - self.buf.len();
                    return Ok((frame, before[..used].to_vec()));
                }
                match self.recv.read_buf(&mut self.buf).await {
                    Ok(0) => return Err("stream finished".to_owned()),
                    Ok(_) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
        })
        .await
        .map_err(|_| "timeout".to_owned())?
    }

    /// Frames until a `BatchResult`, skipping quotas and round states.
    pub async fn next_result(
        &mut self,
    ) -> Result<(u64, Vec<shake_proto::Winner>, Vec<u8>), String> {
        loop {
            if let (AllocatorFrame::BatchResult { seq, winners, .. }, raw) = self.recv().await? {
                return Ok((seq, winners, raw));
            }
        }
    }
}
