//! A test phone: a real quinn client speaking the phone protocol (docs/PROTOCOL.md) to the
//! edge of a [`World`], frame by frame and datagram by datagram, so that a test can also say
//! what a well-behaved phone never would.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::crypto::rustls::QuicClientConfig;
use shake_ops::tls;
use shake_proto::control::CAP_DATAGRAMS;
use shake_proto::datagram::{self, Datagram};
use shake_proto::{ControlFrame, Outcome, PHONE_ALPN, Shake};

use crate::now_ms;
use crate::scratch::ANY_PORT;
use crate::stream;
use crate::world::World;

/// The QUIC client configuration of a phone trusting the edge certificates of `ca`.
pub fn phone_config(ca: &Path) -> quinn::ClientConfig {
    let rustls = tls::client(ca, PHONE_ALPN).expect("a phone's TLS configuration");
    quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(rustls).expect("TLS 1.3")))
}

/// One phone: a QUIC connection and its control stream.
#[derive(Debug)]
pub struct Phone {
    /// The connection (datagrams, close codes).
    pub conn: quinn::Connection,
    /// The control stream, phone to edge.
    pub send: quinn::SendStream,
    /// The control stream, edge to phone.
    pub recv: quinn::RecvStream,
    buf: BytesMut,
    endpoint: quinn::Endpoint,
}

impl Phone {
    /// A phone connected to the world's edge from a fresh loopback port, backing off and
    /// trying again while refused (`CONNECTION_REFUSED`), as phones do: a worker that a busy
    /// test machine puts over its load target refuses new handshakes for an interval. A test
    /// that expects a refusal uses [`Phone::connect_from`].
    pub async fn connect(world: &World) -> Self {
        Self::connect_until_accepted(world, phone_config(&world.scratch.ca())).await
    }

    /// Connects from `local` (any loopback address; port 0 for a fresh port).
    pub async fn connect_from(
        world: &World,
        local: SocketAddr,
    ) -> Result<Self, quinn::ConnectionError> {
        Self::connect_with(world, local, phone_config(&world.scratch.ca())).await
    }

    /// A phone whose connection gives the edge only `bytes` of credit at a time (its receive
    /// window), as a phone stack with a small window does: the edge's control frames reach it
    /// a piece per window. Refusals are retried as [`Phone::connect`] retries them.
    pub async fn connect_with_receive_window(world: &World, bytes: u32) -> Self {
        let mut transport = quinn::TransportConfig::default();
        transport.receive_window(bytes.into());
        let mut config = phone_config(&world.scratch.ca());
        config.transport_config(Arc::new(transport));
        Self::connect_until_accepted(world, config).await
    }

    /// [`Phone::connect_with`] from a fresh port, again every 200 ms while refused (10 s).
    async fn connect_until_accepted(world: &World, config: quinn::ClientConfig) -> Self {
        for _ in 0..50 {
            match Self::connect_with(world, ANY_PORT, config.clone()).await {
                Ok(phone) => return phone,
                Err(quinn::ConnectionError::ConnectionClosed(close))
                    if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(other) => panic!("connecting a phone: {other}"),
            }
        }
        panic!("connecting a phone: refused for 10 s");
    }

    /// Connects from `local` with `config`, and opens the control stream.
    async fn connect_with(
        world: &World,
        local: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<Self, quinn::ConnectionError> {
        let mut endpoint = quinn::Endpoint::client(local).expect("a phone's UDP socket");
        endpoint.set_default_client_config(config);
        let conn = endpoint.connect(world.edge.addr, "localhost").expect("a connect").await?;
        let (send, recv) = conn.open_bi().await?;
        Ok(Self { conn, send, recv, buf: BytesMut::new(), endpoint })
    }

    /// Moves the phone to a new local socket, as a NAT rebinding its port does.
    pub fn rebind(&self, socket: std::net::UdpSocket) {
        self.endpoint.rebind(socket).expect("rebinding the phone");
    }

    /// Sends one control frame.
    pub async fn send_frame(&mut self, frame: &ControlFrame) {
        self.try_send_frame(frame).await.expect("writing the control stream");
    }

    /// Sends one control frame; `Err` when the stream or connection is gone (a phone the edge
    /// may close while it writes).
    pub async fn try_send_frame(&mut self, frame: &ControlFrame) -> Result<(), String> {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.send.write_all(&out).await.map_err(|e| e.to_string())
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

    /// The next control frame (5 s at most), or why there is none.
    pub async fn next_frame(&mut self) -> Result<ControlFrame, String> {
        let within = Duration::from_secs(5);
        stream::next_frame(&mut self.recv, &mut self.buf, within, ControlFrame::decode).await
    }

    /// The next frame that is not a round notice or pace (20 s at most in all: notices that
    /// keep coming do not make the wait longer).
    pub async fn next_award(&mut self) -> Result<ControlFrame, String> {
        let looking = async {
            loop {
                match self.next_frame().await? {
                    ControlFrame::RoundNotice { .. } | ControlFrame::Pace { .. } => continue,
                    other => return Ok(other),
                }
            }
        };
        stream::within(Duration::from_secs(20), "frame but notices and paces", looking).await
    }

    /// Sends shake `seq` of round `round_id` as a datagram.
    pub fn shake(&self, round_id: u32, seq: u64) {
        let mut out = BytesMut::new();
        Shake { round_id, seq, client_time_ms: now_ms() }.encode_datagram(&mut out);
        self.conn.send_datagram(out.freeze()).expect("sending a datagram");
    }

    /// The first outcome of the next datagram (5 s at most), or why there is none.
    pub async fn outcome(&self) -> Result<Outcome, String> {
        let payload = tokio::time::timeout(Duration::from_secs(5), self.conn.read_datagram())
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.to_string())?;
        match datagram::decode(&payload) {
            Ok(Datagram::Outcomes(list)) => list.iter().next().ok_or_else(|| "no outcome".into()),
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
