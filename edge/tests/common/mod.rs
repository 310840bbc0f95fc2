//! Test harness: a real allocator (the library's service, in-process), the real `shake-edge`
//! binary, and phones that are real quinn clients speaking the real protocol.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
use shake_allocator::config::Config;
use shake_allocator::service::{self, Running, Shutdown};
use shake_ops::tls;
use shake_proto::control::CAP_DATAGRAMS;
use shake_proto::datagram::{self, Datagram};
use shake_proto::{Claims, ControlFrame, KeyRing, Outcome, PHONE_ALPN, Shake};
use tokio::io::AsyncReadExt;

pub const EDGE_BIN: &str = env!("CARGO_BIN_EXE_shake-edge");
pub const DEV_SECRET_HEX: &str = "7368616b652d6465762d746f6b656e2d7365637265742d6e6f742d666f722d70";

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

pub fn key_ring(secret_hex: &str) -> KeyRing {
    let secret: Vec<u8> = (0..secret_hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&secret_hex[i..i + 2], 16).unwrap())
        .collect();
    let mut ring = KeyRing::new();
    ring.insert(1, &secret).unwrap();
    ring
}

pub fn token(user_id: u64, expires_in_s: i64) -> Bytes {
    let now = now_ms() / 1000;
    let claims = Claims {
        key_id: 1,
        user_id,
        device_id: user_id,
        issued_at_s: now.saturating_sub(3600),
        expires_at_s: (now as i64 + expires_in_s) as u64,
    };
    Bytes::copy_from_slice(&key_ring(DEV_SECRET_HEX).mint(&claims).unwrap())
}

/// Certificates, an allocator and an edge, all on loopback; torn down on drop.
pub struct World {
    pub dir: PathBuf,
    pub allocator: Option<Running>,
    pub allocator_shutdown: Shutdown,
    pub allocator_addr: SocketAddr,
    pub edge: Child,
    pub edge_addr: SocketAddr,
    pub edge_metrics: SocketAddr,
    pub envelopes: u64,
}

pub struct WorldSettings {
    pub envelopes: u64,
    pub edge_limits: &'static str,
    /// The edge's I/O path: "loop" (the default) or "quinn" (the reference path).
    pub io: &'static str,
}

impl Default for WorldSettings {
    fn default() -> Self {
        Self { envelopes: 50, edge_limits: "", io: "loop" }
    }
}

pub fn allocator_config(
    dir: &Path,
    listen: SocketAddr,
    envelopes: u64,
    starts_at_ms: u64,
) -> Config {
    let text = format!(
        r#"listen = "{listen}"
metrics_listen = "127.0.0.1:0"
ledger_path = "{dir}/ledger"
quota_valid_ms = 3000
[tls]
cert = "{dir}/certs/allocator.pem"
key = "{dir}/certs/allocator.key"
edge_ca = "{dir}/certs/ca.pem"
[[rounds]]
id = 1
starts_at_ms = {starts_at_ms}
duration_s = 600
seed = 11
release = "immediate"
[rounds.cash]
total_cents = {cents}
envelopes = {envelopes}
"#,
        dir = dir.display(),
        cents = envelopes * 100,
    );
    Config::parse(&text).unwrap()
}

impl World {
    pub async fn start(settings: WorldSettings) -> Self {
        Self::start_with_env(settings, &[]).await
    }

    /// As [`World::start`], with extra environment variables for the edge process.
    pub async fn start_with_env(settings: WorldSettings, env: &[(&str, &str)]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("shake-edge-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        shake_allocator::dev_certs::generate(&dir.join("certs"), &[1]).unwrap();
        let starts = now_ms() - 1_000;
        let shutdown = Shutdown::default();
        let config =
            allocator_config(&dir, "127.0.0.1:0".parse().unwrap(), settings.envelopes, starts);
        let running = service::start(config, shutdown.clone()).await.unwrap();
        let allocator_addr = running.quic_addr;
        std::fs::write(dir.join("round_start"), starts.to_string()).unwrap();

        let edge_config = dir.join("edge.toml");
        std::fs::write(
            &edge_config,
            format!(
                r#"edge_id = 1
listen = "127.0.0.1:0"
workers = 2
metrics_listen = "127.0.0.1:0"
socket_buffer_bytes = 1048576
io = "{io}"
[tls]
cert = "{dir}/certs/edge-1.pem"
key = "{dir}/certs/edge-1.key"
[allocator]
addr = "{allocator_addr}"
ca = "{dir}/certs/ca.pem"
cert = "{dir}/certs/edge-1.pem"
key = "{dir}/certs/edge-1.key"
[[token_keys]]
id = 1
secret_hex = "{DEV_SECRET_HEX}"
[limits]
hello_timeout_ms = 500
{limits}
"#,
                dir = dir.display(),
                limits = settings.edge_limits,
                io = settings.io,
            ),
        )
        .unwrap();
        let mut edge = Command::new(EDGE_BIN)
            .args(["run", "--config"])
            .arg(&edge_config)
            .env("RUST_LOG", std::env::var("SHAKE_EDGE_LOG").unwrap_or_else(|_| "warn".into()))
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(edge.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("{line:?}"))
                .parse()
                .unwrap()
        };
        let world = Self {
            edge_addr: field("addr="),
            edge_metrics: field("metrics="),
            dir,
            allocator: Some(running),
            allocator_shutdown: shutdown,
            allocator_addr,
            edge,
            envelopes: settings.envelopes,
        };
        world.wait_for_metric("shake_edge_allocator_up", 1.0).await;
        // Both workers have heard the round from the allocator.
        world.wait_for_metric("shake_edge_round_states_total", 2.0).await;
        world
    }

    pub fn round_start(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("round_start")).unwrap().parse().unwrap()
    }

    pub fn scrape(&self) -> String {
        shake_ops::http::get(self.edge_metrics, "/metrics").unwrap()
    }

    pub fn metric(&self, prefix: &str) -> f64 {
        shake_ops::http::metric_sum(&self.scrape(), prefix)
    }

    /// A metric of the running allocator.
    pub fn allocator_metric(&self, prefix: &str) -> f64 {
        let running = self.allocator.as_ref().expect("the allocator is running");
        let addr = running.metrics_addr.expect("the allocator serves metrics");
        shake_ops::http::metric_sum(&shake_ops::http::get(addr, "/metrics").unwrap(), prefix)
    }

    pub async fn wait_for_metric(&self, prefix: &str, at_least: f64) {
        for _ in 0..100 {
            if self.metric(prefix) >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{prefix} never reached {at_least}:\n{}", self.scrape());
    }

    pub async fn wait_for_allocator_metric(&self, prefix: &str, at_least: f64) {
        for _ in 0..100 {
            if self.allocator_metric(prefix) >= at_least {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("allocator {prefix} never reached {at_least}");
    }

    pub async fn wait_for_metric_below(&self, prefix: &str, below: f64) {
        for _ in 0..100 {
            if self.metric(prefix) < below {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{prefix} never fell below {below}");
    }

    /// Stops the in-process allocator (fast) and waits for it.
    pub async fn stop_allocator(&mut self) {
        self.allocator_shutdown.stop.cancel();
        if let Some(running) = self.allocator.take() {
            running.wait().await.unwrap();
        }
    }

    /// Starts the allocator again on the same address, over the same ledger.
    pub async fn restart_allocator(&mut self) {
        self.restart_allocator_with(|_| {}).await;
    }

    /// [`World::restart_allocator`] with its configuration changed by `change` first.
    pub async fn restart_allocator_with(&mut self, change: impl FnOnce(&mut Config)) {
        let shutdown = Shutdown::default();
        let mut config =
            allocator_config(&self.dir, self.allocator_addr, self.envelopes, self.round_start());
        change(&mut config);
        let running = service::start(config, shutdown.clone()).await.unwrap();
        self.allocator = Some(running);
        self.allocator_shutdown = shutdown;
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.edge.kill();
        let _ = self.edge.wait();
        self.allocator_shutdown.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn phone_config(ca: &Path) -> quinn::ClientConfig {
    let rustls = tls::client(ca, PHONE_ALPN).unwrap();
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(rustls).unwrap()))
}

/// One phone: a QUIC connection and its control stream.
pub struct Phone {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    buf: BytesMut,
    _endpoint: quinn::Endpoint,
}

impl Phone {
    pub async fn connect(world: &World) -> Self {
        Self::connect_from(world, "127.0.0.1:0".parse().unwrap()).await.unwrap()
    }

    /// Connects from `local` (any loopback address; port 0 for a fresh port).
    pub async fn connect_from(
        world: &World,
        local: SocketAddr,
    ) -> Result<Self, quinn::ConnectionError> {
        let mut endpoint = quinn::Endpoint::client(local).unwrap();
        endpoint.set_default_client_config(phone_config(&world.dir.join("certs/ca.pem")));
        let conn = endpoint.connect(world.edge_addr, "localhost").unwrap().await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(Self { conn, send, recv, buf: BytesMut::new(), _endpoint: endpoint })
    }

    /// Moves the phone to a new local socket, as a NAT rebinding its port does.
    pub fn rebind(&self, socket: std::net::UdpSocket) {
        self._endpoint.rebind(socket).unwrap();
    }

    pub async fn send_frame(&mut self, frame: &ControlFrame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.send.write_all(&out).await.unwrap();
    }

    /// Hello with `token`; the edge's first answer (Welcome, or an error string).
    pub async fn hello(&mut self, token: Bytes) -> Result<ControlFrame, String> {
        self.send_frame(&ControlFrame::Hello {
            token,
            client_version: 1,
            capabilities: CAP_DATAGRAMS,
        })
        .await;
        self.next_frame().await
    }

    pub async fn next_frame(&mut self) -> Result<ControlFrame, String> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some(frame) =
                    ControlFrame::decode(&mut self.buf).map_err(|e| e.to_string())?
                {
                    return Ok(frame);
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

    /// The next frame that is not a round notice or pace.
    pub async fn next_award(&mut self) -> Result<ControlFrame, String> {
        loop {
            match self.next_frame().await? {
                ControlFrame::RoundNotice { .. } | ControlFrame::Pace { .. } => continue,
                other => return Ok(other),
            }
        }
    }

    pub fn shake(&self, round_id: u32, seq: u64) {
        let mut out = BytesMut::new();
        Shake { round_id, seq, client_time_ms: now_ms() }.encode_datagram(&mut out);
        self.conn.send_datagram(out.freeze()).unwrap();
    }

    pub async fn outcome(&self) -> Result<Outcome, String> {
        let payload = tokio::time::timeout(Duration::from_secs(5), self.conn.read_datagram())
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.to_string())?;
        match datagram::decode(&payload) {
            Ok(Datagram::Outcomes(list)) => Ok(list.iter().next().unwrap()),
            other => Err(format!("not outcomes: {other:?}")),
        }
    }

    /// The application close code the edge closed the connection with.
    pub async fn closed_code(&self) -> Option<u64> {
        match tokio::time::timeout(Duration::from_secs(5), self.conn.closed()).await.ok()? {
            quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
            _ => None,
        }
    }
}
